//! The outbox: every reading a device has produced and the far end has not yet confirmed.
//!
//! A reading enters when it is sampled and leaves when it is acknowledged: by the hub's
//! `accepted` (WebSocket, cumulative up to a seq) or by the broker's PUBACK (MQTT, one
//! reading at a time). Readings sent on a connection that then drops are rewound and sent
//! again on the next one, with their original `ts` and `seq`; the hub deduplicates them.
//!
//! The outbox is bounded: when it holds `capacity` readings, pushing one more drops the
//! oldest, and the drop is counted so the summary can say how many were lost.

use std::collections::VecDeque;

/// One reading as the device sends it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Per-device sequence number, rising by one per reading, never reused in a run.
    pub seq: u64,
    /// When it was measured, epoch milliseconds (simulated clock).
    pub ts: i64,
    /// Metric name.
    pub metric: &'static str,
    /// Value; finite.
    pub value: f64,
    /// Unit, empty for none.
    pub unit: &'static str,
}

#[derive(Debug, Clone)]
struct Entry {
    reading: Reading,
    /// Confirmed by the far end, waiting only for older entries to be confirmed too.
    acked: bool,
    /// How many times it has been handed to a connection.
    sends: u32,
}

/// A bounded, ordered buffer of unconfirmed readings with a send cursor.
#[derive(Debug)]
pub struct Outbox {
    entries: VecDeque<Entry>,
    capacity: usize,
    /// Entries before this index have been handed to the current connection.
    cursor: usize,
    dropped: u64,
    /// Entries not yet confirmed (kept so that [`len`](Self::len) is O(1)).
    unacked: usize,
}

/// What a [`Outbox::take_unsent`] handed out.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    /// The readings, oldest first.
    pub readings: Vec<Reading>,
    /// How many of them had been sent before (on an earlier connection).
    pub resent: u64,
}

impl Outbox {
    /// An outbox that holds at most `capacity` readings (at least 1).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Outbox {
            entries: VecDeque::with_capacity(capacity.min(1024)),
            capacity,
            cursor: 0,
            dropped: 0,
            unacked: 0,
        }
    }

    /// Add a fresh reading. Returns true when the oldest reading was dropped to make room.
    pub fn push(&mut self, reading: Reading) -> bool {
        let mut dropped = false;
        if self.entries.len() >= self.capacity {
            if self.entries.pop_front().is_some_and(|e| !e.acked) {
                self.unacked -= 1;
            }
            self.cursor = self.cursor.saturating_sub(1);
            self.dropped += 1;
            dropped = true;
        }
        self.entries.push_back(Entry {
            reading,
            acked: false,
            sends: 0,
        });
        self.unacked += 1;
        dropped
    }

    /// Hand out up to `max` readings not yet sent on this connection (skipping ones already
    /// confirmed) and move the cursor past them.
    pub fn take_unsent(&mut self, max: usize) -> Batch {
        let mut batch = Batch::default();
        while self.cursor < self.entries.len() && batch.readings.len() < max {
            let e = &mut self.entries[self.cursor];
            self.cursor += 1;
            if e.acked {
                continue;
            }
            if e.sends > 0 {
                batch.resent += 1;
            }
            e.sends += 1;
            batch.readings.push(e.reading);
        }
        batch
    }

    /// Put back the last `n` readings handed out by [`take_unsent`](Self::take_unsent)
    /// because the transport could not take them after all.
    pub fn untake(&mut self, n: usize) {
        let mut left = n;
        while left > 0 && self.cursor > 0 {
            self.cursor -= 1;
            let e = &mut self.entries[self.cursor];
            if !e.acked {
                e.sends = e.sends.saturating_sub(1);
                left -= 1;
            }
        }
    }

    /// The hub accepted every reading up to and including `seq`. Returns how many
    /// readings this confirmed.
    pub fn ack_through(&mut self, seq: u64) -> usize {
        let mut n = 0;
        while let Some(front) = self.entries.front() {
            if front.reading.seq > seq {
                break;
            }
            if !front.acked {
                n += 1;
            }
            self.entries.pop_front();
            self.cursor = self.cursor.saturating_sub(1);
        }
        self.unacked -= n;
        n
    }

    /// The hub accepted the readings with seq in `first..=last` (one message's granted
    /// prefix). Returns how many readings this newly confirmed.
    pub fn ack_range(&mut self, first: u64, last: u64) -> usize {
        let start = self.entries.partition_point(|e| e.reading.seq < first);
        let mut n = 0;
        for e in self.entries.range_mut(start..) {
            if e.reading.seq > last {
                break;
            }
            if !e.acked {
                e.acked = true;
                n += 1;
            }
        }
        self.unacked -= n;
        self.pop_acked_front();
        n
    }

    fn pop_acked_front(&mut self) {
        while self.entries.front().is_some_and(|e| e.acked) {
            self.entries.pop_front();
            self.cursor = self.cursor.saturating_sub(1);
        }
    }

    /// The broker confirmed the one reading `seq`. Returns whether it was still waiting.
    pub fn ack_one(&mut self, seq: u64) -> bool {
        let Ok(i) = self.entries.binary_search_by_key(&seq, |e| e.reading.seq) else {
            return false;
        };
        let newly = !self.entries[i].acked;
        if newly {
            self.entries[i].acked = true;
            self.unacked -= 1;
        }
        self.pop_acked_front();
        newly
    }

    /// The connection is gone: everything unconfirmed goes out again on the next one.
    pub fn rewind(&mut self) {
        self.cursor = 0;
    }

    /// Unconfirmed readings held (sent or not).
    pub fn len(&self) -> usize {
        self.unacked
    }

    /// Entries held, including confirmed ones waiting behind an older unconfirmed one.
    pub fn held(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is waiting for confirmation.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether there is anything not yet sent on this connection.
    pub fn has_unsent(&self) -> bool {
        self.entries.iter().skip(self.cursor).any(|e| !e.acked)
    }

    /// Readings dropped because the outbox was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The configured bound.
    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(seq: u64) -> Reading {
        Reading {
            seq,
            ts: 1_000 + seq as i64,
            metric: "m",
            value: seq as f64,
            unit: "",
        }
    }

    fn seqs(b: &Batch) -> Vec<u64> {
        b.readings.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn bound_holds_and_drops_oldest() {
        let mut o = Outbox::new(5);
        for s in 1..=12 {
            o.push(r(s));
            assert!(o.held() <= 5);
        }
        assert_eq!(o.dropped(), 7);
        assert_eq!(seqs(&o.take_unsent(100)), vec![8, 9, 10, 11, 12]);
    }

    #[test]
    fn accepted_is_cumulative_and_rewind_resends_the_rest() {
        let mut o = Outbox::new(100);
        for s in 1..=6 {
            o.push(r(s));
        }
        assert_eq!(seqs(&o.take_unsent(4)), vec![1, 2, 3, 4]);
        assert_eq!(o.ack_through(2), 2);
        o.rewind();
        let b = o.take_unsent(100);
        assert_eq!(seqs(&b), vec![3, 4, 5, 6]);
        assert_eq!(b.resent, 2, "3 and 4 went out before");
        // Original ts kept.
        assert_eq!(b.readings[0].ts, 1_003);
        assert_eq!(o.ack_through(6), 4);
        assert!(o.is_empty());
    }

    #[test]
    fn single_acks_out_of_order() {
        let mut o = Outbox::new(100);
        for s in 1..=4 {
            o.push(r(s));
        }
        o.take_unsent(100);
        assert!(o.ack_one(3));
        assert!(!o.ack_one(3));
        assert_eq!(o.len(), 3);
        o.rewind();
        assert_eq!(seqs(&o.take_unsent(100)), vec![1, 2, 4]);
        assert!(o.ack_one(1));
        assert!(o.ack_one(2));
        assert_eq!(o.held(), 1, "3 popped with 1 and 2");
        assert!(o.ack_one(4));
        assert!(o.is_empty());
    }

    #[test]
    fn drop_while_sent_keeps_cursor_consistent() {
        let mut o = Outbox::new(3);
        for s in 1..=3 {
            o.push(r(s));
        }
        assert_eq!(seqs(&o.take_unsent(2)), vec![1, 2]);
        o.push(r(4)); // drops 1, which was in flight
        assert_eq!(seqs(&o.take_unsent(10)), vec![3, 4]);
        assert!(!o.has_unsent());
    }

    #[test]
    fn range_acks_leave_a_refused_tail() {
        let mut o = Outbox::new(100);
        for s in 1..=10 {
            o.push(r(s));
        }
        // Message 1 carried 1..=5 and only 1..=3 were granted; message 2 carried 6..=10.
        assert_eq!(seqs(&o.take_unsent(5)), vec![1, 2, 3, 4, 5]);
        assert_eq!(seqs(&o.take_unsent(5)), vec![6, 7, 8, 9, 10]);
        assert_eq!(o.ack_range(1, 3), 3);
        assert_eq!(o.ack_range(6, 10), 5);
        assert_eq!(o.len(), 2);
        o.rewind();
        assert_eq!(seqs(&o.take_unsent(100)), vec![4, 5]);
    }

    #[test]
    fn untake_puts_back() {
        let mut o = Outbox::new(10);
        for s in 1..=3 {
            o.push(r(s));
        }
        assert_eq!(seqs(&o.take_unsent(3)), vec![1, 2, 3]);
        o.untake(2);
        let b = o.take_unsent(3);
        assert_eq!(seqs(&b), vec![2, 3]);
        assert_eq!(b.resent, 0);
    }
}
