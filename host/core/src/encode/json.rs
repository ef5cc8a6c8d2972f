//! The JSON form of sink records, both ways.
//!
//! Writing follows the README's Events section: integers and floats as numbers (NaN/Infinity
//! as strings), numeric as an exact string, bytea as base64, temporal values as ISO-8601
//! strings, json embedded, arrays as (nested) arrays, an unchanged TOAST value as
//! `"__walflow_unavailable_value"`.
//!
//! Reading (for `walflow plugin run` and tests) is lossless when the record carries a `types`
//! object mapping each column to its PostgreSQL type name, as records written with
//! [`EncodeOptions::include_types`] do:
//!
//! ```json
//! {"topic": "app.public.t", "key": {"id": 1},
//!  "value": {"before": null, "after": {"id": 1, "data": "3q2+7w==", "amount": "12.50"},
//!            "source": {"db": "app", "schema": "public", "table": "t", "lsn": 123, "txId": 7,
//!                       "ts_ms": 1700000000000, "snapshot": "false"},
//!            "op": "c", "ts_ms": 1700000000001},
//!  "types": {"id": "int4", "data": "bytea", "amount": "numeric"}}
//! ```
//!
//! With a type, a string is decoded as that type: `bytea` from base64, `numeric` kept exact,
//! `date`/`time`/`timetz`/`timestamp`/`timestamptz`/`interval` as temporal values, `json`/`jsonb`
//! from the embedded value, `uuid`, and `_name` arrays element by element. Without a type, JSON's
//! own kinds decide: strings are text, integral numbers `int8`, other numbers `float8`, booleans,
//! arrays, and objects are `jsonb`. Key columns are those named in `key`.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Map, Value as Json};

use super::record::{Record, UNAVAILABLE_VALUE, array_from_nested};
use super::{EncodeOptions, now_ms};
use crate::event::{
    Column, Event, LogicalMessage, Op, Relation, Row, SnapshotMarker, Source, TemporalKind, Value,
};

/// The sink record of `event` as a JSON tree (database name as `source.name`).
pub fn record(event: &Event) -> Json {
    record_with(event, &EncodeOptions::default())
}

/// The sink record of `event` as a JSON tree.
pub fn record_with(event: &Event, options: &EncodeOptions) -> Json {
    serde_json::to_value(Record::new(event, options, now_ms())).unwrap_or(Json::Null)
}

/// Why a JSON line is not a sink record.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not JSON at all.
    #[error("not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// JSON, but not shaped like a sink record.
    #[error("{0}")]
    Shape(String),
}

fn shape(msg: impl Into<String>) -> ParseError {
    ParseError::Shape(msg.into())
}

/// Parses the sink record (the README's Events section) back into an [`Event`] (lossless given `types`).
pub fn parse_record(record: &Json) -> Result<Event, ParseError> {
    RecordParser::default().parse(record)
}

/// Reads sink records, sharing one [`Relation`] between records of the same table and shape.
#[derive(Default)]
pub struct RecordParser {
    relations: HashMap<RelationKey, Arc<Relation>>,
}

#[derive(Hash, PartialEq, Eq)]
struct RelationKey {
    schema: String,
    table: String,
    columns: Vec<(String, String, bool)>,
}

impl RecordParser {
    /// Parses one JSON line.
    pub fn parse_line(&mut self, line: &str) -> Result<Event, ParseError> {
        let json: Json = serde_json::from_str(line)?;
        self.parse(&json)
    }

    /// Parses one record.
    pub fn parse(&mut self, record: &Json) -> Result<Event, ParseError> {
        let obj = record
            .as_object()
            .ok_or_else(|| shape("a record must be a JSON object with `key` and `value`"))?;
        let value = obj
            .get("value")
            .and_then(Json::as_object)
            .ok_or_else(|| shape("the record has no `value` object"))?;
        let op_code = value
            .get("op")
            .and_then(Json::as_str)
            .ok_or_else(|| shape("`value.op` is missing"))?;
        let op = Op::from_code(op_code).ok_or_else(|| {
            shape(format!(
                "`value.op` is `{op_code}`; expected c, u, d, r, t or m"
            ))
        })?;
        let source = value.get("source").and_then(Json::as_object);
        let empty = Map::new();
        let source = source.unwrap_or(&empty);
        let types = obj.get("types").and_then(Json::as_object).unwrap_or(&empty);
        let key = obj.get("key").and_then(Json::as_object).unwrap_or(&empty);
        let before = row_object(value, "before")?;
        let after = row_object(value, "after")?;
        let relation = self.relation(source, types, key, before, after);
        let decode = |row: Option<&Map<String, Json>>| -> Result<Option<Row>, ParseError> {
            row.map(|r| decode_row(&relation, r)).transpose()
        };
        Ok(Event {
            op,
            source: parse_source(source)?,
            before: decode(before)?,
            after: decode(after)?,
            topic: obj.get("topic").and_then(Json::as_str).map(Arc::from),
            message: parse_message(value)?.map(Box::new),
            relation,
        })
    }

    fn relation(
        &mut self,
        source: &Map<String, Json>,
        types: &Map<String, Json>,
        key: &Map<String, Json>,
        before: Option<&Map<String, Json>>,
        after: Option<&Map<String, Json>>,
    ) -> Arc<Relation> {
        let mut columns: Vec<(String, String, bool)> = Vec::new();
        for row in [after, before].into_iter().flatten() {
            for (name, v) in row {
                if columns.iter().any(|(n, _, _)| n == name) {
                    continue;
                }
                let type_name = match types.get(name).and_then(Json::as_str) {
                    Some(t) => t.to_owned(),
                    None => inferred_type(v).to_owned(),
                };
                columns.push((name.clone(), type_name, key.contains_key(name)));
            }
        }
        let text = |k: &str| {
            source
                .get(k)
                .and_then(Json::as_str)
                .unwrap_or("")
                .to_owned()
        };
        let rkey = RelationKey {
            schema: text("schema"),
            table: text("table"),
            columns,
        };
        if let Some(r) = self.relations.get(&rkey) {
            return r.clone();
        }
        let relation = Arc::new(Relation {
            oid: 0,
            schema: rkey.schema.clone(),
            table: rkey.table.clone(),
            columns: rkey
                .columns
                .iter()
                .map(|(name, type_name, key)| Column {
                    name: name.clone(),
                    type_oid: 0,
                    type_name: type_name.clone(),
                    type_modifier: -1,
                    key: *key,
                })
                .collect(),
        });
        self.relations.insert(rkey, relation.clone());
        relation
    }
}

fn row_object<'a>(
    value: &'a Map<String, Json>,
    field: &str,
) -> Result<Option<&'a Map<String, Json>>, ParseError> {
    match value.get(field) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::Object(m)) => Ok(Some(m)),
        Some(_) => Err(shape(format!("`value.{field}` must be an object or null"))),
    }
}

fn inferred_type(v: &Json) -> &'static str {
    match v {
        Json::Bool(_) => "bool",
        Json::Number(n) if n.is_i64() || n.is_u64() => "int8",
        Json::Number(_) => "float8",
        Json::Array(_) => "_text",
        Json::Object(_) => "jsonb",
        Json::String(_) | Json::Null => "text",
    }
}

fn decode_row(relation: &Relation, row: &Map<String, Json>) -> Result<Row, ParseError> {
    relation
        .columns
        .iter()
        .map(|c| match row.get(&c.name) {
            None => Ok(Value::Null),
            Some(v) => decode_value(&c.type_name, v)
                .map_err(|e| shape(format!("column `{}` ({}): {e}", c.name, c.type_name))),
        })
        .collect()
}

/// Decodes one JSON value given the column's PostgreSQL type name.
pub fn decode_value(type_name: &str, v: &Json) -> Result<Value, String> {
    if v.is_null() {
        return Ok(Value::Null);
    }
    if v.as_str() == Some(UNAVAILABLE_VALUE) {
        return Ok(Value::UnchangedToast);
    }
    if let Some(elem) = type_name.strip_prefix('_') {
        return decode_array(elem, v);
    }
    let text = || {
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("expected a string, found {v}"))
    };
    Ok(match type_name {
        "bool" => Value::Bool(
            v.as_bool()
                .ok_or_else(|| format!("expected a boolean, found {v}"))?,
        ),
        "int2" | "int4" | "int8" | "oid" => Value::Int(
            v.as_i64()
                .ok_or_else(|| format!("expected an integer, found {v}"))?,
        ),
        "float4" | "float8" => Value::Float(decode_float(v)?),
        "numeric" => Value::Numeric(match v {
            Json::Number(n) => n.to_string(),
            _ => text()?,
        }),
        "bytea" => Value::Bytes(
            base64::engine::general_purpose::STANDARD
                .decode(text()?)
                .map_err(|e| format!("invalid base64: {e}"))?,
        ),
        "json" | "jsonb" => Value::Json(v.to_string()),
        "uuid" => Value::Uuid(text()?),
        "date" => Value::Temporal(TemporalKind::Date, text()?),
        "time" => Value::Temporal(TemporalKind::Time, text()?),
        "timetz" => Value::Temporal(TemporalKind::TimeTz, text()?),
        "timestamp" => Value::Temporal(TemporalKind::Timestamp, text()?),
        "timestamptz" => Value::Temporal(TemporalKind::TimestampTz, text()?),
        "interval" => Value::Temporal(TemporalKind::Interval, text()?),
        "text" | "varchar" | "bpchar" | "name" | "char" => match v {
            Json::String(s) => Value::Text(s.clone()),
            other => Value::Text(other.to_string()),
        },
        _ => match v {
            Json::Bool(b) => Value::Bool(*b),
            Json::Number(n) if n.is_i64() => Value::Int(n.as_i64().unwrap_or_default()),
            Json::Number(_) => Value::Float(decode_float(v)?),
            Json::Object(_) => Value::Json(v.to_string()),
            Json::String(s) => Value::Raw {
                type_name: type_name.to_owned(),
                text: s.clone(),
            },
            _ => Value::Raw {
                type_name: type_name.to_owned(),
                text: v.to_string(),
            },
        },
    })
}

fn decode_float(v: &Json) -> Result<f64, String> {
    match v {
        Json::Number(n) => n.as_f64().ok_or_else(|| format!("invalid number {n}")),
        Json::String(s) => match s.as_str() {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            _ => s
                .parse()
                .map_err(|_| format!("expected a number, found {s:?}")),
        },
        _ => Err(format!("expected a number, found {v}")),
    }
}

fn decode_array(elem_type: &str, v: &Json) -> Result<Value, String> {
    let mut dims = Vec::new();
    let mut probe = v;
    while let Json::Array(items) = probe {
        dims.push(items.len() as u32);
        match items.first() {
            Some(first) => probe = first,
            None => break,
        }
    }
    if dims.is_empty() {
        return Err(format!("expected an array, found {v}"));
    }
    if dims.first() == Some(&0) {
        dims.clear();
    }
    let mut elements = Vec::new();
    flatten(elem_type, v, dims.len(), &mut elements)?;
    Ok(array_from_nested(dims, elements))
}

fn flatten(elem_type: &str, v: &Json, depth: usize, out: &mut Vec<Value>) -> Result<(), String> {
    match (depth, v) {
        (0, v) => out.push(decode_value(elem_type, v)?),
        (d, Json::Array(items)) => {
            for item in items {
                flatten(elem_type, item, d - 1, out)?;
            }
        }
        _ => return Err("a multi-dimensional array must be rectangular".into()),
    }
    Ok(())
}

fn parse_source(source: &Map<String, Json>) -> Result<Source, ParseError> {
    let snapshot = match source.get("snapshot") {
        None | Some(Json::Null) => SnapshotMarker::False,
        Some(Json::Bool(b)) => {
            if *b {
                SnapshotMarker::True
            } else {
                SnapshotMarker::False
            }
        }
        Some(Json::String(s)) => SnapshotMarker::parse(s).ok_or_else(|| {
            shape(format!(
                "`source.snapshot` is `{s}`; expected true/false/first/last/incremental"
            ))
        })?,
        Some(other) => return Err(shape(format!("`source.snapshot` is {other}"))),
    };
    let lsn = match source.get("lsn") {
        None | Some(Json::Null) => crate::event::Lsn::ZERO,
        Some(Json::Number(n)) => n
            .as_u64()
            .map(crate::event::Lsn)
            .ok_or_else(|| shape("`source.lsn` must be a non-negative integer"))?,
        Some(Json::String(s)) => crate::event::Lsn::parse(s)
            .ok_or_else(|| shape(format!("`source.lsn` `{s}` is not an LSN")))?,
        Some(other) => return Err(shape(format!("`source.lsn` is {other}"))),
    };
    Ok(Source {
        db: source.get("db").and_then(Json::as_str).unwrap_or("").into(),
        lsn,
        xid: source.get("txId").and_then(Json::as_u64).map(|x| x as u32),
        commit_time_us: source.get("ts_ms").and_then(Json::as_i64).unwrap_or(0) * 1000,
        snapshot,
        last_commit_lsn: None,
    })
}

fn parse_message(value: &Map<String, Json>) -> Result<Option<LogicalMessage>, ParseError> {
    let Some(m) = value.get("message").and_then(Json::as_object) else {
        return Ok(None);
    };
    let content = m.get("content").and_then(Json::as_str).unwrap_or("");
    Ok(Some(LogicalMessage {
        transactional: m
            .get("transactional")
            .and_then(Json::as_bool)
            .unwrap_or(true),
        prefix: m
            .get("prefix")
            .and_then(Json::as_str)
            .unwrap_or("")
            .to_owned(),
        content: base64::engine::general_purpose::STANDARD
            .decode(content)
            .map_err(|e| shape(format!("`value.message.content` is not base64: {e}")))?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Array;
    use crate::event::Lsn;

    fn relation() -> Arc<Relation> {
        let col = |name: &str, t: &str, key: bool| Column {
            name: name.into(),
            type_oid: 0,
            type_name: t.into(),
            type_modifier: -1,
            key,
        };
        Arc::new(Relation {
            oid: 1,
            schema: "public".into(),
            table: "t".into(),
            columns: vec![
                col("id", "int4", true),
                col("data", "bytea", false),
                col("amount", "numeric", false),
                col("at", "timestamptz", false),
                col("doc", "jsonb", false),
                col("f", "float8", false),
                col("tags", "_text", false),
                col("grid", "_int4", false),
                col("big", "text", false),
                col("u", "uuid", false),
            ],
        })
    }

    fn event() -> Event {
        Event {
            op: Op::Update,
            relation: relation(),
            source: Source {
                db: "app".into(),
                lsn: Lsn(0x16B3748),
                xid: Some(42),
                commit_time_us: 1_700_000_000_123_000,
                snapshot: SnapshotMarker::False,
                last_commit_lsn: None,
            },
            before: None,
            after: Some(vec![
                Value::Int(7),
                Value::Bytes(vec![0xde, 0xad, 0xbe, 0xef]),
                Value::Numeric("12345678901234567890.000001".into()),
                Value::Temporal(
                    TemporalKind::TimestampTz,
                    "2024-01-02T03:04:05.123+00:00".into(),
                ),
                Value::Json(r#"{"a":[1,2]}"#.into()),
                Value::Float(f64::NAN),
                Value::Array(Array {
                    dims: vec![2],
                    lower_bounds: Vec::new(),
                    elements: vec![Value::Text("x".into()), Value::Null],
                }),
                Value::Array(Array {
                    dims: vec![2, 2],
                    lower_bounds: Vec::new(),
                    elements: vec![Value::Int(1), Value::Int(2), Value::Int(3), Value::Int(4)],
                }),
                Value::UnchangedToast,
                Value::Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
            ]),
            topic: None,
            message: None,
        }
    }

    #[test]
    fn writes_the_design_envelope() {
        let j = record_with(
            &event(),
            &EncodeOptions {
                name: Some("app".into()),
                include_types: false,
            },
        );
        assert_eq!(j["topic"], "app.public.t");
        assert_eq!(j["key"], serde_json::json!({"id": 7}));
        let after = &j["value"]["after"];
        assert_eq!(after["data"], "3q2+7w==");
        assert_eq!(after["amount"], "12345678901234567890.000001");
        assert_eq!(after["doc"], serde_json::json!({"a": [1, 2]}));
        assert_eq!(after["f"], "NaN");
        assert_eq!(after["tags"], serde_json::json!(["x", null]));
        assert_eq!(after["grid"], serde_json::json!([[1, 2], [3, 4]]));
        assert_eq!(after["big"], UNAVAILABLE_VALUE);
        assert_eq!(j["value"]["op"], "u");
        assert_eq!(j["value"]["source"]["lsn"], 0x16B3748);
        assert_eq!(j["value"]["source"]["ts_ms"], 1_700_000_000_123i64);
        assert_eq!(j["value"]["source"]["txId"], 42);
        assert_eq!(j["value"]["before"], Json::Null);
    }

    #[test]
    fn json_values_keep_their_digits_and_stay_on_one_line() {
        let line_with = |doc: &str| {
            let mut e = event();
            e.after.as_mut().unwrap()[4] = Value::Json(doc.into());
            let options = EncodeOptions {
                name: None,
                include_types: false,
            };
            serde_json::to_string(&Record::new(&e, &options, 0)).unwrap()
        };
        let exact = line_with(r#"{"n": 123456789012345678901234567890.5}"#);
        assert!(
            exact.contains("123456789012345678901234567890.5"),
            "{exact}"
        );
        let typed = line_with("{\n  \"a\": 1\n}");
        assert!(!typed.contains('\n'), "{typed}");
        let j: Json = serde_json::from_str(&typed).unwrap();
        assert_eq!(j["value"]["after"]["doc"], serde_json::json!({"a": 1}));
        let j: Json = serde_json::from_str(&line_with("not json")).unwrap();
        assert_eq!(j["value"]["after"]["doc"], "not json");
    }

    #[test]
    fn round_trips_with_types() {
        let original = event();
        let j = record_with(
            &original,
            &EncodeOptions {
                name: None,
                include_types: true,
            },
        );
        let back = parse_record(&j).unwrap();
        assert_eq!(back.op, original.op);
        assert_eq!(back.source, original.source);
        assert_eq!(
            back.relation.columns,
            original
                .relation
                .columns
                .iter()
                .map(|c| Column {
                    type_oid: 0,
                    ..c.clone()
                })
                .collect::<Vec<_>>()
        );
        let (a, b) = (back.after.unwrap(), original.after.unwrap());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            match (x, y) {
                (Value::Float(x), Value::Float(y)) if x.is_nan() && y.is_nan() => {}
                (Value::Json(x), Value::Json(y)) => assert_eq!(
                    serde_json::from_str::<Json>(x).unwrap(),
                    serde_json::from_str::<Json>(y).unwrap()
                ),
                _ => assert_eq!(x, y, "column {i}"),
            }
        }
    }

    #[test]
    fn bad_records_say_what_is_wrong() {
        let err = RecordParser::default()
            .parse_line("{\"value\": {}}")
            .unwrap_err();
        assert!(err.to_string().contains("value.op"), "{err}");
        let err = RecordParser::default().parse_line("nope").unwrap_err();
        assert!(err.to_string().contains("not valid JSON"), "{err}");
        let line = r#"{"key":null,"value":{"op":"c","after":{"b":"%%"},"source":{}},"types":{"b":"bytea"}}"#;
        let err = RecordParser::default().parse_line(line).unwrap_err();
        assert!(err.to_string().contains("base64"), "{err}");
    }

    #[test]
    fn records_of_one_table_share_a_relation() {
        let mut p = RecordParser::default();
        let line = r#"{"key":{"id":1},"value":{"op":"c","after":{"id":1},"source":{"schema":"s","table":"t"}}}"#;
        let a = p.parse_line(line).unwrap();
        let b = p.parse_line(line).unwrap();
        assert!(Arc::ptr_eq(&a.relation, &b.relation));
        assert!(a.relation.columns[0].key);
    }

    #[test]
    fn msgpack_keeps_bytes_binary() {
        let enc =
            super::super::Encoder::new(walflow_config::Encoding::Msgpack, EncodeOptions::default());
        let mut out = Vec::new();
        enc.encode_into(&event(), &mut out).unwrap();
        assert!(out.windows(4).any(|w| w == [0xde, 0xad, 0xbe, 0xef]));
        assert!(!out.windows(8).any(|w| w == b"3q2+7w=="));
    }
}
