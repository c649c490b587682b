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
