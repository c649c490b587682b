//! Vibration sensor on a machine: RMS vibration velocity and peak acceleration, sampled
//! fast, noisy, with occasional spikes (a bearing knock, a dropped part).
//!
//! Model: the machine runs two shifts (06:00 to 22:00 UTC); running, its RMS velocity is
//! log-normal around a baseline with a slow wear drift; stopped, only floor noise remains.
//! Spikes arrive at random and decay within a few samples.

use super::{elapsed_s, hour_of_day, Kind, MetricSpec, Sample, Sensor};
use crate::rng::SimRng;

pub(super) const METRICS: &[MetricSpec] = &[
    MetricSpec {
        name: "velocity_rms",
        unit: "mm/s",
        min: 0.0,
        max: 100.0,
    },
    MetricSpec {
        name: "accel_peak",
        unit: "g",
        min: 0.0,
        max: 50.0,
    },
];

/// Chance of a spike in any one second of running.
const SPIKE_PER_S: f64 = 0.01;

/// A vibration sensor's state.
#[derive(Debug, Clone)]
pub struct Vibration {
    /// Typical RMS velocity of this machine when running, mm/s (ISO 10816 "good" zone).
    baseline: f64,
    /// Remaining spike energy, mm/s, decaying quickly.
    spike: f64,
    last_ms: Option<i64>,
}

impl Vibration {
    /// A sensor on a machine with a healthy baseline drawn from `rng`.
    pub fn new(rng: &mut SimRng) -> Self {
        Vibration {
            baseline: rng.uniform(1.5, 3.5),
            spike: 0.0,
            last_ms: None,
        }
    }
}

impl Sensor for Vibration {
    fn kind(&self) -> Kind {
        Kind::Vibration
    }

    fn sample(&mut self, now_ms: i64, rng: &mut SimRng, out: &mut Vec<Sample>) {
        let dt = elapsed_s(&mut self.last_ms, now_ms);
        let running = (6.0..22.0).contains(&hour_of_day(now_ms));
        self.spike *= (-dt / 0.3).exp();
        if running && rng.chance((SPIKE_PER_S * dt.max(0.1)).min(1.0)) {
            self.spike = rng.uniform(15.0, 45.0);
        }
        let rms = if running {
            // Log-normal noise: always positive, heavier upper tail.
            self.baseline * (0.25 * rng.normal()).exp() + self.spike
        } else {
            0.05 + 0.02 * rng.normal().abs()
        };
        // Peak acceleration tracks velocity (≈ 0.05 g per mm/s at ~50 Hz), crest factor ~3.
        let peak = rms * 0.05 * rng.uniform(2.5, 4.0);

        out.push(Sample::of(&METRICS[0], rms));
        out.push(Sample::of(&METRICS[1], peak));
    }
}
