//! What `walflow run` settles before it touches the source, and what it undoes when it fails
//! to start.
//!
//! - The gate: a replication slot starts pinning WAL and deciding what counts as "already
//!   delivered" the moment it exists. So the run first runs the same preflight as
//!   `walflow check` and refuses to create anything on a setup the check marks FAIL — a
//!   missing publication under `publication_autocreate = "disabled"` would otherwise yield a
//!   slot, an "initial snapshot" of zero tables and a checkpoint past every existing row.
//!   It also makes sure the state directory can hold a checkpoint.
//! - The cleanup: a start that fails after this run created the slot, before any checkpoint
//!   names it, drops the slot again instead of leaving it inactive and pinning WAL.

use std::path::Path;

use crate::checkpoint::CheckpointStore;
use crate::preflight::{self, Finding, Status};
use walflow_config::Config;

/// Checks the run settles by itself: connecting (retried like any outage), the slot and the
/// checkpoint (the continuity check refuses with its own documented messages, or recovers under
/// `accept_gap` / `snapshot = "when_needed"`), and server capacity that frees up on its own.
const SETTLED_BY_THE_RUN: &[&str] = &[
    "connection",
    "check",
    "slot",
    "checkpoint",
    "slot WAL",
    "replication slots",
    "wal senders",
];

/// What the gate learned that the cleanup needs.
#[derive(Debug, Clone, Copy)]
pub struct Started {
    /// The slot existed before this run (created by the user, or by an earlier run).
    slot_existed: bool,
}

/// Refuses to start on a setup `walflow check` marks FAIL, or with a state directory that
/// cannot hold a checkpoint. Nothing on the server is created or changed.
pub async fn gate(config: &Config) -> anyhow::Result<Started> {
    state_dir_writable(&config.state.dir)?;
    let report = preflight::check(config).await;
    let blocking: Vec<&Finding> = report
        .findings
        .iter()
        .filter(|f| f.status == Status::Fail && !SETTLED_BY_THE_RUN.contains(&f.check.as_str()))
        .collect();
    if !blocking.is_empty() {
        anyhow::bail!(
            "the database is not ready for walflow, nothing was created: {}; run `walflow check` for every fix",
            describe(&blocking)
        );
    }
    Ok(Started {
        slot_existed: slot_exists(config).await.unwrap_or(true),
    })
}

fn describe(findings: &[&Finding]) -> String {
    findings
        .iter()
        .map(|f| match &f.fix {
            Some(fix) => format!("{}: {} (fix: {})", f.check, f.message, first_line(fix)),
            None => format!("{}: {}", f.check, f.message),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

/// Creates the state directory and proves a file can be written there, before a slot exists
/// whose position only a checkpoint there could remember.
fn state_dir_writable(dir: &Path) -> anyhow::Result<()> {
    let cannot = |e: std::io::Error| {
        anyhow::anyhow!(
            "cannot write checkpoints to [state] dir {}: {e}; make it writable or point dir elsewhere",
            dir.display()
        )
    };
    std::fs::create_dir_all(dir).map_err(cannot)?;
    let probe = dir.join(".walflow-write-probe");
    std::fs::write(&probe, b"").map_err(cannot)?;
    std::fs::remove_file(&probe).map_err(cannot)
}

/// Whether the configured slot exists on the server; `None` when that cannot be asked.
async fn slot_exists(config: &Config) -> Option<bool> {
    let client = walflow_pg::connect_sql(&config.source).await.ok()?;
    let row = client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&config.source.slot],
        )
        .await
        .ok()?;
    Some(row.is_some())
}

/// After a failed start: drops the slot if this run created it and no checkpoint names it, so
/// it does not pin WAL. A slot someone else made, or one a checkpoint depends on, stays.
pub async fn undo(config: &Config, started: Started, store: &CheckpointStore) {
    if started.slot_existed || !matches!(store.load(), Ok(None)) {
        return;
    }
    let slot = &config.source.slot;
    match drop_inactive_slot(config).await {
        Ok(true) => {
            tracing::info!(slot = %slot, "dropped the slot this failed start created; nothing was confirmed from it")
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(slot = %slot, error = %e, "could not drop the slot this failed start created; drop it by hand with pg_drop_replication_slot")
        }
    }
}

async fn drop_inactive_slot(config: &Config) -> anyhow::Result<bool> {
    let client = walflow_pg::connect_sql(&config.source).await?;
    // This run's own walsender may still be exiting: give it a moment to release the slot.
    for _ in 0..25 {
        let row = client
            .query_opt(
                "SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
                &[&config.source.slot],
            )
            .await?;
        match row.map(|r| r.get::<_, bool>(0)) {
            None => return Ok(false),
            Some(true) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
            Some(false) => {
                client
                    .execute(
                        "SELECT pg_catalog.pg_drop_replication_slot($1)",
                        &[&config.source.slot],
                    )
                    .await?;
                return Ok(true);
            }
        }
    }
    anyhow::bail!("the slot stayed in use")
}
