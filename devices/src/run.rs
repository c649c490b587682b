//! Running a scenario: one task per device, a shared shutdown latch, and the summary.
//!
//! This is the library entry point the `telehub-sim run` command and the hub's
//! `serve --demo` both use. It prints nothing; callers watch [`SimStats`] while it runs
//! and get a [`Summary`] when it ends.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::auth::TokenSource;
use crate::backoff::BackoffConfig;
use crate::clock::{wall_ms, Clock, ClockConfig};
use crate::device::{Device, DeviceSummary, SeqStart};
use crate::scenario::Scenario;
use crate::stats::{SimStats, StatsSnapshot};
use crate::transport::mqtt::BrokerUrl;
use crate::transport::{self, DeviceCtx};
use crate::wsclient::{ConnectError, HubUrl};

/// Readings a device buffers while disconnected when neither the options nor the scenario
/// say: at 3 metrics every 2 s, about 3.7 hours.
pub const DEFAULT_BUFFER: usize = 20_000;
/// Readings per second one device may send, resends included: under the hub's default
/// per-connection limit of 200/s, so a device emptying a big buffer is never refused.
pub const DEFAULT_SEND_RATE: f64 = 150.0;
/// At shutdown, how long connected devices wait for their last readings to be confirmed.
pub const DEFAULT_DRAIN: Duration = Duration::from_secs(2);

/// Where the devices connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// WebSocket to the hub at this base URL (`ws://127.0.0.1:8080`).
    WebSocket(String),
    /// MQTT to the broker at this URL (`mqtt://127.0.0.1:1883`).
    Mqtt(String),
    /// HTTP ingest to the hub at this base URL (`http://127.0.0.1:8080`).
    Http(String),
}

/// How to run a scenario.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Where the devices connect.
    pub transport: Transport,
    /// Readings each device buffers, unconfirmed; `None` takes the scenario's `buffer`,
    /// else [`DEFAULT_BUFFER`].
    pub buffer: Option<usize>,
    /// Simulated time.
    pub clock: ClockConfig,
    /// Where `seq` counters start.
    pub seq_start: SeqStart,
    /// Reconnect backoff.
    pub backoff: BackoffConfig,
    /// Readings per second per device, at most.
    pub send_rate: f64,
    /// How long to wait for confirmations at shutdown.
    pub drain: Duration,
    /// Counters to update while running (clone one to watch it from outside).
    pub stats: SimStats,
    /// Tokens for a hub with `[auth] mode = "token"` (WebSocket only; MQTT devices are
    /// authenticated by their broker).
    pub auth: Option<TokenSource>,
}

impl RunOptions {
    /// Defaults for devices connecting over WebSocket to `url`.
    pub fn websocket(url: impl Into<String>) -> Self {
        RunOptions {
            transport: Transport::WebSocket(url.into()),
            buffer: None,
            clock: ClockConfig::default(),
            seq_start: SeqStart::Clock,
            backoff: BackoffConfig::default(),
            send_rate: DEFAULT_SEND_RATE,
            drain: DEFAULT_DRAIN,
            stats: SimStats::new(),
            auth: None,
        }
    }

    /// Check the transport URL without connecting (`run` does this too).
    pub fn check(&self) -> Result<(), RunError> {
        match &self.transport {
            Transport::WebSocket(url) | Transport::Http(url) => {
                HubUrl::parse(url).map(drop).map_err(RunError::from)
            }
            Transport::Mqtt(_) if self.auth.is_some() => Err(RunError::AuthOverMqtt),
            Transport::Mqtt(url) => BrokerUrl::parse(url)
                .map(drop)
                .ok_or_else(|| RunError::BrokerUrl(url.clone())),
        }
    }

    /// Defaults for devices posting to the hub at `url` over HTTP ingest.
    pub fn http(url: impl Into<String>) -> Self {
        RunOptions {
            transport: Transport::Http(url.into()),
            ..RunOptions::websocket(String::new())
        }
    }

    /// Defaults for devices publishing to the MQTT broker at `url`.
    pub fn mqtt(url: impl Into<String>) -> Self {
        RunOptions {
            transport: Transport::Mqtt(url.into()),
            ..RunOptions::websocket(String::new())
        }
    }
}

/// What a run did.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Scenario name.
    pub scenario: String,
    /// "websocket", "http" or "mqtt".
    pub transport: &'static str,
    /// Wall-clock seconds the run took.
    pub elapsed_secs: f64,
    /// Readings each device could hold unconfirmed.
    pub buffer: usize,
    /// Totals at the end.
    pub totals: StatsSnapshot,
    /// Per device, in scenario order.
    pub devices: Vec<DeviceSummary>,
}

impl Summary {
    /// Readings that were never confirmed: dropped from a full buffer, or still
    /// unconfirmed at the end.
    pub fn lost(&self) -> u64 {
        self.devices.iter().map(|d| d.dropped + d.unacked).sum()
    }
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The hub URL is unusable.
    #[error(transparent)]
    HubUrl(#[from] ConnectError),
    /// The broker URL is unusable.
    #[error("invalid MQTT broker url {0:?}: expected mqtt://host[:port]")]
    BrokerUrl(String),
    /// Tokens were given for MQTT devices, which the broker authenticates.
    #[error("tokens are for WebSocket devices: MQTT devices are authenticated by their broker")]
    AuthOverMqtt,
    /// The scenario has no devices.
    #[error("scenario {0:?} has no devices")]
    NoDevices(String),
    /// A device task panicked (a bug).
    #[error("device task failed: {0}")]
    DeviceTask(String),
}

/// Run `scenario` until `shutdown` completes; then let connected devices drain, close
/// every connection, and return the summary. Connection failures never end the run:
/// devices keep retrying with backoff until shutdown.
pub async fn run(
    scenario: Scenario,
    opts: RunOptions,
    shutdown: impl Future<Output = ()>,
) -> Result<Summary, RunError> {
    enum Target {
        Ws(Arc<HubUrl>),
        Http(Arc<HubUrl>),
        Mqtt(BrokerUrl),
    }
    let (target, transport_name) = match &opts.transport {
        Transport::WebSocket(url) => (Target::Ws(Arc::new(HubUrl::parse(url)?)), "websocket"),
        Transport::Http(url) => (Target::Http(Arc::new(HubUrl::parse(url)?)), "http"),
        Transport::Mqtt(url) => (
            Target::Mqtt(BrokerUrl::parse(url).ok_or_else(|| RunError::BrokerUrl(url.clone()))?),
            "mqtt",
        ),
    };
    opts.check()?;
    let specs = scenario.devices();
    if specs.is_empty() {
        return Err(RunError::NoDevices(scenario.name));
    }
    let buffer = opts
        .buffer
        .or(scenario.buffer)
        .unwrap_or(DEFAULT_BUFFER)
        .max(1);
    let seq_start = match opts.seq_start {
        SeqStart::Clock => (wall_ms().max(0) as u64).saturating_mul(1000),
        SeqStart::Fixed(n) => n,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = DeviceCtx {
        clock: Clock::start(opts.clock),
        backoff: opts.backoff,
        send_rate: opts.send_rate,
        seed: scenario.seed,
        drain: opts.drain,
        shutdown: stop_rx,
        auth: opts.auth.clone(),
    };
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for spec in specs {
        let index = spec.index;
        let dev = Device::new(spec, scenario.seed, seq_start, buffer, opts.stats.clone());
        let ctx = ctx.clone();
        match &target {
            Target::Ws(hub) => {
                let hub = hub.clone();
                tasks.spawn(async move { (index, transport::ws::run_device(dev, hub, ctx).await) })
            }
            Target::Http(hub) => {
                let hub = hub.clone();
                tasks
                    .spawn(async move { (index, transport::http::run_device(dev, hub, ctx).await) })
            }
            Target::Mqtt(broker) => {
                let broker = broker.clone();
                tasks.spawn(
                    async move { (index, transport::mqtt::run_device(dev, broker, ctx).await) },
                )
            }
        };
    }
    drop(ctx);

    shutdown.await;
    let _ = stop_tx.send(true);

    let mut done = Vec::with_capacity(tasks.len());
    let mut failure = None;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(d) => done.push(d),
            Err(e) => failure = Some(e.to_string()),
        }
    }
    if let Some(e) = failure {
        return Err(RunError::DeviceTask(e));
    }
    done.sort_by_key(|(i, _)| *i);
    Ok(Summary {
        scenario: scenario.name,
        transport: transport_name,
        elapsed_secs: started.elapsed().as_secs_f64(),
        buffer,
        totals: opts.stats.snapshot(),
        devices: done.into_iter().map(|(_, d)| d).collect(),
    })
}
