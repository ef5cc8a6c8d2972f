//! What a checkpoint remembers of snapshots in progress, so a restart resumes at the next
//! chunk instead of starting over. Plain data: the snapshot code decides what it means.

use serde::{Deserialize, Serialize};

/// Snapshots in progress at a checkpoint's LSN.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SnapshotProgress {
    /// An initial snapshot not yet delivered in full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<InitialProgress>,
    /// Incremental snapshots requested and not finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<IncrementalProgress>,
}

impl SnapshotProgress {
    /// Nothing in progress.
    pub fn is_empty(&self) -> bool {
        self.initial.is_none() && self.incremental.is_none()
    }
}

/// The chunks of an initial snapshot that are not yet acknowledged by every sink.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitialProgress {
    /// The LSN the snapshot's rows carry (the slot's consistent point when walflow made it).
    pub lsn: crate::event::Lsn,
    /// Chunks still to read, in plan order.
    pub pending: Vec<ChunkSpec>,
}

/// One piece of a table: a range of heap pages, or the whole table.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkSpec {
    /// Schema.
    pub schema: String,
    /// Table.
    pub table: String,
    /// First heap page (`ctid >= (first_page, 0)`), when the table is split.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_page: Option<u64>,
    /// Page after the last (`ctid < (end_page, 0)`); `None` reads to the end of the table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_page: Option<u64>,
}

impl ChunkSpec {
    /// `schema.table`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}

/// The queue of an incremental snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct IncrementalProgress {
    /// Tables still to read, in request order; the first is being read.
    pub tables: Vec<IncrementalTable>,
    /// Paused by a `pause-snapshot` request.
    #[serde(default)]
    pub paused: bool,
}

/// One table of an incremental snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IncrementalTable {
    /// Schema.
    pub schema: String,
    /// Table.
    pub table: String,
    /// The primary key of the last row delivered (text form), `None` before the first chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_key: Option<Vec<String>>,
    /// The largest primary key when the table's snapshot started: rows inserted later arrive
    /// through the stream, so the snapshot ends here instead of chasing them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_key: Option<Vec<String>>,
    /// Rows delivered so far.
    #[serde(default)]
    pub rows: u64,
}

impl IncrementalTable {
    /// A table not started yet.
    pub fn new(schema: &str, table: &str) -> IncrementalTable {
        IncrementalTable {
            schema: schema.to_string(),
            table: table.to_string(),
            last_key: None,
            max_key: None,
            rows: 0,
        }
    }

    /// `schema.table`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }
}
