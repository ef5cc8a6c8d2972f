//! `walflow demo`: the whole product in one command on a machine with PostgreSQL installed.
//!
//! It starts a throwaway server, creates sample tables (bytea, numeric, jsonb, timestamptz
//! columns), writes a stream of inserts, updates and deletes, and runs the real pipeline — the
//! same code as `walflow run` — through the built-in plugins (table-filter, binary-repr as hex,
//! topic-name with the database prefix) to standard output. It stops by itself once every
//! change it wrote has been delivered, or on Ctrl-C, and removes the server.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;

use walflow_config::{Config, parse_duration};
use walflow_core::pipeline::{RunOptions, RunSummary};
use walflow_local_postgres::{Install, LocalPostgres, Options, SUPERUSER};

/// The demo database (its name prefixes topics: `shop_cdc.public.orders`).
const DEMO_DB: &str = "shop";

/// The built-in plugins the demo chains, in order.
const DEMO_PLUGINS: [&str; 3] = ["table_filter.wasm", "binary_repr.wasm", "topic_name.wasm"];

const SCHEMA_SQL: &str = "
    CREATE TABLE public.customers (
        id serial PRIMARY KEY,
        name text NOT NULL,
        email text,
        avatar bytea
    );
    CREATE TABLE public.orders (
        id bigserial PRIMARY KEY,
        customer_id int NOT NULL,
        amount numeric(12,2) NOT NULL,
        status text NOT NULL,
        details jsonb,
        created_at timestamptz NOT NULL DEFAULT now()
    );
    ALTER TABLE public.orders REPLICA IDENTITY FULL;
    CREATE SCHEMA internal;
    CREATE TABLE internal.audit (id bigserial PRIMARY KEY, note text);
";

/// What `walflow demo` was asked to do.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// How long to write changes before stopping (`5s`, `1m`).
    pub duration: String,
    /// Directory holding the built-in plugins (`*.wasm`); found automatically when `None`.
    pub plugins_dir: Option<PathBuf>,
}

/// Runs the demo.
pub async fn run(args: DemoOptions) -> anyhow::Result<()> {
    let duration =
        parse_duration(&args.duration).map_err(|e| anyhow::anyhow!("--duration: {e}"))?;
    let plugins = find_plugins(args.plugins_dir.as_deref())?;
    eprintln!("walflow demo: starting a throwaway PostgreSQL…");
    let pg = tokio::task::spawn_blocking(start_postgres)
        .await
        .context("starting PostgreSQL panicked")??;
    let url = pg.url(SUPERUSER, DEMO_DB);
    prepare_database(&pg).await?;
    let state = tempfile_dir("walflow-demo-state")?;
    let config = demo_config(&url, &plugins, &state)?;
    eprintln!(
        "walflow demo: streaming changes of {url} through table-filter → binary-repr(hex) → \
         topic-name(database prefix) to stdout for {}…",
        args.duration
    );
    let (until_tx, until_rx) = tokio::sync::watch::channel(None);
    let writer = tokio::spawn(write_changes(url.clone(), duration, until_tx));
    let started = Instant::now();
    let summary: RunSummary = crate::run(
        config,
        RunOptions {
            until_lsn: Some(until_rx),
            ..RunOptions::default()
        },
    )
    .await?;
    let written = writer.await.context("the demo writer panicked")??;
    let _ = std::fs::remove_dir_all(&state);
    eprintln!(
        "walflow demo: wrote {written} row changes and an end marker; {} events reached the sink in {:.1}s (internal.audit was filtered out by the table-filter plugin). done.",
        summary.events_out,
        started.elapsed().as_secs_f64()
    );
    drop(pg);
    Ok(())
}

/// A throwaway server with logical replication, started and ready.
fn start_postgres() -> anyhow::Result<LocalPostgres> {
    let install = Install::find().context("walflow demo needs a local PostgreSQL server")?;
    let options = Options::new(install)
        .setting("wal_level", "logical")
        .setting("max_replication_slots", "8")
        .setting("max_wal_senders", "8")
        .setting("fsync", "off");
    let pg = LocalPostgres::init(options).context("cannot set up the demo PostgreSQL")?;
    pg.start().context("the demo PostgreSQL did not start")?;
    Ok(pg)
}

/// Creates the demo database and its tables.
async fn prepare_database(pg: &LocalPostgres) -> anyhow::Result<()> {
    let (admin, conn) =
        tokio_postgres::connect(&pg.url(SUPERUSER, "postgres"), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("CREATE DATABASE {DEMO_DB}"))
        .await?;
    let (client, conn) =
        tokio_postgres::connect(&pg.url(SUPERUSER, DEMO_DB), tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    client.batch_execute(SCHEMA_SQL).await?;
    Ok(())
}

/// The demo's pipeline, written as a user would write walflow.toml.
fn demo_config(url: &str, plugins: &Path, state: &Path) -> anyhow::Result<Config> {
    let p = |name: &str| plugins.join(name).display().to_string();
    let text = format!(
        r#"
[source]
url = "{url}"
sslmode = "disable"
slot = "walflow_demo"
publication = "walflow_demo"
publication_autocreate = "all_tables"
snapshot = "never"
topic_prefix = "cdc"

[state]
dir = "{state}"

[batch]
max_events = 256

[[plugins]]
path = "{table_filter}"
config = {{ include = ["public.*"] }}

[[plugins]]
path = "{binary_repr}"
config = {{ mode = "hex" }}

[[plugins]]
path = "{topic_name}"
config = {{ prefix = "cdc", database_prefix = true }}

[[sinks]]
type = "stdout"
"#,
        state = state.display(),
        table_filter = p(DEMO_PLUGINS[0]),
        binary_repr = p(DEMO_PLUGINS[1]),
        topic_name = p(DEMO_PLUGINS[2]),
    );
    Ok(Config::parse(&text, Path::new("walflow-demo.toml"))?)
}

/// Writes changes for `duration` (once the pipeline's slot exists, so none is missed), then
/// publishes the LSN of a final marker so the pipeline knows when everything has been
/// delivered. Returns how many rows of the captured tables it changed.
async fn write_changes(
    url: String,
    duration: Duration,
    until: tokio::sync::watch::Sender<Option<walflow_core::event::Lsn>>,
) -> anyhow::Result<u64> {
    let (mut client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    wait_for_slot(&client).await?;
    let deadline = Instant::now() + duration;
    let mut changes = 0u64;
    let mut round = 0i64;
    while Instant::now() < deadline {
        round += 1;
        let tx = client.transaction().await?;
        let amount = format!("{}.{:02}", 10 + round * 7 % 500, round * 13 % 100);
        let details = format!(
            r#"{{"items": {}, "gift": {}}}"#,
            1 + round % 5,
            round % 3 == 0
        );
        changes += tx
            .execute(
                "INSERT INTO public.customers (name, email, avatar) \
                 VALUES ($1, $2, decode(lpad(to_hex($3::int), 8, 'cafe'), 'hex'))",
                &[
                    &format!("customer {round}"),
                    &format!("c{round}@example.com"),
                    &(round as i32),
                ],
            )
            .await?;
        changes += tx
            .execute(
                "INSERT INTO public.orders (customer_id, amount, status, details) \
                 VALUES ($1::int, $2::text::numeric, 'new', $3::text::jsonb)",
                &[&(round as i32), &amount, &details],
            )
            .await?;
        changes += tx
            .execute(
                "UPDATE public.orders SET status = 'shipped' WHERE id = $1",
                &[&(round - 1)],
            )
            .await?;
        changes += tx
            .execute(
                "DELETE FROM public.customers WHERE id = $1::int",
                &[&((round - 5) as i32)],
            )
            .await?;
        tx.execute(
            "INSERT INTO internal.audit (note) VALUES ($1)",
            &[&format!("round {round}")],
        )
        .await?;
        tx.commit().await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A transactional message marks the end: its transaction's end LSN is past everything
    // written above, and reaching it means every earlier change was delivered.
    let row = client
        .query_one(
            "SELECT pg_logical_emit_message(true, 'walflow-demo', 'done')::text",
            &[],
        )
        .await?;
    let lsn: String = row.get(0);
    let lsn = walflow_core::event::Lsn::parse(&lsn)
        .context("pg_logical_emit_message returned an odd LSN")?;
    let _ = until.send(Some(lsn));
    Ok(changes)
}

/// Waits until the pipeline has created its slot: changes before it would not be captured.
async fn wait_for_slot(client: &tokio_postgres::Client) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let row = client
            .query_opt(
                "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'walflow_demo'",
                &[],
            )
            .await?;
        if row.is_some() {
            return Ok(());
        }
        if Instant::now() > deadline {
            anyhow::bail!("the pipeline did not create its replication slot within 60s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Where the built-in plugins are: `--plugins-dir`, `$WALFLOW_PLUGINS_DIR`, or the plugin
/// workspace's build output next to the sources or the executable.
fn find_plugins(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let has_all = |d: &Path| DEMO_PLUGINS.iter().all(|p| d.join(p).is_file());
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(d) = explicit {
        candidates.push(d.to_owned());
    } else {
        if let Some(d) = std::env::var_os("WALFLOW_PLUGINS_DIR") {
            candidates.push(d.into());
        }
        let rel = Path::new("plugins/target/dist");
        if let Ok(cwd) = std::env::current_dir() {
            candidates.extend(cwd.ancestors().map(|a| a.join(rel)));
        }
        if let Ok(exe) = std::env::current_exe() {
            candidates.extend(exe.ancestors().map(|a| a.join(rel)));
        }
    }
    candidates.into_iter().find(|d| has_all(d)).ok_or_else(|| {
        anyhow::anyhow!(
            "the built-in plugins ({}) were not found; build them with `scripts/build-plugins` \
             or pass --plugins-dir DIR",
            DEMO_PLUGINS.join(", ")
        )
    })
}

fn tempfile_dir(prefix: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
