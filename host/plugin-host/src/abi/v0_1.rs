//! `walflow:plugin@0.1.0`: host events lowered into a plugin's memory through borrowed views,
//! and its answers lifted into host edits.
//!
//! The views have the same component-model shapes as `wit/v0.1.0/walflow-plugin.wit` but borrow
//! the host events, so a call copies each value once, into the guest (each string and row a
//! guest allocation: the cost 0.2.0 was made to avoid). Types are checked against the
//! component once per instance (see `instance.rs`); the derives keep field and case order in
//! step with the WIT file, which the check enforces.

use std::sync::Arc;

use wasmtime::component::{ComponentType, Lower};

use super::{RelationIndex, RelationView, relations_of};
use crate::bindings::v0_1::types as wit;
use crate::convert::{Edit, Replacement};
use walflow_core::event::{Array, Event, LogicalMessage, Source, Value};

super::enum_conversions!(wit);

/// `types.batch`.
#[derive(ComponentType, Lower)]
#[component(record)]
pub(crate) struct BatchView<'a> {
    relations: Vec<RelationView<'a>>,
    events: Vec<EventView<'a>>,
}

/// `types.event`.
#[derive(ComponentType, Lower)]
#[component(record)]
pub(crate) struct EventView<'a> {
    op: wit::Op,
    relation: u32,
    source: SourceView<'a>,
    before: Option<&'a [ValueView<'a>]>,
    after: Option<&'a [ValueView<'a>]>,
    topic: Option<&'a str>,
    message: Option<MessageView<'a>>,
}

/// `types.source`.
#[derive(ComponentType, Lower)]
#[component(record)]
pub(crate) struct SourceView<'a> {
    db: &'a str,
    lsn: u64,
    xid: Option<u32>,
    #[component(name = "commit-time-us")]
    commit_time_us: i64,
    snapshot: wit::SnapshotMarker,
}

/// `types.logical-message`.
#[derive(ComponentType, Lower)]
#[component(record)]
pub(crate) struct MessageView<'a> {
    transactional: bool,
    prefix: &'a str,
    content: &'a [u8],
}

/// `types.temporal`.
#[derive(ComponentType, Lower)]
#[component(record)]
pub(crate) struct TemporalView<'a> {
    kind: wit::TemporalKind,
    text: &'a str,
}

/// `types.raw`.
#[derive(ComponentType, Lower)]
#[component(record)]
pub(crate) struct RawView<'a> {
    #[component(name = "type-name")]
    type_name: &'a str,
    text: &'a str,
}

/// `types.array`.
#[derive(ComponentType, Lower)]
#[component(record)]
pub(crate) struct ArrayView<'a> {
    dims: &'a [u32],
    elements: Vec<ScalarView<'a>>,
}

/// `types.value`.
#[derive(ComponentType, Lower)]
#[component(variant)]
pub(crate) enum ValueView<'a> {
    #[component(name = "null")]
    Null,
    #[component(name = "boolean")]
    Boolean(bool),
    #[component(name = "int")]
    Int(i64),
    #[component(name = "float")]
    Float(f64),
    #[component(name = "text")]
    Text(&'a str),
    #[component(name = "bytes")]
    Bytes(&'a [u8]),
    #[component(name = "numeric")]
    Numeric(&'a str),
    #[component(name = "temporal")]
    Temporal(TemporalView<'a>),
    #[component(name = "json")]
    Json(&'a str),
    #[component(name = "uuid")]
    Uuid(&'a str),
    #[component(name = "array")]
    Array(ArrayView<'a>),
    #[component(name = "unchanged-toast")]
    UnchangedToast,
    #[component(name = "raw")]
    Raw(RawView<'a>),
}

/// `types.scalar`: an array element.
#[derive(ComponentType, Lower)]
#[component(variant)]
pub(crate) enum ScalarView<'a> {
    #[component(name = "null")]
    Null,
    #[component(name = "boolean")]
    Boolean(bool),
    #[component(name = "int")]
    Int(i64),
    #[component(name = "float")]
    Float(f64),
    #[component(name = "text")]
    Text(&'a str),
    #[component(name = "bytes")]
    Bytes(&'a [u8]),
    #[component(name = "numeric")]
    Numeric(&'a str),
    #[component(name = "temporal")]
    Temporal(TemporalView<'a>),
    #[component(name = "json")]
    Json(&'a str),
    #[component(name = "uuid")]
    Uuid(&'a str),
    #[component(name = "unchanged-toast")]
    UnchangedToast,
    #[component(name = "raw")]
    Raw(RawView<'a>),
}

/// Calls `f` with `events` viewed as a batch. Each distinct relation is sent once, in order of
/// first appearance (the order [`relations_of`] gives, which replacement edits index into).
/// Without `rows`, events go without `before`/`after` (for plugins whose `init` said they
/// never read them).
pub(crate) fn with_batch<R>(
    events: &[Event],
    rows: bool,
    f: impl FnOnce(&BatchView<'_>) -> R,
) -> R {
    let relations = relations_of(events);
    let values: Vec<ValueView<'_>> = if rows {
        let total = events
            .iter()
            .map(|e| e.before.as_ref().map_or(0, Vec::len) + e.after.as_ref().map_or(0, Vec::len))
            .sum();
        let mut values = Vec::with_capacity(total);
        for event in events {
            for row in [&event.before, &event.after].into_iter().flatten() {
                values.extend(row.iter().map(value_view));
            }
        }
        values
    } else {
        Vec::new()
    };
    let mut rest: &[ValueView<'_>] = &values;
    let mut take = |row: &Option<Vec<Value>>| -> Option<&[ValueView<'_>]> {
        let row = row.as_ref().filter(|_| rows)?;
        let (mine, tail) = rest.split_at(row.len());
        rest = tail;
        Some(mine)
    };
    let mut index = RelationIndex::default();
    let events = events
        .iter()
        .map(|event| EventView {
            op: op_to_wit(event.op),
            relation: index.of(&relations, &event.relation),
            source: SourceView {
                db: &event.source.db,
                lsn: event.source.lsn.0,
                xid: event.source.xid,
                commit_time_us: event.source.commit_time_us,
                snapshot: snapshot_to_wit(event.source.snapshot),
            },
            before: take(&event.before),
            after: take(&event.after),
            topic: event.topic.as_deref(),
            message: event.message.as_ref().map(|m| MessageView {
                transactional: m.transactional,
                prefix: &m.prefix,
                content: &m.content,
            }),
        })
        .collect();
    let batch = BatchView {
        relations: relations.iter().map(|r| RelationView::new(r)).collect(),
        events,
    };
    f(&batch)
}

fn value_view(value: &Value) -> ValueView<'_> {
    match value {
        Value::Null => ValueView::Null,
        Value::Bool(b) => ValueView::Boolean(*b),
        Value::Int(i) => ValueView::Int(*i),
        Value::Float(f) => ValueView::Float(*f),
        Value::Text(s) => ValueView::Text(s),
        Value::Bytes(b) => ValueView::Bytes(b),
        Value::Numeric(s) => ValueView::Numeric(s),
        Value::Temporal(kind, text) => ValueView::Temporal(TemporalView {
            kind: temporal_to_wit(*kind),
            text,
        }),
        Value::Json(s) => ValueView::Json(s),
        Value::Uuid(s) => ValueView::Uuid(s),
        Value::Array(array) => ValueView::Array(ArrayView {
            dims: &array.dims,
            elements: array.elements.iter().map(scalar_view).collect(),
        }),
        Value::UnchangedToast => ValueView::UnchangedToast,
        Value::Raw { type_name, text } => ValueView::Raw(RawView { type_name, text }),
    }
}

fn scalar_view(value: &Value) -> ScalarView<'_> {
    match value {
        Value::Null => ScalarView::Null,
        Value::Bool(b) => ScalarView::Boolean(*b),
        Value::Int(i) => ScalarView::Int(*i),
        Value::Float(f) => ScalarView::Float(*f),
        Value::Text(s) => ScalarView::Text(s),
        Value::Bytes(b) => ScalarView::Bytes(b),
        Value::Numeric(s) => ScalarView::Numeric(s),
        Value::Temporal(kind, text) => ScalarView::Temporal(TemporalView {
            kind: temporal_to_wit(*kind),
            text,
        }),
        Value::Json(s) => ScalarView::Json(s),
        Value::Uuid(s) => ScalarView::Uuid(s),
        // Elements are never arrays (see `event::Array`); a nested one goes as its type name.
        Value::Array(_) => ScalarView::Raw(RawView {
            type_name: "array",
            text: "",
        }),
        Value::UnchangedToast => ScalarView::UnchangedToast,
        Value::Raw { type_name, text } => ScalarView::Raw(RawView { type_name, text }),
    }
}

/// A 0.1.0 transform's edits in host terms.
pub(crate) fn edits_from_wit(edits: Vec<wit::Edit>) -> Vec<Edit> {
    edits
        .into_iter()
        .map(|edit| match edit {
            wit::Edit::Set(set) => Edit::Set {
                event: set.event,
                side: side_from_wit(set.side),
                column: set.column,
                value: value_from_wit(set.value),
            },
            wit::Edit::Remove(remove) => Edit::Remove {
                event: remove.event,
                column: remove.column,
            },
            wit::Edit::Drop(event) => Edit::Drop(event),
            wit::Edit::Replace(replace) => Edit::Replace {
                event: replace.event,
                replacement: Box::new(replacement_from_wit(replace.replacement)),
            },
            wit::Edit::Fail(failure) => Edit::Fail {
                event: failure.event,
                message: failure.message,
            },
        })
        .collect()
}

fn replacement_from_wit(event: wit::Event) -> Replacement {
    let source = event.source;
    let row = |row: Vec<wit::Value>| row.into_iter().map(value_from_wit).collect();
    Replacement {
        relation: event.relation,
        op: op_from_wit(event.op),
        source: Source {
            db: source.db.into(),
            lsn: walflow_core::event::Lsn(source.lsn),
            xid: source.xid,
            commit_time_us: source.commit_time_us,
            snapshot: snapshot_from_wit(source.snapshot),
            last_commit_lsn: None,
        },
        before: event.before.map(row),
        after: event.after.map(row),
        topic: event.topic.map(Arc::from),
        message: event.message.map(|m| LogicalMessage {
            transactional: m.transactional,
            prefix: m.prefix,
            content: m.content,
        }),
    }
}

fn value_from_wit(value: wit::Value) -> Value {
    match value {
        wit::Value::Null => Value::Null,
        wit::Value::Boolean(b) => Value::Bool(b),
        wit::Value::Int(i) => Value::Int(i),
        wit::Value::Float(f) => Value::Float(f),
        wit::Value::Text(s) => Value::Text(s),
        wit::Value::Bytes(b) => Value::Bytes(b),
        wit::Value::Numeric(s) => Value::Numeric(s),
        wit::Value::Temporal(t) => Value::Temporal(temporal_from_wit(t.kind), t.text),
        wit::Value::Json(s) => Value::Json(s),
        wit::Value::Uuid(s) => Value::Uuid(s),
        wit::Value::Array(a) => Value::Array(Array {
            dims: a.dims,
            lower_bounds: Vec::new(),
            elements: a.elements.into_iter().map(scalar_from_wit).collect(),
        }),
        wit::Value::UnchangedToast => Value::UnchangedToast,
        wit::Value::Raw(r) => Value::Raw {
            type_name: r.type_name,
            text: r.text,
        },
    }
}

fn scalar_from_wit(value: wit::Scalar) -> Value {
    match value {
        wit::Scalar::Null => Value::Null,
        wit::Scalar::Boolean(b) => Value::Bool(b),
        wit::Scalar::Int(i) => Value::Int(i),
        wit::Scalar::Float(f) => Value::Float(f),
        wit::Scalar::Text(s) => Value::Text(s),
        wit::Scalar::Bytes(b) => Value::Bytes(b),
        wit::Scalar::Numeric(s) => Value::Numeric(s),
        wit::Scalar::Temporal(t) => Value::Temporal(temporal_from_wit(t.kind), t.text),
        wit::Scalar::Json(s) => Value::Json(s),
        wit::Scalar::Uuid(s) => Value::Uuid(s),
        wit::Scalar::UnchangedToast => Value::UnchangedToast,
        wit::Scalar::Raw(r) => Value::Raw {
            type_name: r.type_name,
            text: r.text,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use walflow_core::event::{Op, Relation};

    fn relation(table: &str) -> Arc<Relation> {
        Relation::one_column(table, "id", "int4", 23)
    }

    fn event(relation: &Arc<Relation>, before: Option<i64>, after: Option<i64>) -> Event {
        Event {
            op: Op::Update,
            relation: relation.clone(),
            source: Source::default(),
            before: before.map(|v| vec![Value::Int(v)]),
            after: after.map(|v| vec![Value::Int(v)]),
            topic: None,
            message: None,
        }
    }

    fn int(values: Option<&[ValueView<'_>]>) -> Option<i64> {
        match values? {
            [ValueView::Int(i)] => Some(*i),
            _ => panic!("expected one int"),
        }
    }

    #[test]
    fn relations_go_once_and_rows_land_on_their_own_events() {
        let (a, b) = (relation("a"), relation("b"));
        let events = vec![
            event(&a, None, Some(1)),
            event(&b, Some(2), Some(3)),
            event(&a, Some(4), None),
        ];
        with_batch(&events, true, |batch| {
            let tables: Vec<_> = batch.relations.iter().map(|r| r.table()).collect();
            assert_eq!(tables, ["a", "b"]);
            let seen: Vec<_> = batch
                .events
                .iter()
                .map(|e| (e.relation, int(e.before), int(e.after)))
                .collect();
            assert_eq!(
                seen,
                [
                    (0, None, Some(1)),
                    (1, Some(2), Some(3)),
                    (0, Some(4), None)
                ]
            );
        });
        with_batch(&events, false, |batch| {
            assert!(
                batch
                    .events
                    .iter()
                    .all(|e| e.before.is_none() && e.after.is_none())
            );
        });
    }
}
