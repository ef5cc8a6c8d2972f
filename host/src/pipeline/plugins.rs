//! The plugin chain as the pipeline's [`Processor`].
//!
//! The chain is synchronous CPU work, so each batch runs on tokio's blocking pool; the chain
//! moves into the blocking task and back, which keeps it free of locks.

use std::sync::Arc;

use anyhow::Context;
use async_trait::async_trait;

use super::{Processed, Processor};
use crate::config::Config;
use crate::event::Event;
use crate::metrics::Metrics;
use crate::plugin::reload::Reloader;
use crate::plugin::{Chain, PluginEngine, PluginSlot};

/// Loads the configured plugins into a chain (compiling off the async runtime).
/// Plugin files are watched: a changed file is hot-reloaded at a batch boundary.
pub async fn build(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Box<dyn Processor>> {
    let plugins = config.plugins.clone();
    let (chain, engine) = tokio::task::spawn_blocking(move || {
        let engine = PluginEngine::shared()?;
        Chain::new(&engine, &plugins).map(|chain| (chain, engine))
    })
    .await
    .context("loading plugins panicked")??;
    let slots = chain.slots();
    tracing::debug!(
        plugins = slots.len(),
        "watching plugin files for hot reload"
    );
    let reloader = Reloader::watch(engine, slots.clone())
        .map_err(|e| anyhow::anyhow!("cannot watch plugin files for hot reload: {e}"))?;
    Ok(Box::new(ChainProcessor {
        chain: Some(chain),
        slots,
        metrics,
        _reloader: reloader,
    }))
}

struct ChainProcessor {
    chain: Option<Chain>,
    slots: Vec<Arc<PluginSlot>>,
    metrics: Arc<Metrics>,
    _reloader: Reloader,
}

#[async_trait]
impl Processor for ChainProcessor {
    async fn process(&mut self, events: Vec<Event>) -> Result<Processed, String> {
        let mut chain = self
            .chain
            .take()
            .ok_or("the plugin chain was lost after an earlier failure")?;
        let (chain, result) = tokio::task::spawn_blocking(move || {
            let result = chain.run(events);
            (chain, result)
        })
        .await
        .map_err(|e| format!("the plugin chain panicked: {e}"))?;
        self.chain = Some(chain);
        let reloads = self.slots.iter().map(|s| s.reloads()).sum();
        let failures = self.slots.iter().map(|s| s.reload_failures()).sum();
        self.metrics.set_reloads(reloads, failures);
        let output = result.map_err(|e| e.to_string())?;
        Ok(Processed {
            events: output.events,
            dead_letters: output
                .dead_letters
                .into_iter()
                .map(|d| (d.event, format!("plugin {}: {}", d.plugin, d.error)))
                .collect(),
        })
    }
}
