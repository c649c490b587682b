//! InfluxDB line protocol (`src/sources/influx/line.rs`): every line of the input, as
//! the write endpoints split a body, is parsed.
//!
//! Checks: no panic; an `Ok` has a measurement and at least one field, no empty tag key,
//! tag value or field key, and only finite floats; and writing the parsed line back out
//! with the spec's escapes parses to the same line (where no name holds a backslash,
//! whose meaning before an escapable character the spec leaves open).
#![no_main]

use libfuzzer_sys::fuzz_target;
use telehub::fuzzing::{influx_line, InfluxLine, InfluxValue};

fn escape(s: &str, special: &[char]) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if special.contains(&c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn encode(l: &InfluxLine) -> String {
    let mut out = escape(&l.measurement, &[',', ' ']);
    for (k, v) in &l.tags {
        out.push(',');
        out.push_str(&escape(k, &[',', '=', ' ']));
        out.push('=');
        out.push_str(&escape(v, &[',', '=', ' ']));
    }
    out.push(' ');
    for (i, (k, v)) in l.fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&escape(k, &[',', '=', ' ']));
        out.push('=');
        match v {
            InfluxValue::Float(f) => out.push_str(&format!("{f:?}")),
            InfluxValue::Int(i) => out.push_str(&format!("{i}i")),
            InfluxValue::UInt(u) => out.push_str(&format!("{u}u")),
            InfluxValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            InfluxValue::Str(s) => {
                out.push('"');
                out.push_str(&escape(s, &['"', '\\']));
                out.push('"');
            }
        }
    }
    if let Some(ts) = l.timestamp {
        out.push_str(&format!(" {ts}"));
    }
    out
}

fuzz_target!(|data: &[u8]| {
    for raw in data.split(|&b| b == b'\n') {
        let Ok(text) = std::str::from_utf8(raw) else {
            continue;
        };
        let Ok(line) = influx_line(text) else {
            continue;
        };
        assert!(!line.measurement.is_empty());
        assert!(!line.fields.is_empty());
        assert!(line.tags.iter().all(|(k, v)| !k.is_empty() && !v.is_empty()));
        assert!(line.fields.iter().all(|(k, _)| !k.is_empty()));
        for (_, v) in &line.fields {
            if let InfluxValue::Float(f) = v {
                assert!(f.is_finite());
            }
        }
        let names_plain = !line.measurement.contains('\\')
            && line.tags.iter().all(|(k, v)| !k.contains('\\') && !v.contains('\\'))
            && line.fields.iter().all(|(k, _)| !k.contains('\\'));
        if names_plain {
            let again = encode(&line);
            assert_eq!(
                influx_line(&again).as_ref(),
                Ok(&line),
                "{text:?} was written back as {again:?}"
            );
        }
    }
});
