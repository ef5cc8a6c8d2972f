//! A transform that sets every value of both rows to a copy of itself, so that each kind of
//! value crosses the ABI both ways: the tests expect events to come out exactly as they went in.

use walflow_sdk::Event;

#[walflow_sdk::transform]
fn echo(event: &mut Event) -> Result<(), String> {
    for after in [true, false] {
        let row = if after { event.after() } else { event.before() };
        let values: Vec<_> = (0..event.columns().len())
            .filter_map(|i| Some((i, row.get_index(i)?.clone().into_owned())))
            .collect();
        let mut row = if after {
            event.after_mut()
        } else {
            event.before_mut()
        };
        for (i, value) in values {
            row.set_index(i, value)?;
        }
    }
    Ok(())
}
