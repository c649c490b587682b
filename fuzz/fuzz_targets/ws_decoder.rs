//! The RFC 6455 frame decoder (`src/net/ws/codec.rs`) on arbitrary bytes, split at
//! arbitrary points.
//!
//! Input: byte 0 picks the message limit (low 2 bits) and how many split points follow
//! (the other 6 bits); each split point is one byte (a chunk of 1 to 256 bytes); the rest
//! is the byte stream from the client.
//!
//! Checks: no panic; the same messages and the same error however the stream is split
//! (split once per chunk versus fed whole); every message is one RFC 6455 allows a server
//! to accept (text and binary within the limit, control payloads at most 125 bytes, a
//! close code that may appear on the wire); every error closes with 1002, 1007 or 1009.
#![no_main]

use libfuzzer_sys::fuzz_target;
use telehub::fuzzing::{WsDecoder, WsError, WsMessage};

const LIMITS: [usize; 4] = [0, 125, 1024, 70_000];

/// Feeds `chunks` in order, draining every whole message after each, until an error.
fn run(max: usize, chunks: &[&[u8]]) -> (Vec<WsMessage>, Option<WsError>) {
    let mut d = WsDecoder::new(max);
    let mut out = Vec::new();
    for chunk in chunks {
        d.feed(chunk);
        loop {
            match d.decode() {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

/// Close codes a peer may send (RFC 6455 section 7.4.1; 1012-1014 registered with IANA
/// since), as tungstenite and Autobahn's case 7.9 accept them.
fn close_code_allowed(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, rest)) = data.split_first() else {
        return;
    };
    let max = LIMITS[(cfg & 3) as usize];
    let splits = (cfg >> 2) as usize;
    let (lens, stream) = rest.split_at(splits.min(rest.len()));
    let mut chunks = Vec::new();
    let mut at = 0;
    for &l in lens {
        let end = (at + l as usize + 1).min(stream.len());
        chunks.push(&stream[at..end]);
        at = end;
    }
    chunks.push(&stream[at..]);

    let whole = run(max, &[stream]);
    let split = run(max, &chunks);
    assert_eq!(
        whole, split,
        "splitting the stream changed what was decoded"
    );

    for m in &whole.0 {
        match m {
            WsMessage::Text(t) => assert!(t.len() <= max, "text over the limit"),
            WsMessage::Binary(n) => assert!(*n <= max, "binary over the limit"),
            WsMessage::Ping(p) => assert!(p.len() <= 125, "ping over 125 bytes"),
            WsMessage::Pong => {}
            WsMessage::Close(Some(code)) => assert!(
                close_code_allowed(*code),
                "close code {code} accepted: RFC 6455 7.4 does not allow it on the wire"
            ),
            WsMessage::Close(None) => {}
        }
    }
    if let Some(e) = &whole.1 {
        assert!(
            matches!(e.close_code, Some(1002 | 1007 | 1009)),
            "error {e:?} answered with an unexpected close code"
        );
    }
});
