//! One room: its members, its reading offset, pending commands and duplicate detection,
//! and the fan-out of readings to its dashboards.
//!
//! All state sits behind one std mutex per room. Every operation is short and
//! synchronous (no `.await` while locked): pushing to a member is a non-blocking
//! [`Mailbox::push`], so a slow dashboard costs the room one failed push and a close, never
//! a wait. Readings are stamped with their offset and serialised once under the lock, so
//! offsets and per-device order are the same for every dashboard.
//!
//! A cluster hub's room (`[cluster]`) feeds its dashboards from Redis instead:
//! [`cluster`] holds that part.

mod cluster;
mod members;

use cluster::ClusterRoom;
use members::Members;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::alerts::eval::{RoomAlerts, State as AlertState};
use crate::alerts::{self, Alerts};
use crate::hub::commands::{Pending, PendingCommands};
use crate::hub::dedup::SeqWindow;
use crate::hub::mailbox::{Close, CommandLetter, Letter, Mailbox, Push};
use crate::hub::receipt::Receipt;
use crate::metrics::Metrics;
use crate::net::ws::frames::{self, Frame, ReadingOut};
use crate::sinks::history::durable::{Queued, Ticket};
use crate::sinks::history::{HistoryError, Record, RoomHistory, SeriesCaps};
use telehub_protocol::codes::ErrorCode;
use telehub_protocol::inbound::{AckIn, CommandIn, ProtoError, ReadingIn};
use telehub_protocol::role::{Role, Via};
use telehub_protocol::seqs::SeqRanges;

/// A connected member of a room.
#[derive(Clone)]
pub(crate) struct Member {
    pub role: Role,
    pub via: Via,
    /// Whose joins and leaves it is told of.
    pub presence: Presence,
    /// Distinguishes this connection from an older or newer one with the same client id.
    pub conn: u64,
    pub mailbox: Arc<Mailbox>,
}

/// Whose `presence` a member receives (`?presence=` on the upgrade). Devices' joins and
/// leaves go to everyone; dashboards' only to members that ask for `all`, so a room with
/// N viewers costs O(N) presence frames to fill, not O(N²). Everyone learns how many
/// dashboards there are from `welcome` (and `/api/rooms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Presence {
    /// Devices' presence only (the default).
    #[default]
    Devices,
    /// Every member's presence, dashboards included.
    All,
}

/// A room and its lock.
pub(crate) struct Room {
    pub name: Arc<str>,
    /// Names this room's offset sequence (see `docs/PROTOCOL.md`); taken from the
    /// room's history, so it survives a restart of a hub with durable history.
    pub epoch: Arc<str>,
    /// Where every accepted reading is recorded, under this room's lock, in offset order.
    history: Arc<RoomHistory>,
    /// The alerts engine and this room's instances, evaluated where readings are stamped.
    alerts: Option<(Alerts, Arc<Mutex<RoomAlerts>>)>,
    state: Mutex<RoomState>,
}

/// A dashboard's `?since=OFFSET[&epoch=EPOCH]`: what it saw before it reconnected.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Since<'a> {
    pub offset: u64,
    pub epoch: Option<&'a str>,
}

#[derive(Default)]
struct RoomState {
    members: Members,
    /// The mailboxes of the dashboards, kept beside `members` so that fan-out walks a
    /// dense vector instead of a map.
    subscribers: Vec<(u64, Arc<Mailbox>)>,
    /// Dashboards that joined with `since` and are still replaying the log: live
    /// readings are not queued for them (the log has them) until their cursor reaches
    /// the room's offset and they move to `subscribers`.
    catching_up: Vec<CatchUp>,
    /// Set by the sweeper as it frees the room: a join that reaches it afterwards goes
    /// back to the registry for a new room.
    retired: bool,
    offset: u64,
    pending: PendingCommands,
    dedup: HashMap<Arc<str>, SeqWindow>,
    /// When the last member left; `None` while the room has members.
    empty_since: Option<Instant>,
    /// A cluster hub's room (`[cluster]`): its dashboards are fed from Redis, not by
    /// `publish`. `None` on a single hub, so its hot path never looks at it.
    cluster: Option<Box<ClusterRoom>>,
}

/// A dashboard replaying the room log at its own pace.
struct CatchUp {
    conn: u64,
    mailbox: Arc<Mailbox>,
    /// The next offset to send it.
    cursor: u64,
    /// Readings replayed so far (for `telehub_replay_frames`).
    replayed: usize,
}

/// Why [`Room::join`] did not add the member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RoomJoinError {
    /// The room has `max_members` members.
    Full,
    /// The sweeper freed the room meanwhile: join a new one.
    Retired,
}

/// What one [`Room::catch_up`] step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CatchUpStep {
    /// A page of the replay is queued; more may follow.
    Page,
    /// The dashboard has caught up and is live now (a last page may be queued).
    Live,
    /// The log was trimmed past its cursor: it is closed as a slow consumer.
    Dropped,
}

/// What became of a device message's readings.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Published {
    /// Readings recorded and fanned out (stored or not).
    pub accepted: usize,
    pub duplicates: usize,
    /// The seqs `accepted` will list once `ticket` is committed: readings recorded and
    /// queued for the store (or kept in memory only), and duplicates of kept ones.
    pub seqs: SeqRanges,
    /// Seqs of readings fanned out that the store refused (its queue is full): they are
    /// not kept, so the device must resend them (`store_unavailable`).
    pub unstored: SeqRanges,
    /// Readings fanned out that the store refused, with or without a seq.
    pub unstored_count: usize,
    /// The store ticket every kept reading of the message is covered by (0: none).
    pub ticket: Ticket,
    /// What a source waits on before acknowledging `seqs` (set by the hub).
    pub receipt: Receipt,
    /// Refused whole: the hub is shutting down (set by the hub; `unstored` lists them).
    pub stopping: bool,
    /// Why `unstored` were not kept, when the hub knows better than "the queue is full"
    /// (a cluster hub: Redis did not take them).
    pub why_unstored: Option<String>,
    /// Readings refused because they would create a series past a cap.
    pub series_limited: usize,
    /// The first cap that refused one: its config key and value.
    pub series_limit: Option<(&'static str, usize)>,
    /// Readings refused because their `ts` is past `limits.max_future_ms` (set by the hub).
    pub future_ts: usize,
    /// The room offsets of the first and last reading taken (they are consecutive).
    pub offsets: Option<(u64, u64)>,
}

/// A room as `GET /api/rooms` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct RoomSummary {
    pub room: Arc<str>,
    pub offset: u64,
    pub epoch: Arc<str>,
    pub devices: Vec<MemberSummary>,
    pub dashboards: Vec<MemberSummary>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct MemberSummary {
    pub client: Arc<str>,
    pub via: Via,
    /// With `[cluster]`: the hub it is connected to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<Arc<str>>,
}

/// The config key and value of the cap behind a refused new series.
fn series_cap(e: &HistoryError) -> Option<(&'static str, usize)> {
    match *e {
        HistoryError::SeriesLimit { max } => Some(("history.max_series", max)),
        HistoryError::RoomSeriesLimit { max } => Some(("limits.max_series_per_room", max)),
        HistoryError::DeviceSeriesLimit { max } => Some(("limits.max_series_per_device", max)),
        _ => None,
    }
}

/// Queues a reading's `frame` for one dashboard: a full queue closes it as a slow
/// consumer, or with `overflow=latest` keeps it as its series' latest.
fn deliver_reading(
    mailbox: &Mailbox,
    frame: Frame,
    series: (&Arc<str>, &str),
    offset: u64,
    metrics: &Metrics,
) {
    match mailbox.push_reading(frame, series.0, series.1, offset) {
        Push::Full => {
            mailbox.close(Close::SLOW_CONSUMER);
            metrics.slow_consumer();
        }
        Push::Coalesced { skipped: true } => metrics.reading_skipped(),
        _ => {}
    }
}

/// Queues `frame` for one member; a full queue closes it as a slow consumer.
fn deliver(mailbox: &Mailbox, frame: Frame, metrics: &Metrics) {
    if mailbox.push(frame) == Push::Full {
        mailbox.close(Close::SLOW_CONSUMER);
        metrics.slow_consumer();
    }
}

impl Room {
    /// A room whose epoch and offset continue from its history (a fresh epoch and
    /// offset 0 when the hub has none for it).
    pub(crate) fn new(name: Arc<str>, history: Arc<RoomHistory>) -> Room {
        // The seqs the history already holds count as seen, so a device that resends
        // readings across a hub restart (their `accepted` was lost with the old process)
        // does not get them stored twice: the store's committed windows first (readings
        // older than memory holds), then memory's log over them (the newest, some not
        // committed yet).
        let mut dedup: HashMap<Arc<str>, SeqWindow> = HashMap::new();
        for s in history.stored_seqs() {
            if let Some(window) = SeqWindow::from_parts(s.high, &s.bits) {
                dedup.insert(s.device, window);
            }
        }
        history.replay(0, None, |e| {
            if let Some(seq) = e.seq {
                match dedup.get_mut(e.device) {
                    Some(window) => {
                        window.insert(seq);
                    }
                    None => {
                        let mut window = SeqWindow::default();
                        window.insert(seq);
                        dedup.insert(e.device.into(), window);
                    }
                }
            }
        });
        let state = RoomState {
            offset: history.offset(),
            dedup,
            ..RoomState::default()
        };
        Room {
            name,
            epoch: history.epoch().clone(),
            history,
            alerts: None,
            state: Mutex::new(state),
        }
    }

    /// The same room on a cluster hub: dashboards are fed from Redis, whose offsets
    /// are the room's (its history here, if this hub keeps the room, numbers its
    /// records its own way).
    pub(crate) fn clustered(self) -> Room {
        let mut st = self.lock();
        st.cluster = Some(Box::default());
        st.offset = 0;
        drop(st);
        self
    }

    /// The same room, evaluating `alerts`' rules on its readings.
    pub(crate) fn with_alerts(mut self, alerts: Option<&Alerts>) -> Room {
        self.alerts = alerts.map(|a| (a.clone(), a.room(&self.name)));
        self
    }

    /// Queues `frame` (an `alert` of this room, from the clock) for every dashboard.
    pub(crate) fn broadcast(&self, frame: Frame, metrics: &Metrics) {
        let st = self.lock();
        for (_, mailbox) in &st.subscribers {
            deliver(mailbox, frame.clone(), metrics);
        }
        metrics.frames_out(st.subscribers.len());
        if let Some(cr) = &st.cluster {
            cr.broadcast(frame, metrics);
        }
    }

    fn lock(&self) -> MutexGuard<'_, RoomState> {
        // Room operations keep the state consistent at every step that can panic, so a
        // poisoned lock (a panic elsewhere while holding it) is still safe to use.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The role of the member connected as `client`, if any.
    pub(crate) fn role_of(&self, client: &str) -> Option<Role> {
        self.lock().members.get(client).map(|m| m.role)
    }

    /// How `client` is connected, if it is.
    pub(crate) fn via_of(&self, client: &str) -> Option<Via> {
        self.lock().members.get(client).map(|m| m.via)
    }

    /// Adds a member, replacing (close 4000) an older connection with the same client id.
    /// The welcome is queued first, under the lock, so no reading can precede it. Returns
    /// whether the member is catching up (see [`Room::catch_up`]).
    ///
    /// A dashboard then gets the `snapshot` of the room's last values. With `since`, it
    /// is not yet a subscriber: its replay cursor is recorded in the same critical section
    /// that `publish` takes, and the session pulls the replay page by page as the client
    /// reads ([`Room::catch_up`]), so the replay and the live stream meet with no gap and
    /// no duplicate, and the join itself does no more work than a live one.
    pub(crate) fn join(
        &self,
        client: &Arc<str>,
        member: Member,
        max_members: usize,
        since: Option<Since<'_>>,
        metrics: &Metrics,
    ) -> Result<bool, RoomJoinError> {
        let mut st = self.lock();
        if st.retired {
            return Err(RoomJoinError::Retired);
        }
        let replacing = st.members.get(client).cloned();
        if replacing.is_none() && st.members.len() >= max_members {
            return Err(RoomJoinError::Full);
        }
        if let Some(old) = &replacing {
            old.mailbox.close(Close::REPLACED);
            st.subscribers.retain(|(conn, _)| *conn != old.conn);
            st.catching_up.retain(|c| c.conn != old.conn);
            if let Some(cr) = st.cluster.as_mut() {
                cr.forget(old.conn);
            }
        }
        let clustered = st.cluster.is_some() && member.role == Role::Dashboard;
        let all = member.presence == Presence::All;
        let (dashboards, others) = st.members.roster(client, all);
        let mut snapshot = None;
        let mut recovered = None;
        let mut cursor = None;
        if member.role == Role::Dashboard && !clustered {
            // A room with no series yet has nothing to show: no snapshot then. Its size
            // is bounded by `limits.max_series_per_room`.
            snapshot = self.history.snapshot(|all| {
                let series: Vec<_> = all.iter().map(frames::snapshot_entry).collect();
                (!series.is_empty()).then(|| frames::snapshot_frame(&series))
            });
            if let Some(since) = since {
                let (complete, from) = self.history.replay_start(since.offset, since.epoch);
                recovered = Some(complete);
                if from <= st.offset {
                    cursor = Some(from);
                } else {
                    metrics.replayed(0);
                }
            }
        }
        let epoch = match st.cluster.as_ref().and_then(|c| c.epoch.clone()) {
            Some(e) => e,
            None => self.epoch.clone(),
        };
        let welcome = frames::welcome(
            &self.name,
            client,
            member.role,
            st.offset,
            &epoch,
            &others,
            dashboards,
            recovered,
        );
        // A dashboard learns the room's firing alerts right after the snapshot.
        let mut firing = Vec::new();
        if let (Role::Dashboard, false, Some((_, room_alerts))) =
            (member.role, clustered, &self.alerts)
        {
            let mut live = Vec::new();
            alerts::lock(room_alerts).list(&mut live);
            live.retain(|l| l.state == AlertState::Firing);
            live.sort_by_key(|l| l.since);
            firing = live.iter().map(alerts::listed_frame).collect();
        }
        if !clustered {
            member
                .mailbox
                .push_all(std::iter::once(welcome).chain(snapshot).chain(firing));
        }
        // A cluster room's presence comes from Redis, in one order on every hub
        // (`Room::cluster_presence`).
        if st.cluster.is_none() {
            let join = frames::presence("join", client, member.role, member.via);
            for m in st.members.told_of(client, member.role) {
                deliver(&m.mailbox, join.clone(), metrics);
            }
        }
        if clustered {
            if let Some(cr) = st.cluster.as_mut() {
                cr.start_join(client, member.conn, all, member.mailbox.clone());
            }
        } else {
            match cursor {
                Some(cursor) => st.catching_up.push(CatchUp {
                    conn: member.conn,
                    mailbox: member.mailbox.clone(),
                    cursor,
                    replayed: 0,
                }),
                None if member.role == Role::Dashboard => {
                    st.subscribers.push((member.conn, member.mailbox.clone()))
                }
                None => {}
            }
        }
        st.members.insert(client.clone(), member);
        st.empty_since = None;
        Ok(cursor.is_some())
    }

    /// Queues the next page (at most `page` readings) of a catching-up dashboard's
    /// replay, and makes it a live subscriber once its cursor passes the room's offset.
    /// Called by its session whenever its queue has drained, so the replay goes as fast
    /// as the client reads and never holds more than a page. Under the room lock, like
    /// `publish`: every offset up to the switch comes from the log, every later one live.
    pub(crate) fn catch_up(&self, conn: u64, page: usize, metrics: &Metrics) -> CatchUpStep {
        let mut st = self.lock();
        let st = &mut *st;
        let Some(i) = st.catching_up.iter().position(|c| c.conn == conn) else {
            return CatchUpStep::Live;
        };
        let c = &mut st.catching_up[i];
        let mut frames = Vec::new();
        let next = self.history.replay_page(c.cursor, page.max(1), |e| {
            frames.push(frames::reading_frame(&ReadingOut {
                room: &self.name,
                device: e.device,
                metric: e.metric,
                value: e.value,
                unit: e.unit,
                ts: e.ts,
                seq: e.seq,
                offset: e.offset,
            }))
        });
        let Some(next) = next else {
            let c = st.catching_up.swap_remove(i);
            c.mailbox.close(Close::SLOW_CONSUMER);
            metrics.slow_consumer();
            metrics.replayed(c.replayed);
            return CatchUpStep::Dropped;
        };
        c.cursor = next;
        c.replayed += frames.len();
        for f in frames {
            deliver(&c.mailbox, f, metrics);
        }
        if c.cursor <= st.offset {
            return CatchUpStep::Page;
        }
        let c = st.catching_up.swap_remove(i);
        metrics.replayed(c.replayed);
        st.subscribers.push((c.conn, c.mailbox));
        CatchUpStep::Live
    }

    /// Removes the member if `conn` is still its connection (a replaced connection leaves
    /// silently: its successor is already in). Returns whether it did.
    pub(crate) fn leave(&self, client: &str, conn: u64, metrics: &Metrics) -> bool {
        let mut st = self.lock();
        let Some(member) = st.members.get(client) else {
            return false;
        };
        if member.conn != conn {
            return false;
        }
        let role = member.role;
        let via = member.via;
        st.members.remove(client);
        st.subscribers.retain(|(c, _)| *c != conn);
        st.catching_up.retain(|c| c.conn != conn);
        if let Some(cr) = st.cluster.as_mut() {
            cr.forget(conn);
        }
        st.pending.forget_connection(conn);
        if st.cluster.is_none() {
            let leave = frames::presence("leave", client, role, via);
            for m in st.members.told_of(client, role) {
                deliver(&m.mailbox, leave.clone(), metrics);
            }
        }
        if st.members.is_empty() {
            st.empty_since = Some(Instant::now());
        }
        true
    }

    /// Stamps, serialises once and fans out a device's readings, in order. With
    /// `ts_identity` (bridged MQTT devices, whose broker may deliver a message again), a
    /// reading without `seq` whose series already holds the same `ts` and value is a
    /// duplicate.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn publish(
        &self,
        device: &Arc<str>,
        items: Vec<ReadingIn>,
        now_ms: i64,
        max_dedup: usize,
        caps: SeriesCaps,
        ts_identity: bool,
        metrics: &Metrics,
    ) -> Published {
        let mut out = Published::default();
        let mut st = self.lock();
        let st = &mut *st;
        // With rules in force, the room's instances are stepped reading by reading, in
        // the same critical section, so an alert follows the reading that caused it.
        let mut alerting = self.alerts.as_ref().and_then(|(engine, room_alerts)| {
            let rules = engine.rules();
            (!rules.rules.is_empty()).then(|| (engine, rules, alerts::lock(room_alerts)))
        });
        let mut transitions = Vec::new();
        for item in items {
            if let (true, None, Some(ts)) = (ts_identity, item.seq, item.ts) {
                if self
                    .history
                    .holds_point(device, &item.metric, ts, item.value)
                {
                    out.duplicates += 1;
                    out.ticket = out.ticket.max(self.history.last_ticket());
                    continue;
                }
            }
            if let Some(seq) = item.seq {
                if !st.dedup.contains_key(device) && st.dedup.len() >= max_dedup {
                    // Forget the windows of devices that are gone before refusing to
                    // remember a new one; the map stays bounded either way.
                    let members = &st.members;
                    st.dedup.retain(|d, _| members.contains_key(d));
                }
                if st.dedup.len() < max_dedup || st.dedup.contains_key(device) {
                    let window = st.dedup.entry(device.clone()).or_default();
                    if !window.insert(seq) {
                        // Its original was queued before now (or loaded from disk), so
                        // it is on disk once everything queued so far is.
                        out.duplicates += 1;
                        out.seqs.insert(seq);
                        out.ticket = out.ticket.max(self.history.last_ticket());
                        continue;
                    }
                }
            }
            let ts = item.ts.unwrap_or(now_ms);
            let recorded = self.history.record_capped(
                &Record {
                    device,
                    metric: &item.metric,
                    unit: item.unit.as_deref(),
                    ts,
                    value: item.value,
                    seq: item.seq,
                },
                caps,
            );
            let offset = match recorded {
                Ok(rec) => {
                    match rec.queued {
                        Some(Queued::Ticket(t)) => {
                            out.ticket = out.ticket.max(t);
                            if let Some(seq) = item.seq {
                                out.seqs.insert(seq);
                            }
                        }
                        None => {
                            if let Some(seq) = item.seq {
                                out.seqs.insert(seq);
                            }
                        }
                        Some(Queued::Refused) => {
                            // Fanned out below but not kept: forget its seq, so that
                            // the device's resend is recorded (and stored) after all.
                            out.unstored_count += 1;
                            if let Some(seq) = item.seq {
                                out.unstored.insert(seq);
                                if let Some(window) = st.dedup.get_mut(device) {
                                    window.remove(seq);
                                }
                            }
                        }
                    }
                    rec.offset
                }
                Err(e) => {
                    // Past a series cap: refused, so forget its seq (a resend after the
                    // cap is raised or series expire must not count as a duplicate).
                    if let (Some(seq), Some(window)) = (item.seq, st.dedup.get_mut(device)) {
                        window.remove(seq);
                    }
                    out.series_limited += 1;
                    out.series_limit = out.series_limit.or_else(|| series_cap(&e));
                    continue;
                }
            };
            st.offset = offset;
            out.offsets = Some((out.offsets.map_or(offset, |o| o.0), offset));
            let frame = frames::reading_frame(&ReadingOut {
                room: &self.name,
                device,
                metric: &item.metric,
                value: item.value,
                unit: item.unit.as_deref(),
                ts,
                seq: item.seq,
                offset,
            });
            for (_, mailbox) in &st.subscribers {
                deliver_reading(
                    mailbox,
                    frame.clone(),
                    (device, &item.metric),
                    offset,
                    metrics,
                );
            }
            metrics.frames_out(st.subscribers.len());
            out.accepted += 1;
            if let Some((engine, rules, room_alerts)) = alerting.as_mut() {
                room_alerts.observe(
                    rules,
                    device,
                    &item.metric,
                    (item.value, ts, now_ms),
                    &mut transitions,
                );
                for t in transitions.drain(..) {
                    engine.record(&t);
                    let frame = alerts::frame(&t);
                    for (_, mailbox) in &st.subscribers {
                        deliver(mailbox, frame.clone(), metrics);
                    }
                    metrics.frames_out(st.subscribers.len());
                }
            }
        }
        drop(alerting);
        if !st.catching_up.is_empty() && out.accepted > 0 {
            // The log may have dropped entries a catching-up dashboard has yet to read:
            // it cannot be given them any more, so it is as slow a consumer as any.
            let oldest = self.history.oldest_offset();
            st.catching_up.retain(|c| {
                let behind = c.cursor < oldest;
                if behind {
                    c.mailbox.close(Close::SLOW_CONSUMER);
                    metrics.slow_consumer();
                    metrics.replayed(c.replayed);
                }
                !behind
            });
        }
        out
    }

    /// Whether `client` is a device connected to this room on this hub.
    pub(crate) fn has_device(&self, client: &str) -> bool {
        self.lock()
            .members
            .get(client)
            .is_some_and(|m| m.role == Role::Device)
    }

    /// Forwards a dashboard's command to a device of this room and remembers who asked:
    /// `from` on connection `from_conn`, of this hub or (with `[cluster]`) of hub `node`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn command(
        &self,
        from: &Arc<str>,
        from_conn: u64,
        node: Option<Arc<str>>,
        cmd: &CommandIn,
        max_pending: usize,
        timeout: Duration,
    ) -> Result<(), ProtoError> {
        let mut st = self.lock();
        let device = match st.members.get_key_value(cmd.to.as_str()) {
            Some((name, m)) if m.role == Role::Device => (name.clone(), m.mailbox.clone()),
            _ => {
                return Err(ProtoError::new(
                    ErrorCode::UnknownDevice,
                    format!("no device `{}` in room `{}`", cmd.to, self.name),
                )
                .with_id(&cmd.id))
            }
        };
        st.pending.admit(&cmd.id, max_pending, timeout)?;
        let letter = Letter::Command(Box::new(CommandLetter {
            id: cmd.id.clone(),
            from: from.clone(),
            name: cmd.name.clone(),
            args: cmd.args.clone(),
        }));
        if device.1.push(letter) != Push::Queued {
            // The device is not reading (full queue) or is closing; say so rather than
            // leave the dashboard waiting for an ack that cannot come.
            return Err(ProtoError::new(
                ErrorCode::UnknownDevice,
                format!("device `{}` is not accepting commands now", cmd.to),
            )
            .with_id(&cmd.id));
        }
        st.pending.insert(
            cmd.id.clone(),
            Pending {
                dashboard: from.clone(),
                dashboard_conn: from_conn,
                node,
                device: device.0,
                since: Instant::now(),
            },
        );
        Ok(())
    }

    /// Routes a device's ack to the dashboard that sent the command. A command from a
    /// dashboard on another hub is answered there: its [`Pending`] comes back, for the
    /// hub to send on.
    pub(crate) fn ack(
        &self,
        device: &str,
        ack: &AckIn,
        metrics: &Metrics,
    ) -> Result<Option<Pending>, ProtoError> {
        let mut st = self.lock();
        let p = st.pending.take(&ack.id, device)?;
        if p.node.is_some() {
            return Ok(Some(p));
        }
        let frame = frames::ack_frame(&ack.id, device, ack.ok, ack.result.as_deref());
        self.tell_locked(&st, &p.dashboard, p.dashboard_conn, frame, metrics);
        Ok(None)
    }

    /// Queues `frame` for `client` if it is still on connection `conn` (the answer to a
    /// command it sent, coming back from another hub).
    pub(crate) fn tell(&self, client: &str, conn: u64, frame: Frame, metrics: &Metrics) {
        let st = self.lock();
        self.tell_locked(&st, client, conn, frame, metrics);
    }

    fn tell_locked(
        &self,
        st: &RoomState,
        client: &str,
        conn: u64,
        frame: Frame,
        metrics: &Metrics,
    ) {
        if let Some(m) = st.members.get(client) {
            if m.conn == conn {
                deliver(&m.mailbox, frame, metrics);
            }
        }
    }

    /// Forgets commands older than `timeout`.
    pub(crate) fn expire_commands(&self, timeout: Duration) {
        self.lock().pending.expire(timeout);
    }

    /// If the room has been empty for at least `ttl`, marks it retired (a join that
    /// reaches it later is sent back for a new room) and returns true.
    pub(crate) fn retire_if_empty_for(&self, ttl: Duration) -> bool {
        let mut st = self.lock();
        st.retired = st.empty_since.is_some_and(|t| t.elapsed() >= ttl);
        st.retired
    }

    pub(crate) fn summary(&self) -> RoomSummary {
        let st = self.lock();
        let mut devices = Vec::new();
        let mut dashboards = Vec::new();
        for (client, m) in st.members.iter() {
            let entry = MemberSummary {
                client: client.clone(),
                via: m.via,
                node: None,
            };
            match m.role {
                Role::Device => devices.push(entry),
                Role::Dashboard => dashboards.push(entry),
            }
        }
        devices.sort_by(|a, b| a.client.cmp(&b.client));
        dashboards.sort_by(|a, b| a.client.cmp(&b.client));
        RoomSummary {
            room: self.name.clone(),
            offset: st.offset,
            epoch: match st.cluster.as_ref().and_then(|c| c.epoch.clone()) {
                Some(e) => e,
                None => self.epoch.clone(),
            },
            devices,
            dashboards,
        }
    }

    /// Closes `client`'s connection `conn` with `close`, if it is still here (its client
    /// id connected to another hub of the cluster).
    pub(crate) fn close_connection(&self, client: &str, conn: u64, close: Close) {
        if let Some(m) = self.lock().members.get(client).filter(|m| m.conn == conn) {
            m.mailbox.close(close);
        }
    }

    /// Every member on this hub, as the cluster's presence entries need them.
    pub(crate) fn local_members(&self) -> Vec<crate::cluster::presence::LocalMember> {
        self.lock()
            .members
            .iter()
            .map(|(client, m)| crate::cluster::presence::LocalMember {
                client: client.clone(),
                conn: m.conn,
                role: m.role,
                via: m.via,
            })
            .collect()
    }

    /// Asks every member to close (used by shutdown).
    pub(crate) fn close_all(&self, close: Close) {
        for m in self.lock().members.values() {
            m.mailbox.close(close);
        }
    }
}
