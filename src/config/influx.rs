//! `[influx]`: how InfluxDB line protocol (`POST /api/v2/write`, `POST /write`) maps to
//! readings, and the bounds on one write. Read by the Influx source
//! (`src/sources/influx/`) and the write routes (`src/api/write.rs`).

use serde::{Deserialize, Serialize};

/// `[influx]`: line protocol to readings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InfluxConfig {
    /// The tag whose value is the device id (Telegraf's is `host`). A line without it
    /// is refused, naming this key.
    pub device_tag: String,
    /// Tags folded into the metric name, in this order, between the measurement and the
    /// field (`cpu,cpu=cpu0 usage_idle=1` with `["cpu"]` is `cpu.cpu0.usage_idle`).
    /// Every other tag is dropped.
    pub metric_tags: Vec<String>,
    /// Largest request body, in bytes, both as sent and once a gzip body is inflated
    /// (413 past it), so a small compressed body cannot become a large one.
    pub max_body_bytes: usize,
    /// Sustained readings (one per numeric field) per second per device, and the burst
    /// above it. A write that would take a device past it is refused whole with 429 and
    /// `Retry-After`, so the client's retry writes nothing twice. Higher than
    /// `limits.rate_per_sec`, since agents send a whole interval's fields at once.
    pub rate_per_sec: f64,
    pub rate_burst: f64,
}

impl Default for InfluxConfig {
    fn default() -> Self {
        InfluxConfig {
            device_tag: "host".to_string(),
            metric_tags: Vec::new(),
            max_body_bytes: 4 * 1024 * 1024,
            rate_per_sec: 2_000.0,
            rate_burst: 20_000.0,
        }
    }
}

impl InfluxConfig {
    /// Checks what types alone cannot.
    pub(crate) fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.device_tag.is_empty() {
            return Err(("influx.device_tag", "must not be empty".into()));
        }
        if self.metric_tags.iter().any(|t| t.is_empty()) {
            return Err(("influx.metric_tags", "a tag name must not be empty".into()));
        }
        if self.max_body_bytes < 1024 {
            return Err(("influx.max_body_bytes", "must be at least 1024".into()));
        }
        if !(self.rate_per_sec.is_finite() && self.rate_per_sec > 0.0) {
            return Err(("influx.rate_per_sec", "must be a positive number".into()));
        }
        if !(self.rate_burst.is_finite() && self.rate_burst >= 1.0) {
            return Err(("influx.rate_burst", "must be at least 1".into()));
        }
        Ok(())
    }
}
