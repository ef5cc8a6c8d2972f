//! The sink contract: what the pipeline hands a destination and what a flush promises.
//!
//! Implementations live in the `walflow-sinks` crate; a program embedding walflow may write its
//! own.
//!
//! # Acknowledgement contract (at-least-once)
//!
//! The pipeline hands a sink batches in source order with [`Sink::write`], then calls
//! [`Sink::flush`]. When `flush` returns `Ok`, everything written before it is durably accepted
//! by the destination (fsynced, acknowledged by the broker, committed) — only then may the
//! pipeline advance the checkpoint and confirm the LSN to PostgreSQL. A sink may make data
//! durable earlier, but must never report success for data it could still lose. After an error
//! the pipeline does not confirm anything written since the last successful flush; on restart
//! those events are delivered again, so a destination may see a bounded tail twice (every record
//! carries its LSN for de-duplication).
//!
//! Errors say whether trying again can help ([`SinkError::Retryable`]) or not
//! ([`SinkError::Fatal`]); the pipeline retries the former with capped backoff and stops on the
//! latter without confirming. A retried `write` gets the same batch again, so a sink that keeps
//! a batch (to send it at `flush`) must not fail `write` retryably after keeping it: it takes
//! the batch and leaves the sending to `flush`.
//!
//! A sink whose flush is a long wait that does not stop it taking more writes (a file's fsync)
//! offers [`Sink::begin_flush`]: the pipeline starts the flush, keeps writing later batches,
//! and confirms once the flush's future resolves — for what was written before it began.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;

use crate::event::Event;

/// One event, encoded once and shared by every sink.
#[derive(Debug, Clone)]
pub struct EncodedRecord {
    /// Destination topic (or subject, stream, table…).
    pub topic: Arc<str>,
    /// The encoded key, for sinks that partition or de-duplicate by key.
    pub key: Option<Vec<u8>>,
    /// The encoded record (the whole envelope).
    pub payload: Vec<u8>,
    /// For a record of the `debezium` envelope: where the Debezium value sits in `payload`
    /// (`null` for a tombstone). Sinks that carry key and value apart (Kafka) send that alone,
    /// with `key` as the message key (`None`: a null key). `None` for walflow's envelope,
    /// whose payload is the whole message.
    pub value: Option<std::ops::Range<usize>>,
    /// The event's LSN.
    pub lsn: crate::event::Lsn,
}

/// A batch as sinks see it: the encoded records and the events they came from, index for index
/// — except under the `debezium` envelope, where an event makes zero to three records
/// (records with [`EncodedRecord::value`] set): sinks must not pair those with `events` by
/// index.
#[derive(Debug, Clone, Copy)]
pub struct SinkBatch<'a> {
    /// Encoded records, in source order.
    pub records: &'a [EncodedRecord],
    /// The events, for sinks that apply changes themselves (e.g. into another database).
    pub events: &'a [Event],
}

/// Why a sink failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    /// A transient failure (destination down, timeout): the same batch may be written again.
    #[error("{0}")]
    Retryable(String),
    /// A failure that retrying cannot fix (bad configuration, an unusable destination).
    #[error("{0}")]
    Fatal(String),
    /// The destination refused the data written since the last flush (e.g. HTTP 400); the sink
    /// has dropped it. Depending on the sink's `on_error`, the pipeline stops or dead-letters it.
    #[error("{0}")]
    Rejected(String),
}

impl SinkError {
    /// Whether writing the same data again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SinkError::Retryable(_))
    }
}

/// A flush running in the background (see [`Sink::begin_flush`]).
pub type PendingFlush = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send>>;

/// A destination for events. See the module docs for the acknowledgement contract.
#[async_trait]
pub trait Sink: Send {
    /// A short name for logs and metrics (`file:out/events.jsonl`).
    fn name(&self) -> &str;

    /// Hands a batch to the destination. Not yet an acknowledgement: see [`Sink::flush`].
    async fn write(&mut self, batch: SinkBatch<'_>) -> Result<(), SinkError>;

    /// Makes everything written so far durable; `Ok` is the acknowledgement.
    async fn flush(&mut self) -> Result<(), SinkError>;

    /// Starts a flush that finishes in the background, so writing can go on meanwhile: the
    /// future's `Ok` acknowledges everything written before this call, exactly as `flush`'s
    /// would. `None` (the default) when the sink cannot do that; the pipeline then calls
    /// `flush` and waits.
    fn begin_flush(&mut self) -> Option<PendingFlush> {
        None
    }

    /// Flushes and releases the destination.
    async fn close(&mut self) -> Result<(), SinkError> {
        self.flush().await
    }
}
