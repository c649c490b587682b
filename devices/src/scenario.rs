//! Scenarios: which rooms exist, and how many devices of which kind send how often.
//!
//! A scenario is read from a TOML file (see `devices/README.md` for every key), built for a
//! quick start from a few numbers ([`Scenario::quick`]), or taken from the built-in demo
//! ([`demo_scenario`]). Loading checks everything a hub would later refuse (identifiers,
//! rates, duplicate ids) and names the bad key and its line.

use std::collections::HashSet;
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::kinds::{Kind, Params};

/// The seed when a scenario gives none.
pub const DEFAULT_SEED: u64 = 1;
/// Fastest sampling rate a device group may ask for, in Hz. Each reading is one message
/// to the hub, whose default rate limit per connection is 200 messages/s.
pub const MAX_RATE_HZ: f64 = 50.0;
/// Slowest: one sample a day.
pub const MIN_RATE_HZ: f64 = 1.0 / 86_400.0;
/// Most devices in one group, to catch a typo like `count = 100000`.
pub const MAX_GROUP_COUNT: u32 = 10_000;

/// The built-in scenario behind `telehub serve --demo`: a home with a few rooms.
const DEMO_TOML: &str = include_str!("../home.toml");

/// Why a scenario could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {path}: {error}")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        error: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key, or a value of the wrong type.
    /// toml's message names the key and shows the line.
    #[error("{origin}: {error}")]
    Parse {
        /// The file name, or another name the caller gave the text.
        origin: String,
        /// The parser's error, with line, column and the offending key.
        error: toml::de::Error,
    },
    /// The file parses but a value breaks a rule.
    #[error("{origin}:{line}: `{key}`: {message}")]
    Invalid {
        /// The file name.
        origin: String,
        /// 1-based line of the bad value.
        line: usize,
        /// The key, as a path (`rooms[1].devices[0].rate`).
        key: String,
        /// What is wrong.
        message: String,
    },
    /// A command-line override or quick-start number is out of range.
    #[error("{0}")]
    Override(String),
}

/// A scenario, validated: rooms with groups of devices.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// A name for logs and the summary.
    pub name: String,
    /// The seed every device's random stream derives from.
    pub seed: u64,
    /// Readings each device buffers while disconnected, if the file sets it (the run
    /// options decide otherwise).
    pub buffer: Option<usize>,
    /// The rooms, each with at least one device group.
    pub rooms: Vec<Room>,
}

/// One room of a scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Room {
    /// The room id on the hub.
    pub name: String,
    /// Device groups in the room.
    pub groups: Vec<DeviceGroup>,
}

/// `count` devices of one kind, sending at one rate.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceGroup {
    /// The device kind.
    pub kind: Kind,
    /// How many devices.
    pub count: u32,
    /// Samples per second per device.
    pub rate_hz: f64,
    /// Device ids are `{prefix}-{n}`, numbered from 1 within the room.
    pub prefix: String,
    /// Kind-specific parameters.
    pub params: Params,
    /// Faults injected on purpose (`faults = [...]`), the same for every device.
    pub faults: Vec<crate::fault::Fault>,
}

/// One device to simulate, expanded from a group.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceSpec {
    /// Room id.
    pub room: String,
    /// Device (client) id, unique in its room.
    pub id: String,
    /// Kind.
    pub kind: Kind,
    /// Samples per second.
    pub rate_hz: f64,
    /// Kind-specific parameters.
    pub params: Params,
    /// Position in the scenario; with the seed it picks the device's random stream.
    pub index: u64,
    /// Faults injected on purpose, from the group.
    pub faults: Vec<crate::fault::Fault>,
}

impl Scenario {
    /// Read and validate a scenario file.
    pub fn load(path: impl AsRef<Path>) -> Result<Scenario, ScenarioError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|error| ScenarioError::Read {
            path: path.display().to_string(),
            error,
        })?;
        Scenario::from_toml(&text, &path.display().to_string())
    }

    /// Parse and validate scenario TOML; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        let file: ScenarioFile = toml::from_str(text).map_err(|error| ScenarioError::Parse {
            origin: origin.to_string(),
            error,
        })?;
        Validator { text, origin }.scenario(file)
    }

    /// A scenario without a file: `rooms` rooms (`room-1`...) of `devices` devices each,
    /// all of `kind`, or cycling through every kind when `kind` is `None`; `rate` Hz each,
    /// or each kind's default rate.
    pub fn quick(
        rooms: u32,
        devices: u32,
        rate: Option<f64>,
        kind: Option<Kind>,
    ) -> Result<Scenario, ScenarioError> {
        if rooms == 0 || devices == 0 {
            return Err(ScenarioError::Override(
                "--rooms and --devices must be at least 1".into(),
            ));
        }
        check_rate(rate)?;
        check_count(devices)?;
        let kinds: Vec<Kind> = match kind {
            Some(k) => vec![k],
            None => Kind::ALL.to_vec(),
        };
        let groups: Vec<DeviceGroup> = kinds
            .iter()
            .enumerate()
            .map(|(k, &kind)| DeviceGroup {
                kind,
                // Device i gets kind i % kinds.len().
                count: (devices as usize + kinds.len() - 1 - k) as u32 / kinds.len() as u32,
                rate_hz: rate.unwrap_or(kind.default_rate_hz()),
                prefix: kind.name().replace('_', "-"),
                params: Params::default(),
                faults: Vec::new(),
            })
            .filter(|g| g.count > 0)
            .collect();
        Ok(Scenario {
            name: "quick".into(),
            seed: DEFAULT_SEED,
            buffer: None,
            rooms: (1..=rooms)
                .map(|r| Room {
                    name: format!("room-{r}"),
                    groups: groups.clone(),
                })
                .collect(),
        })
    }

    /// Set every group's device count (command-line `--devices` with a file).
    pub fn set_count(&mut self, count: u32) -> Result<(), ScenarioError> {
        check_count(count)?;
        for g in self.rooms.iter_mut().flat_map(|r| r.groups.iter_mut()) {
            g.count = count;
        }
        Ok(())
    }

    /// Set every group's rate in Hz (command-line `--rate`).
    pub fn set_rate(&mut self, rate_hz: f64) -> Result<(), ScenarioError> {
        check_rate(Some(rate_hz))?;
        for g in self.rooms.iter_mut().flat_map(|r| r.groups.iter_mut()) {
            g.rate_hz = rate_hz;
        }
        Ok(())
    }

    /// Every device, in scenario order, with its id.
    pub fn devices(&self) -> Vec<DeviceSpec> {
        let mut out = Vec::new();
        for room in &self.rooms {
            let mut next_number = std::collections::HashMap::<&str, u32>::new();
            for g in &room.groups {
                for _ in 0..g.count {
                    let n = next_number.entry(g.prefix.as_str()).or_insert(0);
                    *n += 1;
                    out.push(DeviceSpec {
                        room: room.name.clone(),
                        id: format!("{}-{}", g.prefix, n),
                        kind: g.kind,
                        rate_hz: g.rate_hz,
                        params: g.params,
                        index: out.len() as u64,
                        faults: g.faults.clone(),
                    });
                }
            }
        }
        out
    }

    /// Readings per second the whole scenario produces, roughly (door sensors report only
    /// changes and heartbeats, so they count as one sample a minute).
    pub fn readings_per_sec(&self) -> f64 {
        self.rooms
            .iter()
            .flat_map(|r| &r.groups)
            .map(|g| {
                let per_sample = g.kind.metrics().len() as f64;
                let rate = if g.kind == Kind::Door {
                    g.rate_hz.min(1.0 / 60.0)
                } else {
                    g.rate_hz
                };
                g.count as f64 * rate * per_sample
            })
            .sum()
    }
}

/// The built-in scenario that `telehub serve --demo` runs in-process: `devices/home.toml`.
pub fn demo_scenario() -> Scenario {
    // The file is compiled in and covered by a test, so failing here is a build defect.
    Scenario::from_toml(DEMO_TOML, "<demo: devices/home.toml>")
        .expect("the bundled demo scenario devices/home.toml is valid")
}

fn check_rate(rate: Option<f64>) -> Result<(), ScenarioError> {
    match rate {
        Some(r) if !(MIN_RATE_HZ..=MAX_RATE_HZ).contains(&r) => Err(ScenarioError::Override(
            format!("rate {r} Hz is outside {MIN_RATE_HZ:.6}..={MAX_RATE_HZ} Hz"),
        )),
        _ => Ok(()),
    }
}

fn check_count(count: u32) -> Result<(), ScenarioError> {
    if count > MAX_GROUP_COUNT {
        return Err(ScenarioError::Override(format!(
            "{count} devices in a group is more than {MAX_GROUP_COUNT}"
        )));
    }
    Ok(())
}

/// Whether `s` is a valid room or client id on the hub: 1 to 64 of `A-Za-z0-9_.-`.
pub fn is_valid_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

// ---- the file format -------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: Option<String>,
    #[allow(dead_code)] // documentation for people reading the file
    description: Option<String>,
    seed: Option<u64>,
    buffer: Option<Spanned<usize>>,
    rooms: Vec<Spanned<RoomFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoomFile {
    name: Spanned<String>,
    devices: Vec<Spanned<GroupFile>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupFile {
    kind: Kind,
    count: Option<Spanned<u32>>,
    rate: Option<Spanned<f64>>,
    prefix: Option<Spanned<String>>,
    setpoint: Option<Spanned<f64>>,
    capacity: Option<Spanned<u32>>,
    base_w: Option<Spanned<f64>>,
    center: Option<Spanned<[f64; 2]>>,
    faults: Option<Vec<Spanned<FaultFile>>>,
}

/// `faults = [{ kind = "drift", at = "30s", for = "1m", metric = "temperature", by = 15.0 }]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultFile {
    kind: String,
    at: String,
    #[serde(rename = "for")]
    duration: Option<String>,
    metric: Option<String>,
    by: Option<f64>,
    ramp: Option<String>,
}

struct Validator<'a> {
    text: &'a str,
    origin: &'a str,
}

impl Validator<'_> {
    fn err(&self, span: Range<usize>, key: String, message: impl Into<String>) -> ScenarioError {
        let line = self.text[..span.start.min(self.text.len())]
            .bytes()
            .filter(|&b| b == b'\n')
            .count()
            + 1;
        ScenarioError::Invalid {
            origin: self.origin.to_string(),
            line,
            key,
            message: message.into(),
        }
    }

    fn scenario(&self, file: ScenarioFile) -> Result<Scenario, ScenarioError> {
        if let Some(b) = &file.buffer {
            if *b.get_ref() == 0 {
                return Err(self.err(b.span(), "buffer".into(), "must be at least 1"));
            }
        }
        if file.rooms.is_empty() {
            return Err(self.err(0..0, "rooms".into(), "a scenario needs at least one room"));
        }
        let mut room_names = HashSet::new();
        let mut rooms = Vec::new();
        for (r, room) in file.rooms.into_iter().enumerate() {
            let room_span = room.span();
            let room = room.into_inner();
            let name = room.name.get_ref();
            if !is_valid_id(name) {
                return Err(self.err(
                    room.name.span(),
                    format!("rooms[{r}].name"),
                    format!("{name:?} is not a room id: 1 to 64 of A-Za-z0-9_.-"),
                ));
            }
            if !room_names.insert(name.clone()) {
                return Err(self.err(
                    room.name.span(),
                    format!("rooms[{r}].name"),
                    format!("room {name:?} appears twice"),
                ));
            }
            if room.devices.is_empty() {
                return Err(self.err(
                    room_span,
                    format!("rooms[{r}].devices"),
                    "a room needs at least one device group",
                ));
            }
            let mut groups = Vec::new();
            for (g, group) in room.devices.into_iter().enumerate() {
                groups.push(self.group(r, g, group.into_inner())?);
            }
            rooms.push(Room {
                name: room.name.into_inner(),
                groups,
            });
        }
        Ok(Scenario {
            name: file.name.unwrap_or_else(|| "scenario".into()),
            seed: file.seed.unwrap_or(DEFAULT_SEED),
            buffer: file.buffer.map(Spanned::into_inner),
            rooms,
        })
    }

    fn group(&self, r: usize, g: usize, f: GroupFile) -> Result<DeviceGroup, ScenarioError> {
        let key = |k: &str| format!("rooms[{r}].devices[{g}].{k}");
        let count = match &f.count {
            Some(c) if *c.get_ref() > MAX_GROUP_COUNT => {
                return Err(self.err(
                    c.span(),
                    key("count"),
                    format!("at most {MAX_GROUP_COUNT} devices in a group"),
                ))
            }
            Some(c) => *c.get_ref(),
            None => 1,
        };
        let rate_hz = match &f.rate {
            Some(rate) if !(MIN_RATE_HZ..=MAX_RATE_HZ).contains(rate.get_ref()) => {
                return Err(self.err(
                    rate.span(),
                    key("rate"),
                    format!(
                        "{} Hz is outside {MIN_RATE_HZ:.6}..={MAX_RATE_HZ} Hz",
                        rate.get_ref()
                    ),
                ))
            }
            Some(rate) => *rate.get_ref(),
            None => f.kind.default_rate_hz(),
        };
        let prefix = match &f.prefix {
            // The id gets "-N" appended; keep room for it within 64 characters.
            Some(p) if !is_valid_id(p.get_ref()) || p.get_ref().len() > 58 => {
                return Err(self.err(
                    p.span(),
                    key("prefix"),
                    "1 to 58 of A-Za-z0-9_.- (the device number is appended)",
                ))
            }
            Some(p) => p.get_ref().clone(),
            None => f.kind.name().replace('_', "-"),
        };
        let only = |present: Option<Range<usize>>, name: &str, kind: Kind| match present {
            Some(span) if f.kind != kind => Err(self.err(
                span,
                key(name),
                format!("applies only to {kind} devices, not {}", f.kind),
            )),
            _ => Ok(()),
        };
        only(
            f.setpoint.as_ref().map(|s| s.span()),
            "setpoint",
            Kind::Climate,
        )?;
        only(
            f.capacity.as_ref().map(|s| s.span()),
            "capacity",
            Kind::AirQuality,
        )?;
        only(f.base_w.as_ref().map(|s| s.span()), "base_w", Kind::Power)?;
        only(f.center.as_ref().map(|s| s.span()), "center", Kind::Gps)?;
        let in_range = |v: &Option<Spanned<f64>>, name: &str, lo: f64, hi: f64| match v {
            Some(s) if !(lo..=hi).contains(s.get_ref()) => Err(self.err(
                s.span(),
                key(name),
                format!("{} is outside {lo}..={hi}", s.get_ref()),
            )),
            _ => Ok(v.as_ref().map(|s| *s.get_ref())),
        };
        let setpoint = in_range(
            &f.setpoint,
            "setpoint",
            crate::kinds::CLIMATE_SETPOINT_MIN,
            crate::kinds::CLIMATE_SETPOINT_MAX,
        )?;
        let base_w = in_range(&f.base_w, "base_w", 0.0, 10_000.0)?;
        let capacity = match &f.capacity {
            Some(c) if !(1..=1_000).contains(c.get_ref()) => {
                return Err(self.err(c.span(), key("capacity"), "must be 1..=1000 people"))
            }
            c => c.as_ref().map(|c| *c.get_ref()),
        };
        let center = match &f.center {
            Some(c) => {
                let [lat, lon] = *c.get_ref();
                if !(-85.0..=85.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
                    return Err(self.err(
                        c.span(),
                        key("center"),
                        "[lat, lon] with lat in -85..=85 and lon in -180..=180",
                    ));
                }
                Some((lat, lon))
            }
            None => None,
        };
        let mut faults = Vec::new();
        for (i, ff) in f.faults.into_iter().flatten().enumerate() {
            faults.push(self.fault(&key(&format!("faults[{i}]")), f.kind, ff)?);
        }
        Ok(DeviceGroup {
            kind: f.kind,
            count,
            rate_hz,
            prefix,
            faults,
            params: Params {
                setpoint,
                capacity,
                base_w,
                center,
            },
        })
    }
}

impl Validator<'_> {
    fn fault(
        &self,
        key: &str,
        kind: Kind,
        ff: Spanned<FaultFile>,
    ) -> Result<crate::fault::Fault, ScenarioError> {
        use crate::fault::{parse_duration, Fault, FaultKind};
        let span = ff.span();
        let f = ff.into_inner();
        let bad = |k: &str, m: String| self.err(span.clone(), format!("{key}.{k}"), m);
        let duration = |k: &str, v: &str| {
            parse_duration(v).ok_or_else(|| {
                bad(
                    k,
                    format!("{v:?} is not a duration: a whole number with ms, s, m or h"),
                )
            })
        };
        let at_ms = duration("at", &f.at)?;
        let for_ms = match &f.duration {
            Some(d) => match duration("for", d)? {
                0 => return Err(bad("for", "must be more than 0".into())),
                ms => Some(ms),
            },
            None => None,
        };
        if let Some(m) = &f.metric {
            if !kind.metrics().iter().any(|spec| spec.name == m) {
                return Err(bad(
                    "metric",
                    format!("{kind} devices have no metric {m:?}"),
                ));
            }
        }
        let fault_kind = match f.kind.as_str() {
            "drift" => {
                let by = f
                    .by
                    .filter(|b| b.is_finite())
                    .ok_or_else(|| bad("by", "a drift needs `by`, the offset to reach".into()))?;
                let ramp_ms = match &f.ramp {
                    Some(r) => duration("ramp", r)?,
                    None => 0,
                };
                FaultKind::Drift { by, ramp_ms }
            }
            "stuck" | "silent" => {
                if f.by.is_some() || f.ramp.is_some() {
                    return Err(bad("by", "`by` and `ramp` are for drift only".into()));
                }
                if f.kind == "silent" && f.metric.is_some() {
                    return Err(bad(
                        "metric",
                        "a silent device sends no metric at all".into(),
                    ));
                }
                if f.kind == "silent" {
                    FaultKind::Silent
                } else {
                    FaultKind::Stuck
                }
            }
            other => {
                return Err(bad(
                    "kind",
                    format!("{other:?} is not a fault: drift, stuck or silent"),
                ))
            }
        };
        Ok(Fault {
            kind: fault_kind,
            at_ms,
            for_ms,
            metric: f.metric,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_are_read_and_bad_ones_refused() {
        let base = "[[rooms]]\nname = \"r\"\n[[rooms.devices]]\nkind = \"climate\"\n";
        let s = Scenario::from_toml(
            &format!("{base}faults = [{{ kind = \"drift\", at = \"2s\", for = \"5s\", metric = \"temperature\", by = 20.0, ramp = \"1s\" }}, {{ kind = \"silent\", at = \"10s\" }}]\n"),
            "t",
        )
        .expect("valid");
        let f = &s.devices()[0].faults;
        assert_eq!(f.len(), 2);
        assert_eq!(
            f[0].kind,
            crate::fault::FaultKind::Drift {
                by: 20.0,
                ramp_ms: 1_000
            }
        );
        assert_eq!((f[1].at_ms, f[1].for_ms), (10_000, None));
        for (fault, says) in [
            ("{ kind = \"wobble\", at = \"1s\" }", "not a fault"),
            ("{ kind = \"drift\", at = \"1s\" }", "needs `by`"),
            ("{ kind = \"stuck\", at = \"1x\" }", "not a duration"),
            (
                "{ kind = \"stuck\", at = \"1s\", metric = \"rpm\" }",
                "no metric",
            ),
            (
                "{ kind = \"silent\", at = \"1s\", metric = \"humidity\" }",
                "no metric at all",
            ),
        ] {
            let err = Scenario::from_toml(&format!("{base}faults = [{fault}]\n"), "t")
                .expect_err(fault)
                .to_string();
            assert!(
                err.contains(says) && err.contains("faults[0]"),
                "{fault}: {err}"
            );
        }
    }

    #[test]
    fn quick_cycles_kinds() {
        let s = Scenario::quick(2, 7, Some(2.0), None).expect("valid");
        let d = s.devices();
        assert_eq!(d.len(), 14);
        assert_eq!(d.iter().filter(|d| d.kind == Kind::Climate).count(), 4);
        assert!(d.iter().all(|d| d.rate_hz == 2.0));
        let ids: HashSet<_> = d.iter().map(|d| (&d.room, &d.id)).collect();
        assert_eq!(ids.len(), 14, "ids unique per room");
    }

    #[test]
    fn quick_refuses_zero_and_bad_rate() {
        assert!(Scenario::quick(0, 1, None, None).is_err());
        assert!(Scenario::quick(1, 1, Some(0.0), None).is_err());
        assert!(Scenario::quick(1, 1, Some(1e6), None).is_err());
    }

    #[test]
    fn demo_scenario_is_valid() {
        let s = demo_scenario();
        assert!(!s.devices().is_empty());
    }
}
