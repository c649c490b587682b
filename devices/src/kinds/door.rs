//! Door contact with a motion detector: two 0/1 states, reported as events.
//!
//! A reading is sent when a state changes, and otherwise every [`HEARTBEAT_MS`] of
//! simulated time so a dashboard that joins late still learns the state. Openings are
//! frequent in the day and rare at night; motion fires around openings and now and then
//! on its own.

use super::{elapsed_s, hour_of_day, Kind, MetricSpec, Sample, Sensor};
use crate::rng::SimRng;

pub(super) const METRICS: &[MetricSpec] = &[
    MetricSpec {
        name: "open",
        unit: "",
        min: 0.0,
        max: 1.0,
    },
    MetricSpec {
        name: "motion",
        unit: "",
        min: 0.0,
        max: 1.0,
    },
];

/// Report the unchanged state at least this often.
pub const HEARTBEAT_MS: i64 = 60_000;
/// Motion stays on this long after it was last triggered.
const MOTION_HOLD_S: f64 = 30.0;

/// A door/motion sensor's state.
#[derive(Debug, Clone)]
pub struct Door {
    /// Seconds the door stays open, when it is open.
    open_left_s: f64,
    motion_left_s: f64,
    /// What was last reported, and when: to send only changes and heartbeats.
    reported: Option<(bool, bool, i64)>,
    last_ms: Option<i64>,
}

impl Door {
    /// A closed door in a still room.
    pub fn new(_rng: &mut SimRng) -> Self {
        Door {
            open_left_s: 0.0,
            motion_left_s: 0.0,
            reported: None,
            last_ms: None,
        }
    }

    /// Mean openings per second at this hour: one per 10 minutes in the day, one per
    /// 4 hours at night.
    fn openings_per_s(hour: f64) -> f64 {
        if (7.0..22.0).contains(&hour) {
            1.0 / 600.0
        } else {
            1.0 / 14_400.0
        }
    }
}

impl Sensor for Door {
    fn kind(&self) -> Kind {
        Kind::Door
    }

    fn sample(&mut self, now_ms: i64, rng: &mut SimRng, out: &mut Vec<Sample>) {
        let dt = elapsed_s(&mut self.last_ms, now_ms);
        self.open_left_s = (self.open_left_s - dt).max(0.0);
        self.motion_left_s = (self.motion_left_s - dt).max(0.0);
        let rate = Self::openings_per_s(hour_of_day(now_ms));
        if self.open_left_s == 0.0 && rng.chance((rate * dt).min(1.0)) {
            self.open_left_s = rng.uniform(4.0, 60.0);
            self.motion_left_s = MOTION_HOLD_S;
        } else if rng.chance((rate * 0.5 * dt).min(1.0)) {
            self.motion_left_s = MOTION_HOLD_S;
        }
        let open = self.open_left_s > 0.0;
        let motion = self.motion_left_s > 0.0;
        let due = match self.reported {
            None => true,
            Some((o, m, at)) => o != open || m != motion || now_ms - at >= HEARTBEAT_MS,
        };
        if due {
            self.reported = Some((open, motion, now_ms));
            out.push(Sample::of(&METRICS[0], f64::from(u8::from(open))));
            out.push(Sample::of(&METRICS[1], f64::from(u8::from(motion))));
        }
    }
}
