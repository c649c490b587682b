//! MQTT payloads (`src/sources/mqtt/payload.rs`): every input is decoded with each
//! `PayloadFormat` (auto, number, reading object, flat object, SenML).
//!
//! Checks: no panic; an `Ok` holds at least one reading, every value is finite and every
//! timestamp within the range the decoder promises; `auto` agrees with the explicit format
//! for the shape it detects (a JSON array is SenML, an object with `value` is a reading,
//! another object a flat object).
#![no_main]

use libfuzzer_sys::fuzz_target;
use telehub::fuzzing::{mqtt_payload, PayloadFormat};

const NOW_MS: i64 = 1_764_000_000_000;

const FORMATS: [PayloadFormat; 5] = [
    PayloadFormat::Auto,
    PayloadFormat::Number,
    PayloadFormat::Reading,
    PayloadFormat::Object,
    PayloadFormat::Senml,
];

fuzz_target!(|data: &[u8]| {
    let results: Vec<_> = FORMATS
        .iter()
        .map(|&f| mqtt_payload(data, f, NOW_MS))
        .collect();
    for items in results.iter().flatten() {
        assert!(!items.is_empty(), "Ok without a reading");
        for i in items {
            assert!(i.value.is_finite());
            assert!(i
                .ts
                .is_none_or(|t| t.unsigned_abs() <= 8_640_000_000_000_000_000));
        }
    }
    // What `auto` detects, it decodes exactly as the explicit format would.
    let trimmed = std::str::from_utf8(data).map(str::trim).unwrap_or("");
    let auto = &results[0];
    if trimmed.starts_with('[') {
        assert_eq!(auto, &results[4], "auto and senml disagree on an array");
    } else if trimmed.starts_with('{') && auto.is_ok() {
        assert!(
            auto == &results[2] || auto == &results[3],
            "auto matches neither the reading nor the flat object decoding"
        );
    }
});
