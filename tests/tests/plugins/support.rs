//! Shared helpers of the plugin tests: building the plugins once, and constructing events.

use std::sync::Arc;

use walflow::config::OnError;
use walflow::event::{Column, Event, Op, Relation, Source, Value};
use walflow::plugin::{Chain, Limits, PluginEngine, PluginSpec};

pub use walflow_tests::plugins::plugin;

/// A spec for a built plugin with a config and a failure policy.
pub fn spec(name: &str, config: &str, on_error: OnError) -> PluginSpec {
    let mut spec = PluginSpec::new(plugin(name), config);
    spec.on_error = on_error;
    spec
}

/// A spec with tight limits, for misbehaving guests.
pub fn tight(name: &str, on_error: OnError) -> PluginSpec {
    let mut spec = spec(name, "{}", on_error);
    spec.limits = Limits {
        memory_mb: 64,
        timeout_ms: 200,
        fuel: None,
    };
    spec
}

/// A chain of specs on the shared engine.
pub fn chain(specs: Vec<PluginSpec>) -> Chain {
    Chain::from_specs(&engine(), specs).expect("chain loads")
}

/// The shared engine.
pub fn engine() -> PluginEngine {
    PluginEngine::shared().expect("engine")
}

/// A relation; columns are `(name, type name, key)`, with PostgreSQL's oids for the usual
/// built-in type names (0, unknown, for any other), as the host sends them.
pub fn relation(schema: &str, table: &str, columns: &[(&str, &str, bool)]) -> Arc<Relation> {
    Arc::new(Relation {
        oid: 16384,
        schema: schema.into(),
        table: table.into(),
        columns: columns
            .iter()
            .map(|(name, type_name, key)| Column {
                name: (*name).into(),
                type_oid: builtin_oid(type_name),
                type_name: (*type_name).into(),
                type_modifier: -1,
                key: *key,
            })
            .collect(),
    })
}

fn builtin_oid(type_name: &str) -> u32 {
    match type_name {
        "bool" => 16,
        "bytea" => 17,
        "int8" => 20,
        "int4" => 23,
        "text" => 25,
        "_bytea" => 1001,
        "varchar" => 1043,
        "timestamptz" => 1184,
        "numeric" => 1700,
        "jsonb" => 3802,
        _ => 0,
    }
}

/// An event with an after row (a create), or a before row only for a delete.
pub fn event(relation: &Arc<Relation>, op: Op, row: Vec<Value>) -> Event {
    let (before, after) = match op {
        Op::Delete => (Some(row), None),
        _ => (None, Some(row)),
    };
    Event {
        op,
        relation: relation.clone(),
        source: Source {
            db: "app".into(),
            lsn: walflow::event::Lsn(0x16_B374_D848),
            xid: Some(7),
            commit_time_us: 1_700_000_000_000_000,
            ..Source::default()
        },
        before,
        after,
        topic: None,
        message: None,
    }
}

/// Text value.
pub fn text(s: &str) -> Value {
    Value::Text(s.into())
}

/// The after row's value of a column.
pub fn after<'e>(event: &'e Event, column: &str) -> &'e Value {
    let i = event.relation.column_index(column).expect("column exists");
    &event.after.as_ref().expect("after row")[i]
}
