//! What plugins answer, applied to the host batch.
//!
//! Plugins see the batch through borrowed views (`view.rs`); what they send back (keep flags,
//! topics, edits) is applied here to the host events, the only copy of the batch.

use std::collections::HashMap;
use std::sync::Arc;

use super::bindings::types as wit;
use super::error::PluginError;
use super::view::relations_of;
use crate::event::{
    Array, Event, LogicalMessage, Op, Relation, Row, SnapshotMarker, Source, TemporalKind, Value,
};

/// A batch on its way through the chain.
pub(crate) struct WorkBatch {
    /// The events.
    pub host: Vec<Event>,
}

impl WorkBatch {
    /// Wraps `events`.
    pub fn new(host: Vec<Event>) -> WorkBatch {
        WorkBatch { host }
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.host.len()
    }

    /// Splits off the events from `at` on into a second batch.
    pub fn split_off(&mut self, at: usize) -> WorkBatch {
        WorkBatch {
            host: self.host.split_off(at),
        }
    }

    /// Appends `other`'s events.
    pub fn append(&mut self, other: WorkBatch) {
        self.host.extend(other.host);
    }

    /// Keeps the events whose flag is `true`.
    pub fn retain(&mut self, keep: &[bool]) {
        let mut flags = keep.iter();
        self.host.retain(|_| *flags.next().unwrap_or(&true));
    }

    /// Sets each event's topic.
    pub fn set_topics(&mut self, topics: Vec<String>) {
        for (host, topic) in self.host.iter_mut().zip(topics) {
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
        // Replacements name their relation by its index in the batch the plugin saw.
        let relations = if edits.iter().any(|e| matches!(e, wit::Edit::Replace(_))) {
            relations_of(&self.host)
        } else {
            Vec::new()
        };
        for edit in &edits {
            self.validate(edit, &relations).map_err(bad)?;
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
                    let relation =
                        replacement_relation(&replace.replacement, &relations).map_err(bad)?;
                    self.host[event] = event_from_wit(replace.replacement, relation);
                }
                wit::Edit::Fail(failure) => {
                    let event = self.check_index(failure.event).map_err(bad)?;
                    keep[event] = false;
                    failures.insert(event, failure.message);
                }
            }
        }
        let failed = self.take_failed(&keep, failures);
        if !removals.is_empty() {
            self.apply_removals(removals);
        }
        self.retain(&keep);
        Ok(failed)
    }

    /// Checks an edit against the batch, so that applying the edits never stops half way.
    fn validate(&self, edit: &wit::Edit, relations: &[Arc<Relation>]) -> Result<(), String> {
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
                replacement_relation(&replace.replacement, relations).map(drop)
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
        let host = &mut self.host[event];
        let (row, side) = match set.side {
            wit::RowSide::Before => (&mut host.before, "before"),
            wit::RowSide::After => (&mut host.after, "after"),
        };
        let Some(row) = row.as_mut() else {
            return Err(format!(
                "edit sets a value in event {event}, which has no {side} row"
            ));
        };
        let width = row.len();
        let Some(slot) = row.get_mut(column) else {
            return Err(format!(
                "edit sets column {column} of event {event}, which has {width} columns"
            ));
        };
        *slot = value_from_wit(set.value);
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

/// The host relation a plugin's replacement event refers to, once its rows are checked to fit.
fn replacement_relation(
    event: &wit::Event,
    relations: &[Arc<Relation>],
) -> Result<Arc<Relation>, String> {
    let relation = relations.get(event.relation as usize).ok_or_else(|| {
        format!(
            "replacement refers to relation {} of {}",
            event.relation,
            relations.len()
        )
    })?;
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
    Ok(relation.clone())
}

/// A plugin's replacement event as a host event of `relation`.
fn event_from_wit(event: wit::Event, relation: Arc<Relation>) -> Event {
    let source = event.source;
    Event {
        op: op_from_wit(event.op),
        relation,
        source: Source {
            db: source.db,
            lsn: source.lsn,
            xid: source.xid,
            commit_time_us: source.commit_time_us,
            snapshot: snapshot_from_wit(source.snapshot),
        },
        before: event.before.map(row_from_wit),
        after: event.after.map(row_from_wit),
        topic: event.topic,
        message: event.message.map(|m| LogicalMessage {
            transactional: m.transactional,
            prefix: m.prefix,
            content: m.content,
        }),
    }
}

fn row_from_wit(row: Vec<wit::Value>) -> Row {
    row.into_iter().map(value_from_wit).collect()
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

fn snapshot_from_wit(marker: wit::SnapshotMarker) -> SnapshotMarker {
    match marker {
        wit::SnapshotMarker::False => SnapshotMarker::False,
        wit::SnapshotMarker::True => SnapshotMarker::True,
        wit::SnapshotMarker::First => SnapshotMarker::First,
        wit::SnapshotMarker::Last => SnapshotMarker::Last,
        wit::SnapshotMarker::Incremental => SnapshotMarker::Incremental,
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

/// A plugin's value as a host value.
pub(crate) fn value_from_wit(value: wit::Value) -> Value {
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
    fn removing_a_column_shares_the_derived_relation() {
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
    }

    #[test]
    fn a_replacement_must_fit_its_relation() {
        let mut b = batch();
        let mut replacement = wit::Event {
            op: wit::Op::Delete,
            relation: 0,
            source: wit::Source {
                db: "app".into(),
                lsn: 7,
                xid: None,
                commit_time_us: 0,
                snapshot: wit::SnapshotMarker::False,
            },
            before: Some(vec![
                wit::Value::Int(1),
                wit::Value::Text("x".into()),
                wit::Value::Null,
            ]),
            after: None,
            topic: None,
            message: None,
        };
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
