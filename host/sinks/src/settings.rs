//! Typed reading of a `[[sinks]]` entry's settings, so every sink reports a wrong or missing key
//! the same way: one sentence naming the sink type, the key and what it should be.

use std::time::Duration;

use super::{SinkError, check_keys};

/// A sink's settings table, checked against the keys that sink knows.
pub(crate) struct Settings<'a> {
    kind: &'static str,
    table: &'a toml::Table,
}

impl<'a> Settings<'a> {
    /// Rejects unknown keys, then gives typed access to the rest.
    pub fn new(
        kind: &'static str,
        table: &'a toml::Table,
        known: &[&str],
    ) -> Result<Settings<'a>, SinkError> {
        check_keys(kind, table, known)?;
        Ok(Settings { kind, table })
    }

    /// A fatal error about `key`.
    pub fn invalid(&self, key: &str, what: &str) -> SinkError {
        SinkError::Fatal(format!("`{key}` of a {} sink must be {what}", self.kind))
    }

    /// An optional string.
    pub fn str(&self, key: &str) -> Result<Option<&'a str>, SinkError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.invalid(key, "a string")),
        }
    }

    /// A required string.
    pub fn required_str(&self, key: &str, example: &str) -> Result<&'a str, SinkError> {
        self.str(key)?.ok_or_else(|| {
            SinkError::Fatal(format!(
                "a {} sink needs `{key} = \"{example}\"`",
                self.kind
            ))
        })
    }

    /// An optional non-negative integer.
    pub fn uint(&self, key: &str) -> Result<Option<u64>, SinkError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_integer()
                .filter(|n| *n >= 0)
                .map(|n| Some(n as u64))
                .ok_or_else(|| self.invalid(key, "a non-negative integer")),
        }
    }

    /// An optional boolean.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, SinkError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_bool()
                .map(Some)
                .ok_or_else(|| self.invalid(key, "true or false")),
        }
    }

    /// An optional duration written like `"10s"` or `"250ms"`.
    pub fn duration(&self, key: &str) -> Result<Option<Duration>, SinkError> {
        match self.str(key)? {
            None => Ok(None),
            Some(s) => walflow_config::parse_duration(s)
                .map(Some)
                .map_err(|e| self.invalid(key, &format!("a duration like \"10s\" ({e})"))),
        }
    }

    /// An optional string or list of strings.
    pub fn str_list(&self, key: &str) -> Result<Option<Vec<String>>, SinkError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(vec![s.clone()])),
            Some(toml::Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .map(Some)
                .ok_or_else(|| self.invalid(key, "a list of strings")),
            Some(_) => Err(self.invalid(key, "a string or a list of strings")),
        }
    }

    /// An optional table of string values (e.g. HTTP headers).
    pub fn str_table(&self, key: &str) -> Result<Vec<(String, String)>, SinkError> {
        match self.table.get(key) {
            None => Ok(Vec::new()),
            Some(toml::Value::Table(t)) => t
                .iter()
                .map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_owned())))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| self.invalid(key, "a table of strings")),
            Some(_) => Err(self.invalid(key, "a table like { name = \"value\" }")),
        }
    }

    /// A secret read from the environment variable that `key` names (`password_env = "VAR"`).
    pub fn secret_env(&self, key: &str) -> Result<Option<String>, SinkError> {
        let Some(var) = self.str(key)? else {
            return Ok(None);
        };
        std::env::var(var).map(Some).map_err(|_| {
            SinkError::Fatal(format!(
                "`{key}` of a {} sink names the environment variable `{var}`, which is not set; export it",
                self.kind
            ))
        })
    }
}

/// Whether encoded records are JSON (the other encoding is MessagePack).
pub(crate) fn is_json(payload: &[u8]) -> bool {
    payload.first() == Some(&b'{')
}
