//! Benchmark: readings per second from MQTT publishers through the bridge to WebSocket
//! dashboards, beside the same workload sent by WebSocket devices.
//!
//! ```sh
//! cargo build --release --bin telehub --example mqtt_bench
//! target/release/examples/mqtt_bench --transport both --rooms 10 --devices 10 --dashboards 10 --rate 10
//! ```
//!
//! It starts its own Mosquitto (free port, temporary directory) and its own hub process
//! (`target/release/telehub`, or `--telehub PATH`) with one bridge to that broker. In
//! each of R rooms it opens S WebSocket dashboards, then D devices that each send a
//! reading at H Hz with a rising `seq`: over MQTT (QoS 1 on
//! `telehub/{room}/{device}/lat`, one MQTT connection per device) or over WebSocket
//! (`role=device`). The reading's `value` is its send time in µs since the run's start
//! (monotonic clock, exact in an f64), so each dashboard measures send → receipt
//! latency precisely. Readings sent in the measured window should reach every dashboard
//! of their room: loss = expected − delivered. CPU time of the hub (and the broker, for
//! MQTT) comes from /proc over the window.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use telehub_sim::bench::LoadShape;
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
    /// The hub binary.
    #[arg(long, default_value = "target/release/telehub")]
    telehub: PathBuf,
    /// The broker binary.
    #[arg(long, default_value = "/usr/sbin/mosquitto")]
    mosquitto: PathBuf,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on port {port} after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// A child process killed on drop.
struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
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
    dir: PathBuf,
    broker: Proc,
    broker_port: u16,
    hub: Proc,
    hub_port: u16,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn start(args: &Args) -> anyhow::Result<Setup> {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("telehub-mqtt-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
    let broker_port = free_port()?;
    std::fs::write(
        dir.join("mosquitto.conf"),
        format!(
            "listener {broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
             max_queued_messages 1000000\nmax_inflight_messages 1000\nlog_dest none\n"
        ),
    )?;
    let broker = Proc(
        Command::new(&args.mosquitto)
            .arg("-c")
            .arg(dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {}", args.mosquitto.display()))?,
    );
    wait_port(broker_port)?;
    let hub_port = free_port()?;
    std::fs::write(
        dir.join("hub.toml"),
        format!(
            "[server]\nlog = \"warn\"\n[limits]\nrate_per_sec = 100000.0\nrate_burst = 100000.0\n\
             outbound_queue = 65536\n\
             [[mqtt.bridges]]\nname = \"bench\"\nurl = \"mqtt://127.0.0.1:{broker_port}\"\n\
             client_id = \"telehub-bench-{}\"\n",
            std::process::id()
        ),
    )?;
    let hub = Proc(
        Command::new(&args.telehub)
            .args(["serve", "--config"])
            .arg(dir.join("hub.toml"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{hub_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (cargo build --release --bin telehub)",
                    args.telehub.display()
                )
            })?,
    );
    wait_port(hub_port)?;
    Ok(Setup {
        dir,
        broker,
        broker_port,
        hub,
        hub_port,
    })
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
            let url = format!(
                "ws://127.0.0.1:{}/ws/{tag}-room-{r}/dash-{s}?role=dashboard",
                setup.hub_port
            );
            let (mut ws, _) = tokio_tungstenite::connect_async(&url)
                .await
                .with_context(|| format!("dashboard {url}"))?;
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
    for r in 0..args.shape.rooms {
        for d in 0..args.shape.devices {
            let room = format!("{tag}-room-{r}");
            let device = format!("dev-{d}");
            let (sent, ws_start, ws_end, end_instant) = (
                sent.clone(),
                win_start.clone(),
                win_end.clone(),
                end_instant.clone(),
            );
            let phase = period.mul_f64(
                (r * args.shape.devices + d) as f64
                    / (args.shape.rooms * args.shape.devices) as f64,
            );
            match transport {
                Transport::Mqtt => {
                    let mut o = MqttOptions::new(
                        format!("bench-{room}-{device}-{}", std::process::id()),
                        "127.0.0.1",
                        setup.broker_port,
                    );
                    o.set_keep_alive(Duration::from_secs(30));
                    let (client, mut el) = AsyncClient::new(o, 1024);
                    pollers.push(tokio::spawn(
                        async move { while el.poll().await.is_ok() {} },
                    ));
                    let topic = format!("telehub/{room}/{device}/lat");
                    dev_tasks.push(tokio::spawn(async move {
                        tokio::time::sleep(phase).await;
                        let mut tick = tokio::time::interval(period);
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        let mut seq = 0u64;
                        loop {
                            tick.tick().await;
                            if end_instant
                                .lock()
                                .ok()
                                .and_then(|e| *e)
                                .is_some_and(|e| Instant::now() >= e)
                            {
                                break;
                            }
                            let now = base.elapsed().as_micros() as u64;
                            let payload = format!(r#"{{"value":{now},"seq":{seq}}}"#);
                            seq += 1;
                            if client
                                .publish(topic.as_str(), QoS::AtLeastOnce, false, payload)
                                .await
                                .is_err()
                            {
                                break;
                            }
                            if now >= ws_start.load(Relaxed) && now < ws_end.load(Relaxed) {
                                sent.fetch_add(1, Relaxed);
                            }
                        }
                    }));
                }
                Transport::Ws | Transport::Both => {
                    let url = format!(
                        "ws://127.0.0.1:{}/ws/{room}/{device}?role=device",
                        setup.hub_port
                    );
                    let (ws, _) = tokio_tungstenite::connect_async(&url)
                        .await
                        .with_context(|| format!("device {url}"))?;
                    let (mut tx, mut rx) = ws.split();
                    pollers.push(tokio::spawn(
                        async move { while rx.next().await.is_some() {} },
                    ));
                    dev_tasks.push(tokio::spawn(async move {
                        tokio::time::sleep(phase).await;
                        let mut tick = tokio::time::interval(period);
                        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        let mut seq = 0u64;
                        loop {
                            tick.tick().await;
                            if end_instant
                                .lock()
                                .ok()
                                .and_then(|e| *e)
                                .is_some_and(|e| Instant::now() >= e)
                            {
                                break;
                            }
                            let now = base.elapsed().as_micros() as u64;
                            let frame = format!(
                                r#"{{"type":"reading","metric":"lat","value":{now},"seq":{seq}}}"#
                            );
                            seq += 1;
                            if tx.send(Message::Text(frame.into())).await.is_err() {
                                break;
                            }
                            if now >= ws_start.load(Relaxed) && now < ws_end.load(Relaxed) {
                                sent.fetch_add(1, Relaxed);
                            }
                        }
                    }));
                }
            }
        }
    }

    tokio::time::sleep(warm).await;
    let hub_pid = setup.hub.0.id();
    let broker_pid = setup.broker.0.id();
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
        setup.hub.0.id(),
        setup.broker.0.id()
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
