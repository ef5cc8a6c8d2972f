//! A transform that sets every value of both rows to a copy of itself, so that each kind of
//! value crosses the ABI both ways: the tests expect events to come out exactly as they went in.

use walflow_sdk::Event;

#[walflow_sdk::transform]
fn echo(event: &mut Event) -> Result<(), String> {
    for i in 0..event.columns().len() {
        event.map_column(i, |value| Some(value.clone().into_owned()))?;
    }
    Ok(())
}
