//! Watches the slot from the server's side while the pipeline runs: the WAL it retains, how
//! close it is to being lost, and whether the server invalidated it.
//!
//! A slot that falls behind pins WAL until the disk fills, or — with
//! `max_slot_wal_keep_size` — is invalidated and its history lost; both happen quietly on the
//! server. Every [`EVERY`], this reads the slot's standing ([`walflow_pg::slot_health`]) into
//! the metrics and logs a warning when it crosses `retained_wal_warn_mb`, when the server
//! says the slot is about to lose WAL (`wal_status = unreserved`), and an error when it was
//! invalidated. Like heartbeats, watching helps and is never a reason to stop the pipeline:
//! a failed reading is logged once and retried.

use std::sync::Arc;
use std::time::Duration;

use walflow_config::SourceConfig;
use walflow_pg::slot_health::{self, SlotHealth};

use crate::metrics::Metrics;
use crate::preflight::human_bytes;

/// How often the slot is read.
pub const EVERY: Duration = Duration::from_secs(5);

/// While over the threshold, the warning is repeated this many readings apart (5 minutes).
const REPEAT_EVERY: u32 = 60;

/// Reads the slot's standing until the task is dropped.
pub async fn run(source: SourceConfig, metrics: Arc<Metrics>) {
    let threshold = source.retained_wal_warn_bytes();
    let mut warnings = Warnings::default();
    let mut client = None;
    let mut failed = false;
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match read(&source, &mut client).await {
            Ok(Some(health)) => {
                failed = false;
                metrics.set_slot_health(&health, threshold);
                warnings.note(&source.slot, &health, threshold);
            }
            Ok(None) => {}
            Err(e) => {
                if !failed {
                    tracing::warn!(slot = %source.slot, error = %e, "cannot read the slot's standing from pg_replication_slots; retrying");
                    failed = true;
                }
                client = None;
            }
        }
    }
}

/// One reading, connecting first when needed.
async fn read(
    source: &SourceConfig,
    client: &mut Option<(tokio_postgres::Client, u32)>,
) -> anyhow::Result<Option<SlotHealth>> {
    if client.is_none() {
        let c = walflow_pg::connect_sql(source).await?;
        let version: i32 = c
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await?
            .get(0);
        *client = Some((c, version as u32));
    }
    let Some((c, version)) = client.as_ref() else {
        return Ok(None);
    };
    Ok(slot_health::read(c, &source.slot, *version).await?)
}

/// What was said already, so each condition is logged when it starts (and, while retained
/// WAL stays over the threshold, every [`REPEAT_EVERY`] readings).
#[derive(Debug, Default)]
struct Warnings {
    over_for: Option<u32>,
    unreserved: bool,
    invalidated: bool,
}

impl Warnings {
    fn note(&mut self, slot: &str, health: &SlotHealth, threshold: u64) {
        let retained = health.retained_bytes.unwrap_or(0);
        self.retained(slot, retained, health, threshold);
        let status = health.wal_status.as_deref();
        let unreserved = status == Some("unreserved");
        if unreserved && !self.unreserved {
            tracing::warn!(
                slot,
                retained = %human_bytes(retained),
                "the slot is about to lose wal it needs (wal_status = unreserved); walflow must catch up before the next checkpoint, or raise max_slot_wal_keep_size"
            );
        }
        self.unreserved = unreserved;
        let invalidated = status == Some("lost") || health.invalidation_reason.is_some();
        if invalidated && !self.invalidated {
            tracing::error!(
                slot,
                reason = health
                    .invalidation_reason
                    .as_deref()
                    .unwrap_or("wal_removed"),
                "the server invalidated the slot; its history has a gap, and the next start refuses to continue it"
            );
        }
        self.invalidated = invalidated;
    }

    fn retained(&mut self, slot: &str, retained: i64, health: &SlotHealth, threshold: u64) {
        if retained <= 0 || (retained as u64) <= threshold {
            if self.over_for.take().is_some() {
                tracing::info!(slot, retained = %human_bytes(retained), "the slot's retained wal is back under retained_wal_warn_mb");
            }
            return;
        }
        let readings = self.over_for.map_or(0, |n| n + 1);
        self.over_for = Some(readings);
        if readings.is_multiple_of(REPEAT_EVERY) {
            tracing::warn!(
                slot,
                retained = %human_bytes(retained),
                threshold = %human_bytes(threshold.min(i64::MAX as u64) as i64),
                safe_wal_size = %health.safe_wal_size.map_or("unlimited".to_string(), human_bytes),
                "the slot retains more wal than retained_wal_warn_mb; the server keeps it until walflow confirms past it: check that walflow keeps up and its sinks are healthy"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health(retained: i64, status: &str) -> SlotHealth {
        SlotHealth {
            retained_bytes: Some(retained),
            safe_wal_size: Some(1 << 20),
            wal_status: Some(status.into()),
            invalidation_reason: None,
        }
    }

    #[test]
    fn over_threshold_is_counted_from_the_crossing_and_reset_below_it() {
        let mut w = Warnings::default();
        w.note("s", &health(10, "reserved"), 100);
        assert_eq!(w.over_for, None);
        w.note("s", &health(200, "reserved"), 100);
        w.note("s", &health(300, "extended"), 100);
        assert_eq!(w.over_for, Some(1));
        w.note("s", &health(50, "reserved"), 100);
        assert_eq!(w.over_for, None);
        w.note("s", &health(50, "lost"), 100);
        assert!(w.invalidated);
    }
}
