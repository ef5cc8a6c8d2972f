//! Parsing one pgoutput message from the bytes of an XLogData payload.
//!
//! Every read is bounds-checked; malformed input yields a [`DecodeError`] naming the message,
//! the field and the byte offset, never a panic. Messages sent inside a streamed block
//! (between Stream Start and Stream Stop) carry an extra xid after the tag; whether we are in
//! such a block is state the caller knows, so [`decode`] takes it as an argument and
//! [`Decoder`] tracks it for callers that prefer not to.

use super::message::*;

/// Message tags (the first byte of every pgoutput message).
pub mod tag {
    /// Begin.
    pub const BEGIN: u8 = b'B';
    /// Commit.
    pub const COMMIT: u8 = b'C';
    /// Origin.
    pub const ORIGIN: u8 = b'O';
    /// Relation.
    pub const RELATION: u8 = b'R';
    /// Type.
    pub const TYPE: u8 = b'Y';
    /// Insert.
    pub const INSERT: u8 = b'I';
    /// Update.
    pub const UPDATE: u8 = b'U';
    /// Delete.
    pub const DELETE: u8 = b'D';
    /// Truncate.
    pub const TRUNCATE: u8 = b'T';
    /// Logical decoding message.
    pub const MESSAGE: u8 = b'M';
    /// Stream Start.
    pub const STREAM_START: u8 = b'S';
    /// Stream Stop.
    pub const STREAM_STOP: u8 = b'E';
    /// Stream Commit.
    pub const STREAM_COMMIT: u8 = b'c';
    /// Stream Abort.
    pub const STREAM_ABORT: u8 = b'A';
    /// Begin Prepare.
    pub const BEGIN_PREPARE: u8 = b'b';
    /// Prepare.
    pub const PREPARE: u8 = b'P';
    /// Commit Prepared.
    pub const COMMIT_PREPARED: u8 = b'K';
    /// Rollback Prepared.
    pub const ROLLBACK_PREPARED: u8 = b'r';
    /// Stream Prepare.
    pub const STREAM_PREPARE: u8 = b'p';
}

/// Why a pgoutput message could not be decoded. Always fatal for the message: the stream is
/// not what pgoutput sends (a bug or a protocol mismatch), so retrying the same bytes cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The buffer was empty.
    #[error("empty pgoutput message: expected at least a tag byte")]
    Empty,
    /// The first byte is not a known message tag.
    #[error(
        "unknown pgoutput message tag 0x{tag:02x} at offset 0; is the slot using a plugin other than pgoutput?"
    )]
    UnknownTag {
        /// The byte found.
        tag: u8,
    },
    /// The message ended before a field was complete.
    #[error(
        "pgoutput {message} message truncated: {field} at offset {offset} needs {needed} bytes, {available} left"
    )]
    Truncated {
        /// Which message.
        message: &'static str,
        /// Which field.
        field: &'static str,
        /// Where the field starts.
        offset: usize,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes left in the buffer.
        available: usize,
    },
    /// A string field had no terminating NUL.
    #[error("pgoutput {message} message: {field} at offset {offset} has no terminating NUL")]
    UnterminatedString {
        /// Which message.
        message: &'static str,
        /// Which field.
        field: &'static str,
        /// Where the string starts.
        offset: usize,
    },
    /// A string field was not UTF-8.
    #[error(
        "pgoutput {message} message: {field} at offset {offset} is not valid UTF-8; set client_encoding to UTF8"
    )]
    InvalidUtf8 {
        /// Which message.
        message: &'static str,
        /// Which field.
        field: &'static str,
        /// Where the string starts.
        offset: usize,
    },
    /// A field had a value the protocol does not allow (e.g. a negative length, an unknown
    /// tuple datum kind).
    #[error("pgoutput {message} message: invalid {field} {value} at offset {offset}")]
    InvalidField {
        /// Which message.
        message: &'static str,
        /// Which field.
        field: &'static str,
        /// Where the field starts.
        offset: usize,
        /// The value found, rendered for the message.
        value: i64,
    },
    /// Bytes were left over after the last field.
    #[error("pgoutput {message} message has {count} unexpected trailing bytes at offset {offset}")]
    TrailingBytes {
        /// Which message.
        message: &'static str,
        /// Where the extra bytes start.
        offset: usize,
        /// How many.
        count: usize,
    },
}

/// Decodes one pgoutput message. `in_stream` says whether the message arrived between a Stream
/// Start and a Stream Stop, where Relation, Type, Insert, Update, Delete, Truncate and Message
/// carry a (sub)transaction xid after the tag.
pub fn decode(buf: &[u8], in_stream: bool) -> Result<Message<'_>, DecodeError> {
    let (&tag, _) = buf.split_first().ok_or(DecodeError::Empty)?;
    let mut r = Reader {
        buf,
        pos: 1,
        message: message_name(tag).ok_or(DecodeError::UnknownTag { tag })?,
    };
    let xid = |r: &mut Reader<'_>| -> Result<Option<u32>, DecodeError> {
        if in_stream {
            r.u32("xid").map(Some)
        } else {
            Ok(None)
        }
    };
    let msg = match tag {
        tag::BEGIN => Message::Begin(BeginBody {
            final_lsn: r.u64("final lsn")?,
            commit_time_us: r.timestamp("commit timestamp")?,
            xid: r.u32("xid")?,
        }),
        tag::COMMIT => Message::Commit(CommitBody {
            flags: r.u8("flags")?,
            commit_lsn: r.u64("commit lsn")?,
            end_lsn: r.u64("end lsn")?,
            commit_time_us: r.timestamp("commit timestamp")?,
        }),
        tag::ORIGIN => Message::Origin(OriginBody {
            commit_lsn: r.u64("origin commit lsn")?,
            name: r.cstr("origin name")?,
        }),
        tag::RELATION => {
            let xid = xid(&mut r)?;
            Message::Relation(relation(&mut r, xid)?)
        }
        tag::TYPE => Message::Type(TypeBody {
            xid: xid(&mut r)?,
            type_oid: r.u32("type oid")?,
            namespace: r.cstr("namespace")?,
            name: r.cstr("type name")?,
        }),
        tag::INSERT => {
            let xid = xid(&mut r)?;
            let rel_id = r.u32("relation oid")?;
            r.expect(b'N', "new tuple marker")?;
            Message::Insert(InsertBody {
                xid,
                rel_id,
                new: r.tuple()?,
            })
        }
        tag::UPDATE => {
            let xid = xid(&mut r)?;
            let rel_id = r.u32("relation oid")?;
            let offset = r.pos;
            let old = match r.u8("tuple marker")? {
                b'K' => Some(OldTuple::Key(r.tuple()?)),
                b'O' => Some(OldTuple::Full(r.tuple()?)),
                b'N' => {
                    r.pos = offset;
                    None
                }
                other => return Err(r.invalid("tuple marker", offset, i64::from(other))),
            };
            r.expect(b'N', "new tuple marker")?;
            Message::Update(UpdateBody {
                xid,
                rel_id,
                old,
                new: r.tuple()?,
            })
        }
        tag::DELETE => {
            let xid = xid(&mut r)?;
            let rel_id = r.u32("relation oid")?;
            let offset = r.pos;
            let old = match r.u8("tuple marker")? {
                b'K' => OldTuple::Key(r.tuple()?),
                b'O' => OldTuple::Full(r.tuple()?),
                other => return Err(r.invalid("tuple marker", offset, i64::from(other))),
            };
            Message::Delete(DeleteBody { xid, rel_id, old })
        }
        tag::TRUNCATE => {
            let xid = xid(&mut r)?;
            let offset = r.pos;
            let count = r.i32("relation count")?;
            let count = usize::try_from(count)
                .map_err(|_| r.invalid("relation count", offset, i64::from(count)))?;
            let options = r.u8("options")?;
            let mut rel_ids = Vec::with_capacity(count.min(r.remaining() / 4));
            for _ in 0..count {
                rel_ids.push(r.u32("relation oid")?);
            }
            Message::Truncate(TruncateBody {
                xid,
                options,
                rel_ids,
            })
        }
        tag::MESSAGE => {
            let xid = xid(&mut r)?;
            let flags = r.u8("flags")?;
            let lsn = r.u64("message lsn")?;
            let prefix = r.cstr("prefix")?;
            let content = r.counted("content")?;
            Message::Message(LogicalMessageBody {
                xid,
                flags,
                lsn,
                prefix,
                content,
            })
        }
        tag::STREAM_START => Message::StreamStart(StreamStartBody {
            xid: r.u32("xid")?,
            first_segment: r.u8("first segment flag")? == 1,
        }),
        tag::STREAM_STOP => Message::StreamStop,
        tag::STREAM_COMMIT => Message::StreamCommit(StreamCommitBody {
            xid: r.u32("xid")?,
            flags: r.u8("flags")?,
            commit_lsn: r.u64("commit lsn")?,
            end_lsn: r.u64("end lsn")?,
            commit_time_us: r.timestamp("commit timestamp")?,
        }),
        tag::STREAM_ABORT => {
            let xid = r.u32("xid")?;
            let subxid = r.u32("subtransaction xid")?;
            // Protocol 4 with streaming = parallel appends the abort LSN and time; nothing
            // else in the message tells us, so the length does.
            let abort = if r.remaining() == 0 {
                None
            } else {
                Some((r.u64("abort lsn")?, r.timestamp("abort timestamp")?))
            };
            Message::StreamAbort(StreamAbortBody { xid, subxid, abort })
        }
        tag::BEGIN_PREPARE => Message::BeginPrepare(BeginPrepareBody {
            prepare_lsn: r.u64("prepare lsn")?,
            end_lsn: r.u64("end lsn")?,
            prepare_time_us: r.timestamp("prepare timestamp")?,
            xid: r.u32("xid")?,
            gid: r.cstr("gid")?,
        }),
        tag::PREPARE => Message::Prepare(prepare(&mut r)?),
        tag::STREAM_PREPARE => Message::StreamPrepare(prepare(&mut r)?),
        tag::COMMIT_PREPARED => Message::CommitPrepared(CommitPreparedBody {
            flags: r.u8("flags")?,
            commit_lsn: r.u64("commit lsn")?,
            end_lsn: r.u64("end lsn")?,
            commit_time_us: r.timestamp("commit timestamp")?,
            xid: r.u32("xid")?,
            gid: r.cstr("gid")?,
        }),
        tag::ROLLBACK_PREPARED => Message::RollbackPrepared(RollbackPreparedBody {
            flags: r.u8("flags")?,
            prepare_end_lsn: r.u64("prepare end lsn")?,
            rollback_end_lsn: r.u64("rollback end lsn")?,
            prepare_time_us: r.timestamp("prepare timestamp")?,
            rollback_time_us: r.timestamp("rollback timestamp")?,
            xid: r.u32("xid")?,
            gid: r.cstr("gid")?,
        }),
        _ => return Err(DecodeError::UnknownTag { tag }),
    };
    r.finish()?;
    Ok(msg)
}

/// A decoder that tracks Stream Start / Stream Stop itself, so the caller only hands it bytes.
#[derive(Debug, Clone, Default)]
pub struct Decoder {
    in_stream: bool,
}

impl Decoder {
    /// A decoder outside any streamed block.
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Whether the last message left us inside a streamed block.
    pub fn in_stream(&self) -> bool {
        self.in_stream
    }

    /// Decodes one message, entering or leaving the streamed block on Stream Start / Stop.
    pub fn decode<'a>(&mut self, buf: &'a [u8]) -> Result<Message<'a>, DecodeError> {
        let msg = decode(buf, self.in_stream)?;
        match msg {
            Message::StreamStart(_) => self.in_stream = true,
            Message::StreamStop => self.in_stream = false,
            _ => {}
        }
        Ok(msg)
    }

    /// Forgets any streamed block (after a reconnect).
    pub fn reset(&mut self) {
        self.in_stream = false;
    }
}

fn message_name(tag: u8) -> Option<&'static str> {
    Some(match tag {
        tag::BEGIN => "Begin",
        tag::COMMIT => "Commit",
        tag::ORIGIN => "Origin",
        tag::RELATION => "Relation",
        tag::TYPE => "Type",
        tag::INSERT => "Insert",
        tag::UPDATE => "Update",
        tag::DELETE => "Delete",
        tag::TRUNCATE => "Truncate",
        tag::MESSAGE => "Message",
        tag::STREAM_START => "Stream Start",
        tag::STREAM_STOP => "Stream Stop",
        tag::STREAM_COMMIT => "Stream Commit",
        tag::STREAM_ABORT => "Stream Abort",
        tag::BEGIN_PREPARE => "Begin Prepare",
        tag::PREPARE => "Prepare",
        tag::COMMIT_PREPARED => "Commit Prepared",
        tag::ROLLBACK_PREPARED => "Rollback Prepared",
        tag::STREAM_PREPARE => "Stream Prepare",
        _ => return None,
    })
}

fn relation<'a>(r: &mut Reader<'a>, xid: Option<u32>) -> Result<RelationBody<'a>, DecodeError> {
    let rel_id = r.u32("relation oid")?;
    let namespace = r.cstr("namespace")?;
    let name = r.cstr("relation name")?;
    let replica_identity = ReplicaIdentity::from_byte(r.u8("replica identity")?);
    let offset = r.pos;
    let count = r.i16("column count")?;
    let count =
        usize::try_from(count).map_err(|_| r.invalid("column count", offset, i64::from(count)))?;
    // Each column needs at least 10 bytes; never pre-allocate more than the buffer can hold.
    let mut columns = Vec::with_capacity(count.min(r.remaining() / 10));
    for _ in 0..count {
        columns.push(ColumnBody {
            flags: r.u8("column flags")?,
            name: r.cstr("column name")?,
            type_oid: r.u32("column type oid")?,
            type_modifier: r.i32("column type modifier")?,
        });
    }
    Ok(RelationBody {
        xid,
        rel_id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

fn prepare<'a>(r: &mut Reader<'a>) -> Result<PrepareBody<'a>, DecodeError> {
    Ok(PrepareBody {
        flags: r.u8("flags")?,
        prepare_lsn: r.u64("prepare lsn")?,
        end_lsn: r.u64("end lsn")?,
        prepare_time_us: r.timestamp("prepare timestamp")?,
        xid: r.u32("xid")?,
        gid: r.cstr("gid")?,
    })
}

/// A bounds-checked cursor over one message.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    message: &'static str,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let slice = self
            .pos
            .checked_add(n)
            .and_then(|end| self.buf.get(self.pos..end))
            .ok_or(DecodeError::Truncated {
                message: self.message,
                field,
                offset: self.pos,
                needed: n,
                available: self.remaining(),
            })?;
        self.pos += n;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let slice = self.take(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(slice);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(field)?))
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A PostgreSQL timestamp (µs since 2000-01-01), returned as µs since the Unix epoch.
    fn timestamp(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        let pg = i64::from_be_bytes(self.array(field)?);
        Ok(pg.saturating_add(PG_EPOCH_OFFSET_US))
    }

    fn expect(&mut self, want: u8, field: &'static str) -> Result<(), DecodeError> {
        let offset = self.pos;
        let got = self.u8(field)?;
        if got == want {
            Ok(())
        } else {
            Err(self.invalid(field, offset, i64::from(got)))
        }
    }

    fn cstr(&mut self, field: &'static str) -> Result<&'a str, DecodeError> {
        let start = self.pos;
        let rest = self.buf.get(start..).unwrap_or_default();
        let len = rest
            .iter()
            .position(|&b| b == 0)
            .ok_or(DecodeError::UnterminatedString {
                message: self.message,
                field,
                offset: start,
            })?;
        let bytes = self.take(len, field)?;
        self.pos += 1; // the NUL, known to be there
        std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8 {
            message: self.message,
            field,
            offset: start,
        })
    }

    /// An Int32 length followed by that many bytes.
    fn counted(&mut self, field: &'static str) -> Result<&'a [u8], DecodeError> {
        let offset = self.pos;
        let len = self.i32(field)?;
        let len = usize::try_from(len).map_err(|_| self.invalid(field, offset, i64::from(len)))?;
        self.take(len, field)
    }

    fn tuple(&mut self) -> Result<TupleData<'a>, DecodeError> {
        let offset = self.pos;
        let count = self.i16("tuple column count")?;
        let count = usize::try_from(count)
            .map_err(|_| self.invalid("tuple column count", offset, i64::from(count)))?;
        let mut datums = Vec::with_capacity(count.min(self.remaining()));
        for _ in 0..count {
            let offset = self.pos;
            let datum = match self.u8("tuple datum kind")? {
                b'n' => Datum::Null,
                b'u' => Datum::UnchangedToast,
                b't' => Datum::Text(self.counted("text datum")?),
                b'b' => Datum::Binary(self.counted("binary datum")?),
                other => return Err(self.invalid("tuple datum kind", offset, i64::from(other))),
            };
            datums.push(datum);
        }
        Ok(datums)
    }

    fn invalid(&self, field: &'static str, offset: usize, value: i64) -> DecodeError {
        DecodeError::InvalidField {
            message: self.message,
            field,
            offset,
            value,
        }
    }

    fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes {
                message: self.message,
                offset: self.pos,
                count,
            }),
        }
    }
}
