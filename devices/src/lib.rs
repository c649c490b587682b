//! telehub-sim: simulated IoT devices for telehub, and the benchmark load generator.
//!
//! The pipeline of a run: a [`Scenario`] (TOML file, quick-start numbers, or
//! [`demo_scenario`]) expands to devices; each device's sensor model (`kinds`) samples on
//! its interval into a bounded outbox; a transport (`transport::ws` to the hub, or
//! `transport::mqtt` to a broker) sends the outbox, keeps every reading until it is
//! confirmed, reconnects with backoff, and resends after a reconnect; commands from
//! dashboards are answered with acks. [`run`] ties it together and returns a [`Summary`].
//!
//! `bench` is the separate load generator (`telehub-sim bench`): devices and dashboards
//! per room against a running hub, measuring throughput, loss and latency.
//!
//! The library prints nothing; the `telehub-sim` binary does.

pub mod auth;
pub mod backoff;
pub mod bench;
pub mod clock;
pub mod command;
mod device;
pub mod fault;
pub mod kinds;
pub mod outbox;
pub mod rng;
mod run;
pub mod scenario;
pub mod stats;
mod transport;
pub mod wsclient;

pub use auth::{AuthError, MintOptions, TokenRequest, TokenSource};
pub use backoff::BackoffConfig;
pub use clock::ClockConfig;
pub use device::{DeviceSummary, SeqStart};
pub use kinds::Kind;
pub use run::{
    run, RunError, RunOptions, Summary, Transport, DEFAULT_BUFFER, DEFAULT_DRAIN, DEFAULT_SEND_RATE,
};
pub use scenario::{demo_scenario, Scenario, ScenarioError};
pub use stats::{SimStats, StatsSnapshot};
pub use transport::mqtt::device_topic;
