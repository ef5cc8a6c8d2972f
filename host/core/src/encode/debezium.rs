//! The `debezium` envelope: exactly the records Debezium's PostgreSQL connector emits through
//! Kafka Connect's JSON converter with `schemas.enable=false`, so consumers written for Debezium
//! (sink connectors, stream jobs, compacted topics) work unchanged.
//!
//! It differs from walflow's own envelope in shape, not only in values:
//! - a delete is followed by a tombstone (the key with a `null` value) unless
//!   `tombstones.on.delete = false`, so a compacted topic forgets the row;
//! - an update that changes the primary key is a delete of the old key, its tombstone and a
//!   create of the new key, so a compacted topic does not keep the old key forever;
//! - truncates are skipped unless `skipped.operations` lets them through (Debezium's default);
//! - values take Debezium's representations: numerics as the unscaled value's bytes (or string,
//!   or double), temporal values as epoch numbers (or ISO strings), json as strings, `point` as
//!   Debezium's geometry struct, and so on, chosen by Debezium's own settings
//!   ([`DebeziumConfig`]).
//!
//! One event may therefore make zero to three records ([`DebeziumEncoder::records`]). Each is a
//! JSON line `{"topic", "key", "value"}`; the sink record remembers where its value is, so Kafka
//! gets the value alone with the key as the message key, and a tombstone as a null value.
//!
//! Known differences from Debezium 3.6.3 (README, "Events"): composite-typed columns (which
//! Debezium drops) are written as text, `provide.transaction.metadata` is not supported
//! (`transaction` is always `null`), and `source.sequence`'s first element is the last commit
//! walflow saw since it started (Debezium's survives restarts in its offsets).

use std::ops::Range;
use std::sync::Arc;

use chrono::{Datelike, NaiveDate, NaiveDateTime, Timelike};
use walflow_config::{BinaryHandlingMode, DebeziumConfig, DecimalHandlingMode, TimePrecisionMode};

use super::default_topic;
use super::json_writer::{integer, message_key, string};
use crate::event::{Column, Event, Op, SnapshotMarker, TemporalKind, Value};

/// The Debezium release whose records this envelope reproduces (written as `source.version`).
pub const DEBEZIUM_VERSION: &str = "3.6.3.Final";

/// One Debezium record: its topic, its key (`None` for a keyless table), and the whole
/// `{"topic","key","value"}` line with where the value sits in it.
#[derive(Debug, Clone)]
pub struct DebeziumRecord {
    /// The topic.
    pub topic: Arc<str>,
    /// The key as JSON, `None` when it is null.
    pub key: Option<Vec<u8>>,
    /// `{"topic":…,"key":…,"value":…}`.
    pub line: Vec<u8>,
    /// Where the value is in `line` (`null` for a tombstone).
    pub value: Range<usize>,
}

/// Encodes events as Debezium records.
#[derive(Debug, Clone)]
pub struct DebeziumEncoder {
    settings: DebeziumConfig,
    /// `topic.prefix`, else walflow's topic prefix; the database name when neither is set.
    name: Option<String>,
}

/// What one record of an event is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    /// The event as Debezium writes it.
    Whole,
    /// The delete half of a primary-key change.
    KeyChangeDelete,
    /// The create half of a primary-key change.
    KeyChangeCreate,
}

impl DebeziumEncoder {
    /// An encoder with Debezium's `settings`; `topic_prefix` is walflow's `[source]
    /// topic_prefix`, used when `topic.prefix` is not set.
    pub fn new(settings: DebeziumConfig, topic_prefix: Option<String>) -> DebeziumEncoder {
        let name = settings.topic_prefix.clone().or(topic_prefix);
        DebeziumEncoder { settings, name }
    }

    /// The settings in effect.
    pub fn settings(&self) -> &DebeziumConfig {
        &self.settings
    }

    /// The records of `event`, processed at `ts_ms`, in the order Debezium emits them.
    pub fn records(&self, event: &Event, ts_ms: i64) -> Vec<DebeziumRecord> {
        let mut out = Vec::new();
        let skip = |op: &str| self.settings.skips(op);
        match event.op {
            Op::Truncate if skip("t") => {}
            Op::Create if skip("c") => {}
            Op::Delete if skip("d") => {}
            Op::Update if skip("u") => {}
            Op::Update if key_changed(event) => {
                if !skip("d") {
                    out.push(self.record(event, Part::KeyChangeDelete, ts_ms));
                    if self.settings.tombstones_on_delete {
                        out.push(self.tombstone(event, event.before.as_deref()));
                    }
                }
                if !skip("c") {
                    out.push(self.record(event, Part::KeyChangeCreate, ts_ms));
                }
            }
            Op::Delete => {
                out.push(self.record(event, Part::Whole, ts_ms));
                if self.settings.tombstones_on_delete {
                    out.push(self.tombstone(event, event.before.as_deref()));
                }
            }
            _ => out.push(self.record(event, Part::Whole, ts_ms)),
        }
        out
    }

    /// The key of `event` alone, as JSON (`null` for a keyless table).
    pub fn key(&self, event: &Event) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_key(&mut out, event, event.key_row());
        out
    }

    /// The topic of `event`'s records: a namer's, else `{topic.prefix}.{schema}.{table}`.
    pub fn topic(&self, event: &Event) -> Arc<str> {
        match &event.topic {
            Some(t) => t.clone(),
            None => default_topic(event, Some(self.server_name(event))).into(),
        }
    }

    fn server_name<'a>(&'a self, event: &'a Event) -> &'a str {
        self.name.as_deref().unwrap_or(&event.source.db)
    }

    fn tombstone(&self, event: &Event, key_row: Option<&[Value]>) -> DebeziumRecord {
        self.framed(event, key_row, 64, |line| line.extend_from_slice(b"null"))
    }

    fn record(&self, event: &Event, part: Part, ts_ms: i64) -> DebeziumRecord {
        let key_row = match part {
            Part::KeyChangeDelete => event.before.as_deref(),
            _ => event.key_row(),
        };
        self.framed(event, key_row, 256, |line| {
            if event.op == Op::Message {
                self.write_message_value(line, event, ts_ms);
            } else {
                self.write_value(line, event, part, ts_ms);
            }
        })
    }

    /// One `{"topic","key","value"}` line: the key from `key_row`, the value by `value`.
    fn framed(
        &self,
        event: &Event,
        key_row: Option<&[Value]>,
        capacity: usize,
        value: impl FnOnce(&mut Vec<u8>),
    ) -> DebeziumRecord {
        let topic = self.topic(event);
        let mut line = Vec::with_capacity(capacity);
        line.extend_from_slice(b"{\"topic\":");
        string(&mut line, &topic);
        line.extend_from_slice(b",\"key\":");
        let key_start = line.len();
        self.write_key(&mut line, event, key_row);
        let key = key_of(&line[key_start..]);
        line.extend_from_slice(b",\"value\":");
        let start = line.len();
        value(&mut line);
        let value = start..line.len();
        line.push(b'}');
        DebeziumRecord {
            topic,
            key,
            line,
            value,
        }
    }

    fn write_key(&self, out: &mut Vec<u8>, event: &Event, row: Option<&[Value]>) {
        if event.op == Op::Message {
            message_key(out, event);
            return;
        }
        let relation = &event.relation;
        let (Some(row), true) = (row, relation.key_indices().next().is_some()) else {
            out.extend_from_slice(b"null");
            return;
        };
        if event.op == Op::Truncate {
            out.extend_from_slice(b"null");
            return;
        }
        let mut first = true;
        for i in relation.key_indices() {
            let column = &relation.columns[i];
            out.push(if first { b'{' } else { b',' });
            first = false;
            string(out, &column.name);
            out.push(b':');
            self.column_value(out, column, row.get(i).unwrap_or(&Value::Null));
        }
        out.push(b'}');
    }

    /// A row; an unchanged TOAST value is taken from `old` when that has it (under
    /// `REPLICA IDENTITY FULL` the old row carries it, and Debezium fills it in from there).
    fn write_row(
        &self,
        out: &mut Vec<u8>,
        event: &Event,
        row: Option<&[Value]>,
        old: Option<&[Value]>,
    ) {
        let Some(row) = row else {
            out.extend_from_slice(b"null");
            return;
        };
        let mut first = true;
        for (i, (column, value)) in event.relation.columns.iter().zip(row).enumerate() {
            out.push(if first { b'{' } else { b',' });
            first = false;
            string(out, &column.name);
            out.push(b':');
            let value = match (value, old.and_then(|o| o.get(i))) {
                // A key-only old row has nulls where the value was not sent.
                (Value::UnchangedToast, Some(known))
                    if !matches!(known, Value::Null | Value::UnchangedToast) =>
                {
                    known
                }
                _ => value,
            };
            self.column_value(out, column, value);
        }
        out.extend_from_slice(if first { b"{}" } else { b"}" });
    }

    fn write_value(&self, out: &mut Vec<u8>, event: &Event, part: Part, ts_ms: i64) {
        let (before, after, op) = match part {
            Part::Whole => (event.before.as_deref(), event.after.as_deref(), event.op),
            Part::KeyChangeDelete => (event.before.as_deref(), None, Op::Delete),
            Part::KeyChangeCreate => (None, event.after.as_deref(), Op::Create),
        };
        // Under the default replica identity an update carries no old row (Debezium's `before`
        // is then null); a delete's old row has the key columns and nulls.
        out.extend_from_slice(b"{\"before\":");
        self.write_row(out, event, before, None);
        out.extend_from_slice(b",\"after\":");
        self.write_row(out, event, after, event.before.as_deref());
        out.extend_from_slice(b",\"source\":");
        self.write_source(out, event, ts_ms);
        out.extend_from_slice(b",\"transaction\":null,\"op\":\"");
        out.extend_from_slice(op.code().as_bytes());
        out.push(b'"');
        processing_times(out, ts_ms);
        out.push(b'}');
    }

    fn write_message_value(&self, out: &mut Vec<u8>, event: &Event, ts_ms: i64) {
        out.extend_from_slice(b"{\"op\":\"m\",\"ts_ms\":");
        integer(out, ts_ms);
        out.extend_from_slice(b",\"source\":");
        self.write_source(out, event, ts_ms);
        out.extend_from_slice(b",\"transaction\":null,\"message\":{\"prefix\":");
        match &event.message {
            Some(m) => {
                string(out, &m.prefix);
                out.extend_from_slice(b",\"content\":");
                self.binary(out, &m.content);
            }
            None => out.extend_from_slice(b"null,\"content\":null"),
        }
        out.extend_from_slice(b"}}");
    }

    fn write_source(&self, out: &mut Vec<u8>, event: &Event, ts_ms: i64) {
        let src = &event.source;
        let commit_us = match src.commit_time_us {
            0 => ts_ms * 1000,
            us => us,
        };
        out.extend_from_slice(b"{\"version\":\"");
        out.extend_from_slice(DEBEZIUM_VERSION.as_bytes());
        out.extend_from_slice(b"\",\"connector\":\"postgresql\",\"name\":");
        string(out, self.server_name(event));
        out.extend_from_slice(b",\"ts_ms\":");
        integer(out, commit_us.div_euclid(1000));
        out.extend_from_slice(b",\"snapshot\":\"");
        out.extend_from_slice(snapshot_marker(src.snapshot).as_bytes());
        out.extend_from_slice(b"\",\"db\":");
        string(out, &src.db);
        // `sequence` is a JSON array in a string: the last commit's end LSN as the reader saw
        // it, and this change's.
        out.extend_from_slice(b",\"sequence\":\"[");
        match src.last_commit_lsn {
            Some(lsn) => {
                out.extend_from_slice(b"\\\"");
                integer(out, lsn.0);
                out.extend_from_slice(b"\\\"");
            }
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\\\"");
        integer(out, src.lsn.0);
        out.extend_from_slice(b"\\\"]\",\"ts_us\":");
        integer(out, commit_us);
        out.extend_from_slice(b",\"ts_ns\":");
        integer(out, i128::from(commit_us) * 1000);
        out.extend_from_slice(b",\"schema\":");
        string(out, &event.relation.schema);
        out.extend_from_slice(b",\"table\":");
        string(out, &event.relation.table);
        out.extend_from_slice(b",\"txId\":");
        match src.xid {
            Some(xid) => integer(out, xid),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"lsn\":");
        integer(out, src.lsn.0);
        out.extend_from_slice(b",\"xmin\":null,\"origin\":null,\"origin_lsn\":null}");
    }

    /// One column value in Debezium's representation for the column's type.
    fn column_value(&self, out: &mut Vec<u8>, column: &Column, value: &Value) {
        self.typed_value(out, &column.type_name, column.type_modifier, value);
    }

    fn typed_value(&self, out: &mut Vec<u8>, type_name: &str, typmod: i32, value: &Value) {
        match value {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
            Value::Int(i) => integer(out, *i),
            Value::Float(f) => float(out, *f),
            Value::Text(text) => self.text_value(out, type_name, typmod, text),
            Value::Bytes(bytes) => self.binary(out, bytes),
            Value::Numeric(text) => self.decimal(out, text, numeric_scale(typmod)),
            Value::Temporal(kind, text) => self.temporal(out, *kind, typmod, text),
            Value::Json(text) | Value::Uuid(text) => string(out, text),
            Value::Array(array) => {
                let element = type_name.strip_prefix('_').unwrap_or(type_name);
                out.push(b'[');
                if array.dims.len() > 1 {
                    // Debezium's pgoutput decoder does not read nested arrays: the outer
                    // dimension's elements are null.
                    for i in 0..array.dims[0] {
                        if i > 0 {
                            out.push(b',');
                        }
                        out.extend_from_slice(b"null");
                    }
                } else {
                    for (i, v) in array.elements.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        self.typed_value(out, element, typmod, v);
                    }
                }
                out.push(b']');
            }
            Value::UnchangedToast => {
                let placeholder = &self.settings.unavailable_value_placeholder;
                if type_name == "bytea" {
                    // What Debezium 3.6.3 writes for an unchanged bytea (seen in its output):
                    // the placeholder's bytes with `bytes`, its text with `hex`, and null with
                    // the base64 modes.
                    match self.settings.binary_handling_mode {
                        BinaryHandlingMode::Bytes => self.binary(out, placeholder.as_bytes()),
                        BinaryHandlingMode::Hex => string(out, placeholder),
                        BinaryHandlingMode::Base64 | BinaryHandlingMode::Base64UrlSafe => {
                            out.extend_from_slice(b"null")
                        }
                    }
                } else {
                    string(out, placeholder);
                }
            }
            Value::Raw { text, .. } => self.raw(out, type_name, text),
        }
    }

    fn text_value(&self, out: &mut Vec<u8>, type_name: &str, typmod: i32, text: &str) {
        match type_name {
            // Debezium has no converter for `name` under pgoutput.
            "name" => out.extend_from_slice(b"null"),
            "money" => {
                let plain: String = text
                    .chars()
                    .filter(|c| c.is_ascii_digit() || *c == '.' || *c == '-')
                    .collect();
                self.decimal(out, &plain, Some(2));
            }
            "bit" if typmod == 1 => {
                out.extend_from_slice(if text == "1" { b"true" } else { b"false" })
            }
            "bit" | "varbit" => {
                let bytes = bits_little_endian(text);
                base64_string(out, &bytes, base64::engine::general_purpose::STANDARD);
            }
            _ => string(out, text),
        }
    }

    fn raw(&self, out: &mut Vec<u8>, type_name: &str, text: &str) {
        if type_name == "point"
            && let Some((x, y)) = parse_point(text)
        {
            let mut wkb = Vec::with_capacity(21);
            wkb.push(1);
            wkb.extend_from_slice(&1u32.to_le_bytes());
            wkb.extend_from_slice(&x.to_le_bytes());
            wkb.extend_from_slice(&y.to_le_bytes());
            out.extend_from_slice(b"{\"x\":");
            java_double(out, x);
            out.extend_from_slice(b",\"y\":");
            java_double(out, y);
            out.extend_from_slice(b",\"wkb\":");
            base64_string(out, &wkb, base64::engine::general_purpose::STANDARD);
            out.extend_from_slice(b",\"srid\":null}");
            return;
        }
        string(out, text)
    }

    fn binary(&self, out: &mut Vec<u8>, bytes: &[u8]) {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE};
        match self.settings.binary_handling_mode {
            BinaryHandlingMode::Bytes | BinaryHandlingMode::Base64 => {
                base64_string(out, bytes, STANDARD)
            }
            BinaryHandlingMode::Base64UrlSafe => base64_string(out, bytes, URL_SAFE),
            BinaryHandlingMode::Hex => string(out, &hex::encode(bytes)),
        }
    }

    /// A decimal's text (`-12.50`, `NaN`) by `decimal.handling.mode`; `scale` is the column's
    /// declared scale (`None`: variable, Debezium's `VariableScaleDecimal` in precise mode).
    fn decimal(&self, out: &mut Vec<u8>, text: &str, scale: Option<u32>) {
        let special = match text {
            "NaN" => Some(("NAN", f64::NAN)),
            "Infinity" => Some(("POSITIVE_INFINITY", f64::INFINITY)),
            "-Infinity" => Some(("NEGATIVE_INFINITY", f64::NEG_INFINITY)),
            _ => None,
        };
        match self.settings.decimal_handling_mode {
            DecimalHandlingMode::String => match special {
                Some((word, _)) => string(out, word),
                None => string(out, text),
            },
            DecimalHandlingMode::Double => match special {
                Some((_, f)) => float(out, f),
                None => match text.parse::<f64>() {
                    Ok(f) => java_double(out, f),
                    Err(_) => out.extend_from_slice(b"null"),
                },
            },
            DecimalHandlingMode::Precise => {
                let Some((unscaled, text_scale)) = unscaled(text) else {
                    out.extend_from_slice(b"null");
                    return;
                };
                match scale {
                    Some(scale) => {
                        let unscaled = rescale(unscaled, text_scale, scale);
                        base64_string(
                            out,
                            &twos_complement(&unscaled),
                            base64::engine::general_purpose::STANDARD,
                        );
                    }
                    None => {
                        // Debezium strips the fraction's trailing zeros (`stripTrailingZeros`,
                        // then a negative scale back to 0).
                        let (negative, mut digits) = unscaled;
                        let mut text_scale = text_scale;
                        while text_scale > 0 && digits.last() == Some(&0) {
                            digits.pop();
                            text_scale -= 1;
                        }
                        let unscaled = (negative, digits);
                        out.extend_from_slice(b"{\"scale\":");
                        integer(out, text_scale);
                        out.extend_from_slice(b",\"value\":");
                        base64_string(
                            out,
                            &twos_complement(&unscaled),
                            base64::engine::general_purpose::STANDARD,
                        );
                        out.push(b'}');
                    }
                }
            }
        }
    }

    fn temporal(&self, out: &mut Vec<u8>, kind: TemporalKind, typmod: i32, text: &str) {
        let mode = self.settings.time_precision_mode;
        let precision = if typmod < 0 { 6 } else { typmod as u32 };
        match kind {
            TemporalKind::Date => {
                let Some(date) = parse_date(text) else {
                    return self.infinite_date(out, text);
                };
                match mode {
                    TimePrecisionMode::Isostring => {
                        string(out, &format!("{}Z", date.format("%Y-%m-%d")))
                    }
                    _ => integer(out, epoch_days(date)),
                }
            }
            TemporalKind::Time => {
                let Some(micros) = parse_clock(text) else {
                    return string(out, text);
                };
                match mode {
                    // A `LocalTime`: 24:00:00 is midnight.
                    TimePrecisionMode::Isostring => string(
                        out,
                        &format!("{}Z", format_clock(micros % 86_400_000_000, None)),
                    ),
                    TimePrecisionMode::Connect => integer(out, micros / 1000),
                    TimePrecisionMode::Adaptive if precision <= 3 => integer(out, micros / 1000),
                    _ => integer(out, micros),
                }
            }
            TemporalKind::TimeTz => match parse_timetz(text) {
                Some(micros) => {
                    let mut s = format_clock(micros, None);
                    s.push('Z');
                    string(out, &s)
                }
                None => string(out, text),
            },
            TemporalKind::Timestamp => {
                let Some(micros) = parse_timestamp(text) else {
                    return self.infinite_timestamp(out, text);
                };
                match mode {
                    TimePrecisionMode::Isostring => {
                        string(out, &format_timestamp(micros, None, "Z"))
                    }
                    TimePrecisionMode::Connect => integer(out, micros.div_euclid(1000)),
                    _ if precision <= 3 => integer(out, micros.div_euclid(1000)),
                    _ => integer(out, micros),
                }
            }
            TemporalKind::TimestampTz => match parse_timestamptz(text) {
                Some(micros) => string(out, &format_timestamp(micros, Some(precision), "Z")),
                None => string(out, text),
            },
            TemporalKind::Interval => match interval_micros(text) {
                Some(micros) => integer(out, micros),
                None => string(out, text),
            },
        }
    }

    /// `infinity`/`-infinity` dates as Debezium writes them (what its JDBC driver's
    /// conversion makes of PostgreSQL's sentinels).
    fn infinite_date(&self, out: &mut Vec<u8>, text: &str) {
        let (days, iso): (i64, &str) = match text {
            "infinity" | "-infinity" => (-2_147_472_692, "-5877611-06-21Z"),
            _ => return string(out, text),
        };
        match self.settings.time_precision_mode {
            TimePrecisionMode::Isostring => string(out, iso),
            _ => integer(out, days),
        }
    }

    fn infinite_timestamp(&self, out: &mut Vec<u8>, text: &str) {
        let (micros, iso): (i64, &str) = match text {
            "infinity" => (9_223_372_036_825_200_000, "+294247-01-10T04:00:25.2Z"),
            "-infinity" => (-9_223_372_036_832_400_000, "-290308-12-21T19:59:27.6Z"),
            _ => return string(out, text),
        };
        match self.settings.time_precision_mode {
            TimePrecisionMode::Isostring => string(out, iso),
            TimePrecisionMode::Connect => integer(out, micros.div_euclid(1000)),
            _ => integer(out, micros),
        }
    }
}

/// Whether an update changed the primary key (then Debezium emits delete + create).
fn key_changed(event: &Event) -> bool {
    let (Some(before), Some(after)) = (&event.before, &event.after) else {
        return false;
    };
    event.relation.key_indices().any(|i| {
        matches!((before.get(i), after.get(i)), (Some(b), Some(a)) if b != a && *b != Value::UnchangedToast)
    })
}

fn key_of(json: &[u8]) -> Option<Vec<u8>> {
    (json != b"null").then(|| json.to_vec())
}

fn snapshot_marker(marker: SnapshotMarker) -> &'static str {
    match marker {
        SnapshotMarker::Incremental => "incremental",
        other => other.as_str(),
    }
}

/// `value.ts_ms`, `ts_us`, `ts_ns`: when the record was made (walflow reads the clock once per
/// batch, in milliseconds).
fn processing_times(out: &mut Vec<u8>, ts_ms: i64) {
    out.extend_from_slice(b",\"ts_ms\":");
    integer(out, ts_ms);
    out.extend_from_slice(b",\"ts_us\":");
    integer(out, i128::from(ts_ms) * 1000);
    out.extend_from_slice(b",\"ts_ns\":");
    integer(out, i128::from(ts_ms) * 1_000_000);
}

/// A float as Jackson writes a Java double: NaN and infinities as strings.
fn float(out: &mut Vec<u8>, f: f64) {
    if f.is_nan() {
        string(out, "NaN")
    } else if f.is_infinite() {
        string(out, if f > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        java_double(out, f)
    }
}

/// A finite double as JSON (serde_json writes the shortest round-tripping form, as Java does;
/// integral values keep a `.0`).
fn java_double(out: &mut Vec<u8>, f: f64) {
    if serde_json::to_writer(&mut *out, &f).is_err() {
        out.extend_from_slice(b"null");
    }
}

fn base64_string(out: &mut Vec<u8>, bytes: &[u8], engine: impl base64::Engine) {
    out.push(b'"');
    out.extend_from_slice(engine.encode(bytes).as_bytes());
    out.push(b'"');
}

/// A bit string's bits as bytes, least significant first (Debezium's `Bits`).
fn bits_little_endian(text: &str) -> Vec<u8> {
    let bits = text.as_bytes();
    let mut bytes = vec![0u8; bits.len().div_ceil(8)];
    for (i, b) in bits.iter().rev().enumerate() {
        if *b == b'1' {
            bytes[i / 8] |= 1 << (i % 8);
        }
    }
    // java.util.BitSet drops trailing zero bytes.
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    bytes
}

fn parse_point(text: &str) -> Option<(f64, f64)> {
    let inner = text.strip_prefix('(')?.strip_suffix(')')?;
    let (x, y) = inner.split_once(',')?;
    Some((x.trim().parse().ok()?, y.trim().parse().ok()?))
}

/// The declared scale of a `numeric(p, s)` column, `None` when it has none.
fn numeric_scale(typmod: i32) -> Option<u32> {
    (typmod >= 4).then(|| ((typmod - 4) & 0xffff) as u32)
}

/// A decimal's digits as an unscaled magnitude in base 10 (sign, digits) and its scale.
fn unscaled(text: &str) -> Option<((bool, Vec<u8>), u32)> {
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let mut digits = Vec::with_capacity(int.len() + frac.len());
    for c in int.bytes().chain(frac.bytes()) {
        if !c.is_ascii_digit() {
            return None;
        }
        digits.push(c - b'0');
    }
    Some(((negative, digits), frac.len() as u32))
}

fn rescale((negative, mut digits): (bool, Vec<u8>), from: u32, to: u32) -> (bool, Vec<u8>) {
    if to >= from {
        digits.extend(std::iter::repeat_n(0, (to - from) as usize));
    } else {
        let keep = digits.len().saturating_sub((from - to) as usize);
        digits.truncate(keep);
    }
    (negative, digits)
}

/// A base-10 magnitude and sign as Java's `BigInteger.toByteArray()`: big-endian two's
/// complement in the fewest bytes.
fn twos_complement((negative, digits): &(bool, Vec<u8>)) -> Vec<u8> {
    // Base 10 → base 256, little-endian.
    let mut bytes: Vec<u8> = Vec::new();
    for &d in digits {
        let mut carry = u32::from(d);
        for b in bytes.iter_mut() {
            let v = u32::from(*b) * 10 + carry;
            *b = (v & 0xff) as u8;
            carry = v >> 8;
        }
        while carry > 0 {
            bytes.push((carry & 0xff) as u8);
            carry >>= 8;
        }
    }
    while bytes.last() == Some(&0) {
        bytes.pop();
    }
    let zero = bytes.is_empty();
    if *negative && !zero {
        // Two's complement: invert and add one.
        let mut carry = 1u16;
        for b in bytes.iter_mut() {
            let v = u16::from(!*b) + carry;
            *b = (v & 0xff) as u8;
            carry = v >> 8;
        }
        if bytes.last().is_some_and(|b| b & 0x80 == 0) {
            bytes.push(0xff);
        }
        // Fewest bytes: drop redundant leading 0xff.
        while bytes.len() > 1
            && bytes[bytes.len() - 1] == 0xff
            && bytes[bytes.len() - 2] & 0x80 != 0
        {
            bytes.pop();
        }
    } else if bytes.last().is_none_or(|b| b & 0x80 != 0) {
        bytes.push(0);
    }
    bytes.reverse();
    bytes
}

fn parse_date(text: &str) -> Option<NaiveDate> {
    NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()
}

fn epoch_days(date: NaiveDate) -> i64 {
    i64::from(date.num_days_from_ce()) - 719_163
}

/// `HH:MM:SS[.ffffff]` → microseconds since midnight (`24:00:00` included).
fn parse_clock(text: &str) -> Option<i64> {
    let (hms, frac) = text.split_once('.').unwrap_or((text, ""));
    let mut parts = hms.split(':');
    let h: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next()?.parse().ok()?;
    let s: i64 = parts.next()?.parse().ok()?;
    if parts.next().is_some() || frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut micros: i64 = 0;
    for (i, b) in frac.bytes().enumerate() {
        micros += i64::from(b - b'0') * 10i64.pow(5 - i as u32);
    }
    Some(((h * 60 + m) * 60 + s) * 1_000_000 + micros)
}

/// `+05:30`, `-11:00`, `Z` → seconds east of UTC.
fn parse_offset(text: &str) -> Option<i64> {
    if text == "Z" {
        return Some(0);
    }
    let sign = match text.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let mut parts = text[1..].split(':');
    let h: i64 = parts.next()?.parse().ok()?;
    let m: i64 = parts.next().map_or(Some(0), |m| m.parse().ok())?;
    let s: i64 = parts.next().map_or(Some(0), |s| s.parse().ok())?;
    Some(sign * ((h * 60 + m) * 60 + s))
}

fn parse_timetz(text: &str) -> Option<i64> {
    let split = text.rfind(['+', '-', 'Z'])?;
    let (clock, offset) = text.split_at(split);
    let micros = parse_clock(clock)? - parse_offset(offset)? * 1_000_000;
    Some(micros.rem_euclid(86_400_000_000))
}

/// `2024-01-02T03:04:05.5` → microseconds since the epoch.
fn parse_timestamp(text: &str) -> Option<i64> {
    let (date, clock) = text.split_once('T')?;
    let days = epoch_days(parse_date(date)?);
    Some(days * 86_400_000_000 + parse_clock(clock)?)
}

fn parse_timestamptz(text: &str) -> Option<i64> {
    let t = text.find('T')?;
    let split = t + text[t..].rfind(['+', '-', 'Z'])?;
    let (local, offset) = text.split_at(split);
    Some(parse_timestamp(local)? - parse_offset(offset)? * 1_000_000)
}

/// Microseconds since midnight as `HH:MM:SS` and a fraction: `digits` of them, or as few as
/// needed (none for whole seconds) when `None`.
fn format_clock(micros: i64, digits: Option<u32>) -> String {
    let secs = micros / 1_000_000;
    let frac = micros % 1_000_000;
    let mut s = format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    push_fraction(&mut s, frac, digits);
    s
}

fn push_fraction(s: &mut String, frac: i64, digits: Option<u32>) {
    let six = format!("{frac:06}");
    match digits {
        Some(0) => {}
        Some(d) => {
            s.push('.');
            s.push_str(&six[..(d.min(6) as usize)]);
        }
        None if frac == 0 => {}
        None => {
            s.push('.');
            s.push_str(six.trim_end_matches('0'));
        }
    }
}

fn format_timestamp(micros: i64, digits: Option<u32>, suffix: &str) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let Some(dt) = chrono::DateTime::from_timestamp(secs, 0).map(|d| d.naive_utc()) else {
        return String::new();
    };
    let mut s = format_date_time(dt);
    push_fraction(&mut s, frac, digits);
    s.push_str(suffix);
    s
}

fn format_date_time(dt: NaiveDateTime) -> String {
    format!(
        "{}T{:02}:{:02}:{:02}",
        dt.date().format("%Y-%m-%d"),
        dt.hour(),
        dt.minute(),
        dt.second()
    )
}

/// An ISO-8601 duration as PostgreSQL prints it (`P1Y2M3DT4H5M6.7S`, signs per field) →
/// Debezium's `MicroDuration`: months as 30.4375 days, computed in doubles as Debezium does.
fn interval_micros(text: &str) -> Option<i64> {
    let body = text.strip_prefix('P')?;
    let (date, time) = body.split_once('T').unwrap_or((body, ""));
    let (mut years, mut months, mut days, mut hours, mut minutes) = (0i64, 0i64, 0i64, 0i64, 0i64);
    let mut seconds = 0f64;
    let mut fields = |part: &str, is_time: bool| -> Option<()> {
        let mut number = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' {
                number.push(c);
                continue;
            }
            match (is_time, c) {
                (false, 'Y') => years = number.parse().ok()?,
                (false, 'M') => months = number.parse().ok()?,
                (false, 'W') => days += 7 * number.parse::<i64>().ok()?,
                (false, 'D') => days += number.parse::<i64>().ok()?,
                (true, 'H') => hours = number.parse().ok()?,
                (true, 'M') => minutes = number.parse().ok()?,
                (true, 'S') => {
                    // PGInterval's seconds: whole seconds plus microseconds / 1e6.
                    let (whole, frac) = number.split_once('.').unwrap_or((&number, ""));
                    let negative = whole.starts_with('-');
                    let whole: f64 = whole.parse::<i64>().ok()? as f64;
                    let mut micros = 0i64;
                    for (i, b) in frac.bytes().take(6).enumerate() {
                        micros += i64::from(b - b'0') * 10i64.pow(5 - i as u32);
                    }
                    let micros = if negative { -micros } else { micros };
                    seconds = whole + micros as f64 / 1_000_000.0;
                }
                _ => return None,
            }
            number.clear();
        }
        number.is_empty().then_some(())
    };
    fields(date, false)?;
    fields(time, true)?;
    let day_count = ((years * 12 + months) as f64) * 30.4375 + days as f64;
    let secs = ((day_count * 24.0 + hours as f64) * 60.0 + minutes as f64) * 60.0 + seconds;
    Some((secs * 1_000_000.0) as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    /// Values Debezium 3.6.3 wrote for these numerics (seen in its output).
    #[test]
    fn unscaled_values_are_java_big_integer_bytes() {
        let bytes = |text: &str, scale: Option<u32>| {
            let (u, s) = unscaled(text).unwrap();
            b64(&twos_complement(&match scale {
                Some(to) => rescale(u, s, to),
                None => u,
            }))
        };
        assert_eq!(bytes("12.34", Some(2)), "BNI=");
        assert_eq!(bytes("123.4", Some(2)), "MDQ=");
        assert_eq!(bytes("-1.5", Some(2)), "/2o=");
        assert_eq!(bytes("-0.0001", None), "/w==");
        assert_eq!(
            bytes("12345678901234567890.000000000001", None),
            "AJvTCjxkWUPc+dIHIAE="
        );
        assert_eq!(bytes("0", None), "AA==");
        assert_eq!(bytes("128", None), "AIA=");
        assert_eq!(bytes("-128", None), "gA==");
        assert_eq!(bytes("-129", None), "/38=");
    }

    #[test]
    fn temporal_values_are_debeziums() {
        assert_eq!(
            interval_micros("P1Y2M3DT4H5M6.7S"),
            Some(37_091_106_700_000)
        );
        assert_eq!(
            parse_timetz("10:00:00+05:30").map(|m| format_clock(m, None)),
            Some("04:30:00".into())
        );
        assert_eq!(
            parse_timestamptz("1960-03-04T05:06:07.891234-03:00").map(|m| format_timestamp(
                m,
                Some(6),
                "Z"
            )),
            Some("1960-03-04T08:06:07.891234Z".into())
        );
        assert_eq!(
            parse_timestamp("1960-03-04T05:06:07.891234"),
            Some(-310_157_632_108_766)
        );
        assert_eq!(epoch_days(parse_date("2024-02-29").unwrap()), 19782);
        assert_eq!(parse_clock("23:59:59.123456"), Some(86_399_123_456));
    }

    #[test]
    fn bits_are_little_endian_bytes() {
        assert_eq!(b64(&bits_little_endian("1010")), "Cg==");
        assert_eq!(b64(&bits_little_endian("101")), "BQ==");
    }
}
