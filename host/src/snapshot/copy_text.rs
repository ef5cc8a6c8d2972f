//! PostgreSQL's COPY text format, one row at a time: fields split on tab, `\N` for NULL and
//! backslash escapes. The server sends one row per CopyData message, so a row never spans
//! messages. Never panics: odd input becomes odd text, which the value decoder keeps raw.

use std::borrow::Cow;

/// The fields of one COPY text row (the trailing newline is optional).
pub fn fields(line: &[u8]) -> impl Iterator<Item = Option<Cow<'_, str>>> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.split(|b| *b == b'\t').map(field)
}

fn field(raw: &[u8]) -> Option<Cow<'_, str>> {
    if raw == b"\\N" {
        return None;
    }
    if !raw.contains(&b'\\') {
        return Some(String::from_utf8_lossy(raw));
    }
    Some(Cow::Owned(
        String::from_utf8_lossy(&unescape(raw)).into_owned(),
    ))
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
