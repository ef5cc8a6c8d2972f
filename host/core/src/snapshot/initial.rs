//! The initial snapshot: every row that exists when the slot is created, read under the
//! snapshot the slot exported, so that rows plus the slot's changes are exactly the database —
//! nothing missed, nothing applied twice.
//!
//! - The replication connection creates the slot with `EXPORT_SNAPSHOT` and stays idle while
//!   every reader imports the snapshot (`SET TRANSACTION SNAPSHOT`); then it is closed and the
//!   stream later starts at the slot's consistent point.
//! - Tables are split into heap page ranges (`ctid` ranges, PostgreSQL 14+ scans them
//!   directly) and read with `COPY … TO STDOUT` by `snapshot_parallelism` connections. Those
//!   are walflow's own protocol connections (as the replication one), whose rows are decoded
//!   straight out of the socket buffer: no task, channel or allocation per row between the
//!   socket and the decoder. One more session, on the same snapshot, answers the catalog
//!   queries and ends before the rows are read.
//! - A table whose columns all have a binary decoder (integers, float8, text types, bytea,
//!   uuid, json/jsonb, numeric, date/time/timestamp, and timestamptz in a UTC session) is read
//!   with `(FORMAT binary)`: the server skips its costliest output functions and the host
//!   parses fixed-width fields, and the values are the ones the text would have given. Any
//!   other column type keeps the whole table in text.
//! - Rows go through the same delivery loop as changes (plugins, encoder, every sink). A chunk
//!   is recorded as done in the checkpoint only once every sink has acknowledged its rows, so a
//!   restart reads only the chunks not yet delivered. A resumed snapshot cannot use the slot's
//!   exported snapshot any more; it reads the rest under a new one, and the stream, which still
//!   starts at the consistent point, replays every later change after it — the final state is
//!   the database's, with a bounded stretch of older states replayed (at-least-once).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use async_trait::async_trait;
use tokio::sync::{mpsc, watch};
use tokio_postgres::Client;

use super::catalog::{self, TableInfo};
use super::copy_binary::{self, BinaryCopy};
use super::copy_text;
use super::progress::Progress;
use crate::checkpoint::{Checkpoint, CheckpointStore, SlotIdentity};
use crate::checkpoint::{ChunkSpec, InitialProgress, SnapshotProgress};
use crate::event::{Event, Lsn, Op, Row, SnapshotMarker, Source};
use crate::metrics::Metrics;
use crate::producer::{Position, Producer, SnapshotRows, Unit};
use crate::replication::continuity::check_creating;
use walflow_config::tables::TableSelector;
use walflow_config::{Config, SnapshotMode, SourceConfig};
use walflow_pg::{ConnectOptions, Connection, SlotSnapshot, connect_sql};

/// Most heap pages per chunk (16 MiB with 8 KiB pages): large enough that a chunk is one
/// cheap scan.
const CHUNK_PAGES: u64 = 2048;

/// Fewest heap pages per chunk of a table split at all (256 KiB).
const MIN_CHUNK_PAGES: u64 = 32;

/// Chunks a large table is split into at least. A stopped or killed snapshot resumes at
/// chunk granularity, so what it repeats is the chunks in flight: with two readers, about
/// 2 / 256 of the table, besides the rows queued for delivery.
const CHUNKS_PER_TABLE: u64 = 256;

/// Pages per chunk of a table of `pages` pages: 1 / [`CHUNKS_PER_TABLE`] of it, between
/// [`MIN_CHUNK_PAGES`] and [`CHUNK_PAGES`] — or `WALFLOW_SNAPSHOT_CHUNK_PAGES` (a knob for
/// tests and benchmarks that need many chunks from a small table).
fn chunk_pages(pages: u64) -> u64 {
    std::env::var("WALFLOW_SNAPSHOT_CHUNK_PAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| (pages / CHUNKS_PER_TABLE).clamp(MIN_CHUNK_PAGES, CHUNK_PAGES))
}

/// Reader messages (up to [`ROWS_PER_UNIT`] rows each) waiting for the coordinator. Rows read
/// but not delivered are read again after a crash: keep this small.
const READS_QUEUED: usize = 4;

/// Rows per unit handed to the delivery loop.
const ROWS_PER_UNIT: usize = 1024;

/// How the initial snapshot phase ended.
#[derive(Debug)]
pub enum Outcome {
    /// No snapshot was needed.
    NotNeeded,
    /// Every row was delivered; stream from this checkpoint.
    Done(Checkpoint),
    /// Stopped before the end (the checkpoint records what is left).
    Stopped,
}

/// Where readers get their snapshot from.
enum SnapshotSource {
    /// The slot's exported snapshot (the replication connection holding it stays open until
    /// every reader imported it).
    Exported(String, Box<Connection>),
    /// A new snapshot, exported by the first reader for the others.
    Fresh,
}

/// A planned snapshot: where it reads from and what.
struct Plan {
    lsn: Lsn,
    identity: SlotIdentity,
    chunks: Vec<ChunkSpec>,
    source: SnapshotSource,
}

/// Starts the initial snapshot when the mode and the checkpoint call for one, or resumes one a
/// previous run left unfinished: its rows, to deliver, and the ledger of its chunks, to follow
/// the acknowledgements. `None` when no snapshot is due.
pub async fn start_if_needed(
    config: &Config,
    store: &CheckpointStore,
    accept_gap: bool,
    metrics: Arc<Metrics>,
) -> anyhow::Result<Option<(Rows, Chunks)>> {
    let Some(plan) = plan_if_needed(config, store, accept_gap).await? else {
        return Ok(None);
    };
    start(config, store, plan, metrics).await.map(Some)
}

/// What to read, when a snapshot is due.
async fn plan_if_needed(
    config: &Config,
    store: &CheckpointStore,
    accept_gap: bool,
) -> anyhow::Result<Option<Plan>> {
    let source = &config.source;
    let checkpoint = store.load()?;
    if source.snapshot == SnapshotMode::Never {
        return Ok(None);
    }
    match checkpoint.as_ref().map(|c| (c, &c.snapshot.initial)) {
        // Resume only what still continues the slot's history; a broken one is reported (or,
        // when accepted, snapshotted afresh) like at any start.
        Some((cp, Some(initial))) => match begin(config, Some(cp), accept_gap).await? {
            Some(fresh) => Ok(Some(fresh)),
            None => {
                tracing::info!(
                    chunks = initial.pending.len(),
                    "resuming the initial snapshot where the last run left it"
                );
                Ok(Some(Plan {
                    lsn: cp.lsn,
                    identity: cp.identity.clone(),
                    chunks: initial.pending.clone(),
                    source: SnapshotSource::Fresh,
                }))
            }
        },
        Some(_) if source.snapshot != SnapshotMode::WhenNeeded => Ok(None),
        _ => begin(config, checkpoint.as_ref(), accept_gap).await,
    }
}

/// Creates (or finds) the slot and decides what to read. `None`: the checkpoint continues the
/// slot's history, so no snapshot is due (`when_needed` with an intact history).
async fn begin(
    config: &Config,
    checkpoint: Option<&Checkpoint>,
    accept_gap: bool,
) -> anyhow::Result<Option<Plan>> {
    let source = &config.source;
    let opts = ConnectOptions::from_source(source)?;
    let mut conn = Connection::connect(&opts, true).await?;
    if source.publication_autocreate != walflow_config::PublicationAutocreate::Disabled {
        conn.ensure_publication(source).await?;
    }
    let when_needed = source.snapshot == SnapshotMode::WhenNeeded;
    let verified = check_creating(
        &mut conn,
        &source.slot,
        checkpoint,
        accept_gap || when_needed,
        SlotSnapshot::Export,
    )
    .await?;
    if checkpoint.is_some() && verified.accepted_gap.is_none() {
        conn.close().await;
        return Ok(None);
    }
    if checkpoint.is_some() {
        tracing::warn!(
            slot = %source.slot,
            "the slot's history is broken; taking a new snapshot because snapshot = \"when_needed\""
        );
    }
    let snapshot = match verified.exported_snapshot.clone() {
        Some(name) => SnapshotSource::Exported(name, Box::new(conn)),
        None => {
            tracing::warn!(
                slot = %source.slot,
                "the slot existed before this snapshot: changes since its position are delivered again after the snapshot"
            );
            conn.close().await;
            SnapshotSource::Fresh
        }
    };
    Ok(Some(Plan {
        lsn: verified.start_lsn,
        identity: verified.identity.clone(),
        chunks: Vec::new(),
        source: snapshot,
    }))
}

/// Opens the sessions, plans the chunks, records them in the checkpoint and sets the readers
/// off.
async fn start(
    config: &Config,
    store: &CheckpointStore,
    mut plan: Plan,
    metrics: Arc<Metrics>,
) -> anyhow::Result<(Rows, Chunks)> {
    let source = &config.source;
    let Sessions { queries, readers } = open_sessions(source, &mut plan.source).await?;
    let registry = catalog::load_registry(&queries).await?;
    let selector = TableSelector::from_source(source)?;
    let version = catalog::server_version(&queries).await?;
    let mut tables = catalog::captured_tables(&queries, source, &selector, &registry).await?;
    let utc = catalog::session_is_utc(&queries).await?;
    // The readers hold the snapshot now: the catalog session is done.
    let _ = queries.batch_execute("COMMIT").await;
    drop(queries);
    for t in &mut tables {
        t.binary = copy_binary::binary_columns(&t.relation, utc);
    }
    if plan.chunks.is_empty() {
        plan.chunks = split(&tables, version, chunk_pages);
    }
    let tables: HashMap<String, Arc<TableInfo>> = tables
        .into_iter()
        .map(|t| (t.qualified_name(), Arc::new(t)))
        .collect();
    plan.chunks
        .retain(|c| tables.contains_key(&c.qualified_name()));
    let mut checkpoint = Checkpoint::new(plan.lsn, plan.identity.clone());
    checkpoint.snapshot = SnapshotProgress {
        initial: Some(InitialProgress {
            lsn: plan.lsn,
            pending: plan.chunks.clone(),
        }),
        incremental: store.load()?.and_then(|c| c.snapshot.incremental),
    };
    store.save_async(checkpoint.clone()).await?;
    tracing::info!(
        tables = tables.len(),
        chunks = plan.chunks.len(),
        readers = readers.len(),
        "initial snapshot started"
    );
    let reads = spawn_readers(readers, &tables, &plan);
    let progress = Progress::new(metrics);
    track_tables(&progress, &tables, &plan.chunks);
    let done_at = Arc::new(Mutex::new(Vec::new()));
    let rows = Rows::new(reads, progress, done_at.clone(), plan.chunks.clone());
    let chunks = Chunks {
        delivered: vec![false; plan.chunks.len()],
        chunks: plan.chunks,
        done_at,
        store: store.clone(),
        checkpoint,
    };
    Ok((rows, chunks))
}

/// The sessions of an initial snapshot, all in repeatable-read transactions on one snapshot.
struct Sessions {
    /// For the catalog queries (an SQL client).
    queries: Client,
    /// One per `snapshot_parallelism`, for the COPYs.
    readers: Vec<Connection>,
}

/// Opens the catalog session and the readers on the same snapshot, then lets the replication
/// connection go (its exported snapshot is imported by then).
async fn open_sessions(
    source: &SourceConfig,
    snapshot: &mut SnapshotSource,
) -> anyhow::Result<Sessions> {
    let queries = connect_sql(source).await?;
    prepare_session(&queries).await?;
    queries
        .batch_execute(BEGIN_SNAPSHOT)
        .await
        .map_err(catalog::sql_error)?;
    let name = match snapshot {
        SnapshotSource::Exported(name, _) => name.clone(),
        SnapshotSource::Fresh => {
            // The catalog session's transaction stays open until every reader imported it.
            let row = queries
                .query_one("SELECT pg_catalog.pg_export_snapshot()", &[])
                .await
                .map_err(catalog::sql_error)?;
            row.get(0)
        }
    };
    let import = format!(
        "SET TRANSACTION SNAPSHOT {}",
        walflow_pg::sql::literal(&name)
    );
    if matches!(snapshot, SnapshotSource::Exported(..)) {
        queries
            .batch_execute(&import)
            .await
            .map_err(catalog::sql_error)
            .context("cannot import the snapshot")?;
    }
    let opts = ConnectOptions::from_source(source)?;
    let mut readers = Vec::with_capacity(source.snapshot_parallelism.max(1));
    for _ in 0..source.snapshot_parallelism.max(1) {
        let mut reader = Connection::connect(&opts, false).await?;
        reader.simple_query(SESSION_SETTINGS).await?;
        reader.simple_query(BEGIN_SNAPSHOT).await?;
        reader
            .simple_query(&import)
            .await
            .context("cannot import the snapshot")?;
        readers.push(reader);
    }
    if let SnapshotSource::Exported(_, conn) = std::mem::replace(snapshot, SnapshotSource::Fresh) {
        conn.close().await;
    }
    Ok(Sessions { queries, readers })
}

/// Session settings under which values print as the replication stream prints them.
const SESSION_SETTINGS: &str = "SET DateStyle = ISO; SET IntervalStyle = postgres; \
     SET extra_float_digits = 3; SET statement_timeout = 0; \
     SET idle_in_transaction_session_timeout = 0";

/// The transaction every snapshot session reads in.
const BEGIN_SNAPSHOT: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

/// Applies [`SESSION_SETTINGS`] to an SQL client.
pub(super) async fn prepare_session(client: &Client) -> anyhow::Result<()> {
    client
        .batch_execute(SESSION_SETTINGS)
        .await
        .map_err(catalog::sql_error)?;
    Ok(())
}

/// Splits each table into page ranges where the server can scan a range directly.
fn split(
    tables: &[TableInfo],
    server_version: u32,
    chunk_pages: impl Fn(u64) -> u64,
) -> Vec<ChunkSpec> {
    let mut chunks = Vec::new();
    for t in tables {
        let chunk_pages = chunk_pages(t.pages);
        let whole = ChunkSpec {
            schema: t.relation.schema.clone(),
            table: t.relation.table.clone(),
            first_page: None,
            end_page: None,
        };
        if t.kind != 'r' || server_version < 140000 || t.pages <= chunk_pages {
            chunks.push(whole);
            continue;
        }
        let mut first = 0;
        while first < t.pages {
            let end = first + chunk_pages;
            chunks.push(ChunkSpec {
                first_page: Some(first),
                // The last range is open: pages added since the size was read are included.
                end_page: (end < t.pages).then_some(end),
                ..whole.clone()
            });
            first = end;
        }
    }
    chunks
}

/// What readers tell the coordinator.
enum Read {
    /// Rows of chunk `usize`.
    Rows(usize, Vec<Event>),
    /// Chunk `usize` is read completely.
    Done(usize),
}

/// Sets one task per reader connection off on the queue of chunks; their rows and finished
/// chunks arrive on the channel returned.
fn spawn_readers(
    readers: Vec<Connection>,
    tables: &HashMap<String, Arc<TableInfo>>,
    plan: &Plan,
) -> mpsc::Receiver<anyhow::Result<Read>> {
    let queue = Arc::new(Mutex::new(
        plan.chunks
            .iter()
            .cloned()
            .enumerate()
            .collect::<VecDeque<_>>(),
    ));
    let (read_tx, read_rx) = mpsc::channel::<anyhow::Result<Read>>(READS_QUEUED);
    let meta = Source {
        db: plan.identity.database.as_str().into(),
        lsn: plan.lsn,
        xid: None,
        commit_time_us: crate::checkpoint::now_ms() * 1000,
        snapshot: SnapshotMarker::True,
        last_commit_lsn: None,
    };
    for reader in readers {
        tokio::spawn(read_chunks(
            reader,
            queue.clone(),
            tables.clone(),
            meta.clone(),
            read_tx.clone(),
        ));
    }
    read_rx
}

fn track_tables(
    progress: &Progress,
    tables: &HashMap<String, Arc<TableInfo>>,
    chunks: &[ChunkSpec],
) {
    for c in chunks {
        let name = c.qualified_name();
        if let Some(t) = tables.get(&name) {
            progress.table(&name, t.rows_estimate, 0);
        }
    }
}

/// One reader: takes chunks off the queue until it is empty.
async fn read_chunks(
    mut reader: Connection,
    queue: Arc<Mutex<VecDeque<(usize, ChunkSpec)>>>,
    tables: HashMap<String, Arc<TableInfo>>,
    meta: Source,
    out: mpsc::Sender<anyhow::Result<Read>>,
) {
    loop {
        let next = queue.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
        let Some((index, chunk)) = next else { break };
        let Some(table) = tables.get(&chunk.qualified_name()) else {
            continue;
        };
        let result = read_chunk(&mut reader, index, &chunk, table, &meta, &out).await;
        let message = match result {
            Ok(()) => Ok(Read::Done(index)),
            Err(e) => Err(e.context(format!("cannot read {}", chunk.qualified_name()))),
        };
        let failed = message.is_err();
        if out.send(message).await.is_err() || failed {
            return;
        }
    }
    let _ = reader.simple_query("COMMIT").await;
    reader.close().await;
}

async fn read_chunk(
    reader: &mut Connection,
    index: usize,
    chunk: &ChunkSpec,
    table: &TableInfo,
    meta: &Source,
    out: &mpsc::Sender<anyhow::Result<Read>>,
) -> anyhow::Result<()> {
    reader.start_copy_out(&copy_statement(chunk, table)).await?;
    let mut binary = BinaryCopy::default();
    let mut rows = Vec::with_capacity(ROWS_PER_UNIT);
    let mut full = Vec::new();
    loop {
        // Every row the socket buffer holds, decoded in place; whole units set aside.
        let done = reader.copy_out_buffered(|message| -> anyhow::Result<()> {
            match &table.binary {
                Some(kinds) => binary.rows(message, kinds, &table.codecs, |row| {
                    rows.push(row_event(table, row, meta))
                })?,
                None => rows.push(row_event(table, text_row(table, message), meta)),
            }
            if rows.len() >= ROWS_PER_UNIT {
                full.push(std::mem::replace(
                    &mut rows,
                    Vec::with_capacity(ROWS_PER_UNIT),
                ));
            }
            Ok(())
        })?;
        for unit in full.drain(..) {
            if out.send(Ok(Read::Rows(index, unit))).await.is_err() {
                return Ok(());
            }
        }
        if done {
            break;
        }
        reader.fill().await?;
    }
    if !rows.is_empty() {
        let _ = out.send(Ok(Read::Rows(index, rows))).await;
    }
    Ok(())
}

/// `COPY` of one chunk, columns in table order.
fn copy_statement(chunk: &ChunkSpec, table: &TableInfo) -> String {
    let name = table.sql_name();
    let columns = table.select_list();
    let only = if table.kind == 'r' { "ONLY " } else { "" };
    let mut conditions = Vec::new();
    if let Some(first) = chunk.first_page {
        conditions.push(format!("ctid >= '({first},0)'::tid"));
    }
    if let Some(end) = chunk.end_page {
        conditions.push(format!("ctid < '({end},0)'::tid"));
    }
    let format = if table.binary.is_some() {
        " (FORMAT binary)"
    } else {
        ""
    };
    if conditions.is_empty() && table.kind == 'r' {
        return format!("COPY {name} ({columns}) TO STDOUT{format}");
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", conditions.join(" AND "))
    };
    format!("COPY (SELECT {columns} FROM {only}{name}{filter}) TO STDOUT{format}")
}

/// The values of one COPY text row.
fn text_row(table: &TableInfo, line: &[u8]) -> Row {
    let mut row: Row = Vec::with_capacity(table.codecs.len());
    row.extend(copy_text::values(line, &table.codecs));
    row
}

/// A snapshot row as an event.
fn row_event(table: &TableInfo, row: Row, meta: &Source) -> Event {
    Event {
        op: Op::Read,
        relation: table.relation.clone(),
        source: meta.clone(),
        before: None,
        after: Some(row),
        topic: None,
        message: None,
    }
}

/// The rows of an initial snapshot as a [`Producer`]: reader output turned into units in the
/// order it arrives, numbered so that acknowledgements name chunks — unit `n` leads to
/// [`Position::Rows`]`(n)`, and a chunk is delivered once the number of the last unit handed out
/// when its reader finished it is acknowledged (see [`Chunks`]). The first and last rows are
/// marked as such.
pub struct Rows {
    reads: mpsc::Receiver<anyhow::Result<Read>>,
    progress: Progress,
    /// Shared with [`Chunks`]: (last unit number, chunk index) of every chunk read in full.
    done_at: Arc<Mutex<Vec<(u64, usize)>>>,
    chunks: Vec<ChunkSpec>,
    /// Chunks of each table not yet read in full, for the progress bars.
    remaining: HashMap<String, usize>,
    /// Units handed out so far.
    handed: u64,
    /// The newest unit, held back until the next one shows it was not the last.
    held: Option<SnapshotRows>,
    first: bool,
}

impl Rows {
    fn new(
        reads: mpsc::Receiver<anyhow::Result<Read>>,
        progress: Progress,
        done_at: Arc<Mutex<Vec<(u64, usize)>>>,
        chunks: Vec<ChunkSpec>,
    ) -> Rows {
        let mut remaining: HashMap<String, usize> = HashMap::new();
        for c in &chunks {
            *remaining.entry(c.qualified_name()).or_default() += 1;
        }
        Rows {
            reads,
            progress,
            done_at,
            chunks,
            remaining,
            handed: 0,
            held: None,
            first: true,
        }
    }

    /// Takes a reader's rows of chunk `index`; returns the unit they push out of hold.
    fn take_rows(&mut self, index: usize, mut events: Vec<Event>) -> Option<SnapshotRows> {
        if self.first
            && let Some(e) = events.first_mut()
        {
            e.source.snapshot = SnapshotMarker::First;
            self.first = false;
        }
        let name = self.chunks[index].qualified_name();
        self.progress.add(&name, events.len() as u64);
        self.handed += 1;
        self.held.replace(SnapshotRows {
            events,
            position: Position::Rows(self.handed),
        })
    }

    /// A reader finished chunk `index`: it is delivered once every unit handed out so far is.
    fn chunk_read(&mut self, index: usize) {
        self.done_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((self.handed, index));
        let name = self.chunks[index].qualified_name();
        if let Some(n) = self.remaining.get_mut(&name) {
            *n -= 1;
            if *n == 0 {
                self.progress.finish(&name);
            }
        }
    }
}

#[async_trait]
impl Producer for Rows {
    async fn next(&mut self) -> anyhow::Result<Option<Unit>> {
        while let Some(read) = self.reads.recv().await {
            match read? {
                Read::Rows(index, events) => {
                    if let Some(ready) = self.take_rows(index, events) {
                        return Ok(Some(Unit::SnapshotRows(ready)));
                    }
                }
                Read::Done(index) => self.chunk_read(index),
            }
        }
        // Every reader is done: what is held is the last unit.
        Ok(self.held.take().map(|mut last| {
            if let Some(e) = last.events.last_mut() {
                e.source.snapshot = SnapshotMarker::Last;
            }
            Unit::SnapshotRows(last)
        }))
    }
}

/// The chunks of an initial snapshot and which of them are delivered: follows the delivery
/// loop's acknowledgements and records delivered chunks in the checkpoint, so a restart reads
/// only the others.
pub struct Chunks {
    chunks: Vec<ChunkSpec>,
    delivered: Vec<bool>,
    done_at: Arc<Mutex<Vec<(u64, usize)>>>,
    store: CheckpointStore,
    checkpoint: Checkpoint,
}

impl Chunks {
    /// Records delivered chunks as acknowledgements arrive, until the delivery loop ends.
    pub async fn follow(&mut self, mut acks: watch::Receiver<Position>) -> anyhow::Result<()> {
        while acks.changed().await.is_ok() {
            let Position::Rows(acked) = *acks.borrow_and_update() else {
                continue;
            };
            if self.mark_delivered(acked) {
                self.save().await?;
            }
        }
        Ok(())
    }

    /// Marks the chunks finished at or before unit `acked`; `true` when that was any.
    fn mark_delivered(&mut self, acked: u64) -> bool {
        let newly: Vec<usize> = {
            let mut done = self.done_at.lock().unwrap_or_else(|p| p.into_inner());
            let (ready, waiting): (Vec<_>, Vec<_>) =
                done.drain(..).partition(|(at, _)| *at <= acked);
            *done = waiting;
            ready.into_iter().map(|(_, i)| i).collect()
        };
        for i in &newly {
            self.delivered[*i] = true;
        }
        !newly.is_empty()
    }

    async fn save(&mut self) -> anyhow::Result<()> {
        let pending = self
            .chunks
            .iter()
            .zip(&self.delivered)
            .filter(|(_, d)| !**d)
            .map(|(c, _)| c.clone())
            .collect();
        if let Some(initial) = self.checkpoint.snapshot.initial.as_mut() {
            initial.pending = pending;
        }
        self.checkpoint.written_at_ms = crate::checkpoint::now_ms();
        self.store.save_async(self.checkpoint.clone()).await?;
        Ok(())
    }

    /// Every row is delivered: records the snapshot as done and returns the checkpoint the
    /// stream starts from.
    pub async fn finish(mut self) -> anyhow::Result<Checkpoint> {
        self.checkpoint.snapshot.initial = None;
        self.checkpoint.written_at_ms = crate::checkpoint::now_ms();
        self.store.save_async(self.checkpoint.clone()).await?;
        tracing::info!("initial snapshot delivered");
        Ok(self.checkpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Relation, Value};

    fn table(pages: u64, kind: char) -> TableInfo {
        TableInfo {
            relation: Relation::one_column("t", "id", "int4", 23),
            primary_key: vec![0],
            kind,
            pages,
            rows_estimate: 0,
            codecs: vec![crate::value::TypeRegistry::new().codec(23)],
            sql_types: vec!["integer".into()],
            binary: None,
        }
    }

    #[test]
    fn large_tables_split_into_page_ranges_with_an_open_end() {
        let chunks = split(&[table(CHUNK_PAGES * 2 + 1, 'r')], 160000, |_| CHUNK_PAGES);
        let ranges: Vec<_> = chunks.iter().map(|c| (c.first_page, c.end_page)).collect();
        assert_eq!(
            ranges,
            vec![
                (Some(0), Some(CHUNK_PAGES)),
                (Some(CHUNK_PAGES), Some(CHUNK_PAGES * 2)),
                (Some(CHUNK_PAGES * 2), None),
            ]
        );
    }

    #[test]
    fn old_servers_and_partitioned_tables_read_whole() {
        assert_eq!(
            split(&[table(CHUNK_PAGES * 4, 'r')], 130000, |_| CHUNK_PAGES).len(),
            1
        );
        assert_eq!(
            split(&[table(CHUNK_PAGES * 4, 'p')], 170000, |_| CHUNK_PAGES).len(),
            1
        );
    }

    #[test]
    fn copy_statements_quote_names_and_bound_ranges() {
        let t = table(10, 'r');
        let whole = split(&[t], 170000, |_| CHUNK_PAGES).remove(0);
        let t = table(10, 'r');
        assert_eq!(
            copy_statement(&whole, &t),
            "COPY \"public\".\"t\" (\"id\") TO STDOUT"
        );
        let range = ChunkSpec {
            first_page: Some(5),
            end_page: Some(9),
            ..whole.clone()
        };
        assert_eq!(
            copy_statement(&range, &t),
            "COPY (SELECT \"id\" FROM ONLY \"public\".\"t\" WHERE ctid >= '(5,0)'::tid AND ctid < '(9,0)'::tid) TO STDOUT"
        );
        let binary = TableInfo {
            binary: copy_binary::binary_columns(&t.relation, false),
            ..t
        };
        assert!(copy_statement(&range, &binary).ends_with(") TO STDOUT (FORMAT binary)"));
        assert!(copy_statement(&whole, &binary).ends_with("\"id\") TO STDOUT (FORMAT binary)"));
    }

    #[test]
    fn rows_decode_like_the_stream() {
        let t = table(1, 'r');
        let meta = Source::default();
        let e = row_event(&t, text_row(&t, b"42\n"), &meta);
        assert_eq!(e.after, Some(vec![Value::Int(42)]));
        let e = row_event(&t, text_row(&t, b"\\N"), &meta);
        assert_eq!(e.after, Some(vec![Value::Null]));
    }
}
