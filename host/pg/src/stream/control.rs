//! [`WalControl`]: how other tasks reach a [`WalStream`](super::WalStream) while its reader waits
//! on the socket — confirm a position, ask the server for its own, interrupt, stop.
//!
//! The reader must never be cancelled mid-read or mid-write (that would cut a protocol message
//! in half), so these are flags and a counter it looks at between messages, with a [`Notify`]
//! to wake it from its wait.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use tokio::sync::Notify;

use crate::lsn::Lsn;

/// A shared, cheap-to-clone handle to a [`WalStream`](super::WalStream).
#[derive(Debug, Clone, Default)]
pub struct WalControl(Arc<Signals>);

#[derive(Debug, Default)]
struct Signals {
    confirmed: AtomicU64,
    stop: AtomicBool,
    interrupt: AtomicBool,
    position: AtomicBool,
    wake: Notify,
}

impl WalControl {
    /// Everything before `lsn` is durably delivered and checkpointed. The reader hands it to its
    /// caller ([`WalEvent::Confirmed`](super::WalEvent::Confirmed)), which decides what may be
    /// reported.
    pub fn confirm(&self, lsn: Lsn) {
        self.0.confirmed.fetch_max(lsn.0, Ordering::AcqRel);
        self.0.wake.notify_one();
    }

    /// The highest position confirmed through [`confirm`](Self::confirm).
    pub fn confirmed(&self) -> Lsn {
        Lsn(self.0.confirmed.load(Ordering::Acquire))
    }

    /// Makes the reader return [`WalEvent::Interrupted`](super::WalEvent::Interrupted) as soon
    /// as its caller allows it.
    pub fn interrupt(&self) {
        self.0.interrupt.store(true, Ordering::Release);
        self.0.wake.notify_one();
    }

    /// Asks the server to report its position now (a status update requesting a reply).
    pub fn request_position(&self) {
        if !self.0.position.swap(true, Ordering::AcqRel) {
            self.0.wake.notify_one();
        }
    }

    /// Ends the stream: the reader returns [`WalEvent::End`](super::WalEvent::End).
    pub fn stop(&self) {
        self.0.stop.store(true, Ordering::Release);
        self.0.wake.notify_one();
    }

    /// Whether [`stop`](Self::stop) was called.
    pub fn stop_requested(&self) -> bool {
        self.0.stop.load(Ordering::Acquire)
    }

    /// Takes a pending interrupt.
    pub(super) fn take_interrupt(&self) -> bool {
        self.0.interrupt.swap(false, Ordering::AcqRel)
    }

    /// Takes a pending request for the server's position.
    pub(super) fn take_position_request(&self) -> bool {
        self.0.position.swap(false, Ordering::AcqRel)
    }

    /// Resolves at the next signal (or at once if one came since the last wait).
    pub(super) async fn woken(&self) {
        self.0.wake.notified().await
    }

    /// Sleeps until `deadline`, cut short by a stop; `false` when stopping.
    pub(super) async fn sleep_until(&self, deadline: tokio::time::Instant) -> bool {
        while !self.stop_requested() {
            if tokio::time::timeout_at(deadline, self.woken())
                .await
                .is_err()
            {
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn confirmations_only_move_forward() {
        let control = WalControl::default();
        control.confirm(Lsn(20));
        control.clone().confirm(Lsn(10));
        assert_eq!(control.confirmed(), Lsn(20));
    }

    #[test]
    fn interrupts_and_position_requests_are_taken_once() {
        let control = WalControl::default();
        assert!(!control.take_interrupt() && !control.take_position_request());
        control.interrupt();
        control.request_position();
        assert!(control.take_interrupt() && control.take_position_request());
        assert!(!control.take_interrupt() && !control.take_position_request());
    }

    #[tokio::test]
    async fn a_stop_cuts_a_sleep_short() {
        let control = WalControl::default();
        let far = tokio::time::Instant::now() + Duration::from_secs(3600);
        let sleeping = tokio::spawn({
            let control = control.clone();
            async move { control.sleep_until(far).await }
        });
        control.stop();
        assert!(!sleeping.await.unwrap(), "a stop ends the sleep");
        let soon = tokio::time::Instant::now() + Duration::from_millis(1);
        assert!(!control.sleep_until(soon).await, "stopped stays stopped");
        assert!(WalControl::default().sleep_until(soon).await);
    }
}
