//! Commands across hubs, over the hubs' own channels.
//!
//! A dashboard on one hub may command a device connected to another. Every hub listens
//! on a channel of its own (`<prefix>:n:<node>`, on the feed's connection), and the
//! room's presence (`presence.rs`) says which hub each device is on. A command for a
//! device that is not local is one [`ROUTE`] script call: it looks the device up and
//! PUBLISHes the command on that hub's channel. PUBLISH answers how many subscribers
//! took it, so a device whose hub is gone (killed, its entry not yet reaped) is found
//! out on the spot and the dashboard gets `unknown_device`, which therefore means "on
//! no hub". The device's hub checks and records the command as it would a local one,
//! and sends the device's `ack` (or its own refusal) back on the dashboard's hub's
//! channel. The same channel tells a hub that a client id it holds connected to another
//! hub ([`NodeMessage::Replaced`]).

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::{Cluster, ClusterError};

/// Looks a device up and forwards a command to its hub. KEYS: the room's presence hash
/// and expiries. ARGV: device, the prefix of the hubs' channels, the message. Returns 1
/// if a hub took it, 0 if the device is on no hub (absent, expired, or its hub no
/// longer listens: the reaper removes that entry with its `leave`).
pub(crate) const ROUTE: &str = r#"
local e = redis.call('HGET', KEYS[1], ARGV[1])
if not e then return 0 end
local o = cjson.decode(e)
if o.role ~= 'device' then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local exp = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not exp or tonumber(exp) < now then return 0 end
if redis.call('PUBLISH', ARGV[2] .. o.node, ARGV[3]) == 0 then return 0 end
return 1
"#;

/// What hubs send each other on their own channels: `{"cmd":{...}}`, `{"ack":{...}}`,
/// `{"err":{...}}`, `{"replaced":{...}}`, `{"ask":{...}}` or `{"answer":{...}}` (externally tagged: an internally tagged enum would buffer the
/// fields, which a borrowed raw `args` cannot go through).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum NodeMessage<'a> {
    /// A dashboard's command for a device of the receiving hub.
    Cmd {
        #[serde(borrow)]
        room: &'a str,
        #[serde(borrow)]
        to: &'a str,
        id: String,
        name: String,
        #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
        args: Option<&'a RawValue>,
        /// The commanding dashboard, its connection and its hub: where the answer goes.
        #[serde(borrow)]
        from: &'a str,
        conn: u64,
        #[serde(borrow)]
        node: &'a str,
    },
    /// The device's ack, for the dashboard `dashboard` (connection `conn`).
    Ack {
        #[serde(borrow)]
        room: &'a str,
        id: String,
        #[serde(borrow)]
        device: &'a str,
        ok: bool,
        #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
        result: Option<&'a RawValue>,
        #[serde(borrow)]
        dashboard: &'a str,
        conn: u64,
    },
    /// The device's hub refused the command (the `error` frame's code and message).
    Err {
        #[serde(borrow)]
        room: &'a str,
        id: String,
        #[serde(borrow)]
        code: &'a str,
        message: String,
        #[serde(borrow)]
        dashboard: &'a str,
        conn: u64,
    },
    /// `client` connected to another hub: its connection `conn` here is closed with
    /// 4000, as a replaced connection on one hub is (written by `presence::JOIN`).
    Replaced {
        #[serde(borrow)]
        room: &'a str,
        #[serde(borrow)]
        client: &'a str,
        conn: u64,
    },
    /// A history question for the room's keeper (`keeper.rs`): `what` is `history`,
    /// `series`, `plot.png` or `plot.svg`, `params` the request's query; the answer goes
    /// to hub `node` with the same `id`.
    Ask {
        id: u64,
        #[serde(borrow)]
        node: &'a str,
        #[serde(borrow)]
        room: &'a str,
        #[serde(borrow)]
        what: &'a str,
        params: Vec<(String, String)>,
    },
    /// The keeper's answer to question `id`.
    Answer {
        id: u64,
        answer: super::keeper::Answer,
    },
}

impl Cluster {
    /// This hub's own channel.
    pub(crate) fn node_channel(&self) -> String {
        format!("{}{}", self.node_channel_prefix(), self.inner.node_id)
    }

    pub(super) fn node_channel_prefix(&self) -> String {
        format!("{}:n:", self.inner.cfg.key_prefix)
    }

    /// Sends a command to the hub of `to`. `Ok(false)`: the device is on no hub.
    pub(crate) async fn route_command(
        &self,
        room: &str,
        to: &str,
        message: String,
    ) -> Result<bool, ClusterError> {
        let mut cmd = self.inner.cmd.clone();
        let took: i64 = self
            .inner
            .route
            .key(self.key(room, "pm"))
            .key(self.key(room, "px"))
            .arg(to)
            .arg(self.node_channel_prefix())
            .arg(message)
            .invoke_async(&mut cmd)
            .await?;
        Ok(took == 1)
    }

    /// Sends an answer (an ack or a refusal) to the hub `node`.
    pub(crate) async fn reply(&self, node: &str, message: String) -> Result<(), ClusterError> {
        self.send_to(node, message).await.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::NodeMessage;

    #[test]
    fn node_messages_round_trip_with_their_raw_arguments() {
        let text = r#"{"cmd":{"room":"plant","to":"valve","id":"c1","name":"open","args":{"pct":40},"from":"dash","conn":7,"node":"hub3"}}"#;
        let m: NodeMessage<'_> = serde_json::from_str(text).expect("parses");
        match &m {
            NodeMessage::Cmd { args, node, .. } => {
                assert_eq!(args.map(|a| a.get()), Some(r#"{"pct":40}"#));
                assert_eq!(*node, "hub3");
            }
            other => panic!("not a command: {other:?}"),
        }
        let again = serde_json::to_string(&m).expect("serialises");
        assert_eq!(again, text);
    }
}
