//! A dashboard writer's linger (`limits.dashboard_linger_ms`): after the first frame of
//! a batch arrives, the writer waits this long before it takes the mailbox, so that one
//! `writev` carries every frame that arrived meanwhile (Kafka's `linger.ms`).
//!
//! Part of the dashboard sink ([`crate::sinks::ws_writer`]): the session's loop asks
//! [`Linger::holding`] before it takes the mailbox, calls [`Linger::hold`] when the
//! mailbox wakes it, and waits on [`Linger::elapsed`] meanwhile. While it holds, pushes
//! into the mailbox only queue (the writer is not woken once per frame). A close decided
//! meanwhile is acted on when the linger ends, at most that much later. With a zero
//! linger (the default, and every device) nothing is held and no timer exists.
//!
//! It holds only when frames come densely: when the wake before this one was less than
//! a linger ago. A sparse stream (a frame every 50 ms against a 5 ms linger) would gain
//! nothing from waiting, and arming the timer costs a syscall of its own (tokio wakes
//! its reactor through an eventfd when a timer becomes the earliest), so it is written
//! at once, as without linger.

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The linger of one session: its length and, once it has lingered, its timer (made on
/// the first hold and reused, so an idle or unlingered session holds no timer).
pub(crate) struct Linger {
    length: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    holding: bool,
    /// When the mailbox last woke the writer (lingering sessions only).
    last_wake: Option<Instant>,
}

impl Linger {
    pub(crate) fn new(length: Duration) -> Linger {
        Linger {
            length,
            timer: None,
            holding: false,
            last_wake: None,
        }
    }

    /// True while frames are being held: the mailbox must not be taken yet.
    pub(crate) fn holding(&self) -> bool {
        self.holding
    }

    /// The mailbox has frames: hold them for the linger if frames come densely (the
    /// previous wake was less than a linger ago); nothing with a zero linger.
    pub(crate) fn hold(&mut self) {
        if self.length.is_zero() {
            return;
        }
        let now = Instant::now();
        let dense = self
            .last_wake
            .is_some_and(|last| now.duration_since(last) < self.length);
        self.last_wake = Some(now);
        if !dense {
            return;
        }
        let until = now + self.length;
        match &mut self.timer {
            Some(t) => t.as_mut().reset(until),
            None => self.timer = Some(Box::pin(tokio::time::sleep_until(until))),
        }
        self.holding = true;
    }

    /// Resolves when the linger is over (never while not holding); cancel-safe.
    pub(crate) async fn elapsed(&mut self) {
        match (&mut self.timer, self.holding) {
            (Some(t), true) => {
                t.as_mut().await;
                self.holding = false;
            }
            _ => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_zero_linger_never_holds() {
        let mut l = Linger::new(Duration::ZERO);
        l.hold();
        assert!(!l.holding());
        assert!(l.timer.is_none(), "no timer for an unlingered session");
    }

    #[tokio::test]
    async fn a_sparse_stream_is_not_held() {
        let mut l = Linger::new(Duration::from_millis(5));
        l.hold();
        assert!(!l.holding(), "the first wake has no wake before it");
        tokio::time::sleep(Duration::from_millis(20)).await;
        l.hold();
        assert!(!l.holding(), "the wake before was longer than a linger ago");
        assert!(l.timer.is_none());
    }

    #[tokio::test]
    async fn a_linger_holds_until_it_has_elapsed_then_lets_go() {
        let mut l = Linger::new(Duration::from_millis(300));
        l.hold();
        let start = Instant::now();
        l.hold();
        assert!(l.holding(), "two wakes within a linger: dense");
        l.elapsed().await;
        assert!(!l.holding());
        assert!(start.elapsed() >= Duration::from_millis(300));
        // The timer is reused for the next dense batch, and a linger not held never ends.
        l.hold();
        l.hold();
        assert!(l.holding());
        l.elapsed().await;
        assert!(start.elapsed() >= Duration::from_millis(600));
        let idle = tokio::time::timeout(Duration::from_millis(20), l.elapsed()).await;
        assert!(idle.is_err(), "not holding: elapsed() stays pending");
    }
}
