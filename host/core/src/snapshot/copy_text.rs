//! PostgreSQL's COPY text format, one row at a time: fields split on tab, `\N` for NULL and
//! backslash escapes. The server sends one row per CopyData message, so a row never spans
//! messages. Never panics: odd input becomes odd text, which the value decoder keeps raw.

use std::borrow::Cow;

use crate::event::Value;
use crate::value::{ScalarKind, TextCodec};

/// The raw (still escaped) fields of one COPY text row (the trailing newline is optional).
/// Tabs are found with `memchr`, many bytes at a time, rather than byte by byte: text, bytea
/// and json fields are long.
fn raw_fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let mut rest = Some(line);
    std::iter::from_fn(move || {
        let field = rest?;
        match memchr::memchr(b'\t', field) {
            Some(tab) => {
                rest = Some(&field[tab + 1..]);
                Some(&field[..tab])
            }
            None => {
                rest = None;
                Some(field)
            }
        }
    })
}

/// The fields of one COPY text row, unescaped (`None` for NULL).
#[cfg(test)]
fn fields(line: &[u8]) -> impl Iterator<Item = Option<Cow<'_, str>>> {
    raw_fields(line).map(field)
}

/// The values of one COPY text row, decoded by `codecs` (one per column, in order).
pub fn values<'a>(line: &'a [u8], codecs: &'a [TextCodec]) -> impl Iterator<Item = Value> + 'a {
    raw_fields(line)
        .zip(codecs)
        .map(|(raw, codec)| value(raw, codec))
}

/// One field as a value. A `bytea` in hex form (`\\x…` once COPY has escaped its backslash)
/// is decoded straight from the line, without unescaping it into a copy first.
fn value(raw: &[u8], codec: &TextCodec) -> Value {
    if codec.scalar == ScalarKind::Bytea
        && !codec.array
        && let Some(hex_digits) = raw.strip_prefix(b"\\\\x")
        && let Some(bytes) = crate::value::scalar::decode_hex(hex_digits)
    {
        return Value::Bytes(bytes);
    }
    match field(raw) {
        None => Value::Null,
        Some(text) => codec.decode(&text),
    }
}

fn field(raw: &[u8]) -> Option<Cow<'_, str>> {
    if raw == b"\\N" {
        return None;
    }
    if memchr::memchr(b'\\', raw).is_none() {
        return Some(match crate::value::utf8(raw) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(raw),
        });
    }
    Some(Cow::Owned(match crate::value::utf8_string(unescape(raw)) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }))
}

fn unescape(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        i += 1;
        if b != b'\\' || i == raw.len() {
            out.push(b);
            continue;
        }
        let c = raw[i];
        i += 1;
        match c {
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'x' if raw.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut v = 0u32;
                for _ in 0..2 {
                    match raw.get(i).and_then(|d| (*d as char).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                        }
                        None => break,
                    }
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(line: &str) -> Vec<Option<String>> {
        fields(line.as_bytes())
            .map(|f| f.map(|c| c.into_owned()))
            .collect()
    }

    #[test]
    fn splits_fields_and_nulls() {
        assert_eq!(
            row("1\t\\N\tabc\t\n"),
            vec![Some("1".into()), None, Some("abc".into()), Some("".into())]
        );
    }

    #[test]
    fn unescapes_what_copy_escapes() {
        assert_eq!(
            row("a\\tb\\nc\\\\d\\r\\b\\f\\v"),
            vec![Some("a\tb\nc\\d\r\u{8}\u{c}\u{b}".into())]
        );
        assert_eq!(row("\\101\\x42\\q"), vec![Some("ABq".into())]);
        assert_eq!(row("\\\\N"), vec![Some("\\N".into())]);
    }

    #[test]
    fn bytea_is_decoded_from_the_line_as_from_its_unescaped_text() {
        let registry = crate::value::TypeRegistry::new();
        let codecs = [registry.codec(17), registry.codec(17), registry.codec(25)];
        let line = b"\\\\x00ff10\t\\\\000abc\t\\\\x00\n";
        let decoded: Vec<Value> = values(line, &codecs).collect();
        assert_eq!(
            decoded,
            vec![
                Value::Bytes(vec![0, 0xff, 0x10]),
                Value::Bytes(b"\0abc".to_vec()),
                Value::Text("\\x00".into()),
            ]
        );
        let odd: Vec<Value> = values(b"\\\\xzz", &codecs[..1]).collect();
        assert!(matches!(&odd[0], Value::Raw { text, .. } if text == "\\xzz"));
    }

    #[test]
    fn odd_input_does_not_panic() {
        for line in ["\\", "\\x", "\\7", "a\\", "\t\t", ""] {
            let _ = row(line);
        }
        assert_eq!(row(""), vec![Some(String::new())]);
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_are_accepted(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = fields(&bytes).count();
        }
    }
}
