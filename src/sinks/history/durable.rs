//! What history needs of durable storage, and what it gets back at start.
//!
//! History is the first sink and decides what is kept; the store
//! ([`crate::sinks::store`]) implements [`Durable`] and writes it to disk. Defining the
//! seam here keeps the dependency one way: the store knows history's types, history knows
//! only this trait.
//!
//! Every record the store queues gets a [`Ticket`], given out in queue order; the store
//! publishes the highest ticket it has committed ([`Commits`]), so "ticket `t` is on disk"
//! is one comparison, and whoever must wait for disk (a device's `accepted`, an MQTT
//! PUBACK) waits on the same watch channel.

use std::sync::Arc;

use super::SeriesKey;

/// A record's place in the store's queue: 1 for the first, then one more for each.
/// Every ticket up to [`CommitState::committed`] is on disk.
pub(crate) type Ticket = u64;

/// What the store has done with what was queued.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CommitState {
    /// Every record with a ticket up to this one is committed.
    pub(crate) committed: Ticket,
    /// Why commits fail, while they fail past their retries (`None` when healthy).
    /// Records not yet committed are not acknowledged meanwhile; they stay queued and are
    /// written once a commit succeeds again.
    pub(crate) failing: Option<Arc<str>>,
}

/// Where a [`CommitState`] is published; one receiver per waiter.
pub(crate) type Commits = tokio::sync::watch::Receiver<CommitState>;

/// What the store did with one reading handed to [`Durable::push_reading`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Queued {
    /// Queued: on disk once this ticket is committed.
    Ticket(Ticket),
    /// Not queued (the queue is full, or the store is closed): it is not on disk and
    /// must not be acknowledged.
    Refused,
}

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

/// A device's stored seq window (see the store's `seqs`): its highest seq and the
/// bitmap below it, as the hub's duplicate detection keeps them.
#[derive(Debug, Clone)]
pub(crate) struct StoredSeqs {
    pub(crate) device: Arc<str>,
    pub(crate) high: u64,
    pub(crate) bits: Vec<u8>,
}

/// A room as the store keeps it: (room, epoch, last offset).
pub(crate) type StoredRoom = (Arc<str>, Arc<str>, u64);

/// What the database held at start: the rooms at once, the readings as a stream.
#[derive(Default)]
pub(crate) struct Loaded {
    pub(crate) rooms: Vec<StoredRoom>,
    /// The readings within the retention window, handed over one by one so that start-up
    /// memory is bounded by what history keeps (its rings and log), not by the file.
    pub(crate) rows: Option<Box<dyn StoredRows>>,
}

/// The stored readings, read once at start.
pub(crate) trait StoredRows: Send {
    /// Hands every reading within the window to `each`, by room then offset; returns how
    /// many, or why reading stopped.
    fn for_each(self: Box<Self>, each: &mut dyn FnMut(StoredReading)) -> Result<usize, String>;
}

/// Durable storage behind history. Every method returns at once except `flush` and
/// `close`, which block until the writer has committed (call them off the async workers).
pub(crate) trait Durable: Send + Sync {
    /// Queues a recorded reading for the next commit; never waits.
    fn push_reading(&self, r: StoredReading) -> Queued;
    /// Records that `room` starts epoch `epoch` (its older rows belong to a lost history).
    /// Never refused: room records do not count against the readings' queue capacity.
    fn push_room(&self, room: Arc<str>, epoch: Arc<str>) -> Ticket;
    /// The last ticket given out (what a duplicate's original is covered by).
    fn last_ticket(&self) -> Ticket;
    /// A receiver of the commit state.
    fn commits(&self) -> Commits;
    /// The seq windows of `room`'s devices as committed (readings memory may no longer
    /// hold); read from disk, so call it once, when the room is made.
    fn device_seqs(&self, room: &str) -> Vec<StoredSeqs>;
    /// Readings not stored because the queue was full.
    fn dropped(&self) -> u64;
    /// Commits that failed (each attempt counts).
    fn commit_failures(&self) -> u64;
    /// Waits until everything queued so far is committed; false if it could not be.
    fn flush(&self) -> bool;
    /// Commits everything and stops the writer.
    fn close(&self);
}
