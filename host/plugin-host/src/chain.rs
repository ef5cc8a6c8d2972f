//! The plugin chain: the configured plugins run over each batch in config order (typically
//! filter → transforms → topic namer), each on the version that was current when the batch
//! started.
//!
//! Failures follow each plugin's `on_error`: `stop` fails the batch (nothing of it is emitted);
//! `skip` and `dead-letter` isolate the failing events by re-running halves of the batch (on a
//! fresh instance after a trap) until the events that fail alone are found, then drop them or
//! hand them back as dead letters. Events a transform reports as failed are isolated already.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use super::convert::WorkBatch;
use super::engine::PluginEngine;
use super::error::{LoadError, PluginError};
use super::instance::{LoadedPlugin, PluginInstance, PluginSpec, Role};
use walflow_config::{OnError, PluginConfig};
use walflow_core::event::Event;

/// What a batch became.
#[derive(Debug, Default)]
pub struct ChainOutput {
    /// The surviving events, in order, with `topic` set when a topic namer ran.
    pub events: Vec<Event>,
    /// Events a `dead-letter` plugin failed on, with the error.
    pub dead_letters: Vec<DeadLetter>,
    /// How many events a `skip` plugin failed on and dropped.
    pub skipped: usize,
}

/// An event a plugin failed on.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The event as it entered the failing plugin.
    pub event: Event,
    /// The plugin's name.
    pub plugin: String,
    /// What went wrong.
    pub error: String,
}

/// Why a batch failed as a whole.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    /// A plugin with `on_error = "stop"` failed.
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// A plugin instance could not be rebuilt (e.g. `init` failed after a trap).
    #[error(transparent)]
    Load(#[from] LoadError),
}

/// The current version of one configured plugin, shared by the chain (which reads it at each
/// batch boundary) and the hot reloader (which replaces it).
#[derive(Debug)]
pub struct PluginSlot {
    spec: PluginSpec,
    current: RwLock<Arc<LoadedPlugin>>,
    version: AtomicU64,
    reloads: AtomicU64,
    reload_failures: AtomicU64,
}

impl PluginSlot {
    fn new(spec: PluginSpec, loaded: Arc<LoadedPlugin>) -> PluginSlot {
        PluginSlot {
            spec,
            current: RwLock::new(loaded),
            version: AtomicU64::new(1),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        }
    }

    /// The plugin's spec (path, name, config, limits, policy).
    pub fn spec(&self) -> &PluginSpec {
        &self.spec
    }

    /// The version serving now.
    pub fn current(&self) -> Arc<LoadedPlugin> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// 1 for the version loaded at start, +1 per successful reload.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Successful reloads so far.
    pub fn reloads(&self) -> u64 {
        self.reloads.load(Ordering::Relaxed)
    }

    /// Failed reload attempts so far (the old version kept serving).
    pub fn reload_failures(&self) -> u64 {
        self.reload_failures.load(Ordering::Relaxed)
    }

    /// Makes `loaded` the version for every batch that starts from now on.
    pub(crate) fn swap(&self, loaded: Arc<LoadedPlugin>) {
        let mut current = self
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *current = loaded;
        self.version.fetch_add(1, Ordering::AcqRel);
        self.reloads.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn count_failure(&self) {
        self.reload_failures.fetch_add(1, Ordering::Relaxed);
    }
}

struct Stage {
    slot: Arc<PluginSlot>,
    /// The version this batch runs on, fixed at the batch boundary.
    plugin: Arc<LoadedPlugin>,
    instance: Option<PluginInstance>,
}

/// A chain of plugins.
pub struct Chain {
    stages: Vec<Stage>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.stages.iter().map(|s| &s.slot.spec.name))
            .finish()
    }
}

impl Chain {
    /// Loads the `[[plugins]]` of a configuration, calling each one's `init`.
    pub fn new(engine: &PluginEngine, configs: &[PluginConfig]) -> Result<Chain, LoadError> {
        let specs = configs
            .iter()
            .map(PluginSpec::from_config)
            .collect::<Result<Vec<_>, _>>()?;
        Chain::from_specs(engine, specs)
    }

    /// Loads plugins from specs, calling each one's `init`.
    pub fn from_specs(engine: &PluginEngine, specs: Vec<PluginSpec>) -> Result<Chain, LoadError> {
        let mut stages = Vec::with_capacity(specs.len());
        for spec in specs {
            let loaded = Arc::new(LoadedPlugin::load(engine, &spec)?);
            if loaded.role() == Role::Sink {
                return Err(LoadError::WrongWorld {
                    path: spec.path.clone(),
                    exports: "a sink; sink plugins go in [[sinks]] with type = \"plugin\", not in the chain"
                        .into(),
                });
            }
            let instance = PluginInstance::new(loaded.clone())?;
            stages.push(Stage {
                slot: Arc::new(PluginSlot::new(spec, loaded.clone())),
                plugin: loaded,
                instance: Some(instance),
            });
        }
        Ok(Chain { stages })
    }

    /// The plugins' slots, in chain order (for the hot reloader and metrics).
    pub fn slots(&self) -> Vec<Arc<PluginSlot>> {
        self.stages.iter().map(|s| s.slot.clone()).collect()
    }

    /// Another chain over the same plugin slots (so hot reloads reach both), with instances of
    /// its own, created at its first batch: for running batches in parallel.
    pub fn sibling(&self) -> Chain {
        Chain {
            stages: self
                .stages
                .iter()
                .map(|s| Stage {
                    slot: s.slot.clone(),
                    plugin: s.slot.current(),
                    instance: None,
                })
                .collect(),
        }
    }

    /// The batch boundary: every stage picks the version it runs the next whole batch on.
    /// [`run`](Self::run) does it; call it yourself, in batch order, when several chains run
    /// batches at once, so that a later batch never runs an older version.
    pub fn pick_versions(&mut self) {
        for stage in &mut self.stages {
            let current = stage.slot.current();
            if !Arc::ptr_eq(&current, &stage.plugin) {
                stage.plugin = current;
                stage.instance = None;
            }
        }
    }

    /// Runs the chain over one batch. Synchronous: call it from `spawn_blocking`.
    pub fn run(&mut self, events: Vec<Event>) -> Result<ChainOutput, ChainError> {
        self.pick_versions();
        self.run_picked(events)
    }

    /// Runs the chain over one batch on the versions [`pick_versions`](Self::pick_versions)
    /// chose.
    pub fn run_picked(&mut self, events: Vec<Event>) -> Result<ChainOutput, ChainError> {
        let mut output = ChainOutput::default();
        if self.stages.is_empty() || events.is_empty() {
            output.events = events;
            return Ok(output);
        }
        let mut batch = WorkBatch::new(events);
        for stage in &mut self.stages {
            if batch.len() == 0 {
                break;
            }
            batch = stage.run(batch, &mut output)?;
        }
        output.events = batch.host;
        Ok(output)
    }
}

impl Stage {
    fn run(
        &mut self,
        mut batch: WorkBatch,
        output: &mut ChainOutput,
    ) -> Result<WorkBatch, ChainError> {
        match self.attempt(&mut batch) {
            Ok(failed) => {
                for (event, message) in failed {
                    let error = PluginError::Failed {
                        plugin: self.slot.spec.name.to_string(),
                        message,
                    };
                    self.settle(event, error, output)?;
                }
                Ok(batch)
            }
            Err(error) => {
                if error.poisons_instance() {
                    self.instance = None;
                }
                if self.slot.spec.on_error == OnError::Stop {
                    return Err(error.into());
                }
                if batch.len() <= 1 {
                    for event in batch.host.drain(..) {
                        self.settle(event, error.clone(), output)?;
                    }
                    return Ok(batch);
                }
                let tail = batch.split_off(batch.len() / 2);
                let mut head = self.run(batch, output)?;
                let tail = self.run(tail, output)?;
                head.append(tail);
                Ok(head)
            }
        }
    }

    /// One call over the whole batch; on success the batch is updated in place and the events
    /// the plugin reported as failed are returned.
    fn attempt(&mut self, batch: &mut WorkBatch) -> Result<Vec<(Event, String)>, PluginError> {
        let name = self.slot.spec.name.clone();
        let role = self.plugin.role();
        let instance = self.instance()?;
        let bad = |message: String| PluginError::BadOutput {
            plugin: name.to_string(),
            message,
        };
        match role {
            Role::Filter => {
                let keep = instance.filter(&batch.host)?;
                if keep.len() != batch.len() {
                    return Err(bad(format!(
                        "{} answers for {} events",
                        keep.len(),
                        batch.len()
                    )));
                }
                batch.retain(&keep);
                Ok(Vec::new())
            }
            Role::Transform => {
                let edits = instance.transform(&batch.host)?;
                batch.apply_edits(edits, &name)
            }
            Role::TopicNamer => {
                let topics = instance.name_topics(&batch.host)?;
                if topics.len() != batch.len() {
                    return Err(bad(format!(
                        "{} topics for {} events",
                        topics.len(),
                        batch.len()
                    )));
                }
                batch.set_topics(topics);
                Ok(Vec::new())
            }
            Role::Sink => Err(bad("a sink cannot run in the chain".into())),
        }
    }

    /// The live instance, rebuilt from the batch's version when a trap threw the last one away.
    fn instance(&mut self) -> Result<&mut PluginInstance, PluginError> {
        if self.instance.is_none() {
            let instance = PluginInstance::new(self.plugin.clone()).map_err(|e| match e {
                LoadError::Init { error, .. } => error,
                other => PluginError::Failed {
                    plugin: self.slot.spec.name.to_string(),
                    message: other.to_string(),
                },
            })?;
            self.instance = Some(instance);
        }
        match self.instance.as_mut() {
            Some(instance) => Ok(instance),
            None => unreachable!("instance was just set"),
        }
    }

    /// Applies the policy to one event the plugin failed on.
    fn settle(
        &self,
        event: Event,
        error: PluginError,
        output: &mut ChainOutput,
    ) -> Result<(), ChainError> {
        match self.slot.spec.on_error {
            OnError::Stop => Err(error.into()),
            OnError::Skip => {
                tracing::warn!(plugin = %self.slot.spec.name, error = %error, "skipping an event the plugin failed on");
                output.skipped += 1;
                Ok(())
            }
            OnError::DeadLetter => {
                output.dead_letters.push(DeadLetter {
                    event,
                    plugin: self.slot.spec.name.to_string(),
                    error: error.to_string(),
                });
                Ok(())
            }
        }
    }
}
