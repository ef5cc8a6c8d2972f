//! The host side of the plugin ABI: one `bindgen!` per supported version of the WIT package
//! (0.2.1 serves 0.2.0 too: same types, plus `columns`), each over its `host` world (which exports every role's interface, so one set of generated
//! types serves all worlds). They type what plugins answer (needs, edits, topics) and the
//! imports the host provides (`outbound-http`); batches go in through the borrowed views of
//! `abi_v0_2.rs` and `abi_v0_1.rs`, which have the same shapes, and `instance.rs` checks each
//! plugin's functions against them.

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "walflow:plugin/host",
});

pub use self::walflow::plugin::types;

/// `walflow:plugin@0.1.0`, which the host still runs.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        path: "../../wit/v0.1.0",
        world: "walflow:plugin/host",
    });

    pub use self::walflow::plugin::types;
}
