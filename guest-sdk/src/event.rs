//! The per-event view a plugin function gets, and the batch loops the macros call.
//!
//! A transform's changes are recorded as they happen (which values were set, which columns
//! removed, whether the event was dropped or changed wholesale) and sent back as edits, so an
//! event the transform leaves alone costs nothing on the way back.

use crate::types::{
    Batch, Column, Edit, EventFailure, Op, Relation, RemoveColumn, ReplaceEvent, RowSide, SetValue,
    Source, Value,
};

static NO_RELATION: Relation = Relation {
    oid: 0,
    schema: String::new(),
    table: String::new(),
    columns: Vec::new(),
};

/// One change event, with its table's columns at hand.
pub struct Event<'a> {
    raw: crate::types::Event,
    relation: &'a Relation,
    set: Vec<(RowSide, u32)>,
    removed: Vec<u32>,
    dropped: bool,
    replaced: bool,
}

impl<'a> Event<'a> {
    fn new(raw: crate::types::Event, relations: &'a [Relation]) -> Event<'a> {
        let relation = relations.get(raw.relation as usize).unwrap_or(&NO_RELATION);
        Event {
            raw,
            relation,
            set: Vec::new(),
            removed: Vec::new(),
            dropped: false,
            replaced: false,
        }
    }

    /// What happened to the row.
    pub fn op(&self) -> Op {
        self.raw.op
    }

    /// Changes what happened (e.g. turn a delete into an update).
    pub fn set_op(&mut self, op: Op) {
        self.raw.op = op;
        self.replaced = true;
    }

    /// The schema name (empty for a logical message).
    pub fn schema(&self) -> &str {
        &self.relation.schema
    }

    /// The table name (empty for a logical message).
    pub fn table(&self) -> &str {
        &self.relation.table
    }

    /// The table with its columns.
    pub fn relation(&self) -> &Relation {
        self.relation
    }

    /// The table's columns, in row order.
    pub fn columns(&self) -> &[Column] {
        &self.relation.columns
    }

    /// Source metadata: database, LSN, transaction, commit time, snapshot marker.
    pub fn source(&self) -> &Source {
        &self.raw.source
    }

    /// The topic a topic namer set earlier in the chain, if any.
    pub fn topic(&self) -> Option<&str> {
        self.raw.topic.as_deref()
    }

    /// The logical message of an `Op::Message` event.
    pub fn message(&self) -> Option<&crate::types::LogicalMessage> {
        self.raw.message.as_ref()
    }

    /// The row after the change (empty view when there is none, e.g. for a delete).
    pub fn after(&self) -> Row<'_> {
        Row {
            columns: &self.relation.columns,
            values: self.raw.after.as_deref(),
        }
    }

    /// The row before the change (empty view when the source did not send one).
    pub fn before(&self) -> Row<'_> {
        Row {
            columns: &self.relation.columns,
            values: self.raw.before.as_deref(),
        }
    }

    /// The row after the change, for changing it.
    pub fn after_mut(&mut self) -> RowMut<'_, 'a> {
        RowMut {
            event: self,
            side: RowSide::After,
        }
    }

    /// The row before the change, for changing it.
    pub fn before_mut(&mut self) -> RowMut<'_, 'a> {
        RowMut {
            event: self,
            side: RowSide::Before,
        }
    }

    /// Drops the event from the batch (transforms only).
    pub fn discard(&mut self) {
        self.dropped = true;
    }

    /// Whether [`Event::discard`] was called.
    pub fn is_discarded(&self) -> bool {
        self.dropped
    }

    /// Removes a column from the event (its rows and its relation). Returns `false` when the
    /// table has no such column.
    pub fn remove(&mut self, column: &str) -> bool {
        match self.relation.columns.iter().position(|c| c.name == column) {
            Some(i) => {
                if !self.removed.contains(&(i as u32)) {
                    self.removed.push(i as u32);
                }
                true
            }
            None => false,
        }
    }

    fn row_mut(&mut self, side: RowSide) -> Option<&mut Vec<Value>> {
        match side {
            RowSide::Before => self.raw.before.as_mut(),
            RowSide::After => self.raw.after.as_mut(),
        }
    }

    /// The edits this event's changes amount to.
    fn into_edits(mut self, index: u32, edits: &mut Vec<Edit>) {
        if self.dropped {
            edits.push(Edit::Drop(index));
            return;
        }
        if self.replaced {
            edits.push(Edit::Replace(ReplaceEvent {
                event: index,
                replacement: self.raw,
            }));
        } else {
            let set = std::mem::take(&mut self.set);
            for (side, column) in set {
                if self.removed.contains(&column) {
                    continue;
                }
                let Some(slot) = self
                    .row_mut(side)
                    .and_then(|row| row.get_mut(column as usize))
                else {
                    continue;
                };
                let value = std::mem::replace(slot, Value::Null);
                edits.push(Edit::Set(SetValue {
                    event: index,
                    side,
                    column,
                    value,
                }));
            }
        }
        for column in self.removed {
            edits.push(Edit::Remove(RemoveColumn {
                event: index,
                column,
            }));
        }
    }
}

/// A read-only view of one row.
#[derive(Clone, Copy)]
pub struct Row<'e> {
    columns: &'e [Column],
    values: Option<&'e [Value]>,
}

impl<'e> Row<'e> {
    /// Whether the event has this row at all.
    pub fn exists(&self) -> bool {
        self.values.is_some()
    }

    /// The value of a column by name.
    pub fn get(&self, column: &str) -> Option<&'e Value> {
        let i = self.columns.iter().position(|c| c.name == column)?;
        self.values?.get(i)
    }

    /// The value of a column by position.
    pub fn get_index(&self, index: usize) -> Option<&'e Value> {
        self.values?.get(index)
    }

    /// Columns and their values, in table order.
    pub fn iter(&self) -> impl Iterator<Item = (&'e Column, &'e Value)> + 'e {
        self.columns.iter().zip(self.values.unwrap_or(&[]))
    }
}

/// A view of one row that records changes.
pub struct RowMut<'r, 'a> {
    event: &'r mut Event<'a>,
    side: RowSide,
}

impl RowMut<'_, '_> {
    /// The value of a column by name.
    pub fn get(&self, column: &str) -> Option<&Value> {
        let i = self.event.relation.column_index(column)?;
        self.values()?.get(i)
    }

    fn values(&self) -> Option<&[Value]> {
        match self.side {
            RowSide::Before => self.event.raw.before.as_deref(),
            RowSide::After => self.event.raw.after.as_deref(),
        }
    }

    /// Sets a column by name. Fails when the table has no such column or the event has no
    /// such row (e.g. the after row of a delete).
    pub fn set(&mut self, column: &str, value: impl Into<Value>) -> Result<(), String> {
        let index = self.event.relation.column_index(column).ok_or_else(|| {
            format!(
                "{}.{} has no column `{column}`",
                self.event.relation.schema, self.event.relation.table
            )
        })?;
        self.set_index(index, value)
    }

    /// Sets a column by position.
    pub fn set_index(&mut self, index: usize, value: impl Into<Value>) -> Result<(), String> {
        let side = self.side;
        let name = match side {
            RowSide::Before => "before",
            RowSide::After => "after",
        };
        let row = self
            .event
            .row_mut(side)
            .ok_or_else(|| format!("the event has no {name} row"))?;
        let slot = row
            .get_mut(index)
            .ok_or_else(|| format!("the {name} row has no column {index}"))?;
        *slot = value.into();
        let key = (side, index as u32);
        if !self.event.set.iter().any(|s| s.0 == side && s.1 == key.1) {
            self.event.set.push(key);
        }
        Ok(())
    }

    /// Removes the column from the whole event (see [`Event::remove`]).
    pub fn remove(&mut self, column: &str) -> bool {
        self.event.remove(column)
    }
}

impl Relation {
    /// Index of the column with this name.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// `schema.table`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

/// Runs a filter function over a batch.
pub fn run_filter(batch: Batch, keep: impl Fn(&Event) -> bool) -> Result<Vec<bool>, String> {
    let Batch { relations, events } = batch;
    Ok(events
        .into_iter()
        .map(|raw| keep(&Event::new(raw, &relations)))
        .collect())
}

/// Runs a topic-namer function over a batch.
pub fn run_topic_namer(
    batch: Batch,
    name: impl Fn(&Event) -> String,
) -> Result<Vec<String>, String> {
    let Batch { relations, events } = batch;
    Ok(events
        .into_iter()
        .map(|raw| name(&Event::new(raw, &relations)))
        .collect())
}

/// Runs a sink function over a batch: every event, with its topic.
pub fn run_sink(
    batch: Batch,
    topics: &[String],
    write: impl Fn(&[Event], &[String]) -> Result<(), String>,
) -> Result<(), String> {
    let Batch { relations, events } = batch;
    let events: Vec<Event> = events
        .into_iter()
        .map(|raw| Event::new(raw, &relations))
        .collect();
    write(&events, topics)
}

/// Runs a transform function over a batch; an `Err` from the function fails only its event.
pub fn run_transform(
    batch: Batch,
    transform: impl Fn(&mut Event) -> Result<(), String>,
) -> Result<Vec<Edit>, String> {
    let Batch { relations, events } = batch;
    let mut edits = Vec::new();
    for (index, raw) in events.into_iter().enumerate() {
        let index = index as u32;
        let mut event = Event::new(raw, &relations);
        match transform(&mut event) {
            Ok(()) => event.into_edits(index, &mut edits),
            Err(message) => edits.push(Edit::Fail(EventFailure {
                event: index,
                message,
            })),
        }
    }
    Ok(edits)
}
