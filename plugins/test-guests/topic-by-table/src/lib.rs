//! A topic namer whose per-table topics (`table-topic`) differ from its per-event ones on
//! purpose, so the tests see which the host used: by table `{db}.table.{table}` (none for table
//! `dynamic`), event by event `event.{table}` (`event.message` for a logical message).

use walflow_sdk::{Event, Op};

#[walflow_sdk::init]
fn setup(_config: &str) -> Result<(), String> {
    walflow_sdk::without_rows();
    walflow_sdk::name_by_table(|db, table| {
        (table.table != "dynamic").then(|| format!("{db}.table.{}", table.table))
    });
    Ok(())
}

#[walflow_sdk::topic_namer]
fn name(event: &Event) -> String {
    match event.op() {
        Op::Message => "event.message".to_string(),
        _ => format!("event.{}", event.table()),
    }
}
