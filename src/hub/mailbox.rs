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

use std::collections::VecDeque;
use std::sync::Mutex;

use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::Notify;

use serde_json::value::RawValue;
use telehub_protocol::codes::close;

use crate::net::ws::frames::Frame;

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
            depth_at_close: None,
        }
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
        if s.queue.len() >= self.capacity + s.extra {
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
    pub(crate) fn take(&self) -> Taken {
        let mut s = self.lock();
        // The writer drains the join's replay here: from now on the capacity is plain.
        s.extra = 0;
        Taken {
            letters: std::mem::take(&mut s.queue),
            commands: std::mem::take(&mut s.commands),
            close: s.close,
        }
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

    #[tokio::test]
    async fn a_push_wakes_the_writer_even_before_it_waits() {
        let o = Mailbox::new(4);
        o.push(f("a"));
        tokio::time::timeout(std::time::Duration::from_secs(1), o.ready())
            .await
            .expect("the permit was stored");
    }
}
