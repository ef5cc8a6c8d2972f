//! [`WalStream`]: a logical replication stream on the wire — CopyBoth frames in, standby status
//! updates out, the receive timeout, and reconnects with the one [`Backoff`].
//!
//! It yields the pgoutput payloads as bytes ([`WalEvent::Data`]) and the server's position
//! ([`WalEvent::Keepalive`]); what they mean is the caller's business. So is whether a new
//! connection may continue where the old one stopped (the slot could have been recreated, the
//! server replaced): after a loss the stream connects again, hands the connection over
//! ([`WalEvent::Reconnected`]) and streams again only once the caller vetted it
//! ([`WalStream::resume`]) — or drops it and retries later ([`WalStream::reject`]).
//!
//! # What is reported to the server
//!
//! The flush position in every status update is what the caller passed to
//! [`WalStream::confirm`], never more: the caller checkpoints first, so the slot never runs ahead
//! of the checkpoint. Positions confirmed from other tasks through [`WalControl`] are handed to
//! the caller first ([`WalEvent::Confirmed`]), which may cut them back.
//!
//! # When it talks
//!
//! A status update goes out every `status_interval`, at once when the server asks for a reply
//! or the caller has a new position to report ([`WalStream::report_soon`]), and (asking for a
//! reply) when another task wants the server's position ([`WalControl::request_position`]) or
//! halfway through a silence ([`Silence`]). A silence as long as the
//! receive timeout fails the connection, which is then retried like any transient error.

mod control;
pub mod frames;

use std::time::Duration;

use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::conn::Connection;
use crate::error::ConnectError;
use crate::link::Link;
use crate::lsn::{Lsn, format_lsn};
use crate::options::ConnectOptions;
use crate::silence::Silence;
pub use control::WalControl;
pub use frames::{CopyMessage, WalData};

/// Least time between two status updates that ask the server for its position.
const ASK_POSITION_EVERY: Duration = Duration::from_millis(200);

/// Most time between two status updates while the caller cannot read
/// ([`WalStream::keep_alive`]): well under any `wal_sender_timeout` in use (PostgreSQL's
/// default is 60 s; some set 5 s), and cheap — one 34-byte message.
pub const KEEP_ALIVE_EVERY: Duration = Duration::from_secs(1);

/// How long a clean stop waits for the server to finish the copy.
const FINISH_WAIT: Duration = Duration::from_secs(10);

/// What to stream and how.
#[derive(Debug, Clone)]
pub struct WalOptions {
    /// The logical replication slot.
    pub slot: String,
    /// The publication pgoutput reads.
    pub publication: String,
    /// How often a status update is sent even when nothing changed.
    pub status_interval: Duration,
    /// Declare the connection dead after this long without a byte (`None`: never).
    pub receive_timeout: Option<Duration>,
    /// Waits between reconnects, and after how many failures in a row to give up.
    pub reconnect: Backoff,
    /// Where the stream records whether it is connected (read by `/health`).
    pub link: Link,
}

/// What [`WalStream::recv`] yields.
#[derive(Debug)]
pub enum WalEvent {
    /// WAL data: a pgoutput message.
    Data(WalData),
    /// A keepalive: the server's end of WAL (a reply it asked for is sent by the stream).
    Keepalive {
        /// The server's current end of WAL.
        end: Lsn,
    },
    /// Another task confirmed more through [`WalControl::confirm`]: decide what may be
    /// reported and pass it to [`WalStream::confirm`].
    Confirmed,
    /// [`WalControl::interrupt`] was called while the caller allowed interrupts.
    Interrupted,
    /// The connection was lost and a new one is up but not streaming yet: vet it
    /// ([`WalStream::connection_to_vet`]), then [`resume`](WalStream::resume) or
    /// [`reject`](WalStream::reject).
    Reconnected,
    /// The server ended the stream, or [`WalControl::stop`] was called.
    End,
}

/// Where the stream is with its connection.
enum Phase {
    /// Streaming on this connection.
    Streaming(Connection),
    /// Connected again after a loss; the caller vets the connection.
    Vetting(Connection),
    /// Vetted; START_REPLICATION for a server of this version is next.
    Vetted(Connection, u32),
    /// No connection; the next attempt not before `retry_at`.
    Down {
        /// When to connect again.
        retry_at: Instant,
    },
}

/// A logical replication stream. See the module docs.
pub struct WalStream {
    opts: ConnectOptions,
    options: WalOptions,
    control: WalControl,
    phase: Phase,
    proto: u32,
    /// Highest position the caller confirmed (sent as written, flushed and applied).
    confirmed: Lsn,
    /// Last position sent to the server.
    reported: Lsn,
    /// Highest position confirmed through the control that the caller was told of.
    seen: Lsn,
    last_status: Instant,
    /// A status update is owed now (the server asked, or a confirmation came in).
    status_due: bool,
    /// Ask the server to answer the next status update with its position.
    ask_reply: bool,
    silence: Silence,
    /// Failed connections in a row (see [`progressed`](Self::progressed)).
    failures: u32,
    ended: bool,
}

impl WalStream {
    /// Starts streaming on `conn` from `from` (START_REPLICATION with the pgoutput options of a
    /// server of `server_version_num`).
    pub async fn start(
        conn: Connection,
        from: Lsn,
        server_version_num: u32,
        options: WalOptions,
        control: WalControl,
    ) -> Result<WalStream, ConnectError> {
        let mut stream = WalStream {
            opts: conn.options().clone(),
            silence: Silence::new(options.receive_timeout),
            options,
            control,
            phase: Phase::Down {
                retry_at: Instant::now(),
            },
            proto: crate::commands::protocol_version(server_version_num),
            confirmed: from,
            reported: Lsn::ZERO,
            seen: Lsn::ZERO,
            last_status: Instant::now(),
            status_due: false,
            ask_reply: false,
            failures: 0,
            ended: false,
        };
        stream.start_replication(conn, server_version_num).await?;
        Ok(stream)
    }

    /// The handle other tasks confirm, interrupt and stop through.
    pub fn control(&self) -> &WalControl {
        &self.control
    }

    /// The pgoutput protocol version in use.
    pub fn protocol_version(&self) -> u32 {
        self.proto
    }

    /// The highest position confirmed so far (where a reconnect resumes).
    pub fn confirmed(&self) -> Lsn {
        self.confirmed
    }

    /// Reports everything before `lsn` as flushed with the next status update; never moves
    /// back.
    pub fn confirm(&mut self, lsn: Lsn) {
        self.confirmed = self.confirmed.max(lsn);
    }

    /// Sends the next status update at once if the confirmed position moved since the last.
    pub fn report_soon(&mut self) {
        self.status_due |= self.confirmed > self.reported;
    }

    /// Keeps the server hearing from a caller that cannot read for now (its consumer is
    /// behind): a status update goes out when one is due or [`KEEP_ALIVE_EVERY`] passed since
    /// the last. Reads nothing — the server's data waits in the socket — so a server whose
    /// `wal_sender_timeout` is shorter than the wait does not take the stream for dead and
    /// make it start its transaction over. A connection found broken is dropped for
    /// [`recv`](Self::recv) to reconnect; `Err` only when the backoff gives up.
    pub async fn keep_alive(&mut self) -> Result<(), ConnectError> {
        if !matches!(self.phase, Phase::Streaming(_)) {
            return Ok(());
        }
        if !self.status_is_due() && self.last_status.elapsed() < KEEP_ALIVE_EVERY {
            return Ok(());
        }
        match self.send_status().await {
            Err(e) if e.is_retryable() && self.fail(&e) => Ok(()),
            other => other,
        }
    }

    /// Whether a whole message is already buffered (the next [`recv`](Self::recv) will not wait
    /// on the network).
    pub fn has_buffered(&self) -> bool {
        matches!(&self.phase, Phase::Streaming(conn) if conn.has_buffered())
    }

    /// The caller got somewhere: failures in a row count from zero again.
    pub fn progressed(&mut self) {
        self.failures = 0;
    }

    /// The next event. Retryable failures are retried here, with the backoff, until it gives
    /// up (then the last error is returned); other errors are returned at once. Interrupts
    /// are taken only when `interruptible`.
    pub async fn recv(&mut self, interruptible: bool) -> Result<WalEvent, ConnectError> {
        loop {
            match self.step(interruptible).await {
                Ok(WalEvent::End) => {
                    self.ended = true;
                    return Ok(WalEvent::End);
                }
                Ok(event) => return Ok(event),
                Err(e) if e.is_retryable() && self.fail(&e) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The connection to vet after [`WalEvent::Reconnected`].
    pub fn connection_to_vet(&mut self) -> Option<&mut Connection> {
        match &mut self.phase {
            Phase::Vetting(conn) => Some(conn),
            _ => None,
        }
    }

    /// The caller vetted the new connection: streaming resumes at the confirmed position with
    /// the next [`recv`](Self::recv), for a server of `server_version_num`.
    pub fn resume(&mut self, server_version_num: u32) {
        if let Phase::Vetting(conn) = self.take_phase() {
            self.phase = Phase::Vetted(conn, server_version_num);
        }
    }

    /// The caller found the new connection unfit for now, for a reason that may pass: it is
    /// dropped and another tried after the backoff. `false` when the backoff gives up.
    pub fn reject(&mut self, reason: &dyn std::fmt::Display) -> bool {
        self.fail(reason)
    }

    /// Ends streaming cleanly: a last status update, CopyDone, and Terminate. A connection
    /// already gone is not an error: the caller's checkpoint holds the position.
    pub async fn finish(mut self) -> Result<(), ConnectError> {
        if !matches!(self.phase, Phase::Streaming(_)) {
            return Ok(());
        }
        if let Err(e) = self.send_status().await {
            tracing::warn!(error = %e, "the connection was gone at stop; the next start confirms the last checkpoint");
            return Ok(());
        }
        let Phase::Streaming(mut conn) = self.take_phase() else {
            return Ok(());
        };
        let result = tokio::time::timeout(FINISH_WAIT, conn.finish_copy()).await;
        conn.close().await;
        result.unwrap_or_else(|_| {
            tracing::warn!("the server did not finish the copy within 10s; closed the connection");
            Ok(())
        })
    }

    async fn step(&mut self, interruptible: bool) -> Result<WalEvent, ConnectError> {
        if self.ended {
            return Ok(WalEvent::End);
        }
        match &self.phase {
            Phase::Streaming(_) => self.read(interruptible).await,
            Phase::Vetting(_) => Ok(WalEvent::Reconnected),
            Phase::Vetted(..) => {
                if let Phase::Vetted(conn, version) = self.take_phase() {
                    self.start_replication(conn, version).await?;
                }
                self.read(interruptible).await
            }
            Phase::Down { retry_at } => self.reconnect(*retry_at, interruptible).await,
        }
    }

    /// The phase, leaving `Down` (retry at once) in its place.
    fn take_phase(&mut self) -> Phase {
        let down = Phase::Down {
            retry_at: Instant::now(),
        };
        std::mem::replace(&mut self.phase, down)
    }

    async fn start_replication(
        &mut self,
        mut conn: Connection,
        server_version_num: u32,
    ) -> Result<(), ConnectError> {
        let (slot, publication) = (&self.options.slot, &self.options.publication);
        let proto = conn
            .start_replication(slot, publication, self.confirmed, server_version_num)
            .await?;
        tracing::info!(
            %slot,
            from = %format_lsn(self.confirmed),
            proto,
            tls = conn.is_tls(),
            "streaming started"
        );
        self.proto = proto;
        self.phase = Phase::Streaming(conn);
        self.reported = Lsn::ZERO;
        self.last_status = Instant::now();
        self.silence.heard();
        self.options.link.up();
        Ok(())
    }

    /// Counts a retryable failure: `false` once the backoff gives up; otherwise drops the
    /// connection and schedules the next attempt.
    fn fail(&mut self, e: &dyn std::fmt::Display) -> bool {
        self.failures += 1;
        let backoff = self.options.reconnect;
        if backoff.exhausted(self.failures) {
            return false;
        }
        let delay = backoff.delay(self.failures);
        let retry_in_ms = delay.as_millis() as u64;
        let was_streaming = matches!(self.phase, Phase::Streaming(_));
        self.phase = Phase::Down {
            retry_at: Instant::now() + delay,
        };
        if was_streaming {
            tracing::warn!(error = %e, retry_in_ms, "replication connection lost; reconnecting");
        } else {
            tracing::warn!(error = %e, retry_in_ms, "reconnect failed; retrying");
        }
        self.options.link.down(e);
        // The next connection's silence is counted afresh.
        self.silence.heard();
        true
    }

    /// Waits out the backoff (a stop ends the stream meanwhile) and connects again.
    async fn reconnect(
        &mut self,
        retry_at: Instant,
        interruptible: bool,
    ) -> Result<WalEvent, ConnectError> {
        if self.control.stop_requested() {
            return Ok(WalEvent::End);
        }
        if interruptible && self.control.take_interrupt() {
            return Ok(WalEvent::Interrupted);
        }
        if !self.control.sleep_until(retry_at).await {
            return Ok(WalEvent::End);
        }
        let conn = Connection::connect(&self.opts, true).await?;
        self.phase = Phase::Vetting(conn);
        Ok(WalEvent::Reconnected)
    }

    /// Reads until there is something for the caller, sending status updates when due.
    async fn read(&mut self, interruptible: bool) -> Result<WalEvent, ConnectError> {
        loop {
            if let Some(event) = self.signal(interruptible) {
                return Ok(event);
            }
            self.check_silence()?;
            if self.status_is_due() {
                self.send_status().await?;
            }
            let wait = self.wait();
            let Phase::Streaming(conn) = &mut self.phase else {
                return Err(not_connected(&self.opts));
            };
            while let Some(frame) = conn.try_frame()? {
                match frames::copy_message(frame)? {
                    Some(CopyMessage::ServerEnded) => return Err(server_ended(&self.opts)),
                    Some(message) => return Ok(self.event(message)),
                    None => {}
                }
            }
            let waiting = Instant::now();
            tokio::select! {
                r = conn.fill() => {
                    r?;
                    self.silence.heard();
                }
                _ = tokio::time::sleep(wait) => self.silence.waited(waiting.elapsed()),
                _ = self.control.woken() => self.silence.waited(waiting.elapsed()),
            }
        }
    }

    /// What other tasks asked for through the control, as an event when the caller must act.
    fn signal(&mut self, interruptible: bool) -> Option<WalEvent> {
        let confirmed = self.control.confirmed();
        if confirmed > self.seen {
            self.seen = confirmed;
            return Some(WalEvent::Confirmed);
        }
        if self.control.stop_requested() {
            return Some(WalEvent::End);
        }
        if interruptible && self.control.take_interrupt() {
            return Some(WalEvent::Interrupted);
        }
        self.ask_reply |= self.control.take_position_request();
        None
    }

    fn event(&mut self, message: CopyMessage) -> WalEvent {
        match message {
            CopyMessage::XLogData(data) => WalEvent::Data(data),
            CopyMessage::Keepalive { end, reply } => {
                self.status_due |= reply;
                WalEvent::Keepalive { end }
            }
            CopyMessage::Done => WalEvent::End,
            CopyMessage::ServerEnded => WalEvent::End,
        }
    }

    fn status_is_due(&self) -> bool {
        let since = self.last_status.elapsed();
        self.status_due
            || (self.ask_reply && since >= ASK_POSITION_EVERY)
            || since >= self.options.status_interval
    }

    /// How long to wait on the socket before something else is due.
    fn wait(&self) -> Duration {
        let since = self.last_status.elapsed();
        let mut wait = self.options.status_interval.saturating_sub(since);
        if self.ask_reply {
            wait = wait.min(ASK_POSITION_EVERY.saturating_sub(since));
        }
        wait.min(self.silence.next_check())
    }

    /// Asks the server for a reply halfway through a silence, and fails the connection once
    /// the silence reaches the receive timeout (retryable: the stream reconnects).
    fn check_silence(&mut self) -> Result<(), ConnectError> {
        self.ask_reply |= self.silence.ping_due();
        if !self.silence.is_dead() {
            return Ok(());
        }
        let secs = self.silence.timeout().unwrap_or_default().as_secs_f64();
        Err(ConnectError::Broken {
            addr: self.opts.addr(),
            source: std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("nothing received for {secs}s (receive_timeout)"),
            ),
        })
    }

    async fn send_status(&mut self) -> Result<(), ConnectError> {
        let reply = std::mem::take(&mut self.status_due);
        let ask = std::mem::take(&mut self.ask_reply);
        if let Phase::Streaming(conn) = &mut self.phase {
            let update = frames::status_update(self.confirmed, frames::pg_now_micros(), ask);
            conn.queue_copy_data(&update);
            conn.flush().await?;
            if self.confirmed != self.reported {
                tracing::debug!(lsn = %format_lsn(self.confirmed), reply, "confirmed flush position");
            }
            self.reported = self.confirmed;
        }
        self.last_status = Instant::now();
        Ok(())
    }
}

/// The server shut down under the stream: a connection lost, so the stream reconnects (to
/// the same server once it is back, or to another host of the URL).
fn server_ended(opts: &ConnectOptions) -> ConnectError {
    ConnectError::Broken {
        addr: opts.addr(),
        source: std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "the server ended streaming (it is shutting down or restarting)",
        ),
    }
}

fn not_connected(opts: &ConnectOptions) -> ConnectError {
    ConnectError::Broken {
        addr: opts.addr(),
        source: std::io::Error::other("not connected"),
    }
}

#[cfg(test)]
mod tests;
