//! InfluxDB line protocol end to end: a real hub, and a client that writes the way
//! Telegraf's `outputs.influxdb_v2` and `outputs.influxdb` do (Debian has no Telegraf
//! package, so this client is written from the published line-protocol spec): escapes,
//! quoted strings, every precision, gzip and chunked bodies, the v2 `Token` and v1
//! `Basic` credentials, and InfluxDB's answers (204, 400 naming the first bad line, 413,
//! 429 with Retry-After).

use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};
use telehub_testkit::http::{post, Framing, Response};

use crate::helpers::{spawn_app_with, TestApp};
use crate::tokens::{now_s, tok, token_mode};

/// A field value as line protocol types it.
enum V<'a> {
    F(f64),
    I(i64),
    U(u64),
    B(bool),
    S(&'a str),
}

fn escape(s: &str, special: &[char]) -> String {
    s.chars().fold(String::new(), |mut out, c| {
        if special.contains(&c) {
            out.push('\\');
        }
        out.push(c);
        out
    })
}

/// One line, serialised as the spec says (and as Telegraf's serializer does).
fn line(measurement: &str, tags: &[(&str, &str)], fields: &[(&str, V)], ts: Option<i64>) -> String {
    let mut out = escape(measurement, &[',', ' ']);
    for (k, v) in tags {
        out += &format!(
            ",{}={}",
            escape(k, &[',', '=', ' ']),
            escape(v, &[',', '=', ' '])
        );
    }
    let fields: Vec<String> = fields
        .iter()
        .map(|(k, v)| {
            let v = match v {
                V::F(f) => format!("{f}"),
                V::I(i) => format!("{i}i"),
                V::U(u) => format!("{u}u"),
                V::B(b) => format!("{b}"),
                V::S(s) => format!("\"{}\"", escape(s, &['"', '\\'])),
            };
            format!("{}={v}", escape(k, &[',', '=', ' ']))
        })
        .collect();
    out += " ";
    out += &fields.join(",");
    if let Some(ts) = ts {
        out += &format!(" {ts}");
    }
    out
}

fn gzip(body: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(body).expect("gzip");
    enc.finish().expect("gzip")
}

fn json_of(r: &Response) -> Value {
    serde_json::from_slice(&r.body).unwrap_or_else(|_| panic!("JSON body: {}", r.text()))
}

async fn get_json(app: &TestApp, path: &str) -> Value {
    let (status, body) = app.get(path).await;
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).expect("json")
}

/// The points of one series, as (ts, value).
async fn points(app: &TestApp, room: &str, device: &str, metric: &str) -> Vec<(i64, f64)> {
    let v = get_json(
        app,
        &format!("/api/rooms/{room}/history?device={device}&metric={metric}"),
    )
    .await;
    v["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| {
            (
                p["ts"].as_i64().expect("ts"),
                p["value"].as_f64().expect("value"),
            )
        })
        .collect()
}

#[tokio::test]
async fn telegraf_shaped_writes_become_series_of_their_host() {
    let app = spawn_app_with(|s| s.influx.metric_tags = vec!["cpu".into()]).await;
    let (mut dash, _) = app.connect("servers", "dash", "dashboard").await;
    let t = now_s() - 60;
    let body = [
        line(
            "cpu",
            &[("cpu", "cpu-total"), ("host", "web1")],
            &[("usage_idle", V::F(97.5)), ("usage_user", V::F(1.25))],
            Some(t * 1_000_000_000),
        ),
        line(
            "mem",
            &[("host", "web1")],
            &[
                ("used", V::I(1024)),
                ("total", V::U(4096)),
                ("swapping", V::B(true)),
                ("state", V::S("fine, \"really\" = \\ ok")),
            ],
            Some(t * 1_000_000_000 + 5_000_000),
        ),
        // Tags that are dropped may hold anything the spec can escape.
        line(
            "disk",
            &[("host", "db-2"), ("path", "/var lib"), ("label", "a,b=c")],
            &[("free", V::F(1.5e9))],
            None,
        ),
    ]
    .join("\n");
    let r = post(
        app.addr,
        "/api/v2/write?org=o&bucket=servers",
        "Content-Type: text/plain; charset=utf-8\r\nUser-Agent: Telegraf\r\n",
        body.as_bytes(),
        Framing::Length,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());

    // A dashboard sees the host join the room over http, and its readings.
    let join = dash.recv_type("presence").await;
    assert_eq!(
        (&join["event"], &join["client"], &join["via"]),
        (&json!("join"), &json!("web1"), &json!("http"))
    );
    assert_eq!(
        points(&app, "servers", "web1", "cpu.cpu-total.usage_idle").await,
        [(t * 1000, 97.5)]
    );
    assert_eq!(
        points(&app, "servers", "web1", "mem.used").await,
        [(t * 1000 + 5, 1024.0)]
    );
    assert_eq!(
        points(&app, "servers", "web1", "mem.swapping").await[0].1,
        1.0
    );
    let series = get_json(&app, "/api/rooms/servers/series").await;
    let names: Vec<(&str, &str)> = series["series"]
        .as_array()
        .expect("series")
        .iter()
        .map(|s| {
            (
                s["device"].as_str().unwrap_or(""),
                s["metric"].as_str().unwrap_or(""),
            )
        })
        .collect();
    // The string field is skipped; a line without a timestamp is stamped by the hub.
    assert_eq!(
        names,
        [
            ("db-2", "disk.free"),
            ("web1", "cpu.cpu-total.usage_idle"),
            ("web1", "cpu.cpu-total.usage_user"),
            ("web1", "mem.swapping"),
            ("web1", "mem.total"),
            ("web1", "mem.used"),
        ]
    );
    let rooms = get_json(&app, "/api/rooms").await;
    assert_eq!(rooms["rooms"][0]["devices"][0]["via"], "http");
    let metrics = app.get("/metrics").await.1;
    assert!(
        metrics.contains("telehub_influx_string_fields_skipped_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("telehub_http_devices 2"), "{metrics}");
    app.stop().await;
}

#[tokio::test]
async fn every_precision_and_both_apis_plain_gzip_and_chunked() {
    let app = spawn_app_with(|_| {}).await;
    let t = now_s() - 120;
    let cases: [(&str, i64, i64); 4] = [
        ("ns", t * 1_000_000_000 + 1_999_999, t * 1000 + 1),
        ("us", t * 1_000_000 + 2_999, t * 1000 + 2),
        ("ms", t * 1000 + 3, t * 1000 + 3),
        ("s", t, t * 1000),
    ];
    for (i, (precision, ts, want)) in cases.iter().enumerate() {
        let body = line(
            "p",
            &[("host", precision)],
            &[("v", V::I(i as i64))],
            Some(*ts),
        );
        let (path, headers, body, framing) = if i % 2 == 0 {
            (
                format!("/api/v2/write?bucket=lab&precision={precision}"),
                "Authorization: Token anything\r\n".to_string(),
                body.into_bytes(),
                Framing::Length,
            )
        } else {
            // v1, gzip, streamed in chunks as Telegraf's compressed writes are.
            (
                format!("/write?db=lab&precision={precision}&rp=autogen"),
                "Content-Encoding: gzip\r\n".to_string(),
                gzip(body.as_bytes()),
                Framing::Chunked,
            )
        };
        let r = post(app.addr, &path, &headers, &body, framing).await;
        assert_eq!(r.status, 204, "{precision}: {}", r.text());
        assert_eq!(
            points(&app, "lab", precision, "p.v").await,
            [(*want, i as f64)],
            "{precision}"
        );
    }
    // A precision InfluxDB has but the hub does not take, and a missing room.
    let r = post(
        app.addr,
        "/api/v2/write?bucket=lab&precision=h",
        "",
        b"p,host=a v=1",
        Framing::Length,
    )
    .await;
    assert_eq!(
        (r.status, json_of(&r)["error"].clone()),
        (400, json!("invalid_parameter"))
    );
    let r = post(
        app.addr,
        "/api/v2/write?org=o",
        "",
        b"p,host=a v=1",
        Framing::Length,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(json_of(&r)["message"]
        .as_str()
        .unwrap_or("")
        .contains("bucket"));
    let r = post(
        app.addr,
        "/write?db=lab",
        "Content-Encoding: br\r\n",
        b"x",
        Framing::Length,
    )
    .await;
    assert_eq!(r.status, 415);
    let r = post(
        app.addr,
        "/write?db=lab",
        "Content-Encoding: gzip\r\n",
        b"not gzip",
        Framing::Length,
    )
    .await;
    assert_eq!(
        (r.status, json_of(&r)["error"].clone()),
        (400, json!("invalid_gzip"))
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_lines_are_named_and_the_good_ones_still_written() {
    let app = spawn_app_with(|_| {}).await;
    let body = "# written by a script\n\
                m,host=a v=1\n\
                m,host=a v=\n\
                m,host=a w=2\n\
                m,sensor=x v=3\n\
                m,host=a x=\"unterminated\n\
                m,host=a y=4i\n";
    let r = post(
        app.addr,
        "/api/v2/write?bucket=lab",
        "",
        body.as_bytes(),
        Framing::Length,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let v = json_of(&r);
    assert_eq!(
        (&v["code"], &v["error"], &v["line"]),
        (&json!("invalid"), &json!("invalid_line"), &json!(3))
    );
    let message = v["message"].as_str().expect("message");
    assert!(
        message.contains("line 3: missing field value of `v`"),
        "{message}"
    );
    assert!(
        message.contains("3 line(s) written, 3 refused"),
        "{message}"
    );
    for metric in ["m.v", "m.w", "m.y"] {
        assert_eq!(points(&app, "lab", "a", metric).await.len(), 1, "{metric}");
    }
    let metrics = app.get("/metrics").await.1;
    assert!(
        metrics.contains("telehub_influx_lines_total{outcome=\"written\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("telehub_influx_lines_total{outcome=\"refused\"} 3"),
        "{metrics}"
    );
    app.stop().await;
}

#[tokio::test]
async fn too_big_and_too_fast_are_refused_whole() {
    let app = spawn_app_with(|s| {
        s.influx.max_body_bytes = 4096;
        s.influx.rate_per_sec = 1.0;
        s.influx.rate_burst = 100.0;
    })
    .await;
    // Over the bound as sent, and a small gzip body that inflates past it.
    let big = "m,host=a v=1\n".repeat(400);
    let r = post(
        app.addr,
        "/api/v2/write?bucket=lab",
        "",
        big.as_bytes(),
        Framing::Length,
    )
    .await;
    assert_eq!(
        (r.status, json_of(&r)["error"].clone()),
        (413, json!("body_too_large"))
    );
    let bomb = gzip(big.as_bytes());
    assert!(bomb.len() < 4096);
    let r = post(
        app.addr,
        "/api/v2/write?bucket=lab",
        "Content-Encoding: gzip\r\n",
        &bomb,
        Framing::Chunked,
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.text());
    // More readings for one device than the burst could ever take: split the batch.
    let fields: Vec<String> = (0..101).map(|i| format!("f{i}=1")).collect();
    let wide = format!("m,host=a {}", fields.join(","));
    let r = post(
        app.addr,
        "/api/v2/write?bucket=lab",
        "",
        wide.as_bytes(),
        Framing::Length,
    )
    .await;
    assert_eq!(
        (r.status, json_of(&r)["error"].clone()),
        (413, json!("batch_too_large"))
    );
    // The burst, then a write that must wait: 429 with Retry-After, nothing written.
    let fields: Vec<String> = (0..90).map(|i| format!("f{i}={i}")).collect();
    let ninety = format!("m,host=a {}", fields.join(","));
    let r = post(
        app.addr,
        "/api/v2/write?bucket=lab",
        "",
        ninety.as_bytes(),
        Framing::Length,
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = post(
        app.addr,
        "/api/v2/write?bucket=lab",
        "",
        b"m,host=a g1=1,g2=2,g3=3,g4=4,g5=5,g6=6,g7=7,g8=8,g9=9,g10=10,g11=11",
        Framing::Length,
    )
    .await;
    assert_eq!(
        (r.status, json_of(&r)["error"].clone()),
        (429, json!("rate_limited"))
    );
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .expect("seconds");
    assert!((1..=2).contains(&retry), "{retry}");
    let series = get_json(&app, "/api/rooms/lab/series").await;
    assert_eq!(series["series"].as_array().map(Vec::len), Some(90));
    // Another device has a bucket of its own.
    let r = post(
        app.addr,
        "/api/v2/write?bucket=lab",
        "",
        b"m,host=b v=1",
        Framing::Length,
    )
    .await;
    assert_eq!(r.status, 204);
    let metrics = app.get("/metrics").await.1;
    for reason in ["body_too_large", "over_burst", "rate_limited"] {
        let want = if reason == "body_too_large" { 2 } else { 1 };
        let sample = format!("telehub_influx_writes_refused_total{{reason=\"{reason}\"}} {want}");
        assert!(metrics.contains(&sample), "{sample} in {metrics}");
    }
    app.stop().await;
}

#[tokio::test]
async fn series_caps_are_reported_as_a_partial_write() {
    let app = spawn_app_with(|s| s.limits.max_series_per_device = 2).await;
    let r = post(
        app.addr,
        "/api/v2/write?bucket=lab",
        "",
        b"m,host=a a=1,b=2,c=3",
        Framing::Length,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let v = json_of(&r);
    assert_eq!(v["error"], "readings_refused");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or("")
            .contains("limits.max_series_per_device"),
        "{v}"
    );
    assert_eq!(points(&app, "lab", "a", "m.a").await.len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn with_auth_on_a_device_token_writes_only_as_its_device() {
    let app = spawn_app_with(token_mode).await;
    let write = |headers: String, path: &'static str| {
        let addr = app.addr;
        async move {
            post(
                addr,
                path,
                &headers,
                b"m,host=a v=1\nm,host=b v=2",
                Framing::Length,
            )
            .await
        }
    };
    let r = write(String::new(), "/api/v2/write?bucket=lab").await;
    assert_eq!(
        (r.status, json_of(&r)["error"].clone()),
        (401, json!("unauthorized"))
    );
    let r = write(
        "Authorization: Token nonsense\r\n".into(),
        "/api/v2/write?bucket=lab",
    )
    .await;
    assert_eq!(r.status, 401);
    let a = tok("a", "device", &["lab"]);
    let r = write(
        format!("Authorization: Token {a}\r\n"),
        "/api/v2/write?bucket=other",
    )
    .await;
    assert_eq!(
        (r.status, json_of(&r)["error"].clone()),
        (403, json!("forbidden"))
    );
    // Telegraf's v2 output: `Token`; its line for another device is a bad line.
    let r = write(
        format!("Authorization: Token {a}\r\n"),
        "/api/v2/write?bucket=lab",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let v = json_of(&r);
    assert_eq!(v["line"], 2);
    assert!(
        v["message"]
            .as_str()
            .unwrap_or("")
            .contains("may not publish as device `b`"),
        "{v}"
    );
    let admin = tok("ops", "admin", &[]);
    let history_of_b = || {
        crate::helpers::http_get(
            app.addr,
            "/api/rooms/lab/history?device=b&metric=m.v",
            Box::leak(format!("Authorization: Bearer {admin}\r\n").into_boxed_str()),
        )
    };
    assert_eq!(history_of_b().await.0, 404, "nothing was written for `b`");
    // The v1 output: Basic, the token as the password. An admin token writes for anyone.
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("telegraf:{admin}"));
    let r = write(format!("Authorization: Basic {basic}\r\n"), "/write?db=lab").await;
    assert_eq!(r.status, 204, "{}", r.text());
    let r = write(
        format!("Authorization: Bearer {admin}\r\n"),
        "/write?db=lab",
    )
    .await;
    assert_eq!(r.status, 204, "{}", r.text());
    let (status, body) = history_of_b().await;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    assert!(v["points"].as_array().is_some_and(|p| !p.is_empty()), "{v}");
    app.stop().await;
}

#[tokio::test]
async fn an_idle_http_device_leaves_and_a_websocket_device_keeps_its_id() {
    let app = spawn_app_with(|s| s.limits.http_device_idle_ms = 1_000).await;
    let (mut dash, _) = app.connect("lab", "dash", "dashboard").await;
    let r = post(
        app.addr,
        "/write?db=lab",
        "",
        b"m,host=a v=1",
        Framing::Length,
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(dash.recv_type("presence").await["event"], "join");
    let leave = tokio::time::timeout(Duration::from_secs(5), dash.recv_type("presence"))
        .await
        .expect("the idle device leaves");
    assert_eq!(
        (&leave["event"], &leave["client"]),
        (&json!("leave"), &json!("a"))
    );
    // A device on its own WebSocket is not taken over by a write naming it.
    let (_device, _) = app.connect("lab", "ws1", "device").await;
    let r = post(
        app.addr,
        "/write?db=lab",
        "",
        b"m,host=ws1 v=1",
        Framing::Length,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(json_of(&r)["message"]
        .as_str()
        .unwrap_or("")
        .contains("held by a WebSocket"));
    app.stop().await;
}
