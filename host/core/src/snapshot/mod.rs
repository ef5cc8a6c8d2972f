//! Snapshots: the rows that already exist, read consistently with the slot and delivered
//! through the same plugins and sinks as live changes.
//!
//! - [`initial`]: at the first start (or when the slot's history broke and `snapshot =
//!   "when_needed"`), every captured table under the snapshot the slot exported, in parallel
//!   page ranges, resumable by chunk.
//! - [`incremental`]: on request while streaming, a table at a time in primary-key chunks,
//!   merged into the stream by the DBLog watermark method so that live changes keep flowing
//!   and a chunk row never overwrites a newer change. Requests come from the signal table or,
//!   for `read_only` sources, over the [`control`] socket of the running process.

pub mod catalog;
pub mod command;
pub mod control;
mod copy_binary;
mod copy_text;
pub mod incremental;
pub mod initial;
pub mod interleave;
pub mod progress;
pub mod request;

pub use crate::checkpoint::{
    ChunkSpec, IncrementalProgress, IncrementalTable, InitialProgress, SnapshotProgress,
};
