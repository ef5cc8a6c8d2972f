//! The decoded pgoutput messages, one body type per message of protocol versions 1–4.
//!
//! Bodies borrow strings and tuple bytes from the buffer they were decoded from, so decoding a
//! change allocates only the vector of its column data; the assembler turns that straight into
//! owned `walflow_core::event::Value`s. Field names follow PostgreSQL's "Logical Replication Message
//! Formats" page. Timestamps are converted from PostgreSQL's epoch (2000-01-01) to microseconds
//! since the Unix epoch, the unit `walflow_core::event::Source::commit_time_us` uses.

/// Microseconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 00:00:00 UTC).
pub const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// `B`: a transaction starts.
    Begin(BeginBody),
    /// `C`: the transaction commits.
    Commit(CommitBody),
    /// `O`: the transaction originated on another node (replication origin).
    Origin(OriginBody<'a>),
    /// `R`: a relation's description; replaces any earlier one with the same oid.
    Relation(RelationBody<'a>),
    /// `Y`: a user type's name (sent before a relation that uses it).
    Type(TypeBody<'a>),
    /// `I`: a row was inserted.
    Insert(InsertBody<'a>),
    /// `U`: a row was updated.
    Update(UpdateBody<'a>),
    /// `D`: a row was deleted.
    Delete(DeleteBody<'a>),
    /// `T`: one or more tables were truncated.
    Truncate(TruncateBody),
    /// `M`: a logical decoding message (`pg_logical_emit_message`).
    Message(LogicalMessageBody<'a>),
    /// `S`: a block of a streamed (in-progress) transaction starts (protocol ≥ 2).
    StreamStart(StreamStartBody),
    /// `E`: the current streamed block ends.
    StreamStop,
    /// `c`: a streamed transaction commits.
    StreamCommit(StreamCommitBody),
    /// `A`: a streamed transaction, or one of its subtransactions, aborts.
    StreamAbort(StreamAbortBody),
    /// `b`: a prepared transaction's changes start (protocol ≥ 3, two-phase).
    BeginPrepare(BeginPrepareBody<'a>),
    /// `P`: the transaction was prepared (`PREPARE TRANSACTION`).
    Prepare(PrepareBody<'a>),
    /// `K`: a prepared transaction was committed (`COMMIT PREPARED`).
    CommitPrepared(CommitPreparedBody<'a>),
    /// `r`: a prepared transaction was rolled back (`ROLLBACK PREPARED`).
    RollbackPrepared(RollbackPreparedBody<'a>),
    /// `p`: a streamed transaction was prepared (protocol ≥ 3).
    StreamPrepare(PrepareBody<'a>),
}

impl Message<'_> {
    /// The message's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Message::Begin(_) => "Begin",
            Message::Commit(_) => "Commit",
            Message::Origin(_) => "Origin",
            Message::Relation(_) => "Relation",
            Message::Type(_) => "Type",
            Message::Insert(_) => "Insert",
            Message::Update(_) => "Update",
            Message::Delete(_) => "Delete",
            Message::Truncate(_) => "Truncate",
            Message::Message(_) => "Message",
            Message::StreamStart(_) => "Stream Start",
            Message::StreamStop => "Stream Stop",
            Message::StreamCommit(_) => "Stream Commit",
            Message::StreamAbort(_) => "Stream Abort",
            Message::BeginPrepare(_) => "Begin Prepare",
            Message::Prepare(_) => "Prepare",
            Message::CommitPrepared(_) => "Commit Prepared",
            Message::RollbackPrepared(_) => "Rollback Prepared",
            Message::StreamPrepare(_) => "Stream Prepare",
        }
    }
}

/// `B` Begin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BeginBody {
    /// The final LSN of the transaction (its commit record).
    pub final_lsn: u64,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_time_us: i64,
    /// Transaction id.
    pub xid: u32,
}

/// `C` Commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitBody {
    /// Flags (currently unused, 0).
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: u64,
    /// The end LSN of the transaction: what to confirm once it is delivered.
    pub end_lsn: u64,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_time_us: i64,
}

/// `O` Origin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OriginBody<'a> {
    /// The commit LSN on the origin server.
    pub commit_lsn: u64,
    /// The origin's name.
    pub name: &'a str,
}

/// Replica identity setting of a relation (`relreplident`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `d`: the primary key.
    Default,
    /// `n`: nothing.
    Nothing,
    /// `f`: all columns.
    Full,
    /// `i`: a chosen index.
    Index,
    /// Any other byte (kept rather than rejected, so a newer server does not stop the stream).
    Other(u8),
}

impl ReplicaIdentity {
    pub(crate) fn from_byte(b: u8) -> ReplicaIdentity {
        match b {
            b'd' => ReplicaIdentity::Default,
            b'n' => ReplicaIdentity::Nothing,
            b'f' => ReplicaIdentity::Full,
            b'i' => ReplicaIdentity::Index,
            other => ReplicaIdentity::Other(other),
        }
    }
}

/// `R` Relation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationBody<'a> {
    /// The streamed transaction's xid, inside a stream block.
    pub xid: Option<u32>,
    /// Relation oid.
    pub rel_id: u32,
    /// Namespace; pgoutput sends an empty string for `pg_catalog`.
    pub namespace: &'a str,
    /// Relation name.
    pub name: &'a str,
    /// Replica identity setting.
    pub replica_identity: ReplicaIdentity,
    /// Columns in table order (dropped and, before PostgreSQL 18, generated columns omitted).
    pub columns: Vec<ColumnBody<'a>>,
}

/// One column of a [`RelationBody`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnBody<'a> {
    /// Flags: bit 1 marks a replica identity (key) column.
    pub flags: u8,
    /// Column name.
    pub name: &'a str,
    /// Type oid.
    pub type_oid: u32,
    /// Type modifier (`atttypmod`).
    pub type_modifier: i32,
}

impl ColumnBody<'_> {
    /// Whether the column is part of the replica identity.
    pub fn is_key(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// `Y` Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TypeBody<'a> {
    /// The streamed transaction's xid, inside a stream block.
    pub xid: Option<u32>,
    /// Type oid.
    pub type_oid: u32,
    /// Namespace; empty for `pg_catalog`.
    pub namespace: &'a str,
    /// Type name.
    pub name: &'a str,
}

/// One column's datum in a tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datum<'a> {
    /// `n`: SQL NULL.
    Null,
    /// `u`: an unchanged TOASTed value that was not sent.
    UnchangedToast,
    /// `t`: the value in the type's text output format.
    Text(&'a [u8]),
    /// `b`: the value in the type's binary format (only when `binary 'true'` was requested).
    Binary(&'a [u8]),
}

/// A tuple: one [`Datum`] per column, in the relation's column order.
pub type TupleData<'a> = Vec<Datum<'a>>;

/// The old row sent with an update or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OldTuple<'a> {
    /// `K`: only the replica identity columns carry values; the rest are NULL.
    Key(TupleData<'a>),
    /// `O`: the whole old row (REPLICA IDENTITY FULL).
    Full(TupleData<'a>),
}

impl<'a> OldTuple<'a> {
    /// The tuple, whichever kind it is.
    pub fn tuple(&self) -> &TupleData<'a> {
        match self {
            OldTuple::Key(t) | OldTuple::Full(t) => t,
        }
    }
}

/// `I` Insert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InsertBody<'a> {
    /// The (sub)transaction's xid, inside a stream block.
    pub xid: Option<u32>,
    /// Relation oid.
    pub rel_id: u32,
    /// The new row.
    pub new: TupleData<'a>,
}

/// `U` Update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateBody<'a> {
    /// The (sub)transaction's xid, inside a stream block.
    pub xid: Option<u32>,
    /// Relation oid.
    pub rel_id: u32,
    /// The old row or key, when the replica identity makes the server send it.
    pub old: Option<OldTuple<'a>>,
    /// The new row.
    pub new: TupleData<'a>,
}

/// `D` Delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeleteBody<'a> {
    /// The (sub)transaction's xid, inside a stream block.
    pub xid: Option<u32>,
    /// Relation oid.
    pub rel_id: u32,
    /// The old row or key.
    pub old: OldTuple<'a>,
}

/// `T` Truncate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TruncateBody {
    /// The (sub)transaction's xid, inside a stream block.
    pub xid: Option<u32>,
    /// Option bits: [`TruncateBody::CASCADE`], [`TruncateBody::RESTART_IDENTITY`].
    pub options: u8,
    /// The truncated relations' oids.
    pub rel_ids: Vec<u32>,
}

impl TruncateBody {
    /// `TRUNCATE … CASCADE`.
    pub const CASCADE: u8 = 1;
    /// `TRUNCATE … RESTART IDENTITY`.
    pub const RESTART_IDENTITY: u8 = 2;

    /// Whether `CASCADE` was given.
    pub fn cascade(&self) -> bool {
        self.options & Self::CASCADE != 0
    }

    /// Whether `RESTART IDENTITY` was given.
    pub fn restart_identity(&self) -> bool {
        self.options & Self::RESTART_IDENTITY != 0
    }
}

/// `M` Message (logical decoding message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogicalMessageBody<'a> {
    /// The (sub)transaction's xid, inside a stream block.
    pub xid: Option<u32>,
    /// Flags: bit 1 marks a transactional message.
    pub flags: u8,
    /// LSN of the message.
    pub lsn: u64,
    /// The prefix given to `pg_logical_emit_message`.
    pub prefix: &'a str,
    /// The content.
    pub content: &'a [u8],
}

impl LogicalMessageBody<'_> {
    /// Whether the message was emitted transactionally.
    pub fn transactional(&self) -> bool {
        self.flags & 1 != 0
    }
}

/// `S` Stream Start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamStartBody {
    /// The top-level transaction's xid.
    pub xid: u32,
    /// Whether this is the transaction's first block.
    pub first_segment: bool,
}

/// `c` Stream Commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamCommitBody {
    /// The top-level transaction's xid.
    pub xid: u32,
    /// Flags (currently unused, 0).
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: u64,
    /// The end LSN of the transaction.
    pub end_lsn: u64,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_time_us: i64,
}

/// `A` Stream Abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamAbortBody {
    /// The top-level transaction's xid.
    pub xid: u32,
    /// The aborted subtransaction's xid; equal to `xid` when the whole transaction aborts.
    pub subxid: u32,
    /// LSN of the abort record and abort time (µs since the Unix epoch); sent only by
    /// protocol 4 with `streaming 'parallel'`.
    pub abort: Option<(u64, i64)>,
}

impl StreamAbortBody {
    /// Whether the whole top-level transaction aborted (not just a subtransaction).
    pub fn is_top_level(&self) -> bool {
        self.xid == self.subxid
    }
}

/// `b` Begin Prepare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BeginPrepareBody<'a> {
    /// LSN of the prepare record.
    pub prepare_lsn: u64,
    /// The end LSN of the prepared transaction.
    pub end_lsn: u64,
    /// Prepare time, microseconds since the Unix epoch.
    pub prepare_time_us: i64,
    /// Transaction id.
    pub xid: u32,
    /// The global transaction identifier given to `PREPARE TRANSACTION`.
    pub gid: &'a str,
}

/// `P` Prepare and `p` Stream Prepare (same layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrepareBody<'a> {
    /// Flags (currently unused, 0).
    pub flags: u8,
    /// LSN of the prepare record.
    pub prepare_lsn: u64,
    /// The end LSN of the prepared transaction.
    pub end_lsn: u64,
    /// Prepare time, microseconds since the Unix epoch.
    pub prepare_time_us: i64,
    /// Transaction id.
    pub xid: u32,
    /// The global transaction identifier.
    pub gid: &'a str,
}

/// `K` Commit Prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitPreparedBody<'a> {
    /// Flags (currently unused, 0).
    pub flags: u8,
    /// LSN of the commit record.
    pub commit_lsn: u64,
    /// The end LSN of the commit.
    pub end_lsn: u64,
    /// Commit time, microseconds since the Unix epoch.
    pub commit_time_us: i64,
    /// Transaction id.
    pub xid: u32,
    /// The global transaction identifier.
    pub gid: &'a str,
}

/// `r` Rollback Prepared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RollbackPreparedBody<'a> {
    /// Flags (currently unused, 0).
    pub flags: u8,
    /// The end LSN of the prepared transaction.
    pub prepare_end_lsn: u64,
    /// The end LSN of the rollback.
    pub rollback_end_lsn: u64,
    /// Prepare time, microseconds since the Unix epoch.
    pub prepare_time_us: i64,
    /// Rollback time, microseconds since the Unix epoch.
    pub rollback_time_us: i64,
    /// Transaction id.
    pub xid: u32,
    /// The global transaction identifier.
    pub gid: &'a str,
}
