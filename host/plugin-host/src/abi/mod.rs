//! The versions of the plugin ABI this host runs, and what they share.
//!
//! Each version of `walflow:plugin` has its own module that lowers host events into a call and
//! lifts the answer into host terms ([`Edit`](super::convert::Edit)s, topics, keep flags), so
//! the chain never sees which version a plugin was built for. A version is added beside the
//! old ones and never edited: plugins built against an older package keep running.
//!
//! - [`v0_2`]: 0.2.0 and the current 0.2.1, which share every type. A batch goes as a few flat
//!   lists (events, values, one buffer of text and bytes), a handful of copies into the guest
//!   however many strings it holds. 0.2.1 adds `columns`: a plugin names the columns it reads
//!   and gets only those ([`Projection`](v0_2::Projection)).
//! - [`v0_1`]: the first version, one guest allocation per string and row.

use std::sync::Arc;

use wasmtime::component::{ComponentType, Lower};

use walflow_core::event::Relation;

/// Conversions between the host's enums and a version's `op`, `snapshot-marker`, `row-side`
/// and `temporal-kind` (the same cases in every version, but distinct generated types).
macro_rules! enum_conversions {
    ($wit:ident) => {
        fn op_to_wit(op: walflow_core::event::Op) -> $wit::Op {
            use walflow_core::event::Op;
            match op {
                Op::Create => $wit::Op::Create,
                Op::Update => $wit::Op::Update,
                Op::Delete => $wit::Op::Delete,
                Op::Read => $wit::Op::Read,
                Op::Truncate => $wit::Op::Truncate,
                Op::Message => $wit::Op::Message,
            }
        }

        fn op_from_wit(op: $wit::Op) -> walflow_core::event::Op {
            use walflow_core::event::Op;
            match op {
                $wit::Op::Create => Op::Create,
                $wit::Op::Update => Op::Update,
                $wit::Op::Delete => Op::Delete,
                $wit::Op::Read => Op::Read,
                $wit::Op::Truncate => Op::Truncate,
                $wit::Op::Message => Op::Message,
            }
        }

        fn snapshot_to_wit(marker: walflow_core::event::SnapshotMarker) -> $wit::SnapshotMarker {
            use walflow_core::event::SnapshotMarker as M;
            match marker {
                M::False => $wit::SnapshotMarker::False,
                M::True => $wit::SnapshotMarker::True,
                M::First => $wit::SnapshotMarker::First,
                M::Last => $wit::SnapshotMarker::Last,
                M::Incremental => $wit::SnapshotMarker::Incremental,
            }
        }

        fn snapshot_from_wit(marker: $wit::SnapshotMarker) -> walflow_core::event::SnapshotMarker {
            use walflow_core::event::SnapshotMarker as M;
            match marker {
                $wit::SnapshotMarker::False => M::False,
                $wit::SnapshotMarker::True => M::True,
                $wit::SnapshotMarker::First => M::First,
                $wit::SnapshotMarker::Last => M::Last,
                $wit::SnapshotMarker::Incremental => M::Incremental,
            }
        }

        fn temporal_to_wit(kind: walflow_core::event::TemporalKind) -> $wit::TemporalKind {
            use walflow_core::event::TemporalKind as K;
            match kind {
                K::Date => $wit::TemporalKind::Date,
                K::Time => $wit::TemporalKind::Time,
                K::TimeTz => $wit::TemporalKind::TimeTz,
                K::Timestamp => $wit::TemporalKind::Timestamp,
                K::TimestampTz => $wit::TemporalKind::TimestampTz,
                K::Interval => $wit::TemporalKind::Interval,
            }
        }

        fn side_from_wit(side: $wit::RowSide) -> $crate::convert::Side {
            use $crate::convert::Side;
            match side {
                $wit::RowSide::Before => Side::Before,
                $wit::RowSide::After => Side::After,
            }
        }

        fn temporal_from_wit(kind: $wit::TemporalKind) -> walflow_core::event::TemporalKind {
            use walflow_core::event::TemporalKind as K;
            match kind {
                $wit::TemporalKind::Date => K::Date,
                $wit::TemporalKind::Time => K::Time,
                $wit::TemporalKind::TimeTz => K::TimeTz,
                $wit::TemporalKind::Timestamp => K::Timestamp,
                $wit::TemporalKind::TimestampTz => K::TimestampTz,
                $wit::TemporalKind::Interval => K::Interval,
            }
        }
    };
}
use enum_conversions;

mod canonical;
mod per_table;
mod projection;
pub(crate) mod v0_1;
pub(crate) mod v0_2;

/// A version of the plugin ABI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AbiVersion {
    /// `walflow:plugin@0.1.0`.
    V0_1,
    /// `walflow:plugin@0.2.0`.
    V0_2,
    /// `walflow:plugin@0.2.1`, the current one: 0.2.0 plus column projection.
    V0_2_1,
}

impl AbiVersion {
    /// Every version this host runs, newest first.
    pub const ALL: [AbiVersion; 3] = [AbiVersion::V0_2_1, AbiVersion::V0_2, AbiVersion::V0_1];

    /// The current version, which the guest SDK and `wit/walflow-plugin.wit` describe.
    pub const CURRENT: AbiVersion = AbiVersion::V0_2_1;

    /// The package version, e.g. `0.2.0`.
    pub fn as_str(self) -> &'static str {
        match self {
            AbiVersion::V0_1 => "0.1.0",
            AbiVersion::V0_2 => "0.2.0",
            AbiVersion::V0_2_1 => "0.2.1",
        }
    }
}

/// `types.relation`, the same in every version.
#[derive(ComponentType, Lower)]
#[component(record)]
pub(crate) struct RelationView<'a> {
    oid: u32,
    schema: &'a str,
    table: &'a str,
    columns: Vec<ColumnView<'a>>,
}

/// `types.column`, the same in every version.
#[derive(ComponentType, Lower)]
#[component(record)]
pub(crate) struct ColumnView<'a> {
    name: &'a str,
    #[component(name = "type-name")]
    type_name: &'a str,
    #[component(name = "type-oid")]
    type_oid: u32,
    #[component(name = "type-modifier")]
    type_modifier: i32,
    key: bool,
}

impl<'a> RelationView<'a> {
    pub(crate) fn new(relation: &'a Relation) -> RelationView<'a> {
        RelationView {
            oid: relation.oid,
            schema: &relation.schema,
            table: &relation.table,
            columns: relation
                .columns
                .iter()
                .map(|c| ColumnView {
                    name: &c.name,
                    type_name: &c.type_name,
                    type_oid: c.type_oid,
                    type_modifier: c.type_modifier,
                    key: c.key,
                })
                .collect(),
        }
    }

    #[cfg(test)]
    pub(crate) fn table(&self) -> &str {
        self.table
    }

    #[cfg(test)]
    pub(crate) fn column_names(&self) -> Vec<&str> {
        self.columns.iter().map(|c| c.name).collect()
    }
}

/// The distinct relations of `events`, in order of first appearance: the order in which a
/// batch sends them, and which a replacement event's `relation` indexes.
pub(crate) fn relations_of(events: &[walflow_core::event::Event]) -> Vec<Arc<Relation>> {
    let mut relations: Vec<Arc<Relation>> = Vec::new();
    let mut index = RelationIndex::default();
    for event in events {
        if index.find(&relations, &event.relation).is_none() {
            relations.push(event.relation.clone());
        }
    }
    relations
}

/// Finds an event's relation in a batch's short list, remembering the last hit: batches are
/// usually runs of one table.
#[derive(Default)]
pub(crate) struct RelationIndex {
    last: usize,
}

impl RelationIndex {
    fn find(&mut self, relations: &[Arc<Relation>], relation: &Arc<Relation>) -> Option<u32> {
        if relations
            .get(self.last)
            .is_some_and(|r| Arc::ptr_eq(r, relation))
        {
            return Some(self.last as u32);
        }
        let found = relations.iter().position(|r| Arc::ptr_eq(r, relation))?;
        self.last = found;
        Some(found as u32)
    }

    /// The index of `relation`, which must be one of `relations` (from [`relations_of`] over
    /// the same events).
    pub(crate) fn of(&mut self, relations: &[Arc<Relation>], relation: &Arc<Relation>) -> u32 {
        self.find(relations, relation).unwrap_or(u32::MAX)
    }
}
