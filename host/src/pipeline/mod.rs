//! The pipeline: source → table selection → plugin chain → encoder → sinks, and the
//! acknowledgements that flow back to the checkpoint and to PostgreSQL.
//!
//! ```text
//!  replication reader ──Unit──► bounded channel ──► delivery loop ──► sinks
//!          ▲                                              │ ack (flushed by every sink)
//!          └──────────── confirmed LSN ◄── checkpoint ◄───┘
//! ```
//!
//! The reader and the delivery loop are separate tasks joined by a bounded channel, so a slow
//! sink slows reading (backpressure) and memory stays bounded. Nothing is confirmed before every
//! sink has flushed it: delivery is at-least-once.

mod delivery;
mod plugins;
mod run;
pub mod source;

use std::sync::Arc;

use async_trait::async_trait;

pub use delivery::{Delivery, DeliveryError, DeliveryOptions};
pub use run::{RunOptions, RunSummary, run};

use crate::encode::Encoder;
use crate::event::Event;
use crate::metrics::Metrics;
use crate::sink::Sink;

/// A unit of delivery: a committed transaction (or a non-transactional message, or a run of
/// snapshot rows) and the LSN that may be confirmed once all its events are delivered.
pub type Unit = crate::pgoutput::Transaction;

/// What the plugin chain returned for a batch.
#[derive(Debug, Default)]
pub struct Processed {
    /// Events that go on to the sinks, in order.
    pub events: Vec<Event>,
    /// Events a plugin failed on under `on_error = "dead-letter"`, with the error.
    pub dead_letters: Vec<(Event, String)>,
}

/// Runs a batch through the plugins. `Err` stops the pipeline without confirming the batch.
#[async_trait]
pub trait Processor: Send {
    /// Processes one batch.
    async fn process(&mut self, events: Vec<Event>) -> Result<Processed, String>;
}

/// The processor of a pipeline without plugins.
pub struct Passthrough;

#[async_trait]
impl Processor for Passthrough {
    async fn process(&mut self, events: Vec<Event>) -> Result<Processed, String> {
        Ok(Processed {
            events,
            dead_letters: Vec::new(),
        })
    }
}

impl Delivery {
    /// A delivery loop writing through `processor` and `encoder` to `sinks`.
    pub fn new(
        processor: Box<dyn Processor>,
        encoder: Encoder,
        sinks: Vec<Box<dyn Sink>>,
        dead_letter: Option<Box<dyn Sink>>,
        options: DeliveryOptions,
        metrics: Arc<Metrics>,
    ) -> Delivery {
        Delivery {
            processor,
            encoder,
            sinks,
            dead_letter,
            options,
            metrics,
        }
    }
}
