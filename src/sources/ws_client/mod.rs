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
//! [`auth`]'s `EXPIRY_WARNING` before `exp`, close 4001 at `exp` unless a fresh `auth` came.
//!
//! - [`auth`]: the first-frame `auth` of token mode and the token's clock (expiry, refresh).
//! - [`reader`]: what the client sends, one text frame at a time, handed to the hub.

mod auth;
mod reader;

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tracing::debug;

use crate::auth::{Authorizer, Grant};
use crate::config::Overflow;
use crate::hub::mailbox::Close;
use crate::hub::room::Presence;
use crate::hub::{ClusterPublished, ClusterPublishing, Hub, Membership};
use crate::net::tcp_info;
use crate::net::transport::{WsRead, WsWrite};
use crate::net::ws::codec::{self, Decoder, Message};
use crate::net::ws::frames;
use crate::shutdown::Shutdown;
use crate::sinks::linger::Linger;
use crate::sinks::ws_writer::{send_close, Unsent};
use crate::sources::ws_acks::{self, PendingAcks};
use telehub_protocol::codes::ErrorCode;
use telehub_protocol::inbound::ProtoError;
use telehub_protocol::rate::TokenBucket;
use telehub_protocol::role::Role;

use auth::{await_auth, wake_at, TokenClock, CLOSE_TOKEN_EXPIRED};
use reader::Reader;

/// How long the session waits for the peer's answer to our close frame.
const CLOSE_ECHO_TIMEOUT: Duration = Duration::from_secs(2);
/// A quiet client whose TCP acknowledged more than this many new bytes over a ping
/// interval is alive and reading, pong or not (pings alone are a few bytes).
const LIVE_ACKED_BYTES: u64 = 1024;

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

/// The cluster publish in flight, or never (the loop only polls it while there is one).
async fn in_flight(p: &mut Option<ClusterPublishing>) -> ClusterPublished {
    match p {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}
