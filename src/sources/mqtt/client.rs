//! The one seam between the bridge and the MQTT protocol version: rumqttc's 3.1.1 client
//! and its MQTT 5 client (`rumqttc::v5`) behind [`Client`] (requests to the broker) and
//! [`EventLoop`] (what the broker sends), so that the poll loop ([`super::bridge`]),
//! the ingest task ([`super::ingest`]) and the way back ([`super::link`]) are written
//! once.
//!
//! What differs stays here: MQTT 5's properties (session expiry on CONNECT, response
//! topic and correlation data on commands, correlation data on responses), its reason
//! codes and reason strings (SUBACK, PUBACK, CONNACK, DISCONNECT), and its per-filter
//! subscription options (no local). Both versions connect through the same transport
//! (TCP or the bridge's one rustls config, [`super::bridge`]).

use bytes::Bytes;
use rumqttc::v5;
use rumqttc::v5::mqttbytes::v5 as p5;
use rumqttc::{Outgoing, QoS};

/// Which MQTT the bridge speaks (`[[mqtt.bridges]] protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// MQTT 3.1.1 (`"3.1.1"`, the default).
    #[default]
    V311,
    /// MQTT 5 (`"5"`).
    V5,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::V311 => "3.1.1",
            Protocol::V5 => "5",
        }
    }
}

/// A message from the broker, whichever the protocol.
#[derive(Debug, Clone)]
pub(crate) struct Incoming {
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
    pub(crate) retain: bool,
    /// MQTT 5 correlation data: set on a device's response to a command.
    pub(crate) correlation: Option<Bytes>,
    /// What the PUBACK needs (QoS and packet id).
    ack: AckToken,
}

#[derive(Debug, Clone, Copy)]
enum AckToken {
    V4 { qos: rumqttc::QoS, pkid: u16 },
    V5 { qos: v5::mqttbytes::QoS, pkid: u16 },
}

impl Incoming {
    fn from_v4(p: rumqttc::Publish) -> Incoming {
        Incoming {
            ack: AckToken::V4 {
                qos: p.qos,
                pkid: p.pkid,
            },
            topic: p.topic,
            payload: p.payload,
            retain: p.retain,
            correlation: None,
        }
    }

    fn from_v5(p: p5::Publish) -> Incoming {
        Incoming {
            ack: AckToken::V5 {
                qos: p.qos,
                pkid: p.pkid,
            },
            // MQTT topics are UTF-8; a broker that sends anything else gets its bytes
            // replaced (the topic then matches no template and is counted as ignored).
            topic: String::from_utf8_lossy(&p.topic).into_owned(),
            payload: p.payload,
            retain: p.retain,
            correlation: p.properties.and_then(|props| props.correlation_data),
        }
    }
}

/// A subscription as the bridge asks for it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct FilterSpec {
    pub(crate) path: String,
    /// MQTT 5 "no local": the broker does not send the bridge its own publishes
    /// (mirrored readings, commands). Never on a shared subscription (a protocol error
    /// there); ignored by 3.1.1.
    pub(crate) no_local: bool,
}

/// MQTT 5 properties of a command: where the device answers, and what it echoes.
#[derive(Debug, Clone)]
pub(crate) struct ResponseRoute {
    pub(crate) topic: String,
    pub(crate) correlation: Bytes,
}

/// A request could not be queued for the event loop (queue full or closed, bad topic).
#[derive(Debug, thiserror::Error)]
#[error("cannot queue for the broker: {0}")]
pub(crate) struct ClientError(String);

/// The request side of a bridge's connection: cheap to clone.
#[derive(Clone)]
pub(crate) enum Client {
    V4(rumqttc::AsyncClient),
    V5(v5::AsyncClient),
}

impl Client {
    /// The manual PUBACK of `m` (nothing for QoS 0).
    pub(crate) async fn ack(&self, m: &Incoming) -> Result<(), ClientError> {
        match (self, m.ack) {
            (Client::V4(c), AckToken::V4 { qos, pkid }) => {
                let mut p = rumqttc::Publish::new("", qos, Vec::new());
                p.pkid = pkid;
                c.ack(&p).await.map_err(|e| ClientError(e.to_string()))
            }
            (Client::V5(c), AckToken::V5 { qos, pkid }) => {
                let mut p = p5::Publish::new("", qos, Vec::new(), None);
                p.pkid = pkid;
                c.ack(&p).await.map_err(|e| ClientError(e.to_string()))
            }
            _ => Err(ClientError(
                "a message of the other protocol version".into(),
            )),
        }
    }

    /// Queues a QoS 1, not retained publish without waiting. `response` (MQTT 5 only;
    /// 3.1.1 has no properties and drops it) asks the device to answer there.
    pub(crate) fn try_publish(
        &self,
        topic: String,
        payload: Vec<u8>,
        response: Option<ResponseRoute>,
    ) -> Result<(), ClientError> {
        match self {
            Client::V4(c) => c
                .try_publish(topic, QoS::AtLeastOnce, false, payload)
                .map_err(|e| ClientError(e.to_string())),
            Client::V5(c) => match response {
                None => c.try_publish(topic, v5::mqttbytes::QoS::AtLeastOnce, false, payload),
                Some(r) => c.try_publish_with_properties(
                    topic,
                    v5::mqttbytes::QoS::AtLeastOnce,
                    false,
                    payload,
                    p5::PublishProperties {
                        response_topic: Some(r.topic),
                        correlation_data: Some(r.correlation),
                        ..Default::default()
                    },
                ),
            }
            .map_err(|e| ClientError(e.to_string())),
        }
    }

    pub(crate) fn try_subscribe(&self, filter: String) -> Result<(), ClientError> {
        match self {
            Client::V4(c) => c
                .try_subscribe(filter, QoS::AtLeastOnce)
                .map_err(|e| ClientError(e.to_string())),
            Client::V5(c) => c
                .try_subscribe(filter, v5::mqttbytes::QoS::AtLeastOnce)
                .map_err(|e| ClientError(e.to_string())),
        }
    }

    pub(crate) fn try_unsubscribe(&self, filter: String) -> Result<(), ClientError> {
        match self {
            Client::V4(c) => c
                .try_unsubscribe(filter)
                .map_err(|e| ClientError(e.to_string())),
            Client::V5(c) => c
                .try_unsubscribe(filter)
                .map_err(|e| ClientError(e.to_string())),
        }
    }

    /// One SUBSCRIBE with every filter (QoS 1), waiting for room in the queue; the
    /// SUBACK's codes come in the same order ([`Event::SubAck`]).
    pub(crate) async fn subscribe_many(&self, filters: Vec<FilterSpec>) -> Result<(), ClientError> {
        match self {
            Client::V4(c) => c
                .subscribe_many(
                    filters
                        .into_iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f.path, QoS::AtLeastOnce)),
                )
                .await
                .map_err(|e| ClientError(e.to_string())),
            Client::V5(c) => c
                .subscribe_many(filters.into_iter().map(|f| {
                    let mut filter = p5::Filter::new(f.path, v5::mqttbytes::QoS::AtLeastOnce);
                    filter.nolocal = f.no_local;
                    filter
                }))
                .await
                .map_err(|e| ClientError(e.to_string())),
        }
    }

    pub(crate) fn try_disconnect(&self) -> Result<(), ClientError> {
        match self {
            Client::V4(c) => c.try_disconnect().map_err(|e| ClientError(e.to_string())),
            Client::V5(c) => c.try_disconnect().map_err(|e| ClientError(e.to_string())),
        }
    }
}

/// Why the broker refused something, as `/api/bridges` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Refusal {
    /// The MQTT reason code (3.1.1 has only 0x80, "failure").
    pub code: u8,
    /// The code's name in words (`not authorized`).
    pub reason: String,
    /// The broker's reason string (MQTT 5), when it sent one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason_string: Option<String>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (reason code 0x{:02x})", self.reason, self.code)?;
        if let Some(s) = &self.reason_string {
            write!(f, ": {s}")?;
        }
        Ok(())
    }
}

/// What the poll loop acts on, whichever the protocol.
#[derive(Debug)]
pub(crate) enum Event {
    Message(Incoming),
    Connected {
        session_present: bool,
    },
    /// One code per filter of the SUBSCRIBE, in order: `None` granted.
    SubAck(Vec<Option<Refusal>>),
    /// The broker refused one of the bridge's publishes (MQTT 5 PUBACK reason code).
    PublishRefused(Refusal),
    /// The broker disconnected (3.1.1; MQTT 5 says why, as a connection error).
    Disconnected,
    /// The event loop took a publish off the request queue.
    PublishSent,
    /// The event loop sent DISCONNECT.
    DisconnectSent,
    Other,
}

/// A failed poll: the connection is down (or never came up), with why in words.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ConnectionError(String);

/// The receiving side of a bridge's connection (boxed: rumqttc's event loops are large
/// and moved into the bridge task once).
pub(crate) enum EventLoop {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<v5::EventLoop>),
}

impl EventLoop {
    /// Drops the connection's in-flight state, so that the next poll reconnects.
    pub(crate) fn clean(&mut self) {
        match self {
            EventLoop::V4(e) => e.clean(),
            EventLoop::V5(e) => e.clean(),
        }
    }

    pub(crate) async fn poll(&mut self) -> Result<Event, ConnectionError> {
        match self {
            EventLoop::V4(e) => e
                .poll()
                .await
                .map(v4_event)
                .map_err(|e| ConnectionError(describe_v4(&e))),
            EventLoop::V5(e) => e
                .poll()
                .await
                .map(v5_event)
                .map_err(|e| ConnectionError(describe_v5(&e))),
        }
    }
}

fn outgoing(o: Outgoing) -> Event {
    match o {
        Outgoing::Publish(_) => Event::PublishSent,
        Outgoing::Disconnect => Event::DisconnectSent,
        _ => Event::Other,
    }
}

fn v4_event(e: rumqttc::Event) -> Event {
    use rumqttc::Packet;
    match e {
        rumqttc::Event::Incoming(Packet::Publish(p)) => Event::Message(Incoming::from_v4(p)),
        rumqttc::Event::Incoming(Packet::ConnAck(a)) => Event::Connected {
            session_present: a.session_present,
        },
        rumqttc::Event::Incoming(Packet::SubAck(a)) => Event::SubAck(
            a.return_codes
                .iter()
                .map(|c| match c {
                    rumqttc::SubscribeReasonCode::Success(_) => None,
                    rumqttc::SubscribeReasonCode::Failure => Some(Refusal {
                        code: 0x80,
                        reason: "failure".into(),
                        reason_string: None,
                    }),
                })
                .collect(),
        ),
        rumqttc::Event::Incoming(Packet::Disconnect) => Event::Disconnected,
        rumqttc::Event::Incoming(_) => Event::Other,
        rumqttc::Event::Outgoing(o) => outgoing(o),
    }
}

fn v5_event(e: v5::Event) -> Event {
    use v5::mqttbytes::v5::Packet;
    match e {
        v5::Event::Incoming(Packet::Publish(p)) => Event::Message(Incoming::from_v5(p)),
        v5::Event::Incoming(Packet::ConnAck(a)) => Event::Connected {
            session_present: a.session_present,
        },
        v5::Event::Incoming(Packet::SubAck(a)) => {
            let reason_string = a.properties.and_then(|p| p.reason_string);
            Event::SubAck(
                a.return_codes
                    .iter()
                    .map(|c| {
                        subscribe_refusal(c).map(|(code, reason)| Refusal {
                            code,
                            reason: reason.into(),
                            reason_string: reason_string.clone(),
                        })
                    })
                    .collect(),
            )
        }
        v5::Event::Incoming(Packet::PubAck(a)) => match puback_refusal(&a.reason) {
            None => Event::Other,
            Some((code, reason)) => Event::PublishRefused(Refusal {
                code,
                reason: reason.into(),
                reason_string: a.properties.and_then(|p| p.reason_string),
            }),
        },
        v5::Event::Incoming(Packet::Disconnect(_)) => Event::Disconnected,
        v5::Event::Incoming(_) => Event::Other,
        v5::Event::Outgoing(o) => outgoing(o),
    }
}

/// A SUBACK code: `None` when granted, else its number and name (MQTT 5 §3.9.3).
fn subscribe_refusal(c: &p5::SubscribeReasonCode) -> Option<(u8, &'static str)> {
    use p5::SubscribeReasonCode as S;
    Some(match c {
        S::Success(_) => return None,
        S::Failure | S::Unspecified => (0x80, "unspecified error"),
        S::ImplementationSpecific => (0x83, "implementation specific error"),
        S::NotAuthorized => (0x87, "not authorized"),
        S::TopicFilterInvalid => (0x8f, "topic filter invalid"),
        S::PkidInUse => (0x91, "packet identifier in use"),
        S::QuotaExceeded => (0x97, "quota exceeded"),
        S::SharedSubscriptionsNotSupported => (0x9e, "shared subscriptions not supported"),
        S::SubscriptionIdNotSupported => (0xa1, "subscription identifiers not supported"),
        S::WildcardSubscriptionsNotSupported => (0xa2, "wildcard subscriptions not supported"),
    })
}

/// A PUBACK code: `None` when the publish was taken (MQTT 5 §3.4.2.1).
fn puback_refusal(r: &p5::PubAckReason) -> Option<(u8, &'static str)> {
    use p5::PubAckReason as P;
    Some(match r {
        P::Success | P::NoMatchingSubscribers => return None,
        P::UnspecifiedError => (0x80, "unspecified error"),
        P::ImplementationSpecificError => (0x83, "implementation specific error"),
        P::NotAuthorized => (0x87, "not authorized"),
        P::TopicNameInvalid => (0x90, "topic name invalid"),
        P::PacketIdentifierInUse => (0x91, "packet identifier in use"),
        P::QuotaExceeded => (0x97, "quota exceeded"),
        P::PayloadFormatInvalid => (0x99, "payload format invalid"),
    })
}

/// A CONNACK reason code's number (MQTT 5 §3.2.2.2; the 3.1.1 codes 1 to 3 that
/// rumqttc folds into the same enum keep their 3.1.1 numbers).
fn connack_code(c: &p5::ConnectReturnCode) -> u8 {
    use p5::ConnectReturnCode as C;
    match c {
        C::Success => 0x00,
        C::RefusedProtocolVersion => 0x01,
        C::BadClientId => 0x02,
        C::ServiceUnavailable => 0x03,
        C::UnspecifiedError => 0x80,
        C::MalformedPacket => 0x81,
        C::ProtocolError => 0x82,
        C::ImplementationSpecificError => 0x83,
        C::UnsupportedProtocolVersion => 0x84,
        C::ClientIdentifierNotValid => 0x85,
        C::BadUserNamePassword => 0x86,
        C::NotAuthorized => 0x87,
        C::ServerUnavailable => 0x88,
        C::ServerBusy => 0x89,
        C::Banned => 0x8a,
        C::BadAuthenticationMethod => 0x8c,
        C::TopicNameInvalid => 0x90,
        C::PacketTooLarge => 0x95,
        C::QuotaExceeded => 0x97,
        C::PayloadFormatInvalid => 0x99,
        C::RetainNotSupported => 0x9a,
        C::QoSNotSupported => 0x9b,
        C::UseAnotherServer => 0x9c,
        C::ServerMoved => 0x9d,
        C::ConnectionRateExceeded => 0x9f,
    }
}

/// `NotAuthorized` → `not authorized`: a reason code's name in words.
fn words(debug: &str) -> String {
    let mut out = String::with_capacity(debug.len() + 4);
    for (i, ch) in debug.chars().enumerate() {
        if ch.is_ascii_uppercase() {
            if i > 0 {
                out.push(' ');
            }
            out.push(ch.to_ascii_lowercase());
        } else {
            out.push(ch);
        }
    }
    out
}

/// A short, stable description of a 3.1.1 connection error for logs and `/api/bridges`.
fn describe_v4(e: &rumqttc::ConnectionError) -> String {
    use rumqttc::ConnectionError as E;
    match e {
        E::ConnectionRefused(code) => format!(
            "broker refused the connection: {} (return code {})",
            words(&format!("{code:?}")),
            *code as u8
        ),
        E::Io(io) => format!("network: {io}"),
        E::NetworkTimeout => "connect timed out".into(),
        E::FlushTimeout => "write to broker timed out".into(),
        E::Tls(t) => format!("TLS: {t}"),
        other => other.to_string(),
    }
}

/// The same for MQTT 5, with the broker's reason codes and reason strings in words.
fn describe_v5(e: &v5::ConnectionError) -> String {
    use v5::ConnectionError as E;
    use v5::StateError as S;
    match e {
        E::ConnectionRefused(code) => format!(
            "broker refused the connection: {} (reason code 0x{:02x})",
            words(&format!("{code:?}")),
            connack_code(code)
        ),
        E::Io(io) => format!("network: {io}"),
        E::Timeout(_) => "connect timed out".into(),
        E::Tls(t) => format!("TLS: {t}"),
        E::MqttState(S::ServerDisconnect {
            reason_code,
            reason_string,
        }) => {
            let mut m = format!(
                "broker disconnected: {} (reason code 0x{:02x})",
                words(&format!("{reason_code:?}")),
                *reason_code as u8
            );
            if let Some(s) = reason_string {
                m.push_str(": ");
                m.push_str(s);
            }
            m
        }
        E::MqttState(S::ConnFail { reason }) => format!(
            "broker refused the connection: {}",
            words(&format!("{reason:?}"))
        ),
        E::MqttState(S::Io(io)) => format!("network: {io}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_read_as_words() {
        assert_eq!(words("NotAuthorized"), "not authorized");
        assert_eq!(
            subscribe_refusal(&p5::SubscribeReasonCode::NotAuthorized),
            Some((0x87, "not authorized"))
        );
        assert_eq!(
            subscribe_refusal(&p5::SubscribeReasonCode::Success(
                v5::mqttbytes::QoS::AtLeastOnce
            )),
            None
        );
        let r = Refusal {
            code: 0x87,
            reason: "not authorized".into(),
            reason_string: Some("ACL".into()),
        };
        assert_eq!(r.to_string(), "not authorized (reason code 0x87): ACL");
        assert_eq!(
            puback_refusal(&p5::PubAckReason::NoMatchingSubscribers),
            None
        );
    }
}
