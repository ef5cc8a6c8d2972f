//! One value of a base type, from its text output format.
//!
//! Each parser accepts exactly what PostgreSQL's output function prints and returns `None`
//! otherwise, so [`decode`] can fall back to [`Value::Raw`] instead of guessing.

use super::{ScalarKind, raw, temporal};
use crate::event::{TemporalKind, Value};

/// Decodes `text` as a value of `kind`; `type_name` names it in the raw fallback.
pub fn decode(kind: ScalarKind, type_name: &str, text: &str) -> Value {
    let parsed = match kind {
        ScalarKind::Bool => parse_bool(text).map(Value::Bool),
        ScalarKind::Int => text.parse::<i64>().ok().map(Value::Int),
        ScalarKind::Float => parse_float(text).map(Value::Float),
        ScalarKind::Numeric => is_numeric(text).then(|| Value::Numeric(text.to_owned())),
        ScalarKind::Text => Some(Value::Text(text.to_owned())),
        ScalarKind::Bytea => parse_bytea(text).map(Value::Bytes),
        ScalarKind::Uuid => parse_uuid(text).map(Value::Uuid),
        ScalarKind::Json => Some(Value::Json(text.to_owned())),
        ScalarKind::Date => temporal::date(text).map(|s| Value::Temporal(TemporalKind::Date, s)),
        ScalarKind::Time => temporal::time(text).map(|s| Value::Temporal(TemporalKind::Time, s)),
        ScalarKind::TimeTz => {
            temporal::timetz(text).map(|s| Value::Temporal(TemporalKind::TimeTz, s))
        }
        ScalarKind::Timestamp => {
            temporal::timestamp(text).map(|s| Value::Temporal(TemporalKind::Timestamp, s))
        }
        ScalarKind::TimestampTz => {
            temporal::timestamptz(text).map(|s| Value::Temporal(TemporalKind::TimestampTz, s))
        }
        ScalarKind::Interval => {
            temporal::interval(text).map(|s| Value::Temporal(TemporalKind::Interval, s))
        }
        ScalarKind::Raw => None,
    };
    parsed.unwrap_or_else(|| raw(type_name, text))
}

/// `t`/`f` as `boolout` prints them (the long forms too, for hand-written input).
pub fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "t" | "true" => Some(true),
        "f" | "false" => Some(false),
        _ => None,
    }
}

/// A float as `float8out` prints it, including `NaN`, `Infinity` and `-Infinity`.
pub fn parse_float(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "Infinity" => Some(f64::INFINITY),
        "-Infinity" => Some(f64::NEG_INFINITY),
        // Rust also accepts "inf", "nan" and friends; PostgreSQL never prints them, and
        // accepting them would hide a corrupted value.
        _ if text
            .bytes()
            .any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E') =>
        {
            None
        }
        _ => text.parse().ok(),
    }
}

/// Whether `text` is what `numeric_out` prints: `NaN`, `Infinity`, `-Infinity`, or an
/// optionally negative decimal with an optional fraction (never an exponent).
pub fn is_numeric(text: &str) -> bool {
    if matches!(text, "NaN" | "Infinity" | "-Infinity") {
        return true;
    }
    let digits = text.as_bytes();
    let digits = digits.strip_prefix(b"-").unwrap_or(digits);
    // One pass: digits, then at most one point followed by at least one digit.
    let (mut int, mut frac) = (0usize, None::<usize>);
    for &b in digits {
        match (b, frac.as_mut()) {
            (b'0'..=b'9', None) => int += 1,
            (b'0'..=b'9', Some(f)) => *f += 1,
            (b'.', None) => frac = Some(0),
            _ => return false,
        }
    }
    int > 0 && frac != Some(0)
}

/// `bytea` in hex (`\x0aff`) or escape format (`abc\\\001`).
pub fn parse_bytea(text: &str) -> Option<Vec<u8>> {
    match text.strip_prefix("\\x") {
        Some(hex_digits) => decode_hex(hex_digits.as_bytes()),
        None => parse_bytea_escape(text.as_bytes()),
    }
}

/// Hex digits (either case) as bytes; `None` for an odd count or a non-digit. A table lookup
/// per digit: every `bytea` of a snapshot or a change passes through here.
pub fn decode_hex(digits: &[u8]) -> Option<Vec<u8>> {
    const INVALID: u8 = 0xff;
    const TABLE: [u8; 256] = {
        let mut table = [INVALID; 256];
        let mut i = 0;
        while i < 10 {
            table[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            table[b'a' as usize + i] = 10 + i as u8;
            table[b'A' as usize + i] = 10 + i as u8;
            i += 1;
        }
        table
    };
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    let mut out = Vec::with_capacity(digits.len() / 2);
    for pair in digits.chunks_exact(2) {
        let (high, low) = (TABLE[pair[0] as usize], TABLE[pair[1] as usize]);
        if high == INVALID || low == INVALID {
            return None;
        }
        out.push((high << 4) | low);
    }
    Some(out)
}

fn parse_bytea_escape(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while let Some(&b) = text.get(i) {
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        match text.get(i + 1..i + 4) {
            _ if text.get(i + 1) == Some(&b'\\') => {
                out.push(b'\\');
                i += 2;
            }
            Some(&[a, b, c])
                if (b'0'..=b'3').contains(&a)
                    && (b'0'..=b'7').contains(&b)
                    && (b'0'..=b'7').contains(&c) =>
            {
                out.push(((a - b'0') << 6) | ((b - b'0') << 3) | (c - b'0'));
                i += 4;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// A uuid in canonical `8-4-4-4-12` form, returned lowercase.
pub fn parse_uuid(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    if bytes.len() != 36 {
        return None;
    }
    let well_formed = bytes.iter().enumerate().all(|(i, b)| match i {
        8 | 13 | 18 | 23 => *b == b'-',
        _ => b.is_ascii_hexdigit(),
    });
    well_formed.then(|| text.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(kind: ScalarKind, text: &str) -> Value {
        decode(kind, "t", text)
    }

    #[test]
    fn bools() {
        assert_eq!(d(ScalarKind::Bool, "t"), Value::Bool(true));
        assert_eq!(d(ScalarKind::Bool, "f"), Value::Bool(false));
        assert_eq!(d(ScalarKind::Bool, "x"), raw("t", "x"));
    }

    #[test]
    fn ints_cover_the_full_int8_range() {
        assert_eq!(d(ScalarKind::Int, "-32768"), Value::Int(-32768));
        assert_eq!(
            d(ScalarKind::Int, "9223372036854775807"),
            Value::Int(i64::MAX)
        );
        assert_eq!(
            d(ScalarKind::Int, "-9223372036854775808"),
            Value::Int(i64::MIN)
        );
        assert_eq!(d(ScalarKind::Int, "4294967295"), Value::Int(4_294_967_295));
        assert_eq!(d(ScalarKind::Int, "1.5"), raw("t", "1.5"));
        assert_eq!(d(ScalarKind::Int, ""), raw("t", ""));
    }

    #[test]
    fn floats_include_specials_and_exponents() {
        assert_eq!(d(ScalarKind::Float, "1.5"), Value::Float(1.5));
        assert_eq!(d(ScalarKind::Float, "-1e-300"), Value::Float(-1e-300));
        assert_eq!(
            d(ScalarKind::Float, "1.7976931348623157e+308"),
            Value::Float(f64::MAX)
        );
        assert_eq!(
            d(ScalarKind::Float, "Infinity"),
            Value::Float(f64::INFINITY)
        );
        assert_eq!(
            d(ScalarKind::Float, "-Infinity"),
            Value::Float(f64::NEG_INFINITY)
        );
        match d(ScalarKind::Float, "NaN") {
            Value::Float(f) => assert!(f.is_nan()),
            other => panic!("NaN decoded as {other:?}"),
        }
        assert_eq!(d(ScalarKind::Float, "inf"), raw("t", "inf"));
        assert_eq!(d(ScalarKind::Float, "nan"), raw("t", "nan"));
    }

    #[test]
    fn numerics_stay_exact() {
        let long = "123456789012345678901234567890.000000000000000000001";
        assert_eq!(d(ScalarKind::Numeric, long), Value::Numeric(long.into()));
        assert_eq!(
            d(ScalarKind::Numeric, "-0.5"),
            Value::Numeric("-0.5".into())
        );
        assert_eq!(d(ScalarKind::Numeric, "NaN"), Value::Numeric("NaN".into()));
        assert_eq!(
            d(ScalarKind::Numeric, "Infinity"),
            Value::Numeric("Infinity".into())
        );
        assert_eq!(
            d(ScalarKind::Numeric, "-Infinity"),
            Value::Numeric("-Infinity".into())
        );
        for bad in [
            "", "-", "1.", ".5", "1e5", "1.2.3", "abc", "--1", "1-", "+1", "1.-2",
        ] {
            assert_eq!(d(ScalarKind::Numeric, bad), raw("t", bad), "{bad:?}");
        }
    }

    #[test]
    fn bytea_hex_and_escape_formats() {
        assert_eq!(d(ScalarKind::Bytea, "\\x"), Value::Bytes(vec![]));
        assert_eq!(
            d(ScalarKind::Bytea, "\\x00ff10"),
            Value::Bytes(vec![0, 255, 16])
        );
        assert_eq!(
            d(ScalarKind::Bytea, "\\xABcd"),
            Value::Bytes(vec![0xab, 0xcd])
        );
        assert_eq!(d(ScalarKind::Bytea, "\\x0"), raw("t", "\\x0"));
        assert_eq!(
            d(ScalarKind::Bytea, "ab\\\\c\\000\\377"),
            Value::Bytes(b"ab\\c\x00\xff".to_vec())
        );
        assert_eq!(d(ScalarKind::Bytea, "a\\9"), raw("t", "a\\9"));
        assert_eq!(d(ScalarKind::Bytea, "a\\"), raw("t", "a\\"));
        assert_eq!(d(ScalarKind::Bytea, "\\400"), raw("t", "\\400"));
        assert_eq!(d(ScalarKind::Bytea, "\\x0g"), raw("t", "\\x0g"));
    }

    proptest::proptest! {
        #[test]
        fn hex_decodes_as_the_hex_crate_does(text in "[0-9a-fA-F]{0,40}g?") {
            proptest::prop_assert_eq!(decode_hex(text.as_bytes()), hex::decode(&text).ok());
        }
    }

    #[test]
    fn uuids_are_validated_and_lowercased() {
        let u = "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11";
        assert_eq!(
            d(ScalarKind::Uuid, u),
            Value::Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into())
        );
        assert_eq!(d(ScalarKind::Uuid, "a0eebc99"), raw("t", "a0eebc99"));
        let bad = "a0eebc99x9c0b-4ef8-bb6d-6bb9bd380a11";
        assert_eq!(d(ScalarKind::Uuid, bad), raw("t", bad));
    }

    #[test]
    fn text_json_and_raw() {
        assert_eq!(d(ScalarKind::Text, "héllo"), Value::Text("héllo".into()));
        assert_eq!(
            d(ScalarKind::Json, "{\"a\": 1}"),
            Value::Json("{\"a\": 1}".into())
        );
        assert_eq!(d(ScalarKind::Raw, "(1,2)"), raw("t", "(1,2)"));
    }
}
