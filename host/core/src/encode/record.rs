//! The sink record: a borrowed view of an [`Event`] that serialises as the Debezium-compatible
//! envelope with any serde serializer (JSON, MessagePack), without building a tree first.

use base64::Engine as _;
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

use super::{EncodeOptions, record_topic, server_name, source_ts_ms};
use crate::event::{Array, Event, Op, Relation, Row, Value};

/// How an unchanged TOAST value is written (the event never carried it).
pub const UNAVAILABLE_VALUE: &str = "__walflow_unavailable_value";

/// A serialisable view of one event as a sink record.
#[derive(Clone, Copy)]
pub struct Record<'a> {
    event: &'a Event,
    options: &'a EncodeOptions,
    ts_ms: i64,
    binary: bool,
}

impl<'a> Record<'a> {
    /// A record of `event`, processed at `ts_ms`.
    pub fn new(event: &'a Event, options: &'a EncodeOptions, ts_ms: i64) -> Record<'a> {
        Record {
            event,
            options,
            ts_ms,
            binary: false,
        }
    }

    /// Writes bytea as native binary (MessagePack) instead of base64 text.
    pub fn binary(mut self, binary: bool) -> Record<'a> {
        self.binary = binary;
        self
    }

    /// The key part alone.
    pub fn key(&self) -> KeyRef<'a> {
        KeyRef {
            event: self.event,
            binary: self.binary,
        }
    }
}

impl Record<'_> {
    /// The record's top-level entries.
    fn entries<M: SerializeMap>(&self, map: &mut M) -> Result<(), M::Error> {
        map.serialize_entry("topic", &record_topic(self.event, self.options))?;
        map.serialize_entry("key", &self.key())?;
        map.serialize_entry("value", &ValueRef { record: self })?;
        if self.options.include_types && !self.event.relation.columns.is_empty() {
            map.serialize_entry("types", &TypesRef(&self.event.relation))?;
        }
        Ok(())
    }
}

impl Serialize for Record<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        self.entries(&mut map)?;
        map.end()
    }
}

/// A dead letter: the event's record, and after it a top-level `error` saying why the event
/// was dead-lettered.
#[derive(Clone, Copy)]
pub struct DeadLetter<'a> {
    /// The event's record.
    pub record: Record<'a>,
    /// Why it was dead-lettered (a plugin's error, a sink's rejection).
    pub error: &'a str,
}

impl Serialize for DeadLetter<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        self.record.entries(&mut map)?;
        map.serialize_entry("error", self.error)?;
        map.end()
    }
}

/// The key object: replica-identity columns, or `null` when the table has none.
#[derive(Clone, Copy)]
pub struct KeyRef<'a> {
    event: &'a Event,
    binary: bool,
}

impl KeyRef<'_> {
    /// Writes bytea as native binary instead of base64 text.
    pub fn binary(mut self, binary: bool) -> Self {
        self.binary = binary;
        self
    }
}

impl Serialize for KeyRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let event = self.event;
        if event.op == Op::Message {
            let mut map = s.serialize_map(Some(1))?;
            let prefix = event.message.as_ref().map(|m| m.prefix.as_str());
            map.serialize_entry("prefix", &prefix)?;
            return map.end();
        }
        let key = event.key();
        if key.is_empty() || event.op == Op::Truncate {
            return s.serialize_none();
        }
        let mut map = s.serialize_map(Some(key.len()))?;
        for (name, value) in key {
            map.serialize_entry(name, &ValRef(value, self.binary))?;
        }
        map.end()
    }
}

struct ValueRef<'r, 'a> {
    record: &'r Record<'a>,
}

impl<'a> Serialize for ValueRef<'_, 'a> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.record;
        let e = r.event;
        let mut map = s.serialize_map(None)?;
        let binary = r.binary;
        let row = |row: &'a Option<Row>| {
            row.as_ref().map(|values| RowRef {
                relation: &e.relation,
                values,
                binary,
            })
        };
        map.serialize_entry("before", &row(&e.before))?;
        map.serialize_entry("after", &row(&e.after))?;
        map.serialize_entry("source", &SourceRef { record: r })?;
        map.serialize_entry("op", e.op.code())?;
        map.serialize_entry("ts_ms", &r.ts_ms)?;
        if let Some(m) = &e.message {
            map.serialize_entry(
                "message",
                &MessageRef {
                    prefix: &m.prefix,
                    content: &m.content,
                    transactional: m.transactional,
                    binary: r.binary,
                },
            )?;
        }
        map.end()
    }
}

struct MessageRef<'a> {
    prefix: &'a str,
    content: &'a [u8],
    transactional: bool,
    binary: bool,
}

impl Serialize for MessageRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(3))?;
        map.serialize_entry("prefix", self.prefix)?;
        map.serialize_entry("content", &BytesRef(self.content, self.binary))?;
        map.serialize_entry("transactional", &self.transactional)?;
        map.end()
    }
}

struct SourceRef<'r, 'a> {
    record: &'r Record<'a>,
}

impl Serialize for SourceRef<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = self.record;
        let e = r.event;
        let src = &e.source;
        let ts_ms = source_ts_ms(e, r.ts_ms);
        let mut map = s.serialize_map(Some(10))?;
        map.serialize_entry("version", env!("CARGO_PKG_VERSION"))?;
        map.serialize_entry("connector", "postgresql")?;
        map.serialize_entry("name", server_name(e, r.options))?;
        map.serialize_entry("ts_ms", &ts_ms)?;
        map.serialize_entry("snapshot", src.snapshot.as_str())?;
        map.serialize_entry("db", &*src.db)?;
        map.serialize_entry("schema", &e.relation.schema)?;
        map.serialize_entry("table", &e.relation.table)?;
        map.serialize_entry("txId", &src.xid)?;
        map.serialize_entry("lsn", &src.lsn)?;
        map.end()
    }
}

struct RowRef<'a> {
    relation: &'a Relation,
    values: &'a Row,
    binary: bool,
}

impl Serialize for RowRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.values.len()))?;
        for (column, value) in self.relation.columns.iter().zip(self.values) {
            map.serialize_entry(&column.name, &ValRef(value, self.binary))?;
        }
        map.end()
    }
}

struct TypesRef<'a>(&'a Relation);

impl Serialize for TypesRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.columns.len()))?;
        for c in &self.0.columns {
            map.serialize_entry(&c.name, &c.type_name)?;
        }
        map.end()
    }
}

struct BytesRef<'a>(&'a [u8], bool);

impl Serialize for BytesRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.1 {
            s.serialize_bytes(self.0)
        } else {
            s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(self.0))
        }
    }
}

/// One column value in the record's representation.
pub(crate) struct ValRef<'a>(pub &'a Value, pub bool);

impl Serialize for ValRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Null => s.serialize_none(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(i) => s.serialize_i64(*i),
            Value::Float(f) => serialize_float(*f, s),
            Value::Text(t) => s.serialize_str(t),
            Value::Bytes(b) => BytesRef(b, self.1).serialize(s),
            Value::Numeric(n) => s.serialize_str(n),
            Value::Temporal(_, t) => s.serialize_str(t),
            Value::Json(j) => serialize_json(j, s),
            Value::Uuid(u) => s.serialize_str(u),
            Value::Array(a) => ArrayRef {
                dims: &a.dims,
                elements: &a.elements,
                binary: self.1,
            }
            .serialize(s),
            Value::UnchangedToast => s.serialize_str(UNAVAILABLE_VALUE),
            Value::Raw { text, .. } => s.serialize_str(text),
        }
    }
}

fn serialize_float<S: Serializer>(f: f64, s: S) -> Result<S::Ok, S::Error> {
    if f.is_nan() {
        s.serialize_str("NaN")
    } else if f.is_infinite() {
        s.serialize_str(if f > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        s.serialize_f64(f)
    }
}

/// Embeds JSON text as JSON; text that is not valid JSON is written as a string.
/// A `json`/`jsonb` value as JSON, not as a string. The JSON encoder (the human-readable one)
/// embeds the text as it is once it is checked to be JSON: numbers keep every digit (a parsed
/// value would round them to f64) and no tree is built. Text that spans lines is parsed and
/// written again, so that a `json` value typed with newlines cannot break JSON lines; so is
/// everything for MessagePack, which needs the structure.
fn serialize_json<S: Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
    if s.is_human_readable()
        && !text.bytes().any(|b| b == b'\n' || b == b'\r')
        && let Ok(raw) = serde_json::from_str::<&serde_json::value::RawValue>(text)
    {
        return raw.serialize(s);
    }
    match serde_json::from_str::<serde_json::Value>(text) {
        Ok(v) => v.serialize(s),
        Err(_) => s.serialize_str(text),
    }
}

struct ArrayRef<'a> {
    dims: &'a [u32],
    elements: &'a [Value],
    binary: bool,
}

impl Serialize for ArrayRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Some((&outer, inner)) = self.dims.split_first() else {
            return s.serialize_seq(Some(0))?.end();
        };
        let mut seq = s.serialize_seq(Some(outer as usize))?;
        if inner.is_empty() {
            for v in self.elements.iter().take(outer as usize) {
                seq.serialize_element(&ValRef(v, self.binary))?;
            }
        } else {
            let stride: usize = inner.iter().map(|d| *d as usize).product();
            for chunk in self.elements.chunks(stride.max(1)).take(outer as usize) {
                seq.serialize_element(&ArrayRef {
                    dims: inner,
                    elements: chunk,
                    binary: self.binary,
                })?;
            }
        }
        seq.end()
    }
}

/// Builds an array value from nested element lists (used when reading records back).
pub(crate) fn array_from_nested(dims: Vec<u32>, elements: Vec<Value>) -> Value {
    Value::Array(Array {
        dims,
        lower_bounds: Vec::new(),
        elements,
    })
}
