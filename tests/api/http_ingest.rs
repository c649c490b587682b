//! HTTP ingest end to end against a real hub: readings posted as one object, an array
//! or `{"items":[...]}` with the checks, limits and codes of WebSocket `readings`
//! (200, 207 with per-item errors, 400, 413, 429 with Retry-After, `seq` resends), the
//! device's presence `via: http`, the long poll for commands and the ack by POST, and
//! device tokens on a Bearer header.

use std::time::Duration;

use serde_json::{json, Value};
use telehub_testkit::http::{post, Framing, Response};

use crate::helpers::{http_get, spawn_app_with, TestApp};
use crate::tokens::{tok, token_mode};

fn json_of(r: &Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|_| panic!("JSON body: {}", r.text()))
}

async fn post_readings(app: &TestApp, device: &str, headers: &str, body: &str) -> Response {
    post(
        app.addr,
        &format!("/api/rooms/lab/devices/{device}/readings"),
        &format!("Content-Type: application/json\r\n{headers}"),
        body.as_bytes(),
        Framing::Length,
    )
    .await
}

#[tokio::test]
async fn the_three_body_shapes_are_taken_and_reach_a_dashboard() {
    let app = spawn_app_with(|_| {}).await;
    let (mut dash, _) = app.connect("lab", "dash", "dashboard").await;

    let r = post_readings(
        &app,
        "pump",
        "",
        r#"{"metric":"flow","value":1.5,"unit":"l/min","seq":1}"#,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        json_of(&r),
        json!({"accepted":1,"duplicates":0,"offsets":[1,1]})
    );
    let join = dash.recv_type("presence").await;
    assert_eq!(
        (&join["client"], &join["via"]),
        (&json!("pump"), &json!("http"))
    );
    let reading = dash.recv_type("reading").await;
    assert_eq!(
        (&reading["metric"], &reading["value"], &reading["offset"]),
        (&json!("flow"), &json!(1.5), &json!(1))
    );

    let r = post_readings(
        &app,
        "pump",
        "",
        r#"[{"metric":"flow","value":2,"seq":2},{"metric":"flow","value":3,"seq":3}]"#,
    )
    .await;
    assert_eq!(
        json_of(&r),
        json!({"accepted":2,"duplicates":0,"offsets":[2,3]})
    );
    // A resend after a lost answer: taken (accepted), not stored twice.
    let r = post_readings(
        &app,
        "pump",
        "",
        r#"{"items":[{"metric":"flow","value":3,"seq":3},{"metric":"flow","value":4,"seq":4}]}"#,
    )
    .await;
    assert_eq!(
        json_of(&r),
        json!({"accepted":2,"duplicates":1,"offsets":[4,4]})
    );
    let r = post_readings(&app, "pump", "", r#"{"metric":"flow","value":4,"seq":4}"#).await;
    assert_eq!(
        json_of(&r),
        json!({"accepted":1,"duplicates":1,"offsets":null})
    );
    let (_, rooms) = app.get("/api/rooms").await;
    let rooms: Value = serde_json::from_str(&rooms).expect("json");
    assert_eq!(rooms["rooms"][0]["offset"], 4);
    assert_eq!(
        rooms["rooms"][0]["devices"][0],
        json!({"client":"pump","via":"http"})
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_items_bad_bodies_and_limits_get_the_websocket_codes() {
    let app = spawn_app_with(|s| {
        s.limits.max_batch = 3;
        s.limits.max_frame_bytes = 1024;
    })
    .await;
    // Some refused: 207 with each refused item's index and code.
    let r = post_readings(
        &app,
        "d",
        "",
        r#"[{"metric":"t","value":1},{"metric":"bad metric","value":2},{"value":3}]"#,
    )
    .await;
    assert_eq!(r.status, 207, "{}", r.text());
    let v = json_of(&r);
    assert_eq!(v["accepted"], 1);
    let errors: Vec<(u64, &str)> = v["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| {
            (
                e["index"].as_u64().unwrap_or(99),
                e["error"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(errors, [(1, "invalid_field"), (2, "missing_field")]);
    // None taken: 400, the first refusal as `error`.
    let r = post_readings(&app, "d", "", r#"{"metric":"t","value":"warm"}"#).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(json_of(&r)["error"], "invalid_field");
    for (body, status, code) in [
        ("{\"metric\":", 400, "invalid_json"),
        ("42", 400, "invalid_json"),
        (r#"{"metric":"t","value":NaN}"#, 400, "non_finite_value"),
        (
            r#"[{"metric":"t","value":1},{"metric":"t","value":1},{"metric":"t","value":1},{"metric":"t","value":1}]"#,
            413,
            "batch_too_large",
        ),
    ] {
        let r = post_readings(&app, "d", "", body).await;
        assert_eq!(
            (r.status, json_of(&r)["error"].as_str().unwrap_or("")),
            (status, code),
            "{body}"
        );
    }
    let big = format!(
        r#"{{"metric":"t","value":1,"unit":"{}"}}"#,
        "x".repeat(2000)
    );
    let r = post_readings(&app, "d", "", &big).await;
    assert_eq!(
        (r.status, json_of(&r)["error"].clone()),
        (413, json!("body_too_large"))
    );
    let r = post(
        app.addr,
        "/api/rooms/lab/devices/bad%20id/readings",
        "",
        b"{}",
        Framing::Length,
    )
    .await;
    assert_eq!(
        (r.status, json_of(&r)["error"].clone()),
        (400, json!("invalid_client"))
    );
    let metrics = app.get("/metrics").await.1;
    assert!(
        metrics.contains("telehub_errors_total{code=\"invalid_json\"} 2"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn over_the_rate_items_are_refused_with_retry_after() {
    let app = spawn_app_with(|s| {
        s.limits.rate_per_sec = 1.0;
        s.limits.rate_burst = 2.0;
    })
    .await;
    let three = r#"[{"metric":"t","value":1},{"metric":"t","value":2},{"metric":"t","value":3}]"#;
    let r = post_readings(&app, "d", "", three).await;
    assert_eq!(r.status, 207, "{}", r.text());
    let v = json_of(&r);
    assert_eq!(v["accepted"], 2);
    assert_eq!(
        v["errors"],
        json!([{"index":2,"error":"rate_limited","message":"over 1 readings per second (burst 2); resend it later"}])
    );
    assert_eq!(r.header("retry-after"), Some("1"));
    let r = post_readings(&app, "d", "", three).await;
    assert_eq!(
        (r.status, json_of(&r)["error"].clone()),
        (429, json!("rate_limited"))
    );
    assert!(r.header("retry-after").is_some());
    // Another device has its own bucket.
    assert_eq!(post_readings(&app, "e", "", three).await.status, 207);
    app.stop().await;
}

#[tokio::test]
async fn an_http_device_is_commanded_by_long_poll_and_acks_by_post() {
    let app = spawn_app_with(|_| {}).await;
    let addr = app.addr;
    // Nothing waiting: an immediate empty answer.
    let (status, body) = http_get(addr, "/api/rooms/lab/devices/valve/commands", "").await;
    assert_eq!((status, body.as_str()), (200, r#"{"commands":[]}"#));
    let (mut dash, _) = app.connect("lab", "dash", "dashboard").await;
    let poll = tokio::spawn(async move {
        http_get(addr, "/api/rooms/lab/devices/valve/commands?wait=20s", "").await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!poll.is_finished(), "the poll waits for a command");
    dash.send_json(
        json!({"type":"command","id":"c-1","to":"valve","name":"open","args":{"pct":40}}),
    )
    .await;
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), poll)
        .await
        .expect("the poll answers when the command arrives")
        .expect("poll task");
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        v,
        json!({"commands":[{"id":"c-1","from":"dash","name":"open","args":{"pct":40}}]})
    );
    let r = post(
        addr,
        "/api/rooms/lab/devices/valve/commands/c-1/ack",
        "",
        br#"{"ok":true,"result":{"pct":40}}"#,
        Framing::Length,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let ack = dash.recv_type("ack").await;
    assert_eq!(
        ack,
        json!({"type":"ack","id":"c-1","from":"valve","ok":true,"result":{"pct":40}})
    );
    // A second ack for the same id: nothing is pending.
    let r = post(
        addr,
        "/api/rooms/lab/devices/valve/commands/c-1/ack",
        "",
        br#"{"ok":true}"#,
        Framing::Length,
    )
    .await;
    assert_eq!(
        (r.status, json_of(&r)["error"].clone()),
        (404, json!("unknown_command"))
    );
    let r = post(
        addr,
        "/api/rooms/lab/devices/valve/commands/c-2/ack",
        "",
        b"yes",
        Framing::Length,
    )
    .await;
    assert_eq!(
        (r.status, json_of(&r)["error"].clone()),
        (400, json!("invalid_json"))
    );
    let (status, _) = http_get(addr, "/api/rooms/lab/devices/valve/commands?wait=soon", "").await;
    assert_eq!(status, 400);
    app.stop().await;
}

#[tokio::test]
async fn with_auth_on_a_device_token_posts_only_as_its_device() {
    let app = spawn_app_with(token_mode).await;
    let one = r#"{"metric":"t","value":1}"#;
    let r = post_readings(&app, "pump", "", one).await;
    assert_eq!(
        (r.status, json_of(&r)["error"].clone()),
        (401, json!("unauthorized"))
    );
    let pump = format!(
        "Authorization: Bearer {}\r\n",
        tok("pump", "device", &["lab"])
    );
    assert_eq!(post_readings(&app, "pump", &pump, one).await.status, 200);
    let r = post_readings(&app, "valve", &pump, one).await;
    assert_eq!(
        (r.status, json_of(&r)["error"].clone()),
        (403, json!("forbidden"))
    );
    let dash = format!(
        "Authorization: Bearer {}\r\n",
        tok("pump", "dashboard", &["lab"])
    );
    assert_eq!(post_readings(&app, "pump", &dash, one).await.status, 403);
    let (status, _) = http_get(app.addr, "/api/rooms/lab/devices/valve/commands", &pump).await;
    assert_eq!(status, 403);
    app.stop().await;
}
