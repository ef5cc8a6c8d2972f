//! Heartbeats: every `heartbeat_interval`, walflow updates one row of its heartbeat table
//! (`walflow_heartbeat`, beside the signal table; `walflow setup-sql` creates it).
//!
//! On a database whose captured tables are quiet while others are busy — the seed's RDS case —
//! the server's WAL moves on without anything for the slot, and the slot pins it. A write of
//! walflow's own gives the stream something to confirm past, so the slot keeps following the
//! server. The row's changes are walflow's, never delivered to sinks. Read-only sources get no
//! heartbeat writes (the slot still follows the server through idle keepalives).

use std::time::Duration;

use crate::snapshot::catalog::split_name;
use walflow_config::SourceConfig;

/// The heartbeat table of `source`, if heartbeats are written: `(schema, table)`.
pub fn table(source: &SourceConfig) -> Option<(String, String)> {
    if source.heartbeat_interval.is_none() || source.read_only {
        return None;
    }
    let schema = source
        .signal_table
        .as_deref()
        .map(|t| split_name(t).0)
        .unwrap_or_else(|| "walflow".to_string());
    Some((schema, "walflow_heartbeat".to_string()))
}

/// Writes heartbeats until the task is dropped. A missing table or privilege is logged once and
/// retried quietly: heartbeats help, they are never a reason to stop the pipeline.
pub async fn run(source: SourceConfig, every: Duration) {
    let Some((schema, table)) = table(&source) else {
        return;
    };
    let sql = format!(
        "INSERT INTO {} (id, ts) VALUES (1, now()) ON CONFLICT (id) DO UPDATE SET ts = now()",
        walflow_pg::sql::qualified(&schema, &table)
    );
    let mut client = None;
    let mut warned = false;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        if client.is_none() {
            client = walflow_pg::connect_sql(&source).await.ok();
        }
        let Some(c) = &client else { continue };
        match c.batch_execute(&sql).await {
            Ok(()) => warned = false,
            Err(e) => {
                if !warned {
                    tracing::warn!(
                        table = %format!("{schema}.{table}"),
                        error = %crate::snapshot::catalog::sql_error(e),
                        "cannot write the heartbeat; create the table with `walflow setup-sql` and grant INSERT, UPDATE on it"
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
