//! `walflow setup-sql` output, run by psql as a superuser on a real database, sets up exactly
//! what walflow needs: `walflow check` then passes, and the new user can log in, replicate and
//! read the captured tables.

use std::time::Duration;

use walflow_tests::config_file::toml_string;
use walflow_tests::{Cluster, PASSWORD_ENV, TEST_PASSWORD, TestDb, TestUser, walflow};

const TIMEOUT: Duration = Duration::from_secs(60);

struct Setup {
    config: tempfile::TempDir,
    path: std::path::PathBuf,
    user: String,
}

fn write_config(db: &TestDb, user: &str, extra: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walflow.toml");
    let url = db.cluster().url(user, db.name());
    std::fs::write(
        &path,
        format!(
            "[source]\nurl = {}\npassword_env = {}\nsslmode = \"disable\"\nslot = {}\npublication = {}\n{extra}\n[state]\ndir = {}\n",
            toml_string(&url),
            toml_string(PASSWORD_ENV),
            toml_string(&format!("{}_slot", db.name())),
            toml_string(&format!("{}_pub", db.name())),
            toml_string(&dir.path().join("state").to_string_lossy()),
        ),
    )
    .unwrap();
    Setup {
        config: dir,
        path,
        user: user.to_string(),
    }
}

/// Runs the script as the superuser with psql, the way the header says to.
fn apply(db: &TestDb, setup: &Setup, script: &str) {
    let file = setup.config.path().join("setup.sql");
    std::fs::write(&file, script).unwrap();
    let output = std::process::Command::new("psql")
        .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-v"])
        .arg(format!("walflow_password={TEST_PASSWORD}"))
        .arg("-d")
        .arg(db.conninfo(TestUser::Superuser))
        .arg("-f")
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "the setup script failed: {}\n{script}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn setup_sql_output_makes_check_pass() {
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE public.orders (id int PRIMARY KEY, note text);
             CREATE TABLE public.ignored (id int PRIMARY KEY);
             CREATE SCHEMA inventory;
             CREATE TABLE inventory.items (sku text PRIMARY KEY, qty int);
             CREATE TABLE inventory.\"Odd \"\"Name\" (id int PRIMARY KEY);",
        )
        .await
        .unwrap();
    let user = format!("{}_user", db.name());
    let setup = write_config(
        &db,
        &user,
        "tables = [\"public.orders\", \"inventory.*\"]\nsignal_table = \"walflow.walflow_signal\"\nheartbeat_interval = \"10s\"\npublication_autocreate = \"disabled\"",
    );

    let before = walflow!("check", "-c", &setup.path)
        .output_async(TIMEOUT)
        .await
        .unwrap();
    assert_eq!(
        before.code(),
        Some(1),
        "check passed before setup:\n{}",
        before.describe()
    );

    let out = walflow!("setup-sql", "-c", &setup.path)
        .output_async(TIMEOUT)
        .await
        .unwrap();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    apply(&db, &setup, &out.stdout);

    let check = walflow!("check", "-c", &setup.path)
        .output_async(TIMEOUT)
        .await
        .unwrap();
    assert_eq!(
        check.code(),
        Some(0),
        "check fails after setup:\n{}",
        check.describe()
    );
    assert!(
        check.stdout.contains("ready: 0 problems to fix"),
        "{}",
        check.describe()
    );
    for line in [
        "ok    replication privilege",
        "ok    publication tables",
        "ok    signal table",
        "ok    slot ",
    ] {
        assert!(
            check.stdout.contains(line),
            "missing `{line}`:\n{}",
            check.stdout
        );
    }

    // What the script set up really works for the new user.
    let conninfo = format!(
        "host=127.0.0.1 port={} user={} password={TEST_PASSWORD} dbname={}",
        db.cluster().port(),
        setup.user,
        db.name()
    );
    let walflow_client = walflow_tests::cluster::connect(&conninfo).await.unwrap();
    walflow_client
        .query("SELECT * FROM public.orders", &[])
        .await
        .unwrap();
    walflow_client
        .query("SELECT * FROM inventory.\"Odd \"\"Name\"", &[])
        .await
        .unwrap();
    walflow_client
        .execute(
            "INSERT INTO walflow.walflow_signal VALUES ('1', 'execute-snapshot', NULL)",
            &[],
        )
        .await
        .unwrap();
    let denied = walflow_client
        .query("SELECT * FROM public.ignored", &[])
        .await;
    assert!(
        denied.is_err(),
        "the script granted more than the captured tables"
    );
    let published: Vec<String> = client
        .query(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1",
            &[&format!("{}_pub", db.name())],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        published,
        [
            "inventory.Odd \"Name",
            "inventory.items",
            "public.orders",
            "walflow.walflow_signal"
        ]
    );
    let plugin: String = client
        .query_one(
            "SELECT plugin::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&format!("{}_slot", db.name())],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plugin, "pgoutput");
    let replication: bool = client
        .query_one(
            "SELECT rolreplication FROM pg_roles WHERE rolname = $1",
            &[&setup.user],
        )
        .await
        .unwrap()
        .get(0);
    assert!(replication);
}

#[tokio::test]
async fn all_tables_script_runs_and_rds_variant_differs() {
    let db = Cluster::shared().new_database().await;
    db.client()
        .await
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY)")
        .await
        .unwrap();
    let user = format!("{}_user", db.name());
    let setup = write_config(&db, &user, "");
    let out = walflow!("setup-sql", "-c", &setup.path)
        .output_async(TIMEOUT)
        .await
        .unwrap();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(out.stdout.contains("FOR ALL TABLES"), "{}", out.stdout);
    apply(&db, &setup, &out.stdout);
    let check = walflow!("check", "-c", &setup.path)
        .output_async(TIMEOUT)
        .await
        .unwrap();
    assert_eq!(check.code(), Some(0), "{}", check.describe());

    let rds = walflow!("setup-sql", "-c", &setup.path, "--rds")
        .output_async(TIMEOUT)
        .await
        .unwrap();
    assert_eq!(rds.code(), Some(0), "{}", rds.describe());
    assert!(
        rds.stdout.contains("GRANT rds_replication TO"),
        "{}",
        rds.stdout
    );
    assert!(!rds.stdout.contains("WITH REPLICATION"), "{}", rds.stdout);
}

#[tokio::test]
async fn bad_config_is_one_clear_error() {
    let db = Cluster::shared().new_database().await;
    let setup = write_config(&db, "u", "tables = [\"orders\"]");
    let out = walflow!("setup-sql", "-c", &setup.path)
        .output_async(TIMEOUT)
        .await
        .unwrap();
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(out.stderr.contains("schema.table"), "{}", out.describe());
    assert!(out.stdout.is_empty(), "{}", out.describe());
}

/// The script and the checks use only catalog features every supported server has: on each
/// installed PostgreSQL (10–18), the setup-sql output makes `walflow check` pass. `order_*`
/// becomes the LIKE pattern `order\_%`, quoted as an `E'…'` literal for its backslash.
#[tokio::test]
async fn setup_sql_and_check_work_on_every_installed_version() {
    for install in walflow_tests::pg_installs() {
        let cluster = Cluster::start(
            walflow_tests::ClusterOptions::default()
                .bin_dir(&install.bin_dir)
                .without_tls(),
        )
        .unwrap_or_else(|e| panic!("PostgreSQL {} does not start: {e:#}", install.version));
        let db = cluster.new_database().await;
        db.client()
            .await
            .batch_execute(
                "CREATE TABLE public.orders (id int PRIMARY KEY);
                 CREATE TABLE public.order_lines (id int PRIMARY KEY);
                 CREATE SCHEMA inventory;
                 CREATE TABLE inventory.items (sku text PRIMARY KEY);
                 CREATE TABLE inventory.parts (sku text PRIMARY KEY);",
            )
            .await
            .unwrap();
        let user = format!("{}_user", db.name());
        let setup = write_config(
            &db,
            &user,
            "tables = [\"public.orders\", \"inventory.*\", \"*.part?\", \"inventory.items\", \"public.order_*\"]\nsignal_table = \"walflow.walflow_signal\"\nheartbeat_interval = \"10s\"\npublication_autocreate = \"disabled\"",
        );
        let out = walflow!("setup-sql", "-c", &setup.path)
            .output_async(TIMEOUT)
            .await
            .unwrap();
        assert_eq!(out.code(), Some(0), "{}", out.describe());
        apply(&db, &setup, &out.stdout);
        let check = walflow!("check", "-c", &setup.path)
            .output_async(TIMEOUT)
            .await
            .unwrap();
        assert_eq!(
            check.code(),
            Some(0),
            "PostgreSQL {}: check fails after setup:\n{}",
            install.version,
            check.describe()
        );
        assert!(
            check
                .stdout
                .contains(&format!("PostgreSQL {}", install.version)),
            "{}",
            check.stdout
        );
    }
}

/// On RDS/Aurora replication rights come from membership in `rds_replication`. A cluster that
/// has that role (as RDS does) takes the `--rds` script, and `walflow check` recognises the
/// membership instead of asking for the REPLICATION attribute.
#[tokio::test]
async fn rds_script_on_a_cluster_with_rds_replication() {
    let cluster = Cluster::start(walflow_tests::ClusterOptions::default().without_tls()).unwrap();
    let db = cluster.new_database().await;
    db.client()
        .await
        .batch_execute("CREATE ROLE rds_replication; CREATE TABLE t (id int PRIMARY KEY);")
        .await
        .unwrap();
    let user = format!("{}_user", db.name());
    let setup = write_config(
        &db,
        &user,
        "tables = [\"public.t\"]\npublication_autocreate = \"disabled\"\nheartbeat_interval = \"10s\"",
    );
    let out = walflow!("setup-sql", "-c", &setup.path, "--rds")
        .output_async(TIMEOUT)
        .await
        .unwrap();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    apply(&db, &setup, &out.stdout);
    let check = walflow!("check", "-c", &setup.path)
        .output_async(TIMEOUT)
        .await
        .unwrap();
    assert_eq!(check.code(), Some(0), "{}", check.describe());
    assert!(
        check
            .stdout
            .contains(&format!("\"{user}\" has rds_replication")),
        "{}",
        check.stdout
    );
    let attribute: bool = db
        .client()
        .await
        .query_one(
            "SELECT rolreplication FROM pg_roles WHERE rolname = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        !attribute,
        "the --rds script must not use the REPLICATION attribute"
    );
}
