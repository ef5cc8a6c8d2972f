//! Snapshots against real clusters: the initial snapshot consistent with the slot, incremental
//! snapshots by signal table and read-only, their modes, kill -9 in the middle of each, and the
//! requests that must be refused. Correctness is always the same question, answered by
//! PostgreSQL: do the file sink's records, replayed in order, rebuild the source tables?

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use serde_json::Value as Json;
use walflow_tests::{
    Cluster, ClusterOptions, ConfigFile, TEST_PASSWORD, TestDb, WalflowChild, pg_installs, replay,
    wait_for_async, walflow,
};

/// A table with most of the types the decoder knows, and the seed's signal table.
const TABLES_SQL: &str = "
    CREATE TABLE orders (
        id int PRIMARY KEY,
        amount numeric(14,3),
        payload bytea,
        doc jsonb,
        at timestamptz,
        note text,
        tags text[],
        price float8,
        flag bool,
        u uuid
    );
    CREATE TABLE walflow_signal (id varchar PRIMARY KEY, type varchar NOT NULL, data varchar NULL);
";

const BYTEA: &[&str] = &["payload"];

async fn fill(client: &tokio_postgres::Client, from: i32, to: i32) {
    client
        .batch_execute(&format!(
            "INSERT INTO orders SELECT g, g * 1.5, decode(md5(g::text), 'hex'),
                 jsonb_build_object('n', g, 'tags', jsonb_build_array('a', NULL)),
                 now() - g * interval '1 second', repeat('x', g % 20), ARRAY['a', g::text, NULL],
                 g / 3.0, g % 2 = 0, md5(g::text)::uuid
             FROM generate_series({from}, {to}) g"
        ))
        .await
        .expect("fill orders");
}

/// Random small transactions on `orders` until `stop` is set: updates, deletes, inserts of new
/// and of deleted ids. Returns how many ran.
async fn churn(db: &TestDb, seed: u64, max_id: i32, stop: Arc<AtomicBool>) -> usize {
    let client = db.client().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let id = rng.random_range(1..max_id + 200);
        let sql = match rng.random_range(0..10) {
            0..5 => format!("UPDATE orders SET amount = amount + 1, note = note || 'u' WHERE id = {id}"),
            5..7 => format!("DELETE FROM orders WHERE id = {id}"),
            _ => format!(
                "INSERT INTO orders (id, amount, note, payload) VALUES ({id}, {id}, 'new', '\\x00ff')
                 ON CONFLICT (id) DO UPDATE SET note = 'again'"
            ),
        };
        client.batch_execute(&sql).await.expect("churn");
        n += 1;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..4))).await;
    }
    n
}

/// Churn in the background; stop it with the returned flag and join the handle.
fn start_churn(
    db: &Arc<TestDb>,
    seed: u64,
    max_id: i32,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<usize>) {
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn({
        let (db, stop) = (db.clone(), stop.clone());
        async move { churn(&db, seed, max_id, stop).await }
    });
    (stop, task)
}

async fn stop_churn(stop: Arc<AtomicBool>, task: tokio::task::JoinHandle<usize>) {
    stop.store(true, Ordering::Relaxed);
    let n = task.await.expect("churn task");
    assert!(n > 0, "the concurrent load ran");
}

fn file_sink(db: &TestDb, source: &[&str]) -> ConfigFile {
    let mut config = db.config();
    for line in source {
        config = config.source(line);
    }
    config
        .append("[batch]\nmax_events = 256\nmax_wait = \"20ms\"\n\n[[sinks]]\ntype = \"file\"\npath = \"out/events.jsonl\"")
        .write()
        .unwrap()
}

fn records(config: &ConfigFile) -> Vec<Json> {
    replay::read_records(&config.dir().join("out/events.jsonl"))
}

/// Records with this `source.snapshot` while walflow is still writing (the last line may be
/// half written, so lines are matched, not parsed).
fn count_live(config: &ConfigFile, snapshot: &str) -> usize {
    let needle = format!("\"snapshot\":\"{snapshot}\"");
    walflow::sink::written_files(&config.dir().join("out/events.jsonl"))
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.ends_with('}') && l.contains(&needle))
                .count()
        })
        .sum()
}

fn count(records: &[Json], snapshot: &str) -> usize {
    records
        .iter()
        .filter(|r| r["value"]["source"]["snapshot"] == snapshot)
        .count()
}

fn start(config: &ConfigFile) -> WalflowChild {
    walflow!("run", "-c", &config.path)
        .env("WALFLOW_LOG", "walflow=debug")
        .spawn()
        .unwrap()
}

/// Starts walflow and waits until it streams.
async fn start_streaming(config: &ConfigFile) -> WalflowChild {
    let mut child = start(config);
    wait_for_log(&mut child, "streaming started", Duration::from_secs(60)).await;
    child
}

/// Waits until walflow streams (any snapshot delivered) and everything committed so far is
/// confirmed, then stops it with SIGTERM.
async fn finish(db: &TestDb, mut child: WalflowChild) {
    wait_for_log(&mut child, "streaming started", Duration::from_secs(120)).await;
    let slot = db.config().slot_name().to_string();
    let marker = db.emit_marker().await;
    db.wait_for_confirmed(&slot, &marker, Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    assert!(
        child.is_running(),
        "walflow exited early:\n{}",
        child.stderr()
    );
    child.terminate();
    let output = child.wait_async(Duration::from_secs(30)).await.unwrap();
    assert!(output.status.success(), "{}", output.describe());
}

async fn wait_for_log(child: &mut WalflowChild, text: &str, timeout: Duration) {
    let found = wait_for_async(text, timeout, || async {
        child.stderr().contains(text).then_some(())
    })
    .await;
    if let Err(e) = found {
        panic!("{e}\n{}", child.stderr());
    }
}

async fn request(config: &ConfigFile, args: &[&str]) -> walflow_tests::WalflowOutput {
    walflow!("snapshot", "-c", &config.path)
        .args(args.iter().copied())
        .output_async(Duration::from_secs(60))
        .await
        .unwrap()
}

async fn new_db() -> Arc<TestDb> {
    let db = Arc::new(Cluster::shared().new_database().await);
    db.client().await.batch_execute(TABLES_SQL).await.unwrap();
    db
}

// ---------------------------------------------------------------- initial snapshots

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_snapshot_under_concurrent_writes_rebuilds_the_source() {
    let db = new_db().await;
    let client = db.client().await;
    fill(&client, 1, 20_000).await;
    let config = file_sink(&db, &["snapshot_parallelism = 2"]);
    let (stop, churning) = start_churn(&db, 1, 20_000);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Small page ranges, so both readers share the table.
    let child = walflow!("run", "-c", &config.path)
        .env("WALFLOW_LOG", "walflow=debug")
        .env("WALFLOW_SNAPSHOT_CHUNK_PAGES", "16")
        .spawn()
        .unwrap();
    let mut child = child;
    wait_for_log(
        &mut child,
        "initial snapshot delivered",
        Duration::from_secs(90),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_churn(stop, churning).await;
    let log = child.stderr();
    finish(&db, child).await;

    let records = records(&config);
    assert_eq!(count(&records, "first"), 1, "one first snapshot record");
    assert_eq!(count(&records, "last"), 1, "one last snapshot record");
    let first = records
        .iter()
        .position(|r| r["value"]["source"]["snapshot"] == "first");
    let last = records
        .iter()
        .position(|r| r["value"]["source"]["snapshot"] == "last");
    assert_eq!(first, Some(0), "the snapshot comes first");
    let last = last.unwrap();
    assert!(
        records[..=last].iter().all(|r| r["value"]["op"] == "r"),
        "only snapshot rows before the last one"
    );
    assert!(
        records[last + 1..].iter().any(|r| r["value"]["op"] != "r"),
        "changes made during the snapshot stream after it"
    );
    let chunks = log.matches("initial snapshot started").count();
    assert_eq!(chunks, 1);
    assert!(log.contains("readers=2"), "{log}");
    replay::assert_rebuilds(&client, &records, &[("orders", BYTEA)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_rows_and_streamed_rows_look_the_same() {
    let db = new_db().await;
    let client = db.client().await;
    fill(&client, 1, 5).await;
    let config = file_sink(&db, &["snapshot_parallelism = 1"]);
    let child = start_streaming(&config).await;
    client
        .batch_execute("UPDATE orders SET id = id WHERE id = 3")
        .await
        .unwrap();
    finish(&db, child).await;
    let records = records(&config);
    assert_eq!(after_of(&records, "r", 3), after_of(&records, "u", 3));
}

/// The `after` image of the first record with this op and key `id`.
fn after_of<'a>(records: &'a [Json], op: &str, id: i64) -> &'a Json {
    records
        .iter()
        .find(|r| r["value"]["op"] == op && r["key"]["id"] == id)
        .map(|r| &r["value"]["after"])
        .unwrap_or_else(|| panic!("no {op} record of id {id}"))
}

/// Columns of every type the snapshot reads in binary, and values at their edges.
const BINARY_TYPES_SQL: &str = r#"
    CREATE TABLE typed (
        id int PRIMARY KEY, s int2, b int8, o oid, f float8, t text, v varchar(12), c char(5),
        n name, by bytea, u uuid, j json, jb jsonb, num numeric, d date, tm time, ts timestamp,
        tz timestamptz, ok bool
    );
    INSERT INTO typed VALUES
        (1, -32768, 9223372036854775807, 4294967295, 1.5e300, E'h\u00e9llo\ttab\nline \\',
         'v', 'ab', 'a name', '\x00ff', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
         '{"a":  [1, 2],  "b": "x"}', '{"b": {"c": [1, "x", null]}, "a": 1.50}',
         12345678901234567890.000123, '4713-01-01 BC', '24:00:00', '1999-12-31 23:59:59.999999',
         '0044-03-15 12:00:00.5 BC', true),
        (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL, NULL, NULL),
        (3, 0, -1, 0, 'NaN', '', '', '', '', '', '00000000-0000-0000-0000-000000000000', '""',
         '[]', 'NaN', 'infinity', '00:00:00.000001', '-infinity', 'infinity', false),
        (4, 1, 0, 1, '-0', 'x', 'x', 'xxxxx', 'x', '\x', 'ffffffff-ffff-ffff-ffff-ffffffffffff',
         'null', '{}', '-0.00005', '10000-01-01', '12:34:56.78', '294276-12-31 23:59:59.999999',
         '1970-01-01 00:00:00+00', NULL),
        (5, 2, 2, 2, 'Infinity', 'y', 'y', 'y', 'y', '\xdeadbeef', NULL, '1', '"s"', '0.000',
         '-infinity', '23:59:59.999999', '2000-01-01', '1999-12-31 23:59:59.9+00', true),
        (6, 3, 3, 3, 1e-320, 'z', 'z', 'z', 'z', NULL, NULL, '[1,2]', '[1, 2.0]',
         '-123456789.123456789', '1999-01-08', '00:00:00', '0001-01-01 00:00:00 BC',
         '2024-02-29 12:00:00.000001+00', false);
"#;

/// Binary COPY (every column of `typed` has a binary decoder) must give the values the stream
/// gives: each row's snapshot record equals its update record after `SET id = id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_copy_rows_look_like_streamed_rows() {
    let db = new_db().await;
    let client = db.client().await;
    client.batch_execute(BINARY_TYPES_SQL).await.unwrap();
    let infinite_numerics = Cluster::shared().major() >= 14;
    if infinite_numerics {
        client
            .batch_execute("UPDATE typed SET num = '-Infinity' WHERE id = 5")
            .await
            .unwrap();
    }
    let config = file_sink(&db, &["snapshot_parallelism = 1"]);
    let child = start_streaming(&config).await;
    client
        .batch_execute("UPDATE typed SET id = id")
        .await
        .unwrap();
    finish(&db, child).await;
    let records: Vec<Json> = records(&config)
        .into_iter()
        .filter(|r| r["value"]["source"]["table"] == "typed")
        .collect();
    for id in 1..=6 {
        let (read, updated) = (after_of(&records, "r", id), after_of(&records, "u", id));
        assert_eq!(read, updated, "row {id}");
    }
    let first = after_of(&records, "r", 1);
    assert_eq!(first["by"], Json::from("AP8="), "bytea as base64: {first}");
    assert_eq!(first["d"], Json::from("-4712-01-01"), "4713 BC: {first}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modes_initial_only_never_and_a_second_start() {
    let db = new_db().await;
    let client = db.client().await;
    fill(&client, 1, 300).await;

    let once = file_sink(&db, &["snapshot = \"initial_only\""]);
    let output = walflow!("run", "-c", &once.path)
        .output_async(Duration::from_secs(60))
        .await
        .unwrap();
    assert!(output.status.success(), "{}", output.describe());
    assert_eq!(count(&records(&once), "true") + 2, 300, "every row once");
    assert!(records(&once).iter().all(|r| r["value"]["op"] == "r"));

    // The same state directory with `initial`: a checkpoint exists, so no second snapshot.
    client
        .batch_execute("UPDATE orders SET note = 'later' WHERE id = 7")
        .await
        .unwrap();
    let text = once
        .text()
        .replace("snapshot = \"initial_only\"", "snapshot = \"initial\"");
    std::fs::write(&once.path, text).unwrap();
    let child = start(&once);
    finish(&db, child).await;
    let after = records(&once);
    assert_eq!(
        after.iter().filter(|r| r["value"]["op"] == "r").count(),
        300
    );
    assert!(
        after
            .iter()
            .any(|r| r["value"]["op"] == "u" && r["value"]["after"]["note"] == "later"),
        "the change since the snapshot streams"
    );

    let never = db
        .config()
        .slot("never_slot")
        .source("snapshot = \"never\"")
        .append("[[sinks]]\ntype = \"file\"\npath = \"out/events.jsonl\"")
        .write()
        .unwrap();
    let mut child = start(&never);
    wait_for_log(&mut child, "streaming started", Duration::from_secs(60)).await;
    client
        .batch_execute("UPDATE orders SET note = 'never' WHERE id = 8")
        .await
        .unwrap();
    let marker = db.emit_marker().await;
    wait_for_async("never to confirm", Duration::from_secs(60), || async {
        db.slot_reached("never_slot", &marker).await.then_some(())
    })
    .await
    .unwrap();
    child.terminate();
    child.wait_async(Duration::from_secs(30)).await.unwrap();
    let never_records: Vec<Json> = records(&never)
        .into_iter()
        .filter(|r| r["value"]["op"] != "m")
        .collect();
    assert!(never_records.iter().all(|r| r["value"]["op"] != "r"));
    assert_eq!(never_records.len(), 1, "only the update");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_needed_resnapshots_a_broken_slot_history() {
    let db = new_db().await;
    let client = db.client().await;
    fill(&client, 1, 200).await;
    let config = file_sink(&db, &[]);
    let child = start(&config);
    finish(&db, child).await;
    let slot = db.config().slot_name().to_string();
    client
        .query("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap();
    client
        .batch_execute(
            "DELETE FROM orders WHERE id <= 10; UPDATE orders SET note = 'gap' WHERE id = 50",
        )
        .await
        .unwrap();

    let output = walflow!("run", "-c", &config.path)
        .output_async(Duration::from_secs(60))
        .await
        .unwrap();
    assert!(!output.status.success(), "a gap stops `initial`");
    assert!(
        output.stderr.contains("no longer exists"),
        "{}",
        output.describe()
    );

    let text = config
        .text()
        .replace("[state]", "snapshot = \"when_needed\"\n\n[state]");
    std::fs::write(&config.path, text).unwrap();
    let child = start(&config);
    finish(&db, child).await;
    let records = records(&config);
    let firsts: Vec<_> = records
        .iter()
        .filter(|r| r["value"]["source"]["snapshot"] == "first")
        .map(|r| (r["value"]["source"]["lsn"].clone(), r["key"].clone()))
        .collect();
    assert_eq!(firsts.len(), 2, "a second full snapshot: {firsts:?}");
    // A new snapshot restarts the table's history (deletes in the gap cannot be replayed), so
    // the consumer rebuilds from it.
    let second = records
        .iter()
        .rposition(|r| r["value"]["source"]["snapshot"] == "first")
        .unwrap();
    replay::assert_rebuilds(&client, &records[second..], &[("orders", BYTEA)]).await;
}

/// A database whose `orders` hold 120,000 rows, a client of it, and a file-sink config that
/// snapshots them with two readers: for the tests that interrupt an initial snapshot.
async fn orders_to_snapshot() -> (Arc<TestDb>, tokio_postgres::Client, ConfigFile) {
    let db = new_db().await;
    let client = db.client().await;
    fill(&client, 1, 120_000).await;
    let config = file_sink(&db, &["snapshot_parallelism = 2"]);
    (db, client, config)
}

/// Starts walflow on `config` with 32-page snapshot chunks, so a snapshot is many COPYs.
fn spawn_in_chunks(config: &ConfigFile) -> WalflowChild {
    walflow!("run", "-c", &config.path)
        .env("WALFLOW_LOG", "walflow=debug")
        .env("WALFLOW_SNAPSHOT_CHUNK_PAGES", "32")
        .spawn()
        .unwrap()
}

/// Starts walflow again after an interruption and waits until the snapshot is delivered.
async fn restart_until_delivered(config: &ConfigFile) -> WalflowChild {
    let mut child = spawn_in_chunks(config);
    wait_for_log(
        &mut child,
        "initial snapshot delivered",
        Duration::from_secs(120),
    )
    .await;
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_the_initial_snapshot_resumes_it() {
    let (db, client, config) = orders_to_snapshot().await;
    let (stop, churning) = start_churn(&db, 2, 120_000);
    let mut child = spawn_in_chunks(&config);
    wait_for_async("some snapshot rows", Duration::from_secs(60), || async {
        (count_live(&config, "true") > 3_000).then_some(())
    })
    .await
    .unwrap();
    child.kill9();
    let first_log = child.stderr();
    assert!(
        !first_log.contains("initial snapshot delivered"),
        "killed too late to test a resume"
    );
    let child = restart_until_delivered(&config).await;
    assert!(child.stderr().contains("resuming the initial snapshot"));
    stop_churn(stop, churning).await;
    finish(&db, child).await;
    replay::assert_rebuilds(&client, &records(&config), &[("orders", BYTEA)]).await;
}

/// Lines of the file sink holding `needle`, counted without parsing (the last line may be half
/// written).
fn lines_with(config: &ConfigFile, needle: &str) -> usize {
    walflow::sink::written_files(&config.dir().join("out/events.jsonl"))
        .iter()
        .map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.ends_with('}') && l.contains(needle))
                .count()
        })
        .sum()
}

/// A killed initial snapshot repeats on resume only what was in flight — the chunk each reader
/// was copying and the rows queued for delivery — not a fixed share of the table (it was 11%
/// of this table with 16 MiB chunks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_mid_snapshot_repeats_under_five_percent_on_resume() {
    const ROWS: usize = 1_200_000;
    let db = new_db().await;
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "CREATE TABLE big (id int PRIMARY KEY, v text);
             INSERT INTO big SELECT g, md5(g::text) FROM generate_series(1, {ROWS}) g;
             ANALYZE big;"
        ))
        .await
        .unwrap();
    let config = file_sink(&db, &["tables = [\"public.big\"]"]);
    let read_op = "\"op\":\"r\"";
    let mut child = start(&config);
    wait_for_async("40% of the snapshot", Duration::from_secs(180), || async {
        (lines_with(&config, read_op) >= ROWS * 2 / 5).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    child.kill9();
    assert!(!child.stderr().contains("initial snapshot delivered"));
    let mut child = start(&config);
    wait_for_log(
        &mut child,
        "initial snapshot delivered",
        Duration::from_secs(300),
    )
    .await;
    finish(&db, child).await;
    let delivered = lines_with(&config, read_op);
    assert!(
        delivered >= ROWS,
        "only {delivered} of {ROWS} rows delivered"
    );
    let repeated = delivered - ROWS;
    eprintln!("resume repeated {repeated} of {ROWS} rows");
    assert!(
        repeated * 20 < ROWS,
        "the resume repeated {repeated} of {ROWS} rows (5% is {})",
        ROWS / 20
    );
}

/// A reader's connection cut in the middle of a COPY (its backend terminated) stops walflow
/// with an error that names the table, before the snapshot is marked delivered; a restart
/// resumes it and the sink then rebuilds the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_cut_off_mid_copy_stops_the_snapshot_and_a_restart_finishes_it() {
    let (db, client, config) = orders_to_snapshot().await;
    let child = spawn_in_chunks(&config);
    wait_for_async(
        "a reader's COPY cut off",
        Duration::from_secs(60),
        || async {
            let cut: i64 = client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity, pg_terminate_backend(pid) \
                 WHERE query LIKE 'COPY %' AND datname = current_database() \
                 AND pid <> pg_backend_pid()",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            (cut > 0).then_some(())
        },
    )
    .await
    .unwrap();
    let out = child.wait_async(Duration::from_secs(60)).await.unwrap();
    assert_ne!(out.code(), Some(0), "{}", out.describe());
    assert!(
        out.stderr.contains("cannot read public.orders") && out.stderr.contains("terminat"),
        "{}",
        out.describe()
    );
    assert!(
        !out.stderr.contains("initial snapshot delivered"),
        "{}",
        out.describe()
    );
    let child = restart_until_delivered(&config).await;
    finish(&db, child).await;
    replay::assert_rebuilds(&client, &records(&config), &[("orders", BYTEA)]).await;
}

// ---------------------------------------------------------------- incremental snapshots

/// Starts walflow, requests an incremental snapshot of `public.orders` while a churn of ids up
/// to `max_id` runs, waits until the snapshot is done and stops walflow once all is confirmed.
async fn snapshot_orders_under_churn(
    db: &Arc<TestDb>,
    config: &ConfigFile,
    seed: u64,
    max_id: i32,
) {
    let mut child = start_streaming(config).await;
    let (stop, churning) = start_churn(db, seed, max_id);
    let output = request(config, &["--table", "public.orders"]).await;
    assert!(output.status.success(), "{}", output.describe());
    wait_for_log(
        &mut child,
        "incremental snapshot of table done",
        Duration::from_secs(90),
    )
    .await;
    stop_churn(stop, churning).await;
    finish(db, child).await;
}

const SIGNAL: &str = "signal_table = \"public.walflow_signal\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_by_signal_table_under_load_rebuilds_the_source() {
    let db = new_db().await;
    let client = db.client().await;
    fill(&client, 1, 6_000).await;
    let config = file_sink(
        &db,
        &["snapshot = \"never\"", SIGNAL, "snapshot_chunk_size = 300"],
    );
    snapshot_orders_under_churn(&db, &config, 3, 6_000).await;

    let records = records(&config);
    assert!(count(&records, "incremental") > 5_000);
    assert!(
        records
            .iter()
            .all(|r| r["value"]["source"]["table"] != "walflow_signal"),
        "signal rows never reach the sinks"
    );
    let watermarks: i64 = client
        .query_one(
            "SELECT count(*) FROM walflow_signal WHERE type LIKE 'snapshot-window-%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        watermarks >= 2 * 20,
        "watermarks around every chunk: {watermarks}"
    );
    replay::assert_rebuilds(&client, &records, &[("orders", BYTEA)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_read_only_under_a_role_that_cannot_write() {
    let db = new_db().await;
    let client = db.client().await;
    fill(&client, 1, 4_000).await;
    let role = format!("ro_{}", db.name());
    let publication = db.config().publication_name().to_string();
    client
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN REPLICATION PASSWORD '{TEST_PASSWORD}';
             GRANT SELECT ON orders TO {role};
             ALTER ROLE {role} SET default_transaction_read_only = on;
             CREATE PUBLICATION {publication} FOR TABLE orders;"
        ))
        .await
        .unwrap();
    let config = db
        .config()
        .login(&role)
        .source("tables = [\"public.orders\"]")
        .source("snapshot = \"never\"")
        .source("read_only = true")
        .source("publication_autocreate = \"disabled\"")
        .source("snapshot_chunk_size = 250")
        .append("[[sinks]]\ntype = \"file\"\npath = \"out/events.jsonl\"")
        .write()
        .unwrap();
    snapshot_orders_under_churn(&db, &config, 4, 4_000).await;
    let records = records(&config);
    assert!(count(&records, "incremental") > 3_000);
    replay::assert_rebuilds(&client, &records, &[("orders", BYTEA)]).await;

    // Without a running walflow the request has nowhere to go.
    let output = request(&config, &["--table", "public.orders"]).await;
    assert!(!output.status.success());
    assert!(
        output.stderr.contains("start `walflow run"),
        "{}",
        output.describe()
    );
}

/// Rows of the incremental snapshot that the checkpoint records as delivered (0 before one).
fn checkpointed_rows(config: &ConfigFile) -> u64 {
    let Ok(dir) = std::fs::read_dir(config.dir().join("state")) else {
        return 0;
    };
    dir.flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .ends_with(".checkpoint.json")
        })
        .filter_map(|e| std::fs::read(e.path()).ok())
        .filter_map(|bytes| serde_json::from_slice::<Json>(&bytes).ok())
        .filter_map(|cp| {
            let tables = cp
                .pointer("/snapshot/incremental/tables")?
                .as_array()?
                .clone();
            Some(
                tables
                    .iter()
                    .filter_map(|t| t["rows"].as_u64())
                    .sum::<u64>(),
            )
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_an_incremental_snapshot_resumes_at_the_next_chunk() {
    const ROWS: usize = 120_000;
    let db = new_db().await;
    let client = db.client().await;
    fill(&client, 1, ROWS as i32).await;
    let config = file_sink(
        &db,
        &["snapshot = \"never\"", SIGNAL, "snapshot_chunk_size = 500"],
    );
    let mut child = start_streaming(&config).await;
    let (stop, churning) = start_churn(&db, 5, ROWS as i32);
    let output = request(&config, &["--table", "public.orders"]).await;
    assert!(output.status.success(), "{}", output.describe());
    // Kill as soon as a checkpoint records progress (a fixed wait can outlast the snapshot).
    wait_for_async(
        "a checkpoint of the snapshot's progress",
        Duration::from_secs(60),
        || async { (checkpointed_rows(&config) >= 5_000).then_some(()) },
    )
    .await
    .unwrap();
    child.kill9();
    let written = count_live(&config, "incremental");
    assert!(
        !child
            .stderr()
            .contains("incremental snapshot of table done"),
        "killed too late"
    );
    let mut child = start(&config);
    wait_for_log(
        &mut child,
        "resuming the incremental snapshot",
        Duration::from_secs(60),
    )
    .await;
    wait_for_log(
        &mut child,
        "incremental snapshot of table done",
        Duration::from_secs(120),
    )
    .await;
    stop_churn(stop, churning).await;
    finish(&db, child).await;
    let records = records(&config);
    // Started over, the table would come again whole after what was written before the kill;
    // resumed, it comes from the checkpointed chunk on (≥ 5,000 rows fewer). The churn's
    // deletes take a few hundred rows off either way.
    assert!(
        count(&records, "incremental") < written + ROWS - 2_500,
        "resumed, not started over"
    );
    replay::assert_rebuilds(&client, &records, &[("orders", BYTEA)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_added_later_is_backfilled_by_request() {
    let db = new_db().await;
    let client = db.client().await;
    let publication = db.config().publication_name().to_string();
    client
        .batch_execute(&format!(
            "CREATE PUBLICATION {publication} FOR TABLE orders, walflow_signal;"
        ))
        .await
        .unwrap();
    let config = file_sink(
        &db,
        &[
            "snapshot = \"never\"",
            SIGNAL,
            "publication_autocreate = \"disabled\"",
        ],
    );
    let mut child = start_streaming(&config).await;
    client
        .batch_execute(&format!(
            "CREATE TABLE late (id int PRIMARY KEY, v text);
             INSERT INTO late SELECT g, 'v' || g FROM generate_series(1, 700) g;
             ALTER PUBLICATION {publication} ADD TABLE late;"
        ))
        .await
        .unwrap();
    let output = request(&config, &["--table", "public.late"]).await;
    assert!(output.status.success(), "{}", output.describe());
    wait_for_log(
        &mut child,
        "incremental snapshot of table done",
        Duration::from_secs(60),
    )
    .await;
    client
        .batch_execute("UPDATE late SET v = 'changed' WHERE id = 5")
        .await
        .unwrap();
    finish(&db, child).await;
    let records = records(&config);
    let late: Vec<&Json> = records
        .iter()
        .filter(|r| r["value"]["source"]["table"] == "late")
        .collect();
    assert_eq!(
        late.iter()
            .filter(|r| r["value"]["source"]["snapshot"] == "incremental")
            .count(),
        700
    );
    replay::assert_rebuilds(&client, &records, &[("late", &[])]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_stop() {
    let db = new_db().await;
    let client = db.client().await;
    fill(&client, 1, 20_000).await;
    let config = file_sink(
        &db,
        &["snapshot = \"never\"", SIGNAL, "snapshot_chunk_size = 100"],
    );
    let mut child = start_streaming(&config).await;
    assert!(
        request(&config, &["--table", "public.orders"])
            .await
            .status
            .success()
    );
    assert!(request(&config, &["--pause"]).await.status.success());
    wait_for_log(
        &mut child,
        "incremental snapshot paused",
        Duration::from_secs(30),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let paused_at = count_live(&config, "incremental");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        count_live(&config, "incremental"),
        paused_at,
        "no chunks while paused"
    );
    assert!(paused_at < 20_000, "paused before the end");
    assert!(request(&config, &["--resume"]).await.status.success());
    wait_for_log(
        &mut child,
        "incremental snapshot of table done",
        Duration::from_secs(90),
    )
    .await;
    assert!(
        request(&config, &["--table", "public.orders"])
            .await
            .status
            .success()
    );
    assert!(request(&config, &["--stop"]).await.status.success());
    wait_for_log(
        &mut child,
        "incremental snapshot stopped",
        Duration::from_secs(30),
    )
    .await;
    finish(&db, child).await;
    let incremental = count(&records(&config), "incremental");
    assert!(
        (20_000..40_000).contains(&incremental),
        "the second, stopped snapshot did not complete: {incremental}"
    );
}

// ---------------------------------------------------------------- bad input

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signal_rows_are_skipped_and_bad_requests_refused() {
    let db = new_db().await;
    let client = db.client().await;
    fill(&client, 1, 500).await;
    client
        // Without a key walflow refuses to snapshot nopk; its replica identity lets the
        // publication carry its updates (without one, `walflow run` refuses to start).
        .batch_execute(
            "CREATE TABLE nopk (v text); ALTER TABLE nopk REPLICA IDENTITY FULL;
             CREATE TABLE other (id int PRIMARY KEY);",
        )
        .await
        .unwrap();
    let config = file_sink(
        &db,
        &[
            "snapshot = \"never\"",
            SIGNAL,
            "tables = [\"public.orders\", \"public.nopk\"]",
        ],
    );
    let mut child = start_streaming(&config).await;
    client
        .batch_execute(
            "INSERT INTO walflow_signal VALUES ('a', 'launch-rockets', NULL);
             INSERT INTO walflow_signal VALUES ('b', 'execute-snapshot', '{oops');
             INSERT INTO walflow_signal VALUES ('c', 'execute-snapshot', '{\"data-collections\": [\"public.nope\"]}');
             INSERT INTO walflow_signal VALUES ('d', 'execute-snapshot', '{\"data-collections\": [\"public.orders\"], \"type\": \"incremental\"}');",
        )
        .await
        .unwrap();
    wait_for_log(
        &mut child,
        "incremental snapshot of table done",
        Duration::from_secs(60),
    )
    .await;
    let log = child.stderr();
    assert!(
        log.contains("signal type \"launch-rockets\" is unknown"),
        "{log}"
    );
    assert!(log.contains("not JSON"), "{log}");
    assert!(log.contains("public.nope"), "{log}");

    for (table, expected) in [
        ("public.nope", "does not exist"),
        ("public.nopk", "primary key"),
        ("public.other", "not captured"),
    ] {
        let output = request(&config, &["--table", table]).await;
        assert!(!output.status.success(), "{table}: {}", output.describe());
        let line = output
            .stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_default();
        assert!(
            line.contains(expected) && line.contains(table.split('.').nth(1).unwrap()),
            "{table}: {line}"
        );
    }
    finish(&db, child).await;
    assert_eq!(count(&records(&config), "incremental"), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_snapshots_are_refused_before_postgresql_13() {
    let Some(install) = pg_installs().into_iter().find(|i| i.major < 13) else {
        eprintln!("skipped: no PostgreSQL older than 13 installed");
        return;
    };
    let bin = install.bin_dir.clone();
    let cluster = tokio::task::spawn_blocking(move || {
        Cluster::start(ClusterOptions::default().without_tls().bin_dir(bin))
    })
    .await
    .unwrap()
    .unwrap();
    let db = cluster.new_database().await;
    db.client()
        .await
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let config = db
        .config()
        .source("read_only = true")
        .append("[[sinks]]\ntype = \"stdout\"")
        .write()
        .unwrap();
    let output = request(&config, &["--table", "public.t"]).await;
    assert!(!output.status.success());
    assert!(
        output.stderr.contains("PostgreSQL 13 or newer"),
        "PostgreSQL {}: {}",
        install.version,
        output.describe()
    );
}
