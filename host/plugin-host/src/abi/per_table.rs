//! What a plugin answered about a whole table (ABI 0.2.1), remembered per instance: which
//! columns it reads (`columns`), and for a filter or topic namer whether it keeps the table
//! or what its topic is (`keep-table`, `table-topic`, per table and database).
//!
//! Each is asked once per table instead of being worked out again for every batch: a filter
//! or namer whose batch's events all have an answer is not called at all, and a transform is
//! sent only the columns it reads.

use std::cell::Cell;
use std::sync::Arc;

use walflow_core::event::Relation;

/// A table, the database when answers are per database, and the plugin's answer.
type Entry<T> = (Arc<Relation>, Option<Arc<str>>, Option<T>);

/// Answers per table, or per table and database; `None` answers (every column, or: it depends
/// on the event) are remembered too.
pub(crate) struct TableAnswers<T> {
    /// The relations and names are held, so a pointer match cannot be a freed one's successor.
    known: Vec<Entry<T>>,
    /// The entry found last: batches are runs of one table.
    last: Cell<usize>,
}

impl<T> Default for TableAnswers<T> {
    fn default() -> Self {
        TableAnswers {
            known: Vec::new(),
            last: Cell::new(0),
        }
    }
}

/// Tables remembered at most; past that, the plugin is asked again.
const MAX_KNOWN: usize = 1024;

impl<T: Clone> TableAnswers<T> {
    /// The answer for `relation` (in `db`, for answers per database), if the plugin has been
    /// asked about it or about a table just like it.
    pub(crate) fn get(&self, relation: &Arc<Relation>, db: Option<&Arc<str>>) -> Option<Option<T>> {
        let same = |(r, d, _): &Entry<T>| {
            Arc::ptr_eq(r, relation)
                && match (d, db) {
                    (Some(d), Some(db)) => Arc::ptr_eq(d, db),
                    (d, db) => d.is_none() && db.is_none(),
                }
        };
        let alike = |(r, d, _): &Entry<T>| **r == **relation && d.as_deref() == db.map(|d| &**d);
        if !self.known.get(self.last.get()).is_some_and(same) {
            let found = match self.known.iter().position(same) {
                Some(i) => i,
                None => self.known.iter().position(alike)?,
            };
            self.last.set(found);
        }
        Some(self.known[self.last.get()].2.clone())
    }

    /// Remembers the plugin's answer for `relation` (in `db`).
    pub(crate) fn insert(
        &mut self,
        relation: Arc<Relation>,
        db: Option<Arc<str>>,
        answer: Option<T>,
    ) {
        if self.known.len() >= MAX_KNOWN {
            self.known.clear();
        }
        self.known.push((relation, db, answer));
    }

    /// Whether any table's answer is not `None`.
    pub(crate) fn any(&self) -> bool {
        self.known.iter().any(|(_, _, a)| a.is_some())
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
        assert_eq!(known.get(&table, Some(&app)), None);
        known.insert(table.clone(), Some(app.clone()), Some(true));
        known.insert(other.clone(), Some(app.clone()), None);
        assert_eq!(known.get(&table, Some(&app)), Some(Some(true)));
        assert_eq!(
            known.get(&other, Some(&app)),
            Some(None),
            "`none` is an answer too"
        );
        let copy = Arc::new((*table).clone());
        assert_eq!(known.get(&copy, Some(&Arc::from("app"))), Some(Some(true)));
        assert_eq!(
            known.get(&table, Some(&shop)),
            None,
            "another database is asked again"
        );
        assert_eq!(
            known.get(&table, None),
            None,
            "per table is not per database"
        );
        assert!(known.any());
    }
}
