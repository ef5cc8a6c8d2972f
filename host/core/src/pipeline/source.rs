//! The pipeline's change source: the replication stream, its checkpoint, and the two tasks
//! around it.
//!
//! - The reader owns the [`ReplicationStream`] and only ever awaits `next_item` to completion
//!   (cancelling it could cut a protocol message in half); it is woken for a stop through
//!   [`StreamControl`].
//! - The acknowledger receives LSNs every sink has flushed, writes the checkpoint, and only then
//!   confirms through [`StreamControl`] — so PostgreSQL never holds a position the checkpoint
//!   does not.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::Unit;
use crate::checkpoint::{CheckpointStore, Ledger};
use crate::event::Lsn;
use crate::metrics::Metrics;
use crate::replication::stream::StreamControl;
use crate::replication::{ReplicationStream, StreamItem, StreamOptions};
use crate::snapshot::SnapshotProgress;
use crate::snapshot::incremental::{Incremental, Marks};
use walflow_config::Config;
use walflow_config::tables::TableSelector;

/// An open slot and the checkpoint it resumed from.
pub struct Source {
    /// The stream.
    pub stream: ReplicationStream,
    /// Where acknowledged positions are recorded.
    pub store: CheckpointStore,
}

/// Connects to the source of `config`, checks continuity against the stored checkpoint, and
/// starts streaming.
pub async fn open(config: &Config, accept_gap: bool) -> anyhow::Result<Source> {
    let store = CheckpointStore::new(&config.state.dir, &config.source.slot);
    let checkpoint = store.load()?;
    let mut options = StreamOptions::for_source(&config.source);
    options.accept_gap = accept_gap;
    let stream = ReplicationStream::open(&config.source, checkpoint.as_ref(), options).await?;
    Ok(Source { stream, store })
}

/// Where the reader sends units.
pub struct Output {
    /// The delivery loop's input.
    pub units: mpsc::Sender<Unit>,
    /// Bounds the events queued for it.
    pub budget: Arc<super::QueueBudget>,
    /// Counts what comes in.
    pub metrics: Arc<Metrics>,
}

impl Output {
    /// `false` once the delivery loop is gone.
    async fn send(&self, unit: Unit) -> bool {
        self.metrics.record_in(&unit.events);
        self.budget
            .acquire(super::weight::of_events(&unit.events))
            .await;
        self.units.send(unit).await.is_ok()
    }
}

/// Reads units until the stream ends (on a stop through `control`, or the server's end) and
/// hands the stream back for the final confirmation and a clean stop. With an incremental
/// snapshot engine, its chunks are merged into the stream where they belong.
pub async fn read(
    mut stream: ReplicationStream,
    selector: TableSelector,
    out: Output,
    mut incremental: Option<Incremental>,
) -> anyhow::Result<ReplicationStream> {
    let heartbeat = stream_heartbeat(&stream);
    loop {
        let ready = incremental
            .as_mut()
            .map(Incremental::poll)
            .unwrap_or_default();
        for unit in ready {
            if !out.send(unit).await {
                return Ok(stream);
            }
        }
        let item = stream.next_item().await?;
        let mut ahead = Vec::new();
        out.metrics.set_server_lsn(stream.server_lsn());
        let unit = match item {
            StreamItem::Transaction(mut unit) => {
                if let Some(engine) = incremental.as_mut() {
                    ahead.extend(engine.on_transaction(&mut unit));
                }
                unit.events.retain(|e| {
                    is_message(e)
                        || (selector.matches(&e.relation.schema, &e.relation.table)
                            && !is_heartbeat(e, heartbeat.as_ref()))
                });
                Some(unit)
            }
            // Nothing pending: an empty unit lets the slot follow the server once everything
            // before it is acknowledged, so an idle slot does not pin WAL.
            StreamItem::Idle(lsn) => {
                if let Some(engine) = incremental.as_mut() {
                    ahead.extend(engine.on_idle(lsn));
                }
                Some(idle_unit(lsn))
            }
            StreamItem::Interrupted => None,
            StreamItem::End => break,
        };
        for unit in ahead.into_iter().chain(unit) {
            if !out.send(unit).await {
                return Ok(stream);
            }
        }
    }
    Ok(stream)
}

fn apply_marks(marks: &Marks, lsn: Lsn, snapshot: &mut SnapshotProgress) {
    let mut marks = marks.lock().unwrap_or_else(|p| p.into_inner());
    while marks.front().is_some_and(|(at, _)| *at <= lsn) {
        if let Some((_, progress)) = marks.pop_front() {
            let active = !progress.tables.is_empty() || progress.paused;
            snapshot.incremental = active.then_some(progress);
        }
    }
}

fn stream_heartbeat(stream: &ReplicationStream) -> Option<(String, String)> {
    super::heartbeat::table(stream.source())
}

fn is_heartbeat(e: &crate::event::Event, table: Option<&(String, String)>) -> bool {
    table.is_some_and(|(s, t)| e.relation.schema == *s && e.relation.table == *t)
}

fn is_message(e: &crate::event::Event) -> bool {
    e.op == crate::event::Op::Message
}

fn idle_unit(lsn: Lsn) -> Unit {
    Unit {
        xid: None,
        commit_lsn: lsn,
        end_lsn: lsn,
        commit_time_us: 0,
        gid: None,
        events: Vec::new(),
    }
}

/// Checkpoints, then confirms, every acknowledged LSN through the [`Ledger`]. Returns the
/// last one. Incremental snapshot progress is recorded once the position after it is
/// acknowledged.
pub async fn acknowledge(
    mut acks: watch::Receiver<Lsn>,
    mut ledger: Ledger,
    control: StreamControl,
    marks: Option<Marks>,
) -> anyhow::Result<Option<Lsn>> {
    while acks.changed().await.is_ok() {
        let acked = *acks.borrow_and_update();
        let Some(lsn) = ledger.next_position(acked, &control) else {
            continue;
        };
        if let Some(marks) = &marks {
            apply_marks(marks, lsn, ledger.snapshot_mut());
        }
        ledger.record(lsn, &control).await?;
    }
    Ok(ledger.last())
}
