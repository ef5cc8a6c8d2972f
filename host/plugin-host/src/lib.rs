//! The plugin host: every event passes through WebAssembly components.
//!
//! - [`engine`]: one shared wasmtime engine (component model, epoch deadlines, optional fuel)
//!   and an on-disk cache of compiled components keyed by content hash.
//! - `sandbox`: each plugin's store: WASI with an empty context, stdout/stderr into `tracing`,
//!   a memory cap.
//! - [`bindings`]: one `bindgen!` per ABI version the host runs.
//! - [`abi`]: each version's lowering of host events into a call and lifting of the answer
//!   into host terms, so the rest never sees which version a plugin was built for.
//! - `convert`: what plugins answer (keep flags, topics, edits), applied to the host batch.
//! - [`Chain`]: filter → transforms → topic namer over a batch, with the `on_error` policy.
//! - [`reload`]: hot reload of changed plugin files at batch boundaries.
//! - [`processor`]: the chain as the core pipeline's `Processor`.
//! - [`run_command`]: `walflow plugin run`, the plugin author's inner loop.

pub mod abi;
pub mod bindings;
mod chain;
mod convert;
pub mod engine;
mod error;
mod instance;
pub mod outbound_http;
pub mod processor;
pub mod reload;
pub mod run_command;
mod sandbox;

pub use abi::AbiVersion;
pub use chain::{Chain, ChainError, ChainOutput, DeadLetter, PluginSlot};
pub use engine::PluginEngine;
pub use error::{LoadError, PluginError};
pub use instance::{ABI_VERSION, Limits, LoadedPlugin, PluginInstance, PluginSpec, Role};
pub use outbound_http::HttpGrant;
