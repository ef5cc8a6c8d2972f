//! Failover slots and standbys, against PostgreSQL 18's complete toolset (pg_basebackup for the
//! standby; the npm builds ship only the server): a promoted standby continues the failover
//! slot where walflow stopped, and a 16+ standby decodes with heartbeats written on the
//! primary.

use std::time::Duration;

use walflow_tests::{Cluster, ClusterOptions, TestDb, replay, wait_for_async, walflow};

const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// A superuser client of database `db` on the server at `port`.
async fn client_at(port: u16, db: &str) -> tokio_postgres::Client {
    let conninfo = format!("host=127.0.0.1 port={port} user=postgres dbname={db}");
    wait_for_async("the server to accept connections", RUN_TIMEOUT, || async {
        walflow_tests::cluster::connect(&conninfo).await.ok()
    })
    .await
    .unwrap()
}

/// A primary of PostgreSQL 18 whose logical walsenders wait for the physical slot `standby1`,
/// and a streaming standby on that slot that syncs failover slots and sends feedback.
async fn primary_and_standby() -> (Cluster, Cluster) {
    let bin = walflow_tests::installs::pg18_full_bin();
    let primary = tokio::task::spawn_blocking(move || {
        Cluster::start(ClusterOptions::default().bin_dir(bin).without_tls())
    })
    .await
    .unwrap()
    .unwrap();
    each(
        &client_at(primary.port(), "postgres").await,
        &[
            "SELECT pg_create_physical_replication_slot('standby1')",
            "ALTER SYSTEM SET synchronized_standby_slots = 'standby1'",
            "SELECT pg_reload_conf()",
        ],
    )
    .await;
    let info = primary.info().clone();
    let standby = tokio::task::spawn_blocking(move || Cluster::start_standby(&info))
        .await
        .unwrap()
        .unwrap();
    let conninfo = format!(
        "ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port={} user=postgres dbname=postgres'",
        primary.port()
    );
    each(
        &client_at(standby.port(), "postgres").await,
        &[
            "ALTER SYSTEM SET primary_slot_name = 'standby1'",
            "ALTER SYSTEM SET hot_standby_feedback = on",
            "ALTER SYSTEM SET sync_replication_slots = on",
            // The base backup copied the primary's setting; once promoted, this server has no
            // standby of its own to wait for.
            "ALTER SYSTEM RESET synchronized_standby_slots",
            &conninfo,
            "SELECT pg_reload_conf()",
        ],
    )
    .await;
    (primary, standby)
}

/// Runs each statement on its own (ALTER SYSTEM refuses a transaction block).
async fn each(client: &tokio_postgres::Client, statements: &[&str]) {
    for sql in statements {
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

async fn insert(client: &tokio_postgres::Client, ids: std::ops::RangeInclusive<i32>) {
    for id in ids {
        client
            .execute("INSERT INTO t VALUES ($1::int, 'row ' || $1::int)", &[&id])
            .await
            .unwrap();
    }
}

/// Whether `slot` on the server of `client` has confirmed `lsn` (and, with `synced`, is a
/// slot the standby synced from the primary).
async fn slot_at(client: &tokio_postgres::Client, slot: &str, lsn: &str, synced: bool) -> bool {
    let sql = if synced {
        "SELECT confirmed_flush_lsn >= $2::text::pg_lsn AND synced AND failover
           FROM pg_replication_slots WHERE slot_name = $1"
    } else {
        "SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1"
    };
    client
        .query_opt(sql, &[&slot, &lsn])
        .await
        .ok()
        .flatten()
        .and_then(|r| r.get::<_, Option<bool>>(0))
        .unwrap_or(false)
}

async fn mark(client: &tokio_postgres::Client) -> String {
    client
        .query_one(
            "SELECT pg_logical_emit_message(true, 'test', 'mark')::text",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

/// `failover = true` with a multi-host URL and `target_session_attrs=read-write`: the primary
/// goes away while changes stream, the standby is promoted, and walflow continues on it from
/// the synced slot — the continuity check accepts it as the same history — with every row
/// delivered and the sink rebuilding the table exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_promoted_standby_continues_the_failover_slot_with_nothing_lost() {
    let (primary, standby) = primary_and_standby().await;
    let db: TestDb = primary.new_database().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, note text)")
        .await
        .unwrap();
    let builder = db
        .config()
        .also_host("127.0.0.1", standby.port())
        .url_query("target_session_attrs=read-write")
        .source("failover = true")
        .source("snapshot = \"never\"")
        .append("[batch]\nmax_wait = \"20ms\"\n\n[[sinks]]\ntype = \"file\"\npath = \"out.jsonl\"");
    let slot = builder.slot_name().to_string();
    let config = builder.write().unwrap();
    let out = config.dir().join("out.jsonl");
    let mut child = walflow!("run", "-c", &config.path).spawn().unwrap();
    db.wait_for_slot(&slot, RUN_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));

    insert(&client, 1..=100).await;
    let before = mark(&client).await;
    db.wait_for_confirmed(&slot, &before, RUN_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    // The standby's copy of the slot catches up with what walflow confirmed.
    let on_standby = client_at(standby.port(), db.name()).await;
    wait_for_async("the standby to sync the slot", RUN_TIMEOUT, || async {
        slot_at(&on_standby, &slot, &before, true)
            .await
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));

    // More rows the old primary streams while it goes away.
    insert(&client, 101..=150).await;
    drop(client);
    tokio::task::spawn_blocking(move || primary.stop())
        .await
        .unwrap();
    on_standby
        .batch_execute("SELECT pg_promote(true, 60)")
        .await
        .unwrap();
    let promoted = client_at(standby.port(), db.name()).await;
    // Rows the old primary had committed but not sent reach the standby only if it had them;
    // the table on the promoted standby is the truth from here on.
    insert(&promoted, 151..=200).await;
    let after = mark(&promoted).await;
    wait_for_async(
        "walflow to continue on the promoted standby",
        RUN_TIMEOUT,
        || async { slot_at(&promoted, &slot, &after, false).await.then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));

    assert!(child.is_running(), "walflow exited:\n{}", child.stderr());
    let records = replay::read_records(&out);
    replay::assert_rebuilds(&promoted, &records, &[("t", &[])]).await;
    let ids = replay::replay(&records)
        .get("t")
        .map(|rows| rows.len())
        .unwrap_or_default();
    assert!(
        ids >= 150,
        "the rows written after the promotion arrived too: {ids}"
    );
    child.terminate();
    let output = child.wait_async(Duration::from_secs(30)).await.unwrap();
    assert!(output.status.success(), "{}", output.describe());
}
