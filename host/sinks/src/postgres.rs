//! The `postgres` sink: changes applied to the tables of another PostgreSQL database, a live
//! replica.
//!
//! Every change becomes a statement on the target table of the same name (or in `schema`),
//! located by the target's primary key: inserts and snapshot rows are upserts, updates set the
//! new values (moving the row when its key changed), deletes delete, truncates truncate. The events written
//! since the last flush take effect as if applied in source order, in one target transaction; its commit is
//! the acknowledgement, so a failed flush leaves nothing behind and is simply applied again.
//! Each statement sets a row to a state that does not depend on the row's previous state, so
//! applying a redelivered tail again yields the same tables: the replica is idempotent under
//! redelivery without bookkeeping tables. The exception is a table without any key, matched by
//! whole rows (see `statement`): a redelivered insert there adds the row again.
//!
//! A flush is applied in bulk, because one statement per event is slow (tens of thousands of
//! events per second, the server's per-statement cost). Since every change sets one row to
//! a state of its own, the tables after a run of changes depend only on each key's last change:
//! the flush is cut into segments (`segment`) that keep one final state per (table, key) — an
//! insert, update, delete and reinsert of a key keep the reinsert, a key change deletes the old
//! key and sets the new one, so a chain a→b→c leaves c. A segment ends where order across
//! rows matters: at a truncate (what came before is applied, then the truncate, then the
//! rest), and at an update that left unchanged TOAST values out for a row the segment does
//! not hold (it runs on its own against the target as it is then). Each table of a segment
//! is then applied with a `COPY` of its final rows into a temporary staging table and one
//! merge: a delete of the deleted keys and an `INSERT … SELECT … ON CONFLICT (key) DO UPDATE`
//! of the rest (`bulk`, `statement::stage`); a table with only a few final rows gets single
//! statements, pipelined, instead. Tables are applied in the order of their first change.
//!
//! Bulk application reorders rows within a segment, which only a target with more constraints
//! than its key can notice (a foreign key between replicated tables, another unique index).
//! When a flush fails in bulk for a reason retrying cannot fix, it is applied again event by
//! event in source order, in a new transaction, and only that attempt's failure counts.
//!
//! The target tables must exist with the source's column names; values travel as text and are
//! cast to the target column's type, so compatible types (e.g. `int4` into `int8`) work too.

mod bulk;
mod segment;
mod statement;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use tokio_postgres::types::{ToSql, Type};

use self::statement::{Target, value_text};
use super::{PendingFlush, Sink, SinkBatch, SinkError};
use walflow_config::sinks::PostgresSinkConfig;
use walflow_config::{SourceConfig, SslMode};
use walflow_core::event::{Event, Op, Row, Value};

/// Applies changes to another database: events written are handed to the replica when a flush
/// begins, and applied there in the background while the next ones are written.
pub struct PostgresSink {
    name: String,
    /// Written since the last flush began.
    written: Vec<Event>,
    /// Held by one flush at a time.
    replica: Arc<tokio::sync::Mutex<Replica>>,
}

/// The target database: the connection, what the sink knows about its tables, and the events
/// not yet committed there (a failed flush keeps them for the next).
struct Replica {
    name: String,
    connection: SourceConfig,
    schema: Option<String>,
    client: Option<tokio_postgres::Client>,
    /// Whether a connection ever succeeded (see `connect` for what that changes).
    connected_once: bool,
    targets: HashMap<(String, String), Target>,
    statements: HashMap<String, tokio_postgres::Statement>,
    pending: Vec<Event>,
    /// Statements sent together (pipelined) once their results are not needed one by one.
    queue: Vec<Queued>,
    /// Staging tables created on this connection (see `statement::stage`).
    stages: HashSet<String>,
    /// Staging tables the current transaction has filled.
    staged: HashSet<String>,
}

/// A statement waiting in the pipeline.
struct Queued {
    statement: tokio_postgres::Statement,
    params: Vec<Option<String>>,
    table: String,
}

/// Events written while a background flush runs beyond which writing waits for it: about what
/// a second of writing held before flushes ran in the background (a lower limit splits large
/// flushes, and the bulk path gains most from large ones).
const WRITTEN_LIMIT: usize = 1 << 20;

/// Most statements in flight at once.
const PIPELINE: usize = 512;

impl PostgresSink {
    /// Connects using its settings: `url` (required), `password_env`, `sslmode`, `sslrootcert`,
    /// `schema` (put every table in this schema instead of its source schema).
    pub async fn from_config(config: &PostgresSinkConfig) -> Result<PostgresSink, SinkError> {
        let replica = Replica::from_config(config).await?;
        Ok(PostgresSink {
            name: replica.name.clone(),
            written: Vec::new(),
            replica: Arc::new(tokio::sync::Mutex::new(replica)),
        })
    }
}

impl Replica {
    async fn from_config(config: &PostgresSinkConfig) -> Result<Replica, SinkError> {
        let url = config.url.as_str();
        let connection = SourceConfig {
            url: url.to_owned(),
            password_env: config.password_env.clone(),
            sslmode: config.sslmode.unwrap_or(SslMode::Prefer),
            sslrootcert: config.sslrootcert.clone(),
            ..SourceConfig::default()
        };
        let mut replica = Replica {
            name: format!("postgres:{}", walflow_config::redact::url(url)),
            connection,
            schema: config.schema.clone(),
            client: None,
            connected_once: false,
            targets: HashMap::new(),
            statements: HashMap::new(),
            pending: Vec::new(),
            queue: Vec::new(),
            stages: HashSet::new(),
            staged: HashSet::new(),
        };
        // Unreachable at start stays transient (a later start may succeed); a refused login
        // or a missing database is fatal.
        replica.connect().await?;
        Ok(replica)
    }

    async fn connect(&mut self) -> Result<&tokio_postgres::Client, SinkError> {
        if self.client.as_ref().is_some_and(|c| c.is_closed()) {
            self.client = None;
        }
        if self.client.is_none() {
            let client = walflow_pg::connect_sql(&self.connection)
                .await
                .map_err(|e| {
                    let message = format!(
                        "postgres sink cannot connect to {}: {e}",
                        walflow_config::redact::url(&self.connection.url)
                    );
                    // Before the first connection, a refused login or a missing database is
                    // the configuration's fault: fatal. Once the sink has worked, every
                    // failure to connect is an outage to wait out (a database closed to
                    // connections for maintenance, a password being rotated).
                    if e.is_retryable() || self.connected_once {
                        SinkError::Retryable(message)
                    } else {
                        SinkError::Fatal(message)
                    }
                })?;
            self.statements.clear();
            self.stages.clear();
            self.client = Some(client);
            self.connected_once = true;
        }
        Ok(self.client.as_ref().expect("connected above"))
    }

    /// Applies `events` after those a failed flush left; they stay pending until committed.
    async fn flush(&mut self, events: Vec<Event>) -> Result<(), SinkError> {
        self.pending.extend(events);
        if self.pending.is_empty() {
            return Ok(());
        }
        self.apply_pending().await?;
        self.pending.clear();
        Ok(())
    }

    /// Applies every pending event in one transaction: in bulk, or, when that fails for good,
    /// event by event (a target whose other constraints notice the bulk path's reordering, see
    /// the module docs). The second attempt's failure is the flush's.
    async fn apply_pending(&mut self) -> Result<(), SinkError> {
        let pending = std::mem::take(&mut self.pending);
        let result = match self.transaction(&pending, true).await {
            Err(SinkError::Fatal(e)) => {
                tracing::info!(sink = %self.name, error = %e, "bulk apply failed; applying the flush event by event");
                self.transaction(&pending, false).await
            }
            other => other,
        };
        self.pending = pending;
        result
    }

    /// Applies `events` in one transaction, in bulk or one by one.
    async fn transaction(&mut self, events: &[Event], bulk: bool) -> Result<(), SinkError> {
        self.connect().await?;
        self.execute_simple("BEGIN").await?;
        self.staged.clear();
        let mut result = match bulk {
            true => self.apply_segments(events).await,
            false => self.apply_each(events).await,
        };
        if result.is_ok() {
            result = self.drain().await;
        }
        self.queue.clear();
        if result.is_ok() {
            result = self.execute_simple("COMMIT").await;
        } else if self.client.is_some() {
            let _ = self.execute_simple("ROLLBACK").await;
        }
        if result.is_err() {
            // Staging tables created in the transaction are gone with it.
            self.stages.clear();
        }
        result
    }

    /// Applies `events` one statement each, in order.
    async fn apply_each(&mut self, events: &[Event]) -> Result<(), SinkError> {
        for event in events {
            self.apply(event).await?;
        }
        Ok(())
    }

    async fn execute_simple(&mut self, sql: &str) -> Result<(), SinkError> {
        let client = self.client.as_ref().expect("connected before use");
        client
            .batch_execute(sql)
            .await
            .map_err(|e| self.classify(None, e))
    }

    async fn apply(&mut self, event: &Event) -> Result<(), SinkError> {
        if event.op == Op::Message {
            return Ok(());
        }
        let target = self.target(event).await?;
        match event.op {
            Op::Truncate => {
                self.drain().await?;
                let sql = format!("TRUNCATE {}", target.table);
                self.execute_simple(&sql).await
            }
            Op::Delete => {
                let row = event.before.as_ref().or(event.after.as_ref());
                let found = target.locator(row, event)?;
                let (sql, types) = target.delete(&found.columns);
                self.enqueue(&target, &sql, &types, found.values).await
            }
            Op::Create | Op::Read | Op::Update => self.apply_row(&target, event).await,
            Op::Message => Ok(()),
        }
    }

    /// Upserts the new row, or updates it in place when the source left TOAST values out.
    async fn apply_row(&mut self, target: &Target, event: &Event) -> Result<(), SinkError> {
        let Some(after) = event.after.as_ref() else {
            return Ok(());
        };
        if target.whole_row() {
            return self.apply_whole_row(target, event, after).await;
        }
        let new_key = target.locator(Some(after), event)?;
        let old_key = match (&event.op, &event.before) {
            (Op::Update, Some(before)) => Some(target.locator(Some(before), event)?.values),
            _ => None,
        };
        let (found, new_key) = (new_key.columns, new_key.values);
        let moved = old_key.as_ref().filter(|k| **k != new_key);
        let columns = sent_columns(after);
        let values: Vec<Option<String>> = columns.iter().map(|&i| value_text(&after[i])).collect();
        if columns.len() < after.len() {
            // The source did not send unchanged TOAST values: keep the target's. What to do
            // next depends on the rows this updates, so run it on its own.
            self.drain().await?;
            let (sql, types) = target.update(&columns, &found);
            let mut params = values.clone();
            params.extend(moved.cloned().unwrap_or_else(|| new_key.clone()));
            if self.run(target, &sql, &types, &params).await? > 0 || moved.is_none() {
                return Ok(());
            }
            // Applied before (redelivery): the row already has its new key.
            let mut params = values;
            params.extend(new_key);
            return self.run(target, &sql, &types, &params).await.map(|_| ());
        }
        if let Some(old) = moved {
            let (sql, types) = target.delete(&found);
            self.enqueue(target, &sql, &types, old.clone()).await?;
        }
        let (sql, types) = target.upsert(&columns);
        self.enqueue(target, &sql, &types, values).await
    }

    /// Applies a row change to a table matched by whole rows: an insert inserts, an update
    /// changes one target row equal to the old row (none when a redelivery already did).
    async fn apply_whole_row(
        &mut self,
        target: &Target,
        event: &Event,
        after: &Row,
    ) -> Result<(), SinkError> {
        let columns = sent_columns(after);
        let mut params: Vec<Option<String>> =
            columns.iter().map(|&i| value_text(&after[i])).collect();
        if event.op != Op::Update {
            let (sql, types) = target.insert(&columns);
            return self.enqueue(target, &sql, &types, params).await;
        }
        let old = target.locator(event.before.as_ref(), event)?;
        let (sql, types) = target.update(&columns, &old.columns);
        params.extend(old.values);
        self.enqueue(target, &sql, &types, params).await
    }

    /// The prepared statement for `sql` on the current connection.
    async fn statement(
        &mut self,
        target: &Target,
        sql: &str,
        types: &[Type],
    ) -> Result<tokio_postgres::Statement, SinkError> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let client = self.client.as_ref().expect("connected before use");
        let s = client
            .prepare_typed(sql, types)
            .await
            .map_err(|e| self.classify(Some(&target.table), e))?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    /// Adds a statement to the pipeline, sending it when the pipeline is full.
    async fn enqueue(
        &mut self,
        target: &Target,
        sql: &str,
        types: &[Type],
        params: Vec<Option<String>>,
    ) -> Result<(), SinkError> {
        let statement = self.statement(target, sql, types).await?;
        self.queue.push(Queued {
            statement,
            params,
            table: target.table.clone(),
        });
        if self.queue.len() >= PIPELINE {
            self.drain().await?;
        }
        Ok(())
    }

    /// Sends the queued statements at once; the server runs them in order, one after another.
    async fn drain(&mut self) -> Result<(), SinkError> {
        if self.queue.is_empty() {
            return Ok(());
        }
        let queue = std::mem::take(&mut self.queue);
        let client = self.client.as_ref().expect("connected before use");
        let params: Vec<Vec<&(dyn ToSql + Sync)>> = queue
            .iter()
            .map(|q| q.params.iter().map(|p| p as &(dyn ToSql + Sync)).collect())
            .collect();
        // tokio-postgres sends a request when its future is first polled: poll them once in
        // order so they go out in order, then collect the answers.
        let results: Vec<Result<u64, tokio_postgres::Error>> = {
            let mut calls: Vec<_> = queue
                .iter()
                .zip(&params)
                .map(|(q, p)| Box::pin(client.execute(&q.statement, p)))
                .collect();
            let mut results = Vec::with_capacity(calls.len());
            for f in calls.iter_mut() {
                results.push(match futures::poll!(f.as_mut()) {
                    std::task::Poll::Ready(r) => Some(r),
                    std::task::Poll::Pending => None,
                });
            }
            for (f, slot) in calls.iter_mut().zip(results.iter_mut()) {
                if slot.is_none() {
                    *slot = Some(f.await);
                }
            }
            results
                .into_iter()
                .map(|r| r.expect("every future finished"))
                .collect()
        };
        for (q, result) in queue.iter().zip(results) {
            if let Err(e) = result {
                return Err(self.classify(Some(&q.table), e));
            }
        }
        Ok(())
    }

    /// Runs one statement now and returns the number of rows it touched.
    async fn run(
        &mut self,
        target: &Target,
        sql: &str,
        types: &[Type],
        params: &[Option<String>],
    ) -> Result<u64, SinkError> {
        let statement = self.statement(target, sql, types).await?;
        let params: Vec<&(dyn ToSql + Sync)> =
            params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let client = self.client.as_ref().expect("connected before use");
        client
            .execute(&statement, &params)
            .await
            .map_err(|e| self.classify(Some(&target.table), e))
    }

    /// The target table of `event`, read from the target's catalog once.
    async fn target(&mut self, event: &Event) -> Result<Target, SinkError> {
        let schema = self
            .schema
            .clone()
            .unwrap_or_else(|| event.relation.schema.clone());
        let id = (schema, event.relation.table.clone());
        if let Some(t) = self.targets.get(&id).filter(|t| t.matches(&event.relation)) {
            return Ok(t.clone());
        }
        let client = self.client.as_ref().expect("connected before use");
        let target = Target::load(client, &id.0, &id.1, &event.relation)
            .await
            .map_err(|e| match e {
                statement::LoadError::Sql(e) => self.classify(None, e),
                statement::LoadError::Invalid(m) => SinkError::Fatal(m),
            })?;
        self.targets.insert(id, target.clone());
        Ok(target)
    }

    fn classify(&mut self, table: Option<&str>, e: tokio_postgres::Error) -> SinkError {
        let place = table.map(|t| format!(" on {t}")).unwrap_or_default();
        let Some(db) = e.as_db_error() else {
            self.client = None;
            return SinkError::Retryable(format!("postgres sink lost its connection{place}: {e}"));
        };
        let code = db.code().code();
        let message = format!(
            "postgres sink failed{place}: {} (SQLSTATE {code}){}",
            db.message(),
            db.hint().map(|h| format!("; {h}")).unwrap_or_default()
        );
        // Connection trouble, conflicts, lack of resources, shutdowns: try again.
        if ["08", "40", "53", "55", "57", "58"]
            .iter()
            .any(|class| code.starts_with(class))
        {
            if code.starts_with("57") || code.starts_with("08") {
                self.client = None;
            }
            SinkError::Retryable(message)
        } else {
            SinkError::Fatal(message)
        }
    }
}

/// The columns of `row` the source sent (all but unchanged TOAST values).
fn sent_columns(row: &Row) -> Vec<usize> {
    (0..row.len())
        .filter(|&i| !matches!(row[i], Value::UnchangedToast))
        .collect()
}

#[async_trait]
impl Sink for PostgresSink {
    fn name(&self) -> &str {
        &self.name
    }

    async fn write(&mut self, batch: SinkBatch<'_>) -> Result<(), SinkError> {
        if self.written.len() >= WRITTEN_LIMIT {
            // Waits only while a flush runs: the target is slower than the source, so hold the
            // source back instead of holding ever more events here.
            drop(self.replica.lock().await);
        }
        self.written.extend_from_slice(batch.events);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        let events = std::mem::take(&mut self.written);
        self.replica.lock().await.flush(events).await
    }

    /// Applies what was written so far on a task of its own, so the server's work overlaps
    /// the writing of the next events.
    fn begin_flush(&mut self) -> Option<PendingFlush> {
        tokio::runtime::Handle::try_current().ok()?;
        let events = std::mem::take(&mut self.written);
        let replica = self.replica.clone();
        let task = tokio::spawn(async move { replica.lock().await.flush(events).await });
        Some(Box::pin(async move {
            task.await.unwrap_or_else(|e| {
                Err(SinkError::Fatal(format!(
                    "the postgres sink's flush ended abnormally: {e}"
                )))
            })
        }))
    }
}
