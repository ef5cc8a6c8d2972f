//! How much memory events hold, roughly: what the pipeline's byte budget counts.
//!
//! Counting events bounds memory only while rows are small: 2,000 rows of 256 KiB queued behind
//! a sink outage are half a gigabyte. The weight is the events' own size plus the heap bytes
//! their values point to — not exact (allocator slack, shared relations are left out), but
//! proportional to what a queue of them costs, and the same for the same events wherever it is
//! computed, so what the reader acquires the writer releases exactly.

use crate::event::{Event, Row, Value};

/// What a run of events weighs: how many, and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Weight {
    /// Events.
    pub events: usize,
    /// Their bytes, roughly (see the module docs).
    pub bytes: usize,
}

/// The weight of `events`.
pub fn of_events(events: &[Event]) -> Weight {
    Weight {
        events: events.len(),
        bytes: events.iter().map(of_event).sum(),
    }
}

fn of_event(event: &Event) -> usize {
    std::mem::size_of::<Event>()
        + event.before.as_ref().map_or(0, of_row)
        + event.after.as_ref().map_or(0, of_row)
        + event
            .message
            .as_ref()
            .map_or(0, |m| m.content.len() + m.prefix.len())
}

fn of_row(row: &Row) -> usize {
    row.iter()
        .map(|v| std::mem::size_of::<Value>() + heap(v))
        .sum()
}

/// Bytes a value points to outside itself.
fn heap(value: &Value) -> usize {
    match value {
        Value::Text(s) | Value::Numeric(s) | Value::Json(s) | Value::Uuid(s) => s.len(),
        Value::Temporal(_, s) => s.len(),
        Value::Bytes(b) => b.len(),
        Value::Array(a) => a
            .elements
            .iter()
            .map(|v| std::mem::size_of::<Value>() + heap(v))
            .sum(),
        Value::Raw { type_name, text } => type_name.len() + text.len(),
        Value::Null | Value::Bool(_) | Value::Int(_) | Value::Float(_) | Value::UnchangedToast => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn event(after: Row) -> Event {
        Event {
            op: crate::event::Op::Create,
            relation: Arc::new(crate::event::Relation {
                oid: 1,
                schema: "public".into(),
                table: "t".into(),
                columns: Vec::new(),
            }),
            source: Default::default(),
            before: None,
            after: Some(after),
            topic: None,
            message: None,
        }
    }

    #[test]
    fn big_values_weigh_what_they_hold() {
        let small = of_events(&[event(vec![Value::Int(1)])]).bytes;
        let big = of_events(&[event(vec![Value::Bytes(vec![0; 256 * 1024])])]).bytes;
        assert!(small < 1024, "{small}");
        assert!((256 * 1024..256 * 1024 + 1024).contains(&big), "{big}");
        let two = of_events(&[event(vec![Value::Int(1)]), event(vec![Value::Int(2)])]);
        assert_eq!(
            two,
            Weight {
                events: 2,
                bytes: 2 * small
            }
        );
    }
}
