//! A transform that reshapes each event as its `action` column says, through every kind of
//! edit (set, remove, drop, replace, fail). Built with the SDK (ABI 0.2.1); `reshape-v0-1`
//! does the same against 0.1.0, and the tests expect the same output from both.

use walflow_sdk::{Event, Op};

#[walflow_sdk::transform]
fn reshape(event: &mut Event) -> Result<(), String> {
    let action = match event.after().get("action").and_then(|v| v.as_str()) {
        Some(action) => action.to_string(),
        None => return Ok(()),
    };
    match action.as_str() {
        "drop" => event.discard(),
        "delete" => event.set_op(Op::Delete),
        "strip" => {
            event.remove("action");
        }
        "fail" => return Err("asked to fail".to_string()),
        text => event.after_mut().set("action", text.to_uppercase())?,
    }
    Ok(())
}
