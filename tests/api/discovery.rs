//! Home Assistant MQTT discovery end to end: retained config and state messages shaped
//! as Zigbee2MQTT and Tasmota publish them (`tests/fixtures/discovery/`), on a real
//! Mosquitto started by the test, become named series of a real hub; live states reach
//! a dashboard; an empty retained config removes its entity; a template the bridge
//! cannot evaluate, and an entity past `discovery_max_entities`, are reported at
//! `/api/bridges`.

use std::time::Duration;

use serde_json::{json, Value};
use telehub::mqtt::MqttConfig;
use telehub::Settings;

use crate::helpers::{spawn_app_with, Client, TestApp, WAIT};
use telehub_testkit::mosquitto::Mosquitto;
use telehub_testkit::mqtt::TestClient;

/// MQTT messages as `(topic, payload)`.
type Messages = Vec<(String, String)>;

/// A fixture file: its config and state messages.
fn fixture(name: &str) -> (Messages, Messages) {
    let path = format!(
        "{}/tests/fixtures/discovery/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let v: Value = serde_json::from_str(&text).expect("fixture is JSON");
    let list = |key: &str| -> Messages {
        v[key]
            .as_array()
            .expect("a list")
            .iter()
            .map(|m| {
                let payload = match &m["payload"] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (m["topic"].as_str().expect("topic").to_string(), payload)
            })
            .collect()
    };
    (list("configs"), list("states"))
}

async fn hub_with_discovery(port: u16, extra: &str) -> TestApp {
    let text = format!(
        "[[bridges]]\nname = \"ha\"\nurl = \"mqtt://127.0.0.1:{port}\"\nclient_id = \"disc-hub\"\n\
         reconnect_min_ms = 50\nreconnect_max_ms = 200\ndiscovery = \"homeassistant\"\n{extra}"
    );
    let mqtt: MqttConfig = toml::from_str(&text).expect("bridge config parses");
    spawn_app_with(move |s: &mut Settings| s.mqtt = mqtt).await
}

async fn bridge(app: &TestApp) -> Value {
    let (status, body) = app.get("/api/bridges").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str::<Value>(&body).expect("JSON")["bridges"][0].clone()
}

/// Polls `probe` until it gives `Some`.
async fn until<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(last) => assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not in time; last: {last}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// The room's series by `device/metric`.
async fn series(app: &TestApp, room: &str) -> std::collections::BTreeMap<String, Value> {
    let (status, body) = app.get(&format!("/api/rooms/{room}/series")).await;
    if status != 200 {
        return Default::default();
    }
    let v: Value = serde_json::from_str(&body).expect("JSON");
    v["series"]
        .as_array()
        .expect("series")
        .iter()
        .map(|s| {
            (
                format!(
                    "{}/{}",
                    s["device"].as_str().unwrap_or(""),
                    s["metric"].as_str().unwrap_or("")
                ),
                s.clone(),
            )
        })
        .collect()
}

#[tokio::test]
async fn zigbee2mqtt_and_tasmota_discovery_become_named_series_and_removals_remove_them() {
    // Arrange: the devices' retained configs and states are on the broker before the
    // hub starts, as after any Zigbee2MQTT or Tasmota start.
    let broker = Mosquitto::start();
    let publisher = TestClient::connect(broker.port, "disc-devices");
    let (z_configs, z_states) = fixture("zigbee2mqtt.json");
    let (t_configs, t_states) = fixture("tasmota.json");
    for (topic, payload) in z_configs
        .iter()
        .chain(&t_configs)
        .chain(&z_states)
        .chain(&t_states)
    {
        publisher.publish_retained(topic, payload.as_bytes()).await;
    }
    // 8 sensor and binary_sensor entities in the fixtures (the switch is not read).
    let app = hub_with_discovery(broker.port, "discovery_max_entities = 8").await;

    // Assert: each entity is a series with its announced unit, name and device class,
    // seeded from the retained state.
    let s = until("the discovered series", || async {
        let s = series(&app, "home").await;
        if s.len() >= 7 {
            Ok(s)
        } else {
            Err(format!("{:?} {}", s.keys(), bridge(&app).await))
        }
    })
    .await;
    let t = &s["0x00158d0001a2b3c4/temperature"];
    assert_eq!(
        (
            &t["last_value"],
            &t["unit"],
            &t["name"],
            &t["device_class"],
            &t["device_name"]
        ),
        (
            &json!(21.5),
            &json!("°C"),
            &json!("Temperature"),
            &json!("temperature"),
            &json!("Living room sensor")
        ),
        "{t}"
    );
    assert_eq!(s["0x00158d0001a2b3c4/humidity"]["last_value"], 48.2);
    assert_eq!(
        s["0x00158d0001a2b3c4/battery"]["last_value"], 97.0,
        "value_json['battery']"
    );
    let door = &s["0x00158d000aa1b2c3/contact"];
    assert_eq!(
        (&door["last_value"], &door["device_class"]),
        (&json!(1.0), &json!("door")),
        "payload_on false: open is 1"
    );
    let tt = &s["A4CF12/A4CF12_AM2301_Temperature"];
    assert_eq!(
        (&tt["last_value"], &tt["name"]),
        (&json!(19.8), &json!("Tasmota AM2301 Temperature")),
        "{tt}"
    );
    assert_eq!(
        s["A4CF12/A4CF12_ENERGY_Power"]["last_value"], 42.0,
        "`~` base topic and | float"
    );
    assert_eq!(s["A4CF12/A4CF12_SWI_1"]["last_value"], 1.0);
    assert!(!s.contains_key("A4CF12/A4CF12_status"), "{s:?}");

    // The template the bridge cannot evaluate is reported, naming the entity.
    let b = bridge(&app).await;
    let d = &b["discovery"];
    assert_eq!(d["entities"], 8, "{b}");
    let problems = d["problems"].as_array().expect("problems");
    assert!(
        problems
            .iter()
            .any(|p| p["entity"] == "sensor/A4CF12_status"
                && p["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("value_json['RSSI'] * 2 - 100")),
        "{b}"
    );

    // Act: live states reach a dashboard through the entity's template.
    let (mut dash, _) = app.connect("home", "dash", "dashboard").await;
    publisher
        .publish(
            "zigbee2mqtt/Front door",
            r#"{"contact":true,"battery":100}"#,
        )
        .await;
    let r = next_reading(&mut dash).await;
    assert_eq!(
        (&r["device"], &r["metric"], &r["value"]),
        (&json!("0x00158d000aa1b2c3"), &json!("contact"), &json!(0.0))
    );

    // Act: Zigbee2MQTT removes the temperature entity (an empty retained config).
    publisher
        .publish_retained(
            "homeassistant/sensor/0x00158d0001a2b3c4/temperature/config",
            "",
        )
        .await;
    until("the removal", || async {
        let b = bridge(&app).await;
        if b["discovery"]["entities"] == 7 {
            Ok(())
        } else {
            Err(b.to_string())
        }
    })
    .await;
    publisher
        .publish(
            "zigbee2mqtt/Living room sensor",
            r#"{"temperature":30,"humidity":50,"battery":96}"#,
        )
        .await;
    publisher
        .publish("zigbee2mqtt/Front door", r#"{"contact":false}"#)
        .await;
    // Assert: the living room's readings now hold no temperature; the door's marks the end.
    let mut got = Vec::new();
    loop {
        let r = next_reading(&mut dash).await;
        let metric = r["metric"].as_str().unwrap_or("").to_string();
        if metric == "contact" {
            break;
        }
        got.push(metric);
    }
    got.sort();
    assert_eq!(got, ["battery", "humidity"]);
    let s = series(&app, "home").await;
    assert_eq!(
        s["0x00158d0001a2b3c4/temperature"].get("name"),
        None,
        "its label is gone"
    );

    // Act: an 8th entity while 7 are held is taken; a 9th is past the limit (8).
    for object in ["pressure", "voltage"] {
        let cfg = json!({"state_topic":"zigbee2mqtt/Living room sensor","value_template":format!("{{{{ value_json.{object} }}}}"),"name":object});
        publisher
            .publish_retained(
                &format!("homeassistant/sensor/0x00158d0001a2b3c4/{object}/config"),
                cfg.to_string(),
            )
            .await;
    }
    let b = until("the refusal over the limit", || async {
        let b = bridge(&app).await;
        if b["discovery"]["refused_over_limit"] == 1 {
            Ok(b)
        } else {
            Err(b.to_string())
        }
    })
    .await;
    assert_eq!(b["discovery"]["entities"], 8, "{b}");
    let problems = b["discovery"]["problems"].as_array().expect("problems");
    assert!(
        problems.iter().any(|p| p["message"]
            .as_str()
            .unwrap_or("")
            .contains("discovery_max_entities (8)")),
        "{b}"
    );
    dash.close().await;
    app.stop().await;
}

async fn next_reading(dash: &mut Client) -> Value {
    dash.recv_type("reading").await
}

#[tokio::test]
async fn the_device_card_shows_the_announced_friendly_names() {
    let _one = crate::browser::BROWSER_TESTS.lock().await;
    // Arrange: Zigbee2MQTT's retained discovery and states, a hub that reads them.
    let broker = Mosquitto::start();
    let publisher = TestClient::connect(broker.port, "disc-names");
    let (configs, states) = fixture("zigbee2mqtt.json");
    for (topic, payload) in configs.iter().chain(&states) {
        publisher.publish_retained(topic, payload.as_bytes()).await;
    }
    let app = hub_with_discovery(broker.port, "").await;
    until("the discovered series", || async {
        let s = series(&app, "home").await;
        if s.len() >= 4 {
            Ok(())
        } else {
            Err(format!("{:?}", s.keys()))
        }
    })
    .await;
    let browser = crate::cdp::Browser::launch().await;
    let page = browser.new_page(1280, 800).await;

    // Act
    page.goto(&format!("http://{}/#/rooms/home", app.addr))
        .await;

    // Assert: the card is titled with the device's name (its id in the title), and each
    // row with the entity's name.
    let card = page
        .wait_for(
            r#"(() => { const c = document.querySelector('article.card[data-device="0x00158d0001a2b3c4"]');
                const h = c?.querySelector('h3');
                const rows = c ? [...c.querySelectorAll('dt')].map(d => d.textContent) : [];
                if (!h || h.textContent !== 'Living room sensor' || rows.length < 3) return null;
                return h.title + '|' + rows.join(','); })()"#,
            crate::browser::WAIT,
            "the living room card with its names",
        )
        .await;
    assert_eq!(
        card, "0x00158d0001a2b3c4|Battery,Humidity,Temperature",
        "{card}"
    );
    app.stop().await;
}

#[tokio::test]
async fn homie_4_properties_become_series_with_their_units_and_names_and_a_cleared_homie_removes_them(
) {
    // Arrange: a Homie 4 device's retained description and values on the broker.
    let broker = Mosquitto::start();
    let publisher = TestClient::connect(broker.port, "homie-device");
    let path = format!(
        "{}/tests/fixtures/discovery/homie4.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("fixture")).expect("JSON");
    for m in v["messages"].as_array().expect("messages") {
        let (topic, payload) = (
            m["topic"].as_str().expect("topic"),
            m["payload"].as_str().expect("payload"),
        );
        publisher.publish_retained(topic, payload.as_bytes()).await;
    }
    let text = format!(
        "[[bridges]]\nname = \"homie\"\nurl = \"mqtt://127.0.0.1:{}\"\nclient_id = \"homie-hub\"\n\
         reconnect_min_ms = 50\nreconnect_max_ms = 200\ndiscovery = \"homie\"\ndiscovery_room = \"{{node}}\"\n",
        broker.port
    );
    let mqtt: MqttConfig = toml::from_str(&text).expect("bridge config parses");
    let app = spawn_app_with(move |s: &mut Settings| s.mqtt = mqtt).await;

    // Assert: the numeric and boolean properties are series, whatever order the retained
    // messages came in; the enum is reported, not guessed.
    let s = until("the Homie series", || async {
        let s = series(&app, "greenhouse-1").await;
        let named = s
            .get("greenhouse-1/climate/temperature")
            .is_some_and(|t| t.get("name").is_some());
        if s.len() >= 3 && named {
            Ok(s)
        } else {
            Err(format!("{:?}", s.keys()))
        }
    })
    .await;
    let t = &s["greenhouse-1/climate/temperature"];
    assert_eq!(
        (&t["last_value"], &t["unit"], &t["name"], &t["device_name"]),
        (
            &json!(24.5),
            &json!("°C"),
            &json!("Air temperature"),
            &json!("Greenhouse controller")
        ),
        "{t}"
    );
    assert_eq!(s["greenhouse-1/climate/humidity"]["last_value"], 71.0);
    assert_eq!(s["greenhouse-1/door/open"]["last_value"], 1.0);
    assert!(!s.contains_key("greenhouse-1/climate/mode"));
    let b = bridge(&app).await;
    let problems = b["discovery"]["problems"].as_array().expect("problems");
    assert!(
        problems
            .iter()
            .any(|p| p["entity"] == "greenhouse-1/climate/mode"
                && p["message"].as_str().unwrap_or("").contains("enum")),
        "{b}"
    );

    // Act: a live value reaches a dashboard.
    let (mut dash, _) = app.connect("greenhouse-1", "dash", "dashboard").await;
    publisher
        .publish("homie/greenhouse-1/door/open", "false")
        .await;
    let r = next_reading(&mut dash).await;
    assert_eq!(
        (&r["metric"], &r["value"]),
        (&json!("door/open"), &json!(0.0))
    );

    // Act: the device is removed (its retained `$homie` cleared), then a stray value of
    // its door comes, then it announces itself again with one property.
    publisher
        .publish_retained("homie/greenhouse-1/$homie", "")
        .await;
    until("the removal", || async {
        let b = bridge(&app).await;
        if b["discovery"]["entities"] == 0 && b["discovery"]["problems"] == json!([]) {
            Ok(())
        } else {
            Err(b.to_string())
        }
    })
    .await;
    let s = series(&app, "greenhouse-1").await;
    let t = &s["greenhouse-1/climate/temperature"];
    assert!(
        t.get("name").is_none() && t.get("device_name").is_none(),
        "a removed property keeps its history, not its label: {t}"
    );
    publisher
        .publish("homie/greenhouse-1/door/open", "true")
        .await;
    publisher
        .publish_retained("homie/greenhouse-1/$homie", "4.0.0")
        .await;
    publisher
        .publish_retained("homie/greenhouse-1/climate/temperature/$datatype", "float")
        .await;
    publisher
        .publish("homie/greenhouse-1/climate/temperature", "25.5")
        .await;
    // Assert: the stray door value was not read; the re-announced property is.
    let r = next_reading(&mut dash).await;
    assert_eq!(
        (&r["metric"], &r["value"]),
        (&json!("climate/temperature"), &json!(25.5)),
        "the removed device's door value must not count"
    );
    assert_eq!(bridge(&app).await["discovery"]["entities"], 1);
    dash.close().await;
    app.stop().await;
}
