//! A token bucket per connection: `rate` tokens a second, at most `burst` saved up.
//!
//! Each message costs one token and each reading of a batch one more, so a device that
//! floods gets `rate_limited` errors for the excess instead of the hub doing unbounded
//! work on its behalf. The bucket itself is the protocol crate's, the same one the
//! simulator uses to stay under this limit; it lives in the connection's reader loop.

pub use telehub_protocol::rate::TokenBucket;
