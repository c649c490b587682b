//! The test harness: `spawn_app()` starts a hub in-process on a free port, and `Client`
//! is a real WebSocket client with timeouts on every wait.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use telehub::Settings;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestApp {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

/// Starts a hub with the default settings on 127.0.0.1:0.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Starts a hub on 127.0.0.1:0 after `configure` has adjusted the settings.
pub async fn spawn_app_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    telehub::telemetry::init("warn");
    let mut settings = Settings::default();
    // Tests keep history in memory unless they ask for a data directory of their own
    // (the default `./data` would be shared by every test).
    settings.history.persist = false;
    configure(&mut settings);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        telehub::run(listener, settings, async {
            let _ = rx.await;
        })
        .await
        .expect("hub runs");
    });
    TestApp {
        addr,
        stop: Some(tx),
        handle: Some(handle),
    }
}

impl TestApp {
    pub fn ws_url(&self, room: &str, client: &str, query: &str) -> String {
        let sep = if query.is_empty() { "" } else { "?" };
        format!("ws://{}/ws/{room}/{client}{sep}{query}", self.addr)
    }

    /// Connects and returns the client with its welcome already read.
    pub async fn connect(&self, room: &str, client: &str, role: &str) -> (Client, Value) {
        self.connect_query(room, client, &format!("role={role}"))
            .await
    }

    pub async fn connect_query(&self, room: &str, client: &str, query: &str) -> (Client, Value) {
        let mut c = Client::connect(&self.ws_url(room, client, query))
            .await
            .expect("connect");
        let welcome = c.recv_type("welcome").await;
        (c, welcome)
    }

    /// Stops the hub as SIGTERM would and waits until `run` returns.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(WAIT, h)
                .await
                .expect("hub stops in time")
                .expect("hub task");
        }
    }

    /// A plain HTTP/1.1 GET; returns status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path, "").await
    }
}

/// Sends `GET path` with extra header lines and reads the whole response.
pub async fn http_get(addr: SocketAddr, path: &str, extra_headers: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra_headers}\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut buf))
        .await
        .expect("response in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).to_string();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    // Undo chunked transfer encoding if present.
    let body = if text
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A WebSocket client for tests.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    pub async fn connect(url: &str) -> Result<Client, WsError> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        Ok(Client { ws })
    }

    /// Connects with a tiny receive buffer, so that a client that stops reading fills
    /// its socket quickly (the stuck-dashboard test).
    pub async fn connect_small_buffer(url: &str, addr: SocketAddr) -> Client {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("rcvbuf");
        let stream = socket.connect(addr).await.expect("connect");
        let (ws, _) = tokio_tungstenite::client_async(url, MaybeTlsStream::Plain(stream))
            .await
            .expect("handshake");
        Client { ws }
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws
            .send(Message::Text(s.to_string().into()))
            .await
            .expect("send");
    }

    /// The next message as JSON, skipping pings; panics on close or timeout.
    pub async fn recv_json(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a message in time")
                .expect("stream open")
                .expect("no error");
            match msg {
                Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON"),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Skips messages until one of type `kind` arrives.
    pub async fn recv_type(&mut self, kind: &str) -> Value {
        loop {
            let v = self.recv_json().await;
            if v["type"] == kind {
                return v;
            }
        }
    }

    /// Skips messages until the close frame; returns its code and reason.
    pub async fn recv_close(&mut self) -> (CloseCode, String) {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a close in time");
            match msg {
                Some(Ok(Message::Close(Some(f)))) => return (f.code, f.reason.to_string()),
                Some(Ok(Message::Close(None))) => panic!("close without a code"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("error before the close frame: {e}"),
                None => panic!("stream ended without a close frame"),
            }
        }
    }

    /// Asserts that nothing but pings arrives for `ms` milliseconds.
    pub async fn expect_silence(&mut self, ms: u64) {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }

    /// Sends a reading as a device.
    pub async fn reading(&mut self, metric: &str, value: f64, seq: u64) {
        self.send_json(
            serde_json::json!({"type":"reading","metric":metric,"value":value,"seq":seq}),
        )
        .await;
    }
}

/// The error frame a client gets next, as (code, message).
pub async fn next_error(c: &mut Client) -> (String, String) {
    let e = c.recv_type("error").await;
    (
        e["code"].as_str().unwrap_or_default().to_string(),
        e["message"].as_str().unwrap_or_default().to_string(),
    )
}

/// Spawns a prepared command of the real `telehub` binary and returns the child with the
/// address it logs (`listening on http://ADDR`).
pub fn spawn_binary(mut cmd: std::process::Command) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn telehub");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let _ = tx.send(rest.trim().to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the hub logs its address");
    (child, addr)
}
