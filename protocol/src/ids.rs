//! Identifiers and their rules: which room, client and metric names are valid, and the
//! length and range limits of the other fields (`docs/PROTOCOL.md`, "Identifiers").

use std::ops::RangeInclusive;

/// Longest room or client id (and command `name`, and metric name).
pub const MAX_ID_LEN: usize = 64;
/// Longest command id.
pub const MAX_COMMAND_ID_LEN: usize = 128;
/// Longest unit string.
pub const MAX_UNIT_LEN: usize = 32;

/// Earliest and latest accepted timestamps: 1970 to 9999, in epoch milliseconds.
pub const TS_RANGE: RangeInclusive<i64> = 0..=253_402_300_799_999;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        assert!(valid_id("room-1.a_B"));
        assert!(!valid_id(""));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(&"x".repeat(65)));
        assert!(valid_id(&"x".repeat(64)));
        assert!(valid_metric("env/temperature"));
        assert!(!valid_metric("temp erature"));
        assert!(!valid_metric(""));
    }
}
