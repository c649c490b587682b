//! The dashboard in a real browser: headless Chromium (Debian's `chromium`, driven over
//! the DevTools protocol by `cdp.rs`) opens the page the hub serves, while devices, real
//! WebSocket clients driven from here, send readings and answer commands.
//!
//! Screenshots go to `target/screenshots/` and their paths are printed. Chromium is
//! required: a missing browser fails these tests with instructions, it never skips them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use crate::cdp::Browser;
use crate::helpers::{spawn_app, spawn_app_at, Client};
use crate::tokens::{claims, jwt, sign, token_mode};

/// One browser test at a time: each starts its own Chromium, and the machine is small.
pub(crate) static BROWSER_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub(crate) const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------------------------------
// Simulated devices: a real WebSocket client per device, sending a batch of readings on
// every tick, answering commands with acks, and reconnecting when the hub goes away.

pub(crate) struct Device {
    /// Commands received, in order.
    pub(crate) commands: Arc<Mutex<Vec<Value>>>,
    /// Readings sent.
    sent: Arc<AtomicU64>,
    /// Connections made (1 after the first connect).
    connects: Arc<AtomicU64>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Device {
    /// A device `id` in `room` sending `metrics` (name, unit, base value) every
    /// `interval`, with values that move (a slow sine per device plus a ramp).
    pub(crate) fn spawn(
        addr: SocketAddr,
        room: &str,
        id: &str,
        metrics: &[(&'static str, &'static str, f64)],
        interval: Duration,
    ) -> Device {
        Device::spawn_with_token(addr, room, id, metrics, interval, None)
    }

    /// As [`Device::spawn`], with `Authorization: Bearer {token}` on every connection
    /// (a hub in token mode).
    fn spawn_with_token(
        addr: SocketAddr,
        room: &str,
        id: &str,
        metrics: &[(&'static str, &'static str, f64)],
        interval: Duration,
        token: Option<String>,
    ) -> Device {
        let url = format!("ws://{addr}/ws/{room}/{id}?role=device");
        let metrics = metrics.to_vec();
        let commands = Arc::new(Mutex::new(Vec::new()));
        let sent = Arc::new(AtomicU64::new(0));
        let connects = Arc::new(AtomicU64::new(0));
        let (stop, mut stopped) = watch::channel(false);
        let phase = id.bytes().map(f64::from).sum::<f64>();
        let task = {
            let (commands, sent, connects) = (commands.clone(), sent.clone(), connects.clone());
            tokio::spawn(async move {
                let mut seq = 0u64;
                let start = tokio::time::Instant::now();
                'reconnect: loop {
                    if *stopped.borrow() {
                        return;
                    }
                    let connected = match &token {
                        Some(t) => Client::connect_bearer(url.as_str(), t).await,
                        None => Client::connect(url.as_str()).await,
                    };
                    let Ok(mut ws) = connected else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    };
                    connects.fetch_add(1, Ordering::Relaxed);
                    let mut tick = tokio::time::interval(interval);
                    loop {
                        tokio::select! {
                            _ = stopped.changed() => {
                                ws.close().await;
                                return;
                            }
                            _ = tick.tick() => {
                                let t = start.elapsed().as_secs_f64();
                                let items: Vec<Value> = metrics.iter().enumerate().map(|(i, (m, unit, base))| {
                                    seq += 1;
                                    let v = base + base.abs().max(1.0) * 0.1 * ((t * 0.7 + phase + i as f64).sin())
                                        + (seq % 50) as f64 * 0.01;
                                    json!({"metric": m, "unit": unit, "value": v, "seq": seq})
                                }).collect();
                                let n = items.len() as u64;
                                let msg = json!({"type": "readings", "items": items});
                                if ws.try_send_text(&msg.to_string()).await.is_err() {
                                    continue 'reconnect;
                                }
                                sent.fetch_add(n, Ordering::Relaxed);
                            }
                            msg = ws.ws.next() => {
                                let Some(Ok(msg)) = msg else { continue 'reconnect };
                                let Message::Text(text) = msg else { continue };
                                let Ok(v) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                                if v["type"] == "command" {
                                    commands.lock().unwrap().push(v.clone());
                                    let ack = json!({"type": "ack", "id": v["id"], "ok": true,
                                        "result": {"applied": v["name"], "args": v["args"]}});
                                    let _ = ws.try_send_text(&ack.to_string()).await;
                                }
                            }
                        }
                    }
                }
            })
        };
        Device {
            commands,
            sent,
            connects,
            stop,
            task,
        }
    }

    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

const CLIMATE: &[(&str, &str, f64)] = &[("temperature", "°C", 21.5), ("humidity", "%", 48.0)];

/// Counts canvas pixels close to `color` (a CSS hex colour) in the chart of `metric`.
fn line_pixels_js(metric: &str, device: &str) -> String {
    format!(
        r#"(() => {{
  const c = document.querySelector('canvas[data-metric="{metric}"]');
  if (!c || !c.width) return 0;
  const sw = [...document.querySelectorAll('[data-device="{device}"] .swatch')][0];
  const rgb = getComputedStyle(sw).backgroundColor.match(/\d+/g).map(Number);
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) {{
    if (Math.abs(d[i] - rgb[0]) + Math.abs(d[i+1] - rgb[1]) + Math.abs(d[i+2] - rgb[2]) < 60) n++;
  }}
  return n;
}})()"#
    )
}

fn value_js(device: &str, metric: &str) -> String {
    format!(
        r#"document.querySelector('[data-device="{device}"] [data-metric="{metric}"] .value')?.textContent ?? ''"#
    )
}

/// A renderer trace's main thread (`CrRendererMain`): its busy time, its tasks over
/// 50 ms, and the 20 event names with the most inclusive time (nested events count in
/// their parents too).
fn summarise_trace(events: &[Value]) -> String {
    let main = events.iter().find_map(|e| {
        (e["ph"] == "M" && e["name"] == "thread_name" && e["args"]["name"] == "CrRendererMain")
            .then(|| (e["pid"].clone(), e["tid"].clone()))
    });
    let Some((pid, tid)) = main else {
        return format!("no renderer main thread among {} events", events.len());
    };
    let mut by_name: std::collections::HashMap<String, (f64, u64)> = Default::default();
    let (mut tasks_ms, mut long_tasks, mut longest) = (0.0, 0, 0.0f64);
    for e in events {
        if e["ph"] != "X" || e["pid"] != pid || e["tid"] != tid {
            continue;
        }
        let ms = e["dur"].as_f64().unwrap_or(0.0) / 1000.0;
        let name = e["name"].as_str().unwrap_or("?");
        if name == "RunTask" || name == "ThreadControllerImpl::RunTask" {
            tasks_ms += ms;
            longest = longest.max(ms);
            long_tasks += u64::from(ms > 50.0);
        }
        let entry = by_name.entry(name.to_string()).or_default();
        entry.0 += ms;
        entry.1 += 1;
    }
    let mut top: Vec<_> = by_name.into_iter().collect();
    top.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    let lines: Vec<String> = top
        .iter()
        .take(20)
        .map(|(name, (ms, n))| format!("  {ms:9.1} ms  {n:7}x  {name}"))
        .collect();
    format!(
        "main thread tasks {tasks_ms:.0} ms, {long_tasks} over 50 ms (longest {longest:.1} ms); by inclusive time:\n{}",
        lines.join("\n")
    )
}

/// The renderer's main-thread time by kind between two `Performance.getMetrics`.
fn renderer_seconds(before: &Value, after: &Value) -> Value {
    let get = |m: &Value, name: &str| {
        m["metrics"]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["name"] == name))
            .and_then(|x| x["value"].as_f64())
            .unwrap_or(0.0)
    };
    let mut out = serde_json::Map::new();
    for name in [
        "TaskDuration",
        "ScriptDuration",
        "LayoutDuration",
        "RecalcStyleDuration",
        "TaskOtherDuration",
    ] {
        let d = get(after, name) - get(before, name);
        out.insert(name.to_string(), json!((d * 1000.0).round() / 1000.0));
    }
    Value::Object(out)
}

pub(crate) fn print_screenshot(what: &str, path: &std::path::Path) {
    println!("screenshot ({what}): {}", path.display());
}

// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn home_lists_the_room_with_its_devices_and_dashboards() {
    let _one = BROWSER_TESTS.lock().await;
    // Arrange: a hub with two devices in "greenhouse" and one in "lab".
    let app = spawn_app().await;
    let tick = Duration::from_millis(100);
    let d1 = Device::spawn(app.addr, "greenhouse", "climate-1", CLIMATE, tick);
    let d2 = Device::spawn(app.addr, "greenhouse", "climate-2", CLIMATE, tick);
    let d3 = Device::spawn(app.addr, "lab", "scale-1", &[("weight", "g", 512.0)], tick);
    let browser = Browser::launch().await;
    let page = browser.new_page(1280, 800).await;

    // Act
    page.goto(&format!("http://{}/", app.addr)).await;

    // Assert: both rooms are listed, greenhouse with 2 devices, and the counts follow
    // the hub live (a third device joins).
    page.wait_for(
        r#"document.querySelector('[data-room="greenhouse"] [data-stat="devices"] .stat-num')?.textContent === '2'"#,
        WAIT,
        "the greenhouse room with 2 devices",
    )
    .await;
    page.wait_for(
        r#"!!document.querySelector('[data-room="lab"]')"#,
        WAIT,
        "the lab room",
    )
    .await;
    let d4 = Device::spawn(app.addr, "greenhouse", "climate-3", CLIMATE, tick);
    page.wait_for(
        r#"document.querySelector('[data-room="greenhouse"] [data-stat="devices"] .stat-num')?.textContent === '3'"#,
        WAIT,
        "the device count to update live",
    )
    .await;
    let status = page
        .eval("document.querySelector('#conn').dataset.state")
        .await;
    assert_eq!(status, "live");

    // A dashboard open on the room (a second tab) is counted too.
    let other = browser.new_page(800, 600).await;
    other
        .goto(&format!("http://{}/#/rooms/greenhouse", app.addr))
        .await;
    page.wait_for(
        r#"document.querySelector('[data-room="greenhouse"] [data-stat="dashboards"] .stat-num')?.textContent === '1'"#,
        WAIT,
        "the greenhouse room with 1 dashboard",
    )
    .await;
    print_screenshot("home", &page.screenshot_to_dir("home").await);

    // The theme toggle switches to dark and says so to assistive technology.
    page.eval("document.querySelector('#theme').click()").await;
    let theme = page
        .eval("[document.documentElement.dataset.theme, document.querySelector('#theme').getAttribute('aria-pressed')]")
        .await;
    assert_eq!(theme, json!(["dark", "true"]));
    print_screenshot("home, dark", &page.screenshot_to_dir("home-dark").await);
    page.set_viewport(390, 760, true).await;
    print_screenshot("home, phone", &page.screenshot_to_dir("home-phone").await);
    assert!(page.errors().is_empty(), "page errors: {:?}", page.errors());

    for d in [d1, d2, d3, d4] {
        d.stop().await;
    }
    drop(browser);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_page_shows_changing_values_a_drawn_chart_and_command_acks() {
    let _one = BROWSER_TESTS.lock().await;
    // Arrange
    let app = spawn_app().await;
    let tick = Duration::from_millis(100);
    let devices: Vec<Device> = (1..=3)
        .map(|i| {
            Device::spawn(
                app.addr,
                "greenhouse",
                &format!("climate-{i}"),
                CLIMATE,
                tick,
            )
        })
        .collect();
    let browser = Browser::launch().await;
    let page = browser.new_page(1280, 900).await;

    // Act
    page.goto(&format!("http://{}/#/rooms/greenhouse", app.addr))
        .await;

    // Assert: a card per device, online, with a value that changes.
    page.wait_for(
        "document.querySelectorAll('.card[data-device]').length === 3",
        WAIT,
        "three device cards",
    )
    .await;
    page.wait_for(
        r#"document.querySelector('[data-device="climate-1"] [data-testid="presence"]')?.textContent.startsWith('online')"#,
        WAIT,
        "climate-1 to show as online",
    )
    .await;
    let first = page
        .wait_for(&value_js("climate-1", "temperature"), WAIT, "a temperature")
        .await;
    let unit = page
        .eval(r#"document.querySelector('[data-device="climate-1"] [data-metric="temperature"] .unit').textContent"#)
        .await;
    assert_eq!(unit, "°C");
    page.wait_for(
        &format!("{} !== {first}", value_js("climate-1", "temperature")),
        WAIT,
        "the temperature to change",
    )
    .await;

    // The chart has drawn climate-1's line: pixels in its colour on the canvas.
    let pixels = page
        .wait_for(
            &format!(
                "(() => {{ const n = {}; return n > 80 ? n : 0; }})()",
                line_pixels_js("temperature", "climate-1")
            ),
            WAIT,
            "climate-1's line on the temperature chart",
        )
        .await;
    println!("temperature chart: {pixels} pixels in climate-1's colour");

    // A command reaches the device and its ack shows on the card.
    page.eval(
        r#"(() => {
        const card = document.querySelector('[data-device="climate-2"]');
        card.querySelector('details').open = true;
        const sel = card.querySelector('select[name="command"]');
        sel.value = 'set_interval';
        sel.dispatchEvent(new Event('change'));
        card.querySelector('input[name="arg"]').value = '500';
        card.querySelector('form button[type="submit"]').click();
        return true;
    })()"#,
    )
    .await;
    let status = page
        .wait_for(
            r#"(() => { const t = document.querySelector('[data-device="climate-2"] [data-testid="cmd-status"]').textContent; return t.includes('acknowledged') ? t : ''; })()"#,
            WAIT,
            "the ack of set_interval on climate-2's card",
        )
        .await;
    println!("command status: {status}");
    let got = devices[1].commands.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "climate-2 got one command: {got:?}");
    assert_eq!(got[0]["name"], "set_interval");
    assert_eq!(got[0]["args"], json!({"ms": 500}));
    assert!(devices[0].commands.lock().unwrap().is_empty());
    assert!(status.as_str().unwrap().contains("set_interval"));

    // A command to a device that left gets the hub's error, matched by id.
    let gone = devices.into_iter().collect::<Vec<_>>();
    let mut gone = gone.into_iter();
    let (d1, d2, d3) = (
        gone.next().unwrap(),
        gone.next().unwrap(),
        gone.next().unwrap(),
    );
    d3.stop().await;
    page.wait_for(
        r#"document.querySelector('[data-device="climate-3"] [data-testid="presence"]')?.textContent === 'offline'"#,
        WAIT,
        "climate-3 to show as offline",
    )
    .await;
    page.eval(
        r#"(() => {
        const card = document.querySelector('[data-device="climate-3"]');
        card.querySelector('details').open = true;
        const sel = card.querySelector('select[name="command"]');
        sel.value = 'reboot';
        sel.dispatchEvent(new Event('change'));
        card.querySelector('form button[type="submit"]').click();
        return true;
    })()"#,
    )
    .await;
    page.wait_for(
        r#"document.querySelector('[data-device="climate-3"] [data-testid="cmd-status"]').textContent.includes('unknown_device')"#,
        WAIT,
        "the unknown_device error on climate-3's card",
    )
    .await;

    // Long windows switch to the hub's plotters chart: an image, or (before the hub has
    // plots) a note saying so; back at 5m the live canvas returns.
    page.eval(r#"document.querySelector('input[name="window"][value="1h"]').click()"#)
        .await;
    let long = page
        .wait_for(
            r#"(() => { const f = document.querySelector('figure.chart[data-metric="temperature"]');
                const img = f.querySelector('img.plot'), note = f.querySelector('.plot-note');
                if (!f.querySelector('canvas').hidden) return '';
                if (!img.hidden && img.complete && img.naturalWidth > 0) return 'image';
                return note.hidden ? '' : 'note: ' + note.textContent; })()"#,
            WAIT,
            "the 1h window to show the hub's chart or say it is not available",
        )
        .await;
    println!("1h window shows: {long}");
    print_screenshot("room, 1h window", &page.screenshot_to_dir("room-1h").await);
    page.eval(r#"document.querySelector('input[name="window"][value="5m"]').click()"#)
        .await;
    page.wait_for(
        r#"!document.querySelector('canvas[data-metric="temperature"]').hidden"#,
        WAIT,
        "the live chart back at 5m",
    )
    .await;

    // CSV of the shown series: a file when the hub has history, else a clear notice.
    page.eval(r#"document.querySelector('.room-tools button').click()"#)
        .await;
    let csv = page
        .wait_for("window.telehub.view.lastCsv", WAIT, "the CSV download")
        .await;
    if csv["status"] == 200 {
        assert!(csv["bytes"].as_u64().unwrap() > 0, "{csv}");
    } else {
        let notice = page
            .eval("document.querySelector('#notice').textContent")
            .await;
        assert!(notice.as_str().unwrap().contains("CSV"), "{csv} {notice}");
        page.eval("document.querySelector('#notice .close').click()")
            .await;
    }

    // Screen-reader basics: every control has a label, the status is a live region,
    // the charts are images with a name, and the devices are a list.
    let unlabelled = page
        .eval(
            r#"[...document.querySelectorAll('input, select, button')]
                .filter(e => !(e.labels?.length || e.getAttribute('aria-label') || e.textContent.trim()))
                .map(e => e.outerHTML.slice(0, 80))"#,
        )
        .await;
    assert_eq!(unlabelled, json!([]), "controls without a label");
    let a11y = page
        .eval(
            r#"[document.querySelector('#conn').getAttribute('aria-live'),
                [...document.querySelectorAll('canvas')].every(c => c.getAttribute('role') === 'img' && c.getAttribute('aria-label')),
                document.querySelector('.cards').getAttribute('role')]"#,
        )
        .await;
    assert_eq!(a11y, json!(["polite", true, "list"]));

    print_screenshot("room", &page.screenshot_to_dir("room").await);
    page.set_color_scheme("dark").await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    print_screenshot("room, dark", &page.screenshot_to_dir("room-dark").await);
    page.set_viewport(390, 844, true).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    print_screenshot("room, phone", &page.screenshot_to_dir("room-phone").await);
    assert!(page.errors().is_empty(), "page errors: {:?}", page.errors());

    d1.stop().await;
    d2.stop().await;
    drop(browser);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_reconnects_after_the_hub_restarts_and_keeps_updating() {
    let _one = BROWSER_TESTS.lock().await;
    // Arrange: a hub we can restart at the same address.
    let hub = spawn_app().await;
    let addr = hub.addr;
    let device = Device::spawn(
        addr,
        "plant",
        "meter-1",
        &[("power", "W", 1200.0)],
        Duration::from_millis(100),
    );
    let browser = Browser::launch().await;
    let page = browser.new_page(1280, 900).await;
    page.goto(&format!("http://{addr}/#/rooms/plant")).await;
    page.wait_for(
        "window.telehub.view?.conn === 'live' && window.telehub.view.readings > 5",
        WAIT,
        "the page to be live with readings",
    )
    .await;

    // Act: stop the hub; the page notices and waits to reconnect.
    hub.stop().await;
    page.wait_for(
        "window.telehub.view.conn === 'waiting'",
        WAIT,
        "the page to notice the lost connection",
    )
    .await;
    let shown = page
        .eval("document.querySelector('#conn .conn-text').textContent")
        .await;
    println!("status while the hub is down: {shown}");
    let before = page
        .eval("window.telehub.view.readings")
        .await
        .as_u64()
        .unwrap();
    let hub = spawn_app_at(addr).await;

    // Assert: reconnected, told the user that the restarted (in-memory) hub could not
    // replay what was missed, and readings flow and show again.
    page.wait_for(
        "window.telehub.view.conn === 'live' && window.telehub.view.reconnects >= 1",
        WAIT,
        "the page to reconnect",
    )
    .await;
    page.wait_for(
        &format!("window.telehub.view.readings > {before} + 10"),
        WAIT,
        "readings after the restart",
    )
    .await;
    let v1 = page.eval(&value_js("meter-1", "power")).await;
    page.wait_for(
        &format!("{} !== {v1}", value_js("meter-1", "power")),
        WAIT,
        "the value to keep changing after the restart",
    )
    .await;
    let recovered = page.eval("window.telehub.view.lastRecovered").await;
    assert_eq!(
        recovered,
        json!(false),
        "a restarted in-memory hub has a new epoch"
    );
    let notice = page
        .eval("document.querySelector('#notice').hidden ? '' : document.querySelector('#notice').textContent")
        .await;
    assert!(
        notice.as_str().unwrap_or("").contains("Reconnected"),
        "the page says what happened: {notice}"
    );
    assert!(device.connects.load(Ordering::Relaxed) >= 2);
    print_screenshot(
        "room after a hub restart",
        &page.screenshot_to_dir("room-after-restart").await,
    );
    assert!(page.errors().is_empty(), "page errors: {:?}", page.errors());

    device.stop().await;
    drop(browser);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_devices_at_10_hz_keep_the_page_responsive() {
    let _one = BROWSER_TESTS.lock().await;
    // Arrange: 50 devices x 4 metrics at 10 Hz in one room: 2,000 readings/s.
    let app = spawn_app().await;
    const METRICS: &[(&str, &str, f64)] = &[
        ("temperature", "°C", 21.0),
        ("humidity", "%", 45.0),
        ("co2", "ppm", 600.0),
        ("power", "W", 300.0),
    ];
    // TELEHUB_PERF_DEVICES=200 gives the 8,000 readings/s figure of BENCHMARKS.md.
    let n: usize = std::env::var("TELEHUB_PERF_DEVICES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let devices: Vec<Device> = (0..n)
        .map(|i| {
            Device::spawn(
                app.addr,
                "hall",
                &format!("node-{i:03}"),
                METRICS,
                Duration::from_millis(100),
            )
        })
        .collect();
    let browser = Browser::launch().await;
    let page = browser.new_page(1280, 900).await;
    page.goto(&format!("http://{}/#/rooms/hall", app.addr))
        .await;
    page.wait_for(
        &format!("document.querySelectorAll('.card[data-device]').length === {n} && document.querySelectorAll('canvas[data-metric]').length === 4"),
        Duration::from_secs(30),
        &format!("{n} device cards and 4 charts"),
    )
    .await;
    // Let the charts fill first: 3 s by default; TELEHUB_PERF_WARMUP_S=300 measures
    // with full 5-minute charts (the figure in BENCHMARKS.md).
    let warmup: u64 = std::env::var("TELEHUB_PERF_WARMUP_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    tokio::time::sleep(Duration::from_secs(warmup)).await;
    page.call("Performance.enable", json!({})).await;
    let metrics_before = page.call("Performance.getMetrics", json!({})).await;

    // Act: sample animation frames for 10 s while the data streams in.
    let sent_before: u64 = devices.iter().map(|d| d.sent.load(Ordering::Relaxed)).sum();
    let reconnects_before = page.eval("window.telehub.view.reconnects").await;
    let stats = page.eval("window.telehub.perf.sampleFrames(10000)").await;
    let sent_after: u64 = devices.iter().map(|d| d.sent.load(Ordering::Relaxed)).sum();
    let metrics_after = page.call("Performance.getMetrics", json!({})).await;
    let renderer = renderer_seconds(&metrics_before, &metrics_after);
    let view = page
        .eval("({conn: window.telehub.view.conn, reconnects: window.telehub.view.reconnects, closes: window.telehub.view.closes, readings: window.telehub.view.readings})")
        .await;
    print_screenshot(
        "room with 50 devices",
        &page.screenshot_to_dir("room-50-devices").await,
    );
    // TELEHUB_PERF_TRACE=1: a 5 s performance trace after the sample (tracing slows
    // the page, so not during it), summarised: where the renderer's main thread went.
    if std::env::var_os("TELEHUB_PERF_TRACE").is_some() {
        page.start_trace().await;
        tokio::time::sleep(Duration::from_secs(5)).await;
        let events = page.stop_trace().await;
        println!("PERF trace, 5 s: {}", summarise_trace(&events));
    }

    // Assert and report.
    println!(
        "PERF {n} devices x 4 metrics at 10 Hz ({} readings/s sent): {}",
        (sent_after - sent_before) / 10,
        serde_json::to_string_pretty(&stats).unwrap()
    );
    println!("PERF view after sampling: {view}");
    println!("PERF renderer main thread, seconds over the sample (CDP Performance.getMetrics): {renderer}");
    assert_eq!(view["conn"], "live");
    // The page kept up: the hub never closed it as a slow consumer (1013). Other
    // closes are printed above with their codes.
    let closes = view["closes"].as_array().cloned().unwrap_or_default();
    assert!(
        !closes.contains(&json!(1013)),
        "the page fell behind and was closed as a slow consumer: {view}"
    );
    println!(
        "PERF connections lost while running: {} (before the sample: {reconnects_before})",
        closes.len()
    );
    let fps = stats["fps"].as_f64().unwrap();
    let per_sec = stats["messagesPerSec"].as_f64().unwrap();
    assert!(per_sec > 1000.0, "the page handled {per_sec} readings/s");
    assert!(fps >= 20.0, "the page kept {fps} frames per second");
    assert!(page.errors().is_empty(), "page errors: {:?}", page.errors());

    for d in devices {
        d.stop().await;
    }
    drop(browser);
    app.stop().await;
}

/// The page asks for `overflow=latest`: falling behind, it is not closed (1013) but gets
/// each series' newest value and a `skipped` count, says "catching up", and carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_that_falls_behind_catches_up_instead_of_being_closed() {
    let _one = BROWSER_TESTS.lock().await;
    // Arrange: a hub with tiny outbound queues, a steady device, and the page.
    let app = crate::helpers::spawn_app_with(|s| {
        s.limits.outbound_queue = 8;
        s.limits.rate_per_sec = 100_000.0;
        s.limits.rate_burst = 100_000.0;
    })
    .await;
    let steady = Device::spawn(
        app.addr,
        "busy",
        "meter-1",
        &[("power", "W", 800.0)],
        Duration::from_millis(100),
    );
    let browser = Browser::launch().await;
    let page = browser.new_page(1280, 900).await;
    page.goto(&format!("http://{}/#/rooms/busy", app.addr))
        .await;
    page.wait_for(
        "window.telehub.view?.conn === 'live' && window.telehub.view.readings > 3",
        WAIT,
        "the page to be live",
    )
    .await;

    // Act: a burst of 64-reading batches, far more than an 8-frame queue holds.
    let url = format!("ws://{}/ws/busy/flood?role=device", app.addr);
    let mut flood = Client::connect(url.as_str())
        .await
        .expect("flood device connects");
    let items: Vec<Value> = (0..64)
        .map(|i| json!({"metric": "burst", "value": i}))
        .collect();
    let batch = json!({"type": "readings", "items": items}).to_string();
    let mut behind = false;
    for _ in 0..400 {
        flood.send_text(&batch).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        if page
            .eval("window.telehub.view.skipped > 0")
            .await
            .as_bool()
            .unwrap_or(false)
        {
            behind = true;
            break;
        }
    }
    flood.close().await;
    assert!(
        behind,
        "the hub coalesced the page's readings and said how many (skipped)"
    );
    let pill = page
        .eval("document.querySelector('[data-testid=catching-up]').textContent")
        .await;
    assert!(
        pill.as_str().unwrap_or("").starts_with("catching up ("),
        "the page says it is catching up: {pill}"
    );

    // Assert: still the same connection, the pill goes once caught up, values flow on.
    page.wait_for(
        "document.querySelector('[data-testid=catching-up]').hidden",
        WAIT,
        "the catching-up notice to go",
    )
    .await;
    let view = page
        .eval("JSON.stringify([window.telehub.view.reconnects, window.telehub.view.closes])")
        .await;
    assert_eq!(
        view.as_str(),
        Some("[0,[]]"),
        "never closed nor reconnected"
    );
    let before = page
        .eval("window.telehub.view.readings")
        .await
        .as_u64()
        .unwrap();
    page.wait_for(
        &format!("window.telehub.view.readings > {before} + 5"),
        WAIT,
        "readings after the reconnect",
    )
    .await;
    let v1 = page.eval(&value_js("meter-1", "power")).await;
    page.wait_for(
        &format!("{} !== {v1}", value_js("meter-1", "power")),
        WAIT,
        "meter-1's value to keep changing",
    )
    .await;
    assert!(page.errors().is_empty(), "page errors: {:?}", page.errors());

    steady.stop().await;
    drop(browser);
    app.stop().await;
}

// ---------------------------------------------------------------------------------------
// `[auth] mode = "token"`: the sign-in box, live data with a token, refusals, expiry.

/// Types `token` into the sign-in box with the keyboard and presses Enter.
async fn type_token_and_enter(page: &crate::cdp::Page, input: &str, token: &str) {
    page.eval(&format!("document.querySelector('{input}').focus()"))
        .await;
    page.call("Input.insertText", json!({"text": token})).await;
    for kind in ["keyDown", "keyUp"] {
        page.call(
            "Input.dispatchKeyEvent",
            json!({"type": kind, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13,
                   "text": if kind == "keyDown" { "\r" } else { "" }}),
        )
        .await;
    }
}

const SIGNIN_BOX: &str = "!!document.querySelector('#signin-token')";
const SIGNIN_MSG: &str = "document.querySelector('#signin-msg')?.textContent ?? ''";
const STORED: &str = "[sessionStorage.getItem('telehub.token'), Object.keys(localStorage).filter(k => localStorage.getItem(k).includes('eyJ')).length, location.href]";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_with_a_token_shows_live_data_and_a_refused_token_says_so() {
    let _one = BROWSER_TESTS.lock().await;
    // Arrange: a token-mode hub, a device publishing with its device token.
    let app = crate::helpers::spawn_app_with(token_mode).await;
    let device = Device::spawn_with_token(
        app.addr,
        "greenhouse-1",
        "climate-1",
        CLIMATE,
        Duration::from_millis(100),
        Some(jwt("climate-1", "device", &["greenhouse-*"], 3600)),
    );
    let browser = Browser::launch().await;
    let page = browser.new_page(1280, 860).await;

    // Act: open the room; the hub wants a token, so the page asks for one.
    page.goto(&format!("http://{}/#/rooms/greenhouse-1", app.addr))
        .await;
    page.wait_for(SIGNIN_BOX, WAIT, "the sign-in box").await;
    let focused = page.eval("document.activeElement?.id").await;
    assert_eq!(focused, "signin-token", "the token field has the focus");
    print_screenshot("sign-in", &page.screenshot_to_dir("auth-signin").await);

    // A token signed with another secret is refused, with the hub's answer.
    let forged = sign(
        Some("main"),
        "a-different-secret-that-is-32-bytes-long",
        &claims("alice", "dashboard", &["greenhouse-*"], 3600),
    );
    type_token_and_enter(&page, "#signin-token", &forged).await;
    let msg = page
        .wait_for(
            &format!(
                "(() => {{ const t = {SIGNIN_MSG}; return t.includes('refused') ? t : ''; }})()"
            ),
            WAIT,
            "the refusal of a forged token",
        )
        .await;
    assert!(msg.as_str().unwrap().contains("401"), "{msg}");
    assert_eq!(
        page.eval("document.querySelector('#signin-msg').getAttribute('role')")
            .await,
        "alert"
    );
    assert_eq!(
        page.eval(STORED).await[0],
        Value::Null,
        "a refused token is not kept"
    );
    print_screenshot(
        "sign-in, refused",
        &page.screenshot_to_dir("auth-signin-refused").await,
    );

    // A device token is not a dashboard's: said before the hub is even asked.
    page.eval("document.querySelector('#signin-token').value = ''")
        .await;
    let dev_token = jwt("climate-1", "device", &["greenhouse-*"], 3600);
    type_token_and_enter(&page, "#signin-token", &dev_token).await;
    page.wait_for(
        &format!("{SIGNIN_MSG}.includes('device token')"),
        WAIT,
        "the device-token message",
    )
    .await;

    // The right token: the room with live values.
    page.eval("document.querySelector('#signin-token').value = ''")
        .await;
    let token = jwt("alice", "dashboard", &["greenhouse-*"], 3600);
    type_token_and_enter(&page, "#signin-token", &token).await;
    let first = page
        .wait_for(
            &value_js("climate-1", "temperature"),
            WAIT,
            "a live temperature",
        )
        .await;
    page.wait_for(
        &format!("{} !== {first}", value_js("climate-1", "temperature")),
        WAIT,
        "the temperature to change",
    )
    .await;
    page.wait_for(
        "document.querySelector('#conn').dataset.state === 'live'",
        WAIT,
        "the connection to be live",
    )
    .await;

    // Assert: the token is in sessionStorage only (not localStorage, not the URL), the
    // page connected as `alice.<tab>`, and the header says who is signed in.
    let stored = page.eval(STORED).await;
    assert_eq!(stored[0], json!(token), "kept in sessionStorage");
    assert_eq!(stored[1], 0, "nothing token-like in localStorage");
    assert!(!stored[2].as_str().unwrap().contains("eyJ"), "{stored}");
    let who = page
        .eval("[document.querySelector('#account').hidden, document.querySelector('.account-name').textContent, window.telehub.client]")
        .await;
    assert_eq!(who[0], false);
    assert_eq!(who[1], "alice");
    assert!(
        who[2].as_str().unwrap().starts_with("alice."),
        "a dashboard token connects as sub.<tab>: {who}"
    );
    print_screenshot(
        "room, signed in",
        &page.screenshot_to_dir("auth-room").await,
    );
    let (status, body) = app.get("/api/rooms").await;
    assert_eq!(status, 401, "REST without a token is still refused: {body}");

    // The home page lists the token's rooms through REST with the bearer token.
    page.eval("location.hash = '#/'").await;
    page.wait_for(
        r#"document.querySelector('[data-room="greenhouse-1"] [data-stat="devices"] .stat-num')?.textContent === '1'"#,
        WAIT,
        "the greenhouse-1 room on the home page",
    )
    .await;

    // A room outside the token: the page says so instead of retrying.
    page.eval("location.hash = '#/rooms/kitchen'").await;
    let notice = page
        .wait_for(
            r#"(() => { const t = document.querySelector('#notice').textContent; return t.includes('does not give access') ? t : ''; })()"#,
            WAIT,
            "the forbidden-room notice",
        )
        .await;
    println!("forbidden room: {notice}");
    print_screenshot(
        "room outside the token",
        &page.screenshot_to_dir("auth-forbidden-room").await,
    );

    // Sign out: the token is gone and the sign-in box is back.
    page.eval("location.hash = '#/rooms/greenhouse-1'").await;
    page.wait_for(
        &value_js("climate-1", "temperature"),
        WAIT,
        "the room again",
    )
    .await;
    page.set_color_scheme("dark").await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    print_screenshot(
        "room, signed in, dark",
        &page.screenshot_to_dir("auth-room-dark").await,
    );
    page.eval("document.querySelector('#signout').click()")
        .await;
    page.wait_for(SIGNIN_BOX, WAIT, "the sign-in box after signing out")
        .await;
    assert_eq!(page.eval(STORED).await[0], Value::Null);
    assert!(page
        .eval(SIGNIN_MSG)
        .await
        .as_str()
        .unwrap()
        .contains("Signed out"));
    print_screenshot(
        "signed out, dark",
        &page.screenshot_to_dir("auth-signed-out-dark").await,
    );
    page.set_viewport(390, 760, true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    print_screenshot(
        "sign-in, phone",
        &page.screenshot_to_dir("auth-signin-phone").await,
    );
    assert!(page.errors().is_empty(), "page errors: {:?}", page.errors());

    device.stop().await;
    drop(browser);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_is_renewed_from_the_banner_and_an_expired_one_signs_out() {
    let _one = BROWSER_TESTS.lock().await;
    // Arrange
    let app = crate::helpers::spawn_app_with(token_mode).await;
    let device = Device::spawn_with_token(
        app.addr,
        "greenhouse-1",
        "climate-1",
        CLIMATE,
        Duration::from_millis(100),
        Some(jwt("climate-1", "device", &["greenhouse-*"], 3600)),
    );
    let browser = Browser::launch().await;
    let page = browser.new_page(1280, 860).await;
    page.goto(&format!("http://{}/#/rooms/greenhouse-1", app.addr))
        .await;
    page.wait_for(SIGNIN_BOX, WAIT, "the sign-in box").await;

    // Act: sign in with a token that expires in 8 s; the hub says `token_expiring` at
    // once and the page asks for a fresh token without leaving the room.
    let short = jwt("alice", "dashboard", &["greenhouse-*"], 8);
    type_token_and_enter(&page, "#signin-token", &short).await;
    page.wait_for(
        &value_js("climate-1", "temperature"),
        WAIT,
        "a live temperature",
    )
    .await;
    page.wait_for(
        "!document.querySelector('#auth-banner').hidden && !!document.querySelector('#renew-token')",
        WAIT,
        "the expiry banner",
    )
    .await;
    print_screenshot(
        "token expiring banner",
        &page.screenshot_to_dir("auth-expiring").await,
    );
    let fresh = jwt("alice", "dashboard", &["greenhouse-*"], 3600);
    type_token_and_enter(&page, "#renew-token", &fresh).await;
    page.wait_for(
        "document.querySelector('#auth-banner').hidden",
        WAIT,
        "the banner to go once renewed",
    )
    .await;

    // Assert: past the first token's exp, the same connection is still live (no
    // reconnect) and values keep coming; the fresh token replaced the old one.
    tokio::time::sleep(Duration::from_secs(9)).await;
    let after = page
        .eval(&format!(
            "[document.querySelector('#conn').dataset.state, window.telehub.view.reconnects, window.telehub.view.closes, sessionStorage.getItem('telehub.token') === {}, {}]",
            json!(fresh),
            value_js("climate-1", "temperature")
        ))
        .await;
    assert_eq!(after[0], "live", "{after}");
    assert_eq!(after[1], 0, "no reconnect: {after}");
    assert_eq!(after[2], json!([]), "no close: {after}");
    assert_eq!(after[3], true, "{after}");
    page.wait_for(
        &format!("{} !== {}", value_js("climate-1", "temperature"), after[4]),
        WAIT,
        "values to keep changing after the first token's exp",
    )
    .await;

    // Without a renewal the token runs out: the hub closes with 4001 and the page asks
    // to sign in again, saying why.
    page.eval("document.querySelector('#signout').click()")
        .await;
    page.wait_for(SIGNIN_BOX, WAIT, "the sign-in box").await;
    let brief = jwt("alice", "dashboard", &["greenhouse-*"], 4);
    type_token_and_enter(&page, "#signin-token", &brief).await;
    page.wait_for(
        &value_js("climate-1", "temperature"),
        WAIT,
        "a live temperature",
    )
    .await;
    let expired = page
        .wait_for(
            &format!(
                "(() => {{ const t = {SIGNIN_MSG}; return t.includes('expired') ? t : ''; }})()"
            ),
            WAIT,
            "the expired message",
        )
        .await;
    println!("expired: {expired}");
    assert_eq!(page.eval(STORED).await[0], Value::Null);
    print_screenshot(
        "token expired",
        &page.screenshot_to_dir("auth-expired").await,
    );
    page.set_viewport(390, 760, true).await;
    // And the banner at phone width, in the dark theme.
    page.set_color_scheme("dark").await;
    let short = jwt("alice", "dashboard", &["greenhouse-*"], 20);
    type_token_and_enter(&page, "#signin-token", &short).await;
    page.wait_for(
        "!document.querySelector('#auth-banner').hidden",
        WAIT,
        "the expiry banner on a phone",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    print_screenshot(
        "token expiring banner, phone, dark",
        &page.screenshot_to_dir("auth-expiring-phone-dark").await,
    );
    assert!(page.errors().is_empty(), "page errors: {:?}", page.errors());

    device.stop().await;
    drop(browser);
    app.stop().await;
}
