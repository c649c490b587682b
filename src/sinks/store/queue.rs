//! The store's queue: what history hands the writer, in order, each with its ticket.
//!
//! One std mutex around a `VecDeque`: a push takes its ticket and its place in the same
//! critical section, so tickets and queue order agree and "everything up to ticket `t` is
//! committed" holds the moment the writer commits the batch that ends with `t`. The
//! writer takes a whole batch in one lock. Readings are bounded by [`STORE_QUEUE`]; room
//! records are never refused (there is one per room the hub creates, and rooms are
//! bounded by `limits.max_rooms`), so an epoch can never be lost to a full queue.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::sinks::history::durable::{StoredReading, Ticket};

/// Readings queued for the writer at most. When the queue is full (the disk cannot keep
/// up, or commits fail) a reading is still fanned out and kept in memory, but it is not
/// queued: it is counted ([`super::Store::dropped`]), its device gets `store_unavailable`
/// instead of `accepted`, and the hot path never waits.
pub(crate) const STORE_QUEUE: usize = 65_536;

/// One thing for the writer.
pub(super) enum Msg {
    Reading(StoredReading),
    /// A room starts a new epoch: its old rows (if any) belong to a history the hub lost.
    Room {
        room: Arc<str>,
        epoch: Arc<str>,
    },
}

#[derive(Default)]
struct State {
    msgs: VecDeque<(Ticket, Msg)>,
    /// Readings among `msgs` (against [`STORE_QUEUE`]).
    readings: usize,
    last_ticket: Ticket,
    /// When the oldest record of `msgs` was queued (`None` while empty): the writer
    /// commits a flush interval after it, not a flush interval after its last commit.
    oldest: Option<Instant>,
    /// The writer has stopped: nothing more is taken.
    closed: bool,
}

/// The queue shared by history (pushing) and the writer (taking).
#[derive(Default)]
pub(super) struct Queue {
    state: Mutex<State>,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Every step leaves the state consistent, so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `msg`; a reading past [`STORE_QUEUE`] (or anything once closed) is given
    /// back. Returns its ticket and the readings now queued.
    pub(super) fn push(&self, msg: Msg) -> Result<(Ticket, usize), Msg> {
        let mut st = self.lock();
        let reading = matches!(msg, Msg::Reading(_));
        if st.closed || (reading && st.readings >= STORE_QUEUE) {
            return Err(msg);
        }
        st.last_ticket += 1;
        let ticket = st.last_ticket;
        st.readings += usize::from(reading);
        if st.msgs.is_empty() {
            // One clock read per batch, not per reading: only the first into an empty
            // queue.
            st.oldest = Some(Instant::now());
        }
        st.msgs.push_back((ticket, msg));
        Ok((ticket, st.readings))
    }

    pub(super) fn last_ticket(&self) -> Ticket {
        self.lock().last_ticket
    }

    /// Moves up to `max` messages (in order) to the back of `into`.
    pub(super) fn take(&self, max: usize, into: &mut Vec<(Ticket, Msg)>) {
        let mut st = self.lock();
        let n = st.msgs.len().min(max);
        let mut readings = 0;
        for m in st.msgs.drain(..n) {
            readings += usize::from(matches!(m.1, Msg::Reading(_)));
            into.push(m);
        }
        st.readings -= readings;
        if st.msgs.is_empty() {
            st.oldest = None;
        }
        // A partial take (a full batch) keeps the earlier mark: the rest is committed at
        // once anyway.
    }

    /// When the oldest queued record was queued, if any is.
    pub(super) fn oldest(&self) -> Option<Instant> {
        self.lock().oldest
    }

    /// Whether a full batch of readings waits (the writer commits it before its deadline).
    pub(super) fn batch_ready(&self) -> bool {
        self.lock().readings >= super::writer::MAX_BATCH
    }

    /// Whether anything is queued.
    pub(super) fn is_empty(&self) -> bool {
        self.lock().msgs.is_empty()
    }

    /// Refuses everything from now on (the writer has stopped).
    pub(super) fn close(&self) {
        self.lock().closed = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_follow_queue_order_and_rooms_pass_a_full_queue() {
        let q = Queue::default();
        let room = || Msg::Room {
            room: Arc::from("r"),
            epoch: Arc::from("e"),
        };
        assert_eq!(q.push(room()).ok().map(|t| t.0), Some(1));
        let mut taken = Vec::new();
        q.take(10, &mut taken);
        assert_eq!(taken.len(), 1);
        assert_eq!(q.last_ticket(), 1);
        // Fill the readings' capacity: the next reading is refused, a room is not.
        let key = Arc::new(crate::sinks::history::SeriesKey {
            device: Arc::from("d"),
            metric: Arc::from("m"),
        });
        let reading = |offset| {
            Msg::Reading(StoredReading {
                room: Arc::from("r"),
                key: key.clone(),
                unit: None,
                ts: 0,
                value: 1.0,
                seq: None,
                offset,
            })
        };
        for i in 0..STORE_QUEUE as u64 {
            assert!(q.push(reading(i)).is_ok());
        }
        assert!(
            q.push(reading(0)).is_err(),
            "a full queue refuses a reading"
        );
        let (ticket, queued) = q.push(room()).ok().expect("a room passes a full queue");
        assert_eq!((ticket, queued), (STORE_QUEUE as u64 + 2, STORE_QUEUE));
        q.close();
        assert!(q.push(room()).is_err(), "a closed queue takes nothing");
    }
}
