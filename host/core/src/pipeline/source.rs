//! The pipeline's change source: the replication stream as a [`Producer`], its checkpoint, and
//! the two tasks around it.
//!
//! - The reader [`pump`]s the stream's producer — [`Changes`], with incremental snapshot
//!   chunks [`Interleaved`] into it, [`Selected`] to the captured tables — into the delivery
//!   loop. [`Changes`] only ever awaits `next_item` to completion (cancelling it could cut a
//!   protocol message in half); it is woken for a stop through [`StreamControl`].
//! - The acknowledger receives LSNs every sink has flushed, writes the checkpoint, and only then
//!   confirms through [`StreamControl`] — so PostgreSQL never holds a position the checkpoint
//!   does not.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use async_trait::async_trait;

use crate::checkpoint::{CheckpointStore, Ledger, SnapshotProgress};
use crate::event::Lsn;
use crate::metrics::Metrics;
use crate::producer::{KEEP_ALIVE_EVERY, Position, Producer, Unit};
use crate::replication::stream::StreamControl;
use crate::replication::{ReplicationStream, StreamItem, StreamOptions};
use crate::snapshot::incremental::{Incremental, Marks};
use crate::snapshot::interleave::Interleaved;
use walflow_config::tables::TableSelector;
use walflow_config::{Config, SourceConfig};

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

/// Where a producer's units go: the delivery loop.
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
        self.metrics.record_in(unit.events());
        let committed = unit.events().first().map(|e| e.source.commit_time_us);
        if let (Some(lsn), Some(commit_us)) = (unit.position().lsn(), committed) {
            self.metrics.record_unacked(lsn, commit_us);
        }
        self.budget
            .acquire(super::weight::of_events(unit.events()))
            .await;
        self.units.send(unit).await.is_ok()
    }
}

/// Hands every unit of `producer` to the delivery loop, in order and within the queue budget.
/// `Ok(true)` once the producer ran out, `Ok(false)` when the delivery loop went away first.
/// While the delivery loop is behind, the producer is kept alive (see
/// [`Producer::keep_alive`]).
pub async fn pump(producer: &mut dyn Producer, out: &Output) -> anyhow::Result<bool> {
    while let Some(unit) = producer.next().await? {
        let send = out.send(unit);
        tokio::pin!(send);
        // Usually there is room at once; a timer is set up only when there is not.
        let sent = match futures::FutureExt::now_or_never(&mut send) {
            Some(sent) => sent,
            None => wait_keeping_alive(&mut send, producer).await?,
        };
        if !sent {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Waits for `send` to finish, keeping `producer` alive meanwhile.
async fn wait_keeping_alive(
    send: &mut std::pin::Pin<&mut impl std::future::Future<Output = bool>>,
    producer: &mut dyn Producer,
) -> anyhow::Result<bool> {
    let mut tick = tokio::time::interval(KEEP_ALIVE_EVERY);
    tick.reset();
    loop {
        tokio::select! {
            sent = &mut *send => return Ok(sent),
            _ = tick.tick() => producer.keep_alive().await?,
        }
    }
}

/// The replication stream as a producer: committed transactions, and the server's position
/// whenever nothing is in flight.
pub struct Changes {
    stream: ReplicationStream,
    metrics: Arc<Metrics>,
}

impl Changes {
    /// Produces what `stream` receives, noting the server's position in `metrics`.
    pub fn new(stream: ReplicationStream, metrics: Arc<Metrics>) -> Changes {
        Changes { stream, metrics }
    }

    /// The stream back, for the final confirmation and a clean stop.
    pub fn into_stream(self) -> ReplicationStream {
        self.stream
    }
}

#[async_trait]
impl Producer for Changes {
    /// Only ever awaits the stream's `next_item` to completion (see the module doc). An
    /// interrupt (an incremental snapshot request over the control socket) comes only between
    /// transactions, so it reports the server's position as an idle unit: whoever merges into
    /// the stream looks at its requests now, exactly as on a keepalive.
    async fn next(&mut self) -> anyhow::Result<Option<Unit>> {
        let item = self.stream.next_item().await?;
        self.metrics.set_server_lsn(self.stream.server_lsn());
        Ok(match item {
            StreamItem::Transaction(t) => Some(Unit::Transaction(t)),
            StreamItem::Idle(lsn) => Some(Unit::Idle(lsn)),
            StreamItem::Interrupted => Some(Unit::Idle(self.stream.server_lsn())),
            StreamItem::End => None,
        })
    }

    async fn keep_alive(&mut self) -> anyhow::Result<()> {
        Ok(self.stream.keep_alive().await?)
    }
}

/// Keeps the events of the captured tables (and logical messages), and leaves out heartbeat
/// rows and messages. Outermost, so that what merges into the stream (the incremental snapshot, which
/// takes its signal rows out) still sees every table.
pub struct Selected<P> {
    inner: P,
    selector: TableSelector,
    heartbeat: Option<(String, String)>,
}

impl<P> Selected<P> {
    /// `inner`'s units with only the events of `source`'s captured tables.
    pub fn new(inner: P, source: &SourceConfig, selector: TableSelector) -> Selected<P> {
        Selected {
            inner,
            selector,
            heartbeat: super::heartbeat::table(source),
        }
    }

    /// The producer inside.
    pub fn into_inner(self) -> P {
        self.inner
    }
}

#[async_trait]
impl<P: Producer> Producer for Selected<P> {
    async fn next(&mut self) -> anyhow::Result<Option<Unit>> {
        let mut unit = self.inner.next().await?;
        // A transaction left empty still moves the position on: an idle slot follows the server.
        if let Some(Unit::Transaction(t)) = unit.as_mut() {
            t.events.retain(|e| {
                if is_message(e) {
                    return !e.is_heartbeat_message();
                }
                self.selector.matches(&e.relation.schema, &e.relation.table)
                    && !is_heartbeat(e, self.heartbeat.as_ref())
            });
        }
        Ok(unit)
    }

    async fn keep_alive(&mut self) -> anyhow::Result<()> {
        self.inner.keep_alive().await
    }
}

/// What the reader task produces from: the stream, with incremental snapshot chunks merged
/// in, restricted to the captured tables.
pub type Stream = Selected<Interleaved<Changes>>;

/// The stream of `config`'s source as the pipeline reads it.
pub fn producer(
    stream: ReplicationStream,
    source: &SourceConfig,
    selector: TableSelector,
    incremental: Option<Incremental>,
    metrics: Arc<Metrics>,
) -> Stream {
    Selected::new(
        Interleaved::new(Changes::new(stream, metrics), incremental),
        source,
        selector,
    )
}

/// Pumps `producer` into `out` until the stream ends (on a stop through its control, or the
/// server's end), then hands the stream back for the final confirmation and a clean stop.
pub async fn read(mut producer: Stream, out: Output) -> anyhow::Result<ReplicationStream> {
    pump(&mut producer, &out).await?;
    Ok(producer.into_inner().into_inner().into_stream())
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

fn is_heartbeat(e: &crate::event::Event, table: Option<&(String, String)>) -> bool {
    table.is_some_and(|(s, t)| e.relation.schema == *s && e.relation.table == *t)
}

fn is_message(e: &crate::event::Event) -> bool {
    e.op == crate::event::Op::Message
}

/// Checkpoints, then confirms, every acknowledged LSN through the [`Ledger`]. Returns the
/// last one. Incremental snapshot progress is recorded once the position after it is
/// acknowledged.
pub async fn acknowledge(
    mut acks: watch::Receiver<Position>,
    mut ledger: Ledger,
    control: StreamControl,
    marks: Option<Marks>,
) -> anyhow::Result<Option<Lsn>> {
    while acks.changed().await.is_ok() {
        // The stream's units all lead to WAL positions.
        let Some(acked) = acks.borrow_and_update().lsn() else {
            continue;
        };
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
