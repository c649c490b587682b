//! `telehub-sim bench`: the load generator and its measurements.
//!
//! In each of R rooms it opens S dashboards, then D devices that each send a `reading`
//! at H Hz with a rising `seq`. After a warm-up it measures for a fixed window:
//!
//! - readings in per second (sent by the devices within the window),
//! - deliveries per second and loss: a reading sent within the window should reach every
//!   dashboard of its room, so expected = readings sent in the window × S;
//! - latency from send to dashboard receipt. Each device records the monotonic time of
//!   every send in a ring indexed by seq (`SendTimes`), and a dashboard looks the send
//!   time up by (device, seq) on receipt, for sub-millisecond precision that the ms `ts`
//!   cannot give. Window membership is decided by that same send time on both sides.
//!
//! Every dashboard task keeps its own counters and histogram (no locks on the receive
//! path), merged when the run ends. With `--pid` it also reads the hub's RSS and CPU time
//! from /proc over the window. [`idle`] is the separate `--idle N` memory measurement.
//!
//! The files: this one holds the options, their checks and the errors; `load` opens the
//! connections and runs the dashboard and device tasks; `timing` is the send-time ring
//! and the measured window; `report` turns the counts into a [`BenchReport`]; [`procfs`]
//! reads the hub's RSS and CPU time; [`churn`] is `--churn RATE`, connections opened
//! and closed at a steady rate (W6); [`slow`] is `--slow-viewers N`, dashboards on a
//! slow link beside the measured ones.

pub mod churn;
pub mod idle;
mod load;
pub mod procfs;
mod report;
pub mod slow;
mod timing;

use std::time::Duration;

use telehub_protocol::role::Role;

use crate::auth::{AuthError, TokenRequest, TokenSource};

use crate::wsclient::ConnectError;

pub use load::run_bench;
pub use report::{BenchReport, HubUsage, Latency};

/// Connections opened at once while setting up, so setup does not look like a SYN flood.
pub const CONNECT_CONCURRENCY: usize = 64;
/// After the window closes, how long dashboards keep receiving readings sent within it.
pub const DRAIN: Duration = Duration::from_secs(2);
/// Longest warm-up + window a bench may run, so send times fit in a ring slot.
pub const MAX_BENCH_TIME: Duration = Duration::from_secs(4 * 3600);

/// The load's shape as command-line flags: R rooms, D devices and S dashboards in each,
/// every device sending at H Hz. `telehub-sim bench` and the `mqtt_bench` example take
/// the same flags with the same defaults (flattened into their own arguments).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct LoadShape {
    /// Rooms.
    #[arg(long, default_value_t = 10)]
    pub rooms: u32,
    /// Devices per room.
    #[arg(long, default_value_t = 10)]
    pub devices: u32,
    /// Dashboards per room.
    #[arg(long, default_value_t = 10)]
    pub dashboards: u32,
    /// Readings per second per device (the hub's default limit is 200 per connection).
    #[arg(long, value_name = "HZ", default_value_t = 10.0)]
    pub rate: f64,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Hub base URL, `ws://127.0.0.1:8080`.
    pub url: String,
    /// Hubs to spread the dashboards over, round-robin (empty: all on `url`).
    pub dashboard_urls: Vec<String>,
    /// Rooms.
    pub rooms: u32,
    /// Devices per room.
    pub devices: u32,
    /// Dashboards per room.
    pub dashboards: u32,
    /// Readings per second per device.
    pub rate_hz: f64,
    /// Measured window.
    pub duration: Duration,
    /// Time before the window, to let connections and caches settle.
    pub warmup: Duration,
    /// The hub's pid, to read its RSS and CPU time.
    pub pid: Option<u32>,
    /// Tokens for a hub in token mode: devices and dashboards alike need one (mint them
    /// with [`TokenSource::mint`] so each gets its own `sub`, role and room). A bench
    /// window is short, so its connections do not refresh.
    pub auth: Option<TokenSource>,
    /// Slow viewers per room (`?overflow=latest`, reading one frame every
    /// `slow_read_every`), not counted among the dashboards; 0 for none.
    pub slow_viewers: u32,
    /// How often a slow viewer reads a frame.
    pub slow_read_every: Duration,
    /// A slow viewer's socket receive buffer in bytes (0: the kernel's default).
    pub slow_recv_buffer: u32,
}

/// The bearer token of one bench connection, if the bench has a token source.
pub(crate) fn token_for(
    auth: Option<&TokenSource>,
    room: &str,
    client: &str,
    role: Role,
) -> Result<Option<String>, BenchError> {
    auth.map(|a| a.token(&TokenRequest { client, role, room }))
        .transpose()
        .map_err(BenchError::from)
}

/// Why the bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad URL, or a connection failed during setup.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// No token could be had for a connection.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A connection did not welcome us in time.
    #[error("{what}: {message}")]
    Setup {
        /// Which connection.
        what: String,
        /// What happened.
        message: String,
    },
    /// Bad options.
    #[error("{0}")]
    Options(String),
    /// Reading /proc for `--pid` failed.
    #[error("reading /proc for pid {pid}: {error}")]
    Proc {
        /// The pid.
        pid: u32,
        /// The error.
        error: std::io::Error,
    },
}

pub(crate) fn check(opts: &BenchOptions) -> Result<(), BenchError> {
    if opts.rooms == 0 || opts.devices == 0 || opts.dashboards == 0 {
        return Err(BenchError::Options(
            "--rooms, --devices and --dashboards must be at least 1".into(),
        ));
    }
    if !(opts.rate_hz > 0.0 && opts.rate_hz <= 10_000.0) {
        return Err(BenchError::Options(
            "--rate must be in (0, 10000] Hz".into(),
        ));
    }
    if opts.duration.is_zero() {
        return Err(BenchError::Options("--duration must be positive".into()));
    }
    if opts.duration + opts.warmup > MAX_BENCH_TIME {
        return Err(BenchError::Options(
            "--warmup plus --duration must stay under 4 hours".into(),
        ));
    }
    Ok(())
}

/// Raise our own open-file soft limit to the hard limit: a bench opens many sockets.
pub fn raise_fd_limit() -> u64 {
    rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0)
}
