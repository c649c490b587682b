//! The one launcher of a `telehub` *process*, for the tests that need the real binary
//! (signals, exit codes, a kill -9 crash, a restart on the same data) and for the
//! examples. It starts `telehub serve … --listen 127.0.0.1:0`, reads the address the hub
//! really bound from its `listening on http://ADDR` log line (src/server.rs), stops it
//! gracefully (SIGTERM, then waits) or hard (SIGKILL), starts it again at that same
//! address on the same data, and kills it on drop. No port is guessed.
//!
//! The binary's path comes from the caller: `env!("CARGO_BIN_EXE_telehub")` in the root
//! crate's tests, [`binary`] elsewhere (examples, devices/tests).

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a starting hub may take to log its address.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stopping hub may take to exit after SIGTERM before it is killed.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// At most this many log lines are kept for failure messages.
const LOG_LINES: usize = 2_000;
/// The line src/server.rs logs once it is bound.
const LISTENING: &str = "listening on ";

/// Where the `telehub` binary is, for callers without `CARGO_BIN_EXE_telehub` (examples,
/// the devices crate's tests): `$TELEHUB_BIN` if set, else the `telehub` in the cargo
/// profile directory that holds the running executable (`target/<profile>/telehub` for
/// `target/<profile>/examples/x` and `target/<profile>/deps/x-HASH`). Build it first
/// (`cargo build --bin telehub`, with `--release` for release examples).
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("TELEHUB_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current exe");
    let profile = exe
        .parent()
        .and_then(|d| match d.file_name().and_then(|n| n.to_str()) {
            Some("deps" | "examples") => d.parent(),
            _ => Some(d),
        })
        .expect("a target/<profile> directory");
    profile.join("telehub")
}

/// How to start a hub: the binary, `serve`'s arguments, environment, an optional config
/// file's text and an optional durable data directory.
pub struct HubBuilder {
    bin: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    config: Option<String>,
    data_dir: Option<PathBuf>,
}

impl HubBuilder {
    /// Adds arguments after `serve` (for example `--demo`).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable (`TELEHUB_SECTION_KEY` overrides).
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.envs.push((key.into(), value.into()));
        self
    }

    /// Writes `toml` to a config file of the hub's own and passes `--config FILE`.
    pub fn config(mut self, toml: impl Into<String>) -> Self {
        self.config = Some(toml.into());
        self
    }

    /// Durable history in `dir` (`TELEHUB_HISTORY_PERSIST=true`). Without it the hub
    /// keeps history in memory, so no test writes a database into a shared directory.
    pub fn data_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.data_dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// Starts the hub on `127.0.0.1:0` and waits for its address.
    pub fn start(self) -> Hub {
        let work = tempfile::tempdir().expect("a working directory for the hub");
        let mut hub = Hub {
            builder: self,
            work,
            addr: None,
            child: None,
            log: Arc::new(Mutex::new(Vec::new())),
        };
        hub.launch("127.0.0.1:0");
        hub
    }
}

/// A running (or stopped) hub process; killed on drop.
pub struct Hub {
    builder: HubBuilder,
    /// The working directory (and config file): nothing lands in the caller's.
    work: tempfile::TempDir,
    addr: Option<SocketAddr>,
    child: Option<Child>,
    log: Arc<Mutex<Vec<String>>>,
}

impl Hub {
    /// A hub from binary `bin` (see [`binary`]), not started yet.
    pub fn builder(bin: impl AsRef<Path>) -> HubBuilder {
        HubBuilder {
            bin: bin.as_ref().to_path_buf(),
            args: Vec::new(),
            envs: Vec::new(),
            config: None,
            data_dir: None,
        }
    }

    /// Starts `bin` with the defaults (in-memory history).
    pub fn start(bin: impl AsRef<Path>) -> Hub {
        Hub::builder(bin).start()
    }

    /// The address the hub logged (and a restart reuses).
    pub fn addr(&self) -> SocketAddr {
        self.addr.expect("the hub has been started")
    }

    /// `ws://ADDR/ws/{room}/{client}` with `query` (may be empty).
    pub fn ws_url(&self, room: &str, client: &str, query: &str) -> String {
        let sep = if query.is_empty() { "" } else { "?" };
        format!("ws://{}/ws/{room}/{client}{sep}{query}", self.addr())
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything it logged (stdout and stderr), for failure messages.
    pub fn log(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }

    fn launch(&mut self, listen: &str) {
        let b = &self.builder;
        let mut cmd = Command::new(&b.bin);
        cmd.arg("serve")
            .args(&b.args)
            .args(["--listen", listen])
            .env_remove("RUST_LOG")
            .env_remove("TELEHUB_CONFIG")
            .env("TELEHUB_HISTORY_PERSIST", "false")
            .current_dir(self.work.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = &b.data_dir {
            cmd.env("TELEHUB_HISTORY_PERSIST", "true")
                .env("TELEHUB_HISTORY_DATA_DIR", dir);
        }
        if let Some(text) = &b.config {
            let path = self.work.path().join("hub.toml");
            std::fs::write(&path, text).expect("write the hub's config");
            cmd.arg("--config").arg(path);
        }
        cmd.envs(b.envs.iter().map(|(k, v)| (k, v)));
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", b.bin.display()));
        let (tx, rx) = mpsc::channel();
        self.log.lock().expect("log").clear();
        drain(child.stdout.take().expect("stdout"), &self.log, Some(tx));
        drain(child.stderr.take().expect("stderr"), &self.log, None);
        let deadline = Instant::now() + START_TIMEOUT;
        let addr = loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(addr) => break addr,
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                _ => {
                    let _ = child.kill();
                    let status = child.wait();
                    panic!(
                        "the hub did not log `{LISTENING}ADDR` (it logs at info level; is \
                         the `telehub::app` target filtered out?); exit {status:?}; \
                         its log:\n{}",
                        self.log()
                    );
                }
            }
        };
        self.addr = Some(addr);
        self.child = Some(child);
    }

    /// Starts a stopped hub again at the address its first run reported, on the same
    /// data directory. The port is ours until a few moments after the old process is
    /// gone; a start that finds it taken is retried a bounded number of times.
    pub fn restart(&mut self) {
        assert!(
            self.child.is_none(),
            "stop or kill the hub before restarting"
        );
        let listen = self.addr().to_string();
        for attempt in 1.. {
            let started =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.launch(&listen)));
            match started {
                Ok(()) => return,
                Err(_) if attempt < 20 && self.log().contains("in use") => {
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => std::panic::resume_unwind(e),
            }
        }
    }

    /// Sends SIGTERM without waiting (see [`Hub::wait_exit`]).
    pub fn sigterm(&self) {
        if let Some(pid) = self.pid() {
            let ok = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill -TERM {pid} failed");
        }
    }

    /// Sends SIGHUP (with `[server.tls]`: reload the certificate and key).
    pub fn sighup(&self) {
        if let Some(pid) = self.pid() {
            let ok = Command::new("kill")
                .args(["-HUP", &pid.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "kill -HUP {pid} failed");
        }
    }

    /// Waits (without blocking the runtime) until the process exits, within
    /// [`STOP_TIMEOUT`]; then it is killed and the test fails.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the hub is running");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().expect("wait for the hub") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the hub did not exit within {STOP_TIMEOUT:?}; its log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Graceful stop: SIGTERM (the hub flushes, closes everyone with 1001), then waits.
    pub async fn stop(&mut self) -> ExitStatus {
        self.sigterm();
        self.wait_exit().await
    }

    /// Hard stop: SIGKILL, like a crash or a pulled cable (no flush, no close frames).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Reads `from` line by line into `log` until it closes (so the hub never blocks on a
/// full pipe), sending the address of the first `listening on` line to `addr`.
fn drain(
    from: impl Read + Send + 'static,
    log: &Arc<Mutex<Vec<String>>>,
    mut addr: Option<mpsc::Sender<SocketAddr>>,
) {
    let log = log.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if let Some(tx) = &addr {
                if let Some(a) = listening_addr(&line) {
                    let _ = tx.send(a);
                    addr = None;
                }
            }
            let mut l = log.lock().expect("log");
            if l.len() < LOG_LINES {
                l.push(line);
            }
        }
    });
}

/// The address in a `listening on http://ADDR` log line, whatever surrounds it (level,
/// timestamp, colour codes).
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.split(LISTENING).nth(1)?;
    // `http://` or, with `[server.tls]`, `https://`.
    rest.strip_prefix("http://")
        .or_else(|| rest.strip_prefix("https://"))?
        .split(|c: char| c.is_whitespace() || c == '\x1b')
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::listening_addr;

    #[test]
    fn the_address_is_read_from_the_log_line() {
        let line = "\x1b[2m2026-12-01T14:56:02Z\x1b[0m \x1b[32m INFO\x1b[0m listening on http://127.0.0.1:40123";
        assert_eq!(
            listening_addr(line),
            Some("127.0.0.1:40123".parse().unwrap())
        );
        assert_eq!(
            listening_addr("INFO listening on http://[::1]:8080 extra"),
            Some("[::1]:8080".parse().unwrap())
        );
        assert_eq!(
            listening_addr("INFO listening on https://127.0.0.1:9"),
            Some("127.0.0.1:9".parse().unwrap())
        );
        assert_eq!(listening_addr("INFO history in memory only"), None);
    }
}
