//! Rollup tiers (`[[history.rollups]]`): per-series buckets of min, max, sum, count and
//! last value at a coarser step than the raw rows, kept longer, in the same SQLite file.
//!
//! The store's writer feeds every committed reading through [`Rollups::add`] inside the
//! batch's transaction: the batch is first summed in memory per (tier, series, bucket),
//! then written with one UPSERT per bucket ([`Rollups::write`]), so a flush of a dense
//! stream costs one statement per series and tier, and nothing is ever rescanned. A late
//! reading (old `ts`) lands in its own bucket; one older than a tier's retention is not
//! added to that tier. The raw rows' retention does not touch the tiers, so readings past
//! it still count in the tiers that reach that far. Each tier's own retention deletes
//! old buckets series by series in small statements ([`Rollups::enforce_retention`]).
//!
//! Tables: `series(id, room, device, metric)` names each series once, and
//! `rollup_<step ms>(series, bucket, count, sum, min, max, last, last_at)` per tier,
//! keyed by (series, bucket index = ts / step) `WITHOUT ROWID`: the key is the table, no
//! second index. `last_at` is the last value's time within the bucket (ms since its
//! start), so a late reading does not overwrite a newer `last`.
//!
//! Queries ([`query`]) read one descending range per series and merge them newest first,
//! re-bucketing to the asked step, so a query reads about as many rows as it answers.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use rusqlite::{params, Connection, Statement};

use crate::config::HistoryConfig;
use crate::sinks::history::query::BucketRow;
use crate::sinks::history::Query;

/// Series ids the writer remembers at most; past it the map starts over (a lookup costs
/// one indexed SELECT), so a file with endless series cannot grow the writer's memory.
const SERIES_CACHE: usize = 100_000;

/// Buckets deleted per statement by a tier's retention pass.
const RETENTION_BATCH: i64 = 2_000;

/// One configured tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tier {
    /// Bucket width in ms.
    pub(crate) step: i64,
    /// How long buckets are kept, in ms.
    pub(crate) retention: i64,
    /// Its name in answers (`"resolution": "1m"`).
    pub(crate) name: String,
    /// Its table, `rollup_<step>`.
    table: String,
    /// Its UPSERT of one bucket.
    upsert: String,
}

impl Tier {
    fn new(step: i64, retention: i64) -> Tier {
        let table = format!("rollup_{step}");
        Tier {
            step,
            retention,
            name: step_name(step),
            upsert: format!(
                "INSERT INTO {table} (series, bucket, count, sum, min, max, last, last_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (series, bucket) DO UPDATE SET
                   count = count + excluded.count,
                   sum = sum + excluded.sum,
                   min = min(min, excluded.min),
                   max = max(max, excluded.max),
                   last = CASE WHEN excluded.last_at >= last_at THEN excluded.last ELSE last END,
                   last_at = max(last_at, excluded.last_at)"
            ),
            table,
        }
    }
}

/// The tiers of `config` (validated: steps increasing, each a multiple of the previous).
pub(crate) fn tiers(config: &HistoryConfig) -> Vec<Tier> {
    config
        .rollups
        .iter()
        .filter_map(|r| Some(Tier::new(r.step_ms()?, r.retention_ms()?)))
        .collect()
}

/// The tiers a database file has tables for, finest first, or the default tiers if it
/// has none yet (for `telehub import`, which runs without the hub's configuration). Their
/// retention is not known here: nothing is left out, the hub's retention pass trims.
pub(crate) fn tiers_in_file(conn: &Connection) -> rusqlite::Result<Vec<Tier>> {
    let mut stmt = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'rollup^_%' ESCAPE '^'",
    )?;
    let mut steps: Vec<i64> = stmt
        .query_map([], |r| r.get::<_, String>(0))?
        .filter_map(|name| name.ok()?.strip_prefix("rollup_")?.parse().ok())
        .collect();
    steps.sort_unstable();
    if steps.is_empty() {
        return Ok(tiers(&HistoryConfig::default()));
    }
    Ok(steps
        .into_iter()
        .map(|s| Tier::new(s, i64::MAX / 4))
        .collect())
}

/// `60000` -> `"1m"`, `3600000` -> `"1h"`, `90000` -> `"90s"`.
pub(crate) fn step_name(ms: i64) -> String {
    for (unit, scale) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms % scale == 0 {
            return format!("{}{unit}", ms / scale);
        }
    }
    format!("{ms}ms")
}

/// Creates the series table and each tier's table if missing.
pub(crate) fn create(conn: &Connection, tiers: &[Tier]) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS series (
             id INTEGER PRIMARY KEY,
             room TEXT NOT NULL,
             device TEXT NOT NULL,
             metric TEXT NOT NULL,
             UNIQUE (room, device, metric)
         );",
    )?;
    for t in tiers {
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {} (
                 series INTEGER NOT NULL,
                 bucket INTEGER NOT NULL,
                 count INTEGER NOT NULL,
                 sum REAL NOT NULL,
                 min REAL NOT NULL,
                 max REAL NOT NULL,
                 last REAL NOT NULL,
                 last_at INTEGER NOT NULL,
                 PRIMARY KEY (series, bucket)
             ) WITHOUT ROWID;",
            t.table
        ))?;
    }
    Ok(())
}

/// One bucket being summed.
#[derive(Debug, Clone, Copy)]
struct Agg {
    count: i64,
    sum: f64,
    min: f64,
    max: f64,
    last: f64,
    last_at: i64,
}

impl Agg {
    fn add(&mut self, value: f64, at: i64) {
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        if at >= self.last_at {
            self.last = value;
            self.last_at = at;
        }
    }
}

/// A series by name: (room, device, metric).
pub(crate) type SeriesName = (Arc<str>, Arc<str>, Arc<str>);

/// The writer's side: the tiers, the series ids it has looked up, and the buckets of the
/// batch being written.
pub(crate) struct Rollups {
    tiers: Vec<Tier>,
    ids: HashMap<SeriesName, i64>,
    pending: HashMap<(usize, i64, i64), Agg>,
    /// Per tier, the series id the retention pass goes on from.
    cursor: Vec<i64>,
}

impl Rollups {
    pub(crate) fn new(tiers: Vec<Tier>) -> Rollups {
        Rollups {
            cursor: vec![0; tiers.len()],
            tiers,
            ids: HashMap::new(),
            pending: HashMap::new(),
        }
    }

    /// Forgets what a failed transaction may have left half-done (ids of series rows that
    /// were rolled back, buckets not written).
    pub(crate) fn rolled_back(&mut self) {
        self.ids.clear();
        self.pending.clear();
    }

    fn series_id(&mut self, conn: &Connection, key: &SeriesName) -> rusqlite::Result<i64> {
        if let Some(id) = self.ids.get(key) {
            return Ok(*id);
        }
        let (room, device, metric) = key;
        let mut find = conn.prepare_cached(
            "SELECT id FROM series WHERE room = ?1 AND device = ?2 AND metric = ?3",
        )?;
        let found: Option<i64> = find
            .query_row(params![&**room, &**device, &**metric], |r| r.get(0))
            .map(Some)
            .or_else(|e| match e {
                rusqlite::Error::QueryReturnedNoRows => Ok(None),
                e => Err(e),
            })?;
        let id = match found {
            Some(id) => id,
            None => {
                conn.prepare_cached(
                    "INSERT INTO series (room, device, metric) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![&**room, &**device, &**metric])?;
                conn.last_insert_rowid()
            }
        };
        if self.ids.len() >= SERIES_CACHE {
            self.ids.clear();
        }
        self.ids.insert(key.clone(), id);
        Ok(id)
    }

    /// Adds one reading to the batch's buckets of every tier that still keeps its time.
    pub(crate) fn add(
        &mut self,
        conn: &Connection,
        series: &SeriesName,
        ts: i64,
        value: f64,
        now: i64,
    ) -> rusqlite::Result<()> {
        if self.tiers.is_empty() || !value.is_finite() {
            return Ok(());
        }
        let mut id = None;
        for i in 0..self.tiers.len() {
            let (step, retention) = (self.tiers[i].step, self.tiers[i].retention);
            let bucket = ts.div_euclid(step);
            if (bucket + 1).saturating_mul(step) <= now.saturating_sub(retention) {
                continue;
            }
            let series = match id {
                Some(s) => s,
                None => *id.insert(self.series_id(conn, series)?),
            };
            let at = ts - bucket * step;
            self.pending
                .entry((i, series, bucket))
                .and_modify(|a| a.add(value, at))
                .or_insert(Agg {
                    count: 1,
                    sum: value,
                    min: value,
                    max: value,
                    last: value,
                    last_at: at,
                });
        }
        Ok(())
    }

    /// Writes the batch's buckets, one UPSERT each.
    pub(crate) fn write(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        for ((tier, series, bucket), a) in self.pending.drain() {
            let mut upsert = conn.prepare_cached(&self.tiers[tier].upsert)?;
            upsert.execute(params![
                series, bucket, a.count, a.sum, a.min, a.max, a.last, a.last_at
            ])?;
        }
        Ok(())
    }

    /// A room starts a new epoch: its buckets (written and pending) belong to a lost
    /// history and go with its raw rows.
    pub(crate) fn clear_room(&mut self, conn: &Connection, room: &str) -> rusqlite::Result<()> {
        self.write(conn)?;
        for t in &self.tiers {
            conn.prepare_cached(&format!(
                "DELETE FROM {} WHERE series IN (SELECT id FROM series WHERE room = ?1)",
                t.table
            ))?
            .execute(params![room])?;
        }
        Ok(())
    }

    /// Deletes buckets past each tier's retention, series by series in statements of at
    /// most [`RETENTION_BATCH`] rows; stops early when `busy()` says records wait (the
    /// next pass goes on from the same series). Returns the buckets deleted.
    pub(crate) fn enforce_retention(
        &mut self,
        conn: &Connection,
        now: i64,
        busy: &dyn Fn() -> bool,
    ) -> rusqlite::Result<usize> {
        let mut total = 0;
        for (i, t) in self.tiers.iter().enumerate() {
            let cutoff = now.saturating_sub(t.retention).div_euclid(t.step);
            let mut ids =
                conn.prepare_cached("SELECT id FROM series WHERE id > ?1 ORDER BY id LIMIT 256")?;
            let mut delete = conn.prepare_cached(&format!(
                "DELETE FROM {0} WHERE series = ?1 AND bucket IN
                   (SELECT bucket FROM {0} WHERE series = ?1 AND bucket < ?2 LIMIT ?3)",
                t.table
            ))?;
            loop {
                let chunk: Vec<i64> = ids
                    .query_map(params![self.cursor[i]], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                if chunk.is_empty() {
                    self.cursor[i] = 0;
                    break;
                }
                for id in chunk {
                    loop {
                        let n = delete.execute(params![id, cutoff, RETENTION_BATCH])?;
                        total += n;
                        if (n as i64) < RETENTION_BATCH {
                            break;
                        }
                        if busy() {
                            return Ok(total);
                        }
                    }
                    self.cursor[i] = id;
                    if busy() {
                        return Ok(total);
                    }
                }
            }
        }
        Ok(total)
    }
}

/// The tier a history query is answered from: the coarsest whose step divides `step`
/// (so its buckets add up exactly to the asked ones).
pub(crate) fn tier_for_step(tiers: &[Tier], step: i64) -> Option<&Tier> {
    tiers
        .iter()
        .rev()
        .find(|t| t.step <= step && step % t.step == 0)
}

/// When a query gives no step: about `points` buckets per series over `span` ms, from
/// the coarsest tier that still gives at least half that many (fewer rows to read: a
/// `-30d` window is answered from the 1h tier's 720 buckets, not re-bucketed from 43,200
/// minutes); the step is the tier's, or a whole multiple of it when the tier gives more
/// than `points`. `None` when even the finest tier gives too few (the raw rows answer).
pub(crate) fn auto_step(tiers: &[Tier], span: i64, points: i64) -> Option<(&Tier, i64)> {
    let points = points.max(1);
    let least = (points / 2).max(1);
    let t = tiers.iter().rev().find(|t| span / t.step >= least)?;
    let target = span / points;
    Some((t, (target / t.step).max(1) * t.step))
}

/// One series' buckets, newest first, re-bucketed to the answer's step.
struct Cursor<'s> {
    rows: rusqlite::Rows<'s>,
    device: Arc<str>,
    metric: Arc<str>,
    /// The next output bucket, ready.
    head: Option<BucketRow>,
    /// A row read past the bucket being built: the start of the next.
    carry: Option<(i64, BucketRow)>,
}

impl Cursor<'_> {
    /// Reads the next (older) output bucket into `head`.
    fn advance(&mut self, tier_step: i64, step: i64) -> rusqlite::Result<()> {
        let mut current = self.carry.take();
        while let Some(r) = self.rows.next()? {
            let bucket: i64 = r.get(0)?;
            let b = (bucket * tier_step).div_euclid(step) * step;
            let row = BucketRow {
                device: self.device.clone(),
                metric: self.metric.clone(),
                ts: b,
                count: r.get::<_, i64>(1)? as u64,
                // The sum until the bucket is done.
                mean: r.get(2)?,
                min: r.get(3)?,
                max: r.get(4)?,
            };
            match &mut current {
                Some((cb, c)) if *cb == b => {
                    c.count += row.count;
                    c.mean += row.mean;
                    c.min = c.min.min(row.min);
                    c.max = c.max.max(row.max);
                }
                Some(_) => {
                    self.carry = Some((b, row));
                    break;
                }
                None => current = Some((b, row)),
            }
        }
        self.head = current.map(|(_, mut c)| {
            c.mean /= c.count.max(1) as f64;
            c
        });
        Ok(())
    }
}

/// Heap order: newest bucket first, then device and metric descending (reversed at the
/// end into the order every history answer has: ts, device, metric ascending).
struct Head(i64, Arc<str>, Arc<str>, usize);

impl PartialEq for Head {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Head {}
impl PartialOrd for Head {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Head {
    fn cmp(&self, o: &Self) -> Ordering {
        (self.0, &self.1, &self.2).cmp(&(o.0, &o.1, &o.2))
    }
}

/// The buckets of `room`'s series matching `q` (device, metric) from tier `tier`,
/// re-bucketed to `step` (a multiple of the tier's), covering whole buckets from the one
/// holding `q.from` to the one holding `q.to` (or the newest); the newest `q.limit`,
/// oldest first.
pub(crate) fn query(
    conn: &Connection,
    tier: &Tier,
    room: &str,
    q: &Query,
    step: i64,
) -> rusqlite::Result<Vec<BucketRow>> {
    let from = q.from.unwrap_or(0).div_euclid(step) * step;
    // No `to`: readings ahead of the clock (within `limits.max_future_ms`) too.
    let to = q.to.unwrap_or(i64::MAX);
    let lo = from.div_euclid(tier.step);
    let hi = to.div_euclid(tier.step);
    let mut series = conn.prepare(
        "SELECT id, device, metric FROM series WHERE room = ?1
         AND (?2 IS NULL OR device = ?2) AND (?3 IS NULL OR metric = ?3)",
    )?;
    let found: Vec<(i64, Arc<str>, Arc<str>)> = series
        .query_map(params![room, q.device, q.metric], |r| {
            Ok((
                r.get(0)?,
                Arc::from(r.get::<_, String>(1)?),
                Arc::from(r.get::<_, String>(2)?),
            ))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let sql = format!(
        "SELECT bucket, count, sum, min, max FROM {} WHERE series = ?1 AND bucket >= ?2
         AND bucket <= ?3 ORDER BY bucket DESC",
        tier.table
    );
    let mut stmts: Vec<Statement> = found
        .iter()
        .map(|_| conn.prepare(&sql))
        .collect::<rusqlite::Result<_>>()?;
    let mut cursors = Vec::with_capacity(found.len());
    for (stmt, (id, device, metric)) in stmts.iter_mut().zip(found) {
        cursors.push(Cursor {
            rows: stmt.query(params![id, lo, hi])?,
            device,
            metric,
            head: None,
            carry: None,
        });
    }
    let mut heap = BinaryHeap::with_capacity(cursors.len());
    for (i, c) in cursors.iter_mut().enumerate() {
        c.advance(tier.step, step)?;
        if let Some(h) = &c.head {
            heap.push(Head(h.ts, h.device.clone(), h.metric.clone(), i));
        }
    }
    let mut out = Vec::new();
    while out.len() < q.limit {
        let Some(Head(_, _, _, i)) = heap.pop() else {
            break;
        };
        let c = &mut cursors[i];
        if let Some(h) = c.head.take() {
            out.push(h);
        }
        c.advance(tier.step, step)?;
        if let Some(h) = &c.head {
            heap.push(Head(h.ts, h.device.clone(), h.metric.clone(), i));
        }
    }
    out.reverse();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiers() -> Vec<Tier> {
        vec![
            Tier::new(60_000, 90 * 86_400_000),
            Tier::new(3_600_000, 730 * 86_400_000),
        ]
    }

    #[test]
    fn names_and_tier_choice() {
        assert_eq!(step_name(60_000), "1m");
        assert_eq!(step_name(3_600_000), "1h");
        assert_eq!(step_name(90_000), "90s");
        let t = tiers();
        assert_eq!(tier_for_step(&t, 60_000).map(|t| t.step), Some(60_000));
        assert_eq!(
            tier_for_step(&t, 7_200_000).map(|t| t.step),
            Some(3_600_000)
        );
        assert_eq!(tier_for_step(&t, 90_000), None);
        assert_eq!(tier_for_step(&t, 30_000), None);
        let year = 365 * 86_400_000;
        let (tier, step) = auto_step(&t, year, 1_000).unwrap();
        assert_eq!((tier.step, step), (3_600_000, 8 * 3_600_000));
        // 720 hours are over half the target: the coarser tier, at its own step.
        let (tier, step) = auto_step(&t, 30 * 86_400_000, 1_000).unwrap();
        assert_eq!((tier.step, step), (3_600_000, 3_600_000));
        // 480 hours are not; 20 days of minutes, in 28-minute buckets, are.
        let (tier, step) = auto_step(&t, 20 * 86_400_000, 1_000).unwrap();
        assert_eq!((tier.step, step), (60_000, 28 * 60_000));
        let (tier, step) = auto_step(&t, 86_400_000, 1_000).unwrap();
        assert_eq!((tier.step, step), (60_000, 60_000));
        assert!(auto_step(&t, 3_600_000, 1_000).is_none());
        assert!(auto_step(&t, 8 * 3_600_000, 1_000).is_none(), "480 minutes");
    }

    #[test]
    fn late_readings_update_their_bucket_and_queries_rebucket() {
        let conn = Connection::open_in_memory().unwrap();
        let t = tiers();
        create(&conn, &t).unwrap();
        let mut r = Rollups::new(t.clone());
        let name: SeriesName = (Arc::from("r"), Arc::from("d"), Arc::from("m"));
        let now = 1_000 * 86_400_000;
        let base = now - 86_400_000; // a day ago, on a whole hour
                                     // Two batches; the second holds a late reading for the first minute.
        for (ts, v) in [(base, 1.0), (base + 1_000, 5.0), (base + 61_000, 3.0)] {
            r.add(&conn, &name, ts, v, now).unwrap();
        }
        r.write(&conn).unwrap();
        r.add(&conn, &name, base + 500, -2.0, now).unwrap();
        // Older than the 1m tier keeps (90 d) but within the 1h tier's 730 d.
        r.add(&conn, &name, now - 400 * 86_400_000, 7.0, now)
            .unwrap();
        r.write(&conn).unwrap();
        let q = Query {
            from: Some(base - 60_000),
            ..Query::default()
        };
        let minutes = query(&conn, &t[0], "r", &q, 60_000).unwrap();
        let got: Vec<_> = minutes
            .iter()
            .map(|b| (b.ts, b.count, b.min, b.max, b.mean))
            .collect();
        assert_eq!(
            got,
            [
                (base, 3, -2.0, 5.0, 4.0 / 3.0),
                (base + 60_000, 1, 3.0, 3.0, 3.0)
            ]
        );
        let last: f64 = conn
            .query_row(
                "SELECT last FROM rollup_60000 WHERE bucket = ?1",
                [base / 60_000],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(
            last, 5.0,
            "a late reading does not replace a newer last value"
        );
        let all = Query {
            from: Some(0),
            ..Query::default()
        };
        let hours = query(&conn, &t[1], "r", &all, 2 * 3_600_000).unwrap();
        assert_eq!(hours.len(), 2);
        assert_eq!((hours[0].count, hours[1].count), (1, 4));
        let old_minutes = query(&conn, &t[0], "r", &all, 60_000).unwrap();
        assert_eq!(
            old_minutes.len(),
            2,
            "past the 1m tier's retention: not added"
        );
        // Limit: the newest bucket only.
        let one = Query {
            from: Some(0),
            limit: 1,
            ..Query::default()
        };
        assert_eq!(
            query(&conn, &t[0], "r", &one, 60_000).unwrap()[0].ts,
            base + 60_000
        );
        // Retention removes what is past it.
        let later = now + 90 * 86_400_000;
        let deleted = r.enforce_retention(&conn, later, &|| false).unwrap();
        assert_eq!(deleted, 2);
    }
}
