//! Reconnect delays: exponential backoff with jitter.
//!
//! After each failed attempt the ceiling doubles, from `initial` up to `max`; the delay is
//! drawn uniformly from the upper half of the ceiling ("equal jitter"), so a hub that comes
//! back is not hit by every device in the same millisecond, yet no device waits much less
//! than the schedule says. The transports reset it once a connection has proved stable.

use std::time::Duration;

use crate::rng::SimRng;

/// Backoff settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackoffConfig {
    /// Ceiling of the first delay.
    pub initial: Duration,
    /// Largest ceiling.
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
        }
    }
}

/// One device's backoff state.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
    rng: SimRng,
}

impl Backoff {
    /// A fresh backoff; `rng` supplies the jitter.
    pub fn new(config: BackoffConfig, rng: SimRng) -> Self {
        Backoff {
            config,
            attempt: 0,
            rng,
        }
    }

    /// The ceiling for the next delay, without jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(20);
        self.config
            .initial
            .saturating_mul(factor)
            .min(self.config.max)
    }

    /// The next delay: in `[ceiling/2, ceiling]`, and the ceiling grows.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(self.rng.unit())
    }

    /// A connection succeeded: start again from `initial`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Failed attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff(seed: u64) -> Backoff {
        Backoff::new(
            BackoffConfig {
                initial: Duration::from_millis(100),
                max: Duration::from_secs(5),
            },
            SimRng::new(seed, 0),
        )
    }

    #[test]
    fn grows_then_caps() {
        let mut b = backoff(1);
        let ceilings: Vec<_> = (0..10)
            .map(|_| {
                let c = b.ceiling();
                let d = b.next_delay();
                assert!(d >= c / 2 && d <= c, "{d:?} not in [{:?}, {c:?}]", c / 2);
                c.as_millis()
            })
            .collect();
        assert_eq!(
            ceilings,
            vec![100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000, 5000]
        );
    }

    #[test]
    fn is_jittered() {
        let mut a = backoff(1);
        let mut b = backoff(2);
        let da: Vec<_> = (0..6).map(|_| a.next_delay()).collect();
        let db: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        assert_ne!(da, db, "two devices should not retry in lockstep");
        // And within one device, delays at the cap still vary.
        let mut c = backoff(3);
        for _ in 0..8 {
            c.next_delay();
        }
        let capped: std::collections::HashSet<_> = (0..5).map(|_| c.next_delay()).collect();
        assert!(capped.len() > 1);
    }

    #[test]
    fn reset_starts_over() {
        let mut b = backoff(1);
        for _ in 0..5 {
            b.next_delay();
        }
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
        assert_eq!(b.attempts(), 0);
    }
}
