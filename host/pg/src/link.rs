//! [`Link`]: whether walflow has a working connection to the source, and if not since when and
//! why. The replication stream and the startup wait write it; `/health` reads it, so an outage
//! shows while walflow retries instead of only in the log.
//!
//! [`wait_until_reachable`] is the startup half of one rule: a source that is down is waited
//! for, whether it went down a second before walflow started or a second after. Only errors that
//! clear up by themselves (refused or timed-out connections, a server starting up or shutting
//! down, too many clients) are waited out; a wrong password, a missing database or a missing
//! privilege fail at once, because waiting cannot fix them.

use std::fmt::Display;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::backoff::Backoff;
use super::conn::Connection;
use super::error::ConnectError;
use super::options::ConnectOptions;
use walflow_config::SourceConfig;

/// The state of the connection to the source.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum LinkState {
    /// Not connected yet.
    #[default]
    Connecting,
    /// Connected (streaming, for the replication stream).
    Up,
    /// Lost or never made; being retried.
    Down {
        /// When the outage began.
        since: Instant,
        /// The latest error.
        reason: String,
    },
}

/// A shared, cheap-to-clone view of the connection's state.
#[derive(Debug, Clone, Default)]
pub struct Link(Arc<Mutex<LinkState>>);

impl Link {
    /// The connection works.
    pub fn up(&self) {
        *self.lock() = LinkState::Up;
    }

    /// The connection failed with `reason`; an ongoing outage keeps its start.
    pub fn down(&self, reason: &dyn Display) {
        let mut state = self.lock();
        let since = match &*state {
            LinkState::Down { since, .. } => *since,
            _ => Instant::now(),
        };
        *state = LinkState::Down {
            since,
            reason: reason.to_string(),
        };
    }

    /// The current state.
    pub fn state(&self) -> LinkState {
        self.lock().clone()
    }

    /// `None` when up; otherwise what is wrong, for `/health`.
    pub fn problem(&self) -> Option<String> {
        match self.state() {
            LinkState::Up => None,
            LinkState::Connecting => Some("connecting to postgresql".into()),
            LinkState::Down { since, reason } => Some(format!(
                "connection to postgresql down for {}s, retrying: {reason}",
                since.elapsed().as_secs()
            )),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LinkState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Waits between startup attempts: from 200 ms, doubling up to 10 s, for as long as it takes.
pub const STARTUP_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(200), Duration::from_secs(10));

/// Waits until `source` accepts a replication login, retrying retryable errors with
/// [`Backoff`] and recording each in `link`. `Ok(false)` when `stop` turned true first;
/// a fatal error is returned at once.
pub async fn wait_until_reachable(
    source: &SourceConfig,
    link: &Link,
    mut stop: watch::Receiver<bool>,
) -> Result<bool, ConnectError> {
    let opts = &ConnectOptions::from_source(source)?;
    let mut failures = 0;
    loop {
        let attempt = tokio::select! {
            r = Connection::connect(opts, true) => r,
            _ = stop.wait_for(|s| *s) => return Ok(false),
        };
        match attempt {
            Ok(conn) => {
                conn.close_and_wait(Duration::from_secs(2)).await;
                if link.state() != LinkState::Connecting {
                    tracing::info!("postgresql is reachable again");
                }
                link.up();
                return Ok(true);
            }
            Err(e) if e.is_retryable() => {
                failures += 1;
                let delay = STARTUP_BACKOFF.delay(failures);
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "postgresql is not reachable; waiting for it");
                link.down(&e);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stop.wait_for(|s| *s) => return Ok(false),
                }
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_keeps_its_start_and_the_latest_reason() {
        let link = Link::default();
        assert_eq!(link.problem().as_deref(), Some("connecting to postgresql"));
        link.down(&"refused");
        let LinkState::Down { since, .. } = link.state() else {
            panic!("down")
        };
        link.down(&"timed out");
        let LinkState::Down {
            since: still,
            reason,
        } = link.state()
        else {
            panic!("down")
        };
        assert_eq!((since, reason.as_str()), (still, "timed out"));
        assert!(link.problem().unwrap().contains("timed out"));
        link.up();
        assert_eq!(link.problem(), None);
        std::thread::sleep(Duration::from_millis(2));
        link.down(&"again");
        let LinkState::Down { since: new, .. } = link.state() else {
            panic!("down")
        };
        assert!(new > since, "a new outage starts anew");
    }

    #[tokio::test]
    async fn a_refused_port_is_waited_for_until_stopped() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let source = SourceConfig {
            url: format!("postgres://u@127.0.0.1:{port}/db"),
            sslmode: walflow_config::SslMode::Disable,
            ..Default::default()
        };
        let link = Link::default();
        let (stop_tx, stop) = watch::channel(false);
        let waiting = tokio::spawn({
            let link = link.clone();
            async move { wait_until_reachable(&source, &link, stop).await }
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !matches!(link.state(), LinkState::Down { .. }) {
            assert!(Instant::now() < deadline, "the refusal was not recorded");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            !waiting.is_finished(),
            "a refused connection must be retried"
        );
        stop_tx.send(true).unwrap();
        assert!(!waiting.await.unwrap().unwrap());
    }
}
