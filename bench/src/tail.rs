//! `walflow tail` against `pg_recvlogical` on the same backlog of changes.
//!
//! One throwaway PostgreSQL 15, one table, one publication, two fresh pgoutput slots created
//! before the backlog is written, so both readers decode exactly the same WAL. pg_recvlogical
//! only copies pgoutput's bytes to /dev/null; walflow decodes every message into typed events
//! and prints the DESIGN.md JSON envelope of each to /dev/null — the work a user gets from it.
//! Printed: events/s of each, the ratio, and each process's peak resident memory.

use std::process::Command;

use anyhow::{Context, bail};
use walflow_tests::{Cluster, ClusterOptions};

use crate::process::measure;

/// Rows per inserting transaction.
const ROWS_PER_TXN: u64 = 5_000;

/// Runs the benchmark over `changes` inserted rows.
pub async fn run(changes: u64) -> anyhow::Result<()> {
    let cluster = tokio::task::spawn_blocking(|| {
        Cluster::start(
            ClusterOptions::default()
                .without_tls()
                // Same decoding memory for both readers (the harness's 64kB makes walflow,
                // which asks for streaming, and pg_recvlogical, which cannot, diverge).
                .setting("logical_decoding_work_mem", "'256MB'"),
        )
    })
    .await??;
    let db = cluster.new_database().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE bench (id int8 PRIMARY KEY, name text, amount numeric, at timestamptz);
             CREATE PUBLICATION bench_pub FOR ALL TABLES;",
        )
        .await?;
    for slot in ["bench_recvlogical", "bench_walflow"] {
        client
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&slot],
            )
            .await?;
    }
    eprintln!("writing a backlog of {changes} changes…");
    let mut start = 0;
    while start < changes {
        let end = (start + ROWS_PER_TXN).min(changes);
        client
            .batch_execute(&format!(
                "INSERT INTO bench SELECT g, 'name ' || g, g * 1.25, now() FROM generate_series({}, {}) g",
                start + 1,
                end
            ))
            .await?;
        start = end;
    }
    let end_lsn: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let conninfo = format!(
        "host=127.0.0.1 port={} user=postgres dbname={}",
        cluster.port(),
        db.name()
    );
    let recvlogical = cluster.bin_dir().join("pg_recvlogical");
    let recvlogical = if recvlogical.exists() {
        recvlogical
    } else {
        "pg_recvlogical".into()
    };
    let mut peer = Command::new(recvlogical);
    peer.args(["-d", &conninfo, "-S", "bench_recvlogical", "--start"])
        .args(["-E", &end_lsn, "--no-loop", "-f", "/dev/null"])
        .args(["-o", "proto_version=1", "-o", "publication_names=bench_pub"]);
    let peer_run = measure(peer).context("pg_recvlogical")?;

    let state = tempfile::tempdir()?;
    let mut ours = Command::new(std::env::current_exe()?);
    ours.arg("__walflow-tail")
        .arg(format!(
            "postgres://postgres@127.0.0.1:{}/{}",
            cluster.port(),
            db.name()
        ))
        .args(["bench_walflow", "bench_pub", &end_lsn])
        .current_dir(state.path());
    let ours_run = measure(ours).context("walflow tail")?;

    let peer_eps = changes as f64 / peer_run.elapsed.as_secs_f64();
    let ours_eps = changes as f64 / ours_run.elapsed.as_secs_f64();
    println!(
        "tail benchmark: {changes} changes in {} transactions, PostgreSQL {}",
        changes.div_ceil(ROWS_PER_TXN),
        cluster.version()
    );
    println!(
        "  pg_recvlogical (pgoutput bytes to /dev/null): {:>10.0} events/s  {:>6.2}s (cpu {:>5.2}s)  peak RSS {:>7.1} MiB",
        peer_eps,
        peer_run.elapsed.as_secs_f64(),
        peer_run.cpu.as_secs_f64(),
        peer_run.max_rss_kib as f64 / 1024.0
    );
    println!(
        "  walflow tail (JSON events to /dev/null):      {:>10.0} events/s  {:>6.2}s (cpu {:>5.2}s)  peak RSS {:>7.1} MiB",
        ours_eps,
        ours_run.elapsed.as_secs_f64(),
        ours_run.cpu.as_secs_f64(),
        ours_run.max_rss_kib as f64 / 1024.0
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
    let tail = walflow::cli::TailArgs {
        config: None,
        url: Some(url.clone()),
        password_env: None,
        sslmode: Some("disable".into()),
        sslrootcert: None,
        slot: Some(slot.clone()),
        publication: Some(publication.clone()),
        until_lsn: Some(until.clone()),
        confirm: false,
        accept_gap: false,
    };
    walflow::replication::tail::run(&tail).await
}
