//! The store's seq windows: per (room, device), the `seq`s of its stored readings (the
//! highest and a bitmap of the `SEQ_WINDOW` below it, as the hub's duplicate detection
//! keeps them), in the `device_seqs` table, so that duplicate detection survives a
//! restart for readings memory no longer holds (older than `history.memory_ms`).
//!
//! The writer adds every committed reading's seq to its device's window in the batch's
//! transaction ([`Seqs::add`], one UPSERT per device touched per commit,
//! [`Seqs::write`]); a room that joins again reads its devices' windows back
//! ([`device_seqs`]). A window is only what was committed: a refused reading's seq is not
//! in it, so its resend is stored. Rows of devices not seen for the raw retention are
//! deleted ([`Seqs::enforce_retention`]), so the table is bounded by the devices of the
//! last `retention_ms`; a device whose resend reaches back further than `SEQ_WINDOW`
//! seqs is taken for one that restarted its counter, as in memory.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use super::DB_FILE;
use crate::hub::dedup::SeqWindow;
use crate::sinks::history::durable::StoredSeqs;

/// Windows the writer keeps in memory at most between commits; past it they are
/// forgotten after a commit (all written by then) and read back when next needed.
const CACHE: usize = 10_000;

/// Rows deleted per statement by the retention pass.
const RETENTION_BATCH: i64 = 2_000;

struct Cached {
    window: SeqWindow,
    /// Changed since it was last written.
    dirty: bool,
}

/// The writer's side: the windows it has read or changed.
#[derive(Default)]
pub(crate) struct Seqs {
    windows: HashMap<(Arc<str>, Arc<str>), Cached>,
}

impl Seqs {
    /// Adds a committed reading's `seq` to its device's window (read from the table the
    /// first time).
    pub(crate) fn add(
        &mut self,
        conn: &Connection,
        room: &Arc<str>,
        device: &Arc<str>,
        seq: u64,
    ) -> rusqlite::Result<()> {
        let key = (room.clone(), device.clone());
        let cached = match self.windows.get_mut(&key) {
            Some(c) => c,
            None => {
                let window = conn
                    .prepare_cached(
                        "SELECT high, bits FROM device_seqs WHERE room = ?1 AND device = ?2",
                    )?
                    .query_row(params![&**room, &**device], |r| {
                        Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
                    })
                    .optional()?
                    .and_then(|(high, bits)| SeqWindow::from_parts(high as u64, &bits))
                    .unwrap_or_default();
                self.windows.entry(key).or_insert(Cached {
                    window,
                    dirty: false,
                })
            }
        };
        cached.window.insert(seq);
        cached.dirty = true;
        Ok(())
    }

    /// Writes the windows changed by this batch, one UPSERT each, stamped `now`.
    pub(crate) fn write(&mut self, conn: &Connection, now: i64) -> rusqlite::Result<()> {
        let mut upsert = conn.prepare_cached(
            "INSERT INTO device_seqs (room, device, high, bits, seen_at)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (room, device) DO UPDATE SET
               high = excluded.high, bits = excluded.bits, seen_at = excluded.seen_at",
        )?;
        for ((room, device), c) in self.windows.iter_mut().filter(|(_, c)| c.dirty) {
            if let Some((high, bits)) = c.window.to_parts() {
                upsert.execute(params![&**room, &**device, high as i64, bits, now])?;
            }
            c.dirty = false;
        }
        Ok(())
    }

    /// Forgets what a failed transaction may have changed; trims the cache after a
    /// successful one (everything is written then).
    pub(crate) fn committed(&mut self, ok: bool) {
        if !ok || self.windows.len() > CACHE {
            self.windows.clear();
        }
    }

    /// A room starts a new epoch: its rows go, and with them its devices' windows (their
    /// resends are stored again).
    pub(crate) fn clear_room(&mut self, conn: &Connection, room: &str) -> rusqlite::Result<()> {
        self.windows.retain(|(r, _), _| &**r != room);
        conn.prepare_cached("DELETE FROM device_seqs WHERE room = ?1")?
            .execute(params![room])?;
        Ok(())
    }

    /// Deletes the windows of devices not seen since `cutoff`, in statements of
    /// [`RETENTION_BATCH`] rows, stopping early when `busy()`; returns how many.
    pub(crate) fn enforce_retention(
        &mut self,
        conn: &Connection,
        cutoff: i64,
        busy: &dyn Fn() -> bool,
    ) -> rusqlite::Result<usize> {
        let mut total = 0;
        loop {
            let n = conn
                .prepare_cached(
                    "DELETE FROM device_seqs WHERE (room, device) IN
                       (SELECT room, device FROM device_seqs WHERE seen_at < ?1 LIMIT ?2)",
                )?
                .execute(params![cutoff, RETENTION_BATCH])?;
            total += n;
            if (n as i64) < RETENTION_BATCH || busy() {
                break;
            }
        }
        if total > 0 {
            // Cached windows of deleted rows would be written back: forget them all.
            self.windows.retain(|_, c| c.dirty);
        }
        Ok(total)
    }
}

/// The stored windows of `room`'s devices, read through a read-only connection of its
/// own (WAL: beside the writer).
pub(crate) fn device_seqs(data_dir: &Path, room: &str) -> rusqlite::Result<Vec<StoredSeqs>> {
    let conn =
        Connection::open_with_flags(data_dir.join(DB_FILE), OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut stmt = conn.prepare("SELECT device, high, bits FROM device_seqs WHERE room = ?1")?;
    let rows = stmt.query_map(params![room], |r| {
        Ok(StoredSeqs {
            device: Arc::from(r.get::<_, String>(0)?),
            high: r.get::<_, i64>(1)? as u64,
            bits: r.get(2)?,
        })
    })?;
    rows.collect()
}
