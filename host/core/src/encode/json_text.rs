//! Whether a `json`/`jsonb` value's text can be embedded in a JSON record as it is.
//!
//! The JSON writer must never emit invalid JSON, so a json value's text is checked before it
//! is copied into a record. serde_json's check (parsing into a `RawValue`) was a twentieth of a
//! snapshot's CPU; the text PostgreSQL sends is nearly always compact, well-formed JSON, and a
//! single strict pass without allocation is enough to say so. This check is strict on
//! purpose: whatever it does not accept goes the old way through serde_json, so it only needs
//! never to accept what serde_json rejects (the tests compare the two).

/// Deepest nesting judged here; deeper values are left to serde_json. The open containers'
/// kinds are bits of one `u64`, so this cannot exceed 64.
const MAX_DEPTH: usize = 64;

/// Whether `text` is exactly one JSON value with no whitespace around it and no line break
/// anywhere, so that it can be written into a record unchanged.
pub(crate) fn is_embeddable(text: &[u8]) -> bool {
    let edge_is_space = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_whitespace());
    if edge_is_space(text.first()) || edge_is_space(text.last()) {
        return false;
    }
    let mut cursor = Cursor { text, at: 0 };
    cursor.document()
}

struct Cursor<'a> {
    text: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let matched = self.peek() == Some(byte);
        self.at += usize::from(matched);
        matched
    }

    /// Spaces and tabs (line breaks are not accepted at all).
    fn skip_blanks(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.at += 1;
        }
    }

    /// One value, its containers walked with an explicit stack: bit `d` of `objects` says
    /// whether the container open at depth `d` is an object (a bit set rather than an array,
    /// which every call had to clear first).
    fn document(&mut self) -> bool {
        let mut objects: u64 = 0;
        let mut depth = 0;
        loop {
            // A value: a scalar, or the start of a container (its first member next round).
            self.skip_blanks();
            let opens = match self.peek() {
                Some(b'{') => Some(true),
                Some(b'[') => Some(false),
                _ => None,
            };
            let mut closed = false;
            if let Some(object) = opens {
                self.at += 1;
                self.skip_blanks();
                if self.eat(if object { b'}' } else { b']' }) {
                    closed = true;
                } else {
                    if depth == MAX_DEPTH || (object && !self.member_key()) {
                        return false;
                    }
                    objects = (objects & !(1 << depth)) | (u64::from(object) << depth);
                    depth += 1;
                    continue;
                }
            }
            if !closed && !self.scalar() {
                return false;
            }
            // After a value: close containers until a comma asks for the next member.
            loop {
                self.skip_blanks();
                if depth == 0 {
                    return self.at == self.text.len();
                }
                let object = objects >> (depth - 1) & 1 == 1;
                if self.eat(b',') {
                    if object && !self.member_key() {
                        return false;
                    }
                    break;
                }
                if !self.eat(if object { b'}' } else { b']' }) {
                    return false;
                }
                depth -= 1;
            }
        }
    }

    /// `"key" :` of an object member.
    fn member_key(&mut self) -> bool {
        self.skip_blanks();
        if !self.string() {
            return false;
        }
        self.skip_blanks();
        self.eat(b':')
    }

    fn scalar(&mut self) -> bool {
        match self.peek() {
            Some(b'"') => self.string(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => false,
        }
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        let matched = self.text[self.at..].starts_with(word);
        self.at += if matched { word.len() } else { 0 };
        matched
    }

    /// A string: no control characters, only JSON's escapes.
    fn string(&mut self) -> bool {
        if !self.eat(b'"') {
            return false;
        }
        while let Some(byte) = self.peek() {
            self.at += 1;
            match byte {
                b'"' => return true,
                b'\\' => {
                    let Some(escape) = self.peek() else {
                        return false;
                    };
                    self.at += 1;
                    match escape {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => {}
                        b'u' => {
                            let hex = self.text.get(self.at..self.at + 4);
                            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                return false;
                            }
                            self.at += 4;
                        }
                        _ => return false,
                    }
                }
                0x00..=0x1f => return false,
                _ => {}
            }
        }
        false
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> bool {
        self.eat(b'-');
        if self.eat(b'0') {
            if self.peek().is_some_and(|b| b.is_ascii_digit()) {
                return false;
            }
        } else if self.digits() == 0 {
            return false;
        }
        if self.eat(b'.') && self.digits() == 0 {
            return false;
        }
        if self.eat(b'e') || self.eat(b'E') {
            if !self.eat(b'+') {
                self.eat(b'-');
            }
            if self.digits() == 0 {
                return false;
            }
        }
        true
    }

    fn digits(&mut self) -> usize {
        let start = self.at;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
        self.at - start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What serde_json accepts and embeds unchanged.
    fn serde_embeds(text: &str) -> bool {
        serde_json::from_str::<&serde_json::value::RawValue>(text).is_ok_and(|r| r.get() == text)
    }

    #[test]
    fn accepts_what_postgres_prints() {
        for text in [
            r#"{"n": 1, "tags": ["a", "b"]}"#,
            r#"{"a":{"b":[1,-2.5e10,0.0,1E+2,true,false,null,"x\"\\\/\b\f\n\r\t\u00e9"]}}"#,
            "[]",
            "{}",
            "[ ]",
            "{ }",
            r#""plain""#,
            "0",
            "-0",
            "123",
            "null",
            "[[[[1]]]]",
            "{\"\u{e9}\": \"\u{263a}\"}",
        ] {
            assert!(is_embeddable(text.as_bytes()), "{text}");
            assert!(serde_embeds(text), "{text}");
        }
    }

    #[test]
    fn rejects_what_is_not_one_compact_value() {
        for text in [
            "",
            " 1",
            "1 ",
            "01",
            "1.",
            ".5",
            "-",
            "1e",
            "1e+",
            "+1",
            "tru",
            "nul",
            "[1,]",
            "{\"a\":1,}",
            "{a:1}",
            "\"\\x\"",
            "\"\\u12\"",
            "\"\u{1}\"",
            "[",
            "]",
            "{}}",
            "1 2",
            "\"abc",
            "[1 2]",
            "{\"a\" 1}",
            "{\"a\":}",
            ",",
            "[1]]",
            "{\"a\":1}{",
            "{\n}",
            "[1,\r2]",
            "{\"a\":1 \"b\":2}",
            "[,1]",
            "NaN",
            "Infinity",
            "truex",
            "[01]",
            "\"a\tb\"",
        ] {
            assert!(!is_embeddable(text.as_bytes()), "{text:?}");
        }
        let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        assert!(
            !is_embeddable(nested(MAX_DEPTH + 1).as_bytes()),
            "deeper than judged here"
        );
        assert!(is_embeddable(nested(MAX_DEPTH).as_bytes()));
        assert!(serde_embeds(&nested(MAX_DEPTH)));
        // Objects and arrays taking turns all the way down: each level must close with its
        // own bracket, the deepest ones included.
        let kinds: Vec<bool> = (0..MAX_DEPTH).map(|d| d % 3 == 0).collect();
        let open: String = kinds
            .iter()
            .map(|&o| if o { "{\"k\":" } else { "[" })
            .collect();
        let close = |kinds: &[bool]| -> String {
            kinds
                .iter()
                .rev()
                .map(|&o| if o { '}' } else { ']' })
                .collect()
        };
        for siblings in [
            r#"[{"a":1},[2],{"b":[]}]"#,
            r#"{"a":[1],"b":{"c":2},"d":[{}]}"#,
        ] {
            assert!(is_embeddable(siblings.as_bytes()), "{siblings}");
        }
        let mixed = format!("{open}1{}", close(&kinds));
        assert!(is_embeddable(mixed.as_bytes()) && serde_embeds(&mixed));
        for level in [0, 1, MAX_DEPTH / 2, MAX_DEPTH - 2, MAX_DEPTH - 1] {
            let mut wrong = kinds.clone();
            wrong[level] = !wrong[level];
            let text = format!("{open}1{}", close(&wrong));
            assert!(
                !is_embeddable(text.as_bytes()),
                "wrong bracket at level {level}"
            );
        }
    }

    proptest::proptest! {
        /// Never more lenient than serde_json on short JSON-ish noise.
        #[test]
        fn accepts_no_noise_serde_json_would_not_embed(
            text in r#"[\[\]{}",:0-9.eE+\- a-z\\\t]{0,10}"#
        ) {
            if is_embeddable(text.as_bytes()) {
                proptest::prop_assert!(serde_embeds(&text), "{:?}", text);
            }
        }

        /// Accepts real JSON, and after it is changed at any one position (a byte replaced or
        /// inserted, or the rest cut), accepts the result only if serde_json embeds it too.
        #[test]
        fn agrees_with_serde_json_on_mangled_values(
            keys in proptest::collection::vec("[a-z\"\\\\/\u{e9}\u{1}]{0,4}", 0..4),
            numbers in proptest::collection::vec(proptest::num::f64::NORMAL, 0..4),
            byte in proptest::sample::select(b"[]{}\",:0123456789.eE+- atrufnl\\/bu\t".to_vec()),
        ) {
            let mut object = serde_json::Map::new();
            for (i, key) in keys.iter().enumerate() {
                let number = numbers.get(i).copied().unwrap_or(0.0);
                object.insert(key.clone(), serde_json::json!([number, key, null, {"k": [true, -0]}]));
            }
            let text = serde_json::Value::Object(object).to_string();
            proptest::prop_assert!(is_embeddable(text.as_bytes()), "{}", text);
            for at in 0..=text.len() {
                let mut changed = text.clone().into_bytes();
                if at < changed.len() {
                    changed[at] = byte;
                }
                let mut inserted = text.clone().into_bytes();
                inserted.insert(at, byte);
                let cut = text.as_bytes()[..at].to_vec();
                for mangled in [changed, inserted, cut] {
                    if let Ok(mangled) = String::from_utf8(mangled)
                        && is_embeddable(mangled.as_bytes())
                    {
                        proptest::prop_assert!(serde_embeds(&mangled), "{:?}", mangled);
                    }
                }
            }
        }
    }
}
