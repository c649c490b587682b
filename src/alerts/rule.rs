//! Alert rules: `[[alerts.rules]]` as written (a [`RuleConfig`]), checked and compiled
//! into a [`Rule`] with its globs and its condition.
//!
//! A rule matches series by three globs (room, device, metric: `*` any run, `?` one
//! character) and fires on one condition: `above`, `below`, `outside = [lo, hi]` (held
//! for `for`, resolved past the hysteresis bound `clear_below` / `clear_above`), or
//! `stale` (no reading for that long on the hub's clock). A bad rule is refused whole
//! with a message naming it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use telehub_protocol::ids::{valid_id, MAX_ID_LEN};

/// How loud an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    #[default]
    Warning,
    Critical,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// One `[[alerts.rules]]` entry as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// The rule's name, unique among the rules (`A-Za-z0-9_.-`, 1 to 64).
    pub id: String,
    /// Rooms it watches (glob; `*` by default).
    #[serde(default = "any")]
    pub room: String,
    /// Devices it watches (glob; `*` by default).
    #[serde(default = "any")]
    pub device: String,
    /// Metrics it watches (glob; `*` by default).
    #[serde(default = "any")]
    pub metric: String,
    /// Fires when a value is above this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub above: Option<f64>,
    /// Fires when a value is below this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub below: Option<f64>,
    /// Fires when a value is outside `[lo, hi]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outside: Option<[f64; 2]>,
    /// How long the condition must hold (by the readings' `ts`) before firing: `0` (at
    /// once, the default), `500ms`, `30s`, `2m`, `1h`, `1d`.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub hold: Option<String>,
    /// With `above`: resolves only below this (default: the threshold itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_below: Option<f64>,
    /// With `below`: resolves only above this (default: the threshold itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clear_above: Option<f64>,
    /// Fires when a matched series has had no reading for this long (hub clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale: Option<String>,
    /// `info`, `warning` (the default) or `critical`.
    #[serde(default)]
    pub severity: Severity,
}

fn any() -> String {
    "*".to_string()
}

/// What makes a rule fire, and what resolves it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Condition {
    /// Fires above `at`, resolves at or below `clear`.
    Above { at: f64, clear: f64 },
    /// Fires below `at`, resolves at or above `clear`.
    Below { at: f64, clear: f64 },
    /// Fires outside `[lo, hi]`, resolves back inside.
    Outside { lo: f64, hi: f64 },
    /// Fires after `ms` without a reading, resolves with the next one.
    Stale { ms: i64 },
}

impl Condition {
    /// Whether `v` breaks the rule.
    pub(crate) fn breached(&self, v: f64) -> bool {
        match *self {
            Condition::Above { at, .. } => v > at,
            Condition::Below { at, .. } => v < at,
            Condition::Outside { lo, hi } => v < lo || v > hi,
            Condition::Stale { .. } => false,
        }
    }

    /// Whether `v` resolves a firing alert (past the hysteresis bound).
    pub(crate) fn cleared(&self, v: f64) -> bool {
        match *self {
            Condition::Above { clear, .. } => v <= clear,
            Condition::Below { clear, .. } => v >= clear,
            Condition::Outside { lo, hi } => (lo..=hi).contains(&v),
            Condition::Stale { .. } => true,
        }
    }

    /// The threshold lines a chart of a matched series may draw.
    pub(crate) fn thresholds(&self) -> Vec<f64> {
        match *self {
            Condition::Above { at, .. } | Condition::Below { at, .. } => vec![at],
            Condition::Outside { lo, hi } => vec![lo, hi],
            Condition::Stale { .. } => Vec::new(),
        }
    }
}

/// A checked rule.
#[derive(Debug, Clone)]
pub(crate) struct Rule {
    pub id: Arc<str>,
    pub room: Glob,
    pub device: Glob,
    pub metric: Glob,
    pub condition: Condition,
    /// `for`, in milliseconds.
    pub hold_ms: i64,
    pub severity: Severity,
    /// As written, for `GET /api/alerts/rules`.
    pub config: RuleConfig,
}

impl Rule {
    /// Whether the rule watches (room, device, metric).
    pub(crate) fn matches(&self, room: &str, device: &str, metric: &str) -> bool {
        self.room.matches(room) && self.device.matches(device) && self.metric.matches(metric)
    }
}

/// A `*`/`?` pattern over ids and metric names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Glob(Box<str>);

impl Glob {
    /// A glob of id characters (`A-Za-z0-9_.-/`) and `*`, `?`: 1 to 64 of them.
    pub(crate) fn parse(s: &str) -> Result<Glob, String> {
        if s.is_empty() || s.len() > MAX_ID_LEN {
            return Err(format!("glob `{s}` must be 1 to {MAX_ID_LEN} characters"));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "_.-/*?".contains(*c)))
        {
            return Err(format!(
                "glob `{s}` has `{c}`: only A-Za-z0-9_.-/ and the wildcards * and ?"
            ));
        }
        Ok(Glob(s.into()))
    }

    /// Whether `text` matches: `*` any run (empty too), `?` exactly one character.
    pub(crate) fn matches(&self, text: &str) -> bool {
        let (p, t) = (self.0.as_bytes(), text.as_bytes());
        // The classic linear backtracking on the last star.
        let (mut pi, mut ti) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while ti < t.len() {
            match p.get(pi) {
                Some(b'*') => {
                    star = Some((pi, ti));
                    pi += 1;
                }
                Some(&c) if c == b'?' || c == t[ti] => {
                    pi += 1;
                    ti += 1;
                }
                _ => match star {
                    Some((sp, st)) => {
                        pi = sp + 1;
                        ti = st + 1;
                        star = Some((sp, st + 1));
                    }
                    None => return false,
                },
            }
        }
        p[pi..].iter().all(|&c| c == b'*')
    }
}

/// Parses `0`, `500ms`, `30s`, `2m`, `1h`, `1d` into milliseconds.
pub(crate) fn parse_duration(s: &str) -> Result<i64, String> {
    let bad = || format!("duration `{s}` must be a whole number with ms, s, m, h or d (or 0)");
    if s == "0" {
        return Ok(0);
    }
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (n, unit) = s.split_at(split);
    let n: i64 = n.parse().map_err(|_| bad())?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    n.checked_mul(scale)
        .filter(|ms| *ms <= 366 * 86_400_000)
        .ok_or_else(|| format!("duration `{s}` is longer than a year"))
}

impl RuleConfig {
    /// Checks the rule and compiles it; the error says what is wrong (the caller names
    /// the rule).
    pub(crate) fn compile(&self) -> Result<Rule, String> {
        if !valid_id(&self.id) {
            return Err("`id` must be 1 to 64 characters of A-Za-z0-9_.-".into());
        }
        let glob = |key: &str, s: &str| Glob::parse(s).map_err(|e| format!("`{key}`: {e}"));
        let (room, device, metric) = (
            glob("room", &self.room)?,
            glob("device", &self.device)?,
            glob("metric", &self.metric)?,
        );
        let finite = |key: &str, v: Option<f64>| match v {
            Some(x) if !x.is_finite() => Err(format!("`{key}` must be a finite number")),
            _ => Ok(v),
        };
        let above = finite("above", self.above)?;
        let below = finite("below", self.below)?;
        let clear_below = finite("clear_below", self.clear_below)?;
        let clear_above = finite("clear_above", self.clear_above)?;
        let kinds = [
            above.is_some(),
            below.is_some(),
            self.outside.is_some(),
            self.stale.is_some(),
        ];
        let condition = match kinds.iter().filter(|k| **k).count() {
            0 => return Err("needs one of `above`, `below`, `outside` or `stale`".into()),
            1 => match (above, below, self.outside, &self.stale) {
                (Some(at), ..) => {
                    let clear = clear_below.unwrap_or(at);
                    if clear > at {
                        return Err(format!(
                            "`clear_below` ({clear}) must not be above `above` ({at})"
                        ));
                    }
                    Condition::Above { at, clear }
                }
                (_, Some(at), ..) => {
                    let clear = clear_above.unwrap_or(at);
                    if clear < at {
                        return Err(format!(
                            "`clear_above` ({clear}) must not be below `below` ({at})"
                        ));
                    }
                    Condition::Below { at, clear }
                }
                (_, _, Some([lo, hi]), _) => {
                    if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                        return Err("`outside` must be [lo, hi] with lo < hi".into());
                    }
                    Condition::Outside { lo, hi }
                }
                (_, _, _, Some(stale)) => {
                    let ms = parse_duration(stale).map_err(|e| format!("`stale`: {e}"))?;
                    if ms == 0 {
                        return Err("`stale` must be longer than 0".into());
                    }
                    Condition::Stale { ms }
                }
                _ => unreachable_condition()?,
            },
            _ => return Err("takes only one of `above`, `below`, `outside` and `stale`".into()),
        };
        if clear_below.is_some() && !matches!(condition, Condition::Above { .. }) {
            return Err("`clear_below` goes with `above` only".into());
        }
        if clear_above.is_some() && !matches!(condition, Condition::Below { .. }) {
            return Err("`clear_above` goes with `below` only".into());
        }
        let hold_ms = match &self.hold {
            Some(s) => parse_duration(s).map_err(|e| format!("`for`: {e}"))?,
            None => 0,
        };
        if hold_ms > 0 && matches!(condition, Condition::Stale { .. }) {
            return Err("`for` does not go with `stale` (stale is a duration already)".into());
        }
        Ok(Rule {
            id: self.id.as_str().into(),
            room,
            device,
            metric,
            condition,
            hold_ms,
            severity: self.severity,
            config: self.clone(),
        })
    }
}

#[cold]
fn unreachable_condition() -> Result<Condition, String> {
    Err("needs one of `above`, `below`, `outside` or `stale`".into())
}

/// Compiles a whole rule set: every rule valid, ids unique. The error names the rule
/// (its index and id) and what is wrong with it.
pub(crate) fn compile_all(rules: &[RuleConfig]) -> Result<Vec<Rule>, (usize, String)> {
    let mut out: Vec<Rule> = Vec::with_capacity(rules.len());
    for (i, r) in rules.iter().enumerate() {
        let rule = r
            .compile()
            .map_err(|e| (i, format!("rule `{}`: {e}", r.id)))?;
        if out.iter().any(|o| o.id == rule.id) {
            return Err((
                i,
                format!("rule `{}`: a rule with this id comes earlier", r.id),
            ));
        }
        out.push(rule);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(toml_text: &str) -> Result<Rule, String> {
        let cfg: RuleConfig = toml::from_str(toml_text).map_err(|e| e.to_string())?;
        cfg.compile()
    }

    #[test]
    fn globs() {
        let g = |p: &str| Glob::parse(p).unwrap();
        assert!(g("*").matches("anything"));
        assert!(g("greenhouse-*").matches("greenhouse-1"));
        assert!(g("greenhouse-*").matches("greenhouse-"));
        assert!(!g("greenhouse-*").matches("greenhouse"));
        assert!(g("t?").matches("t1"));
        assert!(!g("t?").matches("t12"));
        assert!(g("*-*-x").matches("a-b-c-x"));
        assert!(!g("*-*-x").matches("a-x"));
        assert!(g("env/*").matches("env/temperature"));
        assert!(Glob::parse("a b").is_err());
        assert!(Glob::parse("").is_err());
        assert!(Glob::parse("[ab]").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Ok(0));
        assert_eq!(parse_duration("500ms"), Ok(500));
        assert_eq!(parse_duration("2m"), Ok(120_000));
        assert_eq!(parse_duration("1d"), Ok(86_400_000));
        assert!(parse_duration("2").is_err());
        assert!(parse_duration("m").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1000d").is_err());
    }

    #[test]
    fn conditions_and_hysteresis() {
        let r = rule(
            "id='hot'\nroom='g-*'\nmetric='temperature'\nabove=35.0\nclear_below=33.0\nfor='2m'",
        )
        .unwrap();
        assert_eq!(r.hold_ms, 120_000);
        assert!(r.condition.breached(35.5) && !r.condition.breached(35.0));
        assert!(!r.condition.cleared(34.0) && r.condition.cleared(33.0));
        assert!(r.matches("g-1", "t1", "temperature") && !r.matches("h", "t1", "temperature"));
        let o = rule("id='o'\noutside=[1.0, 2.0]").unwrap();
        assert!(
            o.condition.breached(0.5) && o.condition.breached(2.5) && !o.condition.breached(1.5)
        );
        let s = rule("id='silent'\nstale='5m'").unwrap();
        assert_eq!(s.condition, Condition::Stale { ms: 300_000 });
    }

    #[test]
    fn bad_rules_say_what_is_wrong() {
        let err = |t: &str| rule(t).unwrap_err();
        assert!(err("id='x'").contains("needs one of"));
        assert!(err("id='x'\nabove=1.0\nbelow=0.0").contains("only one"));
        assert!(err("id='x'\nabove=1.0\nroom='a b'").contains("`room`"));
        assert!(err("id='x'\nabove=1.0\nclear_below=2.0").contains("clear_below"));
        assert!(err("id='x'\nbelow=1.0\nclear_below=0.0").contains("goes with `above`"));
        assert!(err("id='x'\noutside=[2.0, 1.0]").contains("lo < hi"));
        assert!(err("id='x'\nstale='0'").contains("longer than 0"));
        assert!(err("id='x'\nabove=1.0\nfor='soon'").contains("`for`"));
        assert!(err("id='x'\nabove=1.0\nthreshold=2").contains("unknown field"));
        let dup: Vec<RuleConfig> = ["id='a'\nabove=1.0", "id='a'\nbelow=1.0"]
            .iter()
            .map(|t| toml::from_str(t).unwrap())
            .collect();
        let (i, msg) = compile_all(&dup).unwrap_err();
        assert_eq!(i, 1);
        assert!(msg.contains("rule `a`"), "{msg}");
    }
}
