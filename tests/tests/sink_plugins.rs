//! Sink plugins (`[[sinks]] type = "plugin"`) end to end: the example webhook sink delivering a
//! real workload to an HTTP server in the test, nothing confirmed while the webhook fails, a
//! plugin that tries a host off its allow list getting an error and no connection, and the
//! configurations that must be refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value as Json;
use walflow_tests::{Cluster, TestDb, walflow};

#[allow(dead_code)]
#[path = "sinks/http_server.rs"]
mod http_server;
#[allow(dead_code)]
#[path = "plugins/support.rs"]
mod support;

use http_server::Endpoint;

async fn db_with_table() -> TestDb {
    let db = Cluster::shared().new_database().await;
    db.client()
        .await
        .batch_execute(
            "CREATE TABLE orders (id int PRIMARY KEY, note text, payload bytea, amount numeric)",
        )
        .await
        .unwrap();
    db
}

fn plugin_sink(db: &TestDb, plugin: &str, url: &str, allow: &str) -> walflow_tests::ConfigFile {
    db.config()
        .source("snapshot = \"never\"")
        .append(&format!(
            "[batch]\nmax_events = 50\nmax_wait = \"20ms\"\n\n[[sinks]]\ntype = \"plugin\"\npath = \"{}\"\nallow_hosts = {allow}\ntimeout = \"5s\"\nconfig = {{ url = \"{url}\" }}",
            support::plugin(plugin).display()
        ))
        .write()
        .unwrap()
}

/// Records the webhook example posted, as (id, note) of each `after`.
fn posted(endpoint: &Endpoint) -> Vec<(i64, String)> {
    let seen = endpoint.seen.lock().unwrap();
    let mut out = Vec::new();
    for (_, body) in &seen.accepted {
        let records: Vec<Json> = serde_json::from_slice(body).expect("a JSON array");
        for r in records.into_iter().filter(|r| r["op"] != "m") {
            assert_eq!(r["table"], "orders", "{r}");
            assert!(r["topic"].as_str().is_some_and(|t| t.ends_with("orders")));
            out.push((
                r["after"]["id"].as_i64().unwrap(),
                r["after"]["note"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_example_delivers_a_workload_and_nothing_is_confirmed_before() {
    // The first five requests fail: the batch is retried, and the slot must not move meanwhile.
    let endpoint = Endpoint::start(vec![(503, None); 5]).await;
    let db = db_with_table().await;
    let allow = format!("[\"127.0.0.1:{}\"]", endpoint.addr.port());
    let config = plugin_sink(&db, "webhook_sink", &endpoint.url(), &allow);
    let slot = db.config().slot_name().to_string();
    let mut child = walflow!("run", "-c", &config.path).spawn().unwrap();
    db.wait_for_slot(&slot, Duration::from_secs(30))
        .await
        .unwrap();
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO orders SELECT g, 'n' || g, '\\x0102', g * 1.5 FROM generate_series(1, 120) g;
             UPDATE orders SET note = 'changed' WHERE id <= 10;",
        )
        .await
        .unwrap();
    let marker = db.emit_marker().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(
        !db.slot_reached(&slot, &marker).await,
        "confirmed while the webhook was failing"
    );
    db.wait_for_confirmed(&slot, &marker, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    child.terminate();
    let output = child.wait_async(Duration::from_secs(30)).await.unwrap();
    assert!(output.status.success(), "{}", output.describe());

    let posted = posted(&endpoint);
    assert_eq!(posted.len(), 130, "120 inserts and 10 updates, once each");
    let mut inserted: Vec<i64> = posted[..120].iter().map(|(id, _)| *id).collect();
    inserted.sort();
    assert_eq!(inserted, (1..=120).collect::<Vec<_>>());
    assert!(
        posted[120..]
            .iter()
            .all(|(id, note)| *id <= 10 && note == "changed")
    );
    let answers: Vec<u16> = endpoint
        .seen
        .lock()
        .unwrap()
        .answers
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(&answers[..5], &[503; 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_off_the_allow_list_gets_an_error_and_no_connection() {
    let forbidden = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = forbidden.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        while forbidden.accept().await.is_ok() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let allowed = Endpoint::start(vec![]).await;
    let db = db_with_table().await;
    let config = plugin_sink(
        &db,
        "http_probe",
        &format!("http://127.0.0.1:{port}/steal"),
        &format!("[\"127.0.0.1:{}\"]", allowed.addr.port()),
    );
    let slot = db.config().slot_name().to_string();
    let child = walflow!("run", "-c", &config.path).spawn().unwrap();
    db.wait_for_slot(&slot, Duration::from_secs(30))
        .await
        .unwrap();
    db.client()
        .await
        .batch_execute("INSERT INTO orders VALUES (1, 'x')")
        .await
        .unwrap();
    let output = child.wait_async(Duration::from_secs(60)).await.unwrap();
    assert!(!output.status.success(), "{}", output.describe());
    assert!(
        output.stderr.contains("not in this sink's allow_hosts"),
        "{}",
        output.describe()
    );
    assert_eq!(
        connections.load(Ordering::SeqCst),
        0,
        "the forbidden host was contacted"
    );
    assert!(allowed.seen.lock().unwrap().answers.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sink_plugin_configurations_are_refused_with_one_sentence() {
    let db = db_with_table().await;
    for (plugin, allow, expected) in [
        (
            "webhook_sink",
            "[\"http://hooks.example.com\"]",
            "\"http://hooks.example.com\" is not a bare host",
        ),
        ("webhook_sink", "[\"127.0.0.1:99999\"]", "invalid port"),
        ("webhook_sink", "[\"\"]", "is empty"),
        ("table_filter", "[]", "is a filter plugin, not a sink"),
    ] {
        let config = plugin_sink(&db, plugin, "http://127.0.0.1:9/x", allow);
        let output = walflow!("run", "-c", &config.path)
            .output_async(Duration::from_secs(60))
            .await
            .unwrap();
        assert!(
            !output.status.success(),
            "{plugin} {allow}: {}",
            output.describe()
        );
        let line = output
            .stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .unwrap_or_default();
        assert!(line.contains(expected), "{plugin} {allow}: {line}");
        assert_eq!(
            output
                .stderr
                .lines()
                .filter(|l| l.starts_with("error:"))
                .count(),
            1
        );
    }
}
