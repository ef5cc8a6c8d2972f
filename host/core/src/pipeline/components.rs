//! The parts of a pipeline that live above the core: sinks and the plugin chain.
//!
//! The core defines what a sink ([`Sink`]) and a processor ([`Processor`]) are, and the
//! pipeline drives them; it never names an implementation. `walflow-sinks` and
//! `walflow-plugin-host` depend on the core, so the core asks for them through [`Components`],
//! which the `walflow` crate fills with the standard ones (and a program embedding walflow may
//! fill with its own). See `docs/architecture.md`.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use walflow_config::{Config, SinkConfig};

use super::Processor;
use crate::metrics::Metrics;
use crate::sink::{Sink, SinkError};

/// Builds the sinks and the processor a configuration names.
#[async_trait]
pub trait Components: Send + Sync {
    /// The sink a `[[sinks]]` (or `[dead_letter]`) entry describes; `base` is the directory
    /// relative paths are read against.
    async fn sink(&self, config: &SinkConfig, base: &Path) -> Result<Box<dyn Sink>, SinkError>;

    /// The processor that runs the configured `[[plugins]]` (only asked for when there are
    /// some).
    async fn processor(
        &self,
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Box<dyn Processor>>;

    /// The most memory the processor of `config` can hold, in MiB (what a service budgets
    /// plugins by); 0 when it cannot say.
    fn plugin_memory_ceiling_mb(&self, _config: &Config) -> u64 {
        0
    }

    /// Whether the file at `path` is a plugin this host can run; `Err` says why not, in one
    /// sentence. Without a plugin host, nothing is.
    fn check_plugin(&self, _path: &Path) -> Result<(), String> {
        Err("this walflow has no plugin host".into())
    }
}
