//! A target table as the postgres sink sees it, the statements it runs against it, and values
//! as PostgreSQL text.

use tokio_postgres::types::Type;

use crate::event::{Array, Event, Relation, Row, Value};
use crate::sink::SinkError;

mod stage;

/// The target of one source table: its quoted name, column types and key.
#[derive(Debug, Clone)]
pub(super) struct Target {
    /// `"schema"."table"`, quoted.
    pub table: String,
    /// Quoted column names, in source column order.
    names: Vec<String>,
    /// The target column's type as `format_type` writes it, in source column order.
    types: Vec<String>,
    /// Source column indices of the key.
    key: Vec<usize>,
    /// The source columns and replica identity this was built for.
    source_columns: Vec<String>,
    source_key: Vec<usize>,
}

/// Why a target could not be described.
pub(super) enum LoadError {
    /// The catalog query failed.
    Sql(tokio_postgres::Error),
    /// The target does not fit the source.
    Invalid(String),
}

impl Target {
    /// Reads the target table's columns and checks it fits `relation`.
    pub async fn load(
        client: &tokio_postgres::Client,
        schema: &str,
        table: &str,
        relation: &Relation,
    ) -> Result<Target, LoadError> {
        let qualified = format!("{}.{}", quote(schema), quote(table));
        let rows = client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
                   FROM pg_attribute a
                  WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
                &[&qualified],
            )
            .await
            .map_err(LoadError::Sql)?;
        if rows.is_empty() {
            return Err(LoadError::Invalid(format!(
                "the postgres sink's target table {schema}.{table} does not exist; create it with the source's columns and primary key"
            )));
        }
        let found: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        let mut types = Vec::with_capacity(relation.columns.len());
        for c in &relation.columns {
            let ty = found
                .iter()
                .find(|(name, _)| *name == c.name)
                .map(|(_, ty)| ty.clone())
                .ok_or_else(|| {
                    LoadError::Invalid(format!(
                        "the postgres sink's target table {schema}.{table} has no column `{}`; add it",
                        c.name
                    ))
                })?;
            types.push(ty);
        }
        let key = key_columns(client, &qualified, relation).await?;
        if key.is_empty() {
            return Err(LoadError::Invalid(format!(
                "the postgres sink cannot locate rows of {schema}.{table}: give the target table a primary key (the source's key columns)"
            )));
        }
        Ok(Target {
            table: qualified,
            names: relation.columns.iter().map(|c| quote(&c.name)).collect(),
            types,
            key,
            source_columns: relation.columns.iter().map(|c| c.name.clone()).collect(),
            source_key: relation.key_indices().collect(),
        })
    }

    /// Whether this target was built for `relation`'s current columns.
    pub fn matches(&self, relation: &Relation) -> bool {
        self.source_columns.len() == relation.columns.len()
            && self
                .source_columns
                .iter()
                .zip(&relation.columns)
                .all(|(a, b)| *a == b.name)
            && self.source_key.iter().copied().eq(relation.key_indices())
    }

    /// The key values of `row` as text.
    pub fn key_values(
        &self,
        row: Option<&Row>,
        event: &Event,
    ) -> Result<Vec<Option<String>>, SinkError> {
        let row = row.ok_or_else(|| {
            SinkError::Fatal(format!(
                "a {} event of {} carries no row to take its key from",
                event.op.code(),
                event.relation.qualified_name()
            ))
        })?;
        Ok(self
            .key
            .iter()
            .map(|&i| row.get(i).and_then(value_text))
            .collect())
    }

    /// `DELETE … WHERE key = …`; parameters: the key.
    pub fn delete(&self) -> (String, Vec<Type>) {
        let sql = format!("DELETE FROM {} WHERE {}", self.table, self.key_condition(1));
        (sql, vec![Type::TEXT; self.key.len()])
    }

    /// `UPDATE … SET columns WHERE key = …`; parameters: the columns, then the key.
    pub fn update(&self, columns: &[usize]) -> (String, Vec<Type>) {
        let set: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(n, &i)| format!("{} = {}", self.names[i], self.param(n + 1, i)))
            .collect();
        let sql = format!(
            "UPDATE {} SET {} WHERE {}",
            self.table,
            set.join(", "),
            self.key_condition(columns.len() + 1)
        );
        (sql, vec![Type::TEXT; columns.len() + self.key.len()])
    }

    /// `INSERT … ON CONFLICT (key) DO UPDATE`; parameters: the columns.
    pub fn upsert(&self, columns: &[usize]) -> (String, Vec<Type>) {
        let names: Vec<&str> = columns.iter().map(|&i| self.names[i].as_str()).collect();
        let values: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(n, &i)| self.param(n + 1, i))
            .collect();
        let key: Vec<&str> = self.key.iter().map(|&i| self.names[i].as_str()).collect();
        let updates: Vec<String> = columns
            .iter()
            .filter(|i| !self.key.contains(i))
            .map(|&i| format!("{0} = EXCLUDED.{0}", self.names[i]))
            .collect();
        let action = if updates.is_empty() {
            "NOTHING".to_owned()
        } else {
            format!("UPDATE SET {}", updates.join(", "))
        };
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) DO {action}",
            self.table,
            names.join(", "),
            values.join(", "),
            key.join(", ")
        );
        (sql, vec![Type::TEXT; columns.len()])
    }

    fn key_condition(&self, first: usize) -> String {
        self.key
            .iter()
            .enumerate()
            .map(|(n, &i)| format!("{} = {}", self.names[i], self.param(first + n, i)))
            .collect::<Vec<_>>()
            .join(" AND ")
    }

    /// Parameter `n` (text) cast to column `column`'s type.
    fn param(&self, n: usize, column: usize) -> String {
        format!("${n}::{}", self.types[column])
    }
}

/// The source column indices of the target's primary key, or of the source's replica
/// identity when the target has none. Empty when neither exists.
async fn key_columns(
    client: &tokio_postgres::Client,
    qualified: &str,
    relation: &Relation,
) -> Result<Vec<usize>, LoadError> {
    let rows = client
        .query(
            "SELECT a.attname::text
               FROM pg_index i
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
              WHERE i.indrelid = to_regclass($1) AND i.indisprimary",
            &[&qualified],
        )
        .await
        .map_err(LoadError::Sql)?;
    if rows.is_empty() {
        return Ok(relation.key_indices().collect());
    }
    let mut key = Vec::with_capacity(rows.len());
    for row in rows {
        let name: String = row.get(0);
        let index = relation.column_index(&name).ok_or_else(|| {
            LoadError::Invalid(format!(
                "the primary key column `{name}` of the postgres sink's target {qualified} is not a column of the source table {}",
                relation.qualified_name()
            ))
        })?;
        key.push(index);
    }
    key.sort_unstable();
    Ok(key)
}

/// A double-quoted identifier.
pub(super) fn quote(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

/// A value in PostgreSQL's text input format; `None` for NULL.
pub(super) fn value_text(value: &Value) -> Option<String> {
    Some(match value {
        Value::Null | Value::UnchangedToast => return None,
        Value::Bool(b) => if *b { "t" } else { "f" }.to_owned(),
        Value::Int(n) => n.to_string(),
        Value::Float(f) => float_text(*f),
        Value::Text(s)
        | Value::Numeric(s)
        | Value::Json(s)
        | Value::Uuid(s)
        | Value::Temporal(_, s) => s.clone(),
        Value::Raw { text, .. } => text.clone(),
        Value::Bytes(b) => format!("\\x{}", hex::encode(b)),
        Value::Array(a) => array_text(a),
    })
}

fn float_text(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        format!("{f:?}")
    }
}

/// An array literal such as `{{1,2},{3,NULL}}`.
fn array_text(array: &Array) -> String {
    let mut out = String::new();
    if array.dims.is_empty() || array.elements.is_empty() {
        return "{}".into();
    }
    let mut elements = array.elements.iter();
    write_dim(&array.dims, &mut elements, &mut out);
    out
}

fn write_dim<'a>(dims: &[u32], elements: &mut impl Iterator<Item = &'a Value>, out: &mut String) {
    out.push('{');
    for n in 0..dims[0] {
        if n > 0 {
            out.push(',');
        }
        if dims.len() > 1 {
            write_dim(&dims[1..], elements, out);
            continue;
        }
        match elements.next().and_then(value_text) {
            None => out.push_str("NULL"),
            Some(text) => {
                out.push('"');
                for c in text.chars() {
                    if c == '"' || c == '\\' {
                        out.push('\\');
                    }
                    out.push(c);
                }
                out.push('"');
            }
        }
    }
    out.push('}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrays_are_quoted_literals() {
        let a = Array {
            dims: vec![2, 2],
            elements: vec![
                Value::Int(1),
                Value::Null,
                Value::Text("a\"b".into()),
                Value::Text("c\\d".into()),
            ],
        };
        assert_eq!(array_text(&a), r#"{{"1",NULL},{"a\"b","c\\d"}}"#);
    }

    #[test]
    fn floats_keep_their_precision_and_specials() {
        assert_eq!(value_text(&Value::Float(0.1)).unwrap(), "0.1");
        assert_eq!(value_text(&Value::Float(f64::NAN)).unwrap(), "NaN");
        assert_eq!(
            value_text(&Value::Float(f64::NEG_INFINITY)).unwrap(),
            "-Infinity"
        );
        assert_eq!(value_text(&Value::Bytes(vec![1, 255])).unwrap(), "\\x01ff");
    }
}
