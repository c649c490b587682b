//! The direct-path WebSocket handshake (`src/net/handshake.rs`): httparse on the request
//! head with the hub's limits, the header lookups, the `/ws/{room}/{client}` path, the ids
//! and the query (`role`, `since`, `epoch`, `acks`).
//!
//! Checks: no panic; an accepted upgrade names valid ids and carries a 28-character
//! `Sec-WebSocket-Accept`; a refusal is one of the statuses the hub documents.
#![no_main]

use libfuzzer_sys::fuzz_target;
use telehub::fuzzing::{handshake, HandshakeOutcome};
use telehub_protocol::ids::valid_id;

fuzz_target!(|data: &[u8]| {
    match handshake(data) {
        HandshakeOutcome::Accept {
            accept_key,
            room,
            client,
        } => {
            assert!(valid_id(&room) && valid_id(&client));
            assert_eq!(accept_key.len(), 28, "base64 of a SHA-1 digest");
        }
        HandshakeOutcome::Refused { status, code } => {
            assert!(matches!(status, 400 | 404 | 426 | 431), "{status} {code}");
            assert!(!code.is_empty());
        }
        HandshakeOutcome::Partial | HandshakeOutcome::Malformed => {}
    }
});
