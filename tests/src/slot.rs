//! Watching a test database's replication slot: where walflow has confirmed to, and markers
//! to wait for.
//!
//! A test writes its changes, emits a marker ([`TestDb::emit_marker`]), and waits until the
//! slot's `confirmed_flush_lsn` passes it ([`TestDb::slot_reached`]): by then walflow has
//! delivered everything before the marker to every sink.

use std::time::Duration;

use crate::cluster::TestDb;
use crate::wait::wait_for_async;

impl TestDb {
    /// The slot's `confirmed_flush_lsn` as text, or `None` when the slot does not exist yet.
    pub async fn slot_confirmed(&self, slot: &str) -> Option<String> {
        let client = self.client().await;
        let row = client
            .query_opt(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .ok()??;
        row.get(0)
    }

    /// Whether the slot has confirmed at least `target` (an LSN as text).
    pub async fn slot_reached(&self, slot: &str, target: &str) -> bool {
        let client = self.client().await;
        client
            .query_opt(
                "SELECT confirmed_flush_lsn >= $2::text::pg_lsn FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot, &target],
            )
            .await
            .ok()
            .flatten()
            .and_then(|r| r.get::<_, Option<bool>>(0))
            .unwrap_or(false)
    }

    /// Waits until walflow has created `slot` and reached its consistent point (changes
    /// committed before that are not streamed without a snapshot).
    pub async fn wait_for_slot(&self, slot: &str, timeout: Duration) -> anyhow::Result<()> {
        wait_for_async("walflow to create its slot", timeout, || async {
            self.slot_confirmed(slot).await.map(|_| ())
        })
        .await
    }

    /// Waits until the slot has confirmed `target`.
    pub async fn wait_for_confirmed(
        &self,
        slot: &str,
        target: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let what = format!("slot {slot} to confirm {target}");
        wait_for_async(&what, timeout, || async {
            self.slot_reached(slot, target).await.then_some(())
        })
        .await
    }

    /// Emits a transactional logical message and returns its LSN: once the slot has confirmed
    /// it, every change committed before it was delivered.
    pub async fn emit_marker(&self) -> String {
        let client = self.client().await;
        client
            .query_one(
                "SELECT pg_logical_emit_message(true, 'test', 'mark')::text",
                &[],
            )
            .await
            .expect("pg_logical_emit_message")
            .get(0)
    }
}
