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
    // What the primary shows of the failover setup is right (once the standby's feedback has
    // arrived); the standby's side is named.
    wait_for_async("check to see the failover standby", RUN_TIMEOUT, || async {
        let check = walflow!("check", "-c", &config.path)
            .output_async(RUN_TIMEOUT)
            .await
            .unwrap();
        (check.stdout.contains("ok    failover standby")
            && check.stdout.contains("sync_replication_slots = on"))
        .then_some(())
    })
    .await
    .unwrap();
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
    // The promoted server has no standby of its own yet: check says its slot would not survive
    // the next failover.
    let check = walflow!("check", "-c", &config.path)
        .output_async(RUN_TIMEOUT)
        .await
        .unwrap();
    assert!(
        check.stdout.contains("FAIL  failover standby")
            && check.stdout.contains("synchronized_standby_slots is empty"),
        "{}",
        check.describe()
    );
    child.terminate();
    let output = child.wait_async(Duration::from_secs(30)).await.unwrap();
    assert!(output.status.success(), "{}", output.describe());
}

/// Decoding from a standby (PostgreSQL 16+): `walflow check` says the standby can decode, the
/// slot lives on the standby, changes written on the primary arrive through it, and heartbeats
/// go to the primary named by `heartbeat_url` (a standby cannot be written to) and reach the
/// standby's slot through replication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_decodes_with_heartbeats_written_on_the_primary() {
    let (primary, standby) = primary_and_standby().await;
    let db: TestDb = primary.new_database().await;
    let client = db.client().await;
    let publication = format!("{}_pub", db.name());
    client
        .batch_execute(&format!(
            "CREATE TABLE t (id int PRIMARY KEY, note text);
             CREATE PUBLICATION \"{publication}\" FOR TABLE t;"
        ))
        .await
        .unwrap();
    let heartbeat_url = format!(
        "postgres://postgres@127.0.0.1:{}/{}",
        primary.port(),
        db.name()
    );
    let builder = db
        .config()
        .port(standby.port())
        .source("publication_autocreate = \"disabled\"")
        .source("snapshot = \"never\"")
        .source("heartbeat_interval = \"1s\"")
        .source(&format!("heartbeat_url = \"{heartbeat_url}\""))
        .append("[batch]\nmax_wait = \"20ms\"\n\n[[sinks]]\ntype = \"file\"\npath = \"out.jsonl\"");
    let slot = builder.slot_name().to_string();
    let config = builder.write().unwrap();
    let out = config.dir().join("out.jsonl");
    let on_standby = client_at(standby.port(), db.name()).await;

    // Without feedback the primary may remove rows decoding needs: check tells the two apart.
    let check_with = |feedback: &'static str| {
        let (on_standby, path) = (&on_standby, &config.path);
        async move {
            each(
                on_standby,
                &[
                    &format!("ALTER SYSTEM SET hot_standby_feedback = {feedback}"),
                    "SELECT pg_reload_conf()",
                ],
            )
            .await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            walflow!("check", "-c", path)
                .output_async(RUN_TIMEOUT)
                .await
                .unwrap()
        }
    };
    let cannot = check_with("off").await;
    assert!(
        cannot.stdout.contains("FAIL  standby decoding")
            && cannot.stdout.contains("hot_standby_feedback off"),
        "{}",
        cannot.describe()
    );
    let check = check_with("on").await;
    assert!(
        check.stdout.contains("the standby can decode"),
        "{}",
        check.describe()
    );

    let mut child = walflow!("run", "-c", &config.path).spawn().unwrap();
    // A slot on a standby is ready once the primary logs a snapshot of its running
    // transactions; ask for one instead of waiting for the next.
    wait_for_async(
        "walflow to create its slot on the standby",
        RUN_TIMEOUT,
        || async {
            client
                .batch_execute("SELECT pg_log_standby_snapshot()")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(200)).await;
            slot_at(&on_standby, &slot, "0/0", false)
                .await
                .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));

    insert(&client, 1..=50).await;
    let marker = mark(&client).await;
    wait_for_async(
        "the standby's slot to pass the rows",
        RUN_TIMEOUT,
        || async {
            slot_at(&on_standby, &slot, &marker, false)
                .await
                .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    let records = replay::read_records(&out);
    replay::assert_rebuilds(&client, &records, &[("t", &[])]).await;

    // Heartbeats: messages of walflow's prefix in the primary's WAL, never in the sink.
    let beats = format!(
        "SELECT count(*) FROM pg_logical_slot_peek_binary_changes('probe', NULL, NULL,
            'proto_version', '1', 'publication_names', '{publication}', 'messages', 'true')
          WHERE position('walflow_heartbeat'::bytea IN data) > 0"
    );
    client
        .batch_execute("SELECT pg_create_logical_replication_slot('probe', 'pgoutput')")
        .await
        .unwrap();
    wait_for_async("heartbeats on the primary", RUN_TIMEOUT, || async {
        let n: i64 = client.query_one(&beats, &[]).await.unwrap().get(0);
        (n >= 2).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    client
        .batch_execute("SELECT pg_drop_replication_slot('probe')")
        .await
        .unwrap();
    assert!(
        !child.stderr().contains("cannot write the heartbeat"),
        "{}",
        child.stderr()
    );
    assert!(
        replay::read_records(&out)
            .iter()
            .all(|r| r["value"]["message"]["prefix"] != "walflow_heartbeat"),
        "a heartbeat reached the sink"
    );
    child.terminate();
    let output = child.wait_async(Duration::from_secs(30)).await.unwrap();
    assert!(output.status.success(), "{}", output.describe());
}

/// `failover = true` on PostgreSQL 15: one sentence, a non-zero exit, no slot and no
/// checkpoint; `walflow check` says the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_on_a_server_older_than_17_is_refused_in_one_sentence() {
    let db = Cluster::shared().new_database().await;
    let builder = db
        .config()
        .source("failover = true")
        .append("[[sinks]]\ntype = \"stdout\"");
    let slot = builder.slot_name().to_string();
    let config = builder.write().unwrap();
    let run = walflow!("run", "-c", &config.path)
        .output_async(RUN_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(run.code(), Some(1), "{}", run.describe());
    assert!(
        run.stderr
            .contains("failover = true needs a primary running PostgreSQL 17 or newer"),
        "{}",
        run.describe()
    );
    assert!(
        db.slot_confirmed(&slot).await.is_none(),
        "a slot was created"
    );
    let state = config.dir().join("state");
    let files = std::fs::read_dir(&state).map(|d| d.count()).unwrap_or(0);
    assert_eq!(files, 0, "a checkpoint was written in {}", state.display());
    let check = walflow!("check", "-c", &config.path)
        .output_async(RUN_TIMEOUT)
        .await
        .unwrap();
    assert!(
        check.stdout.contains("FAIL  failover slot"),
        "{}",
        check.describe()
    );
}
