//! A device on HTTP ingest (`docs/INGEST.md`), for devices that cannot keep a WebSocket
//! open:
//!
//! | what | request |
//! | --- | --- |
//! | readings | `POST /api/rooms/{room}/devices/{device}/readings`, a JSON array with `seq` |
//! | commands | `GET /api/rooms/{room}/devices/{device}/commands?wait=20s` (long poll) |
//! | acks | `POST /api/rooms/{room}/devices/{device}/commands/{id}/ack` |
//!
//! Readings go on one keep-alive connection (the device's "connection": it is up while
//! that socket is), one request at a time; an answer of `200` confirms the batch, a `207`
//! the items it does not list, and `429` (or rate-limited items) rewinds the outbox until
//! `Retry-After`. The long poll runs in a task of its own on a second connection and
//! hands commands to the device's loop over a bounded channel.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{sleep_opt, DeviceCtx, Due, Schedule, TokenBucket, CONNECT_TIMEOUT, MAX_BATCH};
use crate::auth::{TokenRequest, TokenSource};
use crate::command::{Command, Effect};
use crate::device::{Device, DeviceSummary};
use crate::wsclient::HubUrl;
use telehub_protocol::role::Role;

/// How long one command poll asks the hub to wait.
const POLL_WAIT: &str = "20s";
/// How long a request may take before the connection counts as lost (a poll waits
/// [`POLL_WAIT`] longer).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Commands fetched and not yet handled by the device's loop.
const COMMAND_CAPACITY: usize = 16;
/// After a refused token, how long until the readings are offered again.
const AUTH_RETRY: Duration = Duration::from_secs(5);
/// Largest answer read, in bytes (the hub's are a few hundred).
const MAX_ANSWER: usize = 1024 * 1024;

/// One answer: status, `Retry-After` (seconds) and body.
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: Vec<u8>,
}

/// One keep-alive HTTP/1.1 connection to the hub.
struct HttpConn {
    stream: TcpStream,
    authority: String,
    buf: Vec<u8>,
}

impl HttpConn {
    async fn open(hub: &HubUrl) -> std::io::Result<HttpConn> {
        let authority = hub.authority();
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&authority))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        stream.set_nodelay(true)?;
        Ok(HttpConn {
            stream,
            authority,
            buf: Vec::new(),
        })
    }

    async fn request(
        &mut self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
        timeout: Duration,
    ) -> std::io::Result<Answer> {
        let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.authority,
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        tokio::time::timeout(timeout, async {
            self.stream.write_all(&req).await?;
            self.answer().await
        })
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)?
    }

    async fn answer(&mut self) -> std::io::Result<Answer> {
        let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string());
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_ascii_lowercase();
                let status = head
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| bad("no status line"))?;
                let header = |name: &str| {
                    head.lines()
                        .find_map(|l| l.strip_prefix(name))
                        .and_then(|v| v.trim().parse::<u64>().ok())
                };
                let len = header("content-length:").unwrap_or(0) as usize;
                if len > MAX_ANSWER {
                    return Err(bad("answer too large"));
                }
                let retry_after = header("retry-after:");
                while self.buf.len() < end + 4 + len {
                    self.fill().await?;
                }
                let body = self.buf[end + 4..end + 4 + len].to_vec();
                self.buf.drain(..end + 4 + len);
                return Ok(Answer {
                    status,
                    retry_after,
                    body,
                });
            }
            if self.buf.len() > MAX_ANSWER {
                return Err(bad("answer head too large"));
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 8 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// What a `207` lists: the refused items by index.
#[derive(Deserialize)]
struct Partial {
    #[serde(default)]
    errors: Vec<ItemError>,
}

#[derive(Deserialize)]
struct ItemError {
    index: Option<usize>,
    error: String,
}

/// A poll's answer; each command stays raw until the device's loop reads it (a
/// [`Command`] borrows from its text).
#[derive(Deserialize)]
struct Commands {
    commands: Vec<Box<serde_json::value::RawValue>>,
}

fn token(auth: Option<&TokenSource>, dev_room: &str, dev_id: &str) -> Option<String> {
    let a = auth?;
    match a.token(&TokenRequest {
        client: dev_id,
        role: Role::Device,
        room: dev_room,
    }) {
        Ok(t) => Some(t),
        Err(error) => {
            tracing::warn!(room = dev_room, device = dev_id, %error, "no token for the device");
            None
        }
    }
}

/// Long-polls the device's commands until the device's loop goes away.
async fn poll_commands(
    hub: Arc<HubUrl>,
    path: String,
    room: String,
    device: String,
    auth: Option<TokenSource>,
    tx: mpsc::Sender<Box<serde_json::value::RawValue>>,
) {
    let mut conn: Option<HttpConn> = None;
    let wait = REQUEST_TIMEOUT + Duration::from_secs(20);
    while !tx.is_closed() {
        if conn.is_none() {
            conn = HttpConn::open(&hub).await.ok();
        }
        let Some(c) = conn.as_mut() else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let t = token(auth.as_ref(), &room, &device);
        match c.request("GET", &path, t.as_deref(), b"", wait).await {
            Ok(a) if a.status == 200 => {
                if let Ok(got) = serde_json::from_slice::<Commands>(&a.body) {
                    for cmd in got.commands {
                        if tx.send(cmd).await.is_err() {
                            return;
                        }
                    }
                }
            }
            Ok(a) => {
                tracing::debug!(status = a.status, "command poll refused");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(_) => {
                conn = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// The JSON array of one batch.
fn batch_body(readings: &[crate::outbox::Reading]) -> Vec<u8> {
    let items: Vec<serde_json::Value> = readings
        .iter()
        .map(|r| {
            let mut v = json!({"metric": r.metric, "value": r.value, "ts": r.ts, "seq": r.seq});
            if !r.unit.is_empty() {
                v["unit"] = json!(r.unit);
            }
            v
        })
        .collect();
    serde_json::to_vec(&items).unwrap_or_default()
}

/// Run one device over HTTP ingest until shutdown (and drain), then report.
pub(crate) async fn run_device(mut dev: Device, hub: Arc<HubUrl>, ctx: DeviceCtx) -> DeviceSummary {
    let base = format!("/api/rooms/{}/devices/{}", dev.spec.room, dev.spec.id);
    let readings_path = format!("{base}/readings");
    let (tx, mut commands) = mpsc::channel(COMMAND_CAPACITY);
    let poller = tokio::spawn(poll_commands(
        hub.clone(),
        format!("{base}/commands?wait={POLL_WAIT}"),
        dev.spec.room.clone(),
        dev.spec.id.clone(),
        ctx.auth.clone(),
        tx,
    ));
    let mut schedule = Schedule::new(&dev, &ctx);
    let mut conn: Option<HttpConn> = None;
    let mut flush_at: Option<Instant> = None;
    let mut bucket = TokenBucket::new(ctx.send_rate);

    while !schedule.finished(conn.is_none(), dev.unconfirmed()) {
        let mut want_flush = false;
        tokio::select! {
            due = schedule.next(&mut dev, &ctx.clock) => match due {
                Due::Connect => match HttpConn::open(&hub).await {
                    Ok(c) => {
                        conn = Some(c);
                        dev.connected();
                        schedule.connected();
                        want_flush = true;
                    }
                    Err(error) => {
                        tracing::debug!(%error, "cannot reach the hub");
                        dev.stats().connect_failure();
                        schedule.retry_later();
                    }
                },
                Due::Sampled | Due::Shutdown => want_flush = true,
                Due::DrainOver | Due::Booted => {}
            },
            Some(raw) = commands.recv() => {
                let Ok(cmd) = serde_json::from_str::<Command>(raw.get()) else {
                    continue;
                };
                let (ack, effect) = dev.handle_command(&cmd);
                let path = format!("{base}/commands/{}/ack", ack.id);
                // On the readings connection if it is up, else on one of its own (the
                // poll may bring a command before the first readings connection).
                let t = token(ctx.auth.as_ref(), &dev.spec.room, &dev.spec.id);
                let body = ack.to_mqtt_payload();
                match conn.as_mut() {
                    Some(c) => {
                        if c.request("POST", &path, t.as_deref(), &body, REQUEST_TIMEOUT).await.is_err() {
                            conn = None;
                            dev.disconnected();
                            schedule.dropped();
                        }
                    }
                    None => {
                        if let Ok(mut c) = HttpConn::open(&hub).await {
                            if let Err(error) = c.request("POST", &path, t.as_deref(), &body, REQUEST_TIMEOUT).await {
                                tracing::debug!(%error, "ack not sent");
                            }
                        }
                    }
                }
                match effect {
                    Effect::Reboot(pause) => {
                        if conn.take().is_some() {
                            dev.disconnected();
                        }
                        schedule.reboot(pause);
                    }
                    Effect::SetInterval(d) => schedule.set_interval(d),
                    Effect::None => {}
                }
            }
            _ = sleep_opt(flush_at), if flush_at.is_some() => {
                flush_at = None;
                want_flush = true;
            }
        }
        if !want_flush || flush_at.is_some() {
            continue;
        }
        while let Some(c) = conn.as_mut() {
            if !dev.has_unsent() {
                break;
            }
            let allowed = bucket.available().min(MAX_BATCH);
            if allowed == 0 {
                flush_at = Some(bucket.ready_at(1));
                break;
            }
            let batch = dev.take_unsent(allowed);
            let Some((first, last)) = batch.readings.first().zip(batch.readings.last()) else {
                break;
            };
            let (first, last) = (first.seq, last.seq);
            bucket.take(batch.readings.len());
            let t = token(ctx.auth.as_ref(), &dev.spec.room, &dev.spec.id);
            let body = batch_body(&batch.readings);
            match c
                .request("POST", &readings_path, t.as_deref(), &body, REQUEST_TIMEOUT)
                .await
            {
                Ok(a) if a.status == 200 => dev.ack_range(first, last),
                Ok(a) if a.status == 207 => {
                    let refused = serde_json::from_slice::<Partial>(&a.body)
                        .map(|p| p.errors)
                        .unwrap_or_default();
                    let limited = refused.iter().any(|e| e.error == "rate_limited");
                    for (i, r) in batch.readings.iter().enumerate() {
                        if !refused
                            .iter()
                            .any(|e| e.index == Some(i) && e.error == "rate_limited")
                        {
                            dev.ack_one(r.seq);
                        }
                    }
                    if limited {
                        dev.stats().hub_error(true);
                        dev.rewind();
                        flush_at =
                            Some(Instant::now() + Duration::from_secs(a.retry_after.unwrap_or(1)));
                        break;
                    }
                }
                Ok(a) if a.status == 429 || a.status == 503 => {
                    dev.stats().hub_error(a.status == 429);
                    dev.rewind();
                    flush_at =
                        Some(Instant::now() + Duration::from_secs(a.retry_after.unwrap_or(1)));
                    break;
                }
                Ok(a) if a.status == 401 || a.status == 403 => {
                    // A refused token does not become valid by resending at once: keep
                    // the readings and try again later (a rotated token file may help).
                    dev.stats().auth_refused();
                    tracing::warn!(status = a.status, room = %dev.spec.room, device = %dev.spec.id, "token refused");
                    dev.rewind();
                    flush_at = Some(Instant::now() + AUTH_RETRY);
                    break;
                }
                Ok(a) => {
                    // Refused for good (400, 409, 413): resending cannot help,
                    // so the outbox lets them go (counted as a hub error) and moves on.
                    dev.stats().hub_error(false);
                    tracing::warn!(status = a.status, body = %String::from_utf8_lossy(&a.body),
                        room = %dev.spec.room, device = %dev.spec.id, "readings refused");
                    dev.ack_range(first, last);
                }
                Err(error) => {
                    tracing::debug!(%error, "connection to the hub lost");
                    conn = None;
                    dev.disconnected();
                    schedule.dropped();
                }
            }
        }
    }
    poller.abort();
    dev.finish()
}
