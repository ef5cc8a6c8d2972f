//! `reshape` (see test-guests/reshape) written against `walflow:plugin@0.1.0` with wit-bindgen
//! alone, as plugins were built before 0.2.0: the host must keep running them.

wit_bindgen::generate!({ path: "../../../wit/v0.1.0", world: "walflow:plugin/transform" });

use walflow::plugin::types::{
    Batch, Edit, Event, EventFailure, Needs, Op, RemoveColumn, ReplaceEvent, RowSide, SetValue,
    Value,
};

struct Reshape;

impl exports::walflow::plugin::transform_api::Guest for Reshape {
    fn init(_config: String) -> Result<Needs, String> {
        Ok(Needs { rows: true })
    }

    fn transform(batch: Batch) -> Result<Vec<Edit>, String> {
        let mut edits = Vec::new();
        for (i, event) in batch.events.into_iter().enumerate() {
            let i = i as u32;
            let Some(relation) = batch.relations.get(event.relation as usize) else {
                continue;
            };
            let Some(column) = relation.columns.iter().position(|c| c.name == "action") else {
                continue;
            };
            let action = match event.after.as_ref().and_then(|row| row.get(column)) {
                Some(Value::Text(text)) => text.clone(),
                _ => continue,
            };
            let column = column as u32;
            edits.push(match action.as_str() {
                "drop" => Edit::Drop(i),
                "delete" => Edit::Replace(ReplaceEvent {
                    event: i,
                    replacement: Event {
                        op: Op::Delete,
                        ..event
                    },
                }),
                "strip" => Edit::Remove(RemoveColumn { event: i, column }),
                "fail" => Edit::Fail(EventFailure {
                    event: i,
                    message: "asked to fail".to_string(),
                }),
                text => Edit::Set(SetValue {
                    event: i,
                    side: RowSide::After,
                    column,
                    value: Value::Text(text.to_uppercase()),
                }),
            });
        }
        Ok(edits)
    }
}

export!(Reshape);
