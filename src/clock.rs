//! The hub's clock and the time words users type: `now_ms`, fresh room epochs, and the
//! durations (`15m`) and times (`-1h`, RFC 3339, epoch ms) of queries and config.
//!
//! Shared by every stage; depends on nothing else in the crate.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

/// The wall clock in epoch milliseconds.
pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A fresh epoch: 8 base-36 characters from the process's random hasher keys and the
/// clock, so one life of a room's offsets is told from the next.
pub(crate) fn new_epoch() -> Arc<str> {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    let mut n = h.finish();
    let mut s = String::with_capacity(8);
    for _ in 0..8 {
        let d = (n % 36) as u32;
        s.push(char::from_digit(d, 36).unwrap_or('0'));
        n /= 36;
    }
    s.into()
}

/// Parses a duration such as `500ms`, `30s`, `15m`, `1h`, `2d` or `1w` into milliseconds
/// (at least 1 ms, at most 10 years).
pub(crate) fn parse_duration(s: &str) -> Option<i64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: i64 = num.parse().ok()?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 604_800_000,
        // A year of 365 days (`-1y` as a window).
        "y" => 31_536_000_000,
        _ => return None,
    };
    let ms = n.checked_mul(scale)?;
    (1..=315_576_000_000).contains(&ms).then_some(ms)
}

/// Parses a `from`/`to` value: epoch milliseconds, RFC 3339, or `-15m` (relative to
/// `now`).
pub(crate) fn parse_time(s: &str, now: i64) -> Option<i64> {
    let s = s.trim();
    if let Some(rel) = s.strip_prefix('-') {
        if rel.starts_with(|c: char| c.is_ascii_digit()) {
            if let Some(d) = parse_duration(rel) {
                return Some(now - d);
            }
        }
    }
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times_parse() {
        assert_eq!(parse_duration("15m"), Some(900_000));
        assert_eq!(parse_duration("500ms"), Some(500));
        assert_eq!(parse_duration("2d"), Some(172_800_000));
        assert_eq!(parse_duration("1y"), Some(365 * 86_400_000));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("m"), None);
        assert_eq!(parse_duration("5x"), None);
        assert_eq!(parse_duration("99999999999999w"), None);
        assert_eq!(parse_time("-15m", 1_000_000), Some(100_000));
        assert_eq!(parse_time("1764000000000", 0), Some(1_764_000_000_000));
        assert_eq!(
            parse_time("2026-01-01T00:00:00Z", 0),
            Some(1_767_225_600_000)
        );
        assert_eq!(parse_time("yesterday", 0), None);
        assert_eq!(parse_time("-", 0), None);
    }

    #[test]
    fn epochs_differ() {
        assert_ne!(new_epoch(), new_epoch());
        assert_eq!(new_epoch().len(), 8);
    }
}
