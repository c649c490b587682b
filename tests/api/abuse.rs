//! The abuse paths of issue 10, each closed with a test that failed before the fix:
//! rate limits that could be bypassed, the busy-waiting handshake sniff, reserved close
//! codes on the wire, hub-wide limits exhausted by one client, joins serialised behind
//! one room's replay, and a stray environment variable stopping start-up.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{http_get, hub_process, spawn_app, spawn_app_with, Client, WAIT};

/// A `TELEHUB_*` variable that is not `TELEHUB_{SECTION}_{KEY}` of a known section
/// (the testkit's own `TELEHUB_BIN`, for one) is ignored with a warning; an unknown key
/// of a known section still stops start-up.
#[tokio::test]
async fn a_stray_telehub_variable_is_ignored_with_a_warning() {
    let mut hub = hub_process()
        .env("TELEHUB_BIN", "/nowhere/telehub")
        .env("TELEHUB_NOSECTION_KEY", "1")
        .start();
    // The warning may come on stderr, read by a thread of its own: wait for it.
    let deadline = std::time::Instant::now() + WAIT;
    while !hub.log().contains("TELEHUB_NOSECTION_KEY") && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = hub.log();
    assert!(log.contains("TELEHUB_BIN"), "no warning naming it:\n{log}");
    assert!(log.contains("TELEHUB_NOSECTION_KEY"), "{log}");
    hub.kill();

    let out = Command::new(env!("CARGO_BIN_EXE_telehub"))
        .env_remove("RUST_LOG")
        .env_remove("TELEHUB_CONFIG")
        .env("TELEHUB_HISTORY_PERSIST", "false")
        .env("TELEHUB_LIMITS_NO_SUCH_KEY", "1")
        .current_dir(std::env::temp_dir())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .expect("run telehub");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TELEHUB_LIMITS_NO_SUCH_KEY"), "{err}");
}

/// A WebSocket client on a plain socket, for what tungstenite will not send (reserved
/// close codes) and to see every frame the hub sends, control frames included.
struct Raw {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    async fn connect(addr: SocketAddr, path: &str) -> Raw {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.expect("send the upgrade");
        let mut raw = Raw { s, buf: Vec::new() };
        let end = loop {
            if let Some(i) = raw.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            raw.fill().await;
        };
        let head = String::from_utf8_lossy(&raw.buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        raw.buf.drain(..end);
        raw
    }

    async fn fill(&mut self) -> usize {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.s.read(&mut chunk))
            .await
            .expect("bytes in time")
            .expect("read");
        self.buf.extend_from_slice(&chunk[..n]);
        n
    }

    /// Sends one masked frame.
    async fn send(&mut self, opcode: u8, payload: &[u8]) {
        assert!(payload.len() < 126);
        let mask = [1u8, 2, 3, 4];
        let mut f = vec![0x80 | opcode, 0x80 | payload.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.s.write_all(&f).await.expect("send a frame");
    }

    /// The next frame from the hub as (opcode, payload); `None` once the hub closed the
    /// TCP stream.
    async fn frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                let (len, at) = match self.buf[1] & 0x7F {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&self.buf[2..10]);
                        (u64::from_be_bytes(b) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if at > 0 && self.buf.len() >= at + len {
                    let opcode = self.buf[0] & 0x0F;
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Some((opcode, payload));
                }
            }
            if self.fill().await == 0 {
                return None;
            }
        }
    }

    /// Frames until the hub's close frame; returns its code (`None` for an empty body).
    async fn close_code(&mut self) -> Option<u16> {
        loop {
            let (opcode, payload) = self.frame().await.expect("a close frame");
            if opcode == 0x8 {
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
    }
}

/// RFC 6455 section 7.4.1: 1005, 1006 and 1015 never go on the wire, and a close code
/// outside the ranges a peer may send is a protocol error.
#[tokio::test]
async fn close_codes_are_checked_and_reserved_ones_never_echoed() {
    let app = spawn_app().await;
    for (sent, answer) in [
        (Some(1005u16), Some(1002u16)),
        (Some(999), Some(1002)),
        (Some(1015), Some(1002)),
        (Some(5000), Some(1002)),
        (Some(4123), Some(4123)),
        (Some(1000), Some(1000)),
        (None, Some(1000)),
    ] {
        let mut c = Raw::connect(app.addr, "/ws/close/dev?role=device").await;
        let payload = sent.map(|c| c.to_be_bytes().to_vec()).unwrap_or_default();
        c.send(0x8, &payload).await;
        let got = c.close_code().await;
        assert_eq!(got, answer, "answer to a close with {sent:?}");
        assert!(
            !matches!(got, Some(1005 | 1006 | 1015)),
            "reserved code {got:?} on the wire"
        );
    }
    app.stop().await;
}

/// Every frame the hub sends within `ms` milliseconds, as (error frames, pongs).
async fn answers_within(c: &mut Client, ms: u64) -> (Vec<String>, usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_millis(ms);
    let (mut errors, mut pongs) = (Vec::new(), 0);
    loop {
        match tokio::time::timeout_at(deadline, c.ws.next()).await {
            Err(_) | Ok(None) | Ok(Some(Err(_))) => return (errors, pongs),
            Ok(Some(Ok(Message::Pong(_)))) => pongs += 1,
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(t.as_str()).expect("JSON");
                if v["type"] == "error" {
                    errors.push(v["code"].as_str().unwrap_or_default().to_string());
                }
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Binary frames, wrong-role messages, pings and invalid batch items all cost from the
/// one bucket, and a client over its limit gets about one notice a second back.
#[tokio::test]
async fn every_message_costs_from_the_bucket_and_a_flood_gets_bounded_answers() {
    let app = spawn_app_with(|s| {
        s.limits.rate_per_sec = 1.0;
        s.limits.rate_burst = 5.0;
    })
    .await;
    // Binary frames.
    let (mut dev, _) = app.connect("flood", "bin", "device").await;
    for _ in 0..50 {
        dev.ws
            .send(Message::Binary(vec![1u8, 2, 3].into()))
            .await
            .expect("send");
    }
    let (errors, _) = answers_within(&mut dev, 600).await;
    assert!(errors.len() <= 7, "50 binary frames got {errors:?}");
    assert_eq!(errors.last().map(String::as_str), Some("rate_limited"));

    // Readings from a dashboard (wrong role).
    let (mut dash, _) = app.connect("flood", "dash", "dashboard").await;
    for _ in 0..50 {
        dash.send_json(json!({"type":"reading","metric":"t","value":1}))
            .await;
    }
    let (errors, _) = answers_within(&mut dash, 600).await;
    assert!(errors.len() <= 7, "50 wrong-role readings got {errors:?}");

    // Pings.
    let (mut pinger, _) = app.connect("flood", "pinger", "device").await;
    for _ in 0..50 {
        pinger
            .ws
            .send(Message::Ping(vec![7u8].into()))
            .await
            .expect("ping");
    }
    let (errors, pongs) = answers_within(&mut pinger, 600).await;
    assert!(pongs <= 6, "50 pings got {pongs} pongs");
    assert!(errors.len() <= 2, "{errors:?}");
    app.stop().await;
}

/// A batch of 256 invalid items costs 256 tokens and gets a few item errors and one
/// summary, not 256 error frames.
#[tokio::test]
async fn a_batch_of_invalid_items_gets_a_few_errors_and_one_summary() {
    let app = spawn_app_with(|s| {
        s.limits.rate_per_sec = 1.0;
        s.limits.rate_burst = 400.0;
    })
    .await;
    let (mut dev, _) = app.connect("items", "dev", "device").await;
    let items: Vec<_> = (0..256)
        .map(|_| json!({"metric":"t","value":"x"}))
        .collect();
    dev.send_json(json!({"type":"readings","items":items}))
        .await;
    let (errors, _) = answers_within(&mut dev, 600).await;
    assert!(
        (2..=5).contains(&errors.len()),
        "256 invalid items got {} error frames",
        errors.len()
    );
    // The batch spent 256 of the 400 tokens: a second one is cut short.
    let items: Vec<_> = (0..256).map(|i| json!({"metric":"t","value":i})).collect();
    dev.send_json(json!({"type":"readings","items":items}))
        .await;
    let (code, message) = dev.next_error().await;
    assert_eq!(code, "rate_limited", "{message}");
    app.stop().await;
}

/// utime + stime of process `pid`, in clock ticks (`/proc/PID/stat` fields 14 and 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// 2,000 connections that send part of `GET /ws/` and stop must cost the hub almost
/// nothing while they wait: the sniff waits for readability, it does not poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_cost_the_hub_almost_no_cpu() {
    let mut hub = hub_process().start();
    let pid = hub.pid().expect("running");
    let mut stalled = Vec::new();
    for _ in 0..2_000 {
        let mut s = TcpStream::connect(hub.addr()).await.expect("connect");
        s.write_all(b"GET /w").await.expect("write");
        stalled.push(s);
    }
    // Let the hub accept them all and settle, then measure over a few seconds.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let before = cpu_ticks(pid);
    let window = Duration::from_secs(3);
    tokio::time::sleep(window).await;
    let used = cpu_ticks(pid) - before;
    // 5% of one core over the window, in ticks (USER_HZ is 100 on Linux).
    let budget = window.as_secs() * 100 * 5 / 100;
    assert!(
        used <= budget,
        "2000 stalled handshakes cost the hub {used} ticks in {window:?} (budget {budget})"
    );
    drop(stalled);
    assert_eq!(hub.stop().await.code(), Some(0));
}

/// The status and body of what the hub answers to `bytes`, once it closes.
async fn answer_to(addr: SocketAddr, bytes: &[u8]) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut buf))
        .await
        .expect("an answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{text:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{head}"));
    (
        status,
        serde_json::from_str(body).unwrap_or_else(|_| panic!("{text}")),
    )
}

/// A request that stays incomplete gets 408, a malformed one 400 and an oversized one
/// 431, each with a JSON body and counted under its own reason.
#[tokio::test]
async fn incomplete_malformed_and_oversized_handshakes_get_408_400_431_and_are_counted() {
    let app = spawn_app().await;
    let addr = app.addr;
    let stalled_prefix = tokio::spawn(answer_to(addr, b"GET /w"));
    let stalled_headers = tokio::spawn(answer_to(addr, b"GET /ws/r/c HTTP/1.1\r\nHost: x\r\n"));
    let (status, body) = answer_to(addr, b"GET /ws/r/c HTTP/1.1\r\nHo st\x01: x\r\n\r\n").await;
    assert_eq!((status, body["error"].as_str()), (400, Some("bad_request")));
    let huge = format!(
        "GET /ws/r/c HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
        "p".repeat(9_000)
    );
    let (status, body) = answer_to(addr, huge.as_bytes()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (431, Some("headers_too_large"))
    );
    for stalled in [stalled_prefix, stalled_headers] {
        let (status, body) = stalled.await.expect("task");
        assert_eq!(
            (status, body["error"].as_str()),
            (408, Some("request_timeout"))
        );
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let metrics = app.get("/metrics").await.1;
    for line in [
        "telehub_connections_rejected_total{reason=\"request_timeout\"} 2",
        "telehub_connections_rejected_total{reason=\"bad_request\"} 1",
        "telehub_connections_rejected_total{reason=\"headers_too_large\"} 1",
        "telehub_connections_rejected_total{reason=\"invalid_query\"} 0",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in\n{metrics}"
        );
    }
    app.stop().await;
}

/// One device inventing metric names fills its own room's and its own series budget,
/// not the hub's: other rooms keep creating series. Each cap is refused with
/// `series_limit`, the message naming the limit.
#[tokio::test]
async fn one_device_cannot_exhaust_the_series_of_the_whole_hub() {
    let app = spawn_app_with(|s| {
        s.history.max_series = 10;
        s.limits.max_series_per_room = 6;
        s.limits.max_series_per_device = 4;
    })
    .await;
    let (mut spam, _) = app.connect("spam", "inventor", "device").await;
    for i in 0..5u64 {
        spam.reading(&format!("m{i}"), 1.0, i + 1).await;
    }
    let (code, message) = spam.next_error().await;
    assert_eq!(code, "series_limit");
    assert!(
        message.contains("limits.max_series_per_device"),
        "{message}"
    );
    // A second device in the same room meets the room's cap.
    let (mut other, _) = app.connect("spam", "second", "device").await;
    for i in 0..3u64 {
        other.reading(&format!("m{i}"), 1.0, i + 1).await;
    }
    let (code, message) = other.next_error().await;
    assert_eq!(code, "series_limit");
    assert!(message.contains("limits.max_series_per_room"), "{message}");
    // Another room still creates series: the hub-wide budget is not spent.
    let (mut fine, _) = app.connect("quiet", "t1", "device").await;
    let (mut dash, _) = app.connect("quiet", "dash", "dashboard").await;
    fine.reading("temperature", 21.0, 1).await;
    fine.reading("humidity", 40.0, 2).await;
    assert_eq!(dash.recv_type("reading").await["metric"], "temperature");
    assert_eq!(dash.recv_type("reading").await["metric"], "humidity");
    app.stop().await;
}

/// A `ts` more than `limits.max_future_ms` ahead of the hub's clock would make a
/// series that never expires: refused with `invalid_field`.
#[tokio::test]
async fn a_timestamp_far_in_the_future_is_refused() {
    let app = spawn_app_with(|s| s.limits.max_future_ms = 60_000).await;
    let (mut dev, _) = app.connect("future", "dev", "device").await;
    let (mut dash, _) = app.connect("future", "dash", "dashboard").await;
    let now = chrono::Utc::now().timestamp_millis();
    dev.send_json(json!({"type":"reading","metric":"t","value":1,"ts":"9999-12-31T00:00:00Z"}))
        .await;
    let (code, message) = dev.next_error().await;
    assert_eq!(code, "invalid_field");
    assert!(message.contains("limits.max_future_ms"), "{message}");
    dev.send_json(json!({"type":"readings","items":[
        {"metric":"t","value":2,"ts":now + 3_600_000},
        {"metric":"t","value":3,"ts":now + 30_000},
    ]}))
    .await;
    let (code, _) = dev.next_error().await;
    assert_eq!(code, "invalid_field");
    // Only the reading within the allowance arrives.
    assert_eq!(dash.recv_type("reading").await["value"], 3.0);
    dash.expect_silence(200).await;
    app.stop().await;
}

/// Sends `n` readings, 256 to a batch.
async fn fill_log(dev: &mut Client, n: u64) {
    let mut seq = 0u64;
    while seq < n {
        let items: Vec<_> = (0..256.min(n - seq))
            .map(|_| {
                seq += 1;
                json!({"metric":"m","value":1.0,"seq":seq})
            })
            .collect();
        dev.send_json(json!({"type":"readings","items":items}))
            .await;
    }
}

/// A room whose recovery log holds `n` readings, on a hub with an outbound queue of 64.
async fn hub_with_a_deep_log(n: u64) -> crate::helpers::TestApp {
    let app = spawn_app_with(|s| {
        s.limits.outbound_queue = 64;
        s.limits.rate_per_sec = 1e9;
        s.limits.rate_burst = 1e9;
        s.history.room_log_len = n as usize;
    })
    .await;
    let (mut dev, _) = app.connect("deep", "dev", "device").await;
    fill_log(&mut dev, n).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !app
        .get("/api/rooms")
        .await
        .1
        .contains(&format!("\"offset\":{n}"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the log never filled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app
}

/// Resident memory of process `pid`, in bytes (`VmRSS` of `/proc/PID/status`).
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// A `since=0` replay streams as the client reads: dashboards that never read hold no
/// more than a page of it each in the hub (the rest waits in the log it already has),
/// not a copy of the whole room log apiece. Measured as the hub process's memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_to_dashboards_that_never_read_holds_no_copy_of_the_log() {
    const N: u64 = 100_000;
    const STUCK: usize = 5;
    let hub = hub_process()
        .env("TELEHUB_LIMITS_RATE_PER_SEC", "1000000000")
        .env("TELEHUB_LIMITS_RATE_BURST", "1000000000")
        .env("TELEHUB_LIMITS_OUTBOUND_QUEUE", "64")
        .env("TELEHUB_HISTORY_ROOM_LOG_LEN", N.to_string())
        .start();
    let pid = hub.pid().expect("running");
    let mut dev = Client::connect(&hub.ws_url("deep", "dev", "role=device"))
        .await
        .expect("device");
    fill_log(&mut dev, N).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !http_get(hub.addr(), "/api/rooms", "")
        .await
        .1
        .contains(&format!("\"offset\":{N}"))
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the log never filled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = rss_bytes(pid);
    let mut stuck = Vec::new();
    for i in 0..STUCK {
        let url = hub.ws_url("deep", &format!("stuck{i}"), "role=dashboard&since=0");
        stuck.push(Client::connect_small_buffer(&url, hub.addr()).await);
    }
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let grown = rss_bytes(pid).saturating_sub(before);
    // A copy of the log as frames is over 12 MB per dashboard; a page is a few KiB.
    assert!(
        grown < 20 << 20,
        "{STUCK} stuck since=0 dashboards grew the hub by {} MiB",
        grown >> 20
    );
    drop(stuck);
}

/// While one room replays a big log to several dashboards that come back with
/// `since=0` at once, a join in another room does not wait for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_in_other_rooms_proceed_while_one_room_replays_a_big_log() {
    let app = hub_with_a_deep_log(100_000).await;
    let joins: Vec<_> = (0..8)
        .map(|i| {
            let url = app.ws_url("deep", &format!("back{i}"), "role=dashboard&since=0");
            tokio::spawn(async move { Client::connect(&url).await.expect("connect") })
        })
        .collect();
    let started = tokio::time::Instant::now();
    let (_other, _) = app.connect("elsewhere", "dash", "dashboard").await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "a join in another room took {took:?} while one room replayed"
    );
    for j in joins {
        drop(j.await.expect("join"));
    }
    app.stop().await;
}

/// A dashboard still replaying when the log is trimmed past its cursor can no longer
/// be given what it missed: it is closed as a slow consumer (1013) and recovers later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_overtaken_by_the_log_trim_is_closed_as_a_slow_consumer() {
    let app = hub_with_a_deep_log(50_000).await;
    let url = app.ws_url("deep", "stuck", "role=dashboard&since=0");
    let _stuck = Client::connect_small_buffer(&url, app.addr).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (mut dev, _) = app.connect("deep", "dev2", "device").await;
    fill_log(&mut dev, 50_000).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = app.get("/metrics").await.1;
        if metrics.contains("telehub_slow_consumer_disconnects_total 1") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the overtaken replay was never closed:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    app.stop().await;
}

/// A plain HTTP request that stalls (not a WebSocket path, so hyper reads it) is not kept
/// for ever: hyper's header timeout runs on a timer, so the connection is closed (or
/// answered) within the handshake timeout instead of holding its connection slot.
#[tokio::test]
async fn a_stalled_plain_http_request_does_not_hold_its_connection_for_ever() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let app = spawn_app().await;
    let mut s = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    // Closed (EOF, perhaps after a 408) well within twice the handshake timeout; before
    // the fix the read never ended.
    let read =
        tokio::time::timeout(std::time::Duration::from_secs(25), s.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the hub kept a stalled HTTP request open for 25 s"
    );
    app.stop().await;
}
