//! Alerts on live telemetry: rules (`[[alerts.rules]]`), their evaluation on every
//! accepted reading, and what each transition becomes (an `alert` frame to the room's
//! dashboards, `/metrics`, `GET /api/alerts`).
//!
//! A sink at the end of the fan-out, fed by the room where it stamps a reading:
//!
//! - [`rule`]: the rules as written, checked and compiled (globs, conditions, `for`).
//! - [`eval`]: one room's instances, stepped by each reading and by the clock (`stale`).
//! - [`store`]: live instances and transitions in SQLite, written off the hot path.
//! - [`silence`]: matchers and an end time under which transitions are not notified.
//! - [`notify`]: the notification sinks (`[[alerts.sinks]]`), each behind a bounded
//!   queue, and [`webhook`], the webhook sink's signed HTTP `POST`.
//!
//! The rule set is swapped atomically ([`ArcSwap`]), so a reading never waits for a rule
//! change; each room's instances sit behind a std mutex of their own, taken inside the
//! room's lock (never the other way round) and never across an `.await`.

pub(crate) mod eval;
pub(crate) mod notify;
pub(crate) mod rule;
pub(crate) mod silence;
pub(crate) mod store;
pub(crate) mod webhook;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use arc_swap::ArcSwap;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};

use self::eval::{Listed, RoomAlerts, RuleSet, State, Transition};
pub(crate) use self::notify::SinkConfig;
use self::notify::{Notifier, SinkMetrics};
pub use self::rule::{RuleConfig, Severity};
use self::silence::{Silence, SilenceError, SilenceRequest, Silences};
use self::store::{AlertStore, AlertStoreError};
use crate::net::ws::frames::{self, Frame};

/// `[alerts]`: the rules in force at start-up and where notifications go.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// `[[alerts.rules]]`, in order; ids are unique.
    pub rules: Vec<RuleConfig>,
    /// `[[alerts.sinks]]`: webhook, mqtt and log notification sinks, none by default.
    pub sinks: Vec<SinkConfig>,
}

impl AlertsConfig {
    /// Checks every rule; the error names the rule's key and id.
    pub(crate) fn validate(&self) -> Result<(), (String, String)> {
        rule::compile_all(&self.rules)
            .map(|_| ())
            .map_err(|(i, message)| (format!("alerts.rules[{i}]"), message))
    }
}

/// `telehub_alerts_firing{rule,severity}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub(crate) struct FiringLabels {
    rule: String,
    severity: &'static str,
}

/// The alerts engine: a cheap, cloneable handle.
#[derive(Clone)]
pub(crate) struct Alerts {
    inner: Arc<Inner>,
}

struct Inner {
    rules: ArcSwap<RuleSet>,
    /// Every room's instances, kept here rather than in the room so they outlive a room
    /// the sweeper frees (a silent device's `stale` alert must not vanish with it).
    rooms: Mutex<HashMap<Arc<str>, Arc<Mutex<RoomAlerts>>>>,
    firing: Family<FiringLabels, Gauge>,
    /// Transitions the store's queue had no room for.
    store_dropped: Counter,
    /// The notification sinks, installed once they are started (none until then).
    notifier: OnceLock<Notifier>,
    sink_metrics: SinkMetrics,
    silences: Silences,
    /// Transitions a silence kept from the sinks.
    silenced: Counter,
    /// `None` with `history.persist = false`: alert state lives in memory only.
    store: Option<Arc<AlertStore>>,
    /// The outbox's rows from before the restart, until the sinks start.
    unsent: Mutex<Vec<store::Unsent>>,
    /// The rules of `config.toml` (read-only over REST).
    config_rules: Vec<RuleConfig>,
    /// The rules made over REST, in order; its lock also serialises rule changes.
    runtime: Mutex<Vec<RuleConfig>>,
}

/// A change to the rules over REST.
pub(crate) enum RuleChange {
    Create(RuleConfig),
    Replace(String, RuleConfig),
    Delete(String),
}

/// Why a rule change was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RuleError {
    /// The rule is invalid (400); the message names it.
    #[error("{0}")]
    Invalid(String),
    /// A rule with this id exists already (409).
    #[error("a rule `{0}` exists already")]
    Exists(String),
    /// No run-time rule has this id (404).
    #[error("no rule `{0}`")]
    Unknown(String),
    /// The rule is defined in config.toml, which REST does not change (409).
    #[error("rule `{0}` is defined in the config file; change it there")]
    FromConfig(String),
    /// The store's queue is full: the change is not made rather than lost (503).
    #[error("the alert store is busy; try again")]
    Busy,
}

/// Locks a std mutex whose data stays consistent at every step (poison is harmless).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Alerts {
    /// An engine with `config`'s rules (already validated by the config), keeping its
    /// state in the SQLite file `db` if given: the live instances stored there are back
    /// at once, firing ones counted as firing, and no transition is made for them.
    pub(crate) fn open(
        config: &AlertsConfig,
        db: Option<&Path>,
    ) -> Result<Alerts, AlertStoreError> {
        let store_dropped = Counter::default();
        let (store, live, stored_rules, stored_silences, unsent) = match db {
            Some(path) => {
                let (store, loaded) = AlertStore::open(path, store_dropped.clone())?;
                let l = loaded;
                (Some(Arc::new(store)), l.live, l.rules, l.silences, l.unsent)
            }
            None => (None, Vec::new(), Vec::new(), Vec::new(), Vec::new()),
        };
        // Rules made over REST come back after the config's; one the config now defines
        // too, or that no longer passes the checks, is left out (and said so).
        let mut runtime: Vec<RuleConfig> = Vec::new();
        for json in stored_rules {
            let Ok(r) = serde_json::from_str::<RuleConfig>(&json) else {
                tracing::warn!(%json, "a stored alert rule cannot be read; ignored");
                continue;
            };
            let clash = config.rules.iter().chain(&runtime).any(|c| c.id == r.id);
            if clash || r.compile().is_err() {
                tracing::warn!(rule = %r.id, "a stored alert rule clashes with the config or is invalid; ignored");
                continue;
            }
            runtime.push(r);
        }
        let all: Vec<RuleConfig> = config.rules.iter().chain(&runtime).cloned().collect();
        let rules = rule::compile_all(&all).unwrap_or_default();
        let alerts = Alerts {
            inner: Arc::new(Inner {
                rules: ArcSwap::from_pointee(RuleSet {
                    generation: 1,
                    rules: rules.into_iter().map(Arc::new).collect(),
                }),
                rooms: Mutex::new(HashMap::new()),
                firing: Family::default(),
                store_dropped,
                notifier: OnceLock::new(),
                sink_metrics: SinkMetrics::default(),
                silences: Silences::load(stored_silences, crate::clock::now_ms()),
                silenced: Counter::default(),
                store,
                unsent: Mutex::new(unsent),
                config_rules: config.rules.clone(),
                runtime: Mutex::new(runtime),
            }),
        };
        for s in live {
            if s.instance.state == State::Firing {
                alerts.gauge(&s.rule, s.instance.severity).inc();
            }
            let room = alerts.room(&s.room);
            lock(&room).restore(s.rule, &s.device, &s.metric, s.instance);
        }
        Ok(alerts)
    }

    /// Registers the engine's metrics.
    pub(crate) fn register(&self, metrics: &mut crate::metrics::Metrics) {
        metrics.register(
            "telehub_alerts_firing",
            "Alert instances firing, by rule and severity",
            self.inner.firing.clone(),
        );
        metrics.register(
            "telehub_alerts_store_dropped",
            "Alert transitions not written to the database because its queue was full",
            self.inner.store_dropped.clone(),
        );
        self.inner.sink_metrics.register(metrics);
        metrics.register(
            "telehub_alerts_silenced",
            "Alert transitions a silence kept from the notification sinks",
            self.inner.silenced.clone(),
        );
    }

    /// Starts the notification sinks (once, at start-up; `links`: the bridges by name).
    pub(crate) fn start_sinks(
        &self,
        specs: Vec<notify::SinkSpec>,
        links: &HashMap<String, crate::sources::mqtt::link::BridgeLink>,
        shutdown: &crate::shutdown::Shutdown,
        completion: &crate::shutdown::Completion,
    ) {
        let unsent = std::mem::take(&mut *lock(&self.inner.unsent));
        let n = Notifier::start(
            specs,
            links,
            &self.inner.sink_metrics,
            (shutdown, completion),
            self.inner.store.clone(),
            unsent,
        );
        let _ = self.inner.notifier.set(n);
    }

    /// Every sink's state (`GET /api/alerts/sinks`).
    pub(crate) fn sinks(&self) -> Vec<notify::SinkStatus> {
        self.inner
            .notifier
            .get()
            .map(Notifier::statuses)
            .unwrap_or_default()
    }

    fn gauge(&self, rule: &str, severity: Severity) -> Gauge {
        self.inner
            .firing
            .get_or_create(&FiringLabels {
                rule: rule.to_string(),
                severity: severity.as_str(),
            })
            .clone()
    }

    /// Writes what the store has queued and stops its writer (blocking).
    pub(crate) fn close(&self) {
        if let Some(s) = &self.inner.store {
            s.close();
        }
    }

    /// The rules in force now.
    pub(crate) fn rules(&self) -> arc_swap::Guard<Arc<RuleSet>> {
        self.inner.rules.load()
    }

    /// The instances of room `name` (created empty).
    pub(crate) fn room(&self, name: &Arc<str>) -> Arc<Mutex<RoomAlerts>> {
        lock(&self.inner.rooms)
            .entry(name.clone())
            .or_insert_with(|| Arc::new(Mutex::new(RoomAlerts::new(name.clone()))))
            .clone()
    }

    /// What a transition changes outside the room: the firing gauge and the store's
    /// queue. Never waits.
    pub(crate) fn record(&self, t: &Transition) {
        match (t.was, t.state) {
            (Some(State::Firing), State::Resolved) => {
                self.gauge(&t.rule, t.severity).dec();
            }
            (_, State::Firing) => {
                self.gauge(&t.rule, t.severity).inc();
            }
            _ => {}
        }
        let now = crate::clock::now_ms();
        if let Some(s) = &self.inner.store {
            s.transition(t, now);
        }
        if let Some(n) = self.inner.notifier.get() {
            if self.inner.silences.covering(t, now).is_some() {
                self.inner.silenced.inc();
            } else {
                n.notify(t);
            }
        }
    }

    /// Makes a silence for `by` (`POST /api/alerts/silences`), stored if the store is on.
    pub(crate) fn silence(&self, req: SilenceRequest, by: String) -> Result<Silence, SilenceError> {
        let store = self.inner.store.as_ref();
        self.inner
            .silences
            .add(req, by, crate::clock::now_ms(), |s| match store {
                Some(st) => st.silence(
                    &Arc::from(s.id.as_str()),
                    Some((serde_json::to_string(s).unwrap_or_default(), s.ends_at)),
                ),
                None => true,
            })
    }

    /// Ends silence `id` now.
    pub(crate) fn unsilence(&self, id: &str) -> Result<(), SilenceError> {
        let store = self.inner.store.as_ref();
        self.inner.silences.remove(id, |id| match store {
            Some(st) => st.silence(&Arc::from(id), None),
            None => true,
        })
    }

    /// The silences in force.
    pub(crate) fn silences(&self) -> Vec<Silence> {
        self.inner.silences.list(crate::clock::now_ms())
    }

    /// The clock's part (`stale`), over every room; the transitions are for the caller
    /// to deliver, after every lock here is released.
    pub(crate) fn tick(&self, now_ms: i64) -> Vec<Transition> {
        let rules = self.rules();
        let mut out = Vec::new();
        if rules.rules.is_empty() && lock(&self.inner.rooms).is_empty() {
            return out;
        }
        let rooms: Vec<Arc<Mutex<RoomAlerts>>> =
            lock(&self.inner.rooms).values().cloned().collect();
        for room in rooms {
            lock(&room).tick(&rules, now_ms, &mut out);
        }
        // A room nobody holds any more and with nothing left to watch is forgotten.
        lock(&self.inner.rooms).retain(|_, r| Arc::strong_count(r) > 1 || !lock(r).is_empty());
        out
    }

    /// Makes, replaces or deletes a run-time rule: checked with the whole set, stored,
    /// then in force for the next reading (instances of a deleted rule resolve at the
    /// next tick). Returns the rule as it now is (`None` once deleted).
    pub(crate) fn change_rules(&self, change: RuleChange) -> Result<Option<RuleConfig>, RuleError> {
        let mut runtime = lock(&self.inner.runtime);
        let from_config = |id: &str| self.inner.config_rules.iter().any(|r| r.id == id);
        let mut next = runtime.clone();
        let (id, result) = match change {
            RuleChange::Create(r) => {
                if from_config(&r.id) || next.iter().any(|n| n.id == r.id) {
                    return Err(RuleError::Exists(r.id));
                }
                next.push(r.clone());
                (r.id.clone(), Some(r))
            }
            RuleChange::Replace(id, r) => {
                if from_config(&id) {
                    return Err(RuleError::FromConfig(id));
                }
                if r.id != id {
                    return Err(RuleError::Invalid(format!(
                        "rule `{id}`: the body's `id` is `{}`",
                        r.id
                    )));
                }
                let slot = next
                    .iter_mut()
                    .find(|n| n.id == id)
                    .ok_or_else(|| RuleError::Unknown(id.clone()))?;
                *slot = r.clone();
                (id, Some(r))
            }
            RuleChange::Delete(id) => {
                if from_config(&id) {
                    return Err(RuleError::FromConfig(id));
                }
                let before = next.len();
                next.retain(|n| n.id != id);
                if next.len() == before {
                    return Err(RuleError::Unknown(id));
                }
                (id, None)
            }
        };
        let all: Vec<RuleConfig> = self
            .inner
            .config_rules
            .iter()
            .chain(&next)
            .cloned()
            .collect();
        let compiled = rule::compile_all(&all).map_err(|(_, m)| RuleError::Invalid(m))?;
        if let Some(store) = &self.inner.store {
            let json = result
                .as_ref()
                .map(|r| serde_json::to_string(r).unwrap_or_default());
            if !store.rule(&Arc::from(id.as_str()), json) {
                return Err(RuleError::Busy);
            }
        }
        let generation = self.inner.rules.load().generation + 1;
        self.inner.rules.store(Arc::new(RuleSet {
            generation,
            rules: compiled.into_iter().map(Arc::new).collect(),
        }));
        *runtime = next;
        Ok(result)
    }

    /// Recorded transitions (see [`AlertStore::history`]); `None` when nothing is stored
    /// (`history.persist = false`). Blocking.
    pub(crate) fn history(
        &self,
        range: (i64, i64),
        room: Option<&str>,
        limit: usize,
    ) -> Option<Result<Vec<store::Recorded>, String>> {
        let store = self.inner.store.as_ref()?;
        Some(store.history(range, room, limit).map_err(|e| e.to_string()))
    }

    /// Whether rule `id` was made over REST (false for the config's and unknown ones).
    pub(crate) fn is_runtime(&self, id: &str) -> bool {
        lock(&self.inner.runtime).iter().any(|r| r.id == id)
    }

    /// Acknowledges the live instance `instance` (`rule:room:device:metric`) for `by`
    /// at `at` (epoch ms); `None` if there is no such live instance.
    pub(crate) fn ack(&self, instance: &str, by: &str, at: i64) -> Option<Listed> {
        let mut parts = instance.splitn(4, ':');
        let (rule, room, device, metric) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let room_alerts = lock(&self.inner.rooms).get(room).cloned()?;
        let ack = eval::Ack {
            by: by.to_string(),
            at,
        };
        let listed = lock(&room_alerts).ack(rule, device, metric, ack.clone())?;
        if let Some(s) = &self.inner.store {
            s.ack(
                (&listed.rule, &listed.room, &listed.device, &listed.metric),
                ack,
            );
        }
        Some(listed)
    }

    /// Every pending and firing instance, filtered by room and state, sorted.
    pub(crate) fn list(&self, room: Option<&str>, state: Option<State>) -> Vec<Listed> {
        let rooms: Vec<Arc<Mutex<RoomAlerts>>> = lock(&self.inner.rooms)
            .iter()
            .filter(|(name, _)| room.is_none_or(|r| r == &***name))
            .map(|(_, r)| r.clone())
            .collect();
        let mut out = Vec::new();
        for r in rooms {
            lock(&r).list(&mut out);
        }
        out.retain(|l| state.is_none_or(|s| s == l.state));
        out.sort_by(|a, b| a.instance.cmp(&b.instance));
        let now = crate::clock::now_ms();
        for l in &mut out {
            l.silenced_by = self
                .inner
                .silences
                .covering_series((&l.rule, &l.room, &l.device, &l.metric), now);
        }
        out
    }
}

/// The `alert` frame of a transition.
pub(crate) fn frame(t: &Transition) -> Frame {
    frames::alert_frame(&t.alert())
}

/// The `alert` frame of a live instance (a joining dashboard's firing alerts).
pub(crate) fn listed_frame(l: &Listed) -> Frame {
    use std::borrow::Cow::Borrowed;
    frames::alert_frame(&telehub_protocol::outbound::Alert {
        rule: Borrowed(&l.rule),
        room: Borrowed(&l.room),
        device: Borrowed(&l.device),
        metric: Borrowed(&l.metric),
        state: Borrowed(l.state.as_str()),
        value: l.value,
        since: l.since,
        severity: Borrowed(l.severity),
        acked_by: l.ack.as_ref().map(|a| Borrowed(a.by.as_str())),
        acked_at: l.ack.as_ref().map(|a| a.at),
    })
}

#[cfg(test)]
mod tests {
    use super::notify::SinkKind;

    /// The commented `[[alerts.rules]]` example in config.toml, uncommented, is valid.
    #[test]
    fn the_config_toml_example_is_valid() {
        let text = include_str!("../../config.toml");
        let start = text.find("# [[alerts.rules]]").expect("the example");
        let end = start
            + text[start..]
                .find("\n#\n# Notification sinks")
                .expect("the sinks");
        let example: String = text[start..end]
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .map(|l| format!("{l}\n"))
            .collect();
        let settings = crate::Settings::from_sources(&example, "example", Vec::new())
            .unwrap_or_else(|e| panic!("{e}\n{example}"));
        let ids: Vec<&str> = settings
            .alerts
            .rules
            .iter()
            .map(|r| r.id.as_str())
            .collect();
        assert_eq!(ids, ["hot", "silent"]);
    }

    /// The commented `[[alerts.sinks]]` examples, uncommented (with the bridge the mqtt
    /// one names, and http for the webhook so no system roots are needed), are valid.
    #[test]
    fn the_config_toml_sink_examples_are_valid() {
        let text = include_str!("../../config.toml");
        let start = text.find("# [[alerts.sinks]]").expect("the example");
        let end = start + text[start..].find("\n[mqtt]").expect("the next section");
        let mut example: String = text[start..end]
            .lines()
            .filter_map(|l| l.strip_prefix("# ").or_else(|| (l == "#").then_some("")))
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .replace("https://", "http://");
        example.push_str("[[mqtt.bridges]]\nname = \"local\"\nurl = \"mqtt://127.0.0.1:1883\"\n");
        let settings = crate::Settings::from_sources(&example, "example", Vec::new())
            .unwrap_or_else(|e| panic!("{e}\n{example}"));
        let kinds: Vec<SinkKind> = settings.alerts.sinks.iter().map(|s| s.kind).collect();
        assert_eq!(kinds, [SinkKind::Webhook, SinkKind::Mqtt, SinkKind::Log]);
    }
}
