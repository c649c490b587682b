//! Payloads: the bytes of one MQTT message turned into readings.
//!
//! Four shapes are understood, chosen per topic mapping (`format`) or detected (`auto`):
//!
//! | format    | payload                                                          | detected when             |
//! | --------- | ---------------------------------------------------------------- | ------------------------- |
//! | `number`  | `21.5` (text; surrounding whitespace allowed)                    | the payload is a number   |
//! | `reading` | `{"value":21.5,"unit":"C","ts":...,"seq":17,"metric"?:...}`      | an object with `value`    |
//! | `object`  | `{"temperature":21.5,"humidity":40,"ts"?:...,"seq"?:...}`        | any other object          |
//! | `senml`   | RFC 8428 SenML JSON: `[{"bn":"dev1/","bt":1.7e9,"n":"t","v":21}]` | an array                  |
//!
//! **Timestamps.** A number is taken as epoch *seconds* when its magnitude is below
//! 10^11 (10^11 s is the year 5138, 10^11 ms is March 1973), else epoch *milliseconds*;
//! fractions are kept to the millisecond. A string must be RFC 3339. SenML times follow
//! the RFC: seconds, `bt + t`, and a resolved time below 2^28 is relative to now. A
//! payload without a timestamp gets none here: the hub stamps its receive time.
//!
//! **Flat objects.** Every numeric field is a metric named after the field; `ts`, `time`
//! and `timestamp` are the timestamp of all of them, `seq` their sequence number, and
//! fields of any other type (strings, booleans, nested objects) are skipped. When the
//! topic also names a metric, it prefixes the field: `{metric}/{field}`.
//!
//! **SenML.** Base fields (`bn`, `bt`, `bu`, `bv`) apply to the records after them. The
//! base name identifies the device and the record name the metric: with `bn` =
//! `"urn:dev:ow:10e2073a01080063:"` and `n` = `"temp"`, the device is `10e2073a01080063`
//! (the last non-empty `:` or `/` separated part of `bn`, used only when the topic names
//! no device) and the metric `temp`. Records with a string, boolean or data value are
//! skipped.

use serde_json::{Map, Value};

/// The payload shape of a topic mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PayloadFormat {
    /// Detect the shape of each message (see the module docs).
    #[default]
    Auto,
    /// A bare number.
    Number,
    /// A JSON reading object with `value`.
    Reading,
    /// A flat JSON object of metrics.
    Object,
    /// SenML JSON (RFC 8428).
    Senml,
}

/// One reading read from a payload, before the topic's room/device/metric are applied.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Item {
    /// The metric the payload names (a flat object's field, a SenML name, a reading
    /// object's `metric`); `None` when the topic must give it.
    pub metric: Option<String>,
    /// A device the payload names (SenML base name); the topic's device wins.
    pub device: Option<String>,
    pub value: f64,
    pub unit: Option<String>,
    /// Epoch milliseconds, when the payload carried a time.
    pub ts: Option<i64>,
    pub seq: Option<u64>,
}

/// Why a payload could not be read. Displayed in the (rate-limited) log with its topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PayloadError {
    #[error("payload is not valid UTF-8")]
    NotUtf8,
    #[error("payload is empty")]
    Empty,
    #[error("payload is not a number")]
    NotANumber,
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    #[error("value is not finite")]
    NonFinite,
    #[error("expected {expected}, got {got}")]
    Shape {
        expected: &'static str,
        got: &'static str,
    },
    #[error("field `{field}` {problem}")]
    Field { field: String, problem: String },
    #[error("no numeric value in the payload")]
    NoValue,
}

fn field_err(field: &str, problem: impl Into<String>) -> PayloadError {
    PayloadError::Field {
        field: field.to_string(),
        problem: problem.into(),
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Epoch seconds below this magnitude, milliseconds at or above it.
pub(crate) const SECONDS_BELOW: f64 = 1e11;
/// SenML: a resolved time below 2^28 seconds is relative to now (RFC 8428 section 4.5.3).
const SENML_RELATIVE_BELOW: f64 = 268_435_456.0;

/// Epoch seconds or milliseconds (by magnitude) to epoch milliseconds.
pub(crate) fn epoch_number_to_ms(x: f64) -> Option<i64> {
    if !x.is_finite() {
        return None;
    }
    let ms = if x.abs() < SECONDS_BELOW {
        x * 1000.0
    } else {
        x
    };
    // Beyond about ±285,000 years: not a time anyone means.
    if ms.abs() > 8.64e18 {
        return None;
    }
    Some(ms.round() as i64)
}

/// A timestamp field: a number (seconds or ms by magnitude) or an RFC 3339 string.
fn timestamp(field: &str, v: &Value) -> Result<i64, PayloadError> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .and_then(epoch_number_to_ms)
            .ok_or_else(|| field_err(field, "is not a usable epoch time")),
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp_millis())
            .map_err(|e| field_err(field, format!("is not RFC 3339 ({e})"))),
        other => Err(field_err(
            field,
            format!(
                "must be epoch seconds/milliseconds or RFC 3339, got {}",
                kind_of(other)
            ),
        )),
    }
}

fn finite(field: &str, v: &Value) -> Result<f64, PayloadError> {
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(x) if x.is_finite() => Ok(x),
            _ => Err(PayloadError::NonFinite),
        },
        other => Err(field_err(
            field,
            format!("must be a number, got {}", kind_of(other)),
        )),
    }
}

fn opt_string(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, PayloadError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(field_err(
            field,
            format!("must be a string, got {}", kind_of(other)),
        )),
    }
}

fn opt_seq(obj: &Map<String, Value>) -> Result<Option<u64>, PayloadError> {
    match obj.get("seq") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_u64()
            .map(Some)
            .ok_or_else(|| field_err("seq", "must be an unsigned integer")),
        Some(other) => Err(field_err(
            "seq",
            format!("must be an unsigned integer, got {}", kind_of(other)),
        )),
    }
}

/// Reads one payload. `now_ms` resolves SenML relative times. An `Ok` always holds at
/// least one item.
pub(crate) fn decode(
    payload: &[u8],
    format: PayloadFormat,
    now_ms: i64,
) -> Result<Vec<Item>, PayloadError> {
    let text = std::str::from_utf8(payload).map_err(|_| PayloadError::NotUtf8)?;
    let text = text.trim();
    if text.is_empty() {
        return Err(PayloadError::Empty);
    }
    if format == PayloadFormat::Number {
        return number(text).map(|i| vec![i]);
    }
    let json: Value = match serde_json::from_str(text) {
        Ok(v) => v,
        // `auto`: a text number that JSON refuses (`+5`, `.5`, `5.`) is still a number.
        Err(e) => {
            return match number(text) {
                Ok(i) if format == PayloadFormat::Auto => Ok(vec![i]),
                Err(PayloadError::NonFinite) if format == PayloadFormat::Auto => {
                    Err(PayloadError::NonFinite)
                }
                _ => Err(PayloadError::NotJson(e.to_string())),
            }
        }
    };
    match (format, json) {
        (PayloadFormat::Auto, Value::Number(n)) => {
            let v = n.as_f64().filter(|x| x.is_finite());
            let value = v.ok_or(PayloadError::NonFinite)?;
            Ok(vec![bare(value)])
        }
        (PayloadFormat::Auto, Value::Object(o)) if o.contains_key("value") => {
            reading(&o).map(|i| vec![i])
        }
        (PayloadFormat::Auto, Value::Object(o)) => object(&o),
        (PayloadFormat::Auto | PayloadFormat::Senml, Value::Array(a)) => senml(&a, now_ms),
        (PayloadFormat::Reading, Value::Object(o)) => reading(&o).map(|i| vec![i]),
        (PayloadFormat::Object, Value::Object(o)) => object(&o),
        (PayloadFormat::Auto, other) => Err(PayloadError::Shape {
            expected: "a number, a JSON object or a SenML array",
            got: kind_of(&other),
        }),
        (PayloadFormat::Reading | PayloadFormat::Object, other) => Err(PayloadError::Shape {
            expected: "a JSON object",
            got: kind_of(&other),
        }),
        (PayloadFormat::Senml, other) => Err(PayloadError::Shape {
            expected: "a SenML array",
            got: kind_of(&other),
        }),
        (PayloadFormat::Number, _) => unreachable_number(),
    }
}

/// `Number` returned early above; kept as a function so the match stays exhaustive
/// without a panic path.
fn unreachable_number() -> Result<Vec<Item>, PayloadError> {
    Err(PayloadError::NotANumber)
}

fn bare(value: f64) -> Item {
    Item {
        metric: None,
        device: None,
        value,
        unit: None,
        ts: None,
        seq: None,
    }
}

fn number(text: &str) -> Result<Item, PayloadError> {
    let value: f64 = text.parse().map_err(|_| PayloadError::NotANumber)?;
    if !value.is_finite() {
        return Err(PayloadError::NonFinite);
    }
    Ok(bare(value))
}

fn reading(o: &Map<String, Value>) -> Result<Item, PayloadError> {
    let value = match o.get("value") {
        Some(v) => finite("value", v)?,
        None => return Err(field_err("value", "is required")),
    };
    let ts = match o.get("ts") {
        None | Some(Value::Null) => None,
        Some(v) => Some(timestamp("ts", v)?),
    };
    Ok(Item {
        metric: opt_string(o, "metric")?,
        device: None,
        value,
        unit: opt_string(o, "unit")?,
        ts,
        seq: opt_seq(o)?,
    })
}

/// Fields of a flat object that are about all metrics, not metrics themselves.
const OBJECT_TIME_FIELDS: [&str; 3] = ["ts", "time", "timestamp"];

fn object(o: &Map<String, Value>) -> Result<Vec<Item>, PayloadError> {
    let mut ts = None;
    for f in OBJECT_TIME_FIELDS {
        if let Some(v) = o.get(f).filter(|v| !v.is_null()) {
            ts = Some(timestamp(f, v)?);
            break;
        }
    }
    let seq = opt_seq(o)?;
    let mut items = Vec::new();
    for (name, v) in o {
        if OBJECT_TIME_FIELDS.contains(&name.as_str()) || name == "seq" {
            continue;
        }
        let Value::Number(n) = v else { continue };
        let value = n
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or(PayloadError::NonFinite)?;
        items.push(Item {
            metric: Some(name.clone()),
            device: None,
            value,
            unit: None,
            ts,
            seq,
        });
    }
    if items.is_empty() {
        return Err(PayloadError::NoValue);
    }
    Ok(items)
}

/// The device a SenML base name stands for: its last non-empty `:`/`/` part.
fn device_of_base_name(bn: &str) -> Option<String> {
    bn.split([':', '/'])
        .rfind(|p| !p.is_empty())
        .map(str::to_string)
}

fn senml(records: &[Value], now_ms: i64) -> Result<Vec<Item>, PayloadError> {
    let mut bn: Option<String> = None;
    let mut bt = 0.0_f64;
    let mut bu: Option<String> = None;
    let mut bv = 0.0_f64;
    let mut items = Vec::new();
    for (i, rec) in records.iter().enumerate() {
        let Value::Object(r) = rec else {
            return Err(PayloadError::Shape {
                expected: "SenML records (JSON objects)",
                got: kind_of(rec),
            });
        };
        let at = |f: &str| format!("[{i}].{f}");
        if let Some(v) = r.get("bn") {
            bn = Some(
                v.as_str()
                    .ok_or_else(|| field_err(&at("bn"), "must be a string"))?
                    .to_string(),
            );
        }
        if let Some(v) = r.get("bt") {
            bt = finite(&at("bt"), v)?;
        }
        if let Some(v) = r.get("bu") {
            bu = Some(
                v.as_str()
                    .ok_or_else(|| field_err(&at("bu"), "must be a string"))?
                    .to_string(),
            );
        }
        if let Some(v) = r.get("bv") {
            bv = finite(&at("bv"), v)?;
        }
        let value = match r.get("v") {
            Some(v) => finite(&at("v"), v)? + bv,
            // String, boolean and data values have no place in a numeric series.
            None if r.contains_key("vs") || r.contains_key("vb") || r.contains_key("vd") => {
                continue
            }
            // A record that only sets base fields.
            None if !r.contains_key("n") && !r.contains_key("s") => continue,
            None => match r.get("s") {
                Some(s) => finite(&at("s"), s)?,
                None => return Err(field_err(&at("v"), "is required")),
            },
        };
        if !value.is_finite() {
            return Err(PayloadError::NonFinite);
        }
        let t = match r.get("t") {
            Some(v) => finite(&at("t"), v)?,
            None => 0.0,
        };
        let time = bt + t;
        let ts = if time == 0.0 {
            None
        } else if time.abs() < SENML_RELATIVE_BELOW {
            Some(now_ms + (time * 1000.0).round() as i64)
        } else {
            let ms = time * 1000.0;
            if !ms.is_finite() || ms.abs() > 8.64e18 {
                return Err(field_err(&at("t"), "is not a usable time"));
            }
            Some(ms.round() as i64)
        };
        let n = match r.get("n") {
            None => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(field_err(&at("n"), "must be a string")),
        };
        let unit = match r.get("u") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(field_err(&at("u"), "must be a string")),
            None => bu.clone(),
        };
        items.push(Item {
            metric: n,
            device: bn.as_deref().and_then(device_of_base_name),
            value,
            unit,
            ts,
            seq: None,
        });
    }
    if items.is_empty() {
        return Err(PayloadError::NoValue);
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_000_000_000;

    fn one(payload: &str, format: PayloadFormat) -> Item {
        let mut v = decode(payload.as_bytes(), format, NOW).expect(payload);
        assert_eq!(v.len(), 1, "{payload}");
        v.remove(0)
    }

    #[test]
    fn bare_numbers() {
        assert_eq!(one("21.5", PayloadFormat::Auto).value, 21.5);
        assert_eq!(one(" -3\n", PayloadFormat::Auto).value, -3.0);
        assert_eq!(one("+5", PayloadFormat::Auto).value, 5.0);
        assert_eq!(one("1e3", PayloadFormat::Number).value, 1000.0);
        let i = one("7", PayloadFormat::Number);
        assert_eq!((i.metric, i.ts, i.seq), (None, None, None));
        assert_eq!(
            decode(b"NaN", PayloadFormat::Auto, NOW),
            Err(PayloadError::NonFinite)
        );
        assert_eq!(
            decode(b"inf", PayloadFormat::Number, NOW),
            Err(PayloadError::NonFinite)
        );
        assert_eq!(
            decode(b"warm", PayloadFormat::Number, NOW),
            Err(PayloadError::NotANumber)
        );
        assert_eq!(
            decode(b"", PayloadFormat::Auto, NOW),
            Err(PayloadError::Empty)
        );
        assert_eq!(
            decode(&[0xff, 0xfe], PayloadFormat::Auto, NOW),
            Err(PayloadError::NotUtf8)
        );
        assert!(matches!(
            decode(b"{oops", PayloadFormat::Auto, NOW),
            Err(PayloadError::NotJson(_))
        ));
    }

    #[test]
    fn reading_objects() {
        let i = one(
            r#"{"value":21.5,"unit":"C","ts":1764000000123,"seq":17}"#,
            PayloadFormat::Auto,
        );
        assert_eq!(i.value, 21.5);
        assert_eq!(i.unit.as_deref(), Some("C"));
        assert_eq!(i.ts, Some(1_764_000_000_123));
        assert_eq!(i.seq, Some(17));
        assert_eq!(i.metric, None);
        let i = one(
            r#"{"value":1,"metric":"rpm","extra":true}"#,
            PayloadFormat::Reading,
        );
        assert_eq!(i.metric.as_deref(), Some("rpm"));
        assert_eq!(i.ts, None);
        for (bad, needle) in [
            (r#"{"value":"x"}"#, "value"),
            (r#"{"value":1,"seq":-1}"#, "seq"),
            (r#"{"value":1,"unit":3}"#, "unit"),
            (r#"{"value":1,"ts":true}"#, "ts"),
            (r#"{"value":1,"ts":"yesterday"}"#, "RFC 3339"),
        ] {
            let e = decode(bad.as_bytes(), PayloadFormat::Auto, NOW)
                .expect_err(bad)
                .to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
        let e = decode(br#"{"unit":"C"}"#, PayloadFormat::Reading, NOW).unwrap_err();
        assert!(e.to_string().contains("`value` is required"), "{e}");
        assert!(matches!(
            decode(b"[1]", PayloadFormat::Reading, NOW),
            Err(PayloadError::Shape { .. })
        ));
    }

    #[test]
    fn timestamps_seconds_millis_and_rfc3339() {
        let ts = |p: &str| one(p, PayloadFormat::Auto).ts;
        assert_eq!(
            ts(r#"{"value":1,"ts":1764000000}"#),
            Some(1_764_000_000_000)
        );
        assert_eq!(
            ts(r#"{"value":1,"ts":1764000000.25}"#),
            Some(1_764_000_000_250)
        );
        assert_eq!(
            ts(r#"{"value":1,"ts":1764000000000}"#),
            Some(1_764_000_000_000)
        );
        assert_eq!(
            ts(r#"{"value":1,"ts":"2025-11-24T16:00:00.5+01:00"}"#),
            Some(1_763_996_400_500)
        );
        assert_eq!(
            epoch_number_to_ms(99_999_999_999.0),
            Some(99_999_999_999_000)
        );
        assert_eq!(epoch_number_to_ms(100_000_000_000.0), Some(100_000_000_000));
        assert_eq!(epoch_number_to_ms(f64::NAN), None);
    }

    #[test]
    fn flat_objects() {
        let mut v = decode(
            br#"{"temperature":21.5,"humidity":40,"name":"x","on":true,"ts":1764000000,"seq":3}"#,
            PayloadFormat::Auto,
            NOW,
        )
        .expect("decodes");
        v.sort_by(|a, b| a.metric.cmp(&b.metric));
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].metric.as_deref(), Some("humidity"));
        assert_eq!(v[0].value, 40.0);
        assert_eq!(v[1].metric.as_deref(), Some("temperature"));
        assert!(v
            .iter()
            .all(|i| i.ts == Some(1_764_000_000_000) && i.seq == Some(3)));
        let v = decode(
            br#"{"t":1,"time":"2025-11-24T15:00:00Z"}"#,
            PayloadFormat::Object,
            NOW,
        )
        .expect("decodes");
        assert_eq!(v[0].ts, Some(1_763_996_400_000));
        assert_eq!(
            decode(br#"{"state":"on"}"#, PayloadFormat::Auto, NOW),
            Err(PayloadError::NoValue)
        );
        assert!(matches!(
            decode(b"5", PayloadFormat::Object, NOW),
            Err(PayloadError::Shape { .. })
        ));
    }

    #[test]
    fn senml_resolves_names_times_and_units() {
        // RFC 8428 section 5.1.2-style pack with base name, base time and base unit.
        let pack = r#"[
            {"bn":"urn:dev:ow:10e2073a01080063:","bt":1.320067464e9,"bu":"%RH","v":20},
            {"u":"lon","v":24.30621},
            {"n":"temp","u":"Cel","t":60,"v":23.1},
            {"n":"switch","vb":true},
            {"n":"label","vs":"kitchen"}
        ]"#;
        let v = decode(pack.as_bytes(), PayloadFormat::Auto, NOW).expect("decodes");
        assert_eq!(v.len(), 3);
        assert!(v
            .iter()
            .all(|i| i.device.as_deref() == Some("10e2073a01080063")));
        assert_eq!(v[0].metric, None);
        assert_eq!(v[0].unit.as_deref(), Some("%RH"));
        assert_eq!(v[0].ts, Some(1_320_067_464_000));
        assert_eq!(v[1].unit.as_deref(), Some("lon"));
        assert_eq!(v[2].metric.as_deref(), Some("temp"));
        assert_eq!(v[2].unit.as_deref(), Some("Cel"));
        assert_eq!(v[2].ts, Some(1_320_067_524_000));
        assert_eq!(v[2].value, 23.1);
    }

    #[test]
    fn senml_relative_time_base_value_and_errors() {
        let v = decode(
            br#"[{"bn":"dev7/","bv":100,"n":"a","v":1,"t":-5},{"n":"b","v":2}]"#,
            PayloadFormat::Senml,
            NOW,
        )
        .expect("decodes");
        assert_eq!(v[0].value, 101.0);
        assert_eq!(v[0].ts, Some(NOW - 5_000));
        assert_eq!(v[0].device.as_deref(), Some("dev7"));
        assert_eq!(v[1].ts, None, "no time: the hub stamps it");
        for (bad, needle) in [
            (r#"[{"n":"a","v":"x"}]"#, "[0].v"),
            (r#"[{"n":"a"}]"#, "[0].v` is required"),
            (r#"[{"bn":5,"v":1}]"#, "[0].bn"),
            (r#"[1]"#, "SenML records"),
            (r#"[{"n":"a","vs":"x"}]"#, "no numeric value"),
        ] {
            let e = decode(bad.as_bytes(), PayloadFormat::Senml, NOW)
                .expect_err(bad)
                .to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
        assert!(matches!(
            decode(br#"{"v":1}"#, PayloadFormat::Senml, NOW),
            Err(PayloadError::Shape { .. })
        ));
    }
}
