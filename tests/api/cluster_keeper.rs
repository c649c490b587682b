//! A room's keeper on a cluster (`cluster/keeper.rs`): one hub per room stores the
//! room's readings and evaluates its alert rules, and every hub's `/history`, `/series`
//! and plots answer what the keeper holds. Real hub processes on a real `redis-server`; the stores are the hubs'
//! own SQLite files, read back here to count every reading once.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use telehub_testkit::redis::Redis;

use super::cluster::{cluster_process, dashboard, device, publish};
use crate::helpers::{Hub, WAIT};

/// `path` of `hub` as (status, JSON), with the `x-telehub-keeper` header.
async fn get_json(hub: &Hub, path: &str) -> (u16, Value, Option<String>) {
    let resp = telehub_testkit::http::get(hub.addr(), path, "").await;
    let v = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    let keeper = resp.header("x-telehub-keeper").map(str::to_string);
    (resp.status, v, keeper)
}

/// Waits until `hub`'s `/series` of `room` says its keeper has read up to `offset`.
async fn kept_up_to(hub: &Hub, room: &str, offset: u64) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, v, _) = get_json(hub, &format!("/api/rooms/{room}/series")).await;
        if status == 200 && v["offset"].as_u64() >= Some(offset) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the keeper never read up to {offset}: {status} {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The values of `room`'s stored readings in the SQLite file under `dir`, counted.
fn stored_values(dir: &Path, room: &str) -> BTreeMap<i64, usize> {
    let db = rusqlite::Connection::open(dir.join("telehub.db")).expect("open the store");
    let mut q = db
        .prepare("SELECT value FROM readings WHERE room = ?1")
        .expect("query");
    let mut out = BTreeMap::new();
    for v in q
        .query_map([room], |r| r.get::<_, f64>(0))
        .expect("rows")
        .map(|r| r.expect("row"))
    {
        *out.entry(v as i64).or_default() += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_series_and_plots_answer_the_same_on_every_hub() {
    // Arrange: a device on hub 1 (which becomes the room's keeper), two other hubs.
    let redis = Redis::start();
    let h1 = cluster_process(&redis, "hub1").start();
    let h2 = cluster_process(&redis, "hub2").start();
    let h3 = cluster_process(&redis, "hub3").start();
    let mut dev = device(&h1, "plant", "sensor").await;

    // Act
    publish(&mut dev, 1, 25).await;
    let series1 = kept_up_to(&h1, "plant", 25).await;

    // Assert: the same answer on every hub; the other hubs say who answered.
    let path = "/api/rooms/plant/history?device=sensor&metric=t";
    let (s1, history1, k1) = get_json(&h1, path).await;
    assert_eq!(s1, 200, "{history1}");
    assert_eq!(k1, None, "the keeper answers itself");
    let values: Vec<i64> = history1["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| p["value"].as_f64().expect("value") as i64)
        .collect();
    assert_eq!(values, (1..=25).collect::<Vec<_>>(), "{history1}");
    for hub in [&h2, &h3] {
        let (status, history, keeper) = get_json(hub, path).await;
        assert_eq!(status, 200, "{history}");
        assert_eq!(history, history1);
        assert_eq!(keeper.as_deref(), Some("hub1"));
        let (_, series, _) = get_json(hub, "/api/rooms/plant/series").await;
        assert_eq!(series, series1);
    }
    // `/series` names Redis's epoch and offset, as a welcome does.
    let (_, welcome) = dashboard(&h3, "plant", "viewer", "").await;
    assert_eq!(series1["epoch"], welcome["epoch"], "{series1} {welcome}");
    assert_eq!(series1["offset"], welcome["offset"]);
    // CSV and images pass between hubs whole.
    let csv = telehub_testkit::http::get(h2.addr(), &format!("{path}&format=csv"), "").await;
    assert_eq!(csv.status, 200);
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    assert_eq!(csv.text().lines().count(), 26, "{}", csv.text());
    let png = telehub_testkit::http::get(h3.addr(), "/api/rooms/plant/plot.png?metric=t", "").await;
    assert_eq!(png.status, 200, "{}", png.text());
    assert_eq!(png.header("content-type"), Some("image/png"));
    assert!(png.body.starts_with(b"\x89PNG\r\n\x1a\n"));
    // The IHDR chunk: the default 1000 x 500, drawn by the keeper, whole.
    assert_eq!(&png.body[16..24], &[0, 0, 3, 232, 0, 0, 1, 244]);
    let svg = telehub_testkit::http::get(h2.addr(), "/api/rooms/plant/plot.svg?metric=t", "").await;
    assert_eq!(svg.header("content-type"), Some("image/svg+xml"));
    assert!(svg.text().contains("sensor"), "the legend names the device");
    // Errors come back as the keeper gave them.
    let (status, err, keeper) = get_json(&h2, "/api/rooms/plant/history?metric=nope").await;
    assert_eq!(
        (status, err["error"].as_str()),
        (404, Some("unknown_series")),
        "{err}"
    );
    assert_eq!(keeper.as_deref(), Some("hub1"));
    let (status, err, _) = get_json(&h2, "/api/rooms/plant/history?limit=0").await;
    assert_eq!(
        (status, err["error"].as_str()),
        (400, Some("invalid_parameter")),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_keeper_hands_its_room_over_and_every_reading_is_stored_exactly_once() {
    // Arrange: two hubs with stores of their own; the device starts on hub 1.
    let redis = Redis::start();
    let (d1, d2) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let lease = [("TELEHUB_CLUSTER_KEEPER_LEASE_MS", "1000")];
    let with = |node: &str, dir: &Path| {
        let mut b = cluster_process(&redis, node).data_dir(dir);
        for (k, v) in lease {
            b = b.env(k, v);
        }
        b.start()
    };
    let mut h1 = with("hub1", d1.path());
    let mut h2 = with("hub2", d2.path());
    let mut dev = device(&h1, "plant", "sensor").await;
    publish(&mut dev, 1, 30).await;
    kept_up_to(&h1, "plant", 30).await;

    // Act: hub 1 stops (it commits and gives the room back); the device moves to hub 2
    // and goes on, so hub 2 keeps the room from where hub 1 left it.
    h1.stop().await;
    drop(dev);
    let mut dev = device(&h2, "plant", "sensor").await;
    publish(&mut dev, 31, 60).await;
    kept_up_to(&h2, "plant", 60).await;
    h2.stop().await;

    // Assert: every reading in exactly one store, none in both, none in neither.
    let first = stored_values(d1.path(), "plant");
    let second = stored_values(d2.path(), "plant");
    assert_eq!(
        first.keys().copied().collect::<Vec<_>>(),
        (1..=30).collect::<Vec<_>>(),
        "hub 1 stored {first:?}"
    );
    assert_eq!(
        second.keys().copied().collect::<Vec<_>>(),
        (31..=60).collect::<Vec<_>>(),
        "hub 2 stored {second:?}"
    );
    assert!(first.values().chain(second.values()).all(|&n| n == 1));
    // Both hubs said why in their logs.
    assert!(h2.log().contains("keeping the room"), "{}", h2.log());
    drop(h2);
    let _ = h1;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_keeper_s_room_is_kept_by_another_hub_and_no_reading_goes_unstored() {
    // Arrange
    let redis = Redis::start();
    let (d1, d2) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let with = |node: &str, dir: &Path| {
        cluster_process(&redis, node)
            .data_dir(dir)
            .env("TELEHUB_CLUSTER_KEEPER_LEASE_MS", "1000")
            .start()
    };
    let mut h1 = with("hub1", d1.path());
    let mut h2 = with("hub2", d2.path());
    let mut dev = device(&h1, "plant", "sensor").await;
    publish(&mut dev, 1, 30).await;
    kept_up_to(&h1, "plant", 30).await;
    // Let hub 1's store commit and its watermark reach Redis (a lease renewal).
    tokio::time::sleep(Duration::from_millis(600)).await;

    // Act: kill -9 the keeper; the device goes on through hub 2, whose publishes take
    // the room once the dead keeper's lease has run out.
    h1.kill();
    drop(dev);
    let mut dev = device(&h2, "plant", "sensor").await;
    publish(&mut dev, 31, 40).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    publish(&mut dev, 41, 60).await;
    kept_up_to(&h2, "plant", 60).await;
    h2.stop().await;

    // Assert: the two stores together hold every reading; what both hold is what hub 1
    // committed after its last watermark reached Redis.
    let first = stored_values(d1.path(), "plant");
    let second = stored_values(d2.path(), "plant");
    let mut all = first.clone();
    for (v, n) in &second {
        *all.entry(*v).or_default() += n;
    }
    assert_eq!(
        all.keys().copied().collect::<Vec<_>>(),
        (1..=60).collect::<Vec<_>>(),
        "hub 1 {first:?}, hub 2 {second:?}"
    );
    assert_eq!(
        first.keys().copied().collect::<Vec<_>>(),
        (1..=30).collect::<Vec<_>>()
    );
    assert!(
        second.contains_key(&31) && second.contains_key(&60),
        "{second:?}"
    );
    let twice = all.values().filter(|&&n| n > 1).count();
    assert_eq!(twice, 0, "the watermark was current: {first:?} {second:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_on_a_cluster_room_fires_once_and_reaches_dashboards_on_every_hub() {
    // Arrange: one rule on three hubs; the device on hub 1 (the keeper).
    let redis = Redis::start();
    let rules = r#"
[[alerts.rules]]
id = "hot"
metric = "t"
above = 10.0
"#;
    let hubs: Vec<Hub> = ["hub1", "hub2", "hub3"]
        .iter()
        .map(|n| cluster_process(&redis, n).config(rules).start())
        .collect();
    let (mut d2, _) = dashboard(&hubs[1], "plant", "d2", "").await;
    let (mut d3, _) = dashboard(&hubs[2], "plant", "d3", "").await;
    let mut dev = device(&hubs[0], "plant", "sensor").await;

    // Act: below, above (fires), above again (still firing), below (resolves).
    for (seq, value) in [(1, 5.0), (2, 12.0), (3, 13.0), (4, 4.0)] {
        dev.reading("t", value, seq).await;
        dev.recv_type("accepted").await;
    }

    // Assert: each dashboard gets the firing and the resolution once, after the
    // readings that caused them.
    for d in [&mut d2, &mut d3] {
        let mut seen = Vec::new();
        while seen.len() < 6 {
            let v = d.recv_json().await;
            match v["type"].as_str() {
                Some("reading") => seen.push(format!("reading {}", v["value"])),
                Some("alert") => seen.push(format!("{} {} {}", v["rule"], v["state"], v["value"])),
                _ => {}
            }
        }
        // Readings in order; each alert after the reading that caused it (later
        // readings may come first: the keeper publishes it once it has recorded it).
        let readings: Vec<&String> = seen.iter().filter(|s| s.starts_with("reading")).collect();
        assert_eq!(
            readings,
            ["reading 5.0", "reading 12.0", "reading 13.0", "reading 4.0"]
        );
        let at = |item: &str| seen.iter().position(|s| s == item).expect(item);
        assert!(
            at("\"hot\" \"firing\" 12.0") > at("reading 12.0"),
            "{seen:?}"
        );
        assert!(
            at("\"hot\" \"resolved\" 4.0") > at("reading 4.0"),
            "{seen:?}"
        );
        // And nothing more: no second evaluation of the same readings.
        let mut extra = Vec::new();
        while let crate::helpers::Polled::Json(v) = d.poll_json(Duration::from_millis(300)).await {
            extra.push(v);
        }
        assert!(extra.is_empty(), "{extra:?}");
    }
}
