//! What a filter or topic namer answered for a whole table (ABI 0.2.1: `keep-table`,
//! `table-topic`), remembered per table and database.
//!
//! A filter that decides by table (an include list) or a namer that names by table is asked
//! once per table instead of being sent every batch: a batch whose events all have an answer
//! is settled by the host without a call, which saves laying the events out, the call and the
//! guest lifting them.

use std::sync::Arc;

use crate::event::Relation;

/// Answers per (table, database); `None` answers (it depends on the event) are remembered too.
pub(crate) struct TableAnswers<T> {
    /// The relations and names are held, so a pointer match cannot be a freed one's successor.
    known: Vec<(Arc<Relation>, Arc<str>, Option<T>)>,
    /// The entry found last: batches are runs of one table.
    last: usize,
}

impl<T> Default for TableAnswers<T> {
    fn default() -> Self {
        TableAnswers {
            known: Vec::new(),
            last: 0,
        }
    }
}

/// Tables remembered at most; past that, the plugin is asked again.
const MAX_KNOWN: usize = 1024;

impl<T: Clone> TableAnswers<T> {
    /// The answer for `relation` in `db`, if the plugin has been asked (about it or about a
    /// table just like it).
    pub(crate) fn get(&mut self, relation: &Arc<Relation>, db: &Arc<str>) -> Option<Option<T>> {
        let same = |(r, d, _): &(Arc<Relation>, Arc<str>, Option<T>)| {
            Arc::ptr_eq(r, relation) && Arc::ptr_eq(d, db)
        };
        if !self.known.get(self.last).is_some_and(same) {
            let alike =
                |(r, d, _): &(Arc<Relation>, Arc<str>, Option<T>)| **r == **relation && **d == **db;
            self.last = match self.known.iter().position(same) {
                Some(i) => i,
                None => self.known.iter().position(alike)?,
            };
        }
        Some(self.known[self.last].2.clone())
    }

    /// Remembers the plugin's answer for `relation` in `db`.
    pub(crate) fn insert(&mut self, relation: Arc<Relation>, db: Arc<str>, answer: Option<T>) {
        if self.known.len() >= MAX_KNOWN {
            self.known.clear();
        }
        self.known.push((relation, db, answer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_found_by_pointer_or_content_and_per_database() {
        let table = Relation::one_column("t", "id", "int4", 23);
        let other = Relation::one_column("u", "id", "int4", 23);
        let (app, shop): (Arc<str>, Arc<str>) = ("app".into(), "shop".into());
        let mut known = TableAnswers::default();
        assert_eq!(known.get(&table, &app), None);
        known.insert(table.clone(), app.clone(), Some(true));
        known.insert(other.clone(), app.clone(), None);
        assert_eq!(known.get(&table, &app), Some(Some(true)));
        assert_eq!(
            known.get(&other, &app),
            Some(None),
            "`none` is an answer too"
        );
        let copy = Arc::new((*table).clone());
        assert_eq!(known.get(&copy, &Arc::from("app")), Some(Some(true)));
        assert_eq!(
            known.get(&table, &shop),
            None,
            "another database is asked again"
        );
    }
}
