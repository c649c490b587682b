//! The hub: the registry of rooms, and the one seam through which anything enters a room.
//!
//! The middle of the data flow. Sources (a WebSocket client, a bridged MQTT device) never
//! touch a [`Room`] directly: they `join` and get a [`Membership`], then `publish`,
//! `command` and `ack` through the hub. That seam is where a multi-hub deployment would
//! forward readings to other hubs (for example through Redis) without any change to the
//! sources.
//!
//! - [`room`]: one room's members, offset and fan-out of one encoded frame.
//! - [`dedup`]: per-device windows of recent `seq`s (resends are dropped).
//! - [`commands`]: commands waiting for their ack.
//! - [`mailbox`]: the bounded queue of frames for one member, drained by a sink.
//! - [`receipt`]: what a source waits for before it acknowledges readings.
//! - [`labels`]: series' friendly names and device classes, as their source names them.
//! - [`keeper`]: the cluster rooms whose readings this hub stores for every hub.

pub(crate) mod commands;
pub(crate) mod dedup;
pub(crate) mod keeper;
pub(crate) mod labels;
pub(crate) mod mailbox;
pub(crate) mod receipt;
pub(crate) mod room;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use crate::alerts::Alerts;
use crate::cluster::commands::NodeMessage;
use crate::cluster::feed::RoomSink;
use crate::cluster::presence::{Event as PresenceEvent, LocalMember};
use crate::cluster::{Cluster, ClusterError, Seat, WireReading};
use crate::config::{AckMode, LimitsConfig, Overflow};
use crate::hub::mailbox::{Close, Mailbox, Push};
use crate::hub::room::{
    CatchUpStep, Member, MemberSummary, Presence, Published, Room, RoomJoinError, RoomSummary,
    Since,
};
use crate::metrics::{Metrics, Rejection};
use crate::net::ws::frames;
use crate::sinks::history::durable::Commits;
use crate::sinks::history::{History, SeriesCaps};
use telehub_protocol::codes::ErrorCode;
use telehub_protocol::inbound::{AckIn, CommandIn, ProtoError, ReadingIn};
use telehub_protocol::role::{Role, Via};
use telehub_protocol::seqs::SeqRanges;

/// A cheap, cloneable handle to the hub's shared state.
#[derive(Clone)]
pub(crate) struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    rooms: Mutex<HashMap<Arc<str>, Arc<Room>>>,
    limits: LimitsConfig,
    metrics: Metrics,
    next_conn: AtomicU64,
    /// Every room's history; a new room takes its epoch and offset from here.
    history: History,
    /// Set once at start-up: who else sees WebSocket devices' readings.
    taps: OnceLock<Box<[Arc<dyn ReadingTap>]>>,
    /// What acks wait for: the store's commits (`history.ack = "durable"` with a
    /// store), or nothing.
    commits: Option<Commits>,
    /// Cleared at shutdown, before the store closes: readings are refused from then on.
    accepting: AtomicBool,
    /// Set once at start-up: the rules every room evaluates.
    alerts: OnceLock<Alerts>,
    /// Series' names and device classes (MQTT discovery).
    labels: labels::Labels,
    /// Set once at start-up with `[cluster] redis_url`: rooms are shared through Redis.
    cluster: OnceLock<Cluster>,
    /// The cluster rooms this hub keeps.
    keeping: keeper::Keeping,
    /// Set once at start-up on a cluster hub: where other hubs' history questions go to
    /// be answered (by the API, which the hub does not know).
    questions: OnceLock<tokio::sync::mpsc::Sender<Question>>,
}

/// Another hub's history question for a room this hub keeps ([`NodeMessage::Ask`]).
#[derive(Debug)]
pub(crate) struct Question {
    pub id: u64,
    /// The asking hub: where the answer goes.
    pub node: String,
    pub room: String,
    pub what: String,
    pub params: Vec<(String, String)>,
}

/// Questions waiting for the API at most; past it they are answered 503 `busy`.
pub(crate) const MAX_QUESTIONS: usize = 64;

/// Sees every message of readings a WebSocket device publishes, after its room took
/// them: the MQTT bridge's `mirror`. Called outside any lock, on the device's session
/// task, so it must not block (the bridge queues without waiting, or drops and counts).
pub(crate) trait ReadingTap: Send + Sync + 'static {
    /// `items` as the device sent them; a missing `ts` means `now_ms`.
    fn readings(&self, room: &str, device: &str, items: &[ReadingIn], now_ms: i64);
}

/// Why a join was refused (before the WebSocket upgrade, as an HTTP 503).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum JoinError {
    #[error("the hub holds its maximum number of rooms")]
    TooManyRooms,
    #[error("the room holds its maximum number of members")]
    RoomFull,
}

impl JoinError {
    pub(crate) fn rejection(self) -> Rejection {
        match self {
            JoinError::TooManyRooms => Rejection::TooManyRooms,
            JoinError::RoomFull => Rejection::RoomFull,
        }
    }
}

/// A member's place in a room. Dropping it leaves the room (with a `presence` leave for
/// the others), so a connection task that ends for any reason cleans up after itself.
pub(crate) struct Membership {
    hub: Hub,
    room: Arc<Room>,
    client: Arc<str>,
    role: Role,
    via: Via,
    conn: u64,
    mailbox: Arc<Mailbox>,
    /// A dashboard that joined with `since` and has not caught up with the room yet.
    catching_up: AtomicBool,
    /// A cluster dashboard's hold on its room's Redis subscription, and the `since`
    /// its join still has to read Redis for ([`Membership::cluster_join`]).
    cluster: Option<(Seat, Option<OwnedSince>)>,
    /// A cluster WebSocket device's hold on its room's subscription: the presence
    /// changes it is told of come through it.
    _device_seat: Option<Seat>,
}

/// A `since` and its `epoch`, kept past the upgrade for a cluster dashboard's join.
type OwnedSince = (u64, Option<String>);

/// Readings in one page of a catching-up dashboard's replay at most; the page is also
/// kept to half the outbound queue, so the frames that arrive meanwhile (presence, acks)
/// still fit. A page is queued only once the previous one has been written.
const REPLAY_PAGE: usize = 256;

impl Membership {
    /// For a dashboard still replaying the room log: queues its next page once its
    /// queue has drained (the session calls this when it has written everything).
    /// Returns true if it did anything (a page, a switch to live, a close), so the
    /// session takes the queue again; false once the member is live.
    pub(crate) fn catch_up(&self) -> bool {
        if !self.catching_up.load(Ordering::Relaxed) {
            return false;
        }
        let page = REPLAY_PAGE
            .min(self.hub.inner.limits.outbound_queue / 2)
            .max(1);
        let step = self.room.catch_up(self.conn, page, &self.hub.inner.metrics);
        if step != CatchUpStep::Page {
            self.catching_up.store(false, Ordering::Relaxed);
        }
        true
    }

    pub(crate) fn room(&self) -> &Arc<Room> {
        &self.room
    }

    /// A cluster dashboard's join, after [`Hub::join`]: waits for its room's Redis
    /// subscription, reads the room from Redis and queues the welcome, snapshot and
    /// recovered readings ([`Room::cluster_finish`]). Nothing for anyone else. At most
    /// [`crate::cluster::SUBSCRIBE_TIMEOUT`] plus one Redis round trip.
    pub(crate) async fn cluster_join(&mut self) {
        let Some((seat, since)) = self.cluster.as_mut() else {
            return;
        };
        let since = since.take();
        let fetched = match seat.confirmed().await {
            Ok(()) => {
                seat.cluster()
                    .fetch(&self.room.name, since.as_ref().map(|s| s.0))
                    .await
            }
            Err(e) => Err(e),
        };
        let since = since.as_ref().map(|(o, e)| (*o, e.as_deref()));
        self.room.cluster_finish(
            &self.client,
            self.conn,
            fetched,
            since,
            &self.hub.inner.metrics,
        );
    }
    pub(crate) fn client(&self) -> &Arc<str> {
        &self.client
    }
    pub(crate) fn role(&self) -> Role {
        self.role
    }
    pub(crate) fn mailbox(&self) -> &Arc<Mailbox> {
        &self.mailbox
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        let left = self
            .room
            .leave(&self.client, self.conn, &self.hub.inner.metrics);
        if let (true, Some(c)) = (left, self.hub.inner.cluster.get()) {
            c.member_left(
                &self.room.name,
                LocalMember {
                    client: self.client.clone(),
                    conn: self.conn,
                    role: self.role,
                    via: self.via,
                },
            );
        }
        self.hub.inner.metrics.connected(self.role, -1);
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its value whole, so poison is harmless.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Hub {
    /// A hub with metrics of its own, for tests.
    #[cfg(test)]
    pub(crate) fn new(limits: LimitsConfig, history: History) -> Hub {
        Hub::with_metrics(limits, history, Metrics::new())
    }

    /// A hub that updates `metrics`, whose registry the server has completed with the
    /// other stages' collectors.
    pub(crate) fn with_metrics(limits: LimitsConfig, history: History, metrics: Metrics) -> Hub {
        let commits = match history.config().ack {
            AckMode::Durable => history.commits(),
            AckMode::Memory => None,
        };
        Hub {
            inner: Arc::new(Inner {
                rooms: Mutex::new(HashMap::new()),
                limits,
                metrics,
                next_conn: AtomicU64::new(1),
                history,
                taps: OnceLock::new(),
                commits,
                accepting: AtomicBool::new(true),
                alerts: OnceLock::new(),
                labels: labels::Labels::default(),
                cluster: OnceLock::new(),
                keeping: keeper::Keeping::default(),
                questions: OnceLock::new(),
            }),
        }
    }

    /// Series' names and device classes, as their sources name them.
    pub(crate) fn labels(&self) -> &labels::Labels {
        &self.inner.labels
    }

    pub(crate) fn history(&self) -> &History {
        &self.inner.history
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    pub(crate) fn limits(&self) -> &LimitsConfig {
        &self.inner.limits
    }

    fn rooms(&self) -> MutexGuard<'_, HashMap<Arc<str>, Arc<Room>>> {
        // Map operations cannot leave the map half-changed, so poison is harmless.
        self.inner.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Joins `client` to `room_name` (creating the room if needed) with a fresh mailbox
    /// whose readings overflow as `overflow` says.
    // Each argument is a separate decision of the upgrade; a struct would only rename them.
    #[allow(clippy::too_many_arguments)]
    /// The welcome (and for a dashboard the snapshot) is already queued in the returned
    /// membership's mailbox; a `since` replay follows page by page as the session calls
    /// [`Membership::catch_up`].
    pub(crate) fn join(
        &self,
        room_name: &str,
        client: &str,
        role: Role,
        via: Via,
        presence: Presence,
        overflow: Overflow,
        since: Option<Since<'_>>,
    ) -> Result<Membership, JoinError> {
        let mailbox = Arc::new(
            Mailbox::with_close_depth(
                self.inner.limits.outbound_queue,
                self.inner.metrics.queue_depth_at_close().clone(),
            )
            .overflowing(overflow),
        );
        let conn = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let client: Arc<str> = client.into();
        // The hub-wide map is locked only to find or create the room; the join itself
        // (snapshot, replay cursor) takes that room's lock alone, so joins in other rooms
        // never wait for it. A room the sweeper freed in between says so, and the join
        // goes round again for a new one.
        let (room, catching_up) = loop {
            let room = self.room_for(room_name)?;
            let member = Member {
                role,
                via,
                presence,
                conn,
                mailbox: mailbox.clone(),
            };
            match room.join(
                &client,
                member,
                self.inner.limits.max_members_per_room,
                since,
                &self.inner.metrics,
            ) {
                Ok(catching_up) => break (room, catching_up),
                Err(RoomJoinError::Full) => return Err(JoinError::RoomFull),
                Err(RoomJoinError::Retired) => continue,
            }
        };
        self.inner.metrics.connected(role, 1);
        if let Some(c) = self.inner.cluster.get() {
            c.member_joined(
                &room.name,
                LocalMember {
                    client: client.clone(),
                    conn,
                    role,
                    via,
                },
            );
        }
        let cluster = match (self.inner.cluster.get(), role) {
            (Some(c), Role::Dashboard) => Some((
                c.seat(&room.name),
                since.map(|s| (s.offset, s.epoch.map(str::to_string))),
            )),
            _ => None,
        };
        let device_seat = match (self.inner.cluster.get(), role, via) {
            (Some(c), Role::Device, Via::Ws) => Some(c.seat(&room.name)),
            _ => None,
        };
        Ok(Membership {
            hub: self.clone(),
            room,
            client,
            role,
            via,
            conn,
            mailbox,
            catching_up: AtomicBool::new(catching_up),
            cluster,
            _device_seat: device_seat,
        })
    }

    /// Whether `client` is connected to `room` with a role other than `role`: a token may
    /// replace its own connection, but never take over another role's (a dashboard token
    /// evicting the device of the same id).
    pub(crate) fn held_by_other_role(&self, room: &str, client: &str, role: Role) -> bool {
        let room = self.rooms().get(room).cloned();
        room.and_then(|r| r.role_of(client))
            .is_some_and(|held| held != role)
    }

    /// Whether `client` is in `room` on its own WebSocket (for a bridge that must not
    /// evict a device holding a token for that id).
    pub(crate) fn held_over_ws(&self, room: &str, client: &str) -> bool {
        let room = self.rooms().get(room).cloned();
        room.and_then(|r| r.via_of(client)) == Some(Via::Ws)
    }

    /// The room called `name`, created if the hub has room for one more.
    fn room_for(&self, name: &str) -> Result<Arc<Room>, JoinError> {
        let mut rooms = self.rooms();
        if let Some(r) = rooms.get(name) {
            return Ok(r.clone());
        }
        if rooms.len() >= self.inner.limits.max_rooms {
            return Err(JoinError::TooManyRooms);
        }
        let name: Arc<str> = name.into();
        let history = self.inner.history.room(&name);
        let mut r = Room::new(name.clone(), history).with_alerts(self.inner.alerts.get());
        if self.inner.cluster.get().is_some() {
            r = r.clustered();
        }
        let r = Arc::new(r);
        rooms.insert(name, r.clone());
        self.inner.metrics.rooms(rooms.len());
        Ok(r)
    }

    /// Publishes a device's readings into its room: the seam every reading goes through.
    /// A reading whose `ts` is more than `limits.max_future_ms` ahead of the hub's clock
    /// is refused here, for every source (counted in [`Published::future_ts`]).
    ///
    /// The readings are fanned out before this returns; [`Published::receipt`] is what
    /// the source waits on before acknowledging [`Published::seqs`] (the commit to disk
    /// with durable acks), and [`Published::unstored`] must not be acknowledged at all.
    pub(crate) fn publish(&self, from: &Membership, mut items: Vec<ReadingIn>) -> Published {
        // A cluster hub takes readings only through Redis (`publish_cluster`, which the
        // MQTT bridge uses too, or `publish_settled` for HTTP and line protocol); anything
        // else is refused unstored
        // rather than fanned out locally with offsets Redis never gave (see
        // docs/DESIGN.md, "Several hubs").
        let clustered = self.inner.cluster.get().is_some();
        if clustered || !self.inner.accepting.load(Ordering::Acquire) {
            let mut refused = Published {
                stopping: !clustered,
                why_unstored: clustered
                    .then(|| "this source is not shared through Redis on a cluster hub".into()),
                unstored_count: items.len(),
                ..Published::default()
            };
            for seq in items.iter().filter_map(|r| r.seq) {
                refused.unstored.insert(seq);
            }
            return refused;
        }
        let now = now_ms();
        let latest = self.latest_ts(now);
        let before = items.len();
        items.retain(|r| r.ts.is_none_or(|ts| ts <= latest));
        let future_ts = before - items.len();
        let taps = match self.inner.taps.get() {
            Some(taps) if from.via == Via::Ws && !taps.is_empty() => Some((taps, items.clone())),
            _ => None,
        };
        let published = from.room.publish(
            &from.client,
            items,
            now,
            self.inner.limits.max_members_per_room * 2,
            SeriesCaps {
                per_room: self.inner.limits.max_series_per_room,
                per_device: self.inner.limits.max_series_per_device,
            },
            from.via == Via::Mqtt,
            &self.inner.metrics,
        );
        let receipt = receipt::Receipt::new(published.ticket, self.inner.commits.clone());
        let published = Published {
            future_ts,
            receipt,
            ..published
        };
        let m = &self.inner.metrics;
        m.readings_in(published.accepted);
        m.duplicates(published.duplicates);
        if let Some((taps, items)) = taps {
            if published.accepted > 0 {
                for tap in taps.iter() {
                    tap.readings(&from.room.name, &from.client, &items, now);
                }
            }
        }
        published
    }

    /// The cluster, on a hub with `[cluster] redis_url`.
    pub(crate) fn cluster(&self) -> Option<&Cluster> {
        self.inner.cluster.get()
    }

    /// Installs the cluster (once, at start-up, before any room exists).
    pub(crate) fn set_cluster(&self, cluster: Cluster) {
        let _ = self.inner.cluster.set(cluster);
    }

    /// Installs where other hubs' history questions go (once, at start-up); returns
    /// their queue's receiving end.
    pub(crate) fn take_questions(&self) -> tokio::sync::mpsc::Receiver<Question> {
        let (tx, rx) = tokio::sync::mpsc::channel(MAX_QUESTIONS);
        let _ = self.inner.questions.set(tx);
        rx
    }

    /// A cluster hub's publish of a WebSocket device's readings: Redis stamps, stores
    /// and PUBLISHes them in one script call, and every hub's dashboards (this one's
    /// too) get them from their subscription. Readings too far in the future are
    /// refused now (their count is returned); the rest is what the future answers.
    pub(crate) fn publish_cluster(
        &self,
        cluster: &Cluster,
        from: &Membership,
        mut items: Vec<ReadingIn>,
    ) -> (usize, ClusterPublishing) {
        let seqs: Vec<Option<u64>> = items.iter().map(|r| r.seq).collect();
        if !self.inner.accepting.load(Ordering::Acquire) {
            let out = ClusterPublished::refused(&seqs, "the hub is shutting down".into());
            return (0, Box::pin(std::future::ready(out)));
        }
        let now = now_ms();
        let latest = self.latest_ts(now);
        let before = items.len();
        items.retain(|r| r.ts.is_none_or(|ts| ts <= latest));
        let future_ts = before - items.len();
        let seqs: Vec<Option<u64>> = items.iter().map(|r| r.seq).collect();
        let stamping = cluster.publish(
            &from.room.name,
            &from.client,
            &items,
            now,
            self.inner.limits.max_series_per_room,
        );
        let hub = self.clone();
        let (cluster, room) = (cluster.clone(), from.room.name.clone());
        let fut = async move {
            let out = match stamping.await {
                Ok(stamped) => {
                    if stamped.keeper {
                        hub.keeper_claimed(&cluster, &room);
                    }
                    ClusterPublished::from_answers(&seqs, &stamped.answers)
                }
                Err(e) => {
                    ClusterPublished::refused(&seqs, format!("Redis did not take them ({e})"))
                }
            };
            let m = &hub.inner.metrics;
            m.readings_in(out.accepted);
            m.duplicates(out.duplicates);
            out
        };
        (future_ts, Box::pin(fut))
    }

    /// [`Hub::publish`] for sources that answer after the fact (HTTP ingest). On a
    /// cluster hub the readings go through Redis and this waits for its answer (there,
    /// `accepted` means Redis has them, as for a WebSocket device); on one hub it is
    /// [`Hub::publish`], and the caller waits on the receipt.
    pub(crate) async fn publish_settled(
        &self,
        from: &Membership,
        items: Vec<ReadingIn>,
    ) -> Published {
        let Some(cluster) = self.cluster() else {
            return self.publish(from, items);
        };
        let (future_ts, publishing) = self.publish_cluster(cluster, from, items);
        publishing
            .await
            .into_published(future_ts, self.inner.limits.max_series_per_room)
    }

    /// The latest `ts` a reading may carry at `now_ms` (`limits.max_future_ms` ahead).
    pub(crate) fn latest_ts(&self, now_ms: i64) -> i64 {
        let ahead = i64::try_from(self.inner.limits.max_future_ms).unwrap_or(i64::MAX);
        now_ms.saturating_add(ahead)
    }

    /// Refuses readings from now on (shutdown, before the store closes), so every reading
    /// acknowledged before the stop is committed by the close.
    pub(crate) fn stop_readings(&self) {
        self.inner.accepting.store(false, Ordering::Release);
    }

    /// Where durable acks wait (`None` when acks do not wait for the disk).
    pub(crate) fn commits(&self) -> Option<Commits> {
        self.inner.commits.clone()
    }

    /// Installs the reading taps (once, at start-up; later calls are ignored).
    pub(crate) fn set_taps(&self, taps: Vec<Arc<dyn ReadingTap>>) {
        let _ = self.inner.taps.set(taps.into_boxed_slice());
    }

    /// Installs the alerts engine (once, at start-up, before any room exists).
    pub(crate) fn set_alerts(&self, alerts: Alerts) {
        let _ = self.inner.alerts.set(alerts);
    }

    /// The alerts engine, if installed.
    pub(crate) fn alerts(&self) -> Option<&Alerts> {
        self.inner.alerts.get()
    }

    /// The clock's part of the alerts (`stale`): fires what went silent and tells the
    /// rooms' dashboards. Called every second by the server.
    pub(crate) fn tick_alerts(&self) {
        let Some(alerts) = self.inner.alerts.get() else {
            return;
        };
        for t in alerts.tick(now_ms()) {
            alerts.record(&t);
            self.broadcast(&t.room, crate::alerts::frame(&t));
        }
    }

    /// Queues `frame` for every dashboard of `room`: of this hub, or with `[cluster]`
    /// of every hub (through Redis, this hub's own included).
    pub(crate) fn broadcast(&self, room: &str, frame: crate::net::ws::frames::Frame) {
        if let Some(c) = self.inner.cluster.get() {
            c.broadcast(&Arc::from(room), frame);
            return;
        }
        let room = self.rooms().get(room).cloned();
        if let Some(room) = room {
            room.broadcast(frame, &self.inner.metrics);
        }
    }

    /// Forwards a dashboard's command to a device in the same room: on this hub, or
    /// with `[cluster]` on the hub the device is on (the answer, or the refusal, comes
    /// back to the dashboard's mailbox later).
    pub(crate) fn command(&self, from: &Membership, cmd: &CommandIn) -> Result<(), ProtoError> {
        if let Some(cluster) = self.inner.cluster.get() {
            if !from.room.has_device(&cmd.to) {
                self.command_elsewhere(cluster, from, cmd);
                self.inner.metrics.command();
                return Ok(());
            }
        }
        from.room.command(
            &from.client,
            from.conn,
            None,
            cmd,
            self.inner.limits.max_pending_commands,
            Duration::from_millis(self.inner.limits.command_timeout_ms),
        )?;
        self.inner.metrics.command();
        Ok(())
    }

    /// Sends a command for a device that is not on this hub to the hub it is on, if
    /// any. Runs in a task of its own: one Redis round trip ([`Cluster::route_command`]).
    fn command_elsewhere(&self, cluster: &Cluster, from: &Membership, cmd: &CommandIn) {
        let message = NodeMessage::Cmd {
            room: &from.room.name,
            to: &cmd.to,
            id: cmd.id.clone(),
            name: cmd.name.clone(),
            args: cmd.args.as_deref(),
            from: &from.client,
            conn: from.conn,
            node: cluster.node_id(),
        };
        // Strings, numbers and an already valid raw value: serialising cannot fail.
        let message = serde_json::to_string(&message).unwrap_or_default();
        let (cluster, hub) = (cluster.clone(), self.clone());
        let (room, mailbox) = (from.room.name.clone(), from.mailbox.clone());
        let (to, id) = (cmd.to.clone(), cmd.id.clone());
        tokio::spawn(async move {
            let refused = match cluster.route_command(&room, &to, message).await {
                Ok(true) => return,
                Ok(false) => ProtoError::new(
                    ErrorCode::UnknownDevice,
                    format!("no device `{to}` in room `{room}` on any hub"),
                ),
                Err(e) => ProtoError::new(
                    ErrorCode::ClusterUnavailable,
                    format!("the command could not be sent to the device's hub: {e}"),
                ),
            };
            hub.refuse(&mailbox, &refused.with_id(&id));
        });
    }

    /// Queues an error frame for a member, closing it if it does not read.
    fn refuse(&self, mailbox: &Mailbox, e: &ProtoError) {
        self.inner.metrics.error(e.code);
        if mailbox.push(frames::error_frame(e)) == Push::Full {
            mailbox.close(Close::SLOW_CONSUMER);
            self.inner.metrics.slow_consumer();
        }
    }

    /// Routes a device's ack back to the dashboard that sent the command (with
    /// `[cluster]`, to its hub).
    pub(crate) fn ack(&self, from: &Membership, ack: &AckIn) -> Result<(), ProtoError> {
        let Some(p) = from.room.ack(&from.client, ack, &self.inner.metrics)? else {
            return Ok(());
        };
        let (Some(cluster), Some(node)) = (self.inner.cluster.get(), p.node.as_deref()) else {
            return Ok(());
        };
        let message = NodeMessage::Ack {
            room: &from.room.name,
            id: ack.id.clone(),
            device: &from.client,
            ok: ack.ok,
            result: ack.result.as_deref(),
            dashboard: &p.dashboard,
            conn: p.dashboard_conn,
        };
        self.answer_elsewhere(cluster, node, &message);
        Ok(())
    }

    /// Sends `message` to hub `node` in a task of its own; an answer Redis does not
    /// take is logged (the dashboard's command then goes unanswered, as when a device
    /// never acks).
    fn answer_elsewhere(&self, cluster: &Cluster, node: &str, message: &NodeMessage<'_>) {
        let message = serde_json::to_string(message).unwrap_or_default();
        let (cluster, node) = (cluster.clone(), node.to_string());
        tokio::spawn(async move {
            if let Err(e) = cluster.reply(&node, message).await {
                tracing::warn!(%node, error = %e, "a command's answer could not be sent to its hub");
            }
        });
    }

    /// Reads a gap of `room`'s readings back from its stream and hands it to the room,
    /// again for each further gap its buffer turns out to have.
    async fn repair_gap(&self, c: &Cluster, room: &Room, epoch: &str, mut gap: (u64, u64)) {
        loop {
            let entries = match c.read_range(&room.name, gap.0, gap.1).await {
                Ok(e) => Some(e),
                Err(e) => {
                    tracing::warn!(room = %room.name, error = %e, "a gap could not be read from the stream; its dashboards resync");
                    None
                }
            };
            let (resyncs, next) = room.cluster_repaired(epoch, gap, entries, &self.inner.metrics);
            for _ in 0..resyncs {
                c.resynced();
            }
            match next {
                Some(next) => gap = next,
                None => return,
            }
        }
    }

    /// This hub's members, by room (the cluster's presence refresh and reap).
    pub(crate) fn local_members(&self) -> Vec<(Arc<str>, Vec<LocalMember>)> {
        let rooms: Vec<Arc<Room>> = self.rooms().values().cloned().collect();
        rooms
            .into_iter()
            .map(|r| (r.name.clone(), r.local_members()))
            .filter(|(_, m)| !m.is_empty())
            .collect()
    }

    /// Every room of the cluster with members on some hub, sorted by name, as Redis
    /// has them (the same on every hub); this hub's own rooms without a cluster.
    pub(crate) async fn cluster_summaries(&self) -> Result<Vec<RoomSummary>, ClusterError> {
        let Some(cluster) = self.inner.cluster.get() else {
            return Ok(self.summaries());
        };
        let rooms = cluster.rooms(self.inner.limits.max_rooms).await?;
        Ok(rooms
            .into_iter()
            .map(|r| {
                let (mut devices, mut dashboards) = (Vec::new(), Vec::new());
                for (client, e) in r.members {
                    let m = MemberSummary {
                        client: client.into(),
                        via: e.via,
                        node: Some(e.node.into()),
                    };
                    match e.role {
                        Role::Device => devices.push(m),
                        Role::Dashboard => dashboards.push(m),
                    }
                }
                RoomSummary {
                    room: r.room.into(),
                    offset: r.offset,
                    epoch: r.epoch.into(),
                    devices,
                    dashboards,
                }
            })
            .collect())
    }

    /// Every room, sorted by name.
    pub(crate) fn summaries(&self) -> Vec<RoomSummary> {
        let rooms: Vec<Arc<Room>> = self.rooms().values().cloned().collect();
        let mut out: Vec<RoomSummary> = rooms.iter().map(|r| r.summary()).collect();
        out.sort_by(|a, b| a.room.cmp(&b.room));
        out
    }

    /// Frees rooms that have been empty for `limits.empty_room_ttl_ms` and forgets
    /// commands that waited too long for an ack. Called periodically by the server.
    pub(crate) fn sweep(&self) {
        let ttl = Duration::from_millis(self.inner.limits.empty_room_ttl_ms);
        let timeout = Duration::from_millis(self.inner.limits.command_timeout_ms);
        let mut rooms = self.rooms();
        rooms.retain(|_, room| !room.retire_if_empty_for(ttl));
        self.inner.metrics.rooms(rooms.len());
        for room in rooms.values() {
            room.expire_commands(timeout);
        }
    }

    /// Asks every connection to close with `close` (shutdown: 1001 after a flush).
    pub(crate) fn close_all(&self, close: Close) {
        let rooms: Vec<Arc<Room>> = self.rooms().values().cloned().collect();
        for room in rooms {
            room.close_all(close);
        }
    }
}

impl RoomSink for Hub {
    fn node_message(&self, message: NodeMessage<'_>) {
        let Some(cluster) = self.inner.cluster.get() else {
            return;
        };
        match message {
            NodeMessage::Cmd {
                room,
                to,
                id,
                name,
                args,
                from,
                conn,
                node,
            } => {
                let cmd = CommandIn {
                    id,
                    to: to.to_string(),
                    name,
                    args: args.map(ToOwned::to_owned),
                };
                let found = self.rooms().get(room).cloned();
                let sent = match found {
                    Some(r) => r.command(
                        &from.into(),
                        conn,
                        Some(node.into()),
                        &cmd,
                        self.inner.limits.max_pending_commands,
                        Duration::from_millis(self.inner.limits.command_timeout_ms),
                    ),
                    None => Err(ProtoError::new(
                        ErrorCode::UnknownDevice,
                        format!("no device `{to}` in room `{room}`"),
                    )
                    .with_id(&cmd.id)),
                };
                if let Err(e) = sent {
                    let refusal = NodeMessage::Err {
                        room,
                        id: cmd.id.clone(),
                        code: e.code.as_str(),
                        message: e.message,
                        dashboard: from,
                        conn,
                    };
                    self.answer_elsewhere(cluster, node, &refusal);
                }
            }
            NodeMessage::Ask {
                id,
                node,
                room,
                what,
                params,
            } => {
                let question = Question {
                    id,
                    node: node.to_string(),
                    room: room.to_string(),
                    what: what.to_string(),
                    params,
                };
                let queued = self
                    .inner
                    .questions
                    .get()
                    .map(|q| q.try_send(question).is_ok());
                if queued != Some(true) {
                    let busy = crate::cluster::keeper::Answer::busy(
                        "the room's keeper has too many history questions waiting",
                    );
                    self.answer_elsewhere(cluster, node, &NodeMessage::Answer { id, answer: busy });
                }
            }
            NodeMessage::Answer { id, answer } => cluster.answered(id, answer),
            NodeMessage::Replaced { room, client, conn } => {
                let found = self.rooms().get(room).cloned();
                if let Some(r) = found {
                    r.close_connection(client, conn, Close::REPLACED);
                }
            }
            NodeMessage::Ack {
                room,
                id,
                device,
                ok,
                result,
                dashboard,
                conn,
            } => {
                let found = self.rooms().get(room).cloned();
                if let Some(r) = found {
                    let frame = frames::ack_frame(&id, device, ok, result);
                    r.tell(dashboard, conn, frame, &self.inner.metrics);
                }
            }
            NodeMessage::Err {
                room,
                id,
                code,
                message,
                dashboard,
                conn,
            } => {
                let found = self.rooms().get(room).cloned();
                if let (Some(r), Some(code)) = (found, ErrorCode::parse(code)) {
                    self.inner.metrics.error(code);
                    let frame = frames::error_frame(&ProtoError::new(code, message).with_id(&id));
                    r.tell(dashboard, conn, frame, &self.inner.metrics);
                }
            }
        }
    }

    fn room_frame(&self, room: &str, frame: &[u8]) {
        let room = self.rooms().get(room).cloned();
        if let Some(room) = room {
            room.broadcast(bytes::Bytes::copy_from_slice(frame), &self.inner.metrics);
        }
    }

    fn presence(&self, room: &str, version: u64, event: &PresenceEvent<'_>) {
        let room = self.rooms().get(room).cloned();
        if let Some(room) = room {
            let resyncs = room.cluster_presence(version, event, &self.inner.metrics);
            if let (true, Some(c)) = (resyncs > 0, self.inner.cluster.get()) {
                for _ in 0..resyncs {
                    c.resynced();
                }
            }
        }
    }

    fn deliver(&self, room: &str, offset: u64, epoch: &str, reading: &WireReading<'_>) {
        self.keeper_offer(room, offset, epoch, reading);
        let room = self.rooms().get(room).cloned();
        if let Some(room) = room {
            let delivered = room.cluster_deliver(offset, epoch, reading, &self.inner.metrics);
            let Some(c) = self.inner.cluster.get() else {
                return;
            };
            for _ in 0..delivered.resyncs {
                c.resynced();
            }
            if let Some(gap) = delivered.repair {
                // Read what this hub missed from the stream; the room's dashboards wait
                // (what arrives meanwhile is buffered) and then get it in order.
                let (c, hub, epoch) = (c.clone(), self.clone(), epoch.to_string());
                tokio::spawn(async move { hub.repair_gap(&c, &room, &epoch, gap).await });
            }
        }
    }
}

/// A cluster publish in flight: what a device's session waits on before it answers.
pub(crate) type ClusterPublishing =
    std::pin::Pin<Box<dyn std::future::Future<Output = ClusterPublished> + Send>>;

/// What became of a device message a cluster hub published through Redis.
#[derive(Debug, Default)]
pub(crate) struct ClusterPublished {
    /// Readings Redis stamped (and PUBLISHed).
    pub accepted: usize,
    pub duplicates: usize,
    /// Seqs Redis keeps (stamped now, or duplicates of ones it stamped before).
    pub seqs: SeqRanges,
    /// Refused because they would create a series past `limits.max_series_per_room`.
    pub series_limited: usize,
    /// Not taken (Redis unreachable, the hub stopping): resend them. With the reason.
    pub unstored: SeqRanges,
    pub unstored_count: usize,
    pub why_unstored: Option<String>,
    /// The offsets Redis gave the first and last reading stamped.
    pub offsets: Option<(u64, u64)>,
}

impl ClusterPublished {
    fn refused(seqs: &[Option<u64>], why: String) -> ClusterPublished {
        let mut out = ClusterPublished {
            unstored_count: seqs.len(),
            why_unstored: Some(why),
            ..ClusterPublished::default()
        };
        for s in seqs.iter().flatten() {
            out.unstored.insert(*s);
        }
        out
    }

    fn from_answers(seqs: &[Option<u64>], answers: &[i64]) -> ClusterPublished {
        let mut out = ClusterPublished::default();
        for (seq, answer) in seqs.iter().zip(answers) {
            match *answer {
                a if a > 0 => {
                    let offset = a.unsigned_abs();
                    out.offsets = Some(match out.offsets {
                        None => (offset, offset),
                        Some((first, last)) => (first.min(offset), last.max(offset)),
                    });
                    out.accepted += 1;
                    if let Some(s) = seq {
                        out.seqs.insert(*s);
                    }
                }
                0 => {
                    out.duplicates += 1;
                    if let Some(s) = seq {
                        out.seqs.insert(*s);
                    }
                }
                _ => out.series_limited += 1,
            }
        }
        out
    }

    /// The same outcome as a local [`Published`], already settled (nothing to wait for).
    fn into_published(self, future_ts: usize, max_series_per_room: usize) -> Published {
        Published {
            accepted: self.accepted,
            duplicates: self.duplicates,
            seqs: self.seqs,
            unstored: self.unstored,
            unstored_count: self.unstored_count,
            why_unstored: self.why_unstored,
            series_limit: (self.series_limited > 0)
                .then_some(("limits.max_series_per_room", max_series_per_room)),
            series_limited: self.series_limited,
            future_ts,
            offsets: self.offsets,
            ..Published::default()
        }
    }
}
