//! The host-native change event: what the decoder and the snapshot reader produce, what the
//! plugin chain consumes and returns, and what the encoders serialise.
//!
//! Column names live once in a shared [`Relation`]; a [`Row`] is only the values, in the
//! relation's column order. This keeps the per-event cost low both in the host and across the
//! plugin ABI, where relations are passed once per batch.

use std::sync::Arc;

/// What happened to a row (Debezium's `op` letters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// An insert (`c`).
    Create,
    /// An update (`u`).
    Update,
    /// A delete (`d`).
    Delete,
    /// A row read by a snapshot (`r`).
    Read,
    /// A truncate of the table (`t`).
    Truncate,
    /// A logical decoding message from `pg_logical_emit_message` (`m`).
    Message,
}

impl Op {
    /// Debezium's one-letter code.
    pub fn code(self) -> &'static str {
        match self {
            Op::Create => "c",
            Op::Update => "u",
            Op::Delete => "d",
            Op::Read => "r",
            Op::Truncate => "t",
            Op::Message => "m",
        }
    }

    /// Parses Debezium's one-letter code.
    pub fn from_code(code: &str) -> Option<Op> {
        Some(match code {
            "c" => Op::Create,
            "u" => Op::Update,
            "d" => Op::Delete,
            "r" => Op::Read,
            "t" => Op::Truncate,
            "m" => Op::Message,
            _ => return None,
        })
    }
}

/// Where an event sits in a snapshot (Debezium's `source.snapshot`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SnapshotMarker {
    /// A streamed change, not a snapshot row.
    #[default]
    False,
    /// A snapshot row that is neither the first nor the last.
    True,
    /// The first row of a snapshot.
    First,
    /// The last row of a snapshot.
    Last,
    /// A row of an incremental snapshot chunk.
    Incremental,
}

impl SnapshotMarker {
    /// The string Debezium writes in `source.snapshot`.
    pub fn as_str(self) -> &'static str {
        match self {
            SnapshotMarker::False => "false",
            SnapshotMarker::True => "true",
            SnapshotMarker::First => "first",
            SnapshotMarker::Last => "last",
            SnapshotMarker::Incremental => "incremental",
        }
    }

    /// Parses the string Debezium writes in `source.snapshot`.
    pub fn parse(s: &str) -> Option<SnapshotMarker> {
        Some(match s {
            "false" => SnapshotMarker::False,
            "true" => SnapshotMarker::True,
            "first" => SnapshotMarker::First,
            "last" => SnapshotMarker::Last,
            "incremental" => SnapshotMarker::Incremental,
            _ => return None,
        })
    }
}

/// A column of a relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Column name.
    pub name: String,
    /// PostgreSQL type oid (0 when unknown, e.g. events read from JSON).
    pub type_oid: u32,
    /// PostgreSQL type name, e.g. `int4`, `_text`, `my_enum`.
    pub type_name: String,
    /// Type modifier (`atttypmod`), -1 when none.
    pub type_modifier: i32,
    /// Whether the column is part of the replica identity (the event key).
    pub key: bool,
}

/// A table as the source describes it; shared by every event of that table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The source's relation oid (0 when unknown).
    pub oid: u32,
    /// Schema (namespace) name.
    pub schema: String,
    /// Table name.
    pub table: String,
    /// Columns in table order.
    pub columns: Vec<Column>,
}

impl Relation {
    /// `public.{table}` with one key column (for tests here and in the crates above).
    pub fn one_column(table: &str, column: &str, type_name: &str, type_oid: u32) -> Arc<Relation> {
        Arc::new(Relation {
            oid: 1,
            schema: "public".into(),
            table: table.into(),
            columns: vec![Column {
                name: column.into(),
                type_oid,
                type_name: type_name.into(),
                type_modifier: -1,
                key: true,
            }],
        })
    }

    /// `schema.table`.
    pub fn qualified_name(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// Index of the column with this name.
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// Indices of the key (replica identity) columns.
    pub fn key_indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.columns
            .iter()
            .enumerate()
            .filter(|(_, c)| c.key)
            .map(|(i, _)| i)
    }
}

/// Which temporal type a [`Value::Temporal`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TemporalKind {
    /// `date`
    Date,
    /// `time without time zone`
    Time,
    /// `time with time zone`
    TimeTz,
    /// `timestamp without time zone`
    Timestamp,
    /// `timestamp with time zone`
    TimestampTz,
    /// `interval`
    Interval,
}

/// A typed column value.
///
/// Scalars are unboxed; exact types (numeric, temporal) keep their canonical text so nothing is
/// lost. Anything the host does not type is kept as [`Value::Raw`] with its type name.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// SQL NULL.
    Null,
    /// `bool`
    Bool(bool),
    /// `int2`, `int4`, `int8`, `oid`
    Int(i64),
    /// `float4`, `float8` (NaN and ±Infinity included)
    Float(f64),
    /// `text`, `varchar`, `bpchar`, `name`, enums, `inet`, `cidr`, `macaddr`, `money`, bit strings
    Text(String),
    /// `bytea`
    Bytes(Vec<u8>),
    /// `numeric` as its exact decimal text (`NaN`, `Infinity`, `-Infinity` included)
    Numeric(String),
    /// Dates, times, timestamps and intervals as ISO-8601 text (`infinity`/`-infinity` kept).
    Temporal(TemporalKind, String),
    /// `json`/`jsonb` as JSON text.
    Json(String),
    /// `uuid` in canonical lowercase form.
    Uuid(String),
    /// An array: its dimensions and its elements in row-major order.
    Array(Array),
    /// A TOASTed value the source did not send because the update left it unchanged.
    UnchangedToast,
    /// A value of a type the host does not decode: the type name and the server's text.
    Raw {
        /// PostgreSQL type name.
        type_name: String,
        /// The value in PostgreSQL's text output format.
        text: String,
    },
}

/// A (possibly multi-dimensional) array value. Elements are never arrays themselves.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// Length of each dimension; empty for an empty array.
    pub dims: Vec<u32>,
    /// The index of each dimension's first element when one is not 1, PostgreSQL's default
    /// (`'[2:3]={7,8}'` has `[2]`); empty when they all are. The JSON and MessagePack forms
    /// list the elements only, as Debezium's do; the postgres sink writes the bounds back, so
    /// the replica's `v[2]` is the source's.
    pub lower_bounds: Vec<i32>,
    /// Elements in row-major order; each is a scalar `Value` or `Value::Null`.
    pub elements: Vec<Value>,
}

/// The values of one row, in the relation's column order.
pub type Row = Vec<Value>;

/// A message emitted with `pg_logical_emit_message`.
#[derive(Debug, Clone, PartialEq)]
pub struct LogicalMessage {
    /// Whether it was emitted transactionally.
    pub transactional: bool,
    /// The message prefix.
    pub prefix: String,
    /// The message content.
    pub content: Vec<u8>,
}

/// Where an event came from.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Source {
    /// Database name.
    pub db: Arc<str>,
    /// The LSN of the change (for a snapshot row, the slot's consistent point).
    pub lsn: Lsn,
    /// The transaction id, when known.
    pub xid: Option<u32>,
    /// Commit time in microseconds since the Unix epoch (0 when unknown).
    pub commit_time_us: i64,
    /// Snapshot marker.
    pub snapshot: SnapshotMarker,
    /// The end LSN of the last transaction whose commit the reader saw before this change
    /// (the first element of Debezium's `source.sequence`); `None` when it saw none since it
    /// started, or for events not read from the stream.
    pub last_commit_lsn: Option<Lsn>,
}

/// One change event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// What happened.
    pub op: Op,
    /// The table; for a logical message, a relation with empty names and no columns.
    pub relation: Arc<Relation>,
    /// Source metadata.
    pub source: Source,
    /// The row before the change (updates and deletes, when the source sent it).
    pub before: Option<Row>,
    /// The row after the change (inserts, updates, snapshot reads).
    pub after: Option<Row>,
    /// The destination topic, once a topic namer (or the default rule) has set it.
    pub topic: Option<Arc<str>>,
    /// The logical message, for `Op::Message` (boxed: rare, and it would otherwise add its
    /// size to every event a batch moves around).
    pub message: Option<Box<LogicalMessage>>,
}

impl Event {
    /// Whether this is one of walflow's heartbeat messages: never delivered, whatever the
    /// current config says (an earlier run, or another pipeline on the server, wrote it).
    pub fn is_heartbeat_message(&self) -> bool {
        self.message
            .as_ref()
            .is_some_and(|m| m.prefix == walflow_config::HEARTBEAT_MESSAGE_PREFIX)
    }

    /// The key: the replica-identity columns, taken from `after` or else `before`.
    pub fn key(&self) -> Vec<(&str, &Value)> {
        self.key_values().collect()
    }

    /// [`key`](Self::key) without collecting it.
    pub fn key_values(&self) -> impl Iterator<Item = (&str, &Value)> {
        let row = self.key_row();
        self.relation
            .key_indices()
            .filter_map(move |i| Some((self.relation.columns[i].name.as_str(), row?.get(i)?)))
    }

    /// The row the key's values are taken from: `after`, else `before`.
    pub fn key_row(&self) -> Option<&[Value]> {
        self.after.as_deref().or(self.before.as_deref())
    }
}

pub use walflow_pg::lsn::{Lsn, format_lsn, parse_lsn};
