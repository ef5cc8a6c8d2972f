//! The drain marker: what `walflow drain` leaves in the state directory once every change up to
//! a WAL position has been delivered and checkpointed, and the source's writes had stopped.
//!
//! A major-version upgrade (`pg_upgrade`, a dump and restore) gives the server a new system
//! identifier and no replication slots, which the continuity check rightly reports as history
//! walflow cannot account for. The marker is the missing proof: it names the server (system
//! identifier, timeline, version), the slot and the position that was fully delivered, so the
//! first `walflow run` against the upgraded server can start a new slot there instead of
//! refusing or re-snapshotting (see `pipeline::upgrade`). It lives beside the checkpoint it
//! vouches for (`<slot>.drain.json`), written the same atomic way, and is archived
//! (`<slot>.drain.applied.json`) once a run has used it — or has run against the old server
//! again, after which it proves nothing.

use std::fs;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{
    Checkpoint, CheckpointError, Lsn, file_stem, read_json, sync_dir, write_json_atomically,
};

/// A drained source: everything up to `lsn` was delivered and checkpointed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainMarker {
    /// The server's system identifier when drained.
    pub system_id: u64,
    /// Its timeline.
    pub timeline: u32,
    /// Every change before this position was delivered; none was written after it while
    /// `walflow drain` watched.
    pub lsn: Lsn,
    /// The checkpoint when the drain finished (at or past `lsn`).
    pub checkpoint_lsn: Lsn,
    /// Unix milliseconds when the drain finished.
    pub drained_at_ms: i64,
    /// The slot.
    pub slot: String,
    /// The database.
    pub database: String,
    /// `server_version` (e.g. `15.14`).
    pub server_version: String,
    /// `server_version_num` (e.g. 150014).
    pub server_version_num: u32,
}

impl DrainMarker {
    /// Why this marker does not vouch for `checkpoint` (another slot, server or database, or a
    /// checkpoint behind the drained position); `None` when it does.
    pub fn mismatch(&self, checkpoint: &Checkpoint) -> Option<String> {
        let id = &checkpoint.identity;
        if id.slot != self.slot {
            return Some(format!(
                "it is for slot \"{}\", the checkpoint for \"{}\"",
                self.slot, id.slot
            ));
        }
        if id.system_id != self.system_id {
            return Some(format!(
                "it is for the server with system identifier {}, the checkpoint for {}",
                self.system_id, id.system_id
            ));
        }
        if id.database != self.database {
            return Some(format!(
                "it is for database \"{}\", the checkpoint for \"{}\"",
                self.database, id.database
            ));
        }
        if checkpoint.lsn < self.lsn {
            return Some(format!(
                "the checkpoint at {} is behind the drained position {} (was the state directory restored?)",
                checkpoint.lsn, self.lsn
            ));
        }
        None
    }
}

/// The drain marker file of one slot in a state directory.
#[derive(Debug, Clone)]
pub struct DrainMarkerStore {
    dir: PathBuf,
    slot: String,
}

impl DrainMarkerStore {
    /// The marker of `slot` under `dir`.
    pub fn new(dir: impl Into<PathBuf>, slot: &str) -> DrainMarkerStore {
        DrainMarkerStore {
            dir: dir.into(),
            slot: slot.to_string(),
        }
    }

    /// `<dir>/<slot>.drain.json`.
    pub fn path(&self) -> PathBuf {
        self.dir
            .join(format!("{}.drain.json", file_stem(&self.slot)))
    }

    /// Where a used marker is kept: `<dir>/<slot>.drain.applied.json`.
    pub fn archived_path(&self) -> PathBuf {
        self.dir
            .join(format!("{}.drain.applied.json", file_stem(&self.slot)))
    }

    /// The marker; `None` when there is none.
    pub fn load(&self) -> Result<Option<DrainMarker>, CheckpointError> {
        read_json(self.path())
    }

    /// Writes `marker` atomically and durably.
    pub fn save(&self, marker: &DrainMarker) -> Result<(), CheckpointError> {
        let path = self.path();
        write_json_atomically(&self.dir, &path, marker).map_err(|source| CheckpointError::Io {
            action: "write",
            path,
            source,
        })
    }

    /// Moves the marker aside once used, so it cannot vouch for a later upgrade.
    pub fn archive(&self) -> Result<(), CheckpointError> {
        let io = |source| CheckpointError::Io {
            action: "archive",
            path: self.path(),
            source,
        };
        fs::rename(self.path(), self.archived_path()).map_err(io)?;
        sync_dir(&self.dir).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::SlotIdentity;

    fn marker(lsn: u64) -> DrainMarker {
        DrainMarker {
            system_id: 7,
            timeline: 1,
            lsn: Lsn(lsn),
            checkpoint_lsn: Lsn(lsn),
            drained_at_ms: 1,
            slot: "walflow_slot".into(),
            database: "app".into(),
            server_version: "15.14".into(),
            server_version_num: 150014,
        }
    }

    fn checkpoint(system_id: u64, lsn: u64) -> Checkpoint {
        Checkpoint::new(
            Lsn(lsn),
            SlotIdentity {
                system_id,
                database: "app".into(),
                slot: "walflow_slot".into(),
                timeline: 1,
                created_lsn: Lsn(1),
            },
        )
    }

    #[test]
    fn save_load_archive() {
        let dir = tempfile::tempdir().unwrap();
        let store = DrainMarkerStore::new(dir.path().join("state"), "walflow_slot");
        assert_eq!(store.load().unwrap(), None);
        store.save(&marker(100)).unwrap();
        assert_eq!(store.load().unwrap(), Some(marker(100)));
        store.archive().unwrap();
        assert_eq!(store.load().unwrap(), None);
        assert!(store.archived_path().exists());
    }

    #[test]
    fn a_marker_vouches_only_for_its_own_checkpoint() {
        assert_eq!(marker(100).mismatch(&checkpoint(7, 100)), None);
        assert_eq!(marker(100).mismatch(&checkpoint(7, 150)), None);
        let other_server = marker(100).mismatch(&checkpoint(8, 100)).unwrap();
        assert!(
            other_server.contains("system identifier 7"),
            "{other_server}"
        );
        let behind = marker(100).mismatch(&checkpoint(7, 99)).unwrap();
        assert!(behind.contains("behind"), "{behind}");
        let mut other_slot = checkpoint(7, 100);
        other_slot.identity.slot = "other".into();
        assert!(marker(100).mismatch(&other_slot).is_some());
    }
}
