//! The host side of the plugin ABI: one `bindgen!` over the `host` world of
//! `wit/walflow-plugin.wit`, which exports every role's interface. Each plugin binds only the
//! interface of its own role (through that interface's `GuestIndices`), so one set of generated
//! types serves all worlds.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "walflow:plugin/host",
});

pub use self::walflow::plugin::types;
pub use exports::walflow::plugin::{filter_api, sink_api, topic_namer_api, transform_api};
