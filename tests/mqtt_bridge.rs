//! The MQTT bridge as a component, against a real Mosquitto on a free port: payload
//! shapes, templates, retained messages, commands and acks, broker restarts and bridge
//! restarts with a persistent session. (The same paths through the hub to WebSocket
//! dashboards are in `tests/api/mqtt.rs`.)

use std::collections::BTreeSet;
use std::time::Duration;

use telehub::mqtt::{
    Bridge, BridgeLink, BridgeSink, BridgeState, BridgedAck, BridgedMessage, MqttConfig,
};
use telehub_testkit::mosquitto::Mosquitto;
use telehub_testkit::mqtt::TestClient;
use tokio::sync::{mpsc, oneshot};

enum Got {
    Readings(BridgedMessage),
    Ack(BridgedAck),
}

/// Collects what the bridge hands on, as the hub would take it.
struct Collect {
    tx: mpsc::Sender<Got>,
}

impl BridgeSink for Collect {
    fn readings(&mut self, msg: BridgedMessage) -> Result<usize, String> {
        let n = msg.readings.len();
        self.tx
            .try_send(Got::Readings(msg))
            .map_err(|e| e.to_string())?;
        Ok(n)
    }
    fn ack(&mut self, ack: BridgedAck) -> Result<(), String> {
        self.tx.try_send(Got::Ack(ack)).map_err(|e| e.to_string())
    }
}

struct Running {
    rx: mpsc::Receiver<Got>,
    link: BridgeLink,
    state: std::sync::Arc<BridgeState>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .expect("bridge stops within 5 s")
            .expect("bridge task");
    }

    async fn next(&mut self, within: Duration) -> Option<Got> {
        tokio::time::timeout(within, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    async fn next_readings(&mut self) -> BridgedMessage {
        loop {
            match self.next(Duration::from_secs(10)).await {
                Some(Got::Readings(m)) => return m,
                Some(Got::Ack(_)) => continue,
                None => panic!("no readings within 10 s; state {:?}", self.state.status()),
            }
        }
    }

    async fn wait_connected(&self) {
        for _ in 0..500 {
            if self.state.is_connected() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("bridge did not connect: {:?}", self.state.status());
    }
}

async fn start_bridge(toml_text: &str) -> Running {
    start_bridge_seeding(toml_text, true).await
}

async fn start_bridge_seeding(toml_text: &str, seed_on_start: bool) -> Running {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let cfg: MqttConfig = toml::from_str(toml_text).expect("config parses");
    let spec = cfg
        .validate()
        .expect("config is valid")
        .into_iter()
        .next()
        .expect("one bridge");
    let mut bridge = Bridge::new(spec).expect("bridge builds");
    bridge.set_seed_on_start(seed_on_start);
    let state = bridge.state();
    let link = bridge.link();
    let (tx, rx) = mpsc::channel(100_000);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(bridge.run(Collect { tx }, async move {
        let _ = stop_rx.await;
    }));
    let r = Running {
        rx,
        link,
        state,
        stop: Some(stop_tx),
        task,
    };
    r.wait_connected().await;
    // Let the subscription reach the broker.
    tokio::time::sleep(Duration::from_millis(150)).await;
    r
}

fn bridge_toml(port: u16, client_id: &str, extra: &str) -> String {
    format!(
        "[[bridges]]\nname = \"test\"\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"{client_id}\"\n\
         reconnect_min_ms = 50\nreconnect_max_ms = 200\n{extra}"
    )
}

#[tokio::test]
async fn every_payload_shape_is_read() {
    let broker = Mosquitto::start();
    let mut bridge = start_bridge(&bridge_toml(broker.port, "shapes", "")).await;
    let sensor = TestClient::connect(broker.port, "sensor-shapes");

    sensor.publish("telehub/lab/t1/temperature", "21.5").await;
    let m = bridge.next_readings().await;
    assert_eq!((m.room.as_str(), m.device.as_str()), ("lab", "t1"));
    assert_eq!(m.readings[0].metric, "temperature");
    assert_eq!(m.readings[0].value, 21.5);
    assert_eq!(m.readings[0].ts, None);
    assert!(!m.retained);

    sensor
        .publish(
            "telehub/lab/t1/temperature",
            r#"{"value":22,"unit":"C","ts":1764000000000,"seq":17}"#,
        )
        .await;
    let r = &bridge.next_readings().await.readings[0];
    assert_eq!(
        (r.value, r.unit.as_deref(), r.ts, r.seq),
        (22.0, Some("C"), Some(1_764_000_000_000), Some(17))
    );

    sensor
        .publish(
            "telehub/lab/env1/env",
            r#"{"temperature":21.5,"humidity":40,"ts":1764000000}"#,
        )
        .await;
    let m = bridge.next_readings().await;
    let names: BTreeSet<&str> = m.readings.iter().map(|r| r.metric.as_str()).collect();
    assert_eq!(names, BTreeSet::from(["env/humidity", "env/temperature"]));
    assert!(m.readings.iter().all(|r| r.ts == Some(1_764_000_000_000)));

    sensor
        .publish(
            "telehub/lab/s1/pack",
            r#"[{"bn":"s1/","bt":1764000000,"bu":"Cel","n":"a","v":1},{"n":"b","t":1,"v":2,"u":"%"}]"#,
        )
        .await;
    let m = bridge.next_readings().await;
    assert_eq!(m.readings.len(), 2);
    assert_eq!(m.readings[0].metric, "pack/a");
    assert_eq!(m.readings[0].unit.as_deref(), Some("Cel"));
    assert_eq!(m.readings[1].ts, Some(1_764_000_001_000));
    assert_eq!(m.readings[1].unit.as_deref(), Some("%"));

    // A bad payload is counted and the stream goes on.
    sensor.publish("telehub/lab/t1/temperature", "warm").await;
    sensor.publish("telehub/lab/t1/temperature", "23").await;
    assert_eq!(bridge.next_readings().await.readings[0].value, 23.0);
    let s = bridge.state.status();
    assert_eq!(s.parse_errors, 1, "{s:?}");
    assert!(
        s.last_error
            .as_ref()
            .is_some_and(|e| e.message.contains("telehub/lab/t1/temperature")),
        "{s:?}"
    );
    bridge.stop().await;
}

#[tokio::test]
async fn templates_and_fixed_values_map_topics() {
    let broker = Mosquitto::start();
    let extra = "[[bridges.topics]]\ntemplate = \"home/{device}/{_}\"\nroom = \"garden\"\nmetric = \"power\"\n\
                 [[bridges.topics]]\ntemplate = \"sensors/{room}/{device}/{metric}\"\n\
                 [[bridges.topics]]\ntemplate = \"senml/{room}/#\"\nformat = \"senml\"\n";
    let mut bridge = start_bridge(&bridge_toml(broker.port, "templates", extra)).await;
    let sensor = TestClient::connect(broker.port, "sensor-templates");

    sensor.publish("home/plug-3/state", "40.5").await;
    let m = bridge.next_readings().await;
    assert_eq!(
        (
            m.room.as_str(),
            m.device.as_str(),
            m.readings[0].metric.as_str()
        ),
        ("garden", "plug-3", "power")
    );
    sensor.publish("sensors/attic/h2/humidity", "55").await;
    let m = bridge.next_readings().await;
    assert_eq!(
        (
            m.room.as_str(),
            m.device.as_str(),
            m.readings[0].metric.as_str()
        ),
        ("attic", "h2", "humidity")
    );
    sensor
        .publish(
            "senml/lab/any/depth",
            r#"[{"bn":"urn:dev:ow:10e2073a:","n":"temp","v":20.5}]"#,
        )
        .await;
    let m = bridge.next_readings().await;
    assert_eq!(
        (
            m.room.as_str(),
            m.device.as_str(),
            m.readings[0].metric.as_str()
        ),
        ("lab", "10e2073a", "temp")
    );
    // The default template is not subscribed when topics are given.
    sensor.publish("telehub/lab/t1/temperature", "1").await;
    assert!(bridge.next(Duration::from_millis(300)).await.is_none());
    bridge.stop().await;
}

#[tokio::test]
async fn commands_go_out_and_acks_come_back() {
    let broker = Mosquitto::start();
    let mut bridge = start_bridge(&bridge_toml(broker.port, "cmds", "")).await;
    let mut device = TestClient::connect(broker.port, "device-cmds");
    device.subscribe("telehub/lab/valve/cmd").await;

    bridge
        .link
        .command(
            "lab",
            "valve",
            "c-1",
            br#"{"id":"c-1","from":"dash","name":"open","args":{"pct":50}}"#.to_vec(),
        )
        .await
        .expect("command queued");
    let cmd = device
        .next(Duration::from_secs(5))
        .await
        .expect("device receives the command");
    assert_eq!(cmd.topic, "telehub/lab/valve/cmd");
    let v: serde_json::Value = serde_json::from_slice(&cmd.payload).expect("json");
    assert_eq!(v["id"], "c-1");
    assert_eq!(v["args"]["pct"], 50);

    device
        .publish(
            "telehub/lab/valve/ack",
            r#"{"id":"c-1","ok":true,"result":{"pct":50}}"#,
        )
        .await;
    let ack = match bridge.next(Duration::from_secs(5)).await {
        Some(Got::Ack(a)) => a,
        Some(Got::Readings(m)) => panic!("an ack was read as readings: {m:?}"),
        None => panic!("no ack: {:?}", bridge.state.status()),
    };
    assert_eq!(
        (
            ack.room.as_str(),
            ack.device.as_str(),
            ack.id.as_str(),
            ack.ok
        ),
        ("lab", "valve", "c-1", true)
    );
    assert_eq!(
        ack.result.map(|r| r.get().to_string()).as_deref(),
        Some(r#"{"pct":50}"#)
    );
    let s = bridge.state.status();
    assert_eq!((s.commands_out, s.acks_in), (1, 1), "{s:?}");
    // Our own command came back through `telehub/+/+/+` and was not taken as a reading.
    assert_eq!(s.readings_in, 0, "{s:?}");
    bridge.stop().await;
}

#[tokio::test]
async fn retained_messages_are_flagged() {
    let broker = Mosquitto::start();
    let sensor = TestClient::connect(broker.port, "sensor-retained");
    sensor
        .publish_retained("telehub/lab/t1/temperature", r#"{"value":19,"seq":4}"#)
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut bridge = start_bridge(&bridge_toml(broker.port, "retained", "")).await;
    let m = bridge.next_readings().await;
    assert!(m.retained);
    assert_eq!(m.readings[0].value, 19.0);
    bridge.stop().await;
}

#[tokio::test]
async fn retained_messages_come_again_on_restart_only_when_seeding() {
    let broker = Mosquitto::start();
    let sensor = TestClient::connect(broker.port, "sensor-reseed");
    sensor
        .publish_retained("telehub/lab/t1/temperature", r#"{"value":19,"seq":4}"#)
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let toml_text = bridge_toml(broker.port, "reseed", "");
    let mut bridge = start_bridge(&toml_text).await;
    assert!(bridge.next_readings().await.retained);
    bridge.stop().await;

    // The session is resumed: without seeding nothing is re-sent...
    let mut bridge = start_bridge_seeding(&toml_text, false).await;
    assert!(bridge.next(Duration::from_millis(500)).await.is_none());
    bridge.stop().await;
    // ...with seeding (an in-memory hub) the retained value comes again, flagged.
    let mut bridge = start_bridge_seeding(&toml_text, true).await;
    let m = bridge.next_readings().await;
    assert!(m.retained && m.readings[0].value == 19.0);
    bridge.stop().await;
}

async fn collect_seqs(bridge: &mut Running, n: u64, within: Duration) -> BTreeSet<u64> {
    let mut seen = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + within;
    while (seen.len() as u64) < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match bridge.next(left).await {
            Some(Got::Readings(m)) => seen.extend(m.readings.iter().filter_map(|r| r.seq)),
            Some(Got::Ack(_)) => {}
            None => break,
        }
    }
    seen
}

#[tokio::test]
async fn broker_restart_mid_stream_loses_nothing() {
    let mut broker = Mosquitto::start();
    let mut bridge = start_bridge(&bridge_toml(broker.port, "restart-broker", "")).await;
    let sensor = TestClient::connect(broker.port, "sensor-restart");
    const N: u64 = 300;
    let publisher =
        sensor.publish_stream("telehub/lab/t1/temperature", 0..N, Duration::from_millis(5));

    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.stop();
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.resume();

    let seen = collect_seqs(&mut bridge, N, Duration::from_secs(20)).await;
    let missing: Vec<u64> = (0..N).filter(|s| !seen.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "missing seqs {missing:?}; {:?}",
        bridge.state.status()
    );
    let s = bridge.state.status();
    assert!(s.reconnects >= 1 && s.connected, "{s:?}");
    publisher.await.expect("publisher");
    bridge.stop().await;
}

#[tokio::test]
async fn a_restarted_bridge_gets_what_was_published_while_it_was_down() {
    let broker = Mosquitto::start();
    let toml_text = bridge_toml(broker.port, "restart-hub", "");
    let mut bridge = start_bridge(&toml_text).await;
    let sensor = TestClient::connect(broker.port, "sensor-hub-down");
    sensor.publish_seq("telehub/lab/t1/temperature", 0).await;
    assert_eq!(bridge.next_readings().await.readings[0].seq, Some(0));
    bridge.stop().await;

    for seq in 1..=50u64 {
        sensor.publish_seq("telehub/lab/t1/temperature", seq).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let mut bridge = start_bridge(&toml_text).await;
    let seen = collect_seqs(&mut bridge, 50, Duration::from_secs(10)).await;
    let want: BTreeSet<u64> = (1..=50).collect();
    assert_eq!(seen, want, "{:?}", bridge.state.status());
    bridge.stop().await;
}

#[tokio::test]
async fn mqtts_with_a_private_ca() {
    let broker = Mosquitto::start_tls();
    let tls_port = broker.tls_port.expect("TLS listener");
    let toml_text = format!(
        "[[bridges]]\nname = \"tls\"\nurl = \"mqtts://127.0.0.1:{tls_port}\"\nclient_id = \"tls\"\n\
         ca_file = \"{}\"\nreconnect_min_ms = 50\nreconnect_max_ms = 200\n",
        broker.ca_file().display()
    );
    let mut bridge = start_bridge(&toml_text).await;
    let sensor = TestClient::connect(broker.port, "sensor-tls");
    sensor.publish("telehub/lab/t1/temperature", "7").await;
    let m = bridge.next_readings().await;
    assert_eq!(m.readings[0].value, 7.0);
    assert!(bridge.state.status().broker.starts_with("mqtts://"));
    bridge.stop().await;
}

#[tokio::test]
async fn mqtts_with_a_client_certificate() {
    let broker = Mosquitto::start_with(telehub_testkit::mosquitto::Config {
        tls: true,
        require_client_certificate: true,
        ..Default::default()
    });
    let tls_port = broker.tls_port.expect("TLS listener");
    let bridge_toml = |id: &str, cert: &str| {
        format!(
            "[[bridges]]\nname = \"cert\"\nurl = \"mqtts://127.0.0.1:{tls_port}\"\nclient_id = \"{id}\"\n\
             ca_file = \"{}\"\nreconnect_min_ms = 50\nreconnect_max_ms = 200\n{cert}",
            broker.ca_file().display()
        )
    };

    // Without a certificate the broker refuses the handshake, and the bridge says so.
    let cfg: MqttConfig = toml::from_str(&bridge_toml("no-cert", "")).expect("config");
    let spec = cfg.validate().expect("valid").remove(0);
    let bridge = Bridge::new(spec).expect("bridge builds");
    let state = bridge.state();
    let (tx, _rx) = mpsc::channel(16);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(bridge.run(Collect { tx }, async move {
        let _ = stopped.await;
    }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while state.status().last_error.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no error reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = state.status();
    assert!(!s.connected, "{s:?}");
    let _ = stop.send(());
    let _ = task.await;

    // With the CA's client certificate it connects and carries readings.
    let cert = format!(
        "cert_file = \"{}\"\nkey_file = \"{}\"\n",
        broker.client_cert_file().display(),
        broker.client_key_file().display()
    );
    let mut bridge = start_bridge(&bridge_toml("with-cert", &cert)).await;
    let sensor = TestClient::connect(broker.port, "sensor-cert");
    sensor.publish("telehub/lab/t1/temperature", "8").await;
    assert_eq!(bridge.next_readings().await.readings[0].value, 8.0);
    bridge.stop().await;

    // A key that is not the certificate's stops the bridge from being built.
    let other = format!(
        "cert_file = \"{}\"\nkey_file = \"{}\"\n",
        broker.client_cert_file().display(),
        broker.ca_file().with_file_name("server.key").display()
    );
    let cfg: MqttConfig = toml::from_str(&bridge_toml("bad-key", &other)).expect("config");
    let spec = cfg.validate().expect("valid").remove(0);
    let err = Bridge::new(spec)
        .err()
        .expect("a mismatched key is refused")
        .to_string();
    assert!(err.contains("key_file cannot be used"), "{err}");
}

#[tokio::test]
async fn mqtts_v5_with_a_client_certificate() {
    // The MQTT 5 client connects through the same TLS set-up as 3.1.1: the test CA and
    // a client certificate the broker requires.
    let broker = Mosquitto::start_with(telehub_testkit::mosquitto::Config {
        tls: true,
        require_client_certificate: true,
        ..Default::default()
    });
    let tls_port = broker.tls_port.expect("TLS listener");
    let bridge_toml = |id: &str, cert: &str| {
        format!(
            "[[bridges]]\nname = \"cert5\"\nurl = \"mqtts://127.0.0.1:{tls_port}\"\nclient_id = \"{id}\"\n\
             protocol = \"5\"\nca_file = \"{}\"\nreconnect_min_ms = 50\nreconnect_max_ms = 200\n{cert}",
            broker.ca_file().display()
        )
    };

    // Without a certificate the handshake is refused, and the bridge says so.
    let cfg: MqttConfig = toml::from_str(&bridge_toml("v5-no-cert", "")).expect("config");
    let bridge = Bridge::new(cfg.validate().expect("valid").remove(0)).expect("bridge builds");
    let state = bridge.state();
    let (tx, _rx) = mpsc::channel(16);
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(bridge.run(Collect { tx }, async move {
        let _ = stopped.await;
    }));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while state.status().last_error.is_none() {
        assert!(tokio::time::Instant::now() < deadline, "no error reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!state.status().connected);
    let _ = stop.send(());
    let _ = task.await;

    let cert = format!(
        "cert_file = \"{}\"\nkey_file = \"{}\"\n",
        broker.client_cert_file().display(),
        broker.client_key_file().display()
    );
    let mut bridge = start_bridge(&bridge_toml("v5-with-cert", &cert)).await;
    let s = bridge.state.status();
    assert_eq!((s.protocol, s.broker.starts_with("mqtts://")), ("5", true));
    let sensor = TestClient::connect(broker.port, "sensor-cert5");
    sensor.publish("telehub/lab/t1/temperature", "9").await;
    assert_eq!(bridge.next_readings().await.readings[0].value, 9.0);
    bridge.stop().await;
}
