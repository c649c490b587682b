//! Benchmark of durable acknowledgements: the time from sending a reading to receiving
//! the `accepted` that lists it, at a given rate, with `history.ack = "durable"` (after
//! the SQLite commit) or `"memory"`, and the process CPU per reading.
//!
//! `cargo run --release --example ack_bench -- durable 1000` (mode, readings per second
//! over all devices). The hub runs in this process on 127.0.0.1:0 with durable history in
//! a temporary directory and the default `flush_interval_ms` (100); 10 devices each send
//! a `readings` batch every 10 ms. The CPU figure is the whole process's (hub and load
//! generator together): compare the two modes, not the absolute value. Last, the file's
//! size after a clean stop and `VACUUM`, per raw reading (with its `ts` index).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const DEVICES: u64 = 10;
const TICK: Duration = Duration::from_millis(10);
const WARMUP: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(5);

fn cpu_seconds() -> f64 {
    // utime + stime of this process, in clock ticks (100 per second on Linux).
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("durable", |s| s.as_str()).to_string();
    let rate: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let per_batch = (rate * TICK.as_millis() as u64 / 1000 / DEVICES).max(1);
    let data = tempfile::tempdir()?;
    let mut settings = telehub::Settings::default();
    settings.history.persist = true;
    settings.history.data_dir = data.path().to_path_buf();
    settings.history.ack = match mode.as_str() {
        "memory" => telehub::history::AckMode::Memory,
        _ => telehub::history::AckMode::Durable,
    };
    settings.history.max_series = 100_000;
    settings.limits.rate_per_sec = 1e9;
    settings.limits.rate_burst = 1e9;
    settings.server.log = "warn".into();
    telehub::telemetry::init("warn");
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let hub = tokio::spawn(telehub::run(listener, settings, async {
        let _ = stop_rx.await;
    }));

    let start = Instant::now() + Duration::from_millis(200);
    let mut tasks = Vec::new();
    for d in 0..DEVICES {
        let url = format!("ws://{addr}/ws/bench/dev-{d}?role=device&acks=true");
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        let (mut tx, mut rx) = ws.split();
        tasks.push(tokio::spawn(async move {
            let mut sent: HashMap<u64, Instant> = HashMap::new();
            let mut latencies: Vec<Duration> = Vec::new();
            let mut tick = tokio::time::interval_at(start.into(), TICK);
            let end = start + WARMUP + MEASURE;
            let mut seq = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick(), if Instant::now() < end => {
                        let items: Vec<Value> = (0..per_batch)
                            .map(|i| { seq += 1; json!({"metric": format!("m{}", i % 4), "value": seq, "seq": seq}) })
                            .collect();
                        sent.insert(seq, Instant::now());
                        let text = json!({"type":"readings","items":items}).to_string();
                        if tx.send(Message::text(text)).await.is_err() { break; }
                    }
                    msg = rx.next() => {
                        let Some(Ok(Message::Text(t))) = msg else { if msg.is_none() { break } else { continue } };
                        let v: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                        if v["type"] == "accepted" {
                            let last = v["seq"].as_u64().unwrap_or(0);
                            if let Some(at) = sent.remove(&last) {
                                if at >= start + WARMUP {
                                    latencies.push(at.elapsed());
                                }
                            }
                            if Instant::now() >= end && sent.is_empty() { break; }
                        } else if v["type"] == "error" {
                            eprintln!("error: {v}");
                        }
                    }
                    _ = tokio::time::sleep(Duration::from_secs(3)), if Instant::now() >= end => break,
                }
            }
            latencies
        }));
    }
    tokio::time::sleep_until((start + WARMUP).into()).await;
    let cpu0 = cpu_seconds();
    tokio::time::sleep(MEASURE).await;
    let cpu = cpu_seconds() - cpu0;
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await?);
    }
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let readings = rate as f64 * MEASURE.as_secs_f64();
    println!(
        "ack={mode} rate={rate}/s messages={} p50={:.1}ms p99={:.1}ms max={:.1}ms cpu_per_reading={:.1}us",
        all.len(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        all.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        cpu / readings * 1e6
    );
    let _ = stop_tx.send(());
    let _ = hub.await;
    // Disk per raw reading: the file after a clean stop (checkpointed), over its rows.
    let db = data.path().join("telehub.db");
    let conn = rusqlite::Connection::open(&db)?;
    conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE); VACUUM;")?;
    let rows: i64 = conn.query_row("SELECT count(*) FROM readings", [], |r| r.get(0))?;
    let bytes = std::fs::metadata(&db)?.len();
    println!(
        "disk: {rows} rows, {bytes} bytes after VACUUM, {:.1} bytes per reading",
        bytes as f64 / rows.max(1) as f64
    );
    Ok(())
}
