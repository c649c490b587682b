//! Benchmark: readings per second from MQTT publishers through the bridge to WebSocket
//! dashboards, beside the same workload sent by WebSocket devices.
//!
//! ```sh
//! cargo build --release --bin telehub --example mqtt_bench
//! target/release/examples/mqtt_bench --transport both --rooms 10 --devices 10 --dashboards 10 --rate 10
//! ```
//!
//! It starts its own Mosquitto (telehub-testkit: a port it really bound, a temporary
//! directory) and its own hub process (the `telehub` beside this example in
//! `target/<profile>/`, `$TELEHUB_BIN`, or `--telehub PATH`) with one bridge to that
//! broker. In
//! each of R rooms it opens S WebSocket dashboards, then D devices that each send a
//! reading at H Hz with a rising `seq`: over MQTT (QoS 1 on
//! `telehub/{room}/{device}/lat`, one MQTT connection per device) or over WebSocket
//! (`role=device`). The reading's `value` is its send time in µs since the run's start
//! (monotonic clock, exact in an f64), so each dashboard measures send → receipt
//! latency precisely. Readings sent in the measured window should reach every dashboard
//! of their room: loss = expected − delivered. CPU time of the hub (and the broker, for
//! MQTT) comes from /proc over the window.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use rumqttc::QoS;
use telehub_sim::bench::LoadShape;
use telehub_testkit::hub::Hub;
use telehub_testkit::mosquitto::{self, Mosquitto};
use telehub_testkit::mqtt::TestClient;
use telehub_testkit::ws::Client;
use tokio_tungstenite::tungstenite::Message;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Transport {
    Mqtt,
    Ws,
    Both,
}

#[derive(Parser, Debug)]
#[command(about = "MQTT bridge vs WebSocket ingest benchmark for telehub")]
struct Args {
    #[arg(long, value_enum, default_value = "both")]
    transport: Transport,
    /// The same load flags as `telehub-sim bench`.
    #[command(flatten)]
    shape: LoadShape,
    /// Measured window, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up before the window, seconds.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// The hub binary [default: `telehub` beside this example, or $TELEHUB_BIN].
    #[arg(long)]
    telehub: Option<PathBuf>,
    /// The broker binary [default: $MOSQUITTO, then `mosquitto` on PATH or in /usr/sbin].
    #[arg(long)]
    mosquitto: Option<PathBuf>,
    /// The bridge's MQTT version (`[[mqtt.bridges]] protocol`): "3.1.1" or "5".
    #[arg(long, default_value = "3.1.1")]
    mqtt_protocol: String,
}

fn cpu_micros(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some(close) = stat.rfind(')') else {
        return 0;
    };
    let f: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    (tick(11) + tick(12)) * 10_000
}

struct Setup {
    broker: Mosquitto,
    hub: Hub,
}

impl Setup {
    fn hub_pid(&self) -> u32 {
        self.hub.pid().expect("the hub runs")
    }

    fn broker_pid(&self) -> u32 {
        self.broker.pid().expect("the broker runs")
    }
}

fn start(args: &Args) -> anyhow::Result<Setup> {
    if let Some(m) = &args.mosquitto {
        // Read by the testkit's launcher; set before any thread is started.
        std::env::set_var("MOSQUITTO", m);
    }
    let broker = Mosquitto::start_with(mosquitto::Config {
        persistence: false,
        max_queued_messages: 1_000_000,
        max_inflight_messages: 1_000,
        ..mosquitto::Config::default()
    });
    let telehub = args
        .telehub
        .clone()
        .unwrap_or_else(telehub_testkit::hub::binary);
    anyhow::ensure!(
        telehub.is_file(),
        "no hub binary at {} (cargo build --release --bin telehub)",
        telehub.display()
    );
    let hub = Hub::builder(telehub)
        .config(format!(
            // Quiet, but for the line that says where the hub listens.
            "[server]\nlog = \"warn,telehub::app=info\"\n\
             [limits]\nrate_per_sec = 100000.0\nrate_burst = 100000.0\n\
             outbound_queue = 65536\n\
             [[mqtt.bridges]]\nname = \"bench\"\nurl = \"mqtt://127.0.0.1:{}\"\n\
             client_id = \"telehub-bench-{}\"\nprotocol = \"{}\"\n",
            broker.port,
            std::process::id(),
            args.mqtt_protocol
        ))
        .start();
    Ok(Setup { broker, hub })
}

/// Paces one device: a send every `period`, `phase` into the first, until `end`; and
/// counts the sends that fall in the measured window.
struct Pacer {
    base: Instant,
    phase: Duration,
    period: Duration,
    end: Arc<std::sync::Mutex<Option<Instant>>>,
    win_start: Arc<AtomicU64>,
    win_end: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
}

/// A running [`Pacer`]'s clock and next seq.
struct Ticks {
    tick: tokio::time::Interval,
    seq: u64,
}

impl Pacer {
    async fn start(&self) -> Ticks {
        tokio::time::sleep(self.phase).await;
        let mut tick = tokio::time::interval(self.period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ticks { tick, seq: 0 }
    }

    /// Counts a send at `now` (µs since `base`) if it falls in the window.
    fn count(&self, now: u64) {
        if now >= self.win_start.load(Relaxed) && now < self.win_end.load(Relaxed) {
            self.sent.fetch_add(1, Relaxed);
        }
    }
}

impl Ticks {
    /// Waits for the next send: its time (µs since `base`) and seq, or `None` once the
    /// run has ended.
    async fn next(&mut self, p: &Pacer) -> Option<(u64, u64)> {
        self.tick.tick().await;
        let ended = p
            .end
            .lock()
            .ok()
            .and_then(|e| *e)
            .is_some_and(|e| Instant::now() >= e);
        if ended {
            return None;
        }
        self.seq += 1;
        Some((p.base.elapsed().as_micros() as u64, self.seq - 1))
    }
}

/// What one dashboard saw: deliveries of in-window readings and their latencies (µs).
#[derive(Default)]
struct Seen {
    delivered: u64,
    latencies: Vec<u64>,
}

struct Report {
    transport: &'static str,
    sent: u64,
    expected: u64,
    delivered: u64,
    latencies: Vec<u64>,
    window: f64,
    hub_cpu_us: u64,
    broker_cpu_us: u64,
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64 / 1000.0
}

impl Report {
    fn print(&mut self) {
        self.latencies.sort_unstable();
        let l = &self.latencies;
        let loss = self.expected.saturating_sub(self.delivered);
        println!(
            "{:>4}: readings in {:>8.0}/s  deliveries {:>9.0}/s  loss {} of {} ({:.3}%)  \
             latency ms p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}  hub CPU {:.2} µs/delivery{}",
            self.transport,
            self.sent as f64 / self.window,
            self.delivered as f64 / self.window,
            loss,
            self.expected,
            100.0 * loss as f64 / self.expected.max(1) as f64,
            pct(l, 50.0),
            pct(l, 99.0),
            pct(l, 99.9),
            l.last().map_or(f64::NAN, |m| *m as f64 / 1000.0),
            self.hub_cpu_us as f64 / self.delivered.max(1) as f64,
            if self.transport == "mqtt" {
                format!(
                    ", broker CPU {:.2} µs/reading",
                    self.broker_cpu_us as f64 / self.sent.max(1) as f64
                )
            } else {
                String::new()
            }
        );
    }
}

async fn run(args: &Args, setup: &Setup, transport: Transport) -> anyhow::Result<Report> {
    let tag = if transport == Transport::Mqtt {
        "mqtt"
    } else {
        "ws"
    };
    let base = Instant::now();
    let warm = Duration::from_secs_f64(args.warmup);
    let window = Duration::from_secs_f64(args.duration);
    // The window in µs since `base`; set once the setup is done.
    let win_start = Arc::new(AtomicU64::new(u64::MAX));
    let win_end = Arc::new(AtomicU64::new(u64::MAX));

    // Dashboards first, so they see every reading.
    let mut dash_tasks = Vec::new();
    for r in 0..args.shape.rooms {
        for s in 0..args.shape.dashboards {
            let url = setup.hub.ws_url(
                &format!("{tag}-room-{r}"),
                &format!("dash-{s}"),
                "role=dashboard",
            );
            let mut ws = Client::connect(&url)
                .await
                .with_context(|| format!("dashboard {url}"))?
                .ws;
            let (ws_start, ws_end) = (win_start.clone(), win_end.clone());
            dash_tasks.push(tokio::spawn(async move {
                let mut seen = Seen::default();
                let mut quiet_since_end = false;
                loop {
                    let msg = match tokio::time::timeout(Duration::from_secs(2), ws.next()).await {
                        Ok(Some(Ok(m))) => m,
                        Ok(_) => break,
                        Err(_) if quiet_since_end => break,
                        Err(_) => {
                            quiet_since_end = ws_end.load(Relaxed) != u64::MAX
                                && (base.elapsed().as_micros() as u64) > ws_end.load(Relaxed);
                            continue;
                        }
                    };
                    let Message::Text(t) = msg else { continue };
                    let now = base.elapsed().as_micros() as u64;
                    let Ok(v) = serde_json::from_str::<serde_json::Value>(t.as_str()) else {
                        continue;
                    };
                    if v["type"] != "reading" {
                        continue;
                    }
                    let sent = v["value"].as_f64().unwrap_or(-1.0);
                    if sent < 0.0 {
                        continue;
                    }
                    let sent = sent as u64;
                    if sent >= ws_start.load(Relaxed) && sent < ws_end.load(Relaxed) {
                        seen.delivered += 1;
                        seen.latencies.push(now.saturating_sub(sent));
                    }
                    if now > ws_end.load(Relaxed).saturating_add(2_000_000) {
                        break;
                    }
                }
                seen
            }));
        }
    }

    // Devices.
    let sent = Arc::new(AtomicU64::new(0));
    let period = Duration::from_secs_f64(1.0 / args.shape.rate);
    let end_instant = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let mut dev_tasks = Vec::new();
    let mut pollers = Vec::new();
    let mut mqtt_clients = Vec::new();
    for r in 0..args.shape.rooms {
        for d in 0..args.shape.devices {
            let room = format!("{tag}-room-{r}");
            let device = format!("dev-{d}");
            let phase = period.mul_f64(
                (r * args.shape.devices + d) as f64
                    / (args.shape.rooms * args.shape.devices) as f64,
            );
            let pacer = Pacer {
                base,
                phase,
                period,
                end: end_instant.clone(),
                win_start: win_start.clone(),
                win_end: win_end.clone(),
                sent: sent.clone(),
            };
            match transport {
                Transport::Mqtt => {
                    // The client (and its event loop) lives until the dashboards are
                    // done, so what it still has in flight at the end is delivered.
                    let device_client = TestClient::connect(
                        setup.broker.port,
                        &format!("bench-{room}-{device}-{}", std::process::id()),
                    );
                    let publisher = device_client.client.clone();
                    mqtt_clients.push(device_client);
                    let topic = format!("telehub/{room}/{device}/lat");
                    dev_tasks.push(tokio::spawn(async move {
                        let mut ticks = pacer.start().await;
                        while let Some((now, seq)) = ticks.next(&pacer).await {
                            let payload = format!(r#"{{"value":{now},"seq":{seq}}}"#);
                            if publisher
                                .publish(topic.as_str(), QoS::AtLeastOnce, false, payload)
                                .await
                                .is_err()
                            {
                                break;
                            }
                            pacer.count(now);
                        }
                    }));
                }
                Transport::Ws | Transport::Both => {
                    let url = setup.hub.ws_url(&room, &device, "role=device");
                    let (mut tx, mut rx) = Client::connect(&url)
                        .await
                        .with_context(|| format!("device {url}"))?
                        .ws
                        .split();
                    pollers.push(tokio::spawn(
                        async move { while rx.next().await.is_some() {} },
                    ));
                    dev_tasks.push(tokio::spawn(async move {
                        let mut ticks = pacer.start().await;
                        while let Some((now, seq)) = ticks.next(&pacer).await {
                            let frame = format!(
                                r#"{{"type":"reading","metric":"lat","value":{now},"seq":{seq}}}"#
                            );
                            if tx.send(Message::Text(frame.into())).await.is_err() {
                                break;
                            }
                            pacer.count(now);
                        }
                    }));
                }
            }
        }
    }

    tokio::time::sleep(warm).await;
    let hub_pid = setup.hub_pid();
    let broker_pid = setup.broker_pid();
    let (hub0, broker0) = (cpu_micros(hub_pid), cpu_micros(broker_pid));
    let start_us = base.elapsed().as_micros() as u64;
    win_end.store(start_us + window.as_micros() as u64, Relaxed);
    win_start.store(start_us, Relaxed);
    tokio::time::sleep(window).await;
    let (hub1, broker1) = (cpu_micros(hub_pid), cpu_micros(broker_pid));
    if let Ok(mut e) = end_instant.lock() {
        *e = Some(Instant::now());
    }
    for t in dev_tasks {
        let _ = t.await;
    }
    let mut delivered = 0;
    let mut latencies = Vec::new();
    for t in dash_tasks {
        let seen = t.await.context("dashboard task")?;
        delivered += seen.delivered;
        latencies.extend(seen.latencies);
    }
    for p in pollers {
        p.abort();
    }
    drop(mqtt_clients);
    let sent = sent.load(Relaxed);
    Ok(Report {
        transport: tag,
        sent,
        expected: sent * args.shape.dashboards as u64,
        delivered,
        latencies,
        window: window.as_secs_f64(),
        hub_cpu_us: hub1.saturating_sub(hub0),
        broker_cpu_us: broker1.saturating_sub(broker0),
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let setup = start(&args)?;
    let rt = tokio::runtime::Runtime::new()?;
    println!(
        "{} rooms x {} devices x {} dashboards at {} Hz, window {} s (hub pid {}, broker pid {})",
        args.shape.rooms,
        args.shape.devices,
        args.shape.dashboards,
        args.shape.rate,
        args.duration,
        setup.hub_pid(),
        setup.broker_pid()
    );
    let transports: &[Transport] = match args.transport {
        Transport::Both => &[Transport::Mqtt, Transport::Ws],
        Transport::Mqtt => &[Transport::Mqtt],
        Transport::Ws => &[Transport::Ws],
    };
    for t in transports {
        rt.block_on(run(&args, &setup, *t))?.print();
    }
    Ok(())
}
