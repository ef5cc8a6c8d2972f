//! A tenant's plugin CPU budget: a rate (milliseconds of plugin time per second), refilled
//! continuously, with a burst of one second's worth.
//!
//! Every batch a tenant's pipelines run through their plugins is charged to the tenant's
//! bucket; while the bucket is empty, the tenant's pipelines wait before their next batch. The
//! delivery loop waiting is backpressure all the way up — the reader stops pulling from the
//! slot — so a tenant over its budget is slowed, never failed, and catches up as the budget
//! refills. A batch is charged the CPU time the plugin chain's thread used on it (measured
//! by the thread's own CPU clock), so a plugin waiting on I/O or a machine
//! oversubscribed by others is not charged for time it did not run; a processor that does
//! not measure is charged the batch's wall time.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::path::Path;

use async_trait::async_trait;
use walflow_config::{Config, SinkConfig};
use walflow_core::error::Error;
use walflow_core::event::Event;
use walflow_core::metrics::Metrics;
use walflow_core::pipeline::{Components, FollowUp, Processed, Processor, Started};
use walflow_core::sink::{Sink, SinkError};

use crate::cores::{Seat, Slot};

/// One tenant's plugin CPU budget.
#[derive(Debug)]
pub struct CpuBudget {
    /// Milliseconds of plugin time per second.
    rate_ms: f64,
    state: Mutex<Bucket>,
}

#[derive(Debug)]
struct Bucket {
    /// Milliseconds that may still be spent (negative: owed).
    balance_ms: f64,
    refilled: Instant,
    /// Time pipelines spent waiting for the budget.
    throttled: Duration,
    /// Plugin time charged so far.
    spent: Duration,
}

impl CpuBudget {
    /// A budget of `rate_ms` milliseconds of plugin time per second, starting full.
    pub fn new(rate_ms: u64) -> CpuBudget {
        let rate_ms = rate_ms as f64;
        CpuBudget {
            rate_ms,
            state: Mutex::new(Bucket {
                balance_ms: rate_ms,
                refilled: Instant::now(),
                throttled: Duration::ZERO,
                spent: Duration::ZERO,
            }),
        }
    }

    fn bucket(&self) -> std::sync::MutexGuard<'_, Bucket> {
        let mut b = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let refill = now.duration_since(b.refilled).as_secs_f64() * self.rate_ms;
        b.balance_ms = (b.balance_ms + refill).min(self.rate_ms);
        b.refilled = now;
        b
    }

    /// Waits until the budget has something left.
    pub async fn wait(&self) {
        loop {
            let owed = {
                let b = self.bucket();
                if b.balance_ms > 0.0 {
                    return;
                }
                -b.balance_ms
            };
            let pause = Duration::from_secs_f64((owed / self.rate_ms).max(0.001));
            tokio::time::sleep(pause).await;
            self.state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .throttled += pause;
        }
    }

    /// Charges `spent` of plugin time.
    pub fn charge(&self, spent: Duration) {
        let mut b = self.bucket();
        b.balance_ms -= spent.as_secs_f64() * 1000.0;
        b.spent += spent;
    }

    /// Whether the tenant is out of budget right now.
    pub fn exhausted(&self) -> bool {
        self.bucket().balance_ms <= 0.0
    }

    /// How long its pipelines have waited for the budget so far.
    pub fn throttled(&self) -> Duration {
        self.bucket().throttled
    }

    /// How much plugin time its pipelines have been charged so far.
    pub fn spent(&self) -> Duration {
        self.bucket().spent
    }
}

/// A pipeline's processor, held to its tenant's share of the cores and [`CpuBudget`].
pub struct Budgeted {
    inner: Box<dyn Processor>,
    budget: Option<std::sync::Arc<CpuBudget>>,
    seat: Seat,
}

impl Budgeted {
    /// `inner`, running a batch only while it holds a core of the tenant's `seat`, charging
    /// every batch to `budget` and waiting for it before each.
    pub fn new(
        inner: Box<dyn Processor>,
        budget: Option<std::sync::Arc<CpuBudget>>,
        seat: Seat,
    ) -> Budgeted {
        Budgeted {
            inner,
            budget,
            seat,
        }
    }
}

impl Budgeted {
    /// A core to run the next batch on, once the budget has something left. The budget is
    /// checked holding the core: batches queued for a core were all started before the
    /// running ones were charged, so only then does the balance account for every batch
    /// before this one. A tenant out of budget gives the core back while it waits.
    async fn core(seat: &Seat, budget: Option<&CpuBudget>) -> Slot {
        loop {
            let core = seat.acquire().await;
            match budget {
                Some(budget) if budget.exhausted() => {
                    drop(core);
                    seat.step_away();
                    budget.wait().await;
                }
                _ => return core,
            }
        }
    }
}

#[async_trait]
impl Processor for Budgeted {
    async fn process(&mut self, events: Vec<Event>) -> Result<Processed, Error> {
        self.start(events).await.answer().await
    }

    fn parallelism(&self) -> usize {
        self.inner.parallelism()
    }

    fn follow_with(&mut self, follow_up: FollowUp) {
        self.inner.follow_with(follow_up);
    }

    async fn start(&mut self, events: Vec<Event>) -> Started {
        let permit = Budgeted::core(&self.seat, self.budget.as_deref()).await;
        let at = Instant::now();
        let budget = self.budget.clone();
        // The CPU the plugins' thread used, when the processor measured it; else wall time.
        let charge = move |answer: &Result<Processed, Error>| {
            if let Some(budget) = &budget {
                let cpu = answer.as_ref().ok().and_then(|p| p.cpu);
                budget.charge(cpu.unwrap_or_else(|| at.elapsed()));
            }
        };
        match self.inner.start(events).await {
            Started::Done(answer) => {
                charge(&answer);
                drop(permit);
                Started::Done(answer)
            }
            Started::Running(task) => Started::Running(tokio::spawn(async move {
                let answer = Started::Running(task).answer().await;
                charge(&answer);
                drop(permit);
                answer
            })),
        }
    }
}

/// A tenant's view of the service's sinks and plugin host: its processors are held to its
/// share of the cores and to its [`CpuBudget`], when it has one.
pub struct TenantParts {
    inner: std::sync::Arc<dyn Components>,
    budget: Option<std::sync::Arc<CpuBudget>>,
    seat: Seat,
}

impl TenantParts {
    /// `inner`, with processors held to `budget` and to the tenant's `seat` at the cores.
    pub fn new(
        inner: std::sync::Arc<dyn Components>,
        budget: Option<std::sync::Arc<CpuBudget>>,
        seat: Seat,
    ) -> TenantParts {
        TenantParts {
            inner,
            budget,
            seat,
        }
    }
}

#[async_trait]
impl Components for TenantParts {
    async fn sink(&self, config: &SinkConfig, base: &Path) -> Result<Box<dyn Sink>, SinkError> {
        self.inner.sink(config, base).await
    }

    async fn processor(
        &self,
        config: &Config,
        metrics: std::sync::Arc<Metrics>,
    ) -> anyhow::Result<Box<dyn Processor>> {
        let inner = self.inner.processor(config, metrics).await?;
        Ok(Box::new(Budgeted::new(
            inner,
            self.budget.clone(),
            self.seat.clone(),
        )))
    }

    fn plugin_memory_ceiling_mb(&self, config: &Config) -> u64 {
        self.inner.plugin_memory_ceiling_mb(config)
    }

    fn check_plugin(&self, path: &Path) -> Result<(), String> {
        self.inner.check_plugin(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_exhausted_budget_holds_the_next_batch_until_it_refills() {
        let budget = CpuBudget::new(100);
        budget.wait().await; // full: no wait
        budget.charge(Duration::from_millis(150)); // 50 ms owed: half a second to refill
        assert!(budget.exhausted());
        let at = Instant::now();
        budget.wait().await;
        let waited = at.elapsed();
        assert!(waited >= Duration::from_millis(400), "{waited:?}");
        assert!(waited < Duration::from_secs(3), "{waited:?}");
        assert!(budget.throttled() >= Duration::from_millis(400));
        assert!(!budget.exhausted());
    }
}
