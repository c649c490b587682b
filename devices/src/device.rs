//! One simulated device, independent of how it is connected: its sensor, sampling
//! interval, sequence counter and outbox, and how it applies commands.
//!
//! The transports (`transport/ws.rs`, `transport/mqtt.rs`) own the connection and call in
//! here; everything they do to the outbox goes through [`Device`] so the run's counters
//! stay right.

use std::time::Duration;

use serde::Serialize;

use crate::command::{self, Ack, Command, Effect};
use crate::kinds::{self, Kind, Sample, Sensor};
use crate::outbox::{Batch, Outbox, Reading};
use crate::rng::SimRng;
use crate::scenario::DeviceSpec;
use crate::stats::SimStats;

/// Where a device's `seq` counter starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqStart {
    /// Wall-clock epoch milliseconds × 1000 at the start of the run: a restarted
    /// simulator starts above everything an earlier run sent (unless it sent over a
    /// thousand readings per millisecond), so the hub never takes fresh readings for
    /// duplicates of old ones. The values stay below 2^53 (exact in a browser's JSON
    /// numbers) until the year 2255.
    Clock,
    /// A fixed first value, for tests and reproducible captures.
    Fixed(u64),
}

/// What one device did during a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceSummary {
    /// Room id.
    pub room: String,
    /// Device id.
    pub id: String,
    /// Kind.
    pub kind: Kind,
    /// Readings sampled.
    pub generated: u64,
    /// Readings confirmed by the far end.
    pub acked: u64,
    /// Readings dropped because the buffer was full.
    pub dropped: u64,
    /// Readings still unconfirmed when the run ended.
    pub unacked: u64,
    /// The first seq this device used (0 if it sampled nothing).
    pub first_seq: u64,
    /// The last seq it used (0 if it sampled nothing).
    pub last_seq: u64,
    /// Successful connections (the first one included).
    pub connections: u64,
}

/// A device's state.
#[derive(Debug)]
pub(crate) struct Device {
    pub(crate) spec: DeviceSpec,
    sensor: Box<dyn Sensor>,
    rng: SimRng,
    interval: Duration,
    first_seq: u64,
    next_seq: u64,
    outbox: Outbox,
    stats: SimStats,
    scratch: Vec<Sample>,
    /// Faults the scenario injects (drift, stuck, silent).
    faults: crate::fault::Faults,
    /// The outbox size last added to the run's `buffered` gauge.
    reported_buffered: i64,
    generated: u64,
    acked: u64,
    connections: u64,
}

impl Device {
    pub(crate) fn new(
        spec: DeviceSpec,
        seed: u64,
        seq_start: u64,
        buffer: usize,
        stats: SimStats,
    ) -> Self {
        let mut rng = SimRng::new(seed, spec.index);
        let faults = crate::fault::Faults::new(spec.faults.clone());
        let sensor = kinds::build(spec.kind, &spec.params, &mut rng);
        let interval = Duration::from_secs_f64(1.0 / spec.rate_hz.max(1e-9));
        stats.add_device();
        Device {
            spec,
            sensor,
            rng,
            interval,
            first_seq: seq_start,
            next_seq: seq_start,
            outbox: Outbox::new(buffer),
            stats,
            scratch: Vec::with_capacity(4),
            faults,
            reported_buffered: 0,
            generated: 0,
            acked: 0,
            connections: 0,
        }
    }

    /// A second random stream for this device (connect jitter, backoff), kept apart
    /// from the sensor's so that connection trouble never changes the signal.
    pub(crate) fn side_rng(&self, seed: u64) -> SimRng {
        SimRng::new(seed ^ 0x5EED_BACC_0FF5_0000, self.spec.index)
    }

    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }

    pub(crate) fn stats(&self) -> &SimStats {
        &self.stats
    }

    /// Sample the sensor at simulated time `now_ms` into the outbox.
    pub(crate) fn sample(&mut self, now_ms: i64) {
        self.scratch.clear();
        self.sensor.sample(now_ms, &mut self.rng, &mut self.scratch);
        self.faults.apply(now_ms, &mut self.scratch);
        let mut dropped = 0;
        for s in &self.scratch {
            let reading = Reading {
                seq: self.next_seq,
                ts: now_ms,
                metric: s.metric,
                value: s.value,
                unit: s.unit,
            };
            self.next_seq += 1;
            if self.outbox.push(reading) {
                dropped += 1;
            }
        }
        let n = self.scratch.len() as u64;
        self.generated += n;
        self.stats.generated(n);
        if dropped > 0 {
            self.stats.dropped(dropped);
        }
        self.sync_buffered();
    }

    /// Up to `max` readings to send now; counts them as sent.
    pub(crate) fn take_unsent(&mut self, max: usize) -> Batch {
        let batch = self.outbox.take_unsent(max);
        self.stats.sent(batch.readings.len() as u64, batch.resent);
        batch
    }

    pub(crate) fn has_unsent(&self) -> bool {
        self.outbox.has_unsent()
    }

    pub(crate) fn unconfirmed(&self) -> usize {
        self.outbox.len()
    }

    /// The hub accepted the readings `first..=last` of one message.
    pub(crate) fn ack_range(&mut self, first: u64, last: u64) {
        let n = self.outbox.ack_range(first, last) as u64;
        self.acked += n;
        self.stats.acked(n);
        self.sync_buffered();
    }

    /// The broker confirmed reading `seq`.
    pub(crate) fn ack_one(&mut self, seq: u64) {
        if self.outbox.ack_one(seq) {
            self.acked += 1;
            self.stats.acked(1);
            self.sync_buffered();
        }
    }

    /// A connection came up.
    pub(crate) fn connected(&mut self) {
        self.connections += 1;
        if self.connections > 1 {
            self.stats.reconnect();
        }
        self.stats.connected(true);
    }

    /// The connection went down: resend everything unconfirmed on the next one.
    pub(crate) fn disconnected(&mut self) {
        self.outbox.rewind();
        self.stats.connected(false);
    }

    /// Also resend everything unconfirmed, without a reconnect (after `rate_limited`).
    pub(crate) fn rewind(&mut self) {
        self.outbox.rewind();
    }

    /// Apply a command; returns the ack to send and what the transport must do.
    pub(crate) fn handle_command(&mut self, cmd: &Command) -> (Ack, Effect) {
        let (ack, effect) = command::apply(cmd, self.sensor.as_mut());
        tracing::debug!(room = %self.spec.room, device = %self.spec.id, id = %cmd.id,
            name = %cmd.name, ok = ack.ok, "command");
        if let Effect::SetInterval(d) = effect {
            self.interval = d;
        }
        if let Effect::Reboot(_) = effect {
            self.stats.reboot();
        }
        self.stats.command();
        (ack, effect)
    }

    fn sync_buffered(&mut self) {
        let now = self.outbox.len() as i64;
        if now != self.reported_buffered {
            self.stats.buffered_delta(now - self.reported_buffered);
            self.reported_buffered = now;
        }
    }

    /// The device's part of the run summary; takes its readings out of the run's
    /// `buffered` gauge.
    pub(crate) fn finish(mut self) -> DeviceSummary {
        let unacked = self.outbox.len() as u64;
        self.stats.buffered_delta(-self.reported_buffered);
        self.reported_buffered = 0;
        let used = self.next_seq > self.first_seq;
        DeviceSummary {
            room: self.spec.room,
            id: self.spec.id,
            kind: self.spec.kind,
            generated: self.generated,
            acked: self.acked,
            dropped: self.outbox.dropped(),
            unacked,
            first_seq: if used { self.first_seq } else { 0 },
            last_seq: if used { self.next_seq - 1 } else { 0 },
            connections: self.connections,
        }
    }
}
