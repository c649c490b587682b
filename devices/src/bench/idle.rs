//! `telehub-sim bench --idle N`: what an idle dashboard connection costs the hub.
//!
//! Opens N dashboard connections that only read, spread over rooms (`--idle-per-room`
//! each, so presence traffic stays small; named `bench-0`, `bench-1`, ... as the load
//! run's rooms, so a load run beside it shares them: W5) and over source addresses 127.0.0.1 to
//! 127.0.0.K (one address has about 28,000 ephemeral ports; each address gets its own).
//! Each connection counts as open once its `welcome` arrived. It reads the hub's RSS
//! before, with all N open (after a settle pause), holds them, and
//! after closing them; the memory per connection is the RSS delta divided by N.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use futures_util::{stream, StreamExt};
use serde::Serialize;
use telehub_protocol::role::Role;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::{procfs, raise_fd_limit, BenchError, CONNECT_CONCURRENCY};
use crate::auth::TokenSource;
use crate::wsclient::{self, HubUrl};

/// Connections per source address: well under the ~28,000 ephemeral ports Linux gives
/// one (source address, destination) pair by default, leaving room for sockets still in
/// TIME_WAIT from an earlier run.
pub const CONNECTIONS_PER_SOURCE_ADDR: usize = 4_096;
/// Read buffer of an idle connection: it only ever sees presence frames.
const IDLE_READ_BUFFER: usize = 1024;
/// Pause after the last connection opens before RSS is read, so the hub's allocator and
/// any per-connection lazy setup have settled.
const SETTLE: Duration = Duration::from_secs(2);

/// What to run.
#[derive(Debug, Clone)]
pub struct IdleOptions {
    /// Hub base URL.
    pub url: String,
    /// Connections to open.
    pub connections: usize,
    /// Dashboards per room.
    pub per_room: usize,
    /// How long to hold them open.
    pub hold: Duration,
    /// Hub pid, for RSS.
    pub pid: Option<u32>,
    /// Tokens for a hub in token mode (each dashboard gets its own).
    pub auth: Option<TokenSource>,
}

/// The results.
#[derive(Debug, Clone, Serialize)]
pub struct IdleReport {
    /// Connections asked for.
    pub requested: usize,
    /// Connections that opened.
    pub opened: usize,
    /// Connections that failed to open.
    pub failed: usize,
    /// The first failure, if any.
    pub first_error: Option<String>,
    /// Source addresses used.
    pub source_addrs: usize,
    /// Rooms used.
    pub rooms: usize,
    /// Seconds it took to open them all.
    pub connect_secs: f64,
    /// Connections that closed while held (should be 0).
    pub dropped_while_held: usize,
    /// Hub RSS before, KiB (with `--pid`).
    pub rss_before_kib: Option<u64>,
    /// Hub RSS with all connections open, KiB.
    pub rss_open_kib: Option<u64>,
    /// Hub RSS after closing them, KiB.
    pub rss_after_kib: Option<u64>,
    /// (rss_open − rss_before) / opened, bytes.
    pub bytes_per_connection: Option<f64>,
}

fn source_addr(i: usize, addrs: usize) -> IpAddr {
    let k = 1 + (i % addrs) as u8;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, k))
}

/// Open, hold and close N idle dashboards, measuring the hub's memory.
pub async fn run_idle(opts: IdleOptions) -> Result<IdleReport, BenchError> {
    if opts.connections == 0 || opts.per_room == 0 {
        return Err(BenchError::Options(
            "--idle and --idle-per-room must be at least 1".into(),
        ));
    }
    let limit = raise_fd_limit();
    if limit != 0 && (opts.connections as u64) + 64 > limit {
        return Err(BenchError::Options(format!(
            "--idle {} needs more open files than this process may have ({limit})",
            opts.connections
        )));
    }
    let hub = HubUrl::parse(&opts.url)?;
    let addr = hub.resolve().await?;
    if !addr.ip().is_loopback() {
        return Err(BenchError::Options(
            "--idle spreads over 127.0.0.x source addresses, so the hub must be on loopback".into(),
        ));
    }
    let addrs = opts
        .connections
        .div_ceil(CONNECTIONS_PER_SOURCE_ADDR)
        .clamp(1, 250);
    let rss = |pid: Option<u32>| -> Result<Option<u64>, BenchError> {
        pid.map(|p| procfs::rss_kib(p).map_err(|error| BenchError::Proc { pid: p, error }))
            .transpose()
    };
    let rss_before = rss(opts.pid)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let started = std::time::Instant::now();
    let hub_ref = &hub;
    let results: Vec<Result<JoinHandle<bool>, String>> = stream::iter(0..opts.connections)
        .map(|i| {
            let stop = stop_rx.clone();
            let (room, client) = (format!("bench-{}", i / opts.per_room), format!("idle-{i}"));
            let path = format!("/ws/{room}/{client}?role=dashboard");
            let token = super::token_for(opts.auth.as_ref(), &room, &client, Role::Dashboard);
            async move {
                let token = token.map_err(|e| format!("{path}: {e}"))?;
                let ws = tokio::time::timeout(
                    Duration::from_secs(10),
                    wsclient::connect(
                        hub_ref,
                        addr,
                        &path,
                        Some(source_addr(i, addrs)),
                        wsclient::small_config(IDLE_READ_BUFFER),
                        token.as_deref(),
                        None,
                    ),
                )
                .await
                .map_err(|_| format!("{path}: connect timed out"))?
                .map_err(|e| format!("{path}: {e}"))?;
                let ws = welcomed(ws).await.map_err(|e| format!("{path}: {e}"))?;
                Ok(tokio::spawn(hold(ws, stop)))
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .collect()
        .await;
    let connect_secs = started.elapsed().as_secs_f64();
    let mut tasks = Vec::new();
    let mut first_error = None;
    let mut failed = 0;
    for r in results {
        match r {
            Ok(t) => tasks.push(t),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let opened = tasks.len();
    tokio::time::sleep(SETTLE).await;
    let rss_open = rss(opts.pid)?;
    tokio::time::sleep(opts.hold).await;
    let dropped_while_held = tasks.iter().filter(|t| t.is_finished()).count();
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    tokio::time::sleep(SETTLE).await;
    let rss_after = rss(opts.pid)?;
    let bytes_per_connection = match (rss_before, rss_open) {
        (Some(b), Some(o)) if opened > 0 => Some((o as f64 - b as f64) * 1024.0 / opened as f64),
        _ => None,
    };
    Ok(IdleReport {
        requested: opts.connections,
        opened,
        failed,
        first_error,
        source_addrs: addrs,
        rooms: opts.connections.div_ceil(opts.per_room),
        connect_secs,
        dropped_while_held,
        rss_before_kib: rss_before,
        rss_open_kib: rss_open,
        rss_after_kib: rss_after,
        bytes_per_connection,
    })
}

/// Waits for the hub's `welcome` (within 10 s), so `connect_secs` is the time until
/// every dashboard was welcomed (workload W5), not only upgraded.
pub(crate) async fn welcomed(mut ws: wsclient::WsStream) -> Result<wsclient::WsStream, String> {
    let wait = async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) if t.contains("\"welcome\"") => return Ok(()),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("closed before the welcome".to_string()),
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), wait).await {
        Ok(Ok(())) => Ok(ws),
        Ok(Err(e)) => Err(e),
        Err(_) => Err("no welcome within 10 s".to_string()),
    }
}

/// Keep one idle connection open, reading whatever comes (presence, pings) until told to
/// stop; then close it cleanly. Returns whether it was still open at the end.
async fn hold(mut ws: wsclient::WsStream, mut stop: watch::Receiver<bool>) -> bool {
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            msg = ws.next() => {
                if !matches!(msg, Some(Ok(_))) {
                    return false;
                }
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
    true
}
