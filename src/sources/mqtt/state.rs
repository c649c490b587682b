//! A bridge's observable state: connection, last error and counters, read by
//! `GET /api/bridges` and `/metrics` while the bridge task updates them. Also the
//! rate limiter for the bridge's error logs, so a device spewing bad payloads cannot
//! flood the log.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use serde::Serialize;

use super::client::Refusal;
use super::discovery::DiscoveryStatus;

/// Live state of one bridge. Cheap to update from the bridge task (atomics; the last
/// error behind a short std mutex) and to read from HTTP handlers.
#[derive(Debug)]
pub struct BridgeState {
    pub name: String,
    /// The broker URL without credentials.
    pub broker: String,
    pub client_id: String,
    /// The MQTT version spoken: `"3.1.1"` or `"5"`.
    pub protocol: &'static str,
    connected: AtomicBool,
    /// The broker's last CONNACK resumed a stored session.
    session_present: AtomicBool,
    /// The broker has acknowledged every subscription of the current session.
    subscribed: AtomicBool,
    /// Epoch ms of the last successful connect (0: never).
    connected_at: AtomicU64,
    /// MQTT messages received on the subscribed topics (readings, acks, the rest).
    pub messages_in: AtomicU64,
    /// Readings handed to the hub.
    pub readings_in: AtomicU64,
    /// Messages whose topic or payload could not be read.
    pub parse_errors: AtomicU64,
    /// Readings the hub refused (room full, invalid id, limits).
    pub rejected: AtomicU64,
    /// Messages that were not readings and were skipped on purpose: the bridge's own
    /// commands and mirrored readings coming back, topics no mapping claims.
    pub ignored: AtomicU64,
    /// Successful connects after the first.
    pub reconnects: AtomicU64,
    /// Messages left unacked because the hub could not keep their readings (the broker
    /// redelivers them after the bridge reconnects).
    pub store_unavailable: AtomicU64,
    /// Failed polls (connection errors).
    pub connection_errors: AtomicU64,
    /// Commands published to devices.
    pub commands_out: AtomicU64,
    /// Acks received from devices.
    pub acks_in: AtomicU64,
    /// Readings of WebSocket devices published to the broker (`mirror`).
    pub mirrored_out: AtomicU64,
    /// Mirrored readings dropped because the client's request queue was full.
    pub mirror_dropped: AtomicU64,
    last_error: Mutex<Option<LastError>>,
    /// The filters the broker refused in its last SUBACK, with why.
    refused: Mutex<Vec<RefusedSubscription>>,
    /// Home Assistant discovery's entities and problems (`None`: discovery is off).
    discovery: Mutex<Option<DiscoveryStatus>>,
}

/// A subscription the broker refused, with its reason code (`/api/bridges`).
#[derive(Debug, Clone, Serialize)]
pub struct RefusedSubscription {
    pub filter: String,
    #[serde(flatten)]
    pub why: Refusal,
}

#[derive(Debug, Clone, Serialize)]
pub struct LastError {
    pub message: String,
    /// Epoch milliseconds.
    pub at: i64,
}

/// One bridge as `GET /api/bridges` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct BridgeStatus {
    pub name: String,
    pub broker: String,
    pub client_id: String,
    /// `"3.1.1"` or `"5"`.
    pub protocol: &'static str,
    pub connected: bool,
    /// The broker resumed the bridge's stored session on the last connect (false: a new
    /// session, e.g. after the old one expired).
    pub session_present: bool,
    /// The broker has acknowledged the bridge's subscriptions (kept in its persistent
    /// session across reconnects).
    pub subscribed: bool,
    /// Epoch ms of the last successful connect, if any.
    pub connected_at: Option<u64>,
    pub messages_in: u64,
    pub readings_in: u64,
    pub parse_errors: u64,
    pub rejected: u64,
    pub ignored: u64,
    pub reconnects: u64,
    pub connection_errors: u64,
    pub commands_out: u64,
    pub acks_in: u64,
    pub mirrored_out: u64,
    pub mirror_dropped: u64,
    pub last_error: Option<LastError>,
    /// Subscriptions the broker refused in its last SUBACK (e.g. by its ACL), each
    /// with its reason code, the code in words and the broker's reason string (MQTT 5).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused_subscriptions: Vec<RefusedSubscription>,
    /// With `discovery = "homeassistant"`: entities held, refused, and the entities
    /// whose template or state the bridge cannot read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub discovery: Option<DiscoveryStatus>,
}

impl BridgeState {
    pub fn new(name: &str, broker: String, client_id: &str) -> BridgeState {
        BridgeState::with_protocol(name, broker, client_id, "3.1.1")
    }

    pub(crate) fn with_protocol(
        name: &str,
        broker: String,
        client_id: &str,
        protocol: &'static str,
    ) -> BridgeState {
        BridgeState {
            name: name.to_string(),
            broker,
            client_id: client_id.to_string(),
            protocol,
            connected: AtomicBool::new(false),
            session_present: AtomicBool::new(false),
            subscribed: AtomicBool::new(false),
            connected_at: AtomicU64::new(0),
            messages_in: AtomicU64::new(0),
            readings_in: AtomicU64::new(0),
            parse_errors: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            ignored: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            store_unavailable: AtomicU64::new(0),
            connection_errors: AtomicU64::new(0),
            commands_out: AtomicU64::new(0),
            acks_in: AtomicU64::new(0),
            mirrored_out: AtomicU64::new(0),
            mirror_dropped: AtomicU64::new(0),
            last_error: Mutex::new(None),
            refused: Mutex::new(Vec::new()),
            discovery: Mutex::new(None),
        }
    }

    pub(crate) fn set_discovery(&self, status: DiscoveryStatus) {
        *self.discovery.lock().unwrap_or_else(|p| p.into_inner()) = Some(status);
    }

    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub(crate) fn set_connected(&self, up: bool) {
        let was = self.connected.swap(up, Ordering::Relaxed);
        if up {
            let now = chrono::Utc::now().timestamp_millis().max(0) as u64;
            if self.connected_at.swap(now, Ordering::Relaxed) != 0 && !was {
                self.reconnects.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn set_session_present(&self, yes: bool) {
        self.session_present.store(yes, Ordering::Relaxed);
    }

    pub(crate) fn set_refused(&self, refused: Vec<RefusedSubscription>) {
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = refused;
    }

    pub(crate) fn set_subscribed(&self, yes: bool) {
        self.subscribed.store(yes, Ordering::Relaxed);
    }

    pub(crate) fn set_error(&self, message: String) {
        let e = LastError {
            message,
            at: chrono::Utc::now().timestamp_millis(),
        };
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
    }

    pub fn status(&self) -> BridgeStatus {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let at = get(&self.connected_at);
        BridgeStatus {
            name: self.name.clone(),
            broker: self.broker.clone(),
            client_id: self.client_id.clone(),
            protocol: self.protocol,
            connected: self.is_connected(),
            session_present: self.session_present.load(Ordering::Relaxed),
            subscribed: self.subscribed.load(Ordering::Relaxed),
            connected_at: (at != 0).then_some(at),
            messages_in: get(&self.messages_in),
            readings_in: get(&self.readings_in),
            parse_errors: get(&self.parse_errors),
            rejected: get(&self.rejected),
            ignored: get(&self.ignored),
            reconnects: get(&self.reconnects),
            connection_errors: get(&self.connection_errors),
            commands_out: get(&self.commands_out),
            acks_in: get(&self.acks_in),
            mirrored_out: get(&self.mirrored_out),
            mirror_dropped: get(&self.mirror_dropped),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            refused_subscriptions: self
                .refused
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            discovery: self
                .discovery
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        }
    }
}

/// The state of every configured bridge, shared with the HTTP side.
#[derive(Debug, Clone, Default)]
pub(crate) struct Bridges {
    states: Arc<Vec<Arc<BridgeState>>>,
}

impl Bridges {
    pub(crate) fn new(states: Vec<Arc<BridgeState>>) -> Bridges {
        Bridges {
            states: Arc::new(states),
        }
    }

    /// `GET /api/bridges`: `{"bridges":[...]}`.
    pub(crate) fn statuses(&self) -> Vec<BridgeStatus> {
        self.states.iter().map(|s| s.status()).collect()
    }
}

/// The counters of `/metrics` (each `telehub_mqtt_{name}_total{bridge}`), their help and
/// where each bridge keeps it.
type CounterField = fn(&BridgeState) -> &AtomicU64;
const COUNTERS: [(&str, &str, CounterField); 12] = [
    (
        "messages_in",
        "MQTT messages received on subscribed topics.",
        |s| &s.messages_in,
    ),
    ("readings_in", "Bridged readings handed to the hub.", |s| {
        &s.readings_in
    }),
    (
        "parse_errors",
        "MQTT messages whose topic or payload could not be read.",
        |s| &s.parse_errors,
    ),
    ("rejected", "Bridged readings refused by the hub.", |s| {
        &s.rejected
    }),
    (
        "ignored",
        "MQTT messages skipped on purpose (own commands, mirrored echoes).",
        |s| &s.ignored,
    ),
    (
        "reconnects",
        "Reconnects to the broker after the first connect.",
        |s| &s.reconnects,
    ),
    (
        "store_unavailable",
        "MQTT messages left unacked because the hub could not keep their readings.",
        |s| &s.store_unavailable,
    ),
    (
        "connection_errors",
        "Failed connection attempts and dropped connections.",
        |s| &s.connection_errors,
    ),
    (
        "commands_out",
        "Commands published to bridged devices.",
        |s| &s.commands_out,
    ),
    ("acks_in", "Acks received from bridged devices.", |s| {
        &s.acks_in
    }),
    (
        "mirrored_out",
        "Readings of WebSocket devices published to the broker.",
        |s| &s.mirrored_out,
    ),
    (
        "mirror_dropped",
        "Mirrored readings dropped on a full request queue.",
        |s| &s.mirror_dropped,
    ),
];

/// The bridges' part of `/metrics`, labelled `bridge="NAME"`, read from each bridge's
/// atomics at scrape time. A collector rather than `Family`s in the hub's registry: the
/// same atomics answer `GET /api/bridges` and a [`BridgeState`] is built without a hub
/// (tools and tests drive a bridge alone), so they stay the one source of both. The set
/// of bridges is fixed at start, and a scrape reads each atomic once.
impl Collector for Bridges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if self.states.is_empty() {
            return Ok(());
        }
        let mut connected = encoder.encode_descriptor(
            "telehub_mqtt_connected",
            "1 while the bridge is connected to its broker.",
            None,
            MetricType::Gauge,
        )?;
        for s in self.states.iter() {
            let up = ConstGauge::new(i64::from(s.is_connected()));
            up.encode(connected.encode_family(&[("bridge", s.name.as_str())])?)?;
        }
        for (name, help, field) in COUNTERS {
            // The encoder adds `_total` to a counter's name.
            let name = format!("telehub_mqtt_{name}");
            let mut family = encoder.encode_descriptor(&name, help, None, MetricType::Counter)?;
            for s in self.states.iter() {
                let value = ConstCounter::new(field(s).load(Ordering::Relaxed));
                value.encode(family.encode_family(&[("bridge", s.name.as_str())])?)?;
            }
        }
        Ok(())
    }
}

/// Lets through at most `burst` log lines per `window`, and reports how many it held
/// back when the next window opens.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    window: Duration,
    burst: u32,
    started: Instant,
    used: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub(crate) fn new(burst: u32, window: Duration) -> LogLimiter {
        LogLimiter {
            window,
            burst,
            started: Instant::now(),
            used: 0,
            suppressed: 0,
        }
    }

    /// `Some(n)` when this line may be logged, `n` being how many were suppressed
    /// since the last one let through; `None` to stay quiet.
    pub(crate) fn allow(&mut self) -> Option<u64> {
        let now = Instant::now();
        if now.duration_since(self.started) >= self.window {
            self.started = now;
            self.used = 0;
        }
        if self.used < self.burst {
            self.used += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_lets_a_burst_through_then_counts() {
        let mut l = LogLimiter::new(2, Duration::from_secs(3600));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        l.started -= Duration::from_secs(3601);
        assert_eq!(l.allow(), Some(2));
    }

    #[test]
    fn reconnects_count_only_after_the_first_connect() {
        let s = BridgeState::new("b", "mqtt://h:1883".into(), "c");
        s.set_connected(true);
        s.set_connected(true);
        assert_eq!(s.status().reconnects, 0);
        s.set_connected(false);
        s.set_connected(true);
        assert_eq!(s.status().reconnects, 1);
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(Bridges::new(vec![Arc::new(s)])));
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains("telehub_mqtt_connected{bridge=\"b\"} 1"),
            "{out}"
        );
        assert!(
            out.contains("telehub_mqtt_reconnects_total{bridge=\"b\"} 1"),
            "{out}"
        );
        for (name, _, _) in COUNTERS {
            let name = format!("telehub_mqtt_{name}_total");
            assert!(out.contains(&format!("# TYPE {name} counter\n")), "{out}");
            assert!(out.contains(&format!("\n{name}{{bridge=\"b\"}} ")), "{out}");
        }
        assert!(
            out.contains("# TYPE telehub_mqtt_connected gauge\n"),
            "{out}"
        );
    }
}
