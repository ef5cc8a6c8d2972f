//! Common built-in types in PostgreSQL's binary send format → the same [`Value`]s their text
//! output decodes to.
//!
//! The initial snapshot reads tables whose columns all have a [`BinaryKind`] with
//! `COPY … (FORMAT binary)`: the server then skips its most expensive output functions
//! (timestamps, numerics, hex `bytea`) and the host parses fixed-width integers instead of
//! text. That is only worth doing if nothing downstream can tell, so every decoder here
//! produces exactly the value [`super::scalar::decode`] gives for the text the server would
//! have printed under the snapshot session's settings (`DateStyle = ISO`, and a UTC time zone
//! for `timestamptz`: other zones print offsets this module cannot know, so such columns stay
//! in text). Malformed input becomes [`Value::Raw`] holding `\x` and the bytes, never a panic.

use super::temporal::Civil;
use crate::event::{TemporalKind, Value};

/// A type read in binary: the column's own type oid must be one of these built-ins (a domain
/// or an array is read as text).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryKind {
    /// `bool`: one byte.
    Bool,
    /// `int2`
    Int2,
    /// `int4`
    Int4,
    /// `int8`
    Int8,
    /// `oid`
    Oid,
    /// `float8` (`float4` stays text: widening it would not give the value its text parses to)
    Float8,
    /// `text`, `varchar`, `bpchar`, `name`: the characters.
    Text,
    /// `bytea`: the bytes themselves.
    Bytea,
    /// `uuid`: 16 bytes.
    Uuid,
    /// `json`: the text.
    Json,
    /// `jsonb`: a version byte (1) and the text.
    Jsonb,
    /// `numeric`: base-10000 digits.
    Numeric,
    /// `date`: days since 2000-01-01.
    Date,
    /// `time`: microseconds since midnight.
    Time,
    /// `timestamp`: microseconds since 2000-01-01 00:00.
    Timestamp,
    /// `timestamptz` in a UTC session: microseconds since 2000-01-01 00:00 UTC.
    TimestampTz,
}

impl BinaryKind {
    /// The binary kind of a column of type `oid`, if it has one; `timestamptz` only when the
    /// session's time zone is UTC.
    pub fn of(oid: u32, utc_session: bool) -> Option<BinaryKind> {
        Some(match oid {
            16 => BinaryKind::Bool,
            21 => BinaryKind::Int2,
            23 => BinaryKind::Int4,
            20 => BinaryKind::Int8,
            26 => BinaryKind::Oid,
            701 => BinaryKind::Float8,
            19 | 25 | 1042 | 1043 => BinaryKind::Text,
            17 => BinaryKind::Bytea,
            2950 => BinaryKind::Uuid,
            114 => BinaryKind::Json,
            3802 => BinaryKind::Jsonb,
            1700 => BinaryKind::Numeric,
            1082 => BinaryKind::Date,
            1083 => BinaryKind::Time,
            1114 => BinaryKind::Timestamp,
            1184 if utc_session => BinaryKind::TimestampTz,
            _ => return None,
        })
    }

    /// Decodes one non-NULL field; `type_name` names it in the raw fallback.
    pub fn decode(self, type_name: &str, bytes: &[u8]) -> Value {
        self.try_decode(bytes)
            .unwrap_or_else(|| super::raw_hex(type_name, bytes))
    }

    fn try_decode(self, bytes: &[u8]) -> Option<Value> {
        Some(match self {
            BinaryKind::Bool => match bytes {
                [0] => Value::Bool(false),
                [1] => Value::Bool(true),
                _ => return None,
            },
            BinaryKind::Int2 => Value::Int(i16::from_be_bytes(bytes.try_into().ok()?).into()),
            BinaryKind::Int4 => Value::Int(i32::from_be_bytes(bytes.try_into().ok()?).into()),
            BinaryKind::Int8 => Value::Int(i64::from_be_bytes(bytes.try_into().ok()?)),
            BinaryKind::Oid => Value::Int(u32::from_be_bytes(bytes.try_into().ok()?).into()),
            BinaryKind::Float8 => Value::Float(f64::from_be_bytes(bytes.try_into().ok()?)),
            BinaryKind::Text => Value::Text(utf8(bytes)?),
            BinaryKind::Bytea => Value::Bytes(bytes.to_vec()),
            BinaryKind::Uuid => Value::Uuid(uuid(bytes.try_into().ok()?)),
            BinaryKind::Json => Value::Json(utf8(bytes)?),
            BinaryKind::Jsonb => Value::Json(utf8(bytes.strip_prefix(&[1])?)?),
            BinaryKind::Numeric => Value::Numeric(numeric(bytes)?),
            BinaryKind::Date => Value::Temporal(TemporalKind::Date, date(be_i32(bytes)?)),
            BinaryKind::Time => Value::Temporal(TemporalKind::Time, time(be_i64(bytes)?)?),
            BinaryKind::Timestamp => {
                Value::Temporal(TemporalKind::Timestamp, timestamp(be_i64(bytes)?, ""))
            }
            BinaryKind::TimestampTz => Value::Temporal(
                TemporalKind::TimestampTz,
                timestamp(be_i64(bytes)?, "+00:00"),
            ),
        })
    }
}

fn utf8(bytes: &[u8]) -> Option<String> {
    super::utf8(bytes).ok().map(str::to_owned)
}

fn be_i32(bytes: &[u8]) -> Option<i32> {
    Some(i32::from_be_bytes(bytes.try_into().ok()?))
}

fn be_i64(bytes: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(bytes.try_into().ok()?))
}

fn uuid(bytes: [u8; 16]) -> String {
    let hex = hex::encode(bytes);
    let mut out = String::with_capacity(36);
    for (i, range) in [0..8, 8..12, 12..16, 16..20, 20..32]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            out.push('-');
        }
        out.push_str(&hex[range]);
    }
    out
}

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

/// `numeric` as `numeric_out` prints it: the integer part without leading zeros (`0` when
/// there is none), then exactly `dscale` fraction digits.
fn numeric(bytes: &[u8]) -> Option<String> {
    let word = |i: usize| -> Option<u16> {
        Some(u16::from_be_bytes(bytes.get(i..i + 2)?.try_into().ok()?))
    };
    let (ndigits, weight, sign, dscale) = (word(0)?, word(2)? as i16, word(4)?, word(6)?);
    match sign {
        NUMERIC_NAN => return Some("NaN".into()),
        NUMERIC_PINF => return Some("Infinity".into()),
        NUMERIC_NINF => return Some("-Infinity".into()),
        NUMERIC_POS | NUMERIC_NEG => {}
        _ => return None,
    }
    if bytes.len() != 8 + 2 * usize::from(ndigits) || dscale > 0x3FFF {
        return None;
    }
    // Checked once up front, so the digits can then be read without allocating a copy.
    if (0..usize::from(ndigits)).any(|i| word(8 + 2 * i).is_none_or(|d| d >= 10_000)) {
        return None;
    }
    let digit = |d: i32| -> u16 {
        usize::try_from(d)
            .ok()
            .filter(|d| *d < usize::from(ndigits))
            .and_then(|d| word(8 + 2 * d))
            .unwrap_or(0)
    };
    let weight = i32::from(weight);
    let mut out = Vec::with_capacity(4 * (weight.max(0) as usize + 1) + usize::from(dscale) + 2);
    if sign == NUMERIC_NEG {
        out.push(b'-');
    }
    if weight < 0 {
        out.push(b'0');
    }
    for d in 0..=weight {
        // The first group without leading zeros (but at least one digit), as numeric_out.
        match d {
            0 => push_padded(&mut out, digit(0).into(), 1),
            _ => push_padded(&mut out, digit(d).into(), 4),
        }
    }
    if dscale > 0 {
        out.push(b'.');
        let start = out.len();
        let mut d = weight + 1;
        while out.len() - start < usize::from(dscale) {
            push_padded(&mut out, digit(d).into(), 4);
            d += 1;
        }
        out.truncate(start + usize::from(dscale));
    }
    let out = super::utf8_string(out).ok()?;
    super::scalar::is_numeric(&out).then_some(out)
}

const USECS_PER_DAY: i64 = 86_400_000_000;

/// `date` (days since 2000-01-01) → `2024-01-02`, `-0043-03-15`, `infinity`.
fn date(days: i32) -> String {
    match days {
        i32::MAX => "infinity".into(),
        i32::MIN => "-infinity".into(),
        _ => {
            let mut out = Ascii::default();
            push_date(&mut out, days.into());
            out.into_string()
        }
    }
}

/// `time` (microseconds since midnight, `24:00:00` included) → `03:04:05.123`.
fn time(micros: i64) -> Option<String> {
    if !(0..=USECS_PER_DAY).contains(&micros) {
        return None;
    }
    let mut out = Ascii::default();
    push_clock(&mut out, micros);
    Some(out.into_string())
}

/// `timestamp[tz]` (microseconds since 2000-01-01 00:00) → `2024-01-02T03:04:05.5` and
/// `offset`, or `infinity`/`-infinity`.
fn timestamp(micros: i64, offset: &str) -> String {
    match micros {
        i64::MAX => "infinity".into(),
        i64::MIN => "-infinity".into(),
        _ => {
            let mut out = Ascii::default();
            push_date(&mut out, micros.div_euclid(USECS_PER_DAY));
            out.put(b"T");
            push_clock(&mut out, micros.rem_euclid(USECS_PER_DAY));
            out.put(offset.as_bytes());
            out.into_string()
        }
    }
}

/// Appends the proleptic Gregorian date `days` after 2000-01-01 as `YYYY-MM-DD`, years before
/// 1 in astronomical numbering (1 BC is `0000`, 2 BC `-0001`) and years after 9999 with a `+`,
/// as the text path writes them.
fn push_date(out: &mut impl Digits, days: i64) {
    let Civil { year, month, day } = Civil::from_days(days);
    if let Ok(year @ 0..=9999) = u32::try_from(year) {
        // Nearly every date: ten bytes, written in one go.
        let [y1, y2, y3, y4] = fixed::<4>(year.into());
        let ([m1, m2], [d1, d2]) = (fixed::<2>(month.into()), fixed::<2>(day.into()));
        out.put(&[y1, y2, y3, y4, b'-', m1, m2, b'-', d1, d2]);
        return;
    }
    out.put(if year < 0 { b"-" } else { b"+" });
    push_padded(out, year.unsigned_abs(), 4);
    out.put(b"-");
    out.put(&fixed::<2>(month.into()));
    out.put(b"-");
    out.put(&fixed::<2>(day.into()));
}

/// Appends `HH:MM:SS` and the fraction without trailing zeros, as `DateStyle = ISO` prints.
fn push_clock(out: &mut impl Digits, micros: i64) {
    let micros = micros.unsigned_abs();
    let seconds = micros / 1_000_000;
    // At most 24 hours: every field has two digits.
    let [h1, h2] = fixed::<2>(seconds / 3600);
    let [m1, m2] = fixed::<2>(seconds / 60 % 60);
    let [s1, s2] = fixed::<2>(seconds % 60);
    out.put(&[h1, h2, b':', m1, m2, b':', s1, s2]);
    let fraction = micros % 1_000_000;
    if fraction > 0 {
        // Six digits after the point, trailing zeros dropped (as the server prints them).
        let digits = fixed::<6>(fraction);
        let kept = digits.iter().rposition(|&d| d != b'0').map_or(0, |i| i + 1);
        let [a, b, c, d, e, f] = digits;
        out.put(&[b'.', a, b, c, d, e, f][..=kept]);
    }
}

/// Where decimal text is written: a `Vec` for numerics (any length), [`Ascii`] on the stack
/// for dates and clocks (allocated once, at their final length). Text here is ASCII bytes
/// checked once at the end: `core::fmt`, and then pushing `char`s into a `String` one by one,
/// were each a visible share of a snapshot's CPU.
trait Digits {
    fn put(&mut self, bytes: &[u8]);
}

impl Digits for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// A date, clock or timestamp being written: at most 35 bytes (`-294276-12-31T23:59:59.999999`
/// and an offset).
struct Ascii {
    buf: [u8; 40],
    len: usize,
}

impl Default for Ascii {
    fn default() -> Self {
        Ascii {
            buf: [0; 40],
            len: 0,
        }
    }
}

impl Digits for Ascii {
    fn put(&mut self, bytes: &[u8]) {
        // Never too long (see above); if it were, the text would be cut short, not a panic.
        if let Some(dst) = self.buf.get_mut(self.len..self.len + bytes.len()) {
            dst.copy_from_slice(bytes);
            self.len += bytes.len();
        }
    }
}

impl Ascii {
    fn into_string(self) -> String {
        super::utf8(&self.buf[..self.len])
            .map(str::to_owned)
            .unwrap_or_default()
    }
}

/// Appends `n` in decimal, zero-padded to `width` digits.
fn push_padded(out: &mut impl Digits, n: u64, width: usize) {
    // Numeric groups and most years are at most six digits: write those by position, with
    // no loop and no copy call.
    let len = width.max(n.checked_ilog10().map_or(1, |l| l as usize + 1));
    match len {
        1 => out.put(&fixed::<1>(n)),
        2 => out.put(&fixed::<2>(n)),
        3 => out.put(&fixed::<3>(n)),
        4 => out.put(&fixed::<4>(n)),
        5 => out.put(&fixed::<5>(n)),
        6 => out.put(&fixed::<6>(n)),
        _ => push_padded_any(out, n, width),
    }
}

/// The last `N` decimal digits of `n`, zero-padded.
fn fixed<const N: usize>(mut n: u64) -> [u8; N] {
    let mut digits = [b'0'; N];
    for d in digits.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    digits
}

/// [`push_padded`] for any number and width.
fn push_padded_any(out: &mut impl Digits, mut n: u64, width: usize) {
    let mut digits = [b'0'; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for _ in (digits.len() - i)..width {
        out.put(b"0");
    }
    out.put(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(kind: BinaryKind, bytes: &[u8]) -> Value {
        kind.decode("t", bytes)
    }

    fn numeric_bytes(weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Vec<u8> {
        let mut out = Vec::new();
        for word in [digits.len() as u16, weight as u16, sign, dscale] {
            out.extend(word.to_be_bytes());
        }
        for digit in digits {
            out.extend(digit.to_be_bytes());
        }
        out
    }

    fn num(weight: i16, sign: u16, dscale: u16, digits: &[u16]) -> Value {
        d(
            BinaryKind::Numeric,
            &numeric_bytes(weight, sign, dscale, digits),
        )
    }

    fn n(text: &str) -> Value {
        Value::Numeric(text.into())
    }

    #[test]
    fn integers_floats_and_bools() {
        assert_eq!(d(BinaryKind::Int2, &(-7i16).to_be_bytes()), Value::Int(-7));
        assert_eq!(
            d(BinaryKind::Int4, &(1i32 << 30).to_be_bytes()),
            Value::Int(1 << 30)
        );
        assert_eq!(
            d(BinaryKind::Int8, &i64::MIN.to_be_bytes()),
            Value::Int(i64::MIN)
        );
        assert_eq!(
            d(BinaryKind::Oid, &u32::MAX.to_be_bytes()),
            Value::Int(4_294_967_295)
        );
        assert_eq!(
            d(BinaryKind::Float8, &1.25f64.to_be_bytes()),
            Value::Float(1.25)
        );
        assert_eq!(d(BinaryKind::Bool, &[1]), Value::Bool(true));
        assert_eq!(d(BinaryKind::Bool, &[0]), Value::Bool(false));
    }

    #[test]
    fn malformed_fields_are_kept_raw() {
        let raw = |text: &str| Value::Raw {
            type_name: "t".into(),
            text: text.into(),
        };
        assert_eq!(d(BinaryKind::Int4, &[1, 2]), raw("\\x0102"));
        assert_eq!(d(BinaryKind::Bool, &[2]), raw("\\x02"));
        assert_eq!(d(BinaryKind::Text, &[0xff]), raw("\\xff"));
        assert_eq!(d(BinaryKind::Jsonb, b"\x02{}"), raw("\\x027b7d"));
        assert_eq!(
            d(BinaryKind::Uuid, &[0; 15]),
            raw(&format!("\\x{}", "00".repeat(15)))
        );
        assert!(matches!(num(0, 0x1234, 0, &[1]), Value::Raw { .. }));
        assert!(matches!(num(0, 0, 0, &[10_000]), Value::Raw { .. }));
        assert!(matches!(
            d(BinaryKind::Numeric, &[0, 2, 0, 0, 0, 0, 0, 0, 0, 1]),
            Value::Raw { .. }
        ));
        assert!(matches!(
            d(BinaryKind::Time, &(-1i64).to_be_bytes()),
            Value::Raw { .. }
        ));
    }

    #[test]
    fn text_json_bytes_and_uuids() {
        assert_eq!(
            d(BinaryKind::Text, "héllo ".as_bytes()),
            Value::Text("héllo ".into())
        );
        assert_eq!(
            d(BinaryKind::Json, b"{\"a\": 1}"),
            Value::Json("{\"a\": 1}".into())
        );
        assert_eq!(
            d(BinaryKind::Jsonb, b"\x01{\"a\": 1}"),
            Value::Json("{\"a\": 1}".into())
        );
        assert_eq!(d(BinaryKind::Bytea, &[0, 255]), Value::Bytes(vec![0, 255]));
        let id: Vec<u8> = (0u8..16).map(|i| i * 17).collect();
        assert_eq!(
            d(BinaryKind::Uuid, &id),
            Value::Uuid("00112233-4455-6677-8899-aabbccddeeff".into())
        );
    }

    #[test]
    fn numerics_print_as_numeric_out_does() {
        assert_eq!(num(0, NUMERIC_POS, 0, &[]), n("0"));
        assert_eq!(num(0, NUMERIC_POS, 3, &[]), n("0.000"));
        assert_eq!(num(0, NUMERIC_POS, 2, &[1, 2500]), n("1.25"));
        assert_eq!(num(1, NUMERIC_NEG, 0, &[12, 3456]), n("-123456"));
        assert_eq!(num(2, NUMERIC_POS, 0, &[1]), n("100000000"));
        assert_eq!(num(-1, NUMERIC_POS, 6, &[1200]), n("0.120000"));
        assert_eq!(num(-2, NUMERIC_NEG, 5, &[5000]), n("-0.00005"));
        assert_eq!(num(0, NUMERIC_POS, 1, &[7, 9999]), n("7.9"));
        assert_eq!(num(0, NUMERIC_NAN, 0, &[]), n("NaN"));
        assert_eq!(num(0, NUMERIC_PINF, 0, &[]), n("Infinity"));
        assert_eq!(num(0, NUMERIC_NINF, 0, &[]), n("-Infinity"));
    }

    fn temporal_text(value: Value) -> String {
        match value {
            Value::Temporal(_, text) => text,
            other => panic!("not temporal: {other:?}"),
        }
    }

    #[test]
    fn dates_and_times_match_the_text_path() {
        let date = |days: i32| temporal_text(d(BinaryKind::Date, &days.to_be_bytes()));
        assert_eq!(date(0), "2000-01-01");
        assert_eq!(date(-1), "1999-12-31");
        assert_eq!(date(59), "2000-02-29");
        assert_eq!(date(i32::MAX), "infinity");
        assert_eq!(date(i32::MIN), "-infinity");
        // 0001-01-01 is 730119 days before 2000-01-01; the day before is 1 BC, year 0000.
        assert_eq!(date(-730_119), "0001-01-01");
        assert_eq!(date(-730_120), "0000-12-31");
        assert_eq!(date(-730_120 - 366), "-0001-12-31");
        assert_eq!(date(2_921_940), "+10000-01-01");
        let ts = |micros: i64, kind| temporal_text(d(kind, &micros.to_be_bytes()));
        assert_eq!(ts(0, BinaryKind::Timestamp), "2000-01-01T00:00:00");
        assert_eq!(ts(-1, BinaryKind::Timestamp), "1999-12-31T23:59:59.999999");
        assert_eq!(
            ts(3_723_500_000, BinaryKind::TimestampTz),
            "2000-01-01T01:02:03.5+00:00"
        );
        assert_eq!(ts(i64::MAX, BinaryKind::TimestampTz), "infinity");
        assert_eq!(ts(86_400_000_000, BinaryKind::Time), "24:00:00");
        assert_eq!(ts(45_296_000_010, BinaryKind::Time), "12:34:56.00001");
    }

    #[test]
    fn clocks_agree_with_formatting_over_a_day() {
        let reference = |micros: i64| {
            let (s, fraction) = (micros / 1_000_000, micros % 1_000_000);
            let clock = format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
            match fraction {
                0 => clock,
                f => format!("{clock}.{}", format!("{f:06}").trim_end_matches('0')),
            }
        };
        let time = |micros: i64| temporal_text(d(BinaryKind::Time, &micros.to_be_bytes()));
        let mut micros = 0;
        while micros <= 86_400_000_000 {
            assert_eq!(time(micros), reference(micros), "{micros}");
            micros += 7_777_777 + micros % 1_000;
        }
        for micros in [
            1,
            10,
            100_000,
            999_999,
            1_000_000,
            86_399_999_999,
            86_400_000_000,
        ] {
            assert_eq!(time(micros), reference(micros), "{micros}");
        }
    }

    #[test]
    fn padded_numbers() {
        let padded = |n, width| {
            let mut out = Vec::new();
            push_padded(&mut out, n, width);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(padded(0, 0), "0");
        assert_eq!(padded(0, 2), "00");
        assert_eq!(padded(7, 4), "0007");
        assert_eq!(padded(12345, 4), "12345");
        assert_eq!(padded(u64::MAX, 2), u64::MAX.to_string());
        assert_eq!(padded(99, 2), "99");
        assert_eq!(padded(100, 2), "100");
        assert_eq!(padded(9999, 4), "9999");
        assert_eq!(padded(10_000, 4), "10000");
        assert_eq!(padded(42, 6), "000042");
    }

    #[test]
    fn binary_dates_agree_with_parsed_text_over_many_days() {
        // Each day from 4713 BC to 10188 AD, printed as the server would print it, through the
        // text decoder: the same text as from the binary one.
        for days in (-2_451_545..3_000_000).step_by(97) {
            let Civil { year, month, day } = Civil::from_days(days);
            let text = if year <= 0 {
                format!("{:04}-{month:02}-{day:02} BC", 1 - year)
            } else {
                format!("{year:04}-{month:02}-{day:02}")
            };
            assert_eq!(
                super::super::temporal::date(&text).as_deref(),
                Some(date(days as i32).as_str()),
                "{text}"
            );
        }
    }
}
