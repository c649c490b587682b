//! Alert notifications end to end: a webhook sink against a real HTTP server the test
//! starts (retries while it is down and when it answers 503, the HMAC signature, no
//! duplicate after a restart with the alert still firing, the secret shown nowhere), an
//! MQTT sink publishing to a real Mosquitto through a bridge, and silences (stored,
//! listed, admin only with auth on, keeping transitions from the sinks but not from the
//! dashboards).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::helpers::{hub_process, spawn_app_with, Client, TestApp, WAIT};
use telehub_testkit::http::{get, http_get, http_post, http_request, post, Framing};
use telehub_testkit::mosquitto::Mosquitto;
use telehub_testkit::mqtt::TestClient;

const SECRET: &str = "webhook-secret-9f3a";

/// One request the webhook server got.
#[derive(Debug)]
struct Hook {
    path: String,
    signature: Option<String>,
    body: Vec<u8>,
}

impl Hook {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// A real HTTP/1.1 server on `addr`: every request goes to the channel; the first
/// `fail_first` are answered 503, the rest 200.
async fn webhook_server(addr: SocketAddr, fail_first: usize) -> mpsc::Receiver<Hook> {
    let listener = TcpListener::bind(addr)
        .await
        .expect("bind the webhook server");
    serve_webhooks(listener, fail_first)
}

/// [`webhook_server`] on a listener already bound (no window for another to take it).
fn serve_webhooks(listener: TcpListener, fail_first: usize) -> mpsc::Receiver<Hook> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut answered = 0usize;
        while let Ok((mut sock, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let hook = loop {
                let mut chunk = [0u8; 4096];
                let n = match sock.read(&mut chunk).await {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                let mut headers = [httparse::EMPTY_HEADER; 32];
                let mut req = httparse::Request::new(&mut headers);
                let Ok(httparse::Status::Complete(head)) = req.parse(&buf) else {
                    continue;
                };
                let header = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).to_string())
                };
                let len: usize = header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if buf.len() < head + len {
                    continue;
                }
                break Some(Hook {
                    path: req.path.unwrap_or_default().to_string(),
                    signature: header("x-telehub-signature"),
                    body: buf[head..head + len].to_vec(),
                });
            };
            let Some(hook) = hook else { continue };
            let status = if answered < fail_first {
                "503 Service Unavailable"
            } else {
                "200 OK"
            };
            answered += 1;
            let _ = sock
                .write_all(
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .as_bytes(),
                )
                .await;
            let _ = tx.send(hook).await;
        }
    });
    rx
}

async fn next_hook(rx: &mut mpsc::Receiver<Hook>) -> Hook {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a webhook request in time")
        .expect("the server runs")
}

/// A port nothing listens on (yet).
async fn free_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("addr")
}

fn signed(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("a key");
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256={hex}")
}

fn rules_and_sink(sink: &str) -> String {
    format!(
        r#"
[[alerts.rules]]
id = "hot"
room = "gh"
metric = "temperature"
above = 35.0
clear_below = 33.0
severity = "critical"

[[alerts.sinks]]
{sink}
"#
    )
}

/// GET /api/alerts/sinks at `addr`: the sinks.
async fn sinks_at(addr: SocketAddr) -> (Vec<Value>, String) {
    let (status, body) = http_get(addr, "/api/alerts/sinks", "").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    (v["sinks"].as_array().expect("sinks").clone(), body)
}

/// Polls the sinks until `done` holds for the first one.
async fn sink_until(addr: SocketAddr, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (sinks, _) = sinks_at(addr).await;
        if done(&sinks[0]) {
            return sinks[0].clone();
        }
        assert!(
            Instant::now() < deadline,
            "sink never got there: {}",
            sinks[0]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn send(dev: &mut Client, value: f64) {
    dev.send_json(json!({"type":"reading","metric":"temperature","value":value}))
        .await;
}

fn one_alert(hook: &Hook) -> Value {
    let v = hook.json();
    let alerts = v["alerts"].as_array().expect("alerts");
    assert_eq!(alerts.len(), 1, "{v}");
    alerts[0].clone()
}

#[tokio::test]
async fn a_webhook_sink_retries_while_its_server_is_down_signs_and_does_not_repeat_after_a_restart()
{
    let hook_addr = free_port().await;
    let data = tempfile::tempdir().expect("data dir");
    let config = rules_and_sink(&format!(
        "kind = \"webhook\"\nname = \"ops\"\nurl = \"http://{hook_addr}/hook?team=ops\"\nsecret = \"{SECRET}\"\n\
         backoff = \"100ms\"\nmax_backoff = \"200ms\"\nattempts = 1000\ntimeout = \"2s\""
    ));
    let mut hub = hub_process().config(config).data_dir(data.path()).start();
    let url = |c: &str| hub.ws_url("gh", c, "role=device");

    // Down: the firing transition is tried again and again, the error visible.
    let mut dev = Client::connect(&url("t1")).await.expect("device");
    dev.recv_type("welcome").await;
    send(&mut dev, 40.0).await;
    let down = sink_until(hub.addr(), |s| s["retried"].as_u64() >= Some(2)).await;
    assert_eq!(
        (down["name"].as_str(), down["kind"].as_str()),
        (Some("ops"), Some("webhook"))
    );
    assert_eq!(down["sent"], 0, "{down}");
    let message = down["last_error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("connect"), "{down}");
    assert_eq!(down["target"], format!("http://{hook_addr}/hook?…"));

    // Up, answering 503 once: that try is retried too, then the POST lands, signed.
    let mut hooks = webhook_server(hook_addr, 1).await;
    let refused = next_hook(&mut hooks).await;
    let delivered = next_hook(&mut hooks).await;
    assert_eq!(refused.body, delivered.body, "the same batch again");
    assert_eq!(delivered.path, "/hook?team=ops");
    assert_eq!(
        delivered.signature.as_deref(),
        Some(signed(&delivered.body).as_str())
    );
    let a = one_alert(&delivered);
    assert_eq!(
        (
            &a["type"],
            &a["rule"],
            &a["room"],
            &a["device"],
            &a["metric"],
            &a["state"],
            &a["value"],
            &a["severity"]
        ),
        (
            &json!("alert"),
            &json!("hot"),
            &json!("gh"),
            &json!("t1"),
            &json!("temperature"),
            &json!("firing"),
            &json!(40.0),
            &json!("critical")
        )
    );
    assert!(a["since"].as_i64().is_some(), "{a}");
    let up = sink_until(hub.addr(), |s| s["sent"] == 1).await;
    assert_eq!(
        (
            up["failed"].as_u64(),
            up["dropped"].as_u64(),
            up["queue"].as_i64()
        ),
        (Some(0), Some(0), Some(0))
    );

    // The secret is in no answer and no log line.
    let (_, sinks_body) = sinks_at(hub.addr()).await;
    let (_, metrics) = http_get(hub.addr(), "/metrics", "").await;
    assert!(
        metrics.contains("telehub_alert_notifications_sent_total{sink=\"ops\"} 1"),
        "{metrics}"
    );
    for text in [sinks_body, metrics, hub.log()] {
        assert!(!text.contains(SECRET), "the secret leaked: {text}");
    }

    // Restart with the alert firing: a reading that keeps it firing notifies nothing,
    // so the next POST is the resolution.
    drop(dev);
    assert_eq!(hub.stop().await.code(), Some(0));
    hub.restart();
    let mut dev = Client::connect(&hub.ws_url("gh", "t1", "role=device"))
        .await
        .expect("device");
    dev.recv_type("welcome").await;
    send(&mut dev, 41.0).await;
    send(&mut dev, 20.0).await;
    let after = next_hook(&mut hooks).await;
    assert_eq!(
        after.signature.as_deref(),
        Some(signed(&after.body).as_str())
    );
    let body = after.json();
    let states: Vec<&str> = body["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .map(|a| a["state"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(states, ["resolved"], "{body}");
    assert_eq!(hub.stop().await.code(), Some(0));
}

/// The outbox: a notification the hub had not delivered when it stopped (its webhook was
/// down) is delivered after the restart, once; the next restart has nothing left to send.
#[tokio::test]
async fn a_notification_not_delivered_before_a_stop_is_delivered_after_the_restart_once() {
    let hook_addr = free_port().await;
    let data = tempfile::tempdir().expect("data dir");
    let config = rules_and_sink(&format!(
        "kind = \"webhook\"\nname = \"ops\"\nurl = \"http://{hook_addr}/hook\"\n\
         backoff = \"100ms\"\nmax_backoff = \"200ms\"\nattempts = 1000\ntimeout = \"2s\""
    ));
    let mut hub = hub_process().config(config).data_dir(data.path()).start();

    // The webhook is down: the firing transition waits in its sink, retried.
    let mut dev = Client::connect(&hub.ws_url("gh", "t1", "role=device"))
        .await
        .expect("device");
    dev.recv_type("welcome").await;
    send(&mut dev, 40.0).await;
    let down = sink_until(hub.addr(), |s| s["retried"].as_u64() >= Some(1)).await;
    assert_eq!(down["sent"], 0, "{down}");
    drop(dev);
    assert_eq!(hub.stop().await.code(), Some(0));

    // Up now, and the hub back: the transition it had not delivered arrives.
    let mut hooks = webhook_server(hook_addr, 0).await;
    hub.restart();
    let a = one_alert(&next_hook(&mut hooks).await);
    assert_eq!(
        (&a["state"], &a["value"], &a["device"]),
        (&json!("firing"), &json!(40.0), &json!("t1")),
        "{a}"
    );
    let up = sink_until(hub.addr(), |s| s["sent"] == 1).await;
    assert_eq!(up["queue"], 0, "{up}");
    assert!(
        hub.log().contains("not delivered before the last stop"),
        "{}",
        hub.log()
    );
    // Still firing, not notified again: the next POST is the resolution.
    let mut dev = Client::connect(&hub.ws_url("gh", "t1", "role=device"))
        .await
        .expect("device");
    dev.recv_type("welcome").await;
    send(&mut dev, 20.0).await;
    let states: Vec<String> = next_hook(&mut hooks).await.json()["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .map(|a| a["state"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(states, ["resolved"]);
    sink_until(hub.addr(), |s| s["sent"] == 2).await;
    drop(dev);
    assert_eq!(hub.stop().await.code(), Some(0));

    // Everything was delivered: a third start sends nothing.
    hub.restart();
    let (sinks, _) = sinks_at(hub.addr()).await;
    assert_eq!(
        (&sinks[0]["sent"], &sinks[0]["queue"]),
        (&json!(0), &json!(0))
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(500), hooks.recv())
            .await
            .is_err(),
        "a notification was sent twice"
    );
    assert!(
        !hub.log().contains("not delivered before the last stop"),
        "{}",
        hub.log()
    );
    assert_eq!(hub.stop().await.code(), Some(0));
}

#[test]
fn a_bad_sink_stops_start_up_naming_it() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        rules_and_sink("kind = \"mqtt\"\nbridge = \"nowhere\""),
    )
    .expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_telehub"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .env("TELEHUB_HISTORY_PERSIST", "false")
        .output()
        .expect("run telehub");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("alerts.sinks[0]") && err.contains("nowhere"),
        "{err}"
    );
}

#[tokio::test]
async fn an_mqtt_sink_publishes_each_transition_on_the_bridged_broker() {
    let broker = Mosquitto::start();
    let mut watcher = TestClient::connect(broker.port, "alert-watcher");
    watcher.subscribe("telehub/alerts/#").await;
    let text = format!(
        "{}\n[[mqtt.bridges]]\nname = \"local\"\nurl = \"mqtt://127.0.0.1:{}\"\nclient_id = \"hub-alerts\"\n\
         reconnect_min_ms = 50\nreconnect_max_ms = 200\n",
        rules_and_sink("kind = \"mqtt\"\nbridge = \"local\"\nbackoff = \"100ms\"\nmax_backoff = \"200ms\""),
        broker.port
    );
    let settings = telehub::Settings::from_sources(&text, "test", Vec::new()).expect("valid");
    let app = spawn_app_with(move |s| {
        s.alerts = settings.alerts;
        s.mqtt = settings.mqtt;
    })
    .await;
    let (mut dev, _) = app.connect("gh", "t1", "device").await;

    send(&mut dev, 40.0).await;
    send(&mut dev, 20.0).await;
    let mut got = Vec::new();
    while got.len() < 2 {
        let p = watcher.next(WAIT).await.expect("an alert publish");
        let v: Value = serde_json::from_slice(&p.payload).expect("JSON");
        got.push((
            p.topic.clone(),
            v["state"].as_str().unwrap_or("").to_string(),
            v,
        ));
    }
    assert_eq!(
        got.iter()
            .map(|(t, s, _)| (t.as_str(), s.as_str()))
            .collect::<Vec<_>>(),
        [
            ("telehub/alerts/gh/hot", "firing"),
            ("telehub/alerts/gh/hot", "resolved")
        ]
    );
    let firing = &got[0].2;
    assert_eq!(
        (&firing["type"], &firing["device"], &firing["value"]),
        (&json!("alert"), &json!("t1"), &json!(40.0))
    );
    let s = sink_until(app.addr, |s| s["sent"] == 2).await;
    assert_eq!(
        (s["kind"].as_str(), s["target"].as_str()),
        (Some("mqtt"), Some("local/telehub/alerts/{room}/{rule}"))
    );
    app.stop().await;
}

async fn silence(app: &TestApp, body: Value) -> (u16, Value) {
    let (status, text) = http_post(app.addr, "/api/alerts/silences", &body.to_string()).await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_silence_keeps_transitions_from_the_sinks_but_not_from_dashboards() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let hook_addr = listener.local_addr().expect("addr");
    let mut hooks = serve_webhooks(listener, 0);
    let text = rules_and_sink(&format!(
        "kind = \"webhook\"\nurl = \"http://{hook_addr}/\""
    ));
    let settings = telehub::Settings::from_sources(&text, "test", Vec::new()).expect("valid");
    let app = spawn_app_with(move |s| {
        s.alerts = settings.alerts;
        s.mqtt = settings.mqtt;
    })
    .await;
    let (mut screen, _) = app.connect("gh", "screen", "dashboard").await;
    let (mut dev, _) = app.connect("gh", "t1", "device").await;

    // Refused: bad matchers, no end, unknown keys.
    let (status, v) = silence(&app, json!({"matchers":{"room":"g h"},"for":"1h"})).await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_silence")),
        "{v}"
    );
    let (status, v) = silence(&app, json!({"matchers":{"rule":"hot"}})).await;
    assert_eq!(status, 400, "{v}");
    let (status, v) = silence(
        &app,
        json!({"matchers":{"rule":"hot"},"for":"1h","who":"x"}),
    )
    .await;
    assert_eq!(
        (status, v["error"].as_str()),
        (400, Some("invalid_body")),
        "{v}"
    );

    let (status, made) = silence(
        &app,
        json!({"matchers":{"rule":"hot","room":"g*"},"for":"1h","by":"alice","comment":"maintenance"}),
    )
    .await;
    assert_eq!(status, 201, "{made}");
    let id = made["id"].as_str().expect("id").to_string();
    assert_eq!(
        (made["by"].as_str(), made["comment"].as_str()),
        (Some("alice"), Some("maintenance"))
    );
    let (_, listed) = app.get("/api/alerts/silences").await;
    let listed: Value = serde_json::from_str(&listed).expect("JSON");
    assert_eq!(listed["silences"][0]["id"], id.as_str(), "{listed}");

    // Silenced: the dashboard sees it and the listing says so; the sink gets nothing.
    send(&mut dev, 40.0).await;
    let frame = screen.recv_type("alert").await;
    assert_eq!(frame["state"], "firing");
    let (_, alerts) = app.get("/api/alerts").await;
    let alerts: Value = serde_json::from_str(&alerts).expect("JSON");
    assert_eq!(alerts["alerts"][0]["silenced_by"], id.as_str(), "{alerts}");
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metrics.contains("telehub_alerts_silenced_total 1"),
        "{metrics}"
    );

    // Ended: the resolution is notified, and it is the first thing the server gets.
    assert_eq!(
        http_request(
            app.addr,
            "DELETE",
            &format!("/api/alerts/silences/{id}"),
            ""
        )
        .await
        .0,
        204
    );
    assert_eq!(
        http_request(
            app.addr,
            "DELETE",
            &format!("/api/alerts/silences/{id}"),
            ""
        )
        .await
        .0,
        404
    );
    send(&mut dev, 20.0).await;
    assert_eq!(screen.recv_type("alert").await["state"], "resolved");
    let hook = next_hook(&mut hooks).await;
    assert_eq!(one_alert(&hook)["state"], "resolved");
    let s = sink_until(app.addr, |s| s["sent"] == 1).await;
    assert_eq!(s["dropped"], 0, "{s}");
    app.stop().await;
}

#[tokio::test]
async fn silences_need_an_admin_with_auth_on() {
    let app = crate::auth::token_hub().await;
    let viewer = crate::tokens::bearer(&crate::tokens::tok("bob", "dashboard", &["*"]));
    let admin = crate::tokens::bearer(&crate::tokens::tok("carol", "admin", &[]));
    let body = json!({"matchers":{"rule":"*"},"for":"10m","by":"mallory"}).to_string();
    let refused = post(
        app.addr,
        "/api/alerts/silences",
        &viewer,
        body.as_bytes(),
        Framing::Length,
    )
    .await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(
        get(app.addr, "/api/alerts/sinks", &viewer).await.status,
        403
    );
    let made = post(
        app.addr,
        "/api/alerts/silences",
        &admin,
        body.as_bytes(),
        Framing::Length,
    )
    .await;
    assert_eq!(made.status, 201, "{}", made.text());
    let v: Value = serde_json::from_str(&made.text()).expect("JSON");
    assert_eq!(v["by"], "carol", "the token's sub, not the body's");
    let listed = get(app.addr, "/api/alerts/silences", &viewer).await;
    assert_eq!(listed.status, 200);
    assert!(listed.text().contains("carol"));
    app.stop().await;
}

#[tokio::test]
async fn silences_are_stored_and_back_after_a_restart() {
    let data = tempfile::tempdir().expect("data dir");
    let mut hub = hub_process()
        .config(rules_and_sink("kind = \"log\""))
        .data_dir(data.path())
        .start();
    let (status, body) = http_post(
        hub.addr(),
        "/api/alerts/silences",
        r#"{"matchers":{"room":"gh"},"for":"2h","comment":"kept"}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(hub.stop().await.code(), Some(0));
    hub.restart();
    let (status, body) = http_get(hub.addr(), "/api/alerts/silences", "").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(v["silences"][0]["comment"], "kept", "{v}");
    assert_eq!(v["silences"][0]["by"], "anonymous", "{v}");
    assert_eq!(hub.stop().await.code(), Some(0));
}
