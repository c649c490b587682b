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

pub(crate) mod api;
pub(crate) mod app;
pub(crate) mod auth;
pub(crate) mod clock;
pub(crate) mod config;
pub(crate) mod hub;
pub(crate) mod metrics;
pub(crate) mod net;
pub(crate) mod render;
pub(crate) mod shutdown;
pub(crate) mod sinks;
pub(crate) mod sources;
pub mod telemetry;

pub use app::{run, ServerError};
pub use auth::{mint_token, TokenError};
pub use config::{AuthConfig, AuthMode, ConfigError, KeyAlgorithm, KeyConfig, Secret, Settings};
pub use render::plot::Format as PlotFormat;

/// The MQTT bridge as a component, for tests and tools that drive it without a hub.
pub mod mqtt {
    pub use crate::sources::mqtt::bridge::Bridge;
    pub use crate::sources::mqtt::config::MqttConfig;
    pub use crate::sources::mqtt::ingest::{
        BridgeSink, BridgedAck, BridgedMessage, BridgedReading,
    };
    pub use crate::sources::mqtt::link::BridgeLink;
    pub use crate::sources::mqtt::state::BridgeState;
    pub use crate::sources::mqtt::BridgeError;
}

/// History as a component, for benchmarks that time it without a hub.
pub mod history {
    pub use crate::sinks::history::room::RoomHistory;
    pub use crate::sinks::history::{History, HistoryConfig, HistoryError, Record};
}
