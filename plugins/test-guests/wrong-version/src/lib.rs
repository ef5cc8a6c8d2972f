//! A filter for a future `walflow:plugin@0.9.0`, to test the host's version check.

wit_bindgen::generate!({ path: "wit", world: "filter" });

struct Future;

impl exports::walflow::plugin::filter_api::Guest for Future {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn filter(batch: walflow::plugin::types::Batch) -> Result<Vec<bool>, String> {
        Ok(batch.events.iter().map(|_| true).collect())
    }
}

export!(Future);
