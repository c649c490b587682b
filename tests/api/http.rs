//! The HTTP endpoints: health, the room list and Prometheus metrics.

use serde_json::Value;

use crate::helpers::spawn_app;

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

#[tokio::test]
async fn unknown_paths_get_a_json_404() {
    let app = spawn_app().await;
    let (status, body) = app.get("/api/nothing-here").await;
    assert_eq!(status, 404);
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["error"], "not_found");
    app.stop().await;
}
