//! The network edge: bytes in and out. The [`listener`] accepts TCP connections under the
//! connection cap and hands each to hyper (HTTP) or to the [`handshake`] (`/ws/...`);
//! [`ws`] is the RFC 6455 codec the WebSocket sessions speak. With `[server.tls]` the
//! listener first terminates TLS ([`tls`]); [`transport`] is what lets the rest run on
//! either stream at no cost to plain TCP; [`tcp_info`] asks the kernel what the peer
//! has acknowledged (a quiet dashboard's liveness).

pub(crate) mod direct;
pub(crate) mod handshake;
pub(crate) mod listener;
pub(crate) mod tcp_info;
pub(crate) mod tls;
pub(crate) mod transport;
pub(crate) mod ws;
