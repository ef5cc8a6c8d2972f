//! What the pipeline consumes: [`Producer`]s of [`Unit`]s.
//!
//! Three things produce rows for the sinks — the replication stream, the initial snapshot and
//! the incremental snapshot — and they differ in what "delivered" lets them record: the stream
//! confirms a WAL position, the initial snapshot marks chunks done, the incremental snapshot
//! records its progress at the stream position its chunk was merged at. The pipeline does not
//! need to know which: it takes units in order, delivers them, and hands back the [`Position`]
//! of the last unit every sink has flushed; the producer's own acknowledger maps that back to
//! what it means (see `docs/architecture.md`, "Durability contract").

use async_trait::async_trait;

use crate::assemble::Transaction;
use crate::event::{Event, Lsn};

/// A unit of delivery: events that are acknowledged together.
#[derive(Debug, Clone, PartialEq)]
pub enum Unit {
    /// A committed transaction (or a non-transactional logical message): its events, and the
    /// LSN to confirm once they are delivered.
    Transaction(Transaction),
    /// Rows of a snapshot, and where their delivery leads.
    SnapshotRows(SnapshotRows),
    /// Nothing is pending up to this LSN: delivering it lets an idle slot follow the server,
    /// so it does not pin WAL.
    Idle(Lsn),
}

/// Rows a snapshot read.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotRows {
    /// One `read` event per row.
    pub events: Vec<Event>,
    /// Reached once these rows (and every unit before them) are delivered.
    pub position: Position,
}

/// How far delivery got, in its producer's terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Position {
    /// A WAL position: the stream, and incremental snapshot chunks merged into it.
    Lsn(Lsn),
    /// The number of units an initial snapshot handed out (it has no WAL position of its own).
    Rows(u64),
}

impl Position {
    /// The WAL position, when this is one.
    pub fn lsn(self) -> Option<Lsn> {
        match self {
            Position::Lsn(lsn) => Some(lsn),
            Position::Rows(_) => None,
        }
    }
}

impl Unit {
    /// The events to deliver.
    pub fn events(&self) -> &[Event] {
        match self {
            Unit::Transaction(t) => &t.events,
            Unit::SnapshotRows(r) => &r.events,
            Unit::Idle(_) => &[],
        }
    }

    /// Takes the events out, leaving none.
    pub fn take_events(&mut self) -> Vec<Event> {
        match self {
            Unit::Transaction(t) => std::mem::take(&mut t.events),
            Unit::SnapshotRows(r) => std::mem::take(&mut r.events),
            Unit::Idle(_) => Vec::new(),
        }
    }

    /// Takes the first `at` events out, leaving the rest (for a unit too large for one batch:
    /// the rest goes on in the next one, and the position is reached only with it).
    pub fn split_events(&mut self, at: usize) -> Vec<Event> {
        let events = match self {
            Unit::Transaction(t) => &mut t.events,
            Unit::SnapshotRows(r) => &mut r.events,
            Unit::Idle(_) => return Vec::new(),
        };
        let rest = events.split_off(at.min(events.len()));
        std::mem::replace(events, rest)
    }

    /// Where delivering this unit (and all before it) leads.
    pub fn position(&self) -> Position {
        match self {
            Unit::Transaction(t) => Position::Lsn(t.end_lsn),
            Unit::SnapshotRows(r) => r.position,
            Unit::Idle(lsn) => Position::Lsn(*lsn),
        }
    }
}

/// A source of units for the pipeline, read one at a time in order.
#[async_trait]
pub trait Producer: Send {
    /// The next unit; `None` once there are no more (the source ended or was stopped).
    async fn next(&mut self) -> anyhow::Result<Option<Unit>>;

    /// Called about every [`KEEP_ALIVE_EVERY`] while the pipeline is not ready for the unit
    /// last returned (backpressure): a producer whose server expects to hear from it — the
    /// replication stream — answers now, so a slow sink does not get its connection timed
    /// out. The default does nothing.
    async fn keep_alive(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// How often [`Producer::keep_alive`] is called while the pipeline makes a producer wait.
pub const KEEP_ALIVE_EVERY: std::time::Duration = walflow_pg::stream::KEEP_ALIVE_EVERY;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_say_what_delivery_reached() {
        let t = Transaction {
            xid: Some(7),
            commit_lsn: Lsn(10),
            end_lsn: Lsn(12),
            commit_time_us: 0,
            gid: None,
            events: Vec::new(),
        };
        assert_eq!(
            Unit::Transaction(t).position(),
            Position::Lsn(Lsn(12)),
            "a transaction is confirmed at its end, not its commit"
        );
        assert_eq!(Unit::Idle(Lsn(5)).position().lsn(), Some(Lsn(5)));
        let rows = Unit::SnapshotRows(SnapshotRows {
            events: Vec::new(),
            position: Position::Rows(3),
        });
        assert_eq!(rows.position().lsn(), None);
    }

    #[test]
    fn a_split_keeps_the_rest_and_the_position_together() {
        let event = |n: i64| Event {
            op: crate::event::Op::Read,
            relation: crate::event::Relation::one_column("t", "id", "int8", 20),
            source: crate::event::Source::default(),
            before: None,
            after: Some(vec![crate::event::Value::Int(n)]),
            topic: None,
            message: None,
        };
        let mut unit = Unit::SnapshotRows(SnapshotRows {
            events: (0..5).map(event).collect(),
            position: Position::Rows(1),
        });
        let first = unit.split_events(2);
        assert_eq!(first.len(), 2);
        assert_eq!(unit.events().len(), 3);
        assert_eq!(unit.position(), Position::Rows(1));
        assert_eq!(unit.take_events().len(), 3);
        assert!(unit.events().is_empty());
        assert!(Unit::Idle(Lsn(1)).split_events(1).is_empty());
    }
}
