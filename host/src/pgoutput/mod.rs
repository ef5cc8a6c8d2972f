//! pgoutput, PostgreSQL's logical replication output plugin: a pure decoder and the
//! transaction assembler built on it. No I/O, no async, no panics on any input.
//!
//! - [`decode()`] / [`Decoder`]: one XLogData payload → one [`Message`] of protocol versions 1–4,
//!   borrowing strings and column bytes from the buffer (postgres-protocol's codec style: tag
//!   constants in [`tag`], one body type per message, a [`DecodeError`] naming the message,
//!   field and offset).
//! - [`Assembler`]: messages → committed [`Transaction`]s of [`crate::event::Event`]s, with the
//!   relation cache, typed values ([`crate::value`]), streamed and two-phase transactions.
//!
//! The replication loop calls, per XLogData message,
//! `assembler.push_bytes(wal_start, payload)?` (or [`decode()`] with
//! [`Assembler::in_stream`], then [`Assembler::push`]) and delivers each `Transaction` it
//! returns, confirming its `end_lsn` once delivered. Two more calls matter for checkpoints and
//! memory: [`Assembler::held_since_lsn`] (never confirm at or past a prepared transaction still
//! held) and [`Assembler::take_committed_events`] (deliver a huge transaction in pieces).

pub mod assemble;
mod decode;
mod message;

pub use assemble::{AssembleError, Assembler, Transaction};
pub use decode::{DecodeError, Decoder, decode, tag};
pub use message::*;

#[cfg(test)]
mod assemble_tests;
#[cfg(test)]
mod tests;
