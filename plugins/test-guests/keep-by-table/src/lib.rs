//! A filter whose per-table answers (`keep-table`) contradict its per-event ones on purpose,
//! so the tests see which the host used: table `kept` is kept and `gone` dropped by table,
//! any other table is left to the events; event by event the answer is the opposite (`kept`
//! dropped, everything else kept).

use walflow_sdk::Event;

#[walflow_sdk::init]
fn setup(_config: &str) -> Result<(), String> {
    walflow_sdk::without_rows();
    walflow_sdk::filter_by_table(|_, table| match table.table.as_str() {
        "kept" => Some(true),
        "gone" => Some(false),
        _ => None,
    });
    Ok(())
}

#[walflow_sdk::filter]
fn keep(event: &Event) -> bool {
    event.table() != "kept"
}
