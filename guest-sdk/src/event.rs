//! The per-event view a plugin function gets, and the batch loops the macros call.
//!
//! An event reads its values out of the batch's buffers one value at a time, when the plugin
//! first looks at that value (text borrows the buffer; nothing is copied), so a plugin that
//! reads two columns of a wide row decodes two values, not the row. The cells they are decoded
//! into are vectors the batch loop hands from one event to the next, so a batch allocates them
//! once, not once per event. A transform's changes are recorded as they happen (which values
//! were set, which columns removed, whether the event was dropped or changed wholesale) and
//! sent back as edits, so an event the transform leaves alone costs nothing on the way back.

use std::cell::{Cell, OnceCell};
use std::collections::HashMap;

use crate::types::{
    self, Batch, Column, Edit, EventFailure, Op, Relation, RemoveColumn, ReplaceEvent, RowSide,
    SetValue, SnapshotMarker, Topics,
};
use crate::value::{Answer, Buffers, Value};

static NO_RELATION: Relation = Relation {
    oid: 0,
    schema: String::new(),
    table: String::new(),
    columns: Vec::new(),
};

/// Names the table of an event within one batch; see [`Event::relation_id`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelationId {
    batch: u64,
    index: u32,
}

thread_local! {
    /// Numbers the batches this instance has been called with, for [`RelationId`].
    static BATCHES: Cell<u64> = const { Cell::new(0) };
}

/// The number of a batch that starts now.
fn next_batch() -> u64 {
    BATCHES.with(|n| {
        n.set(n.get() + 1);
        n.get()
    })
}

/// One change event, with its table's columns at hand.
pub struct Event<'a> {
    raw: &'a types::Event,
    /// The number of the batch the event came in (see [`RelationId`]).
    batch: u64,
    /// The `before` and `after` rows as the host sent them (empty when absent).
    raw_rows: [&'a [types::Value]; 2],
    relation: &'a Relation,
    /// The database's name (events of a batch share it: see [`each_event`]).
    db: &'a str,
    buffers: Buffers<'a>,
    op: Op,
    /// The `before` and `after` rows' cells, once a row is asked for; each value is decoded
    /// into its cell when first read.
    rows: [OnceCell<Option<Cells<'a>>>; 2],
    /// Empty vectors for the cells (left over from the previous event).
    spare: [Cell<Cells<'a>>; 2],
    /// The values a transform set, to send back.
    set: Vec<(RowSide, u32)>,
    removed: Vec<u32>,
    dropped: bool,
    replaced: bool,
}

/// A logical decoding message (`pg_logical_emit_message`).
#[derive(Debug, Clone, Copy)]
pub struct Message<'a> {
    /// Whether it was emitted transactionally.
    pub transactional: bool,
    /// The prefix.
    pub prefix: &'a str,
    /// The content.
    pub content: &'a [u8],
}

impl<'a> Event<'a> {
    fn new(
        raw: &'a types::Event,
        batch: u64,
        relations: &'a [Relation],
        db: &'a str,
        buffers: Buffers<'a>,
        spare: Spare<'a>,
    ) -> Event<'a> {
        let relation = relations.get(raw.relation as usize).unwrap_or(&NO_RELATION);
        let [before, after] = spare.rows;
        Event {
            raw,
            batch,
            raw_rows: [raw.before, raw.after].map(|r| r.map_or(&[][..], |r| buffers.row(r))),
            relation,
            db,
            buffers,
            op: raw.op,
            rows: [OnceCell::new(), OnceCell::new()],
            spare: [Cell::new(before), Cell::new(after)],
            set: spare.set,
            removed: spare.removed,
            dropped: false,
            replaced: false,
        }
    }

    /// What happened to the row.
    pub fn op(&self) -> Op {
        self.op
    }

    /// Changes what happened (e.g. turn a delete into an update).
    pub fn set_op(&mut self, op: Op) {
        self.op = op;
        self.replaced = true;
    }

    /// The schema name (empty for a logical message).
    pub fn schema(&self) -> &'a str {
        &self.relation.schema
    }

    /// The table name (empty for a logical message).
    pub fn table(&self) -> &'a str {
        &self.relation.table
    }

    /// The table with its columns.
    pub fn relation(&self) -> &'a Relation {
        self.relation
    }

    /// Which table of which batch the event belongs to: two events with equal ids have the
    /// same schema, table and columns. A cheap cache key for a decision made per table (does
    /// it pass the filter, what is its topic), so that names are compared once per table and
    /// batch instead of once per event. Ids of different batches never compare equal, even
    /// for the same table.
    pub fn relation_id(&self) -> RelationId {
        RelationId {
            batch: self.batch,
            index: self.raw.relation,
        }
    }

    /// The table's columns, in row order.
    pub fn columns(&self) -> &'a [Column] {
        &self.relation.columns
    }

    /// The database the change happened in.
    pub fn db(&self) -> &'a str {
        self.db
    }

    /// The LSN of the change.
    pub fn lsn(&self) -> u64 {
        self.raw.source.lsn
    }

    /// The transaction id, when known.
    pub fn xid(&self) -> Option<u32> {
        self.raw.source.xid
    }

    /// Commit time in microseconds since the Unix epoch (0 when unknown).
    pub fn commit_time_us(&self) -> i64 {
        self.raw.source.commit_time_us
    }

    /// Where the event sits in a snapshot (`False` for a streamed change).
    pub fn snapshot(&self) -> SnapshotMarker {
        self.raw.source.snapshot
    }

    /// The topic a topic namer set earlier in the chain, if any.
    pub fn topic(&self) -> Option<&'a str> {
        let span = self.raw.topic?;
        std::str::from_utf8(self.buffers.bytes(span)).ok()
    }

    /// The logical message of an `Op::Message` event.
    pub fn message(&self) -> Option<Message<'a>> {
        let message = self.raw.message.as_ref()?;
        Some(Message {
            transactional: message.transactional,
            prefix: std::str::from_utf8(self.buffers.bytes(message.prefix)).unwrap_or(""),
            content: self.buffers.bytes(message.content),
        })
    }

    /// The row after the change (empty view when there is none, e.g. for a delete).
    pub fn after(&self) -> Row<'_, 'a> {
        self.row(RowSide::After)
    }

    /// The row before the change (empty view when the source did not send one).
    pub fn before(&self) -> Row<'_, 'a> {
        self.row(RowSide::Before)
    }

    #[inline]
    fn row(&self, side: RowSide) -> Row<'_, 'a> {
        Row {
            columns: &self.relation.columns,
            values: self.row_values(side),
        }
    }

    /// A row's cells with what they are decoded from; `None` when the event has no such row.
    #[inline]
    fn row_values(&self, side: RowSide) -> Option<RowValues<'_, 'a>> {
        Some(RowValues {
            cells: self.cells(side)?,
            raw: self.raw_row(side),
            buffers: self.buffers,
        })
    }

    /// A row's values as the host sent them (empty when there is no such row).
    #[inline]
    fn raw_row(&self, side: RowSide) -> &'a [types::Value] {
        self.raw_rows[side_index(side)]
    }

    /// A row's cells, set up (all empty) on first use; `None` when the event has no such row.
    /// Called for every value read or set: the set-up path stays out of line so that this
    /// check inlines.
    #[inline]
    fn cells(&self, side: RowSide) -> Option<&[OnceCell<Value<'a>>]> {
        match self.rows[side_index(side)].get() {
            Some(cells) => cells.as_deref(),
            // Inserts and snapshot rows have no `before`: nothing to set up.
            None if self.raw_row_range(side).is_none() => None,
            None => self.set_up_cells(side),
        }
    }

    /// Where a row's values are in the batch, as the host sent it (`None`: no such row).
    #[inline]
    fn raw_row_range(&self, side: RowSide) -> Option<types::Row> {
        match side {
            RowSide::Before => self.raw.before,
            RowSide::After => self.raw.after,
        }
    }

    #[inline(never)]
    fn set_up_cells(&self, side: RowSide) -> Option<&[OnceCell<Value<'a>>]> {
        let i = side_index(side);
        let raw = self.raw_row_range(side);
        let init = || {
            raw.map(|_| {
                let mut cells = self.spare[i].take();
                cells.resize_with(self.raw_row(side).len(), OnceCell::new);
                cells
            })
        };
        filled(&self.rows[i], init).as_ref()?.as_deref()
    }

    /// Value `column` of a row, decoded on first use.
    #[inline]
    fn value(&self, side: RowSide, column: usize) -> Option<&Value<'a>> {
        self.row_values(side)?.get(column)
    }

    fn cells_mut(&mut self, side: RowSide) -> Option<&mut Cells<'a>> {
        self.cells(side);
        self.rows[side_index(side)]
            .get_mut()
            .and_then(Option::as_mut)
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

    /// Replaces value `column` of each row the event has (`before`, `after`) by what `f`
    /// makes of it; `None` leaves that value as it is. The shape of most per-column
    /// transforms (re-encode, mask, normalise): the value is decoded only here.
    pub fn map_column(
        &mut self,
        column: usize,
        mut f: impl FnMut(&Value<'a>) -> Option<Value<'a>>,
    ) -> Result<(), String> {
        for side in [RowSide::Before, RowSide::After] {
            if let Some(value) = self.value(side, column).and_then(&mut f) {
                RowMut { event: self, side }.set_index(column, value)?;
            }
        }
        Ok(())
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
        match self.relation.column_index(column) {
            Some(i) => {
                if !self.removed.contains(&(i as u32)) {
                    self.removed.push(i as u32);
                }
                true
            }
            None => false,
        }
    }

    /// Hands the event's vectors on to the next event, emptied.
    fn recycle(mut self) -> Spare<'a> {
        let rows = [0, 1].map(|i| {
            let mut cells = self.rows[i]
                .take()
                .flatten()
                .unwrap_or_else(|| self.spare[i].take());
            cells.clear();
            cells
        });
        self.set.clear();
        self.removed.clear();
        Spare {
            rows,
            set: self.set,
            removed: self.removed,
        }
    }

    /// Adds the edits this event's changes amount to.
    fn edits(&self, index: u32, answer: &mut Answer) {
        if self.dropped {
            answer.edits.push(Edit::Drop(index));
            return;
        }
        if self.replaced {
            let replacement = self.replacement(answer);
            answer.edits.push(Edit::Replace(ReplaceEvent {
                event: index,
                replacement,
            }));
        } else {
            for &(side, column) in &self.set {
                if self.removed.contains(&column) {
                    continue;
                }
                let Some(value) = self.value(side, column as usize) else {
                    continue;
                };
                let value = answer.value(value);
                answer.edits.push(Edit::Set(SetValue {
                    event: index,
                    side,
                    column,
                    value,
                }));
            }
        }
        for &column in &self.removed {
            answer.edits.push(Edit::Remove(RemoveColumn {
                event: index,
                column,
            }));
        }
    }

    /// The event as it now is, in the answer's buffers.
    fn replacement(&self, answer: &mut Answer) -> types::Event {
        let mut row = |side: RowSide| -> Option<types::Row> {
            let columns = self.cells(side)?.len();
            let start = answer.values.len() as u32;
            for column in 0..columns {
                let value = match self.value(side, column) {
                    Some(value) => answer.value(value),
                    None => types::Value::Null,
                };
                answer.values.push(value);
            }
            Some(types::Row {
                start,
                len: answer.values.len() as u32 - start,
            })
        };
        let before = row(RowSide::Before);
        let after = row(RowSide::After);
        let source = &self.raw.source;
        types::Event {
            op: self.op,
            relation: self.raw.relation,
            source: types::Source {
                db: answer.span(self.db().as_bytes()),
                ..*source
            },
            before,
            after,
            topic: self.topic().map(|t| answer.span(t.as_bytes())),
            message: self.message().map(|m| types::LogicalMessage {
                transactional: m.transactional,
                prefix: answer.span(m.prefix.as_bytes()),
                content: answer.span(m.content),
            }),
        }
    }
}

/// Where a side's row sits in an event's two-element arrays.
#[inline]
fn side_index(side: RowSide) -> usize {
    match side {
        RowSide::Before => 0,
        RowSide::After => 1,
    }
}

/// The cell's value, made by `init` if the cell is empty. `OnceCell::get_or_init` would do,
/// but it calls an out-of-line function every time, and this runs once per value read.
#[inline]
fn filled<T>(cell: &OnceCell<T>, init: impl FnOnce() -> T) -> Option<&T> {
    if cell.get().is_none() {
        let _ = cell.set(init());
    }
    cell.get()
}

/// A row's value cells, one per column.
type Cells<'a> = Vec<OnceCell<Value<'a>>>;

/// A read-only view of one row. `'e` is the event, `'a` the batch its text lives in. Each value
/// is decoded when first read.
#[derive(Clone, Copy)]
pub struct Row<'e, 'a> {
    columns: &'a [Column],
    values: Option<RowValues<'e, 'a>>,
}

/// A row's cells and what they are decoded from.
#[derive(Clone, Copy)]
struct RowValues<'e, 'a> {
    cells: &'e [OnceCell<Value<'a>>],
    raw: &'a [types::Value],
    buffers: Buffers<'a>,
}

impl<'e, 'a> RowValues<'e, 'a> {
    #[inline]
    fn get(&self, index: usize) -> Option<&'e Value<'a>> {
        let cell = self.cells.get(index)?;
        let raw = self.raw.get(index)?;
        filled(cell, || self.buffers.value(raw))
    }
}

impl<'e, 'a> Row<'e, 'a> {
    /// Whether the event has this row at all.
    pub fn exists(&self) -> bool {
        self.values.is_some()
    }

    /// The value of a column by name.
    pub fn get(&self, column: &str) -> Option<&'e Value<'a>> {
        let i = self.columns.iter().position(|c| c.name == column)?;
        self.values?.get(i)
    }

    /// The value of a column by position.
    pub fn get_index(&self, index: usize) -> Option<&'e Value<'a>> {
        self.values?.get(index)
    }

    /// Columns and their values, in table order.
    pub fn iter(&self) -> impl Iterator<Item = (&'a Column, &'e Value<'a>)> + use<'e, 'a> {
        let values = self.values;
        let count = values.map_or(0, |v| v.cells.len());
        self.columns
            .iter()
            .take(count)
            .enumerate()
            .filter_map(move |(i, column)| Some((column, values?.get(i)?)))
    }
}

/// A view of one row that records changes.
pub struct RowMut<'r, 'a> {
    event: &'r mut Event<'a>,
    side: RowSide,
}

impl<'a> RowMut<'_, 'a> {
    /// The value of a column by name, with the changes made so far.
    pub fn get(&self, column: &str) -> Option<&Value<'a>> {
        let i = self.event.relation.column_index(column)?;
        self.event.value(self.side, i)
    }

    /// Sets a column by name. Fails when the table has no such column or the event has no
    /// such row (e.g. the after row of a delete).
    pub fn set(&mut self, column: &str, value: impl Into<Value<'a>>) -> Result<(), String> {
        let relation = self.event.relation;
        let index = relation.column_index(column).ok_or_else(|| {
            format!(
                "{}.{} has no column `{column}`",
                relation.schema, relation.table
            )
        })?;
        self.set_index(index, value)
    }

    /// Sets a column by position.
    pub fn set_index(&mut self, index: usize, value: impl Into<Value<'a>>) -> Result<(), String> {
        let side = self.side;
        let name = match side {
            RowSide::Before => "before",
            RowSide::After => "after",
        };
        let row = self
            .event
            .cells_mut(side)
            .ok_or_else(|| format!("the event has no {name} row"))?;
        let slot = row
            .get_mut(index)
            .ok_or_else(|| format!("the {name} row has no column {index}"))?;
        *slot = OnceCell::from(value.into());
        let key = (side, index as u32);
        if !self.event.set.contains(&key) {
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

/// Vectors an event needs, passed from one event of a batch to the next.
#[derive(Default)]
struct Spare<'a> {
    rows: [Cells<'a>; 2],
    set: Vec<(RowSide, u32)>,
    removed: Vec<u32>,
}

fn buffers(batch: &Batch) -> Buffers<'_> {
    Buffers {
        values: &batch.values,
        data: &batch.data,
    }
}

/// Calls `f` with each event of a batch, one after the other.
fn each_event<'a>(batch: &'a Batch, mut f: impl FnMut(&mut Event<'a>)) {
    let buffers = buffers(batch);
    let number = next_batch();
    let mut spare = Spare::default();
    let mut db = DbNames::default();
    for raw in &batch.events {
        let db = db.of(raw, buffers);
        let mut event = Event::new(raw, number, &batch.relations, db, buffers, spare);
        f(&mut event);
        spare = event.recycle();
    }
}

/// The database names of a batch's events, each checked as text once: the host sends a
/// batch's name once and every event points at it.
#[derive(Default)]
struct DbNames<'a> {
    last: Option<(types::Span, &'a str)>,
}

impl<'a> DbNames<'a> {
    fn of(&mut self, event: &types::Event, buffers: Buffers<'a>) -> &'a str {
        let span = event.source.db;
        match self.last {
            Some((last, name)) if (last.start, last.len) == (span.start, span.len) => name,
            _ => {
                let name = std::str::from_utf8(buffers.bytes(span)).unwrap_or("");
                self.last = Some((span, name));
                name
            }
        }
    }
}

/// Runs a filter function over a batch.
pub fn run_filter(batch: Batch, keep: impl Fn(&Event) -> bool) -> Result<Vec<bool>, String> {
    let mut answer = Vec::with_capacity(batch.events.len());
    each_event(&batch, |event| answer.push(keep(event)));
    Ok(answer)
}

/// Runs a topic-namer function over a batch; each distinct topic is sent once.
pub fn run_topic_namer<T: AsRef<str>>(
    batch: Batch,
    name: impl Fn(&Event) -> T,
) -> Result<Topics, String> {
    let mut names: Vec<String> = Vec::new();
    let mut index: HashMap<String, u32> = HashMap::new();
    let mut of_event = Vec::with_capacity(batch.events.len());
    // The previous event's topic, kept alive so that its address cannot be reused: a namer
    // that hands out one shared string per table (an `Rc<str>`, say) is then recognised by
    // address, without comparing the text.
    let mut last: Option<(T, u32)> = None;
    each_event(&batch, |event| {
        let topic = name(event);
        // Batches are mostly runs of one table: try the last topic first.
        let i = match &last {
            Some((previous, i)) if same_text(previous.as_ref(), topic.as_ref()) => *i,
            _ => {
                let text = topic.as_ref();
                match index.get(text) {
                    Some(i) => *i,
                    None => {
                        names.push(text.to_string());
                        let i = (names.len() - 1) as u32;
                        index.insert(text.to_string(), i);
                        i
                    }
                }
            }
        };
        last = Some((topic, i));
        of_event.push(i);
    });
    Ok(Topics { names, of_event })
}

/// Whether two strings hold the same text; the same string is recognised without reading it.
fn same_text(a: &str, b: &str) -> bool {
    std::ptr::eq(a, b) || a == b
}

/// Runs a sink function over a batch: every event, with its topic.
pub fn run_sink(
    batch: Batch,
    topics: Topics,
    write: impl Fn(&[Event], &[&str]) -> Result<(), String>,
) -> Result<(), String> {
    let buffers = buffers(&batch);
    let number = next_batch();
    let mut db = DbNames::default();
    let events: Vec<Event> = batch
        .events
        .iter()
        .map(|raw| {
            let db = db.of(raw, buffers);
            Event::new(raw, number, &batch.relations, db, buffers, Spare::default())
        })
        .collect();
    let topics: Vec<&str> = topics
        .of_event
        .iter()
        .map(|&i| topics.names.get(i as usize).map_or("", String::as_str))
        .collect();
    write(&events, &topics)
}

/// Runs a transform function over a batch; an `Err` from the function fails only its event.
pub fn run_transform(
    batch: Batch,
    transform: impl Fn(&mut Event) -> Result<(), String>,
) -> Result<types::Edits, String> {
    let mut answer = Answer::default();
    let mut index = 0;
    each_event(&batch, |event| {
        match transform(event) {
            Ok(()) => event.edits(index, &mut answer),
            Err(message) => answer.edits.push(Edit::Fail(EventFailure {
                event: index,
                message,
            })),
        }
        index += 1;
    });
    Ok(types::Edits {
        edits: answer.edits,
        values: answer.values,
        data: answer.data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Source, Span, Value as W};

    fn column(name: &str) -> Column {
        Column {
            name: name.into(),
            type_name: "text".into(),
            type_oid: 25,
            type_modifier: -1,
            key: false,
        }
    }

    /// Two events of tables with different widths, so recycled cells change length.
    fn batch() -> Batch {
        let data = b"abcdefgh".to_vec();
        let span = |start, len| Span { start, len };
        let event = |relation, start, len| types::Event {
            op: Op::Create,
            relation,
            source: Source {
                db: span(0, 0),
                lsn: 1,
                xid: None,
                commit_time_us: 0,
                snapshot: SnapshotMarker::False,
            },
            before: None,
            after: Some(types::Row { start, len }),
            topic: None,
            message: None,
        };
        Batch {
            relations: vec![
                Relation {
                    oid: 1,
                    schema: "public".into(),
                    table: "wide".into(),
                    columns: vec![column("a"), column("b"), column("c")],
                },
                Relation {
                    oid: 2,
                    schema: "public".into(),
                    table: "narrow".into(),
                    columns: vec![column("x"), column("y")],
                },
            ],
            events: vec![event(0, 0, 3), event(1, 3, 2), event(0, 5, 3)],
            values: vec![
                W::Text(span(0, 1)),
                W::Text(span(1, 1)),
                W::Text(span(2, 1)),
                W::Text(span(3, 1)),
                W::Int(7),
                W::Text(span(5, 1)),
                W::Null,
                W::Text(span(7, 1)),
            ],
            data,
        }
    }

    fn text(s: &str) -> Value<'_> {
        Value::Text(s.into())
    }

    #[test]
    fn each_event_reads_its_own_database_name() {
        let mut batch = batch();
        // "abc" for the first two events, "fgh" for the last.
        for (event, (start, len)) in batch.events.iter_mut().zip([(0, 3), (0, 3), (5, 3)]) {
            event.source.db = Span { start, len };
        }
        let names = std::cell::RefCell::new(Vec::new());
        run_filter(batch, |event| {
            names.borrow_mut().push(event.db().to_string());
            true
        })
        .unwrap();
        assert_eq!(names.into_inner(), ["abc", "abc", "fgh"]);
    }

    #[test]
    fn relation_ids_tell_tables_apart_within_a_batch_and_never_match_across_batches() {
        let ids = |batch: Batch| {
            let ids = std::cell::RefCell::new(Vec::new());
            run_filter(batch, |event| {
                ids.borrow_mut().push(event.relation_id());
                true
            })
            .unwrap();
            ids.into_inner()
        };
        // Events are wide, narrow, wide.
        let first = ids(batch());
        assert_eq!(first[0], first[2]);
        assert_ne!(first[0], first[1]);
        let second = ids(batch());
        assert!(second.iter().all(|id| !first.contains(id)));
    }

    #[test]
    fn a_namer_sends_each_distinct_topic_once_whether_shared_or_fresh() {
        // Events are wide, narrow, wide: the third is named like the first, not the second.
        let fresh = run_topic_namer(batch(), |event| format!("t.{}", event.table())).unwrap();
        assert_eq!(fresh.names, ["t.wide", "t.narrow"]);
        assert_eq!(fresh.of_event, [0, 1, 0]);
        let wide: std::rc::Rc<str> = "t.wide".into();
        let shared = run_topic_namer(batch(), |event| match event.table() {
            "wide" => wide.clone(),
            other => format!("t.{other}").into(),
        })
        .unwrap();
        assert_eq!(shared.names, fresh.names);
        assert_eq!(shared.of_event, fresh.of_event);
    }

    #[test]
    fn values_read_one_at_a_time_or_all_agree_and_edits_carry_what_was_set() {
        let edits = run_transform(batch(), |event| {
            match event.table() {
                "wide" => {
                    let c = event.after().get("c").cloned();
                    let all: Vec<Value> = event.after().iter().map(|(_, v)| v.clone()).collect();
                    assert_eq!(all.len(), 3);
                    assert_eq!(c.as_ref(), all.get(2));
                    let upper = match c {
                        Some(Value::Text(t)) => t.to_uppercase(),
                        _ => "NULL".into(),
                    };
                    event.after_mut().set("a", text(&upper).into_owned())?;
                    assert_eq!(event.after().get_index(0), Some(&text(&upper)));
                    assert_eq!(event.after_mut().get("a"), Some(&text(&upper)));
                }
                _ => {
                    assert_eq!(event.after().get_index(1), Some(&Value::Int(7)));
                    assert_eq!(event.after().get_index(2), None);
                    assert!(!event.before().exists());
                    event.set_op(Op::Update);
                }
            }
            Ok(())
        })
        .unwrap();
        let sets: Vec<(u32, u32, W)> = edits
            .edits
            .iter()
            .filter_map(|e| match e {
                Edit::Set(s) => Some((s.event, s.column, s.value.clone())),
                _ => None,
            })
            .collect();
        let text_of = |v: &W| match v {
            W::Text(s) => {
                String::from_utf8(edits.data[s.start as usize..][..s.len as usize].to_vec())
                    .unwrap()
            }
            other => format!("{other:?}"),
        };
        assert_eq!(sets.len(), 2);
        assert_eq!(
            (sets[0].0, sets[0].1, text_of(&sets[0].2).as_str()),
            (0, 0, "C")
        );
        assert_eq!(
            (sets[1].0, sets[1].1, text_of(&sets[1].2).as_str()),
            (2, 0, "H")
        );
        let Some(Edit::Replace(r)) = edits.edits.iter().find(|e| matches!(e, Edit::Replace(_)))
        else {
            panic!("the narrow event is replaced: {:?}", edits.edits);
        };
        assert_eq!(r.event, 1);
        let row = r.replacement.after.expect("the replacement keeps its row");
        let values = &edits.values[row.start as usize..][..row.len as usize];
        assert_eq!(text_of(&values[0]), "d");
        assert!(matches!(values[1], W::Int(7)));
    }
}
