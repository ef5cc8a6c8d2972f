//! A filter written against `walflow:plugin@0.2.0` with wit-bindgen alone, as plugins were built
//! before column projection (0.2.1): keeps events whose `id` is even, and fails the batch when
//! a row does not carry every column of its table (the host must send all of them to 0.2.0).

wit_bindgen::generate!({ path: "../../../wit/v0.2.0", world: "walflow:plugin/filter" });

use walflow::plugin::types::{Batch, Needs, Value};

struct KeepEven;

impl exports::walflow::plugin::filter_api::Guest for KeepEven {
    fn init(_config: String) -> Result<Needs, String> {
        Ok(Needs { rows: true })
    }

    fn filter(batch: Batch) -> Result<Vec<bool>, String> {
        let mut keep = Vec::with_capacity(batch.events.len());
        for event in &batch.events {
            let relation = &batch.relations[event.relation as usize];
            let Some(row) = event.after else {
                keep.push(true);
                continue;
            };
            if row.len as usize != relation.columns.len() {
                return Err(format!(
                    "a row of {} values for {} columns",
                    row.len,
                    relation.columns.len()
                ));
            }
            let id = relation.columns.iter().position(|c| c.name == "id");
            let value = id.map(|i| &batch.values[row.start as usize + i]);
            keep.push(!matches!(value, Some(Value::Int(i)) if i % 2 != 0));
        }
        Ok(keep)
    }
}

export!(KeepEven);
