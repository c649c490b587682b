//! `[mqtt]` and `[[mqtt.bridges]]`: which brokers to bridge, how their topics map to
//! rooms, devices and metrics, and how commands go back. Validated into a
//! [`BridgeSpec`] before anything connects, so a bad template or URL stops start-up with
//! the key that is wrong.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::client::Protocol;
use super::payload::PayloadFormat;
use super::template::TopicTemplate;
use crate::sources::mqtt::BridgeError;
use telehub_protocol::ids::{valid_id, valid_metric};

/// `[mqtt]`: the bridges to MQTT brokers. None by default.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttConfig {
    /// One entry per broker connection (`[[mqtt.bridges]]`).
    pub bridges: Vec<BridgeConfig>,
}

/// `[[mqtt.bridges]]`: one broker connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// Name of the bridge in `/api/bridges`, `/metrics` and logs (`A-Za-z0-9_.-`).
    pub name: String,
    /// Broker URL: `mqtt://host[:port]` (default port 1883) or `mqtts://host[:port]`
    /// (TLS with rustls, default port 8883). `user:password@` may precede the host.
    pub url: String,
    /// Username, when the broker wants one (wins over one in the URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// Password for `username`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// MQTT client id. It must stay the same across restarts: the broker keeps the
    /// persistent session (subscriptions and QoS 1 messages queued while the hub is down)
    /// under it. Default: `telehub-{hostname}-{name}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// PEM file of CA certificates to trust for `mqtts://` instead of the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    /// `mqtts://` with a client certificate: the certificate chain (PEM), for brokers
    /// that authenticate clients by certificate (`require_certificate`). Set with
    /// `key_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    /// The private key of `cert_file` (PEM: PKCS#8, RSA or SEC1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// MQTT keep-alive: the client pings this often when idle and the broker drops it
    /// after 1.5 intervals of silence.
    #[serde(default = "default_keep_alive_secs")]
    pub keep_alive_secs: u64,
    /// Ceiling of the first wait before reconnecting after the broker went away; the
    /// ceiling doubles on each failure up to `reconnect_max_ms` and is back to this after
    /// a successful connect. Each wait is drawn between half the ceiling and the ceiling
    /// (jitter), so hubs that lost the same broker do not reconnect all at once.
    #[serde(default = "default_reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    /// Longest wait between reconnect attempts.
    #[serde(default = "default_reconnect_max_ms")]
    pub reconnect_max_ms: u64,
    /// Topics to subscribe (QoS 1), each with its mapping to room, device and metric.
    /// Default: one entry with `template = "telehub/{room}/{device}/{metric}"`.
    #[serde(default = "default_topics")]
    pub topics: Vec<TopicConfig>,
    /// Where commands to a bridged device are published (QoS 1). `{room}` and
    /// `{device}` are filled in; it must have both and no `{_}`, `#` or `{metric}`.
    #[serde(default = "default_command_topic")]
    pub command_topic: String,
    /// Where devices publish their acks to commands; subscribed with QoS 1. It must have
    /// `{room}` and `{device}` (or the bridge cannot tell whose ack it is).
    #[serde(default = "default_ack_topic")]
    pub ack_topic: String,
    /// A bridged device that has published nothing for this many seconds leaves its
    /// room (dashboards get a presence `leave`; its next reading joins it again). 0
    /// keeps every bridged device until the bridge stops.
    #[serde(default)]
    pub device_idle_secs: u64,
    /// Publish the readings of WebSocket devices to this broker too, on the first topic
    /// template (which then must be renderable: `{room}`, `{device}`, `{metric}`, no
    /// `{_}` or `#`), so existing MQTT consumers see them.
    #[serde(default)]
    pub mirror: bool,
    /// `"homeassistant"`: read Home Assistant MQTT discovery (the retained
    /// `homeassistant/.../config` messages of Zigbee2MQTT, Tasmota, ESPHome, Shelly) and
    /// turn each `sensor` and `binary_sensor` into a series. `"homie"`: Homie 4 devices'
    /// numeric and boolean properties under `homie/#`. `"off"` (the default).
    #[serde(default = "default_discovery")]
    pub discovery: String,
    /// The room of discovered entities: a fixed room, or with `{area}` (the device's
    /// `suggested_area`, lower case; `home` without one) and `{node}` (its node id).
    #[serde(default = "default_discovery_room")]
    pub discovery_room: String,
    /// Discovered entities held at most; one more config is refused and counted
    /// (`/api/bridges` `discovery.refused_over_limit`).
    #[serde(default = "default_discovery_max_entities")]
    pub discovery_max_entities: usize,
    /// The MQTT version: `"3.1.1"` (the default) or `"5"`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// MQTT 5: how long the broker keeps the bridge's session (its subscriptions and the
    /// QoS 1 messages queued for it) after the bridge disconnects, in seconds. A hub down
    /// for longer loses what was published meanwhile. Default one day (86400); at most
    /// 4294967295, which MQTT 5 reads as "never expires".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_expiry_secs: Option<u64>,
    /// MQTT 5: subscribe the reading topics as the shared subscription
    /// `$share/<shared_group>/<filter>`, so that the broker splits their messages between
    /// every hub (bridge) of the group, each message to one of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_group: Option<String>,
    /// MQTT 5: the response topic set on every command (with correlation data); a device
    /// that publishes its answer there, echoing the correlation data, has it routed back
    /// to the commanding dashboard as its ack. `{client_id}` is replaced by the bridge's
    /// client id. Default `telehub/reply/{client_id}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_topic: Option<String>,
}

fn default_protocol() -> String {
    "3.1.1".into()
}

/// The default `session_expiry_secs`: one day.
pub(crate) const DEFAULT_SESSION_EXPIRY_SECS: u32 = 86_400;

/// The default `response_topic`.
const DEFAULT_RESPONSE_TOPIC: &str = "telehub/reply/{client_id}";

fn default_discovery() -> String {
    "off".into()
}

fn default_discovery_room() -> String {
    "home".into()
}

fn default_discovery_max_entities() -> usize {
    1_024
}

/// The largest `discovery_max_entities`.
pub(crate) const MAX_DISCOVERY_ENTITIES: usize = 100_000;

/// Which devices' announcements a bridge reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiscoveryKind {
    /// Home Assistant MQTT discovery (`homeassistant/.../config`).
    HomeAssistant,
    /// Homie 4 (`homie/<device>/...`).
    Homie,
}

/// Discovery, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct DiscoverySpec {
    pub kind: DiscoveryKind,
    pub room: String,
    pub max_entities: usize,
}

/// `[[mqtt.bridges.topics]]`: one subscription and how its topics map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicConfig {
    /// Topic template (see `docs/MQTT.md`): levels `{room}`, `{device}`, `{metric}`,
    /// `{_}` (ignored), literal text, and `#` last. Subscribed as the filter with every
    /// segment turned into `+`.
    #[serde(default = "default_template")]
    pub template: String,
    /// Fixed room for every topic of this entry, instead of a `{room}` segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// Fixed device, instead of a `{device}` segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Fixed metric, instead of a `{metric}` segment or metric names in the payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// Payload shape: `auto` (detect each message), `number`, `reading`, `object`,
    /// `senml`.
    #[serde(default)]
    pub format: PayloadFormat,
}

const fn default_keep_alive_secs() -> u64 {
    30
}
const fn default_reconnect_min_ms() -> u64 {
    250
}
const fn default_reconnect_max_ms() -> u64 {
    10_000
}
fn default_template() -> String {
    "telehub/{room}/{device}/{metric}".to_string()
}
fn default_topics() -> Vec<TopicConfig> {
    vec![TopicConfig {
        template: default_template(),
        room: None,
        device: None,
        metric: None,
        format: PayloadFormat::Auto,
    }]
}
fn default_command_topic() -> String {
    "telehub/{room}/{device}/cmd".to_string()
}
fn default_ack_topic() -> String {
    "telehub/{room}/{device}/ack".to_string()
}

/// Where the broker is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
}

/// A parsed and checked topic mapping.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub template: TopicTemplate,
    pub room: Option<String>,
    pub device: Option<String>,
    pub metric: Option<String>,
    pub format: PayloadFormat,
}

/// A bridge's configuration after validation: everything the bridge task needs.
#[derive(Debug, Clone)]
pub struct BridgeSpec {
    pub name: String,
    pub broker: BrokerUrl,
    pub client_id: String,
    pub ca_file: Option<String>,
    /// The client certificate and its key, for `mqtts://`.
    pub client_cert: Option<(String, String)>,
    pub keep_alive: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub topics: Vec<TopicSpec>,
    pub command_topic: TopicTemplate,
    pub ack_topic: TopicTemplate,
    pub mirror: bool,
    /// `None`: bridged devices stay until the bridge stops.
    pub device_idle: Option<Duration>,
    /// `Some`: Home Assistant discovery is on.
    pub discovery: Option<DiscoverySpec>,
    pub protocol: Protocol,
    /// MQTT 5's session expiry interval, seconds (unused by 3.1.1, whose sessions do
    /// not expire).
    pub session_expiry: u32,
    /// MQTT 5: the reading topics are subscribed as `$share/<group>/<filter>`.
    pub shared_group: Option<String>,
    /// MQTT 5: where devices answer commands (`None` with 3.1.1).
    pub response_topic: Option<String>,
}

/// Parses `mqtt://[user[:pass]@]host[:port]` (also `tcp://`; `mqtts://` or `ssl://` for
/// TLS). IPv6 hosts go in brackets.
pub(crate) fn parse_broker_url(url: &str) -> Result<BrokerUrl, String> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or("must start with mqtt:// or mqtts://")?;
    let tls = match scheme {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        other => {
            return Err(format!(
                "scheme `{other}` is not supported (use mqtt:// or mqtts://)"
            ))
        }
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#']) {
        return Err("must be only scheme://host[:port], with no path or query".into());
    }
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(u) => match u.split_once(':') {
            Some((user, pass)) => (Some(user.to_string()), Some(pass.to_string())),
            None => (Some(u.to_string()), None),
        },
    };
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or("has `[` without `]`")?;
        let port = match after {
            "" => default_port,
            p => p
                .strip_prefix(':')
                .and_then(|p| p.parse().ok())
                .ok_or("has a bad port")?,
        };
        (h.to_string(), port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse::<u16>()
                    .map_err(|_| format!("port `{p}` is not a number from 1 to 65535"))?,
            ),
            None => (hostport.to_string(), default_port),
        }
    };
    if host.is_empty() {
        return Err("has no host".into());
    }
    if port == 0 {
        return Err("port must not be 0".into());
    }
    Ok(BrokerUrl {
        tls,
        host,
        port,
        username,
        password,
    })
}

/// The default client id: stable for this machine and bridge, so a restarted hub
/// resumes its persistent session.
fn default_client_id(name: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| {
            h.trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(40)
                .collect::<String>()
        })
        .filter(|h| !h.is_empty());
    match host {
        Some(h) => format!("telehub-{h}-{name}"),
        None => format!("telehub-{name}"),
    }
}

impl MqttConfig {
    /// Validates every bridge. The error names the key, e.g.
    /// `mqtt.bridges[0].topics[1].template`.
    pub fn validate(&self) -> Result<Vec<BridgeSpec>, BridgeError> {
        let mut specs: Vec<BridgeSpec> = Vec::with_capacity(self.bridges.len());
        for (i, b) in self.bridges.iter().enumerate() {
            let spec = b.validate(&format!("mqtt.bridges[{i}]"))?;
            if specs.iter().any(|s| s.name == spec.name) {
                return Err(BridgeError::Config {
                    key: format!("mqtt.bridges[{i}].name"),
                    message: format!("`{}` is used by another bridge", spec.name),
                });
            }
            if specs
                .iter()
                .any(|s| s.client_id == spec.client_id && s.broker == spec.broker)
            {
                return Err(BridgeError::Config {
                    key: format!("mqtt.bridges[{i}].client_id"),
                    message: format!(
                        "`{}` is used by another bridge to the same broker (the broker would disconnect one for the other)",
                        spec.client_id
                    ),
                });
            }
            specs.push(spec);
        }
        Ok(specs)
    }
}

impl BridgeConfig {
    /// Checks this bridge; `key` is its path in the config (`mqtt.bridges[0]`).
    pub fn validate(&self, key: &str) -> Result<BridgeSpec, BridgeError> {
        let bad = |field: &str, message: String| BridgeError::Config {
            key: format!("{key}.{field}"),
            message,
        };
        if !valid_id(&self.name) {
            return Err(bad(
                "name",
                format!("`{}` must be 1 to 64 characters of A-Za-z0-9_.-", self.name),
            ));
        }
        let mut broker =
            parse_broker_url(&self.url).map_err(|m| bad("url", format!("`{}` {m}", self.url)))?;
        if let Some(u) = &self.username {
            broker.username = Some(u.clone());
        }
        if let Some(p) = &self.password {
            broker.password = Some(p.clone());
        }
        if broker.password.is_some() && broker.username.is_none() {
            return Err(bad("password", "is set but `username` is not".into()));
        }
        let client_id = match &self.client_id {
            Some(id) if id.is_empty() || id.len() > 128 => {
                return Err(bad(
                    "client_id",
                    "must be 1 to 128 characters (a persistent session needs a fixed id)".into(),
                ))
            }
            Some(id) => id.clone(),
            None => default_client_id(&self.name),
        };
        if self.ca_file.is_some() && !broker.tls {
            return Err(bad("ca_file", "is only used with mqtts:// URLs".into()));
        }
        let client_cert = match (&self.cert_file, &self.key_file) {
            (None, None) => None,
            (Some(_), None) => return Err(bad("key_file", "is needed with cert_file".into())),
            (None, Some(_)) => return Err(bad("cert_file", "is needed with key_file".into())),
            (Some(_), Some(_)) if !broker.tls => {
                return Err(bad("cert_file", "is only used with mqtts:// URLs".into()))
            }
            (Some(c), Some(k)) => Some((c.clone(), k.clone())),
        };
        if self.keep_alive_secs < 5 || self.keep_alive_secs > 65_535 {
            return Err(bad(
                "keep_alive_secs",
                "must be from 5 to 65535 seconds".into(),
            ));
        }
        if self.reconnect_min_ms == 0 || self.reconnect_min_ms > self.reconnect_max_ms {
            return Err(bad(
                "reconnect_min_ms",
                "must be at least 1 and at most `reconnect_max_ms`".into(),
            ));
        }
        if self.topics.is_empty() {
            return Err(bad(
                "topics",
                "is empty; leave it out for the default `telehub/{room}/{device}/{metric}`".into(),
            ));
        }
        let mut topics = Vec::with_capacity(self.topics.len());
        for (j, t) in self.topics.iter().enumerate() {
            topics.push(t.validate(&format!("{key}.topics[{j}]"))?);
        }
        let command_topic = TopicTemplate::parse(&self.command_topic)
            .map_err(|e| bad("command_topic", e.to_string()))?;
        if !(command_topic.has_room() && command_topic.has_device())
            || command_topic.has_metric()
            || !command_topic.renderable()
        {
            return Err(bad(
                "command_topic",
                format!(
                    "`{}` must contain {{room}} and {{device}}, and no {{metric}}, {{_}} or #",
                    self.command_topic
                ),
            ));
        }
        let ack_topic =
            TopicTemplate::parse(&self.ack_topic).map_err(|e| bad("ack_topic", e.to_string()))?;
        if !(ack_topic.has_room() && ack_topic.has_device()) || ack_topic.has_metric() {
            return Err(bad(
                "ack_topic",
                format!(
                    "`{}` must contain {{room}} and {{device}} and no {{metric}}",
                    self.ack_topic
                ),
            ));
        }
        if command_topic.filter() == ack_topic.filter() {
            return Err(bad(
                "ack_topic",
                "must differ from `command_topic` (the bridge would read its own commands as acks)"
                    .into(),
            ));
        }
        if self.mirror {
            let first = &topics[0];
            let t = &first.template;
            if !(t.has_room() && t.has_device() && t.has_metric() && t.renderable()) {
                return Err(bad(
                    "mirror",
                    format!(
                        "needs topics[0].template to have {{room}}, {{device}} and {{metric}} and no {{_}} or # (it is `{t}`)"
                    ),
                ));
            }
        }
        let kind = match self.discovery.as_str() {
            "off" => None,
            "homeassistant" => Some(DiscoveryKind::HomeAssistant),
            "homie" => Some(DiscoveryKind::Homie),
            other => {
                return Err(bad(
                    "discovery",
                    format!("`{other}` is not \"homeassistant\", \"homie\" or \"off\""),
                ))
            }
        };
        let discovery = match kind {
            None => None,
            Some(kind) => {
                let probe = self
                    .discovery_room
                    .replace("{area}", "a")
                    .replace("{node}", "n");
                if !valid_id(&probe) {
                    return Err(bad(
                        "discovery_room",
                        format!(
                            "`{}` must be a room id (A-Za-z0-9_.-), with {{area}} or {{node}} if wanted",
                            self.discovery_room
                        ),
                    ));
                }
                if self.discovery_max_entities == 0
                    || self.discovery_max_entities > MAX_DISCOVERY_ENTITIES
                {
                    return Err(bad(
                        "discovery_max_entities",
                        format!("must be from 1 to {MAX_DISCOVERY_ENTITIES}"),
                    ));
                }
                Some(DiscoverySpec {
                    kind,
                    room: self.discovery_room.clone(),
                    max_entities: self.discovery_max_entities,
                })
            }
        };
        let protocol = match self.protocol.as_str() {
            "3.1.1" => Protocol::V311,
            "5" => Protocol::V5,
            other => {
                return Err(bad(
                    "protocol",
                    format!("`{other}` is not \"3.1.1\" or \"5\""),
                ))
            }
        };
        let v5_only = |field: &str| {
            bad(
                field,
                "is an MQTT 5 setting: it needs `protocol = \"5\"`".into(),
            )
        };
        let session_expiry = match (protocol, self.session_expiry_secs) {
            (Protocol::V311, Some(_)) => return Err(v5_only("session_expiry_secs")),
            (_, None) => DEFAULT_SESSION_EXPIRY_SECS,
            (_, Some(s)) => match u32::try_from(s) {
                Ok(s) if s > 0 => s,
                _ => {
                    return Err(bad(
                        "session_expiry_secs",
                        "must be from 1 to 4294967295 seconds (0 would end the session, and with it the queued messages, at every disconnect)".into(),
                    ))
                }
            },
        };
        let shared_group = match (&self.shared_group, protocol) {
            (None, _) => None,
            (Some(_), Protocol::V311) => return Err(v5_only("shared_group")),
            (Some(g), Protocol::V5) if valid_id(g) => Some(g.clone()),
            (Some(g), Protocol::V5) => {
                return Err(bad(
                    "shared_group",
                    format!("`{g}` must be 1 to 64 characters of A-Za-z0-9_.-"),
                ))
            }
        };
        let response_topic = match (&self.response_topic, protocol) {
            (Some(_), Protocol::V311) => return Err(v5_only("response_topic")),
            (_, Protocol::V311) => None,
            (t, Protocol::V5) => {
                let t = t
                    .as_deref()
                    .unwrap_or(DEFAULT_RESPONSE_TOPIC)
                    .replace("{client_id}", &client_id);
                if t.is_empty() || t.starts_with('$') || t.contains(['+', '#', '\0']) {
                    return Err(bad(
                        "response_topic",
                        format!("`{t}` must be a topic name: not empty, no `+` or `#`, not starting with `$` (the client id is part of it by default)"),
                    ));
                }
                if topics.iter().any(|m| m.template.matches(&t).is_some())
                    || command_topic.matches(&t).is_some()
                    || ack_topic.matches(&t).is_some()
                {
                    return Err(bad(
                        "response_topic",
                        format!(
                            "`{t}` must not match a topic template, `command_topic` or `ack_topic`"
                        ),
                    ));
                }
                Some(t)
            }
        };
        Ok(BridgeSpec {
            protocol,
            session_expiry,
            shared_group,
            response_topic,
            discovery,
            name: self.name.clone(),
            broker,
            client_id,
            ca_file: self.ca_file.clone(),
            client_cert,
            keep_alive: Duration::from_secs(self.keep_alive_secs),
            reconnect_min: Duration::from_millis(self.reconnect_min_ms),
            reconnect_max: Duration::from_millis(self.reconnect_max_ms),
            topics,
            command_topic,
            ack_topic,
            mirror: self.mirror,
            device_idle: (self.device_idle_secs > 0)
                .then(|| Duration::from_secs(self.device_idle_secs)),
        })
    }
}

impl TopicConfig {
    fn validate(&self, key: &str) -> Result<TopicSpec, BridgeError> {
        let bad = |field: &str, message: String| BridgeError::Config {
            key: format!("{key}.{field}"),
            message,
        };
        let template =
            TopicTemplate::parse(&self.template).map_err(|e| bad("template", e.to_string()))?;
        for (field, fixed, in_template, valid) in [
            (
                "room",
                &self.room,
                template.has_room(),
                valid_id as fn(&str) -> bool,
            ),
            ("device", &self.device, template.has_device(), valid_id),
            ("metric", &self.metric, template.has_metric(), valid_metric),
        ] {
            if let Some(v) = fixed {
                if in_template {
                    return Err(bad(
                        field,
                        format!("is fixed to `{v}` but the template `{template}` also has {{{field}}}; keep one"),
                    ));
                }
                if !valid(v) {
                    return Err(bad(field, format!("`{v}` is not a valid {field} id")));
                }
            }
        }
        if self.room.is_none() && !template.has_room() {
            return Err(bad(
                "template",
                format!("`{template}` has no {{room}}: add one or set `room = \"...\"`"),
            ));
        }
        let device_from_payload = self.format == PayloadFormat::Senml;
        if self.device.is_none() && !template.has_device() && !device_from_payload {
            return Err(bad(
                "template",
                format!("`{template}` has no {{device}}: add one or set `device = \"...\"`"),
            ));
        }
        if self.metric.is_some()
            && matches!(self.format, PayloadFormat::Object | PayloadFormat::Senml)
        {
            return Err(bad(
                "metric",
                format!(
                    "cannot be fixed with format `{}`: the payload names its metrics",
                    serde_json::to_value(self.format)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default()
                ),
            ));
        }
        Ok(TopicSpec {
            template,
            room: self.room.clone(),
            device: self.device.clone(),
            metric: self.metric.clone(),
            format: self.format,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<BridgeSpec>, String> {
        let cfg: MqttConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        cfg.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn mqtt5_keys() {
        let base = "[[bridges]]\nname = \"b\"\nurl = \"mqtt://h\"\nclient_id = \"hub-1\"\n";
        let spec = parse(base).expect("valid").remove(0);
        assert_eq!(
            (spec.protocol, spec.response_topic, spec.shared_group),
            (Protocol::V311, None, None),
            "3.1.1 by default"
        );
        let spec = parse(&format!("{base}protocol = \"5\"\n"))
            .expect("valid")
            .remove(0);
        assert_eq!(spec.protocol, Protocol::V5);
        assert_eq!(spec.session_expiry, DEFAULT_SESSION_EXPIRY_SECS);
        assert_eq!(spec.response_topic.as_deref(), Some("telehub/reply/hub-1"));
        let spec = parse(&format!(
            "{base}protocol = \"5\"\nsession_expiry_secs = 4294967295\nshared_group = \"telehub\"\nresponse_topic = \"answers/{{client_id}}/x\"\n"
        ))
        .expect("valid")
        .remove(0);
        assert_eq!(
            (
                spec.session_expiry,
                spec.shared_group.as_deref(),
                spec.response_topic.as_deref()
            ),
            (u32::MAX, Some("telehub"), Some("answers/hub-1/x"))
        );
        for (extra, key, says) in [
            ("protocol = \"4\"", "protocol", "is not \"3.1.1\" or \"5\""),
            (
                "session_expiry_secs = 60",
                "session_expiry_secs",
                "needs `protocol = \"5\"`",
            ),
            (
                "shared_group = \"g\"",
                "shared_group",
                "needs `protocol = \"5\"`",
            ),
            (
                "response_topic = \"r\"",
                "response_topic",
                "needs `protocol = \"5\"`",
            ),
            (
                "protocol = \"5\"\nsession_expiry_secs = 0",
                "session_expiry_secs",
                "from 1 to 4294967295",
            ),
            (
                "protocol = \"5\"\nsession_expiry_secs = 4294967296",
                "session_expiry_secs",
                "from 1",
            ),
            (
                "protocol = \"5\"\nshared_group = \"a/b\"",
                "shared_group",
                "A-Za-z0-9_.-",
            ),
            (
                "protocol = \"5\"\nresponse_topic = \"r/+\"",
                "response_topic",
                "no `+` or `#`",
            ),
            (
                "protocol = \"5\"\nresponse_topic = \"telehub/a/b/c\"",
                "response_topic",
                "must not match",
            ),
        ] {
            let e = parse(&format!("{base}{extra}\n")).unwrap_err();
            assert!(
                e.contains(&format!("mqtt.bridges[0].{key}")) && e.contains(says),
                "{extra}: {e}"
            );
        }
    }

    #[test]
    fn discovery_keys_are_checked_by_name() {
        let base = "[[bridges]]\nname = \"b\"\nurl = \"mqtt://h\"\n";
        let spec = parse(base).expect("valid");
        assert_eq!(spec[0].discovery, None, "off by default");
        let spec = parse(&format!("{base}discovery = \"homeassistant\"\n")).expect("valid");
        assert_eq!(
            spec[0].discovery,
            Some(DiscoverySpec {
                kind: DiscoveryKind::HomeAssistant,
                room: "home".into(),
                max_entities: 1_024
            })
        );
        let spec = parse(&format!(
            "{base}discovery = \"homie\"\ndiscovery_room = \"h-{{node}}\"\n"
        ))
        .expect("valid");
        assert_eq!(
            spec[0].discovery.as_ref().map(|d| d.kind),
            Some(DiscoveryKind::Homie)
        );
        for (extra, key) in [
            ("discovery = \"zwave\"", "mqtt.bridges[0].discovery"),
            (
                "discovery = \"homeassistant\"\ndiscovery_room = \"a room\"",
                "mqtt.bridges[0].discovery_room",
            ),
            (
                "discovery = \"homeassistant\"\ndiscovery_max_entities = 0",
                "mqtt.bridges[0].discovery_max_entities",
            ),
        ] {
            let e = parse(&format!("{base}{extra}\n")).unwrap_err();
            assert!(e.contains(key), "{extra}: {e}");
        }
    }

    #[test]
    fn minimal_bridge_gets_the_defaults() {
        let specs = parse("[[bridges]]\nname = \"local\"\nurl = \"mqtt://127.0.0.1:1884\"\n")
            .expect("valid");
        let s = &specs[0];
        assert_eq!(s.broker.host, "127.0.0.1");
        assert_eq!(s.broker.port, 1884);
        assert!(!s.broker.tls);
        assert!(s.client_id.starts_with("telehub-") && s.client_id.ends_with("-local"));
        assert_eq!(s.topics.len(), 1);
        assert_eq!(s.topics[0].template.filter(), "telehub/+/+/+");
        assert_eq!(s.command_topic.as_str(), "telehub/{room}/{device}/cmd");
        assert_eq!(s.ack_topic.as_str(), "telehub/{room}/{device}/ack");
        assert!(!s.mirror);
        assert!(parse("").expect("no bridges is fine").is_empty());
    }

    #[test]
    fn urls() {
        let u = parse_broker_url("mqtts://bob:secret@broker.example:8884").expect("valid");
        assert!(u.tls);
        assert_eq!(
            (
                u.host.as_str(),
                u.port,
                u.username.as_deref(),
                u.password.as_deref()
            ),
            ("broker.example", 8884, Some("bob"), Some("secret"))
        );
        assert_eq!(parse_broker_url("mqtts://h").expect("valid").port, 8883);
        assert_eq!(parse_broker_url("mqtt://h/").expect("valid").port, 1883);
        let v6 = parse_broker_url("mqtt://[::1]:1999").expect("valid");
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 1999));
        for (bad, needle) in [
            ("broker:1883", "must start"),
            ("http://h", "scheme `http`"),
            ("mqtt://h:99999", "port"),
            ("mqtt://h:0", "port"),
            ("mqtt://:1883", "no host"),
            ("mqtt://h/topic", "no path"),
        ] {
            let e = parse_broker_url(bad).expect_err(bad);
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("name = \"a b\"\nurl = \"mqtt://h\"", "mqtt.bridges[0].name"),
            ("name = \"a\"\nurl = \"h:1\"", "mqtt.bridges[0].url"),
            (
                "name = \"a\"\nurl = \"mqtt://h\"\n[[bridges.topics]]\ntemplate = \"x/{device}/{metric}\"",
                "mqtt.bridges[0].topics[0].template` : `x/{device}/{metric}` has no {room}",
            ),
            (
                "name = \"a\"\nurl = \"mqtt://h\"\n[[bridges.topics]]\ntemplate = \"x/{room}/{device}\"\nroom = \"g\"",
                "topics[0].room",
            ),
            (
                "name = \"a\"\nurl = \"mqtt://h\"\n[[bridges.topics]]\ntemplate = \"x/+/{device}\"",
                "use `{_}`",
            ),
            (
                "name = \"a\"\nurl = \"mqtt://h\"\ncommand_topic = \"c/{device}\"",
                "command_topic",
            ),
            (
                "name = \"a\"\nurl = \"mqtt://h\"\nack_topic = \"telehub/{room}/{device}/cmd\"",
                "must differ",
            ),
            (
                "name = \"a\"\nurl = \"mqtt://h\"\nmirror = true\n[[bridges.topics]]\ntemplate = \"home/{device}/{_}\"\nroom = \"g\"",
                "mqtt.bridges[0].mirror",
            ),
            ("name = \"a\"\nurl = \"mqtt://h\"\nca_file = \"x.pem\"", "only used with mqtts"),
            ("name = \"a\"\nurl = \"mqtt://h\"\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"", "only used with mqtts"),
            ("name = \"a\"\nurl = \"mqtts://h\"\ncert_file = \"c.pem\"", "key_file"),
            ("name = \"a\"\nurl = \"mqtts://h\"\nkey_file = \"k.pem\"", "cert_file"),
            ("name = \"a\"\nurl = \"mqtt://h\"\npassword = \"p\"", "username"),
            ("name = \"a\"\nurl = \"mqtt://h\"\ntopics = []", "topics"),
        ];
        for (body, needle) in cases {
            let text = format!("[[bridges]]\n{body}\n");
            let e = parse(&text).expect_err(body);
            // `key` and message are joined by the error's Display.
            let needle = needle.replace("` : `", "`: `");
            assert!(e.contains(&needle), "{body}\n=> {e}\n(wanted {needle})");
        }
        let e = parse("[[bridges]]\nname = \"a\"\nurl = \"mqtt://h\"\nport = 1\n").unwrap_err();
        assert!(e.contains("port"), "{e}");
        let e = parse(
            "[[bridges]]\nname = \"a\"\nurl = \"mqtt://h\"\n[[bridges]]\nname = \"a\"\nurl = \"mqtt://g\"\n",
        )
        .unwrap_err();
        assert!(e.contains("mqtt.bridges[1].name"), "{e}");
    }

    /// The commented `[[mqtt.bridges]]` example in config.toml, uncommented, is valid.
    #[test]
    fn the_config_toml_example_is_valid() {
        let text = include_str!("../../../config.toml");
        let start = text
            .find("# [[mqtt.bridges]]")
            .expect("config.toml has the example");
        let example: String = text[start..]
            .lines()
            .filter_map(|l| l.strip_prefix("# "))
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{}\n", l.replace("[[mqtt.", "[[")))
            .collect();
        let specs = parse(&example).unwrap_or_else(|e| panic!("{e}\n{example}"));
        assert_eq!(specs[0].name, "local");
        assert_eq!(
            specs[0].topics[0].template.as_str(),
            "telehub/{room}/{device}/{metric}"
        );
    }

    #[test]
    fn fixed_values_and_formats() {
        let specs = parse(
            "[[bridges]]\nname = \"home\"\nurl = \"mqtt://h\"\nclient_id = \"hub-1\"\n\
             [[bridges.topics]]\ntemplate = \"home/{device}/{_}\"\nroom = \"garden\"\nmetric = \"power\"\nformat = \"number\"\n\
             [[bridges.topics]]\ntemplate = \"senml/{room}\"\nformat = \"senml\"\n",
        )
        .expect("valid");
        let s = &specs[0];
        assert_eq!(s.client_id, "hub-1");
        assert_eq!(s.topics[0].room.as_deref(), Some("garden"));
        assert_eq!(s.topics[0].format, PayloadFormat::Number);
        assert_eq!(s.topics[1].format, PayloadFormat::Senml);
        let e = parse(
            "[[bridges]]\nname = \"a\"\nurl = \"mqtt://h\"\n[[bridges.topics]]\ntemplate = \"z/{room}/{device}\"\nmetric = \"m\"\nformat = \"object\"\n",
        )
        .unwrap_err();
        assert!(
            e.contains("topics[0].metric") && e.contains("object"),
            "{e}"
        );
    }
}
