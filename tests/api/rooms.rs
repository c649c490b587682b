//! Rooms: welcome, presence, isolation, per-device order, commands and acks, and the
//! replacement of a duplicate client.

use serde_json::json;

use crate::helpers::{next_error, spawn_app};

#[tokio::test]
async fn welcome_lists_the_room_and_presence_announces_arrivals_and_departures() {
    let app = spawn_app().await;
    let (mut dash, welcome) = app.connect("lab", "dash-1", "dashboard").await;
    assert_eq!(welcome["room"], "lab");
    assert_eq!(welcome["client"], "dash-1");
    assert_eq!(welcome["role"], "dashboard");
    assert_eq!(welcome["offset"], 0);
    assert!(welcome["epoch"].as_str().is_some_and(|e| !e.is_empty()));
    assert_eq!(welcome["members"], json!([]));
    assert_eq!(welcome["dashboards"], 0);

    let (dev, welcome) = app.connect("lab", "t1", "device").await;
    // Dashboards are counted, not listed, unless a member asks for `presence=all`.
    assert_eq!(welcome["members"], json!([]));
    assert_eq!(welcome["dashboards"], 1);
    let join = dash.recv_type("presence").await;
    assert_eq!(
        join,
        json!({"type":"presence","event":"join","client":"t1","role":"device","via":"ws"})
    );
    drop(dev);
    let leave = dash.recv_type("presence").await;
    assert_eq!(leave["event"], "leave");
    assert_eq!(leave["client"], "t1");
    app.stop().await;
}

/// Presence is not quadratic: a dashboard's join and leave go only to members that asked
/// for `presence=all`; everyone else gets the devices' presence and a count in `welcome`.
#[tokio::test]
async fn dashboards_hear_of_other_dashboards_only_with_presence_all() {
    let app = spawn_app().await;
    let (_dev, _) = app.connect("hall", "t1", "device").await;
    let (mut watcher, welcome) = app
        .connect_query("hall", "ops", "role=dashboard&presence=all")
        .await;
    assert_eq!(
        welcome["members"],
        json!([{"client":"t1","role":"device","via":"ws"}])
    );
    let (mut plain, welcome) = app.connect("hall", "wall", "dashboard").await;
    assert_eq!(
        welcome["members"],
        json!([{"client":"t1","role":"device","via":"ws"}])
    );
    assert_eq!(welcome["dashboards"], 1);
    let join = watcher.recv_type("presence").await;
    assert_eq!(
        join,
        json!({"type":"presence","event":"join","client":"wall","role":"dashboard","via":"ws"})
    );
    let (third, welcome) = app
        .connect_query("hall", "lobby", "role=dashboard&presence=all")
        .await;
    assert_eq!(welcome["dashboards"], 2);
    let listed: Vec<&str> = welcome["members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["client"].as_str())
        .collect();
    assert_eq!(listed.len(), 3, "{listed:?}");
    for who in ["t1", "ops", "wall"] {
        assert!(listed.contains(&who), "{who} missing from {listed:?}");
    }
    let join = watcher.recv_type("presence").await;
    assert_eq!(
        (join["event"].as_str(), join["client"].as_str()),
        (Some("join"), Some("lobby"))
    );
    drop(third);
    let leave = watcher.recv_type("presence").await;
    assert_eq!(
        (leave["event"].as_str(), leave["client"].as_str()),
        (Some("leave"), Some("lobby"))
    );
    // The plain dashboard heard of neither dashboard's arrival nor of the leave.
    plain.expect_silence(300).await;
    app.stop().await;
}

#[tokio::test]
async fn readings_reach_every_dashboard_of_the_room_and_no_one_else() {
    let app = spawn_app().await;
    let (mut a1, _) = app.connect("a", "d1", "dashboard").await;
    let (mut a2, _) = app.connect("a", "d2", "dashboard").await;
    let (mut b1, _) = app.connect("b", "d1", "dashboard").await;
    let (mut dev, _) = app.connect("a", "sensor", "device").await;
    // Each dashboard hears of the device only: dashboards' own joins are not sent.
    let _ = a1.recv_type("presence").await;
    let _ = a2.recv_type("presence").await;

    dev.send_json(json!({"type":"reading","metric":"temperature","value":21.5,"unit":"C","ts":1764000000000u64,"seq":17}))
        .await;
    for dash in [&mut a1, &mut a2] {
        let r = dash.recv_type("reading").await;
        assert_eq!(
            r,
            json!({"type":"reading","room":"a","device":"sensor","metric":"temperature","value":21.5,"unit":"C","ts":1764000000000u64,"seq":17,"offset":1})
        );
    }
    b1.expect_silence(300).await;
    dev.expect_silence(100).await;
    app.stop().await;
}

#[tokio::test]
async fn the_hub_stamps_readings_without_ts_and_offsets_rise_by_one() {
    let app = spawn_app().await;
    let (mut dash, _) = app.connect("r", "dash", "dashboard").await;
    let (mut dev, _) = app.connect("r", "dev", "device").await;
    let before = chrono::Utc::now().timestamp_millis();
    dev.send_json(json!({"type":"readings","items":[{"metric":"a","value":1},{"metric":"b","value":2,"ts":"2026-01-01T00:00:00Z"}]}))
        .await;
    let r1 = dash.recv_type("reading").await;
    let r2 = dash.recv_type("reading").await;
    let stamped = r1["ts"].as_i64().expect("ts");
    assert!(stamped >= before && stamped <= chrono::Utc::now().timestamp_millis());
    assert_eq!(r2["ts"], 1_767_225_600_000i64);
    assert_eq!(r1["offset"], 1);
    assert_eq!(r2["offset"], 2);
    assert!(r1.get("seq").is_none() && r1.get("unit").is_none());
    app.stop().await;
}

#[tokio::test]
async fn readings_of_each_device_arrive_in_the_order_sent() {
    let app = spawn_app().await;
    let (mut dash, _) = app.connect("o", "dash", "dashboard").await;
    let (d1, _) = app.connect("o", "d1", "device").await;
    let (d2, _) = app.connect("o", "d2", "device").await;
    const N: u64 = 150;
    let send = |mut c: crate::helpers::Client| async move {
        for seq in 1..=N {
            c.reading("x", seq as f64, seq).await;
        }
        c
    };
    let (d1, d2) = tokio::join!(send(d1), send(d2));
    let mut next = std::collections::HashMap::from([("d1", 1u64), ("d2", 1u64)]);
    let mut last_offset = 0;
    for _ in 0..2 * N {
        let r = dash.recv_type("reading").await;
        let device = r["device"].as_str().expect("device").to_string();
        let expect = next.get_mut(device.as_str()).expect("known device");
        assert_eq!(r["seq"].as_u64(), Some(*expect), "order of {device}");
        *expect += 1;
        let offset = r["offset"].as_u64().expect("offset");
        assert_eq!(offset, last_offset + 1, "offsets have no gap");
        last_offset = offset;
    }
    drop((d1, d2));
    app.stop().await;
}

#[tokio::test]
async fn commands_reach_the_device_and_acks_reach_the_sender() {
    let app = spawn_app().await;
    let (mut dev, _) = app.connect("c", "pump", "device").await;
    let (mut asker, _) = app.connect("c", "dash-a", "dashboard").await;
    let (mut other, _) = app.connect("c", "dash-b", "dashboard").await;

    asker
        .send_json(json!({"type":"command","id":"c-1","to":"pump","name":"set_interval","args":{"ms":500}}))
        .await;
    let cmd = dev.recv_type("command").await;
    assert_eq!(
        cmd,
        json!({"type":"command","id":"c-1","from":"dash-a","name":"set_interval","args":{"ms":500}})
    );
    dev.send_json(json!({"type":"ack","id":"c-1","ok":true,"result":{"interval_ms":500}}))
        .await;
    let ack = asker.recv_type("ack").await;
    assert_eq!(
        ack,
        json!({"type":"ack","id":"c-1","from":"pump","ok":true,"result":{"interval_ms":500}})
    );
    // The ack went to the sender only; a second ack for the same id is unknown.
    dev.send_json(json!({"type":"ack","id":"c-1","ok":true}))
        .await;
    assert_eq!(next_error(&mut dev).await.0, "unknown_command");
    other.expect_silence(200).await;

    // A command to a device that is not in the room.
    asker
        .send_json(json!({"type":"command","id":"c-2","to":"ghost","name":"reboot"}))
        .await;
    let e = asker.recv_type("error").await;
    assert_eq!(e["code"], "unknown_device");
    assert_eq!(e["id"], "c-2");
    // A dashboard is not a device either.
    asker
        .send_json(json!({"type":"command","id":"c-3","to":"dash-b","name":"reboot"}))
        .await;
    assert_eq!(next_error(&mut asker).await.0, "unknown_device");
    // Two pending commands with one id.
    asker
        .send_json(json!({"type":"command","id":"c-4","to":"pump","name":"reboot"}))
        .await;
    asker
        .send_json(json!({"type":"command","id":"c-4","to":"pump","name":"reboot"}))
        .await;
    assert_eq!(next_error(&mut asker).await.0, "duplicate_id");
    app.stop().await;
}

#[tokio::test]
async fn a_newer_connection_replaces_the_older_one_with_4000() {
    let app = spawn_app().await;
    let (mut dash, _) = app.connect("rep", "dash", "dashboard").await;
    let (mut old, _) = app.connect("rep", "dev", "device").await;
    let _ = dash.recv_type("presence").await;
    let (mut new, _) = app.connect("rep", "dev", "device").await;
    let (code, reason) = old.recv_close().await;
    assert_eq!(u16::from(code), 4000);
    assert_eq!(reason, "replaced");
    // The new connection is the live one: its readings flow, and the old one's
    // departure did not announce a leave.
    new.reading("t", 1.0, 1).await;
    let r = dash.recv_type("reading").await;
    assert_eq!(r["device"], "dev");
    let summary: serde_json::Value =
        serde_json::from_str(&app.get("/api/rooms").await.1).expect("json");
    assert_eq!(summary["rooms"][0]["devices"][0]["client"], "dev");
    app.stop().await;
}

#[tokio::test]
async fn pending_commands_are_bounded_per_room() {
    let app = crate::helpers::spawn_app_with(|s| s.limits.max_pending_commands = 2).await;
    let (_dev, _) = app.connect("p", "dev", "device").await;
    let (mut dash, _) = app.connect("p", "dash", "dashboard").await;
    for id in ["a", "b", "c"] {
        dash.send_json(json!({"type":"command","id":id,"to":"dev","name":"reboot"}))
            .await;
    }
    let e = dash.recv_type("error").await;
    assert_eq!(e["code"], "too_many_pending");
    assert_eq!(e["id"], "c");
    app.stop().await;
}

#[tokio::test]
async fn devices_asking_for_acks_get_accepted_and_resent_readings_are_not_duplicated() {
    let app = spawn_app().await;
    let (mut dash, _) = app.connect("d", "dash", "dashboard").await;
    let (mut dev, _) = app.connect_query("d", "dev", "role=device&acks=true").await;
    dev.send_json(json!({"type":"readings","items":[
        {"metric":"t","value":1,"seq":1},{"metric":"t","value":2,"seq":2}]}))
        .await;
    assert_eq!(
        dev.recv_type("accepted").await,
        json!({"type":"accepted","seq":2,"count":2,"seqs":[[1,2]]})
    );
    // After a reconnect the device resends what it was not sure of, plus something new.
    drop(dev);
    let (mut dev, _) = app.connect_query("d", "dev", "role=device&acks=true").await;
    dev.send_json(json!({"type":"readings","items":[
        {"metric":"t","value":2,"seq":2},{"metric":"t","value":3,"seq":3}]}))
        .await;
    // The duplicate is listed too: the device may forget it.
    assert_eq!(dev.recv_type("accepted").await["seqs"], json!([[2, 3]]));
    let seqs: Vec<u64> = [
        dash.recv_type("reading").await,
        dash.recv_type("reading").await,
        dash.recv_type("reading").await,
    ]
    .iter()
    .map(|r| r["seq"].as_u64().expect("seq"))
    .collect();
    assert_eq!(seqs, [1, 2, 3], "each reading exactly once");
    dash.expect_silence(200).await;
    assert!(app
        .get("/metrics")
        .await
        .1
        .contains("telehub_duplicate_readings_total 1"));
    app.stop().await;
}
