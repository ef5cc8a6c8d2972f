//! `walflow:plugin@0.2.0` and `0.2.1`: a batch lowered as a few flat lists (with 0.2.1, only
//! the columns a plugin reads), and the answers lifted into host terms.
//!
//! Lowering a list costs one guest allocation and a copy; lowering a string or a row costs
//! the same again, each. So the host lays a batch out flat first ([`FlatBatch`]): every row's
//! values in one list, every string (database names, text, bytes, topics) in one buffer, and
//! the events refer to them by position. A call then allocates in the guest a handful of
//! times whatever the batch holds. Events and values are written in the guest's memory layout
//! as they are laid out (`canonical.rs`), so each list is one copy. The buffers live in the
//! plugin's instance between calls.
//!
//! Answers are flat the same way (a transform's new strings in one buffer, a namer's distinct
//! topics once) and are checked here: a span or row outside its buffer, or text that is not
//! UTF-8, is the plugin's error, reported as bad output.

use std::sync::Arc;

use wasmtime::component::{ComponentType, Lower};

pub(crate) use super::canonical::LiftedEdits;
use super::canonical::{EventBytes, LiftedEdit, ValueBytes};
pub(crate) use super::per_table::TableAnswers;
pub(crate) use super::projection::{Projection, Projections};
use super::{RelationIndex, RelationView};
use crate::bindings::types as wit;
use crate::convert::{Edit, Replacement};
use walflow_core::event::{Array, Event, LogicalMessage, Relation, Source, Value};

super::enum_conversions!(wit);

/// `types.batch`, borrowing a [`FlatBatch`].
#[derive(ComponentType, Lower)]
#[component(record)]
pub(crate) struct BatchView<'a> {
    relations: Vec<RelationView<'a>>,
    events: &'a [EventBytes],
    values: &'a [ValueBytes],
    data: &'a [u8],
}

/// `types.topics` for a sink plugin: each distinct topic once.
#[derive(ComponentType, Lower)]
#[component(record)]
pub(crate) struct TopicsView<'a> {
    names: Vec<&'a str>,
    #[component(name = "of-event")]
    of_event: Vec<u32>,
}

impl<'a> TopicsView<'a> {
    /// The topics of a batch, one per event.
    pub(crate) fn new(topics: &'a [String]) -> TopicsView<'a> {
        let mut names: Vec<&str> = Vec::new();
        let of_event = topics
            .iter()
            .map(|topic| match names.iter().rposition(|n| *n == topic) {
                Some(i) => i as u32,
                None => {
                    names.push(topic);
                    (names.len() - 1) as u32
                }
            })
            .collect();
        TopicsView { names, of_event }
    }
}

/// A batch laid out as 0.2 sends it. An instance keeps one and refills it for every call,
/// so its buffers are allocated once.
#[derive(Default)]
pub(crate) struct FlatBatch {
    relations: Vec<Arc<Relation>>,
    /// Per relation (index for index), the columns the plugin reads; empty when it reads all.
    projected: Vec<Option<Arc<Projection>>>,
    events: Vec<EventBytes>,
    values: Vec<ValueBytes>,
    data: Vec<u8>,
}

impl FlatBatch {
    /// Lays `events` out; `relations` are theirs ([`relations_of`](super::relations_of)), and
    /// `projected` says for each which columns to send (empty: all). Without `rows`, events
    /// go without `before`/`after` (for plugins whose `init` said they never read them).
    /// `Err` when the batch does not fit the ABI's 32-bit offsets.
    pub(crate) fn fill(
        &mut self,
        events: &[Event],
        relations: Vec<Arc<Relation>>,
        projected: Vec<Option<Arc<Projection>>>,
        rows: bool,
    ) -> Result<(), String> {
        self.relations = relations;
        self.events.clear();
        self.values.clear();
        self.data.clear();
        let mut index = RelationIndex::default();
        // Events of a batch come from one database: send its name once.
        let mut db: Option<(&Arc<str>, wit::Span)> = None;
        for event in events {
            let db_span = match db {
                // Events share their database's name: compare the pointer before the text.
                Some((name, span))
                    if Arc::ptr_eq(name, &event.source.db) || **name == *event.source.db =>
                {
                    span
                }
                _ => {
                    let span = self.span(event.source.db.as_bytes());
                    db = Some((&event.source.db, span));
                    span
                }
            };
            let relation = index.of(&self.relations, &event.relation);
            let columns = projected
                .get(relation as usize)
                .and_then(Option::as_deref)
                .map(Projection::columns);
            let (before, after) = if rows {
                (
                    event.before.as_deref().map(|r| self.row(r, columns)),
                    event.after.as_deref().map(|r| self.row(r, columns)),
                )
            } else {
                (None, None)
            };
            let flat = EventBytes::new(&wit::Event {
                op: op_to_wit(event.op),
                relation,
                source: wit::Source {
                    db: db_span,
                    lsn: event.source.lsn.0,
                    xid: event.source.xid,
                    commit_time_us: event.source.commit_time_us,
                    snapshot: snapshot_to_wit(event.source.snapshot),
                },
                before,
                after,
                topic: event.topic.as_deref().map(|t| self.span(t.as_bytes())),
                message: event.message.as_ref().map(|m| self.message(m)),
            });
            self.events.push(flat);
        }
        self.projected = projected;
        if u32::try_from(self.data.len()).is_err() || u32::try_from(self.values.len()).is_err() {
            return Err(format!(
                "a batch of {} events holds {} bytes of text and {} values, more than a plugin call can take (4 GiB); lower the batch size",
                events.len(),
                self.data.len(),
                self.values.len()
            ));
        }
        Ok(())
    }

    /// Gives back the memory of an unusually large batch, so that one burst does not stay
    /// allocated for the life of the instance.
    pub(crate) fn trim(&mut self) {
        const KEEP: usize = 8 << 20;
        self.relations = Vec::new();
        self.projected = Vec::new();
        if self.data.capacity() > KEEP {
            self.data = Vec::new();
        }
        if self.values.capacity() * std::mem::size_of::<ValueBytes>() > KEEP {
            self.values = Vec::new();
        }
        if self.events.capacity() * std::mem::size_of::<EventBytes>() > KEEP {
            self.events = Vec::new();
        }
    }

    /// The batch as the plugin sees it.
    pub(crate) fn view(&self) -> BatchView<'_> {
        BatchView {
            relations: self
                .relations
                .iter()
                .enumerate()
                .map(|(i, r)| match self.projected.get(i) {
                    Some(Some(p)) => RelationView::new(p.relation()),
                    _ => RelationView::new(r),
                })
                .collect(),
            events: &self.events,
            values: &self.values,
            data: &self.data,
        }
    }

    fn span(&mut self, bytes: &[u8]) -> wit::Span {
        let start = self.data.len() as u32;
        self.data.extend_from_slice(bytes);
        wit::Span {
            start,
            len: bytes.len() as u32,
        }
    }

    /// Lays out a row's values: all of them, or those of `columns` (positions in the row).
    fn row(&mut self, row: &[Value], columns: Option<&[u32]>) -> wit::Row {
        let start = self.values.len() as u32;
        match columns {
            None => row.iter().for_each(|value| self.push_value(value)),
            Some(columns) => {
                for &c in columns {
                    // Rows are as wide as their relation, which the projection was checked against.
                    self.push_value(row.get(c as usize).unwrap_or(&Value::Null));
                }
            }
        }
        wit::Row {
            start,
            len: self.values.len() as u32 - start,
        }
    }

    fn push_value(&mut self, value: &Value) {
        let flat = self.value(value);
        self.values.push(ValueBytes::new(flat));
    }

    fn message(&mut self, message: &LogicalMessage) -> wit::LogicalMessage {
        wit::LogicalMessage {
            transactional: message.transactional,
            prefix: self.span(message.prefix.as_bytes()),
            content: self.span(&message.content),
        }
    }

    #[inline]
    fn value(&mut self, value: &Value) -> wit::Value {
        match value {
            Value::Null => wit::Value::Null,
            Value::Bool(b) => wit::Value::Boolean(*b),
            Value::Int(i) => wit::Value::Int(*i),
            Value::Float(f) => wit::Value::Float(*f),
            Value::Text(s) => wit::Value::Text(self.span(s.as_bytes())),
            Value::Bytes(b) => wit::Value::Bytes(self.span(b)),
            Value::Numeric(s) => wit::Value::Numeric(self.span(s.as_bytes())),
            Value::Temporal(kind, text) => wit::Value::Temporal(wit::Temporal {
                kind: temporal_to_wit(*kind),
                text: self.span(text.as_bytes()),
            }),
            Value::Json(s) => wit::Value::Json(self.span(s.as_bytes())),
            Value::Uuid(s) => wit::Value::Uuid(self.span(s.as_bytes())),
            Value::Array(array) => wit::Value::Array(wit::Array {
                dims: array.dims.clone(),
                elements: array.elements.iter().map(|e| self.scalar(e)).collect(),
            }),
            Value::UnchangedToast => wit::Value::UnchangedToast,
            Value::Raw { type_name, text } => wit::Value::Raw(wit::Raw {
                type_name: self.span(type_name.as_bytes()),
                text: self.span(text.as_bytes()),
            }),
        }
    }

    fn scalar(&mut self, value: &Value) -> wit::Scalar {
        match value {
            // Elements are never arrays (see `event::Array`); a nested one goes as its type name.
            Value::Array(_) => wit::Scalar::Raw(wit::Raw {
                type_name: self.span(b"array"),
                text: self.span(b""),
            }),
            other => match self.value(other) {
                wit::Value::Null => wit::Scalar::Null,
                wit::Value::Boolean(b) => wit::Scalar::Boolean(b),
                wit::Value::Int(i) => wit::Scalar::Int(i),
                wit::Value::Float(f) => wit::Scalar::Float(f),
                wit::Value::Text(s) => wit::Scalar::Text(s),
                wit::Value::Bytes(s) => wit::Scalar::Bytes(s),
                wit::Value::Numeric(s) => wit::Scalar::Numeric(s),
                wit::Value::Temporal(t) => wit::Scalar::Temporal(t),
                wit::Value::Json(s) => wit::Scalar::Json(s),
                wit::Value::Uuid(s) => wit::Scalar::Uuid(s),
                wit::Value::UnchangedToast | wit::Value::Array(_) => wit::Scalar::UnchangedToast,
                wit::Value::Raw(r) => wit::Scalar::Raw(r),
            },
        }
    }
}

/// A transform's answer in host terms; `Err` says what in it is malformed.
pub(crate) fn edits_from_wit(answer: LiftedEdits) -> Result<Vec<Edit>, String> {
    let buffers = Answer {
        values: &answer.values,
        data: &answer.data,
    };
    walflow_core::collect::try_collect_exact(answer.edits.iter().map(|LiftedEdit(edit)| {
        Ok(match edit {
            wit::Edit::Set(set) => Edit::Set {
                event: set.event,
                side: side_from_wit(set.side),
                column: set.column,
                value: buffers.value(&set.value)?,
            },
            wit::Edit::Remove(remove) => Edit::Remove {
                event: remove.event,
                column: remove.column,
            },
            wit::Edit::Drop(event) => Edit::Drop(*event),
            wit::Edit::Replace(replace) => Edit::Replace {
                event: replace.event,
                replacement: Box::new(buffers.replacement(&replace.replacement)?),
            },
            wit::Edit::Fail(failure) => Edit::Fail {
                event: failure.event,
                message: failure.message.clone(),
            },
        })
    }))
}

/// A topic namer's answer as one topic per event; `Err` says what in it is malformed.
pub(crate) fn topics_from_wit(topics: wit::Topics, events: usize) -> Result<Vec<Arc<str>>, String> {
    if topics.of_event.len() != events {
        return Err(format!(
            "{} topics for {} events",
            topics.of_event.len(),
            events
        ));
    }
    // Each distinct name is allocated once and shared by its events.
    let names: Vec<Arc<str>> = topics.names.into_iter().map(Arc::from).collect();
    walflow_core::collect::try_collect_exact(topics.of_event.iter().map(|&i| {
        names.get(i as usize).cloned().ok_or_else(|| {
            format!(
                "an event's topic is name {i} but there are {} names",
                names.len()
            )
        })
    }))
}

/// The buffers of a transform's answer, which its values refer into.
struct Answer<'a> {
    values: &'a [wit::Value],
    data: &'a [u8],
}

impl Answer<'_> {
    fn bytes(&self, span: wit::Span) -> Result<&[u8], String> {
        let start = span.start as usize;
        start
            .checked_add(span.len as usize)
            .and_then(|end| self.data.get(start..end))
            .ok_or_else(|| {
                format!(
                    "a span of {} bytes at {} lies outside the answer's {} bytes of data",
                    span.len,
                    span.start,
                    self.data.len()
                )
            })
    }

    fn text(&self, span: wit::Span) -> Result<String, String> {
        let bytes = self.bytes(span)?;
        walflow_core::value::utf8(bytes)
            .map(str::to_owned)
            .map_err(|e| format!("text at {} is not UTF-8 ({e})", span.start))
    }

    fn value(&self, value: &wit::Value) -> Result<Value, String> {
        Ok(match value {
            wit::Value::Null => Value::Null,
            wit::Value::Boolean(b) => Value::Bool(*b),
            wit::Value::Int(i) => Value::Int(*i),
            wit::Value::Float(f) => Value::Float(*f),
            wit::Value::Text(s) => Value::Text(self.text(*s)?),
            wit::Value::Bytes(s) => Value::Bytes(self.bytes(*s)?.to_vec()),
            wit::Value::Numeric(s) => Value::Numeric(self.text(*s)?),
            wit::Value::Temporal(t) => {
                Value::Temporal(temporal_from_wit(t.kind), self.text(t.text)?)
            }
            wit::Value::Json(s) => Value::Json(self.text(*s)?),
            wit::Value::Uuid(s) => Value::Uuid(self.text(*s)?),
            wit::Value::Array(a) => Value::Array(Array {
                dims: a.dims.clone(),
                lower_bounds: Vec::new(),
                elements: a
                    .elements
                    .iter()
                    .map(|e| self.scalar(e))
                    .collect::<Result<_, _>>()?,
            }),
            wit::Value::UnchangedToast => Value::UnchangedToast,
            wit::Value::Raw(r) => Value::Raw {
                type_name: self.text(r.type_name)?,
                text: self.text(r.text)?,
            },
        })
    }

    fn scalar(&self, scalar: &wit::Scalar) -> Result<Value, String> {
        let value = match *scalar {
            wit::Scalar::Null => wit::Value::Null,
            wit::Scalar::Boolean(b) => wit::Value::Boolean(b),
            wit::Scalar::Int(i) => wit::Value::Int(i),
            wit::Scalar::Float(f) => wit::Value::Float(f),
            wit::Scalar::Text(s) => wit::Value::Text(s),
            wit::Scalar::Bytes(s) => wit::Value::Bytes(s),
            wit::Scalar::Numeric(s) => wit::Value::Numeric(s),
            wit::Scalar::Temporal(t) => wit::Value::Temporal(t),
            wit::Scalar::Json(s) => wit::Value::Json(s),
            wit::Scalar::Uuid(s) => wit::Value::Uuid(s),
            wit::Scalar::UnchangedToast => wit::Value::UnchangedToast,
            wit::Scalar::Raw(r) => wit::Value::Raw(r),
        };
        self.value(&value)
    }

    fn row(&self, row: wit::Row) -> Result<Vec<Value>, String> {
        let start = row.start as usize;
        let values = start
            .checked_add(row.len as usize)
            .and_then(|end| self.values.get(start..end))
            .ok_or_else(|| {
                format!(
                    "a row of {} values at {} lies outside the answer's {} values",
                    row.len,
                    row.start,
                    self.values.len()
                )
            })?;
        values.iter().map(|v| self.value(v)).collect()
    }

    fn replacement(&self, event: &wit::Event) -> Result<Replacement, String> {
        let source = &event.source;
        Ok(Replacement {
            relation: event.relation,
            op: op_from_wit(event.op),
            source: Source {
                db: self.text(source.db)?.into(),
                lsn: walflow_core::event::Lsn(source.lsn),
                xid: source.xid,
                commit_time_us: source.commit_time_us,
                snapshot: snapshot_from_wit(source.snapshot),
                last_commit_lsn: None,
            },
            before: event.before.map(|r| self.row(r)).transpose()?,
            after: event.after.map(|r| self.row(r)).transpose()?,
            topic: event
                .topic
                .map(|t| self.text(t).map(Arc::from))
                .transpose()?,
            message: event
                .message
                .as_ref()
                .map(|m| {
                    Ok::<_, String>(LogicalMessage {
                        transactional: m.transactional,
                        prefix: self.text(m.prefix)?,
                        content: self.bytes(m.content)?.to_vec(),
                    })
                })
                .transpose()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use walflow_core::event::{Column, Op};

    fn relation(table: &str) -> Arc<Relation> {
        Relation::one_column(table, "name", "text", 25)
    }

    fn event(relation: &Arc<Relation>, before: Option<&str>, after: Option<&str>) -> Event {
        let row = |v: &str| vec![Value::Text(v.into())];
        Event {
            op: Op::Update,
            relation: relation.clone(),
            source: Source {
                db: "app".into(),
                ..Source::default()
            },
            before: before.map(row),
            after: after.map(row),
            topic: None,
            message: None,
        }
    }

    fn u32_at(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    /// The event's relation and rows, read back from its laid-out bytes (see `canonical.rs`).
    fn seen<'f>(
        flat: &'f FlatBatch,
        event: &EventBytes,
    ) -> (u32, Option<&'f str>, Option<&'f str>) {
        let bytes = event.bytes();
        let row = |at: usize| (bytes[at] == 1).then(|| text_of(flat, u32_at(bytes, at + 4)));
        (u32_at(bytes, 4), row(48), row(60))
    }

    /// The text of the value at `index`.
    fn text_of(flat: &FlatBatch, index: u32) -> &str {
        let ValueBytes::Laid(bytes) = &flat.values[index as usize] else {
            panic!("expected a laid-out value");
        };
        assert_eq!(bytes[0], 4, "a text value");
        let (start, len) = (u32_at(bytes, 8) as usize, u32_at(bytes, 12) as usize);
        std::str::from_utf8(&flat.data[start..][..len]).unwrap()
    }

    /// Lays out every column of `events`.
    fn fill(flat: &mut FlatBatch, events: &[Event], rows: bool) {
        let relations = super::super::relations_of(events);
        flat.fill(events, relations, Vec::new(), rows).unwrap();
    }

    #[test]
    fn a_projected_table_sends_only_its_columns() {
        let wide = Arc::new(Relation {
            columns: ["id", "name", "note"]
                .iter()
                .map(|n| Column {
                    name: n.to_string(),
                    ..relation("t").columns[0].clone()
                })
                .collect(),
            ..(*relation("t")).clone()
        });
        let mut e = event(&wide, None, None);
        e.after = Some(["1", "ann", "hi"].map(|v| Value::Text(v.into())).to_vec());
        let projection = Projection::new(&wide, Some(vec![2])).unwrap().map(Arc::new);
        let mut flat = FlatBatch::default();
        flat.fill(&[e], vec![wide.clone()], vec![projection], true)
            .unwrap();
        assert_eq!(seen(&flat, &flat.events[0]), (0, None, Some("hi")));
        assert_eq!(flat.values.len(), 1, "one value of three");
        assert!(
            !flat.data.windows(3).any(|w| w == b"ann"),
            "unsent text is not copied"
        );
        let view = flat.view();
        assert_eq!(view.relations[0].column_names(), ["note"]);
    }

    #[test]
    fn rows_and_strings_land_in_the_flat_lists() {
        let (a, b) = (relation("a"), relation("b"));
        let events = vec![
            event(&a, None, Some("one")),
            event(&b, Some("two"), Some("three")),
            event(&a, Some("four"), None),
        ];
        let mut flat = FlatBatch::default();
        fill(&mut flat, &events, true);
        let tables: Vec<_> = flat.relations.iter().map(|r| r.table.as_str()).collect();
        assert_eq!(tables, ["a", "b"]);
        let rows: Vec<_> = flat.events.iter().map(|e| seen(&flat, e)).collect();
        assert_eq!(
            rows,
            [
                (0, None, Some("one")),
                (1, Some("two"), Some("three")),
                (0, Some("four"), None)
            ]
        );
        // The database name goes once for the whole batch.
        let dbs: Vec<_> = flat.events.iter().map(|e| u32_at(e.bytes(), 8)).collect();
        assert_eq!(dbs, [0, 0, 0]);
        assert_eq!(flat.data.windows(3).filter(|w| w == b"app").count(), 1);

        fill(&mut flat, &events, false);
        assert!(flat.values.is_empty());
        assert!(flat.events.iter().all(|e| seen(&flat, e).1.is_none()));
        assert!(flat.events.iter().all(|e| seen(&flat, e).2.is_none()));
    }

    #[test]
    fn a_burst_does_not_stay_allocated() {
        let big = "x".repeat(9 << 20);
        let mut flat = FlatBatch::default();
        fill(&mut flat, &[event(&relation("a"), None, Some(&big))], true);
        flat.trim();
        assert_eq!(flat.data.capacity(), 0);
        assert!(flat.relations.is_empty(), "no relation is kept alive");
        fill(
            &mut flat,
            &[event(&relation("a"), None, Some("small"))],
            true,
        );
        flat.trim();
        assert!(
            flat.data.capacity() > 0,
            "ordinary batches keep their buffer"
        );
    }

    #[test]
    fn a_sink_gets_each_topic_once() {
        let topics: Vec<String> = ["a", "b", "a", "a"].map(String::from).to_vec();
        let view = TopicsView::new(&topics);
        assert_eq!(view.names, ["a", "b"]);
        assert_eq!(view.of_event, [0, 1, 0, 0]);
    }

    #[test]
    fn malformed_answers_are_named() {
        let span = |start, len| wit::Span { start, len };
        let set = |value| {
            wit::Edit::Set(wit::SetValue {
                event: 0,
                side: wit::RowSide::After,
                column: 0,
                value,
            })
        };
        let answer = |edits: Vec<wit::Edit>, data: &[u8]| LiftedEdits {
            edits: edits.into_iter().map(LiftedEdit).collect(),
            values: Vec::new(),
            data: data.to_vec(),
        };
        let ok = edits_from_wit(answer(vec![set(wit::Value::Text(span(1, 2)))], b"xok")).unwrap();
        assert!(matches!(&ok[0], Edit::Set { value: Value::Text(t), .. } if t == "ok"));
        let outside = edits_from_wit(answer(vec![set(wit::Value::Text(span(2, 5)))], b"xok"));
        assert!(outside.unwrap_err().contains("outside"));
        let not_utf8 = edits_from_wit(answer(vec![set(wit::Value::Text(span(0, 1)))], &[0xff]));
        assert!(not_utf8.unwrap_err().contains("UTF-8"));
        let topics = |names: &[&str], of_event: Vec<u32>| wit::Topics {
            names: names.iter().map(|n| n.to_string()).collect(),
            of_event,
        };
        let named = topics_from_wit(topics(&["x", "y"], vec![1, 0, 1]), 3).unwrap();
        assert_eq!(
            named.iter().map(|t| &**t).collect::<Vec<_>>(),
            ["y", "x", "y"]
        );
        assert!(Arc::ptr_eq(&named[0], &named[2]), "one allocation per name");
        assert!(topics_from_wit(topics(&["x"], vec![1]), 1).is_err());
        assert!(topics_from_wit(topics(&["x"], vec![0]), 2).is_err());
    }
}
