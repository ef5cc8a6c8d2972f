//! The continuity check run at every start: is the server fit for logical replication, and
//! does the slot still hold exactly the history that continues our checkpoint?
//!
//! A slot that was dropped, recreated, invalidated (`wal_status = 'lost'`), advanced by someone
//! else, or a server that is not the one the checkpoint came from (an upgrade, a restore, a
//! different host) all mean changes happened that walflow will never see. Other tools notice
//! this late or not at all; walflow refuses to stream, says how many bytes of WAL history are
//! unaccounted for, and names the two ways forward: re-snapshot, or accept the gap explicitly
//! (`--accept-gap` / `accept_gap = true`), which is logged.

use crate::checkpoint::{Checkpoint, SlotIdentity};
use crate::event::{Lsn, format_lsn};
use walflow_pg::commands::{SlotInfo, SlotSnapshot, SystemIdentity};
use walflow_pg::conn::Connection;
use walflow_pg::error::ConnectError;

/// The two ways forward, appended to every gap message.
const WAYS_FORWARD: &str = "either re-snapshot (set snapshot = \"when_needed\", or remove the checkpoint file and start with snapshot = \"initial\"), or accept the gap with --accept-gap / accept_gap = true";

/// Why the server invalidated a slot, as `pg_replication_slots` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidation {
    /// `invalidation_reason` (PostgreSQL 16+), when the server gives one.
    pub reason: Option<String>,
}

impl Invalidation {
    /// Of the slot `info` (call when it [`is_invalidated`](SlotInfo::is_invalidated)).
    pub fn of(info: &SlotInfo) -> Invalidation {
        Invalidation {
            reason: info.invalidation_reason.clone(),
        }
    }

    /// The column that says so.
    fn shown(&self) -> String {
        match &self.reason {
            Some(r) => format!("invalidation_reason = '{r}'"),
            None => "wal_status = 'lost'".to_string(),
        }
    }

    /// What happened.
    fn cause(&self) -> &'static str {
        match self.reason.as_deref() {
            None | Some("wal_removed") => "the server removed WAL it still needed",
            Some("rows_removed") => {
                "the primary removed catalog rows it still needed (a conflict with recovery on a standby)"
            }
            Some("wal_level_insufficient") => "the primary's wal_level was lowered below logical",
            Some("idle_timeout") => "it sat unused for longer than idle_replication_slot_timeout",
            Some(_) => "the server gave it up (its log says why)",
        }
    }

    /// How to keep it from happening again.
    fn prevention(&self) -> &'static str {
        match self.reason.as_deref() {
            None | Some("wal_removed") => {
                "keep walflow running or raise max_slot_wal_keep_size (watch walflow_slot_safe_wal_size_bytes)"
            }
            Some("rows_removed") => {
                "set hot_standby_feedback = on on the standby and give it a physical slot on the primary"
            }
            Some("wal_level_insufficient") => "set wal_level = logical on the primary",
            Some("idle_timeout") => "raise idle_replication_slot_timeout or keep walflow running",
            Some(_) => "fix what the server log names",
        }
    }
}

/// Why streaming must not start.
#[derive(Debug, thiserror::Error)]
pub enum ContinuityError {
    /// The server is older than PostgreSQL 10 (no pgoutput).
    #[error(
        "PostgreSQL {version} is too old: walflow needs PostgreSQL 10 or newer (pgoutput logical replication); upgrade the server"
    )]
    ServerTooOld {
        /// `server_version`.
        version: String,
    },
    /// `failover = true` where failover slots do not exist.
    #[error(
        "failover = true needs a primary running PostgreSQL 17 or newer ({server}); remove it from [source], or rely on your platform's own slot failover"
    )]
    FailoverUnsupported {
        /// What the server is.
        server: String,
    },
    /// Connected to a standby.
    #[error(
        "the server is a read replica (pg_is_in_recovery() is true), which cannot serve logical replication; connect to the primary (Aurora: the cluster's writer endpoint)"
    )]
    ReadReplica,
    /// `wal_level` is not `logical`.
    #[error(
        "wal_level is `{level}`, but logical replication needs `logical`; run `ALTER SYSTEM SET wal_level = logical;` and restart PostgreSQL (RDS/Aurora: set rds.logical_replication = 1 in the parameter group and reboot)"
    )]
    WalLevel {
        /// The current setting.
        level: String,
    },
    /// The slot exists but uses another output plugin.
    #[error(
        "replication slot \"{slot}\" uses the output plugin `{plugin}`, not pgoutput; choose another slot name, or drop it with `SELECT pg_drop_replication_slot({});` if nothing else uses it",
        walflow_pg::sql::literal(.slot)
    )]
    WrongPlugin {
        /// Slot.
        slot: String,
        /// Its plugin (empty for a physical slot).
        plugin: String,
    },
    /// The slot belongs to another database.
    #[error(
        "replication slot \"{slot}\" belongs to database \"{slot_db}\", not \"{db}\"; choose another slot name or connect to \"{slot_db}\""
    )]
    WrongDatabase {
        /// Slot.
        slot: String,
        /// Its database.
        slot_db: String,
        /// Ours.
        db: String,
    },
    /// Another process is streaming from the slot.
    #[error(
        "replication slot \"{slot}\" is in use by another connection; stop the other consumer (see pg_stat_replication) or use another slot"
    )]
    SlotActive {
        /// Slot.
        slot: String,
    },
    /// The slot our checkpoint belongs to is gone.
    #[error(
        "replication slot \"{slot}\" no longer exists, but the checkpoint continues it at {checkpoint}; {gap} bytes of history (up to the server's {server}) are unaccounted for, so changes may be missing; {WAYS_FORWARD}"
    )]
    SlotGone {
        /// Slot.
        slot: String,
        /// Checkpoint LSN.
        checkpoint: String,
        /// Server's current WAL position.
        server: String,
        /// Bytes.
        gap: u64,
    },
    /// The slot was dropped and created again (its history starts after our checkpoint).
    #[error(
        "replication slot \"{slot}\" was dropped and created again (or advanced by another client): it starts at {restart} but the checkpoint is at {checkpoint}; {gap} bytes of history are unaccounted for, so changes may be missing; {WAYS_FORWARD}"
    )]
    SlotRecreated {
        /// Slot.
        slot: String,
        /// Checkpoint LSN.
        checkpoint: String,
        /// The slot's restart LSN.
        restart: String,
        /// Bytes.
        gap: u64,
    },
    /// `wal_status = 'lost'`, or an `invalidation_reason` (PostgreSQL 16+).
    #[error(
        "replication slot \"{slot}\" is invalidated ({}): {}; {gap} bytes of history after {checkpoint} are unaccounted for; {}, drop the slot, and {WAYS_FORWARD}",
        reason.shown(), reason.cause(), reason.prevention()
    )]
    SlotInvalidated {
        /// Slot.
        slot: String,
        /// Why the server invalidated it.
        reason: Invalidation,
        /// `the checkpoint at …` (or the slot's confirmed position).
        checkpoint: String,
        /// Bytes.
        gap: u64,
    },
    /// Another server, or the same one re-initialised or upgraded with a new identity.
    #[error(
        "the server's system identifier is {found}, but the checkpoint belongs to {stored} (another server, a restore, or an upgrade that re-created the cluster) and no `walflow drain` vouches for the change; the history between the two is unknown, so changes may be missing; {WAYS_FORWARD} (next time, run `walflow drain` before upgrading, and the run continues without either)"
    )]
    SystemChanged {
        /// In the checkpoint.
        stored: u64,
        /// On the server.
        found: u64,
    },
    /// The checkpoint belongs to another database.
    #[error(
        "the checkpoint belongs to database \"{stored}\", but [source] url names \"{found}\"; use a separate [state] dir or slot name per database"
    )]
    DatabaseChanged {
        /// In the checkpoint.
        stored: String,
        /// Configured.
        found: String,
    },
    /// Someone confirmed more than we acknowledged.
    #[error(
        "replication slot \"{slot}\" has confirmed up to {confirmed}, beyond the checkpoint at {checkpoint}: another client consumed {gap} bytes of history walflow never delivered; {WAYS_FORWARD}"
    )]
    ConfirmedBeyondCheckpoint {
        /// Slot.
        slot: String,
        /// Checkpoint LSN.
        checkpoint: String,
        /// The slot's confirmed_flush_lsn.
        confirmed: String,
        /// Bytes.
        gap: u64,
    },
    /// The server could not answer.
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

impl ContinuityError {
    /// Whether the error is a gap in history that `accept_gap` may override.
    pub fn is_gap(&self) -> bool {
        matches!(
            self,
            ContinuityError::SlotGone { .. }
                | ContinuityError::SlotRecreated { .. }
                | ContinuityError::SlotInvalidated { .. }
                | ContinuityError::SystemChanged { .. }
                | ContinuityError::ConfirmedBeyondCheckpoint { .. }
        )
    }

    /// Whether waiting and trying again may help.
    pub fn is_retryable(&self) -> bool {
        match self {
            ContinuityError::SlotActive { .. } => true,
            ContinuityError::Connect(e) => e.is_retryable(),
            _ => false,
        }
    }
}

/// What the check established: where to start and the slot's identity.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The server.
    pub system: SystemIdentity,
    /// `server_version_num`.
    pub server_version_num: u32,
    /// The slot's identity (to store with every checkpoint).
    pub identity: SlotIdentity,
    /// Where to start streaming: the checkpoint, or without one (or past an accepted gap) the
    /// slot's confirmed position. Save a first checkpoint at this LSN when there was none.
    pub start_lsn: Lsn,
    /// Whether the slot was created now.
    pub created: bool,
    /// A gap that was accepted, in bytes, if any (already logged).
    pub accepted_gap: Option<u64>,
    /// The snapshot exported when the slot was created now with [`SlotSnapshot::Export`]:
    /// valid until the next command on the connection.
    pub exported_snapshot: Option<String>,
}

/// Checks the server and slot against `checkpoint`, creating the slot when there is no history
/// to continue (or the gap is accepted). Runs before START_REPLICATION on `conn`.
pub async fn check(
    conn: &mut Connection,
    slot: &str,
    checkpoint: Option<&Checkpoint>,
    accept_gap: bool,
) -> Result<Verified, ContinuityError> {
    check_creating(conn, slot, checkpoint, accept_gap, SlotSnapshot::Nothing).await
}

/// Like [`check`], creating a missing slot with `snapshot` (an initial snapshot exports it).
pub async fn check_creating(
    conn: &mut Connection,
    slot: &str,
    checkpoint: Option<&Checkpoint>,
    accept_gap: bool,
    snapshot: SlotSnapshot,
) -> Result<Verified, ContinuityError> {
    let version_num = server_fitness(conn).await?;
    let system = conn.identify_system().await?;
    let db = conn.options().dbname.clone();
    let mut info = conn.slot_info(slot).await?;
    if let Some(info) = &info {
        slot_fitness(info, slot, &db)?;
    }
    if conn.options().slot_failover {
        failover_fitness(conn, version_num).await?;
        if let Some(info) = info.as_mut().filter(|i| !i.failover && !i.is_invalidated()) {
            conn.make_failover_slot(slot).await?;
            info.failover = true;
            tracing::info!(slot, "made the slot a failover slot (failover = true)");
        }
    }
    let gap = match (checkpoint, &info) {
        (Some(cp), _) => history_gap(cp, &system, info.as_ref(), &db),
        (None, Some(i)) if i.is_invalidated() => Err(invalidated_unchecked(i, &system)),
        (None, _) => Ok(()),
    };
    let mut accepted_gap = None;
    if let Err(e) = gap {
        if !(accept_gap && e.is_gap()) {
            return Err(e);
        }
        let bytes = gap_bytes(&e);
        tracing::warn!(error = %e, bytes, "continuing past a gap in the slot's history (accept_gap, or snapshot = \"when_needed\" re-snapshots)");
        accepted_gap = Some(bytes);
    }
    let lost = info.as_ref().is_some_and(SlotInfo::is_invalidated);
    if lost && accepted_gap.is_some() {
        conn.drop_slot(slot).await?;
    }
    let (info, created, exported_snapshot) = match info {
        Some(i) if !lost || accepted_gap.is_none() => (i, false, None),
        _ => {
            let made = conn.create_slot(slot, snapshot).await?;
            tracing::info!(slot, lsn = %format_lsn(made.consistent_point), "created replication slot");
            let info = created_slot_info(slot, &made, &db);
            (info, true, made.snapshot_name)
        }
    };
    let start_lsn = match checkpoint {
        Some(cp) if accepted_gap.is_none() && !created => cp.lsn,
        _ => info.confirmed_flush_lsn.unwrap_or_default(),
    };
    let created_lsn = match checkpoint {
        Some(cp) if accepted_gap.is_none() && !created => cp.identity.created_lsn,
        _ => info
            .restart_lsn
            .or(info.confirmed_flush_lsn)
            .unwrap_or(system.xlogpos),
    };
    Ok(Verified {
        identity: SlotIdentity {
            system_id: system.system_id,
            database: db,
            slot: slot.to_string(),
            timeline: system.timeline,
            created_lsn,
        },
        system,
        server_version_num: version_num,
        start_lsn,
        created,
        accepted_gap,
        exported_snapshot,
    })
}

/// An invalidated slot met without a checkpoint: whoever used it before missed what the
/// server removed since its confirmed position.
fn invalidated_unchecked(info: &SlotInfo, system: &SystemIdentity) -> ContinuityError {
    let confirmed = info.confirmed_flush_lsn.unwrap_or_default();
    ContinuityError::SlotInvalidated {
        slot: info.name.clone(),
        reason: Invalidation::of(info),
        checkpoint: format!("its confirmed position {}", format_lsn(confirmed)),
        gap: system.xlogpos.bytes_since(confirmed),
    }
}

/// What `pg_replication_slots` would say of a slot just created — without asking, because any
/// command on the connection would end the snapshot it exported.
fn created_slot_info(slot: &str, made: &walflow_pg::commands::CreatedSlot, db: &str) -> SlotInfo {
    SlotInfo {
        name: slot.to_string(),
        plugin: "pgoutput".to_string(),
        slot_type: "logical".to_string(),
        database: Some(db.to_string()),
        active: false,
        restart_lsn: Some(made.consistent_point),
        confirmed_flush_lsn: Some(made.consistent_point),
        wal_status: None,
        invalidation_reason: None,
        failover: false,
    }
}

/// Version, role (primary or replica) and wal_level.
async fn server_fitness(conn: &mut Connection) -> Result<u32, ContinuityError> {
    let version_num = conn.server_version_num().await?;
    if version_num < 100000 {
        let version = conn.show("server_version").await?;
        return Err(ContinuityError::ServerTooOld { version });
    }
    let in_recovery = conn.query_scalar("SELECT pg_is_in_recovery()").await?;
    if in_recovery.as_deref() == Some("t") {
        if version_num < 160000 {
            return Err(ContinuityError::ReadReplica);
        }
        tracing::warn!(
            "the server is a read replica; logical decoding on a standby needs hot_standby_feedback and stops at promotion, prefer the primary"
        );
    }
    let level = conn.show("wal_level").await?;
    if level != "logical" {
        return Err(ContinuityError::WalLevel { level });
    }
    Ok(version_num)
}

/// Failover slots live on a primary of PostgreSQL 17 or newer.
async fn failover_fitness(conn: &mut Connection, version_num: u32) -> Result<(), ContinuityError> {
    let standby = conn.query_scalar("SELECT pg_is_in_recovery()").await?;
    if version_num >= 170000 && standby.as_deref() != Some("t") {
        return Ok(());
    }
    let version = conn.show("server_version").await?;
    let server = if version_num >= 170000 {
        format!("this is a standby of PostgreSQL {version}")
    } else {
        format!("this is PostgreSQL {version}")
    };
    Err(ContinuityError::FailoverUnsupported { server })
}

fn slot_fitness(info: &SlotInfo, slot: &str, db: &str) -> Result<(), ContinuityError> {
    if info.slot_type != "logical" || info.plugin != "pgoutput" {
        let plugin = if info.slot_type != "logical" {
            format!("{} (a {} slot)", info.plugin, info.slot_type)
        } else {
            info.plugin.clone()
        };
        return Err(ContinuityError::WrongPlugin {
            slot: slot.to_string(),
            plugin,
        });
    }
    if let Some(slot_db) = &info.database
        && slot_db != db
    {
        return Err(ContinuityError::WrongDatabase {
            slot: slot.to_string(),
            slot_db: slot_db.clone(),
            db: db.to_string(),
        });
    }
    if info.active {
        return Err(ContinuityError::SlotActive {
            slot: slot.to_string(),
        });
    }
    Ok(())
}

/// Compares the stored checkpoint with what the server has now.
fn history_gap(
    cp: &Checkpoint,
    system: &SystemIdentity,
    info: Option<&SlotInfo>,
    db: &str,
) -> Result<(), ContinuityError> {
    let slot = cp.identity.slot.clone();
    let checkpoint = format_lsn(cp.lsn);
    if cp.identity.system_id != system.system_id {
        return Err(ContinuityError::SystemChanged {
            stored: cp.identity.system_id,
            found: system.system_id,
        });
    }
    if cp.identity.database != db {
        return Err(ContinuityError::DatabaseChanged {
            stored: cp.identity.database.clone(),
            found: db.to_string(),
        });
    }
    let Some(info) = info else {
        return Err(ContinuityError::SlotGone {
            slot,
            checkpoint,
            server: format_lsn(system.xlogpos),
            gap: system.xlogpos.bytes_since(cp.lsn),
        });
    };
    if info.is_invalidated() {
        return Err(ContinuityError::SlotInvalidated {
            slot,
            reason: Invalidation::of(info),
            checkpoint: format!("the checkpoint at {checkpoint}"),
            gap: system.xlogpos.bytes_since(cp.lsn),
        });
    }
    let restart = info.restart_lsn.unwrap_or_default();
    if restart > cp.lsn {
        let end = info.confirmed_flush_lsn.unwrap_or(restart).max(restart);
        return Err(ContinuityError::SlotRecreated {
            slot,
            checkpoint,
            restart: format_lsn(restart),
            gap: end - cp.lsn,
        });
    }
    if let Some(confirmed) = info.confirmed_flush_lsn
        && confirmed > cp.lsn
    {
        return Err(ContinuityError::ConfirmedBeyondCheckpoint {
            slot,
            checkpoint,
            confirmed: format_lsn(confirmed),
            gap: confirmed - cp.lsn,
        });
    }
    Ok(())
}

fn gap_bytes(e: &ContinuityError) -> u64 {
    match e {
        ContinuityError::SlotGone { gap, .. }
        | ContinuityError::SlotRecreated { gap, .. }
        | ContinuityError::SlotInvalidated { gap, .. }
        | ContinuityError::ConfirmedBeyondCheckpoint { gap, .. } => *gap,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cp(lsn: u64) -> Checkpoint {
        Checkpoint {
            lsn: Lsn(lsn),
            identity: SlotIdentity {
                system_id: 42,
                database: "app".into(),
                slot: "s".into(),
                timeline: 1,
                created_lsn: Lsn(100),
            },
            snapshot: Default::default(),
            written_at_ms: 0,
        }
    }

    fn system(xlogpos: u64) -> SystemIdentity {
        SystemIdentity {
            system_id: 42,
            timeline: 1,
            xlogpos: Lsn(xlogpos),
            dbname: "app".into(),
        }
    }

    fn slot(restart: u64, confirmed: u64, wal_status: &str) -> SlotInfo {
        SlotInfo {
            name: "s".into(),
            plugin: "pgoutput".into(),
            slot_type: "logical".into(),
            database: Some("app".into()),
            active: false,
            restart_lsn: Some(Lsn(restart)),
            confirmed_flush_lsn: Some(Lsn(confirmed)),
            wal_status: Some(wal_status.into()),
            invalidation_reason: None,
            failover: false,
        }
    }

    #[test]
    fn same_slot_continues() {
        history_gap(
            &cp(1000),
            &system(5000),
            Some(&slot(900, 1000, "reserved")),
            "app",
        )
        .unwrap();
        history_gap(
            &cp(1000),
            &system(5000),
            Some(&slot(900, 950, "reserved")),
            "app",
        )
        .unwrap();
    }

    #[test]
    fn each_gap_is_named_with_its_bytes() {
        let e = history_gap(&cp(1000), &system(5000), None, "app").unwrap_err();
        assert!(
            matches!(e, ContinuityError::SlotGone { gap: 4000, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("4000 bytes") && e.to_string().contains("--accept-gap"));
        let e = history_gap(
            &cp(1000),
            &system(5000),
            Some(&slot(3000, 3100, "reserved")),
            "app",
        )
        .unwrap_err();
        assert!(
            matches!(e, ContinuityError::SlotRecreated { gap: 2100, .. }),
            "{e}"
        );
        let e = history_gap(
            &cp(1000),
            &system(5000),
            Some(&slot(900, 1500, "lost")),
            "app",
        )
        .unwrap_err();
        assert!(matches!(e, ContinuityError::SlotInvalidated { .. }), "{e}");
        let text = e.to_string();
        assert!(text.contains("(wal_status = 'lost')"), "{text}");
        assert!(text.contains("max_slot_wal_keep_size"), "{text}");
        let mut conflicted = slot(900, 1500, "reserved");
        conflicted.invalidation_reason = Some("rows_removed".into());
        let e = history_gap(&cp(1000), &system(5000), Some(&conflicted), "app").unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("(invalidation_reason = 'rows_removed')")
                && text.contains("hot_standby_feedback = on"),
            "a slot invalidated by a recovery conflict is named as such, with its remedy: {text}"
        );
        let e = history_gap(
            &cp(1000),
            &system(5000),
            Some(&slot(900, 1500, "reserved")),
            "app",
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                ContinuityError::ConfirmedBeyondCheckpoint { gap: 500, .. }
            ),
            "{e}"
        );
        let mut other = system(5000);
        other.system_id = 43;
        let e = history_gap(&cp(1000), &other, None, "app").unwrap_err();
        assert!(matches!(e, ContinuityError::SystemChanged { .. }), "{e}");
        assert!(e.is_gap());
    }
}
