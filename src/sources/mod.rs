//! Sources: where readings, commands and acks come from before they enter the hub.
//!
//! - [`ws_client`]: one WebSocket connection (`/ws/{room}/{client}`), a device or a
//!   dashboard: what it sends is parsed, rate-limited and handed to the [`Hub`](crate::hub::Hub);
//!   what the hub queues for it is written back by [`crate::sinks::ws_writer`].
//! - [`ws_acks`]: a WebSocket device's messages waiting for their durable `accepted`.
//! - [`mqtt`]: the MQTT bridge: sensors on a broker become room members (`via: mqtt`).

pub(crate) mod mqtt;
pub(crate) mod ws_acks;
pub(crate) mod ws_client;
