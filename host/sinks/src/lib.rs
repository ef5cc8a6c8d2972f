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
#[cfg(any(feature = "kafka", feature = "redis"))]
mod key;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "plugin")]
mod plugin;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "redis")]
mod redis;
#[cfg(any(
    feature = "http",
    feature = "kafka",
    feature = "nats",
    feature = "plugin",
    feature = "redis"
))]
mod settings;
#[cfg(feature = "stdout")]
mod stdout;

use walflow_config::{SinkConfig, SinkKind};
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

/// Builds the sink a `[[sinks]]` entry describes; `base` is the directory relative paths
/// are read against.
pub async fn build(
    config: &SinkConfig,
    base: &std::path::Path,
) -> Result<Box<dyn Sink>, SinkError> {
    let _ = base;
    match &config.kind {
        #[cfg(feature = "stdout")]
        SinkKind::Stdout(_) => Ok(Box::new(StdoutSink::new())),
        #[cfg(feature = "file")]
        SinkKind::File(c) => Ok(Box::new(FileSink::from_config(c, base)?)),
        #[cfg(feature = "kafka")]
        SinkKind::Kafka(c) => Ok(Box::new(KafkaSink::from_config(c).await?)),
        #[cfg(feature = "nats")]
        SinkKind::Nats(c) => Ok(Box::new(NatsSink::from_config(c).await?)),
        #[cfg(feature = "redis")]
        SinkKind::Redis(c) => Ok(Box::new(RedisSink::from_config(c).await?)),
        #[cfg(feature = "http")]
        SinkKind::Http(c) => Ok(Box::new(HttpSink::from_config(c)?)),
        #[cfg(feature = "postgres")]
        SinkKind::Postgres(c) => Ok(Box::new(PostgresSink::from_config(c).await?)),
        #[cfg(feature = "plugin")]
        SinkKind::Plugin(c) => Ok(Box::new(PluginSink::from_config(c, base).await?)),
        #[allow(unreachable_patterns)]
        other => {
            let kind = other.name();
            Err(SinkError::Fatal(format!(
                "sink type `{kind}` is not compiled into this walflow; rebuild walflow-sinks with cargo feature `{kind}`"
            )))
        }
    }
}
