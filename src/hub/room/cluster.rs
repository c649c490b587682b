//! A cluster hub's room (`[cluster]`): its dashboards are fed in Redis's offset order
//! from the hub's subscription ([`Room::cluster_deliver`]), and a joining dashboard's
//! welcome, snapshot and recovery come from what its join read from Redis
//! ([`Room::cluster_finish`]), merged with what arrived meanwhile.
//!
//! The same room lock as the local fan-out guards it (`RoomState::cluster`).

use std::borrow::Cow;
use std::sync::Arc;

use telehub_protocol::outbound::SnapshotEntry;

use super::{deliver_reading, Presence, Room};
use crate::cluster::{ClusterError, Fetched, WireReading};
use crate::hub::mailbox::{Close, Mailbox};
use crate::metrics::Metrics;
use crate::net::ws::frames::{self, Frame, ReadingOut};

/// Frames one joining dashboard of a cluster room buffers at most while its join reads
/// Redis; past it the dashboard is closed as a slow consumer (1013) and reconnects.
pub(crate) const CLUSTER_JOIN_BUFFER: usize = 4096;

/// The dashboards of a cluster room, fed in Redis's offset order ([`Room::cluster_deliver`]).
#[derive(Default)]
pub(super) struct ClusterRoom {
    /// The epoch of the last reading seen (or fetched); a different one means Redis
    /// lost the room and every dashboard here starts over.
    pub(super) epoch: Option<Arc<str>>,
    /// Live dashboards and the last offset each was sent.
    pub(super) live: Vec<LiveSub>,
    /// Dashboards whose join is reading Redis: what arrives meanwhile is buffered.
    pub(super) joining: Vec<Joining>,
}

pub(super) struct LiveSub {
    conn: u64,
    mailbox: Arc<Mailbox>,
    last: u64,
}

pub(super) struct Joining {
    conn: u64,
    mailbox: Arc<Mailbox>,
    /// (offset, epoch, frame), in arrival order; at most [`CLUSTER_JOIN_BUFFER`].
    buffer: Vec<(u64, Arc<str>, Frame)>,
    overflowed: bool,
}

/// How a cluster dashboard's join ended ([`Room::cluster_finish`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ClusterJoined {
    /// Live, with `recovered` as the welcome said.
    Live { recovered: Option<bool> },
    /// Closed (Redis unreachable, buffer overflow, epoch changed meanwhile).
    Closed,
    /// It left before its join finished.
    Gone,
}

impl ClusterRoom {
    /// Forgets a connection that left or was replaced, live or still joining.
    pub(super) fn forget(&mut self, conn: u64) {
        self.live.retain(|s| s.conn != conn);
        self.joining.retain(|j| j.conn != conn);
    }

    /// A dashboard whose join now reads Redis: what arrives meanwhile is buffered.
    pub(super) fn start_join(&mut self, conn: u64, mailbox: Arc<Mailbox>) {
        self.joining.push(Joining {
            conn,
            mailbox,
            buffer: Vec::new(),
            overflowed: false,
        });
    }
}

impl Room {
    /// A reading Redis stamped `offset` in `epoch`, from this hub's subscription: fanned
    /// out to the live dashboards in order (each skips what it already has), buffered for
    /// the joining ones. A gap, or a new epoch (Redis lost the room), closes the live
    /// dashboards with 1013 `cluster resync`: they reconnect with `since` and recover
    /// from the stream, or are told `recovered: false`. Returns how many were closed so.
    pub(crate) fn cluster_deliver(
        &self,
        offset: u64,
        epoch: &str,
        reading: &WireReading<'_>,
        metrics: &Metrics,
    ) -> usize {
        let mut st = self.lock();
        let st = &mut *st;
        let Some(cr) = st.cluster.as_deref_mut() else {
            return 0;
        };
        let mut resyncs = 0;
        let same_epoch = cr.epoch.as_deref() == Some(epoch);
        if !same_epoch {
            if cr.epoch.is_some() {
                for s in cr.live.drain(..) {
                    s.mailbox.close(Close::RESYNC);
                    resyncs += 1;
                }
                for j in &mut cr.joining {
                    j.buffer.clear();
                }
                st.offset = 0;
            }
            cr.epoch = Some(epoch.into());
        }
        st.offset = st.offset.max(offset);
        if cr.live.is_empty() && cr.joining.is_empty() {
            return resyncs;
        }
        let device: Arc<str> = reading.device.as_ref().into();
        let frame = frames::reading_frame(&ReadingOut {
            room: &self.name,
            device: &device,
            metric: &reading.metric,
            value: reading.value,
            unit: reading.unit.as_deref(),
            ts: reading.ts,
            seq: reading.seq,
            offset,
        });
        let mut sent = 0;
        cr.live.retain_mut(|s| {
            if offset <= s.last {
                return true;
            }
            if offset != s.last + 1 {
                s.mailbox.close(Close::RESYNC);
                resyncs += 1;
                return false;
            }
            deliver_reading(
                &s.mailbox,
                frame.clone(),
                (&device, &reading.metric),
                offset,
                metrics,
            );
            s.last = offset;
            sent += 1;
            true
        });
        metrics.frames_out(sent);
        if let Some(epoch) = &cr.epoch {
            for j in &mut cr.joining {
                if j.buffer.len() < CLUSTER_JOIN_BUFFER {
                    j.buffer.push((offset, epoch.clone(), frame.clone()));
                } else {
                    j.overflowed = true;
                }
            }
        }
        resyncs
    }

    /// Ends a cluster dashboard's join with what it read from Redis (after its room's
    /// subscription was confirmed, so every later reading is in its buffer): queues the
    /// welcome, the snapshot of last values and the readings after them, and makes it
    /// live. With `since`, `recovered: true` only if the stream from `since + 1` and the
    /// buffer, duplicates dropped by offset, are contiguous in the same epoch; otherwise
    /// `recovered: false` and the readings after the snapshot only.
    pub(crate) fn cluster_finish(
        &self,
        client: &Arc<str>,
        conn: u64,
        fetched: Result<Fetched, ClusterError>,
        since: Option<(u64, Option<&str>)>,
        metrics: &Metrics,
    ) -> ClusterJoined {
        let mut st = self.lock();
        let st = &mut *st;
        let Some(cr) = st.cluster.as_deref_mut() else {
            return ClusterJoined::Gone;
        };
        let Some(i) = cr.joining.iter().position(|j| j.conn == conn) else {
            return ClusterJoined::Gone;
        };
        let j = cr.joining.swap_remove(i);
        let f = match fetched {
            Ok(f) if !j.overflowed => f,
            Ok(_) => {
                j.mailbox.close(Close::SLOW_CONSUMER);
                metrics.slow_consumer();
                return ClusterJoined::Closed;
            }
            Err(e) => {
                tracing::debug!(room = %self.name, error = %e, "cluster join failed");
                j.mailbox.close(Close::CLUSTER_UNAVAILABLE);
                return ClusterJoined::Closed;
            }
        };
        // Readings buffered in another epoch than the one fetched: Redis lost the room
        // in between; this dashboard starts over.
        if j.buffer.iter().any(|(_, e, _)| **e != *f.epoch) {
            j.mailbox.close(Close::RESYNC);
            return ClusterJoined::Closed;
        }
        let mut frames_out: Vec<Frame> = Vec::new();
        let mut last = f.top;
        let mut recovered = None;
        if let Some((from, epoch)) = since {
            let same_epoch = epoch.is_none_or(|e| e == f.epoch);
            let mut ok = same_epoch && from <= f.top;
            let mut next = from + 1;
            let mut replay = Vec::new();
            if ok {
                for (offset, json) in &f.entries {
                    if *offset != next {
                        ok = false;
                        break;
                    }
                    let Ok(r) = serde_json::from_str::<WireReading<'_>>(json) else {
                        ok = false;
                        break;
                    };
                    replay.push(frames::reading_frame(&ReadingOut {
                        room: &self.name,
                        device: &r.device,
                        metric: &r.metric,
                        value: r.value,
                        unit: r.unit.as_deref(),
                        ts: r.ts,
                        seq: r.seq,
                        offset: *offset,
                    }));
                    next += 1;
                }
                // The stream must reach the top it was read with (COUNT may cut it).
                ok &= next == f.top + 1;
            }
            if ok {
                frames_out = replay;
                last = f.top;
            }
            recovered = Some(ok);
            metrics.replayed(frames_out.len());
        }
        // The buffer, after whatever the fetch already covered; it must follow on.
        for (offset, _, frame) in j.buffer {
            if offset <= last {
                continue;
            }
            if offset != last + 1 {
                j.mailbox.close(Close::RESYNC);
                return ClusterJoined::Closed;
            }
            frames_out.push(frame);
            last = offset;
        }
        let parsed: Vec<(u64, WireReading<'_>)> = f
            .last_values
            .iter()
            .filter_map(|(off, json)| Some((*off, serde_json::from_str(json).ok()?)))
            .collect();
        let series: Vec<SnapshotEntry<'_>> = parsed
            .iter()
            .map(|(offset, r)| SnapshotEntry {
                device: Cow::Borrowed(&r.device),
                metric: Cow::Borrowed(&r.metric),
                value: r.value,
                unit: r.unit.as_deref().map(Cow::Borrowed),
                ts: r.ts,
                offset: *offset,
            })
            .collect();
        let snapshot = (!series.is_empty()).then(|| frames::snapshot_frame(&series));
        let (all, role) = match st.members.get(client) {
            Some(m) => (m.presence == Presence::All, m.role),
            None => return ClusterJoined::Gone,
        };
        let (dashboards, others) = st.members.roster(client, all);
        let welcome = frames::welcome(
            &self.name, client, role, f.top, &f.epoch, &others, dashboards, recovered,
        );
        j.mailbox
            .push_all(std::iter::once(welcome).chain(snapshot).chain(frames_out));
        if cr.epoch.is_none() {
            cr.epoch = Some(f.epoch.as_str().into());
        }
        st.offset = st.offset.max(last);
        cr.live.push(LiveSub {
            conn,
            mailbox: j.mailbox,
            last,
        });
        ClusterJoined::Live { recovered }
    }
}
