//! A transform that writes into every text column it is sent the names of all the columns it
//! was sent, so the tests see what a projecting plugin gets and where its edits land.
//!
//! Config: `{"only": ["col", …]}` reads only those columns (`only_columns`); add
//! `"replace": true` to also turn each event into a delete (which the host must refuse for a
//! table it sent only in part).

use std::sync::OnceLock;

use walflow_sdk::{Event, Op, Value};

static ONLY: OnceLock<Vec<String>> = OnceLock::new();
static REPLACE: OnceLock<bool> = OnceLock::new();

#[walflow_sdk::init]
fn setup(config: &str) -> Result<(), String> {
    let config: serde_json::Value = serde_json::from_str(config).map_err(|e| e.to_string())?;
    let _ = REPLACE.set(config["replace"].as_bool().unwrap_or(false));
    if let Some(only) = config["only"].as_array() {
        let names = only.iter().filter_map(|v| v.as_str().map(String::from));
        let _ = ONLY.set(names.collect());
        walflow_sdk::only_columns(|_, column| {
            ONLY.get().is_some_and(|only| only.contains(&column.name))
        });
    }
    Ok(())
}

#[walflow_sdk::transform]
fn census(event: &mut Event) -> Result<(), String> {
    let names: Vec<&str> = event.columns().iter().map(|c| c.name.as_str()).collect();
    let seen = names.join(",");
    for (i, column) in event.columns().iter().enumerate() {
        if column.type_name == "text" {
            event.map_column(i, |_| Some(Value::from(seen.clone())))?;
        }
    }
    if REPLACE.get() == Some(&true) {
        event.set_op(Op::Delete);
    }
    Ok(())
}
