//! An MQTT 5 client (rumqttc's `v5`) that plays a device answering commands: it sees a
//! command's response topic and correlation data, and publishes its answer with the
//! correlation data echoed, as MQTT 5 request/response asks.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use tokio::sync::mpsc;

pub struct TestClient5 {
    pub client: AsyncClient,
    /// Messages received on the client's subscriptions.
    pub inbox: mpsc::Receiver<Publish>,
    subacks: mpsc::Receiver<()>,
    task: tokio::task::JoinHandle<()>,
}

impl TestClient5 {
    /// Connects to `127.0.0.1:port` as `id` (a clean start).
    pub fn connect(port: u16, id: &str) -> TestClient5 {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(o, 10_000);
        let (tx, inbox) = mpsc::channel(10_000);
        let (sub_tx, subacks) = mpsc::channel(100);
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
        TestClient5 {
            client,
            inbox,
            subacks,
            task,
        }
    }

    /// Subscribes to `filter` (QoS 1) and waits for the SUBACK.
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

    /// Publishes `payload` (QoS 1) on `topic`.
    pub async fn publish(&self, topic: &str, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.into())
            .await
            .expect("queue publish");
    }

    /// Answers `request` on its response topic with `payload`, echoing its correlation
    /// data. Panics if the request has no response topic.
    pub async fn respond(&self, request: &Publish, payload: impl Into<Vec<u8>>) {
        let props = request.properties.clone().unwrap_or_default();
        let topic = props
            .response_topic
            .clone()
            .expect("the request carries a response topic");
        self.client
            .publish_with_properties(
                topic,
                QoS::AtLeastOnce,
                false,
                payload.into(),
                PublishProperties {
                    correlation_data: props.correlation_data,
                    ..Default::default()
                },
            )
            .await
            .expect("queue publish");
    }

    /// The next message received, within `within`.
    pub async fn next(&mut self, within: Duration) -> Option<Publish> {
        tokio::time::timeout(within, self.inbox.recv())
            .await
            .ok()
            .flatten()
    }
}

impl Drop for TestClient5 {
    fn drop(&mut self) {
        self.task.abort();
    }
}
