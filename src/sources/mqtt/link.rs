//! The way back from the hub to the broker: commands for bridged devices and mirrored
//! readings of WebSocket devices, published through the bridge's client (3.1.1 or MQTT 5,
//! [`super::client`]). With MQTT 5 a command carries a response topic and correlation
//! data ([`correlation`]), and the device's answer there is routed back as its ack.
//!
//! A sink-side handle of the bridge: cheap to clone, held by the hub (mirroring) and by
//! each bridged device's mailbox drain ([`super::members`]). Publishes share the
//! request queue with acks, so they are capped ([`MAX_QUEUED_PUBLISHES`]) and acks always
//! find room.

use std::collections::HashSet;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{AcqRel, Acquire};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::client::{Client, ResponseRoute};
use super::config::BridgeSpec;
use super::state::BridgeState;
use super::BridgeError;

/// Requests (acks, subscriptions, commands, mirrored readings) queued for the rumqttc
/// event loop.
pub(crate) const REQUEST_QUEUE: usize = 1024;

/// Commands and mirrored readings queued in the request queue at most, so that acks
/// always find room. (The ingest task waits for room for its acks while the poll loop
/// may wait for the ingest task: were the queue full of publishes, neither would move.)
/// A mirrored reading past the cap is dropped and counted (`mirror_dropped`), so the
/// hub's publish path never waits; a command waits for room up to [`COMMAND_WAIT`].
pub(crate) const MAX_QUEUED_PUBLISHES: usize = REQUEST_QUEUE / 2;

/// How long a command waits for room among the queued publishes before it fails.
pub(crate) const COMMAND_WAIT: Duration = Duration::from_secs(5);

/// (room, device) pairs whose readings this bridge mirrors; their echoes from the broker
/// are dropped. Past this many, new pairs are not remembered (their echoes are still
/// recognised by the `src` marker in the payload).
pub(crate) const MAX_MIRRORED_DEVICES: usize = 4096;

/// The way from the hub back to the broker: commands and mirrored readings.
#[derive(Clone)]
pub struct BridgeLink {
    inner: Arc<LinkInner>,
}

struct LinkInner {
    client: Client,
    /// Publishes handed to the request queue and not yet taken by the event loop.
    queued_publishes: AtomicUsize,
    spec: Arc<BridgeSpec>,
    state: Arc<BridgeState>,
    mirrored: Mutex<HashSet<(String, String)>>,
    /// `"src":"<client id>"` as mirrored payloads carry it, to recognise their echoes.
    src_marker: String,
}

impl LinkInner {
    /// Takes a place among the [`MAX_QUEUED_PUBLISHES`]; false when none is free.
    fn reserve_publish(&self) -> bool {
        self.queued_publishes
            .fetch_update(AcqRel, Acquire, |n| {
                (n < MAX_QUEUED_PUBLISHES).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives a place back: the event loop took a publish (or queueing it failed).
    fn release_publish(&self) {
        let _ = self
            .queued_publishes
            .fetch_update(AcqRel, Acquire, |n| n.checked_sub(1));
    }
}

#[derive(serde::Serialize)]
struct MirrorPayload<'a> {
    value: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit: Option<&'a str>,
    ts: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    src: &'a str,
}

impl BridgeLink {
    /// The link of a bridge whose rumqttc client is `client`.
    pub(super) fn new(
        client: Client,
        spec: Arc<BridgeSpec>,
        state: Arc<BridgeState>,
    ) -> BridgeLink {
        let src_marker = format!(
            "\"src\":{}",
            serde_json::to_string(&spec.client_id).unwrap_or_default()
        );
        BridgeLink {
            inner: Arc::new(LinkInner {
                client,
                queued_publishes: AtomicUsize::new(0),
                spec,
                state,
                mirrored: Mutex::new(HashSet::new()),
                src_marker,
            }),
        }
    }

    /// The event loop took a publish off the request queue: its place is free again.
    pub(super) fn release_publish(&self) {
        self.inner.release_publish();
    }

    pub fn name(&self) -> &str {
        &self.inner.spec.name
    }

    pub fn state(&self) -> &Arc<BridgeState> {
        &self.inner.state
    }

    /// How long a bridged device may stay silent before it leaves its room.
    pub fn device_idle(&self) -> Option<Duration> {
        self.inner.spec.device_idle
    }

    /// True when this bridge mirrors WebSocket readings to its broker.
    pub fn mirrors(&self) -> bool {
        self.inner.spec.mirror
    }

    /// Publishes command `id` (QoS 1) on the device's command topic; with MQTT 5, with
    /// the bridge's response topic and correlation data naming room, device and `id`.
    /// Waits (up to [`COMMAND_WAIT`]) while [`MAX_QUEUED_PUBLISHES`] publishes are queued.
    pub async fn command(
        &self,
        room: &str,
        device: &str,
        id: &str,
        payload: Vec<u8>,
    ) -> Result<(), BridgeError> {
        let spec = &self.inner.spec;
        let topic = spec
            .command_topic
            .render(room, device, None)
            .ok_or_else(|| BridgeError::Publish {
                bridge: spec.name.clone(),
                topic: spec.command_topic.to_string(),
                message: "the command topic cannot be rendered".into(),
            })?;
        let deadline = tokio::time::Instant::now() + COMMAND_WAIT;
        while !self.inner.reserve_publish() {
            if tokio::time::Instant::now() >= deadline {
                return Err(BridgeError::Publish {
                    bridge: spec.name.clone(),
                    topic,
                    message: "the broker is not taking publishes (request queue busy)".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let response = spec.response_topic.as_ref().map(|t| ResponseRoute {
            topic: t.clone(),
            correlation: correlation(room, device, id),
        });
        self.inner
            .client
            .try_publish(topic.clone(), payload, response)
            .map_err(|e| {
                self.inner.release_publish();
                BridgeError::Publish {
                    bridge: spec.name.clone(),
                    topic,
                    message: e.to_string(),
                }
            })?;
        self.inner
            .state
            .commands_out
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// Publishes `payload` (QoS 1, not retained) on `topic`, for the alert notification
    /// sink. Refused at once while the bridge is not connected (the sink retries with
    /// backoff); waits (up to [`COMMAND_WAIT`]) while [`MAX_QUEUED_PUBLISHES`] publishes
    /// are queued.
    pub(crate) async fn publish(&self, topic: &str, payload: Vec<u8>) -> Result<(), BridgeError> {
        let spec = &self.inner.spec;
        let fail = |message: String| BridgeError::Publish {
            bridge: spec.name.clone(),
            topic: topic.to_string(),
            message,
        };
        if !self.inner.state.is_connected() {
            return Err(fail("the bridge is not connected to its broker".into()));
        }
        let deadline = tokio::time::Instant::now() + COMMAND_WAIT;
        while !self.inner.reserve_publish() {
            if tokio::time::Instant::now() >= deadline {
                return Err(fail(
                    "the broker is not taking publishes (request queue busy)".into(),
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.inner
            .client
            .try_publish(topic.to_string(), payload, None)
            .map_err(|e| {
                self.inner.release_publish();
                fail(e.to_string())
            })
    }

    /// Publishes a WebSocket device's reading (QoS 1, not retained) on the first topic
    /// template, as a reading object. Never waits: a full request queue drops it and
    /// counts it in `mirror_dropped`.
    pub fn mirror(
        &self,
        room: &str,
        device: &str,
        metric: &str,
        reading: (f64, Option<&str>, i64, Option<u64>),
    ) -> Result<(), BridgeError> {
        let spec = &self.inner.spec;
        let Some(topic) = spec.topics[0].template.render(room, device, Some(metric)) else {
            return Ok(());
        };
        {
            let mut m = self
                .inner
                .mirrored
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if m.len() < MAX_MIRRORED_DEVICES {
                m.insert((room.to_string(), device.to_string()));
            }
        }
        let (value, unit, ts, seq) = reading;
        let body = MirrorPayload {
            value,
            unit,
            ts,
            seq,
            src: &spec.client_id,
        };
        let payload = serde_json::to_vec(&body).map_err(|e| BridgeError::Publish {
            bridge: spec.name.clone(),
            topic: topic.clone(),
            message: e.to_string(),
        })?;
        use std::sync::atomic::Ordering::Relaxed;
        if !self.inner.reserve_publish() {
            self.inner.state.mirror_dropped.fetch_add(1, Relaxed);
            return Err(BridgeError::Publish {
                bridge: spec.name.clone(),
                topic,
                message: format!("{MAX_QUEUED_PUBLISHES} publishes already queued"),
            });
        }
        match self.inner.client.try_publish(topic.clone(), payload, None) {
            Ok(()) => {
                self.inner.state.mirrored_out.fetch_add(1, Relaxed);
                Ok(())
            }
            Err(e) => {
                self.inner.release_publish();
                self.inner.state.mirror_dropped.fetch_add(1, Relaxed);
                Err(BridgeError::Publish {
                    bridge: spec.name.clone(),
                    topic,
                    message: e.to_string(),
                })
            }
        }
    }

    pub(super) fn is_mirror_echo(&self, room: &str, device: &str, payload: &[u8]) -> bool {
        if !self.inner.spec.mirror {
            return false;
        }
        let known = self
            .inner
            .mirrored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(room.to_string(), device.to_string()));
        known
            || payload
                .windows(self.inner.src_marker.len())
                .any(|w| w == self.inner.src_marker.as_bytes())
    }
}

/// The correlation data of command `id` to `device` in `room`: the JSON array
/// `[room, device, id]`, so that the answer names its command without the bridge
/// keeping a table of commands in flight (and survives a restart of the hub).
pub(crate) fn correlation(room: &str, device: &str, id: &str) -> bytes::Bytes {
    serde_json::to_vec(&(room, device, id))
        .unwrap_or_default()
        .into()
}

/// Room, device and command id from correlation data made by [`correlation`].
pub(crate) fn parse_correlation(data: &[u8]) -> Option<(String, String, String)> {
    serde_json::from_slice(data).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::mqtt::Bridge;

    #[test]
    fn correlation_data_names_the_command() {
        let c = correlation("lab", "valve", "c-\"1\"");
        assert_eq!(
            parse_correlation(&c),
            Some(("lab".into(), "valve".into(), "c-\"1\"".into()))
        );
        assert_eq!(parse_correlation(b"not ours"), None);
    }

    #[test]
    fn queued_publishes_are_capped_so_acks_find_room() {
        let cfg: crate::sources::mqtt::MqttConfig = toml::from_str(
            "[[bridges]]\nname = \"b\"\nurl = \"mqtt://127.0.0.1:1\"\nmirror = true\n",
        )
        .expect("config");
        let bridge = Bridge::new(cfg.validate().expect("valid").remove(0)).expect("bridge");
        let link = bridge.link();
        // No event loop runs: every mirrored reading stays queued.
        for i in 0..MAX_QUEUED_PUBLISHES {
            link.mirror("lab", "ws1", "t", (i as f64, None, 1, None))
                .expect("room for it");
        }
        assert!(link
            .mirror("lab", "ws1", "t", (0.0, None, 1, None))
            .is_err());
        let s = link.state().status();
        assert_eq!(
            (s.mirrored_out, s.mirror_dropped),
            (MAX_QUEUED_PUBLISHES as u64, 1)
        );
        link.release_publish();
        assert!(link.inner.reserve_publish());
        assert!(link.is_mirror_echo("lab", "ws1", b"1"));
        assert!(link.is_mirror_echo(
            "lab",
            "other",
            format!(r#"{{"value":1,"src":"{}"}}"#, bridge.spec().client_id).as_bytes()
        ));
        assert!(!link.is_mirror_echo("lab", "other", br#"{"value":1}"#));
    }
}
