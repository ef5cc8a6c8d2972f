//! pgoutput, PostgreSQL's logical replication output plugin: a pure decoder. No I/O, no
//! async, no panics on any input.
//!
//! [`decode()`] / [`Decoder`]: one XLogData payload → one [`Message`] of protocol versions 1–4,
//! borrowing strings and column bytes from the buffer (postgres-protocol's codec style: tag
//! constants in [`tag`], one body type per message, a [`DecodeError`] naming the message,
//! field and offset). Turning messages into committed transactions of events is
//! `walflow_core::assemble`'s work; [`wire`] builds message bytes for tests.

mod decode;
mod message;
pub mod wire;

pub use decode::{DecodeError, Decoder, decode, tag};
pub use message::*;

#[cfg(test)]
mod tests;
