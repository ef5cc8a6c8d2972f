//! Which tables a pipeline captures: `tables` globs plus the rows of `tables_csv`.
//!
//! A pattern is `schema.table` where `*` matches any run of characters and `?` one character
//! (`inventory.*`, `public.order_?`). An empty selection captures every table.

use std::path::Path;

use crate::SourceConfig;

/// A compiled table selection.
#[derive(Debug, Clone, Default)]
pub struct TableSelector {
    patterns: Vec<String>,
}

/// A `tables_csv` file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("tables_csv {path}: {message}")]
pub struct TablesCsvError {
    path: String,
    message: String,
}

impl TableSelector {
    /// The selection of `[source]`: `tables` and the rows of `tables_csv`.
    pub fn from_source(source: &SourceConfig) -> Result<TableSelector, TablesCsvError> {
        let mut patterns = source.tables.clone();
        if let Some(csv) = &source.tables_csv {
            patterns.extend(read_csv(csv)?);
        }
        Ok(TableSelector { patterns })
    }

    /// A selection of explicit patterns.
    pub fn new(patterns: Vec<String>) -> TableSelector {
        TableSelector { patterns }
    }

    /// The selection plus one more table (`schema.table`, or `table` in `public`), unless the
    /// selection already captures every table.
    pub fn including(mut self, table: Option<&str>) -> TableSelector {
        if let Some(t) = table.filter(|_| !self.is_all()) {
            let qualified = if t.contains('.') {
                t.to_owned()
            } else {
                format!("public.{t}")
            };
            self.patterns.push(qualified);
        }
        self
    }

    /// The patterns, as configured.
    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    /// Whether every table is captured.
    pub fn is_all(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether `schema.table` is captured.
    pub fn matches(&self, schema: &str, table: &str) -> bool {
        if self.patterns.is_empty() {
            return true;
        }
        let name = format!("{schema}.{table}");
        self.patterns
            .iter()
            .any(|p| glob_match(p.as_bytes(), name.as_bytes()))
    }
}

/// Reads `schema,table` rows (no header; blank lines and `#` comments skipped; fields may be
/// double-quoted).
fn read_csv(path: &Path) -> Result<Vec<String>, TablesCsvError> {
    let err = |message: String| TablesCsvError {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read it: {e}")))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<String> = line
            .split(',')
            .map(|f| f.trim().trim_matches('"').to_string())
            .collect();
        match fields.as_slice() {
            [schema, table] if !schema.is_empty() && !table.is_empty() => {
                out.push(format!("{schema}.{table}"))
            }
            _ => {
                return Err(err(format!(
                    "line {} is `{line}`; each row must be `schema,table`",
                    i + 1
                )));
            }
        }
    }
    Ok(out)
}

/// `*` and `?` glob matching, iterative with backtracking to the last star.
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    p = sp + 1;
                    n = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        let s = TableSelector::new(vec![
            "public.orders".into(),
            "inventory.*".into(),
            "x.t_?".into(),
        ]);
        assert!(s.matches("public", "orders"));
        assert!(!s.matches("public", "orders2"));
        assert!(s.matches("inventory", "anything"));
        assert!(s.matches("x", "t_1"));
        assert!(!s.matches("x", "t_12"));
        assert!(TableSelector::default().matches("a", "b"));
    }

    #[test]
    fn including_a_table() {
        let s = TableSelector::new(vec!["public.orders".into()]).including(Some("walflow.signal"));
        assert!(s.matches("walflow", "signal"));
        let s = TableSelector::new(vec!["public.orders".into()]).including(Some("signal"));
        assert!(s.matches("public", "signal"));
        assert!(TableSelector::default().including(Some("x.y")).is_all());
    }

    #[test]
    fn csv_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.csv");
        std::fs::write(&path, "public,orders\n\n\"inventory\",\"items\"\n").unwrap();
        assert_eq!(
            read_csv(&path).unwrap(),
            vec!["public.orders", "inventory.items"]
        );
        std::fs::write(&path, "public.orders\n").unwrap();
        let e = read_csv(&path).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }
}
