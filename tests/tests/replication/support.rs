//! Helpers of the replication tests: connection options and streams for a test database,
//! waiting for a stream to reach an LSN, and the typed-value fixture.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use walflow::assemble::Transaction;
use walflow::config::{Config, SourceConfig, SslMode};
use walflow::event::{Lsn, Op, Value};
use walflow::pg::ConnectOptions;
use walflow::replication::{ReplicationStream, StreamItem, StreamOptions};
use walflow::value::{TypeInfo, TypeRegistry};
use walflow_tests::{TEST_PASSWORD, TestDb, TestUser, WalflowChild};

/// Resolved options for `user` on `db` over `host` with `mode` (CA from the harness).
pub fn options(db: &TestDb, user: TestUser, mode: SslMode, host: &str) -> ConnectOptions {
    ConnectOptions {
        host: host.to_string(),
        port: db.cluster().port(),
        user: user.name().to_string(),
        dbname: db.name().to_string(),
        password: user.password().map(|_| TEST_PASSWORD.to_string()),
        sslmode: mode,
        sslrootcert: db.cluster().ca_cert().map(Path::to_path_buf),
        sslrootcert_pem: None,
        application_name: "walflow-test".into(),
        connect_timeout: Duration::from_secs(10),
        slot_failover: false,
        other_hosts: Vec::new(),
        target_session_attrs: Default::default(),
        tunnel: None,
    }
}

/// `[source]` for the superuser (trust, so no password variable is needed) without TLS.
pub fn source(db: &TestDb, slot: &str) -> SourceConfig {
    source_as(db, slot, TestUser::Superuser, SslMode::Disable)
}

/// `[source]` for `user` with `mode`.
pub fn source_as(db: &TestDb, slot: &str, user: TestUser, mode: SslMode) -> SourceConfig {
    let mode = match mode {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        SslMode::Require => "require",
        SslMode::VerifyCa => "verify-ca",
        SslMode::VerifyFull => "verify-full",
    };
    let text = db
        .config()
        .user(user)
        .sslmode(mode)
        .slot(slot)
        .to_toml(Path::new("/nonexistent-state"));
    Config::parse(&text, Path::new("walflow.toml"))
        .expect("harness config parses")
        .source
}

/// A stream on a new slot as the superuser without TLS.
pub async fn open_stream(db: &TestDb, slot: &str) -> ReplicationStream {
    let src = source(db, slot);
    let options = StreamOptions::for_source(&src);
    open_stream_as(db, slot, TestUser::Superuser, SslMode::Disable, options).await
}

/// A stream on `slot` as `user` with `mode`.
pub async fn open_stream_as(
    db: &TestDb,
    slot: &str,
    user: TestUser,
    mode: SslMode,
    options: StreamOptions,
) -> ReplicationStream {
    let src = source_as(db, slot, user, mode);
    ReplicationStream::open(&src, None, options)
        .await
        .unwrap_or_else(|e| panic!("open stream {slot}: {e}"))
}

/// `pg_current_wal_lsn()`.
pub async fn current_lsn(client: &tokio_postgres::Client) -> u64 {
    let text: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    walflow::event::parse_lsn(&text).unwrap()
}

/// Every transaction until the stream reports `lsn` (by a transaction or while idle),
/// confirming each as it arrives.
pub async fn collect_until(stream: &mut ReplicationStream, lsn: u64) -> Vec<Transaction> {
    let mut out = Vec::new();
    let work = async {
        loop {
            match stream.next_item().await.expect("stream") {
                StreamItem::Transaction(t) => {
                    let end = t.end_lsn;
                    // Acknowledge like a consumer, so the stream can report idle positions.
                    stream.confirm(end);
                    out.push(t);
                    if end >= Lsn(lsn) {
                        break;
                    }
                }
                StreamItem::Idle(at) if at >= Lsn(lsn) => break,
                StreamItem::Idle(_) | StreamItem::Interrupted => {}
                StreamItem::End => panic!("the server ended the stream"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), work)
        .await
        .expect("stream did not reach the LSN within 60s");
    out
}

/// The first column of every insert, in order.
pub fn inserted_ids(txns: &[Transaction]) -> Vec<i64> {
    txns.iter()
        .flat_map(|t| t.events.iter())
        .filter(|e| e.op == Op::Create)
        .map(|e| match &e.after.as_ref().unwrap()[0] {
            Value::Int(i) => *i,
            other => panic!("id is {other:?}"),
        })
        .collect()
}

/// A registry with the database's whole catalog, to decode SELECT output for comparison.
pub async fn stream_registry(db: &TestDb) -> TypeRegistry {
    let client = db.client().await;
    let mut registry = TypeRegistry::new();
    let rows = client
        .query(
            "SELECT oid::int8, typname::text, typtype::text, typbasetype::int8, typelem::int8, typcategory::text FROM pg_type",
            &[],
        )
        .await
        .unwrap();
    for r in rows {
        let oid = r.get::<_, i64>(0) as u32;
        if registry.get(oid).is_some() {
            continue;
        }
        let c = |i: usize| r.get::<_, String>(i).chars().next().unwrap_or(' ');
        registry.insert(TypeInfo::from_catalog(
            oid,
            r.get::<_, String>(1),
            c(2),
            r.get::<_, i64>(3) as u32,
            r.get::<_, i64>(4) as u32,
            c(5),
        ));
    }
    registry
}

pub use walflow_tests::free_port;

/// Inserts ids `start..start + batches * per_batch` into `r`, one transaction per batch.
pub async fn insert_batches(
    client: &tokio_postgres::Client,
    start: i64,
    batches: i64,
    per_batch: i64,
) {
    for b in 0..batches {
        let from = start + b * per_batch;
        let to = from + per_batch - 1;
        client
            .batch_execute(&format!(
                "INSERT INTO r SELECT g FROM generate_series({from}, {to}) g"
            ))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until a `walflow tail` child logged that streaming started.
pub async fn wait_streaming(child: &mut WalflowChild) {
    for _ in 0..600 {
        if child.stderr().contains("streaming started") {
            return;
        }
        assert!(child.is_running(), "walflow exited: {}", child.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("walflow did not start streaming: {}", child.stderr());
}

/// Waits until the child printed at least `n` lines.
pub async fn wait_lines(child: &WalflowChild, n: usize) {
    for _ in 0..1200 {
        if child.stdout().lines().count() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("walflow printed fewer than {n} lines: {}", child.stderr());
}

/// The `id` of every insert line printed by `walflow tail`.
pub fn ids_of(stdout: &str) -> Vec<i64> {
    stdout
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|j| j["value"]["op"] == "c")
        .filter_map(|j| j["value"]["after"]["id"].as_i64())
        .collect()
}

/// Types whose values are kept as raw text by design.
pub const RAW_OK: &[&str] = &["int4range", "point", "comp", "tsvector"];

/// A table with a column of every type walflow types, plus a few it keeps raw.
pub const TYPES_DDL: &str = "
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
CREATE TYPE comp AS (a int, b text);
CREATE TABLE typed (
  id int PRIMARY KEY,
  b bool, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8, num numeric,
  t text, vc varchar(10), bp char(3), nm name, ba bytea, u uuid, j json, jb jsonb,
  d date, tm time, ttz timetz, ts timestamp, tstz timestamptz, iv interval,
  ip inet, cidr_ cidr, mac macaddr, money_ money, bits bit(4), vbits varbit, o oid,
  ai int4[], at text[], a2 int8[][], mood mood, dom posint,
  r int4range, pt point, c comp, tsv tsvector
);";

/// Rows covering edge values (NaN, infinities, NULL elements, quoting).
pub const TYPES_ROWS: &str = "
INSERT INTO typed VALUES (
  1, true, -32768, 2147483647, 9007199254740993, 1.5, -2.25e300, 12345678901234567890.000000000001,
  'tab\there \"q\" ''s''', 'varchar', 'ab', 'nm', '\\xdeadbeef', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11',
  '{\"a\": [1, 2]}', '{\"b\": null}',
  '2024-02-29', '23:59:59.123456', '10:00:00+05:30', '2024-01-01 00:00:00.5', '2024-01-01 12:00:00+00',
  '1 year 2 mons 3 days 04:05:06.7',
  '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', 12.34, B'1010', B'101', 4000000000,
  '{1,NULL,3}', ARRAY['a,b', NULL, 'NULL', 'q\"q', 'back\\slash', ''], '{{1,2},{3,4}}', 'happy', 7,
  '[1,5)', '(1,2)', ROW(1, 'x'), 'a fat cat'
);
INSERT INTO typed (id, f4, f8, num, d, ts, tstz, ai) VALUES
  (2, 'Infinity', 'NaN', 'NaN', 'infinity', '-infinity', 'infinity', '{}');
INSERT INTO typed (id) VALUES (3);
";

/// Runs each `;`-terminated statement of `sql` on its own, so explicit BEGIN/COMMIT and
/// autocommitted statements make the transactions they read as (one multi-statement query
/// would be a single implicit transaction).
pub async fn steps(client: &tokio_postgres::Client, sql: &str) {
    for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        client
            .batch_execute(statement)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}
