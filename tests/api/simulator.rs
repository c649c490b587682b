//! The device simulator (`telehub-sim`, the devices/ crate) and the hub together, both
//! real, on loopback: dashboards receive exactly what the simulator reports sending,
//! commands reach simulated devices and their acks come back, a hub killed mid-run and
//! restarted loses none of the readings generated while it was down, and the bench's
//! load and idle modes measure a live hub; and against a hub in token mode, minted
//! tokens connect, are refreshed past their expiry, and a wrong secret is refused once
//! and clearly, not in a loop.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::{json, Value};
use telehub_sim::{BackoffConfig, RunOptions, Scenario, SeqStart, SimStats, Summary};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::helpers::{hub_process, spawn_app, spawn_app_with, Client, Polled, WAIT};
use crate::tokens::{token_mode, SECRET};

const SCENARIO: &str = r#"
name = "e2e"
seed = 5

[[rooms]]
name = "sim-a"

[[rooms.devices]]
kind = "climate"
count = 2
rate = 5.0

[[rooms.devices]]
kind = "power"
rate = 5.0

[[rooms]]
name = "sim-b"

[[rooms.devices]]
kind = "vibration"
count = 2
rate = 10.0

[[rooms.devices]]
kind = "door"
rate = 2.0
"#;

fn options(url: String, backoff: BackoffConfig) -> RunOptions {
    let mut o = RunOptions::websocket(url);
    o.seq_start = SeqStart::Fixed(1);
    o.backoff = backoff;
    o
}

/// A simulator run in the background, stopped by `stop`.
struct SimRun {
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<Summary, telehub_sim::RunError>>,
}

impl SimRun {
    fn start(scenario: Scenario, opts: RunOptions) -> SimRun {
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(telehub_sim::run(scenario, opts, async {
            let _ = rx.await;
        }));
        SimRun { stop, task }
    }

    async fn finish(self) -> Summary {
        let _ = self.stop.send(());
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("simulator stops in time")
            .expect("simulator task")
            .expect("simulator run")
    }
}

/// What a dashboard saw: readings by (device, seq) with how often each came, and every
/// other frame.
#[derive(Default)]
struct Seen {
    readings: HashMap<(String, u64), u32>,
    other: Vec<Value>,
}

impl Seen {
    fn take(&mut self, v: Value) {
        if v["type"] == "reading" {
            let device = v["device"].as_str().unwrap_or_default().to_string();
            let seq = v["seq"].as_u64().expect("simulated readings carry seq");
            assert!(v["value"].is_number() && v["ts"].is_number(), "{v}");
            *self.readings.entry((device, seq)).or_default() += 1;
        } else {
            self.other.push(v);
        }
    }

    fn seqs(&self, device: &str) -> BTreeSet<u64> {
        self.readings
            .keys()
            .filter(|(d, _)| d == device)
            .map(|(_, s)| *s)
            .collect()
    }

    fn duplicates(&self) -> Vec<&(String, u64)> {
        self.readings
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, _)| k)
            .collect()
    }
}

/// Read frames until `done` says enough, nothing arrives for `quiet`, or `max` has passed;
/// returns whether the connection is still open.
async fn read_into(
    c: &mut Client,
    seen: &mut Seen,
    quiet: Duration,
    max: Duration,
    done: impl Fn(&Seen) -> bool,
) -> bool {
    let deadline = Instant::now() + max;
    while !done(seen) && Instant::now() < deadline {
        match c.poll_json(quiet).await {
            Polled::Quiet => return true,
            Polled::Json(v) => seen.take(v),
            Polled::Closed => return false,
        }
    }
    true
}

fn total_readings(s: &Summary, room: &str) -> usize {
    s.devices
        .iter()
        .filter(|d| d.room == room)
        .map(|d| d.acked as usize)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_receive_exactly_what_the_simulator_reports_sending() {
    // Arrange
    let app = spawn_app().await;
    let (mut dash_a, _) = app.connect("sim-a", "dash-a", "dashboard").await;
    let (mut dash_b, _) = app.connect("sim-b", "dash-b", "dashboard").await;
    let scenario = Scenario::from_toml(SCENARIO, "e2e").expect("scenario");
    let url = format!("ws://{}", app.addr);
    let sim = SimRun::start(scenario, options(url, BackoffConfig::default()));
    let (mut seen_a, mut seen_b) = (Seen::default(), Seen::default());

    // Act: let it run, then stop it and read everything that was delivered.
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        read_into(
            &mut dash_a,
            &mut seen_a,
            Duration::from_millis(50),
            Duration::from_millis(50),
            |_| false,
        )
        .await;
        read_into(
            &mut dash_b,
            &mut seen_b,
            Duration::from_millis(50),
            Duration::from_millis(50),
            |_| false,
        )
        .await;
    }
    let summary = sim.finish().await;
    let want_a = total_readings(&summary, "sim-a");
    let want_b = total_readings(&summary, "sim-b");
    read_into(
        &mut dash_a,
        &mut seen_a,
        Duration::from_millis(500),
        WAIT,
        |s| s.readings.len() >= want_a,
    )
    .await;
    read_into(
        &mut dash_b,
        &mut seen_b,
        Duration::from_millis(500),
        WAIT,
        |s| s.readings.len() >= want_b,
    )
    .await;

    // Assert
    assert_eq!(summary.devices.len(), 6);
    assert_eq!(summary.lost(), 0, "{summary:?}");
    assert_eq!(summary.totals.generated, summary.totals.acked);
    assert!(
        summary.totals.acked > 50,
        "too few readings: {:?}",
        summary.totals
    );
    for d in &summary.devices {
        let seen = if d.room == "sim-a" { &seen_a } else { &seen_b };
        let got = seen.seqs(&d.id);
        let sent: BTreeSet<u64> = (d.first_seq..=d.last_seq).collect();
        assert_eq!(
            got, sent,
            "{}/{}: dashboard saw other seqs than were sent",
            d.room, d.id
        );
    }
    assert!(seen_a.duplicates().is_empty() && seen_b.duplicates().is_empty());
    // Room isolation: sim-b's dashboard saw none of sim-a's devices.
    assert!(seen_b
        .readings
        .keys()
        .all(|(dev, _)| dev.starts_with("vibration") || dev.starts_with("door")));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_reach_simulated_devices_and_acks_come_back() {
    // Arrange
    let app = spawn_app().await;
    let (mut dash, _) = app.connect("sim-a", "dash", "dashboard").await;
    let scenario = Scenario::from_toml(SCENARIO, "e2e").expect("scenario");
    let stats = SimStats::new();
    let mut opts = options(format!("ws://{}", app.addr), BackoffConfig::default());
    opts.stats = stats.clone();
    let sim = SimRun::start(scenario, opts);
    let mut seen = Seen::default();
    let joined = |s: &Seen, who: &str| {
        s.other
            .iter()
            .any(|v| v["type"] == "presence" && v["event"] == "join" && v["client"] == who)
    };
    read_into(&mut dash, &mut seen, Duration::from_secs(2), WAIT, |s| {
        ["climate-1", "climate-2", "power-1"]
            .iter()
            .all(|d| joined(s, d))
    })
    .await;

    // Act
    dash.send_json(json!({"type":"command","id":"c-1","to":"climate-1","name":"set_setpoint","args":{"value":25.5}})).await;
    dash.send_json(json!({"type":"command","id":"c-2","to":"power-1","name":"set_setpoint","args":{"value":25.5}})).await;
    dash.send_json(json!({"type":"command","id":"c-3","to":"climate-2","name":"fly","args":{}}))
        .await;
    dash.send_json(
        json!({"type":"command","id":"c-4","to":"power-1","name":"reboot","args":{"ms":500}}),
    )
    .await;
    read_into(&mut dash, &mut seen, Duration::from_secs(3), WAIT, |s| {
        let acks = s.other.iter().filter(|v| v["type"] == "ack").count();
        let power_joins = s
            .other
            .iter()
            .filter(|v| v["type"] == "presence" && v["event"] == "join" && v["client"] == "power-1")
            .count();
        acks == 4 && power_joins == 2
    })
    .await;
    let deadline = Instant::now() + WAIT;
    while stats.snapshot().reconnects < 1 {
        assert!(Instant::now() < deadline, "power-1 did not come back");
        read_into(
            &mut dash,
            &mut seen,
            Duration::from_millis(50),
            Duration::from_millis(50),
            |_| false,
        )
        .await;
    }
    let summary = sim.finish().await;

    // Assert
    let ack = |id: &str| {
        seen.other
            .iter()
            .find(|v| v["type"] == "ack" && v["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no ack for {id}: {:?}", seen.other))
    };
    assert_eq!(ack("c-1")["ok"], true);
    assert_eq!(ack("c-1")["result"], json!({"setpoint": 25.5}));
    assert_eq!(ack("c-2")["ok"], false, "power meters have no setpoint");
    assert_eq!(ack("c-3")["ok"], false);
    assert_eq!(ack("c-3")["result"]["error"], "unknown_command");
    assert_eq!(ack("c-4")["ok"], true);
    let events: Vec<_> = seen
        .other
        .iter()
        .filter(|v| v["type"] == "presence" && v["client"] == "power-1")
        .map(|v| v["event"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        events.ends_with(&["leave".to_string(), "join".to_string()]),
        "reboot drops and restores: {events:?}"
    );
    assert_eq!(summary.totals.reboots, 1);
    assert_eq!(summary.totals.commands, 4);
    assert!(summary.totals.reconnects >= 1, "{summary:?}");
    assert_eq!(summary.lost(), 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_the_hub_refuses_for_rate_are_resent_not_lost() {
    // Arrange: a hub that takes 30 readings/s per connection, and climate devices (three
    // metrics) sampling at 20 Hz that are allowed to send 1000/s, so the hub refuses the
    // tails of their messages with `rate_limited`.
    let app = spawn_app_with(|s| {
        s.limits.rate_per_sec = 30.0;
        s.limits.rate_burst = 30.0;
    })
    .await;
    let (mut dash, _) = app.connect("sim-r", "dash", "dashboard").await;
    let mut scenario =
        Scenario::quick(1, 2, Some(20.0), Some(telehub_sim::Kind::Climate)).expect("scenario");
    scenario.rooms[0].name = "sim-r".into();
    let stats = SimStats::new();
    let mut opts = options(format!("ws://{}", app.addr), BackoffConfig::default());
    opts.send_rate = 1_000.0;
    opts.drain = Duration::from_secs(8);
    opts.stats = stats.clone();
    let sim = SimRun::start(scenario, opts);
    let mut seen = Seen::default();

    // Act: 60 readings/s per device against a limit of 30/s, for a second and a half;
    // then stop sampling and let the devices drain what the hub refused.
    read_into(
        &mut dash,
        &mut seen,
        Duration::from_millis(1500),
        Duration::from_millis(1500),
        |_| false,
    )
    .await;
    let summary = sim.finish().await;
    let want: usize = summary.devices.iter().map(|d| d.acked as usize).sum();
    read_into(
        &mut dash,
        &mut seen,
        Duration::from_millis(500),
        WAIT,
        |s| s.readings.len() >= want,
    )
    .await;

    // Assert
    assert!(
        summary.totals.rate_limited > 0,
        "the hub refused some: {:?}",
        summary.totals
    );
    assert_eq!(summary.lost(), 0, "{summary:?}");
    for d in &summary.devices {
        let sent: BTreeSet<u64> = (d.first_seq..=d.last_seq).collect();
        assert_eq!(
            seen.seqs(&d.id),
            sent,
            "{}: refused readings were resent",
            d.id
        );
    }
    assert!(
        seen.duplicates().is_empty(),
        "the hub deduplicated the resends"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_killed_mid_run_loses_only_readings_it_had_accepted_but_not_yet_delivered() {
    // Arrange: a hub process (in-memory history, so a reading it accepted and had not
    // yet delivered dies with it), a dashboard, and devices whose first retry comes 3 s
    // after the connection drops, so the dashboard is back (about 0.3 s after the kill)
    // before they resend.
    let mut hub = hub_process().start();
    let url = format!("ws://{}", hub.addr());
    let dash_url = hub.ws_url("sim-k", "dash", "role=dashboard");
    let mut dash = Client::connect(&dash_url).await.expect("dashboard");
    let scenario = Scenario::quick(1, 4, Some(10.0), None).expect("scenario");
    let mut scenario = scenario;
    scenario.rooms[0].name = "sim-k".into();
    let stats = SimStats::new();
    let mut opts = options(
        url,
        BackoffConfig {
            initial: Duration::from_millis(3_000),
            max: Duration::from_millis(3_000),
        },
    );
    opts.stats = stats.clone();
    let sim = SimRun::start(scenario, opts);
    let mut before = Seen::default();
    read_into(
        &mut dash,
        &mut before,
        Duration::from_millis(1500),
        WAIT,
        |s| s.readings.len() >= 40 && stats.snapshot().connected == 4,
    )
    .await;
    assert_eq!(
        stats.snapshot().connected,
        4,
        "all devices up before the kill"
    );

    // Act: kill the hub, leave it down for a while, start it again at the same address.
    hub.kill();
    read_into(
        &mut dash,
        &mut before,
        Duration::from_millis(200),
        Duration::from_millis(200),
        |_| false,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let buffered_while_down = stats.snapshot().buffered;
    hub.restart();
    let mut dash = Client::connect(&dash_url).await.expect("dashboard again");
    let mut after = Seen::default();
    let deadline = Instant::now() + WAIT;
    while stats.snapshot().reconnects < 4 || stats.snapshot().buffered > 8 {
        assert!(
            Instant::now() < deadline,
            "devices did not recover: {:?}",
            stats.snapshot()
        );
        read_into(
            &mut dash,
            &mut after,
            Duration::from_millis(100),
            Duration::from_millis(100),
            |_| false,
        )
        .await;
    }
    let summary = sim.finish().await;
    read_into(
        &mut dash,
        &mut after,
        Duration::from_millis(500),
        WAIT,
        |_| false,
    )
    .await;

    // Assert
    assert!(
        buffered_while_down > 0,
        "readings were buffered while the hub was down"
    );
    assert_eq!(summary.lost(), 0, "{summary:?}");
    assert_eq!(summary.totals.dropped, 0);
    assert!(summary.totals.reconnects >= 4);
    assert!(
        before.duplicates().is_empty() && after.duplicates().is_empty(),
        "no duplicates from one hub"
    );
    // Every reading reached one of the two dashboards, except the ones the first hub
    // had accepted (acknowledged, so the device does not resend them) but not yet
    // written to its dashboard when it was killed: those are the run right after the
    // last reading the first dashboard saw, a handful at 10 Hz (recovering them is the
    // durable history's job). Everything generated while the hub was down is resent,
    // so it lies beyond that run and must be there.
    for d in &summary.devices {
        let first_after = after.seqs(&d.id);
        let seen_before = before.seqs(&d.id);
        let missing: Vec<u64> = (d.first_seq..=d.last_seq)
            .filter(|s| !first_after.contains(s) && !seen_before.contains(s))
            .collect();
        let last_before = seen_before.iter().max().copied().unwrap_or(0);
        let in_flight: Vec<u64> = (last_before + 1..).take(missing.len()).collect();
        assert_eq!(
            missing, in_flight,
            "{}: only the readings right after the last one delivered may be missing",
            d.id
        );
        assert!(missing.len() <= 6, "{}: missing {missing:?}", d.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_stopped_and_restarted_mid_run_history_holds_every_reading_exactly_once() {
    // Arrange: a hub process with durable history, and devices that retry quickly.
    let data = tempfile::tempdir().expect("data dir");
    let mut hub = hub_process().data_dir(data.path()).start();
    let url = format!("ws://{}", hub.addr());
    let mut scenario = Scenario::quick(1, 4, Some(10.0), None).expect("scenario");
    scenario.rooms[0].name = "sim-h".into();
    let stats = SimStats::new();
    let mut opts = options(
        url,
        BackoffConfig {
            initial: Duration::from_millis(200),
            max: Duration::from_millis(500),
        },
    );
    opts.stats = stats.clone();
    let sim = SimRun::start(scenario, opts);
    let deadline = Instant::now() + WAIT;
    while stats.snapshot().connected < 4 {
        assert!(Instant::now() < deadline, "devices did not connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Act: stop the hub mid-run, keep it down while the devices buffer, start it again
    // on the same data, let the devices catch up, end the run.
    assert_eq!(hub.stop().await.code(), Some(0), "{}", hub.log());
    tokio::time::sleep(Duration::from_millis(1000)).await;
    hub.restart();
    let deadline = Instant::now() + WAIT;
    while stats.snapshot().reconnects < 4 {
        assert!(Instant::now() < deadline, "devices did not reconnect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let summary = sim.finish().await;

    // Assert: every reading any device generated is in the history once.
    assert_eq!(summary.lost(), 0, "{summary:?}");
    let (status, body) =
        crate::helpers::http_get(hub.addr(), "/api/rooms/sim-h/history?limit=100000", "").await;
    assert_eq!(status, 200, "{body}");
    let hist: Value = serde_json::from_str(&body).expect("json");
    let points = hist["points"].as_array().expect("points");
    for d in &summary.devices {
        assert_eq!(d.unacked, 0, "{d:?}");
        let mine: Vec<(String, i64)> = points
            .iter()
            .filter(|p| p["device"] == d.id.as_str())
            .map(|p| {
                (
                    p["metric"].as_str().unwrap_or_default().to_string(),
                    p["ts"].as_i64().unwrap_or_default(),
                )
            })
            .collect();
        let distinct: BTreeSet<&(String, i64)> = mine.iter().collect();
        assert_eq!(
            distinct.len(),
            mine.len(),
            "{}: a reading stored twice",
            d.id
        );
        assert_eq!(
            mine.len() as u64,
            d.generated,
            "{}: history holds every generated reading",
            d.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_measures_a_live_hub_without_loss() {
    // Arrange
    let app = spawn_app().await;
    let url = format!("ws://{}", app.addr);

    // Act: a tiny load run, then a tiny idle run, with our own pid standing in for the
    // hub's (the hub runs in this process).
    let report = telehub_sim::bench::run_bench(telehub_sim::bench::BenchOptions {
        url: url.clone(),
        dashboard_urls: Vec::new(),
        rooms: 2,
        devices: 2,
        dashboards: 3,
        rate_hz: 20.0,
        duration: Duration::from_millis(1500),
        warmup: Duration::from_millis(300),
        pid: Some(std::process::id()),
        auth: None,
        slow_viewers: 0,
        slow_read_every: Duration::from_millis(100),
        slow_recv_buffer: 4096,
    })
    .await
    .expect("bench runs");
    let idle = telehub_sim::bench::idle::run_idle(telehub_sim::bench::idle::IdleOptions {
        url,
        connections: 40,
        per_room: 10,
        hold: Duration::from_millis(200),
        pid: Some(std::process::id()),
        auth: None,
    })
    .await
    .expect("idle runs");

    // Assert
    assert!(report.readings_sent >= 100, "{report:?}");
    // Every reading sent in the window was received by each of its room's 3 dashboards
    // (counted at the dashboards, not derived from what was sent), once.
    assert_eq!(report.deliveries, report.readings_sent * 3, "{report:?}");
    assert_eq!(report.lost, 0, "{report:?}");
    assert_eq!(report.dashboards_closed, 0);
    // Each of those deliveries was timed.
    assert_eq!(report.untimed, 0, "{report:?}");
    assert!(report.latency.p50_us > 0.0, "{:?}", report.latency);
    // The resources are those of the pid asked for: ours, whose RSS we read ourselves.
    let hub = report.hub.expect("hub usage with a pid");
    assert_eq!(hub.pid, std::process::id());
    // Other tests run in this process too, so its RSS moves: the figure must be a real
    // RSS of ours, at most twice our peak (VmHWM, which the kernel updates lazily) and more than an empty process holds.
    let peak = own_status_kib("VmHWM:");
    assert!(
        hub.rss_end_kib > 4_096 && hub.rss_end_kib <= peak * 2,
        "bench measured {} KiB, /proc/self/status says a peak of {peak} KiB",
        hub.rss_end_kib
    );
    assert!(hub.cpu_secs > 0.0, "{hub:?}");
    assert_eq!(idle.opened, 40, "{idle:?}");
    assert_eq!(idle.dropped_while_held, 0);
    assert_eq!(idle.rooms, 4);
    assert!(idle.bytes_per_connection.is_some());
    app.stop().await;
}

/// `--slow-viewers`: a viewer reading 10 frames a second in a room of 2,000 readings a
/// second is coalesced by the hub (it gets `skipped` frames, is never closed), while the
/// measured dashboards beside it still get every reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_slow_viewers_are_coalesced_beside_dashboards_that_lose_nothing() {
    // Arrange: a queue of 64, so the slow viewer's overflows within the run; no rate
    // limit on the devices.
    let app = spawn_app_with(|s| {
        s.limits.outbound_queue = 64;
        s.limits.rate_per_sec = 1e9;
        s.limits.rate_burst = 1e9;
    })
    .await;

    // Act
    let report = telehub_sim::bench::run_bench(telehub_sim::bench::BenchOptions {
        url: format!("ws://{}", app.addr),
        dashboard_urls: Vec::new(),
        rooms: 1,
        devices: 10,
        dashboards: 2,
        rate_hz: 200.0,
        duration: Duration::from_secs(3),
        warmup: Duration::from_millis(300),
        pid: None,
        auth: None,
        slow_viewers: 1,
        slow_read_every: Duration::from_millis(100),
        slow_recv_buffer: 4096,
    })
    .await
    .expect("bench runs");

    // Assert: the measured dashboards lost nothing, the slow viewer read a few dozen
    // frames, some of them `skipped` ones counting what it did not get, and stayed open.
    assert!(report.readings_sent >= 3_000, "{report:?}");
    assert_eq!(report.lost, 0, "{report:?}");
    assert_eq!(report.dashboards_closed, 0, "{report:?}");
    let slow = report.slow_viewers.expect("slow viewer counts");
    assert_eq!((slow.viewers, slow.closed), (1, 0), "{slow:?}");
    assert!(
        slow.readings > 0 && slow.readings < report.readings_sent / 10,
        "{slow:?}"
    );
    assert!(
        slow.skipped_frames > 0 && slow.skipped_readings > 0,
        "{slow:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn churn_opens_and_closes_connections_and_the_hub_keeps_no_descriptor() {
    // Arrange: a hub process of its own, so its descriptors are its connections' only.
    let hub = crate::helpers::hub_process().start();
    // "listening on" is logged at bind time: once /healthz answers, the hub has started
    // everything it keeps (its runtimes among them), so the count before is its baseline.
    let (status, _) = telehub_testkit::http::http_get(hub.addr(), "/healthz", "").await;
    assert_eq!(status, 200);

    // Act: 200 dashboards, each welcomed then closed, at 100 a second.
    let report = telehub_sim::bench::churn::run_churn(telehub_sim::bench::churn::ChurnOptions {
        url: format!("ws://{}", hub.addr()),
        rate: 100.0,
        duration: Duration::from_secs(2),
        pid: hub.pid(),
        auth: None,
    })
    .await
    .expect("churn runs");

    // Assert
    assert!(report.started >= 150, "{report:?}");
    assert_eq!(report.completed, report.started, "{report:?}");
    assert_eq!((report.failed, report.skipped), (0, 0), "{report:?}");
    let (before, mut after) = (
        report.fds_before.expect("fds"),
        report.fds_after.expect("fds"),
    );
    // On a loaded machine the hub may still be closing the last sockets after the
    // churn's settle pause: give it a bounded while. A leak never comes back down.
    let pid = hub.pid().expect("pid");
    for _ in 0..100 {
        if after <= before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("/proc/PID/fd")
            .count();
    }
    let held: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("/proc/PID/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .map(|t| t.display().to_string())
        .collect();
    assert!(
        after <= before,
        "the hub holds {after} fds after the churn, {before} before: {held:?}"
    );
    assert!(report.rss_after_kib.is_some());
}

/// One KiB figure of this process's /proc/self/status (`key` is e.g. "VmHWM:").
fn own_status_kib(key: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or_else(|| panic!("{key} in /proc/self/status"))
}

// ---------------------------------------------------------------------------------------
// `[auth] mode = "token"`: the simulator's tokens.

fn minter(secret: &str, ttl: Duration) -> telehub_sim::TokenSource {
    let mut m = telehub_sim::MintOptions::new(secret);
    m.ttl = ttl;
    telehub_sim::TokenSource::mint(m).expect("token source")
}

/// A dashboard in `room` with its own minted token.
async fn token_dashboard(app: &crate::helpers::TestApp, room: &str, client: &str) -> Client {
    let token = minter(SECRET, Duration::from_secs(3600))
        .token(&telehub_sim::TokenRequest {
            client,
            role: telehub_protocol::role::Role::Dashboard,
            room,
        })
        .expect("dashboard token");
    let mut c = Client::connect_bearer(&app.ws_url(room, client, "role=dashboard"), &token)
        .await
        .expect("dashboard connects with its token");
    c.recv_type("welcome").await;
    c
}

const AUTH_SCENARIO: &str = r#"
name = "auth"
seed = 7

[[rooms]]
name = "secure-a"

[[rooms.devices]]
kind = "climate"
count = 2
rate = 5.0
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minted_tokens_connect_publish_and_are_refreshed_past_their_expiry() {
    // Arrange: a token-mode hub; devices whose tokens live 3 s, so the hub sends
    // `token_expiring` at once and closes with 4001 at `exp` unless they refresh.
    let app = spawn_app_with(token_mode).await;
    let mut dash = token_dashboard(&app, "secure-a", "watcher").await;
    let scenario = Scenario::from_toml(AUTH_SCENARIO, "auth").expect("scenario");
    let stats = SimStats::new();
    let mut opts = options(
        format!("ws://{}", app.addr),
        BackoffConfig {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
        },
    );
    opts.stats = stats.clone();
    opts.auth = Some(minter(SECRET, Duration::from_secs(3)));

    // Act: run well past the first tokens' expiry.
    let started = Instant::now();
    let sim = SimRun::start(scenario, opts);
    let mut seen = Seen::default();
    let mut late = HashMap::<String, u64>::new();
    while started.elapsed() < Duration::from_secs(8) {
        match dash.poll_json(Duration::from_secs(2)).await {
            Polled::Json(v) => {
                if v["type"] == "reading" && started.elapsed() > Duration::from_secs(5) {
                    *late
                        .entry(v["device"].as_str().unwrap_or_default().into())
                        .or_default() += 1;
                }
                seen.take(v);
            }
            Polled::Quiet => panic!("the dashboard heard nothing for 2 s"),
            Polled::Closed => panic!("the dashboard's connection closed"),
        }
    }
    let summary = sim.finish().await;

    // Assert: both devices published, still did after their first token expired, on the
    // connection they opened first (no reconnect, no refusal), refreshing on the way.
    let t = summary.totals;
    assert_eq!(t.auth_refused, 0, "{t:?}");
    assert_eq!(t.reconnects, 0, "{t:?}");
    assert_eq!(t.connect_failures, 0, "{t:?}");
    assert!(
        t.token_refreshes >= 2 * 3,
        "about one refresh a second each: {t:?}"
    );
    assert_eq!(
        late.len(),
        2,
        "readings after the first exp from both devices: {late:?}"
    );
    assert!(seen.duplicates().is_empty());
    assert!(summary.lost() == 0, "{summary:?}");
    assert!(
        !seen.other.iter().any(|v| v["type"] == "error"),
        "{:?}",
        seen.other
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_refused_clearly_and_not_retried_in_a_loop() {
    // Arrange
    let app = spawn_app_with(token_mode).await;
    let wrong = minter(
        "some-other-secret-that-is-32-bytes-long",
        Duration::from_secs(3600),
    );
    let scenario = Scenario::from_toml(AUTH_SCENARIO, "auth").expect("scenario");
    let stats = SimStats::new();
    let mut opts = options(
        format!("ws://{}", app.addr),
        BackoffConfig {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
        },
    );
    opts.stats = stats.clone();
    opts.auth = Some(wrong.clone());

    // Act: a run of 3 s, where a fast backoff would retry dozens of times.
    let sim = SimRun::start(scenario, opts);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let summary = sim.finish().await;

    // Assert: each device tried once and was refused; none connected.
    let t = summary.totals;
    assert_eq!(t.auth_refused, 2, "{t:?}");
    assert_eq!(t.connect_failures, 2, "{t:?}");
    assert_eq!(t.acked, 0, "{t:?}");
    assert!(summary.devices.iter().all(|d| d.acked == 0));
    // The error a refused connection reports names the status and the hub's reason.
    let hub = telehub_sim::wsclient::HubUrl::parse(&format!("ws://{}", app.addr)).expect("url");
    let token = wrong
        .token(&telehub_sim::TokenRequest {
            client: "t1",
            role: telehub_protocol::role::Role::Device,
            room: "secure-a",
        })
        .expect("token");
    let err = telehub_sim::wsclient::connect(
        &hub,
        app.addr,
        "/ws/secure-a/t1?role=device",
        None,
        telehub_sim::wsclient::small_config(4096),
        Some(&token),
        None,
    )
    .await
    .expect_err("refused");
    assert!(err.is_refusal(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("refused the token: HTTP 401 unauthorized"),
        "{text}"
    );
    assert!(!text.contains(&token), "the error never shows the token");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_token_file_is_sent_as_the_refresh() {
    // Arrange: one token for every device in a file, expiring in 4 s.
    let app = spawn_app_with(token_mode).await;
    let device_token = |ttl| {
        minter(SECRET, Duration::from_secs(ttl))
            .token(&telehub_sim::TokenRequest {
                client: "climate-1",
                role: telehub_protocol::role::Role::Device,
                room: "secure-b",
            })
            .expect("token")
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("sim.token");
    // A device token for climate-1 in secure-b: the scenario's one device.
    std::fs::write(&path, format!("{}\n", device_token(4))).expect("write");
    let scenario = Scenario::from_toml(
        "name = \"rot\"\nseed = 1\n[[rooms]]\nname = \"secure-b\"\n[[rooms.devices]]\nkind = \"climate\"\nrate = 5.0\n",
        "rot",
    )
    .expect("scenario");
    let mut opts = options(
        format!("ws://{}", app.addr),
        BackoffConfig {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
        },
    );
    opts.auth = Some(telehub_sim::TokenSource::file(&path).expect("token file"));

    // Act: rotate the file after the hub's warning, before the old token's exp.
    let sim = SimRun::start(scenario, opts);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    std::fs::write(&path, device_token(3600)).expect("rotate");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let summary = sim.finish().await;

    // Assert: the connection outlived the first token, refreshed from the file.
    let t = summary.totals;
    assert_eq!(t.auth_refused, 0, "{t:?}");
    assert_eq!(t.reconnects, 0, "{t:?}");
    assert_eq!(t.token_refreshes, 1, "{t:?}");
    assert!(t.acked > 20, "{t:?}");
    assert_eq!(summary.lost(), 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_devices_deliver_every_reading_once_through_rate_limits_and_answer_commands() {
    // Arrange: `--transport http` devices against a hub that takes 30 readings/s per
    // device, sampling three metrics at 20 Hz and allowed to send 1000/s, so the hub
    // refuses parts of their posts (207 or 429) and they must resend them.
    let app = spawn_app_with(|s| {
        s.limits.rate_per_sec = 30.0;
        s.limits.rate_burst = 30.0;
    })
    .await;
    let (mut dash, _) = app.connect("sim-h", "dash", "dashboard").await;
    let mut scenario =
        Scenario::quick(1, 2, Some(20.0), Some(telehub_sim::Kind::Climate)).expect("scenario");
    scenario.rooms[0].name = "sim-h".into();
    let mut opts = RunOptions::http(format!("http://{}", app.addr));
    opts.seq_start = SeqStart::Fixed(1);
    opts.send_rate = 1_000.0;
    opts.drain = Duration::from_secs(8);
    let sim = SimRun::start(scenario, opts);
    let mut seen = Seen::default();
    read_into(&mut dash, &mut seen, Duration::from_secs(2), WAIT, |s| {
        s.other
            .iter()
            .any(|v| v["type"] == "presence" && v["client"] == "climate-1" && v["via"] == "http")
    })
    .await;

    // Act: a command by long poll, then a second and a half of over-rate readings.
    dash.send_json(json!({"type":"command","id":"h-1","to":"climate-1","name":"set_setpoint","args":{"value":19.5}}))
        .await;
    read_into(
        &mut dash,
        &mut seen,
        Duration::from_millis(1500),
        Duration::from_millis(1500),
        |_| false,
    )
    .await;
    let summary = sim.finish().await;
    let want: usize = summary.devices.iter().map(|d| d.acked as usize).sum();
    read_into(
        &mut dash,
        &mut seen,
        Duration::from_millis(500),
        WAIT,
        |s| s.readings.len() >= want && s.other.iter().any(|v| v["type"] == "ack"),
    )
    .await;

    // Assert
    assert_eq!(summary.transport, "http");
    let ack = seen
        .other
        .iter()
        .find(|v| v["type"] == "ack")
        .unwrap_or_else(|| panic!("no ack: {:?}", seen.other));
    assert_eq!(
        (&ack["id"], &ack["from"], &ack["ok"], &ack["result"]),
        (
            &json!("h-1"),
            &json!("climate-1"),
            &json!(true),
            &json!({"setpoint": 19.5})
        )
    );
    assert!(summary.totals.rate_limited > 0, "{:?}", summary.totals);
    assert_eq!(summary.lost(), 0, "{summary:?}");
    for d in &summary.devices {
        let sent: BTreeSet<u64> = (d.first_seq..=d.last_seq).collect();
        assert_eq!(seen.seqs(&d.id), sent, "{}: every reading arrived", d.id);
    }
    assert!(seen.duplicates().is_empty(), "resends were deduplicated");
    app.stop().await;
}

/// devices/alerts.toml against a hub with devices/hub/alerts.toml: each kind of rule
/// (above with `for` and hysteresis, below, outside, stale) fires and then resolves, on
/// the faults the simulator injects (drift, silent, and stuck at a hot value).
#[tokio::test]
async fn the_alerts_scenario_fires_and_resolves_each_kind_of_rule() {
    let rules = include_str!("../../devices/hub/alerts.toml");
    let alerts = telehub::Settings::from_sources(rules, "devices/hub/alerts.toml", Vec::new())
        .expect("the hub's rules are valid")
        .alerts;
    let app = spawn_app_with(move |s| s.alerts = alerts).await;
    let (mut screen, _) = app.connect("alerts-demo", "screen", "dashboard").await;
    let scenario = Scenario::load(concat!(env!("CARGO_MANIFEST_DIR"), "/devices/alerts.toml"))
        .expect("the scenario is valid");
    let run = SimRun::start(
        scenario,
        options(
            format!("ws://{}", app.addr),
            BackoffConfig {
                initial: Duration::from_millis(50),
                max: Duration::from_millis(500),
            },
        ),
    );

    // (rule, device) → the states it went through, until every expected one resolved.
    let expected = [
        ("too-hot", "hot-1"),
        ("too-cold", "cold-1"),
        ("humidity-range", "humid-1"),
        ("went-silent", "quiet-1"),
        ("too-hot", "stuck-1"),
    ];
    let mut seen: HashMap<(String, String), Vec<String>> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(40);
    let done = |seen: &HashMap<(String, String), Vec<String>>| {
        expected.iter().all(|(r, d)| {
            seen.get(&(r.to_string(), d.to_string())).is_some_and(|s| {
                s.iter().any(|x| x == "firing") && s.last().is_some_and(|x| x == "resolved")
            })
        })
    };
    while !done(&seen) {
        assert!(
            Instant::now() < deadline,
            "not every rule fired and resolved: {seen:?}"
        );
        let v = match screen.poll_json(Duration::from_millis(500)).await {
            Polled::Json(v) => v,
            Polled::Quiet => continue,
            Polled::Closed => panic!("the dashboard was closed: {seen:?}"),
        };
        if v["type"] == "alert" {
            let key = (
                v["rule"].as_str().unwrap_or("").to_string(),
                v["device"].as_str().unwrap_or("").to_string(),
            );
            seen.entry(key)
                .or_default()
                .push(v["state"].as_str().unwrap_or("").to_string());
        }
    }
    // `for = "1s"`: the hot ones were pending before they fired.
    assert_eq!(
        seen[&("too-hot".to_string(), "hot-1".to_string())][..2],
        ["pending", "firing"]
    );
    // Nothing fires for a device that behaves.
    assert!(
        seen.keys()
            .all(|(r, d)| expected.contains(&(r.as_str(), d.as_str()))),
        "{seen:?}"
    );
    run.finish().await;
    app.stop().await;
}
