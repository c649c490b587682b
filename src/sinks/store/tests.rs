//! The store's tests: a hub's history written, reopened and pruned through SQLite.

use super::STORE_QUEUE;
use crate::sinks::history::durable::Queued;
use crate::sinks::history::{History, HistoryConfig, Query, QueryResult, Record, SeriesCaps};
use std::sync::Arc;

fn cfg(dir: &std::path::Path) -> HistoryConfig {
    HistoryConfig {
        data_dir: dir.to_path_buf(),
        flush_interval_ms: 50,
        ..HistoryConfig::default()
    }
}

fn record(h: &History, room: &str, n: usize) {
    let room = h.room(&Arc::from(room));
    let d: Arc<str> = Arc::from("dev");
    let now = crate::clock::now_ms();
    for i in 0..n {
        room.record(&Record {
            device: &d,
            metric: "t",
            unit: Some("C"),
            ts: now - 1000 + i as i64,
            value: i as f64,
            seq: Some(i as u64),
        })
        .unwrap();
    }
}

#[test]
fn a_reopened_store_keeps_epochs_offsets_and_points() {
    let dir = tempfile::tempdir().unwrap();
    let h = History::open(cfg(dir.path())).unwrap();
    record(&h, "a", 10);
    record(&h, "b", 3);
    let epoch = h.get("a").unwrap().epoch().clone();
    h.close();
    drop(h);

    let h = History::open(cfg(dir.path())).unwrap();
    let a = h.get("a").unwrap();
    assert_eq!(a.epoch(), &epoch);
    assert_eq!(a.offset(), 10);
    assert_eq!(h.get("b").unwrap().offset(), 3);
    let QueryResult::Points(p) = a.query(&Query::default()).unwrap() else {
        panic!()
    };
    assert_eq!(p.len(), 10);
    // Replay after a restart is exact, and offsets continue.
    let mut got = Vec::new();
    let r = a.replay(7, Some(&epoch), |e| got.push((e.offset, e.seq)));
    assert!(r.recovered);
    assert_eq!(got, [(8, Some(7)), (9, Some(8)), (10, Some(9))]);
    record(&h, "a", 1);
    assert_eq!(a.offset(), 11);
    h.close();
}

#[test]
fn rows_past_retention_are_deleted_and_not_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let config = HistoryConfig {
        retention_ms: 5_000,
        ..cfg(dir.path())
    };
    let h = History::open(config.clone()).unwrap();
    let room = h.room(&Arc::from("a"));
    let d: Arc<str> = Arc::from("dev");
    let now = crate::clock::now_ms();
    for (ts, v) in [(now - 60_000, 1.0), (now - 30_000, 2.0), (now, 3.0)] {
        room.record(&Record {
            device: &d,
            metric: "t",
            unit: None,
            ts,
            value: v,
            seq: None,
        })
        .unwrap();
    }
    h.flush();
    // The writer's first deadline enforces retention right after its commit.
    let conn = rusqlite::Connection::open(dir.path().join(super::DB_FILE)).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut n: i64 = -1;
    while n != 1 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        n = conn
            .query_row("SELECT count(*) FROM readings", [], |r| r.get(0))
            .unwrap();
    }
    assert_eq!(n, 1, "only the recent row is left");
    h.close();
    drop(h);
    let h = History::open(config).unwrap();
    let a = h.get("a").unwrap();
    assert_eq!(a.offset(), 3, "offsets continue past deleted rows");
    let QueryResult::Points(p) = a.query(&Query::default()).unwrap() else {
        panic!()
    };
    assert_eq!(p.iter().map(|p| p.value).collect::<Vec<_>>(), [3.0]);
    h.close();
}

#[test]
fn an_unclean_stop_keeps_readings_but_changes_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let h = History::open(cfg(dir.path())).unwrap();
    record(&h, "a", 4);
    let epoch = h.get("a").unwrap().epoch().clone();
    h.flush();
    // No close: as if the process had been killed.
    std::mem::forget(h);
    let h = History::open(cfg(dir.path())).unwrap();
    let a = h.get("a").unwrap();
    assert_ne!(a.epoch(), &epoch);
    assert_eq!(a.offset(), 4);
    let mut n = 0;
    let r = a.replay(2, Some(&epoch), |_| n += 1);
    assert!(!r.recovered);
    assert_eq!(n, 4);
    h.close();
}

#[test]
fn a_steady_stream_is_committed_every_flush_interval() {
    let dir = tempfile::tempdir().unwrap();
    let h = History::open(cfg(dir.path())).unwrap();
    let room = h.room(&Arc::from("a"));
    let d: Arc<str> = Arc::from("dev");
    let conn = rusqlite::Connection::open(dir.path().join(super::DB_FILE)).unwrap();
    let count = || -> i64 {
        conn.query_row("SELECT count(*) FROM readings", [], |r| r.get(0))
            .unwrap()
    };
    // A reading every 0.2 ms (or as fast as a loaded machine allows) for 700 ms:
    // the writer's queue is busy throughout, yet what was recorded by 200 ms must be
    // committed by 600 ms (8 flush intervals later) while the stream goes on.
    let start = std::time::Instant::now();
    let ms = std::time::Duration::from_millis;
    let mut i: i64 = 0;
    let mut by_200ms = None;
    let mut checked = None;
    while start.elapsed() < ms(700) {
        room.record(&Record {
            device: &d,
            metric: "t",
            unit: None,
            ts: crate::clock::now_ms(),
            value: 0.0,
            seq: None,
        })
        .unwrap();
        i += 1;
        if by_200ms.is_none() && start.elapsed() >= ms(200) {
            by_200ms = Some(i);
        }
        if checked.is_none() && start.elapsed() >= ms(600) {
            checked = Some(count());
        }
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    let (by_200ms, checked) = (by_200ms.unwrap_or(0), checked.unwrap_or(0));
    assert!(
        by_200ms > 0 && checked >= by_200ms,
        "recorded {by_200ms} by 200 ms, committed {checked} by 600 ms"
    );
    h.close();
    assert_eq!(count(), i);
}

#[test]
fn readings_are_committed_within_a_flush_interval_without_close() {
    let dir = tempfile::tempdir().unwrap();
    let h = History::open(cfg(dir.path())).unwrap();
    record(&h, "a", 5);
    // Read the file with a second connection while the writer still runs: the rows
    // appear with no flush and no close (polled, so a loaded machine does not fail
    // the test; the kill -9 test bounds the delay).
    let conn = rusqlite::Connection::open(dir.path().join(super::DB_FILE)).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut n: i64 = 0;
    while n < 5 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        n = conn
            .query_row("SELECT count(*) FROM readings", [], |r| r.get(0))
            .unwrap();
    }
    assert_eq!(n, 5);
    let last: i64 = conn
        .query_row("SELECT last_offset FROM rooms WHERE room = 'a'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(last, 5);
    h.close();
}

#[test]
fn memory_mode_writes_nothing_and_restarts_with_new_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.persist = false;
    let h = History::open(c.clone()).unwrap();
    record(&h, "a", 2);
    let e1 = h.get("a").unwrap().epoch().clone();
    drop(h);
    let h = History::open(c).unwrap();
    assert!(h.get("a").is_none());
    assert_ne!(h.room(&Arc::from("a")).epoch(), &e1);
    assert!(!dir.path().join(super::DB_FILE).exists());
}

#[test]
fn every_commit_is_timed_into_the_histogram_given_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let commits = prometheus_client::metrics::histogram::Histogram::new([0.001, 1.0]);
    let h = History::open_timed(cfg(dir.path()), Some(commits.clone())).unwrap();
    record(&h, "r", 3);
    h.flush();
    assert!(commits.count() >= 1, "the flush committed");
    let before = commits.count();
    h.flush();
    assert_eq!(commits.count(), before, "an empty batch is no commit");
    h.close();
}

fn reading<'a>(d: &'a Arc<str>, ts: i64, seq: u64) -> Record<'a> {
    Record {
        device: d,
        metric: "t",
        unit: None,
        ts,
        value: seq as f64,
        seq: Some(seq),
    }
}

#[test]
fn tickets_follow_the_queue_and_are_committed_by_a_flush() {
    let dir = tempfile::tempdir().unwrap();
    let h = History::open(cfg(dir.path())).unwrap();
    let commits = h.commits().unwrap();
    let room = h.room(&Arc::from("a"));
    let d: Arc<str> = Arc::from("dev");
    let now = crate::clock::now_ms();
    let tickets: Vec<Queued> = (0..3)
        .map(|i| {
            room.record_capped(&reading(&d, now, i), SeriesCaps::NONE)
                .unwrap()
                .queued
                .unwrap()
        })
        .collect();
    // Ticket 1 is the room's epoch record.
    assert_eq!(
        tickets,
        [Queued::Ticket(2), Queued::Ticket(3), Queued::Ticket(4)]
    );
    assert!(h.flush());
    assert!(commits.borrow().committed >= 4);
    assert_eq!(commits.borrow().failing, None);
    h.close();
}

/// A second connection holding SQLite's write lock makes every commit fail (busy), as a
/// full disk or a stuck reader-writer would: nothing is acknowledged meanwhile, the
/// queue fills and refuses readings but never a room's epoch, and once the lock goes
/// everything queued is written.
#[test]
fn failing_commits_keep_their_batch_refuse_readings_when_full_and_never_a_room() {
    let dir = tempfile::tempdir().unwrap();
    let h = History::open(cfg(dir.path())).unwrap();
    let commits = h.commits().unwrap();
    let a = h.room(&Arc::from("a"));
    assert!(h.flush());
    let blocker = rusqlite::Connection::open(dir.path().join(super::DB_FILE)).unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();

    let d: Arc<str> = Arc::from("dev");
    let now = crate::clock::now_ms();
    let first = a
        .record_capped(&reading(&d, now, 0), SeriesCaps::NONE)
        .unwrap();
    assert!(!h.flush(), "a commit behind the lock fails");
    let failing = h.store_failing().expect("the store says it fails");
    assert!(
        failing.contains("locked") || failing.contains("busy"),
        "{failing}"
    );
    let Some(Queued::Ticket(t)) = first.queued else {
        panic!("{first:?}")
    };
    assert!(commits.borrow().committed < t, "not acknowledged");
    assert!(
        h.store_commit_failures() >= 4,
        "first attempt and three retries"
    );

    // The queue fills up; readings past it are refused, a new room's epoch is not.
    let mut queued = 1u64;
    let mut refused = 0u64;
    for i in 1..=(STORE_QUEUE as u64 + 10) {
        match a
            .record_capped(&reading(&d, now, i), SeriesCaps::NONE)
            .unwrap()
            .queued
        {
            Some(Queued::Ticket(_)) => queued += 1,
            _ => refused += 1,
        }
    }
    assert!(refused >= 10, "refused {refused}");
    assert_eq!(h.store_dropped(), refused);
    let b = h.room(&Arc::from("b"));
    let b_epoch = b.epoch().clone();

    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !h.flush() && std::time::Instant::now() < deadline {}
    assert!(h.flush(), "commits succeed once the lock is gone");
    assert_eq!(h.store_failing(), None);
    h.close();
    drop(h);

    let h = History::open(cfg(dir.path())).unwrap();
    assert_eq!(
        h.get("b").expect("room b's epoch was kept").epoch(),
        &b_epoch
    );
    let conn = rusqlite::Connection::open(dir.path().join(super::DB_FILE)).unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM readings WHERE room = 'a'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(
        rows as u64, queued,
        "every queued reading was written, once"
    );
    h.close();
}

#[test]
fn a_restart_streams_the_stored_rows_into_bounded_rings() {
    let dir = tempfile::tempdir().unwrap();
    let config = HistoryConfig {
        points_per_series: 5,
        room_log_len: 8,
        ..cfg(dir.path())
    };
    let h = History::open(config.clone()).unwrap();
    record(&h, "a", 50);
    h.close();
    drop(h);
    let h = History::open(config).unwrap();
    let a = h.get("a").unwrap();
    assert_eq!(a.offset(), 50, "offsets continue");
    let QueryResult::Points(p) = a.query(&Query::default()).unwrap() else {
        panic!()
    };
    // Memory holds what the caps say, the newest; the file keeps every row.
    assert_eq!(
        p.iter().map(|p| p.value).collect::<Vec<_>>(),
        [45.0, 46.0, 47.0, 48.0, 49.0]
    );
    assert_eq!(h.log_entries(), 8);
    let conn = rusqlite::Connection::open(dir.path().join(super::DB_FILE)).unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM readings", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 50);
    h.close();
}

#[test]
fn the_file_keeps_retention_ms_while_memory_and_a_restart_hold_memory_ms() {
    let dir = tempfile::tempdir().unwrap();
    let config = HistoryConfig {
        memory_ms: 10_000,
        retention_ms: 3_600_000,
        ..cfg(dir.path())
    };
    let h = History::open(config.clone()).unwrap();
    let room = h.room(&Arc::from("a"));
    let d: Arc<str> = Arc::from("dev");
    let now = crate::clock::now_ms();
    for (i, ts) in [now - 600_000, now - 60_000, now].into_iter().enumerate() {
        room.record(&reading(&d, ts, i as u64)).unwrap();
    }
    h.prune(now);
    let QueryResult::Points(p) = room.query(&Query::default()).unwrap() else {
        panic!()
    };
    assert_eq!(p.len(), 1, "memory holds the last 10 s");
    h.close();
    drop(h);
    let conn = rusqlite::Connection::open(dir.path().join(super::DB_FILE)).unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM readings", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 3, "the file keeps the hour");
    let h = History::open(config).unwrap();
    let QueryResult::Points(p) = h.get("a").unwrap().query(&Query::default()).unwrap() else {
        panic!()
    };
    assert_eq!(p.len(), 1, "a restart loads the memory window only");
    assert_eq!(h.get("a").unwrap().offset(), 3);
    h.close();
}

#[test]
fn a_durable_room_idle_past_the_memory_window_keeps_its_epoch_rows_and_rollups() {
    let dir = tempfile::tempdir().unwrap();
    let config = HistoryConfig {
        memory_ms: 10_000,
        ..cfg(dir.path())
    };
    let h = History::open(config).unwrap();
    let name: Arc<str> = Arc::from("quiet");
    let room = h.room(&name);
    let epoch = room.epoch().to_string();
    let d: Arc<str> = Arc::from("dev");
    let now = crate::clock::now_ms();
    room.record(&reading(&d, now - 600_000, 1)).unwrap();
    drop(room);
    assert!(h.flush());
    // Every point is past memory and nothing holds the room.
    h.prune(now);
    let back = h.room(&name);
    assert_eq!(&**back.epoch(), epoch.as_str(), "the same epoch");
    back.record(&reading(&d, now, 2)).unwrap();
    assert!(h.flush());
    let conn = rusqlite::Connection::open(dir.path().join(super::DB_FILE)).unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM readings", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 2, "the old row is kept");
    let counted: i64 = conn
        .query_row("SELECT sum(count) FROM rollup_60000", [], |r| r.get(0))
        .unwrap();
    assert_eq!(counted, 2, "and so are its rollups");
    h.close();
}

#[test]
fn a_busy_stream_costs_one_commit_per_flush_interval() {
    // Readings arrive during every commit (one every 0.2 ms, or as fast as a loaded
    // machine allows). They wait for their own deadline, not for an immediate second
    // commit: counted, so no timing bound can flake, only the number of commits.
    let dir = tempfile::tempdir().unwrap();
    let interval = std::time::Duration::from_millis(100);
    let config = HistoryConfig {
        flush_interval_ms: interval.as_millis() as u64,
        ..cfg(dir.path())
    };
    let commits = prometheus_client::metrics::histogram::Histogram::new([0.001, 1.0]);
    let h = History::open_timed(config, Some(commits.clone())).unwrap();
    let room = h.room(&Arc::from("a"));
    let d: Arc<str> = Arc::from("dev");
    let start = std::time::Instant::now();
    let mut n = 0u64;
    while start.elapsed() < std::time::Duration::from_millis(1_000) {
        room.record(&reading(&d, crate::clock::now_ms(), n))
            .unwrap();
        n += 1;
        std::thread::sleep(std::time::Duration::from_micros(200));
    }
    let elapsed = start.elapsed();
    let made = commits.count();
    // Consecutive commits are at least half an interval apart (the writer's wait is a
    // flush interval less the slowest recent commit, never under half of one); with a
    // fast disk about a whole one. Before, each commit was followed by another for what
    // arrived during it, back to back while the stream went on.
    let most = (elapsed.as_secs_f64() / (interval.as_secs_f64() / 2.0)).ceil() as u64 + 1;
    assert!(
        made >= 1 && made <= most,
        "{made} commits for {n} readings in {elapsed:?} (at most {most})"
    );
    h.close();
    let conn = rusqlite::Connection::open(dir.path().join(super::DB_FILE)).unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM readings", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows as u64, n);
}
