//! telehub-testkit: the one copy of each fixture the tests, the examples and the device
//! simulator's tests share. It sits outside the pipeline: it starts the hub and a broker
//! as real processes and plays the devices and dashboards around them.
//!
//! - [`hub`]: a `telehub` process on `127.0.0.1:0`, its real address read from its log.
//! - [`mosquitto`]: a Mosquitto broker (plain and TLS) on a port it really bound.
//! - [`ws`]: a WebSocket client with a timeout on every wait.
//! - [`mqtt`]: an MQTT client that plays sensors and devices.
//! - [`mqtt5`]: an MQTT 5 device that answers commands on their response topic.
//! - [`redis`]: a `redis-server` on a port it really bound, for the cluster tests.
//! - [`http`]: a raw HTTP/1.1 GET.
//! - [`tls`]: rustls clients trusting a test's own CA, for a hub with `[server.tls]`.
//!
//! It does not depend on `telehub` (the root crate takes it as a dev-dependency).

pub mod http;
pub mod hub;
pub mod mosquitto;
pub mod mqtt;
pub mod mqtt5;
pub mod redis;
pub mod tls;
pub mod ws;

use std::time::Duration;

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);
