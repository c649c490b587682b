//! Power meter: instantaneous electrical power and the cumulative energy register.
//!
//! Model: a standby base load, a household-like daily profile (morning and evening
//! peaks), and appliances that switch on at random for a few minutes. Energy integrates
//! power between samples (trapezoid rule), so kWh never falls and matches the W series.

use super::{daily_wave, elapsed_s, Kind, MetricSpec, Sample, Sensor};
use crate::rng::SimRng;

pub(super) const METRICS: &[MetricSpec] = &[
    MetricSpec {
        name: "power",
        unit: "W",
        min: 0.0,
        max: 20_000.0,
    },
    MetricSpec {
        name: "energy",
        unit: "kWh",
        min: 0.0,
        max: 1.0e9,
    },
];

const DEFAULT_BASE_W: f64 = 180.0;
/// An appliance (kettle, heater, oven) switches on about every 40 minutes...
const APPLIANCE_ON_PER_S: f64 = 1.0 / 2_400.0;
/// ...and runs for up to this long.
const APPLIANCE_MAX_S: f64 = 900.0;

/// A power meter's state.
#[derive(Debug, Clone)]
pub struct PowerMeter {
    base_w: f64,
    /// The running appliance's draw and how many seconds it has left.
    appliance: Option<(f64, f64)>,
    energy_kwh: f64,
    last_w: Option<f64>,
    last_ms: Option<i64>,
}

impl PowerMeter {
    /// A meter with `base_w` watts of standby load (default 180), its register starting
    /// somewhere a real meter might be.
    pub fn new(base_w: Option<f64>, rng: &mut SimRng) -> Self {
        PowerMeter {
            base_w: base_w.unwrap_or(DEFAULT_BASE_W).clamp(0.0, 10_000.0),
            appliance: None,
            energy_kwh: rng.uniform(1_000.0, 9_000.0).round(),
            last_w: None,
            last_ms: None,
        }
    }
}

impl Sensor for PowerMeter {
    fn kind(&self) -> Kind {
        Kind::Power
    }

    fn sample(&mut self, now_ms: i64, rng: &mut SimRng, out: &mut Vec<Sample>) {
        let dt = elapsed_s(&mut self.last_ms, now_ms);
        // Morning peak at 07:30, a bigger evening peak at 19:00.
        let morning = 600.0 * daily_wave(now_ms, 7.5).max(0.0).powi(8);
        let evening = 1_200.0 * daily_wave(now_ms, 19.0).max(0.0).powi(6);
        self.appliance = match self.appliance {
            Some((w, left)) if left > dt => Some((w, left - dt)),
            Some(_) => None,
            None if rng.chance((APPLIANCE_ON_PER_S * dt).min(1.0)) => Some((
                rng.uniform(800.0, 3_000.0),
                rng.uniform(60.0, APPLIANCE_MAX_S),
            )),
            None => None,
        };
        let appliance = self.appliance.map_or(0.0, |(w, _)| w);
        let load = self.base_w + morning + evening + appliance;
        let power = (load * (1.0 + 0.02 * rng.normal())).max(0.0);

        let avg_w = self.last_w.map_or(power, |prev| (prev + power) / 2.0);
        self.energy_kwh += avg_w * dt / 3.6e6;
        self.last_w = Some(power);

        out.push(Sample::of(&METRICS[0], power));
        out.push(Sample::of(&METRICS[1], self.energy_kwh));
    }
}
