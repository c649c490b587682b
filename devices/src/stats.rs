//! Run-wide counters, shared by every device task and read by the status line.
//!
//! Plain relaxed atomics: devices only add, readers take a [`StatsSnapshot`] now and then,
//! and nobody needs the counters to agree with each other to the reading.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use serde::Serialize;

/// A cheap, cloneable handle to the counters of one run.
#[derive(Debug, Clone, Default)]
pub struct SimStats(Arc<Counters>);

#[derive(Debug, Default)]
struct Counters {
    devices: AtomicU64,
    connected: AtomicI64,
    generated: AtomicU64,
    sent: AtomicU64,
    resent: AtomicU64,
    acked: AtomicU64,
    dropped: AtomicU64,
    buffered: AtomicI64,
    reconnects: AtomicU64,
    connect_failures: AtomicU64,
    commands: AtomicU64,
    reboots: AtomicU64,
    hub_errors: AtomicU64,
    rate_limited: AtomicU64,
    auth_refused: AtomicU64,
    token_refreshes: AtomicU64,
}

/// The counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StatsSnapshot {
    /// Devices in the run.
    pub devices: u64,
    /// Devices with a live connection now.
    pub connected: u64,
    /// Readings sampled.
    pub generated: u64,
    /// Readings written to a connection, resends included.
    pub sent: u64,
    /// Of `sent`, readings sent again after a reconnect.
    pub resent: u64,
    /// Readings the far end confirmed (hub `accepted`, or MQTT PUBACK), each counted once.
    pub acked: u64,
    /// Readings dropped because a device's buffer was full.
    pub dropped: u64,
    /// Readings held now, waiting to be sent or confirmed.
    pub buffered: u64,
    /// Connections made after a device's first one.
    pub reconnects: u64,
    /// Connection attempts that failed.
    pub connect_failures: u64,
    /// Commands answered.
    pub commands: u64,
    /// `reboot` commands carried out.
    pub reboots: u64,
    /// `error` frames received from the hub.
    pub hub_errors: u64,
    /// Of those, `rate_limited`.
    pub rate_limited: u64,
    /// Connections the hub refused for their token (HTTP 401/403 on the upgrade, close
    /// 1008 after a refresh, or 4001 when a token expired unrefreshed).
    pub auth_refused: u64,
    /// Fresh tokens sent in answer to `token_expiring`.
    pub token_refreshes: u64,
}

impl SimStats {
    /// Fresh counters.
    pub fn new() -> Self {
        Self::default()
    }

    /// Read every counter.
    pub fn snapshot(&self) -> StatsSnapshot {
        let c = &self.0;
        StatsSnapshot {
            devices: c.devices.load(Relaxed),
            connected: c.connected.load(Relaxed).max(0) as u64,
            generated: c.generated.load(Relaxed),
            sent: c.sent.load(Relaxed),
            resent: c.resent.load(Relaxed),
            acked: c.acked.load(Relaxed),
            dropped: c.dropped.load(Relaxed),
            buffered: c.buffered.load(Relaxed).max(0) as u64,
            reconnects: c.reconnects.load(Relaxed),
            connect_failures: c.connect_failures.load(Relaxed),
            commands: c.commands.load(Relaxed),
            reboots: c.reboots.load(Relaxed),
            hub_errors: c.hub_errors.load(Relaxed),
            rate_limited: c.rate_limited.load(Relaxed),
            auth_refused: c.auth_refused.load(Relaxed),
            token_refreshes: c.token_refreshes.load(Relaxed),
        }
    }

    pub(crate) fn add_device(&self) {
        self.0.devices.fetch_add(1, Relaxed);
    }
    pub(crate) fn connected(&self, up: bool) {
        self.0.connected.fetch_add(if up { 1 } else { -1 }, Relaxed);
    }
    pub(crate) fn generated(&self, n: u64) {
        self.0.generated.fetch_add(n, Relaxed);
    }
    pub(crate) fn sent(&self, n: u64, resent: u64) {
        self.0.sent.fetch_add(n, Relaxed);
        self.0.resent.fetch_add(resent, Relaxed);
    }
    pub(crate) fn acked(&self, n: u64) {
        self.0.acked.fetch_add(n, Relaxed);
    }
    pub(crate) fn dropped(&self, n: u64) {
        self.0.dropped.fetch_add(n, Relaxed);
    }
    pub(crate) fn buffered_delta(&self, delta: i64) {
        self.0.buffered.fetch_add(delta, Relaxed);
    }
    pub(crate) fn reconnect(&self) {
        self.0.reconnects.fetch_add(1, Relaxed);
    }
    pub(crate) fn connect_failure(&self) {
        self.0.connect_failures.fetch_add(1, Relaxed);
    }
    pub(crate) fn command(&self) {
        self.0.commands.fetch_add(1, Relaxed);
    }
    pub(crate) fn reboot(&self) {
        self.0.reboots.fetch_add(1, Relaxed);
    }
    pub(crate) fn auth_refused(&self) {
        self.0.auth_refused.fetch_add(1, Relaxed);
    }
    pub(crate) fn token_refresh(&self) {
        self.0.token_refreshes.fetch_add(1, Relaxed);
    }
    pub(crate) fn hub_error(&self, rate_limited: bool) {
        self.0.hub_errors.fetch_add(1, Relaxed);
        if rate_limited {
            self.0.rate_limited.fetch_add(1, Relaxed);
        }
    }
}
