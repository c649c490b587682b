//! A room's keeper: the one hub of a cluster that stores the room's readings in its
//! history (memory and SQLite) and answers the room's history queries for every hub.
//!
//! - **Who.** The room's keeper hash (`{prefix}:{room}:k`: `n` node, `t` lease expiry in
//!   Redis's clock, `e` epoch, `w` watermark) names it. [`super::scripts::PUBLISH`]
//!   checks the lease on every device message: absent or expired, the publishing hub
//!   takes it, so a room that receives readings has a keeper within one message, and
//!   the first publisher usually keeps it.
//! - **What.** The keeper reads the room's stream in offset order ([`TAIL`]) from the
//!   last offset it recorded, woken by its subscription and every quarter lease anyway,
//!   and records each reading once. Each call renews the lease and moves the watermark
//!   up to what the keeper's store has committed. Reading the stream, not the pub/sub
//!   messages, means a dropped subscription costs nothing: the next call reads on.
//! - **Hand-over.** A keeper that stops (clean shutdown) gives the lease back
//!   ([`Cluster::release`]) with its last committed offset; a dead one's lease runs out
//!   after `cluster.keeper_lease_ms`. The next hub to publish takes it and reads on from
//!   the watermark, so no reading goes unstored while the stream still holds it. A crash
//!   can leave readings the dead keeper committed after its last watermark: those are
//!   stored by both (at most a commit interval's worth). Readings the stream trimmed
//!   before any keeper read them are counted (`telehub_cluster_keeper_lost_readings`).
//! - **Asking.** A history query on another hub is sent to the keeper on its channel
//!   ([`NodeMessage::Ask`]); the keeper runs it as a local query and answers on the
//!   asker's channel ([`NodeMessage::Answer`]) with the whole HTTP answer.
//!
//! [`NodeMessage::Ask`]: super::commands::NodeMessage::Ask
//! [`NodeMessage::Answer`]: super::commands::NodeMessage::Answer

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::Value;
use tokio::sync::oneshot;

use super::commands::NodeMessage;
use super::scripts::{self, BadAnswer};
use super::{lock, secs, Cluster, ClusterError};

/// Reads a room's stream for its keeper, renewing the lease and moving the watermark.
///
/// KEYS: meta, stream, keeper. ARGV: node, the epoch the caller reads ("" none yet), the
/// last offset it recorded in it, COUNT, lease ms, its committed offset ("" none), meta
/// TTL s, "1" to give the lease back. Answers `{0, holder}` when the lease is another
/// hub's (or gone), `{2}` after a release, else `{1, epoch, from, top, entries}`: the
/// entries after `from` (the caller's offset in the same epoch; the watermark in a new
/// one), and the room's last offset.
pub(crate) const TAIL: &str = r#"
local k = redis.call('HMGET', KEYS[3], 'n', 'e', 'w')
if k[1] ~= ARGV[1] then return {0, k[1] or ''} end
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then return {0, ''} end
local w = tonumber(k[3] or '0')
if k[2] ~= epoch then
  w = 0
  redis.call('HSET', KEYS[3], 'e', epoch, 'w', 0)
end
if ARGV[6] ~= '' and ARGV[2] == epoch and tonumber(ARGV[6]) > w then
  w = tonumber(ARGV[6])
  redis.call('HSET', KEYS[3], 'w', w)
end
if ARGV[8] == '1' then
  redis.call('HSET', KEYS[3], 't', 0)
  return {2}
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[3], 't', now + tonumber(ARGV[5]))
redis.call('EXPIRE', KEYS[3], ARGV[7])
local from = w
if ARGV[2] == epoch then from = tonumber(ARGV[3]) end
local top = tonumber(redis.call('HGET', KEYS[1], 's') or '0')
local entries = redis.call('XRANGE', KEYS[2], (from + 1) .. '-0', '+', 'COUNT', ARGV[4])
return {1, epoch, from, top, entries}
"#;

/// The hub holding a room's lease, if it is current. KEYS: keeper.
pub(crate) const HOLDER: &str = r#"
local k = redis.call('HMGET', KEYS[1], 'n', 't')
if not k[1] then return false end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(k[2] or '0') < now then return false end
return k[1]
"#;

/// Entries one [`TAIL`] call reads at most; a keeper that got this many reads again.
pub(crate) const TAIL_BATCH: usize = 1_000;
/// How long an asking hub waits for the keeper's answer.
pub(crate) const ASK_TIMEOUT: Duration = Duration::from_secs(10);
/// Questions this hub has in flight at most; more are answered 503 `busy` at once.
pub(crate) const MAX_ASKS: usize = 256;
/// The largest answer a keeper sends (the body, before base64 for images); a larger one
/// is refused with 413, asking for a smaller `limit` or a `step`.
pub(crate) const MAX_ANSWER_BYTES: usize = 12 << 20;

/// What one [`TAIL`] call found.
#[derive(Debug)]
pub(crate) enum Tail {
    /// The lease is another hub's (`Some`) or nobody's: this hub keeps the room no more.
    Lost(Option<String>),
    /// Given back.
    Released,
    /// The room's readings after `from` in `epoch` (up to [`TAIL_BATCH`]), and its last
    /// offset `top`.
    Read {
        epoch: String,
        from: u64,
        top: u64,
        entries: Vec<(u64, String)>,
    },
}

/// Parses [`TAIL`]'s answer.
pub(crate) fn tail_answer(v: &Value) -> Result<Tail, BadAnswer> {
    let Value::Array(all) = v else {
        return Err(BadAnswer("tail: not an array"));
    };
    match all.as_slice() {
        [Value::Int(0), holder] => Ok(Tail::Lost(scripts::text(holder).filter(|h| !h.is_empty()))),
        [Value::Int(2)] => Ok(Tail::Released),
        [Value::Int(1), epoch, from, top, entries] => Ok(Tail::Read {
            epoch: scripts::text(epoch).ok_or(BadAnswer("tail: epoch"))?,
            from: int(from).ok_or(BadAnswer("tail: from"))?,
            top: int(top).ok_or(BadAnswer("tail: top"))?,
            entries: scripts::stream_entries(entries)?,
        }),
        _ => Err(BadAnswer("tail: shape")),
    }
}

fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => scripts::text(other)?.parse().ok(),
    }
}

/// A history query's answer as it travels back from the keeper: the HTTP answer whole.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(crate) struct Answer {
    pub status: u16,
    pub content_type: String,
    /// The body when it is text (JSON, CSV, SVG).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The body in base64 otherwise (PNG).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
}

impl Answer {
    /// A JSON error answer, as the API's errors are.
    pub(crate) fn error(status: u16, code: &str, message: &str) -> Answer {
        Answer {
            status,
            content_type: "application/json".into(),
            text: Some(serde_json::json!({ "error": code, "message": message }).to_string()),
            base64: None,
        }
    }

    /// 503 `busy`: the keeper cannot take the question now.
    pub(crate) fn busy(message: &str) -> Answer {
        Answer::error(503, "busy", message)
    }
}

/// Why a question could not be asked or was not answered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AskError {
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("the room's keeper `{0}` is not listening (it stopped; another hub takes the room within cluster.keeper_lease_ms)")]
    Gone(String),
    #[error("the room's keeper `{0}` did not answer within {ASK_TIMEOUT:?}")]
    Timeout(String),
    #[error("this hub has {MAX_ASKS} history questions in flight already")]
    Busy,
}

/// Questions this hub asked and waits on, by id. Bounded by [`MAX_ASKS`].
#[derive(Default)]
pub(crate) struct Asks {
    next: AtomicU64,
    waiting: std::sync::Mutex<HashMap<u64, oneshot::Sender<Answer>>>,
}

/// Takes a waiting question out of [`Asks`] when its asker stops waiting (answered,
/// timed out or cancelled), so the map never keeps what nobody waits for.
struct Waiting<'a> {
    asks: &'a Asks,
    id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(&self.asks.waiting).remove(&self.id);
    }
}

impl Cluster {
    /// One [`TAIL`] call for `room`.
    pub(crate) async fn tail(
        &self,
        room: &str,
        reading: Option<(&str, u64)>,
        committed: Option<u64>,
        release: bool,
    ) -> Result<Tail, ClusterError> {
        let mut con = self.inner.cmd.clone();
        let (epoch, after) = reading.unwrap_or(("", 0));
        self.inner.stats.keeper_reads.inc();
        let v: Value = self
            .inner
            .tail
            .key(self.key(room, "m"))
            .key(self.key(room, "s"))
            .key(self.key(room, "k"))
            .arg(self.inner.node_id.as_ref())
            .arg(epoch)
            .arg(after)
            .arg(TAIL_BATCH)
            .arg(self.inner.cfg.keeper_lease_ms)
            .arg(committed.map(|c| c.to_string()).unwrap_or_default())
            .arg(secs(self.inner.cfg.meta_ttl_ms))
            .arg(if release { "1" } else { "" })
            .invoke_async(&mut con)
            .await?;
        Ok(tail_answer(&v)?)
    }

    /// Gives `room`'s lease back with the last offset this hub's store committed, so
    /// the next hub to publish keeps the room from there at once.
    pub(crate) async fn release(
        &self,
        room: &str,
        reading: Option<(&str, u64)>,
        committed: Option<u64>,
    ) -> Result<(), ClusterError> {
        self.tail(room, reading, committed, true).await.map(|_| ())
    }

    /// The hub whose lease on `room` is current, if any.
    pub(crate) async fn keeper_of(&self, room: &str) -> Result<Option<String>, ClusterError> {
        let mut con = self.inner.cmd.clone();
        let v: Value = self
            .inner
            .holder
            .key(self.key(room, "k"))
            .invoke_async(&mut con)
            .await?;
        Ok(match v {
            Value::Nil => None,
            other => scripts::text(&other),
        })
    }

    /// Asks the keeper `node` of `room` the history question `what` (`history`,
    /// `series`, `plot.png`, `plot.svg`) with the request's query parameters, and waits
    /// for its answer.
    pub(crate) async fn ask(
        &self,
        node: &str,
        room: &str,
        what: &str,
        params: &[(String, String)],
    ) -> Result<Answer, AskError> {
        let asks = &self.inner.asks;
        let (tx, rx) = oneshot::channel();
        let id = asks.next.fetch_add(1, Ordering::Relaxed);
        {
            let mut waiting = lock(&asks.waiting);
            if waiting.len() >= MAX_ASKS {
                return Err(AskError::Busy);
            }
            waiting.insert(id, tx);
        }
        let _waiting = Waiting { asks, id };
        let message = NodeMessage::Ask {
            id,
            node: &self.inner.node_id,
            room,
            what,
            params: params.to_vec(),
        };
        let text = serde_json::to_string(&message).unwrap_or_default();
        if self.send_to(node, text).await? == 0 {
            return Err(AskError::Gone(node.to_string()));
        }
        match tokio::time::timeout(ASK_TIMEOUT, rx).await {
            Ok(Ok(answer)) => Ok(answer),
            _ => Err(AskError::Timeout(node.to_string())),
        }
    }

    /// An answer to one of this hub's questions (from its channel); one nobody waits
    /// for any more is dropped.
    pub(crate) fn answered(&self, id: u64, answer: Answer) {
        if let Some(tx) = lock(&self.inner.asks.waiting).remove(&id) {
            let _ = tx.send(answer);
        }
    }

    /// PUBLISHes `message` on hub `node`'s channel; answers how many listened.
    pub(crate) async fn send_to(&self, node: &str, message: String) -> Result<i64, ClusterError> {
        let mut cmd = self.inner.cmd.clone();
        Ok(redis::cmd("PUBLISH")
            .arg(format!("{}{node}", self.node_channel_prefix()))
            .arg(message)
            .query_async::<i64>(&mut cmd)
            .await?)
    }

    /// Counts readings a new keeper found trimmed from the stream before any keeper
    /// stored them.
    pub(crate) fn lost_to_keeper(&self, n: u64) {
        self.inner.stats.keeper_lost.inc_by(n);
    }

    /// Counts readings this hub stored as a room's keeper.
    pub(crate) fn kept(&self, n: u64) {
        self.inner.stats.kept.inc_by(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn tail_answers_parse_and_bad_ones_are_errors() {
        let read = Value::Array(vec![
            Value::Int(1),
            bulk("Ep0ch"),
            Value::Int(4),
            Value::Int(9),
            Value::Array(vec![Value::Array(vec![
                bulk("5-0"),
                Value::Array(vec![bulk("d"), bulk("{}")]),
            ])]),
        ]);
        match tail_answer(&read).expect("parses") {
            Tail::Read {
                epoch,
                from,
                top,
                entries,
            } => {
                assert_eq!((epoch.as_str(), from, top), ("Ep0ch", 4, 9));
                assert_eq!(entries, vec![(5, "{}".to_string())]);
            }
            other => panic!("not a read: {other:?}"),
        }
        assert!(matches!(
            tail_answer(&Value::Array(vec![Value::Int(0), bulk("hub2")])),
            Ok(Tail::Lost(Some(h))) if h == "hub2"
        ));
        assert!(matches!(
            tail_answer(&Value::Array(vec![Value::Int(0), bulk("")])),
            Ok(Tail::Lost(None))
        ));
        assert!(matches!(
            tail_answer(&Value::Array(vec![Value::Int(2)])),
            Ok(Tail::Released)
        ));
        assert!(tail_answer(&Value::Nil).is_err());
        assert!(tail_answer(&Value::Array(vec![Value::Int(1)])).is_err());
    }

    #[test]
    fn answers_round_trip_as_text_or_base64() {
        let a = Answer {
            status: 200,
            content_type: "application/json".into(),
            text: Some("{\"room\":\"r\"}".into()),
            base64: None,
        };
        let json = serde_json::to_string(&a).expect("serialises");
        assert!(!json.contains("base64"));
        let back: Answer = serde_json::from_str(&json).expect("parses");
        assert_eq!(back.text.as_deref(), Some("{\"room\":\"r\"}"));
    }
}
