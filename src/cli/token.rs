//! `telehub token`'s `--ttl`: a duration such as `30s`, `15m`, `1h`, `7d`.

use std::time::Duration;

/// `N` followed by `s`, `m`, `h` or `d`; `None` for anything else, or zero.
pub(crate) fn parse_ttl(s: &str) -> Option<Duration> {
    let unit = s.chars().last()?;
    let n: u64 = s[..s.len() - unit.len_utf8()].parse().ok()?;
    let secs = match unit {
        's' => n,
        'm' => n.checked_mul(60)?,
        'h' => n.checked_mul(3_600)?,
        'd' => n.checked_mul(86_400)?,
        _ => return None,
    };
    (secs > 0).then(|| Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::parse_ttl;
    use std::time::Duration;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_ttl("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_ttl("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("7d"), Some(Duration::from_secs(7 * 86_400)));
        for bad in ["", "h", "0s", "1w", "-1h", "1.5h", "1 h"] {
            assert_eq!(parse_ttl(bad), None, "{bad}");
        }
    }
}
