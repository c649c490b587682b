//! Benchmark: readings per second, and the hub's CPU per reading, for the ways in that
//! take a request per batch (HTTP ingest, InfluxDB line protocol) beside WebSocket
//! ingest.
//!
//! ```sh
//! cargo build --release --bin telehub --example ingest_bench
//! target/release/examples/ingest_bench --path http --batch 1
//! target/release/examples/ingest_bench --path http --batch 100
//! target/release/examples/ingest_bench --path influx --batch 5000
//! target/release/examples/ingest_bench --path ws --batch 100
//! ```
//!
//! It starts its own hub process (the `telehub` beside this example in
//! `target/<profile>/`, `$TELEHUB_BIN`, or `--telehub PATH`) with the rate limits raised
//! out of the way, then runs `--clients` closed loops, each its own device on one
//! keep-alive connection: send a batch of `--batch` readings, wait for the answer
//! (`200`/`204`, or the WebSocket `accepted`), send the next. Readings are spread over
//! ten metrics per device. The hub's CPU time over the measured window comes from
//! /proc, so "µs per reading" is the hub's own cost, the client's excluded.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use telehub_testkit::hub::Hub;
use telehub_testkit::ws::Client;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum, Debug)]
enum Path {
    /// `POST /api/rooms/{room}/devices/{device}/readings`, JSON array.
    Http,
    /// `POST /api/v2/write?bucket=ROOM&precision=ms`, one field per line.
    Influx,
    /// A WebSocket device (`acks=true`), `readings` batches.
    Ws,
}

#[derive(Parser, Debug)]
#[command(about = "HTTP ingest and line protocol vs WebSocket ingest benchmark for telehub")]
struct Args {
    #[arg(long, value_enum, default_value = "http")]
    path: Path,
    /// Readings per request (lines, for influx).
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Concurrent devices, each on its own keep-alive connection.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Measured window, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up before the window, seconds.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// The hub binary [default: `telehub` beside this example, or $TELEHUB_BIN].
    #[arg(long)]
    telehub: Option<PathBuf>,
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

/// One keep-alive HTTP/1.1 connection: a request, then its whole answer.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn request(&mut self, head: &str, body: &[u8]) -> anyhow::Result<u16> {
        let mut req = format!("{head}Content-Length: {}\r\n\r\n", body.len()).into_bytes();
        req.extend_from_slice(body);
        self.stream.write_all(&req).await?;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let status: u16 = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .context("status line")?;
                let len: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                while self.buf.len() < end + 4 + len {
                    self.fill().await?;
                }
                self.buf.drain(..end + 4 + len);
                return Ok(status);
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("the hub closed the connection");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// One client's loop until `stop`; counts readings answered as taken into `done`.
async fn client(
    path: Path,
    hub: &Hub,
    device: String,
    batch: usize,
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let addr = hub.addr();
    let t0 = chrono::Utc::now().timestamp_millis();
    let mut n: u64 = 0;
    let next = |n: &mut u64| {
        *n += 1;
        (format!("m{}", *n % 10), *n as f64, t0 + *n as i64, *n)
    };
    match path {
        Path::Ws => {
            let url = hub.ws_url("bench", &device, "role=device&acks=true");
            let mut c = Client::connect(&url).await.context("connect")?;
            c.recv_type("welcome").await;
            while !stop.load(Relaxed) {
                let items: Vec<serde_json::Value> = (0..batch)
                    .map(|_| {
                        let (m, v, ts, seq) = next(&mut n);
                        serde_json::json!({"metric": m, "value": v, "ts": ts, "seq": seq})
                    })
                    .collect();
                c.send_json(serde_json::json!({"type":"readings","items":items}))
                    .await;
                c.recv_type("accepted").await;
                done.fetch_add(batch as u64, Relaxed);
            }
        }
        Path::Http | Path::Influx => {
            let mut conn = Conn {
                stream: TcpStream::connect(addr).await?,
                buf: Vec::new(),
            };
            let head = match path {
                Path::Http => format!(
                    "POST /api/rooms/bench/devices/{device}/readings HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n"
                ),
                _ => format!(
                    "POST /api/v2/write?bucket=bench&precision=ms HTTP/1.1\r\nHost: {addr}\r\n"
                ),
            };
            let mut body = String::new();
            while !stop.load(Relaxed) {
                body.clear();
                if path == Path::Http {
                    body.push('[');
                    for i in 0..batch {
                        let (m, v, ts, seq) = next(&mut n);
                        if i > 0 {
                            body.push(',');
                        }
                        body.push_str(&format!(
                            r#"{{"metric":"{m}","value":{v},"ts":{ts},"seq":{seq}}}"#
                        ));
                    }
                    body.push(']');
                } else {
                    for _ in 0..batch {
                        let (m, v, ts, _) = next(&mut n);
                        body.push_str(&format!("bench,host={device} {m}={v} {ts}\n"));
                    }
                }
                let status = conn.request(&head, body.as_bytes()).await?;
                if !matches!(status, 200 | 204) {
                    bail!("{path:?}: answered {status}");
                }
                done.fetch_add(batch as u64, Relaxed);
            }
        }
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin = args
        .telehub
        .clone()
        .unwrap_or_else(telehub_testkit::hub::binary);
    let hub = Hub::builder(bin)
        .config(
            "[limits]\nrate_per_sec = 100000000.0\nrate_burst = 100000000.0\nmax_batch = 10000\n\
             max_frame_bytes = 4194304\n\
             [influx]\nrate_per_sec = 100000000.0\nrate_burst = 100000000.0\n",
        )
        .start();
    let pid = hub.pid().context("hub pid")?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let hub = Arc::new(hub);
        let mut tasks = Vec::new();
        for i in 0..args.clients {
            let (hub, stop, done) = (hub.clone(), stop.clone(), done.clone());
            let (path, batch) = (args.path, args.batch);
            tasks.push(tokio::spawn(async move {
                client(path, &hub, format!("d{i}"), batch, stop, done).await
            }));
        }
        tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
        let (n0, cpu0, t0) = (done.load(Relaxed), cpu_micros(pid), Instant::now());
        tokio::time::sleep(Duration::from_secs_f64(args.duration)).await;
        let (n1, cpu1, secs) = (
            done.load(Relaxed),
            cpu_micros(pid),
            t0.elapsed().as_secs_f64(),
        );
        stop.store(true, Relaxed);
        for t in tasks {
            t.await??;
        }
        let readings = n1 - n0;
        println!(
            "path={:?} batch={} clients={} readings/s={:.0} requests/s={:.0} hub_cpu_us/reading={:.2} hub_cpu={:.0}%",
            args.path,
            args.batch,
            args.clients,
            readings as f64 / secs,
            readings as f64 / secs / args.batch as f64,
            (cpu1 - cpu0) as f64 / readings.max(1) as f64,
            (cpu1 - cpu0) as f64 / 1e6 / secs * 100.0,
        );
        anyhow::Ok(())
    })
}
