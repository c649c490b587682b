//! Rollup tiers (`[[history.rollups]]`, 1m and 1h by default), against a real hub process
//! and its SQLite file: a device flushing 400 days of readings (newest first, then the
//! old ones late) is answered over `-1y` at 1h and `-30d` at 1m from the tiers, with the
//! min, max, mean and count of exactly the readings sent, before and after a restart, and
//! after the raw rows past `retention_ms` are gone.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::helpers::{http_get, hub_process, Client, WAIT};

const MINUTE: i64 = 60_000;
const HOUR: i64 = 3_600_000;
const DAY: i64 = 86_400_000;

/// (metric, ts, value) of every reading the test device sends, in sending order.
fn readings(now: i64) -> Vec<(&'static str, i64, f64)> {
    let value = |k: i64| ((k * 37) % 101) as f64 * 0.5 - 20.0;
    let mut out = Vec::new();
    // The last 30 days: three readings within one minute every 20 minutes.
    let start = (now - 30 * DAY).div_euclid(MINUTE) * MINUTE;
    for k in 0..(30 * DAY / (20 * MINUTE) - 1) {
        let t0 = start + k * 20 * MINUTE + 10_000;
        for (j, m) in [(0, "t"), (1, "t"), (2, "t"), (0, "h")] {
            out.push((
                m,
                t0 + j * 1_000,
                value(k * 3 + j) + if m == "h" { 100.0 } else { 0.0 },
            ));
        }
    }
    // Then, late, 400 days of one reading every 2 hours, newest first.
    for k in (0..400 * 12).rev() {
        let ts = now - 400 * DAY + k * 2 * HOUR + (k * 7_919) % HOUR;
        out.push(("t", ts, value(k)));
        out.push(("h", ts, value(k) + 100.0));
    }
    out
}

/// bucket start -> (count, min, max, sum) of the metric `t` readings at `step`.
fn expected(sent: &[(&str, i64, f64)], step: i64) -> BTreeMap<i64, (u64, f64, f64, f64)> {
    let mut out: BTreeMap<i64, (u64, f64, f64, f64)> = BTreeMap::new();
    for (m, ts, v) in sent {
        if *m != "t" {
            continue;
        }
        let e = out
            .entry(ts.div_euclid(step) * step)
            .or_insert((0, f64::MAX, f64::MIN, 0.0));
        e.0 += 1;
        e.1 = e.1.min(*v);
        e.2 = e.2.max(*v);
        e.3 += v;
    }
    out
}

/// The wall clock now, in ms: the windows of answers just received began no later.
fn ms_now() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Checks an answer of `t` buckets against what was sent: every bucket it has is
/// exactly the sent readings' (whole buckets), and it has every bucket from its first on.
fn check(v: &Value, want: &BTreeMap<i64, (u64, f64, f64, f64)>, window_start: i64, step: i64) {
    let got = v["points"].as_array().expect("points");
    assert!(!got.is_empty(), "{v}");
    let first = got[0]["ts"].as_i64().expect("ts");
    // The hub's window began at or before `window_start` (taken after the answer), so
    // its first bucket is no later than the first one sent from there on.
    let first_sent = want
        .range(window_start..)
        .next()
        .map_or(i64::MAX, |(k, _)| *k);
    assert!(
        first >= window_start - 2 * step && first <= first_sent,
        "the answer starts at the window: {first} vs {window_start} (first sent {first_sent})"
    );
    let keys: Vec<i64> = got.iter().map(|b| b["ts"].as_i64().unwrap_or(-1)).collect();
    let want_keys: Vec<i64> = want.range(first..).map(|(k, _)| *k).collect();
    assert_eq!(keys, want_keys, "one bucket per step that holds readings");
    for b in got {
        let ts = b["ts"].as_i64().unwrap_or(-1);
        let (count, min, max, sum) = want[&ts];
        assert_eq!(b["metric"], "t");
        assert_eq!(b["count"].as_u64(), Some(count), "count at {ts}: {b}");
        assert_eq!(b["min"].as_f64(), Some(min), "min at {ts}: {b}");
        assert_eq!(b["max"].as_f64(), Some(max), "max at {ts}: {b}");
        let mean = b["mean"].as_f64().unwrap_or(f64::NAN);
        assert!(
            (mean - sum / count as f64).abs() < 1e-9,
            "mean at {ts}: {b}"
        );
    }
}

fn raw_rows_before(data: &Path, ts: i64) -> i64 {
    let conn = rusqlite::Connection::open(data.join("telehub.db")).expect("db");
    conn.query_row("SELECT count(*) FROM readings WHERE ts < ?1", [ts], |r| {
        r.get(0)
    })
    .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_hundred_days_sent_late_are_answered_from_the_1h_and_1m_tiers_before_and_after_a_restart(
) {
    // Arrange: a hub with the default tiers (1m for 90 d, 1h for 730 d), raw rows 7 d,
    // and a rate limit the device's flush stays under.
    let data = tempfile::tempdir().expect("data dir");
    let mut hub = hub_process()
        .data_dir(data.path())
        .env("TELEHUB_LIMITS_RATE_PER_SEC", "100000")
        .env("TELEHUB_LIMITS_RATE_BURST", "100000")
        .start();
    let mut dev = Client::connect(&hub.ws_url("farm", "probe", "role=device&acks=true"))
        .await
        .expect("device");
    dev.recv_type("welcome").await;
    let now = chrono::Utc::now().timestamp_millis();
    let sent = readings(now);

    // Act: send them all in batches of 256, each acknowledged (durably) before the next.
    let mut seq = 0u64;
    for batch in sent.chunks(256) {
        let first = seq + 1;
        let items: Vec<Value> = batch
            .iter()
            .map(|(m, ts, v)| {
                seq += 1;
                json!({"metric": m, "ts": ts, "value": v, "seq": seq})
            })
            .collect();
        dev.send_json(json!({"type":"readings","items":items}))
            .await;
        let a = dev.recv_type("accepted").await;
        assert_eq!(a["seqs"], json!([[first, seq]]), "{a}");
    }

    for round in ["running", "after a restart"] {
        // Assert: -1y at 1h and -30d at 1m come from the tiers, bucket for bucket.
        let (status, body) = http_get(
            hub.addr(),
            "/api/rooms/farm/history?from=-1y&metric=t&step=1h&limit=100000",
            "",
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["resolution"], "1h", "{round}");
        assert_eq!(v["step"], HOUR, "{round}");
        check(&v, &expected(&sent, HOUR), ms_now() - 365 * DAY, HOUR);

        let (status, body) = http_get(
            hub.addr(),
            "/api/rooms/farm/history?from=-30d&metric=t&step=1m&limit=100000",
            "",
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["resolution"], "1m", "{round}");
        check(&v, &expected(&sent, MINUTE), ms_now() - 30 * DAY, MINUTE);

        // Readings older than a year, and than the raw rows' 7 days, still count.
        let (_, body) = http_get(
            hub.addr(),
            "/api/rooms/farm/history?from=-401d&step=1d&limit=100000",
            "",
        )
        .await;
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["resolution"], "1h", "{v}");
        let total: u64 = v["points"]
            .as_array()
            .expect("points")
            .iter()
            .map(|b| b["count"].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(
            total,
            sent.len() as u64,
            "{round}: every reading, both series"
        );

        // No step: about 1,000 buckets per series, from the coarsest tier that gives at
        // least half that many (a year: 8,760 hours in 8h buckets; 30 days: 720 hours).
        let (_, body) = http_get(hub.addr(), "/api/rooms/farm/history?from=-1y&metric=t", "").await;
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            (v["resolution"].clone(), v["step"].clone()),
            (json!("1h"), json!(8 * HOUR))
        );
        let (_, body) =
            http_get(hub.addr(), "/api/rooms/farm/history?from=-30d&metric=t", "").await;
        let v: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(
            (v["resolution"].clone(), v["step"].clone()),
            (json!("1h"), json!(HOUR))
        );
        check(&v, &expected(&sent, HOUR), ms_now() - 30 * DAY, HOUR);

        // A plot of the 30 days is drawn from the 1h tier (memory holds an hour): 720
        // bucket means, not the last hour's few readings.
        let plot = telehub_testkit::http::get(
            hub.addr(),
            "/api/rooms/farm/plot.svg?metric=t&window=30d",
            "",
        )
        .await;
        assert_eq!(plot.status, 200, "{round}: {}", plot.text());
        let svg = plot.text();
        let points = svg
            .split("<polyline")
            .skip(1)
            .filter(|p| !p.contains("stroke-width=\"1\""))
            .map(|p| {
                p.split("points=\"").nth(1).map_or(0, |pts| {
                    pts.split('"')
                        .next()
                        .unwrap_or("")
                        .split_whitespace()
                        .count()
                })
            })
            .max()
            .unwrap_or(0);
        assert!(
            points >= 500,
            "{round}: the 30-day line has {points} points"
        );

        if round == "running" {
            assert_eq!(hub.stop().await.code(), Some(0), "{}", hub.log());
            hub.restart();
            // The restarted writer deletes raw rows past the 7 days at once.
            let deadline = Instant::now() + WAIT;
            while raw_rows_before(data.path(), now - 8 * DAY) > 0 {
                assert!(Instant::now() < deadline, "raw rows past retention stay");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    assert_eq!(hub.stop().await.code(), Some(0), "{}", hub.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboards_30d_window_charts_min_max_bands_and_means_from_the_1h_tier() {
    let _one = crate::browser::BROWSER_TESTS.lock().await;
    // Arrange: durable history; two thermometers flush 30 days of hourly readings.
    let data = tempfile::tempdir().expect("data dir");
    let dir = data.path().to_path_buf();
    let app = crate::helpers::spawn_app_with(move |s| {
        s.history.persist = true;
        s.history.data_dir = dir;
        s.limits.rate_per_sec = 100_000.0;
        s.limits.rate_burst = 100_000.0;
    })
    .await;
    let now = chrono::Utc::now().timestamp_millis();
    for (d, id) in ["t1", "t2"].into_iter().enumerate() {
        let mut dev = Client::connect(&format!(
            "ws://{}/ws/barn/{id}?role=device&acks=true",
            app.addr
        ))
        .await
        .expect("device");
        dev.recv_type("welcome").await;
        let hours: Vec<i64> = (0..30 * 24).collect();
        for (n, chunk) in hours.chunks(240).enumerate() {
            let items: Vec<Value> = chunk
                .iter()
                .map(|h| {
                    let v = 10.0 + d as f64 * 5.0 + ((*h as f64) / 24.0).sin() * 3.0;
                    json!({"metric":"temperature","unit":"°C","ts": now - (30 * 24 - h) * HOUR, "value": v, "seq": *h + 1})
                })
                .collect();
            dev.send_json(json!({"type":"readings","items":items}))
                .await;
            let a = dev.recv_type("accepted").await;
            assert_eq!(a["count"], chunk.len(), "batch {n}: {a}");
        }
    }
    let browser = crate::cdp::Browser::launch().await;
    let page = browser.new_page(1280, 800).await;
    page.goto(&format!("http://{}/#/rooms/barn", app.addr))
        .await;
    page.wait_for(
        "document.querySelector('input[name=\"window\"][value=\"30d\"]')",
        crate::browser::WAIT,
        "the window selector with 30d",
    )
    .await;

    // Act: choose the 30-day window.
    page.eval("(() => { const i = document.querySelector('input[name=\"window\"][value=\"30d\"]'); i.click(); return true; })()")
        .await;

    // Assert: the chart is drawn from rollup buckets (the 1h tier: 720 buckets a line),
    // and no request asked for raw points of the window.
    let alt = page
        .wait_for(
            "(() => { const i = document.querySelector('img.plot'); return i && !i.hidden && i.src.startsWith('data:image/png') && i.naturalWidth > 0 ? i.alt : null; })()",
            crate::browser::WAIT,
            "the 30d band chart",
        )
        .await;
    assert!(alt.as_str().unwrap_or("").contains("(1h rollups)"), "{alt}");
    let asked = page
        .eval("performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('/history?') && n.includes('limit=100000') && !n.includes('to='))")
        .await;
    assert!(!asked.as_array().expect("urls").is_empty(), "{asked}");
    let url = asked[0].as_str().unwrap_or("");
    let path = &url[url.find("/api/").unwrap_or(0)..];
    let (status, body) = http_get(app.addr, path, "").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["resolution"], "1h", "{v}");
    let points = v["points"].as_array().expect("points");
    assert!(points
        .iter()
        .all(|b| b["min"].is_number() && b["max"].is_number() && b["mean"].is_number()));
    let total: u64 = points
        .iter()
        .map(|b| b["count"].as_u64().unwrap_or(0))
        .sum();
    assert!(
        total >= 2 * (30 * 24 - 1),
        "every hourly reading of both devices: {total}"
    );
    crate::browser::print_screenshot("30d bands", &page.screenshot_to_dir("rollup-30d").await);
}

/// The sum of `count` over the buckets of `room`'s answer to `query`.
async fn counted(hub: &crate::helpers::Hub, room: &str, query: &str) -> (Value, u64) {
    let (status, body) = http_get(
        hub.addr(),
        &format!("/api/rooms/{room}/history?{query}"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    let total = v["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|b| b["count"].as_u64().unwrap_or(0))
        .sum();
    (v, total)
}

fn raw_rows(data: &Path, room: &str) -> i64 {
    let conn = rusqlite::Connection::open(data.join("telehub.db")).expect("db");
    conn.query_row(
        "SELECT count(*) FROM readings WHERE room = ?1",
        [room],
        |r| r.get(0),
    )
    .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_after_a_restart_of_readings_older_than_memory_is_stored_and_counted_once() {
    // Arrange: memory holds one minute; a device flushes 40 readings of two hours ago
    // (acknowledged, so on disk), then the hub restarts: memory holds none of them.
    let data = tempfile::tempdir().expect("data dir");
    let mut hub = hub_process()
        .data_dir(data.path())
        .env("TELEHUB_HISTORY_MEMORY_MS", "60000")
        .start();
    let now = chrono::Utc::now().timestamp_millis();
    let items: Vec<Value> = (0..40)
        .map(|i| json!({"metric":"t","value":i,"ts":now - 2 * HOUR + i * 1_000,"seq":i + 1}))
        .collect();
    let mut dev = Client::connect(&hub.ws_url("late", "dev", "role=device&acks=true"))
        .await
        .expect("device");
    dev.recv_type("welcome").await;
    dev.send_json(json!({"type":"readings","items":items.clone()}))
        .await;
    let a = dev.recv_type("accepted").await;
    assert_eq!(a["seqs"], json!([[1, 40]]), "{a}");
    drop(dev);
    assert_eq!(hub.stop().await.code(), Some(0), "{}", hub.log());
    hub.restart();

    // Act: the device, whose `accepted` it takes to be lost, sends them all again.
    let mut dev = Client::connect(&hub.ws_url("late", "dev", "role=device&acks=true"))
        .await
        .expect("device again");
    dev.recv_type("welcome").await;
    dev.send_json(json!({"type":"readings","items":items}))
        .await;
    let a = dev.recv_type("accepted").await;

    // Assert: acknowledged (the originals are kept), but stored and counted once.
    assert_eq!(a["seqs"], json!([[1, 40]]), "{a}");
    assert_eq!(raw_rows(data.path(), "late"), 40, "raw rows");
    let (v, total) = counted(&hub, "late", "from=-3h&metric=t&step=1h").await;
    assert_eq!(v["resolution"], "1h", "{v}");
    assert_eq!(total, 40, "the 1h tier: {v}");
    let (_, total) = counted(&hub, "late", "from=-3h&metric=t&step=1m").await;
    assert_eq!(total, 40, "the 1m tier");
    assert_eq!(hub.stop().await.code(), Some(0), "{}", hub.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn importing_again_rows_whose_raw_copies_retention_deleted_does_not_count_them_twice() {
    // Arrange: an archive of 3 readings from three days ago, imported into a new file;
    // a hub keeping raw rows one day starts on it and deletes their raw rows.
    let data = tempfile::tempdir().expect("data dir");
    let now = chrono::Utc::now().timestamp_millis();
    let archive = format!(
        "room,device,metric,unit,ts,value,seq\nold,dev,t,,{},1.5,1\nold,dev,t,,{},2.5,2\nold,dev,t,,{},3.5,3\n",
        now - 3 * DAY,
        now - 3 * DAY + 1_000,
        now - 3 * DAY + 2_000
    );
    let import = || {
        crate::durability::telehub_cli(
            &["import", "--format", "csv"],
            data.path(),
            archive.as_bytes(),
        )
    };
    let (ok, _, err) = import();
    assert!(ok && err.contains("imported 3"), "{err}");
    let retention = |hub: telehub_testkit::hub::HubBuilder| {
        hub.data_dir(data.path())
            .env("TELEHUB_HISTORY_RETENTION_MS", "86400000")
    };
    let mut hub = retention(hub_process()).start();
    let deadline = Instant::now() + WAIT;
    while raw_rows(data.path(), "old") > 0 {
        assert!(Instant::now() < deadline, "raw rows past retention stay");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, before) = counted(&hub, "old", "from=-4d&step=1h").await;
    assert_eq!(before, 3);
    assert_eq!(hub.stop().await.code(), Some(0), "{}", hub.log());

    // Act: import the same archive again.
    let (ok, _, err) = import();

    // Assert: nothing imported (the file cannot hold them raw, its tiers count them),
    // and the tiers still count each reading once.
    assert!(
        ok && err.contains("imported 0") && err.contains("skipped 3"),
        "{err}"
    );
    hub.restart();
    let (v, total) = counted(&hub, "old", "from=-4d&step=1h").await;
    assert_eq!(v["resolution"], "1h", "{v}");
    assert_eq!(total, 3, "{v}");
    let (_, total) = counted(&hub, "old", "from=-4d&step=1m").await;
    assert_eq!(total, 3, "the 1m tier");
    assert_eq!(hub.stop().await.code(), Some(0), "{}", hub.log());
}
