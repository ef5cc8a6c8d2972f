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
    let parallel = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, MAX_CHAINS);
    let mut chains = vec![Some(chain)];
    while chains.len() < parallel {
        let sibling = chains[0].as_ref().map(Chain::sibling);
        chains.push(sibling);
    }
    Ok(Box::new(ChainProcessor {
        chains,
        slots,
        metrics,
        _reloader: reloader,
    }))
}

/// Most chains running batches at once (one per core, up to this).
const MAX_CHAINS: usize = 4;

/// Runs batches through the chain; with several cores, through sibling chains at once (same
/// plugin versions, instances of their own), answering in batch order.
struct ChainProcessor {
    chains: Vec<Option<Chain>>,
    slots: Vec<Arc<PluginSlot>>,
    metrics: Arc<Metrics>,
    _reloader: Reloader,
}

#[async_trait]
impl Processor for ChainProcessor {
    async fn process(&mut self, events: Vec<Event>) -> Result<Processed, String> {
        self.process_many(vec![events])
            .await
            .pop()
            .unwrap_or_else(|| Err("the plugin chain answered nothing".into()))
    }

    fn parallelism(&self) -> usize {
        self.chains.len()
    }

    async fn process_many(&mut self, batches: Vec<Vec<Event>>) -> Vec<Result<Processed, String>> {
        let mut out = Vec::with_capacity(batches.len());
        let mut batches = batches.into_iter().peekable();
        while batches.peek().is_some() {
            let round: Vec<Vec<Event>> = batches.by_ref().take(self.chains.len()).collect();
            let answers = self.run_round(round).await;
            let failed = answers.iter().any(Result::is_err);
            out.extend(answers);
            if failed {
                break;
            }
        }
        out
    }
}

type Running = Vec<(
    usize,
    Option<
        tokio::task::JoinHandle<(
            Chain,
            Result<crate::plugin::ChainOutput, crate::plugin::ChainError>,
        )>,
    >,
)>;

impl ChainProcessor {
    /// Runs one batch per chain at once; answers in order, up to the first error.
    async fn run_round(&mut self, round: Vec<Vec<Event>>) -> Vec<Result<Processed, String>> {
        let mut running: Running = Vec::with_capacity(round.len());
        for (slot, events) in round.into_iter().enumerate() {
            let task = self.chains[slot].take().map(|mut chain| {
                // Versions are picked here, in batch order, so a later batch never runs an
                // older version than an earlier one.
                chain.pick_versions();
                tokio::task::spawn_blocking(move || {
                    let result = chain.run_picked(events);
                    (chain, result)
                })
            });
            running.push((slot, task));
        }
        self.finish(running).await
    }

    /// Waits for the running batches in order and puts their chains back.
    async fn finish(&mut self, running: Running) -> Vec<Result<Processed, String>> {
        let mut out = Vec::with_capacity(running.len());
        for (slot, task) in running {
            let Some(task) = task else {
                out.push(Err(
                    "the plugin chain was lost after an earlier failure".into()
                ));
                continue;
            };
            match task.await {
                Ok((chain, result)) => {
                    self.chains[slot] = Some(chain);
                    out.push(result.map(processed).map_err(|e| e.to_string()));
                }
                Err(e) => out.push(Err(format!("the plugin chain panicked: {e}"))),
            }
        }
        let reloads = self.slots.iter().map(|s| s.reloads()).sum();
        let failures = self.slots.iter().map(|s| s.reload_failures()).sum();
        self.metrics.set_reloads(reloads, failures);
        if let Some(first_error) = out.iter().position(Result::is_err) {
            out.truncate(first_error + 1);
        }
        out
    }
}

fn processed(output: crate::plugin::ChainOutput) -> Processed {
    Processed {
        events: output.events,
        dead_letters: output
            .dead_letters
            .into_iter()
            .map(|d| (d.event, format!("plugin {}: {}", d.plugin, d.error)))
            .collect(),
    }
}
