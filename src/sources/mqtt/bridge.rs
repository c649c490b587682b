//! One broker connection: the rumqttc poll loop, its TLS set-up, and the start of the
//! [`ingest`](super::ingest) task and the [`BridgeLink`](super::link::BridgeLink) that
//! share it.
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

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{TlsConfiguration, Transport};
use telehub_protocol::backoff::{Backoff, BackoffConfig};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::client::{Client, Event, EventLoop, FilterSpec, Incoming, Protocol};
use super::config::{BridgeSpec, DiscoveryKind};
use super::discovery::{Registry, CONFIG_FILTERS};
use super::homie::{Homie, HOMIE_FILTER};
use super::ingest::{BridgeSink, Ingest, INGEST_QUEUE, MAX_UNACKED};
use super::link::{BridgeLink, REQUEST_QUEUE};
use super::state::{BridgeState, LogLimiter, RefusedSubscription};
use super::BridgeError;

/// Largest MQTT packet accepted or sent.
const MAX_PACKET_BYTES: usize = 256 * 1024;

/// Log lines per window for each kind of bridge problem.
const LOG_BURST: u32 = 10;
const LOG_WINDOW: Duration = Duration::from_secs(10);

/// How long a stopping bridge waits to hand over what it has received and say
/// DISCONNECT to the broker.
const STOP_GRACE: Duration = Duration::from_secs(2);

/// A bridge, built from its validated config, run with [`Bridge::run`].
pub struct Bridge {
    spec: Arc<BridgeSpec>,
    state: Arc<BridgeState>,
    client: Client,
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
        let state = Arc::new(BridgeState::with_protocol(
            &spec.name,
            format!("{scheme}://{host}:{}", spec.broker.port),
            &spec.client_id,
            spec.protocol.as_str(),
        ));
        // One transport for both versions: TCP, or TLS with the bridge's rustls config
        // (its CA and client certificate).
        let transport = if spec.broker.tls {
            Some(Transport::tls_with_config(TlsConfiguration::Rustls(
                Arc::new(tls_config(&spec)?),
            )))
        } else {
            None
        };
        let (client, eventloop) = match spec.protocol {
            Protocol::V311 => {
                let mut o =
                    rumqttc::MqttOptions::new(&spec.client_id, &spec.broker.host, spec.broker.port);
                o.set_keep_alive(spec.keep_alive)
                    .set_clean_session(false)
                    .set_manual_acks(true)
                    .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES);
                if let Some(user) = &spec.broker.username {
                    o.set_credentials(user, spec.broker.password.clone().unwrap_or_default());
                }
                if let Some(t) = transport {
                    o.set_transport(t);
                }
                let (c, e) = rumqttc::AsyncClient::new(o, REQUEST_QUEUE);
                (Client::V4(c), EventLoop::V4(Box::new(e)))
            }
            Protocol::V5 => {
                let mut o = rumqttc::v5::MqttOptions::new(
                    &spec.client_id,
                    &spec.broker.host,
                    spec.broker.port,
                );
                // A persistent session: not a clean start, and an expiry, without which
                // MQTT 5 ends the session at the first disconnect. The broker sends at
                // most `MAX_UNACKED` messages the bridge has not acked yet.
                o.set_keep_alive(spec.keep_alive)
                    .set_clean_start(false)
                    .set_session_expiry_interval(Some(spec.session_expiry))
                    .set_receive_maximum(Some(MAX_UNACKED as u16))
                    .set_manual_acks(true)
                    .set_max_packet_size(Some(MAX_PACKET_BYTES as u32));
                if let Some(user) = &spec.broker.username {
                    o.set_credentials(user, spec.broker.password.clone().unwrap_or_default());
                }
                if let Some(t) = transport {
                    o.set_transport(t);
                }
                let (c, e) = rumqttc::v5::AsyncClient::new(o, REQUEST_QUEUE);
                (Client::V5(c), EventLoop::V5(Box::new(e)))
            }
        };
        let spec = Arc::new(spec);
        let link = BridgeLink::new(client.clone(), spec.clone(), state.clone());
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
        let (tx, rx) = mpsc::channel::<Incoming>(INGEST_QUEUE);
        let redeliver = Arc::new(tokio::sync::Notify::new());
        let mut ingest = tokio::spawn(
            Ingest {
                spec: spec.clone(),
                state: state.clone(),
                link: link.clone(),
                client: client.clone(),
                log: LogLimiter::new(LOG_BURST, LOG_WINDOW),
                discovery: spec
                    .discovery
                    .as_ref()
                    .filter(|d| d.kind == DiscoveryKind::HomeAssistant)
                    .map(|d| Registry::new(d.max_entities, &d.room)),
                homie: spec
                    .discovery
                    .as_ref()
                    .filter(|d| d.kind == DiscoveryKind::Homie)
                    .map(|d| Homie::new(d.max_entities, &d.room)),
            }
            .run(rx, sink, redeliver.clone()),
        );
        let filters = subscriptions(&spec);
        tracing::info!(broker = %state.broker, client_id = %spec.client_id, "mqtt bridge starting");

        let mut shutdown = std::pin::pin!(shutdown);
        // The schedule every telehub client follows: doubling ceilings with equal jitter,
        // so hubs that lost one broker do not all reconnect in the same millisecond.
        let mut backoff = Backoff::new(BackoffConfig {
            initial: spec.reconnect_min,
            max: spec.reconnect_max,
        });
        let mut first_connect = seed_on_start;
        let mut subscriber: Option<JoinHandle<()>> = None;
        let mut conn_log = LogLimiter::new(LOG_BURST, LOG_WINDOW);
        loop {
            let event = tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = redeliver.notified() => {
                    // A message whose readings the hub could not keep stays unacked; the
                    // broker sends it again only on a new connection of this persistent
                    // session, so drop this one (the next poll reconnects).
                    eventloop.clean();
                    state.set_connected(false);
                    continue;
                }
                event = eventloop.poll() => event,
            };
            match event {
                Ok(Event::Message(p)) => {
                    state
                        .messages_in
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if tx.send(p).await.is_err() {
                        tracing::error!("mqtt ingest task ended; bridge stops");
                        break;
                    }
                }
                Ok(Event::Connected { session_present }) => {
                    state.set_connected(true);
                    state.set_session_present(session_present);
                    backoff.reset();
                    tracing::info!(session_present, "connected to broker");
                    // A resumed session keeps its subscriptions (and re-subscribing would
                    // make the broker re-send every retained message). A new session, or
                    // this process's first connect when it seeds last values from retained
                    // messages (`seed_on_start`), subscribes.
                    if first_connect || !session_present {
                        if !session_present {
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
                Ok(Event::SubAck(codes)) => {
                    // The bridge's own SUBSCRIBE has every filter, in order; a SUBACK of
                    // another length answers a discovered state topic's.
                    let ours = codes.len() == filters.len();
                    let refused: Vec<RefusedSubscription> = codes
                        .into_iter()
                        .enumerate()
                        .filter_map(|(i, c)| {
                            c.map(|why| RefusedSubscription {
                                filter: if ours {
                                    filters[i].path.clone()
                                } else {
                                    "(a discovered state topic)".into()
                                },
                                why,
                            })
                        })
                        .collect();
                    if refused.is_empty() {
                        if ours {
                            state.set_refused(Vec::new());
                            state.set_subscribed(true);
                        }
                    } else {
                        let msg = format!(
                            "broker refused {}",
                            refused
                                .iter()
                                .map(|r| format!("the subscription to {}: {}", r.filter, r.why))
                                .collect::<Vec<_>>()
                                .join("; ")
                        );
                        tracing::error!("{msg}");
                        state.set_error(msg);
                        if ours {
                            state.set_refused(refused);
                        }
                    }
                }
                Ok(Event::PublishRefused(why)) => {
                    let msg = format!("broker refused a publish: {why}");
                    if let Some(suppressed) = conn_log.allow() {
                        tracing::warn!(suppressed, "{msg}");
                    }
                    state.set_error(msg);
                }
                Ok(Event::Disconnected) => {
                    state.set_connected(false);
                }
                Ok(Event::PublishSent) => link.release_publish(),
                Ok(_) => {}
                Err(e) => {
                    state.set_connected(false);
                    state
                        .connection_errors
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let msg = e.to_string();
                    let delay = backoff.next_delay(fastrand::f64());
                    if let Some(suppressed) = conn_log.allow() {
                        tracing::warn!(error = %msg, retry_in_ms = delay.as_millis() as u64, suppressed, "mqtt connection error");
                    }
                    state.set_error(msg);
                    tokio::select! {
                        biased;
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(delay) => {}
                    }
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
                    Ok(Event::DisconnectSent) if disconnecting => break,
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

/// What the bridge subscribes (QoS 1): its topic templates' filters (as
/// `$share/<group>/...` with a `shared_group`), the ack topic, MQTT 5's response topic
/// and discovery's config topics. Only the reading topics are shared: acks, answers and
/// discovery configs are every hub's own. MQTT 5's "no local" keeps the bridge's own
/// publishes (mirrored readings, commands) from coming back, except on a shared
/// subscription, where the protocol forbids it.
fn subscriptions(spec: &BridgeSpec) -> Vec<FilterSpec> {
    let v5 = spec.protocol == Protocol::V5;
    let own = |path: String| FilterSpec { path, no_local: v5 };
    let readings = spec.topics.iter().map(|t| match &spec.shared_group {
        Some(g) => FilterSpec {
            path: format!("$share/{g}/{}", t.template.filter()),
            no_local: false,
        },
        None => own(t.template.filter()),
    });
    let discovery = spec.discovery.iter().flat_map(|d| match d.kind {
        DiscoveryKind::HomeAssistant => CONFIG_FILTERS.iter().map(|f| f.to_string()).collect(),
        DiscoveryKind::Homie => vec![HOMIE_FILTER.to_string()],
    });
    readings
        .chain(std::iter::once(own(spec.ack_topic.filter())))
        .chain(spec.response_topic.iter().cloned().map(own))
        .chain(discovery.map(own))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// rustls with the ring provider (no cmake, no system library): the bridge's `ca_file`
/// or the system's root certificates, and its client certificate (`cert_file`,
/// `key_file`) when it has one.
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
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err(e.to_string()))?
        .with_root_certificates(roots);
    let Some((cert_file, key_file)) = &spec.client_cert else {
        return Ok(builder.with_no_client_auth());
    };
    use rustls_pki_types::PrivateKeyDer;
    let chain = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| err(format!("cannot read cert_file {cert_file}: {e}")))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("cert_file {cert_file}: {e}")))?;
    if chain.is_empty() {
        return Err(err(format!("cert_file {cert_file} holds no certificate")));
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .map_err(|e| err(format!("key_file {key_file}: {e}")))?;
    builder.with_client_auth_cert(chain, key).map_err(|e| {
        err(format!(
            "cert_file and key_file cannot be used (is the key the certificate's?): {e}"
        ))
    })
}
