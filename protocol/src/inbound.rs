//! Client → hub. The hub's side: [`parse`] turns one text frame into a validated
//! [`ClientMessage`] (or a [`ProtoError`] naming the code and the field), so nothing
//! downstream sees unchecked input. The clients' side: [`ToHub`] and the item structs
//! build the same messages, typed, so no client hand-rolls the wire shape.
//!
//! `docs/PROTOCOL.md`, "Client to server", is the reference.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::codes::ErrorCode;
use crate::ids::{valid_id, valid_metric, MAX_COMMAND_ID_LEN, MAX_UNIT_LEN, TS_RANGE};

/// A problem with one message (or one item of a batch), reported to its sender.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ProtoError {
    /// The stable code, sent as `"code"`.
    pub code: ErrorCode,
    /// What was wrong, naming the field (and the batch item), sent as `"message"`.
    pub message: String,
    /// The command id the error is about, echoed so a dashboard can match it.
    pub id: Option<String>,
}

impl ProtoError {
    /// An error with `code` and `message`, about no command.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ProtoError {
        ProtoError {
            code,
            message: message.into(),
            id: None,
        }
    }

    /// The same error about command `id` (echoed so a dashboard can match it).
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
    /// The metric name (valid by [`valid_metric`]).
    pub metric: String,
    /// A finite value.
    pub value: f64,
    /// At most [`MAX_UNIT_LEN`] bytes.
    pub unit: Option<String>,
    /// Epoch milliseconds given by the device, if any.
    pub ts: Option<i64>,
    /// The device's sequence number, for deduplication and `accepted`.
    pub seq: Option<u64>,
}

/// A command from a dashboard, with `args` kept as raw JSON to forward untouched.
#[derive(Debug, Clone)]
pub struct CommandIn {
    /// The dashboard's id for it, 1 to [`MAX_COMMAND_ID_LEN`] bytes.
    pub id: String,
    /// The device it is for (a valid client id).
    pub to: String,
    /// What to do (a valid id).
    pub name: String,
    /// Arguments, any JSON, forwarded untouched.
    pub args: Option<Box<RawValue>>,
}

/// A device's answer to a command.
#[derive(Debug, Clone)]
pub struct AckIn {
    /// The command's id.
    pub id: String,
    /// Whether the device carried it out.
    pub ok: bool,
    /// Anything the device reports, forwarded untouched.
    pub result: Option<Box<RawValue>>,
}

/// Any message a client may send.
#[derive(Debug)]
pub enum ClientMessage {
    /// `reading` (one item) or `readings`: every item validated on its own.
    Readings(Vec<Result<ReadingIn, ProtoError>>),
    /// `command` (dashboards).
    Command(CommandIn),
    /// `ack` (devices).
    Ack(AckIn),
    /// `auth`: a token, as a browser's first frame or as a refresh before `exp`. The
    /// token is kept out of `Debug` so it can never reach a log.
    Auth(AuthIn),
}

/// `{"type":"auth","token":"..."}`: a bearer token sent in a frame (browsers cannot set
/// headers on a WebSocket).
#[derive(Clone)]
pub struct AuthIn {
    /// The token (a JWT), unchecked: the hub verifies it.
    pub token: String,
}

impl std::fmt::Debug for AuthIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthIn")
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Longest token accepted in an `auth` frame, in bytes.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

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
    #[serde(borrow, default)]
    token: Option<&'a RawValue>,
}

/// Parses one text frame. `max_batch` bounds `readings.items`.
pub fn parse(text: &str, max_batch: usize) -> Result<ClientMessage, ProtoError> {
    let fields: Fields = parse_object(text)?;
    let kind = match fields.kind {
        None => {
            return Err(ProtoError::new(
                ErrorCode::UnknownType,
                "field `type` is required (reading, readings, command, ack or auth)",
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
            batch(raw.get(), max_batch).map(ClientMessage::Readings)
        }
        "command" => command(&fields).map(ClientMessage::Command),
        "ack" => ack(&fields).map(ClientMessage::Ack),
        "auth" => auth(&fields).map(ClientMessage::Auth),
        other => Err(ProtoError::new(
            ErrorCode::UnknownType,
            format!(
                "unknown type `{}`; expected reading, readings, command, ack or auth",
                truncate(other, 40)
            ),
        )),
    }
}

/// The body of an HTTP readings post (`POST /api/rooms/{room}/devices/{device}/readings`):
/// one reading object, a JSON array of them, or `{"items":[...]}`; each item is checked
/// as a WebSocket `readings` item is. `max_batch` bounds the items.
pub fn parse_readings_body(
    text: &str,
    max_batch: usize,
) -> Result<Vec<Result<ReadingIn, ProtoError>>, ProtoError> {
    if text.trim_start().starts_with('[') {
        return batch(text, max_batch);
    }
    let fields = parse_object(text)?;
    match fields.items {
        Some(raw) => batch(raw.get(), max_batch),
        None => Ok(vec![reading(&fields)]),
    }
}

/// A JSON array of readings, each validated on its own.
fn batch(text: &str, max_batch: usize) -> Result<Vec<Result<ReadingIn, ProtoError>>, ProtoError> {
    let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| {
        if e.is_data() {
            ProtoError::invalid("items", "must be an array of readings")
        } else {
            ProtoError::new(ErrorCode::InvalidJson, format!("malformed JSON: {e}"))
        }
    })?;
    if items.len() > max_batch {
        return Err(ProtoError::new(
            ErrorCode::BatchTooLarge,
            format!(
                "a batch holds at most {max_batch} readings, this one has {}",
                items.len()
            ),
        ));
    }
    Ok(items
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            parse_object(raw.get())
                .and_then(|f| reading(&f))
                .map_err(|e| e.in_item(i))
        })
        .collect())
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

fn auth(f: &Fields) -> Result<AuthIn, ProtoError> {
    let token = string(f.token, "token")?.ok_or_else(|| ProtoError::missing("token"))?;
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return Err(ProtoError::invalid("token", "must be 1 to 8192 characters"));
    }
    Ok(AuthIn { token })
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
// The clients' side: typed messages to the hub, serialised from borrowed data.

/// A message to the hub as a client builds it. Serialises to exactly the documented JSON
/// (`type` first, optional fields left out when `None`); `V` is the JSON type of command
/// `args` and ack `result` (raw JSON by default, `serde_json::Value` works too).
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToHub<'a, V: ?Sized + Serialize = RawValue> {
    /// One reading (devices).
    Reading(ReadingItem<'a>),
    /// A batch of readings (devices), at most the hub's `limits.max_batch`.
    Readings {
        /// The readings, in order.
        items: &'a [ReadingItem<'a>],
    },
    /// A command for a device (dashboards).
    Command(CommandMsg<'a, V>),
    /// The answer to a command (devices).
    Ack(AckMsg<'a, V>),
    /// A token: a browser's first frame, or a refresh after `token_expiring`.
    Auth {
        /// The token (a JWT).
        token: &'a str,
    },
}

impl<'a> ToHub<'a> {
    /// `reading`: one reading.
    pub fn reading(item: ReadingItem<'a>) -> ToHub<'a> {
        ToHub::Reading(item)
    }

    /// `readings`: a batch.
    pub fn readings(items: &'a [ReadingItem<'a>]) -> ToHub<'a> {
        ToHub::Readings { items }
    }

    /// `auth`: a token.
    pub fn auth(token: &'a str) -> ToHub<'a> {
        ToHub::Auth { token }
    }
}

impl<V: ?Sized + Serialize> ToHub<'_, V> {
    /// The JSON text of this message.
    pub fn to_json(&self) -> String {
        // Plain structs of strings, integers and raw or tree JSON: serialising them can
        // only fail on a non-finite float, which serde_json writes as `null` instead.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// One reading: a `reading` message's fields, or one item of `readings`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ReadingItem<'a> {
    /// The metric name.
    pub metric: &'a str,
    /// A finite value.
    pub value: f64,
    /// The unit, left out when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<&'a str>,
    /// Epoch milliseconds; left out, the hub stamps its receive time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ts: Option<i64>,
    /// Sequence number, for deduplication and `accepted`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

/// A command for device `to` (dashboards).
#[derive(Debug, Clone, Serialize)]
pub struct CommandMsg<'a, V: ?Sized + Serialize = RawValue> {
    /// The dashboard's id for it; the ack echoes it.
    pub id: &'a str,
    /// The device.
    pub to: &'a str,
    /// What to do.
    pub name: &'a str,
    /// Arguments, left out when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub args: Option<&'a V>,
}

/// A device's answer to command `id`. Over MQTT this object alone (no `type`) is the
/// payload of `telehub/{room}/{device}/ack`.
#[derive(Debug, Clone, Serialize)]
pub struct AckMsg<'a, V: ?Sized + Serialize = RawValue> {
    /// The command's id.
    pub id: &'a str,
    /// Whether it was carried out.
    pub ok: bool,
    /// What changed, or why not; left out when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<&'a V>,
}

/// A reading as an MQTT device publishes it on `telehub/{room}/{device}/{metric}` for the
/// hub's bridge (`docs/MQTT.md`, the JSON payload): the metric is in the topic.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MqttReading<'a> {
    /// A finite value.
    pub value: f64,
    /// The unit, left out when `None`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<&'a str>,
    /// Epoch milliseconds.
    pub ts: i64,
    /// Sequence number.
    pub seq: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_bodies_take_three_shapes_checked_like_a_batch() {
        let metrics = |body: &str| -> Vec<Result<String, ErrorCode>> {
            parse_readings_body(body, 2)
                .expect("a body of readings")
                .into_iter()
                .map(|r| r.map(|r| r.metric).map_err(|e| e.code))
                .collect()
        };
        assert_eq!(metrics(r#"{"metric":"a","value":1}"#), [Ok("a".into())]);
        assert_eq!(
            metrics(r#" [{"metric":"a","value":1},{"value":2}]"#),
            [Ok("a".into()), Err(ErrorCode::MissingField)]
        );
        assert_eq!(
            metrics(r#"{"items":[{"metric":"b","value":1}]}"#),
            [Ok("b".into())]
        );
        let code = |body: &str| parse_readings_body(body, 2).map(|_| ()).unwrap_err().code;
        assert_eq!(code("[1,2,3]"), ErrorCode::BatchTooLarge);
        assert_eq!(code("[1,"), ErrorCode::InvalidJson);
        assert_eq!(code("7"), ErrorCode::InvalidJson);
        assert_eq!(code(r#"{"items":{"metric":"a"}}"#), ErrorCode::InvalidField);
    }

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
    fn auth_carries_its_token_and_never_shows_it() {
        let Ok(ClientMessage::Auth(a)) = parse(r#"{"type":"auth","token":"abc.def.ghi"}"#, 10)
        else {
            panic!("not an auth")
        };
        assert_eq!(a.token, "abc.def.ghi");
        assert!(!format!("{a:?}").contains("abc"));
        assert_eq!(code_of(r#"{"type":"auth"}"#), ErrorCode::MissingField);
        assert_eq!(
            code_of(r#"{"type":"auth","token":7}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code_of(r#"{"type":"auth","token":""}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            ToHub::auth("t.k.n").to_json(),
            r#"{"type":"auth","token":"t.k.n"}"#
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
    fn client_messages_are_the_documented_json() {
        let one = ReadingItem {
            metric: "temperature",
            value: 21.5,
            unit: Some("C"),
            ts: Some(1_764_000_000_000),
            seq: Some(17),
        };
        let reading: ToHub = ToHub::Reading(one);
        assert_eq!(
            reading.to_json(),
            r#"{"type":"reading","metric":"temperature","value":21.5,"unit":"C","ts":1764000000000,"seq":17}"#
        );
        let items = [
            ReadingItem {
                metric: "temperature",
                value: 21.5,
                unit: None,
                ts: None,
                seq: None,
            },
            ReadingItem {
                metric: "humidity",
                value: 40.0,
                unit: None,
                ts: None,
                seq: None,
            },
        ];
        let batch: ToHub = ToHub::Readings { items: &items };
        assert_eq!(
            batch.to_json(),
            r#"{"type":"readings","items":[{"metric":"temperature","value":21.5},{"metric":"humidity","value":40.0}]}"#
        );
        let args = RawValue::from_string(r#"{"ms":500}"#.into()).expect("json");
        let command: ToHub = ToHub::Command(CommandMsg {
            id: "c-17",
            to: "t1",
            name: "set_interval",
            args: Some(&args),
        });
        assert_eq!(
            command.to_json(),
            r#"{"type":"command","id":"c-17","to":"t1","name":"set_interval","args":{"ms":500}}"#
        );
        let result = serde_json::json!({"interval_ms": 500});
        let ack = ToHub::Ack(AckMsg {
            id: "c-17",
            ok: true,
            result: Some(&result),
        });
        assert_eq!(
            ack.to_json(),
            r#"{"type":"ack","id":"c-17","ok":true,"result":{"interval_ms":500}}"#
        );
        let mqtt = MqttReading {
            value: 21.5,
            unit: None,
            ts: 1,
            seq: 2,
        };
        assert_eq!(
            serde_json::to_string(&mqtt).ok().as_deref(),
            Some(r#"{"value":21.5,"ts":1,"seq":2}"#)
        );
    }

    #[test]
    fn what_clients_build_the_hub_parses() {
        let items = [ReadingItem {
            metric: "a/b",
            value: -1.25,
            unit: Some("°C \"quoted\""),
            ts: Some(5),
            seq: Some(9),
        }; 3];
        let batch: ToHub = ToHub::Readings { items: &items };
        let ClientMessage::Readings(parsed) = parse(&batch.to_json(), 10).expect("parses") else {
            panic!("not readings")
        };
        assert_eq!(parsed.len(), 3);
        for r in parsed {
            let r = r.expect("valid");
            assert_eq!(
                (r.metric.as_str(), r.value, r.unit.as_deref(), r.ts, r.seq),
                ("a/b", -1.25, Some("°C \"quoted\""), Some(5), Some(9))
            );
        }
        let ack: ToHub = ToHub::Ack(AckMsg {
            id: "x",
            ok: false,
            result: None,
        });
        let Ok(ClientMessage::Ack(a)) = parse(&ack.to_json(), 10) else {
            panic!("not an ack")
        };
        assert_eq!(
            (a.id.as_str(), a.ok, a.result.is_none()),
            ("x", false, true)
        );
    }
}
