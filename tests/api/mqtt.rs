//! The MQTT bridge end to end: sensors publishing to a real Mosquitto (started on a free
//! port by the test) reach real WebSocket dashboards through the hub; dashboards'
//! commands reach MQTT devices and their acks come back; nothing is lost when the broker
//! or the hub restarts.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};
use telehub::mqtt::MqttConfig;
use telehub::Settings;

use crate::helpers::{spawn_app_with, Client, TestApp, WAIT};
use telehub_testkit::mosquitto::Mosquitto;
use telehub_testkit::mqtt::TestClient;

/// A hub with one bridge `test` to `broker`, configured by the TOML body `extra`.
pub(crate) async fn hub_with_bridge(port: u16, client_id: &str, extra: &str) -> TestApp {
    let text = format!(
        "[[bridges]]\nname = \"test\"\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"{client_id}\"\n\
         reconnect_min_ms = 50\nreconnect_max_ms = 200\n{extra}"
    );
    let mqtt: MqttConfig = toml::from_str(&text).expect("bridge config parses");
    spawn_app_with(move |s: &mut Settings| s.mqtt = mqtt).await
}

pub(crate) async fn bridge_status(app: &TestApp) -> Value {
    let (status, body) = app.get("/api/bridges").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    v["bridges"][0].clone()
}

/// Waits until the bridge is connected and the broker has acknowledged its
/// subscriptions.
pub(crate) async fn wait_subscribed(app: &TestApp) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = bridge_status(app).await;
        if s["connected"] == true && s["subscribed"] == true {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "bridge not subscribed in time: {s}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The next `reading` frame a dashboard gets.
pub(crate) async fn next_reading(dash: &mut Client) -> Value {
    dash.recv_type("reading").await
}

#[tokio::test]
async fn each_payload_shape_reaches_a_dashboard() {
    let broker = Mosquitto::start();
    let app = hub_with_bridge(broker.port, "api-shapes", "").await;
    wait_subscribed(&app).await;
    let (mut dash, _) = app.connect("lab", "dash", "dashboard").await;
    let sensor = TestClient::connect(broker.port, "api-sensor-shapes");

    // A bare number: the hub stamps its receive time.
    let before = chrono::Utc::now().timestamp_millis();
    sensor.publish("telehub/lab/t1/temperature", "21.5").await;
    let join = dash.recv_type("presence").await;
    assert_eq!(
        (&join["event"], &join["client"], &join["role"], &join["via"]),
        (
            &json!("join"),
            &json!("t1"),
            &json!("device"),
            &json!("mqtt")
        )
    );
    let r = next_reading(&mut dash).await;
    assert_eq!(r["room"], "lab");
    assert_eq!(r["device"], "t1");
    assert_eq!(r["metric"], "temperature");
    assert_eq!(r["value"], 21.5);
    assert!(r["ts"].as_i64().expect("ts") >= before, "{r}");
    assert_eq!(r["offset"], 1);

    // A reading object keeps its unit, ts (seconds here) and seq.
    sensor
        .publish(
            "telehub/lab/t1/temperature",
            r#"{"value":22,"unit":"C","ts":1764000000,"seq":17}"#,
        )
        .await;
    let r = next_reading(&mut dash).await;
    assert_eq!(
        (&r["value"], &r["unit"], &r["ts"], &r["seq"], &r["offset"]),
        (
            &json!(22.0),
            &json!("C"),
            &json!(1_764_000_000_000i64),
            &json!(17),
            &json!(2)
        )
    );

    // A flat object: one reading per numeric field.
    sensor
        .publish(
            "telehub/lab/env1/env",
            r#"{"temperature":21.5,"humidity":40,"ts":"2025-11-24T16:00:00Z"}"#,
        )
        .await;
    let mut metrics = BTreeSet::new();
    for _ in 0..2 {
        let r = next_reading(&mut dash).await;
        assert_eq!(r["device"], "env1");
        assert_eq!(r["ts"], 1_764_000_000_000i64);
        metrics.insert(r["metric"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(
        metrics,
        BTreeSet::from(["env/humidity".to_string(), "env/temperature".to_string()])
    );

    // SenML with base name, base time and base unit.
    sensor
        .publish(
            "telehub/lab/s1/pack",
            r#"[{"bn":"s1/","bt":1764000000,"bu":"Cel","n":"a","v":1},{"n":"b","t":2,"v":2}]"#,
        )
        .await;
    let a = next_reading(&mut dash).await;
    let b = next_reading(&mut dash).await;
    assert_eq!(
        (&a["metric"], &a["unit"]),
        (&json!("pack/a"), &json!("Cel"))
    );
    assert_eq!(
        (&b["metric"], &b["ts"]),
        (&json!("pack/b"), &json!(1_764_000_002_000i64))
    );

    // A bad payload is counted and the stream goes on.
    sensor
        .publish("telehub/lab/t1/temperature", "{not json")
        .await;
    sensor.publish("telehub/lab/t1/temperature", "23").await;
    assert_eq!(next_reading(&mut dash).await["value"], 23.0);
    let s = bridge_status(&app).await;
    assert_eq!(s["parse_errors"], 1, "{s}");
    assert_eq!(s["readings_in"], 7, "{s}");

    // Bridged devices show in /api/rooms with via=mqtt, and the bridge in /metrics.
    let (_, body) = app.get("/api/rooms").await;
    let rooms: Value = serde_json::from_str(&body).expect("JSON");
    let devices = &rooms["rooms"][0]["devices"];
    assert!(
        devices
            .as_array()
            .expect("devices")
            .iter()
            .any(|d| d["client"] == "t1" && d["via"] == "mqtt"),
        "{rooms}"
    );
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metrics.contains("telehub_mqtt_connected{bridge=\"test\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("telehub_mqtt_parse_errors_total{bridge=\"test\"} 1"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn topic_templates_and_fixed_values() {
    let broker = Mosquitto::start();
    let extra = "[[bridges.topics]]\ntemplate = \"home/{device}/{_}\"\nroom = \"garden\"\nmetric = \"power\"\n\
                 [[bridges.topics]]\ntemplate = \"sensors/{room}/{device}/{metric}\"\nformat = \"number\"\n";
    let app = hub_with_bridge(broker.port, "api-templates", extra).await;
    wait_subscribed(&app).await;
    let (mut garden, _) = app.connect("garden", "dash", "dashboard").await;
    let (mut attic, _) = app.connect("attic", "dash", "dashboard").await;
    let sensor = TestClient::connect(broker.port, "api-sensor-templates");

    sensor.publish("home/plug-3/state", "40.5").await;
    let r = next_reading(&mut garden).await;
    assert_eq!(
        (&r["device"], &r["metric"], &r["value"]),
        (&json!("plug-3"), &json!("power"), &json!(40.5))
    );
    sensor.publish("sensors/attic/h2/humidity", "55").await;
    let r = next_reading(&mut attic).await;
    assert_eq!(
        (&r["room"], &r["device"], &r["metric"]),
        (&json!("attic"), &json!("h2"), &json!("humidity"))
    );
    // Room isolation holds for bridged readings too.
    garden.expect_silence(200).await;
    app.stop().await;
}

#[tokio::test]
async fn commands_and_acks_round_trip() {
    let broker = Mosquitto::start();
    let app = hub_with_bridge(broker.port, "api-cmds", "").await;
    wait_subscribed(&app).await;
    let (mut dash, _) = app.connect("lab", "dash", "dashboard").await;
    let mut valve = TestClient::connect(broker.port, "api-valve");
    valve.subscribe("telehub/lab/valve/cmd").await;
    // The device announces itself with a reading, which joins it to the room.
    valve.publish("telehub/lab/valve/position", "0").await;
    next_reading(&mut dash).await;

    dash.send_json(
        json!({"type":"command","id":"c-1","to":"valve","name":"open","args":{"pct":50}}),
    )
    .await;
    let cmd = valve.next(WAIT).await.expect("the device gets the command");
    assert_eq!(cmd.topic, "telehub/lab/valve/cmd");
    let v: Value = serde_json::from_slice(&cmd.payload).expect("JSON");
    assert_eq!(
        v,
        json!({"id":"c-1","from":"dash","name":"open","args":{"pct":50}})
    );

    valve
        .publish(
            "telehub/lab/valve/ack",
            r#"{"id":"c-1","ok":true,"result":{"pct":50}}"#,
        )
        .await;
    let ack = dash.recv_type("ack").await;
    assert_eq!(
        ack,
        json!({"type":"ack","id":"c-1","from":"valve","ok":true,"result":{"pct":50}})
    );

    // A command to a device the bridge has never seen is refused like any other.
    dash.send_json(json!({"type":"command","id":"c-2","to":"ghost","name":"open"}))
        .await;
    let e = dash.recv_type("error").await;
    assert_eq!(e["code"], "unknown_device");
    let s = bridge_status(&app).await;
    assert_eq!(
        (&s["commands_out"], &s["acks_in"]),
        (&json!(1), &json!(1)),
        "{s}"
    );
    app.stop().await;
}

/// Reads readings until every seq in `want` has arrived (or the time is up); returns
/// the ones seen and how many arrived more than once.
pub(crate) async fn collect_seqs(
    dash: &mut Client,
    want: &BTreeSet<u64>,
) -> (BTreeSet<u64>, usize) {
    let mut seen = BTreeSet::new();
    let mut repeats = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !want.is_subset(&seen) && tokio::time::Instant::now() < deadline {
        let r = next_reading(dash).await;
        if let Some(seq) = r["seq"].as_u64() {
            if !seen.insert(seq) {
                repeats += 1;
            }
        }
    }
    (seen, repeats)
}

#[tokio::test]
async fn broker_restart_mid_stream_loses_no_reading() {
    let mut broker = Mosquitto::start();
    let app = hub_with_bridge(broker.port, "api-broker-restart", "").await;
    wait_subscribed(&app).await;
    let (mut dash, _) = app.connect("lab", "dash", "dashboard").await;
    let sensor = TestClient::connect(broker.port, "api-sensor-restart");
    const N: u64 = 300;
    let publisher =
        sensor.publish_stream("telehub/lab/t1/temperature", 0..N, Duration::from_millis(5));

    tokio::time::sleep(Duration::from_millis(400)).await;
    broker.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.resume();

    let want: BTreeSet<u64> = (0..N).collect();
    let (seen, repeats) = collect_seqs(&mut dash, &want).await;
    let missing: Vec<&u64> = want.difference(&seen).collect();
    assert!(missing.is_empty(), "lost readings {missing:?}");
    assert_eq!(repeats, 0, "the hub's seq dedup drops redeliveries");
    publisher.await.expect("publisher");
    let s = bridge_status(&app).await;
    assert!(s["reconnects"].as_u64() >= Some(1), "{s}");
    assert_eq!(s["connected"], true, "{s}");
    app.stop().await;
}

#[tokio::test]
async fn a_restarted_hub_receives_what_was_published_while_it_was_down() {
    let mut broker = Mosquitto::start();
    let app = hub_with_bridge(broker.port, "api-hub-restart", "").await;
    wait_subscribed(&app).await;
    let sensor = TestClient::connect(broker.port, "api-sensor-hub-down");
    let (mut dash, _) = app.connect("lab", "dash", "dashboard").await;
    sensor.publish_seq("telehub/lab/t1/temperature", 0).await;
    assert_eq!(next_reading(&mut dash).await["seq"], 0);
    drop(dash);
    app.stop().await;

    // The hub is down; the sensor keeps publishing, the broker queues for the bridge's
    // persistent session.
    for seq in 1..=50u64 {
        sensor.publish_seq("telehub/lab/t1/temperature", seq).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Stop the broker too (it keeps the queue on disk) so the new hub's dashboard can be
    // in its room before the queued readings arrive.
    broker.stop();

    let app = hub_with_bridge(broker.port, "api-hub-restart", "").await;
    let (mut dash, _) = app.connect("lab", "dash", "dashboard").await;
    broker.resume();
    let want: BTreeSet<u64> = (1..=50).collect();
    let (seen, _) = collect_seqs(&mut dash, &want).await;
    let missing: Vec<&u64> = want.difference(&seen).collect();
    assert!(missing.is_empty(), "lost readings {missing:?}");
    assert!(!seen.contains(&0), "seq 0 was acked before the hub stopped");
    app.stop().await;
}

#[tokio::test]
async fn mirror_publishes_websocket_readings_to_the_broker() {
    let broker = Mosquitto::start();
    let app = hub_with_bridge(broker.port, "api-mirror", "mirror = true\n").await;
    wait_subscribed(&app).await;
    let mut consumer = TestClient::connect(broker.port, "api-consumer");
    consumer.subscribe("telehub/lab/ws1/#").await;
    let (mut dash, _) = app.connect("lab", "dash", "dashboard").await;
    let (mut dev, _) = app.connect("lab", "ws1", "device").await;

    dev.send_json(json!({"type":"reading","metric":"temperature","value":19.5,"unit":"C","seq":3}))
        .await;
    let r = next_reading(&mut dash).await;
    assert_eq!(r["device"], "ws1");
    let m = consumer.next(WAIT).await.expect("mirrored to the broker");
    assert_eq!(m.topic, "telehub/lab/ws1/temperature");
    let v: Value = serde_json::from_slice(&m.payload).expect("JSON");
    assert_eq!(
        (&v["value"], &v["unit"], &v["seq"]),
        (&json!(19.5), &json!("C"), &json!(3))
    );
    assert_eq!(v["ts"], r["ts"]);

    // The bridge hears its own mirrored reading come back and does not take it as a
    // second device's reading.
    dash.expect_silence(300).await;
    let s = bridge_status(&app).await;
    assert_eq!(s["mirrored_out"], 1, "{s}");
    assert_eq!(s["readings_in"], 0, "{s}");
    let (_, body) = app.get("/api/rooms").await;
    let rooms: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        rooms["rooms"][0]["devices"],
        json!([{"client":"ws1","via":"ws"}]),
        "{rooms}"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_unreachable_broker_shows_in_api_bridges_and_the_hub_keeps_serving() {
    // A port where nothing listens: bound (so no one else takes it for the length of
    // the test) but never listening, so every connect is refused.
    let reserved = tokio::net::TcpSocket::new_v4().expect("socket");
    reserved.bind("127.0.0.1:0".parse().unwrap()).expect("bind");
    let port = reserved.local_addr().expect("addr").port();
    let app = hub_with_bridge(port, "api-unreachable", "").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let status = loop {
        let s = bridge_status(&app).await;
        if s["connection_errors"].as_u64() >= Some(2) {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no errors counted: {s}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status["connected"], false, "{status}");
    assert!(
        status["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("refused")),
        "{status}"
    );
    let (code, body) = app.get("/healthz").await;
    assert_eq!((code, body.as_str()), (200, "ok"));
    let (_, metrics) = app.get("/metrics").await;
    assert!(
        metrics.contains("telehub_mqtt_connected{bridge=\"test\"} 0"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_websocket_device_taking_a_bridged_id_is_not_replaced_back() {
    let broker = Mosquitto::start();
    let app = hub_with_bridge(broker.port, "api-takeover", "").await;
    wait_subscribed(&app).await;
    let (mut dash, _) = app.connect("lab", "dash", "dashboard").await;
    let sensor = TestClient::connect(broker.port, "api-sensor-takeover");
    sensor.publish("telehub/lab/t1/temperature", "1").await;
    assert_eq!(next_reading(&mut dash).await["value"], 1.0);

    // A WebSocket device with the same id takes over, as a newer connection does.
    let (mut ws_t1, _) = app.connect("lab", "t1", "device").await;
    sensor.publish("telehub/lab/t1/temperature", "2").await;
    ws_t1
        .send_json(json!({"type":"reading","metric":"temperature","value":3}))
        .await;
    // The dashboard gets the WebSocket device's reading, not the bridged one.
    assert_eq!(next_reading(&mut dash).await["value"], 3.0);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let s = bridge_status(&app).await;
        if s["rejected"] == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, body) = app.get("/api/rooms").await;
    let rooms: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        rooms["rooms"][0]["devices"],
        json!([{"client":"t1","via":"ws"}]),
        "{rooms}"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_idle_bridged_device_leaves_its_room() {
    let broker = Mosquitto::start();
    let app = hub_with_bridge(broker.port, "api-idle", "device_idle_secs = 1\n").await;
    wait_subscribed(&app).await;
    let (mut dash, _) = app.connect("lab", "dash", "dashboard").await;
    let sensor = TestClient::connect(broker.port, "api-sensor-idle");
    sensor.publish("telehub/lab/t1/temperature", "1").await;
    assert_eq!(dash.recv_type("presence").await["event"], "join");
    assert_eq!(next_reading(&mut dash).await["value"], 1.0);
    let leave = dash.recv_type("presence").await;
    assert_eq!(
        (&leave["event"], &leave["client"], &leave["via"]),
        (&json!("leave"), &json!("t1"), &json!("mqtt"))
    );
    // Its next reading joins it again.
    sensor.publish("telehub/lab/t1/temperature", "2").await;
    assert_eq!(dash.recv_type("presence").await["event"], "join");
    assert_eq!(next_reading(&mut dash).await["value"], 2.0);
    app.stop().await;
}
