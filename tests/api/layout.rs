//! `GET`/`PUT /api/rooms/{room}/layout` against a real hub: a saved set comes back as
//! saved, bad documents get a 400 that names the field, a body past the cap gets 413,
//! an empty set resets the room, and with auth on only dashboard and admin tokens save.

use serde_json::{json, Value};

use crate::auth::token_hub;
use crate::helpers::{http_get, spawn_app};
use crate::tokens::{bearer, tok};

/// `PUT path` with a JSON `body` and `extra_headers`: (status, body as JSON).
pub(crate) async fn put(
    addr: std::net::SocketAddr,
    path: &str,
    body: &str,
    extra_headers: &str,
) -> (u16, Value) {
    let r = telehub_testkit::http::request(addr, "PUT", path, extra_headers, body).await;
    (
        r.status,
        serde_json::from_slice(&r.body).unwrap_or(Value::Null),
    )
}

async fn get(addr: std::net::SocketAddr, path: &str, headers: &str) -> (u16, Value) {
    let (status, body) = http_get(addr, path, headers).await;
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

fn wall() -> Value {
    json!({"default": "wall", "layouts": [
        {"name": "wall", "auto": false, "hidden_devices": ["spare-1"], "panels": [
            {"kind": "timeseries", "title": "Both rooms", "pinned": true, "size": "wide",
             "series": [{"metric": "temperature", "device": "t1"},
                        {"metric": "temperature", "device": "t2"}]},
            {"kind": "gauge", "min": 0.0, "max": 100.0, "series": [{"metric": "humidity"}]}]},
        {"name": "doors", "panels": [{"kind": "timeline", "series": [{"metric": "open"}]}]}]})
}

#[tokio::test]
async fn a_saved_layout_comes_back_and_an_empty_set_resets_the_room() {
    // Arrange
    let app = spawn_app().await;
    let (status, fresh) = get(app.addr, "/api/rooms/lab/layout", "").await;
    assert_eq!(status, 200, "{fresh}");
    assert_eq!(fresh["layouts"], json!([]));
    assert_eq!(fresh["default"], Value::Null);

    // Act
    let (status, saved) = put(app.addr, "/api/rooms/lab/layout", &wall().to_string(), "").await;

    // Assert
    assert_eq!((status, &saved), (200, &json!({"saved": 2})));
    let (_, back) = get(app.addr, "/api/rooms/lab/layout", "").await;
    assert_eq!(back["default"], "wall");
    assert_eq!(back["layouts"][0]["panels"][0]["series"][1]["device"], "t2");
    assert_eq!(back["layouts"][1]["auto"], true, "auto defaults to true");
    assert!(back["updated_ms"].as_i64().unwrap() > 0);
    // Other rooms are untouched.
    let (_, other) = get(app.addr, "/api/rooms/office/layout", "").await;
    assert_eq!(other["layouts"], json!([]));

    let (status, _) = put(app.addr, "/api/rooms/lab/layout", r#"{"layouts":[]}"#, "").await;
    assert_eq!(status, 200);
    let (_, reset) = get(app.addr, "/api/rooms/lab/layout", "").await;
    assert_eq!(reset["layouts"], json!([]));
    assert_eq!(reset["updated_ms"], Value::Null);
    app.stop().await;
}

#[tokio::test]
async fn bad_layouts_get_a_400_naming_the_field_and_big_ones_a_413() {
    let app = spawn_app().await;
    let cases = [
        ("not json", "invalid_layout", "expected"),
        (
            r#"{"layouts":[{"name":"has space"}]}"#,
            "invalid_layout",
            "layouts[0].name",
        ),
        (
            r#"{"layouts":[{"name":"a","panels":[{"kind":"pie","series":[{"metric":"m"}]}]}]}"#,
            "invalid_layout",
            "unknown variant `pie`",
        ),
        (
            r#"{"layouts":[{"name":"a","panels":[{"kind":"stat","series":[]}]}]}"#,
            "invalid_layout",
            "layouts[0].panels[0].series",
        ),
        (
            r#"{"default":"nope","layouts":[{"name":"a"}]}"#,
            "invalid_layout",
            "default",
        ),
        (
            r#"{"layouts":[],"colour":"red"}"#,
            "invalid_layout",
            "unknown field `colour`",
        ),
    ];
    for (body, code, says) in cases {
        let (status, err) = put(app.addr, "/api/rooms/lab/layout", body, "").await;
        assert_eq!(status, 400, "{body}: {err}");
        assert_eq!(err["error"], code, "{body}: {err}");
        assert!(
            err["message"].as_str().unwrap().contains(says),
            "{body}: {err}"
        );
    }
    let many: Vec<Value> = (0..17).map(|i| json!({"name": format!("l{i}")})).collect();
    let (status, err) = put(
        app.addr,
        "/api/rooms/lab/layout",
        &json!({"layouts": many}).to_string(),
        "",
    )
    .await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_layout")),
        "{err}"
    );

    let huge = json!({"layouts": [{"name": "a", "hidden_metrics": vec!["m".repeat(60); 1200]}]});
    let (status, err) = put(app.addr, "/api/rooms/lab/layout", &huge.to_string(), "").await;
    assert_eq!(
        (status, err["error"].as_str()),
        (413, Some("layout_too_large")),
        "{err}"
    );

    let (status, err) = put(
        app.addr,
        "/api/rooms/bad%20room/layout",
        &wall().to_string(),
        "",
    )
    .await;
    assert_eq!(status, 400, "{err}");

    // Nothing was saved, and each refusal was counted.
    let (_, back) = get(app.addr, "/api/rooms/lab/layout", "").await;
    assert_eq!(back["layouts"], json!([]));
    let (_, metrics) = http_get(app.addr, "/metrics", "").await;
    assert!(
        metrics.contains(r#"telehub_layout_refused_total{reason="invalid"} 7"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"telehub_layout_refused_total{reason="too_large"} 1"#),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn with_auth_dashboards_and_admins_save_and_devices_may_not() {
    let app = token_hub().await;
    let path = "/api/rooms/lab/layout";
    let body = wall().to_string();
    let (status, _) = put(app.addr, path, &body, "").await;
    assert_eq!(status, 401);
    let device = bearer(&tok("t1", "device", &["lab"]));
    let (status, err) = put(app.addr, path, &body, &device).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (403, Some("forbidden")),
        "{err}"
    );
    assert!(err["message"].as_str().unwrap().contains("role"), "{err}");
    let elsewhere = bearer(&tok("wall", "dashboard", &["office"]));
    let (status, _) = put(app.addr, path, &body, &elsewhere).await;
    assert_eq!(status, 403);
    let dashboard = bearer(&tok("wall", "dashboard", &["lab"]));
    let (status, _) = put(app.addr, path, &body, &dashboard).await;
    assert_eq!(status, 200);
    let admin = bearer(&tok("ops", "admin", &[]));
    let (status, _) = put(app.addr, path, &body, &admin).await;
    assert_eq!(status, 200);
    // A device may read the layout of its room (it may read the room).
    let (status, back) = get(app.addr, path, &device).await;
    assert_eq!((status, back["default"].as_str()), (200, Some("wall")));
    app.stop().await;
}
