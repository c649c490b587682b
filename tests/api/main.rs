//! Integration tests: every test spawns a real hub on 127.0.0.1 port 0 and drives it
//! through its public interface (WebSocket and HTTP), as a device or a browser would.
//! One binary with a module per capability keeps linking cheap.

mod cdp;
mod helpers;

mod abuse;
mod alert_sinks;
mod alerts;
mod alerts_dashboard;
mod auth;
mod backpressure;
mod browser;
mod cluster;
mod cluster_keeper;
mod dashboard;
mod discovery;
mod durability;
mod errors;
mod history;
mod http;
mod http_ingest;
mod influx;
mod layout;
mod lifecycle;
mod linger;
mod mqtt;
mod mqtt5;
mod rollups;
mod rooms;
mod runtimes;
mod simulator;
mod tls;
mod tokens;
