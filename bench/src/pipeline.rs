//! `walflow run` end to end against `pg_recvlogical` on the same backlog of changes.
//!
//! One throwaway PostgreSQL 15 and two fresh pgoutput slots created before the backlog is
//! written, so both readers decode exactly the same WAL. pg_recvlogical copies pgoutput's bytes
//! to /dev/null; walflow decodes every change, runs it through the three built-in plugins
//! (table-filter → binary-repr → topic-name), encodes the JSON envelope and writes it to a file
//! sink with fsync on flush — everything a user's pipeline does. Printed: events/s of each, the
//! ratio (target ≥ 0.9), and each process's CPU time and peak resident memory.
//!
//! Measured 2026-11-24 (release, 2-core VM, 1,000,000 changes in 200 transactions, PostgreSQL
//! 15): 1.186 (walflow ~340,000 events/s using ~3.1 s of CPU; pg_recvlogical ~286,000
//! events/s). Earlier the same day: 0.84–0.87 lowering an owned copy of each batch, 0.909 and
//! 0.932 lowering borrowed host events; plugin ABI 0.2.0 and mimalloc took it past the peer.
//! Measured 2026-12-04 on another VM of the same kind, after the JSON writer of its own
//! (`encode/json_writer.rs`) and shared topic names: 2.275 (walflow ~502,000 events/s using
//! ~2.0 s of CPU; pg_recvlogical ~221,000 events/s on this VM).

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use crate::backlog::{Backlog, WALFLOW_SLOT};
use crate::process::measure;

/// The backlog's table: a key, text, numeric, bytea and a timestamp.
pub const COLUMNS: &str =
    "id int8 PRIMARY KEY, name text, amount numeric, payload bytea, at timestamptz";

/// Row `g` of the backlog.
pub const ROW: &str = "g, 'name ' || g, g * 1.25, decode(md5(g::text), 'hex'), now()";

/// Runs the benchmark over `changes` inserted rows.
pub async fn run(changes: u64) -> anyhow::Result<()> {
    let plugins = build_plugins()?;
    let backlog = Backlog::write(changes, COLUMNS, ROW).await?;
    let marker = backlog.end_marker().await?;
    let peer = backlog.recvlogical(&marker);
    let peer_run = measure(peer).context("pg_recvlogical")?;

    let dir = tempfile::tempdir()?;
    let config = dir.path().join("walflow.toml");
    std::fs::write(
        &config,
        backlog.walflow_config(WALFLOW_SLOT, &plugin_chain_to_file(&plugins)),
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
    println!("pipeline benchmark: {}", backlog.describe());
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
    let until = walflow::event::Lsn::parse(until).context("UNTIL_LSN is not an LSN")?;
    let config = walflow::config::Config::load(Path::new(config))?;
    let (_tx, rx) = tokio::sync::watch::channel(Some(until));
    walflow::run(
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
pub fn build_plugins() -> anyhow::Result<std::path::PathBuf> {
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

/// The `[[plugins]]` and `[[sinks]]` part of a benchmark config: the three built-in plugins
/// (table-filter → binary-repr → topic-name) and a file sink at `out/events.jsonl`.
pub fn plugin_chain_to_file(plugins: &Path) -> String {
    let p = |name: &str| plugins.join(name).display().to_string();
    format!(
        r#"
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
        filter = p("table_filter.wasm"),
        binary = p("binary_repr.wasm"),
        topic = p("topic_name.wasm"),
    )
}
