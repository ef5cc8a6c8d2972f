//! The statements of the bulk path: a flush's final rows of a table are copied into a staging
//! table, then merged into the target with one delete and one upsert.
//!
//! A staging table holds text columns only (one per source column, plus whether the row is a
//! delete), so one per column count serves every target: values are cast to the target
//! column's type when merged, exactly as a single statement's parameters are. Staging tables
//! are temporary (`ON COMMIT DELETE ROWS`), so they are private to the sink's connection and
//! empty at the start of every flush.

use super::Target;

impl Target {
    /// The staging table for this target's column count.
    pub fn stage(&self) -> String {
        format!("pg_temp.walflow_stage_{}", self.names.len())
    }

    /// Columns of the target this was built for (all of them are staged).
    pub fn width(&self) -> usize {
        self.names.len()
    }

    /// `CREATE TEMP TABLE` of [`Target::stage`]: `d` (a delete) and text columns `c0`, `c1`, ….
    pub fn create_stage(&self) -> String {
        let columns: Vec<String> = (0..self.names.len())
            .map(|i| format!("c{i} text"))
            .collect();
        format!(
            "CREATE TEMP TABLE IF NOT EXISTS {} (d bool NOT NULL, {}) ON COMMIT DELETE ROWS",
            self.stage(),
            columns.join(", ")
        )
    }

    /// `COPY` into the staging table, binary rows of `d` and every column.
    pub fn copy_stage(&self) -> String {
        format!("COPY {} FROM STDIN (FORMAT binary)", self.stage())
    }

    /// Deletes the keys of the staged deletes (held in their first columns), then upserts the
    /// staged rows: two statements, sent as one simple query.
    pub fn merge_stage(&self) -> String {
        let stage = self.stage();
        let matches: Vec<String> = self
            .key
            .iter()
            .enumerate()
            .map(|(n, &i)| format!("t.{} = s.c{n}::{}", self.names[i], self.types[i]))
            .collect();
        let names: Vec<&str> = self.names.iter().map(String::as_str).collect();
        let values: Vec<String> = (0..self.names.len()).map(|i| self.staged(i)).collect();
        let key: Vec<&str> = self.key.iter().map(|&i| self.names[i].as_str()).collect();
        let updates: Vec<String> = (0..self.names.len())
            .filter(|i| !self.key.contains(i))
            .map(|i| format!("{0} = EXCLUDED.{0}", self.names[i]))
            .collect();
        let action = if updates.is_empty() {
            "NOTHING".to_owned()
        } else {
            format!("UPDATE SET {}", updates.join(", "))
        };
        format!(
            "DELETE FROM {table} t USING {stage} s WHERE s.d AND {matches};
             INSERT INTO {table} ({names}) SELECT {values} FROM {stage} s WHERE NOT s.d
                 ON CONFLICT ({key}) DO {action}",
            table = self.table,
            matches = matches.join(" AND "),
            names = names.join(", "),
            values = values.join(", "),
            key = key.join(", "),
        )
    }

    /// Staged column `i` cast to the target column's type.
    fn staged(&self, i: usize) -> String {
        format!("s.c{i}::{}", self.types[i])
    }
}

#[cfg(test)]
impl Target {
    /// The target `relation` describes, with text columns, keyed like the source.
    pub fn for_tests(relation: &walflow_core::event::Relation) -> Target {
        Target {
            table: walflow_pg::sql::ident(&relation.table),
            names: relation
                .columns
                .iter()
                .map(|c| walflow_pg::sql::ident(&c.name))
                .collect(),
            types: vec!["text".into(); relation.columns.len()],
            key: relation.key_indices().collect(),
            whole_row: false,
            source_columns: relation.columns.iter().map(|c| c.name.clone()).collect(),
            source_key: relation.key_indices().collect(),
        }
    }
}
