//! Version 2 of a transform that stamps `version = "v2"` into each after row; the hot-reload
//! test swaps it for the other version mid-stream.

#[walflow_sdk::transform]
fn stamp(event: &mut walflow_sdk::Event) -> Result<(), String> {
    if event.after().exists() {
        event.after_mut().set("version", "v2")?;
    }
    Ok(())
}
