//! WAL positions (LSNs) as PostgreSQL writes them: two hexadecimal halves, `16/B374D848`.

/// Formats an LSN the way PostgreSQL does (`16/B374D848`).
pub fn format_lsn(lsn: impl Into<u64>) -> String {
    Lsn(lsn.into()).to_string()
}

/// Parses an LSN written the way PostgreSQL does (`16/B374D848`).
pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.trim().split_once('/')?;
    let hi = u32::from_str_radix(hi, 16).ok()?;
    let lo = u32::from_str_radix(lo, 16).ok()?;
    Some((u64::from(hi) << 32) | u64::from(lo))
}

/// A position in PostgreSQL's write-ahead log. Ordered like the log; shown as PostgreSQL shows
/// it (`16/B374D848`); stored (checkpoints, event records) as the plain number.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct Lsn(pub u64);

impl Lsn {
    /// The start of the log: "no position yet".
    pub const ZERO: Lsn = Lsn(0);

    /// Parses an LSN written the way PostgreSQL does (`16/B374D848`).
    pub fn parse(s: &str) -> Option<Lsn> {
        parse_lsn(s).map(Lsn)
    }

    /// Whether this is [`Lsn::ZERO`].
    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    /// The position just before this one (for "everything before a record").
    pub fn before(self) -> Lsn {
        Lsn(self.0.saturating_sub(1))
    }

    /// How many bytes of WAL lie from `earlier` to this position (0 when `earlier` is later).
    pub fn bytes_since(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}

impl std::fmt::Display for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl std::fmt::Debug for Lsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// The bytes of WAL from `rhs` to `self` (like subtracting the plain numbers: `rhs` must not
/// be later).
impl std::ops::Sub for Lsn {
    type Output = u64;

    fn sub(self, rhs: Lsn) -> u64 {
        self.0 - rhs.0
    }
}

impl From<u64> for Lsn {
    fn from(lsn: u64) -> Lsn {
        Lsn(lsn)
    }
}

impl From<Lsn> for u64 {
    fn from(lsn: Lsn) -> u64 {
        lsn.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_text_round_trips() {
        assert_eq!(parse_lsn("16/B374D848"), Some(0x16_B374_D848));
        assert_eq!(format_lsn(0x16_B374_D848_u64), "16/B374D848");
        assert_eq!(parse_lsn("nope"), None);
        let lsn = Lsn::parse("16/B374D848").unwrap();
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert!(Lsn(1) < lsn && lsn.before() < lsn);
        assert_eq!(lsn.bytes_since(Lsn(0x16_B374_D800)), 0x48);
        assert_eq!(serde_json::to_string(&lsn).unwrap(), "97500059720");
    }
}
