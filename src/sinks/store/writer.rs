//! The store's writer thread: takes batches off the [`Queue`], commits each in one
//! transaction, publishes the highest committed ticket, and retries a failed commit.
//!
//! A commit that fails (disk full, a lock held past the busy timeout) keeps its batch:
//! it is tried again [`COMMIT_RETRIES`] times within a few hundred milliseconds, and if
//! it still fails the store is reported failing (the reason in
//! [`CommitState::failing`], so `/healthz` answers 503 and waiting acks become
//! `store_unavailable`; each failed attempt counted, the first logged). The batch is then
//! retried every [`FAILING_RETRY`] until it succeeds; meanwhile nothing more is taken
//! from the queue, which fills and refuses readings, so memory stays bounded and nothing
//! acknowledged is ever dropped.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::metrics::histogram::Histogram;
use rusqlite::{params, Connection};
use tokio::sync::watch;

use super::queue::{Msg, Queue};
use super::rollup::Rollups;
use super::seqs::Seqs;
use crate::sinks::history::durable::{CommitState, Ticket};

/// Readings committed in one transaction at most; a fuller queue is committed at once.
pub(super) const MAX_BATCH: usize = 16_384;

/// How often rows older than the retention window are deleted.
const RETENTION_EVERY: Duration = Duration::from_secs(60);

/// Rows deleted per statement by the retention pass, so a large backlog of old rows
/// never holds the writer (and the acks waiting on it) for long.
const RETENTION_BATCH: i64 = 2_000;

/// Retries of a failed commit before the store is reported failing.
const COMMIT_RETRIES: u32 = 3;
/// The first retry's delay; each next one doubles (50, 100, 200 ms).
const FIRST_RETRY: Duration = Duration::from_millis(50);
/// While failing, how often the kept batch is tried again.
const FAILING_RETRY: Duration = Duration::from_secs(1);

/// How much sooner than a flush interval (less the slowest recent commit) after its oldest
/// record a batch is committed: the writer's wake-up delay and the ack's way back to the
/// device, so that the oldest reading's `accepted` leaves about one interval after it
/// arrived.
const MARGIN: Duration = Duration::from_millis(2);

/// What the handle and the writer share besides the queue.
#[derive(Default)]
pub(super) struct Control {
    /// Commit now (a flush is waiting).
    pub(super) flush: AtomicBool,
    /// Commit what is queued and stop.
    pub(super) stop: AtomicBool,
    /// Set once the writer has returned.
    pub(super) done: AtomicBool,
    /// Notified after every commit attempt, for blocking flushes.
    pub(super) signal: (Mutex<()>, Condvar),
}

impl Control {
    fn notify(&self) {
        let _guard = self.signal.0.lock().unwrap_or_else(|p| p.into_inner());
        self.signal.1.notify_all();
    }

    /// Blocks until `done` says so (checked under the signal's lock, so no wake-up is
    /// missed), or the writer has stopped.
    pub(super) fn wait(&self, mut done: impl FnMut() -> bool) {
        let mut guard = self.signal.0.lock().unwrap_or_else(|p| p.into_inner());
        while !done() && !self.done.load(Ordering::Acquire) {
            guard = self
                .signal
                .1
                .wait_timeout(guard, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }
}

/// The writer thread's state.
pub(super) struct Writer {
    pub(super) conn: Connection,
    pub(super) queue: Arc<Queue>,
    pub(super) control: Arc<Control>,
    pub(super) interval: Duration,
    pub(super) retention: i64,
    pub(super) path: PathBuf,
    /// Observes the duration of every commit (failed ones too: they cost as much).
    pub(super) commit_seconds: Option<Histogram>,
    pub(super) commits: watch::Sender<CommitState>,
    pub(super) failures: Arc<AtomicU64>,
    /// The rollup tiers, updated in every commit's transaction.
    pub(super) rollups: Rollups,
    /// Recent successful commits' durations, whose slowest a batch's deadline allows
    /// for ([`Writer::wait`]).
    pub(super) commit_times: CommitTimes,
    /// The devices' seq windows, updated in every commit's transaction.
    pub(super) seqs: Seqs,
}

/// How many recent commits [`CommitTimes`] remembers: 6.4 s at the default interval.
const COMMITS_REMEMBERED: usize = 64;

/// The durations of the last [`COMMITS_REMEMBERED`] successful commits. A batch's
/// deadline allows for the slowest of them: an average let every commit slower than
/// the average (an fsync's tail) push its oldest readings' `accepted` past the flush
/// interval, and fsync tails come in runs (another process flushing the same disk).
/// Allowing for the recent peak keeps them inside it, at the price of committing a few
/// milliseconds earlier than the average would.
pub(super) struct CommitTimes {
    recent: [Duration; COMMITS_REMEMBERED],
    next: usize,
}

impl Default for CommitTimes {
    fn default() -> Self {
        CommitTimes {
            recent: [Duration::ZERO; COMMITS_REMEMBERED],
            next: 0,
        }
    }
}

impl CommitTimes {
    fn record(&mut self, took: Duration) {
        self.recent[self.next] = took;
        self.next = (self.next + 1) % COMMITS_REMEMBERED;
    }

    fn slowest(&self) -> Duration {
        self.recent.iter().copied().max().unwrap_or_default()
    }
}

impl Writer {
    /// Sleeps until the queued records are due (or an early wake-up: a flush, a stop, a
    /// full batch), then commits them in one transaction. Readings never wake this thread
    /// one by one.
    ///
    /// A batch is due when its oldest record has waited [`Writer::wait`]: a flush
    /// interval less the slowest recent commit and [`MARGIN`], so the oldest reading is
    /// acknowledged about one flush interval after it was queued, whatever it arrived
    /// during. Records that arrive while a commit runs wait for their own deadline, so a
    /// steady stream costs one commit (one fsync) per interval. While the queue is empty
    /// the thread wakes every [`Writer::wait`] (a record queued just after it fell asleep
    /// is still committed on time).
    pub(super) fn run(mut self) {
        // Records taken and not yet committed (kept across failed attempts).
        let mut batch: Vec<(Ticket, Msg)> = Vec::new();
        // While failing: when the kept batch is tried again.
        let mut retry_at = Instant::now();
        // The first pass one interval in: past the start's own reads, and soon enough
        // that rows left past retention by a long stop go early.
        let mut next_retention = Instant::now() + self.interval;
        loop {
            let stopping = self.control.stop.load(Ordering::Acquire);
            let flushing = self.control.flush.swap(false, Ordering::AcqRel);
            let now = Instant::now();
            let due = if self.failing() {
                Some(retry_at)
            } else {
                self.queue.oldest().map(|queued| queued + self.wait())
            };
            let ready = stopping
                || flushing
                || due.is_some_and(|at| now >= at)
                || (!self.failing() && self.queue.batch_ready());
            if !ready {
                if now >= next_retention && !self.failing() {
                    self.enforce_retention();
                    next_retention = now + RETENTION_EVERY;
                    continue;
                }
                std::thread::park_timeout(due.map_or(self.wait(), |at| at - now));
                continue;
            }
            // Commit what is queued; more full batches at once (a backlog, a stop), a
            // partial rest only when stopping (else it waits for its own deadline).
            loop {
                // While failing the kept batch is retried alone: the queue fills and
                // refuses readings, so at most MAX_BATCH + STORE_QUEUE are held.
                if batch.is_empty() || (batch.len() < MAX_BATCH && !self.failing()) {
                    self.queue.take(MAX_BATCH - batch.len(), &mut batch);
                }
                if batch.is_empty() || !self.commit(&mut batch) {
                    break;
                }
                if !stopping && !self.queue.batch_ready() {
                    break;
                }
            }
            self.control.notify();
            if stopping {
                self.stop(&batch);
                return;
            }
            let now = Instant::now();
            if self.failing() {
                retry_at = now + FAILING_RETRY;
            } else if now >= next_retention {
                self.enforce_retention();
                next_retention = now + RETENTION_EVERY;
            }
        }
    }

    /// How long the oldest queued record waits before its batch is committed: a flush
    /// interval less the slowest recent commit and [`MARGIN`] (at least half an interval, so
    /// a slow disk still gets batches, not a commit per arrival).
    fn wait(&self) -> Duration {
        self.interval
            .saturating_sub(self.commit_times.slowest() + MARGIN)
            .max(self.interval / 2)
    }

    /// The last step: refuses further records and marks the file clean if everything was
    /// committed (else the next start gives rooms new epochs).
    fn stop(&mut self, batch: &[(Ticket, Msg)]) {
        self.queue.close();
        let mut rest = Vec::new();
        self.queue.take(usize::MAX, &mut rest);
        let lost = batch.len() + rest.len();
        if lost == 0 {
            self.mark_clean();
        } else {
            tracing::error!(
                path = %self.path.display(),
                lost,
                "history store failing at shutdown: records never acknowledged are not written"
            );
        }
        self.control.done.store(true, Ordering::Release);
        self.control.notify();
    }

    fn failing(&self) -> bool {
        self.commits.borrow().failing.is_some()
    }

    /// Commits `batch` (retrying a failure up to [`COMMIT_RETRIES`] times unless already
    /// failing) and publishes the highest committed ticket. On success `batch` is
    /// emptied; on failure it is kept for the next attempt.
    fn commit(&mut self, batch: &mut Vec<(Ticket, Msg)>) -> bool {
        let last = batch.last().map_or(0, |(t, _)| *t);
        let attempts = if self.failing() {
            1
        } else {
            1 + COMMIT_RETRIES
        };
        let mut delay = FIRST_RETRY;
        let mut error = String::new();
        for attempt in 0..attempts {
            if attempt > 0 {
                std::thread::sleep(delay);
                delay *= 2;
            }
            let started = Instant::now();
            let written = write(&mut self.conn, &mut self.rollups, &mut self.seqs, batch);
            if written.is_err() {
                self.rollups.rolled_back();
            }
            self.seqs.committed(written.is_ok());
            if let Some(h) = &self.commit_seconds {
                h.observe(started.elapsed().as_secs_f64());
            }
            match written {
                Ok(()) => {
                    self.commit_times.record(started.elapsed());
                    batch.clear();
                    if self.failing() {
                        tracing::info!(path = %self.path.display(), "history commits succeed again");
                    }
                    self.commits.send_modify(|s| {
                        s.committed = s.committed.max(last);
                        s.failing = None;
                    });
                    return true;
                }
                Err(e) => {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    error = e.to_string();
                }
            }
        }
        if !self.failing() {
            tracing::error!(
                path = %self.path.display(),
                error = %error,
                held = batch.len(),
                "history commit failed after retries: readings are not acknowledged until a commit succeeds"
            );
            let reason: Arc<str> = Arc::from(format!("history commits fail: {error}"));
            self.commits.send_modify(|s| s.failing = Some(reason));
        }
        false
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

    /// Deletes rows past retention in statements of [`RETENTION_BATCH`] rows, then the
    /// rollup buckets past their tiers' retention and the seq windows of devices not seen
    /// for the raw retention (likewise in small statements), and stops early when
    /// records wait in the queue (the next pass goes on), so acks never wait behind a
    /// long delete.
    fn enforce_retention(&mut self) {
        let now = crate::clock::now_ms();
        let cutoff = now.saturating_sub(self.retention);
        let mut total = 0usize;
        loop {
            match delete_raw(&mut self.conn, cutoff) {
                Ok(n) => {
                    total += n;
                    if (n as i64) < RETENTION_BATCH || !self.queue.is_empty() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "history retention delete failed");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::debug!(deleted = total, "history rows past retention deleted");
        }
        if !self.queue.is_empty() {
            return;
        }
        let queue = self.queue.clone();
        match self
            .rollups
            .enforce_retention(&self.conn, now, &|| !queue.is_empty())
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "rollup buckets past retention deleted"),
            Err(e) => tracing::error!(error = %e, "rollup retention delete failed"),
        }
        match self
            .seqs
            .enforce_retention(&self.conn, cutoff, &|| !queue.is_empty())
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(deleted = n, "seq windows of devices gone deleted"),
            Err(e) => tracing::error!(error = %e, "seq window retention delete failed"),
        }
    }
}

/// Deletes up to [`RETENTION_BATCH`] raw rows older than `cutoff` and, in the same
/// transaction, marks each room they were of with `raw_before:<room> = cutoff` in
/// `meta`: its rows before that are gone but counted in the rollup tiers, so an import
/// of them again ([`super::archive`]) does not count them twice. Returns the rows deleted.
fn delete_raw(conn: &mut Connection, cutoff: i64) -> rusqlite::Result<usize> {
    let tx = conn.transaction()?;
    let mut rooms: Vec<String> = Vec::new();
    let mut n = 0;
    {
        let mut delete = tx.prepare_cached(
            "DELETE FROM readings WHERE (room, offset) IN
               (SELECT room, offset FROM readings WHERE ts < ?1 LIMIT ?2) RETURNING room",
        )?;
        let mut rows = delete.query(params![cutoff, RETENTION_BATCH])?;
        while let Some(r) = rows.next()? {
            let room: String = r.get(0)?;
            if !rooms.contains(&room) {
                rooms.push(room);
            }
            n += 1;
        }
    }
    {
        let mut mark = tx.prepare_cached(
            "INSERT INTO meta (key, value) VALUES ('raw_before:' || ?1, ?2)
             ON CONFLICT (key) DO UPDATE SET
               value = max(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER))",
        )?;
        for room in &rooms {
            mark.execute(params![room, cutoff])?;
        }
    }
    tx.commit()?;
    Ok(n)
}

/// Writes `batch` in one transaction (one fsync with `synchronous = FULL`): the raw
/// rows, and each reading added to the rollup tiers (one UPSERT per bucket touched).
pub(super) fn write(
    conn: &mut Connection,
    rollups: &mut Rollups,
    seqs: &mut Seqs,
    batch: &[(Ticket, Msg)],
) -> rusqlite::Result<()> {
    let now = crate::clock::now_ms();
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
        let mut unmark_room =
            tx.prepare_cached("DELETE FROM meta WHERE key = 'raw_before:' || ?1")?;
        let mut last: Vec<(&str, u64)> = Vec::new();
        for (_, msg) in batch {
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
                    let name = (r.room.clone(), r.key.device.clone(), r.key.metric.clone());
                    rollups.add(&tx, &name, r.ts, r.value, now)?;
                    if let Some(seq) = r.seq {
                        seqs.add(&tx, &r.room, &r.key.device, seq)?;
                    }
                    match last.iter_mut().find(|(room, _)| *room == &*r.room) {
                        Some(entry) => entry.1 = entry.1.max(r.offset),
                        None => last.push((&r.room, r.offset)),
                    }
                }
                Msg::Room { room, epoch } => {
                    clear_room.execute(params![&**room])?;
                    unmark_room.execute(params![&**room])?;
                    rollups.clear_room(&tx, room)?;
                    seqs.clear_room(&tx, room)?;
                    new_room.execute(params![&**room, &**epoch])?;
                    last.retain(|(r, _)| *r != &**room);
                }
            }
        }
        let mut set_last = tx.prepare_cached(
            "UPDATE rooms SET last_offset = max(last_offset, ?2) WHERE room = ?1",
        )?;
        for (room, offset) in last {
            set_last.execute(params![room, offset as i64])?;
        }
        rollups.write(&tx)?;
        seqs.write(&tx, now)?;
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::{CommitTimes, COMMITS_REMEMBERED};
    use std::time::Duration;

    #[test]
    fn a_deadline_allows_for_the_slowest_recent_commit_until_it_is_forgotten() {
        let ms = Duration::from_millis;
        let mut times = CommitTimes::default();
        assert_eq!(times.slowest(), Duration::ZERO);
        times.record(ms(4));
        times.record(ms(30));
        times.record(ms(3));
        assert_eq!(times.slowest(), ms(30), "one slow fsync is remembered");
        for _ in 0..COMMITS_REMEMBERED - 1 {
            times.record(ms(4));
        }
        assert_eq!(
            times.slowest(),
            ms(4),
            "until as many commits have followed it"
        );
    }
}
