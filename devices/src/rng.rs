//! The simulator's random numbers: one seeded generator per device.
//!
//! Every device owns a [`SimRng`] derived from the scenario seed and the device's place in
//! the scenario, so a device's signal does not depend on how tokio schedules the others and
//! a run with the same seed repeats exactly.

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A small, reproducible random source with the few distributions the sensors need.
#[derive(Debug, Clone)]
pub struct SimRng {
    inner: ChaCha8Rng,
    /// Box-Muller yields normals in pairs; the second one waits here.
    spare_normal: Option<f64>,
}

impl SimRng {
    /// A generator for one stream, e.g. `(scenario seed, device index)`.
    ///
    /// The stream number is mixed into the seed rather than used as ChaCha's stream id so
    /// that nearby devices do not get correlated starts.
    pub fn new(seed: u64, stream: u64) -> Self {
        let mixed = seed ^ stream.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Self {
            inner: ChaCha8Rng::seed_from_u64(mixed),
            spare_normal: None,
        }
    }

    /// Uniform in `[0, 1)`, with 53 bits of precision.
    pub fn unit(&mut self) -> f64 {
        (self.inner.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Standard normal (mean 0, standard deviation 1), by Box-Muller.
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare_normal.take() {
            return z;
        }
        // 1 - unit() is in (0, 1], so ln never sees 0.
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = std::f64::consts::TAU * u2;
        self.spare_normal = Some(r * theta.sin());
        r * theta.cos()
    }

    /// A random u64, e.g. for jitter.
    pub fn next_u64(&mut self) -> u64 {
        self.inner.next_u64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_stream_repeats() {
        let mut a = SimRng::new(42, 3);
        let mut b = SimRng::new(42, 3);
        for _ in 0..100 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn streams_differ() {
        let mut a = SimRng::new(42, 3);
        let mut b = SimRng::new(42, 4);
        assert_ne!(a.next_u64(), b.next_u64());
    }

    #[test]
    fn normal_has_unit_spread() {
        let mut r = SimRng::new(1, 0);
        let n = 20_000;
        let xs: Vec<f64> = (0..n).map(|_| r.normal()).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.05, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "var {var}");
    }
}
