//! One WebSocket connection, from the first frame to the close.
//!
//! The TCP stream is split in two owned halves: a writer task drains the connection's
//! [`Outbox`] (every queued frame in one `writev`) and owns the close handshake; the
//! reader loop decodes what the client sends ([`websocket::Decoder`]) and hands it to the
//! [`Hub`]. Either side ending tears down the other, and dropping the [`Membership`] at
//! the end leaves the room.
//!
//! Nothing a client sends is trusted: every message is validated by [`protocol::parse`],
//! errors are answered with an `error` frame and the connection stays open, except for
//! frames over the size limit (close 1009), invalid UTF-8 (1007) and WebSocket protocol
//! violations (1002).

use std::io::IoSlice;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Instant;
use tracing::debug;

use crate::hub::{Hub, Membership};
use crate::outbox::{Close, Outbox, Push};
use crate::protocol::{self, ClientMessage, ErrorCode, Frame, ProtoError, Role};
use crate::ratelimit::TokenBucket;
use crate::shutdown::Shutdown;
use crate::websocket::{self, Decoder, Message};

/// How long the writer may take to put the close frame on a socket whose peer does not
/// read, before the connection is simply dropped.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the reader waits for the peer's answer to our close frame.
const CLOSE_ECHO_TIMEOUT: Duration = Duration::from_secs(2);
/// Frames handed to one `writev` call at most.
const MAX_IOVECS: usize = 64;

/// Per-connection options decided at the upgrade.
#[derive(Debug, Clone, Copy)]
pub struct SessionOptions {
    /// Answer device messages carrying `seq` with `accepted`.
    pub acks: bool,
    /// Ping an idle client this often; drop it after two silent intervals.
    pub ping_interval: Duration,
}

/// The two halves of an upgraded connection, and any bytes read past the handshake.
pub struct Socket {
    pub read: OwnedReadHalf,
    pub write: OwnedWriteHalf,
    pub already_read: Bytes,
}

/// Runs the connection until either side closes it or the hub shuts down.
pub async fn run(
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
        write,
        already_read,
    } = socket;
    let outbox = membership.outbox().clone();
    let mut writer = tokio::spawn(write_loop(write, outbox.clone(), opts.ping_interval));
    let limits = hub.limits();
    let mut decoder = Decoder::new(limits.max_frame_bytes, already_read);
    let mut reader = Reader {
        bucket: TokenBucket::new(limits.rate_per_sec, limits.rate_burst),
        hub: &hub,
        membership: &membership,
        outbox: &outbox,
        acks: opts.acks,
    };

    let idle_limit = opts.ping_interval * 2;
    let idle = tokio::time::sleep(idle_limit);
    tokio::pin!(idle);
    let mut shutting_down = false;
    let mut writer_done = false;
    loop {
        tokio::select! {
            msg = decoder.next(&mut read) => {
                if !writer_done {
                    idle.as_mut().reset(Instant::now() + idle_limit);
                }
                match msg {
                    Ok(Message::Text(text)) => {
                        if outbox.closing().is_none() {
                            reader.handle_text(&text);
                        }
                    }
                    Ok(Message::Binary(_)) => reader.reply_error(ProtoError::new(
                        ErrorCode::BinaryNotSupported,
                        "binary frames are not supported; send JSON text frames",
                    )),
                    Ok(Message::Ping(payload)) => reader.send(websocket::pong(&payload)),
                    Ok(Message::Pong) => {}
                    Ok(Message::Close(code)) => {
                        // Answer the close (unless ours is already on its way), then end.
                        outbox.close(Close::answer(code));
                        if !writer_done {
                            let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, &mut writer).await;
                        }
                        break;
                    }
                    Err(e) => {
                        debug!(error = %e, "read ended");
                        if let Some(code) = e.close_code() {
                            outbox.close(Close::refuse(code));
                            if !writer_done {
                                let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, &mut writer).await;
                            }
                        }
                        break;
                    }
                }
            }
            _ = shutdown.recv(), if !shutting_down => {
                shutting_down = true;
                outbox.close(Close::GOING_AWAY);
            }
            _ = &mut writer, if !writer_done => {
                // The writer has sent its close frame (or the socket failed): give the peer
                // a moment to answer the close, then end.
                writer_done = true;
                idle.as_mut().reset(Instant::now() + CLOSE_ECHO_TIMEOUT);
            }
            _ = &mut idle => {
                if writer_done {
                    break;
                }
                debug!("no frame for two ping intervals");
                outbox.close(Close::TIMED_OUT);
                idle.as_mut().reset(Instant::now() + CLOSE_WRITE_TIMEOUT);
            }
        }
    }
    if !writer.is_finished() {
        // The peer went away first: stop the writer (its frames have nowhere to go).
        writer.abort();
    }
    debug!(%room, %client, %role, "disconnected");
}

/// The reader side's state and its handling of one text frame.
struct Reader<'a> {
    bucket: TokenBucket,
    hub: &'a Hub,
    membership: &'a Membership,
    outbox: &'a Arc<Outbox>,
    acks: bool,
}

impl Reader<'_> {
    fn handle_text(&mut self, text: &str) {
        let limits = self.hub.limits();
        let msg = match protocol::parse(text, limits.max_batch) {
            Ok(msg) => msg,
            Err(e) => {
                // Even garbage costs a token, so a flood of it is throttled too.
                self.bucket.take(1);
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
                        self.send(protocol::accepted_frame(seq, count));
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
        }
    }

    fn reply_error(&self, e: ProtoError) {
        self.hub.metrics().error(e.code);
        self.send(protocol::error_frame(&e));
    }

    /// Queues a frame for this client; a client that does not read its own replies is
    /// as slow a consumer as any other.
    fn send(&self, frame: Frame) {
        if self.outbox.push(frame) == Push::Full {
            self.outbox.close(Close::SLOW_CONSUMER);
            self.hub
                .metrics()
                .slow_consumers
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Drains the outbox into the socket: every queued frame in `writev` calls, pings the
/// client every `ping_interval` whatever the traffic (a dashboard only ever answers
/// pings, and the reader drops a client that sends nothing for two intervals), and finishes with the close frame the outbox asks
/// for.
async fn write_loop(mut io: OwnedWriteHalf, outbox: Arc<Outbox>, ping_interval: Duration) {
    let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    // Where a possibly interrupted write stands: a frame on the wire must always be
    // finished before anything else (the close frame) can follow it.
    let mut partial: Option<Frame> = None;
    loop {
        let (mut batch, close) = outbox.take();
        if !batch.is_empty() {
            let batch = batch.make_contiguous();
            let mut progress = Progress::default();
            tokio::select! {
                biased;
                // A client that stopped reading must not keep this task stuck on a full
                // socket once the room has given up on it.
                _ = outbox.urgent() => {
                    if progress.offset > 0 {
                        partial = Some(batch[progress.first].slice(progress.offset..));
                    }
                }
                res = write_frames(&mut io, batch, &mut progress) => {
                    if res.is_err() {
                        return;
                    }
                }
            }
        }
        if let Some(close) = close.or_else(|| outbox.closing()) {
            if close.flush_first && !outbox.is_empty() {
                continue;
            }
            let frame = websocket::close(close.code, close.reason);
            let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, async {
                if let Some(rest) = partial.take() {
                    io.write_all(&rest).await?;
                }
                io.write_all(&frame).await?;
                io.shutdown().await
            })
            .await;
            return;
        }
        tokio::select! {
            _ = outbox.ready() => {}
            _ = ping.tick() => {
                if io.write_all(&websocket::ping()).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// How far a batch has been written: whole frames before `first`, and `offset` bytes of
/// frame `first`. Kept outside the write future so an interrupted write can be finished.
#[derive(Default)]
struct Progress {
    first: usize,
    offset: usize,
}

/// Writes whole frames with as few `writev` calls as the socket allows.
async fn write_frames(
    io: &mut OwnedWriteHalf,
    frames: &[Frame],
    progress: &mut Progress,
) -> std::io::Result<()> {
    let Progress { first, offset } = progress;
    while *first < frames.len() {
        let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
        let mut n = 0;
        for (i, f) in frames[*first..].iter().take(MAX_IOVECS).enumerate() {
            slices[i] = IoSlice::new(if i == 0 { &f[*offset..] } else { &f[..] });
            n += 1;
        }
        let mut written = io.write_vectored(&slices[..n]).await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let left = frames[*first].len() - *offset;
            if written >= left {
                written -= left;
                *first += 1;
                *offset = 0;
            } else {
                *offset += written;
                written = 0;
            }
        }
    }
    Ok(())
}
