//! The checks of a pipeline that must survive a failover (`failover = true`, PostgreSQL 17+)
//! and of one that decodes from a standby (PostgreSQL 16+).
//!
//! A failover slot is only as good as the standby that keeps its copy: the primary must hold
//! the logical slot back until the standby has the WAL (`synchronized_standby_slots`), and the
//! standby must sync slots (`sync_replication_slots`) and send feedback
//! (`hot_standby_feedback`) over a physical slot. Decoding on a standby needs the same
//! feedback and `wal_level = logical` on both sides. What can be seen from the server walflow
//! connects to is verified; what lives only on the other side is named in the fix.

use super::{Context, QueryError};
use crate::preflight::report::Report;

/// The standby-side settings a failover slot needs, for the fixes.
const STANDBY_SIDE: &str = "on the standby: sync_replication_slots = on, hot_standby_feedback = on, primary_slot_name = '<its physical slot>', and dbname in primary_conninfo";

pub(super) async fn check(ctx: &Context<'_>, report: &mut Report) -> Result<(), QueryError> {
    let standby: bool = ctx
        .client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await?
        .get(0);
    if standby && ctx.version_num >= 160000 {
        decoding_standby(ctx, report).await?;
    }
    if !standby && ctx.version_num >= 170000 {
        waited_for_standbys(ctx, report).await?;
    }
    if ctx.source.failover {
        failover(ctx, report, standby).await?;
    }
    Ok(())
}

/// Logical walsenders wait for every slot `synchronized_standby_slots` names — forever for
/// one that does not exist (a promoted standby keeps its old primary's setting).
async fn waited_for_standbys(ctx: &Context<'_>, report: &mut Report) -> Result<(), QueryError> {
    let missing: Option<String> = ctx
        .client
        .query_one(
            "SELECT string_agg(s, ', ') FROM unnest(string_to_array(
                      replace(current_setting('synchronized_standby_slots'), ' ', ''), ',')) s
              WHERE s <> '' AND s <> '*'
                AND NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = s)",
            &[],
        )
        .await?
        .get(0);
    if let Some(missing) = missing {
        report.fail(
            "standby slots",
            format!("synchronized_standby_slots names {missing}, which does not exist here: walflow would receive nothing while the server waits for it"),
            "ALTER SYSTEM SET synchronized_standby_slots = '<this server's standbys' physical slots>' (or RESET it); SELECT pg_reload_conf();",
        );
    }
    Ok(())
}

/// A standby of 16+ decodes when it keeps the catalog rows decoding needs.
async fn decoding_standby(ctx: &Context<'_>, report: &mut Report) -> Result<(), QueryError> {
    let row = ctx
        .client
        .query_one(
            "SELECT current_setting('hot_standby_feedback')::text,
                    current_setting('primary_slot_name')::text",
            &[],
        )
        .await?;
    let (feedback, physical_slot): (String, String) = (row.get(0), row.get(1));
    if feedback != "on" {
        report.fail(
            "standby decoding",
            "the standby has hot_standby_feedback off: the primary may remove catalog rows decoding needs, and the slot is invalidated (rows_removed)",
            "ALTER SYSTEM SET hot_standby_feedback = on; SELECT pg_reload_conf();  -- on the standby",
        );
    } else if physical_slot.is_empty() {
        report.warn(
            "standby decoding",
            "the standby sends feedback but has no primary_slot_name: its feedback is lost whenever it reconnects",
            "create a physical slot on the primary and set primary_slot_name to it on the standby",
        );
    } else {
        report.ok(
            "standby decoding",
            format!("the standby can decode (hot_standby_feedback on, physical slot \"{physical_slot}\")"),
        );
    }
    if ctx.source.heartbeat_interval.is_some() && ctx.source.heartbeat_url.is_none() {
        report.warn(
            "heartbeat",
            "a standby cannot be written to, so no heartbeats are written and a quiet slot may pin WAL",
            "set heartbeat_url in [source] to the primary's URL",
        );
    }
    Ok(())
}

async fn failover(ctx: &Context<'_>, report: &mut Report, standby: bool) -> Result<(), QueryError> {
    if ctx.version_num < 170000 || standby {
        report.fail(
            "failover slot",
            "failover = true needs a primary running PostgreSQL 17 or newer",
            "connect to the primary of PostgreSQL 17+, or remove failover from [source]",
        );
        return Ok(());
    }
    let row = ctx
        .client
        .query_one(
            "SELECT current_setting('synchronized_standby_slots')::text,
                    (SELECT failover FROM pg_replication_slots WHERE slot_name = $1),
                    (SELECT count(*)::int FROM pg_replication_slots
                      WHERE slot_type = 'physical' AND active AND xmin IS NOT NULL)",
            &[&ctx.source.slot],
        )
        .await?;
    let (synchronized, is_failover, fed): (String, Option<bool>, i32) =
        (row.get(0), row.get(1), row.get(2));
    match is_failover {
        Some(false) => report.warn(
            "failover slot",
            format!("\"{}\" is not a failover slot yet", ctx.source.slot),
            "nothing to do: walflow makes it one at its next start",
        ),
        _ => report.ok(
            "failover slot",
            "the slot is (or will be created as) a failover slot",
        ),
    }
    if synchronized.is_empty() {
        report.fail(
            "failover standby",
            "synchronized_standby_slots is empty: walflow may receive changes the standby does not have yet, and after a promotion the new primary's slot would be behind what walflow confirmed",
            format!("ALTER SYSTEM SET synchronized_standby_slots = '<the standby's physical slot>'; SELECT pg_reload_conf();  -- and {STANDBY_SIDE}"),
        );
    } else if fed == 0 {
        report.warn(
            "failover standby",
            format!("synchronized_standby_slots = '{synchronized}', but no physical slot is active with hot_standby_feedback"),
            STANDBY_SIDE,
        );
    } else {
        report.ok(
            "failover standby",
            format!("synchronized_standby_slots = '{synchronized}', a standby is streaming with feedback (also check {STANDBY_SIDE})"),
        );
    }
    Ok(())
}
