//! The token bucket: `rate` tokens a second, at most `burst` saved up.
//!
//! The hub keeps one per connection and charges a token per reading (a `readings` batch of
//! N costs N, valid items or not) and one for every other message (a command, an ack, a
//! ping or pong, a binary frame, one it cannot parse), so a client that floods gets
//! `rate_limited` for the excess instead of the hub doing unbounded work on its behalf
//! ([`TokenBucket::take`]). The simulator keeps
//! one per device to stay under that limit even when it resends a large buffer after a
//! reconnect ([`TokenBucket::available_at`], [`TokenBucket::wait_for`]).
//!
//! Time is passed in (`*_at` methods) so callers choose their clock: the simulator hands in
//! tokio's (pausable) `Instant` converted with `into_std()`.

use std::time::{Duration, Instant};

/// One bucket. Not shared: it lives in the task that spends it.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket, refilling from now.
    pub fn new(rate: f64, burst: f64) -> TokenBucket {
        TokenBucket::new_at(rate, burst, Instant::now())
    }

    /// A full bucket, refilling from `now`.
    pub fn new_at(rate: f64, burst: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Tokens a second.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Most tokens saved up.
    pub fn burst(&self) -> f64 {
        self.burst
    }

    /// Takes up to `want` tokens now and returns how many were granted.
    pub fn take(&mut self, want: usize) -> usize {
        self.take_at(want, Instant::now())
    }

    /// Takes up to `want` tokens at `now` and returns how many were granted.
    pub fn take_at(&mut self, want: usize, now: Instant) -> usize {
        let granted = self.available_at(now).min(want);
        self.tokens -= granted as f64;
        granted
    }

    /// Whole tokens available at `now`.
    pub fn available_at(&mut self, now: Instant) -> usize {
        self.refill(now);
        self.tokens.max(0.0).floor() as usize
    }

    /// How long after `now` at least `n` tokens will be there (zero if they are now).
    /// `n` above `burst` is never reached; the wait is for `burst` then. A bucket with no
    /// rate never refills: the answer is zero, and the caller decides how long to wait.
    pub fn wait_for(&mut self, n: usize, now: Instant) -> Duration {
        self.refill(now);
        let missing = ((n as f64).min(self.burst) - self.tokens).max(0.0);
        // A NaN or non-positive rate never refills.
        if missing == 0.0 || self.rate.is_nan() || self.rate <= 0.0 {
            return Duration::ZERO;
        }
        Duration::try_from_secs_f64(missing / self.rate).unwrap_or(Duration::MAX)
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        if now > self.last {
            self.last = now;
        }
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let start = Instant::now();
        let mut b = TokenBucket::new_at(10.0, 5.0, start);
        assert_eq!(b.take_at(8, start), 5, "the burst is spent first");
        assert_eq!(b.take_at(1, start), 0);
        assert_eq!(b.take_at(3, start + Duration::from_millis(200)), 2);
        assert_eq!(
            b.take_at(100, start + Duration::from_secs(60)),
            5,
            "capped at burst"
        );
    }

    #[test]
    fn allows_a_burst_then_the_rate() {
        // The simulator's shape: burst twice the rate.
        let start = Instant::now();
        let mut b = TokenBucket::new_at(100.0, 200.0, start);
        assert_eq!(b.available_at(start), 200, "burst is twice the rate");
        assert_eq!(b.take_at(200, start), 200);
        assert_eq!(b.available_at(start), 0);
        let wait = b.wait_for(10, start);
        assert!(
            wait >= Duration::from_millis(99) && wait <= Duration::from_millis(101),
            "{wait:?}"
        );
        assert_eq!(b.available_at(start + wait), 10);
        assert_eq!(b.wait_for(1, start + wait), Duration::ZERO);
    }

    #[test]
    fn a_clock_that_goes_back_changes_nothing() {
        let start = Instant::now() + Duration::from_secs(1);
        let mut b = TokenBucket::new_at(10.0, 5.0, start);
        assert_eq!(b.take_at(5, start), 5);
        assert_eq!(b.take_at(5, start - Duration::from_secs(1)), 0);
        assert_eq!(b.take_at(5, start + Duration::from_millis(100)), 1);
    }

    #[test]
    fn a_wait_past_the_burst_is_for_the_burst() {
        let start = Instant::now();
        let mut b = TokenBucket::new_at(10.0, 5.0, start);
        b.take_at(5, start);
        assert_eq!(b.wait_for(50, start), Duration::from_millis(500));
        let mut stopped = TokenBucket::new_at(0.0, 5.0, start);
        stopped.take_at(5, start);
        assert_eq!(stopped.wait_for(1, start), Duration::ZERO);
    }
}
