//! PostgreSQL's array literal syntax (`array_out`), parsed into dimensions and element texts.
//!
//! Handles quoting (`"a,b"`), backslash escapes, unquoted `NULL` elements, nested
//! multi-dimensional arrays (`{{1,2},{3,4}}`, which must be rectangular) and the explicit
//! bounds prefix PostgreSQL prints when a lower bound is not 1 (`[0:1]={7,8}`; the bounds are
//! checked against the data and kept as [`crate::event::Array::lower_bounds`], so that a
//! replica's `v[0]` is the source's). Anything else is rejected with `None` so the caller can
//! keep the value raw.
//! The parser is iterative: hostile nesting cannot overflow the stack.

use std::borrow::Cow;

use crate::event::{Array, Value};

/// PostgreSQL's limit on array dimensions (`MAXDIM`).
pub const MAX_DIMS: usize = 6;

/// An array literal split into its shape and element texts (`None` for NULL elements).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedArray<'a> {
    /// Length of each dimension; empty for `{}`.
    pub dims: Vec<u32>,
    /// First index of each dimension, when the literal gave one that is not 1; else empty.
    pub lower_bounds: Vec<i32>,
    /// Element texts in row-major order.
    pub elements: Vec<Option<Cow<'a, str>>>,
}

impl ParsedArray<'_> {
    /// Turns the element texts into values with `element` (NULLs become [`Value::Null`]).
    pub fn into_value(self, element: impl Fn(&str) -> Value) -> Value {
        let elements = self
            .elements
            .iter()
            .map(|e| match e {
                None => Value::Null,
                Some(text) => element(text),
            })
            .collect();
        Value::Array(Array {
            dims: self.dims,
            lower_bounds: self.lower_bounds,
            elements,
        })
    }
}

/// Parses an array literal; `None` when it is not one PostgreSQL would print.
pub fn parse(text: &str) -> Option<ParsedArray<'_>> {
    let bytes = text.as_bytes();
    let (bounds, start) = parse_bounds(bytes)?;
    let mut p = Parser {
        text,
        bytes,
        pos: start,
        dims: Vec::new(),
        counts: Vec::new(),
        leaf_depth: None,
        elements: Vec::new(),
    };
    p.skip_ws();
    p.body()?;
    p.skip_ws();
    if p.pos != bytes.len() {
        return None;
    }
    let dims: Vec<u32> = p.dims.iter().map(|d| d.unwrap_or(0)).collect();
    let mut lower_bounds = Vec::new();
    if let Some(bounds) = bounds {
        if bounds.iter().map(|b| b.length).ne(dims.iter().copied()) {
            return None;
        }
        if bounds.iter().any(|b| b.lower != 1) {
            lower_bounds = bounds.iter().map(|b| b.lower).collect();
        }
    }
    Some(ParsedArray {
        dims,
        lower_bounds,
        elements: p.elements,
    })
}

/// One `[lo:hi]` of a bounds prefix.
struct Bound {
    lower: i32,
    length: u32,
}

/// The optional `[lo:hi][lo:hi]=` prefix: the bounds it declares, and where the body starts.
fn parse_bounds(bytes: &[u8]) -> Option<(Option<Vec<Bound>>, usize)> {
    if bytes.first() != Some(&b'[') {
        return Some((None, 0));
    }
    let mut bounds = Vec::new();
    let mut pos = 0;
    while bytes.get(pos) == Some(&b'[') {
        let close = pos + bytes.get(pos..)?.iter().position(|&b| b == b']')?;
        let inner = std::str::from_utf8(bytes.get(pos + 1..close)?).ok()?;
        let (lo, hi) = inner.split_once(':')?;
        let (lo, hi): (i32, i32) = (lo.parse().ok()?, hi.parse().ok()?);
        let length = i64::from(hi) - i64::from(lo) + 1;
        bounds.push(Bound {
            lower: lo,
            length: u32::try_from(length).ok()?,
        });
        if bounds.len() > MAX_DIMS {
            return None;
        }
        pos = close + 1;
    }
    if bytes.get(pos) != Some(&b'=') {
        return None;
    }
    Some((Some(bounds), pos + 1))
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    /// Length of each dimension, once its first sub-array closed.
    dims: Vec<Option<u32>>,
    /// Items seen so far at each open level.
    counts: Vec<u32>,
    /// The depth at which elements sit, once the first element was seen.
    leaf_depth: Option<usize>,
    elements: Vec<Option<Cow<'a, str>>>,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// The bytes from `start` to the cursor.
    fn slice(&self, start: usize) -> &'a [u8] {
        self.bytes.get(start..self.pos).unwrap_or_default()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_whitespace()) {
            self.pos += 1;
        }
    }

    /// The outermost `{…}` and everything inside it.
    fn body(&mut self) -> Option<()> {
        if self.peek()? != b'{' {
            return None;
        }
        self.open()?;
        // After `{` or `,` an item must follow; after an item, `,` or `}`.
        let mut expect_item = true;
        let mut after_open = true;
        loop {
            self.skip_ws();
            match self.peek()? {
                b'}' if expect_item && !after_open => return None,
                b'}' => {
                    self.close()?;
                    if self.counts.is_empty() {
                        return Some(());
                    }
                    self.item_done()?;
                    expect_item = false;
                    after_open = false;
                }
                b',' if !expect_item => {
                    self.pos += 1;
                    expect_item = true;
                    after_open = false;
                }
                _ if !expect_item => return None,
                b'{' => {
                    if self.leaf_depth.is_some_and(|d| self.counts.len() >= d) {
                        return None;
                    }
                    self.open()?;
                    after_open = true;
                }
                _ => {
                    let depth = self.counts.len();
                    if *self.leaf_depth.get_or_insert(depth) != depth {
                        return None;
                    }
                    let element = self.element()?;
                    self.elements.push(element);
                    self.item_done()?;
                    expect_item = false;
                    after_open = false;
                }
            }
        }
    }

    fn open(&mut self) -> Option<()> {
        if self.counts.len() >= MAX_DIMS {
            return None;
        }
        self.pos += 1;
        self.counts.push(0);
        if self.dims.len() < self.counts.len() {
            self.dims.push(None);
        }
        Some(())
    }

    fn close(&mut self) -> Option<()> {
        self.pos += 1;
        let depth = self.counts.len();
        let count = self.counts.pop()?;
        if count == 0 {
            // Only the whole array may be empty: `{}`.
            return (depth == 1 && self.elements.is_empty() && self.leaf_depth.is_none())
                .then(|| self.dims.clear());
        }
        if self.leaf_depth.is_some_and(|d| d < depth) {
            return None;
        }
        let slot = self.dims.get_mut(depth - 1)?;
        match *slot {
            None => *slot = Some(count),
            Some(expected) if expected == count => {}
            Some(_) => return None,
        }
        Some(())
    }

    fn item_done(&mut self) -> Option<()> {
        let count = self.counts.last_mut()?;
        *count = count.checked_add(1)?;
        Some(())
    }

    /// One element, quoted or not; `None` inside for an unquoted NULL.
    fn element(&mut self) -> Option<Option<Cow<'a, str>>> {
        if self.peek()? == b'"' {
            return self.quoted().map(Some);
        }
        let start = self.pos;
        let mut owned: Option<Vec<u8>> = None;
        // Length of the text up to its last non-blank (or escaped) byte.
        let mut keep = 0;
        loop {
            match self.peek()? {
                b',' | b'}' => break,
                b'{' | b'"' => return None,
                b'\\' => {
                    let buf = owned.get_or_insert_with(|| self.slice(start).to_vec());
                    let escaped = *self.bytes.get(self.pos + 1)?;
                    buf.push(escaped);
                    keep = buf.len();
                    self.pos += 2;
                }
                b => {
                    if let Some(buf) = owned.as_mut() {
                        buf.push(b);
                        if !b.is_ascii_whitespace() {
                            keep = buf.len();
                        }
                    } else if !b.is_ascii_whitespace() {
                        keep = self.pos + 1 - start;
                    }
                    self.pos += 1;
                }
            }
        }
        match owned {
            Some(mut buf) => {
                buf.truncate(keep);
                String::from_utf8(buf).ok().map(|s| Some(Cow::Owned(s)))
            }
            None => {
                let text = self.text.get(start..start + keep)?;
                if text.eq_ignore_ascii_case("NULL") {
                    Some(None)
                } else if text.is_empty() {
                    None
                } else {
                    Some(Some(Cow::Borrowed(text)))
                }
            }
        }
    }

    /// A `"…"` element with `\"` and `\\` escapes.
    fn quoted(&mut self) -> Option<Cow<'a, str>> {
        self.pos += 1;
        let start = self.pos;
        let mut owned: Option<Vec<u8>> = None;
        loop {
            match self.peek()? {
                b'"' => {
                    let end = self.pos;
                    self.pos += 1;
                    return match owned {
                        Some(buf) => String::from_utf8(buf).ok().map(Cow::Owned),
                        None => self.text.get(start..end).map(Cow::Borrowed),
                    };
                }
                b'\\' => {
                    let buf = owned.get_or_insert_with(|| self.slice(start).to_vec());
                    buf.push(*self.bytes.get(self.pos + 1)?);
                    self.pos += 2;
                }
                b => {
                    if let Some(buf) = owned.as_mut() {
                        buf.push(b);
                    }
                    self.pos += 1;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elems(text: &str) -> (Vec<u32>, Vec<Option<String>>) {
        let parsed = parse(text).unwrap_or_else(|| panic!("{text:?} did not parse"));
        (
            parsed.dims,
            parsed
                .elements
                .into_iter()
                .map(|e| e.map(Cow::into_owned))
                .collect(),
        )
    }

    fn s(v: &[Option<&str>]) -> Vec<Option<String>> {
        v.iter().map(|e| e.map(str::to_owned)).collect()
    }

    #[test]
    fn flat_arrays() {
        assert_eq!(
            elems("{1,2,3}"),
            (vec![3], s(&[Some("1"), Some("2"), Some("3")]))
        );
        assert_eq!(elems("{}"), (vec![], vec![]));
        assert_eq!(elems("{x}"), (vec![1], s(&[Some("x")])));
    }

    #[test]
    fn quoting_escapes_and_nulls() {
        assert_eq!(
            elems(r#"{"a,b","say \"hi\"","back\\slash",NULL,"NULL",null,""}"#),
            (
                vec![7],
                s(&[
                    Some("a,b"),
                    Some("say \"hi\""),
                    Some("back\\slash"),
                    None,
                    Some("NULL"),
                    None,
                    Some("")
                ])
            )
        );
        assert_eq!(
            elems(r"{a\,b, c d ,é}"),
            (vec![3], s(&[Some("a,b"), Some("c d"), Some("é")]))
        );
        assert_eq!(
            elems(r#"{"{}","}"}"#),
            (vec![2], s(&[Some("{}"), Some("}")]))
        );
    }

    #[test]
    fn multi_dimensional() {
        assert_eq!(
            elems("{{1,2},{3,4},{5,6}}"),
            (
                vec![3, 2],
                s(&[
                    Some("1"),
                    Some("2"),
                    Some("3"),
                    Some("4"),
                    Some("5"),
                    Some("6")
                ])
            )
        );
        assert_eq!(
            elems("{{{1},{2}},{{3},{NULL}}}"),
            (vec![2, 2, 1], s(&[Some("1"), Some("2"), Some("3"), None]))
        );
        assert_eq!(
            elems(" { { 1 , 2 } } "),
            (vec![1, 2], s(&[Some("1"), Some("2")]))
        );
    }

    #[test]
    fn explicit_bounds() {
        assert_eq!(elems("[0:1]={7,8}"), (vec![2], s(&[Some("7"), Some("8")])));
        assert_eq!(parse("[0:1]={7,8}").unwrap().lower_bounds, vec![0]);
        assert_eq!(
            elems("[-1:0][3:4]={{1,2},{3,4}}"),
            (vec![2, 2], s(&[Some("1"), Some("2"), Some("3"), Some("4")]))
        );
        assert_eq!(
            parse("[-1:0][3:4]={{1,2},{3,4}}").unwrap().lower_bounds,
            vec![-1, 3]
        );
        // Bounds of 1 are PostgreSQL's default, and no bounds are kept for them.
        assert_eq!(
            parse("[1:2]={7,8}").unwrap().lower_bounds,
            Vec::<i32>::new()
        );
        assert_eq!(parse("{7,8}").unwrap().lower_bounds, Vec::<i32>::new());
        assert_eq!(
            parse("[2147483647:2147483647]={7}").unwrap().lower_bounds,
            vec![i32::MAX]
        );
        assert_eq!(parse("[2147483648:2147483648]={7}"), None);
        assert_eq!(parse("[0:2]={7,8}"), None);
        assert_eq!(parse("[0:1]{7,8}"), None);
        assert_eq!(parse("[0:1][1:1]={7,8}"), None);
    }

    #[test]
    fn malformed_arrays_are_rejected() {
        for bad in [
            "",
            "1,2",
            "{",
            "}",
            "{1,2",
            "{1,,2}",
            "{,1}",
            "{1,}",
            "{{1,2},{3}}",
            "{{1},2}",
            "{1,{2}}",
            "{{}}",
            "{1}x",
            r#"{"abc}"#,
            r#"{a"b"}"#,
            "{a\\}",
            "{{{{{{{1}}}}}}}",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn six_dimensions_are_allowed() {
        assert_eq!(elems("{{{{{{1}}}}}}").0, vec![1; 6]);
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,64}") {
            let _ = parse(&text);
        }

        #[test]
        fn array_shaped_text_never_panics(text in r#"(\[-?[0-9]:-?[0-9]\])*=?[{}",\\ a-zA-Z0-9é]{0,48}"#) {
            if let Some(parsed) = parse(&text) {
                let expected: u64 = parsed.dims.iter().map(|&d| u64::from(d)).product();
                let expected = if parsed.dims.is_empty() { 0 } else { expected };
                prop_assert_eq!(expected, parsed.elements.len() as u64);
            }
        }

        #[test]
        fn quoted_elements_round_trip(items in proptest::collection::vec("\\PC{0,8}", 1..6)) {
            let quoted: Vec<String> = items
                .iter()
                .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            let text = format!("{{{}}}", quoted.join(","));
            let parsed = parse(&text).expect("a quoted literal parses");
            let got: Vec<String> = parsed
                .elements
                .into_iter()
                .map(|e| e.expect("quoted elements are never NULL").into_owned())
                .collect();
            prop_assert_eq!(got, items);
        }
    }
}
