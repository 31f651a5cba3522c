//! Built-in detector table and the validation step of each detector.
//!
//! A regex finds a candidate; the validator (which sees the whole text and the candidate's byte
//! range, so it can look at context) decides whether it is a real finding. Validators are what keep
//! false positives low: Luhn for card numbers, impossible SSN ranges, IPv4 octet ranges and version
//! strings, a JWT header that decodes to JSON with `alg`, entropy for keys, documented example keys.

use std::ops::Range;

use base64::Engine as _;

/// Decides whether the candidate at `range` inside `text` is a real finding.
pub(crate) type Validate = fn(&str, Range<usize>) -> bool;

/// One built-in detector. A capture group named `v` (if present) is the span that is reported and
/// redacted; the rest of the match is context (for example `api_key=`).
pub(crate) struct Builtin {
    pub name: &'static str,
    pub regex: &'static str,
    pub validate: Option<Validate>,
}

pub(crate) const BUILTINS: &[Builtin] = &[
    Builtin {
        name: "email",
        regex: r"(?i)\b[a-z0-9._%+-]+@[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*\.[a-z]{2,24}\b",
        validate: Some(email),
    },
    Builtin {
        name: "phone_us",
        regex: r"(?:\+1[ .-]?|\b1[ .-])?(?:\([0-9]{3}\)|\b[0-9]{3})[ .-]?[0-9]{3}[ .-]?[0-9]{4}\b",
        validate: Some(phone_us),
    },
    Builtin { name: "ssn", regex: r"\b[0-9]{3}-[0-9]{2}-[0-9]{4}\b", validate: Some(ssn) },
    Builtin {
        name: "credit_card",
        regex: r"\b(?:[0-9]{4}[ -]){3}[0-9]{1,7}\b|\b[0-9]{4}[ -][0-9]{6}[ -][0-9]{5}\b|\b[0-9]{13,19}\b",
        validate: Some(credit_card),
    },
    Builtin {
        name: "aws_access_key",
        regex: r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)[A-Z2-7]{16}\b",
        validate: Some(aws_access_key),
    },
    Builtin {
        name: "aws_secret_key",
        regex: r#"(?i)(?:aws_?secret_?access_?key|aws_?secret_?key|aws_?secret|secret_?access_?key)["']?\s*[:=]\s*["']?(?P<v>[A-Za-z0-9/+]{40})(?:[^A-Za-z0-9/+=]|$)"#,
        validate: Some(aws_secret_key),
    },
    Builtin {
        name: "github_token",
        regex: r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{82})\b",
        validate: Some(github_token),
    },
    Builtin {
        name: "jwt",
        regex: r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
        validate: Some(jwt),
    },
    Builtin {
        name: "slack_token",
        regex: r"\bxox(?:[abposr]|e\.xox[bp])-[0-9A-Za-z-]{10,250}",
        validate: Some(slack_token),
    },
    Builtin {
        name: "private_key_header",
        // The header, and the whole block through its END line when there is one, so that
        // redaction removes the key material too. The body cannot contain `--`, which keeps
        // the match inside one block.
        regex: r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----(?:(?:[^-]|-[^-])*-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)?",
        validate: None,
    },
    Builtin {
        name: "generic_api_key",
        regex: r#"(?i)\b(?:x-api-key|api[_-]?key|apikey|api[_-]?secret|access[_-]?token|auth[_-]?token|secret[_-]?key|client[_-]?secret)["']?\s*[:=]\s*["']?(?P<v>[A-Za-z0-9_\-./+=]{16,128})"#,
        validate: Some(generic_api_key),
    },
    Builtin {
        name: "ip_address",
        regex: r"\b(?:[0-9]{1,3}\.){3}[0-9]{1,3}\b",
        validate: Some(ipv4),
    },
    Builtin {
        name: "iban",
        regex: r"\b[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b",
        validate: Some(iban),
    },
];

/// Object member names whose string value is a credential: with this context the whole value is
/// checked as a `generic_api_key` (JSON `{"api_key": "…"}` has no `api_key=` inside the string).
pub(crate) const CREDENTIAL_KEY_NAME: &str = r"(?i)^(?:x-)?(?:api[_-]?key|apikey|api[_-]?secret|access[_-]?token|auth[_-]?token|secret[_-]?key|client[_-]?secret|secret|token)$";

/// Shape of a whole string value considered under [`CREDENTIAL_KEY_NAME`] context.
pub(crate) const CREDENTIAL_VALUE: &str = r"^[A-Za-z0-9_\-./+=]{16,128}$";

/// Shannon entropy in bits per character.
pub(crate) fn entropy(s: &str) -> f64 {
    let mut counts = std::collections::HashMap::new();
    let mut n = 0usize;
    for c in s.chars() {
        *counts.entry(c).or_insert(0usize) += 1;
        n += 1;
    }
    if n == 0 {
        return 0.0;
    }
    counts
        .values()
        .map(|&k| {
            let p = k as f64 / n as f64;
            -p * p.log2()
        })
        .sum()
}

fn digits(s: &str) -> Vec<u8> {
    s.bytes().filter(u8::is_ascii_digit).map(|b| b - b'0').collect()
}

fn email(text: &str, r: Range<usize>) -> bool {
    let s = &text[r];
    let local = s.split('@').next().unwrap_or("");
    !local.starts_with('.') && !local.ends_with('.') && !local.contains("..")
}

fn phone_us(text: &str, r: Range<usize>) -> bool {
    let s = &text[r];
    let mut d = digits(s);
    if d.len() == 11 && d[0] == 1 {
        d.remove(0);
    }
    if d.len() != 10 {
        return false;
    }
    // A bare run of ten digits is an id or a timestamp far more often than a phone number.
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    // NANP: area code and exchange start with 2-9 and are not N11 service codes.
    let (area, exch) = (&d[0..3], &d[3..6]);
    area[0] >= 2 && exch[0] >= 2 && area[1..] != [1, 1] && exch[1..] != [1, 1]
}

fn ssn(text: &str, r: Range<usize>) -> bool {
    let s = &text[r];
    // Numbers published as examples (the Woolworth wallet card, an SSA advertisement).
    if matches!(s, "078-05-1120" | "219-09-9999") {
        return false;
    }
    let d = digits(s);
    let area = u32::from(d[0]) * 100 + u32::from(d[1]) * 10 + u32::from(d[2]);
    let group = &d[3..5];
    let serial = &d[5..9];
    area != 0 && area != 666 && area < 900 && group != [0, 0] && serial != [0, 0, 0, 0]
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

fn credit_card(text: &str, r: Range<usize>) -> bool {
    let s = &text[r];
    if s.contains(' ') && s.contains('-') {
        return false;
    }
    let d = digits(s);
    if !(13..=19).contains(&d.len()) || d.iter().all(|&x| x == d[0]) {
        return false;
    }
    let p2 = u32::from(d[0]) * 10 + u32::from(d[1]);
    let p4 = p2 * 100 + u32::from(d[2]) * 10 + u32::from(d[3]);
    let known_issuer = d[0] == 4                 // Visa
        || (51..=55).contains(&p2)                // Mastercard
        || (2221..=2720).contains(&p4)            // Mastercard 2-series
        || p2 == 34 || p2 == 37                   // Amex
        || p4 == 6011 || p2 == 65 || (6440..=6499).contains(&p4) // Discover
        || p2 == 35                               // JCB
        || p2 == 36 || p2 == 38 || p2 == 30       // Diners
        || p2 == 62; // UnionPay
    known_issuer && luhn(&d)
}

fn aws_access_key(text: &str, r: Range<usize>) -> bool {
    // AWS documentation uses AKIAIOSFODNN7EXAMPLE and friends.
    !text[r].ends_with("EXAMPLE")
}

fn aws_secret_key(text: &str, r: Range<usize>) -> bool {
    let s = &text[r];
    !s.contains("EXAMPLE") && entropy(s) >= 3.5
}

fn github_token(text: &str, r: Range<usize>) -> bool {
    let s = &text[r];
    let tail = s.split_once('_').map_or(s, |(_, t)| t);
    entropy(tail) >= 3.0
}

fn jwt(text: &str, r: Range<usize>) -> bool {
    let s = &text[r];
    let header = s.split('.').next().unwrap_or("");
    let Ok(bytes) = base64::engine::general_purpose::URL_SAFE_NO_PAD_INDIFFERENT.decode(header)
    else {
        return false;
    };
    match serde_json::from_slice::<serde_json::Value>(&bytes) {
        Ok(serde_json::Value::Object(m)) => m.get("alg").is_some_and(|a| a.is_string()),
        _ => false,
    }
}

fn slack_token(text: &str, r: Range<usize>) -> bool {
    let s = &text[r];
    let body = s.split_once('-').map_or("", |(_, b)| b);
    body.bytes().any(|b| b.is_ascii_digit()) && body.contains('-')
}

const PLACEHOLDERS: &[&str] =
    &["example", "your", "xxxx", "placeholder", "changeme", "redacted", "dummy", "sample"];

/// Also used for whole string values under a credential-named key (see [`CREDENTIAL_KEY_NAME`]).
pub(crate) fn generic_api_key(text: &str, r: Range<usize>) -> bool {
    let s = &text[r];
    let lower = s.to_ascii_lowercase();
    if PLACEHOLDERS.iter().any(|p| lower.contains(p)) {
        return false;
    }
    let has_digit = s.bytes().any(|b| b.is_ascii_digit());
    let has_alpha = s.bytes().any(|b| b.is_ascii_alphabetic());
    has_digit && has_alpha && entropy(s) >= 3.0
}

/// Words that, right before a dotted quad, make it a version number rather than an address.
const VERSION_WORDS: &[&str] = &["version", "ver", "v", "release", "build", "rev", "revision"];

fn ipv4(text: &str, r: Range<usize>) -> bool {
    let s = &text[r.clone()];
    let octets_ok = s
        .split('.')
        .all(|o| (o.len() == 1 || !o.starts_with('0')) && o.parse::<u16>().is_ok_and(|n| n <= 255));
    if !octets_ok {
        return false;
    }
    let before = &text.as_bytes()[..r.start];
    let after = &text.as_bytes()[r.end..];
    // Part of a longer dotted run such as 1.2.3.4.5 (or 0.1.2.3.4 from the left).
    if before.last() == Some(&b'.')
        || (after.first() == Some(&b'.') && after.get(1).is_some_and(u8::is_ascii_digit))
    {
        return false;
    }
    let context =
        text[..r.start].trim_end_matches(|c: char| c.is_whitespace() || c == ':' || c == '=');
    let last_word: String = context
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<String>()
        .to_ascii_lowercase();
    !VERSION_WORDS.contains(&last_word.as_str())
}

/// IBAN lengths of common countries; other countries only need 15..=34 characters.
const IBAN_LENGTHS: &[(&str, usize)] = &[
    ("AT", 20),
    ("BE", 16),
    ("CH", 21),
    ("CZ", 24),
    ("DE", 22),
    ("DK", 18),
    ("ES", 24),
    ("FI", 18),
    ("FR", 27),
    ("GB", 22),
    ("IE", 22),
    ("IT", 27),
    ("LU", 20),
    ("NL", 18),
    ("NO", 15),
    ("PL", 28),
    ("PT", 25),
    ("SE", 24),
];

fn iban(text: &str, r: Range<usize>) -> bool {
    let s: String = text[r].chars().filter(|c| *c != ' ').collect();
    if !(15..=34).contains(&s.len()) {
        return false;
    }
    if let Some((_, len)) = IBAN_LENGTHS.iter().find(|(c, _)| s.starts_with(c))
        && s.len() != *len
    {
        return false;
    }
    let rearranged = s[4..].chars().chain(s[..4].chars());
    let mut rem: u32 = 0;
    for c in rearranged {
        let v = match c {
            '0'..='9' => c as u32 - '0' as u32,
            'A'..='Z' => c as u32 - 'A' as u32 + 10,
            _ => return false,
        };
        rem = if v >= 10 { (rem * 100 + v) % 97 } else { (rem * 10 + v) % 97 };
    }
    rem == 1
}
