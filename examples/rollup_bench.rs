//! Benchmark of the rollup tiers (`[[history.rollups]]`, 1m for 90 d and 1h for 730 d):
//!
//! - disk bytes per rollup bucket, as SQLite's `dbstat` counts the pages of each tier's
//!   table (and, beside it, what the same rows would take in a rowid table with a
//!   separate unique index, to show what `WITHOUT ROWID` saves);
//! - the time to answer `GET /api/rooms/{room}/history` over `-30d` at `step=1m` and
//!   over `-1y` at `step=1h` for a room of 100 series, end to end over HTTP against a
//!   real hub, at the default `limit` (10,000 buckets) and at `limit=100000`.
//!
//! The tiers are filled the way the hub's writer leaves them (bucket after bucket, every
//! series in each) directly with SQLite, since sending 30 days of per-second readings
//! through the hub would take hours; the hub then opens that file as its own.
//!
//! Run it with `cargo run --release --example rollup_bench` (figures go in BENCHMARKS.md).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection};
use serde_json::Value;
use tokio::net::TcpListener;

const RUNS: usize = 20;
const SERIES: i64 = 100;
const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let mut settings = telehub::Settings::default();
    settings.history.data_dir = data.path().to_path_buf();
    settings.server.log = "warn".into();
    telehub::telemetry::init("warn");

    // A first run creates the file and its tables; then the tiers are filled.
    run_hub(settings.clone(), |_| async { Ok(()) }).await?;
    let now = chrono::Utc::now().timestamp_millis();
    let db = data.path().join("telehub.db");
    let t = Instant::now();
    fill(&db, now)?;
    println!("rollup_bench: filled in {:.1} s", t.elapsed().as_secs_f64());
    bytes_per_bucket(&db)?;

    run_hub(settings, |addr| async move {
        println!(
            "queries over {SERIES} series, {RUNS} runs each, median / p90 / max, end to end over HTTP"
        );
        for (what, path) in [
            ("-30d step=1m, limit 10,000 (default)", "from=-30d&step=1m"),
            ("-30d step=1m, limit 100,000", "from=-30d&step=1m&limit=100000"),
            ("-1y step=1h, limit 10,000 (default)", "from=-1y&step=1h"),
            ("-1y step=1h, limit 100,000", "from=-1y&step=1h&limit=100000"),
            ("-30d no step (1h tier, 720 a series), default limit", "from=-30d"),
            ("-30d no step (1h tier), limit 100,000", "from=-30d&limit=100000"),
            ("-1y no step (8h from 1h), default limit", "from=-1y"),
            ("-1y no step (8h from 1h), limit 100,000", "from=-1y&limit=100000"),
            ("-1y step=1h, one series", "from=-1y&step=1h&device=d7&metric=t"),
            ("-30d step=1m, one series", "from=-30d&step=1m&device=d7&metric=t&limit=100000"),
        ] {
            report(addr, what, &format!("/api/rooms/bench/history?{path}")).await?;
        }
        Ok(())
    })
    .await
}

/// Runs a hub on `settings` for as long as `f` takes.
async fn run_hub<F, Fut>(settings: telehub::Settings, f: F) -> anyhow::Result<()>
where
    F: FnOnce(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let hub = tokio::spawn(telehub::run(listener, settings, async {
        let _ = stop_rx.await;
    }));
    let result = f(addr).await;
    let _ = stop_tx.send(());
    hub.await??;
    result
}

/// Room `bench`, 100 series (10 devices x 10 metrics): 30 days of 1m buckets (the
/// tier keeps 90 d; 30 are what the query reads) and 365 days of 1h buckets.
fn fill(db: &std::path::Path, now: i64) -> anyhow::Result<()> {
    let mut conn = Connection::open(db)?;
    let tx = conn.transaction()?;
    tx.execute(
        "INSERT OR REPLACE INTO rooms (room, epoch, last_offset) VALUES ('bench', 'e0', 0)",
        [],
    )?;
    for s in 0..SERIES {
        tx.execute(
            "INSERT INTO series (id, room, device, metric) VALUES (?1, 'bench', ?2, ?3)",
            params![
                s + 1,
                format!("d{}", s / 10),
                ["t", "h", "p", "co2", "lux", "v", "a", "w", "rssi", "bat"][(s % 10) as usize]
            ],
        )?;
    }
    for (table, step, span) in [
        ("rollup_60000", MINUTE, 30 * DAY),
        ("rollup_3600000", HOUR, 365 * DAY),
    ] {
        let mut insert = tx.prepare(&format!(
            "INSERT INTO {table} (series, bucket, count, sum, min, max, last, last_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
        ))?;
        let (first, last) = ((now - span) / step, now / step);
        for b in first..=last {
            for s in 1..=SERIES {
                // Readings at 1 Hz: 60 (or 3,600) per bucket; values like a sensor's.
                let count = step / 1_000;
                let mean = 20.0 + ((b * 7 + s * 13) % 1_000) as f64 / 100.0;
                insert.execute(params![
                    s,
                    b,
                    count,
                    mean * count as f64,
                    mean - 0.37,
                    mean + 0.41,
                    mean + 0.03,
                    step - 1_000
                ])?;
            }
        }
    }
    tx.commit()?;
    Ok(())
}

/// Bytes per bucket of each tier's table (all its pages over its rows), and the same
/// rows in a rowid table with a unique index beside it.
fn bytes_per_bucket(db: &std::path::Path) -> anyhow::Result<()> {
    let conn = Connection::open(db)?;
    conn.execute_batch(
        "CREATE TEMP TABLE rowid_cmp (series INTEGER NOT NULL, bucket INTEGER NOT NULL,
             count INTEGER NOT NULL, sum REAL NOT NULL, min REAL NOT NULL, max REAL NOT NULL,
             last REAL NOT NULL, last_at INTEGER NOT NULL, UNIQUE (series, bucket));
         INSERT INTO rowid_cmp SELECT * FROM rollup_60000 ORDER BY bucket, series;",
    )?;
    let pages = |schema: &str, names: &[&str]| -> rusqlite::Result<i64> {
        let mut total = 0;
        for n in names {
            total += conn.query_row(
                &format!("SELECT coalesce(sum(pgsize), 0) FROM dbstat('{schema}') WHERE name = ?1"),
                [n],
                |r| r.get::<_, i64>(0),
            )?;
        }
        Ok(total)
    };
    for (table, schema, names) in [
        (
            "rollup_60000 (1m, WITHOUT ROWID)",
            "main",
            vec!["rollup_60000"],
        ),
        (
            "rollup_3600000 (1h, WITHOUT ROWID)",
            "main",
            vec!["rollup_3600000"],
        ),
        (
            "same 1m rows, rowid table + unique index",
            "temp",
            vec!["rowid_cmp", "sqlite_autoindex_rowid_cmp_1"],
        ),
    ] {
        let src = names[0];
        let rows: i64 =
            conn.query_row(&format!("SELECT count(*) FROM {schema}.{src}"), [], |r| {
                r.get(0)
            })?;
        let bytes = pages(schema, &names)?;
        println!(
            "{table:<44} {rows:>9} buckets {bytes:>11} bytes  {:>6.1} bytes/bucket",
            bytes as f64 / rows as f64
        );
    }
    Ok(())
}

async fn report(addr: SocketAddr, what: &str, path: &str) -> anyhow::Result<()> {
    let mut times = Vec::with_capacity(RUNS);
    let (mut bytes, mut buckets, mut resolution) = (0, 0, String::new());
    for _ in 0..RUNS {
        let t = Instant::now();
        let r = telehub_testkit::http::try_get(addr, path, "").await?;
        times.push(t.elapsed());
        anyhow::ensure!(
            r.status == 200,
            "{path}: {} {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        bytes = r.body.len();
        let v: Value = serde_json::from_slice(&r.body)?;
        buckets = v["points"].as_array().map_or(0, Vec::len);
        resolution = format!("{} step {}", v["resolution"], v["step"]);
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what:<46} {:>7.2} ms {:>7.2} ms {:>7.2} ms  ({buckets} buckets, {resolution}, {bytes} bytes)",
        ms(times[RUNS / 2]),
        ms(times[RUNS * 9 / 10]),
        ms(times[RUNS - 1])
    );
    Ok(())
}
