//! `[server.tls]` end to end: a real hub process with a throwaway CA and a server
//! certificate for `localhost`/127.0.0.1 made at run time (rcgen), and rustls clients
//! that trust that CA. https and wss work (with and without tokens), an untrusted or a
//! plain-HTTP client is refused while the hub carries on, SIGHUP swaps the certificate
//! for new connections only, and bad files stop start-up naming their key.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SerialNumber};
use serde_json::json;
use telehub_testkit::hub::Hub;
use telehub_testkit::tls;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{hub_process, Client, WAIT};
use crate::tokens::{tok, SECRET};

/// A CA that signs server certificates for `localhost` and 127.0.0.1.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate with `serial`: (certificate PEM, key PEM, certificate DER).
    fn server(&self, serial: u64) -> (String, String, Vec<u8>) {
        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
            .expect("server params");
        params.serial_number = Some(SerialNumber::from(serial));
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem(), cert.der().to_vec())
    }
}

/// The hub's certificate files in a directory of the test's own.
struct Files {
    _dir: tempfile::TempDir,
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn new(cert_pem: &str, key_pem: &str) -> Files {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = Files {
            cert: dir.path().join("cert.pem"),
            key: dir.path().join("key.pem"),
            _dir: dir,
        };
        files.write(cert_pem, key_pem);
        files
    }

    fn write(&self, cert_pem: &str, key_pem: &str) {
        std::fs::write(&self.cert, cert_pem).expect("write cert");
        std::fs::write(&self.key, key_pem).expect("write key");
    }

    fn config(&self, extra: &str) -> String {
        format!(
            "[server.tls]\ncert_file = {:?}\nkey_file = {:?}\n{extra}",
            self.cert.display().to_string(),
            self.key.display().to_string()
        )
    }
}

/// A TLS hub with a fresh CA and certificate (serial 1).
fn tls_hub(extra: &str) -> (Hub, Ca, Files) {
    let ca = Ca::new("telehub test CA");
    let (cert, key, _) = ca.server(1);
    let files = Files::new(&cert, &key);
    let hub = hub_process().config(files.config(extra)).start();
    (hub, ca, files)
}

fn wss(hub: &Hub, room: &str, client: &str, query: &str) -> String {
    format!(
        "wss://localhost:{}/ws/{room}/{client}?{query}",
        hub.addr().port()
    )
}

async fn metrics(hub: &Hub, ca: &Ca) -> String {
    tls::get(hub.addr(), "/metrics", "", &ca.pem)
        .await
        .expect("GET /metrics over https")
        .text()
}

#[tokio::test]
async fn https_serves_the_api_and_wss_carries_readings_from_device_to_dashboard() {
    let (hub, ca, _files) = tls_hub("");
    let health = tls::get(hub.addr(), "/healthz", "", &ca.pem)
        .await
        .expect("GET /healthz over https");
    assert_eq!(health.status, 200, "{}", health.text());

    let mut dash = Client::connect_tls(&wss(&hub, "lab", "d1", "role=dashboard"), &ca.pem, &[])
        .await
        .expect("wss dashboard");
    assert_eq!(dash.recv_type("welcome").await["room"], "lab");
    let mut dev = Client::connect_tls(&wss(&hub, "lab", "t1", "role=device"), &ca.pem, &[])
        .await
        .expect("wss device");
    let _ = dev.recv_type("welcome").await;
    dev.reading("temperature", 21.5, 1).await;
    let r = dash.recv_type("reading").await;
    assert_eq!(
        (r["device"].clone(), r["value"].clone()),
        (json!("t1"), json!(21.5))
    );
    dash.close().await;
    dev.close().await;
}

#[tokio::test]
async fn wss_with_token_auth_accepts_a_bearer_token_and_refuses_none() {
    let auth = format!(
        "[auth]\nmode = \"token\"\n[[auth.keys]]\nkid = \"main\"\nalgorithm = \"HS256\"\nsecret = \"{SECRET}\"\n"
    );
    let (hub, ca, _files) = tls_hub(&auth);
    let bearer = format!("Bearer {}", tok("t1", "device", &["greenhouse-*"]));
    let url = wss(&hub, "greenhouse-1", "t1", "role=device&acks=true");
    let mut dev = Client::connect_tls(&url, &ca.pem, &[("authorization", &bearer)])
        .await
        .expect("wss with a bearer token");
    let _ = dev.recv_type("welcome").await;
    dev.reading("temperature", 21.5, 7).await;
    assert_eq!(dev.recv_type("accepted").await["seq"], 7);
    let err = Client::connect_tls(&url, &ca.pem, &[])
        .await
        .err()
        .expect("no token: refused");
    assert_eq!(telehub_testkit::ws::refusal(&err).map(|r| r.0), Some(401));
    dev.close().await;
}

#[tokio::test]
async fn untrusted_and_plain_http_clients_are_refused_and_the_hub_carries_on() {
    let (hub, ca, _files) = tls_hub("");
    let stranger = Ca::new("someone else's CA");
    let url = wss(&hub, "lab", "d1", "");
    assert!(
        Client::connect_tls(&url, &stranger.pem, &[]).await.is_err(),
        "a client that does not trust the hub's CA must fail the handshake"
    );

    // Plain HTTP on the TLS port: no HTTP answer, the connection is closed, in time.
    let mut s = tokio::net::TcpStream::connect(hub.addr())
        .await
        .expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let read = tokio::time::timeout(WAIT, s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the hub left a plain-HTTP client hanging");
    assert!(
        !got.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );

    let health = tls::get(hub.addr(), "/healthz", "", &ca.pem)
        .await
        .expect("healthz");
    assert_eq!(health.status, 200);
    let m = metrics(&hub, &ca).await;
    assert!(
        m.lines()
            .any(|l| l == "telehub_connections_rejected_total{reason=\"tls_handshake\"} 2"),
        "both failed handshakes are counted:\n{m}"
    );
}

/// A client that opens TCP and starts a ClientHello it never finishes (slowloris on TLS)
/// is closed once the handshake timeout (10 s) passes, and counted; a client that
/// arrives meanwhile is served.
#[tokio::test]
async fn a_client_hello_that_never_completes_is_closed_after_the_handshake_timeout() {
    let (hub, ca, _files) = tls_hub("");
    let mut s = tokio::net::TcpStream::connect(hub.addr())
        .await
        .expect("connect");
    // A TLS record header announcing a 512-byte handshake record, then nothing.
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .expect("write");
    let started = std::time::Instant::now();

    let health = tls::get(hub.addr(), "/healthz", "", &ca.pem)
        .await
        .expect("healthz while a handshake hangs");
    assert_eq!(health.status, 200);

    let mut got = Vec::new();
    let read = tokio::time::timeout(WAIT * 2, s.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the hub kept a stalled TLS handshake open");
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "closed before the handshake timeout: {:?}",
        started.elapsed()
    );
    let m = metrics(&hub, &ca).await;
    assert!(
        m.lines()
            .any(|l| l == "telehub_connections_rejected_total{reason=\"tls_handshake\"} 1"),
        "the stalled handshake is counted:\n{m}"
    );
}

/// The certificate a new TLS connection is shown.
async fn served_cert(hub: &Hub, ca: &Ca) -> Vec<u8> {
    let s = tls::connect(hub.addr(), tls::client_config(&ca.pem))
        .await
        .expect("TLS connect");
    tls::peer_certificate(&s).expect("a server certificate")
}

#[tokio::test]
async fn sighup_serves_a_new_certificate_to_new_connections_and_keeps_open_ones() {
    let (hub, ca, files) = tls_hub("");
    let mut dash = Client::connect_tls(&wss(&hub, "lab", "d1", ""), &ca.pem, &[])
        .await
        .expect("wss dashboard");
    let _ = dash.recv_type("welcome").await;

    let (cert, key, der) = ca.server(2);
    assert_ne!(served_cert(&hub, &ca).await, der);
    files.write(&cert, &key);
    hub.sighup();
    let deadline = tokio::time::Instant::now() + WAIT;
    while served_cert(&hub, &ca).await != der {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no reload:\n{}",
            hub.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A bad file on reload: logged, and the certificate of serial 2 stays.
    files.write("not a certificate", &key);
    hub.sighup();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !hub.log().contains("TLS reload failed") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no error:\n{}",
            hub.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(hub.log().contains("server.tls.cert_file"), "{}", hub.log());
    assert_eq!(served_cert(&hub, &ca).await, der);

    // The dashboard opened before the reloads still gets readings.
    let mut dev = Client::connect_tls(&wss(&hub, "lab", "t1", "role=device"), &ca.pem, &[])
        .await
        .expect("wss device");
    dev.reading("humidity", 40.0, 1).await;
    assert_eq!(dash.recv_type("reading").await["metric"], "humidity");
    dev.close().await;
    dash.close().await;
}

fn serve_with(config: &str, dir: &Path) -> (Option<i32>, String) {
    let path = dir.join("hub.toml");
    std::fs::write(&path, config).expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_telehub"))
        .env_remove("RUST_LOG")
        .env_remove("TELEHUB_CONFIG")
        .env("TELEHUB_HISTORY_PERSIST", "false")
        .current_dir(dir)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .output()
        .expect("run telehub");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn bad_certificate_files_stop_start_up_naming_the_key() {
    let ca = Ca::new("telehub test CA");
    let (cert, key, _) = ca.server(1);
    let (_, other_key, _) = ca.server(2);
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("", key.as_str(), "server.tls.cert_file", "no certificate"),
        (cert.as_str(), "", "server.tls.key_file", "no private key"),
        (
            cert.as_str(),
            other_key.as_str(),
            "server.tls.key_file",
            "does not match",
        ),
    ];
    for (cert_pem, key_pem, named, says) in cases {
        let files = Files::new(cert_pem, key_pem);
        let (code, err) = serve_with(&files.config(""), dir.path());
        assert_eq!(code, Some(2), "{err}");
        assert!(err.contains(named) && err.contains(says), "{err}");
    }
    let files = Files::new(&cert, &key);
    std::fs::remove_file(&files.cert).expect("remove");
    let (code, err) = serve_with(&files.config(""), dir.path());
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("server.tls.cert_file") && err.contains("cannot read"),
        "{err}"
    );
}
