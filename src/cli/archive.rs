//! `telehub export` and `telehub import`: the command-line side (flags, time bounds,
//! stdin/stdout); the work is `telehub::history::{export, import}`.

use std::io::Write;

use anyhow::Context;
use telehub::history::ArchiveFormat;

/// `csv` or `jsonl`.
pub(crate) fn format(s: &str) -> anyhow::Result<ArchiveFormat> {
    match s {
        "csv" => Ok(ArchiveFormat::Csv),
        "jsonl" => Ok(ArchiveFormat::Jsonl),
        other => anyhow::bail!("--format must be csv or jsonl, not `{other}`"),
    }
}

/// A time bound: epoch milliseconds, RFC 3339, or a duration back from now (`-30d`,
/// `-1h`; `y` is 365 days).
pub(crate) fn bound(s: &str, now_ms: i64) -> anyhow::Result<i64> {
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    if let Some(back) = s.strip_prefix('-') {
        let ago = match back.strip_suffix('y') {
            Some(years) => years
                .parse::<u64>()
                .ok()
                .and_then(|y| y.checked_mul(365 * 86_400))
                .map(std::time::Duration::from_secs),
            None => super::token::parse_ttl(back),
        };
        if let Some(ago) = ago {
            let ms = i64::try_from(ago.as_millis()).unwrap_or(i64::MAX);
            return Ok(now_ms.saturating_sub(ms));
        }
    }
    anyhow::bail!("`{s}` is not epoch milliseconds, RFC 3339, or a window such as -30d")
}

/// Writes the export to stdout; says how many rows on stderr.
pub(crate) fn export(
    data_dir: &std::path::Path,
    room: &str,
    from: Option<&str>,
    to: Option<&str>,
    format: &str,
) -> anyhow::Result<()> {
    let now = chrono::Utc::now().timestamp_millis();
    let from = from.map(|s| bound(s, now)).transpose().context("--from")?;
    let to = to.map(|s| bound(s, now)).transpose().context("--to")?;
    let format = self::format(format)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let n = telehub::history::export(data_dir, room, from, to, format, &mut out)?;
    out.flush()?;
    eprintln!("exported {n} reading(s) of room `{room}`");
    Ok(())
}

/// Reads an archive from stdin into the database.
pub(crate) fn import(data_dir: &std::path::Path, format: &str, force: bool) -> anyhow::Result<()> {
    let format = self::format(format)?;
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let (imported, skipped) = telehub::history::import(data_dir, format, &mut input, force)?;
    eprintln!("imported {imported} reading(s), skipped {skipped} already held");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::bound;

    #[test]
    fn bounds_parse() {
        let now = 1_000_000_000_000;
        assert_eq!(bound("1700000000000", now).unwrap(), 1_700_000_000_000);
        assert_eq!(
            bound("2023-11-14T22:13:20Z", now).unwrap(),
            1_700_000_000_000
        );
        assert_eq!(bound("-1h", now).unwrap(), now - 3_600_000);
        assert_eq!(bound("-30d", now).unwrap(), now - 30 * 86_400_000);
        assert_eq!(bound("-1y", now).unwrap(), now - 365 * 86_400_000);
        assert!(bound("soon", now).is_err());
    }
}
