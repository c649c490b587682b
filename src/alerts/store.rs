//! Alert state on disk: the live instances and the history of transitions, in tables of
//! their own (`alert_instances`, `alert_transitions`) in the hub's SQLite file, through a
//! connection of their own, so the history store knows nothing of them.
//!
//! The room records a transition without waiting: it goes into a bounded queue
//! ([`QUEUE`]) that one writer thread drains; a full queue drops it and counts
//! (`telehub_alerts_store_dropped_total`). At start-up the live instances are read back,
//! so a firing alert is still firing after a restart, with no new transition; so are the
//! rules made over REST (`alert_rules`, one JSON rule per row).
//!
//! `alert_outbox` holds each notification from the moment it is queued for a sink until
//! that sink has delivered it or given up on it: what a stopping (or crashing) hub had
//! not sent yet is sent after the restart. Delivery is at least once: a hub that dies
//! between a delivery and the row's delete sends that notification again.

use std::path::Path;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use prometheus_client::metrics::counter::Counter;
use rusqlite::{params, Connection};
use tracing::warn;

use super::eval::{Ack, Instance, State, Transition};
use super::rule::Severity;

/// Transitions waiting for the writer at most; past it they are dropped and counted.
pub(crate) const QUEUE: usize = 4_096;
/// Transitions older than this are deleted (30 days).
pub(crate) const RETENTION_MS: i64 = 30 * 86_400_000;

/// Why the alert tables cannot be used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AlertStoreError {
    #[error("alert store {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
}

/// A live instance as stored.
pub(crate) struct Stored {
    pub rule: Arc<str>,
    pub room: Arc<str>,
    pub device: String,
    pub metric: String,
    pub instance: Instance,
}

enum Op {
    Transition(Box<Transition>, i64),
    Ack {
        rule: Arc<str>,
        room: Arc<str>,
        device: Arc<str>,
        metric: Arc<str>,
        ack: Ack,
    },
    /// A run-time rule made or changed (its JSON), or deleted (`None`).
    Rule(Arc<str>, Option<String>),
    /// A silence made (its JSON and end), or deleted (`None`).
    Silence(Arc<str>, Option<(String, i64)>),
    /// A notification queued for a sink: (id, sink, transition).
    Outbox(i64, Arc<str>, Box<Transition>),
    /// Notifications a sink is done with (delivered, or given up on).
    Sent(Vec<i64>),
    Stop,
}

/// A notification a sink had not delivered when the hub stopped.
pub(crate) struct Unsent {
    pub id: i64,
    pub sink: String,
    pub transition: Transition,
}

/// One stored transition, as `GET /api/alerts/history` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Recorded {
    /// When the hub recorded it (epoch ms, hub clock).
    pub at: i64,
    pub rule: String,
    pub room: String,
    pub device: String,
    pub metric: String,
    pub state: String,
    pub value: f64,
    pub since: i64,
    pub severity: String,
}

/// The writer's queue and thread, and a connection of its own for reading history.
pub(crate) struct AlertStore {
    tx: SyncSender<Op>,
    reader: Mutex<Connection>,
    thread: Mutex<Option<JoinHandle<()>>>,
    dropped: Counter,
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
CREATE TABLE IF NOT EXISTS alert_instances (
    rule TEXT NOT NULL, room TEXT NOT NULL, device TEXT NOT NULL, metric TEXT NOT NULL,
    state TEXT NOT NULL, value REAL NOT NULL, since INTEGER NOT NULL, severity TEXT NOT NULL,
    ack_by TEXT, ack_at INTEGER,
    PRIMARY KEY (rule, room, device, metric)
);
CREATE TABLE IF NOT EXISTS alert_transitions (
    at INTEGER NOT NULL, rule TEXT NOT NULL, room TEXT NOT NULL, device TEXT NOT NULL,
    metric TEXT NOT NULL, state TEXT NOT NULL, value REAL NOT NULL, since INTEGER NOT NULL,
    severity TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_transitions_at ON alert_transitions (at);
CREATE TABLE IF NOT EXISTS alert_rules (
    id TEXT PRIMARY KEY NOT NULL, json TEXT NOT NULL, position INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_silences (
    id TEXT PRIMARY KEY NOT NULL, json TEXT NOT NULL, ends_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_outbox (
    id INTEGER PRIMARY KEY NOT NULL, sink TEXT NOT NULL,
    rule TEXT NOT NULL, room TEXT NOT NULL, device TEXT NOT NULL, metric TEXT NOT NULL,
    state TEXT NOT NULL, was TEXT, value REAL NOT NULL, since INTEGER NOT NULL,
    severity TEXT NOT NULL
);
";

/// What the store held at start-up.
pub(crate) struct Loaded {
    /// The live instances.
    pub live: Vec<Stored>,
    /// The rules made over REST, in the order they were made (as JSON).
    pub rules: Vec<String>,
    /// The silences not yet over (as JSON), oldest first.
    pub silences: Vec<String>,
    /// The notifications not yet delivered, oldest first.
    pub unsent: Vec<Unsent>,
}

fn severity(s: &str) -> Severity {
    match s {
        "info" => Severity::Info,
        "critical" => Severity::Critical,
        _ => Severity::Warning,
    }
}

fn open(path: &Path) -> Result<Connection, AlertStoreError> {
    let err = |source| AlertStoreError::Sqlite {
        path: path.display().to_string(),
        source,
    };
    let conn = Connection::open(path).map_err(err)?;
    // The history store writes the same file; wait for its commits instead of failing.
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(err)?;
    conn.execute_batch(SCHEMA).map_err(err)?;
    Ok(conn)
}

impl AlertStore {
    /// Opens (creating) the tables in the database at `path`, reads back the live
    /// instances, and starts the writer.
    pub(crate) fn open(
        path: &Path,
        dropped: Counter,
    ) -> Result<(AlertStore, Loaded), AlertStoreError> {
        let conn = open(path)?;
        let err = |source| AlertStoreError::Sqlite {
            path: path.display().to_string(),
            source,
        };
        let live = {
            let mut stmt = conn
                .prepare(
                    "SELECT rule, room, device, metric, state, value, since, severity, ack_by, ack_at
                     FROM alert_instances",
                )
                .map_err(err)?;
            let rows = stmt
                .query_map([], |r| {
                    let state: String = r.get(4)?;
                    let sev: String = r.get(7)?;
                    let ack_by: Option<String> = r.get(8)?;
                    let ack_at: Option<i64> = r.get(9)?;
                    Ok(Stored {
                        rule: r.get::<_, String>(0)?.into(),
                        room: r.get::<_, String>(1)?.into(),
                        device: r.get(2)?,
                        metric: r.get(3)?,
                        instance: Instance {
                            state: State::parse(&state).unwrap_or(State::Firing),
                            value: r.get(5)?,
                            since: r.get(6)?,
                            severity: severity(&sev),
                            ack: ack_by.zip(ack_at).map(|(by, at)| Ack { by, at }),
                        },
                    })
                })
                .map_err(err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(err)?
        };
        let rules = {
            let mut stmt = conn
                .prepare("SELECT json FROM alert_rules ORDER BY position")
                .map_err(err)?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(err)?
        };
        let silences = {
            conn.execute(
                "DELETE FROM alert_silences WHERE ends_at <= ?1",
                [crate::clock::now_ms()],
            )
            .map_err(err)?;
            let mut stmt = conn
                .prepare("SELECT json FROM alert_silences ORDER BY rowid")
                .map_err(err)?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(err)?
        };
        let unsent = {
            let mut stmt = conn
                .prepare(
                    "SELECT id, sink, rule, room, device, metric, state, was, value, since, severity
                     FROM alert_outbox ORDER BY id",
                )
                .map_err(err)?;
            let rows = stmt
                .query_map([], |r| {
                    let state: String = r.get(6)?;
                    let was: Option<String> = r.get(7)?;
                    let sev: String = r.get(10)?;
                    Ok(Unsent {
                        id: r.get(0)?,
                        sink: r.get(1)?,
                        transition: Transition {
                            rule: r.get::<_, String>(2)?.into(),
                            room: r.get::<_, String>(3)?.into(),
                            device: r.get::<_, String>(4)?.into(),
                            metric: r.get::<_, String>(5)?.into(),
                            state: State::parse(&state).unwrap_or(State::Firing),
                            was: was.as_deref().and_then(State::parse),
                            value: r.get(8)?,
                            since: r.get(9)?,
                            severity: severity(&sev),
                        },
                    })
                })
                .map_err(err)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(err)?
        };
        let reader = open(path)?;
        let (tx, rx) = sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("alert-store".into())
            .spawn(move || write_loop(conn, rx))
            .map_err(|e| AlertStoreError::Sqlite {
                path: path.display().to_string(),
                source: rusqlite::Error::ToSqlConversionFailure(Box::new(e)),
            })?;
        Ok((
            AlertStore {
                tx,
                reader: Mutex::new(reader),
                thread: Mutex::new(Some(thread)),
                dropped,
            },
            Loaded {
                live,
                rules,
                silences,
                unsent,
            },
        ))
    }

    fn send(&self, op: Op) {
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) = self.tx.try_send(op) {
            self.dropped.inc();
        }
    }

    /// Queues a transition (`at`: the hub's clock). Never waits.
    pub(crate) fn transition(&self, t: &Transition, at: i64) {
        self.send(Op::Transition(Box::new(t.clone()), at));
    }

    /// Queues an ack of a live instance. Never waits.
    pub(crate) fn ack(&self, t: (&Arc<str>, &Arc<str>, &Arc<str>, &Arc<str>), ack: Ack) {
        self.send(Op::Ack {
            rule: t.0.clone(),
            room: t.1.clone(),
            device: t.2.clone(),
            metric: t.3.clone(),
            ack,
        });
    }

    /// Queues a run-time rule's new JSON (`None`: deleted). False if the queue is full:
    /// the caller refuses the change rather than lose it.
    pub(crate) fn rule(&self, id: &Arc<str>, json: Option<String>) -> bool {
        self.tx.try_send(Op::Rule(id.clone(), json)).is_ok()
    }

    /// Queues a silence made (its JSON and end) or deleted (`None`). False if the queue
    /// is full: the caller refuses the change rather than lose it.
    pub(crate) fn silence(&self, id: &Arc<str>, row: Option<(String, i64)>) -> bool {
        self.tx.try_send(Op::Silence(id.clone(), row)).is_ok()
    }

    /// Queues a notification for sink `sink` under `id`, kept until [`Self::sent`].
    /// False (counted as dropped) if the queue is full: the notification then lives in
    /// the sink's queue only.
    pub(crate) fn outbox(&self, id: i64, sink: &Arc<str>, t: &Transition) -> bool {
        match self
            .tx
            .try_send(Op::Outbox(id, sink.clone(), Box::new(t.clone())))
        {
            Ok(()) => true,
            Err(_) => {
                self.dropped.inc();
                false
            }
        }
    }

    /// Queues the delete of notifications a sink is done with. Never waits; a full queue
    /// leaves them to be sent again after a restart (at least once).
    pub(crate) fn sent(&self, ids: Vec<i64>) {
        if !ids.is_empty() {
            self.send(Op::Sent(ids));
        }
    }

    /// The transitions recorded from `from` to `to` (hub clock, inclusive), oldest first,
    /// at most `limit` (the newest ones), optionally of one room. Blocking.
    pub(crate) fn history(
        &self,
        (from, to): (i64, i64),
        room: Option<&str>,
        limit: usize,
    ) -> rusqlite::Result<Vec<Recorded>> {
        let conn = super::lock(&self.reader);
        let mut stmt = conn.prepare_cached(
            "SELECT at, rule, room, device, metric, state, value, since, severity
             FROM alert_transitions
             WHERE at >= ?1 AND at <= ?2 AND (?3 IS NULL OR room = ?3)
             ORDER BY at DESC, rowid DESC LIMIT ?4",
        )?;
        let rows = stmt.query_map(params![from, to, room, limit as i64], |r| {
            Ok(Recorded {
                at: r.get(0)?,
                rule: r.get(1)?,
                room: r.get(2)?,
                device: r.get(3)?,
                metric: r.get(4)?,
                state: r.get(5)?,
                value: r.get(6)?,
                since: r.get(7)?,
                severity: r.get(8)?,
            })
        })?;
        let mut out = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        out.reverse();
        Ok(out)
    }

    /// Writes what is queued and stops the writer (blocking: call off the runtime).
    pub(crate) fn close(&self) {
        let _ = self.tx.send(Op::Stop);
        let thread = super::lock(&self.thread).take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

fn write_loop(mut conn: Connection, rx: Receiver<Op>) {
    let mut written = 0u64;
    while let Ok(first) = rx.recv() {
        // Whatever else is queued goes in the same transaction.
        let mut ops = vec![first];
        while let Ok(op) = rx.try_recv() {
            ops.push(op);
        }
        let stop = ops.iter().any(|o| matches!(o, Op::Stop));
        if let Err(e) = write(&mut conn, &ops) {
            warn!(error = %e, "alert store write failed");
        }
        written += ops.len() as u64;
        if written >= 1_000 {
            written = 0;
            if let Some(last) = ops.iter().rev().find_map(|o| match o {
                Op::Transition(_, at) => Some(*at),
                _ => None,
            }) {
                let _ = conn.execute(
                    "DELETE FROM alert_transitions WHERE at < ?1",
                    [last - RETENTION_MS],
                );
            }
        }
        if stop {
            return;
        }
    }
}

fn write(conn: &mut Connection, ops: &[Op]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for op in ops {
        match op {
            Op::Transition(t, at) => {
                tx.execute(
                    "INSERT INTO alert_transitions (at, rule, room, device, metric, state, value, since, severity)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                    params![
                        at,
                        &*t.rule,
                        &*t.room,
                        &*t.device,
                        &*t.metric,
                        t.state.as_str(),
                        t.value,
                        t.since,
                        t.severity.as_str()
                    ],
                )?;
                if t.state == State::Resolved {
                    tx.execute(
                        "DELETE FROM alert_instances WHERE rule = ?1 AND room = ?2 AND device = ?3 AND metric = ?4",
                        params![&*t.rule, &*t.room, &*t.device, &*t.metric],
                    )?;
                } else {
                    tx.execute(
                        "INSERT INTO alert_instances (rule, room, device, metric, state, value, since, severity)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                         ON CONFLICT (rule, room, device, metric) DO UPDATE SET
                           state = excluded.state, value = excluded.value, since = excluded.since,
                           severity = excluded.severity",
                        params![
                            &*t.rule,
                            &*t.room,
                            &*t.device,
                            &*t.metric,
                            t.state.as_str(),
                            t.value,
                            t.since,
                            t.severity.as_str()
                        ],
                    )?;
                }
            }
            Op::Ack {
                rule,
                room,
                device,
                metric,
                ack,
            } => {
                tx.execute(
                    "UPDATE alert_instances SET ack_by = ?5, ack_at = ?6
                     WHERE rule = ?1 AND room = ?2 AND device = ?3 AND metric = ?4",
                    params![&**rule, &**room, &**device, &**metric, ack.by, ack.at],
                )?;
            }
            Op::Rule(id, Some(json)) => {
                tx.execute(
                    "INSERT INTO alert_rules (id, json, position)
                     VALUES (?1, ?2, (SELECT COALESCE(MAX(position), 0) + 1 FROM alert_rules))
                     ON CONFLICT (id) DO UPDATE SET json = excluded.json",
                    params![&**id, json],
                )?;
            }
            Op::Rule(id, None) => {
                tx.execute("DELETE FROM alert_rules WHERE id = ?1", [&**id])?;
            }
            Op::Silence(id, Some((json, ends_at))) => {
                tx.execute(
                    "INSERT OR REPLACE INTO alert_silences (id, json, ends_at) VALUES (?1, ?2, ?3)",
                    params![&**id, json, ends_at],
                )?;
            }
            Op::Silence(id, None) => {
                tx.execute("DELETE FROM alert_silences WHERE id = ?1", [&**id])?;
            }
            Op::Outbox(id, sink, t) => {
                tx.execute(
                    "INSERT OR REPLACE INTO alert_outbox
                       (id, sink, rule, room, device, metric, state, was, value, since, severity)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    params![
                        id,
                        &**sink,
                        &*t.rule,
                        &*t.room,
                        &*t.device,
                        &*t.metric,
                        t.state.as_str(),
                        t.was.map(State::as_str),
                        t.value,
                        t.since,
                        t.severity.as_str()
                    ],
                )?;
            }
            Op::Sent(ids) => {
                let mut stmt = tx.prepare_cached("DELETE FROM alert_outbox WHERE id = ?1")?;
                for id in ids {
                    stmt.execute([id])?;
                }
            }
            Op::Stop => {}
        }
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(state: State, value: f64) -> Transition {
        Transition {
            rule: "hot".into(),
            severity: Severity::Critical,
            room: "g".into(),
            device: "d".into(),
            metric: "t".into(),
            state,
            value,
            since: 7,
            was: None,
        }
    }

    #[test]
    fn live_instances_come_back_and_resolved_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("telehub.db");
        let (store, loaded) = AlertStore::open(&path, Counter::default()).unwrap();
        assert!(loaded.live.is_empty() && loaded.rules.is_empty());
        assert!(store.rule(&"r1".into(), Some("{}".into())));
        store.transition(&t(State::Firing, 40.0), 1);
        store.ack(
            (&"hot".into(), &"g".into(), &"d".into(), &"t".into()),
            Ack {
                by: "alice".into(),
                at: 9,
            },
        );
        store.close();
        let (store, loaded) = AlertStore::open(&path, Counter::default()).unwrap();
        assert_eq!(loaded.rules, ["{}"]);
        let live = loaded.live;
        assert_eq!(live.len(), 1);
        let i = &live[0].instance;
        assert_eq!(
            (i.state, i.value, i.since, i.severity),
            (State::Firing, 40.0, 7, Severity::Critical)
        );
        assert_eq!(i.ack.as_ref().map(|a| a.by.as_str()), Some("alice"));
        store.transition(&t(State::Resolved, 30.0), 2);
        assert!(store.rule(&"r1".into(), None));
        store.close();
        let (store, loaded) = AlertStore::open(&path, Counter::default()).unwrap();
        assert!(loaded.live.is_empty() && loaded.rules.is_empty());
        store.close();
        let conn = Connection::open(&path).unwrap();
        let n: i64 = conn
            .query_row("SELECT COUNT(*) FROM alert_transitions", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 2);
    }

    #[test]
    fn notifications_not_yet_sent_come_back_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("telehub.db");
        let (store, _) = AlertStore::open(&path, Counter::default()).unwrap();
        let hook: Arc<str> = "hook".into();
        let mut firing = t(State::Firing, 40.0);
        firing.was = Some(State::Pending);
        assert!(store.outbox(1, &hook, &t(State::Pending, 36.0)));
        assert!(store.outbox(2, &hook, &firing));
        store.sent(vec![1]);
        store.close();
        let (store, loaded) = AlertStore::open(&path, Counter::default()).unwrap();
        assert_eq!(loaded.unsent.len(), 1);
        let u = &loaded.unsent[0];
        let tr = &u.transition;
        assert_eq!((u.id, u.sink.as_str()), (2, "hook"));
        assert_eq!(
            (tr.state, tr.was, tr.value, tr.since, tr.severity),
            (
                State::Firing,
                Some(State::Pending),
                40.0,
                7,
                Severity::Critical
            )
        );
        assert_eq!(
            (&*tr.rule, &*tr.room, &*tr.device, &*tr.metric),
            ("hot", "g", "d", "t")
        );
        store.sent(vec![2]);
        store.close();
        let (store, loaded) = AlertStore::open(&path, Counter::default()).unwrap();
        assert!(loaded.unsent.is_empty());
        store.close();
    }
}
