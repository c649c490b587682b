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
    //! How the delays grow, cap, jitter and reset is the protocol crate's to test; here
    //! only what the wrapper adds: the jitter comes from the device's seeded stream.
    use super::*;

    const CONFIG: BackoffConfig = BackoffConfig {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(5),
    };

    fn delays(seed: u64) -> Vec<Duration> {
        let mut b = Backoff::new(CONFIG, SimRng::new(seed, 0));
        let mut d: Vec<_> = (0..6).map(|_| b.next_delay()).collect();
        b.reset();
        d.push(b.next_delay());
        d
    }

    #[test]
    fn a_seed_repeats_its_delays_and_another_does_not() {
        assert_eq!(delays(1), delays(1), "a seed repeats its delays");
        assert_ne!(
            delays(1),
            delays(2),
            "two devices should not retry in lockstep"
        );
        // Each delay takes the next sample of the seeded stream, a reset included.
        let mut rng = SimRng::new(1, 0);
        let mut plain = telehub_protocol::backoff::Backoff::new(CONFIG);
        let mut expected: Vec<_> = (0..6).map(|_| plain.next_delay(rng.unit())).collect();
        plain.reset();
        expected.push(plain.next_delay(rng.unit()));
        assert_eq!(delays(1), expected);
    }
}
