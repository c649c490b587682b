//! The network edge: bytes in and out. The [`listener`] accepts TCP connections under the
//! connection cap and hands each to hyper (HTTP) or to the [`handshake`] (`/ws/...`);
//! [`ws`] is the RFC 6455 codec the WebSocket sessions speak; [`transport`] is what
//! lets them run on more than one kind of stream at no cost to plain TCP.

pub(crate) mod handshake;
pub(crate) mod listener;
pub(crate) mod transport;
pub(crate) mod ws;
