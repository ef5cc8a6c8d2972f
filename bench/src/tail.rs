//! `walflow tail` against `pg_recvlogical` on the same backlog of changes.
//!
//! One throwaway PostgreSQL 15, one table, one publication, two fresh pgoutput slots created
//! before the backlog is written, so both readers decode exactly the same WAL. pg_recvlogical
//! only copies pgoutput's bytes to /dev/null; walflow decodes every message into typed events
//! and prints the JSON envelope (the README's Events section) of each to /dev/null — the work a user gets from it.
//! Printed: events/s of each, the ratio, and each process's peak resident memory.

use std::process::Command;

use anyhow::{Context, bail};

use crate::backlog::{Backlog, PUBLICATION, WALFLOW_SLOT};
use crate::process::measure;

/// Runs the benchmark over `changes` inserted rows.
pub async fn run(changes: u64) -> anyhow::Result<()> {
    let backlog = Backlog::write(
        changes,
        "id int8 PRIMARY KEY, name text, amount numeric, at timestamptz",
        "g, 'name ' || g, g * 1.25, now()",
    )
    .await?;
    let end_lsn: String = backlog
        .db
        .client()
        .await
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let peer = backlog.recvlogical(&end_lsn);
    let peer_run = measure(peer).context("pg_recvlogical")?;

    let state = tempfile::tempdir()?;
    let mut ours = Command::new(std::env::current_exe()?);
    ours.arg("__walflow-tail")
        .arg(backlog.url())
        .args([WALFLOW_SLOT, PUBLICATION, &end_lsn])
        .current_dir(state.path());
    let ours_run = measure(ours).context("walflow tail")?;

    let peer_eps = changes as f64 / peer_run.elapsed.as_secs_f64();
    let ours_eps = changes as f64 / ours_run.elapsed.as_secs_f64();
    println!("tail benchmark: {}", backlog.describe());
    println!(
        "  pg_recvlogical (pgoutput bytes to /dev/null): {}",
        peer_run.describe(peer_eps)
    );
    println!(
        "  walflow tail (JSON events to /dev/null):      {}",
        ours_run.describe(ours_eps)
    );
    println!(
        "  ratio walflow / pg_recvlogical: {:.3} (target ≥ 0.95)",
        ours_eps / peer_eps
    );
    Ok(())
}

/// The `__walflow-tail URL SLOT PUBLICATION UNTIL` child: `walflow tail` with stdout to
/// /dev/null, run from this (release) binary so both sides are optimised builds.
pub async fn child(args: &[String]) -> anyhow::Result<()> {
    let [url, slot, publication, until] = args else {
        bail!("usage: __walflow-tail URL SLOT PUBLICATION UNTIL_LSN");
    };
    let tail = walflow::replication::tail::TailOptions {
        url: Some(url.clone()),
        sslmode: Some("disable".into()),
        slot: Some(slot.clone()),
        publication: Some(publication.clone()),
        until_lsn: Some(until.clone()),
        ..Default::default()
    };
    walflow::replication::tail::run(&tail).await
}
