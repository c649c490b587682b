//! telehub: a live-dashboard and IoT telemetry hub.

pub mod mqtt;
