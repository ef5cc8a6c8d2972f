//! PostgreSQL values in text output format → typed [`Value`]s.
//!
//! pgoutput sends every column in its type's text output format (we do not request binary), so
//! turning a change into an event means parsing that text by type. The [`TypeRegistry`] knows
//! the built-in types by oid and learns user types (enums, domains, arrays, composites, ranges,
//! extension types) from the catalog or from pgoutput Type messages. Decoding never fails:
//! anything unknown or unparsable is kept verbatim as [`Value::Raw`] with its type name, so no
//! change is ever dropped for a value we do not understand.
//!
//! For the hot path, [`TypeRegistry::codec`] resolves a type oid once (following domains to
//! their base type and arrays to their element) into a [`TextCodec`] that a relation cache can
//! keep per column; [`TypeRegistry::decode_text`] is the convenient one-shot form.
//!
//! Submodules: [`scalar`] parses one value of a base type, [`temporal`] the date/time types,
//! [`array`](mod@array) PostgreSQL's array literal syntax, and [`binary`] the binary send
//! format of common built-ins, which the initial snapshot's `COPY` uses where it can.
//!
//! # Session settings the text formats depend on
//!
//! Output functions run in the walsender with the replication connection's settings, so the
//! connection should send these startup parameters (a server configured otherwise would make
//! the affected values arrive in a different shape, which then stays [`Value::Raw`]):
//!
//! - `client_encoding=UTF8`: text is decoded as UTF-8 (invalid bytes make the value raw);
//! - `DateStyle=ISO`: dates and timestamps as `2024-01-02 03:04:05+00`;
//! - `IntervalStyle=postgres`: intervals as `1 year 2 mons 04:05:06` (also accepted:
//!   `iso_8601`, kept as is);
//! - `extra_float_digits=3`: exact float text on PostgreSQL 11 and older (12+ is exact by
//!   default);
//! - optionally `TimeZone=UTC`: timestamptz offsets are kept as the server prints them.

pub mod array;
pub mod binary;
pub mod scalar;
pub mod temporal;

use std::collections::HashMap;
use std::sync::Arc;

use crate::event::Value;

/// What kind of type a [`TypeInfo`] describes (`pg_type.typtype`, refined).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeKind {
    /// A base type (`typtype = 'b'`, not an array): built-ins decode by oid, others raw.
    Base,
    /// A base type in the string category (`typcategory = 'S'`) that is not built in, e.g.
    /// the `citext` extension's: values decode as text.
    String,
    /// An enum (`typtype = 'e'`): values decode as text.
    Enum,
    /// A domain (`typtype = 'd'`): values decode as their base type.
    Domain {
        /// `typbasetype`.
        base_oid: u32,
    },
    /// An array type (`typelem <> 0` and `typcategory = 'A'`, or a name starting with `_`).
    Array {
        /// `typelem`.
        elem_oid: u32,
    },
    /// A composite (row) type (`typtype = 'c'`): kept raw; an array of them is an array of
    /// raw elements.
    Composite,
    /// A range or multirange (`typtype = 'r'` / `'m'`): kept raw; an array of them is an array
    /// of raw elements.
    Range,
    /// Anything else (pseudo-types, types learned only by name): kept raw.
    Other,
}

/// A type the registry knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeInfo {
    /// `pg_type.oid`.
    pub oid: u32,
    /// `pg_type.typname`, e.g. `int4`, `_text`, `mood`.
    pub name: String,
    /// What kind of type it is.
    pub kind: TypeKind,
}

impl TypeInfo {
    /// Builds a `TypeInfo` from the columns of
    /// `select oid, typname, typtype, typbasetype, typelem, typcategory from pg_type`.
    /// `typtype` and `typcategory` are the single-character codes (`b`, `e`, `d`, `c`, `r`,
    /// `m`, `p`; `A` for arrays).
    pub fn from_catalog(
        oid: u32,
        name: impl Into<String>,
        typtype: char,
        basetype: u32,
        elem: u32,
        category: char,
    ) -> TypeInfo {
        let kind = match typtype {
            'e' => TypeKind::Enum,
            'd' => TypeKind::Domain { base_oid: basetype },
            'c' => TypeKind::Composite,
            'r' | 'm' => TypeKind::Range,
            'b' if elem != 0 && category == 'A' => TypeKind::Array { elem_oid: elem },
            'b' if category == 'S' && builtin_scalar(oid) == ScalarKind::Raw => TypeKind::String,
            'b' => TypeKind::Base,
            _ => TypeKind::Other,
        };
        TypeInfo {
            oid,
            name: name.into(),
            kind,
        }
    }
}

/// How the text of one base type is parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalarKind {
    /// `bool`
    Bool,
    /// `int2`, `int4`, `int8`, `oid`
    Int,
    /// `float4`, `float8`
    Float,
    /// `numeric`
    Numeric,
    /// Text-like: `text`, `varchar`, `bpchar`, `name`, `char`, `xml`, enums, `inet`, `cidr`,
    /// `macaddr`, `macaddr8`, `money`, `bit`, `varbit`, `pg_lsn`, …
    Text,
    /// `bytea`
    Bytea,
    /// `uuid`
    Uuid,
    /// `json`, `jsonb`
    Json,
    /// `date`
    Date,
    /// `time`
    Time,
    /// `timetz`
    TimeTz,
    /// `timestamp`
    Timestamp,
    /// `timestamptz`
    TimestampTz,
    /// `interval`
    Interval,
    /// Anything else: [`Value::Raw`].
    Raw,
}

/// A resolved decoder for one type: how to parse its text, and the name to put in
/// [`Value::Raw`] when that fails. Cheap to clone (an `Arc` and two bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextCodec {
    /// Parse as a scalar of this kind, or as an array of elements of this kind.
    pub scalar: ScalarKind,
    /// Whether the value is an array literal.
    pub array: bool,
    /// The type's name (the array type's name for arrays).
    pub type_name: Arc<str>,
    /// The element type's name, for arrays (equal to `type_name` otherwise).
    pub elem_name: Arc<str>,
}

impl TextCodec {
    /// A codec that keeps every value raw under this type name.
    pub fn raw(type_name: &str) -> TextCodec {
        let name: Arc<str> = Arc::from(type_name);
        TextCodec {
            scalar: ScalarKind::Raw,
            array: false,
            elem_name: name.clone(),
            type_name: name,
        }
    }

    /// Parses a value in text output format. Never fails: unparsable text becomes
    /// [`Value::Raw`].
    pub fn decode(&self, text: &str) -> Value {
        if self.array {
            match array::parse(text) {
                Some(parsed) => {
                    parsed.into_value(|t| scalar::decode(self.scalar, &self.elem_name, t))
                }
                None => raw(&self.type_name, text),
            }
        } else {
            scalar::decode(self.scalar, &self.type_name, text)
        }
    }

    /// Turns a binary-format datum into a value: `bytea` as bytes, text-like types as text,
    /// anything else as [`Value::Raw`] holding `\x` and the bytes in hex (we request text
    /// format, so this is only a fallback).
    pub fn decode_binary(&self, bytes: &[u8]) -> Value {
        match (self.array, self.scalar) {
            (false, ScalarKind::Bytea) => binary::BinaryKind::Bytea.decode(&self.type_name, bytes),
            (false, ScalarKind::Text) => binary::BinaryKind::Text.decode(&self.type_name, bytes),
            _ => raw_hex(&self.type_name, bytes),
        }
    }

    /// Decodes text that may not be valid UTF-8 (pgoutput bytes): invalid UTF-8 is kept as
    /// [`Value::Raw`] with the invalid sequences replaced.
    pub fn decode_bytes(&self, bytes: &[u8]) -> Value {
        match utf8(bytes) {
            Ok(text) => self.decode(text),
            Err(_) => raw(&self.type_name, &String::from_utf8_lossy(bytes)),
        }
    }
}

/// `bytes` as text when they are valid UTF-8. Column text is nearly always ASCII, which a
/// word-at-a-time scan confirms several times faster than UTF-8 validation goes through a
/// short string (it checks byte by byte until the pointer is aligned); every value decoded
/// comes through here.
pub fn utf8(bytes: &[u8]) -> Result<&str, std::str::Utf8Error> {
    if bytes.is_ascii() {
        // SAFETY: ASCII is valid UTF-8.
        Ok(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        std::str::from_utf8(bytes)
    }
}

/// [`utf8`] for bytes already in a vector, which becomes the string without a copy.
pub(crate) fn utf8_string(bytes: Vec<u8>) -> Result<String, std::string::FromUtf8Error> {
    if bytes.is_ascii() {
        // SAFETY: ASCII is valid UTF-8.
        Ok(unsafe { String::from_utf8_unchecked(bytes) })
    } else {
        String::from_utf8(bytes)
    }
}

pub(crate) fn raw(type_name: &str, text: &str) -> Value {
    Value::Raw {
        type_name: type_name.to_owned(),
        text: text.to_owned(),
    }
}

pub(crate) fn raw_hex(type_name: &str, bytes: &[u8]) -> Value {
    Value::Raw {
        type_name: type_name.to_owned(),
        text: format!("\\x{}", hex::encode(bytes)),
    }
}

/// The types a connection knows: the built-ins plus whatever it learned.
#[derive(Debug, Clone)]
pub struct TypeRegistry {
    types: HashMap<u32, TypeInfo>,
}

impl Default for TypeRegistry {
    fn default() -> Self {
        TypeRegistry::new()
    }
}

/// Domains may be built on domains; stop following after this many (a cycle is a catalog bug).
const MAX_DOMAIN_DEPTH: usize = 16;

impl TypeRegistry {
    /// A registry holding the built-in types and their array types.
    pub fn new() -> TypeRegistry {
        let mut types = HashMap::with_capacity(BUILTINS.len() * 2);
        for &(oid, name, array_oid) in BUILTINS {
            types.insert(
                oid,
                TypeInfo {
                    oid,
                    name: name.to_owned(),
                    kind: builtin_kind(oid),
                },
            );
            if array_oid != 0 {
                types.insert(
                    array_oid,
                    TypeInfo {
                        oid: array_oid,
                        name: format!("_{name}"),
                        kind: TypeKind::Array { elem_oid: oid },
                    },
                );
            }
        }
        TypeRegistry { types }
    }

    /// Adds or replaces a type (from the catalog at connect time).
    pub fn insert(&mut self, info: TypeInfo) {
        self.types.insert(info.oid, info);
    }

    /// Records what a pgoutput Type message says: a name for an oid. A kind already known from
    /// the catalog is kept; a new type is [`TypeKind::Other`] (decoded raw) until the catalog
    /// says more.
    pub fn learn_name(&mut self, oid: u32, name: &str) {
        match self.types.get_mut(&oid) {
            Some(info) => {
                if info.name != name {
                    info.name = name.to_owned();
                }
            }
            None => self.insert(TypeInfo {
                oid,
                name: name.to_owned(),
                kind: TypeKind::Other,
            }),
        }
    }

    /// The type with this oid.
    pub fn get(&self, oid: u32) -> Option<&TypeInfo> {
        self.types.get(&oid)
    }

    /// The type's name, or `oid:N` for a type nobody described.
    pub fn type_name(&self, oid: u32) -> String {
        match self.types.get(&oid) {
            Some(info) => info.name.clone(),
            None => format!("oid:{oid}"),
        }
    }

    /// Resolves how values of this type are decoded (domains to their base, arrays to their
    /// element). Keep the result per column; it is valid until the registry changes.
    pub fn codec(&self, oid: u32) -> TextCodec {
        let type_name: Arc<str> = Arc::from(self.type_name(oid));
        let Some(target) = self.base_of(oid) else {
            return TextCodec::raw(&type_name);
        };
        match target.kind {
            TypeKind::Array { elem_oid } => {
                let elem_name: Arc<str> = Arc::from(self.type_name(elem_oid));
                let scalar = self.scalar_kind(elem_oid);
                if scalar == ScalarKind::Raw && !self.listed_raw(elem_oid) {
                    // Other elements we cannot type (boxes with their `;` delimiter…): keep
                    // the whole array raw rather than guess at its syntax.
                    return TextCodec::raw(&type_name);
                }
                TextCodec {
                    scalar,
                    array: true,
                    type_name,
                    elem_name,
                }
            }
            _ => TextCodec {
                scalar: self.scalar_kind(oid),
                array: false,
                elem_name: type_name.clone(),
                type_name,
            },
        }
    }

    /// Decodes one value in text output format. Never fails.
    pub fn decode_text(&self, type_oid: u32, text: &str) -> Value {
        self.codec(type_oid).decode(text)
    }

    /// Decodes one binary-format value (see [`TextCodec::decode_binary`]). Never fails.
    pub fn decode_binary(&self, type_oid: u32, bytes: &[u8]) -> Value {
        self.codec(type_oid).decode_binary(bytes)
    }

    /// Follows domains to the type that decides the format.
    fn base_of(&self, oid: u32) -> Option<&TypeInfo> {
        let mut info = self.types.get(&oid)?;
        for _ in 0..MAX_DOMAIN_DEPTH {
            match info.kind {
                TypeKind::Domain { base_oid } => info = self.types.get(&base_oid)?,
                _ => return Some(info),
            }
        }
        None
    }

    /// Whether an array of this element type is an array of raw elements: composites and
    /// ranges, whose arrays use `,` like every built-in but the geometric types, so each
    /// element is shown as it would be outside an array.
    fn listed_raw(&self, elem_oid: u32) -> bool {
        self.base_of(elem_oid)
            .is_some_and(|info| matches!(info.kind, TypeKind::Composite | TypeKind::Range))
    }

    /// The scalar kind of a non-array type (through domains).
    fn scalar_kind(&self, oid: u32) -> ScalarKind {
        match self.base_of(oid) {
            Some(info) => match info.kind {
                TypeKind::Base => builtin_scalar(info.oid),
                TypeKind::Enum | TypeKind::String => ScalarKind::Text,
                _ => ScalarKind::Raw,
            },
            None => ScalarKind::Raw,
        }
    }
}

/// Built-in types: (oid, name, array oid or 0).
const BUILTINS: &[(u32, &str, u32)] = &[
    (16, "bool", 1000),
    (17, "bytea", 1001),
    (18, "char", 1002),
    (19, "name", 1003),
    (20, "int8", 1016),
    (21, "int2", 1005),
    (23, "int4", 1007),
    (24, "regproc", 1008),
    (25, "text", 1009),
    (26, "oid", 1028),
    (27, "tid", 1010),
    (28, "xid", 1011),
    (29, "cid", 1012),
    (114, "json", 199),
    (142, "xml", 143),
    (600, "point", 1017),
    (601, "lseg", 1018),
    (602, "path", 1019),
    (603, "box", 1020),
    (604, "polygon", 1027),
    (628, "line", 629),
    (650, "cidr", 651),
    (700, "float4", 1021),
    (701, "float8", 1022),
    (718, "circle", 719),
    (774, "macaddr8", 775),
    (790, "money", 791),
    (829, "macaddr", 1040),
    (869, "inet", 1041),
    (1042, "bpchar", 1014),
    (1043, "varchar", 1015),
    (1082, "date", 1182),
    (1083, "time", 1183),
    (1114, "timestamp", 1115),
    (1184, "timestamptz", 1185),
    (1186, "interval", 1187),
    (1266, "timetz", 1270),
    (1560, "bit", 1561),
    (1562, "varbit", 1563),
    (1700, "numeric", 1231),
    (2205, "regclass", 2210),
    (2206, "regtype", 2211),
    (2950, "uuid", 2951),
    (3220, "pg_lsn", 3221),
    (3614, "tsvector", 3643),
    (3615, "tsquery", 3645),
    (3802, "jsonb", 3807),
    (4072, "jsonpath", 4073),
    (5069, "xid8", 271),
    (3904, "int4range", 3905),
    (3906, "numrange", 3907),
    (3908, "tsrange", 3909),
    (3910, "tstzrange", 3911),
    (3912, "daterange", 3913),
    (3926, "int8range", 3927),
    (4451, "int4multirange", 6150),
    (4532, "nummultirange", 6151),
    (4533, "tsmultirange", 6152),
    (4534, "tstzmultirange", 6153),
    (4535, "datemultirange", 6155),
    (4536, "int8multirange", 6157),
    (2249, "record", 2287),
    (22, "int2vector", 1006),
    (30, "oidvector", 1013),
    (1033, "aclitem", 1034),
    (1790, "refcursor", 2201),
    (2202, "regprocedure", 2207),
    (2203, "regoper", 2208),
    (2204, "regoperator", 2209),
    (3734, "regconfig", 3735),
    (3769, "regdictionary", 3770),
    (4089, "regnamespace", 4090),
    (4096, "regrole", 4097),
    (2970, "txid_snapshot", 2949),
    (5038, "pg_snapshot", 5039),
];

fn builtin_kind(oid: u32) -> TypeKind {
    match oid {
        3904 | 3906 | 3908 | 3910 | 3912 | 3926 | 4451 | 4532..=4536 => TypeKind::Range,
        2249 => TypeKind::Composite,
        _ => TypeKind::Base,
    }
}

fn builtin_scalar(oid: u32) -> ScalarKind {
    match oid {
        16 => ScalarKind::Bool,
        20 | 21 | 23 | 26 => ScalarKind::Int,
        700 | 701 => ScalarKind::Float,
        1700 => ScalarKind::Numeric,
        18 | 19 | 25 | 142 | 650 | 774 | 790 | 829 | 869 | 1042 | 1043 | 1560 | 1562 | 1790
        | 3220 | 4072 => ScalarKind::Text,
        17 => ScalarKind::Bytea,
        2950 => ScalarKind::Uuid,
        114 | 3802 => ScalarKind::Json,
        1082 => ScalarKind::Date,
        1083 => ScalarKind::Time,
        1266 => ScalarKind::TimeTz,
        1114 => ScalarKind::Timestamp,
        1184 => ScalarKind::TimestampTz,
        1186 => ScalarKind::Interval,
        _ => ScalarKind::Raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Array, TemporalKind};

    fn t(s: &str) -> Value {
        Value::Text(s.into())
    }

    fn raw(name: &str, text: &str) -> Value {
        Value::Raw {
            type_name: name.into(),
            text: text.into(),
        }
    }

    #[test]
    fn text_is_checked_whether_ascii_or_not() {
        for ok in ["", "customer 42", "caf\u{e9} \u{263a}", "a\u{0}b"] {
            assert_eq!(utf8(ok.as_bytes()), Ok(ok));
            assert_eq!(utf8_string(ok.as_bytes().to_vec()).as_deref(), Ok(ok));
        }
        for bad in [&b"\xff"[..], b"plain then \xc3", b"\xed\xa0\x80 surrogate"] {
            assert!(utf8(bad).is_err(), "{bad:?}");
            assert!(utf8_string(bad.to_vec()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn built_in_scalars_by_oid() {
        let r = TypeRegistry::new();
        assert_eq!(r.decode_text(16, "t"), Value::Bool(true));
        assert_eq!(r.decode_text(21, "-7"), Value::Int(-7));
        assert_eq!(r.decode_text(23, "42"), Value::Int(42));
        assert_eq!(r.decode_text(20, "-9000000000"), Value::Int(-9_000_000_000));
        assert_eq!(r.decode_text(26, "4294967295"), Value::Int(4_294_967_295));
        assert_eq!(r.decode_text(700, "1.5"), Value::Float(1.5));
        assert_eq!(
            r.decode_text(701, "-Infinity"),
            Value::Float(f64::NEG_INFINITY)
        );
        assert_eq!(
            r.decode_text(1700, "3.14159"),
            Value::Numeric("3.14159".into())
        );
        for oid in [18, 19, 25, 142, 1042, 1043] {
            assert_eq!(r.decode_text(oid, "abc "), t("abc "), "oid {oid}");
        }
        for (oid, text) in [
            (869, "192.168.0.1/24"),
            (650, "10.0.0.0/8"),
            (829, "08:00:2b:01:02:03"),
            (774, "08:00:2b:01:02:03:04:05"),
            (790, "$1,234.56"),
            (1560, "101"),
            (1562, "10101"),
        ] {
            assert_eq!(r.decode_text(oid, text), t(text), "oid {oid}");
        }
        assert_eq!(r.decode_text(17, "\\x0102"), Value::Bytes(vec![1, 2]));
        assert_eq!(
            r.decode_text(2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            Value::Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into())
        );
        assert_eq!(r.decode_text(114, "[1, 2]"), Value::Json("[1, 2]".into()));
        assert_eq!(
            r.decode_text(3802, "{\"a\": 1}"),
            Value::Json("{\"a\": 1}".into())
        );
        assert_eq!(
            r.decode_text(1082, "2024-01-02"),
            Value::Temporal(TemporalKind::Date, "2024-01-02".into())
        );
        assert_eq!(
            r.decode_text(1083, "03:04:05"),
            Value::Temporal(TemporalKind::Time, "03:04:05".into())
        );
        assert_eq!(
            r.decode_text(1266, "03:04:05+01"),
            Value::Temporal(TemporalKind::TimeTz, "03:04:05+01:00".into())
        );
        assert_eq!(
            r.decode_text(1114, "2024-01-02 03:04:05"),
            Value::Temporal(TemporalKind::Timestamp, "2024-01-02T03:04:05".into())
        );
        assert_eq!(
            r.decode_text(1184, "2024-01-02 03:04:05.123+00"),
            Value::Temporal(
                TemporalKind::TimestampTz,
                "2024-01-02T03:04:05.123+00:00".into()
            )
        );
        assert_eq!(
            r.decode_text(1186, "1 year 2 mons 3 days 04:05:06.5"),
            Value::Temporal(TemporalKind::Interval, "P1Y2M3DT4H5M6.5S".into())
        );
    }

    #[test]
    fn unparsable_and_untyped_values_stay_raw() {
        let r = TypeRegistry::new();
        assert_eq!(r.decode_text(23, "abc"), raw("int4", "abc"));
        assert_eq!(r.decode_text(1082, "someday"), raw("date", "someday"));
        assert_eq!(r.decode_text(600, "(1,2)"), raw("point", "(1,2)"));
        assert_eq!(r.decode_text(603, "(1,1),(0,0)"), raw("box", "(1,1),(0,0)"));
        assert_eq!(r.decode_text(3904, "[1,5)"), raw("int4range", "[1,5)"));
        assert_eq!(r.decode_text(3614, "'a' 'b'"), raw("tsvector", "'a' 'b'"));
        assert_eq!(r.decode_text(99_999, "x"), raw("oid:99999", "x"));
        assert_eq!(r.type_name(99_999), "oid:99999");
    }

    #[test]
    fn arrays_of_built_ins() {
        let r = TypeRegistry::new();
        assert_eq!(
            r.decode_text(1007, "{{1,2},{3,NULL}}"),
            Value::Array(Array {
                dims: vec![2, 2],
                lower_bounds: Vec::new(),
                elements: vec![Value::Int(1), Value::Int(2), Value::Int(3), Value::Null],
            })
        );
        assert_eq!(
            r.decode_text(1009, "{}"),
            Value::Array(Array {
                dims: vec![],
                lower_bounds: Vec::new(),
                elements: vec![],
            })
        );
        assert_eq!(
            r.decode_text(1185, "{\"2024-01-02 03:04:05+00\",infinity}"),
            Value::Array(Array {
                dims: vec![2],
                lower_bounds: Vec::new(),
                elements: vec![
                    Value::Temporal(
                        TemporalKind::TimestampTz,
                        "2024-01-02T03:04:05+00:00".into()
                    ),
                    Value::Temporal(TemporalKind::TimestampTz, "infinity".into()),
                ],
            })
        );
        assert_eq!(
            r.decode_text(1001, "{\"\\\\x01ff\"}"),
            Value::Array(Array {
                dims: vec![1],
                lower_bounds: Vec::new(),
                elements: vec![Value::Bytes(vec![1, 255])],
            })
        );
        assert_eq!(
            r.decode_text(1231, "[0:1]={1.5,NaN}"),
            Value::Array(Array {
                dims: vec![2],
                lower_bounds: vec![0],
                elements: vec![Value::Numeric("1.5".into()), Value::Numeric("NaN".into())],
            })
        );
        // An element that does not parse is raw under the element's type name.
        assert_eq!(
            r.decode_text(1007, "{1,x}"),
            Value::Array(Array {
                dims: vec![2],
                lower_bounds: Vec::new(),
                elements: vec![Value::Int(1), raw("int4", "x")],
            })
        );
        // A malformed literal is raw under the array's type name.
        assert_eq!(r.decode_text(1007, "{1,2"), raw("_int4", "{1,2"));
        // Arrays of ranges and multiranges are arrays of raw elements.
        assert_eq!(
            r.decode_text(3905, r#"{"[1,5)",empty}"#),
            Value::Array(Array {
                dims: vec![2],
                lower_bounds: Vec::new(),
                elements: vec![raw("int4range", "[1,5)"), raw("int4range", "empty")],
            })
        );
        assert_eq!(
            r.decode_text(6150, r#"[0:0]={"{[1,2),[3,4)}"}"#),
            Value::Array(Array {
                dims: vec![1],
                lower_bounds: vec![0],
                elements: vec![raw("int4multirange", "{[1,2),[3,4)}")],
            })
        );
        // Arrays of untyped elements (boxes use `;` as delimiter) stay raw as a whole.
        assert_eq!(
            r.decode_text(1020, "{(1,1),(0,0);(2,2),(1,1)}"),
            raw("_box", "{(1,1),(0,0);(2,2),(1,1)}")
        );
    }

    #[test]
    fn user_types_enums_domains_and_arrays() {
        let mut r = TypeRegistry::new();
        r.insert(TypeInfo::from_catalog(16_400, "mood", 'e', 0, 0, 'E'));
        r.insert(TypeInfo::from_catalog(16_401, "_mood", 'b', 0, 16_400, 'A'));
        r.insert(TypeInfo::from_catalog(16_402, "posint", 'd', 23, 0, 'N'));
        r.insert(TypeInfo::from_catalog(
            16_403,
            "posint_on_posint",
            'd',
            16_402,
            0,
            'N',
        ));
        r.insert(TypeInfo::from_catalog(
            16_404, "_posint", 'b', 0, 16_402, 'A',
        ));
        r.insert(TypeInfo::from_catalog(
            16_405, "int_list", 'd', 1007, 0, 'A',
        ));
        r.insert(TypeInfo::from_catalog(16_406, "pair", 'c', 0, 0, 'C'));
        r.insert(TypeInfo::from_catalog(16_407, "_pair", 'b', 0, 16_406, 'A'));
        r.insert(TypeInfo::from_catalog(16_408, "floatrange", 'r', 0, 0, 'R'));
        r.insert(TypeInfo::from_catalog(
            16_409, "loop_a", 'd', 16_410, 0, 'N',
        ));
        r.insert(TypeInfo::from_catalog(
            16_410, "loop_b", 'd', 16_409, 0, 'N',
        ));

        assert_eq!(r.decode_text(16_400, "happy"), t("happy"));
        assert_eq!(
            r.decode_text(16_401, "{happy,sad}"),
            Value::Array(Array {
                dims: vec![2],
                lower_bounds: Vec::new(),
                elements: vec![t("happy"), t("sad")],
            })
        );
        assert_eq!(r.decode_text(16_402, "5"), Value::Int(5));
        assert_eq!(r.decode_text(16_403, "6"), Value::Int(6));
        assert_eq!(r.decode_text(16_402, "x"), raw("posint", "x"));
        assert_eq!(
            r.decode_text(16_404, "{1,2}"),
            Value::Array(Array {
                dims: vec![2],
                lower_bounds: Vec::new(),
                elements: vec![Value::Int(1), Value::Int(2)],
            })
        );
        assert!(matches!(r.decode_text(16_405, "{1,2}"), Value::Array(_)));
        assert_eq!(r.decode_text(16_406, "(1,x)"), raw("pair", "(1,x)"));
        assert_eq!(
            r.decode_text(16_407, r#"{"(1,x)",NULL,"(2,\"y z\")"}"#),
            Value::Array(Array {
                dims: vec![3],
                lower_bounds: Vec::new(),
                elements: vec![
                    raw("pair", "(1,x)"),
                    Value::Null,
                    raw("pair", "(2,\"y z\")")
                ],
            })
        );
        assert_eq!(r.decode_text(16_408, "[1,2)"), raw("floatrange", "[1,2)"));
        assert_eq!(r.decode_text(16_409, "1"), raw("loop_a", "1"));
    }

    #[test]
    fn extension_string_types_decode_as_text() {
        let mut r = TypeRegistry::new();
        r.insert(TypeInfo::from_catalog(16_700, "citext", 'b', 0, 0, 'S'));
        r.insert(TypeInfo::from_catalog(
            16_701, "_citext", 'b', 0, 16_700, 'A',
        ));
        r.insert(TypeInfo::from_catalog(16_702, "hstore", 'b', 0, 0, 'U'));
        // A built-in listed by the catalog again keeps its own decoder.
        r.insert(TypeInfo::from_catalog(25, "text", 'b', 0, 0, 'S'));
        assert_eq!(r.get(16_700).map(|i| i.kind), Some(TypeKind::String));
        assert_eq!(r.decode_text(16_700, "MiXed"), t("MiXed"));
        assert_eq!(
            r.decode_text(16_701, "{a,B}"),
            Value::Array(Array {
                dims: vec![2],
                lower_bounds: Vec::new(),
                elements: vec![t("a"), t("B")],
            })
        );
        assert_eq!(
            r.decode_text(16_702, "\"a\"=>\"1\""),
            raw("hstore", "\"a\"=>\"1\"")
        );
        assert_eq!(r.get(25).map(|i| i.kind), Some(TypeKind::Base));
        assert_eq!(r.decode_text(25, "x"), t("x"));
        assert_eq!(r.decode_text(1790, "cur"), t("cur"));
        assert_eq!(r.decode_text(22, "1 2"), raw("int2vector", "1 2"));
    }

    #[test]
    fn type_message_names_keep_catalog_kinds() {
        let mut r = TypeRegistry::new();
        r.insert(TypeInfo::from_catalog(16_400, "mood", 'e', 0, 0, 'E'));
        r.learn_name(16_400, "mood");
        assert_eq!(r.get(16_400).map(|i| i.kind), Some(TypeKind::Enum));
        r.learn_name(16_500, "citext");
        assert_eq!(r.get(16_500).map(|i| i.kind), Some(TypeKind::Other));
        assert_eq!(r.decode_text(16_500, "Hi"), raw("citext", "Hi"));
    }

    #[test]
    fn binary_datums() {
        let r = TypeRegistry::new();
        assert_eq!(r.decode_binary(17, &[0, 1]), Value::Bytes(vec![0, 1]));
        assert_eq!(r.decode_binary(25, b"abc"), t("abc"));
        assert_eq!(
            r.decode_binary(23, &[0, 0, 0, 5]),
            raw("int4", "\\x00000005")
        );
        assert_eq!(r.decode_binary(25, &[0xff]), raw("text", "\\xff"));
    }

    #[test]
    fn invalid_utf8_text_is_kept_raw() {
        let r = TypeRegistry::new();
        assert_eq!(
            r.codec(25).decode_bytes(b"a\xffb"),
            raw("text", "a\u{fffd}b")
        );
        assert_eq!(r.codec(23).decode_bytes(b"12"), Value::Int(12));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 1000, ..Default::default() })]

        /// Every decoder, scalar or array, returns a value for any text.
        #[test]
        fn no_text_makes_a_decoder_panic(
            oid in proptest::sample::select(BUILTINS.iter().flat_map(|b| [b.0, b.2]).collect::<Vec<_>>()),
            text in "\\PC{0,40}|[-+0-9:. BCPYMDTHSinfty]{0,30}",
        ) {
            let registry = TypeRegistry::new();
            let _ = registry.decode_text(oid, &text);
            let _ = registry.decode_binary(oid, text.as_bytes());
        }
    }
}
