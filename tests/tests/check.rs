//! `walflow check` finds each misconfiguration on real clusters configured wrongly, with the fix,
//! and exits 1; a correctly configured database passes (see also tests/tests/setup_sql.rs).

use std::time::Duration;

use walflow_tests::config_file::toml_string;
use walflow_tests::{
    Cluster, ClusterOptions, PASSWORD_ENV, TEST_PASSWORD, TestDb, WalflowOutput, walflow,
};

const TIMEOUT: Duration = Duration::from_secs(60);

/// A config for `user` on `db` (its password in the test password variable).
fn config(db: &TestDb, user: &str, extra: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walflow.toml");
    std::fs::write(
        &path,
        format!(
            "[source]\nurl = {}\npassword_env = {}\nsslmode = \"disable\"\nslot = {}\npublication = {}\n{extra}\n",
            toml_string(&db.cluster().url(user, db.name())),
            toml_string(PASSWORD_ENV),
            toml_string(&format!("{}_slot", db.name())),
            toml_string(&format!("{}_pub", db.name())),
        ),
    )
    .unwrap();
    (dir, path)
}

async fn check(path: &std::path::Path) -> WalflowOutput {
    walflow!("check", "-c", path)
        .output_async(TIMEOUT)
        .await
        .unwrap()
}

/// The finding line for `check` with `status` and the fix lines under it.
fn finding(out: &WalflowOutput, status: &str, check: &str) -> String {
    let lines: Vec<&str> = out.stdout.lines().collect();
    let start = lines
        .iter()
        .position(|l| {
            l.trim_start().starts_with(status)
                && l[2 + status.len()..].trim_start().starts_with(check)
        })
        .unwrap_or_else(|| panic!("no `{status} {check}` finding:\n{}", out.describe()));
    let mut text = lines[start].to_string();
    for l in &lines[start + 1..] {
        if l.trim_start().starts_with("fix:") || (l.starts_with("      ") && !l.trim().is_empty()) {
            text.push('\n');
            text.push_str(l.trim());
        } else {
            break;
        }
    }
    text
}

/// A user with a password, optionally with REPLICATION.
async fn create_user(db: &TestDb, replication: bool) -> String {
    let user = format!("{}_u{}", db.name(), if replication { "r" } else { "n" });
    let attr = if replication { "REPLICATION" } else { "" };
    db.client()
        .await
        .batch_execute(&format!(
            "CREATE ROLE \"{user}\" LOGIN {attr} PASSWORD '{TEST_PASSWORD}'"
        ))
        .await
        .unwrap();
    user
}

#[tokio::test]
async fn wal_level_replica_is_found() {
    let cluster = Cluster::start(
        ClusterOptions::default()
            .setting("wal_level", "replica")
            .without_tls(),
    )
    .unwrap();
    let db = cluster.new_database().await;
    let (_dir, path) = config(&db, "walflow_scram", "");
    let out = check(&path).await;
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let wal = finding(&out, "FAIL", "wal_level");
    assert!(wal.contains("\"replica\""), "{wal}");
    assert!(
        wal.contains("ALTER SYSTEM SET wal_level = 'logical'"),
        "{wal}"
    );
    assert!(out.stderr.contains("not ready"), "{}", out.describe());
}

#[tokio::test]
async fn missing_privileges_publication_and_keys_are_found() {
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE orders (id int PRIMARY KEY, note text);
             CREATE TABLE nokey (v text);
             CREATE TABLE walflow_signal (id varchar(255) PRIMARY KEY, type varchar(32) NOT NULL, data varchar(2000));",
        )
        .await
        .unwrap();
    let user = create_user(&db, false).await;
    let (_dir, path) = config(
        &db,
        &user,
        "tables = [\"public.orders\", \"public.nokey\", \"public.missing_*\"]\npublication_autocreate = \"disabled\"\nsignal_table = \"public.walflow_signal\"",
    );
    let out = check(&path).await;
    assert_eq!(out.code(), Some(1), "{}", out.describe());

    let replication = finding(&out, "FAIL", "replication privilege");
    assert!(
        replication.contains(&format!("ALTER ROLE \"{user}\" WITH REPLICATION;")),
        "{replication}"
    );
    let select = finding(&out, "FAIL", "select privilege");
    assert!(
        select.contains(&format!(
            "GRANT SELECT ON \"public\".\"orders\" TO \"{user}\";"
        )),
        "{select}"
    );
    let publication = finding(&out, "FAIL", "publication");
    assert!(
        publication.contains(&format!(
            "CREATE PUBLICATION \"{}_pub\" FOR TABLE",
            db.name()
        )),
        "{publication}"
    );
    let keys = finding(&out, "FAIL", "primary keys");
    assert!(keys.contains("public.nokey"), "{keys}");
    let identity = finding(&out, "warn", "replica identity");
    assert!(identity.contains("REPLICA IDENTITY FULL"), "{identity}");
    let unmatched = finding(&out, "warn", "captured tables");
    assert!(unmatched.contains("public.missing_*"), "{unmatched}");
    let signal = finding(&out, "FAIL", "signal table");
    assert!(signal.contains("GRANT SELECT, INSERT, UPDATE"), "{signal}");
    // Without heartbeats the default wal_sender_timeout (60 s) is worth a warning.
    let timeout = finding(&out, "warn", "wal_sender_timeout");
    assert!(timeout.contains("heartbeat_interval"), "{timeout}");
}

#[tokio::test]
async fn tables_and_signal_table_missing_from_publication_are_found() {
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    let user = create_user(&db, true).await;
    let publication = format!("{}_pub", db.name());
    client
        .batch_execute(&format!(
            "CREATE TABLE a (id int PRIMARY KEY);
             CREATE TABLE b (id int PRIMARY KEY);
             ALTER TABLE a REPLICA IDENTITY FULL; ALTER TABLE b REPLICA IDENTITY FULL;
             CREATE TABLE sig (id varchar(255) PRIMARY KEY, type varchar(32) NOT NULL, data varchar(2000));
             GRANT SELECT ON a, b TO \"{user}\"; GRANT SELECT, INSERT, UPDATE ON sig TO \"{user}\";
             CREATE PUBLICATION \"{publication}\" FOR TABLE a;"
        ))
        .await
        .unwrap();
    let (_dir, path) = config(
        &db,
        &user,
        "tables = [\"public.a\", \"public.b\"]\npublication_autocreate = \"disabled\"\nsignal_table = \"public.sig\"\nheartbeat_interval = \"5s\"",
    );
    let out = check(&path).await;
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let tables = finding(&out, "FAIL", "publication tables");
    assert!(
        tables.contains(&format!(
            "ALTER PUBLICATION \"{publication}\" ADD TABLE \"public\".\"b\";"
        )),
        "{tables}"
    );
    let signal = finding(&out, "FAIL", "signal table");
    assert!(
        signal.contains(&format!(
            "ALTER PUBLICATION \"{publication}\" ADD TABLE \"public\".\"sig\";"
        )),
        "{signal}"
    );
    finding(&out, "ok", "replica identity");
    finding(&out, "ok", "wal_sender_timeout");
    finding(&out, "ok", "replication privilege");

    // Fixing exactly what check said makes it pass.
    client
        .batch_execute(&format!(
            "ALTER PUBLICATION \"{publication}\" ADD TABLE b, sig"
        ))
        .await
        .unwrap();
    let out = check(&path).await;
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(
        out.stdout.contains("ready: 0 problems to fix"),
        "{}",
        out.describe()
    );
}

#[tokio::test]
async fn wrong_plugin_and_busy_slots_are_found() {
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let slot = format!("{}_slot", db.name());
    client
        .query(
            "SELECT pg_create_logical_replication_slot($1, 'test_decoding')",
            &[&slot],
        )
        .await
        .unwrap();
    let (_dir, path) = config(&db, "walflow_scram", "");
    let out = check(&path).await;
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let found = finding(&out, "FAIL", "slot");
    assert!(found.contains("plugin test_decoding"), "{found}");
    assert!(
        found.contains("pg_create_logical_replication_slot"),
        "{found}"
    );

    // A pgoutput slot held by another consumer (pg_recvlogical).
    client
        .query("SELECT pg_drop_replication_slot($1)", &[&slot])
        .await
        .unwrap();
    client
        .query(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .unwrap();
    let mut holder = std::process::Command::new("pg_recvlogical")
        .args(["--start", "-f", "/dev/null", "-o", "proto_version=1"])
        .arg("-o")
        .arg(format!("publication_names={}_pub", db.name()))
        .arg("-S")
        .arg(&slot)
        .arg("-d")
        .arg(db.conninfo(walflow_tests::TestUser::Superuser))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let active = walflow_tests::wait_for_async("the slot to be active", TIMEOUT, || async {
        let row = client
            .query_one(
                "SELECT active FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .ok()?;
        row.get::<_, bool>(0).then_some(())
    })
    .await;
    let out = check(&path).await;
    let _ = holder.kill();
    let _ = holder.wait();
    active.unwrap();
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let busy = finding(&out, "FAIL", "slot");
    assert!(busy.contains("in use by another consumer"), "{busy}");
    assert!(busy.contains("pg_terminate_backend"), "{busy}");
}

#[tokio::test]
async fn unreachable_server_is_one_failed_finding() {
    let db = Cluster::shared().new_database().await;
    let (_dir, path) = config(&db, "walflow_scram", "");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace(&format!(":{}/", db.cluster().port()), ":1/")
        .replace("walflow_scram@", "walflow_scram:url-secret@");
    std::fs::write(&path, text).unwrap();
    let out = check(&path).await;
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let connection = finding(&out, "FAIL", "connection");
    assert!(
        connection.contains("cannot reach PostgreSQL"),
        "{connection}"
    );
    assert!(
        !out.stdout.contains("url-secret") && !out.stderr.contains("url-secret"),
        "{}",
        out.describe()
    );
}

/// A source URL of another scheme is refused by `check` and `run` alike, naming the URL
/// without the password written in it.
#[tokio::test]
async fn a_url_of_another_scheme_is_refused_without_showing_its_password() {
    let db = Cluster::shared().new_database().await;
    let (_dir, path) = config(&db, "walflow_scram", "[[sinks]]\ntype = \"stdout\"");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "postgres://walflow_scram@",
        "mysql://walflow_scram:url-secret@",
    );
    std::fs::write(&path, text).unwrap();
    let out = check(&path).await;
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let run = walflow!("run", "-c", &path)
        .output_async(TIMEOUT)
        .await
        .unwrap();
    assert!(!run.status.success(), "{}", run.describe());
    for out in [&out, &run] {
        let all = format!("{}{}", out.stdout, out.stderr);
        assert!(
            all.contains("must start with postgres://")
                && all.contains("mysql://walflow_scram:***@"),
            "{}",
            out.describe()
        );
        assert!(!all.contains("url-secret"), "{}", out.describe());
    }
}

#[tokio::test]
async fn read_replica_is_found() {
    let primary = Cluster::start(ClusterOptions::default().without_tls()).unwrap();
    let db = primary.new_database().await;
    db.client()
        .await
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let standby = Cluster::start_standby(&primary).unwrap();
    // The standby has the database once it has replayed the primary's WAL up to now.
    let conninfo = format!(
        "host=127.0.0.1 port={} user=postgres dbname={}",
        standby.port(),
        db.name()
    );
    walflow_tests::wait_for_async("the standby to accept connections", TIMEOUT, || async {
        walflow_tests::cluster::connect(&conninfo)
            .await
            .ok()
            .map(|_| ())
    })
    .await
    .unwrap();
    let (_dir, path) = config(&db, "walflow_scram", "");
    let text = std::fs::read_to_string(&path).unwrap().replace(
        &format!(":{}/", primary.port()),
        &format!(":{}/", standby.port()),
    );
    std::fs::write(&path, text).unwrap();
    let out = check(&path).await;
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let replica = finding(&out, "FAIL", "primary");
    assert!(replica.contains("read replica"), "{replica}");
    assert!(
        replica.contains("connect walflow to the primary"),
        "{replica}"
    );
}

#[tokio::test]
async fn check_connects_with_verify_full_tls() {
    let cluster = Cluster::shared();
    let db = cluster.new_database().await;
    db.client()
        .await
        .batch_execute(&format!(
            "CREATE TABLE t (id int PRIMARY KEY); ALTER TABLE t REPLICA IDENTITY FULL;
             GRANT SELECT ON t TO walflow_tls_only;
             CREATE PUBLICATION \"{}_pub\" FOR ALL TABLES",
            db.name()
        ))
        .await
        .unwrap();
    let config = db
        .config()
        .user(walflow_tests::TestUser::TlsOnly)
        .host("localhost")
        .sslmode("verify-full")
        .sslrootcert(cluster.ca_cert().unwrap())
        .source("heartbeat_interval = \"10s\"")
        .write()
        .unwrap();
    let out = check(&config.path).await;
    finding(&out, "ok", "connection");
    finding(&out, "ok", "replication privilege");
    assert_eq!(out.code(), Some(0), "{}", out.describe());

    // The certificate does not name 127.0.0.2: verify-full must refuse it.
    let wrong = db
        .config()
        .user(walflow_tests::TestUser::TlsOnly)
        .host(walflow_tests::WRONG_HOST)
        .sslmode("verify-full")
        .sslrootcert(cluster.ca_cert().unwrap())
        .write()
        .unwrap();
    let out = check(&wrong.path).await;
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    finding(&out, "FAIL", "connection");
}

/// The seed's upgrade hazard: a checkpoint for a slot that is gone (or that something else
/// consumed past) means lost changes, and check says so instead of letting a new slot skip them.
#[tokio::test]
async fn slot_history_gaps_against_the_checkpoint_are_found() {
    use walflow::checkpoint::{Checkpoint, CheckpointStore, SlotIdentity};
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "CREATE TABLE t (id int PRIMARY KEY); ALTER TABLE t REPLICA IDENTITY FULL;
             GRANT SELECT ON t TO walflow_scram;
             CREATE PUBLICATION \"{}_pub\" FOR ALL TABLES",
            db.name()
        ))
        .await
        .unwrap();
    let (dir, path) = config(&db, "walflow_scram", "heartbeat_interval = \"10s\"");
    let slot = format!("{}_slot", db.name());
    let store = CheckpointStore::new(dir.path().join(".walflow"), &slot);
    store
        .save(&Checkpoint {
            lsn: walflow::event::Lsn(1),
            identity: SlotIdentity {
                system_id: 1,
                database: db.name().to_string(),
                slot: slot.clone(),
                timeline: 1,
                created_lsn: walflow::event::Lsn(1),
            },
            written_at_ms: 0,
            snapshot: Default::default(),
        })
        .unwrap();
    let out = check(&path).await;
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let gone = finding(&out, "FAIL", "slot");
    assert!(gone.contains("is gone"), "{gone}");
    assert!(gone.contains("re-snapshot"), "{gone}");

    // A new slot starts after the checkpoint: the changes in between are lost to it.
    client
        .query(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .unwrap();
    let out = check(&path).await;
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let gap = finding(&out, "FAIL", "checkpoint");
    assert!(gap.contains("beyond walflow's checkpoint 0/1"), "{gap}");

    // Without a checkpoint the same slot is fine.
    store.remove().unwrap();
    let out = check(&path).await;
    assert_eq!(out.code(), Some(0), "{}", out.describe());
}
