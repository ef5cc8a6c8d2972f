//! Column values as a plugin reads and writes them.
//!
//! The ABI sends a batch's text and bytes in one buffer (`types.span`s into `batch.data`), so
//! a value read from an event borrows that buffer ([`Cow::Borrowed`]) and costs nothing to
//! look at; a value a plugin makes owns its text ([`Cow::Owned`]). Both compare equal when
//! their contents do.

use std::borrow::Cow;

use crate::types::{self, TemporalKind};

/// A column value. `'a` is the batch the value was read from (or `'static` for one the plugin
/// built).
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    /// SQL NULL.
    Null,
    /// `bool`
    Boolean(bool),
    /// `int2`, `int4`, `int8`, `oid`
    Int(i64),
    /// `float4`, `float8` (NaN and infinities included)
    Float(f64),
    /// `text`, `varchar`, `bpchar`, `name`, enums, `inet`, `cidr`, `macaddr`, `money`, bits
    Text(Cow<'a, str>),
    /// `bytea`
    Bytes(Cow<'a, [u8]>),
    /// `numeric` as exact decimal text (`NaN`, `Infinity`, `-Infinity` included)
    Numeric(Cow<'a, str>),
    /// Dates, times, timestamps, intervals as ISO-8601 text.
    Temporal(TemporalKind, Cow<'a, str>),
    /// `json`/`jsonb` as JSON text.
    Json(Cow<'a, str>),
    /// `uuid` in canonical lowercase form.
    Uuid(Cow<'a, str>),
    /// An array: its dimensions and its elements in row-major order (never arrays themselves).
    Array(Array<'a>),
    /// A TOASTed value the source did not send because it did not change.
    UnchangedToast,
    /// A value of a type the host does not decode, in PostgreSQL's text format.
    Raw {
        /// PostgreSQL type name, e.g. `point`.
        type_name: Cow<'a, str>,
        /// The text.
        text: Cow<'a, str>,
    },
}

/// A (possibly multi-dimensional) array.
#[derive(Debug, Clone, PartialEq)]
pub struct Array<'a> {
    /// Length of each dimension; empty for an empty array.
    pub dims: Vec<u32>,
    /// Elements in row-major order.
    pub elements: Vec<Value<'a>>,
}

impl<'a> Value<'a> {
    /// Whether this is SQL NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The text of a text-like value (text, numeric, json, uuid, temporal, raw).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) | Value::Numeric(s) | Value::Json(s) | Value::Uuid(s) => Some(s),
            Value::Temporal(_, text) | Value::Raw { text, .. } => Some(text),
            _ => None,
        }
    }

    /// The integer of an `int` value.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    /// The number of an `int` or `float` value.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The flag of a `boolean` value.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Boolean(b) => Some(*b),
            _ => None,
        }
    }

    /// The bytes of a `bytes` value.
    pub fn as_bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }

    /// The same value owning its text, to keep beyond the batch.
    pub fn into_owned(self) -> Value<'static> {
        let own = |s: Cow<'a, str>| Cow::Owned(s.into_owned());
        match self {
            Value::Null => Value::Null,
            Value::Boolean(b) => Value::Boolean(b),
            Value::Int(i) => Value::Int(i),
            Value::Float(f) => Value::Float(f),
            Value::Text(s) => Value::Text(own(s)),
            Value::Bytes(b) => Value::Bytes(Cow::Owned(b.into_owned())),
            Value::Numeric(s) => Value::Numeric(own(s)),
            Value::Temporal(kind, s) => Value::Temporal(kind, own(s)),
            Value::Json(s) => Value::Json(own(s)),
            Value::Uuid(s) => Value::Uuid(own(s)),
            Value::Array(a) => Value::Array(Array {
                dims: a.dims,
                elements: a.elements.into_iter().map(Value::into_owned).collect(),
            }),
            Value::UnchangedToast => Value::UnchangedToast,
            Value::Raw { type_name, text } => Value::Raw {
                type_name: own(type_name),
                text: own(text),
            },
        }
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(s: &'a str) -> Value<'a> {
        Value::Text(Cow::Borrowed(s))
    }
}

impl From<String> for Value<'_> {
    fn from(s: String) -> Self {
        Value::Text(Cow::Owned(s))
    }
}

impl From<i64> for Value<'_> {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<i32> for Value<'_> {
    fn from(i: i32) -> Self {
        Value::Int(i64::from(i))
    }
}

impl From<f64> for Value<'_> {
    fn from(f: f64) -> Self {
        Value::Float(f)
    }
}

impl From<bool> for Value<'_> {
    fn from(b: bool) -> Self {
        Value::Boolean(b)
    }
}

impl From<Vec<u8>> for Value<'_> {
    fn from(b: Vec<u8>) -> Self {
        Value::Bytes(Cow::Owned(b))
    }
}

impl<'a> From<&'a [u8]> for Value<'a> {
    fn from(b: &'a [u8]) -> Value<'a> {
        Value::Bytes(Cow::Borrowed(b))
    }
}

impl<'a, T: Into<Value<'a>>> From<Option<T>> for Value<'a> {
    fn from(v: Option<T>) -> Value<'a> {
        v.map(Into::into).unwrap_or(Value::Null)
    }
}

/// The buffers a batch's values refer into, and decoding from them.
#[derive(Clone, Copy)]
pub(crate) struct Buffers<'a> {
    pub values: &'a [types::Value],
    pub data: &'a [u8],
}

impl<'a> Buffers<'a> {
    /// The bytes of a span (empty when the host sent one out of range, which it never does).
    pub fn bytes(&self, span: types::Span) -> &'a [u8] {
        let start = span.start as usize;
        start
            .checked_add(span.len as usize)
            .and_then(|end| self.data.get(start..end))
            .unwrap_or(&[])
    }

    /// The text of a span (the host sends UTF-8; anything else is shown replaced).
    pub fn text(&self, span: types::Span) -> Cow<'a, str> {
        let bytes = self.bytes(span);
        match std::str::from_utf8(bytes) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(bytes),
        }
    }

    /// A row's values.
    pub fn row(&self, row: types::Row) -> &'a [types::Value] {
        let start = row.start as usize;
        start
            .checked_add(row.len as usize)
            .and_then(|end| self.values.get(start..end))
            .unwrap_or(&[])
    }

    /// A value as the plugin sees it.
    pub fn value(&self, value: &types::Value) -> Value<'a> {
        use types::Value as W;
        match value {
            W::Null => Value::Null,
            W::Boolean(b) => Value::Boolean(*b),
            W::Int(i) => Value::Int(*i),
            W::Float(f) => Value::Float(*f),
            W::Text(s) => Value::Text(self.text(*s)),
            W::Bytes(s) => Value::Bytes(Cow::Borrowed(self.bytes(*s))),
            W::Numeric(s) => Value::Numeric(self.text(*s)),
            W::Temporal(t) => Value::Temporal(t.kind, self.text(t.text)),
            W::Json(s) => Value::Json(self.text(*s)),
            W::Uuid(s) => Value::Uuid(self.text(*s)),
            W::Array(a) => Value::Array(Array {
                dims: a.dims.clone(),
                elements: a.elements.iter().map(|e| self.scalar(e)).collect(),
            }),
            W::UnchangedToast => Value::UnchangedToast,
            W::Raw(r) => Value::Raw {
                type_name: self.text(r.type_name),
                text: self.text(r.text),
            },
        }
    }

    fn scalar(&self, scalar: &types::Scalar) -> Value<'a> {
        use types::Scalar as S;
        match scalar {
            S::Null => Value::Null,
            S::Boolean(b) => Value::Boolean(*b),
            S::Int(i) => Value::Int(*i),
            S::Float(f) => Value::Float(*f),
            S::Text(s) => Value::Text(self.text(*s)),
            S::Bytes(s) => Value::Bytes(Cow::Borrowed(self.bytes(*s))),
            S::Numeric(s) => Value::Numeric(self.text(*s)),
            S::Temporal(t) => Value::Temporal(t.kind, self.text(t.text)),
            S::Json(s) => Value::Json(self.text(*s)),
            S::Uuid(s) => Value::Uuid(self.text(*s)),
            S::UnchangedToast => Value::UnchangedToast,
            S::Raw(r) => Value::Raw {
                type_name: self.text(r.type_name),
                text: self.text(r.text),
            },
        }
    }
}

/// A transform's answer being built: edits, and the buffers their values go into.
#[derive(Default)]
pub(crate) struct Answer {
    pub edits: Vec<types::Edit>,
    pub values: Vec<types::Value>,
    pub data: Vec<u8>,
}

impl Answer {
    pub fn span(&mut self, bytes: &[u8]) -> types::Span {
        let start = self.data.len() as u32;
        self.data.extend_from_slice(bytes);
        types::Span {
            start,
            len: bytes.len() as u32,
        }
    }

    /// `value` in the answer's buffers.
    pub fn value(&mut self, value: &Value<'_>) -> types::Value {
        use types::Value as W;
        match value {
            Value::Null => W::Null,
            Value::Boolean(b) => W::Boolean(*b),
            Value::Int(i) => W::Int(*i),
            Value::Float(f) => W::Float(*f),
            Value::Text(s) => W::Text(self.span(s.as_bytes())),
            Value::Bytes(b) => W::Bytes(self.span(b)),
            Value::Numeric(s) => W::Numeric(self.span(s.as_bytes())),
            Value::Temporal(kind, s) => W::Temporal(types::Temporal {
                kind: *kind,
                text: self.span(s.as_bytes()),
            }),
            Value::Json(s) => W::Json(self.span(s.as_bytes())),
            Value::Uuid(s) => W::Uuid(self.span(s.as_bytes())),
            Value::Array(a) => W::Array(types::Array {
                dims: a.dims.clone(),
                elements: a.elements.iter().map(|e| self.scalar(e)).collect(),
            }),
            Value::UnchangedToast => W::UnchangedToast,
            Value::Raw { type_name, text } => W::Raw(types::Raw {
                type_name: self.span(type_name.as_bytes()),
                text: self.span(text.as_bytes()),
            }),
        }
    }

    fn scalar(&mut self, value: &Value<'_>) -> types::Scalar {
        use types::Scalar as S;
        match self.value(value) {
            types::Value::Null => S::Null,
            types::Value::Boolean(b) => S::Boolean(b),
            types::Value::Int(i) => S::Int(i),
            types::Value::Float(f) => S::Float(f),
            types::Value::Text(s) => S::Text(s),
            types::Value::Bytes(s) => S::Bytes(s),
            types::Value::Numeric(s) => S::Numeric(s),
            types::Value::Temporal(t) => S::Temporal(t),
            types::Value::Json(s) => S::Json(s),
            types::Value::Uuid(s) => S::Uuid(s),
            // Arrays do not nest (PostgreSQL arrays are flat with dimensions).
            types::Value::UnchangedToast | types::Value::Array(_) => S::UnchangedToast,
            types::Value::Raw(r) => S::Raw(r),
        }
    }
}
