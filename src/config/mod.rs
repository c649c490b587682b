//! Configuration: the `Settings` tree, its built-in defaults, `config.toml`, environment
//! overrides and validation.
//!
//! Precedence, lowest first: built-in defaults (which match the documented `config.toml`
//! at the repository root), the file given by `--config` (or `./config.toml` when it
//! exists), then `TELEHUB_{SECTION}_{KEY}` environment variables (for example
//! `TELEHUB_SERVER_LISTEN=0.0.0.0:8080`, `TELEHUB_LIMITS_OUTBOUND_QUEUE=1024`).
//! Only variables naming a known section are overrides, and an unknown key in one stops
//! start-up; any other `TELEHUB_*` (a test kit's `TELEHUB_BIN`, say) is ignored with a
//! warning ([`Settings::ignored_env`]), so a stray variable cannot stop the hub.
//! Command-line flags are applied by `main` on top of all that.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod auth;
mod cluster;
mod dashboard;
mod history;
mod influx;

pub use auth::{AuthConfig, AuthMode, KeyAlgorithm, KeyConfig, Secret};
pub(crate) use cluster::ClusterConfig;
pub use dashboard::DashboardConfig;
pub use history::{AckMode, HistoryConfig};
pub(crate) use influx::InfluxConfig;

/// Every setting of the hub. Each section has its own struct with defaults.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Where the hub listens and how it stops.
    pub server: ServerConfig,
    /// Bounds on everything a client can make the hub hold.
    pub limits: LimitsConfig,
    /// What the hub remembers of past readings, and where (see `sinks/history/`).
    pub history: HistoryConfig,
    /// Bridges to MQTT brokers (`[[mqtt.bridges]]`); none by default.
    pub mqtt: crate::sources::mqtt::MqttConfig,
    /// Tokens and allowed origins (see `src/auth/`); open (`mode = "none"`) by default.
    pub auth: AuthConfig,
    /// InfluxDB line protocol in (`POST /api/v2/write`, `POST /write`).
    pub influx: InfluxConfig,
    /// Alert rules (`[[alerts.rules]]`, see `src/alerts/`); none by default.
    pub alerts: crate::alerts::AlertsConfig,
    /// The browser dashboard's own settings (map tiles under GPS tracks).
    pub dashboard: DashboardConfig,
    /// Several hubs sharing rooms through Redis (see `src/cluster/`); off (one hub) by
    /// default.
    pub cluster: ClusterConfig,
}

/// `[server]`: the listening socket, logging and shutdown.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on. Port 0 picks a free port; the hub logs the real address.
    pub listen: SocketAddr,
    /// Log filter (tracing `EnvFilter` syntax); `RUST_LOG` wins when set.
    pub log: String,
    /// How long a graceful shutdown waits for connections to flush and close.
    pub shutdown_grace_ms: u64,
    /// How often the hub pings idle WebSocket clients, so half-open connections are
    /// found and closed (a client that answers nothing for two intervals is dropped).
    pub ping_interval_ms: u64,
    /// Serve the browser dashboard from this folder, read live from disk (for editing
    /// the page); `None` serves the copy compiled into the binary.
    pub dashboard_dir: Option<PathBuf>,
    /// `[server.tls]`: serve https and wss on the listener; `None` (the default) is
    /// plain http and ws.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Threads (single-threaded runtimes) the hub runs on; each room's sessions live on
    /// one of them, so a delivery never crosses threads. 0 (the default) is one per core.
    pub threads: usize,
}

/// `[server.tls]`: the certificate chain and key the listener presents, both PEM, read
/// at start (a bad one stops start-up naming its key) and again on SIGHUP.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server certificate first, then any intermediates (PEM).
    pub cert_file: PathBuf,
    /// The private key of the first certificate (PEM: PKCS#8, RSA or SEC1).
    pub key_file: PathBuf,
}

/// `limits.dashboard_linger_ms` at most: a dashboard is for people, and a second of
/// added latency is more than any batching is worth.
pub(crate) const MAX_LINGER_MS: u64 = 1_000;

/// `[limits]`: nothing a client sends can grow memory without bound.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Open TCP connections at most (also capped by the open-file limit); past it a new
    /// connection gets HTTP 503 `server_full`.
    pub max_connections: usize,
    /// Rooms at most; a connection that would create one more gets 503 `too_many_rooms`.
    pub max_rooms: usize,
    /// Members (devices and dashboards) per room; past it 503 `room_full`.
    pub max_members_per_room: usize,
    /// Largest WebSocket frame or message accepted, in bytes; bigger closes with 1009.
    pub max_frame_bytes: usize,
    /// Frames queued for one client at most; a dashboard whose queue fills is closed
    /// with 1013 `slow consumer` and recovers from history on reconnect.
    pub outbound_queue: usize,
    /// Items in one `readings` batch at most (`batch_too_large` past it).
    pub max_batch: usize,
    /// How long a dashboard's writer holds frames after the first one arrives, so that
    /// one write carries several (like Kafka's `linger.ms`); 0 (the default) writes at
    /// once. Trades up to this much latency for fewer syscalls per delivery; only while
    /// frames come densely (the previous one less than this long ago).
    pub dashboard_linger_ms: u64,
    /// Sustained readings (and other messages) per second per connection.
    pub rate_per_sec: f64,
    /// Burst allowance above `rate_per_sec`, in messages.
    pub rate_burst: f64,
    /// Commands waiting for an ack in one room at most (`too_many_pending` past it).
    pub max_pending_commands: usize,
    /// How long a command waits for its ack before it is forgotten.
    pub command_timeout_ms: u64,
    /// How long an empty room keeps its offset and deduplication state before it is freed.
    pub empty_room_ttl_ms: u64,
    /// Series one room may hold at most (`series_limit` past it), so one room cannot
    /// spend the hub-wide `history.max_series` of every other room.
    pub max_series_per_room: usize,
    /// Series one device (a client id in a room) may create at most (`series_limit`
    /// past it), so one device inventing metric names cannot fill its room.
    pub max_series_per_device: usize,
    /// How far ahead of the hub's clock a reading's `ts` may be, in milliseconds
    /// (`invalid_field` past it): a far-future point would never leave the retention
    /// window, so its series would never expire.
    pub max_future_ms: u64,
    /// What a dashboard gets when its queue fills, unless it asks with `?overflow=`:
    /// `close` (1013 `slow consumer`) or `latest` (the newest undelivered reading per
    /// series, then a `skipped` count).
    pub default_overflow: Overflow,
    /// How long a device that reaches the hub over HTTP (line protocol, HTTP ingest)
    /// stays in its room's presence (`"via":"http"`) after its last request.
    pub http_device_idle_ms: u64,
}

/// What happens to a dashboard whose outbound queue is full (`limits.default_overflow`,
/// `?overflow=` on the upgrade).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Overflow {
    /// Close it with 1013 `slow consumer`; it recovers from history with `?since=`.
    #[default]
    Close,
    /// Keep only the newest undelivered reading per series until it drains, then send
    /// those and a `skipped` count; commands, acks and presence are still queued whole.
    Latest,
}

impl Overflow {
    /// Parses a `?overflow=` value.
    pub fn parse(s: &str) -> Option<Overflow> {
        match s {
            "close" => Some(Overflow::Close),
            "latest" => Some(Overflow::Latest),
            _ => None,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            log: "info".to_string(),
            shutdown_grace_ms: 5_000,
            ping_interval_ms: 30_000,
            dashboard_dir: None,
            tls: None,
            threads: 0,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 65_536,
            max_rooms: 1_024,
            max_members_per_room: 1_024,
            max_frame_bytes: 64 * 1024,
            outbound_queue: 1_024,
            max_batch: 256,
            dashboard_linger_ms: 0,
            rate_per_sec: 200.0,
            rate_burst: 400.0,
            max_pending_commands: 256,
            command_timeout_ms: 60_000,
            empty_room_ttl_ms: 300_000,
            max_series_per_room: 2_000,
            max_series_per_device: 256,
            max_future_ms: 86_400_000,
            default_overflow: Overflow::Close,
            http_device_idle_ms: 60_000,
        }
    }
}

/// A configuration problem: which source, which key, what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("config error in {source_name}: key `{key}`: {message}")]
    Key {
        source_name: String,
        key: String,
        message: String,
    },
    #[error("config error: environment variable {var}: {message}")]
    Env { var: String, message: String },
}

/// The prefix of environment overrides.
const ENV_PREFIX: &str = "TELEHUB_";
/// Environment variables with the prefix that are not overrides (read by the CLI).
const ENV_NOT_OVERRIDES: &[&str] = &["TELEHUB_CONFIG"];

impl Settings {
    /// Loads settings: defaults, then `path` (or `./config.toml` if present and no path was
    /// given), then environment overrides, then validation.
    pub fn load(path: Option<&Path>) -> Result<Settings, ConfigError> {
        let implicit = Path::new("config.toml");
        let (text, name) = match path {
            Some(p) => (
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?,
                p.display().to_string(),
            ),
            None if implicit.exists() => (
                std::fs::read_to_string(implicit).map_err(|source| ConfigError::Read {
                    path: implicit.to_path_buf(),
                    source,
                })?,
                implicit.display().to_string(),
            ),
            None => (String::new(), "built-in defaults".to_string()),
        };
        Self::from_sources(&text, &name, std::env::vars())
    }

    /// Builds settings from TOML text and a set of environment variables. Split out so
    /// tests can drive it without touching the process environment.
    pub fn from_sources(
        text: &str,
        source_name: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: source_name.to_string(),
            message: e.to_string(),
        })?;
        let mut from_env: Vec<(String, String)> = Vec::new();
        let sections = known_sections();
        for (var, value) in env {
            let Some((section, key)) = override_of(&var, &sections) else {
                continue;
            };
            let entry = table
                .entry(section.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            let Some(section_table) = entry.as_table_mut() else {
                return Err(ConfigError::Env {
                    var,
                    message: format!("`{section}` is not a section"),
                });
            };
            section_table.insert(key.clone(), env_value(&value));
            from_env.push((format!("{section}.{key}"), var));
        }
        let settings: Settings = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| {
                let key = e.path().to_string();
                let message = e.inner().message().to_string();
                match from_env.iter().find(|(k, _)| key.starts_with(k.as_str())) {
                    Some((_, var)) => ConfigError::Env {
                        var: var.clone(),
                        message: format!("key `{key}`: {message}"),
                    },
                    None => ConfigError::Key {
                        source_name: source_name.to_string(),
                        key,
                        message,
                    },
                }
            })?;
        settings.validate().map_err(|(key, message)| {
            match from_env.iter().find(|(k, _)| k == key) {
                Some((_, var)) => ConfigError::Env {
                    var: var.clone(),
                    message: format!("key `{key}`: {message}"),
                },
                None => ConfigError::Key {
                    source_name: source_name.to_string(),
                    key: key.to_string(),
                    message,
                },
            }
        })?;
        // The certificate and key are read and matched now, so a bad one is a config
        // error (exit 2) naming `server.tls.cert_file` or `server.tls.key_file`.
        if let Some(tls) = &settings.server.tls {
            crate::net::tls::load(tls).map_err(|(key, message)| ConfigError::Key {
                source_name: source_name.to_string(),
                key: key.to_string(),
                message,
            })?;
        }
        settings
            .auth
            .validate()
            .map_err(|(key, message)| ConfigError::Key {
                source_name: source_name.to_string(),
                key,
                message,
            })?;
        // Every rule is checked here, so a bad one stops start-up naming it.
        settings
            .alerts
            .validate()
            .map_err(|(key, message)| ConfigError::Key {
                source_name: source_name.to_string(),
                key,
                message,
            })?;
        // Bridges are checked whole here (URLs, templates, fixed values), so a bad one
        // stops start-up naming its key, e.g. `mqtt.bridges[0].topics[1].template`.
        settings.mqtt.validate().map_err(|e| match e {
            crate::sources::mqtt::BridgeError::Config { key, message } => ConfigError::Key {
                source_name: source_name.to_string(),
                key,
                message,
            },
            other => ConfigError::Key {
                source_name: source_name.to_string(),
                key: "mqtt".into(),
                message: other.to_string(),
            },
        })?;
        // Sinks after the bridges: an `mqtt` sink names one.
        let bridges: Vec<&str> = settings
            .mqtt
            .bridges
            .iter()
            .map(|b| b.name.as_str())
            .collect();
        crate::alerts::notify::validate(&settings.alerts.sinks, &bridges).map_err(
            |(key, message)| ConfigError::Key {
                source_name: source_name.to_string(),
                key,
                message,
            },
        )?;
        Ok(settings)
    }

    /// Checks the values that types alone cannot: zero sizes, tiny frames, bad rates.
    fn validate(&self) -> Result<(), (&'static str, String)> {
        let l = &self.limits;
        let positive: [(&'static str, usize); 8] = [
            ("limits.max_connections", l.max_connections),
            ("limits.max_rooms", l.max_rooms),
            ("limits.max_members_per_room", l.max_members_per_room),
            ("limits.outbound_queue", l.outbound_queue),
            ("limits.max_batch", l.max_batch),
            ("limits.max_pending_commands", l.max_pending_commands),
            ("limits.max_series_per_room", l.max_series_per_room),
            ("limits.max_series_per_device", l.max_series_per_device),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err((key, "must be at least 1".into()));
            }
        }
        if l.max_frame_bytes < 256 {
            return Err(("limits.max_frame_bytes", "must be at least 256".into()));
        }
        if l.dashboard_linger_ms > MAX_LINGER_MS {
            return Err((
                "limits.dashboard_linger_ms",
                format!("must be at most {MAX_LINGER_MS}"),
            ));
        }
        if !(l.rate_per_sec.is_finite() && l.rate_per_sec > 0.0) {
            return Err(("limits.rate_per_sec", "must be a positive number".into()));
        }
        if !(l.rate_burst.is_finite() && l.rate_burst >= 1.0) {
            return Err(("limits.rate_burst", "must be at least 1".into()));
        }
        if self.server.threads > crate::runtimes::MAX_THREADS {
            return Err((
                "server.threads",
                format!("must be at most {}", crate::runtimes::MAX_THREADS),
            ));
        }
        if self.server.ping_interval_ms < 100 {
            return Err(("server.ping_interval_ms", "must be at least 100".into()));
        }
        if l.http_device_idle_ms < 1_000 {
            return Err(("limits.http_device_idle_ms", "must be at least 1000".into()));
        }
        self.influx.validate()?;
        self.dashboard.validate()?;
        self.cluster.validate()?;
        if self.cluster.enabled() && !self.mqtt.bridges.is_empty() {
            // Every hub of a cluster bridges the broker; one shared subscription gives
            // each reading to one of them, and each hub's session is named after it.
            if let Some(b) = self.mqtt.bridges.iter().find(|b| b.shared_group.is_none()) {
                return Err((
                    "mqtt.bridges.shared_group",
                    format!(
                        "bridge `{}` on a cluster hub needs protocol = \"5\" and a shared_group, the same on every hub, so that the broker gives each reading to one hub (docs/MQTT.md, \"Several hubs\")",
                        b.name
                    ),
                ));
            }
            if self.cluster.node_id.is_empty() {
                return Err((
                    "cluster.node_id",
                    "must be set on a cluster hub with [[mqtt.bridges]]: each bridge's MQTT session is named after it, and must be the same after a restart".into(),
                ));
            }
        }
        self.history.validate()
    }
}

/// The sections of [`Settings`] (`server`, `limits`, ...), read off its serialised
/// defaults so a new section is known without a list to keep in step.
fn known_sections() -> Vec<String> {
    match toml::Value::try_from(Settings::default()) {
        Ok(toml::Value::Table(t)) => t.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

/// `(section, key)`, lowercased, if `var` is `TELEHUB_{SECTION}_{KEY}` of a known section.
/// Anything else with the prefix (`TELEHUB_CONFIG`, a test kit's `TELEHUB_BIN`) is not
/// an override: a stray variable in the environment must not stop start-up.
fn override_of(var: &str, sections: &[String]) -> Option<(String, String)> {
    let rest = var.strip_prefix(ENV_PREFIX)?;
    if ENV_NOT_OVERRIDES.contains(&var) {
        return None;
    }
    let (section, key) = rest.split_once('_')?;
    let section = section.to_ascii_lowercase();
    (!key.is_empty() && sections.contains(&section)).then(|| (section, key.to_ascii_lowercase()))
}

impl Settings {
    /// The `TELEHUB_*` variables of `env` that are not overrides and are ignored (for
    /// the binary to warn about once logging is set up), `TELEHUB_CONFIG` aside.
    pub fn ignored_env(env: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
        let sections = known_sections();
        env.into_iter()
            .map(|(var, _)| var)
            .filter(|var| {
                var.starts_with(ENV_PREFIX)
                    && !ENV_NOT_OVERRIDES.contains(&var.as_str())
                    && override_of(var, &sections).is_none()
            })
            .collect()
    }
}

/// An environment value as TOML: numbers and booleans keep their type, anything else is a
/// string (so `TELEHUB_SERVER_LISTEN=127.0.0.1:0` needs no quotes).
fn env_value(raw: &str) -> toml::Value {
    let doc = format!("v = {raw}");
    match toml::from_str::<toml::Table>(&doc) {
        Ok(mut t) => t
            .remove("v")
            .unwrap_or_else(|| toml::Value::String(raw.to_string())),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::from_sources(
            text,
            "test.toml",
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    /// The error a config file with `toml` (and no environment) is refused with.
    fn refusal(toml: &str) -> String {
        load(toml, &[]).unwrap_err().to_string()
    }

    #[test]
    fn cluster_settings_are_checked() {
        let e = load("[cluster]\nredis_url = \"http://x\"\n", &[]).unwrap_err();
        assert!(e.to_string().contains("cluster.redis_url"), "{e}");
        let e = load("", &[("TELEHUB_CLUSTER_KEY_PREFIX", "a b")]).map(|_| ());
        assert!(e.is_ok(), "the prefix is only checked with a URL");
        let e = load(
            "[cluster]\nredis_url = \"redis://127.0.0.1:1\"\nkey_prefix = \"a{b\"\n",
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("cluster.key_prefix"), "{e}");
        let s = load("[cluster]\nredis_url = \"redis://127.0.0.1:1/0\"\n", &[]).expect("valid");
        assert!(s.cluster.enabled());
        let e = load(
            "[cluster]\nredis_url = \"redis://h\"\n[[mqtt.bridges]]\nname = \"b\"\nurl = \"mqtt://h\"\n",
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("shared_group"), "{e}");
        let e = load(
            "[cluster]\nredis_url = \"redis://h\"\n[[mqtt.bridges]]\nname = \"b\"\nurl = \"mqtt://h\"\nprotocol = \"5\"\nshared_group = \"g\"\n",
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("cluster.node_id"), "{e}");
        load(
            "[cluster]\nredis_url = \"redis://h\"\nnode_id = \"a\"\n[[mqtt.bridges]]\nname = \"b\"\nurl = \"mqtt://h\"\nprotocol = \"5\"\nshared_group = \"g\"\n",
            &[],
        )
        .expect("a bridge with a shared subscription on a named cluster hub");
    }

    #[test]
    fn defaults_need_no_file() {
        let s = load("", &[]).expect("defaults are valid");
        assert_eq!(s.server.listen, default_listen());
        assert_eq!(s.limits.outbound_queue, 1024);
    }

    #[test]
    fn the_documented_config_file_matches_the_defaults() {
        let text = include_str!("../../config.toml");
        let s = load(text, &[]).expect("config.toml is valid");
        let d = Settings::default();
        assert_eq!(
            toml::to_string(&s).expect("serialise"),
            toml::to_string(&d).expect("serialise"),
            "config.toml and the built-in defaults disagree"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let err = load("[server]\nlisen = \"x\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("test.toml"), "{err}");
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn linger_and_threads_are_bounded_and_named() {
        let err = refusal("[limits]\ndashboard_linger_ms = 1001\n");
        assert!(err.contains("limits.dashboard_linger_ms"), "{err}");
        let err = refusal("[server]\nthreads = 257\n");
        assert!(err.contains("server.threads"), "{err}");
        let s = load(
            "[limits]\ndashboard_linger_ms = 5\n[server]\nthreads = 4\n",
            &[],
        )
        .expect("valid");
        assert_eq!((s.limits.dashboard_linger_ms, s.server.threads), (5, 4));
    }

    #[test]
    fn wrong_type_and_bad_address_name_the_key() {
        let err = load("[limits]\noutbound_queue = \"many\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("limits.outbound_queue"), "{err}");
        let err = load("[server]\nlisten = \"nowhere\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("server.listen"), "{err}");
    }

    #[test]
    fn environment_overrides_the_file_and_is_named_when_bad() {
        let s = load(
            "[server]\nlisten = \"127.0.0.1:9000\"\n",
            &[("TELEHUB_SERVER_LISTEN", "127.0.0.1:0")],
        )
        .expect("valid");
        assert_eq!(s.server.listen.port(), 0);
        let s = load("", &[("TELEHUB_LIMITS_OUTBOUND_QUEUE", "7")]).expect("valid");
        assert_eq!(s.limits.outbound_queue, 7);
        let err = load("", &[("TELEHUB_LIMITS_OUTBOUND_QUEUE", "0")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("TELEHUB_LIMITS_OUTBOUND_QUEUE"), "{err}");
    }

    #[test]
    fn stray_telehub_variables_are_ignored_but_unknown_keys_of_known_sections_are_not() {
        let env = [
            ("TELEHUB_BIN", "/x/telehub"),
            ("TELEHUB_CONFIG", "/x/hub.toml"),
            ("TELEHUB_NOSECTION_KEY", "1"),
            ("TELEHUB_LIMITS_", "1"),
            ("TELEHUB_LIMITS_MAX_ROOMS", "5"),
        ];
        let s = load("", &env).expect("strays do not stop start-up");
        assert_eq!(s.limits.max_rooms, 5);
        let vars = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        assert_eq!(
            Settings::ignored_env(vars),
            ["TELEHUB_BIN", "TELEHUB_NOSECTION_KEY", "TELEHUB_LIMITS_"]
        );
        let err = load("", &[("TELEHUB_LIMITS_NO_SUCH_KEY", "1")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("TELEHUB_LIMITS_NO_SUCH_KEY"), "{err}");
    }

    #[test]
    fn history_keys_load_from_file_and_environment() {
        let s = load(
            "[history]\npersist = false\nretention_ms = 60000\n",
            &[
                ("TELEHUB_HISTORY_DATA_DIR", "/tmp/th"),
                ("TELEHUB_HISTORY_MAX_SERIES", "5"),
            ],
        )
        .expect("valid");
        assert!(!s.history.persist);
        assert_eq!(s.history.retention_ms, 60_000);
        assert_eq!(s.history.max_series, 5);
        assert_eq!(s.history.data_dir, PathBuf::from("/tmp/th"));
        let err = refusal("[history]\nflush_interval_ms = 0\n");
        assert!(err.contains("history.flush_interval_ms"), "{err}");
        let err = refusal("[history]\npoints = 1\n");
        assert!(err.contains("points"), "{err}");
    }

    #[test]
    fn mqtt_bridges_are_validated_with_their_key() {
        let s = load(
            "[[mqtt.bridges]]\nname = \"b\"\nurl = \"mqtt://127.0.0.1:1883\"\n",
            &[],
        )
        .expect("valid");
        assert_eq!(s.mqtt.bridges.len(), 1);
        let err = load(
            "[[mqtt.bridges]]\nname = \"b\"\nurl = \"mqtt://h\"\n[[mqtt.bridges.topics]]\ntemplate = \"x/{device}\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("test.toml"), "{err}");
        assert!(err.contains("mqtt.bridges[0].topics[0].template"), "{err}");
        let err = load(
            "[[mqtt.bridges]]\nname = \"b\"\nurl = \"mqtt://h\"\nqos = 2\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("qos"), "{err}");
    }

    #[test]
    fn server_tls_files_are_checked_at_load_naming_the_key() {
        let err = load(
            "[server.tls]\ncert_file = \"/nonexistent/cert.pem\"\nkey_file = \"/nonexistent/key.pem\"\n",
            &[],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("test.toml"), "{err}");
        assert!(err.contains("server.tls.cert_file"), "{err}");
        let err = load("[server.tls]\ncert_file = \"c.pem\"\n", &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("key_file"), "{err}");
    }

    #[test]
    fn syntax_errors_name_the_file() {
        let err = refusal("[server\n");
        assert!(err.contains("test.toml"), "{err}");
    }
}
