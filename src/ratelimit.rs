//! A token bucket per connection: `rate` tokens a second, at most `burst` saved up.
//!
//! Each message costs one token and each reading of a batch one more, so a device that
//! floods gets `rate_limited` errors for the excess instead of the hub doing unbounded
//! work on its behalf.

use std::time::Instant;

/// The bucket of one connection. Not shared: it lives in the connection's reader loop.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate: f64, burst: f64) -> TokenBucket {
        TokenBucket {
            rate,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes up to `want` tokens and returns how many were granted.
    pub fn take(&mut self, want: usize) -> usize {
        self.take_at(want, Instant::now())
    }

    fn take_at(&mut self, want: usize, now: Instant) -> usize {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        let granted = (self.tokens.floor() as usize).min(want);
        self.tokens -= granted as f64;
        granted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate() {
        let start = Instant::now();
        let mut b = TokenBucket {
            rate: 10.0,
            burst: 5.0,
            tokens: 5.0,
            last: start,
        };
        assert_eq!(b.take_at(8, start), 5, "the burst is spent first");
        assert_eq!(b.take_at(1, start), 0);
        assert_eq!(b.take_at(3, start + Duration::from_millis(200)), 2);
        assert_eq!(
            b.take_at(100, start + Duration::from_secs(60)),
            5,
            "capped at burst"
        );
    }
}
