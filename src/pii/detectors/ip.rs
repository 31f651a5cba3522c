//! `ip_address`: IPv4 and IPv6 addresses, both under one name (an auditor asks "which addresses
//! were seen", not which protocol version).
//!
//! IPv4 validation: four octets 0–255 without leading zeros, not part of a longer dotted run
//! (`1.3.6.1.4.1`, an OID), and not a version string — after a version word (`version`, `v`,
//! `release`, `build`, `firmware`, `upgrade to`, …), after a product token (`Chrome/1.2.3.4`),
//! before a pre-release tag (`1.2.3.4-beta`), or an ascending toy sequence such as `1.2.3.4` with no
//! network word (`ip`, `host`, `server`, …) nearby.
//!
//! IPv6 validation: the longest run of hex digits, colons and dots from the candidate is parsed
//! by the standard library (so every compressed and IPv4-embedded form is understood) and must
//! contain a digit — which keeps `dead::beef`, MAC addresses (six groups), clock times and `std::`
//! paths out. A zone (`%eth0`) is part of the span.

use std::net::Ipv6Addr;
use std::ops::Range;

use super::context::{
    next_char, normalize_label, prev_char, window_after, window_before, words_rev,
};
use super::{Candidate, Rule, family, priority};

pub(super) const RULES: &[Rule] = &[
    Rule {
        pattern: "ip_address",
        regex: r"\b(?:[0-9]{1,3}\.){3}[0-9]{1,3}\b",
        validate: ipv4,
        priority: priority::IP,
        families: family::NUMERIC,
        min_digits: 4,
    },
    Rule {
        pattern: "ip_address",
        // Eight groups, or a `::` with hex on one side; the validator takes the whole run and
        // parses it. Clock times (`12:34:56`) and MACs (six groups) never match, and a `\b`
        // before each hex group keeps `std::fmt`-style paths out.
        regex: r"(?i)\b(?:[0-9a-f]{1,4}:){7}[0-9a-f]{1,4}\b|\b(?:[0-9a-f]{1,4}:){1,7}:|::(?:[0-9a-f]{1,4}:){0,6}[0-9a-f]{1,4}\b|\b(?:[0-9a-f]{1,4}:){6}[0-9]{1,3}\.",
        validate: ipv6,
        priority: priority::IP,
        families: family::COLON,
        min_digits: 0,
    },
];

/// Words that, just before a dotted quad, make it a version (or a section number) rather than
/// an address.
#[rustfmt::skip]
const VERSION_WORDS: &[&str] = &[
    "version", "ver", "v", "release", "released", "build", "rev", "revision", "upgrade",
    "upgraded", "upgrading", "update", "updated", "bump", "bumped", "firmware", "fw", "patch",
    "tag", "sdk", "package", "pkg", "driver", "kernel", "section", "chapter", "clause",
    "paragraph", "figure", "fig", "table", "step", "rule", "item", "appendix",
];

/// Words that, just after a dotted quad, make it a version.
const FOLLOWING_VERSION_WORDS: &[&str] =
    &["release", "released", "version", "build", "beta", "alpha", "rc", "preview", "hotfix"];

/// JSON member names whose value is a version, whatever it looks like.
const VERSION_KEYS: &[&str] = &["version", "ver", "build", "release", "revision", "firmware"];

/// Words between a version word and the number (`upgraded to 1.2.3.4`, `version is 2.0.1.5`).
const FILLER_WORDS: &[&str] = &["to", "from", "is", "was", "of", "at", "the", "number", "no"];

/// Words that make even `1.2.3.4` an address.
#[rustfmt::skip]
const NETWORK_WORDS: &[&str] = &[
    "ip", "ipv4", "addr", "address", "host", "server", "client", "remote", "peer", "src", "dst",
    "source", "destination", "gateway", "dns", "nameserver", "ping", "connect", "connected",
    "connection", "blocked", "banned", "allowlist", "whitelist", "firewall", "subnet", "route",
    "proxy", "inet", "localhost", "nat", "vpn", "login", "origin", "forwarded",
];

fn ipv4(c: &Candidate<'_>) -> Option<Range<usize>> {
    let text = c.text;
    let s = c.value();
    let octets: Vec<u16> = s
        .split('.')
        .map(|o| if o.len() > 1 && o.starts_with('0') { None } else { o.parse().ok() })
        .collect::<Option<_>>()?;
    if octets.iter().any(|&o| o > 255) {
        return None;
    }
    // Part of a longer dotted run: `1.2.3.4.5`, `0.1.2.3.4` from the left.
    let before = window_before(text, c.span.start, 2).as_bytes();
    let after = window_after(text, c.span.end, 2).as_bytes();
    if before.last() == Some(&b'.') && before.first().is_some_and(u8::is_ascii_digit)
        || after.first() == Some(&b'.') && after.get(1).is_some_and(u8::is_ascii_digit)
    {
        return None;
    }
    // `Chrome/120.0.1.2`: a product token's version.
    if before.last() == Some(&b'/') && before.first().is_some_and(u8::is_ascii_alphabetic) {
        return None;
    }
    // `1.2.3.4-beta`, `1.2.3.4+build`.
    if matches!(after.first(), Some(b'-' | b'+'))
        && after.get(1).is_some_and(u8::is_ascii_alphabetic)
    {
        return None;
    }
    let context = window_before(text, c.span.start, 40);
    let mut words =
        words_rev(context).skip_while(|w| FILLER_WORDS.iter().any(|f| w.eq_ignore_ascii_case(f)));
    if words.next().is_some_and(|w| VERSION_WORDS.iter().any(|v| w.eq_ignore_ascii_case(v))) {
        return None;
    }
    // `1.0.0.0 release`, `2.1.3.4 beta`.
    let next_word = window_after(text, c.span.end, 16).split_whitespace().next().unwrap_or("");
    let next_word = next_word.trim_matches(|ch: char| !ch.is_ascii_alphanumeric());
    if !next_word.is_empty()
        && FOLLOWING_VERSION_WORDS.iter().any(|v| next_word.eq_ignore_ascii_case(v))
    {
        return None;
    }
    if c.key.is_some_and(|k| {
        let k = normalize_label(k);
        VERSION_KEYS.iter().any(|v| k.ends_with(v))
    }) {
        return None;
    }
    let toy = octets.windows(2).all(|w| w[1] == w[0] + 1) && octets[3] < 10;
    if toy && !words_rev(context).any(|w| NETWORK_WORDS.iter().any(|n| w.eq_ignore_ascii_case(n))) {
        return None;
    }
    Some(c.span.clone())
}

fn ipv6(c: &Candidate<'_>) -> Option<Range<usize>> {
    let text = c.text;
    let mut start = c.span.start;
    // The regex may start on the colon after a label (`host:fe80::1`).
    if text[start..].starts_with(':') && !text[start..].starts_with("::") {
        start += 1;
    }
    if prev_char(text, start)
        .is_some_and(|ch| ch.is_alphanumeric() || matches!(ch, '_' | '.' | '-'))
    {
        return None;
    }
    let run = text[start..]
        .find(|ch: char| !(ch.is_ascii_hexdigit() || ch == ':' || ch == '.'))
        .map_or(text.len(), |i| start + i);
    let mut end = run;
    let mut candidate = &text[start..end];
    // Sentence punctuation after the address: `… fe80::1.` or `… at ::1:`.
    while candidate.ends_with('.') || (candidate.ends_with(':') && !candidate.ends_with("::")) {
        end -= 1;
        candidate = &text[start..end];
    }
    if candidate.parse::<Ipv6Addr>().is_err() || !candidate.bytes().any(|b| b.is_ascii_digit()) {
        return None;
    }
    if end == run && next_char(text, end).is_some_and(|ch| ch.is_alphanumeric() || ch == '_') {
        return None;
    }
    // Zone index: `fe80::1%eth0`.
    if text[end..].starts_with('%') {
        let zone = text[end + 1..]
            .find(|ch: char| !(ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-')))
            .map_or(text.len() - end - 1, |i| i);
        if zone > 0 {
            end += 1 + zone;
        }
    }
    Some(start..end)
}

#[cfg(test)]
mod tests {
    use crate::pii::tests::{assert_flags, assert_not_flags, spans};

    #[test]
    fn ipv4_octets_and_versions() {
        assert_flags("ip_address", "connect to 192.168.10.20 now");
        assert_flags("ip_address", "8.8.8.8");
        assert_flags("ip_address", "blocked ip 1.2.3.4");
        assert_flags("ip_address", "http://10.0.0.1:8080/x");
        for text in [
            "1.2.3.4.5",
            "version 1.2.3",
            "version 1.2.3.4",
            "v1.2.3.4",
            "v10.0.0.1",
            "upgraded to 2.4.1.0",
            "999.1.1.1",
            "01.2.3.4",
            "Chrome/120.0.1.2",
            "1.2.3.4-beta",
            "oid 1.3.6.1.4.1.311",
            "1.2.3.4",
            "1.0.0.0 release notes",
        ] {
            assert_not_flags("ip_address", text);
        }
    }

    #[test]
    fn ipv6_forms() {
        for (text, addr) in [
            (
                "addr 2001:0db8:85a3:0000:0000:8a2e:0370:7334 up",
                "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
            ),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("via fe80::1%eth0, then", "fe80::1%eth0"),
            ("loopback ::1.", "::1"),
            ("mapped ::ffff:192.0.2.1 ok", "::ffff:192.0.2.1"),
            ("host:2001:db8::42", "2001:db8::42"),
        ] {
            assert_eq!(spans(text), [("ip_address", addr)], "{text}");
        }
        for text in
            ["dead::beef", "00:1a:2b:3c:4d:5e", "at 10:30:45", "std::fmt::Display", "a::b", "12:30"]
        {
            assert_not_flags("ip_address", text);
        }
    }
}
