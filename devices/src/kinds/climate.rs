//! Climate sensor: air temperature with a daily cycle around a setpoint, relative
//! humidity that falls as the air warms, and the setpoint itself.
//!
//! Model: the room's temperature relaxes (time constant [`TAU_S`]) toward a target that the
//! heating/cooling holds near the setpoint but that the outdoor daily cycle and the sun
//! pull away from it; a slow random walk and sensor noise sit on top.

use super::{daily_wave, elapsed_s, Kind, MetricSpec, Sample, Sensor, SensorError};
use crate::rng::SimRng;

pub(super) const METRICS: &[MetricSpec] = &[
    MetricSpec {
        name: "temperature",
        unit: "C",
        min: -20.0,
        max: 50.0,
    },
    MetricSpec {
        name: "humidity",
        unit: "%",
        min: 0.0,
        max: 100.0,
    },
    MetricSpec {
        name: "setpoint",
        unit: "C",
        min: SETPOINT_MIN,
        max: SETPOINT_MAX,
    },
];

/// The setpoint range a thermostat accepts (`set_setpoint` refuses others).
pub const SETPOINT_MIN: f64 = 5.0;
/// See [`SETPOINT_MIN`].
pub const SETPOINT_MAX: f64 = 35.0;
const DEFAULT_SETPOINT: f64 = 21.0;
/// How fast the room follows its target: 20 minutes.
const TAU_S: f64 = 1_200.0;
/// How much of the outdoor swing leaks through the control (0 = perfect thermostat).
const LEAK: f64 = 0.15;

/// A climate sensor's state.
#[derive(Debug, Clone)]
pub struct Climate {
    setpoint: f64,
    temperature: f64,
    /// Slow random drift of the room (drafts, doors), in °C.
    drift: f64,
    /// Slow random drift of the humidity, in % RH.
    humidity_drift: f64,
    last_ms: Option<i64>,
}

impl Climate {
    /// A sensor holding `setpoint` (°C, default 21), starting near it.
    pub fn new(setpoint: Option<f64>, rng: &mut SimRng) -> Self {
        let setpoint = setpoint
            .unwrap_or(DEFAULT_SETPOINT)
            .clamp(SETPOINT_MIN, SETPOINT_MAX);
        Climate {
            setpoint,
            temperature: setpoint + rng.uniform(-1.0, 1.0),
            drift: 0.0,
            humidity_drift: 0.0,
            last_ms: None,
        }
    }

    fn target(&self, now_ms: i64) -> f64 {
        // Outdoors: 14 °C ± 7, warmest at 15:00 UTC. Sun on the glass: up to +2 °C at noon.
        let outdoor = 14.0 + 7.0 * daily_wave(now_ms, 15.0);
        let sun = 2.0 * daily_wave(now_ms, 12.0).max(0.0);
        self.setpoint + LEAK * (outdoor - self.setpoint) + sun
    }
}

impl Sensor for Climate {
    fn kind(&self) -> Kind {
        Kind::Climate
    }

    fn sample(&mut self, now_ms: i64, rng: &mut SimRng, out: &mut Vec<Sample>) {
        let dt = elapsed_s(&mut self.last_ms, now_ms);
        let target = self.target(now_ms);
        // Exact relaxation over dt, so the result does not depend on the sampling rate.
        let keep = (-dt / TAU_S).exp();
        self.temperature = target + (self.temperature - target) * keep;
        // Mean-reverting random walks (Ornstein-Uhlenbeck), scaled for dt.
        let walk = (dt / 60.0).sqrt().min(10.0);
        self.drift = self.drift * (-dt / 1_800.0).exp() + 0.05 * walk * rng.normal();
        self.drift = self.drift.clamp(-2.0, 2.0);
        self.humidity_drift =
            self.humidity_drift * (-dt / 3_600.0).exp() + 0.3 * walk * rng.normal();
        self.humidity_drift = self.humidity_drift.clamp(-10.0, 10.0);

        let temperature = self.temperature + self.drift + 0.08 * rng.normal();
        // Warmer air holds more water, so the same water is a lower relative humidity:
        // about -3 % RH per °C above the setpoint.
        let humidity =
            55.0 - 3.0 * (temperature - self.setpoint) + self.humidity_drift + 0.4 * rng.normal();

        out.push(Sample::of(&METRICS[0], temperature));
        out.push(Sample::of(&METRICS[1], humidity));
        out.push(Sample::of(&METRICS[2], self.setpoint));
    }

    fn set_setpoint(&mut self, value: f64) -> Result<f64, SensorError> {
        if !(SETPOINT_MIN..=SETPOINT_MAX).contains(&value) {
            return Err(SensorError::OutOfRange {
                what: "setpoint",
                value,
                min: SETPOINT_MIN,
                max: SETPOINT_MAX,
            });
        }
        self.setpoint = value;
        Ok(value)
    }
}
