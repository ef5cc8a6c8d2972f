//! Slot safety against real servers: what keeps a slot from pinning WAL, timing out or being
//! lost without anyone noticing — heartbeats, retained-WAL metrics and warnings, invalidated
//! slots, and status replies that keep flowing while a huge transaction is delivered.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use walflow_tests::{Cluster, ClusterOptions, walflow};

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Ids of the inserted rows of `table` the file sink at `out` holds, read line by line (a
/// million records as JSON trees at once would take gigabytes).
fn ids_in(out: &Path, table: &str) -> BTreeSet<i64> {
    let mut ids = BTreeSet::new();
    for file in walflow::sink::written_files(out) {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for line in text.lines().filter(|l| !l.is_empty()) {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            let value = &record["value"];
            if value["source"]["table"] == table && value["op"] == "c" {
                ids.extend(value["after"]["id"].as_i64());
            }
        }
    }
    ids
}

/// A transaction of 2,000,000 rows takes walflow far longer to deliver than the server's
/// `wal_sender_timeout` (5 s here). Backpressure stops walflow from reading meanwhile, but the
/// server must keep hearing from it: a walsender that times out restarts the whole
/// transaction on the next connection, again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_replies_keep_flowing_while_a_huge_transaction_is_delivered() {
    let cluster = Cluster::start(
        ClusterOptions::default()
            .without_tls()
            .setting("wal_sender_timeout", "'5s'"),
    )
    .unwrap();
    let db = cluster.new_database().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE huge (id int PRIMARY KEY, n int)")
        .await
        .unwrap();
    let builder = db
        .config()
        .source("snapshot = \"never\"")
        .append("[[sinks]]\ntype = \"file\"\npath = \"out.jsonl\"");
    let slot = builder.slot_name().to_string();
    let config = builder.write().unwrap();
    let out = config.dir().join("out.jsonl");
    let mut child = walflow!("run", "-c", &config.path).spawn().unwrap();
    db.wait_for_slot(&slot, RUN_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));

    const ROWS: i64 = 2_000_000;
    client
        .batch_execute(&format!(
            "INSERT INTO huge SELECT g, g FROM generate_series(1, {ROWS}) g"
        ))
        .await
        .unwrap();
    // A few small transactions behind it, so the reader has more to hand over while the
    // delivery of the huge one is still running.
    for id in ROWS + 1..=ROWS + 20 {
        client
            .execute("INSERT INTO huge VALUES ($1::int8::int, 0)", &[&id])
            .await
            .unwrap();
    }
    let marker = db.emit_marker().await;
    db.wait_for_confirmed(&slot, &marker, Duration::from_secs(600))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));

    let log = std::fs::read_to_string(cluster.log_path()).unwrap();
    assert!(
        !log.contains("terminating walsender process due to replication timeout"),
        "the server timed walflow out while it delivered:\n{}",
        cluster.log_tail(30)
    );
    assert!(
        !child.stderr().contains("reconnect"),
        "walflow had to reconnect:\n{}",
        child.stderr()
    );
    let ids = ids_in(&out, "huge");
    assert_eq!(ids.len() as i64, ROWS + 20, "every row reached the sink");
    child.terminate();
    let output = child.wait_async(Duration::from_secs(30)).await.unwrap();
    assert!(output.status.success(), "{}", output.describe());
}

/// Message prefixes of the logical messages the file sink at `out` holds.
fn message_prefixes(out: &Path) -> Vec<String> {
    walflow_tests::replay::read_records(out)
        .iter()
        .filter_map(|r| r["value"]["message"]["prefix"].as_str().map(str::to_string))
        .collect()
}

/// `heartbeat = "message"` (the default kind) moves an otherwise idle server's WAL with
/// `pg_logical_emit_message`, so the slot follows the server with no table and no grants; the
/// heartbeats never reach the sink, while the application's own messages do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_heartbeats_move_an_idle_slot_and_are_never_delivered() {
    // A server of its own: nothing else writes WAL, so only heartbeats can move the slot.
    let cluster = Cluster::start(ClusterOptions::default().without_tls()).unwrap();
    let db = cluster.new_database().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE quiet (id int PRIMARY KEY)")
        .await
        .unwrap();
    let builder = db
        .config()
        .source("snapshot = \"never\"")
        .source("heartbeat_interval = \"1s\"")
        .append("[batch]\nmax_wait = \"20ms\"\n\n[[sinks]]\ntype = \"file\"\npath = \"out.jsonl\"");
    let slot = builder.slot_name().to_string();
    let config = builder.write().unwrap();
    let out = config.dir().join("out.jsonl");
    let mut child = walflow!("run", "-c", &config.path).spawn().unwrap();
    db.wait_for_slot(&slot, RUN_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    // A second slot sees what reaches the WAL, heartbeats included.
    client
        .batch_execute(
            "SELECT pg_create_logical_replication_slot('probe', 'test_decoding');
             INSERT INTO quiet VALUES (1);
             SELECT pg_logical_emit_message(true, 'app', 'hello');",
        )
        .await
        .unwrap();
    // Nothing more is written by the test: only heartbeats can be in the WAL from here.
    let beats = "SELECT lsn::text FROM pg_logical_slot_peek_changes('probe', NULL, NULL)
                 WHERE data LIKE 'message: transactional: 0 prefix: walflow_heartbeat%'";
    let second: String = walflow_tests::wait_for_async("two heartbeats", RUN_TIMEOUT, || async {
        let rows = client.query(beats, &[]).await.unwrap();
        rows.get(1).map(|r| r.get(0))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    db.wait_for_confirmed(&slot, &second, RUN_TIMEOUT)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "the slot did not follow the heartbeats: {e}\n{}",
                child.stderr()
            )
        });
    client
        .batch_execute("SELECT pg_drop_replication_slot('probe')")
        .await
        .unwrap();

    let table: Option<String> = client
        .query_one("SELECT to_regclass('walflow.walflow_heartbeat')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(table, None, "message heartbeats need no table");
    assert!(
        !child.stderr().contains("cannot write the heartbeat"),
        "{}",
        child.stderr()
    );
    assert_eq!(message_prefixes(&out), vec!["app".to_string()]);
    assert_eq!(ids_in(&out, "quiet"), BTreeSet::from([1]));
    child.terminate();
    let output = child.wait_async(Duration::from_secs(30)).await.unwrap();
    assert!(output.status.success(), "{}", output.describe());
}

/// The value of the sample `name` (with its labels, as exposed) on walflow's `/metrics`.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    let answer = walflow_tests::http::request(metrics, "GET", "/metrics", None, None).ok()?;
    answer
        .body
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// A transaction left open pins the slot's `restart_lsn` however far walflow confirms: the WAL
/// written meanwhile stays on the server. walflow reports the retained WAL, how much more the
/// server may write before the slot is lost (`safe_wal_size`) and `wal_status`, and warns once
/// the retained WAL passes `retained_wal_warn_mb` — and says so again when it is back under.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_wal_is_measured_and_warned_about_past_the_threshold() {
    let cluster = Cluster::start(
        ClusterOptions::default()
            .without_tls()
            .setting("max_slot_wal_keep_size", "'256MB'"),
    )
    .unwrap();
    let db = cluster.new_database().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE w (id int PRIMARY KEY, pad text)")
        .await
        .unwrap();
    let metrics = format!("127.0.0.1:{}", walflow_tests::ports::free_port());
    let builder = db
        .config()
        .source("snapshot = \"never\"")
        .source("retained_wal_warn_mb = 1")
        .append(&format!(
            "[metrics]\nlisten = \"{metrics}\"\n\n[[sinks]]\ntype = \"file\"\npath = \"out.jsonl\""
        ));
    let slot = builder.slot_name().to_string();
    let config = builder.write().unwrap();
    let mut child = walflow!("run", "-c", &config.path).spawn().unwrap();
    db.wait_for_slot(&slot, RUN_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));

    let holder = db.client().await;
    holder
        .batch_execute("BEGIN; INSERT INTO w VALUES (0, 'held open')")
        .await
        .unwrap();
    client
        .batch_execute(
            "INSERT INTO w SELECT g, repeat('x', 1000) FROM generate_series(1, 4000) g; CHECKPOINT",
        )
        .await
        .unwrap();
    let over = "walflow_slot_retained_wal_over_threshold";
    walflow_tests::wait_for_async("the retained-wal warning", RUN_TIMEOUT, || async {
        (sample(&metrics, over) == Some(1.0)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    let retained = sample(&metrics, "walflow_slot_retained_wal_bytes").unwrap();
    assert!(retained > 4e6, "4 MB of rows are retained: {retained}");
    let safe = sample(&metrics, "walflow_slot_safe_wal_size_bytes").unwrap();
    assert!(
        safe > 0.0 && safe < 300.0 * 1024.0 * 1024.0,
        "safe_wal_size is about what max_slot_wal_keep_size (256MB, counted in whole segments) leaves: {safe}"
    );
    assert_eq!(
        sample(&metrics, "walflow_slot_wal_status{status=\"reserved\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "walflow_slot_retained_wal_threshold_bytes"),
        Some(1048576.0)
    );
    assert!(
        child
            .stderr()
            .contains("the slot retains more wal than retained_wal_warn_mb"),
        "{}",
        child.stderr()
    );

    // Once the transaction ends and walflow confirms past it, the server lets the WAL go.
    holder.batch_execute("COMMIT").await.unwrap();
    let marker = db.emit_marker().await;
    db.wait_for_confirmed(&slot, &marker, RUN_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    walflow_tests::wait_for_async("the slot to let the WAL go", RUN_TIMEOUT, || async {
        client.batch_execute("CHECKPOINT").await.unwrap();
        (sample(&metrics, over) == Some(0.0)).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    assert!(
        child.stderr().contains("back under retained_wal_warn_mb"),
        "{}",
        child.stderr()
    );
    child.terminate();
    let output = child.wait_async(Duration::from_secs(30)).await.unwrap();
    assert!(output.status.success(), "{}", output.describe());
}
