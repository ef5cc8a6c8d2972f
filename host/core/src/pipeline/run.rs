//! `walflow run`: assembles a pipeline from its configuration and runs it until stopped.
//!
//! Everything that can be checked before touching the source is checked first (sinks can be
//! opened, plugins load), so a bad configuration fails with one sentence and no checkpoint
//! written. A source that is down (refused, timed out, starting up) is then waited for, as an
//! outage later on is, while one that rejects us (login, database, privilege) fails at once.
//! Then the reader task streams committed transactions into a bounded channel, the
//! delivery loop drains it, and acknowledged LSNs flow back: checkpoint first, then the
//! confirmation to PostgreSQL.

use std::sync::Arc;

use anyhow::Context;
use tokio::sync::{mpsc, watch};

use super::source::{self, Output};
use super::startup;
use super::{Components, Delivery, DeliveryOptions, Passthrough, Processor, QueueBudget, Unit};
use crate::checkpoint::{CheckpointStore, Ledger};
use crate::encode::{EncodeOptions, Encoder};
use crate::event::Lsn;
use crate::metrics::Metrics;
use crate::producer::Position;
use crate::sink::Sink;
use crate::snapshot::control;
use crate::snapshot::incremental::{Incremental, Marks, Setup};
use crate::snapshot::initial::{self, Outcome};
use walflow_config::sinks::FileSinkConfig;
use walflow_config::tables::TableSelector;
use walflow_config::{Config, OnError, SinkConfig, SinkKind, SinkOnError, SnapshotMode};
use walflow_pg::{Link, wait_until_reachable};

/// How a run ends, besides SIGINT/SIGTERM.
#[derive(Default)]
pub struct RunOptions {
    /// Stop once this LSN is acknowledged (set later, e.g. by the demo's writer).
    pub until_lsn: Option<watch::Receiver<Option<Lsn>>>,
    /// Continue although the slot's history has a gap.
    pub accept_gap: bool,
    /// Sinks written in Rust by a program embedding walflow, in addition to `[[sinks]]`.
    pub extra_sinks: Vec<Box<dyn Sink>>,
    /// Stops the run when it becomes `true` (for programs embedding walflow).
    pub stop: Option<watch::Receiver<bool>>,
    /// Where the run counts what it does (a fresh set when `None`); `walflow serve` keeps one
    /// per pipeline across restarts to show its status.
    pub metrics: Option<Arc<Metrics>>,
    /// The embedding program handles SIGINT/SIGTERM itself and stops the run through `stop`
    /// (`walflow serve` stops every pipeline, each with its final checkpoint).
    pub embedded: bool,
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Events written to the sinks.
    pub events_out: u64,
    /// The last LSN every sink acknowledged.
    pub acked_lsn: Option<Lsn>,
}

/// Channel capacity between the reader and the delivery loop, in transactions.
const UNIT_QUEUE: usize = 64;

/// Most events waiting between the reader and the delivery loop (see [`QueueBudget`]); the
/// bytes they may hold are a share of `[memory] budget_mb`.
const QUEUED_EVENTS: usize = 16_384;

/// Runs the pipeline `config` describes until stopped, with sinks and plugins from `parts`.
pub async fn run(
    config: Config,
    parts: Arc<dyn Components>,
    options: RunOptions,
) -> anyhow::Result<RunSummary> {
    let metrics = options.metrics.clone().unwrap_or_default();
    if let Some(m) = &config.metrics {
        metrics
            .clone()
            .serve(&m.listen)
            .await
            .with_context(|| format!("cannot listen for metrics on {}", m.listen))?;
    }
    let selector = TableSelector::from_source(&config.source)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ack_tx, ack_rx) = watch::channel(Position::Lsn(Lsn::ZERO));
    spawn_stop_triggers(
        stop_tx.clone(),
        ack_rx.clone(),
        options.until_lsn,
        options.stop,
        !options.embedded,
    );
    let startup_link = Link::default();
    metrics.watch_link(startup_link.clone());
    let has_extra = !options.extra_sinks.is_empty();
    let Some(mut sinks) =
        wait_for_sinks(&config, &*parts, has_extra, &startup_link, stop_rx.clone()).await?
    else {
        return Ok(RunSummary::default());
    };
    sinks.extend(options.extra_sinks);
    let dead_letter = build_dead_letter(&config, &*parts).await?;
    let processor = build_processor(&config, &*parts, &metrics).await?;
    let encoder = Encoder::from_config(
        &config,
        EncodeOptions {
            name: config.source.topic_prefix.clone(),
            include_types: false,
        },
    );
    let accept_gap = options.accept_gap || config.source.accept_gap;
    let budget = Arc::new(QueueBudget::new(super::Weight {
        events: QUEUED_EVENTS,
        bytes: config.memory.queue_bytes(),
    }));
    let mut delivery = Delivery::new(
        processor,
        encoder,
        sinks,
        dead_letter,
        DeliveryOptions {
            max_events: config.batch.max_events,
            max_bytes: config.memory.batch_bytes(),
            max_unflushed_bytes: config.memory.unflushed_bytes(),
            ..DeliveryOptions::default()
        },
        metrics.clone(),
    )
    .with_budget(budget.clone())
    .with_rejections_dead_lettered(
        config
            .sinks
            .iter()
            .map(|s| s.on_error == SinkOnError::DeadLetter)
            .collect(),
    );
    if !wait_until_reachable(&config.source, &startup_link, stop_rx.clone()).await? {
        delivery.close().await;
        return Ok(RunSummary::default());
    }
    let started = startup::gate(&config).await?;
    let store = CheckpointStore::new(&config.state.dir, &config.source.slot);
    let running = Running {
        delivery,
        budget,
        metrics,
        selector,
        accept_gap,
        stop: (stop_tx, stop_rx),
        acks: (ack_tx, ack_rx),
    };
    // After a drained upgrade, a new slot continues the checkpoint before anything reads it.
    let result = match super::upgrade::continue_after_drain(&config, &store).await {
        Ok(()) => follow(&config, &store, running).await,
        Err(e) => Err(e),
    };
    if result.is_err() {
        startup::undo(&config, started, &store).await;
    }
    result
}

/// What a started run streams with.
struct Running {
    delivery: Delivery,
    budget: Arc<QueueBudget>,
    metrics: Arc<Metrics>,
    selector: TableSelector,
    accept_gap: bool,
    stop: (watch::Sender<bool>, watch::Receiver<bool>),
    acks: (watch::Sender<Position>, watch::Receiver<Position>),
}

/// Takes the initial snapshot when one is due, then streams until stopped.
async fn follow(
    config: &Config,
    store: &CheckpointStore,
    mut running: Running,
) -> anyhow::Result<RunSummary> {
    let snapshot = initial_snapshot(config, store, &mut running).await;
    let Running {
        mut delivery,
        budget,
        metrics,
        selector,
        accept_gap,
        stop: (stop_tx, mut stop_rx),
        acks: (ack_tx, ack_rx),
    } = running;
    let stop_now = match &snapshot {
        Ok(Outcome::Stopped) | Err(_) => true,
        Ok(_) => config.source.snapshot == SnapshotMode::InitialOnly,
    };
    if stop_now {
        delivery.close().await;
        let acked_lsn = match snapshot? {
            Outcome::Done(cp) => Some(cp.lsn),
            _ => None,
        };
        return Ok(RunSummary {
            events_out: metrics.events_out_total(),
            acked_lsn,
        });
    }

    let opened = source::open(config, accept_gap).await?;
    metrics.watch_link(opened.stream.link());
    let control = opened.stream.control();
    let identity = opened.stream.identity().clone();
    let progress = store.load()?.map(|c| c.snapshot).unwrap_or_default();
    let (incremental, marks, _listening) =
        start_incremental(config, &opened.stream, &progress, &metrics).await?;
    metrics.set_healthy(true);

    let _heartbeat = config.source.heartbeat_interval.map(|every| {
        AbortOnDrop(tokio::spawn(super::heartbeat::run(
            config.source.clone(),
            every,
        )))
    });
    let _slot_watch = AbortOnDrop(tokio::spawn(super::slot_watch::run(
        config.source.clone(),
        metrics.clone(),
    )));
    let (unit_tx, unit_rx) = mpsc::channel::<Unit>(UNIT_QUEUE);
    let on_stop = control.clone();
    tokio::spawn(async move {
        while !*stop_rx.borrow_and_update() {
            if stop_rx.changed().await.is_err() {
                return;
            }
        }
        on_stop.stop();
    });
    let changes = source::producer(
        opened.stream,
        &config.source,
        selector,
        incremental,
        metrics.clone(),
    );
    let reader = tokio::spawn(source::read(
        changes,
        Output {
            units: unit_tx,
            budget: budget.clone(),
            metrics: metrics.clone(),
        },
    ));
    let acknowledger = tokio::spawn(source::acknowledge(
        ack_rx,
        Ledger::new(opened.store, identity, progress),
        control.clone(),
        marks,
    ));
    let delivered = delivery.run(unit_rx, ack_tx, stop_tx.subscribe()).await;
    budget.close();
    // Whatever happened, stop reading; the acknowledger ends once delivery dropped its sender.
    let _ = stop_tx.send(true);
    control.stop();
    let acked = acknowledger.await.context("the acknowledger panicked")?;
    let read = reader.await.context("the replication reader panicked")?;
    metrics.set_healthy(false);
    let acked_lsn = delivered
        .map_err(crate::error::Error::from)?
        .and_then(Position::lsn);
    let acked = acked?;
    let mut stream = read?;
    if let Some(lsn) = acked {
        stream.confirm(lsn);
    }
    stream.stop().await?;
    Ok(RunSummary {
        events_out: metrics.events_out_total(),
        acked_lsn: acked_lsn.or(acked),
    })
}

/// Units queued between the initial snapshot's readers and the delivery loop.
const SNAPSHOT_QUEUE: usize = 16;

/// Takes the initial snapshot when one is due: its rows go through the delivery loop, and the
/// acknowledgements back to its ledger of chunks.
async fn initial_snapshot(
    config: &Config,
    store: &CheckpointStore,
    running: &mut Running,
) -> anyhow::Result<Outcome> {
    let started =
        initial::start_if_needed(config, store, running.accept_gap, running.metrics.clone())
            .await?;
    let Some((mut rows, mut chunks)) = started else {
        return Ok(Outcome::NotNeeded);
    };
    let (units, input) = mpsc::channel(SNAPSHOT_QUEUE);
    let (acks, acked) = watch::channel(Position::Rows(0));
    let out = Output {
        units,
        budget: running.budget.clone(),
        metrics: running.metrics.clone(),
    };
    // The output goes with the pump: once the rows are all out, the delivery loop's input ends.
    let reading = async move { source::pump(&mut rows, &out).await };
    let stop = running.stop.1.clone();
    let budget = running.budget.clone();
    let delivering = async {
        let delivered = running.delivery.drive(input, acks, stop.clone()).await;
        // Nothing will take more rows: free a reader waiting for room.
        if delivered.is_err() || *stop.borrow() {
            budget.close();
        }
        delivered
    };
    let (read, delivered, followed) = tokio::join!(reading, delivering, chunks.follow(acked));
    delivered.map_err(crate::error::Error::from)?;
    followed?;
    if !read? || *stop.borrow() {
        return Ok(Outcome::Stopped);
    }
    Ok(Outcome::Done(chunks.finish().await?))
}

/// Aborts a background task when the run ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The incremental snapshot engine, when the source can take requests (a signal table, or the
/// control socket of a read-only source) or a checkpoint holds one in progress.
async fn start_incremental(
    config: &Config,
    stream: &crate::replication::ReplicationStream,
    progress: &crate::snapshot::SnapshotProgress,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<(
    Option<Incremental>,
    Option<Marks>,
    Option<control::Listening>,
)> {
    let source = &config.source;
    let wanted =
        source.signal_table.is_some() || source.read_only || progress.incremental.is_some();
    if !wanted {
        return Ok((None, None, None));
    }
    let (command_tx, command_rx) = mpsc::channel(8);
    let listening = if source.read_only {
        let wake = stream.control();
        Some(control::serve(config, command_tx, move || wake.interrupt()).await?)
    } else {
        None
    };
    let (engine, marks) = Incremental::start(Setup {
        source: source.clone(),
        control: stream.control(),
        start_lsn: stream.confirmed_lsn(),
        progress: progress.incremental.clone().unwrap_or_default(),
        metrics: metrics.clone(),
        commands: command_rx,
    })?;
    Ok((Some(engine), Some(marks), listening))
}

/// Starts the sinks, waiting out destinations that are down (retried with the one backoff,
/// each failure logged and shown by `/health` through `link`) — as a destination that goes
/// down later is waited for, and as PostgreSQL is. Nothing is created on PostgreSQL
/// meanwhile. `None` when stopped while waiting; errors waiting cannot fix are returned.
async fn wait_for_sinks(
    config: &Config,
    parts: &dyn Components,
    has_extra: bool,
    link: &Link,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<Option<Vec<Box<dyn Sink>>>> {
    let backoff = walflow_pg::link::STARTUP_BACKOFF;
    let mut failures = 0;
    loop {
        let e = match build_sinks(config, parts, has_extra).await {
            Ok(sinks) => {
                if failures > 0 {
                    tracing::info!("every sink is reachable again");
                }
                return Ok(Some(sinks));
            }
            Err(e) if crate::error::class_of(&e) == Some(crate::error::Class::Transient) => e,
            Err(e) => return Err(e),
        };
        failures += 1;
        let delay = backoff.delay(failures);
        let retry_in_ms = delay.as_millis() as u64;
        tracing::warn!(error = %format!("{e:#}"), retry_in_ms, "a sink is unreachable at start; retrying");
        link.down(&format!("{e:#}"));
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return Ok(None),
        }
    }
}

async fn build_sinks(
    config: &Config,
    parts: &dyn Components,
    has_extra: bool,
) -> anyhow::Result<Vec<Box<dyn Sink>>> {
    if config.sinks.is_empty() && !has_extra {
        anyhow::bail!("the config has no [[sinks]]; add one, e.g. [[sinks]] type = \"stdout\"");
    }
    let mut sinks = Vec::with_capacity(config.sinks.len());
    for s in &config.sinks {
        let sink = parts
            .sink(s, &config.base_dir)
            .await
            .with_context(|| format!("cannot start sink `{}`", s.kind.name()))?;
        sinks.push(sink);
    }
    Ok(sinks)
}

/// The dead-letter sink, when a plugin may dead-letter events.
async fn build_dead_letter(
    config: &Config,
    parts: &dyn Components,
) -> anyhow::Result<Option<Box<dyn Sink>>> {
    let wanted = config
        .plugins
        .iter()
        .any(|p| p.on_error == OnError::DeadLetter)
        || config
            .sinks
            .iter()
            .any(|s| s.on_error == SinkOnError::DeadLetter);
    if !wanted {
        return Ok(None);
    }
    let default;
    let sink = match &config.dead_letter {
        Some(s) => s,
        None => {
            default = default_dead_letter(&config.state.dir);
            &default
        }
    };
    let sink = parts
        .sink(sink, &config.base_dir)
        .await
        .context("cannot start the [dead_letter] sink")?;
    Ok(Some(sink))
}

/// Without a `[dead_letter]` section, dead letters go to `dead-letter.jsonl` in the state
/// directory.
fn default_dead_letter(state_dir: &std::path::Path) -> SinkConfig {
    // Absolute, because a sink's path is read against the config file's directory and the
    // state directory already is.
    let path = state_dir.join("dead-letter.jsonl");
    SinkConfig {
        kind: SinkKind::File(FileSinkConfig {
            path: std::path::absolute(&path).unwrap_or(path),
            max_bytes: None,
        }),
        on_error: SinkOnError::Stop,
    }
}

async fn build_processor(
    config: &Config,
    parts: &dyn Components,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Box<dyn Processor>> {
    if config.plugins.is_empty() {
        return Ok(Box::new(Passthrough));
    }
    parts.processor(config, metrics.clone()).await
}

/// Stops the run on SIGINT/SIGTERM, on an external stop, or once `until` is acknowledged.
fn spawn_stop_triggers(
    stop: watch::Sender<bool>,
    mut acked: watch::Receiver<Position>,
    until: Option<watch::Receiver<Option<Lsn>>>,
    external: Option<watch::Receiver<bool>>,
    on_signals: bool,
) {
    if let Some(mut external) = external {
        let stop = stop.clone();
        tokio::spawn(async move {
            while !*external.borrow_and_update() {
                if external.changed().await.is_err() {
                    return;
                }
            }
            let _ = stop.send(true);
        });
    }
    if on_signals {
        spawn_signal_handler(stop.clone());
    }
    let Some(mut until) = until else { return };
    tokio::spawn(async move {
        // The target may be set later (the demo's writer sets it when it is done); once its
        // sender is gone, only acknowledgements can still change the outcome.
        let mut until_open = true;
        loop {
            let target = *until.borrow_and_update();
            if let Some(target) = target
                && acked.borrow().lsn().is_some_and(|lsn| lsn >= target)
            {
                let _ = stop.send(true);
                return;
            }
            tokio::select! {
                r = until.changed(), if until_open => {
                    if r.is_err() {
                        until_open = false;
                        if target.is_none() {
                            return;
                        }
                    }
                }
                r = acked.changed() => if r.is_err() { return },
            }
        }
    });
}

/// Stops the run on SIGINT or SIGTERM.
fn spawn_signal_handler(stop: watch::Sender<bool>) {
    tokio::spawn(async move {
        let signal = wait_for_stop_signal().await;
        tracing::info!("{signal}; flushing and stopping");
        let _ = stop.send(true);
    });
}

/// Waits for SIGINT or SIGTERM; says which ("interrupted" or "terminated").
pub async fn wait_for_stop_signal() -> &'static str {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let terminated = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted",
        _ = terminated => "terminated",
    }
}
