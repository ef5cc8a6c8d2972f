//! Incremental snapshots while streaming (the DBLog watermark method), chunked by primary key.
//!
//! A chunk is read in a repeatable-read transaction that also returns its snapshot
//! (`pg_current_snapshot()`: xmin, xmax, in-progress xids) and, right after, the WAL insert
//! position H. Every transaction the chunk's snapshot sees committed before H, so:
//!
//! - once the stream has passed H, every change the chunk reflects has been streamed, and the
//!   chunk's rows are emitted right there, before any later change;
//! - a streamed transaction the chunk's snapshot does *not* see is newer than the chunk: the
//!   keys it touched are dropped from the chunk (their newer state is already in the stream).
//!   That covers the window between reading and H, and also transactions streamed before the
//!   chunk was read whose commit was not yet visible (a commit record is written before the
//!   transaction becomes visible), which the engine remembers for tables being snapshotted.
//!
//! With a signal table the watermark rows written around each chunk make the stream pass H
//! promptly; read-only, the engine asks the server for its position instead. Progress rides on
//! the acknowledgements: the state after a chunk is checkpointed once something after it is
//! acknowledged by every sink, so a restart resumes at the next chunk.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tokio_postgres::{Client, SimpleQueryMessage};

use super::catalog::{self, TableInfo, split_name};
use super::control::Command;
use super::progress::Progress;
use super::request::{self, Request, Signal, WINDOW_CLOSE, WINDOW_OPEN};
use crate::checkpoint::{IncrementalProgress, IncrementalTable};
use crate::event::{Event, Lsn, Op, Row, SnapshotMarker, Source, Value};
use walflow_pg::backoff::Backoff;

use crate::assemble::Transaction;
use crate::metrics::Metrics;
use crate::producer::{Position, SnapshotRows, Unit};
use crate::replication::stream::StreamControl;
use crate::value::TypeRegistry;
use walflow_config::SourceConfig;
use walflow_config::tables::TableSelector;
use walflow_pg::sql;

/// Consecutive failures to read a table's chunk before its snapshot is given up (logged).
const GIVE_UP_AFTER: u32 = 5;

/// Waits between attempts to read a chunk again, giving up after [`GIVE_UP_AFTER`] in a row.
const READ_RETRY: Backoff = Backoff::new(
    std::time::Duration::from_secs(1),
    std::time::Duration::from_secs(8),
)
.with_limit(Some(GIVE_UP_AFTER - 1));

/// Most remembered transactions (see the module docs); beyond it the oldest are forgotten.
const RING_LIMIT: usize = 200_000;

/// Snapshot progress to checkpoint once the acknowledged LSN reaches `.0`.
pub type Marks = Arc<Mutex<VecDeque<(Lsn, IncrementalProgress)>>>;

/// A transaction's snapshot, as `pg_current_snapshot()` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XidSnapshot {
    xmin: u64,
    xmax: u64,
    running: HashSet<u64>,
}

impl XidSnapshot {
    /// Parses `xmin:xmax:xip,xip…`.
    pub fn parse(text: &str) -> Option<XidSnapshot> {
        let mut parts = text.trim().splitn(3, ':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let running = parts
            .next()
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().ok())
            .collect::<Option<_>>()?;
        Some(XidSnapshot {
            xmin,
            xmax,
            running,
        })
    }

    /// Whether a transaction with this (32-bit, as pgoutput sends it) xid was committed
    /// and visible to this snapshot.
    pub fn sees(&self, xid: u32) -> bool {
        let x = widen(xid, self.xmax);
        x < self.xmin || (x < self.xmax && !self.running.contains(&x))
    }
}

/// The 64-bit xid nearest to `reference` whose low 32 bits are `xid`.
fn widen(xid: u32, reference: u64) -> u64 {
    let candidate = (reference & !0xffff_ffff) | u64::from(xid);
    if candidate > reference.saturating_add(1 << 31) {
        candidate.saturating_sub(1 << 32)
    } else if candidate.saturating_add(1 << 31) < reference {
        candidate + (1 << 32)
    } else {
        candidate
    }
}

/// A record never ends inside a page header, so an insert position just past one is reached
/// when the stream reaches the page's start.
fn record_boundary(lsn: Lsn) -> Lsn {
    Lsn(record_boundary_of(lsn.0))
}

fn record_boundary_of(lsn: u64) -> u64 {
    const PAGE: u64 = 8192;
    const LONG_HEADER: u64 = 40;
    let offset = lsn % PAGE;
    if offset <= LONG_HEADER {
        lsn - offset
    } else {
        lsn
    }
}

/// A chunk read for a window.
#[derive(Debug)]
pub struct Chunk {
    window: u64,
    table: Arc<TableInfo>,
    snapshot: XidSnapshot,
    high: Lsn,
    rows: Vec<(String, Event)>,
    last_key: Option<Vec<String>>,
    max_key: Option<Vec<String>>,
    complete: bool,
}

/// What the chunk reader answers.
#[derive(Debug)]
enum Answer {
    Chunk(Chunk),
    /// The table cannot be snapshotted (gone, no primary key, not captured): drop it.
    Invalid {
        window: u64,
        message: String,
    },
    /// Reading failed (connection lost…): try again.
    Failed {
        window: u64,
        message: String,
    },
}

/// A request to the chunk reader.
#[derive(Debug)]
struct Ask {
    window: u64,
    table: IncrementalTable,
}

/// A transaction the engine remembers: the keys it changed in a table being snapshotted.
#[derive(Debug)]
struct Seen {
    xid: u32,
    table: String,
    keys: Vec<String>,
    truncated: bool,
}

/// Where the current window stands.
#[derive(Debug)]
enum Window {
    /// No chunk asked for.
    Idle,
    /// A chunk is being read.
    Asked(u64),
    /// A chunk waits for the stream to pass its high watermark.
    Ready(Chunk),
}

/// The incremental snapshot engine, driven by the replication reader.
pub struct Incremental {
    signal: Option<(String, String)>,
    progress: IncrementalProgress,
    window: Window,
    next_window: u64,
    ring: VecDeque<Seen>,
    position: Lsn,
    asks: mpsc::Sender<Ask>,
    answers: mpsc::Receiver<Answer>,
    commands: mpsc::Receiver<Command>,
    control: StreamControl,
    marks: Marks,
    bars: Progress,
    /// Windows whose answer is to be thrown away (their table was stopped meanwhile).
    discard: HashSet<u64>,
}

/// Everything the engine is started with.
pub struct Setup {
    /// The source.
    pub source: SourceConfig,
    /// The stream's control (to wake the reader and ask the server for its position).
    pub control: StreamControl,
    /// Where the stream starts.
    pub start_lsn: Lsn,
    /// Progress from the checkpoint.
    pub progress: IncrementalProgress,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Requests from the control socket.
    pub commands: mpsc::Receiver<Command>,
}

impl Incremental {
    /// Starts the engine and its chunk reader. The marks are for the acknowledger.
    pub fn start(setup: Setup) -> anyhow::Result<(Incremental, Marks)> {
        let selector = TableSelector::from_source(&setup.source)?;
        let signal = match (&setup.source.signal_table, setup.source.read_only) {
            (Some(t), _) => Some(split_name(t)),
            (None, _) => None,
        };
        let (ask_tx, ask_rx) = mpsc::channel(1);
        let (answer_tx, answer_rx) = mpsc::channel(1);
        let reader = Reader {
            source: setup.source.clone(),
            selector,
            signal_table: (!setup.source.read_only)
                .then(|| setup.source.signal_table.clone())
                .flatten(),
            chunk_size: setup.source.snapshot_chunk_size.max(1),
            database: walflow_pg::ConnectOptions::from_source(&setup.source)?.dbname,
            session: None,
        };
        tokio::spawn(reader.run(ask_rx, answer_tx, setup.control.clone()));
        let marks = Marks::default();
        let engine = Incremental {
            signal,
            progress: setup.progress,
            window: Window::Idle,
            next_window: 1,
            ring: VecDeque::new(),
            position: setup.start_lsn,
            asks: ask_tx,
            answers: answer_rx,
            commands: setup.commands,
            control: setup.control,
            marks: marks.clone(),
            bars: Progress::new(setup.metrics),
            discard: HashSet::new(),
        };
        if let Some(t) = engine.progress.tables.first() {
            tracing::info!(table = %t.qualified_name(), queued = engine.progress.tables.len(), "resuming the incremental snapshot");
        }
        Ok((engine, marks))
    }

    /// Call before waiting for the stream: takes in answers and requests, emits a chunk the
    /// stream has passed, and asks for the next one. Returns units to deliver now.
    pub fn poll(&mut self) -> Vec<Unit> {
        let mut out = Vec::new();
        while let Ok(command) = self.commands.try_recv() {
            let message = self.apply(command.request, None);
            let _ = command.reply.send(Ok(message));
        }
        while let Ok(answer) = self.answers.try_recv() {
            self.take_answer(answer);
        }
        if let Window::Ready(chunk) = &self.window {
            if self.position >= record_boundary(chunk.high) {
                out.extend(self.emit());
            } else {
                self.control.request_position();
            }
        }
        self.ask_next();
        out
    }

    /// A committed transaction from the stream: signal rows are taken out and acted on; the
    /// waiting chunk is emitted first when the transaction is past its high watermark, else
    /// cleaned of the keys the transaction changed after the chunk's snapshot. Returns units
    /// to deliver before `unit`.
    pub fn on_transaction(&mut self, unit: &mut Transaction) -> Vec<Unit> {
        let signals = self.take_signals(unit);
        let mut out = Vec::new();
        if let Window::Ready(chunk) = &self.window
            && unit.commit_lsn >= record_boundary(chunk.high)
        {
            out.extend(self.emit());
        }
        if let Some(xid) = unit.xid {
            self.remember(xid, &unit.events);
        }
        self.position = self.position.max(unit.end_lsn);
        let mut changed = false;
        for (kind, data) in signals {
            match request::parse_signal(&kind, data.as_deref()) {
                Ok(Signal::Request(r)) => {
                    let message = self.apply(r, Some(unit.end_lsn));
                    tracing::info!(signal = %kind, "{message}");
                    changed = true;
                }
                Ok(Signal::Watermark) => {}
                Err(why) => tracing::warn!(signal = %kind, "skipping a signal row: {why}"),
            }
        }
        if changed {
            self.mark(unit.end_lsn);
        }
        out
    }

    /// The server's position while nothing is in flight.
    pub fn on_idle(&mut self, lsn: Lsn) -> Vec<Unit> {
        self.position = self.position.max(lsn);
        match &self.window {
            Window::Ready(chunk) if lsn >= record_boundary(chunk.high) => self.emit(),
            _ => Vec::new(),
        }
    }

    fn take_signals(&mut self, unit: &mut Transaction) -> Vec<(String, Option<String>)> {
        let Some((schema, table)) = &self.signal else {
            return Vec::new();
        };
        let mut signals = Vec::new();
        unit.events.retain(|e| {
            let is_signal = e.relation.schema == *schema && e.relation.table == *table;
            if is_signal
                && e.op == Op::Create
                && let Some(row) = &e.after
            {
                let get = |name: &str| {
                    e.relation
                        .column_index(name)
                        .and_then(|i| row.get(i))
                        .and_then(text_of)
                };
                if let Some(kind) = get("type") {
                    signals.push((kind, get("data")));
                }
            }
            !is_signal
        });
        signals
    }

    /// Acts on a request; `at` is the LSN of the signal row carrying it, if any.
    fn apply(&mut self, request: Request, at: Option<Lsn>) -> String {
        let message = match request {
            Request::ExecuteSnapshot { tables } => {
                let mut added = Vec::new();
                for t in tables {
                    let (schema, table) = split_name(&t);
                    let name = format!("{schema}.{table}");
                    if !self
                        .progress
                        .tables
                        .iter()
                        .any(|q| q.qualified_name() == name)
                    {
                        self.progress
                            .tables
                            .push(IncrementalTable::new(&schema, &table));
                        added.push(name);
                    }
                }
                format!("incremental snapshot requested: {}", added.join(", "))
            }
            Request::StopSnapshot { tables } => {
                let names: Vec<String> = tables
                    .iter()
                    .map(|t| {
                        let (s, n) = split_name(t);
                        format!("{s}.{n}")
                    })
                    .collect();
                self.progress
                    .tables
                    .retain(|q| !names.is_empty() && !names.contains(&q.qualified_name()));
                if let Window::Asked(w) = self.window {
                    self.discard.insert(w);
                    self.window = Window::Idle;
                }
                if matches!(self.window, Window::Ready(_)) {
                    self.window = Window::Idle;
                }
                "incremental snapshot stopped".to_string()
            }
            Request::PauseSnapshot => {
                self.progress.paused = true;
                "incremental snapshot paused".to_string()
            }
            Request::ResumeSnapshot => {
                self.progress.paused = false;
                "incremental snapshot resumed".to_string()
            }
        };
        if at.is_none() {
            // From the control socket: checkpointed with the next acknowledgement.
            self.mark(Lsn(self.position.0 + 1));
        }
        message
    }

    fn mark(&self, at: Lsn) {
        self.marks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back((at, self.progress.clone()));
    }

    /// Remembers the keys a transaction changed in tables queued for a snapshot, and drops them
    /// from a waiting chunk when its snapshot did not see the transaction.
    fn remember(&mut self, xid: u32, events: &[Event]) {
        if self.progress.tables.is_empty() {
            return;
        }
        for e in events {
            let name = e.relation.qualified_name();
            let Some(pk) = self.primary_key_names(&name) else {
                continue;
            };
            let seen = Seen {
                xid,
                keys: event_keys(e, &pk),
                truncated: e.op == Op::Truncate,
                table: name,
            };
            if let Window::Ready(chunk) = &mut self.window {
                drop_unseen(chunk, &seen);
            }
            self.ring.push_back(seen);
        }
        if self.ring.len() > RING_LIMIT {
            self.ring.pop_front();
        }
    }

    fn primary_key_names(&self, table: &str) -> Option<Vec<String>> {
        if !self
            .progress
            .tables
            .iter()
            .any(|t| t.qualified_name() == table)
        {
            return None;
        }
        match &self.window {
            Window::Ready(c) if c.table.qualified_name() == table => Some(
                c.table
                    .primary_key
                    .iter()
                    .map(|&i| c.table.relation.columns[i].name.clone())
                    .collect(),
            ),
            // Before the table's first chunk its key is not known yet: remember the whole
            // replica identity (the primary key in every case the snapshot accepts).
            _ => Some(Vec::new()),
        }
    }

    fn take_answer(&mut self, answer: Answer) {
        let window = match &answer {
            Answer::Chunk(c) => c.window,
            Answer::Invalid { window, .. } | Answer::Failed { window, .. } => *window,
        };
        if self.discard.remove(&window) || !matches!(self.window, Window::Asked(w) if w == window) {
            return;
        }
        self.window = Window::Idle;
        match answer {
            Answer::Chunk(mut chunk) => {
                self.prune(&chunk.snapshot);
                for seen in &self.ring {
                    drop_unseen(&mut chunk, seen);
                }
                self.window = Window::Ready(chunk);
            }
            Answer::Invalid { message, .. } => {
                tracing::warn!("skipping an incremental snapshot request: {message}");
                if !self.progress.tables.is_empty() {
                    self.progress.tables.remove(0);
                }
                self.mark(Lsn(self.position.0 + 1));
            }
            Answer::Failed { message, .. } => {
                tracing::warn!(error = %message, "reading a snapshot chunk failed; trying again");
            }
        }
    }

    /// Forgets transactions every later snapshot sees.
    fn prune(&mut self, snapshot: &XidSnapshot) {
        while let Some(front) = self.ring.front() {
            if widen(front.xid, snapshot.xmax) < snapshot.xmin {
                self.ring.pop_front();
            } else {
                break;
            }
        }
    }

    fn ask_next(&mut self) {
        if !matches!(self.window, Window::Idle) || self.progress.paused {
            return;
        }
        let Some(table) = self.progress.tables.first().cloned() else {
            return;
        };
        let window = self.next_window;
        if self.asks.try_send(Ask { window, table }).is_ok() {
            self.next_window += 1;
            self.window = Window::Asked(window);
        }
    }

    /// Emits the waiting chunk at the current position and records the progress it makes.
    fn emit(&mut self) -> Vec<Unit> {
        let Window::Ready(chunk) = std::mem::replace(&mut self.window, Window::Idle) else {
            return Vec::new();
        };
        let name = chunk.table.qualified_name();
        let Some(current) = self.progress.tables.first_mut() else {
            return Vec::new();
        };
        if current.qualified_name() != name {
            return Vec::new();
        }
        let rows = chunk.rows.len() as u64;
        self.bars
            .table(&name, chunk.table.rows_estimate, current.rows);
        current.rows += rows;
        current.last_key = chunk.last_key.clone();
        current.max_key = chunk.max_key.clone();
        self.bars.add(&name, rows);
        if chunk.complete {
            tracing::info!(table = %name, rows = current.rows, "incremental snapshot of table done");
            self.bars.finish(&name);
            self.progress.tables.remove(0);
        }
        self.mark(Lsn(self.position.0 + 1));
        let events: Vec<Event> = chunk
            .rows
            .into_iter()
            .map(|(_, mut e)| {
                e.source.lsn = self.position;
                e
            })
            .collect();
        if events.is_empty() {
            return Vec::new();
        }
        vec![Unit::SnapshotRows(SnapshotRows {
            events,
            position: Position::Lsn(self.position),
        })]
    }
}

/// Drops from `chunk` the keys a transaction its snapshot did not see changed.
fn drop_unseen(chunk: &mut Chunk, seen: &Seen) {
    if seen.table != chunk.table.qualified_name() || chunk.snapshot.sees(seen.xid) {
        return;
    }
    if seen.truncated {
        chunk.rows.clear();
        return;
    }
    if seen.keys.is_empty() {
        return;
    }
    chunk.rows.retain(|(k, _)| !seen.keys.contains(k));
}

/// The keys (before and after) an event touched, by the named columns (or the event's key
/// columns when `names` is empty).
fn event_keys(e: &Event, names: &[String]) -> Vec<String> {
    let mut indices: Vec<usize> = if names.is_empty() {
        e.relation.key_indices().collect()
    } else {
        names
            .iter()
            .filter_map(|n| e.relation.column_index(n))
            .collect()
    };
    indices.sort_unstable();
    if indices.is_empty() {
        return Vec::new();
    }
    [&e.before, &e.after]
        .into_iter()
        .flatten()
        .map(|row| key_string(row, &indices))
        .collect()
}

/// A key as a comparable string (values decode the same from the stream and from a chunk);
/// `indices` in column order on both sides.
fn key_string(row: &Row, indices: &[usize]) -> String {
    let values: Vec<&Value> = indices.iter().filter_map(|&i| row.get(i)).collect();
    format!("{values:?}")
}

fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::Text(s) => Some(s.clone()),
        other => Some(format!("{other:?}")),
    }
}

/// Reads chunks on its own connection.
struct Reader {
    source: SourceConfig,
    selector: TableSelector,
    /// The signal table to write watermarks to (`None` when read-only).
    signal_table: Option<String>,
    chunk_size: usize,
    /// The database name events carry.
    database: String,
    session: Option<Session>,
}

struct Session {
    client: Client,
    registry: TypeRegistry,
    version: u32,
}

impl Reader {
    async fn run(
        mut self,
        mut asks: mpsc::Receiver<Ask>,
        answers: mpsc::Sender<Answer>,
        control: StreamControl,
    ) {
        let mut failures = 0u32;
        while let Some(ask) = asks.recv().await {
            let answer = match self.read(&ask).await {
                Ok(a) => {
                    failures = 0;
                    a
                }
                Err(e) if READ_RETRY.exhausted(failures + 1) => {
                    failures = 0;
                    Answer::Invalid {
                        window: ask.window,
                        message: format!(
                            "reading {} failed {GIVE_UP_AFTER} times in a row, last with: {e:#}",
                            ask.table.qualified_name()
                        ),
                    }
                }
                Err(e) => {
                    failures += 1;
                    self.session = None;
                    tokio::time::sleep(READ_RETRY.delay(failures)).await;
                    Answer::Failed {
                        window: ask.window,
                        message: format!("{e:#}"),
                    }
                }
            };
            if answers.send(answer).await.is_err() {
                return;
            }
            control.interrupt();
        }
    }

    async fn session(&mut self) -> anyhow::Result<&Session> {
        if self.session.is_none() {
            let client = walflow_pg::connect_sql(&self.source).await?;
            super::initial::prepare_session(&client).await?;
            let registry = catalog::load_registry(&client).await?;
            let version = catalog::server_version(&client).await?;
            self.session = Some(Session {
                client,
                registry,
                version,
            });
        }
        Ok(self.session.as_ref().expect("just set"))
    }

    async fn read(&mut self, ask: &Ask) -> anyhow::Result<Answer> {
        let (source, selector) = (self.source.clone(), self.selector.clone());
        let (chunk_size, signal_table) = (self.chunk_size, self.signal_table.clone());
        let database = self.database.clone();
        let session = self.session().await?;
        let name = ask.table.qualified_name();
        let invalid = |message: String| Answer::Invalid {
            window: ask.window,
            message,
        };
        if source.read_only
            && let Some(why) = request::read_only_unsupported(session.version)
        {
            return Ok(invalid(why));
        }
        let checked = request::check_table(
            &session.client,
            &source,
            &selector,
            (&session.registry, session.version),
            &name,
        )
        .await?;
        let info = match checked {
            Ok(info) => Arc::new(info),
            Err(why) => return Ok(invalid(why)),
        };
        let watermark = serde_json::json!({"window": ask.window, "table": name}).to_string();
        if let Some(signal) = &signal_table {
            request::write_signal(&session.client, signal, WINDOW_OPEN, &watermark).await?;
        }
        let chunk = read_chunk(session, &info, ask, chunk_size, &database).await?;
        if let Some(signal) = &signal_table {
            request::write_signal(&session.client, signal, WINDOW_CLOSE, &watermark).await?;
        }
        Ok(Answer::Chunk(chunk))
    }
}

/// Reads one chunk with its snapshot and high watermark.
async fn read_chunk(
    session: &Session,
    info: &Arc<TableInfo>,
    ask: &Ask,
    chunk_size: usize,
    database: &str,
) -> anyhow::Result<Chunk> {
    let client = &session.client;
    let snapshot_fn = if session.version >= 130000 {
        "pg_catalog.pg_current_snapshot()"
    } else {
        "pg_catalog.txid_current_snapshot()"
    };
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(catalog::sql_error)?;
    let result = async {
        let snapshot_text = scalar(client, &format!("SELECT {snapshot_fn}::text")).await?;
        let snapshot = XidSnapshot::parse(&snapshot_text)
            .ok_or_else(|| anyhow::anyhow!("unexpected snapshot {snapshot_text:?}"))?;
        let max_key = match &ask.table.max_key {
            Some(k) => Some(k.clone()),
            None => max_key(client, info).await?,
        };
        let rows = match &max_key {
            Some(max) => rows(client, info, ask.table.last_key.as_deref(), max, chunk_size).await?,
            None => Vec::new(),
        };
        let high = scalar(
            client,
            "SELECT pg_catalog.pg_current_wal_insert_lsn()::text",
        )
        .await?;
        let high = Lsn::parse(&high).ok_or_else(|| anyhow::anyhow!("unexpected LSN {high:?}"))?;
        Ok::<_, anyhow::Error>((snapshot, max_key, rows, high))
    }
    .await;
    let _ = client.batch_execute("COMMIT").await;
    let (snapshot, max_key, texts, high) = result?;
    let last_key = texts.last().map(|r| key_texts(r, &info.primary_key));
    let complete = texts.len() < chunk_size || last_key.is_none() || last_key == max_key;
    tracing::debug!(
        table = %info.qualified_name(),
        rows = texts.len(),
        ?last_key,
        ?max_key,
        complete,
        high = %high,
        "read a snapshot chunk"
    );
    let meta = Source {
        db: database.into(),
        lsn: Lsn::ZERO,
        xid: None,
        commit_time_us: crate::checkpoint::now_ms() * 1000,
        snapshot: SnapshotMarker::Incremental,
        last_commit_lsn: None,
    };
    let mut key_columns = info.primary_key.clone();
    key_columns.sort_unstable();
    let rows = texts
        .iter()
        .map(|r| {
            let row: Row = r
                .iter()
                .zip(&info.codecs)
                .map(|(t, codec)| t.as_deref().map_or(Value::Null, |t| codec.decode(t)))
                .collect();
            let key = key_string(&row, &key_columns);
            let event = Event {
                op: Op::Read,
                relation: info.relation.clone(),
                source: meta.clone(),
                before: None,
                after: Some(row),
                topic: None,
                message: None,
            };
            (key, event)
        })
        .collect();
    Ok(Chunk {
        window: ask.window,
        table: info.clone(),
        snapshot,
        high,
        rows,
        last_key,
        max_key,
        complete,
    })
}

fn key_texts(row: &[Option<String>], pk: &[usize]) -> Vec<String> {
    pk.iter()
        .map(|&i| row.get(i).cloned().flatten().unwrap_or_default())
        .collect()
}

/// `(a, b)` compared with typed literals.
fn key_tuple(info: &TableInfo, key: &[String]) -> String {
    let values: Vec<String> = info
        .primary_key
        .iter()
        .zip(key)
        .map(|(&i, v)| format!("{}::{}", sql::literal(v), info.sql_types[i]))
        .collect();
    format!("({})", values.join(", "))
}

async fn max_key(client: &Client, info: &TableInfo) -> anyhow::Result<Option<Vec<String>>> {
    // The simple query protocol returns text, so the key columns are selected as they are (a
    // `::text` cast here would make ORDER BY sort the text).
    let descending: Vec<String> = info
        .primary_key
        .iter()
        .map(|&i| format!("{} DESC", sql::ident(&info.relation.columns[i].name)))
        .collect();
    let sql = format!(
        "SELECT {} FROM {} ORDER BY {} LIMIT 1",
        info.key_list(),
        info.sql_name(),
        descending.join(", ")
    );
    let rows = text_rows(client, &sql).await?;
    Ok(rows
        .into_iter()
        .next()
        .map(|r| r.into_iter().map(Option::unwrap_or_default).collect()))
}

async fn rows(
    client: &Client,
    info: &TableInfo,
    after: Option<&[String]>,
    max: &[String],
    limit: usize,
) -> anyhow::Result<Vec<Vec<Option<String>>>> {
    let keys = info.key_list();
    let mut conditions = vec![format!("({keys}) <= {}", key_tuple(info, max))];
    if let Some(after) = after {
        conditions.push(format!("({keys}) > {}", key_tuple(info, after)));
    }
    let sql = format!(
        "SELECT {} FROM {} WHERE {} ORDER BY {keys} LIMIT {limit}",
        info.select_list(),
        info.sql_name(),
        conditions.join(" AND ")
    );
    text_rows(client, &sql).await
}

async fn scalar(client: &Client, sql: &str) -> anyhow::Result<String> {
    text_rows(client, sql)
        .await?
        .into_iter()
        .next()
        .and_then(|r| r.into_iter().next().flatten())
        .ok_or_else(|| anyhow::anyhow!("{sql} returned nothing"))
}

async fn text_rows(client: &Client, sql: &str) -> anyhow::Result<Vec<Vec<Option<String>>>> {
    let messages = client.simple_query(sql).await.map_err(catalog::sql_error)?;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                (0..row.len())
                    .map(|i| row.get(i).map(str::to_string))
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_parse_and_judge_visibility() {
        let s = XidSnapshot::parse("100:110:102,105").unwrap();
        assert!(s.sees(99));
        assert!(s.sees(101));
        assert!(!s.sees(102));
        assert!(!s.sees(105));
        assert!(s.sees(109));
        assert!(!s.sees(110));
        assert!(!s.sees(200));
        assert_eq!(XidSnapshot::parse("5:5:").unwrap().running.len(), 0);
        assert!(XidSnapshot::parse("x:1:").is_none());
    }

    #[test]
    fn xids_widen_across_the_epoch() {
        let reference = (3u64 << 32) | 10;
        assert_eq!(widen(5, reference), (3 << 32) | 5);
        assert_eq!(
            widen(u32::MAX - 2, reference),
            (2 << 32) | u64::from(u32::MAX - 2)
        );
        let s =
            XidSnapshot::parse(&format!("{}:{}:", (3u64 << 32) | 1, (3u64 << 32) | 20)).unwrap();
        assert!(s.sees(u32::MAX - 2), "an xid of the previous epoch is old");
        assert!(!s.sees(25));
    }

    #[test]
    fn positions_just_past_a_page_header_round_down() {
        assert_eq!(record_boundary(Lsn(0x2000 + 24)), Lsn(0x2000));
        assert_eq!(record_boundary(Lsn(0x2000 + 40)), Lsn(0x2000));
        assert_eq!(record_boundary(Lsn(0x2000 + 41)), Lsn(0x2000 + 41));
    }
}
