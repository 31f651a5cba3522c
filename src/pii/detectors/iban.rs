//! `iban`: International Bank Account Numbers, compact (`DE89370400440532013000`) or printed in
//! groups of four (`DE89 3704 0044 0532 0130 00`, rarely with dashes).
//!
//! Validation: the country must be in the IBAN registry, the length must be that country's, and
//! the ISO 7064 mod-97 checksum must give 1. Because the regex may run on into a following word
//! or number, the validator takes exactly the country's length from the candidate and checks that
//! the IBAN ends there.

use std::ops::Range;

use super::context::next_char;
use super::{Candidate, Rule, family, priority};

pub(super) const RULES: &[Rule] = &[Rule {
    pattern: "iban",
    regex: r"\b[A-Z]{2}[0-9]{2}(?:[ \-]?[A-Z0-9]){11,32}\b",
    validate: iban,
    priority: priority::CHECKSUMMED,
    families: family::NUMERIC,
    min_digits: 10,
}];

/// IBAN length per country, from the SWIFT IBAN registry (including the countries whose IBANs
/// are in use but not yet registered, as published by national banks).
#[rustfmt::skip]
const LENGTHS: &[(&str, usize)] = &[
    ("AD", 24), ("AE", 23), ("AL", 28), ("AT", 20), ("AZ", 28), ("BA", 20), ("BE", 16),
    ("BG", 22), ("BH", 22), ("BI", 27), ("BR", 29), ("BY", 28), ("CH", 21), ("CR", 22),
    ("CY", 28), ("CZ", 24), ("DE", 22), ("DJ", 27), ("DK", 18), ("DO", 28), ("EE", 20),
    ("EG", 29), ("ES", 24), ("FI", 18), ("FK", 18), ("FO", 18), ("FR", 27), ("GB", 22),
    ("GE", 22), ("GI", 23), ("GL", 18), ("GR", 27), ("GT", 28), ("HN", 28), ("HR", 21),
    ("HU", 28), ("IE", 22), ("IL", 23), ("IQ", 23), ("IS", 26), ("IT", 27), ("JO", 30),
    ("KW", 30), ("KZ", 20), ("LB", 28), ("LC", 32), ("LI", 21), ("LT", 20), ("LU", 20),
    ("LV", 21), ("LY", 25), ("MC", 27), ("MD", 24), ("ME", 22), ("MK", 19), ("MN", 20),
    ("MR", 27), ("MT", 31), ("MU", 30), ("NI", 28), ("NL", 18), ("NO", 15), ("OM", 23),
    ("PK", 24), ("PL", 28), ("PS", 29), ("PT", 25), ("QA", 29), ("RO", 24), ("RS", 22),
    ("RU", 33), ("SA", 24), ("SC", 31), ("SD", 18), ("SE", 24), ("SI", 19), ("SK", 24),
    ("SM", 27), ("SO", 23), ("ST", 25), ("SV", 28), ("TL", 23), ("TN", 24), ("TR", 26),
    ("UA", 29), ("VA", 22), ("VG", 24), ("XK", 20), ("YE", 30),
    // In use, not (yet) in the registry.
    ("AO", 25), ("BF", 28), ("BJ", 28), ("CF", 27), ("CG", 27), ("CI", 28), ("CM", 27),
    ("CV", 25), ("DZ", 26), ("GA", 27), ("GQ", 27), ("GW", 25), ("IR", 26), ("KM", 27),
    ("MA", 28), ("MG", 27), ("ML", 28), ("MZ", 25), ("NE", 28), ("SN", 28), ("TD", 27),
];

/// The expected length of an IBAN of `country`.
pub(crate) fn length_of(country: &str) -> Option<usize> {
    LENGTHS.iter().find(|(c, _)| *c == country).map(|&(_, len)| len)
}

fn iban(c: &Candidate<'_>) -> Option<Range<usize>> {
    let s = c.value();
    let want = length_of(&s[..2])?;
    let mut compact = String::with_capacity(want);
    let mut end = None;
    for (i, ch) in s.char_indices() {
        if ch == ' ' || ch == '-' {
            // Printed IBANs put a space (rarely a dash) after every fourth character only.
            if !compact.len().is_multiple_of(4) {
                return None;
            }
            continue;
        }
        compact.push(ch);
        if compact.len() == want {
            end = Some(c.span.start + i + 1);
            break;
        }
    }
    let end = end?;
    // The IBAN must end here, not run on into more letters or digits.
    if next_char(c.text, end).is_some_and(|ch| ch.is_ascii_alphanumeric()) {
        return None;
    }
    mod97(&compact).then_some(c.span.start..end)
}

/// ISO 7064 MOD 97-10 over the rearranged IBAN (country and check digits moved to the end).
pub(crate) fn mod97(iban: &str) -> bool {
    let mut rem: u32 = 0;
    for ch in iban[4..].chars().chain(iban[..4].chars()) {
        let v = match ch {
            '0'..='9' => ch as u32 - '0' as u32,
            'A'..='Z' => ch as u32 - 'A' as u32 + 10,
            _ => return false,
        };
        rem = if v >= 10 { (rem * 100 + v) % 97 } else { (rem * 10 + v) % 97 };
    }
    rem == 1
}

#[cfg(test)]
mod tests {
    use crate::pii::tests::{assert_flags, assert_not_flags, spans};

    #[test]
    fn checksums_and_lengths() {
        assert_flags("iban", "pay to DE89 3704 0044 0532 0130 00 please");
        assert_flags("iban", "GB82WEST12345698765432");
        assert_flags("iban", "IBAN: NO9386011117947");
        assert_flags("iban", "FR1420041010050500013M02606");
        assert_eq!(spans("DE89370400440532013000 EUR"), [("iban", "DE89370400440532013000")]);
        assert_not_flags("iban", "DE89 3704 0044 0532 0130 01");
        assert_not_flags("iban", "GB82WEST123456987654");
        assert_not_flags("iban", "DE89370400440532013000123");
        assert_not_flags("iban", "DE8 93704 0044 0532 0130 00");
        assert_not_flags("iban", "ZZ89370400440532013000");
    }
}
