//! Saved dashboard layouts: per room, a set of named layouts (which panels, in what
//! order and size, showing which series; which cards are hidden), one of them the
//! default. Kept in the `layouts` table of the hub's SQLite file (`telehub.db` in
//! `history.data_dir`) through a connection of its own, or in an in-memory SQLite
//! database when `history.persist = false`.
//!
//! Not on the data path: read and written by `GET`/`PUT /api/rooms/{room}/layout`
//! ([`crate::api::layout`]) on the blocking pool. Every document is validated here
//! ([`LayoutSet::validate`]) before it is stored, and every size has a named cap.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use telehub_protocol::ids::{valid_id, valid_metric};

use super::history::HistoryConfig;
use super::store::DB_FILE;

/// Largest `PUT` body, in bytes (413 `layout_too_large` past it).
pub(crate) const MAX_BODY_BYTES: u64 = 64 * 1024;
/// Named layouts per room at most.
pub(crate) const MAX_LAYOUTS_PER_ROOM: usize = 16;
/// Panels per layout at most.
pub(crate) const MAX_PANELS: usize = 64;
/// Series one panel overlays at most.
pub(crate) const MAX_SERIES_PER_PANEL: usize = 16;
/// Entries in a layout's device and metric lists (hidden, order) at most.
pub(crate) const MAX_LIST: usize = 256;
/// Longest panel title, in characters.
pub(crate) const MAX_TITLE_CHARS: usize = 80;
/// Rooms with saved layouts at most: a client cannot grow the table without bound by
/// saving layouts for invented room names (409 `layout_rooms_limit` past it).
pub(crate) const MAX_ROOMS: usize = 1_000;
/// How long a write waits for the history writer's transaction on the same file.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// A room's layouts, as `GET` returns and `PUT` takes them.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LayoutSet {
    /// The layout a plain `#/rooms/R` shows; `null` shows the automatic one.
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub layouts: Vec<Layout>,
}

/// One named layout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Layout {
    /// 1 to 64 of `A-Za-z0-9_.-`, unique in the room (`?layout=NAME`).
    pub name: String,
    /// Whether metrics that no panel shows still get an automatic chart after the
    /// panels (new metrics appear by themselves); `false` shows the panels only.
    #[serde(default = "yes")]
    pub auto: bool,
    /// Metrics kept out of the automatic charts.
    #[serde(default)]
    pub hidden_metrics: Vec<String>,
    /// Devices whose cards are hidden.
    #[serde(default)]
    pub hidden_devices: Vec<String>,
    /// Devices whose cards come first, in this order (the rest by name after them).
    #[serde(default)]
    pub device_order: Vec<String>,
    /// The panels, in order (pinned ones are drawn first).
    #[serde(default)]
    pub panels: Vec<Panel>,
}

fn yes() -> bool {
    true
}

/// What a panel draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PanelKind {
    /// Lines over time (the automatic kind).
    Timeseries,
    /// Spans of states (0/1 or enumerated values) over time.
    Timeline,
    /// The latest value, large, with a trend arrow and a sparkline.
    Stat,
    /// The latest value on a scale from `min` to `max`.
    Gauge,
    /// A GPS track from a `lat` and a `lon` series.
    Track,
}

/// How much room a panel takes in the grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PanelSize {
    #[default]
    Normal,
    /// Two columns.
    Wide,
    /// The whole row, taller.
    Full,
}

/// One panel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Panel {
    pub kind: PanelKind,
    /// Shown as the panel's heading; the metric name when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    #[serde(default)]
    pub size: PanelSize,
    #[serde(default)]
    pub pinned: bool,
    /// The series overlaid, 1 to [`MAX_SERIES_PER_PANEL`].
    pub series: Vec<SeriesRef>,
    /// Scale of a gauge (and a fixed value axis of a chart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// A metric, of one device or (without `device`) of every device in the room.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SeriesRef {
    pub metric: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

impl LayoutSet {
    /// Checks what serde cannot; the message names the field that is wrong.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.layouts.len() > MAX_LAYOUTS_PER_ROOM {
            return Err(format!(
                "layouts: at most {MAX_LAYOUTS_PER_ROOM} per room, not {}",
                self.layouts.len()
            ));
        }
        for (i, l) in self.layouts.iter().enumerate() {
            let at = format!("layouts[{i}]");
            if !valid_id(&l.name) {
                return Err(format!(
                    "{at}.name: 1 to 64 of A-Za-z0-9_.- (got {:?})",
                    l.name
                ));
            }
            if self.layouts[..i].iter().any(|o| o.name == l.name) {
                return Err(format!("{at}.name: {:?} is used twice", l.name));
            }
            check_list(&at, "hidden_metrics", &l.hidden_metrics, valid_metric)?;
            check_list(&at, "hidden_devices", &l.hidden_devices, valid_id)?;
            check_list(&at, "device_order", &l.device_order, valid_id)?;
            if l.panels.len() > MAX_PANELS {
                return Err(format!("{at}.panels: at most {MAX_PANELS}"));
            }
            for (j, p) in l.panels.iter().enumerate() {
                p.validate(&format!("{at}.panels[{j}]"))?;
            }
        }
        if let Some(d) = &self.default {
            if !self.layouts.iter().any(|l| &l.name == d) {
                return Err(format!("default: no layout is named {d:?}"));
            }
        }
        Ok(())
    }
}

fn check_list(at: &str, field: &str, list: &[String], ok: fn(&str) -> bool) -> Result<(), String> {
    if list.len() > MAX_LIST {
        return Err(format!("{at}.{field}: at most {MAX_LIST} entries"));
    }
    match list.iter().position(|s| !ok(s)) {
        Some(k) => Err(format!(
            "{at}.{field}[{k}]: not a valid name ({:?})",
            list[k]
        )),
        None => Ok(()),
    }
}

impl Panel {
    fn validate(&self, at: &str) -> Result<(), String> {
        if self.series.is_empty() || self.series.len() > MAX_SERIES_PER_PANEL {
            return Err(format!(
                "{at}.series: 1 to {MAX_SERIES_PER_PANEL} series, not {}",
                self.series.len()
            ));
        }
        for (k, s) in self.series.iter().enumerate() {
            if !valid_metric(&s.metric) {
                return Err(format!("{at}.series[{k}].metric: not a valid metric name"));
            }
            if s.device.as_deref().is_some_and(|d| !valid_id(d)) {
                return Err(format!("{at}.series[{k}].device: not a valid device id"));
            }
        }
        if self.kind == PanelKind::Track && self.series.len() != 2 {
            return Err(format!(
                "{at}.series: a track takes two series, latitude then longitude"
            ));
        }
        if let Some(t) = &self.title {
            if t.chars().count() > MAX_TITLE_CHARS || t.chars().any(char::is_control) {
                return Err(format!(
                    "{at}.title: at most {MAX_TITLE_CHARS} characters, no control characters"
                ));
            }
        }
        for (name, v) in [("min", self.min), ("max", self.max)] {
            if v.is_some_and(|v| !v.is_finite()) {
                return Err(format!("{at}.{name}: must be a finite number"));
            }
        }
        if let (Some(lo), Some(hi)) = (self.min, self.max) {
            if lo >= hi {
                return Err(format!("{at}: min must be below max"));
            }
        }
        Ok(())
    }
}

/// What can go wrong with the layout table.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("cannot create data directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("layouts database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// [`MAX_ROOMS`] rooms have layouts already.
    #[error("{MAX_ROOMS} rooms have saved layouts already; reset one to add another")]
    RoomsLimit,
    /// A stored document no longer parses (written by a newer hub?).
    #[error("the stored layouts of this room cannot be read: {0}")]
    Corrupt(String),
}

/// Why a `PUT` was refused, for `telehub_layout_refused_total{reason}`.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Refused {
    Invalid = 0,
    TooLarge = 1,
    RoomsLimit = 2,
}

impl Refused {
    /// (A token that may not save is counted by `telehub_auth_refused_total`.)
    const LABELS: [&'static str; 3] = ["invalid", "too_large", "rooms_limit"];
}

/// The handle routes hold: the table behind a mutex (writes are rare and small).
#[derive(Clone)]
pub(crate) struct Layouts {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Mutex<Connection>,
    refused: [AtomicU64; 3],
    rooms: AtomicU64,
}

impl std::fmt::Debug for Layouts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Layouts")
    }
}

impl Layouts {
    /// Opens the table in the history's database file, or in memory when history is not
    /// persisted.
    pub(crate) fn open(config: &HistoryConfig) -> Result<Layouts, LayoutError> {
        let conn = if config.persist {
            let dir = &config.data_dir;
            std::fs::create_dir_all(dir).map_err(|source| LayoutError::Dir {
                path: dir.clone(),
                source,
            })?;
            let conn = Connection::open(dir.join(DB_FILE))?;
            conn.busy_timeout(BUSY_TIMEOUT)?;
            conn
        } else {
            Connection::open_in_memory()?
        };
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS layouts (
                 room TEXT PRIMARY KEY,
                 doc TEXT NOT NULL,
                 updated_ms INTEGER NOT NULL
             );",
        )?;
        let rooms: i64 = conn.query_row("SELECT COUNT(*) FROM layouts", [], |r| r.get(0))?;
        Ok(Layouts {
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                refused: Default::default(),
                rooms: AtomicU64::new(rooms as u64),
            }),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding it cannot leave a half-done statement: SQLite rolls back.
        self.inner.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The room's layouts (none saved: an empty set) and when they were last saved.
    /// Blocking: call on the blocking pool.
    pub(crate) fn get(&self, room: &str) -> Result<(LayoutSet, Option<i64>), LayoutError> {
        let row: Option<(String, i64)> = self
            .conn()
            .query_row(
                "SELECT doc, updated_ms FROM layouts WHERE room = ?1",
                params![room],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match row {
            None => Ok((LayoutSet::default(), None)),
            Some((doc, at)) => serde_json::from_str(&doc)
                .map(|set| (set, Some(at)))
                .map_err(|e| LayoutError::Corrupt(e.to_string())),
        }
    }

    /// Replaces the room's layouts (already validated); an empty set deletes them (the
    /// room is automatic again). Blocking: call on the blocking pool.
    pub(crate) fn put(&self, room: &str, set: &LayoutSet, now_ms: i64) -> Result<(), LayoutError> {
        let conn = self.conn();
        if set.layouts.is_empty() {
            conn.execute("DELETE FROM layouts WHERE room = ?1", params![room])?;
        } else {
            let exists: bool = conn
                .query_row(
                    "SELECT 1 FROM layouts WHERE room = ?1",
                    params![room],
                    |_| Ok(true),
                )
                .optional()?
                .unwrap_or(false);
            if !exists && self.inner.rooms.load(Ordering::Relaxed) >= MAX_ROOMS as u64 {
                return Err(LayoutError::RoomsLimit);
            }
            let doc =
                serde_json::to_string(set).map_err(|e| LayoutError::Corrupt(e.to_string()))?;
            conn.execute(
                "INSERT INTO layouts (room, doc, updated_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (room) DO UPDATE SET doc = excluded.doc, updated_ms = excluded.updated_ms",
                params![room, doc, now_ms],
            )?;
        }
        let rooms: i64 = conn.query_row("SELECT COUNT(*) FROM layouts", [], |r| r.get(0))?;
        self.inner.rooms.store(rooms as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Counts a refused `PUT`.
    pub(crate) fn refused(&self, why: Refused) {
        self.inner.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The collector for `telehub_layout_rooms` and `telehub_layout_refused_total`.
    pub(crate) fn collector(&self) -> LayoutCollector {
        LayoutCollector(self.clone())
    }
}

/// Layouts' part of `/metrics`, read at each scrape.
#[derive(Debug)]
pub(crate) struct LayoutCollector(Layouts);

impl Collector for LayoutCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let inner = &self.0.inner;
        let rooms = ConstGauge::new(inner.rooms.load(Ordering::Relaxed) as i64);
        rooms.encode(encoder.encode_descriptor(
            "telehub_layout_rooms",
            "Rooms with saved dashboard layouts.",
            None,
            rooms.metric_type(),
        )?)?;
        let mut family = encoder.encode_descriptor(
            "telehub_layout_refused",
            "Layout saves refused, by reason.",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (i, reason) in Refused::LABELS.iter().enumerate() {
            let c = ConstCounter::new(inner.refused[i].load(Ordering::Relaxed));
            let labels = [("reason", *reason)];
            c.encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(json: &str) -> Result<LayoutSet, String> {
        let s: LayoutSet = serde_json::from_str(json).map_err(|e| e.to_string())?;
        s.validate().map(|()| s)
    }

    #[test]
    fn a_layout_round_trips_and_bad_ones_name_the_field() {
        let ok = r#"{"default":"wall","layouts":[{"name":"wall","auto":false,
            "panels":[{"kind":"timeseries","pinned":true,"size":"wide",
              "series":[{"metric":"temperature","device":"t1"},{"metric":"temperature","device":"t2"}]},
              {"kind":"track","series":[{"metric":"lat"},{"metric":"lon"}]}]}]}"#;
        let s = set(ok).unwrap();
        assert_eq!(s.layouts[0].panels[0].series.len(), 2);
        let again: LayoutSet = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(again, s);
        for (bad, says) in [
            (r#"{"layouts":[{"name":"a b"}]}"#, "layouts[0].name"),
            (r#"{"layouts":[{"name":"a"},{"name":"a"}]}"#, "used twice"),
            (r#"{"default":"x","layouts":[{"name":"a"}]}"#, "default"),
            (
                r#"{"layouts":[{"name":"a","panels":[{"kind":"stat","series":[]}]}]}"#,
                "panels[0].series",
            ),
            (
                r#"{"layouts":[{"name":"a","panels":[{"kind":"pie","series":[]}]}]}"#,
                "unknown variant",
            ),
            (
                r#"{"layouts":[{"name":"a","color":"red"}]}"#,
                "unknown field",
            ),
            (
                r#"{"layouts":[{"name":"a","panels":[{"kind":"gauge","min":5,"max":1,"series":[{"metric":"m"}]}]}]}"#,
                "min must be below max",
            ),
            (
                r#"{"layouts":[{"name":"a","panels":[{"kind":"track","series":[{"metric":"lat"}]}]}]}"#,
                "two series",
            ),
        ] {
            let e = set(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn the_table_keeps_one_set_per_room_and_an_empty_set_resets() {
        let cfg = HistoryConfig {
            persist: false,
            ..HistoryConfig::default()
        };
        let l = Layouts::open(&cfg).unwrap();
        assert_eq!(l.get("lab").unwrap(), (LayoutSet::default(), None));
        let s = set(r#"{"layouts":[{"name":"a"}]}"#).unwrap();
        l.put("lab", &s, 5).unwrap();
        assert_eq!(l.get("lab").unwrap(), (s, Some(5)));
        assert_eq!(l.inner.rooms.load(Ordering::Relaxed), 1);
        l.put("lab", &LayoutSet::default(), 6).unwrap();
        assert_eq!(l.get("lab").unwrap().1, None);
        assert_eq!(l.inner.rooms.load(Ordering::Relaxed), 0);
    }
}
