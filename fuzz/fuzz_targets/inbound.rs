//! The hub's parser of client text frames (`telehub_protocol::inbound::parse`).
//!
//! Input: byte 0 is the batch limit (0 to 255), the rest is the frame's text (skipped when
//! it is not UTF-8: the decoder refuses such frames before the parser sees them).
//!
//! Checks: no panic; whatever parses holds only validated values (finite values, valid
//! metric and client ids, bounded units, command ids and timestamps, batches within the
//! limit), and every error has a message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use telehub_protocol::ids::{valid_id, valid_metric, MAX_COMMAND_ID_LEN, MAX_UNIT_LEN, TS_RANGE};
use telehub_protocol::inbound::{parse, ClientMessage};

fuzz_target!(|data: &[u8]| {
    let Some((&max_batch, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    match parse(text, max_batch as usize) {
        Ok(ClientMessage::Readings(items)) => {
            assert!(items.len() <= (max_batch as usize).max(1));
            for item in items {
                match item {
                    Ok(r) => {
                        assert!(r.value.is_finite());
                        assert!(valid_metric(&r.metric));
                        assert!(r.unit.as_ref().is_none_or(|u| u.len() <= MAX_UNIT_LEN));
                        assert!(r.ts.is_none_or(|t| TS_RANGE.contains(&t)));
                    }
                    Err(e) => assert!(!e.message.is_empty()),
                }
            }
        }
        Ok(ClientMessage::Command(c)) => {
            assert!(!c.id.is_empty() && c.id.len() <= MAX_COMMAND_ID_LEN);
            assert!(valid_id(&c.to) && valid_id(&c.name));
        }
        Ok(ClientMessage::Ack(a)) => {
            assert!(!a.id.is_empty() && a.id.len() <= MAX_COMMAND_ID_LEN);
        }
        // The token is checked by the hub's authorizer, not the parser: any string.
        Ok(ClientMessage::Auth(_)) => {}
        Err(e) => assert!(!e.message.is_empty()),
    }
});
