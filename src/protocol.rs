//! The wire protocol: identifiers, messages in (parsed and validated here, so nothing
//! downstream sees unchecked input) and messages out (serialised here, once).
//!
//! `docs/PROTOCOL.md` is the reference for every message and error code below.

use std::borrow::Cow;
use std::fmt;

use crate::websocket;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A complete WebSocket text frame (header and JSON), ready for the socket. Server frames
/// are unmasked, so the same bytes serve every recipient: a reading is serialised once and
/// cloning its frame only bumps a reference count.
pub type Frame = bytes::Bytes;

/// Longest room or client id.
pub const MAX_ID_LEN: usize = 64;
/// Longest command id.
pub const MAX_COMMAND_ID_LEN: usize = 128;
/// Longest unit string.
pub const MAX_UNIT_LEN: usize = 32;

/// True for a valid room or client id: 1 to 64 of `A-Za-z0-9_.-`.
pub fn valid_id(s: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// True for a valid metric name: 1 to 64 of `A-Za-z0-9_.-/`.
pub fn valid_metric(s: &str) -> bool {
    (1..=MAX_ID_LEN).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'/'))
}

/// What a connection may do: devices send readings and answer commands, dashboards
/// receive readings and send commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Device,
    Dashboard,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Device => "device",
            Role::Dashboard => "dashboard",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "device" => Some(Role::Device),
            "dashboard" => Some(Role::Dashboard),
            _ => None,
        }
    }
}

/// How a member reaches the hub: its own WebSocket, or bridged from an MQTT broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    Ws,
    Mqtt,
}

/// The stable codes of `{"type":"error"}` frames. Their order is the order of the
/// per-code counters in `metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidJson,
    UnknownType,
    MissingField,
    InvalidField,
    NonFiniteValue,
    WrongRole,
    BinaryNotSupported,
    BatchTooLarge,
    RateLimited,
    UnknownDevice,
    UnknownCommand,
    DuplicateId,
    TooManyPending,
    SeriesLimit,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::InvalidJson,
        ErrorCode::UnknownType,
        ErrorCode::MissingField,
        ErrorCode::InvalidField,
        ErrorCode::NonFiniteValue,
        ErrorCode::WrongRole,
        ErrorCode::BinaryNotSupported,
        ErrorCode::BatchTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::UnknownDevice,
        ErrorCode::UnknownCommand,
        ErrorCode::DuplicateId,
        ErrorCode::TooManyPending,
        ErrorCode::SeriesLimit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::NonFiniteValue => "non_finite_value",
            ErrorCode::WrongRole => "wrong_role",
            ErrorCode::BinaryNotSupported => "binary_not_supported",
            ErrorCode::BatchTooLarge => "batch_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::UnknownDevice => "unknown_device",
            ErrorCode::UnknownCommand => "unknown_command",
            ErrorCode::DuplicateId => "duplicate_id",
            ErrorCode::TooManyPending => "too_many_pending",
            ErrorCode::SeriesLimit => "series_limit",
        }
    }

    /// Position in [`ErrorCode::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A problem with one message (or one item of a batch), reported to its sender.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ProtoError {
    pub code: ErrorCode,
    pub message: String,
    /// The command id the error is about, echoed so a dashboard can match it.
    pub id: Option<String>,
}

impl ProtoError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ProtoError {
        ProtoError {
            code,
            message: message.into(),
            id: None,
        }
    }

    pub fn with_id(mut self, id: &str) -> ProtoError {
        self.id = Some(id.to_string());
        self
    }

    fn missing(field: &str) -> ProtoError {
        ProtoError::new(
            ErrorCode::MissingField,
            format!("field `{field}` is required"),
        )
    }

    fn invalid(field: &str, rule: &str) -> ProtoError {
        ProtoError::new(ErrorCode::InvalidField, format!("field `{field}` {rule}"))
    }

    /// The same error about item `index` of a batch.
    fn in_item(mut self, index: usize) -> ProtoError {
        self.message = format!("items[{index}]: {}", self.message);
        self
    }
}

/// A reading as a device sent it, after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadingIn {
    pub metric: String,
    pub value: f64,
    pub unit: Option<String>,
    /// Epoch milliseconds given by the device, if any.
    pub ts: Option<i64>,
    pub seq: Option<u64>,
}

/// A command from a dashboard, with `args` kept as raw JSON to forward untouched.
#[derive(Debug, Clone)]
pub struct CommandIn {
    pub id: String,
    pub to: String,
    pub name: String,
    pub args: Option<Box<RawValue>>,
}

/// A device's answer to a command.
#[derive(Debug, Clone)]
pub struct AckIn {
    pub id: String,
    pub ok: bool,
    pub result: Option<Box<RawValue>>,
}

/// Any message a client may send.
#[derive(Debug)]
pub enum ClientMessage {
    /// `reading` (one item) or `readings`: every item validated on its own.
    Readings(Vec<Result<ReadingIn, ProtoError>>),
    Command(CommandIn),
    Ack(AckIn),
}

/// Every field any client message may carry, each kept raw so that a wrong type is
/// reported for that field by name instead of as an opaque serde error. Unknown fields
/// are ignored.
#[derive(Deserialize, Default)]
struct Fields<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    metric: Option<&'a RawValue>,
    #[serde(borrow, default)]
    value: Option<&'a RawValue>,
    #[serde(borrow, default)]
    unit: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ts: Option<&'a RawValue>,
    #[serde(borrow, default)]
    seq: Option<&'a RawValue>,
    #[serde(borrow, default)]
    items: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    to: Option<&'a RawValue>,
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    args: Option<&'a RawValue>,
    #[serde(borrow, default)]
    ok: Option<&'a RawValue>,
    #[serde(borrow, default)]
    result: Option<&'a RawValue>,
}

/// Parses one text frame. `max_batch` bounds `readings.items`.
pub fn parse(text: &str, max_batch: usize) -> Result<ClientMessage, ProtoError> {
    let fields: Fields = parse_object(text)?;
    let kind = match fields.kind {
        None => {
            return Err(ProtoError::new(
                ErrorCode::UnknownType,
                "field `type` is required (reading, readings, command or ack)",
            ))
        }
        Some(raw) => serde_json::from_str::<Cow<str>>(raw.get()).map_err(|_| {
            ProtoError::new(ErrorCode::UnknownType, "field `type` must be a string")
        })?,
    };
    match kind.as_ref() {
        "reading" => Ok(ClientMessage::Readings(vec![reading(&fields)])),
        "readings" => {
            let raw = fields.items.ok_or_else(|| ProtoError::missing("items"))?;
            let items: Vec<&RawValue> = serde_json::from_str(raw.get())
                .map_err(|_| ProtoError::invalid("items", "must be an array of readings"))?;
            if items.len() > max_batch {
                return Err(ProtoError::new(
                    ErrorCode::BatchTooLarge,
                    format!(
                        "a batch holds at most {max_batch} readings, this one has {}",
                        items.len()
                    ),
                ));
            }
            let parsed = items
                .iter()
                .enumerate()
                .map(|(i, raw)| {
                    parse_object(raw.get())
                        .and_then(|f| reading(&f))
                        .map_err(|e| e.in_item(i))
                })
                .collect();
            Ok(ClientMessage::Readings(parsed))
        }
        "command" => command(&fields).map(ClientMessage::Command),
        "ack" => ack(&fields).map(ClientMessage::Ack),
        other => Err(ProtoError::new(
            ErrorCode::UnknownType,
            format!(
                "unknown type `{}`; expected reading, readings, command or ack",
                truncate(other, 40)
            ),
        )),
    }
}

fn parse_object(text: &str) -> Result<Fields<'_>, ProtoError> {
    // serde would also read a struct from a JSON array (by position): refuse that first.
    let trimmed = text.trim_start();
    if !trimmed.starts_with('{') {
        let message = if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
            "expected a JSON object"
        } else {
            "malformed JSON: expected a JSON object"
        };
        return Err(ProtoError::new(ErrorCode::InvalidJson, message));
    }
    serde_json::from_str::<Fields>(text).map_err(|e| {
        if e.is_data() {
            ProtoError::new(ErrorCode::InvalidJson, "expected a JSON object")
        } else if text.contains("NaN") || text.contains("Infinity") {
            ProtoError::new(
                ErrorCode::NonFiniteValue,
                "NaN and Infinity are not JSON numbers; values must be finite",
            )
        } else {
            ProtoError::new(ErrorCode::InvalidJson, format!("malformed JSON: {e}"))
        }
    })
}

fn reading(f: &Fields) -> Result<ReadingIn, ProtoError> {
    let metric = string(f.metric, "metric")?.ok_or_else(|| ProtoError::missing("metric"))?;
    if !valid_metric(&metric) {
        return Err(ProtoError::invalid(
            "metric",
            "must be 1 to 64 characters of A-Za-z0-9_.-/",
        ));
    }
    let value = finite(f.value.ok_or_else(|| ProtoError::missing("value"))?)?;
    let unit = string(f.unit, "unit")?;
    if unit.as_ref().is_some_and(|u| u.len() > MAX_UNIT_LEN) {
        return Err(ProtoError::invalid("unit", "must be at most 32 characters"));
    }
    let ts = f.ts.map(timestamp).transpose()?;
    let seq = f
        .seq
        .map(|raw| {
            serde_json::from_str::<u64>(raw.get())
                .map_err(|_| ProtoError::invalid("seq", "must be an unsigned integer"))
        })
        .transpose()?;
    Ok(ReadingIn {
        metric,
        value,
        unit,
        ts,
        seq,
    })
}

fn command(f: &Fields) -> Result<CommandIn, ProtoError> {
    let id = command_id(f)?;
    let to = string(f.to, "to")?
        .ok_or_else(|| ProtoError::missing("to").with_id(&id))?
        .to_string();
    if !valid_id(&to) {
        return Err(
            ProtoError::invalid("to", "must be a client id (1 to 64 of A-Za-z0-9_.-)").with_id(&id),
        );
    }
    let name = string(f.name, "name")
        .map_err(|e| e.with_id(&id))?
        .ok_or_else(|| ProtoError::missing("name").with_id(&id))?;
    if !valid_id(&name) {
        return Err(
            ProtoError::invalid("name", "must be 1 to 64 characters of A-Za-z0-9_.-").with_id(&id),
        );
    }
    Ok(CommandIn {
        id,
        to,
        name,
        args: f.args.map(RawValue::to_owned),
    })
}

fn ack(f: &Fields) -> Result<AckIn, ProtoError> {
    let id = command_id(f)?;
    let ok = match f.ok {
        None => return Err(ProtoError::missing("ok").with_id(&id)),
        Some(raw) => serde_json::from_str::<bool>(raw.get())
            .map_err(|_| ProtoError::invalid("ok", "must be true or false").with_id(&id))?,
    };
    Ok(AckIn {
        id,
        ok,
        result: f.result.map(RawValue::to_owned),
    })
}

fn command_id(f: &Fields) -> Result<String, ProtoError> {
    let id = string(f.id, "id")?.ok_or_else(|| ProtoError::missing("id"))?;
    if id.is_empty() || id.len() > MAX_COMMAND_ID_LEN {
        return Err(ProtoError::invalid("id", "must be 1 to 128 characters"));
    }
    Ok(id)
}

fn string(raw: Option<&RawValue>, field: &str) -> Result<Option<String>, ProtoError> {
    raw.map(|r| {
        serde_json::from_str::<String>(r.get())
            .map_err(|_| ProtoError::invalid(field, "must be a string"))
    })
    .transpose()
}

fn finite(raw: &RawValue) -> Result<f64, ProtoError> {
    let text = raw.get();
    match serde_json::from_str::<f64>(text) {
        Ok(v) if v.is_finite() => Ok(v),
        Ok(_) => Err(non_finite()),
        Err(_) => {
            let lower = text.to_ascii_lowercase();
            let looks_numeric = text.starts_with(|c: char| c == '-' || c.is_ascii_digit());
            if looks_numeric || lower.contains("nan") || lower.contains("inf") {
                Err(non_finite())
            } else {
                Err(ProtoError::invalid("value", "must be a number"))
            }
        }
    }
}

fn non_finite() -> ProtoError {
    ProtoError::new(
        ErrorCode::NonFiniteValue,
        "field `value` must be a finite number",
    )
}

/// Earliest and latest accepted timestamps: 1970 to 9999, in epoch milliseconds.
pub const TS_RANGE: std::ops::RangeInclusive<i64> = 0..=253_402_300_799_999;

fn timestamp(raw: &RawValue) -> Result<i64, ProtoError> {
    let bad = || {
        ProtoError::invalid(
            "ts",
            "must be epoch milliseconds or an RFC 3339 string (years 1970 to 9999)",
        )
    };
    let text = raw.get();
    let ms = if text.starts_with('"') {
        let s: String = serde_json::from_str(text).map_err(|_| bad())?;
        chrono::DateTime::parse_from_rfc3339(&s)
            .map_err(|_| bad())?
            .timestamp_millis()
    } else {
        let v: f64 = serde_json::from_str(text).map_err(|_| bad())?;
        if !v.is_finite() {
            return Err(bad());
        }
        v.round() as i64
    };
    if TS_RANGE.contains(&ms) {
        Ok(ms)
    } else {
        Err(bad())
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

// ---------------------------------------------------------------------------------------
// Messages out. Each is built from borrowed data and serialised straight into a Frame.

/// One member as listed in `welcome` and `/api/rooms`.
#[derive(Debug, Clone, Serialize)]
pub struct MemberInfo<'a> {
    pub client: &'a str,
    pub role: Role,
    pub via: Via,
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Out<'a> {
    Welcome {
        room: &'a str,
        client: &'a str,
        role: Role,
        offset: u64,
        epoch: &'a str,
        members: &'a [MemberInfo<'a>],
        #[serde(skip_serializing_if = "Option::is_none")]
        recovered: Option<bool>,
    },
    Snapshot {
        series: &'a [SnapshotEntry<'a>],
    },
    Presence {
        event: &'a str,
        client: &'a str,
        role: Role,
        via: Via,
    },
    Reading {
        room: &'a str,
        device: &'a str,
        metric: &'a str,
        value: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        unit: Option<&'a str>,
        ts: i64,
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        offset: u64,
    },
    Command {
        id: &'a str,
        from: &'a str,
        name: &'a str,
        args: &'a RawValue,
    },
    Ack {
        id: &'a str,
        from: &'a str,
        ok: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        result: Option<&'a RawValue>,
    },
    Accepted {
        seq: u64,
        count: usize,
    },
    Error {
        code: &'a str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
    },
}

fn frame(msg: &Out) -> Frame {
    // The JSON is written after room for the frame header, which is then filled in
    // front of it: one allocation, no copy.
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

/// The JSON text inside a frame built here (for tests and logs).
pub fn frame_text(frame: &Frame) -> &str {
    let skip = match frame.get(1).map(|b| b & 0x7F) {
        Some(126) => 4,
        Some(127) => 10,
        _ => 2,
    };
    std::str::from_utf8(frame.get(skip..).unwrap_or_default()).unwrap_or_default()
}

/// The first frame of every connection.
#[allow(clippy::too_many_arguments)]
pub fn welcome(
    room: &str,
    client: &str,
    role: Role,
    offset: u64,
    epoch: &str,
    members: &[MemberInfo],
    recovered: Option<bool>,
) -> Frame {
    frame(&Out::Welcome {
        room,
        client,
        role,
        offset,
        epoch,
        members,
        recovered,
    })
}

/// One series' last value in a `snapshot`.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotEntry<'a> {
    pub device: &'a str,
    pub metric: &'a str,
    pub value: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<&'a str>,
    pub ts: i64,
    pub offset: u64,
}

/// A snapshot entry borrowed from a history record.
pub fn snapshot_entry<'a>(e: &crate::history::Replayed<'a>) -> SnapshotEntry<'a> {
    SnapshotEntry {
        device: e.device,
        metric: e.metric,
        value: e.value,
        unit: e.unit,
        ts: e.ts,
        offset: e.offset,
    }
}

/// `snapshot`: the last value of every series of the room (dashboards, after `welcome`).
pub fn snapshot_frame(series: &[SnapshotEntry]) -> Frame {
    frame(&Out::Snapshot { series })
}

/// `presence` with `event` = `join` or `leave`.
pub fn presence(event: &str, client: &str, role: Role, via: Via) -> Frame {
    frame(&Out::Presence {
        event,
        client,
        role,
        via,
    })
}

/// A reading as dashboards receive it.
pub struct ReadingOut<'a> {
    pub room: &'a str,
    pub device: &'a str,
    pub metric: &'a str,
    pub value: f64,
    pub unit: Option<&'a str>,
    pub ts: i64,
    pub seq: Option<u64>,
    pub offset: u64,
}

pub fn reading_frame(r: &ReadingOut) -> Frame {
    frame(&Out::Reading {
        room: r.room,
        device: r.device,
        metric: r.metric,
        value: r.value,
        unit: r.unit,
        ts: r.ts,
        seq: r.seq,
        offset: r.offset,
    })
}

/// `{}`: the args of a command sent without any.
static EMPTY_ARGS: std::sync::LazyLock<Box<RawValue>> = std::sync::LazyLock::new(|| {
    RawValue::from_string("{}".to_string()).expect("`{}` is a JSON object")
});

/// A command as the device receives it.
pub fn command_frame(id: &str, from: &str, name: &str, args: Option<&RawValue>) -> Frame {
    frame(&Out::Command {
        id,
        from,
        name,
        args: args.unwrap_or(&EMPTY_ARGS),
    })
}

/// An ack as the commanding dashboard receives it.
pub fn ack_frame(id: &str, from: &str, ok: bool, result: Option<&RawValue>) -> Frame {
    frame(&Out::Ack {
        id,
        from,
        ok,
        result,
    })
}

/// `accepted`: the readings of a device message up to `seq` are in.
pub fn accepted_frame(seq: u64, count: usize) -> Frame {
    frame(&Out::Accepted { seq, count })
}

pub fn error_frame(e: &ProtoError) -> Frame {
    frame(&Out::Error {
        code: e.code.as_str(),
        message: &e.message,
        id: e.id.as_deref(),
    })
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(text: &str) -> ErrorCode {
        match parse(text, 10) {
            Err(e) => e.code,
            Ok(ClientMessage::Readings(items)) => match items.into_iter().next() {
                Some(Err(e)) => e.code,
                other => panic!("expected an error for {text}, got {other:?}"),
            },
            Ok(other) => panic!("expected an error for {text}, got {other:?}"),
        }
    }

    #[test]
    fn ids() {
        assert!(valid_id("room-1.a_B"));
        assert!(!valid_id(""));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(&"x".repeat(65)));
        assert!(valid_metric("env/temperature"));
        assert!(!valid_metric("temp erature"));
    }

    #[test]
    fn a_full_reading_parses() {
        let msg = parse(
            r#"{"type":"reading","metric":"t","value":21.5,"unit":"C","ts":"2026-01-01T00:00:00Z","seq":7,"extra":1}"#,
            10,
        )
        .unwrap();
        let ClientMessage::Readings(items) = msg else {
            panic!()
        };
        let r = items[0].clone().unwrap();
        assert_eq!(r.value, 21.5);
        assert_eq!(r.ts, Some(1_767_225_600_000));
        assert_eq!(r.seq, Some(7));
    }

    #[test]
    fn every_input_error_has_its_code() {
        assert_eq!(code_of("{not json"), ErrorCode::InvalidJson);
        assert_eq!(code_of("[1,2]"), ErrorCode::InvalidJson);
        assert_eq!(code_of(r#"{"metric":"t"}"#), ErrorCode::UnknownType);
        assert_eq!(code_of(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
        assert_eq!(
            code_of(r#"{"type":"reading","value":1}"#),
            ErrorCode::MissingField
        );
        assert_eq!(
            code_of(r#"{"type":"reading","metric":"t","value":"hot"}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code_of(r#"{"type":"reading","metric":"t","value":NaN}"#),
            ErrorCode::NonFiniteValue
        );
        assert_eq!(
            code_of(r#"{"type":"reading","metric":"t","value":1e400}"#),
            ErrorCode::NonFiniteValue
        );
        assert_eq!(
            code_of(r#"{"type":"reading","metric":"t","value":"Infinity"}"#),
            ErrorCode::NonFiniteValue
        );
        assert_eq!(
            code_of(r#"{"type":"reading","metric":"bad name","value":1}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code_of(r#"{"type":"reading","metric":"t","value":1,"ts":"yesterday"}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code_of(r#"{"type":"reading","metric":"t","value":1,"seq":-1}"#),
            ErrorCode::InvalidField
        );
        let big = format!(
            r#"{{"type":"readings","items":[{}]}}"#,
            [r#"{"metric":"t","value":1}"#; 11].join(",")
        );
        assert_eq!(code_of(&big), ErrorCode::BatchTooLarge);
        assert_eq!(
            code_of(r#"{"type":"command","id":"1","to":"d"}"#),
            ErrorCode::MissingField
        );
        assert_eq!(
            code_of(r#"{"type":"ack","id":"1","ok":"yes"}"#),
            ErrorCode::InvalidField
        );
    }

    #[test]
    fn batch_items_fail_alone() {
        let ClientMessage::Readings(items) = parse(
            r#"{"type":"readings","items":[{"metric":"a","value":1},{"metric":"b"},{"metric":"c","value":2}]}"#,
            10,
        )
        .unwrap() else {
            panic!()
        };
        assert!(items[0].is_ok() && items[2].is_ok());
        let err = items[1].clone().unwrap_err();
        assert_eq!(err.code, ErrorCode::MissingField);
        assert!(err.message.starts_with("items[1]"), "{}", err.message);
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
}
