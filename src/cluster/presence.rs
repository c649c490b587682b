//! Presence across hubs: who is in a room, on every hub, with entries that expire when
//! their hub dies.
//!
//! Redis 7.0 has no per-field expiry, so a room's presence is two keys: the hash
//! `{room}:pm` (client -> its [`Entry`]: hub, connection, role, via) and the sorted set
//! `{room}:px` (client -> when the entry expires, in Redis's own clock, so hubs' clocks
//! do not matter). Every change is one script that also bumps the room's presence
//! version (`p` in the meta hash) and PUBLISHes `p:<version>:<event>` on the room's
//! channel, so each join and leave is broadcast once, in one order, to every hub, and a
//! hub that misses a version knows it did.
//!
//! One task per hub writes, in order ([`Cluster::start_presence`]):
//! - a local member's join is [`JOIN`] (which also tells the hub of a connection it
//!   replaced to close it), its leave [`LEAVE`] (only if the entry is still that
//!   connection's: one that moved to another hub keeps the new entry);
//! - every quarter of `presence_ttl_ms` it pushes its members' expiry forward
//!   ([`REFRESH`], which also writes an entry Redis lost, as a join) and reaps the rooms
//!   it has members in ([`REAP`]: each expired entry removed with one `leave`).
//!
//! An entry expires five eighths of the TTL after its last refresh and the reap runs
//! every eighth, so a killed hub's members leave within three quarters of
//! `presence_ttl_ms`, and a live hub has three eighths of the TTL of slack before its
//! entries could expire under it. The device directory that routes commands
//! (`commands.rs`) is this same hash.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::join_all;
use redis::Value;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::warn;

use super::{Cluster, ClusterError};
use crate::shutdown::{Completion, Shutdown};
use telehub_protocol::role::{Role, Via};

/// A member's entry in `{room}:pm`. Written by its hub only, always serialised the same
/// way, so scripts compare entries as strings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub node: String,
    pub conn: u64,
    pub role: Role,
    pub via: Via,
}

/// A presence change as PUBLISHed after `p:<version>:`.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Event<'a> {
    /// `join` or `leave`.
    #[serde(borrow)]
    pub event: &'a str,
    #[serde(borrow)]
    pub client: &'a str,
    pub role: Role,
    pub via: Via,
    #[serde(borrow)]
    pub node: &'a str,
}

/// Adds (or replaces) a member. KEYS: pm, px, meta. ARGV: client, entry, lifetime ms,
/// room channel, join event, hubs' channel prefix, this node, the `replaced` message
/// without its connection and closing braces, key lifetime ms, "1" for a bridged (MQTT)
/// member. A replaced entry of another hub is sent `{"replaced":{..,"conn":N}}` on that
/// hub's channel, except that a bridged device's entry held by another hub is taken over
/// silently: the hubs of one shared subscription all bridge it, and it is one member.
pub(crate) const JOIN: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local old = redis.call('HGET', KEYS[1], ARGV[1])
local o = old and cjson.decode(old)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[9])
redis.call('PEXPIRE', KEYS[2], ARGV[9])
if o and o.node ~= ARGV[7] and ARGV[10] == '1' and o.via == 'mqtt' then return 0 end
local v = redis.call('HINCRBY', KEYS[3], 'p', 1)
redis.call('PUBLISH', ARGV[4], 'p:' .. v .. ':' .. ARGV[5])
if o and o.node ~= ARGV[7] then
  redis.call('PUBLISH', ARGV[6] .. o.node, ARGV[8] .. string.format('%d', o.conn) .. '}}')
end
return v
"#;

/// Removes a member if its entry is still `entry`. KEYS: pm, px, meta. ARGV: client,
/// entry, room channel, leave event. Returns 1 if it did.
pub(crate) const LEAVE: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local v = redis.call('HINCRBY', KEYS[3], 'p', 1)
redis.call('PUBLISH', ARGV[3], 'p:' .. v .. ':' .. ARGV[4])
return 1
"#;

/// Pushes a hub's members' expiry forward; an entry Redis no longer has is written again
/// and announced as a join; one another connection holds now is left alone. KEYS: pm,
/// px, meta. ARGV: lifetime ms, room channel, key lifetime ms, n, then n × (client,
/// entry, join event).
pub(crate) const REFRESH: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local exp = now + tonumber(ARGV[1])
local n = tonumber(ARGV[4])
for i = 0, n - 1 do
  local c, e, ev = ARGV[5 + i * 3], ARGV[6 + i * 3], ARGV[7 + i * 3]
  local cur = redis.call('HGET', KEYS[1], c)
  if cur == e then
    redis.call('ZADD', KEYS[2], exp, c)
  elseif not cur then
    redis.call('HSET', KEYS[1], c, e)
    redis.call('ZADD', KEYS[2], exp, c)
    local v = redis.call('HINCRBY', KEYS[3], 'p', 1)
    redis.call('PUBLISH', ARGV[2], 'p:' .. v .. ':' .. ev)
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return n
"#;

/// Removes expired entries, each with one `leave`. Atomic, so when several hubs reap the
/// same room each entry still leaves once. KEYS: pm, px, meta. ARGV: room channel, at
/// most this many. Returns how many it removed.
pub(crate) const REAP: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local gone = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
for _, c in ipairs(gone) do
  redis.call('ZREM', KEYS[2], c)
  local e = redis.call('HGET', KEYS[1], c)
  if e then
    redis.call('HDEL', KEYS[1], c)
    local o = cjson.decode(e)
    local v = redis.call('HINCRBY', KEYS[3], 'p', 1)
    redis.call('PUBLISH', ARGV[1], 'p:' .. v .. ':' .. cjson.encode({event = 'leave',
      client = c, role = o.role, via = o.via, node = o.node}))
  end
end
return #gone
"#;

/// A room's summary for `/api/rooms`. KEYS: meta, pm, px. Answers `{epoch, offset,
/// client, entry, client, entry, ...}` with the unexpired members only.
pub(crate) const SUMMARY: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local m = redis.call('HMGET', KEYS[1], 'e', 's')
local out = {m[1] or '', m[2] or '0'}
for _, c in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], now, '+inf')) do
  local e = redis.call('HGET', KEYS[2], c)
  if e then out[#out + 1] = c; out[#out + 1] = e end
end
return out
"#;

/// Presence updates queued at most; past it one is dropped (and logged): a join is
/// written by the next refresh, a leave by the reaper once the entry expires.
const QUEUE: usize = 4096;
/// How soon a failed refresh is tried again.
const REFRESH_RETRY: Duration = Duration::from_millis(250);
/// Entries one reap removes at most per room (the next reap takes the rest).
const REAP_BATCH: usize = 1000;

/// A member of a room on this hub, as its entry needs it.
#[derive(Debug, Clone)]
pub(crate) struct LocalMember {
    pub client: Arc<str>,
    pub conn: u64,
    pub role: Role,
    pub via: Via,
}

enum Update {
    Joined(Arc<str>, LocalMember),
    Left(Arc<str>, LocalMember),
}

/// The sending side of the presence task (held by the [`Cluster`]).
pub(crate) struct Writer {
    tx: mpsc::Sender<Update>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<Update>>>,
}

impl Default for Writer {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Writer {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
        }
    }
}

/// One room as `/api/rooms` shows it on a cluster hub: every hub's members.
#[derive(Debug)]
pub(crate) struct RoomPresence {
    pub room: String,
    pub epoch: String,
    pub offset: u64,
    /// (client, entry), sorted by client.
    pub members: Vec<(String, Entry)>,
}

/// The scripts of this module, loaded once per hub.
pub(crate) struct Scripts {
    join: redis::Script,
    leave: redis::Script,
    refresh: redis::Script,
    reap: redis::Script,
    summary: redis::Script,
}

impl Default for Scripts {
    fn default() -> Self {
        Scripts {
            join: redis::Script::new(JOIN),
            leave: redis::Script::new(LEAVE),
            refresh: redis::Script::new(REFRESH),
            reap: redis::Script::new(REAP),
            summary: redis::Script::new(SUMMARY),
        }
    }
}

/// `p:<version>:<event>` split, if it is that.
pub(crate) fn parse(payload: &[u8]) -> Option<(u64, Event<'_>)> {
    let text = std::str::from_utf8(payload).ok()?.strip_prefix("p:")?;
    let (version, json) = text.split_once(':')?;
    Some((version.parse().ok()?, serde_json::from_str(json).ok()?))
}

/// Parses a `client, entry, ...` list (from FETCH or SUMMARY), skipping entries that do
/// not parse (written by a newer hub, say).
pub(crate) fn entries(flat: &[Value]) -> Vec<(String, Entry)> {
    let mut out: Vec<(String, Entry)> = flat
        .chunks(2)
        .filter_map(|kv| {
            let client = super::scripts::text(kv.first()?)?;
            let entry = serde_json::from_str(&super::scripts::text(kv.get(1)?)?).ok()?;
            Some((client, entry))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

impl Cluster {
    /// A call of one of this module's scripts on `room`'s keys (pm, px, meta), which
    /// all of them take in that order.
    fn presence_call<'s>(
        &self,
        script: &'s redis::Script,
        room: &str,
    ) -> redis::ScriptInvocation<'s> {
        let mut call = script.prepare_invoke();
        call.key(self.key(room, "pm"))
            .key(self.key(room, "px"))
            .key(self.key(room, "m"));
        call
    }

    /// The sorted set of rooms with members on some hub (room -> until when, in ms of
    /// the writing hub's clock): what `/api/rooms` lists.
    fn rooms_key(&self) -> String {
        format!("{}:rooms", self.inner.cfg.key_prefix)
    }

    /// How long an entry lives after its last refresh.
    fn entry_lifetime(&self) -> u64 {
        self.inner.cfg.presence_ttl_ms * 5 / 8
    }

    fn entry(&self, m: &LocalMember) -> String {
        let e = Entry {
            node: self.inner.node_id.to_string(),
            conn: m.conn,
            role: m.role,
            via: m.via,
        };
        // A struct of strings and integers: serialising cannot fail.
        serde_json::to_string(&e).unwrap_or_default()
    }

    fn event(&self, event: &str, m: &LocalMember) -> String {
        let e = Event {
            event,
            client: &m.client,
            role: m.role,
            via: m.via,
            node: &self.inner.node_id,
        };
        serde_json::to_string(&e).unwrap_or_default()
    }

    /// Records that a member joined on this hub (queued; never waits).
    pub(crate) fn member_joined(&self, room: &Arc<str>, m: LocalMember) {
        self.queue(Update::Joined(room.clone(), m));
    }

    /// Records that a member left this hub (queued; never waits).
    pub(crate) fn member_left(&self, room: &Arc<str>, m: LocalMember) {
        self.queue(Update::Left(room.clone(), m));
    }

    fn queue(&self, u: Update) {
        if self.inner.presence.tx.try_send(u).is_err() {
            warn!("presence queue full: the update waits for the next refresh or reap");
        }
    }

    /// Runs the presence task until shutdown. `local_members` lists this hub's members
    /// by room, for the refresh.
    pub(crate) fn start_presence(
        &self,
        local_members: impl Fn() -> Vec<(Arc<str>, Vec<LocalMember>)> + Send + 'static,
        mut shutdown: Shutdown,
        done: Completion,
    ) {
        let Some(mut rx) = super::lock(&self.inner.presence.rx).take() else {
            return;
        };
        let cluster = self.clone();
        let ttl = self.inner.cfg.presence_ttl_ms;
        tokio::spawn(async move {
            let _done = done;
            let mut refresh = tokio::time::interval(Duration::from_millis(ttl / 4));
            let mut reap = tokio::time::interval(Duration::from_millis(ttl / 8));
            refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            reap.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            // A failed refresh is tried again soon, not a quarter TTL later: after a
            // Redis restart the command connection may still be coming back.
            let retry = tokio::time::sleep(Duration::ZERO);
            tokio::pin!(retry);
            let mut retrying = false;
            loop {
                let mut refreshed = None;
                tokio::select! {
                    u = rx.recv() => match u {
                        Some(u) => cluster.apply(u).await,
                        None => return,
                    },
                    _ = refresh.tick() => refreshed = Some(cluster.refresh(local_members()).await),
                    _ = &mut retry, if retrying => {
                        refreshed = Some(cluster.refresh(local_members()).await);
                    }
                    _ = cluster.inner.presence_now.notified() => {
                        refreshed = Some(cluster.refresh(local_members()).await);
                        refresh.reset();
                    }
                    _ = reap.tick() => {
                        let rooms: Vec<Arc<str>> =
                            local_members().into_iter().map(|(r, _)| r).collect();
                        cluster.reap(&rooms).await;
                    }
                    _ = shutdown.recv() => return,
                }
                if let Some(ok) = refreshed {
                    retrying = !ok;
                    if retrying {
                        retry
                            .as_mut()
                            .reset(tokio::time::Instant::now() + REFRESH_RETRY);
                    }
                }
            }
        });
    }

    async fn apply(&self, u: Update) {
        match &u {
            Update::Joined(r, m) => {
                tracing::debug!(room = %r, client = %m.client, conn = m.conn, "presence join")
            }
            Update::Left(r, m) => {
                tracing::debug!(room = %r, client = %m.client, conn = m.conn, "presence leave")
            }
        }
        // The connection manager reconnects on the error that finds its connection gone:
        // worth one more try then (both scripts are idempotent).
        if let Err(e) = self.apply_once(&u).await {
            let again = if e.is_connection_dropped() || e.is_io_error() {
                self.apply_once(&u).await
            } else {
                Err(e)
            };
            if let Err(e) = again {
                warn!(error = %e, "presence update failed; the next refresh or reap makes it good");
            }
        }
    }

    async fn apply_once(&self, u: &Update) -> Result<(), redis::RedisError> {
        let mut con = self.inner.cmd.clone();
        let scripts = &self.inner.presence_scripts;
        match u {
            Update::Joined(room, m) => {
                let replaced = format!(
                    r#"{{"replaced":{{"room":{},"client":{},"conn":"#,
                    serde_json::Value::from(&**room),
                    serde_json::Value::from(&*m.client)
                );
                let joined = self
                    .presence_call(&scripts.join, room)
                    .arg(&*m.client)
                    .arg(self.entry(m))
                    .arg(self.entry_lifetime())
                    .arg(self.channel(room))
                    .arg(self.event("join", m))
                    .arg(self.node_channel_prefix())
                    .arg(&*self.inner.node_id)
                    .arg(replaced)
                    .arg(self.inner.cfg.presence_ttl_ms * 2)
                    .arg(if m.via == Via::Mqtt { "1" } else { "0" })
                    .invoke_async::<i64>(&mut con)
                    .await;
                match joined {
                    Ok(_) => self.index(std::slice::from_ref(room)).await,
                    Err(e) => Err(e),
                }
            }
            Update::Left(room, m) => self
                .presence_call(&scripts.leave, room)
                .arg(&*m.client)
                .arg(self.entry(m))
                .arg(self.channel(room))
                .arg(self.event("leave", m))
                .invoke_async::<i64>(&mut con)
                .await
                .map(drop),
        }
    }

    /// Marks `rooms` as having members until a TTL from now, in the rooms index.
    async fn index(&self, rooms: &[Arc<str>]) -> Result<(), redis::RedisError> {
        if rooms.is_empty() {
            return Ok(());
        }
        let until = chrono::Utc::now().timestamp_millis() + self.inner.cfg.presence_ttl_ms as i64;
        let mut con = self.inner.cmd.clone();
        let items: Vec<(i64, &str)> = rooms.iter().map(|r| (until, &**r)).collect();
        redis::pipe()
            .zadd_multiple(self.rooms_key(), &items)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(self.rooms_key())
            .arg("-inf")
            .arg(chrono::Utc::now().timestamp_millis())
            .ignore()
            .query_async(&mut con)
            .await
    }

    /// Returns whether it went through.
    async fn refresh(&self, rooms: Vec<(Arc<str>, Vec<LocalMember>)>) -> bool {
        tracing::debug!(rooms = rooms.len(), "presence refresh");
        match self.refresh_once(&rooms).await {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, "presence refresh failed; retried in {REFRESH_RETRY:?}");
                false
            }
        }
    }

    async fn refresh_once(
        &self,
        rooms: &[(Arc<str>, Vec<LocalMember>)],
    ) -> Result<(), redis::RedisError> {
        let calls = rooms.iter().map(|(room, members)| {
            let mut call = self.presence_call(&self.inner.presence_scripts.refresh, room);
            call.arg(self.entry_lifetime())
                .arg(self.channel(room))
                .arg(self.inner.cfg.presence_ttl_ms * 2)
                .arg(members.len());
            for m in members {
                call.arg(&*m.client)
                    .arg(self.entry(m))
                    .arg(self.event("join", m));
            }
            let mut con = self.inner.cmd.clone();
            async move { call.invoke_async::<i64>(&mut con).await }
        });
        // The multiplexed connection pipelines these by itself.
        if let Some(e) = join_all(calls).await.into_iter().find_map(Result::err) {
            return Err(e);
        }
        let names: Vec<Arc<str>> = rooms.iter().map(|(r, _)| r.clone()).collect();
        self.index(&names).await
    }

    async fn reap(&self, rooms: &[Arc<str>]) {
        let calls = rooms.iter().map(|room| {
            let mut call = self.presence_call(&self.inner.presence_scripts.reap, room);
            call.arg(self.channel(room)).arg(REAP_BATCH);
            let mut con = self.inner.cmd.clone();
            async move { call.invoke_async::<i64>(&mut con).await }
        });
        if let Some(e) = join_all(calls).await.into_iter().find_map(Result::err) {
            warn!(error = %e, "presence reap failed; retried at the next one");
        }
    }

    /// Every room with members on some hub, at most `max`, with its members (for
    /// `/api/rooms`), sorted by name. The same on every hub.
    pub(crate) async fn rooms(&self, max: usize) -> Result<Vec<RoomPresence>, ClusterError> {
        let mut con = self.inner.cmd.clone();
        let now = chrono::Utc::now().timestamp_millis();
        let names: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.rooms_key())
            .arg(now)
            .arg("+inf")
            .arg("LIMIT")
            .arg(0)
            .arg(max)
            .query_async(&mut con)
            .await?;
        let calls = names.iter().map(|room| {
            let mut call = self.inner.presence_scripts.summary.prepare_invoke();
            call.key(self.key(room, "m"))
                .key(self.key(room, "pm"))
                .key(self.key(room, "px"));
            let mut con = self.inner.cmd.clone();
            async move { call.invoke_async::<Value>(&mut con).await }
        });
        let mut out = Vec::with_capacity(names.len());
        for (room, answer) in names.iter().zip(join_all(calls).await) {
            let answer = answer?;
            let parts = match &answer {
                Value::Array(a) => a.as_slice(),
                _ => return Err(super::scripts::BadAnswer("summary: not an array").into()),
            };
            let [epoch, offset, members @ ..] = parts else {
                return Err(super::scripts::BadAnswer("summary: too short").into());
            };
            let members = entries(members);
            if members.is_empty() {
                continue;
            }
            out.push(RoomPresence {
                room: room.clone(),
                epoch: super::scripts::text(epoch).unwrap_or_default(),
                offset: super::scripts::text(offset)
                    .and_then(|o| o.parse().ok())
                    .unwrap_or(0),
                members,
            });
        }
        out.sort_by(|a, b| a.room.cmp(&b.room));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_and_entries_parse_back() {
        let (v, e) = parse(
            br#"p:12:{"event":"leave","client":"d1","role":"device","via":"ws","node":"h1"}"#,
        )
        .expect("parses");
        assert_eq!(
            (v, e.event, e.client, e.role, e.node),
            (12, "leave", "d1", Role::Device, "h1")
        );
        // cjson orders keys its own way.
        let (_, e) = parse(
            br#"p:3:{"node":"h2","via":"mqtt","role":"dashboard","client":"x","event":"join"}"#,
        )
        .expect("parses");
        assert_eq!((e.via, e.role), (Via::Mqtt, Role::Dashboard));
        assert!(parse(b"12:ep:{}").is_none());
        assert!(parse(b"p:x:{}").is_none());
        let flat = vec![
            Value::BulkString(b"b".to_vec()),
            Value::BulkString(br#"{"node":"h","conn":3,"role":"device","via":"ws"}"#.to_vec()),
            Value::BulkString(b"a".to_vec()),
            Value::BulkString(b"not json".to_vec()),
        ];
        let got = entries(&flat);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "b");
        assert_eq!(got[0].1.conn, 3);
    }
}
