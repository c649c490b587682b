//! Reconnect delays: the protocol crate's exponential backoff with equal jitter
//! (`telehub_protocol::backoff`), fed by the device's own seeded random stream so that a
//! run with the same seed retries at the same moments.

pub use telehub_protocol::backoff::BackoffConfig;

use std::time::Duration;

use crate::rng::SimRng;

/// One device's backoff state and its jitter source.
#[derive(Debug, Clone)]
pub struct Backoff {
    inner: telehub_protocol::backoff::Backoff,
    rng: SimRng,
}

impl Backoff {
    /// A fresh backoff; `rng` supplies the jitter.
    pub fn new(config: BackoffConfig, rng: SimRng) -> Self {
        Backoff {
            inner: telehub_protocol::backoff::Backoff::new(config),
            rng,
        }
    }

    /// The ceiling for the next delay, without jitter.
    pub fn ceiling(&self) -> Duration {
        self.inner.ceiling()
    }

    /// The next delay: in `[ceiling/2, ceiling]`, and the ceiling grows.
    pub fn next_delay(&mut self) -> Duration {
        self.inner.next_delay(self.rng.unit())
    }

    /// A connection succeeded: start again from `initial`.
    pub fn reset(&mut self) {
        self.inner.reset();
    }

    /// Failed attempts since the last reset.
    pub fn attempts(&self) -> u32 {
        self.inner.attempts()
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
    fn is_jittered_and_repeats_with_the_seed() {
        let mut a = backoff(1);
        let mut b = backoff(2);
        let mut again = backoff(1);
        let da: Vec<_> = (0..6).map(|_| a.next_delay()).collect();
        let db: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        let da2: Vec<_> = (0..6).map(|_| again.next_delay()).collect();
        assert_ne!(da, db, "two devices should not retry in lockstep");
        assert_eq!(da, da2, "a seed repeats its delays");
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
