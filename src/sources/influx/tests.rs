//! The mapping of lines to readings, and whole writes into a real hub.

use super::*;
use crate::config::LimitsConfig;
use crate::hub::Hub;
use crate::sinks::history::History;

fn cfg() -> InfluxConfig {
    InfluxConfig::default()
}

fn map(
    text: &str,
    cfg: &InfluxConfig,
    p: Precision,
) -> Result<(String, Vec<ReadingIn>, usize), String> {
    let l = line::parse(text).expect("parses");
    readings_of(&l, cfg, p).map(|(d, r, s)| (d.to_string(), r, s))
}

fn influx(cfg: InfluxConfig, limits: LimitsConfig) -> Influx {
    let hub = Hub::new(limits, History::in_memory(Default::default()));
    let stats = Arc::new(InfluxStats::default());
    let devices = HttpDevices::new(hub, stats.devices_gauge());
    Influx::new(cfg, devices, stats)
}

fn open(_: &str) -> Result<(), String> {
    Ok(())
}

#[test]
fn fields_become_metrics_of_the_device_tag() {
    let (device, r, strings) = map(
        r#"cpu,host=web1,cpu=cpu0 usage_idle=98.5,usage_user=1i,up=true,state="ok" 1700000000123456789"#,
        &cfg(),
        Precision::Ns,
    )
    .expect("maps");
    assert_eq!(device, "web1");
    assert_eq!(strings, 1);
    let got: Vec<(&str, f64)> = r.iter().map(|r| (r.metric.as_str(), r.value)).collect();
    assert_eq!(
        got,
        [
            ("cpu.usage_idle", 98.5),
            ("cpu.usage_user", 1.0),
            ("cpu.up", 1.0)
        ]
    );
    assert!(r.iter().all(|r| r.ts == Some(1_700_000_000_123)));
}

#[test]
fn metric_tags_fold_into_the_name_in_order() {
    let c = InfluxConfig {
        metric_tags: vec!["cpu".into(), "missing".into(), "path".into()],
        ..cfg()
    };
    let (_, r, _) = map("disk,host=h,path=/var,cpu=c1 used=3u", &c, Precision::Ns).expect("maps");
    assert_eq!(r[0].metric, "disk.c1./var.used");
    let c = InfluxConfig {
        device_tag: "node".into(),
        ..cfg()
    };
    let (device, _, _) = map("m,node=n1,host=h v=1", &c, Precision::Ns).expect("maps");
    assert_eq!(device, "n1");
}

#[test]
fn every_precision_becomes_milliseconds() {
    let cases = [
        (Precision::Ns, "1700000000123456789", 1_700_000_000_123),
        (Precision::Us, "1700000000123456", 1_700_000_000_123),
        (Precision::Ms, "1700000000123", 1_700_000_000_123),
        (Precision::S, "1700000000", 1_700_000_000_000),
    ];
    for (p, ts, ms) in cases {
        let (_, r, _) = map(&format!("m,host=h v=1 {ts}"), &cfg(), p).expect("maps");
        assert_eq!(r[0].ts, Some(ms), "{p:?}");
    }
    for (name, p) in [
        ("ns", Precision::Ns),
        ("n", Precision::Ns),
        ("us", Precision::Us),
        ("u", Precision::Us),
        ("ms", Precision::Ms),
        ("s", Precision::S),
    ] {
        assert_eq!(Precision::parse(name), Some(p));
    }
    assert_eq!(Precision::parse("h"), None);
    // Before 1970, or seconds that overflow, are refused.
    assert!(map("m,host=h v=1 -1", &cfg(), Precision::Ms).is_err());
    let e = map("m,host=h v=1 9223372036854775807", &cfg(), Precision::S).unwrap_err();
    assert!(e.contains("1970 to 9999"), "{e}");
}

#[test]
fn lines_that_cannot_be_readings_say_why() {
    let e = map("m,dev=h v=1", &cfg(), Precision::Ns).unwrap_err();
    assert!(
        e.contains("`host` tag") && e.contains("influx.device_tag"),
        "{e}"
    );
    let e = map("m,host=bad\\ id v=1", &cfg(), Precision::Ns).unwrap_err();
    assert!(e.contains("device `bad id`"), "{e}");
    let e = map("bad:name,host=h v=1", &cfg(), Precision::Ns).unwrap_err();
    assert!(e.contains("metric `bad:name.v`"), "{e}");
    // A repeated key: the last value counts, once.
    let (_, r, _) = map("m,host=h v=1,v=2", &cfg(), Precision::Ns).expect("maps");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].value, 2.0);
    // Only strings: no readings, and no error.
    let (_, r, s) = map(r#"m,host=h s="x""#, &cfg(), Precision::Ns).expect("maps");
    assert!(r.is_empty());
    assert_eq!(s, 1);
}

#[tokio::test]
async fn a_write_keeps_its_good_lines_and_names_the_first_bad_one() {
    let influx = influx(cfg(), LimitsConfig::default());
    let body = b"# telegraf\ncpu,host=a v=1\n\nbroken\ncpu,host=b v=2,w=3\nm,dev=x v=1\nmem,host=a free=5i\n\xff\xfe v=1\n";
    let r = influx
        .write("lab", body, Precision::Ns, open)
        .await
        .expect("writes");
    assert_eq!(r.readings, 4);
    assert_eq!(r.lines_written, 3);
    assert_eq!(r.lines_refused, 3);
    let f = r.first_fault.expect("a fault");
    assert_eq!(f.line, 4);
    assert_eq!(f.reason, "missing fields");
    let room = &influx.devices.hub().summaries()[0];
    assert_eq!(room.offset, 4);
    let devices: Vec<&str> = room.devices.iter().map(|d| &*d.client).collect();
    assert_eq!(devices, ["a", "b"]);
}

#[tokio::test]
async fn a_device_the_token_does_not_grant_is_a_bad_line() {
    let influx = influx(cfg(), LimitsConfig::default());
    let only_a = |d: &str| {
        if d == "a" {
            Ok(())
        } else {
            Err(format!("the token may not publish as `{d}`"))
        }
    };
    let r = influx
        .write("lab", b"m,host=b v=1\nm,host=a v=1", Precision::Ns, only_a)
        .await
        .expect("writes");
    assert_eq!((r.readings, r.lines_refused), (1, 1));
    assert_eq!(r.first_fault.expect("fault").line, 1);
}

#[tokio::test]
async fn over_the_rate_a_write_is_refused_whole_and_can_be_retried() {
    let c = InfluxConfig {
        rate_per_sec: 10.0,
        rate_burst: 4.0,
        ..cfg()
    };
    let influx = influx(c, LimitsConfig::default());
    let three = b"m,host=a v=1,w=2,x=3 1700000000000000000";
    assert_eq!(
        influx
            .write("lab", three, Precision::Ns, open)
            .await
            .expect("ok")
            .readings,
        3
    );
    match influx.write("lab", three, Precision::Ns, open).await {
        Err(WriteError::RateLimited { device, wait, .. }) => {
            assert_eq!(device, "a");
            assert!(
                wait > Duration::ZERO && wait <= Duration::from_millis(200),
                "{wait:?}"
            );
        }
        other => panic!("not rate limited: {other:?}"),
    }
    // Nothing of the refused write reached the room.
    assert_eq!(influx.devices.hub().summaries()[0].offset, 3);
    let five = b"m,host=a a=1,b=1,c=1,d=1,e=1";
    assert!(matches!(
        influx.write("lab", five, Precision::Ns, open).await,
        Err(WriteError::OverBurst { readings: 5, .. })
    ));
}

#[tokio::test]
async fn series_caps_and_future_timestamps_are_reported() {
    let limits = LimitsConfig {
        max_series_per_device: 2,
        ..LimitsConfig::default()
    };
    let influx = influx(cfg(), limits);
    let r = influx
        .write("lab", b"m,host=a a=1,b=2,c=3", Precision::Ns, open)
        .await
        .expect("writes");
    assert_eq!((r.readings, r.refused_readings), (2, 1));
    let why = r.refused_reason.expect("a reason");
    assert!(why.contains("limits.max_series_per_device"), "{why}");
    let far = (chrono::Utc::now().timestamp() + 10 * 86_400).to_string();
    let r = influx
        .write(
            "lab",
            format!("m,host=a a=1 {far}").as_bytes(),
            Precision::S,
            open,
        )
        .await
        .expect("writes");
    assert_eq!((r.readings, r.refused_readings), (0, 1));
    assert!(r
        .refused_reason
        .expect("a reason")
        .contains("max_future_ms"));
}
