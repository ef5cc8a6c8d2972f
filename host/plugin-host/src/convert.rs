//! What plugins answer, applied to the host batch.
//!
//! Plugins see the batch through borrowed views (`view.rs`); what they send back (keep flags,
//! topics, edits) is applied here to the host events, the only copy of the batch.

use std::collections::HashMap;
use std::sync::Arc;

use super::abi::relations_of;
use super::error::PluginError;
use walflow_core::event::{Event, LogicalMessage, Op, Relation, Row, Source, Value};

/// Which row of an event an edit applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// `before`
    Before,
    /// `after`
    After,
}

/// One change a transform made to its batch, in host terms whatever ABI version it came in.
#[derive(Debug)]
pub(crate) enum Edit {
    /// Set one value.
    Set {
        event: u32,
        side: Side,
        column: u32,
        value: Value,
    },
    /// Remove a column (index as sent, before any removal) from the event.
    Remove { event: u32, column: u32 },
    /// Drop the event.
    Drop(u32),
    /// Replace the event (boxed: rare, and inline it would make every edit of a batch, most
    /// of them small `Set`s, three times the size).
    Replace {
        event: u32,
        replacement: Box<Replacement>,
    },
    /// The transform failed on this event.
    Fail { event: u32, message: String },
}

/// A transform's replacement for an event; `relation` indexes the relations of the batch the
/// plugin saw ([`relations_of`]).
#[derive(Debug)]
pub(crate) struct Replacement {
    pub relation: u32,
    pub op: Op,
    pub source: Source,
    pub before: Option<Row>,
    pub after: Option<Row>,
    pub topic: Option<Arc<str>>,
    pub message: Option<LogicalMessage>,
}

impl Replacement {
    /// The host event, of `relation`.
    fn into_event(self, relation: Arc<Relation>) -> Event {
        Event {
            op: self.op,
            relation,
            source: self.source,
            before: self.before,
            after: self.after,
            topic: self.topic,
            message: self.message.map(Box::new),
        }
    }
}

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
    pub fn set_topics(&mut self, topics: Vec<Arc<str>>) {
        for (host, topic) in self.host.iter_mut().zip(topics) {
            host.topic = Some(topic);
        }
    }

    /// Applies a transform's edits. Events the plugin failed on are taken out of the batch and
    /// returned with the plugin's message; a malformed edit fails the whole call.
    pub fn apply_edits(
        &mut self,
        edits: Vec<Edit>,
        plugin: &str,
    ) -> Result<Vec<(Event, String)>, PluginError> {
        let bad = |message: String| PluginError::BadOutput {
            plugin: plugin.to_string(),
            message,
        };
        // Replacements name their relation by its index in the batch the plugin saw.
        let relations = if edits.iter().any(|e| matches!(e, Edit::Replace { .. })) {
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
                Edit::Set {
                    event,
                    side,
                    column,
                    value,
                } => self.apply_set(event, side, column, value).map_err(bad)?,
                Edit::Remove { event, column } => {
                    let event = self.check_index(event).map_err(bad)?;
                    let width = self.host[event].relation.columns.len();
                    let column = column as usize;
                    if column >= width {
                        return Err(bad(format!(
                            "edit removes column {column} of event {event}, which has {width} columns"
                        )));
                    }
                    removals.entry(event).or_default().push(column);
                }
                Edit::Drop(event) => {
                    let event = self.check_index(event).map_err(bad)?;
                    keep[event] = false;
                }
                Edit::Replace { event, replacement } => {
                    let event = self.check_index(event).map_err(bad)?;
                    let relation = replacement_relation(&replacement, &relations).map_err(bad)?;
                    self.host[event] = (*replacement).into_event(relation);
                }
                Edit::Fail { event, message } => {
                    let event = self.check_index(event).map_err(bad)?;
                    keep[event] = false;
                    failures.insert(event, message);
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
    fn validate(&self, edit: &Edit, relations: &[Arc<Relation>]) -> Result<(), String> {
        match edit {
            Edit::Set {
                event,
                side,
                column,
                ..
            } => {
                let event = self.check_index(*event)?;
                let host = &self.host[event];
                let (row, side) = match side {
                    Side::Before => (&host.before, "before"),
                    Side::After => (&host.after, "after"),
                };
                let Some(row) = row else {
                    return Err(format!(
                        "edit sets a value in event {event}, which has no {side} row"
                    ));
                };
                if *column as usize >= row.len() {
                    return Err(format!(
                        "edit sets column {column} of event {event}, which has {} columns",
                        row.len()
                    ));
                }
                Ok(())
            }
            Edit::Remove { event, column } => {
                let event = self.check_index(*event)?;
                let width = self.host[event].relation.columns.len();
                if *column as usize >= width {
                    return Err(format!(
                        "edit removes column {column} of event {event}, which has {width} columns"
                    ));
                }
                Ok(())
            }
            Edit::Drop(event) | Edit::Fail { event, .. } => self.check_index(*event).map(drop),
            Edit::Replace { event, replacement } => {
                self.check_index(*event)?;
                replacement_relation(replacement, relations).map(drop)
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

    fn apply_set(
        &mut self,
        event: u32,
        side: Side,
        column: u32,
        value: Value,
    ) -> Result<(), String> {
        let event = self.check_index(event)?;
        let column = column as usize;
        let host = &mut self.host[event];
        let (row, side) = match side {
            Side::Before => (&mut host.before, "before"),
            Side::After => (&mut host.after, "after"),
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
        *slot = value;
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
    replacement: &Replacement,
    relations: &[Arc<Relation>],
) -> Result<Arc<Relation>, String> {
    let relation = relations
        .get(replacement.relation as usize)
        .ok_or_else(|| {
            format!(
                "replacement refers to relation {} of {}",
                replacement.relation,
                relations.len()
            )
        })?;
    let width = relation.columns.len();
    for row in [&replacement.before, &replacement.after]
        .into_iter()
        .flatten()
    {
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

#[cfg(test)]
mod tests {
    use super::*;
    use walflow_core::event::Column;

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
        let remove = |event| Edit::Remove { event, column: 1 };
        let failed = b
            .apply_edits(vec![remove(0), remove(2), Edit::Drop(1)], "t")
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
        let set = Edit::Set {
            event: 0,
            side: Side::After,
            column: 1,
            value: Value::Text("masked".into()),
        };
        let bad = Edit::Set {
            event: 0,
            side: Side::Before,
            column: 0,
            value: Value::Null,
        };
        let err = b.apply_edits(vec![set, bad], "t").unwrap_err();
        assert!(matches!(err, PluginError::BadOutput { .. }), "{err}");
        assert!(err.to_string().contains("no before row"), "{err}");
        assert_eq!(
            b.host[0].after.as_ref().unwrap()[1],
            Value::Text("a@b".into())
        );
        let out_of_range = Edit::Drop(3);
        assert!(b.apply_edits(vec![out_of_range], "t").is_err());
        assert_eq!(b.len(), 3);
    }

    #[test]
    fn failed_events_are_taken_out_with_their_message() {
        let mut b = batch();
        let failed = b
            .apply_edits(
                vec![Edit::Fail {
                    event: 1,
                    message: "nope".into(),
                }],
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
        let replacement = |before: Vec<Value>| Replacement {
            relation: 0,
            op: Op::Delete,
            source: Source {
                db: "app".into(),
                lsn: walflow_core::event::Lsn(7),
                ..Source::default()
            },
            before: Some(before),
            after: None,
            topic: None,
            message: None,
        };
        let ok = Edit::Replace {
            event: 0,
            replacement: Box::new(replacement(vec![
                Value::Int(1),
                Value::Text("x".into()),
                Value::Null,
            ])),
        };
        b.apply_edits(vec![ok], "t").unwrap();
        assert_eq!(b.host[0].op, Op::Delete);
        assert!(b.host[0].after.is_none());
        let short = Edit::Replace {
            event: 1,
            replacement: Box::new(replacement(vec![Value::Null])),
        };
        assert!(b.apply_edits(vec![short], "t").is_err());
    }
}
