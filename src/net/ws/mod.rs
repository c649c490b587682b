//! WebSocket framing (RFC 6455) for the server side: [`codec`] decodes clients' frames
//! with every rule a server must enforce, and [`frames`] encodes the hub's messages once
//! as frames shared by every recipient.

pub(crate) mod codec;
#[cfg(test)]
mod codec_props;
pub(crate) mod frames;
