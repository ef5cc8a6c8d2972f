//! The connection to PostgreSQL going away and coming back, end to end with `walflow run`:
//!
//! - a link that dies silently (packets dropped by nftables, no RST) is noticed within
//!   `receive_timeout`, shows in `/health`, and once the link is back walflow reconnects and
//!   delivers every row committed meanwhile;
//! - a database that is down when walflow starts is waited for, like one that goes down later;
//! - what waiting cannot fix (a missing database, a wrong password) fails at once;
//! - every socket walflow opens to PostgreSQL has TCP keepalive on.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use walflow_tests::{
    BlackHole, Cluster, ClusterOptions, PASSWORD_ENV, TestDb, TestUser, WRONG_HOST, replay,
    wait_for_async, walflow,
};

/// `GET path` on the metrics listener: the status line and the body, `None` if nothing answers.
fn http_get(addr: &str, path: &str) -> Option<(String, String)> {
    use std::io::{Read, Write};
    let mut conn = std::net::TcpStream::connect(addr).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    conn.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    conn.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_string(), body.trim().to_string()))
}

/// `/health`: `Some(Ok(()))` on 200, `Some(Err(body))` otherwise.
fn health(addr: &str) -> Option<Result<(), String>> {
    let (status, body) = http_get(addr, "/health")?;
    Some(if status.contains(" 200 ") {
        Ok(())
    } else {
        Err(format!("{status}: {body}"))
    })
}

fn free_local_addr() -> String {
    format!("127.0.0.1:{}", walflow_tests::free_port())
}

async fn insert_rows(db: &TestDb, ids: std::ops::Range<i32>) {
    let client = db.client().await;
    for chunk in ids.collect::<Vec<_>>().chunks(10) {
        let values: Vec<String> = chunk.iter().map(|i| format!("({i}, 'row {i}')")).collect();
        client
            .batch_execute(&format!("INSERT INTO t VALUES {}", values.join(", ")))
            .await
            .expect("insert");
    }
}

const TABLE_SQL: &str = "CREATE TABLE t (id int PRIMARY KEY, note text)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_dead_link_is_noticed_and_everything_committed_meanwhile_arrives() {
    // The server must notice the dead link too, or its walsender keeps the slot (walflow retries
    // "slot is active" meanwhile); production servers do the same with their own timeout.
    let cluster = Cluster::start(
        ClusterOptions::default()
            .without_tls()
            .setting("wal_sender_timeout", "'8s'"),
    )
    .unwrap();
    let db = cluster.new_database().await;
    db.client().await.batch_execute(TABLE_SQL).await.unwrap();
    let metrics = free_local_addr();
    // walflow talks to the server at 127.0.0.2, the test at 127.0.0.1: only walflow's packets
    // fall into the black hole.
    let builder = db
        .config()
        .host(WRONG_HOST)
        .source("snapshot = \"never\"")
        .source("receive_timeout = \"4s\"")
        .append(&format!(
            "[metrics]\nlisten = \"{metrics}\"\n\n[batch]\nmax_wait = \"20ms\"\n\n[[sinks]]\ntype = \"file\"\npath = \"out.jsonl\""
        ));
    let slot = builder.slot_name().to_string();
    let config = builder.write().unwrap();
    let mut child = walflow!("run", "-c", &config.path)
        .env("WALFLOW_LOG", "walflow=debug")
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
    assert_eq!(health(&metrics), Some(Ok(())));

    let server = WRONG_HOST.parse::<Ipv4Addr>().unwrap();
    let hole = BlackHole::drop_traffic(server, cluster.port()).unwrap_or_else(|e| panic!("{e:#}"));
    let cut = Instant::now();
    insert_rows(&db, 50..100).await;
    let reason = wait_for_async(
        "/health to report the dead link",
        Duration::from_secs(15),
        || async { health(&metrics).and_then(Result::err) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    let noticed = cut.elapsed();
    eprintln!("unhealthy after {noticed:?}: {reason}");
    assert!(
        noticed < Duration::from_secs(4 + 6),
        "noticed only after {noticed:?} with receive_timeout = 4s"
    );
    assert!(reason.contains("503"), "{reason}");
    assert!(
        reason.contains("postgresql"),
        "the reason names the cause: {reason}"
    );
    // The outage goes on for a while, with commits walflow cannot see yet.
    let mut next = 100;
    while cut.elapsed() < Duration::from_secs(20) {
        insert_rows(&db, next..next + 5).await;
        next += 5;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        health(&metrics).is_some_and(|h| h.is_err()),
        "still unhealthy while cut off"
    );
    assert!(
        child.is_running(),
        "walflow must ride out the outage:\n{}",
        child.stderr()
    );

    hole.lift();
    let back = Instant::now();
    wait_for_async("walflow to reconnect", Duration::from_secs(25), || async {
        health(&metrics).and_then(Result::ok)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    eprintln!(
        "healthy again {:?} after the link came back",
        back.elapsed()
    );
    insert_rows(&db, 1000..1020).await;
    let marker = db.emit_marker().await;
    db.wait_for_confirmed(&slot, &marker, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    child.terminate();
    let output = child.wait_async(Duration::from_secs(30)).await.unwrap();
    assert!(output.status.success(), "{}", output.describe());
    assert!(
        output.stderr.contains("nothing received for 4s"),
        "the receive timeout, not TCP, noticed the dead link:\n{}",
        output.stderr
    );
    let records = replay::read_records(&config.dir().join("out.jsonl"));
    replay::assert_rebuilds(&db.client().await, &records, &[("t", &[])]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_down_at_startup_is_waited_for() {
    let cluster = Cluster::start(ClusterOptions::default().without_tls()).unwrap();
    let db = cluster.new_database().await;
    db.client().await.batch_execute(TABLE_SQL).await.unwrap();
    insert_rows(&db, 0..30).await;
    let metrics = free_local_addr();
    let builder = db.config().append(&format!(
        "[metrics]\nlisten = \"{metrics}\"\n\n[batch]\nmax_wait = \"20ms\"\n\n[[sinks]]\ntype = \"file\"\npath = \"out.jsonl\""
    ));
    let slot = builder.slot_name().to_string();
    let config = builder.write().unwrap();
    cluster.stop();

    let mut child = walflow!("run", "-c", &config.path).spawn().unwrap();
    let waiting = "postgresql is not reachable; waiting for it";
    wait_for_async(
        "walflow to retry a few times",
        Duration::from_secs(20),
        || async { (child.stderr().matches(waiting).count() >= 3).then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    assert!(child.is_running(), "{}", child.stderr());
    let unhealthy = health(&metrics).expect("metrics are served while waiting");
    let reason = unhealthy.expect_err("unhealthy while the database is down");
    assert!(reason.contains("cannot reach PostgreSQL"), "{reason}");

    cluster.start_again().unwrap();
    let started = Instant::now();
    db.wait_for_slot(&slot, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    eprintln!("connected {:?} after the server started", started.elapsed());
    insert_rows(&db, 30..60).await;
    let marker = db.emit_marker().await;
    db.wait_for_confirmed(&slot, &marker, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    assert_eq!(health(&metrics), Some(Ok(())));
    child.terminate();
    let output = child.wait_async(Duration::from_secs(30)).await.unwrap();
    assert!(output.status.success(), "{}", output.describe());
    assert!(
        output.stderr.contains("postgresql is reachable again"),
        "{}",
        output.describe()
    );
    let records = replay::read_records(&config.dir().join("out.jsonl"));
    replay::assert_rebuilds(&db.client().await, &records, &[("t", &[])]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_while_waiting_for_the_database_exits_cleanly() {
    let port = free_local_addr().rsplit_once(':').unwrap().1.to_string();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("walflow.toml");
    std::fs::write(
        &config,
        format!(
            "[source]\nurl = \"postgres://postgres@127.0.0.1:{port}/db\"\nsslmode = \"disable\"\n\n[state]\ndir = \"state\"\n\n[[sinks]]\ntype = \"stdout\"\n"
        ),
    )
    .unwrap();
    let mut child = walflow!("run", "-c", &config).spawn().unwrap();
    wait_for_async(
        "walflow to wait for the database",
        Duration::from_secs(20),
        || async { child.stderr().contains("waiting for it").then_some(()) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    child.terminate();
    let output = child.wait_async(Duration::from_secs(10)).await.unwrap();
    assert!(output.status.success(), "{}", output.describe());
}

/// What waiting cannot fix fails at once, with one sentence and a non-zero exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_database_or_a_wrong_password_fails_at_once() {
    let db = Cluster::shared().new_database().await;
    let cases = [
        (
            db.config().database("no_such_database"),
            None,
            "database \"no_such_database\" does not exist",
        ),
        (
            db.config().user(TestUser::Scram),
            Some("not-the-password"),
            "rejected the login",
        ),
    ];
    for (builder, password, expected) in cases {
        let config = builder
            .source("snapshot = \"never\"")
            .append("[[sinks]]\ntype = \"stdout\"")
            .write()
            .unwrap();
        let mut command = walflow!("run", "-c", &config.path);
        if let Some(password) = password {
            command = command.env(PASSWORD_ENV, password);
        }
        let started = Instant::now();
        let output = command.output_async(Duration::from_secs(20)).await.unwrap();
        assert!(!output.status.success(), "{}", output.describe());
        assert!(output.stderr.contains(expected), "{}", output.describe());
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "took {:?}: {}",
            started.elapsed(),
            output.describe()
        );
        assert!(
            !output.stderr.contains("waiting for it"),
            "{}",
            output.describe()
        );
    }
}

/// Every TCP socket the library opens to PostgreSQL — replication, SQL — probes a silent peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_postgres_socket_has_keepalive_on() {
    use walflow::pg::{ConnectOptions, Connection, connect_sql};
    let db = Cluster::shared().new_database().await;
    let source = walflow::config::SourceConfig {
        url: db.url("postgres"),
        sslmode: walflow::config::SslMode::Disable,
        ..Default::default()
    };
    let opts = ConnectOptions::from_source(&source).unwrap();
    let replication = Connection::connect(&opts, true).await.unwrap();
    let reader = Connection::connect(&opts, false).await.unwrap();
    let sql = connect_sql(&source).await.unwrap();
    sql.simple_query("SELECT 1").await.unwrap();
    let port = db.cluster().port();
    let pid = std::process::id();
    // `ss -o` shows the armed timer; an idle socket with keepalive on shows `keepalive`. (The
    // harness's own short-lived sessions from this process may show up too; tokio-postgres
    // turns keepalive on by default.)
    let sockets = wait_for_async("three idle sockets", Duration::from_secs(10), || async {
        let output = std::process::Command::new("ss")
            .args([
                "-tnpoH",
                "state",
                "established",
                "dst",
                &format!("127.0.0.1:{port}"),
            ])
            .output()
            .expect("ss (Debian iproute2)");
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let ours: Vec<String> = text
            .lines()
            .filter(|l| l.contains(&format!("pid={pid},")))
            .map(str::to_string)
            .collect();
        (ours.len() >= 3 && ours.iter().all(|l| l.contains("timer:(keepalive"))).then_some(ours)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}", sockets.join("\n"));
    drop(sql);
    reader.close().await;
    replication.close().await;
}

/// The startup wait's probe session must be gone before walflow opens the real one, or a server
/// with a single walsender slot refuses the second ("too many clients").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_probe_frees_its_walsender_slot_at_once() {
    use walflow::pg::{ConnectOptions, Connection};
    let cluster = Cluster::start(
        ClusterOptions::default()
            .without_tls()
            .setting("max_wal_senders", "1"),
    )
    .unwrap();
    let db = cluster.new_database().await;
    let source = walflow::config::SourceConfig {
        url: db.url("postgres"),
        sslmode: walflow::config::SslMode::Disable,
        ..Default::default()
    };
    let opts = ConnectOptions::from_source(&source).unwrap();
    for attempt in 0..20 {
        let conn = Connection::connect(&opts, true)
            .await
            .unwrap_or_else(|e| panic!("attempt {attempt}: {e}"));
        conn.close_and_wait(Duration::from_secs(2)).await;
    }
}
