//! A target table as the postgres sink sees it, the statements it runs against it, and values
//! as PostgreSQL text.
//!
//! A target row is found by its key: the target's primary key, or the source's replica
//! identity. A table with neither (a keyless source table under `REPLICA IDENTITY FULL`, whose
//! changes carry the whole old row) is matched by whole rows instead: an update or a delete
//! touches one target row whose every column equals the old row's. Columns are compared as
//! text with `IS NOT DISTINCT FROM`, so NULLs match NULLs and types without an equality
//! operator (`json`, `point`, `xml`) can be compared too; both sides are cast to the target
//! column's type first, so they print alike.

use tokio_postgres::types::Type;

use walflow_core::event::{Array, Event, Relation, Row, TemporalKind, Value};
use walflow_core::sink::SinkError;
use walflow_pg::sql::{ident, qualified};

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
    /// Source column indices of the key (every column when matching whole rows).
    key: Vec<usize>,
    /// Whether rows are found by all their values: neither the target nor the source has a
    /// key.
    whole_row: bool,
    /// The source columns and replica identity this was built for.
    source_columns: Vec<String>,
    source_key: Vec<usize>,
}

/// The columns that find a row in the target, and their values as text.
pub(super) struct Locator {
    pub columns: Vec<usize>,
    pub values: Vec<Option<String>>,
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
        let quoted = qualified(schema, table);
        let rows = client
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
                   FROM pg_attribute a
                  WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
                &[&quoted],
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
        let primary_key = primary_key(client, &quoted, relation).await?;
        let (key, whole_row) = locating_columns(primary_key, relation);
        Ok(Target {
            table: quoted,
            names: relation.columns.iter().map(|c| ident(&c.name)).collect(),
            types,
            key,
            whole_row,
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

    /// Whether rows are matched by all their values (see the module docs).
    pub fn whole_row(&self) -> bool {
        self.whole_row
    }

    /// What finds `row` in the target: the key columns and their values as text (under
    /// whole-row matching, every column the source sent).
    pub fn locator(&self, row: Option<&Row>, event: &Event) -> Result<Locator, SinkError> {
        let row = row.ok_or_else(|| self.no_row(event))?;
        let columns: Vec<usize> = self
            .key
            .iter()
            .copied()
            .filter(|&i| !(self.whole_row && matches!(row.get(i), Some(Value::UnchangedToast))))
            .collect();
        let values = columns
            .iter()
            .map(|&i| row.get(i).and_then(value_text))
            .collect();
        Ok(Locator { columns, values })
    }

    /// The key columns (for a keyed target, what [`locator`](Self::locator) finds rows by).
    pub fn key(&self) -> &[usize] {
        &self.key
    }

    /// The key values of `row` as text, for a keyed target (the bulk path folds by them).
    pub fn key_values(
        &self,
        row: Option<&Row>,
        event: &Event,
    ) -> Result<Vec<Option<String>>, SinkError> {
        Ok(self.locator(row, event)?.values)
    }

    /// Why an event without the row to locate cannot be applied.
    fn no_row(&self, event: &Event) -> SinkError {
        let (op, table) = (event.op.code(), event.relation.qualified_name());
        SinkError::Fatal(if self.whole_row {
            format!(
                "a {op} event of {table} carries no old row, and without a key the postgres sink finds target rows by their old values; set REPLICA IDENTITY FULL on the source table or give both tables a primary key"
            )
        } else {
            format!("a {op} event of {table} carries no row to find its target row by")
        })
    }

    /// `DELETE … WHERE key = …`; parameters: the locator's values.
    pub fn delete(&self, found: &[usize]) -> (String, Vec<Type>) {
        let sql = format!("DELETE FROM {} WHERE {}", self.table, self.locate(found, 1));
        (sql, vec![Type::TEXT; found.len()])
    }

    /// `UPDATE … SET columns WHERE key = …`; parameters: the columns, then the locator's
    /// values.
    pub fn update(&self, columns: &[usize], found: &[usize]) -> (String, Vec<Type>) {
        let set: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(n, &i)| format!("{} = {}", self.names[i], self.param(n + 1, i)))
            .collect();
        let sql = format!(
            "UPDATE {} SET {} WHERE {}",
            self.table,
            set.join(", "),
            self.locate(found, columns.len() + 1)
        );
        (sql, vec![Type::TEXT; columns.len() + found.len()])
    }

    /// `INSERT …`; parameters: the columns. On its own only for whole-row matching, where
    /// nothing identifies a row to upsert.
    pub fn insert(&self, columns: &[usize]) -> (String, Vec<Type>) {
        let names: Vec<&str> = columns.iter().map(|&i| self.names[i].as_str()).collect();
        let values: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(n, &i)| self.param(n + 1, i))
            .collect();
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            self.table,
            names.join(", "),
            values.join(", ")
        );
        (sql, vec![Type::TEXT; columns.len()])
    }

    /// `INSERT … ON CONFLICT (key) DO UPDATE`; parameters: the columns.
    pub fn upsert(&self, columns: &[usize]) -> (String, Vec<Type>) {
        let (insert, types) = self.insert(columns);
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
        let sql = format!("{insert} ON CONFLICT ({}) DO {action}", key.join(", "));
        (sql, types)
    }

    /// The condition finding the row whose `columns` equal parameters `first`, … in order:
    /// by key, or one row (of possibly several alike) equal in every column.
    fn locate(&self, columns: &[usize], first: usize) -> String {
        if !self.whole_row {
            return columns
                .iter()
                .enumerate()
                .map(|(n, &i)| format!("{} = {}", self.names[i], self.param(first + n, i)))
                .collect::<Vec<_>>()
                .join(" AND ");
        }
        let equal: Vec<String> = columns
            .iter()
            .enumerate()
            .map(|(n, &i)| {
                format!(
                    "{}::text IS NOT DISTINCT FROM ({})::text",
                    self.names[i],
                    self.param(first + n, i)
                )
            })
            .collect();
        let condition = if equal.is_empty() {
            "true".to_owned()
        } else {
            equal.join(" AND ")
        };
        format!(
            "(tableoid, ctid) = (SELECT tableoid, ctid FROM {} WHERE {condition} LIMIT 1)",
            self.table
        )
    }

    /// Parameter `n` (text) cast to column `column`'s type.
    fn param(&self, n: usize, column: usize) -> String {
        format!("${n}::{}", self.types[column])
    }
}

/// The columns that find a target row, and whether they are the whole row: the target's
/// primary key, else the source's replica identity key, else every column. Under `REPLICA
/// IDENTITY FULL` a source without a primary key flags every column as key (and none in its
/// snapshot rows), which is no key either.
fn locating_columns(primary_key: Vec<usize>, relation: &Relation) -> (Vec<usize>, bool) {
    if !primary_key.is_empty() {
        return (primary_key, false);
    }
    let source_key: Vec<usize> = relation.key_indices().collect();
    if source_key.is_empty() || source_key.len() == relation.columns.len() {
        return ((0..relation.columns.len()).collect(), true);
    }
    (source_key, false)
}

/// The source column indices of the target's primary key; empty when it has none.
async fn primary_key(
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

/// A value in PostgreSQL's text input format; `None` for NULL.
pub(super) fn value_text(value: &Value) -> Option<String> {
    Some(match value {
        Value::Null | Value::UnchangedToast => return None,
        Value::Bool(b) => if *b { "t" } else { "f" }.to_owned(),
        Value::Int(n) => n.to_string(),
        Value::Float(f) => float_text(*f),
        Value::Text(s) | Value::Numeric(s) | Value::Json(s) | Value::Uuid(s) => s.clone(),
        Value::Temporal(kind, s) => temporal_text(*kind, s),
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

/// A date or timestamp as PostgreSQL reads it. Events carry ISO-8601's expanded years,
/// which PostgreSQL does not read: the astronomical `-2039-04-10` is written `2040-04-10 BC`
/// (year 0 is 1 BC) and `+10000-01-01` loses its sign. Anything else is already its input.
fn temporal_text(kind: TemporalKind, text: &str) -> String {
    if !matches!(
        kind,
        TemporalKind::Date | TemporalKind::Timestamp | TemporalKind::TimestampTz
    ) {
        return text.to_owned();
    }
    if let Some(after_9999) = text.strip_prefix('+') {
        return after_9999.to_owned();
    }
    let (negative, body) = match text.strip_prefix('-') {
        Some(body) if body.starts_with(|c: char| c.is_ascii_digit()) => (true, body),
        _ => (false, text),
    };
    let Some((year, rest)) = body.split_once('-') else {
        return text.to_owned();
    };
    match year.parse::<i64>() {
        Ok(year) if negative || year == 0 => {
            let astronomical = if negative { -year } else { year };
            format!("{:04}-{rest} BC", 1 - astronomical)
        }
        _ => text.to_owned(),
    }
}

/// An array literal such as `{{1,2},{3,NULL}}`, with its bounds (`[0:1]={7,8}`) when they
/// are not the default.
fn array_text(array: &Array) -> String {
    let mut out = String::new();
    if array.dims.is_empty() || array.elements.is_empty() {
        return "{}".into();
    }
    if array.lower_bounds.len() == array.dims.len() {
        for (&lower, &length) in array.lower_bounds.iter().zip(&array.dims) {
            let upper = i64::from(lower) + i64::from(length) - 1;
            out.push_str(&format!("[{lower}:{upper}]"));
        }
        out.push('=');
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
            lower_bounds: Vec::new(),
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
    fn arrays_keep_bounds_that_are_not_one() {
        let a = Array {
            dims: vec![2, 1],
            lower_bounds: vec![-1, 5],
            elements: vec![Value::Int(7), Value::Null],
        };
        assert_eq!(array_text(&a), r#"[-1:0][5:5]={{"7"},{NULL}}"#);
    }

    #[test]
    fn expanded_years_become_what_postgresql_reads() {
        use TemporalKind::*;
        for (kind, iso, pg) in [
            (Date, "-2039-04-10", "2040-04-10 BC"),
            (Date, "0000-01-01", "0001-01-01 BC"),
            (Date, "0001-01-01", "0001-01-01"),
            (Date, "+10000-01-01", "10000-01-01"),
            (Date, "-infinity", "-infinity"),
            (
                Timestamp,
                "-0043-03-15T12:00:00.5",
                "0044-03-15T12:00:00.5 BC",
            ),
            (
                TimestampTz,
                "-2039-04-10T01:02:03+00:00",
                "2040-04-10T01:02:03+00:00 BC",
            ),
            (
                TimestampTz,
                "2024-01-02T03:04:05-08:00",
                "2024-01-02T03:04:05-08:00",
            ),
            (Interval, "P-1Y-2M", "P-1Y-2M"),
            (TimeTz, "03:04:05-08:00", "03:04:05-08:00"),
        ] {
            let value = Value::Temporal(kind, iso.into());
            assert_eq!(value_text(&value).as_deref(), Some(pg), "{iso}");
        }
    }

    /// A keyless table whose changes carry no old row cannot be matched: say what to set.
    #[test]
    fn whole_row_matching_without_an_old_row_names_the_fix() {
        let relation = Relation::one_column("keyless", "n", "int4", 23);
        let target = Target {
            table: ident("keyless"),
            names: vec![ident("n")],
            types: vec!["integer".into()],
            key: vec![0],
            whole_row: true,
            source_columns: vec!["n".into()],
            source_key: vec![0],
        };
        let update = Event {
            op: walflow_core::event::Op::Update,
            relation,
            source: Default::default(),
            before: None,
            after: Some(vec![Value::Int(1)]),
            topic: None,
            message: None,
        };
        let Err(SinkError::Fatal(message)) = target.locator(update.before.as_ref(), &update) else {
            panic!("an update without its old row is fatal");
        };
        assert!(message.contains("REPLICA IDENTITY FULL"), "{message}");
        let found = target.locator(update.after.as_ref(), &update).unwrap();
        assert_eq!(
            (found.columns, found.values),
            (vec![0], vec![Some("1".into())])
        );
        let (sql, _) = target.delete(&[0]);
        assert_eq!(
            sql,
            "DELETE FROM \"keyless\" WHERE (tableoid, ctid) = (SELECT tableoid, ctid FROM \"keyless\" \
             WHERE \"n\"::text IS NOT DISTINCT FROM ($1::integer)::text LIMIT 1)"
        );
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
