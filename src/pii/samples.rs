//! Generators of synthetic sensitive values, valid by each detector's rules and written in the
//! forms people write them: the benchmark's payloads ([`super::workload`]) and the labelled corpus
//! (`tests/pii_corpus.rs`) are built from these. Every value is made up; every stream is seeded.
//!
//! Each generator returns the value as it appears in text (a formatted phone number, a grouped
//! card number). Contexts (sentences, JSON, logs) are the callers' business.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::Rng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::SeedableRng;

use super::detectors::{card, iban};

/// The seeded random stream every generator draws from. ChaCha8 is portable: the same seed gives
/// the same values on every platform and build.
pub fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
const HEX: &[u8] = b"0123456789abcdef";
const UPPER_DIGITS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
const BASE32: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
pub const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// `n` characters drawn from `alphabet`.
pub fn chars(rng: &mut impl Rng, alphabet: &[u8], n: usize) -> String {
    (0..n).map(|_| char::from(*alphabet.choose(rng).expect("non-empty alphabet"))).collect()
}

/// `n` random decimal digits.
pub fn digits(rng: &mut impl Rng, n: usize) -> String {
    chars(rng, b"0123456789", n)
}

fn pick<'a>(rng: &mut impl Rng, items: &[&'a str]) -> &'a str {
    items.choose(rng).expect("non-empty list")
}

pub const FIRST_NAMES: &[&str] = &[
    "alice",
    "bob",
    "carol",
    "dave",
    "erin",
    "frank",
    "grace",
    "heidi",
    "ivan",
    "judy",
    "mallory",
    "niaj",
    "olivia",
    "peggy",
    "rupert",
    "sybil",
    "trent",
    "victor",
    "walter",
    "maria",
    "wei",
    "priya",
    "jürgen",
    "josé",
    "zoë",
    "françois",
    "søren",
    "łukasz",
    "ngozi",
    "aroha",
];

pub const LAST_NAMES: &[&str] = &[
    "smith",
    "jones",
    "garcia",
    "nguyen",
    "kim",
    "patel",
    "müller",
    "rossi",
    "dubois",
    "silva",
    "kowalski",
    "tanaka",
    "okafor",
    "haddad",
    "andersson",
    "o'brien",
    "lee",
    "martin",
];

const DOMAINS: &[&str] = &[
    "acme.io",
    "example.com",
    "corp.example.org",
    "mail.co.uk",
    "müller.de",
    "gmail.com",
    "outlook.com",
    "state.edu",
    "startup.ai",
    "bank.example.net",
    "agency.gov",
    "shop.fr",
    "health-care.org",
    "dev.internal.company.com",
];

/// An e-mail address; sometimes with a `+tag`, digits, an upper-case form or a non-ASCII name.
pub fn email(rng: &mut impl Rng) -> String {
    let first = pick(rng, FIRST_NAMES);
    let last = pick(rng, LAST_NAMES).replace('\'', "");
    let local = match rng.random_range(0..6) {
        0 => format!("{first}.{last}"),
        1 => format!("{first}_{last}{}", rng.random_range(1..99)),
        2 => format!("{}{last}", &first[..first.chars().next().map_or(1, char::len_utf8)]),
        3 => format!("{first}+{}", pick(rng, &["news", "billing", "test", "work"])),
        4 => format!("{first}{}", rng.random_range(1970..2010)),
        _ => first.to_string(),
    };
    let address = format!("{local}@{}", pick(rng, DOMAINS));
    if rng.random_bool(0.1) { address.to_uppercase() } else { address }
}

/// A US number in one of the common written forms, mostly by the numbering plan's rules.
pub fn phone_us(rng: &mut impl Rng) -> String {
    let area = loop {
        let a = rng.random_range(200..1000);
        if a % 100 != 11 {
            break a;
        }
    };
    // Fake-data generators often ignore the numbering plan: `(504) 113-1705`.
    let exchange = if rng.random_bool(0.3) {
        555
    } else if rng.random_bool(0.15) {
        rng.random_range(0..200)
    } else {
        loop {
            let e = rng.random_range(200..1000);
            if e % 100 != 11 {
                break e;
            }
        }
    };
    let line = rng.random_range(0..10000);
    let (a, e, l) = (area, format!("{exchange:03}"), format!("{line:04}"));
    match rng.random_range(0..11) {
        0 => format!("({a}) {e}-{l}"),
        1 => format!("{a}-{e}-{l}"),
        2 => format!("{a}.{e}.{l}"),
        3 => format!("+1 {a} {e} {l}"),
        4 => format!("+1-{a}-{e}-{l}"),
        5 => format!("+1 ({a}) {e}-{l}"),
        6 => format!("1-{a}-{e}-{l}"),
        7 => format!("{a} {e} {l}"),
        8 => format!("({a}){e}-{l}"),
        9 => format!("+1{a}{e}{l}"),
        _ => format!("{a}-{e}-{l} x{}", rng.random_range(1..9999)),
    }
}

/// A toll-free number, `1-800-…` and friends.
pub fn phone_toll_free(rng: &mut impl Rng) -> String {
    let area = pick(rng, &["800", "888", "877", "866", "855", "844"]);
    format!("1-{area}-{}-{:04}", rng.random_range(200..1000), rng.random_range(0..10000))
}

/// An SSN digits triple `(area, group, serial)` in the ranges the SSA issues.
pub fn ssn_parts(rng: &mut impl Rng) -> (u32, u32, u32) {
    let area = loop {
        let a = rng.random_range(1..900);
        if a != 666 {
            break a;
        }
    };
    (area, rng.random_range(1..100), rng.random_range(1..10000))
}

/// An SSN, dashed (mostly) or spaced.
pub fn ssn(rng: &mut impl Rng) -> String {
    let (a, g, s) = ssn_parts(rng);
    if rng.random_bool(0.8) {
        format!("{a:03}-{g:02}-{s:04}")
    } else {
        format!("{a:03} {g:02} {s:04}")
    }
}

/// Card numbers that payment processors publish for testing; they are valid card numbers.
pub const TEST_CARDS: &[&str] = card::TEST_NUMBERS;

/// Appends the Luhn check digit to `body`.
fn with_luhn(body: &str) -> String {
    let d: Vec<u8> = body.bytes().map(|b| b - b'0').collect();
    (0..10u8)
        .map(|c| {
            let mut all = d.clone();
            all.push(c);
            (c, all)
        })
        .find(|(_, all)| card::luhn(all))
        .map(|(c, _)| format!("{body}{c}"))
        .expect("some check digit satisfies Luhn")
}

/// A valid card number, bare digits.
pub fn card_digits(rng: &mut impl Rng) -> String {
    if rng.random_bool(0.3) {
        return pick(rng, TEST_CARDS).to_string();
    }
    let (prefix, len) = match rng.random_range(0..6) {
        0 | 1 => ("4".to_string(), 16),
        2 => (format!("5{}", rng.random_range(1..6)), 16),
        3 => (pick(rng, &["34", "37"]).to_string(), 15),
        4 => ("6011".to_string(), 16),
        _ => (format!("{}", rng.random_range(2221..2721)), 16),
    };
    let body = format!("{prefix}{}", digits(rng, len - 1 - prefix.len()));
    with_luhn(&body)
}

/// A valid card number, bare or grouped the way its issuer prints it.
pub fn card(rng: &mut impl Rng) -> String {
    let d = card_digits(rng);
    let sep = pick(rng, &[" ", "-", ""]);
    match d.len() {
        15 => format!("{}{sep}{}{sep}{}", &d[..4], &d[4..10], &d[10..]),
        14 => format!("{}{sep}{}{sep}{}", &d[..4], &d[4..10], &d[10..]),
        16 => format!("{}{sep}{}{sep}{}{sep}{}", &d[..4], &d[4..8], &d[8..12], &d[12..]),
        _ => d,
    }
}

/// An AWS access key id: `AKIA` or `ASIA` and 16 base32 characters.
pub fn aws_access_key(rng: &mut impl Rng) -> String {
    let prefix = if rng.random_bool(0.8) { "AKIA" } else { "ASIA" };
    let alphabet = if rng.random_bool(0.7) { BASE32 } else { UPPER_DIGITS };
    format!("{prefix}{}", chars(rng, alphabet, 16))
}

/// An AWS secret access key: 40 base64 characters with upper, lower and digits.
pub fn aws_secret_key(rng: &mut impl Rng) -> String {
    loop {
        let s = chars(rng, BASE64, 40);
        let has = |f: fn(&u8) -> bool| s.as_bytes().iter().any(f);
        if has(u8::is_ascii_uppercase) && has(u8::is_ascii_lowercase) && has(u8::is_ascii_digit) {
            return s;
        }
    }
}

/// A GitHub token of any kind.
pub fn github_token(rng: &mut impl Rng) -> String {
    if rng.random_bool(0.2) {
        return format!("github_pat_{}_{}", chars(rng, ALNUM, 22), chars(rng, ALNUM, 59));
    }
    format!("{}{}", pick(rng, &["ghp_", "gho_", "ghu_", "ghs_", "ghr_"]), chars(rng, ALNUM, 36))
}

/// A signed (or, rarely, unsigned) JWT with a realistic header and claims.
pub fn jwt(rng: &mut impl Rng) -> String {
    let alg = pick(rng, &["HS256", "RS256", "ES256", "HS512", "PS256", "EdDSA"]);
    let header = if rng.random_bool(0.5) {
        format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#)
    } else {
        format!(r#"{{"alg":"{alg}","kid":"{}"}}"#, chars(rng, HEX, 8))
    };
    let iat: u64 = rng.random_range(1_600_000_000..1_800_000_000);
    let claims = format!(
        r#"{{"sub":"{}","name":"{}","iat":{iat},"exp":{}}}"#,
        rng.random_range(1000..99999),
        pick(rng, FIRST_NAMES),
        iat + 3600
    );
    let sig = if rng.random_bool(0.05) { String::new() } else { chars(rng, BASE64URL, 43) };
    format!("{}.{}.{sig}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims))
}

/// A Slack token or webhook URL.
pub fn slack_token(rng: &mut impl Rng) -> String {
    match rng.random_range(0..7) {
        0 | 1 => format!("xoxb-{}-{}-{}", digits(rng, 12), digits(rng, 13), chars(rng, ALNUM, 24)),
        2 => format!(
            "xoxp-{}-{}-{}-{}",
            digits(rng, 12),
            digits(rng, 12),
            digits(rng, 13),
            chars(rng, HEX, 32)
        ),
        3 => format!(
            "xapp-1-A{}-{}-{}",
            chars(rng, UPPER_DIGITS, 10),
            digits(rng, 13),
            chars(rng, HEX, 64)
        ),
        4 => format!(
            "{}-{}-{}",
            pick(rng, &["xoxa-2", "xoxr", "xoxs"]),
            digits(rng, 11),
            chars(rng, ALNUM, 20)
        ),
        5 => format!("xoxe.xoxp-1-{}", chars(rng, ALNUM, 40)),
        _ => format!(
            "https://hooks.slack.com/services/T{}/B{}/{}",
            chars(rng, UPPER_DIGITS, 8),
            chars(rng, UPPER_DIGITS, 10),
            chars(rng, ALNUM, 24)
        ),
    }
}

/// A private key block: header, a few lines of base64 body, footer.
pub fn private_key(rng: &mut impl Rng) -> String {
    let kind = pick(rng, &["RSA ", "EC ", "DSA ", "OPENSSH ", "ENCRYPTED ", "", "PGP "]);
    let block = if kind == "PGP " { " BLOCK" } else { "" };
    let lines: Vec<String> = (0..rng.random_range(2..6)).map(|_| chars(rng, BASE64, 64)).collect();
    format!(
        "-----BEGIN {kind}PRIVATE KEY{block}-----\n{}\n-----END {kind}PRIVATE KEY{block}-----",
        lines.join("\n")
    )
}

/// A key with a vendor prefix that `generic_api_key` knows.
pub fn vendor_key(rng: &mut impl Rng) -> String {
    match rng.random_range(0..8) {
        0 => format!("sk_live_{}", chars(rng, ALNUM, 24)),
        1 => format!("sk_test_{}", chars(rng, ALNUM, 24)),
        2 => format!("sk-proj-{}", chars(rng, ALNUM, 48)),
        3 => format!("sk-{}", chars(rng, ALNUM, 48)),
        4 => format!("sk-ant-api03-{}", chars(rng, BASE64URL, 40).replace('_', "x")),
        5 => format!("AIza{}", chars(rng, ALNUM, 35)),
        6 => format!("glpat-{}", chars(rng, ALNUM, 20)),
        _ => format!("hf_{}", chars(rng, ALNUM, 34)),
    }
}

/// A random-looking key without a prefix: hex, alphanumeric or a UUID.
pub fn opaque_key(rng: &mut impl Rng) -> String {
    match rng.random_range(0..4) {
        0 => chars(rng, HEX, 32),
        1 => chars(rng, ALNUM, 32),
        2 => {
            let n = rng.random_range(20..48);
            chars(rng, ALNUM, n)
        }
        _ => chars(rng, HEX, 40),
    }
}

/// An IPv4 address that is not a toy sequence like `1.2.3.4`.
pub fn ipv4(rng: &mut impl Rng) -> String {
    match rng.random_range(0..5) {
        0 => format!(
            "10.{}.{}.{}",
            rng.random_range(0..256),
            rng.random_range(0..256),
            rng.random_range(1..255)
        ),
        1 => format!("192.168.{}.{}", rng.random_range(0..256), rng.random_range(1..255)),
        2 => format!(
            "172.{}.{}.{}",
            rng.random_range(16..32),
            rng.random_range(0..256),
            rng.random_range(1..255)
        ),
        _ => format!(
            "{}.{}.{}.{}",
            rng.random_range(11..224),
            rng.random_range(0..256),
            rng.random_range(0..256),
            rng.random_range(1..255)
        ),
    }
}

/// An IPv6 address, full or compressed.
pub fn ipv6(rng: &mut impl Rng) -> String {
    let groups: Vec<String> =
        (0..8).map(|_| format!("{:x}", rng.random_range(0..0x10000u32))).collect();
    match rng.random_range(0..4) {
        0 => groups.iter().map(|g| format!("{:0>4}", g)).collect::<Vec<_>>().join(":"),
        1 => format!("2001:db8::{}", groups[7]),
        2 => format!("fe80::{}:{}:{}", groups[5], groups[6], groups[7]),
        _ => format!("{}:{}:{}::{}", groups[0], groups[1], groups[2], groups[7]),
    }
}

/// Countries whose IBAN body is digits only, and those with a bank code of letters first.
const IBAN_DIGIT_COUNTRIES: &[&str] = &[
    "DE", "AT", "BE", "CH", "CZ", "DK", "ES", "FI", "FR", "IT", "LU", "NO", "PL", "PT", "SE", "SK",
    "SI", "HR", "EE", "LT", "TR", "SA", "IL", "HU", "RS", "ME", "BA", "IS", "GR", "SM",
];
const IBAN_LETTER_COUNTRIES: &[&str] = &["GB", "NL", "IE", "BG", "RO", "LV", "MT", "GI", "CY"];

/// A valid IBAN of one of many countries, compact or in groups of four.
pub fn iban(rng: &mut impl Rng) -> String {
    let letters = rng.random_bool(0.3);
    let country = pick(rng, if letters { IBAN_LETTER_COUNTRIES } else { IBAN_DIGIT_COUNTRIES });
    let len = iban::length_of(country).expect("listed country");
    let bban = if letters {
        format!("{}{}", chars(rng, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", 4), digits(rng, len - 8))
    } else {
        digits(rng, len - 4)
    };
    let check = (2..=98)
        .map(|c| format!("{country}{c:02}{bban}"))
        .find(|s| iban::mod97(s))
        .expect("one check value fits");
    if rng.random_bool(0.5) {
        check
            .as_bytes()
            .chunks(4)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    } else {
        check
    }
}
