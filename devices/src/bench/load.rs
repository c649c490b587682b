//! The load itself: open the dashboards, then the devices, run the warm-up and the
//! measured window, and collect what every task counted. Each task keeps its own counters
//! and histogram (no locks on the receive path); they are merged when the run ends.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{stream, SinkExt, StreamExt};
use hdrhistogram::Histogram;
use telehub_protocol::inbound::{ReadingItem, ToHub};
use telehub_protocol::outbound::Peek;
use telehub_protocol::role::Role;
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use super::report::{report, BenchReport, Measured};
use super::slow;
use super::timing::{SendTimes, Shared};
use super::{
    check, procfs, raise_fd_limit, token_for, BenchError, BenchOptions, CONNECT_CONCURRENCY, DRAIN,
};
use crate::clock::wall_ms;
use crate::wsclient::{self, HubUrl, WsStream};

/// Read buffer for a bench dashboard: it receives a steady stream, so a larger buffer
/// means fewer read calls.
const DASHBOARD_READ_BUFFER: usize = 64 * 1024;
/// Largest latency the histogram records (longer ones saturate): 60 s, in ns.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

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
    (path, token): (String, Option<String>),
    read_buffer: usize,
    recv_buffer: Option<u32>,
) -> Result<WsStream, BenchError> {
    let mut ws = tokio::time::timeout(
        Duration::from_secs(10),
        wsclient::connect(
            hub,
            addr,
            &path,
            None,
            wsclient::small_config(read_buffer),
            token.as_deref(),
            recv_buffer,
        ),
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
        // Only the routing fields, borrowed: parsing a delivery allocates nothing.
        let Ok(d) = Peek::from_json(text.as_str()) else {
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
                let text = ToHub::reading(ReadingItem {
                    metric: "bench",
                    value: (seq - seq_base) as f64,
                    unit: None,
                    ts: Some(wall_ms()),
                    seq: Some(seq),
                })
                .to_json();
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
    let auth = opts.auth.as_ref();
    let mut dash_paths = Vec::with_capacity(rooms * opts.dashboards as usize);
    for r in 0..rooms {
        for s in 0..opts.dashboards as usize {
            let (room, client) = (format!("bench-{r}"), format!("dash-{s}"));
            let token = token_for(auth, &room, &client, Role::Dashboard)?;
            dash_paths.push((format!("/ws/{room}/{client}?role=dashboard"), token));
        }
    }
    let dash_streams = if opts.dashboard_urls.is_empty() {
        open_all(&hub, addr, dash_paths, DASHBOARD_READ_BUFFER, None).await?
    } else {
        // Round-robin over the given hubs (several hubs sharing rooms).
        let mut hubs = Vec::with_capacity(opts.dashboard_urls.len());
        for url in &opts.dashboard_urls {
            let h = HubUrl::parse(url)?;
            let a = h.resolve().await?;
            hubs.push((h, a, Vec::new()));
        }
        let n = hubs.len();
        for (i, p) in dash_paths.into_iter().enumerate() {
            hubs[i % n].2.push(p);
        }
        let mut all = Vec::new();
        for (h, a, paths) in hubs {
            all.extend(open_all(&h, a, paths, DASHBOARD_READ_BUFFER, None).await?);
        }
        all
    };
    let mut dash_tasks = Vec::with_capacity(dash_streams.len());
    for ws in dash_streams {
        dash_tasks.push(tokio::spawn(dashboard(ws, shared.clone(), stop_rx.clone())));
    }
    // Slow viewers (`--slow-viewers`): beside the measured dashboards, never counted in
    // their deliveries or latency, so the report shows what they cost their neighbours.
    let mut slow_paths = Vec::with_capacity(rooms * opts.slow_viewers as usize);
    for r in 0..rooms {
        for s in 0..opts.slow_viewers as usize {
            let (room, client) = (format!("bench-{r}"), format!("slow-{s}"));
            let token = token_for(auth, &room, &client, Role::Dashboard)?;
            slow_paths.push((
                format!("/ws/{room}/{client}?role=dashboard&overflow=latest"),
                token,
            ));
        }
    }
    let slow_streams = open_all(
        &hub,
        addr,
        slow_paths,
        slow::READ_BUFFER,
        (opts.slow_recv_buffer > 0).then_some(opts.slow_recv_buffer),
    )
    .await?;
    let (dev_stop_tx, dev_stop_rx) = watch::channel(false);
    let slow_tasks: Vec<_> = slow_streams
        .into_iter()
        .map(|ws| {
            let every = opts.slow_read_every;
            tokio::spawn(slow::viewer(
                ws,
                every,
                dev_stop_rx.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();

    let mut dev_paths = Vec::with_capacity(total_devices);
    for g in 0..total_devices {
        let (room, client) = (format!("bench-{}", g / per_room), format!("dev-{g}"));
        let token = token_for(auth, &room, &client, Role::Device)?;
        dev_paths.push((format!("/ws/{room}/{client}?role=device"), token));
    }
    let dev_streams = open_all(&hub, addr, dev_paths, 4 * 1024, None).await?;
    let period = Duration::from_secs_f64(1.0 / opts.rate_hz);
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
    let mut slow_counts = slow::SlowCounts::default();
    for task in slow_tasks {
        if let Ok(c) = task.await {
            slow_counts.add(&c);
        }
    }
    let readings_sent: u64 = sent_per_room.iter().sum();
    Ok(report(
        &opts,
        Measured {
            window_secs,
            readings_sent,
            delivered,
            untimed,
            closed,
            device_errors,
            histogram,
            start_usage,
            end_usage,
            slow: slow_counts,
        },
    ))
}

/// Open every path (a few at a time) and wait for each welcome; fail on the first error.
async fn open_all(
    hub: &HubUrl,
    addr: SocketAddr,
    paths: Vec<(String, Option<String>)>,
    read_buffer: usize,
    recv_buffer: Option<u32>,
) -> Result<Vec<WsStream>, BenchError> {
    let results: Vec<Result<WsStream, BenchError>> = stream::iter(paths)
        .map(|p| open(hub, addr, p, read_buffer, recv_buffer))
        .buffered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    results.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_delivery_without_the_rest() {
        let frame = r#"{"type":"reading","room":"bench-0","device":"dev-17","metric":"bench","value":3,"ts":1764000000000,"seq":123,"offset":9}"#;
        let d = Peek::from_json(frame).expect("parses");
        assert_eq!(d.kind, "reading");
        assert_eq!(d.device.and_then(device_index), Some(17));
        assert_eq!(d.seq, Some(123));
    }
}
