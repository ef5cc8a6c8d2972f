//! The harness itself works: a cluster starts, every login role authenticates by its method,
//! TLS verifies against the throwaway CA, the server dies with the test process, and every
//! installed PostgreSQL version starts and creates a logical replication slot.

use std::time::Duration;

use walflow_tests::installs::{self, INSTALL_HINT};
use walflow_tests::{Cluster, ClusterOptions, TestUser, WRONG_HOST, pg_installs};

#[tokio::test]
async fn shared_cluster_is_logical_and_has_a_database_per_test() {
    let cluster = Cluster::shared();
    assert!(cluster.port() > 55000, "port {}", cluster.port());
    let a = cluster.new_database().await;
    let b = cluster.new_database().await;
    assert_ne!(a.name(), b.name());
    let client = a.client().await;
    let row = client
        .query_one(
            "SELECT current_setting('wal_level'), current_setting('max_replication_slots')::int,
                    current_setting('max_prepared_transactions')::int, current_database()",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "logical");
    assert!(row.get::<_, i32>(1) >= 64);
    assert!(row.get::<_, i32>(2) > 0);
    assert_eq!(row.get::<_, String>(3), a.name());
    assert_eq!(
        a.url("walflow_scram"),
        format!(
            "postgres://walflow_scram@127.0.0.1:{}/{}",
            cluster.port(),
            a.name()
        )
    );
}

#[tokio::test]
async fn each_role_authenticates_by_its_method() {
    let db = Cluster::shared().new_database().await;
    for user in [
        TestUser::Superuser,
        TestUser::Trust,
        TestUser::Md5,
        TestUser::Scram,
        TestUser::Password,
    ] {
        let client = db
            .connect_as(user)
            .await
            .unwrap_or_else(|e| panic!("{} cannot log in: {e}", user.name()));
        let name: String = client
            .query_one("SELECT current_user::text", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(name, user.name());
    }
    // The stored hash decides md5 vs SCRAM: the md5 role must really have an md5 hash.
    let client = db.client().await;
    let hash: String = client
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'walflow_md5'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(hash.starts_with("md5"), "{hash}");
}

#[tokio::test]
async fn wrong_password_and_plain_tcp_for_tls_only_role_are_refused() {
    let cluster = Cluster::shared();
    let db = cluster.new_database().await;
    let wrong = format!(
        "host=127.0.0.1 port={} user=walflow_scram dbname={} password=nope",
        cluster.port(),
        db.name()
    );
    let Err(err) = walflow_tests::cluster::connect(&wrong).await else {
        panic!("wrong password accepted");
    };
    let err = walflow_tests::cluster::error_text(&err);
    assert!(err.contains("password authentication failed"), "{err}");
    let Err(err) = db.connect_as(TestUser::TlsOnly).await else {
        panic!("plain TCP accepted for the TLS-only role");
    };
    let err = walflow_tests::cluster::error_text(&err);
    assert!(err.contains("rejects connection"), "{err}");
}

#[test]
fn tls_verifies_against_the_throwaway_ca() {
    let cluster = Cluster::shared();
    let ca = cluster.ca_cert().expect("the shared cluster has TLS");
    let conninfo = |host: &str| {
        format!(
            "host={host} port={} user=walflow_tls_only password={} dbname=postgres sslmode=verify-full sslrootcert={}",
            cluster.port(),
            walflow_tests::TEST_PASSWORD,
            ca.display()
        )
    };
    for host in ["localhost", "127.0.0.1"] {
        let out = cluster
            .psql(
                &conninfo(host),
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            )
            .unwrap_or_else(|e| panic!("verify-full to {host}: {e}"));
        assert_eq!(out, "t", "connection to {host} is not encrypted");
    }
    let err = cluster
        .psql(&conninfo(WRONG_HOST), "SELECT 1")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("does not match host name") || err.contains("server certificate"),
        "{err}"
    );
}

#[test]
fn owned_cluster_with_custom_settings_stops_when_dropped() {
    let cluster = Cluster::start(
        ClusterOptions::default()
            .setting("wal_level", "replica")
            .without_tls(),
    )
    .unwrap();
    let data_dir = cluster.data_dir().to_owned();
    let out = cluster
        .psql(
            &cluster.conninfo(TestUser::Superuser, "postgres"),
            "SHOW wal_level",
        )
        .unwrap();
    assert_eq!(out, "replica");
    assert!(cluster.ca_cert().is_none());
    let pid_file = data_dir.join("postmaster.pid");
    assert!(pid_file.exists());
    drop(cluster);
    assert!(
        !data_dir.exists(),
        "the cluster directory outlived the cluster"
    );
}

/// The shared server must not outlive its test process, even one killed with SIGKILL. A child
/// copy of this test binary starts a cluster, prints its postmaster pid and is killed; the
/// postmaster must then exit on its own.
#[test]
fn server_dies_with_a_killed_test_process() {
    if std::env::var_os("WALFLOW_HARNESS_CHILD").is_some() {
        let cluster = Cluster::shared();
        let pid_text = std::fs::read_to_string(cluster.data_dir().join("postmaster.pid")).unwrap();
        println!("POSTMASTER={}", pid_text.lines().next().unwrap());
        std::thread::sleep(Duration::from_secs(600));
        return;
    }
    let exe = std::env::current_exe().unwrap();
    let out_dir = tempfile::tempdir().unwrap();
    let out_path = out_dir.path().join("out");
    let mut child = std::process::Command::new(exe)
        .args([
            "--exact",
            "server_dies_with_a_killed_test_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("WALFLOW_HARNESS_CHILD", "1")
        .stdout(std::fs::File::create(&out_path).unwrap())
        .spawn()
        .unwrap();
    let pid: u32 = walflow_tests::wait_for(
        "the child's postmaster pid",
        Duration::from_secs(60),
        || {
            let text = std::fs::read_to_string(&out_path).ok()?;
            text.lines()
                .find_map(|l| l.split("POSTMASTER=").nth(1))
                .and_then(|p| p.trim().parse().ok())
        },
    )
    .unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    child.kill().unwrap();
    child.wait().unwrap();
    walflow_tests::wait_until(
        "the orphaned postmaster to exit",
        Duration::from_secs(30),
        || {
            // A zombie still has /proc/<pid>; its state is Z.
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Err(_) => true,
                Ok(stat) => stat
                    .split(") ")
                    .nth(1)
                    .is_some_and(|rest| rest.starts_with('Z')),
            }
        },
    )
    .unwrap();
}

/// Every installed PostgreSQL starts with the harness's settings and creates a pgoutput slot.
/// Under CI every major of the matrix must be installed (scripts/test installs them).
#[tokio::test]
async fn every_installed_version_starts_and_creates_a_logical_slot() {
    let installs = pg_installs();
    let missing = installs::missing_majors(&installs);
    if !missing.is_empty() {
        let message = format!("PostgreSQL majors {missing:?} are not installed; {INSTALL_HINT}");
        if std::env::var_os("CI").is_some() {
            panic!("{message}");
        }
        eprintln!("note: {message}");
    }
    assert!(
        !installs.is_empty(),
        "no PostgreSQL server found at all; {INSTALL_HINT}"
    );
    for install in installs {
        let cluster = Cluster::start(ClusterOptions::default().bin_dir(&install.bin_dir))
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL {} ({}) does not start: {e:#}",
                    install.version, install.origin
                )
            });
        assert_eq!(cluster.major(), install.major);
        let db = cluster.new_database().await;
        let client = db.client().await;
        let version: i32 = client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            version as u32 / 10000,
            install.major.max(10),
            "server_version_num {version}"
        );
        client
            .batch_execute("CREATE TABLE t (id int PRIMARY KEY); CREATE PUBLICATION p FOR TABLE t")
            .await
            .unwrap();
        let replication = db.connect_as(TestUser::Scram).await.unwrap();
        let slot: String = replication
            .query_one(
                "SELECT slot_name::text FROM pg_create_logical_replication_slot('s', 'pgoutput')",
                &[],
            )
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL {}: cannot create a slot: {e}; log:\n{}",
                    install.version,
                    cluster.log_tail(20)
                )
            })
            .get(0);
        assert_eq!(slot, "s");
        client
            .batch_execute("INSERT INTO t VALUES (1), (2)")
            .await
            .unwrap();
        // Decoding reads only flushed WAL: wait for the commit to be flushed and decoded.
        let changes = walflow_tests::wait_for_async(
            "the slot to decode the inserts",
            Duration::from_secs(30),
            || async {
                let n: i64 = client
                    .query_one(
                        "SELECT count(*) FROM pg_logical_slot_peek_binary_changes('s', NULL, NULL,
                           'proto_version', '1', 'publication_names', 'p')",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                (n >= 5).then_some(n)
            },
        )
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL {}: {e}", install.version));
        // BEGIN, RELATION, INSERT, INSERT, COMMIT.
        assert_eq!(changes, 5, "PostgreSQL {}", install.version);
        {
            // TLS with the throwaway CA works on every version too.
            let ca = cluster.ca_cert().unwrap();
            let out = cluster
                .psql(
                    &format!(
                        "host=localhost port={} user=postgres dbname=postgres sslmode=verify-full sslrootcert={}",
                        cluster.port(),
                        ca.display()
                    ),
                    "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                )
                .unwrap();
            assert_eq!(out, "t");
        }
    }
}
