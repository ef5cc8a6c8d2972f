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

use anyhow::Context;
use tokio::sync::{mpsc, watch};

use super::Unit;
use crate::checkpoint::{Checkpoint, CheckpointStore, now_ms};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::replication::stream::StreamControl;
use crate::replication::{ReplicationStream, StreamItem, StreamOptions};
use crate::tables::TableSelector;

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

/// Reads units until the stream ends (on a stop through `control`, or the server's end) and
/// hands the stream back for the final confirmation and a clean stop.
pub async fn read(
    mut stream: ReplicationStream,
    selector: TableSelector,
    units: mpsc::Sender<Unit>,
    budget: Arc<super::QueueBudget>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<ReplicationStream> {
    loop {
        let item = stream.next_item().await?;
        metrics.set_server_lsn(stream.server_lsn());
        let unit = match item {
            StreamItem::Transaction(mut unit) => {
                unit.events.retain(|e| {
                    is_message(e) || selector.matches(&e.relation.schema, &e.relation.table)
                });
                metrics.record_in(&unit.events);
                unit
            }
            // Nothing pending: an empty unit lets the slot follow the server once everything
            // before it is acknowledged, so an idle slot does not pin WAL.
            StreamItem::Idle(lsn) => idle_unit(lsn),
            StreamItem::End => break,
        };
        budget.acquire(unit.events.len()).await;
        if units.send(unit).await.is_err() {
            break;
        }
    }
    Ok(stream)
}

fn is_message(e: &crate::event::Event) -> bool {
    e.op == crate::event::Op::Message
}

fn idle_unit(lsn: u64) -> Unit {
    Unit {
        xid: None,
        commit_lsn: lsn,
        end_lsn: lsn,
        commit_time_us: 0,
        gid: None,
        events: Vec::new(),
    }
}

/// Writes a checkpoint for every acknowledged LSN, then confirms it. Returns the last one.
pub async fn acknowledge(
    mut acks: watch::Receiver<u64>,
    store: CheckpointStore,
    identity: crate::checkpoint::SlotIdentity,
    control: StreamControl,
) -> anyhow::Result<Option<u64>> {
    let mut last = None;
    while acks.changed().await.is_ok() {
        let lsn = *acks.borrow_and_update();
        if lsn == 0 || Some(lsn) <= last {
            continue;
        }
        let checkpoint = Checkpoint {
            lsn,
            identity: identity.clone(),
            written_at_ms: now_ms(),
        };
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.save(&checkpoint))
            .await
            .context("writing the checkpoint panicked")??;
        control.confirm(lsn);
        last = Some(lsn);
    }
    Ok(last)
}
