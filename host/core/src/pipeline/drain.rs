//! `walflow drain`: proves, before a major-version upgrade, that the running pipeline has
//! delivered every change the source holds and that the source's writes have stopped — then
//! records a drain marker (`checkpoint::DrainMarker`) the first run after the upgrade trusts.
//!
//! # What counts as delivered: the checkpoint, not `confirmed_flush_lsn`
//!
//! The ledger writes the checkpoint first and confirms to PostgreSQL after (and the
//! confirmation travels with the next status update), so the slot's `confirmed_flush_lsn` only
//! ever trails the checkpoint. The checkpoint is also what the next run resumes from and what
//! the marker vouches for, and after the upgrade the old slot is gone with its position. So the
//! drain waits for the checkpoint in the state directory (run it where `walflow run` runs); the
//! slot is only asked whether a pipeline streams from it (`active`) and belongs to this server.
//!
//! # What counts as a write: a change the pipeline would deliver
//!
//! The WAL position alone cannot tell: it moves with walflow's own heartbeats (a
//! `walflow_heartbeat` upsert, or a `pg_logical_emit_message`), checkpoints, autovacuum and
//! running-transaction records, none of which is a change to deliver. So the drain decodes what
//! the pipeline would decode: a temporary pgoutput slot on the same publication, created when
//! the drain starts and consumed as it waits. Inserts, updates, deletes and truncates of
//! published tables count, except those of walflow's heartbeat table; logical messages never
//! reach it (pgoutput sends them only when asked to). The slot is temporary: it goes away with
//! the drain's session, whatever happens.
//!
//! # When it succeeds
//!
//! When no change has been written for [`QUIET`] and the checkpoint has reached the WAL position
//! taken after the last change seen. It refuses, recording nothing, when changes are still being
//! written as the wait (`--timeout`) ends, when the checkpoint does not get there in time (the
//! pipeline is not keeping up), and when no pipeline streams from the slot. A drain cannot stop
//! writes that start after it: the runbook keeps them stopped until `walflow run` has started
//! against the upgraded server.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::checkpoint::{
    Checkpoint, CheckpointError, CheckpointStore, DrainMarker, DrainMarkerStore, Lsn, now_ms,
};
use crate::error::{Class, Classify};
use crate::snapshot::catalog::sql_error;
use walflow_config::Config;
use walflow_pg::{ConnectError, ConnectOptions, Connection, connect_sql};
use walflow_pgoutput::{Message, decode};

/// How long no change may be written before the source counts as drained: long enough that an
/// application still writing is seen, short enough to wait for.
pub const QUIET: Duration = Duration::from_secs(5);

/// How often the drain looks at the slot, the checkpoint and the source.
const POLL: Duration = Duration::from_millis(250);

/// Most changes read from the drain's slot per look, so a busy source does not fill memory.
const CHANGES_PER_LOOK: i32 = 10_000;

/// How often a drain that sees writes says so.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// `walflow drain`'s options.
#[derive(Debug, Clone)]
pub struct DrainOptions {
    /// The pipeline's configuration file (the running `walflow run`'s).
    pub config: PathBuf,
    /// How long to wait for writes to stop and everything to be delivered (at least twice
    /// [`QUIET`]).
    pub timeout: Duration,
}

/// Why the source was not drained; nothing was recorded.
#[derive(Debug, thiserror::Error)]
pub enum DrainError {
    /// No checkpoint in the state directory.
    #[error(
        "there is no checkpoint for slot \"{slot}\" in [state] dir {dir}, so walflow has delivered nothing from it; run `walflow drain` with the configuration of the running `walflow run`, on its host; nothing was recorded"
    )]
    NoCheckpoint {
        /// Slot.
        slot: String,
        /// State directory.
        dir: PathBuf,
    },
    /// The initial snapshot is not finished.
    #[error(
        "the initial snapshot is not finished ({chunks} chunks left), so not every row is delivered; let `walflow run` finish it, then run `walflow drain` again; nothing was recorded"
    )]
    SnapshotUnfinished {
        /// Chunks left.
        chunks: usize,
    },
    /// The checkpoint belongs to another server.
    #[error(
        "the checkpoint belongs to the server with system identifier {stored}, but the source is {found}; `walflow run` reports how to continue on this server, and `walflow drain` works once it streams from it; nothing was recorded"
    )]
    OtherServer {
        /// In the checkpoint.
        stored: u64,
        /// On the server.
        found: u64,
    },
    /// No pipeline streams from the slot.
    #[error(
        "the pipeline is not running: {why}, so nothing more can be delivered; start `walflow run -c {config}` and run `walflow drain` again; nothing was recorded"
    )]
    NotRunning {
        /// What was found.
        why: String,
        /// The configuration file.
        config: String,
    },
    /// Changes were still being written when the wait ended.
    #[error(
        "writes continue: {changes} changes to captured tables were committed while walflow drain waited {waited:?} (the latest to {table} at {lsn}); stop the application's writes to the source, then run `walflow drain` again; nothing was recorded"
    )]
    WritesContinue {
        /// Changes seen during the drain.
        changes: u64,
        /// The table of the latest.
        table: String,
        /// The WAL position read after the latest.
        lsn: Lsn,
        /// How long the drain waited.
        waited: Duration,
    },
    /// The checkpoint did not reach the drained position in time.
    #[error(
        "the pipeline is not keeping up: writes have stopped, but after {waited:?} its checkpoint is at {checkpoint}, {behind} bytes short of {target}; check `walflow run`'s log and its sinks, then run `walflow drain` again (or with a longer --timeout); nothing was recorded"
    )]
    NotKeepingUp {
        /// The position every change must be delivered up to.
        target: Lsn,
        /// The checkpoint.
        checkpoint: Lsn,
        /// Bytes between them.
        behind: u64,
        /// How long the drain waited.
        waited: Duration,
    },
    /// The drain's own slot could not be created or read.
    #[error(
        "cannot watch the source for writes through a temporary replication slot: {message}; the role needs REPLICATION (RDS: rds_replication) and the server a free slot (max_replication_slots); nothing was recorded"
    )]
    WatchSlot {
        /// The server's answer.
        message: String,
    },
    /// The server could not be asked.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The state directory could not be read or written.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
}

impl Classify for DrainError {
    fn class(&self) -> Class {
        match self {
            DrainError::SnapshotUnfinished { .. } | DrainError::NotKeepingUp { .. } => {
                Class::Transient
            }
            DrainError::Connect(e) => e.class(),
            _ => Class::Fatal,
        }
    }
}

/// `walflow drain -c walflow.toml`: drains and prints what the operator may do now.
pub async fn run(options: &DrainOptions) -> anyhow::Result<()> {
    let config = Config::load(&options.config)?;
    let marker = drain(&config, options)
        .await
        .map_err(|e| crate::error::Error::new(e.class(), e.to_string()))?;
    let path = DrainMarkerStore::new(&config.state.dir, &config.source.slot).path();
    println!(
        "drained: every change up to {} on PostgreSQL {} (system identifier {}, slot \"{}\") is delivered and checkpointed, and writes have stopped; the database may be upgraded now. Keep writes stopped, stop `walflow run`, upgrade, and start `walflow run` again before writes resume: it continues on the upgraded server without a re-snapshot. (drain marker: {})",
        marker.lsn,
        marker.server_version,
        marker.system_id,
        marker.slot,
        path.display()
    );
    Ok(())
}

/// Waits until the running pipeline has delivered everything and writes have stopped, then
/// records the drain marker.
pub async fn drain(config: &Config, options: &DrainOptions) -> Result<DrainMarker, DrainError> {
    let started = Instant::now();
    let deadline = started + options.timeout.max(QUIET * 2);
    let slot = &config.source.slot;
    let store = CheckpointStore::new(&config.state.dir, slot);
    let checkpoint = delivered_so_far(&store, slot, &config.state.dir)?;
    let mut repl = Connection::connect(&ConnectOptions::from_source(&config.source)?, true).await?;
    let system = repl.identify_system().await?;
    if checkpoint.identity.system_id != system.system_id {
        return Err(DrainError::OtherServer {
            stored: checkpoint.identity.system_id,
            found: system.system_id,
        });
    }
    let running = Running {
        slot,
        config: &options.config,
    };
    running.check(&mut repl).await?;
    let client = connect_sql(&config.source).await?;
    let watch = Watch::start(&client, config, deadline - Instant::now()).await?;
    let drained = wait(&watch, &store, &running, &mut repl, deadline, started).await;
    watch.end().await;
    let (lsn, checkpoint_lsn) = drained?;
    let marker = DrainMarker {
        system_id: system.system_id,
        timeline: system.timeline,
        lsn,
        checkpoint_lsn,
        drained_at_ms: now_ms(),
        slot: slot.clone(),
        database: checkpoint.identity.database.clone(),
        server_version: repl.show("server_version").await?,
        server_version_num: repl.server_version_num().await?,
    };
    repl.close().await;
    DrainMarkerStore::new(&config.state.dir, slot).save(&marker)?;
    tracing::info!(lsn = %marker.lsn, checkpoint = %marker.checkpoint_lsn, "drained; recorded the drain marker");
    Ok(marker)
}

/// The checkpoint, when it can vouch for a drain: it exists and no initial snapshot is half done.
fn delivered_so_far(
    store: &CheckpointStore,
    slot: &str,
    dir: &Path,
) -> Result<Checkpoint, DrainError> {
    let checkpoint = store.load()?.ok_or_else(|| DrainError::NoCheckpoint {
        slot: slot.to_string(),
        dir: dir.to_owned(),
    })?;
    if let Some(initial) = &checkpoint.snapshot.initial {
        return Err(DrainError::SnapshotUnfinished {
            chunks: initial.pending.len(),
        });
    }
    Ok(checkpoint)
}

/// Whether a pipeline streams from the slot.
struct Running<'a> {
    slot: &'a str,
    config: &'a Path,
}

impl Running<'_> {
    async fn check(&self, repl: &mut Connection) -> Result<(), DrainError> {
        let why = match repl.slot_info(self.slot).await? {
            None => format!("replication slot \"{}\" does not exist", self.slot),
            Some(info) if !info.active => {
                format!("nothing streams from replication slot \"{}\"", self.slot)
            }
            Some(_) => return Ok(()),
        };
        Err(DrainError::NotRunning {
            why,
            config: self.config.display().to_string(),
        })
    }
}

/// Waits for [`QUIET`] without changes and the checkpoint at the position after the last one:
/// `(drained position, checkpoint)`.
async fn wait(
    watch: &Watch<'_>,
    store: &CheckpointStore,
    running: &Running<'_>,
    repl: &mut Connection,
    deadline: Instant,
    started: Instant,
) -> Result<(Lsn, Lsn), DrainError> {
    let mut target = watch.server_lsn().await?;
    let mut quiet_since = Instant::now();
    let mut writes = Writes::default();
    let mut reported = None::<Instant>;
    loop {
        let now = watch.server_lsn().await?;
        if writes.add(watch.changes_up_to(now).await?) {
            target = now;
            quiet_since = Instant::now();
            if reported.is_none_or(|at| at.elapsed() >= REPORT_EVERY) {
                tracing::info!(changes = writes.changes, table = %writes.table, "changes are still being written to captured tables; waiting for writes to stop");
                reported = Some(Instant::now());
            }
        }
        let checkpoint = store.load()?.map(|c| c.lsn).unwrap_or_default();
        let quiet = quiet_since.elapsed() >= QUIET;
        if quiet && checkpoint >= target {
            return Ok((target, checkpoint));
        }
        if Instant::now() >= deadline {
            let waited = Duration::from_secs(started.elapsed().as_secs());
            return Err(if quiet {
                DrainError::NotKeepingUp {
                    target,
                    checkpoint,
                    behind: target.bytes_since(checkpoint),
                    waited,
                }
            } else {
                writes.refusal(target, waited)
            });
        }
        running.check(repl).await?;
        tokio::time::sleep(POLL).await;
    }
}

/// Changes seen while draining.
#[derive(Debug, Default)]
struct Writes {
    changes: u64,
    table: String,
}

impl Writes {
    /// Counts `seen`; whether there was any.
    fn add(&mut self, seen: Seen) -> bool {
        if seen.changes == 0 {
            return false;
        }
        self.changes += seen.changes;
        self.table = seen.last_table;
        true
    }

    fn refusal(self, lsn: Lsn, waited: Duration) -> DrainError {
        DrainError::WritesContinue {
            changes: self.changes,
            table: self.table,
            lsn,
            waited,
        }
    }
}

/// Changes in one look at the drain's slot.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    changes: u64,
    last_table: String,
}

/// The drain's temporary pgoutput slot on the pipeline's publication.
struct Watch<'a> {
    client: &'a Client,
    slot: String,
    publication: String,
    heartbeat: Option<(String, String)>,
}

impl<'a> Watch<'a> {
    /// Creates the slot; waits at most `timeout` for transactions in flight to end (a slot
    /// cannot start in the middle of them).
    async fn start(
        client: &'a Client,
        config: &Config,
        timeout: Duration,
    ) -> Result<Watch<'a>, DrainError> {
        let watch = Watch {
            client,
            slot: format!("walflow_drain_{}", std::process::id()),
            publication: walflow_pg::sql::ident(&config.source.publication),
            heartbeat: super::heartbeat::table(&config.source),
        };
        let limit = format!("SET statement_timeout = {}", timeout.as_millis().max(1));
        client.batch_execute(&limit).await.map_err(watch_error)?;
        client
            .execute(
                "SELECT pg_catalog.pg_create_logical_replication_slot($1, 'pgoutput', true)",
                &[&watch.slot],
            )
            .await
            .map_err(watch_error)?;
        Ok(watch)
    }

    /// `pg_current_wal_lsn()`.
    async fn server_lsn(&self) -> Result<Lsn, DrainError> {
        let row = self
            .client
            .query_one("SELECT pg_catalog.pg_current_wal_lsn()::text", &[])
            .await
            .map_err(|e| DrainError::Connect(sql_error(e)))?;
        Ok(Lsn::parse(row.get(0)).unwrap_or_default())
    }

    /// Consumes the slot up to `lsn` and counts the changes a pipeline would deliver.
    async fn changes_up_to(&self, lsn: Lsn) -> Result<Seen, DrainError> {
        let rows = self
            .client
            .query(
                "SELECT data FROM pg_catalog.pg_logical_slot_get_binary_changes($1, $2::text::pg_lsn, $3, \
                 'proto_version', '1', 'publication_names', $4)",
                &[&self.slot, &lsn.to_string(), &CHANGES_PER_LOOK, &self.publication],
            )
            .await
            .map_err(watch_error)?;
        let messages = rows.iter().map(|r| r.get::<_, &[u8]>(0));
        Ok(count_changes(messages, self.heartbeat.as_ref()))
    }

    /// Drops the slot (it would go with the session anyway).
    async fn end(self) {
        let dropped = self
            .client
            .execute(
                "SELECT pg_catalog.pg_drop_replication_slot($1)",
                &[&self.slot],
            )
            .await;
        if let Err(e) = dropped {
            tracing::debug!(error = %sql_error(e), "the drain's temporary slot goes with its session");
        }
    }
}

fn watch_error(e: tokio_postgres::Error) -> DrainError {
    match sql_error(e) {
        e @ ConnectError::Broken { .. } => DrainError::Connect(e),
        e => DrainError::WatchSlot {
            message: e.to_string(),
        },
    }
}

/// Counts the row changes and truncated tables in pgoutput `messages`, leaving out those of the
/// `ignored` table (walflow's heartbeat table).
fn count_changes<'m>(
    messages: impl Iterator<Item = &'m [u8]>,
    ignored: Option<&(String, String)>,
) -> Seen {
    let mut relations = std::collections::HashMap::new();
    let mut seen = Seen::default();
    let mut note = |rel_id: u32, relations: &std::collections::HashMap<u32, (String, String)>| {
        let Some((schema, table)) = relations.get(&rel_id) else {
            seen.changes += 1;
            seen.last_table = format!("relation {rel_id}");
            return;
        };
        if ignored.is_some_and(|(s, t)| s == schema && t == table) {
            return;
        }
        seen.changes += 1;
        seen.last_table = format!("{schema}.{table}");
    };
    for data in messages {
        match decode(data, false) {
            Ok(Message::Relation(r)) => {
                relations.insert(r.rel_id, (r.namespace.to_string(), r.name.to_string()));
            }
            Ok(Message::Insert(m)) => note(m.rel_id, &relations),
            Ok(Message::Update(m)) => note(m.rel_id, &relations),
            Ok(Message::Delete(m)) => note(m.rel_id, &relations),
            Ok(Message::Truncate(m)) => m.rel_ids.iter().for_each(|r| note(*r, &relations)),
            Ok(_) => {}
            // What cannot be decoded is counted: better a refused drain than a missed write.
            Err(_) => note(0, &relations),
        }
    }
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relation(rel_id: u32, schema: &str, table: &str) -> Vec<u8> {
        let mut b = vec![b'R'];
        b.extend(rel_id.to_be_bytes());
        b.extend(schema.as_bytes());
        b.push(0);
        b.extend(table.as_bytes());
        b.push(0);
        b.push(b'd'); // replica identity
        b.extend(0u16.to_be_bytes()); // no columns
        b
    }

    fn insert(rel_id: u32) -> Vec<u8> {
        let mut b = vec![b'I'];
        b.extend(rel_id.to_be_bytes());
        b.push(b'N');
        b.extend(0u16.to_be_bytes());
        b
    }

    fn begin() -> Vec<u8> {
        let mut b = vec![b'B'];
        b.extend(0u64.to_be_bytes());
        b.extend(0i64.to_be_bytes());
        b.extend(7u32.to_be_bytes());
        b
    }

    #[test]
    fn heartbeats_are_not_writes_and_everything_else_is() {
        let heartbeat = ("walflow".to_string(), "walflow_heartbeat".to_string());
        let messages = [
            begin(),
            relation(1, "walflow", "walflow_heartbeat"),
            insert(1),
            relation(2, "public", "orders"),
            insert(2),
            insert(2),
            insert(1),
        ];
        let seen = count_changes(messages.iter().map(Vec::as_slice), Some(&heartbeat));
        assert_eq!(
            seen,
            Seen {
                changes: 2,
                last_table: "public.orders".into()
            }
        );
        let only_heartbeats = [relation(1, "walflow", "walflow_heartbeat"), insert(1)];
        let seen = count_changes(only_heartbeats.iter().map(Vec::as_slice), Some(&heartbeat));
        assert_eq!(seen.changes, 0);
        let seen = count_changes(only_heartbeats.iter().map(Vec::as_slice), None);
        assert_eq!(
            seen.changes, 1,
            "without heartbeats, the same table is a write"
        );
    }

    #[test]
    fn refusals_say_what_happened_and_what_to_do() {
        let e = Writes {
            changes: 3,
            table: "public.orders".into(),
        }
        .refusal(Lsn(0x1000), Duration::from_secs(15));
        let text = e.to_string();
        assert!(text.starts_with("writes continue: 3 changes"), "{text}");
        assert!(text.contains("public.orders") && text.contains("stop the application's writes"));
        assert_eq!(e.class(), Class::Fatal);
        let e = DrainError::NotKeepingUp {
            target: Lsn(200),
            checkpoint: Lsn(100),
            behind: 100,
            waited: Duration::from_secs(10),
        };
        assert_eq!(e.class(), Class::Transient);
    }
}
