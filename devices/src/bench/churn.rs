//! `telehub-sim bench --churn RATE`: connection churn (workload W6). Opens RATE dashboard
//! connections a second for `--churn-for`, each one welcomed, then closed at once, spread
//! over source addresses 127.0.0.1 to 127.0.0.250 (the TIME_WAIT sockets of a long run
//! would otherwise exhaust one address's ports). Run it beside a `bench` load run (W2) to
//! see whether churn disturbs delivery.
//!
//! With `--pid` it reads the hub's RSS and open file descriptors before the churn and
//! after it (after a settle pause): a hub that leaks per connection shows it there.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use telehub_protocol::role::Role;
use tokio::sync::Semaphore;

use super::{idle::welcomed, procfs, raise_fd_limit, BenchError};
use crate::auth::TokenSource;
use crate::wsclient::{self, HubUrl};

/// Source addresses the churn cycles through.
const SOURCE_ADDRS: u8 = 250;
/// Churning connections in flight at most: a hub that stops answering is not buried.
const MAX_IN_FLIGHT: usize = 2_048;
/// How long one connection may take to open and be welcomed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after the churn before the second RSS and fd reading.
const SETTLE: Duration = Duration::from_secs(3);

/// What to run.
#[derive(Debug, Clone)]
pub struct ChurnOptions {
    /// Hub base URL.
    pub url: String,
    /// Connections opened (and closed) per second.
    pub rate: f64,
    /// For how long.
    pub duration: Duration,
    /// Hub pid, for RSS and open fds.
    pub pid: Option<u32>,
    /// Tokens for a hub in token mode.
    pub auth: Option<TokenSource>,
}

/// The results.
#[derive(Debug, Clone, Serialize)]
pub struct ChurnReport {
    /// Connections started.
    pub started: u64,
    /// Welcomed and closed.
    pub completed: u64,
    /// Failed to open or be welcomed.
    pub failed: u64,
    /// Not started because [`MAX_IN_FLIGHT`] were still open.
    pub skipped: u64,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// Hub RSS before the churn, KiB (with `--pid`).
    pub rss_before_kib: Option<u64>,
    /// Hub RSS after it (and a settle pause), KiB.
    pub rss_after_kib: Option<u64>,
    /// Hub open fds before the churn.
    pub fds_before: Option<usize>,
    /// Hub open fds after it.
    pub fds_after: Option<usize>,
}

fn open_fds(pid: u32) -> std::io::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Open and close connections at `rate` for `duration`.
pub async fn run_churn(opts: ChurnOptions) -> Result<ChurnReport, BenchError> {
    if !(opts.rate > 0.0 && opts.rate <= 100_000.0) || opts.duration.is_zero() {
        return Err(BenchError::Options(
            "--churn must be in (0, 100000] connections/s and --churn-for positive".into(),
        ));
    }
    raise_fd_limit();
    let hub = Arc::new(HubUrl::parse(&opts.url)?);
    let addr = hub.resolve().await?;
    if !addr.ip().is_loopback() {
        return Err(BenchError::Options(
            "--churn spreads over 127.0.0.x source addresses, so the hub must be on loopback"
                .into(),
        ));
    }
    let proc_err = |pid| move |error| BenchError::Proc { pid, error };
    let sample = |pid: Option<u32>| -> Result<(Option<u64>, Option<usize>), BenchError> {
        match pid {
            None => Ok((None, None)),
            Some(p) => Ok((
                Some(procfs::rss_kib(p).map_err(proc_err(p))?),
                Some(open_fds(p).map_err(proc_err(p))?),
            )),
        }
    };
    let (rss_before, fds_before) = sample(opts.pid)?;
    let completed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / opts.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let end = tokio::time::Instant::now() + opts.duration;
    let (mut started, mut skipped) = (0u64, 0u64);
    let mut tasks = tokio::task::JoinSet::new();
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            skipped += 1;
            continue;
        };
        let i = started;
        started += 1;
        let (room, client) = (format!("churn-{}", i % 100), format!("churn-{i}"));
        let path = format!("/ws/{room}/{client}?role=dashboard");
        let token = super::token_for(opts.auth.as_ref(), &room, &client, Role::Dashboard);
        let bind = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            1 + (i % SOURCE_ADDRS as u64) as u8,
        ));
        let (hub, completed, failed, first_error) = (
            hub.clone(),
            completed.clone(),
            failed.clone(),
            first_error.clone(),
        );
        tasks.spawn(async move {
            let _permit = permit;
            let result = async {
                let token = token.map_err(|e| e.to_string())?;
                let ws = tokio::time::timeout(
                    CONNECT_TIMEOUT,
                    wsclient::connect(
                        &hub,
                        addr,
                        &path,
                        Some(bind),
                        wsclient::small_config(1024),
                        token.as_deref(),
                        None,
                    ),
                )
                .await
                .map_err(|_| "connect timed out".to_string())?
                .map_err(|e| e.to_string())?;
                let mut ws = welcomed(ws).await?;
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                Ok::<(), String>(())
            }
            .await;
            match result {
                Ok(()) => completed.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    if let Ok(mut first) = first_error.lock() {
                        first.get_or_insert(format!("{path}: {e}"));
                    }
                    failed.fetch_add(1, Ordering::Relaxed)
                }
            };
        });
        // Reap finished tasks so the set does not grow for the whole run.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    tokio::time::sleep(SETTLE).await;
    let (rss_after, fds_after) = sample(opts.pid)?;
    let first_error = first_error.lock().ok().and_then(|f| f.clone());
    Ok(ChurnReport {
        started,
        completed: completed.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        skipped,
        first_error,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        fds_before,
        fds_after,
    })
}
