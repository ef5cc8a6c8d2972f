//! Waiting on conditions with a deadline, never on bare sleeps.
//!
//! A test that sleeps "long enough" is slow when the machine is idle and flaky when it is busy.
//! These helpers poll a condition at a short interval and fail with a message naming what was
//! awaited when the deadline passes.

use std::future::Future;
use std::time::{Duration, Instant};

const POLL: Duration = Duration::from_millis(25);

/// Polls `condition` until it returns `Some`, or fails after `timeout` saying what was awaited.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(POLL);
    }
}

/// Async [`wait_for`]: polls `condition` (without blocking the runtime) until it returns `Some`.
pub async fn wait_for_async<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut condition: F,
) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = condition().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            anyhow::bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Boolean convenience over [`wait_for`].
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut condition: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    wait_for(what, timeout, || condition().then_some(()))
}
