//! The plugin platform: every event passes through WebAssembly components.
//!
//! - [`engine`]: one shared wasmtime engine (component model, epoch deadlines, optional fuel)
//!   and an on-disk cache of compiled components keyed by content hash.
//! - `sandbox`: each plugin's store: WASI with an empty context, stdout/stderr into `tracing`,
//!   a memory cap.
//! - [`bindings`]: the one `bindgen!` of `wit/walflow-plugin.wit`.
//! - `view`: batches lowered into a plugin straight from the host events, without a copy.
//! - [`Chain`]: filter → transforms → topic namer over a batch, with the `on_error` policy.
//! - [`reload`]: hot reload of changed plugin files at batch boundaries.
//! - [`run_command`]: `walflow plugin run`, the plugin author's inner loop.

pub mod bindings;
mod chain;
mod convert;
pub mod engine;
mod error;
mod instance;
pub mod outbound_http;
pub mod reload;
pub mod run_command;
mod sandbox;
mod view;

pub use chain::{Chain, ChainError, ChainOutput, DeadLetter, PluginSlot};
pub use engine::PluginEngine;
pub use error::{LoadError, PluginError};
pub use instance::{ABI_VERSION, Limits, LoadedPlugin, PluginInstance, PluginSpec, Role};
pub use outbound_http::HttpGrant;
