//! Air-quality sensor: CO2 concentration that rises with how many people are in the room,
//! and the occupancy itself.
//!
//! Model: occupancy follows an office day (arrivals from 08:00, lunch dip, empty after
//! 19:00 UTC) with random comings and goings. CO2 follows the single-zone mass balance
//! `dC/dt = n·g − k·(C − outdoor)`, integrated exactly between samples.

use super::{elapsed_s, hour_of_day, Kind, MetricSpec, Sample, Sensor};
use crate::rng::SimRng;

pub(super) const METRICS: &[MetricSpec] = &[
    MetricSpec {
        name: "co2",
        unit: "ppm",
        min: 350.0,
        max: 5_000.0,
    },
    MetricSpec {
        name: "occupancy",
        unit: "people",
        min: 0.0,
        max: 1_000.0,
    },
];

const DEFAULT_CAPACITY: u32 = 12;
/// Outdoor CO2.
const OUTDOOR_PPM: f64 = 420.0;
/// One seated person's CO2 in a 150 m³ room: 0.005 L/s → 0.033 ppm/s.
const PPM_PER_PERSON_S: f64 = 0.0333;
/// Ventilation: 2 air changes per hour.
const AIR_CHANGE_PER_S: f64 = 2.0 / 3_600.0;

/// An air-quality sensor's state.
#[derive(Debug, Clone)]
pub struct AirQuality {
    capacity: u32,
    people: u32,
    co2: f64,
    last_ms: Option<i64>,
}

impl AirQuality {
    /// A sensor in a room that holds `capacity` people at its busiest (default 12).
    pub fn new(capacity: Option<u32>, rng: &mut SimRng) -> Self {
        AirQuality {
            capacity: capacity.unwrap_or(DEFAULT_CAPACITY).clamp(1, 1_000),
            people: 0,
            co2: OUTDOOR_PPM + rng.uniform(0.0, 40.0),
            last_ms: None,
        }
    }

    /// How full the room tends to be at this hour, 0 to 1.
    fn busyness(hour: f64) -> f64 {
        match hour {
            h if !(7.5..19.0).contains(&h) => 0.0,
            h if h < 9.0 => (h - 7.5) / 1.5,
            h if (12.0..13.0).contains(&h) => 0.4,
            h if h > 17.0 => (19.0 - h) / 2.0,
            _ => 1.0,
        }
    }
}

impl Sensor for AirQuality {
    fn kind(&self) -> Kind {
        Kind::AirQuality
    }

    fn sample(&mut self, now_ms: i64, rng: &mut SimRng, out: &mut Vec<Sample>) {
        let dt = elapsed_s(&mut self.last_ms, now_ms);
        let target = Self::busyness(hour_of_day(now_ms)) * self.capacity as f64;
        // People come and go one at a time, on average every 3 minutes each way,
        // drifting toward the hour's typical occupancy.
        let moves = (dt / 180.0).ceil() as u32;
        for _ in 0..moves.min(500) {
            let p_step = (dt / 180.0).min(1.0);
            if !rng.chance(p_step) {
                continue;
            }
            let gap = target - self.people as f64;
            let p_in = (0.5 + gap / (2.0 * self.capacity as f64)).clamp(0.05, 0.95);
            if rng.chance(p_in) {
                self.people = (self.people + 1).min(self.capacity);
            } else {
                self.people = self.people.saturating_sub(1);
            }
        }
        // Exact solution of the mass balance over dt, with the occupancy held.
        let steady = OUTDOOR_PPM + self.people as f64 * PPM_PER_PERSON_S / AIR_CHANGE_PER_S;
        self.co2 = steady + (self.co2 - steady) * (-AIR_CHANGE_PER_S * dt).exp();
        let reading = self.co2 + 8.0 * rng.normal();

        out.push(Sample::of(&METRICS[0], reading));
        out.push(Sample::of(&METRICS[1], self.people as f64));
    }
}
