//! History queries over the raw rows on disk, for the part of a window that memory no
//! longer holds (`memory_ms` back from now): the same [`QueryResult`] the memory rings
//! answer, read through a read-only connection of the query's own (WAL: beside the
//! writer), so the REST history reaches as far back as `retention_ms`; and past that,
//! from the rollup tiers ([`query_rollup`]).

use std::path::Path;
use std::sync::Arc;

use rusqlite::{params, Connection, OpenFlags};

use super::rollup::Tier;
use super::DB_FILE;
use crate::sinks::history::query::{BucketRow, PointRow};
use crate::sinks::history::{Query, QueryResult};

/// Answers `q` for `room` from the rows with `from <= ts < before`; points (or buckets
/// aligned to multiples of `step`) ordered by `ts`, then device and metric, the newest
/// `q.limit` of them.
pub(crate) fn query_rows(
    data_dir: &Path,
    room: &str,
    q: &Query,
    before: i64,
) -> rusqlite::Result<QueryResult> {
    let conn =
        Connection::open_with_flags(data_dir.join(DB_FILE), OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let from = q.from.unwrap_or(i64::MIN);
    let to = q.to.map_or(before, |t| t.saturating_add(1).min(before));
    let limit = i64::try_from(q.limit).unwrap_or(i64::MAX);
    // `?4 IS NULL OR device = ?4`: one statement whatever the filters.
    let filters = "room = ?1 AND ts >= ?2 AND ts < ?3 AND (?4 IS NULL OR device = ?4)
                   AND (?5 IS NULL OR metric = ?5)";
    let args = params![room, from, to, q.device, q.metric, limit];
    let mut keys: std::collections::HashMap<(String, String), (Arc<str>, Arc<str>)> =
        std::collections::HashMap::new();
    let mut key = |d: String, m: String| {
        keys.entry((d, m))
            .or_insert_with_key(|(d, m)| (Arc::from(d.as_str()), Arc::from(m.as_str())))
            .clone()
    };
    match q.step {
        None => {
            let mut stmt = conn.prepare(&format!(
                "SELECT device, metric, ts, value FROM readings WHERE {filters}
                 ORDER BY ts DESC, device DESC, metric DESC LIMIT ?6"
            ))?;
            let mut rows = stmt.query(args)?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let (device, metric) = key(r.get(0)?, r.get(1)?);
                out.push(PointRow {
                    device,
                    metric,
                    ts: r.get(2)?,
                    value: r.get(3)?,
                });
            }
            out.reverse();
            Ok(QueryResult::Points(out))
        }
        Some(step) => {
            let step = step.max(1);
            let mut stmt = conn.prepare(&format!(
                "SELECT device, metric, (ts / ?7) * ?7 AS b, min(value), max(value), avg(value),
                        count(*)
                 FROM readings WHERE {filters}
                 GROUP BY device, metric, b ORDER BY b DESC, device DESC, metric DESC LIMIT ?6"
            ))?;
            let mut rows = stmt.query(params![room, from, to, q.device, q.metric, limit, step])?;
            let mut out = Vec::new();
            while let Some(r) = rows.next()? {
                let (device, metric) = key(r.get(0)?, r.get(1)?);
                out.push(BucketRow {
                    device,
                    metric,
                    ts: r.get(2)?,
                    min: r.get(3)?,
                    max: r.get(4)?,
                    mean: r.get(5)?,
                    count: r.get::<_, i64>(6)? as u64,
                });
            }
            out.reverse();
            Ok(QueryResult::Buckets(out))
        }
    }
}

/// Answers `q` for `room` from rollup tier `tier`, in buckets of `step` (a multiple of
/// the tier's step): see [`super::rollup::query`].
pub(crate) fn query_rollup(
    data_dir: &Path,
    tier: &Tier,
    room: &str,
    q: &Query,
    step: i64,
) -> rusqlite::Result<Vec<BucketRow>> {
    let conn =
        Connection::open_with_flags(data_dir.join(DB_FILE), OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    super::rollup::query(&conn, tier, room, q, step)
}
