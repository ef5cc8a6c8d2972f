//! A segment: consecutive changes of a flush folded into each row's final state.
//!
//! Every change the bulk path takes sets a row to a state that does not depend on the row's
//! previous state (an upsert of the whole row, or a delete), and it touches one row only (a
//! key change is a delete of the old key plus an upsert of the new one). Applying such changes
//! in any order but keeping, per key, only the last one gives the tables that applying all of
//! them in source order gives. So a segment keeps one final state per (table, key) and
//! forgets the rest: an insert, update, delete and reinsert of one key leave the reinsert; an
//! insert then a delete leaves the delete (which finds nothing, or a row an earlier flush left).
//!
//! What does not fit ends the segment; the caller applies it and starts the next one:
//! a truncate (it acts on every row, so what came before must be applied first), an update
//! that left unchanged TOAST values out for a row the segment does not hold (the target's
//! values must be kept, so it has to run against the target as it is at that point), and a
//! table whose source columns changed since the segment took its first change.

use std::collections::HashMap;
use std::sync::Arc;

use super::statement::{Target, value_text};
use walflow_core::event::{Event, Op, Relation, Row, Value};
use walflow_core::sink::SinkError;

/// Column values as PostgreSQL text, `None` for NULL.
pub(super) type Values = Vec<Option<String>>;

/// The final state of each changed row, per table. Rows are kept as the events carry them and
/// written as text only once final: most of a large flush's changes are superseded.
#[derive(Default)]
pub(super) struct Segment<'a> {
    tables: Vec<TableChanges<'a>>,
    /// Changes taken, to order final states by when they happened.
    taken: usize,
}

/// The final states of one table's rows.
struct TableChanges<'a> {
    target: Target,
    /// The source relation of its first change: the same one for most changes that follow.
    relation: &'a Arc<Relation>,
    rows: HashMap<Values, Final<'a>>,
}

/// The last change of a key: the whole new row, or `None` for a delete.
struct Final<'a> {
    order: usize,
    row: Option<NewRow<'a>>,
}

/// A row as an event carries it, or completed with values an earlier event carried.
enum NewRow<'a> {
    Sent(&'a Row),
    Completed(Values),
}

impl NewRow<'_> {
    /// Column `i` as text.
    fn text(&self, i: usize) -> Option<String> {
        match self {
            NewRow::Sent(row) => row.get(i).and_then(value_text),
            NewRow::Completed(values) => values.get(i).cloned().flatten(),
        }
    }

    fn into_values(self) -> Values {
        match self {
            NewRow::Sent(row) => row.iter().map(value_text).collect(),
            NewRow::Completed(values) => values,
        }
    }
}

/// A table's final states, ready to apply: keys to delete, then rows to upsert, each in the
/// order of their last change.
pub(super) struct Changes {
    pub deletes: Vec<Values>,
    pub upserts: Vec<Values>,
}

impl Changes {
    /// Rows to touch.
    pub fn len(&self) -> usize {
        self.deletes.len() + self.upserts.len()
    }
}

impl<'a> Segment<'a> {
    /// Folds `event` into the segment; `false` when it does not fit (see the module docs) and
    /// the segment was left as it was.
    pub fn take(&mut self, target: &Target, event: &'a Event) -> Result<bool, SinkError> {
        if target.whole_row() && event.op != Op::Message {
            // Without a key there is no final state per key to fold to: such tables are
            // applied event by event, in order.
            return Ok(false);
        }
        match event.op {
            Op::Message => Ok(true),
            Op::Truncate => Ok(false),
            Op::Delete => {
                let Some(table) = self.table(target, event) else {
                    return Ok(false);
                };
                let row = event.before.as_ref().or(event.after.as_ref());
                let key = target.key_values(row, event)?;
                self.taken += 1;
                self.tables[table].set(key, None, self.taken);
                Ok(true)
            }
            Op::Create | Op::Read | Op::Update => self.take_row(target, event),
        }
    }

    /// An insert, snapshot row or update: the new row replaces the key's state, and a key
    /// change deletes the old key.
    fn take_row(&mut self, target: &Target, event: &'a Event) -> Result<bool, SinkError> {
        let Some(after) = event.after.as_ref() else {
            return Ok(true);
        };
        let Some(table) = self.table(target, event) else {
            return Ok(false);
        };
        let new_key = target.key_values(Some(after), event)?;
        let old_key = match (&event.op, &event.before) {
            (Op::Update, Some(before)) => Some(target.key_values(Some(before), event)?),
            _ => None,
        };
        let moved = old_key.filter(|old| *old != new_key);
        let changes = &mut self.tables[table];
        let mut row = NewRow::Sent(after);
        if after.iter().any(|v| matches!(v, Value::UnchangedToast)) {
            // The source left out values that did not change: the row's current ones, known
            // only when the segment holds the row.
            let was = moved.as_ref().unwrap_or(&new_key);
            let Some(known) = changes.rows.get(was).and_then(|f| f.row.as_ref()) else {
                return Ok(false);
            };
            let completed = after.iter().enumerate().map(|(i, v)| match v {
                Value::UnchangedToast => known.text(i),
                v => value_text(v),
            });
            row = NewRow::Completed(completed.collect());
        }
        self.taken += 1;
        if let Some(old) = moved {
            changes.set(old, None, self.taken);
        }
        changes.set(new_key, Some(row), self.taken);
        Ok(true)
    }

    /// The index of the changes of `target`, added when new; `None` when the segment holds
    /// changes of the same table made for other source columns.
    fn table(&mut self, target: &Target, event: &'a Event) -> Option<usize> {
        let same = |t: &TableChanges| Arc::ptr_eq(t.relation, &event.relation);
        if let Some(i) = self.tables.iter().position(same) {
            return Some(i);
        }
        let found = self
            .tables
            .iter()
            .position(|t| t.target.table == target.table);
        match found {
            Some(i) if self.tables[i].target.matches(&event.relation) => Some(i),
            Some(_) => None,
            None => {
                self.tables.push(TableChanges {
                    target: target.clone(),
                    relation: &event.relation,
                    rows: HashMap::new(),
                });
                Some(self.tables.len() - 1)
            }
        }
    }

    /// Each table's final states, tables in the order of their first change.
    pub fn into_tables(self) -> impl Iterator<Item = (Target, Changes)> + use<'a> {
        self.tables
            .into_iter()
            .filter(|t| !t.rows.is_empty())
            .map(TableChanges::into_changes)
    }
}

impl<'a> TableChanges<'a> {
    fn set(&mut self, key: Values, row: Option<NewRow<'a>>, order: usize) {
        self.rows.insert(key, Final { order, row });
    }

    fn into_changes(self) -> (Target, Changes) {
        let mut finals: Vec<(Values, Final<'a>)> = self.rows.into_iter().collect();
        finals.sort_unstable_by_key(|(_, f)| f.order);
        let mut changes = Changes {
            deletes: Vec::new(),
            upserts: Vec::new(),
        };
        for (key, f) in finals {
            match f.row {
                Some(row) => changes.upserts.push(row.into_values()),
                None => changes.deletes.push(key),
            }
        }
        (self.target, changes)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use walflow_core::event::{Column, Relation};

    fn relation(table: &str, columns: &[&str]) -> Arc<Relation> {
        Arc::new(Relation {
            oid: 1,
            schema: "public".into(),
            table: table.into(),
            columns: columns
                .iter()
                .enumerate()
                .map(|(i, name)| Column {
                    name: (*name).into(),
                    type_oid: 25,
                    type_name: "text".into(),
                    type_modifier: -1,
                    key: i == 0,
                })
                .collect(),
        })
    }

    fn event(
        op: Op,
        relation: &Arc<Relation>,
        before: Option<&[&str]>,
        after: Option<&[&str]>,
    ) -> Event {
        let row = |values: &[&str]| {
            values
                .iter()
                .map(|v| match *v {
                    "~" => Value::UnchangedToast,
                    v => Value::Text(v.into()),
                })
                .collect()
        };
        Event {
            op,
            relation: relation.clone(),
            source: Default::default(),
            before: before.map(row),
            after: after.map(row),
            topic: None,
            message: None,
        }
    }

    /// Folds `events` into one segment: each table's deletes and upserts as text.
    fn fold(events: &[Event]) -> Vec<(String, Vec<String>, Vec<String>)> {
        let mut segment = Segment::default();
        for e in events {
            let target = Target::for_tests(&e.relation);
            assert!(segment.take(&target, e).unwrap(), "{e:?} fits");
        }
        let text = |values: Values| {
            values
                .into_iter()
                .map(|v| v.unwrap_or_else(|| "NULL".into()))
                .collect::<Vec<_>>()
                .join(",")
        };
        segment
            .into_tables()
            .map(|(target, changes)| {
                (
                    target.table,
                    changes.deletes.into_iter().map(text).collect(),
                    changes.upserts.into_iter().map(text).collect(),
                )
            })
            .collect()
    }

    #[test]
    fn only_the_last_change_of_a_key_remains() {
        let t = relation("t", &["id", "v"]);
        let events = [
            event(Op::Create, &t, None, Some(&["1", "a"])),
            event(Op::Update, &t, None, Some(&["1", "b"])),
            event(Op::Delete, &t, Some(&["1", "b"]), None),
            event(Op::Create, &t, None, Some(&["1", "c"])),
            event(Op::Create, &t, None, Some(&["2", "x"])),
            event(Op::Delete, &t, Some(&["2", "x"]), None),
            event(Op::Delete, &t, Some(&["3", "y"]), None),
            event(Op::Read, &t, None, Some(&["3", "z"])),
        ];
        let tables = fold(&events);
        assert_eq!(
            tables,
            [(
                "\"t\"".into(),
                vec!["2".into()],
                vec!["1,c".into(), "3,z".into()]
            )]
        );
    }

    #[test]
    fn a_key_change_chain_deletes_every_old_key() {
        let t = relation("t", &["id", "v"]);
        let events = [
            event(Op::Create, &t, None, Some(&["a", "1"])),
            event(Op::Update, &t, Some(&["a", "1"]), Some(&["b", "2"])),
            event(Op::Update, &t, Some(&["b", "2"]), Some(&["c", "3"])),
            // Back to a key deleted before: the row comes back.
            event(Op::Update, &t, Some(&["c", "3"]), Some(&["a", "4"])),
        ];
        let tables = fold(&events);
        assert_eq!(
            tables,
            [(
                "\"t\"".into(),
                vec!["b".into(), "c".into()],
                vec!["a,4".into()]
            )]
        );
    }

    #[test]
    fn tables_keep_the_order_of_their_first_change_and_rows_of_their_last() {
        let (t, u) = (relation("t", &["id"]), relation("u", &["id"]));
        let events = [
            event(Op::Create, &u, None, Some(&["1"])),
            event(Op::Create, &t, None, Some(&["1"])),
            event(Op::Create, &u, None, Some(&["2"])),
            event(Op::Update, &u, None, Some(&["1"])),
        ];
        let tables: Vec<_> = fold(&events).into_iter().map(|(t, _, u)| (t, u)).collect();
        assert_eq!(
            tables,
            [
                ("\"u\"".into(), vec!["2".into(), "1".into()]),
                ("\"t\"".into(), vec!["1".into()]),
            ]
        );
    }

    #[test]
    fn unchanged_toast_values_come_from_the_row_the_segment_holds() {
        let t = relation("t", &["id", "big", "v"]);
        let events = [
            event(Op::Create, &t, None, Some(&["1", "large", "a"])),
            event(
                Op::Update,
                &t,
                Some(&["1", "~", "a"]),
                Some(&["2", "~", "b"]),
            ),
            event(Op::Update, &t, None, Some(&["2", "~", "c"])),
        ];
        assert_eq!(
            fold(&events),
            [("\"t\"".into(), vec!["1".into()], vec!["2,large,c".into()])]
        );
    }

    #[test]
    fn what_needs_the_target_as_it_is_ends_the_segment() {
        let t = relation("t", &["id", "big", "v"]);
        let target = Target::for_tests(&t);
        let mut segment = Segment::default();
        let insert = event(Op::Create, &t, None, Some(&["1", "large", "a"]));
        assert!(segment.take(&target, &insert).unwrap());
        let toast = event(Op::Update, &t, None, Some(&["9", "~", "b"]));
        assert!(!segment.take(&target, &toast).unwrap(), "row 9 is not held");
        let truncate = event(Op::Truncate, &t, None, None);
        assert!(!segment.take(&target, &truncate).unwrap());
        let altered = relation("t", &["id", "big", "v", "added"]);
        let wider = event(Op::Create, &altered, None, Some(&["3", "b", "c", "d"]));
        assert!(!segment.take(&Target::for_tests(&altered), &wider).unwrap());
        let tables = fold_segment(segment);
        assert_eq!(tables, ["1,large,a"], "only what fitted");
    }

    fn fold_segment(segment: Segment<'_>) -> Vec<String> {
        segment
            .into_tables()
            .flat_map(|(_, c)| c.upserts)
            .map(|r| {
                r.into_iter()
                    .map(Option::unwrap_or_default)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .collect()
    }
}
