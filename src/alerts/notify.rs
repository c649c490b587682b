//! Notifications: `[[alerts.sinks]]` (webhook, mqtt, log), each fed every transition
//! that no silence covers, through a bounded queue of its own and one worker task that
//! delivers, retries with backoff, and keeps the counts `GET /api/alerts/sinks` and
//! `/metrics` show.
//!
//! The last stage of an alert: [`Notifier::notify`] is called by the engine where a
//! transition is recorded, inside the room's lock, so it only `try_send`s: a full queue
//! ([`SINK_QUEUE`]) drops the transition and counts it, and evaluation never waits for a
//! slow or dead endpoint. A restored instance makes no transition after a restart, so
//! nothing still firing is notified twice.
//!
//! With the alert store on, each queued notification is also written to its outbox
//! (`alert_outbox`, see [`super::store`]) and deleted once its sink has delivered it or
//! given up: what a stopping hub had not delivered is queued again at the next start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};
use telehub_protocol::outbound::ServerMessage;
use tokio::sync::mpsc;

use super::eval::Transition;
use super::lock;
use super::rule::parse_duration;
use super::store::{AlertStore, Unsent};
use super::webhook::Webhook;
use crate::shutdown::{Completion, Shutdown};
use crate::sources::mqtt::link::BridgeLink;

/// Transitions waiting for one sink at most; past it they are dropped and counted
/// (`telehub_alert_notifications_dropped_total{sink}`).
pub(crate) const SINK_QUEUE: usize = 1024;
/// Transitions one webhook `POST` carries at most (those already queued go together).
pub(crate) const WEBHOOK_BATCH: usize = 32;
/// Sinks a hub may have at most.
pub(crate) const MAX_SINKS: usize = 16;
/// A sink's last error is kept to this many bytes.
const MAX_ERROR_LEN: usize = 512;
/// The default topic of an `mqtt` sink.
pub(crate) const DEFAULT_TOPIC: &str = "telehub/alerts/{room}/{rule}";

/// What a sink is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// `POST`s a JSON batch to `url`.
    Webhook,
    /// Publishes each transition on a bridged broker.
    Mqtt,
    /// Writes each transition to the hub's log.
    Log,
}

impl SinkKind {
    fn as_str(self) -> &'static str {
        match self {
            SinkKind::Webhook => "webhook",
            SinkKind::Mqtt => "mqtt",
            SinkKind::Log => "log",
        }
    }
}

/// One `[[alerts.sinks]]` entry as written.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// The name the API and `/metrics` show (`A-Za-z0-9_.-`); `<kind>-<n>` by default,
    /// `n` counting from 1 in the config's order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `webhook`, `mqtt` or `log`.
    pub kind: SinkKind,
    /// `webhook`: the `http://` or `https://` URL to `POST` to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `webhook`, optional: signs each body with HMAC-SHA256 in `X-Telehub-Signature`.
    /// Never logged, never shown by the API.
    #[serde(default, skip_serializing)]
    pub secret: Option<String>,
    /// `mqtt`: the `[[mqtt.bridges]]` name whose broker gets the publishes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// `mqtt`: the topic, with `{room}`, `{rule}`, `{device}`, `{metric}`, `{state}`,
    /// `{severity}` filled in; `telehub/alerts/{room}/{rule}` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Tries per batch before it counts as failed (1 = no retry).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// The wait before the first retry, doubled each time up to `max_backoff`.
    #[serde(default = "default_backoff")]
    pub backoff: String,
    /// The longest wait between two tries.
    #[serde(default = "default_max_backoff")]
    pub max_backoff: String,
    /// `webhook`: how long one `POST` may take, connect included.
    #[serde(default = "default_timeout")]
    pub timeout: String,
}

const fn default_attempts() -> u32 {
    8
}
fn default_backoff() -> String {
    "1s".into()
}
fn default_max_backoff() -> String {
    "1m".into()
}
fn default_timeout() -> String {
    "10s".into()
}

/// Shows everything but the secret.
impl std::fmt::Debug for SinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkConfig")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("url", &self.url)
            .field("secret", &self.secret.as_ref().map(|_| "(set)"))
            .field("bridge", &self.bridge)
            .field("topic", &self.topic)
            .field("attempts", &self.attempts)
            .field("backoff", &self.backoff)
            .field("max_backoff", &self.max_backoff)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Where a checked sink delivers.
#[derive(Clone)]
enum Target {
    Webhook(Webhook),
    Mqtt { bridge: String, topic: Topic },
    Log,
}

/// A sink, checked.
#[derive(Clone)]
pub(crate) struct SinkSpec {
    name: String,
    kind: SinkKind,
    target: Target,
    attempts: u32,
    backoff: Duration,
    max_backoff: Duration,
}

/// Checks every sink (`bridges`: the names of the configured MQTT bridges). The error is
/// the sink's key and a message naming it.
pub(crate) fn validate(
    sinks: &[SinkConfig],
    bridges: &[&str],
) -> Result<Vec<SinkSpec>, (String, String)> {
    if sinks.len() > MAX_SINKS {
        return Err((
            "alerts.sinks".into(),
            format!("at most {MAX_SINKS} sinks, not {}", sinks.len()),
        ));
    }
    let mut out: Vec<SinkSpec> = Vec::new();
    let mut counts: HashMap<SinkKind, usize> = HashMap::new();
    for (i, s) in sinks.iter().enumerate() {
        let n = counts.entry(s.kind).or_insert(0);
        *n += 1;
        let spec = check(s, *n, bridges).map_err(|m| (format!("alerts.sinks[{i}]"), m))?;
        if out.iter().any(|o| o.name == spec.name) {
            return Err((
                format!("alerts.sinks[{i}]"),
                format!("sink `{}`: another sink has this name", spec.name),
            ));
        }
        out.push(spec);
    }
    Ok(out)
}

fn check(s: &SinkConfig, n: usize, bridges: &[&str]) -> Result<SinkSpec, String> {
    let name = s
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-{n}", s.kind.as_str()));
    let bad = |m: String| format!("sink `{name}`: {m}");
    if !telehub_protocol::ids::valid_id(&name) {
        return Err(format!(
            "sink name `{name}` must be 1 to 64 of A-Za-z0-9_.-"
        ));
    }
    let duration = |key: &str, v: &str| -> Result<Duration, String> {
        match parse_duration(v) {
            Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms as u64)),
            Ok(_) => Err(bad(format!("{key} must be more than 0"))),
            Err(e) => Err(bad(format!("{key}: {e}"))),
        }
    };
    let backoff = duration("backoff", &s.backoff)?;
    let max_backoff = duration("max_backoff", &s.max_backoff)?;
    let timeout = duration("timeout", &s.timeout)?;
    if max_backoff < backoff {
        return Err(bad("max_backoff must not be less than backoff".into()));
    }
    if !(1..=1000).contains(&s.attempts) {
        return Err(bad("attempts must be 1 to 1000".into()));
    }
    let only = |key: &str, set: bool, kinds: &str| -> Result<(), String> {
        if set {
            Err(bad(format!("`{key}` is for {kinds} sinks only")))
        } else {
            Ok(())
        }
    };
    let target = match s.kind {
        SinkKind::Webhook => {
            only("bridge", s.bridge.is_some(), "mqtt")?;
            only("topic", s.topic.is_some(), "mqtt")?;
            let url = s
                .url
                .as_deref()
                .ok_or_else(|| bad("`url` is required".into()))?;
            if s.secret.as_deref() == Some("") {
                return Err(bad("`secret` must not be empty".into()));
            }
            Target::Webhook(Webhook::new(url, s.secret.as_deref(), timeout).map_err(bad)?)
        }
        SinkKind::Mqtt => {
            only("url", s.url.is_some(), "webhook")?;
            only("secret", s.secret.is_some(), "webhook")?;
            let bridge = s
                .bridge
                .clone()
                .ok_or_else(|| bad("`bridge` is required".into()))?;
            if !bridges.contains(&bridge.as_str()) {
                return Err(bad(format!("no [[mqtt.bridges]] is named `{bridge}`")));
            }
            let topic = Topic::parse(s.topic.as_deref().unwrap_or(DEFAULT_TOPIC)).map_err(bad)?;
            Target::Mqtt { bridge, topic }
        }
        SinkKind::Log => {
            only("url", s.url.is_some(), "webhook")?;
            only("secret", s.secret.is_some(), "webhook")?;
            only("bridge", s.bridge.is_some(), "mqtt")?;
            only("topic", s.topic.is_some(), "mqtt")?;
            Target::Log
        }
    };
    Ok(SinkSpec {
        name,
        kind: s.kind,
        target,
        attempts: s.attempts,
        backoff,
        max_backoff,
    })
}

/// An `mqtt` sink's topic template.
#[derive(Clone, Debug)]
struct Topic(Vec<Part>);

#[derive(Clone, Debug)]
enum Part {
    Text(String),
    Field(Field),
}

#[derive(Clone, Copy, Debug)]
enum Field {
    Room,
    Rule,
    Device,
    Metric,
    State,
    Severity,
}

impl Topic {
    fn parse(s: &str) -> Result<Topic, String> {
        if s.is_empty() || s.len() > 512 {
            return Err("topic must be 1 to 512 bytes".into());
        }
        if s.contains(['+', '#']) {
            return Err(format!("topic `{s}` must not hold the wildcards + or #"));
        }
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("topic `{s}` has an unclosed `{{`"))?;
            let field = match &rest[open + 1..open + close] {
                "room" => Field::Room,
                "rule" => Field::Rule,
                "device" => Field::Device,
                "metric" => Field::Metric,
                "state" => Field::State,
                "severity" => Field::Severity,
                other => {
                    return Err(format!(
                        "topic `{s}` has `{{{other}}}`: only {{room}}, {{rule}}, {{device}}, {{metric}}, {{state}}, {{severity}}"
                    ))
                }
            };
            parts.push(Part::Field(field));
            rest = &rest[open + close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("topic `{s}` has a `}}` with no `{{`"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Topic(parts))
    }

    fn render(&self, t: &Transition) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Part::Text(s) => out.push_str(s),
                Part::Field(Field::Room) => out.push_str(&t.room),
                Part::Field(Field::Rule) => out.push_str(&t.rule),
                Part::Field(Field::Device) => out.push_str(&t.device),
                Part::Field(Field::Metric) => out.push_str(&t.metric),
                Part::Field(Field::State) => out.push_str(t.state.as_str()),
                Part::Field(Field::Severity) => out.push_str(t.severity.as_str()),
            }
        }
        out
    }
}

/// `{sink}` on the notification metrics.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct SinkLabels {
    sink: String,
}

/// The notification metrics, one series per sink.
#[derive(Default, Clone)]
pub(crate) struct SinkMetrics {
    sent: Family<SinkLabels, Counter>,
    failed: Family<SinkLabels, Counter>,
    dropped: Family<SinkLabels, Counter>,
    retried: Family<SinkLabels, Counter>,
    queued: Family<SinkLabels, Gauge>,
}

impl SinkMetrics {
    pub(crate) fn register(&self, metrics: &mut crate::metrics::Metrics) {
        metrics.register(
            "telehub_alert_notifications_sent",
            "Alert transitions a sink delivered",
            self.sent.clone(),
        );
        metrics.register(
            "telehub_alert_notifications_failed",
            "Alert transitions a sink gave up on after its tries",
            self.failed.clone(),
        );
        metrics.register(
            "telehub_alert_notifications_dropped",
            "Alert transitions not queued for a sink because its queue was full",
            self.dropped.clone(),
        );
        metrics.register(
            "telehub_alert_notification_retries",
            "Tries a sink made again after a failure",
            self.retried.clone(),
        );
        metrics.register(
            "telehub_alert_notification_queue",
            "Alert transitions waiting in a sink's queue",
            self.queued.clone(),
        );
    }
}

/// A sink's counts and last error.
struct Stats {
    sent: Counter,
    failed: Counter,
    dropped: Counter,
    retried: Counter,
    queued: Gauge,
    /// Epoch ms of the last delivery (0: none yet).
    last_sent_at: AtomicI64,
    last_error: Mutex<Option<LastError>>,
}

/// A sink's last failure.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LastError {
    /// Epoch ms.
    pub at: i64,
    pub message: String,
}

/// A sink as `GET /api/alerts/sinks` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct SinkStatus {
    pub name: String,
    pub kind: &'static str,
    /// The webhook's URL without its query, or `bridge/topic`, or `log`.
    pub target: String,
    pub sent: u64,
    pub failed: u64,
    pub dropped: u64,
    pub retried: u64,
    /// Transitions waiting now.
    pub queue: i64,
    pub queue_capacity: usize,
    pub last_sent_at: Option<i64>,
    pub last_error: Option<LastError>,
}

/// One notification in a sink's queue: `id` is its outbox row (`None`: not stored).
struct Queued {
    id: Option<i64>,
    t: Transition,
}

struct Sink {
    spec: SinkSpec,
    /// `spec.name`, shared with the outbox rows.
    name: Arc<str>,
    tx: mpsc::Sender<Queued>,
    stats: Arc<Stats>,
}

/// Every sink's queue and counts; cheap to clone.
#[derive(Clone, Default)]
pub(crate) struct Notifier {
    sinks: Arc<Vec<Sink>>,
    /// The outbox, with the alert store on.
    outbox: Option<Arc<AlertStore>>,
    /// The next outbox row's id.
    next_id: Arc<AtomicI64>,
}

impl Notifier {
    /// Starts one worker per sink (`links`: the bridges' links by name), each running
    /// until `shutdown`, its queue starting with what `unsent` holds for it (the
    /// outbox's rows from before the restart; rows of a sink no longer configured are
    /// deleted).
    pub(crate) fn start(
        specs: Vec<SinkSpec>,
        links: &HashMap<String, BridgeLink>,
        metrics: &SinkMetrics,
        (shutdown, completion): (&Shutdown, &Completion),
        outbox: Option<Arc<AlertStore>>,
        unsent: Vec<Unsent>,
    ) -> Notifier {
        let mut sinks = Vec::new();
        for spec in specs {
            let labels = SinkLabels {
                sink: spec.name.clone(),
            };
            let stats = Arc::new(Stats {
                sent: metrics.sent.get_or_create(&labels).clone(),
                failed: metrics.failed.get_or_create(&labels).clone(),
                dropped: metrics.dropped.get_or_create(&labels).clone(),
                retried: metrics.retried.get_or_create(&labels).clone(),
                queued: metrics.queued.get_or_create(&labels).clone(),
                last_sent_at: AtomicI64::new(0),
                last_error: Mutex::new(None),
            });
            let (tx, rx) = mpsc::channel(SINK_QUEUE);
            let link = match &spec.target {
                Target::Mqtt { bridge, .. } => links.get(bridge).cloned(),
                _ => None,
            };
            let worker = Worker {
                spec: spec.clone(),
                stats: stats.clone(),
                link,
                outbox: outbox.clone(),
            };
            tokio::spawn(worker.run(rx, shutdown.clone(), completion.clone()));
            let name = Arc::from(spec.name.as_str());
            sinks.push(Sink {
                spec,
                name,
                tx,
                stats,
            });
        }
        let next_id = unsent.iter().map(|u| u.id).max().unwrap_or(0) + 1;
        let notifier = Notifier {
            sinks: Arc::new(sinks),
            outbox,
            next_id: Arc::new(AtomicI64::new(next_id)),
        };
        let mut gone = Vec::new();
        let mut requeued = 0usize;
        for u in unsent {
            match notifier.sinks.iter().find(|s| *s.name == *u.sink) {
                Some(s) => {
                    let q = Queued {
                        id: Some(u.id),
                        t: u.transition,
                    };
                    if s.tx.try_send(q).is_ok() {
                        s.stats.queued.inc();
                        requeued += 1;
                    } else {
                        s.stats.dropped.inc();
                        gone.push(u.id);
                    }
                }
                None => gone.push(u.id),
            }
        }
        if requeued > 0 || !gone.is_empty() {
            tracing::info!(
                requeued,
                dropped = gone.len(),
                "alert notifications not delivered before the last stop"
            );
        }
        if let Some(store) = &notifier.outbox {
            store.sent(gone);
        }
        notifier
    }

    /// Queues `t` for every sink, and in the outbox; never waits (a full queue drops and
    /// counts it).
    pub(crate) fn notify(&self, t: &Transition) {
        for s in self.sinks.iter() {
            // Into the outbox before the queue, so the row's delete, which the worker
            // queues after delivering, cannot reach the store before its insert.
            let id = self.outbox.as_ref().and_then(|store| {
                let id = self.next_id.fetch_add(1, Relaxed);
                store.outbox(id, &s.name, t).then_some(id)
            });
            let q = Queued { id, t: t.clone() };
            match s.tx.try_send(q) {
                Ok(()) => {
                    s.stats.queued.inc();
                }
                Err(_) => {
                    s.stats.dropped.inc();
                    if let (Some(store), Some(id)) = (&self.outbox, id) {
                        store.sent(vec![id]);
                    }
                }
            }
        }
    }

    /// Every sink's state, in the config's order.
    pub(crate) fn statuses(&self) -> Vec<SinkStatus> {
        self.sinks
            .iter()
            .map(|s| {
                let st = &s.stats;
                let at = st.last_sent_at.load(Relaxed);
                SinkStatus {
                    name: s.spec.name.clone(),
                    kind: s.spec.kind.as_str(),
                    target: match &s.spec.target {
                        Target::Webhook(w) => w.shown().to_string(),
                        Target::Mqtt { bridge, topic } => {
                            let t: String = topic
                                .0
                                .iter()
                                .map(|p| match p {
                                    Part::Text(s) => s.clone(),
                                    Part::Field(f) => {
                                        format!("{{{}}}", format!("{f:?}").to_lowercase())
                                    }
                                })
                                .collect();
                            format!("{bridge}/{t}")
                        }
                        Target::Log => "log".into(),
                    },
                    sent: st.sent.get(),
                    failed: st.failed.get(),
                    dropped: st.dropped.get(),
                    retried: st.retried.get(),
                    queue: st.queued.get(),
                    queue_capacity: SINK_QUEUE,
                    last_sent_at: (at > 0).then_some(at),
                    last_error: lock(&st.last_error).clone(),
                }
            })
            .collect()
    }
}

/// One sink's delivery loop.
struct Worker {
    spec: SinkSpec,
    stats: Arc<Stats>,
    link: Option<BridgeLink>,
    outbox: Option<Arc<AlertStore>>,
}

/// Why one try failed, and whether another may help.
struct Failure {
    message: String,
    retryable: bool,
}

impl Worker {
    #[tracing::instrument(name = "alert_sink", skip_all, fields(sink = %self.spec.name))]
    async fn run(
        self,
        mut rx: mpsc::Receiver<Queued>,
        mut shutdown: Shutdown,
        _completion: Completion,
    ) {
        let batch_max = match self.spec.kind {
            SinkKind::Webhook => WEBHOOK_BATCH,
            _ => 1,
        };
        let mut batch = Vec::with_capacity(batch_max);
        let mut ids = Vec::with_capacity(batch_max);
        loop {
            // What is still queued at shutdown stays in the outbox for the next start.
            let first = tokio::select! {
                q = rx.recv() => match q {
                    Some(q) => q,
                    None => return,
                },
                _ = shutdown.recv() => return,
            };
            let mut next = Some(first);
            while let Some(q) = next.take() {
                ids.extend(q.id);
                batch.push(q.t);
                if batch.len() < batch_max {
                    next = rx.try_recv().ok();
                }
            }
            self.stats.queued.dec_by(batch.len() as i64);
            let mut delay = self.spec.backoff;
            let mut attempt = 1;
            loop {
                // A stopping hub does not wait out a slow endpoint's timeout.
                let tried = tokio::select! {
                    r = self.deliver(&batch) => r,
                    _ = shutdown.recv() => return,
                };
                match tried {
                    Ok(()) => {
                        self.stats.sent.inc_by(batch.len() as u64);
                        self.stats
                            .last_sent_at
                            .store(crate::clock::now_ms(), Relaxed);
                        break;
                    }
                    Err(f) => {
                        let mut message = f.message;
                        if message.len() > MAX_ERROR_LEN {
                            let mut end = MAX_ERROR_LEN;
                            while !message.is_char_boundary(end) {
                                end -= 1;
                            }
                            message.truncate(end);
                        }
                        tracing::warn!(attempt, error = %message, "alert notification failed");
                        *lock(&self.stats.last_error) = Some(LastError {
                            at: crate::clock::now_ms(),
                            message,
                        });
                        if !f.retryable || attempt >= self.spec.attempts {
                            self.stats.failed.inc_by(batch.len() as u64);
                            break;
                        }
                        self.stats.retried.inc();
                        attempt += 1;
                        tokio::select! {
                            _ = tokio::time::sleep(delay) => {}
                            _ = shutdown.recv() => return,
                        }
                        delay = (delay * 2).min(self.spec.max_backoff);
                    }
                }
            }
            // Delivered, or given up on (counted as failed): out of the outbox.
            if let Some(store) = &self.outbox {
                store.sent(std::mem::take(&mut ids));
            }
            ids.clear();
            batch.clear();
        }
    }

    async fn deliver(&self, batch: &[Transition]) -> Result<(), Failure> {
        match &self.spec.target {
            Target::Webhook(w) => {
                let alerts: Vec<_> = batch
                    .iter()
                    .map(|t| ServerMessage::Alert(t.alert()))
                    .collect();
                let body =
                    serde_json::to_vec(&serde_json::json!({ "alerts": alerts })).map_err(|e| {
                        Failure {
                            message: e.to_string(),
                            retryable: false,
                        }
                    })?;
                w.post(body).await.map_err(|e| Failure {
                    retryable: e.retryable(),
                    message: e.to_string(),
                })
            }
            Target::Mqtt { topic, .. } => {
                let Some(link) = &self.link else {
                    return Err(Failure {
                        message: "the bridge is not running".into(),
                        retryable: false,
                    });
                };
                for t in batch {
                    let payload =
                        serde_json::to_vec(&ServerMessage::Alert(t.alert())).map_err(|e| {
                            Failure {
                                message: e.to_string(),
                                retryable: false,
                            }
                        })?;
                    link.publish(&topic.render(t), payload)
                        .await
                        .map_err(|e| Failure {
                            message: e.to_string(),
                            retryable: true,
                        })?;
                }
                Ok(())
            }
            Target::Log => {
                for t in batch {
                    tracing::info!(
                        target: "telehub::alerts",
                        rule = %t.rule,
                        room = %t.room,
                        device = %t.device,
                        metric = %t.metric,
                        state = t.state.as_str(),
                        value = t.value,
                        since = t.since,
                        severity = t.severity.as_str(),
                        "alert"
                    );
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(toml_text: &str) -> SinkConfig {
        toml::from_str(toml_text).expect("a sink")
    }

    #[test]
    fn sinks_are_checked_and_named() {
        let ok = [
            sink("kind = \"log\""),
            sink("kind = \"webhook\"\nurl = \"http://127.0.0.1:1/h\"\nsecret = \"s\""),
            sink("kind = \"mqtt\"\nbridge = \"local\""),
        ];
        let specs = validate(&ok, &["local"]).expect("valid");
        let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["log-1", "webhook-1", "mqtt-1"]);
        let bad =
            |t: &str, bridges: &[&str]| validate(&[sink(t)], bridges).err().expect("refused").1;
        assert!(bad("kind = \"mqtt\"\nbridge = \"x\"", &[]).contains("no [[mqtt.bridges]]"));
        assert!(bad("kind = \"webhook\"", &[]).contains("`url` is required"));
        assert!(bad("kind = \"log\"\nurl = \"http://a/\"", &[]).contains("webhook sinks only"));
        assert!(bad("kind = \"mqtt\"\nbridge = \"b\"\ntopic = \"a/{x}\"", &["b"]).contains("{x}"));
        assert!(
            bad("kind = \"mqtt\"\nbridge = \"b\"\ntopic = \"a/#\"", &["b"]).contains("wildcards")
        );
        assert!(bad(
            "kind = \"log\"\nbackoff = \"2s\"\nmax_backoff = \"1s\"",
            &[]
        )
        .contains("max_backoff"));
        assert!(toml::from_str::<SinkConfig>("kind = \"log\"\nurl2 = 1").is_err());
    }

    #[test]
    fn the_secret_is_neither_debug_printed_nor_serialised() {
        let s = sink("kind = \"webhook\"\nurl = \"http://a/\"\nsecret = \"hunter2\"");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&s).expect("json").contains("hunter2"));
    }

    #[test]
    fn topics_render_the_transition() {
        let t = Transition {
            rule: "hot".into(),
            severity: super::super::Severity::Critical,
            room: "gh-1".into(),
            device: "t1".into(),
            metric: "temperature".into(),
            state: super::super::eval::State::Firing,
            value: 40.0,
            since: 1,
            was: None,
        };
        let topic =
            Topic::parse("x/{room}/{rule}/{device}/{metric}/{state}/{severity}").expect("valid");
        assert_eq!(
            topic.render(&t),
            "x/gh-1/hot/t1/temperature/firing/critical"
        );
    }
}
