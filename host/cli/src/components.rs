//! The standard parts of a pipeline: every sink `walflow-sinks` was built with, and the
//! plugin chain of `walflow-plugin-host`. `walflow run`, `walflow demo` and programs that
//! embed walflow through [`crate::run`] use these.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use walflow_config::{Config, SinkConfig};
use walflow_core::metrics::Metrics;
use walflow_core::pipeline::{Components, Processor};
use walflow_core::sink::{Sink, SinkError};

/// The sinks and plugin host compiled into this walflow.
#[derive(Debug, Clone, Copy, Default)]
pub struct Standard;

#[async_trait]
impl Components for Standard {
    async fn sink(&self, config: &SinkConfig, base: &Path) -> Result<Box<dyn Sink>, SinkError> {
        walflow_sinks::build(config, base).await
    }

    async fn processor(
        &self,
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<Box<dyn Processor>> {
        walflow_plugin_host::processor::build(config, metrics).await
    }

    fn plugin_memory_ceiling_mb(&self, config: &Config) -> u64 {
        walflow_plugin_host::processor::memory_ceiling_mb(config)
    }

    fn check_plugin(&self, path: &Path) -> Result<(), String> {
        let engine = walflow_plugin_host::PluginEngine::shared().map_err(|e| e.to_string())?;
        let spec = walflow_plugin_host::PluginSpec::new(path, "{}");
        walflow_plugin_host::LoadedPlugin::load(&engine, &spec)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}
