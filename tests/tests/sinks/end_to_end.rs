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

/// Values that ISO-8601 and JSON arrays make awkward, and a keyless table, on both sides.
const AWKWARD_SQL: &str = "
    CREATE TYPE pair AS (n int, s text);
    CREATE TABLE dates (id int PRIMARY KEY, d date, ts timestamp, tstz timestamptz);
    CREATE TABLE arrays (
        id int PRIMARY KEY,
        pairs pair[],
        ranges int4range[],
        spans tstzrange[],
        bounded int[],
        grid text[]
    );
    CREATE TABLE keyless (n int, s text, j json);
    ALTER TABLE keyless REPLICA IDENTITY FULL;
";

/// Rows the initial snapshot copies (`dates` has only columns read in binary).
const AWKWARD_SNAPSHOT_SQL: &str = r#"
    INSERT INTO dates VALUES
        (1, '2040-04-10 BC', '2040-04-10 01:02:03.5 BC', '2040-04-10 01:02:03.5+00 BC'),
        (2, '10000-01-01', '12024-01-02 03:04:05', '1850-01-01 00:00:00+00'),
        (3, '0001-01-01 BC', '0001-12-31 23:59:59 BC', '1883-11-18 12:00:00-04:56:02');
    INSERT INTO arrays VALUES (
        1,
        ARRAY[ROW(1, 'a'), ROW(2, 'b "q", c'), NULL]::pair[],
        ARRAY['[1,5)', 'empty']::int4range[],
        ARRAY['[2024-01-01 00:00+00,2024-02-01 00:00+00)']::tstzrange[],
        '[2:3]={1,2}',
        '[0:1][-1:0]={{a,b},{c,NULL}}'
    );
    INSERT INTO keyless VALUES (1, 'a', '{"x": 1}'), (1, 'a', '{"x": 1}'), (2, NULL, NULL);
"#;

/// Changes streamed after the snapshot.
const AWKWARD_CHANGES_SQL: &str = r#"
    INSERT INTO dates VALUES
        (4, '4713-01-01 BC', '4713-01-01 00:00:00 BC', '1800-06-01 12:00:00.25-04:56:02'),
        (5, '5874897-12-31', '294276-12-31 23:59:59', '294276-12-31 23:59:59+00'),
        (6, '0044-03-15 BC', '0044-03-15 12:00:00 BC', '0044-03-15 12:00:00+00 BC');
    UPDATE dates SET d = d - 1, tstz = tstz - interval '1 second' WHERE id = 1;
    INSERT INTO arrays VALUES
        (2, '{"(3,\"x,y\")"}', '{"[3,4]"}', NULL, '[-5:-4]={7,8}', '{{x}}');
    UPDATE arrays SET bounded = '[0:0]={9}', pairs = pairs || ROW(4, NULL)::pair WHERE id = 1;
    INSERT INTO keyless VALUES (3, 'c', '[1]'), (3, 'c', '[1]'), (4, NULL, '{}');
    UPDATE keyless SET s = 'b' WHERE ctid = (SELECT min(ctid) FROM keyless WHERE n = 1);
    UPDATE keyless SET s = 'n' WHERE n = 2;
    DELETE FROM keyless WHERE ctid = (SELECT min(ctid) FROM keyless WHERE n = 3);
    DELETE FROM keyless WHERE n = 4;
"#;

/// Every row of a table as text in UTC, sorted (keyless tables have no better order).
async fn dump_utc(client: &tokio_postgres::Client, table: &str) -> Vec<String> {
    client.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    dump(client, table).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replica_keeps_bc_dates_array_bounds_and_keyless_rows() {
    let source = Cluster::shared().new_database().await;
    let client = source.client().await;
    client.batch_execute(AWKWARD_SQL).await.unwrap();
    // Before 1883 New York kept local mean time: offsets such as -04:56:02.
    client
        .batch_execute(&format!(
            "ALTER DATABASE \"{}\" SET TimeZone = 'America/New_York'",
            source.name()
        ))
        .await
        .unwrap();
    client.batch_execute(AWKWARD_SNAPSHOT_SQL).await.unwrap();
    let target_cluster = Cluster::start(ClusterOptions::default()).unwrap();
    let target = target_cluster.new_database().await;
    let target_client = target.client().await;
    target_client.batch_execute(AWKWARD_SQL).await.unwrap();

    let config = source
        .config()
        .source("tables = [\"public.dates\", \"public.arrays\", \"public.keyless\"]")
        .source("snapshot = \"initial\"")
        .append(&format!(
            "[[sinks]]\ntype = \"postgres\"\nurl = \"{}\"\n",
            target.url("postgres")
        ))
        .write()
        .unwrap();
    let slot = source.config().slot_name().to_string();
    let child = walflow!("run", "-c", &config.path).spawn().unwrap();
    source
        .wait_for_slot(&slot, Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    client.batch_execute(AWKWARD_CHANGES_SQL).await.unwrap();
    let end = source.emit_marker().await;
    source
        .wait_for_confirmed(&slot, &end, Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    let mut child = child;
    child.terminate();
    let output = child.wait_async(Duration::from_secs(30)).await.unwrap();
    assert!(output.status.success(), "{}", output.describe());

    for table in ["dates", "arrays", "keyless"] {
        let (want, got) = (
            dump_utc(&client, table).await,
            dump_utc(&target_client, table).await,
        );
        assert!(!want.is_empty(), "the source has rows in {table}");
        assert_eq!(got, want, "replica table {table} differs from the source");
    }
    let bounds: String = target_client
        .query_one("SELECT array_dims(grid) FROM arrays WHERE id = 1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        bounds, "[0:1][-1:0]",
        "the replica keeps the array's bounds"
    );
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
