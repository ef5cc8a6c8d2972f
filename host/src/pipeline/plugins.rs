//! The plugin chain as the pipeline's [`Processor`].

use std::sync::Arc;

use super::Processor;
use crate::config::Config;
use crate::metrics::Metrics;

/// Loads the configured plugins into a chain.
pub async fn build(_config: &Config, _metrics: Arc<Metrics>) -> anyhow::Result<Box<dyn Processor>> {
    anyhow::bail!("plugins are not wired into the pipeline yet")
}
