//! Counters of the hub and their Prometheus text at `GET /metrics`.
//!
//! Plain atomics: the hot path adds to a counter once per reading (not per delivery:
//! fan-out adds the number of dashboards in one step), and nothing here takes a lock.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

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
}

impl Rejection {
    pub(crate) const ALL: [Rejection; 9] = [
        Rejection::InvalidRoom,
        Rejection::InvalidClient,
        Rejection::InvalidRole,
        Rejection::InvalidQuery,
        Rejection::NotFound,
        Rejection::UpgradeRequired,
        Rejection::ServerFull,
        Rejection::TooManyRooms,
        Rejection::RoomFull,
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
        }
    }
}

/// All counters of one hub.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    devices: AtomicI64,
    dashboards: AtomicI64,
    pub readings_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub slow_consumers: AtomicU64,
    pub duplicates: AtomicU64,
    pub commands: AtomicU64,
    errors: [AtomicU64; ErrorCode::ALL.len()],
    rejected: [AtomicU64; Rejection::ALL.len()],
}

impl Metrics {
    pub(crate) fn connected(&self, role: Role, delta: i64) {
        match role {
            Role::Device => self.devices.fetch_add(delta, Relaxed),
            Role::Dashboard => self.dashboards.fetch_add(delta, Relaxed),
        };
    }

    pub(crate) fn error(&self, code: ErrorCode) {
        self.errors[code.index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn rejected(&self, why: Rejection) {
        self.rejected[why as usize].fetch_add(1, Relaxed);
    }

    /// Renders the Prometheus text exposition format.
    pub(crate) fn render(&self, rooms: usize, out: &mut String) {
        let mut family = |name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(
            "telehub_connections",
            "gauge",
            "Open WebSocket connections by role.",
        );
        let _ = writeln!(
            out,
            "telehub_connections{{role=\"device\"}} {}\ntelehub_connections{{role=\"dashboard\"}} {}",
            self.devices.load(Relaxed),
            self.dashboards.load(Relaxed)
        );
        let mut simple = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        simple(
            "telehub_rooms",
            "gauge",
            "Rooms held by the hub.",
            rooms as u64,
        );
        simple(
            "telehub_readings_in_total",
            "counter",
            "Readings accepted.",
            self.readings_in.load(Relaxed),
        );
        simple(
            "telehub_frames_out_total",
            "counter",
            "Frames queued to clients (each delivery counts).",
            self.frames_out.load(Relaxed),
        );
        simple(
            "telehub_slow_consumer_disconnects_total",
            "counter",
            "Connections closed with 1013 because their queue filled.",
            self.slow_consumers.load(Relaxed),
        );
        simple(
            "telehub_duplicate_readings_total",
            "counter",
            "Readings dropped because their seq was already accepted.",
            self.duplicates.load(Relaxed),
        );
        simple(
            "telehub_commands_total",
            "counter",
            "Commands forwarded to devices.",
            self.commands.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP telehub_errors_total Error frames sent, by code.\n# TYPE telehub_errors_total counter"
        );
        for code in ErrorCode::ALL {
            let _ = writeln!(
                out,
                "telehub_errors_total{{code=\"{}\"}} {}",
                code.as_str(),
                self.errors[code.index()].load(Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP telehub_connections_rejected_total Refused WebSocket upgrades, by reason.\n# TYPE telehub_connections_rejected_total counter"
        );
        for why in Rejection::ALL {
            let _ = writeln!(
                out,
                "telehub_connections_rejected_total{{reason=\"{}\"}} {}",
                why.as_str(),
                self.rejected[why as usize].load(Relaxed)
            );
        }
    }
}
