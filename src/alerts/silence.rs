//! Silences: matchers (globs on rule, room, device and metric) and an end time, made
//! over `POST /api/alerts/silences`, under which transitions are still recorded, listed
//! and sent to dashboards, but not notified (as Alertmanager does).
//!
//! Between evaluation and [`super::notify`]: the engine asks [`Silences::covering`] for
//! each transition, inside the room's lock, so the set is swapped whole ([`ArcSwap`]) and
//! read without a lock. Stored in the hub's SQLite file (`alert_silences`) with history
//! persistence on; at most [`MAX_SILENCES`] are in force.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use super::eval::Transition;
use super::lock;
use super::rule::{parse_duration, Glob};

/// Silences in force at most; another is refused (`409 silence_limit`) until one ends.
pub(crate) const MAX_SILENCES: usize = 1_000;
/// The longest silence: a year.
pub(crate) const MAX_SILENCE_MS: i64 = 365 * 86_400_000;
/// A comment's length at most, in bytes.
pub(crate) const MAX_COMMENT: usize = 1_024;

fn any() -> String {
    "*".into()
}

/// What a silence covers: every transition whose rule, room, device and metric match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Matchers {
    #[serde(default = "any")]
    pub rule: String,
    #[serde(default = "any")]
    pub room: String,
    #[serde(default = "any")]
    pub device: String,
    #[serde(default = "any")]
    pub metric: String,
}

/// `POST /api/alerts/silences`: matchers, and an end (`ends_at`, epoch ms, or `for`, a
/// duration from now), who and why.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SilenceRequest {
    pub matchers: Matchers,
    #[serde(default)]
    pub ends_at: Option<i64>,
    #[serde(default, rename = "for")]
    pub duration: Option<String>,
    #[serde(default)]
    pub by: Option<String>,
    #[serde(default)]
    pub comment: String,
}

/// A silence as stored and listed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Silence {
    pub id: String,
    pub matchers: Matchers,
    /// When it was made (epoch ms, hub clock).
    pub starts_at: i64,
    /// When it stops covering (epoch ms, hub clock).
    pub ends_at: i64,
    pub by: String,
    pub comment: String,
}

/// Why a silence was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SilenceError {
    /// A bad matcher, end or comment (400 `invalid_silence`).
    #[error("{0}")]
    Invalid(String),
    /// [`MAX_SILENCES`] are in force (409 `silence_limit`).
    #[error("{MAX_SILENCES} silences are in force already; delete one or wait for one to end")]
    Limit,
    /// No silence in force has this id (404).
    #[error("no silence `{0}`")]
    Unknown(String),
    /// The store's queue is full (503).
    #[error("the alert store is busy; try again")]
    Busy,
}

struct Compiled {
    silence: Silence,
    rule: Glob,
    room: Glob,
    device: Glob,
    metric: Glob,
}

impl Compiled {
    fn new(silence: Silence) -> Result<Compiled, SilenceError> {
        let glob = |key: &str, v: &str| {
            Glob::parse(v).map_err(|e| SilenceError::Invalid(format!("matchers.{key}: {e}")))
        };
        let m = &silence.matchers;
        Ok(Compiled {
            rule: glob("rule", &m.rule)?,
            room: glob("room", &m.room)?,
            device: glob("device", &m.device)?,
            metric: glob("metric", &m.metric)?,
            silence,
        })
    }

    fn covers(&self, (rule, room, device, metric): (&str, &str, &str, &str), now: i64) -> bool {
        now < self.silence.ends_at
            && self.rule.matches(rule)
            && self.room.matches(room)
            && self.device.matches(device)
            && self.metric.matches(metric)
    }
}

/// The silences in force.
#[derive(Default)]
pub(crate) struct Silences {
    set: ArcSwap<Vec<Arc<Compiled>>>,
    /// Serialises changes (the set is swapped whole).
    changing: Mutex<()>,
}

impl Silences {
    /// The silences read back from the store (JSON); unreadable or ended ones are left
    /// out.
    pub(crate) fn load(stored: Vec<String>, now: i64) -> Silences {
        let set: Vec<Arc<Compiled>> = stored
            .iter()
            .filter_map(|j| serde_json::from_str::<Silence>(j).ok())
            .filter(|s| s.ends_at > now)
            .filter_map(|s| Compiled::new(s).ok().map(Arc::new))
            .take(MAX_SILENCES)
            .collect();
        Silences {
            set: ArcSwap::from_pointee(set),
            changing: Mutex::new(()),
        }
    }

    /// The id of a silence in force that covers `t`, if any.
    pub(crate) fn covering(&self, t: &Transition, now: i64) -> Option<String> {
        self.covering_series((&t.rule, &t.room, &t.device, &t.metric), now)
    }

    /// The id of a silence in force that covers (rule, room, device, metric), if any.
    pub(crate) fn covering_series(
        &self,
        series: (&str, &str, &str, &str),
        now: i64,
    ) -> Option<String> {
        let set = self.set.load();
        set.iter()
            .find(|c| c.covers(series, now))
            .map(|c| c.silence.id.clone())
    }

    /// The silences in force, oldest first.
    pub(crate) fn list(&self, now: i64) -> Vec<Silence> {
        self.set
            .load()
            .iter()
            .filter(|c| c.silence.ends_at > now)
            .map(|c| c.silence.clone())
            .collect()
    }

    /// Makes a silence from `req` for `by` (already checked) at `now`; `store` is asked
    /// to keep it (false: not kept, so not made).
    pub(crate) fn add(
        &self,
        req: SilenceRequest,
        by: String,
        now: i64,
        store: impl FnOnce(&Silence) -> bool,
    ) -> Result<Silence, SilenceError> {
        let ends_at = match (req.ends_at, req.duration.as_deref()) {
            (Some(at), None) => at,
            (None, Some(d)) => {
                now.saturating_add(parse_duration(d).map_err(SilenceError::Invalid)?)
            }
            _ => {
                return Err(SilenceError::Invalid(
                    "give exactly one of `ends_at` (epoch ms) and `for` (a duration)".into(),
                ))
            }
        };
        if ends_at <= now {
            return Err(SilenceError::Invalid(format!(
                "ends_at ({ends_at}) must be in the future"
            )));
        }
        if ends_at - now > MAX_SILENCE_MS {
            return Err(SilenceError::Invalid(
                "a silence lasts a year at most".into(),
            ));
        }
        if req.comment.len() > MAX_COMMENT {
            return Err(SilenceError::Invalid(format!(
                "comment must be at most {MAX_COMMENT} bytes"
            )));
        }
        let _changing = lock(&self.changing);
        let mut next: Vec<Arc<Compiled>> = self
            .set
            .load()
            .iter()
            .filter(|c| c.silence.ends_at > now)
            .cloned()
            .collect();
        if next.len() >= MAX_SILENCES {
            return Err(SilenceError::Limit);
        }
        let silence = Silence {
            id: format!("s-{now:x}-{:08x}", fastrand::u32(..)),
            matchers: req.matchers,
            starts_at: now,
            ends_at,
            by,
            comment: req.comment,
        };
        let compiled = Compiled::new(silence.clone())?;
        if !store(&silence) {
            return Err(SilenceError::Busy);
        }
        next.push(Arc::new(compiled));
        self.set.store(Arc::new(next));
        Ok(silence)
    }

    /// Ends silence `id` now; `store` is asked to forget it.
    pub(crate) fn remove(
        &self,
        id: &str,
        store: impl FnOnce(&str) -> bool,
    ) -> Result<(), SilenceError> {
        let _changing = lock(&self.changing);
        let current = self.set.load();
        if !current.iter().any(|c| c.silence.id == id) {
            return Err(SilenceError::Unknown(id.to_string()));
        }
        if !store(id) {
            return Err(SilenceError::Busy);
        }
        let next: Vec<Arc<Compiled>> = current
            .iter()
            .filter(|c| c.silence.id != id)
            .cloned()
            .collect();
        self.set.store(Arc::new(next));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::eval::State;
    use crate::alerts::Severity;

    fn t(rule: &str, room: &str) -> Transition {
        Transition {
            rule: rule.into(),
            severity: Severity::Warning,
            room: room.into(),
            device: "d".into(),
            metric: "temperature".into(),
            state: State::Firing,
            value: 1.0,
            since: 0,
            was: None,
        }
    }

    fn req(json: &str) -> SilenceRequest {
        serde_json::from_str(json).expect("a request")
    }

    #[test]
    fn a_silence_covers_its_matches_until_it_ends() {
        let s = Silences::default();
        let made = s
            .add(
                req(r#"{"matchers":{"rule":"hot","room":"gh-*"},"for":"1m"}"#),
                "alice".into(),
                1_000,
                |_| true,
            )
            .expect("made");
        assert_eq!(made.ends_at, 61_000);
        assert_eq!(s.covering(&t("hot", "gh-1"), 2_000), Some(made.id.clone()));
        assert_eq!(s.covering(&t("cold", "gh-1"), 2_000), None);
        assert_eq!(s.covering(&t("hot", "lab"), 2_000), None);
        assert_eq!(s.covering(&t("hot", "gh-1"), 61_000), None);
        assert!(s.list(61_000).is_empty());
        s.remove(&made.id, |_| true).expect("removed");
        assert!(matches!(
            s.remove(&made.id, |_| true),
            Err(SilenceError::Unknown(_))
        ));
    }

    #[test]
    fn bad_silences_are_refused_and_nothing_is_kept() {
        let s = Silences::default();
        let bad = |j: &str| {
            s.add(req(j), "a".into(), 1_000, |_| true)
                .expect_err("refused")
        };
        assert!(bad(r#"{"matchers":{},"ends_at":500}"#)
            .to_string()
            .contains("future"));
        assert!(bad(r#"{"matchers":{"room":"a b"},"for":"1m"}"#)
            .to_string()
            .contains("matchers.room"));
        assert!(bad(r#"{"matchers":{}}"#)
            .to_string()
            .contains("exactly one"));
        assert!(matches!(
            s.add(req(r#"{"matchers":{},"for":"1m"}"#), "a".into(), 1, |_| {
                false
            }),
            Err(SilenceError::Busy)
        ));
        assert!(s.list(0).is_empty());
        assert!(
            serde_json::from_str::<SilenceRequest>(r#"{"matchers":{"x":"1"},"for":"1m"}"#).is_err()
        );
    }
}
