//! Durable history: an SQLite database (`telehub.db` in `history.data_dir`), written
//! in batches by one writer thread, off the hot path.
//!
//! It is the last sink of the data flow. [`history`](crate::sinks::history) pushes every
//! recorded reading, and every new room epoch, into a bounded queue ([`STORE_QUEUE`])
//! without waiting; the writer thread commits what arrived in one transaction every
//! `flush_interval_ms`, so a `kill -9` loses at most one interval of readings, and a
//! clean shutdown ([`Store::close`]) commits everything. Once a minute it deletes rows
//! older than the retention window. On start, [`Store::open`] hands back each room's
//! epoch and last offset and the readings within the window, so a restarted hub keeps
//! its epochs, continues its offsets and has its recent history at once.
//!
//! Tables: `rooms(room, epoch, last_offset)` and
//! `readings(room, device, metric, unit, ts, value, seq, offset)`. Users may open the file
//! with any SQLite client while the hub runs (WAL mode).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;
use rusqlite::{params, Connection, OptionalExtension};

use crate::config::HistoryConfig;
use crate::sinks::history::durable::{Durable, Loaded, StoredReading};
use crate::sinks::history::SeriesKey;

/// Messages queued for the writer at most. When the queue is full (the disk cannot keep
/// up with a burst of more than this many readings within a flush), a reading is still
/// fanned out and kept in memory, but it is not written to the database: it is counted
/// ([`Store::dropped`]) and logged, and the hot path never waits.
pub(crate) const STORE_QUEUE: usize = 65_536;

/// Readings committed in one transaction at most; a fuller buffer is committed at once.
const MAX_BATCH: usize = 16_384;

/// How often rows older than the retention window are deleted.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// The database file's name inside `data_dir`.
pub(crate) const DB_FILE: &str = "telehub.db";

/// What can go wrong with the database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("cannot start the store writer thread: {0}")]
    Thread(std::io::Error),
}

enum Msg {
    Reading(StoredReading),
    /// A room starts a new epoch: its old rows (if any) belong to a history the hub lost.
    Room {
        room: Arc<str>,
        epoch: Arc<str>,
    },
    /// Commit now and answer.
    Flush(SyncSender<()>),
    /// Commit and stop.
    Stop,
}

/// The handle the history holds.
pub(crate) struct Store {
    tx: SyncSender<Msg>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The writer thread, to wake it early (a flush, a close, a full batch). Readings do
    /// not wake it one by one: each wake-up costs the hot path a futex call and the
    /// machine a context switch, which at 1,000 readings/s was measurable.
    waker: std::thread::Thread,
    /// Readings and room messages queued and not yet taken by the writer.
    pending: Arc<AtomicUsize>,
    dropped: Arc<AtomicU64>,
}

impl Store {
    /// Opens (or creates) the database, loads what start-up needs and starts the writer,
    /// which times each commit into `commit_seconds` if given (`/metrics`'s
    /// `telehub_store_commit_seconds`: a shared handle, so the store needs no hub).
    pub(crate) fn open(
        config: &HistoryConfig,
        commit_seconds: Option<Histogram>,
    ) -> Result<(Store, Loaded), StoreError> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.clone(),
            source,
        })?;
        let path = dir.join(DB_FILE);
        let sql = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(sql)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS rooms (
                 room TEXT PRIMARY KEY,
                 epoch TEXT NOT NULL,
                 last_offset INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS readings (
                 room TEXT NOT NULL,
                 device TEXT NOT NULL,
                 metric TEXT NOT NULL,
                 unit TEXT,
                 ts INTEGER NOT NULL,
                 value REAL NOT NULL,
                 seq INTEGER,
                 offset INTEGER NOT NULL,
                 PRIMARY KEY (room, offset)
             ) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS readings_ts ON readings (ts);
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
        )
        .map_err(sql)?;
        let retention = config.retention_ms as i64;
        let cutoff = crate::clock::now_ms().saturating_sub(retention);
        let mut loaded = load(&conn, cutoff).map_err(sql)?;
        // After a crash or `kill -9` the last flush interval's readings are lost, and
        // with them offsets that dashboards may already have seen. Those offsets will be
        // given out again, so each room starts a new epoch: a dashboard that comes back
        // with the old epoch is told `recovered: false` instead of getting readings that
        // do not follow on from what it saw. Kept readings keep their offsets.
        let clean: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'clean'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(sql)?;
        if clean.as_deref() == Some("0") && !loaded.rooms.is_empty() {
            tracing::warn!(
                rooms = loaded.rooms.len(),
                "history was not closed cleanly (crash or kill -9): rooms get new epochs"
            );
            for (room, epoch, _) in &mut loaded.rooms {
                *epoch = crate::clock::new_epoch();
                conn.execute(
                    "UPDATE rooms SET epoch = ?2 WHERE room = ?1",
                    params![&**room, &**epoch],
                )
                .map_err(sql)?;
            }
        }
        conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('clean', '0')",
            [],
        )
        .map_err(sql)?;
        let (tx, rx) = mpsc::sync_channel(STORE_QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let pending = Arc::new(AtomicUsize::new(0));
        let writer = Writer {
            conn,
            rx,
            pending: pending.clone(),
            interval: Duration::from_millis(config.flush_interval_ms),
            retention,
            path: path.clone(),
            commit_seconds,
        };
        let thread = std::thread::Builder::new()
            .name("telehub-store".into())
            .spawn(move || writer.run())
            .map_err(StoreError::Thread)?;
        Ok((
            Store {
                tx,
                waker: thread.thread().clone(),
                pending,
                thread: Mutex::new(Some(thread)),
                dropped,
            },
            loaded,
        ))
    }

    fn push(&self, msg: Msg) {
        match self.tx.try_send(msg) {
            Ok(()) => {
                if self.pending.fetch_add(1, Ordering::AcqRel) + 1 == MAX_BATCH {
                    // A full batch waiting: commit it now rather than at the deadline.
                    self.waker.unpark();
                }
            }
            Err(TrySendError::Full(_)) => {
                let n = self.dropped.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() {
                    tracing::warn!(
                        dropped = n + 1,
                        capacity = STORE_QUEUE,
                        "store queue full: readings kept in memory but not written to disk"
                    );
                }
            }
            // The writer has stopped (shutdown): nothing more is written.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

impl Durable for Store {
    /// Queues a reading for the next commit; never waits (see [`STORE_QUEUE`]).
    fn push_reading(&self, r: StoredReading) {
        self.push(Msg::Reading(r));
    }

    /// Queues a room's new epoch.
    fn push_room(&self, room: Arc<str>, epoch: Arc<str>) {
        self.push(Msg::Room { room, epoch });
    }

    /// Readings not written because the queue was full.
    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Blocks until everything queued so far is committed.
    fn flush(&self) {
        let (ack_tx, ack_rx) = mpsc::sync_channel(1);
        // Woken before the send too: a full queue drains only when the writer runs.
        self.waker.unpark();
        if self.tx.send(Msg::Flush(ack_tx)).is_ok() {
            self.waker.unpark();
            let _ = ack_rx.recv();
        }
    }

    /// Commits everything queued and stops the writer (clean shutdown); readings
    /// recorded after this are not written. Blocks until the writer has finished.
    fn close(&self) {
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            self.waker.unpark();
            let _ = self.tx.send(Msg::Stop);
            self.waker.unpark();
            if thread.join().is_err() {
                tracing::error!("the store writer thread panicked");
            }
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

fn load(conn: &Connection, cutoff: i64) -> rusqlite::Result<Loaded> {
    let mut loaded = Loaded::default();
    let mut stmt = conn.prepare("SELECT room, epoch, last_offset FROM rooms")?;
    let rows = stmt.query_map([], |row| {
        Ok((
            Arc::<str>::from(row.get::<_, String>(0)?),
            Arc::<str>::from(row.get::<_, String>(1)?),
            row.get::<_, i64>(2)? as u64,
        ))
    })?;
    for r in rows {
        loaded.rooms.push(r?);
    }
    let mut stmt = conn.prepare(
        "SELECT room, device, metric, unit, ts, value, seq, offset FROM readings
         WHERE ts >= ?1 ORDER BY room, offset",
    )?;
    let mut rows = stmt.query(params![cutoff])?;
    // Share the strings between rows of one series, as the live history does.
    let mut keys: std::collections::HashMap<(String, String), Arc<SeriesKey>> =
        std::collections::HashMap::new();
    let mut room: Option<Arc<str>> = None;
    while let Some(row) = rows.next()? {
        let room_name: String = row.get(0)?;
        let r = match &room {
            Some(r) if **r == *room_name => r.clone(),
            _ => {
                let r: Arc<str> = Arc::from(room_name);
                room = Some(r.clone());
                keys.clear();
                r
            }
        };
        let device: String = row.get(1)?;
        let metric: String = row.get(2)?;
        let key = keys
            .entry((device, metric))
            .or_insert_with_key(|(d, m)| {
                Arc::new(SeriesKey {
                    device: Arc::from(d.as_str()),
                    metric: Arc::from(m.as_str()),
                })
            })
            .clone();
        loaded.readings.push(StoredReading {
            room: r,
            key,
            unit: row.get::<_, Option<String>>(3)?.map(Arc::from),
            ts: row.get(4)?,
            value: row.get(5)?,
            seq: row.get::<_, Option<i64>>(6)?.map(|s| s as u64),
            offset: row.get::<_, i64>(7)? as u64,
        });
    }
    Ok(loaded)
}

/// The writer thread's state.
struct Writer {
    conn: Connection,
    rx: Receiver<Msg>,
    pending: Arc<AtomicUsize>,
    interval: Duration,
    retention: i64,
    path: PathBuf,
    /// Observes the duration of every commit (failed ones too: they cost as much).
    commit_seconds: Option<Histogram>,
}

impl Writer {
    /// Sleeps until the flush deadline (or an early wake-up), then takes everything
    /// queued and commits it. Readings never wake this thread one by one.
    fn run(mut self) {
        let mut batch: Vec<Msg> = Vec::new();
        let mut next_flush = Instant::now() + self.interval;
        let mut next_retention = Instant::now();
        loop {
            let now = Instant::now();
            if now < next_flush {
                std::thread::park_timeout(next_flush - now);
            }
            loop {
                match self.rx.try_recv() {
                    Ok(Msg::Flush(ack)) => {
                        self.commit(&mut batch);
                        let _ = ack.send(());
                    }
                    Ok(Msg::Stop) => {
                        self.commit(&mut batch);
                        self.mark_clean();
                        return;
                    }
                    Ok(msg) => {
                        self.pending.fetch_sub(1, Ordering::AcqRel);
                        batch.push(msg);
                        if batch.len() >= MAX_BATCH {
                            self.commit(&mut batch);
                        }
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.commit(&mut batch);
                        return;
                    }
                }
            }
            let now = Instant::now();
            if now >= next_flush {
                self.commit(&mut batch);
                next_flush = now + self.interval;
                if now >= next_retention {
                    self.enforce_retention();
                    next_retention = now + RETENTION_EVERY;
                }
            }
        }
    }

    fn commit(&mut self, batch: &mut Vec<Msg>) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len();
        let started = Instant::now();
        let written = write(&mut self.conn, batch);
        if let Some(h) = &self.commit_seconds {
            h.observe(started.elapsed().as_secs_f64());
        }
        if let Err(e) = written {
            // Nothing to retry into without growing memory: say what was lost.
            tracing::error!(path = %self.path.display(), error = %e, lost = n, "history commit failed");
        }
        batch.clear();
    }

    /// Records that everything was committed: the next start keeps the epochs.
    fn mark_clean(&mut self) {
        if let Err(e) = self.conn.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('clean', '1')",
            [],
        ) {
            tracing::error!(error = %e, "cannot mark history closed cleanly");
        }
    }

    fn enforce_retention(&mut self) {
        let cutoff = crate::clock::now_ms().saturating_sub(self.retention);
        match self
            .conn
            .execute("DELETE FROM readings WHERE ts < ?1", params![cutoff])
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "history rows past retention deleted"),
            Err(e) => tracing::error!(error = %e, "history retention delete failed"),
        }
    }
}

fn write(conn: &mut Connection, batch: &[Msg]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT OR REPLACE INTO readings (room, device, metric, unit, ts, value, seq, offset)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut new_room = tx.prepare_cached(
            "INSERT INTO rooms (room, epoch, last_offset) VALUES (?1, ?2, 0)
             ON CONFLICT (room) DO UPDATE SET epoch = excluded.epoch, last_offset = 0",
        )?;
        let mut clear_room = tx.prepare_cached("DELETE FROM readings WHERE room = ?1")?;
        let mut last: Vec<(&str, u64)> = Vec::new();
        for msg in batch {
            match msg {
                Msg::Reading(r) => {
                    insert.execute(params![
                        &*r.room,
                        &*r.key.device,
                        &*r.key.metric,
                        r.unit.as_deref(),
                        r.ts,
                        r.value,
                        r.seq.map(|s| s as i64),
                        r.offset as i64,
                    ])?;
                    match last.iter_mut().find(|(room, _)| *room == &*r.room) {
                        Some(entry) => entry.1 = entry.1.max(r.offset),
                        None => last.push((&r.room, r.offset)),
                    }
                }
                Msg::Room { room, epoch } => {
                    clear_room.execute(params![&**room])?;
                    new_room.execute(params![&**room, &**epoch])?;
                    last.retain(|(r, _)| *r != &**room);
                }
                Msg::Flush(_) | Msg::Stop => {}
            }
        }
        let mut set_last = tx.prepare_cached(
            "UPDATE rooms SET last_offset = max(last_offset, ?2) WHERE room = ?1",
        )?;
        for (room, offset) in last {
            set_last.execute(params![room, offset as i64])?;
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests;
