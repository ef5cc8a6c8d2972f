//! `mask-columns`: masks sensitive columns in both rows of an event.
//!
//! Config: `{"columns": ["public.users.email"], "with": "sha256" | "redact"}`. `sha256` replaces
//! a value by the hex SHA-256 of its text (or of its bytes for `bytea`), so equal values still
//! join; `redact` replaces it by `"***"`. NULLs and unchanged TOAST values stay as they are.

use std::collections::HashSet;
use std::sync::OnceLock;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use walflow_sdk::{Event, Value};

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum With {
    Sha256,
    Redact,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    columns: Vec<String>,
    with: With,
}

struct Masks {
    columns: HashSet<String>,
    with: With,
}

static MASKS: OnceLock<Masks> = OnceLock::new();

#[walflow_sdk::init]
fn setup(config: &str) -> Result<(), String> {
    let parsed: Config = serde_json::from_str(config).map_err(|e| {
        format!("mask-columns config: {e} (expected {{\"columns\": [\"schema.table.column\"], \"with\": \"sha256\" | \"redact\"}})")
    })?;
    if let Some(bad) = parsed.columns.iter().find(|c| c.split('.').count() != 3) {
        return Err(format!(
            "mask-columns config: `{bad}` is not schema.table.column"
        ));
    }
    let masks = Masks {
        columns: parsed.columns.into_iter().collect(),
        with: parsed.with,
    };
    MASKS
        .set(masks)
        .map_err(|_| "init called twice".to_string())?;
    // Only the masked columns are sent to this plugin.
    walflow_sdk::only_columns(|table, column| {
        MASKS.get().is_some_and(|m| {
            m.columns
                .contains(&format!("{}.{}.{}", table.schema, table.table, column.name))
        })
    });
    Ok(())
}

#[walflow_sdk::transform]
fn mask(event: &mut Event) -> Result<(), String> {
    let Some(masks) = MASKS.get() else {
        return Ok(());
    };
    let targets: Vec<usize> = event
        .columns()
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            masks
                .columns
                .contains(&format!("{}.{}.{}", event.schema(), event.table(), c.name))
        })
        .map(|(i, _)| i)
        .collect();
    for i in targets {
        event.map_column(i, |value| masked(value, masks.with))?;
    }
    Ok(())
}

fn masked(value: &Value<'_>, with: With) -> Option<Value<'static>> {
    if matches!(value, Value::Null | Value::UnchangedToast) {
        return None;
    }
    Some(Value::from(match with {
        With::Redact => "***".to_string(),
        With::Sha256 => {
            let digest = match value {
                Value::Bytes(b) => Sha256::digest(b),
                other => Sha256::digest(text_of(other).as_bytes()),
            };
            digest.iter().map(|b| format!("{b:02x}")).collect()
        }
    }))
}

fn text_of(value: &Value<'_>) -> String {
    match value {
        Value::Boolean(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => f.to_string(),
        other => other
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| format!("{other:?}")),
    }
}
