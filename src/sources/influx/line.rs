//! The InfluxDB line-protocol parser: one line of text to a [`Line`] (measurement, tags,
//! fields, timestamp), or the reason it is not one ([`LineError`]).
//!
//! The first step of the Influx source ([`super`]): it knows the syntax only, not what a
//! line means to the hub. Written from InfluxDB's published grammar:
//!
//! ```text
//! measurement[,tag=value...] field=value[,field=value...] [timestamp]
//! ```
//!
//! - measurement: `\,` and `\ ` are escapes; it may not be empty nor start with `#` (a
//!   comment line, skipped by the caller);
//! - tag keys, tag values and field keys: `\,`, `\=` and `\ ` are escapes; none may be
//!   empty;
//! - field values: a float (`1`, `-1.5e3`), an integer (`1i`), an unsigned integer
//!   (`1u`), a boolean (`t`, `T`, `true`, `True`, `TRUE` and the `f` forms) or a string
//!   in double quotes, in which `\"` and `\\` are escapes;
//! - the timestamp: a signed integer in the request's precision, or nothing.
//!
//! A backslash before any other character is that backslash. A string field may not hold
//! a raw newline: the caller splits the body on newlines first, so such a line ends in
//! an unterminated string, which is reported as that.

use std::borrow::Cow;

/// One parsed line. Borrowed from the input unless an escape had to be undone.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Line<'a> {
    pub(crate) measurement: Cow<'a, str>,
    pub(crate) tags: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    /// In the order written (a repeated key appears twice; the mapping keeps the last).
    pub(crate) fields: Vec<(Cow<'a, str>, FieldValue<'a>)>,
    /// As written, in the request's precision.
    pub(crate) timestamp: Option<i64>,
}

/// A field's value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum FieldValue<'a> {
    Float(f64),
    Int(i64),
    UInt(u64),
    Bool(bool),
    Str(Cow<'a, str>),
}

/// Why a line is not line protocol. The messages follow InfluxDB's wording where it has
/// one, so a client's log reads the same against either.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LineError {
    #[error("missing measurement")]
    MissingMeasurement,
    #[error("missing fields")]
    MissingFields,
    #[error("missing tag key")]
    MissingTagKey,
    #[error("missing tag value of `{0}`")]
    MissingTagValue(String),
    #[error("missing field key")]
    MissingFieldKey,
    #[error("missing field value of `{0}`")]
    MissingFieldValue(String),
    #[error("invalid field value of `{key}`: `{value}`")]
    InvalidFieldValue { key: String, value: String },
    #[error("unterminated string value of `{0}`")]
    UnterminatedString(String),
    #[error("invalid timestamp `{0}`")]
    InvalidTimestamp(String),
    #[error("the line is not valid UTF-8")]
    InvalidUtf8,
}

/// Parses one line (without its newline; a trailing `\r` is allowed). Blank lines and
/// comments are the caller's to skip ([`is_blank_or_comment`]).
pub(crate) fn parse(line: &str) -> Result<Line<'_>, LineError> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let line = line.trim_start_matches([' ', '\t']);
    let b = line.as_bytes();
    let end = scan(b, 0, b", ");
    if end == 0 {
        return Err(LineError::MissingMeasurement);
    }
    let measurement = unescape(&line[..end], b", ");
    let mut pos = end;
    let mut tags = Vec::new();
    while b.get(pos) == Some(&b',') {
        pos += 1;
        let key_end = scan(b, pos, b"=, ");
        if key_end == pos {
            return Err(LineError::MissingTagKey);
        }
        let key = unescape(&line[pos..key_end], b",= ");
        if b.get(key_end) != Some(&b'=') {
            return Err(LineError::MissingTagValue(key.into_owned()));
        }
        let value_start = key_end + 1;
        let value_end = scan(b, value_start, b", ");
        if value_end == value_start {
            return Err(LineError::MissingTagValue(key.into_owned()));
        }
        tags.push((key, unescape(&line[value_start..value_end], b",= ")));
        pos = value_end;
    }
    pos = skip_spaces(b, pos);
    if pos >= b.len() {
        return Err(LineError::MissingFields);
    }
    let mut fields = Vec::new();
    loop {
        let key_end = scan(b, pos, b"=, ");
        if key_end == pos {
            return Err(LineError::MissingFieldKey);
        }
        let key = unescape(&line[pos..key_end], b",= ");
        if b.get(key_end) != Some(&b'=') {
            return Err(LineError::MissingFieldValue(key.into_owned()));
        }
        let value_start = key_end + 1;
        let (value, value_end) = if b.get(value_start) == Some(&b'"') {
            let close = string_end(b, value_start + 1)
                .ok_or_else(|| LineError::UnterminatedString(key.to_string()))?;
            let raw = &line[value_start + 1..close];
            (FieldValue::Str(unescape(raw, b"\"\\")), close + 1)
        } else {
            let value_end = scan_plain(b, value_start);
            if value_end == value_start {
                return Err(LineError::MissingFieldValue(key.into_owned()));
            }
            let raw = &line[value_start..value_end];
            let value = scalar(raw).ok_or_else(|| LineError::InvalidFieldValue {
                key: key.to_string(),
                value: raw.to_string(),
            })?;
            (value, value_end)
        };
        pos = value_end;
        let more = match b.get(pos) {
            Some(b',') => true,
            Some(b' ') | Some(b'\t') | None => false,
            Some(_) => {
                // Only after a quoted string: `"a"x`.
                return Err(LineError::InvalidFieldValue {
                    key: key.into_owned(),
                    value: line[value_start..].to_string(),
                });
            }
        };
        fields.push((key, value));
        if !more {
            break;
        }
        pos += 1;
    }
    pos = skip_spaces(b, pos);
    let timestamp = if pos >= b.len() {
        None
    } else {
        let raw = line[pos..].trim_end_matches([' ', '\t']);
        let digits = raw.strip_prefix('-').unwrap_or(raw);
        if digits.is_empty() || !digits.bytes().all(|c| c.is_ascii_digit()) {
            return Err(LineError::InvalidTimestamp(raw.to_string()));
        }
        Some(
            raw.parse::<i64>()
                .map_err(|_| LineError::InvalidTimestamp(raw.to_string()))?,
        )
    };
    Ok(Line {
        measurement,
        tags,
        fields,
        timestamp,
    })
}

/// Whether a line carries nothing: empty, only whitespace, or a `#` comment.
pub(crate) fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim_start_matches([' ', '\t', '\r']);
    t.is_empty() || t.starts_with('#')
}

/// The first index at or after `from` of an unescaped byte of `stop`, or the end.
fn scan(b: &[u8], from: usize, stop: &[u8]) -> usize {
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'\\' if i + 1 < b.len() => i += 2,
            c if stop.contains(&c) => return i,
            _ => i += 1,
        }
    }
    b.len()
}

/// The end of an unquoted field value: the next `,`, space or tab (no escapes).
fn scan_plain(b: &[u8], from: usize) -> usize {
    b[from..]
        .iter()
        .position(|c| matches!(c, b',' | b' ' | b'\t'))
        .map_or(b.len(), |p| from + p)
}

/// The index of the `"` that closes a string value whose text starts at `from`.
fn string_end(b: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < b.len() {
        match b[i] {
            b'\\' if i + 1 < b.len() => i += 2,
            b'"' => return Some(i),
            _ => i += 1,
        }
    }
    None
}

fn skip_spaces(b: &[u8], mut pos: usize) -> usize {
    while matches!(b.get(pos), Some(b' ') | Some(b'\t')) {
        pos += 1;
    }
    pos
}

/// `s` with `\c` turned into `c` for every `c` of `escaped`; other backslashes stay.
fn unescape<'a>(s: &'a str, escaped: &[u8]) -> Cow<'a, str> {
    if !s.contains('\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(&next) = chars.peek() {
                if next.is_ascii() && escaped.contains(&(next as u8)) {
                    out.push(next);
                    chars.next();
                    continue;
                }
            }
        }
        out.push(c);
    }
    Cow::Owned(out)
}

/// An unquoted field value: integer, unsigned integer, boolean or float.
fn scalar(raw: &str) -> Option<FieldValue<'static>> {
    match raw {
        "t" | "T" | "true" | "True" | "TRUE" => return Some(FieldValue::Bool(true)),
        "f" | "F" | "false" | "False" | "FALSE" => return Some(FieldValue::Bool(false)),
        _ => {}
    }
    if let Some(n) = raw.strip_suffix('i') {
        return integer_text(n).then(|| n.parse().ok().map(FieldValue::Int))?;
    }
    if let Some(n) = raw.strip_suffix('u') {
        return n
            .bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| n.parse().ok().map(FieldValue::UInt))?;
    }
    // `f64::from_str` also takes `inf`, `NaN` and `infinity`, which InfluxDB does not.
    let numeric = raw
        .bytes()
        .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'-' | b'+' | b'e' | b'E'));
    if !numeric || !raw.bytes().any(|c| c.is_ascii_digit()) {
        return None;
    }
    raw.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite())
        .map(FieldValue::Float)
}

fn integer_text(n: &str) -> bool {
    let digits = n.strip_prefix('-').unwrap_or(n);
    !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Line<'_> {
        parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    fn field<'a>(l: &'a Line, k: &str) -> &'a FieldValue<'a> {
        &l.fields.iter().find(|(key, _)| key == k).expect("field").1
    }

    #[test]
    fn the_plain_forms_parse() {
        let l = ok("cpu,host=a,cpu=cpu0 usage_idle=98.5,usage_user=1 1700000000000000000");
        assert_eq!(l.measurement, "cpu");
        assert_eq!(l.tags.len(), 2);
        assert_eq!((&*l.tags[0].0, &*l.tags[0].1), ("host", "a"));
        assert_eq!(field(&l, "usage_idle"), &FieldValue::Float(98.5));
        assert_eq!(field(&l, "usage_user"), &FieldValue::Float(1.0));
        assert_eq!(l.timestamp, Some(1_700_000_000_000_000_000));
        let l = ok("m v=1");
        assert!(l.tags.is_empty());
        assert_eq!(l.timestamp, None);
        let l = ok("m v=1 -5");
        assert_eq!(l.timestamp, Some(-5));
        // Trailing whitespace and a CR (CRLF bodies) are not a timestamp.
        assert_eq!(ok("m v=1  \r").timestamp, None);
        assert_eq!(ok("  m v=1 7\r").timestamp, Some(7));
    }

    #[test]
    fn every_value_type_parses() {
        let l = ok(r#"m i=-3i,u=7u,f=-1.5e3,b1=t,b2=FALSE,b3=True,s="hi there, \"you\" \\ o/""#);
        assert_eq!(field(&l, "i"), &FieldValue::Int(-3));
        assert_eq!(field(&l, "u"), &FieldValue::UInt(7));
        assert_eq!(field(&l, "f"), &FieldValue::Float(-1500.0));
        assert_eq!(field(&l, "b1"), &FieldValue::Bool(true));
        assert_eq!(field(&l, "b2"), &FieldValue::Bool(false));
        assert_eq!(field(&l, "b3"), &FieldValue::Bool(true));
        assert_eq!(
            field(&l, "s"),
            &FieldValue::Str(r#"hi there, "you" \ o/"#.into())
        );
        // A string may hold `=`, spaces and commas, and an empty string is a value.
        let l = ok(r#"m s="a=b c,d",e="" 12"#);
        assert_eq!(field(&l, "s"), &FieldValue::Str("a=b c,d".into()));
        assert_eq!(field(&l, "e"), &FieldValue::Str("".into()));
        assert_eq!(l.timestamp, Some(12));
    }

    #[test]
    fn escapes_are_undone_where_the_spec_has_them() {
        let l = ok(r"my\ meas\,ure,tag\ key=tag\,val\=ue,t2=a\b field\=key=1");
        assert_eq!(l.measurement, "my meas,ure");
        assert_eq!((&*l.tags[0].0, &*l.tags[0].1), ("tag key", "tag,val=ue"));
        // A backslash before anything else is itself.
        assert_eq!(&*l.tags[1].1, r"a\b");
        assert_eq!(l.fields[0].0, "field=key");
        // `=` needs no escape in a measurement.
        assert_eq!(ok("a=b v=1").measurement, "a=b");
        // Non-ASCII text passes through.
        assert_eq!(ok("température,pièce=séjour v=1").tags[0].1, "séjour");
    }

    #[test]
    fn bad_lines_say_what_is_wrong() {
        let cases: &[(&str, LineError)] = &[
            ("", LineError::MissingMeasurement),
            (",t=1 v=1", LineError::MissingMeasurement),
            (" v=1", LineError::MissingFields),
            ("m", LineError::MissingFields),
            ("m,t=1", LineError::MissingFields),
            ("m ", LineError::MissingFields),
            ("m,=1 v=1", LineError::MissingTagKey),
            ("m,t v=1", LineError::MissingTagValue("t".into())),
            ("m,t= v=1", LineError::MissingTagValue("t".into())),
            ("m =1", LineError::MissingFieldKey),
            ("m v", LineError::MissingFieldValue("v".into())),
            ("m v=", LineError::MissingFieldValue("v".into())),
            ("m v=1,", LineError::MissingFieldKey),
            ("m v=\"abc", LineError::UnterminatedString("v".into())),
            ("m v=\"abc\\\"", LineError::UnterminatedString("v".into())),
            ("m v=1 12x", LineError::InvalidTimestamp("12x".into())),
            ("m v=1 1 2", LineError::InvalidTimestamp("1 2".into())),
            ("m v=1 -", LineError::InvalidTimestamp("-".into())),
            (
                "m v=1 99999999999999999999",
                LineError::InvalidTimestamp("99999999999999999999".into()),
            ),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line).as_ref().err(), Some(want), "{line:?}");
        }
        for bad in [
            "abc", "1.2.3", "inf", "NaN", "infinity", "-", "1e999", "12ii", "-1u", "1.5i", "truE",
            "0x10", "1_000",
        ] {
            let line = format!("m v={bad}");
            assert!(
                matches!(parse(&line), Err(LineError::InvalidFieldValue { .. })),
                "{line:?} parsed as {:?}",
                parse(&line)
            );
        }
        assert!(matches!(
            parse(r#"m v="a"x=1"#),
            Err(LineError::InvalidFieldValue { .. })
        ));
        // Integers past their type's range are refused, not wrapped.
        assert!(parse("m v=9223372036854775808i").is_err());
        assert!(parse("m v=18446744073709551616u").is_err());
        assert_eq!(
            field(&ok("m v=18446744073709551615u"), "v"),
            &FieldValue::UInt(u64::MAX)
        );
    }

    #[test]
    fn blank_and_comment_lines_are_recognised() {
        for l in ["", "   ", "\r", "# a comment", "  # indented"] {
            assert!(is_blank_or_comment(l), "{l:?}");
        }
        assert!(!is_blank_or_comment("m v=1"));
    }

    mod props {
        //! Lines written with the spec's escapes parse back to what was written: the
        //! property the fuzz target `influx_line` checks, run here on every test run.
        use super::super::*;
        use proptest::prelude::*;

        fn escape(s: &str, special: &[char]) -> String {
            let mut out = String::new();
            for c in s.chars() {
                if special.contains(&c) {
                    out.push('\\');
                }
                out.push(c);
            }
            out
        }

        /// Names with the characters that need escapes (no backslash: the spec leaves a
        /// backslash before an escapable character open), not starting with a space.
        fn name() -> impl Strategy<Value = String> {
            "[a-zA-Zé_][a-zA-Z0-9é_ ,=\"#.-]{0,12}"
        }

        #[derive(Debug, Clone)]
        enum V {
            F(f64),
            I(i64),
            U(u64),
            B(bool),
            S(String),
        }

        fn value() -> impl Strategy<Value = V> {
            prop_oneof![
                (-1e300f64..1e300).prop_map(V::F),
                any::<i64>().prop_map(V::I),
                any::<u64>().prop_map(V::U),
                any::<bool>().prop_map(V::B),
                "[a-z \\\\\",=é]{0,12}".prop_map(V::S),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            #[test]
            fn written_lines_parse_back(
                measurement in name(),
                tags in proptest::collection::vec((name(), name()), 0..4),
                fields in proptest::collection::vec((name(), value()), 1..5),
                ts in proptest::option::of(any::<i64>()),
            ) {
                let mut text = escape(&measurement, &[',', ' ']);
                for (k, v) in &tags {
                    text += &format!(",{}={}", escape(k, &[',', '=', ' ']), escape(v, &[',', '=', ' ']));
                }
                text.push(' ');
                let written: Vec<String> = fields.iter().map(|(k, v)| {
                    let v = match v {
                        V::F(f) => format!("{f:?}"),
                        V::I(i) => format!("{i}i"),
                        V::U(u) => format!("{u}u"),
                        V::B(b) => b.to_string(),
                        V::S(s) => format!("\"{}\"", escape(s, &['"', '\\'])),
                    };
                    format!("{}={v}", escape(k, &[',', '=', ' ']))
                }).collect();
                text += &written.join(",");
                if let Some(ts) = ts {
                    text += &format!(" {ts}");
                }
                let l = parse(&text).map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
                prop_assert_eq!(&*l.measurement, measurement.as_str());
                let got: Vec<(String, String)> = l.tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
                prop_assert_eq!(got, tags);
                prop_assert_eq!(l.fields.len(), fields.len());
                for ((k, got), (key, want)) in l.fields.iter().zip(&fields) {
                    prop_assert_eq!(&**k, key.as_str());
                    let same = match (got, want) {
                        (FieldValue::Float(a), V::F(b)) => a == b,
                        (FieldValue::Int(a), V::I(b)) => a == b,
                        (FieldValue::UInt(a), V::U(b)) => a == b,
                        (FieldValue::Bool(a), V::B(b)) => a == b,
                        (FieldValue::Str(a), V::S(b)) => a == b,
                        _ => false,
                    };
                    prop_assert!(same, "{:?} read as {:?} in {:?}", want, got, text);
                }
                prop_assert_eq!(l.timestamp, ts);
            }
        }
    }
}
