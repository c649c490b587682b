//! The rooms this hub keeps in a cluster: it stores their readings, once for the whole
//! cluster, in its own history (memory and SQLite), reading each room's Redis stream in
//! offset order. Who keeps a room, and how it is handed over, is `cluster/keeper.rs`.
//!
//! One task ([`Hub::run_keeper`]) reads every kept room's stream when the room's
//! subscription says something arrived, and every quarter lease anyway (which renews
//! the lease). It records what it read as a single hub records a device's readings,
//! and tells Redis how far the store has committed: that watermark is where the next
//! keeper starts if this one dies. Rooms kept are bounded by `limits.max_rooms`: a hub
//! takes a room's lease only by publishing into it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tracing::{info, warn};

use super::{lock, Hub};
use crate::alerts::eval::RoomAlerts;
use crate::alerts::Alerts;
use crate::cluster::keeper::{Tail, TAIL_BATCH};
use crate::cluster::{Cluster, Seat, WireReading};
use crate::shutdown::{Completion, Shutdown};
use crate::sinks::history::durable::{Queued, Ticket};
use crate::sinks::history::{Record, RoomHistory, SeriesCaps};

/// The rooms this hub keeps, and what wakes their reader.
#[derive(Default)]
pub(crate) struct Keeping {
    rooms: std::sync::Mutex<HashMap<Arc<str>, Kept>>,
    wake: Notify,
}

/// A room's epoch as Redis numbers it, and an offset in it.
type Position = (String, u64);

/// One kept room.
struct Kept {
    /// Holds the room's subscription, whose readings wake the reader.
    _seat: Seat,
    history: Arc<RoomHistory>,
    /// The room's alert instances, with rules in force: evaluated here, on the one hub
    /// that records the room's readings, so each transition happens once per cluster.
    alerts: Option<Arc<std::sync::Mutex<RoomAlerts>>>,
    /// The epoch read and the last offset recorded in it (`None` until the first read).
    reading: Option<Position>,
    /// Offsets recorded but not yet committed by the store, with their tickets.
    pending: VecDeque<(u64, Ticket)>,
    /// Something arrived since the last read.
    dirty: bool,
}

impl Kept {
    /// The last offset the store has committed, everything before it too (`None` until
    /// the first read). In memory only, what was recorded.
    fn committed(&mut self, store_committed: Option<Ticket>) -> Option<u64> {
        let (_, cursor) = self.reading.as_ref()?;
        Some(match store_committed {
            None => *cursor,
            Some(done) => committed_offset(&mut self.pending, done, *cursor),
        })
    }
}

/// What `pending` (offsets recorded, with their store tickets, in order) says is
/// committed once the store has committed ticket `done`: everything before the first
/// offset still waiting, or `cursor` when none waits. Drops what is committed.
fn committed_offset(pending: &mut VecDeque<(u64, Ticket)>, done: Ticket, cursor: u64) -> u64 {
    while let Some(&(offset, ticket)) = pending.front() {
        if ticket > done {
            return offset.saturating_sub(1);
        }
        pending.pop_front();
    }
    cursor
}

/// What became of one of a kept room's readings ([`record`]).
enum Stored {
    /// In history, and queued for the store with this ticket (`None`: memory only).
    Kept(Option<Ticket>),
    /// The store's queue is full: read it again from here later.
    Refused,
    /// This hub's own `history.max_series` refused it. Redis took it within the room's
    /// caps, so it is not read again: logged and counted as lost.
    Dropped,
}

/// Records one of a kept room's readings in its history.
fn record(history: &RoomHistory, reading: &WireReading<'_>) -> Stored {
    let device: Arc<str> = reading.device.as_ref().into();
    let recorded = history.record_capped(
        &Record {
            device: &device,
            metric: &reading.metric,
            unit: reading.unit.as_deref(),
            ts: reading.ts,
            value: reading.value,
            seq: reading.seq,
        },
        SeriesCaps::NONE,
    );
    match recorded {
        Ok(rec) => match rec.queued {
            Some(Queued::Refused) => Stored::Refused,
            Some(Queued::Ticket(t)) => Stored::Kept(Some(t)),
            None => Stored::Kept(None),
        },
        Err(e) => {
            warn!(room = %history.name(), error = %e, "keeper: reading not stored");
            Stored::Dropped
        }
    }
}

/// Steps the room's alert instances with a reading just recorded; each transition is
/// recorded (store, sinks: once per cluster) and its frame goes to the room's
/// dashboards on every hub.
fn evaluate(engine: Option<&Alerts>, k: &Kept, cluster: &Cluster, room: &str, r: &WireReading<'_>) {
    let (Some(engine), Some(room_alerts)) = (engine, &k.alerts) else {
        return;
    };
    let rules = engine.rules();
    if rules.rules.is_empty() {
        return;
    }
    let device: Arc<str> = r.device.as_ref().into();
    let mut transitions = Vec::new();
    crate::alerts::lock(room_alerts).observe(
        &rules,
        &device,
        &r.metric,
        (r.value, r.ts, crate::clock::now_ms()),
        &mut transitions,
    );
    if transitions.is_empty() {
        return;
    }
    let room: Arc<str> = room.into();
    for t in &transitions {
        engine.record(t);
        cluster.broadcast(&room, crate::alerts::frame(t));
    }
}

/// How often the reader goes over every kept room: a quarter of the lease.
fn period(cluster_lease_ms: u64) -> Duration {
    Duration::from_millis((cluster_lease_ms / 4).max(100))
}

impl Hub {
    /// This hub holds `room`'s keeper lease (its publish said so): keep it, if it does
    /// not already.
    pub(crate) fn keeper_claimed(&self, cluster: &Cluster, room: &Arc<str>) {
        let keeping = &self.inner.keeping;
        let mut rooms = lock(&keeping.rooms);
        if rooms.contains_key(room) || rooms.len() >= self.inner.limits.max_rooms {
            return;
        }
        info!(%room, node = %cluster.node_id(), "keeping the room: storing its readings for the cluster");
        rooms.insert(
            room.clone(),
            Kept {
                _seat: cluster.seat(room),
                history: self.inner.history.room(room),
                alerts: self.inner.alerts.get().map(|a| a.room(room)),
                reading: None,
                pending: VecDeque::new(),
                dirty: true,
            },
        );
        drop(rooms);
        keeping.wake.notify_one();
    }

    /// Whether this hub keeps `room` (stores its readings and answers its history).
    pub(crate) fn keeps(&self, room: &str) -> bool {
        lock(&self.inner.keeping.rooms).contains_key(room)
    }

    /// The room's epoch and last offset as its keeper has read them (for `/series`).
    pub(crate) fn kept_position(&self, room: &str) -> Option<Position> {
        lock(&self.inner.keeping.rooms)
            .get(room)
            .and_then(|k| k.reading.clone())
    }

    /// A reading of `room` arrived on the subscription. If this hub keeps the room and
    /// it is the next offset, it is recorded now (no Redis call); anything else (a
    /// gap, a new epoch, a full store queue) has the reader read the stream soon.
    pub(super) fn keeper_offer(&self, room: &str, offset: u64, epoch: &str, r: &WireReading<'_>) {
        let keeping = &self.inner.keeping;
        let mut rooms = lock(&keeping.rooms);
        let Some(k) = rooms.get_mut(room) else {
            return;
        };
        let next = match &k.reading {
            Some((e, cursor)) if e == epoch => {
                if offset <= *cursor {
                    return;
                }
                offset == cursor + 1
            }
            _ => false,
        };
        if next && !k.dirty {
            let stored = record(&k.history, r);
            if let (Stored::Kept(_), Some(c)) = (&stored, self.inner.cluster.get()) {
                evaluate(self.inner.alerts.get(), k, c, room, r);
            }
            if !matches!(stored, Stored::Refused) {
                if let Stored::Kept(Some(t)) = stored {
                    k.pending.push_back((offset, t));
                }
                if let Some((_, cursor)) = k.reading.as_mut() {
                    *cursor = offset;
                }
                drop(rooms);
                if let Some(c) = self.inner.cluster.get() {
                    match stored {
                        Stored::Dropped => c.lost_to_keeper(1),
                        _ => c.kept(1),
                    }
                }
                return;
            }
        }
        if !k.dirty {
            k.dirty = true;
            keeping.wake.notify_one();
        }
    }

    /// Runs the reader of the kept rooms until shutdown; then flushes the store and
    /// gives every lease back with what it committed.
    pub(crate) fn start_keeper(&self, cluster: Cluster, mut shutdown: Shutdown, done: Completion) {
        let hub = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period(cluster.keeper_lease_ms()));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let every = tokio::select! {
                    _ = tick.tick() => true,
                    _ = hub.inner.keeping.wake.notified() => false,
                    _ = shutdown.recv() => break,
                };
                let rooms: Vec<Arc<str>> = {
                    let mut rooms = lock(&hub.inner.keeping.rooms);
                    rooms
                        .iter_mut()
                        .filter(|(_, k)| every || k.dirty)
                        .map(|(name, k)| {
                            k.dirty = false;
                            name.clone()
                        })
                        .collect()
                };
                for room in rooms {
                    hub.keep_step(&cluster, &room).await;
                }
            }
            hub.release_kept(&cluster).await;
            drop(done);
        });
    }

    /// The store's committed ticket (`None`: history is in memory only).
    fn store_committed(&self) -> Option<Ticket> {
        self.inner.history.commits().map(|c| c.borrow().committed)
    }

    /// One read of `room`'s stream: records what it holds after the last offset
    /// recorded, renews the lease, moves the watermark.
    async fn keep_step(&self, cluster: &Cluster, room: &Arc<str>) {
        let store = self.store_committed();
        let (reading, committed) = {
            let mut rooms = lock(&self.inner.keeping.rooms);
            let Some(k) = rooms.get_mut(room) else {
                return;
            };
            (k.reading.clone(), k.committed(store))
        };
        let at = reading.as_ref().map(|(e, o)| (e.as_str(), *o));
        let tail = match cluster.tail(room, at, committed, false).await {
            Ok(t) => t,
            Err(e) => {
                // Tried again at the next tick; the lease outlives several.
                warn!(%room, error = %e, "keeper: reading the room's stream failed");
                return;
            }
        };
        let (epoch, from, top, entries) = match tail {
            Tail::Read {
                epoch,
                from,
                top,
                entries,
            } => (epoch, from, top, entries),
            Tail::Lost(holder) => {
                info!(%room, holder = holder.as_deref().unwrap_or("nobody"), "keeper: the room's lease is no longer this hub's; stopped keeping it");
                lock(&self.inner.keeping.rooms).remove(room);
                return;
            }
            Tail::Released => return,
        };
        let mut rooms = lock(&self.inner.keeping.rooms);
        let Some(k) = rooms.get_mut(room) else {
            return;
        };
        // Readings the subscription handed over while this read was in flight are
        // recorded already: the read goes on after them.
        let mut cursor = match &k.reading {
            Some((e, recorded)) if *e == epoch => from.max(*recorded),
            _ => {
                // The first read, or Redis lost the room: start at what Redis says.
                k.pending.clear();
                from
            }
        };
        let first = entries.first().map_or(top + 1, |e| e.0);
        if first > cursor + 1 && top > cursor {
            let lost = first.min(top + 1) - cursor - 1;
            warn!(%room, lost, from = cursor + 1, "keeper: the stream no longer holds readings no keeper stored (raise cluster.stream_len, or lower cluster.keeper_lease_ms)");
            cluster.lost_to_keeper(lost);
            cursor = first.min(top + 1) - 1;
        }
        let full = entries.len() >= TAIL_BATCH;
        let mut stored = 0;
        let mut refused = false;
        let recorded = cursor;
        for (offset, json) in entries.iter().filter(|(o, _)| *o > recorded) {
            let reading = match serde_json::from_str::<WireReading<'_>>(json) {
                Ok(r) => r,
                Err(e) => {
                    warn!(%room, offset, error = %e, "keeper: unreadable stream entry; skipped");
                    cursor = *offset;
                    continue;
                }
            };
            let outcome = record(&k.history, &reading);
            if let Stored::Kept(_) = outcome {
                evaluate(self.inner.alerts.get(), k, cluster, room, &reading);
            }
            match outcome {
                Stored::Refused => {
                    refused = true;
                    break;
                }
                Stored::Kept(Some(t)) => k.pending.push_back((*offset, t)),
                Stored::Kept(None) => {}
                Stored::Dropped => {
                    cluster.lost_to_keeper(1);
                    cursor = *offset;
                    continue;
                }
            }
            stored += 1;
            cursor = *offset;
        }
        k.reading = Some((epoch, cursor));
        if full || refused {
            k.dirty = true;
        }
        drop(rooms);
        cluster.kept(stored);
        if full {
            self.inner.keeping.wake.notify_one();
        }
    }

    /// At shutdown: commits what was recorded, then gives every lease back with its
    /// watermark, so the next hub to publish keeps each room from there.
    async fn release_kept(&self, cluster: &Cluster) {
        let history = self.inner.history.clone();
        let _ = tokio::task::spawn_blocking(move || history.flush()).await;
        let store = self.store_committed();
        let kept: Vec<(Arc<str>, Option<Position>, Option<u64>)> = {
            let mut rooms = lock(&self.inner.keeping.rooms);
            rooms
                .drain()
                .map(|(name, mut k)| {
                    let committed = k.committed(store);
                    (name, k.reading, committed)
                })
                .collect()
        };
        for (room, reading, committed) in kept {
            let at = reading.as_ref().map(|(e, o)| (e.as_str(), *o));
            if let Err(e) = cluster.release(&room, at, committed).await {
                warn!(%room, error = %e, "keeper: could not give the room's lease back; it runs out by itself");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn committed_is_everything_before_the_first_offset_still_waiting() {
        let mut pending: VecDeque<(u64, Ticket)> = [(5, 10), (6, 11), (8, 12)].into();
        assert_eq!(committed_offset(&mut pending, 9, 8), 4);
        assert_eq!(pending.len(), 3);
        assert_eq!(committed_offset(&mut pending, 11, 8), 7);
        assert_eq!(pending.len(), 1);
        assert_eq!(committed_offset(&mut pending, 12, 9), 9);
        assert!(pending.is_empty());
        assert_eq!(period(5_000), Duration::from_millis(1_250));
    }
}
