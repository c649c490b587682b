//! Faults a scenario injects on purpose, to drive the hub's alert rules: from a given
//! time into the run, a device's values drift out of range, get stuck, or stop coming.
//!
//! Between the sensor and the outbox: [`Faults::apply`] changes a device's fresh samples
//! (or drops them all, for `silent`) at simulated time, so the sensors stay pure and a
//! fault that ends hands the device back its normal signal.

use std::collections::HashMap;

/// What a fault does while it is active.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FaultKind {
    /// Adds `by` to the value, reached linearly over `ramp_ms` (0: at once).
    Drift { by: f64, ramp_ms: i64 },
    /// Repeats the value the metric had when the fault began.
    Stuck,
    /// Samples nothing: the device stays connected and says nothing.
    Silent,
}

/// One fault of a device, as the scenario file gives it.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub kind: FaultKind,
    /// When it begins, in simulated milliseconds after the device's first sample.
    pub at_ms: i64,
    /// How long it lasts; `None` until the run ends.
    pub for_ms: Option<i64>,
    /// The metric it touches (`drift`, `stuck`); `None`: every metric of the device.
    pub metric: Option<String>,
}

impl Fault {
    fn active(&self, elapsed: i64) -> bool {
        elapsed >= self.at_ms && self.for_ms.is_none_or(|d| elapsed < self.at_ms + d)
    }

    fn touches(&self, metric: &str) -> bool {
        self.metric.as_deref().is_none_or(|m| m == metric)
    }
}

/// A device's faults and what they remember (the stuck values).
#[derive(Debug, Default)]
pub(crate) struct Faults {
    faults: Vec<Fault>,
    /// Simulated time of the device's first sample.
    start_ms: Option<i64>,
    /// (fault, metric) → the value it is stuck at.
    stuck: HashMap<(usize, &'static str), f64>,
}

impl Faults {
    pub(crate) fn new(faults: Vec<Fault>) -> Faults {
        Faults {
            faults,
            ..Faults::default()
        }
    }

    /// Applies the faults active at `now_ms` to `samples`, in the order the scenario
    /// lists them; a `silent` one empties it.
    pub(crate) fn apply(&mut self, now_ms: i64, samples: &mut Vec<crate::kinds::Sample>) {
        if self.faults.is_empty() {
            return;
        }
        let elapsed = now_ms - *self.start_ms.get_or_insert(now_ms);
        for (i, f) in self.faults.iter().enumerate() {
            if !f.active(elapsed) {
                self.stuck.retain(|(fi, _), _| *fi != i);
                continue;
            }
            match f.kind {
                FaultKind::Silent => samples.clear(),
                FaultKind::Drift { by, ramp_ms } => {
                    let into = (elapsed - f.at_ms) as f64;
                    let share = if ramp_ms <= 0 {
                        1.0
                    } else {
                        (into / ramp_ms as f64).min(1.0)
                    };
                    for s in samples.iter_mut().filter(|s| f.touches(s.metric)) {
                        s.value += by * share;
                    }
                }
                FaultKind::Stuck => {
                    for s in samples.iter_mut().filter(|s| f.touches(s.metric)) {
                        s.value = *self.stuck.entry((i, s.metric)).or_insert(s.value);
                    }
                }
            }
        }
    }
}

/// Parses `0`, `500ms`, `30s`, `2m`, `1h` into milliseconds.
pub(crate) fn parse_duration(s: &str) -> Option<i64> {
    if s == "0" {
        return Some(0);
    }
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: i64 = num.parse().ok()?;
    let ms = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    n.checked_mul(ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::Sample;

    fn samples(t: f64, h: f64) -> Vec<Sample> {
        vec![
            Sample {
                metric: "temperature",
                value: t,
                unit: "°C",
            },
            Sample {
                metric: "humidity",
                value: h,
                unit: "%",
            },
        ]
    }

    #[test]
    fn faults_begin_and_end_on_time() {
        let mut f = Faults::new(vec![
            Fault {
                kind: FaultKind::Drift {
                    by: 10.0,
                    ramp_ms: 1_000,
                },
                at_ms: 1_000,
                for_ms: Some(2_000),
                metric: Some("temperature".into()),
            },
            Fault {
                kind: FaultKind::Stuck,
                at_ms: 500,
                for_ms: Some(1_000),
                metric: Some("humidity".into()),
            },
            Fault {
                kind: FaultKind::Silent,
                at_ms: 5_000,
                for_ms: None,
                metric: None,
            },
        ]);
        let at = |f: &mut Faults, t: i64, temp: f64, hum: f64| {
            let mut s = samples(temp, hum);
            f.apply(t, &mut s);
            s.iter().map(|s| s.value).collect::<Vec<_>>()
        };
        assert_eq!(at(&mut f, 10_000, 20.0, 50.0), [20.0, 50.0]);
        assert_eq!(at(&mut f, 10_600, 20.0, 51.0), [20.0, 51.0]);
        assert_eq!(at(&mut f, 11_000, 20.0, 52.0), [20.0, 51.0]);
        assert_eq!(at(&mut f, 11_500, 20.0, 53.0), [25.0, 53.0]);
        assert_eq!(at(&mut f, 12_500, 20.0, 54.0), [30.0, 54.0]);
        assert_eq!(at(&mut f, 13_000, 20.0, 55.0), [20.0, 55.0]);
        assert!(at(&mut f, 15_000, 20.0, 55.0).is_empty());
        assert_eq!(parse_duration("1500ms"), Some(1_500));
        assert_eq!(parse_duration("2m"), Some(120_000));
        assert_eq!(parse_duration("2x"), None);
        assert_eq!(parse_duration("s"), None);
    }
}
