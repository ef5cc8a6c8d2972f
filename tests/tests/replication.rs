//! The replication connection against real PostgreSQL servers: every auth method and sslmode,
//! every pgoutput message produced by real SQL, typed values equal to what SELECT returns,
//! resume after a clean stop and after kill -9, the continuity check's refusals, and the same
//! replication test over every installed PostgreSQL major.

#[path = "replication/support.rs"]
mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use support::*;
use walflow::config::SslMode;
use walflow::event::{Op, Value};
use walflow::pg::ConnectError;
use walflow::pg::conn::Connection;
use walflow::replication::StreamOptions;
use walflow_tests::{Cluster, ClusterOptions, TestUser, WRONG_HOST, pg_installs, walflow};

// ---- connecting --------------------------------------------------------------------------

#[tokio::test]
async fn every_auth_method_over_plain_and_tls() {
    let db = Cluster::shared().new_database().await;
    for user in [
        TestUser::Trust,
        TestUser::Md5,
        TestUser::Scram,
        TestUser::Password,
    ] {
        for mode in [
            SslMode::Disable,
            SslMode::Prefer,
            SslMode::Require,
            SslMode::VerifyFull,
        ] {
            let opts = options(&db, user, mode, "127.0.0.1");
            let mut conn = Connection::connect(&opts, true)
                .await
                .unwrap_or_else(|e| panic!("{} with {mode:?}: {e}", user.name()));
            assert_eq!(conn.is_tls(), mode != SslMode::Disable, "{mode:?}");
            let system = conn.identify_system().await.unwrap();
            assert_eq!(system.dbname, db.name());
            assert!(system.system_id > 0 && !system.xlogpos.is_zero());
            conn.close().await;
            // The same connection as a plain session (the snapshot's COPY readers).
            let mut session = Connection::connect(&opts, false)
                .await
                .unwrap_or_else(|e| panic!("session {} with {mode:?}: {e}", user.name()));
            let rows = session.simple_query("SELECT current_user").await.unwrap();
            assert_eq!(rows, [vec![Some(user.name().to_string())]]);
            session.close().await;
            let client = walflow::pg::sql::connect_sql_with(&opts)
                .await
                .unwrap_or_else(|e| panic!("sql {} with {mode:?}: {e}", user.name()));
            let who: String = client
                .query_one("SELECT current_user::text", &[])
                .await
                .unwrap()
                .get(0);
            assert_eq!(who, user.name());
        }
    }
}

#[tokio::test]
async fn scram_channel_binding_and_tls_only_role() {
    let db = Cluster::shared().new_database().await;
    // The server offers SCRAM-SHA-256-PLUS over TLS; a wrong end-point hash would fail the login.
    for mode in [SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
        let opts = options(&db, TestUser::TlsOnly, mode, "127.0.0.1");
        let mut conn = Connection::connect(&opts, true)
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        assert!(conn.is_tls());
        let ssl = conn
            .query_scalar("SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .await
            .unwrap();
        assert_eq!(ssl.as_deref(), Some("true"));
        conn.close().await;
    }
}

#[tokio::test]
async fn verify_full_refuses_a_wrong_host_name_and_verify_ca_does_not() {
    let db = Cluster::shared().new_database().await;
    let err = Connection::connect(
        &options(&db, TestUser::Scram, SslMode::VerifyFull, WRONG_HOST),
        true,
    )
    .await
    .err()
    .expect("verify-full must fail on a name the certificate does not list");
    let text = err.to_string();
    assert!(matches!(err, ConnectError::Tls { .. }), "{text}");
    assert!(
        text.contains("not valid for the host name \"127.0.0.2\""),
        "{text}"
    );
    assert!(!err.is_retryable());
    let sql_err = walflow::pg::sql::connect_sql_with(&options(
        &db,
        TestUser::Scram,
        SslMode::VerifyFull,
        WRONG_HOST,
    ))
    .await
    .expect_err("sql connection must fail the same way");
    assert!(
        sql_err.to_string().contains("not valid for the host name"),
        "{sql_err}"
    );
    Connection::connect(
        &options(&db, TestUser::Scram, SslMode::VerifyCa, WRONG_HOST),
        true,
    )
    .await
    .expect("verify-ca checks the chain only");

    // Through the CLI: one clear line, non-zero exit.
    let config = db
        .config()
        .user(TestUser::Scram)
        .host(WRONG_HOST)
        .sslmode("verify-full")
        .sslrootcert(db.cluster().ca_cert().unwrap())
        .write()
        .unwrap();
    let out = walflow!("tail", "-c", &config.path)
        .output(Duration::from_secs(30))
        .unwrap();
    assert_ne!(out.code(), Some(0), "{}", out.describe());
    assert!(
        out.stderr.contains("not valid for the host name"),
        "{}",
        out.describe()
    );
}

#[tokio::test]
async fn bad_credentials_and_addresses_get_clear_classified_errors() {
    let db = Cluster::shared().new_database().await;
    let mut opts = options(&db, TestUser::Scram, SslMode::Disable, "127.0.0.1");
    opts.password = Some("wrong".into());
    let e = Connection::connect(&opts, true).await.err().unwrap();
    assert!(matches!(e, ConnectError::AuthFailed { .. }), "{e}");
    assert!(e.to_string().contains("password_env"), "{e}");
    assert!(!e.is_retryable());

    opts.password = None;
    let e = Connection::connect(&opts, true).await.err().unwrap();
    assert!(matches!(e, ConnectError::PasswordMissing { .. }), "{e}");

    let mut opts = options(&db, TestUser::Trust, SslMode::Disable, "127.0.0.1");
    opts.dbname = "no_such_db_here".into();
    let e = Connection::connect(&opts, true).await.err().unwrap();
    assert!(matches!(e, ConnectError::NoSuchDatabase(_)), "{e}");

    let mut opts = options(&db, TestUser::Trust, SslMode::Disable, "127.0.0.1");
    opts.port = free_port();
    let e = Connection::connect(&opts, true).await.err().unwrap();
    assert!(matches!(e, ConnectError::Unreachable { .. }), "{e}");
    assert!(e.is_retryable());

    // A role without REPLICATION.
    let client = db.client().await;
    client
        .batch_execute("DO $$ BEGIN CREATE ROLE walflow_norepl LOGIN PASSWORD 'walflow-test-secret'; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        .await
        .unwrap();
    let mut opts = options(&db, TestUser::Trust, SslMode::Disable, "127.0.0.1");
    opts.user = "walflow_norepl".into();
    opts.password = Some(walflow_tests::TEST_PASSWORD.into());
    let e = Connection::connect(&opts, true).await.err().unwrap();
    assert!(
        matches!(e, ConnectError::NoReplicationPrivilege { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("WITH REPLICATION"), "{e}");
}

// ---- every message type ------------------------------------------------------------------

#[tokio::test]
async fn inserts_updates_deletes_under_default_and_full_identity() {
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE d (id int PRIMARY KEY, v text, n int);
             CREATE TABLE f (id int PRIMARY KEY, v text, n int);
             ALTER TABLE f REPLICA IDENTITY FULL;",
        )
        .await
        .unwrap();
    let mut stream = open_stream(&db, "s_dml").await;
    steps(
        &client,
        "BEGIN;
             INSERT INTO d VALUES (1, 'a', 10), (2, 'b', 20), (3, 'c', 30);
             INSERT INTO f VALUES (1, 'a', 10), (2, 'b', 20);
             COMMIT;
             UPDATE d SET v = 'A' WHERE id = 1;
             UPDATE d SET id = 4 WHERE id = 3;
             UPDATE f SET v = 'A' WHERE id = 1;
             DELETE FROM d WHERE id = 2;
             DELETE FROM f WHERE id = 2;",
    )
    .await;
    let until = current_lsn(&client).await;
    let txns = collect_until(&mut stream, until).await;
    assert_eq!(txns.len(), 6, "{txns:#?}");
    let first = &txns[0];
    assert_eq!(first.events.len(), 5);
    assert!(first.events.iter().all(|e| e.op == Op::Create));
    assert_eq!(
        first.events[0].after.as_ref().unwrap()[1],
        Value::Text("a".into())
    );
    assert_eq!(first.events[0].relation.table, "d");
    assert!(first.events.iter().all(|e| e.source.xid == first.xid));

    let upd = &txns[1].events[0];
    assert_eq!(upd.op, Op::Update);
    assert!(
        upd.before.is_none(),
        "DEFAULT identity, key unchanged: no old row"
    );
    assert_eq!(upd.after.as_ref().unwrap()[1], Value::Text("A".into()));

    let key_change = &txns[2].events[0];
    assert_eq!(key_change.op, Op::Update);
    assert_eq!(
        key_change.before.as_ref().unwrap()[0],
        Value::Int(3),
        "old key sent on key change"
    );
    assert_eq!(key_change.after.as_ref().unwrap()[0], Value::Int(4));

    let full = &txns[3].events[0];
    assert_eq!(full.relation.table, "f");
    assert_eq!(
        full.before.as_ref().unwrap(),
        &vec![Value::Int(1), Value::Text("a".into()), Value::Int(10)],
        "FULL identity sends the whole old row"
    );

    let del = &txns[4].events[0];
    assert_eq!(del.op, Op::Delete);
    assert_eq!(del.before.as_ref().unwrap()[0], Value::Int(2));
    assert_eq!(del.key(), vec![("id", &Value::Int(2))]);

    let del_full = &txns[5].events[0];
    assert_eq!(
        del_full.before.as_ref().unwrap(),
        &vec![Value::Int(2), Value::Text("b".into()), Value::Int(20)]
    );
    // Commit order and LSNs grow.
    assert!(txns.windows(2).all(|w| w[0].end_lsn < w[1].end_lsn));
    stream.stop().await.unwrap();
}

/// A publication name with a backslash and a double quote reaches START_REPLICATION intact:
/// the walsender's own grammar knows `'…'` strings only (no `E'…'`) and takes backslashes
/// literally.
#[tokio::test]
async fn a_publication_named_with_a_backslash_and_a_quote_streams() {
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE t (id bigint PRIMARY KEY)")
        .await
        .unwrap();
    let mut src = source(&db, "s_odd_pub");
    src.publication = "odd\\pub \"x\"".into();
    let options = StreamOptions::for_source(&src);
    let mut stream = walflow::replication::ReplicationStream::open(&src, None, options)
        .await
        .unwrap_or_else(|e| panic!("open a stream on publication {}: {e}", src.publication));
    steps(&client, "INSERT INTO t VALUES (1), (2)").await;
    let until = current_lsn(&client).await;
    let txns = collect_until(&mut stream, until).await;
    assert_eq!(inserted_ids(&txns), [1, 2]);
    stream.stop().await.unwrap();
}

#[tokio::test]
async fn truncate_of_several_tables_and_cascade() {
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE a (id int PRIMARY KEY);
             CREATE TABLE b (id int PRIMARY KEY);
             CREATE TABLE parent (id int PRIMARY KEY);
             CREATE TABLE child (id int PRIMARY KEY, p int REFERENCES parent(id));
             INSERT INTO a VALUES (1); INSERT INTO b VALUES (1);
             INSERT INTO parent VALUES (1); INSERT INTO child VALUES (1, 1);",
        )
        .await
        .unwrap();
    let mut stream = open_stream(&db, "s_trunc").await;
    steps(&client, "TRUNCATE a, b; TRUNCATE parent CASCADE;").await;
    let until = current_lsn(&client).await;
    let txns = collect_until(&mut stream, until).await;
    let truncated: Vec<Vec<String>> = txns
        .iter()
        .map(|t| {
            let mut names: Vec<String> = t
                .events
                .iter()
                .filter(|e| e.op == Op::Truncate)
                .map(|e| e.relation.table.clone())
                .collect();
            names.sort();
            names
        })
        .collect();
    assert_eq!(
        truncated,
        vec![vec!["a", "b"], vec!["child", "parent"]],
        "{txns:#?}"
    );
}

#[tokio::test]
async fn logical_messages_transactional_and_not() {
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    let mut stream = open_stream(&db, "s_msg").await;
    steps(
        &client,
        "SELECT pg_logical_emit_message(false, 'walflow', 'now');
             BEGIN; SELECT pg_logical_emit_message(true, 'walflow', 'in txn'); COMMIT;
             BEGIN; SELECT pg_logical_emit_message(true, 'walflow', 'rolled back'); ROLLBACK;",
    )
    .await;
    let until = current_lsn(&client).await;
    let txns = collect_until(&mut stream, until).await;
    let messages: Vec<(bool, String)> = txns
        .iter()
        .flat_map(|t| t.events.iter())
        .filter(|e| e.op == Op::Message)
        .map(|e| {
            let m = e.message.as_ref().unwrap();
            assert_eq!(m.prefix, "walflow");
            (
                m.transactional,
                String::from_utf8(m.content.clone()).unwrap(),
            )
        })
        .collect();
    assert_eq!(
        messages,
        vec![(false, "now".to_string()), (true, "in txn".to_string())]
    );
}

#[tokio::test]
async fn unchanged_toast_is_distinguished_from_null() {
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE big (id int PRIMARY KEY, n int, blob text, empty text);
             ALTER TABLE big ALTER COLUMN blob SET STORAGE EXTERNAL;
             INSERT INTO big VALUES (1, 0, repeat('x', 100000), NULL);",
        )
        .await
        .unwrap();
    let mut stream = open_stream(&db, "s_toast").await;
    client
        .batch_execute("UPDATE big SET n = 1 WHERE id = 1")
        .await
        .unwrap();
    let until = current_lsn(&client).await;
    let txns = collect_until(&mut stream, until).await;
    let after = txns[0].events[0].after.clone().unwrap();
    assert_eq!(after[1], Value::Int(1));
    assert_eq!(after[2], Value::UnchangedToast);
    assert_eq!(after[3], Value::Null);
}

#[tokio::test]
async fn two_phase_commit_and_rollback() {
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE tp (id int PRIMARY KEY)")
        .await
        .unwrap();
    let mut stream = open_stream(&db, "s_2pc").await;
    let gid_ok = format!("ok_{}", db.name());
    let gid_no = format!("no_{}", db.name());
    steps(
        &client,
        &format!(
            "BEGIN; INSERT INTO tp VALUES (1); PREPARE TRANSACTION '{gid_ok}';
             BEGIN; INSERT INTO tp VALUES (2); PREPARE TRANSACTION '{gid_no}';
             INSERT INTO tp VALUES (3);
             COMMIT PREPARED '{gid_ok}';
             ROLLBACK PREPARED '{gid_no}';"
        ),
    )
    .await;
    let until = current_lsn(&client).await;
    let txns = collect_until(&mut stream, until).await;
    let ids: Vec<i64> = inserted_ids(&txns);
    assert_eq!(ids, vec![3, 1], "{txns:#?}");
    if stream.protocol_version() >= 3 {
        let prepared = txns.iter().find(|t| t.gid.is_some()).expect("two_phase on");
        assert_eq!(prepared.gid.as_deref(), Some(gid_ok.as_str()));
    }
}

#[tokio::test]
async fn large_streamed_transactions_and_aborts_are_never_emitted() {
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE s (id int PRIMARY KEY, pad text)")
        .await
        .unwrap();
    let mut stream = open_stream(&db, "s_stream").await;
    steps(
        &client,
        "BEGIN;
             INSERT INTO s SELECT g, repeat('p', 100) FROM generate_series(1, 5000) g;
             SAVEPOINT sp;
             INSERT INTO s SELECT g, 'sub' FROM generate_series(100001, 102000) g;
             ROLLBACK TO SAVEPOINT sp;
             INSERT INTO s SELECT g, 'after' FROM generate_series(5001, 6000) g;
             COMMIT;
             BEGIN;
             INSERT INTO s SELECT g, repeat('q', 100) FROM generate_series(200001, 205000) g;
             ROLLBACK;
             INSERT INTO s VALUES (7000, 'last');",
    )
    .await;
    let until = current_lsn(&client).await;
    let txns = collect_until(&mut stream, until).await;
    let ids = inserted_ids(&txns);
    let expected: Vec<i64> = (1..=6000).chain(std::iter::once(7000)).collect();
    assert_eq!(ids.len(), expected.len());
    assert_eq!(
        ids, expected,
        "aborted (sub)transactions must never be emitted"
    );
    if stream.protocol_version() >= 2 {
        let streamed: i64 = client
            .query_one(
                "SELECT coalesce(sum(stream_txns), 0)::int8 FROM pg_stat_replication_slots WHERE slot_name = 's_stream'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(
            streamed >= 1,
            "the big transaction should have been streamed in progress"
        );
    }
}

// ---- typed values ------------------------------------------------------------------------

#[tokio::test]
async fn every_type_round_trips_equal_to_select() {
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    client.batch_execute(TYPES_DDL).await.unwrap();
    let mut stream = open_stream(&db, "s_types").await;
    client.batch_execute(TYPES_ROWS).await.unwrap();
    let until = current_lsn(&client).await;
    let txns = collect_until(&mut stream, until).await;
    let events: Vec<_> = txns.iter().flat_map(|t| t.events.iter()).collect();
    let rows = client
        .simple_query("SELECT * FROM typed ORDER BY id")
        .await
        .unwrap();
    let selected: Vec<_> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(events.len(), selected.len());
    let registry = stream_registry(&db).await;
    for (event, row) in events.iter().zip(&selected) {
        let after = event.after.as_ref().unwrap();
        for (i, column) in event.relation.columns.iter().enumerate() {
            let expected = match row.get(i) {
                None => Value::Null,
                Some(text) => registry.decode_text(column.type_oid, text),
            };
            assert_eq!(
                format!("{:?}", after[i]),
                format!("{expected:?}"),
                "column {} ({}) of row {:?}",
                column.name,
                column.type_name,
                row.get(0)
            );
            if row.get(i).is_some() {
                assert!(
                    !matches!(after[i], Value::Raw { .. })
                        || RAW_OK.contains(&column.type_name.as_str()),
                    "column {} ({}) should be typed, got {:?}",
                    column.name,
                    column.type_name,
                    after[i]
                );
            }
        }
    }
    // Spot checks that do not go through the same codec.
    let first = events[0].after.as_ref().unwrap();
    let col = |name: &str| events[0].relation.column_index(name).unwrap();
    assert_eq!(first[col("b")], Value::Bool(true));
    assert_eq!(first[col("i8")], Value::Int(9_007_199_254_740_993));
    assert_eq!(first[col("ba")], Value::Bytes(vec![0xde, 0xad, 0xbe, 0xef]));
    assert_eq!(
        first[col("num")],
        Value::Numeric("12345678901234567890.000000000001".into())
    );
    let nan = events[1].after.as_ref().unwrap();
    assert!(matches!(nan[col("f8")], Value::Float(f) if f.is_nan()));
    assert_eq!(nan[col("f4")], Value::Float(f64::INFINITY));
    assert_eq!(nan[col("num")], Value::Numeric("NaN".into()));
    assert_eq!(first[col("mood")], Value::Text("happy".into()));
}

// ---- resume --------------------------------------------------------------------------------

#[tokio::test]
async fn tail_confirm_resumes_after_stop_and_after_kill_9() {
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE r (id int PRIMARY KEY)")
        .await
        .unwrap();
    // A SCRAM role with REPLICATION but no CREATE: the publication is made by the owner.
    let builder = db.config().user(TestUser::Scram).slot("s_resume");
    client
        .batch_execute(&format!(
            "CREATE PUBLICATION \"{}\" FOR ALL TABLES; GRANT SELECT ON r TO walflow_scram",
            builder.publication_name()
        ))
        .await
        .unwrap();
    let config = builder.write().unwrap();
    let mut seen: Vec<i64> = Vec::new();

    // Run 1: a clean stop (SIGTERM) after some changes.
    let mut child = walflow!("tail", "--confirm", "-c", &config.path)
        .spawn()
        .unwrap();
    wait_streaming(&mut child).await;
    insert_batches(&client, 0, 20, 10).await;
    wait_lines(&child, 200).await;
    child.terminate();
    let out = child.wait(Duration::from_secs(30)).unwrap();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    seen.extend(ids_of(&out.stdout));

    // Changes while nothing runs.
    insert_batches(&client, 200, 10, 10).await;

    // Run 2: kill -9 in the middle of a stream of changes.
    let mut child = walflow!("tail", "--confirm", "-c", &config.path)
        .spawn()
        .unwrap();
    wait_streaming(&mut child).await;
    let writer = {
        let client = db.client().await;
        tokio::spawn(async move { insert_batches(&client, 300, 100, 10).await })
    };
    wait_lines(&child, 400).await;
    child.kill9();
    let killed_output = child.stdout();
    writer.await.unwrap();
    seen.extend(ids_of(&killed_output));

    // Run 3: catch up to the end.
    let until = current_lsn(&client).await;
    let out = walflow!(
        "tail",
        "--confirm",
        "-c",
        &config.path,
        "--until-lsn",
        walflow::event::format_lsn(until)
    )
    .output(Duration::from_secs(60))
    .unwrap();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    seen.extend(ids_of(&out.stdout));

    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for id in &seen {
        *counts.entry(*id).or_default() += 1;
    }
    let missing: Vec<i64> = (0..1300).filter(|i| !counts.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "committed changes missing after resume: {missing:?}"
    );
    let duplicates: usize = counts.values().map(|c| c - 1).sum();
    // Only what was printed after the last confirmation before kill -9 may repeat: at most
    // what run 2 printed.
    assert!(
        duplicates <= ids_of(&killed_output).len(),
        "{duplicates} duplicates exceed what was unacknowledged"
    );
    assert_eq!(counts.len(), 1300);
}

// ---- continuity --------------------------------------------------------------------------

#[tokio::test]
async fn continuity_failures_are_refused_with_their_message() {
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE c (id int PRIMARY KEY)")
        .await
        .unwrap();
    let config = db
        .config()
        .user(TestUser::Superuser)
        .slot("s_cont")
        .write()
        .unwrap();
    let tail_once = |extra: &[&str]| {
        let until = std::process::Command::new("psql")
            .args([
                "-X",
                "-A",
                "-t",
                "-d",
                &db.conninfo(TestUser::Superuser),
                "-c",
                "SELECT pg_current_wal_lsn()",
            ])
            .output()
            .unwrap();
        let until = String::from_utf8_lossy(&until.stdout).trim().to_string();
        let mut cmd = walflow!(
            "tail",
            "--confirm",
            "-c",
            &config.path,
            "--until-lsn",
            until
        );
        for a in extra {
            cmd = cmd.arg(*a);
        }
        cmd.output(Duration::from_secs(60)).unwrap()
    };
    // A first run creates the slot and a checkpoint.
    client
        .batch_execute("INSERT INTO c VALUES (1)")
        .await
        .unwrap();
    let out = tail_once(&[]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());

    // Someone else advanced the slot past our checkpoint.
    client
        .batch_execute("INSERT INTO c VALUES (2)")
        .await
        .unwrap();
    client
        .batch_execute("SELECT pg_replication_slot_advance('s_cont', pg_current_wal_lsn())")
        .await
        .unwrap();
    let out = tail_once(&[]);
    assert_ne!(out.code(), Some(0), "{}", out.describe());
    assert!(
        out.stderr.contains("beyond the checkpoint")
            || out.stderr.contains("dropped and created again"),
        "{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("bytes of history"),
        "{}",
        out.describe()
    );
    assert!(out.stderr.contains("--accept-gap"), "{}", out.describe());
    // Accepting the gap continues (and is logged).
    let out = tail_once(&["--accept-gap"]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(out.stderr.contains("accept_gap"), "{}", out.describe());

    // The slot is dropped.
    steps(
        &client,
        "SELECT pg_drop_replication_slot('s_cont'); INSERT INTO c VALUES (3)",
    )
    .await;
    let out = tail_once(&[]);
    assert_ne!(out.code(), Some(0), "{}", out.describe());
    assert!(
        out.stderr.contains("no longer exists"),
        "{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("bytes of history"),
        "{}",
        out.describe()
    );

    // The slot is dropped and created again by someone.
    let out = tail_once(&["--accept-gap"]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    steps(
        &client,
        "INSERT INTO c VALUES (4);
             SELECT pg_drop_replication_slot('s_cont');
             INSERT INTO c VALUES (5);
             SELECT pg_create_logical_replication_slot('s_cont', 'pgoutput');",
    )
    .await;
    let out = tail_once(&[]);
    assert_ne!(out.code(), Some(0), "{}", out.describe());
    assert!(
        out.stderr.contains("dropped and created again"),
        "{}",
        out.describe()
    );

    // A checkpoint from another server (system identifier changed).
    let out = tail_once(&["--accept-gap"]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let cp_path = config.dir().join("state").join("s_cont.checkpoint.json");
    let text = std::fs::read_to_string(&cp_path).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["identity"]["system_id"] = serde_json::json!(1234567890u64);
    std::fs::write(&cp_path, json.to_string()).unwrap();
    let out = tail_once(&[]);
    assert_ne!(out.code(), Some(0), "{}", out.describe());
    assert!(
        out.stderr.contains("system identifier"),
        "{}",
        out.describe()
    );
}

#[tokio::test]
async fn unfit_slots_publications_and_roles_get_the_fix() {
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    steps(
        &client,
        "CREATE TABLE x (id int PRIMARY KEY);
         SELECT pg_create_logical_replication_slot('s_other_plugin', 'test_decoding');",
    )
    .await;
    let config = db
        .config()
        .user(TestUser::Superuser)
        .slot("s_other_plugin")
        .write()
        .unwrap();
    let out = walflow!("tail", "-c", &config.path)
        .output(Duration::from_secs(30))
        .unwrap();
    assert_ne!(out.code(), Some(0));
    assert!(
        out.stderr.contains("test_decoding") && out.stderr.contains("not pgoutput"),
        "{}",
        out.describe()
    );

    let config = db
        .config()
        .user(TestUser::Superuser)
        .slot("s_nopub")
        .publication("missing_pub")
        .source("publication_autocreate = \"disabled\"")
        .write()
        .unwrap();
    let out = walflow!("tail", "-c", &config.path)
        .output(Duration::from_secs(30))
        .unwrap();
    assert_ne!(out.code(), Some(0));
    assert!(
        out.stderr
            .contains("publication \"missing_pub\" does not exist")
            && out.stderr.contains("CREATE PUBLICATION"),
        "{}",
        out.describe()
    );

    // Filtered autocreate follows the table list.
    client
        .batch_execute("CREATE SCHEMA inv; CREATE TABLE inv.a (id int primary key); CREATE TABLE inv.b (id int primary key);")
        .await
        .unwrap();
    let config = db
        .config()
        .user(TestUser::Superuser)
        .slot("s_filtered")
        .publication("filtered_pub")
        .source("tables = [\"inv.*\"]")
        .write()
        .unwrap();
    let until = current_lsn(&client).await;
    let out = walflow!(
        "tail",
        "-c",
        &config.path,
        "--until-lsn",
        walflow::event::format_lsn(until)
    )
    .output(Duration::from_secs(30))
    .unwrap();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let tables: Vec<String> = client
        .query("SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = 'filtered_pub' ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(tables, vec!["inv.a", "inv.b"]);

    // A role without REPLICATION, through the CLI.
    client
        .batch_execute("DO $$ BEGIN CREATE ROLE walflow_norepl2 LOGIN PASSWORD 'walflow-test-secret'; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        .await
        .unwrap();
    let url = db.url("walflow_norepl2");
    let out = walflow!(
        "tail",
        "--url",
        url,
        "--sslmode",
        "disable",
        "--slot",
        "s_norepl",
        "--password-env",
        walflow_tests::PASSWORD_ENV
    )
    .output(Duration::from_secs(30))
    .unwrap();
    assert_ne!(out.code(), Some(0));
    assert!(
        out.stderr.contains("may not replicate"),
        "{}",
        out.describe()
    );

    // Unreachable host: one line, says what to check.
    let out = walflow!(
        "tail",
        "--url",
        format!("postgres://postgres@127.0.0.1:{}/x", free_port()),
        "--sslmode",
        "disable"
    )
    .output(Duration::from_secs(30))
    .unwrap();
    assert_ne!(out.code(), Some(0));
    assert!(
        out.stderr.contains("cannot reach PostgreSQL"),
        "{}",
        out.describe()
    );
}

#[tokio::test]
async fn wal_level_replica_is_refused() {
    let cluster = tokio::task::spawn_blocking(|| {
        Cluster::start(
            ClusterOptions::default()
                .without_tls()
                .setting("wal_level", "replica"),
        )
    })
    .await
    .unwrap()
    .unwrap();
    let db = cluster.new_database().await;
    let config = db
        .config()
        .user(TestUser::Superuser)
        .sslmode("disable")
        .write()
        .unwrap();
    let out = walflow!("tail", "-c", &config.path)
        .output(Duration::from_secs(30))
        .unwrap();
    assert_ne!(out.code(), Some(0));
    assert!(
        out.stderr.contains("wal_level is `replica`"),
        "{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("ALTER SYSTEM SET wal_level = logical"),
        "{}",
        out.describe()
    );
}

#[tokio::test]
async fn invalidated_slot_is_refused() {
    refuses_invalidated_slot(ClusterOptions::default(), "(wal_status = 'lost')").await;
}

/// PostgreSQL 17 and later say why a slot was invalidated; the refusal names it.
#[tokio::test]
async fn invalidated_slot_is_refused_with_the_servers_reason() {
    let newest = pg_installs()
        .into_iter()
        .rfind(|i| i.major >= 17)
        .expect("PostgreSQL 17+ is installed (scripts/test installs 10-18)");
    refuses_invalidated_slot(
        ClusterOptions::default().bin_dir(newest.bin_dir),
        "(invalidation_reason = 'wal_removed')",
    )
    .await;
}

/// Gets a slot invalidated by `max_slot_wal_keep_size` on a server started with `options`, and
/// checks that walflow refuses to continue it, saying `named`.
async fn refuses_invalidated_slot(options: ClusterOptions, named: &str) {
    let cluster = tokio::task::spawn_blocking(|| {
        Cluster::start(
            options
                .without_tls()
                .setting("max_slot_wal_keep_size", "'1MB'")
                .setting("wal_keep_size", "0")
                .setting("min_wal_size", "'32MB'")
                .setting("max_wal_size", "'64MB'"),
        )
    })
    .await
    .unwrap()
    .unwrap();
    let db = cluster.new_database().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE w (id int, pad text)")
        .await
        .unwrap();
    let config = db
        .config()
        .user(TestUser::Superuser)
        .sslmode("disable")
        .slot("s_lost")
        .write()
        .unwrap();
    let until = current_lsn(&client).await;
    let out = walflow!(
        "tail",
        "--confirm",
        "-c",
        &config.path,
        "--until-lsn",
        walflow::event::format_lsn(until)
    )
    .output(Duration::from_secs(30))
    .unwrap();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    // Write and switch WAL until the slot is lost.
    let mut lost = false;
    for _ in 0..40 {
        steps(
            &client,
            "INSERT INTO w SELECT g, repeat('x', 500) FROM generate_series(1, 5000) g;
                 SELECT pg_switch_wal(); CHECKPOINT;",
        )
        .await;
        let status: Option<String> = client
            .query_one(
                "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 's_lost'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if status.as_deref() == Some("lost") {
            lost = true;
            break;
        }
    }
    assert!(lost, "could not get the slot invalidated");
    let out = walflow!("tail", "-c", &config.path)
        .output(Duration::from_secs(30))
        .unwrap();
    assert_ne!(out.code(), Some(0));
    assert!(
        out.stderr.contains(&format!("invalidated {named}")),
        "{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("max_slot_wal_keep_size"),
        "{}",
        out.describe()
    );
    assert!(
        out.stderr.contains("bytes of history"),
        "{}",
        out.describe()
    );
}

// ---- versions ------------------------------------------------------------------------------

#[tokio::test]
async fn version_matrix_streams_at_the_highest_protocol() {
    let installs = pg_installs();
    assert!(!installs.is_empty(), "no PostgreSQL installed");
    let mut report = Vec::new();
    let mut seen_majors = HashMap::new();
    for install in installs {
        if seen_majors.insert(install.major, ()).is_some() {
            continue;
        }
        let bin = install.bin_dir.clone();
        let cluster = tokio::task::spawn_blocking(move || {
            Cluster::start(ClusterOptions::default().bin_dir(bin))
        })
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("PostgreSQL {}: {e:#}", install.version));
        let db = cluster.new_database().await;
        let proto = matrix_round(&db, install.major).await;
        let expected = match install.major {
            10..=13 => 1,
            14 => 2,
            15 => 3,
            _ => 4,
        };
        assert_eq!(proto, expected, "PostgreSQL {}", install.version);
        report.push(format!("{}:proto{}", install.version, proto));
    }
    eprintln!("version matrix passed: {}", report.join(", "));
}

/// The same replication round on any version: TLS + SCRAM (md5 before 10's scram? all ≥ 10
/// have scram), inserts, an update, a delete, a truncate, a message where supported.
async fn matrix_round(db: &walflow_tests::TestDb, major: u32) -> u32 {
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE m (id int PRIMARY KEY, v text); ALTER TABLE m REPLICA IDENTITY FULL;",
        )
        .await
        .unwrap();
    let mut stream = open_stream_as(
        db,
        "s_matrix",
        TestUser::Superuser,
        SslMode::Require,
        StreamOptions::for_source(&source(db, "s_matrix")),
    )
    .await;
    steps(
        &client,
        "BEGIN; INSERT INTO m VALUES (1, 'a'), (2, 'b'); COMMIT;
             UPDATE m SET v = 'c' WHERE id = 1;
             DELETE FROM m WHERE id = 2;
             TRUNCATE m;",
    )
    .await;
    let until = current_lsn(&client).await;
    let txns = collect_until(&mut stream, until).await;
    let ops: Vec<Op> = txns
        .iter()
        .flat_map(|t| t.events.iter().map(|e| e.op))
        .collect();
    let mut expected = vec![Op::Create, Op::Create, Op::Update, Op::Delete];
    if major >= 11 {
        // pgoutput replicates TRUNCATE from PostgreSQL 11.
        expected.push(Op::Truncate);
    }
    assert_eq!(ops, expected, "PostgreSQL {major}");
    let upd = txns[1].events[0].clone();
    assert_eq!(upd.before.unwrap()[1], Value::Text("a".into()));
    let proto = stream.protocol_version();
    stream.stop().await.unwrap();
    proto
}

// ---- reconnect -----------------------------------------------------------------------------

#[tokio::test]
async fn stream_reconnects_when_the_server_drops_it_without_loss_or_repeat() {
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE r (id int PRIMARY KEY)")
        .await
        .unwrap();
    let mut stream = open_stream(&db, "s_reconnect").await;
    insert_batches(&client, 0, 10, 10).await;
    let until = current_lsn(&client).await;
    let first = inserted_ids(&collect_until(&mut stream, until).await);
    assert_eq!(first, (0..100).collect::<Vec<i64>>());

    let pid_of =
        |rows: Vec<tokio_postgres::Row>| rows.first().and_then(|r| r.get::<_, Option<i32>>(0));
    let old_pid = pid_of(
        client
            .query(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 's_reconnect'",
                &[],
            )
            .await
            .unwrap(),
    )
    .expect("the slot is active");
    client
        .execute("SELECT pg_terminate_backend($1)", &[&old_pid])
        .await
        .unwrap();
    insert_batches(&client, 100, 10, 10).await;
    let until = current_lsn(&client).await;
    let second = inserted_ids(&collect_until(&mut stream, until).await);
    assert_eq!(
        second,
        (100..200).collect::<Vec<i64>>(),
        "after a reconnect nothing is missing and nothing handed over twice"
    );
    let new_pid = pid_of(
        client
            .query(
                "SELECT active_pid FROM pg_replication_slots WHERE slot_name = 's_reconnect'",
                &[],
            )
            .await
            .unwrap(),
    );
    assert!(
        new_pid.is_some() && new_pid != Some(old_pid),
        "a new walsender serves the stream"
    );
    stream.stop().await.unwrap();
}
