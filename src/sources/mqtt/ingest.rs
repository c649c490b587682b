//! The ingest task: MQTT messages to readings and acks for the hub, then the manual
//! ack to the broker once the hub keeps them (with durable acks: once they are committed
//! to disk).
//!
//! A source stage: the poll loop ([`super::bridge`]) hands every `Publish` through a
//! bounded channel; here the topic template and the payload decoder turn it into the
//! same readings a WebSocket device sends, grouped by device, for the [`BridgeSink`]
//! (the hub, in the server; a collector, in tests).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use super::client::{Client, Incoming};
use super::config::{BridgeSpec, TopicSpec};
use super::discovery::Registry;
use super::homie::{Event, Homie};
use super::link::{parse_correlation, BridgeLink};
use super::payload::{self, PayloadFormat};
use super::state::{BridgeState, LogLimiter};
use crate::hub::labels::Label;
use telehub_protocol::ids::{valid_id, valid_metric};

/// MQTT messages received by the poll loop and not yet taken by the ingest task. When it
/// is full the poll loop waits for the ingest task, which then holds back keep-alive
/// pings too; at 1,024 messages (a few milliseconds of ingest work) that wait is far
/// shorter than any keep-alive interval, and meanwhile the broker keeps the backlog.
pub(crate) const INGEST_QUEUE: usize = 1024;

/// How often the ingest task calls [`BridgeSink::tick`].
const SINK_TICK: Duration = Duration::from_secs(1);

/// Messages handed to the sink whose PUBACK waits for the disk, at most. Their acks go
/// out in order as commits land; at this many the task stops taking messages until the
/// oldest is settled (the poll loop's queue, then the broker, hold the rest). The
/// broker's own in-flight window (Mosquitto's `max_inflight_messages`, 20 by default)
/// is usually the smaller bound.
pub(crate) const MAX_UNACKED: usize = 1024;

/// After a message could not be kept, the bridge reconnects (so the broker redelivers
/// what is unacknowledged) at most this often.
const REDELIVER_EVERY: Duration = Duration::from_secs(1);

/// What must hold before the broker may forget a message (see
/// [`BridgeSink::take_commit`]).
#[derive(Debug, Default)]
pub struct Commit {
    /// Receipts of the message's readings; all must be kept.
    pub(crate) receipts: Vec<crate::hub::receipt::Receipt>,
    /// Some readings were not kept at all (the store refused them): never acked.
    pub(crate) refused: bool,
}

impl Commit {
    /// Whether the message's readings are all kept (waiting for the disk if need be).
    async fn settle(receipts: Vec<crate::hub::receipt::Receipt>, refused: bool) -> bool {
        if refused {
            return false;
        }
        for r in receipts {
            if r.wait().await.is_err() {
                return false;
            }
        }
        true
    }
}

/// One reading from the broker, after topic mapping and payload decoding: the same type a
/// WebSocket device's reading becomes, since both take the same path into a room (`ts`
/// `None` means the hub stamps its receive time).
pub type BridgedReading = telehub_protocol::inbound::ReadingIn;

/// The readings of one MQTT message for one device.
#[derive(Debug, Clone, PartialEq)]
pub struct BridgedMessage {
    pub room: String,
    pub device: String,
    pub readings: Vec<BridgedReading>,
    /// A retained message: the broker's stored last value, re-sent on subscribe. Seeds
    /// the series; never counted twice.
    pub retained: bool,
}

/// A device's answer to a command, from the ack topic.
#[derive(Debug, Clone)]
pub struct BridgedAck {
    pub room: String,
    pub device: String,
    pub id: String,
    pub ok: bool,
    pub result: Option<Box<RawValue>>,
}

/// Where a bridge hands what it reads: the hub, in the server; a collector, in tests.
/// Called from the bridge's ingest task only, one message at a time.
pub trait BridgeSink: Send + 'static {
    /// Readings of one device. `Ok(n)`: the hub accepted `n` (duplicates excluded);
    /// `Err`: why it refused them all (logged and counted as rejected).
    fn readings(&mut self, msg: BridgedMessage) -> Result<usize, String>;
    /// A device's ack to a command.
    fn ack(&mut self, ack: BridgedAck) -> Result<(), String>;
    /// Called about once a second between messages (idle devices leave here).
    fn tick(&mut self) {}
    /// What the readings handed over since the last call need before the broker's
    /// message is acked (the hub: their durable receipts). `None`: ack at once.
    fn take_commit(&mut self) -> Option<Commit> {
        None
    }
    /// A discovered series' name and device class (`None`: the entity is gone); false
    /// when the hub holds too many labels to keep this one.
    fn label(&mut self, _room: &str, _device: &str, _metric: &str, _label: Option<Label>) -> bool {
        true
    }
}

/// The ingest task: topic and payload to readings, to the sink, then the ack to the
/// broker.
pub(super) struct Ingest {
    pub(super) spec: Arc<BridgeSpec>,
    pub(super) state: Arc<BridgeState>,
    pub(super) link: BridgeLink,
    pub(super) client: Client,
    pub(super) log: LogLimiter,
    /// Home Assistant discovery's entities (`None`: discovery is off).
    pub(super) discovery: Option<Registry>,
    /// Homie 4 properties (`None`: not `discovery = "homie"`).
    pub(super) homie: Option<Homie>,
}

/// An MQTT 5 answer on the response topic: the command's id is in the correlation
/// data (an `id` in the payload is not needed, and ignored).
#[derive(Deserialize)]
struct ResponsePayload {
    ok: bool,
    #[serde(default)]
    result: Option<Box<RawValue>>,
}

/// An ack as devices publish it.
#[derive(Deserialize)]
struct AckPayload {
    id: String,
    ok: bool,
    #[serde(default)]
    result: Option<Box<RawValue>>,
}

impl Ingest {
    /// Takes messages in order and acks each once the sink keeps its readings; a
    /// message whose readings are not kept stays unacked, and the bridge is asked to
    /// reconnect (`redeliver`) so the broker sends it again.
    pub(super) async fn run<S: BridgeSink>(
        mut self,
        mut rx: mpsc::Receiver<Incoming>,
        mut sink: S,
        redeliver: Arc<tokio::sync::Notify>,
    ) {
        let mut tick = tokio::time::interval(SINK_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut unacked: VecDeque<(Incoming, Commit)> = VecDeque::new();
        let mut last_redeliver: Option<tokio::time::Instant> = None;
        let mut open = true;
        while open || !unacked.is_empty() {
            let head = unacked
                .front()
                .map(|(_, c)| (c.receipts.clone(), c.refused));
            tokio::select! {
                p = rx.recv(), if open && unacked.len() < MAX_UNACKED => match p {
                    Some(p) => {
                        self.handle(&p, &mut sink);
                        match sink.take_commit() {
                            Some(commit) => unacked.push_back((p, commit)),
                            None if unacked.is_empty() => self.puback(&p).await,
                            None => unacked.push_back((p, Commit::default())),
                        }
                    }
                    None => open = false,
                },
                kept = Commit::settle(head.clone().map(|h| h.0).unwrap_or_default(), head.as_ref().is_some_and(|h| h.1)), if head.is_some() => {
                    let Some((p, _)) = unacked.pop_front() else { continue };
                    if kept {
                        // Only now may the broker forget it.
                        self.puback(&p).await;
                    } else {
                        self.state.store_unavailable.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let now = tokio::time::Instant::now();
                        if last_redeliver.is_none_or(|t| now.duration_since(t) >= REDELIVER_EVERY) {
                            last_redeliver = Some(now);
                            tracing::warn!(topic = %p.topic, "readings not kept (history store unavailable): message left unacked for redelivery");
                            redeliver.notify_one();
                        }
                    }
                }
                _ = tick.tick() => {
                    self.flush_homie(&mut sink);
                    sink.tick();
                }
            }
        }
    }

    async fn puback(&self, p: &Incoming) {
        if let Err(e) = self.client.ack(p).await {
            tracing::debug!(error = %e, "cannot queue puback");
        }
    }

    fn problem(&mut self, counter: &std::sync::atomic::AtomicU64, topic: &str, message: String) {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(suppressed) = self.log.allow() {
            tracing::warn!(topic, suppressed, "{message}");
        }
        self.state.set_error(format!("{topic}: {message}"));
    }

    fn handle<S: BridgeSink>(&mut self, p: &Incoming, sink: &mut S) {
        use std::sync::atomic::Ordering::Relaxed;
        let state = self.state.clone();
        let topic = p.topic.as_str();
        if self.spec.response_topic.as_deref() == Some(topic) {
            self.response(p, sink);
            return;
        }
        if let Some(c) = self.spec.ack_topic.matches(topic) {
            let (Some(room), Some(device)) = (c.room, c.device) else {
                return;
            };
            match serde_json::from_slice::<AckPayload>(&p.payload) {
                Ok(a) if !a.id.is_empty() && a.id.len() <= 128 => {
                    state.acks_in.fetch_add(1, Relaxed);
                    let ack = BridgedAck {
                        room: room.to_string(),
                        device: device.to_string(),
                        id: a.id,
                        ok: a.ok,
                        result: a.result,
                    };
                    if let Err(e) = sink.ack(ack) {
                        self.problem(&state.rejected, topic, format!("ack refused: {e}"));
                    }
                }
                Ok(_) => self.problem(
                    &state.parse_errors,
                    topic,
                    "ack `id` must be 1 to 128 characters".into(),
                ),
                Err(e) => self.problem(
                    &state.parse_errors,
                    topic,
                    format!("ack is not {{\"id\",\"ok\",\"result\"?}}: {e}"),
                ),
            }
            return;
        }
        if self.discovered(p, sink) {
            return;
        }
        if self.spec.command_topic.matches(topic).is_some() {
            // Our own commands (or another hub's) coming back through the subscription.
            state.ignored.fetch_add(1, Relaxed);
            return;
        }
        let Some((mapping, caps)) = self
            .spec
            .topics
            .iter()
            .find_map(|t| t.template.matches(topic).map(|c| (t, c)))
        else {
            state.ignored.fetch_add(1, Relaxed);
            return;
        };
        let room = mapping.room.as_deref().or(caps.room);
        let topic_device = mapping.device.as_deref().or(caps.device);
        if let (Some(r), Some(d)) = (room, topic_device) {
            if self.link.is_mirror_echo(r, d, &p.payload) {
                state.ignored.fetch_add(1, Relaxed);
                return;
            }
        }
        let now = chrono::Utc::now().timestamp_millis();
        let items = match payload::decode(&p.payload, mapping.format, now) {
            Ok(items) => items,
            Err(e) => {
                self.problem(&state.parse_errors, topic, format!("bad payload: {e}"));
                return;
            }
        };
        match map_items(mapping, room, topic_device, caps.metric, items) {
            Ok(messages) => {
                for (room, device, readings) in messages {
                    let n = readings.len();
                    let msg = BridgedMessage {
                        room,
                        device,
                        readings,
                        retained: p.retain,
                    };
                    match sink.readings(msg) {
                        Ok(accepted) => {
                            state.readings_in.fetch_add(accepted as u64, Relaxed);
                        }
                        Err(e) => {
                            state.rejected.fetch_add(n as u64 - 1, Relaxed);
                            self.problem(&state.rejected, topic, format!("readings refused: {e}"));
                        }
                    }
                }
            }
            Err(e) => self.problem(&state.parse_errors, topic, e),
        }
    }
}

impl Ingest {
    /// A device's MQTT 5 answer to a command, on the bridge's response topic: its
    /// correlation data names room, device and command, and it goes to the sink as
    /// that command's ack.
    fn response<S: BridgeSink>(&mut self, p: &Incoming, sink: &mut S) {
        let state = self.state.clone();
        let topic = p.topic.as_str();
        let Some((room, device, id)) = p.correlation.as_deref().and_then(parse_correlation) else {
            self.problem(
                &state.parse_errors,
                topic,
                "answer without the command's correlation data".into(),
            );
            return;
        };
        match serde_json::from_slice::<ResponsePayload>(&p.payload) {
            Ok(r) => {
                state
                    .acks_in
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let ack = BridgedAck {
                    room,
                    device,
                    id,
                    ok: r.ok,
                    result: r.result,
                };
                if let Err(e) = sink.ack(ack) {
                    self.problem(&state.rejected, topic, format!("ack refused: {e}"));
                }
            }
            Err(e) => self.problem(
                &state.parse_errors,
                topic,
                format!("answer is not {{\"ok\",\"result\"?}}: {e}"),
            ),
        }
    }

    /// A discovery config, or the state of a discovered entity: handled (true), or not
    /// discovery's (false).
    fn discovered<S: BridgeSink>(&mut self, p: &Incoming, sink: &mut S) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        if self.homie.is_some() {
            return self.homie(p, sink);
        }
        let Some(registry) = self.discovery.as_mut() else {
            return false;
        };
        let topic = p.topic.as_str();
        let state = self.state.clone();
        if Registry::is_config(topic) {
            let change = registry.config(topic, &p.payload);
            state
                .parse_errors
                .fetch_add(registry.take_unread(), Relaxed);
            state.set_discovery(registry.status());
            let change = match change {
                Ok(c) => c,
                Err(e) => {
                    self.problem(&state.parse_errors, topic, e);
                    return true;
                }
            };
            if let Some(old) = &change.removed {
                sink.label(&old.room, &old.device, &old.metric, None);
            }
            if let Some(e) = &change.added {
                let label = Label {
                    name: e.name.clone(),
                    device_class: e.device_class.clone(),
                    device_name: e.device_name.clone(),
                };
                if !sink.label(&e.room, &e.device, &e.metric, Some(label)) {
                    self.problem(
                        &state.rejected,
                        topic,
                        format!(
                            "the name of {} is not kept: the hub holds {} series labels (its limit)",
                            e.id,
                            crate::hub::labels::MAX_LABELS
                        ),
                    );
                }
            }
            if let Some(t) = change.unsubscribe {
                if let Err(e) = self.client.try_unsubscribe(t.clone()) {
                    self.problem(
                        &state.connection_errors,
                        &t,
                        format!("cannot unsubscribe: {e}"),
                    );
                }
            }
            if let Some(t) = change.subscribe {
                if let Err(e) = self.client.try_subscribe(t.clone()) {
                    self.problem(
                        &state.connection_errors,
                        &t,
                        format!("cannot subscribe the state topic: {e}"),
                    );
                }
            }
            return true;
        }
        let Some(values) = registry.state(topic, &p.payload) else {
            return false;
        };
        let unread = registry.take_unread();
        state.parse_errors.fetch_add(unread, Relaxed);
        // The status is copied only when a problem came or went, not per reading.
        if unread > 0 || registry.take_cleared() {
            state.set_discovery(registry.status());
        }
        for (e, value) in values {
            let msg = BridgedMessage {
                room: e.room,
                device: e.device,
                readings: vec![BridgedReading {
                    metric: e.metric,
                    value,
                    unit: e.unit,
                    ts: None,
                    seq: None,
                }],
                retained: p.retain,
            };
            match sink.readings(msg) {
                Ok(accepted) => {
                    state.readings_in.fetch_add(accepted as u64, Relaxed);
                }
                Err(why) => {
                    self.problem(&state.rejected, topic, format!("readings refused: {why}"));
                }
            }
        }
        true
    }
}

impl Ingest {
    /// A message under `homie/` (true), or not Homie's (false).
    fn homie<S: BridgeSink>(&mut self, p: &Incoming, sink: &mut S) -> bool {
        let Some(homie) = self.homie.as_mut() else {
            return false;
        };
        let Some(events) = homie.message(&p.topic, &p.payload) else {
            return false;
        };
        self.homie_events(events, p.retain, &p.topic, sink);
        true
    }

    /// Held Homie values whose datatype has come (retained seeds).
    fn flush_homie<S: BridgeSink>(&mut self, sink: &mut S) {
        let Some(homie) = self.homie.as_mut() else {
            return;
        };
        let events = homie.flush();
        if !events.is_empty() {
            self.homie_events(events, true, "homie/", sink);
        }
    }

    fn homie_events<S: BridgeSink>(
        &mut self,
        events: Vec<Event>,
        retained: bool,
        topic: &str,
        sink: &mut S,
    ) {
        use std::sync::atomic::Ordering::Relaxed;
        let Some(homie) = self.homie.as_mut() else {
            return;
        };
        let state = self.state.clone();
        let unread = std::mem::take(&mut homie.unread);
        if unread > 0 || events.iter().any(|e| !matches!(e, Event::Reading { .. })) {
            state.parse_errors.fetch_add(unread, Relaxed);
            state.set_discovery(homie.status());
        }
        for e in events {
            match e {
                Event::Label {
                    room,
                    device,
                    metric,
                    label,
                } => {
                    if !sink.label(&room, &device, &metric, Some(label)) {
                        state.rejected.fetch_add(1, Relaxed);
                    }
                }
                Event::Removed {
                    room,
                    device,
                    metric,
                } => {
                    sink.label(&room, &device, &metric, None);
                }
                Event::Reading {
                    room,
                    device,
                    metric,
                    unit,
                    value,
                } => {
                    let msg = BridgedMessage {
                        room,
                        device,
                        readings: vec![BridgedReading {
                            metric,
                            value,
                            unit,
                            ts: None,
                            seq: None,
                        }],
                        retained,
                    };
                    match sink.readings(msg) {
                        Ok(n) => {
                            state.readings_in.fetch_add(n as u64, Relaxed);
                        }
                        Err(why) => {
                            self.problem(
                                &state.rejected,
                                topic,
                                format!("readings refused: {why}"),
                            );
                        }
                    }
                }
            }
        }
    }
}

type Grouped = Vec<(String, String, Vec<BridgedReading>)>;

/// Applies a topic mapping to decoded payload items: fills in room, device and metric,
/// checks them, and groups the readings by device.
fn map_items(
    mapping: &TopicSpec,
    room: Option<&str>,
    topic_device: Option<&str>,
    topic_metric: Option<&str>,
    items: Vec<payload::Item>,
) -> Result<Grouped, String> {
    let room = room.ok_or("no room: the mapping gives none")?;
    if !valid_id(room) {
        return Err(format!(
            "room `{room}` from the topic is not a valid id (1 to 64 of A-Za-z0-9_.-)"
        ));
    }
    let base_metric = mapping.metric.as_deref().or(topic_metric);
    let mut out: Grouped = Vec::new();
    for item in items {
        let device = match (topic_device, item.device.as_deref()) {
            (Some(d), _) | (None, Some(d)) => d,
            (None, None) => {
                return Err(
                    "no device: the topic names none and the payload has no SenML base name".into(),
                )
            }
        };
        if !valid_id(device) {
            return Err(format!(
                "device `{device}` is not a valid id (1 to 64 of A-Za-z0-9_.-)"
            ));
        }
        let metric = match (base_metric, item.metric.as_deref()) {
            (Some(b), Some(m)) => format!("{b}/{m}"),
            (Some(m), None) | (None, Some(m)) => m.to_string(),
            (None, None) => {
                return Err(format!(
                    "no metric: the topic has no {{metric}}, none is fixed, and the {} payload names none",
                    match mapping.format {
                        PayloadFormat::Auto => "auto-detected",
                        PayloadFormat::Number => "number",
                        PayloadFormat::Reading => "reading",
                        PayloadFormat::Object => "object",
                        PayloadFormat::Senml => "SenML",
                    }
                ))
            }
        };
        if !valid_metric(&metric) {
            return Err(format!(
                "metric `{metric}` is not valid (1 to 64 of A-Za-z0-9_.-/)"
            ));
        }
        let reading = BridgedReading {
            metric,
            value: item.value,
            unit: item.unit,
            ts: item.ts,
            seq: item.seq,
        };
        match out.iter_mut().find(|(r, d, _)| r == room && d == device) {
            Some((_, _, v)) => v.push(reading),
            None => out.push((room.to_string(), device.to_string(), vec![reading])),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::mqtt::template::TopicTemplate;

    fn mapping(template: &str, room: Option<&str>, metric: Option<&str>) -> TopicSpec {
        TopicSpec {
            template: TopicTemplate::parse(template).expect("valid"),
            room: room.map(str::to_string),
            device: None,
            metric: metric.map(str::to_string),
            format: PayloadFormat::Auto,
        }
    }

    fn decode(p: &str) -> Vec<payload::Item> {
        payload::decode(p.as_bytes(), PayloadFormat::Auto, 0).expect("decodes")
    }

    #[test]
    fn topic_metric_and_flat_object_fields_combine() {
        let m = mapping("home/{device}/{metric}", Some("garden"), None);
        let g = map_items(
            &m,
            Some("garden"),
            Some("plug"),
            Some("power"),
            decode("12"),
        )
        .expect("maps");
        assert_eq!(g[0].0, "garden");
        assert_eq!(g[0].1, "plug");
        assert_eq!(g[0].2[0].metric, "power");
        let g = map_items(
            &m,
            Some("garden"),
            Some("plug"),
            Some("env"),
            decode(r#"{"t":1}"#),
        )
        .expect("maps");
        assert_eq!(g[0].2[0].metric, "env/t");
    }

    #[test]
    fn senml_base_names_become_devices() {
        let m = mapping("senml/{room}", None, None);
        let g = map_items(
            &m,
            Some("lab"),
            None,
            None,
            decode(r#"[{"bn":"urn:dev:a1:","n":"t","v":1},{"bn":"urn:dev:b2:","n":"t","v":2}]"#),
        )
        .expect("maps");
        assert_eq!(g.len(), 2);
        assert_eq!((g[0].1.as_str(), g[1].1.as_str()), ("a1", "b2"));
    }

    #[test]
    fn missing_or_bad_names_are_errors() {
        let m = mapping("home/{room}/{device}/{_}", None, None);
        let e = map_items(&m, Some("r"), Some("d"), None, decode("1")).unwrap_err();
        assert!(e.contains("no metric"), "{e}");
        let e = map_items(&m, Some("bad room"), Some("d"), Some("x"), decode("1")).unwrap_err();
        assert!(e.contains("room `bad room`"), "{e}");
        let e = map_items(&m, Some("r"), Some("d"), None, decode(r#"{"a b":1}"#)).unwrap_err();
        assert!(e.contains("metric `a b`"), "{e}");
        let e = map_items(&m, Some("r"), None, Some("m"), decode("1")).unwrap_err();
        assert!(e.contains("no device"), "{e}");
    }
}
