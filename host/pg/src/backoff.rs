//! The one retry policy: exponential backoff with jitter, capped, with an optional limit.
//!
//! Every wait between attempts in walflow comes from here — reconnecting the replication
//! stream, waiting for PostgreSQL at startup, retrying a failing sink — so an outage is
//! ridden out the same way everywhere. It lives in this crate because it is the lowest one
//! that retries; the crates above use it too. The jitter ("equal jitter": half of each wait
//! fixed, half random) keeps many pipelines that lost the same server from reconnecting in
//! lockstep.

use std::time::Duration;

/// How long to wait before each new attempt, and how many attempts to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The wait after the first failure.
    pub first: Duration,
    /// The longest wait.
    pub max: Duration,
    /// Give up after this many failures in a row (`None`: never).
    pub limit: Option<u32>,
}

impl Backoff {
    /// Waits from `first`, doubling per failure up to `max`, without a limit.
    pub const fn new(first: Duration, max: Duration) -> Backoff {
        Backoff {
            first,
            max,
            limit: None,
        }
    }

    /// The same policy, giving up after `failures` failures in a row.
    pub const fn with_limit(self, failures: Option<u32>) -> Backoff {
        Backoff {
            limit: failures,
            ..self
        }
    }

    /// The wait after `failures` failures in a row (1 for the first): between half and all of
    /// `first · 2^(failures-1)`, capped at `max`.
    pub fn delay(&self, failures: u32) -> Duration {
        let ceiling = self.ceiling(failures);
        let half = ceiling / 2;
        let spread = (ceiling - half).as_nanos() as u64;
        half + Duration::from_nanos(rand::random_range(0..=spread))
    }

    /// The longest wait after `failures` failures: `first · 2^(failures-1)`, capped at `max`.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let factor = 1u32 << failures.saturating_sub(1).min(16);
        self.first.saturating_mul(factor).min(self.max)
    }

    /// Whether `failures` failures in a row are more than the limit allows.
    pub fn exhausted(&self, failures: u32) -> bool {
        self.limit.is_some_and(|limit| failures > limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap_with_jitter_below_them() {
        let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(2), Duration::from_millis(200));
        assert_eq!(b.ceiling(4), Duration::from_millis(800));
        assert_eq!(b.ceiling(10), Duration::from_secs(2));
        assert_eq!(b.ceiling(1000), Duration::from_secs(2));
        for failures in [1, 3, 10, 1000] {
            let ceiling = b.ceiling(failures);
            let delays: Vec<Duration> = (0..50).map(|_| b.delay(failures)).collect();
            assert!(delays.iter().all(|d| *d >= ceiling / 2 && *d <= ceiling));
            assert!(delays.iter().any(|d| *d != delays[0]), "no jitter");
        }
    }

    #[test]
    fn a_limit_counts_failures_in_a_row() {
        let b = Backoff::new(Duration::from_millis(1), Duration::from_millis(2));
        assert!(!b.exhausted(u32::MAX));
        let b = b.with_limit(Some(3));
        assert!(!b.exhausted(3));
        assert!(b.exhausted(4));
    }
}
