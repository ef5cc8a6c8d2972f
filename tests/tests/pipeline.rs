//! End-to-end: `walflow run` against a real cluster, killed with SIGKILL at random points and
//! restarted; afterwards the file sink's records, replayed with de-duplication by LSN, rebuild
//! exactly the source tables (compared by PostgreSQL itself).

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::Value as Json;
use walflow::sink::{Sink, SinkBatch, SinkError};
use walflow_tests::{Cluster, ConfigFile, TestDb, replay, wait_for_async, walflow};

const TABLES_SQL: &str = "
    CREATE TABLE orders (
        id int PRIMARY KEY,
        amount numeric(14,3),
        payload bytea,
        doc jsonb,
        at timestamptz,
        note text
    );
    CREATE TABLE items (
        id bigint PRIMARY KEY,
        name text NOT NULL,
        tags text[],
        price float8
    );
    ALTER TABLE items REPLICA IDENTITY FULL;
    CREATE TABLE ignored (id int PRIMARY KEY, v text);
";

/// Random transactions: inserts, updates (including key changes), deletes, and rare truncates.
async fn random_transaction(client: &tokio_postgres::Client, rng: &mut rand::rngs::StdRng) {
    let mut sql = String::from("BEGIN;");
    for _ in 0..rng.random_range(1..6) {
        let id = rng.random_range(1..60);
        let stmt = match rng.random_range(0..100) {
            0..35 => format!(
                "INSERT INTO orders VALUES ({id}, {}.{:03}, decode('{:08x}', 'hex'), '{{\"n\": {id}, \"tags\": [\"a\", null]}}', now() - interval '{} seconds', repeat('x', {})) ON CONFLICT (id) DO UPDATE SET amount = excluded.amount, note = excluded.note;",
                rng.random_range(0..100_000),
                rng.random_range(0..1000),
                rng.random::<u32>(),
                rng.random_range(0..100_000),
                rng.random_range(0..50),
            ),
            35..55 => format!(
                "INSERT INTO items VALUES ({id}, 'item {id}', ARRAY['x', NULL, 'y \"q\"'], {}) ON CONFLICT (id) DO UPDATE SET price = excluded.price;",
                rng.random::<f64>() * 1000.0
            ),
            55..70 => format!(
                "UPDATE orders SET amount = amount + 1, doc = doc || '{{\"u\": true}}' WHERE id = {id};"
            ),
            70..75 => format!(
                "UPDATE orders SET id = id + 1000 WHERE id = {id} AND NOT EXISTS (SELECT 1 FROM orders WHERE id = {id} + 1000);"
            ),
            75..82 => format!("UPDATE items SET name = name || '!' WHERE id = {id};"),
            82..90 => format!("DELETE FROM orders WHERE id = {id} OR id = {id} + 1000;"),
            90..97 => format!("DELETE FROM items WHERE id = {id};"),
            97 => "TRUNCATE items;".to_string(),
            _ => format!("INSERT INTO ignored VALUES ({id}, 'x') ON CONFLICT DO NOTHING;"),
        };
        sql.push_str(&stmt);
    }
    sql.push_str("COMMIT;");
    client
        .batch_execute(&sql)
        .await
        .expect("workload transaction");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points_loses_nothing() {
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    client.batch_execute(TABLES_SQL).await.unwrap();
    let config = db
        .config()
        .source("tables = [\"public.orders\", \"public.items\"]")
        .source("snapshot = \"never\"")
        .append("[batch]\nmax_events = 64\nmax_wait = \"20ms\"\n\n[[sinks]]\ntype = \"file\"\npath = \"out/events.jsonl\"\nmax_bytes = 200000")
        .write()
        .unwrap();
    let slot = db.config().slot_name().to_string();
    let out = config.dir().join("out/events.jsonl");

    let seed: u64 = std::env::var("WALFLOW_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("workload seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut child = walflow!("run", "-c", &config.path)
        .env("WALFLOW_LOG", "walflow=debug")
        .spawn()
        .unwrap();
    // Changes committed before the slot exists are not captured (that is what snapshots are for).
    db.wait_for_slot(&slot, Duration::from_secs(30))
        .await
        .unwrap();
    for round in 0..5 {
        for _ in 0..rng.random_range(40..120) {
            random_transaction(&client, &mut rng).await;
        }
        // Let it get somewhere (or not), then kill it mid-stream.
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..1500))).await;
        assert!(
            child.is_running(),
            "walflow exited early (round {round}):\n{}",
            child.stderr()
        );
        child.kill9();
        let _ = std::fs::write(
            config.dir().join(format!("run-{round}.log")),
            child.stderr(),
        );
        child = walflow!("run", "-c", &config.path)
            .env("WALFLOW_LOG", "walflow=debug")
            .spawn()
            .unwrap();
    }
    for _ in 0..30 {
        random_transaction(&client, &mut rng).await;
    }
    let marker: String = client
        .query_one(
            "SELECT pg_logical_emit_message(true, 'test', 'end')::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    db.wait_for_confirmed(&slot, &marker, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    child.terminate();
    let output = child.wait_async(Duration::from_secs(30)).await.unwrap();
    assert!(
        output.status.success(),
        "SIGTERM must exit 0:\n{}",
        output.describe()
    );

    let records = replay::read_records(&out);
    assert!(!records.is_empty());
    assert!(
        records
            .iter()
            .all(|r| r["value"]["source"]["table"] != "ignored"),
        "a table outside `tables` reached the sink"
    );
    let state = replay::replay(&records);
    eprintln!(
        "{} records, {} rows replayed",
        records.len(),
        state.values().map(|t| t.len()).sum::<usize>()
    );
    for table in ["orders", "items"] {
        let rows: Vec<Json> = state
            .get(table)
            .map(|m| {
                m.values()
                    .map(|r| replay::to_pg_json(r, &["payload"]))
                    .collect()
            })
            .unwrap_or_default();
        let (diff, detail) = replay::differences(&client, table, &rows).await;
        if diff != 0 {
            let keep = std::env::temp_dir().join(format!("walflow-failed-{seed}"));
            let _ = std::process::Command::new("cp")
                .arg("-r")
                .arg(config.dir())
                .arg(&keep)
                .status();
            eprintln!("kept the sink output in {}", keep.display());
        }
        assert_eq!(
            diff, 0,
            "table {table}: replayed records differ from the source in {diff} rows (seed {seed}); source only:\n{detail}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_fails_with_one_line_and_no_checkpoint() {
    let db = Cluster::shared().new_database().await;
    let config = db
        .config()
        .append("[[sinks]]\ntype = \"file\"\npath = \"out/e.jsonl\"\nflush = true")
        .write()
        .unwrap();
    let output = walflow!("run", "-c", &config.path)
        .output_async(Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "a bad config is fatal");
    assert!(
        output.stderr.contains("unknown field `flush`") && output.stderr.contains("line "),
        "{}",
        output.describe()
    );
    assert!(
        !config.dir().join("state").exists(),
        "a failed start wrote state"
    );

    let config = db
        .config()
        .append("[[sinks]]\ntype = \"stdout\"\n[source]")
        .write()
        .unwrap();
    let output = walflow!("run", "-c", &config.path)
        .output_async(Duration::from_secs(30))
        .await
        .unwrap();
    assert!(!output.status.success());
    let line = output
        .stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert!(
        line.contains("line"),
        "the error names the line: {}",
        output.describe()
    );
}

/// A sink that refuses everything while `down` is set, and remembers what it acknowledged.
struct FlakySink {
    down: Arc<AtomicBool>,
    pending: Vec<u64>,
    accepted: Arc<Mutex<Vec<u64>>>,
}

#[async_trait::async_trait]
impl Sink for FlakySink {
    fn name(&self) -> &str {
        "flaky"
    }

    async fn write(&mut self, batch: SinkBatch<'_>) -> Result<(), SinkError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(SinkError::Retryable("destination down".into()));
        }
        let rows = batch.events.iter().filter(|e| e.relation.table == "big");
        self.pending.extend(rows.map(|e| e.source.lsn.0));
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(SinkError::Retryable("destination down".into()));
        }
        self.accepted.lock().unwrap().append(&mut self.pending);
        Ok(())
    }
}

/// A pipeline streaming table `big` (small batches, heartbeats every second) into an extra
/// sink, started, with `rows` rows inserted and confirmed.
struct BigPipeline {
    db: TestDb,
    client: tokio_postgres::Client,
    slot: String,
    _config: ConfigFile,
    stop: tokio::sync::watch::Sender<bool>,
    run: tokio::task::JoinHandle<anyhow::Result<walflow::pipeline::RunSummary>>,
}

impl BigPipeline {
    async fn start(sink: Box<dyn Sink>, rows: i32) -> BigPipeline {
        let db = Cluster::shared().new_database().await;
        let client = db.client().await;
        client
            .batch_execute("CREATE TABLE big (id int PRIMARY KEY, body text)")
            .await
            .unwrap();
        let builder = db
            .config()
            .source("snapshot = \"never\"")
            .source("heartbeat_interval = \"1s\"")
            .append("[batch]\nmax_events = 64\nmax_wait = \"20ms\"");
        let slot = builder.slot_name().to_string();
        let file = builder.write().unwrap();
        let config = walflow::config::Config::load(&file.path).unwrap();
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let run = tokio::spawn(walflow::run(
            config,
            walflow::pipeline::RunOptions {
                extra_sinks: vec![sink],
                stop: Some(stop_rx),
                ..Default::default()
            },
        ));
        db.wait_for_slot(&slot, Duration::from_secs(30))
            .await
            .unwrap();
        insert_big(&client, 0, rows).await;
        let first = db.emit_marker().await;
        db.wait_for_confirmed(&slot, &first, Duration::from_secs(30))
            .await
            .unwrap();
        BigPipeline {
            db,
            client,
            slot,
            _config: file,
            stop,
            run,
        }
    }

    /// After giving the pipeline two seconds, asserts that the slot is confirmed short of
    /// `held`, the end of the first held transaction (`why` names what should have held it
    /// back).
    async fn assert_confirmed_short_of(&self, held: &str, why: &str) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let confirmed = self.db.slot_confirmed(&self.slot).await.unwrap();
        assert!(
            lsn_before(&self.client, &confirmed, held).await,
            "{confirmed} was confirmed {why} (the first held transaction ends by {held})"
        );
    }
}

/// Inserts row `id` and returns a WAL position at or past the end of its transaction.
///
/// While walflow has nothing in flight it may confirm idle progress, and other databases of
/// the shared server write WAL at any time, so a position taken *before* the row would be an
/// unfair bound; a held transaction is only confirmed once its end is, so this one is exact.
async fn insert_first_held(client: &tokio_postgres::Client, id: i32) -> String {
    insert_big(client, id, 1).await;
    insert_lsn(client).await
}

/// The server's current WAL insert position.
async fn insert_lsn(client: &tokio_postgres::Client) -> String {
    client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0)
}

/// Whether LSN `a` is before LSN `b`.
async fn lsn_before(client: &tokio_postgres::Client, a: &str, b: &str) -> bool {
    client
        .query_one("SELECT $1::text::pg_lsn < $2::text::pg_lsn", &[&a, &b])
        .await
        .unwrap()
        .get(0)
}

async fn insert_big(client: &tokio_postgres::Client, from: i32, count: i32) {
    for id in from..from + count {
        client
            .execute(
                "INSERT INTO big SELECT $1::int, string_agg(md5(random()::text), '') FROM generate_series(1, 256)",
                &[&id],
            )
            .await
            .unwrap();
    }
}

/// Bytes of WAL the walsender has not sent yet (it stops sending when walflow stops reading).
async fn unsent_bytes(client: &tokio_postgres::Client, slot: &str) -> i64 {
    client
        .query_one(
            "SELECT coalesce((SELECT (pg_current_wal_lsn() - sent_lsn)::bigint FROM pg_stat_replication r
                JOIN pg_replication_slots s ON s.active_pid = r.pid WHERE s.slot_name = $1), 0)",
            &[&slot],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sink_holds_the_pipeline_back_without_confirming() {
    let down = Arc::new(AtomicBool::new(false));
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let sink = FlakySink {
        down: down.clone(),
        pending: Vec::new(),
        accepted: accepted.clone(),
    };
    let big = BigPipeline::start(Box::new(sink), 50).await;
    let (db, client, slot) = (&big.db, &big.client, &big.slot);
    assert_eq!(accepted.lock().unwrap().len(), 50);

    down.store(true, Ordering::SeqCst);
    // Idle progress may still be confirmed, but nothing from the first row written while the
    // sink is down.
    let held = insert_first_held(client, 50).await;
    insert_big(client, 51, 2999).await;
    // Backpressure reaches the server: walflow stops reading, so WAL stays unsent.
    wait_for_async(
        "the walsender to stall",
        Duration::from_secs(60),
        || async { (unsent_bytes(client, slot).await > 4 << 20).then_some(()) },
    )
    .await
    .unwrap();
    big.assert_confirmed_short_of(&held, "while the sink was down")
        .await;
    assert_eq!(
        accepted.lock().unwrap().len(),
        50,
        "the sink acknowledged while down"
    );
    assert!(
        !big.run.is_finished(),
        "a retryable sink error stopped the pipeline"
    );

    down.store(false, Ordering::SeqCst);
    let last = db.emit_marker().await;
    db.wait_for_confirmed(slot, &last, Duration::from_secs(120))
        .await
        .unwrap();
    let mut lsns = accepted.lock().unwrap().clone();
    lsns.sort_unstable();
    lsns.dedup();
    assert_eq!(
        lsns.len(),
        3050,
        "every row reached the sink after it recovered"
    );

    big.stop.send(true).unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(30), big.run)
        .await
        .expect("the pipeline stops when asked")
        .unwrap()
        .unwrap();
    assert!(summary.acked_lsn.is_some());
}

/// A sink whose flush runs in the background and finishes only once `gate` opens; it counts
/// the events written while a flush of its is still running.
struct GatedSink {
    gate: tokio::sync::watch::Receiver<bool>,
    pending: Vec<u64>,
    accepted: Arc<Mutex<Vec<u64>>>,
    flushing: Arc<AtomicBool>,
    written_meanwhile: Arc<AtomicUsize>,
}

#[async_trait::async_trait]
impl Sink for GatedSink {
    fn name(&self) -> &str {
        "gated"
    }

    async fn write(&mut self, batch: SinkBatch<'_>) -> Result<(), SinkError> {
        let rows: Vec<u64> = batch
            .events
            .iter()
            .filter(|e| e.relation.table == "big")
            .map(|e| e.source.lsn.0)
            .collect();
        if self.flushing.load(Ordering::SeqCst) {
            self.written_meanwhile
                .fetch_add(rows.len(), Ordering::SeqCst);
        }
        self.pending.extend(rows);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.accepted.lock().unwrap().append(&mut self.pending);
        Ok(())
    }

    fn begin_flush(&mut self) -> Option<walflow::sink::PendingFlush> {
        let covered = std::mem::take(&mut self.pending);
        let (mut gate, accepted, flushing) = (
            self.gate.clone(),
            self.accepted.clone(),
            self.flushing.clone(),
        );
        flushing.store(true, Ordering::SeqCst);
        Some(Box::pin(async move {
            let _ = gate.wait_for(|open| *open).await;
            accepted.lock().unwrap().extend(covered);
            flushing.store(false, Ordering::SeqCst);
            Ok(())
        }))
    }
}

/// A sink that flushes in the background (as the file sink does its fsync) keeps receiving
/// batches while a flush runs, and nothing is confirmed to PostgreSQL until that flush is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writing_goes_on_during_a_background_flush_and_confirms_after_it() {
    let (open, gate) = tokio::sync::watch::channel(true);
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let written_meanwhile = Arc::new(AtomicUsize::new(0));
    let sink = GatedSink {
        gate,
        pending: Vec::new(),
        accepted: accepted.clone(),
        flushing: Arc::new(AtomicBool::new(false)),
        written_meanwhile: written_meanwhile.clone(),
    };
    let big = BigPipeline::start(Box::new(sink), 20).await;
    let (db, client, slot) = (&big.db, &big.client, &big.slot);

    open.send(false).unwrap();
    let held = insert_first_held(client, 20).await;
    // Rows one by one: each is its own transaction, so a flush starts while the next arrive.
    let mut id = 20;
    wait_for_async(
        "rows written while a flush runs",
        Duration::from_secs(60),
        || {
            id += 1;
            let client = &client;
            let written = written_meanwhile.clone();
            let id = id;
            async move {
                insert_big(client, id, 1).await;
                (written.load(Ordering::SeqCst) >= 5).then_some(())
            }
        },
    )
    .await
    .unwrap();
    big.assert_confirmed_short_of(&held, "before its flush finished")
        .await;

    open.send(true).unwrap();
    let last = db.emit_marker().await;
    db.wait_for_confirmed(slot, &last, Duration::from_secs(60))
        .await
        .unwrap();
    let mut lsns = accepted.lock().unwrap().clone();
    lsns.sort_unstable();
    lsns.dedup();
    let rows: i64 = client
        .query_one("SELECT count(*) FROM big", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        lsns.len() as i64,
        rows,
        "every row was flushed once confirmed"
    );
    big.stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(30), big.run)
        .await
        .expect("the pipeline stops when asked")
        .unwrap()
        .unwrap();
}

fn http_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = String::new();
    conn.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_are_served() {
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE m (id int PRIMARY KEY)")
        .await
        .unwrap();
    let port = walflow_tests::free_port();
    let addr = format!("127.0.0.1:{port}");
    let builder = db.config().source("snapshot = \"never\"").append(&format!(
        "[metrics]\nlisten = \"{addr}\"\n\n[[sinks]]\ntype = \"file\"\npath = \"out.jsonl\""
    ));
    let slot = builder.slot_name().to_string();
    let config = builder.write().unwrap();
    let mut child = walflow!("run", "-c", &config.path).spawn().unwrap();
    db.wait_for_slot(&slot, Duration::from_secs(30))
        .await
        .unwrap();
    let acked_before = commit_to_ack_count(&http_get(&addr, "/metrics"));
    for id in 1..=10 {
        client
            .execute("INSERT INTO m VALUES ($1)", &[&id])
            .await
            .unwrap();
    }
    let marker = db.emit_marker().await;
    wait_for_async("delivery", Duration::from_secs(30), || async {
        db.slot_reached(&slot, &marker).await.then_some(())
    })
    .await
    .unwrap();
    let metrics = http_get(&addr, "/metrics");
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    // Ten transactions (and the marker's) were acknowledged since the first scrape.
    let acked = commit_to_ack_count(&metrics);
    assert!(
        acked >= acked_before + 10,
        "commit-to-ack observations went from {acked_before} to {acked}:\n{metrics}"
    );
    assert!(
        metrics.contains("walflow_commit_to_ack_seconds_bucket{le=\"+Inf\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("walflow_events_out_total{table=\"public.m\"} 10"),
        "{metrics}"
    );
    assert!(
        metrics.contains("walflow_replication_lag_bytes"),
        "{metrics}"
    );
    assert!(http_get(&addr, "/health").starts_with("HTTP/1.1 200"));
    child.terminate();
    let out = child.wait_async(Duration::from_secs(30)).await.unwrap();
    assert!(out.status.success(), "{}", out.describe());
}

/// The `_count` of the commit-to-ack histogram in a `/metrics` response.
fn commit_to_ack_count(response: &str) -> u64 {
    response
        .lines()
        .find_map(|l| l.strip_prefix("walflow_commit_to_ack_seconds_count "))
        .unwrap_or_else(|| panic!("no commit-to-ack histogram in {response}"))
        .parse()
        .unwrap()
}

/// A lone change is written as soon as it arrives, however long `max_wait` is: a batch does
/// not wait to fill (issue 21; with the wait it took the whole five seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_change_reaches_the_file_sink_well_before_max_wait() {
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE lone (id int PRIMARY KEY)")
        .await
        .unwrap();
    let builder = db
        .config()
        .source("snapshot = \"never\"")
        .append("[batch]\nmax_wait = \"5s\"\n\n[[sinks]]\ntype = \"file\"\npath = \"out.jsonl\"");
    let slot = builder.slot_name().to_string();
    let config = builder.write().unwrap();
    let mut child = walflow!("run", "-c", &config.path).spawn().unwrap();
    db.wait_for_slot(&slot, Duration::from_secs(30))
        .await
        .unwrap();
    let out_path = config.dir().join("out.jsonl");
    let started = std::time::Instant::now();
    client
        .batch_execute("INSERT INTO lone VALUES (1)")
        .await
        .unwrap();
    wait_for_async(
        "the change in the file",
        Duration::from_secs(30),
        || async {
            let text = std::fs::read_to_string(&out_path).unwrap_or_default();
            text.contains("\"table\":\"lone\"").then_some(())
        },
    )
    .await
    .unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "a lone change took {took:?} to reach the file sink with max_wait = 5s"
    );
    child.terminate();
    let out = child.wait_async(Duration::from_secs(30)).await.unwrap();
    assert!(out.status.success(), "{}", out.describe());
}

async fn insert_hr(client: &tokio_postgres::Client, id: &mut i32) {
    client
        .execute("INSERT INTO hr VALUES ($1, 'source')", &[&*id])
        .await
        .unwrap();
    *id += 1;
    tokio::time::sleep(Duration::from_millis(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_replaced_mid_stream_takes_over_without_losing_or_repeating_events() {
    let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/target/dist");
    let status = std::process::Command::new(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-plugins"),
    )
    .stdout(std::process::Stdio::null())
    .status()
    .unwrap();
    assert!(status.success());
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE hr (id int PRIMARY KEY, version text)")
        .await
        .unwrap();
    let builder = db.config().source("snapshot = \"never\"").append(
        "[batch]\nmax_events = 8\nmax_wait = \"10ms\"\n\n[[plugins]]\npath = \"tag.wasm\"\n\n[[sinks]]\ntype = \"file\"\npath = \"out.jsonl\"",
    );
    let slot = builder.slot_name().to_string();
    let config = builder.write().unwrap();
    let tag = config.dir().join("tag.wasm");
    std::fs::copy(plugins.join("tag_v1.wasm"), &tag).unwrap();
    let mut child = walflow!("run", "-c", &config.path)
        .env("WALFLOW_LOG", "walflow=info")
        .spawn()
        .unwrap();
    db.wait_for_slot(&slot, Duration::from_secs(30))
        .await
        .unwrap();
    let out_path = config.dir().join("out.jsonl");
    let version_of = |id: i32| {
        replay::read_records(&out_path)
            .iter()
            .find(|r| r["value"]["after"]["id"] == id)
            .and_then(|r| r["value"]["after"]["version"].as_str().map(str::to_owned))
    };
    let replace = |bytes: &[u8]| {
        let next = config.dir().join("tag.wasm.new");
        std::fs::write(&next, bytes).unwrap();
        std::fs::rename(&next, &tag).unwrap();
    };
    let mut id = 0;
    for _ in 0..100 {
        insert_hr(&client, &mut id).await;
    }
    replace(&std::fs::read(plugins.join("tag_v2.wasm")).unwrap());
    // Keep the stream going until an event comes out stamped by the new version.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        insert_hr(&client, &mut id).await;
        if version_of(id - 1).as_deref() == Some("v2") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "v2 never took over:\n{}",
            child.stderr()
        );
    }
    // A corrupt replacement leaves v2 serving.
    replace(b"not a component");
    for _ in 0..100 {
        insert_hr(&client, &mut id).await;
    }
    let marker = db.emit_marker().await;
    wait_for_async("delivery", Duration::from_secs(60), || async {
        db.slot_reached(&slot, &marker).await.then_some(())
    })
    .await
    .unwrap();
    child.terminate();
    let out = child.wait_async(Duration::from_secs(30)).await.unwrap();
    assert!(out.status.success(), "{}", out.describe());
    let records = replay::read_records(&config.dir().join("out.jsonl"));
    let rows: Vec<(i64, String)> = records
        .iter()
        .filter(|r| r["value"]["source"]["table"] == "hr")
        .map(|r| {
            let after = &r["value"]["after"];
            (
                after["id"].as_i64().unwrap(),
                after["version"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let ids: Vec<i64> = rows.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        ids,
        (0..i64::from(id)).collect::<Vec<_>>(),
        "every event exactly once, in order:\n{}",
        out.stderr
    );
    let first_v2 = rows
        .iter()
        .position(|(_, v)| v == "v2")
        .unwrap_or_else(|| panic!("v2 never took over:\n{}", out.stderr));
    assert!(rows[..first_v2].iter().all(|(_, v)| v == "v1"));
    assert!(
        rows[first_v2..].iter().all(|(_, v)| v == "v2"),
        "v1 ran after v2 took over, or the corrupt file replaced v2"
    );
    assert!(
        out.stderr.contains("tag"),
        "the rejected reload is logged:\n{}",
        out.stderr
    );
}

/// The same configuration as JSON runs the same pipeline (the coming control API takes JSON).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_config_runs_the_pipeline() {
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE from_json (id int PRIMARY KEY)")
        .await
        .unwrap();
    let builder = db
        .config()
        .source("snapshot = \"never\"")
        .append("[[sinks]]\ntype = \"file\"\npath = \"out.jsonl\"");
    let slot = builder.slot_name().to_string();
    let config = builder.write_json().unwrap();
    let mut child = walflow!("run", "-c", &config.path).spawn().unwrap();
    db.wait_for_slot(&slot, Duration::from_secs(30))
        .await
        .unwrap();
    client
        .batch_execute("INSERT INTO from_json VALUES (7)")
        .await
        .unwrap();
    let out_path = config.dir().join("out.jsonl");
    wait_for_async(
        "the change in the file",
        Duration::from_secs(30),
        || async {
            let text = std::fs::read_to_string(&out_path).unwrap_or_default();
            text.contains("\"table\":\"from_json\"").then_some(())
        },
    )
    .await
    .unwrap();
    child.terminate();
    let out = child.wait_async(Duration::from_secs(30)).await.unwrap();
    assert!(out.status.success(), "{}", out.describe());
}

/// A JSON config with an unknown key fails with the key and where it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_config_with_an_unknown_key_names_it_and_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walflow.json");
    std::fs::write(
        &path,
        r#"{"source": {"url": "postgres://u@127.0.0.1:1/db"},
            "sinks": [{"type": "file", "path": "out.jsonl", "max_byte": 10}]}"#,
    )
    .unwrap();
    let output = walflow!("run", "-c", &path)
        .output_async(Duration::from_secs(30))
        .await
        .unwrap();
    assert!(!output.status.success());
    assert!(
        output.stderr.contains("max_byte") && output.stderr.contains("sinks[0]"),
        "{}",
        output.describe()
    );
    assert_eq!(
        output.stderr.trim().lines().count(),
        1,
        "{}",
        output.describe()
    );
}

/// `walflow config schema` prints a JSON Schema that knows every sink's settings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_schema_describes_every_sink() {
    let output = walflow!("config", "schema")
        .output_async(Duration::from_secs(30))
        .await
        .unwrap();
    assert!(output.status.success(), "{}", output.describe());
    let schema: Json = serde_json::from_str(&output.stdout).unwrap();
    assert_eq!(schema["title"], "Config");
    let text = output.stdout;
    for kind in walflow::config::SINK_TYPES {
        assert!(text.contains(&format!("\"{kind}\"")), "no {kind} sink");
    }
    for key in [
        "brokers",
        "librdkafka_options",
        "max_retry_after",
        "stream_prefix",
    ] {
        assert!(text.contains(key), "no sink key {key}");
    }
}

/// A destination that is down at start ends the run with the transient exit code, so a
/// supervisor knows that starting again later may succeed; nothing is created meanwhile.
/// A destination down when walflow starts is waited for, as one that goes down later is (and
/// as PostgreSQL is): logged, nothing created on PostgreSQL meanwhile, and a stop while waiting
/// exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_down_at_start_is_waited_for_without_touching_postgres() {
    let db = Cluster::shared().new_database().await;
    let port = walflow_tests::free_port();
    let builder = db.config().append(&format!(
        "[[sinks]]\ntype = \"kafka\"\nbrokers = \"127.0.0.1:{port}\"\ntimeout = \"1s\""
    ));
    let slot = builder.slot_name().to_string();
    let config = builder.write().unwrap();
    let mut child = walflow!("run", "-c", &config.path).spawn().unwrap();
    let waiting = format!("cannot reach kafka brokers 127.0.0.1:{port}");
    wait_for_async(
        "walflow to wait for the broker",
        Duration::from_secs(60),
        || async {
            let stderr = child.stderr();
            (stderr.contains("a sink is unreachable at start; retrying")
                && stderr.contains(&waiting))
            .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    assert!(child.is_running(), "{}", child.stderr());
    assert!(
        db.slot_confirmed(&slot).await.is_none(),
        "a slot was created while a sink was unreachable"
    );
    child.terminate();
    let output = child.wait_async(Duration::from_secs(15)).await.unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", output.describe());
}
