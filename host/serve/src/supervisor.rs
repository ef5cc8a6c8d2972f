//! One pipeline's supervisor: runs it, restarts it with backoff when it fails, and keeps what a
//! status page shows.
//!
//! The run is a task of its own, so a panic in it ends that task only: the supervisor sees a
//! failed run, records why, and restarts it like any other failure. Other pipelines never
//! notice. Stopping sets the run's stop signal, so it ends the way `walflow run` ends on
//! SIGTERM: it flushes, writes a final checkpoint and confirms it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use walflow_config::Config;
use walflow_core::error::{Class, class_of};
use walflow_core::metrics::Metrics;
use walflow_core::pipeline::{Components, RunOptions};
use walflow_pg::backoff::Backoff;

/// How restarts after failures are spaced.
const RESTART: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));

/// A run that lasted this long counts as healthy: the next failure starts the backoff afresh.
const STEADY: Duration = Duration::from_secs(60);

/// What a pipeline is doing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Its run is starting or streaming.
    #[default]
    Running,
    /// Its last run failed; it restarts after a pause.
    Failed,
    /// Paused through the API: not running, slot kept.
    Paused,
    /// Stopped for good (removed, or the service is stopping).
    Stopped,
}

/// A pipeline's state and history, shared between its supervisor and the API.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(into = "StatusView")]
pub struct Status {
    /// What it is doing.
    pub state: State,
    /// Runs started after a failure.
    pub restarts: u64,
    /// The last failures, oldest first (at most [`ERRORS_KEPT`]).
    pub errors: std::collections::VecDeque<Failure>,
}

/// [`Status`] as the API shows it: the last failure's message and class on their own too.
#[derive(Serialize)]
struct StatusView {
    state: State,
    /// Why the last run ended, when it failed (one sentence, secrets redacted by the source).
    last_error: Option<String>,
    /// The class of that failure (`transient`, `definite`, `rejected`, `fatal`).
    last_error_class: Option<&'static str>,
    restarts: u64,
    errors: std::collections::VecDeque<Failure>,
}

impl From<Status> for StatusView {
    fn from(s: Status) -> StatusView {
        let last = s.errors.back();
        StatusView {
            state: s.state,
            last_error: last.map(|f| f.error.clone()),
            last_error_class: last.map(|f| f.class),
            restarts: s.restarts,
            errors: s.errors,
        }
    }
}

/// How many failures a pipeline's status keeps.
pub const ERRORS_KEPT: usize = 5;

/// One failed run.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    /// When it ended, in milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Its class (`transient`, `definite`, `rejected`, `fatal`).
    pub class: &'static str,
    /// Why (one sentence, secrets redacted by the source).
    pub error: String,
}

/// A supervised pipeline: stop it to end its run with a final checkpoint.
pub struct Supervisor {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Supervisor {
    /// Starts running `config`, restarting it on failure, until stopped.
    pub fn start(
        name: String,
        config: Config,
        parts: Arc<dyn Components>,
        metrics: Arc<Metrics>,
        status: Arc<Mutex<Status>>,
    ) -> Supervisor {
        let (stop, stop_rx) = watch::channel(false);
        set(&status, |s| s.state = State::Running);
        let task = tokio::spawn(supervise(Supervised {
            name,
            config,
            parts,
            metrics,
            status,
            stop: stop_rx,
        }));
        Supervisor { stop, task }
    }

    /// Stops the run (it flushes and checkpoints) and waits for it to end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

struct Supervised {
    name: String,
    config: Config,
    parts: Arc<dyn Components>,
    metrics: Arc<Metrics>,
    status: Arc<Mutex<Status>>,
    stop: watch::Receiver<bool>,
}

async fn supervise(mut s: Supervised) {
    let mut failures = 0u32;
    loop {
        let started = Instant::now();
        let run = tokio::spawn(walflow_core::pipeline::run(
            s.config.clone(),
            s.parts.clone(),
            RunOptions {
                stop: Some(s.stop.clone()),
                metrics: Some(s.metrics.clone()),
                embedded: true,
                ..RunOptions::default()
            },
        ));
        let ended = run.await;
        if *s.stop.borrow() {
            break;
        }
        let (why, class) = match ended {
            Ok(Ok(_)) => (
                "the server ended the replication stream".to_string(),
                Class::Transient,
            ),
            Ok(Err(e)) => (format!("{e:#}"), class_of(&e).unwrap_or(Class::Fatal)),
            Err(e) => (format!("the pipeline panicked: {e}"), Class::Fatal),
        };
        if started.elapsed() >= STEADY {
            failures = 0;
        }
        failures = failures.saturating_add(1);
        let delay = RESTART.delay(failures);
        tracing::warn!(pipeline = %s.name, class = class.name(), error = %why, retry_in_ms = delay.as_millis() as u64, "pipeline failed; restarting");
        set(&s.status, |st| {
            st.state = State::Failed;
            if st.errors.len() == ERRORS_KEPT {
                st.errors.pop_front();
            }
            st.errors.push_back(Failure {
                at_ms: now_ms(),
                class: class.name(),
                error: why,
            });
        });
        if !pause(&mut s.stop, delay).await {
            break;
        }
        set(&s.status, |st| {
            st.state = State::Running;
            st.restarts += 1;
        });
    }
    set(&s.status, |st| st.state = State::Stopped);
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Sleeps `delay` unless stopped first; `false` when stopped.
async fn pause(stop: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    let deadline = tokio::time::sleep(delay);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = &mut deadline => return true,
            changed = stop.changed() => {
                if changed.is_err() || *stop.borrow() {
                    return false;
                }
            }
        }
    }
}

/// Updates a shared status.
pub fn set(status: &Mutex<Status>, change: impl FnOnce(&mut Status)) {
    change(&mut status.lock().unwrap_or_else(|p| p.into_inner()));
}
