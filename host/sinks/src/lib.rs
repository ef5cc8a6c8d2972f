//! Sinks: where encoded events go, one module and one cargo feature per destination.
//!
//! Each sink implements [`walflow_core::sink::Sink`], whose documentation states the
//! acknowledgement contract every sink keeps (a flush's `Ok` means durably accepted). [`build`]
//! turns a `[[sinks]]` entry into a sink; a type whose feature is not compiled in is refused
//! with the feature to enable. Adding a sink: a module here, a feature in `Cargo.toml`, an arm
//! in [`build`] (see `docs/architecture.md`).

#[cfg(feature = "file")]
mod file;
#[cfg(feature = "http")]
mod http;
#[cfg(feature = "kafka")]
mod kafka;
mod key;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "plugin")]
mod plugin;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
mod settings;
#[cfg(feature = "stdout")]
mod stdout;

use walflow_config::SinkConfig;
pub use walflow_core::sink::{EncodedRecord, PendingFlush, Sink, SinkBatch, SinkError};

#[cfg(feature = "file")]
pub use file::{FileSink, written_files};
#[cfg(feature = "http")]
pub use http::HttpSink;
#[cfg(feature = "kafka")]
pub use kafka::KafkaSink;
#[cfg(feature = "nats")]
pub use nats::NatsSink;
#[cfg(feature = "plugin")]
pub use plugin::PluginSink;
#[cfg(feature = "postgres")]
pub use postgres::PostgresSink;
#[cfg(feature = "redis")]
pub use redis::RedisSink;
#[cfg(feature = "stdout")]
pub use stdout::StdoutSink;

/// Builds the sink a `[[sinks]]` entry describes.
pub async fn build(
    config: &SinkConfig,
    base: &std::path::Path,
) -> Result<Box<dyn Sink>, SinkError> {
    let _ = base;
    match config.kind.as_str() {
        #[cfg(feature = "stdout")]
        "stdout" => Ok(Box::new(StdoutSink::from_settings(&config.settings)?)),
        #[cfg(feature = "file")]
        "file" => Ok(Box::new(FileSink::from_settings(&config.settings, base)?)),
        #[cfg(feature = "kafka")]
        "kafka" => Ok(Box::new(KafkaSink::from_settings(&config.settings).await?)),
        #[cfg(feature = "nats")]
        "nats" => Ok(Box::new(NatsSink::from_settings(&config.settings).await?)),
        #[cfg(feature = "redis")]
        "redis" => Ok(Box::new(RedisSink::from_settings(&config.settings).await?)),
        #[cfg(feature = "http")]
        "http" => Ok(Box::new(HttpSink::from_settings(&config.settings)?)),
        #[cfg(feature = "postgres")]
        "postgres" => Ok(Box::new(
            PostgresSink::from_settings(&config.settings).await?,
        )),
        #[cfg(feature = "plugin")]
        "plugin" => Ok(Box::new(
            PluginSink::from_settings(&config.settings, base).await?,
        )),
        other if ALL.contains(&other) => Err(SinkError::Fatal(format!(
            "sink type `{other}` is not compiled into this walflow; rebuild walflow-sinks with cargo feature `{other}`"
        ))),
        other => Err(SinkError::Fatal(format!(
            "unknown sink type `{other}` in [[sinks]]; available: {}",
            COMPILED.join(", ")
        ))),
    }
}

/// Every sink type walflow has, compiled in or not.
const ALL: &[&str] = &[
    "file", "stdout", "kafka", "nats", "redis", "http", "postgres", "plugin",
];

/// The sink types this build can run.
pub const COMPILED: &[&str] = &[
    #[cfg(feature = "file")]
    "file",
    #[cfg(feature = "stdout")]
    "stdout",
    #[cfg(feature = "kafka")]
    "kafka",
    #[cfg(feature = "nats")]
    "nats",
    #[cfg(feature = "redis")]
    "redis",
    #[cfg(feature = "http")]
    "http",
    #[cfg(feature = "postgres")]
    "postgres",
    #[cfg(feature = "plugin")]
    "plugin",
];

/// Rejects settings a sink does not know, naming the key.
pub(crate) fn check_keys(
    kind: &str,
    settings: &toml::Table,
    known: &[&str],
) -> Result<(), SinkError> {
    for key in settings.keys() {
        if !known.contains(&key.as_str()) {
            return Err(SinkError::Fatal(format!(
                "unknown key `{key}` in a [[sinks]] entry of type `{kind}`; known keys: type, {}",
                known.join(", ")
            )));
        }
    }
    Ok(())
}
