//! Homie 4 discovery: devices that describe themselves under `homie/<device>/...`, their
//! numeric and boolean properties turned into series.
//!
//! A bridge with `discovery = "homie"` subscribes to `homie/#`. A property
//! `homie/<device>/<node>/<property>` becomes the series device = `<device>`, metric =
//! `<node>/<property>`, unit = its `$unit`, in the bridge's `discovery_room` (`{node}` is
//! the device; `{area}` is `home`). Its value counts once its `$datatype` is known:
//! `integer` and `float` are numbers, `boolean` is 1 or 0; `string`, `enum`, `color`,
//! `datetime` and `duration` are skipped (and counted). A value that comes before its
//! `$datatype` (a broker sends retained messages in its own order, often a value before
//! its attributes) is held, one per property, and taken at the next [`Homie::flush`]
//! after the datatype comes (the bridge's tick, within a second), so that the `$unit`
//! of the same retained burst comes with it. `$name` of the device and of the property
//! are the series' label. At most `discovery_max_entities` properties are held.
//!
//! Removal follows the convention: a device is gone when its retained `$homie` is
//! cleared (an empty payload), a property when its `$datatype` is. Either drops the
//! properties and their labels; a removed device's stray values are ignored until it
//! announces `$homie` again. An empty value (a cleared retained value) is not a reading.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::discovery::{DiscoveryStatus, EntityProblem, MAX_PROBLEMS};
use crate::hub::labels::Label;
use telehub_protocol::ids::{valid_id, valid_metric};

/// The topics a Homie bridge subscribes to.
pub(crate) const HOMIE_FILTER: &str = "homie/#";

/// The longest payload held for a property whose `$datatype` has not come yet.
const MAX_PENDING_BYTES: usize = 64;

#[derive(Debug, Default)]
struct Property {
    datatype: Option<String>,
    unit: Option<String>,
    name: Option<String>,
    /// A value that came before the datatype.
    pending: Option<Vec<u8>>,
}

/// What a Homie message gives.
#[derive(Debug, PartialEq)]
pub(crate) enum Event {
    Reading {
        room: String,
        device: String,
        metric: String,
        unit: Option<String>,
        value: f64,
    },
    Label {
        room: String,
        device: String,
        metric: String,
        label: Label,
    },
    /// The property is gone: its series keeps its history but loses its label.
    Removed {
        room: String,
        device: String,
        metric: String,
    },
}

/// The Homie properties of one bridge.
#[derive(Debug)]
pub(crate) struct Homie {
    max: usize,
    room_template: String,
    props: HashMap<(String, String), Property>,
    device_names: HashMap<String, String>,
    problems: BTreeMap<String, String>,
    refused_over_limit: u64,
    /// Values skipped (a datatype that is not a number, a value that does not parse).
    pub(crate) unread: u64,
    /// Held values whose datatype has come: taken at the next [`Homie::flush`].
    ready: Vec<(String, String)>,
    /// Devices whose `$homie` was cleared, ignored until they announce again (at most
    /// `max` of them: past that a stray value of a removed device may add it back).
    removed: HashSet<String>,
}

impl Homie {
    pub(crate) fn new(max: usize, room_template: &str) -> Homie {
        Homie {
            max,
            room_template: room_template.to_string(),
            props: HashMap::new(),
            device_names: HashMap::new(),
            problems: BTreeMap::new(),
            refused_over_limit: 0,
            unread: 0,
            ready: Vec::new(),
            removed: HashSet::new(),
        }
    }

    fn room(&self, device: &str) -> String {
        self.room_template
            .replace("{area}", "home")
            .replace("{node}", device)
    }

    fn problem(&mut self, what: String, message: String) {
        self.unread += 1;
        if self.problems.len() >= MAX_PROBLEMS && !self.problems.contains_key(&what) {
            if let Some(first) = self.problems.keys().next().cloned() {
                self.problems.remove(&first);
            }
        }
        self.problems.insert(what, message);
    }

    fn label(&self, device: &str, metric: &str) -> Event {
        let p = self.props.get(&(device.to_string(), metric.to_string()));
        Event::Label {
            room: self.room(device),
            device: device.to_string(),
            metric: metric.to_string(),
            label: Label {
                name: p.and_then(|p| p.name.clone()),
                device_class: None,
                device_name: self.device_names.get(device).cloned(),
            },
        }
    }

    /// One message under `homie/`; `None` when the topic is not Homie's.
    pub(crate) fn message(&mut self, topic: &str, payload: &[u8]) -> Option<Vec<Event>> {
        let rest = topic.strip_prefix("homie/")?;
        let levels: Vec<&str> = rest.split('/').collect();
        let text = String::from_utf8_lossy(payload).trim().to_string();
        let mut out = Vec::new();
        match levels.as_slice() {
            [device, "$homie"] if text.is_empty() => {
                out.extend(self.remove_device(device));
            }
            [device, "$homie"] => {
                self.removed.remove(*device);
            }
            [device, ..] if self.removed.contains(*device) => {}
            [device, node, prop, "$datatype"] if text.is_empty() => {
                out.extend(self.remove(device, &format!("{node}/{prop}")));
            }
            [device, "$name"] if valid_id(device) => {
                self.device_names.insert(device.to_string(), text);
                let metrics: Vec<String> = self
                    .props
                    .keys()
                    .filter(|(d, _)| d == device)
                    .map(|(_, m)| m.clone())
                    .collect();
                for m in metrics {
                    out.push(self.label(device, &m));
                }
            }
            [device, node, prop, attr] if attr.starts_with('$') => {
                let metric = format!("{node}/{prop}");
                let Some(p) = self.property(device, &metric) else {
                    return Some(out);
                };
                match *attr {
                    "$datatype" => p.datatype = Some(text),
                    "$unit" => p.unit = Some(text).filter(|u| !u.is_empty()),
                    "$name" => p.name = Some(text),
                    _ => return Some(out),
                }
                let held = *attr == "$datatype" && p.pending.is_some();
                out.push(self.label(device, &metric));
                if held {
                    self.ready.push((device.to_string(), metric));
                }
            }
            // A cleared retained value (or attribute): nothing to read, nothing wrong.
            [_, node, _] if payload.is_empty() && !node.starts_with('$') => {}
            [device, node, prop] if !node.starts_with('$') && !prop.starts_with('$') => {
                let metric = format!("{node}/{prop}");
                let Some(p) = self.property(device, &metric) else {
                    return Some(out);
                };
                if p.datatype.is_none() {
                    if payload.len() <= MAX_PENDING_BYTES {
                        p.pending = Some(payload.to_vec());
                    }
                    return Some(out);
                }
                out.extend(self.value(device, &metric, payload));
            }
            _ => {}
        }
        Some(out)
    }

    /// Drops one property (its held value, its problem, its place in the count).
    fn remove(&mut self, device: &str, metric: &str) -> Option<Event> {
        let key = (device.to_string(), metric.to_string());
        self.props.remove(&key)?;
        self.problems.remove(&format!("{device}/{metric}"));
        self.ready.retain(|k| *k != key);
        Some(Event::Removed {
            room: self.room(device),
            device: device.to_string(),
            metric: metric.to_string(),
        })
    }

    /// Drops every property of `device`, and ignores it until it announces again.
    fn remove_device(&mut self, device: &str) -> Vec<Event> {
        let mut metrics: Vec<String> = self
            .props
            .keys()
            .filter(|(d, _)| d == device)
            .map(|(_, m)| m.clone())
            .collect();
        metrics.sort();
        self.device_names.remove(device);
        let prefix = format!("{device}/");
        self.problems.retain(|k, _| !k.starts_with(&prefix));
        if self.removed.len() < self.max {
            self.removed.insert(device.to_string());
        }
        metrics
            .iter()
            .filter_map(|m| self.remove(device, m))
            .collect()
    }

    /// The property, made if there is room for it; `None` (reported) if not.
    fn property(&mut self, device: &str, metric: &str) -> Option<&mut Property> {
        let key = (device.to_string(), metric.to_string());
        if !valid_id(device) || !valid_metric(metric) {
            self.problem(
                format!("{device}/{metric}"),
                "not a telehub device id or metric (Homie ids are a-z0-9-)".into(),
            );
            return None;
        }
        if !self.props.contains_key(&key) {
            if self.props.len() >= self.max {
                self.refused_over_limit += 1;
                self.problem(
                    format!("{device}/{metric}"),
                    format!(
                        "more than discovery_max_entities ({}) properties; not added",
                        self.max
                    ),
                );
                return None;
            }
            self.props.insert(key.clone(), Property::default());
        }
        self.props.get_mut(&key)
    }

    /// The held values whose datatype has come, as readings.
    pub(crate) fn flush(&mut self) -> Vec<Event> {
        let mut out = Vec::new();
        for (device, metric) in std::mem::take(&mut self.ready) {
            let held = self
                .props
                .get_mut(&(device.clone(), metric.clone()))
                .and_then(|p| p.pending.take());
            if let Some(v) = held {
                out.extend(self.value(&device, &metric, &v));
            }
        }
        out
    }

    fn value(&mut self, device: &str, metric: &str, payload: &[u8]) -> Option<Event> {
        let p = self.props.get(&(device.to_string(), metric.to_string()))?;
        let text = std::str::from_utf8(payload).unwrap_or("").trim();
        let value = match p.datatype.as_deref() {
            Some("integer" | "float") => text.parse::<f64>().ok().filter(|v| v.is_finite()),
            Some("boolean") => match text {
                "true" => Some(1.0),
                "false" => Some(0.0),
                _ => None,
            },
            other => {
                let why = format!(
                    "$datatype `{}` is not a number or boolean; skipped",
                    other.unwrap_or("")
                );
                self.problem(format!("{device}/{metric}"), why);
                return None;
            }
        };
        let unit = p.unit.clone();
        match value {
            Some(value) => {
                self.problems.remove(&format!("{device}/{metric}"));
                Some(Event::Reading {
                    room: self.room(device),
                    device: device.to_string(),
                    metric: metric.to_string(),
                    unit,
                    value,
                })
            }
            None => {
                self.problem(
                    format!("{device}/{metric}"),
                    format!("value `{text}` does not read as its $datatype"),
                );
                None
            }
        }
    }

    pub(crate) fn status(&self) -> DiscoveryStatus {
        DiscoveryStatus {
            entities: self.props.len(),
            refused_over_limit: self.refused_over_limit,
            bad_configs: 0,
            problems: self
                .problems
                .iter()
                .map(|(entity, message)| EntityProblem {
                    entity: entity.clone(),
                    message: message.clone(),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readings(events: Vec<Event>) -> Vec<(String, f64)> {
        events
            .into_iter()
            .filter_map(|e| match e {
                Event::Reading { metric, value, .. } => Some((metric, value)),
                Event::Label { .. } | Event::Removed { .. } => None,
            })
            .collect()
    }

    fn removed(events: Vec<Event>) -> Vec<String> {
        events
            .into_iter()
            .filter_map(|e| match e {
                Event::Removed { metric, .. } => Some(metric),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_cleared_homie_or_datatype_removes_and_stray_values_are_ignored_until_announced() {
        let mut h = Homie::new(10, "home");
        h.message("homie/dev1/$homie", b"4.0.0");
        h.message("homie/dev1/env/temp/$datatype", b"float");
        h.message("homie/dev1/env/hum/$datatype", b"integer");
        h.message("homie/dev2/env/temp/$datatype", b"float");
        assert_eq!(h.status().entities, 3);
        // A cleared $datatype removes one property; a cleared value is no problem.
        assert_eq!(
            removed(h.message("homie/dev1/env/hum/$datatype", b"").unwrap()),
            ["env/hum"]
        );
        assert!(h.message("homie/dev1/env/hum", b"").unwrap().is_empty());
        assert_eq!(h.unread, 0);
        // A cleared $homie removes the device; its stray values are ignored.
        h.message("homie/dev1/env/temp", b"not a number");
        assert_eq!(
            removed(h.message("homie/dev1/$homie", b"").unwrap()),
            ["env/temp"]
        );
        assert!(h.status().problems.is_empty(), "{:?}", h.status());
        assert!(h.message("homie/dev1/env/temp", b"21").unwrap().is_empty());
        assert!(h
            .message("homie/dev1/env/temp/$datatype", b"float")
            .unwrap()
            .is_empty());
        assert_eq!(h.status().entities, 1, "only dev2 is left");
        // Announced again, it is read again.
        h.message("homie/dev1/$homie", b"4.0.0");
        h.message("homie/dev1/env/temp/$datatype", b"float");
        assert_eq!(
            readings(h.message("homie/dev1/env/temp", b"22").unwrap()),
            [("env/temp".to_string(), 22.0)]
        );
    }

    #[test]
    fn properties_read_once_their_datatype_is_known() {
        let mut h = Homie::new(2, "home");
        // The value before the datatype is held, then taken.
        assert!(readings(h.message("homie/dev1/env/temp", b"21.5").unwrap()).is_empty());
        assert!(readings(
            h.message("homie/dev1/env/temp/$datatype", b"float")
                .unwrap()
        )
        .is_empty());
        h.message("homie/dev1/env/temp/$unit", b"C");
        let flushed = h.flush();
        assert!(
            matches!(&flushed[..], [Event::Reading { value, unit: Some(u), .. }] if *value == 21.5 && u == "C"),
            "{flushed:?}"
        );
        assert!(h.flush().is_empty());
        h.message("homie/dev1/env/open/$datatype", b"boolean");
        assert_eq!(
            readings(h.message("homie/dev1/env/open", b"true").unwrap()),
            [("env/open".to_string(), 1.0)]
        );
        assert!(h
            .message("homie/dev1/env/mode/$datatype", b"enum")
            .unwrap()
            .is_empty());
        assert_eq!(
            h.status().refused_over_limit,
            1,
            "a third property is past 2"
        );
        assert!(h.message("other/topic", b"1").is_none());
    }
}
