//! Reconnect delays: exponential backoff with "equal jitter".
//!
//! After each failed attempt the ceiling doubles, from `initial` up to `max`; the delay is
//! drawn uniformly from the upper half of the ceiling, so a hub that comes back is not hit
//! by every client in the same millisecond, yet no client waits much less than the
//! schedule says. Callers reset it once a connection has proved stable.
//!
//! The randomness is the caller's: [`Backoff::next_delay`] takes a uniform sample in
//! `[0, 1)`, so the simulator keeps its seeded, reproducible generator and the hub may use
//! any source it likes.

use std::time::Duration;

/// Backoff settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// One client's backoff state.
#[derive(Debug, Clone)]
pub struct Backoff {
    config: BackoffConfig,
    attempt: u32,
}

impl Backoff {
    /// A fresh backoff.
    pub fn new(config: BackoffConfig) -> Self {
        Backoff { config, attempt: 0 }
    }

    /// The settings.
    pub fn config(&self) -> BackoffConfig {
        self.config
    }

    /// The ceiling for the next delay, without jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(20);
        self.config
            .initial
            .saturating_mul(factor)
            .min(self.config.max)
    }

    /// The next delay, in `[ceiling/2, ceiling]`, and the ceiling grows. `unit` is a
    /// uniform sample in `[0, 1)`; anything outside (or NaN) is clamped into it.
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        let half = ceiling / 2;
        half + half.mul_f64(unit)
    }

    /// [`Backoff::next_delay`] with the sample drawn from `jitter`.
    pub fn next_delay_with(&mut self, mut jitter: impl FnMut() -> f64) -> Duration {
        self.next_delay(jitter())
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

    /// A tiny deterministic uniform source for the tests (an LCG; quality is irrelevant).
    fn lcg(seed: u64) -> impl FnMut() -> f64 {
        let mut state = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    fn backoff() -> Backoff {
        Backoff::new(BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        })
    }

    #[test]
    fn grows_then_caps() {
        let mut b = backoff();
        let mut jitter = lcg(1);
        let ceilings: Vec<_> = (0..10)
            .map(|_| {
                let c = b.ceiling();
                let d = b.next_delay_with(&mut jitter);
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
        let (mut a, mut b) = (backoff(), backoff());
        let (mut ja, mut jb) = (lcg(1), lcg(2));
        let da: Vec<_> = (0..6).map(|_| a.next_delay_with(&mut ja)).collect();
        let db: Vec<_> = (0..6).map(|_| b.next_delay_with(&mut jb)).collect();
        assert_ne!(da, db, "two clients should not retry in lockstep");
        // And within one client, delays at the cap still vary.
        let mut c = backoff();
        let mut jc = lcg(3);
        for _ in 0..8 {
            c.next_delay_with(&mut jc);
        }
        let capped: std::collections::HashSet<_> =
            (0..5).map(|_| c.next_delay_with(&mut jc)).collect();
        assert!(capped.len() > 1);
    }

    #[test]
    fn the_sample_sets_the_place_in_the_upper_half() {
        let mut b = backoff();
        assert_eq!(b.next_delay(0.0), Duration::from_millis(50));
        assert_eq!(b.next_delay(0.5), Duration::from_millis(150));
        assert_eq!(b.next_delay(f64::NAN), Duration::from_millis(200));
        assert_eq!(b.next_delay(7.0), Duration::from_millis(800));
    }

    #[test]
    fn reset_starts_over() {
        let mut b = backoff();
        for _ in 0..5 {
            b.next_delay(0.5);
        }
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(100));
        assert_eq!(b.attempts(), 0);
    }
}
