//! `table-filter`: keeps events whose `schema.table` matches an `include` glob and no `exclude`
//! glob, optionally only rows where one column equals a value.
//!
//! Config: `{"include": ["public.*"], "exclude": ["public.audit_*"],
//!           "where": {"column": "status", "equals": "shipped"}}` (every key optional).
//! Globs use `*` (any run of characters) and `?` (one character). Logical messages are not
//! table changes and always pass; events without a row (truncates) skip the `where` test.

use std::sync::OnceLock;

use serde::Deserialize;
use walflow_sdk::{Event, Op, RelationId, Value};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    include: Option<Vec<String>>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default, rename = "where")]
    predicate: Option<Predicate>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Predicate {
    column: String,
    equals: serde_json::Value,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

/// The last table looked up and whether it matched: batches are mostly runs of one table, so
/// comparing two names is all most events cost.
struct LastTable {
    id: RelationId,
    schema: String,
    table: String,
    matched: bool,
}

thread_local! {
    static LAST: std::cell::RefCell<Option<LastTable>> = const { std::cell::RefCell::new(None) };
}

#[walflow_sdk::init]
fn setup(config: &str) -> Result<(), String> {
    let parsed: Config =
        serde_json::from_str(config).map_err(|e| format!("table-filter config: {e}"))?;
    if parsed.predicate.is_none() {
        // Table globs need only the table name: skip the rows.
        walflow_sdk::without_rows();
    }
    CONFIG
        .set(parsed)
        .map_err(|_| "init called twice".to_string())?;
    // The table decides, except for matching tables under a `where`: the host then settles
    // most batches without calling this plugin.
    walflow_sdk::filter_by_table(|_, table| {
        let config = CONFIG.get()?;
        match name_matches(config, &table.schema, &table.table) {
            false => Some(false),
            true if config.predicate.is_none() => Some(true),
            true => None,
        }
    });
    Ok(())
}

#[walflow_sdk::filter]
fn keep(event: &Event) -> bool {
    let Some(config) = CONFIG.get() else {
        return true;
    };
    if event.op() == Op::Message {
        return true;
    }
    let matched = table_matches(config, event);
    if !matched {
        return false;
    }
    let Some(predicate) = &config.predicate else {
        return true;
    };
    let row = if event.after().exists() {
        event.after()
    } else {
        event.before()
    };
    if !row.exists() {
        return true;
    }
    match row.get(&predicate.column) {
        Some(value) => equals(value, &predicate.equals),
        None => false,
    }
}

/// Whether `schema.table` passes the include and exclude globs.
fn table_matches(config: &Config, event: &Event) -> bool {
    let (id, schema, table) = (event.relation_id(), event.schema(), event.table());
    LAST.with_borrow_mut(|last| {
        // The same table as the last event: by id within a batch, by name across batches.
        if let Some(l) = last.as_mut().filter(|l| l.id == id) {
            return l.matched;
        }
        if let Some(l) = last
            .as_mut()
            .filter(|l| l.table == table && l.schema == schema)
        {
            l.id = id;
            return l.matched;
        }
        // Only a new table gets here, so building its name may allocate.
        let matched = name_matches(config, schema, table);
        *last = Some(LastTable {
            id,
            schema: schema.to_string(),
            table: table.to_string(),
            matched,
        });
        matched
    })
}

/// Whether a column value equals a JSON value from the config.
/// Whether `schema.table` is included and not excluded.
fn name_matches(config: &Config, schema: &str, table: &str) -> bool {
    let name = format!("{schema}.{table}");
    let passes = |globs: &[String]| globs.iter().any(|g| glob(g.as_bytes(), name.as_bytes()));
    config.include.as_deref().is_none_or(passes) && !passes(&config.exclude)
}

fn equals(value: &Value<'_>, expected: &serde_json::Value) -> bool {
    use serde_json::Value as J;
    match (value, expected) {
        (Value::Null, J::Null) => true,
        (Value::Boolean(b), J::Bool(e)) => b == e,
        (Value::Int(i), J::Number(n)) => n.as_i64() == Some(*i) || n.as_f64() == Some(*i as f64),
        (Value::Float(f), J::Number(n)) => n.as_f64() == Some(*f),
        (Value::Numeric(s), J::Number(n)) => s.parse::<f64>().ok() == n.as_f64(),
        (v, J::String(e)) => v.as_str() == Some(e.as_str()),
        _ => false,
    }
}

/// `*` matches any run of bytes, `?` one byte (names are ASCII in practice; a multi-byte
/// character simply needs as many `?`). Allocation-free: it runs once per event.
fn glob(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}
