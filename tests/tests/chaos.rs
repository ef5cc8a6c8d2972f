//! Faults a user meets, against real servers: each case ends either in full recovery (every
//! committed row reaches the sink) or in one clear sentence, a non-zero exit and nothing left
//! behind on the server — never a confirmed position past undelivered data.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use walflow_tests::{Cluster, ConfigFile, TestDb, replay, wait_for_async, walflow};

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// Ids of the rows of `table` the file sink at `out` holds as inserts or snapshot reads.
fn ids_in(out: &Path, table: &str) -> BTreeSet<i64> {
    replay::read_records(out)
        .iter()
        .map(|r| &r["value"])
        .filter(|v| v["source"]["table"] == table && (v["op"] == "c" || v["op"] == "r"))
        .filter_map(|v| v["after"]["id"].as_i64())
        .collect()
}

fn file_sink(config: &walflow_tests::ConfigBuilder) -> ConfigFile {
    config
        .clone()
        .append(
            "[batch]\nmax_events = 64\n\n[[sinks]]\ntype = \"file\"\npath = \"out/events.jsonl\"",
        )
        .write()
        .unwrap()
}

async fn slot_exists(db: &TestDb, slot: &str) -> bool {
    db.client()
        .await
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .is_some()
}

/// The server's current WAL position as text: once the slot reaches it, everything committed
/// so far was delivered.
async fn wal_now(client: &tokio_postgres::Client) -> String {
    client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0)
}

/// Waits until walflow logs that its sink fails and is being retried.
async fn wait_for_retries(child: &walflow_tests::WalflowChild) {
    wait_for_async("the sink to fail", RUN_TIMEOUT, || async {
        child
            .stderr()
            .contains("sink failed; retrying")
            .then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
}

/// Runs until everything committed so far is confirmed, then stops with SIGTERM (exit 0).
async fn run_until_caught_up(db: &TestDb, config: &ConfigFile, slot: &str) {
    let mut child = walflow!("run", "-c", &config.path).spawn().unwrap();
    db.wait_for_slot(slot, RUN_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    let marker = db.emit_marker().await;
    db.wait_for_confirmed(slot, &marker, RUN_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    child.terminate();
    let output = child.wait_async(Duration::from_secs(30)).await.unwrap();
    assert!(output.status.success(), "{}", output.describe());
}

/// Two-phase decoding sends a prepared transaction's rows at PREPARE and, after a restart past
/// it, only its COMMIT PREPARED: a checkpoint must never pass a prepare whose rows are not
/// delivered, even while later transactions are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_a_prepared_transaction_held_loses_nothing() {
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE tp (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let builder = db
        .config()
        .source("tables = [\"public.tp\"]")
        .source("snapshot = \"never\"");
    let config = file_sink(&builder);
    let slot = builder.slot_name().to_string();
    let out = config.dir().join("out/events.jsonl");
    let mut child = walflow!("run", "-c", &config.path).spawn().unwrap();
    db.wait_for_slot(&slot, RUN_TIMEOUT).await.unwrap();

    let preparer = db.client().await;
    preparer
        .batch_execute(
            "BEGIN; INSERT INTO tp SELECT g, 'prepared' FROM generate_series(1, 100) g;
             PREPARE TRANSACTION 'chaos_held';",
        )
        .await
        .unwrap();
    for id in 1001..=1050 {
        client
            .execute("INSERT INTO tp VALUES ($1, 'later')", &[&id])
            .await
            .unwrap();
    }
    // The later commits are delivered (and acknowledged) while the prepared one is held.
    wait_for_async("the later commits in the sink", RUN_TIMEOUT, || async {
        ids_in(&out, "tp").contains(&1050).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    child.kill9();

    client
        .batch_execute("COMMIT PREPARED 'chaos_held'")
        .await
        .unwrap();
    run_until_caught_up(&db, &config, &slot).await;
    let ids = ids_in(&out, "tp");
    let missing: Vec<i64> = (1..=100).filter(|id| !ids.contains(id)).collect();
    assert!(
        missing.is_empty(),
        "{} of the prepared transaction's 100 rows never reached the sink: {missing:?}",
        missing.len()
    );
}

/// A setup `walflow check` marks FAIL (here: no publication and autocreate disabled) must not
/// get a slot, an empty "initial snapshot" and a checkpoint past every existing row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_publication_creates_nothing_and_the_next_run_snapshots_everything() {
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE pre (id int PRIMARY KEY, v text);
             INSERT INTO pre SELECT g, 'before' FROM generate_series(1, 1000) g;",
        )
        .await
        .unwrap();
    let builder = db
        .config()
        .source("tables = [\"public.pre\"]")
        .source("publication_autocreate = \"disabled\"");
    let config = file_sink(&builder);
    let slot = builder.slot_name().to_string();
    let publication = builder.publication_name().to_string();
    let out = config.dir().join("out/events.jsonl");

    let output = walflow!("run", "-c", &config.path)
        .output_async(RUN_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", output.describe());
    let stderr = output.stderr.trim();
    assert!(
        stderr.contains("publication") && stderr.contains("CREATE PUBLICATION"),
        "the error names the publication and its fix: {stderr}"
    );
    assert!(!slot_exists(&db, &slot).await, "a failed start left a slot");
    let state = config.dir().join("state");
    let checkpoints = std::fs::read_dir(&state).map(|d| d.count()).unwrap_or(0);
    assert_eq!(
        checkpoints,
        0,
        "a failed start wrote to {}",
        state.display()
    );

    client
        .batch_execute(&format!(
            "CREATE PUBLICATION {publication} FOR TABLE pre; INSERT INTO pre VALUES (1001, 'after');"
        ))
        .await
        .unwrap();
    run_until_caught_up(&db, &config, &slot).await;
    let ids = ids_in(&out, "pre");
    assert_eq!(ids.len(), 1001, "rows reaching the sink of 1001");
}

/// A start that fails after the slot was created, before any checkpoint names it, drops the
/// slot again (an inactive slot would pin WAL forever). Here the control socket of a
/// read-only source cannot be opened, which only happens once the stream is open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_drops_the_slot_it_created() {
    let db = Cluster::shared().new_database().await;
    db.client()
        .await
        .batch_execute("CREATE TABLE fs (id int PRIMARY KEY)")
        .await
        .unwrap();
    let builder = db
        .config()
        .source("tables = [\"public.fs\"]")
        .source("snapshot = \"never\"")
        .source("read_only = true");
    let config = file_sink(&builder);
    let slot = builder.slot_name().to_string();
    // A directory where the control socket belongs: binding it fails.
    let socket = config
        .dir()
        .join("state")
        .join(format!("{slot}.control.sock"));
    std::fs::create_dir_all(socket.join("occupied")).unwrap();

    let output = walflow!("run", "-c", &config.path)
        .output_async(RUN_TIMEOUT)
        .await
        .unwrap();
    assert!(!output.status.success(), "{}", output.describe());
    assert!(
        output.stderr.contains("control socket"),
        "{}",
        output.describe()
    );
    assert!(
        output.stderr.contains("dropped the slot"),
        "the cleanup is logged: {}",
        output.describe()
    );
    assert!(
        !slot_exists(&db, &slot).await,
        "the failed start left its slot behind"
    );
}

/// A state directory that cannot hold a checkpoint is refused before any slot exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_state_directory_is_refused_before_the_slot_exists() {
    let db = Cluster::shared().new_database().await;
    db.client()
        .await
        .batch_execute("CREATE TABLE sd (id int PRIMARY KEY)")
        .await
        .unwrap();
    let builder = db.config().source("tables = [\"public.sd\"]");
    let config = file_sink(&builder);
    let slot = builder.slot_name().to_string();
    // A plain file where the state directory should be.
    std::fs::write(config.dir().join("state"), b"not a directory").unwrap();

    let output = walflow!("run", "-c", &config.path)
        .output_async(RUN_TIMEOUT)
        .await
        .unwrap();
    assert!(!output.status.success(), "{}", output.describe());
    assert!(
        output.stderr.contains("[state] dir"),
        "{}",
        output.describe()
    );
    assert!(!slot_exists(&db, &slot).await, "a slot was created");
}

/// SIGTERM while the only sink keeps failing: the run ends within seconds with exit 0 and
/// confirms nothing the sink did not take; the next run (with a working sink) delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_sink_outage_exits_promptly_and_loses_nothing() {
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE so (id int PRIMARY KEY)")
        .await
        .unwrap();
    let builder = db
        .config()
        .source("tables = [\"public.so\"]")
        .source("snapshot = \"never\"");
    let slot = builder.slot_name().to_string();
    let down = builder
        .clone()
        .append(&format!(
            "[[sinks]]\ntype = \"http\"\nurl = \"http://127.0.0.1:{}/events\"",
            walflow_tests::free_port()
        ))
        .write()
        .unwrap();
    let mut child = walflow!("run", "-c", &down.path).spawn().unwrap();
    db.wait_for_slot(&slot, RUN_TIMEOUT).await.unwrap();
    client
        .batch_execute("INSERT INTO so SELECT generate_series(1, 20)")
        .await
        .unwrap();
    let written = wal_now(&client).await;
    wait_for_retries(&child).await;
    // Let it retry a few times (backoff grows) before stopping.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let asked = std::time::Instant::now();
    child.terminate();
    let output = child.wait_async(Duration::from_secs(20)).await.unwrap();
    let took = asked.elapsed();
    assert!(output.status.success(), "{}", output.describe());
    assert!(took < Duration::from_secs(15), "SIGTERM took {took:?}");
    assert!(
        !db.slot_reached(&slot, &written).await,
        "the slot was confirmed past rows the sink never took"
    );

    // The same pipeline (same state directory) with a working sink delivers them.
    let text = down.text();
    let sink_at = text.find("[[sinks]]").unwrap();
    let working = format!(
        "{}[[sinks]]\ntype = \"file\"\npath = \"out/events.jsonl\"\n",
        &text[..sink_at]
    );
    let path = down.dir().join("working.toml");
    std::fs::write(&path, working).unwrap();
    let mut child = walflow!("run", "-c", &path).spawn().unwrap();
    let marker = db.emit_marker().await;
    db.wait_for_confirmed(&slot, &marker, RUN_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    child.terminate();
    let output = child.wait_async(Duration::from_secs(30)).await.unwrap();
    assert!(output.status.success(), "{}", output.describe());
    let ids = ids_in(&down.dir().join("out/events.jsonl"), "so");
    assert_eq!(ids, (1..=20).collect(), "rows delivered after the outage");
}

/// Peak RSS any case here may reach, in MiB: faults must not make walflow buffer without bound.
const RSS_BOUND_MIB: u64 = 256;

fn assert_memory_bounded(child: &walflow_tests::WalflowChild) {
    let peak = child.peak_rss_mib().expect("walflow is running");
    eprintln!("peak RSS {peak} MiB");
    assert!(
        peak < RSS_BOUND_MIB,
        "peak RSS {peak} MiB during the fault (bound {RSS_BOUND_MIB} MiB)"
    );
}

/// Inserts single-row transactions into `table` (id, v) from `first` on until `stop`, through
/// outages (a failed statement is retried on a new connection). Returns the next id.
fn spawn_writer(
    db: std::sync::Arc<TestDb>,
    table: &'static str,
    first: i32,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<i32> {
    tokio::spawn(async move {
        let mut id = first;
        let mut client = None;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            if client.is_none() {
                client = db.connect_as(walflow_tests::TestUser::Superuser).await.ok();
            }
            let Some(c) = &client else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let sql = format!(
                "INSERT INTO {table} VALUES ($1::int, md5($1::int::text)) ON CONFLICT DO NOTHING"
            );
            match c.execute(sql.as_str(), &[&id]).await {
                Ok(_) => id += 1,
                Err(e) => {
                    eprintln!("writer: {}", walflow_tests::cluster::error_text(&e));
                    client = None
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        id
    })
}

/// A dedicated server (the test crashes it) and a database on it.
async fn crashable() -> (std::sync::Arc<Cluster>, std::sync::Arc<TestDb>) {
    let cluster = std::sync::Arc::new(
        Cluster::start(walflow_tests::ClusterOptions::default()).expect("a dedicated cluster"),
    );
    let db = std::sync::Arc::new(cluster.new_database().await);
    (cluster, db)
}

/// PostgreSQL crashing (`-m immediate`) mid-stream: walflow reconnects once it is back and the
/// sink rebuilds the table exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crashing_mid_stream_loses_nothing() {
    let (cluster, db) = crashable().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE cs (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let builder = db
        .config()
        .source("tables = [\"public.cs\"]")
        .source("snapshot = \"never\"");
    let config = file_sink(&builder);
    let slot = builder.slot_name().to_string();
    let mut child = walflow!("run", "-c", &config.path).spawn().unwrap();
    db.wait_for_slot(&slot, RUN_TIMEOUT).await.unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = spawn_writer(db.clone(), "cs", 1, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let crashing = cluster.clone();
    tokio::task::spawn_blocking(move || crashing.crash_and_restart(Duration::from_secs(3)))
        .await
        .unwrap()
        .expect("postgres restarts");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.await.unwrap();
    assert!(written > 100, "the writer wrote only {written} rows");
    let client = db.client().await;
    let marker = db.emit_marker().await;
    db.wait_for_confirmed(&slot, &marker, RUN_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    assert!(child.is_running(), "walflow exited: {}", child.stderr());
    assert!(
        child.stderr().contains("reconnecting"),
        "the outage went unnoticed:\n{}",
        child.stderr()
    );
    assert_memory_bounded(&child);
    child.terminate();
    let output = child.wait_async(Duration::from_secs(30)).await.unwrap();
    assert!(output.status.success(), "{}", output.describe());
    let records = replay::read_records(&config.dir().join("out/events.jsonl"));
    replay::assert_rebuilds(&client, &records, &[("cs", &[])]).await;
}

/// PostgreSQL crashing mid-snapshot: the exported snapshot is gone, so walflow stops with one
/// sentence and a non-zero exit; the next run resumes the snapshot and the sink rebuilds the
/// table exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_crashing_mid_snapshot_stops_cleanly_and_the_next_run_finishes() {
    let (cluster, db) = crashable().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE cn (id int PRIMARY KEY, v text);
             INSERT INTO cn SELECT g, md5(g::text) FROM generate_series(1, 300000) g;",
        )
        .await
        .unwrap();
    let builder = db.config().source("tables = [\"public.cn\"]");
    let config = file_sink(&builder);
    let out = config.dir().join("out/events.jsonl");
    let slot = builder.slot_name().to_string();
    let child = walflow!("run", "-c", &config.path)
        .env("WALFLOW_SNAPSHOT_CHUNK_PAGES", "64")
        .spawn()
        .unwrap();
    wait_for_async("snapshot rows", RUN_TIMEOUT, || async {
        (std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0) > 1_000_000).then_some(())
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    assert_memory_bounded(&child);
    let crashing = cluster.clone();
    tokio::task::spawn_blocking(move || crashing.crash_and_restart(Duration::from_secs(1)))
        .await
        .unwrap()
        .expect("postgres restarts");
    let output = child.wait_async(RUN_TIMEOUT).await.unwrap();
    assert!(!output.status.success(), "{}", output.describe());
    let last = output.stderr.trim().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error:") && !last.contains("panicked"),
        "one clear sentence: {}",
        output.describe()
    );
    assert!(slot_exists(&db, &slot).await, "the slot survives the crash");

    let client = db.client().await;
    client
        .batch_execute(
            "UPDATE cn SET v = 'changed' WHERE id % 1000 = 0; DELETE FROM cn WHERE id % 777 = 0;",
        )
        .await
        .unwrap();
    let mut child = walflow!("run", "-c", &config.path).spawn().unwrap();
    let marker = db.emit_marker().await;
    db.wait_for_confirmed(&slot, &marker, Duration::from_secs(180))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    assert!(
        child.stderr().contains("resuming the initial snapshot"),
        "{}",
        child.stderr()
    );
    child.terminate();
    let output = child.wait_async(Duration::from_secs(30)).await.unwrap();
    assert!(output.status.success(), "{}", output.describe());
    replay::assert_rebuilds(&client, &replay::read_records(&out), &[("cn", &[])]).await;
}

/// A small tmpfs mounted for one test; unmounted when dropped (also on panic).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "cannot mount a tmpfs on {} (the test needs root)",
            dir.display()
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// The file sink's filesystem full: walflow retries without confirming what it could not write
/// and without leaving a torn line, and goes on once space is freed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_holds_the_file_sink_back_without_loss_or_torn_lines() {
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE df (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let builder = db
        .config()
        .source("tables = [\"public.df\"]")
        .source("snapshot = \"never\"");
    let config = file_sink(&builder);
    let slot = builder.slot_name().to_string();
    let out_dir = config.dir().join("out");
    let _tmpfs = Tmpfs::mount(&out_dir, "2m");
    // Leave about 256 KiB free.
    let ballast = out_dir.join("ballast");
    std::fs::write(&ballast, vec![0u8; 2 * 1024 * 1024 - 256 * 1024]).unwrap();

    let mut child = walflow!("run", "-c", &config.path).spawn().unwrap();
    db.wait_for_slot(&slot, RUN_TIMEOUT).await.unwrap();
    // About 1.5 MiB of rows: far more than fits.
    client
        .batch_execute(
            "INSERT INTO df SELECT g, repeat(md5(g::text), 40) FROM generate_series(1, 1000) g",
        )
        .await
        .unwrap();
    let written = wal_now(&client).await;
    wait_for_retries(&child).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(child.is_running(), "{}", child.stderr());
    assert!(
        !db.slot_reached(&slot, &written).await,
        "the slot was confirmed past rows the full disk refused"
    );
    let out = out_dir.join("events.jsonl");

    std::fs::remove_file(&ballast).unwrap();
    let marker = db.emit_marker().await;
    db.wait_for_confirmed(&slot, &marker, RUN_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    assert_memory_bounded(&child);
    child.terminate();
    let output = child.wait_async(Duration::from_secs(30)).await.unwrap();
    assert!(output.status.success(), "{}", output.describe());
    replay::assert_rebuilds(&client, &replay::read_records(&out), &[("df", &[])]).await;
}

/// SIGKILL while a replaced plugin is being loaded: the restarted run (with the new plugin)
/// delivers every event the killed one did not confirm, each stamped by one of the versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_plugin_hot_reload_loses_nothing() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = std::process::Command::new(root.join("scripts/build-plugins"))
        .arg("--rust-only")
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "scripts/build-plugins failed");
    let plugins = root.join("plugins/target/dist");
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE hk (id int PRIMARY KEY, version text)")
        .await
        .unwrap();
    let builder = db
        .config()
        .source("tables = [\"public.hk\"]")
        .source("snapshot = \"never\"")
        .append("[[plugins]]\npath = \"tag.wasm\"");
    let config = file_sink(&builder);
    let slot = builder.slot_name().to_string();
    let tag = config.dir().join("tag.wasm");
    std::fs::copy(plugins.join("tag_v1.wasm"), &tag).unwrap();
    let mut child = walflow!("run", "-c", &config.path).spawn().unwrap();
    db.wait_for_slot(&slot, RUN_TIMEOUT).await.unwrap();
    let insert = |from: i32, to: i32| {
        format!("INSERT INTO hk SELECT g, 'source' FROM generate_series({from}, {to}) g")
    };
    for n in 0..20 {
        client
            .batch_execute(&insert(n * 10, n * 10 + 9))
            .await
            .unwrap();
    }
    let next = config.dir().join("tag.wasm.new");
    std::fs::copy(plugins.join("tag_v2.wasm"), &next).unwrap();
    std::fs::rename(&next, &tag).unwrap();
    for n in 20..30 {
        client
            .batch_execute(&insert(n * 10, n * 10 + 9))
            .await
            .unwrap();
    }
    // Mid-reload: the new component is still being compiled and swapped in.
    tokio::time::sleep(Duration::from_millis(30)).await;
    child.kill9();
    for n in 30..40 {
        client
            .batch_execute(&insert(n * 10, n * 10 + 9))
            .await
            .unwrap();
    }
    let restarted = walflow!("run", "-c", &config.path).spawn().unwrap();
    let marker = db.emit_marker().await;
    db.wait_for_confirmed(&slot, &marker, RUN_TIMEOUT)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", restarted.stderr()));
    let mut restarted = restarted;
    restarted.terminate();
    let output = restarted.wait_async(Duration::from_secs(30)).await.unwrap();
    assert!(output.status.success(), "{}", output.describe());

    let records = replay::read_records(&config.dir().join("out/events.jsonl"));
    let mut versions: std::collections::BTreeMap<i64, BTreeSet<String>> = Default::default();
    for r in records
        .iter()
        .filter(|r| r["value"]["source"]["table"] == "hk")
    {
        let after = &r["value"]["after"];
        versions
            .entry(after["id"].as_i64().unwrap())
            .or_default()
            .insert(after["version"].as_str().unwrap_or("none").to_string());
    }
    let ids: Vec<i64> = versions.keys().copied().collect();
    assert_eq!(ids, (0..400).collect::<Vec<_>>(), "every row delivered");
    for (id, seen) in &versions {
        assert!(
            seen.iter().all(|v| v == "v1" || v == "v2"),
            "row {id} went through no plugin version: {seen:?}"
        );
    }
    assert!(
        (300..400).all(|id| versions[&id].contains("v2")),
        "rows written after the restart went through v2"
    );
}
