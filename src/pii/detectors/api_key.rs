//! `generic_api_key`: keys and tokens that have no format of their own, found by their label or
//! their vendor prefix.
//!
//! * Labelled: `api_key=…`, `"apiKey": "…"`, `X-API-Key: …`, `client_secret: …`, `**API key**:
//!   \`…\``, `| access_token | … |`, `GITHUB_TOKEN=…`. The label must end in a credential word
//!   ([`credential_label`]) and not be one of the many harmless `…token`/`…key` names
//!   (`nextPageToken`, `progressToken`, `publicKey`, `idempotency_key`, …).
//! * `Authorization: Bearer …`, `Authorization: Token …`, `Authorization: <token>`.
//! * Vendor prefixes: Stripe `sk_live_`/`sk_test_`/`rk_…`, OpenAI/Anthropic `sk-…`, Google
//!   `AIza…`, GitLab `glpat-`, npm `npm_`, Hugging Face `hf_`, SendGrid `SG.`, PyPI `pypi-`,
//!   Shopify `shpat_`…, DigitalOcean `dop_v1_`, Brevo `xkeysib-`, Mailgun `key-`, Twilio `SK…`.
//! * A JSON string whose member name is a credential label (`{"api_key": "…"}`), via
//!   [`key_context`].
//!
//! Every value must look like a secret ([`secret_value_ok`]): 16+ characters, letters and digits
//! (or mixed case), entropy of at least 3 bits per character, not a placeholder
//! (`your_api_key_here`, `xxxx`, `<token>`, `${API_KEY}` never match the value class at all), and
//! not made of words (`process.env.API_KEY`, `my-secret-value`).

use std::ops::Range;

use super::context::{classes, entropy, is_placeholder, is_word_like, normalize_label};
use super::{Candidate, Rule, aws, family, priority};

pub(super) const RULES: &[Rule] = &[
    Rule {
        pattern: "generic_api_key",
        regex: r#"(?i)\b(?P<k>[a-z0-9_.\-]{0,40}?(?:(?:api|access|auth|secret|client|private|app|bearer|refresh|session|signing|webhook|master|encryption|account|subscription)[ _.\-]?)?(?:key|token|secret))(?:["'`*\]]{0,4}[ \t]{0,8}(?:[:=|]|=>|:=|->)[ \t]{0,8}["'`*]{0,4}[ \t]{0,8}|["'`*\]]{0,4}[ \t]{1,8}(?:is[ \t]{1,8})?["'`*]{0,4})(?P<v>[A-Za-z0-9_\-./+=~]{16,})"#,
        validate: labelled,
        priority: priority::GENERIC,
        families: family::KEYWORD,
        min_digits: 0,
    },
    Rule {
        pattern: "generic_api_key",
        regex: r"(?i)\bbearer[ \t]{1,8}(?P<v>[A-Za-z0-9_\-.~+/]{16,}=*)",
        validate: scheme,
        priority: priority::GENERIC,
        families: family::KEYWORD,
        min_digits: 0,
    },
    Rule {
        pattern: "generic_api_key",
        regex: r#"(?i)\b(?:proxy-)?authorization["']?[ \t]{0,8}[:=][ \t]{0,8}["']?(?:(?:token|apikey|api-key|key)[ \t]{1,8})?(?P<v>[A-Za-z0-9_\-.~+/]{16,}=*)"#,
        validate: scheme,
        priority: priority::GENERIC,
        families: family::KEYWORD,
        min_digits: 0,
    },
    Rule {
        pattern: "generic_api_key",
        regex: r"\b(?:(?:sk|rk)_(?:live|test)_[0-9A-Za-z]{16,}|sk-(?:proj-|ant-[a-z]+[0-9]{2}-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}|AIza[0-9A-Za-z_\-]{35}|glpat-[0-9A-Za-z_\-]{20,}|npm_[0-9A-Za-z]{36}|hf_[0-9A-Za-z]{30,}|SG\.[0-9A-Za-z_\-]{16,}\.[0-9A-Za-z_\-]{16,}|pypi-[0-9A-Za-z_\-]{40,}|shp(?:at|ca|pa|ss)_[0-9a-fA-F]{32}|dop_v1_[0-9a-f]{64}|xkeysib-[0-9a-f]{64}-[0-9A-Za-z]{16}|key-[0-9a-f]{32}|SK[0-9a-f]{32})",
        validate: vendor,
        priority: priority::GENERIC,
        families: family::VENDOR,
        min_digits: 0,
    },
];

/// Labels (reduced by [`normalize_label`]) whose value is a credential, whatever comes before
/// them (`stripe_api_key`, `X-API-Key`, `AZURE_CLIENT_SECRET`).
#[rustfmt::skip]
const STRONG_SUFFIXES: &[&str] = &[
    "apikey", "apitoken", "apisecret", "accesstoken", "accesskey", "authtoken", "authkey",
    "secretkey", "secrettoken", "clientsecret", "appsecret", "appkey", "consumersecret",
    "signingsecret", "webhooksecret", "privatetoken", "bearertoken", "refreshtoken",
    "sessiontoken", "accountkey", "sharedaccesskey", "subscriptionkey", "masterkey",
    "encryptionkey", "signingkey", "privatekey", "authorization",
];

/// Labels ending in `token`, `secret` or `key` that name something else.
#[rustfmt::skip]
const HARMLESS_SUFFIXES: &[&str] = &[
    "pagetoken", "nexttoken", "continuationtoken", "synctoken", "csrftoken", "xsrftoken",
    "cancellationtoken", "progresstoken", "resumetoken", "cursortoken", "paginationtoken",
    "publickey", "publishablekey", "idempotencykey", "sortkey", "partitionkey", "primarykey",
    "foreignkey", "cachekey", "objectkey", "routingkey", "hashkey", "rowkey", "eostoken",
    "bostoken", "padtoken", "unktoken", "septoken", "clstoken", "masktoken", "maxtoken",
    "counttoken", "numtoken",
];

/// Whether a label (as written, e.g. `X-API-Key`) names a credential.
pub(crate) fn credential_label(label: &str) -> bool {
    let l = normalize_label(label);
    if HARMLESS_SUFFIXES.iter().any(|s| l.ends_with(s)) {
        return false;
    }
    STRONG_SUFFIXES.iter().any(|s| l.ends_with(s)) || l.ends_with("token") || l.ends_with("secret")
}

/// Whether `v` looks like a secret value; `strict` for weak context (a label followed only by a
/// space, as in prose).
pub(crate) fn secret_value_ok(v: &str, strict: bool) -> bool {
    let k = classes(v);
    let letters = k.upper + k.lower;
    let mixed = k.digit > 0 && letters > 0 || (k.upper >= 2 && k.lower >= 2 && v.len() >= 20);
    let min_len = if strict { 20 } else { 16 };
    let min_entropy = if strict { 3.5 } else { 3.0 };
    (min_len..=512).contains(&v.len())
        && mixed
        && (!strict || k.digit > 0)
        && entropy(v) >= min_entropy
        && !is_placeholder(v)
        && !is_word_like(v)
        && !v.starts_with(['/', '.', '-'])
        && !looks_like_file_name(v)
}

/// `config.yaml`, `id_rsa.pub`: a name, not a value.
fn looks_like_file_name(v: &str) -> bool {
    v.rsplit_once('.').is_some_and(|(_, ext)| {
        matches!(
            ext,
            "json"
                | "yaml"
                | "yml"
                | "toml"
                | "txt"
                | "pem"
                | "key"
                | "pub"
                | "env"
                | "cfg"
                | "conf"
                | "ini"
                | "js"
                | "ts"
                | "py"
                | "rb"
                | "go"
                | "rs"
        )
    })
}

/// The value trimmed of sentence punctuation the value class lets in (`…key=abc123.`).
fn trimmed(c: &Candidate<'_>) -> Range<usize> {
    let v = c.value();
    let t = v.trim_end_matches(['.', '-', '~']);
    c.span.start..c.span.start + t.len()
}

fn labelled(c: &Candidate<'_>) -> Option<Range<usize>> {
    let label = c.label.clone()?;
    if !credential_label(&c.text[label.clone()]) {
        return None;
    }
    let gap = &c.text[label.end..c.span.start];
    let strict = !gap.contains([':', '=', '|', '>']);
    let span = trimmed(c);
    secret_value_ok(&c.text[span.clone()], strict).then_some(span)
}

fn scheme(c: &Candidate<'_>) -> Option<Range<usize>> {
    let span = trimmed(c);
    secret_value_ok(&c.text[span.clone()], false).then_some(span)
}

/// Vendor prefixes, longest first, so that what follows is the random part.
#[rustfmt::skip]
const VENDOR_PREFIXES: &[&str] = &[
    "sk-svcacct-", "sk-admin-", "sk_live_", "sk_test_", "rk_live_", "rk_test_", "sk-proj-",
    "sk-ant-", "xkeysib-", "dop_v1_", "shpat_", "shpca_", "shppa_", "shpss_", "glpat-", "pypi-",
    "AIza", "npm_", "key-", "sk-", "hf_", "SG.", "SK",
];

fn vendor(c: &Candidate<'_>) -> Option<Range<usize>> {
    let s = c.value();
    if c.text[c.span.end..].starts_with(|ch: char| ch.is_alphanumeric()) {
        return None;
    }
    let body = VENDOR_PREFIXES.iter().find_map(|p| s.strip_prefix(p)).unwrap_or(s);
    let k = classes(body);
    let ok = entropy(body) >= 3.0
        && !is_placeholder(body)
        && !is_word_like(body)
        && (k.digit > 0 || (k.upper > 0 && k.lower > 0));
    ok.then(|| c.span.clone())
}

/// The finding for string `s` that is the value of JSON member `key`, judged as a whole (after an
/// optional `Bearer `/`Token ` scheme): an AWS secret under an AWS-like name, a generic key under
/// a credential name. `(pattern, span)`; `None` when the name says nothing about secrets.
pub(crate) fn whole_value(key: &str, s: &str) -> Option<(&'static str, Range<usize>)> {
    // Every credential name ends in one of these words; most member names end elsewhere, and
    // this runs for every string in a payload.
    let tail = key.trim_end_matches(|c: char| !c.is_ascii_alphanumeric()).as_bytes();
    let ends = |w: &str| {
        tail.len() >= w.len() && tail[tail.len() - w.len()..].eq_ignore_ascii_case(w.as_bytes())
    };
    if !["key", "token", "secret", "authorization"].iter().any(|w| ends(w)) {
        return None;
    }
    let flat = normalize_label(key);
    let aws_name = flat.contains("secret") && (flat.contains("aws") || flat.contains("access"));
    if !aws_name && !credential_label(key) {
        return None;
    }
    let trimmed = s.trim();
    let lead = s.len() - s.trim_start().len();
    let (skip, value) = ["Bearer ", "bearer ", "Token ", "token "]
        .iter()
        .find_map(|p| trimmed.strip_prefix(p).map(|v| (p.len(), v)))
        .unwrap_or((0, trimmed));
    if value.is_empty() || value.contains(char::is_whitespace) {
        return None;
    }
    let span = lead + skip..lead + skip + value.len();
    if aws::secret_value_ok(value) && aws::secret_context_ok(key, value) {
        return Some(("aws_secret_key", span));
    }
    let charset = value.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-./+=~".contains(&b));
    (charset && secret_value_ok(value, false)).then_some(("generic_api_key", span))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::pii::tests::{assert_flags, assert_not_flags, scanner, spans};

    const KEY: &str = "Zx9Qw3Lm7Pv2Rt8K";

    #[test]
    fn labelled_values() {
        for text in [
            format!("api_key={KEY}"),
            format!("\"apiKey\": \"{KEY}\""),
            format!("X-API-Key: {KEY}"),
            format!("client_secret: '{KEY}'"),
            format!("STRIPE_SECRET_KEY={KEY}"),
            format!("**API key**: `{KEY}`"),
            format!("| access_token | {KEY} |"),
            format!("?access_token={KEY}&page=2"),
            format!("'api-key' => '{KEY}'"),
            format!("GITHUB_TOKEN={KEY}"),
        ] {
            assert_eq!(spans(&text), [("generic_api_key", KEY)], "{text}");
        }
        assert_flags("generic_api_key", "my API key is 4f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c");
    }

    #[test]
    fn bearer_and_vendor_keys() {
        assert_eq!(spans(&format!("Authorization: Bearer {KEY}")), [("generic_api_key", KEY)]);
        assert_eq!(spans(&format!("Authorization: Token {KEY}")), [("generic_api_key", KEY)]);
        for key in [
            "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
            "rk_test_51H8xYzAbCdEf0123456789",
            "sk-proj-Ab3dE5gH7jK9mN1pQ3sT5vX7zB9dF1hJ3lN5",
            "sk-ant-api03-Xy7wV5uT3sR1qP9oN7mL5kJ3hG1fE9dC7bA5",
            "AIzaSyA1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q",
            "glpat-x7Yz9AbCdEfGh1JkLmNo",
            "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
        ] {
            assert_eq!(spans(&format!("key: {key}.")), [("generic_api_key", key)], "{key}");
        }
    }

    #[test]
    fn rejects_names_placeholders_and_low_entropy() {
        for text in [
            "api_key=aaaaaaaaaaaaaaaa",
            "api_key=your_api_key_here_123",
            "api_key=${API_KEY}",
            "api_key=<YOUR_API_KEY>",
            "apiKey: process.env.STRIPE_API_KEY",
            "Zx9Qw3Lm7Pv2Rt8K",
            "nextPageToken: CiAKGjBpNDd2Nmp0NGxkNnJj",
            "\"progressToken\": \"a1b2c3d4e5f6a7b8c9d0\"",
            "publicKey: MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE",
            "cache_key=user_123_profile_v2",
            "tokenizer_config_value_a1b2c3",
            "sk-learn-compatible-estimator",
            "sk_live_xxxxxxxxxxxxxxxxxxxxxxxx",
            "max_tokens=4096",
            "the secret sauce is 2 parts love",
            "Authorization: Basic dXNlcjpwYXNzd29yZA==",
        ] {
            assert_not_flags("generic_api_key", text);
        }
    }

    #[test]
    fn json_member_names() {
        let v = json!({
            "headers": {"x-api-key": KEY, "Authorization": format!("Token {KEY}")},
            "token": "aaaaaaaaaaaaaaaaaaaa",
            "nextPageToken": KEY,
            "SecretAccessKey": "k8Jd7Hs2Lq9Wm3Np5Rt1Vx4Zb6Cf0Gh2Jk8Mn3Pq",
        });
        let mut got: Vec<(String, String)> =
            scanner().scan_json(&v).into_iter().map(|f| (f.pattern, f.pointer)).collect();
        got.sort();
        let want = [
            ("aws_secret_key", "/SecretAccessKey"),
            ("generic_api_key", "/headers/Authorization"),
            ("generic_api_key", "/headers/x-api-key"),
        ];
        assert_eq!(got, want.map(|(a, b)| (a.to_string(), b.to_string())));
    }
}
