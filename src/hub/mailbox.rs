//! The bounded outbound queue of one member, and the typed [`Letter`]s it holds.
//!
//! The room pushes letters here without waiting (a full queue is an answer, not a wait),
//! and the member's sink drains everything queued in one go: a WebSocket writer
//! ([`crate::sinks::ws_writer`]) puts them on the wire in one `writev`, a bridged MQTT
//! device's drain ([`crate::sources::mqtt::members`]) publishes its commands. Broadcasts
//! (readings, presence, welcome) are encoded once by the room as one WebSocket frame
//! shared by every recipient; a command, which has exactly one recipient, travels typed
//! and each sink encodes it for its own transport. The queue is a `VecDeque` behind a std mutex rather than a tokio
//! channel because an idle connection then holds no buffer at all: a tokio mpsc channel
//! allocates its first block of slots up front, which matters at 10,000 idle dashboards.
//!
//! The mailbox also carries the close decision: a room that finds the queue full, a newer
//! connection that replaces this one, or a shutdown sets a [`Close`] and wakes the writer.
//!
//! A dashboard with `overflow=latest` is not closed when readings fill its queue: from then
//! until its writer next takes the queue, each reading only replaces the newest one of its
//! series ([`Coalesced`], one slot per series, none per reading). The writer then gets the
//! queue, those latest readings in offset order and one `skipped` frame, so nothing is
//! reordered within a series. Other letters (presence, acks, errors, alerts) are never
//! coalesced: they have a queue's worth of room of their own, and past it the mailbox is
//! full as in `close` mode.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::Notify;

use serde_json::value::RawValue;
use telehub_protocol::codes::close;

use crate::config::Overflow;
use crate::net::ws::frames::{self, Frame};

/// What the hub hands a member.
#[derive(Debug, Clone)]
pub(crate) enum Letter {
    /// A message already encoded as one WebSocket text frame, the same bytes for every
    /// recipient (readings, presence, welcome, snapshot, acks, errors). Sinks of other
    /// transports ignore it: a bridged device has no use for them.
    Frame(Frame),
    /// A dashboard's command for this device.
    Command(Box<CommandLetter>),
}

/// A command as its device receives it: `{"type":"command","id","from","name","args"}` on
/// a WebSocket, `{"id","from","name","args"}` on the device's MQTT command topic.
#[derive(Debug, Clone)]
pub(crate) struct CommandLetter {
    pub(crate) id: String,
    /// The commanding dashboard's client id.
    pub(crate) from: std::sync::Arc<str>,
    pub(crate) name: String,
    pub(crate) args: Option<Box<RawValue>>,
}

impl From<Frame> for Letter {
    fn from(frame: Frame) -> Letter {
        Letter::Frame(frame)
    }
}

/// Why and how a connection is being closed by the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Close {
    /// RFC 6455 close code.
    pub code: u16,
    /// Close reason sent to the peer.
    pub reason: &'static str,
    /// Whether frames already queued are sent before the close frame. A slow or replaced
    /// client gets the close at once; a shutdown flushes first.
    pub flush_first: bool,
}

impl Close {
    /// The queue filled up: the client reads slower than the room produces.
    pub(crate) const SLOW_CONSUMER: Close = Close {
        code: close::TRY_AGAIN_LATER,
        reason: close::REASON_SLOW_CONSUMER,
        flush_first: false,
    };
    /// A newer connection with the same (room, client) took over.
    pub(crate) const REPLACED: Close = Close {
        code: close::REPLACED,
        reason: close::REASON_REPLACED,
        flush_first: false,
    };
    /// The hub is stopping.
    pub(crate) const GOING_AWAY: Close = Close {
        code: close::GOING_AWAY,
        reason: close::REASON_SHUTTING_DOWN,
        flush_first: true,
    };
    /// A cluster room saw a gap in its offsets or a new epoch: reconnect with `since`
    /// (the stream fills the gap, or the welcome says `recovered: false`).
    pub(crate) const RESYNC: Close = Close {
        code: close::TRY_AGAIN_LATER,
        reason: close::REASON_CLUSTER_RESYNC,
        flush_first: true,
    };
    /// A cluster dashboard's join could not read Redis: try again later.
    pub(crate) const CLUSTER_UNAVAILABLE: Close = Close {
        code: close::TRY_AGAIN_LATER,
        reason: close::REASON_CLUSTER_UNAVAILABLE,
        flush_first: false,
    };
    /// The client answered nothing for two ping intervals.
    pub(crate) const TIMED_OUT: Close = Close {
        code: close::GOING_AWAY,
        reason: close::REASON_PING_TIMEOUT,
        flush_first: false,
    };

    /// The answer to a client's close frame: its own code echoed (RFC 6455 5.5.1).
    pub(crate) fn answer(code: Option<u16>) -> Close {
        Close {
            code: code.unwrap_or(close::NORMAL),
            reason: "",
            flush_first: false,
        }
    }

    /// The close for a frame the hub cannot accept (1002, 1007, 1009).
    pub(crate) fn refuse(code: u16) -> Close {
        let reason = match code {
            close::TOO_BIG => close::REASON_TOO_BIG,
            close::INVALID_PAYLOAD => close::REASON_INVALID_UTF8,
            _ => close::REASON_PROTOCOL_ERROR,
        };
        Close {
            code,
            reason,
            flush_first: true,
        }
    }
}

/// What became of a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Push {
    Queued,
    /// `overflow=latest` and the queue is full of readings: the reading is kept as its
    /// series' latest; `skipped` says it replaced an older one that will never be sent.
    Coalesced {
        skipped: bool,
    },
    /// The queue is at capacity; the frame was not queued.
    Full,
    /// The connection is closing; the frame was dropped.
    Closed,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Letter>,
    close: Option<Close>,
    /// Room above `capacity` granted by `push_all` (a join's welcome and snapshot) until
    /// the writer next drains the queue, so live readings that arrive meanwhile still fit.
    extra: usize,
    /// `Letter::Command`s in `queue`, so a sink with nothing to encode skips the walk.
    commands: usize,
    /// Readings in `queue` (counted for `overflow=latest` only, where readings and the
    /// other letters each have `capacity`).
    readings: usize,
    /// `overflow=latest` once readings overflowed: the newest undelivered reading per
    /// series, until the writer takes them. Boxed: nothing for a connection that never
    /// fell behind.
    latest: Option<Box<Coalesced>>,
}

/// One device's series in [`Coalesced`]: metric -> (offset, frame).
type Slots = HashMap<Box<str>, (u64, Frame)>;

/// The newest reading of each series a coalescing dashboard has not been sent, and what
/// it will never be sent. Bounded by the room's series (`limits.max_series_per_room`).
#[derive(Default)]
struct Coalesced {
    /// device -> metric -> (offset, frame).
    series: HashMap<Arc<str>, Slots>,
    /// Readings replaced before they were sent.
    skipped: u64,
    /// The lowest and highest offsets among them.
    from_offset: u64,
    to_offset: u64,
}

impl Coalesced {
    /// Keeps `frame` as the latest of (device, metric); true if it replaced one.
    fn keep(&mut self, device: &Arc<str>, metric: &str, offset: u64, frame: Frame) -> bool {
        let metrics = match self.series.get_mut(device.as_ref()) {
            Some(m) => m,
            None => self.series.entry(device.clone()).or_default(),
        };
        let old = match metrics.get_mut(metric) {
            Some(slot) => std::mem::replace(slot, (offset, frame)).0,
            None => {
                metrics.insert(metric.into(), (offset, frame));
                return false;
            }
        };
        if self.skipped == 0 {
            self.from_offset = old;
        }
        self.skipped += 1;
        self.from_offset = self.from_offset.min(old);
        self.to_offset = self.to_offset.max(old);
        true
    }

    /// The latest readings in offset order, then the `skipped` frame if any was.
    fn into_frames(self) -> impl Iterator<Item = Frame> {
        let mut latest: Vec<(u64, Frame)> = self
            .series
            .into_values()
            .flatten()
            .map(|(_, v)| v)
            .collect();
        latest.sort_unstable_by_key(|(offset, _)| *offset);
        let skipped = (self.skipped > 0)
            .then(|| frames::skipped_frame(self.from_offset, self.to_offset, self.skipped));
        latest.into_iter().map(|(_, f)| f).chain(skipped)
    }
}

/// What [`Mailbox::take`] hands a sink.
pub(crate) struct Taken {
    /// Every queued letter, oldest first.
    pub(crate) letters: VecDeque<Letter>,
    /// How many of them are commands (0: all are frames already).
    pub(crate) commands: usize,
    /// The close decided so far, if any.
    pub(crate) close: Option<Close>,
}

/// A bounded queue of frames for one connection, plus its close latch.
pub(crate) struct Mailbox {
    state: Mutex<State>,
    /// Wakes the writer for new frames or a close.
    ready: Notify,
    /// Wakes a writer blocked on a full socket when it must give up and close at once.
    urgent: Notify,
    capacity: usize,
    /// What a full queue does to readings.
    overflow: Overflow,
    /// Where the queue's depth goes when a close is decided (`/metrics`'s
    /// `telehub_outbound_queue_depth_at_close`); none for a mailbox outside a hub.
    depth_at_close: Option<Histogram>,
}

impl Mailbox {
    pub(crate) fn new(capacity: usize) -> Mailbox {
        Mailbox {
            state: Mutex::new(State::default()),
            ready: Notify::new(),
            urgent: Notify::new(),
            capacity,
            overflow: Overflow::Close,
            depth_at_close: None,
        }
    }

    /// The same mailbox with `overflow` for its readings.
    pub(crate) fn overflowing(self, overflow: Overflow) -> Mailbox {
        Mailbox { overflow, ..self }
    }

    /// A mailbox that reports its depth when it is closed to `depth_at_close` (a shared
    /// handle: one pointer per mailbox, observed once per connection).
    pub(crate) fn with_close_depth(capacity: usize, depth_at_close: Histogram) -> Mailbox {
        Mailbox {
            depth_at_close: Some(depth_at_close),
            ..Mailbox::new(capacity)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock cannot leave the queue inconsistent (every
        // operation is a single VecDeque call), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a letter unless the queue is full or closing. Never waits.
    pub(crate) fn push(&self, letter: impl Into<Letter>) -> Push {
        let mut s = self.lock();
        if s.close.is_some() {
            return Push::Closed;
        }
        // With `latest`, readings do not count against the other letters' capacity.
        if s.queue.len() - s.readings >= self.capacity + s.extra {
            return Push::Full;
        }
        let was_empty = s.queue.is_empty();
        let letter = letter.into();
        if matches!(letter, Letter::Command(_)) {
            s.commands += 1;
        }
        s.queue.push_back(letter);
        drop(s);
        if was_empty {
            self.ready.notify_one();
        }
        Push::Queued
    }

    /// Queues the frame of a reading of (device, metric) at `offset`. Like [`push`] for
    /// `overflow=close`; with `latest`, once readings fill the queue the reading is kept
    /// as its series' latest instead ([`Push::Coalesced`]) until the writer takes it.
    ///
    /// [`push`]: Mailbox::push
    pub(crate) fn push_reading(
        &self,
        frame: Frame,
        device: &Arc<str>,
        metric: &str,
        offset: u64,
    ) -> Push {
        if self.overflow == Overflow::Close {
            return self.push(frame);
        }
        let mut s = self.lock();
        if s.close.is_some() {
            return Push::Closed;
        }
        if s.latest.is_none() && s.readings < self.capacity + s.extra {
            let was_empty = s.queue.is_empty();
            s.queue.push_back(Letter::Frame(frame));
            s.readings += 1;
            drop(s);
            if was_empty {
                self.ready.notify_one();
            }
            return Push::Queued;
        }
        let skipped = s
            .latest
            .get_or_insert_with(Box::default)
            .keep(device, metric, offset, frame);
        Push::Coalesced { skipped }
    }

    /// Queues frames regardless of capacity: used once, at join, for the welcome and the
    /// snapshot (two frames). A `?since=` replay is not pushed here: it is queued a page
    /// at a time as the client reads (`Room::catch_up`), within the capacity.
    pub(crate) fn push_all(&self, frames: impl IntoIterator<Item = Frame>) {
        let mut s = self.lock();
        if s.close.is_some() {
            return;
        }
        let before = s.queue.len();
        s.queue.extend(frames.into_iter().map(Letter::Frame));
        s.extra += s.queue.len() - before;
        drop(s);
        self.ready.notify_one();
    }

    /// Asks the writer to close the connection. The first close wins.
    pub(crate) fn close(&self, close: Close) {
        let mut s = self.lock();
        if s.close.is_some() {
            return;
        }
        s.close = Some(close);
        let depth = s.queue.len();
        if !close.flush_first {
            s.queue = VecDeque::new();
            s.latest = None;
        }
        drop(s);
        if let Some(h) = &self.depth_at_close {
            h.observe(depth as f64);
        }
        self.ready.notify_one();
        if !close.flush_first {
            self.urgent.notify_one();
        }
    }

    /// The close decided so far, if any.
    pub(crate) fn closing(&self) -> Option<Close> {
        self.lock().close
    }

    /// Takes every queued letter (the whole queue, leaving none of its memory behind, so
    /// an idle connection holds no queue) and the close decision, if any.
    ///
    /// A coalescing dashboard's latest readings come after the queue (they are newer than
    /// every reading in it), then its `skipped` frame; the next reading is queued again.
    pub(crate) fn take(&self) -> Taken {
        let mut s = self.lock();
        // The writer drains the join's replay here: from now on the capacity is plain.
        s.extra = 0;
        s.readings = 0;
        let mut taken = Taken {
            letters: std::mem::take(&mut s.queue),
            commands: std::mem::take(&mut s.commands),
            close: s.close,
        };
        let latest = s.latest.take();
        drop(s);
        if let Some(latest) = latest {
            taken
                .letters
                .extend(latest.into_frames().map(Letter::Frame));
        }
        taken
    }

    /// Waits until something was pushed or a close was decided.
    pub(crate) async fn ready(&self) {
        self.ready.notified().await
    }

    /// Waits until a close that must not wait for the queue (slow consumer, replaced).
    pub(crate) async fn urgent(&self) {
        self.urgent.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> Frame {
        crate::net::ws::codec::text(s)
    }

    #[test]
    fn bounded_and_closing() {
        let o = Mailbox::new(2);
        assert_eq!(o.push(f("a")), Push::Queued);
        assert_eq!(o.push(f("b")), Push::Queued);
        assert_eq!(o.push(f("c")), Push::Full);
        let t = o.take();
        assert_eq!((t.letters.len(), t.close), (2, None));
        o.close(Close::SLOW_CONSUMER);
        assert_eq!(o.push(f("d")), Push::Closed);
        o.close(Close::GOING_AWAY);
        assert_eq!(o.closing(), Some(Close::SLOW_CONSUMER), "first close wins");
    }

    #[test]
    fn shutdown_keeps_the_queue_and_slow_consumer_drops_it() {
        let o = Mailbox::new(4);
        o.push(f("a"));
        o.close(Close::GOING_AWAY);
        let t = o.take();
        assert_eq!((t.letters.len(), t.close), (1, Some(Close::GOING_AWAY)));

        let o = Mailbox::new(4);
        o.push(f("a"));
        o.close(Close::SLOW_CONSUMER);
        assert!(o.take().letters.is_empty());
    }

    #[test]
    fn the_depth_at_the_first_close_is_observed_once() {
        let h = Histogram::new([1.0, 2.0]);
        let o = Mailbox::with_close_depth(4, h.clone());
        o.push(f("a"));
        o.push(f("b"));
        o.close(Close::SLOW_CONSUMER);
        o.close(Close::GOING_AWAY);
        assert_eq!((h.count(), h.sum()), (1, 2.0));
    }

    fn reading(device: &Arc<str>, metric: &str, offset: u64) -> Frame {
        f(&format!(
            r#"{{"device":"{device}","metric":"{metric}","offset":{offset}}}"#
        ))
    }

    fn texts(t: Taken) -> Vec<String> {
        t.letters
            .iter()
            .map(|l| match l {
                Letter::Frame(fr) => frames::frame_text(fr).to_string(),
                Letter::Command(_) => "command".into(),
            })
            .collect()
    }

    #[test]
    fn latest_keeps_the_newest_reading_per_series_once_full_then_says_what_it_skipped() {
        let o = Mailbox::new(2).overflowing(Overflow::Latest);
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        let push = |d: &Arc<str>, m: &str, off: u64| o.push_reading(reading(d, m, off), d, m, off);
        assert_eq!(push(&a, "t", 1), Push::Queued);
        assert_eq!(push(&b, "t", 2), Push::Queued);
        assert_eq!(push(&a, "t", 3), Push::Coalesced { skipped: false });
        assert_eq!(push(&a, "h", 4), Push::Coalesced { skipped: false });
        assert_eq!(push(&a, "t", 5), Push::Coalesced { skipped: true });
        assert_eq!(push(&b, "t", 6), Push::Coalesced { skipped: false });
        assert_eq!(push(&a, "t", 7), Push::Coalesced { skipped: true });
        // Other letters still have a queue's worth of room, and are never coalesced.
        assert_eq!(o.push(f("presence")), Push::Queued);
        let got = texts(o.take());
        assert_eq!(
            got,
            [
                r#"{"device":"a","metric":"t","offset":1}"#,
                r#"{"device":"b","metric":"t","offset":2}"#,
                "presence",
                r#"{"device":"a","metric":"h","offset":4}"#,
                r#"{"device":"b","metric":"t","offset":6}"#,
                r#"{"device":"a","metric":"t","offset":7}"#,
                r#"{"type":"skipped","from_offset":3,"to_offset":5,"count":2}"#,
            ]
        );
        // Drained: the next reading is queued again, with no skipped frame.
        assert_eq!(push(&a, "t", 8), Push::Queued);
        assert_eq!(texts(o.take()).len(), 1);
    }

    #[test]
    fn latest_still_closes_when_the_other_letters_alone_fill_the_queue() {
        let o = Mailbox::new(2).overflowing(Overflow::Latest);
        let a: Arc<str> = "a".into();
        for off in 0..10 {
            o.push_reading(reading(&a, "t", off), &a, "t", off);
        }
        assert_eq!(o.push(f("p1")), Push::Queued);
        assert_eq!(o.push(f("p2")), Push::Queued);
        assert_eq!(o.push(f("p3")), Push::Full);
        // close mode: readings and the rest share the one capacity.
        let c = Mailbox::new(2);
        assert_eq!(
            c.push_reading(reading(&a, "t", 1), &a, "t", 1),
            Push::Queued
        );
        assert_eq!(c.push(f("p1")), Push::Queued);
        assert_eq!(c.push_reading(reading(&a, "t", 2), &a, "t", 2), Push::Full);
    }

    #[test]
    fn a_slow_consumer_close_forgets_the_coalesced_readings() {
        let o = Mailbox::new(1).overflowing(Overflow::Latest);
        let a: Arc<str> = "a".into();
        for off in 0..3 {
            o.push_reading(reading(&a, "t", off), &a, "t", off);
        }
        o.close(Close::REPLACED);
        assert!(o.take().letters.is_empty());
    }

    #[tokio::test]
    async fn a_push_wakes_the_writer_even_before_it_waits() {
        let o = Mailbox::new(4);
        o.push(f("a"));
        tokio::time::timeout(std::time::Duration::from_secs(1), o.ready())
            .await
            .expect("the permit was stored");
    }
}
