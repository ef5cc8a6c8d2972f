//! 0.2.0 events and values written in the canonical ABI's memory layout by the host, so a call
//! copies each list into the guest in one go.
//!
//! Lowering a `list<event>` field by field makes wasmtime look the guest's memory up again for
//! every field it stores (a tenth of a call's cost once strings were out of the way). A flat
//! event or value holds no pointers into the guest — its strings are spans of `batch.data`
//! and its rows are ranges of `batch.values` — so its bytes can be written on the host while
//! the batch is laid out and copied as they are. The one exception, an array value (whose
//! dimensions and elements are lists of their own), is lowered by wasmtime as usual.
//!
//! Answers come back the same way in reverse for the common case: a transform's edits that set
//! a plain value, remove a column or drop an event are read straight from their bytes
//! ([`LiftedEdit`]); wasmtime's generic lifting, which re-derives the variant's layout from the
//! type information for every element, lifts the rest (replacements, failures, arrays) and
//! anything malformed, so its checks and errors stay the ones that apply.
//!
//! This leans on wasmtime's hidden `ComponentType`/`Lower`/`Lift` items (pinned to wasmtime 48):
//! typechecking is delegated to the generated types, and the tests check that the sizes below
//! still match them, so a change of the WIT file or of wasmtime cannot go unnoticed.

use std::mem::MaybeUninit;

use wasmtime::component::__internal::{
    CanonicalAbiInfo, InstanceType, InterfaceType, LiftContext, LowerContext,
};
use wasmtime::component::{ComponentType, Lift, Lower};

use crate::bindings::types as wit;

/// Size of `types.event` in linear memory.
pub(crate) const EVENT_SIZE: usize = 112;
/// Size of `types.value` in linear memory.
pub(crate) const VALUE_SIZE: usize = 24;

/// A `types.event`, already laid out.
#[derive(Clone, Copy)]
pub(crate) struct EventBytes([u8; EVENT_SIZE]);

/// A `types.value`: laid out, or an array for wasmtime to lower.
#[derive(Clone)]
pub(crate) enum ValueBytes {
    Laid([u8; VALUE_SIZE]),
    Array(wit::Value),
}

/// Gives `$laid` the component type of `$wit`: its ABI, its flat form and its typecheck.
macro_rules! component_type_of {
    ($laid:ty, $wit:ty) => {
        // SAFETY: the ABI and flat representation are `$wit`'s, and the type is checked as one.
        unsafe impl ComponentType for $laid {
            type Lower = <$wit as ComponentType>::Lower;
            const ABI: CanonicalAbiInfo = <$wit as ComponentType>::ABI;

            fn typecheck(ty: &InterfaceType, types: &InstanceType<'_>) -> wasmtime::Result<()> {
                <$wit as ComponentType>::typecheck(ty, types)
            }
        }
    };
}

component_type_of!(EventBytes, wit::Event);
component_type_of!(ValueBytes, wit::Value);
component_type_of!(LiftedEdit, wit::Edit);

/// A `types.edit` lifted from the guest, read from its bytes when it is one of the common
/// shapes (see the module's docs).
pub(crate) struct LiftedEdit(pub(crate) wit::Edit);

/// `types.edits` with its edits lifted as [`LiftedEdit`]s.
#[derive(ComponentType, Lift)]
#[component(record)]
pub(crate) struct LiftedEdits {
    pub(crate) edits: Vec<LiftedEdit>,
    pub(crate) values: Vec<wit::Value>,
    pub(crate) data: Vec<u8>,
}

// SAFETY: the type is `wit::Edit`'s (see `component_type_of!`), and every edit not read here is
// lifted by `wit::Edit`'s own implementation from the same bytes.
unsafe impl Lift for LiftedEdit {
    fn linear_lift_from_flat(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        src: &Self::Lower,
    ) -> wasmtime::Result<Self> {
        wit::Edit::linear_lift_from_flat(cx, ty, src).map(LiftedEdit)
    }

    fn linear_lift_from_memory(
        cx: &mut LiftContext<'_>,
        ty: InterfaceType,
        bytes: &[u8],
    ) -> wasmtime::Result<Self> {
        match read_edit(bytes) {
            Some(edit) => Ok(LiftedEdit(edit)),
            None => wit::Edit::linear_lift_from_memory(cx, ty, bytes).map(LiftedEdit),
        }
    }
}

// SAFETY: stores exactly `EVENT_SIZE` bytes at the offset wasmtime allocated for the element.
unsafe impl Lower for EventBytes {
    fn linear_lower_to_flat<T>(
        &self,
        _cx: &mut LowerContext<'_, T>,
        _ty: InterfaceType,
        _dst: &mut MaybeUninit<Self::Lower>,
    ) -> wasmtime::Result<()> {
        wasmtime::bail!("an event is only lowered as an element of a list")
    }

    fn linear_lower_to_memory<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        _ty: InterfaceType,
        offset: usize,
    ) -> wasmtime::Result<()> {
        cx.as_slice_mut()[offset..][..EVENT_SIZE].copy_from_slice(&self.0);
        Ok(())
    }

    fn linear_store_list_to_memory<T>(
        cx: &mut LowerContext<'_, T>,
        _ty: InterfaceType,
        offset: usize,
        items: &[Self],
    ) -> wasmtime::Result<()> {
        let memory = &mut cx.as_slice_mut()[offset..][..items.len() * EVENT_SIZE];
        for (item, dst) in items.iter().zip(memory.chunks_exact_mut(EVENT_SIZE)) {
            dst.copy_from_slice(&item.0);
        }
        Ok(())
    }
}

// SAFETY: laid-out values store exactly `VALUE_SIZE` bytes at their element's offset; arrays
// are lowered by `wit::Value`'s own implementation at the same offset.
unsafe impl Lower for ValueBytes {
    fn linear_lower_to_flat<T>(
        &self,
        _cx: &mut LowerContext<'_, T>,
        _ty: InterfaceType,
        _dst: &mut MaybeUninit<Self::Lower>,
    ) -> wasmtime::Result<()> {
        wasmtime::bail!("a value is only lowered as an element of a list")
    }

    fn linear_lower_to_memory<T>(
        &self,
        cx: &mut LowerContext<'_, T>,
        ty: InterfaceType,
        offset: usize,
    ) -> wasmtime::Result<()> {
        match self {
            ValueBytes::Laid(bytes) => {
                cx.as_slice_mut()[offset..][..VALUE_SIZE].copy_from_slice(bytes);
                Ok(())
            }
            ValueBytes::Array(value) => value.linear_lower_to_memory(cx, ty, offset),
        }
    }

    fn linear_store_list_to_memory<T>(
        cx: &mut LowerContext<'_, T>,
        ty: InterfaceType,
        mut offset: usize,
        items: &[Self],
    ) -> wasmtime::Result<()> {
        // Runs of laid-out values are copied under one look-up of the memory.
        let mut rest = items;
        while !rest.is_empty() {
            let laid = rest
                .iter()
                .position(|v| matches!(v, ValueBytes::Array(_)))
                .unwrap_or(rest.len());
            let memory = &mut cx.as_slice_mut()[offset..][..laid * VALUE_SIZE];
            for (item, dst) in rest[..laid].iter().zip(memory.chunks_exact_mut(VALUE_SIZE)) {
                if let ValueBytes::Laid(bytes) = item {
                    dst.copy_from_slice(bytes);
                }
            }
            offset += laid * VALUE_SIZE;
            rest = &rest[laid..];
            if let Some((array, tail)) = rest.split_first() {
                array.linear_lower_to_memory(cx, ty, offset)?;
                offset += VALUE_SIZE;
                rest = tail;
            }
        }
        Ok(())
    }
}

/// Writes little-endian fields into a laid-out record.
struct Writer<'a>(&'a mut [u8]);

impl Writer<'_> {
    fn u8(&mut self, at: usize, v: u8) {
        self.0[at] = v;
    }

    fn u32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn u64(&mut self, at: usize, v: u64) {
        self.0[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    fn span(&mut self, at: usize, span: wit::Span) {
        self.u32(at, span.start);
        self.u32(at + 4, span.len);
    }

    /// `option<T>` whose payload has 4-byte alignment: the case at `at`, the payload at +4.
    fn option<T>(
        &mut self,
        at: usize,
        value: Option<T>,
        payload: impl FnOnce(&mut Self, usize, T),
    ) {
        match value {
            None => self.u8(at, 0),
            Some(v) => {
                self.u8(at, 1);
                payload(self, at + 4, v);
            }
        }
    }
}

impl EventBytes {
    /// The laid-out bytes.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> &[u8; EVENT_SIZE] {
        &self.0
    }

    /// `event` laid out: `op` at 0, `relation` at 4, `source` at 8 (`db` +0, `lsn` +8, `xid`
    /// +16, `commit-time-us` +24, `snapshot` +32), `before` at 48, `after` at 60, `topic` at
    /// 72, `message` at 84 (`transactional` +0, `prefix` +4, `content` +12).
    #[inline] // into the batch's layout loop, where the fields are at hand
    pub(crate) fn new(event: &wit::Event) -> EventBytes {
        let mut bytes = [0u8; EVENT_SIZE];
        let mut w = Writer(&mut bytes);
        w.u8(0, op_case(event.op));
        w.u32(4, event.relation);
        let source = &event.source;
        w.span(8, source.db);
        w.u64(16, source.lsn);
        w.option(24, source.xid, |w, at, xid| w.u32(at, xid));
        w.u64(32, source.commit_time_us as u64);
        w.u8(40, snapshot_case(source.snapshot));
        let row = |w: &mut Writer<'_>, at: usize, row: wit::Row| {
            w.u32(at, row.start);
            w.u32(at + 4, row.len);
        };
        w.option(48, event.before, row);
        w.option(60, event.after, row);
        w.option(72, event.topic, Writer::span);
        w.option(84, event.message, |w, at, m| {
            w.u8(at, u8::from(m.transactional));
            w.span(at + 4, m.prefix);
            w.span(at + 12, m.content);
        });
        EventBytes(bytes)
    }
}

impl ValueBytes {
    /// `value` laid out: the case at 0, the payload at 8.
    #[inline] // into `FlatBatch::value`'s match, so that each case writes its bytes directly
    pub(crate) fn new(value: wit::Value) -> ValueBytes {
        let mut bytes = [0u8; VALUE_SIZE];
        let mut w = Writer(&mut bytes);
        let case = match value {
            wit::Value::Null => 0,
            wit::Value::Boolean(b) => {
                w.u8(8, u8::from(b));
                1
            }
            wit::Value::Int(i) => {
                w.u64(8, i as u64);
                2
            }
            wit::Value::Float(f) => {
                w.u64(8, f.to_bits());
                3
            }
            wit::Value::Text(s) => {
                w.span(8, s);
                4
            }
            wit::Value::Bytes(s) => {
                w.span(8, s);
                5
            }
            wit::Value::Numeric(s) => {
                w.span(8, s);
                6
            }
            wit::Value::Temporal(t) => {
                w.u8(8, temporal_case(t.kind));
                w.span(12, t.text);
                7
            }
            wit::Value::Json(s) => {
                w.span(8, s);
                8
            }
            wit::Value::Uuid(s) => {
                w.span(8, s);
                9
            }
            array @ wit::Value::Array(_) => return ValueBytes::Array(array),
            wit::Value::UnchangedToast => 11,
            wit::Value::Raw(r) => {
                w.span(8, r.type_name);
                w.span(16, r.text);
                12
            }
        };
        w.u8(0, case);
        ValueBytes::Laid(bytes)
    }
}

/// Reads little-endian fields out of a laid-out record; `None` past its end.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn u8(&self, at: usize) -> Option<u8> {
        self.0.get(at).copied()
    }

    fn u32(&self, at: usize) -> Option<u32> {
        Some(u32::from_le_bytes(self.0.get(at..at + 4)?.try_into().ok()?))
    }

    fn u64(&self, at: usize) -> Option<u64> {
        Some(u64::from_le_bytes(self.0.get(at..at + 8)?.try_into().ok()?))
    }

    fn span(&self, at: usize) -> Option<wit::Span> {
        Some(wit::Span {
            start: self.u32(at)?,
            len: self.u32(at + 4)?,
        })
    }
}

/// An `edit` laid out as the case at 0 and the payload at 8: `set` (`event` +0, `side` +4,
/// `column` +8, `value` +16), `remove` (`event` +0, `column` +4) or `drop` (the event);
/// `None` for any other case, an array value, or a field out of its range.
fn read_edit(bytes: &[u8]) -> Option<wit::Edit> {
    let r = Reader(bytes);
    Some(match r.u8(0)? {
        0 => wit::Edit::Set(wit::SetValue {
            event: r.u32(8)?,
            side: match r.u8(12)? {
                0 => wit::RowSide::Before,
                1 => wit::RowSide::After,
                _ => return None,
            },
            column: r.u32(16)?,
            value: read_value(&Reader(bytes.get(24..)?))?,
        }),
        1 => wit::Edit::Remove(wit::RemoveColumn {
            event: r.u32(8)?,
            column: r.u32(12)?,
        }),
        2 => wit::Edit::Drop(r.u32(8)?),
        _ => return None,
    })
}

/// A `value` laid out as [`ValueBytes::new`] writes it; `None` for an array (it holds lists)
/// or a case, flag or kind out of range.
fn read_value(r: &Reader<'_>) -> Option<wit::Value> {
    Some(match r.u8(0)? {
        0 => wit::Value::Null,
        1 => wit::Value::Boolean(match r.u8(8)? {
            0 => false,
            1 => true,
            _ => return None,
        }),
        2 => wit::Value::Int(r.u64(8)? as i64),
        3 => wit::Value::Float(f64::from_bits(r.u64(8)?)),
        4 => wit::Value::Text(r.span(8)?),
        5 => wit::Value::Bytes(r.span(8)?),
        6 => wit::Value::Numeric(r.span(8)?),
        7 => wit::Value::Temporal(wit::Temporal {
            kind: temporal_of_case(r.u8(8)?)?,
            text: r.span(12)?,
        }),
        8 => wit::Value::Json(r.span(8)?),
        9 => wit::Value::Uuid(r.span(8)?),
        11 => wit::Value::UnchangedToast,
        12 => wit::Value::Raw(wit::Raw {
            type_name: r.span(8)?,
            text: r.span(16)?,
        }),
        _ => return None,
    })
}

/// The temporal kind of a case index: the inverse of [`temporal_case`].
fn temporal_of_case(case: u8) -> Option<wit::TemporalKind> {
    use wit::TemporalKind as K;
    [
        K::Date,
        K::Time,
        K::TimeTz,
        K::Timestamp,
        K::TimestampTz,
        K::Interval,
    ]
    .into_iter()
    .find(|&kind| temporal_case(kind) == case)
}

/// The case index of an `op` (its position in the WIT enum).
fn op_case(op: wit::Op) -> u8 {
    match op {
        wit::Op::Create => 0,
        wit::Op::Update => 1,
        wit::Op::Delete => 2,
        wit::Op::Read => 3,
        wit::Op::Truncate => 4,
        wit::Op::Message => 5,
    }
}

fn snapshot_case(marker: wit::SnapshotMarker) -> u8 {
    match marker {
        wit::SnapshotMarker::False => 0,
        wit::SnapshotMarker::True => 1,
        wit::SnapshotMarker::First => 2,
        wit::SnapshotMarker::Last => 3,
        wit::SnapshotMarker::Incremental => 4,
    }
}

fn temporal_case(kind: wit::TemporalKind) -> u8 {
    match kind {
        wit::TemporalKind::Date => 0,
        wit::TemporalKind::Time => 1,
        wit::TemporalKind::TimeTz => 2,
        wit::TemporalKind::Timestamp => 3,
        wit::TemporalKind::TimestampTz => 4,
        wit::TemporalKind::Interval => 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_generated_types() {
        assert_eq!(<wit::Event as ComponentType>::SIZE32, EVENT_SIZE);
        assert_eq!(<wit::Event as ComponentType>::ALIGN32, 8);
        assert_eq!(<wit::Value as ComponentType>::SIZE32, VALUE_SIZE);
        assert_eq!(<wit::Value as ComponentType>::ALIGN32, 8);
        assert_eq!(<wit::Source as ComponentType>::SIZE32, 40);
        assert_eq!(<wit::LogicalMessage as ComponentType>::SIZE32, 20);
        assert_eq!(<wit::Edit as ComponentType>::ALIGN32, 8);
        assert_eq!(<wit::SetValue as ComponentType>::SIZE32, 40);
        assert_eq!(<wit::RemoveColumn as ComponentType>::SIZE32, 8);
    }

    /// Edits laid out by hand as the guest lays them out, and read back; what is not read here
    /// (`None`) goes to wasmtime's own lifting.
    #[test]
    fn common_edits_are_read_from_their_bytes() {
        let mut set = [0u8; 128];
        set[8..12].copy_from_slice(&7u32.to_le_bytes());
        set[12] = 1;
        set[16..20].copy_from_slice(&3u32.to_le_bytes());
        // Every laid-out value, as the host lays them out, reads back the same.
        let span = |start, len| wit::Span { start, len };
        for value in [
            wit::Value::Null,
            wit::Value::Boolean(true),
            wit::Value::Int(-5),
            wit::Value::Float(-2.5e-300),
            wit::Value::Text(span(1, 2)),
            wit::Value::Bytes(span(3, 4)),
            wit::Value::Numeric(span(5, 6)),
            wit::Value::Temporal(wit::Temporal {
                kind: wit::TemporalKind::Interval,
                text: span(7, 8),
            }),
            wit::Value::Json(span(9, 10)),
            wit::Value::Uuid(span(11, 12)),
            wit::Value::UnchangedToast,
            wit::Value::Raw(wit::Raw {
                type_name: span(13, 14),
                text: span(15, 16),
            }),
        ] {
            let ValueBytes::Laid(laid) = ValueBytes::new(value.clone()) else {
                panic!("laid out");
            };
            set[24..48].copy_from_slice(&laid);
            let Some(wit::Edit::Set(read)) = read_edit(&set) else {
                panic!("a set of {value:?} is read");
            };
            assert_eq!(
                (read.event, read.side, read.column),
                (7, wit::RowSide::After, 3)
            );
            assert_eq!(format!("{:?}", read.value), format!("{value:?}"));
        }
        let mut remove = [0u8; 128];
        remove[0] = 1;
        remove[8..12].copy_from_slice(&4u32.to_le_bytes());
        remove[12..16].copy_from_slice(&2u32.to_le_bytes());
        assert!(matches!(
            read_edit(&remove),
            Some(wit::Edit::Remove(wit::RemoveColumn {
                event: 4,
                column: 2
            }))
        ));
        let mut drop = [0u8; 128];
        drop[0] = 2;
        drop[8] = 9;
        assert!(matches!(read_edit(&drop), Some(wit::Edit::Drop(9))));
        // Arrays, replacements, failures and anything out of range are left to wasmtime.
        let unread = |patch: &dyn Fn(&mut [u8; 128])| {
            let mut bytes = set;
            patch(&mut bytes);
            read_edit(&bytes).is_none()
        };
        assert!(unread(&|b| b[24] = 10), "array");
        assert!(unread(&|b| b[24] = 13), "no such value case");
        assert!(unread(&|b| b[12] = 2), "no such side");
        assert!(
            unread(&|b| (b[24], b[32]) = (1, 2)),
            "a boolean that is neither"
        );
        assert!(
            unread(&|b| (b[24], b[32]) = (7, 6)),
            "no such temporal kind"
        );
        assert!(unread(&|b| b[0] = 3), "replace");
        assert!(unread(&|b| b[0] = 4), "fail");
        assert!(unread(&|b| b[0] = 5), "no such edit");
        assert!(read_edit(&set[..30]).is_none(), "too short");
    }

    #[test]
    fn an_event_is_laid_out_field_by_field() {
        let event = wit::Event {
            op: wit::Op::Delete,
            relation: 7,
            source: wit::Source {
                db: wit::Span { start: 1, len: 3 },
                lsn: 0x0102_0304_0506_0708,
                xid: Some(99),
                commit_time_us: -2,
                snapshot: wit::SnapshotMarker::Last,
            },
            before: None,
            after: Some(wit::Row { start: 5, len: 2 }),
            topic: None,
            message: None,
        };
        let EventBytes(b) = EventBytes::new(&event);
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        assert_eq!(b[0], 2);
        assert_eq!(u32_at(4), 7);
        assert_eq!((u32_at(8), u32_at(12)), (1, 3));
        assert_eq!(&b[16..24], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!((b[24], u32_at(28)), (1, 99));
        assert_eq!(&b[32..40], &(-2i64).to_le_bytes());
        assert_eq!(b[40], 3);
        assert_eq!(b[48], 0);
        assert_eq!((b[60], u32_at(64), u32_at(68)), (1, 5, 2));
        assert_eq!((b[72], b[84]), (0, 0));

        let span = |start, len| wit::Span { start, len };
        let message = wit::Event {
            op: wit::Op::Message,
            topic: Some(span(9, 4)),
            message: Some(wit::LogicalMessage {
                transactional: true,
                prefix: span(20, 5),
                content: span(30, 6),
            }),
            ..event
        };
        let EventBytes(b) = EventBytes::new(&message);
        let u32_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        assert_eq!(b[0], 5);
        assert_eq!((b[72], u32_at(76), u32_at(80)), (1, 9, 4));
        assert_eq!((b[84], b[88]), (1, 1));
        assert_eq!((u32_at(92), u32_at(96)), (20, 5));
        assert_eq!((u32_at(100), u32_at(104)), (30, 6));
    }
}
