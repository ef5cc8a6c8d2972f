//! The JSON sink record written straight into bytes: the hot path of every JSON sink.
//!
//! [`Record`](super::Record) serialises through serde, which is general but pays for it on
//! every record: each of its ~40 keys and strings goes through the escaping loop, and every
//! map entry through a serializer call. Here the envelope's fixed parts are literals, keys and
//! strings that need no escaping (nearly all of them) are copied whole after one branch-free
//! scan, and integers, bytea and the key are written without intermediate allocations. The
//! output is byte for byte what serde_json makes of the same [`Record`] (the tests compare
//! them); rare shapes (floats, arrays, `json` values that are not plainly valid compact JSON)
//! are handed to serde_json to keep it so.
//! A relation's column keys, key columns, schema and table are worked out once and reused by
//! its records (see [`RelationParts`]), a run's shared topic and database name are escaped once
//! (see [`LastQuoted`]), and the envelope's fixed words (op codes, snapshot markers) are
//! written without a scan.

use std::cell::RefCell;
use std::sync::Arc;

use base64::Engine as _;

use super::record::{UNAVAILABLE_VALUE, ValRef};
use super::{EncodeOptions, record_topic, source_ts_ms};
use crate::event::{Event, Op, Relation, Value};

/// Appends the JSON sink record of `event`, processed at `ts_ms`, to `out`.
pub fn write_record(event: &Event, options: &EncodeOptions, ts_ms: i64, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"topic\":");
    match &event.topic {
        Some(topic) => LAST_TOPIC.with_borrow_mut(|last| last.write(out, topic)),
        None => string(out, &record_topic(event, options)),
    }
    RelationParts::with(&event.relation, |parts| {
        out.extend_from_slice(b",\"key\":");
        key(out, event, parts);
        out.extend_from_slice(b",\"value\":{\"before\":");
        row(out, parts, event.before.as_deref());
        out.extend_from_slice(b",\"after\":");
        row(out, parts, event.after.as_deref());
        out.extend_from_slice(b",\"source\":");
        source(out, event, parts, options, ts_ms);
    });
    out.extend_from_slice(b",\"op\":");
    literal(out, event.op.code());
    out.extend_from_slice(b",\"ts_ms\":");
    integer(out, ts_ms);
    if let Some(m) = &event.message {
        out.extend_from_slice(b",\"message\":{\"prefix\":");
        string(out, &m.prefix);
        out.extend_from_slice(b",\"content\":");
        base64(out, &m.content);
        out.extend_from_slice(b",\"transactional\":");
        out.extend_from_slice(if m.transactional { b"true" } else { b"false" });
        out.push(b'}');
    }
    out.push(b'}');
    if options.include_types && !event.relation.columns.is_empty() {
        out.extend_from_slice(b",\"types\":");
        let mut sep = Separator::new();
        for c in &event.relation.columns {
            sep.next(out);
            string(out, &c.name);
            out.push(b':');
            string(out, &c.type_name);
        }
        sep.close(out);
    }
    out.push(b'}');
}

/// The key object: replica-identity columns, `null` without any (and for truncates).
fn key(out: &mut Vec<u8>, event: &Event, parts: &RelationParts) {
    if event.op == Op::Message {
        message_key(out, event);
        return;
    }
    let row = event.key_row();
    let mut key = parts
        .key_columns
        .iter()
        .filter_map(|&i| Some((parts.key(i), row?.get(i)?)))
        .peekable();
    if key.peek().is_none() || event.op == Op::Truncate {
        out.extend_from_slice(b"null");
        return;
    }
    let mut sep = Separator::new();
    for (name, v) in key {
        sep.next(out);
        out.extend_from_slice(name);
        value(out, v);
    }
    sep.close(out);
}

fn row(out: &mut Vec<u8>, parts: &RelationParts, values: Option<&[Value]>) {
    let Some(values) = values else {
        out.extend_from_slice(b"null");
        return;
    };
    let mut sep = Separator::new();
    for (key, v) in parts.keys().zip(values) {
        sep.next(out);
        out.extend_from_slice(key);
        value(out, v);
    }
    sep.close(out);
}

/// What a relation contributes to each of its records, escaped once: every column's
/// `"name":`, which columns make the key, and the source's `,"schema":…,"table":…`. Records
/// of one relation come in runs, so each encoding thread keeps the last relation's parts; the
/// `Arc` it holds keeps the relation alive, so pointer equality cannot mistake a new relation
/// for it.
struct RelationParts {
    relation: Arc<Relation>,
    /// The keys, one after the other; `ends[i]` is where key `i` ends.
    keys: Vec<u8>,
    ends: Vec<usize>,
    /// The replica-identity columns, in column order.
    key_columns: Vec<usize>,
    schema_table: Vec<u8>,
}

thread_local! {
    static LAST_RELATION: RefCell<Option<RelationParts>> = const { RefCell::new(None) };
}

impl RelationParts {
    fn new(relation: &Arc<Relation>) -> RelationParts {
        let mut keys = Vec::new();
        let mut ends = Vec::with_capacity(relation.columns.len());
        for column in &relation.columns {
            string(&mut keys, &column.name);
            keys.push(b':');
            ends.push(keys.len());
        }
        let mut schema_table = b",\"schema\":".to_vec();
        string(&mut schema_table, &relation.schema);
        schema_table.extend_from_slice(b",\"table\":");
        string(&mut schema_table, &relation.table);
        RelationParts {
            relation: relation.clone(),
            keys,
            ends,
            key_columns: relation.key_indices().collect(),
            schema_table,
        }
    }

    /// Calls `f` with the parts of `relation`, made now unless they are the last ones made.
    fn with<R>(relation: &Arc<Relation>, f: impl FnOnce(&RelationParts) -> R) -> R {
        LAST_RELATION.with_borrow_mut(|last| {
            let parts = match last {
                Some(parts) if Arc::ptr_eq(&parts.relation, relation) => parts,
                _ => last.insert(RelationParts::new(relation)),
            };
            f(parts)
        })
    }

    /// Column `i`'s `"name":`.
    fn key(&self, i: usize) -> &[u8] {
        let start = i.checked_sub(1).map_or(0, |before| self.ends[before]);
        &self.keys[start..self.ends[i]]
    }

    /// Each column's `"name":`, in column order.
    fn keys(&self) -> impl Iterator<Item = &[u8]> {
        (0..self.ends.len()).map(|i| self.key(i))
    }
}

fn source(
    out: &mut Vec<u8>,
    event: &Event,
    parts: &RelationParts,
    options: &EncodeOptions,
    ts_ms: i64,
) {
    let src = &event.source;
    // The version is a plain semver string: no escaping to check for every record.
    out.extend_from_slice(
        concat!(
            "{\"version\":\"",
            env!("CARGO_PKG_VERSION"),
            "\",\"connector\":\"postgresql\",\"name\":"
        )
        .as_bytes(),
    );
    LAST_DB.with_borrow_mut(|db| {
        match &options.name {
            Some(name) => string(out, name),
            None => db.write(out, &src.db),
        }
        out.extend_from_slice(b",\"ts_ms\":");
        integer(out, source_ts_ms(event, ts_ms));
        out.extend_from_slice(b",\"snapshot\":");
        literal(out, src.snapshot.as_str());
        out.extend_from_slice(b",\"db\":");
        db.write(out, &src.db);
    });
    out.extend_from_slice(&parts.schema_table);
    out.extend_from_slice(b",\"txId\":");
    match src.xid {
        Some(xid) => integer(out, xid),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"lsn\":");
    integer(out, src.lsn.0);
    out.push(b'}');
}

fn value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::Int(i) => integer(out, *i),
        Value::Text(s) | Value::Numeric(s) | Value::Temporal(_, s) | Value::Uuid(s) => {
            string(out, s)
        }
        Value::Raw { text, .. } => string(out, text),
        Value::Bytes(b) => base64(out, b),
        Value::UnchangedToast => string(out, UNAVAILABLE_VALUE),
        Value::Json(text) if super::json_text::is_embeddable(text.as_bytes()) => {
            out.extend_from_slice(text.as_bytes())
        }
        Value::Float(_) | Value::Json(_) | Value::Array(_) => by_serde(out, v),
    }
}

/// What serde_json writes for a value (its float formatting, its JSON checks).
fn by_serde(out: &mut Vec<u8>, v: &Value) {
    if serde_json::to_writer(&mut *out, &ValRef(v, false)).is_err() {
        // ValRef's JSON form cannot fail to serialise into a vector.
        out.extend_from_slice(b"null");
    }
}

pub(super) fn integer(out: &mut Vec<u8>, i: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(i).as_bytes());
}

fn base64(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    let start = out.len();
    out.resize(start + bytes.len().div_ceil(3) * 4, 0);
    let written = base64::engine::general_purpose::STANDARD
        .encode_slice(bytes, &mut out[start..])
        .unwrap_or(0);
    out.truncate(start + written);
    out.push(b'"');
}

/// One of the envelope's fixed words (an op code, a snapshot marker) as a JSON string: known
/// to need no escaping, so not scanned for it.
fn literal(out: &mut Vec<u8>, word: &'static str) {
    debug_assert!(is_plain(word.as_bytes()), "{word:?} needs escaping");
    out.push(b'"');
    out.extend_from_slice(word.as_bytes());
    out.push(b'"');
}

/// The last shared string written as JSON (a topic, a database name) and its JSON form: the
/// events of a run share one `Arc` of each, so it is escaped once per run, not per record.
/// Holding the `Arc` keeps its address from being reused by another string.
#[derive(Default)]
struct LastQuoted {
    text: Option<Arc<str>>,
    json: Vec<u8>,
}

impl LastQuoted {
    fn write(&mut self, out: &mut Vec<u8>, text: &Arc<str>) {
        if !self
            .text
            .as_ref()
            .is_some_and(|last| Arc::ptr_eq(last, text))
        {
            self.json.clear();
            string(&mut self.json, text);
            self.text = Some(text.clone());
        }
        out.extend_from_slice(&self.json);
    }
}

thread_local! {
    static LAST_TOPIC: RefCell<LastQuoted> = RefCell::default();
    static LAST_DB: RefCell<LastQuoted> = RefCell::default();
}

/// A logical message's key, `{"prefix": …}`, as both envelopes write it.
pub(super) fn message_key(out: &mut Vec<u8>, event: &Event) {
    out.extend_from_slice(b"{\"prefix\":");
    match &event.message {
        Some(m) => string(out, &m.prefix),
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
}

/// A JSON string. Text with nothing to escape is copied whole; anything else goes through
/// serde_json's escaping.
pub(super) fn string(out: &mut Vec<u8>, s: &str) {
    if is_plain(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, s).is_err() {
        out.extend_from_slice(b"\"\"");
    }
}

/// Whether JSON needs no escape in `bytes`: no control character, quote or backslash. Eight
/// bytes at a time, the tail included: most strings of a record are short, so a byte loop's
/// per-byte branches are what shows.
fn is_plain(bytes: &[u8]) -> bool {
    let word = |eight: &[u8]| {
        let mut word = [0u8; 8];
        word.copy_from_slice(eight);
        u64::from_le_bytes(word)
    };
    let Some(last) = bytes.len().checked_sub(8) else {
        // Shorter than a word: padded with spaces, which need no escape.
        let mut padded = [b' '; 8];
        padded[..bytes.len()].copy_from_slice(bytes);
        return !needs_escape(u64::from_le_bytes(padded));
    };
    let mut words = bytes.chunks_exact(8);
    if words.any(|eight| needs_escape(word(eight))) {
        return false;
    }
    // The tail: the last eight bytes, overlapping words already checked.
    words.remainder().is_empty() || !needs_escape(word(&bytes[last..]))
}

/// Whether any byte of `word` is below 0x20, a quote or a backslash (the classic "has a byte
/// less than n" and "has a zero byte" bit tricks, exact for whether any byte matches).
fn needs_escape(word: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let control = word.wrapping_sub(ONES * 0x20) & !word & HIGH;
    let quote = has_zero(word ^ (ONES * u64::from(b'"')));
    let backslash = has_zero(word ^ (ONES * u64::from(b'\\')));
    (control | quote | backslash) != 0
}

/// Opens an object on the first entry and puts commas between the rest.
struct Separator(bool);

impl Separator {
    fn new() -> Separator {
        Separator(true)
    }

    fn next(&mut self, out: &mut Vec<u8>) {
        out.push(if self.0 { b'{' } else { b',' });
        self.0 = false;
    }

    fn close(self, out: &mut Vec<u8>) {
        out.extend_from_slice(if self.0 { b"{}" } else { b"}" });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::Record;
    use super::*;
    use crate::event::Lsn;
    use crate::event::{
        Array, Column, LogicalMessage, Relation, SnapshotMarker, Source, TemporalKind,
    };

    /// The same record through serde.
    fn by_record(event: &Event, options: &EncodeOptions, ts_ms: i64) -> Vec<u8> {
        serde_json::to_vec(&Record::new(event, options, ts_ms)).expect("serialisable")
    }

    fn relation(keys: &[bool]) -> Arc<Relation> {
        let names = [
            "id", "na\"me", "amount", "payload", "at", "doc", "f", "arr", "u", "x",
        ];
        Arc::new(Relation {
            oid: 1,
            schema: "public".into(),
            table: "t\u{e9}".into(),
            columns: names
                .iter()
                .enumerate()
                .map(|(i, name)| Column {
                    name: (*name).into(),
                    type_oid: 0,
                    type_name: format!("type{i}"),
                    type_modifier: -1,
                    key: keys.get(i).copied().unwrap_or(false),
                })
                .collect(),
        })
    }

    fn row(seed: i64) -> Vec<Value> {
        vec![
            Value::Int(seed),
            Value::Text(format!("line\none \"{seed}\"\t\\ \u{1f} \u{7f} \u{263a}")),
            Value::Numeric("-12345678901234567890.000001".into()),
            Value::Bytes((0..seed.rem_euclid(7) as u8).collect()),
            Value::Temporal(
                TemporalKind::TimestampTz,
                "2024-01-02T03:04:05+00:00".into(),
            ),
            Value::Json(r#"{"a": [1, 2.50, "x"]}"#.into()),
            Value::Float([1.0, -0.0, 1e300, f64::NAN, f64::INFINITY][seed.rem_euclid(5) as usize]),
            Value::Array(Array {
                dims: vec![2, 1],
                lower_bounds: Vec::new(),
                elements: vec![Value::Bytes(vec![1]), Value::Null],
            }),
            Value::Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
            [
                Value::Null,
                Value::Bool(true),
                Value::UnchangedToast,
                Value::Json("{\n\"a\": 1}".into()),
                Value::Json("not json".into()),
                Value::Raw {
                    type_name: "point".into(),
                    text: "(1,2)".into(),
                },
            ][seed.rem_euclid(6) as usize]
                .clone(),
        ]
    }

    fn events() -> Vec<Event> {
        let mut all = Vec::new();
        for (seed, op) in [Op::Create, Op::Update, Op::Delete, Op::Read, Op::Truncate]
            .into_iter()
            .enumerate()
        {
            let seed = seed as i64;
            for keys in [&[][..], &[true], &[true, true, false, true]] {
                all.push(Event {
                    op,
                    relation: relation(keys),
                    source: Source {
                        db: "app".into(),
                        lsn: Lsn(0x16B3748 + seed as u64),
                        xid: (seed % 2 == 0).then_some(42),
                        commit_time_us: if seed == 3 { 0 } else { -1_700_000_000_123_456 },
                        snapshot: [SnapshotMarker::False, SnapshotMarker::First][seed as usize % 2],
                        last_commit_lsn: None,
                    },
                    before: (op != Op::Create).then(|| row(seed + 1)),
                    after: matches!(op, Op::Create | Op::Update | Op::Read).then(|| row(seed)),
                    topic: (seed % 2 == 1).then(|| format!("app.t{seed}").into()),
                    message: None,
                });
            }
        }
        all.push(Event {
            op: Op::Message,
            relation: Arc::new(Relation {
                oid: 0,
                schema: String::new(),
                table: String::new(),
                columns: Vec::new(),
            }),
            source: Source::default(),
            before: None,
            after: None,
            topic: None,
            message: Some(Box::new(LogicalMessage {
                transactional: true,
                prefix: "audit\\1".into(),
                content: b"\x00hello".to_vec(),
            })),
        });
        all
    }

    #[test]
    fn writes_what_serde_writes_for_the_same_record() {
        let options = [
            EncodeOptions::default(),
            EncodeOptions {
                name: Some("srv \"1\"".into()),
                include_types: true,
            },
        ];
        for event in events() {
            for options in &options {
                let mut ours = Vec::new();
                write_record(&event, options, 1_700_000_000_999, &mut ours);
                let theirs = by_record(&event, options, 1_700_000_000_999);
                assert_eq!(
                    String::from_utf8_lossy(&ours),
                    String::from_utf8_lossy(&theirs),
                    "{event:?}"
                );
            }
        }
    }

    #[test]
    fn relations_take_turns_without_lending_each_other_their_names() {
        let table = |schema: &str, table: &str, columns: &[&str]| {
            Arc::new(Relation {
                oid: 1,
                schema: schema.into(),
                table: table.into(),
                columns: columns
                    .iter()
                    .map(|name| Column {
                        name: (*name).into(),
                        type_oid: 0,
                        type_name: "int8".into(),
                        type_modifier: -1,
                        key: *name == "id",
                    })
                    .collect(),
            })
        };
        let a = table("public", "orders", &["id", "total"]);
        let b = table("sales", "line \"items\"", &["id", "sku", "qty"]);
        let options = EncodeOptions::default();
        for relation in [&a, &a, &b, &a, &b, &b, &a] {
            let event = Event {
                op: Op::Create,
                relation: relation.clone(),
                source: Source::default(),
                before: None,
                after: Some((0..relation.columns.len() as i64).map(Value::Int).collect()),
                topic: None,
                message: None,
            };
            writes_like_serde(&event, &options);
        }
    }

    /// Asserts that `event`'s record is serde's, byte for byte.
    fn writes_like_serde(event: &Event, options: &EncodeOptions) {
        let mut ours = Vec::new();
        write_record(event, options, 7, &mut ours);
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&by_record(event, options, 7)),
        );
    }

    #[test]
    fn shared_topics_and_databases_take_turns_without_mixing() {
        let topics: [Arc<str>; 2] = ["app.public.t".into(), "app.\"quoted\"\n".into()];
        let dbs: [Arc<str>; 2] = ["app".into(), "d\\b".into()];
        let relation = relation(&[false, true]);
        let options = EncodeOptions::default();
        for (topic, db) in [(0, 0), (0, 0), (1, 0), (1, 1), (0, 1), (1, 1), (0, 0)] {
            let event = Event {
                op: Op::Read,
                relation: relation.clone(),
                source: Source {
                    db: dbs[db].clone(),
                    ..Source::default()
                },
                before: None,
                after: Some(row(3)),
                topic: Some(topics[topic].clone()),
                message: None,
            };
            writes_like_serde(&event, &options);
        }
    }

    #[test]
    fn each_byte_that_needs_an_escape_is_found_at_every_position() {
        for needy in (0u8..0x20).chain([b'"', b'\\']) {
            for len in 1..=20 {
                for at in 0..len {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = needy;
                    assert!(!is_plain(&bytes), "{needy:#x} at {at} of {len}");
                }
            }
        }
        for plain in [
            &b""[..],
            b"abc",
            b"\x7f\x20~!#$",
            "caf\u{e9} \u{263a} 0123456789".as_bytes(),
        ] {
            assert!(is_plain(plain));
        }
    }

    proptest::proptest! {
        #[test]
        fn any_text_is_escaped_as_serde_escapes_it(text in "\\PC*|[\\x00-\\x7f]{0,40}") {
            let mut ours = Vec::new();
            string(&mut ours, &text);
            proptest::prop_assert_eq!(ours, serde_json::to_vec(&text).unwrap());
        }
    }
}
