//! `walflow run` end to end against `pg_recvlogical` on the same backlog of changes.
//!
//! One throwaway PostgreSQL 15 and two fresh pgoutput slots created before the backlog is
//! written, so both readers decode exactly the same WAL. pg_recvlogical copies pgoutput's bytes
//! to /dev/null; walflow decodes every change, runs it through the three built-in plugins
//! (table-filter → binary-repr → topic-name), encodes the JSON envelope and writes it to a file
//! sink with fsync on flush — everything a user's pipeline does. Printed: events/s of each, the
//! ratio (target ≥ 0.9), and each process's CPU time and peak resident memory.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};
use walflow_tests::{Cluster, ClusterOptions};

use crate::process::measure;

/// Rows per inserting transaction.
const ROWS_PER_TXN: u64 = 5_000;

/// Runs the benchmark over `changes` inserted rows.
pub async fn run(changes: u64) -> anyhow::Result<()> {
    let plugins = build_plugins()?;
    let cluster = tokio::task::spawn_blocking(|| {
        Cluster::start(
            ClusterOptions::default()
                .without_tls()
                .setting("logical_decoding_work_mem", "'256MB'"),
        )
    })
    .await??;
    let db = cluster.new_database().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE bench (id int8 PRIMARY KEY, name text, amount numeric, payload bytea, at timestamptz);
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
                "INSERT INTO bench SELECT g, 'name ' || g, g * 1.25, decode(md5(g::text), 'hex'), now() \
                 FROM generate_series({}, {}) g",
                start + 1,
                end
            ))
            .await?;
        start = end;
    }
    let marker: String = client
        .query_one(
            "SELECT pg_logical_emit_message(true, 'bench', 'end')::text",
            &[],
        )
        .await?
        .get(0);

    let conninfo = format!(
        "host=127.0.0.1 port={} user=postgres dbname={}",
        cluster.port(),
        db.name()
    );
    let recvlogical = cluster.bin_dir().join("pg_recvlogical");
    let mut peer = Command::new(if recvlogical.exists() {
        recvlogical
    } else {
        "pg_recvlogical".into()
    });
    peer.args(["-d", &conninfo, "-S", "bench_recvlogical", "--start"])
        .args(["-E", &marker, "--no-loop", "-f", "/dev/null"])
        .args(["-o", "proto_version=1", "-o", "publication_names=bench_pub"]);
    let peer_run = measure(peer).context("pg_recvlogical")?;

    let dir = tempfile::tempdir()?;
    let config = dir.path().join("walflow.toml");
    let p = |name: &str| plugins.join(name).display().to_string();
    std::fs::write(
        &config,
        format!(
            r#"[source]
url = "postgres://postgres@127.0.0.1:{port}/{db}"
sslmode = "disable"
slot = "bench_walflow"
publication = "bench_pub"
publication_autocreate = "disabled"
snapshot = "never"

[[plugins]]
path = "{filter}"
config = {{ include = ["public.*"] }}

[[plugins]]
path = "{binary}"
config = {{ mode = "hex" }}

[[plugins]]
path = "{topic}"
config = {{ prefix = "bench", database_prefix = true }}

[[sinks]]
type = "file"
path = "out/events.jsonl"
"#,
            port = cluster.port(),
            db = db.name(),
            filter = p("table_filter.wasm"),
            binary = p("binary_repr.wasm"),
            topic = p("topic_name.wasm"),
        ),
    )?;
    let mut ours = Command::new(std::env::current_exe()?);
    ours.arg("__walflow-run").arg(&config).arg(&marker);
    let ours_run = measure(ours).context("walflow run")?;
    let written = std::fs::read_to_string(dir.path().join("out/events.jsonl"))?
        .lines()
        .count() as u64;
    if written < changes {
        bail!("walflow wrote {written} events, expected {changes}");
    }

    let peer_eps = changes as f64 / peer_run.elapsed.as_secs_f64();
    let ours_eps = changes as f64 / ours_run.elapsed.as_secs_f64();
    println!(
        "pipeline benchmark: {changes} changes in {} transactions, PostgreSQL {}",
        changes.div_ceil(ROWS_PER_TXN),
        cluster.version()
    );
    println!(
        "  pg_recvlogical (pgoutput bytes to /dev/null):        {}",
        peer_run.describe(peer_eps)
    );
    println!(
        "  walflow run (3 plugins, JSON to a file sink, fsync): {}",
        ours_run.describe(ours_eps)
    );
    println!(
        "  ratio walflow / pg_recvlogical: {:.3} (target ≥ 0.9)",
        ours_eps / peer_eps
    );
    Ok(())
}

/// The `__walflow-run CONFIG UNTIL_LSN` child: `walflow run` until `UNTIL_LSN` is acknowledged,
/// from this (release) binary so both sides are optimised builds.
pub async fn child(args: &[String]) -> anyhow::Result<()> {
    let [config, until] = args else {
        bail!("usage: __walflow-run CONFIG UNTIL_LSN");
    };
    let until = walflow::event::parse_lsn(until).context("UNTIL_LSN is not an LSN")?;
    let config = walflow::config::Config::load(Path::new(config))?;
    let (_tx, rx) = tokio::sync::watch::channel(Some(until));
    walflow::pipeline::run(
        config,
        walflow::pipeline::RunOptions {
            until_lsn: Some(rx),
            ..Default::default()
        },
    )
    .await?;
    Ok(())
}

/// Builds the plugins with `scripts/build-plugins`; their directory.
fn build_plugins() -> anyhow::Result<std::path::PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    let status = Command::new(root.join("scripts/build-plugins"))
        .stdout(std::process::Stdio::null())
        .status()
        .context("cannot run scripts/build-plugins")?;
    if !status.success() {
        bail!("scripts/build-plugins failed");
    }
    Ok(root.join("plugins/target/dist"))
}
