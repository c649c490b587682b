//! What history needs of durable storage, and what it gets back at start.
//!
//! History is the first sink and decides what is kept; the store
//! ([`crate::sinks::store`]) implements [`Durable`] and writes it to disk. Defining the
//! seam here keeps the dependency one way: the store knows history's types, history knows
//! only this trait.

use std::sync::Arc;

use super::SeriesKey;

/// One reading as the store keeps it (and gives back on start).
#[derive(Debug, Clone)]
pub(crate) struct StoredReading {
    pub(crate) room: Arc<str>,
    pub(crate) key: Arc<SeriesKey>,
    pub(crate) unit: Option<Arc<str>>,
    pub(crate) ts: i64,
    pub(crate) value: f64,
    pub(crate) seq: Option<u64>,
    pub(crate) offset: u64,
}

/// What the database held at start.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    /// (room, epoch, last offset).
    pub(crate) rooms: Vec<(Arc<str>, Arc<str>, u64)>,
    /// Readings within the retention window, by room then offset.
    pub(crate) readings: Vec<StoredReading>,
}

/// Durable storage behind history. Every method returns at once except `flush` and
/// `close`, which block until the writer has committed (call them off the async workers).
pub(crate) trait Durable: Send + Sync {
    /// Queues a recorded reading for the next commit; never waits.
    fn push_reading(&self, r: StoredReading);
    /// Records that `room` starts epoch `epoch` (its older rows belong to a lost history).
    fn push_room(&self, room: Arc<str>, epoch: Arc<str>);
    /// Readings not stored because the queue was full.
    fn dropped(&self) -> u64;
    /// Waits until everything queued so far is committed.
    fn flush(&self);
    /// Commits everything and stops the writer.
    fn close(&self);
}
