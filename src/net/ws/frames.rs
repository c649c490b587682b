//! The hub's messages as WebSocket frames: everything the hub sends leaves as a [`Frame`]
//! built here, serialised once and shared by every recipient.
//!
//! The protocol itself (ids, codes, roles, inbound parsing, [`ServerMessage`]) lives in
//! the `telehub-protocol` crate, shared with the simulator and the tests. What stays here
//! is what only the hub does: serialising a message straight into a WebSocket frame
//! (header room in front, no copy) and the builders the rooms and sessions call.
//!
//! `docs/PROTOCOL.md` is the reference for every message and error code.

use std::borrow::Cow;

use crate::net::ws::codec as websocket;
use serde_json::value::RawValue;

use telehub_protocol::codes::ErrorCode;
use telehub_protocol::inbound::ProtoError;
use telehub_protocol::outbound::{
    Accepted, Ack, Command, ErrorMsg, Presence, Reading, Snapshot, Welcome,
};
use telehub_protocol::outbound::{MemberInfo, ServerMessage, SnapshotEntry};
use telehub_protocol::role::{Role, Via};
use telehub_protocol::seqs::SeqRanges;

/// A complete WebSocket text frame (header and JSON), ready for the socket. Server frames
/// are unmasked, so the same bytes serve every recipient: a reading is serialised once and
/// cloning its frame only bumps a reference count.
pub(crate) type Frame = bytes::Bytes;

/// Serialises `msg` into a frame: the JSON is written after room for the frame header,
/// which is then filled in front of it, so one allocation and no copy.
pub(crate) fn frame(msg: &ServerMessage) -> Frame {
    let mut buf = Vec::with_capacity(160);
    buf.resize(websocket::HEADER_ROOM, 0);
    // Serialising these plain structs cannot fail: every map key is a string and every
    // float is finite (validated on the way in).
    match serde_json::to_writer(&mut buf, msg) {
        Ok(()) => websocket::frame_in_place(buf),
        Err(e) => websocket::text(&format!(
            r#"{{"type":"error","code":"internal","message":"{e}"}}"#
        )),
    }
}

/// The JSON text inside a frame built here (for tests).
#[cfg(test)]
pub(crate) fn frame_text(frame: &Frame) -> &str {
    let skip = match frame.get(1).map(|b| b & 0x7F) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    std::str::from_utf8(frame.get(skip..).unwrap_or_default()).unwrap_or_default()
}

/// The first frame of every connection.
#[allow(clippy::too_many_arguments)]
pub(crate) fn welcome(
    room: &str,
    client: &str,
    role: Role,
    offset: u64,
    epoch: &str,
    members: &[MemberInfo],
    dashboards: usize,
    recovered: Option<bool>,
) -> Frame {
    frame(&ServerMessage::Welcome(Welcome {
        room: Cow::Borrowed(room),
        client: Cow::Borrowed(client),
        role,
        offset,
        epoch: Cow::Borrowed(epoch),
        members: Cow::Borrowed(members),
        dashboards: dashboards as u64,
        recovered,
    }))
}

/// A snapshot entry borrowed from a history record.
pub(crate) fn snapshot_entry<'a>(e: &crate::sinks::history::Replayed<'a>) -> SnapshotEntry<'a> {
    SnapshotEntry {
        device: Cow::Borrowed(e.device),
        metric: Cow::Borrowed(e.metric),
        value: e.value,
        unit: e.unit.map(Cow::Borrowed),
        ts: e.ts,
        offset: e.offset,
    }
}

/// `snapshot`: the last value of every series of the room (dashboards, after `welcome`).
pub(crate) fn snapshot_frame(series: &[SnapshotEntry]) -> Frame {
    frame(&ServerMessage::Snapshot(Snapshot {
        series: Cow::Borrowed(series),
    }))
}

/// `presence` with `event` = `join` or `leave`.
pub(crate) fn presence(event: &str, client: &str, role: Role, via: Via) -> Frame {
    frame(&ServerMessage::Presence(Presence {
        event: Cow::Borrowed(event),
        client: Cow::Borrowed(client),
        role,
        via,
    }))
}

/// A reading as dashboards receive it.
pub(crate) struct ReadingOut<'a> {
    /// The room.
    pub room: &'a str,
    /// The sending device.
    pub device: &'a str,
    /// The metric.
    pub metric: &'a str,
    /// The (finite) value.
    pub value: f64,
    /// The unit, if the device gave one.
    pub unit: Option<&'a str>,
    /// Epoch milliseconds.
    pub ts: i64,
    /// The device's seq, if it gave one.
    pub seq: Option<u64>,
    /// The reading's offset in the room.
    pub offset: u64,
}

/// `reading`: one reading's frame, shared by every dashboard of the room.
pub(crate) fn reading_frame(r: &ReadingOut) -> Frame {
    frame(&ServerMessage::Reading(Reading {
        room: Cow::Borrowed(r.room),
        device: Cow::Borrowed(r.device),
        metric: Cow::Borrowed(r.metric),
        value: r.value,
        unit: r.unit.map(Cow::Borrowed),
        ts: r.ts,
        seq: r.seq,
        offset: r.offset,
    }))
}

/// `{}`: the args of a command sent without any.
static EMPTY_ARGS: std::sync::LazyLock<Box<RawValue>> = std::sync::LazyLock::new(|| {
    RawValue::from_string("{}".to_string()).expect("`{}` is a JSON object")
});

/// A command as the device receives it.
pub(crate) fn command_frame(id: &str, from: &str, name: &str, args: Option<&RawValue>) -> Frame {
    frame(&ServerMessage::Command(Command {
        id: Cow::Borrowed(id),
        from: Cow::Borrowed(from),
        name: Cow::Borrowed(name),
        args: Cow::Borrowed(args.unwrap_or(&EMPTY_ARGS)),
    }))
}

/// An ack as the commanding dashboard receives it.
pub(crate) fn ack_frame(id: &str, from: &str, ok: bool, result: Option<&RawValue>) -> Frame {
    frame(&ServerMessage::Ack(Ack {
        id: Cow::Borrowed(id),
        from: Cow::Borrowed(from),
        ok,
        result: result.map(Cow::Borrowed),
    }))
}

/// `accepted`: the hub keeps exactly the readings whose seq `seqs` lists.
pub(crate) fn accepted_frame(seqs: &SeqRanges) -> Frame {
    frame(&ServerMessage::Accepted(Accepted {
        seq: seqs.max().unwrap_or(0),
        count: usize::try_from(seqs.len()).unwrap_or(usize::MAX),
        seqs: seqs.clone(),
    }))
}

/// `error` about readings (listed by seq) that the hub did not keep.
pub(crate) fn readings_error_frame(code: ErrorCode, message: &str, seqs: &SeqRanges) -> Frame {
    frame(&ServerMessage::Error(ErrorMsg {
        code: Cow::Borrowed(code.as_str()),
        message: Cow::Borrowed(message),
        id: None,
        seqs: Some(seqs.clone()),
    }))
}

/// `token_expiring`: the connection's token expires at `exp` (seconds since the epoch).
pub(crate) fn token_expiring_frame(exp: u64) -> Frame {
    frame(&ServerMessage::TokenExpiring(
        telehub_protocol::outbound::TokenExpiring { exp },
    ))
}

/// `skipped`: `count` readings from `from_offset` to `to_offset` a coalescing dashboard
/// was not sent.
pub(crate) fn skipped_frame(from_offset: u64, to_offset: u64, count: u64) -> Frame {
    frame(&ServerMessage::Skipped(
        telehub_protocol::outbound::Skipped {
            from_offset,
            to_offset,
            count,
        },
    ))
}

/// `alert`: one transition of an alert instance, to the room's dashboards.
pub(crate) fn alert_frame(a: &telehub_protocol::outbound::Alert<'_>) -> Frame {
    frame(&ServerMessage::Alert(a.clone()))
}

/// `error`: `e` reported to its sender.
pub(crate) fn error_frame(e: &ProtoError) -> Frame {
    frame(&ServerMessage::Error(ErrorMsg {
        code: Cow::Borrowed(e.code.as_str()),
        message: Cow::Borrowed(&e.message),
        id: e.id.as_deref().map(Cow::Borrowed),
        seqs: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use telehub_protocol::codes::ErrorCode;

    /// The exact frames each builder produced before the protocol moved into its own
    /// crate (captured from that code): the wire must not change by a byte.
    #[test]
    fn builders_produce_the_same_bytes_as_before() {
        let members = [
            MemberInfo {
                client: "t1",
                role: Role::Device,
                via: Via::Ws,
            },
            MemberInfo {
                client: "m\"q",
                role: Role::Device,
                via: Via::Mqtt,
            },
        ];
        let series = [
            SnapshotEntry {
                device: "t1".into(),
                metric: "temperature".into(),
                value: 21.5,
                unit: Some("°C".into()),
                ts: 1764000000000,
                offset: 1042,
            },
            SnapshotEntry {
                device: "t2".into(),
                metric: "h".into(),
                value: 40.0,
                unit: None,
                ts: 1,
                offset: 2,
            },
        ];
        let args = RawValue::from_string(r#"{"ms":500}"#.into()).expect("json");
        let reading = |room, device, metric, value, unit, ts, seq, offset| {
            reading_frame(&ReadingOut {
                room,
                device,
                metric,
                value,
                unit,
                ts,
                seq,
                offset,
            })
        };
        let built = [
            welcome(
                "greenhouse",
                "dash-1",
                Role::Dashboard,
                1042,
                "k3f9a2",
                &members,
                3,
                Some(true),
            ),
            welcome("g", "d", Role::Device, 0, "e", &[], 0, None),
            snapshot_frame(&series),
            snapshot_frame(&[]),
            presence("join", "t1", Role::Device, Via::Ws),
            presence("leave", "t1", Role::Dashboard, Via::Mqtt),
            reading(
                "greenhouse",
                "t1",
                "temperature",
                21.5,
                Some("C"),
                1764000000000,
                Some(17),
                1043,
            ),
            reading("r", "d", "m/x", -0.000123, None, -5, None, 0),
            reading(
                "r",
                "d",
                "m",
                1e300,
                Some("a\\b\n"),
                5,
                Some(u64::MAX),
                u64::MAX,
            ),
            command_frame("c-17", "dash-1", "set_interval", Some(&args)),
            command_frame("1", "dash", "reboot", None),
            ack_frame("c-17", "t1", true, Some(&args)),
            ack_frame("c-18", "t1", false, None),
            accepted_frame(&SeqRanges(vec![[17, 17]])),
            error_frame(
                &ProtoError::new(ErrorCode::InvalidField, "field `value` must be a number")
                    .with_id("c-17"),
            ),
            error_frame(&ProtoError::new(
                ErrorCode::RateLimited,
                "3 \"readings\" refused",
            )),
        ];
        let golden = [
            r#"{"type":"welcome","room":"greenhouse","client":"dash-1","role":"dashboard","offset":1042,"epoch":"k3f9a2","members":[{"client":"t1","role":"device","via":"ws"},{"client":"m\"q","role":"device","via":"mqtt"}],"dashboards":3,"recovered":true}"#,
            r#"{"type":"welcome","room":"g","client":"d","role":"device","offset":0,"epoch":"e","members":[],"dashboards":0}"#,
            r#"{"type":"snapshot","series":[{"device":"t1","metric":"temperature","value":21.5,"unit":"°C","ts":1764000000000,"offset":1042},{"device":"t2","metric":"h","value":40.0,"ts":1,"offset":2}]}"#,
            r#"{"type":"snapshot","series":[]}"#,
            r#"{"type":"presence","event":"join","client":"t1","role":"device","via":"ws"}"#,
            r#"{"type":"presence","event":"leave","client":"t1","role":"dashboard","via":"mqtt"}"#,
            r#"{"type":"reading","room":"greenhouse","device":"t1","metric":"temperature","value":21.5,"unit":"C","ts":1764000000000,"seq":17,"offset":1043}"#,
            r#"{"type":"reading","room":"r","device":"d","metric":"m/x","value":-0.000123,"ts":-5,"offset":0}"#,
            r#"{"type":"reading","room":"r","device":"d","metric":"m","value":1e+300,"unit":"a\\b\n","ts":5,"seq":18446744073709551615,"offset":18446744073709551615}"#,
            r#"{"type":"command","id":"c-17","from":"dash-1","name":"set_interval","args":{"ms":500}}"#,
            r#"{"type":"command","id":"1","from":"dash","name":"reboot","args":{}}"#,
            r#"{"type":"ack","id":"c-17","from":"t1","ok":true,"result":{"ms":500}}"#,
            r#"{"type":"ack","id":"c-18","from":"t1","ok":false}"#,
            r#"{"type":"accepted","seq":17,"count":1,"seqs":[[17,17]]}"#,
            r#"{"type":"error","code":"invalid_field","message":"field `value` must be a number","id":"c-17"}"#,
            r#"{"type":"error","code":"rate_limited","message":"3 \"readings\" refused"}"#,
        ];
        assert_eq!(built.len(), golden.len());
        for (frame, text) in built.iter().zip(golden) {
            assert_eq!(frame_text(frame), text);
            assert_eq!(frame, &websocket::text(text), "header of {text}");
        }
        let long = error_frame(&ProtoError::new(ErrorCode::InvalidJson, "x".repeat(200)));
        assert_eq!((&long[..4], long.len()), (&[129, 126, 0, 251][..], 255));
    }

    #[test]
    fn frames_are_the_documented_json() {
        let f = reading_frame(&ReadingOut {
            room: "r",
            device: "d",
            metric: "t",
            value: 20.0,
            unit: None,
            ts: 5,
            seq: Some(1),
            offset: 9,
        });
        let v: serde_json::Value = serde_json::from_str(frame_text(&f)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"type":"reading","room":"r","device":"d","metric":"t","value":20.0,"ts":5,"seq":1,"offset":9})
        );
        let c = command_frame("1", "dash", "reboot", None);
        assert_eq!(
            frame_text(&c),
            r#"{"type":"command","id":"1","from":"dash","name":"reboot","args":{}}"#
        );
    }

    #[test]
    fn clients_read_back_what_the_hub_sends() {
        let f = reading_frame(&ReadingOut {
            room: "r",
            device: "d",
            metric: "t",
            value: 20.0,
            unit: Some("C"),
            ts: 5,
            seq: Some(1),
            offset: 9,
        });
        let Ok(ServerMessage::Reading(r)) = ServerMessage::from_json(frame_text(&f)) else {
            panic!("not a reading")
        };
        assert_eq!(
            (r.device.as_ref(), r.unit.as_deref(), r.offset),
            ("d", Some("C"), 9)
        );
    }
}
