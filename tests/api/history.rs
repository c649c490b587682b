//! History: `?since=` recovery, epochs, snapshot, durable history across restarts and
//! `kill -9`, the REST history API and the plots. Every test runs a real hub on
//! 127.0.0.1 port 0 (in-process, or the real binary where a process must die).

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use telehub::Settings;

use crate::helpers::{hub_process, spawn_app_with, Client, Hub, TestApp};

/// No rate limit in the way of tests that send fast.
fn fast(s: &mut Settings) {
    s.limits.rate_per_sec = 1e9;
    s.limits.rate_burst = 1e9;
}

/// Sends readings `seqs` of `metric` as batches of at most 100 and waits until the hub
/// has accepted each batch (the device connected with `acks=true`).
async fn send_acked(dev: &mut Client, metric: &str, seqs: std::ops::Range<u64>) {
    let all: Vec<u64> = seqs.collect();
    for chunk in all.chunks(100) {
        let items: Vec<Value> = chunk
            .iter()
            .map(|&s| json!({"metric": metric, "value": s as f64, "seq": s}))
            .collect();
        dev.send_json(json!({"type":"readings","items":items}))
            .await;
        let acc = dev.recv_type("accepted").await;
        assert_eq!(acc["seq"], json!(chunk[chunk.len() - 1]), "{acc}");
    }
}

/// Reads readings until one with offset `last` arrives; returns every offset seen.
async fn offsets_until(c: &mut Client, last: u64) -> Vec<u64> {
    let mut seen = Vec::new();
    loop {
        let v = c.recv_json().await;
        if v["type"] != "reading" {
            continue;
        }
        let o = v["offset"].as_u64().expect("offset");
        seen.push(o);
        if o >= last {
            return seen;
        }
    }
}

/// `GET path` as bytes: (status, content-type, body).
async fn get_bytes(addr: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    let r = telehub_testkit::http::get(addr, path, "").await;
    let ctype = r.header("content-type").unwrap_or_default().to_string();
    (r.status, ctype, r.body)
}

async fn get_json(app: &TestApp, path: &str) -> (u16, Value) {
    let (status, _, body) = get_bytes(app.addr, path).await;
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("{path}: not JSON: {}", String::from_utf8_lossy(&body)));
    (status, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn since_replay_meets_the_live_stream_with_no_gap_and_no_duplicate() {
    // Arrange: 600 readings in the room, and a device that keeps sending. The replay
    // (over 1,000 readings) is larger than the dashboard's outbound queue on purpose.
    let app = spawn_app_with(|s| {
        fast(s);
        s.limits.outbound_queue = 256;
    })
    .await;
    let (mut dev, _) = app.connect_query("r", "d1", "role=device&acks=true").await;
    send_acked(&mut dev, "t", 0..600).await;
    let (mut watch, w) = app.connect("r", "watch", "dashboard").await;
    let epoch = w["epoch"].as_str().expect("epoch").to_string();
    assert_eq!(w["offset"], 600);
    let sender = tokio::spawn(async move {
        // Paced (at least 240 ms in all), so the run surely spans the join below.
        for start in (600..1800).step_by(10) {
            send_acked(&mut dev, "t", start..start + 10).await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        dev
    });
    // Wait until the device is well into its run.
    offsets_until(&mut watch, 650).await;

    // Act: a dashboard comes back with since=100 while the device is sending.
    let (mut dash, welcome) = app
        .connect_query("r", "late", &format!("since=100&epoch={epoch}"))
        .await;
    let at_join = welcome["offset"].as_u64().expect("offset");
    let seen = offsets_until(&mut dash, 1800).await;
    let _dev = sender.await.expect("sender");

    // Assert: every offset after 100, once, in order.
    assert_eq!(welcome["recovered"], true, "{welcome}");
    assert!(
        (650..1800).contains(&at_join),
        "the device was sending during the join: {at_join}"
    );
    let expected: Vec<u64> = (101..=1800).collect();
    assert_eq!(seen.len(), expected.len(), "gap or duplicate");
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn a_too_old_offset_or_another_epoch_is_not_recovered() {
    let app = spawn_app_with(|s| {
        fast(s);
        s.history.room_log_len = 10;
    })
    .await;
    let (mut dev, _) = app.connect_query("r", "d1", "role=device&acks=true").await;
    send_acked(&mut dev, "t", 0..30).await;
    let (_w, w) = app.connect("r", "watch", "dashboard").await;
    let epoch = w["epoch"].as_str().expect("epoch").to_string();

    // Too old: the replay starts at the oldest kept offset (21).
    let (mut old, welcome) = app
        .connect_query("r", "old", &format!("since=5&epoch={epoch}"))
        .await;
    assert_eq!(welcome["recovered"], false);
    assert_eq!(
        offsets_until(&mut old, 30).await,
        (21..=30).collect::<Vec<_>>()
    );

    // Another epoch: not recovered, even for an offset the log holds.
    let (mut other, welcome) = app
        .connect_query("r", "other", "since=25&epoch=zzzzzzzz")
        .await;
    assert_eq!(welcome["recovered"], false);
    assert_eq!(
        offsets_until(&mut other, 30).await,
        (21..=30).collect::<Vec<_>>()
    );

    // The right epoch and a kept offset: exact.
    let (mut good, welcome) = app
        .connect_query("r", "good", &format!("since=25&epoch={epoch}"))
        .await;
    assert_eq!(welcome["recovered"], true);
    assert_eq!(
        offsets_until(&mut good, 30).await,
        (26..=30).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_dashboard_gets_the_last_value_of_every_series_right_after_welcome() {
    let app = spawn_app_with(fast).await;
    let (mut dev, _) = app
        .connect_query("lab", "t1", "role=device&acks=true")
        .await;
    for (metric, value, seq) in [("temp", 20.0, 1), ("temp", 21.5, 2), ("hum", 40.0, 3)] {
        dev.send_json(json!({"type":"reading","metric":metric,"value":value,"unit":"C","seq":seq}))
            .await;
        dev.recv_type("accepted").await;
    }
    let mut dash = Client::connect(&app.ws_url("lab", "dash", "role=dashboard"))
        .await
        .expect("connect");
    let first = dash.recv_json().await;
    let second = dash.recv_json().await;
    assert_eq!(first["type"], "welcome");
    assert_eq!(second["type"], "snapshot", "{second}");
    let series = second["series"].as_array().expect("series");
    assert_eq!(series.len(), 2, "{second}");
    assert_eq!(
        (
            &series[0]["metric"],
            &series[0]["value"],
            &series[0]["offset"]
        ),
        (&json!("hum"), &json!(40.0), &json!(3))
    );
    assert_eq!(
        (
            &series[1]["metric"],
            &series[1]["value"],
            &series[1]["unit"]
        ),
        (&json!("temp"), &json!(21.5), &json!("C"))
    );
    assert_eq!(series[1]["device"], "t1");
}

#[tokio::test]
async fn past_max_series_a_reading_is_refused_with_series_limit() {
    let app = spawn_app_with(|s| {
        fast(s);
        s.history.max_series = 2;
    })
    .await;
    let (mut dev, _) = app.connect("r", "d", "device").await;
    let (mut dash, _) = app.connect("r", "dash", "dashboard").await;
    dev.reading("a", 1.0, 1).await;
    dev.reading("b", 1.0, 2).await;
    dev.reading("c", 1.0, 3).await;
    let (code, message) = crate::helpers::next_error(&mut dev).await;
    assert_eq!(code, "series_limit");
    assert!(message.contains("max_series"), "{message}");
    // The refused reading never reached the dashboard; existing series still work.
    dev.reading("a", 2.0, 4).await;
    let mut metrics = Vec::new();
    while metrics.len() < 3 {
        let r = dash.recv_type("reading").await;
        metrics.push((
            r["metric"].as_str().unwrap_or("").to_string(),
            r["offset"].clone(),
        ));
    }
    assert_eq!(
        metrics,
        [
            ("a".into(), json!(1)),
            ("b".into(), json!(2)),
            ("a".into(), json!(3))
        ]
    );
    let (_, text) = app.get("/metrics").await;
    assert!(text.contains("telehub_history_series 2\n"), "{text}");
    assert!(
        text.contains("telehub_errors_total{code=\"series_limit\"} 1"),
        "{text}"
    );
}

fn persistent(dir: &Path) -> impl FnOnce(&mut Settings) + '_ {
    move |s| {
        fast(s);
        s.history.persist = true;
        s.history.data_dir = dir.to_path_buf();
        s.history.flush_interval_ms = 100;
    }
}

#[tokio::test]
async fn a_restart_with_durable_history_keeps_the_epoch_continues_offsets_and_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn_app_with(persistent(dir.path())).await;
    let (mut dev, _) = app.connect_query("r", "d1", "role=device&acks=true").await;
    send_acked(&mut dev, "t", 0..250).await;
    let (_w, w) = app.connect("r", "watch", "dashboard").await;
    let epoch = w["epoch"].as_str().expect("epoch").to_string();
    // A clean shutdown right after the last accepted reading.
    app.stop().await;

    let app = spawn_app_with(persistent(dir.path())).await;
    let (mut dash, welcome) = app
        .connect_query("r", "back", &format!("since=240&epoch={epoch}"))
        .await;
    assert_eq!(welcome["epoch"], json!(epoch));
    assert_eq!(welcome["offset"], 250);
    assert_eq!(welcome["recovered"], true);
    assert_eq!(
        offsets_until(&mut dash, 250).await,
        (241..=250).collect::<Vec<_>>()
    );
    let (status, hist) = get_json(&app, "/api/rooms/r/history?limit=100000").await;
    assert_eq!(status, 200);
    assert_eq!(
        hist["points"].as_array().map(Vec::len),
        Some(250),
        "clean shutdown loses none"
    );

    let (mut dev, _) = app.connect("r", "d1", "device").await;
    dev.reading("t", 1.0, 10_000).await;
    let r = dash.recv_type("reading").await;
    assert_eq!(r["offset"], 251);
    app.stop().await;
}

#[tokio::test]
async fn readings_resent_after_a_restart_are_stored_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn_app_with(persistent(dir.path())).await;
    let (mut dev, _) = app
        .connect_query("once", "d1", "role=device&acks=true")
        .await;
    send_acked(&mut dev, "t", 1..101).await;
    app.stop().await;

    // The device did not hear the last `accepted` before the hub went away: it resends
    // seqs 51 to 100 to the new process, then carries on.
    let app = spawn_app_with(persistent(dir.path())).await;
    let (mut dev, _) = app
        .connect_query("once", "d1", "role=device&acks=true")
        .await;
    send_acked(&mut dev, "t", 51..151).await;
    let (status, hist) = get_json(&app, "/api/rooms/once/history?limit=100000").await;
    assert_eq!(status, 200);
    let mut values: Vec<u64> = hist["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| p["value"].as_f64().expect("value") as u64)
        .collect();
    values.sort_unstable();
    assert_eq!(
        values,
        (1..151).collect::<Vec<_>>(),
        "every reading exactly once"
    );
    app.stop().await;
}

/// The real binary with its data in `dir`, flushing every `flush_ms`.
fn start_binary(dir: &Path, flush_ms: u64) -> Hub {
    hub_process()
        .data_dir(dir)
        .env("TELEHUB_HISTORY_FLUSH_INTERVAL_MS", flush_ms.to_string())
        .env("TELEHUB_LIMITS_RATE_PER_SEC", "1000000")
        .env("TELEHUB_LIMITS_RATE_BURST", "1000000")
        .start()
}

#[tokio::test]
async fn kill_9_loses_at_most_one_flush_interval() {
    const FLUSH_MS: u64 = 200;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut hub = start_binary(dir.path(), FLUSH_MS);
    let addr = hub.addr();
    let url = |c: &str, q: &str| format!("ws://{addr}/ws/r/{c}?{q}");
    let mut dev = Client::connect(&url("d1", "role=device&acks=true"))
        .await
        .expect("connect");
    dev.recv_type("welcome").await;
    let mut watch = Client::connect(&url("w", "role=dashboard"))
        .await
        .expect("connect");
    let epoch = watch.recv_type("welcome").await["epoch"].clone();

    // 500 readings accepted, then more than one flush interval passes: they are durable.
    send_acked(&mut dev, "t", 0..500).await;
    tokio::time::sleep(Duration::from_millis(FLUSH_MS * 5)).await;
    // 100 more accepted right before the kill: these may be lost (one interval).
    send_acked(&mut dev, "t", 500..600).await;
    hub.kill();

    // Started again at the same address, on the same data.
    hub.restart();
    let app_get = |path: &'static str| async move { get_bytes(addr, path).await };
    let (status, _, body) = app_get("/api/rooms/r/history?limit=100000").await;
    assert_eq!(status, 200);
    let hist: Value = serde_json::from_slice(&body).expect("json");
    let seqs: Vec<u64> = hist["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| p["value"].as_f64().expect("value") as u64)
        .collect();
    assert!(
        seqs.len() >= 500,
        "lost more than one flush interval: {}",
        seqs.len()
    );
    assert_eq!(seqs[..500], (0..500).collect::<Vec<_>>()[..]);

    // Offsets continue, under a new epoch (the lost offsets will be given out again).
    let mut dash = Client::connect(&format!(
        "ws://{addr}/ws/r/back?since=10&epoch={}",
        epoch.as_str().unwrap_or("")
    ))
    .await
    .expect("connect");
    let welcome = dash.recv_type("welcome").await;
    assert_eq!(welcome["recovered"], false, "{welcome}");
    assert_ne!(welcome["epoch"], epoch);
    assert_eq!(welcome["offset"].as_u64(), Some(seqs.len() as u64));
}

#[tokio::test]
async fn in_memory_mode_gives_a_restarted_hub_new_epochs() {
    let app = spawn_app_with(fast).await;
    let (_d, w1) = app.connect("r", "d", "device").await;
    app.stop().await;
    let app = spawn_app_with(fast).await;
    let (_dash, w2) = app
        .connect_query(
            "r",
            "dash",
            &format!("since=0&epoch={}", w1["epoch"].as_str().unwrap_or("")),
        )
        .await;
    assert_ne!(w1["epoch"], w2["epoch"]);
    assert_eq!(w2["recovered"], false);
}

/// A room with devices a and b sending `temp` each second for the last 100 s.
async fn room_with_points(app: &TestApp) {
    let now = chrono::Utc::now().timestamp_millis();
    for dev in ["a", "b"] {
        let (mut d, _) = app.connect_query("lab", dev, "role=device&acks=true").await;
        let items: Vec<Value> = (0..100)
            .map(|i| {
                let v = if dev == "a" { i as f64 } else { -(i as f64) };
                json!({"metric":"temp","unit":"C","value":v,"ts":now - 100_000 + i * 1000,"seq":i})
            })
            .collect();
        d.send_json(json!({"type":"readings","items":items})).await;
        d.recv_type("accepted").await;
    }
}

#[tokio::test]
async fn rest_history_answers_json_csv_and_buckets() {
    let app = spawn_app_with(fast).await;
    room_with_points(&app).await;

    let (status, v) = get_json(&app, "/api/rooms/lab/history?device=a&metric=temp").await;
    assert_eq!(status, 200);
    let points = v["points"].as_array().expect("points");
    assert_eq!(points.len(), 100);
    assert_eq!(points[99]["value"], 99.0);
    assert!(points
        .windows(2)
        .all(|w| w[0]["ts"].as_i64() <= w[1]["ts"].as_i64()));

    // Relative and absolute windows, and limit (newest last).
    let (_, v) = get_json(&app, "/api/rooms/lab/history?device=a&from=-30s").await;
    let n = v["points"].as_array().map_or(0, Vec::len);
    assert!((29..=31).contains(&n), "{n}");
    let (_, v) = get_json(&app, "/api/rooms/lab/history?limit=3").await;
    assert_eq!(v["points"].as_array().map(Vec::len), Some(3));
    let first_ts = points[0]["ts"].as_i64().expect("ts");
    let rfc = chrono::DateTime::from_timestamp_millis(first_ts + 9_000)
        .expect("ts")
        .to_rfc3339();
    let (_, v) = get_json(
        &app,
        &format!(
            "/api/rooms/lab/history?device=a&from={first_ts}&to={}",
            rfc.replace('+', "%2B")
        ),
    )
    .await;
    assert_eq!(v["points"].as_array().map(Vec::len), Some(10), "{v}");

    // CSV.
    let (status, ctype, body) =
        get_bytes(app.addr, "/api/rooms/lab/history?device=b&format=csv").await;
    assert_eq!(status, 200);
    assert!(ctype.starts_with("text/csv"), "{ctype}");
    let text = String::from_utf8(body).expect("utf8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "device,metric,ts,value");
    assert_eq!(lines.len(), 101);
    assert!(
        lines[100].starts_with("b,temp,") && lines[100].ends_with(",-99"),
        "{}",
        lines[100]
    );

    // Buckets of 10 s: min, max, mean, count.
    let (_, v) = get_json(&app, "/api/rooms/lab/history?device=a&step=10s").await;
    let buckets = v["points"].as_array().expect("buckets");
    let total: u64 = buckets
        .iter()
        .map(|b| b["count"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(total, 100);
    for b in buckets {
        assert_eq!(b["ts"].as_i64().unwrap_or(1) % 10_000, 0);
        assert!(b["min"].as_f64() <= b["mean"].as_f64() && b["mean"].as_f64() <= b["max"].as_f64());
    }
    let (_, _, csv) = get_bytes(app.addr, "/api/rooms/lab/history?step=1m&format=csv").await;
    assert!(String::from_utf8_lossy(&csv).starts_with("device,metric,ts,min,max,mean,count\n"));

    // Series.
    let (status, v) = get_json(&app, "/api/rooms/lab/series").await;
    assert_eq!(status, 200);
    let series = v["series"].as_array().expect("series");
    assert_eq!(series.len(), 2);
    assert_eq!(series[0]["device"], "a");
    assert_eq!(series[0]["unit"], "C");
    assert_eq!(series[0]["last_value"], 99.0);
    assert_eq!(series[0]["count"], 100);
}

#[tokio::test]
async fn rest_errors_name_the_parameter_or_say_what_is_unknown() {
    let app = spawn_app_with(fast).await;
    room_with_points(&app).await;
    let cases = [
        (
            "/api/rooms/lab/history?from=yesterday",
            400,
            "invalid_parameter",
            "from",
        ),
        (
            "/api/rooms/lab/history?to=soon",
            400,
            "invalid_parameter",
            "to",
        ),
        (
            "/api/rooms/lab/history?limit=0",
            400,
            "invalid_parameter",
            "limit",
        ),
        (
            "/api/rooms/lab/history?step=fast",
            400,
            "invalid_parameter",
            "step",
        ),
        (
            "/api/rooms/lab/history?format=xml",
            400,
            "invalid_parameter",
            "format",
        ),
        (
            "/api/rooms/lab/history?devise=a",
            400,
            "invalid_parameter",
            "devise",
        ),
        (
            "/api/rooms/lab/history?metric=bad%20name",
            400,
            "invalid_parameter",
            "metric",
        ),
        (
            "/api/rooms/lab/plot.png",
            400,
            "invalid_parameter",
            "metric",
        ),
        (
            "/api/rooms/lab/plot.png?metric=temp&width=100000&height=100000",
            400,
            "invalid_parameter",
            "width",
        ),
        (
            "/api/rooms/lab/plot.svg?metric=temp&height=50",
            400,
            "invalid_parameter",
            "height",
        ),
        (
            "/api/rooms/lab/plot.svg?metric=temp&theme=pink",
            400,
            "invalid_parameter",
            "theme",
        ),
        (
            "/api/rooms/lab/plot.svg?metric=temp&window=forever",
            400,
            "invalid_parameter",
            "window",
        ),
        ("/api/rooms/nowhere/history", 404, "unknown_room", "nowhere"),
        ("/api/rooms/nowhere/series", 404, "unknown_room", "nowhere"),
        (
            "/api/rooms/nowhere/plot.png?metric=temp",
            404,
            "unknown_room",
            "nowhere",
        ),
        (
            "/api/rooms/lab/history?device=zz",
            404,
            "unknown_series",
            "zz",
        ),
        (
            "/api/rooms/lab/plot.svg?metric=pressure",
            404,
            "unknown_series",
            "pressure",
        ),
    ];
    for (path, status, code, named) in cases {
        let (got, v) = get_json(&app, path).await;
        assert_eq!(got, status, "{path}: {v}");
        assert_eq!(v["error"], code, "{path}: {v}");
        let message = v["message"].as_str().unwrap_or("");
        assert!(message.contains(named), "{path}: {message}");
    }
}

#[tokio::test]
async fn the_png_plot_has_the_asked_size_and_is_not_blank() {
    let app = spawn_app_with(fast).await;
    room_with_points(&app).await;
    for theme in ["light", "dark"] {
        let (status, ctype, body) = get_bytes(
            app.addr,
            &format!(
                "/api/rooms/lab/plot.png?metric=temp&window=5m&width=640&height=360&theme={theme}"
            ),
        )
        .await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        assert_eq!(ctype, "image/png");
        let (w, h, pixels) = decode_png(&body);
        assert_eq!((w, h), (640, 360));
        let background = &pixels[..3];
        let other = pixels.chunks(3).filter(|p| *p != background).count();
        assert!(
            other > 5_000,
            "{theme}: only {other} pixels differ from the background"
        );
    }
}

fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("PNG header");
    let mut buf = vec![0; reader.output_buffer_size().expect("size")];
    let info = reader.next_frame(&mut buf).expect("PNG frame");
    buf.truncate(info.buffer_size());
    assert_eq!(info.color_type, png::ColorType::Rgb);
    (info.width, info.height, buf)
}

/// Data lines are polylines wider than the 1 px axes and ticks.
fn data_polylines(svg: &str) -> usize {
    svg.split("<polyline")
        .skip(1)
        .filter(|p| !p.contains("stroke-width=\"1\""))
        .count()
}

#[tokio::test]
async fn the_svg_plot_has_one_path_per_device() {
    let app = spawn_app_with(fast).await;
    room_with_points(&app).await;
    let (status, ctype, body) = get_bytes(app.addr, "/api/rooms/lab/plot.svg?metric=temp").await;
    assert_eq!(status, 200);
    assert_eq!(ctype, "image/svg+xml");
    let svg = String::from_utf8(body).expect("utf8");
    assert_eq!(data_polylines(&svg), 2, "{svg}");
    assert!(svg.contains("temp in lab") && svg.contains("temp (C)"));
    let (_, _, body) = get_bytes(app.addr, "/api/rooms/lab/plot.svg?metric=temp&device=b").await;
    assert_eq!(data_polylines(&String::from_utf8_lossy(&body)), 1);
}

#[tokio::test]
async fn telehub_plot_writes_a_png_from_a_running_hub() {
    let app = spawn_app_with(fast).await;
    room_with_points(&app).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out.png");
    let status = tokio::process::Command::new(env!("CARGO_BIN_EXE_telehub"))
        .args(["plot", "--url", &format!("http://{}", app.addr)])
        .args([
            "--room", "lab", "--metric", "temp", "--window", "1h", "--width", "300",
        ])
        .arg("-o")
        .arg(&out)
        .status()
        .await
        .expect("run telehub plot");
    assert!(status.success());
    let (w, h, _) = decode_png(&std::fs::read(&out).expect("written"));
    assert_eq!((w, h), (300, 500));

    let bad = tokio::process::Command::new(env!("CARGO_BIN_EXE_telehub"))
        .args(["plot", "--url", &format!("http://{}", app.addr)])
        .args(["--room", "nowhere", "--metric", "temp", "-o"])
        .arg(dir.path().join("no.png"))
        .output()
        .await
        .expect("run telehub plot");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown_room"));
}
