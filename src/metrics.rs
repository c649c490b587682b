//! The hub's metrics: one `prometheus-client` [`Registry`] and the typed handles the
//! rest of the hub updates. `GET /metrics` ([`crate::api::metrics`]) only encodes it.
//!
//! The hot path never touches the registry. Counters and gauges are atomics, and every
//! labelled child (`role`, `code`, `reason`) is created here at start and kept as a
//! handle, so a reading never takes a [`Family`]'s lock or allocates a label set.
//! Histograms take a short mutex inside `prometheus-client`, so they are only observed
//! once per join, per close or per commit, never per reading.
//!
//! What other stages own is read at scrape time by collectors registered here
//! ([`Metrics::register_collector`]): the history's gauges and the MQTT bridges' state
//! (labelled `bridge`), whose counters `GET /api/bridges` reads too.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use telehub_protocol::codes::ErrorCode;
use telehub_protocol::role::Role;

/// Why a connection was refused before the upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejection {
    InvalidRoom,
    InvalidClient,
    InvalidRole,
    InvalidQuery,
    NotFound,
    UpgradeRequired,
    ServerFull,
    TooManyRooms,
    RoomFull,
    /// `[auth]`: no token, or a bad one (401).
    Unauthorized,
    /// `[auth]`: a valid token without this room, role or client id (403).
    Forbidden,
    /// An `Origin` that may not open WebSockets here (403).
    OriginNotAllowed,
    /// A `Host` the hub does not answer to (403, `auth.allowed_hosts`).
    HostNotAllowed,
    /// A token in the query string (400).
    TokenInQuery,
    /// The request stayed incomplete past the handshake timeout (408).
    RequestTimeout,
    /// The request is not valid HTTP/1.1 (400).
    BadRequest,
    /// The handshake request is over its size or header-count limit (431).
    HeadersTooLarge,
    /// `[server.tls]`: the TLS handshake failed or timed out (the connection is closed).
    TlsHandshake,
}

impl Rejection {
    pub(crate) const ALL: [Rejection; 18] = [
        Rejection::InvalidRoom,
        Rejection::InvalidClient,
        Rejection::InvalidRole,
        Rejection::InvalidQuery,
        Rejection::NotFound,
        Rejection::UpgradeRequired,
        Rejection::ServerFull,
        Rejection::TooManyRooms,
        Rejection::RoomFull,
        Rejection::Unauthorized,
        Rejection::Forbidden,
        Rejection::OriginNotAllowed,
        Rejection::HostNotAllowed,
        Rejection::TokenInQuery,
        Rejection::RequestTimeout,
        Rejection::BadRequest,
        Rejection::HeadersTooLarge,
        Rejection::TlsHandshake,
    ];

    /// The `error` code of the JSON body, also the metric label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Rejection::InvalidRoom => "invalid_room",
            Rejection::InvalidClient => "invalid_client",
            Rejection::InvalidRole => "invalid_role",
            Rejection::InvalidQuery => "invalid_query",
            Rejection::NotFound => "not_found",
            Rejection::UpgradeRequired => "upgrade_required",
            Rejection::ServerFull => "server_full",
            Rejection::TooManyRooms => "too_many_rooms",
            Rejection::RoomFull => "room_full",
            Rejection::Unauthorized => "unauthorized",
            Rejection::Forbidden => "forbidden",
            Rejection::OriginNotAllowed => "origin_not_allowed",
            Rejection::HostNotAllowed => "host_not_allowed",
            Rejection::TokenInQuery => "token_in_query",
            Rejection::RequestTimeout => "request_timeout",
            Rejection::BadRequest => "bad_request",
            Rejection::HeadersTooLarge => "headers_too_large",
            Rejection::TlsHandshake => "tls_handshake",
        }
    }
}

/// `role="device"|"dashboard"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RoleLabel {
    role: &'static str,
}

/// `code="invalid_json"`, ...: the codes of [`ErrorCode::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CodeLabel {
    code: &'static str,
}

/// `reason="server_full"`, ...: the codes of [`Rejection::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Buckets of `telehub_replay_frames`: 0, then powers of 4 up to 65,536 (the replay is
/// bounded by `history.max_log_entries`).
fn replay_buckets() -> impl Iterator<Item = f64> {
    std::iter::once(0.0).chain(exponential_buckets(1.0, 4.0, 9))
}

/// Buckets of `telehub_outbound_queue_depth_at_close`: 0, then powers of 4 up to
/// 16,384 (the queue holds `limits.outbound_queue`, 1,024 by default, plus a join's
/// replay until the writer first drains it).
fn queue_depth_buckets() -> impl Iterator<Item = f64> {
    std::iter::once(0.0).chain(exponential_buckets(1.0, 4.0, 8))
}

/// Buckets of `telehub_store_commit_seconds`: 0.5 ms doubling up to about 8 s.
fn commit_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 2.0, 15)
}

/// Every metric of one hub, and the registry that exposes them.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    devices: Gauge,
    dashboards: Gauge,
    rooms: Gauge,
    readings_in: Counter,
    frames_out: Counter,
    slow_consumers: Counter,
    readings_skipped: Counter,
    duplicates: Counter,
    commands: Counter,
    /// By [`ErrorCode::index`].
    errors: [Counter; ErrorCode::ALL.len()],
    /// By [`ErrorCode::index`] of the error each message would have had.
    errors_suppressed: [Counter; ErrorCode::ALL.len()],
    /// By `Rejection as usize`.
    rejected: [Counter; Rejection::ALL.len()],
    /// `telehub_auth_refused_total{reason}`, by the auth module's reasons (created in
    /// [`Metrics::auth_refused`]; empty until then).
    auth_refused: Vec<Counter>,
    replay_frames: Histogram,
    queue_depth_at_close: Histogram,
    store_commit_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric the hub owns and creates each labelled child up front.
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::default();
        // `Registry::register` adds the full stop to each help text, and the encoder
        // adds `_total` to each counter's name.
        let connections = Family::<RoleLabel, Gauge>::default();
        registry.register(
            "telehub_connections",
            "Open WebSocket connections by role",
            connections.clone(),
        );
        let role = |r: Role| connections.get_or_create_owned(&RoleLabel { role: r.as_str() });
        let (devices, dashboards) = (role(Role::Device), role(Role::Dashboard));

        let rooms = Gauge::default();
        registry.register("telehub_rooms", "Rooms held by the hub", rooms.clone());
        let mut counter = |name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let readings_in = counter("telehub_readings_in", "Readings accepted");
        let frames_out = counter(
            "telehub_frames_out",
            "Frames queued to clients (each delivery counts)",
        );
        let slow_consumers = counter(
            "telehub_slow_consumer_disconnects",
            "Connections closed with 1013 because their queue filled",
        );
        let readings_skipped = counter(
            "telehub_readings_skipped",
            "Readings replaced by a newer one of their series before an overflow=latest dashboard was sent them",
        );
        let duplicates = counter(
            "telehub_duplicate_readings",
            "Readings dropped because their seq was already accepted",
        );
        let commands = counter("telehub_commands", "Commands forwarded to devices");

        let by_code = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<CodeLabel, Counter>::default();
            registry.register(name, help, family.clone());
            ErrorCode::ALL.map(|c| family.get_or_create_owned(&CodeLabel { code: c.as_str() }))
        };
        let errors = by_code(
            &mut registry,
            "telehub_errors",
            "Error frames sent, by code (a rate_limited flood notice counts once per notice \
             sent; the invalid messages it stands for are in telehub_errors_suppressed_total)",
        );
        let errors_suppressed = by_code(
            &mut registry,
            "telehub_errors_suppressed",
            "Invalid messages dropped without their error frame because the client was over \
             its rate limit, by the code they would have had",
        );
        let reasons = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "telehub_connections_rejected",
            "Refused WebSocket upgrades, by reason",
            reasons.clone(),
        );
        let rejected = Rejection::ALL
            .map(|r| reasons.get_or_create_owned(&ReasonLabel { reason: r.as_str() }));

        let replay_frames = Histogram::new(replay_buckets());
        registry.register(
            "telehub_replay_frames",
            "Readings replayed to a dashboard that joined with since, per join",
            replay_frames.clone(),
        );
        let queue_depth_at_close = Histogram::new(queue_depth_buckets());
        registry.register(
            "telehub_outbound_queue_depth_at_close",
            "Frames still queued in a connection's mailbox when the hub decided to close it \
             (sent first on a shutdown or a protocol-error close, dropped on the others)",
            queue_depth_at_close.clone(),
        );
        let store_commit_seconds = Histogram::new(commit_buckets());
        registry.register_with_unit(
            "telehub_store_commit",
            "Time of one SQLite commit of the history store",
            Unit::Seconds,
            store_commit_seconds.clone(),
        );
        Metrics {
            registry,
            devices,
            dashboards,
            rooms,
            readings_in,
            frames_out,
            slow_consumers,
            readings_skipped,
            duplicates,
            commands,
            errors,
            errors_suppressed,
            rejected,
            auth_refused: Vec::new(),
            replay_frames,
            queue_depth_at_close,
            store_commit_seconds,
        }
    }

    /// Registers `telehub_auth_refused_total{reason}` with one child per `reasons` entry,
    /// all created now, and returns their handles in that order (once, before the hub
    /// starts; the auth module names the reasons, so this file needs no part of it).
    pub(crate) fn auth_refused(&mut self, reasons: &[&'static str]) -> Vec<Counter> {
        if self.auth_refused.is_empty() {
            let family = Family::<ReasonLabel, Counter>::default();
            self.registry.register(
                "telehub_auth_refused",
                "Requests and connections refused by [auth] (and the Origin check), by reason",
                family.clone(),
            );
            self.auth_refused = reasons
                .iter()
                .map(|r| family.get_or_create_owned(&ReasonLabel { reason: r }))
                .collect();
        }
        self.auth_refused.clone()
    }

    /// Adds metrics that another stage owns, read at each scrape (before the hub starts).
    pub(crate) fn register_collector(&mut self, collector: impl Collector) {
        self.registry.register_collector(Box::new(collector));
    }

    /// Registers a metric another stage owns and updates (the alerts' gauges).
    pub(crate) fn register(
        &mut self,
        name: &str,
        help: &str,
        metric: impl prometheus_client::registry::Metric,
    ) {
        self.registry.register(name, help, metric);
    }

    /// The registry, for `GET /metrics` to encode.
    pub(crate) fn registry(&self) -> &Registry {
        &self.registry
    }

    pub(crate) fn connected(&self, role: Role, delta: i64) {
        match role {
            Role::Device => self.devices.inc_by(delta),
            Role::Dashboard => self.dashboards.inc_by(delta),
        };
    }

    /// The number of rooms the hub holds now (set under the room map's lock).
    pub(crate) fn rooms(&self, n: usize) {
        self.rooms.set(n as i64);
    }

    pub(crate) fn readings_in(&self, n: usize) {
        self.readings_in.inc_by(n as u64);
    }

    pub(crate) fn frames_out(&self, n: usize) {
        self.frames_out.inc_by(n as u64);
    }

    pub(crate) fn slow_consumer(&self) {
        self.slow_consumers.inc();
    }

    /// A coalescing dashboard will never be sent one reading (its series' latest replaced it).
    pub(crate) fn reading_skipped(&self) {
        self.readings_skipped.inc();
    }

    pub(crate) fn duplicates(&self, n: usize) {
        self.duplicates.inc_by(n as u64);
    }

    pub(crate) fn command(&self) {
        self.commands.inc();
    }

    /// An error frame with `code` was queued for a client.
    pub(crate) fn error(&self, code: ErrorCode) {
        self.errors[code.index()].inc();
    }

    /// An invalid message got no error frame (its client is flooding).
    pub(crate) fn error_suppressed(&self, code: ErrorCode) {
        self.errors_suppressed[code.index()].inc();
    }

    pub(crate) fn rejected(&self, why: Rejection) {
        self.rejected[why as usize].inc();
    }

    /// A dashboard joined with `since` and got `frames` readings replayed.
    pub(crate) fn replayed(&self, frames: usize) {
        self.replay_frames.observe(frames as f64);
    }

    /// The histogram each mailbox observes its queue depth into when it is closed.
    pub(crate) fn queue_depth_at_close(&self) -> &Histogram {
        &self.queue_depth_at_close
    }

    /// The histogram the store's writer thread times its commits into (a shared handle:
    /// the store holds a clone and knows nothing of the hub).
    pub(crate) fn store_commit_seconds(&self) -> &Histogram {
        &self.store_commit_seconds
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(m: &Metrics) -> String {
        let mut out = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut out, m.registry()).unwrap();
        out
    }

    /// Every name, type and help line the hub exposed before prometheus-client, plus the
    /// new ones: scrapers and dashboards depend on them.
    #[test]
    fn renders_every_family_with_its_type_and_help() {
        let m = Metrics::new();
        m.connected(Role::Dashboard, 2);
        m.readings_in(3);
        m.error(ErrorCode::InvalidJson);
        m.error_suppressed(ErrorCode::InvalidJson);
        m.rejected(Rejection::RoomFull);
        m.replayed(5);
        let text = render(&m);
        for (name, kind, help) in [
            (
                "telehub_connections",
                "gauge",
                "Open WebSocket connections by role.",
            ),
            ("telehub_rooms", "gauge", "Rooms held by the hub."),
            ("telehub_readings_in_total", "counter", "Readings accepted."),
            (
                "telehub_frames_out_total",
                "counter",
                "Frames queued to clients (each delivery counts).",
            ),
            (
                "telehub_slow_consumer_disconnects_total",
                "counter",
                "Connections closed with 1013 because their queue filled.",
            ),
            (
                "telehub_readings_skipped_total",
                "counter",
                "Readings replaced by a newer one of their series before an overflow=latest dashboard was sent them.",
            ),
            (
                "telehub_duplicate_readings_total",
                "counter",
                "Readings dropped because their seq was already accepted.",
            ),
            (
                "telehub_commands_total",
                "counter",
                "Commands forwarded to devices.",
            ),
            (
                "telehub_errors_total",
                "counter",
                "Error frames sent, by code",
            ),
            (
                "telehub_errors_suppressed_total",
                "counter",
                "Invalid messages dropped",
            ),
            (
                "telehub_connections_rejected_total",
                "counter",
                "Refused WebSocket upgrades, by reason.",
            ),
            ("telehub_replay_frames", "histogram", "Readings replayed"),
            (
                "telehub_outbound_queue_depth_at_close",
                "histogram",
                "Frames still queued",
            ),
            (
                "telehub_store_commit_seconds",
                "histogram",
                "Time of one SQLite commit",
            ),
        ] {
            assert!(
                text.contains(&format!("# HELP {name} {help}")),
                "help of {name}:\n{text}"
            );
            assert!(
                text.lines().any(|l| l == format!("# TYPE {name} {kind}")),
                "type of {name}:\n{text}"
            );
        }
        for line in [
            "telehub_connections{role=\"device\"} 0",
            "telehub_connections{role=\"dashboard\"} 2",
            "telehub_rooms 0",
            "telehub_readings_in_total 3",
            "telehub_errors_total{code=\"invalid_json\"} 1",
            "telehub_errors_total{code=\"series_limit\"} 0",
            "telehub_errors_suppressed_total{code=\"invalid_json\"} 1",
            "telehub_connections_rejected_total{reason=\"room_full\"} 1",
            "telehub_connections_rejected_total{reason=\"server_full\"} 0",
            "telehub_replay_frames_bucket{le=\"4\"} 0",
            "telehub_replay_frames_bucket{le=\"16\"} 1",
            "telehub_replay_frames_count 1",
            "telehub_store_commit_seconds_count 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
        // Every label child exists before anything happened to it.
        let mut m = Metrics::new();
        let refused = m.auth_refused(&["bad_signature", "forbidden_room"]);
        refused[1].inc();
        let auth_text = render(&m);
        for line in [
            "telehub_auth_refused_total{reason=\"bad_signature\"} 0",
            "telehub_auth_refused_total{reason=\"forbidden_room\"} 1",
        ] {
            assert!(
                auth_text.lines().any(|l| l == line),
                "missing `{line}` in\n{auth_text}"
            );
        }
        let codes = text
            .lines()
            .filter(|l| l.starts_with("telehub_errors_total{"));
        assert_eq!(codes.count(), ErrorCode::ALL.len());
    }
}
