//! The MQTT bridge: a source of readings beside the WebSocket sessions, and a way back
//! to devices that live on a broker.
//!
//! ```text
//!  broker ──> rumqttc poll loop ──(INGEST_QUEUE)──> ingest: topic template + payload
//!    ^                                               -> BridgeSink (the hub seam)
//!    └── commands / mirrored readings <── BridgeLink <── hub
//! ```
//!
//! - [`config`]: `[[mqtt.bridges]]`, validated into a [`config::BridgeSpec`].
//! - [`template`]: topic templates (`sensors/{room}/{device}/{metric}`).
//! - [`discovery`]: Home Assistant MQTT discovery: announced entities to series.
//! - [`homie`]: Homie 4 devices' properties to series.
//! - [`payload`]: payload shapes (number, reading object, flat object, SenML) and the
//!   timestamp rules.
//! - [`client`]: the one seam over rumqttc's MQTT 3.1.1 and MQTT 5 clients (requests,
//!   events, reason codes), so that everything else is written once.
//! - [`bridge`]: the connection: a persistent QoS 1 session, reconnects with backoff,
//!   manual acks after the hub has taken each message.
//! - [`sink`]: the hub seam: bridged devices as `via: mqtt` members, commands out, acks
//!   back, retained seeds.
//! - [`state`]: what `GET /api/bridges` and `/metrics` show.
//!
//! `docs/MQTT.md` documents the topic layout and payloads for users.

pub(crate) mod bridge;
pub(crate) mod client;
pub(crate) mod config;
pub(crate) mod discovery;
pub(crate) mod homie;
pub(crate) mod ingest;
pub(crate) mod link;
pub(crate) mod members;
pub(crate) mod payload;
pub(crate) mod state;
pub(crate) mod template;

pub(crate) use bridge::Bridge;
pub(crate) use config::MqttConfig;
pub(crate) use members::HubSink;
pub(crate) use state::Bridges;

/// Everything that can go wrong in a bridge, at start-up or while it runs.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    /// A `[[mqtt.bridges]]` key is wrong; `key` is its full path.
    #[error("config error: key `{key}`: {message}")]
    Config { key: String, message: String },
    /// The TLS setup for an `mqtts://` broker failed (CA file, roots).
    #[error("bridge `{bridge}`: TLS: {message}")]
    Tls { bridge: String, message: String },
    /// A command or mirrored reading could not be queued for the broker.
    #[error("bridge `{bridge}`: cannot publish to {topic}: {message}")]
    Publish {
        bridge: String,
        topic: String,
        message: String,
    },
}
