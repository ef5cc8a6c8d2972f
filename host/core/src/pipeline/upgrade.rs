//! The first `walflow run` after a drained upgrade: continue on the new server without a
//! re-snapshot.
//!
//! `pg_upgrade` (or a dump and restore) gives the server a new system identifier and drops the
//! replication slots, so the checkpoint's history cannot be followed: the continuity check
//! refuses, or `snapshot = "when_needed"` re-snapshots. A drain marker
//! (`checkpoint::DrainMarker`) changes that: `walflow drain` proved that everything up to its
//! position was delivered and checkpointed and that writes had stopped. The new server's WAL
//! holds nothing walflow has to see before the moment a new slot is created, provided writes
//! stay stopped until then (the runbook's order), so a slot created now continues the stream
//! exactly: the publication (per `publication_autocreate`) and the slot are created, a new
//! checkpoint names them, and the marker is archived.
//!
//! A marker is used only when it vouches for the checkpoint (same slot, server and database, and
//! the checkpoint at or past the drained position); otherwise it is ignored with a warning and
//! the run goes on as without one. Run against the very server the marker came from — no
//! upgrade happened — the marker is archived too: writes may resume after that, so it no longer
//! proves anything about a later upgrade.

use crate::checkpoint::{Checkpoint, CheckpointStore, DrainMarker, DrainMarkerStore, SlotIdentity};
use walflow_config::Config;
use walflow_pg::commands::{SlotSnapshot, SystemIdentity};
use walflow_pg::{ConnectOptions, Connection};

/// Before streaming: when the state directory holds a drain marker for the checkpoint and the
/// server is a new one, starts a new slot there and checkpoints it. Does nothing without a
/// marker.
pub async fn continue_after_drain(config: &Config, store: &CheckpointStore) -> anyhow::Result<()> {
    let markers = DrainMarkerStore::new(&config.state.dir, &config.source.slot);
    let Some(marker) = markers.load()? else {
        return Ok(());
    };
    let Some(checkpoint) = store.load()? else {
        tracing::warn!(marker = %markers.path().display(), "ignoring the drain marker: there is no checkpoint for it to vouch for");
        return Ok(());
    };
    if let Some(why) = marker.mismatch(&checkpoint) {
        tracing::warn!(marker = %markers.path().display(), "ignoring the drain marker: {why}");
        return Ok(());
    }
    let opts = ConnectOptions::from_source(&config.source)?;
    let mut conn = Connection::connect(&opts, true).await?;
    let system = conn.identify_system().await?;
    if system.system_id == marker.system_id {
        conn.close().await;
        markers.archive()?;
        tracing::info!(
            "the server was not upgraded since `walflow drain`; archived the drain marker, so an upgrade after this run needs a new drain"
        );
        return Ok(());
    }
    let lsn = new_slot(&mut conn, config, &marker).await?;
    let server_version = conn.show("server_version").await?;
    conn.close().await;
    store.save(&continued(checkpoint, &system, lsn))?;
    markers.archive()?;
    tracing::info!(
        drained_lsn = %marker.lsn,
        slot = %config.source.slot,
        start_lsn = %lsn,
        "the server was upgraded (PostgreSQL {} → {server_version}, system identifier {} → {}) after `walflow drain` delivered everything: continuing from the new slot without a re-snapshot; archived the drain marker",
        marker.server_version,
        marker.system_id,
        system.system_id,
    );
    Ok(())
}

/// Makes sure the publication exists, then the slot: creates it, or takes one the upgrade
/// carried over (`pg_upgrade` from PostgreSQL 17 on migrates logical slots). Returns where
/// streaming starts.
async fn new_slot(
    conn: &mut Connection,
    config: &Config,
    marker: &DrainMarker,
) -> anyhow::Result<crate::checkpoint::Lsn> {
    let source = &config.source;
    // Before the slot: pgoutput reads the publication as of each change.
    let action = conn.ensure_publication(source).await?;
    tracing::info!(publication = %source.publication, ?action, "publication on the upgraded server");
    if let Some(info) = conn.slot_info(&source.slot).await? {
        let lsn = info.confirmed_flush_lsn.unwrap_or_default();
        tracing::info!(slot = %source.slot, lsn = %lsn, "the upgrade carried the slot over; continuing from its position");
        return Ok(lsn);
    }
    let made = conn
        .create_slot(&source.slot, SlotSnapshot::Nothing)
        .await?;
    tracing::info!(slot = %source.slot, lsn = %made.consistent_point, drained_lsn = %marker.lsn, "created replication slot on the upgraded server");
    Ok(made.consistent_point)
}

/// `checkpoint` moved to the new server's slot at `lsn`, keeping snapshot progress.
fn continued(
    checkpoint: Checkpoint,
    system: &SystemIdentity,
    lsn: crate::checkpoint::Lsn,
) -> Checkpoint {
    let identity = SlotIdentity {
        system_id: system.system_id,
        timeline: system.timeline,
        created_lsn: lsn,
        ..checkpoint.identity
    };
    Checkpoint {
        snapshot: checkpoint.snapshot,
        ..Checkpoint::new(lsn, identity)
    }
}
