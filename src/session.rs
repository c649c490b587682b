//! One WebSocket connection, from the first frame to the close.
//!
//! The socket is split in two: a writer task drains the connection's [`Outbox`] (all
//! queued frames, then one flush) and owns the close handshake; the reader loop parses
//! what the client sends and hands it to the [`Hub`]. Either side ending tears down the
//! other, and dropping the [`Membership`] at the end leaves the room.
//!
//! Nothing a client sends is trusted: every message is validated by [`protocol::parse`],
//! errors are answered with an `error` frame and the connection stays open, except for
//! frames over the size limit (close 1009) and protocol violations (close 1002, by
//! tungstenite).

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, instrument};

use crate::hub::{Hub, Membership};
use crate::outbox::{Close, Outbox, Push};
use crate::protocol::{self, ClientMessage, ErrorCode, ProtoError, Role};
use crate::ratelimit::TokenBucket;
use crate::shutdown::Shutdown;

/// How long the writer may take to put the close frame on a socket whose peer does not
/// read, before the connection is simply dropped.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the reader waits for the peer's answer to our close frame.
const CLOSE_ECHO_TIMEOUT: Duration = Duration::from_secs(2);

/// Per-connection options decided at the upgrade.
#[derive(Debug, Clone, Copy)]
pub struct SessionOptions {
    /// Answer device messages carrying `seq` with `accepted`.
    pub acks: bool,
    /// Ping an idle client this often; drop it after two silent intervals.
    pub ping_interval: Duration,
}

/// Runs the connection until either side closes it or the hub shuts down.
#[instrument(name = "session", skip_all, fields(room = %membership.room().name, client = %membership.client(), role = %membership.role()))]
pub async fn run<S>(
    ws: WebSocketStream<S>,
    membership: Membership,
    hub: Hub,
    mut shutdown: Shutdown,
    opts: SessionOptions,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    debug!("connected");
    let (sink, mut stream) = ws.split();
    let outbox = membership.outbox().clone();
    let mut writer = tokio::spawn(write_loop(sink, outbox.clone(), opts.ping_interval));
    let limits = hub.limits();
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
            msg = stream.next() => {
                if !writer_done {
                    idle.as_mut().reset(Instant::now() + idle_limit);
                }
                match msg {
                    Some(Ok(Message::Text(text))) => {
                        if outbox.closing().is_none() {
                            reader.handle_text(text.as_str());
                        }
                    }
                    Some(Ok(Message::Binary(_))) => reader.reply_error(ProtoError::new(
                        ErrorCode::BinaryNotSupported,
                        "binary frames are not supported; send JSON text frames",
                    )),
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Err(WsError::Capacity(e))) => {
                        debug!(error = %e, "frame too large");
                        outbox.close(Close::TOO_BIG);
                        // The stream cannot be read past an oversized frame: wait only for
                        // the writer to deliver the close.
                        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, &mut writer).await;
                        return;
                    }
                    Some(Err(e)) => {
                        debug!(error = %e, "read error");
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
    if !writer_done {
        // The peer went away first: stop the writer (its frames have nowhere to go).
        writer.abort();
    }
    debug!("disconnected");
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
    fn send(&self, frame: protocol::Frame) {
        if self.outbox.push(frame) == Push::Full {
            self.outbox.close(Close::SLOW_CONSUMER);
            self.hub
                .metrics()
                .slow_consumers
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Drains the outbox into the socket: every queued frame, then one flush. Pings the
/// client when nothing else is sent, and finishes with the close frame the outbox asks
/// for.
async fn write_loop<S>(
    mut sink: SplitSink<WebSocketStream<S>, Message>,
    outbox: Arc<Outbox>,
    ping_interval: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut batch = Vec::new();
    let mut ping = tokio::time::interval_at(Instant::now() + ping_interval, ping_interval);
    loop {
        let close = outbox.drain_into(&mut batch);
        if !batch.is_empty() {
            let write = async {
                for frame in batch.drain(..) {
                    sink.feed(Message::Text(frame)).await?;
                }
                sink.flush().await
            };
            tokio::select! {
                biased;
                // A client that stopped reading must not keep this task stuck on a full
                // socket once the room has given up on it.
                _ = outbox.urgent() => {}
                res = write => {
                    if res.is_err() {
                        return;
                    }
                }
            }
            batch.clear();
            ping.reset();
        }
        if let Some(close) = close.or_else(|| outbox.closing()) {
            if close.flush_first && !outbox.is_empty() {
                continue;
            }
            let frame = CloseFrame {
                code: CloseCode::from(close.code),
                reason: close.reason.into(),
            };
            let _ =
                tokio::time::timeout(CLOSE_WRITE_TIMEOUT, sink.send(Message::Close(Some(frame))))
                    .await;
            return;
        }
        tokio::select! {
            _ = outbox.ready() => {}
            _ = ping.tick() => {
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
        }
    }
}
