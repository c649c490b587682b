//! The Influx source: a body of InfluxDB line protocol (Telegraf, or anything that
//! writes to InfluxDB) to readings in one room.
//!
//! A source stage beside the WebSocket and MQTT ones. [`line`] parses each line; here a
//! line becomes readings ([`readings_of`]), the readings are grouped by device, each
//! device's rate bucket is charged, and they go into the room through the
//! [`HttpDevices`] registry and [`crate::hub::Hub::publish`]. The HTTP side (routes,
//! bodies, gzip, status codes) is [`crate::api::write`].
//!
//! The mapping (`[influx]`):
//! - the device is the value of the tag `influx.device_tag` (default `host`);
//! - the metric is the measurement, then the values of the tags listed in
//!   `influx.metric_tags`, then the field key, joined by `.` (`cpu.usage_idle`); other
//!   tags are dropped;
//! - floats, integers, unsigned integers and booleans (1 or 0) are values; string fields
//!   are skipped and counted;
//! - the timestamp, in the request's precision, becomes milliseconds; without one the
//!   hub stamps its receive time.
//!
//! As InfluxDB does, a write with bad lines still writes its good ones, and says which
//! line was the first bad one and why. A write that would take a device past its rate is
//! refused whole, so that the client's retry writes nothing twice.

pub(crate) mod line;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;

use self::line::{FieldValue, Line};
use super::http_devices::{DeviceError, HttpDevices};
use crate::config::InfluxConfig;
use crate::hub::receipt::Receipt;
use crate::hub::JoinError;
use telehub_protocol::ids::{valid_id, valid_metric, TS_RANGE};
use telehub_protocol::inbound::ReadingIn;

/// The unit of a request's timestamps (`precision=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Precision {
    /// Nanoseconds: InfluxDB's default.
    #[default]
    Ns,
    Us,
    Ms,
    S,
}

impl Precision {
    /// `ns`, `us`, `ms` or `s` (v2), and v1's `n` and `u`.
    pub(crate) fn parse(s: &str) -> Option<Precision> {
        match s {
            "ns" | "n" => Some(Precision::Ns),
            "us" | "u" => Some(Precision::Us),
            "ms" => Some(Precision::Ms),
            "s" => Some(Precision::S),
            _ => None,
        }
    }

    /// A timestamp in this precision as milliseconds (rounded down), if it fits.
    pub(crate) fn to_ms(self, ts: i64) -> Option<i64> {
        match self {
            Precision::Ns => Some(ts.div_euclid(1_000_000)),
            Precision::Us => Some(ts.div_euclid(1_000)),
            Precision::Ms => Some(ts),
            Precision::S => ts.checked_mul(1_000),
        }
    }
}

/// The first bad line of a write: its number (from 1) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LineFault {
    pub(crate) line: usize,
    pub(crate) reason: String,
}

/// What a write did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct WriteReport {
    /// Lines whose readings were all taken (or that held only strings).
    pub(crate) lines_written: usize,
    /// Lines refused: unparsable, unmappable, or their device could not publish.
    pub(crate) lines_refused: usize,
    /// Readings the room took.
    pub(crate) readings: usize,
    /// String fields skipped.
    pub(crate) strings_skipped: usize,
    /// The first refused line.
    pub(crate) first_fault: Option<LineFault>,
    /// Readings of good lines the room refused (series caps, a `ts` too far ahead),
    /// and why the first of them was.
    pub(crate) refused_readings: usize,
    pub(crate) refused_reason: Option<String>,
    /// What each device's published readings are kept by: the write is answered once
    /// every one is ([`WriteReport::kept`]).
    pub(crate) receipts: Vec<Receipt>,
    /// Readings fanned out that the store did not take (its queue is full, or the hub
    /// is stopping), and why the first were not.
    pub(crate) unstored: usize,
    pub(crate) unstored_reason: Option<String>,
}

impl WriteReport {
    /// Waits until every reading the write published is kept (on disk with
    /// `history.ack = "durable"`), or says why some are not.
    pub(crate) async fn kept(&mut self) -> Result<(), String> {
        if let Some(why) = &self.unstored_reason {
            return Err(format!(
                "{} reading(s) not stored: {why}; retry the write later",
                self.unstored
            ));
        }
        for receipt in std::mem::take(&mut self.receipts) {
            if let Err(why) = receipt.wait().await {
                return Err(format!(
                    "{} reading(s) not stored: {why}; retry the write later",
                    self.readings
                ));
            }
        }
        Ok(())
    }
}

/// A write refused whole: nothing of it was written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum WriteError {
    /// One device would go past `influx.rate_per_sec`; the write may be retried after
    /// the wait.
    #[error("device `{device}` is over influx.rate_per_sec ({rate}/s, burst {burst}); retry in {wait:?}")]
    RateLimited {
        device: String,
        rate: f64,
        burst: f64,
        wait: Duration,
    },
    /// One device has more readings in the write than `influx.rate_burst` could ever
    /// take at once: the write must be split.
    #[error("device `{device}` has {readings} readings in this write, more than influx.rate_burst ({burst}); send smaller batches")]
    OverBurst {
        device: String,
        readings: usize,
        burst: f64,
    },
    /// The room cannot be joined (the hub's room cap, or the room is full).
    #[error(transparent)]
    Room(JoinError),
}

/// Counts of what line protocol did, for `/metrics`.
#[derive(Debug, Default)]
pub(crate) struct InfluxStats {
    lines_written: AtomicU64,
    lines_refused: AtomicU64,
    strings_skipped: AtomicU64,
    /// Writes refused whole, by [`Refused`].
    refused: [AtomicU64; Refused::ALL.len()],
    /// How many devices the HTTP registry holds (it sets this gauge).
    devices: Gauge,
}

/// Why a whole write was refused (the label of `telehub_influx_writes_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    RateLimited,
    OverBurst,
    BodyTooLarge,
    BadRequest,
    Room,
    /// Published but not kept: the store's queue is full or its commits fail.
    StoreUnavailable,
}

impl Refused {
    pub(crate) const ALL: [Refused; 6] = [
        Refused::RateLimited,
        Refused::OverBurst,
        Refused::BodyTooLarge,
        Refused::BadRequest,
        Refused::Room,
        Refused::StoreUnavailable,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Refused::RateLimited => "rate_limited",
            Refused::OverBurst => "over_burst",
            Refused::BodyTooLarge => "body_too_large",
            Refused::BadRequest => "bad_request",
            Refused::Room => "room",
            Refused::StoreUnavailable => "store_unavailable",
        }
    }
}

impl InfluxStats {
    /// The gauge [`HttpDevices`] keeps at its number of devices.
    pub(crate) fn devices_gauge(&self) -> Gauge {
        self.devices.clone()
    }

    pub(crate) fn refused(&self, why: Refused) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }
}

impl Collector for Stats {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.0;
        let mut lines = encoder.encode_descriptor(
            "telehub_influx_lines",
            "Line-protocol lines by outcome",
            None,
            MetricType::Counter,
        )?;
        for (outcome, n) in [("written", &s.lines_written), ("refused", &s.lines_refused)] {
            ConstCounter::new(n.load(Ordering::Relaxed))
                .encode(lines.encode_family(&[("outcome", outcome)])?)?;
        }
        let skipped = encoder.encode_descriptor(
            "telehub_influx_string_fields_skipped",
            "Line-protocol string fields skipped (only numbers and booleans are readings)",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(s.strings_skipped.load(Ordering::Relaxed)).encode(skipped)?;
        let mut refused = encoder.encode_descriptor(
            "telehub_influx_writes_refused",
            "Line-protocol writes refused whole, by reason",
            None,
            MetricType::Counter,
        )?;
        for why in Refused::ALL {
            ConstCounter::new(s.refused[why as usize].load(Ordering::Relaxed))
                .encode(refused.encode_family(&[("reason", why.as_str())])?)?;
        }
        let held = encoder.encode_descriptor(
            "telehub_http_devices",
            "Devices present over HTTP requests (via http)",
            None,
            MetricType::Gauge,
        )?;
        s.devices.encode(held)?;
        Ok(())
    }
}

/// The `/metrics` view of [`InfluxStats`].
#[derive(Debug)]
pub(crate) struct Stats(pub(crate) Arc<InfluxStats>);

/// Line protocol into rooms; cheap to clone.
#[derive(Clone)]
pub(crate) struct Influx {
    cfg: Arc<InfluxConfig>,
    devices: HttpDevices,
    stats: Arc<InfluxStats>,
}

/// The readings of one device in a write, and which lines they came from.
struct Group {
    device: String,
    readings: Vec<ReadingIn>,
    first_line: usize,
    lines: usize,
}

impl Influx {
    /// Line protocol into `devices`' rooms, counted in `stats` (whose collector the
    /// server registered before the hub took its metrics).
    pub(crate) fn new(cfg: InfluxConfig, devices: HttpDevices, stats: Arc<InfluxStats>) -> Influx {
        Influx {
            cfg: Arc::new(cfg),
            devices,
            stats,
        }
    }

    pub(crate) fn config(&self) -> &InfluxConfig {
        &self.cfg
    }

    pub(crate) fn stats(&self) -> &InfluxStats {
        &self.stats
    }

    /// Writes `body` into `room`. `may_publish(device)` says whether the request may
    /// publish as that device (its token); a device it may not is a bad line.
    pub(crate) async fn write(
        &self,
        room: &str,
        body: &[u8],
        precision: Precision,
        may_publish: impl Fn(&str) -> Result<(), String>,
    ) -> Result<WriteReport, WriteError> {
        let mut report = WriteReport::default();
        let mut groups: Vec<Group> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let fault = |report: &mut WriteReport, line: usize, reason: String| {
            report.lines_refused += 1;
            report.first_fault.get_or_insert(LineFault { line, reason });
        };
        for (i, raw) in body.split(|&b| b == b'\n').enumerate() {
            let number = i + 1;
            let Ok(text) = std::str::from_utf8(raw) else {
                fault(
                    &mut report,
                    number,
                    line::LineError::InvalidUtf8.to_string(),
                );
                continue;
            };
            if line::is_blank_or_comment(text) {
                continue;
            }
            let parsed = match line::parse(text) {
                Ok(l) => l,
                Err(e) => {
                    fault(&mut report, number, e.to_string());
                    continue;
                }
            };
            let (device, readings, strings) = match readings_of(&parsed, &self.cfg, precision)
                .and_then(|m| may_publish(m.0).map(|()| m))
            {
                Ok(m) => m,
                Err(e) => {
                    fault(&mut report, number, e);
                    continue;
                }
            };
            report.strings_skipped += strings;
            let g = match index.get(device) {
                Some(&g) => g,
                None => {
                    index.insert(device.to_string(), groups.len());
                    groups.push(Group {
                        device: device.to_string(),
                        readings: Vec::new(),
                        first_line: number,
                        lines: 0,
                    });
                    groups.len() - 1
                }
            };
            groups[g].readings.extend(readings);
            groups[g].lines += 1;
        }
        // Rate first, for every device, so a refused write has written nothing.
        let (rate, burst) = (self.cfg.rate_per_sec, self.cfg.rate_burst);
        let mut ready = Vec::with_capacity(groups.len());
        for g in groups {
            let device = match self.devices.device(room, &g.device) {
                Ok(d) => d,
                Err(DeviceError::Join(e)) => {
                    self.stats.refused(Refused::Room);
                    return Err(WriteError::Room(e));
                }
                Err(e) => {
                    report.lines_refused += g.lines;
                    report.first_fault = Some(match report.first_fault.take() {
                        Some(f) if f.line < g.first_line => f,
                        _ => LineFault {
                            line: g.first_line,
                            reason: e.to_string(),
                        },
                    });
                    continue;
                }
            };
            let cost = g.readings.len();
            if cost as f64 > burst {
                self.stats.refused(Refused::OverBurst);
                return Err(WriteError::OverBurst {
                    device: g.device,
                    readings: cost,
                    burst,
                });
            }
            if let Err(wait) = device.charge_lines(cost, rate, burst) {
                self.stats.refused(Refused::RateLimited);
                return Err(WriteError::RateLimited {
                    device: g.device,
                    rate,
                    burst,
                    wait,
                });
            }
            ready.push((device, g));
        }
        let hub = self.devices.hub();
        for (device, g) in ready {
            report.lines_written += g.lines;
            if g.readings.is_empty() {
                continue;
            }
            // On a cluster hub this waits for Redis (one round trip per device).
            let published = device.publish_settled(hub, g.readings).await;
            report.readings += published.accepted;
            if published.unstored_count > 0 {
                report.unstored += published.unstored_count;
                report
                    .unstored_reason
                    .get_or_insert(match published.why_unstored {
                        Some(why) => why,
                        None if published.stopping => "the hub is shutting down".into(),
                        None => "the history store's queue is full".into(),
                    });
            }
            report.receipts.push(published.receipt);
            if published.future_ts > 0 {
                report.refused_readings += published.future_ts;
                report.refused_reason.get_or_insert_with(|| {
                    format!(
                        "a timestamp of device `{}` is more than {} ms ahead of the hub's clock (limits.max_future_ms)",
                        g.device,
                        hub.limits().max_future_ms
                    )
                });
            }
            if let Some((key, max)) = published.series_limit {
                report.refused_readings += published.series_limited;
                report.refused_reason.get_or_insert_with(|| {
                    format!(
                        "readings of device `{}` would create series past {key} ({max})",
                        g.device
                    )
                });
            }
        }
        let s = &self.stats;
        s.lines_written
            .fetch_add(report.lines_written as u64, Ordering::Relaxed);
        s.lines_refused
            .fetch_add(report.lines_refused as u64, Ordering::Relaxed);
        s.strings_skipped
            .fetch_add(report.strings_skipped as u64, Ordering::Relaxed);
        Ok(report)
    }
}

/// One line's device, readings and count of skipped string fields, or why the line
/// cannot be readings.
pub(crate) fn readings_of<'l>(
    line: &'l Line<'l>,
    cfg: &InfluxConfig,
    precision: Precision,
) -> Result<(&'l str, Vec<ReadingIn>, usize), String> {
    let device = line
        .tags
        .iter()
        .find(|(k, _)| *k == cfg.device_tag)
        .map(|(_, v)| v.as_ref())
        .ok_or_else(|| {
            format!(
                "no `{}` tag to name the device (influx.device_tag)",
                cfg.device_tag
            )
        })?;
    if !valid_id(device) {
        return Err(format!(
            "device `{device}` is not a valid id (1 to 64 of A-Za-z0-9_.-)"
        ));
    }
    let ts = match line.timestamp {
        None => None,
        Some(t) => {
            let ms = precision
                .to_ms(t)
                .filter(|ms| TS_RANGE.contains(ms))
                .ok_or_else(|| format!("timestamp {t} is outside the years 1970 to 9999"))?;
            Some(ms)
        }
    };
    let mut prefix = line.measurement.to_string();
    for tag in &cfg.metric_tags {
        if let Some((_, v)) = line.tags.iter().find(|(k, _)| k == tag) {
            prefix.push('.');
            prefix.push_str(v);
        }
    }
    let mut readings = Vec::with_capacity(line.fields.len());
    let mut strings = 0;
    for (i, (key, value)) in line.fields.iter().enumerate() {
        // A key written twice: the last one counts, as in InfluxDB.
        if line.fields[i + 1..].iter().any(|(k, _)| k == key) {
            continue;
        }
        let value = match value {
            FieldValue::Float(v) => *v,
            FieldValue::Int(v) => *v as f64,
            FieldValue::UInt(v) => *v as f64,
            FieldValue::Bool(b) => f64::from(u8::from(*b)),
            FieldValue::Str(_) => {
                strings += 1;
                continue;
            }
        };
        let metric = format!("{prefix}.{key}");
        if !valid_metric(&metric) {
            return Err(format!(
                "metric `{metric}` is not valid (1 to 64 of A-Za-z0-9_.-/)"
            ));
        }
        readings.push(ReadingIn {
            metric,
            value,
            unit: None,
            ts,
            seq: None,
        });
    }
    Ok((device, readings, strings))
}

#[cfg(test)]
mod tests;
