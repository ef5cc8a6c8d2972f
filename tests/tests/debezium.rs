//! `envelope = "debezium"` against real Debezium 3.6.3: both read the same changes on slots of
//! their own, and every record must be equal.
//!
//! Debezium runs as its embedded engine with the PostgreSQL connector (pgoutput) and Kafka
//! Connect's JSON converter without schemas (see `walflow_tests::debezium`); walflow runs
//! `walflow run` with the same settings into a file sink. The changes cover every type the
//! fidelity tests use, inserts, updates, primary-key changes, deletes under the default and
//! FULL replica identity, unchanged TOAST values, truncates, logical messages (transactional
//! and not) and a keyless table. One test per settings combination.
//!
//! Compared: every field of every record, in order (topic, key, value, tombstones included),
//! except times of processing, which no two runs share:
//! - `value.ts_ms`, `value.ts_us`, `value.ts_ns` (when the record was made);
//! - `source.ts_ms`, `ts_us`, `ts_ns` of a non-transactional logical message only (it has no
//!   commit time: Debezium repeats the previous transaction's, walflow writes when it read it).

use std::time::Duration;

use serde_json::Value as Json;
use walflow_tests::debezium::{DebeziumPeer, read_lines};
use walflow_tests::{Cluster, TestDb, wait_for, walflow};

/// The fidelity tests' types (`replication/support.rs`), less the composite column (Debezium
/// drops composite-typed columns; walflow writes their text), plus columns whose precision
/// changes Debezium's representation.
const DDL: &str = "
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
CREATE TABLE typed (
  id int PRIMARY KEY,
  b bool, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8, num numeric,
  t text, vc varchar(10), bp char(3), nm name, ba bytea, u uuid, j json, jb jsonb,
  d date, tm time, ttz timetz, ts timestamp, tstz timestamptz, iv interval,
  ip inet, cidr_ cidr, mac macaddr, money_ money, bits bit(4), vbits varbit, o oid,
  ai int4[], at text[], a2 int8[][], mood mood, dom posint,
  r int4range, pt point, tsv tsvector,
  n52 numeric(5,2), tm3 time(3), ts3 timestamp(3), tstz0 timestamptz(0), b1 bit(1),
  ch \"char\", x xml, tsa timestamptz[], ua uuid[]
);
CREATE TABLE toasty (id int PRIMARY KEY, n int, big text, blob bytea);
ALTER TABLE toasty ALTER COLUMN big SET STORAGE EXTERNAL;
ALTER TABLE toasty ALTER COLUMN blob SET STORAGE EXTERNAL;
CREATE TABLE full_ident (id int PRIMARY KEY, v text, big text);
ALTER TABLE full_ident REPLICA IDENTITY FULL;
ALTER TABLE full_ident ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE TABLE nokey (a int, b text);
ALTER TABLE nokey REPLICA IDENTITY FULL;
";

/// The changes both read, one transaction per statement unless grouped.
const CHANGES: &str = "
INSERT INTO typed VALUES (
  1, true, -32768, 2147483647, 9007199254740993, 1.5, -2.25e300, 12345678901234567890.000000000001,
  'tab\there \"q\" ''s''', 'varchar', 'ab', 'nm', '\\xdeadbeef', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11',
  '{\"a\": [1, 2]}', '{\"b\": null}',
  '2024-02-29', '23:59:59.123456', '10:00:00+05:30', '2024-01-01 00:00:00.5', '2024-01-01 12:00:00+00',
  '1 year 2 mons 3 days 04:05:06.7',
  '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', 12.34, B'1010', B'101', 4000000000,
  '{1,NULL,3}', ARRAY['a,b', NULL, 'NULL', 'q\"q', 'back\\slash', ''], '{{1,2},{3,4}}', 'happy', 7,
  '[1,5)', '(1,2)', 'a fat cat',
  123.4, '01:02:03.456', '2024-01-01 00:00:00.123', '2024-01-01 12:00:00.7+02', B'1',
  'x', '<a>1</a>', ARRAY['2024-06-30 23:59:59.999999+00'::timestamptz, '1999-01-08 04:05:06-08'],
  ARRAY['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid]
);
INSERT INTO typed (id, f4, f8, num, d, ts, tstz, ai) VALUES
  (2, 'Infinity', 'NaN', 'NaN', 'infinity', '-infinity', 'infinity', '{}');
INSERT INTO typed (id) VALUES (3);
INSERT INTO typed (id, d, ts, tstz, tm, ttz, num, n52, iv, money_, bits, f4, f8) VALUES
  (4, '1960-03-04', '1960-03-04 05:06:07.891234', '1960-03-04 05:06:07.891234-03', '00:00:00',
   '23:59:59.999999-11', '-0.0001', -1.5, '-1 year -2 mons +3 days -04:05:06.5', -1234.5,
   B'0000', 0.1, 0.1);
INSERT INTO typed (id, num, n52, d, ts, tm3, ts3) VALUES
  (5, 100, 0, '0044-03-15 BC', '1900-01-01 00:00:00', '24:00:00', '1969-12-31 23:59:59.999');
UPDATE typed SET t = 'changed', num = 1.50 WHERE id = 1;
UPDATE typed SET id = 30 WHERE id = 3;
DELETE FROM typed WHERE id = 2;
BEGIN;
INSERT INTO toasty VALUES (1, 1, (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 200) g),
  (SELECT decode(string_agg(md5(g::text), ''), 'hex') FROM generate_series(1, 200) g));
INSERT INTO toasty VALUES (2, 1, 'short', '\\x00');
COMMIT;
UPDATE toasty SET n = 2 WHERE id = 1;
UPDATE toasty SET id = 10 WHERE id = 1;
DELETE FROM toasty WHERE id = 10;
INSERT INTO full_ident VALUES (1, 'a', (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 200) g));
UPDATE full_ident SET v = 'b' WHERE id = 1;
UPDATE full_ident SET id = 2 WHERE id = 1;
DELETE FROM full_ident WHERE id = 2;
INSERT INTO nokey VALUES (1, 'a'), (2, NULL);
UPDATE nokey SET b = 'c' WHERE a = 1;
DELETE FROM nokey WHERE a = 2;
SELECT pg_logical_emit_message(true, 'audit', 'hello');
SELECT pg_logical_emit_message(false, 'audit', '\\x00ff'::bytea);
TRUNCATE toasty;
INSERT INTO toasty VALUES (3, 3, 'after truncate', NULL);
";

/// A Debezium setting and its value, given to both.
type Setting = (&'static str, &'static str);

/// Runs Debezium and walflow with `settings` over the same changes and compares every record.
async fn equal_to_debezium(settings: &[Setting]) {
    let db = Cluster::shared().new_database().await;
    let client = db.client().await;
    client.batch_execute(DDL).await.unwrap();
    let publication = format!("{}_pub", db.name());
    let walflow_slot = format!("{}_slot", db.name());
    let debezium_slot = format!("{}_dbz", db.name());
    client
        .batch_execute(&format!("CREATE PUBLICATION {publication} FOR ALL TABLES"))
        .await
        .unwrap();
    for slot in [&walflow_slot, &debezium_slot] {
        client
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[slot],
            )
            .await
            .unwrap();
    }

    let mut debezium_section = String::from("[debezium]\n\"topic.prefix\" = \"app\"\n");
    for (key, value) in settings {
        let value = match *value {
            "true" | "false" => value.to_string(),
            v => walflow_tests::config_file::toml_string(v),
        };
        debezium_section.push_str(&format!("\"{key}\" = {value}\n"));
    }
    let config = db
        .config()
        .root("envelope = \"debezium\"")
        .source("snapshot = \"never\"")
        .source("publication_autocreate = \"disabled\"")
        .append(&debezium_section)
        .append("[[sinks]]\ntype = \"file\"\npath = \"out/walflow.jsonl\"")
        .write()
        .unwrap();
    let walflow_out = config.dir().join("out/walflow.jsonl");
    let mut properties = debezium_properties(&db, &debezium_slot, &publication);
    properties.extend(settings.iter().map(|(k, v)| (*k, v.to_string())));
    let mut peer = DebeziumPeer::start(config.dir(), &properties).unwrap();
    let mut child = walflow!("run", "-c", &config.path).spawn().unwrap();

    steps(&client, CHANGES).await;
    client
        .batch_execute("SELECT pg_logical_emit_message(true, 'end', 'end')")
        .await
        .unwrap();

    let ends = |records: &[Json]| records.iter().any(|r| r["key"]["prefix"] == "end");
    let debezium = wait_for("Debezium's records", Duration::from_secs(120), || {
        assert!(peer.is_running(), "Debezium stopped:\n{}", peer.log_tail());
        let records = peer.records();
        ends(&records).then_some(records)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", peer.log_tail()));
    let ours = wait_for("walflow's records", Duration::from_secs(60), || {
        assert!(child.is_running(), "walflow stopped:\n{}", child.stderr());
        let records = read_lines(&walflow_out);
        ends(&records).then_some(records)
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", child.stderr()));
    child.terminate();

    assert_same_records(&ours, &debezium);
}

/// Runs each `;`-terminated statement of `sql` on its own (explicit BEGIN/COMMIT group some).
async fn steps(client: &tokio_postgres::Client, sql: &str) {
    for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        client
            .batch_execute(statement)
            .await
            .unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

fn debezium_properties(db: &TestDb, slot: &str, publication: &str) -> Vec<(&'static str, String)> {
    vec![
        ("database.hostname", db.cluster().host().to_string()),
        ("database.port", db.cluster().port().to_string()),
        ("database.user", "postgres".into()),
        ("database.password", "unused".into()),
        ("database.dbname", db.name().to_string()),
        ("topic.prefix", "app".into()),
        ("plugin.name", "pgoutput".into()),
        ("slot.name", slot.to_string()),
        ("publication.name", publication.to_string()),
        ("publication.autocreate.mode", "disabled".into()),
        ("snapshot.mode", "no_data".into()),
    ]
}

/// Asserts record-for-record equality, less the fields of processing time (module docs).
fn assert_same_records(ours: &[Json], theirs: &[Json]) {
    let ours: Vec<Json> = ours.iter().map(comparable).map(shortened).collect();
    let theirs: Vec<Json> = theirs.iter().map(comparable).map(shortened).collect();
    for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
        assert!(
            a == b,
            "record {i} differs (left walflow, right Debezium):\nwalflow:  {a}\ndebezium: {b}\n{}",
            first_difference(a, b, "")
        );
    }
    assert_eq!(
        ours.len(),
        theirs.len(),
        "walflow wrote {} records, Debezium {}; the extra ones: {:#?}",
        ours.len(),
        theirs.len(),
        if ours.len() > theirs.len() {
            &ours[theirs.len()..]
        } else {
            &theirs[ours.len()..]
        }
    );
    assert!(
        ours.len() > 25,
        "too few records to mean anything: {}",
        ours.len()
    );
}

/// Long strings (TOASTed values) cut to their start and length, so a failure stays readable;
/// two strings that differ anywhere still differ after it.
fn shortened(value: Json) -> Json {
    match value {
        Json::String(s) if s.len() > 80 => {
            let digest = s
                .bytes()
                .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
            Json::String(format!(
                "{}… ({} bytes, hash {digest:x})",
                s.chars().take(40).collect::<String>(),
                s.len()
            ))
        }
        Json::Object(map) => {
            Json::Object(map.into_iter().map(|(k, v)| (k, shortened(v))).collect())
        }
        Json::Array(items) => Json::Array(items.into_iter().map(shortened).collect()),
        other => other,
    }
}

/// The path and values of the first difference between two JSON trees.
fn first_difference(a: &Json, b: &Json, path: &str) -> String {
    match (a, b) {
        (Json::Object(x), Json::Object(y)) => {
            for (k, v) in x {
                match y.get(k) {
                    Some(w) if w != v => return first_difference(v, w, &format!("{path}.{k}")),
                    None => return format!("{path}.{k}: only walflow has it ({v})"),
                    _ => {}
                }
            }
            match y.keys().find(|k| !x.contains_key(*k)) {
                Some(k) => format!("{path}.{k}: only Debezium has it ({})", y[k]),
                None => String::new(),
            }
        }
        (Json::Array(x), Json::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find(|(_, (v, w))| v != w)
            .map(|(i, (v, w))| first_difference(v, w, &format!("{path}[{i}]")))
            .unwrap_or_default(),
        _ => format!("{path}: walflow {a}, Debezium {b}"),
    }
}

/// A record without its fields of processing time (module docs).
fn comparable(record: &Json) -> Json {
    let mut record = record.clone();
    if let Some(value) = record.get_mut("value").and_then(Json::as_object_mut) {
        for field in ["ts_ms", "ts_us", "ts_ns"] {
            value.remove(field);
        }
        let non_transactional = value.get("op").and_then(Json::as_str) == Some("m")
            && value["source"]["txId"].is_null();
        if non_transactional
            && let Some(source) = value.get_mut("source").and_then(Json::as_object_mut)
        {
            for field in ["ts_ms", "ts_us", "ts_ns"] {
                source.remove(field);
            }
        }
    }
    record
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_equal_debezium() {
    equal_to_debezium(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decimal_string_isostring_hex_equal_debezium() {
    equal_to_debezium(&[
        ("decimal.handling.mode", "string"),
        ("time.precision.mode", "isostring"),
        ("binary.handling.mode", "hex"),
        ("skipped.operations", "none"),
        ("tombstones.on.delete", "false"),
        ("unavailable.value.placeholder", "gone"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decimal_double_connect_base64_url_safe_equal_debezium() {
    equal_to_debezium(&[
        ("decimal.handling.mode", "double"),
        ("time.precision.mode", "connect"),
        ("binary.handling.mode", "base64-url-safe"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adaptive_time_microseconds_base64_equal_debezium() {
    equal_to_debezium(&[
        ("time.precision.mode", "adaptive_time_microseconds"),
        ("binary.handling.mode", "base64"),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decimal_precise_connect_hex_equal_debezium() {
    equal_to_debezium(&[
        ("time.precision.mode", "connect"),
        ("binary.handling.mode", "hex"),
    ])
    .await;
}
