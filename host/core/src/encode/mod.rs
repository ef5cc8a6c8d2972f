//! Encoders: turn an [`Event`] into the bytes a sink stores.
//!
//! Both encoders write the same Debezium-compatible structure (`topic`, `key`, `value` with
//! `before`/`after`/`source`/`op`/`ts_ms`), so existing consumers work unchanged; MessagePack just
//! packs it tighter and keeps bytea as binary instead of base64. Both stream straight from the
//! event into the output buffer — no intermediate tree: MessagePack through serde
//! ([`Record`]), JSON through a writer of its own (`json_writer`) that makes the same bytes
//! as serde_json would, at a fraction of the cost.

pub mod json;
mod json_text;
mod json_writer;
mod record;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::event::Event;
use walflow_config::Encoding;

pub use record::Record;

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
}

impl Encoder {
    /// An encoder for `encoding` with `options`.
    pub fn new(encoding: Encoding, options: EncodeOptions) -> Encoder {
        Encoder { encoding, options }
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
        match self.encoding {
            Encoding::Json => json_writer::write_record(event, &self.options, ts_ms, out),
            Encoding::Msgpack => {
                let record = Record::new(event, &self.options, ts_ms);
                let mut ser = rmp_serde::Serializer::new(&mut *out).with_struct_map();
                serde::Serialize::serialize(&record.binary(true), &mut ser)?
            }
        }
        Ok(())
    }

    /// The encoded key of `event` (the key object alone), for sinks that partition by key.
    pub fn encode_key(&self, event: &Event) -> Result<Vec<u8>, EncodeError> {
        let record = Record::new(event, &self.options, 0);
        let key = record.key();
        Ok(match self.encoding {
            Encoding::Json => serde_json::to_vec(&key)?,
            Encoding::Msgpack => rmp_serde::to_vec_named(&key.binary(true))?,
        })
    }

    /// The topic `event` goes to.
    pub fn topic(&self, event: &Event) -> Arc<str> {
        match &event.topic {
            Some(t) => t.clone(),
            None => default_topic(event, self.options.name.as_deref()).into(),
        }
    }
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
    use std::sync::Arc;

    use super::default_topic;
    use crate::event::{Event, LogicalMessage, Op, Relation, Source};

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
