//! The process around the hub: graceful shutdown with 1001, the CLI's address log, and
//! start-up refusing a bad configuration with exit code 2.

use std::process::Command;
use std::time::Duration;

use serde_json::json;

use crate::helpers::{hub_process, spawn_app, Client};

#[tokio::test]
async fn shutdown_flushes_queued_frames_and_closes_everyone_with_1001() {
    let app = spawn_app().await;
    let (mut dash, _) = app.connect("s", "dash", "dashboard").await;
    let (mut dev, _) = app.connect("s", "dev", "device").await;
    for seq in 1..=20 {
        dev.reading("t", seq as f64, seq).await;
    }
    // Wait until the hub has taken all twenty before stopping it.
    for _ in 0..100 {
        if app
            .get("/metrics")
            .await
            .1
            .contains("telehub_readings_in_total 20")
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stopping = tokio::spawn(app.stop());
    for seq in 1..=20u64 {
        let r = dash.recv_type("reading").await;
        assert_eq!(r["seq"].as_u64(), Some(seq));
    }
    let (code, reason) = dash.recv_close().await;
    assert_eq!(u16::from(code), 1001);
    assert_eq!(reason, "server shutting down");
    let (code, _) = dev.recv_close().await;
    assert_eq!(u16::from(code), 1001);
    stopping.await.expect("stopped");
}

/// The binary run once to completion (these hubs never get as far as listening).
fn telehub() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_telehub"));
    c.env_remove("RUST_LOG")
        .env_remove("TELEHUB_CONFIG")
        // No database in the shared temp dir: these tests are about the process.
        .env("TELEHUB_HISTORY_PERSIST", "false")
        .current_dir(std::env::temp_dir());
    c
}

#[test]
fn a_bad_config_stops_start_up_with_exit_code_2_naming_key_and_file() {
    let dir = std::env::temp_dir().join(format!("telehub-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let cases = [
        ("[server]\nlisen = \"127.0.0.1:0\"\n", "lisen"),
        (
            "[limits]\noutbound_queue = \"lots\"\n",
            "limits.outbound_queue",
        ),
        ("[server]\nlisten = \"not-an-address\"\n", "server.listen"),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad{i}.toml"));
        std::fs::write(&path, text).expect("write");
        let out = telehub()
            .args(["serve", "--config"])
            .arg(&path)
            .output()
            .expect("run telehub");
        assert_eq!(out.status.code(), Some(2), "{text}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{err}");
        assert!(err.contains(&format!("bad{i}.toml")), "{err}");
    }
    let out = telehub()
        .env("TELEHUB_LIMITS_MAX_ROOMS", "zero")
        .arg("serve")
        .output()
        .expect("run telehub");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TELEHUB_LIMITS_MAX_ROOMS"));
}

#[tokio::test]
async fn the_binary_logs_its_real_address_and_exits_0_on_sigterm_closing_clients_with_1001() {
    let mut hub = hub_process().start();
    assert_ne!(hub.addr().port(), 0, "the hub logs the port it was given");
    let mut dash = Client::connect(&hub.ws_url("sig", "dash", ""))
        .await
        .expect("connect");
    let _ = dash.recv_type("welcome").await;
    dash.send_json(json!({"type":"command","id":"x","to":"nobody","name":"n"}))
        .await;
    let _ = dash.recv_type("error").await;

    hub.sigterm();
    let (code, _) = dash.recv_close().await;
    assert_eq!(u16::from(code), 1001);
    assert_eq!(hub.wait_exit().await.code(), Some(0));
}

#[tokio::test]
async fn serve_demo_shows_live_data_from_simulated_devices() {
    let mut hub = hub_process().args(["--demo"]).start();
    let addr = hub.addr();
    // A dashboard in the demo's living room sees readings arrive.
    let mut dash = Client::connect(&hub.ws_url("living-room", "viewer", ""))
        .await
        .expect("connect");
    let _ = dash.recv_type("welcome").await;
    let r = dash.recv_type("reading").await;
    assert!(r["device"].as_str().is_some_and(|d| !d.is_empty()));
    assert!(r["value"].as_f64().is_some_and(f64::is_finite));
    let (_, rooms) = crate::helpers::http_get(addr, "/api/rooms", "").await;
    let rooms: serde_json::Value = serde_json::from_str(&rooms).expect("json");
    assert!(
        rooms["rooms"].as_array().is_some_and(|r| r.len() >= 2),
        "{rooms}"
    );
    assert_eq!(hub.stop().await.code(), Some(0));
}

#[tokio::test]
async fn a_busy_dashboard_that_answers_pings_is_never_timed_out() {
    let app = crate::helpers::spawn_app_with(|s| s.server.ping_interval_ms = 200).await;
    let (mut dash, _) = app.connect("busy", "dash", "dashboard").await;
    let (mut dev, _) = app.connect("busy", "dev", "device").await;
    // Two seconds of steady traffic: ten ping intervals. The dashboard only reads (our
    // client answers pings as it reads), the device only sends.
    for seq in 1..=100u64 {
        dev.reading("t", seq as f64, seq).await;
        assert_eq!(dash.recv_type("reading").await["seq"].as_u64(), Some(seq));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let metrics = app.get("/metrics").await.1;
    assert!(
        metrics.contains("telehub_connections{role=\"dashboard\"} 1"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn an_upgrade_after_another_request_on_the_same_connection_works_too() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = crate::helpers::spawn_app().await;
    let mut s = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    // A Host the hub answers to (a loopback hub refuses other names: DNS rebinding).
    s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {}\r\n\r\n", app.addr).as_bytes())
        .await
        .expect("write");
    let mut buf = vec![0u8; 1024];
    let n = s.read(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let url = app.ws_url("keepalive", "c", "role=dashboard");
    let mut client = Client::handshake(&url, s)
        .await
        .expect("upgrade on the same connection");
    assert_eq!(client.recv_type("welcome").await["room"], "keepalive");
    app.stop().await;
}
