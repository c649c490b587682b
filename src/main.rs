//! `telehub`: parse the command line, load the configuration, set up logging, bind, and
//! hand over to [`telehub::run`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use telehub::Settings;
use tokio::net::TcpListener;

mod cli;

/// Exit code for a configuration that cannot be used.
const EXIT_CONFIG: u8 = 2;

#[derive(Parser)]
#[command(
    name = "telehub",
    version,
    about = "Live-dashboard and IoT telemetry hub"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub (the default when no command is given).
    Serve(ServeArgs),
    /// Render a chart of a room's history from a running hub into a PNG (or SVG) file.
    Plot(PlotArgs),
    /// Print a token signed with the configured HS key (`[[auth.keys]]`), for a device,
    /// a dashboard user or an admin.
    Token(TokenArgs),
    /// Write a room's stored history (`history.data_dir`) to stdout as CSV or JSON lines.
    Export(ExportArgs),
    /// Read history in the format `export` writes from stdin into the database (stop the
    /// hub first).
    Import(ImportArgs),
}

#[derive(clap::Args)]
struct ExportArgs {
    /// The room to export.
    #[arg(long)]
    room: String,
    /// Earliest `ts`: epoch ms, RFC 3339 or a window back from now (-30d, -1y).
    #[arg(long, allow_hyphen_values = true)]
    from: Option<String>,
    /// Latest `ts`, in the same forms.
    #[arg(long, allow_hyphen_values = true)]
    to: Option<String>,
    /// csv or jsonl.
    #[arg(long, default_value = "csv")]
    format: String,
}

#[derive(clap::Args)]
struct ImportArgs {
    /// csv or jsonl.
    #[arg(long, default_value = "csv")]
    format: String,
    /// Import even though the file is marked open by a hub (after a crash).
    #[arg(long)]
    force: bool,
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The token's subject: a device's client id, or a dashboard's user.
    #[arg(long)]
    sub: String,
    /// device, dashboard or admin.
    #[arg(long)]
    role: String,
    /// Room patterns (`*` globs), comma-separated or repeated: 'greenhouse-*,kitchen'.
    #[arg(long, value_delimiter = ',')]
    rooms: Vec<String>,
    /// How long the token is valid: 30s, 15m, 1h, 7d.
    #[arg(long, default_value = "1h")]
    ttl: String,
}

#[derive(clap::Args)]
struct PlotArgs {
    /// Base URL of the running hub.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Room to plot.
    #[arg(long)]
    room: String,
    /// Metric to plot (one line per device).
    #[arg(long)]
    metric: String,
    /// Only this device.
    #[arg(long)]
    device: Option<String>,
    /// How far back from now, e.g. 15m, 1h, 1d.
    #[arg(long, default_value = "15m")]
    window: String,
    /// Image width in pixels (100 to 4000).
    #[arg(long)]
    width: Option<u32>,
    /// Image height in pixels (100 to 4000).
    #[arg(long)]
    height: Option<u32>,
    /// light or dark.
    #[arg(long)]
    theme: Option<String>,
    /// Output file; a name ending in .svg gets an SVG, anything else a PNG.
    #[arg(short = 'o', long = "output")]
    output: std::path::PathBuf,
}

#[derive(clap::Args, Clone, Default)]
struct ServeArgs {
    /// Configuration file (default: ./config.toml when it exists, else built-in defaults).
    #[arg(long, env = "TELEHUB_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Address to listen on, overriding `server.listen` (port 0 picks a free port).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Keep history in memory only, overriding `history.persist` (a restarted hub then
    /// gives every room a new epoch).
    #[arg(long)]
    no_persist: bool,
    /// Serve the browser dashboard live from this folder (for editing the page) instead
    /// of the copy built into the binary; overrides `server.dashboard_dir`.
    #[arg(long)]
    dashboard_dir: Option<PathBuf>,
    /// Also run the built-in demo: simulated devices (devices/home.toml) connected to this
    /// hub over its own WebSocket endpoint, so the dashboard shows live data at once.
    #[arg(long)]
    demo: bool,
    /// Threads to run on, overriding `server.threads` (0: one per core; at most 256).
    #[arg(long, value_parser = clap::value_parser!(u16).range(0..=256))]
    threads: Option<u16>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Serve(args)) => ServeArgs {
            config: args.config.or(cli.serve.config),
            listen: args.listen.or(cli.serve.listen),
            no_persist: args.no_persist || cli.serve.no_persist,
            dashboard_dir: args.dashboard_dir.or(cli.serve.dashboard_dir),
            demo: args.demo || cli.serve.demo,
            threads: args.threads.or(cli.serve.threads),
        },
        Some(Command::Plot(args)) => return plot(args),
        Some(Command::Token(args)) => return token(args, cli.serve.config),
        Some(Command::Export(args)) => return archive(Archive::Export(args), cli.serve.config),
        Some(Command::Import(args)) => return archive(Archive::Import(args), cli.serve.config),
        None => cli.serve,
    };
    if args.demo && !cfg!(feature = "demo") {
        eprintln!("telehub: --demo needs a telehub built with the `demo` feature (the default)");
        return ExitCode::from(EXIT_CONFIG);
    }
    let mut settings = match Settings::load(args.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("telehub: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if let Some(listen) = args.listen {
        settings.server.listen = listen;
    }
    if args.no_persist {
        settings.history.persist = false;
    }
    if let Some(threads) = args.threads {
        settings.server.threads = usize::from(threads);
    }
    if let Some(dir) = args.dashboard_dir {
        settings.server.dashboard_dir = Some(dir);
    }
    telehub::telemetry::init(&settings.server.log);
    for var in Settings::ignored_env(std::env::vars()) {
        tracing::warn!(%var, "ignored: not TELEHUB_{{SECTION}}_{{KEY}} of a config section");
    }
    match serve(settings, args.demo) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("telehub: {e:#}");
            ExitCode::FAILURE
        }
    }
}

enum Archive {
    Export(ExportArgs),
    Import(ImportArgs),
}

/// `telehub export` / `telehub import` on the configured `history.data_dir`.
fn archive(which: Archive, config: Option<PathBuf>) -> ExitCode {
    let settings = match Settings::load(config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("telehub: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let dir = &settings.history.data_dir;
    let (name, result) = match which {
        Archive::Export(a) => (
            "export",
            cli::archive::export(dir, &a.room, a.from.as_deref(), a.to.as_deref(), &a.format),
        ),
        Archive::Import(a) => ("import", cli::archive::import(dir, &a.format, a.force)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("telehub {name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `telehub token`: print a signed token on stdout (nothing else goes there).
fn token(args: TokenArgs, config: Option<PathBuf>) -> ExitCode {
    let settings = match Settings::load(config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("telehub: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let Some(ttl) = cli::token::parse_ttl(&args.ttl) else {
        eprintln!("telehub token: --ttl must be a duration such as 30s, 15m, 1h or 7d");
        return ExitCode::from(EXIT_CONFIG);
    };
    match telehub::mint_token(&settings, &args.sub, &args.role, args.rooms, ttl) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("telehub token: {e}");
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `telehub plot`: fetch a chart from a running hub and write it to a file.
fn plot(args: PlotArgs) -> ExitCode {
    let format = if args
        .output
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("svg"))
    {
        telehub::PlotFormat::Svg
    } else {
        telehub::PlotFormat::Png
    };
    let req = cli::plot::PlotRequest {
        base: args.url,
        room: args.room,
        metric: args.metric,
        device: args.device,
        window: args.window,
        width: args.width,
        height: args.height,
        theme: args.theme,
        format,
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")
        .and_then(|rt| Ok(rt.block_on(cli::plot::fetch_plot(&req))?))
        .and_then(|bytes| {
            std::fs::write(&args.output, &bytes)
                .with_context(|| format!("cannot write {}", args.output.display()))?;
            Ok(bytes.len())
        });
    match result {
        Ok(n) => {
            eprintln!("wrote {} ({n} bytes)", args.output.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("telehub plot: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(settings: Settings, demo: bool) -> anyhow::Result<()> {
    // The home runtime; `telehub::run` starts the others (`server.threads`).
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async move {
        let listener = TcpListener::bind(settings.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.server.listen))?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        survive_file_size_limit();
        tokio::spawn(async move {
            stop_signal().await;
            stop_tx.send_replace(true);
        });
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|stop| *stop).await;
        };
        #[cfg(feature = "demo")]
        let demo = if demo {
            let addr = demo_address(listener.local_addr()?);
            let auth = demo_tokens(&settings);
            Some(tokio::spawn(run_demo(addr, auth, stopped(stop_rx.clone()))))
        } else {
            None
        };
        #[cfg(not(feature = "demo"))]
        let demo: Option<tokio::task::JoinHandle<()>> = {
            let _ = demo;
            None
        };
        telehub::run(listener, settings, stopped(stop_rx)).await?;
        if let Some(demo) = demo {
            let _ = demo.await;
        }
        Ok(())
    })
}

/// Where the demo devices connect: the hub's own address, on loopback when it listens
/// on every interface.
#[cfg(feature = "demo")]
fn demo_address(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    addr
}

/// With `[auth] mode = "token"`, the demo devices carry tokens the hub mints for them with
/// its own HS key (as `telehub token` would): each one only its own id, in its own room.
#[cfg(feature = "demo")]
fn demo_tokens(settings: &Settings) -> Option<telehub_sim::TokenSource> {
    if settings.auth.mode != telehub::AuthMode::Token {
        return None;
    }
    let settings = settings.clone();
    Some(telehub_sim::TokenSource::custom(move |req| {
        let ttl = std::time::Duration::from_secs(3600);
        telehub::mint_token(
            &settings,
            req.client,
            "device",
            vec![req.room.to_string()],
            ttl,
        )
        .map_err(|e| e.to_string())
    }))
}

/// Runs the built-in demo scenario in-process until the hub stops.
#[cfg(feature = "demo")]
async fn run_demo(
    addr: SocketAddr,
    auth: Option<telehub_sim::TokenSource>,
    stop: impl std::future::Future<Output = ()>,
) {
    let scenario = telehub_sim::demo_scenario();
    let rooms: Vec<String> = scenario.rooms.iter().map(|r| r.name.clone()).collect();
    tracing::info!(
        rooms = %rooms.join(", "),
        "demo: simulated devices connecting; open http://{addr}/ to watch them"
    );
    let mut opts = telehub_sim::RunOptions::websocket(format!("ws://{addr}"));
    opts.auth = auth;
    if let Err(e) = telehub_sim::run(scenario, opts, stop).await {
        tracing::warn!(error = %e, "demo devices stopped");
    }
}

/// Catches SIGXFSZ, whose default action ends the process when a write passes the file
/// size limit (`ulimit -f`): the write fails with EFBIG instead, which the history store
/// treats as a full disk (readings not acknowledged, `/healthz` 503, retried until
/// space returns) rather than losing the hub.
fn survive_file_size_limit() {
    #[cfg(target_os = "linux")]
    {
        /// SIGXFSZ on Linux (every architecture the hub is built for).
        const SIGXFSZ: i32 = 25;
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(SIGXFSZ)) {
            Ok(mut s) => {
                tokio::spawn(async move { while s.recv().await.is_some() {} });
            }
            Err(e) => tracing::warn!(error = %e, "cannot catch SIGXFSZ"),
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn stop_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
