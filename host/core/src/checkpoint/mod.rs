//! Checkpoints: per pipeline (keyed by slot name), the last LSN every sink acknowledged and the
//! identity of the slot that LSN belongs to.
//!
//! The checkpoint is the ceiling of what is ever confirmed to PostgreSQL: the replication
//! stream sends a confirmed flush LSN only after the checkpoint holding it is on disk, so a
//! crash at any moment leaves the slot at or behind the file, never ahead. The slot identity
//! lets the next start prove that the slot it finds is the one whose history the checkpoint
//! continues (see `replication::continuity`).
//!
//! Files are written atomically: a temporary file in the same directory is written and
//! fsynced, renamed over the old one, and the directory is fsynced, so a reader sees either
//! the old or the new checkpoint, whole. They are readable by their owner only (mode 0600,
//! narrowed further by the umask): a checkpoint holds snapshot progress, including key values
//! of the source's rows.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod drain_marker;
mod ledger;
mod snapshot_state;

pub use drain_marker::{DrainMarker, DrainMarkerStore};
pub use ledger::{Confirmer, Ledger};
pub use snapshot_state::{
    ChunkSpec, IncrementalProgress, IncrementalTable, InitialProgress, SnapshotProgress,
};
pub use walflow_pg::lsn::Lsn;

/// Which slot a checkpoint's LSN belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotIdentity {
    /// The cluster's system identifier (IDENTIFY_SYSTEM); another value means another server
    /// or a re-initialised one.
    pub system_id: u64,
    /// Database name.
    pub database: String,
    /// Slot name.
    pub slot: String,
    /// Timeline when the identity was recorded (informational: a promotion changes it).
    pub timeline: u32,
    /// The slot's first position as walflow knew it: the consistent point when walflow created
    /// it, else its `restart_lsn` when walflow first saw it. A slot dropped and created again
    /// starts after everything the old one had confirmed, so its `restart_lsn` lies beyond the
    /// checkpoint, which the continuity check reports.
    pub created_lsn: Lsn,
}

/// The durable state of one pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Everything before this LSN was acknowledged by every sink (PostgreSQL's
    /// `confirmed_flush_lsn` semantics).
    pub lsn: Lsn,
    /// The slot.
    pub identity: SlotIdentity,
    /// Unix milliseconds when this was written.
    pub written_at_ms: i64,
    /// Snapshots in progress, valid at `lsn`: what a restart resumes instead of starting over.
    #[serde(default, skip_serializing_if = "SnapshotProgress::is_empty")]
    pub snapshot: SnapshotProgress,
}

impl Checkpoint {
    /// A checkpoint at `lsn` of the slot `identity`, written now, with no snapshot in progress.
    pub fn new(lsn: Lsn, identity: SlotIdentity) -> Checkpoint {
        Checkpoint {
            lsn,
            identity,
            written_at_ms: now_ms(),
            snapshot: SnapshotProgress::default(),
        }
    }
}

/// Why a checkpoint could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// I/O on the state directory failed.
    #[error(
        "cannot {action} checkpoint {path}: {source}; check that the state directory ([state] dir) is writable"
    )]
    Io {
        /// read / write.
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file exists but is not a checkpoint.
    #[error(
        "checkpoint {path} is corrupt ({message}); restore it from a backup, or move it away and re-snapshot"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// The checkpoint file of one slot in a state directory.
#[derive(Debug, Clone)]
pub struct CheckpointStore {
    dir: PathBuf,
    slot: String,
}

impl CheckpointStore {
    /// The store for `slot` under `dir` (created on first save).
    pub fn new(dir: impl Into<PathBuf>, slot: &str) -> CheckpointStore {
        CheckpointStore {
            dir: dir.into(),
            slot: slot.to_string(),
        }
    }

    /// The checkpoint file (`<dir>/<slot>.checkpoint.json`).
    pub fn path(&self) -> PathBuf {
        self.dir
            .join(format!("{}.checkpoint.json", file_stem(&self.slot)))
    }

    /// Reads the checkpoint; `None` when there is none yet.
    pub fn load(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        read_json(self.path())
    }

    /// Writes `checkpoint` atomically and durably.
    pub fn save(&self, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
        let path = self.path();
        let io = |source| CheckpointError::Io {
            action: "write",
            path: path.clone(),
            source,
        };
        write_json_atomically(&self.dir, &path, checkpoint).map_err(io)
    }

    /// [`save`](Self::save) on tokio's blocking pool, for async callers.
    pub async fn save_async(&self, checkpoint: Checkpoint) -> Result<(), CheckpointError> {
        let store = self.clone();
        let path = self.path();
        tokio::task::spawn_blocking(move || store.save(&checkpoint))
            .await
            .map_err(|e| CheckpointError::Io {
                action: "write",
                path,
                source: std::io::Error::other(format!("the writing task failed: {e}")),
            })?
    }

    /// Removes the checkpoint (after an explicit re-snapshot or an accepted gap).
    pub fn remove(&self) -> Result<(), CheckpointError> {
        match fs::remove_file(self.path()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CheckpointError::Io {
                action: "remove",
                path: self.path(),
                source,
            }),
        }
    }
}

/// A slot name as a file name: characters other than ASCII letters, digits and `_` become `-`.
pub(crate) fn file_stem(slot: &str) -> String {
    slot.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// Writes `value` as pretty JSON to `path` in `dir` the way checkpoints are written: a private
/// temporary file, fsynced, renamed over `path`, and the directory fsynced.
/// Reads the JSON file at `path`: `None` when it does not exist, an error naming the file when
/// it cannot be read or parsed (the checkpoint and the drain marker are read the same way).
pub(crate) fn read_json<T: serde::de::DeserializeOwned>(
    path: PathBuf,
) -> Result<Option<T>, CheckpointError> {
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(CheckpointError::Io {
                action: "read",
                path,
                source,
            });
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| CheckpointError::Corrupt {
            path,
            message: e.to_string(),
        })
}

pub(crate) fn write_json_atomically(
    dir: &Path,
    path: &Path,
    value: &impl Serialize,
) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = path.with_extension("json.tmp");
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    {
        let mut f = create_private(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    sync_dir(dir)
}

pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `path` afresh with mode 0600. A file left there by a crash is removed first, since
/// opening it would keep whatever mode it had.
fn create_private(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(lsn: u64) -> Checkpoint {
        Checkpoint {
            lsn: Lsn(lsn),
            identity: SlotIdentity {
                system_id: 7_300_000_000_000_000_001,
                database: "app".into(),
                slot: "walflow_slot".into(),
                timeline: 1,
                created_lsn: Lsn(0x1_0000),
            },
            written_at_ms: 1,
            snapshot: SnapshotProgress::default(),
        }
    }

    #[test]
    fn save_load_replace() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path().join("state"), "walflow_slot");
        assert_eq!(store.load().unwrap(), None);
        store.save(&sample(10)).unwrap();
        assert_eq!(store.load().unwrap(), Some(sample(10)));
        store.save(&sample(20)).unwrap();
        assert_eq!(store.load().unwrap().unwrap().lsn, Lsn(20));
        assert!(!store.path().with_extension("json.tmp").exists());
        store.remove().unwrap();
        assert_eq!(store.load().unwrap(), None);
    }

    #[test]
    fn checkpoints_are_readable_by_their_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path(), "walflow_slot");
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        store.save(&sample(10)).unwrap();
        assert_eq!(mode(&store.path()), 0o600);
        // A temporary file a crash left behind, world-readable, is not what gets renamed.
        let tmp = store.path().with_extension("json.tmp");
        fs::write(&tmp, b"{}").unwrap();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644)).unwrap();
        store.save(&sample(20)).unwrap();
        assert_eq!(mode(&store.path()), 0o600);
        assert_eq!(store.load().unwrap().unwrap().lsn, Lsn(20));
    }

    #[test]
    fn corrupt_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path(), "s");
        fs::write(store.path(), b"{not json").unwrap();
        let e = store.load().unwrap_err().to_string();
        assert!(e.contains("corrupt"), "{e}");
    }
}
