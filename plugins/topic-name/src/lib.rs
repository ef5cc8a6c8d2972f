//! `topic-name`: names each event's topic.
//!
//! Config: `{"prefix": "app", "database_prefix": false, "template": "…"}` (all optional).
//! Default topic `{prefix}.{schema}.{table}` (`{schema}.{table}` without a prefix); with
//! `database_prefix` the seed's `DatabaseName_TopicName`, i.e. `{database}_` before it. Logical
//! decoding messages (no table) go to `{prefix}.message`, as in Debezium. A
//! template replaces the default and may use `{prefix}`, `{database}`, `{schema}`, `{table}`
//! and `{op}` (Debezium's letter).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::OnceLock;

use serde::Deserialize;
use walflow_sdk::{Event, Op, RelationId};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    prefix: Option<String>,
    #[serde(default)]
    database_prefix: bool,
    #[serde(default)]
    template: Option<String>,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

#[walflow_sdk::init]
fn setup(config: &str) -> Result<(), String> {
    // Topics depend only on the table, database and op: skip the rows.
    walflow_sdk::without_rows();
    let parsed: Config =
        serde_json::from_str(config).map_err(|e| format!("topic-name config: {e}"))?;
    let by_table = !parsed
        .template
        .as_deref()
        .is_some_and(|t| t.contains("{op}"));
    CONFIG
        .set(parsed)
        .map_err(|_| "init called twice".to_string())?;
    // Without `{op}`, a table's changes all go to one topic: the host then names most batches
    // without calling this plugin.
    if by_table {
        walflow_sdk::name_by_table(|db, table| {
            let config = CONFIG.get()?;
            Some(topic(config, db, &table.schema, &table.table, None))
        });
    }
    Ok(())
}

/// The last topic named, with what it was named from: batches are runs of one table, so
/// most events reuse it instead of formatting a new string.
struct Last {
    id: RelationId,
    db: String,
    schema: String,
    table: String,
    op: Option<Op>,
    topic: Rc<str>,
}

thread_local! {
    static LAST: RefCell<Option<Last>> = const { RefCell::new(None) };
}

#[walflow_sdk::topic_namer]
fn name(event: &Event) -> Rc<str> {
    static DEFAULT: Config = Config {
        prefix: None,
        database_prefix: false,
        template: None,
    };
    let config = CONFIG.get().unwrap_or(&DEFAULT);
    // The op matters to a template that uses it, and to a logical message's topic.
    let op = match &config.template {
        Some(t) if t.contains("{op}") => Some(event.op()),
        _ => Some(event.op()).filter(|op| *op == Op::Message),
    };
    let id = event.relation_id();
    LAST.with_borrow_mut(|last| {
        // The same table as the last event: by id within a batch (the database is still
        // compared: it is the event's, not the table's), by name across batches.
        if let Some(last) = last.as_mut().filter(|l| {
            l.op == op
                && l.db == event.db()
                && (l.id == id || (l.table == event.table() && l.schema == event.schema()))
        }) {
            last.id = id;
            return last.topic.clone();
        }
        let named = topic(
            config,
            event.db(),
            event.schema(),
            event.table(),
            Some(event.op()),
        );
        let topic: Rc<str> = Rc::from(named);
        *last = Some(Last {
            id,
            db: event.db().to_string(),
            schema: event.schema().to_string(),
            table: event.table().to_string(),
            op,
            topic: topic.clone(),
        });
        topic
    })
}

/// The topic of a change of `schema.table` in `db`; `op` is `None` for any change that is
/// not a logical message (the template then must not use `{op}`).
fn topic(config: &Config, db: &str, schema: &str, table: &str, op: Option<Op>) -> String {
    let prefix = config.prefix.as_deref().unwrap_or("");
    let topic = match &config.template {
        Some(t) => t
            .replace("{prefix}", prefix)
            .replace("{database}", db)
            .replace("{schema}", schema)
            .replace("{table}", table)
            .replace("{op}", op.map_or("", Op::code)),
        // A logical decoding message has no table: Debezium's `{prefix}.message`.
        None if op == Some(Op::Message) && prefix.is_empty() => "message".to_string(),
        None if op == Some(Op::Message) => format!("{prefix}.message"),
        None if prefix.is_empty() => format!("{schema}.{table}"),
        None => format!("{prefix}.{schema}.{table}"),
    };
    if config.database_prefix {
        format!("{db}_{topic}")
    } else {
        topic
    }
}
