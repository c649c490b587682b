//! Benchmark of the history read path, end to end over HTTP against a real hub:
//!
//! - the time to answer `GET /api/rooms/{room}/history` for 10,000 points (JSON and CSV),
//!   and the same window downsampled with `step=1m`;
//! - the time to render a 1-hour PNG (and SVG) of 10 devices reporting at 1 Hz
//!   (36,000 points), 1000x500;
//! - the cost the hot path pays per reading to record it (`RoomHistory::record`, which
//!   the room calls under its lock), in memory and with the SQLite store's queue.
//!
//! Run it with `cargo run --release --example history_bench` (figures go in
//! BENCHMARKS.md). The hub runs in this process on 127.0.0.1:0 with in-memory history;
//! the data arrives as device readings over WebSocket, as it would in production.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use telehub_testkit::ws::{Client, Polled};
use tokio::net::TcpListener;

const RUNS: usize = 30;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut settings = telehub::Settings::default();
    settings.history.persist = false;
    settings.history.points_per_series = 20_000;
    settings.history.retention_ms = 86_400_000;
    settings.limits.rate_per_sec = 1e9;
    settings.limits.rate_burst = 1e9;
    settings.server.log = "warn".into();
    telehub::telemetry::init("warn");
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let hub = tokio::spawn(telehub::run(listener, settings.clone(), async {
        let _ = stop_rx.await;
    }));

    let now = chrono::Utc::now().timestamp_millis();
    // One device with 10,000 points at 1 Hz (2.8 hours).
    fill(addr, "query", "d0", now - 10_000 * 1000, 10_000).await?;
    // Ten devices with one hour at 1 Hz.
    for d in 0..10 {
        fill(addr, "plot", &format!("sensor-{d}"), now - 3_600_000, 3_600).await?;
    }

    println!("history_bench: {RUNS} runs each, median / p90 / max, end to end over HTTP");
    let (_, body) = get(addr, "/api/rooms/query/history?limit=10000").await?;
    let v: Value = serde_json::from_slice(&body)?;
    let n = v["points"].as_array().map_or(0, Vec::len);
    anyhow::ensure!(n == 10_000, "expected 10000 points, got {n}");
    report(
        addr,
        "history 10,000 points, JSON",
        "/api/rooms/query/history?limit=10000",
    )
    .await?;
    report(
        addr,
        "history 10,000 points, CSV",
        "/api/rooms/query/history?limit=10000&format=csv",
    )
    .await?;
    report(
        addr,
        "history 10,000 points, step=1m (167 buckets)",
        "/api/rooms/query/history?step=1m",
    )
    .await?;
    report(
        addr,
        "plot.png 10 devices x 1 h at 1 Hz, 1000x500",
        "/api/rooms/plot/plot.png?metric=t&window=1h",
    )
    .await?;
    report(
        addr,
        "plot.svg 10 devices x 1 h at 1 Hz, 1000x500",
        "/api/rooms/plot/plot.svg?metric=t&window=1h",
    )
    .await?;

    let _ = stop_tx.send(());
    hub.await??;

    record_cost(false)?;
    record_cost(true)?;
    store_throughput()?;
    Ok(())
}

/// How many readings per second the SQLite writer commits: 500,000 readings recorded in
/// chunks of 20,000 (under the queue's capacity), each chunk flushed (committed) before
/// the next.
fn store_throughput() -> anyhow::Result<()> {
    use std::sync::Arc;
    use telehub::history::{History, HistoryConfig, Record};
    const N: usize = 500_000;
    const CHUNK: usize = 20_000;
    let dir = tempfile::tempdir()?;
    let history = History::open(HistoryConfig {
        data_dir: dir.path().to_path_buf(),
        ..HistoryConfig::default()
    })?;
    let room = history.room(&Arc::from("bench"));
    let devices: Vec<Arc<str>> = (0..10).map(|d| Arc::from(format!("dev-{d}"))).collect();
    let now = chrono::Utc::now().timestamp_millis();
    let t = Instant::now();
    for chunk in 0..N / CHUNK {
        for j in 0..CHUNK {
            let i = chunk * CHUNK + j;
            room.record(&Record {
                device: &devices[i % 10],
                metric: "t",
                unit: Some("C"),
                ts: now + i as i64,
                value: i as f64,
                seq: Some(i as u64),
            })?;
        }
        history.flush();
    }
    let rate = N as f64 / t.elapsed().as_secs_f64();
    history.close();
    println!(
        "SQLite store sustained commit rate             {rate:>9.0} readings/s ({} not stored)",
        history.store_dropped()
    );
    Ok(())
}

/// Times `RoomHistory::record` for 1,000,000 readings of 100 series (10 devices x 10
/// metrics), as a room's publish would call it.
fn record_cost(persist: bool) -> anyhow::Result<()> {
    use std::sync::Arc;
    use telehub::history::{History, HistoryConfig, Record};
    const N: usize = 1_000_000;
    let dir = tempfile::tempdir()?;
    let config = HistoryConfig {
        persist,
        data_dir: dir.path().to_path_buf(),
        ..HistoryConfig::default()
    };
    let history = History::open(config)?;
    let room = history.room(&Arc::from("bench"));
    let devices: Vec<Arc<str>> = (0..10).map(|d| Arc::from(format!("dev-{d}"))).collect();
    let metrics: Vec<String> = (0..10).map(|m| format!("metric-{m}")).collect();
    let now = chrono::Utc::now().timestamp_millis();
    // In chunks under the store queue's capacity, each committed before the next, so
    // every reading takes the path it takes in production (queued, not dropped); only
    // the record() calls are timed.
    let mut elapsed = Duration::ZERO;
    for chunk in 0..N / 20_000 {
        let t = Instant::now();
        for j in 0..20_000 {
            let i = chunk * 20_000 + j;
            room.record(&Record {
                device: &devices[i % 10],
                metric: &metrics[(i / 10) % 10],
                unit: Some("C"),
                ts: now + i as i64,
                value: i as f64,
                seq: Some(i as u64),
            })?;
        }
        elapsed += t.elapsed();
        history.flush();
    }
    let flush = Instant::now();
    history.close();
    println!(
        "record() per reading, {:<28} {:>7.0} ns   ({} readings; {} not stored; final commit {:.0} ms)",
        if persist { "SQLite store on" } else { "in memory" },
        elapsed.as_nanos() as f64 / N as f64,
        N,
        history.store_dropped(),
        flush.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}

/// Sends `n` readings of metric `t` from `device`, 1 s apart from `start`, in batches.
async fn fill(
    addr: SocketAddr,
    room: &str,
    device: &str,
    start: i64,
    n: i64,
) -> anyhow::Result<()> {
    let url = format!("ws://{addr}/ws/{room}/{device}?role=device&acks=true");
    let mut ws = Client::connect(&url).await?;
    let mut i = 0;
    while i < n {
        let end = (i + 256).min(n);
        let items: Vec<Value> = (i..end)
            .map(|k| json!({"metric":"t","unit":"C","value":20.0 + ((k as f64) / 300.0).sin(),"ts":start + k * 1000,"seq":k}))
            .collect();
        ws.try_send_text(&json!({"type":"readings","items":items}).to_string())
            .await?;
        loop {
            match ws.poll_json(Duration::from_secs(10)).await {
                Polled::Json(v) if v["type"] == "accepted" => break,
                Polled::Json(v) => anyhow::ensure!(v["type"] != "error", "hub refused: {v}"),
                Polled::Quiet => anyhow::bail!("no `accepted` within 10 s"),
                Polled::Closed => anyhow::bail!("the hub closed the connection"),
            }
        }
        i = end;
    }
    ws.close().await;
    Ok(())
}

async fn report(addr: SocketAddr, what: &str, path: &str) -> anyhow::Result<()> {
    let mut times = Vec::with_capacity(RUNS);
    let mut bytes = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        let (status, body) = get(addr, path).await?;
        times.push(t.elapsed());
        anyhow::ensure!(status == 200, "{path}: {status}");
        bytes = body.len();
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what:<48} {:>7.2} ms {:>7.2} ms {:>7.2} ms   ({bytes} bytes)",
        ms(times[RUNS / 2]),
        ms(times[RUNS * 9 / 10]),
        ms(times[RUNS - 1])
    );
    Ok(())
}

async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let r = telehub_testkit::http::try_get(addr, path, "").await?;
    Ok((r.status, r.body))
}
