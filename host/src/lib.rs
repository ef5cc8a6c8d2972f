//! walflow: PostgreSQL change data capture whose every event passes through WebAssembly
//! components written by its users.
//!
//! The crate is laid out along the data flow (see `DESIGN.md`): `replication` and `pgoutput`
//! bring changes in, `snapshot` reads existing rows, `plugin` runs the component chain,
//! `encode` and `sink` send events out, and `checkpoint` decides what may be confirmed.

pub mod checkpoint;
pub mod cli;
mod collect;
pub mod config;
pub mod demo;
pub mod encode;
pub mod event;
pub mod metrics;
pub mod pgoutput;
pub mod pipeline;
pub mod plugin;
pub mod preflight;
pub mod redact;
pub mod replication;
pub mod setup_sql;
pub mod sink;
pub mod snapshot;
pub mod tables;
pub mod value;
