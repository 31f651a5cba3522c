//! `phone_us`: North American Numbering Plan numbers in the forms people write them —
//! `(415) 555-0132`, `415-555-0132`, `415.555.0132`, `415 555 0132`, `+1 415 555 0132`,
//! `+14155550132`, `1-800-555-0199`, `001-415-555-0132`, `415/555-0132`, with an optional
//! `x123`/`ext. 123`.
//!
//! Validation is about shape rather than numbering rules: the written separators (or a `+1`) are
//! what make ten digits a phone number. The NANP rules (area code and exchange start with 2–9)
//! are deliberately not enforced: test data and fake-data generators write numbers such as
//! `(504) 113-1705`, and a real number in a payload is worth redacting either way. Rejected:
//! stand-ins (`123-456-7890`, one digit repeated), numbers that are part of a longer dotted or
//! dashed run of digits, and a bare run of ten digits (or eleven with a leading 1) — an id or a
//! timestamp far more often — unless a phone word (`phone`, `tel`, `call`, `mobile`, …) comes
//! just before it or the JSON key is phone-like.

use std::ops::Range;

use super::context::{digits, has_word, normalize_label, prev_char, window_after, window_before};
use super::{Candidate, Rule, family, priority};

pub(super) const RULES: &[Rule] = &[Rule {
    pattern: "phone_us",
    regex: r"(?:(?:(?:\+|\b00[ .\-]?)1|\b1)[ .\-]?(?:\([0-9]{3}\)|[0-9]{3})|\([0-9]{3}\)|\b[0-9]{3})[ .\-/]?[0-9]{3}[ .\-]?[0-9]{4}(?:[ ]?(?:x|ext\.?|extension)[ ]?[0-9]{1,6})?\b",
    validate: phone_us,
    priority: priority::NUMBER,
    families: family::NUMERIC,
    min_digits: 10,
}];

#[rustfmt::skip]
const PHONE_WORDS: &[&str] = &[
    "phone", "tel", "telephone", "mobile", "cell", "cellphone", "call", "fax", "sms", "text",
    "whatsapp", "dial", "ph", "mob", "contact", "phonenumber",
];

const PHONE_KEYS: &[&str] = &["phone", "mobile", "tel", "fax", "cell", "sms", "msisdn"];

fn phone_us(c: &Candidate<'_>) -> Option<Range<usize>> {
    let s = c.value();
    let number = s.split(['x', 'e']).next().unwrap_or(s);
    let mut d = digits(number);
    if d.len() == 13 && d[..3] == [0, 0, 1] {
        d.drain(..3);
    } else if d.len() == 11 && d[0] == 1 {
        d.remove(0);
    }
    if d.len() != 10 {
        return None;
    }
    let sequential = d.windows(2).all(|w| (w[0] + 1) % 10 == w[1]);
    if sequential || d.iter().all(|&x| x == d[0]) {
        return None;
    }
    // Part of a longer number: `12-415-555-0132`, `415-555-0132-7`, `1.415.555.0132.5`.
    let before = window_before(c.text, c.span.start, 2).as_bytes();
    if before.len() == 2 && matches!(before[1], b'-' | b'.' | b'/') && before[0].is_ascii_digit() {
        return None;
    }
    let after = window_after(c.text, c.span.end, 2).as_bytes();
    if after.len() == 2 && matches!(after[0], b'-' | b'.' | b'/') && after[1].is_ascii_digit() {
        return None;
    }
    if prev_char(c.text, c.span.start).is_some_and(|ch| ch.is_alphanumeric()) {
        return None;
    }
    let bare = number.bytes().all(|b| b.is_ascii_digit());
    if bare && !phone_context(c) {
        return None;
    }
    Some(c.span.clone())
}

fn phone_context(c: &Candidate<'_>) -> bool {
    has_word(window_before(c.text, c.span.start, 40), PHONE_WORDS)
        || c.key.is_some_and(|k| {
            let k = normalize_label(k);
            PHONE_KEYS.iter().any(|p| k.contains(p))
        })
}

#[cfg(test)]
mod tests {
    use crate::pii::tests::{assert_flags, assert_not_flags, spans};

    #[test]
    fn common_forms() {
        for text in [
            "call (415) 555-0132",
            "call +1 415-555-2671 now",
            "415.555.2671",
            "415 555 0132",
            "(415)555-0132",
            "+1 (415) 555-0132",
            "+14155550132",
            "1-800-555-0199",
            "1 (800) 555-0199",
            "001-415-555-0132",
            "desk: 415-555-0132 x204",
            "phone 4155550132",
            "Tel: 14155550132",
        ] {
            assert_flags("phone_us", text);
        }
        assert_eq!(spans("dial 415-555-0132 ext. 12."), [("phone_us", "415-555-0132 ext. 12")]);
        assert_eq!(spans("(+1 415-555-0132)"), [("phone_us", "+1 415-555-0132")]);
    }

    #[test]
    fn rejects_ids_and_impossible_numbers() {
        assert_flags("phone_us", "(504) 113-1705");
        assert_flags("phone_us", "(186)285-7925");
        for text in [
            "id 4155552671",
            "ts=1700000000",
            "123-456-7890",
            "555-555-5555",
            "12-415-555-0132",
            "415-555-0132-77",
            "+44 20 7946 0958",
            "SKU4155550132",
            "2024-03-15 12:30",
            "uuid 123e4567-e89b-12d3-a456-426614174000",
        ] {
            assert_not_flags("phone_us", text);
        }
    }
}
