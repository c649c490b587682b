//! Alerts end to end: rules from the config fire and resolve on live readings (`above`
//! with `for` and hysteresis, `below`, `outside`, `stale` on the hub's clock), reach the
//! room's dashboards as `alert` frames, are listed at `GET /api/alerts` and counted in
//! `/metrics`; a joining dashboard gets the firing ones after its snapshot; a bad rule
//! stops start-up; and a firing alert survives a restart without a new transition.

use serde_json::{json, Value};

use crate::helpers::{hub_process, spawn_app_with, Client, TestApp};
use telehub_testkit::http::{http_get, http_post, http_request};

const RULES: &str = r#"
[[alerts.rules]]
id = "hot"
room = "greenhouse-*"
device = "*"
metric = "temperature"
above = 35.0
for = "1s"
clear_below = 33.0
severity = "critical"
[[alerts.rules]]
id = "cold"
room = "greenhouse-*"
metric = "temperature"
below = 5.0
clear_above = 7.0
[[alerts.rules]]
id = "dry"
metric = "humidity"
outside = [30.0, 70.0]
severity = "info"
[[alerts.rules]]
id = "silent"
metric = "heartbeat"
stale = "2s"
"#;

async fn hub_with_rules() -> TestApp {
    let alerts = telehub::Settings::from_sources(RULES, "rules", Vec::new())
        .expect("the rules are valid")
        .alerts;
    spawn_app_with(|s| s.alerts = alerts).await
}

/// Sends one reading of `metric` at `ts`.
async fn send(dev: &mut Client, metric: &str, value: f64, ts: i64) {
    dev.send_json(json!({"type":"reading","metric":metric,"value":value,"ts":ts}))
        .await;
}

/// The next `alert` frame, as (rule, state, value).
async fn alert(c: &mut Client) -> (String, String, f64) {
    let a = c.recv_type("alert").await;
    (
        a["rule"].as_str().expect("rule").to_string(),
        a["state"].as_str().expect("state").to_string(),
        a["value"].as_f64().expect("value"),
    )
}

fn a(rule: &str, state: &str, value: f64) -> (String, String, f64) {
    (rule.to_string(), state.to_string(), value)
}

async fn firing(app: &TestApp, query: &str) -> Vec<Value> {
    let (status, body) = app.get(&format!("/api/alerts{query}")).await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    v["alerts"].as_array().expect("alerts").clone()
}

#[tokio::test]
async fn threshold_rules_fire_hold_and_resolve_on_the_readings_of_their_series() {
    let app = hub_with_rules().await;
    let (mut screen, _) = app.connect("greenhouse-1", "screen", "dashboard").await;
    let (mut dev, _) = app.connect("greenhouse-1", "t1", "device").await;
    let t0 = chrono_now();

    // `above` with `for`: pending first, firing once it held for 1 s of readings' time.
    send(&mut dev, "temperature", 30.0, t0).await;
    send(&mut dev, "temperature", 36.0, t0 + 100).await;
    assert_eq!(alert(&mut screen).await, a("hot", "pending", 36.0));
    send(&mut dev, "temperature", 36.5, t0 + 600).await;
    send(&mut dev, "temperature", 37.0, t0 + 1_200).await;
    let frame = screen.recv_type("alert").await;
    assert_eq!(
        frame,
        json!({"type":"alert","rule":"hot","room":"greenhouse-1","device":"t1",
               "metric":"temperature","state":"firing","value":37.0,"since":t0 + 1_200,
               "severity":"critical"})
    );
    // Between the threshold and clear_below it keeps firing.
    send(&mut dev, "temperature", 34.0, t0 + 1_300).await;

    let listed = firing(&app, "?room=greenhouse-1&state=firing").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["instance"], "hot:greenhouse-1:t1:temperature");
    assert!(firing(&app, "?room=elsewhere").await.is_empty());
    let metrics = app.get("/metrics").await.1;
    assert!(
        metrics.contains("telehub_alerts_firing{rule=\"hot\",severity=\"critical\"} 1"),
        "{metrics}"
    );
    // A dashboard that joins now gets the firing alert right after its snapshot.
    let mut late = Client::connect(&app.ws_url("greenhouse-1", "late", "role=dashboard"))
        .await
        .expect("connect");
    assert_eq!(late.recv_json().await["type"], "welcome");
    assert_eq!(late.recv_json().await["type"], "snapshot");
    let first = late.recv_json().await;
    assert_eq!(
        (&first["type"], &first["rule"], &first["state"]),
        (&json!("alert"), &json!("hot"), &json!("firing"))
    );

    // Acknowledged: who and when, in the listing and to every dashboard of the room.
    let instance = "hot:greenhouse-1:t1:temperature";
    let (status, body) = http_post(
        app.addr,
        &format!("/api/alerts/{instance}/ack"),
        r#"{"by":"alice"}"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let acked = screen.recv_type("alert").await;
    assert_eq!(
        (&acked["state"], &acked["acked_by"]),
        (&json!("firing"), &json!("alice"))
    );
    assert!(acked["acked_at"].as_i64().is_some());
    let listed = firing(&app, "").await;
    assert_eq!(listed[0]["ack"]["by"], "alice");
    let (status, _) = http_post(app.addr, "/api/alerts/nope:greenhouse-1:t1:x/ack", "").await;
    assert_eq!(status, 404);
    let (status, body) = http_post(
        app.addr,
        &format!("/api/alerts/{instance}/ack"),
        r#"{"who":"x"}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");

    send(&mut dev, "temperature", 33.0, t0 + 1_400).await;
    assert_eq!(alert(&mut screen).await, a("hot", "resolved", 33.0));

    // `below` without `for` fires at once, and resolves only at clear_above.
    send(&mut dev, "temperature", 4.0, t0 + 1_500).await;
    assert_eq!(alert(&mut screen).await, a("cold", "firing", 4.0));
    send(&mut dev, "temperature", 6.0, t0 + 1_600).await;
    send(&mut dev, "temperature", 7.5, t0 + 1_700).await;
    assert_eq!(alert(&mut screen).await, a("cold", "resolved", 7.5));

    // `outside`, in any room (its room glob is `*`).
    send(&mut dev, "humidity", 80.0, t0 + 1_800).await;
    assert_eq!(alert(&mut screen).await, a("dry", "firing", 80.0));
    send(&mut dev, "humidity", 50.0, t0 + 1_900).await;
    assert_eq!(alert(&mut screen).await, a("dry", "resolved", 50.0));

    assert!(firing(&app, "").await.is_empty());
    let metrics = app.get("/metrics").await.1;
    assert!(metrics.contains("telehub_alerts_firing{rule=\"hot\",severity=\"critical\"} 0"));
    assert!(metrics.contains("telehub_alerts_firing{rule=\"dry\",severity=\"info\"} 0"));
    // A room the rules' globs do not cover raises nothing.
    let (mut other, _) = app.connect("office", "t2", "device").await;
    let (mut office, _) = app.connect("office", "screen", "dashboard").await;
    send(&mut other, "temperature", 99.0, t0).await;
    send(&mut other, "humidity", 50.0, t0).await;
    assert_eq!(office.recv_type("reading").await["value"], 99.0);
    assert_eq!(office.recv_type("reading").await["value"], 50.0);
    office.expect_silence(300).await;
    app.stop().await;
}

#[tokio::test]
async fn a_series_that_goes_silent_fires_stale_on_the_hub_clock_and_a_reading_resolves_it() {
    let app = hub_with_rules().await;
    let (mut screen, _) = app.connect("barn", "screen", "dashboard").await;
    let (mut dev, _) = app.connect("barn", "pump", "device").await;
    // The reading's own ts is long ago: stale is measured on the hub's clock.
    send(&mut dev, "heartbeat", 1.0, 1_000).await;
    assert_eq!(screen.recv_type("reading").await["value"], 1.0);
    let (rule, state, value) = alert(&mut screen).await;
    assert_eq!(
        (rule.as_str(), state.as_str(), value),
        ("silent", "firing", 1.0)
    );
    assert_eq!(firing(&app, "?state=firing").await.len(), 1);
    assert!(firing(&app, "?state=pending").await.is_empty());
    send(&mut dev, "heartbeat", 2.0, chrono_now()).await;
    assert_eq!(alert(&mut screen).await, a("silent", "resolved", 2.0));
    let (status, body) = app.get("/api/alerts?state=asleep").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("`state`"), "{body}");
    app.stop().await;
}

#[test]
fn a_bad_rule_stops_start_up_with_exit_code_2_naming_it() {
    let dir = tempfile::tempdir().expect("dir");
    for (text, named) in [
        (
            "[[alerts.rules]]\nid = \"hot\"\nmetric = \"t\"\n",
            "rule `hot`",
        ),
        (
            "[[alerts.rules]]\nid = \"g\"\nroom = \"a b\"\nabove = 1.0\n",
            "`room`",
        ),
        (
            "[[alerts.rules]]\nid = \"x\"\nabove = 1.0\nthreshold = 2\n",
            "threshold",
        ),
    ] {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text).expect("write");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_telehub"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&path)
            .env("TELEHUB_HISTORY_PERSIST", "false")
            .output()
            .expect("run telehub");
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("alerts.rules[0]") && err.contains(named),
            "{err}"
        );
    }
}

#[tokio::test]
async fn a_firing_alert_is_still_firing_after_a_restart_without_a_new_transition() {
    let data = tempfile::tempdir().expect("data dir");
    let rules = "[[alerts.rules]]\nid = \"hot\"\nmetric = \"temperature\"\nabove = 35.0\n";
    let mut hub = hub_process().config(rules).data_dir(data.path()).start();
    {
        let mut screen = Client::connect(&hub.ws_url("g", "screen", "role=dashboard"))
            .await
            .expect("connect");
        let mut dev = Client::connect(&hub.ws_url("g", "t1", "role=device"))
            .await
            .expect("connect");
        send(&mut dev, "temperature", 40.0, chrono_now()).await;
        assert_eq!(alert(&mut screen).await, a("hot", "firing", 40.0));
    }
    assert_eq!(hub.stop().await.code(), Some(0));
    hub.restart();

    let mut screen = Client::connect(&hub.ws_url("g", "screen", "role=dashboard"))
        .await
        .expect("connect");
    assert_eq!(screen.recv_json().await["type"], "welcome");
    assert_eq!(screen.recv_json().await["type"], "snapshot");
    assert_eq!(alert(&mut screen).await, a("hot", "firing", 40.0));
    let metrics = telehub_testkit::http::http_get(hub.addr(), "/metrics", "")
        .await
        .1;
    assert!(
        metrics.contains("telehub_alerts_firing{rule=\"hot\",severity=\"warning\"} 1"),
        "{metrics}"
    );
    // Still above: no transition at all, then the resolution is the next alert.
    let mut dev = Client::connect(&hub.ws_url("g", "t1", "role=device"))
        .await
        .expect("connect");
    send(&mut dev, "temperature", 41.0, chrono_now()).await;
    send(&mut dev, "temperature", 20.0, chrono_now()).await;
    assert_eq!(alert(&mut screen).await, a("hot", "resolved", 20.0));
    // The history holds both transitions, one from each run, and nothing twice.
    let states = loop {
        let (status, body) = http_get(hub.addr(), "/api/alerts/history?from=-1h&room=g", "").await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("JSON");
        let states: Vec<String> = v["transitions"]
            .as_array()
            .expect("transitions")
            .iter()
            .map(|t| {
                format!(
                    "{}:{}",
                    t["rule"].as_str().unwrap_or(""),
                    t["state"].as_str().unwrap_or("")
                )
            })
            .collect();
        // The writer commits in the background: wait for the resolution to land.
        if states.len() >= 2 {
            break states;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(states, ["hot:firing", "hot:resolved"]);
    let (status, _) = http_get(hub.addr(), "/api/alerts/history?from=soon", "").await;
    assert_eq!(status, 400);
    assert_eq!(hub.stop().await.code(), Some(0));
}

#[tokio::test]
async fn rules_made_changed_and_deleted_over_rest_take_effect_at_once_and_survive_a_restart() {
    let data = tempfile::tempdir().expect("data dir");
    let config = "[[alerts.rules]]\nid = \"cfg\"\nmetric = \"temperature\"\nabove = 100.0\n";
    let mut hub = hub_process().config(config).data_dir(data.path()).start();
    let addr = hub.addr();
    let mut screen = Client::connect(&hub.ws_url("g", "screen", "role=dashboard"))
        .await
        .expect("connect");
    let mut dev = Client::connect(&hub.ws_url("g", "t1", "role=device"))
        .await
        .expect("connect");

    // Made: in force for the next reading.
    let rule = r#"{"id":"rt","metric":"temperature","above":30.0,"severity":"critical"}"#;
    let (status, body) = http_post(addr, "/api/alerts/rules", rule).await;
    assert_eq!(status, 201, "{body}");
    send(&mut dev, "temperature", 31.0, chrono_now()).await;
    assert_eq!(alert(&mut screen).await, a("rt", "firing", 31.0));
    // Changed: the firing instance is kept and judged by the new threshold.
    let changed = r#"{"id":"rt","metric":"temperature","above":50.0}"#;
    let (status, body) = http_request(addr, "PUT", "/api/alerts/rules/rt", changed).await;
    assert_eq!(status, 200, "{body}");
    send(&mut dev, "temperature", 32.0, chrono_now()).await;
    assert_eq!(alert(&mut screen).await, a("rt", "resolved", 32.0));

    // Refused, each with a precise answer.
    let bad = r#"{"id":"bad","metric":"t"}"#;
    let (status, body) = http_post(addr, "/api/alerts/rules", bad).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("invalid_rule") && body.contains("rule `bad`"),
        "{body}"
    );
    let odd = r#"{"id":"odd","above":1,"threshold":2}"#;
    let (status, body) = http_post(addr, "/api/alerts/rules", odd).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("rule `odd`") && body.contains("threshold"),
        "{body}"
    );
    assert_eq!(http_post(addr, "/api/alerts/rules", changed).await.0, 409);
    let cfg = r#"{"id":"cfg","metric":"temperature","above":1.0}"#;
    assert_eq!(
        http_request(addr, "PUT", "/api/alerts/rules/cfg", cfg)
            .await
            .0,
        409
    );
    assert_eq!(
        http_request(addr, "DELETE", "/api/alerts/rules/nope", "")
            .await
            .0,
        404
    );

    // Deleted: its firing instance resolves without another reading.
    send(&mut dev, "temperature", 60.0, chrono_now()).await;
    assert_eq!(alert(&mut screen).await, a("rt", "firing", 60.0));
    assert_eq!(
        http_request(addr, "DELETE", "/api/alerts/rules/rt", "")
            .await
            .0,
        204
    );
    assert_eq!(alert(&mut screen).await, a("rt", "resolved", 60.0));

    // A rule made over REST is still there after a restart, after the config's.
    let rt2 = r#"{"id":"rt2","metric":"humidity","below":10.0}"#;
    assert_eq!(http_post(addr, "/api/alerts/rules", rt2).await.0, 201);
    drop((screen, dev));
    assert_eq!(hub.stop().await.code(), Some(0));
    hub.restart();
    let (status, body) = http_get(hub.addr(), "/api/alerts/rules", "").await;
    assert_eq!(status, 200, "{body}");
    let rules: Value = serde_json::from_str(&body).expect("JSON");
    let listed: Vec<(&str, &str)> = rules["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap_or(""),
                r["source"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(listed, [("cfg", "config"), ("rt2", "api")]);
    assert_eq!(hub.stop().await.code(), Some(0));
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as i64
}
