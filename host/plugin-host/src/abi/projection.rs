//! Column projection (ABI 0.2.1): a plugin names the columns of a table it reads, and the host
//! sends only those.
//!
//! Most of a call's cost is laying rows out and the guest lifting them, while a transform
//! usually reads one or two columns (binary-repr only those that can hold bytes). So a plugin
//! answers `columns` once per table; its instance remembers the answer per relation and sends
//! that table as the plugin asked: only those columns in `relations`, only their values in the
//! rows. Edits come back in the plugin's numbering and are mapped to the table's here.

use std::sync::Arc;

use walflow_core::event::Relation;

/// The columns of one table a plugin reads.
#[derive(Debug, PartialEq)]
pub(crate) struct Projection {
    /// The table as the plugin sees it: only those columns, in table order.
    relation: Arc<Relation>,
    /// For each of them, its position in the whole table (ascending).
    columns: Vec<u32>,
}

impl Projection {
    /// Checks a plugin's `columns` answer for `relation`: `None` when it reads every column,
    /// `Err` (the plugin's bad output) when it names a column the table does not have. The
    /// order of the answer does not matter, nor do repeats.
    pub(crate) fn new(
        relation: &Relation,
        answer: Option<Vec<u32>>,
    ) -> Result<Option<Projection>, String> {
        let Some(mut columns) = answer else {
            return Ok(None);
        };
        let width = relation.columns.len();
        if let Some(bad) = columns.iter().find(|&&c| c as usize >= width) {
            return Err(format!(
                "`columns` named column {bad} of {}.{}, which has {width} columns",
                relation.schema, relation.table
            ));
        }
        columns.sort_unstable();
        columns.dedup();
        if columns.len() == width {
            return Ok(None);
        }
        let relation = Arc::new(Relation {
            oid: relation.oid,
            schema: relation.schema.clone(),
            table: relation.table.clone(),
            columns: columns
                .iter()
                .map(|&c| relation.columns[c as usize].clone())
                .collect(),
        });
        Ok(Some(Projection { relation, columns }))
    }

    /// The table as the plugin sees it.
    pub(crate) fn relation(&self) -> &Arc<Relation> {
        &self.relation
    }

    /// The positions in the whole table of the columns sent.
    pub(crate) fn columns(&self) -> &[u32] {
        &self.columns
    }

    /// The position in the whole table of the plugin's column `column`, if it has one.
    pub(crate) fn table_column(&self, column: u32) -> Option<u32> {
        self.columns.get(column as usize).copied()
    }
}

/// What a plugin answered `columns` for each table it has seen (`None`: every column).
pub(crate) type Projections = super::per_table::TableAnswers<Arc<Projection>>;

#[cfg(test)]
mod tests {
    use super::*;
    use walflow_core::event::Column;

    fn table(names: &[&str]) -> Relation {
        Relation {
            oid: 7,
            schema: "public".into(),
            table: "t".into(),
            columns: names
                .iter()
                .map(|n| Column {
                    name: n.to_string(),
                    type_oid: 25,
                    type_name: "text".into(),
                    type_modifier: -1,
                    key: false,
                })
                .collect(),
        }
    }

    #[test]
    fn an_answer_is_sorted_deduplicated_and_mapped_back() {
        let t = table(&["a", "b", "c", "d"]);
        let p = Projection::new(&t, Some(vec![3, 1, 3])).unwrap().unwrap();
        let names: Vec<_> = p.relation().columns.iter().map(|c| &c.name).collect();
        assert_eq!(names, ["b", "d"]);
        assert_eq!(p.columns(), [1, 3]);
        assert_eq!(p.table_column(1), Some(3));
        assert_eq!(p.table_column(2), None);
    }

    #[test]
    fn every_column_or_none_means_no_projection() {
        let t = table(&["a", "b"]);
        assert_eq!(Projection::new(&t, None), Ok(None));
        assert_eq!(Projection::new(&t, Some(vec![1, 0])), Ok(None));
    }

    #[test]
    fn no_column_at_all_is_a_projection() {
        let p = Projection::new(&table(&["a"]), Some(Vec::new()))
            .unwrap()
            .unwrap();
        assert!(p.relation().columns.is_empty());
    }

    #[test]
    fn a_column_the_table_lacks_is_the_plugins_error() {
        let err = Projection::new(&table(&["a", "b"]), Some(vec![0, 2])).unwrap_err();
        assert!(
            err.contains("column 2 of public.t, which has 2 columns"),
            "{err}"
        );
    }

    #[test]
    fn relations_are_found_by_pointer_or_by_content() {
        let mut known = Projections::default();
        let t = Arc::new(table(&["a", "b"]));
        let p = Projection::new(&t, Some(vec![1])).unwrap().map(Arc::new);
        known.insert(t.clone(), None, p.clone());
        assert_eq!(known.get(&t, None), Some(p.clone()));
        assert_eq!(known.get(&Arc::new(table(&["a", "b"])), None), Some(p));
        assert_eq!(known.get(&Arc::new(table(&["a", "c"])), None), None);
        assert!(known.any());
    }
}
