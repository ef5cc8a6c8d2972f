//! Delivery: committed transactions in, through the plugin chain and the encoder, out to every
//! sink, and acknowledgements back.
//!
//! Order is part of the contract: batches are answered, encoded and written in source order,
//! though with several cores a few of them run through the plugin chain at once. Backpressure
//! is the bounded channel in front of it: while a sink is down, the loop retries and reads
//! nothing new, the channel fills, and the replication reader stops reading from PostgreSQL.
//!
//! An LSN is acknowledged only after every sink has flushed every event of every transaction up
//! to it (group commit: flush when the input is momentarily empty or `flush_interval` passed).
//!
//! Nothing waits for a batch to fill: a batch is whatever is queued when the previous one has
//! moved on, so a lone change goes straight through, and under load batches grow by
//! themselves — the same group commit, one stage earlier. How long each transaction took from
//! its commit on the source to the flush that made it durable is observed into the metrics.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use super::payloads::PayloadPool;
use super::retry::Retry;
use super::{Processor, Started, Unit};
use crate::encode::Encoder;
use crate::error::{Class, Classify};
use crate::event::Event;
use crate::metrics::Metrics;
use crate::producer::Position;
use crate::sink::{EncodedRecord, Sink, SinkBatch, SinkError};

/// Tuning of the delivery loop.
#[derive(Debug, Clone)]
pub struct DeliveryOptions {
    /// Most events handed to the chain at once.
    pub max_events: usize,
    /// Longest written data stays unflushed while more input keeps arriving.
    pub flush_interval: Duration,
    /// Cap of the retry backoff for retryable sink errors.
    pub max_backoff: Duration,
    /// Most bytes of events (as [`weigh`](super::weigh) counts them) in one batch, so that
    /// large rows make small batches.
    pub max_bytes: usize,
    /// Most bytes of records written to the sinks but not flushed: past it a flush is due, and
    /// while one runs no more is written. Sinks that hold records until their flush (redis,
    /// kafka, http) would otherwise gather a whole `flush_interval` of a catch-up in memory.
    pub max_unflushed_bytes: usize,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        DeliveryOptions {
            max_events: 1024,
            flush_interval: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            max_bytes: 8 << 20,
            max_unflushed_bytes: 32 << 20,
        }
    }
}

/// Why delivery stopped early.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// A sink failed in a way retrying cannot fix (or refused data under `on_error = "stop"`).
    #[error("sink {sink} failed: {error}")]
    Sink {
        /// The sink's name.
        sink: String,
        /// Its error, with its class.
        error: SinkError,
    },
    /// The plugin chain stopped the pipeline (`on_error = "stop"`).
    #[error("{0}")]
    Plugin(crate::error::Error),
    /// Encoding failed (a bug or invalid data).
    #[error("{0}")]
    Encode(String),
}

impl crate::error::Classify for DeliveryError {
    fn class(&self) -> Class {
        match self {
            DeliveryError::Sink { error, .. } => error.class(),
            DeliveryError::Plugin(e) => e.class(),
            DeliveryError::Encode(_) => Class::Definite,
        }
    }
}

impl From<DeliveryError> for crate::error::Error {
    fn from(e: DeliveryError) -> crate::error::Error {
        crate::error::Error::new(e.class(), e.to_string())
    }
}

/// The delivery loop's state.
pub struct Delivery {
    pub(super) processor: Box<dyn Processor>,
    pub(super) encoder: Encoder,
    pub(super) sinks: Vec<Box<dyn Sink>>,
    pub(super) dead_letter: Option<Box<dyn Sink>>,
    pub(super) options: DeliveryOptions,
    pub(super) metrics: Arc<Metrics>,
    pub(super) budget: Option<Arc<super::QueueBudget>>,
    /// Per sink (index for index): whether rejected batches are dead-lettered.
    pub(super) dead_letter_rejected: Vec<bool>,
}

/// A batch on its way: events of whole transactions (and the tail of a large one).
struct Pending {
    events: Vec<Event>,
    /// Bytes of `events` as [`weigh`](super::weigh) counts them (computed while collecting).
    bytes: usize,
    /// The end LSN of the last transaction whose events are all in this or earlier batches.
    complete: Option<Position>,
}

impl Delivery {
    /// Runs until the input ends or `stop` is set; every acknowledged LSN is sent on `acks`.
    /// Returns the last acknowledged LSN. Closes the sinks at the end.
    pub async fn run(
        mut self,
        input: mpsc::Receiver<Unit>,
        acks: watch::Sender<Position>,
        stop: watch::Receiver<bool>,
    ) -> Result<Option<Position>, DeliveryError> {
        let result = self.drive(input, acks, stop).await;
        self.close().await;
        result
    }

    /// Like [`run`](Self::run), but leaves the sinks open for another input (a snapshot's rows,
    /// then the stream). Acknowledgements are each unit's [`Position`], in its producer's terms.
    ///
    /// Two stages run at once: one collects batches and runs the plugin chain and the encoder,
    /// the other writes to the sinks, flushes and acknowledges — so the chain of one batch
    /// overlaps the sink writes of the one before, in order, a batch or two apart.
    pub async fn drive(
        &mut self,
        input: mpsc::Receiver<Unit>,
        acks: watch::Sender<Position>,
        stop: watch::Receiver<bool>,
    ) -> Result<Option<Position>, DeliveryError> {
        let (tx, rx) = mpsc::channel::<Prepared>(PIPELINE_DEPTH);
        let payloads = Arc::new(PayloadPool::default());
        let Delivery {
            processor,
            encoder,
            sinks,
            dead_letter,
            options,
            metrics,
            budget,
            dead_letter_rejected,
        } = self;
        // The writer runs as a task of its own (it owns the sinks meanwhile), so sink I/O
        // never waits behind collecting and chaining, and both get a core.
        let mut writer = Writer {
            sinks: std::mem::take(sinks),
            dead_letter: dead_letter.take(),
            encoder: encoder.clone(),
            options: options.clone(),
            metrics: metrics.clone(),
            budget: budget.clone(),
            dead_letter_rejected: dead_letter_rejected.clone(),
            payloads: payloads.clone(),
            retry: Retry::new(options.max_backoff, metrics.clone(), stop.clone()),
        };
        let writing = tokio::spawn(async move {
            let result = writer.write_all(rx, acks).await;
            (writer, result)
        });
        let encoding = Encoding {
            encoder: encoder.clone(),
            payloads,
        };
        // A processor that runs batches on threads of its own encodes each there too.
        processor.follow_with(encoding.follow_up());
        let prepare = prepare(
            processor.as_mut(),
            &encoding,
            options,
            metrics,
            input,
            stop,
            tx,
        );
        let prepared = prepare.await;
        let (writer, written) = writing
            .await
            .map_err(|e| DeliveryError::Encode(format!("the sink writer panicked: {e}")))?;
        *sinks = writer.sinks;
        *dead_letter = writer.dead_letter;
        let acked = written?;
        prepared?;
        Ok(acked)
    }

    /// Closes every sink (after the last [`drive`](Self::drive)). A sink that is down does
    /// not hold the exit: each close gets [`CLOSE_TIMEOUT`], and nothing it might still have
    /// taken was acknowledged anyway.
    pub async fn close(&mut self) {
        for sink in self.sinks.iter_mut().chain(self.dead_letter.iter_mut()) {
            match tokio::time::timeout(CLOSE_TIMEOUT, sink.close()).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(sink = sink.name(), error = %e, "closing sink failed"),
                Err(_) => tracing::warn!(sink = sink.name(), "sink did not close in time; left it"),
            }
        }
    }
}

/// Longest a sink may take to close at the end of a run.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Batches between the two stages of [`Delivery::drive`].
const PIPELINE_DEPTH: usize = 2;

/// A batch through the chain and the encoder, on its way to the sinks.
struct Prepared {
    /// Events for the sinks and their records, once encoded; `None` exactly when the batch
    /// took nothing from the input.
    encoded: Option<Encoded>,
    /// Events a plugin failed on under `on_error = "dead-letter"`.
    dead_letters: Vec<(Event, String)>,
    /// The weight of the events taken from the input (for the queue budget).
    weight: super::Weight,
    /// The last position all of whose events are in this or earlier batches.
    complete: Option<Position>,
    /// Nothing more was waiting in the input when this batch was cut: a good moment to flush.
    input_idle: bool,
}

/// The first stage: collect, chain, encode. While the input holds more, up to the
/// processor's parallelism batches run through the chain at once; each next batch starts as
/// soon as the oldest is answered, and answers go on in batch order.
async fn prepare(
    processor: &mut dyn Processor,
    encoding: &Encoding,
    options: &DeliveryOptions,
    metrics: &Metrics,
    mut input: mpsc::Receiver<Unit>,
    mut stop: watch::Receiver<bool>,
    out: mpsc::Sender<Prepared>,
) -> Result<(), DeliveryError> {
    let mut carry: Option<Unit> = None;
    let parallel = processor.parallelism().max(1);
    let mut chaining: VecDeque<Chaining> = VecDeque::with_capacity(parallel);
    loop {
        if chaining.is_empty() {
            // A writer that failed ends this stage at once (what was collected is not confirmed).
            let first = tokio::select! {
                b = collect(options, &mut input, &mut carry, &mut stop) => b,
                _ = out.closed() => None,
            };
            let Some(first) = first else { break };
            chaining.push_back(Chaining::start(processor, first).await);
        }
        while chaining.len() < parallel && (carry.is_some() || !input.is_empty()) {
            match collect(options, &mut input, &mut carry, &mut stop).await {
                Some(batch) => chaining.push_back(Chaining::start(processor, batch).await),
                None => break,
            }
        }
        let Some(oldest) = chaining.pop_front() else {
            break;
        };
        let input_idle = chaining.is_empty() && carry.is_none() && input.is_empty();
        let prepared = oldest.finish(encoding, metrics, input_idle).await?;
        if out.send(prepared).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// A batch in the plugin chain.
struct Chaining {
    /// `None` when the batch took no events (it only moves the position on).
    started: Option<Started>,
    taken: usize,
    /// The weight of the events taken, as the queue budget counted them.
    weight: super::Weight,
    complete: Option<Position>,
    at: Instant,
}

impl Chaining {
    /// Hands a collected batch to the processor.
    async fn start(processor: &mut dyn Processor, batch: Pending) -> Chaining {
        let taken = batch.events.len();
        let weight = super::Weight {
            events: taken,
            bytes: batch.bytes,
        };
        let at = Instant::now();
        let started = if taken == 0 {
            None
        } else {
            Some(processor.start(batch.events).await)
        };
        Chaining {
            started,
            taken,
            weight,
            complete: batch.complete,
            at,
        }
    }

    /// Waits for the chain's answer and starts encoding it.
    async fn finish(
        self,
        encoding: &Encoding,
        metrics: &Metrics,
        input_idle: bool,
    ) -> Result<Prepared, DeliveryError> {
        let (encoded, dead_letters) = match self.started {
            None => (None, Vec::new()),
            Some(started) => {
                let output = started.answer().await.map_err(DeliveryError::Plugin)?;
                metrics.record_chain(self.taken, output.events.len(), self.at.elapsed());
                let encoded = match output.records {
                    Some(records) => Encoded::Ready(
                        records
                            .map(|records| (output.events, records))
                            .map_err(DeliveryError::Encode),
                    ),
                    None => Encoded::Running(encoding.spawn(output.events)),
                };
                (Some(encoded), output.dead_letters)
            }
        };
        Ok(Prepared {
            encoded,
            dead_letters,
            weight: self.weight,
            complete: self.complete,
            input_idle,
        })
    }
}

/// The encoder, and the record buffers the writer hands back for it to fill again.
struct Encoding {
    encoder: Encoder,
    payloads: Arc<PayloadPool>,
}

impl Encoding {
    /// The encoder as a [`FollowUp`](super::FollowUp), for a processor to run where its
    /// batches ran.
    fn follow_up(&self) -> super::FollowUp {
        let encoder = self.encoder.clone();
        let payloads = self.payloads.clone();
        Arc::new(move |events: &[Event]| {
            let buffers = payloads.take(events.len());
            encode(&encoder, events, buffers).map_err(|e| e.to_string())
        })
    }

    /// Encodes a batch on the blocking pool. The writer awaits the handle, so the chain of the
    /// next batch runs while this one is encoded, and batches still reach the sinks in order.
    fn spawn(&self, events: Vec<Event>) -> EncodeTask {
        let encoder = self.encoder.clone();
        let payloads = self.payloads.clone();
        tokio::task::spawn_blocking(move || {
            let buffers = payloads.take(events.len());
            let records = encode(&encoder, &events, buffers)?;
            Ok((events, records))
        })
    }
}

/// A batch's events and their records, index for index.
type Records = Result<(Vec<Event>, Vec<EncodedRecord>), DeliveryError>;

/// A batch being encoded on the blocking pool.
type EncodeTask = tokio::task::JoinHandle<Records>;

/// A batch's encoding: done where the chain ran, or still running.
enum Encoded {
    Ready(Records),
    Running(EncodeTask),
}

/// Waits for a batch's encoding.
async fn encoded(encoded: Encoded) -> Records {
    match encoded {
        Encoded::Ready(records) => records,
        Encoded::Running(task) => task
            .await
            .map_err(|e| DeliveryError::Encode(format!("encoding panicked: {e}")))?,
    }
}

/// Encodes a batch: one clock reading for all of it, and each record written into one of
/// `buffers` (emptied buffers of earlier records) or, when they run out, a new buffer sized
/// after the largest record so far (up to [`RECORD_CAPACITY_CAP`], so one huge row does not
/// make every later buffer huge), so a typical record is never regrown.
fn encode(
    encoder: &Encoder,
    events: &[Event],
    mut buffers: Vec<Vec<u8>>,
) -> Result<Vec<EncodedRecord>, DeliveryError> {
    let ts_ms = crate::encode::now_ms();
    if let Some(debezium) = encoder.debezium_envelope() {
        // Debezium's records: zero to three per event (tombstones, primary-key changes,
        // skipped operations), each with its key and where its value is.
        let mut records = Vec::with_capacity(events.len() + events.len() / 4);
        for e in events {
            for r in debezium.records(e, ts_ms) {
                records.push(EncodedRecord {
                    topic: r.topic,
                    key: r.key,
                    payload: r.line,
                    lsn: e.source.lsn,
                    value: Some(r.value),
                });
            }
        }
        drop(buffers);
        return Ok(records);
    }
    let mut capacity = 256;
    crate::collect::try_collect_exact(events.iter().map(|e| {
        let mut payload = buffers
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(capacity));
        encoder
            .encode_at(e, ts_ms, &mut payload)
            .map_err(|err| DeliveryError::Encode(err.to_string()))?;
        capacity = capacity.max((payload.len() + 16).min(RECORD_CAPACITY_CAP));
        Ok(EncodedRecord {
            topic: encoder.topic(e),
            key: None,
            payload,
            lsn: e.source.lsn,
            value: None,
        })
    }))
}

/// The largest buffer a record starts with (bigger records grow theirs).
const RECORD_CAPACITY_CAP: usize = 8 * 1024;

/// The second stage: sinks, flushes and acknowledgements.
struct Writer {
    sinks: Vec<Box<dyn Sink>>,
    dead_letter: Option<Box<dyn Sink>>,
    encoder: Encoder,
    options: DeliveryOptions,
    metrics: Arc<Metrics>,
    budget: Option<Arc<super::QueueBudget>>,
    dead_letter_rejected: Vec<bool>,
    /// Where written records' buffers go back to the encoder.
    payloads: Arc<PayloadPool>,
    /// How failing sinks are retried, and whether a stop cut a retry short.
    retry: Retry,
}

impl Writer {
    /// Writes every prepared batch; flushes (group commit) when the input is momentarily
    /// empty or `flush_interval` passed, and acknowledges once the flush is done. Sinks that
    /// flush in the background keep taking batches meanwhile; one flush runs at a time, and a
    /// flush that comes due while another runs starts when that one is done.
    /// Returns the last acknowledged LSN.
    async fn write_all(
        &mut self,
        batches: mpsc::Receiver<Prepared>,
        acks: watch::Sender<Position>,
    ) -> Result<Option<Position>, DeliveryError> {
        let mut flush = FlushState::new();
        match self.write_each(batches, &acks, &mut flush).await {
            // A stop during a sink outage: what was acknowledged stands, the rest is retried
            // by the next run.
            Err(_) if self.retry.abandoned() => Ok(flush.acked),
            Err(e) => Err(e),
            Ok(()) => Ok(flush.acked),
        }
    }

    async fn write_each(
        &mut self,
        mut batches: mpsc::Receiver<Prepared>,
        acks: &watch::Sender<Position>,
        flush: &mut FlushState,
    ) -> Result<(), DeliveryError> {
        loop {
            let full = flush.dirty_bytes >= self.options.max_unflushed_bytes;
            let batch = tokio::select! {
                biased;
                results = in_flight(&mut flush.running), if flush.running.is_some() => {
                    let done = flush.running.take();
                    self.settle(results).await?;
                    self.flushed(done.map(|f| (f.position, f.commits)), flush, acks);
                    self.flush_if_due(flush, acks).await?;
                    continue;
                }
                batch = batches.recv(), if !(full && flush.running.is_some()) => batch,
            };
            let Some(batch) = batch else { break };
            // A batch that took input has an encoding (see `prepare`).
            if let Some(encoding) = batch.encoded {
                let (events, records) = encoded(encoding).await?;
                flush.dirty_bytes += records.iter().map(|r| r.payload.len()).sum::<usize>();
                flush.note_commits(&events);
                self.deliver(events, records, batch.dead_letters).await?;
                if let Some(budget) = &self.budget {
                    budget.release(batch.weight);
                }
                flush.dirty = true;
            }
            if let Some(position) = batch.complete {
                flush.unflushed = Some(position);
            }
            flush.idle = batch.input_idle && batches.is_empty();
            self.flush_if_due(flush, acks).await?;
        }
        if let Some(running) = flush.running.take() {
            self.settle(running.done.await).await?;
            self.flushed(Some((running.position, running.commits)), flush, acks);
        }
        if flush.dirty {
            self.flush_all().await?;
        }
        let commits = std::mem::take(&mut flush.commits);
        let last = flush.unflushed.take().map(|position| (position, commits));
        self.flushed(last, flush, acks);
        Ok(())
    }

    /// Flushes when the input is idle or `flush_interval` passed: starts a flush, or, when
    /// nothing was written since the last one, acknowledges right away (or with the flush
    /// still running, which covers it). New writes with a flush still running wait for its end
    /// (the select arm in `write_all` comes back here).
    async fn flush_if_due(
        &mut self,
        flush: &mut FlushState,
        acks: &watch::Sender<Position>,
    ) -> Result<(), DeliveryError> {
        let due = flush.idle
            || flush.last_flush.elapsed() >= self.options.flush_interval
            || flush.dirty_bytes >= self.options.max_unflushed_bytes;
        let Some(position) = flush.unflushed.filter(|_| due) else {
            return Ok(());
        };
        match (flush.running.as_mut(), flush.dirty) {
            (Some(_), true) => return Ok(()),
            (Some(running), false) => running.position = position,
            (None, true) => {
                if let Some(done) = self.begin_flush_all().await? {
                    let commits = std::mem::take(&mut flush.commits);
                    flush.running = Some(InFlight {
                        position,
                        done,
                        commits,
                    });
                }
            }
            (None, false) => {}
        }
        flush.unflushed = None;
        flush.dirty = false;
        flush.dirty_bytes = 0;
        flush.last_flush = Instant::now();
        if flush.running.is_none() {
            let commits = std::mem::take(&mut flush.commits);
            self.flushed(Some((position, commits)), flush, acks);
        }
        Ok(())
    }

    /// A flush covering `position` and the transactions committed at `commits` is done: observes
    /// their commit-to-acknowledgement latency and acknowledges.
    fn flushed(
        &self,
        done: Option<(Position, Vec<i64>)>,
        flush: &mut FlushState,
        acks: &watch::Sender<Position>,
    ) {
        let Some((position, commits)) = done else {
            return;
        };
        self.metrics.record_acked_commits(&commits);
        flush.acked = Some(position);
        if let Some(lsn) = position.lsn() {
            self.metrics.set_acked_lsn(lsn);
        }
        let _ = acks.send(position);
    }

    /// Starts a flush of every sink: in the background where the sink can, in place (and
    /// waited for) where not. `None` when every sink is already flushed.
    async fn begin_flush_all(&mut self) -> Result<Option<Flushing>, DeliveryError> {
        let mut running = Vec::new();
        for (i, sink) in self.sinks.iter_mut().enumerate() {
            match sink.begin_flush() {
                Some(flush) => running.push(async move { (i, flush.await) }),
                None => self
                    .retry
                    .flush(sink.as_mut())
                    .await
                    .map_err(|e| sink_failed(sink.as_ref(), e))?,
            }
        }
        if running.is_empty() {
            self.metrics.record_flush();
            return Ok(None);
        }
        Ok(Some(Box::pin(futures::future::join_all(running))))
    }

    /// A background flush's outcome: a sink that failed retryably is flushed again in place
    /// (with backoff) before anything is acknowledged; a fatal failure stops delivery.
    async fn settle(&mut self, results: FlushResults) -> Result<(), DeliveryError> {
        for (i, result) in results {
            let sink = self.sinks[i].as_mut();
            match result {
                Ok(()) => {}
                Err(e) if e.is_retryable() => {
                    tracing::warn!(sink = sink.name(), error = %e, "flush failed; retrying");
                    self.retry
                        .flush(sink)
                        .await
                        .map_err(|e| sink_failed(sink, e))?;
                }
                Err(e) => return Err(sink_failed(sink, e)),
            }
        }
        self.metrics.record_flush();
        Ok(())
    }

    /// Writes one batch to every sink (retrying retryable failures), and its dead letters.
    async fn deliver(
        &mut self,
        events: Vec<Event>,
        records: Vec<EncodedRecord>,
        dead_letters: Vec<(Event, String)>,
    ) -> Result<(), DeliveryError> {
        if !dead_letters.is_empty() {
            self.dead_letter(dead_letters).await?;
        }
        if events.is_empty() {
            return Ok(());
        }
        let batch = SinkBatch {
            records: &records,
            events: &events,
        };
        for i in 0..self.sinks.len() {
            match self.write_to(i, batch).await {
                Err(SinkError::Rejected(why)) if self.dead_letters_rejected(i) => {
                    tracing::warn!(sink = self.sinks[i].name(), error = %why, events = events.len(), "sink rejected a batch; dead-lettering it");
                    let failed = events.iter().map(|e| (e.clone(), why.clone()));
                    self.dead_letter(failed.collect()).await?;
                }
                Err(e) => return Err(sink_failed(self.sinks[i].as_ref(), e)),
                Ok(()) => {}
            }
        }
        self.metrics.record_out(&events, &records);
        self.payloads.give(records);
        Ok(())
    }

    fn dead_letters_rejected(&self, sink: usize) -> bool {
        self.dead_letter_rejected
            .get(sink)
            .copied()
            .unwrap_or(false)
    }

    /// Writes to sink `i`, retrying transient failures. A sink that dead-letters rejected data
    /// is flushed right away, so that a rejection names exactly this batch.
    async fn write_to(&mut self, i: usize, batch: SinkBatch<'_>) -> Result<(), SinkError> {
        let flush = self.dead_letters_rejected(i);
        let sink = self.sinks[i].as_mut();
        self.retry.write(sink, batch).await?;
        if flush {
            self.retry.flush(sink).await?;
        }
        Ok(())
    }

    /// Writes `failed` events, each with why it failed, to the dead-letter sink and flushes it
    /// (or, without one, logs and drops them).
    async fn dead_letter(&mut self, failed: Vec<(Event, String)>) -> Result<(), DeliveryError> {
        self.metrics.record_dead_letters(failed.len());
        let encoder = &self.encoder;
        let Some(sink) = self.dead_letter.as_mut() else {
            for (e, why) in &failed {
                tracing::warn!(table = %e.relation.qualified_name(), lsn = %e.source.lsn, error = %why, "event dead-lettered with no dead-letter sink; dropped");
            }
            return Ok(());
        };
        let records = dead_letter_records(
            &failed,
            |event, why, out| encoder.encode_dead_letter(event, why, out),
            |event| encoder.topic(event),
        )?;
        let events: Vec<Event> = failed.into_iter().map(|(e, _)| e).collect();
        let batch = SinkBatch {
            records: &records,
            events: &events,
        };
        self.retry
            .write(sink.as_mut(), batch)
            .await
            .map_err(|e| sink_failed(sink.as_ref(), e))?;
        self.retry
            .flush(sink.as_mut())
            .await
            .map_err(|e| sink_failed(sink.as_ref(), e))
    }

    /// Flushes every sink and waits for all of them.
    async fn flush_all(&mut self) -> Result<(), DeliveryError> {
        match self.begin_flush_all().await? {
            Some(done) => self.settle(done.await).await,
            None => Ok(()),
        }
    }
}

/// The dead-letter records of `failed` events: each `encode`d ([`Encoder::encode_dead_letter`]:
/// the configured encoding, with an `error` field).
///
/// A dead letter that cannot be encoded is an error that stops delivery, as an event that
/// cannot be encoded does: nothing goes to the dead-letter sink, nothing of the batch is
/// confirmed, and the next run reads it again. Writing it anyway — empty, or without its
/// row — would confirm a position past an event that reached no sink.
fn dead_letter_records(
    failed: &[(Event, String)],
    encode: impl Fn(&Event, &str, &mut Vec<u8>) -> Result<(), crate::encode::EncodeError>,
    topic: impl Fn(&Event) -> Arc<str>,
) -> Result<Vec<EncodedRecord>, DeliveryError> {
    failed
        .iter()
        .map(|(event, why)| {
            let mut payload = Vec::new();
            encode(event, why, &mut payload).map_err(|err| {
                DeliveryError::Encode(format!(
                    "cannot write the dead letter of a {} event at {} (dead-lettered because: \
                     {why}): {err}",
                    event.relation.qualified_name(),
                    walflow_pg::lsn::format_lsn(event.source.lsn),
                ))
            })?;
            Ok(EncodedRecord {
                topic: topic(event),
                key: None,
                payload,
                lsn: event.source.lsn,
                value: None,
            })
        })
        .collect()
}

/// Where the writer is with flushing.
struct FlushState {
    /// The last position written but not yet flushed.
    unflushed: Option<Position>,
    /// Whether anything was written since the last flush began.
    dirty: bool,
    /// Bytes of records written since the last flush began.
    dirty_bytes: usize,
    /// When the last flush began.
    last_flush: Instant,
    /// Whether the input was empty after the last batch.
    idle: bool,
    /// The flush running in the background, if any.
    running: Option<InFlight>,
    /// The last acknowledged position.
    acked: Option<Position>,
    /// Commit times (µs) of the transactions written since the last flush began.
    commits: Vec<i64>,
    /// The last transaction noted in `commits` (xid, commit time), so that one split over
    /// batches counts once.
    last_commit: Option<(Option<u32>, i64)>,
}

impl FlushState {
    fn new() -> Self {
        FlushState {
            unflushed: None,
            dirty: false,
            dirty_bytes: 0,
            last_flush: Instant::now(),
            idle: false,
            running: None,
            acked: None,
            commits: Vec::new(),
            last_commit: None,
        }
    }

    /// Notes the commit time of each transaction among `events` (written to the sinks), for
    /// the latency observed when the flush covering them is done. Snapshot rows carry no
    /// commit time and are left out.
    fn note_commits(&mut self, events: &[Event]) {
        for event in events {
            let commit = (event.source.xid, event.source.commit_time_us);
            if commit.1 != 0 && self.last_commit != Some(commit) {
                self.commits.push(commit.1);
                self.last_commit = Some(commit);
            }
        }
    }
}

/// A flush of the sinks running in the background, and the position it acknowledges.
struct InFlight {
    /// Acknowledged once every sink's flush is done.
    position: Position,
    /// Each sink's flush, by sink index.
    done: Flushing,
    /// Commit times (µs) of the transactions it makes durable.
    commits: Vec<i64>,
}

/// The background flushes of the sinks, resolving to each one's outcome.
type Flushing = Pin<Box<dyn Future<Output = FlushResults> + Send>>;

/// Each sink's flush outcome, by sink index.
type FlushResults = Vec<(usize, Result<(), SinkError>)>;

/// Waits for the running flush (the select arm is guarded by `is_some`). Cancel-safe: the
/// flush stays in `flushing` until it resolves.
async fn in_flight(flushing: &mut Option<InFlight>) -> FlushResults {
    match flushing {
        Some(running) => running.done.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Gathers whole units (transactions, runs of snapshot rows) up to `max_events` events: it
/// waits for the first, then takes only what is already queued behind it, so a lone change
/// leaves at once. Batches grow by themselves while the stages after this one are busy,
/// because the input queues up meanwhile (natural batching, as in group commit); waiting for
/// more would only add the wait to every quiet-period change. A unit that does not fit starts
/// the next batch, and only a unit larger than a batch by itself is split. `None` when the
/// input ended (or stop was requested) with nothing left.
async fn collect(
    options: &DeliveryOptions,
    input: &mut mpsc::Receiver<Unit>,
    carry: &mut Option<Unit>,
    stop: &mut watch::Receiver<bool>,
) -> Option<Pending> {
    let max = options.max_events;
    let mut events = Vec::new();
    let mut bytes = 0;
    let mut complete = None;
    let first = match carry.take() {
        Some(u) => u,
        None => tokio::select! {
            biased;
            _ = wait_stop(stop) => return None,
            u = input.recv() => u?,
        },
    };
    let mut next = Some(first);
    while let Some(mut unit) = next.take() {
        let room = max - events.len();
        let unit_bytes = super::weight::of_events(unit.events()).bytes;
        let fits = unit.events().len() <= room && bytes + unit_bytes <= options.max_bytes;
        // A unit that does not fit starts the next batch whole; only one larger than a batch
        // by itself is split (a single event larger than `max_bytes` goes alone).
        let split_at = match (fits, events.is_empty()) {
            (true, _) => None,
            (false, false) => Some(0),
            (false, true) => Some(fitting(unit.events(), room, options.max_bytes))
                .filter(|n| *n < unit.events().len()),
        };
        if let Some(at) = split_at {
            if at > 0 {
                events = unit.split_events(at);
                bytes = super::weight::of_events(&events).bytes;
            }
            *carry = Some(unit);
            break;
        }
        add_events(&mut events, unit.take_events(), max);
        bytes += unit_bytes;
        complete = Some(unit.position());
        if events.len() >= max || bytes >= options.max_bytes || *stop.borrow() {
            break;
        }
        next = input.try_recv().ok();
    }
    Some(Pending {
        events,
        bytes,
        complete,
    })
}

/// How many of `events` (at least one) fit in a batch of `max_events` and `max_bytes`.
fn fitting(events: &[Event], max_events: usize, max_bytes: usize) -> usize {
    let mut bytes = 0;
    let fit = events
        .iter()
        .take(max_events)
        .take_while(|e| {
            bytes += super::weight::of_events(std::slice::from_ref(e)).bytes;
            bytes <= max_bytes
        })
        .count();
    fit.max(1)
}

fn add_events(batch: &mut Vec<Event>, mut unit: Vec<Event>, max: usize) {
    if batch.is_empty() && unit.capacity() >= max {
        *batch = unit;
    } else {
        batch.reserve(max.saturating_sub(batch.len()));
        batch.append(&mut unit);
    }
}

async fn wait_stop(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow() {
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

fn sink_failed(sink: &dyn Sink, e: SinkError) -> DeliveryError {
    DeliveryError::Sink {
        sink: sink.name().to_owned(),
        error: e,
    }
}

#[cfg(test)]
mod tests {
    use crate::event::Lsn;
    use std::sync::Arc;

    use super::*;
    use crate::event::{Op, Relation, Source};

    /// Batches here hold at most this many events.
    const MAX: usize = 4;

    /// A unit's buffer with room for a whole batch and one more, to tell it apart from a
    /// buffer the batch allocated for itself (room for exactly a batch).
    const WHOLE: usize = MAX + 1;

    fn unit(end_lsn: u64, events: usize, capacity: usize) -> Unit {
        let relation = Arc::new(Relation {
            oid: 1,
            schema: "public".into(),
            table: "t".into(),
            columns: Vec::new(),
        });
        let mut list = Vec::with_capacity(capacity.max(events));
        list.extend((0..events).map(|i| Event {
            op: Op::Read,
            relation: relation.clone(),
            source: Source {
                lsn: Lsn(end_lsn * 10_000 + i as u64),
                ..Source::default()
            },
            before: None,
            after: None,
            topic: None,
            message: None,
        }));
        Unit::Transaction(crate::assemble::Transaction {
            xid: None,
            commit_lsn: Lsn(end_lsn),
            end_lsn: Lsn(end_lsn),
            commit_time_us: 0,
            gid: None,
            events: list,
        })
    }

    /// Feeds `units` and gathers batches until the input is used up; each batch as (its
    /// events' LSNs, its complete LSN, its buffer's capacity).
    async fn batches(units: Vec<Unit>) -> Vec<(Vec<u64>, Option<u64>, usize)> {
        let options = DeliveryOptions {
            max_events: MAX,
            ..DeliveryOptions::default()
        };
        let (tx, mut rx) = mpsc::channel(units.len().max(1));
        for u in units {
            tx.send(u).await.unwrap();
        }
        drop(tx);
        let (_stop_tx, mut stop) = watch::channel(false);
        let mut carry = None;
        let mut out = Vec::new();
        while let Some(batch) = collect(&options, &mut rx, &mut carry, &mut stop).await {
            let lsns = batch.events.iter().map(|e| e.source.lsn.0).collect();
            out.push((
                lsns,
                batch.complete.and_then(Position::lsn).map(|l| l.0),
                batch.events.capacity(),
            ));
        }
        out
    }

    fn lsns(unit: u64, range: std::ops::Range<u64>) -> Vec<u64> {
        range.map(|i| unit * 10_000 + i).collect()
    }

    #[tokio::test]
    async fn full_units_become_batches_without_copying_their_events() {
        let got = batches(vec![unit(1, MAX, WHOLE), unit(2, MAX, WHOLE)]).await;
        assert_eq!(
            got,
            vec![
                (lsns(1, 0..4), Some(1), WHOLE),
                (lsns(2, 0..4), Some(2), WHOLE)
            ]
        );
    }

    #[tokio::test]
    async fn a_unit_that_does_not_fit_starts_the_next_batch_whole() {
        let got = batches(vec![unit(1, 3, WHOLE), unit(2, 4, WHOLE), unit(3, 1, 1)]).await;
        assert_eq!(
            got,
            vec![
                (lsns(1, 0..3), Some(1), WHOLE),
                (lsns(2, 0..4), Some(2), WHOLE),
                (lsns(3, 0..1), Some(3), MAX),
            ]
        );
    }

    #[tokio::test]
    async fn large_rows_make_small_batches() {
        let big = |end_lsn: u64, events: usize| {
            let mut u = unit(end_lsn, events, events);
            let Unit::Transaction(t) = &mut u else {
                unreachable!()
            };
            for e in &mut t.events {
                e.after = Some(vec![crate::event::Value::Bytes(vec![0; 100_000])]);
            }
            u
        };
        let options = DeliveryOptions {
            max_events: 1000,
            max_bytes: 250_000,
            ..DeliveryOptions::default()
        };
        let (tx, mut rx) = mpsc::channel(4);
        for u in [big(1, 1), big(2, 1), big(3, 1), big(4, 5)] {
            tx.send(u).await.unwrap();
        }
        drop(tx);
        let (_stop_tx, mut stop) = watch::channel(false);
        let mut carry = None;
        let mut sizes = Vec::new();
        while let Some(batch) = collect(&options, &mut rx, &mut carry, &mut stop).await {
            sizes.push(batch.events.len());
        }
        // Two rows of 100 kB fit under 250 kB, three do not; a unit of five is split.
        assert_eq!(sizes, vec![2, 1, 2, 2, 1]);
    }

    #[tokio::test]
    async fn small_units_share_a_batch_and_a_unit_larger_than_a_batch_is_split() {
        let got = batches(vec![unit(1, 1, 1), unit(2, 2, 2), unit(3, 6, 6)]).await;
        assert_eq!(
            got,
            vec![
                ([lsns(1, 0..1), lsns(2, 0..2)].concat(), Some(2), MAX),
                (lsns(3, 0..4), None, 6),
                (lsns(3, 4..6), Some(3), MAX),
            ]
        );
    }

    /// A lone unit leaves at once, with the input still open: the batch does not wait for a
    /// unit that arrives after it (that one starts the next batch).
    #[tokio::test]
    async fn a_lone_unit_leaves_without_waiting_for_more() {
        let options = DeliveryOptions {
            max_events: MAX,
            ..DeliveryOptions::default()
        };
        let (tx, mut rx) = mpsc::channel(4);
        tx.send(unit(1, 1, 1)).await.unwrap();
        let (_stop_tx, mut stop) = watch::channel(false);
        let mut carry = None;
        // `join!` polls the collection first: a collection that waited for more input would
        // still be pending when the second unit is sent, and would take it too.
        let (first, sent) = tokio::join!(
            collect(&options, &mut rx, &mut carry, &mut stop),
            tx.send(unit(2, 1, 1))
        );
        sent.unwrap();
        let lsns = |batch: Option<Pending>| {
            batch.map(|b| {
                (
                    b.events.len(),
                    b.complete.and_then(Position::lsn).map(|l| l.0),
                )
            })
        };
        assert_eq!(lsns(first), Some((1, Some(1))), "the batch waited to fill");
        let second = collect(&options, &mut rx, &mut carry, &mut stop).await;
        assert_eq!(lsns(second), Some((1, Some(2))));
    }

    /// Batches of at most [`MAX`] events, and an input holding `n` whole units (LSNs 1 to `n`)
    /// and then closed.
    async fn whole_units(n: u64) -> (DeliveryOptions, mpsc::Receiver<Unit>) {
        let options = DeliveryOptions {
            max_events: MAX,
            ..DeliveryOptions::default()
        };
        let (input_tx, input) = mpsc::channel(n as usize);
        for lsn in 1..=n {
            input_tx.send(unit(lsn, MAX, WHOLE)).await.unwrap();
        }
        (options, input)
    }

    /// The JSON encoder with a pool of its own.
    fn json_encoding() -> Encoding {
        Encoding {
            encoder: Encoder::new(walflow_config::Encoding::Json, Default::default()),
            payloads: Arc::new(PayloadPool::default()),
        }
    }

    /// Two workers; the batch numbered `slow` takes long, the others a moment. Records when
    /// each batch started and finished.
    struct OneSlowBatch {
        slow: usize,
        started: usize,
        times: Timeline,
    }

    /// When each batch (by number) started and ended.
    type Timeline = Arc<std::sync::Mutex<Vec<(usize, &'static str, Instant)>>>;

    #[async_trait::async_trait]
    impl Processor for OneSlowBatch {
        async fn process(
            &mut self,
            events: Vec<Event>,
        ) -> Result<super::super::Processed, crate::error::Error> {
            self.start(events).await.answer().await
        }

        fn parallelism(&self) -> usize {
            2
        }

        async fn start(&mut self, events: Vec<Event>) -> Started {
            let n = self.started;
            self.started += 1;
            let took = Duration::from_millis(if n == self.slow { 400 } else { 5 });
            let times = self.times.clone();
            times.lock().unwrap().push((n, "start", Instant::now()));
            Started::Running(tokio::spawn(async move {
                tokio::time::sleep(took).await;
                times.lock().unwrap().push((n, "end", Instant::now()));
                Ok(super::super::Processed {
                    events,
                    ..Default::default()
                })
            }))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_slow_batch_holds_back_only_the_answers_after_it_not_the_next_start() {
        let times: Timeline = Arc::default();
        let mut processor = OneSlowBatch {
            slow: 1,
            started: 0,
            times: times.clone(),
        };
        let (options, input) = whole_units(5).await;
        let (_stop_tx, stop) = watch::channel(false);
        let (out_tx, mut out) = mpsc::channel(8);
        let encoding = json_encoding();
        let metrics = Metrics::default();
        let preparing = prepare(
            &mut processor,
            &encoding,
            &options,
            &metrics,
            input,
            stop,
            out_tx,
        );
        let reading = async {
            let mut got = Vec::new();
            while let Some(prepared) = out.recv().await {
                let (events, _) = encoded(prepared.encoded.unwrap()).await.unwrap();
                got.push((
                    prepared.complete.and_then(Position::lsn).map(|l| l.0),
                    events.len(),
                ));
            }
            got
        };
        let (prepared, got) = tokio::join!(preparing, reading);
        prepared.unwrap();
        assert_eq!(
            got,
            (1..=5).map(|lsn| (Some(lsn), MAX)).collect::<Vec<_>>(),
            "answers in batch order, whatever order the batches finished in"
        );
        let times = times.lock().unwrap();
        let at = |n: usize, what: &str| {
            times
                .iter()
                .find(|(m, w, _)| *m == n && *w == what)
                .map(|(_, _, t)| *t)
                .unwrap()
        };
        assert!(
            at(2, "start") < at(1, "end"),
            "the third batch waited for the slow second one instead of starting on the worker \
             the first freed: {times:?}"
        );
    }

    /// Runs the follow-up where it runs the batch, the way the plugin chain does; batches
    /// numbered `fails` come back with an encoding error instead.
    struct EncodesWhereItRuns {
        follow_up: Option<super::super::FollowUp>,
        fails: usize,
        started: usize,
    }

    #[async_trait::async_trait]
    impl Processor for EncodesWhereItRuns {
        async fn process(
            &mut self,
            events: Vec<Event>,
        ) -> Result<super::super::Processed, crate::error::Error> {
            let n = self.started;
            self.started += 1;
            let follow_up = self.follow_up.clone().expect("handed a follow-up");
            let records = if n == self.fails {
                Err("the encoder broke".to_string())
            } else {
                follow_up(&events)
            };
            Ok(super::super::Processed {
                events,
                records: Some(records),
                ..Default::default()
            })
        }

        fn follow_with(&mut self, follow_up: super::super::FollowUp) {
            self.follow_up = Some(follow_up);
        }
    }

    /// A processor that encodes its batches itself gets the delivery loop's encoder, and its
    /// records (or its encoding error) are what goes on to the writer: nothing is encoded
    /// twice, and a failure is not lost.
    #[tokio::test]
    async fn records_encoded_where_the_chain_ran_go_on_as_they_are() {
        let mut processor = EncodesWhereItRuns {
            follow_up: None,
            fails: 2,
            started: 0,
        };
        let encoding = json_encoding();
        processor.follow_with(encoding.follow_up());
        let (options, input) = whole_units(3).await;
        let (_stop_tx, stop) = watch::channel(false);
        let (out_tx, mut out) = mpsc::channel(8);
        let metrics = Metrics::default();
        prepare(
            &mut processor,
            &encoding,
            &options,
            &metrics,
            input,
            stop,
            out_tx,
        )
        .await
        .unwrap();
        let mut results = Vec::new();
        while let Some(prepared) = out.recv().await {
            let encoded = prepared.encoded.expect("each batch took input");
            assert!(matches!(encoded, Encoded::Ready(_)), "not encoded again");
            results.push(encoded);
        }
        assert_eq!(results.len(), 3);
        for (n, result) in results.into_iter().enumerate() {
            match (n, encoded(result).await) {
                (2, Err(DeliveryError::Encode(e))) => assert_eq!(e, "the encoder broke"),
                (2, other) => panic!("the third batch's error was lost: {other:?}"),
                (_, Ok((events, records))) => {
                    assert_eq!(records.len(), events.len());
                    assert!(records.iter().all(|r| r.payload.starts_with(b"{")));
                }
                (_, Err(e)) => panic!("batch {n}: {e}"),
            }
        }
    }

    /// Records what is written to it; every write and flush succeeds.
    struct Captures(Arc<std::sync::Mutex<Vec<EncodedRecord>>>);

    #[async_trait::async_trait]
    impl Sink for Captures {
        fn name(&self) -> &str {
            "captures"
        }

        async fn write(&mut self, batch: SinkBatch<'_>) -> Result<(), SinkError> {
            self.0.lock().unwrap().extend_from_slice(batch.records);
            Ok(())
        }

        async fn flush(&mut self) -> Result<(), SinkError> {
            Ok(())
        }
    }

    /// A writer whose dead-letter sink keeps what it is given, encoding as `encoding`.
    fn writer_with_dead_letters(
        encoding: walflow_config::Encoding,
    ) -> (Writer, Arc<std::sync::Mutex<Vec<EncodedRecord>>>) {
        let captured = Arc::default();
        let metrics = Arc::new(Metrics::default());
        let (_, stop) = watch::channel(false);
        let writer = Writer {
            sinks: Vec::new(),
            dead_letter: Some(Box::new(Captures(Arc::clone(&captured)))),
            encoder: Encoder::new(
                encoding,
                crate::encode::EncodeOptions {
                    name: Some("app".into()),
                    include_types: false,
                },
            ),
            options: DeliveryOptions::default(),
            metrics: metrics.clone(),
            budget: None,
            dead_letter_rejected: Vec::new(),
            payloads: Arc::new(PayloadPool::default()),
            retry: Retry::new(Duration::from_millis(10), metrics, stop),
        };
        (writer, captured)
    }

    /// Dead letters take the configured encoding (they were JSON whatever it was) and the
    /// configured topic prefix, and carry why they failed.
    #[tokio::test]
    async fn dead_letters_are_written_in_the_configured_encoding() {
        let event = unit(1, 1, 1).take_events().remove(0);
        for (encoding, is_json) in [
            (walflow_config::Encoding::Msgpack, false),
            (walflow_config::Encoding::Json, true),
        ] {
            let (mut writer, captured) = writer_with_dead_letters(encoding);
            writer
                .dead_letter(vec![(event.clone(), "plugin trapped".into())])
                .await
                .unwrap();
            let records = captured.lock().unwrap().clone();
            assert_eq!(records.len(), 1);
            let record = &records[0];
            assert_eq!(&*record.topic, "app.public.t");
            assert_eq!(record.lsn, event.source.lsn);
            let letter: serde_json::Value = if is_json {
                serde_json::from_slice(&record.payload).unwrap()
            } else {
                assert!(serde_json::from_slice::<serde_json::Value>(&record.payload).is_err());
                rmp_serde::from_slice(&record.payload).unwrap()
            };
            assert_eq!(letter["error"], "plugin trapped", "{encoding:?}");
            assert_eq!(letter["topic"], "app.public.t", "{encoding:?}");
            assert_eq!(letter["value"]["source"]["lsn"], event.source.lsn.0);
        }
    }

    /// A dead letter that cannot be encoded stops delivery with an error naming the event and
    /// both failures; no record (an empty one, say) goes to the dead-letter sink.
    #[test]
    fn a_dead_letter_that_cannot_be_encoded_is_an_error_not_an_empty_record() {
        use serde::ser::Error as _;
        let events = unit(0x16, 2, 2).take_events();
        let failed: Vec<(Event, String)> = events
            .into_iter()
            .map(|e| (e, "rejected: 400".to_string()))
            .collect();
        let encoder = Encoder::new(walflow_config::Encoding::Json, Default::default());
        let result = dead_letter_records(
            &failed,
            |event, why, out| {
                if event.source.lsn == failed[1].0.source.lsn {
                    Err(serde_json::Error::custom("unencodable value").into())
                } else {
                    encoder.encode_dead_letter(event, why, out)
                }
            },
            |event| encoder.topic(event),
        );
        match result {
            Err(DeliveryError::Encode(message)) => {
                for part in ["public.t", "rejected: 400", "unencodable value", "0/35B61"] {
                    assert!(message.contains(part), "no `{part}` in: {message}");
                }
            }
            other => panic!("expected an encoding error, got {other:?}"),
        }
        let fine = dead_letter_records(
            &failed[..1],
            |event, why, out| encoder.encode_dead_letter(event, why, out),
            |event| encoder.topic(event),
        )
        .unwrap();
        assert!(!fine[0].payload.is_empty());
    }
}
