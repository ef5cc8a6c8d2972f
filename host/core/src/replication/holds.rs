//! [`PreparedHolds`]: the positions a slot must not be confirmed past because of two-phase
//! transactions.
//!
//! With two-phase decoding PostgreSQL sends a prepared transaction's changes at PREPARE and,
//! after a restart, sends them again only if the slot's confirmed position is before the
//! prepare record; past it, only COMMIT PREPARED comes, with no changes. So a prepared
//! transaction pins the confirmable position to just before its prepare LSN:
//!
//! - while it is held (prepared, not yet committed or rolled back), and
//! - after COMMIT PREPARED, until the unit carrying its changes is acknowledged by every sink —
//!   the commit reaches the reader long before delivery finishes, and an acknowledgement of an
//!   earlier unit in between must not move the checkpoint past the prepare.
//!
//! The holds are shared between the reader (which sees the protocol) and whoever checkpoints
//! acknowledged positions in another task, so both clamp with the same view.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use crate::event::Lsn;

/// Prepared transactions' prepare LSNs, each with the acknowledged position that releases it.
#[derive(Debug, Clone, Default)]
pub struct PreparedHolds {
    inner: Arc<Mutex<BTreeMap<Lsn, Release>>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Release {
    /// Prepared; neither committed nor rolled back yet.
    Held,
    /// Committed; released once everything up to this `end_lsn` is acknowledged.
    At(Lsn),
}

impl PreparedHolds {
    /// A transaction prepared at `prepare_lsn` is held.
    pub fn hold(&self, prepare_lsn: Lsn) {
        self.lock().insert(prepare_lsn, Release::Held);
    }

    /// The transaction prepared at `prepare_lsn` was committed; its changes travel in the unit
    /// ending at `end_lsn`.
    pub fn release_at(&self, prepare_lsn: Lsn, end_lsn: Lsn) {
        self.lock().insert(prepare_lsn, Release::At(end_lsn));
    }

    /// The transaction prepared at `prepare_lsn` was rolled back: nothing of it is delivered.
    pub fn forget(&self, prepare_lsn: Lsn) {
        self.lock().remove(&prepare_lsn);
    }

    /// The highest position at most `acked` that is safe to checkpoint and confirm, once
    /// everything up to `acked` is acknowledged. Drops the holds `acked` releases.
    pub fn clamp(&self, acked: Lsn) -> Lsn {
        let mut holds = self.lock();
        holds.retain(|_, release| match release {
            Release::Held => true,
            Release::At(end) => *end > acked,
        });
        match holds.keys().next() {
            Some(prepare_lsn) => acked.min(prepare_lsn.before()),
            None => acked,
        }
    }

    /// Whether any prepared transaction is held or not yet delivered.
    pub fn any(&self) -> bool {
        !self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Lsn, Release>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_prepare_pins_the_position_before_it() {
        let holds = PreparedHolds::default();
        assert_eq!(holds.clamp(Lsn(500)), Lsn(500));
        holds.hold(Lsn(300));
        assert_eq!(holds.clamp(Lsn(500)), Lsn(299));
        assert_eq!(holds.clamp(Lsn(200)), Lsn(200));
    }

    #[test]
    fn a_committed_prepare_pins_until_its_unit_is_acknowledged() {
        let holds = PreparedHolds::default();
        holds.hold(Lsn(300));
        holds.release_at(Lsn(300), Lsn(900));
        // A unit that ended before the commit was acknowledged: still pinned.
        assert_eq!(holds.clamp(Lsn(600)), Lsn(299));
        assert!(holds.any());
        assert_eq!(holds.clamp(Lsn(900)), Lsn(900));
        assert!(!holds.any());
        assert_eq!(holds.clamp(Lsn(1000)), Lsn(1000));
    }

    #[test]
    fn the_lowest_hold_wins_and_a_rollback_releases_at_once() {
        let holds = PreparedHolds::default();
        holds.hold(Lsn(300));
        holds.hold(Lsn(100));
        assert_eq!(holds.clamp(Lsn(500)), Lsn(99));
        holds.forget(Lsn(100));
        assert_eq!(holds.clamp(Lsn(500)), Lsn(299));
    }
}
