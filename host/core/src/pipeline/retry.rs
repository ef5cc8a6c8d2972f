//! Retrying a failing sink: the one [`Backoff`] policy for as long as the sink says trying
//! again can help — but never past a stop request.
//!
//! A sink that is down (a broker restarting, a full disk) is retried forever, so nothing is
//! lost and nothing is confirmed. A SIGTERM during such an outage must still end the run
//! promptly: the wait between attempts gives way to the stop, the batch being retried is
//! abandoned unacknowledged (the next run delivers it again from the last checkpoint), and
//! [`Retry::abandoned`] tells the writer to end cleanly instead of failing. An attempt already
//! under way is never cancelled, so a sink is not cut off mid-record.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use walflow_pg::backoff::Backoff;

use crate::metrics::Metrics;
use crate::sink::{Sink, SinkBatch, SinkError};

/// First wait after a failed attempt; doubled per failure up to the cap.
const FIRST_WAIT: Duration = Duration::from_millis(100);

/// How the writer retries its sinks.
pub(super) struct Retry {
    backoff: Backoff,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
    abandoned: bool,
}

impl Retry {
    /// Retries with backoff capped at `max_backoff` until `stop` turns `true`.
    pub(super) fn new(
        max_backoff: Duration,
        metrics: Arc<Metrics>,
        stop: watch::Receiver<bool>,
    ) -> Retry {
        Retry {
            backoff: Backoff::new(FIRST_WAIT, max_backoff),
            metrics,
            stop,
            abandoned: false,
        }
    }

    /// Whether a stop request ended a retry: the error it returned means "stopped", not
    /// "failed".
    pub(super) fn abandoned(&self) -> bool {
        self.abandoned
    }

    /// Writes `batch` to `sink`, retrying retryable failures.
    pub(super) async fn write(
        &mut self,
        sink: &mut dyn Sink,
        batch: SinkBatch<'_>,
    ) -> Result<(), SinkError> {
        let mut failures = 0;
        loop {
            match sink.write(batch).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    failures += 1;
                    self.wait_or_fail(sink.name(), e, failures).await?;
                }
            }
        }
    }

    /// Flushes `sink`, retrying retryable failures.
    pub(super) async fn flush(&mut self, sink: &mut dyn Sink) -> Result<(), SinkError> {
        let mut failures = 0;
        loop {
            match sink.flush().await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    failures += 1;
                    self.wait_or_fail(sink.name(), e, failures).await?;
                }
            }
        }
    }

    /// After the `failures`th failed attempt in a row: `Ok` once the backoff has passed, or
    /// the error when it is fatal or a stop came first.
    async fn wait_or_fail(
        &mut self,
        name: &str,
        e: SinkError,
        failures: u32,
    ) -> Result<(), SinkError> {
        self.metrics.record_sink_error(name);
        if !e.is_retryable() {
            return Err(e);
        }
        if *self.stop.borrow() {
            return Err(self.abandon(name, e));
        }
        let delay = self.backoff.delay(failures);
        tracing::warn!(sink = name, error = %e, retry_in_ms = delay.as_millis() as u64, "sink failed; retrying");
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = stopped(&mut self.stop) => Err(self.abandon(name, e)),
        }
    }

    fn abandon(&mut self, name: &str, e: SinkError) -> SinkError {
        tracing::warn!(sink = name, error = %e, "stopping while the sink fails; what it has not taken stays unconfirmed");
        self.abandoned = true;
        e
    }
}

/// Resolves once `stop` is `true` (never, if its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
