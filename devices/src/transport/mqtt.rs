//! A device on MQTT, publishing on the topic layout the hub's MQTT bridge reads:
//!
//! | direction | topic | payload |
//! | --- | --- | --- |
//! | reading, QoS 1 | `telehub/{room}/{device}/{metric}` | `{"value","unit"?,"ts","seq"}` |
//! | command in | `telehub/{room}/{device}/cmd` | `{"id","from","name","args"}` |
//! | ack, QoS 1 | `telehub/{room}/{device}/ack` | `{"id","ok","result"?}` |
//!
//! rumqttc's event loop runs in its own task (it must be polled continuously to keep the
//! connection alive) and forwards the few events the device needs over a bounded channel.
//! Each connection gets a fresh event loop: rumqttc would otherwise replay its own
//! in-flight publishes after a reconnect, and the device already resends from its outbox.
//! A reading leaves the outbox when the broker's PUBACK for its packet id arrives; packet
//! ids are matched to readings by the order in which rumqttc reports sending them.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use telehub_protocol::inbound::MqttReading;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::{sleep_opt, DeviceCtx, Due, Schedule, TokenBucket, MAX_BATCH};
use crate::command::{Command, Effect};
use crate::device::{Device, DeviceSummary};
use crate::outbox::Reading;

/// Requests the device may queue into rumqttc's client channel. The device keeps at most
/// [`MQTT_HANDOFF_LIMIT`] readings there, leaving room for acks and the subscription, so a
/// `try_publish` only fails when the connection is gone.
const MQTT_REQUEST_CAPACITY: usize = 128;
/// Readings handed to rumqttc but not yet reported as written; the rest wait in the outbox.
const MQTT_HANDOFF_LIMIT: usize = 96;
/// Events forwarded from the event-loop task to the device. When it is full the event loop
/// waits, which only slows this one device's connection.
const MQTT_EVENT_CAPACITY: usize = 256;
/// QoS 1 publishes in flight (sent, not yet PUBACKed) per connection.
const MQTT_INFLIGHT: u16 = 100;
/// Keep-alive: a dead broker is noticed within about this long.
const MQTT_KEEP_ALIVE: Duration = Duration::from_secs(5);

/// Where the broker listens, from `mqtt://host:port` (port 1883 when left out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl BrokerUrl {
    /// Parse `mqtt://host[:port]` (also `tcp://`).
    pub fn parse(url: &str) -> Option<BrokerUrl> {
        let rest = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))?;
        let authority = rest.split('/').next()?;
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()?),
            None => (authority, 1883),
        };
        (!host.is_empty()).then(|| BrokerUrl {
            host: host.to_string(),
            port,
        })
    }
}

/// The events a device needs from rumqttc.
#[derive(Debug)]
enum MqttEvent {
    ConnAck,
    /// rumqttc wrote a publish with this packet id.
    Written(u16),
    PubAck(u16),
    Message {
        topic: String,
        payload: Vec<u8>,
    },
    Failed,
}

/// What a written publish carried, to know what its PUBACK confirms.
#[derive(Debug, Clone, Copy)]
enum Sent {
    Reading(u64),
    Ack,
}

struct MqttConn {
    client: AsyncClient,
    events: mpsc::Receiver<MqttEvent>,
    task: JoinHandle<()>,
    /// Publishes queued to rumqttc, in order, not yet reported written.
    queued: VecDeque<Sent>,
    /// Written publishes by packet id, waiting for PUBACK.
    written: HashMap<u16, Sent>,
    ready: bool,
}

impl Drop for MqttConn {
    fn drop(&mut self) {
        // Dropping the event loop closes the socket.
        self.task.abort();
    }
}

/// The JSON payload of one reading on its metric topic.
pub(crate) fn reading_payload(r: &Reading) -> Vec<u8> {
    // A finite float, a string and integers: serialising cannot fail.
    serde_json::to_vec(&MqttReading {
        value: r.value,
        unit: (!r.unit.is_empty()).then_some(r.unit),
        ts: r.ts,
        seq: r.seq,
    })
    .unwrap_or_default()
}

/// The topic prefix of one device: `telehub/{room}/{device}`.
pub fn device_topic(room: &str, device: &str) -> String {
    format!("telehub/{room}/{device}")
}

fn open(broker: &BrokerUrl, dev: &Device) -> MqttConn {
    // Stable per device, with a clean session: a reconnect takes over from a half-open
    // old connection, and the broker keeps no state between runs.
    let client_id = format!("telehub-sim:{}:{}", dev.spec.room, dev.spec.id);
    let mut options = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    options
        .set_keep_alive(MQTT_KEEP_ALIVE)
        .set_clean_session(true)
        .set_inflight(MQTT_INFLIGHT);
    let (client, eventloop) = AsyncClient::new(options, MQTT_REQUEST_CAPACITY);
    let (tx, events) = mpsc::channel(MQTT_EVENT_CAPACITY);
    let task = tokio::spawn(pump(eventloop, tx));
    MqttConn {
        client,
        events,
        task,
        queued: VecDeque::new(),
        written: HashMap::new(),
        ready: false,
    }
}

/// Poll rumqttc's event loop and forward what the device needs. Ends on the first
/// connection error: the device decides when to try again, with a fresh event loop.
async fn pump(mut eventloop: EventLoop, tx: mpsc::Sender<MqttEvent>) {
    loop {
        let event = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => MqttEvent::ConnAck,
            Ok(Event::Incoming(Packet::PubAck(ack))) => MqttEvent::PubAck(ack.pkid),
            Ok(Event::Incoming(Packet::Publish(p))) => MqttEvent::Message {
                topic: p.topic,
                payload: p.payload.to_vec(),
            },
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => MqttEvent::Written(pkid),
            Ok(_) => continue,
            Err(error) => {
                tracing::debug!(%error, "mqtt connection failed");
                let _ = tx.send(MqttEvent::Failed).await;
                return;
            }
        };
        if tx.send(event).await.is_err() {
            return;
        }
    }
}

async fn next_event(conn: &mut Option<MqttConn>) -> Option<MqttEvent> {
    match conn {
        Some(c) => c.events.recv().await,
        None => std::future::pending().await,
    }
}

/// Hand unsent readings to rumqttc within the rate and hand-off limits. Returns when to
/// try again if the rate held some back, or `Err` if the connection is gone.
fn flush(
    conn: &mut MqttConn,
    dev: &mut Device,
    bucket: &mut TokenBucket,
    topic: &str,
) -> Result<Option<Instant>, ()> {
    while dev.has_unsent() && conn.queued.len() < MQTT_HANDOFF_LIMIT {
        let room = MQTT_HANDOFF_LIMIT - conn.queued.len();
        let allowed = bucket.available().min(MAX_BATCH).min(room);
        if allowed == 0 {
            return Ok(Some(bucket.ready_at(1)));
        }
        let batch = dev.take_unsent(allowed);
        if batch.readings.is_empty() {
            break;
        }
        bucket.take(batch.readings.len());
        for r in &batch.readings {
            conn.client
                .try_publish(
                    format!("{topic}/{}", r.metric),
                    QoS::AtLeastOnce,
                    false,
                    reading_payload(r),
                )
                .map_err(|_| ())?;
            conn.queued.push_back(Sent::Reading(r.seq));
        }
    }
    Ok(None)
}

/// Run one device over MQTT until shutdown (and drain), then report.
pub(crate) async fn run_device(
    mut dev: Device,
    broker: BrokerUrl,
    ctx: DeviceCtx,
) -> DeviceSummary {
    let topic = device_topic(&dev.spec.room, &dev.spec.id);
    let cmd_topic = format!("{topic}/cmd");
    let ack_topic = format!("{topic}/ack");
    let mut schedule = Schedule::new(&dev, &ctx);
    let mut conn: Option<MqttConn> = None;
    let mut flush_at: Option<Instant> = None;
    let mut bucket = TokenBucket::new(ctx.send_rate);

    // A connection being opened counts as online: it may finish and drain in time.
    while !schedule.finished(conn.is_none(), dev.unconfirmed()) {
        let mut want_flush = false;
        let mut lost = false;
        tokio::select! {
            due = schedule.next(&mut dev, &ctx.clock) => match due {
                Due::Connect => conn = Some(open(&broker, &dev)),
                Due::Sampled | Due::Shutdown => want_flush = true,
                Due::DrainOver | Due::Booted => {}
            },
            ev = next_event(&mut conn), if conn.is_some() => {
                let Some(c) = conn.as_mut() else { continue };
                match ev {
                    None | Some(MqttEvent::Failed) => lost = true,
                    Some(MqttEvent::ConnAck) => {
                        c.ready = true;
                        dev.connected();
                        schedule.connected();
                        lost = c.client.try_subscribe(cmd_topic.clone(), QoS::AtLeastOnce).is_err();
                        want_flush = true;
                    }
                    Some(MqttEvent::Written(pkid)) => {
                        if let Some(sent) = c.queued.pop_front() {
                            c.written.insert(pkid, sent);
                        }
                    }
                    Some(MqttEvent::PubAck(pkid)) => {
                        if let Some(Sent::Reading(seq)) = c.written.remove(&pkid) {
                            dev.ack_one(seq);
                        }
                        want_flush = true;
                    }
                    Some(MqttEvent::Message { topic, payload }) if topic == cmd_topic => {
                        if let Ok(cmd) = serde_json::from_slice::<Command>(&payload) {
                            let (ack, effect) = dev.handle_command(&cmd);
                            let body = ack.to_mqtt_payload();
                            match c.client.publish(ack_topic.clone(), QoS::AtLeastOnce, false, body).await {
                                Ok(()) => c.queued.push_back(Sent::Ack),
                                Err(_) => lost = true,
                            }
                            match effect {
                                Effect::Reboot(pause) => {
                                    // Give the ack a moment to be written, then pull the plug.
                                    let _ = tokio::time::timeout(Duration::from_millis(200), async {
                                        while let Some(ev) = c.events.recv().await {
                                            if let MqttEvent::Written(_) = ev {
                                                break;
                                            }
                                        }
                                    }).await;
                                    conn = None;
                                    dev.disconnected();
                                    schedule.reboot(pause);
                                    lost = false;
                                }
                                Effect::SetInterval(d) => schedule.set_interval(d),
                                Effect::None => {}
                            }
                        }
                    }
                    Some(MqttEvent::Message { .. }) => {}
                }
            }
            _ = sleep_opt(flush_at), if flush_at.is_some() => {
                flush_at = None;
                want_flush = true;
            }
        }
        if want_flush && flush_at.is_none() && !lost {
            if let Some(c) = conn.as_mut().filter(|c| c.ready) {
                match flush(c, &mut dev, &mut bucket, &topic) {
                    Ok(retry) => flush_at = retry,
                    Err(()) => lost = true,
                }
            }
        }
        if lost {
            tracing::debug!(room = %dev.spec.room, device = %dev.spec.id, "mqtt connection lost");
            let was_up = conn.take().is_some_and(|c| c.ready);
            flush_at = None;
            if was_up {
                dev.disconnected();
                schedule.dropped();
            } else {
                dev.stats().connect_failure();
                schedule.retry_later();
            }
        }
    }
    if let Some(c) = conn.take() {
        if c.ready {
            let _ = c.client.try_disconnect();
            // Let the event loop write the DISCONNECT before it is dropped.
            let mut c = c;
            let _ = tokio::time::timeout(Duration::from_millis(200), async {
                while c.events.recv().await.is_some() {}
            })
            .await;
            dev.disconnected();
        }
    }
    dev.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_broker_urls() {
        assert_eq!(
            BrokerUrl::parse("mqtt://127.0.0.1:1883"),
            Some(BrokerUrl {
                host: "127.0.0.1".into(),
                port: 1883
            })
        );
        assert_eq!(
            BrokerUrl::parse("mqtt://broker").map(|b| b.port),
            Some(1883)
        );
        assert_eq!(BrokerUrl::parse("ws://x:1"), None);
        assert_eq!(BrokerUrl::parse("mqtt://:1"), None);
    }

    #[test]
    fn payload_shape() {
        let r = Reading {
            seq: 17,
            ts: 1_764_000_000_000,
            metric: "temperature",
            value: 21.5,
            unit: "C",
        };
        let v: serde_json::Value = serde_json::from_slice(&reading_payload(&r)).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"value":21.5,"unit":"C","ts":1_764_000_000_000_i64,"seq":17})
        );
    }
}
