//! telehub: a live-dashboard and IoT telemetry hub.

pub mod history;
pub mod plot;
pub mod store;
