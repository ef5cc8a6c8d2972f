//! walflow's benchmarks, printed as ratios against peers measured in the same run.
//!
//! `walflow-bench sinks [EVENTS]` — events/s into each sink relative to the file sink
//! (default 1,000,000 events).
//! `walflow-bench plugin-chain [EVENTS]` — events/s through native Rust, a passthrough plugin and
//! the three built-in plugins at batch sizes 1, 64, 1024 (default 200,000 events each).
//! `walflow-bench tail [CHANGES]` — `walflow tail` vs `pg_recvlogical` on the same backlog of
//! changes, fresh slots, same run (default 1,000,000 changes).
//! `walflow-bench pipeline [CHANGES]` — `walflow run` (three plugins, JSON to a file sink) vs
//! `pg_recvlogical` on the same backlog, fresh slots, same run (default 1,000,000 changes).
//! `walflow-bench snapshot [ROWS] [RUNS]` — the initial snapshot (three plugins, JSON to a
//! file) at parallelism 1 and 2 vs `psql -c "COPY … TO STDOUT"` on the same table (default
//! 5,000,000 rows, 3 runs; the median and best ratios are printed).
//! `walflow-bench soak [MINUTES]` — a mixed workload through `walflow run` for a while (default
//! 10 minutes), sampling RSS, file descriptors and the WAL the slot retains.
//! `walflow-bench serve [CHANGES]` — `walflow serve`: resident memory per idle pipeline (50 of
//! them), and ten busy pipelines in one service vs ten `walflow run` processes on the same
//! backlog (default 200,000 changes, read by each).
//! `walflow-bench debezium [CHANGES]` — `walflow run` with `envelope = "debezium"` vs Debezium's
//! embedded engine on the same backlog, fresh slots, same run: events/s, CPU and peak RSS as
//! ratios (default 1,000,000 changes; needs `scripts/install-debezium`).
//! `walflow-bench latency [SECONDS]` — commit → durable in walflow's file sink vs commit →
//! arrival at `pg_recvlogical`, single-row transactions at fixed rates, same run (default 5 s
//! per rate; p50/p95/p99/max printed).

mod backlog;
mod debezium;
mod latency;
mod pipeline;
mod plugin_chain;
mod process;
mod serve;
mod sinks;
mod snapshot;
mod soak;
mod tail;

// The `walflow` binary's allocator (see host/cli/src/main.rs), so in-process measurements match it.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const USAGE: &str = "usage: walflow-bench BENCHMARK [COUNT]
  sinks [EVENTS]          events/s into each sink, as a ratio to the file sink (1,000,000)
  plugin-chain [EVENTS]   native Rust vs a passthrough plugin vs the three built-in plugins,
                          at batch sizes 1, 64, 1024 (200,000 per measurement)
  tail [CHANGES]          walflow tail vs pg_recvlogical on the same backlog (1,000,000)
  pipeline [CHANGES]      walflow run (three plugins, JSON file) vs pg_recvlogical (1,000,000)
  snapshot [ROWS] [RUNS]  initial snapshot at parallelism 1 and 2 vs psql COPY (5,000,000 rows,
                          3 runs: median and best ratio)
  soak [MINUTES]          a mixed workload for MINUTES (10): RSS, descriptors, WAL kept
  serve [CHANGES]         walflow serve: RSS per idle pipeline (50), and 10 busy pipelines vs
                          10 walflow run processes on the same backlog (200,000 each)
  debezium [CHANGES]      walflow run (envelope = \"debezium\") vs Debezium embedded on the same
                          backlog: throughput, CPU and peak RSS as ratios (1,000,000)
  latency [SECONDS]       commit → durable in the file sink vs pg_recvlogical, single-row
                          transactions at 1k, 10k, 50k/s and 70% of the maximum (5 s each)";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count = |name: &str, default: u64| nth(&args, 1, name, default);
    match args.first().map(String::as_str) {
        None | Some("sinks") => sinks::run(count("EVENTS", 1_000_000)? as usize).await,
        Some("plugin-chain") => {
            let events = count("EVENTS", 200_000)? as usize;
            tokio::task::spawn_blocking(move || plugin_chain::run(events)).await?
        }
        Some("tail") => tail::run(count("CHANGES", 1_000_000)?).await,
        Some("__walflow-tail") => tail::child(&args[1..]).await,
        Some("pipeline") => pipeline::run(count("CHANGES", 1_000_000)?).await,
        Some("__walflow-run") => pipeline::child(&args[1..]).await,
        Some("snapshot") => {
            let runs = nth(&args, 2, "RUNS", 3)?.max(1);
            snapshot::run(count("ROWS", 5_000_000)?, runs).await
        }
        Some("latency") => latency::run(count("SECONDS", 5)?).await,
        Some("debezium") => debezium::run(count("CHANGES", 1_000_000)?).await,
        Some("serve") => serve::run(count("CHANGES", 200_000)?).await,
        Some("__walflow-serve") => serve::child(&args[1..]).await,
        Some("__walflow-latency") => latency::child(&args[1..]).await,
        Some("__walflow-snapshot") => snapshot::child(&args[1..]).await,
        Some("soak") => {
            let minutes = match args.get(1) {
                Some(m) => m
                    .parse()
                    .map_err(|_| anyhow::anyhow!("MINUTES must be a number, not `{m}`\n{USAGE}"))?,
                None => 10.0,
            };
            soak::run(minutes).await
        }
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => anyhow::bail!("unknown benchmark `{other}`\n{USAGE}"),
    }
}

/// Argument `i` as a number, or `default` when it is not given.
fn nth(args: &[String], i: usize, name: &str, default: u64) -> anyhow::Result<u64> {
    match args.get(i) {
        Some(n) => n
            .parse()
            .map_err(|_| anyhow::anyhow!("{name} must be a number, not `{n}`\n{USAGE}")),
        None => Ok(default),
    }
}
