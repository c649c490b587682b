//! RFC 6455 framing for the server side of `/ws/{room}/{client}`.
//!
//! Why our own: memory per idle connection and cost per delivery are first-class targets.
//! Server frames are unmasked, so a reading's frame (header and JSON) is the same bytes for
//! every dashboard: it is encoded once, shared as [`Bytes`], and written with `writev`
//! straight from the queue, with no per-connection write buffer. On the read side, a
//! connection holds no buffer while idle: it waits for readability, reads into a buffer
//! sized for what is arriving, and gives the buffer back when it is empty again
//! (tungstenite's codec keeps a read buffer, and a write buffer at its high-water mark,
//! for the life of every connection; see `docs/DESIGN.md`).
//!
//! The decoder enforces what RFC 6455 requires of a server: client frames are masked,
//! reserved bits and opcodes are unused, control frames are short and unfragmented,
//! continuation frames follow a started message, text is UTF-8, and frames and messages
//! stay under the configured size.

use bytes::{Buf, Bytes, BytesMut};
use std::io;

use crate::net::transport::WsRead;

use telehub_protocol::codes::close;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Longest payload of a control frame (RFC 6455 section 5.5).
const MAX_CONTROL_PAYLOAD: usize = 125;
/// Longest frame header: 2 bytes, 8 of extended length, 4 of mask.
const MAX_HEADER: usize = 14;
/// Smallest read: enough for a typical device frame in one `read` call.
const MIN_READ: usize = 512;
/// A read buffer above this size is dropped (not kept) once it is empty.
const KEEP_BUFFER: usize = 4096;

/// Room for the header in front of a payload serialised in place (see [`frame_in_place`]).
pub(crate) const HEADER_ROOM: usize = 10;

/// Writes the header of a server (unmasked, final) frame for `len` payload bytes at the
/// end of `out`; returns how many bytes it used.
fn header(opcode: u8, len: usize, out: &mut [u8; HEADER_ROOM]) -> usize {
    let first = 0x80 | opcode;
    if len < 126 {
        out[HEADER_ROOM - 2] = first;
        out[HEADER_ROOM - 1] = len as u8;
        2
    } else if len <= u16::MAX as usize {
        out[HEADER_ROOM - 4] = first;
        out[HEADER_ROOM - 3] = 126;
        out[HEADER_ROOM - 2..].copy_from_slice(&(len as u16).to_be_bytes());
        4
    } else {
        out[0] = first;
        out[1] = 127;
        out[2..].copy_from_slice(&(len as u64).to_be_bytes());
        10
    }
}

/// Turns `buf`, whose first [`HEADER_ROOM`] bytes are reserved and the rest is a text
/// payload, into one shared text frame without copying the payload.
pub(crate) fn frame_in_place(mut buf: Vec<u8>) -> Bytes {
    let len = buf.len().saturating_sub(HEADER_ROOM);
    let mut h = [0u8; HEADER_ROOM];
    let used = header(OP_TEXT, len, &mut h);
    let start = HEADER_ROOM - used;
    buf[start..HEADER_ROOM].copy_from_slice(&h[start..]);
    Bytes::from(buf).slice(start..)
}

fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let mut buf = Vec::with_capacity(HEADER_ROOM + payload.len());
    buf.extend_from_slice(&[0u8; HEADER_ROOM]);
    buf.extend_from_slice(payload);
    let mut h = [0u8; HEADER_ROOM];
    let used = header(opcode, payload.len(), &mut h);
    let start = HEADER_ROOM - used;
    buf[start..HEADER_ROOM].copy_from_slice(&h[start..]);
    Bytes::from(buf).slice(start..)
}

/// A text frame carrying `text`.
pub(crate) fn text(text: &str) -> Bytes {
    encode(OP_TEXT, text.as_bytes())
}

/// A close frame with `code` and `reason` (the reason is cut to fit a control frame).
/// A code RFC 6455 forbids on the wire (1005, 1006, 1015, or one outside the ranges a
/// peer may receive) is never sent: 1000 goes instead.
pub(crate) fn close(code: u16, reason: &str) -> Bytes {
    let code = if close::valid_to_receive(code) || close::ALL.iter().any(|(c, _)| *c == code) {
        code
    } else {
        close::NORMAL
    };
    let mut payload = code.to_be_bytes().to_vec();
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    encode(OP_CLOSE, &payload)
}

pub(crate) fn ping() -> Bytes {
    encode(OP_PING, &[])
}

pub(crate) fn pong(payload: &[u8]) -> Bytes {
    encode(OP_PONG, payload)
}

/// A complete message from the client.
#[derive(Debug, PartialEq)]
pub(crate) enum Message {
    Text(String),
    Binary(usize),
    Ping(Bytes),
    Pong,
    /// The client's close frame: its code, if it sent one.
    Close(Option<u16>),
}

/// Why reading stopped: the close code to answer with, or an I/O end.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("connection closed")]
    Eof,
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    #[error("text message is not UTF-8")]
    InvalidUtf8,
    #[error("frame or message over {0} bytes")]
    TooBig(usize),
}

impl ReadError {
    /// The close code to send for this error, if the connection can still take one.
    pub(crate) fn close_code(&self) -> Option<u16> {
        match self {
            ReadError::Eof | ReadError::Io(_) => None,
            ReadError::Protocol(_) => Some(close::PROTOCOL_ERROR),
            ReadError::InvalidUtf8 => Some(close::INVALID_PAYLOAD),
            ReadError::TooBig(_) => Some(close::TOO_BIG),
        }
    }
}

/// A frame's header, decoded.
struct Head {
    fin: bool,
    opcode: u8,
    mask: [u8; 4],
    len: usize,
    header_len: usize,
}

/// Decodes client frames from a buffer that exists only while bytes are arriving.
pub(crate) struct Decoder {
    buf: BytesMut,
    /// A fragmented message in progress: its opcode and the payload so far.
    partial: Option<(u8, BytesMut)>,
    max_message: usize,
}

impl Decoder {
    pub(crate) fn new(max_message: usize, already_read: Bytes) -> Decoder {
        Decoder {
            buf: BytesMut::from(&already_read[..]),
            partial: None,
            max_message,
        }
    }

    /// Reads until a whole message is in. On plain TCP it waits for readability first,
    /// so that an idle connection holds no buffer ([`WsRead`]).
    pub(crate) async fn next<R: WsRead>(&mut self, io: &mut R) -> Result<Message, ReadError> {
        loop {
            if let Some(msg) = self.decode()? {
                return Ok(msg);
            }
            let want = self.bytes_wanted().max(MIN_READ);
            if io.read_into(&mut self.buf, want).await? == 0 {
                return Err(ReadError::Eof);
            }
        }
    }

    /// How many more bytes the frame at the head of the buffer needs (at least a header).
    fn bytes_wanted(&self) -> usize {
        match parse_head(&self.buf) {
            Ok(Some(h)) => (h.header_len + h.len).saturating_sub(self.buf.len()),
            _ => MAX_HEADER,
        }
    }

    /// Bytes that arrived, appended as a read would (for tests and the fuzz targets,
    /// which drive [`Decoder::decode`] without a socket).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Decodes one message from the buffer if a whole one is there.
    pub(crate) fn decode(&mut self) -> Result<Option<Message>, ReadError> {
        loop {
            let Some(head) = parse_head(&self.buf)? else {
                self.release_if_empty();
                return Ok(None);
            };
            if head.len > self.max_message {
                return Err(ReadError::TooBig(self.max_message));
            }
            if self.buf.len() < head.header_len + head.len {
                return Ok(None);
            }
            self.buf.advance(head.header_len);
            let mut payload = self.buf.split_to(head.len);
            for (i, b) in payload.iter_mut().enumerate() {
                *b ^= head.mask[i % 4];
            }
            self.release_if_empty();
            match head.opcode {
                OP_CLOSE => {
                    if payload.len() == 1 {
                        return Err(ReadError::Protocol("close payload of one byte"));
                    }
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    if code.is_some_and(|c| !close::valid_to_receive(c)) {
                        return Err(ReadError::Protocol("invalid close code"));
                    }
                    if std::str::from_utf8(payload.get(2..).unwrap_or(&[])).is_err() {
                        return Err(ReadError::InvalidUtf8);
                    }
                    return Ok(Some(Message::Close(code)));
                }
                OP_PING => return Ok(Some(Message::Ping(payload.freeze()))),
                OP_PONG => return Ok(Some(Message::Pong)),
                OP_TEXT | OP_BINARY => {
                    if self.partial.is_some() {
                        return Err(ReadError::Protocol("new message before the last one ended"));
                    }
                    if head.fin {
                        return Ok(Some(finish(head.opcode, payload)?));
                    }
                    self.partial = Some((head.opcode, payload));
                }
                OP_CONTINUATION => {
                    let Some((opcode, mut so_far)) = self.partial.take() else {
                        return Err(ReadError::Protocol("continuation frame without a message"));
                    };
                    if so_far.len() + payload.len() > self.max_message {
                        return Err(ReadError::TooBig(self.max_message));
                    }
                    so_far.extend_from_slice(&payload);
                    if head.fin {
                        return Ok(Some(finish(opcode, so_far)?));
                    }
                    self.partial = Some((opcode, so_far));
                }
                _ => return Err(ReadError::Protocol("reserved opcode")),
            }
        }
    }

    /// Gives back a large buffer once everything in it is consumed.
    fn release_if_empty(&mut self) {
        if self.buf.is_empty() && self.buf.capacity() > KEEP_BUFFER {
            self.buf = BytesMut::new();
        }
    }
}

fn finish(opcode: u8, payload: BytesMut) -> Result<Message, ReadError> {
    if opcode == OP_BINARY {
        return Ok(Message::Binary(payload.len()));
    }
    String::from_utf8(payload.to_vec())
        .map(Message::Text)
        .map_err(|_| ReadError::InvalidUtf8)
}

/// Parses a frame header if enough bytes are there; checks every rule a header can break.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, ReadError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    if buf[0] & 0x70 != 0 {
        return Err(ReadError::Protocol(
            "reserved bits set without an extension",
        ));
    }
    let opcode = buf[0] & 0x0F;
    if buf[1] & 0x80 == 0 {
        return Err(ReadError::Protocol("client frames must be masked"));
    }
    let (len, mut pos) = match buf[1] & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (n as u64, 2),
    };
    if opcode >= OP_CLOSE {
        if !fin {
            return Err(ReadError::Protocol("fragmented control frame"));
        }
        if len > MAX_CONTROL_PAYLOAD as u64 {
            return Err(ReadError::Protocol("control frame over 125 bytes"));
        }
    }
    if buf.len() < pos + 4 {
        return Ok(None);
    }
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&buf[pos..pos + 4]);
    pos += 4;
    Ok(Some(Head {
        fin,
        opcode,
        mask,
        len: usize::try_from(len).unwrap_or(usize::MAX),
        header_len: pos,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame as a browser would send it.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 65535 => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn decode_all(bytes: &[u8], max: usize) -> Vec<Result<Message, String>> {
        let mut d = Decoder::new(max, Bytes::new());
        d.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            match d.decode() {
                Ok(Some(m)) => out.push(Ok(m)),
                Ok(None) => return out,
                Err(e) => {
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }

    #[test]
    fn server_frames_have_minimal_headers() {
        assert_eq!(&text("hi")[..], &[0x81, 2, b'h', b'i']);
        let long = "x".repeat(300);
        let f = text(&long);
        assert_eq!(&f[..4], &[0x81, 126, 1, 44]);
        assert_eq!(f.len(), 304);
        let huge = "y".repeat(70_000);
        let f = text(&huge);
        assert_eq!(f[1], 127);
        assert_eq!(f.len(), 70_010);
        assert_eq!(&close(1013, "slow consumer")[..4], &[0x88, 15, 0x03, 0xF5]);
        let mut v = vec![0u8; HEADER_ROOM];
        v.extend_from_slice(b"{}");
        assert_eq!(&frame_in_place(v)[..], &[0x81, 2, b'{', b'}']);
    }

    #[test]
    fn decodes_masked_text_fragments_and_control_frames() {
        let mut bytes = client_frame(false, OP_TEXT, b"hel");
        bytes.extend(client_frame(true, OP_PING, b"p"));
        bytes.extend(client_frame(true, OP_CONTINUATION, "lo é".as_bytes()));
        bytes.extend(client_frame(true, OP_BINARY, &[1, 2, 3]));
        bytes.extend(client_frame(true, OP_CLOSE, &1000u16.to_be_bytes()));
        let out = decode_all(&bytes, 1024);
        assert_eq!(
            out,
            vec![
                Ok(Message::Ping(Bytes::from_static(b"p"))),
                Ok(Message::Text("hello é".into())),
                Ok(Message::Binary(3)),
                Ok(Message::Close(Some(1000))),
            ]
        );
    }

    #[test]
    fn partial_input_waits_for_more() {
        let bytes = client_frame(true, OP_TEXT, &[b'a'; 200]);
        let mut d = Decoder::new(1024, Bytes::new());
        d.buf.extend_from_slice(&bytes[..3]);
        assert!(d.decode().unwrap().is_none());
        assert_eq!(d.bytes_wanted(), MAX_HEADER);
        d.buf.extend_from_slice(&bytes[3..100]);
        assert!(d.decode().unwrap().is_none());
        assert_eq!(d.bytes_wanted(), bytes.len() - 100);
        d.buf.extend_from_slice(&bytes[100..]);
        assert_eq!(d.decode().unwrap(), Some(Message::Text("a".repeat(200))));
    }

    #[test]
    fn every_protocol_violation_is_refused() {
        let unmasked = vec![0x81, 1, b'a'];
        assert!(decode_all(&unmasked, 64)[0]
            .as_ref()
            .unwrap_err()
            .contains("masked"));
        let mut rsv = client_frame(true, OP_TEXT, b"a");
        rsv[0] |= 0x40;
        assert!(decode_all(&rsv, 64)[0]
            .as_ref()
            .unwrap_err()
            .contains("reserved bits"));
        let reserved_op = client_frame(true, 0x3, b"a");
        assert!(decode_all(&reserved_op, 64)[0].is_err());
        let stray = client_frame(true, OP_CONTINUATION, b"a");
        assert!(decode_all(&stray, 64)[0].is_err());
        let frag_ping = client_frame(false, OP_PING, b"a");
        assert!(decode_all(&frag_ping, 64)[0].is_err());
        let bad_utf8 = client_frame(true, OP_TEXT, &[0xff, 0xfe]);
        assert_eq!(
            decode_all(&bad_utf8, 64)[0].as_ref().unwrap_err(),
            "text message is not UTF-8"
        );
        let big = client_frame(true, OP_TEXT, &[b'a'; 100]);
        assert!(decode_all(&big, 64)[0]
            .as_ref()
            .unwrap_err()
            .contains("over 64"));
        let mut frags = client_frame(false, OP_TEXT, &[b'a'; 40]);
        frags.extend(client_frame(true, OP_CONTINUATION, &[b'a'; 40]));
        assert!(decode_all(&frags, 64)[0]
            .as_ref()
            .unwrap_err()
            .contains("over 64"));
        let two_starts = [
            client_frame(false, OP_TEXT, b"a"),
            client_frame(true, OP_TEXT, b"b"),
        ]
        .concat();
        assert!(decode_all(&two_starts, 64)[0].is_err());
    }

    /// Found by the `ws_decoder` fuzz target (`docs/TESTING.md`): a close frame with code
    /// 996 was accepted and would have been echoed to the client.
    #[test]
    fn fuzz_regression_close_code_996_is_a_protocol_error() {
        let crash = [
            0x88, 0x85, 0x12, 0x38, 0x56, 0x78, 0x11, 0xdc, 0x01, 0x34, 0x77,
        ];
        let mut d = Decoder::new(125, Bytes::new());
        d.feed(&crash);
        let err = d.decode().expect_err("close code 996 is refused");
        assert_eq!(err.close_code(), Some(close::PROTOCOL_ERROR));
        for code in [
            0u16,
            999,
            1004,
            1005,
            1006,
            1015,
            1016,
            2999,
            5000,
            u16::MAX,
        ] {
            let frame = client_frame(true, OP_CLOSE, &code.to_be_bytes());
            assert!(decode_all(&frame, 64)[0].is_err(), "{code}");
        }
        for code in [1000u16, 1001, 1003, 1007, 1011, 1013, 1014, 3000, 4999] {
            let frame = client_frame(true, OP_CLOSE, &code.to_be_bytes());
            assert_eq!(
                decode_all(&frame, 64),
                vec![Ok(Message::Close(Some(code)))],
                "{code}"
            );
        }
    }

    #[test]
    fn close_codes_the_rfc_forbids_on_the_wire_are_refused_and_never_sent() {
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 2999, 5000, 65535] {
            let frame = client_frame(true, OP_CLOSE, &bad.to_be_bytes());
            assert_eq!(
                decode_all(&frame, 64)[0].as_ref().unwrap_err(),
                "protocol error: invalid close code",
                "{bad}"
            );
        }
        for good in [1000u16, 1001, 1003, 1007, 1011, 3000, 4123, 4999] {
            let frame = client_frame(true, OP_CLOSE, &good.to_be_bytes());
            assert_eq!(decode_all(&frame, 64), vec![Ok(Message::Close(Some(good)))]);
        }
        assert_eq!(&close(1005, "")[..], &[0x88, 2, 0x03, 0xE8]);
        assert_eq!(&close(1013, "")[2..4], &1013u16.to_be_bytes());
    }

    #[test]
    fn an_emptied_large_buffer_is_released() {
        let bytes = client_frame(true, OP_TEXT, &[b'a'; 10_000]);
        let mut d = Decoder::new(20_000, Bytes::new());
        d.buf.extend_from_slice(&bytes);
        assert!(d.decode().unwrap().is_some());
        assert_eq!(d.buf.capacity(), 0);
    }
}
