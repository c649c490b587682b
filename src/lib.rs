//! telehub: a live-dashboard and IoT telemetry hub.
//!
//! A reading flows through the folders in this order:
//!
//! ```text
//!  net/            sources/              hub/                    sinks/
//!  listener ──┬──> ws_client ────┐                           ┌──> ws_writer (dashboards)
//!  handshake  │    (devices)     ├──> Hub ──> Room ──────────┼──> history ──> store (SQLite)
//!  ws/codec   │    mqtt/ bridge ─┘    stamp offset,          └──> mqtt/ members (commands out)
//!             │    (broker)           serialise once               │
//!             └──> api/ (warp: rooms, history, plots, metrics, dashboard assets) <──┘
//!                  render/ (plots)
//! ```
//!
//! - [`net`] accepts connections and takes the WebSocket handshake of
//!   `/ws/{room}/{client}` on the hub's own path; everything else is served by [`api`].
//! - [`sources`] turn what clients send into validated messages for the hub: one
//!   WebSocket connection ([`sources::ws_client`]) or an MQTT broker ([`sources::mqtt`]).
//! - [`hub`] is the registry of rooms and the one seam into a room: it stamps each
//!   reading with the room's offset, serialises it once and queues the same bytes in
//!   every dashboard's mailbox.
//! - [`sinks`] deliver and remember: socket writers, history rings and the SQLite store.
//! - [`api`] and [`render`] read what was remembered; [`app`] wires it all and owns the
//!   graceful [`shutdown`].
//! - [`auth`] stands beside the flow: the handshake, the session and the API ask it who
//!   may connect, publish, read and command (`[auth]`, JWTs, the `Origin` check).
//!
//! `docs/DESIGN.md` walks through the same flow; `docs/PROTOCOL.md` is the wire reference.

#![warn(unreachable_pub)]

pub(crate) mod alerts;
pub(crate) mod api;
pub(crate) mod app;
pub(crate) mod auth;
pub(crate) mod clock;
pub(crate) mod cluster;
pub(crate) mod config;
pub(crate) mod hub;
pub(crate) mod metrics;
pub(crate) mod net;
pub(crate) mod render;
pub(crate) mod runtimes;
pub(crate) mod shutdown;
pub(crate) mod sinks;
pub(crate) mod sources;
pub mod telemetry;

pub use alerts::{AlertsConfig, RuleConfig, Severity};
pub use app::{run, ServerError};
pub use auth::{mint_token, TokenError};
pub use config::{
    AuthConfig, AuthMode, ConfigError, DashboardConfig, KeyAlgorithm, KeyConfig, Secret, Settings,
};
pub use render::plot::Format as PlotFormat;

/// The MQTT bridge as a component, for tests and tools that drive it without a hub.
pub mod mqtt {
    pub use crate::hub::labels::Label as SeriesLabel;
    pub use crate::sources::mqtt::bridge::Bridge;
    pub use crate::sources::mqtt::config::MqttConfig;
    pub use crate::sources::mqtt::ingest::{
        BridgeSink, BridgedAck, BridgedMessage, BridgedReading, Commit,
    };
    pub use crate::sources::mqtt::link::BridgeLink;
    pub use crate::sources::mqtt::state::BridgeState;
    pub use crate::sources::mqtt::BridgeError;
}

/// History as a component, for benchmarks that time it without a hub.
pub mod history {
    pub use crate::config::AckMode;
    pub use crate::sinks::history::room::RoomHistory;
    pub use crate::sinks::history::{History, HistoryConfig, HistoryError, Record};
    pub use crate::sinks::store::archive::{
        export, import, ArchiveError, ArchiveFormat, ArchivedReading,
    };
}

/// Entry points for the fuzz targets in `fuzz/` (see `docs/TESTING.md`): for fuzz targets
/// only, not an API. Behind the `fuzzing` feature, off by default; each function is a thin
/// wrapper over the hub's own `pub(crate)` code, so the fuzzers exercise exactly what a
/// client's bytes reach.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use crate::net::handshake;
    use crate::net::ws::codec;

    pub use crate::sources::mqtt::payload::PayloadFormat;
    pub use crate::sources::mqtt::template::{Captures, TemplateError, TopicTemplate};

    /// The RFC 6455 frame decoder of `/ws/` sessions, fed from memory instead of a socket.
    /// For fuzz targets only.
    pub struct WsDecoder(codec::Decoder);

    /// A complete client message, as the decoder yields it. For fuzz targets only.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum WsMessage {
        Text(String),
        /// A binary message's length (the hub keeps no binary payloads).
        Binary(usize),
        Ping(Vec<u8>),
        Pong,
        Close(Option<u16>),
    }

    /// Why decoding stopped: the close code the hub answers with, and the reason.
    /// For fuzz targets only.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct WsError {
        pub close_code: Option<u16>,
        pub reason: String,
    }

    impl WsDecoder {
        /// A decoder for messages of at most `max_message` bytes. For fuzz targets only.
        pub fn new(max_message: usize) -> WsDecoder {
            WsDecoder(codec::Decoder::new(max_message, bytes::Bytes::new()))
        }

        /// Appends bytes as one socket read would. For fuzz targets only.
        pub fn feed(&mut self, bytes: &[u8]) {
            self.0.feed(bytes);
        }

        /// The next whole message in what was fed, if there is one. For fuzz targets only.
        pub fn decode(&mut self) -> Result<Option<WsMessage>, WsError> {
            let msg = self.0.decode().map_err(|e| WsError {
                close_code: e.close_code(),
                reason: e.to_string(),
            })?;
            Ok(msg.map(|m| match m {
                codec::Message::Text(t) => WsMessage::Text(t),
                codec::Message::Binary(n) => WsMessage::Binary(n),
                codec::Message::Ping(p) => WsMessage::Ping(p.to_vec()),
                codec::Message::Pong => WsMessage::Pong,
                codec::Message::Close(c) => WsMessage::Close(c),
            }))
        }
    }

    /// What the direct handshake path decides about a request head, short of joining a
    /// room (which needs a running hub). For fuzz targets only.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum HandshakeOutcome {
        /// httparse wants more bytes and the request is still under the size limit.
        Partial,
        /// The HTTP status the hub answers with, and the rejection code of its JSON body.
        Refused { status: u16, code: &'static str },
        /// Valid: the `Sec-WebSocket-Accept` value, and the room and client ids.
        Accept {
            accept_key: String,
            room: String,
            client: String,
        },
        /// Not HTTP: the connection is dropped without an answer.
        Malformed,
    }

    /// Parses a handshake request head with the direct path's own functions
    /// (`head_status`, `with_head`) and applies the checks of `handshake::decide`
    /// that come before joining: the path, the ids, the query and the upgrade headers.
    /// For fuzz targets only.
    pub fn handshake(buf: &[u8]) -> HandshakeOutcome {
        use crate::metrics::Rejection;
        use telehub_protocol::ids::valid_id;
        let refused = |why: Rejection, status: u16| HandshakeOutcome::Refused {
            status,
            code: why.as_str(),
        };
        use crate::net::direct::{head_status, with_head, HeadStatus};
        match head_status(buf) {
            HeadStatus::Complete(_) => {}
            HeadStatus::Partial => return HandshakeOutcome::Partial,
            HeadStatus::TooLarge => return refused(Rejection::HeadersTooLarge, 431),
            HeadStatus::Malformed(_) => return HandshakeOutcome::Malformed,
        }
        with_head(buf, |head| {
            let Ok(head) = head else {
                return HandshakeOutcome::Malformed;
            };
            let upgrade =
                head.get && head.connection_upgrade && head.upgrade_websocket && head.version_13;
            let mut parts = head.path.trim_start_matches("/ws/").split('/');
            let (room, client) = match (parts.next(), parts.next(), parts.next()) {
                (Some(r), Some(c), None) => (r, c),
                _ => return refused(Rejection::NotFound, 404),
            };
            if !valid_id(room) {
                return refused(Rejection::InvalidRoom, 400);
            }
            if !valid_id(client) {
                return refused(Rejection::InvalidClient, 400);
            }
            if let Err((why, _)) = handshake::parse_query(head.query) {
                return refused(why, 400);
            }
            match head.key.filter(|_| upgrade) {
                Some(key) => HandshakeOutcome::Accept {
                    accept_key: handshake::accept_key(key),
                    room: room.to_string(),
                    client: client.to_string(),
                },
                None => refused(Rejection::UpgradeRequired, 426),
            }
        })
    }

    /// A field value of a line-protocol line. For fuzz targets only.
    #[derive(Debug, Clone, PartialEq)]
    pub enum InfluxValue {
        Float(f64),
        Int(i64),
        UInt(u64),
        Bool(bool),
        Str(String),
    }

    /// One line-protocol line as the Influx source's parser reads it. For fuzz targets
    /// only.
    #[derive(Debug, Clone, PartialEq)]
    pub struct InfluxLine {
        pub measurement: String,
        pub tags: Vec<(String, String)>,
        pub fields: Vec<(String, InfluxValue)>,
        pub timestamp: Option<i64>,
    }

    /// Parses one line (`src/sources/influx/line.rs`); `Err` holds the reason a client
    /// is told. For fuzz targets only.
    pub fn influx_line(line: &str) -> Result<InfluxLine, String> {
        use crate::sources::influx::line::{parse, FieldValue};
        let l = parse(line).map_err(|e| e.to_string())?;
        Ok(InfluxLine {
            measurement: l.measurement.into_owned(),
            tags: l
                .tags
                .into_iter()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
            fields: l
                .fields
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        FieldValue::Float(f) => InfluxValue::Float(f),
                        FieldValue::Int(i) => InfluxValue::Int(i),
                        FieldValue::UInt(u) => InfluxValue::UInt(u),
                        FieldValue::Bool(b) => InfluxValue::Bool(b),
                        FieldValue::Str(s) => InfluxValue::Str(s.into_owned()),
                    };
                    (k.into_owned(), v)
                })
                .collect(),
            timestamp: l.timestamp,
        })
    }

    /// One reading read from an MQTT payload, before the topic applies. For fuzz targets
    /// only.
    #[derive(Debug, Clone, PartialEq)]
    pub struct PayloadItem {
        pub metric: Option<String>,
        pub device: Option<String>,
        pub value: f64,
        pub unit: Option<String>,
        pub ts: Option<i64>,
        pub seq: Option<u64>,
    }

    /// Decodes an MQTT payload in `format`; `Err` holds the logged reason. For fuzz
    /// targets only.
    pub fn mqtt_payload(
        payload: &[u8],
        format: PayloadFormat,
        now_ms: i64,
    ) -> Result<Vec<PayloadItem>, String> {
        crate::sources::mqtt::payload::decode(payload, format, now_ms)
            .map(|items| {
                items
                    .into_iter()
                    .map(|i| PayloadItem {
                        metric: i.metric,
                        device: i.device,
                        value: i.value,
                        unit: i.unit,
                        ts: i.ts,
                        seq: i.seq,
                    })
                    .collect()
            })
            .map_err(|e| e.to_string())
    }
}
