//! The network edge: bytes in and out. The [`listener`] accepts TCP connections under the
//! connection cap and hands each to hyper (HTTP) or to the [`handshake`] (`/ws/...`);
//! [`ws`] is the RFC 6455 codec the WebSocket sessions speak.

pub(crate) mod handshake;
pub(crate) mod listener;
pub(crate) mod ws;
