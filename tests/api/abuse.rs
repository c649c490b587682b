//! The abuse paths of issue 10, each closed with a test that failed before the fix:
//! rate limits that could be bypassed, the busy-waiting handshake sniff, reserved close
//! codes on the wire, hub-wide limits exhausted by one client, joins serialised behind
//! one room's replay, and a stray environment variable stopping start-up.

use std::process::Command;
use std::time::Duration;

use crate::helpers::{hub_process, WAIT};

/// A `TELEHUB_*` variable that is not `TELEHUB_{SECTION}_{KEY}` of a known section
/// (the testkit's own `TELEHUB_BIN`, for one) is ignored with a warning; an unknown key
/// of a known section still stops start-up.
#[tokio::test]
async fn a_stray_telehub_variable_is_ignored_with_a_warning() {
    let mut hub = hub_process()
        .env("TELEHUB_BIN", "/nowhere/telehub")
        .env("TELEHUB_NOSECTION_KEY", "1")
        .start();
    // The warning may come on stderr, read by a thread of its own: wait for it.
    let deadline = std::time::Instant::now() + WAIT;
    while !hub.log().contains("TELEHUB_NOSECTION_KEY") && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = hub.log();
    assert!(log.contains("TELEHUB_BIN"), "no warning naming it:\n{log}");
    assert!(log.contains("TELEHUB_NOSECTION_KEY"), "{log}");
    hub.kill();

    let out = Command::new(env!("CARGO_BIN_EXE_telehub"))
        .env_remove("RUST_LOG")
        .env_remove("TELEHUB_CONFIG")
        .env("TELEHUB_HISTORY_PERSIST", "false")
        .env("TELEHUB_LIMITS_NO_SUCH_KEY", "1")
        .current_dir(std::env::temp_dir())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .output()
        .expect("run telehub");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TELEHUB_LIMITS_NO_SUCH_KEY"), "{err}");
}
