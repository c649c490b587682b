//! Logging: tracing with structured fields, filtered by `RUST_LOG` or `server.log`.

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber once; later calls (tests spawning several hubs) are
/// harmless no-ops.
pub fn init(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(default_filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .try_init();
}
