//! The core of walflow: the event model, the pipeline that carries events from the source
//! through a [`pipeline::Processor`] to [`sink::Sink`]s, checkpoints, snapshots and the
//! replication source built on `walflow-pg` and `walflow-pgoutput`.
//!
//! Laid out along the data flow (see `docs/architecture.md`): [`replication`] and [`assemble`]
//! bring changes in, [`snapshot`] reads existing rows, [`pipeline`] runs them through the
//! processor (the plugin chain, from `walflow-plugin-host`), [`encode`] and the sinks (from
//! `walflow-sinks`) send them out, and [`checkpoint`] decides what may be confirmed.

pub mod assemble;
pub mod checkpoint;
pub mod collect;
pub mod encode;
pub mod error;
pub mod event;
pub mod metrics;
pub mod pipeline;
pub mod preflight;
pub mod producer;
pub mod replication;
pub mod sink;
pub mod snapshot;
pub mod value;

#[cfg(test)]
mod assemble_tests;
