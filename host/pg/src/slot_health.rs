//! How a slot stands on the server: the WAL it retains, how much more the server may write
//! before the slot is lost (`safe_wal_size`), its `wal_status`, and why it was invalidated.
//!
//! These are what an operator watches to catch a slot before it fills the disk or is
//! invalidated by `max_slot_wal_keep_size` — the outages CDC users report most. Read over an
//! ordinary SQL connection, version by version (`wal_status` and `safe_wal_size` are 13+,
//! `conflicting` 16, `invalidation_reason` 17+); on a standby the server's position is the
//! last replayed one.

use crate::sql::literal;

/// A slot's standing, from `pg_replication_slots`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SlotHealth {
    /// The server's WAL position minus the slot's `restart_lsn`: WAL kept for the slot.
    pub retained_bytes: Option<i64>,
    /// `safe_wal_size`: WAL the server may still write before the slot loses what it needs;
    /// `None` when unlimited (`max_slot_wal_keep_size = -1`) or unknown.
    pub safe_wal_size: Option<i64>,
    /// `reserved`, `extended`, `unreserved` or `lost` (13+).
    pub wal_status: Option<String>,
    /// Why the slot was invalidated (16+), when it was.
    pub invalidation_reason: Option<String>,
}

/// The query for a server of `version_num`, for the slot named `slot`.
pub fn query(slot: &str, version_num: u32) -> String {
    let (safe, status) = if version_num >= 130000 {
        ("safe_wal_size::int8", "wal_status::text")
    } else {
        ("NULL::int8", "NULL::text")
    };
    let reason = match version_num {
        170000.. => "invalidation_reason::text",
        160000.. => "CASE WHEN conflicting THEN 'rows_removed' END",
        _ => "NULL::text",
    };
    format!(
        "SELECT pg_catalog.pg_wal_lsn_diff(CASE WHEN pg_catalog.pg_is_in_recovery() \
         THEN pg_catalog.pg_last_wal_replay_lsn() ELSE pg_catalog.pg_current_wal_lsn() END, \
         restart_lsn)::int8, {safe}, {status}, {reason} \
         FROM pg_catalog.pg_replication_slots WHERE slot_name = {}",
        literal(slot)
    )
}

/// The standing of `slot` (`None` when it does not exist) on a server of `version_num`.
pub async fn read(
    client: &tokio_postgres::Client,
    slot: &str,
    version_num: u32,
) -> Result<Option<SlotHealth>, tokio_postgres::Error> {
    let row = client.query_opt(&query(slot, version_num), &[]).await?;
    Ok(row.map(|r| SlotHealth {
        retained_bytes: r.get(0),
        safe_wal_size: r.get(1),
        wal_status: r.get(2),
        invalidation_reason: r.get(3),
    }))
}

#[cfg(test)]
mod tests {
    use super::query;

    #[test]
    fn asks_each_version_only_for_what_it_has() {
        assert!(query("s", 120000).contains("NULL::int8, NULL::text, NULL::text"));
        assert!(query("s", 150000).contains("safe_wal_size::int8, wal_status::text, NULL"));
        assert!(query("s", 160000).contains("conflicting"));
        assert!(query("s", 180000).contains("invalidation_reason::text"));
        assert!(query("o'k", 150000).contains("slot_name = 'o''k'"));
    }
}
