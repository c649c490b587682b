//! The telehub wire protocol, shared by the hub, the simulator (`telehub-sim`) and the
//! tests, so that both ends of a connection read and write the same shapes.
//!
//! `docs/PROTOCOL.md` is the reference; this crate is its code, and a test checks that
//! the document's error-code and close-code tables list exactly what is here.
//!
//! - [`ids`]: identifiers and their rules (rooms, clients, metrics, units, timestamps).
//! - [`codes`]: the `error` frame codes and the WebSocket close codes the hub sends.
//! - [`role`]: what a connection is ([`Role`]) and how it reaches the hub ([`Via`]).
//! - [`inbound`]: client → hub. The hub's validating parser ([`inbound::parse`]) and the
//!   typed messages clients build ([`inbound::ToHub`]).
//! - [`outbound`]: hub → client. [`outbound::ServerMessage`], serialised by the hub from
//!   borrowed data and deserialised by clients.
//! - [`seqs`]: sets of device seqs as inclusive ranges (`accepted`, `store_unavailable`).
//! - [`rate`]: the token bucket both sides use to stay within (or enforce) a rate.
//! - [`backoff`]: exponential reconnect backoff with equal jitter.
//!
//! No I/O and no async runtime: framing, sockets and timers belong to the users.

#![warn(unreachable_pub, missing_docs)]

pub mod backoff;
pub mod codes;
pub mod ids;
pub mod inbound;
pub mod outbound;
pub mod rate;
pub mod role;
pub mod seqs;

pub use codes::ErrorCode;
pub use role::{Role, Via};
