//! End to end through `walflow run`: real changes from the shared cluster, real destinations,
//! the slot's `confirmed_flush_lsn` watched from PostgreSQL.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use walflow_tests::{Cluster, ClusterOptions, walflow};

use super::brokers::{Broker, Kind};

const SOURCE_SQL: &str = "
    CREATE TABLE orders (
        id int PRIMARY KEY,
        amount numeric(14,3),
        payload bytea,
        doc jsonb,
        at timestamptz,
        note text,
        tags text[]
    );
    CREATE TABLE items (id bigint PRIMARY KEY, name text NOT NULL, price float8);
    ALTER TABLE items REPLICA IDENTITY FULL;
";

async fn random_transaction(client: &tokio_postgres::Client, rng: &mut rand::rngs::StdRng) {
    let mut sql = String::from("BEGIN;");
    for _ in 0..rng.random_range(1..6) {
        let id = rng.random_range(1..60);
        let stmt = match rng.random_range(0..100) {
            0..35 => format!(
                "INSERT INTO orders VALUES ({id}, {}.{:03}, decode('{:08x}', 'hex'), '{{\"n\": {id}}}', now() - interval '{} seconds', repeat('x', {}), ARRAY['a', NULL, 'b \"q\"']) ON CONFLICT (id) DO UPDATE SET amount = excluded.amount, note = excluded.note;",
                rng.random_range(0..100_000),
                rng.random_range(0..1000),
                rng.random::<u32>(),
                rng.random_range(0..100_000),
                rng.random_range(0..50),
            ),
            35..55 => format!(
                "INSERT INTO items VALUES ({id}, 'item {id}', {}) ON CONFLICT (id) DO UPDATE SET price = excluded.price;",
                rng.random_range(0..100_000) as f64 / 8.0
            ),
            55..68 => format!(
                "UPDATE orders SET amount = amount + 1, doc = doc || '{{\"u\": true}}' WHERE id = {id};"
            ),
            68..74 => format!(
                "UPDATE orders SET id = id + 1000 WHERE id = {id} AND NOT EXISTS (SELECT 1 FROM orders WHERE id = {id} + 1000);"
            ),
            74..80 => format!("UPDATE items SET name = name || '!' WHERE id = {id};"),
            80..88 => format!("DELETE FROM orders WHERE id = {id} OR id = {id} + 1000;"),
            88..97 => format!("DELETE FROM items WHERE id = {id};"),
            _ => "TRUNCATE items;".to_string(),
        };
        sql.push_str(&stmt);
    }
    sql.push_str("COMMIT;");
    client
        .batch_execute(&sql)
        .await
        .expect("workload transaction");
}

/// Every row of a table as text, in key order.
async fn dump(client: &tokio_postgres::Client, table: &str) -> Vec<String> {
    client
        .query(&format!("SELECT t::text FROM {table} t ORDER BY 1"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replica_equals_the_source_after_a_random_workload_and_sigkill() {
    let source = Cluster::shared().new_database().await;
    let client = source.client().await;
    client.batch_execute(SOURCE_SQL).await.unwrap();
    let target_cluster = Cluster::start(ClusterOptions::default()).unwrap();
    let target = target_cluster.new_database().await;
    let target_client = target.client().await;
    target_client.batch_execute(SOURCE_SQL).await.unwrap();

    let config = source
        .config()
        .source("tables = [\"public.orders\", \"public.items\"]")
        .source("snapshot = \"never\"")
        .append(&format!(
            "[batch]\nmax_events = 64\nmax_wait = \"20ms\"\n\n[[sinks]]\ntype = \"postgres\"\nurl = \"{}\"\n",
            target.url("postgres")
        ))
        .write()
        .unwrap();
    let slot = source.config().slot_name().to_string();
    let seed: u64 = rand::random();
    eprintln!("workload seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut child = walflow!("run", "-c", &config.path).spawn().unwrap();
    source
        .wait_for_slot(&slot, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    for round in 0..3 {
        for _ in 0..rng.random_range(40..120) {
            random_transaction(&client, &mut rng).await;
        }
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..1500))).await;
        assert!(
            child.is_running(),
            "walflow exited early (round {round}):\n{}",
            child.stderr()
        );
        child.kill9();
        child = walflow!("run", "-c", &config.path).spawn().unwrap();
    }
    for _ in 0..30 {
        random_transaction(&client, &mut rng).await;
    }
    let end = source.emit_marker().await;
    source
        .wait_for_confirmed(&slot, &end, Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    child.terminate();
    let output = child.wait_async(Duration::from_secs(30)).await.unwrap();
    assert!(output.status.success(), "{}", output.describe());

    for table in ["orders", "items"] {
        let (want, got) = (
            dump(&client, table).await,
            dump(&target_client, table).await,
        );
        assert!(
            !want.is_empty() || table == "items",
            "the workload left rows in {table}"
        );
        assert_eq!(
            got, want,
            "replica table {table} differs from the source (seed {seed})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_redis_holds_back_the_slot_until_it_is_back() {
    let mut redis = Broker::start(Kind::Redis);
    let source = Cluster::shared().new_database().await;
    let client = source.client().await;
    client
        .batch_execute("CREATE TABLE t (id int PRIMARY KEY, v text)")
        .await
        .unwrap();
    let config = source
        .config()
        .source("tables = [\"public.t\"]")
        .source("snapshot = \"never\"")
        .source("topic_prefix = \"app\"")
        .append(&format!(
            "[[sinks]]\ntype = \"redis\"\nurl = \"{}\"\n",
            redis.url()
        ))
        .write()
        .unwrap();
    let slot = source.config().slot_name().to_string();
    let mut child = walflow!("run", "-c", &config.path).spawn().unwrap();
    source
        .wait_for_slot(&slot, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    let insert = |from: i32, to: i32| {
        format!("INSERT INTO t SELECT g, 'v' || g FROM generate_series({from}, {to}) g")
    };
    client.batch_execute(&insert(1, 200)).await.unwrap();
    let first = source.emit_marker().await;
    source
        .wait_for_confirmed(&slot, &first, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));

    redis.stop();
    for n in 0..10 {
        client
            .batch_execute(&insert(201 + n * 30, 230 + n * 30))
            .await
            .unwrap();
    }
    let second = source.emit_marker().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        assert!(
            !source.slot_reached(&slot, &second).await,
            "the slot was confirmed past changes redis never got"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        child.is_running(),
        "walflow gave up on a retryable failure:\n{}",
        child.stderr()
    );

    redis.restart();
    source
        .wait_for_confirmed(&slot, &second, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    child.terminate();
    child.wait_async(Duration::from_secs(30)).await.unwrap();

    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg("app.public.t")
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let ids: std::collections::BTreeSet<i64> = reply
        .ids
        .iter()
        .map(|e| {
            let v: Vec<u8> = e.get("value").unwrap();
            let r: serde_json::Value = serde_json::from_slice(&v).unwrap();
            r["value"]["after"]["id"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(ids, (1..=500).collect(), "every inserted row reached redis");
}
