//! The MQTT transport against a real Mosquitto broker started on a free port: readings
//! arrive on `telehub/{room}/{device}/{metric}` with the documented payload, commands on
//! `.../cmd` are answered on `.../ack`, and a broker restart loses nothing.

use std::collections::HashSet;
use std::time::Duration;

use rumqttc::QoS;
use serde_json::{json, Value};
use telehub_sim::{BackoffConfig, Kind, RunOptions, Scenario, SeqStart, SimStats};
use telehub_testkit::mosquitto::Mosquitto;
use telehub_testkit::mqtt::TestClient;
use tokio::sync::oneshot;

fn options(url: String) -> RunOptions {
    let mut o = RunOptions::mqtt(url);
    o.seq_start = SeqStart::Fixed(1);
    o.backoff = BackoffConfig {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
    };
    o
}

/// A plain subscriber that records every message under `telehub/#`.
async fn subscriber(port: u16, id: &str) -> TestClient {
    let mut c = TestClient::connect(port, id);
    c.subscribe("telehub/#").await;
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_and_commands_over_mqtt() {
    // Arrange
    let broker = Mosquitto::start();
    let mut observer = subscriber(broker.port, "test-sub").await;
    let scenario = Scenario::quick(1, 2, Some(5.0), Some(Kind::Climate)).expect("scenario");
    let stats = SimStats::new();
    let mut opts = options(broker.url());
    opts.stats = stats.clone();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let run = tokio::spawn(telehub_sim::run(scenario, opts, async {
        let _ = stop_rx.await;
    }));

    // Act: let it publish, then send a command as the hub's bridge would.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    observer
        .client
        .publish(
            "telehub/room-1/climate-1/cmd",
            QoS::AtLeastOnce,
            false,
            json!({"id":"c-1","from":"dash","name":"set_setpoint","args":{"value":26.5}})
                .to_string(),
        )
        .await
        .expect("publish command");
    observer
        .client
        .publish(
            "telehub/room-1/climate-2/cmd",
            QoS::AtLeastOnce,
            false,
            json!({"id":"c-2","from":"dash","name":"open_window","args":{}}).to_string(),
        )
        .await
        .expect("publish command");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let _ = stop_tx.send(());
    let summary = run.await.expect("task").expect("run");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Assert
    let mut seen = HashSet::new();
    let mut acks = Vec::new();
    let mut setpoint_after = None;
    while let Ok(p) = observer.inbox.try_recv() {
        let topic = p.topic;
        let v: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
        let parts: Vec<&str> = topic.split('/').collect();
        assert_eq!(parts[0], "telehub");
        assert_eq!(parts[1], "room-1");
        match parts[3] {
            "cmd" => {}
            "ack" => acks.push((parts[2].to_string(), v)),
            metric => {
                assert!(v["value"].is_f64(), "{topic}: {v}");
                assert!(v["ts"].is_i64(), "{topic}: {v}");
                let seq = v["seq"].as_u64().expect("seq");
                if metric == "setpoint" && parts[2] == "climate-1" {
                    setpoint_after = v["value"].as_f64();
                }
                if metric == "temperature" {
                    assert_eq!(v["unit"], "C");
                }
                assert!(
                    seen.insert((parts[2].to_string(), seq)),
                    "duplicate {topic} {seq}"
                );
            }
        }
    }
    assert_eq!(
        summary.totals.generated, summary.totals.acked,
        "{summary:?}"
    );
    assert_eq!(summary.lost(), 0);
    assert_eq!(
        seen.len() as u64,
        summary.totals.acked,
        "every confirmed reading was published"
    );
    assert_eq!(
        setpoint_after,
        Some(26.5),
        "the setpoint command took effect"
    );
    let ack1 = acks
        .iter()
        .find(|(d, _)| d == "climate-1")
        .expect("ack from climate-1");
    assert_eq!(
        ack1.1,
        json!({"id":"c-1","ok":true,"result":{"setpoint":26.5}})
    );
    let ack2 = acks
        .iter()
        .find(|(d, _)| d == "climate-2")
        .expect("ack from climate-2");
    assert_eq!(ack2.1["ok"], false);
    assert_eq!(ack2.1["result"]["error"], "unknown_command");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_loses_nothing() {
    // Arrange
    let mut broker = Mosquitto::start_with(telehub_testkit::mosquitto::Config {
        // The broker dies without saving: the devices' own buffers carry the readings.
        persistence: false,
        ..Default::default()
    });
    let scenario = Scenario::quick(1, 3, Some(10.0), None).expect("scenario");
    let stats = SimStats::new();
    let mut opts = options(broker.url());
    opts.stats = stats.clone();
    opts.buffer = Some(1_000);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let run = tokio::spawn(telehub_sim::run(scenario, opts, async {
        let _ = stop_rx.await;
    }));

    // Act: the broker dies for a second mid-run and comes back on the same port.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(stats.snapshot().connected > 0);
    broker.kill();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let buffered_while_down = stats.snapshot().buffered;
    broker.resume();
    // Wait until everything generated so far has been confirmed again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let s = stats.snapshot();
        if s.reconnects >= 3 && s.buffered < 20 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no recovery: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_tx.send(());
    let summary = run.await.expect("task").expect("run");

    // Assert
    assert!(
        buffered_while_down > 0,
        "readings were buffered while the broker was down"
    );
    assert!(summary.totals.reconnects >= 3, "{:?}", summary.totals);
    assert_eq!(summary.totals.dropped, 0);
    assert_eq!(summary.lost(), 0, "{summary:?}");
    assert_eq!(summary.totals.generated, summary.totals.acked);
}
