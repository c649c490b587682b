//! Transports: how a device's readings reach the hub and its commands reach the device.
//!
//! Both transports run one task per device with the same shape: a `select!` loop over
//! "time to sample", "time to (re)connect", "something arrived" and "shutdown", so that a
//! device keeps sampling into its outbox while it is disconnected or still connecting.
//! The timers of that loop (sampling, the reboot pause, the reconnect backoff, the drain
//! after shutdown) are the same for both and live here, in [`Schedule`]; each transport's
//! loop keeps only its connection's own branches.
//!
//! - [`ws`]: WebSocket to the hub (`/ws/{room}/{device}?role=device&acks=true`); readings
//!   are confirmed by the hub's `accepted`.
//! - [`mqtt`]: MQTT to a broker, on the topics the hub's bridge reads; readings are QoS 1
//!   publishes confirmed by the broker's PUBACK.
//! - [`http`]: HTTP ingest (`POST .../readings` on a keep-alive connection, commands by
//!   long poll); readings are confirmed by the answer.

pub(crate) mod http;
pub(crate) mod mqtt;
pub(crate) mod ws;

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{sleep_until, Instant, Sleep};

use crate::backoff::{Backoff, BackoffConfig};
use crate::clock::Clock;
use crate::device::Device;

/// How long one connection attempt may take before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Devices spread their first connection attempts over this window, so a scenario with
/// thousands of devices does not open them all in the same millisecond.
pub const CONNECT_SPREAD: Duration = Duration::from_millis(500);
/// A connection that lasted this long resets the reconnect backoff when it drops; one
/// that dropped sooner (a hub that accepts and then closes, or two simulators fighting
/// over one device id) keeps backing off further.
pub const STABLE_AFTER: Duration = Duration::from_secs(2);
/// Most readings in one `readings` message (the hub's default `limits.max_batch` is 256).
pub const MAX_BATCH: usize = 100;

/// Settings every device task shares.
#[derive(Debug, Clone)]
pub(crate) struct DeviceCtx {
    pub clock: Clock,
    pub backoff: BackoffConfig,
    /// Readings per second a device may send (resends included), and twice that as burst.
    pub send_rate: f64,
    /// Run seed, for the device's side random stream.
    pub seed: u64,
    /// On shutdown, how long a connected device waits for its last readings to be
    /// confirmed before it closes.
    pub drain: Duration,
    pub shutdown: watch::Receiver<bool>,
    /// Tokens for a hub in token mode (WebSocket only).
    pub auth: Option<crate::auth::TokenSource>,
}

/// The protocol crate's token bucket, on tokio's clock (pausable in tests), sized so that
/// a device stays under the hub's per-connection rate limit even when it resends a large
/// buffer after a reconnect: `rate` a second, twice that as burst.
#[derive(Debug)]
pub(crate) struct TokenBucket(telehub_protocol::rate::TokenBucket);

impl TokenBucket {
    pub(crate) fn new(rate: f64) -> Self {
        let rate = rate.max(1.0);
        TokenBucket(telehub_protocol::rate::TokenBucket::new_at(
            rate,
            rate * 2.0,
            Instant::now().into_std(),
        ))
    }

    /// Whole tokens available now.
    pub(crate) fn available(&mut self) -> usize {
        self.0.available_at(Instant::now().into_std())
    }

    /// Spend `n` tokens (at most what [`TokenBucket::available`] said).
    pub(crate) fn take(&mut self, n: usize) {
        self.0.take_at(n, Instant::now().into_std());
    }

    /// When at least `n` tokens will be there (no sooner than 5 ms from now, so a loop
    /// waiting on it never spins).
    pub(crate) fn ready_at(&mut self, n: usize) -> Instant {
        let now = Instant::now();
        now + self
            .0
            .wait_for(n, now.into_std())
            .max(Duration::from_millis(5))
    }
}

/// A sleep until `at`, or effectively forever when there is no `at` (for `select!`
/// branches that are disabled by their guard anyway).
pub(crate) fn sleep_opt(at: Option<Instant>) -> Sleep {
    sleep_until(at.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400 * 365)))
}

/// The next sampling instant after one at `prev`: a device that fell behind (a long
/// stall) skips the missed samples instead of bursting them out with wrong timestamps.
pub(crate) fn next_sample_after(prev: Instant, interval: Duration) -> Instant {
    let next = prev + interval;
    let now = Instant::now();
    if next + interval < now {
        now + interval
    } else {
        next
    }
}

/// What a device task's timers say is due; see [`Schedule::next`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Shutdown was asked for: the drain has begun and no reconnect will be tried.
    Shutdown,
    /// The drain deadline passed ([`Schedule::finished`] now says so).
    DrainOver,
    /// The device took a sample (into its outbox); the next one is scheduled.
    Sampled,
    /// A reboot pause ended: sampling starts again at once and so does connecting.
    Booted,
    /// Time to open a connection.
    Connect,
}

/// The timers of one device task, apart from its connection: when to sample, the pause
/// of a `reboot` command, when to (re)connect with backoff, and the drain after shutdown.
///
/// The transport's loop `select!`s [`Schedule::next`] beside its connection's branches
/// and tells the schedule what the connection did ([`Schedule::connected`],
/// [`Schedule::dropped`], [`Schedule::retry_later`]) and what a command asked for.
#[derive(Debug)]
pub(crate) struct Schedule {
    next_sample: Instant,
    /// While a reboot pause lasts: no sampling, no connecting.
    paused_until: Option<Instant>,
    /// When to open the next connection, if one is due.
    retry_at: Option<Instant>,
    /// After shutdown: until when the last readings may still be confirmed.
    drain_until: Option<Instant>,
    drain: Duration,
    backoff: Backoff,
    connected_at: Instant,
    shutdown: watch::Receiver<bool>,
}

impl Schedule {
    /// A device's first sample and first connection attempt are spread over one interval
    /// and [`CONNECT_SPREAD`] by its side random stream, which then feeds its backoff.
    pub(crate) fn new(dev: &Device, ctx: &DeviceCtx) -> Self {
        let mut side = dev.side_rng(ctx.seed);
        let start = Instant::now();
        let next_sample = start + dev.interval().mul_f64(side.unit());
        let retry_at = start + CONNECT_SPREAD.mul_f64(side.unit());
        Schedule {
            next_sample,
            paused_until: None,
            retry_at: Some(retry_at),
            drain_until: None,
            drain: ctx.drain,
            backoff: Backoff::new(ctx.backoff, side),
            connected_at: start,
            shutdown: ctx.shutdown.clone(),
        }
    }

    /// Wait for the next timer and update the schedule for it; when a sample is due,
    /// `dev` takes it at `clock`'s time. Cancel-safe: nothing changes until a timer fired.
    pub(crate) async fn next(&mut self, dev: &mut Device, clock: &Clock) -> Due {
        let sampling = self.paused_until.is_none() && self.drain_until.is_none();
        tokio::select! {
            // A dropped sender also means stop.
            _ = self.shutdown.changed(), if self.drain_until.is_none() => {
                self.drain_until = Some(Instant::now() + self.drain);
                self.retry_at = None;
                Due::Shutdown
            }
            _ = sleep_opt(self.drain_until), if self.drain_until.is_some() => Due::DrainOver,
            _ = sleep_opt(Some(self.next_sample)), if sampling => {
                dev.sample(clock.now_ms());
                self.next_sample = next_sample_after(self.next_sample, dev.interval());
                Due::Sampled
            }
            _ = sleep_opt(self.paused_until), if self.paused_until.is_some() => {
                let now = Instant::now();
                self.paused_until = None;
                self.next_sample = now;
                self.retry_at = Some(now);
                Due::Booted
            }
            _ = sleep_opt(self.retry_at), if self.retry_at.is_some() && self.paused_until.is_none() => {
                self.retry_at = None;
                Due::Connect
            }
        }
    }

    /// Whether the task should end: shutdown was asked for and there is nothing left to
    /// wait for. `offline` is "no connection, not even one being opened" (one still
    /// being opened may finish and drain within the deadline).
    pub(crate) fn finished(&self, offline: bool, unconfirmed: usize) -> bool {
        self.drain_until
            .is_some_and(|deadline| offline || unconfirmed == 0 || Instant::now() >= deadline)
    }

    /// A connection is up (for [`STABLE_AFTER`]).
    pub(crate) fn connected(&mut self) {
        self.connected_at = Instant::now();
    }

    /// A connection that was up dropped: one that lasted resets the backoff; then retry.
    pub(crate) fn dropped(&mut self) {
        if self.connected_at.elapsed() >= STABLE_AFTER {
            self.backoff.reset();
        }
        self.retry_later();
    }

    /// Schedule the next connection attempt after a backoff delay, which it returns;
    /// none once shutdown was asked for.
    pub(crate) fn retry_later(&mut self) -> Option<Duration> {
        self.retry_after_at_least(Duration::ZERO)
    }

    /// The hub refused the device's token: retry after the backoff delay, but not sooner
    /// than `min` (a refused token does not become valid by retrying at once).
    pub(crate) fn retry_after_at_least(&mut self, min: Duration) -> Option<Duration> {
        if self.drain_until.is_some() {
            return None;
        }
        let delay = self.backoff.next_delay().max(min);
        self.retry_at = Some(Instant::now() + delay);
        Some(delay)
    }

    /// A connection that was up was closed for its token: like [`Schedule::dropped`],
    /// waiting at least `min` before the next attempt.
    pub(crate) fn dropped_refused(&mut self, min: Duration) {
        if self.connected_at.elapsed() >= STABLE_AFTER {
            self.backoff.reset();
        }
        self.retry_after_at_least(min);
    }

    /// A `reboot` command: no sampling and no connecting for `pause`.
    pub(crate) fn reboot(&mut self, pause: Duration) {
        self.paused_until = Some(Instant::now() + pause);
        self.retry_at = None;
    }

    /// A new sampling interval: the next sample is one new interval from now.
    pub(crate) fn set_interval(&mut self, interval: Duration) {
        self.next_sample = Instant::now() + interval;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ClockConfig;
    use crate::kinds::{Kind, Params};
    use crate::scenario::DeviceSpec;
    use crate::stats::SimStats;

    /// A 100 Hz device and its context, with the sender that asks for shutdown.
    fn device(drain: Duration) -> (Device, DeviceCtx, watch::Sender<bool>) {
        let spec = DeviceSpec {
            room: "r".into(),
            id: "d".into(),
            kind: Kind::Climate,
            rate_hz: 100.0,
            params: Params::default(),
            index: 0,
            faults: Vec::new(),
        };
        let (tx, shutdown) = watch::channel(false);
        let ctx = DeviceCtx {
            clock: Clock::start(ClockConfig::default()),
            backoff: BackoffConfig {
                initial: Duration::from_millis(10),
                max: Duration::from_millis(100),
            },
            send_rate: 100.0,
            seed: 1,
            drain,
            shutdown,
            auth: None,
        };
        (Device::new(spec, 1, 1, 16, SimStats::new()), ctx, tx)
    }

    #[tokio::test]
    async fn a_reboot_pauses_sampling_and_connecting_then_does_both_at_once() {
        let (mut dev, ctx, _tx) = device(Duration::from_secs(1));
        let mut schedule = Schedule::new(&dev, &ctx);
        let start = Instant::now();
        schedule.reboot(Duration::from_millis(30));
        assert_eq!(schedule.next(&mut dev, &ctx.clock).await, Due::Booted);
        assert!(start.elapsed() >= Duration::from_millis(30));
        let mut after: Vec<Due> = Vec::new();
        for _ in 0..2 {
            after.push(schedule.next(&mut dev, &ctx.clock).await);
        }
        after.sort_by_key(|d| *d as u8);
        assert_eq!(after, [Due::Sampled, Due::Connect]);
        assert!(dev.unconfirmed() > 0, "the sample went into the outbox");
    }

    #[tokio::test]
    async fn shutdown_drains_without_reconnecting() {
        let (mut dev, ctx, tx) = device(Duration::from_millis(30));
        let mut schedule = Schedule::new(&dev, &ctx);
        assert!(!schedule.finished(true, 5), "no shutdown yet");
        tx.send(true).expect("receiver alive");
        while schedule.next(&mut dev, &ctx.clock).await != Due::Shutdown {}
        let start = Instant::now();
        assert!(schedule.finished(true, 5), "offline: nothing to wait for");
        assert!(schedule.finished(false, 0), "all confirmed");
        assert!(
            !schedule.finished(false, 5),
            "waits for the last confirmations"
        );
        assert_eq!(schedule.retry_later(), None, "no reconnect while draining");
        schedule.dropped();
        assert_eq!(schedule.next(&mut dev, &ctx.clock).await, Due::DrainOver);
        assert!(start.elapsed() >= Duration::from_millis(25));
        assert!(schedule.finished(false, 5), "the deadline passed");
    }

    #[tokio::test]
    async fn a_drop_backs_off_before_the_next_attempt() {
        let (mut dev, ctx, _tx) = device(Duration::from_secs(1));
        let mut schedule = Schedule::new(&dev, &ctx);
        // Pause sampling so only the connect timer is left; then it is a backoff away.
        schedule.reboot(Duration::from_millis(1));
        assert_eq!(schedule.next(&mut dev, &ctx.clock).await, Due::Booted);
        while schedule.next(&mut dev, &ctx.clock).await != Due::Connect {}
        schedule.connected();
        schedule.set_interval(Duration::from_secs(60));
        let start = Instant::now();
        schedule.dropped();
        assert_eq!(schedule.next(&mut dev, &ctx.clock).await, Due::Connect);
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(5),
            "{waited:?}: at least half of 10 ms"
        );
        let delay = schedule.retry_later().expect("not draining");
        assert!(
            delay >= Duration::from_millis(10),
            "{delay:?}: the ceiling grew"
        );
    }

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let mut b = TokenBucket::new(100.0);
        assert_eq!(b.available(), 200, "burst is twice the rate");
        b.take(200);
        assert_eq!(b.available(), 0);
        let wait = b.ready_at(10) - Instant::now();
        assert!(
            wait >= Duration::from_millis(90) && wait <= Duration::from_millis(101),
            "{wait:?}"
        );
    }

    #[test]
    fn a_late_sampler_skips_instead_of_bursting() {
        let interval = Duration::from_millis(100);
        let long_ago = Instant::now() - Duration::from_secs(5);
        let next = next_sample_after(long_ago, interval);
        assert!(next > Instant::now(), "no burst of missed samples");
        let now = Instant::now();
        assert_eq!(next_sample_after(now, interval), now + interval);
    }
}
