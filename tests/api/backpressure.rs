//! A dashboard that stops reading is closed with 1013 while the rest of its room keeps
//! receiving everything, and the device is never slowed down.

use serde_json::json;

use crate::helpers::{spawn_app_with, Client, TestApp};

/// A hub with a per-client queue of `queue` frames and no rate limit, and a dashboard
/// in `room` whose tiny receive buffer fills as soon as it stops reading.
async fn hub_with_a_stuck_dashboard(queue: usize, room: &str) -> (TestApp, Client) {
    let app = spawn_app_with(|s| {
        s.limits.outbound_queue = queue;
        s.limits.rate_per_sec = 1e9;
        s.limits.rate_burst = 1e9;
    })
    .await;
    let url = app.ws_url(room, "stuck", "role=dashboard");
    let mut stuck = Client::connect_small_buffer(&url, app.addr).await;
    let _ = stuck.recv_type("welcome").await;
    (app, stuck)
}

#[tokio::test]
async fn a_stuck_dashboard_gets_1013_and_the_others_keep_receiving() {
    let (app, mut stuck) = hub_with_a_stuck_dashboard(256, "bp").await;
    let (mut healthy, _) = app.connect("bp", "healthy", "dashboard").await;
    let (mut dev, _) = app.connect("bp", "dev", "device").await;

    // Send far more than the stuck client's queue and socket buffers can hold, while
    // the healthy dashboard reads every batch before the next is sent, until the hub
    // gives up on the stuck one.
    const PER_BATCH: u64 = 100;
    let pad = "x".repeat(400);
    let mut seq = 0u64;
    let mut received = 0u64;
    let batch = |dev_seq: &mut u64| {
        let items: Vec<_> = (0..PER_BATCH)
            .map(|_| {
                *dev_seq += 1;
                json!({"metric":"vibration","value":1.0,"seq":*dev_seq,"pad":pad})
            })
            .collect();
        json!({"type":"readings","items":items})
    };
    let mut batches = 0;
    while !app
        .get("/metrics")
        .await
        .1
        .contains("telehub_slow_consumer_disconnects_total 1")
    {
        batches += 1;
        assert!(batches <= 500, "the stuck dashboard was never closed");
        dev.send_json(batch(&mut seq)).await;
        for _ in 0..PER_BATCH {
            let r = healthy.recv_type("reading").await;
            received += 1;
            assert_eq!(
                r["seq"].as_u64(),
                Some(received),
                "no gap for the healthy dashboard"
            );
        }
    }

    // The stuck client now reads: what was already in its socket, then the close.
    let (code, reason) = stuck.recv_close().await;
    assert_eq!(u16::from(code), 1013);
    assert_eq!(reason, "slow consumer");

    // The room carries on for the healthy dashboard.
    dev.send_json(batch(&mut seq)).await;
    for _ in 0..PER_BATCH {
        let r = healthy.recv_type("reading").await;
        received += 1;
        assert_eq!(r["seq"].as_u64(), Some(received));
    }
    app.stop().await;
}

#[tokio::test]
async fn a_dashboard_that_never_reads_again_is_dropped_not_kept() {
    let (app, stuck) = hub_with_a_stuck_dashboard(64, "gone").await;
    let (mut dev, _) = app.connect("gone", "dev", "device").await;
    let pad = "x".repeat(1500);
    let mut seq = 0u64;
    while !app
        .get("/metrics")
        .await
        .1
        .contains("telehub_slow_consumer_disconnects_total 1")
    {
        assert!(seq < 200_000, "the stuck dashboard was never closed");
        // Batches smaller than the queue: it fills only once the socket is full.
        let items: Vec<_> = (0..16)
            .map(|_| {
                seq += 1;
                json!({"metric":"v","value":1.0,"seq":seq,"pad":pad})
            })
            .collect();
        dev.send_json(json!({"type":"readings","items":items}))
            .await;
    }
    // The client never reads again: the hub gives the close frame a bounded time, then
    // drops the connection and its place in the room.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        let metrics = app.get("/metrics").await.1;
        if metrics.contains("telehub_connections{role=\"dashboard\"} 0") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stuck connection is still held:\n{metrics}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    drop(stuck);
    app.stop().await;
}
