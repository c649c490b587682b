//! `telehub-sim bench`: the load generator and its measurements.
//!
//! In each of R rooms it opens S dashboards, then D devices that each send a `reading`
//! at H Hz with a rising `seq`. After a warm-up it measures for a fixed window:
//!
//! - readings in per second (sent by the devices within the window),
//! - deliveries per second and loss: a reading sent within the window should reach every
//!   dashboard of its room, so expected = readings sent in the window × S;
//! - latency from send to dashboard receipt. Each device records the monotonic time of
//!   every send in a ring indexed by seq (`SendTimes`), and a dashboard looks the send
//!   time up by (device, seq) on receipt, for sub-millisecond precision that the ms `ts`
//!   cannot give. Window membership is decided by that same send time on both sides.
//!
//! Every dashboard task keeps its own counters and histogram (no locks on the receive
//! path), merged when the run ends. With `--pid` it also reads the hub's RSS and CPU time
//! from /proc over the window. [`idle`] is the separate `--idle N` memory measurement.

pub mod idle;
pub mod procfs;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{stream, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use crate::clock::wall_ms;
use crate::wsclient::{self, ConnectError, HubUrl, WsStream};

/// Connections opened at once while setting up, so setup does not look like a SYN flood.
pub const CONNECT_CONCURRENCY: usize = 64;
/// After the window closes, how long dashboards keep receiving readings sent within it.
pub const DRAIN: Duration = Duration::from_secs(2);
/// Read buffer for a bench dashboard: it receives a steady stream, so a larger buffer
/// means fewer read calls.
const DASHBOARD_READ_BUFFER: usize = 64 * 1024;
/// Largest latency the histogram records (longer ones saturate): 60 s, in ns.
const MAX_LATENCY_NS: u64 = 60_000_000_000;
/// Seconds of sends each device's ring remembers; a reading delivered later than this
/// cannot be timed (it is counted as `untimed`).
const RING_SECONDS: f64 = 30.0;
/// Bits of a ring slot holding the send time: 2^44 ns is 4.8 hours, the longest bench.
const NANOS_BITS: u32 = 44;
const NANOS_MASK: u64 = (1 << NANOS_BITS) - 1;
/// Longest warm-up + window a bench may run, so send times fit in a ring slot.
pub const MAX_BENCH_TIME: Duration = Duration::from_secs(4 * 3600);

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Hub base URL, `ws://127.0.0.1:8080`.
    pub url: String,
    /// Rooms.
    pub rooms: u32,
    /// Devices per room.
    pub devices: u32,
    /// Dashboards per room.
    pub dashboards: u32,
    /// Readings per second per device.
    pub rate_hz: f64,
    /// Measured window.
    pub duration: Duration,
    /// Time before the window, to let connections and caches settle.
    pub warmup: Duration,
    /// The hub's pid, to read its RSS and CPU time.
    pub pid: Option<u32>,
}

/// Why the bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad URL, or a connection failed during setup.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// A connection did not welcome us in time.
    #[error("{what}: {message}")]
    Setup {
        /// Which connection.
        what: String,
        /// What happened.
        message: String,
    },
    /// Bad options.
    #[error("{0}")]
    Options(String),
    /// Reading /proc for `--pid` failed.
    #[error("reading /proc for pid {pid}: {error}")]
    Proc {
        /// The pid.
        pid: u32,
        /// The error.
        error: std::io::Error,
    },
}

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
}

/// The hub's resources over the window (with `--pid`).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct HubUsage {
    /// The pid measured.
    pub pid: u32,
    /// RSS when the window opened, KiB.
    pub rss_start_kib: u64,
    /// RSS when the window closed, KiB.
    pub rss_end_kib: u64,
    /// CPU time (user + system) the hub used in the window, seconds.
    pub cpu_secs: f64,
    /// Of one core: cpu_secs / window seconds.
    pub cpu_cores: f64,
    /// Hub CPU per delivery in the window, microseconds.
    pub cpu_us_per_delivery: f64,
}

/// The results.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Rooms.
    pub rooms: u32,
    /// Devices per room.
    pub devices: u32,
    /// Dashboards per room.
    pub dashboards: u32,
    /// Hz per device.
    pub rate_hz: f64,
    /// Window length, seconds (measured).
    pub window_secs: f64,
    /// Warm-up, seconds.
    pub warmup_secs: f64,
    /// Readings sent within the window.
    pub readings_sent: u64,
    /// Readings per second into the hub.
    pub readings_per_sec: f64,
    /// Deliveries expected: each room's readings × its dashboards.
    pub deliveries_expected: u64,
    /// Deliveries of window readings received.
    pub deliveries: u64,
    /// Deliveries per second.
    pub deliveries_per_sec: f64,
    /// Expected minus received (never negative).
    pub lost: u64,
    /// lost / expected.
    pub loss_ratio: f64,
    /// Send-to-receipt latency of the window's deliveries.
    pub latency: Latency,
    /// Deliveries whose send time was no longer in the ring (very late).
    pub untimed: u64,
    /// Dashboards whose connection closed during the run (e.g. 1013 slow consumer).
    pub dashboards_closed: u64,
    /// `error` frames the devices received (e.g. `rate_limited`).
    pub device_errors: u64,
    /// Hub resources, with `--pid`.
    pub hub: Option<HubUsage>,
}

/// The monotonic send time of every recent reading, per device, indexed by seq.
///
/// Lock-free: a device stores, dashboards load. A slot is one `u64`: the low
/// [`NANOS_BITS`] bits hold nanoseconds since the bench started plus one (0 = never sent),
/// the high bits which lap of the ring the seq is on, so a reading delivered after its
/// slot was reused is counted as untimed instead of being given a wrong latency.
struct SendTimes {
    slots: Box<[AtomicU64]>,
    ring: u64,
    seq_base: u64,
}

impl SendTimes {
    fn new(devices: usize, rate_hz: f64, seq_base: u64) -> Self {
        let ring = ((rate_hz * RING_SECONDS).ceil() as u64)
            .next_power_of_two()
            .clamp(256, 1 << 16);
        let slots = (0..devices as u64 * ring)
            .map(|_| AtomicU64::new(0))
            .collect();
        SendTimes {
            slots,
            ring,
            seq_base,
        }
    }

    /// The slot of (device, seq) and the lap tag its value must carry.
    fn slot(&self, device: usize, seq: u64) -> Option<(&AtomicU64, u64)> {
        let n = seq.wrapping_sub(self.seq_base);
        let i = device as u64 * self.ring + n % self.ring;
        let lap = (n / self.ring) & (u64::MAX >> NANOS_BITS);
        self.slots.get(i as usize).map(|s| (s, lap << NANOS_BITS))
    }

    fn record(&self, device: usize, seq: u64, nanos: u64) {
        if let Some((s, tag)) = self.slot(device, seq) {
            s.store(tag | ((nanos + 1) & NANOS_MASK), Relaxed);
        }
    }

    fn lookup(&self, device: usize, seq: u64) -> Option<u64> {
        let (s, tag) = self.slot(device, seq)?;
        let v = s.load(Relaxed);
        if v & !NANOS_MASK != tag || v & NANOS_MASK == 0 {
            return None;
        }
        Some((v & NANOS_MASK) - 1)
    }
}

/// State every bench task shares; read-only except for atomics.
struct Shared {
    started: Instant,
    times: SendTimes,
    /// Window bounds in ns since `started`; u64::MAX until set.
    window_start: AtomicU64,
    window_end: AtomicU64,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    fn in_window(&self, ns: u64) -> bool {
        ns >= self.window_start.load(Relaxed) && ns < self.window_end.load(Relaxed)
    }
}

/// The fields of a frame a dashboard reads; everything else is skipped unparsed.
/// Borrowed `&str`, so parsing allocates nothing: `type` values and the bench's device ids
/// never contain JSON escapes (a frame where they did would fail to parse and be skipped).
#[derive(Deserialize)]
struct Delivery<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    device: Option<&'a str>,
    seq: Option<u64>,
}

/// Device ids are `dev-{global index}`, so the index is parsed, not looked up.
fn device_index(id: &str) -> Option<usize> {
    id.strip_prefix("dev-")?.parse().ok()
}

struct DashboardResult {
    delivered: u64,
    untimed: u64,
    closed: bool,
    histogram: Histogram<u64>,
}

struct DeviceResult {
    sent_in_window: u64,
    errors: u64,
}

fn new_histogram() -> Histogram<u64> {
    // Bounds are constants within hdrhistogram's limits, so this cannot fail.
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds")
}

async fn open(
    hub: &HubUrl,
    addr: SocketAddr,
    path: String,
    read_buffer: usize,
) -> Result<WsStream, BenchError> {
    let mut ws = tokio::time::timeout(
        Duration::from_secs(10),
        wsclient::connect(hub, addr, &path, None, wsclient::small_config(read_buffer)),
    )
    .await
    .map_err(|_| BenchError::Setup {
        what: path.clone(),
        message: "connect timed out".into(),
    })??;
    // Wait for the welcome, so the member is in its room before the clock starts.
    let welcome = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(msg) = ws.next().await {
            if let Ok(Message::Text(t)) = msg {
                if t.as_str().contains("\"welcome\"") {
                    return Ok(());
                }
            }
        }
        Err("closed before welcome")
    })
    .await;
    match welcome {
        Ok(Ok(())) => Ok(ws),
        Ok(Err(e)) => Err(BenchError::Setup {
            what: path,
            message: e.into(),
        }),
        Err(_) => Err(BenchError::Setup {
            what: path,
            message: "no welcome in 10 s".into(),
        }),
    }
}

async fn dashboard(
    mut ws: WsStream,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> DashboardResult {
    let mut r = DashboardResult {
        delivered: 0,
        untimed: 0,
        closed: false,
        histogram: new_histogram(),
    };
    loop {
        let msg = tokio::select! {
            biased;
            _ = stop.changed() => break,
            msg = ws.next() => msg,
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                r.closed = true;
                break;
            }
            Some(Ok(_)) => continue,
        };
        let now = shared.now_ns();
        let Ok(d) = serde_json::from_str::<Delivery>(text.as_str()) else {
            continue;
        };
        if d.kind != "reading" {
            continue;
        }
        let (Some(dev), Some(seq)) = (d.device.and_then(device_index), d.seq) else {
            continue;
        };
        match shared.times.lookup(dev, seq) {
            Some(sent) if shared.in_window(sent) => {
                r.delivered += 1;
                r.histogram
                    .saturating_record(now.saturating_sub(sent).max(1));
            }
            Some(_) => {}
            None => r.untimed += 1,
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
    r
}

#[allow(clippy::too_many_arguments)]
async fn device(
    mut ws: WsStream,
    index: usize,
    seq_base: u64,
    period: Duration,
    phase: Duration,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> DeviceResult {
    let mut r = DeviceResult {
        sent_in_window: 0,
        errors: 0,
    };
    let mut seq = seq_base;
    let mut tick = tokio::time::interval_at(Instant::now() + phase, period);
    // A client that falls behind catches up, so the offered rate stays what was asked.
    tick.set_missed_tick_behavior(MissedTickBehavior::Burst);
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            msg = ws.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if t.as_str().contains("\"type\":\"error\"") {
                        r.errors += 1;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
            _ = tick.tick() => {
                seq += 1;
                let now = shared.now_ns();
                shared.times.record(index, seq, now);
                let text = format!(
                    r#"{{"type":"reading","metric":"bench","value":{},"ts":{},"seq":{seq}}}"#,
                    seq - seq_base,
                    wall_ms()
                );
                if ws.send(Message::text(text)).await.is_err() {
                    break;
                }
                if shared.in_window(now) {
                    r.sent_in_window += 1;
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_millis(500), ws.close(None)).await;
    r
}

fn check(opts: &BenchOptions) -> Result<(), BenchError> {
    if opts.rooms == 0 || opts.devices == 0 || opts.dashboards == 0 {
        return Err(BenchError::Options(
            "--rooms, --devices and --dashboards must be at least 1".into(),
        ));
    }
    if !(opts.rate_hz > 0.0 && opts.rate_hz <= 10_000.0) {
        return Err(BenchError::Options(
            "--rate must be in (0, 10000] Hz".into(),
        ));
    }
    if opts.duration.is_zero() {
        return Err(BenchError::Options("--duration must be positive".into()));
    }
    if opts.duration + opts.warmup > MAX_BENCH_TIME {
        return Err(BenchError::Options(
            "--warmup plus --duration must stay under 4 hours".into(),
        ));
    }
    Ok(())
}

/// Raise our own open-file soft limit to the hard limit: a bench opens many sockets.
pub fn raise_fd_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}

/// Run the load benchmark against a running hub.
pub async fn run_bench(opts: BenchOptions) -> Result<BenchReport, BenchError> {
    check(&opts)?;
    raise_fd_limit();
    let hub = HubUrl::parse(&opts.url)?;
    let addr = hub.resolve().await?;
    let rooms = opts.rooms as usize;
    let per_room = opts.devices as usize;
    let total_devices = rooms * per_room;
    // Above anything an earlier bench sent, so the hub's dedup never drops a fresh seq.
    let seq_base = (wall_ms().max(0) as u64).saturating_mul(1000);
    let shared = Arc::new(Shared {
        started: Instant::now(),
        times: SendTimes::new(total_devices, opts.rate_hz, seq_base),
        window_start: AtomicU64::new(u64::MAX),
        window_end: AtomicU64::new(u64::MAX),
    });
    let (stop_tx, stop_rx) = watch::channel(false);

    // Dashboards first, so none misses the start.
    let dash_paths: Vec<String> = (0..rooms)
        .flat_map(|r| {
            (0..opts.dashboards as usize)
                .map(move |s| format!("/ws/bench-{r}/dash-{s}?role=dashboard"))
        })
        .collect();
    let dash_streams = open_all(&hub, addr, dash_paths, DASHBOARD_READ_BUFFER).await?;
    let mut dash_tasks = Vec::with_capacity(dash_streams.len());
    for ws in dash_streams {
        dash_tasks.push(tokio::spawn(dashboard(ws, shared.clone(), stop_rx.clone())));
    }

    let dev_paths: Vec<String> = (0..total_devices)
        .map(|g| format!("/ws/bench-{}/dev-{g}?role=device", g / per_room))
        .collect();
    let dev_streams = open_all(&hub, addr, dev_paths, 4 * 1024).await?;
    let period = Duration::from_secs_f64(1.0 / opts.rate_hz);
    let (dev_stop_tx, dev_stop_rx) = watch::channel(false);
    let mut dev_tasks = Vec::with_capacity(total_devices);
    for (g, ws) in dev_streams.into_iter().enumerate() {
        // Spread the devices' sends evenly over one period.
        let phase = period.mul_f64(g as f64 / total_devices as f64);
        let room = g / per_room;
        dev_tasks.push((
            room,
            tokio::spawn(device(
                ws,
                g,
                seq_base,
                period,
                phase,
                shared.clone(),
                dev_stop_rx.clone(),
            )),
        ));
    }

    tokio::time::sleep(opts.warmup).await;
    let proc_err = |pid| move |error| BenchError::Proc { pid, error };
    let start_usage = match opts.pid {
        Some(pid) => Some((
            procfs::rss_kib(pid).map_err(proc_err(pid))?,
            procfs::cpu_micros(pid).map_err(proc_err(pid))?,
        )),
        None => None,
    };
    let window_open = Instant::now();
    shared.window_start.store(shared.now_ns(), Relaxed);
    tokio::time::sleep(opts.duration).await;
    shared.window_end.store(shared.now_ns(), Relaxed);
    let window_secs = window_open.elapsed().as_secs_f64();
    let end_usage = match opts.pid {
        Some(pid) => Some((
            procfs::rss_kib(pid).map_err(proc_err(pid))?,
            procfs::cpu_micros(pid).map_err(proc_err(pid))?,
        )),
        None => None,
    };

    let _ = dev_stop_tx.send(true);
    let mut sent_per_room = vec![0u64; rooms];
    let mut device_errors = 0;
    for (room, task) in dev_tasks {
        if let Ok(r) = task.await {
            sent_per_room[room] += r.sent_in_window;
            device_errors += r.errors;
        }
    }
    tokio::time::sleep(DRAIN).await;
    let _ = stop_tx.send(true);
    let mut histogram = new_histogram();
    let (mut delivered, mut untimed, mut closed) = (0u64, 0u64, 0u64);
    for task in dash_tasks {
        if let Ok(r) = task.await {
            delivered += r.delivered;
            untimed += r.untimed;
            closed += u64::from(r.closed);
            let _ = histogram.add(&r.histogram);
        }
    }

    let readings_sent: u64 = sent_per_room.iter().sum();
    let expected = readings_sent * u64::from(opts.dashboards);
    let lost = expected.saturating_sub(delivered);
    let us = |ns: u64| ns as f64 / 1000.0;
    let latency = if histogram.is_empty() {
        Latency::default()
    } else {
        Latency {
            p50_us: us(histogram.value_at_quantile(0.50)),
            p99_us: us(histogram.value_at_quantile(0.99)),
            p999_us: us(histogram.value_at_quantile(0.999)),
            max_us: us(histogram.max()),
            mean_us: histogram.mean() / 1000.0,
        }
    };
    let hub_usage = match (opts.pid, start_usage, end_usage) {
        (Some(pid), Some((rss0, cpu0)), Some((rss1, cpu1))) => {
            let cpu = cpu1.saturating_sub(cpu0) as f64;
            Some(HubUsage {
                pid,
                rss_start_kib: rss0,
                rss_end_kib: rss1,
                cpu_secs: cpu / 1e6,
                cpu_cores: cpu / 1e6 / window_secs,
                cpu_us_per_delivery: if delivered > 0 {
                    cpu / delivered as f64
                } else {
                    0.0
                },
            })
        }
        _ => None,
    };
    Ok(BenchReport {
        rooms: opts.rooms,
        devices: opts.devices,
        dashboards: opts.dashboards,
        rate_hz: opts.rate_hz,
        window_secs,
        warmup_secs: opts.warmup.as_secs_f64(),
        readings_sent,
        readings_per_sec: readings_sent as f64 / window_secs,
        deliveries_expected: expected,
        deliveries: delivered,
        deliveries_per_sec: delivered as f64 / window_secs,
        lost,
        loss_ratio: if expected > 0 {
            lost as f64 / expected as f64
        } else {
            0.0
        },
        latency,
        untimed,
        dashboards_closed: closed,
        device_errors,
        hub: hub_usage,
    })
}

/// Open every path (a few at a time) and wait for each welcome; fail on the first error.
async fn open_all(
    hub: &HubUrl,
    addr: SocketAddr,
    paths: Vec<String>,
    read_buffer: usize,
) -> Result<Vec<WsStream>, BenchError> {
    let results: Vec<Result<WsStream, BenchError>> = stream::iter(paths)
        .map(|p| open(hub, addr, p, read_buffer))
        .buffered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_times_ring() {
        let t = SendTimes::new(3, 10.0, 1_000);
        assert_eq!(t.ring, 512);
        t.record(2, 1_005, 42);
        assert_eq!(t.lookup(2, 1_005), Some(42));
        assert_eq!(t.lookup(1, 1_005), None);
        // Recorded zero is distinguishable from "never sent".
        t.record(0, 1_001, 0);
        assert_eq!(t.lookup(0, 1_001), Some(0));
        // A slot reused one lap later no longer answers for the old seq.
        t.record(2, 1_005 + 512, 99);
        assert_eq!(t.lookup(2, 1_005), None);
        assert_eq!(t.lookup(2, 1_005 + 512), Some(99));
    }

    #[test]
    fn parses_a_delivery_without_the_rest() {
        let frame = r#"{"type":"reading","room":"bench-0","device":"dev-17","metric":"bench","value":3,"ts":1764000000000,"seq":123,"offset":9}"#;
        let d: Delivery = serde_json::from_str(frame).expect("parses");
        assert_eq!(d.kind, "reading");
        assert_eq!(d.device.and_then(device_index), Some(17));
        assert_eq!(d.seq, Some(123));
    }
}
