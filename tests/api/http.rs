//! The HTTP endpoints: health, the room list and Prometheus metrics.

use serde_json::Value;

use crate::helpers::{spawn_app, spawn_app_with};

#[tokio::test]
async fn healthz_answers_ok() {
    let app = spawn_app().await;
    assert_eq!(app.get("/healthz").await, (200, "ok".to_string()));
    app.stop().await;
}

#[tokio::test]
async fn api_rooms_lists_devices_and_dashboards() {
    let app = spawn_app().await;
    let (mut dev, _) = app.connect("greenhouse", "t1", "device").await;
    let (_dash, _) = app.connect("greenhouse", "screen", "dashboard").await;
    dev.reading("temperature", 20.0, 1).await;
    // The reading is in once the room's offset says so.
    let mut rooms = Value::Null;
    for _ in 0..50 {
        rooms = serde_json::from_str(&app.get("/api/rooms").await.1).expect("json");
        if rooms["rooms"][0]["offset"] == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let room = &rooms["rooms"][0];
    assert_eq!(room["room"], "greenhouse");
    assert_eq!(room["offset"], 1);
    assert_eq!(
        room["devices"],
        serde_json::json!([{"client":"t1","via":"ws"}])
    );
    assert_eq!(
        room["dashboards"],
        serde_json::json!([{"client":"screen","via":"ws"}])
    );
    app.stop().await;
}

#[tokio::test]
async fn metrics_count_connections_readings_and_deliveries() {
    let app = spawn_app().await;
    let (mut dev, _) = app.connect("m", "dev", "device").await;
    let (mut d1, _) = app.connect("m", "d1", "dashboard").await;
    let (mut d2, _) = app.connect("m", "d2", "dashboard").await;
    dev.reading("x", 1.0, 1).await;
    d1.recv_type("reading").await;
    d2.recv_type("reading").await;
    let (status, text) = app.get("/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "telehub_connections{role=\"device\"} 1",
        "telehub_connections{role=\"dashboard\"} 2",
        "telehub_rooms 1",
        "telehub_readings_in_total 1",
        "telehub_frames_out_total 2",
        "# TYPE telehub_errors_total counter",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in\n{text}"
        );
    }
    app.stop().await;
}

/// The value of one sample (`name` or `name{labels}`) in a scrape.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn metrics_keep_every_family_and_fill_the_histograms() {
    // Arrange: durable history, so that the store commits; a device, a dashboard and
    // three readings it has seen.
    let dir = tempfile::tempdir().expect("tempdir");
    let app = spawn_app_with(|s| {
        s.history.persist = true;
        s.history.data_dir = dir.path().to_path_buf();
        s.history.flush_interval_ms = 50;
    })
    .await;
    let (mut dev, _) = app.connect("h", "dev", "device").await;
    let (mut dash, welcome) = app.connect("h", "screen", "dashboard").await;
    let epoch = welcome["epoch"].as_str().expect("epoch").to_string();
    for seq in 1..=3 {
        dev.reading("t", seq as f64, seq).await;
    }
    for _ in 0..3 {
        dash.recv_type("reading").await;
    }

    // Act: the dashboard comes back asking for everything since offset 0. Its old
    // connection is replaced (closed by the hub) and the new one gets three readings
    // replayed. Then wait for the store's first commit and for the replay to be counted
    // (when the dashboard's catch-up ends, after its welcome).
    let query = format!("role=dashboard&since=0&epoch={epoch}");
    let (_again, rejoined) = app.connect_query("h", "screen", &query).await;
    assert_eq!(rejoined["recovered"], true, "{rejoined}");
    let mut text = String::new();
    for _ in 0..250 {
        text = app.get("/metrics").await.1;
        if sample(&text, "telehub_store_commit_seconds_count").unwrap_or(0.0) > 0.0
            && sample(&text, "telehub_replay_frames_count").unwrap_or(0.0) > 0.0
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Assert: every family scrapers know is still there with its type, and the new
    // histograms have samples.
    for (name, kind) in [
        ("telehub_connections", "gauge"),
        ("telehub_rooms", "gauge"),
        ("telehub_readings_in_total", "counter"),
        ("telehub_frames_out_total", "counter"),
        ("telehub_slow_consumer_disconnects_total", "counter"),
        ("telehub_duplicate_readings_total", "counter"),
        ("telehub_commands_total", "counter"),
        ("telehub_errors_total", "counter"),
        ("telehub_errors_suppressed_total", "counter"),
        ("telehub_connections_rejected_total", "counter"),
        ("telehub_history_series", "gauge"),
        ("telehub_history_store_dropped_total", "counter"),
        ("telehub_replay_frames", "histogram"),
        ("telehub_outbound_queue_depth_at_close", "histogram"),
        ("telehub_store_commit_seconds", "histogram"),
    ] {
        let type_line = format!("# TYPE {name} {kind}");
        assert!(
            text.lines().any(|l| l == type_line),
            "no `{type_line}` in\n{text}"
        );
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no help for {name}"
        );
    }
    assert_eq!(
        sample(&text, "telehub_readings_in_total"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "telehub_frames_out_total"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "telehub_replay_frames_count"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(&text, "telehub_replay_frames_sum"),
        Some(3.0),
        "{text}"
    );
    assert!(
        sample(&text, "telehub_outbound_queue_depth_at_close_count") >= Some(1.0),
        "the replaced connection's close was not observed:\n{text}"
    );
    assert!(
        sample(&text, "telehub_store_commit_seconds_count") >= Some(1.0),
        "no store commit was timed:\n{text}"
    );
    app.stop().await;
}

#[tokio::test]
async fn unknown_paths_get_a_json_404() {
    let app = spawn_app().await;
    let (status, body) = app.get("/api/nothing-here").await;
    assert_eq!(status, 404);
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["error"], "not_found");
    app.stop().await;
}
