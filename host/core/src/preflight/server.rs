//! Server-wide checks: version, standby, wal_level, wal_sender_timeout, slot and sender headroom.

use super::report::Report;
use super::{Context, QueryError};

/// Reports the version; false when it is too old to check further.
pub(super) fn version(report: &mut Report, version_num: u32, version: &str) -> bool {
    if version_num < 100000 {
        report.fail(
            "server version",
            format!("PostgreSQL {version} is too old; walflow needs 10 or newer (pgoutput)"),
            "upgrade the server to PostgreSQL 10 or newer",
        );
        return false;
    }
    report.ok("server version", format!("PostgreSQL {version}"));
    true
}

/// `read_only = true` takes incremental snapshots with `pg_current_snapshot()` (13+).
pub(super) fn read_only_snapshots(
    report: &mut Report,
    source: &walflow_config::SourceConfig,
    version_num: u32,
) {
    if !source.read_only {
        return;
    }
    match crate::snapshot::request::read_only_unsupported(version_num) {
        Some(why) => report.warn(
            "read-only snapshots",
            why,
            "set read_only = false and a signal_table, or upgrade to PostgreSQL 13+",
        ),
        None => report.ok(
            "read-only snapshots",
            "incremental snapshots need no writes (pg_current_snapshot)",
        ),
    }
}

async fn setting(ctx: &Context<'_>, name: &str) -> Result<String, QueryError> {
    Ok(ctx
        .client
        .query_one("SELECT current_setting($1)", &[&name])
        .await?
        .get(0))
}

pub(super) async fn check(ctx: &Context<'_>, report: &mut Report) -> Result<(), QueryError> {
    standby(ctx, report).await?;
    wal_level(ctx, report).await?;
    sender_timeout(ctx, report).await?;
    headroom(ctx, report).await?;
    Ok(())
}

async fn standby(ctx: &Context<'_>, report: &mut Report) -> Result<(), QueryError> {
    let in_recovery: bool = ctx
        .client
        .query_one("SELECT pg_is_in_recovery()", &[])
        .await?
        .get(0);
    let fix = "connect walflow to the primary (on Aurora: the cluster's writer endpoint)";
    if !in_recovery {
        report.ok("primary", "the server is a primary, not a read replica");
    } else if ctx.version_num < 160000 {
        report.fail(
            "primary",
            "the server is a read replica; before PostgreSQL 16 replicas cannot decode logically",
            fix,
        );
    } else {
        report.warn(
            "primary",
            "the server is a read replica; logical decoding there needs hot_standby_feedback and is unavailable on Aurora replicas",
            fix,
        );
    }
    Ok(())
}

async fn wal_level(ctx: &Context<'_>, report: &mut Report) -> Result<(), QueryError> {
    let level = setting(ctx, "wal_level").await?;
    if level == "logical" {
        report.ok("wal_level", "logical");
        return Ok(());
    }
    let fix = if ctx.rds {
        "set rds.logical_replication = 1 in a custom DB cluster parameter group, then reboot the writer"
    } else {
        "ALTER SYSTEM SET wal_level = 'logical';  -- then restart PostgreSQL"
    };
    report.fail(
        "wal_level",
        format!("is \"{level}\"; logical replication needs \"logical\""),
        fix,
    );
    Ok(())
}

async fn sender_timeout(ctx: &Context<'_>, report: &mut Report) -> Result<(), QueryError> {
    let ms: i64 = ctx
        .client
        .query_one(
            "SELECT setting::int8 FROM pg_settings WHERE name = 'wal_sender_timeout'",
            &[],
        )
        .await?
        .get(0);
    let heartbeat = ctx.source.heartbeat_interval;
    let fix_sql = if ctx.rds {
        "set wal_sender_timeout = 0 in the DB cluster parameter group"
    } else {
        "ALTER SYSTEM SET wal_sender_timeout = 0; SELECT pg_reload_conf();"
    };
    match heartbeat {
        _ if ms == 0 => report.ok("wal_sender_timeout", "0 (disabled)"),
        Some(h) if (h.as_millis() as i64) < ms => report.ok(
            "wal_sender_timeout",
            format!("{ms}ms, and heartbeat_interval {h:?} is shorter"),
        ),
        Some(h) => report.warn(
            "wal_sender_timeout",
            format!("{ms}ms is not longer than heartbeat_interval {h:?}; quiet streams may be cut"),
            format!("lower heartbeat_interval below {ms}ms, or {fix_sql}"),
        ),
        None => report.warn(
            "wal_sender_timeout",
            format!("{ms}ms and no heartbeat_interval: quiet databases may see disconnects"),
            format!("set heartbeat_interval = \"10s\" in [source], or {fix_sql}"),
        ),
    }
    Ok(())
}

async fn headroom(ctx: &Context<'_>, report: &mut Report) -> Result<(), QueryError> {
    let row = ctx
        .client
        .query_one(
            "SELECT current_setting('max_replication_slots')::int,
                    (SELECT count(*)::int FROM pg_replication_slots),
                    EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1),
                    current_setting('max_wal_senders')::int,
                    (SELECT count(*)::int FROM pg_stat_replication)",
            &[&ctx.source.slot],
        )
        .await?;
    let (max_slots, used_slots, ours): (i32, i32, bool) = (row.get(0), row.get(1), row.get(2));
    let (max_senders, used_senders): (i32, i32) = (row.get(3), row.get(4));
    let restart = if ctx.rds {
        "raise max_replication_slots in the DB cluster parameter group and reboot"
    } else {
        "ALTER SYSTEM SET max_replication_slots = 10;  -- then restart PostgreSQL"
    };
    if ours || used_slots < max_slots {
        report.ok(
            "replication slots",
            format!("{used_slots} of {max_slots} in use"),
        );
    } else {
        report.fail(
            "replication slots",
            format!(
                "all {max_slots} are in use and none is \"{}\"",
                ctx.source.slot
            ),
            format!("drop an unused slot (SELECT pg_drop_replication_slot('name');) or {restart}"),
        );
    }
    if used_senders < max_senders {
        report.ok(
            "wal senders",
            format!("{used_senders} of {max_senders} in use"),
        );
    } else {
        let sql = if ctx.rds {
            "raise max_wal_senders in the DB cluster parameter group and reboot".to_string()
        } else {
            "ALTER SYSTEM SET max_wal_senders = 10;  -- then restart PostgreSQL".to_string()
        };
        report.fail(
            "wal senders",
            format!("all {max_senders} max_wal_senders are in use"),
            sql,
        );
    }
    Ok(())
}
