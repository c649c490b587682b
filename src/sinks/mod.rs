//! Sinks: where a reading goes once the hub has stamped it.
//!
//! - [`ws_writer`]: drains a WebSocket member's mailbox into its socket (`writev`).
//! - [`linger`]: how long a dashboard's writer holds frames so one write carries several.
//! - [`history`]: rings per series and the room's recovery log, in memory.
//! - [`store`]: the SQLite file behind history, written in batches off the hot path.

pub(crate) mod history;
pub(crate) mod layouts;
pub(crate) mod linger;
pub(crate) mod store;
pub(crate) mod ws_writer;

use history::{History, HistoryConfig};
use prometheus_client::metrics::histogram::Histogram;
use store::{Store, StoreError};

impl History {
    /// Opens history as `config` says: with `persist`, opens (or creates) the database
    /// in `data_dir`, reloads each room's epoch, last offset and its readings within the
    /// retention window, and starts the store's writer. Defined here, where both sinks
    /// are known, so that history needs only its [`Durable`](history::durable::Durable)
    /// seam and the store imports history, never the other way round.
    pub fn open(config: HistoryConfig) -> Result<History, StoreError> {
        History::open_timed(config, None)
    }

    /// [`History::open`], with the store timing each of its commits into
    /// `commit_seconds` (the hub's `telehub_store_commit_seconds`).
    pub(crate) fn open_timed(
        config: HistoryConfig,
        commit_seconds: Option<Histogram>,
    ) -> Result<History, StoreError> {
        if !config.persist {
            return Ok(History::in_memory(config));
        }
        let (store, loaded) = Store::open(&config, commit_seconds)?;
        Ok(History::durable(config, Box::new(store), loaded))
    }
}
