//! `ssn`: US social security numbers, `536-22-1234` or `536 22 1234`, and a bare `536221234` only
//! after an SSN word (`SSN`, `social security`, `SS#`) or under an SSN-like JSON key.
//!
//! Validation: the SSA never issues area 000, 666 or 900–999, group 00 or serial 0000. Numbers
//! that were published in advertising (078-05-1120 from a wallet insert) have a valid shape and
//! are the classic examples in documents, so they are reported like any other. A number that is part of a longer dashed or spaced run of digits
//! (`12-536-22-1234`) is something else.

use std::ops::Range;

use super::context::{digits, mentions, normalize_label, window_after, window_before};
use super::{Candidate, Rule, family, priority};

pub(super) const RULES: &[Rule] = &[Rule {
    pattern: "ssn",
    regex: r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b|\b[0-9]{3} [0-9]{2} [0-9]{4}\b|\b[0-9]{9}\b",
    validate: ssn,
    priority: priority::NUMBER,
    families: family::NUMERIC,
    min_digits: 9,
}];

const SSN_WORDS: &[&str] =
    &["ssn", "social security", "social sec", "soc sec", "ss#", "ss #", "ss no"];

fn ssn(c: &Candidate<'_>) -> Option<Range<usize>> {
    let s = c.value();
    let d = digits(s);
    let area = u32::from(d[0]) * 100 + u32::from(d[1]) * 10 + u32::from(d[2]);
    if area == 0 || area == 666 || area >= 900 || d[3..5] == [0, 0] || d[5..9] == [0, 0, 0, 0] {
        return None;
    }
    let sep = s.as_bytes()[3];
    if sep.is_ascii_digit() {
        if !ssn_context(c) {
            return None;
        }
    } else {
        let before = window_before(c.text, c.span.start, 2).as_bytes();
        let after = window_after(c.text, c.span.end, 2).as_bytes();
        let joins = |pair: &[u8], digit_at: usize| {
            pair.len() == 2 && pair[1 - digit_at] == sep && pair[digit_at].is_ascii_digit()
        };
        if joins(before, 0) || joins(after, 1) {
            return None;
        }
    }
    Some(c.span.clone())
}

fn ssn_context(c: &Candidate<'_>) -> bool {
    mentions(window_before(c.text, c.span.start, 40), SSN_WORDS)
        || c.key.is_some_and(|k| {
            let k = normalize_label(k);
            k.contains("ssn") || k.contains("socialsecurity")
        })
}

#[cfg(test)]
mod tests {
    use crate::pii::tests::{assert_flags, assert_not_flags};

    #[test]
    fn forms() {
        assert_flags("ssn", "ssn 536-22-1234");
        assert_flags("ssn", "SSN: 536 22 1234");
        assert_flags("ssn", "Social Security Number 536221234");
        assert_flags("ssn", "123-45-6789");
        assert_flags("ssn", "078-05-1120");
        assert_not_flags("ssn", "id 536221234");
    }

    #[test]
    fn impossible_ranges_and_runs() {
        for bad in [
            "000-12-3456",
            "666-12-3456",
            "912-34-5678",
            "536-00-1234",
            "536-22-0000",
            "5362-2-1234",
            "12-536-22-1234",
            "536-22-1234-5",
        ] {
            assert_not_flags("ssn", bad);
        }
    }
}
