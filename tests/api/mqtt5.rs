//! The MQTT bridge with `protocol = "5"`, end to end against a real Mosquitto and a real
//! hub: QoS 1 ingest with manual acks and a persistent session that survives a hub
//! restart (and expires when told to), shared subscriptions splitting one broker's
//! messages between two hubs, commands answered on the MQTT 5 response topic, and the
//! broker's reason codes in `/api/bridges`.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::{Client, WAIT};
use crate::mqtt::{bridge_status, collect_seqs, hub_with_bridge, next_reading, wait_subscribed};
use telehub_testkit::mosquitto::{Config, Mosquitto};
use telehub_testkit::mqtt::TestClient;
use telehub_testkit::mqtt5::TestClient5;

const V5: &str = "protocol = \"5\"\n";

#[tokio::test]
async fn v5_readings_are_acked_and_the_session_outlives_a_hub_restart() {
    let mut broker = Mosquitto::start();
    let app = hub_with_bridge(broker.port, "api5-restart", V5).await;
    wait_subscribed(&app).await;
    let s = bridge_status(&app).await;
    assert_eq!(s["protocol"], "5", "{s}");
    let sensor = TestClient::connect(broker.port, "api5-sensor-restart");
    let (mut dash, _) = app.connect("lab", "dash", "dashboard").await;
    sensor.publish_seq("telehub/lab/t1/temperature", 0).await;
    let r = next_reading(&mut dash).await;
    assert_eq!((&r["seq"], &r["device"]), (&json!(0), &json!("t1")));
    drop(dash);
    app.stop().await;

    // The hub is down: the broker queues for its MQTT 5 session (default expiry: a day).
    for seq in 1..=50u64 {
        sensor.publish_seq("telehub/lab/t1/temperature", seq).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Stop the broker (it keeps the session on disk) so that the new hub's dashboard is
    // in its room before the queued readings arrive.
    broker.stop();
    let app = hub_with_bridge(broker.port, "api5-restart", V5).await;
    let (mut dash, _) = app.connect("lab", "dash", "dashboard").await;
    broker.resume();
    let want: BTreeSet<u64> = (1..=50).collect();
    let (seen, _) = collect_seqs(&mut dash, &want).await;
    let missing: Vec<&u64> = want.difference(&seen).collect();
    assert!(missing.is_empty(), "lost readings {missing:?}");
    // seq 0 was acked (PUBACK after the hub had it) before the first hub stopped.
    assert!(!seen.contains(&0), "seq 0 was delivered again");
    let s = bridge_status(&app).await;
    assert_eq!(s["session_present"], true, "{s}");
    app.stop().await;
}

#[tokio::test]
async fn v5_session_expiry_is_honoured() {
    let broker = Mosquitto::start();
    let extra = format!("{V5}session_expiry_secs = 1\n");
    let app = hub_with_bridge(broker.port, "api5-expiry", &extra).await;
    wait_subscribed(&app).await;
    app.stop().await;
    // Past the session's expiry (Mosquitto checks about every second), nothing is
    // queued for the bridge any more.
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    let sensor = TestClient::connect(broker.port, "api5-sensor-expiry");
    for seq in 1..=5u64 {
        sensor.publish_seq("telehub/lab/t1/temperature", seq).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let app = hub_with_bridge(broker.port, "api5-expiry", &extra).await;
    wait_subscribed(&app).await;
    let (mut dash, _) = app.connect("lab", "dash", "dashboard").await;
    sensor.publish_seq("telehub/lab/t1/temperature", 6).await;
    assert_eq!(next_reading(&mut dash).await["seq"], 6);
    let s = bridge_status(&app).await;
    assert_eq!(s["session_present"], false, "a new session: {s}");
    assert_eq!(s["messages_in"], 1, "nothing from the expired session: {s}");
    app.stop().await;
}

/// The next reading on either dashboard: (which hub, seq).
async fn next_of_two(a: &mut Client, b: &mut Client) -> (usize, u64) {
    let (hub, r) = tokio::select! {
        r = a.recv_type("reading") => (0, r),
        r = b.recv_type("reading") => (1, r),
    };
    (hub, r["seq"].as_u64().expect("seq"))
}

#[tokio::test]
async fn two_hubs_with_a_shared_subscription_split_the_messages() {
    let broker = Mosquitto::start();
    let extra = format!("{V5}shared_group = \"telehub\"\n");
    let a = hub_with_bridge(broker.port, "api5-share-a", &extra).await;
    let b = hub_with_bridge(broker.port, "api5-share-b", &extra).await;
    wait_subscribed(&a).await;
    wait_subscribed(&b).await;
    let (mut dash_a, _) = a.connect("lab", "dash", "dashboard").await;
    let (mut dash_b, _) = b.connect("lab", "dash", "dashboard").await;
    let sensor = TestClient::connect(broker.port, "api5-sensor-share");
    const N: u64 = 200;
    for seq in 0..N {
        sensor
            .publish_seq(&format!("telehub/lab/t{}/temperature", seq % 4), seq)
            .await;
    }
    let mut by_hub = [BTreeSet::new(), BTreeSet::new()];
    let mut repeats = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while by_hub[0].len() + by_hub[1].len() < N as usize {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} + {} readings",
            by_hub[0].len(),
            by_hub[1].len()
        );
        let (hub, seq) = next_of_two(&mut dash_a, &mut dash_b).await;
        if !by_hub[hub].insert(seq) {
            repeats += 1;
        }
    }
    dash_a.expect_silence(300).await;
    dash_b.expect_silence(300).await;
    let both: Vec<&u64> = by_hub[0].intersection(&by_hub[1]).collect();
    assert!(both.is_empty(), "delivered to both hubs: {both:?}");
    assert_eq!(repeats, 0);
    let all: BTreeSet<u64> = by_hub[0].union(&by_hub[1]).copied().collect();
    assert_eq!(all, (0..N).collect::<BTreeSet<_>>(), "none lost");
    assert!(
        !by_hub[0].is_empty() && !by_hub[1].is_empty(),
        "the broker split the load: {} and {}",
        by_hub[0].len(),
        by_hub[1].len()
    );
    let (sa, sb) = (bridge_status(&a).await, bridge_status(&b).await);
    assert_eq!(
        sa["readings_in"].as_u64().unwrap_or(0) + sb["readings_in"].as_u64().unwrap_or(0),
        N,
        "{sa} {sb}"
    );
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn a_command_answered_on_the_response_topic_reaches_the_dashboard_as_its_ack() {
    let broker = Mosquitto::start();
    let app = hub_with_bridge(broker.port, "api5-cmds", V5).await;
    wait_subscribed(&app).await;
    let (mut dash, _) = app.connect("lab", "dash", "dashboard").await;
    let mut valve = TestClient5::connect(broker.port, "api5-valve");
    valve.subscribe("telehub/lab/valve/cmd").await;
    valve.publish("telehub/lab/valve/position", "0").await;
    next_reading(&mut dash).await;

    dash.send_json(
        json!({"type":"command","id":"c-1","to":"valve","name":"open","args":{"pct":50}}),
    )
    .await;
    let cmd = valve.next(WAIT).await.expect("the device gets the command");
    assert_eq!(&cmd.topic[..], b"telehub/lab/valve/cmd");
    let v: Value = serde_json::from_slice(&cmd.payload).expect("JSON");
    assert_eq!(
        v,
        json!({"id":"c-1","from":"dash","name":"open","args":{"pct":50}})
    );
    let props = cmd.properties.clone().expect("MQTT 5 properties");
    assert_eq!(
        props.response_topic.as_deref(),
        Some("telehub/reply/api5-cmds")
    );
    assert!(props.correlation_data.is_some(), "{props:?}");

    // The answer names nothing: its correlation data routes it.
    valve
        .respond(&cmd, r#"{"ok":true,"result":{"pct":50}}"#)
        .await;
    let ack = dash.recv_type("ack").await;
    assert_eq!(
        ack,
        json!({"type":"ack","id":"c-1","from":"valve","ok":true,"result":{"pct":50}})
    );
    // An answer without correlation data cannot be routed: counted, not guessed.
    valve
        .publish("telehub/reply/api5-cmds", r#"{"ok":true}"#)
        .await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let s = loop {
        let s = bridge_status(&app).await;
        if s["parse_errors"] == 1 {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        (&s["commands_out"], &s["acks_in"]),
        (&json!(1), &json!(1)),
        "{s}"
    );
    assert!(
        s["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("correlation data")),
        "{s}"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_subscription_the_broker_acl_refuses_shows_its_reason_code() {
    let broker = Mosquitto::start_with(Config {
        deny_subscribe: vec!["secret/#".into()],
        ..Config::default()
    });
    let extra = format!(
        "{V5}[[bridges.topics]]\ntemplate = \"telehub/{{room}}/{{device}}/{{metric}}\"\n\
         [[bridges.topics]]\ntemplate = \"secret/{{room}}/{{device}}/{{metric}}\"\n"
    );
    let app = hub_with_bridge(broker.port, "api5-acl", &extra).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let s = loop {
        let s = bridge_status(&app).await;
        if s["refused_subscriptions"].is_array() {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        s["refused_subscriptions"],
        json!([{"filter":"secret/+/+/+","code":135,"reason":"not authorized"}]),
        "{s}"
    );
    assert_eq!(s["subscribed"], false, "{s}");
    let message = s["last_error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("secret/+/+/+") && message.contains("not authorized (reason code 0x87)"),
        "{s}"
    );
    // The topics the ACL allows still flow.
    let (mut dash, _) = app.connect("lab", "dash", "dashboard").await;
    let sensor = TestClient::connect(broker.port, "api5-sensor-acl");
    sensor.publish("telehub/lab/t1/temperature", "5").await;
    assert_eq!(next_reading(&mut dash).await["value"], 5.0);
    app.stop().await;
}

#[tokio::test]
async fn a_311_bridge_shows_a_refused_subscription_as_failure() {
    // 3.1.1 has one refusal code; the same /api/bridges field carries it.
    let broker = Mosquitto::start_with(Config {
        deny_subscribe: vec!["secret/#".into()],
        ..Config::default()
    });
    let extra = "[[bridges.topics]]\ntemplate = \"telehub/{room}/{device}/{metric}\"\n\
                 [[bridges.topics]]\ntemplate = \"secret/{room}/{device}/{metric}\"\n";
    let app = hub_with_bridge(broker.port, "api311-acl", extra).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let s = loop {
        let s = bridge_status(&app).await;
        if s["refused_subscriptions"].is_array() {
            break s;
        }
        assert!(tokio::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(s["protocol"], "3.1.1", "{s}");
    assert_eq!(
        s["refused_subscriptions"],
        json!([{"filter":"secret/+/+/+","code":128,"reason":"failure"}]),
        "{s}"
    );
    app.stop().await;
}

/// The `last_error` of a bridge whose broker refuses every connect.
async fn refused_connect(protocol: &str, client_id: &str) -> String {
    let broker = Mosquitto::start_with(Config {
        allow_anonymous: false,
        ..Config::default()
    });
    let extra = format!("protocol = \"{protocol}\"\n");
    let app = hub_with_bridge(broker.port, client_id, &extra).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    let message = loop {
        let s = bridge_status(&app).await;
        let m = s["last_error"]["message"].as_str().unwrap_or_default();
        if m.contains("refused") {
            assert_eq!(s["connected"], false, "{s}");
            break m.to_string();
        }
        assert!(tokio::time::Instant::now() < deadline, "{s}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    app.stop().await;
    message
}

#[tokio::test]
async fn a_connect_the_broker_refuses_shows_its_reason_code_in_either_protocol() {
    assert_eq!(
        refused_connect("5", "api5-refused").await,
        "broker refused the connection: not authorized (reason code 0x87)"
    );
    assert_eq!(
        refused_connect("3.1.1", "api4-refused").await,
        "broker refused the connection: not authorized (return code 5)"
    );
}
