//! [`Silence`]: how long the replication stream has waited for the server without hearing
//! anything — walflow's `wal_receiver_timeout`.
//!
//! TCP does not notice a link that drops packets while nothing is sent, and the walsender of an
//! idle database may rightly send nothing for a long time. So halfway to the timeout the stream
//! asks the server for a reply (a standby status update with the reply flag, which a live
//! walsender answers with a keepalive at once); if still nothing arrives by the timeout, the
//! connection is declared dead and the stream reconnects.
//!
//! Only time spent waiting on the socket counts. While the pipeline is busy elsewhere (a slow
//! sink holding the reader back) unread bytes pile up in the kernel; that is not silence.

use std::time::Duration;

/// Time waited without a byte from the server, against a timeout.
#[derive(Debug, Clone)]
pub struct Silence {
    timeout: Option<Duration>,
    waited: Duration,
    pinged: bool,
}

impl Silence {
    /// Tracks silence against `timeout` (`None`: never time out).
    pub fn new(timeout: Option<Duration>) -> Silence {
        Silence {
            timeout,
            waited: Duration::ZERO,
            pinged: false,
        }
    }

    /// Something arrived: the silence is over.
    pub fn heard(&mut self) {
        self.waited = Duration::ZERO;
        self.pinged = false;
    }

    /// The stream waited `d` on the socket and nothing arrived.
    pub fn waited(&mut self, d: Duration) {
        self.waited += d;
    }

    /// The timeout passed without a byte: the connection is dead.
    pub fn is_dead(&self) -> bool {
        self.timeout.is_some_and(|t| self.waited >= t)
    }

    /// `true` once per silence, when half the timeout has passed: time to ask for a reply.
    pub fn ping_due(&mut self) -> bool {
        let due = !self.pinged && self.timeout.is_some_and(|t| self.waited >= t / 2);
        self.pinged |= due;
        due
    }

    /// How long the stream may wait before it must look again (ping or give up).
    pub fn next_check(&self) -> Duration {
        match self.timeout {
            None => Duration::MAX,
            Some(t) if !self.pinged => (t / 2).saturating_sub(self.waited),
            Some(t) => t.saturating_sub(self.waited),
        }
    }

    /// The timeout, for messages.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn pings_once_at_half_then_dies_at_the_timeout() {
        let mut s = Silence::new(Some(10 * SECOND));
        s.waited(4 * SECOND);
        assert!(!s.ping_due() && !s.is_dead());
        assert_eq!(s.next_check(), SECOND);
        s.waited(SECOND);
        assert!(s.ping_due());
        assert!(!s.ping_due(), "one ping per silence");
        assert_eq!(s.next_check(), 5 * SECOND);
        s.waited(5 * SECOND);
        assert!(s.is_dead());
    }

    #[test]
    fn hearing_anything_starts_over() {
        let mut s = Silence::new(Some(10 * SECOND));
        s.waited(6 * SECOND);
        assert!(s.ping_due());
        s.heard();
        s.waited(9 * SECOND);
        assert!(!s.is_dead());
        assert!(s.ping_due(), "a new silence pings again");
    }

    #[test]
    fn without_a_timeout_nothing_is_ever_due() {
        let mut s = Silence::new(None);
        s.waited(Duration::from_secs(86_400));
        assert!(!s.ping_due() && !s.is_dead());
        assert_eq!(s.next_check(), Duration::MAX);
    }
}
