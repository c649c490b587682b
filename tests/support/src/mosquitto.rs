//! The one Mosquitto launcher, for the MQTT bridge tests, the simulator's MQTT tests
//! and the MQTT benchmark: a real broker with its own config and persistence directory
//! in a temporary folder, listening on 127.0.0.1, stopped (SIGTERM, so it saves its
//! sessions) or killed, restarted on the same port and data, killed on drop.
//!
//! Mosquitto cannot listen on port 0, so the port is picked from a wide range and the
//! broker's own log says whether it got it: `… running` means every listener is bound,
//! `Address already in use` means pick another (a bounded number of times). No port is
//! "reserved" by binding and dropping a listener of our own.
//!
//! A missing `mosquitto` binary fails the test with instructions; it never skips.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Where to look for the broker when `MOSQUITTO` is not set and it is not on `PATH`.
const KNOWN_PATHS: [&str; 3] = [
    "/usr/sbin/mosquitto",
    "/usr/local/sbin/mosquitto",
    "/usr/bin/mosquitto",
];

/// How many ports a start tries before it gives up.
const PORT_TRIES: u32 = 20;

/// Broker settings that differ between tests and the benchmark.
#[derive(Debug, Clone)]
pub struct Config {
    /// A second, TLS listener with a fresh test CA (see [`Mosquitto::ca_file`]).
    pub tls: bool,
    /// The TLS listener asks clients for a certificate of the test CA
    /// (`require_certificate`; see [`Mosquitto::client_cert_file`]).
    pub require_client_certificate: bool,
    /// Keep sessions across a SIGTERM restart (the tests); the benchmark turns it off.
    pub persistence: bool,
    /// Mosquitto's `max_queued_messages`.
    pub max_queued_messages: u32,
    /// Mosquitto's `max_inflight_messages`.
    pub max_inflight_messages: u32,
    /// Topic patterns no client may subscribe to (e.g. `secret/#`), refused in the
    /// SUBACK (0x87 "not authorized" to MQTT 5 clients, 0x80 to 3.1.1), so that a test
    /// can see a broker's ACL at work. Mosquitto 2's `acl_file` only filters what it
    /// delivers and grants every SUBSCRIBE; its dynamic security plugin refuses them, so
    /// a non-empty list loads that plugin with a generated config. Empty: no ACL.
    pub deny_subscribe: Vec<String>,
    /// Mosquitto's `allow_anonymous`. With `false` (and no password file) every
    /// connect is refused as "not authorized" (0x87 to MQTT 5, return code 5 to 3.1.1),
    /// so that a test can see a broker's CONNACK refusal.
    pub allow_anonymous: bool,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            tls: false,
            require_client_certificate: false,
            persistence: true,
            max_queued_messages: 100_000,
            max_inflight_messages: 100,
            deny_subscribe: Vec::new(),
            allow_anonymous: true,
        }
    }
}

pub struct Mosquitto {
    /// The plain MQTT listener.
    pub port: u16,
    /// The TLS listener, when started with [`Mosquitto::start_tls`].
    pub tls_port: Option<u16>,
    config: Config,
    dir: PathBuf,
    /// Removes `dir` on drop.
    _tmp: tempfile::TempDir,
    child: Option<Child>,
}

fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("MOSQUITTO") {
        return PathBuf::from(p);
    }
    if let Some(path) = std::env::var_os("PATH") {
        for d in std::env::split_paths(&path) {
            let p = d.join("mosquitto");
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
        "the MQTT tests need a Mosquitto broker binary and none was found (looked at $MOSQUITTO, \
         $PATH and {KNOWN_PATHS:?}); install it with `apt-get install -y mosquitto` \
         (.ci/run does this) or set MOSQUITTO=/path/to/mosquitto"
    );
}

/// Mosquitto's dynamic security plugin (in Debian's `mosquitto` package).
fn dynamic_security_plugin() -> PathBuf {
    const PATHS: [&str; 3] = [
        "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so",
        "/usr/lib/aarch64-linux-gnu/mosquitto_dynamic_security.so",
        "/usr/local/lib/mosquitto_dynamic_security.so",
    ];
    if let Some(p) = std::env::var_os("MOSQUITTO_DYNSEC") {
        return PathBuf::from(p);
    }
    PATHS
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "this test needs Mosquitto's dynamic security plugin (looked at $MOSQUITTO_DYNSEC and {PATHS:?}); \
                 it comes with Debian's `mosquitto` package"
            )
        })
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// A port to try, spread over 20000..60000 by process, counter and clock, so that
/// parallel tests and processes rarely pick the same one (and retry when they do).
pub(crate) fn pick_port() -> u16 {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos() as u64);
    let mut x = (std::process::id() as u64) << 32 ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ nanos;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    20_000 + (x % 40_000) as u16
}

impl Mosquitto {
    /// Starts a broker on a free port with persistence in a fresh temporary directory.
    pub fn start() -> Mosquitto {
        Mosquitto::start_with(Config::default())
    }

    /// Starts a broker with `config`.
    pub fn start_with(config: Config) -> Mosquitto {
        let mut m = Mosquitto::prepare(config);
        if m.config.tls {
            m.make_certificates();
        }
        m.launch_on_some_port();
        m
    }

    /// Starts a broker with a TLS listener too (`tls_port`), its server certificate for
    /// `127.0.0.1` and `localhost` signed by a fresh test CA ([`Mosquitto::ca_file`]),
    /// made with the `openssl` command.
    pub fn start_tls() -> Mosquitto {
        Mosquitto::start_with(Config {
            tls: true,
            ..Config::default()
        })
    }

    fn make_certificates(&self) {
        let d = self.dir.clone();
        let run = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&d)
                .output()
                .unwrap_or_else(|e| {
                    panic!("the TLS test needs the `openssl` command ({e}); apt-get install -y openssl")
                });
            assert!(
                out.status.success(),
                "openssl {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .expect("write ext.cnf");
        // `req` with a new P-256 key, unencrypted, into `key`.
        let new_key = |key: &'static str| {
            [
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                key,
            ]
        };
        run(&[
            &new_key("ca.key")[..],
            &[
                "-x509",
                "-out",
                "ca.crt",
                "-days",
                "2",
                "-subj",
                "/CN=telehub test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ][..],
        ]
        .concat());
        run(&[
            &new_key("server.key")[..],
            &["-out", "server.csr", "-subj", "/CN=localhost"][..],
        ]
        .concat());
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        // A client certificate of the same CA, for brokers that require one (an X.509
        // v3 certificate: extensions make it one, and rustls takes no other).
        std::fs::write(
            d.join("client_ext.cnf"),
            "basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n",
        )
        .expect("write client_ext.cnf");
        run(&[
            &new_key("client.key")[..],
            &["-out", "client.csr", "-subj", "/CN=telehub-bridge"][..],
        ]
        .concat());
        run(&[
            "x509",
            "-req",
            "-in",
            "client.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "client.crt",
            "-days",
            "2",
            "-extfile",
            "client_ext.cnf",
        ]);
        for f in ["ca.crt", "server.crt", "server.key"] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(d.join(f), std::fs::Permissions::from_mode(0o644))
                .expect("let mosquitto read the certificates");
        }
    }

    /// The test CA's certificate (PEM), with [`Mosquitto::start_tls`].
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// A client certificate (PEM) the test CA signed, with [`Mosquitto::start_tls`].
    pub fn client_cert_file(&self) -> PathBuf {
        self.dir.join("client.crt")
    }

    /// The key (PEM, PKCS#8) of [`Mosquitto::client_cert_file`].
    pub fn client_key_file(&self) -> PathBuf {
        self.dir.join("client.key")
    }

    fn prepare(config: Config) -> Mosquitto {
        let tmp = tempfile::Builder::new()
            .prefix("telehub-mosquitto-")
            .tempdir()
            .expect("create broker dir");
        let dir = tmp.path().to_path_buf();
        // Started as root, mosquitto drops to its own user: it must be able to write its
        // persistence file (and log) here, or a restart loses every session.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                .expect("open up the broker dir");
        }
        Mosquitto {
            port: 0,
            tls_port: None,
            config,
            dir,
            _tmp: tmp,
            child: None,
        }
    }

    /// The broker's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    /// Starts the broker on ports picked by [`pick_port`], picking again while the
    /// broker reports them taken.
    fn launch_on_some_port(&mut self) {
        for _ in 0..PORT_TRIES {
            self.port = pick_port();
            self.tls_port = self.config.tls.then(pick_port);
            if self.launch() {
                return;
            }
        }
        panic!(
            "mosquitto found every one of {PORT_TRIES} ports taken; its log:\n{}",
            self.log()
        );
    }

    /// Starts the broker on `self.port` (and `tls_port`); true once its log says it is
    /// running, false if a port was taken. Any other failure panics with the log.
    fn launch(&mut self) -> bool {
        let conf = self.dir.join("mosquitto.conf");
        let text = format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous {anonymous}\n\
             persistence {persistence}\n\
             persistence_location {dir}/\n\
             autosave_interval 1\n\
             max_queued_messages {queued}\n\
             max_inflight_messages {inflight}\n\
             log_dest file {dir}/mosquitto.log\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n",
            port = self.port,
            anonymous = self.config.allow_anonymous,
            persistence = self.config.persistence,
            queued = self.config.max_queued_messages,
            inflight = self.config.max_inflight_messages,
            dir = self.dir.display()
        );
        let text = match self.tls_port {
            None => text,
            Some(tls) => format!(
                "{text}listener {tls} 127.0.0.1\ncafile {dir}/ca.crt\ncertfile {dir}/server.crt\nkeyfile {dir}/server.key\nrequire_certificate {require}\n",
                dir = self.dir.display(),
                require = self.config.require_client_certificate,
            ),
        };
        let text = if self.config.deny_subscribe.is_empty() {
            text
        } else {
            let path = self.dir.join("dynamic-security.json");
            let acls: Vec<serde_json::Value> = self
                .config
                .deny_subscribe
                .iter()
                .map(|t| serde_json::json!({"acltype":"subscribePattern","topic":t,"priority":0,"allow":false}))
                .collect();
            // Anonymous clients (every test client) are in the `anonymous` group, whose
            // one role denies the patterns; everything else is allowed.
            let config = serde_json::json!({
                "defaultACLAccess": {"publishClientSend": true, "publishClientReceive": true, "subscribe": true, "unsubscribe": true},
                "clients": [],
                "groups": [{"groupname": "anonymous", "roles": [{"rolename": "deny"}]}],
                "roles": [{"rolename": "deny", "acls": acls}],
                "anonymousGroup": "anonymous"
            });
            std::fs::write(&path, config.to_string()).expect("write the dynamic security config");
            {
                use std::os::unix::fs::PermissionsExt;
                // The plugin saves the file back (as the `mosquitto` user).
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
                    .expect("let mosquitto use the dynamic security config");
            }
            format!(
                "{text}plugin {}\nplugin_opt_config_file {}\n",
                dynamic_security_plugin().display(),
                path.display()
            )
        };
        std::fs::write(&conf, text).expect("write mosquitto.conf");
        // The log is appended to across restarts: only what this start wrote counts.
        let from = self.log().len();
        let child = Command::new(binary())
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start mosquitto: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.log();
            let this_run = log.get(from..).unwrap_or_default();
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if this_run.contains("Address already in use") {
                if exited.is_none() {
                    self.kill();
                }
                self.child = None;
                return false;
            }
            if let Some(status) = exited {
                self.child = None;
                panic!("mosquitto exited at start ({status}); its log:\n{log}");
            }
            if this_run.contains(" running")
                && TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self
                    .tls_port
                    .is_none_or(|p| TcpStream::connect(("127.0.0.1", p)).is_ok())
            {
                return true;
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not start on port {} within 10 s; its log:\n{log}",
                self.port,
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the broker (SIGKILL: no session saved), like a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the broker with SIGTERM (it saves its persistent sessions) and waits.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Starts a stopped broker again on the same port with the same data (retrying a
    /// few times while the old socket lets go of the port).
    pub fn resume(&mut self) {
        for _ in 0..PORT_TRIES {
            if self.child.is_some() || self.launch() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "mosquitto could not listen on port {} again; its log:\n{}",
            self.port,
            self.log()
        );
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        self.kill();
    }
}
