//! Scenario files: the ones shipped in devices/ parse, and a bad file is refused with a
//! message that names the bad key and its line.

use telehub_sim::{Kind, Scenario, ScenarioError};

fn shipped() -> Vec<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("read devices/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && !p.ends_with("Cargo.toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_shipped_scenario_parses() {
    let files = shipped();
    let names: Vec<_> = files
        .iter()
        .filter_map(|f| f.file_name()?.to_str().map(String::from))
        .collect();
    for expected in [
        "alerts.toml",
        "factory.toml",
        "greenhouse.toml",
        "home.toml",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing: {names:?}"
        );
    }
    for f in files {
        let s = Scenario::load(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(!s.devices().is_empty(), "{} has no devices", f.display());
    }
}

#[test]
fn greenhouse_has_what_it_says() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/greenhouse.toml");
    let s = Scenario::load(path).expect("valid");
    assert_eq!(s.name, "greenhouse");
    assert_eq!(s.seed, 7);
    assert_eq!(s.buffer, Some(20_000));
    let north = &s.rooms[0];
    assert_eq!(north.name, "greenhouse-north");
    assert_eq!(north.groups[0].kind, Kind::Climate);
    assert_eq!(north.groups[0].count, 4);
    assert_eq!(north.groups[0].params.setpoint, Some(24.0));
    let ids: Vec<_> = s
        .devices()
        .into_iter()
        .filter(|d| d.room == "greenhouse-north")
        .map(|d| d.id)
        .collect();
    assert!(ids.contains(&"climate-4".to_string()));
    assert!(ids.contains(&"heating-1".to_string()));
}

#[test]
fn overrides_change_counts_and_rates() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/factory.toml");
    let mut s = Scenario::load(path).expect("valid");
    let groups: usize = s.rooms.iter().map(|r| r.groups.len()).sum();
    s.set_count(2).expect("ok");
    s.set_rate(5.0).expect("ok");
    assert_eq!(s.devices().len(), groups * 2);
    assert!(s.devices().iter().all(|d| d.rate_hz == 5.0));
    assert!(s.set_rate(0.0).is_err());
}

const GOOD_HEAD: &str =
    "name = \"t\"\n\n[[rooms]]\nname = \"r1\"\n\n[[rooms.devices]]\nkind = \"climate\"\n";

fn parse(text: &str) -> String {
    match Scenario::from_toml(text, "bad.toml") {
        Ok(_) => panic!("accepted a bad scenario:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unknown_key_is_named_with_its_line() {
    // Line 8 is the typo.
    let msg = parse(&format!("{GOOD_HEAD}cuont = 3\n"));
    assert!(msg.contains("cuont"), "{msg}");
    assert!(msg.contains("line 8"), "{msg}");
    assert!(msg.contains("bad.toml"), "{msg}");
}

#[test]
fn unknown_top_level_key_is_named_with_its_line() {
    let msg = parse(
        "name = \"t\"\nspeed = 3\n[[rooms]]\nname = \"r\"\n[[rooms.devices]]\nkind = \"door\"\n",
    );
    assert!(msg.contains("speed") && msg.contains("line 2"), "{msg}");
}

#[test]
fn wrong_type_is_named_with_its_line() {
    let msg = parse(&format!("{GOOD_HEAD}count = \"three\"\n"));
    assert!(msg.contains("count") && msg.contains("line 8"), "{msg}");
}

#[test]
fn unknown_kind_is_named_with_its_line() {
    let msg = parse("[[rooms]]\nname = \"r\"\n[[rooms.devices]]\nkind = \"toaster\"\n");
    assert!(msg.contains("toaster") && msg.contains("line 4"), "{msg}");
}

#[test]
fn out_of_range_value_is_named_with_its_line() {
    let err = Scenario::from_toml(&format!("{GOOD_HEAD}rate = 5000.0\n"), "bad.toml")
        .expect_err("rate too high");
    match &err {
        ScenarioError::Invalid { line, key, .. } => {
            assert_eq!(*line, 8);
            assert_eq!(key, "rooms[0].devices[0].rate");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with("bad.toml:8: `rooms[0].devices[0].rate`"),
        "{err}"
    );
}

#[test]
fn parameter_on_the_wrong_kind_is_refused() {
    let text = "[[rooms]]\nname = \"r\"\n[[rooms.devices]]\nkind = \"power\"\nsetpoint = 20.0\n";
    let msg = parse(text);
    assert!(
        msg.contains("bad.toml:5") && msg.contains("setpoint"),
        "{msg}"
    );
    assert!(msg.contains("only to climate"), "{msg}");
}

#[test]
fn bad_ids_and_duplicates_are_refused() {
    let msg = parse("[[rooms]]\nname = \"has space\"\n[[rooms.devices]]\nkind = \"door\"\n");
    assert!(
        msg.contains(":2:") && msg.contains("rooms[0].name"),
        "{msg}"
    );
    let dup = "[[rooms]]\nname = \"a\"\n[[rooms.devices]]\nkind = \"door\"\n\
               [[rooms]]\nname = \"a\"\n[[rooms.devices]]\nkind = \"door\"\n";
    let msg = parse(dup);
    assert!(msg.contains(":6:") && msg.contains("twice"), "{msg}");
    let msg = parse("name = \"x\"\nrooms = []\n");
    assert!(msg.contains("at least one room"), "{msg}");
}

#[test]
fn missing_file_says_which() {
    let err = Scenario::load("/nonexistent/nowhere.toml").expect_err("no file");
    assert!(err.to_string().contains("/nonexistent/nowhere.toml"));
}
