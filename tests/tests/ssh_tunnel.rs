//! `[source.ssh]` end to end, against Debian's real sshd and a real PostgreSQL:
//!
//! - walflow runs in a network namespace whose only way to the database is the SSH host
//!   (`walflow_tests::ssh_host`); without `[source.ssh]` it cannot reach it at all;
//! - a pipeline with an initial snapshot (several snapshot connections) and streaming delivers
//!   everything through the tunnel, and rides out the SSH host being killed and restarted;
//! - a link to the SSH host that dies silently is noticed by the SSH keepalives;
//! - `walflow check` reports the tunnel, and TLS with PostgreSQL still runs end to end inside it;
//! - a wrong key, an unknown or mismatched host key and an unreachable SSH host each end in one
//!   sentence, with no checkpoint written and no key material or passphrase printed.

use std::path::Path;
use std::time::{Duration, Instant};

use walflow_tests::ssh_host::{KEY_PASSPHRASE, KeyPair, NetNs, SshHost};
use walflow_tests::{BlackHole, Cluster, TestDb, WalflowOutput, replay, wait_for_async, walflow};

/// The environment variable the configs name for the key's passphrase.
const PASSPHRASE_ENV: &str = "WALFLOW_TEST_SSH_PASSPHRASE";

const TABLE_SQL: &str = "CREATE TABLE t (id int PRIMARY KEY, note text)";

/// An SSH host, and a namespace that reaches the database only through it. The host is dropped
/// (killed) before the namespace its address lives in.
struct Lab {
    ssh: SshHost,
    ns: NetNs,
}

impl Lab {
    fn start() -> Lab {
        let ns = NetNs::create().unwrap_or_else(|e| panic!("{e:#}"));
        let ssh = SshHost::start(ns.host_addr()).unwrap_or_else(|e| panic!("{e:#}"));
        Lab { ssh, ns }
    }

    /// `[source.ssh]` with the accepted key and a known_hosts file listing the host.
    fn ssh_section(&self) -> String {
        self.section(
            &self.ssh.client_key().private,
            &self.ssh.known_hosts().unwrap(),
        )
    }

    fn section(&self, key: &Path, known_hosts: &Path) -> String {
        format!(
            "[source.ssh]\nhost = \"{ip}\"\nport = {port}\nuser = \"{user}\"\n\
             private_key_file = {key}\nprivate_key_passphrase_env = \"{PASSPHRASE_ENV}\"\n\
             known_hosts_file = {known_hosts}\nkeepalive_interval = \"2s\"\nconnect_timeout = \"5s\"\n",
            ip = self.ssh.addr().ip(),
            port = self.ssh.addr().port(),
            user = self.ssh.user(),
            key = walflow_tests::config_file::toml_string(&key.display().to_string()),
            known_hosts =
                walflow_tests::config_file::toml_string(&known_hosts.display().to_string()),
        )
    }

    /// `walflow ARGS` inside the namespace, with the key's passphrase in the environment.
    fn walflow(&self, args: &[&str]) -> walflow_tests::WalflowCommand {
        walflow!()
            .args(args)
            .env(PASSPHRASE_ENV, KEY_PASSPHRASE)
            .in_netns(self.ns.name())
    }

    /// Panics if `output` shows the private key or its passphrase.
    fn assert_no_secrets(&self, text: &str) {
        assert!(
            !text.contains(KEY_PASSPHRASE),
            "the passphrase leaked:\n{text}"
        );
        let key = self.ssh.client_key().private_text();
        for line in key.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!text.contains(line), "the private key leaked:\n{text}");
        }
    }
}

async fn insert_rows(db: &TestDb, ids: std::ops::Range<i32>) {
    let client = db.client().await;
    for chunk in ids.collect::<Vec<_>>().chunks(50) {
        let values: Vec<String> = chunk.iter().map(|i| format!("({i}, 'row {i}')")).collect();
        client
            .batch_execute(&format!("INSERT INTO t VALUES {}", values.join(", ")))
            .await
            .expect("insert");
    }
}

async fn table_db() -> TestDb {
    let db = Cluster::shared().new_database().await;
    db.client().await.batch_execute(TABLE_SQL).await.unwrap();
    db
}

/// Checks that a refused start said `needle` in one error line and wrote no checkpoint.
fn assert_refused(lab: &Lab, out: &WalflowOutput, state_dir: &Path, needle: &str) {
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let error = out
        .stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line:\n{}", out.describe()));
    eprintln!("{error}");
    assert!(error.contains(needle), "{error}");
    assert!(
        !has_checkpoint(state_dir),
        "a refused start wrote a checkpoint:\n{}",
        out.describe()
    );
    lab.assert_no_secrets(&out.stderr);
    lab.assert_no_secrets(&out.stdout);
}

/// How many snapshot records the file sink holds so far (complete lines only: the sink may be
/// writing).
fn snapshot_records(path: &Path) -> usize {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rsplit_once('\n').map_or("", |(done, _)| done);
    complete
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|r| r["value"]["op"] == "r")
        .count()
}

/// Whether `[state] dir` holds a checkpoint (`<slot>.checkpoint.json`).
fn has_checkpoint(state_dir: &Path) -> bool {
    std::fs::read_dir(state_dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            e.file_name()
                .to_string_lossy()
                .ends_with(".checkpoint.json")
        })
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_through_the_tunnel_survives_the_ssh_host_restarting() {
    let lab = Lab::start();
    let db = table_db().await;
    insert_rows(&db, 0..500).await;
    let builder = db
        .config()
        .source("snapshot = \"initial\"")
        .source("snapshot_parallelism = 3")
        .source("receive_timeout = \"6s\"")
        .append(&lab.ssh_section())
        .append("[[sinks]]\ntype = \"file\"\npath = \"out.jsonl\"");
    let slot = builder.slot_name().to_string();
    let config = builder.write().unwrap();
    let out = config.dir().join("out.jsonl");
    let mut child = lab
        .walflow(&["run", "-c", config.path.to_str().unwrap()])
        .env("WALFLOW_LOG", "walflow=debug")
        .spawn()
        .unwrap();
    wait_for_async("the snapshot rows", Duration::from_secs(60), || async {
        (snapshot_records(&out) >= 500).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    insert_rows(&db, 500..600).await;
    let marker = db.emit_marker().await;
    db.wait_for_confirmed(&slot, &marker, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));

    // The SSH host dies with every session; commits go on meanwhile.
    lab.ssh.kill();
    insert_rows(&db, 600..700).await;
    wait_for_async(
        "walflow to notice the SSH host is gone",
        Duration::from_secs(30),
        || async {
            child
                .stderr()
                .contains("cannot reach the SSH host")
                .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    assert!(child.is_running(), "{}", child.stderr());
    for line in child
        .stderr()
        .lines()
        .filter(|l| l.contains("SSH host"))
        .take(2)
    {
        eprintln!("{line}");
    }
    insert_rows(&db, 700..800).await;
    lab.ssh.start_again().unwrap();
    insert_rows(&db, 800..900).await;
    let marker = db.emit_marker().await;
    db.wait_for_confirmed(&slot, &marker, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}\n{}", child.stderr(), lab.ssh.log()));

    child.terminate();
    let output = child.wait_async(Duration::from_secs(30)).await.unwrap();
    assert!(output.status.success(), "{}", output.describe());
    assert!(
        output.stderr.contains("ssh tunnel up"),
        "{}",
        output.describe()
    );
    lab.assert_no_secrets(&output.stderr);
    let records = replay::read_records(&out);
    let snapshot_rows = records.iter().filter(|r| r["value"]["op"] == "r").count();
    assert_eq!(snapshot_rows, 500, "every row of the snapshot, once");
    replay::assert_rebuilds(&db.client().await, &records, &[("t", &[])]).await;
    let logins = lab.ssh.log().matches("Accepted publickey").count();
    assert_eq!(
        logins,
        2,
        "one session before the SSH host died and one after, however many connections:\n{}",
        lab.ssh.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_goes_through_the_tunnel_with_tls_inside_and_nothing_else_reaches_the_database() {
    let lab = Lab::start();
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
    // TLS verified end to end: the certificate names localhost, as the SSH host sees it.
    let config = db
        .config()
        .user(walflow_tests::TestUser::TlsOnly)
        .host("localhost")
        .sslmode("verify-full")
        .sslrootcert(cluster.ca_cert().unwrap())
        .source("heartbeat_interval = \"10s\"")
        .append(&lab.ssh_section())
        .write()
        .unwrap();
    let out = lab
        .walflow(&["check", "-c", config.path.to_str().unwrap()])
        .output_async(Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let tunnel = out
        .stdout
        .lines()
        .find(|l| l.contains("ssh tunnel"))
        .unwrap_or_else(|| panic!("no ssh tunnel line:\n{}", out.describe()));
    assert!(
        tunnel.contains("ok") && tunnel.contains(&lab.ssh.addr().to_string()),
        "{tunnel}"
    );
    eprintln!("{tunnel}");
    assert!(tunnel.contains("known_hosts"), "{tunnel}");
    assert!(
        out.stdout.contains("ready: 0 problems to fix"),
        "{}",
        out.describe()
    );
    lab.assert_no_secrets(&out.stdout);

    // Without the tunnel, the namespace has no way to the database.
    let direct = db
        .config()
        .user(walflow_tests::TestUser::TlsOnly)
        .sslmode("require")
        .write()
        .unwrap();
    let out = lab
        .walflow(&["check", "-c", direct.path.to_str().unwrap()])
        .output_async(Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(
        out.stdout.contains("cannot reach PostgreSQL"),
        "{}",
        out.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_key_pinned_by_fingerprint_is_accepted() {
    let lab = Lab::start();
    let db = table_db().await;
    let fingerprint = lab.ssh.host_key().fingerprint().unwrap();
    let pin = format!("host_key = \"{fingerprint}\"");
    let section = lab
        .ssh_section()
        .lines()
        .filter(|l| !l.starts_with("known_hosts_file"))
        .chain([pin.as_str()])
        .collect::<Vec<_>>()
        .join("\n");
    let config = db.config().append(&section).write().unwrap();
    let out = lab
        .walflow(&["check", "-c", config.path.to_str().unwrap()])
        .output_async(Duration::from_secs(60))
        .await
        .unwrap();
    let tunnel = out
        .stdout
        .lines()
        .find(|l| l.contains("ssh tunnel"))
        .unwrap_or_else(|| panic!("no ssh tunnel line:\n{}", out.describe()));
    assert!(
        tunnel.contains(&fingerprint) && tunnel.contains("pinned"),
        "{tunnel}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_ssh_host_does_not_accept_is_one_sentence() {
    let lab = Lab::start();
    let db = table_db().await;
    let stranger = KeyPair::generate(&lab.ssh.dir().join("stranger"), KEY_PASSPHRASE).unwrap();
    let section = lab.section(&stranger.private, &lab.ssh.known_hosts().unwrap());
    let config = db
        .config()
        .append(&section)
        .append("[[sinks]]\ntype = \"file\"\npath = \"out.jsonl\"")
        .write()
        .unwrap();
    let out = lab
        .walflow(&["run", "-c", config.path.to_str().unwrap()])
        .output_async(Duration::from_secs(60))
        .await
        .unwrap();
    assert_refused(&lab, &out, &config.dir().join("state"), "refused the login");
    assert!(out.stderr.contains(&lab.ssh.user()), "{}", out.describe());
    assert!(
        !out.stderr.contains(&stranger.private_text()[40..80]),
        "{}",
        out.describe()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_host_key_is_refused_naming_its_fingerprint() {
    let lab = Lab::start();
    let db = table_db().await;
    let empty = lab.ssh.dir().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let config = db
        .config()
        .append(&lab.section(&lab.ssh.client_key().private, &empty))
        .append("[[sinks]]\ntype = \"file\"\npath = \"out.jsonl\"")
        .write()
        .unwrap();
    let out = lab
        .walflow(&["run", "-c", config.path.to_str().unwrap()])
        .output_async(Duration::from_secs(60))
        .await
        .unwrap();
    let fingerprint = lab.ssh.host_key().fingerprint().unwrap();
    assert_refused(&lab, &out, &config.dir().join("state"), &fingerprint);
    assert!(
        out.stderr.contains("refused to connect"),
        "{}",
        out.describe()
    );
    assert!(
        out.stderr.contains(&empty.display().to_string()),
        "{}",
        out.describe()
    );
    assert!(
        !lab.ssh.log().contains("Accepted publickey"),
        "walflow logged in to a host it does not know:\n{}",
        lab.ssh.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mismatched_host_key_is_refused() {
    let lab = Lab::start();
    let db = table_db().await;
    // known_hosts names the right address with another host's key.
    let impostor = KeyPair::generate(&lab.ssh.dir().join("impostor"), "").unwrap();
    let mut fields = impostor.public.split_whitespace();
    let wrong = lab.ssh.dir().join("wrong_known_hosts");
    std::fs::write(
        &wrong,
        format!(
            "[{}]:{} {} {}\n",
            lab.ssh.addr().ip(),
            lab.ssh.addr().port(),
            fields.next().unwrap(),
            fields.next().unwrap()
        ),
    )
    .unwrap();
    let config = db
        .config()
        .append(&lab.section(&lab.ssh.client_key().private, &wrong))
        .append("[[sinks]]\ntype = \"file\"\npath = \"out.jsonl\"")
        .write()
        .unwrap();
    let out = lab
        .walflow(&["run", "-c", config.path.to_str().unwrap()])
        .output_async(Duration::from_secs(60))
        .await
        .unwrap();
    let fingerprint = lab.ssh.host_key().fingerprint().unwrap();
    assert_refused(&lab, &out, &config.dir().join("state"), "does not match");
    assert!(out.stderr.contains(&fingerprint), "{}", out.describe());
    assert!(
        !lab.ssh.log().contains("Accepted publickey"),
        "walflow logged in to a host whose key changed:\n{}",
        lab.ssh.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_ssh_host_is_one_sentence_naming_it() {
    let lab = Lab::start();
    let db = table_db().await;
    lab.ssh.kill();
    let addr = lab.ssh.addr().to_string();
    let builder = db
        .config()
        .append(&lab.ssh_section())
        .append("[[sinks]]\ntype = \"file\"\npath = \"out.jsonl\"");
    let config = builder.write().unwrap();
    let out = lab
        .walflow(&["check", "-c", config.path.to_str().unwrap()])
        .output_async(Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let tunnel = out
        .stdout
        .lines()
        .find(|l| l.contains("ssh tunnel"))
        .unwrap_or_else(|| panic!("no ssh tunnel line:\n{}", out.describe()));
    eprintln!("{tunnel}");
    assert!(
        tunnel.contains(&format!("cannot reach the SSH host {addr}")),
        "{tunnel}"
    );

    // `walflow run` waits for it, as for a database that is down, saying why.
    let mut child = lab
        .walflow(&["run", "-c", config.path.to_str().unwrap()])
        .spawn()
        .unwrap();
    wait_for_async("the waiting message", Duration::from_secs(30), || async {
        child
            .stderr()
            .contains(&format!("cannot reach the SSH host {addr}"))
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    assert!(child.is_running(), "{}", child.stderr());
    child.terminate();
    let output = child.wait_async(Duration::from_secs(30)).await.unwrap();
    assert!(output.status.success(), "{}", output.describe());
    assert!(!has_checkpoint(&config.dir().join("state")));
    lab.assert_no_secrets(&output.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_ssh_link_is_noticed_by_keepalives_and_nothing_is_lost() {
    let lab = Lab::start();
    let db = table_db().await;
    // receive_timeout far beyond the SSH keepalives (2 s, 3 unanswered): they must notice.
    let builder = db
        .config()
        .source("snapshot = \"never\"")
        .source("receive_timeout = \"60s\"")
        .append(&lab.ssh_section())
        .append("[[sinks]]\ntype = \"file\"\npath = \"out.jsonl\"");
    let slot = builder.slot_name().to_string();
    let config = builder.write().unwrap();
    let mut child = lab
        .walflow(&["run", "-c", config.path.to_str().unwrap()])
        .spawn()
        .unwrap();
    db.wait_for_slot(&slot, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    insert_rows(&db, 0..50).await;
    let marker = db.emit_marker().await;
    db.wait_for_confirmed(&slot, &marker, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));

    let std::net::IpAddr::V4(ip) = lab.ssh.addr().ip() else {
        unreachable!("the namespace's addresses are IPv4")
    };
    let hole =
        BlackHole::drop_traffic(ip, lab.ssh.addr().port()).unwrap_or_else(|e| panic!("{e:#}"));
    let cut = Instant::now();
    insert_rows(&db, 50..100).await;
    wait_for_async(
        "walflow to notice the dead link",
        Duration::from_secs(40),
        || async {
            child
                .stderr()
                .contains("replication connection lost")
                .then_some(())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    let noticed = cut.elapsed();
    eprintln!("noticed after {noticed:?}");
    assert!(
        noticed < Duration::from_secs(25),
        "the keepalives, not receive_timeout, must notice: {noticed:?}"
    );
    assert!(child.is_running(), "{}", child.stderr());
    hole.lift();
    insert_rows(&db, 100..150).await;
    let marker = db.emit_marker().await;
    db.wait_for_confirmed(&slot, &marker, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    child.terminate();
    let output = child.wait_async(Duration::from_secs(30)).await.unwrap();
    assert!(output.status.success(), "{}", output.describe());
    let records = replay::read_records(&config.dir().join("out.jsonl"));
    replay::assert_rebuilds(&db.client().await, &records, &[("t", &[])]).await;
}

/// With no `private_key_file`, walflow logs in with the keys of the SSH agent named by
/// `SSH_AUTH_SOCK` (a real `ssh-agent` holding the accepted key); without an agent it says
/// what to set, in one sentence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ssh_agent_logs_in_when_no_key_file_is_given() {
    let lab = Lab::start();
    let db = table_db().await;
    let socket = lab.ssh.dir().join("agent.sock");
    let mut agent = std::process::Command::new("ssh-agent")
        .args(["-D", "-a"])
        .arg(&socket)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("ssh-agent (Debian openssh-client; scripts/test installs it)");
    wait_for_async("the agent's socket", Duration::from_secs(10), || async {
        socket.exists().then_some(())
    })
    .await
    .unwrap();
    // ssh-add reads the key's passphrase from an askpass program.
    let askpass = lab.ssh.dir().join("askpass.sh");
    std::fs::write(&askpass, format!("#!/bin/sh\necho '{KEY_PASSPHRASE}'\n")).unwrap();
    std::fs::set_permissions(
        &askpass,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let added = std::process::Command::new("ssh-add")
        .arg(&lab.ssh.client_key().private)
        .env("SSH_AUTH_SOCK", &socket)
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("DISPLAY", "none")
        .output()
        .unwrap();
    assert!(added.status.success(), "ssh-add: {added:?}");
    let section = lab
        .ssh_section()
        .lines()
        .filter(|l| !l.starts_with("private_key"))
        .collect::<Vec<_>>()
        .join("\n");
    let config = db.config().append(&section).write().unwrap();
    let path = config.path.to_str().unwrap();
    let out = lab
        .walflow(&["check", "-c", path])
        .env("SSH_AUTH_SOCK", &socket)
        .output_async(Duration::from_secs(60))
        .await
        .unwrap();
    let _ = agent.kill();
    let _ = agent.wait();
    let tunnel = out
        .stdout
        .lines()
        .find(|l| l.contains("ssh tunnel"))
        .unwrap_or_else(|| panic!("no ssh tunnel line:\n{}", out.describe()));
    assert!(tunnel.contains("ok"), "{}", out.describe());

    let without = lab
        .walflow(&["check", "-c", path])
        .env("SSH_AUTH_SOCK", lab.ssh.dir().join("no-agent.sock"))
        .output_async(Duration::from_secs(60))
        .await
        .unwrap();
    assert_ne!(without.code(), Some(0), "{}", without.describe());
    assert!(
        without.stdout.contains("cannot use the SSH agent")
            || without.stderr.contains("cannot use the SSH agent"),
        "{}",
        without.describe()
    );
    lab.assert_no_secrets(&out.stdout);
}
