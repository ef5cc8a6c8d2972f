//! The bulk path: a flush applied segment by segment, each table of a segment with one `COPY`
//! and one merge (see the parent module's docs for why that is the same as applying every
//! event in order).

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use futures::SinkExt;

use super::Replica;
use super::segment::{Changes, Segment, Values};
use super::statement::Target;
use walflow_core::event::{Event, Op, Relation};
use walflow_core::sink::SinkError;

/// A table's final rows below this many go out as single statements, all in one round trip;
/// from this many they are copied and merged, three round trips but far less work per row.
const BULK_ROWS: usize = 16;

/// Bytes of `COPY` data sent at a time.
const COPY_CHUNK: usize = 1 << 20;

impl Replica {
    /// Applies `events` in segments: each segment's final rows, then what ended it on its own.
    pub(super) async fn apply_segments(&mut self, events: &[Event]) -> Result<(), SinkError> {
        let mut segment = Segment::default();
        let mut targets: Vec<(&Arc<Relation>, Target)> = Vec::new();
        for event in events {
            if event.op == Op::Message {
                continue;
            }
            let target = match targets
                .iter()
                .find(|(r, _)| Arc::ptr_eq(r, &event.relation))
            {
                Some((_, target)) => target,
                None => {
                    let target = self.target(event).await?;
                    targets.push((&event.relation, target));
                    &targets.last().expect("just pushed").1
                }
            };
            if segment.take(target, event)? {
                continue;
            }
            self.apply_segment(std::mem::take(&mut segment)).await?;
            if !segment.take(target, event)? {
                self.apply(event).await?;
            }
        }
        self.apply_segment(segment).await
    }

    async fn apply_segment(&mut self, segment: Segment<'_>) -> Result<(), SinkError> {
        for (target, changes) in segment.into_tables() {
            if changes.len() < BULK_ROWS {
                self.enqueue_changes(&target, changes).await?;
            } else {
                self.merge(&target, changes).await?;
            }
        }
        self.drain().await
    }

    /// Queues a delete per deleted key and an upsert per row.
    async fn enqueue_changes(
        &mut self,
        target: &Target,
        changes: Changes,
    ) -> Result<(), SinkError> {
        let (sql, types) = target.delete(target.key());
        for key in changes.deletes {
            self.enqueue(target, &sql, &types, key).await?;
        }
        let Some(width) = changes.upserts.first().map(Vec::len) else {
            return Ok(());
        };
        let (sql, types) = target.upsert(&(0..width).collect::<Vec<_>>());
        for row in changes.upserts {
            self.enqueue(target, &sql, &types, row).await?;
        }
        Ok(())
    }

    /// Copies `changes` into the staging table and merges them into the target.
    async fn merge(&mut self, target: &Target, changes: Changes) -> Result<(), SinkError> {
        self.prepare_stage(target).await?;
        let copy = self.statement(target, &target.copy_stage(), &[]).await?;
        let client = self.client.as_ref().expect("connected before use");
        let sent = async {
            let sink = client.copy_in::<_, Bytes>(&copy).await?;
            let mut sink = std::pin::pin!(sink);
            for chunk in copy_data(&changes, target.width()) {
                sink.send(chunk).await?;
            }
            sink.as_mut().finish().await?;
            client.batch_execute(&target.merge_stage()).await
        }
        .await;
        sent.map_err(|e| self.classify(Some(&target.table), e))
    }

    /// Makes the staging table exist and be empty: it is created once per connection, and
    /// emptied when an earlier segment of this transaction used it.
    async fn prepare_stage(&mut self, target: &Target) -> Result<(), SinkError> {
        let stage = target.stage();
        if !self.stages.contains(&stage) {
            self.execute_simple(&target.create_stage()).await?;
            self.stages.insert(stage.clone());
        }
        if !self.staged.insert(stage.clone()) {
            self.execute_simple(&format!("TRUNCATE {stage}")).await?;
        }
        Ok(())
    }
}

/// `changes` in `COPY`'s binary format, in chunks: deletes with their key in the first
/// columns, then the rows to upsert.
fn copy_data(changes: &Changes, width: usize) -> Vec<Bytes> {
    let mut chunks = Vec::new();
    let mut buf = BytesMut::with_capacity(COPY_CHUNK + 4096);
    buf.put_slice(b"PGCOPY\n\xff\r\n\0");
    buf.put_i32(0); // flags
    buf.put_i32(0); // header extension length
    let rows = changes
        .deletes
        .iter()
        .map(|k| (true, k))
        .chain(changes.upserts.iter().map(|r| (false, r)));
    for (delete, values) in rows {
        put_row(&mut buf, delete, values, width);
        if buf.len() >= COPY_CHUNK {
            chunks.push(buf.split().freeze());
        }
    }
    buf.put_i16(-1); // trailer
    chunks.push(buf.freeze());
    chunks
}

/// One row: whether it is a delete, then `width` text columns (missing ones NULL).
fn put_row(buf: &mut BytesMut, delete: bool, values: &Values, width: usize) {
    buf.put_i16(1 + width as i16);
    buf.put_i32(1);
    buf.put_u8(delete as u8);
    for n in 0..width {
        match values.get(n).and_then(Option::as_deref) {
            None => buf.put_i32(-1),
            Some(text) => {
                buf.put_i32(text.len() as i32);
                buf.put_slice(text.as_bytes());
            }
        }
    }
}
