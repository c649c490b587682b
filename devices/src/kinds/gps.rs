//! GPS tracker on a vehicle that drives a closed loop of waypoints around a centre:
//! latitude, longitude and speed.
//!
//! Model: the route is a jittered polygon 1.5 to 2.5 km around the centre, drawn from the
//! device's seed. The vehicle cruises at a speed that wanders around 40 km/h and stops at
//! some waypoints for half a minute to two minutes; position is interpolated along each leg.

use super::{elapsed_s, Kind, MetricSpec, Sample, Sensor};
use crate::rng::SimRng;

pub(super) const METRICS: &[MetricSpec] = &[
    MetricSpec {
        name: "lat",
        unit: "deg",
        min: -90.0,
        max: 90.0,
    },
    MetricSpec {
        name: "lon",
        unit: "deg",
        min: -180.0,
        max: 180.0,
    },
    MetricSpec {
        name: "speed",
        unit: "km/h",
        min: 0.0,
        max: 130.0,
    },
];

/// Amsterdam Centraal, for a route when the scenario gives no centre.
const DEFAULT_CENTER: (f64, f64) = (52.3791, 4.9003);
const WAYPOINTS: usize = 8;
const METERS_PER_DEG_LAT: f64 = 111_320.0;
const CRUISE_KMH: f64 = 40.0;
/// Chance that the vehicle stops at a waypoint it reaches.
const STOP_CHANCE: f64 = 0.5;

/// A GPS tracker's state.
#[derive(Debug, Clone)]
pub struct Gps {
    /// Waypoints as (north, east) metres from the centre.
    route: Vec<(f64, f64)>,
    center: (f64, f64),
    leg: usize,
    /// Metres travelled along the current leg.
    along: f64,
    cruise_kmh: f64,
    stop_left_s: f64,
    last_ms: Option<i64>,
}

impl Gps {
    /// A tracker driving around `center` (lat, lon in degrees).
    pub fn new(center: Option<(f64, f64)>, rng: &mut SimRng) -> Self {
        let center = center.unwrap_or(DEFAULT_CENTER);
        let route = (0..WAYPOINTS)
            .map(|i| {
                let angle =
                    std::f64::consts::TAU * (i as f64 + rng.uniform(-0.3, 0.3)) / WAYPOINTS as f64;
                let radius = rng.uniform(1_500.0, 2_500.0);
                (radius * angle.sin(), radius * angle.cos())
            })
            .collect();
        Gps {
            route,
            center,
            leg: 0,
            along: 0.0,
            cruise_kmh: CRUISE_KMH,
            stop_left_s: 0.0,
            last_ms: None,
        }
    }

    fn leg_ends(&self) -> ((f64, f64), (f64, f64)) {
        let a = self.route[self.leg];
        let b = self.route[(self.leg + 1) % self.route.len()];
        (a, b)
    }

    fn leg_length(&self) -> f64 {
        let (a, b) = self.leg_ends();
        ((b.0 - a.0).powi(2) + (b.1 - a.1).powi(2)).sqrt().max(1.0)
    }

    /// Move the vehicle through `dt` seconds of driving and stopping.
    fn advance(&mut self, mut dt: f64, rng: &mut SimRng) {
        // Bounded: each pass either finishes dt or passes a waypoint (≥ 1 m of route).
        for _ in 0..100_000 {
            if dt <= 0.0 {
                break;
            }
            if self.stop_left_s > 0.0 {
                let s = dt.min(self.stop_left_s);
                self.stop_left_s -= s;
                dt -= s;
                continue;
            }
            let v = self.cruise_kmh / 3.6;
            let left = self.leg_length() - self.along;
            if left > v * dt {
                self.along += v * dt;
                dt = 0.0;
            } else {
                dt -= left / v;
                self.leg = (self.leg + 1) % self.route.len();
                self.along = 0.0;
                if rng.chance(STOP_CHANCE) {
                    self.stop_left_s = rng.uniform(30.0, 120.0);
                }
            }
        }
    }

    fn position(&self) -> (f64, f64) {
        let (a, b) = self.leg_ends();
        let f = (self.along / self.leg_length()).clamp(0.0, 1.0);
        let north = a.0 + (b.0 - a.0) * f;
        let east = a.1 + (b.1 - a.1) * f;
        let lat = self.center.0 + north / METERS_PER_DEG_LAT;
        let lon = self.center.1
            + east / (METERS_PER_DEG_LAT * self.center.0.to_radians().cos().max(0.01));
        (lat, lon)
    }
}

impl Sensor for Gps {
    fn kind(&self) -> Kind {
        Kind::Gps
    }

    fn sample(&mut self, now_ms: i64, rng: &mut SimRng, out: &mut Vec<Sample>) {
        let dt = elapsed_s(&mut self.last_ms, now_ms);
        // Cruise speed wanders around 40 km/h (mean-reverting), within city limits.
        let revert = 1.0 - (-dt / 120.0).exp();
        self.cruise_kmh += (CRUISE_KMH - self.cruise_kmh) * revert
            + 3.0 * (dt / 10.0).sqrt().min(3.0) * rng.normal();
        self.cruise_kmh = self.cruise_kmh.clamp(15.0, 70.0);
        self.advance(dt, rng);
        let (lat, lon) = self.position();
        // GPS fixes wobble by a few metres.
        let wobble = 3.0 / METERS_PER_DEG_LAT;
        let speed = if self.stop_left_s > 0.0 {
            0.0
        } else {
            self.cruise_kmh + 0.5 * rng.normal()
        };
        out.push(Sample::of(&METRICS[0], lat + wobble * rng.normal()));
        out.push(Sample::of(&METRICS[1], lon + wobble * rng.normal()));
        out.push(Sample::of(&METRICS[2], speed));
    }
}
