//! The MQTT transport against a real Mosquitto broker started on a free port: readings
//! arrive on `telehub/{room}/{device}/{metric}` with the documented payload, commands on
//! `.../cmd` are answered on `.../ack`, and a broker restart loses nothing.

use std::collections::HashSet;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use telehub_sim::{BackoffConfig, Kind, RunOptions, Scenario, SeqStart, SimStats};
use tokio::sync::oneshot;

/// A Mosquitto process on a port of its own, killed on drop.
struct Broker {
    port: u16,
    child: Child,
}

impl Broker {
    fn start_on(port: u16) -> Broker {
        let mut child = Command::new("mosquitto")
            .args(["-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto must be installed (Debian package mosquitto)");
        // Wait until it accepts connections.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Broker { port, child };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!("mosquitto did not start on port {port}");
    }

    fn start() -> Broker {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        Broker::start_on(port)
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

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
async fn subscriber(
    port: u16,
    id: &str,
) -> (AsyncClient, tokio::sync::mpsc::Receiver<(String, Value)>) {
    let mut opts = MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (client, mut eventloop) = AsyncClient::new(opts, 64);
    client
        .subscribe("telehub/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (tx, rx) = tokio::sync::mpsc::channel(10_000);
    let (ready_tx, ready_rx) = oneshot::channel();
    tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let v: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                    if tx.send((p.topic, v)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(5), ready_rx)
        .await
        .expect("suback in time")
        .expect("subscriber running");
    (client, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_and_commands_over_mqtt() {
    // Arrange
    let broker = Broker::start();
    let (cmd_client, mut inbox) = subscriber(broker.port, "test-sub").await;
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
    cmd_client
        .publish(
            "telehub/room-1/climate-1/cmd",
            QoS::AtLeastOnce,
            false,
            json!({"id":"c-1","from":"dash","name":"set_setpoint","args":{"value":26.5}})
                .to_string(),
        )
        .await
        .expect("publish command");
    cmd_client
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
    while let Ok((topic, v)) = inbox.try_recv() {
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
    let mut broker = Broker::start();
    let port = broker.port;
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
    let _broker = Broker::start_on(port);
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
