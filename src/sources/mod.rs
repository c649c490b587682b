//! Sources: where readings, commands and acks come from before they enter the hub.
//!
//! - [`ws_client`]: one WebSocket connection (`/ws/{room}/{client}`), a device or a
//!   dashboard: what it sends is parsed, rate-limited and handed to the [`Hub`](crate::hub::Hub);
//!   what the hub queues for it is written back by [`crate::sinks::ws_writer`].
//! - [`ws_acks`]: a WebSocket device's messages waiting for their durable `accepted`.
//! - [`mqtt`]: the MQTT bridge: sensors on a broker become room members (`via: mqtt`).
//! - [`influx`]: InfluxDB line protocol (Telegraf) posted to `/api/v2/write` or `/write`.
//! - [`http_ingest`]: readings posted as JSON, and commands fetched and acknowledged, by
//!   request (`/api/rooms/{room}/devices/{device}/...`).
//! - [`http_devices`]: devices that reach the hub by HTTP requests (`via: http`), held
//!   between requests.

pub(crate) mod http_devices;
pub(crate) mod http_ingest;
pub(crate) mod influx;
pub(crate) mod mqtt;
pub(crate) mod ws_acks;
pub(crate) mod ws_client;
