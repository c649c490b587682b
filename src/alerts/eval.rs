//! Evaluation: one room's alert instances, updated by each accepted reading and by the
//! clock (for `stale`).
//!
//! Called by the room under its own lock, right where a reading is stamped, so an `alert`
//! follows the reading that caused it and nothing is rescanned: each series remembers
//! which rules watch it (worked out once, again only when the rule set changes), and a
//! reading costs two map lookups plus one comparison per watching rule. Each instance is
//! one (rule, room, device, metric); `for` is measured on the readings' `ts`, `stale` on
//! the hub's clock.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;

use super::rule::{Condition, Rule, Severity};

/// The rules in force, numbered so series can tell their cached matches are out of date.
#[derive(Default)]
pub(crate) struct RuleSet {
    pub generation: u64,
    pub rules: Vec<Arc<Rule>>,
}

/// An instance's state, as `alert` frames and the API name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum State {
    /// The condition holds but not yet for `for`.
    Pending,
    Firing,
    /// The last transition of an instance: it is gone afterwards.
    Resolved,
}

impl State {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Firing => "firing",
            State::Resolved => "resolved",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<State> {
        match s {
            "pending" => Some(State::Pending),
            "firing" => Some(State::Firing),
            "resolved" => Some(State::Resolved),
            _ => None,
        }
    }
}

/// Who acknowledged an instance, and when (epoch ms).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Ack {
    pub by: String,
    pub at: i64,
}

/// A live (pending or firing) instance.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Instance {
    pub state: State,
    /// When it entered `state` (epoch ms: the reading's `ts`, or the hub's clock for
    /// `stale`).
    pub since: i64,
    /// The value that made the last transition.
    pub value: f64,
    /// Its rule's severity when it started (kept for its last transition, should the
    /// rule be deleted meanwhile).
    pub severity: Severity,
    pub ack: Option<Ack>,
}

/// One transition of one instance.
#[derive(Debug, Clone)]
pub(crate) struct Transition {
    pub rule: Arc<str>,
    pub severity: Severity,
    pub room: Arc<str>,
    pub device: Arc<str>,
    pub metric: Arc<str>,
    pub state: State,
    pub value: f64,
    pub since: i64,
    /// The state before (`None`: the instance is new).
    pub was: Option<State>,
}

impl Transition {
    /// The transition as the `alert` frame and the sinks' payloads carry it (never
    /// acknowledged: an ack is an event of the instance, not of a transition).
    pub(crate) fn alert(&self) -> telehub_protocol::outbound::Alert<'_> {
        use std::borrow::Cow::Borrowed;
        telehub_protocol::outbound::Alert {
            rule: Borrowed(&self.rule),
            room: Borrowed(&self.room),
            device: Borrowed(&self.device),
            metric: Borrowed(&self.metric),
            state: Borrowed(self.state.as_str()),
            value: self.value,
            since: self.since,
            severity: Borrowed(self.severity.as_str()),
            acked_by: None,
            acked_at: None,
        }
    }
}

/// One rule watching one series, and its instance if it has one.
struct Watch {
    rule: Arc<Rule>,
    instance: Option<Instance>,
}

/// The rules watching one series.
struct Series {
    /// The metric's name (the map's key, kept to hand out without allocating).
    metric: Arc<str>,
    /// The [`RuleSet::generation`] `watches` was worked out for.
    generation: u64,
    watches: Vec<Watch>,
    /// Instances read back from the store, not yet matched with their rule.
    restored: Vec<(Arc<str>, Instance)>,
    /// Hub clock (epoch ms) of the last reading, and its value.
    last_seen: i64,
    last_value: f64,
}

/// A live instance as `GET /api/alerts` lists it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Listed {
    pub instance: String,
    pub rule: Arc<str>,
    pub room: Arc<str>,
    pub device: Arc<str>,
    pub metric: Arc<str>,
    pub state: State,
    pub value: f64,
    pub since: i64,
    pub severity: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ack: Option<Ack>,
    /// The silence that covers it now, if any (its transitions are not notified).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub silenced_by: Option<String>,
}

/// The id of an instance in the API: `rule:room:device:metric` (`:` is in no id).
pub(crate) fn instance_id(rule: &str, room: &str, device: &str, metric: &str) -> String {
    format!("{rule}:{room}:{device}:{metric}")
}

/// Series of a room silent this long, with no instance and no `stale` rule watching,
/// are forgotten.
const FORGET_AFTER_MS: i64 = 3_600_000;

/// One room's alert state.
pub(crate) struct RoomAlerts {
    room: Arc<str>,
    series: HashMap<Arc<str>, HashMap<Arc<str>, Series>>,
}

impl Series {
    fn new(metric: Arc<str>, now: i64, value: f64) -> Series {
        Series {
            metric,
            generation: u64::MAX,
            watches: Vec::new(),
            restored: Vec::new(),
            last_seen: now,
            last_value: value,
        }
    }

    /// Brings `watches` up to `rules`, keeping the instances of rules that are still
    /// there (and restored ones); an instance whose rule is gone is resolved.
    fn refresh(
        &mut self,
        rules: &RuleSet,
        (room, device, metric): (&Arc<str>, &Arc<str>, &Arc<str>),
        now: i64,
        out: &mut Vec<Transition>,
    ) {
        if self.generation == rules.generation {
            return;
        }
        self.generation = rules.generation;
        let mut old: Vec<(Arc<str>, Instance)> = std::mem::take(&mut self.restored);
        for w in self.watches.drain(..) {
            if let Some(i) = w.instance {
                old.push((w.rule.id.clone(), i));
            }
        }
        for rule in &rules.rules {
            if rule.matches(room, device, metric) {
                let instance = old
                    .iter()
                    .position(|(id, _)| *id == rule.id)
                    .map(|p| old.swap_remove(p).1);
                self.watches.push(Watch {
                    rule: rule.clone(),
                    instance,
                });
            }
        }
        for (id, i) in old {
            // Its rule was deleted or no longer matches this series: say it is over.
            out.push(Transition {
                rule: id,
                severity: i.severity,
                room: room.clone(),
                device: device.clone(),
                metric: metric.clone(),
                state: State::Resolved,
                value: i.value,
                since: now,
                was: Some(i.state),
            });
        }
    }
}

impl RoomAlerts {
    pub(crate) fn new(room: Arc<str>) -> RoomAlerts {
        RoomAlerts {
            room,
            series: HashMap::new(),
        }
    }

    /// Puts back an instance read from the store (before any reading of its series).
    pub(crate) fn restore(&mut self, rule: Arc<str>, device: &str, metric: &str, i: Instance) {
        let s = self
            .series
            .entry(device.into())
            .or_default()
            .entry(metric.into())
            .or_insert_with(|| Series::new(metric.into(), i.since, i.value));
        s.restored.push((rule, i));
    }

    /// Evaluates one accepted reading (`ts` its timestamp, `now` the hub's clock).
    pub(crate) fn observe(
        &mut self,
        rules: &RuleSet,
        device: &Arc<str>,
        metric: &str,
        (value, ts, now): (f64, i64, i64),
        out: &mut Vec<Transition>,
    ) {
        let metrics = match self.series.get_mut(device.as_ref()) {
            Some(m) => m,
            None => self.series.entry(device.clone()).or_default(),
        };
        let s = match metrics.get_mut(metric) {
            Some(s) => s,
            None => {
                let k: Arc<str> = metric.into();
                metrics
                    .entry(k.clone())
                    .or_insert_with(|| Series::new(k, now, value))
            }
        };
        let metric = s.metric.clone();
        s.refresh(rules, (&self.room, device, &metric), now, out);
        s.last_seen = now;
        s.last_value = value;
        for w in &mut s.watches {
            let key = (&self.room, device, &metric);
            step(w, key, value, ts, out);
        }
    }

    /// The clock's part: `stale` instances whose series went silent fire.
    pub(crate) fn tick(&mut self, rules: &RuleSet, now: i64, out: &mut Vec<Transition>) {
        for (device, metrics) in self.series.iter_mut() {
            for (metric, s) in metrics.iter_mut() {
                s.refresh(rules, (&self.room, device, metric), now, out);
                for w in &mut s.watches {
                    let Condition::Stale { ms } = w.rule.condition else {
                        continue;
                    };
                    if w.instance.is_none() && now - s.last_seen >= ms {
                        let since = s.last_seen + ms;
                        w.instance = Some(Instance {
                            state: State::Firing,
                            since,
                            value: s.last_value,
                            severity: w.rule.severity,
                            ack: None,
                        });
                        out.push(Transition {
                            rule: w.rule.id.clone(),
                            severity: w.rule.severity,
                            room: self.room.clone(),
                            device: device.clone(),
                            metric: metric.clone(),
                            state: State::Firing,
                            value: s.last_value,
                            since,
                            was: None,
                        });
                    }
                }
            }
            metrics.retain(|_, s| {
                now - s.last_seen < FORGET_AFTER_MS
                    || !s.restored.is_empty()
                    || s.watches.iter().any(|w| {
                        w.instance.is_some() || matches!(w.rule.condition, Condition::Stale { .. })
                    })
            });
        }
        self.series.retain(|_, m| !m.is_empty());
    }

    /// Whether the room has no series left (its state can be dropped).
    pub(crate) fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Every live instance (restored ones included), for the API and a joining dashboard.
    pub(crate) fn list(&self, out: &mut Vec<Listed>) {
        for (device, metrics) in &self.series {
            for (metric, s) in metrics {
                let live = s
                    .watches
                    .iter()
                    .filter_map(|w| w.instance.as_ref().map(|i| (w.rule.id.clone(), i)))
                    .chain(s.restored.iter().map(|(id, i)| (id.clone(), i)));
                for (rule, i) in live {
                    out.push(Listed {
                        instance: instance_id(&rule, &self.room, device, metric),
                        rule,
                        room: self.room.clone(),
                        device: device.clone(),
                        metric: metric.clone(),
                        state: i.state,
                        value: i.value,
                        since: i.since,
                        severity: i.severity.as_str(),
                        ack: i.ack.clone(),
                        silenced_by: None,
                    });
                }
            }
        }
    }

    /// Records an ack on the live instance of `rule` on (device, metric), and returns it
    /// as listed; `None` if there is no such instance.
    pub(crate) fn ack(
        &mut self,
        rule: &str,
        device: &str,
        metric: &str,
        ack: Ack,
    ) -> Option<Listed> {
        let (device, s) = self
            .series
            .iter_mut()
            .find(|(d, _)| &***d == device)
            .and_then(|(d, m)| m.get_mut(metric).map(|s| (d.clone(), s)))?;
        let live = s
            .watches
            .iter_mut()
            .filter(|w| &*w.rule.id == rule)
            .filter_map(|w| w.instance.as_mut())
            .chain(
                s.restored
                    .iter_mut()
                    .filter(|(id, _)| &**id == rule)
                    .map(|(_, i)| i),
            )
            .next();
        let i = live?;
        i.ack = Some(ack);
        let rule: Arc<str> = rule.into();
        Some(Listed {
            instance: instance_id(&rule, &self.room, &device, &s.metric),
            rule,
            room: self.room.clone(),
            device,
            metric: s.metric.clone(),
            state: i.state,
            value: i.value,
            since: i.since,
            severity: i.severity.as_str(),
            ack: i.ack.clone(),
            silenced_by: None,
        })
    }
}

/// One rule's step for one reading.
fn step(
    w: &mut Watch,
    (room, device, metric): (&Arc<str>, &Arc<str>, &Arc<str>),
    value: f64,
    ts: i64,
    out: &mut Vec<Transition>,
) {
    let rule = &w.rule;
    let emit = |state, since, was, out: &mut Vec<Transition>| {
        out.push(Transition {
            rule: rule.id.clone(),
            severity: rule.severity,
            room: room.clone(),
            device: device.clone(),
            metric: metric.clone(),
            state,
            value,
            since,
            was,
        })
    };
    if let Condition::Stale { .. } = rule.condition {
        // A reading ends a stale alert.
        if let Some(i) = w.instance.take() {
            emit(State::Resolved, ts, Some(i.state), out);
        }
        return;
    }
    let breached = rule.condition.breached(value);
    match &mut w.instance {
        None if breached => {
            let state = if rule.hold_ms == 0 {
                State::Firing
            } else {
                State::Pending
            };
            w.instance = Some(Instance {
                state,
                since: ts,
                value,
                severity: rule.severity,
                ack: None,
            });
            emit(state, ts, None, out);
        }
        None => {}
        Some(i) if i.state == State::Pending => {
            if !breached {
                // It did not hold for `for`: over without having fired.
                let was = i.state;
                w.instance = None;
                emit(State::Resolved, ts, Some(was), out);
            } else if ts - i.since >= rule.hold_ms {
                i.state = State::Firing;
                i.since = ts;
                i.value = value;
                emit(State::Firing, ts, Some(State::Pending), out);
            }
        }
        Some(_) if rule.condition.cleared(value) => {
            w.instance = None;
            emit(State::Resolved, ts, Some(State::Firing), out);
        }
        Some(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::rule::RuleConfig;

    fn set(rules: &[&str]) -> RuleSet {
        RuleSet {
            generation: 1,
            rules: rules
                .iter()
                .map(|t| {
                    let c: RuleConfig = toml::from_str(t).unwrap();
                    Arc::new(c.compile().unwrap())
                })
                .collect(),
        }
    }

    fn states(out: &mut Vec<Transition>) -> Vec<(&'static str, f64, i64)> {
        out.drain(..)
            .map(|t| (t.state.as_str(), t.value, t.since))
            .collect()
    }

    #[test]
    fn above_with_for_and_hysteresis() {
        let rules = set(&["id='hot'\nmetric='t'\nabove=35.0\nclear_below=33.0\nfor='2s'"]);
        let mut room = RoomAlerts::new("g".into());
        let d: Arc<str> = "d".into();
        let mut out = Vec::new();
        let mut at = |v: f64, ts: i64, out: &mut Vec<Transition>| {
            room.observe(&rules, &d, "t", (v, ts, ts), out)
        };
        at(30.0, 0, &mut out);
        assert!(out.is_empty());
        at(36.0, 1_000, &mut out);
        assert_eq!(states(&mut out), [("pending", 36.0, 1_000)]);
        at(36.5, 2_000, &mut out);
        assert!(out.is_empty(), "not yet held for 2 s");
        at(37.0, 3_000, &mut out);
        assert_eq!(states(&mut out), [("firing", 37.0, 3_000)]);
        at(34.0, 4_000, &mut out);
        assert!(
            out.is_empty(),
            "between the threshold and clear_below it keeps firing"
        );
        at(33.0, 5_000, &mut out);
        assert_eq!(states(&mut out), [("resolved", 33.0, 5_000)]);
        // A pending that does not hold is resolved without firing.
        at(36.0, 6_000, &mut out);
        at(30.0, 7_000, &mut out);
        assert_eq!(
            states(&mut out),
            [("pending", 36.0, 6_000), ("resolved", 30.0, 7_000)]
        );
    }

    #[test]
    fn stale_fires_on_the_clock_and_resolves_with_a_reading() {
        let rules = set(&[
            "id='silent'\nstale='5s'",
            "id='other'\nroom='x-*'\nabove=1.0",
        ]);
        let mut room = RoomAlerts::new("g".into());
        let d: Arc<str> = "d".into();
        let mut out = Vec::new();
        room.observe(&rules, &d, "t", (1.0, 0, 10_000), &mut out);
        room.tick(&rules, 14_999, &mut out);
        assert!(out.is_empty());
        room.tick(&rules, 15_000, &mut out);
        assert_eq!(states(&mut out), [("firing", 1.0, 15_000)]);
        room.tick(&rules, 20_000, &mut out);
        assert!(out.is_empty(), "fires once");
        room.observe(&rules, &d, "t", (2.0, 21_000, 21_000), &mut out);
        assert_eq!(states(&mut out), [("resolved", 2.0, 21_000)]);
    }

    #[test]
    fn a_restored_instance_keeps_firing_without_a_new_transition() {
        let rules = set(&["id='low'\nbelow=0.0"]);
        let mut room = RoomAlerts::new("g".into());
        let d: Arc<str> = "d".into();
        let firing = Instance {
            state: State::Firing,
            since: 5,
            value: -3.0,
            severity: Severity::Warning,
            ack: None,
        };
        room.restore("low".into(), "d", "t", firing);
        let mut out = Vec::new();
        room.observe(&rules, &d, "t", (-4.0, 10, 10), &mut out);
        assert!(out.is_empty());
        let mut listed = Vec::new();
        room.list(&mut listed);
        assert_eq!((listed.len(), listed[0].since), (1, 5));
        room.observe(&rules, &d, "t", (1.0, 11, 11), &mut out);
        assert_eq!(states(&mut out), [("resolved", 1.0, 11)]);
    }

    #[test]
    fn a_changed_rule_set_resolves_the_instances_of_a_deleted_rule() {
        let rules = set(&["id='low'\nbelow=0.0"]);
        let mut room = RoomAlerts::new("g".into());
        let d: Arc<str> = "d".into();
        let mut out = Vec::new();
        room.observe(&rules, &d, "t", (-1.0, 1, 1), &mut out);
        assert_eq!(states(&mut out), [("firing", -1.0, 1)]);
        let none = RuleSet {
            generation: 2,
            rules: Vec::new(),
        };
        room.observe(&none, &d, "t", (-1.0, 2, 2), &mut out);
        let t = out.pop().unwrap();
        assert_eq!((&*t.rule, t.state), ("low", State::Resolved));
    }
}
