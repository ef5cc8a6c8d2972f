//! A filter that keeps every event: the benchmark's measure of the bare ABI cost.

#[walflow_sdk::filter]
fn keep(_event: &walflow_sdk::Event) -> bool {
    true
}
