//! `[auth] mode = "token"` end to end, against a real hub over real sockets: the
//! upgrade's answers (401, 403, 400), the first-frame `auth` of browsers, expiry and
//! refresh, eviction by id, the Origin check, REST and `/metrics` access, key rotation
//! and `telehub token`.

use std::time::Duration;

use serde_json::{json, Value};
use telehub::{AuthMode, Settings};
use telehub_testkit::ws::refusal;

use crate::helpers::{http_get, spawn_app_with, Client, Polled, TestApp};
use crate::tokens::{bearer, claims, key, now_s as now, sign, tok, SECRET};

const OLD_SECRET: &str = "test-secret-old-at-least-32-bytes-long!";

/// Token mode with two keys: `main` and `old` (a rotation in progress).
fn token_mode(s: &mut Settings) {
    s.auth.mode = AuthMode::Token;
    s.auth.keys = vec![key("main", SECRET), key("old", OLD_SECRET)];
}

pub(crate) async fn token_hub() -> TestApp {
    spawn_app_with(token_mode).await
}

/// The status and JSON `error` of a refused upgrade.
async fn refused(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let err = match Client::connect_with_headers(url, headers).await {
        Ok(_) => panic!("{url}: the upgrade was accepted"),
        Err(e) => e,
    };
    let (status, body) = refusal(&err).unwrap_or_else(|| panic!("not an HTTP refusal: {err}"));
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("JSON body: {body}"));
    (status, v["error"].as_str().unwrap_or_default().to_string())
}

async fn refused_bearer(url: &str, token: &str) -> (u16, String) {
    refused(url, &[("authorization", &format!("Bearer {token}"))]).await
}

/// Opens `url` as a browser would: with the hub's own `Origin` and no `Authorization`.
async fn browser(app: &TestApp, url: &str) -> Client {
    let origin = format!("http://{}", app.addr);
    Client::connect_with_headers(url, &[("origin", &origin)])
        .await
        .expect("upgrade")
}

/// Connects with a bearer token and reads the welcome.
async fn connect(app: &TestApp, room: &str, client: &str, query: &str, token: &str) -> Client {
    let mut c = Client::connect_bearer(&app.ws_url(room, client, query), token)
        .await
        .expect("connect");
    c.recv_type("welcome").await;
    c
}

/// The close code and reason a client gets next.
async fn close_of(c: &mut Client) -> (u16, String) {
    let (code, reason) = c.recv_close().await;
    (u16::from(code), reason)
}

#[tokio::test]
async fn a_bearer_token_with_its_room_role_and_id_connects() {
    let app = token_hub().await;
    let mut dev = connect(
        &app,
        "greenhouse-1",
        "t1",
        "role=device&acks=true",
        &tok("t1", "device", &["greenhouse-*"]),
    )
    .await;
    dev.reading("temperature", 21.5, 1).await;
    assert_eq!(dev.recv_type("accepted").await["seq"], 1);
    app.stop().await;
}

#[tokio::test]
async fn no_bad_signature_expired_and_malformed_tokens_are_401() {
    let app = token_hub().await;
    let url = app.ws_url("greenhouse-1", "t1", "role=device");
    // No token and no Origin (a device or a script, not a browser): refused at once.
    assert_eq!(refused(&url, &[]).await, (401, "unauthorized".into()));
    let c = claims("t1", "device", &["greenhouse-*"], 3600);
    let forged = sign(Some("main"), "some-other-secret-that-is-32-bytes-long", &c);
    assert_eq!(
        refused_bearer(&url, &forged).await,
        (401, "unauthorized".into())
    );
    let expired = sign(Some("main"), SECRET, &claims("t1", "device", &["*"], -120));
    assert_eq!(
        refused_bearer(&url, &expired).await,
        (401, "unauthorized".into())
    );
    assert_eq!(
        refused_bearer(&url, "not.a.jwt").await,
        (401, "unauthorized".into())
    );
    assert_eq!(
        refused(&url, &[("authorization", "Basic dDE6cHc=")]).await,
        (401, "unauthorized".into())
    );
    app.stop().await;
}

#[tokio::test]
async fn wrong_room_client_id_or_role_is_403() {
    let app = token_hub().await;
    let t1 = tok("t1", "device", &["greenhouse-*"]);
    let room = app.ws_url("kitchen", "t1", "role=device");
    assert_eq!(refused_bearer(&room, &t1).await, (403, "forbidden".into()));
    let id = app.ws_url("greenhouse-1", "t2", "role=device");
    assert_eq!(refused_bearer(&id, &t1).await, (403, "forbidden".into()));
    let role = app.ws_url("greenhouse-1", "t1", "role=dashboard");
    assert_eq!(refused_bearer(&role, &t1).await, (403, "forbidden".into()));
    // A dashboard token cannot publish either.
    let dash = tok("alice", "dashboard", &["greenhouse-*"]);
    let as_device = app.ws_url("greenhouse-1", "alice", "role=device");
    assert_eq!(
        refused_bearer(&as_device, &dash).await,
        (403, "forbidden".into())
    );
    app.stop().await;
}

#[tokio::test]
async fn tokens_in_the_query_string_are_400() {
    let app = token_hub().await;
    let t1 = tok("t1", "device", &["greenhouse-*"]);
    for name in ["token", "access_token", "jwt"] {
        let url = app.ws_url("greenhouse-1", "t1", &format!("role=device&{name}={t1}"));
        assert_eq!(
            refused_bearer(&url, &t1).await,
            (400, "token_in_query".into()),
            "{name}"
        );
        let (status, body) = http_get(app.addr, &format!("/api/rooms?{name}={t1}"), "").await;
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("token_in_query"), "{body}");
    }
    app.stop().await;
}

#[tokio::test]
async fn an_eviction_by_id_needs_a_token_for_that_id() {
    let app = token_hub().await;
    let mut real = connect(
        &app,
        "greenhouse-1",
        "t1",
        "role=device&acks=true",
        &tok("t1", "device", &["greenhouse-*"]),
    )
    .await;
    let attacker = tok("t2", "device", &["greenhouse-*"]);
    let url = app.ws_url("greenhouse-1", "t1", "role=device");
    assert_eq!(
        refused_bearer(&url, &attacker).await,
        (403, "forbidden".into())
    );
    // The first-frame path refuses the same token, before any join.
    let mut c = browser(&app, &url).await;
    c.send_json(json!({"type":"auth","token": attacker})).await;
    assert_eq!(close_of(&mut c).await, (1008, "forbidden".into()));
    // A dashboard token whose sub is the device's id cannot take the device's place.
    let dash = tok("t1", "dashboard", &["greenhouse-*"]);
    let as_dash = app.ws_url("greenhouse-1", "t1", "role=dashboard");
    assert_eq!(
        refused_bearer(&as_dash, &dash).await,
        (403, "forbidden".into())
    );
    // The real device was never replaced: it still publishes on the same connection.
    real.reading("temperature", 1.0, 7).await;
    let next = real.recv_json().await;
    assert_eq!(next["type"], "accepted", "{next}");
    app.stop().await;
}

#[tokio::test]
async fn first_frame_auth_sends_nothing_before_and_joins_after() {
    let app = token_hub().await;
    let mut dev = connect(
        &app,
        "greenhouse-1",
        "t1",
        "role=device",
        &tok("t1", "device", &["greenhouse-*"]),
    )
    .await;
    let url = app.ws_url("greenhouse-1", "alice.tab1", "role=dashboard");
    let mut dash = browser(&app, &url).await;
    // No welcome for the browser and no presence for the room until the token.
    dash.expect_silence(300).await;
    dev.expect_silence(100).await;
    dash.send_json(json!({"type":"auth","token": tok("alice", "dashboard", &["greenhouse-*"])}))
        .await;
    let welcome = dash.recv_type("welcome").await;
    assert_eq!(welcome["client"], "alice.tab1");
    dev.reading("temperature", 20.0, 1).await;
    assert_eq!(dash.recv_type("reading").await["value"], 20.0);
    app.stop().await;
}

#[tokio::test]
async fn without_a_first_frame_token_the_hub_closes_with_1008() {
    let app = token_hub().await;
    let url = app.ws_url("greenhouse-1", "alice", "role=dashboard");
    // Silence: closed once the 5 s for the auth frame are over, having sent nothing.
    let mut quiet = browser(&app, &url).await;
    assert_eq!(close_of(&mut quiet).await, (1008, "unauthorized".into()));
    // Something else first: closed at once.
    let mut other = browser(&app, &url).await;
    other.reading("temperature", 1.0, 1).await;
    assert_eq!(close_of(&mut other).await, (1008, "unauthorized".into()));
    // A bad token in the frame.
    let mut bad = browser(&app, &url).await;
    bad.send_json(json!({"type":"auth","token":"x.y.z"})).await;
    assert_eq!(close_of(&mut bad).await, (1008, "unauthorized".into()));
    app.stop().await;
}

#[tokio::test]
async fn a_refresh_before_expiry_keeps_the_connection() {
    let app = token_hub().await;
    let short = sign(
        Some("main"),
        SECRET,
        &claims("t1", "device", &["greenhouse-*"], 5),
    );
    let mut dev = connect(&app, "greenhouse-1", "t1", "role=device&acks=true", &short).await;
    // exp is under 30 s away: the warning comes at once.
    let warning = dev.recv_type("token_expiring").await;
    assert!(
        warning["exp"].as_i64().is_some_and(|e| e <= now() + 5),
        "{warning}"
    );
    dev.send_json(json!({"type":"auth","token": tok("t1", "device", &["greenhouse-*", "x"])}))
        .await;
    // Past the first token's exp, the connection still works.
    tokio::time::sleep(Duration::from_secs(6)).await;
    dev.reading("temperature", 2.0, 9).await;
    let next = dev.recv_json().await;
    assert_eq!(next["type"], "accepted", "{next}");
    app.stop().await;
}

#[tokio::test]
async fn without_a_refresh_the_connection_closes_with_4001() {
    let app = token_hub().await;
    let short = sign(
        Some("main"),
        SECRET,
        &claims("t1", "device", &["greenhouse-*"], 3),
    );
    let mut dev = connect(&app, "greenhouse-1", "t1", "role=device", &short).await;
    dev.recv_type("token_expiring").await;
    assert_eq!(close_of(&mut dev).await, (4001, "token expired".into()));
    app.stop().await;
}

#[tokio::test]
async fn a_narrower_or_foreign_refresh_closes_with_1008() {
    let app = token_hub().await;
    let t = tok("alice", "dashboard", &["greenhouse-*"]);
    let mut dash = connect(&app, "greenhouse-1", "alice", "role=dashboard", &t).await;
    dash.send_json(json!({"type":"auth","token": tok("alice", "dashboard", &["greenhouse-1"])}))
        .await;
    assert_eq!(close_of(&mut dash).await, (1008, "forbidden".into()));
    let mut dash = connect(&app, "greenhouse-1", "alice", "role=dashboard", &t).await;
    dash.send_json(json!({"type":"auth","token": tok("bob", "dashboard", &["*"])}))
        .await;
    assert_eq!(close_of(&mut dash).await, (1008, "forbidden".into()));
    app.stop().await;
}

#[tokio::test]
async fn a_foreign_origin_is_403_in_every_mode() {
    for app in [token_hub().await, spawn_app_with(|_| {}).await] {
        let url = app.ws_url("greenhouse-1", "alice", "role=dashboard");
        assert_eq!(
            refused(&url, &[("origin", "http://evil.example")]).await,
            (403, "origin_not_allowed".into())
        );
        // The hub's own origin passes the check.
        let own = format!("http://{}", app.addr);
        let c = Client::connect_with_headers(&url, &[("origin", &own)]).await;
        assert!(c.is_ok(), "same origin refused");
        app.stop().await;
    }
    let app =
        spawn_app_with(|s| s.auth.allowed_origins = vec!["https://dash.example".into()]).await;
    let url = app.ws_url("greenhouse-1", "alice", "role=dashboard");
    let mut c = Client::connect_with_headers(&url, &[("origin", "https://dash.example")])
        .await
        .expect("listed origin");
    c.recv_type("welcome").await;
    assert_eq!(
        refused(&url, &[("origin", &format!("http://{}", app.addr))]).await,
        (403, "origin_not_allowed".into())
    );
    app.stop().await;
}

/// One raw request with its own `Host` (and `Origin`), as a browser whose page name was
/// rebound to the hub would send it: the status and the body.
async fn raw_request(app: &TestApp, path: &str, host: &str, extra: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{extra}\r\n");
    let r = telehub_testkit::http::raw(app.addr, req.as_bytes()).await;
    (r.status, format!("{}\r\n\r\n{}", r.head, r.text()))
}

#[tokio::test]
async fn a_rebound_host_name_is_403_on_rest_and_upgrades_of_a_loopback_hub() {
    let app = spawn_app_with(|_| {}).await;
    let port = app.addr.port();
    let evil = format!("evil.example:{port}");
    let (status, body) = raw_request(&app, "/api/rooms", &evil, "").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("host_not_allowed"), "{body}");
    // The same-origin check alone would pass this upgrade: Origin and Host agree.
    let upgrade = format!(
        "Origin: http://{evil}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    );
    let (status, body) = raw_request(&app, "/ws/lab/spy?role=dashboard", &evil, &upgrade).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("host_not_allowed"), "{body}");
    // The names a local user types pass.
    for host in [format!("localhost:{port}"), format!("127.0.0.1:{port}")] {
        let (status, body) = raw_request(&app, "/api/rooms", &host, "").await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "telehub_auth_refused_total{reason=\"host_not_allowed\"} 2"),
        "{metrics}"
    );
    app.stop().await;
    // Named in auth.allowed_hosts, a proxied name passes.
    let app = spawn_app_with(|s| s.auth.allowed_hosts = vec!["hub.example".into()]).await;
    let (status, body) = raw_request(&app, "/api/rooms", "hub.example", "").await;
    assert_eq!(status, 200, "{body}");
    app.stop().await;
}

#[tokio::test]
async fn rest_needs_a_token_and_shows_only_its_rooms() {
    let app = token_hub().await;
    let admin = tok("root", "admin", &[]);
    for (room, dev) in [("greenhouse-1", "g1"), ("kitchen", "k1")] {
        let mut c = connect(&app, room, dev, "role=device&acks=true", &admin).await;
        c.reading("temperature", 1.0, 1).await;
        c.recv_type("accepted").await;
    }
    let (status, body) = http_get(app.addr, "/api/rooms", "").await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("\"unauthorized\""), "{body}");
    let (status, _) = http_get(app.addr, "/api/rooms", &bearer("x.y.z")).await;
    assert_eq!(status, 401);
    let dash = tok("alice", "dashboard", &["greenhouse-*"]);
    let (status, body) = http_get(app.addr, "/api/rooms", &bearer(&dash)).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    let rooms: Vec<&str> = v["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .filter_map(|r| r["room"].as_str())
        .collect();
    assert_eq!(rooms, ["greenhouse-1"]);
    let (status, _) = http_get(app.addr, "/api/rooms", &bearer(&admin)).await;
    assert_eq!(status, 200);
    for path in [
        "/api/rooms/kitchen/series",
        "/api/rooms/kitchen/history?metric=temperature",
        "/api/rooms/kitchen/plot.svg?metric=temperature",
        "/api/rooms/nowhere/series",
    ] {
        let (status, body) = http_get(app.addr, path, &bearer(&dash)).await;
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains("\"forbidden\""), "{body}");
    }
    let (status, body) = http_get(app.addr, "/api/rooms/greenhouse-1/series", &bearer(&dash)).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = http_get(app.addr, "/api/rooms/greenhouse-1/series", "").await;
    assert_eq!(status, 401);
    let (status, _) = http_get(app.addr, "/api/bridges", "").await;
    assert_eq!(status, 401);
    let (status, body) = http_get(app.addr, "/healthz", "").await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let (status, _) = http_get(app.addr, "/api/nothing-here", &bearer(&dash)).await;
    assert_eq!(status, 404);
    app.stop().await;
}

#[tokio::test]
async fn metrics_need_an_admin_token_unless_public() {
    let app = token_hub().await;
    let forged = sign(
        Some("main"),
        OLD_SECRET,
        &claims("t1", "device", &["*"], 60),
    );
    let _ = refused_bearer(&app.ws_url("g", "t1", "role=device"), &forged).await;
    let (status, _) = http_get(app.addr, "/metrics", "").await;
    assert_eq!(status, 401);
    let (status, _) = http_get(
        app.addr,
        "/metrics",
        &bearer(&tok("a", "dashboard", &["*"])),
    )
    .await;
    assert_eq!(status, 403);
    let (status, text) = http_get(app.addr, "/metrics", &bearer(&tok("root", "admin", &[]))).await;
    assert_eq!(status, 200);
    let count = |line: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(line))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no `{line}` in\n{text}"))
    };
    assert!(count("telehub_auth_refused_total{reason=\"bad_signature\"}") >= 1);
    assert!(count("telehub_auth_refused_total{reason=\"missing_token\"}") >= 1);
    assert!(count("telehub_auth_refused_total{reason=\"not_admin\"}") >= 1);
    assert_eq!(
        count("telehub_auth_refused_total{reason=\"origin_not_allowed\"}"),
        0
    );
    assert!(count("telehub_connections_rejected_total{reason=\"unauthorized\"}") >= 1);
    app.stop().await;

    let public = spawn_app_with(|s| {
        token_mode(s);
        s.auth.public_metrics = true;
    })
    .await;
    let (status, _) = http_get(public.addr, "/metrics", "").await;
    assert_eq!(status, 200);
    public.stop().await;
}

#[tokio::test]
async fn keys_rotate_by_kid_and_without_kid_each_key_is_tried() {
    let app = token_hub().await;
    let c = claims("t1", "device", &["greenhouse-*"], 3600);
    let url = app.ws_url("greenhouse-1", "t1", "role=device");
    for t in [
        sign(Some("main"), SECRET, &c),
        sign(Some("old"), OLD_SECRET, &c),
        sign(None, OLD_SECRET, &c),
    ] {
        let mut dev = Client::connect_bearer(&url, &t)
            .await
            .expect("a rotated key");
        dev.recv_type("welcome").await;
        dev.close().await;
    }
    // The kid names the key: the other key's secret does not pass under it.
    let crossed = sign(Some("main"), OLD_SECRET, &c);
    assert_eq!(
        refused_bearer(&url, &crossed).await,
        (401, "unauthorized".into())
    );
    let unknown = sign(Some("retired"), SECRET, &c);
    assert_eq!(
        refused_bearer(&url, &unknown).await,
        (401, "unauthorized".into())
    );
    app.stop().await;
}

/// `telehub token` with a config file: its output is a token the hub accepts; without an
/// HS key it fails with exit code 2.
#[tokio::test]
async fn the_token_command_prints_a_token_the_hub_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("hub.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nmode = \"token\"\n[[auth.keys]]\nkid = \"main\"\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\n"
        ),
    )
    .expect("write config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_telehub"))
        .args([
            "token",
            "--sub",
            "t1",
            "--role",
            "device",
            "--rooms",
            "greenhouse-*",
        ])
        .args(["--ttl", "1h", "--config"])
        .arg(&config)
        .env_remove("TELEHUB_CONFIG")
        .output()
        .expect("run telehub token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).expect("UTF-8");
    let token = token.trim();
    let app = token_hub().await;
    let mut dev = connect(&app, "greenhouse-2", "t1", "role=device", token).await;
    assert!(matches!(
        dev.poll_json(Duration::from_millis(100)).await,
        Polled::Quiet
    ));
    app.stop().await;

    std::fs::write(&config, "[auth]\nmode = \"none\"\n").expect("write config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_telehub"))
        .args(["token", "--sub", "t1", "--role", "device", "--config"])
        .arg(&config)
        .env_remove("TELEHUB_CONFIG")
        .output()
        .expect("run telehub token");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HS256"));

    // `serve` with token mode and no key stops before listening, naming the key.
    std::fs::write(&config, "[auth]\nmode = \"token\"\n").expect("write config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_telehub"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .env_remove("TELEHUB_CONFIG")
        .output()
        .expect("run telehub serve");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth.keys"));
}

/// A token-mode config without keys, or with a bad one, stops start-up naming the key.
#[test]
fn bad_auth_config_names_the_key() {
    let load = |text: &str| {
        Settings::from_sources(text, "hub.toml", Vec::<(String, String)>::new())
            .expect_err("refused")
            .to_string()
    };
    assert!(load("[auth]\nmode = \"token\"\n").contains("auth.keys"));
    let short = "[auth]\nmode = \"token\"\n[[auth.keys]]\nkid = \"k\"\nalgorithm = \"HS256\"\nsecret = \"short\"\n";
    let err = load(short);
    assert!(err.contains("auth.keys[0].secret"), "{err}");
    assert!(
        !err.contains("short\""),
        "the secret is not repeated: {err}"
    );
    assert!(
        load("[auth]\nallowed_origins = [\"dash.example\"]\n").contains("auth.allowed_origins[0]")
    );
    assert!(load("[auth]\nmode = \"open\"\n").contains("auth.mode"));
}

/// With `mode = "none"` an `auth` frame (a dashboard that always signs in) is ignored:
/// no error, and the connection carries on as before.
#[tokio::test]
async fn an_open_hub_ignores_auth_frames() {
    let app = spawn_app_with(|_| {}).await;
    let (mut dash, _) = app.connect("greenhouse-1", "screen", "dashboard").await;
    dash.send_json(json!({"type":"auth","token":"anything"}))
        .await;
    dash.send_json(json!({"type":"command","id":"c1","to":"nobody","name":"reboot"}))
        .await;
    let (code, _) = dash.next_error().await;
    assert_eq!(code, "unknown_device");
}

#[tokio::test]
async fn a_token_is_refused_from_the_second_of_its_exp() {
    // RFC 7519 4.1.4: the token is valid only *before* `exp`. A token whose `exp` is the
    // current second was accepted (jsonwebtoken rejects only `exp < now`), and the
    // session then closed it at once with 4001: a client reconnecting after a 4001 with
    // the same token looped until the second ended.
    let app = token_hub().await;
    let url = app.ws_url("greenhouse-1", "t1", "role=device");
    let at_exp = sign(Some("main"), SECRET, &claims("t1", "device", &["*"], 0));
    assert_eq!(
        refused_bearer(&url, &at_exp).await,
        (401, "unauthorized".into())
    );
    app.stop().await;
}

/// Review findings: a token not valid yet (`nbf`) is refused; a dashboard `sub` with a
/// dot is refused and a dashboard may not take another user's dotted id; `/api/bridges`
/// (broker addresses and client ids) is for admins only; a token with an absurd `exp`
/// does not bring its session down.
#[tokio::test]
async fn not_yet_valid_dotted_and_absurd_tokens_and_bridges_need_admin() {
    let app = token_hub().await;
    let url = app.ws_url("greenhouse-1", "t1", "role=device");
    let mut c = claims("t1", "device", &["greenhouse-*"], 3600);
    c["nbf"] = json!(now() + 600);
    assert_eq!(
        refused_bearer(&url, &sign(Some("main"), SECRET, &c)).await,
        (401, "unauthorized".into())
    );
    // `john` may be `john` or `john.TAB`, never `john.doe.TAB` (user `john.doe`'s tab);
    // and a dashboard `sub` cannot hold a dot at all.
    let john = tok("john", "dashboard", &["greenhouse-*"]);
    let url = app.ws_url("greenhouse-1", "john.doe.tab1", "role=dashboard");
    assert_eq!(refused_bearer(&url, &john).await, (403, "forbidden".into()));
    let dotted = tok("john.doe", "dashboard", &["greenhouse-*"]);
    let url = app.ws_url("greenhouse-1", "john.doe", "role=dashboard");
    assert_eq!(
        refused_bearer(&url, &dotted).await,
        (401, "unauthorized".into())
    );
    let url = app.ws_url("greenhouse-1", "john.tab1", "role=dashboard");
    let _ok = Client::connect_bearer(&url, &john)
        .await
        .expect("john's own tab");

    let (status, _) = http_get(app.addr, "/api/bridges", &bearer(&john)).await;
    assert_eq!(status, 403);
    let (status, _) = http_get(
        app.addr,
        "/api/bridges",
        &bearer(&tok("root", "admin", &[])),
    )
    .await;
    assert_eq!(status, 200);

    // exp far past what a clock can hold: accepted, and the session keeps working.
    let far = sign(
        Some("main"),
        SECRET,
        &json!({"sub":"t2","role":"device","rooms":["greenhouse-*"],"exp": u64::MAX / 2,
                "iss":"telehub","aud":"telehub"}),
    );
    let url = app.ws_url("greenhouse-1", "t2", "role=device");
    let mut dev = Client::connect_bearer(&url, &far).await.expect("far exp");
    let _ = dev.recv_type("welcome").await;
    dev.send_json(json!({"type":"reading","metric":"x","value":1.0}))
        .await;
    dev.expect_silence(300).await;
    app.stop().await;
}

/// A client with a valid token cannot make the hub verify signatures in a loop: refreshes
/// are verified at most once a second, and past the rate limit not at all.
#[tokio::test]
async fn a_flood_of_auth_frames_is_throttled_not_verified() {
    let app = token_hub().await;
    let token = tok("t1", "device", &["greenhouse-*"]);
    let url = app.ws_url("greenhouse-1", "t1", "role=device");
    let mut dev = Client::connect_bearer(&url, &token)
        .await
        .expect("connects");
    let _ = dev.recv_type("welcome").await;
    for _ in 0..200 {
        dev.send_json(json!({"type":"auth","token": token})).await;
    }
    // The connection survives (a valid refresh, then dropped duplicates) and says so once.
    let (code, _) = crate::helpers::next_error(&mut dev).await;
    assert_eq!(code, "rate_limited");
    let (_, metrics) = http_get(app.addr, "/metrics", &bearer(&tok("root", "admin", &[]))).await;
    let suppressed: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("telehub_errors_suppressed_total{code=\"rate_limited\"}"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(suppressed >= 190, "suppressed {suppressed}\n");
    app.stop().await;
}

/// In token mode a bridged MQTT device never evicts a WebSocket device that proved its id
/// with a token: the broker's word is refused (counted as rejected), the WebSocket device
/// stays connected and its readings flow.
#[tokio::test]
async fn a_bridged_device_cannot_evict_a_token_holding_websocket_device() {
    let broker = telehub_testkit::mosquitto::Mosquitto::start();
    let port = broker.port;
    let app = spawn_app_with(move |s: &mut Settings| {
        token_mode(s);
        let text = format!(
            "[[bridges]]\nname = \"b\"\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"auth-evict\"\n"
        );
        s.mqtt = toml::from_str(&text).expect("bridge config");
    })
    .await;
    let admin = bearer(&tok("root", "admin", &[]));
    let bridge = |body: &str| -> Value {
        let v: Value = serde_json::from_str(body).expect("JSON");
        v["bridges"][0].clone()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = http_get(app.addr, "/api/bridges", &admin).await;
        if bridge(&body)["subscribed"] == true {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = app.ws_url("lab", "t1", "role=device");
    let mut dev = Client::connect_bearer(&url, &tok("t1", "device", &["lab"]))
        .await
        .expect("device connects");
    let _ = dev.recv_type("welcome").await;
    let sensor = telehub_testkit::mqtt::TestClient::connect(port, "auth-evict-sensor");
    sensor.publish("telehub/lab/t1/temperature", "9").await;
    loop {
        let (_, body) = http_get(app.addr, "/api/bridges", &admin).await;
        if bridge(&body)["rejected"] == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Still connected: no close 4000, and the hub still lists it over its WebSocket.
    dev.expect_silence(300).await;
    let (_, body) = http_get(app.addr, "/api/rooms", &admin).await;
    let rooms: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        rooms["rooms"][0]["devices"],
        json!([{"client":"t1","via":"ws"}]),
        "{rooms}"
    );
    app.stop().await;
}
