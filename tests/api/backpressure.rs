//! A dashboard that stops reading is closed with 1013 while the rest of its room keeps
//! receiving everything, and the device is never slowed down.

use serde_json::json;

use std::time::Duration;

use crate::helpers::{spawn_app_with, Client, Polled, TestApp, WAIT};

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

/// Series the slow-viewer test's device publishes, and how often it sends one reading of
/// each: 20 series every 10 ms is 2,000 readings a second.
const SERIES: usize = 20;
const TICK_MS: u64 = 10;

/// What a dashboard saw: every reading's (offset, metric, value), and the `skipped`
/// frames' (from_offset, to_offset, count).
#[derive(Default)]
struct Seen {
    readings: Vec<(u64, String, f64)>,
    skipped: Vec<(u64, u64, u64)>,
}

impl Seen {
    fn take(&mut self, v: &serde_json::Value) {
        match v["type"].as_str() {
            Some("reading") => self.readings.push((
                v["offset"].as_u64().expect("offset"),
                v["metric"].as_str().expect("metric").to_string(),
                v["value"].as_f64().expect("value"),
            )),
            Some("skipped") => self.skipped.push((
                v["from_offset"].as_u64().expect("from_offset"),
                v["to_offset"].as_u64().expect("to_offset"),
                v["count"].as_u64().expect("count"),
            )),
            _ => {}
        }
    }

    /// Readings received plus readings said to be skipped.
    fn accounted(&self) -> u64 {
        self.readings.len() as u64 + self.skipped.iter().map(|s| s.2).sum::<u64>()
    }

    /// Reads at full speed until `published` readings are accounted for.
    async fn drain(&mut self, c: &mut Client, published: u64) {
        while self.accounted() < published {
            match c.poll_json(WAIT).await {
                Polled::Json(v) => self.take(&v),
                other => panic!(
                    "the slow viewer stopped at {} of {published} readings: {other:?}",
                    self.accounted()
                ),
            }
        }
        assert_eq!(
            self.accounted(),
            published,
            "received + skipped = published"
        );
    }
}

/// The device: one reading of each of [`SERIES`] every [`TICK_MS`] for `run`; the value
/// of each is the count published so far, and `last` keeps each series' last value.
async fn publish_for(dev: &mut Client, run: Duration, last: &mut [f64], published: &mut u64) {
    let mut tick = tokio::time::interval(Duration::from_millis(TICK_MS));
    let started = tokio::time::Instant::now();
    while started.elapsed() < run {
        tick.tick().await;
        let items: Vec<_> = (0..SERIES)
            .map(|i| {
                *published += 1;
                last[i] = *published as f64;
                json!({"metric":format!("m{i}"),"value":last[i]})
            })
            .collect();
        dev.send_json(json!({"type":"readings","items":items}))
            .await;
    }
}

/// The slow viewer: a dashboard with `?overflow=latest` that reads 10 frames a
/// second in a room of 2,000 readings a second stays connected for a minute, gets
/// `skipped` frames whose counts and the readings it got add up to everything published,
/// never sees a series go backwards, and ends holding the true latest value of every
/// series; a neighbour that keeps up loses nothing meanwhile. After draining, the viewer
/// stalls for a second burst, falls behind again, and is counted right again. What the
/// slow viewer costs its neighbours' latency is measured, not asserted here: `telehub-sim
/// bench --slow-viewers 1` (BENCHMARKS.md).
#[tokio::test]
async fn a_slow_dashboard_with_overflow_latest_gets_the_latest_values_and_what_it_skipped() {
    // A queue of about a second of the room's readings: the neighbour, a test task on a
    // machine that may be busy, keeps up with that much slack, while a viewer reading 10
    // frames a second is far behind within the minute.
    let app = spawn_app_with(|s| {
        s.limits.outbound_queue = 2048;
        s.limits.rate_per_sec = 1e9;
        s.limits.rate_burst = 1e9;
    })
    .await;
    let url = app.ws_url("slow", "phone", "role=dashboard&overflow=latest");
    let mut slow = Client::connect_small_buffer(&url, app.addr).await;
    let _ = slow.recv_type("welcome").await;
    let (mut neighbour, _) = app.connect("slow", "wall", "dashboard").await;
    let (mut dev, _) = app.connect("slow", "dev", "device").await;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The slow viewer: one frame every 100 ms while the device publishes.
    let slow_stop = stop.clone();
    let slow_task = tokio::spawn(async move {
        let mut seen = Seen::default();
        while !slow_stop.load(std::sync::atomic::Ordering::Relaxed) {
            match slow.poll_json(Duration::from_secs(5)).await {
                Polled::Json(v) => seen.take(&v),
                Polled::Quiet => {}
                Polled::Closed => panic!("the slow viewer was closed"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        (slow, seen)
    });
    // The neighbour reads everything as it comes, through both bursts.
    let neighbour_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let n_stop = neighbour_stop.clone();
    let neighbour_task = tokio::spawn(async move {
        let mut seen = Seen::default();
        loop {
            match neighbour.poll_json(Duration::from_millis(500)).await {
                Polled::Json(v) => seen.take(&v),
                Polled::Quiet if n_stop.load(std::sync::atomic::Ordering::Relaxed) => break,
                Polled::Quiet => {}
                Polled::Closed => panic!(
                    "the neighbour was closed after {} readings",
                    seen.readings.len()
                ),
            }
        }
        seen
    });

    let mut last = vec![0.0f64; SERIES];
    let mut published = 0u64;
    publish_for(&mut dev, Duration::from_secs(60), &mut last, &mut published).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut slow, mut seen) = slow_task.await.expect("slow viewer");
    let slow_phase = seen.readings.len();
    let metrics = app.get("/metrics").await.1;
    assert!(
        !metrics.contains("telehub_readings_skipped_total 0"),
        "the viewer fell behind within a minute at 10 frames a second:\n{metrics}"
    );
    // It now reads at full speed what is still on its way.
    seen.drain(&mut slow, published).await;
    let first_burst = seen.skipped.len();
    assert!(first_burst > 0);
    assert!(
        (seen.readings.len() as u64) < published / 2,
        "a viewer at 10 frames a second ({slow_phase} read while slow) got {} readings of {published}",
        seen.readings.len()
    );

    // A second burst while the viewer does not read at all: it falls behind again.
    publish_for(&mut dev, Duration::from_secs(2), &mut last, &mut published).await;
    seen.drain(&mut slow, published).await;
    assert!(seen.skipped.len() > first_burst, "{:?}", seen.skipped);

    neighbour_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let neighbour = neighbour_task.await.expect("neighbour");
    assert_eq!(
        neighbour.readings.len() as u64,
        published,
        "the neighbour lost readings"
    );
    assert!(neighbour.skipped.is_empty());
    assert!(neighbour.readings.windows(2).all(|w| w[0].0 < w[1].0));

    // Offsets only go up (so no series goes backwards), and every skipped range lies
    // within what was published.
    assert!(seen.readings.windows(2).all(|w| w[0].0 < w[1].0));
    let newest = neighbour.readings.last().expect("readings").0;
    for &(from, to, count) in &seen.skipped {
        assert!(from <= to && to <= newest && count > 0 && count <= to - from + 1);
    }
    // The last reading of every series is the one the device sent last.
    let mut latest = std::collections::HashMap::new();
    for (_, metric, value) in &seen.readings {
        latest.insert(metric.clone(), *value);
    }
    for (i, want) in last.iter().enumerate() {
        assert_eq!(latest.get(&format!("m{i}")), Some(want), "latest of m{i}");
    }
    // Still connected, live again, and the hub counted what it skipped.
    dev.send_json(json!({"type":"reading","metric":"m0","value":-1.0}))
        .await;
    assert_eq!(slow.recv_type("reading").await["value"], -1.0);
    let metrics = app.get("/metrics").await.1;
    let skipped: u64 = seen.skipped.iter().map(|s| s.2).sum();
    assert!(
        metrics.contains(&format!("telehub_readings_skipped_total {skipped}")),
        "{metrics}"
    );
    assert!(metrics.contains("telehub_slow_consumer_disconnects_total 0"));
    app.stop().await;
}
