//! The built-in detectors: one [`Rule`] per regex (a pattern may have several rules, e.g.
//! `ip_address` has one for IPv4 and one for IPv6), each with the validator that turns a regex
//! candidate into a finding or rejects it.
//!
//! A regex only proposes; the validator decides, seeing the whole text, the candidate's spans and
//! the JSON key the text sits under. Validators are where false positives are kept out (checksums,
//! number ranges, context words) and where a span may be adjusted (an IBAN cut to its country's
//! length, an e-mail trimmed of leading dots, a PEM header widened to the whole key block).

mod api_key;
mod aws;
pub(super) mod card;
pub(crate) mod context;
mod email;
mod github;
pub(super) mod iban;
mod ip;
mod jwt;
mod phone;
mod private_key;
mod slack;
mod ssn;

use std::ops::Range;

pub(crate) use super::triggers::family;

pub(crate) use api_key::whole_value;

/// One candidate proposed by a rule's regex.
pub(crate) struct Candidate<'a> {
    /// The whole string being scanned.
    pub text: &'a str,
    /// The span to report: the regex's `v` group if it has one, else the whole match.
    pub span: Range<usize>,
    /// The regex's `k` group (a label such as `api_key` in `api_key=…`), if it has one.
    pub label: Option<Range<usize>>,
    /// The JSON object member name the string is the value of, if any.
    pub key: Option<&'a str>,
}

impl Candidate<'_> {
    pub fn value(&self) -> &str {
        &self.text[self.span.clone()]
    }
}

/// Accepts a candidate (returning the span to report, usually `c.span`) or rejects it.
pub(crate) type Validate = fn(&Candidate<'_>) -> Option<Range<usize>>;

/// How much a pattern's finding is worth when two findings overlap: the higher wins. Specific
/// formats (a GitHub token) beat loose ones (anything labelled `token=`), so that a key is
/// reported under its most precise name.
pub(crate) mod priority {
    pub const STRUCTURED: u8 = 90; // PEM blocks, JWTs, vendor tokens: unmistakable prefixes
    pub const AWS_SECRET: u8 = 80;
    pub const CHECKSUMMED: u8 = 70; // IBAN, card numbers: a checksum passed
    pub const EMAIL: u8 = 60;
    pub const NUMBER: u8 = 50; // SSN, phone
    pub const IP: u8 = 40;
    pub const CUSTOM: u8 = 20;
    pub const GENERIC: u8 = 10;
}

/// One regex of a built-in pattern.
pub(crate) struct Rule {
    pub pattern: &'static str,
    /// Written with `\b`, which is compiled as an ASCII word boundary (see `Scanner::new`).
    pub regex: &'static str,
    pub validate: Validate,
    pub priority: u8,
    /// The trigger families whose windows this rule runs in (see `triggers`).
    pub families: u16,
    /// Fewest ASCII digits a match has; a window with fewer is skipped without running the regex.
    pub min_digits: u8,
}

/// A built-in pattern's name and one line on what it finds (for `pii patterns` and the docs).
pub(crate) struct PatternInfo {
    pub name: &'static str,
    pub summary: &'static str,
}

pub(crate) const PATTERNS: &[PatternInfo] = &[
    PatternInfo { name: "email", summary: "e-mail addresses, Unicode local parts and domains" },
    PatternInfo { name: "phone_us", summary: "US/NANP phone numbers in the common written forms" },
    PatternInfo {
        name: "ssn",
        summary: "US social security numbers (bare 9 digits only with context)",
    },
    PatternInfo {
        name: "credit_card",
        summary: "payment card numbers: issuer prefix, length, Luhn",
    },
    PatternInfo { name: "aws_access_key", summary: "AWS access key ids (AKIA…, ASIA…)" },
    PatternInfo {
        name: "aws_secret_key",
        summary: "AWS secret access keys, with an AWS or secret label nearby",
    },
    PatternInfo {
        name: "github_token",
        summary: "GitHub tokens (ghp_, gho_, ghu_, ghs_, ghr_, github_pat_)",
    },
    PatternInfo { name: "jwt", summary: "JSON Web Tokens whose header decodes to JSON with `alg`" },
    PatternInfo {
        name: "slack_token",
        summary: "Slack tokens (xoxb-, xoxp-, xapp-, …) and webhook URLs",
    },
    PatternInfo { name: "private_key_header", summary: "PEM/OpenSSH/PGP private key blocks" },
    PatternInfo {
        name: "generic_api_key",
        summary: "labelled keys and tokens, Bearer tokens, vendor-prefixed keys",
    },
    PatternInfo { name: "ip_address", summary: "IPv4 (not version strings) and IPv6 addresses" },
    PatternInfo { name: "iban", summary: "IBANs: per-country length and mod-97 checksum" },
];

/// Every built-in rule, patterns in the order of [`PATTERNS`].
pub(crate) fn rules() -> impl Iterator<Item = &'static Rule> {
    [
        email::RULES,
        phone::RULES,
        ssn::RULES,
        card::RULES,
        aws::RULES,
        github::RULES,
        jwt::RULES,
        slack::RULES,
        private_key::RULES,
        api_key::RULES,
        ip::RULES,
        iban::RULES,
    ]
    .into_iter()
    .flatten()
}
