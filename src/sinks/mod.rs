//! Sinks: where a reading goes once the hub has stamped it.
//!
//! - [`ws_writer`]: drains a WebSocket member's mailbox into its socket (`writev`).
//! - [`history`]: rings per series and the room's recovery log, in memory.
//! - [`store`]: the SQLite file behind history, written in batches off the hot path.

pub(crate) mod history;
pub(crate) mod store;
pub(crate) mod ws_writer;
