//! WebSocket framing (RFC 6455) for the server side: [`codec`] encodes the hub's frames
//! once and decodes clients' frames with every rule a server must enforce.

pub(crate) mod codec;
