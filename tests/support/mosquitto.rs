//! A real Mosquitto broker for tests: its own config and persistence directory in a
//! temporary folder, a free port on 127.0.0.1, stopped (SIGTERM, so it saves its
//! sessions) and restarted on the same port and data, killed on drop.
//!
//! A missing `mosquitto` binary fails the test with instructions; it never skips.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
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

pub struct Mosquitto {
    /// The plain MQTT listener.
    pub port: u16,
    /// The TLS listener, when started with [`Mosquitto::start_tls`].
    pub tls_port: Option<u16>,
    dir: PathBuf,
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

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

static NEXT: AtomicU64 = AtomicU64::new(0);

impl Mosquitto {
    /// Starts a broker on a free port with persistence in a fresh temporary directory.
    pub fn start() -> Mosquitto {
        let mut m = Mosquitto::prepare();
        m.launch();
        m
    }

    /// Starts a broker with a TLS listener too (`tls_port`), its server certificate for
    /// `127.0.0.1` and `localhost` signed by a fresh test CA ([`Mosquitto::ca_file`]),
    /// made with the `openssl` command.
    pub fn start_tls() -> Mosquitto {
        let mut m = Mosquitto::prepare();
        let d = m.dir.clone();
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
        run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
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
        ]);
        run(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
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
        for f in ["ca.crt", "server.crt", "server.key"] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(d.join(f), std::fs::Permissions::from_mode(0o644))
                .expect("let mosquitto read the certificates");
        }
        m.tls_port = Some(free_port());
        m.launch();
        m
    }

    /// The test CA's certificate (PEM), with [`Mosquitto::start_tls`].
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    fn prepare() -> Mosquitto {
        let dir = std::env::temp_dir().join(format!(
            "telehub-mosquitto-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create broker dir");
        // Started as root, mosquitto drops to its own user: it must be able to write its
        // persistence file (and log) here, or a restart loses every session.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                .expect("open up the broker dir");
        }
        Mosquitto {
            port: free_port(),
            tls_port: None,
            dir,
            child: None,
        }
    }

    pub fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    fn launch(&mut self) {
        let conf = self.dir.join("mosquitto.conf");
        let text = format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence true\n\
             persistence_location {dir}/\n\
             autosave_interval 1\n\
             max_queued_messages 100000\n\
             max_inflight_messages 100\n\
             log_dest file {dir}/mosquitto.log\n\
             log_type error\nlog_type warning\nlog_type notice\nlog_type information\n",
            port = self.port,
            dir = self.dir.display()
        );
        let text = match self.tls_port {
            None => text,
            Some(tls) => format!(
                "{text}listener {tls} 127.0.0.1\ncafile {dir}/ca.crt\ncertfile {dir}/server.crt\nkeyfile {dir}/server.key\n",
                dir = self.dir.display()
            ),
        };
        std::fs::write(&conf, text).expect("write mosquitto.conf");
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
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self
                    .tls_port
                    .is_none_or(|p| TcpStream::connect(("127.0.0.1", p)).is_ok())
            {
                return;
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    panic!(
                        "mosquitto exited at start ({status}); its log:\n{}",
                        self.log()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not accept on port {} within 10 s; its log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
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

    /// Starts a stopped broker again on the same port with the same data.
    pub fn resume(&mut self) {
        if self.child.is_none() {
            self.launch();
        }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
