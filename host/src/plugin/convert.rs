//! Host events <-> the WIT batch, and applying what plugins answer.
//!
//! A chain converts a batch to its WIT form once and keeps both forms in step as the stages
//! run (filters drop from both, transforms' edits are applied to both), so each further plugin
//! costs only the lowering into its memory, not another conversion.

use std::collections::HashMap;
use std::sync::Arc;

use super::bindings::types as wit;
use super::error::PluginError;
use crate::event::{
    Array, Event, LogicalMessage, Op, Relation, Row, SnapshotMarker, Source, TemporalKind, Value,
};

/// A batch in both forms, index for index.
pub(crate) struct WorkBatch {
    /// The host events.
    pub host: Vec<Event>,
    /// The same events as the plugins see them.
    pub wit: wit::Batch,
    /// `wit.relations[i]` as the host's shared relation.
    pub relations: Vec<Arc<Relation>>,
}

impl WorkBatch {
    /// Converts `events`, sending each distinct relation once.
    pub fn new(host: Vec<Event>) -> WorkBatch {
        let (wit, relations) = batch_to_wit(&host);
        WorkBatch {
            host,
            wit,
            relations,
        }
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.host.len()
    }

    /// Splits off the events from `at` on into a second batch.
    pub fn split_off(&mut self, at: usize) -> WorkBatch {
        WorkBatch {
            host: self.host.split_off(at),
            wit: wit::Batch {
                relations: self.wit.relations.clone(),
                events: self.wit.events.split_off(at),
            },
            relations: self.relations.clone(),
        }
    }

    /// Appends `other`'s events, merging its relations into this batch's.
    pub fn append(&mut self, other: WorkBatch) {
        let mut remap = Vec::with_capacity(other.relations.len());
        for (rel, wit_rel) in other.relations.iter().zip(other.wit.relations) {
            let found = self.relations.iter().position(|r| Arc::ptr_eq(r, rel));
            remap.push(match found {
                Some(i) => i as u32,
                None => {
                    self.relations.push(rel.clone());
                    self.wit.relations.push(wit_rel);
                    (self.relations.len() - 1) as u32
                }
            });
        }
        for mut event in other.wit.events {
            event.relation = remap[event.relation as usize];
            self.wit.events.push(event);
        }
        self.host.extend(other.host);
    }

    /// Keeps the events whose flag is `true`.
    pub fn retain(&mut self, keep: &[bool]) {
        let mut flags = keep.iter();
        self.host.retain(|_| *flags.next().unwrap_or(&true));
        let mut flags = keep.iter();
        self.wit.events.retain(|_| *flags.next().unwrap_or(&true));
    }

    /// Sets each event's topic.
    pub fn set_topics(&mut self, topics: Vec<String>) {
        for ((host, wit), topic) in self.host.iter_mut().zip(&mut self.wit.events).zip(topics) {
            wit.topic = Some(topic.clone());
            host.topic = Some(topic);
        }
    }

    /// Applies a transform's edits. Events the plugin failed on are taken out of the batch and
    /// returned with the plugin's message; a malformed edit fails the whole call.
    pub fn apply_edits(
        &mut self,
        edits: Vec<wit::Edit>,
        plugin: &str,
    ) -> Result<Vec<(Event, String)>, PluginError> {
        let bad = |message: String| PluginError::BadOutput {
            plugin: plugin.to_string(),
            message,
        };
        for edit in &edits {
            self.validate(edit).map_err(bad)?;
        }
        let n = self.len();
        let mut keep = vec![true; n];
        let mut failures: HashMap<usize, String> = HashMap::new();
        let mut removals: HashMap<usize, Vec<usize>> = HashMap::new();
        for edit in edits {
            match edit {
                wit::Edit::Set(set) => self.apply_set(set).map_err(bad)?,
                wit::Edit::Remove(remove) => {
                    let event = self.check_index(remove.event).map_err(bad)?;
                    let width = self.host[event].relation.columns.len();
                    let column = remove.column as usize;
                    if column >= width {
                        return Err(bad(format!(
                            "edit removes column {column} of event {event}, which has {width} columns"
                        )));
                    }
                    removals.entry(event).or_default().push(column);
                }
                wit::Edit::Drop(event) => {
                    let event = self.check_index(event).map_err(bad)?;
                    keep[event] = false;
                }
                wit::Edit::Replace(replace) => {
                    let event = self.check_index(replace.event).map_err(bad)?;
                    let host =
                        event_from_wit(&replace.replacement, &self.relations).map_err(bad)?;
                    self.host[event] = host;
                    self.wit.events[event] = replace.replacement;
                }
                wit::Edit::Fail(failure) => {
                    let event = self.check_index(failure.event).map_err(bad)?;
                    keep[event] = false;
                    failures.insert(event, failure.message);
                }
            }
        }
        let failed = self.take_failed(&keep, failures);
        let structural = !removals.is_empty();
        if structural {
            self.apply_removals(removals);
        }
        self.retain(&keep);
        if structural {
            *self = WorkBatch::new(std::mem::take(&mut self.host));
        }
        Ok(failed)
    }

    /// Checks an edit against the batch, so that applying the edits never stops half way.
    fn validate(&self, edit: &wit::Edit) -> Result<(), String> {
        match edit {
            wit::Edit::Set(set) => {
                let event = self.check_index(set.event)?;
                let host = &self.host[event];
                let (row, side) = match set.side {
                    wit::RowSide::Before => (&host.before, "before"),
                    wit::RowSide::After => (&host.after, "after"),
                };
                let Some(row) = row else {
                    return Err(format!(
                        "edit sets a value in event {event}, which has no {side} row"
                    ));
                };
                if set.column as usize >= row.len() {
                    return Err(format!(
                        "edit sets column {} of event {event}, which has {} columns",
                        set.column,
                        row.len()
                    ));
                }
                Ok(())
            }
            wit::Edit::Remove(remove) => {
                let event = self.check_index(remove.event)?;
                let width = self.host[event].relation.columns.len();
                if remove.column as usize >= width {
                    return Err(format!(
                        "edit removes column {} of event {event}, which has {width} columns",
                        remove.column
                    ));
                }
                Ok(())
            }
            wit::Edit::Drop(event) => self.check_index(*event).map(drop),
            wit::Edit::Fail(failure) => self.check_index(failure.event).map(drop),
            wit::Edit::Replace(replace) => {
                self.check_index(replace.event)?;
                event_from_wit(&replace.replacement, &self.relations).map(drop)
            }
        }
    }

    fn check_index(&self, event: u32) -> Result<usize, String> {
        let i = event as usize;
        if i < self.len() {
            Ok(i)
        } else {
            Err(format!(
                "edit refers to event {i} but the batch has {} events",
                self.len()
            ))
        }
    }

    fn apply_set(&mut self, set: wit::SetValue) -> Result<(), String> {
        let event = self.check_index(set.event)?;
        let column = set.column as usize;
        let host_event = &mut self.host[event];
        let wit_event = &mut self.wit.events[event];
        let (host_row, wit_row, side) = match set.side {
            wit::RowSide::Before => (&mut host_event.before, &mut wit_event.before, "before"),
            wit::RowSide::After => (&mut host_event.after, &mut wit_event.after, "after"),
        };
        let (Some(host_row), Some(wit_row)) = (host_row.as_mut(), wit_row.as_mut()) else {
            return Err(format!(
                "edit sets a value in event {event}, which has no {side} row"
            ));
        };
        let (Some(host_slot), Some(wit_slot)) = (host_row.get_mut(column), wit_row.get_mut(column))
        else {
            return Err(format!(
                "edit sets column {column} of event {event}, which has {} columns",
                host_row.len()
            ));
        };
        *host_slot = value_from_wit(&set.value);
        *wit_slot = set.value;
        Ok(())
    }

    fn take_failed(
        &mut self,
        keep: &[bool],
        mut failures: HashMap<usize, String>,
    ) -> Vec<(Event, String)> {
        let mut failed = Vec::new();
        for (i, kept) in keep.iter().enumerate() {
            if !kept && let Some(message) = failures.remove(&i) {
                failed.push((self.host[i].clone(), message));
            }
        }
        failed
    }

    /// Removes columns: events sharing a relation and a set of removed columns share the new
    /// relation too.
    fn apply_removals(&mut self, removals: HashMap<usize, Vec<usize>>) {
        let mut derived: HashMap<(*const Relation, Vec<usize>), Arc<Relation>> = HashMap::new();
        for (event, mut columns) in removals {
            columns.sort_unstable();
            columns.dedup();
            let host = &mut self.host[event];
            let key = (Arc::as_ptr(&host.relation), columns.clone());
            let relation = derived
                .entry(key)
                .or_insert_with(|| {
                    let mut rel = (*host.relation).clone();
                    for &c in columns.iter().rev() {
                        rel.columns.remove(c);
                    }
                    Arc::new(rel)
                })
                .clone();
            host.relation = relation;
            for row in [host.before.as_mut(), host.after.as_mut()]
                .into_iter()
                .flatten()
            {
                for &c in columns.iter().rev() {
                    if c < row.len() {
                        row.remove(c);
                    }
                }
            }
        }
    }
}

/// The WIT batch of `events` (each distinct relation sent once) and the host relations its
/// indices refer to.
pub(crate) fn batch_to_wit(host: &[Event]) -> (wit::Batch, Vec<Arc<Relation>>) {
    let mut index: HashMap<*const Relation, u32> = HashMap::new();
    let mut relations = Vec::new();
    let mut wit_relations = Vec::new();
    let mut events = Vec::with_capacity(host.len());
    for event in host {
        let idx = *index
            .entry(Arc::as_ptr(&event.relation))
            .or_insert_with(|| {
                relations.push(event.relation.clone());
                wit_relations.push(relation_to_wit(&event.relation));
                (relations.len() - 1) as u32
            });
        events.push(event_to_wit(event, idx));
    }
    let batch = wit::Batch {
        relations: wit_relations,
        events,
    };
    (batch, relations)
}

fn relation_to_wit(relation: &Relation) -> wit::Relation {
    wit::Relation {
        oid: relation.oid,
        schema: relation.schema.clone(),
        table: relation.table.clone(),
        columns: relation
            .columns
            .iter()
            .map(|c| wit::Column {
                name: c.name.clone(),
                type_name: c.type_name.clone(),
                type_oid: c.type_oid,
                type_modifier: c.type_modifier,
                key: c.key,
            })
            .collect(),
    }
}

fn event_to_wit(event: &Event, relation: u32) -> wit::Event {
    wit::Event {
        op: op_to_wit(event.op),
        relation,
        source: wit::Source {
            db: event.source.db.clone(),
            lsn: event.source.lsn,
            xid: event.source.xid,
            commit_time_us: event.source.commit_time_us,
            snapshot: snapshot_to_wit(event.source.snapshot),
        },
        before: event.before.as_deref().map(row_to_wit),
        after: event.after.as_deref().map(row_to_wit),
        topic: event.topic.clone(),
        message: event.message.as_ref().map(|m| wit::LogicalMessage {
            transactional: m.transactional,
            prefix: m.prefix.clone(),
            content: m.content.clone(),
        }),
    }
}

/// The host event a plugin's replacement describes; its relation must exist and its rows must
/// fit it.
fn event_from_wit(event: &wit::Event, relations: &[Arc<Relation>]) -> Result<Event, String> {
    let relation = relations
        .get(event.relation as usize)
        .ok_or_else(|| {
            format!(
                "replacement refers to relation {} of {}",
                event.relation,
                relations.len()
            )
        })?
        .clone();
    let width = relation.columns.len();
    for row in [&event.before, &event.after].into_iter().flatten() {
        if row.len() != width {
            return Err(format!(
                "replacement row has {} values but {} has {width} columns",
                row.len(),
                relation.qualified_name()
            ));
        }
    }
    Ok(Event {
        op: op_from_wit(event.op),
        relation,
        source: Source {
            db: event.source.db.clone(),
            lsn: event.source.lsn,
            xid: event.source.xid,
            commit_time_us: event.source.commit_time_us,
            snapshot: snapshot_from_wit(event.source.snapshot),
        },
        before: event.before.as_deref().map(row_from_wit),
        after: event.after.as_deref().map(row_from_wit),
        topic: event.topic.clone(),
        message: event.message.as_ref().map(|m| LogicalMessage {
            transactional: m.transactional,
            prefix: m.prefix.clone(),
            content: m.content.clone(),
        }),
    })
}

fn row_to_wit(row: &[Value]) -> Vec<wit::Value> {
    row.iter().map(value_to_wit).collect()
}

fn row_from_wit(row: &[wit::Value]) -> Row {
    row.iter().map(value_from_wit).collect()
}

fn op_to_wit(op: Op) -> wit::Op {
    match op {
        Op::Create => wit::Op::Create,
        Op::Update => wit::Op::Update,
        Op::Delete => wit::Op::Delete,
        Op::Read => wit::Op::Read,
        Op::Truncate => wit::Op::Truncate,
        Op::Message => wit::Op::Message,
    }
}

fn op_from_wit(op: wit::Op) -> Op {
    match op {
        wit::Op::Create => Op::Create,
        wit::Op::Update => Op::Update,
        wit::Op::Delete => Op::Delete,
        wit::Op::Read => Op::Read,
        wit::Op::Truncate => Op::Truncate,
        wit::Op::Message => Op::Message,
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

fn snapshot_from_wit(marker: wit::SnapshotMarker) -> SnapshotMarker {
    match marker {
        wit::SnapshotMarker::False => SnapshotMarker::False,
        wit::SnapshotMarker::True => SnapshotMarker::True,
        wit::SnapshotMarker::First => SnapshotMarker::First,
        wit::SnapshotMarker::Last => SnapshotMarker::Last,
        wit::SnapshotMarker::Incremental => SnapshotMarker::Incremental,
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

fn temporal_from_wit(kind: wit::TemporalKind) -> TemporalKind {
    match kind {
        wit::TemporalKind::Date => TemporalKind::Date,
        wit::TemporalKind::Time => TemporalKind::Time,
        wit::TemporalKind::TimeTz => TemporalKind::TimeTz,
        wit::TemporalKind::Timestamp => TemporalKind::Timestamp,
        wit::TemporalKind::TimestampTz => TemporalKind::TimestampTz,
        wit::TemporalKind::Interval => TemporalKind::Interval,
    }
}

/// A host value as the plugins see it.
pub(crate) fn value_to_wit(value: &Value) -> wit::Value {
    match value {
        Value::Null => wit::Value::Null,
        Value::Bool(b) => wit::Value::Boolean(*b),
        Value::Int(i) => wit::Value::Int(*i),
        Value::Float(f) => wit::Value::Float(*f),
        Value::Text(s) => wit::Value::Text(s.clone()),
        Value::Bytes(b) => wit::Value::Bytes(b.clone()),
        Value::Numeric(s) => wit::Value::Numeric(s.clone()),
        Value::Temporal(kind, text) => wit::Value::Temporal(wit::Temporal {
            kind: temporal_to_wit(*kind),
            text: text.clone(),
        }),
        Value::Json(s) => wit::Value::Json(s.clone()),
        Value::Uuid(s) => wit::Value::Uuid(s.clone()),
        Value::Array(array) => wit::Value::Array(wit::Array {
            dims: array.dims.clone(),
            elements: array.elements.iter().map(scalar_to_wit).collect(),
        }),
        Value::UnchangedToast => wit::Value::UnchangedToast,
        Value::Raw { type_name, text } => wit::Value::Raw(wit::Raw {
            type_name: type_name.clone(),
            text: text.clone(),
        }),
    }
}

fn scalar_to_wit(value: &Value) -> wit::Scalar {
    match value {
        Value::Null => wit::Scalar::Null,
        Value::Bool(b) => wit::Scalar::Boolean(*b),
        Value::Int(i) => wit::Scalar::Int(*i),
        Value::Float(f) => wit::Scalar::Float(*f),
        Value::Text(s) => wit::Scalar::Text(s.clone()),
        Value::Bytes(b) => wit::Scalar::Bytes(b.clone()),
        Value::Numeric(s) => wit::Scalar::Numeric(s.clone()),
        Value::Temporal(kind, text) => wit::Scalar::Temporal(wit::Temporal {
            kind: temporal_to_wit(*kind),
            text: text.clone(),
        }),
        Value::Json(s) => wit::Scalar::Json(s.clone()),
        Value::Uuid(s) => wit::Scalar::Uuid(s.clone()),
        // Elements are never arrays (see `event::Array`); keep one anyway, as text.
        Value::Array(array) => wit::Scalar::Raw(wit::Raw {
            type_name: "array".into(),
            text: format!("{array:?}"),
        }),
        Value::UnchangedToast => wit::Scalar::UnchangedToast,
        Value::Raw { type_name, text } => wit::Scalar::Raw(wit::Raw {
            type_name: type_name.clone(),
            text: text.clone(),
        }),
    }
}

/// A plugin's value as a host value.
pub(crate) fn value_from_wit(value: &wit::Value) -> Value {
    match value {
        wit::Value::Null => Value::Null,
        wit::Value::Boolean(b) => Value::Bool(*b),
        wit::Value::Int(i) => Value::Int(*i),
        wit::Value::Float(f) => Value::Float(*f),
        wit::Value::Text(s) => Value::Text(s.clone()),
        wit::Value::Bytes(b) => Value::Bytes(b.clone()),
        wit::Value::Numeric(s) => Value::Numeric(s.clone()),
        wit::Value::Temporal(t) => Value::Temporal(temporal_from_wit(t.kind), t.text.clone()),
        wit::Value::Json(s) => Value::Json(s.clone()),
        wit::Value::Uuid(s) => Value::Uuid(s.clone()),
        wit::Value::Array(a) => Value::Array(Array {
            dims: a.dims.clone(),
            elements: a.elements.iter().map(scalar_from_wit).collect(),
        }),
        wit::Value::UnchangedToast => Value::UnchangedToast,
        wit::Value::Raw(r) => Value::Raw {
            type_name: r.type_name.clone(),
            text: r.text.clone(),
        },
    }
}

fn scalar_from_wit(value: &wit::Scalar) -> Value {
    match value {
        wit::Scalar::Null => Value::Null,
        wit::Scalar::Boolean(b) => Value::Bool(*b),
        wit::Scalar::Int(i) => Value::Int(*i),
        wit::Scalar::Float(f) => Value::Float(*f),
        wit::Scalar::Text(s) => Value::Text(s.clone()),
        wit::Scalar::Bytes(b) => Value::Bytes(b.clone()),
        wit::Scalar::Numeric(s) => Value::Numeric(s.clone()),
        wit::Scalar::Temporal(t) => Value::Temporal(temporal_from_wit(t.kind), t.text.clone()),
        wit::Scalar::Json(s) => Value::Json(s.clone()),
        wit::Scalar::Uuid(s) => Value::Uuid(s.clone()),
        wit::Scalar::UnchangedToast => Value::UnchangedToast,
        wit::Scalar::Raw(r) => Value::Raw {
            type_name: r.type_name.clone(),
            text: r.text.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Column;

    fn batch() -> WorkBatch {
        let relation = Arc::new(Relation {
            oid: 1,
            schema: "public".into(),
            table: "users".into(),
            columns: ["id", "email", "name"]
                .iter()
                .map(|n| Column {
                    name: (*n).into(),
                    type_oid: 0,
                    type_name: "text".into(),
                    type_modifier: -1,
                    key: *n == "id",
                })
                .collect(),
        });
        let event = |id: i64| Event {
            op: Op::Create,
            relation: relation.clone(),
            source: Source::default(),
            before: None,
            after: Some(vec![
                Value::Int(id),
                Value::Text("a@b".into()),
                Value::Text("Ann".into()),
            ]),
            topic: None,
            message: None,
        };
        WorkBatch::new(vec![event(1), event(2), event(3)])
    }

    #[test]
    fn relations_are_sent_once_per_batch() {
        let b = batch();
        assert_eq!(b.wit.relations.len(), 1);
        assert!(b.wit.events.iter().all(|e| e.relation == 0));
    }

    #[test]
    fn removing_a_column_shares_the_derived_relation_and_keeps_both_forms_in_step() {
        let mut b = batch();
        let remove = |event| wit::Edit::Remove(wit::RemoveColumn { event, column: 1 });
        let failed = b
            .apply_edits(vec![remove(0), remove(2), wit::Edit::Drop(1)], "t")
            .unwrap();
        assert!(failed.is_empty());
        assert_eq!(b.len(), 2);
        assert!(Arc::ptr_eq(&b.host[0].relation, &b.host[1].relation));
        let names: Vec<_> = b.host[0]
            .relation
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["id", "name"]);
        assert_eq!(
            b.host[1].after.as_ref().unwrap(),
            &vec![Value::Int(3), Value::Text("Ann".into())]
        );
        assert_eq!(b.wit.relations.len(), 1);
        assert_eq!(b.wit.relations[0].columns.len(), 2);
        assert_eq!(b.wit.events[1].after.as_ref().unwrap().len(), 2);
    }

    #[test]
    fn a_malformed_edit_changes_nothing() {
        let mut b = batch();
        let set = wit::Edit::Set(wit::SetValue {
            event: 0,
            side: wit::RowSide::After,
            column: 1,
            value: wit::Value::Text("masked".into()),
        });
        let bad = wit::Edit::Set(wit::SetValue {
            event: 0,
            side: wit::RowSide::Before,
            column: 0,
            value: wit::Value::Null,
        });
        let err = b.apply_edits(vec![set, bad], "t").unwrap_err();
        assert!(matches!(err, PluginError::BadOutput { .. }), "{err}");
        assert!(err.to_string().contains("no before row"), "{err}");
        assert_eq!(
            b.host[0].after.as_ref().unwrap()[1],
            Value::Text("a@b".into())
        );
        let out_of_range = wit::Edit::Drop(3);
        assert!(b.apply_edits(vec![out_of_range], "t").is_err());
        assert_eq!(b.len(), 3);
    }

    #[test]
    fn failed_events_are_taken_out_with_their_message() {
        let mut b = batch();
        let failed = b
            .apply_edits(
                vec![wit::Edit::Fail(wit::EventFailure {
                    event: 1,
                    message: "nope".into(),
                })],
                "t",
            )
            .unwrap();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].1, "nope");
        assert_eq!(failed[0].0.after.as_ref().unwrap()[0], Value::Int(2));
        assert_eq!(b.len(), 2);
        assert_eq!(b.wit.events.len(), 2);
    }

    #[test]
    fn a_replacement_must_fit_its_relation() {
        let mut b = batch();
        let mut replacement = b.wit.events[0].clone();
        replacement.op = wit::Op::Delete;
        replacement.before = replacement.after.take();
        let ok = wit::Edit::Replace(wit::ReplaceEvent {
            event: 0,
            replacement: replacement.clone(),
        });
        b.apply_edits(vec![ok], "t").unwrap();
        assert_eq!(b.host[0].op, Op::Delete);
        assert!(b.host[0].after.is_none());
        replacement.before = Some(vec![wit::Value::Null]);
        let short = wit::Edit::Replace(wit::ReplaceEvent {
            event: 1,
            replacement,
        });
        assert!(b.apply_edits(vec![short], "t").is_err());
    }
}
