//! The dashboard's views in a real browser (headless Chromium over `cdp.rs`, as in
//! `browser.rs`): series colours that follow the device id into the hub's plots, and
//! axes whose labels fit whatever the values.
//!
//! Devices here are WebSocket clients that send readings with explicit past times, so a
//! chart has a known history the moment the page opens. Screenshots go to
//! `target/screenshots/`.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::browser::{print_screenshot, BROWSER_TESTS, WAIT};
use crate::cdp::Browser;
use crate::helpers::{http_get, spawn_app, Client};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Connects as device `id` in `room` (the device is online while this is held).
pub(crate) async fn device(addr: SocketAddr, room: &str, id: &str) -> Client {
    Client::connect(&format!("ws://{addr}/ws/{room}/{id}?role=device"))
        .await
        .expect("device connects")
}

/// Sends `n` readings of `metric`, one every `step_ms` up to now, with `value(i)`.
pub(crate) async fn feed(
    ws: &mut Client,
    metric: &str,
    unit: &str,
    n: usize,
    step_ms: i64,
    value: impl Fn(usize) -> f64,
) {
    let end = now_ms();
    let items: Vec<Value> = (0..n)
        .map(|i| {
            let ts = end - (n - 1 - i) as i64 * step_ms;
            json!({"metric": metric, "unit": unit, "value": value(i), "ts": ts})
        })
        .collect();
    for chunk in items.chunks(200) {
        ws.send_json(json!({"type": "readings", "items": chunk}))
            .await;
    }
}

/// The computed swatch colour of `device`'s card as `#rrggbb`.
fn swatch_hex_js(device: &str) -> String {
    format!(
        r#"(() => {{
  const sw = document.querySelector('.card[data-device="{device}"] .swatch');
  if (!sw) return '';
  const m = getComputedStyle(sw).backgroundColor.match(/\d+/g);
  return m ? '#' + m.slice(0, 3).map(x => Number(x).toString(16).padStart(2, '0')).join('') : '';
}})()"#
    )
}

/// The label boxes of `metric`'s chart once it holds its history (100 points or more)
/// and has drawn since, with the canvas size.
fn label_boxes_js(metric: &str) -> String {
    format!(
        r#"(() => {{
  const c = document.querySelector('canvas[data-metric="{metric}"]');
  const ch = c?.telehubChart;
  if (!ch || !ch.labelBoxes?.length) return null;
  const n = [...ch.series.values()].reduce((a, s) => a + s.length, 0);
  if (n < 100 || ch.dirty) return null;
  return {{ width: c.getBoundingClientRect().width, height: c.getBoundingClientRect().height,
           boxes: ch.labelBoxes }};
}})()"#
    )
}

/// Every label box lies inside the canvas.
fn assert_inside(metric: &str, v: &Value) {
    let (w, h) = (v["width"].as_f64().unwrap(), v["height"].as_f64().unwrap());
    let boxes = v["boxes"].as_array().unwrap();
    assert!(boxes.len() >= 4, "{metric}: {v}");
    for b in boxes {
        let (x0, x1) = (b["x0"].as_f64().unwrap(), b["x1"].as_f64().unwrap());
        let (y0, y1) = (b["y0"].as_f64().unwrap(), b["y1"].as_f64().unwrap());
        assert!(
            x0 >= 0.0 && x1 <= w && y0 >= 0.0 && y1 <= h,
            "{metric}: label {b} is not inside the {w}x{h} canvas"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn colours_follow_the_device_into_plots_and_axis_labels_fit() {
    let _one = BROWSER_TESTS.lock().await;
    // Arrange: an odometer with 7-digit values, a GPS latitude, two climate sensors.
    let app = spawn_app().await;
    let mut odo = device(app.addr, "fleet", "odo-1").await;
    feed(&mut odo, "odometer", "m", 120, 1000, |i| {
        1_234_567.0 + i as f64 * 0.25
    })
    .await;
    let mut gps = device(app.addr, "fleet", "gps-1").await;
    feed(&mut gps, "lat", "°", 120, 1000, |i| {
        52.3836 + (i as f64 * 0.1).sin() * 0.00004
    })
    .await;
    let mut climate = Vec::new();
    for id in ["climate-1", "climate-2"] {
        let mut d = device(app.addr, "fleet", id).await;
        feed(&mut d, "temperature", "°C", 120, 1000, |i| {
            21.0 + (i as f64 * 0.05).sin()
        })
        .await;
        climate.push(d);
    }
    let browser = Browser::launch().await;
    let page = browser.new_page(1280, 900).await;

    // Act
    page.goto(&format!("http://{}/#/rooms/fleet", app.addr))
        .await;

    // Assert: the page hashes ids exactly as the hub does (the same ids and slots as
    // src/render/palette.rs's test; the last one is not ASCII).
    let slots = page
        .eval(
            r#"import('./colors.js').then(m =>
                ['climate-1', 'door-1', 'gps-1', '\u00fcn\u00efcode'].map(m.colorIndex))"#,
        )
        .await;
    assert_eq!(slots, json!([5, 7, 1, 8]));

    // Every axis label of the odometer (7 digits) and latitude charts is inside its canvas.
    for metric in ["odometer", "lat"] {
        let v = page
            .wait_for(
                &label_boxes_js(metric),
                WAIT,
                &format!("the {metric} chart"),
            )
            .await;
        println!("{metric} labels: {}", v["boxes"]);
        assert_inside(metric, &v);
    }
    let odo = page.eval(&label_boxes_js("odometer")).await;
    let texts: Vec<&str> = odo["boxes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["text"].as_str())
        .collect();
    assert!(
        texts
            .iter()
            .any(|t| t.starts_with("1.2345") && t.ends_with('M')),
        "the odometer's value labels carry 7 significant digits and an SI prefix: {texts:?}"
    );

    // A device's colour is the same after a reload, and in the hub's plot.
    let mut before = Vec::new();
    for id in ["climate-1", "climate-2", "odo-1"] {
        before.push(page.wait_for(&swatch_hex_js(id), WAIT, id).await);
    }
    assert_ne!(
        before[0], before[1],
        "two climate sensors, two slots: {before:?}"
    );
    print_screenshot(
        "colours and axes",
        &page.screenshot_to_dir("colours-axes").await,
    );
    page.eval("window.beforeReload = true; location.reload(); true")
        .await;
    page.wait_for(
        "!window.beforeReload && document.readyState === 'complete'",
        WAIT,
        "the reload",
    )
    .await;
    let mut after = Vec::new();
    for id in ["climate-1", "climate-2", "odo-1"] {
        after.push(page.wait_for(&swatch_hex_js(id), WAIT, id).await);
    }
    assert_eq!(before, after, "colours across a reload");
    let (status, svg) = http_get(
        app.addr,
        "/api/rooms/fleet/plot.svg?metric=temperature&window=5m&theme=light",
        "",
    )
    .await;
    assert_eq!(status, 200, "{svg}");
    let svg = svg.to_lowercase();
    for hex in &before[..2] {
        let hex = hex.as_str().unwrap();
        assert!(
            svg.contains(&format!("stroke=\"{hex}\"")),
            "the plot draws a line in {hex}"
        );
    }

    // The dark theme has its own shades, still from the same slot (climate-2's slot,
    // blue, is one whose shades differ).
    page.set_color_scheme("dark").await;
    let dark = page
        .wait_for(
            &format!(
                "(() => {{ const c = {}; return c !== {} ? c : ''; }})()",
                swatch_hex_js("climate-2"),
                before[1]
            ),
            WAIT,
            "climate-2's dark shade",
        )
        .await;
    let (status, svg) = http_get(
        app.addr,
        "/api/rooms/fleet/plot.svg?metric=temperature&window=5m&theme=dark",
        "",
    )
    .await;
    assert_eq!(status, 200);
    assert!(svg
        .to_lowercase()
        .contains(&format!("stroke=\"{}\"", dark.as_str().unwrap())));
    tokio::time::sleep(Duration::from_millis(600)).await;
    print_screenshot(
        "colours and axes, dark",
        &page.screenshot_to_dir("colours-axes-dark").await,
    );
    assert!(page.errors().is_empty(), "page errors: {:?}", page.errors());

    drop(browser);
    app.stop().await;
}

/// The metrics of the panels shown, in order.
const PANELS_JS: &str =
    "[...document.querySelectorAll('figure.chart')].map(f => f.dataset.metric).join(',')";

/// Clicks the button labelled `aria` in the panel of `metric`.
fn click_js(metric: &str, aria: &str) -> String {
    format!(
        r#"(() => {{ const b = document.querySelector('figure.chart[data-metric="{metric}"] button[aria-label="{aria}"]');
            if (!b) return false; b.click(); return true; }})()"#
    )
}

/// The legend entries of the panel of `metric`.
fn legend_js(metric: &str) -> String {
    format!(
        r#"[...document.querySelectorAll('figure.chart[data-metric="{metric}"] .legend li')].map(l => l.textContent).sort().join(',')"#
    )
}

async fn click(page: &crate::cdp::Page, js: &str) {
    assert_eq!(page.eval(js).await, json!(true), "{js}");
}

/// The "wall" layout of the test below: pressure (pinned), then a wide temperature
/// chart with t1's humidity overlaid (a chart of several metrics names each line
/// device · metric).
async fn expect_saved_view(p: &crate::cdp::Page) {
    p.wait_for(
        &format!(
            "{PANELS_JS} === 'pressure,temperature' && {} === 't1 · humidity,t1 · temperature,t2 · temperature'",
            legend_js("temperature")
        ),
        WAIT,
        "the saved layout",
    )
    .await;
    let wide = p
        .eval("document.querySelector('figure.chart[data-metric=\"temperature\"]').classList.contains('size-wide')")
        .await;
    assert_eq!(wide, json!(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layout_edited_in_one_browser_is_saved_and_shown_in_another() {
    let _one = BROWSER_TESTS.lock().await;
    // Arrange: two devices with three metrics each.
    let app = spawn_app().await;
    let mut devices = Vec::new();
    for (k, id) in ["t1", "t2"].into_iter().enumerate() {
        let mut d = device(app.addr, "lab", id).await;
        for (m, unit, base) in [
            ("temperature", "°C", 21.0),
            ("humidity", "%", 45.0),
            ("pressure", "hPa", 1013.0),
        ] {
            feed(&mut d, m, unit, 60, 1000, |i| {
                base + k as f64 + (i as f64 * 0.1).sin()
            })
            .await;
        }
        devices.push(d);
    }
    let browser = Browser::launch().await;
    let page = browser.new_page(1280, 1000).await;
    let url = format!("http://{}/#/rooms/lab", app.addr);
    page.goto(&url).await;
    page.wait_for(
        &format!("{PANELS_JS} === 'humidity,pressure,temperature'"),
        WAIT,
        "one automatic chart per metric, by name",
    )
    .await;

    // Act: move temperature to the front, hide humidity, pin pressure, overlay t1's
    // humidity on the temperature chart and make it wide; save as the default "wall".
    page.eval("document.querySelector('[data-testid=\"layout-bar\"] button').click()")
        .await;
    page.wait_for(
        &click_js("temperature", "Move earlier: temperature"),
        WAIT,
        "edit buttons",
    )
    .await;
    click(&page, &click_js("temperature", "Move earlier: temperature")).await;
    assert_eq!(page.eval(PANELS_JS).await, "temperature,humidity,pressure");
    click(&page, &click_js("humidity", "Hide humidity")).await;
    click(&page, &click_js("pressure", "Pin pressure")).await;
    assert_eq!(page.eval(PANELS_JS).await, "pressure,temperature");
    let overlaid = page
        .eval(
            r#"(() => { const s = document.querySelector('figure.chart[data-metric="temperature"] select.overlay-pick');
                s.value = 't1\u0000humidity'; s.dispatchEvent(new Event('change')); return true; })()"#,
        )
        .await;
    assert_eq!(overlaid, json!(true));
    click(
        &page,
        &click_js("temperature", "Change the size of temperature, humidity"),
    )
    .await;
    page.wait_for(
        &format!(
            "{} === 't1 · humidity,t1 · temperature,t2 · temperature'",
            legend_js("temperature")
        ),
        WAIT,
        "the overlay in the temperature chart's legend",
    )
    .await;
    print_screenshot(
        "layout, editing",
        &page.screenshot_to_dir("layout-editing").await,
    );
    page.eval("document.querySelector('#layout-name').value = 'wall'")
        .await;
    page.eval("[...document.querySelectorAll('.layout-edit button')].find(b => b.textContent === 'Save layout').click()").await;
    page.wait_for(
        "document.querySelector('[data-testid=\"layout-bar\"] [role=status]').textContent.includes('Saved')",
        WAIT,
        "the save",
    )
    .await;

    // Assert: the hub has it, the URL names it, and a reload shows it.
    let (status, body) = http_get(app.addr, "/api/rooms/lab/layout", "").await;
    assert_eq!(status, 200);
    let saved: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(saved["default"], "wall", "{saved}");
    assert_eq!(
        saved["layouts"][0]["hidden_metrics"],
        json!(["humidity"]),
        "{saved}"
    );
    assert!(page
        .eval("location.hash")
        .await
        .as_str()
        .unwrap()
        .ends_with("?layout=wall"));
    page.eval("window.beforeReload = true; location.reload(); true")
        .await;
    page.wait_for(
        "!window.beforeReload && document.readyState === 'complete'",
        WAIT,
        "the reload",
    )
    .await;
    expect_saved_view(&page).await;

    // A second browser (its own context) opening the plain room URL gets the default.
    let other = browser.new_context_page(1280, 1000).await;
    other.goto(&url).await;
    expect_saved_view(&other).await;
    print_screenshot(
        "layout, second browser",
        &other.screenshot_to_dir("layout-second-browser").await,
    );
    // ?layout= picks a layout by name; an unknown name says so and shows the automatic one.
    other.goto(&format!("{url}?layout=nope")).await;
    other.wait_for(
        &format!("{PANELS_JS} === 'humidity,pressure,temperature' && document.querySelector('#notice').textContent.includes('nope')"),
        WAIT,
        "the automatic layout and a notice",
    )
    .await;

    // Reset to automatic: the layout is gone from the hub and the view is automatic.
    page.eval("document.querySelector('[data-testid=\"layout-bar\"] button').click()")
        .await;
    page.eval("[...document.querySelectorAll('.layout-edit button')].find(b => b.textContent === 'Reset to automatic').click()").await;
    page.wait_for(
        &format!("{PANELS_JS} === 'humidity,pressure,temperature'"),
        WAIT,
        "the automatic view",
    )
    .await;
    let (_, body) = http_get(app.addr, "/api/rooms/lab/layout", "").await;
    let reset: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reset["layouts"], json!([]), "{reset}");
    for p in [&page, &other] {
        assert!(p.errors().is_empty(), "page errors: {:?}", p.errors());
    }
    drop(devices);
    drop(browser);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_door_sensor_shows_as_a_state_timeline_with_open_and_closed_spans() {
    let _one = BROWSER_TESTS.lock().await;
    // Arrange: a door that opened three times in the last five minutes, and a thermometer.
    let app = spawn_app().await;
    let mut door = device(app.addr, "hall", "door-1").await;
    feed(&mut door, "open", "", 6, 50_000, |i| (i % 2) as f64).await;
    let mut temp = device(app.addr, "hall", "t1").await;
    feed(&mut temp, "temperature", "°C", 30, 4_000, |i| {
        20.0 + i as f64 * 0.1
    })
    .await;
    let browser = Browser::launch().await;
    let page = browser.new_page(1280, 800).await;

    // Act
    page.goto(&format!("http://{}/#/rooms/hall", app.addr))
        .await;

    // Assert: the 0/1 series is a timeline naming its states; the other stays a line.
    let spans = page
        .wait_for(
            r#"(() => { const f = document.querySelector('figure.chart[data-metric="open"][data-kind="timeline"]');
                const ch = f?.querySelector('canvas').telehubChart;
                if (!ch?.spans || ch.spans.length < 6) return null;
                return ch.spans.map(s => s.label).join(','); })()"#,
            WAIT,
            "a state timeline of the door",
        )
        .await;
    assert_eq!(spans, "closed,open,closed,open,closed,open", "{spans}");
    let kinds = page
        .eval("[...document.querySelectorAll('figure.chart')].map(f => f.dataset.metric + ':' + f.dataset.kind).join(',')")
        .await;
    assert_eq!(kinds, "open:timeline,temperature:timeseries");
    let label = page
        .eval("document.querySelector('figure.chart[data-metric=\"open\"] canvas').getAttribute('aria-label')")
        .await;
    assert!(
        label
            .as_str()
            .unwrap()
            .starts_with("State timeline of open"),
        "{label}"
    );
    print_screenshot(
        "state timeline",
        &page.screenshot_to_dir("panel-timeline").await,
    );

    // A value other than 0 or 1 makes it a line chart.
    feed(&mut door, "open", "", 1, 1, |_| 0.5).await;
    page.wait_for(
        "document.querySelector('figure.chart[data-metric=\"open\"]')?.dataset.kind === 'timeseries'",
        WAIT,
        "the door chart to become a line chart",
    )
    .await;
    assert!(page.errors().is_empty(), "page errors: {:?}", page.errors());
    drop((door, temp));
    drop(browser);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gps_tracker_shows_a_track_and_a_layout_shows_stat_and_gauge_panels() {
    let _one = BROWSER_TESTS.lock().await;
    // Arrange: a tracker driving north-east at about 36 km/h, and a thermometer.
    let app = spawn_app().await;
    let mut gps = device(app.addr, "fleet", "gps-1").await;
    feed(&mut gps, "lat", "°", 60, 2000, |i| {
        52.3836 + i as f64 * 0.000127
    })
    .await;
    feed(&mut gps, "lon", "°", 60, 2000, |i| {
        4.9003 + i as f64 * 0.000208
    })
    .await;
    feed(&mut gps, "speed", "km/h", 60, 2000, |_| 36.0).await;
    let mut temp = device(app.addr, "fleet", "t1").await;
    feed(&mut temp, "temperature", "°C", 60, 2000, |i| {
        20.0 + i as f64 * 0.05
    })
    .await;
    let layout = json!({"layouts": [{"name": "kinds", "panels": [
        {"kind": "stat", "series": [{"metric": "temperature"}]},
        {"kind": "gauge", "min": 0.0, "max": 40.0, "series": [{"metric": "temperature", "device": "t1"}]}]}]});
    let (status, _) =
        crate::layout::put(app.addr, "/api/rooms/fleet/layout", &layout.to_string(), "").await;
    assert_eq!(status, 200);
    // An alert rule on the temperature: the gauge marks its threshold.
    let rule = r#"{"id":"warm","room":"fleet","metric":"temperature","above":30.0}"#;
    let (status, body) =
        telehub_testkit::http::http_post(app.addr, "/api/alerts/rules", rule).await;
    assert_eq!(status, 201, "{body}");
    let browser = Browser::launch().await;
    let page = browser.new_page(1280, 800).await;

    // Act
    page.goto(&format!("http://{}/#/rooms/fleet", app.addr))
        .await;

    // Assert: lat and lon are one track panel (speed stays a chart), drawn with its points.
    let track = page
        .wait_for(
            r#"(() => { const ch = document.querySelector('figure.chart[data-kind="track"] canvas')?.telehubChart;
                const t = ch?.track; return t?.devices?.[0]?.points >= 50 ? t : null; })()"#,
            WAIT,
            "a GPS track",
        )
        .await;
    assert_eq!(track["devices"][0]["device"], "gps-1", "{track}");
    let latest = &track["latest"][0];
    assert!(
        (latest["lat"].as_f64().unwrap() - (52.3836 + 59.0 * 0.000127)).abs() < 1e-9,
        "{track}"
    );
    let kmh = latest["speed_kmh"].as_f64().unwrap();
    assert!(
        (30.0..45.0).contains(&kmh),
        "speed from the fixes: {kmh} km/h"
    );
    let kinds = page
        .eval("[...document.querySelectorAll('figure.chart')].map(f => f.dataset.metric + ':' + f.dataset.kind).join(',')")
        .await;
    assert_eq!(kinds, "lat:track,speed:timeseries,temperature:timeseries");
    print_screenshot("GPS track", &page.screenshot_to_dir("panel-track").await);

    // A layout by URL: a stat and a gauge of the temperature, then the automatic rest.
    page.goto(&format!("http://{}/#/rooms/fleet?layout=kinds", app.addr))
        .await;
    let stat = page
        .wait_for(
            r#"(() => { const ch = document.querySelector('figure.chart[data-kind="stat"] canvas')?.telehubChart;
                const n = ch ? [...ch.series.values()].reduce((a, s) => a + s.length, 0) : 0;
                return n >= 50 && !ch.dirty ? ch.stat : null; })()"#,
            WAIT,
            "the stat panel",
        )
        .await;
    assert!(stat["text"].as_str().unwrap().ends_with("°C"), "{stat}");
    assert_eq!(stat["trend"], "▲", "the temperature rises: {stat}");
    let gauge = page
        .wait_for(
            r#"(() => { const g = document.querySelector('figure.chart[data-kind="gauge"] canvas')?.telehubChart?.gauge;
                return g?.thresholds?.length ? g : null; })()"#,
            WAIT,
            "the gauge panel",
        )
        .await;
    let f = gauge["fraction"].as_f64().unwrap();
    assert!((0.5..0.6).contains(&f), "about 23 of 0..40: {gauge}");
    assert_eq!(
        gauge["thresholds"][0].as_f64(),
        Some(30.0),
        "the rule's threshold: {gauge}"
    );
    print_screenshot(
        "stat and gauge",
        &page.screenshot_to_dir("panel-stat-gauge").await,
    );
    assert!(page.errors().is_empty(), "page errors: {:?}", page.errors());
    drop((gps, temp));
    drop(browser);
    app.stop().await;
}

/// A slippy-map tile server on a free loopback port: every `/{z}/{x}/{y}.svg` is a
/// plain square of one colour, readable by the page's canvas (CORS), and each path
/// asked for is kept.
async fn tile_server() -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let asked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = asked.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                seen.lock().expect("lock").push(path);
                let body = r##"<svg xmlns="http://www.w3.org/2000/svg" width="256" height="256"><rect width="256" height="256" fill="#3a7d44"/></svg>"##;
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: image/svg+xml\r\nAccess-Control-Allow-Origin: *\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    (addr, asked)
}

/// The slippy-map tile (x, y) holding (lat, lon) at zoom `z` (Web Mercator).
fn tile_of(lat: f64, lon: f64, z: u32) -> (u32, u32) {
    let n = f64::from(1u32 << z);
    let x = ((lon + 180.0) / 360.0 * n).floor();
    let r = lat.to_radians();
    let y = ((1.0 - (r.tan() + 1.0 / r.cos()).ln() / std::f64::consts::PI) / 2.0 * n).floor();
    (x as u32, y as u32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gps_track_is_drawn_over_map_tiles_from_the_configured_server() {
    let _one = BROWSER_TESTS.lock().await;
    // Arrange: a tile server, a hub that names it, and a tracker in Amsterdam.
    let (tiles, asked) = tile_server().await;
    let template = format!("http://{tiles}/{{z}}/{{x}}/{{y}}.svg");
    let app = crate::helpers::spawn_app_with(|s| {
        s.dashboard.map_tiles = template.clone();
        s.dashboard.map_attribution = "test tiles".into();
        s.dashboard.map_max_zoom = 16;
    })
    .await;
    let (status, body) = http_get(app.addr, "/api/dashboard", "").await;
    assert_eq!(status, 200, "{body}");
    let settings: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(settings["map"]["tiles"], template.as_str());
    assert_eq!(settings["map"]["max_zoom"], 16);
    let mut gps = device(app.addr, "fleet", "gps-1").await;
    feed(&mut gps, "lat", "°", 30, 2000, |i| {
        52.3836 + i as f64 * 0.000127
    })
    .await;
    feed(&mut gps, "lon", "°", 30, 2000, |i| {
        4.9003 + i as f64 * 0.000208
    })
    .await;
    let browser = Browser::launch().await;
    let page = browser.new_page(1280, 800).await;

    // Act
    page.goto(&format!("http://{}/#/rooms/fleet", app.addr))
        .await;

    // Assert: the track asks for the tiles around its fixes and draws them under it.
    let track = page
        .wait_for(
            r#"(() => { const ch = document.querySelector('figure.chart[data-kind="track"] canvas')?.telehubChart;
                const t = ch?.track; if (!(t?.devices?.[0]?.points >= 25 && t.map)) return null;
                const [r, g, b] = ch.ctx.getImageData(3, 3, 1, 1).data;
                return r === 0x3a && g === 0x7d && b === 0x44 ? t : null; })()"#,
            WAIT,
            "a track over the tile server's tiles",
        )
        .await;
    let z = track["map"]["z"].as_u64().expect("zoom") as u32;
    assert!((10..=16).contains(&z), "a city-scale zoom: {track}");
    let (x, y) = tile_of(52.3836 + 29.0 * 0.000127, 4.9003 + 29.0 * 0.000208, z);
    let want = format!("/{z}/{x}/{y}.svg");
    let got = asked.lock().expect("lock").clone();
    assert!(
        got.contains(&want),
        "the tile of the latest fix, {want}, in {got:?}"
    );
    assert!(
        got.iter().all(|p| p.starts_with(&format!("/{z}/"))),
        "{got:?}"
    );
    print_screenshot(
        "GPS track over map tiles",
        &page.screenshot_to_dir("panel-track-tiles").await,
    );
    assert!(page.errors().is_empty(), "page errors: {:?}", page.errors());
    drop(gps);
    drop(browser);
    app.stop().await;
}

/// Presses `key` (with its DOM `code` and Windows key code) in `page`.
async fn press(page: &crate::cdp::Page, key: &str, code: u32, text: &str) {
    for kind in ["keyDown", "keyUp"] {
        page.call(
            "Input.dispatchKeyEvent",
            json!({"type": kind, "key": key, "code": key, "windowsVirtualKeyCode": code,
                   "text": if kind == "keyDown" { text } else { "" }}),
        )
        .await;
    }
}

/// Presses Tab until `expr` (about `document.activeElement`) is true; panics after 120.
async fn tab_to(page: &crate::cdp::Page, expr: &str, what: &str) -> usize {
    for n in 1..=120 {
        press(page, "Tab", 9, "").await;
        if page.eval(expr).await == json!(true) {
            return n;
        }
    }
    panic!("Tab never reached {what}");
}

/// The focused element's outline, as the page shows it (focus must be visible).
const FOCUS_RING: &str = "(() => { const cs = getComputedStyle(document.activeElement); \
    return cs.outlineStyle !== 'none' && parseFloat(cs.outlineWidth) >= 2; })()";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyboard_only_sends_a_command_with_visible_focus_and_charts_have_text() {
    let _one = BROWSER_TESTS.lock().await;
    // Arrange
    let app = spawn_app().await;
    let dev = crate::browser::Device::spawn(
        app.addr,
        "desk",
        "climate-1",
        &[("temperature", "°C", 21.5)],
        Duration::from_millis(200),
    );
    let browser = Browser::launch().await;
    let page = browser.new_page(1280, 900).await;
    page.goto(&format!("http://{}/#/rooms/desk", app.addr))
        .await;
    page.wait_for(
        r#"document.querySelector('[data-device="climate-1"] [data-testid="presence"]')?.textContent.startsWith('online')"#,
        WAIT,
        "climate-1 online",
    )
    .await;

    // Act: from the top of the page, with the keyboard only: Tab to the card's
    // Controls, open them, Tab to the interval, type it, Tab to Send, press Enter.
    page.eval("document.activeElement?.blur(); window.scrollTo(0, 0); true")
        .await;
    let presses = tab_to(
        &page,
        r#"document.activeElement?.matches('[data-device="climate-1"] summary')"#,
        "the Controls of climate-1",
    )
    .await;
    assert_eq!(
        page.eval(FOCUS_RING).await,
        json!(true),
        "the focus is visible on Controls"
    );
    press(&page, "Enter", 13, "\r").await;
    page.wait_for(
        "document.querySelector('[data-device=\"climate-1\"] details').open",
        WAIT,
        "the Controls open",
    )
    .await;
    tab_to(
        &page,
        "document.activeElement?.name === 'command'",
        "the command picker",
    )
    .await;
    assert_eq!(
        page.eval(FOCUS_RING).await,
        json!(true),
        "the focus is visible on the picker"
    );
    assert_eq!(
        page.eval("document.activeElement.value").await,
        "set_interval"
    );
    tab_to(
        &page,
        "document.activeElement?.name === 'arg'",
        "the interval field",
    )
    .await;
    // Ctrl+A, then type over the default.
    for kind in ["keyDown", "keyUp"] {
        page.call(
            "Input.dispatchKeyEvent",
            json!({"type": kind, "key": "a", "code": "KeyA", "windowsVirtualKeyCode": 65,
                   "modifiers": 2, "commands": ["selectAll"]}),
        )
        .await;
    }
    page.call("Input.insertText", json!({"text": "250"})).await;
    tab_to(
        &page,
        "document.activeElement?.textContent === 'Send'",
        "Send",
    )
    .await;
    assert_eq!(
        page.eval(FOCUS_RING).await,
        json!(true),
        "the focus is visible on Send"
    );
    press(&page, "Enter", 13, "\r").await;

    // Assert: the device got the command and the card shows its ack.
    page.wait_for(
        r#"document.querySelector('[data-device="climate-1"] [data-testid="cmd-status"]').textContent.includes('acknowledged')"#,
        WAIT,
        "the ack on the card",
    )
    .await;
    let got = dev.commands.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["name"], "set_interval");
    assert_eq!(got[0]["args"], json!({"ms": 250}));
    println!("{presses} Tab presses to the Controls");
    print_screenshot(
        "keyboard, command sent",
        &page.screenshot_to_dir("keyboard-command").await,
    );

    // The chart has a text alternative: latest, min and max over the window.
    let alt = page
        .wait_for(
            r#"(() => { const c = document.querySelector('canvas[data-metric="temperature"]');
                const d = document.getElementById(c.getAttribute('aria-describedby'));
                return d && d.textContent.includes('min') ? d.textContent : ''; })()"#,
            WAIT,
            "the chart's text alternative",
        )
        .await;
    let alt = alt.as_str().unwrap();
    assert!(
        alt.contains("climate-1: latest") && alt.contains("max"),
        "{alt}"
    );
    assert!(page.errors().is_empty(), "page errors: {:?}", page.errors());
    dev.stop().await;
    drop(browser);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kiosk_mode_hides_controls_shows_staleness_and_recovers_after_a_hub_restart() {
    let _one = BROWSER_TESTS.lock().await;
    // Arrange
    let hub = spawn_app().await;
    let addr = hub.addr;
    let dev = crate::browser::Device::spawn(
        addr,
        "plant",
        "meter-1",
        &[("power", "W", 1200.0)],
        Duration::from_millis(100),
    );
    let browser = Browser::launch().await;
    let page = browser.new_page(1920, 1080).await;

    // Act
    page.goto(&format!("http://{addr}/#/rooms/plant?kiosk=1"))
        .await;

    // Assert: kiosk look (no controls, large text), live, the Wake Lock asked for.
    page.wait_for(
        "document.documentElement.classList.contains('kiosk') && window.telehub.view?.conn === 'live' && window.telehub.view.readings > 5",
        WAIT,
        "a live kiosk page",
    )
    .await;
    let look = page
        .eval(
            r#"[document.querySelector('.room-tools').offsetParent === null,
                document.querySelector('[data-device="meter-1"] details.controls')?.offsetParent === null,
                parseFloat(getComputedStyle(document.documentElement).fontSize)]"#,
        )
        .await;
    assert_eq!(look[0], json!(true), "controls hidden: {look}");
    assert_eq!(look[1], json!(true), "device controls hidden: {look}");
    assert!(look[2].as_f64().unwrap() >= 24.0, "large text: {look}");
    let wake = page
        .wait_for(
            "window.telehub.view.kiosk.wakeLock !== 'requesting' && window.telehub.view.kiosk.wakeLock",
            WAIT,
            "the Wake Lock answer",
        )
        .await;
    println!("Wake Lock in headless Chromium: {wake}");
    print_screenshot("kiosk", &page.screenshot_to_dir("kiosk").await);

    // The hub goes away: the page says how old its data is.
    hub.stop().await;
    let banner = page
        .wait_for(
            "(() => { const b = document.querySelector('#kiosk-stale'); return b && !b.hidden && b.textContent.includes('old') ? b.textContent : ''; })()",
            WAIT,
            "the staleness banner",
        )
        .await;
    println!("while the hub is down: {banner}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    print_screenshot(
        "kiosk, hub down",
        &page.screenshot_to_dir("kiosk-stale").await,
    );
    let before = page
        .eval("window.telehub.view.readings")
        .await
        .as_u64()
        .unwrap();

    // It comes back by itself once the hub is back, and the banner goes.
    let hub = crate::helpers::spawn_app_at(addr).await;
    page.wait_for(
        &format!("window.telehub.view.conn === 'live' && window.telehub.view.readings > {before} + 10 && document.querySelector('#kiosk-stale').hidden"),
        WAIT,
        "the kiosk page live again",
    )
    .await;
    assert!(page.errors().is_empty(), "page errors: {:?}", page.errors());
    dev.stop().await;
    drop(browser);
    hub.stop().await;
}

async fn mouse(page: &crate::cdp::Page, kind: &str, x: f64, y: f64, clicks: u32) {
    page.call(
        "Input.dispatchMouseEvent",
        json!({"type": kind, "x": x, "y": y, "button": "left", "buttons": if kind == "mouseReleased" { 0 } else { 1 },
               "clickCount": clicks}),
    )
    .await;
}

/// The zoomed view of the `level` chart once its range has arrived from the hub.
const ZOOMED_JS: &str = r#"(() => { const ch = document.querySelector('canvas[data-metric="level"]').telehubChart;
    const v = ch.view; if (!v || v.loading || !v.fetched) return null;
    let min = Infinity; for (const s of v.series.values()) if (s.length) min = Math.min(min, s.ts[s.start]);
    return { from: v.from, to: v.to, step: v.fetched.step, points: v.points, oldest: min,
             live_button: !document.querySelector('figure.chart[data-metric="level"] .chart-tools button.primary').hidden }; })()"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zooming_out_and_drag_zooming_into_the_last_hour_loads_the_range_from_rest() {
    let _one = BROWSER_TESTS.lock().await;
    // Arrange: an hour of readings, one every 10 s (the live chart holds 15 minutes).
    let app = spawn_app().await;
    let mut d = device(app.addr, "tank", "level-1").await;
    feed(&mut d, "level", "cm", 360, 10_000, |i| {
        100.0 + (i as f64 * 0.05).sin() * 20.0
    })
    .await;
    let browser = Browser::launch().await;
    let page = browser.new_page(1280, 800).await;
    page.goto(&format!("http://{}/#/rooms/tank", app.addr))
        .await;
    page.wait_for(
        "document.querySelector('canvas[data-metric=\"level\"]')?.telehubChart?.plot && [...document.querySelector('canvas[data-metric=\"level\"]').telehubChart.series.values()].some(s => s.length > 50)",
        WAIT,
        "the level chart with its 15 minutes",
    )
    .await;
    let now = now_ms() as f64;

    // Act: focus the chart and zoom out with the keyboard to 80 minutes.
    page.eval("document.querySelector('canvas[data-metric=\"level\"]').focus(); true")
        .await;
    for _ in 0..4 {
        press(&page, "-", 189, "-").await;
    }

    // Assert: the chart asked the hub for the range and draws points from 60 minutes ago,
    // which the live series (15 minutes) do not have.
    let out = page
        .wait_for(
            &format!("(() => {{ const z = {ZOOMED_JS}; return z && z.to - z.from > 70 * 60e3 ? z : null; }})()"),
            WAIT,
            "the zoomed-out range from REST",
        )
        .await;
    println!("zoomed out: {out}");
    assert!(out["points"].as_u64().unwrap() >= 300, "{out}");
    assert!(out["oldest"].as_f64().unwrap() < now - 55.0 * 60e3, "{out}");
    assert_eq!(out["live_button"], json!(true));
    let asked = page
        .eval("performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('/history?') && n.includes('to=')).length")
        .await;
    assert!(
        asked.as_u64().unwrap() >= 1,
        "history requests with a range: {asked}"
    );

    // Drag across the middle of the plot: the chart zooms into that span, finer.
    let r = page
        .eval("(() => { const c = document.querySelector('canvas[data-metric=\"level\"]'); const b = c.getBoundingClientRect(); const p = c.telehubChart.plot; return [b.left + p.padL, p.pw, b.top + b.height / 2]; })()")
        .await;
    let (left, pw, y) = (
        r[0].as_f64().unwrap(),
        r[1].as_f64().unwrap(),
        r[2].as_f64().unwrap(),
    );
    mouse(&page, "mousePressed", left + pw * 0.2, y, 1).await;
    mouse(&page, "mouseMoved", left + pw * 0.3, y, 1).await;
    mouse(&page, "mouseMoved", left + pw * 0.4, y, 1).await;
    print_screenshot("drag-zoom", &page.screenshot_to_dir("zoom-drag").await);
    mouse(&page, "mouseReleased", left + pw * 0.4, y, 1).await;
    let zin = page
        .wait_for(
            &format!("(() => {{ const z = {ZOOMED_JS}; return z && z.to - z.from < 25 * 60e3 ? z : null; }})()"),
            WAIT,
            "the dragged range from REST",
        )
        .await;
    println!("dragged: {zin}");
    let span = zin["to"].as_f64().unwrap() - zin["from"].as_f64().unwrap();
    assert!(
        (12.0 * 60e3..20.0 * 60e3).contains(&span),
        "a fifth of 80 minutes: {zin}"
    );
    assert!(
        zin["to"].as_f64().unwrap() < now - 30.0 * 60e3,
        "in the past: {zin}"
    );
    assert!(zin["points"].as_u64().unwrap() >= 60, "{zin}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    print_screenshot("zoomed", &page.screenshot_to_dir("zoom-in").await);

    // Double-click: back to live.
    mouse(&page, "mousePressed", left + pw * 0.5, y, 1).await;
    mouse(&page, "mouseReleased", left + pw * 0.5, y, 1).await;
    mouse(&page, "mousePressed", left + pw * 0.5, y, 2).await;
    mouse(&page, "mouseReleased", left + pw * 0.5, y, 2).await;
    page.wait_for(
        "document.querySelector('canvas[data-metric=\"level\"]').telehubChart.view === null",
        WAIT,
        "live again",
    )
    .await;
    assert!(page.errors().is_empty(), "page errors: {:?}", page.errors());
    drop(d);
    drop(browser);
    app.stop().await;
}

/// The zoom state of the panel of `kind` once its range has arrived from the hub: the
/// range, its step, the Live button, and what the chart drew of it.
fn zoom_state_js(kind: &str) -> String {
    format!(
        r#"(() => {{ const f = document.querySelector('figure.chart[data-kind="{kind}"]');
    const ch = f?.querySelector('canvas').telehubChart; const v = ch?.view;
    if (!v || v.loading || !v.fetched) return null;
    const out = {{ from: v.from, to: v.to, step: v.fetched.step, points: v.points,
                  live_button: !f.querySelector('.zoom-live').hidden, zoomed: f.classList.contains('zoomed') }};
    if (ch.spans) out.spans = ch.spans.map(s => ({{ from: s.from, label: s.label }}));
    if (ch.track) {{
      // Every fix as the chart pairs it, from the fetched series.
      const pts = (ch.tracks(v.series, v.from, v.to, !!v.step)[0] || {{ pts: [] }}).pts;
      out.fixes = pts.length;
      out.oldest = pts.length ? pts[0].t : null;
      out.worst_pairing = Math.max(0, ...pts.map(p => Math.abs((p.lon - 4.9) - 2 * (p.lat - 52.0))));
    }}
    return out; }})()"#
    )
}

/// [left of the plot, its width, a y inside it] of the panel of `kind`, scrolled into view.
async fn plot_box(page: &crate::cdp::Page, kind: &str) -> (f64, f64, f64) {
    let r = page
        .eval(&format!(
            r#"(() => {{ const c = document.querySelector('figure.chart[data-kind="{kind}"] canvas');
    c.scrollIntoView({{ block: 'center' }}); const b = c.getBoundingClientRect(); const p = c.telehubChart.plot;
    return [b.left + p.padL, p.pw, b.top + b.height * 0.4]; }})()"#
        ))
        .await;
    (
        r[0].as_f64().unwrap(),
        r[1].as_f64().unwrap(),
        r[2].as_f64().unwrap(),
    )
}

/// History requests (by the browser's resource timing) for `metric` with `needle` in
/// their query.
fn asked_js(metric: &str, needle: &str) -> String {
    format!(
        "performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('/history?') && n.includes('metric={metric}') && n.includes('{needle}')).length"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_timelines_and_gps_tracks_zoom_and_pan_into_the_past_like_charts() {
    let _one = BROWSER_TESTS.lock().await;
    // Arrange: an hour of a door that changes state every 5 minutes, and an hour of a GPS
    // tracker whose longitude moves twice as fast as its latitude (lon - 4.9 = 2 (lat -
    // 52)), so a fix paired with the wrong longitude shows. The live series hold 15 minutes.
    let app = crate::helpers::spawn_app_with(|s| {
        s.limits.rate_per_sec = 100_000.0;
        s.limits.rate_burst = 100_000.0;
    })
    .await;
    let mut door = device(app.addr, "yard", "door-1").await;
    feed(&mut door, "open", "", 120, 30_000, |i| {
        ((i / 10) % 2) as f64
    })
    .await;
    let mut gps = device(app.addr, "yard", "gps-1").await;
    let end = now_ms();
    let fixes: Vec<Value> = (0..180)
        .flat_map(|i| {
            let ts = end - (179 - i) as i64 * 20_000;
            let lat = 52.0 + i as f64 * 0.0001;
            [
                json!({"metric": "lat", "unit": "°", "value": lat, "ts": ts}),
                json!({"metric": "lon", "unit": "°", "value": 4.9 + 2.0 * (lat - 52.0), "ts": ts}),
            ]
        })
        .collect();
    for chunk in fixes.chunks(120) {
        gps.send_json(json!({"type": "readings", "items": chunk}))
            .await;
    }
    let browser = Browser::launch().await;
    let page = browser.new_page(1280, 900).await;
    page.goto(&format!("http://{}/#/rooms/yard", app.addr))
        .await;
    page.wait_for(
        r#"(() => { const t = document.querySelector('figure.chart[data-kind="timeline"] canvas')?.telehubChart;
            const g = document.querySelector('figure.chart[data-kind="track"] canvas')?.telehubChart;
            return !!(t?.plot && t.spans?.length >= 1 && g?.plot && g.track?.devices?.[0]?.points >= 10); })()"#,
        WAIT,
        "a door timeline and a GPS track, live",
    )
    .await;
    assert_eq!(
        page.eval("import('./zoom.js').then(m => m.activeZooms())")
            .await,
        json!(2),
        "the timeline and the track are zoomable"
    );
    let now = now_ms() as f64;

    // Act: focus the timeline and zoom out with the keyboard, 5 minutes to 80.
    page.eval(
        "document.querySelector('figure.chart[data-kind=\"timeline\"] canvas').focus(); true",
    )
    .await;
    for _ in 0..4 {
        press(&page, "-", 189, "-").await;
    }

    // Assert: the timeline fetched the 80 minutes from REST at a step (3 s: 1,600
    // buckets) and draws door states from an hour ago, which the live series lack.
    let out = page
        .wait_for(
            &format!(
                "(() => {{ const z = {}; return z && z.to - z.from > 70 * 60e3 ? z : null; }})()",
                zoom_state_js("timeline")
            ),
            WAIT,
            "the timeline's zoomed-out range from REST",
        )
        .await;
    println!(
        "timeline zoomed out: {}",
        json!({"from": out["from"], "to": out["to"], "step": out["step"], "points": out["points"]})
    );
    assert_eq!(out["step"], "3s", "{out}");
    assert_eq!(
        (out["live_button"].clone(), out["zoomed"].clone()),
        (json!(true), json!(true))
    );
    assert!(out["points"].as_u64().unwrap() >= 110, "{out}");
    let spans = out["spans"].as_array().unwrap();
    assert!(
        spans
            .iter()
            .any(|s| s["from"].as_f64().unwrap() < now - 50.0 * 60e3),
        "a door state from an hour ago: {out}"
    );
    assert!(
        spans.iter().any(|s| s["label"] == "open") && spans.iter().any(|s| s["label"] == "closed")
    );
    assert!(
        page.eval(&asked_js("open", "step=3s"))
            .await
            .as_u64()
            .unwrap()
            >= 1
    );

    // Drag across the timeline from a fifth to two fifths: 16 minutes, long ago.
    let (left, pw, y) = plot_box(&page, "timeline").await;
    mouse(&page, "mousePressed", left + pw * 0.2, y, 1).await;
    mouse(&page, "mouseMoved", left + pw * 0.3, y, 1).await;
    mouse(&page, "mouseMoved", left + pw * 0.4, y, 1).await;
    mouse(&page, "mouseReleased", left + pw * 0.4, y, 1).await;
    let zin = page
        .wait_for(
            &format!(
                "(() => {{ const z = {}; return z && z.to - z.from < 25 * 60e3 && z.spans && z.spans.length ? z : null; }})()",
                zoom_state_js("timeline")
            ),
            WAIT,
            "the timeline's dragged range, its door states fetched from REST",
        )
        .await;
    let span = zin["to"].as_f64().unwrap() - zin["from"].as_f64().unwrap();
    assert!(
        (12.0 * 60e3..20.0 * 60e3).contains(&span),
        "a fifth of 80 minutes: {zin}"
    );
    assert!(
        zin["to"].as_f64().unwrap() < now - 30.0 * 60e3,
        "in the past: {zin}"
    );
    assert!(
        !zin["spans"].as_array().unwrap().is_empty(),
        "door states in the range: {zin}"
    );
    print_screenshot(
        "timeline zoomed into the past",
        &page.screenshot_to_dir("zoom-timeline").await,
    );

    // Double-click: the timeline follows now again.
    for clicks in [1, 2] {
        mouse(&page, "mousePressed", left + pw * 0.5, y, clicks).await;
        mouse(&page, "mouseReleased", left + pw * 0.5, y, clicks).await;
    }
    page.wait_for(
        r#"(() => { const f = document.querySelector('figure.chart[data-kind="timeline"]'); const ch = f.querySelector('canvas').telehubChart;
            return ch.view === null && f.querySelector('.zoom-live').hidden && !f.classList.contains('zoomed') && Date.now() - ch.plot.tEnd < 3000; })()"#,
        WAIT,
        "the timeline live again",
    )
    .await;

    // The track: four presses of - zoom it out to 80 minutes, fetched at a 3 s step with
    // latitude and longitude paired by their bucket's time.
    page.eval("document.querySelector('figure.chart[data-kind=\"track\"] canvas').focus(); true")
        .await;
    for _ in 0..4 {
        press(&page, "-", 189, "-").await;
    }
    let track = page
        .wait_for(
            &format!(
                "(() => {{ const z = {}; return z && z.to - z.from > 70 * 60e3 ? z : null; }})()",
                zoom_state_js("track")
            ),
            WAIT,
            "the track's zoomed-out range from REST",
        )
        .await;
    println!("track zoomed out: {track}");
    assert_eq!(track["step"], "3s", "{track}");
    assert!(
        track["fixes"].as_u64().unwrap() >= 170,
        "an hour of fixes: {track}"
    );
    assert!(
        track["oldest"].as_f64().unwrap() < now - 55.0 * 60e3,
        "{track}"
    );
    assert!(
        track["worst_pairing"].as_f64().unwrap() < 1e-9,
        "every latitude with the longitude of its time: {track}"
    );
    for metric in ["lat", "lon"] {
        assert!(
            page.eval(&asked_js(metric, "step=3s"))
                .await
                .as_u64()
                .unwrap()
                >= 1,
            "{metric}"
        );
    }
    print_screenshot(
        "track zoomed out to 80 minutes",
        &page.screenshot_to_dir("zoom-track").await,
    );

    // Shift + wheel pans it an eighth of the span into the past.
    let (left, pw, y) = plot_box(&page, "track").await;
    page.call(
        "Input.dispatchMouseEvent",
        json!({"type": "mouseWheel", "x": left + pw * 0.5, "y": y, "deltaX": 0, "deltaY": -100, "modifiers": 8}),
    )
    .await;
    let panned = page
        .wait_for(
            &format!(
                "(() => {{ const z = {}; return z && z.to < {} - 5 * 60e3 ? z : null; }})()",
                zoom_state_js("track"),
                track["to"]
            ),
            WAIT,
            "the track panned into the past",
        )
        .await;
    let moved = track["to"].as_f64().unwrap() - panned["to"].as_f64().unwrap();
    assert!(
        (8.0 * 60e3..12.0 * 60e3).contains(&moved),
        "an eighth of 80 minutes: {panned}"
    );

    // The Live button: the track follows now again.
    page.eval(
        "document.querySelector('figure.chart[data-kind=\"track\"] .zoom-live').click(); true",
    )
    .await;
    page.wait_for(
        r#"(() => { const f = document.querySelector('figure.chart[data-kind="track"]'); const ch = f.querySelector('canvas').telehubChart;
            return ch.view === null && f.querySelector('.zoom-live').hidden && Date.now() - ch.plot.tEnd < 3000; })()"#,
        WAIT,
        "the track live again",
    )
    .await;

    // Leaving the room removes every panel's zoom handlers.
    page.eval("location.hash = '#/'; true").await;
    page.wait_for(
        "import('./zoom.js').then(m => m.activeZooms() === 0 && !document.querySelector('.zoom-live'))",
        WAIT,
        "no zoom handlers left after the room",
    )
    .await;
    assert!(page.errors().is_empty(), "page errors: {:?}", page.errors());
    drop((door, gps));
    drop(browser);
    app.stop().await;
}
