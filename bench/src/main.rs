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
//! `walflow-bench snapshot [ROWS]` — the initial snapshot (three plugins, JSON to a file) at
//! parallelism 1 and 2 vs `psql -c "COPY … TO STDOUT"` on the same table (default 5,000,000 rows).

mod backlog;
mod pipeline;
mod plugin_chain;
mod process;
mod sinks;
mod snapshot;
mod tail;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("sinks") => {
            let events = match args.get(1) {
                Some(n) => n
                    .parse()
                    .map_err(|_| anyhow::anyhow!("EVENTS must be a number, not `{n}`"))?,
                None => 1_000_000,
            };
            sinks::run(events).await
        }
        Some("plugin-chain") => {
            let events = match args.get(1) {
                Some(n) => n
                    .parse()
                    .map_err(|_| anyhow::anyhow!("EVENTS must be a number, not `{n}`"))?,
                None => 200_000,
            };
            tokio::task::spawn_blocking(move || plugin_chain::run(events)).await?
        }
        Some("tail") => {
            let changes = match args.get(1) {
                Some(n) => n
                    .parse()
                    .map_err(|_| anyhow::anyhow!("CHANGES must be a number, not `{n}`"))?,
                None => 1_000_000,
            };
            tail::run(changes).await
        }
        Some("__walflow-tail") => tail::child(&args[1..]).await,
        Some("pipeline") => {
            let changes = match args.get(1) {
                Some(n) => n
                    .parse()
                    .map_err(|_| anyhow::anyhow!("CHANGES must be a number, not `{n}`"))?,
                None => 1_000_000,
            };
            pipeline::run(changes).await
        }
        Some("__walflow-run") => pipeline::child(&args[1..]).await,
        Some("snapshot") => {
            let rows = match args.get(1) {
                Some(n) => n
                    .parse()
                    .map_err(|_| anyhow::anyhow!("ROWS must be a number, not `{n}`"))?,
                None => 5_000_000,
            };
            snapshot::run(rows).await
        }
        Some("__walflow-snapshot") => snapshot::child(&args[1..]).await,
        Some(other) => {
            anyhow::bail!(
                "unknown benchmark `{other}`; available: sinks, plugin-chain, tail, pipeline, snapshot"
            )
        }
    }
}
