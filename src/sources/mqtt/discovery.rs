//! Home Assistant MQTT discovery: the retained `homeassistant/<component>/[<node>/]<object>/config`
//! messages that Zigbee2MQTT, Tasmota, ESPHome and Shelly publish, turned into series.
//!
//! A bridge with `discovery = "homeassistant"` subscribes to both config filters
//! ([`CONFIG_FILTERS`]). Each `sensor` or `binary_sensor` config becomes an [`Entity`]:
//! device = the node id of the topic (or the config's `device.identifiers[0]`), metric =
//! the object id, unit = `unit_of_measurement`, room = the bridge's `discovery_room`
//! (`{area}`, `{node}` filled in). The entity's `state_topic` is then subscribed, and each
//! state message becomes one reading through the entity's [`ValueTemplate`]. An empty
//! config removes the entity. At most `discovery_max_entities` are held; one more is
//! refused and counted. What this module cannot read (an unsupported template, a state
//! that is not a number) is kept on the entity and shown at `/api/bridges`.
//!
//! Both the full key names and Home Assistant's abbreviations (`stat_t`, `val_tpl`,
//! `unit_of_meas`, `dev_cla`, `dev.ids`, `~` for a base topic, ...) are read.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use serde_json::{Map, Value};

use telehub_protocol::ids::{valid_id, valid_metric};

/// The topics whose retained messages announce entities.
pub(crate) const CONFIG_FILTERS: [&str; 2] =
    ["homeassistant/+/+/config", "homeassistant/+/+/+/config"];

/// The longest `name` or `device_class` kept (longer ones are cut).
const MAX_LABEL_LEN: usize = 128;

/// Problems shown at `/api/bridges` at most (the oldest are dropped).
pub(crate) const MAX_PROBLEMS: usize = 100;

/// A `value_template` the bridge can evaluate: the payload as it is, or a path into its
/// JSON (`value_json.a.b`, `value_json['a'].b`), optionally through `| float`, `| int`
/// or `| round(n)`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum ValueTemplate {
    /// `{{ value }}`, or no template.
    Value,
    /// `{{ value_json.a['b'] }}`: the keys in order.
    Json(Vec<String>),
}

impl ValueTemplate {
    /// Parses the common forms; anything else is `Err` with why.
    pub(crate) fn parse(t: &str) -> Result<ValueTemplate, String> {
        let unsupported = || {
            format!(
                "value_template `{t}` is not one the bridge evaluates ({{{{ value }}}}, {{{{ value_json.x }}}}, {{{{ value_json['x'] }}}}, with | float, | int or | round(n))"
            )
        };
        let inner = t
            .trim()
            .strip_prefix("{{")
            .and_then(|s| s.strip_suffix("}}"))
            .ok_or_else(unsupported)?;
        let mut parts = inner.split('|');
        let expr = parts.next().unwrap_or_default().trim();
        for filter in parts {
            let f = filter.trim();
            let round = f
                .strip_prefix("round(")
                .and_then(|r| r.strip_suffix(')'))
                .is_some_and(|n| n.trim().parse::<u8>().is_ok());
            if !(matches!(f, "float" | "int" | "round" | "float(0)" | "int(0)") || round) {
                return Err(unsupported());
            }
        }
        if expr == "value" {
            return Ok(ValueTemplate::Value);
        }
        let mut rest = expr.strip_prefix("value_json").ok_or_else(unsupported)?;
        let mut keys = Vec::new();
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix('.') {
                let end = r
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(r.len());
                if end == 0 {
                    return Err(unsupported());
                }
                keys.push(r[..end].to_string());
                rest = &r[end..];
            } else if let Some(r) = rest.strip_prefix('[') {
                let quote = r.chars().next().filter(|c| *c == '\'' || *c == '"');
                let Some(q) = quote else {
                    return Err(unsupported());
                };
                let r = &r[1..];
                let end = r.find(q).ok_or_else(unsupported)?;
                keys.push(r[..end].to_string());
                rest = r[end + 1..].strip_prefix(']').ok_or_else(unsupported)?;
            } else {
                return Err(unsupported());
            }
        }
        if keys.is_empty() {
            return Err(unsupported());
        }
        Ok(ValueTemplate::Json(keys))
    }

    /// The value the template picks out of `payload`: a JSON value, or the payload as a
    /// string for `{{ value }}`.
    fn extract(&self, payload: &[u8]) -> Result<Value, String> {
        let text = std::str::from_utf8(payload).map_err(|_| "the state is not UTF-8")?;
        match self {
            ValueTemplate::Value => Ok(Value::String(text.trim().to_string())),
            ValueTemplate::Json(keys) => {
                let mut v: Value = serde_json::from_str(text)
                    .map_err(|e| format!("the state is not JSON: {e}"))?;
                for k in keys {
                    v = match v {
                        Value::Object(mut m) => m
                            .remove(k)
                            .ok_or_else(|| format!("the state has no key `{k}`"))?,
                        _ => return Err(format!("the state has no object holding `{k}`")),
                    };
                }
                Ok(v)
            }
        }
    }
}

/// `sensor` (a number) or `binary_sensor` (on 1, off 0).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Kind {
    Sensor,
    /// The payloads that mean on and off (`ON`/`OFF` by default; Zigbee2MQTT's
    /// `contact` uses `false`/`true`).
    Binary {
        on: Value,
        off: Value,
    },
}

/// One discovered entity.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Entity {
    /// `sensor/0x00158d0001a2b3c4/temperature`: what `/api/bridges` names it by.
    pub(crate) id: String,
    pub(crate) room: String,
    pub(crate) device: String,
    pub(crate) metric: String,
    pub(crate) unit: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) device_class: Option<String>,
    pub(crate) device_name: Option<String>,
    pub(crate) state_topic: String,
    /// `Err`: the template the bridge cannot evaluate (no readings, reported).
    pub(crate) template: Result<ValueTemplate, String>,
    pub(crate) kind: Kind,
}

/// What a config message says.
#[derive(Debug, PartialEq)]
pub(crate) enum Announce {
    /// An entity to add or replace, under its config topic.
    Entity(Box<Entity>),
    /// An empty config: the entity under this topic is gone.
    Removed,
    /// A component the bridge does not read (`switch`, `light`, ...).
    Ignored,
}

fn get<'a>(m: &'a Map<String, Value>, long: &str, short: &str) -> Option<&'a Value> {
    m.get(long).or_else(|| m.get(short))
}

fn get_str(m: &Map<String, Value>, long: &str, short: &str) -> Option<String> {
    get(m, long, short).and_then(Value::as_str).map(|s| {
        let mut s = s.to_string();
        if s.len() > MAX_LABEL_LEN {
            let mut cut = MAX_LABEL_LEN;
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
        }
        s
    })
}

/// An announced name as a telehub id: characters outside `A-Za-z0-9_.-` become `_`,
/// cut to 64.
fn as_id(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if out.is_empty() {
        out.push('_');
    }
    out
}

/// Reads the config message on `topic`. `room_template` is the bridge's
/// `discovery_room`.
pub(crate) fn announce(
    topic: &str,
    payload: &[u8],
    room_template: &str,
) -> Result<Announce, String> {
    let parts: Vec<&str> = topic.split('/').collect();
    let (component, node, object) = match parts.as_slice() {
        ["homeassistant", c, o, "config"] => (*c, None, *o),
        ["homeassistant", c, n, o, "config"] => (*c, Some(*n), *o),
        _ => return Err("not a discovery config topic".into()),
    };
    if payload.iter().all(u8::is_ascii_whitespace) {
        return Ok(Announce::Removed);
    }
    if component != "sensor" && component != "binary_sensor" {
        return Ok(Announce::Ignored);
    }
    let config: Map<String, Value> = serde_json::from_slice(payload)
        .map_err(|e| format!("the config is not a JSON object: {e}"))?;
    let base = get_str(&config, "~", "~");
    let state_topic =
        get_str(&config, "state_topic", "stat_t").ok_or("the config has no `state_topic`")?;
    // `~` stands for the base topic at either end of a topic (Tasmota uses it).
    let state_topic = match &base {
        Some(b) if state_topic.starts_with('~') => format!("{b}{}", &state_topic[1..]),
        Some(b) if state_topic.ends_with('~') => {
            format!("{}{b}", &state_topic[..state_topic.len() - 1])
        }
        _ => state_topic,
    };
    if state_topic.is_empty() || state_topic.contains(['+', '#']) || state_topic.len() > 1024 {
        return Err(format!(
            "state_topic `{state_topic}` must be one topic, without + or #"
        ));
    }
    let device = get(&config, "device", "dev").and_then(Value::as_object);
    let identifier = device
        .and_then(|d| get(d, "identifiers", "ids"))
        .and_then(|ids| match ids {
            Value::Array(a) => a.first().and_then(Value::as_str),
            Value::String(s) => Some(s.as_str()),
            _ => None,
        });
    let device_id = match (node, identifier) {
        (Some(n), _) => as_id(n),
        (None, Some(i)) => as_id(i),
        (None, None) => {
            return Err(
                "no device: the topic has no node id and the config no device.identifiers".into(),
            )
        }
    };
    let area = device.and_then(|d| get_str(d, "suggested_area", "sa"));
    let room = room_template
        .replace(
            "{area}",
            &area
                .map(|a| as_id(&a.to_lowercase()))
                .unwrap_or_else(|| "home".into()),
        )
        .replace("{node}", &device_id);
    if !valid_id(&room) {
        return Err(format!("room `{room}` (discovery_room) is not a valid id"));
    }
    let metric = as_id(object);
    if !valid_metric(&metric) {
        return Err(format!("metric `{metric}` is not valid"));
    }
    let template = match get_str(&config, "value_template", "val_tpl") {
        None => Ok(ValueTemplate::Value),
        Some(t) => ValueTemplate::parse(&t),
    };
    let kind = if component == "binary_sensor" {
        Kind::Binary {
            on: get(&config, "payload_on", "pl_on")
                .cloned()
                .unwrap_or_else(|| "ON".into()),
            off: get(&config, "payload_off", "pl_off")
                .cloned()
                .unwrap_or_else(|| "OFF".into()),
        }
    } else {
        Kind::Sensor
    };
    Ok(Announce::Entity(Box::new(Entity {
        id: match node {
            Some(n) => format!("{component}/{n}/{object}"),
            None => format!("{component}/{object}"),
        },
        room,
        device: device_id,
        metric,
        unit: get_str(&config, "unit_of_measurement", "unit_of_meas").filter(|u| !u.is_empty()),
        name: get_str(&config, "name", "name"),
        device_class: get_str(&config, "device_class", "dev_cla"),
        device_name: device.and_then(|d| get_str(d, "name", "name")),
        state_topic,
        template,
        kind,
    })))
}

/// A JSON value and a payload setting compared as Home Assistant does: as strings.
fn same(v: &Value, setting: &Value) -> bool {
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    text(v) == text(setting)
}

impl Entity {
    /// The reading's value in a state message.
    pub(crate) fn value(&self, payload: &[u8]) -> Result<f64, String> {
        let template = self.template.as_ref().map_err(Clone::clone)?;
        let v = template.extract(payload)?;
        match &self.kind {
            Kind::Binary { on, off } => {
                if same(&v, on) {
                    Ok(1.0)
                } else if same(&v, off) {
                    Ok(0.0)
                } else {
                    Err(format!(
                        "state `{v}` is neither payload_on ({on}) nor payload_off ({off})"
                    ))
                }
            }
            Kind::Sensor => {
                let n = match &v {
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) => s.trim().parse::<f64>().ok(),
                    Value::Bool(b) => Some(f64::from(u8::from(*b))),
                    _ => None,
                };
                n.filter(|n| n.is_finite())
                    .ok_or_else(|| format!("state `{v}` is not a number"))
            }
        }
    }
}

/// An entity's problem as `/api/bridges` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntityProblem {
    /// `sensor/<node>/<object>`.
    pub entity: String,
    pub message: String,
}

/// Discovery's part of `/api/bridges`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DiscoveryStatus {
    /// Entities held now.
    pub entities: usize,
    /// Entities refused because `discovery_max_entities` were held.
    pub refused_over_limit: u64,
    /// Config messages that could not be read.
    pub bad_configs: u64,
    /// Entities whose template or state the bridge cannot read, by entity (and configs
    /// that could not be read, by topic); the last [`MAX_PROBLEMS`].
    pub problems: Vec<EntityProblem>,
}

/// What a config message changed: state topics to subscribe or unsubscribe, series
/// labels to set or clear.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Change {
    pub(crate) subscribe: Option<String>,
    pub(crate) unsubscribe: Option<String>,
    /// `(room, device, metric)` of an entity added (`Some`) or removed.
    pub(crate) added: Option<Entity>,
    pub(crate) removed: Option<Entity>,
}

/// The entities of one bridge, by config topic, and which listen on each state topic.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    max: usize,
    room_template: String,
    entities: HashMap<String, Entity>,
    by_state: HashMap<String, Vec<String>>,
    /// Problems by entity id (bounded by the number of entities plus [`MAX_PROBLEMS`]).
    problems: BTreeMap<String, String>,
    refused_over_limit: u64,
    bad_configs: u64,
    /// Templates and states that could not be read since [`Registry::take_unread`].
    unread: u64,
    /// A problem went away since [`Registry::take_cleared`].
    cleared: bool,
}

impl Registry {
    /// Templates and states that could not be read since the last call (the bridge
    /// counts them in `parse_errors`).
    pub(crate) fn take_unread(&mut self) -> u64 {
        std::mem::take(&mut self.unread)
    }

    /// Whether a problem went away since the last call.
    pub(crate) fn take_cleared(&mut self) -> bool {
        std::mem::take(&mut self.cleared)
    }

    pub(crate) fn new(max: usize, room_template: &str) -> Registry {
        Registry {
            max,
            room_template: room_template.to_string(),
            ..Registry::default()
        }
    }

    fn problem(&mut self, entity: &str, message: String) {
        if self.problems.len() >= MAX_PROBLEMS + self.entities.len()
            && !self.problems.contains_key(entity)
        {
            if let Some(first) = self.problems.keys().next().cloned() {
                self.problems.remove(&first);
            }
        }
        self.problems.insert(entity.to_string(), message);
    }

    /// Whether `topic` is a discovery config topic.
    pub(crate) fn is_config(topic: &str) -> bool {
        topic.starts_with("homeassistant/") && topic.ends_with("/config")
    }

    /// A config message: the entity is added, replaced or removed.
    pub(crate) fn config(&mut self, topic: &str, payload: &[u8]) -> Result<Change, String> {
        let mut change = Change::default();
        let announced = match announce(topic, payload, &self.room_template) {
            Ok(a) => a,
            Err(e) => {
                self.bad_configs += 1;
                self.problem(topic, e.clone());
                return Err(e);
            }
        };
        let new = match announced {
            Announce::Ignored => return Ok(change),
            Announce::Removed => None,
            Announce::Entity(e) => Some(*e),
        };
        if new.is_some() && !self.entities.contains_key(topic) && self.entities.len() >= self.max {
            self.refused_over_limit += 1;
            let e = format!(
                "more than discovery_max_entities ({}) entities; not added",
                self.max
            );
            self.problem(topic, e.clone());
            return Err(e);
        }
        self.problems.remove(topic);
        if let Some(old) = self.entities.remove(topic) {
            self.problems.remove(&old.id);
            if let Some(list) = self.by_state.get_mut(&old.state_topic) {
                list.retain(|t| t != topic);
                if list.is_empty() {
                    self.by_state.remove(&old.state_topic);
                    if new
                        .as_ref()
                        .is_none_or(|n| n.state_topic != old.state_topic)
                    {
                        change.unsubscribe = Some(old.state_topic.clone());
                    }
                }
            }
            change.removed = Some(old);
        }
        if let Some(e) = new {
            if let Err(why) = &e.template {
                self.unread += 1;
                self.problem(&e.id, why.clone());
            }
            let list = self.by_state.entry(e.state_topic.clone()).or_default();
            // Subscribed again even when held: a retained state comes with it.
            change.subscribe = Some(e.state_topic.clone());
            if change.unsubscribe.as_deref() == Some(e.state_topic.as_str()) {
                change.unsubscribe = None;
            }
            list.push(topic.to_string());
            self.entities.insert(topic.to_string(), e.clone());
            change.added = Some(e);
        }
        Ok(change)
    }

    /// The readings a state message holds: `(entity, value)`, one per entity listening on
    /// `topic`; `None` when no entity does.
    pub(crate) fn state(&mut self, topic: &str, payload: &[u8]) -> Option<Vec<(Entity, f64)>> {
        let listeners = self.by_state.get(topic)?.clone();
        let mut out = Vec::with_capacity(listeners.len());
        for config in listeners {
            let Some(e) = self.entities.get(&config) else {
                continue;
            };
            match e.value(payload) {
                Ok(v) => {
                    let e = e.clone();
                    if self.problems.remove(&e.id).is_some() {
                        self.cleared = true;
                    }
                    out.push((e, v));
                }
                Err(why) => {
                    let id = e.id.clone();
                    self.unread += 1;
                    self.problem(&id, why);
                }
            }
        }
        Some(out)
    }

    pub(crate) fn status(&self) -> DiscoveryStatus {
        DiscoveryStatus {
            entities: self.entities.len(),
            refused_over_limit: self.refused_over_limit,
            bad_configs: self.bad_configs,
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

    #[test]
    fn templates_of_the_common_forms_parse_and_others_are_named() {
        use ValueTemplate::*;
        assert_eq!(ValueTemplate::parse("{{ value }}"), Ok(Value));
        assert_eq!(ValueTemplate::parse("{{ value | float }}"), Ok(Value));
        assert_eq!(
            ValueTemplate::parse("{{ value_json.temperature }}"),
            Ok(Json(vec!["temperature".into()]))
        );
        assert_eq!(
            ValueTemplate::parse("{{value_json['AM2301'].Temperature}}"),
            Ok(Json(vec!["AM2301".into(), "Temperature".into()]))
        );
        assert_eq!(
            ValueTemplate::parse("{{ value_json[\"ENERGY\"][\"Power\"] | float | round(1) }}"),
            Ok(Json(vec!["ENERGY".into(), "Power".into()]))
        );
        for bad in [
            "{{ value_json.x * 10 }}",
            "{% if value == 'on' %}1{% endif %}",
            "{{ states('sensor.x') }}",
            "{{ value_json. }}",
            "value_json.x",
            "{{ value_json['x }}",
        ] {
            let e = ValueTemplate::parse(bad).unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
    }

    #[test]
    fn sensor_and_binary_states_become_values() {
        let a = announce(
            "homeassistant/binary_sensor/0xabc/contact/config",
            br#"{"state_topic":"z2m/door","value_template":"{{ value_json.contact }}","payload_on":false,"payload_off":true,"device":{"identifiers":["z2m_0xabc"],"name":"Door"}}"#,
            "home",
        )
        .expect("reads");
        let Announce::Entity(e) = a else {
            panic!("{a:?}")
        };
        assert_eq!((e.device.as_str(), e.metric.as_str()), ("0xabc", "contact"));
        assert_eq!(e.value(br#"{"contact":false}"#), Ok(1.0));
        assert_eq!(e.value(br#"{"contact":true}"#), Ok(0.0));
        assert!(e.value(br#"{"contact":"x"}"#).is_err());
        let a = announce(
            "homeassistant/sensor/A4CF12_Temperature/config",
            br#"{"~":"tele/tasmota_A4CF12/","stat_t":"~SENSOR","val_tpl":"{{value_json['AM2301'].Temperature}}","unit_of_meas":"\u00b0C","dev":{"ids":["A4CF12"],"sa":"Living Room"}}"#,
            "{area}",
        )
        .expect("reads");
        let Announce::Entity(e) = a else {
            panic!("{a:?}")
        };
        assert_eq!(e.state_topic, "tele/tasmota_A4CF12/SENSOR");
        assert_eq!(
            (e.room.as_str(), e.device.as_str()),
            ("living_room", "A4CF12")
        );
        assert_eq!(e.unit.as_deref(), Some("°C"));
        assert_eq!(e.value(br#"{"AM2301":{"Temperature":21.5}}"#), Ok(21.5));
        assert!(e
            .value(br#"{"AM2301":{}}"#)
            .unwrap_err()
            .contains("Temperature"));
        assert_eq!(
            announce("homeassistant/sensor/x/y/config", b"", "home"),
            Ok(Announce::Removed)
        );
        assert_eq!(
            announce("homeassistant/switch/x/y/config", b"{}", "home"),
            Ok(Announce::Ignored)
        );
        assert!(announce("homeassistant/sensor/x/y/config", b"{}", "home")
            .unwrap_err()
            .contains("state_topic"));
    }

    #[test]
    fn the_registry_is_bounded_and_removal_unsubscribes() {
        let mut r = Registry::new(2, "home");
        let cfg = |t: &str| format!(r#"{{"state_topic":"{t}"}}"#);
        let c = r
            .config("homeassistant/sensor/n/a/config", cfg("s/1").as_bytes())
            .expect("added");
        assert_eq!(c.subscribe.as_deref(), Some("s/1"));
        r.config("homeassistant/sensor/n/b/config", cfg("s/1").as_bytes())
            .expect("added");
        let e = r
            .config("homeassistant/sensor/n/c/config", cfg("s/2").as_bytes())
            .unwrap_err();
        assert!(e.contains("discovery_max_entities (2)"), "{e}");
        assert_eq!(r.status().refused_over_limit, 1);
        assert_eq!(r.state("s/1", b"3").map(|v| v.len()), Some(2));
        let c = r
            .config("homeassistant/sensor/n/a/config", b"")
            .expect("removed");
        assert_eq!(c.unsubscribe, None, "b still listens on s/1");
        let c = r
            .config("homeassistant/sensor/n/b/config", b"")
            .expect("removed");
        assert_eq!(c.unsubscribe.as_deref(), Some("s/1"));
        assert_eq!(r.state("s/1", b"3"), None);
        assert_eq!(r.status().entities, 0);
    }
}
