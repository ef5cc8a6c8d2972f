//! The replication slot: exists (or can be created), is logical pgoutput in this database, is not
//! held by another consumer, has not lost its WAL, and how much WAL it keeps.

use super::report::Report;
use super::{Context, QueryError};
use crate::checkpoint::{Checkpoint, CheckpointStore};
use crate::event::{Lsn, format_lsn};
use walflow_pg::sql::literal;

/// The pipeline's checkpoint for this slot, if any (reporting an unreadable one).
fn load_checkpoint(ctx: &Context<'_>, report: &mut Report) -> Option<Checkpoint> {
    match CheckpointStore::new(ctx.state_dir, &ctx.source.slot).load() {
        Ok(Some(cp)) => {
            report.ok(
                "checkpoint",
                format!("walflow has acknowledged up to {}", format_lsn(cp.lsn)),
            );
            Some(cp)
        }
        Ok(None) => None,
        Err(e) => {
            report.fail(
                "checkpoint",
                e.to_string(),
                "fix or move the checkpoint file in [state] dir",
            );
            None
        }
    }
}

pub(super) async fn check(ctx: &Context<'_>, report: &mut Report) -> Result<(), QueryError> {
    let slot = &ctx.source.slot;
    let wal_status = if ctx.version_num >= 130000 {
        "wal_status::text"
    } else {
        "NULL::text"
    };
    let row = ctx
        .client
        .query_opt(
            &format!(
                "SELECT slot_type::text, plugin::text, database::text, active, active_pid,
                        {wal_status},
                        CASE WHEN pg_is_in_recovery() THEN NULL
                             ELSE pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::int8 END,
                        confirmed_flush_lsn::text
                   FROM pg_replication_slots WHERE slot_name = $1"
            ),
            &[slot],
        )
        .await?;
    let checkpoint = load_checkpoint(ctx, report);
    let Some(row) = row else {
        match checkpoint {
            Some(cp) => report.fail(
                "slot",
                format!(
                    "\"{slot}\" is gone, but walflow has a checkpoint at {} for it: the slot was dropped or the server replaced (an upgrade?), and the changes since are lost to it",
                    format_lsn(cp.lsn)
                ),
                "re-snapshot: move the checkpoint out of [state] dir and run with snapshot = \"initial\" (or run with --accept-gap to continue knowingly)",
            ),
            None => report.ok(
                "slot",
                format!("\"{slot}\" does not exist yet; walflow creates it at its first start"),
            ),
        }
        return Ok(());
    };
    let (kind, plugin, database): (String, Option<String>, Option<String>) =
        (row.get(0), row.get(1), row.get(2));
    let (active, pid): (bool, Option<i32>) = (row.get(3), row.get(4));
    let (status, retained): (Option<String>, Option<i64>) = (row.get(5), row.get(6));
    let confirmed: Option<String> = row.get(7);
    if let (Some(cp), Some(confirmed)) = (&checkpoint, confirmed.as_deref().and_then(Lsn::parse))
        && confirmed > cp.lsn
    {
        report.fail(
            "checkpoint",
            format!(
                "\"{slot}\" is confirmed up to {}, beyond walflow's checkpoint {}: {} bytes of changes were consumed by something else",
                format_lsn(confirmed),
                format_lsn(cp.lsn),
                confirmed - cp.lsn
            ),
            "re-snapshot (move the checkpoint out of [state] dir), or run with --accept-gap; and let only walflow consume this slot",
        );
    }
    let recreate = format!(
        "SELECT pg_drop_replication_slot({s}); SELECT pg_create_logical_replication_slot({s}, 'pgoutput');  -- changes before this are lost: re-snapshot",
        s = literal(slot)
    );
    let current_db: String = ctx
        .client
        .query_one("SELECT current_database()::text", &[])
        .await?
        .get(0);
    if kind != "logical" || plugin.as_deref() != Some("pgoutput") {
        report.fail(
            "slot",
            format!(
                "\"{slot}\" is a {kind} slot with plugin {}; walflow needs a logical pgoutput slot",
                plugin.as_deref().unwrap_or("none")
            ),
            format!("use another slot name in [source] slot, or {recreate}"),
        );
    } else if database.as_deref() != Some(current_db.as_str()) {
        report.fail(
            "slot",
            format!(
                "\"{slot}\" belongs to database \"{}\", not \"{current_db}\"",
                database.unwrap_or_default()
            ),
            "use another slot name in [source] slot, or connect to the slot's database",
        );
    } else if status.as_deref() == Some("lost") {
        report.fail(
            "slot",
            format!("\"{slot}\" has lost WAL it needed (wal_status = lost); its history has a gap"),
            recreate,
        );
    } else if active {
        let pid = pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into());
        report.fail(
            "slot",
            format!("\"{slot}\" is in use by another consumer (pid {pid})"),
            format!(
                "stop that consumer (SELECT pg_terminate_backend({pid});) or use another slot name"
            ),
        );
    } else {
        report.ok(
            "slot",
            format!("\"{slot}\" is a logical pgoutput slot, not in use"),
        );
    }
    if let Some(bytes) = retained {
        let text = format!("\"{slot}\" retains {} of WAL", human_bytes(bytes));
        if bytes > 0 && bytes as u64 > ctx.source.retained_wal_warn_bytes() {
            report.warn(
                "slot WAL",
                format!("{text}, more than retained_wal_warn_mb; the server keeps it until walflow consumes it"),
                format!("run walflow to catch up, or drop an abandoned slot: SELECT pg_drop_replication_slot({});", literal(slot)),
            );
        } else {
            report.ok("slot WAL", text);
        }
    }
    Ok(())
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(bytes: i64) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < units.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn human_bytes() {
        assert_eq!(super::human_bytes(10), "10 bytes");
        assert_eq!(super::human_bytes(1536), "1.5 KiB");
        assert_eq!(super::human_bytes(3 << 30), "3.0 GiB");
    }
}
