//! Heartbeats: every `heartbeat_interval`, walflow writes a little WAL of its own on the
//! source, so a slot whose captured tables are quiet keeps following the server.
//!
//! On a database whose captured tables are quiet while others are busy — the seed's RDS case —
//! the server's WAL moves on without anything for the slot, and the slot pins it. A write of
//! walflow's own gives the stream something to confirm past. Two kinds:
//! - `heartbeat = "message"` (the default): `pg_logical_emit_message` with walflow's prefix —
//!   no table, no privilege beyond the default EXECUTE. Non-transactional, so it is decoded at
//!   once. Messages with the prefix are never delivered to sinks.
//! - `heartbeat = "table"`: an upsert of one row of `walflow_heartbeat` (beside the signal
//!   table; `walflow setup-sql` creates it); its changes are never delivered either.
//!
//! A standby cannot be written to: with `heartbeat_url` the writes go to the primary, and
//! reach the standby (and its slot) through replication. Read-only sources without it get no
//! heartbeat writes (the slot still follows the server through idle keepalives).

use std::time::Duration;

use crate::snapshot::catalog::split_name;
use walflow_config::{HEARTBEAT_MESSAGE_PREFIX, HeartbeatKind, SourceConfig};

/// The heartbeat table of `source`, if heartbeats are written to one: `(schema, table)`.
pub fn table(source: &SourceConfig) -> Option<(String, String)> {
    if source.heartbeat != HeartbeatKind::Table || target(source).is_none() {
        return None;
    }
    let schema = source
        .signal_table
        .as_deref()
        .map(|t| split_name(t).0)
        .unwrap_or_else(|| "walflow".to_string());
    Some((schema, "walflow_heartbeat".to_string()))
}

/// The server heartbeats are written to: the source, or the primary named by
/// `heartbeat_url`; `None` when no heartbeats are written.
fn target(source: &SourceConfig) -> Option<SourceConfig> {
    source.heartbeat_interval?;
    match &source.heartbeat_url {
        Some(url) => Some(SourceConfig {
            url: url.clone(),
            ..source.clone()
        }),
        None if source.read_only => None,
        None => Some(source.clone()),
    }
}

/// The statement one heartbeat runs, if `source` writes heartbeats.
fn statement(source: &SourceConfig) -> Option<String> {
    match source.heartbeat {
        HeartbeatKind::Message => Some(format!(
            "SELECT pg_catalog.pg_logical_emit_message(false, {}, '')",
            walflow_pg::sql::literal(HEARTBEAT_MESSAGE_PREFIX)
        )),
        HeartbeatKind::Table => table(source).map(|(schema, table)| {
            format!(
                "INSERT INTO {} (id, ts) VALUES (1, now()) ON CONFLICT (id) DO UPDATE SET ts = now()",
                walflow_pg::sql::qualified(&schema, &table)
            )
        }),
    }
}

/// Writes heartbeats until the task is dropped. A missing table or privilege is logged once and
/// retried quietly: heartbeats help, they are never a reason to stop the pipeline.
pub async fn run(source: SourceConfig, every: Duration) {
    let (Some(target), Some(sql)) = (target(&source), statement(&source)) else {
        return;
    };
    let mut client = None;
    let mut warned = false;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if client.is_none() {
            client = walflow_pg::connect_sql(&target).await.ok();
        }
        let Some(c) = &client else { continue };
        match c.batch_execute(&sql).await {
            Ok(()) => warned = false,
            Err(e) => {
                if !warned {
                    tracing::warn!(
                        kind = ?source.heartbeat,
                        error = %crate::snapshot::catalog::sql_error(e),
                        "cannot write the heartbeat; {}",
                        remedy(&source)
                    );
                    warned = true;
                }
                if c.is_closed() {
                    client = None;
                }
            }
        }
    }
}

/// What to do when a heartbeat cannot be written.
fn remedy(source: &SourceConfig) -> &'static str {
    match (source.heartbeat, source.heartbeat_url.is_some()) {
        (HeartbeatKind::Table, _) => {
            "create the table with `walflow setup-sql` and grant INSERT, UPDATE on it"
        }
        (HeartbeatKind::Message, true) => {
            "heartbeat_url must name the primary (a standby cannot be written to), and the role needs EXECUTE on pg_logical_emit_message"
        }
        (HeartbeatKind::Message, false) => {
            "the role needs EXECUTE on pg_logical_emit_message (granted to PUBLIC by default)"
        }
    }
}
