//! Dates, times, timestamps and intervals: PostgreSQL's ISO output → ISO-8601 text.
//!
//! The replication connection runs with `DateStyle = ISO` and `IntervalStyle = postgres` (the
//! defaults), so values arrive as `2024-01-02 03:04:05.123+00`, `1 year 2 mons 3 days
//! 04:05:06.5`. We keep the text exact (no rounding, no time zone conversion) and only reshape
//! it into ISO-8601:
//!
//! - a `T` between date and time, and a `+hh:mm` offset (`+00` → `+00:00`; an offset with
//!   seconds, which PostgreSQL prints for historical local mean times, keeps them);
//! - BC dates use astronomical year numbering as ISO-8601's expanded years do: 1 BC is `0000`,
//!   2 BC is `-0001`;
//! - `infinity` and `-infinity` are kept as they are;
//! - intervals become ISO-8601 durations exactly as PostgreSQL itself prints them under
//!   `IntervalStyle = iso_8601`: `P1Y2M3DT4H5M6.5S`, zero as `PT0S`, and a component that is
//!   negative carries its own sign (`P-1Y-2M3DT-4H-5M-6S`), since PostgreSQL intervals mix
//!   signs per field and plain ISO-8601 has no way to say so. Text already in that style is
//!   kept.
//!
//! Each function returns `None` for text it does not recognise; the caller keeps it raw.

/// `date` → `2024-01-02`, `-0043-03-15` (44 BC), `infinity`.
pub fn date(text: &str) -> Option<String> {
    if let Some(inf) = infinity(text) {
        return Some(inf.to_owned());
    }
    let (body, bc) = strip_bc(text);
    let mut out = String::with_capacity(body.len() + 1);
    push_date(&mut out, body, bc)?;
    Some(out)
}

/// `time` → `03:04:05.123`.
pub fn time(text: &str) -> Option<String> {
    valid_time(text).then(|| text.to_owned())
}

/// `timetz` → `03:04:05.123+02:00`.
pub fn timetz(text: &str) -> Option<String> {
    let split = text.rfind(['+', '-'])?;
    let (clock, offset) = text.split_at(split);
    if !valid_time(clock) {
        return None;
    }
    let mut out = String::with_capacity(text.len() + 3);
    out.push_str(clock);
    push_offset(&mut out, offset)?;
    Some(out)
}

/// `timestamp` → `2024-01-02T03:04:05.123`.
pub fn timestamp(text: &str) -> Option<String> {
    if let Some(inf) = infinity(text) {
        return Some(inf.to_owned());
    }
    let (body, bc) = strip_bc(text);
    let (day, clock) = body.split_once(' ')?;
    if !valid_time(clock) {
        return None;
    }
    let mut out = String::with_capacity(text.len() + 1);
    push_date(&mut out, day, bc)?;
    out.push('T');
    out.push_str(clock);
    Some(out)
}

/// `timestamptz` → `2024-01-02T03:04:05.123+00:00`.
pub fn timestamptz(text: &str) -> Option<String> {
    timestamptz_common(text).or_else(|| timestamptz_general(text))
}

/// The shape nearly every `timestamptz` has, `YYYY-MM-DD HH:MM:SS[.f…]±HH[:MM[:SS]]` (four-digit
/// year, AD), checked by position instead of by searching; `None` for anything else, which
/// [`timestamptz_general`] then reads. Both give the same text for what this one accepts.
fn timestamptz_common(text: &str) -> Option<String> {
    let b = text.as_bytes();
    if b.len() < 22
        || [4, 7].iter().any(|&i| b[i] != b'-')
        || b[10] != b' '
        || [13, 16].iter().any(|&i| b[i] != b':')
        || ![0, 1, 2, 3, 5, 6, 8, 9, 11, 12, 14, 15, 17, 18]
            .iter()
            .all(|&i| b[i].is_ascii_digit())
    {
        return None;
    }
    let mut end = 19;
    if b[end] == b'.' {
        let digits = b[end + 1..]
            .iter()
            .take_while(|d| d.is_ascii_digit())
            .count();
        if digits == 0 {
            return None;
        }
        end += 1 + digits;
    }
    if !matches!(b.get(end), Some(b'+' | b'-')) {
        return None;
    }
    let mut out = String::with_capacity(text.len() + 4);
    out.push_str(text.get(..10)?);
    out.push('T');
    out.push_str(text.get(11..end)?);
    push_offset(&mut out, text.get(end..)?)?;
    Some(out)
}

/// `timestamptz` in any shape `timestamptz_out` prints (BC, five-digit years, …).
fn timestamptz_general(text: &str) -> Option<String> {
    if let Some(inf) = infinity(text) {
        return Some(inf.to_owned());
    }
    let (body, bc) = strip_bc(text);
    let (day, rest) = body.split_once(' ')?;
    let split = rest.rfind(['+', '-'])?;
    let (clock, offset) = rest.split_at(split);
    if !valid_time(clock) {
        return None;
    }
    let mut out = String::with_capacity(text.len() + 4);
    push_date(&mut out, day, bc)?;
    out.push('T');
    out.push_str(clock);
    push_offset(&mut out, offset)?;
    Some(out)
}

/// `interval` (postgres style) → ISO-8601 duration; see the module docs for the sign rules.
pub fn interval(text: &str) -> Option<String> {
    if is_iso_duration(text) {
        return Some(text.to_owned());
    }
    let mut parts = IntervalParts::default();
    if text.trim().is_empty() {
        return None;
    }
    let mut tokens = text.split(' ').filter(|t| !t.is_empty()).peekable();
    while let Some(token) = tokens.next() {
        if token.contains(':') {
            if tokens.peek().is_some() || parts.clock.is_some() {
                return None;
            }
            parts.clock = Some(parse_clock(token)?);
            continue;
        }
        let amount: i64 = token.strip_prefix('+').unwrap_or(token).parse().ok()?;
        let slot = match tokens.next()? {
            "year" | "years" => &mut parts.years,
            "mon" | "mons" => &mut parts.months,
            "day" | "days" => &mut parts.days,
            _ => return None,
        };
        if slot.is_some() {
            return None;
        }
        *slot = Some(amount);
    }
    Some(parts.to_iso())
}

#[derive(Default)]
struct IntervalParts<'a> {
    years: Option<i64>,
    months: Option<i64>,
    days: Option<i64>,
    clock: Option<Clock<'a>>,
}

/// `[-]HH:MM:SS[.frac]` of an interval; the sign applies to every field.
struct Clock<'a> {
    negative: bool,
    hours: u64,
    minutes: u64,
    seconds: &'a str,
}

impl IntervalParts<'_> {
    fn to_iso(&self) -> String {
        let mut out = String::from("P");
        let push = |out: &mut String, value: Option<i64>, unit: char| {
            if let Some(v) = value.filter(|v| *v != 0) {
                out.push_str(&v.to_string());
                out.push(unit);
            }
        };
        push(&mut out, self.years, 'Y');
        push(&mut out, self.months, 'M');
        push(&mut out, self.days, 'D');
        if let Some(clock) = &self.clock {
            let sign = if clock.negative { "-" } else { "" };
            let seconds_zero = clock.seconds.bytes().all(|b| b == b'0' || b == b'.');
            if clock.hours != 0 || clock.minutes != 0 || !seconds_zero {
                out.push('T');
            }
            if clock.hours != 0 {
                out.push_str(&format!("{sign}{}H", clock.hours));
            }
            if clock.minutes != 0 {
                out.push_str(&format!("{sign}{}M", clock.minutes));
            }
            if !seconds_zero {
                out.push_str(sign);
                out.push_str(trim_seconds(clock.seconds));
                out.push('S');
            }
        }
        if out == "P" {
            out.push_str("T0S");
        }
        out
    }
}

/// `05.500` → `5.5`, `00.25` → `0.25`, `07` → `7`.
fn trim_seconds(seconds: &str) -> &str {
    let s = if seconds.contains('.') {
        seconds.trim_end_matches('0').trim_end_matches('.')
    } else {
        seconds
    };
    let trimmed = s.trim_start_matches('0');
    if trimmed.is_empty() || trimmed.starts_with('.') {
        // keep one leading zero
        s.len()
            .checked_sub(trimmed.len() + 1)
            .and_then(|start| s.get(start..))
            .unwrap_or(s)
    } else {
        trimmed
    }
}

fn parse_clock(token: &str) -> Option<Clock<'_>> {
    let (negative, body) = match token.as_bytes().first()? {
        b'-' => (true, token.get(1..)?),
        b'+' => (false, token.get(1..)?),
        _ => (false, token),
    };
    let mut fields = body.splitn(3, ':');
    let hours = fields.next()?;
    let minutes = fields.next()?;
    let seconds = fields.next()?;
    if !all_digits(hours) || minutes.len() != 2 || !all_digits(minutes) || !valid_seconds(seconds) {
        return None;
    }
    Some(Clock {
        negative,
        hours: hours.parse().ok()?,
        minutes: minutes.parse().ok()?,
        seconds,
    })
}

fn is_iso_duration(text: &str) -> bool {
    let body = text.strip_prefix('-').unwrap_or(text);
    body.len() > 1
        && body.starts_with('P')
        && body
            .bytes()
            .all(|b| b.is_ascii_digit() || b"PYMWDTHS.-".contains(&b))
}

fn infinity(text: &str) -> Option<&'static str> {
    match text {
        "infinity" => Some("infinity"),
        "-infinity" => Some("-infinity"),
        _ => None,
    }
}

fn strip_bc(text: &str) -> (&str, bool) {
    match text.strip_suffix(" BC") {
        Some(body) => (body, true),
        None => (text, false),
    }
}

/// Appends `YYYY-MM-DD`, turning a BC year into its astronomical number.
fn push_date(out: &mut String, text: &str, bc: bool) -> Option<()> {
    let (year, month_day) = text.split_once('-')?;
    let (month, day) = month_day.split_once('-')?;
    if year.len() < 4
        || !all_digits(year)
        || month.len() != 2
        || !all_digits(month)
        || day.len() != 2
        || !all_digits(day)
    {
        return None;
    }
    if bc {
        let year: u64 = year.parse().ok()?;
        let astronomical = year.checked_sub(1)?;
        if astronomical == 0 {
            out.push_str("0000");
        } else {
            out.push_str(&format!("-{astronomical:04}"));
        }
    } else {
        out.push_str(year);
    }
    out.push('-');
    out.push_str(month);
    out.push('-');
    out.push_str(day);
    Some(())
}

/// Appends a `+HH`, `+HH:MM` or `+HH:MM:SS` offset as `+HH:MM[:SS]`.
fn push_offset(out: &mut String, offset: &str) -> Option<()> {
    let sign = offset.get(..1)?;
    let body = offset.get(1..)?;
    let mut fields = body.split(':');
    let mut part = || match fields.next() {
        Some(f) if f.len() == 2 && all_digits(f) => Some(Some(f)),
        Some(_) => None,
        None => Some(None),
    };
    let (hours, minutes, seconds) = (part()?, part()?, part()?);
    if part()?.is_some() {
        return None;
    }
    out.push_str(sign);
    out.push_str(hours?);
    out.push(':');
    out.push_str(minutes.unwrap_or("00"));
    if let Some(seconds) = seconds {
        out.push(':');
        out.push_str(seconds);
    }
    Some(())
}

/// `HH:MM:SS[.frac]` as `time_out` prints it (hour 24 included).
fn valid_time(text: &str) -> bool {
    let mut fields = text.splitn(3, ':');
    let (Some(h), Some(m), Some(s)) = (fields.next(), fields.next(), fields.next()) else {
        return false;
    };
    h.len() == 2 && all_digits(h) && m.len() == 2 && all_digits(m) && valid_seconds(s)
}

/// `SS` or `SS.fff…`.
fn valid_seconds(text: &str) -> bool {
    let (whole, frac) = match text.split_once('.') {
        Some((w, f)) => (w, Some(f)),
        None => (text, None),
    };
    whole.len() == 2 && all_digits(whole) && frac.is_none_or(|f| !f.is_empty() && all_digits(f))
}

fn all_digits(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn the_common_timestamptz_shape_reads_as_the_general_one(
            text in "[0-9]{4,5}-[0-9]{2}-[0-9]{2} [0-9]{1,2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{0,7})?[+-][0-9]{1,3}(:[0-9]{1,2}){0,3}( BC)?|[-0-9 :.+BC]{0,30}"
        ) {
            if let Some(common) = timestamptz_common(&text) {
                proptest::prop_assert_eq!(Some(common), timestamptz_general(&text));
            }
        }

        #[test]
        fn every_well_formed_timestamptz_takes_the_quick_path(
            text in "[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,6})?[+-][0-9]{2}(:[0-9]{2}){0,2}"
        ) {
            let common = timestamptz_common(&text);
            proptest::prop_assert!(common.is_some(), "{}", text);
            proptest::prop_assert_eq!(common, timestamptz_general(&text));
        }
    }

    #[test]
    fn common_timestamptz_shapes_take_the_quick_path() {
        for (text, iso) in [
            ("2024-01-02 03:04:05+00", "2024-01-02T03:04:05+00:00"),
            ("2024-01-02 03:04:05.5-08", "2024-01-02T03:04:05.5-08:00"),
            (
                "1999-12-31 23:59:59.123456+05:30",
                "1999-12-31T23:59:59.123456+05:30",
            ),
            (
                "1900-01-01 00:00:00+00:09:21",
                "1900-01-01T00:00:00+00:09:21",
            ),
        ] {
            assert_eq!(timestamptz_common(text).as_deref(), Some(iso), "{text}");
            assert_eq!(timestamptz(text).as_deref(), Some(iso), "{text}");
        }
        for other in [
            "2024-01-02 03:04:05+00 BC",
            "12024-01-02 03:04:05+00",
            "2024-01-02 03:04:05.+00",
            "2024-01-02 03:04:05",
            "infinity",
        ] {
            assert_eq!(timestamptz_common(other), None, "{other}");
        }
    }

    #[test]
    fn dates() {
        assert_eq!(date("2024-01-02").as_deref(), Some("2024-01-02"));
        assert_eq!(date("0001-01-01 BC").as_deref(), Some("0000-01-01"));
        assert_eq!(date("0044-03-15 BC").as_deref(), Some("-0043-03-15"));
        assert_eq!(date("4714-11-24 BC").as_deref(), Some("-4713-11-24"));
        assert_eq!(date("294276-12-31").as_deref(), Some("294276-12-31"));
        assert_eq!(date("infinity").as_deref(), Some("infinity"));
        assert_eq!(date("-infinity").as_deref(), Some("-infinity"));
        assert_eq!(date("0000-01-01 BC"), None);
        assert_eq!(date("01/02/2024"), None);
        assert_eq!(date("2024-1-02"), None);
    }

    #[test]
    fn times() {
        assert_eq!(time("03:04:05").as_deref(), Some("03:04:05"));
        assert_eq!(time("23:59:59.999999").as_deref(), Some("23:59:59.999999"));
        assert_eq!(time("24:00:00").as_deref(), Some("24:00:00"));
        assert_eq!(time("3:04:05"), None);
        assert_eq!(time("03:04"), None);
        assert_eq!(time("03:04:05."), None);
    }

    #[test]
    fn times_with_zone() {
        assert_eq!(timetz("03:04:05+02").as_deref(), Some("03:04:05+02:00"));
        assert_eq!(
            timetz("03:04:05.5-05:30").as_deref(),
            Some("03:04:05.5-05:30")
        );
        assert_eq!(timetz("00:00:00+00").as_deref(), Some("00:00:00+00:00"));
        assert_eq!(
            timetz("12:00:00+05:53:28").as_deref(),
            Some("12:00:00+05:53:28")
        );
        assert_eq!(timetz("03:04:05"), None);
        assert_eq!(timetz("03:04:05+2"), None);
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            timestamp("2024-01-02 03:04:05.123").as_deref(),
            Some("2024-01-02T03:04:05.123")
        );
        assert_eq!(
            timestamp("0044-03-15 12:00:00 BC").as_deref(),
            Some("-0043-03-15T12:00:00")
        );
        assert_eq!(timestamp("infinity").as_deref(), Some("infinity"));
        assert_eq!(timestamp("-infinity").as_deref(), Some("-infinity"));
        assert_eq!(timestamp("2024-01-02T03:04:05"), None);
        assert_eq!(timestamp("2024-01-02"), None);
    }

    #[test]
    fn timestamps_with_zone() {
        assert_eq!(
            timestamptz("2024-01-02 03:04:05.123+00").as_deref(),
            Some("2024-01-02T03:04:05.123+00:00")
        );
        assert_eq!(
            timestamptz("2024-01-02 03:04:05-07:30").as_deref(),
            Some("2024-01-02T03:04:05-07:30")
        );
        assert_eq!(
            timestamptz("0001-01-01 00:00:00+00:53:28 BC").as_deref(),
            Some("0000-01-01T00:00:00+00:53:28")
        );
        assert_eq!(timestamptz("infinity").as_deref(), Some("infinity"));
        assert_eq!(timestamptz("-infinity").as_deref(), Some("-infinity"));
        assert_eq!(timestamptz("2024-01-02 03:04:05"), None);
        for bad_offset in ["+5", "+05:3", "+05:30:15:00", "+05:", "+"] {
            let text = format!("2024-01-02 03:04:05{bad_offset}");
            assert_eq!(timestamptz(&text), None, "{text}");
        }
    }

    #[test]
    fn intervals_become_iso_durations() {
        let cases = [
            ("1 year 2 mons 3 days 04:05:06.5", "P1Y2M3DT4H5M6.5S"),
            ("00:00:00", "PT0S"),
            ("1 day", "P1D"),
            ("2 years", "P2Y"),
            ("3 mons", "P3M"),
            ("-1 days +02:03:00", "P-1DT2H3M"),
            ("-00:00:01", "PT-1S"),
            ("-1 years -2 mons +3 days -04:05:06", "P-1Y-2M3DT-4H-5M-6S"),
            ("1 year -2 mons", "P1Y-2M"),
            ("838:00:00", "PT838H"),
            ("00:00:00.000001", "PT0.000001S"),
            ("00:00:10.25", "PT10.25S"),
            ("1 day 00:00:00", "P1D"),
            ("178956970 years 7 mons", "P178956970Y7M"),
            ("P1Y2M", "P1Y2M"),
            ("PT0S", "PT0S"),
        ];
        for (pg, iso) in cases {
            assert_eq!(interval(pg).as_deref(), Some(iso), "{pg:?}");
        }
        for bad in [
            "",
            "1 fortnight",
            "1",
            "@ 1 day",
            "1-2",
            "01:02",
            "1 day 1 day",
            "P",
        ] {
            assert_eq!(interval(bad), None, "{bad:?}");
        }
    }
}
