//! A plain WASI command (it exports `wasi:cli/run`, no walflow world): the host must refuse it
//! as a plugin with a clear message.

fn main() {
    println!("not a walflow plugin");
}
