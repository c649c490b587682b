//! The hub process on 1 and on 4 runtimes (`--threads`): readings of many rooms (spread
//! over the runtimes) reach every dashboard of their room, none lost, none foreign, each
//! device's in the order sent; a stuck dashboard is closed 1013 while the others of its
//! room keep everything; SIGTERM closes every session with 1001, whichever runtime it
//! runs on, and the process exits 0.

use std::collections::HashMap;

use futures_util::future::join_all;
use serde_json::json;

use crate::helpers::{http_get, hub_process, Client, Hub};

const ROOMS: usize = 8;
const DEVICES: usize = 2;
const DASHBOARDS: usize = 3;
const READINGS: u64 = 100;

/// No rate limit, so the devices can send as fast as the test does.
const UNLIMITED: &str = "[limits]\nrate_per_sec = 1e9\nrate_burst = 1e9\n";

fn start(threads: &str, config: &str) -> Hub {
    hub_process()
        .args(["--threads", threads])
        .config(config)
        .start()
}

async fn connect(hub: &Hub, room: &str, client: &str, query: &str) -> Client {
    let mut c = Client::connect(&hub.ws_url(room, client, query))
        .await
        .expect("connect");
    let _ = c.recv_type("welcome").await;
    c
}

/// The hub said how many runtimes it started.
async fn assert_threads(hub: &Hub, threads: &str) {
    let line = format!("threads={threads}");
    for _ in 0..100 {
        let log = strip_colours(&hub.log());
        if log
            .lines()
            .any(|l| l.contains("runtimes") && l.contains(&line))
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no `runtimes {line}` in the log:\n{}", hub.log());
}

/// The log without its terminal colour codes (`ESC [ ... m`).
fn strip_colours(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

async fn every_room_delivers_everything_in_order(threads: &str) {
    let mut hub = start(threads, UNLIMITED);
    let mut dashboards = Vec::new();
    for r in 0..ROOMS {
        for s in 0..DASHBOARDS {
            let room = format!("r{r}");
            let dash = connect(&hub, &room, &format!("s{s}"), "role=dashboard").await;
            dashboards.push((room, dash));
        }
    }
    assert_threads(&hub, threads).await;
    let mut devices = Vec::new();
    for r in 0..ROOMS {
        for d in 0..DEVICES {
            let id = format!("r{r}-d{d}");
            devices.push(connect(&hub, &format!("r{r}"), &id, "role=device").await);
        }
    }

    // Every device sends at once, so every runtime is busy at the same time.
    let devices = join_all(devices.into_iter().map(|mut dev| async move {
        for seq in 1..=READINGS {
            dev.reading("x", seq as f64, seq).await;
        }
        dev
    }))
    .await;

    join_all(dashboards.iter_mut().map(|(room, dash)| async move {
        let mut next: HashMap<String, u64> =
            (0..DEVICES).map(|d| (format!("{room}-d{d}"), 1)).collect();
        for _ in 0..DEVICES as u64 * READINGS {
            let r = dash.recv_type("reading").await;
            let device = r["device"].as_str().expect("device").to_string();
            let expect = next
                .get_mut(&device)
                .unwrap_or_else(|| panic!("{room} got a reading of {device}"));
            assert_eq!(
                r["seq"].as_u64(),
                Some(*expect),
                "order of {device} in {room}"
            );
            *expect += 1;
        }
        dash.expect_silence(200).await;
    }))
    .await;

    // Shutdown reaches the sessions on every runtime.
    hub.sigterm();
    for (_, dash) in &mut dashboards {
        let (code, _) = dash.recv_close().await;
        assert_eq!(u16::from(code), 1001);
    }
    drop(devices);
    assert_eq!(hub.wait_exit().await.code(), Some(0));
}

#[tokio::test]
async fn one_thread_delivers_every_room_in_order_and_shuts_down() {
    every_room_delivers_everything_in_order("1").await;
}

#[tokio::test]
async fn four_threads_deliver_every_room_in_order_and_shut_down() {
    every_room_delivers_everything_in_order("4").await;
}

/// In `rooms` rooms one after another (so some are on worker runtimes): a dashboard that
/// stops reading is closed 1013 while the healthy one of its room misses nothing.
async fn stuck_dashboards_are_closed_and_the_others_miss_nothing(threads: &str, rooms: usize) {
    let mut hub = start(
        threads,
        "[limits]\noutbound_queue = 256\nrate_per_sec = 1e9\nrate_burst = 1e9\n",
    );
    const PER_BATCH: u64 = 100;
    let pad = "x".repeat(400);
    for r in 1..=rooms {
        let room = format!("bp{r}");
        let url = hub.ws_url(&room, "stuck", "role=dashboard");
        let mut stuck = Client::connect_small_buffer(&url, hub.addr()).await;
        let _ = stuck.recv_type("welcome").await;
        let mut healthy = connect(&hub, &room, "healthy", "role=dashboard").await;
        let mut dev = connect(&hub, &room, "dev", "role=device").await;
        let mut seq = 0u64;
        let mut received = 0u64;
        let closed = format!("telehub_slow_consumer_disconnects_total {r}\n");
        let mut batches = 0;
        while !http_get(hub.addr(), "/metrics", "")
            .await
            .1
            .contains(&closed)
        {
            batches += 1;
            assert!(
                batches <= 500,
                "the stuck dashboard of {room} was never closed"
            );
            let items: Vec<_> = (0..PER_BATCH)
                .map(|_| {
                    seq += 1;
                    json!({"metric":"vibration","value":1.0,"seq":seq,"pad":pad})
                })
                .collect();
            dev.send_json(json!({"type":"readings","items":items}))
                .await;
            for _ in 0..PER_BATCH {
                let reading = healthy.recv_type("reading").await;
                received += 1;
                assert_eq!(reading["seq"].as_u64(), Some(received), "no gap in {room}");
            }
        }
        let (code, reason) = stuck.recv_close().await;
        assert_eq!(u16::from(code), 1013);
        assert_eq!(reason, "slow consumer");
    }
    assert_eq!(hub.stop().await.code(), Some(0));
}

#[tokio::test]
async fn one_thread_closes_stuck_dashboards_with_1013() {
    stuck_dashboards_are_closed_and_the_others_miss_nothing("1", 1).await;
}

#[tokio::test]
async fn four_threads_close_stuck_dashboards_with_1013() {
    stuck_dashboards_are_closed_and_the_others_miss_nothing("4", 4).await;
}
