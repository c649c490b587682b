//! Transports: how a device's readings reach the hub and its commands reach the device.
//!
//! Both transports run one task per device with the same shape: a `select!` loop over
//! "time to sample", "time to (re)connect", "something arrived" and "shutdown", so that a
//! device keeps sampling into its outbox while it is disconnected or still connecting.
//!
//! - [`ws`]: WebSocket to the hub (`/ws/{room}/{device}?role=device&acks=true`); readings
//!   are confirmed by the hub's `accepted`.
//! - [`mqtt`]: MQTT to a broker, on the topics the hub's bridge reads; readings are QoS 1
//!   publishes confirmed by the broker's PUBACK.

pub(crate) mod mqtt;
pub(crate) mod ws;

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{sleep_until, Instant, Sleep};

use crate::backoff::BackoffConfig;
use crate::clock::Clock;

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

#[cfg(test)]
mod tests {
    use super::*;

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
