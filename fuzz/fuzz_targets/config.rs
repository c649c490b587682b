//! The config loader (`Settings::from_sources`): arbitrary TOML text, no environment,
//! through deserialisation and every validation step (limits, history, MQTT bridges with
//! their URLs and topic templates).
//!
//! Checks: no panic; settings that load serialise back to TOML that loads to the same
//! settings (what `telehub config` style tooling and the defaults test rely on).
#![no_main]

use libfuzzer_sys::fuzz_target;
use telehub::Settings;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(settings) = Settings::from_sources(text, "fuzz.toml", std::iter::empty()) else {
        return;
    };
    let again = toml::to_string(&settings).expect("loaded settings serialise");
    let reloaded = Settings::from_sources(&again, "fuzz.toml", std::iter::empty())
        .unwrap_or_else(|e| panic!("serialised settings do not load: {e}\n{again}"));
    assert_eq!(
        toml::to_string(&reloaded).expect("serialise"),
        again,
        "settings changed through a TOML round trip"
    );
});
