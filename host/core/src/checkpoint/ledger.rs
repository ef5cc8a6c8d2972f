//! The acknowledgement ledger: the one place that turns "every sink has everything up to
//! LSN x" into a checkpoint and then a confirmation to PostgreSQL.
//!
//! Order matters and is the durability contract (`docs/architecture.md`): the position is
//! first clamped to what is safe — never at or past a prepared transaction that is held or
//! whose rows are not acknowledged yet (`replication::PreparedHolds`) — then written to the
//! checkpoint file, and only then confirmed, so PostgreSQL never holds a position the
//! checkpoint does not. `walflow run` (whose acknowledgements come from the sinks) and
//! `walflow tail --confirm` (whose come from a flushed standard output) both go through it;
//! they once clamped differently, and a crash while a prepared transaction was held lost it.

use super::{
    Checkpoint, CheckpointError, CheckpointStore, Lsn, SlotIdentity, SnapshotProgress, now_ms,
};

/// Where a ledger confirms positions: the slot's stream.
pub trait Confirmer: Sync {
    /// The highest position at most `acked` that is safe to checkpoint once everything up to
    /// `acked` is acknowledged.
    fn safe_lsn(&self, acked: Lsn) -> Lsn;

    /// Reports `lsn` (already checkpointed) to PostgreSQL as confirmed.
    fn confirm(&self, lsn: Lsn);
}

/// Acknowledged positions of one slot, checkpointed and confirmed in that order.
#[derive(Debug)]
pub struct Ledger {
    store: CheckpointStore,
    identity: SlotIdentity,
    snapshot: SnapshotProgress,
    last: Option<Lsn>,
}

impl Ledger {
    /// A ledger writing `store`'s checkpoints for the slot `identity`, carrying `snapshot`
    /// progress along.
    pub fn new(
        store: CheckpointStore,
        identity: SlotIdentity,
        snapshot: SnapshotProgress,
    ) -> Ledger {
        Ledger {
            store,
            identity,
            snapshot,
            last: None,
        }
    }

    /// The position a newly acknowledged `acked` may be checkpointed at, when that moves past
    /// the last one recorded.
    pub fn next_position(&self, acked: Lsn, confirmer: &dyn Confirmer) -> Option<Lsn> {
        let lsn = confirmer.safe_lsn(acked);
        (!lsn.is_zero() && Some(lsn) > self.last).then_some(lsn)
    }

    /// The snapshot progress the next checkpoint records (an incremental snapshot updates it
    /// as its chunks are acknowledged).
    pub fn snapshot_mut(&mut self) -> &mut SnapshotProgress {
        &mut self.snapshot
    }

    /// Writes the checkpoint at `lsn` (from [`next_position`](Self::next_position)), then
    /// confirms it.
    pub async fn record(
        &mut self,
        lsn: Lsn,
        confirmer: &dyn Confirmer,
    ) -> Result<(), CheckpointError> {
        let checkpoint = Checkpoint {
            lsn,
            identity: self.identity.clone(),
            written_at_ms: now_ms(),
            snapshot: self.snapshot.clone(),
        };
        self.store.save_async(checkpoint).await?;
        confirmer.confirm(lsn);
        self.last = Some(lsn);
        Ok(())
    }

    /// Everything up to `acked` is acknowledged: checkpoints and confirms the safe position
    /// when it moved. Returns that position.
    pub async fn acknowledge(
        &mut self,
        acked: Lsn,
        confirmer: &dyn Confirmer,
    ) -> Result<Option<Lsn>, CheckpointError> {
        let Some(lsn) = self.next_position(acked, confirmer) else {
            return Ok(None);
        };
        self.record(lsn, confirmer).await?;
        Ok(Some(lsn))
    }

    /// The last position recorded.
    pub fn last(&self) -> Option<Lsn> {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Holds everything at or past `hold` back, and remembers what was confirmed.
    struct Holding {
        hold: Lsn,
        confirmed: Mutex<Vec<Lsn>>,
    }

    impl Confirmer for Holding {
        fn safe_lsn(&self, acked: Lsn) -> Lsn {
            acked.min(self.hold.before())
        }
        fn confirm(&self, lsn: Lsn) {
            self.confirmed.lock().unwrap().push(lsn);
        }
    }

    fn identity() -> SlotIdentity {
        SlotIdentity {
            system_id: 1,
            database: "db".into(),
            slot: "s".into(),
            timeline: 1,
            created_lsn: Lsn(1),
        }
    }

    #[tokio::test]
    async fn the_checkpoint_is_written_before_the_confirmation_and_never_past_a_hold() {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::new(dir.path(), "s");
        let mut ledger = Ledger::new(store.clone(), identity(), SnapshotProgress::default());
        let confirmer = Holding {
            hold: Lsn(100),
            confirmed: Mutex::new(Vec::new()),
        };
        assert_eq!(
            ledger.acknowledge(Lsn(50), &confirmer).await.unwrap(),
            Some(Lsn(50))
        );
        assert_eq!(store.load().unwrap().unwrap().lsn, Lsn(50));
        assert_eq!(
            ledger.acknowledge(Lsn(500), &confirmer).await.unwrap(),
            Some(Lsn(99))
        );
        assert_eq!(store.load().unwrap().unwrap().lsn, Lsn(99), "past the hold");
        assert_eq!(
            ledger.acknowledge(Lsn(600), &confirmer).await.unwrap(),
            None
        );
        assert_eq!(*confirmer.confirmed.lock().unwrap(), vec![Lsn(50), Lsn(99)]);
    }
}
