//! The `telehub-sim` command: run a scenario of simulated devices against a hub (or an
//! MQTT broker), check scenario files, or run the benchmark load generator.
//!
//! Only argument parsing, printing and signal handling live here; the work is in the
//! library (`telehub_sim::run`, `telehub_sim::bench`).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use telehub_sim::bench::churn::{run_churn, ChurnOptions};
use telehub_sim::bench::idle::{run_idle, IdleOptions, IdleReport};
use telehub_sim::bench::{run_bench, BenchOptions, BenchReport, LoadShape};
use telehub_sim::{
    ClockConfig, Kind, MintOptions, RunOptions, Scenario, SeqStart, SimStats, Summary, TokenSource,
};

/// Simulated IoT devices for telehub, and its load generator.
#[derive(Parser)]
#[command(name = "telehub-sim", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario (a TOML file, or rooms × devices from flags) until Ctrl-C or --duration.
    Run(RunArgs),
    /// Parse and validate scenario files, and say what they contain.
    Check {
        /// Scenario files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Benchmark a running hub: devices and dashboards per room, throughput, loss, latency.
    Bench(BenchArgs),
}

/// How `run`'s devices reach the hub (`--transport`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum HubTransport {
    Ws,
    Http,
}

#[derive(Args)]
struct RunArgs {
    /// Scenario file (devices/greenhouse.toml ...). Without one, --rooms × --devices.
    scenario: Option<PathBuf>,
    /// Hub base URL for WebSocket (or, with `--transport http`, HTTP) devices.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    url: String,
    /// How devices reach the hub at --url: `ws` (a WebSocket each) or `http` (HTTP
    /// ingest: readings by POST, commands by long poll).
    #[arg(long, value_enum, default_value = "ws", conflicts_with = "mqtt")]
    transport: HubTransport,
    /// Publish over MQTT to this broker instead (mqtt://127.0.0.1:1883).
    #[arg(long, value_name = "URL")]
    mqtt: Option<String>,
    /// Quick start: number of rooms (room-1, room-2, ...).
    #[arg(long, conflicts_with = "scenario")]
    rooms: Option<u32>,
    /// Devices per room (quick start; default 6), or per group when a file is given.
    #[arg(long)]
    devices: Option<u32>,
    /// Samples per second per device; overrides every group's rate.
    #[arg(long, value_name = "HZ")]
    rate: Option<f64>,
    /// Quick start: only this kind (climate, air_quality, power, vibration, gps, door).
    #[arg(long, conflicts_with = "scenario", value_parser = parse_kind)]
    kind: Option<Kind>,
    /// Seed for every device's signal (overrides the file's).
    #[arg(long)]
    seed: Option<u64>,
    /// Readings each device keeps unconfirmed while disconnected; when full the oldest
    /// is dropped and counted.
    #[arg(long)]
    buffer: Option<usize>,
    /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Simulated seconds per real second (60 = a day in 24 minutes); `ts` follows.
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// First seq of every device (default: derived from the clock, so reruns never reuse one).
    #[arg(long)]
    seq_start: Option<u64>,
    /// Print the summary as JSON.
    #[arg(long)]
    json: bool,
    /// No live status line.
    #[arg(long, short)]
    quiet: bool,
    #[command(flatten)]
    auth: AuthArgs,
}

/// Tokens for a hub with `[auth] mode = "token"`.
#[derive(Args)]
struct AuthArgs {
    /// One token (JWT) for every connection; never printed. It cannot be renewed, so the
    /// hub closes connections when it expires.
    #[arg(long, value_name = "JWT", conflicts_with_all = ["token_file", "auth_secret", "auth_secret_file"])]
    token: Option<String>,
    /// A file holding one token for every connection, read again on every connection and
    /// every refresh: rotate the token by rewriting the file.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["auth_secret", "auth_secret_file"])]
    token_file: Option<PathBuf>,
    /// Mint a token per connection (sub = its id, its role, rooms = [its room]) signed with
    /// this HS256 secret of the hub's [[auth.keys]]; refreshed before it expires.
    #[arg(long, value_name = "SECRET", conflicts_with = "auth_secret_file")]
    auth_secret: Option<String>,
    /// As --auth-secret, read from a file (a trailing newline is ignored, as the hub does),
    /// which keeps the secret out of the process list.
    #[arg(long, value_name = "PATH")]
    auth_secret_file: Option<PathBuf>,
    /// `kid` of minted tokens: the hub key's `kid` ("" leaves it out).
    #[arg(long, value_name = "KID", default_value = "main")]
    auth_kid: String,
    /// `iss` of minted tokens: the hub's `auth.issuer` ("" leaves it out).
    #[arg(long, value_name = "ISS", default_value = "telehub")]
    auth_issuer: String,
    /// `aud` of minted tokens: the hub's `auth.audience` ("" leaves it out).
    #[arg(long, value_name = "AUD", default_value = "telehub")]
    auth_audience: String,
    /// Lifetime of minted tokens (e.g. 10m, 1h); at least 2 s.
    #[arg(long, value_name = "TTL", value_parser = parse_duration, default_value = "1h")]
    token_ttl: Duration,
}

impl AuthArgs {
    /// The token source the flags ask for, if any.
    fn source(&self) -> anyhow::Result<Option<TokenSource>> {
        if let Some(t) = &self.token {
            return Ok(Some(TokenSource::fixed(t.clone())?));
        }
        if let Some(path) = &self.token_file {
            return Ok(Some(TokenSource::file(path)?));
        }
        let secret = match (&self.auth_secret, &self.auth_secret_file) {
            (Some(s), _) => s.clone().into_bytes(),
            (None, Some(path)) => {
                let mut bytes = std::fs::read(path)
                    .with_context(|| format!("reading --auth-secret-file {}", path.display()))?;
                while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    bytes.pop();
                }
                bytes
            }
            (None, None) => return Ok(None),
        };
        let mut opts = MintOptions::new(secret);
        opts.kid = Some(self.auth_kid.clone()).filter(|k| !k.is_empty());
        opts.issuer = self.auth_issuer.clone();
        opts.audience = self.auth_audience.clone();
        opts.ttl = self.token_ttl;
        Ok(Some(TokenSource::mint(opts)?))
    }
}

#[derive(Args)]
struct BenchArgs {
    /// Hub base URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080")]
    url: String,
    /// Spread the dashboards round-robin over these hubs (repeat the flag) instead of
    /// --url, which keeps the devices: for several hubs sharing rooms (`[cluster]`).
    #[arg(long = "dashboard-url", value_name = "URL")]
    dashboard_urls: Vec<String>,
    #[command(flatten)]
    shape: LoadShape,
    /// Measured window (e.g. 10s).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Warm-up before the window.
    #[arg(long, value_parser = parse_duration, default_value = "2s")]
    warmup: Duration,
    /// The hub's pid: report its RSS and CPU time per delivery.
    #[arg(long)]
    pid: Option<u32>,
    /// Instead of the load run: open N idle dashboards and measure the hub's memory.
    #[arg(long, value_name = "N")]
    idle: Option<usize>,
    /// With --idle: dashboards per room.
    #[arg(long, default_value_t = 50)]
    idle_per_room: usize,
    /// With --idle: how long to hold the connections open.
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    idle_hold: Duration,
    /// Instead of the load run: open and close this many dashboards a second (W6),
    /// each welcomed then closed, for --churn-for.
    #[arg(long, value_name = "PER_SEC")]
    churn: Option<f64>,
    /// With --churn: for how long.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    churn_for: Duration,
    /// Also open N slow viewers per room: dashboards with `?overflow=latest` that read
    /// one frame every --slow-read-every. Not counted in the deliveries and latency, which
    /// then show what they cost the other dashboards.
    #[arg(long, value_name = "N", default_value_t = 0)]
    slow_viewers: u32,
    /// With --slow-viewers: how often each reads a frame.
    #[arg(long, value_parser = parse_duration, default_value = "100ms")]
    slow_read_every: Duration,
    /// With --slow-viewers: each one's socket receive buffer (SO_RCVBUF), in bytes; 0
    /// keeps the kernel's default. Small, the hub's queue for it fills within seconds.
    #[arg(long, value_name = "BYTES", default_value_t = 4096)]
    slow_recv_buffer: u32,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    auth: AuthArgs,
}

fn parse_kind(s: &str) -> Result<Kind, String> {
    Kind::ALL
        .into_iter()
        .find(|k| k.name() == s || k.name().replace('_', "-") == s)
        .ok_or_else(|| {
            let names: Vec<_> = Kind::ALL.iter().map(|k| k.name()).collect();
            format!("unknown kind {s:?}; one of {}", names.join(", "))
        })
}

/// `500ms`, `10s`, `5m`, `1h`, or plain seconds (`2.5`).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("bad duration {s:?}: expected e.g. 500ms, 10s, 5m, 1h"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("bad duration unit in {s:?}: use ms, s, m or h")),
    };
    if !(secs.is_finite() && secs >= 0.0) {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Debug events from the devices go to stderr when RUST_LOG asks for them
    // (RUST_LOG=telehub_sim=debug); by default only warnings, and there are none.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let result = match cli.command {
        Command::Run(args) => cmd_run(args).await,
        Command::Check { files } => cmd_check(files),
        Command::Bench(args) => cmd_bench(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn cmd_check(files: Vec<PathBuf>) -> anyhow::Result<()> {
    for f in files {
        let s = Scenario::load(&f)?;
        println!(
            "{}: scenario {:?}, seed {}, {} rooms, {} devices, about {:.1} readings/s",
            f.display(),
            s.name,
            s.seed,
            s.rooms.len(),
            s.devices().len(),
            s.readings_per_sec()
        );
    }
    Ok(())
}

fn build_scenario(args: &RunArgs) -> anyhow::Result<Scenario> {
    let mut scenario = match &args.scenario {
        Some(path) => {
            let mut s = Scenario::load(path)?;
            if let Some(n) = args.devices {
                s.set_count(n)?;
            }
            s
        }
        None => Scenario::quick(
            args.rooms.unwrap_or(1),
            args.devices.unwrap_or(6),
            args.rate,
            args.kind,
        )?,
    };
    if let Some(r) = args.rate {
        scenario.set_rate(r)?;
    }
    if let Some(seed) = args.seed {
        scenario.seed = seed;
    }
    Ok(scenario)
}

async fn shutdown_signal(duration: Option<Duration>) {
    let timer = async {
        match duration {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let term = async {
        #[cfg(unix)]
        {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        }
        #[cfg(not(unix))]
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
        _ = timer => {}
    }
}

async fn cmd_run(args: RunArgs) -> anyhow::Result<()> {
    let scenario = build_scenario(&args)?;
    let mut opts = match (&args.mqtt, args.transport) {
        (Some(url), _) => RunOptions::mqtt(url.clone()),
        (None, HubTransport::Ws) => RunOptions::websocket(args.url.clone()),
        (None, HubTransport::Http) => RunOptions::http(args.url.clone()),
    };
    opts.buffer = args.buffer;
    opts.clock = ClockConfig {
        start_ms: None,
        speed: args.speed,
    };
    if let Some(n) = args.seq_start {
        opts.seq_start = SeqStart::Fixed(n);
    }
    opts.auth = args.auth.source()?;
    opts.check()?;
    let stats = SimStats::new();
    opts.stats = stats.clone();
    let target = args.mqtt.clone().unwrap_or_else(|| args.url.clone());
    let devices = scenario.devices().len();
    if !args.json {
        eprintln!(
            "telehub-sim: scenario {:?}: {} rooms, {devices} devices, about {:.1} readings/s -> {target}",
            scenario.name,
            scenario.rooms.len(),
            scenario.readings_per_sec()
        );
    }
    // The status line shares stdout with the summary, so not with --json.
    let status = (!args.quiet && !args.json && std::io::stdout().is_terminal())
        .then(|| tokio::spawn(status_line(stats.clone())));
    let summary = telehub_sim::run(scenario, opts, shutdown_signal(args.duration))
        .await
        .context("simulator run failed")?;
    if let Some(s) = status {
        s.abort();
        print!("\r\x1b[2K");
        let _ = std::io::stdout().flush();
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        print_summary(&summary);
    }
    Ok(())
}

/// Redraw one status line in place every second.
async fn status_line(stats: SimStats) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last = stats.snapshot();
    let mut last_at = std::time::Instant::now();
    loop {
        tick.tick().await;
        let now = stats.snapshot();
        let dt = last_at.elapsed().as_secs_f64().max(1e-3);
        let rate = (now.generated - last.generated) as f64 / dt;
        let refused = if now.auth_refused > 0 {
            format!(" | token refused {}", now.auth_refused)
        } else {
            String::new()
        };
        print!(
            "\r\x1b[2Kdevices {}/{} connected | {:.1} readings/s | confirmed {} | reconnects {} | buffered {} | dropped {}{refused}",
            now.connected, now.devices, rate, now.acked, now.reconnects, now.buffered, now.dropped
        );
        let _ = std::io::stdout().flush();
        last = now;
        last_at = std::time::Instant::now();
    }
}

fn print_summary(s: &Summary) {
    let t = &s.totals;
    println!(
        "scenario {:?} over {}: {:.1} s, {} devices",
        s.scenario, s.transport, s.elapsed_secs, t.devices
    );
    println!(
        "  readings:  {} generated, {} confirmed, {} unconfirmed at exit, {} dropped (buffer of {} per device full)",
        t.generated,
        t.acked,
        s.devices.iter().map(|d| d.unacked).sum::<u64>(),
        t.dropped,
        s.buffer
    );
    println!(
        "  sent:      {} ({} resent after reconnects); reconnects {}, failed connection attempts {}",
        t.sent, t.resent, t.reconnects, t.connect_failures
    );
    println!(
        "  commands:  {} answered ({} reboots); hub errors {} ({} rate_limited)",
        t.commands, t.reboots, t.hub_errors, t.rate_limited
    );
    if t.auth_refused > 0 || t.token_refreshes > 0 {
        println!(
            "  tokens:    {} refreshed; {} connections refused for their token",
            t.token_refreshes, t.auth_refused
        );
    }
    let lost = s.lost();
    if lost > 0 {
        println!(
            "  LOST:      {lost} readings were never confirmed (dropped or unconfirmed at exit)"
        );
    }
}

async fn cmd_bench(args: BenchArgs) -> anyhow::Result<()> {
    let auth = args.auth.source()?;
    if let Some(rate) = args.churn {
        let report = run_churn(ChurnOptions {
            url: args.url,
            rate,
            duration: args.churn_for,
            pid: args.pid,
            auth,
        })
        .await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            println!(
                "churn: {} started, {} welcomed and closed, {} failed{}, {} skipped (in flight)",
                report.started,
                report.completed,
                report.failed,
                report
                    .first_error
                    .as_deref()
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default(),
                report.skipped
            );
            if let (Some(b), Some(a), Some(fb), Some(fa)) = (
                report.rss_before_kib,
                report.rss_after_kib,
                report.fds_before,
                report.fds_after,
            ) {
                println!("hub: RSS {b} -> {a} KiB, open fds {fb} -> {fa}");
            }
        }
        return Ok(());
    }
    if let Some(n) = args.idle {
        let report = run_idle(IdleOptions {
            url: args.url,
            connections: n,
            per_room: args.idle_per_room,
            hold: args.idle_hold,
            pid: args.pid,
            auth,
        })
        .await?;
        if args.json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print_idle(&report);
        }
        return Ok(());
    }
    let LoadShape {
        rooms,
        devices,
        dashboards,
        rate,
    } = args.shape;
    if !args.json {
        eprintln!(
            "bench: {rooms} rooms x {devices} devices x {dashboards} dashboards at {rate} Hz; warm-up {:.1} s, window {:.1} s",
            args.warmup.as_secs_f64(),
            args.duration.as_secs_f64()
        );
    }
    let report = run_bench(BenchOptions {
        url: args.url,
        dashboard_urls: args.dashboard_urls,
        rooms,
        devices,
        dashboards,
        rate_hz: rate,
        duration: args.duration,
        warmup: args.warmup,
        pid: args.pid,
        auth,
        slow_viewers: args.slow_viewers,
        slow_read_every: args.slow_read_every,
        slow_recv_buffer: args.slow_recv_buffer,
    })
    .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_bench(&report);
    }
    Ok(())
}

fn print_bench(r: &BenchReport) {
    let ms = |us: f64| us / 1000.0;
    println!(
        "readings in   {:>10.1}/s   ({} in {:.2} s)",
        r.readings_per_sec, r.readings_sent, r.window_secs
    );
    println!(
        "deliveries    {:>10.1}/s   ({} of {} expected; lost {} = {:.4}%)",
        r.deliveries_per_sec,
        r.deliveries,
        r.deliveries_expected,
        r.lost,
        r.loss_ratio * 100.0
    );
    println!(
        "latency       p50 {:.3} ms   p99 {:.3} ms   p99.9 {:.3} ms   max {:.3} ms",
        ms(r.latency.p50_us),
        ms(r.latency.p99_us),
        ms(r.latency.p999_us),
        ms(r.latency.max_us)
    );
    if r.dashboards_closed > 0 || r.device_errors > 0 || r.untimed > 0 {
        println!(
            "trouble       {} dashboards closed, {} device error frames, {} untimed deliveries",
            r.dashboards_closed, r.device_errors, r.untimed
        );
    }
    if let Some(h) = &r.hub {
        println!(
            "hub pid {}   RSS {:.1} -> {:.1} MiB; CPU {:.2} s ({:.1}% of a core), {:.2} µs per delivery",
            h.pid,
            h.rss_start_kib as f64 / 1024.0,
            h.rss_end_kib as f64 / 1024.0,
            h.cpu_secs,
            h.cpu_cores * 100.0,
            h.cpu_us_per_delivery
        );
    }
    if let Some(s) = &r.slow_viewers {
        print_slow(s);
    }
}

fn print_slow(s: &telehub_sim::bench::slow::SlowCounts) {
    println!(
        "slow viewers  {}: {} readings and {} skipped frames ({} readings skipped); {} closed",
        s.viewers, s.readings, s.skipped_frames, s.skipped_readings, s.closed
    );
}

fn print_idle(r: &IdleReport) {
    println!(
        "idle: {} of {} dashboards open in {:.1} s ({} rooms, {} source addresses); {} failed{}",
        r.opened,
        r.requested,
        r.connect_secs,
        r.rooms,
        r.source_addrs,
        r.failed,
        r.first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    if r.dropped_while_held > 0 {
        println!("  {} connections closed while held", r.dropped_while_held);
    }
    match (r.rss_before_kib, r.rss_open_kib, r.rss_after_kib) {
        (Some(b), Some(o), Some(a)) => println!(
            "  hub RSS {:.1} MiB before, {:.1} MiB open, {:.1} MiB after close; {:.0} bytes ({:.2} KiB) per connection",
            b as f64 / 1024.0,
            o as f64 / 1024.0,
            a as f64 / 1024.0,
            r.bytes_per_connection.unwrap_or(0.0),
            r.bytes_per_connection.unwrap_or(0.0) / 1024.0
        ),
        _ => println!("  (give --pid to measure the hub's memory)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn kinds_by_name() {
        assert_eq!(parse_kind("air-quality"), Ok(Kind::AirQuality));
        assert!(parse_kind("toaster").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
