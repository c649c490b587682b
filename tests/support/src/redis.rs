//! The one Redis launcher, for the cluster tests: Debian's `redis-server` as a real
//! process on 127.0.0.1, its data directory in a temporary folder, no RDB snapshots,
//! AOF only when asked (`Redis::start_aof`), killed on drop.
//!
//! Redis cannot listen on port 0, so a port is picked from a wide range and Redis's own
//! log says whether it got it (`Ready to accept connections`), or the process exits
//! (address in use) and another is tried, a bounded number of times.
//!
//! A missing `redis-server` fails the test with instructions; it never skips.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where to look for the server when `REDIS_SERVER` is not set and it is not on `PATH`.
const KNOWN_PATHS: [&str; 3] = [
    "/usr/bin/redis-server",
    "/usr/local/bin/redis-server",
    "/usr/sbin/redis-server",
];

/// How many ports a start tries before it gives up.
const PORT_TRIES: u32 = 20;

fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("REDIS_SERVER") {
        return PathBuf::from(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let p = d.join("redis-server");
            if p.is_file() {
                return p;
            }
        }
    }
    for p in KNOWN_PATHS {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "the cluster tests need a redis-server binary and none was found (looked at \
         $REDIS_SERVER, $PATH and {KNOWN_PATHS:?}); install it with \
         `apt-get install -y redis-server` (.ci/run does this) or set REDIS_SERVER=/path"
    );
}

/// A Redis server of one test.
pub struct Redis {
    pub port: u16,
    aof: bool,
    dir: PathBuf,
    _tmp: tempfile::TempDir,
    child: Option<Child>,
}

impl Redis {
    /// Starts Redis without persistence (`--save "" --appendonly no`).
    pub fn start() -> Redis {
        Redis::start_with(false)
    }

    /// Starts Redis with AOF on (`--appendonly yes --appendfsync always`), so a restart
    /// keeps everything it acknowledged.
    pub fn start_aof() -> Redis {
        Redis::start_with(true)
    }

    fn start_with(aof: bool) -> Redis {
        let tmp = tempfile::tempdir().expect("temporary directory for redis");
        let mut r = Redis {
            port: 0,
            aof,
            dir: tmp.path().to_path_buf(),
            _tmp: tmp,
            child: None,
        };
        for _ in 0..PORT_TRIES {
            let port = crate::mosquitto::pick_port();
            if r.spawn_on(port) {
                return r;
            }
        }
        panic!("redis-server could not bind a free port in {PORT_TRIES} tries");
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn spawn_on(&mut self, port: u16) -> bool {
        let log = self.dir.join(format!("redis-{port}.log"));
        let mut cmd = Command::new(binary());
        cmd.arg("--port")
            .arg(port.to_string())
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", if self.aof { "yes" } else { "no" }])
            .args(["--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "cannot run redis-server ({e}); install it with `apt-get install -y redis-server`"
            )
        });
        let deadline = Instant::now() + crate::WAIT;
        loop {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("Ready to accept connections") {
                self.port = port;
                self.child = Some(child);
                return true;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("redis-server did not become ready on port {port}: {text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends one command (plain words, no spaces inside) and returns Redis's raw answer's
    /// first line (`+OK`, `:1`, `-ERR ...`, `$5`...).
    pub fn command(&self, words: &[&str]) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        s.set_read_timeout(Some(crate::WAIT)).ok();
        let mut req = format!("*{}\r\n", words.len());
        for w in words {
            req.push_str(&format!("${}\r\n{w}\r\n", w.len()));
        }
        s.write_all(req.as_bytes()).expect("write to redis");
        let mut line = String::new();
        let _ = BufReader::new(s).read_line(&mut line);
        line.trim_end().to_string()
    }

    /// `INFO section` as text (`commandstats`, `cpu`, ...).
    pub fn info(&self, section: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to redis");
        s.set_read_timeout(Some(crate::WAIT)).ok();
        let req = format!("*2\r\n$4\r\nINFO\r\n${}\r\n{section}\r\n", section.len());
        s.write_all(req.as_bytes()).expect("write to redis");
        let mut r = BufReader::new(s);
        let mut head = String::new();
        let _ = r.read_line(&mut head);
        let len: usize = head.trim_end().trim_start_matches('$').parse().unwrap_or(0);
        let mut body = vec![0u8; len];
        let _ = r.read_exact(&mut body);
        String::from_utf8_lossy(&body).into_owned()
    }

    /// `calls` of one command in `INFO commandstats` (0 if it never ran).
    pub fn calls(&self, command: &str) -> u64 {
        let stats = self.info("commandstats");
        let key = format!("cmdstat_{command}:calls=");
        stats
            .lines()
            .find_map(|l| l.strip_prefix(&key))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// `SHUTDOWN NOSAVE`, waits for the process to exit, and starts Redis again on the
    /// same port and directory (with AOF, its data comes back).
    pub fn restart(&mut self) {
        let _ = self.command(&["SHUTDOWN", "NOSAVE"]);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        let port = self.port;
        for _ in 0..50 {
            if self.spawn_on(port) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("redis-server could not start again on port {port}");
    }

    /// Redis's log so far (for failure messages).
    pub fn log(&self) -> String {
        let mut out = String::new();
        if let Ok(mut f) = std::fs::File::open(self.dir.join(format!("redis-{}.log", self.port))) {
            let _ = f.read_to_string(&mut out);
        }
        out
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
