//! [`ReplicationStream`]: committed transactions from a slot — everything the pipeline needs
//! from PostgreSQL, and nothing it must not have.
//!
//! The wire level (frames, keepalive replies, status updates, the receive timeout, reconnects
//! with backoff) is [`walflow_pg::stream::WalStream`]'s. This wraps it with what needs the core's
//! knowledge: the continuity check on every new connection, pgoutput decoding and assembly into
//! transactions, type-registry refreshes, prepared-transaction holds, and how far a
//! confirmation may go.
//!
//! # How the pipeline drives it
//!
//! ```text
//! let mut stream = ReplicationStream::open(&source, checkpoint.as_ref(), options).await?;
//! while let Some(txn) = stream.next().await? {
//!     deliver txn.events to every sink and wait for their acknowledgements;
//!     let lsn = stream.safe_lsn(txn.end_lsn);          // never past a held prepared txn
//!     store.save(&Checkpoint { lsn, identity: stream.identity().clone(), .. })?;
//!     stream.confirm(txn.end_lsn);                       // cut back to `lsn`; sent with the
//!                                                        // next status update
//! }
//! // when idle (no transaction for a while), let the slot follow the server:
//! if let Some(lsn) = stream.idle_lsn() { save the checkpoint at lsn; stream.confirm(lsn) }
//! stream.stop().await?;                                  // CopyDone, clean close
//! ```
//!
//! The flush position sent to PostgreSQL is only ever what the caller passed to
//! [`ReplicationStream::confirm`] — the caller writes its checkpoint first, so the slot never
//! runs ahead of the checkpoint. [`ReplicationStream::next`] returns `Ok(None)` only when the
//! server ends the stream on purpose; connection failures are retried inside `next` (resuming
//! from the last confirmed position and skipping transactions already handed over), and a
//! fatal error is returned once.

use std::collections::HashSet;
use std::time::Duration;

use super::continuity::{self, ContinuityError, Verified};
use crate::assemble::{AssembleError, Assembler, Transaction};
use crate::checkpoint::{Checkpoint, SlotIdentity};
use crate::event::Lsn;
use crate::value::{TypeInfo, TypeKind, TypeRegistry};
use walflow_config::SourceConfig;
use walflow_pg::backoff::Backoff;
use walflow_pg::conn::Connection;
use walflow_pg::error::ConnectError;
use walflow_pg::link::Link;
use walflow_pg::options::ConnectOptions;
use walflow_pg::sql::connect_sql_with;
use walflow_pg::stream::{WalControl, WalData, WalEvent, WalOptions, WalStream};
use walflow_pgoutput::{Message, decode};

/// Why the stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Connecting or talking to the server failed.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The server or the slot is not fit to continue from the checkpoint.
    #[error(transparent)]
    Continuity(#[from] ContinuityError),
    /// The publication is missing or cannot be created.
    #[error(transparent)]
    Publication(#[from] walflow_pg::commands::PublicationError),
    /// The server sent a pgoutput stream walflow cannot follow.
    #[error(transparent)]
    Assemble(#[from] AssembleError),
}

impl StreamError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            StreamError::Connect(e) => e.is_retryable(),
            StreamError::Continuity(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// What [`ReplicationStream::next_item`] yields.
#[derive(Debug)]
pub enum StreamItem {
    /// A committed transaction (or non-transactional logical message) to deliver.
    Transaction(Transaction),
    /// The server reported this LSN while no transaction was in flight: everything committed
    /// before it has been handed over. Once the caller acknowledged all of it,
    /// [`ReplicationStream::idle_lsn`] is `Some` and may be checkpointed and confirmed.
    Idle(Lsn),
    /// The server ended the stream.
    End,
    /// Another task asked the reader to look at something ([`StreamControl::interrupt`]);
    /// nothing was in flight.
    Interrupted,
}

/// Knobs of the stream.
#[derive(Debug, Clone)]
pub struct StreamOptions {
    /// How often a standby status update is sent even when nothing changed.
    pub status_interval: Duration,
    /// Continue past a gap in the slot's history (logged).
    pub accept_gap: bool,
    /// Create or adjust the publication per `publication_autocreate`.
    pub manage_publication: bool,
    /// Waits between reconnects, and after how many failures in a row to give up.
    pub reconnect: Backoff,
    /// Declare the connection dead after this long without a byte from the server (`None`:
    /// never); see [`walflow_pg::silence::Silence`].
    pub receive_timeout: Option<Duration>,
    /// Where the stream records whether it is connected (read by `/health`).
    pub link: Link,
}

impl StreamOptions {
    /// The defaults for `source` (status interval = `heartbeat_interval` or 10 s).
    pub fn for_source(source: &SourceConfig) -> StreamOptions {
        StreamOptions {
            status_interval: source.heartbeat_interval.unwrap_or(Duration::from_secs(10)),
            accept_gap: source.accept_gap,
            manage_publication: true,
            reconnect: Backoff::new(Duration::from_millis(200), Duration::from_secs(30)),
            receive_timeout: source.receive_timeout(),
            link: Link::default(),
        }
    }
}

/// Confirms and stops a [`ReplicationStream`] from another task while it waits in
/// [`ReplicationStream::next_item`]: the pipeline acknowledges from its delivery task, and
/// cancelling `next_item` mid-read or mid-write could corrupt the protocol stream. The signals
/// are the wire stream's ([`WalControl`]); the prepared-transaction holds that clamp a
/// confirmation are the core's.
#[derive(Debug, Clone, Default)]
pub struct StreamControl {
    wal: WalControl,
    holds: super::PreparedHolds,
}

impl StreamControl {
    /// The highest position at most `acked` that may be checkpointed once everything up to
    /// `acked` is acknowledged: never at or past a prepared transaction that is held or whose
    /// changes are not acknowledged yet (see [`PreparedHolds`](super::PreparedHolds)).
    pub fn safe_lsn(&self, acked: Lsn) -> Lsn {
        self.holds.clamp(acked)
    }

    /// Everything before `lsn` is durably delivered and checkpointed; report it promptly.
    pub fn confirm(&self, lsn: Lsn) {
        self.wal.confirm(lsn);
    }

    /// Makes a waiting `next_item` return [`StreamItem::Interrupted`] as soon as no
    /// transaction is in flight, so its caller can act on news from another task.
    pub fn interrupt(&self) {
        self.wal.interrupt();
    }

    /// Asks the server to report its position now (a status update requesting a reply), so an
    /// idle stream yields [`StreamItem::Idle`] without waiting for the next keepalive.
    pub fn request_position(&self) {
        self.wal.request_position();
    }

    /// Ends the stream: `next_item` returns [`StreamItem::End`]; then call
    /// [`ReplicationStream::stop`] for a clean CopyDone.
    pub fn stop(&self) {
        self.wal.stop();
    }
}

impl crate::checkpoint::Confirmer for StreamControl {
    fn safe_lsn(&self, acked: Lsn) -> Lsn {
        StreamControl::safe_lsn(self, acked)
    }

    fn confirm(&self, lsn: Lsn) {
        StreamControl::confirm(self, lsn)
    }
}

/// A two-phase message's effect on [`PreparedHolds`](super::PreparedHolds).
enum TwoPhaseStep {
    /// Prepared under this gid.
    Prepare(String),
    /// Committed; the transaction was prepared at this LSN.
    Commit(Lsn),
    /// Rolled back; the transaction was prepared at this LSN.
    Rollback(Lsn),
}

/// Committed transactions from a replication slot. See the module docs for the protocol.
pub struct ReplicationStream {
    source: SourceConfig,
    opts: ConnectOptions,
    options: StreamOptions,
    wal: WalStream,
    assembler: Assembler,
    verified: Verified,
    /// Highest `end_lsn` handed to the caller.
    delivered: Lsn,
    /// Highest LSN the caller acknowledged (before clamping to what is safe to confirm).
    acked: Lsn,
    /// The server's WAL end from the latest keepalive, valid when nothing is in flight.
    server_end: Lsn,
    in_txn: bool,
    open_streams: HashSet<u32>,
    refreshed_types: HashSet<u32>,
    sql: Option<tokio_postgres::Client>,
    control: StreamControl,
}

impl ReplicationStream {
    /// Connects, runs the continuity check against `checkpoint`, makes sure slot and
    /// publication exist, loads the type catalog and starts streaming.
    pub async fn open(
        source: &SourceConfig,
        checkpoint: Option<&Checkpoint>,
        options: StreamOptions,
    ) -> Result<ReplicationStream, StreamError> {
        let opts = ConnectOptions::from_source(source)?;
        let mut conn = Connection::connect(&opts, true).await?;
        // The publication must exist before the slot: pgoutput reads it through the catalog as
        // of each change, so a publication created after the slot's consistent point makes
        // START_REPLICATION fail with "publication does not exist".
        if options.manage_publication {
            let action = conn.ensure_publication(source).await?;
            tracing::debug!(?action, publication = %source.publication, "publication ready");
        } else if !conn.publication_exists(&source.publication).await? {
            return Err(walflow_pg::commands::PublicationError::Missing {
                publication: source.publication.clone(),
            }
            .into());
        }
        let verified =
            continuity::check(&mut conn, &source.slot, checkpoint, options.accept_gap).await?;
        let mut registry = TypeRegistry::new();
        load_types(&mut conn, &mut registry, None).await?;
        let mut assembler = Assembler::new(opts.dbname.clone(), registry);
        load_primary_keys(&mut conn, &mut assembler).await?;
        let start = verified.start_lsn;
        let control = StreamControl::default();
        let wal = WalStream::start(
            conn,
            start,
            verified.server_version_num,
            wal_options(source, &options),
            control.wal.clone(),
        )
        .await?;
        Ok(ReplicationStream {
            source: source.clone(),
            opts,
            options,
            wal,
            assembler,
            delivered: start,
            acked: start,
            server_end: Lsn::ZERO,
            in_txn: false,
            open_streams: HashSet::new(),
            refreshed_types: HashSet::new(),
            sql: None,
            control,
            verified,
        })
    }

    /// The source this stream reads.
    pub fn source(&self) -> &SourceConfig {
        &self.source
    }

    /// Whether the stream is connected, for `/health`.
    pub fn link(&self) -> Link {
        self.options.link.clone()
    }

    /// A handle to confirm and stop this stream from another task.
    pub fn control(&self) -> StreamControl {
        self.control.clone()
    }

    /// Takes what was confirmed through [`StreamControl`] (a [`Ledger`](crate::checkpoint::Ledger)
    /// confirms there) into this stream. Reads do it on their own; call it to make
    /// [`idle_lsn`](Self::idle_lsn) and [`confirmed_lsn`](Self::confirmed_lsn) see a
    /// confirmation before the next read.
    pub fn apply_confirmed(&mut self) {
        let lsn = self.control.wal.confirmed();
        if lsn > self.confirmed_lsn() {
            self.confirm(lsn);
            self.wal.report_soon();
        }
    }

    /// The slot's identity, to store with every checkpoint.
    pub fn identity(&self) -> &SlotIdentity {
        &self.verified.identity
    }

    /// What the continuity check established at open.
    pub fn verified(&self) -> &Verified {
        &self.verified
    }

    /// The pgoutput protocol version in use.
    pub fn protocol_version(&self) -> u32 {
        self.wal.protocol_version()
    }

    /// The highest LSN confirmed so far.
    pub fn confirmed_lsn(&self) -> Lsn {
        self.wal.confirmed()
    }

    /// The server's WAL end as last reported (0 before the first keepalive).
    pub fn server_lsn(&self) -> Lsn {
        self.server_end
    }

    /// A transaction is partly received, or prepared and held.
    fn in_flight(&self) -> bool {
        self.in_txn || !self.open_streams.is_empty() || self.assembler.held_since_lsn().is_some()
    }

    fn pending(&self) -> bool {
        self.in_flight() || self.delivered > self.acked
    }

    /// The LSN safe to checkpoint and confirm once everything up to `acked` (an `end_lsn` the
    /// caller got from [`next`](Self::next)) is acknowledged: never past what was handed over,
    /// and never at or past a prepared transaction still held.
    pub fn safe_lsn(&self, acked: Lsn) -> Lsn {
        let lsn = acked.min(self.delivered.max(self.idle_lsn().unwrap_or_default()));
        self.control.holds.clamp(lsn).max(self.confirmed_lsn())
    }

    /// When nothing is in flight or unacknowledged, the server's current position: confirming
    /// it lets an idle slot release WAL. Checkpoint it before [`confirm`](Self::confirm)ing.
    pub fn idle_lsn(&self) -> Option<Lsn> {
        (!self.pending() && self.server_end > self.confirmed_lsn()).then_some(self.server_end)
    }

    /// Records that everything before `lsn` is acknowledged, after the checkpoint at
    /// [`safe_lsn(lsn)`](Self::safe_lsn) was written. What is reported with the next status
    /// update is `safe_lsn(lsn)`, never more; call it right after saving, with no `await` in
    /// between, so both see the same state.
    pub fn confirm(&mut self, lsn: Lsn) {
        self.acked = self.acked.max(lsn);
        let lsn = self.safe_lsn(lsn);
        self.wal.confirm(lsn);
    }

    /// The next committed transaction (or non-transactional logical message). Reconnects on
    /// retryable failures. `Ok(None)` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<Transaction>, StreamError> {
        loop {
            match self.next_item().await? {
                StreamItem::Transaction(t) => return Ok(Some(t)),
                StreamItem::Idle(_) | StreamItem::Interrupted => {}
                StreamItem::End => return Ok(None),
            }
        }
    }

    /// Like [`next`](Self::next), but also returns [`StreamItem::Idle`] when the server reports
    /// its position while nothing is pending, so the caller can checkpoint and confirm
    /// [`idle_lsn`](Self::idle_lsn) (or stop at an LSN) without waiting for a transaction.
    pub async fn next_item(&mut self) -> Result<StreamItem, StreamError> {
        // Reconnect failures in a row count from each call: an item yielded is progress.
        self.wal.progressed();
        loop {
            self.apply_confirmed();
            match self.wal.recv(!self.in_flight()).await? {
                WalEvent::Data(data) => {
                    if let Some(txn) = self.on_data(data).await? {
                        if txn.end_lsn <= self.delivered && !self.delivered.is_zero() {
                            // Sent again after a reconnect; the caller has it already.
                            continue;
                        }
                        self.delivered = self.delivered.max(txn.end_lsn);
                        return Ok(StreamItem::Transaction(txn));
                    }
                }
                WalEvent::Keepalive { end } => {
                    if !self.in_txn && self.open_streams.is_empty() {
                        self.server_end = self.server_end.max(end);
                    }
                    if !self.in_flight() && !self.server_end.is_zero() {
                        return Ok(StreamItem::Idle(self.server_end));
                    }
                }
                // Taken in by `apply_confirmed` at the top of the loop.
                WalEvent::Confirmed => {}
                WalEvent::Reconnected => self.vet_reconnect().await?,
                WalEvent::Interrupted => return Ok(StreamItem::Interrupted),
                WalEvent::End => return Ok(StreamItem::End),
            }
        }
    }

    /// While the caller cannot take the next item (its consumer is behind), keeps the server
    /// hearing from the stream, with whatever was confirmed meanwhile (see
    /// [`WalStream::keep_alive`](walflow_pg::stream::WalStream::keep_alive)). Call it every
    /// second or so between [`next_item`](Self::next_item)s that are far apart.
    pub async fn keep_alive(&mut self) -> Result<(), StreamError> {
        self.apply_confirmed();
        Ok(self.wal.keep_alive().await?)
    }

    /// Whether a whole message is already buffered (the next call will not wait on the
    /// network); callers flush their own output when it is not.
    pub fn has_buffered(&self) -> bool {
        self.wal.has_buffered()
    }

    /// Checks a new connection after a loss the way `open` checked the first: the slot must
    /// still continue what was confirmed. Then forgets what was in flight (the server sends it
    /// again) and lets the stream resume.
    async fn vet_reconnect(&mut self) -> Result<(), StreamError> {
        let confirmed = self.confirmed_lsn();
        let Some(conn) = self.wal.connection_to_vet() else {
            return Ok(());
        };
        let cp = Checkpoint {
            lsn: confirmed,
            identity: self.verified.identity.clone(),
            written_at_ms: 0,
            snapshot: Default::default(),
        };
        let had_checkpoint = !confirmed.is_zero();
        let checked = continuity::check(
            conn,
            &self.source.slot,
            had_checkpoint.then_some(&cp),
            self.options.accept_gap,
        )
        .await;
        match checked {
            Ok(verified) => {
                self.assembler.reset_in_flight();
                self.in_txn = false;
                self.open_streams.clear();
                self.server_end = Lsn::ZERO;
                self.verified.server_version_num = verified.server_version_num;
                self.wal.resume(verified.server_version_num);
                Ok(())
            }
            Err(e) if e.is_retryable() && self.wal.reject(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn on_data(&mut self, frame: WalData) -> Result<Option<Transaction>, StreamError> {
        let WalData { start, end, data } = frame;
        let msg = decode(&data, self.assembler.in_stream()).map_err(AssembleError::from)?;
        self.track(&msg);
        let two_phase = self.two_phase_step(&msg);
        if let Message::Relation(r) = &msg {
            let unknown: Vec<u32> = r
                .columns
                .iter()
                .map(|c| c.type_oid)
                .filter(|oid| self.needs_type(*oid))
                .collect();
            if !unknown.is_empty() {
                self.refresh_types(&unknown).await;
            }
        }
        let txn = self.assembler.push(start, msg)?;
        self.record_two_phase(two_phase, txn.as_ref());
        if !self.in_txn && self.open_streams.is_empty() {
            self.server_end = self.server_end.max(end);
        }
        Ok(txn)
    }

    /// What a two-phase message will do to the holds, read before the assembler consumes it.
    fn two_phase_step(&self, msg: &Message<'_>) -> Option<TwoPhaseStep> {
        match msg {
            Message::Prepare(p) | Message::StreamPrepare(p) => {
                Some(TwoPhaseStep::Prepare(p.gid.to_owned()))
            }
            Message::CommitPrepared(c) => self
                .assembler
                .prepare_lsn_of(c.gid)
                .map(TwoPhaseStep::Commit),
            Message::RollbackPrepared(r) => self
                .assembler
                .prepare_lsn_of(r.gid)
                .map(TwoPhaseStep::Rollback),
            _ => None,
        }
    }

    /// Holds a prepared transaction's position until its changes are acknowledged.
    fn record_two_phase(&self, step: Option<TwoPhaseStep>, txn: Option<&Transaction>) {
        let holds = &self.control.holds;
        match step {
            Some(TwoPhaseStep::Prepare(gid)) => {
                if let Some(lsn) = self.assembler.prepare_lsn_of(&gid) {
                    holds.hold(lsn);
                }
            }
            Some(TwoPhaseStep::Commit(lsn)) => match txn {
                Some(txn) => holds.release_at(lsn, txn.end_lsn),
                None => holds.forget(lsn),
            },
            Some(TwoPhaseStep::Rollback(lsn)) => holds.forget(lsn),
            None => {}
        }
    }

    fn track(&mut self, msg: &Message<'_>) {
        match msg {
            Message::Begin(_) | Message::BeginPrepare(_) => self.in_txn = true,
            Message::Commit(_) | Message::Prepare(_) => self.in_txn = false,
            Message::StreamStart(s) => {
                self.open_streams.insert(s.xid);
            }
            Message::StreamCommit(c) => {
                self.open_streams.remove(&c.xid);
            }
            Message::StreamPrepare(p) => {
                self.open_streams.remove(&p.xid);
            }
            Message::StreamAbort(a) if a.is_top_level() => {
                self.open_streams.remove(&a.xid);
            }
            _ => {}
        }
    }

    fn needs_type(&self, oid: u32) -> bool {
        if self.refreshed_types.contains(&oid) {
            return false;
        }
        match self.assembler.registry().get(oid) {
            None => true,
            Some(info) => info.kind == TypeKind::Other,
        }
    }

    /// Loads types created after connect over a separate SQL connection (the replication
    /// connection cannot run SQL while streaming). On failure the values stay raw text.
    async fn refresh_types(&mut self, oids: &[u32]) {
        self.refreshed_types.extend(oids.iter().copied());
        if self.sql.is_none() {
            match connect_sql_with(&self.opts).await {
                Ok(c) => self.sql = Some(c),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot load new types; their values stay raw text");
                    return;
                }
            }
        }
        let Some(sql) = &self.sql else { return };
        let query = format!("{TYPE_QUERY} WHERE t.oid >= 10000");
        match sql.simple_query(&query).await {
            Ok(messages) => {
                let registry = self.assembler.registry_mut();
                for m in messages {
                    if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
                        let cells: Vec<Option<String>> = (0..row.len())
                            .map(|i| row.get(i).map(str::to_string))
                            .collect();
                        if let Some(info) = type_info(&cells) {
                            registry.insert(info);
                        }
                    }
                }
                tracing::debug!(?oids, "reloaded types");
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot load new types; their values stay raw text");
                self.sql = None;
            }
        }
    }

    /// Ends streaming cleanly: a last status update, CopyDone, and Terminate.
    pub async fn stop(mut self) -> Result<(), StreamError> {
        // What was confirmed through the control since the last read goes out too.
        self.apply_confirmed();
        self.wal.finish().await.map_err(StreamError::from)
    }
}

/// The wire stream's part of `options`, for `source`'s slot and publication.
fn wal_options(source: &SourceConfig, options: &StreamOptions) -> WalOptions {
    WalOptions {
        slot: source.slot.clone(),
        publication: source.publication.clone(),
        status_interval: options.status_interval,
        receive_timeout: options.receive_timeout,
        reconnect: options.reconnect,
        link: options.link.clone(),
    }
}

/// Primary-key columns of tables whose replica identity is FULL (in key order); a table
/// without a primary key has one row with a null column name.
const FULL_IDENTITY_KEYS_QUERY: &str = "SELECT c.oid, a.attname \
     FROM pg_catalog.pg_class c \
     LEFT JOIN pg_catalog.pg_index i ON i.indrelid = c.oid AND i.indisprimary \
     LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (i.indkey) \
     WHERE c.relreplident = 'f' AND c.relkind IN ('r', 'p') \
     ORDER BY c.oid, array_position(i.indkey::int2[], a.attnum)";

/// Under `REPLICA IDENTITY FULL` pgoutput flags every column as part of the key, but the event
/// key (as in Debezium) is the primary key: teach the assembler those tables' primary keys, and
/// that a table without one has no key (as its snapshot rows have none).
async fn load_primary_keys(
    conn: &mut Connection,
    assembler: &mut Assembler,
) -> Result<(), ConnectError> {
    let mut keys: std::collections::BTreeMap<u32, Vec<String>> = Default::default();
    for row in conn.simple_query(FULL_IDENTITY_KEYS_QUERY).await? {
        let (Some(Some(oid)), Some(column)) = (row.first(), row.get(1)) else {
            continue;
        };
        if let Ok(oid) = oid.parse() {
            let key = keys.entry(oid).or_default();
            key.extend(column.clone());
        }
    }
    for (oid, columns) in keys {
        assembler.set_key_columns(oid, Some(columns));
    }
    Ok(())
}

pub(crate) const TYPE_QUERY: &str = "SELECT t.oid, t.typname, t.typtype, t.typbasetype, t.typelem, t.typcategory FROM pg_catalog.pg_type t";

pub(crate) fn type_info(cells: &[Option<String>]) -> Option<TypeInfo> {
    let get = |i: usize| cells.get(i).and_then(|c| c.as_deref());
    let char_at = |i: usize| get(i).and_then(|s| s.chars().next()).unwrap_or(' ');
    Some(TypeInfo::from_catalog(
        get(0)?.parse().ok()?,
        get(1)?,
        char_at(2),
        get(3)?.parse().ok()?,
        get(4)?.parse().ok()?,
        char_at(5),
    ))
}

/// Adds every catalog type the registry does not know (enums, domains, extension types, and
/// built-ins outside its table) over the replication connection before streaming.
async fn load_types(
    conn: &mut Connection,
    registry: &mut TypeRegistry,
    only: Option<&[u32]>,
) -> Result<(), ConnectError> {
    let rows = conn.simple_query(TYPE_QUERY).await?;
    for row in rows {
        if let Some(info) = type_info(&row) {
            let wanted = only.is_none_or(|o| o.contains(&info.oid));
            if wanted && registry.get(info.oid).is_none() {
                registry.insert(info);
            }
        }
    }
    Ok(())
}
