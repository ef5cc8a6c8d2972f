//! The plugin chain as the pipeline's [`Processor`], which is how the core runs plugins
//! without knowing they are WebAssembly.
//!
//! The chain is synchronous CPU work, so each batch runs on tokio's blocking pool; the chain
//! moves into the blocking task and back (through a channel of free chains), which keeps it
//! free of locks.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::Context;
use async_trait::async_trait;
use tokio::sync::mpsc;

use crate::reload::Reloader;
use crate::{Chain, ChainError, PluginEngine, PluginSlot};
use walflow_config::Config;
use walflow_core::error::{Class, Error};
use walflow_core::event::Event;
use walflow_core::metrics::Metrics;
use walflow_core::pipeline::{FollowUp, Processed, Processor, Started};

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
    let parallel = chains();
    let (back, free) = mpsc::unbounded_channel();
    for _ in 1..parallel {
        back.send(chain.sibling()).expect("the receiver is here");
    }
    back.send(chain).expect("the receiver is here");
    Ok(Box::new(ChainProcessor {
        free,
        back,
        chains: parallel,
        lost: Arc::new(AtomicUsize::new(0)),
        follow_up: None,
        slots,
        metrics,
        _reloader: reloader,
    }))
}

/// Most chains running batches at once (one per core, up to this).
const MAX_CHAINS: usize = 4;

/// How many copies of the chain run batches at once: one per core, up to [`MAX_CHAINS`].
fn chains() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, MAX_CHAINS)
}

/// The most linear memory the plugin chain of `config` can hold, in MiB: every plugin's cap
/// (`memory_mb`, or the default) times the copies of the chain that run at once. What a
/// service budgets a tenant's plugins by.
pub fn memory_ceiling_mb(config: &walflow_config::Config) -> u64 {
    let per_chain: u64 = config
        .plugins
        .iter()
        .map(|p| p.memory_mb.unwrap_or(crate::Limits::default().memory_mb))
        .sum();
    per_chain * chains() as u64
}

/// Runs batches through the chain; with several cores, through sibling chains at once (same
/// plugin versions, instances of their own). A chain goes back to the free ones as soon as its
/// batch is done, so the next batch starts on it while an older one is still running: no
/// batch waits for a slower neighbour to finish. Answers are taken in batch order by the
/// caller (see [`Processor::start`]).
struct ChainProcessor {
    /// Chains not running a batch.
    free: mpsc::UnboundedReceiver<Chain>,
    /// Where a chain goes back when its batch is done.
    back: mpsc::UnboundedSender<Chain>,
    chains: usize,
    /// Chains dropped because a batch panicked in them.
    lost: Arc<AtomicUsize>,
    /// Run on each batch's output on the chain's thread (see [`Processor::follow_with`]).
    follow_up: Option<FollowUp>,
    slots: Vec<Arc<PluginSlot>>,
    metrics: Arc<Metrics>,
    _reloader: Reloader,
}

#[async_trait]
impl Processor for ChainProcessor {
    async fn process(&mut self, events: Vec<Event>) -> Result<Processed, Error> {
        self.start(events).await.answer().await
    }

    fn parallelism(&self) -> usize {
        self.chains
    }

    fn follow_with(&mut self, follow_up: FollowUp) {
        self.follow_up = Some(follow_up);
    }

    async fn start(&mut self, events: Vec<Event>) -> Started {
        self.record_reloads();
        if self.lost.load(Ordering::Acquire) >= self.chains {
            return Started::Done(Err(Error::fatal(
                "the plugin chain was lost after an earlier failure",
            )));
        }
        let Some(mut chain) = self.free.recv().await else {
            return Started::Done(Err(Error::fatal("the plugin chain was lost")));
        };
        // Versions are picked here, in batch order, so a later batch never runs an older
        // version than an earlier one.
        chain.pick_versions();
        let back = self.back.clone();
        let lost = self.lost.clone();
        let follow_up = self.follow_up.clone();
        Started::Running(tokio::task::spawn_blocking(move || {
            let cpu_before = thread_cpu_time();
            let run = std::panic::catch_unwind(AssertUnwindSafe(|| chain.run_picked(events)));
            let cpu = thread_cpu_time().saturating_sub(cpu_before);
            match run {
                Ok(result) => {
                    // The processor may be gone (the pipeline stopped): then so is the chain.
                    let _ = back.send(chain);
                    let mut processed = result.map(processed).map_err(|e| classified(&e))?;
                    processed.cpu = Some(cpu);
                    if let Some(follow_up) = follow_up {
                        processed.records = Some(follow_up(&processed.events));
                    }
                    Ok(processed)
                }
                Err(panic) => {
                    lost.fetch_add(1, Ordering::AcqRel);
                    Err(Error::fatal(format!(
                        "the plugin chain panicked: {}",
                        panic_message(&panic)
                    )))
                }
            }
        }))
    }
}

impl ChainProcessor {
    /// Copies the plugin slots' reload counts into the metrics.
    fn record_reloads(&self) {
        let reloads = self.slots.iter().map(|s| s.reloads()).sum();
        let failures = self.slots.iter().map(|s| s.reload_failures()).sum();
        self.metrics.set_reloads(reloads, failures);
    }
}

/// A plugin failing on the batch (under `on_error = "stop"`) is about that data; a plugin
/// that cannot be loaded again is not.
fn classified(e: &ChainError) -> Error {
    let class = match e {
        ChainError::Plugin(_) => Class::Definite,
        ChainError::Load(_) => Class::Fatal,
    };
    Error::new(class, e.to_string())
}

/// CPU time this thread has used so far.
fn thread_cpu_time() -> std::time::Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec for the call to fill; the clock exists on Linux.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) } == 0;
    if !ok {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// A panic's message, when it has one.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

fn processed(output: crate::ChainOutput) -> Processed {
    Processed {
        records: None,
        cpu: None,
        events: output.events,
        dead_letters: output
            .dead_letters
            .into_iter()
            .map(|d| (d.event, format!("plugin {}: {}", d.plugin, d.error)))
            .collect(),
    }
}
