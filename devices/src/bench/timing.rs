//! Send times for the bench's latency measurement: a lock-free ring per device, indexed
//! by seq, that devices write and dashboards read, and the window the run measures.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio::time::Instant;

/// Seconds of sends each device's ring remembers; a reading delivered later than this
/// cannot be timed (it is counted as `untimed`).
const RING_SECONDS: f64 = 30.0;
/// Bits of a ring slot holding the send time: 2^44 ns is 4.8 hours, the longest bench.
const NANOS_BITS: u32 = 44;
const NANOS_MASK: u64 = (1 << NANOS_BITS) - 1;
/// The monotonic send time of every recent reading, per device, indexed by seq.
///
/// Lock-free: a device stores, dashboards load. A slot is one `u64`: the low
/// [`NANOS_BITS`] bits hold nanoseconds since the bench started plus one (0 = never sent),
/// the high bits which lap of the ring the seq is on, so a reading delivered after its
/// slot was reused is counted as untimed instead of being given a wrong latency.
pub(super) struct SendTimes {
    slots: Box<[AtomicU64]>,
    ring: u64,
    seq_base: u64,
}

impl SendTimes {
    pub(super) fn new(devices: usize, rate_hz: f64, seq_base: u64) -> Self {
        let ring = ((rate_hz * RING_SECONDS).ceil() as u64)
            .next_power_of_two()
            .clamp(256, 1 << 16);
        let slots = (0..devices as u64 * ring)
            .map(|_| AtomicU64::new(0))
            .collect();
        SendTimes {
            slots,
            ring,
            seq_base,
        }
    }

    /// The slot of (device, seq) and the lap tag its value must carry.
    fn slot(&self, device: usize, seq: u64) -> Option<(&AtomicU64, u64)> {
        let n = seq.wrapping_sub(self.seq_base);
        let i = device as u64 * self.ring + n % self.ring;
        let lap = (n / self.ring) & (u64::MAX >> NANOS_BITS);
        self.slots.get(i as usize).map(|s| (s, lap << NANOS_BITS))
    }

    pub(super) fn record(&self, device: usize, seq: u64, nanos: u64) {
        if let Some((s, tag)) = self.slot(device, seq) {
            s.store(tag | ((nanos + 1) & NANOS_MASK), Relaxed);
        }
    }

    pub(super) fn lookup(&self, device: usize, seq: u64) -> Option<u64> {
        let (s, tag) = self.slot(device, seq)?;
        let v = s.load(Relaxed);
        if v & !NANOS_MASK != tag || v & NANOS_MASK == 0 {
            return None;
        }
        Some((v & NANOS_MASK) - 1)
    }
}

/// State every bench task shares; read-only except for atomics.
pub(super) struct Shared {
    pub(super) started: Instant,
    pub(super) times: SendTimes,
    /// Window bounds in ns since `started`; u64::MAX until set.
    pub(super) window_start: AtomicU64,
    pub(super) window_end: AtomicU64,
}

impl Shared {
    pub(super) fn now_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    pub(super) fn in_window(&self, ns: u64) -> bool {
        ns >= self.window_start.load(Relaxed) && ns < self.window_end.load(Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_times_ring() {
        let t = SendTimes::new(3, 10.0, 1_000);
        assert_eq!(t.ring, 512);
        t.record(2, 1_005, 42);
        assert_eq!(t.lookup(2, 1_005), Some(42));
        assert_eq!(t.lookup(1, 1_005), None);
        // Recorded zero is distinguishable from "never sent".
        t.record(0, 1_001, 0);
        assert_eq!(t.lookup(0, 1_001), Some(0));
        // A slot reused one lap later no longer answers for the old seq.
        t.record(2, 1_005 + 512, 99);
        assert_eq!(t.lookup(2, 1_005), None);
        assert_eq!(t.lookup(2, 1_005 + 512), Some(99));
    }
}
