//! Commands across hubs: the device directory and the hubs' own channels.
//!
//! A dashboard on one hub may command a device connected to another. Redis keeps, per
//! room, which hub each device is on (the hash `{room}:dev`, device -> node id), and
//! every hub listens on a channel of its own (`<prefix>:n:<node>`, on the feed's
//! connection). A command for a device that is not local is one [`ROUTE`] script call:
//! it looks the device up and PUBLISHes the command on that hub's channel. PUBLISH
//! answers how many subscribers took it, so a device whose hub is gone (killed, its
//! entry left behind) is found out on the spot: the entry is removed and the dashboard
//! gets `unknown_device`, which therefore means "on no hub". The device's hub checks and
//! records the command as it would a local one, and sends the device's `ack` (or its
//! own refusal) back on the dashboard's hub's channel.
//!
//! The directory is written by one task per hub, in order ([`Directory`]): a device's
//! join sets its entry, its leave removes the entry only if it still names this hub (a
//! device that moved to another hub keeps the other hub's entry). Every
//! [`REFRESH_EVERY`] the task writes every local device again, which heals an update
//! dropped while Redis was away and a Redis that lost its data.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tracing::warn;

use super::{Cluster, ClusterError};
use crate::shutdown::{Completion, Shutdown};

/// Looks a device up and forwards a command to its hub. KEYS: the room's directory.
/// ARGV: device, the prefix of the hubs' channels, the message. Returns 1 if a hub took
/// it, 0 if the device is on no hub (an entry whose hub no longer listens is removed).
pub(crate) const ROUTE: &str = r#"
local node = redis.call('HGET', KEYS[1], ARGV[1])
if not node then return 0 end
if redis.call('PUBLISH', ARGV[2] .. node, ARGV[3]) == 0 then
  if redis.call('HGET', KEYS[1], ARGV[1]) == node then
    redis.call('HDEL', KEYS[1], ARGV[1])
  end
  return 0
end
return 1
"#;

/// Removes a device's entry if it still names this hub. KEYS: the directory. ARGV:
/// device, node.
pub(crate) const FORGET: &str = r#"
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  return redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"#;

/// How often a hub writes its devices' entries again.
pub(crate) const REFRESH_EVERY: Duration = Duration::from_secs(10);
/// Directory updates queued at most; past it one is dropped (and counted in the log),
/// and the next refresh writes the entry again.
const DIRECTORY_QUEUE: usize = 4096;

/// What hubs send each other on their own channels: `{"cmd":{...}}`, `{"ack":{...}}` or
/// `{"err":{...}}` (externally tagged: an internally tagged enum would buffer the
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
}

/// A change to the directory, applied in order by the directory task.
enum Update {
    Joined { room: Arc<str>, device: Arc<str> },
    Left { room: Arc<str>, device: Arc<str> },
}

/// The sending side of the directory task (held by the [`Cluster`]).
pub(crate) struct Directory {
    tx: mpsc::Sender<Update>,
    rx: std::sync::Mutex<Option<mpsc::Receiver<Update>>>,
}

impl Default for Directory {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(DIRECTORY_QUEUE);
        Directory {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
        }
    }
}

impl Cluster {
    /// This hub's own channel.
    pub(crate) fn node_channel(&self) -> String {
        format!("{}{}", self.node_channel_prefix(), self.inner.node_id)
    }

    fn node_channel_prefix(&self) -> String {
        format!("{}:n:", self.inner.cfg.key_prefix)
    }

    fn directory_key(&self, room: &str) -> String {
        self.key(room, "dev")
    }

    /// Records that `device` is on this hub now (queued; never waits).
    pub(crate) fn device_joined(&self, room: &Arc<str>, device: &Arc<str>) {
        self.update(Update::Joined {
            room: room.clone(),
            device: device.clone(),
        });
    }

    /// Records that `device` left this hub (queued; never waits).
    pub(crate) fn device_left(&self, room: &Arc<str>, device: &Arc<str>) {
        self.update(Update::Left {
            room: room.clone(),
            device: device.clone(),
        });
    }

    fn update(&self, u: Update) {
        if self.inner.directory.tx.try_send(u).is_err() {
            warn!("device directory queue full: an update waits for the next refresh");
        }
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
            .key(self.directory_key(room))
            .arg(to)
            .arg(self.node_channel_prefix())
            .arg(message)
            .invoke_async(&mut cmd)
            .await?;
        Ok(took == 1)
    }

    /// Sends an answer (an ack or a refusal) to the hub `node`.
    pub(crate) async fn reply(&self, node: &str, message: String) -> Result<(), ClusterError> {
        let mut cmd = self.inner.cmd.clone();
        redis::cmd("PUBLISH")
            .arg(format!("{}{node}", self.node_channel_prefix()))
            .arg(message)
            .query_async::<i64>(&mut cmd)
            .await?;
        Ok(())
    }

    /// Runs the directory task until shutdown. `local_devices` lists this hub's devices
    /// by room, for the refresh.
    pub(crate) fn start_directory(
        &self,
        local_devices: impl Fn() -> Vec<(Arc<str>, Vec<Arc<str>>)> + Send + 'static,
        mut shutdown: Shutdown,
        done: Completion,
    ) {
        let Some(mut rx) = super::lock(&self.inner.directory.rx).take() else {
            return;
        };
        let cluster = self.clone();
        tokio::spawn(async move {
            let _done = done;
            let mut refresh = tokio::time::interval(REFRESH_EVERY);
            loop {
                tokio::select! {
                    u = rx.recv() => match u {
                        Some(u) => cluster.apply(u).await,
                        None => return,
                    },
                    _ = refresh.tick() => cluster.refresh(local_devices()).await,
                    _ = shutdown.recv() => return,
                }
            }
        });
    }

    async fn apply(&self, u: Update) {
        let mut cmd = self.inner.cmd.clone();
        let node = self.inner.node_id.clone();
        let result: Result<(), redis::RedisError> = match &u {
            Update::Joined { room, device } => {
                let key = self.directory_key(room);
                redis::pipe()
                    .hset(&key, &**device, &*node)
                    .ignore()
                    .pexpire(&key, self.inner.cfg.meta_ttl_ms as i64)
                    .ignore()
                    .query_async(&mut cmd)
                    .await
            }
            Update::Left { room, device } => self
                .inner
                .forget
                .key(self.directory_key(room))
                .arg(&**device)
                .arg(&*node)
                .invoke_async::<i64>(&mut cmd)
                .await
                .map(drop),
        };
        if let Err(e) = result {
            warn!(error = %e, "device directory update failed; the next refresh retries");
        }
    }

    async fn refresh(&self, rooms: Vec<(Arc<str>, Vec<Arc<str>>)>) {
        let mut cmd = self.inner.cmd.clone();
        let mut pipe = redis::pipe();
        let mut any = false;
        for (room, devices) in &rooms {
            if devices.is_empty() {
                continue;
            }
            let key = self.directory_key(room);
            let fields: Vec<(&str, &str)> = devices
                .iter()
                .map(|d| (&**d, &*self.inner.node_id))
                .collect();
            pipe.hset_multiple(&key, &fields)
                .ignore()
                .pexpire(&key, self.inner.cfg.meta_ttl_ms as i64)
                .ignore();
            any = true;
        }
        if !any {
            return;
        }
        if let Err(e) = pipe.query_async::<()>(&mut cmd).await {
            warn!(error = %e, "device directory refresh failed; retried in {REFRESH_EVERY:?}");
        }
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
