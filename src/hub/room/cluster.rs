//! A cluster hub's room (`[cluster]`): its dashboards are fed in Redis's offset order
//! from the hub's subscription ([`Room::cluster_deliver`]), and a joining dashboard's
//! welcome, snapshot and recovery come from what its join read from Redis
//! ([`Room::cluster_finish`]), merged with what arrived meanwhile.
//!
//! The same room lock as the local fan-out guards it (`RoomState::cluster`).

use std::borrow::Cow;
use std::sync::Arc;

use telehub_protocol::outbound::{MemberInfo, SnapshotEntry};
use telehub_protocol::role::Role;

use super::{deliver, deliver_reading, Room};
use crate::cluster::presence::Event as PresenceEvent;
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
    /// The last presence version seen: a later one that does not follow it means this
    /// hub missed a join or leave, and its dashboards start over.
    presence_version: Option<u64>,
    /// A gap in the readings being filled from the stream.
    repair: Option<Repair>,
}

pub(super) struct LiveSub {
    conn: u64,
    mailbox: Arc<Mailbox>,
    last: u64,
    /// Its client id and whether it is told of dashboards (`?presence=all`).
    client: Arc<str>,
    all: bool,
}

pub(super) struct Joining {
    conn: u64,
    mailbox: Arc<Mailbox>,
    client: Arc<str>,
    all: bool,
    /// (offset, epoch, frame), in arrival order; with `presence`, at most
    /// [`CLUSTER_JOIN_BUFFER`].
    buffer: Vec<(u64, Arc<str>, Frame)>,
    /// Presence frames it is to be told of, with their versions.
    presence: Vec<(u64, Frame)>,
    overflowed: bool,
}

impl Joining {
    fn room_for_more(&mut self) -> bool {
        let room = self.buffer.len() + self.presence.len() < CLUSTER_JOIN_BUFFER;
        self.overflowed |= !room;
        room
    }
}

/// Whether a member is told of `subject`'s presence: everyone of a device's, the
/// members that asked for `all` of a dashboard's, never its own.
fn told(client: &str, all: bool, subject: &str, role: Role) -> bool {
    client != subject && (role == Role::Device || all)
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

/// One reading on its way to the live dashboards of a cluster room.
pub(super) struct Live {
    offset: u64,
    frame: Frame,
    device: Arc<str>,
    metric: String,
}

/// A gap being filled from the stream: what arrived meanwhile, in order.
pub(super) struct Repair {
    buffer: Vec<Live>,
    overflowed: bool,
}

/// What [`Room::cluster_deliver`] did besides delivering.
#[derive(Debug, Default)]
pub(crate) struct Delivered {
    /// Live dashboards closed with 1013 `cluster resync`.
    pub resyncs: usize,
    /// A gap to read from the stream, first and last missing offset: the caller reads
    /// it and calls [`Room::cluster_repaired`].
    pub repair: Option<(u64, u64)>,
}

impl ClusterRoom {
    /// Queues `live` for every live dashboard that is due it: one it already has is
    /// skipped, one after a gap of its own closes it (1013 `cluster resync`). Returns how
    /// many were closed so.
    fn fan_out(&mut self, live: &Live, metrics: &Metrics) -> usize {
        let mut resyncs = 0;
        let mut sent = 0;
        self.live.retain_mut(|s| {
            if live.offset <= s.last {
                return true;
            }
            if live.offset != s.last + 1 {
                s.mailbox.close(Close::RESYNC);
                resyncs += 1;
                return false;
            }
            deliver_reading(
                &s.mailbox,
                live.frame.clone(),
                (&live.device, &live.metric),
                live.offset,
                metrics,
            );
            s.last = live.offset;
            sent += 1;
            true
        });
        metrics.frames_out(sent);
        resyncs
    }

    /// Forgets a connection that left or was replaced, live or still joining.
    /// Queues `frame` (an `alert`) for the live dashboards.
    pub(super) fn broadcast(&self, frame: Frame, metrics: &Metrics) {
        for s in &self.live {
            deliver(&s.mailbox, frame.clone(), metrics);
        }
        metrics.frames_out(self.live.len());
    }

    pub(super) fn forget(&mut self, conn: u64) {
        self.live.retain(|s| s.conn != conn);
        self.joining.retain(|j| j.conn != conn);
    }

    /// A dashboard whose join now reads Redis: what arrives meanwhile is buffered.
    pub(super) fn start_join(
        &mut self,
        client: &Arc<str>,
        conn: u64,
        all: bool,
        mailbox: Arc<Mailbox>,
    ) {
        self.joining.push(Joining {
            conn,
            mailbox,
            client: client.clone(),
            all,
            buffer: Vec::new(),
            presence: Vec::new(),
            overflowed: false,
        });
    }
}

impl Room {
    /// A reading Redis stamped `offset` in `epoch`, from this hub's subscription: fanned
    /// out to the live dashboards in order (each skips what it already has), buffered for
    /// the joining ones. A gap (this hub missed readings: its subscription dropped) is
    /// repaired in place: the live dashboards wait, what arrives meanwhile is buffered,
    /// and the caller reads the missing offsets from the stream
    /// ([`Delivered::repair`], then [`Room::cluster_repaired`]). A new epoch (Redis lost
    /// the room) closes the live dashboards with 1013 `cluster resync`: they reconnect
    /// with `since` and are told `recovered: false`.
    pub(crate) fn cluster_deliver(
        &self,
        offset: u64,
        epoch: &str,
        reading: &WireReading<'_>,
        metrics: &Metrics,
    ) -> Delivered {
        let mut st = self.lock();
        let st = &mut *st;
        let Some(cr) = st.cluster.as_deref_mut() else {
            return Delivered::default();
        };
        let mut out = Delivered::default();
        let same_epoch = cr.epoch.as_deref() == Some(epoch);
        if !same_epoch {
            if cr.epoch.is_some() {
                for s in cr.live.drain(..) {
                    s.mailbox.close(Close::RESYNC);
                    out.resyncs += 1;
                }
                for j in &mut cr.joining {
                    j.buffer.clear();
                }
                cr.repair = None;
                st.offset = 0;
            }
            cr.epoch = Some(epoch.into());
        }
        let seen = st.offset;
        st.offset = st.offset.max(offset);
        if cr.live.is_empty() && cr.joining.is_empty() {
            return out;
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
        if let Some(epoch) = &cr.epoch {
            for j in &mut cr.joining {
                if j.room_for_more() {
                    j.buffer.push((offset, epoch.clone(), frame.clone()));
                }
            }
        }
        let live = Live {
            offset,
            frame,
            device,
            metric: reading.metric.to_string(),
        };
        match &mut cr.repair {
            Some(r) => {
                if r.buffer.len() < CLUSTER_JOIN_BUFFER {
                    r.buffer.push(live);
                } else {
                    r.overflowed = true;
                }
            }
            None if !cr.live.is_empty() && seen > 0 && offset > seen + 1 => {
                cr.repair = Some(Repair {
                    buffer: vec![live],
                    overflowed: false,
                });
                out.repair = Some((seen + 1, offset - 1));
            }
            None => out.resyncs += cr.fan_out(&live, metrics),
        }
        out
    }

    /// Ends a repair ([`Delivered::repair`]) with the stream's entries for the missing
    /// offsets, in order: they and then what was buffered meanwhile go to the live
    /// dashboards. Entries that do not cover the gap (the stream was trimmed past it, or
    /// Redis could not be read), a new epoch meanwhile or an overflowing buffer close
    /// the live dashboards with 1013 `cluster resync` instead. Returns how many were
    /// closed so, and the next gap to read if the buffer has one of its own (the
    /// subscription dropped again meanwhile): the repair goes on with it.
    pub(crate) fn cluster_repaired(
        &self,
        epoch: &str,
        gap: (u64, u64),
        entries: Option<Vec<(u64, String)>>,
        metrics: &Metrics,
    ) -> (usize, Option<(u64, u64)>) {
        let mut st = self.lock();
        let Some(cr) = st.cluster.as_deref_mut() else {
            return (0, None);
        };
        let Some(repair) = cr.repair.take() else {
            return (0, None);
        };
        let mut filled = Vec::new();
        let whole = cr.epoch.as_deref() == Some(epoch)
            && !repair.overflowed
            && entries.is_some_and(|entries| {
                let mut next = gap.0;
                for (offset, json) in entries {
                    let Ok(r) = serde_json::from_str::<WireReading<'_>>(&json) else {
                        return false;
                    };
                    if offset != next {
                        return false;
                    }
                    let device: Arc<str> = r.device.as_ref().into();
                    filled.push(Live {
                        offset,
                        frame: frames::reading_frame(&ReadingOut {
                            room: &self.name,
                            device: &device,
                            metric: &r.metric,
                            value: r.value,
                            unit: r.unit.as_deref(),
                            ts: r.ts,
                            seq: r.seq,
                            offset,
                        }),
                        device,
                        metric: r.metric.to_string(),
                    });
                    next += 1;
                }
                next == gap.1 + 1
            });
        if !whole {
            let mut resyncs = 0;
            for s in cr.live.drain(..) {
                s.mailbox.close(Close::RESYNC);
                resyncs += 1;
            }
            return (resyncs, None);
        }
        let mut resyncs = 0;
        for live in &filled {
            resyncs += cr.fan_out(live, metrics);
        }
        let mut last = gap.1;
        let mut rest = repair.buffer.into_iter();
        while let Some(live) = rest.next() {
            if live.offset > last + 1 && !cr.live.is_empty() {
                let next = (last + 1, live.offset - 1);
                let mut buffer = vec![live];
                buffer.extend(rest);
                cr.repair = Some(Repair {
                    buffer,
                    overflowed: false,
                });
                return (resyncs, Some(next));
            }
            resyncs += cr.fan_out(&live, metrics);
            last = last.max(live.offset);
        }
        (resyncs, None)
    }

    /// A presence change Redis numbered `version` in this room: a `presence` frame for
    /// the live dashboards told of it, buffered for the joining ones. A version that
    /// does not follow the last one seen means this hub missed a change (its
    /// subscription dropped): the live dashboards are closed with 1013 `cluster resync`
    /// and learn the room's members again from their next welcome. Returns how many
    /// were closed so.
    pub(crate) fn cluster_presence(
        &self,
        version: u64,
        event: &PresenceEvent<'_>,
        metrics: &Metrics,
    ) -> usize {
        let mut st = self.lock();
        let st = &mut *st;
        let Some(cr) = st.cluster.as_deref_mut() else {
            return 0;
        };
        let mut resyncs = 0;
        // A lower version is a Redis that lost its data and started over.
        if cr.presence_version.is_some_and(|last| version > last + 1) {
            for s in cr.live.drain(..) {
                s.mailbox.close(Close::RESYNC);
                resyncs += 1;
            }
        }
        cr.presence_version = Some(version);
        let frame = frames::presence(event.event, event.client, event.role, event.via);
        let mut sent = 0;
        for s in &cr.live {
            if told(&s.client, s.all, event.client, event.role) {
                deliver(&s.mailbox, frame.clone(), metrics);
                sent += 1;
            }
        }
        // This hub's devices are told as on one hub (every device's join and leave,
        // dashboards' with `?presence=all`), in Redis's order. They are not closed on
        // a missed change: their welcome's roster is this hub's, and the next change
        // of the same member tells them of it.
        for m in st
            .members
            .told_of(event.client, event.role)
            .filter(|m| m.role == Role::Device)
        {
            deliver(&m.mailbox, frame.clone(), metrics);
            sent += 1;
        }
        metrics.frames_out(sent);
        for j in &mut cr.joining {
            if told(&j.client, j.all, event.client, event.role) && j.room_for_more() {
                j.presence.push((version, frame.clone()));
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
        let Some(role) = st.members.get(client).map(|m| m.role) else {
            return ClusterJoined::Gone;
        };
        // Every hub's members, as Redis had them when the room was read; the changes
        // after that (by presence version) follow the readings.
        let others: Vec<MemberInfo<'_>> = f
            .members
            .iter()
            .filter(|(c, e)| told(client, j.all, c, e.role))
            .map(|(c, e)| MemberInfo {
                client: c,
                role: e.role,
                via: e.via,
            })
            .collect();
        let dashboards = f
            .members
            .iter()
            .filter(|(c, e)| e.role == Role::Dashboard && **c != **client)
            .count();
        let welcome = frames::welcome(
            &self.name, client, role, f.top, &f.epoch, &others, dashboards, recovered,
        );
        frames_out.extend(
            j.presence
                .into_iter()
                .filter(|(v, _)| *v > f.presence_version)
                .map(|(_, frame)| frame),
        );
        cr.presence_version = Some(
            cr.presence_version
                .map_or(f.presence_version, |v| v.max(f.presence_version)),
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
            client: j.client,
            all: j.all,
        });
        ClusterJoined::Live { recovered }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::HistoryConfig;
    use crate::hub::mailbox::Letter;
    use crate::hub::room::Member;
    use crate::sinks::history::History;
    use telehub_protocol::role::Via;

    /// A cluster room with one live dashboard that has offsets up to 2.
    fn room_with_live_dashboard() -> (Room, Arc<Mailbox>, Metrics) {
        let history = History::in_memory(HistoryConfig {
            persist: false,
            ..HistoryConfig::default()
        });
        let name: Arc<str> = "r".into();
        let room = Room::new(name.clone(), history.room(&name)).clustered();
        let metrics = Metrics::default();
        let mailbox = Arc::new(Mailbox::new(64));
        let client: Arc<str> = "dash".into();
        let member = Member {
            role: Role::Dashboard,
            via: Via::Ws,
            presence: super::super::Presence::Devices,
            conn: 1,
            mailbox: mailbox.clone(),
        };
        room.join(&client, member, 10, None, &metrics)
            .expect("joins");
        let fetched = Fetched {
            epoch: "e".into(),
            top: 2,
            ..Fetched::default()
        };
        let joined = room.cluster_finish(&client, 1, Ok(fetched), None, &metrics);
        assert_eq!(joined, ClusterJoined::Live { recovered: None });
        mailbox.take();
        (room, mailbox, metrics)
    }

    fn reading(offset: u64) -> (u64, String) {
        (
            offset,
            format!(r#"{{"device":"d","metric":"t","value":{offset},"ts":1}}"#),
        )
    }

    /// The offsets of the readings queued in `mailbox`, and whether it is closing.
    fn offsets(mailbox: &Mailbox) -> (Vec<u64>, bool) {
        let taken = mailbox.take();
        let got = taken
            .letters
            .iter()
            .filter_map(|l| match l {
                Letter::Frame(f) => {
                    let text = String::from_utf8_lossy(f);
                    let at = text.find("\"offset\":")? + 9;
                    let digits: String = text[at..]
                        .chars()
                        .take_while(char::is_ascii_digit)
                        .collect();
                    digits.parse().ok()
                }
                _ => None,
            })
            .collect();
        (got, taken.close.is_some() || mailbox.closing().is_some())
    }

    fn deliver(room: &Room, offset: u64, metrics: &Metrics) -> Delivered {
        let (_, json) = reading(offset);
        let w: WireReading<'_> = serde_json::from_str(&json).expect("reading");
        room.cluster_deliver(offset, "e", &w, metrics)
    }

    #[test]
    fn a_gap_seen_live_is_filled_from_the_stream_in_order_and_a_second_one_too() {
        let (room, mailbox, m) = room_with_live_dashboard();
        assert!(deliver(&room, 3, &m).repair.is_none());
        // 4 and 5 were missed: the dashboard waits while they are read back.
        assert_eq!(deliver(&room, 6, &m).repair, Some((4, 5)));
        assert!(deliver(&room, 7, &m).repair.is_none());
        // ... and 8 is missed too, while the first repair is under way.
        assert!(deliver(&room, 9, &m).repair.is_none());
        assert_eq!(offsets(&mailbox), (vec![3], false));
        let (resyncs, next) =
            room.cluster_repaired("e", (4, 5), Some(vec![reading(4), reading(5)]), &m);
        assert_eq!((resyncs, next), (0, Some((8, 8))));
        assert_eq!(offsets(&mailbox), (vec![4, 5, 6, 7], false));
        let (resyncs, next) = room.cluster_repaired("e", (8, 8), Some(vec![reading(8)]), &m);
        assert_eq!((resyncs, next), (0, None));
        assert_eq!(offsets(&mailbox), (vec![8, 9], false));
        assert!(deliver(&room, 10, &m).repair.is_none());
        assert_eq!(offsets(&mailbox), (vec![10], false));
    }

    #[test]
    fn a_gap_the_stream_no_longer_covers_resyncs_the_dashboards() {
        let (room, mailbox, m) = room_with_live_dashboard();
        assert_eq!(deliver(&room, 6, &m).repair, Some((3, 5)));
        // The stream was trimmed: 3 is gone.
        let (resyncs, next) =
            room.cluster_repaired("e", (3, 5), Some(vec![reading(4), reading(5)]), &m);
        assert_eq!((resyncs, next), (1, None));
        let (got, closing) = offsets(&mailbox);
        assert!(got.is_empty() && closing, "{got:?} {closing}");
    }
}
