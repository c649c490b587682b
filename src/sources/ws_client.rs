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

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;
use tracing::debug;

use crate::hub::mailbox::{Close, Mailbox, Push};
use crate::hub::{Hub, Membership};
use crate::net::ws::codec::{self, Decoder, Message};
use crate::net::ws::frames::{self, Frame};
use crate::shutdown::Shutdown;
use crate::sinks::ws_writer::{send_close, Unsent};
use telehub_protocol::codes::ErrorCode;
use telehub_protocol::inbound::{ClientMessage, ProtoError};
use telehub_protocol::rate::TokenBucket;
use telehub_protocol::role::Role;

/// How long the session waits for the peer's answer to our close frame.
const CLOSE_ECHO_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a client flooding invalid messages is told so, at most.
const FLOOD_NOTICE_INTERVAL: Duration = Duration::from_secs(1);

/// Per-connection options decided at the upgrade.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionOptions {
    /// Answer device messages carrying `seq` with `accepted`.
    pub acks: bool,
    /// Ping an idle client this often; drop it after two silent intervals.
    pub ping_interval: Duration,
}

/// The two halves of an upgraded connection, and any bytes read past the handshake.
pub(crate) struct Socket {
    pub read: OwnedReadHalf,
    pub write: OwnedWriteHalf,
    pub already_read: Bytes,
}

/// Runs the connection until either side closes it or the hub shuts down.
pub(crate) async fn run(
    socket: Socket,
    membership: Membership,
    hub: Hub,
    mut shutdown: Shutdown,
    opts: SessionOptions,
) {
    // No tracing span per connection: a live span holds its formatted fields for the
    // connection's lifetime, which is memory an idle dashboard should not cost.
    let (room, client, role) = (
        membership.room().name.clone(),
        membership.client().clone(),
        membership.role(),
    );
    debug!(%room, %client, %role, "connected");
    let Socket {
        mut read,
        mut write,
        already_read,
    } = socket;
    let mailbox = membership.mailbox().clone();
    let limits = hub.limits();
    let mut decoder = Decoder::new(limits.max_frame_bytes, already_read);
    let mut reader = Reader {
        bucket: TokenBucket::new(limits.rate_per_sec, limits.rate_burst),
        last_flood_notice: None,
        hub: &hub,
        membership: &membership,
        mailbox: &mailbox,
        acks: opts.acks,
    };
    let mut out = Unsent::default();
    // One timer serves the pings, the idle limit and the wait for a close answer.
    let timer = tokio::time::sleep(opts.ping_interval);
    tokio::pin!(timer);
    let mut last_heard = Instant::now();
    let mut shutting_down = false;
    let mut reading = true;
    let mut peer_closed = false;
    let mut close_sent = false;
    loop {
        if out.is_empty() && !close_sent {
            let (letters, close) = mailbox.take();
            out.fill(letters);
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
            msg = decoder.next(&mut read), if reading => {
                last_heard = Instant::now();
                match msg {
                    Ok(Message::Text(text)) => {
                        if mailbox.closing().is_none() {
                            reader.handle_text(&text);
                        }
                    }
                    Ok(Message::Binary(_)) => reader.reply_error(ProtoError::new(
                        ErrorCode::BinaryNotSupported,
                        "binary frames are not supported; send JSON text frames",
                    )),
                    Ok(Message::Ping(payload)) => reader.send(codec::pong(&payload)),
                    Ok(Message::Pong) => {}
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
            res = out.write(&mut write), if !out.is_empty() => {
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
            _ = mailbox.ready(), if out.is_empty() && !close_sent => {}
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
                } else if last_heard.elapsed() >= opts.ping_interval * 2 {
                    debug!(%room, %client, "no frame for two ping intervals");
                    mailbox.close(Close::TIMED_OUT);
                } else {
                    // Every interval whatever the traffic: a dashboard only ever answers
                    // pings, so they are how the hub knows it is still there.
                    out.push(codec::ping());
                }
                timer.as_mut().reset(Instant::now() + opts.ping_interval);
            }
        }
    }
    debug!(%room, %client, %role, "disconnected");
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
}

impl Reader<'_> {
    fn handle_text(&mut self, text: &str) {
        let limits = self.hub.limits();
        let msg = match telehub_protocol::inbound::parse(text, limits.max_batch) {
            Ok(msg) => msg,
            Err(e) => {
                // Even garbage costs a token. Past the limit a flood of it gets no detailed
                // errors (answering each would do the flooder's work for it), only a
                // `rate_limited` now and then.
                if self.bucket.take(1) == 0 {
                    return self.throttled(e.code);
                }
                return self.reply_error(e);
            }
        };
        let role = self.membership.role();
        match msg {
            ClientMessage::Readings(items) => {
                if role != Role::Device {
                    return self.reply_error(ProtoError::new(
                        ErrorCode::WrongRole,
                        "only devices send readings; connect with ?role=device",
                    ));
                }
                let granted = self.bucket.take(items.len());
                let mut valid = Vec::with_capacity(items.len());
                for item in items {
                    match item {
                        Ok(r) => valid.push(r),
                        Err(e) => self.reply_error(e),
                    }
                }
                if granted < valid.len() {
                    let refused = valid.len() - granted;
                    valid.truncate(granted);
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
                let count = valid.len();
                let published = self.hub.publish(self.membership, valid);
                if published.series_limited > 0 {
                    self.reply_error(ProtoError::new(
                        ErrorCode::SeriesLimit,
                        format!(
                            "{} reading(s) refused: the hub keeps at most {} series (history.max_series) and they would create more",
                            published.series_limited,
                            self.hub.history().config().max_series
                        ),
                    ));
                }
                if self.acks {
                    if let Some(seq) = published.max_seq {
                        self.send(frames::accepted_frame(seq, count));
                    }
                }
            }
            ClientMessage::Command(cmd) => {
                if role != Role::Dashboard {
                    return self.reply_error(
                        ProtoError::new(
                            ErrorCode::WrongRole,
                            "only dashboards send commands; devices answer them with ack",
                        )
                        .with_id(&cmd.id),
                    );
                }
                if self.bucket.take(1) == 0 {
                    return self.reply_error(
                        ProtoError::new(
                            ErrorCode::RateLimited,
                            "command refused: over the rate limit",
                        )
                        .with_id(&cmd.id),
                    );
                }
                if let Err(e) = self.hub.command(self.membership, &cmd) {
                    self.reply_error(e);
                }
            }
            ClientMessage::Ack(ack) => {
                if role != Role::Device {
                    return self.reply_error(
                        ProtoError::new(ErrorCode::WrongRole, "only devices send acks")
                            .with_id(&ack.id),
                    );
                }
                self.bucket.take(1);
                if let Err(e) = self.hub.ack(self.membership, &ack) {
                    self.reply_error(e);
                }
            }
            // Without `[auth] mode = "token"` a token has nothing to unlock: ignored, so a
            // dashboard that always signs in works against an open hub too.
            ClientMessage::Auth(_) => {
                self.bucket.take(1);
            }
        }
    }

    /// One `rate_limited` error a second at most for a client flooding invalid messages.
    /// The invalid message itself (whose error would have had `code`) gets no error frame
    /// either way: it counts as suppressed, and `errors_total` counts only the notices
    /// actually sent.
    fn throttled(&mut self, code: ErrorCode) {
        self.hub.metrics().error_suppressed(code);
        let now = Instant::now();
        if self
            .last_flood_notice
            .is_some_and(|t| now.duration_since(t) < FLOOD_NOTICE_INTERVAL)
        {
            return;
        }
        self.last_flood_notice = Some(now);
        self.reply_error(ProtoError::new(
            ErrorCode::RateLimited,
            "invalid messages over the rate limit are dropped without further errors",
        ));
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
