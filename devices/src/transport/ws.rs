//! A device on a WebSocket to the hub.
//!
//! The device connects with `role=device&acks=true`, sends its outbox (one `reading`, or a
//! `readings` batch of up to [`MAX_BATCH`]), and forgets a reading only when an `accepted`
//! lists its seq in `seqs` (the rule of `docs/PROTOCOL.md`; with durable acks that is once
//! the hub has it on disk). The hub answers each message in order; [`InFlight`] only
//! drops the messages an answer settles. Readings refused (`rate_limited`) or not stored
//! (`store_unavailable`) stay in the outbox and go out again after a pause. When the connection drops it backs off, reconnects, and
//! resends everything unconfirmed with the original `ts` and `seq`.
//!
//! With a [`TokenSource`] (a hub in token mode) each connection carries
//! `Authorization: Bearer` with a token for the device's id and room, and answers the
//! hub's `token_expiring` with a fresh `auth` frame. A refused token (HTTP 401/403 on the
//! upgrade, close 1008 after a refresh) is logged and retried only every
//! [`REFUSED_RETRY`]: a new token may come (a rotated `--token-file`), a tight loop
//! would only fill the hub's refusal counter.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, SinkExt, StreamExt};
use telehub_protocol::codes::{close, ErrorCode};
use telehub_protocol::inbound::{ReadingItem, ToHub};
use telehub_protocol::outbound::ServerMessage;
use telehub_protocol::role::Role;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};

use super::{sleep_opt, DeviceCtx, Due, Schedule, TokenBucket, CONNECT_TIMEOUT, MAX_BATCH};
use crate::auth::{AuthError, TokenRequest, TokenSource};
use crate::command::Effect;
use crate::device::{Device, DeviceSummary};
use crate::outbox::Reading;
use crate::wsclient::{self, ConnectError, HubUrl, WsStream};

/// Read buffer per device connection: frames to a device are acks and commands, tiny.
const DEVICE_READ_BUFFER: usize = 4 * 1024;
/// After a `rate_limited` error, wait this long before resending.
const RATE_LIMITED_PAUSE: Duration = Duration::from_secs(1);
/// How long a clean close may take before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// After the hub refused a device's token, wait at least this long before trying again.
pub(crate) const REFUSED_RETRY: Duration = Duration::from_secs(30);
/// At most one refresh per this long: the hub warns at once when `exp` is under 30 s
/// away, so a short-lived token would otherwise be refreshed in a tight loop.
const REFRESH_MIN_GAP: Duration = Duration::from_secs(1);

/// Encode readings as one protocol message: `reading` for one, `readings` for more.
pub(crate) fn encode_readings(readings: &[Reading]) -> String {
    match readings {
        [r] => ToHub::reading(wire_item(r)).to_json(),
        many => {
            let items: Vec<ReadingItem> = many.iter().map(wire_item).collect();
            ToHub::readings(&items).to_json()
        }
    }
}

/// A reading as the protocol carries it; the outbox's empty unit means none.
fn wire_item(r: &Reading) -> ReadingItem<'_> {
    ReadingItem {
        metric: r.metric,
        value: r.value,
        unit: (!r.unit.is_empty()).then_some(r.unit),
        ts: Some(r.ts),
        seq: Some(r.seq),
    }
}

/// Messages sent on the current connection and not yet answered, as (first seq, last seq).
/// Bounded by the outbox: every entry covers at least one unconfirmed reading.
#[derive(Debug, Default)]
struct InFlight(VecDeque<(u64, u64)>);

impl InFlight {
    /// Match `accepted{seq}` to its message; returns the range it confirms. Messages before
    /// it that got no `accepted` were refused whole and stay unconfirmed.
    fn accept(&mut self, seq: u64) -> Option<(u64, u64)> {
        while let Some(&(first, last)) = self.0.front() {
            if seq < first {
                return None;
            }
            self.0.pop_front();
            if seq <= last {
                return Some((first, seq));
            }
        }
        None
    }
}

/// What an incoming frame asks the loop to do.
enum Inbox {
    Nothing,
    /// Send this ack; then maybe reboot.
    Reply(String, Effect),
    RateLimited,
    Closed,
    /// `token_expiring`: send a fresh token before `exp`.
    TokenExpiring(u64),
    /// Closed for the token: 1008 (`unauthorized`/`forbidden`) or 4001 (`token expired`).
    AuthClosed(u16, String),
}

fn handle_frame(
    dev: &mut Device,
    inflight: &mut InFlight,
    msg: Option<Result<Message, tungstenite::Error>>,
) -> Inbox {
    let text = match msg {
        Some(Ok(Message::Text(t))) => t,
        Some(Ok(Message::Close(Some(frame))))
            if matches!(
                u16::from(frame.code),
                close::POLICY_VIOLATION | close::TOKEN_EXPIRED
            ) =>
        {
            return Inbox::AuthClosed(u16::from(frame.code), frame.reason.to_string())
        }
        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Inbox::Closed,
        Some(Ok(_)) => return Inbox::Nothing,
    };
    let Ok(frame) = ServerMessage::from_json(text.as_str()) else {
        return Inbox::Nothing;
    };
    match frame {
        ServerMessage::Accepted(accepted) => {
            // The rule of docs/PROTOCOL.md: forget exactly the seqs `accepted` lists.
            // The in-flight list only drops the messages this answer settles.
            inflight.accept(accepted.seq);
            for [first, last] in &accepted.seqs.0 {
                dev.ack_range(*first, *last);
            }
            Inbox::Nothing
        }
        ServerMessage::Error(error) => {
            // Not kept (full or failing store): resend later, like refused readings.
            let limited = error.code == ErrorCode::RateLimited.as_str()
                || error.code == ErrorCode::StoreUnavailable.as_str();
            dev.stats().hub_error(limited);
            if limited {
                Inbox::RateLimited
            } else {
                Inbox::Nothing
            }
        }
        ServerMessage::Command(cmd) => {
            let (ack, effect) = dev.handle_command(&cmd);
            Inbox::Reply(ack.to_ws_text(), effect)
        }
        ServerMessage::TokenExpiring(t) => Inbox::TokenExpiring(t.exp),
        _ => Inbox::Nothing,
    }
}

/// Send everything unsent that the rate allows. Returns when to try again if the rate
/// held some back.
async fn flush(
    ws: &mut WsStream,
    dev: &mut Device,
    bucket: &mut TokenBucket,
    inflight: &mut InFlight,
) -> Result<Option<Instant>, tungstenite::Error> {
    let mut wrote = false;
    let mut retry = None;
    while dev.has_unsent() {
        let allowed = bucket.available().min(MAX_BATCH);
        if allowed == 0 {
            retry = Some(bucket.ready_at(1));
            break;
        }
        let batch = dev.take_unsent(allowed);
        if batch.readings.is_empty() {
            break;
        }
        bucket.take(batch.readings.len());
        if let (Some(first), Some(last)) = (batch.readings.first(), batch.readings.last()) {
            inflight.0.push_back((first.seq, last.seq));
        }
        ws.feed(Message::text(encode_readings(&batch.readings)))
            .await?;
        wrote = true;
    }
    if wrote {
        ws.flush().await?;
    }
    Ok(retry)
}

async fn connect_device(
    hub: Arc<HubUrl>,
    path: String,
    token: Option<String>,
) -> Result<WsStream, ConnectError> {
    let addr = hub.resolve().await?;
    let attempt = wsclient::connect(
        &hub,
        addr,
        &path,
        None,
        wsclient::small_config(DEVICE_READ_BUFFER),
        token.as_deref(),
        None,
    );
    match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(r) => r,
        Err(_) => Err(ConnectError::Tcp {
            addr,
            error: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
        }),
    }
}

async fn recv(ws: &mut Option<WsStream>) -> Option<Result<Message, tungstenite::Error>> {
    match ws {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

async fn finish_connecting(
    c: &mut Option<BoxFuture<'static, Result<WsStream, ConnectError>>>,
) -> Result<WsStream, ConnectError> {
    match c {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// The token for this device's next connection or refresh (`None` without auth).
fn device_token(auth: Option<&TokenSource>, dev: &Device) -> Result<Option<String>, AuthError> {
    auth.map(|a| {
        a.token(&TokenRequest {
            client: &dev.spec.id,
            role: Role::Device,
            room: &dev.spec.room,
        })
    })
    .transpose()
}

/// Logs a refused token: the run's first refusal as a warning (the command line shows
/// it), the others at debug level; all are counted in the stats.
fn report_refusal(auth: &TokenSource, dev: &Device, what: &str) {
    let retry_s = REFUSED_RETRY.as_secs();
    if auth.first_refusal() {
        tracing::warn!(room = %dev.spec.room, device = %dev.spec.id, credentials = auth.describe(),
            "token refused: {what}; check the token, or --auth-secret/--auth-kid/--auth-issuer/\
             --auth-audience against the hub's [auth] (retrying every {retry_s} s; \
             further refusals are counted in the summary)");
    } else {
        tracing::debug!(room = %dev.spec.room, device = %dev.spec.id, "token refused: {what}");
    }
}

/// Run one device over WebSocket until shutdown (and drain), then report.
pub(crate) async fn run_device(mut dev: Device, hub: Arc<HubUrl>, ctx: DeviceCtx) -> DeviceSummary {
    let path = format!(
        "/ws/{}/{}?role=device&acks=true",
        dev.spec.room, dev.spec.id
    );
    let mut schedule = Schedule::new(&dev, &ctx);
    let mut connecting: Option<BoxFuture<'static, Result<WsStream, ConnectError>>> = None;
    let mut ws: Option<WsStream> = None;
    let mut flush_at: Option<Instant> = None;
    let mut bucket = TokenBucket::new(ctx.send_rate);
    let mut inflight = InFlight::default();
    // Token mode: the token of the connection being opened or open, when a refresh is
    // due, and when the last one was sent.
    let auth = ctx.auth.clone();
    let mut token: Option<String> = None;
    let mut refresh_at: Option<Instant> = None;
    let mut refreshed_at: Option<Instant> = None;

    // A connection being opened counts as online: it may finish and drain in time.
    while !schedule.finished(ws.is_none() && connecting.is_none(), dev.unconfirmed()) {
        let mut want_flush = false;
        let mut lost = false;
        let mut refused = false;
        tokio::select! {
            due = schedule.next(&mut dev, &ctx.clock) => match due {
                Due::Connect => match device_token(auth.as_ref(), &dev) {
                    Ok(t) => {
                        token = t;
                        connecting = Some(
                            connect_device(hub.clone(), path.clone(), token.clone()).boxed(),
                        );
                    }
                    Err(error) => {
                        dev.stats().connect_failure();
                        if let Some(a) = &auth {
                            report_refusal(a, &dev, &format!("no token: {error}"));
                        }
                        schedule.retry_after_at_least(REFUSED_RETRY);
                    }
                },
                Due::Sampled | Due::Shutdown => want_flush = true,
                Due::DrainOver | Due::Booted => {}
            },
            _ = sleep_opt(refresh_at), if refresh_at.is_some() && ws.is_some() => {
                refresh_at = None;
                if let (Some(a), Some(s)) = (&auth, ws.as_mut()) {
                    match device_token(Some(a), &dev) {
                        Ok(Some(fresh)) if token.as_deref() != Some(fresh.as_str()) => {
                            refreshed_at = Some(Instant::now());
                            let frame = ToHub::auth(&fresh).to_json();
                            token = Some(fresh);
                            if s.send(Message::text(frame)).await.is_ok() {
                                dev.stats().token_refresh();
                                tracing::debug!(room = %dev.spec.room, device = %dev.spec.id, "token refreshed");
                            } else {
                                lost = true;
                            }
                        }
                        Ok(_) if a.mints() => {
                            // Minted within the same second as the current one: the
                            // same token. The next second brings a later `exp`.
                            refresh_at = Some(Instant::now() + REFRESH_MIN_GAP);
                        }
                        Ok(_) if a.renewable() => {
                            // The token file still holds the same token: look again
                            // each second until the operator rotates it (or `exp`).
                            if a.first_stale_warning() {
                                tracing::warn!(room = %dev.spec.room, device = %dev.spec.id,
                                    "the hub says the token expires soon, and the token file still \
                                     holds the same token: rewrite it with a fresh one, or the hub \
                                     closes the connection when it expires");
                            }
                            refresh_at = Some(Instant::now() + REFRESH_MIN_GAP);
                        }
                        Ok(_) => {
                            if a.first_stale_warning() {
                                tracing::warn!(room = %dev.spec.room, device = %dev.spec.id,
                                    "the hub says the token expires soon, but {} cannot be renewed: \
                                     the hub will close the connection when it expires",
                                    a.describe());
                            }
                        }
                        Err(error) => {
                            if a.first_stale_warning() {
                                tracing::warn!(room = %dev.spec.room, device = %dev.spec.id, %error,
                                    "cannot refresh the token");
                            }
                        }
                    }
                }
            }
            res = finish_connecting(&mut connecting), if connecting.is_some() => {
                connecting = None;
                match res {
                    Ok(stream) => {
                        tracing::debug!(room = %dev.spec.room, device = %dev.spec.id, "connected");
                        ws = Some(stream);
                        refresh_at = None;
                        refreshed_at = None;
                        dev.connected();
                        schedule.connected();
                        want_flush = true;
                    }
                    Err(error) if error.is_refusal() => {
                        dev.stats().connect_failure();
                        dev.stats().auth_refused();
                        if let Some(a) = &auth {
                            report_refusal(a, &dev, &error.to_string());
                        }
                        schedule.retry_after_at_least(REFUSED_RETRY);
                    }
                    Err(error) => {
                        dev.stats().connect_failure();
                        let retry_ms = schedule.retry_later().map(|d| d.as_millis() as u64);
                        tracing::debug!(room = %dev.spec.room, device = %dev.spec.id, %error,
                            ?retry_ms, "connect failed");
                    }
                }
            }
            msg = recv(&mut ws), if ws.is_some() => {
                match handle_frame(&mut dev, &mut inflight, msg) {
                    Inbox::Nothing => {}
                    Inbox::Closed => lost = true,
                    Inbox::TokenExpiring(exp) => {
                        tracing::debug!(room = %dev.spec.room, device = %dev.spec.id, exp, "token expiring");
                        let soonest = refreshed_at.map_or_else(Instant::now, |t| t + REFRESH_MIN_GAP);
                        refresh_at = Some(soonest.max(Instant::now()));
                    }
                    Inbox::AuthClosed(code, reason) => {
                        dev.stats().auth_refused();
                        if let Some(a) = &auth {
                            report_refusal(a, &dev, &format!("the hub closed the connection with {code} {reason:?}"));
                        }
                        lost = true;
                        // Expired: reconnecting at once with a freshly minted token
                        // works; with the same given token (or a refused refresh) it
                        // cannot, so that waits like a refusal.
                        refused = code == close::POLICY_VIOLATION
                            || !auth.as_ref().is_some_and(TokenSource::mints);
                    }
                    Inbox::RateLimited => {
                        // Some readings were refused: send everything unconfirmed again
                        // after a pause (the hub drops the ones it already has). The
                        // messages in flight stay listed: their answers still come, in
                        // order, ahead of the resent ones'.
                        dev.rewind();
                        flush_at = Some(Instant::now() + RATE_LIMITED_PAUSE);
                    }
                    Inbox::Reply(text, effect) => {
                        let sent = match ws.as_mut() {
                            Some(s) => s.send(Message::text(text)).await.is_ok(),
                            None => false,
                        };
                        match effect {
                            Effect::Reboot(pause) => {
                                inflight.0.clear();
                                if let Some(mut s) = ws.take() {
                                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, s.close(None)).await;
                                    dev.disconnected();
                                }
                                schedule.reboot(pause);
                            }
                            Effect::SetInterval(d) => schedule.set_interval(d),
                            Effect::None => {}
                        }
                        lost |= !sent && ws.is_some();
                    }
                }
            }
            _ = sleep_opt(flush_at), if flush_at.is_some() => {
                flush_at = None;
                want_flush = true;
            }
        }
        if want_flush && flush_at.is_none() && !lost {
            if let Some(s) = ws.as_mut() {
                match flush(s, &mut dev, &mut bucket, &mut inflight).await {
                    Ok(retry) => flush_at = retry,
                    Err(_) => lost = true,
                }
            }
        }
        if lost {
            tracing::debug!(room = %dev.spec.room, device = %dev.spec.id, "connection lost");
            ws = None;
            flush_at = None;
            refresh_at = None;
            inflight.0.clear();
            dev.disconnected();
            if refused {
                schedule.dropped_refused(REFUSED_RETRY);
            } else {
                schedule.dropped();
            }
        }
    }
    if let Some(mut s) = ws.take() {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, s.close(None)).await;
        dev.disconnected();
    }
    dev.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn r(seq: u64, unit: &'static str) -> Reading {
        Reading {
            seq,
            ts: 1_764_000_000_000,
            metric: "temperature",
            value: 21.5,
            unit,
        }
    }

    #[test]
    fn the_wire_bytes_are_unchanged() {
        assert_eq!(
            encode_readings(&[r(17, "C")]),
            r#"{"type":"reading","metric":"temperature","value":21.5,"unit":"C","ts":1764000000000,"seq":17}"#
        );
        assert_eq!(
            encode_readings(&[r(1, ""), r(2, "C")]),
            r#"{"type":"readings","items":[{"metric":"temperature","value":21.5,"ts":1764000000000,"seq":1},{"metric":"temperature","value":21.5,"unit":"C","ts":1764000000000,"seq":2}]}"#
        );
    }

    #[test]
    fn one_reading_is_a_reading_message() {
        let v: Value = serde_json::from_str(&encode_readings(&[r(17, "C")])).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"type":"reading","metric":"temperature","value":21.5,
                               "unit":"C","ts":1_764_000_000_000_i64,"seq":17})
        );
    }

    #[test]
    fn many_readings_are_a_batch_and_empty_units_are_left_out() {
        let v: Value =
            serde_json::from_str(&encode_readings(&[r(1, ""), r(2, "C")])).expect("json");
        assert_eq!(v["type"], "readings");
        assert_eq!(v["items"][0].get("unit"), None);
        assert_eq!(v["items"][1]["seq"], 2);
    }

    #[test]
    fn accepted_matches_its_message() {
        let mut f = InFlight::default();
        f.0.extend([(1, 5), (6, 10), (11, 15)]);
        // Message 1 fully refused (no accepted), message 2 granted 6..=8.
        assert_eq!(f.accept(8), Some((6, 8)));
        assert_eq!(f.accept(15), Some((11, 15)));
        assert_eq!(f.accept(20), None);
    }

    #[test]
    fn answers_match_in_order_across_a_resend() {
        // M1 = 1..=5 had its tail refused (accepted 3); M2 = 6..=10 was already in
        // flight; after the rewind M3 resends 4..=10.
        let mut f = InFlight::default();
        f.0.extend([(1, 5), (6, 10), (4, 10)]);
        assert_eq!(f.accept(3), Some((1, 3)));
        assert_eq!(f.accept(10), Some((6, 10)));
        assert_eq!(f.accept(10), Some((4, 10)));
        assert!(f.0.is_empty());
    }

    #[test]
    fn ack_has_type() {
        let ack = crate::command::Ack {
            id: "c-1".into(),
            ok: true,
            result: Some(serde_json::json!({"interval_ms": 500})),
        };
        let v: Value = serde_json::from_str(&ack.to_ws_text()).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"type":"ack","id":"c-1","ok":true,"result":{"interval_ms":500}})
        );
    }
}
