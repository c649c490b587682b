//! Durable history: an SQLite database (`telehub.db` in `history.data_dir`), written
//! in batches by one writer thread, off the hot path.
//!
//! It is the last sink of the data flow. [`history`](crate::sinks::history) pushes every
//! recorded reading, and every new room epoch, into a bounded queue ([`queue`],
//! [`STORE_QUEUE`]) without waiting, and gets a ticket back; the writer thread
//! ([`writer`]) commits what arrived in one transaction once the oldest of it has waited
//! about `flush_interval_ms` (one commit per interval under a steady stream) and
//! publishes the highest committed ticket, which is what durable acks wait for
//! (`history.ack = "durable"`): a `kill -9` or a power cut loses only readings no one was
//! told are kept. A clean shutdown ([`Store::close`]) commits everything. Once a minute it
//! deletes rows older than the retention window, in small batches. On start,
//! [`Store::open`] hands back each room's epoch and last offset, and the readings within
//! the window as a stream (start-up memory is bounded by what history keeps, not by the
//! file), so a restarted hub keeps its epochs, continues its offsets and has its recent
//! history at once.
//!
//! Tables: `rooms(room, epoch, last_offset)`,
//! `readings(room, device, metric, unit, ts, value, seq, offset)`, the rollup tiers
//! ([`rollup`]: `series`, `rollup_<step ms>`) and the devices' seq windows ([`seqs`]:
//! `device_seqs`), both updated in the same transaction as the raw rows, and `meta`
//! (`clean`; `raw_before:<room>`, the time before which the room's raw rows were deleted
//! by retention, see [`archive`]). Users may open the file with any SQLite client while the hub
//! runs (WAL mode).

pub(crate) mod archive;
mod queue;
pub(crate) mod read;
pub(crate) mod rollup;
mod seqs;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;
use rusqlite::{params, Connection, OptionalExtension};
use tokio::sync::watch;

use crate::config::{AckMode, HistoryConfig};
use crate::sinks::history::durable::{
    CommitState, Commits, Durable, Loaded, Queued, StoredReading, StoredRoom, StoredRows, Ticket,
};
use crate::sinks::history::SeriesKey;
pub(crate) use queue::STORE_QUEUE;
use queue::{Msg, Queue};
use writer::{Control, Writer, MAX_BATCH};

/// The file's tables (created if missing), in WAL mode.
pub(crate) const SCHEMA: &str = "PRAGMA journal_mode = WAL;
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
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS device_seqs (
                 room TEXT NOT NULL,
                 device TEXT NOT NULL,
                 high INTEGER NOT NULL,
                 bits BLOB NOT NULL,
                 seen_at INTEGER NOT NULL,
                 PRIMARY KEY (room, device)
             ) WITHOUT ROWID;
             CREATE INDEX IF NOT EXISTS device_seqs_seen ON device_seqs (seen_at);";

/// How long one commit waits for a lock another connection holds before it fails.
const BUSY_TIMEOUT: Duration = Duration::from_millis(200);

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

/// The handle the history holds.
pub(crate) struct Store {
    queue: Arc<Queue>,
    control: Arc<Control>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// The writer thread, to wake it early (a flush, a close, a full batch). Readings do
    /// not wake it one by one: each wake-up costs the hot path a futex call and the
    /// machine a context switch, which at 1,000 readings/s was measurable.
    waker: std::thread::Thread,
    commits: Commits,
    dropped: AtomicU64,
    failures: Arc<AtomicU64>,
    /// `history.data_dir`, for reads beside the writer.
    dir: PathBuf,
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
        // Another writer (someone's SQLite client) holding the lock makes a commit wait
        // this long before it fails and is retried (see `writer`), not rusqlite's 5 s.
        conn.busy_timeout(BUSY_TIMEOUT).map_err(sql)?;
        conn.execute_batch(SCHEMA).map_err(sql)?;
        let tiers = rollup::tiers(config);
        rollup::create(&conn, &tiers).map_err(sql)?;
        // The writer's statements (raw rows, rooms, each tier's UPSERT and retention)
        // stay prepared.
        conn.set_prepared_statement_cache_capacity(64);
        // Durable acks promise a reading survives a power cut, so every commit syncs the
        // WAL (`FULL`: one fsync per flush, not per reading). With memory acks a commit
        // survives a crash of the hub but may be lost with the machine (`NORMAL`).
        let synchronous = match config.ack {
            AckMode::Durable => "FULL",
            AckMode::Memory => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(sql)?;
        let retention = config.retention_ms as i64;
        // Memory holds `memory_ms`; the file keeps `retention_ms`. Only the first is
        // loaded back.
        let cutoff = crate::clock::now_ms().saturating_sub(config.memory_window_ms() as i64);
        let mut loaded = Loaded {
            rooms: load_rooms(&conn).map_err(sql)?,
            rows: None,
        };
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
        // The epochs above are committed (autocommit) before this reader opens.
        loaded.rows = Some(Box::new(Rows {
            conn: Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(sql)?,
            cutoff,
        }));
        let queue = Arc::new(Queue::default());
        let control = Arc::new(Control::default());
        let failures = Arc::new(AtomicU64::new(0));
        let (commits_tx, commits) = watch::channel(CommitState::default());
        let writer = Writer {
            conn,
            queue: queue.clone(),
            control: control.clone(),
            interval: Duration::from_millis(config.flush_interval_ms),
            retention,
            path: path.clone(),
            commit_seconds,
            commits: commits_tx,
            failures: failures.clone(),
            rollups: rollup::Rollups::new(tiers),
            commit_times: writer::CommitTimes::default(),
            seqs: seqs::Seqs::default(),
        };
        let thread = std::thread::Builder::new()
            .name("telehub-store".into())
            .spawn(move || writer.run())
            .map_err(StoreError::Thread)?;
        Ok((
            Store {
                queue,
                control,
                waker: thread.thread().clone(),
                thread: Mutex::new(Some(thread)),
                commits,
                dropped: AtomicU64::new(0),
                failures,
                dir: dir.clone(),
            },
            loaded,
        ))
    }

    fn refused(&self) {
        let n = self.dropped.fetch_add(1, Ordering::Relaxed);
        if n.is_power_of_two() {
            tracing::warn!(
                dropped = n + 1,
                capacity = STORE_QUEUE,
                "store queue full: readings fanned out but not written nor acknowledged"
            );
        }
    }
}

impl Durable for Store {
    /// Queues a reading for the next commit; never waits (see [`STORE_QUEUE`]).
    fn push_reading(&self, r: StoredReading) -> Queued {
        match self.queue.push(Msg::Reading(r)) {
            Ok((ticket, queued)) => {
                if queued == MAX_BATCH {
                    // A full batch waiting: commit it now rather than at the deadline.
                    self.waker.unpark();
                }
                Queued::Ticket(ticket)
            }
            Err(_) => {
                self.refused();
                Queued::Refused
            }
        }
    }

    /// Queues a room's new epoch, past the readings' capacity.
    fn push_room(&self, room: Arc<str>, epoch: Arc<str>) -> Ticket {
        match self.queue.push(Msg::Room { room, epoch }) {
            Ok((ticket, _)) => ticket,
            // Only once closed (shutdown), when nothing is written any more.
            Err(_) => self.queue.last_ticket(),
        }
    }

    fn last_ticket(&self) -> Ticket {
        self.queue.last_ticket()
    }

    fn commits(&self) -> Commits {
        self.commits.clone()
    }

    fn device_seqs(&self, room: &str) -> Vec<crate::sinks::history::durable::StoredSeqs> {
        seqs::device_seqs(&self.dir, room).unwrap_or_else(|e| {
            tracing::error!(room, error = %e, "cannot read the devices' stored seqs: resends of readings past memory may be stored twice");
            Vec::new()
        })
    }

    /// Readings not written because the queue was full.
    fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn commit_failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Blocks until everything queued so far is committed; false if the store is failing
    /// (or stopped) with some of it not on disk.
    fn flush(&self) -> bool {
        let target = self.queue.last_ticket();
        let done = |c: &Commits| {
            let s = c.borrow();
            s.committed >= target || s.failing.is_some()
        };
        if !done(&self.commits) {
            self.control.flush.store(true, Ordering::Release);
            self.waker.unpark();
            self.control.wait(|| done(&self.commits));
        }
        self.commits.borrow().committed >= target
    }

    /// Commits everything queued and stops the writer (clean shutdown); readings
    /// recorded after this are not written. Blocks until the writer has finished.
    fn close(&self) {
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            self.control.stop.store(true, Ordering::Release);
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

fn load_rooms(conn: &Connection) -> rusqlite::Result<Vec<StoredRoom>> {
    let mut stmt = conn.prepare("SELECT room, epoch, last_offset FROM rooms")?;
    let rows = stmt.query_map([], |row| {
        Ok((
            Arc::<str>::from(row.get::<_, String>(0)?),
            Arc::<str>::from(row.get::<_, String>(1)?),
            row.get::<_, i64>(2)? as u64,
        ))
    })?;
    rows.collect()
}

/// The readings within the window, read through a connection of their own (WAL: beside
/// the writer) and handed over row by row.
struct Rows {
    conn: Connection,
    cutoff: i64,
}

impl StoredRows for Rows {
    fn for_each(self: Box<Self>, each: &mut dyn FnMut(StoredReading)) -> Result<usize, String> {
        self.read(each).map_err(|e| e.to_string())
    }
}

impl Rows {
    fn read(&self, each: &mut dyn FnMut(StoredReading)) -> rusqlite::Result<usize> {
        let mut stmt = self.conn.prepare(
            "SELECT room, device, metric, unit, ts, value, seq, offset FROM readings
             WHERE ts >= ?1 ORDER BY room, offset",
        )?;
        let mut rows = stmt.query(params![self.cutoff])?;
        // Share the strings between rows of one series, as the live history does.
        let mut keys: std::collections::HashMap<(String, String), Arc<SeriesKey>> =
            std::collections::HashMap::new();
        let mut room: Option<Arc<str>> = None;
        let mut n = 0;
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
            each(StoredReading {
                room: r,
                key,
                unit: row.get::<_, Option<String>>(3)?.map(Arc::from),
                ts: row.get(4)?,
                value: row.get(5)?,
                seq: row.get::<_, Option<i64>>(6)?.map(|s| s as u64),
                offset: row.get::<_, i64>(7)? as u64,
            });
            n += 1;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests;
