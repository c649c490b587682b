//! `telehub export` and `telehub import`: a room's stored history as CSV or JSON lines,
//! read from and written to the database file directly (for backups and for moving a
//! hub), one row per reading: `room,device,metric,unit,ts,value,seq`.
//!
//! Export reads through a read-only connection, so it works beside a running hub (WAL).
//! Import writes, so it refuses a file a hub has open (the `clean` mark is `0` while one
//! runs, or after a crash; `force` overrides): rows get the room's next offsets, a room
//! the file does not know is created with a new epoch, and a row the room already holds
//! (same device, metric, `ts`, value and seq) is skipped, so importing twice is harmless.
//! A row older than the room's `raw_before` mark (the time before which the hub's
//! retention deleted the room's raw rows, kept in `meta`) is skipped too: the file cannot
//! tell whether it held it, and if it did, the rollup tiers count it already. Import old
//! history into a room before its raw rows past retention are deleted (a new file, say).

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::{DB_FILE, SCHEMA};
use telehub_protocol::ids::{valid_id, valid_metric, MAX_UNIT_LEN, TS_RANGE};

/// Rows imported per transaction.
const IMPORT_BATCH: usize = 10_000;

/// The two archive formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// A header line, then one reading per line; a unit with `,`, `"` or a line break is
    /// quoted (RFC 4180).
    Csv,
    /// One JSON object per line: `{"room","device","metric","unit"?,"ts","value","seq"?}`.
    Jsonl,
}

/// What can go wrong exporting or importing.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot write the export: {0}")]
    Write(std::io::Error),
    #[error("cannot read the import: {0}")]
    Read(std::io::Error),
    #[error("line {line}: {message}")]
    Row { line: usize, message: String },
    #[error(
        "{0} is open in a hub (or was not closed cleanly): stop the hub first, or pass --force"
    )]
    InUse(PathBuf),
}

/// One reading of an archive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArchivedReading {
    pub room: String,
    pub device: String,
    pub metric: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    pub ts: i64,
    pub value: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

const CSV_HEADER: &str = "room,device,metric,unit,ts,value,seq";

/// Writes `room`'s stored readings with `from <= ts <= to`, in offset order, to `out`;
/// returns how many.
pub fn export(
    data_dir: &Path,
    room: &str,
    from: Option<i64>,
    to: Option<i64>,
    format: ArchiveFormat,
    out: &mut dyn Write,
) -> Result<u64, ArchiveError> {
    let path = data_dir.join(DB_FILE);
    let sql = |source| ArchiveError::Sqlite {
        path: path.clone(),
        source,
    };
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(sql)?;
    let mut stmt = conn
        .prepare(
            "SELECT device, metric, unit, ts, value, seq FROM readings
             WHERE room = ?1 AND ts >= ?2 AND ts <= ?3 ORDER BY offset",
        )
        .map_err(sql)?;
    let mut rows = stmt
        .query(params![
            room,
            from.unwrap_or(i64::MIN),
            to.unwrap_or(i64::MAX)
        ])
        .map_err(sql)?;
    if format == ArchiveFormat::Csv {
        writeln!(out, "{CSV_HEADER}").map_err(ArchiveError::Write)?;
    }
    let mut n = 0;
    while let Some(row) = rows.next().map_err(sql)? {
        let r = ArchivedReading {
            room: room.to_string(),
            device: row.get(0).map_err(sql)?,
            metric: row.get(1).map_err(sql)?,
            unit: row.get(2).map_err(sql)?,
            ts: row.get(3).map_err(sql)?,
            value: row.get(4).map_err(sql)?,
            seq: row.get::<_, Option<i64>>(5).map_err(sql)?.map(|s| s as u64),
        };
        let line = match format {
            ArchiveFormat::Jsonl => serde_json::to_string(&r).unwrap_or_default(),
            ArchiveFormat::Csv => csv_line(&r),
        };
        writeln!(out, "{line}").map_err(ArchiveError::Write)?;
        n += 1;
    }
    out.flush().map_err(ArchiveError::Write)?;
    Ok(n)
}

fn csv_line(r: &ArchivedReading) -> String {
    let unit = r.unit.as_deref().unwrap_or("");
    let unit = if unit.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", unit.replace('"', "\"\""))
    } else {
        unit.to_string()
    };
    let seq = r.seq.map(|s| s.to_string()).unwrap_or_default();
    format!(
        "{},{},{},{unit},{},{},{seq}",
        r.room, r.device, r.metric, r.ts, r.value
    )
}

/// Splits one CSV record into fields (RFC 4180 quotes); `None` while a quote is open
/// (the record goes on on the next line).
fn csv_fields(record: &str) -> Option<Vec<String>> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = record.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => fields.push(std::mem::take(&mut field)),
            (_, c) => field.push(c),
        }
    }
    if quoted {
        return None;
    }
    fields.push(field);
    Some(fields)
}

fn parse_csv(fields: &[String]) -> Result<ArchivedReading, String> {
    let [room, device, metric, unit, ts, value, seq] = fields else {
        return Err(format!(
            "expected 7 fields ({CSV_HEADER}), got {}",
            fields.len()
        ));
    };
    Ok(ArchivedReading {
        room: room.clone(),
        device: device.clone(),
        metric: metric.clone(),
        unit: (!unit.is_empty()).then(|| unit.clone()),
        ts: ts
            .parse()
            .map_err(|_| format!("ts `{ts}` is not an integer"))?,
        value: value
            .parse()
            .map_err(|_| format!("value `{value}` is not a number"))?,
        seq: match seq.as_str() {
            "" => None,
            s => Some(s.parse().map_err(|_| format!("seq `{s}` is not a u64"))?),
        },
    })
}

fn check(r: &ArchivedReading) -> Result<(), String> {
    if !valid_id(&r.room) || !valid_id(&r.device) {
        return Err("room and device must be 1 to 64 of A-Za-z0-9_.-".into());
    }
    if !valid_metric(&r.metric) {
        return Err(format!("metric `{}` is not a valid metric", r.metric));
    }
    if !r.value.is_finite() {
        return Err("value must be finite".into());
    }
    if !TS_RANGE.contains(&r.ts) {
        return Err("ts is outside the years 1970 to 9999".into());
    }
    if r.unit.as_ref().is_some_and(|u| u.len() > MAX_UNIT_LEN) {
        return Err(format!("unit is longer than {MAX_UNIT_LEN} bytes"));
    }
    Ok(())
}

/// Reads an archive from `input` into the database in `data_dir` (created if missing);
/// returns (imported, skipped as already held). A bad row stops the import with its line
/// number; the batches before it stay imported (importing again skips them).
pub fn import(
    data_dir: &Path,
    format: ArchiveFormat,
    input: &mut dyn BufRead,
    force: bool,
) -> Result<(u64, u64), ArchiveError> {
    std::fs::create_dir_all(data_dir).map_err(ArchiveError::Read)?;
    let path = data_dir.join(DB_FILE);
    let sql = |source| ArchiveError::Sqlite {
        path: path.clone(),
        source,
    };
    let mut conn = Connection::open(&path).map_err(sql)?;
    conn.execute_batch(SCHEMA).map_err(sql)?;
    let tiers = super::rollup::tiers_in_file(&conn).map_err(sql)?;
    super::rollup::create(&conn, &tiers).map_err(sql)?;
    let mut rollups = super::rollup::Rollups::new(tiers);
    let clean: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'clean'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(sql)?;
    if clean.as_deref() == Some("0") && !force {
        return Err(ArchiveError::InUse(path));
    }
    let (mut imported, mut skipped) = (0u64, 0u64);
    let mut batch: Vec<ArchivedReading> = Vec::with_capacity(IMPORT_BATCH);
    let mut line_no = 0usize;
    let mut record = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        let n = input.read_line(&mut line).map_err(ArchiveError::Read)?;
        if n > 0 {
            line_no += 1;
        }
        let text = line.trim_end_matches(['\n', '\r']);
        let parsed = match format {
            _ if n == 0 => None,
            ArchiveFormat::Jsonl if text.trim().is_empty() => None,
            ArchiveFormat::Jsonl => {
                Some(serde_json::from_str::<ArchivedReading>(text).map_err(|e| e.to_string()))
            }
            ArchiveFormat::Csv => {
                if !record.is_empty() {
                    record.push('\n');
                }
                record.push_str(text);
                match csv_fields(&record) {
                    None => continue,
                    Some(_) if line_no == 1 && record == CSV_HEADER => {
                        record.clear();
                        None
                    }
                    Some(_) if record.is_empty() => None,
                    Some(fields) => {
                        record.clear();
                        Some(parse_csv(&fields))
                    }
                }
            }
        };
        if let Some(parsed) = parsed {
            let r = parsed
                .and_then(|r| check(&r).map(|()| r))
                .map_err(|message| ArchiveError::Row {
                    line: line_no,
                    message,
                })?;
            batch.push(r);
        }
        if batch.len() >= IMPORT_BATCH || (n == 0 && !batch.is_empty()) {
            let written = write_batch(&mut conn, &mut rollups, &batch);
            if written.is_err() {
                rollups.rolled_back();
            }
            let (i, s) = written.map_err(sql)?;
            imported += i;
            skipped += s;
            batch.clear();
        }
        if n == 0 {
            break;
        }
    }
    if !record.is_empty() {
        return Err(ArchiveError::Row {
            line: line_no,
            message: "a quoted field is not closed".into(),
        });
    }
    Ok((imported, skipped))
}

/// Writes one batch of imported readings in one transaction: raw rows (each skipped if
/// already held) and their rollup buckets.
fn write_batch(
    conn: &mut Connection,
    rollups: &mut super::rollup::Rollups,
    batch: &[ArchivedReading],
) -> rusqlite::Result<(u64, u64)> {
    let now = crate::clock::now_ms();
    let tx = conn.transaction()?;
    let (mut imported, mut skipped) = (0, 0);
    {
        let mut held = tx.prepare_cached(
            "SELECT 1 FROM readings WHERE ts = ?1 AND room = ?2 AND device = ?3 AND metric = ?4
             AND value = ?5 AND seq IS ?6 LIMIT 1",
        )?;
        let mut last = tx.prepare_cached("SELECT last_offset FROM rooms WHERE room = ?1")?;
        let mut new_room =
            tx.prepare_cached("INSERT INTO rooms (room, epoch, last_offset) VALUES (?1, ?2, 0)")?;
        let mut insert = tx.prepare_cached(
            "INSERT INTO readings (room, device, metric, unit, ts, value, seq, offset)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut set_last =
            tx.prepare_cached("UPDATE rooms SET last_offset = ?2 WHERE room = ?1")?;
        let mut mark = tx.prepare_cached(
            "SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'raw_before:' || ?1",
        )?;
        let mut raw_before: std::collections::HashMap<&str, Option<i64>> =
            std::collections::HashMap::new();
        for r in batch {
            let seq = r.seq.map(|s| s as i64);
            let before = match raw_before.get(r.room.as_str()) {
                Some(b) => *b,
                None => {
                    let b = mark
                        .query_row(params![r.room], |row| row.get::<_, i64>(0))
                        .optional()?;
                    raw_before.insert(&r.room, b);
                    b
                }
            };
            if before.is_some_and(|b| r.ts < b)
                || held
                    .query_row(
                        params![r.ts, r.room, r.device, r.metric, r.value, seq],
                        |_| Ok(()),
                    )
                    .optional()?
                    .is_some()
            {
                skipped += 1;
                continue;
            }
            let offset: i64 = match last
                .query_row(params![r.room], |row| row.get(0))
                .optional()?
            {
                Some(o) => o,
                None => {
                    new_room.execute(params![r.room, &*crate::clock::new_epoch()])?;
                    0
                }
            } + 1;
            insert.execute(params![
                r.room, r.device, r.metric, r.unit, r.ts, r.value, seq, offset
            ])?;
            set_last.execute(params![r.room, offset])?;
            let name = (
                Arc::from(r.room.as_str()),
                Arc::from(r.device.as_str()),
                Arc::from(r.metric.as_str()),
            );
            rollups.add(&tx, &name, r.ts, r.value, now)?;
            imported += 1;
        }
        rollups.write(&tx)?;
    }
    tx.commit()?;
    Ok((imported, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<ArchivedReading> {
        vec![
            ArchivedReading {
                room: "r".into(),
                device: "d1".into(),
                metric: "t".into(),
                unit: Some("°C, \"inside\"".into()),
                ts: 1_700_000_000_000,
                value: 21.5,
                seq: Some(1),
            },
            ArchivedReading {
                room: "r".into(),
                device: "d2".into(),
                metric: "power/w".into(),
                unit: None,
                ts: 1_700_000_000_500,
                value: -0.25,
                seq: None,
            },
        ]
    }

    #[test]
    fn export_then_import_round_trips_in_both_formats_and_twice_is_harmless() {
        for format in [ArchiveFormat::Csv, ArchiveFormat::Jsonl] {
            let a = tempfile::tempdir().unwrap();
            let mut text = Vec::new();
            for r in sample() {
                let line = match format {
                    ArchiveFormat::Csv => csv_line(&r),
                    ArchiveFormat::Jsonl => serde_json::to_string(&r).unwrap(),
                };
                text.extend_from_slice(line.as_bytes());
                text.push(b'\n');
            }
            if format == ArchiveFormat::Csv {
                text.splice(0..0, format!("{CSV_HEADER}\n").into_bytes());
            }
            assert_eq!(
                import(a.path(), format, &mut &text[..], false).unwrap(),
                (2, 0)
            );
            assert_eq!(
                import(a.path(), format, &mut &text[..], false).unwrap(),
                (0, 2),
                "rows already held are skipped"
            );
            let mut out = Vec::new();
            assert_eq!(
                export(a.path(), "r", None, None, format, &mut out).unwrap(),
                2
            );
            assert_eq!(out, text, "{format:?}: {}", String::from_utf8_lossy(&out));
            let mut window = Vec::new();
            let n = export(
                a.path(),
                "r",
                Some(1_700_000_000_100),
                None,
                ArchiveFormat::Jsonl,
                &mut window,
            )
            .unwrap();
            assert_eq!(n, 1, "--from bounds the export");
        }
    }

    #[test]
    fn a_bad_row_is_refused_with_its_line_and_a_file_in_use_is_not_written() {
        let a = tempfile::tempdir().unwrap();
        let text = "room,device,metric,unit,ts,value,seq\nr,d,t,,5,1,\nr,d,t,,5,NaN,\n";
        match import(a.path(), ArchiveFormat::Csv, &mut text.as_bytes(), false) {
            Err(ArchiveError::Row { line: 3, message }) => {
                assert!(message.contains("finite"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        let conn = Connection::open(a.path().join(DB_FILE)).unwrap();
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('clean', '0')",
            [],
        )
        .unwrap();
        let one = "r,d,t,,6,1,\n";
        assert!(matches!(
            import(a.path(), ArchiveFormat::Csv, &mut one.as_bytes(), false),
            Err(ArchiveError::InUse(_))
        ));
        assert_eq!(
            import(a.path(), ArchiveFormat::Csv, &mut one.as_bytes(), true).unwrap(),
            (1, 0)
        );
    }
}
