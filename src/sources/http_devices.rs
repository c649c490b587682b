//! Devices that reach the hub over HTTP requests (line protocol, HTTP ingest): their
//! room memberships (`via: http`), their rate buckets, the commands waiting for them to
//! fetch, and their leaving once idle.
//!
//! A source stage beside [`super::ws_client`] and [`super::mqtt`]: a request has no
//! connection to hold a [`Membership`], so this registry holds one per (room, device)
//! from its first request until `limits.http_device_idle_ms` after its last. Readings go
//! through [`Hub::publish`] like every other source's. A device's queue is drained by one
//! small task per device, so it never fills: commands are kept (at most
//! [`MAX_QUEUED_COMMANDS`]) for the device's long poll, the rest (presence and the like,
//! which a device that only makes requests cannot be sent) is dropped.
//!
//! A device id held by a WebSocket connection is not taken over by a request: the
//! request's lines for it are refused ([`DeviceError::HeldOverWs`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use std::collections::VecDeque;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::config::Overflow;
use crate::hub::mailbox::{CommandLetter, Letter, Mailbox, Taken};
use crate::hub::room::{Presence, Published};
use crate::hub::{Hub, JoinError, Membership};
use crate::shutdown::{Completion, Shutdown};
use telehub_protocol::inbound::ReadingIn;
use telehub_protocol::rate::TokenBucket;
use telehub_protocol::role::{Role, Via};

/// Devices held over HTTP at most, over all rooms; a request for one more is refused
/// for that device (`too_many_http_devices`) until idle ones leave, so requests naming
/// endless device ids cannot grow the registry.
pub(crate) const MAX_HTTP_DEVICES: usize = 10_000;

/// Commands kept for one device until it fetches them; past it the oldest is dropped
/// (and times out unanswered, as it would for a device that never polls).
pub(crate) const MAX_QUEUED_COMMANDS: usize = 64;

/// How often idle devices are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Why a device cannot publish over HTTP now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DeviceError {
    #[error("device id `{0}` is held by a WebSocket connection")]
    HeldOverWs(String),
    #[error("the hub already holds {MAX_HTTP_DEVICES} devices over HTTP")]
    TooManyDevices,
    #[error(transparent)]
    Join(#[from] JoinError),
}

/// Devices by (room, device id).
type DeviceMap = HashMap<(Arc<str>, Arc<str>), Arc<HttpDevice>>;

/// The registry; cheap to clone.
#[derive(Clone)]
pub(crate) struct HttpDevices {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for HttpDevices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpDevices")
            .field("devices", &self.len())
            .finish_non_exhaustive()
    }
}

struct Inner {
    hub: Hub,
    idle: Duration,
    /// `telehub_http_devices`: kept at the number of devices held.
    held: Gauge,
    devices: Mutex<DeviceMap>,
}

/// One device held over HTTP.
pub(crate) struct HttpDevice {
    membership: Membership,
    drain: JoinHandle<()>,
    state: Mutex<DeviceState>,
    commands: Arc<Commands>,
}

struct DeviceState {
    last_seen: Instant,
    /// Line protocol's bucket (`influx.rate_per_sec`), made on the first write.
    lines: Option<TokenBucket>,
    /// HTTP ingest's bucket (`limits.rate_per_sec`, as a WebSocket connection's).
    readings: Option<TokenBucket>,
}

/// Commands for a device, waiting for its long poll.
#[derive(Default)]
struct Commands {
    queue: Mutex<VecDeque<CommandLetter>>,
    arrived: Notify,
}

impl Commands {
    fn queue(&self) -> MutexGuard<'_, VecDeque<CommandLetter>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for HttpDevice {
    fn drop(&mut self) {
        self.drain.abort();
    }
}

impl HttpDevice {
    fn state(&self) -> MutexGuard<'_, DeviceState> {
        // Plain values only: a panic cannot leave them half-changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes `cost` tokens from the device's line-protocol bucket (`rate`, `burst`), all
    /// or none: `Err(wait)` says when they will be there.
    pub(crate) fn charge_lines(&self, cost: usize, rate: f64, burst: f64) -> Result<(), Duration> {
        let mut s = self.state();
        let now = Instant::now();
        let bucket = s
            .lines
            .get_or_insert_with(|| TokenBucket::new_at(rate, burst, now));
        if bucket.available_at(now) >= cost {
            bucket.take_at(cost, now);
            Ok(())
        } else {
            Err(bucket.wait_for(cost, now))
        }
    }

    /// Takes up to `want` tokens from the device's HTTP-ingest bucket (`rate`, `burst`),
    /// as a WebSocket connection's bucket does: how many were granted, and when the rest
    /// would be there.
    pub(crate) fn charge_readings(&self, want: usize, rate: f64, burst: f64) -> (usize, Duration) {
        let mut s = self.state();
        let now = Instant::now();
        let bucket = s
            .readings
            .get_or_insert_with(|| TokenBucket::new_at(rate, burst, now));
        let granted = bucket.take_at(want, now);
        (granted, bucket.wait_for(want - granted, now))
    }

    /// Publishes the device's readings through the hub's one seam; the device stays
    /// present for another `limits.http_device_idle_ms`. [`Hub::publish_settled`]: on a
    /// cluster hub through Redis, whose answer it waits for.
    pub(crate) async fn publish_settled(&self, hub: &Hub, items: Vec<ReadingIn>) -> Published {
        self.touch();
        hub.publish_settled(&self.membership, items).await
    }

    /// The device made a request: it stays present for another idle period.
    pub(crate) fn touch(&self) {
        self.state().last_seen = Instant::now();
    }

    /// The commands queued for the device, waiting up to `wait` for one if there are
    /// none yet (a long poll). Taken commands are gone from the queue.
    pub(crate) async fn commands(&self, wait: Duration) -> Vec<CommandLetter> {
        self.touch();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let arrived = self.commands.arrived.notified();
            {
                let mut q = self.commands.queue();
                if !q.is_empty() {
                    return q.drain(..).collect();
                }
            }
            if self.membership.mailbox().closing().is_some()
                || tokio::time::timeout_at(deadline, arrived).await.is_err()
            {
                self.touch();
                return Vec::new();
            }
        }
    }

    /// The device's answer to a command, routed to the dashboard that sent it.
    pub(crate) fn ack(
        &self,
        hub: &Hub,
        ack: &telehub_protocol::inbound::AckIn,
    ) -> Result<(), telehub_protocol::inbound::ProtoError> {
        self.touch();
        hub.ack(&self.membership, ack)
    }
}

impl HttpDevices {
    pub(crate) fn new(hub: Hub, held: Gauge) -> HttpDevices {
        let idle = Duration::from_millis(hub.limits().http_device_idle_ms);
        HttpDevices {
            inner: Arc::new(Inner {
                hub,
                idle,
                held,
                devices: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub(crate) fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    fn devices(&self) -> MutexGuard<'_, DeviceMap> {
        // Map operations cannot leave the map half-changed, so poison is harmless.
        self.inner.devices.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Devices held now.
    pub(crate) fn len(&self) -> usize {
        self.devices().len()
    }

    /// The device `device` of `room`, joined first if it is not held yet (or its
    /// membership was closed: replaced by a WebSocket connection, say).
    pub(crate) fn device(&self, room: &str, device: &str) -> Result<Arc<HttpDevice>, DeviceError> {
        let key: (Arc<str>, Arc<str>) = (room.into(), device.into());
        let mut devices = self.devices();
        if let Some(d) = devices.get(&key) {
            if d.membership.mailbox().closing().is_none() {
                return Ok(d.clone());
            }
            devices.remove(&key);
        }
        let hub = &self.inner.hub;
        if hub.held_over_ws(room, device) {
            return Err(DeviceError::HeldOverWs(device.to_string()));
        }
        if devices.len() >= MAX_HTTP_DEVICES {
            devices.retain(|_, d| d.membership.mailbox().closing().is_none());
            if devices.len() >= MAX_HTTP_DEVICES {
                return Err(DeviceError::TooManyDevices);
            }
        }
        let membership = hub.join(
            room,
            device,
            Role::Device,
            Via::Http,
            Presence::Devices,
            Overflow::Close,
            None,
        )?;
        let commands = Arc::new(Commands::default());
        let drain = tokio::spawn(drain(membership.mailbox().clone(), commands.clone()));
        tracing::info!(room, device, "device joined over http");
        let d = Arc::new(HttpDevice {
            membership,
            drain,
            state: Mutex::new(DeviceState {
                last_seen: Instant::now(),
                lines: None,
                readings: None,
            }),
            commands,
        });
        devices.insert(key, d.clone());
        self.inner.held.set(devices.len() as i64);
        Ok(d)
    }

    /// Lets go of the devices idle for `limits.http_device_idle_ms` (they leave their
    /// rooms once the last request using them is done).
    pub(crate) fn sweep(&self) {
        let idle = self.inner.idle;
        let mut devices = self.devices();
        devices.retain(|(room, device), d| {
            let keep =
                d.state().last_seen.elapsed() < idle && d.membership.mailbox().closing().is_none();
            if !keep {
                tracing::info!(%room, %device, "http device idle; it leaves its room");
            }
            keep
        });
        self.inner.held.set(devices.len() as i64);
    }

    /// Sweeps idle devices until shutdown, then lets go of every device.
    pub(crate) async fn run(self, mut shutdown: Shutdown, _completion: Completion) {
        let mut tick = tokio::time::interval(SWEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.sweep(),
                _ = shutdown.recv() => break,
            }
        }
        self.devices().clear();
    }
}

/// Empties a device's queue as it fills: commands wait for the device's long poll, the
/// rest cannot reach a device that only makes requests. Ends when the member is closed
/// (replaced, hub shutdown), waking a poll that waits.
async fn drain(mailbox: Arc<Mailbox>, commands: Arc<Commands>) {
    loop {
        let Taken { letters, close, .. } = mailbox.take();
        let mut got = false;
        for letter in letters {
            if let Letter::Command(cmd) = letter {
                let mut q = commands.queue();
                if q.len() >= MAX_QUEUED_COMMANDS {
                    tracing::warn!(id = %cmd.id, "http device's command queue is full; oldest dropped");
                    q.pop_front();
                }
                q.push_back(*cmd);
                got = true;
            }
        }
        if got || close.is_some() {
            commands.arrived.notify_waiters();
        }
        if close.is_some() {
            return;
        }
        mailbox.ready().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LimitsConfig;
    use crate::sinks::history::History;

    fn registry(idle_ms: u64) -> HttpDevices {
        let limits = LimitsConfig {
            http_device_idle_ms: idle_ms,
            ..LimitsConfig::default()
        };
        HttpDevices::new(
            Hub::new(limits, History::in_memory(Default::default())),
            Gauge::default(),
        )
    }

    fn reading(v: f64) -> ReadingIn {
        ReadingIn {
            metric: "t".into(),
            value: v,
            unit: None,
            ts: None,
            seq: None,
        }
    }

    #[tokio::test]
    async fn a_device_joins_once_and_leaves_when_idle() {
        let reg = registry(50);
        let d = reg.device("lab", "h1").expect("joins");
        assert_eq!(
            d.publish_settled(reg.hub(), vec![reading(1.0)])
                .await
                .accepted,
            1
        );
        assert!(Arc::ptr_eq(&d, &reg.device("lab", "h1").expect("held")));
        let room = &reg.hub().summaries()[0];
        assert_eq!(&*room.devices[0].client, "h1");
        drop(d);
        tokio::time::sleep(Duration::from_millis(80)).await;
        reg.sweep();
        assert_eq!(reg.len(), 0);
        assert!(reg.hub().summaries()[0].devices.is_empty());
    }

    #[tokio::test]
    async fn line_buckets_charge_all_or_nothing() {
        let reg = registry(60_000);
        let d = reg.device("lab", "h1").expect("joins");
        assert_eq!(d.charge_lines(8, 10.0, 10.0), Ok(()));
        let wait = d.charge_lines(5, 10.0, 10.0).expect_err("only 2 left");
        assert!(wait > Duration::from_millis(200) && wait <= Duration::from_millis(300));
        // Nothing was taken by the refusal: the 2 left are still there.
        assert_eq!(d.charge_lines(2, 10.0, 10.0), Ok(()));
    }
}
