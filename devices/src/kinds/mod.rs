//! Simulated device kinds: the signal models.
//!
//! Each kind lives in its own file and implements [`Sensor`]. A sensor is a pure function
//! of (its state, the simulated time it is given, its own seeded [`SimRng`]): it never reads
//! a clock, so tests can walk a whole simulated day in a loop, and a run with the same seed
//! produces the same values.

mod air_quality;
mod climate;
mod door;
mod gps;
mod power;
mod vibration;

pub use air_quality::AirQuality;
pub use climate::{
    Climate, SETPOINT_MAX as CLIMATE_SETPOINT_MAX, SETPOINT_MIN as CLIMATE_SETPOINT_MIN,
};
pub use door::Door;
pub use gps::Gps;
pub use power::PowerMeter;
pub use vibration::Vibration;

use serde::{Deserialize, Serialize};

use crate::rng::SimRng;

/// Milliseconds in a day, for the daily cycles.
pub const DAY_MS: i64 = 86_400_000;

/// What a device is. The snake_case name is the `kind` key in scenario files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Temperature with a daily cycle around a setpoint, humidity anti-correlated.
    Climate,
    /// CO2 that rises with the room's occupancy.
    AirQuality,
    /// Electrical power and the cumulative energy meter.
    Power,
    /// Machine vibration: fast, noisy, with occasional spikes.
    Vibration,
    /// A vehicle on a looping route: lat, lon, speed.
    Gps,
    /// Door contact and motion detector: 0/1 events.
    Door,
}

impl Kind {
    /// Every kind, in the order the quick start cycles through them.
    pub const ALL: [Kind; 6] = [
        Kind::Climate,
        Kind::AirQuality,
        Kind::Power,
        Kind::Vibration,
        Kind::Gps,
        Kind::Door,
    ];

    /// The scenario-file name of the kind, also the default device id prefix.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Climate => "climate",
            Kind::AirQuality => "air_quality",
            Kind::Power => "power",
            Kind::Vibration => "vibration",
            Kind::Gps => "gps",
            Kind::Door => "door",
        }
    }

    /// A sensible sampling rate in Hz when the scenario gives none.
    pub fn default_rate_hz(self) -> f64 {
        match self {
            Kind::Vibration => 10.0,
            Kind::Gps => 1.0,
            Kind::Door => 1.0,
            _ => 0.5,
        }
    }

    /// The metrics this kind reports, with units and physical ranges.
    pub fn metrics(self) -> &'static [MetricSpec] {
        match self {
            Kind::Climate => climate::METRICS,
            Kind::AirQuality => air_quality::METRICS,
            Kind::Power => power::METRICS,
            Kind::Vibration => vibration::METRICS,
            Kind::Gps => gps::METRICS,
            Kind::Door => door::METRICS,
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One metric a kind reports: its wire name, unit and the physical range a value must
/// stay in (checked by the tests over a simulated day).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricSpec {
    /// The `metric` field on the wire.
    pub name: &'static str,
    /// The `unit` field on the wire; empty for unitless 0/1 states.
    pub unit: &'static str,
    /// Lowest physically sensible value.
    pub min: f64,
    /// Highest physically sensible value.
    pub max: f64,
}

/// One measured value, before it gets a timestamp and a sequence number.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Metric name, one of the kind's [`MetricSpec`]s.
    pub metric: &'static str,
    /// The value; always finite.
    pub value: f64,
    /// Unit, empty when the metric has none.
    pub unit: &'static str,
}

impl Sample {
    fn of(spec: &MetricSpec, value: f64) -> Self {
        Sample {
            metric: spec.name,
            value: value.clamp(spec.min, spec.max),
            unit: spec.unit,
        }
    }
}

/// Optional per-kind parameters from the scenario file; a kind ignores none of the ones it
/// is given (the scenario loader refuses a parameter on the wrong kind).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Params {
    /// Climate: the target temperature in °C.
    pub setpoint: Option<f64>,
    /// Air quality: how many people the room holds at its busiest.
    pub capacity: Option<u32>,
    /// Power: the standby load in W.
    pub base_w: Option<f64>,
    /// GPS: the centre of the route, (lat, lon) in degrees.
    pub center: Option<(f64, f64)>,
}

/// A failed command against a sensor, e.g. a setpoint on a power meter.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SensorError {
    /// The kind has no such setting.
    #[error("{kind} devices have no {what}")]
    Unsupported {
        /// The device kind.
        kind: Kind,
        /// What was asked for.
        what: &'static str,
    },
    /// The value is outside what the device accepts.
    #[error("{what} must be between {min} and {max}, got {value}")]
    OutOfRange {
        /// What was set.
        what: &'static str,
        /// The value given.
        value: f64,
        /// Lowest accepted.
        min: f64,
        /// Highest accepted.
        max: f64,
    },
}

/// A simulated sensor: state plus a signal model, advanced by simulated time.
pub trait Sensor: Send + std::fmt::Debug {
    /// Which kind this is.
    fn kind(&self) -> Kind;

    /// Advance the model to `now_ms` (simulated epoch milliseconds) and append what the
    /// device reports at this instant to `out`. Time may jump forward by any amount;
    /// a jump backwards is treated as no time passing.
    fn sample(&mut self, now_ms: i64, rng: &mut SimRng, out: &mut Vec<Sample>);

    /// Change the target temperature (climate devices only). Returns the new setpoint.
    fn set_setpoint(&mut self, _value: f64) -> Result<f64, SensorError> {
        Err(SensorError::Unsupported {
            kind: self.kind(),
            what: "setpoint",
        })
    }
}

/// Build a sensor of `kind` with its starting state drawn from `rng`.
pub fn build(kind: Kind, params: &Params, rng: &mut SimRng) -> Box<dyn Sensor> {
    match kind {
        Kind::Climate => Box::new(Climate::new(params.setpoint, rng)),
        Kind::AirQuality => Box::new(AirQuality::new(params.capacity, rng)),
        Kind::Power => Box::new(PowerMeter::new(params.base_w, rng)),
        Kind::Vibration => Box::new(Vibration::new(rng)),
        Kind::Gps => Box::new(Gps::new(params.center, rng)),
        Kind::Door => Box::new(Door::new(rng)),
    }
}

/// Hours since midnight UTC, in `[0, 24)`: the clock the daily cycles follow.
pub(crate) fn hour_of_day(now_ms: i64) -> f64 {
    now_ms.rem_euclid(DAY_MS) as f64 / 3_600_000.0
}

/// Seconds from `last` to `now`, never negative, capped at a day so that a first sample
/// or a long pause does not make a model explode.
pub(crate) fn elapsed_s(last: &mut Option<i64>, now_ms: i64) -> f64 {
    let dt = match *last {
        Some(prev) => ((now_ms - prev).max(0) as f64 / 1000.0).min(86_400.0),
        None => 0.0,
    };
    if last.is_none_or(|prev| now_ms > prev) {
        *last = Some(now_ms);
    }
    dt
}

/// A smooth daily wave in `[-1, 1]` that peaks at `peak_hour`.
pub(crate) fn daily_wave(now_ms: i64, peak_hour: f64) -> f64 {
    (std::f64::consts::TAU * (hour_of_day(now_ms) - peak_hour) / 24.0).cos()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Midnight UTC, 2026-11-24.
    const START: i64 = 1_795_478_400_000;

    /// Walk one simulated day at `step_ms` and check every value against its spec.
    fn day_in_range(kind: Kind, step_ms: i64) -> Vec<Vec<f64>> {
        let mut rng = SimRng::new(7, kind as u64);
        let mut sensor = build(kind, &Params::default(), &mut rng);
        let specs = kind.metrics();
        let mut series = vec![Vec::new(); specs.len()];
        let mut out = Vec::new();
        let mut t = START;
        while t < START + DAY_MS {
            out.clear();
            sensor.sample(t, &mut rng, &mut out);
            for s in &out {
                let i = specs
                    .iter()
                    .position(|m| m.name == s.metric)
                    .unwrap_or_else(|| panic!("{kind}: unknown metric {}", s.metric));
                let spec = &specs[i];
                assert!(s.value.is_finite(), "{kind}/{}: {}", s.metric, s.value);
                assert!(
                    (spec.min..=spec.max).contains(&s.value),
                    "{kind}/{} = {} outside [{}, {}] at {}",
                    s.metric,
                    s.value,
                    spec.min,
                    spec.max,
                    t
                );
                assert_eq!(s.unit, spec.unit);
                series[i].push(s.value);
            }
            t += step_ms;
        }
        series
    }

    fn spread(xs: &[f64]) -> f64 {
        let lo = xs.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = xs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        hi - lo
    }

    #[test]
    fn climate_day_stays_in_range_and_cycles() {
        let s = day_in_range(Kind::Climate, 1_000);
        let (temp, hum) = (&s[0], &s[1]);
        assert!(
            spread(temp) > 2.0,
            "temperature should follow a daily cycle"
        );
        assert!(
            spread(temp) < 15.0,
            "temperature should stay near its setpoint"
        );
        // Humidity is anti-correlated with temperature.
        let n = temp.len() as f64;
        let (mt, mh) = (temp.iter().sum::<f64>() / n, hum.iter().sum::<f64>() / n);
        let cov: f64 = temp.iter().zip(hum).map(|(t, h)| (t - mt) * (h - mh)).sum();
        assert!(cov < 0.0, "humidity should fall when temperature rises");
    }

    #[test]
    fn air_quality_day_stays_in_range_and_rises_with_people() {
        let s = day_in_range(Kind::AirQuality, 1_000);
        let (co2, people) = (&s[0], &s[1]);
        assert!(people.iter().any(|&p| p > 0.0), "someone should come in");
        assert!(spread(co2) > 200.0, "CO2 should rise with occupancy");
        // Occupancy is whole people.
        assert!(people.iter().all(|p| p.fract() == 0.0));
    }

    #[test]
    fn power_day_stays_in_range_and_energy_only_rises() {
        let s = day_in_range(Kind::Power, 2_000);
        let energy = &s[1];
        assert!(energy.windows(2).all(|w| w[1] >= w[0]), "kWh is cumulative");
        assert!(
            energy[energy.len() - 1] - energy[0] > 1.0,
            "a day uses energy"
        );
    }

    #[test]
    fn vibration_day_stays_in_range_and_spikes() {
        let s = day_in_range(Kind::Vibration, 100);
        let rms = &s[0];
        let mut sorted = rms.clone();
        sorted.sort_by(f64::total_cmp);
        let median = sorted[sorted.len() / 2];
        let max = sorted[sorted.len() - 1];
        assert!(max > 4.0 * median, "expected spikes well above the median");
    }

    #[test]
    fn gps_day_stays_in_range_and_moves() {
        let s = day_in_range(Kind::Gps, 1_000);
        let (lat, lon, speed) = (&s[0], &s[1], &s[2]);
        assert!(
            spread(lat) > 0.005 && spread(lon) > 0.005,
            "tracker should move"
        );
        assert!(
            spread(lat) < 0.2 && spread(lon) < 0.2,
            "tracker stays on its route"
        );
        assert!(speed.contains(&0.0), "tracker stops sometimes");
        assert!(speed.iter().any(|&v| v > 20.0), "tracker drives sometimes");
    }

    #[test]
    fn door_day_stays_in_range_and_opens() {
        let s = day_in_range(Kind::Door, 1_000);
        let open = &s[0];
        assert!(open.iter().all(|&v| v == 0.0 || v == 1.0));
        let openings = open
            .windows(2)
            .filter(|w| w[0] == 0.0 && w[1] == 1.0)
            .count();
        assert!(openings >= 5, "door opened only {openings} times in a day");
    }

    #[test]
    fn same_seed_same_signal() {
        for kind in Kind::ALL {
            let a = day_in_range(kind, 60_000);
            let b = day_in_range(kind, 60_000);
            assert_eq!(a, b, "{kind} is not reproducible");
        }
    }

    #[test]
    fn setpoint_only_on_climate() {
        let mut rng = SimRng::new(1, 1);
        let mut c = build(Kind::Climate, &Params::default(), &mut rng);
        assert_eq!(c.set_setpoint(25.0), Ok(25.0));
        assert!(matches!(
            c.set_setpoint(90.0),
            Err(SensorError::OutOfRange { .. })
        ));
        let mut p = build(Kind::Power, &Params::default(), &mut rng);
        assert!(matches!(
            p.set_setpoint(20.0),
            Err(SensorError::Unsupported { .. })
        ));
    }

    #[test]
    fn climate_follows_a_new_setpoint() {
        let mut rng = SimRng::new(3, 0);
        let mut c = build(Kind::Climate, &Params::default(), &mut rng);
        let mut out = Vec::new();
        let mut t = START;
        c.set_setpoint(28.0).expect("in range");
        for _ in 0..(4 * 3600) {
            out.clear();
            c.sample(t, &mut rng, &mut out);
            t += 1_000;
        }
        let temp = out
            .iter()
            .find(|s| s.metric == "temperature")
            .map(|s| s.value);
        assert!(temp.is_some_and(|v| v > 24.0), "temperature {temp:?}");
    }
}
