//! The socket side of a WebSocket member's mailbox: frames the hub queued (readings,
//! presence, commands, acks, errors) go onto the wire here, up to [`MAX_IOVECS`] of them
//! per `writev`, straight from the shared, already-encoded bytes.
//!
//! A sink at the end of the fan-out: the room pushes each reading's frame into every
//! dashboard's [`Mailbox`](crate::hub::mailbox::Mailbox) once, and the connection's loop
//! ([`crate::sources::ws_client`]) hands what it takes from the mailbox to an [`Unsent`]
//! whose progress survives being dropped mid-write by `select!`.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::hub::mailbox::{Close, Letter, Taken};
use crate::net::transport::WsWrite;
use crate::net::ws::codec;
use crate::net::ws::frames::{self, Frame};

/// How long the writer may take to put the close frame on a socket whose peer does not
/// read, before the connection is simply dropped.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames handed to one `writev` call at most.
const MAX_IOVECS: usize = 64;

/// Writes the rest of a frame already begun, then the close frame, then ends our side of
/// the TCP stream; gives up after [`CLOSE_WRITE_TIMEOUT`] on a peer that does not read.
pub(crate) async fn send_close<W: WsWrite>(io: &mut W, out: &mut Unsent, close: Close) {
    let frame = codec::close(close.code, close.reason);
    let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, async {
        out.write(io).await?;
        io.write_all(&frame).await?;
        io.shutdown().await
    })
    .await;
}

/// Frames taken from the mailbox and not yet on the wire, and how much of the first one is
/// already written. Progress is recorded only after a write returns, so dropping a write
/// future (when `select!` picks another branch) loses nothing.
#[derive(Default)]
pub(crate) struct Unsent {
    frames: VecDeque<Letter>,
    offset: usize,
}

impl Unsent {
    /// Takes over what the mailbox held (only when nothing is left unsent), encoding each
    /// command as its WebSocket frame in place: broadcasts are frames already.
    pub(crate) fn fill(&mut self, taken: Taken) {
        let mut letters = taken.letters;
        // Usually none: readings, presence and acks are frames already.
        if taken.commands > 0 {
            for l in letters.iter_mut() {
                if let Letter::Command(c) = l {
                    *l = Letter::Frame(frames::command_frame(
                        &c.id,
                        &c.from,
                        &c.name,
                        c.args.as_deref(),
                    ));
                }
            }
        }
        let old = std::mem::replace(&mut self.frames, letters);
        if old.capacity() == 0 {
            // The usual case (an emptied queue gives its memory back): nothing to drop or
            // free, so skip the slice drop glue, which runs once per delivery otherwise.
            std::mem::forget(old);
        }
    }

    /// Queues one frame of the connection's own (a ping) behind what is unsent.
    pub(crate) fn push(&mut self, frame: Frame) {
        self.frames.push_back(Letter::Frame(frame));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Writes every frame, [`MAX_IOVECS`] to a `writev`, then flushes a stream that
    /// buffers (TLS); plain TCP has nothing to flush and skips it.
    pub(crate) async fn write<W: WsWrite>(&mut self, io: &mut W) -> std::io::Result<()> {
        while !self.is_empty() {
            self.write_some(io).await?;
        }
        if io.unflushed() {
            io.flush().await?;
        }
        Ok(())
    }

    /// One `writev` of up to [`MAX_IOVECS`] frames.
    async fn write_some<W: WsWrite>(&mut self, io: &mut W) -> std::io::Result<()> {
        // The iovecs are built inside each poll, on the stack: held across an `.await`
        // they would sit in every session's future (1 KiB each) for the connection's
        // whole life, written or idle.
        let mut written = std::future::poll_fn(|cx| {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut n = 0;
            for (i, l) in self.frames.iter().take(MAX_IOVECS).enumerate() {
                let f = bytes(l);
                slices[i] = IoSlice::new(if i == 0 { &f[self.offset..] } else { f });
                n += 1;
            }
            std::pin::Pin::new(&mut *io).poll_write_vectored(cx, &slices[..n])
        })
        .await?;
        if written == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while written > 0 {
            let Some(front) = self.frames.front() else {
                break;
            };
            let left = bytes(front).len() - self.offset;
            if written >= left {
                written -= left;
                self.frames.pop_front();
                self.offset = 0;
            } else {
                self.offset += written;
                written = 0;
            }
        }
        if self.frames.is_empty() {
            // Give the queue's memory back: an idle connection holds none.
            self.frames = VecDeque::new();
        }
        Ok(())
    }

    /// Drops every frame not yet begun; a frame partly on the wire must be finished
    /// before anything else (the close frame) can follow it.
    pub(crate) fn abandon(&mut self) {
        if self.offset > 0 {
            self.frames.truncate(1);
        } else {
            self.frames = VecDeque::new();
        }
    }
}

/// The bytes of a letter on the wire; every letter is a frame once [`Unsent::fill`] took it.
fn bytes(l: &Letter) -> &[u8] {
    match l {
        Letter::Frame(f) => f,
        Letter::Command(_) => &[],
    }
}
