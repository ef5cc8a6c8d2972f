//! walflow: PostgreSQL change data capture whose every event passes through WebAssembly
//! components written by its users.
//!
//! This crate is the `walflow` command (the only crate that knows clap) and the front door for
//! programs that embed walflow: [`run`] runs a pipeline with the standard sinks and plugin
//! host. The work is done by the crates re-exported below; `docs/architecture.md` says what
//! each one is for and what it may depend on.

pub mod cli;
pub mod components;
pub mod demo;

pub use walflow_config as config;
pub use walflow_core::{
    assemble, checkpoint, encode, error, event, metrics, pipeline, preflight, replication,
    snapshot, value,
};
pub use walflow_pg as pg;
pub use walflow_pgoutput as pgoutput;
pub use walflow_plugin_host as plugin;
pub use walflow_serve as serve;
pub use walflow_sinks as sink;

/// Runs the pipeline `config` describes until stopped, with every compiled-in sink and the
/// WebAssembly plugin host.
pub async fn run(
    config: walflow_config::Config,
    options: walflow_core::pipeline::RunOptions,
) -> anyhow::Result<walflow_core::pipeline::RunSummary> {
    walflow_core::pipeline::run(config, std::sync::Arc::new(components::Standard), options).await
}
