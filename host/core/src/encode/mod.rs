//! Encoders: turn an [`Event`] into the bytes a sink stores.
//!
//! Both encoders write the same Debezium-compatible structure (`topic`, `key`, `value` with
//! `before`/`after`/`source`/`op`/`ts_ms`), so existing consumers work unchanged; MessagePack just
//! packs it tighter and keeps bytea as binary instead of base64. Both stream straight from the
//! event into the output buffer — no intermediate tree: MessagePack through serde
//! ([`Record`]), JSON through a writer of its own (`json_writer`) that makes the same bytes
//! as serde_json would, at a fraction of the cost.

pub mod debezium;
pub mod json;
mod json_text;
mod json_writer;
mod record;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::event::Event;
use walflow_config::Encoding;

pub use debezium::{DebeziumEncoder, DebeziumRecord};
pub use record::{DeadLetter, Record};

/// What an encoder needs besides the event itself.
#[derive(Debug, Clone, Default)]
pub struct EncodeOptions {
    /// The logical server name written to `source.name` and used as the default topic prefix
    /// (Debezium's `topic.prefix`); the database name when `None`.
    pub name: Option<String>,
    /// Add a top-level `types` object (column → PostgreSQL type name) so the record can be read
    /// back losslessly, e.g. by `walflow plugin run`.
    pub include_types: bool,
}

/// The default topic of an event: `{prefix}.{schema}.{table}`, or `{schema}.{table}` without a
/// prefix; logical decoding messages, which have no table, go to `{prefix}.message` (Debezium's
/// name). A topic-namer plugin overrides it by setting `Event::topic`.
pub fn default_topic(event: &Event, prefix: Option<&str>) -> String {
    let r = &event.relation;
    let name = match event.op {
        crate::event::Op::Message => "message".to_string(),
        _ => format!("{}.{}", r.schema, r.table),
    };
    match prefix {
        Some(p) if !p.is_empty() => format!("{p}.{name}"),
        _ => name,
    }
}

/// The topic a record names: the one a namer set, else [`default_topic`].
fn record_topic<'a>(event: &'a Event, options: &EncodeOptions) -> Cow<'a, str> {
    match &event.topic {
        Some(t) => Cow::Borrowed(t),
        None => Cow::Owned(default_topic(event, options.name.as_deref())),
    }
}

/// `source.name`: the configured logical server name, else the database name.
fn server_name<'a>(event: &'a Event, options: &'a EncodeOptions) -> &'a str {
    options.name.as_deref().unwrap_or(&event.source.db)
}

/// `source.ts_ms`: the commit time when the source knows it, else when it was processed.
fn source_ts_ms(event: &Event, processed_ms: i64) -> i64 {
    match event.source.commit_time_us {
        0 => processed_ms,
        us => us.div_euclid(1000),
    }
}

/// An encoder chosen by configuration.
#[derive(Debug, Clone)]
pub struct Encoder {
    encoding: Encoding,
    options: EncodeOptions,
    /// Set for `envelope = "debezium"`: records are Debezium's, zero to three per event.
    debezium: Option<Arc<DebeziumEncoder>>,
}

impl Encoder {
    /// An encoder for `encoding` with `options` (walflow's envelope).
    pub fn new(encoding: Encoding, options: EncodeOptions) -> Encoder {
        Encoder {
            encoding,
            options,
            debezium: None,
        }
    }

    /// An encoder of the `debezium` envelope with Debezium's `settings` (JSON only).
    pub fn debezium(settings: walflow_config::DebeziumConfig, options: EncodeOptions) -> Encoder {
        let debezium = DebeziumEncoder::new(settings, options.name.clone());
        Encoder {
            encoding: Encoding::Json,
            options,
            debezium: Some(Arc::new(debezium)),
        }
    }

    /// The encoder the configuration asks for: its `encoding`, `envelope` and `[debezium]`
    /// settings.
    pub fn from_config(config: &walflow_config::Config, options: EncodeOptions) -> Encoder {
        match config.envelope {
            walflow_config::Envelope::Walflow => Encoder::new(config.encoding, options),
            walflow_config::Envelope::Debezium => {
                Encoder::debezium(config.debezium.clone().unwrap_or_default(), options)
            }
        }
    }

    /// The Debezium envelope's encoder, when this encoder writes it: an event then makes
    /// zero or more records ([`DebeziumEncoder::records`]), not one.
    pub fn debezium_envelope(&self) -> Option<&DebeziumEncoder> {
        self.debezium.as_deref()
    }

    /// Appends the encoded record of `event` to `out` (no trailing newline).
    pub fn encode_into(&self, event: &Event, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.encode_at(event, now_ms(), out)
    }

    /// Like [`encode_into`](Self::encode_into), processed at `ts_ms` (a batch reads the clock
    /// once for all its records).
    pub fn encode_at(
        &self,
        event: &Event,
        ts_ms: i64,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        if let Some(debezium) = &self.debezium {
            // Every record of the event, one per line.
            for (i, record) in debezium.records(event, ts_ms).into_iter().enumerate() {
                if i > 0 {
                    out.push(b'\n');
                }
                out.extend_from_slice(&record.line);
            }
            return Ok(());
        }
        match self.encoding {
            Encoding::Json => {
                json_writer::write_record(event, &self.options, ts_ms, out);
                Ok(())
            }
            Encoding::Msgpack => {
                let record = Record::new(event, &self.options, ts_ms).binary(true);
                serialize_into(self.encoding, &record, out)
            }
        }
    }

    /// Appends the dead letter of `event` to `out`: its record in this encoding, as
    /// [`encode_into`](Self::encode_into) writes it, with a top-level `error` field saying why
    /// it was dead-lettered. On an error `out` is left as it was.
    pub fn encode_dead_letter(
        &self,
        event: &Event,
        error: &str,
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let record =
            Record::new(event, &self.options, now_ms()).binary(self.encoding == Encoding::Msgpack);
        serialize_into(self.encoding, &DeadLetter { record, error }, out)
    }

    /// The encoded key of `event` (the key object alone), for sinks that partition by key.
    pub fn encode_key(&self, event: &Event) -> Result<Vec<u8>, EncodeError> {
        if let Some(debezium) = &self.debezium {
            return Ok(debezium.key(event));
        }
        let record = Record::new(event, &self.options, 0);
        let key = record.key();
        Ok(match self.encoding {
            Encoding::Json => serde_json::to_vec(&key)?,
            Encoding::Msgpack => rmp_serde::to_vec_named(&key.binary(true))?,
        })
    }

    /// The topic `event` goes to.
    pub fn topic(&self, event: &Event) -> Arc<str> {
        if let Some(debezium) = &self.debezium {
            return debezium.topic(event);
        }
        match &event.topic {
            Some(t) => t.clone(),
            None => default_topic(event, self.options.name.as_deref()).into(),
        }
    }
}

/// Appends `value` to `out` in `encoding` through serde (MessagePack maps keep their field
/// names). On an error `out` is left as it was, never with half a record.
fn serialize_into<T: serde::Serialize>(
    encoding: Encoding,
    value: &T,
    out: &mut Vec<u8>,
) -> Result<(), EncodeError> {
    let start = out.len();
    let written = match encoding {
        Encoding::Json => serde_json::to_writer(&mut *out, value).map_err(EncodeError::from),
        Encoding::Msgpack => {
            let mut ser = rmp_serde::Serializer::new(&mut *out).with_struct_map();
            value.serialize(&mut ser).map_err(EncodeError::from)
        }
    };
    if written.is_err() {
        out.truncate(start);
    }
    written
}

/// Why an event could not be encoded (a bug or an invalid JSON value; never retryable).
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// JSON serialisation failed.
    #[error("cannot encode event as JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// MessagePack serialisation failed.
    #[error("cannot encode event as MessagePack: {0}")]
    Msgpack(#[from] rmp_serde::encode::Error),
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use crate::event::Lsn;
    use std::sync::Arc;

    use serde_json::Value as Json;

    use super::{EncodeOptions, Encoder, default_topic};
    use crate::event::{Column, Event, LogicalMessage, Op, Relation, Source, Value};
    use walflow_config::Encoding;

    fn event(op: Op, schema: &str, table: &str) -> Event {
        Event {
            op,
            relation: Arc::new(Relation {
                oid: 0,
                schema: schema.into(),
                table: table.into(),
                columns: Vec::new(),
            }),
            source: Source::default(),
            before: None,
            after: None,
            topic: None,
            message: (op == Op::Message).then(|| {
                Box::new(LogicalMessage {
                    transactional: false,
                    prefix: "p".into(),
                    content: Vec::new(),
                })
            }),
        }
    }

    /// A row of `public.orders (id int4 key, note text, data bytea)`.
    fn row_event() -> Event {
        let column = |name: &str, type_name: &str, key: bool| Column {
            name: name.into(),
            type_oid: 0,
            type_name: type_name.into(),
            type_modifier: -1,
            key,
        };
        let mut e = event(Op::Create, "public", "orders");
        Arc::get_mut(&mut e.relation).unwrap().columns = vec![
            column("id", "int4", true),
            column("note", "text", false),
            column("data", "bytea", false),
        ];
        e.after = Some(vec![
            Value::Int(7),
            Value::Text("a \"quoted\" note".into()),
            Value::Bytes(vec![0xde, 0xad]),
        ]);
        e.source.lsn = Lsn(0x16_0000_0028);
        e.source.db = "shop".into();
        e
    }

    fn encoder(encoding: Encoding) -> Encoder {
        Encoder::new(
            encoding,
            EncodeOptions {
                name: Some("app".into()),
                include_types: false,
            },
        )
    }

    /// `value.ts_ms`, the processing time, differs between two encodings of one event.
    fn without_processing_time(mut record: Json) -> Json {
        record["value"].as_object_mut().unwrap().remove("ts_ms");
        record
    }

    /// A JSON dead letter is the event's JSON record, topic prefix and all, plus `error`.
    #[test]
    fn a_json_dead_letter_is_the_record_with_its_error() {
        let e = row_event();
        let encoder = encoder(Encoding::Json);
        let mut record = Vec::new();
        encoder.encode_into(&e, &mut record).unwrap();
        let mut letter = b"already here".to_vec();
        encoder
            .encode_dead_letter(&e, "plugin trapped", &mut letter)
            .unwrap();
        let letter = letter.strip_prefix(b"already here").unwrap();
        let mut letter: Json = serde_json::from_slice(letter).unwrap();
        let record: Json = serde_json::from_slice(&record).unwrap();
        assert_eq!(letter["error"], "plugin trapped");
        assert_eq!(letter["topic"], "app.public.orders");
        assert_eq!(letter["value"]["source"]["name"], "app");
        letter.as_object_mut().unwrap().remove("error");
        assert_eq!(
            without_processing_time(letter),
            without_processing_time(record)
        );
    }

    /// With `encoding = "msgpack"` dead letters are MessagePack like every other record
    /// (they used to be JSON whatever the encoding), bytea staying binary.
    #[test]
    fn a_msgpack_dead_letter_is_msgpack() {
        let e = row_event();
        let encoder = encoder(Encoding::Msgpack);
        let mut letter = Vec::new();
        encoder
            .encode_dead_letter(&e, "rejected: 400", &mut letter)
            .unwrap();
        assert!(serde_json::from_slice::<Json>(&letter).is_err(), "not JSON");
        #[derive(serde::Deserialize)]
        struct Letter {
            topic: String,
            key: Json,
            value: LetterValue,
            error: String,
        }
        #[derive(serde::Deserialize)]
        struct LetterValue {
            after: Row,
            op: String,
        }
        #[derive(serde::Deserialize)]
        struct Row {
            id: i64,
            note: String,
            data: Binary,
        }
        /// A MessagePack bin (a string, base64 say, is refused).
        #[derive(Debug, PartialEq)]
        struct Binary(Vec<u8>);
        impl<'de> serde::Deserialize<'de> for Binary {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct Visitor;
                impl serde::de::Visitor<'_> for Visitor {
                    type Value = Binary;
                    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                        f.write_str("bytes")
                    }
                    fn visit_bytes<E>(self, v: &[u8]) -> Result<Binary, E> {
                        Ok(Binary(v.to_vec()))
                    }
                }
                d.deserialize_bytes(Visitor)
            }
        }
        let letter: Letter = rmp_serde::from_slice(&letter).unwrap();
        assert_eq!(letter.error, "rejected: 400");
        assert_eq!(letter.topic, "app.public.orders");
        assert_eq!(letter.key, serde_json::json!({"id": 7}));
        assert_eq!(letter.value.op, "c");
        assert_eq!(letter.value.after.id, 7);
        assert_eq!(letter.value.after.note, "a \"quoted\" note");
        assert_eq!(letter.value.after.data, Binary(vec![0xde, 0xad]));
    }

    /// A value that cannot be serialised is an error in either encoding, and what was in the
    /// buffer before stays as it was: no empty or half-written record.
    #[test]
    fn a_serialisation_failure_is_an_error_and_writes_nothing() {
        struct Unencodable;
        impl serde::Serialize for Unencodable {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::{Error, SerializeMap};
                let mut map = s.serialize_map(None)?;
                map.serialize_entry("topic", "t")?;
                Err(S::Error::custom("cannot encode this value"))
            }
        }
        for encoding in [Encoding::Json, Encoding::Msgpack] {
            let mut out = b"before".to_vec();
            let err = super::serialize_into(encoding, &Unencodable, &mut out).unwrap_err();
            assert!(
                err.to_string().contains("cannot encode this value"),
                "{err}"
            );
            assert_eq!(out, b"before", "{encoding:?}");
        }
    }

    #[test]
    fn tables_name_their_topic_and_messages_go_to_the_message_topic() {
        let insert = event(Op::Create, "public", "orders");
        assert_eq!(default_topic(&insert, Some("app")), "app.public.orders");
        assert_eq!(default_topic(&insert, None), "public.orders");
        let message = event(Op::Message, "", "");
        assert_eq!(default_topic(&message, Some("app")), "app.message");
        assert_eq!(default_topic(&message, Some("")), "message");
    }
}
