//! The incremental snapshot as a [`Producer`]: the stream's units with snapshot chunks merged
//! in where they belong.
//!
//! A chunk read under a snapshot taken between the low and the high watermark goes out right
//! after the stream passed its high watermark, cleaned of the keys the stream changed in
//! between (the DBLog method, see [`Incremental`]); its rows then lead to that stream position,
//! so the chunk's progress is checkpointed exactly when the stream reaches it.

use std::collections::VecDeque;

use async_trait::async_trait;

use super::incremental::Incremental;
use crate::producer::{Producer, Unit};

/// The units of `inner`, with the chunks of an incremental snapshot engine merged in.
pub struct Interleaved<P> {
    inner: P,
    engine: Option<Incremental>,
    ahead: VecDeque<Unit>,
}

impl<P> Interleaved<P> {
    /// Merges `engine`'s chunks into `inner` (passes `inner` through without one).
    pub fn new(inner: P, engine: Option<Incremental>) -> Interleaved<P> {
        Interleaved {
            inner,
            engine,
            ahead: VecDeque::new(),
        }
    }

    /// The producer inside.
    pub fn into_inner(self) -> P {
        self.inner
    }
}

#[async_trait]
impl<P: Producer> Producer for Interleaved<P> {
    async fn next(&mut self) -> anyhow::Result<Option<Unit>> {
        let Some(engine) = self.engine.as_mut() else {
            return self.inner.next().await;
        };
        loop {
            if let Some(unit) = self.ahead.pop_front() {
                return Ok(Some(unit));
            }
            // Before waiting for the stream: requests, answers, and a chunk it already passed.
            self.ahead.extend(engine.poll());
            if let Some(unit) = self.ahead.pop_front() {
                return Ok(Some(unit));
            }
            let Some(mut unit) = self.inner.next().await? else {
                return Ok(None);
            };
            match &mut unit {
                Unit::Transaction(t) => self.ahead.extend(engine.on_transaction(t)),
                Unit::Idle(lsn) => self.ahead.extend(engine.on_idle(*lsn)),
                Unit::SnapshotRows(_) => {}
            }
            self.ahead.push_back(unit);
        }
    }

    async fn keep_alive(&mut self) -> anyhow::Result<()> {
        self.inner.keep_alive().await
    }
}
