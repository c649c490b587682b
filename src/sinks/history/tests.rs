//! Unit tests of the history rings, the recovery log, queries and pruning.

use super::*;
use std::sync::Arc;

fn cfg() -> HistoryConfig {
    HistoryConfig {
        points_per_series: 5,
        retention_ms: 60_000,
        max_series: 3,
        room_log_len: 4,
        persist: false,
        ..HistoryConfig::default()
    }
}

fn rec<'a>(device: &'a Arc<str>, metric: &'a str, ts: i64, value: f64) -> Record<'a> {
    Record {
        device,
        metric,
        unit: Some("C"),
        ts,
        value,
        seq: None,
    }
}

fn offsets(room: &RoomHistory, since: u64, epoch: Option<&str>) -> (bool, Vec<u64>) {
    let mut got = Vec::new();
    let r = room.replay(since, epoch, |e| got.push(e.offset));
    assert_eq!(r.replayed, got.len());
    (r.recovered, got)
}

#[test]
fn offsets_rise_by_one_and_the_ring_is_bounded() {
    let h = History::in_memory(cfg());
    let room = h.room(&Arc::from("r"));
    let d: Arc<str> = Arc::from("d1");
    for i in 0..8 {
        assert_eq!(
            room.record(&rec(&d, "t", 1000 + i, i as f64)).unwrap(),
            i as u64 + 1
        );
    }
    assert_eq!(room.offset(), 8);
    let info = room.series_info();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].count, 5);
    assert_eq!(info[0].last_value, 7.0);
    assert_eq!(info[0].unit.as_deref(), Some("C"));
    // The log keeps the last 4.
    assert_eq!(room.oldest_offset(), 5);
}

#[test]
fn late_points_are_kept_in_ts_order() {
    let h = History::in_memory(cfg());
    let room = h.room(&Arc::from("r"));
    let d: Arc<str> = Arc::from("d");
    for ts in [10, 30, 20, 40] {
        room.record(&rec(&d, "t", ts, ts as f64)).unwrap();
    }
    let QueryResult::Points(p) = room.query(&Query::default()).unwrap() else {
        panic!()
    };
    let ts: Vec<i64> = p.iter().map(|p| p.ts).collect();
    assert_eq!(ts, [10, 20, 30, 40]);
    // The last value is the latest to arrive, not the latest ts.
    assert_eq!(room.series_info()[0].last_value, 40.0);
}

#[test]
fn series_cap_is_global_and_refuses_with_series_limit() {
    let h = History::in_memory(cfg());
    let a = h.room(&Arc::from("a"));
    let b = h.room(&Arc::from("b"));
    let d: Arc<str> = Arc::from("d");
    a.record(&rec(&d, "m1", 1, 1.0)).unwrap();
    a.record(&rec(&d, "m2", 1, 1.0)).unwrap();
    b.record(&rec(&d, "m1", 1, 1.0)).unwrap();
    let err = b.record(&rec(&d, "m2", 1, 1.0)).unwrap_err();
    assert!(matches!(err, HistoryError::SeriesLimit { max: 3 }));
    // A refused reading takes no offset; existing series still record.
    assert_eq!(b.offset(), 1);
    assert_eq!(b.record(&rec(&d, "m1", 2, 2.0)).unwrap(), 2);
    assert_eq!(h.series_count(), 3);
}

#[test]
fn room_and_device_caps_refuse_new_series_and_free_up_when_series_expire() {
    let h = History::in_memory(HistoryConfig {
        max_series: 100,
        ..cfg()
    });
    let room = h.room(&Arc::from("r"));
    let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
    let caps = SeriesCaps {
        per_room: 3,
        per_device: 2,
    };
    room.record_capped(&rec(&a, "m1", 1, 1.0), caps).unwrap();
    room.record_capped(&rec(&a, "m2", 1, 1.0), caps).unwrap();
    let err = room
        .record_capped(&rec(&a, "m3", 1, 1.0), caps)
        .unwrap_err();
    assert!(matches!(err, HistoryError::DeviceSeriesLimit { max: 2 }));
    // An existing series always records.
    room.record_capped(&rec(&a, "m1", 2, 1.0), caps).unwrap();
    room.record_capped(&rec(&b, "m1", 1, 1.0), caps).unwrap();
    let err = room
        .record_capped(&rec(&b, "m2", 1, 1.0), caps)
        .unwrap_err();
    assert!(matches!(err, HistoryError::RoomSeriesLimit { max: 3 }));
    assert_eq!(h.series_count(), 3);
    // Once the series expire, the room's budget is back.
    h.prune(1_000_000);
    room.record_capped(&rec(&b, "m2", 1_000_000, 1.0), caps)
        .unwrap();
    assert_eq!(h.series_count(), 1);
}

#[test]
fn replay_since_is_exact_within_the_log() {
    let h = History::in_memory(cfg());
    let room = h.room(&Arc::from("r"));
    let d: Arc<str> = Arc::from("d");
    let epoch = room.epoch().to_string();
    assert_eq!(offsets(&room, 0, None), (true, vec![]));
    for i in 0..6 {
        room.record(&rec(&d, "t", i, 0.0)).unwrap();
    }
    // Log holds 3..=6.
    assert_eq!(offsets(&room, 6, Some(&epoch)), (true, vec![]));
    assert_eq!(offsets(&room, 4, Some(&epoch)), (true, vec![5, 6]));
    assert_eq!(offsets(&room, 2, Some(&epoch)), (true, vec![3, 4, 5, 6]));
    // Too old: everything kept, not recovered.
    assert_eq!(offsets(&room, 1, Some(&epoch)), (false, vec![3, 4, 5, 6]));
    // Another epoch, or an offset the room never reached.
    assert_eq!(offsets(&room, 5, Some("other")), (false, vec![3, 4, 5, 6]));
    assert_eq!(offsets(&room, 99, None), (false, vec![3, 4, 5, 6]));
}

#[test]
fn the_log_budget_over_all_rooms_is_kept() {
    let h = History::in_memory(HistoryConfig {
        room_log_len: 100,
        max_log_entries: 10,
        ..cfg()
    });
    let d: Arc<str> = Arc::from("d");
    let a = h.room(&Arc::from("a"));
    let b = h.room(&Arc::from("b"));
    for i in 0..8 {
        a.record(&rec(&d, "t", i, 0.0)).unwrap();
    }
    for i in 0..8 {
        b.record(&rec(&d, "t", i, 0.0)).unwrap();
    }
    // b could take only 2 of the budget, then it drops its own oldest.
    assert_eq!(h.log_entries(), 10);
    assert_eq!(offsets(&a, 0, None).1.len(), 8);
    assert_eq!(offsets(&b, 0, None).1.len(), 2);
    assert_eq!(b.oldest_offset(), 7);
    drop((a, b));
    h.prune(1_000_000);
    assert_eq!(h.log_entries(), 0);
    assert_eq!(h.series_count(), 0);
}

#[test]
fn replayed_entries_carry_the_reading() {
    let h = History::in_memory(cfg());
    let room = h.room(&Arc::from("r"));
    let d: Arc<str> = Arc::from("dev");
    room.record(&Record {
        device: &d,
        metric: "hum",
        unit: None,
        ts: 77,
        value: 40.5,
        seq: Some(9),
    })
    .unwrap();
    let mut seen = Vec::new();
    room.replay(0, None, |e| {
        seen.push((
            e.device.to_string(),
            e.metric.to_string(),
            e.unit.is_none(),
            e.ts,
            e.value,
            e.seq,
            e.offset,
        ))
    });
    assert_eq!(
        seen,
        [("dev".into(), "hum".into(), true, 77, 40.5, Some(9), 1)]
    );
}

#[test]
fn snapshot_has_the_last_value_of_every_series() {
    let h = History::in_memory(cfg());
    let room = h.room(&Arc::from("r"));
    let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
    room.record(&rec(&b, "t", 1, 1.0)).unwrap();
    room.record(&rec(&a, "t", 2, 2.0)).unwrap();
    room.record(&rec(&b, "t", 3, 3.0)).unwrap();
    let snap: Vec<(String, f64, u64)> = room.snapshot(|all| {
        all.iter()
            .map(|e| (e.device.to_string(), e.value, e.offset))
            .collect()
    });
    assert_eq!(snap, [("a".into(), 2.0, 2), ("b".into(), 3.0, 3)]);
}

#[test]
fn queries_filter_limit_and_bucket() {
    let h = History::in_memory(HistoryConfig {
        points_per_series: 1000,
        ..cfg()
    });
    let room = h.room(&Arc::from("r"));
    let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
    for i in 0..100 {
        room.record(&rec(&a, "t", i * 1000, i as f64)).unwrap();
        room.record(&rec(&b, "t", i * 1000 + 500, -(i as f64)))
            .unwrap();
    }
    let q = Query {
        device: Some("a".into()),
        from: Some(10_000),
        to: Some(19_000),
        ..Query::default()
    };
    let QueryResult::Points(p) = room.query(&q).unwrap() else {
        panic!()
    };
    assert_eq!(p.len(), 10);
    assert_eq!((p[0].ts, p[9].ts), (10_000, 19_000));
    // limit keeps the newest, across devices, newest last.
    let QueryResult::Points(p) = room
        .query(&Query {
            limit: 3,
            ..Query::default()
        })
        .unwrap()
    else {
        panic!()
    };
    let got: Vec<(&str, i64)> = p.iter().map(|r| (&*r.device, r.ts)).collect();
    assert_eq!(got, [("b", 98_500), ("a", 99_000), ("b", 99_500)]);
    // 10 s buckets of device a: 10 points each.
    let QueryResult::Buckets(bk) = room
        .query(&Query {
            device: Some("a".into()),
            step: Some(10_000),
            ..Query::default()
        })
        .unwrap()
    else {
        panic!()
    };
    assert_eq!(bk.len(), 10);
    assert_eq!(
        (bk[1].ts, bk[1].min, bk[1].max, bk[1].mean, bk[1].count),
        (10_000, 10.0, 19.0, 14.5, 10)
    );
    let err = room
        .query(&Query {
            metric: Some("nope".into()),
            ..Query::default()
        })
        .unwrap_err();
    assert!(matches!(err, HistoryError::UnknownSeries(_)));
}

#[test]
fn prune_drops_old_points_series_and_unheld_rooms() {
    let h = History::in_memory(cfg());
    let d: Arc<str> = Arc::from("d");
    {
        let room = h.room(&Arc::from("gone"));
        room.record(&rec(&d, "t", 1_000, 1.0)).unwrap();
    }
    let kept = h.room(&Arc::from("kept"));
    kept.record(&rec(&d, "t", 1_000, 1.0)).unwrap();
    kept.record(&rec(&d, "t", 100_000, 2.0)).unwrap();
    assert_eq!(h.series_count(), 2);
    h.prune(100_000 + 1); // cutoff 40_001
    assert_eq!(h.series_count(), 1);
    assert!(
        h.get("gone").is_none(),
        "no series left and no room holds it"
    );
    assert_eq!(kept.series_info()[0].count, 1);
    h.prune(1_000_000);
    assert_eq!(h.series_count(), 0);
    // `kept` is still held by its (live) room: it stays, with its epoch and offset.
    assert!(h.get("kept").is_some());
    assert_eq!(kept.offset(), 2);
    let again = h.room(&Arc::from("gone"));
    assert_eq!(again.offset(), 0);
}

#[test]
fn plot_data_is_one_line_per_device() {
    let h = History::in_memory(cfg());
    let room = h.room(&Arc::from("r"));
    let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
    room.record(&rec(&a, "t", 1, 1.0)).unwrap();
    room.record(&rec(&b, "t", 2, 2.0)).unwrap();
    room.record(&rec(&b, "h", 2, 2.0)).unwrap();
    let data = room.plot_data("t", None, 0, 10).unwrap();
    assert_eq!(data.lines.len(), 2);
    assert_eq!(data.unit.as_deref(), Some("C"));
    assert!(room.plot_data("x", None, 0, 10).is_err());
    assert_eq!(
        room.plot_data("t", Some("b"), 0, 10).unwrap().lines.len(),
        1
    );
}
