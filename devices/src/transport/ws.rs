//! A device on a WebSocket to the hub.
//!
//! The device connects with `role=device&acks=true`, sends its outbox (one `reading`, or a
//! `readings` batch of up to [`MAX_BATCH`]), and forgets readings only when the hub's
//! `accepted` covers their seq. The hub answers each message in order, and when it refuses
//! the tail of a batch (`rate_limited`) its `accepted` names the highest seq it took, so
//! the device matches each `accepted` to the message it answers ([`InFlight`]) and confirms
//! only that message's granted prefix. When the connection drops it backs off, reconnects, and
//! resends everything unconfirmed with the original `ts` and `seq`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, SinkExt, StreamExt};
use telehub_protocol::codes::ErrorCode;
use telehub_protocol::inbound::{ReadingItem, ToHub};
use telehub_protocol::outbound::ServerMessage;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{self, Message};

use super::{sleep_opt, DeviceCtx, Due, Schedule, TokenBucket, CONNECT_TIMEOUT, MAX_BATCH};
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
}

fn handle_frame(
    dev: &mut Device,
    inflight: &mut InFlight,
    msg: Option<Result<Message, tungstenite::Error>>,
) -> Inbox {
    let text = match msg {
        Some(Ok(Message::Text(t))) => t,
        Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Inbox::Closed,
        Some(Ok(_)) => return Inbox::Nothing,
    };
    let Ok(frame) = ServerMessage::from_json(text.as_str()) else {
        return Inbox::Nothing;
    };
    match frame {
        ServerMessage::Accepted(accepted) => {
            if let Some((first, last)) = inflight.accept(accepted.seq) {
                dev.ack_range(first, last);
            }
            Inbox::Nothing
        }
        ServerMessage::Error(error) => {
            let limited = error.code == ErrorCode::RateLimited.as_str();
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

async fn connect_device(hub: Arc<HubUrl>, path: String) -> Result<WsStream, ConnectError> {
    let addr = hub.resolve().await?;
    let attempt = wsclient::connect(
        &hub,
        addr,
        &path,
        None,
        wsclient::small_config(DEVICE_READ_BUFFER),
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

    // A connection being opened counts as online: it may finish and drain in time.
    while !schedule.finished(ws.is_none() && connecting.is_none(), dev.unconfirmed()) {
        let mut want_flush = false;
        let mut lost = false;
        tokio::select! {
            due = schedule.next(&mut dev, &ctx.clock) => match due {
                Due::Connect => {
                    connecting = Some(connect_device(hub.clone(), path.clone()).boxed());
                }
                Due::Sampled | Due::Shutdown => want_flush = true,
                Due::DrainOver | Due::Booted => {}
            },
            res = finish_connecting(&mut connecting), if connecting.is_some() => {
                connecting = None;
                match res {
                    Ok(stream) => {
                        tracing::debug!(room = %dev.spec.room, device = %dev.spec.id, "connected");
                        ws = Some(stream);
                        dev.connected();
                        schedule.connected();
                        want_flush = true;
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
            inflight.0.clear();
            dev.disconnected();
            schedule.dropped();
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
