//! Rebuilding tables from a file sink's records, and comparing them with the source — done by
//! PostgreSQL itself (`jsonb_populate_recordset … EXCEPT ALL`), so every type is compared by
//! its own equality, not by how the test parses JSON.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use serde_json::{Map, Value as Json};

/// Rows of one table, by key (the `id` column as JSON text).
pub type Rows = BTreeMap<String, Map<String, Json>>;

/// The file sink's records, oldest first, with rotated files before the current one.
pub fn read_records(path: &Path) -> Vec<Json> {
    walflow::sink::written_files(path)
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .lines()
                .filter(|l| !l.is_empty())
                .map(|l| serde_json::from_str(l).expect("every line is a JSON record"))
                .collect::<Vec<Json>>()
        })
        .collect()
}

/// Applies records in order — snapshot reads and inserts as upserts, updates (moving a changed
/// key), deletes, truncates — skipping a streamed change (lsn, table, op) already applied.
/// Tables are keyed by their `id` column.
pub fn replay(records: &[Json]) -> BTreeMap<String, Rows> {
    let mut tables: BTreeMap<String, Rows> = BTreeMap::new();
    let mut seen = HashSet::new();
    for r in records {
        let v = &r["value"];
        let table = v["source"]["table"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let op = v["op"].as_str().unwrap_or_default();
        // Snapshot rows share an LSN: they are told apart by key, and a repeated one is an
        // idempotent upsert anyway.
        if op != "r" && !seen.insert((v["source"]["lsn"].as_u64(), table.clone(), op.to_owned())) {
            continue;
        }
        let state = tables.entry(table).or_default();
        apply(state, r, op);
    }
    tables
}

fn apply(state: &mut Rows, r: &Json, op: &str) {
    let v = &r["value"];
    let key_of = |row: &Json| row["id"].to_string();
    match op {
        "c" | "r" => {
            let after = v["after"].as_object().cloned().unwrap_or_default();
            state.insert(key_of(&v["after"]), after);
        }
        "u" => {
            let mut after = v["after"].as_object().cloned().unwrap_or_default();
            let old_key = if v["before"].is_object() {
                key_of(&v["before"])
            } else {
                key_of(&r["key"])
            };
            let previous = state.remove(&old_key);
            for (col, val) in after.iter_mut() {
                if val == "__walflow_unavailable_value" {
                    *val = previous
                        .as_ref()
                        .and_then(|p| p.get(col))
                        .cloned()
                        .unwrap_or(Json::Null);
                }
            }
            state.insert(key_of(&v["after"]), after);
        }
        "d" => {
            state.remove(&key_of(&r["key"]));
        }
        "t" => state.clear(),
        _ => {}
    }
}

/// A row as `jsonb_populate_recordset` reads it: the `bytea` columns (base64 in records) in
/// PostgreSQL's hex form.
pub fn to_pg_json(row: &Map<String, Json>, bytea_columns: &[&str]) -> Json {
    use base64::Engine as _;
    let mut row = row.clone();
    for col in bytea_columns {
        if let Some(Json::String(b64)) = row.get(*col) {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .expect("bytea as base64");
            row.insert(
                (*col).into(),
                Json::String(format!("\\x{}", hex::encode(bytes))),
            );
        }
    }
    Json::Object(row)
}

/// How many rows differ between `table` and `rows`, computed by PostgreSQL, with the rows
/// themselves for the failure message.
pub async fn differences(
    client: &tokio_postgres::Client,
    table: &str,
    rows: &[Json],
) -> (i64, String) {
    let rows = Json::Array(rows.to_vec()).to_string();
    let sql = format!(
        "WITH replayed AS (SELECT * FROM jsonb_populate_recordset(NULL::{table}, $1::text::jsonb)),
              missing AS (SELECT * FROM {table} EXCEPT ALL SELECT * FROM replayed),
              extra AS (SELECT * FROM replayed EXCEPT ALL SELECT * FROM {table})
         SELECT (SELECT count(*) FROM missing) + (SELECT count(*) FROM extra),
                coalesce((SELECT string_agg(m::text, E'\\n') FROM (SELECT * FROM missing LIMIT 20) m), '') || E'\\n--- replayed only:\\n' ||
                coalesce((SELECT string_agg(e::text, E'\\n') FROM (SELECT * FROM extra LIMIT 20) e), '')"
    );
    let row = client.query_one(&sql, &[&rows]).await.expect("compare");
    (row.get(0), row.get(1))
}

/// Panics unless replaying `records` rebuilds each `(table, bytea columns)` exactly.
pub async fn assert_rebuilds(
    client: &tokio_postgres::Client,
    records: &[Json],
    tables: &[(&str, &[&str])],
) {
    let state = replay(records);
    for (table, bytea) in tables {
        let rows: Vec<Json> = state
            .get(*table)
            .map(|m| m.values().map(|r| to_pg_json(r, bytea)).collect())
            .unwrap_or_default();
        let (diff, detail) = differences(client, table, &rows).await;
        assert_eq!(
            diff,
            0,
            "table {table}: {} replayed rows differ from the source in {diff} rows; source only:\n{detail}",
            rows.len()
        );
    }
}
