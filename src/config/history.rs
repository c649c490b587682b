//! `[history]`: how much the hub remembers in memory and where it keeps it on disk. Read
//! by the history rings and the SQLite store alike, so it lives with the configuration
//! rather than with either of them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[history]`: how much the hub remembers, and where it keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryConfig {
    /// Points kept in memory per (room, device, metric) series; the oldest go first.
    /// 16 bytes each, so 3,600 points are 56 KiB per series at most.
    #[serde(default = "default_points_per_series")]
    pub points_per_series: usize,
    /// How long raw readings stay in the database, in milliseconds (by their `ts`; 7 days
    /// by default). Older rows are deleted in small batches; `telehub export` reads them.
    #[serde(default = "default_retention_ms")]
    pub retention_ms: u64,
    /// How far back memory reaches, in milliseconds: the rings behind live charts,
    /// `snapshot`, the REST history and `?since=` replay (and what a restart loads from
    /// the database). Points older than this leave memory, and a series with no point
    /// left is forgotten. At most `retention_ms` (the smaller of the two applies).
    #[serde(default = "default_memory_ms")]
    pub memory_ms: u64,
    /// Series (room, device, metric) over all rooms at most. A reading that would create
    /// one more is refused with the error `series_limit`, so a client inventing endless
    /// metrics or device ids cannot grow memory without bound.
    #[serde(default = "default_max_series")]
    pub max_series: usize,
    /// Readings per room kept in offset order for `?since=` recovery. A dashboard that
    /// reconnects further behind than this gets `"recovered":false`.
    #[serde(default = "default_room_log_len")]
    pub room_log_len: usize,
    /// Readings kept for recovery over all rooms at most (64 bytes each). When the total
    /// is reached, a room that records a reading drops its own oldest one, so busy rooms
    /// shorten their recovery window instead of memory growing with the number of rooms.
    #[serde(default = "default_max_log_entries")]
    pub max_log_entries: usize,
    /// Keep history in an SQLite database under `data_dir`, so a restarted hub keeps its
    /// rooms' epochs and offsets and the recent window. `false` (or `--no-persist`) runs
    /// in memory only, and a restarted hub gives every room a new epoch.
    #[serde(default = "default_persist")]
    pub persist: bool,
    /// Directory of the database file `telehub.db` (created if missing).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// How often buffered readings are committed to the database, in milliseconds (one
    /// transaction and one fsync per interval, however many readings). A batch is
    /// committed once its oldest reading has waited about this long (less the recent
    /// commit time), so with durable acks this is about how long a device waits for
    /// `accepted`.
    #[serde(default = "default_flush_interval_ms")]
    pub flush_interval_ms: u64,
    /// When a device is told its readings are kept (`accepted`, and the MQTT bridge's
    /// PUBACK): `"durable"` once they are committed to the database (a crash or power cut
    /// loses nothing acknowledged; the ack waits up to one `flush_interval_ms`),
    /// `"memory"` as soon as the hub holds them in memory (lower latency; a crash loses
    /// up to one flush interval of acknowledged readings). With `persist = false`,
    /// `accepted` always means in memory.
    #[serde(default)]
    pub ack: AckMode,
    /// `[[history.rollups]]`: the rollup tiers kept beside the raw rows, finest first
    /// (per series and bucket: min, max, sum, count and last value), computed as
    /// readings are committed. Long windows of the REST history and the dashboard are
    /// answered from them. `rollups = []` keeps none.
    #[serde(default = "default_rollups")]
    pub rollups: Vec<RollupConfig>,
}

/// One `[[history.rollups]]` tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollupConfig {
    /// Bucket width, a duration like `"1m"` or `"1h"` (1 s to 1 d). Each tier's step is
    /// a whole multiple of the previous tier's, so coarser answers can be built from it.
    pub step: String,
    /// How long its buckets are kept (by bucket time), a duration like `"90d"`; at least
    /// the step. Readings older than this are not added to the tier.
    pub retention: String,
}

/// Rollup tiers at most, so every reading's commit costs a bounded number of updates.
pub(crate) const MAX_ROLLUP_TIERS: usize = 4;

impl RollupConfig {
    /// The step in milliseconds (`None` if it does not parse).
    pub fn step_ms(&self) -> Option<i64> {
        crate::clock::parse_duration(&self.step)
    }
    /// The retention in milliseconds (`None` if it does not parse).
    pub fn retention_ms(&self) -> Option<i64> {
        crate::clock::parse_duration(&self.retention)
    }
}

/// `history.ack`: what `accepted` promises.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckMode {
    /// After the commit to SQLite.
    #[default]
    Durable,
    /// As soon as the readings are in memory.
    Memory,
}

const fn default_points_per_series() -> usize {
    3_600
}
const fn default_retention_ms() -> u64 {
    604_800_000
}
const fn default_memory_ms() -> u64 {
    3_600_000
}
const fn default_max_series() -> usize {
    10_000
}
const fn default_room_log_len() -> usize {
    10_000
}
const fn default_max_log_entries() -> usize {
    1_000_000
}
const fn default_persist() -> bool {
    true
}
fn default_rollups() -> Vec<RollupConfig> {
    vec![
        RollupConfig {
            step: "1m".into(),
            retention: "90d".into(),
        },
        RollupConfig {
            step: "1h".into(),
            retention: "730d".into(),
        },
    ]
}
fn default_data_dir() -> PathBuf {
    PathBuf::from("./data")
}
const fn default_flush_interval_ms() -> u64 {
    100
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            points_per_series: default_points_per_series(),
            retention_ms: default_retention_ms(),
            memory_ms: default_memory_ms(),
            max_series: default_max_series(),
            room_log_len: default_room_log_len(),
            max_log_entries: default_max_log_entries(),
            persist: default_persist(),
            data_dir: default_data_dir(),
            flush_interval_ms: default_flush_interval_ms(),
            ack: AckMode::default(),
            rollups: default_rollups(),
        }
    }
}

impl HistoryConfig {
    /// How far back memory reaches: `memory_ms`, but never past `retention_ms`.
    pub fn memory_window_ms(&self) -> u64 {
        self.memory_ms.min(self.retention_ms)
    }

    /// Checks the values serde cannot; names the key (`history.…`) that is wrong.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.points_per_series == 0 || self.points_per_series > 10_000_000 {
            return Err(("history.points_per_series", "must be 1 to 10000000".into()));
        }
        if self.retention_ms < 1_000 {
            return Err(("history.retention_ms", "must be at least 1000".into()));
        }
        if self.memory_ms < 1_000 {
            return Err(("history.memory_ms", "must be at least 1000".into()));
        }
        if self.max_series == 0 {
            return Err(("history.max_series", "must be at least 1".into()));
        }
        if self.room_log_len == 0 || self.room_log_len > 10_000_000 {
            return Err(("history.room_log_len", "must be 1 to 10000000".into()));
        }
        if self.max_log_entries == 0 {
            return Err(("history.max_log_entries", "must be at least 1".into()));
        }
        if !(10..=60_000).contains(&self.flush_interval_ms) {
            return Err(("history.flush_interval_ms", "must be 10 to 60000".into()));
        }
        if self.rollups.len() > MAX_ROLLUP_TIERS {
            return Err((
                "history.rollups",
                format!("at most {MAX_ROLLUP_TIERS} tiers"),
            ));
        }
        let mut previous: Option<i64> = None;
        for r in &self.rollups {
            let step = r
                .step_ms()
                .filter(|s| (1_000..=86_400_000).contains(s))
                .ok_or((
                    "history.rollups.step",
                    format!("`{}` must be a duration from 1s to 1d, like 1m", r.step),
                ))?;
            if let Some(p) = previous {
                if step <= p || step % p != 0 {
                    return Err((
                        "history.rollups.step",
                        format!(
                            "`{}` must be a whole multiple of the previous tier's step, and larger",
                            r.step
                        ),
                    ));
                }
            }
            previous = Some(step);
            if r.retention_ms().is_none_or(|ms| ms < step) {
                return Err((
                    "history.rollups.retention",
                    format!(
                        "`{}` must be a duration like 90d, at least the step",
                        r.retention
                    ),
                ));
            }
        }
        if self.persist && self.data_dir.as_os_str().is_empty() {
            return Err((
                "history.data_dir",
                "must not be empty when persist = true".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_docs_and_validate() {
        let c = HistoryConfig::default();
        assert_eq!(c.points_per_series, 3600);
        assert_eq!(c.retention_ms, 7 * 86_400_000);
        assert_eq!(c.memory_window_ms(), 3_600_000);
        let short = HistoryConfig {
            retention_ms: 60_000,
            ..c.clone()
        };
        assert_eq!(
            short.memory_window_ms(),
            60_000,
            "memory never outlasts the disk"
        );
        assert!(c.persist);
        assert_eq!(c.ack, AckMode::Durable);
        assert!(c.flush_interval_ms <= 1000);
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        c.validate().unwrap();
        let bad = HistoryConfig {
            flush_interval_ms: 0,
            ..c
        };
        assert_eq!(bad.validate().unwrap_err().0, "history.flush_interval_ms");
    }

    #[test]
    fn rollup_tiers_default_to_1m_and_1h_and_must_nest() {
        let c = HistoryConfig::default();
        let steps: Vec<_> = c.rollups.iter().map(|r| r.step_ms()).collect();
        assert_eq!(steps, [Some(60_000), Some(3_600_000)]);
        assert_eq!(c.rollups[1].retention_ms(), Some(730 * 86_400_000));
        let parsed: HistoryConfig = toml::from_str(
            "[[rollups]]\nstep = \"10s\"\nretention = \"1d\"\n[[rollups]]\nstep = \"25s\"\nretention = \"2d\"",
        )
        .unwrap();
        assert_eq!(parsed.validate().unwrap_err().0, "history.rollups.step");
        let none: HistoryConfig = toml::from_str("rollups = []").unwrap();
        none.validate().unwrap();
        let short: HistoryConfig =
            toml::from_str("[[rollups]]\nstep = \"1h\"\nretention = \"1m\"").unwrap();
        assert_eq!(short.validate().unwrap_err().0, "history.rollups.retention");
        assert!(toml::from_str::<HistoryConfig>("[[rollups]]\nstep = \"1m\"").is_err());
    }

    #[test]
    fn config_refuses_unknown_keys() {
        let err = toml::from_str::<HistoryConfig>("points = 3").unwrap_err();
        assert!(err.to_string().contains("points"), "{err}");
        let ok: HistoryConfig = toml::from_str("persist = false").unwrap();
        assert!(!ok.persist);
        let memory: HistoryConfig = toml::from_str("ack = \"memory\"").unwrap();
        assert_eq!(memory.ack, AckMode::Memory);
        assert!(toml::from_str::<HistoryConfig>("ack = \"disk\"").is_err());
        assert_eq!(ok.points_per_series, 3600);
    }
}
