//! Conveniences on [`Value`]: typed reads and conversions from Rust values.

use crate::types::{Scalar, Value};

impl Value {
    /// Whether this is SQL NULL.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The text of a text-like value (text, numeric, json, uuid, temporal, raw).
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) | Value::Numeric(s) | Value::Json(s) | Value::Uuid(s) => Some(s),
            Value::Temporal(t) => Some(&t.text),
            Value::Raw(r) => Some(&r.text),
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
}

impl PartialEq for Value {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Null, Value::Null) | (Value::UnchangedToast, Value::UnchangedToast) => true,
            (Value::Boolean(a), Value::Boolean(b)) => a == b,
            (Value::Int(a), Value::Int(b)) => a == b,
            (Value::Float(a), Value::Float(b)) => a == b,
            (Value::Text(a), Value::Text(b))
            | (Value::Numeric(a), Value::Numeric(b))
            | (Value::Json(a), Value::Json(b))
            | (Value::Uuid(a), Value::Uuid(b)) => a == b,
            (Value::Bytes(a), Value::Bytes(b)) => a == b,
            (Value::Temporal(a), Value::Temporal(b)) => a.kind == b.kind && a.text == b.text,
            (Value::Raw(a), Value::Raw(b)) => a.type_name == b.type_name && a.text == b.text,
            (Value::Array(a), Value::Array(b)) => {
                a.dims == b.dims
                    && a.elements.len() == b.elements.len()
                    && a.elements
                        .iter()
                        .zip(&b.elements)
                        .all(|(x, y)| scalar_eq(x, y))
            }
            _ => false,
        }
    }
}

fn scalar_eq(a: &Scalar, b: &Scalar) -> bool {
    match (a, b) {
        (Scalar::Null, Scalar::Null) | (Scalar::UnchangedToast, Scalar::UnchangedToast) => true,
        (Scalar::Boolean(a), Scalar::Boolean(b)) => a == b,
        (Scalar::Int(a), Scalar::Int(b)) => a == b,
        (Scalar::Float(a), Scalar::Float(b)) => a == b,
        (Scalar::Text(a), Scalar::Text(b))
        | (Scalar::Numeric(a), Scalar::Numeric(b))
        | (Scalar::Json(a), Scalar::Json(b))
        | (Scalar::Uuid(a), Scalar::Uuid(b)) => a == b,
        (Scalar::Bytes(a), Scalar::Bytes(b)) => a == b,
        (Scalar::Temporal(a), Scalar::Temporal(b)) => a.kind == b.kind && a.text == b.text,
        (Scalar::Raw(a), Scalar::Raw(b)) => a.type_name == b.type_name && a.text == b.text,
        _ => false,
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Text(s.to_string())
    }
}

impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Text(s)
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}

impl From<i32> for Value {
    fn from(i: i32) -> Value {
        Value::Int(i64::from(i))
    }
}

impl From<f64> for Value {
    fn from(f: f64) -> Value {
        Value::Float(f)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Boolean(b)
    }
}

impl From<Vec<u8>> for Value {
    fn from(b: Vec<u8>) -> Value {
        Value::Bytes(b)
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map(Into::into).unwrap_or(Value::Null)
    }
}
