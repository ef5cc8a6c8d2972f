//! Record buffers passed round between the encoder and the sink writer.
//!
//! Every event becomes an encoded record in a buffer of its own. Allocating that buffer on the
//! encoding thread and freeing it on the writer's, once per event, is one more allocation and
//! one more cross-thread free per row (mimalloc's slow path); the writer instead hands the
//! buffers of a written batch back, emptied, and the encoder fills them again.

use std::sync::Mutex;

use crate::sink::EncodedRecord;

/// Buffers kept at most: enough for the batches in flight between the two stages.
const MAX_KEPT: usize = 8 * 1024;

/// Bytes of buffers kept at most, so that wide rows do not pin much memory either.
const MAX_KEPT_BYTES: usize = 8 << 20;

/// Buffers larger than this are dropped rather than kept (one huge row should not pin memory).
const MAX_KEPT_CAPACITY: usize = 16 * 1024;

/// Emptied record buffers, ready to be filled again.
#[derive(Default)]
pub(super) struct PayloadPool {
    free: Mutex<Kept>,
}

/// The kept buffers and the sum of their capacities.
#[derive(Default)]
struct Kept {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
}

impl PayloadPool {
    /// Up to `n` emptied buffers (fewer, or none, when fewer are kept).
    pub(super) fn take(&self, n: usize) -> Vec<Vec<u8>> {
        let mut kept = self.free.lock().unwrap_or_else(|p| p.into_inner());
        let keep = kept.buffers.len().saturating_sub(n);
        let taken = kept.buffers.split_off(keep);
        kept.bytes -= taken.iter().map(Vec::capacity).sum::<usize>();
        taken
    }

    /// Takes back the buffers of records the sinks are done with.
    pub(super) fn give(&self, records: Vec<EncodedRecord>) {
        let buffers: Vec<Vec<u8>> = records
            .into_iter()
            .map(|r| r.payload)
            .filter(|p| p.capacity() > 0 && p.capacity() <= MAX_KEPT_CAPACITY)
            .map(|mut p| {
                p.clear();
                p
            })
            .collect();
        let mut kept = self.free.lock().unwrap_or_else(|p| p.into_inner());
        for buffer in buffers {
            if kept.buffers.len() == MAX_KEPT || kept.bytes + buffer.capacity() > MAX_KEPT_BYTES {
                break;
            }
            kept.bytes += buffer.capacity();
            kept.buffers.push(buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Lsn;

    fn record(payload: Vec<u8>) -> EncodedRecord {
        EncodedRecord {
            topic: "t".into(),
            key: None,
            payload,
            lsn: Lsn(0),
            value: None,
        }
    }

    #[test]
    fn buffers_come_back_empty_and_huge_ones_are_not_kept() {
        let pool = PayloadPool::default();
        assert!(pool.take(4).is_empty());
        let mut small = Vec::with_capacity(300);
        small.extend_from_slice(b"{\"a\":1}");
        pool.give(vec![
            record(small),
            record(vec![b'x'; MAX_KEPT_CAPACITY + 1]),
            record(Vec::new()),
        ]);
        let back = pool.take(4);
        assert_eq!(back.len(), 1, "only the small buffer is kept");
        assert!(back[0].is_empty() && back[0].capacity() >= 300);
        assert!(pool.take(4).is_empty(), "a buffer is handed out once");
    }

    #[test]
    fn the_pool_keeps_a_bounded_number_and_size() {
        let pool = PayloadPool::default();
        for _ in 0..3 {
            pool.give(
                (0..MAX_KEPT / 2 + 1)
                    .map(|_| record(Vec::with_capacity(8)))
                    .collect(),
            );
        }
        assert_eq!(pool.take(usize::MAX).len(), MAX_KEPT);
        let wide = MAX_KEPT_CAPACITY;
        pool.give(
            (0..MAX_KEPT)
                .map(|_| record(Vec::with_capacity(wide)))
                .collect(),
        );
        let taken = pool.take(usize::MAX);
        let bytes: usize = taken.iter().map(Vec::capacity).sum();
        assert!(
            bytes <= MAX_KEPT_BYTES && bytes + wide > MAX_KEPT_BYTES,
            "{bytes} bytes kept"
        );
        pool.give(taken.into_iter().map(record).collect());
        assert_eq!(pool.take(1).len(), 1, "what was taken out can come back");
    }
}
