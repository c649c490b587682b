//! The test harness: `spawn_app()` starts a hub in-process on 127.0.0.1:0; the clients
//! (WebSocket, HTTP) and the hub-process launcher come from `telehub-testkit`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use telehub::Settings;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use telehub_testkit::http::http_get;
pub use telehub_testkit::hub::Hub;
pub use telehub_testkit::ws::{Client, Polled};
pub use telehub_testkit::WAIT;

/// The real `telehub` binary as a process with default settings (in-memory history).
pub fn hub_process() -> telehub_testkit::hub::HubBuilder {
    Hub::builder(env!("CARGO_BIN_EXE_telehub"))
}

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
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    spawn_app_on(listener, configure)
}

/// Starts a hub again at `addr`, the address an earlier one reported (a restart that
/// loses in-memory history). The old socket may hold the port for a moment: binding is
/// retried a bounded number of times.
pub async fn spawn_app_at(addr: SocketAddr) -> TestApp {
    let mut tries = 0;
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(_) if tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot bind {addr} again: {e}"),
        }
    };
    spawn_app_on(listener, |_| {})
}

fn spawn_app_on(listener: TcpListener, configure: impl FnOnce(&mut Settings)) -> TestApp {
    telehub::telemetry::init("warn");
    let mut settings = Settings::default();
    // Tests keep history in memory unless they ask for a data directory of their own
    // (the default `./data` would be shared by every test).
    settings.history.persist = false;
    // `TELEHUB_TEST_DASHBOARD_DIR=dashboard` serves the page from disk instead of the
    // copy compiled in, so a measurement of an edited page needs no rebuild.
    if let Some(dir) = std::env::var_os("TELEHUB_TEST_DASHBOARD_DIR") {
        settings.server.dashboard_dir = Some(dir.into());
    }
    configure(&mut settings);
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

    /// Stops the hub as SIGTERM would and waits until `run` returns (the shutdown
    /// grace for open connections, a browser's among them, fits in the wait).
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            tokio::time::timeout(Duration::from_secs(15), h)
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

/// The error frame a client gets next, as (code, message).
pub async fn next_error(c: &mut Client) -> (String, String) {
    c.next_error().await
}
