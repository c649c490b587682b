//! Durable acknowledgements (`history.ack = "durable"`), against real hub processes on
//! real SQLite files: `accepted` is sent only for readings that are committed, so a
//! `kill -9` loses none of them; a store that cannot write (a file-size limit set on the
//! running hub with `prlimit`, as a full disk would) withholds acks while dashboards keep
//! getting readings, says why on `/healthz`, and writes everything once space returns.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};
use telehub_sim::{BackoffConfig, RunOptions, Scenario, SeqStart, SimStats};
use tokio::time::Instant;

use crate::helpers::{http_get, hub_process, Client, Hub, WAIT};

/// (device, seq) -> how many rows of `room` the database holds for it.
fn stored_seqs(data: &Path, room: &str) -> BTreeMap<(String, u64), u64> {
    let conn = rusqlite::Connection::open(data.join("telehub.db")).expect("open the database");
    let mut stmt = conn
        .prepare(
            "SELECT device, seq, count(*) FROM readings WHERE room = ?1 AND seq IS NOT NULL
             GROUP BY device, seq",
        )
        .expect("query");
    let rows = stmt
        .query_map([room], |r| {
            Ok((
                (r.get::<_, String>(0)?, r.get::<_, i64>(1)? as u64),
                r.get::<_, i64>(2)? as u64,
            ))
        })
        .expect("rows");
    rows.map(|r| r.expect("row")).collect()
}

/// Sets the running hub's soft file-size limit (`RLIMIT_FSIZE`); `None` lifts it. Only the
/// soft limit: raising it again up to the hard one needs no privilege.
fn file_size_limit(hub: &Hub, bytes: Option<u64>) {
    let pid = hub.pid().expect("the hub runs").to_string();
    let limit = bytes.map_or("unlimited".to_string(), |b| b.to_string());
    let ok = Command::new("prlimit")
        .args(["--pid", &pid, &format!("--fsize={limit}:")])
        .status()
        .expect("prlimit (util-linux) must be installed");
    assert!(ok.success(), "prlimit --pid {pid} --fsize={limit}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_stream_every_acknowledged_reading_is_in_history_exactly_once() {
    // Arrange: a hub with durable history and durable acks (the default), and simulated
    // devices that forget a reading only when `accepted` lists it.
    let data = tempfile::tempdir().expect("data dir");
    let mut hub = hub_process()
        .data_dir(data.path())
        .env("TELEHUB_HISTORY_FLUSH_INTERVAL_MS", "200")
        .start();
    let mut scenario = Scenario::quick(1, 4, Some(50.0), None).expect("scenario");
    scenario.rooms[0].name = "dur-k".into();
    let stats = SimStats::new();
    let mut opts = RunOptions::websocket(format!("ws://{}", hub.addr()));
    opts.seq_start = SeqStart::Fixed(1);
    opts.backoff = BackoffConfig {
        initial: Duration::from_millis(200),
        max: Duration::from_millis(500),
    };
    opts.stats = stats.clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sim = tokio::spawn(telehub_sim::run(scenario, opts, async {
        let _ = stopped.await;
    }));
    let deadline = Instant::now() + WAIT;
    while stats.snapshot().acked < 100 || stats.snapshot().connected < 4 {
        assert!(Instant::now() < deadline, "no acks: {:?}", stats.snapshot());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Act: kill -9 mid-stream (some readings fanned out and not yet committed, some acks
    // on their way), start again on the same file, let the devices resend, stop.
    let acked_before_kill = stats.snapshot().acked;
    hub.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    hub.restart();
    let deadline = Instant::now() + WAIT;
    while stats.snapshot().reconnects < 4
        || stats.snapshot().connected < 4
        || stats.snapshot().acked < acked_before_kill + 200
    {
        assert!(
            Instant::now() < deadline,
            "devices did not catch up: {:?}",
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The run ends with a drain: devices wait for the `accepted` of what they still hold.
    let _ = stop.send(());
    let summary = tokio::time::timeout(WAIT, sim)
        .await
        .expect("simulator stops")
        .expect("task")
        .expect("run");
    assert_eq!(hub.stop().await.code(), Some(0), "{}", hub.log());

    // Assert: every reading a device generated was acknowledged in the end, and each is
    // in the file exactly once: the ones acknowledged before the kill were on disk, the
    // rest were resent (and resends of kept ones were deduplicated).
    assert!(acked_before_kill >= 100);
    assert_eq!(summary.lost(), 0, "{summary:?}");
    let stored = stored_seqs(data.path(), "dur-k");
    for d in &summary.devices {
        assert_eq!(d.unacked, 0, "{d:?}");
        for seq in d.first_seq..=d.last_seq {
            assert_eq!(
                stored.get(&(d.id.clone(), seq)).copied(),
                Some(1),
                "{} seq {seq} must be stored exactly once",
                d.id
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_withholds_acks_keeps_dashboards_fed_and_writes_everything_once_space_returns()
{
    // Arrange: a hub with durable history, a dashboard and an acking device whose first
    // reading is on disk.
    let data = tempfile::tempdir().expect("data dir");
    let mut hub = hub_process()
        .data_dir(data.path())
        .env("TELEHUB_HISTORY_FLUSH_INTERVAL_MS", "50")
        .start();
    let mut dash = Client::connect(&hub.ws_url("disk", "dash", "role=dashboard"))
        .await
        .expect("dashboard");
    dash.recv_type("welcome").await;
    let mut dev = Client::connect(&hub.ws_url("disk", "dev", "role=device&acks=true"))
        .await
        .expect("device");
    dev.recv_type("welcome").await;
    dev.reading("t", 1.0, 1).await;
    assert_eq!(dev.recv_type("accepted").await["seqs"], json!([[1, 1]]));
    assert_eq!(http_get(hub.addr(), "/healthz", "").await.0, 200);

    // Act: the disk is "full" (no file may grow past 4 KiB); the device sends on.
    file_size_limit(&hub, Some(4096));
    dev.send_json(json!({"type":"readings","items":[
        {"metric":"t","value":2,"seq":2},{"metric":"t","value":3,"seq":3},
        {"metric":"t","value":4,"seq":4}]}))
        .await;

    // Assert: the dashboard gets the readings at once; the device gets no `accepted`
    // but `store_unavailable` naming them; /healthz and /metrics say why.
    let mut got: Vec<u64> = Vec::new();
    while got.last() != Some(&4) {
        let r: Value = dash.recv_type("reading").await;
        got.push(r["seq"].as_u64().expect("seq"));
    }
    assert_eq!(got, [1, 2, 3, 4], "the dashboard got every reading, once");
    let e = dev.recv_json().await;
    assert_eq!(
        e["type"], "error",
        "no accepted while the disk is full: {e}"
    );
    assert_eq!(e["code"], "store_unavailable", "{e}");
    assert_eq!(e["seqs"], json!([[2, 4]]), "{e}");
    let (status, body) = http_get(hub.addr(), "/healthz", "").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("store_unavailable"), "{body}");
    let metrics = http_get(hub.addr(), "/metrics", "").await.1;
    assert!(metrics.contains("telehub_store_failing 1"), "{metrics}");

    // A room created meanwhile: its epoch record waits behind the failing batch.
    let mut other = Client::connect(&hub.ws_url("disk-new", "d2", "role=device"))
        .await
        .expect("second room");
    let epoch = other.recv_type("welcome").await["epoch"].clone();

    // Space returns: the device resends what it was not told is kept.
    file_size_limit(&hub, None);
    let deadline = Instant::now() + WAIT;
    while http_get(hub.addr(), "/healthz", "").await.0 != 200 {
        assert!(Instant::now() < deadline, "the store did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    dev.send_json(json!({"type":"readings","items":[
        {"metric":"t","value":2,"seq":2},{"metric":"t","value":3,"seq":3},
        {"metric":"t","value":4,"seq":4}]}))
        .await;
    let a = dev.recv_type("accepted").await;
    assert_eq!(a["seqs"], json!([[2, 4]]), "{a}");
    other.close().await;
    assert_eq!(hub.stop().await.code(), Some(0), "{}", hub.log());

    // Everything is in the file exactly once, and so is the new room's epoch.
    let stored = stored_seqs(data.path(), "disk");
    let want: BTreeMap<(String, u64), u64> = (1..=4).map(|s| (("dev".into(), s), 1)).collect();
    assert_eq!(stored, want);
    let conn = rusqlite::Connection::open(data.path().join("telehub.db")).expect("db");
    let kept: String = conn
        .query_row("SELECT epoch FROM rooms WHERE room = 'disk-new'", [], |r| {
            r.get(0)
        })
        .expect("the new room's epoch was written");
    assert_eq!(json!(kept), epoch);
}

#[tokio::test]
async fn memory_acks_answer_at_once_and_list_exactly_the_seqs_kept() {
    // `history.ack = "memory"`: answered as soon as the hub holds them, seqs listed.
    let data = tempfile::tempdir().expect("data dir");
    let mut hub = hub_process()
        .data_dir(data.path())
        .env("TELEHUB_HISTORY_ACK", "memory")
        .start();
    let mut dev = Client::connect(&hub.ws_url("m", "dev", "role=device&acks=true"))
        .await
        .expect("device");
    dev.recv_type("welcome").await;
    dev.send_json(json!({"type":"readings","items":[
        {"metric":"t","value":1,"seq":7},{"metric":"t","value":2,"seq":9}]}))
        .await;
    let a = dev.recv_type("accepted").await;
    assert_eq!(
        a,
        json!({"type":"accepted","seq":9,"count":2,"seqs":[[7,7],[9,9]]})
    );
    assert_eq!(hub.stop().await.code(), Some(0), "{}", hub.log());
    assert_eq!(stored_seqs(data.path(), "m").len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_stream_every_reading_an_mqtt_publisher_sent_is_stored_exactly_once() {
    // Arrange: Mosquitto, a hub process bridging it with durable history, and a
    // publisher streaming QoS 1 readings that carry `seq`.
    let broker = telehub_testkit::mosquitto::Mosquitto::start();
    let data = tempfile::tempdir().expect("data dir");
    let mut hub = hub_process()
        .data_dir(data.path())
        .env("TELEHUB_HISTORY_FLUSH_INTERVAL_MS", "100")
        .config(format!(
            "[[mqtt.bridges]]\nname = \"b\"\nurl = \"mqtt://127.0.0.1:{}\"\n\
             client_id = \"durable-kill\"\nreconnect_min_ms = 50\nreconnect_max_ms = 200\n",
            broker.port
        ))
        .start();
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, body) = http_get(hub.addr(), "/api/bridges", "").await;
        let v: Value = serde_json::from_str(&body).unwrap_or_default();
        if v["bridges"][0]["subscribed"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "bridge not subscribed: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    const N: u64 = 1500;
    let sensor = telehub_testkit::mqtt::TestClient::connect(broker.port, "durable-sensor");
    let stream = sensor.publish_stream("telehub/mq/s1/t", 1..N + 1, Duration::from_millis(1));

    // Act: kill -9 the hub while the stream runs, start it again on the same file.
    let deadline = Instant::now() + WAIT;
    while stored_seqs(data.path(), "mq").len() < 200 {
        assert!(Instant::now() < deadline, "nothing stored: {}", hub.log());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    hub.kill();
    tokio::time::sleep(Duration::from_millis(200)).await;
    hub.restart();
    let _sensor = stream.await.expect("publisher");

    // Assert: what the broker was told is kept, and what it redelivered, is all there
    // exactly once.
    let deadline = Instant::now() + WAIT;
    while (stored_seqs(data.path(), "mq").len() as u64) < N {
        assert!(
            Instant::now() < deadline,
            "stored {} of {N}; {}",
            stored_seqs(data.path(), "mq").len(),
            hub.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(hub.stop().await.code(), Some(0), "{}", hub.log());
    let stored = stored_seqs(data.path(), "mq");
    let want: BTreeMap<(String, u64), u64> = (1..=N).map(|s| (("s1".into(), s), 1)).collect();
    assert_eq!(stored, want);
}

/// Runs `telehub <args>` on `data` with `stdin`; returns (success, stdout, stderr).
pub(crate) fn telehub_cli(args: &[&str], data: &Path, stdin: &[u8]) -> (bool, Vec<u8>, String) {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_telehub"))
        .args(args)
        .env_remove("TELEHUB_CONFIG")
        .env("TELEHUB_HISTORY_DATA_DIR", data)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("telehub runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    let out = child.wait_with_output().expect("telehub exits");
    (
        out.status.success(),
        out.stdout,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_moves_a_rooms_history_to_another_hub() {
    // Arrange: a hub with durable history records a few readings, then stops.
    let data = tempfile::tempdir().expect("data dir");
    let mut hub = hub_process().data_dir(data.path()).start();
    let mut dev = Client::connect(&hub.ws_url("arch", "dev", "role=device&acks=true"))
        .await
        .expect("device");
    dev.recv_type("welcome").await;
    let now = chrono::Utc::now().timestamp_millis();
    dev.send_json(json!({"type":"readings","items":[
        {"metric":"t","value":1.5,"unit":"°C","ts":now - 2000,"seq":1},
        {"metric":"t","value":2.5,"unit":"°C","ts":now - 1000,"seq":2},
        {"metric":"h","value":40,"ts":now - 1000}]}))
        .await;
    dev.recv_type("accepted").await;
    assert_eq!(hub.stop().await.code(), Some(0), "{}", hub.log());

    for format in ["csv", "jsonl"] {
        // Act: export the room, import it into an empty data directory, start a hub there.
        let (ok, archive, err) = telehub_cli(
            &[
                "export", "--room", "arch", "--from", "-1h", "--format", format,
            ],
            data.path(),
            b"",
        );
        assert!(ok, "{err}");
        assert!(err.contains("exported 3"), "{err}");
        let moved = tempfile::tempdir().expect("second data dir");
        let (ok, _, err) = telehub_cli(&["import", "--format", format], moved.path(), &archive);
        assert!(ok && err.contains("imported 3"), "{err}");
        let (ok, _, err) = telehub_cli(&["import", "--format", format], moved.path(), &archive);
        assert!(
            ok && err.contains("imported 0") && err.contains("skipped 3"),
            "{err}"
        );
        let mut second = hub_process().data_dir(moved.path()).start();

        // Assert: the second hub answers the same history.
        let (status, body) = http_get(second.addr(), "/api/rooms/arch/history?from=-1h", "").await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        let mut got: Vec<(String, i64, f64)> = v["points"]
            .as_array()
            .expect("points")
            .iter()
            .map(|p| {
                (
                    p["metric"].as_str().unwrap_or_default().to_string(),
                    p["ts"].as_i64().unwrap_or_default(),
                    p["value"].as_f64().unwrap_or_default(),
                )
            })
            .collect();
        got.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
        assert_eq!(
            got,
            [
                ("t".to_string(), now - 2000, 1.5),
                ("h".to_string(), now - 1000, 40.0),
                ("t".to_string(), now - 1000, 2.5),
            ],
            "{format}"
        );
        assert_eq!(second.stop().await.code(), Some(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_history_reaches_past_memory_into_the_raw_rows_on_disk() {
    // Arrange: memory holds one minute, the file a day; a device sends readings spread
    // over the last 50 minutes (a device flushing its buffer after an outage).
    let data = tempfile::tempdir().expect("data dir");
    let mut hub = hub_process()
        .data_dir(data.path())
        .env("TELEHUB_HISTORY_MEMORY_MS", "60000")
        .env("TELEHUB_HISTORY_RETENTION_MS", "86400000")
        .start();
    let mut dev = Client::connect(&hub.ws_url("long", "dev", "role=device&acks=true"))
        .await
        .expect("device");
    dev.recv_type("welcome").await;
    let now = chrono::Utc::now().timestamp_millis();
    let minute = 60_000;
    // Two readings per 10-minute bucket, 50 to 0 minutes ago, values 0..12.
    let items: Vec<Value> = (0..12)
        .map(
            |i| json!({"metric":"t","value":i,"ts":now - 50 * minute + i * 5 * minute,"seq":i + 1}),
        )
        .collect();
    dev.send_json(json!({"type":"readings","items":items}))
        .await;
    assert_eq!(dev.recv_type("accepted").await["count"], 12);

    for round in ["running", "after a restart"] {
        // Act: ask for the last hour, raw and in 10-minute buckets.
        let (status, body) =
            http_get(hub.addr(), "/api/rooms/long/history?from=-1h&metric=t", "").await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("json");

        // Assert: every reading, from disk and memory, once, in order.
        assert_eq!(v["resolution"], "raw", "{v}");
        let values: Vec<f64> = v["points"]
            .as_array()
            .expect("points")
            .iter()
            .map(|p| p["value"].as_f64().unwrap_or(-1.0))
            .collect();
        assert_eq!(
            values,
            (0..12).map(f64::from).collect::<Vec<_>>(),
            "{round}"
        );
        let (status, body) = http_get(
            hub.addr(),
            "/api/rooms/long/history?from=-1h&metric=t&step=10m",
            "",
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let v: Value = serde_json::from_str(&body).expect("json");
        let buckets = v["points"].as_array().expect("buckets");
        let total: u64 = buckets
            .iter()
            .map(|b| b["count"].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(total, 12, "{round}: {v}");
        let min = buckets
            .iter()
            .map(|b| b["min"].as_f64().unwrap_or(99.0))
            .fold(99.0, f64::min);
        let max = buckets
            .iter()
            .map(|b| b["max"].as_f64().unwrap_or(-1.0))
            .fold(-1.0, f64::max);
        assert_eq!((min, max), (0.0, 11.0), "{round}");
        for b in buckets {
            let n = b["count"].as_u64().unwrap_or(0) as f64;
            assert!(b["mean"].as_f64().unwrap_or(-1.0) * n >= b["min"].as_f64().unwrap_or(0.0) * n);
        }
        if round == "running" {
            assert_eq!(hub.stop().await.code(), Some(0), "{}", hub.log());
            hub.restart();
        }
    }
    assert_eq!(hub.stop().await.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_created_while_the_store_queue_is_full_keeps_its_epoch_on_disk() {
    // Arrange: the disk is "full", and a device fills the store's queue (65,536
    // readings behind the writer's kept batch) until readings are refused.
    let data = tempfile::tempdir().expect("data dir");
    let mut hub = hub_process()
        .data_dir(data.path())
        .env("TELEHUB_LIMITS_RATE_PER_SEC", "100000")
        .env("TELEHUB_LIMITS_RATE_BURST", "100000")
        .start();
    let mut dev = Client::connect(&hub.ws_url("flood", "dev", "role=device"))
        .await
        .expect("device");
    dev.recv_type("welcome").await;
    file_size_limit(&hub, Some(4096));
    let mut seq = 0u64;
    let dropped = |metrics: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with("telehub_history_store_dropped_total "))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let deadline = Instant::now() + WAIT * 3;
    while dropped(&http_get(hub.addr(), "/metrics", "").await.1) == 0.0 {
        assert!(Instant::now() < deadline, "the store queue never filled");
        for _ in 0..40 {
            let items: Vec<Value> = (0..256)
                .map(|_| {
                    seq += 1;
                    json!({"metric":"t","value":seq,"seq":seq})
                })
                .collect();
            dev.send_json(json!({"type":"readings","items":items}))
                .await;
        }
    }

    // Act: a new room is created while the queue refuses readings.
    let mut other = Client::connect(&hub.ws_url("flood-new", "d2", "role=device"))
        .await
        .expect("second room");
    let epoch = other.recv_type("welcome").await["epoch"].clone();
    // Space returns; the hub stops cleanly once the store has caught up.
    file_size_limit(&hub, None);
    let deadline = Instant::now() + WAIT * 3;
    while http_get(hub.addr(), "/healthz", "").await.0 != 200 {
        assert!(Instant::now() < deadline, "the store did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    other.close().await;
    dev.close().await;
    assert_eq!(hub.stop().await.code(), Some(0), "{}", hub.log());

    // Assert: the epoch record passed the full queue and is in the file.
    let conn = rusqlite::Connection::open(data.path().join("telehub.db")).expect("db");
    let kept: String = conn
        .query_row(
            "SELECT epoch FROM rooms WHERE room = 'flood-new'",
            [],
            |r| r.get(0),
        )
        .expect("the new room's epoch was written");
    assert_eq!(json!(kept), epoch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_and_influx_writes_answer_only_once_their_readings_are_on_disk() {
    use telehub_testkit::http::{post, Framing};
    // Arrange: durable acks with a slow flush, so that an answer sent before the commit
    // would come well before the readings reach the file.
    let data = tempfile::tempdir().expect("data dir");
    let mut hub = hub_process()
        .data_dir(data.path())
        .env("TELEHUB_HISTORY_FLUSH_INTERVAL_MS", "1000")
        .start();
    let post_http = |addr, seq: u64| async move {
        let body = format!(r#"[{{"metric":"t","value":{seq},"seq":{seq}}}]"#);
        post(
            addr,
            "/api/rooms/dur-h/devices/poster/readings",
            "Content-Type: application/json\r\n",
            body.as_bytes(),
            Framing::Length,
        )
        .await
    };
    let post_line = |addr, v: u64| async move {
        let body = format!("cpu,host=telegraf usage={v} {}\n", 1_000 + v);
        post(
            addr,
            "/api/v2/write?bucket=dur-h&precision=s",
            "",
            body.as_bytes(),
            Framing::Length,
        )
        .await
    };

    // Act: each write is answered; the hub is killed at once after the answers.
    let r = post_http(hub.addr(), 1).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post_line(hub.addr(), 1).await;
    assert_eq!(r.status, 204, "{}", r.text());
    hub.kill();

    // Assert: what was answered is in the file.
    let stored = stored_seqs(data.path(), "dur-h");
    assert_eq!(stored.get(&("poster".into(), 1)), Some(&1), "{stored:?}");
    let conn = rusqlite::Connection::open(data.path().join("telehub.db")).expect("db");
    let lines: i64 = conn
        .query_row(
            "SELECT count(*) FROM readings WHERE room = 'dur-h' AND device = 'telegraf'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(lines, 1, "the line answered 204 is on disk");
    drop(conn);

    // Act: the disk is "full"; both writes are refused 503 store_unavailable.
    hub.restart();
    let r = post_http(hub.addr(), 10).await;
    assert_eq!(
        r.status,
        200,
        "the restarted hub has its store open: {}",
        r.text()
    );
    file_size_limit(&hub, Some(4096));
    let r = post_http(hub.addr(), 2).await;
    assert_eq!(r.status, 503, "{}", r.text());
    let e: Value = serde_json::from_slice(&r.body).expect("JSON");
    assert_eq!(e["error"], "store_unavailable", "{e}");
    let r = post_line(hub.addr(), 2).await;
    assert_eq!(r.status, 503, "{}", r.text());
    let e: Value = serde_json::from_slice(&r.body).expect("JSON");
    assert_eq!(e["error"], "store_unavailable", "{e}");
    let metrics = http_get(hub.addr(), "/metrics", "").await.1;
    assert!(
        metrics.contains(r#"telehub_influx_writes_refused_total{reason="store_unavailable"} 1"#),
        "{metrics}"
    );

    // Space returns: the resends are answered, and each reading is stored once.
    file_size_limit(&hub, None);
    let deadline = Instant::now() + WAIT;
    while http_get(hub.addr(), "/healthz", "").await.0 != 200 {
        assert!(Instant::now() < deadline, "the store did not recover");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = post_http(hub.addr(), 2).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post_line(hub.addr(), 2).await;
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(hub.stop().await.code(), Some(0), "{}", hub.log());
    let stored = stored_seqs(data.path(), "dur-h");
    assert_eq!(stored.get(&("poster".into(), 2)), Some(&1), "{stored:?}");
}
