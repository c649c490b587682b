//! The MQTT client (rumqttc) that plays sensors, devices and a broker-side observer in
//! the tests and the benchmark: it keeps polling through broker restarts, with a
//! persistent session so nothing it published is lost, and collects what its
//! subscriptions deliver.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, Publish, QoS};
use tokio::sync::mpsc;

pub struct TestClient {
    pub client: AsyncClient,
    /// Messages received on the client's subscriptions.
    pub inbox: mpsc::Receiver<Publish>,
    /// One `()` per SUBACK, so that [`TestClient::subscribe`] returns once it holds.
    subacks: mpsc::Receiver<()>,
    task: tokio::task::JoinHandle<()>,
}

impl TestClient {
    /// Connects to `127.0.0.1:port` as `id` (clean session off).
    pub fn connect(port: u16, id: &str) -> TestClient {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5))
            .set_clean_session(false)
            .set_max_packet_size(256 * 1024, 256 * 1024);
        let (client, mut eventloop) = AsyncClient::new(o, 100_000);
        let (tx, inbox) = mpsc::channel(100_000);
        let (sub_tx, subacks) = mpsc::channel(1_000);
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.try_send(p);
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = sub_tx.try_send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        TestClient {
            client,
            inbox,
            subacks,
            task,
        }
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .expect("queue publish");
    }

    /// Publishes reading number `seq` as `{"value":seq,"seq":seq}` (QoS 1), so that a
    /// test can tell which of a stream arrived.
    pub async fn publish_seq(&self, topic: &str, seq: u64) {
        self.publish(topic, format!(r#"{{"value":{seq},"seq":{seq}}}"#))
            .await;
    }

    /// Publishes readings `seqs` (see [`TestClient::publish_seq`]) on `topic`, one every
    /// `every`, in a task that hands the client back when done.
    pub fn publish_stream(
        self,
        topic: &str,
        seqs: std::ops::Range<u64>,
        every: Duration,
    ) -> tokio::task::JoinHandle<TestClient> {
        let topic = topic.to_string();
        tokio::spawn(async move {
            for seq in seqs {
                self.publish_seq(&topic, seq).await;
                tokio::time::sleep(every).await;
            }
            self
        })
    }

    pub async fn publish_retained(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, true, payload.into())
            .await
            .expect("queue publish");
    }

    /// Subscribes to `filter` (QoS 1) and waits for the broker's SUBACK, so that what
    /// is published next is delivered.
    pub async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("queue subscribe");
        tokio::time::timeout(crate::WAIT, self.subacks.recv())
            .await
            .unwrap_or_else(|_| panic!("no SUBACK for {filter} within {:?}", crate::WAIT))
            .expect("the client's event loop runs");
    }

    /// The next message received, within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Publish> {
        tokio::time::timeout(within, self.inbox.recv())
            .await
            .ok()
            .flatten()
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}
