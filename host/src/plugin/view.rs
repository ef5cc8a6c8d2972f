//! Host events seen through the ABI's types, lowered straight into a plugin's memory.
//!
//! The generated WIT types own their strings, so handing a batch to a plugin through them
//! meant copying every value into a second batch on the host first, then copying it again
//! into the guest, then freeing the first copy. These views have the same component-model
//! shapes as `wit/walflow-plugin.wit` but borrow the host events, so a call copies each value
//! once, into the guest. Types are checked against the component once per instance (see
//! `instance.rs`); the derives keep field and case order in step with the WIT file, which the
//! check enforces.

use std::sync::Arc;

use wasmtime::component::{ComponentType, Lower};

use super::bindings::types as wit;
use crate::event::{Event, Op, Relation, SnapshotMarker, TemporalKind, Value};

/// `types.batch`.
#[derive(ComponentType, Lower)]
#[component(record)]
pub(crate) struct BatchView<'a> {
    relations: Vec<RelationView<'a>>,
    events: Vec<EventView<'a>>,
}

/// `types.relation`.
#[derive(ComponentType, Lower)]
#[component(record)]
pub(crate) struct RelationView<'a> {
    oid: u32,
    schema: &'a str,
    table: &'a str,
    columns: Vec<ColumnView<'a>>,
}

/// `types.column`.
#[derive(ComponentType, Lower)]
#[component(record)]
pub(crate) struct ColumnView<'a> {
    name: &'a str,
    #[component(name = "type-name")]
    type_name: &'a str,
    #[component(name = "type-oid")]
    type_oid: u32,
    #[component(name = "type-modifier")]
    type_modifier: i32,
    key: bool,
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
                lsn: event.source.lsn,
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
        relations: relations.iter().map(|r| relation_view(r)).collect(),
        events,
    };
    f(&batch)
}

/// The distinct relations of `events`, in order of first appearance.
pub(crate) fn relations_of(events: &[Event]) -> Vec<Arc<Relation>> {
    let mut relations: Vec<Arc<Relation>> = Vec::new();
    let mut index = RelationIndex::default();
    for event in events {
        if index.find(&relations, &event.relation).is_none() {
            relations.push(event.relation.clone());
        }
    }
    relations
}

/// Finds an event's relation in a batch's short list, remembering the last hit: batches are
/// usually runs of one table.
#[derive(Default)]
struct RelationIndex {
    last: usize,
}

impl RelationIndex {
    fn find(&mut self, relations: &[Arc<Relation>], relation: &Arc<Relation>) -> Option<u32> {
        if relations
            .get(self.last)
            .is_some_and(|r| Arc::ptr_eq(r, relation))
        {
            return Some(self.last as u32);
        }
        let found = relations.iter().position(|r| Arc::ptr_eq(r, relation))?;
        self.last = found;
        Some(found as u32)
    }

    fn of(&mut self, relations: &[Arc<Relation>], relation: &Arc<Relation>) -> u32 {
        // `relations` came from `relations_of` over the same events.
        self.find(relations, relation).unwrap_or(u32::MAX)
    }
}

fn relation_view(relation: &Relation) -> RelationView<'_> {
    RelationView {
        oid: relation.oid,
        schema: &relation.schema,
        table: &relation.table,
        columns: relation
            .columns
            .iter()
            .map(|c| ColumnView {
                name: &c.name,
                type_name: &c.type_name,
                type_oid: c.type_oid,
                type_modifier: c.type_modifier,
                key: c.key,
            })
            .collect(),
    }
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

pub(crate) fn op_to_wit(op: Op) -> wit::Op {
    match op {
        Op::Create => wit::Op::Create,
        Op::Update => wit::Op::Update,
        Op::Delete => wit::Op::Delete,
        Op::Read => wit::Op::Read,
        Op::Truncate => wit::Op::Truncate,
        Op::Message => wit::Op::Message,
    }
}

fn snapshot_to_wit(marker: SnapshotMarker) -> wit::SnapshotMarker {
    match marker {
        SnapshotMarker::False => wit::SnapshotMarker::False,
        SnapshotMarker::True => wit::SnapshotMarker::True,
        SnapshotMarker::First => wit::SnapshotMarker::First,
        SnapshotMarker::Last => wit::SnapshotMarker::Last,
        SnapshotMarker::Incremental => wit::SnapshotMarker::Incremental,
    }
}

fn temporal_to_wit(kind: TemporalKind) -> wit::TemporalKind {
    match kind {
        TemporalKind::Date => wit::TemporalKind::Date,
        TemporalKind::Time => wit::TemporalKind::Time,
        TemporalKind::TimeTz => wit::TemporalKind::TimeTz,
        TemporalKind::Timestamp => wit::TemporalKind::Timestamp,
        TemporalKind::TimestampTz => wit::TemporalKind::TimestampTz,
        TemporalKind::Interval => wit::TemporalKind::Interval,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Column, Source};

    fn relation(table: &str) -> Arc<Relation> {
        Arc::new(Relation {
            oid: 1,
            schema: "public".into(),
            table: table.into(),
            columns: vec![Column {
                name: "id".into(),
                type_oid: 23,
                type_name: "int4".into(),
                type_modifier: -1,
                key: true,
            }],
        })
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
            let tables: Vec<_> = batch.relations.iter().map(|r| r.table).collect();
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
