//! One WebSocket connection, from the first frame to the close.
//!
//! One task per connection, one `select!` loop: it decodes what the client sends
//! ([`codec::Decoder`]) and hands it to the [`Hub`], and it drains the connection's
//! [`Mailbox`] into the socket (every queued frame in one `writev`), so reading never waits
//! for a slow write and vice versa. One task, not a reader and a writer, because memory
//! per idle connection is a target: a second task and its timer cost about a kilobyte.
//! Dropping the [`Membership`] at the end leaves the room.
//!
//! Nothing a client sends is trusted: every message is validated by [`protocol::parse`],
//! errors are answered with an `error` frame and the connection stays open, except for
//! frames over the size limit (close 1009), invalid UTF-8 (1007) and WebSocket protocol
//! violations (1002).
//!
//! With `[auth] mode = "token"` a browser's connection starts before its room: it has
//! [`AUTH_FRAME_TIMEOUT`] to send `{"type":"auth","token":...}`, the hub sends nothing
//! until then and joins the room only once the token grants it (else close 1008). A
//! connection's token is watched by the same one timer as the pings: `token_expiring`
//! [`EXPIRY_WARNING`] before `exp`, close 4001 at `exp` unless a fresh `auth` came.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tracing::debug;

use crate::auth::{time_left, Answer, Authorizer, Grant, Refusal};
use crate::config::Overflow;
use crate::hub::mailbox::{Close, Mailbox, Push};
use crate::hub::room::{Presence, Since};
use crate::hub::{ClusterPublished, ClusterPublishing, Hub, JoinError, Membership};
use crate::net::tcp_info;
use crate::net::transport::{WsRead, WsWrite};
use crate::net::ws::codec::{self, Decoder, Message};
use crate::net::ws::frames::{self, Frame};
use crate::shutdown::Shutdown;
use crate::sinks::linger::Linger;
use crate::sinks::ws_writer::{send_close, Unsent};
use crate::sources::ws_acks::{self, PendingAcks};
use telehub_protocol::codes::{close, ErrorCode};
use telehub_protocol::inbound::{ClientMessage, ProtoError, ReadingIn};
use telehub_protocol::rate::TokenBucket;
use telehub_protocol::role::{Role, Via};
use telehub_protocol::seqs::SeqRanges;

/// How long the session waits for the peer's answer to our close frame.
const CLOSE_ECHO_TIMEOUT: Duration = Duration::from_secs(2);
/// A quiet client whose TCP acknowledged more than this many new bytes over a ping
/// interval is alive and reading, pong or not (pings alone are a few bytes).
const LIVE_ACKED_BYTES: u64 = 1024;
/// How often a client over its rate limit is told so, at most.
const FLOOD_NOTICE_INTERVAL: Duration = Duration::from_secs(1);
/// Item errors sent for one `readings` batch at most; one summary stands for the rest.
const MAX_ITEM_ERRORS: usize = 3;

/// How long a connection without `Authorization` (token mode) has to send its `auth`.
pub(crate) const AUTH_FRAME_TIMEOUT: Duration = Duration::from_secs(5);
/// How long before its token's `exp` a connection is sent `token_expiring`.
const EXPIRY_WARNING: Duration = Duration::from_secs(30);
/// Refreshes (`auth` frames on a live connection) verified at most this often.
const REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The furthest a token's expiry is armed; a later `exp` (up to `u64::MAX` seconds) would
/// overflow the clock.
const MAX_TOKEN_LIFE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// A first-frame `auth` or a refresh was refused: no token, or a bad one.
const CLOSE_UNAUTHORIZED: Close = Close {
    code: close::POLICY_VIOLATION,
    reason: close::REASON_UNAUTHORIZED,
    flush_first: false,
};
/// A valid token without this room, role or client id (or a narrower refresh).
const CLOSE_FORBIDDEN: Close = Close {
    code: close::POLICY_VIOLATION,
    reason: close::REASON_FORBIDDEN,
    flush_first: false,
};
/// The token reached `exp` without a refresh.
const CLOSE_TOKEN_EXPIRED: Close = Close {
    code: close::TOKEN_EXPIRED,
    reason: close::REASON_TOKEN_EXPIRED,
    flush_first: false,
};

/// Where a session starts.
pub(crate) enum Start {
    /// In its room since the upgrade; with the token that let it in (token mode).
    Joined(Membership, Option<Grant>),
    /// Token mode without `Authorization`: the room waits for the first frame's token.
    AwaitAuth(PendingJoin),
}

impl Start {
    /// The room the session is in, or will be once its token grants it.
    pub(crate) fn room(&self) -> &str {
        match self {
            Start::Joined(m, _) => &m.room().name,
            Start::AwaitAuth(p) => &p.room,
        }
    }
}

/// A join decided at the upgrade but made only after a first-frame `auth`.
pub(crate) struct PendingJoin {
    pub(crate) room: String,
    pub(crate) client: String,
    pub(crate) role: Role,
    pub(crate) presence: Presence,
    pub(crate) overflow: Overflow,
    pub(crate) since: Option<u64>,
    pub(crate) epoch: Option<String>,
}

/// A connection's token and the two moments the timer watches for it.
struct TokenClock {
    grant: Grant,
    /// When `token_expiring` is due; `None` once sent.
    warn_at: Option<Instant>,
    expires_at: Instant,
    /// When this token replaced the one before (refreshes are verified at most once per
    /// [`REFRESH_MIN_INTERVAL`]).
    renewed: Option<Instant>,
}

impl TokenClock {
    fn new(grant: Grant) -> TokenClock {
        let now = Instant::now();
        let left = time_left(grant.exp).unwrap_or_default().min(MAX_TOKEN_LIFE);
        let expires_at = now + left;
        let warn_at = expires_at
            .checked_sub(EXPIRY_WARNING)
            .map_or(now, |t| t.max(now));
        TokenClock {
            grant,
            warn_at: Some(warn_at),
            expires_at,
            renewed: None,
        }
    }
}

/// When the one timer must next wake: the next ping, or a token's moment if sooner.
fn wake_at(next_ping: Instant, token: Option<&TokenClock>) -> Instant {
    match token {
        Some(t) => next_ping.min(t.warn_at.unwrap_or(t.expires_at).min(t.expires_at)),
        None => next_ping,
    }
}

/// Per-connection options decided at the upgrade.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionOptions {
    /// Answer device messages carrying `seq` with `accepted`.
    pub acks: bool,
    /// Ping an idle client this often; drop it after two silent intervals.
    pub ping_interval: Duration,
    /// `limits.dashboard_linger_ms` for a dashboard, zero for a device.
    pub linger: Duration,
    /// A dashboard with `overflow=latest`: its socket's send buffer is capped at
    /// [`COALESCING_SEND_BUFFER`].
    pub coalescing: bool,
}

/// The kernel send buffer of an `overflow=latest` dashboard's socket, in bytes (Linux
/// doubles it). Left to autotuning it grows to megabytes (`net.ipv4.tcp_wmem`), and
/// every byte of it is a reading older than the latest: coalescing is only worth
/// anything if the backlog in front of it is small.
pub(crate) const COALESCING_SEND_BUFFER: usize = 8 * 1024;

/// The two halves of an upgraded connection, and any bytes read past the handshake.
pub(crate) struct Socket<R, W> {
    pub read: R,
    pub write: W,
    pub already_read: Bytes,
    /// The TCP socket under both halves, open as long as they are (for `TCP_INFO`).
    pub fd: std::os::fd::RawFd,
}

/// Runs the connection until either side closes it or the hub shuts down.
pub(crate) async fn run<R: WsRead, W: WsWrite>(
    socket: Socket<R, W>,
    start: Start,
    hub: Hub,
    auth: Authorizer,
    mut shutdown: Shutdown,
    opts: SessionOptions,
) {
    let Socket {
        mut read,
        mut write,
        already_read,
        fd: socket_fd,
    } = socket;
    let limits = hub.limits();
    let mut decoder = Decoder::new(limits.max_frame_bytes, already_read);
    let (mut membership, grant) = match start {
        Start::Joined(membership, grant) => (membership, grant),
        Start::AwaitAuth(pending) => {
            let io = (&mut read, &mut write, &mut decoder);
            match await_auth(io, pending, &hub, &auth, &mut shutdown).await {
                Some((membership, grant)) => (membership, Some(grant)),
                None => return,
            }
        }
    };
    // No tracing span per connection: a live span holds its formatted fields for the
    // connection's lifetime, which is memory an idle dashboard should not cost.
    let (room, client, role) = (
        membership.room().name.clone(),
        membership.client().clone(),
        membership.role(),
    );
    debug!(%room, %client, %role, "connected");
    // A cluster dashboard's welcome comes from Redis (nothing to do otherwise).
    membership.cluster_join().await;
    let membership = membership;
    let mailbox = membership.mailbox().clone();
    // A cluster device's message in flight to Redis: reading pauses until it is
    // answered, so messages are stamped in the order they came (one at a time).
    let mut publishing: Option<ClusterPublishing> = None;
    let mut reader = Reader {
        bucket: TokenBucket::new(limits.rate_per_sec, limits.rate_burst),
        last_flood_notice: None,
        hub: &hub,
        membership: &membership,
        mailbox: &mailbox,
        acks: opts.acks,
        auth: &auth,
        token: grant.map(|g| Box::new(TokenClock::new(g))),
        rearm: false,
        pending: PendingAcks::default(),
        publishing: None,
    };
    // Announces commits while durable acks wait (devices with `acks=true` only).
    let mut commits = hub.commits().filter(|_| opts.acks && role == Role::Device);
    let mut out = Unsent::default();
    let mut linger = Linger::new(opts.linger);
    // One timer serves the pings, the idle limit, the token's expiry and the wait for a
    // close answer.
    let mut next_ping = Instant::now() + opts.ping_interval;
    let timer = tokio::time::sleep_until(wake_at(next_ping, reader.token.as_deref()));
    tokio::pin!(timer);
    let mut last_heard = Instant::now();
    // The peer's acknowledged bytes when it was last found quiet (see `tcp_info`).
    let mut last_acked: Option<u64> = None;
    let mut shutting_down = false;
    let mut reading = true;
    let mut peer_closed = false;
    let mut close_sent = false;
    loop {
        if out.is_empty() && !close_sent && !linger.holding() {
            let taken = mailbox.take();
            let close = taken.close;
            out.fill(taken);
            // Everything is written: a dashboard still replaying gets its next page now,
            // so the replay goes at the client's pace and never piles up in the queue.
            if out.is_empty() && close.is_none() && membership.catch_up() {
                continue;
            }
            if out.is_empty() {
                if let Some(close) = close {
                    send_close(&mut write, &mut out, close).await;
                    close_sent = true;
                    if peer_closed || !reading {
                        break;
                    }
                    timer.as_mut().reset(Instant::now() + CLOSE_ECHO_TIMEOUT);
                }
            }
        }
        tokio::select! {
            done = in_flight(&mut publishing), if publishing.is_some() => {
                publishing = None;
                reader.cluster_published(done);
            }
            msg = decoder.next(&mut read), if reading && publishing.is_none() => {
                last_heard = Instant::now();
                match msg {
                    Ok(Message::Text(text)) => {
                        if mailbox.closing().is_none() {
                            reader.handle_text(&text);
                            publishing = reader.publishing.take();
                            if std::mem::take(&mut reader.rearm) && mailbox.closing().is_none() {
                                timer.as_mut().reset(wake_at(next_ping, reader.token.as_deref()));
                            }
                        }
                    }
                    Ok(Message::Binary(_)) => {
                        if reader.charge_one(ErrorCode::BinaryNotSupported, None) {
                            reader.reply_error(ProtoError::new(
                                ErrorCode::BinaryNotSupported,
                                "binary frames are not supported; send JSON text frames",
                            ));
                        }
                    }
                    Ok(Message::Ping(payload)) => {
                        if reader.charge_one(ErrorCode::RateLimited, None) {
                            reader.send(codec::pong(&payload));
                        }
                    }
                    Ok(Message::Pong) => {
                        // Costs like any message; there is nothing to answer.
                        reader.bucket.take(1);
                    }
                    Ok(Message::Close(code)) => {
                        if close_sent {
                            break;
                        }
                        // Answer the close (the next turn sends it), then end.
                        peer_closed = true;
                        reading = false;
                        mailbox.close(Close::answer(code));
                    }
                    Err(e) => {
                        debug!(%room, %client, error = %e, "read ended");
                        match e.close_code() {
                            Some(code) if !close_sent => {
                                reading = false;
                                mailbox.close(Close::refuse(code));
                            }
                            _ => break,
                        }
                    }
                }
            }
            res = out.write(&mut write), if !out.is_empty() || write.unflushed() => {
                if res.is_err() {
                    break;
                }
            }
            // A client that stopped reading must not keep this session stuck on a full
            // socket once the room has given up on it: only a frame already begun is
            // finished, then the close, both within CLOSE_WRITE_TIMEOUT.
            _ = mailbox.urgent(), if !out.is_empty() && !close_sent => {
                out.abandon();
                if let Some(close) = mailbox.closing() {
                    send_close(&mut write, &mut out, close).await;
                    close_sent = true;
                    if peer_closed || !reading {
                        break;
                    }
                    timer.as_mut().reset(Instant::now() + CLOSE_ECHO_TIMEOUT);
                }
            }
            _ = mailbox.ready(), if out.is_empty() && !close_sent && !linger.holding() => {
                linger.hold();
            }
            _ = linger.elapsed(), if linger.holding() => {}
            stopped = ws_acks::announced(&mut commits), if !reader.pending.is_empty() => {
                if stopped {
                    commits = None;
                }
                reader.resolve_acks(stopped);
            }
            _ = shutdown.recv(), if !shutting_down => {
                shutting_down = true;
                mailbox.close(Close::GOING_AWAY);
            }
            _ = &mut timer => {
                if close_sent {
                    break;
                }
                if let Some(close) = mailbox.closing() {
                    // A close that has waited a whole interval behind frames the client
                    // does not read: give up on them and close now.
                    out.abandon();
                    send_close(&mut write, &mut out, close).await;
                    close_sent = true;
                    timer.as_mut().reset(Instant::now() + CLOSE_ECHO_TIMEOUT);
                    continue;
                }
                let now = Instant::now();
                if let Some(t) = reader.token.as_mut() {
                    if now >= t.expires_at {
                        debug!(%room, %client, "token expired");
                        mailbox.close(CLOSE_TOKEN_EXPIRED);
                    } else if t.warn_at.is_some_and(|w| now >= w) {
                        t.warn_at = None;
                        let exp = t.grant.exp;
                        reader.send(frames::token_expiring_frame(exp));
                    }
                }
                if now >= next_ping {
                    if last_heard.elapsed() < opts.ping_interval {
                        last_acked = None;
                    } else {
                        // Quiet for an interval: is its TCP still taking our bytes? A slow
                        // reader's pong waits behind its backlog; a dead peer acks nothing.
                        let acked = tcp_info::bytes_acked(socket_fd);
                        if let (Some(now_acked), Some(before)) = (acked, last_acked) {
                            if now_acked.saturating_sub(before) > LIVE_ACKED_BYTES {
                                last_heard = now;
                            }
                        }
                        last_acked = acked;
                    }
                    if last_heard.elapsed() >= opts.ping_interval * 2 {
                        debug!(%room, %client, "nothing heard or acknowledged for two ping intervals");
                        mailbox.close(Close::TIMED_OUT);
                    } else {
                        // Every interval whatever the traffic: a dashboard only ever
                        // answers pings, so they are how the hub knows it is still there.
                        out.push(codec::ping());
                    }
                    next_ping = now + opts.ping_interval;
                }
                let wake = if mailbox.closing().is_some() {
                    now + opts.ping_interval
                } else {
                    wake_at(next_ping, reader.token.as_deref())
                };
                timer.as_mut().reset(wake);
            }
        }
    }
    debug!(%room, %client, %role, "disconnected");
}

/// The socket's read and write halves and its decoder, as the auth phase borrows them.
type Io<'a, R, W> = (&'a mut R, &'a mut W, &'a mut Decoder);

/// Token mode, no `Authorization` header: waits for the first frame's `auth`, sending
/// nothing, and joins the room once its token grants it. Any other first frame, a bad
/// token or none within [`AUTH_FRAME_TIMEOUT`] closes with 1008; `None` means the
/// connection is over.
async fn await_auth<R: WsRead, W: WsWrite>(
    (read, write, decoder): Io<'_, R, W>,
    pending: PendingJoin,
    hub: &Hub,
    auth: &Authorizer,
    shutdown: &mut Shutdown,
) -> Option<(Membership, Grant)> {
    let deadline = Instant::now() + AUTH_FRAME_TIMEOUT;
    let decided: Result<Grant, Refusal> = loop {
        tokio::select! {
            msg = decoder.next(read) => match msg {
                Ok(Message::Text(text)) => {
                    break match telehub_protocol::inbound::parse(&text, 1) {
                        Ok(ClientMessage::Auth(a)) => auth.verify(&a.token).and_then(|g| {
                            let p = &pending;
                            g.may_join(&p.room, &p.client, p.role)
                                .and_then(|()| {
                                    let taken = !g.is_admin()
                                        && hub.held_by_other_role(&p.room, &p.client, p.role);
                                    if taken { Err(Refusal::ForbiddenClient) } else { Ok(()) }
                                })
                                .map_err(|r| auth.refuse(r))
                                .map(|()| g)
                        }),
                        _ => Err(auth.refuse(Refusal::MissingToken)),
                    }
                }
                // Control frames get no answer either: nothing leaves before the token.
                Ok(Message::Ping(_) | Message::Pong) => continue,
                Ok(Message::Binary(_)) => break Err(auth.refuse(Refusal::MissingToken)),
                Ok(Message::Close(code)) => {
                    send_close(write, &mut Unsent::default(), Close::answer(code)).await;
                    return None;
                }
                Err(e) => {
                    if let Some(code) = e.close_code() {
                        send_close(write, &mut Unsent::default(), Close::refuse(code)).await;
                    }
                    return None;
                }
            },
            _ = tokio::time::sleep_until(deadline) => break Err(auth.refuse(Refusal::AuthTimeout)),
            _ = shutdown.recv() => {
                send_close(write, &mut Unsent::default(), Close::GOING_AWAY).await;
                return None;
            }
        }
    };
    let refused = match decided {
        Ok(grant) => {
            let since = pending.since.map(|offset| Since {
                offset,
                epoch: pending.epoch.as_deref(),
            });
            match hub.join(
                &pending.room,
                &pending.client,
                pending.role,
                Via::Ws,
                pending.presence,
                pending.overflow,
                since,
            ) {
                Ok(membership) => return Some((membership, grant)),
                Err(e) => {
                    hub.metrics().rejected(e.rejection());
                    let reason = match e {
                        JoinError::RoomFull => close::REASON_ROOM_FULL,
                        JoinError::TooManyRooms => close::REASON_TOO_MANY_ROOMS,
                    };
                    Close {
                        code: close::TRY_AGAIN_LATER,
                        reason,
                        flush_first: false,
                    }
                }
            }
        }
        Err(r) if r.answer() == Answer::Unauthorized => CLOSE_UNAUTHORIZED,
        Err(_) => CLOSE_FORBIDDEN,
    };
    send_close(write, &mut Unsent::default(), refused).await;
    // Let the peer's answering close arrive before the socket goes, so it sees our
    // close frame rather than a reset.
    let _ = tokio::time::timeout(CLOSE_ECHO_TIMEOUT, decoder.next(read)).await;
    None
}

/// The reader side's state and its handling of one text frame.
struct Reader<'a> {
    bucket: TokenBucket,
    /// When this client was last told it floods with invalid messages.
    last_flood_notice: Option<Instant>,
    hub: &'a Hub,
    membership: &'a Membership,
    mailbox: &'a Arc<Mailbox>,
    acks: bool,
    auth: &'a Authorizer,
    /// The connection's token (token mode), replaced by each accepted refresh. Boxed:
    /// an open hub's idle connection pays one pointer for it, not the whole clock.
    token: Option<Box<TokenClock>>,
    /// A refresh moved the token's moments: the loop re-arms its timer.
    rearm: bool,
    /// Messages whose readings are kept once their receipt is: `accepted` then (durable
    /// acks), in the order they came.
    pending: PendingAcks,
    /// A cluster publish just started, for the loop to wait on.
    publishing: Option<ClusterPublishing>,
}

impl Reader<'_> {
    /// Every message costs from the one bucket: a `readings` batch one token per item,
    /// anything else (a command, an ack, a ping, a binary or unparsable frame) one. What
    /// a client over its limit gets back is bounded too: no answer, only a `rate_limited`
    /// notice a second ([`Reader::throttled`]).
    fn handle_text(&mut self, text: &str) {
        let limits = self.hub.limits();
        let parsed = telehub_protocol::inbound::parse(text, limits.max_batch);
        let cost = match &parsed {
            Ok(ClientMessage::Readings(items)) => items.len().max(1),
            _ => 1,
        };
        let granted = self.bucket.take(cost);
        let msg = match parsed {
            Ok(msg) => msg,
            Err(e) => {
                // Past the limit a flood of garbage gets no detailed errors (answering
                // each would do the flooder's work for it), only a notice now and then.
                if granted == 0 {
                    return self.throttled(e.code, None);
                }
                return self.reply_error(e);
            }
        };
        let role = self.membership.role();
        match msg {
            ClientMessage::Readings(items) => {
                if granted == 0 {
                    let code = if role == Role::Device {
                        ErrorCode::RateLimited
                    } else {
                        ErrorCode::WrongRole
                    };
                    return self.throttled(code, None);
                }
                if role != Role::Device {
                    return self.reply_error(ProtoError::new(
                        ErrorCode::WrongRole,
                        "only devices send readings; connect with ?role=device",
                    ));
                }
                self.readings(items, granted);
            }
            ClientMessage::Command(cmd) => {
                let code = if role == Role::Dashboard {
                    ErrorCode::RateLimited
                } else {
                    ErrorCode::WrongRole
                };
                if granted == 0 {
                    return self.throttled(code, Some(&cmd.id));
                }
                if role != Role::Dashboard {
                    return self.reply_error(
                        ProtoError::new(
                            ErrorCode::WrongRole,
                            "only dashboards send commands; devices answer them with ack",
                        )
                        .with_id(&cmd.id),
                    );
                }
                if let Err(e) = self.hub.command(self.membership, &cmd) {
                    self.reply_error(e);
                }
            }
            ClientMessage::Ack(ack) => {
                if granted == 0 {
                    let code = if role == Role::Device {
                        ErrorCode::RateLimited
                    } else {
                        ErrorCode::WrongRole
                    };
                    return self.throttled(code, Some(&ack.id));
                }
                if role != Role::Device {
                    return self.reply_error(
                        ProtoError::new(ErrorCode::WrongRole, "only devices send acks")
                            .with_id(&ack.id),
                    );
                }
                if let Err(e) = self.hub.ack(self.membership, &ack) {
                    self.reply_error(e);
                }
            }
            ClientMessage::Auth(a) => {
                // Without `[auth] mode = "token"` a token has nothing to unlock: ignored,
                // so a dashboard that always signs in works against an open hub too.
                let Some(current) = &self.token else {
                    return;
                };
                // A signature check costs far more than a reading: past the rate limit,
                // or within a second of the last refresh, the frame is dropped unverified.
                let now = Instant::now();
                let too_soon = current
                    .renewed
                    .is_some_and(|t| now.duration_since(t) < REFRESH_MIN_INTERVAL);
                if granted == 0 || too_soon {
                    return self.throttled(ErrorCode::RateLimited, None);
                }
                let m = self.membership;
                match self.auth.verify(&a.token) {
                    Err(_) => self.mailbox.close(CLOSE_UNAUTHORIZED),
                    Ok(fresh) => {
                        let fits = current.grant.renewed_by(&fresh)
                            && fresh.may_join(&m.room().name, m.client(), m.role()).is_ok();
                        if fits {
                            let mut clock = TokenClock::new(fresh);
                            clock.renewed = Some(now);
                            self.token = Some(Box::new(clock));
                            self.rearm = true;
                        } else {
                            self.auth.refuse(Refusal::ForbiddenRefresh);
                            self.mailbox.close(CLOSE_FORBIDDEN);
                        }
                    }
                }
            }
        }
    }

    /// A device's batch of which the first `granted` items were paid for: those are
    /// validated and published, the rest refused with one `rate_limited`. At most
    /// [`MAX_ITEM_ERRORS`] item errors are sent, then one summary for the others.
    fn readings(&mut self, items: Vec<Result<ReadingIn, ProtoError>>, granted: usize) {
        let limits = self.hub.limits();
        let refused = items.len().saturating_sub(granted);
        let mut valid = Vec::with_capacity(granted.min(items.len()));
        let mut item_errors = 0usize;
        let mut omitted: Option<(ErrorCode, usize)> = None;
        for item in items.into_iter().take(granted) {
            match item {
                Ok(r) => valid.push(r),
                Err(e) if item_errors < MAX_ITEM_ERRORS => {
                    item_errors += 1;
                    self.reply_error(e);
                }
                Err(e) => {
                    self.hub.metrics().error_suppressed(e.code);
                    omitted.get_or_insert((e.code, 0)).1 += 1;
                }
            }
        }
        if let Some((code, n)) = omitted {
            self.reply_error(ProtoError::new(
                code,
                format!(
                    "{n} more invalid item(s) in this batch were refused; only the first {MAX_ITEM_ERRORS} errors are reported"
                ),
            ));
        }
        if refused > 0 {
            self.reply_error(ProtoError::new(
                ErrorCode::RateLimited,
                format!(
                    "{refused} reading(s) refused: over {} per second (burst {}); resend them later",
                    limits.rate_per_sec, limits.rate_burst
                ),
            ));
        }
        if valid.is_empty() {
            return;
        }
        if let Some(cluster) = self.hub.cluster() {
            let (future_ts, publishing) = self.hub.publish_cluster(cluster, self.membership, valid);
            if future_ts > 0 {
                self.future_ts_error(future_ts);
            }
            self.publishing = Some(publishing);
            return;
        }
        let count = valid.len();
        let published = self.hub.publish(self.membership, valid);
        if published.future_ts > 0 {
            self.future_ts_error(published.future_ts);
        }
        if let Some((key, max)) = published.series_limit {
            self.reply_error(ProtoError::new(
                ErrorCode::SeriesLimit,
                format!(
                    "{} reading(s) refused: they would create series past {key} ({max})",
                    published.series_limited
                ),
            ));
        }
        if published.unstored_count > 0 {
            let why = if published.stopping {
                "the hub is shutting down"
            } else {
                "the history store's queue is full"
            };
            self.unavailable(
                &format!(
                    "{} of {count} reading(s) fanned out but not stored: {why}; resend them later",
                    published.unstored_count
                ),
                &published.unstored,
            );
        }
        if !self.acks || published.seqs.is_empty() {
            return;
        }
        if let Some(answer) = self.pending.admit(published.receipt, published.seqs) {
            self.answer(answer);
        }
    }

    fn future_ts_error(&self, n: usize) {
        self.reply_error(ProtoError::new(
            ErrorCode::InvalidField,
            format!(
                "{n} reading(s) refused: field `ts` is more than {} ms ahead of the hub's clock (limits.max_future_ms)",
                self.hub.limits().max_future_ms
            ),
        ));
    }

    /// Answers a cluster publish once Redis has: `accepted` for what it keeps (with
    /// `acks=true`), `series_limit` and `store_unavailable` for what it does not.
    fn cluster_published(&mut self, done: ClusterPublished) {
        if done.series_limited > 0 {
            let max = self.hub.limits().max_series_per_room;
            self.reply_error(ProtoError::new(
                ErrorCode::SeriesLimit,
                format!(
                    "{} reading(s) refused: they would create series past limits.max_series_per_room ({max})",
                    done.series_limited
                ),
            ));
        }
        if let Some(why) = &done.why_unstored {
            self.unavailable(
                &format!(
                    "{} reading(s) not taken: {why}; resend them later",
                    done.unstored_count
                ),
                &done.unstored,
            );
        }
        if self.acks && !done.seqs.is_empty() {
            self.send(frames::accepted_frame(&done.seqs));
        }
    }

    /// Answers the messages whose receipt is decided (the store has `stopped`: all).
    fn resolve_acks(&mut self, stopped: bool) {
        for answer in self.pending.resolve(stopped) {
            self.answer(answer);
        }
    }

    fn answer(&self, answer: ws_acks::Answer) {
        match answer {
            ws_acks::Answer::Accepted(seqs) => self.send(frames::accepted_frame(&seqs)),
            ws_acks::Answer::Unavailable(message, seqs) => self.unavailable(&message, &seqs),
        }
    }

    /// `store_unavailable` for `seqs` (counted like every error sent).
    fn unavailable(&self, message: &str, seqs: &SeqRanges) {
        let code = ErrorCode::StoreUnavailable;
        self.hub.metrics().error(code);
        self.send(frames::readings_error_frame(code, message, seqs));
    }

    /// Takes one token for a message that is not a batch of readings; without one, the
    /// message is dropped (it would have been answered with `code`) and false returned.
    fn charge_one(&mut self, code: ErrorCode, id: Option<&str>) -> bool {
        if self.bucket.take(1) == 1 {
            return true;
        }
        self.throttled(code, id);
        false
    }

    /// One `rate_limited` notice a second at most for a client over its rate limit. The
    /// message itself (whose answer would have had `code`) gets nothing either way: it
    /// counts as suppressed, and `errors_total` counts only the notices actually sent.
    fn throttled(&mut self, code: ErrorCode, id: Option<&str>) {
        self.hub.metrics().error_suppressed(code);
        let now = Instant::now();
        if self
            .last_flood_notice
            .is_some_and(|t| now.duration_since(t) < FLOOD_NOTICE_INTERVAL)
        {
            return;
        }
        self.last_flood_notice = Some(now);
        let notice = ProtoError::new(
            ErrorCode::RateLimited,
            "messages over the rate limit are dropped without further answers",
        );
        self.reply_error(match id {
            Some(id) => notice.with_id(id),
            None => notice,
        });
    }

    fn reply_error(&self, e: ProtoError) {
        self.hub.metrics().error(e.code);
        self.send(frames::error_frame(&e));
    }

    /// Queues a frame for this client; a client that does not read its own replies is
    /// as slow a consumer as any other.
    fn send(&self, frame: Frame) {
        if self.mailbox.push(frame) == Push::Full {
            self.mailbox.close(Close::SLOW_CONSUMER);
            self.hub.metrics().slow_consumer();
        }
    }
}

/// The cluster publish in flight, or never (the loop only polls it while there is one).
async fn in_flight(p: &mut Option<ClusterPublishing>) -> ClusterPublished {
    match p {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}
