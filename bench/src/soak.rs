//! `walflow-bench soak [MINUTES]`: a mixed workload for a while, watching what a long-running
//! pipeline must not accumulate.
//!
//! One throwaway PostgreSQL; a writer commits inserts, updates, deletes and the odd large row
//! at a steady rate while the pipeline `walflow run` runs (the three built-in plugins, JSON to a
//! rotating file sink with fsync) follows, in this process on a runtime of its own. Every few
//! seconds it samples the process's resident memory and open file descriptors (the writer's
//! share of both is small and constant), and the WAL the slot retains. Printed: the samples, and RSS and descriptors
//! after warm-up (the first third) against the end — they must not grow. The file sink rotates
//! and old files are removed, so the disk stays bounded however long it runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use walflow_tests::{Cluster, ClusterOptions, TestDb};

use crate::pipeline::{build_plugins, plugin_chain_to_file};

/// What one sample saw.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// Since the start.
    pub at: Duration,
    /// walflow's resident memory, KiB.
    pub rss_kib: u64,
    /// walflow's open file descriptors.
    pub fds: usize,
    /// WAL the slot keeps, bytes (`pg_current_wal_lsn() - restart_lsn`).
    pub retained_wal: i64,
    /// Transactions committed so far.
    pub committed: u64,
}

/// The outcome of a soak.
#[derive(Debug)]
pub struct Report {
    /// Every sample, oldest first.
    pub samples: Vec<Sample>,
}

impl Report {
    /// The samples after warm-up (the first third of the run).
    fn settled(&self) -> &[Sample] {
        &self.samples[self.samples.len() / 3..]
    }

    /// RSS growth after warm-up, KiB: the last settled sample's RSS over the lowest settled
    /// one (0 when flat or falling).
    pub fn rss_growth_kib(&self) -> u64 {
        let settled = self.settled();
        let low = settled.iter().map(|s| s.rss_kib).min().unwrap_or(0);
        settled.last().map_or(0, |s| s.rss_kib.saturating_sub(low))
    }

    /// Descriptor growth after warm-up.
    pub fn fd_growth(&self) -> usize {
        let settled = self.settled();
        let first = settled.first().map_or(0, |s| s.fds);
        settled.last().map_or(0, |s| s.fds.saturating_sub(first))
    }
}

/// Runs the soak for `minutes` and prints what it saw.
pub async fn run(minutes: f64) -> anyhow::Result<()> {
    let report = soak(Duration::from_secs_f64(minutes * 60.0), &build_plugins()?).await?;
    println!("soak benchmark: {minutes} min, mixed workload, 3 plugins, JSON to a file sink");
    println!(
        "  {:>7}  {:>9}  {:>4}  {:>12}  {:>10}",
        "t (s)", "RSS (MiB)", "fds", "WAL kept (kB)", "commits"
    );
    for s in &report.samples {
        println!(
            "  {:>7.0}  {:>9.1}  {:>4}  {:>12}  {:>10}",
            s.at.as_secs_f64(),
            s.rss_kib as f64 / 1024.0,
            s.fds,
            s.retained_wal / 1024,
            s.committed
        );
    }
    println!(
        "  after warm-up: RSS grew {:.1} MiB, descriptors grew {}",
        report.rss_growth_kib() as f64 / 1024.0,
        report.fd_growth()
    );
    Ok(())
}

/// Runs the workload and walflow for `length`, sampling; walflow uses the plugins in `plugins`.
pub async fn soak(length: Duration, plugins: &Path) -> anyhow::Result<Report> {
    let cluster = Arc::new(
        tokio::task::spawn_blocking(|| Cluster::start(ClusterOptions::default().without_tls()))
            .await??,
    );
    let db = Arc::new(cluster.new_database().await);
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE soak (id int PRIMARY KEY, name text, amount numeric, payload bytea, at timestamptz)",
        )
        .await?;
    let dir = tempfile::tempdir()?;
    let config = walflow::config::Config::load(&write_config(&db, dir.path(), plugins)?)?;
    let (stop_walflow, stopped) = tokio::sync::watch::channel(false);
    let walflow = std::thread::spawn(move || -> anyhow::Result<()> {
        let runtime = tokio::runtime::Runtime::new()?;
        let options = walflow::pipeline::RunOptions {
            stop: Some(stopped),
            ..Default::default()
        };
        runtime.block_on(walflow::run(config, options))?;
        Ok(())
    });
    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let writer = tokio::spawn(write_workload(db.clone(), stop.clone(), committed.clone()));
    let samples = sample(&db, length, &committed, dir.path()).await;
    stop.store(true, Ordering::Relaxed);
    writer.await??;
    let _ = stop_walflow.send(true);
    tokio::task::spawn_blocking(move || walflow.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the pipeline panicked"))??;
    Ok(Report { samples: samples? })
}

fn write_config(db: &TestDb, dir: &Path, plugins: &Path) -> anyhow::Result<PathBuf> {
    let config = dir.join("walflow.toml");
    let chain = plugin_chain_to_file(plugins).replace(
        "path = \"out/events.jsonl\"",
        "path = \"out/events.jsonl\"\nmax_bytes = 16777216",
    );
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"{}\"\nsslmode = \"disable\"\nslot = \"soak\"\npublication = \"soak\"\nsnapshot = \"never\"\nheartbeat_interval = \"1s\"\n{chain}",
            db.url("postgres")
        ),
    )?;
    Ok(config)
}

/// Commits mixed transactions (~200/s) until `stop`.
async fn write_workload(
    db: Arc<TestDb>,
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let client = db.client().await;
    let mut n: i64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = (n % 5_000) as i32;
        let sql = match n % 10 {
            0..5 => format!(
                "INSERT INTO soak VALUES ({id}, 'n{n}', {n} * 1.5, decode(md5('{n}'), 'hex'), now()) \
                 ON CONFLICT (id) DO UPDATE SET amount = excluded.amount, at = excluded.at"
            ),
            5..8 => {
                format!("UPDATE soak SET name = name || 'x', amount = amount + 1 WHERE id = {id}")
            }
            8 => format!("DELETE FROM soak WHERE id = {id}"),
            _ => format!(
                "INSERT INTO soak VALUES ({id}, repeat('w', 100000), 0, NULL, now()) \
                 ON CONFLICT (id) DO UPDATE SET name = excluded.name"
            ),
        };
        client.batch_execute(&sql).await?;
        committed.fetch_add(1, Ordering::Relaxed);
        n += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Samples every `length / 30` (at least every second) until `length` passed; removes rotated
/// sink files as it goes so the disk stays bounded.
async fn sample(
    db: &TestDb,
    length: Duration,
    committed: &AtomicU64,
    dir: &Path,
) -> anyhow::Result<Vec<Sample>> {
    let client = db.client().await;
    let every = (length / 30).max(Duration::from_secs(1));
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < length {
        tokio::time::sleep(every).await;
        remove_rotated(&dir.join("out"));
        let retained: Option<i64> = client
            .query_opt(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8 FROM pg_replication_slots WHERE slot_name = 'soak'",
                &[],
            )
            .await?
            .and_then(|r| r.get(0));
        samples.push(Sample {
            at: started.elapsed(),
            rss_kib: rss_kib().context("no /proc/self/status")?,
            fds: std::fs::read_dir("/proc/self/fd")?.count(),
            retained_wal: retained.unwrap_or(0),
            committed: committed.load(Ordering::Relaxed),
        });
    }
    Ok(samples)
}

fn remove_rotated(out: &Path) {
    for entry in std::fs::read_dir(out).into_iter().flatten().flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("events.jsonl.") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short soak (CI runs this one): no descriptor leak, RSS flat after warm-up (within
    /// what allocator noise explains), and the slot keeps following the writer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_short_soak_holds_memory_descriptors_and_wal_flat() {
        let plugins = build_plugins().unwrap();
        let report = soak(Duration::from_secs(45), &plugins).await.unwrap();
        eprintln!("{report:#?}");
        assert!(report.fd_growth() <= 2, "descriptors grew: {report:#?}");
        assert!(
            report.rss_growth_kib() < 32 * 1024,
            "RSS grew {} KiB after warm-up",
            report.rss_growth_kib()
        );
        let last = report.samples.last().unwrap();
        assert!(
            last.retained_wal < 64 << 20,
            "the slot retains {} bytes of WAL",
            last.retained_wal
        );
    }
}
