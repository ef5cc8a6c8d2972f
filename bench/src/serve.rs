//! `walflow serve` against separate `walflow run` processes.
//!
//! 1. Idle cost: one service with 50 pipelines, each on a slot of its own with nothing to do;
//!    its resident memory with them minus its resident memory with none, per pipeline (target
//!    ≤ 4 MiB; there are no plugins, so this is the pipeline's own memory).
//! 2. Busy throughput: a backlog written after twenty fresh slots were made; ten pipelines in
//!    one service and ten separate `walflow run` processes each read it all on ten of the slots
//!    (three plugins, JSON to a file). Printed: the aggregate events/s of each and their ratio
//!    (target ≥ 1.0), with the CPU time and peak memory of the service and of all the processes.
//!
//! Measured 2026-12-07 (release, 2-core VM, PostgreSQL 15, 200,000 changes read by each of the
//! ten): 0.29 MiB per idle pipeline (14.4 MiB with none, 28.8 MiB with 50); busy, two runs,
//! ratio 1.019 and 1.010 (one service ~307k and ~365k events/s against ~301k and ~361k for the
//! ten processes), the service using ~5% less CPU and 281–285 MiB at its peak against 633–657
//! MiB summed over the processes.

use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::backlog::Backlog;
use crate::pipeline::{COLUMNS, ROW, build_plugins, plugin_chain_to_file};
use crate::process::{measure, wait_measured};

/// Pipelines in the idle measurement.
const IDLE: usize = 50;
/// Pipelines (and processes) in the busy measurement.
const BUSY: usize = 10;
/// The token of the benchmark's only tenant.
const TOKEN: &str = "bench-token-0123456789";

/// Runs both measurements; `changes` rows make the busy backlog.
pub async fn run(changes: u64) -> anyhow::Result<()> {
    idle().await?;
    busy(changes).await
}

/// The `__walflow-serve CONFIG` child: the service, from this (release) binary.
pub async fn child(args: &[String]) -> anyhow::Result<()> {
    let [config] = args else {
        bail!("usage: __walflow-serve CONFIG");
    };
    let config = walflow::serve::ServeConfig::load(Path::new(config))?;
    walflow::serve::serve(config, std::sync::Arc::new(walflow::components::Standard)).await
}

/// A service config with one tenant, its pipelines in `dir/pipelines/bench/`.
fn service_config(dir: &Path, port: u16) -> anyhow::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir.join("pipelines/bench"))?;
    let path = dir.join("serve.toml");
    std::fs::write(
        &path,
        format!(
            "listen = \"127.0.0.1:{port}\"\npipelines_dir = \"pipelines\"\nscan_interval = \"100ms\"\n\n\
             [[tenants]]\nname = \"bench\"\ntoken = \"{TOKEN}\"\n"
        ),
    )?;
    Ok(path)
}

/// A pipeline config reading `slot` of `backlog`, with `rest` ([[plugins]], [[sinks]]).
fn pipeline_config(backlog: &Backlog, slot: &str, rest: &str) -> String {
    format!(
        "[source]\nurl = \"{}\"\nsslmode = \"disable\"\nslot = \"{slot}\"\npublication = \"{}\"\n\
         publication_autocreate = \"disabled\"\nsnapshot = \"never\"\n{rest}",
        backlog.url(),
        crate::backlog::PUBLICATION
    )
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

/// The service's pipelines, as its API lists them.
fn pipelines(port: u16) -> anyhow::Result<Vec<serde_json::Value>> {
    let answer = walflow_tests::http::request(
        &format!("127.0.0.1:{port}"),
        "GET",
        "/api/pipelines",
        Some(TOKEN),
        None,
    )?;
    Ok(answer.json()["pipelines"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// Waits until `check` holds for the service's pipelines.
fn wait_for(
    port: u16,
    what: &str,
    check: impl Fn(&[serde_json::Value]) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        if let Ok(list) = pipelines(port)
            && check(&list)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn spawn_service(config: &Path) -> anyhow::Result<Child> {
    Ok(Command::new(std::env::current_exe()?)
        .arg("__walflow-serve")
        .arg(config)
        .spawn()?)
}

async fn idle() -> anyhow::Result<()> {
    let backlog = Backlog::write(0, "id int8 PRIMARY KEY", "g").await?;
    let client = backlog.db.client().await;
    for i in 0..IDLE {
        client
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&format!("idle_{i}")],
            )
            .await?;
    }
    let dir = tempfile::tempdir()?;
    let port = walflow_tests::free_port();
    let mut service = spawn_service(&service_config(dir.path(), port)?)?;
    wait_for(port, "the service", |_| true)?;
    std::thread::sleep(Duration::from_secs(2));
    let before = rss_kib(service.id())?;
    for i in 0..IDLE {
        let text = pipeline_config(
            &backlog,
            &format!("idle_{i}"),
            "[[sinks]]\ntype = \"file\"\npath = \"out.jsonl\"\n",
        );
        std::fs::write(dir.path().join(format!("pipelines/bench/p{i}.toml")), text)?;
    }
    wait_for(port, "every pipeline streaming", |l| {
        l.len() == IDLE && l.iter().all(|p| p["healthy"] == true)
    })?;
    std::thread::sleep(Duration::from_secs(5));
    let after = rss_kib(service.id())?;
    walflow_tests::child_process::signal(&service, libc::SIGTERM);
    service.wait()?;
    let per = after.saturating_sub(before) as f64 / IDLE as f64 / 1024.0;
    println!("serve benchmark: idle pipelines");
    println!(
        "  service RSS: {:.1} MiB with no pipeline, {:.1} MiB with {IDLE} idle ones",
        before as f64 / 1024.0,
        after as f64 / 1024.0
    );
    println!("  per idle pipeline: {per:.2} MiB (target ≤ 4 MiB, no plugins)");
    Ok(())
}

async fn busy(changes: u64) -> anyhow::Result<()> {
    let plugins = build_plugins()?;
    let slots: Vec<String> = (0..2 * BUSY).map(|i| format!("busy_{i}")).collect();
    let backlog = Backlog::write_after_slots(changes, COLUMNS, ROW, &slots).await?;
    let marker = backlog.end_marker().await?;
    let marker_lsn = walflow::event::Lsn::parse(&marker).context("marker LSN")?;
    let chain = plugin_chain_to_file(&plugins);

    // Ten separate processes, all at once.
    let dir = tempfile::tempdir()?;
    let started = Instant::now();
    let mut children = Vec::new();
    for (i, slot) in slots[BUSY..].iter().enumerate() {
        let run_dir = dir.path().join(format!("run{i}"));
        std::fs::create_dir_all(&run_dir)?;
        let config = run_dir.join("walflow.toml");
        std::fs::write(&config, pipeline_config(&backlog, slot, &chain))?;
        let mut command = Command::new(std::env::current_exe()?);
        command.arg("__walflow-run").arg(&config).arg(&marker);
        children.push(std::thread::spawn(move || measure(command)));
    }
    let mut processes_cpu = Duration::ZERO;
    let mut processes_rss = 0;
    for child in children {
        let run = child
            .join()
            .map_err(|_| anyhow::anyhow!("a run panicked"))??;
        processes_cpu += run.cpu;
        processes_rss += run.max_rss_kib;
    }
    let processes = started.elapsed();

    // Ten pipelines in one service.
    let port = walflow_tests::free_port();
    let config = service_config(dir.path(), port)?;
    for (i, slot) in slots[..BUSY].iter().enumerate() {
        let text = pipeline_config(&backlog, slot, &chain).replace(
            "path = \"out/events.jsonl\"",
            &format!(
                "path = \"{}\"",
                dir.path().join(format!("serve{i}.jsonl")).display()
            ),
        );
        std::fs::write(dir.path().join(format!("pipelines/bench/p{i}.toml")), text)?;
    }
    let started = Instant::now();
    let service = Command::new(std::env::current_exe()?)
        .arg("__walflow-serve")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let pid = service.id();
    let measured = std::thread::spawn(move || wait_measured(pid, started));
    let done = |l: &[serde_json::Value]| {
        l.len() == BUSY
            && l.iter().all(|p| {
                p["acked_lsn"]
                    .as_str()
                    .and_then(walflow::event::Lsn::parse)
                    .is_some_and(|lsn| lsn >= marker_lsn)
            })
    };
    wait_for(port, "every pipeline at the end of the backlog", done)?;
    let served = started.elapsed();
    // SAFETY: signalling our own child, which the measuring thread has not reaped yet.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let service_run = measured
        .join()
        .map_err(|_| anyhow::anyhow!("the service panicked"))??;

    let total = (changes * BUSY as u64) as f64;
    let processes_eps = total / processes.as_secs_f64();
    let served_eps = total / served.as_secs_f64();
    println!(
        "serve benchmark: {BUSY} busy pipelines, {}",
        backlog.describe()
    );
    println!(
        "  {BUSY} walflow run processes: {processes_eps:>10.0} events/s  {:>6.2}s (cpu {:>6.2}s)  peak RSS {:>7.1} MiB summed",
        processes.as_secs_f64(),
        processes_cpu.as_secs_f64(),
        processes_rss as f64 / 1024.0
    );
    println!(
        "  one walflow serve:       {served_eps:>10.0} events/s  {:>6.2}s (cpu {:>6.2}s)  peak RSS {:>7.1} MiB",
        served.as_secs_f64(),
        service_run.cpu.as_secs_f64(),
        service_run.max_rss_kib as f64 / 1024.0
    );
    println!(
        "  ratio serve / processes: {:.3} (target ≥ 1.0)",
        served_eps / processes_eps
    );
    Ok(())
}
