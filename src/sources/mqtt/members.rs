//! The bridge's side of the hub seam: bridged devices become room members with
//! `via: mqtt`, their readings go through [`Hub::publish`] like any WebSocket device's
//! (same validation, fan-out, offsets, deduplication), commands queued for them are
//! published to their command topic, and their acks reach the commanding dashboard.
//!
//! A bridged device joins its room on its first reading and stays until the bridge
//! stops (or the hub shuts down). Its outbound queue, which a WebSocket session's writer
//! would drain, is drained here by one small task per device that publishes the
//! commands and discards the rest (welcome, presence).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::ingest::{BridgeSink, BridgedAck, BridgedMessage, Commit};
use super::link::BridgeLink;
use crate::config::Overflow;
use crate::hub::labels::Label;
use crate::hub::mailbox::{Close, CommandLetter, Letter, Mailbox, Taken};
use crate::hub::receipt::{Receipt, Unavailable};
use crate::hub::room::Presence;
use crate::hub::{Hub, Membership, ReadingTap};
use telehub_protocol::ids::{MAX_UNIT_LEN, TS_RANGE};
use telehub_protocol::inbound::{AckIn, ReadingIn};
use telehub_protocol::role::{Role, Via};

/// Devices one bridge keeps joined at most; readings of further devices are refused
/// (counted as rejected) so a broker full of topics cannot grow the hub without bound.
pub(crate) const MAX_BRIDGED_DEVICES: usize = 10_000;

/// Series whose last timestamp the sink remembers to tell a stale retained message
/// from a new one. Past it the map is cleared (retained seeds may then repeat once).
const MAX_SEEDED_SERIES: usize = 100_000;

/// After a WebSocket connection took over a bridged device's id (close 4000), the
/// bridge waits this long before it takes the id back, so the two do not replace
/// each other on every message.
const REJOIN_AFTER: Duration = Duration::from_secs(30);

struct Device {
    membership: Membership,
    drain: JoinHandle<()>,
    /// When its last reading arrived (for `device_idle_secs`).
    last_seen: Instant,
}

impl Drop for Device {
    fn drop(&mut self) {
        self.drain.abort();
    }
}

/// Hands a bridge's readings and acks to the hub.
pub(crate) struct HubSink {
    hub: Hub,
    link: BridgeLink,
    devices: HashMap<(Arc<str>, Arc<str>), Device>,
    /// Devices whose id a WebSocket connection took, and since when.
    taken: HashMap<(Arc<str>, Arc<str>), Instant>,
    /// Last timestamp per (room, device, metric) this bridge published, for retained
    /// messages.
    last_ts: HashMap<(Arc<str>, Arc<str>, String), i64>,
    /// Token mode: a WebSocket device proved its id with a token, and the broker's word
    /// is not enough to take it over (no replace-and-reclaim every `REJOIN_AFTER`).
    protect_ws: bool,
    /// What the message being handled waits for before its PUBACK.
    commit: Option<Commit>,
    /// On a cluster hub: hands this bridge's messages to Redis one after another, so a
    /// device's readings are stamped in the order the broker sent them.
    to_redis: Option<mpsc::Sender<ToRedis>>,
}

/// A bridged message on its way through Redis, and where its outcome is announced.
type ToRedis = (
    crate::hub::ClusterPublishing,
    watch::Sender<Option<Result<(), Unavailable>>>,
);

/// Bridged messages queued for Redis at most; past it a message is not acked (the broker
/// sends it again).
const TO_REDIS_QUEUE: usize = 1024;

/// Starts the task that publishes a bridge's messages through Redis in order.
fn start_to_redis() -> mpsc::Sender<ToRedis> {
    let (tx, mut rx) = mpsc::channel::<ToRedis>(TO_REDIS_QUEUE);
    tokio::spawn(async move {
        while let Some((publishing, answer)) = rx.recv().await {
            let out = publishing.await;
            let result = match (out.unstored_count, out.series_limited) {
                (0, 0) => Ok(()),
                (0, n) => Err(Unavailable(
                    format!("{n} readings would pass limits.max_series_per_room").into(),
                )),
                _ => Err(Unavailable(
                    out.why_unstored
                        .unwrap_or_else(|| "Redis did not take them".into())
                        .into(),
                )),
            };
            let _ = answer.send(Some(result));
        }
    });
    tx
}

impl HubSink {
    pub(crate) fn new(hub: Hub, link: BridgeLink) -> HubSink {
        HubSink {
            hub,
            link,
            devices: HashMap::new(),
            taken: HashMap::new(),
            last_ts: HashMap::new(),
            protect_ws: false,
            commit: None,
            to_redis: None,
        }
    }

    fn seen(&mut self, room: &str, device: &str) {
        let key: (Arc<str>, Arc<str>) = (room.into(), device.into());
        if let Some(d) = self.devices.get_mut(&key) {
            d.last_seen = Instant::now();
        }
    }

    /// Never evict a member connected over its own WebSocket (token mode).
    pub(crate) fn protect_ws_members(mut self, protect: bool) -> HubSink {
        self.protect_ws = protect;
        self
    }

    /// The device's membership, joining it first if needed.
    fn member(&mut self, room: &str, device: &str) -> Result<&Membership, String> {
        let key: (Arc<str>, Arc<str>) = (room.into(), device.into());
        match self
            .devices
            .get(&key)
            .map(|d| d.membership.mailbox().closing())
        {
            Some(None) => {
                return self
                    .devices
                    .get(&key)
                    .map(|d| &d.membership)
                    .ok_or_else(|| "device vanished".to_string());
            }
            Some(Some(close)) => {
                if close == Close::REPLACED {
                    if self.taken.len() >= MAX_BRIDGED_DEVICES {
                        self.taken.retain(|_, since| since.elapsed() < REJOIN_AFTER);
                    }
                    self.taken.insert(key.clone(), Instant::now());
                }
                self.devices.remove(&key);
            }
            None => {}
        }
        if let Some(since) = self.taken.get(&key) {
            if since.elapsed() < REJOIN_AFTER {
                return Err(format!(
                    "device id `{device}` in room `{room}` is taken by a WebSocket connection"
                ));
            }
            self.taken.remove(&key);
        }
        if self.protect_ws && self.hub.held_over_ws(room, device) {
            return Err(format!(
                "device id `{device}` in room `{room}` is held by a WebSocket connection with a token"
            ));
        }
        if self.devices.len() >= MAX_BRIDGED_DEVICES {
            self.devices
                .retain(|_, d| d.membership.mailbox().closing().is_none());
            if self.devices.len() >= MAX_BRIDGED_DEVICES {
                return Err(format!(
                    "the bridge already holds {MAX_BRIDGED_DEVICES} devices"
                ));
            }
        }
        let membership = self
            .hub
            .join(
                room,
                device,
                Role::Device,
                Via::Mqtt,
                Presence::Devices,
                Overflow::Close,
                None,
            )
            .map_err(|e| e.to_string())?;
        let drain = tokio::spawn(drain_commands(
            membership.mailbox().clone(),
            self.link.clone(),
            key.0.clone(),
            key.1.clone(),
        ));
        tracing::info!(
            room,
            device,
            bridge = self.link.name(),
            "bridged device joined"
        );
        let entry = self.devices.entry(key).or_insert(Device {
            membership,
            drain,
            last_seen: Instant::now(),
        });
        Ok(&entry.membership)
    }

    /// Drops retained readings that are not newer than what the series already has,
    /// and remembers the newest timestamp of every series.
    fn filter_retained(&mut self, msg: &BridgedMessage, items: &mut Vec<ReadingIn>) {
        if self.last_ts.len() > MAX_SEEDED_SERIES {
            self.last_ts.clear();
        }
        let room: Arc<str> = msg.room.as_str().into();
        let device: Arc<str> = msg.device.as_str().into();
        let now = chrono::Utc::now().timestamp_millis();
        items.retain(|r| {
            let key = (room.clone(), device.clone(), r.metric.clone());
            let ts = r.ts.unwrap_or(now);
            match self.last_ts.get(&key) {
                // A retained message is the broker's copy of an old reading: it only
                // seeds a series this hub has no newer value for.
                Some(&last) if msg.retained && (r.ts.is_none() || ts <= last) => false,
                Some(&last) if ts <= last => true,
                _ => {
                    self.last_ts.insert(key, ts);
                    true
                }
            }
        });
    }
}

impl BridgeSink for HubSink {
    fn label(&mut self, room: &str, device: &str, metric: &str, label: Option<Label>) -> bool {
        self.hub.labels().set(room, device, metric, label)
    }

    fn readings(&mut self, msg: BridgedMessage) -> Result<usize, String> {
        let latest = self.hub.latest_ts(chrono::Utc::now().timestamp_millis());
        let mut items = Vec::with_capacity(msg.readings.len());
        for r in &msg.readings {
            // The checks `protocol::parse` makes of a WebSocket reading; metric, value
            // and ids are checked by the bridge's mapping already.
            if r.unit.as_ref().is_some_and(|u| u.len() > MAX_UNIT_LEN) {
                return Err(format!(
                    "unit of `{}` is longer than {MAX_UNIT_LEN}",
                    r.metric
                ));
            }
            if r.ts.is_some_and(|ts| !TS_RANGE.contains(&ts)) {
                return Err(format!(
                    "ts of `{}` is outside the years 1970 to 9999",
                    r.metric
                ));
            }
            if r.ts.is_some_and(|ts| ts > latest) {
                return Err(format!(
                    "ts of `{}` is more than {} ms ahead of the hub's clock (limits.max_future_ms)",
                    r.metric,
                    self.hub.limits().max_future_ms
                ));
            }
            items.push(r.clone());
        }
        self.filter_retained(&msg, &mut items);
        if items.is_empty() {
            return Ok(0);
        }
        let hub = self.hub.clone();
        let member = self.member(&msg.room, &msg.device)?;
        if let Some(cluster) = hub.cluster() {
            // Through Redis, like a WebSocket device's: its offsets, every hub's
            // dashboards; the PUBACK waits for Redis's answer.
            let n = items.len();
            let (_, publishing) = hub.publish_cluster(cluster, member, items);
            let to_redis = self.to_redis.get_or_insert_with(start_to_redis);
            let (tx, rx) = watch::channel(None);
            let commit = self.commit.get_or_insert_with(Commit::default);
            if to_redis.try_send((publishing, tx)).is_err() {
                commit.refused = true;
                return Err(format!(
                    "{TO_REDIS_QUEUE} bridged messages are waiting for Redis; this one is not acked"
                ));
            }
            commit.receipts.push(Receipt::from_redis(rx));
            self.seen(&msg.room, &msg.device);
            return Ok(n);
        }
        let published = hub.publish(member, items);
        let accepted = published.accepted;
        let commit = self.commit.get_or_insert_with(Commit::default);
        commit.refused |= published.unstored_count > 0 || published.stopping;
        commit.receipts.push(published.receipt);
        self.seen(&msg.room, &msg.device);
        Ok(accepted)
    }

    fn take_commit(&mut self) -> Option<Commit> {
        self.commit.take()
    }

    fn tick(&mut self) {
        let Some(idle) = self.link.device_idle() else {
            return;
        };
        self.devices.retain(|(room, device), d| {
            let keep = d.last_seen.elapsed() < idle;
            if !keep {
                tracing::info!(%room, %device, "bridged device idle; it leaves its room");
            }
            keep
        });
    }

    fn ack(&mut self, ack: BridgedAck) -> Result<(), String> {
        let key: (Arc<str>, Arc<str>) = (ack.room.as_str().into(), ack.device.as_str().into());
        let Some(d) = self.devices.get_mut(&key) else {
            return Err(format!(
                "ack from `{}` in room `{}`, which is not a bridged device here",
                ack.device, ack.room
            ));
        };
        d.last_seen = Instant::now();
        let a = AckIn {
            id: ack.id,
            ok: ack.ok,
            result: ack.result,
        };
        self.hub
            .ack(&d.membership, &a)
            .map_err(|e| e.message.clone())
    }
}

/// The command as it goes on the command topic: `{"id","from","name","args"}`.
#[derive(Serialize)]
struct CommandPayload<'a> {
    id: &'a str,
    from: &'a str,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    args: Option<&'a RawValue>,
}

/// The MQTT payload of a command.
fn command_payload(c: &CommandLetter) -> Option<Vec<u8>> {
    serde_json::to_vec(&CommandPayload {
        id: &c.id,
        from: &c.from,
        name: &c.name,
        args: c.args.as_deref(),
    })
    .ok()
}

/// Drains a bridged device's outbound queue: commands go to the broker, the rest
/// (welcome, presence) has no MQTT counterpart and is dropped. Ends when the member is
/// closed (replaced, hub shutdown).
async fn drain_commands(mailbox: Arc<Mailbox>, link: BridgeLink, room: Arc<str>, device: Arc<str>) {
    loop {
        let Taken {
            letters: batch,
            close,
            ..
        } = mailbox.take();
        for letter in batch {
            // Broadcast frames (welcome, presence) have no MQTT counterpart.
            let Letter::Command(cmd) = letter else {
                continue;
            };
            if let Some(payload) = command_payload(&cmd) {
                if let Err(e) = link.command(&room, &device, &cmd.id, payload).await {
                    tracing::warn!(error = %e, "command not sent");
                }
            }
        }
        if close.is_some() {
            return;
        }
        mailbox.ready().await;
    }
}

impl ReadingTap for BridgeLink {
    fn readings(&self, room: &str, device: &str, items: &[ReadingIn], now_ms: i64) {
        for r in items {
            let ts = r.ts.unwrap_or(now_ms);
            if let Err(e) = self.mirror(
                room,
                device,
                &r.metric,
                (r.value, r.unit.as_deref(), ts, r.seq),
            ) {
                tracing::debug!(error = %e, "mirror dropped a reading");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LimitsConfig;
    use crate::sources::mqtt::ingest::BridgedReading;
    use crate::sources::mqtt::{Bridge, MqttConfig};

    fn sink() -> (Hub, HubSink) {
        let cfg: MqttConfig =
            toml::from_str("[[bridges]]\nname = \"b\"\nurl = \"mqtt://127.0.0.1:1\"\n")
                .expect("config");
        let spec = cfg.validate().expect("valid").remove(0);
        let bridge = Bridge::new(spec).expect("bridge");
        let hub = Hub::new(
            LimitsConfig::default(),
            crate::sinks::history::History::in_memory(Default::default()),
        );
        let sink = HubSink::new(hub.clone(), bridge.link());
        (hub, sink)
    }

    fn msg(ts: Option<i64>, retained: bool) -> BridgedMessage {
        BridgedMessage {
            room: "lab".into(),
            device: "t1".into(),
            readings: vec![BridgedReading {
                metric: "temperature".into(),
                value: 1.0,
                unit: None,
                ts,
                seq: None,
            }],
            retained,
        }
    }

    #[tokio::test]
    async fn retained_messages_seed_once_and_never_repeat_a_reading() {
        let (hub, mut sink) = sink();
        // A retained message for a series the hub has nothing for seeds it.
        assert_eq!(sink.readings(msg(Some(1_000), true)), Ok(1));
        // The same retained message again (re-subscription) is not a new reading.
        assert_eq!(sink.readings(msg(Some(1_000), true)), Ok(0));
        // Nor is a retained message without a time once the series has a value.
        assert_eq!(sink.readings(msg(None, true)), Ok(0));
        // A live reading is always taken, and a retained one newer than it too.
        assert_eq!(sink.readings(msg(Some(2_000), false)), Ok(1));
        assert_eq!(sink.readings(msg(Some(3_000), true)), Ok(1));
        assert_eq!(hub.summaries()[0].offset, 3);
        assert_eq!(&*hub.summaries()[0].devices[0].client, "t1");
    }

    #[tokio::test]
    async fn out_of_range_timestamps_and_long_units_are_refused() {
        let (_, mut sink) = sink();
        let mut m = msg(Some(-5), false);
        assert!(sink.readings(m.clone()).unwrap_err().contains("1970"));
        m.readings[0].ts = None;
        m.readings[0].unit = Some("u".repeat(33));
        assert!(sink.readings(m).unwrap_err().contains("unit"));
    }

    #[tokio::test]
    async fn a_timestamp_far_ahead_of_the_hubs_clock_is_refused() {
        let (hub, mut sink) = sink();
        let now = chrono::Utc::now().timestamp_millis();
        let ahead = hub.limits().max_future_ms as i64;
        let err = sink
            .readings(msg(Some(now + ahead + 60_000), false))
            .unwrap_err();
        assert!(err.contains("limits.max_future_ms"), "{err}");
        assert_eq!(sink.readings(msg(Some(now + 60_000), false)), Ok(1));
    }

    #[test]
    fn commands_become_payloads() {
        let args = RawValue::from_string(r#"{"pct":5}"#.to_string()).expect("json");
        let mut cmd = CommandLetter {
            id: "c-1".into(),
            from: "dash".into(),
            name: "open".into(),
            args: Some(args),
        };
        let p = command_payload(&cmd).expect("a command");
        assert_eq!(
            String::from_utf8(p).expect("utf8"),
            r#"{"id":"c-1","from":"dash","name":"open","args":{"pct":5}}"#
        );
        cmd.args = None;
        let p = command_payload(&cmd).expect("a command");
        assert_eq!(
            String::from_utf8(p).expect("utf8"),
            r#"{"id":"c-1","from":"dash","name":"open"}"#
        );
    }
}
