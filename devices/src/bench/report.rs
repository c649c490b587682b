//! What a bench run reports: throughput, loss, latency percentiles and (with `--pid`) the
//! hub's resources, computed from the counters the load tasks collected.

use hdrhistogram::Histogram;
use serde::Serialize;

use super::slow::SlowCounts;
use super::BenchOptions;

/// Latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
}

/// The hub's resources over the window (with `--pid`).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct HubUsage {
    /// The pid measured.
    pub pid: u32,
    /// RSS when the window opened, KiB.
    pub rss_start_kib: u64,
    /// RSS when the window closed, KiB.
    pub rss_end_kib: u64,
    /// CPU time (user + system) the hub used in the window, seconds.
    pub cpu_secs: f64,
    /// Of one core: cpu_secs / window seconds.
    pub cpu_cores: f64,
    /// Hub CPU per delivery in the window, microseconds.
    pub cpu_us_per_delivery: f64,
}

/// The results.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Rooms.
    pub rooms: u32,
    /// Devices per room.
    pub devices: u32,
    /// Dashboards per room.
    pub dashboards: u32,
    /// Hz per device.
    pub rate_hz: f64,
    /// Window length, seconds (measured).
    pub window_secs: f64,
    /// Warm-up, seconds.
    pub warmup_secs: f64,
    /// Readings sent within the window.
    pub readings_sent: u64,
    /// Readings per second into the hub.
    pub readings_per_sec: f64,
    /// Deliveries expected: each room's readings × its dashboards.
    pub deliveries_expected: u64,
    /// Deliveries of window readings received.
    pub deliveries: u64,
    /// Deliveries per second.
    pub deliveries_per_sec: f64,
    /// Expected minus received (never negative).
    pub lost: u64,
    /// lost / expected.
    pub loss_ratio: f64,
    /// Send-to-receipt latency of the window's deliveries.
    pub latency: Latency,
    /// Deliveries whose send time was no longer in the ring (very late).
    pub untimed: u64,
    /// Dashboards whose connection closed during the run (e.g. 1013 slow consumer).
    pub dashboards_closed: u64,
    /// `error` frames the devices received (e.g. `rate_limited`).
    pub device_errors: u64,
    /// Hub resources, with `--pid`.
    pub hub: Option<HubUsage>,
    /// What the slow viewers got, with `--slow-viewers`.
    pub slow_viewers: Option<SlowCounts>,
}

/// What the load tasks counted over the window, before it is turned into rates.
pub(super) struct Measured {
    /// Window length, seconds (measured).
    pub(super) window_secs: f64,
    /// Readings the devices sent within the window.
    pub(super) readings_sent: u64,
    /// Deliveries of window readings received by dashboards.
    pub(super) delivered: u64,
    /// Deliveries whose send time was gone from the ring.
    pub(super) untimed: u64,
    /// Dashboards whose connection closed during the run.
    pub(super) closed: u64,
    /// `error` frames the devices received.
    pub(super) device_errors: u64,
    /// Send-to-receipt latency of the window's deliveries, ns.
    pub(super) histogram: Histogram<u64>,
    /// The hub's (RSS KiB, CPU µs) when the window opened and closed, with `--pid`.
    pub(super) start_usage: Option<(u64, u64)>,
    /// See `start_usage`.
    pub(super) end_usage: Option<(u64, u64)>,
    /// What the slow viewers got.
    pub(super) slow: SlowCounts,
}

/// Turn the counts into the report.
pub(super) fn report(opts: &BenchOptions, m: Measured) -> BenchReport {
    let expected = m.readings_sent * u64::from(opts.dashboards);
    let lost = expected.saturating_sub(m.delivered);
    let us = |ns: u64| ns as f64 / 1000.0;
    let histogram = &m.histogram;
    let latency = if histogram.is_empty() {
        Latency::default()
    } else {
        Latency {
            p50_us: us(histogram.value_at_quantile(0.50)),
            p99_us: us(histogram.value_at_quantile(0.99)),
            p999_us: us(histogram.value_at_quantile(0.999)),
            max_us: us(histogram.max()),
            mean_us: histogram.mean() / 1000.0,
        }
    };
    let hub_usage = match (opts.pid, m.start_usage, m.end_usage) {
        (Some(pid), Some((rss0, cpu0)), Some((rss1, cpu1))) => {
            let cpu = cpu1.saturating_sub(cpu0) as f64;
            Some(HubUsage {
                pid,
                rss_start_kib: rss0,
                rss_end_kib: rss1,
                cpu_secs: cpu / 1e6,
                cpu_cores: cpu / 1e6 / m.window_secs,
                cpu_us_per_delivery: if m.delivered > 0 {
                    cpu / m.delivered as f64
                } else {
                    0.0
                },
            })
        }
        _ => None,
    };
    BenchReport {
        rooms: opts.rooms,
        devices: opts.devices,
        dashboards: opts.dashboards,
        rate_hz: opts.rate_hz,
        window_secs: m.window_secs,
        warmup_secs: opts.warmup.as_secs_f64(),
        readings_sent: m.readings_sent,
        readings_per_sec: m.readings_sent as f64 / m.window_secs,
        deliveries_expected: expected,
        deliveries: m.delivered,
        deliveries_per_sec: m.delivered as f64 / m.window_secs,
        lost,
        loss_ratio: if expected > 0 {
            lost as f64 / expected as f64
        } else {
            0.0
        },
        latency,
        untimed: m.untimed,
        dashboards_closed: m.closed,
        device_errors: m.device_errors,
        hub: hub_usage,
        slow_viewers: (m.slow.viewers > 0).then_some(m.slow),
    }
}
