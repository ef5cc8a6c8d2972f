//! The host side of the plugin ABI: one `bindgen!` over the `host` world of
//! `wit/walflow-plugin.wit`, which exports every role's interface, so one set of generated types
//! serves all worlds. They type what plugins answer (needs, edits, topics) and the imports the
//! host provides (`outbound-http`); batches go in through the borrowed views of `view.rs`, which
//! have the same shapes, and `instance.rs` checks each plugin's functions against both.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "walflow:plugin/host",
});

pub use self::walflow::plugin::types;
