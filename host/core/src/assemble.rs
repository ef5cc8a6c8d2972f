//! Decoded pgoutput messages → committed transactions of [`Event`]s.
//!
//! The [`Assembler`] is the state pgoutput's protocol needs and the decoder deliberately lacks:
//!
//! - a relation cache: a Relation message becomes an `Arc<Relation>` (column type names from
//!   the [`TypeRegistry`], key flags from the replica identity) plus a resolved value codec per
//!   column. A new Relation message for the same oid replaces the entry, so a schema change
//!   takes effect from the next event while earlier events keep the `Arc` they were built with.
//!   Relation messages inside a streamed block apply to that transaction only until it
//!   commits (as PostgreSQL's own apply worker replays them), so an interleaved transaction
//!   never sees a schema that is not yet committed.
//! - Type messages, fed into the registry.
//! - transaction boundaries: events are buffered until the transaction commits and are then
//!   handed over as one [`Transaction`]; nothing from an aborted or rolled-back transaction
//!   is ever returned. Streamed transactions (protocol ≥ 2) are buffered per xid across
//!   blocks; a subtransaction abort drops only that subtransaction's changes. Two-phase
//!   transactions are held from Prepare (or Stream Prepare) until Commit Prepared, and
//!   dropped on Rollback Prepared.
//! - non-transactional logical messages are handed over at once as a unit of their own.
//!
//! Every event carries the LSN of the XLogData message it arrived in (for logical messages,
//! the message's own LSN), its top-level xid, its commit time and the database name.
//!
//! Errors mean the message stream is not what pgoutput sends (out of order, a change for a
//! relation never described). They are fatal for the connection: the caller should stop,
//! reconnect and resume from its last checkpoint, never skip.

use std::collections::HashMap;
use std::sync::Arc;

use crate::event::{Column, Event, LogicalMessage, Lsn, Op, Relation, Row, Source, Value};
use crate::value::{TextCodec, TypeRegistry};
use walflow_pgoutput::*;
use walflow_pgoutput::{DecodeError, decode};

/// A committed transaction (or a non-transactional logical message), ready to deliver.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    /// The top-level transaction id (`None` for a non-transactional logical message).
    pub xid: Option<u32>,
    /// LSN of the commit record (for a non-transactional message, the message's LSN).
    pub commit_lsn: Lsn,
    /// The LSN to confirm once every event of this unit has been delivered.
    pub end_lsn: Lsn,
    /// Commit time, microseconds since the Unix epoch (0 when unknown).
    pub commit_time_us: i64,
    /// The global transaction id, for a two-phase transaction.
    pub gid: Option<String>,
    /// The events, in the order the server sent them.
    pub events: Vec<Event>,
}

/// Why the assembler rejected a message. Every variant is fatal for the connection: the
/// stream is not what pgoutput sends, so reconnect and resume from the last checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssembleError {
    /// The bytes were not a pgoutput message.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A change named a relation no Relation message described.
    #[error(
        "pgoutput sent a change for relation oid {rel_id} before any Relation message described it; reconnect to resume from the last checkpoint"
    )]
    UnknownRelation {
        /// The relation oid.
        rel_id: u32,
    },
    /// A tuple had a different number of columns than its relation.
    #[error(
        "pgoutput sent {got} columns for {relation}, but its Relation message has {expected}; reconnect to resume from the last checkpoint"
    )]
    ColumnCount {
        /// `schema.table`.
        relation: String,
        /// Columns in the relation.
        expected: usize,
        /// Columns in the tuple.
        got: usize,
    },
    /// A message arrived where the protocol does not allow it.
    #[error(
        "pgoutput sent {message} {context}; the stream is out of order, reconnect to resume from the last checkpoint"
    )]
    OutOfOrder {
        /// Which message.
        message: &'static str,
        /// What was wrong about the moment it arrived.
        context: &'static str,
    },
    /// A streamed block or commit for a transaction whose first block we never saw.
    #[error(
        "pgoutput continued streamed transaction {xid} whose first block this connection never saw; reconnect to resume from the last checkpoint"
    )]
    UnknownStream {
        /// The top-level xid.
        xid: u32,
    },
    /// Commit Prepared for a transaction we do not hold.
    #[error(
        "pgoutput committed prepared transaction '{gid}' whose changes walflow does not hold (it was prepared before the confirmed position); re-snapshot the affected tables or resume from an earlier position"
    )]
    UnknownPrepared {
        /// The global transaction id.
        gid: String,
    },
}

/// A cached relation and the codec of each of its columns.
#[derive(Debug, Clone)]
struct RelEntry {
    relation: Arc<Relation>,
    codecs: Arc<[TextCodec]>,
}

/// The transaction between Begin (or Begin Prepare) and Commit (or Prepare).
#[derive(Debug)]
struct OpenTxn {
    xid: u32,
    commit_time_us: i64,
    gid: Option<String>,
    prepare_lsn: Lsn,
    events: Vec<Event>,
}

/// A streamed transaction being received block by block.
#[derive(Debug, Default)]
struct StreamTxn {
    /// Events with the (sub)transaction xid that made them.
    events: Vec<(u32, Event)>,
    /// Relations described inside this transaction's blocks.
    relations: HashMap<u32, RelEntry>,
}

/// A prepared transaction waiting for Commit Prepared or Rollback Prepared.
#[derive(Debug)]
struct Prepared {
    xid: u32,
    prepare_lsn: Lsn,
    events: Vec<Event>,
}

/// Turns pgoutput messages into committed [`Transaction`]s. See the module docs.
#[derive(Debug)]
pub struct Assembler {
    db: Arc<str>,
    registry: TypeRegistry,
    relations: HashMap<u32, RelEntry>,
    current: Option<OpenTxn>,
    active_stream: Option<u32>,
    streams: HashMap<u32, StreamTxn>,
    prepared: HashMap<String, Prepared>,
    message_relation: Arc<Relation>,
    key_columns: HashMap<u32, Vec<String>>,
    /// The end LSN of the last Commit (Commit Prepared, Stream Commit) seen, for
    /// `Source::last_commit_lsn`.
    last_commit_lsn: Option<Lsn>,
}

impl Assembler {
    /// An assembler for database `db` (written into every event's `source.db`), decoding
    /// values with `registry`.
    pub fn new(db: impl Into<Arc<str>>, registry: TypeRegistry) -> Assembler {
        Assembler {
            db: db.into(),
            registry,
            relations: HashMap::new(),
            current: None,
            active_stream: None,
            streams: HashMap::new(),
            prepared: HashMap::new(),
            message_relation: Arc::new(Relation {
                oid: 0,
                schema: String::new(),
                table: String::new(),
                columns: Vec::new(),
            }),
            key_columns: HashMap::new(),
            last_commit_lsn: None,
        }
    }

    /// Names the columns that form the event key of relation `rel_id`, overriding the replica
    /// identity flags of its Relation messages from the next one on (`None` goes back to the
    /// flags). Under `REPLICA IDENTITY FULL` pgoutput flags every column, while the event key
    /// (as in Debezium) is the primary key, which only the catalog knows.
    pub fn set_key_columns(&mut self, rel_id: u32, columns: Option<Vec<String>>) {
        match columns {
            Some(columns) => self.key_columns.insert(rel_id, columns),
            None => self.key_columns.remove(&rel_id),
        };
    }

    /// The type registry (e.g. to add catalog types at connect time).
    pub fn registry(&self) -> &TypeRegistry {
        &self.registry
    }

    /// The type registry, mutably. Relations described afterwards use the changes.
    pub fn registry_mut(&mut self) -> &mut TypeRegistry {
        &mut self.registry
    }

    /// The cached relation with this oid (outside any streamed transaction).
    pub fn relation(&self, rel_id: u32) -> Option<&Arc<Relation>> {
        self.relations.get(&rel_id).map(|e| &e.relation)
    }

    /// Whether the next message is inside a streamed block (its changes carry an xid).
    pub fn in_stream(&self) -> bool {
        self.active_stream.is_some()
    }

    /// The lowest prepare LSN of the prepared transactions held, if any. Never confirm a flush
    /// position at or beyond it while it is held: the server would not send those changes
    /// again after a restart, only their Commit Prepared.
    pub fn held_since_lsn(&self) -> Option<Lsn> {
        self.prepared.values().map(|p| p.prepare_lsn).min()
    }

    /// The prepare LSN of the held prepared transaction `gid`, if it is held.
    pub fn prepare_lsn_of(&self, gid: &str) -> Option<Lsn> {
        self.prepared.get(gid).map(|p| p.prepare_lsn)
    }

    /// How many events the open (non-streamed) transaction has buffered so far.
    pub fn open_events(&self) -> usize {
        self.current.as_ref().map_or(0, |t| t.events.len())
    }

    /// Hands over the events buffered so far of the open transaction, to bound memory on
    /// huge transactions. Safe because pgoutput sends a non-streamed transaction only after
    /// it committed; returns `None` for a prepared transaction (Begin Prepare … Prepare may
    /// still roll back) and outside a transaction. The Commit that follows returns the rest
    /// and the end LSN: deliver these events, but confirm nothing until that Commit's unit
    /// is delivered too.
    pub fn take_committed_events(&mut self) -> Option<Vec<Event>> {
        let txn = self
            .current
            .as_mut()
            .filter(|t| t.gid.is_none() && !t.events.is_empty())?;
        Some(std::mem::take(&mut txn.events))
    }

    /// Forgets transactions in flight (after a reconnect the server sends them again from
    /// their start). Relations, types and prepared transactions are kept.
    pub fn reset_in_flight(&mut self) {
        self.current = None;
        self.active_stream = None;
        self.streams.clear();
    }

    /// Decodes `buf` (tracking streamed blocks itself) and feeds the message in.
    pub fn push_bytes(
        &mut self,
        wal_start: Lsn,
        buf: &[u8],
    ) -> Result<Option<Transaction>, AssembleError> {
        let msg = decode(buf, self.in_stream())?;
        self.push(wal_start, msg)
    }

    /// Feeds one message that arrived in an XLogData message starting at `wal_start`.
    /// Returns a unit to deliver when one completes.
    pub fn push(
        &mut self,
        wal_start: Lsn,
        msg: Message<'_>,
    ) -> Result<Option<Transaction>, AssembleError> {
        match msg {
            Message::Begin(b) => self.begin(OpenTxn {
                xid: b.xid,
                commit_time_us: b.commit_time_us,
                gid: None,
                prepare_lsn: Lsn(b.final_lsn),
                events: Vec::new(),
            })?,
            Message::Commit(c) => return self.commit(c).map(Some),
            Message::Origin(_) => {}
            Message::Relation(r) => self.relation_message(&r),
            Message::Type(t) => self.type_message(&t),
            Message::Insert(i) => {
                let entry = self.entry(i.rel_id)?;
                let after = build_row(&entry, &i.new)?;
                self.change(wal_start, i.xid, &entry, Op::Create, None, Some(after))?;
            }
            Message::Update(u) => {
                let entry = self.entry(u.rel_id)?;
                let before = match &u.old {
                    Some(old) => Some(build_row(&entry, old.tuple())?),
                    None => None,
                };
                let after = build_row(&entry, &u.new)?;
                self.change(wal_start, u.xid, &entry, Op::Update, before, Some(after))?;
            }
            Message::Delete(d) => {
                let entry = self.entry(d.rel_id)?;
                let before = build_row(&entry, d.old.tuple())?;
                self.change(wal_start, d.xid, &entry, Op::Delete, Some(before), None)?;
            }
            Message::Truncate(t) => {
                for &rel_id in &t.rel_ids {
                    let entry = self.entry(rel_id)?;
                    self.change(wal_start, t.xid, &entry, Op::Truncate, None, None)?;
                }
            }
            Message::Message(m) => return self.logical_message(&m),
            Message::StreamStart(s) => self.stream_start(s)?,
            Message::StreamStop => {
                if self.active_stream.take().is_none() {
                    return Err(out_of_order("Stream Stop", "outside a streamed block"));
                }
            }
            Message::StreamCommit(c) => return self.stream_commit(c).map(Some),
            Message::StreamAbort(a) => self.stream_abort(a)?,
            Message::BeginPrepare(b) => self.begin(OpenTxn {
                xid: b.xid,
                commit_time_us: b.prepare_time_us,
                gid: Some(b.gid.to_owned()),
                prepare_lsn: Lsn(b.prepare_lsn),
                events: Vec::new(),
            })?,
            Message::Prepare(p) => self.prepare(p)?,
            Message::StreamPrepare(p) => self.stream_prepare(p)?,
            Message::CommitPrepared(c) => return self.commit_prepared(c).map(Some),
            Message::RollbackPrepared(r) => {
                self.idle("Rollback Prepared")?;
                self.prepared.remove(r.gid);
            }
        }
        Ok(None)
    }

    /// Errors unless no transaction or streamed block is open.
    fn idle(&self, message: &'static str) -> Result<(), AssembleError> {
        if self.current.is_some() {
            return Err(out_of_order(message, "inside a transaction"));
        }
        if self.active_stream.is_some() {
            return Err(out_of_order(message, "inside a streamed block"));
        }
        Ok(())
    }

    fn begin(&mut self, txn: OpenTxn) -> Result<(), AssembleError> {
        self.idle(if txn.gid.is_some() {
            "Begin Prepare"
        } else {
            "Begin"
        })?;
        self.current = Some(txn);
        Ok(())
    }

    fn commit(&mut self, c: CommitBody) -> Result<Transaction, AssembleError> {
        let txn = match self.current.take() {
            Some(txn) if txn.gid.is_none() => txn,
            other => {
                self.current = other;
                return Err(out_of_order("Commit", "without a Begin"));
            }
        };
        self.last_commit_lsn = Some(Lsn(c.end_lsn));
        Ok(Transaction {
            xid: Some(txn.xid),
            commit_lsn: Lsn(c.commit_lsn),
            end_lsn: Lsn(c.end_lsn),
            commit_time_us: c.commit_time_us,
            gid: None,
            events: txn.events,
        })
    }

    fn prepare(&mut self, p: PrepareBody<'_>) -> Result<(), AssembleError> {
        let txn = match self.current.take() {
            Some(txn) if txn.gid.as_deref() == Some(p.gid) => txn,
            other => {
                self.current = other;
                return Err(out_of_order("Prepare", "without a matching Begin Prepare"));
            }
        };
        self.prepared.insert(
            p.gid.to_owned(),
            Prepared {
                xid: txn.xid,
                prepare_lsn: txn.prepare_lsn.min(Lsn(p.prepare_lsn)),
                events: txn.events,
            },
        );
        Ok(())
    }

    fn commit_prepared(&mut self, c: CommitPreparedBody<'_>) -> Result<Transaction, AssembleError> {
        self.idle("Commit Prepared")?;
        let held = self
            .prepared
            .remove(c.gid)
            .ok_or_else(|| AssembleError::UnknownPrepared {
                gid: c.gid.to_owned(),
            })?;
        let mut events = held.events;
        for event in &mut events {
            event.source.commit_time_us = c.commit_time_us;
        }
        self.last_commit_lsn = Some(Lsn(c.end_lsn));
        Ok(Transaction {
            xid: Some(held.xid),
            commit_lsn: Lsn(c.commit_lsn),
            end_lsn: Lsn(c.end_lsn),
            commit_time_us: c.commit_time_us,
            gid: Some(c.gid.to_owned()),
            events,
        })
    }

    fn stream_start(&mut self, s: StreamStartBody) -> Result<(), AssembleError> {
        self.idle("Stream Start")?;
        if s.first_segment {
            self.streams.insert(s.xid, StreamTxn::default());
        } else if !self.streams.contains_key(&s.xid) {
            return Err(AssembleError::UnknownStream { xid: s.xid });
        }
        self.active_stream = Some(s.xid);
        Ok(())
    }

    /// Takes a finished streamed transaction, making its relations the current ones.
    fn finish_stream(
        &mut self,
        message: &'static str,
        xid: u32,
    ) -> Result<Vec<Event>, AssembleError> {
        self.idle(message)?;
        let stream = self
            .streams
            .remove(&xid)
            .ok_or(AssembleError::UnknownStream { xid })?;
        self.relations.extend(stream.relations);
        Ok(stream.events.into_iter().map(|(_, e)| e).collect())
    }

    fn stream_commit(&mut self, c: StreamCommitBody) -> Result<Transaction, AssembleError> {
        let mut events = self.finish_stream("Stream Commit", c.xid)?;
        for event in &mut events {
            event.source.commit_time_us = c.commit_time_us;
        }
        self.last_commit_lsn = Some(Lsn(c.end_lsn));
        Ok(Transaction {
            xid: Some(c.xid),
            commit_lsn: Lsn(c.commit_lsn),
            end_lsn: Lsn(c.end_lsn),
            commit_time_us: c.commit_time_us,
            gid: None,
            events,
        })
    }

    fn stream_abort(&mut self, a: StreamAbortBody) -> Result<(), AssembleError> {
        self.idle("Stream Abort")?;
        if a.is_top_level() {
            self.streams.remove(&a.xid);
        } else if let Some(stream) = self.streams.get_mut(&a.xid) {
            stream.events.retain(|(subxid, _)| *subxid != a.subxid);
        }
        Ok(())
    }

    fn stream_prepare(&mut self, p: PrepareBody<'_>) -> Result<(), AssembleError> {
        let mut events = self.finish_stream("Stream Prepare", p.xid)?;
        for event in &mut events {
            event.source.commit_time_us = p.prepare_time_us;
        }
        self.prepared.insert(
            p.gid.to_owned(),
            Prepared {
                xid: p.xid,
                prepare_lsn: Lsn(p.prepare_lsn),
                events,
            },
        );
        Ok(())
    }

    fn relation_message(&mut self, r: &RelationBody<'_>) {
        let key_columns = self.key_columns.get(&r.rel_id);
        let relation = Relation {
            oid: r.rel_id,
            schema: if r.namespace.is_empty() {
                "pg_catalog".to_owned()
            } else {
                r.namespace.to_owned()
            },
            table: r.name.to_owned(),
            columns: r
                .columns
                .iter()
                .map(|c| Column {
                    name: c.name.to_owned(),
                    type_oid: c.type_oid,
                    type_name: self.registry.type_name(c.type_oid),
                    type_modifier: c.type_modifier,
                    key: match key_columns {
                        Some(names) => names.iter().any(|n| n == c.name),
                        None => c.is_key(),
                    },
                })
                .collect(),
        };
        let entry = self.rel_entry(Arc::new(relation));
        match self
            .active_stream
            .and_then(|xid| self.streams.get_mut(&xid))
        {
            Some(stream) => {
                stream.relations.insert(r.rel_id, entry);
            }
            None => {
                self.relations.insert(r.rel_id, entry);
            }
        }
    }

    fn rel_entry(&self, relation: Arc<Relation>) -> RelEntry {
        let codecs = relation
            .columns
            .iter()
            .map(|c| self.registry.codec(c.type_oid))
            .collect();
        RelEntry { relation, codecs }
    }

    fn type_message(&mut self, t: &TypeBody<'_>) {
        self.registry.learn_name(t.type_oid, t.name);
        // Re-resolve cached codecs: a column of this type may now decode differently.
        let registry = &self.registry;
        let entries = self.relations.values_mut().chain(
            self.streams
                .values_mut()
                .flat_map(|s| s.relations.values_mut()),
        );
        for entry in entries {
            if entry
                .relation
                .columns
                .iter()
                .any(|c| c.type_oid == t.type_oid)
            {
                entry.codecs = entry
                    .relation
                    .columns
                    .iter()
                    .map(|c| registry.codec(c.type_oid))
                    .collect();
            }
        }
    }

    /// The relation a change refers to: the streamed transaction's own description first.
    fn entry(&self, rel_id: u32) -> Result<RelEntry, AssembleError> {
        self.active_stream
            .and_then(|xid| self.streams.get(&xid))
            .and_then(|s| s.relations.get(&rel_id))
            .or_else(|| self.relations.get(&rel_id))
            .cloned()
            .ok_or(AssembleError::UnknownRelation { rel_id })
    }

    /// Buffers a change event in the open transaction or streamed block.
    fn change(
        &mut self,
        lsn: Lsn,
        subxid: Option<u32>,
        entry: &RelEntry,
        op: Op,
        before: Option<Row>,
        after: Option<Row>,
    ) -> Result<(), AssembleError> {
        let last_commit_lsn = self.last_commit_lsn;
        let event = |xid: u32, commit_time_us: i64, db: &Arc<str>| Event {
            op,
            relation: entry.relation.clone(),
            source: Source {
                db: db.clone(),
                lsn,
                xid: Some(xid),
                commit_time_us,
                snapshot: Default::default(),
                last_commit_lsn,
            },
            before,
            after,
            topic: None,
            message: None,
        };
        self.buffer(op_name(op), subxid, event)
    }

    fn logical_message(
        &mut self,
        m: &LogicalMessageBody<'_>,
    ) -> Result<Option<Transaction>, AssembleError> {
        let relation = self.message_relation.clone();
        let last_commit_lsn = self.last_commit_lsn;
        let event = |xid: Option<u32>, commit_time_us: i64, db: &Arc<str>| Event {
            op: Op::Message,
            relation,
            source: Source {
                db: db.clone(),
                lsn: Lsn(m.lsn),
                xid,
                commit_time_us,
                snapshot: Default::default(),
                last_commit_lsn,
            },
            before: None,
            after: None,
            topic: None,
            message: Some(Box::new(LogicalMessage {
                transactional: m.transactional(),
                prefix: m.prefix.to_owned(),
                content: m.content.to_vec(),
            })),
        };
        if m.transactional() {
            self.buffer("Message", m.xid, |xid, time, db| event(Some(xid), time, db))?;
            return Ok(None);
        }
        // A non-transactional message is a unit of its own, committed where it is (Debezium
        // counts it as the last commit too).
        let mut message = event(m.xid, 0, &self.db);
        message.source.last_commit_lsn = Some(Lsn(m.lsn));
        self.last_commit_lsn = Some(Lsn(m.lsn));
        Ok(Some(Transaction {
            xid: m.xid,
            commit_lsn: Lsn(m.lsn),
            end_lsn: Lsn(m.lsn),
            commit_time_us: 0,
            gid: None,
            events: vec![message],
        }))
    }

    /// Adds the event `make(top xid, commit time, db)` to wherever changes go right now.
    fn buffer(
        &mut self,
        message: &'static str,
        subxid: Option<u32>,
        make: impl FnOnce(u32, i64, &Arc<str>) -> Event,
    ) -> Result<(), AssembleError> {
        if let Some(xid) = self.active_stream {
            let stream = self
                .streams
                .get_mut(&xid)
                .ok_or(AssembleError::UnknownStream { xid })?;
            stream
                .events
                .push((subxid.unwrap_or(xid), make(xid, 0, &self.db)));
            return Ok(());
        }
        match self.current.as_mut() {
            Some(txn) => {
                let event = make(txn.xid, txn.commit_time_us, &self.db);
                txn.events.push(event);
                Ok(())
            }
            None => Err(out_of_order(message, "outside a transaction")),
        }
    }
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Create => "Insert",
        Op::Update => "Update",
        Op::Delete => "Delete",
        Op::Truncate => "Truncate",
        Op::Read => "Read",
        Op::Message => "Message",
    }
}

fn out_of_order(message: &'static str, context: &'static str) -> AssembleError {
    AssembleError::OutOfOrder { message, context }
}

/// Decodes a tuple into a row with the relation's codecs.
fn build_row(entry: &RelEntry, tuple: &[Datum<'_>]) -> Result<Row, AssembleError> {
    if tuple.len() != entry.codecs.len() {
        return Err(AssembleError::ColumnCount {
            relation: entry.relation.qualified_name(),
            expected: entry.codecs.len(),
            got: tuple.len(),
        });
    }
    Ok(tuple
        .iter()
        .zip(entry.codecs.iter())
        .map(|(datum, codec)| match datum {
            Datum::Null => Value::Null,
            Datum::UnchangedToast => Value::UnchangedToast,
            Datum::Text(bytes) => codec.decode_bytes(bytes),
            Datum::Binary(bytes) => codec.decode_binary(bytes),
        })
        .collect())
}
