//! telehub: a live-dashboard and IoT telemetry hub.
//!
//! The data flow reads straight from the module list:
//!
//! ```text
//!  sources                fan-out               sinks
//!  session (devices) ──┐                    ┌── session writers (dashboards)
//!                      ├─> hub / room ──────┤
//!  (mqtt bridge)     ──┘   stamp, offset,   └── (history, store) ──> http API, plots
//!                          serialise once
//! ```
//!
//! - [`upgrade`] takes the WebSocket handshake of `/ws/{room}/{client}` on the hub's own
//!   accept path (small buffers, see `docs/DESIGN.md`), [`http`] serves everything else
//!   through warp.
//! - [`session`] runs one WebSocket connection: a reader loop that parses [`protocol`]
//!   messages and a writer task that drains the connection's bounded [`outbox`].
//! - [`hub`] is the registry of rooms and the one seam through which readings, commands
//!   and acks enter a [`room`]; the room stamps each reading with its offset, serialises it
//!   once and queues the same bytes for every dashboard.
//! - [`mqtt`] bridges MQTT brokers: their sensors publish through the same hub seam as
//!   WebSocket devices (`via: mqtt`), and commands go back to their command topics.
//! - [`server`] wires it together and owns the graceful [`shutdown`].

pub mod client;
pub mod config;
pub mod dashboard;
pub mod history;
pub mod history_api;
pub mod http;
pub mod hub;
pub mod metrics;
pub mod mqtt;
pub mod outbox;
pub mod plot;
pub mod protocol;
pub mod ratelimit;
pub mod room;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod store;
pub mod telemetry;
pub mod upgrade;
pub mod websocket;

pub use config::Settings;
pub use hub::Hub;
pub use server::run;
