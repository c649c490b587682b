//! Bad input: every error code, with the connection staying open; bad names and roles
//! refused before the upgrade; oversized frames closed with 1009.

use serde_json::json;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::helpers::{http_get, next_error, spawn_app, spawn_app_with, Client};
use futures_util::SinkExt;

#[tokio::test]
async fn every_bad_message_gets_its_error_code_and_the_connection_stays_open() {
    let app = spawn_app_with(|s| s.limits.max_batch = 3).await;
    let (mut dev, _) = app.connect("e", "dev", "device").await;
    let (mut dash, _) = app.connect("e", "dash", "dashboard").await;
    let cases: &[(&str, &str)] = &[
        ("{nope", "invalid_json"),
        ("[1,2,3]", "invalid_json"),
        (r#"{"metric":"t","value":1}"#, "unknown_type"),
        (r#"{"type":"sing"}"#, "unknown_type"),
        (r#"{"type":"reading","value":1}"#, "missing_field"),
        (r#"{"type":"reading","metric":"t"}"#, "missing_field"),
        (
            r#"{"type":"reading","metric":"t","value":"21"}"#,
            "invalid_field",
        ),
        (
            r#"{"type":"reading","metric":"t","value":1,"unit":5}"#,
            "invalid_field",
        ),
        (
            r#"{"type":"reading","metric":"t","value":NaN}"#,
            "non_finite_value",
        ),
        (
            r#"{"type":"reading","metric":"t","value":-1e999}"#,
            "non_finite_value",
        ),
        (
            r#"{"type":"readings","items":[{"metric":"a","value":1},{"metric":"a","value":1},{"metric":"a","value":1},{"metric":"a","value":1}]}"#,
            "batch_too_large",
        ),
        (
            r#"{"type":"command","id":"1","to":"x","name":"reboot"}"#,
            "wrong_role",
        ),
    ];
    for (text, code) in cases {
        dev.send_text(text).await;
        let (got, message) = next_error(&mut dev).await;
        assert_eq!(&got, code, "for {text}: {message}");
        assert!(!message.is_empty());
    }
    dash.send_json(json!({"type":"reading","metric":"t","value":1}))
        .await;
    assert_eq!(next_error(&mut dash).await.0, "wrong_role");
    dash.send_json(json!({"type":"ack","id":"1","ok":true}))
        .await;
    assert_eq!(next_error(&mut dash).await.0, "wrong_role");
    dev.ws
        .send(Message::Binary(vec![1u8, 2, 3].into()))
        .await
        .expect("send");
    assert_eq!(next_error(&mut dev).await.0, "binary_not_supported");

    // After all that, both connections still work.
    dev.reading("t", 1.5, 1).await;
    let r = dash.recv_type("reading").await;
    assert_eq!(r["value"], 1.5);
    let metrics = app.get("/metrics").await.1;
    assert!(
        metrics.contains("telehub_errors_total{code=\"invalid_json\"} 2"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_bad_item_in_a_batch_fails_alone() {
    let app = spawn_app().await;
    let (mut dev, _) = app.connect("b", "dev", "device").await;
    let (mut dash, _) = app.connect("b", "dash", "dashboard").await;
    dev.send_json(json!({"type":"readings","items":[{"metric":"a","value":1},{"metric":"a","value":"x"},{"metric":"a","value":3}]}))
        .await;
    let (code, message) = next_error(&mut dev).await;
    assert_eq!(code, "invalid_field");
    assert!(message.starts_with("items[1]"), "{message}");
    assert_eq!(dash.recv_type("reading").await["value"], 1.0);
    assert_eq!(dash.recv_type("reading").await["value"], 3.0);
    app.stop().await;
}

#[tokio::test]
async fn a_flooding_device_is_rate_limited_and_told_how_many_were_refused() {
    let app = spawn_app_with(|s| {
        s.limits.rate_per_sec = 1.0;
        s.limits.rate_burst = 5.0;
    })
    .await;
    let (mut dev, _) = app.connect("f", "dev", "device").await;
    let (mut dash, _) = app.connect("f", "dash", "dashboard").await;
    let items: Vec<_> = (0..8).map(|i| json!({"metric":"a","value":i})).collect();
    dev.send_json(json!({"type":"readings","items":items}))
        .await;
    let (code, message) = next_error(&mut dev).await;
    assert_eq!(code, "rate_limited");
    assert!(message.starts_with("3 reading(s) refused"), "{message}");
    for i in 0..5 {
        assert_eq!(dash.recv_type("reading").await["value"], i as f64);
    }
    dash.expect_silence(200).await;
    app.stop().await;
}

async fn refused(url: &str) -> (u16, serde_json::Value) {
    match Client::connect(url).await {
        Err(WsError::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            (
                resp.status().as_u16(),
                serde_json::from_slice(&body).expect("JSON error body"),
            )
        }
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected a refusal for {url}"),
    }
}

#[tokio::test]
async fn bad_names_and_roles_get_400_before_any_upgrade() {
    let app = spawn_app().await;
    let long = "r".repeat(65);
    for (room, client, query, code) in [
        ("bad room", "c", "", "invalid_room"),
        (long.as_str(), "c", "", "invalid_room"),
        ("r", "bad!client", "", "invalid_client"),
        ("r", "c", "role=admin", "invalid_role"),
        ("r", "c", "since=-4", "invalid_query"),
        ("r", "c", "presence=some", "invalid_query"),
    ] {
        let url = app.ws_url(&room.replace(' ', "%20"), client, query);
        let (status, body) = refused(&url).await;
        assert_eq!(status, 400, "{url}");
        assert_eq!(body["error"], code, "{url}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // A plain GET on a WebSocket path: 426 with a JSON body.
    let (status, body) = http_get(app.addr, "/ws/r/c", "").await;
    assert_eq!(status, 426);
    assert!(body.contains("upgrade_required"), "{body}");
    let (status, _) = http_get(app.addr, "/ws/r/c/extra", "").await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test]
async fn an_oversized_frame_closes_with_1009_and_others_carry_on() {
    let app = spawn_app_with(|s| s.limits.max_frame_bytes = 1024).await;
    let (mut dev, _) = app.connect("big", "dev", "device").await;
    let (mut other, _) = app.connect("big", "dev2", "device").await;
    let (mut dash, _) = app.connect("big", "dash", "dashboard").await;
    let huge = format!(
        r#"{{"type":"reading","metric":"t","value":1,"pad":"{}"}}"#,
        "x".repeat(4096)
    );
    dev.send_text(&huge).await;
    let (code, reason) = dev.recv_close().await;
    assert_eq!(u16::from(code), 1009);
    assert_eq!(reason, "frame too large");
    other.reading("t", 2.0, 1).await;
    assert_eq!(dash.recv_type("reading").await["device"], "dev2");
    app.stop().await;
}

#[tokio::test]
async fn limits_on_rooms_and_members_answer_503() {
    let app = spawn_app_with(|s| {
        s.limits.max_rooms = 1;
        s.limits.max_members_per_room = 2;
    })
    .await;
    let (_a, _) = app.connect("one", "a", "dashboard").await;
    let (_b, _) = app.connect("one", "b", "dashboard").await;
    let (status, body) = refused(&app.ws_url("one", "c", "")).await;
    assert_eq!((status, body["error"].as_str()), (503, Some("room_full")));
    let (status, body) = refused(&app.ws_url("two", "a", "")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (503, Some("too_many_rooms"))
    );
    // Replacing an existing member is not a new member.
    let (_a2, _) = app.connect("one", "a", "dashboard").await;
    app.stop().await;
}

#[tokio::test]
async fn past_the_connection_cap_new_connections_get_503_and_others_carry_on() {
    let app = spawn_app_with(|s| s.limits.max_connections = 2).await;
    let (mut dash, _) = app.connect("cap", "dash", "dashboard").await;
    let (mut dev, _) = app.connect("cap", "dev", "device").await;
    let (status, body) = refused(&app.ws_url("cap", "third", "")).await;
    assert_eq!(status, 503);
    assert_eq!(body["error"], "server_full");
    dev.reading("t", 1.0, 1).await;
    assert_eq!(dash.recv_type("reading").await["value"], 1.0);
    app.stop().await;
}

#[tokio::test]
async fn a_flood_of_garbage_gets_detailed_errors_up_to_the_limit_then_one_notice() {
    let app = spawn_app_with(|s| {
        s.limits.rate_per_sec = 1.0;
        s.limits.rate_burst = 5.0;
    })
    .await;
    let (mut dev, _) = app.connect("g", "dev", "device").await;
    for _ in 0..50 {
        dev.send_text("{garbage").await;
    }
    for _ in 0..5 {
        assert_eq!(next_error(&mut dev).await.0, "invalid_json");
    }
    assert_eq!(next_error(&mut dev).await.0, "rate_limited");
    dev.expect_silence(300).await;
    // /metrics tells the frames sent from the messages that got none: 5 detailed errors
    // and 1 notice sent, the other 45 invalid messages suppressed (as of 1 s, the notice
    // interval; the bucket refills 1 token/s, so allow one more of each).
    let text = app.get("/metrics").await.1;
    let value = |series: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    let sent = value("telehub_errors_total{code=\"invalid_json\"}");
    let notices = value("telehub_errors_total{code=\"rate_limited\"}");
    let suppressed = value("telehub_errors_suppressed_total{code=\"invalid_json\"}");
    assert!((5..=6).contains(&sent), "{text}");
    assert!((1..=2).contains(&notices), "{text}");
    assert_eq!(sent + suppressed, 50, "{text}");
    app.stop().await;
}
