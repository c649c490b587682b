//! Property tests of the frame decoder ([`super::codec::Decoder`]) against an independent
//! encoder: tungstenite's `Frame::format` writes masked client frames (text, binary,
//! ping, pong, close, messages in fragments with control frames between them), the
//! stream is cut into arbitrary reads, and the decoder must give back exactly the messages
//! encoded. Malformed variations of the same frames must be refused with the close code
//! RFC 6455 asks for (1002 protocol, 1007 invalid payload, 1009 too big).
//!
//! `docs/TESTING.md` lists these with the fuzz targets.

use bytes::Bytes;
use proptest::prelude::*;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};

use super::codec::{Decoder, Message};
use telehub_protocol::codes::close;

/// Large enough for every valid message generated; the too-big cases use their own limit.
const MAX: usize = 1 << 20;

/// A message as the test means it, before it is framed.
#[derive(Debug, Clone)]
enum Msg {
    /// Text, cut into this many fragments (at byte offsets, so inside a character too).
    Text(String, usize),
    Binary(Vec<u8>, usize),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<(u16, String)>),
}

/// Payload lengths around every boundary of the length encoding.
fn len() -> impl Strategy<Value = usize> {
    prop_oneof![
        8 => 0usize..130,
        3 => 120usize..400,
        1 => prop_oneof![Just(65_535usize), Just(65_536usize), 65_530usize..65_540],
    ]
}

/// Close codes a client may send (RFC 6455 section 7.4; 1012-1014 registered since).
fn valid_close_code() -> impl Strategy<Value = u16> {
    prop_oneof![1000u16..=1003, 1007u16..=1014, 3000u16..=4999]
}

/// A reason that fits the control frame with its code: at most 123 bytes of UTF-8.
fn reason() -> impl Strategy<Value = String> {
    "\\PC{0,40}".prop_map(|mut s| {
        while s.len() > 123 {
            s.pop();
        }
        s
    })
}

fn control_payload() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..=125)
}

fn msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        4 => (len().prop_flat_map(|n| proptest::string::string_regex(&format!("\\PC{{{}}}", n.min(400) / 2)).expect("regex")), 1usize..5)
            .prop_map(|(s, k)| Msg::Text(s, k)),
        2 => (len().prop_flat_map(|n| prop::collection::vec(any::<u8>(), n)), 1usize..5)
            .prop_map(|(b, k)| Msg::Binary(b, k)),
        1 => control_payload().prop_map(Msg::Ping),
        1 => control_payload().prop_map(Msg::Pong),
        1 => prop::option::of((valid_close_code(), reason())).prop_map(Msg::Close),
    ]
}

/// One client frame, masked, in tungstenite's encoding.
fn encode(header: FrameHeader, payload: impl Into<Bytes>) -> Vec<u8> {
    let mut out = Vec::new();
    Frame::from_payload(header, payload.into())
        .format(&mut out)
        .expect("writes to a Vec");
    out
}

fn header(opcode: OpCode, is_final: bool, mask: [u8; 4]) -> FrameHeader {
    FrameHeader {
        is_final,
        opcode,
        mask: Some(mask),
        ..FrameHeader::default()
    }
}

/// `payload` cut into `k` fragments (at least one, possibly empty).
fn fragments(payload: &[u8], k: usize) -> Vec<&[u8]> {
    let step = payload.len().div_ceil(k).max(1);
    let mut out: Vec<&[u8]> = payload.chunks(step).collect();
    if out.is_empty() {
        out.push(&[]);
    }
    out
}

/// The frames of `msg`, with `interleave` (control frames, already encoded) between its
/// first two fragments, and what the decoder must yield for all of it, in order.
fn frames_of(
    msg: &Msg,
    mask: [u8; 4],
    interleave: &[(Vec<u8>, Message)],
) -> (Vec<u8>, Vec<Message>) {
    let data = |op: Data, payload: &[u8], k: usize, done: Message| {
        let parts = fragments(payload, k);
        let mut bytes = Vec::new();
        let mut expected = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let opcode = if i == 0 {
                OpCode::Data(op)
            } else {
                OpCode::Data(Data::Continue)
            };
            let last = i + 1 == parts.len();
            bytes.extend(encode(header(opcode, last, mask), part.to_vec()));
            if i == 0 && !last {
                for (frame, m) in interleave {
                    bytes.extend_from_slice(frame);
                    expected.push(clone_msg(m));
                }
            }
        }
        expected.push(done);
        (bytes, expected)
    };
    match msg {
        Msg::Text(s, k) => data(Data::Text, s.as_bytes(), *k, Message::Text(s.clone())),
        Msg::Binary(b, k) => data(Data::Binary, b, *k, Message::Binary(b.len())),
        Msg::Ping(p) => (
            encode(
                header(OpCode::Control(Control::Ping), true, mask),
                p.clone(),
            ),
            vec![Message::Ping(Bytes::from(p.clone()))],
        ),
        Msg::Pong(p) => (
            encode(
                header(OpCode::Control(Control::Pong), true, mask),
                p.clone(),
            ),
            vec![Message::Pong],
        ),
        Msg::Close(c) => {
            let payload = match c {
                Some((code, reason)) => [&code.to_be_bytes()[..], reason.as_bytes()].concat(),
                None => Vec::new(),
            };
            (
                encode(header(OpCode::Control(Control::Close), true, mask), payload),
                vec![Message::Close(c.as_ref().map(|(code, _)| *code))],
            )
        }
    }
}

fn clone_msg(m: &Message) -> Message {
    match m {
        Message::Text(t) => Message::Text(t.clone()),
        Message::Binary(n) => Message::Binary(*n),
        Message::Ping(p) => Message::Ping(p.clone()),
        Message::Pong => Message::Pong,
        Message::Close(c) => Message::Close(*c),
    }
}

/// Feeds `bytes` in reads of the given sizes (the rest in one last read), draining every
/// whole message after each read; stops at the first error, returning its close code.
fn decode_in_reads(
    max: usize,
    bytes: &[u8],
    reads: &[usize],
) -> (Vec<Message>, Option<Option<u16>>) {
    let mut d = Decoder::new(max, Bytes::new());
    let mut out = Vec::new();
    let mut at = 0usize;
    let mut cuts: Vec<usize> = reads.to_vec();
    cuts.push(usize::MAX);
    for n in cuts {
        let end = at.saturating_add(n).min(bytes.len());
        d.feed(&bytes[at..end]);
        at = end;
        loop {
            match d.decode() {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) => return (out, Some(e.close_code())),
            }
        }
        if at == bytes.len() {
            break;
        }
    }
    (out, None)
}

/// Read sizes: many small reads (down to one byte), some large.
fn reads() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(prop_oneof![3 => 1usize..16, 1 => 16usize..70_000], 0..24)
}

/// A valid stream: messages, some fragmented with pings and pongs between fragments.
fn stream() -> impl Strategy<Value = (Vec<u8>, Vec<Message>)> {
    (prop::collection::vec(
        (
            msg(),
            any::<[u8; 4]>(),
            prop::collection::vec(control_payload(), 0..3),
        ),
        1..6,
    ),)
        .prop_map(|(items,)| {
            let mut bytes = Vec::new();
            let mut expected = Vec::new();
            for (m, mask, controls) in items {
                let interleave: Vec<(Vec<u8>, Message)> = controls
                    .into_iter()
                    .enumerate()
                    .map(|(i, p)| {
                        if i % 2 == 0 {
                            let f = encode(
                                header(OpCode::Control(Control::Ping), true, mask),
                                p.clone(),
                            );
                            (f, Message::Ping(Bytes::from(p)))
                        } else {
                            (
                                encode(header(OpCode::Control(Control::Pong), true, mask), p),
                                Message::Pong,
                            )
                        }
                    })
                    .collect();
                let (b, e) = frames_of(&m, mask, &interleave);
                bytes.extend(b);
                expected.extend(e);
            }
            (bytes, expected)
        })
}

/// A malformed frame (or frame sequence) and the close code it must get.
fn malformed() -> impl Strategy<Value = (Vec<u8>, usize, u16)> {
    let mask = any::<[u8; 4]>();
    let text = OpCode::Data(Data::Text);
    let ping = OpCode::Control(Control::Ping);
    let close_op = OpCode::Control(Control::Close);
    prop_oneof![
        // Unmasked client frame.
        (msg(), any::<[u8; 4]>()).prop_map(|(m, mask)| {
            let (mut bytes, _) = frames_of(&m, mask, &[]);
            bytes[1] &= 0x7F;
            bytes.truncate(2); // the header alone already breaks the rule
            (bytes, MAX, close::PROTOCOL_ERROR)
        }),
        // A reserved bit without an extension.
        (mask, 1u8..8, control_payload()).prop_map(move |(mask, rsv, p)| {
            let mut h = header(text, true, mask);
            (h.rsv1, h.rsv2, h.rsv3) = (rsv & 1 != 0, rsv & 2 != 0, rsv & 4 != 0);
            (encode(h, p), MAX, close::PROTOCOL_ERROR)
        }),
        // A reserved opcode.
        (mask, prop_oneof![3u8..=7, 11u8..=15], control_payload()).prop_map(|(mask, op, p)| {
            (
                encode(header(OpCode::from(op), true, mask), p),
                MAX,
                close::PROTOCOL_ERROR,
            )
        }),
        // A control frame over 125 bytes.
        (mask, prop::collection::vec(any::<u8>(), 126..300)).prop_map(move |(mask, p)| {
            (
                encode(header(ping, true, mask), p),
                MAX,
                close::PROTOCOL_ERROR,
            )
        }),
        // A fragmented control frame.
        (mask, control_payload()).prop_map(move |(mask, p)| {
            (
                encode(header(ping, false, mask), p),
                MAX,
                close::PROTOCOL_ERROR,
            )
        }),
        // A continuation with no message started.
        (mask, control_payload(), any::<bool>()).prop_map(|(mask, p, fin)| {
            let h = header(OpCode::Data(Data::Continue), fin, mask);
            (encode(h, p), MAX, close::PROTOCOL_ERROR)
        }),
        // A new data frame while a message is in fragments.
        (mask, control_payload(), any::<bool>()).prop_map(move |(mask, p, fin)| {
            let mut b = encode(header(text, false, mask), p.clone());
            b.extend(encode(header(OpCode::Data(Data::Binary), fin, mask), p));
            (b, MAX, close::PROTOCOL_ERROR)
        }),
        // Text that is not UTF-8, whole or in fragments.
        (mask, "\\PC{0,20}", 1usize..4).prop_map(move |(mask, s, k)| {
            let mut payload = s.into_bytes();
            payload.push(0xFF);
            let (b, _) = frames_of(&Msg::Binary(payload, k), mask, &[]);
            let mut b = b;
            b[0] = (b[0] & 0xF0) | 0x1; // the first frame says text
            (b, MAX, close::INVALID_PAYLOAD)
        }),
        // A close payload of one byte.
        (mask, any::<u8>()).prop_map(move |(mask, x)| {
            (
                encode(header(close_op, true, mask), vec![x]),
                MAX,
                close::PROTOCOL_ERROR,
            )
        }),
        // A close reason that is not UTF-8.
        (mask, valid_close_code()).prop_map(move |(mask, code)| {
            let payload = [&code.to_be_bytes()[..], &[0xC3, 0x28]].concat();
            (
                encode(header(close_op, true, mask), payload),
                MAX,
                close::INVALID_PAYLOAD,
            )
        }),
        // A close code no endpoint may send (RFC 6455 section 7.4).
        (
            mask,
            prop_oneof![
                0u16..1000,
                1004u16..=1006,
                1015u16..3000,
                5000u16..=u16::MAX
            ],
            reason()
        )
            .prop_map(move |(mask, code, r)| {
                let payload = [&code.to_be_bytes()[..], r.as_bytes()].concat();
                (
                    encode(header(close_op, true, mask), payload),
                    MAX,
                    close::PROTOCOL_ERROR,
                )
            }),
        // A frame over the limit.
        (mask, 256usize..2048).prop_map(move |(mask, n)| {
            (
                encode(header(OpCode::Data(Data::Binary), true, mask), vec![7u8; n]),
                255,
                close::TOO_BIG,
            )
        }),
        // A message over the limit in fragments that each fit.
        (mask, 2usize..6).prop_map(move |(mask, k)| {
            let (b, _) = frames_of(&Msg::Binary(vec![1u8; 200 * k], k), mask, &[]);
            (b, 255, close::TOO_BIG)
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Whatever tungstenite encodes, the decoder yields, however the bytes arrive.
    #[test]
    fn decodes_exactly_what_tungstenite_encodes((bytes, expected) in stream(), reads in reads()) {
        let (got, err) = decode_in_reads(MAX, &bytes, &reads);
        prop_assert_eq!(err, None);
        prop_assert_eq!(got, expected);
    }

    /// After valid messages, a malformed frame is refused with the right close code, and
    /// the messages before it are still delivered.
    #[test]
    fn refuses_malformed_frames_with_the_right_code(
        (prefix, expected) in stream(),
        (bad, max, code) in malformed(),
        reads in reads(),
    ) {
        // The valid prefix must fit the malformed case's limit, or it fails first.
        let (prefix, expected) = if max < MAX { (Vec::new(), Vec::new()) } else { (prefix, expected) };
        let bytes = [prefix, bad].concat();
        let (got, err) = decode_in_reads(max, &bytes, &reads);
        prop_assert_eq!(got, expected);
        prop_assert_eq!(err, Some(Some(code)));
    }
}
