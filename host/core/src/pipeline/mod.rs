//! The pipeline: source → table selection → plugin chain → encoder → sinks, and the
//! acknowledgements that flow back to the checkpoint and to PostgreSQL.
//!
//! ```text
//!  producer ──Unit──► bounded channel ──► delivery loop ──► sinks
//!          ▲                                              │ ack (flushed by every sink)
//!          └──────────── confirmed LSN ◄── checkpoint ◄───┘
//! ```
//!
//! The reader and the delivery loop are separate tasks joined by a bounded channel, so a slow
//! sink slows reading (backpressure) and memory stays bounded. Nothing is confirmed before every
//! sink has flushed it: delivery is at-least-once.

mod components;
mod delivery;
pub mod drain;
pub mod heartbeat;
mod payloads;
mod retry;
mod run;
pub mod slot_watch;
pub mod source;
mod startup;
mod upgrade;
mod weight;

use std::sync::Arc;

use async_trait::async_trait;

pub use components::Components;
pub use delivery::{Delivery, DeliveryError, DeliveryOptions};
pub use run::{RunOptions, RunSummary, run, wait_for_stop_signal};
pub use weight::{Weight, of_events as weigh};

use crate::encode::Encoder;
use crate::error::Error;
use crate::event::Event;
use crate::metrics::Metrics;
use crate::sink::Sink;

pub use crate::producer::{Position, Producer, SnapshotRows, Unit};

/// Bounds the events waiting between the reader and the delivery loop, in number and in bytes.
///
/// The channel between them counts transactions, and one transaction may hold thousands of
/// rows, each of any size; this counts events and their weight in bytes ([`weigh`]), so memory
/// stays bounded whatever the transaction and row sizes (and few rows wait to be read again
/// after a crash). A unit larger than the whole budget still passes once the queue is empty,
/// so nothing deadlocks.
#[derive(Debug)]
pub struct QueueBudget {
    events: std::sync::atomic::AtomicUsize,
    bytes: std::sync::atomic::AtomicUsize,
    limit: Weight,
    freed: tokio::sync::Notify,
    closed: std::sync::atomic::AtomicBool,
}

impl QueueBudget {
    /// A budget of at most `limit` queued (each bound on its own).
    pub fn new(limit: Weight) -> QueueBudget {
        QueueBudget {
            events: std::sync::atomic::AtomicUsize::new(0),
            bytes: std::sync::atomic::AtomicUsize::new(0),
            limit,
            freed: tokio::sync::Notify::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Waits until the queue is under both limits, then counts `weight` more as queued.
    pub async fn acquire(&self, weight: Weight) {
        use std::sync::atomic::Ordering;
        loop {
            let freed = self.freed.notified();
            let room = self.events.load(Ordering::Acquire) < self.limit.events
                && self.bytes.load(Ordering::Acquire) < self.limit.bytes;
            if room || self.closed.load(Ordering::Acquire) {
                break;
            }
            freed.await;
        }
        self.events.fetch_add(weight.events, Ordering::AcqRel);
        self.bytes.fetch_add(weight.bytes, Ordering::AcqRel);
    }

    /// The delivery loop has ended: nobody waits for room any more.
    pub fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        self.freed.notify_waiters();
    }

    /// `weight` left the queue (delivered, or dropped by the plugins).
    pub fn release(&self, weight: Weight) {
        use std::sync::atomic::Ordering;
        self.events.fetch_sub(weight.events, Ordering::AcqRel);
        self.bytes.fetch_sub(weight.bytes, Ordering::AcqRel);
        self.freed.notify_waiters();
    }
}

/// What the plugin chain returned for a batch.
#[derive(Debug, Default)]
pub struct Processed {
    /// Events that go on to the sinks, in order.
    pub events: Vec<Event>,
    /// Events a plugin failed on under `on_error = "dead-letter"`, with the error.
    pub dead_letters: Vec<(Event, String)>,
    /// `events` encoded by the [`FollowUp`], when the processor ran it (index for index).
    pub records: Option<Result<Vec<crate::sink::EncodedRecord>, String>>,
    /// CPU time the processor's thread spent in the plugins on the batch, when it measured
    /// it: what a tenant's plugin CPU budget is charged (waiting on I/O is not CPU).
    pub cpu: Option<std::time::Duration>,
}

/// Work on a batch's output that a processor may run on the thread that ran the chain (the
/// delivery loop's encoder), instead of handing the batch to yet another thread for it.
pub type FollowUp = std::sync::Arc<
    dyn Fn(&[Event]) -> Result<Vec<crate::sink::EncodedRecord>, String> + Send + Sync,
>;

/// Runs a batch through the plugins. `Err` stops the pipeline without confirming the batch;
/// its class says why (a plugin failing on an event under `on_error = "stop"` is
/// [`Class::Definite`](crate::error::Class::Definite), a plugin that cannot run at all is
/// fatal).
#[async_trait]
pub trait Processor: Send {
    /// Processes one batch.
    async fn process(&mut self, events: Vec<Event>) -> Result<Processed, Error>;

    /// How many batches can be started before the oldest is answered.
    fn parallelism(&self) -> usize {
        1
    }

    /// Hands the processor work to run on each batch's output where the batch ran, filling
    /// [`Processed::records`]. The default ignores it (the caller then does the work itself).
    fn follow_with(&mut self, _follow_up: FollowUp) {}

    /// Starts a batch. A processor that works on several batches at once (see
    /// [`parallelism`](Self::parallelism)) returns with the batch still running, so the caller
    /// can start the next one; callers start batches in order, take their answers in the same
    /// order, and keep at most `parallelism` unanswered. The default runs the batch here.
    async fn start(&mut self, events: Vec<Event>) -> Started {
        Started::Done(self.process(events).await)
    }
}

/// A batch handed to a [`Processor`]: answered already, or running on a thread of its own.
#[derive(Debug)]
pub enum Started {
    /// The answer, ready.
    Done(Result<Processed, Error>),
    /// The batch runs on a task of its own (the plugin chain's: on tokio's blocking pool).
    Running(tokio::task::JoinHandle<Result<Processed, Error>>),
}

impl Started {
    /// Waits for the batch's answer.
    pub async fn answer(self) -> Result<Processed, Error> {
        match self {
            Started::Done(answer) => answer,
            Started::Running(task) => task
                .await
                .unwrap_or_else(|e| Err(Error::fatal(format!("the plugin chain panicked: {e}")))),
        }
    }
}

/// The processor of a pipeline without plugins.
pub struct Passthrough;

#[async_trait]
impl Processor for Passthrough {
    async fn process(&mut self, events: Vec<Event>) -> Result<Processed, Error> {
        Ok(Processed {
            events,
            ..Processed::default()
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
            budget: None,
            dead_letter_rejected: Vec::new(),
        }
    }

    /// Per sink, index for index: whether a batch it rejects goes to the dead-letter sink
    /// (instead of stopping the pipeline).
    pub fn with_rejections_dead_lettered(mut self, per_sink: Vec<bool>) -> Delivery {
        self.dead_letter_rejected = per_sink;
        self
    }

    /// Releases delivered events from `budget` (the reader acquires them).
    pub fn with_budget(mut self, budget: Arc<QueueBudget>) -> Delivery {
        self.budget = Some(budget);
        self
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{QueueBudget, Weight};

    fn events(events: usize) -> Weight {
        Weight { events, bytes: 0 }
    }

    fn bytes(bytes: usize) -> Weight {
        Weight { events: 0, bytes }
    }

    #[tokio::test]
    async fn the_budget_holds_the_reader_until_events_are_delivered() {
        let budget = std::sync::Arc::new(QueueBudget::new(Weight {
            events: 10,
            bytes: 1000,
        }));
        budget.acquire(events(25)).await; // a unit larger than the budget passes an empty queue
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.acquire(events(1)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "acquired while the queue was over its limit"
        );
        budget.release(events(20));
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("released room wakes the reader")
            .unwrap();
    }

    #[tokio::test]
    async fn a_few_large_events_fill_the_budget_by_their_bytes() {
        let budget = std::sync::Arc::new(QueueBudget::new(Weight {
            events: 1000,
            bytes: 1 << 20,
        }));
        budget
            .acquire(Weight {
                events: 4,
                bytes: 1 << 20,
            })
            .await;
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.acquire(events(1)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "acquired past the byte limit");
        budget.release(bytes(1 << 19));
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("released bytes wake the reader")
            .unwrap();
    }

    #[tokio::test]
    async fn closing_the_budget_frees_a_waiting_reader() {
        let budget = std::sync::Arc::new(QueueBudget::new(Weight {
            events: 1,
            bytes: usize::MAX,
        }));
        budget.acquire(events(1)).await;
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.acquire(events(1)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        budget.close();
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("close wakes the reader")
            .unwrap();
    }
}
