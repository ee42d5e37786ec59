//! Sizes as qemu-img reads them: an integer with an optional binary suffix.

use std::fmt;

/// Smallest named volume: the smallest ext4 filesystem with a journal (2048 blocks of 4 KiB).
/// Equal to `disk::ext4::MIN_SIZE` (a test in `engine::volumes` holds them together; this
/// module imports nothing from the rest of the crate).
pub const MIN_VOLUME_SIZE: u64 = 8 << 20;
/// Largest named volume the ext4 formatter makes (64 TiB; beyond it the group descriptor
/// table would need `meta_bg`). Equal to `disk::ext4::MAX_SIZE`.
pub const MAX_VOLUME_SIZE: u64 = 64 << 40;

/// Why a size string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    #[error("size is empty")]
    Empty,
    #[error("size {0:?} is not a whole number with an optional unit K, M, G, T or P (e.g. 10G)")]
    Malformed(String),
    #[error("size {0:?} is zero")]
    Zero(String),
    #[error("size {0:?} is too large")]
    Overflow(String),
}

/// Unit suffixes, each a power of 1024, as qemu-img accepts them.
const UNITS: [(char, u32); 5] = [('K', 10), ('M', 20), ('G', 30), ('T', 40), ('P', 50)];

/// Parses `"10G"`, `"512M"`, `"1024"` (bytes), `"2GiB"`, `"1tb"`: digits, then optionally one
/// of `K M G T P` (any case) optionally followed by `B` or `iB`. Zero, signs, fractions and
/// overflow are refused.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(SizeError::Empty);
    }
    let malformed = || SizeError::Malformed(text.to_owned());
    let digits_end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(digits_end);
    if digits.is_empty() {
        return Err(malformed());
    }
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        upper => {
            let mut chars = upper.chars();
            let unit = chars.next().ok_or_else(malformed)?;
            let rest = chars.as_str();
            if !matches!(rest, "" | "B" | "IB") {
                return Err(malformed());
            }
            UNITS
                .iter()
                .find(|(u, _)| *u == unit)
                .map(|(_, shift)| *shift)
                .ok_or_else(malformed)?
        }
    };
    let number: u64 = digits
        .parse()
        .map_err(|_| SizeError::Overflow(text.to_owned()))?;
    if number == 0 {
        return Err(SizeError::Zero(text.to_owned()));
    }
    number
        .checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::Overflow(text.to_owned()))
}

/// Formats a size in the largest unit that divides it exactly: `10G`, `1536M`, `1000`.
pub fn format_size(bytes: u64) -> String {
    Size(bytes).to_string()
}

struct Size(u64);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, shift) in UNITS.iter().rev() {
            let scale = 1u64 << shift;
            if self.0 != 0 && self.0.is_multiple_of(scale) {
                return write!(f, "{}{unit}", self.0 / scale);
            }
        }
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_qemu_img_spellings() {
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1tb"), Ok(1 << 40));
        assert_eq!(parse_size("3k"), Ok(3 << 10));
        assert_eq!(parse_size("1P"), Ok(1 << 50));
        assert_eq!(parse_size("100b"), Ok(100));
    }

    #[test]
    fn refuses_bad_sizes() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert_eq!(parse_size("0"), Err(SizeError::Zero("0".into())));
        assert_eq!(parse_size("0G"), Err(SizeError::Zero("0G".into())));
        for bad in [
            "-1G", "1.5G", "G", "10X", "10GG", "10 G", "10Gb2", "+5", "1e9", "10iB",
        ] {
            assert_eq!(
                parse_size(bad),
                Err(SizeError::Malformed(bad.into())),
                "{bad}"
            );
        }
        assert_eq!(
            parse_size("16384P"),
            Err(SizeError::Overflow("16384P".into()))
        );
        assert_eq!(
            parse_size("99999999999999999999"),
            Err(SizeError::Overflow("99999999999999999999".into()))
        );
    }

    #[test]
    fn formats_in_the_largest_exact_unit() {
        assert_eq!(format_size(10 << 30), "10G");
        assert_eq!(format_size(1536 << 20), "1536M");
        assert_eq!(format_size(1000), "1000");
        assert_eq!(format_size(0), "0");
        assert_eq!(format_size(MIN_VOLUME_SIZE), "8M");
        assert_eq!(format_size(MAX_VOLUME_SIZE), "64T");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn format_then_parse_round_trips(bytes in 1u64..=u64::MAX) {
            prop_assert_eq!(parse_size(&format_size(bytes)), Ok(bytes));
        }

        #[test]
        fn unit_multiples_round_trip(n in 1u64..=8192, unit in 0usize..5) {
            let bytes = n << UNITS[unit].1;
            prop_assert_eq!(parse_size(&format_size(bytes)), Ok(bytes));
        }
    }
}
