//! `binary-repr`: re-represents every `bytea` value (the seed's "Represent binary data as").
//!
//! Config: `{"mode": "base64" | "base64url" | "hex" | "bytes"}`. `bytes` leaves values binary
//! (the encoder decides); the others turn them into text. Elements of `bytea[]` arrays too.
//! Only columns whose type can hold bytes are looked at (see `may_hold_bytes`): the plugin
//! asks the host for just those (`only_columns`), so the other values of a row are never even
//! sent; bytes an earlier plugin put in, say, a `text` column are left as they are.

use std::cell::RefCell;
use std::sync::OnceLock;

use base64::Engine as _;
use serde::Deserialize;
use walflow_sdk::{Array, Event, RelationId, Value};

#[derive(Deserialize, Clone, Copy, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Base64,
    Base64url,
    Hex,
    Bytes,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    mode: Mode,
}

static MODE: OnceLock<Mode> = OnceLock::new();

#[walflow_sdk::init]
fn setup(config: &str) -> Result<(), String> {
    let parsed: Config = serde_json::from_str(config).map_err(|e| {
        format!("binary-repr config: {e} (expected {{\"mode\": \"base64\" | \"base64url\" | \"hex\" | \"bytes\"}})")
    })?;
    if parsed.mode != Mode::Bytes {
        // The host then sends no other column at all.
        walflow_sdk::only_columns(|_, column| may_hold_bytes(column.type_oid));
    }
    MODE.set(parsed.mode)
        .map_err(|_| "init called twice".to_string())
}

/// The columns of the last table seen that can hold bytes: batches are runs of one table, so
/// the column types are looked at once per table and batch, not once per event.
struct ByteColumns {
    table: RelationId,
    columns: Vec<usize>,
}

thread_local! {
    static BYTE_COLUMNS: RefCell<Option<ByteColumns>> = const { RefCell::new(None) };
}

#[walflow_sdk::transform]
fn represent(event: &mut Event) -> Result<(), String> {
    let mode = *MODE.get().unwrap_or(&Mode::Bytes);
    if mode == Mode::Bytes {
        return Ok(());
    }
    BYTE_COLUMNS.with_borrow_mut(|cached| {
        let table = event.relation_id();
        let columns = match cached {
            Some(c) if c.table == table => &c.columns,
            _ => {
                let columns = byte_columns(event);
                &cached.insert(ByteColumns { table, columns }).columns
            }
        };
        for &i in columns {
            event.map_column(i, |value| convert(value, mode))?;
        }
        Ok(())
    })
}

/// The positions of the event's columns that can hold bytes.
fn byte_columns(event: &Event) -> Vec<usize> {
    let columns = event.columns().iter().enumerate();
    columns
        .filter(|(_, column)| may_hold_bytes(column.type_oid))
        .map(|(i, _)| i)
        .collect()
}

/// Whether a column of this type can hold `bytea` values: `bytea`, `bytea[]`, and any type
/// not built into PostgreSQL (a domain, say) or not known (oid 0). Other columns' values are
/// never even decoded.
fn may_hold_bytes(type_oid: u32) -> bool {
    const BYTEA: u32 = 17;
    const BYTEA_ARRAY: u32 = 1001;
    /// PostgreSQL's `FirstNormalObjectId`: oids below it are built in.
    const FIRST_USER_OID: u32 = 16384;
    matches!(type_oid, BYTEA | BYTEA_ARRAY | 0) || type_oid >= FIRST_USER_OID
}

fn convert(value: &Value<'_>, mode: Mode) -> Option<Value<'static>> {
    let text = |b: &[u8]| Value::Text(encode(b, mode).into());
    match value {
        Value::Bytes(b) => Some(text(b)),
        Value::Array(a) if a.elements.iter().any(|e| matches!(e, Value::Bytes(_))) => {
            let elements = a
                .elements
                .iter()
                .map(|e| match e {
                    Value::Bytes(b) => text(b),
                    other => other.clone().into_owned(),
                })
                .collect();
            Some(Value::Array(Array {
                dims: a.dims.clone(),
                elements,
            }))
        }
        _ => None,
    }
}

fn encode(bytes: &[u8], mode: Mode) -> String {
    match mode {
        Mode::Base64 | Mode::Bytes => base64::engine::general_purpose::STANDARD.encode(bytes),
        Mode::Base64url => base64::engine::general_purpose::URL_SAFE.encode(bytes),
        Mode::Hex => {
            let mut hex = vec![0u8; bytes.len() * 2];
            for (pair, &b) in hex.chunks_exact_mut(2).zip(bytes) {
                pair.copy_from_slice(&HEX_PAIRS[b as usize]);
            }
            // Hex digits are ASCII, so this never takes the fallback.
            String::from_utf8(hex).unwrap_or_default()
        }
    }
}

/// Each byte's two lowercase hex digits: one lookup per byte instead of two nibbles.
static HEX_PAIRS: [[u8; 2]; 256] = {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut pairs = [[0u8; 2]; 256];
    let mut b = 0;
    while b < 256 {
        pairs[b] = [DIGITS[b >> 4], DIGITS[b & 15]];
        b += 1;
    }
    pairs
};
