//! One broker connection: the rumqttc poll loop, the ingest step that turns MQTT
//! messages into readings and acks for the hub, and the [`BridgeLink`] through which
//! the hub sends commands and mirrored readings back to the broker.
//!
//! **Nothing lost.** The session is persistent (clean session off, a fixed client id)
//! and every subscription is QoS 1, so the broker queues readings while the hub is down
//! or disconnected and delivers them on reconnect. Acks are manual: a message is
//! acknowledged to the broker only after the hub has taken it, so a hub that stops
//! between receipt and hand-over gets the message again (and drops the repeat through
//! its `seq` deduplication). Delivery is at least once.
//!
//! **The poll loop stays tight.** It matches `Publish` and hands it on through a bounded
//! channel ([`INGEST_QUEUE`]) to the ingest task, which does the decoding and the hub
//! calls; errors are logged (rate-limited) and polling goes on, since polling is how
//! rumqttc reconnects, after a backoff sleep.
//!
//! **Retained messages** are passed on with `retained = true`: the broker re-sends them
//! on every new subscription, so the hub treats them as the seed of a series' last value
//! and takes one only if it is newer than what the series already holds.

use std::collections::HashSet;
use std::future::Future;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering::{AcqRel, Acquire};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS,
    SubscribeFilter, SubscribeReasonCode, TlsConfiguration, Transport,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::config::{BridgeSpec, TopicSpec};
use super::payload::{self, PayloadFormat};
use super::state::{BridgeState, LogLimiter};
use super::BridgeError;
use crate::protocol::{valid_id, valid_metric};

/// MQTT messages received by the poll loop and not yet taken by the ingest task. When it
/// is full the poll loop waits for the ingest task, which then holds back keep-alive
/// pings too; at 1,024 messages (a few milliseconds of ingest work) that wait is far
/// shorter than any keep-alive interval, and meanwhile the broker keeps the backlog.
pub(crate) const INGEST_QUEUE: usize = 1024;

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

/// How often the ingest task calls [`BridgeSink::tick`].
const SINK_TICK: Duration = Duration::from_secs(1);

/// Largest MQTT packet accepted or sent.
const MAX_PACKET_BYTES: usize = 256 * 1024;

/// Log lines per window for each kind of bridge problem.
const LOG_BURST: u32 = 10;
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// How long a stopping bridge waits to hand over what it has received and say
/// DISCONNECT to the broker.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// One reading from the broker, after topic mapping and payload decoding: the same type a
/// WebSocket device's reading becomes, since both take the same path into a room (`ts`
/// `None` means the hub stamps its receive time).
pub type BridgedReading = crate::protocol::ReadingIn;

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
}

/// The way from the hub back to the broker: commands and mirrored readings.
#[derive(Clone)]
pub struct BridgeLink {
    inner: Arc<LinkInner>,
}

struct LinkInner {
    client: AsyncClient,
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

    /// Publishes a command (QoS 1) on the device's command topic. Waits (up to
    /// [`COMMAND_WAIT`]) while [`MAX_QUEUED_PUBLISHES`] publishes are queued.
    pub async fn command(
        &self,
        room: &str,
        device: &str,
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
        self.inner
            .client
            .try_publish(topic.clone(), QoS::AtLeastOnce, false, payload)
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
        match self
            .inner
            .client
            .try_publish(topic.clone(), QoS::AtLeastOnce, false, payload)
        {
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

    fn is_mirror_echo(&self, room: &str, device: &str, payload: &[u8]) -> bool {
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

/// A bridge, built from its validated config, run with [`Bridge::run`].
pub struct Bridge {
    spec: Arc<BridgeSpec>,
    state: Arc<BridgeState>,
    client: AsyncClient,
    eventloop: EventLoop,
    link: BridgeLink,
    seed_on_start: bool,
}

impl Bridge {
    /// Builds the client options (and TLS setup for `mqtts://`, reading `ca_file` or the
    /// system's roots); connects only in [`run`](Self::run).
    pub fn new(spec: BridgeSpec) -> Result<Bridge, BridgeError> {
        let scheme = if spec.broker.tls { "mqtts" } else { "mqtt" };
        let host = if spec.broker.host.contains(':') {
            format!("[{}]", spec.broker.host)
        } else {
            spec.broker.host.clone()
        };
        let state = Arc::new(BridgeState::new(
            &spec.name,
            format!("{scheme}://{host}:{}", spec.broker.port),
            &spec.client_id,
        ));
        let mut o = MqttOptions::new(&spec.client_id, &spec.broker.host, spec.broker.port);
        o.set_keep_alive(spec.keep_alive)
            .set_clean_session(false)
            .set_manual_acks(true)
            .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
        if let Some(user) = &spec.broker.username {
            o.set_credentials(user, spec.broker.password.clone().unwrap_or_default());
        }
        if spec.broker.tls {
            let tls = tls_config(&spec)?;
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(tls),
            )));
        }
        let spec = Arc::new(spec);
        let (client, eventloop) = AsyncClient::new(o, REQUEST_QUEUE);
        let link = BridgeLink {
            inner: Arc::new(LinkInner {
                client: client.clone(),
                queued_publishes: AtomicUsize::new(0),
                spec: spec.clone(),
                state: state.clone(),
                mirrored: Mutex::new(HashSet::new()),
                src_marker: format!(
                    "\"src\":{}",
                    serde_json::to_string(&spec.client_id).unwrap_or_default()
                ),
            }),
        };
        Ok(Bridge {
            spec,
            state,
            client,
            eventloop,
            link,
            seed_on_start: true,
        })
    }

    /// Whether the first connect of this process subscribes again even when the broker
    /// resumed the session, so that the broker re-sends its retained messages and they
    /// seed the series' last values (default `true`). A hub whose history survives a
    /// restart already has those values, and a re-sent retained reading could be stored
    /// twice: it sets this to `false`. (A new session always subscribes.)
    pub fn set_seed_on_start(&mut self, seed: bool) {
        self.seed_on_start = seed;
    }

    pub fn state(&self) -> Arc<BridgeState> {
        self.state.clone()
    }

    /// The way back to the broker (commands, mirror); usable before `run` starts, and
    /// whatever it queues is sent once the bridge is connected.
    pub fn link(&self) -> BridgeLink {
        self.link.clone()
    }

    pub fn spec(&self) -> &BridgeSpec {
        &self.spec
    }

    /// Runs until `shutdown` resolves: connects, subscribes, reconnects with backoff,
    /// hands readings and acks to `sink`. On shutdown it lets the ingest task finish
    /// what it has (so those messages are acked), then disconnects cleanly.
    #[tracing::instrument(name = "mqtt_bridge", skip_all, fields(bridge = %self.spec.name))]
    pub async fn run<S: BridgeSink>(self, sink: S, shutdown: impl Future<Output = ()>) {
        let Bridge {
            spec,
            state,
            client,
            mut eventloop,
            link,
            seed_on_start,
        } = self;
        let (tx, rx) = mpsc::channel::<Publish>(INGEST_QUEUE);
        let mut ingest = tokio::spawn(
            Ingest {
                spec: spec.clone(),
                state: state.clone(),
                link: link.clone(),
                client: client.clone(),
                log: LogLimiter::new(LOG_BURST, LOG_WINDOW),
            }
            .run(rx, sink),
        );
        let filters: Vec<SubscribeFilter> = spec
            .topics
            .iter()
            .map(|t| t.template.filter())
            .chain(std::iter::once(spec.ack_topic.filter()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|f| SubscribeFilter::new(f, QoS::AtLeastOnce))
            .collect();
        tracing::info!(broker = %state.broker, client_id = %spec.client_id, "mqtt bridge starting");

        let mut shutdown = std::pin::pin!(shutdown);
        let mut backoff = spec.reconnect_min;
        let mut first_connect = seed_on_start;
        let mut subscriber: Option<JoinHandle<()>> = None;
        let mut conn_log = LogLimiter::new(LOG_BURST, LOG_WINDOW);
        loop {
            let event = tokio::select! {
                biased;
                () = &mut shutdown => break,
                event = eventloop.poll() => event,
            };
            match event {
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    state
                        .messages_in
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if tx.send(p).await.is_err() {
                        tracing::error!("mqtt ingest task ended; bridge stops");
                        break;
                    }
                }
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    state.set_connected(true);
                    backoff = spec.reconnect_min;
                    tracing::info!(session_present = ack.session_present, "connected to broker");
                    // A resumed session keeps its subscriptions (and re-subscribing would
                    // make the broker re-send every retained message). A new session, or
                    // this process's first connect when it seeds last values from retained
                    // messages (`seed_on_start`), subscribes.
                    if first_connect || !ack.session_present {
                        if !ack.session_present {
                            state.set_subscribed(false);
                        }
                        if let Some(h) = subscriber.take() {
                            h.abort();
                        }
                        let c = client.clone();
                        let f = filters.clone();
                        subscriber = Some(tokio::spawn(async move {
                            if let Err(e) = c.subscribe_many(f).await {
                                tracing::warn!(error = %e, "cannot queue subscribe");
                            }
                        }));
                    }
                    first_connect = false;
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure))
                    {
                        let msg = format!(
                            "broker refused a subscription (filters: {})",
                            filters
                                .iter()
                                .map(|f| f.path.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        );
                        tracing::error!("{msg}");
                        state.set_error(msg);
                    } else {
                        state.set_subscribed(true);
                    }
                }
                Ok(Event::Incoming(Packet::Disconnect)) => {
                    state.set_connected(false);
                }
                Ok(Event::Outgoing(Outgoing::Publish(_))) => link.inner.release_publish(),
                Ok(_) => {}
                Err(e) => {
                    state.set_connected(false);
                    state
                        .connection_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let msg = describe(&e);
                    if let Some(suppressed) = conn_log.allow() {
                        tracing::warn!(error = %msg, retry_in_ms = backoff.as_millis() as u64, suppressed, "mqtt connection error");
                    }
                    state.set_error(msg);
                    tokio::select! {
                        biased;
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(spec.reconnect_max);
                }
            }
        }

        // Stopping: let the ingest task hand over what it holds and queue its acks,
        // while the event loop keeps sending them; then say DISCONNECT. Messages that
        // arrive meanwhile are not acked, so the broker delivers them again next time.
        drop(tx);
        if let Some(h) = subscriber.take() {
            h.abort();
        }
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        let mut ingest_done = false;
        let mut disconnecting = false;
        while tokio::time::Instant::now() < deadline {
            tokio::select! {
                r = &mut ingest, if !ingest_done => {
                    if let Err(e) = r {
                        tracing::error!(error = %e, "mqtt ingest task failed");
                    }
                    ingest_done = true;
                    if !state.is_connected() {
                        break;
                    }
                    disconnecting = client.try_disconnect().is_ok();
                    if !disconnecting {
                        break;
                    }
                }
                ev = eventloop.poll() => match ev {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) if disconnecting => break,
                    Ok(_) => {}
                    Err(_) => {
                        state.set_connected(false);
                        if ingest_done {
                            break;
                        }
                        // No broker to flush to; the unacked messages come again.
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        if !ingest_done {
            ingest.abort();
        }
        state.set_connected(false);
        tracing::info!("mqtt bridge stopped");
    }
}

/// A short, stable description of a connection error for logs and `/api/bridges`.
fn describe(e: &ConnectionError) -> String {
    match e {
        ConnectionError::ConnectionRefused(code) => {
            format!("broker refused the connection: {code:?}")
        }
        ConnectionError::Io(io) => format!("network: {io}"),
        ConnectionError::NetworkTimeout => "connect timed out".into(),
        ConnectionError::FlushTimeout => "write to broker timed out".into(),
        ConnectionError::Tls(t) => format!("TLS: {t}"),
        other => other.to_string(),
    }
}

/// rustls with the ring provider (no cmake, no system library): the bridge's `ca_file`
/// or the system's root certificates.
fn tls_config(spec: &BridgeSpec) -> Result<rustls::ClientConfig, BridgeError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let err = |message: String| BridgeError::Tls {
        bridge: spec.name.clone(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    match &spec.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| err(format!("cannot read ca_file {path}: {e}")))?;
            for cert in certs {
                let cert = cert.map_err(|e| err(format!("ca_file {path}: {e}")))?;
                roots
                    .add(cert)
                    .map_err(|e| err(format!("ca_file {path}: {e}")))?;
            }
            if roots.is_empty() {
                return Err(err(format!("ca_file {path} holds no certificate")));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(err(
                    "no system root certificates found; set `ca_file`".into()
                ));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// The ingest task: topic and payload to readings, to the sink, then the ack to the
/// broker.
struct Ingest {
    spec: Arc<BridgeSpec>,
    state: Arc<BridgeState>,
    link: BridgeLink,
    client: AsyncClient,
    log: LogLimiter,
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
    async fn run<S: BridgeSink>(mut self, mut rx: mpsc::Receiver<Publish>, mut sink: S) {
        let mut tick = tokio::time::interval(SINK_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let p = tokio::select! {
                p = rx.recv() => match p {
                    Some(p) => p,
                    None => return,
                },
                _ = tick.tick() => {
                    sink.tick();
                    continue;
                }
            };
            self.handle(&p, &mut sink);
            // After the hub has it: only now may the broker forget it.
            if let Err(e) = self.client.ack(&p).await {
                tracing::debug!(error = %e, "cannot queue puback");
            }
        }
    }

    fn problem(&mut self, counter: &std::sync::atomic::AtomicU64, topic: &str, message: String) {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(suppressed) = self.log.allow() {
            tracing::warn!(topic, suppressed, "{message}");
        }
        self.state.set_error(format!("{topic}: {message}"));
    }

    fn handle<S: BridgeSink>(&mut self, p: &Publish, sink: &mut S) {
        use std::sync::atomic::Ordering::Relaxed;
        let state = self.state.clone();
        let topic = p.topic.as_str();
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
        link.inner.release_publish();
        assert!(link.inner.reserve_publish());
        assert!(link.is_mirror_echo("lab", "ws1", b"1"));
        assert!(link.is_mirror_echo(
            "lab",
            "other",
            format!(r#"{{"value":1,"src":"{}"}}"#, bridge.spec().client_id).as_bytes()
        ));
        assert!(!link.is_mirror_echo("lab", "other", br#"{"value":1}"#));
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
