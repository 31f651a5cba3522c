//! `credit_card`: payment card numbers, bare (`4111111111111111`) or grouped with spaces or dashes
//! the way cards print them (`4111 1111 1111 1111`, Amex `3782 822463 10005`, Diners
//! `3056 930902 5904`).
//!
//! Validation: a known issuer prefix with one of that issuer's lengths, and the Luhn checksum.
//! Grouped numbers must use one separator and a printed layout (4-4-4-4, 4-6-5, …); the regex may
//! take in a neighbouring number (`qty 12 4111 1111 1111 1111`), so the validator looks for the
//! longest valid run of whole groups inside the candidate. A bare run of digits is rejected after
//! id words (`order`, `invoice`, `tracking`, …) unless a card word is also there: random 16-digit
//! ids pass Luhn one time in ten.

use std::ops::Range;

use super::context::{has_word, normalize_label, window_after, window_before};
use super::{Candidate, Rule, family, priority};

pub(super) const RULES: &[Rule] = &[Rule {
    pattern: "credit_card",
    regex: r"\b[0-9](?:[ \-]?[0-9]){12,18}\b",
    validate: credit_card,
    priority: priority::CHECKSUMMED,
    families: family::NUMERIC,
    min_digits: 13,
}];

#[rustfmt::skip]
const CARD_WORDS: &[&str] = &[
    "card", "cc", "credit", "debit", "visa", "mastercard", "amex", "discover", "pan", "payment",
    "cardnumber", "jcb", "diners", "unionpay", "maestro",
];

#[rustfmt::skip]
const ID_WORDS: &[&str] = &[
    "order", "invoice", "tracking", "id", "ref", "reference", "transaction", "txn", "confirmation",
    "account", "acct", "isbn", "ean", "upc", "imei", "serial", "sku", "timestamp", "ts", "epoch",
    "phone", "tel", "shipment", "parcel", "ticket", "case",
];

fn credit_card(c: &Candidate<'_>) -> Option<Range<usize>> {
    let text = c.text;
    let base = c.span.start;
    // Digit groups as byte ranges within `text`, and the separator after each but the last.
    let mut groups: Vec<Range<usize>> = Vec::new();
    let mut seps: Vec<u8> = Vec::new();
    let bytes = c.value().as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        groups.push(base + start..base + i);
        if i < bytes.len() {
            seps.push(bytes[i]);
            i += 1;
        }
    }
    let span = if groups.len() == 1 {
        let d = number(&text[c.span.clone()]);
        (valid_number(&d) && bare_context_ok(c)).then(|| c.span.clone())?
    } else {
        best_grouped_run(text, &groups, &seps)?
    };
    // A decimal (`0.4111…`, `4111….5`) is a measurement, not a card.
    let before = window_before(text, span.start, 2).as_bytes();
    let after = window_after(text, span.end, 2).as_bytes();
    if (before.len() == 2 && matches!(before[1], b'.' | b',') && before[0].is_ascii_digit())
        || (after.len() == 2 && matches!(after[0], b'.' | b',') && after[1].is_ascii_digit())
    {
        return None;
    }
    Some(span)
}

/// The longest run of consecutive groups, joined by one separator, in a printed card layout and
/// forming a valid number; the earliest among equals.
fn best_grouped_run(text: &str, groups: &[Range<usize>], seps: &[u8]) -> Option<Range<usize>> {
    let mut best: Option<(usize, Range<usize>)> = None;
    for i in 0..groups.len() {
        for j in i + 1..groups.len() {
            if seps[i..j].iter().any(|&s| s != seps[i]) {
                break;
            }
            let lens: Vec<usize> = groups[i..=j].iter().map(|g| g.len()).collect();
            if !printed_layout(&lens) {
                continue;
            }
            let span = groups[i].start..groups[j].end;
            let d = number(&text[span.clone()]);
            if valid_number(&d) && best.as_ref().is_none_or(|(n, _)| d.len() > *n) {
                best = Some((d.len(), span));
            }
        }
    }
    best.map(|(_, span)| span)
}

fn printed_layout(lens: &[usize]) -> bool {
    match lens {
        [4, 4, 4, 4] | [4, 6, 5] | [4, 6, 4] => true,
        [4, 4, 4, 4, last] => (1..=3).contains(last),
        [4, 4, 4, last] => (1..=3).contains(last),
        _ => false,
    }
}

fn number(s: &str) -> Vec<u8> {
    s.bytes().filter(u8::is_ascii_digit).map(|b| b - b'0').collect()
}

/// Issuer prefix with a length that issuer uses, not one digit repeated, and Luhn.
pub(crate) fn valid_number(d: &[u8]) -> bool {
    if !(13..=19).contains(&d.len()) || d.iter().all(|&x| x == d[0]) {
        return false;
    }
    let prefix = |n: usize| d[..n].iter().fold(0u32, |acc, &x| acc * 10 + u32::from(x));
    let (p2, p3, p4) = (prefix(2), prefix(3), prefix(4));
    let len = d.len();
    let issuer_length_ok = match d[0] {
        4 => matches!(len, 13 | 16 | 19),       // Visa
        _ if p2 == 34 || p2 == 37 => len == 15, // Amex
        _ if (51..=55).contains(&p2) || (2221..=2720).contains(&p4) => len == 16, // Mastercard
        _ if p4 == 6011 || (644..=649).contains(&p3) || p2 == 65 => len >= 16, // Discover
        _ if (300..=305).contains(&p3) || matches!(p2, 36 | 38 | 39) => len >= 14, // Diners
        _ if (3528..=3589).contains(&p4) => len >= 16, // JCB
        _ if p2 == 62 => len >= 16,             // UnionPay
        _ if p2 == 50 || (56..=58).contains(&p2) || p2 == 67 || p4 == 6304 => true, // Maestro
        _ => false,
    };
    issuer_length_ok && luhn(d)
}

pub(crate) fn luhn(d: &[u8]) -> bool {
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let x = u32::from(x);
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 { y - 9 } else { y }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Numbers payment processors publish for testing. They are valid card numbers, used as such in
/// examples and test data, and never as ids — so no id word turns them into one.
#[rustfmt::skip]
pub(crate) const TEST_NUMBERS: &[&str] = &[
    "4111111111111111", "4242424242424242", "4012888888881881", "4000056655665556",
    "5555555555554444", "5105105105105100", "2223003122003222", "378282246310005",
    "371449635398431", "6011111111111117", "6011000990139424", "3530111333300000",
    "3566002020360505", "30569309025904", "38520000023237", "6200000000000005",
];

/// A bare run after an id word is an id, unless a card word is there too.
fn bare_context_ok(c: &Candidate<'_>) -> bool {
    if TEST_NUMBERS.contains(&c.value()) {
        return true;
    }
    let before = window_before(c.text, c.span.start, 32);
    let key = c.key.map(normalize_label).unwrap_or_default();
    let card_key = ["card", "pan", "ccnumber", "cc"].iter().any(|w| key.contains(w));
    let id_key =
        ["id", "order", "invoice", "tracking", "number", "ref"].iter().any(|w| key.ends_with(w));
    if has_word(before, CARD_WORDS) || card_key {
        return true;
    }
    !has_word(before, ID_WORDS) && !id_key
}

#[cfg(test)]
mod tests {
    use crate::pii::tests::{assert_flags, assert_not_flags, spans};

    #[test]
    fn layouts_and_test_numbers() {
        for text in [
            "card 4111 1111 1111 1111 exp 12/29",
            "5555-5555-5555-4444",
            "378282246310005",
            "amex 3782 822463 10005",
            "4242424242424242",
            "diners 3056 930902 5904",
            "6011111111111117",
            "3530111333300000",
            "2223003122003222",
            "6200000000000005",
            "4222222222222",
        ] {
            assert_flags("credit_card", text);
        }
        assert_eq!(
            spans("qty 12 4111 1111 1111 1111 12/27"),
            [("credit_card", "4111 1111 1111 1111")]
        );
    }

    #[test]
    fn rejects_near_misses() {
        for text in [
            "4111 1111 1111 1112",
            "4111111111111121",
            "0000000000000000",
            "9111111111111111111",
            "4111-1111 1111-1111",
            "order id 4539578763621486",
            "pi 3.4111111111111111",
            "ISBN 978-3-16-148410-0",
            "ts 1700000000000",
            "4111 11111 111 1111",
        ] {
            assert_not_flags("credit_card", text);
        }
        assert_flags("credit_card", "card on file for order 12: 4539578763621486");
        assert_flags("credit_card", "order id 4000056655665556");
    }
}
