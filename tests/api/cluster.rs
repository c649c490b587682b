//! `[cluster]`: several real hub processes sharing rooms through a real `redis-server`
//! started on a free port (Debian's, which `.ci/run` installs; missing, these fail).
//! Each test has its own Redis and key prefix.

use serde_json::{json, Value};
use telehub_testkit::redis::Redis;

use crate::helpers::{http_get, hub_process, Client, Hub, Polled, WAIT};

/// A hub process of the cluster on `redis` named `node`, not started yet.
pub(crate) fn cluster_process(redis: &Redis, node: &str) -> telehub_testkit::hub::HubBuilder {
    hub_process()
        .env("TELEHUB_CLUSTER_REDIS_URL", redis.url())
        .env("TELEHUB_CLUSTER_KEY_PREFIX", "t")
        .env("TELEHUB_CLUSTER_NODE_ID", node)
}

/// A hub of the cluster on `redis`, with extra `TELEHUB_*` settings.
pub(crate) fn cluster_hub(redis: &Redis, node: &str, extra: &[(&str, &str)]) -> Hub {
    let mut b = cluster_process(redis, node);
    for (k, v) in extra {
        b = b.env(*k, *v);
    }
    b.start()
}

pub(crate) async fn dashboard(hub: &Hub, room: &str, client: &str, query: &str) -> (Client, Value) {
    let mut c = Client::connect(&hub.ws_url(room, client, query))
        .await
        .expect("dashboard connects");
    let welcome = c.recv_type("welcome").await;
    (c, welcome)
}

pub(crate) async fn device(hub: &Hub, room: &str, client: &str) -> Client {
    let mut c = Client::connect(&hub.ws_url(room, client, "role=device&acks=true"))
        .await
        .expect("device connects");
    c.recv_type("welcome").await;
    c
}

/// Sends readings `from..=to` (value = seq) and waits for each `accepted`, so every one
/// of them is in Redis when this returns.
pub(crate) async fn publish(dev: &mut Client, from: u64, to: u64) {
    for seq in from..=to {
        dev.reading("t", seq as f64, seq).await;
        let acc = dev.recv_type("accepted").await;
        assert!(
            acc["seqs"].to_string().contains(&seq.to_string()),
            "accepted {seq}: {acc}"
        );
    }
}

/// Waits until Redis lists `n` members of `room`, and the room in the index of rooms
/// (presence is written just after a member's welcome).
async fn wait_for_members(redis: &Redis, room: &str, n: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    let key = format!("t:{{{room}}}:pm");
    while redis.command(&["HLEN", &key]) != format!(":{n}")
        || redis
            .command(&["ZSCORE", "t:rooms", room])
            .starts_with("$-1")
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{room} has {} members in Redis, not {n}: {}",
            redis.command(&["HLEN", &key]),
            redis.command(&["HGETALL", &key])
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// The presence frames that arrive within `ms` (others skipped): (event, client, role).
async fn presence_within(c: &mut Client, ms: u64) -> Vec<(String, String, String)> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(ms);
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match c.poll_json(left).await {
            Polled::Json(v) if v["type"] == "presence" => out.push((
                v["event"].as_str().unwrap_or_default().to_string(),
                v["client"].as_str().unwrap_or_default().to_string(),
                v["role"].as_str().unwrap_or_default().to_string(),
            )),
            Polled::Json(_) => {}
            Polled::Quiet => return out,
            Polled::Closed => panic!("closed while waiting for presence: {out:?}"),
        }
    }
}

/// The next presence frame (others skipped): (event, client).
async fn next_presence(c: &mut Client) -> (String, String) {
    let v = c.recv_type("presence").await;
    (
        v["event"].as_str().unwrap_or_default().to_string(),
        v["client"].as_str().unwrap_or_default().to_string(),
    )
}

/// The value of the unlabelled counter or gauge `name` in `hub`'s `/metrics`.
pub(crate) async fn metric(hub: &Hub, name: &str) -> u64 {
    let (status, body) = http_get(hub.addr(), "/metrics", "").await;
    assert_eq!(status, 200);
    body.lines()
        .find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {name} in {body}")) as u64
}

/// `/api/rooms` of `hub`, without the answering hub's name.
async fn rooms_of(hub: &Hub) -> Value {
    let (status, body) = http_get(hub.addr(), "/api/rooms", "").await;
    assert_eq!(status, 200, "{body}");
    let mut v: Value = serde_json::from_str(&body).expect("JSON");
    v.as_object_mut().expect("an object").remove("node");
    v
}

/// The next `n` readings (other frames skipped): (offset, value).
async fn readings(c: &mut Client, n: usize) -> Vec<(u64, f64)> {
    let mut out = Vec::new();
    while out.len() < n {
        let v = c.recv_json().await;
        if v["type"] == "reading" {
            out.push((
                v["offset"].as_u64().expect("offset"),
                v["value"].as_f64().expect("value"),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_on_one_hub_reaches_dashboards_on_two_others_with_the_same_offsets() {
    // Arrange
    let redis = Redis::start();
    // (A presence refresh or reap every few seconds would blur the call counts.)
    let slow_presence = [("TELEHUB_CLUSTER_PRESENCE_TTL_MS", "600000")];
    let hubs: Vec<Hub> = (1..=3)
        .map(|i| cluster_hub(&redis, &format!("hub{i}"), &slow_presence))
        .collect();
    let (mut d2, w2) = dashboard(&hubs[1], "plant", "dash2", "").await;
    let (mut d3, w3) = dashboard(&hubs[2], "plant", "dash3", "").await;
    assert_eq!(
        w2["epoch"], w3["epoch"],
        "one epoch for the room on every hub"
    );
    assert!(!w2["epoch"].as_str().unwrap_or_default().is_empty());
    let mut dev = device(&hubs[0], "plant", "sensor").await;
    wait_for_members(&redis, "plant", 3).await;
    let (publishes, evalshas) = (redis.calls("publish"), redis.calls("evalsha"));

    // Act
    publish(&mut dev, 1, 50).await;

    // Assert: every reading, in order, offsets 1..=50 on both hubs
    let expected: Vec<(u64, f64)> = (1..=50).map(|i| (i, i as f64)).collect();
    assert_eq!(readings(&mut d2, 50).await, expected);
    assert_eq!(readings(&mut d3, 50).await, expected);
    // One script call and one PUBLISH per message, however many hubs and dashboards:
    // 50 publishes and 2 joins' reads, plus at most one EVALSHA per script refused with
    // NOSCRIPT before it was loaded.
    assert_eq!(redis.calls("publish") - publishes, 50);
    // (redis-rs sends EVALSHA again after a NOSCRIPT: the first publish, and the
    // keeper's first read, may count two.) The room's keeper (hub 1, the publisher)
    // records what its subscription brings and reads the stream on its own schedule:
    // once when it takes the room and every quarter lease, not per reading.
    let keeper_reads = metric(&hubs[0], "telehub_cluster_keeper_reads_total").await;
    assert!(
        (1..=3).contains(&keeper_reads),
        "{keeper_reads} keeper reads"
    );
    let evalsha = redis.calls("evalsha") - evalshas - keeper_reads;
    assert!(
        (50..=52).contains(&evalsha),
        "{evalsha}: {}",
        redis.info("commandstats")
    );
    // A resend of seq 50 is a duplicate in Redis: acknowledged, not stamped again.
    dev.reading("t", 50.0, 50).await;
    dev.recv_type("accepted").await;
    publish(&mut dev, 51, 51).await;
    assert_eq!(readings(&mut d2, 1).await, vec![(51, 51.0)]);
    assert_eq!(readings(&mut d3, 1).await, vec![(51, 51.0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_moving_to_another_hub_with_since_gets_exactly_what_it_missed() {
    // Arrange
    let redis = Redis::start();
    let hubs: Vec<Hub> = (1..=3)
        .map(|i| cluster_hub(&redis, &format!("hub{i}"), &[]))
        .collect();
    let (mut d, welcome) = dashboard(&hubs[1], "plant", "dash", "").await;
    let epoch = welcome["epoch"].as_str().expect("epoch").to_string();
    let mut dev = device(&hubs[0], "plant", "sensor").await;
    publish(&mut dev, 1, 5).await;
    assert_eq!(readings(&mut d, 5).await.last(), Some(&(5, 5.0)));
    d.close().await;

    // Act: the device keeps publishing while the dashboard comes back on hub 3
    let publisher = tokio::spawn(async move {
        publish(&mut dev, 6, 60).await;
        dev
    });
    let url = hubs[2].ws_url("plant", "dash", &format!("since=5&epoch={epoch}"));
    let mut d = Client::connect(&url).await.expect("reconnects");
    let welcome = d.recv_type("welcome").await;
    let mut dev = publisher.await.expect("publisher");

    // Assert: recovered, then 6..=60 exactly once each, in order, then live
    assert_eq!(welcome["recovered"], json!(true), "{welcome}");
    assert_eq!(welcome["epoch"], json!(epoch));
    let expected: Vec<(u64, f64)> = (6..=60).map(|i| (i, i as f64)).collect();
    assert_eq!(readings(&mut d, 55).await, expected);
    publish(&mut dev, 61, 61).await;
    assert_eq!(readings(&mut d, 1).await, vec![(61, 61.0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dashboard_further_behind_than_the_stream_is_told_recovered_false() {
    // Arrange: a stream of 5 readings per room
    let redis = Redis::start();
    let cfg = [("TELEHUB_CLUSTER_STREAM_LEN", "5")];
    let h1 = cluster_hub(&redis, "hub1", &cfg);
    let h2 = cluster_hub(&redis, "hub2", &cfg);
    let (mut d, welcome) = dashboard(&h2, "plant", "dash", "").await;
    let epoch = welcome["epoch"].as_str().expect("epoch").to_string();
    let mut dev = device(&h1, "plant", "sensor").await;
    publish(&mut dev, 1, 2).await;
    readings(&mut d, 2).await;
    d.close().await;

    // Act: 18 more while it is away, then it asks for what followed offset 2
    publish(&mut dev, 3, 20).await;
    let (mut d, welcome) = dashboard(&h1, "plant", "dash", &format!("since=2&epoch={epoch}")).await;

    // Assert: not recovered, a snapshot of the last value, then live readings
    assert_eq!(welcome["recovered"], json!(false), "{welcome}");
    assert_eq!(welcome["offset"], json!(20));
    let snapshot = d.recv_type("snapshot").await;
    assert_eq!(snapshot["series"][0]["value"], json!(20.0), "{snapshot}");
    assert_eq!(snapshot["series"][0]["offset"], json!(20));
    publish(&mut dev, 21, 21).await;
    assert_eq!(readings(&mut d, 1).await, vec![(21, 21.0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_losing_its_data_means_a_new_epoch_and_recovered_false() {
    // Arrange
    let mut redis = Redis::start();
    let h1 = cluster_hub(&redis, "hub1", &[]);
    let h2 = cluster_hub(&redis, "hub2", &[]);
    let (mut d, welcome) = dashboard(&h2, "plant", "dash", "").await;
    let old_epoch = welcome["epoch"].as_str().expect("epoch").to_string();
    let mut dev = device(&h1, "plant", "sensor").await;
    publish(&mut dev, 1, 3).await;
    readings(&mut d, 3).await;

    // Act: Redis restarts without persistence
    redis.restart();
    // Each hub notices (its subscription drops) and says so until it reconnects.
    let mut saw_down = false;
    let mut healthy = false;
    for _ in 0..200 {
        let (status, body) = http_get(h2.addr(), "/healthz", "").await;
        if status == 503 {
            assert!(body.contains("redis_unavailable"), "{body}");
            saw_down = true;
        } else if status == 200 && saw_down {
            healthy = true;
            break;
        } else if status == 200 {
            // Either the drop was not seen yet, or it came and went between polls.
            let (_, metrics) = http_get(h2.addr(), "/metrics", "").await;
            if metrics.contains("telehub_cluster_reconnects_total 1") {
                healthy = true;
                break;
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert!(healthy, "hub 2 reconnected to Redis");
    // The device's next reading starts the room over in a new epoch.
    publish_until_taken(&mut dev, 4).await;

    // Assert: the live dashboard is told to resync, and comes back to recovered:false
    let (code, reason) = d.recv_close().await;
    assert_eq!((u16::from(code), reason.as_str()), (1013, "cluster resync"));
    let (_, welcome) = dashboard(&h2, "plant", "dash", &format!("since=3&epoch={old_epoch}")).await;
    assert_eq!(welcome["recovered"], json!(false), "{welcome}");
    assert_ne!(welcome["epoch"], json!(old_epoch));
    assert_eq!(welcome["offset"], json!(1));
    let (_, metrics) = http_get(h2.addr(), "/metrics", "").await;
    assert!(metrics.contains("telehub_cluster_redis_up 1"), "{metrics}");
    assert!(
        metrics.contains(r#"telehub_cluster_node{node="hub2"} 1"#),
        "{metrics}"
    );
    // Presence is written again after the loss, by the device's hub's refresh on
    // reconnecting (the dashboards above have gone).
    let deadline = tokio::time::Instant::now() + WAIT;
    while redis.command(&["HEXISTS", "t:{plant}:pm", "sensor"]) != ":1" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the device is not in presence again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    wait_for_members(&redis, "plant", 1).await;
    let (_, rooms) = http_get(h2.addr(), "/api/rooms", "").await;
    let rooms: Value = serde_json::from_str(&rooms).expect("JSON");
    assert_eq!(rooms["node"], json!("hub2"));
    assert_eq!(rooms["rooms"][0]["epoch"], welcome["epoch"], "{rooms}");
    assert_eq!(
        rooms["rooms"][0]["devices"],
        json!([{"client":"sensor","via":"ws","node":"hub1"}]),
        "{rooms}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_subscription_mid_stream_is_repaired_from_the_stream_in_place() {
    // Enough readings after the kill that the hub sees its gap before the last one.
    const LAST: u64 = 600;
    // Arrange
    let redis = Redis::start();
    // (The device sends faster than the default rate limit allows.)
    let fast = [
        ("TELEHUB_LIMITS_RATE_PER_SEC", "100000"),
        ("TELEHUB_LIMITS_RATE_BURST", "100000"),
    ];
    let h1 = cluster_hub(&redis, "hub1", &fast);
    let h2 = cluster_hub(&redis, "hub2", &[]);
    let (mut d, _) = dashboard(&h2, "plant", "dash", "").await;
    let mut dev = device(&h1, "plant", "sensor").await;
    publish(&mut dev, 1, 10).await;

    // Act: Redis drops every pub/sub connection, again and again, while the device
    // keeps publishing (a hub reconnects within a millisecond or two, so one drop may
    // miss nothing).
    let publisher = tokio::spawn(async move {
        publish(&mut dev, 11, LAST).await;
        dev
    });
    for _ in 0..40 {
        let killed = redis.command(&["CLIENT", "KILL", "TYPE", "pubsub"]);
        assert!(killed.starts_with(':'), "CLIENT KILL answered {killed}");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }

    // Assert: the dashboard sees 1..=LAST in order, each once, and is never closed: the
    // hub read what its subscription missed back from the stream.
    let mut seen: Vec<u64> = Vec::new();
    while seen.last() != Some(&LAST) {
        match d.poll_json(WAIT).await {
            Polled::Json(v) if v["type"] == "reading" => {
                let offset = v["offset"].as_u64().expect("offset");
                assert_eq!(offset, seen.len() as u64 + 1, "contiguous: {seen:?}");
                seen.push(offset);
            }
            Polled::Json(_) => {}
            Polled::Closed => panic!("closed after {:?}; the gap was not repaired", seen.last()),
            Polled::Quiet => panic!("readings stopped after {:?}", seen.last()),
        }
    }
    let mut dev = publisher.await.expect("publisher");
    publish(&mut dev, LAST + 1, LAST + 1).await;
    assert_eq!(
        readings(&mut d, 1).await,
        vec![(LAST + 1, (LAST + 1) as f64)]
    );
    let (_, metrics) = http_get(h2.addr(), "/metrics", "").await;
    let repairs: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("telehub_cluster_gap_repairs_total "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(repairs >= 1, "the subscription missed nothing? {metrics}");
    assert!(
        metrics.contains("telehub_cluster_resyncs_total 0"),
        "{metrics}"
    );
}

/// Publishes reading `seq` until Redis takes it (the command connection reconnects on
/// the first error after a Redis restart: those are answered `store_unavailable`).
async fn publish_until_taken(dev: &mut Client, seq: u64) {
    for _ in 0..100 {
        dev.reading("t", seq as f64, seq).await;
        match dev.poll_json(WAIT).await {
            Polled::Json(v) if v["type"] == "accepted" => return,
            Polled::Json(v) if v["code"] == "store_unavailable" => {}
            other => panic!("unexpected answer: {other:?}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("Redis never took reading {seq}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_aof_a_redis_restart_keeps_the_epoch_and_recovery_works() {
    // Arrange
    let mut redis = Redis::start_aof();
    let h1 = cluster_hub(&redis, "hub1", &[]);
    let h2 = cluster_hub(&redis, "hub2", &[]);
    let (mut d, welcome) = dashboard(&h2, "plant", "dash", "").await;
    let epoch = welcome["epoch"].as_str().expect("epoch").to_string();
    let mut dev = device(&h1, "plant", "sensor").await;
    publish(&mut dev, 1, 3).await;
    readings(&mut d, 3).await;
    d.close().await;

    // Act: Redis restarts and reads its append-only file back
    redis.restart();
    publish_until_taken(&mut dev, 4).await;
    publish(&mut dev, 5, 6).await;
    let (mut d, welcome) = dashboard(&h1, "plant", "dash", &format!("since=3&epoch={epoch}")).await;

    // Assert: same epoch, offsets continue, nothing missed
    assert_eq!(welcome["recovered"], json!(true), "{welcome}");
    assert_eq!(welcome["epoch"], json!(epoch));
    assert_eq!(
        readings(&mut d, 3).await,
        vec![(4, 4.0), (5, 5.0), (6, 6.0)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_posted_over_http_or_line_protocol_to_one_hub_reach_dashboards_on_another_through_redis(
) {
    // Arrange: a dashboard on hub 2; an HTTP device posts to hub 1.
    let redis = Redis::start();
    let h1 = cluster_hub(&redis, "hub1", &[]);
    let h2 = cluster_hub(&redis, "hub2", &[]);
    let (mut dash, _) = dashboard(&h2, "yard", "dash", "").await;
    let path = "/api/rooms/yard/devices/pump/readings";

    // Act
    let (status, body) = telehub_testkit::http::http_post(
        h1.addr(),
        path,
        r#"[{"metric":"t","value":1,"seq":1},{"metric":"t","value":2,"seq":2}]"#,
    )
    .await;

    // Assert: answered once Redis has them, with the offsets Redis gave, which the other
    // hub's dashboard sees; a resend is a duplicate, not a second reading.
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(answer["accepted"], 2, "{answer}");
    let offsets = answer["offsets"].clone();
    let got = readings(&mut dash, 2).await;
    assert_eq!(
        json!([got[0].0, got[1].0]),
        offsets,
        "the dashboard on hub 2 sees the offsets hub 1 answered"
    );
    assert_eq!((got[0].1, got[1].1), (1.0, 2.0));
    let (status, body) = telehub_testkit::http::http_post(
        h1.addr(),
        path,
        r#"[{"metric":"t","value":2,"seq":2},{"metric":"t","value":3,"seq":3}]"#,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        (&answer["accepted"], &answer["duplicates"]),
        (&json!(2), &json!(1)),
        "{answer}"
    );
    let next = readings(&mut dash, 1).await;
    assert_eq!(
        next[0],
        (got[1].0 + 1, 3.0),
        "only the new reading, at the next offset"
    );

    // Line protocol takes the same way: a write to hub 1 reaches hub 2's dashboard.
    let (status, body) = telehub_testkit::http::http_post(
        h1.addr(),
        "/api/v2/write?bucket=yard&precision=s",
        "pump,host=pump t=9",
    )
    .await;
    assert_eq!(status, 204, "{body}");
    let next = readings(&mut dash, 1).await;
    assert_eq!(
        next[0],
        (got[1].0 + 2, 9.0),
        "the write's reading, next offset"
    );

    // Act: Redis goes away.
    drop(redis);
    let (status, body) =
        telehub_testkit::http::http_post(h1.addr(), path, r#"{"metric":"t","value":4,"seq":4}"#)
            .await;
    // Assert: refused as not kept, saying why, for the device to resend.
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("store_unavailable") && body.contains("Redis"),
        "{body}"
    );
}

/// Sends commands `id-1`, `id-2`, ... from `dash` to `to` until one is refused with
/// something other than `unknown_device` or answered, at most [`WAIT`]: a device's entry
/// in the directory is written just after its welcome. Returns the id that was not
/// refused and the refusal that ended it, if any.
async fn command_once_known(dash: &mut Client, to: &str, id: &str) -> (String, Option<Value>) {
    let deadline = tokio::time::Instant::now() + WAIT;
    for n in 1.. {
        let cid = format!("{id}-{n}");
        dash.send_json(json!({"type":"command","id":cid,"to":to,"name":"open","args":{"pct":40}}))
            .await;
        let mut answer = dash.poll_json(std::time::Duration::from_millis(300)).await;
        while matches!(&answer, Polled::Json(v) if v["type"] == "presence") {
            answer = dash.poll_json(std::time::Duration::from_millis(300)).await;
        }
        match answer {
            Polled::Json(v) if v["type"] == "error" && v["code"] == "unknown_device" => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "`{to}` still unknown after {WAIT:?}: {v}"
                );
            }
            Polled::Json(v) if v["type"] == "error" => return (cid, Some(v)),
            Polled::Json(v) => panic!("unexpected frame while commanding: {v}"),
            Polled::Quiet => return (cid, None),
            Polled::Closed => panic!("the dashboard was closed"),
        }
    }
    unreachable!()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_from_a_dashboard_on_one_hub_reaches_a_device_on_another_and_the_ack_comes_back()
{
    // Arrange: the device on hub 1, the dashboard on hub 3.
    let redis = Redis::start();
    let mut hubs: Vec<Hub> = (1..=3)
        .map(|i| cluster_hub(&redis, &format!("hub{i}"), &[]))
        .collect();
    let mut valve = device(&hubs[0], "plant", "valve").await;
    let (mut dash, _) = dashboard(&hubs[2], "plant", "dash3", "").await;

    // Act: a command crosses to hub 1 and the device's ack comes back to hub 3.
    let (id, refused) = command_once_known(&mut dash, "valve", "c").await;
    assert_eq!(refused, None, "the command is taken");
    let cmd = valve.recv_type("command").await;
    assert_eq!(
        (&cmd["id"], &cmd["from"], &cmd["name"], &cmd["args"]),
        (
            &json!(id),
            &json!("dash3"),
            &json!("open"),
            &json!({"pct":40})
        ),
        "{cmd}"
    );
    valve
        .send_json(json!({"type":"ack","id":id,"ok":true,"result":{"opened":40}}))
        .await;
    let ack = dash.recv_type("ack").await;

    // Assert
    assert_eq!(
        (&ack["id"], &ack["from"], &ack["ok"], &ack["result"]),
        (
            &json!(id),
            &json!("valve"),
            &json!(true),
            &json!({"opened":40})
        ),
        "{ack}"
    );
    // The same id while it is pending on hub 1 is refused there, and the refusal comes
    // back with its own code.
    dash.send_json(json!({"type":"command","id":"twice","to":"valve","name":"open"}))
        .await;
    valve.recv_type("command").await;
    dash.send_json(json!({"type":"command","id":"twice","to":"valve","name":"open"}))
        .await;
    let e = dash.recv_type("error").await;
    assert_eq!(
        (&e["code"], &e["id"]),
        (&json!("duplicate_id"), &json!("twice")),
        "{e}"
    );
    // A device on no hub is unknown.
    dash.send_json(json!({"type":"command","id":"n1","to":"nobody","name":"open"}))
        .await;
    let e = dash.recv_type("error").await;
    assert_eq!(
        (&e["code"], &e["id"]),
        (&json!("unknown_device"), &json!("n1")),
        "{e}"
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("on any hub"),
        "{e}"
    );

    // A device whose hub was killed (its entry left in Redis) is unknown too, at once:
    // no hub listens on the dead hub's channel any more.
    hubs[0].kill();
    drop(valve);
    let deadline = tokio::time::Instant::now() + WAIT;
    // (hub 1 would ignore this payload; Redis answers how many subscribers took it.)
    while redis.command(&["PUBLISH", "t:n:hub1", "probe"]) != ":0" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "hub 1 still subscribed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        redis.command(&["HEXISTS", "t:{plant}:pm", "valve"]) == ":1",
        "the dead hub's entry is still there before the command"
    );
    dash.send_json(json!({"type":"command","id":"k1","to":"valve","name":"open"}))
        .await;
    let e = dash.recv_type("error").await;
    assert_eq!(
        (&e["code"], &e["id"]),
        (&json!("unknown_device"), &json!("k1")),
        "{e}"
    );

    // And the device, reconnected to hub 2, is found there.
    let mut valve = device(&hubs[1], "plant", "valve").await;
    let (id, refused) = command_once_known(&mut dash, "valve", "m").await;
    assert_eq!(refused, None);
    let cmd = valve.recv_type("command").await;
    assert_eq!(cmd["id"], json!(id), "{cmd}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_the_same_on_every_hub_and_each_join_and_leave_is_told_once() {
    // Arrange: a watcher of everyone on hub 2.
    let redis = Redis::start();
    let hubs: Vec<Hub> = (1..=3)
        .map(|i| cluster_hub(&redis, &format!("hub{i}"), &[]))
        .collect();
    let (mut watcher, _) = dashboard(&hubs[1], "plant", "watcher", "presence=all").await;

    // Act: a device joins on hub 1, a dashboard on hub 3.
    let dev = device(&hubs[0], "plant", "sensor").await;
    assert_eq!(
        next_presence(&mut watcher).await,
        ("join".into(), "sensor".into())
    );
    let (mut viewer, welcome) = dashboard(&hubs[2], "plant", "viewer", "").await;

    // Assert: the viewer's welcome lists the device of hub 1 and counts the dashboard of
    // hub 2; the watcher is told of the viewer once.
    assert_eq!(
        welcome["members"],
        json!([{"client":"sensor","role":"device","via":"ws"}]),
        "{welcome}"
    );
    assert_eq!(welcome["dashboards"], json!(1), "{welcome}");
    assert_eq!(
        presence_within(&mut watcher, 500).await,
        vec![("join".into(), "viewer".into(), "dashboard".into())]
    );
    // /api/rooms answers the same on every hub, with each member's hub.
    wait_for_members(&redis, "plant", 3).await;
    let one = rooms_of(&hubs[0]).await;
    assert_eq!(one, rooms_of(&hubs[1]).await);
    assert_eq!(one, rooms_of(&hubs[2]).await);
    let room = &one["rooms"][0];
    assert_eq!(room["room"], json!("plant"), "{one}");
    assert_eq!(
        room["devices"],
        json!([{"client":"sensor","via":"ws","node":"hub1"}]),
        "{one}"
    );
    assert_eq!(
        room["dashboards"],
        json!([
            {"client":"viewer","via":"ws","node":"hub3"},
            {"client":"watcher","via":"ws","node":"hub2"}
        ]),
        "{one}"
    );

    // Act: the device leaves.
    dev.close().await;

    // Assert: one leave on each hub's dashboards, and nothing else.
    assert_eq!(
        presence_within(&mut watcher, 800).await,
        vec![("leave".into(), "sensor".into(), "device".into())]
    );
    assert_eq!(
        presence_within(&mut viewer, 300).await,
        vec![("leave".into(), "sensor".into(), "device".into())]
    );
    wait_for_members(&redis, "plant", 2).await;
    assert_eq!(rooms_of(&hubs[0]).await["rooms"][0]["devices"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_hub_s_members_leave_once_within_the_ttl_and_no_accepted_reading_is_lost() {
    // Arrange: a device and a dashboard on hub 1, a watcher of everyone on hub 2.
    let redis = Redis::start();
    let ttl = [("TELEHUB_CLUSTER_PRESENCE_TTL_MS", "2000")];
    let mut h1 = cluster_hub(&redis, "hub1", &ttl);
    let h2 = cluster_hub(&redis, "hub2", &ttl);
    let (mut watcher, _) = dashboard(&h2, "plant", "watcher", "presence=all").await;
    let mut dev = device(&h1, "plant", "sensor").await;
    let (_gone, _) = dashboard(&h1, "plant", "gone", "").await;
    let mut joins = vec![
        next_presence(&mut watcher).await,
        next_presence(&mut watcher).await,
    ];
    joins.sort();
    assert_eq!(
        joins,
        vec![
            ("join".into(), "gone".into()),
            ("join".into(), "sensor".into())
        ]
    );
    publish(&mut dev, 1, 20).await;
    // Ten more in flight when the hub dies: some accepted, some not.
    for seq in 21..=30 {
        dev.reading("t", seq as f64, seq).await;
    }

    // Act: kill -9 hub 1 mid-stream; the device reconnects to hub 2 at once.
    h1.kill();
    let killed = tokio::time::Instant::now();
    let mut accepted: Vec<u64> = (1..=20).collect();
    loop {
        match dev.poll_json(WAIT).await {
            Polled::Json(v) if v["type"] == "accepted" => accepted.extend(
                v["seqs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|s| s.as_u64()),
            ),
            Polled::Json(_) => {}
            Polled::Quiet | Polled::Closed => break,
        }
    }
    let mut dev = device(&h2, "plant", "sensor").await;
    // It resends only what it was never told was accepted: what was is already safe.
    let unacked: Vec<u64> = (21..=30).filter(|s| !accepted.contains(s)).collect();
    for &seq in &unacked {
        dev.reading("t", seq as f64, seq).await;
        dev.recv_type("accepted").await;
    }

    // Assert: the dashboard of the dead hub leaves once, within the TTL; the device,
    // back on hub 2 before its entry expired, is joined again and never left.
    let mut seen = Vec::new();
    let mut gone_left_after = None;
    while killed.elapsed() < std::time::Duration::from_millis(3000) {
        for p in presence_within(&mut watcher, 100).await {
            if p.0 == "leave" && p.1 == "gone" {
                gone_left_after.get_or_insert(killed.elapsed());
            }
            seen.push((p.0, p.1));
        }
    }
    let leaves: Vec<_> = seen.iter().filter(|(e, _)| e == "leave").collect();
    assert_eq!(
        leaves,
        vec![&("leave".to_string(), "gone".to_string())],
        "{seen:?}"
    );
    assert!(seen.contains(&("join".into(), "sensor".into())), "{seen:?}");
    let after = gone_left_after.expect("a leave");
    assert!(
        after < std::time::Duration::from_millis(2000),
        "left {after:?} after the kill"
    );
    // Every reading from 1 to 30 is in the room once, at offsets 1 to 30.
    let (mut late, welcome) = dashboard(&h2, "plant", "late", "since=0").await;
    assert_eq!(welcome["recovered"], json!(true), "{welcome}");
    let got = readings(&mut late, 30).await;
    let mut values: Vec<u64> = got.iter().map(|(_, v)| *v as u64).collect();
    values.sort_unstable();
    assert_eq!(values, (1..=30).collect::<Vec<_>>(), "{got:?}");
    let offsets: Vec<u64> = got.iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, (1..=30).collect::<Vec<_>>());
    assert_eq!(welcome["offset"], json!(30), "no reading stamped twice");
    // And /api/rooms no longer lists the dead hub's members.
    wait_for_members(&redis, "plant", 3).await;
    let rooms = rooms_of(&h2).await;
    assert_eq!(
        rooms["rooms"][0]["devices"],
        json!([{"client":"sensor","via":"ws","node":"hub2"}]),
        "{rooms}"
    );
    assert_eq!(
        rooms["rooms"][0]["dashboards"],
        json!([{"client":"late","via":"ws","node":"hub2"}, {"client":"watcher","via":"ws","node":"hub2"}]),
        "{rooms}"
    );
}

/// A hub of the cluster on `redis` bridging `broker` with MQTT 5 and one shared
/// subscription, as every hub of a cluster must.
fn bridging_hub(redis: &Redis, node: &str, broker: u16) -> Hub {
    cluster_process(redis, node)
        .config(format!(
            "[[mqtt.bridges]]\nname = \"plant\"\nurl = \"mqtt://127.0.0.1:{broker}\"\n\
             protocol = \"5\"\nshared_group = \"hubs\"\nreconnect_min_ms = 50\nreconnect_max_ms = 200\n"
        ))
        .start()
}

/// `/api/bridges` of a hub: its one bridge.
async fn bridge_of(hub: &Hub) -> Value {
    let (status, body) = http_get(hub.addr(), "/api/bridges", "").await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("JSON");
    v["bridges"][0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hubs_bridging_one_broker_publish_each_mqtt_reading_once_and_route_its_commands() {
    // Arrange: hubs 1 and 2 bridge the broker, hub 3 only serves a dashboard.
    let redis = Redis::start();
    let broker = telehub_testkit::mosquitto::Mosquitto::start();
    let bridging = [
        bridging_hub(&redis, "hub1", broker.port),
        bridging_hub(&redis, "hub2", broker.port),
    ];
    let h3 = cluster_hub(&redis, "hub3", &[]);
    for hub in &bridging {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let s = bridge_of(hub).await;
            if s["connected"] == true && s["subscribed"] == true {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not subscribed: {s}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    let (mut dash, _) = dashboard(&h3, "lab", "dash", "").await;
    let sensor = telehub_testkit::mqtt::TestClient::connect(broker.port, "cluster-sensor");

    // Act: 200 MQTT readings from four devices.
    const N: u64 = 200;
    for seq in 0..N {
        sensor
            .publish_seq(&format!("telehub/lab/t{}/temperature", seq % 4), seq)
            .await;
    }

    // Assert: each reached the dashboard on hub 3 once, at offsets 1 to N, and the
    // broker split them between the two bridging hubs.
    let mut seqs = Vec::new();
    let mut offsets = Vec::new();
    while seqs.len() < N as usize {
        let r = dash.recv_type("reading").await;
        seqs.push(r["seq"].as_u64().expect("seq"));
        offsets.push(r["offset"].as_u64().expect("offset"));
    }
    dash.expect_silence(300).await;
    seqs.sort_unstable();
    assert_eq!(seqs, (0..N).collect::<Vec<_>>(), "each reading once");
    assert_eq!(offsets, (1..=N).collect::<Vec<_>>());
    let ins: Vec<u64> = [bridge_of(&bridging[0]).await, bridge_of(&bridging[1]).await]
        .iter()
        .map(|s| s["readings_in"].as_u64().unwrap_or(0))
        .collect();
    assert_eq!(ins.iter().sum::<u64>(), N, "{ins:?}");
    assert!(ins.iter().all(|n| *n > 0), "the broker split them: {ins:?}");

    // A command from hub 3 reaches the bridged device through whichever hub has it, and
    // the device's ack comes back.
    let mut valve = telehub_testkit::mqtt::TestClient::connect(broker.port, "cluster-valve");
    valve.subscribe("telehub/lab/valve/cmd").await;
    valve.publish_seq("telehub/lab/valve/position", 1).await;
    dash.recv_type("reading").await;
    let (id, refused) = command_once_known(&mut dash, "valve", "v").await;
    assert_eq!(refused, None);
    let cmd = valve.next(WAIT).await.expect("the device gets the command");
    let v: Value = serde_json::from_slice(&cmd.payload).expect("JSON");
    assert_eq!((&v["id"], &v["from"]), (&json!(id), &json!("dash")), "{v}");
    valve
        .publish(
            "telehub/lab/valve/ack",
            format!(r#"{{"id":"{id}","ok":true}}"#),
        )
        .await;
    let ack = dash.recv_type("ack").await;
    assert_eq!(
        (&ack["id"], &ack["from"], &ack["ok"]),
        (&json!(id), &json!("valve"), &json!(true))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_is_told_of_devices_joining_and_leaving_on_other_hubs() {
    // Arrange: a device on hub 1, which is told of devices only (the default).
    let redis = Redis::start();
    let h1 = cluster_hub(&redis, "hub1", &[]);
    let h2 = cluster_hub(&redis, "hub2", &[]);
    let mut valve = device(&h1, "plant", "valve").await;
    wait_for_members(&redis, "plant", 1).await;

    // Act: a dashboard, then a device join on hub 2; the device leaves.
    let (_dash, _) = dashboard(&h2, "plant", "dash", "").await;
    let pump = device(&h2, "plant", "pump").await;
    wait_for_members(&redis, "plant", 3).await;
    let joined = presence_within(&mut valve, 500).await;
    drop(pump);
    let left = presence_within(&mut valve, 1000).await;

    // Assert: the device's join and leave, once each; not the dashboard's.
    assert_eq!(
        joined,
        vec![("join".into(), "pump".into(), "device".into())],
        "{joined:?}"
    );
    assert_eq!(
        left,
        vec![("leave".into(), "pump".into(), "device".into())],
        "{left:?}"
    );
}
