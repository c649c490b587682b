//! `limits.dashboard_linger_ms`: a dashboard's writer holds frames so that one write
//! carries several, and lingering loses, reorders and delays nothing past its length.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{spawn_app_with, TestApp, WAIT};

async fn lingering_hub(ms: u64) -> TestApp {
    spawn_app_with(|s| {
        s.limits.dashboard_linger_ms = ms;
        s.limits.rate_per_sec = 1e9;
        s.limits.rate_burst = 1e9;
    })
    .await
}

/// A dashboard on a plain socket, to see how the hub's bytes arrive read by read.
async fn raw_dashboard(addr: SocketAddr, room: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "GET /ws/{room}/raw HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("send the upgrade");
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("\"type\":\"welcome\"") {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("the welcome in time")
            .expect("read");
        assert!(n > 0, "closed before the welcome");
        seen.extend_from_slice(&chunk[..n]);
    }
    s
}

/// Reads until `want` readings have arrived; returns how many each read carried.
async fn readings_per_read(s: &mut TcpStream, want: usize) -> Vec<usize> {
    let mut per_read = Vec::new();
    while per_read.iter().sum::<usize>() < want {
        let mut chunk = vec![0u8; 65536];
        let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("readings in time")
            .expect("read");
        assert!(n > 0, "closed before every reading arrived");
        let text = String::from_utf8_lossy(&chunk[..n]);
        let readings = text.matches("\"type\":\"reading\"").count();
        if readings > 0 {
            per_read.push(readings);
        }
    }
    per_read
}

/// Five readings sent one message at a time, well within the linger: the dashboard gets
/// them in one write. The same test with no linger would see them one write each.
#[tokio::test]
async fn frames_that_arrive_within_the_linger_go_out_in_one_write() {
    let app = lingering_hub(1_000).await;
    let mut dash = raw_dashboard(app.addr, "lg").await;
    let (mut dev, _) = app.connect("lg", "dev", "device").await;
    for seq in 1..=5 {
        dev.reading("x", seq as f64, seq).await;
    }
    assert_eq!(readings_per_read(&mut dash, 5).await, vec![5]);
    app.stop().await;
}

#[tokio::test]
async fn without_linger_every_reading_is_written_at_once() {
    let app = lingering_hub(0).await;
    let mut dash = raw_dashboard(app.addr, "nolg").await;
    let (mut dev, _) = app.connect("nolg", "dev", "device").await;
    // Each reading is sent only after the one before has arrived: one write each.
    let mut per_read = Vec::new();
    for seq in 1..=5 {
        dev.reading("x", seq as f64, seq).await;
        per_read.extend(readings_per_read(&mut dash, 1).await);
    }
    assert_eq!(per_read, vec![1; 5]);
    app.stop().await;
}

#[tokio::test]
async fn lingering_dashboards_get_every_reading_in_order_and_the_shutdown_close() {
    let app = lingering_hub(5).await;
    let (mut dash, _) = app.connect("lgo", "dash", "dashboard").await;
    let (d1, _) = app.connect("lgo", "d1", "device").await;
    let (d2, _) = app.connect("lgo", "d2", "device").await;
    const N: u64 = 300;
    let send = |mut c: crate::helpers::Client| async move {
        for seq in 1..=N {
            c.reading("x", seq as f64, seq).await;
        }
        c
    };
    let (d1, d2) = tokio::join!(send(d1), send(d2));
    let mut next = std::collections::HashMap::from([("d1", 1u64), ("d2", 1u64)]);
    for _ in 0..2 * N {
        let r = dash.recv_type("reading").await;
        let device = r["device"].as_str().expect("device").to_string();
        let expect = next.get_mut(device.as_str()).expect("known device");
        assert_eq!(r["seq"].as_u64(), Some(*expect), "order of {device}");
        *expect += 1;
    }
    dash.expect_silence(100).await;
    drop((d1, d2));
    app.stop().await;
    let (code, _) = dash.recv_close().await;
    assert_eq!(u16::from(code), 1001);
}
