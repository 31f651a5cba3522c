//! The generator of `tests/pii_corpus/generated.jsonl`: for every pattern, valid values (from
//! `pii::samples`) and near misses, each set in a context people write — a sentence, a log line,
//! `key=value`, CSV, markdown, a URL, JSON inside text, next to punctuation and non-ASCII text.
//! Deterministic: one seed, one ChaCha8 stream, so the committed file can be checked against it.

use mcp_ledger::pii::samples::{self, chars, digits};
use rand::Rng;
use rand::seq::IndexedRandom;
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

pub const SEED: u64 = 20_240_613;

/// `vec![…]` of Strings from string slices and Strings alike.
macro_rules! options {
    ($($e:expr),* $(,)?) => { vec![$(($e).to_string()),*] };
}

/// Positives and near misses per pattern.
const POSITIVES: usize = 120;
const NEGATIVES: usize = 80;

/// Contexts any value may sit in; `{}` is the value.
const CONTEXTS: &[&str] = &[
    "{}",
    "Please use {} for this.",
    "see {} above",
    "({})",
    "\"{}\".",
    "<{}>",
    "[{}]",
    "{};",
    "{}!",
    "value: {}",
    "«{}»",
    "“{}”",
    "Grüße aus Zürich — {} — bis bald.",
    "详情请见 {}。",
    "Note: {} (ticket #4821)",
    "2024-05-01T12:00:03.118Z INFO [api] request accepted, detail={} status=200",
    "WARN 2024-05-01 12:00:03 worker-3: retrying with {}",
    "field={}",
    "{\"detail\": \"{}\", \"count\": 3}",
    "42,\"Doe, Jane\",{},Berlin",
    "| Jane Doe | {} | active |",
    "- **value**: {}",
    "> quoted reply: {}",
    "line one\n{}\nline three",
    "\t{}\t",
];

/// Contexts that carry the pattern's own words (a label, a column name).
fn labelled_contexts(pattern: &str) -> &'static [&'static str] {
    match pattern {
        "email" => &[
            "Contact: {}",
            "email={}",
            "mailto:{}",
            "From: Jane Doe <{}>",
            "https://example.com/invite?user={}&ref=mail",
            "Send the invoice to {}, thanks.",
            "E-Mail-Adresse: {}",
        ],
        "phone_us" => &[
            "Call me at {}.",
            "phone: {}",
            "Tel. {}",
            "mobile={}",
            "Reach the front desk on {} (ext. desk).",
            "| Support | {} |",
        ],
        "ssn" => &[
            "SSN: {}",
            "ssn={}",
            "Social Security Number {}",
            "SSN# {} on file",
            "my social is {}",
        ],
        "credit_card" => &[
            "Card number: {}",
            "card={}",
            "Visa {} exp 12/29",
            "charged the card {} for $42.00",
            "| card | {} |",
        ],
        "aws_access_key" => &[
            "aws_access_key_id = {}",
            "AWS_ACCESS_KEY_ID={}",
            "\"AccessKeyId\": \"{}\"",
            "key id {} was rotated",
        ],
        "aws_secret_key" => &[
            "aws_secret_access_key = {}",
            "AWS_SECRET_ACCESS_KEY={}",
            "\"SecretAccessKey\": \"{}\",",
            "aws_secret_key: \"{}\"",
            "AWS Secret Access Key: {}",
            "export AWS_SECRET_ACCESS_KEY=\"{}\"",
        ],
        "github_token" => &[
            "GITHUB_TOKEN={}",
            "token: {}",
            "git clone https://{}@github.com/acme/repo.git",
            "Authorization: token {}",
        ],
        "jwt" => &[
            "Authorization: Bearer {}",
            "id_token={}",
            "\"access_token\": \"{}\"",
            "cookie: session={}; Path=/",
        ],
        "slack_token" => {
            &["SLACK_BOT_TOKEN={}", "slack token: {}", "webhook: {}", "\"token\": \"{}\""]
        }
        "private_key_header" => {
            &["key file:\n{}\n", "{}", "```\n{}\n```", "\"private_key\": \"{}\""]
        }
        "generic_api_key" => &[],
        "ip_address" => &[
            "client ip {}",
            "connect to {}:8080",
            "X-Forwarded-For: {}",
            "host={}",
            "ping {} failed",
        ],
        "iban" => &[
            "IBAN: {}",
            "iban={}",
            "Please wire the funds to {}.",
            "Kontonummer (IBAN) {}",
            "| IBAN | {} |",
        ],
        _ => &[],
    }
}

/// Labels a generic key can sit behind, as written in configs, headers and prose.
const KEY_LABELS: &[&str] = &[
    "api_key={}",
    "API_KEY=\"{}\"",
    "\"apiKey\": \"{}\"",
    "X-API-Key: {}",
    "x-api-key: {}",
    "Authorization: Bearer {}",
    "client_secret: {}",
    "STRIPE_SECRET_KEY={}",
    "access_token={}",
    "?access_token={}&page=2",
    "auth_token: '{}'",
    "OPENAI_API_KEY={}",
    "**API key**: `{}`",
    "| api_key | {} |",
    "apikey => '{}'",
    "secret_key = \"{}\"",
];

fn fill(template: &str, value: &str) -> String {
    template.replacen("{}", value, 1)
}

fn line(text: &str, expect: &[(&str, &str)], tag: &str) -> Value {
    let expect: Vec<Value> =
        expect.iter().map(|(p, v)| json!({"pattern": p, "value": v})).collect();
    json!({"text": text, "expect": expect, "tag": tag})
}

/// A positive: `value` of `pattern` in a random context (a labelled one half the time).
fn positive(rng: &mut ChaCha8Rng, pattern: &str, value: &str) -> Value {
    let labelled = labelled_contexts(pattern);
    let template = if !labelled.is_empty() && rng.random_bool(0.5) {
        labelled.choose(rng).expect("non-empty")
    } else {
        CONTEXTS.choose(rng).expect("non-empty")
    };
    line(&fill(template, value), &[(pattern, value)], &format!("positive:{pattern}"))
}

fn negative(rng: &mut ChaCha8Rng, pattern: &str, text: &str) -> Value {
    let template =
        if text.contains('\n') { "{}" } else { CONTEXTS.choose(rng).expect("non-empty") };
    line(&fill(template, text), &[], &format!("near_miss:{pattern}"))
}

/// Values a detector needs context for are generated with it; everything else bare.
fn positive_value(rng: &mut ChaCha8Rng, pattern: &str) -> Value {
    match pattern {
        "email" => {
            let v = samples::email(rng);
            positive(rng, pattern, &v)
        }
        "phone_us" => {
            let v = if rng.random_bool(0.15) {
                samples::phone_toll_free(rng)
            } else {
                samples::phone_us(rng)
            };
            positive(rng, pattern, &v)
        }
        "ssn" => {
            if rng.random_bool(0.2) {
                let (a, g, s) = samples::ssn_parts(rng);
                let v = format!("{a:03}{g:02}{s:04}");
                let t =
                    ["SSN: {}", "ssn={}", "Social Security No. {}"].choose(rng).expect("non-empty");
                line(&fill(t, &v), &[(pattern, &v)], "positive:ssn")
            } else {
                {
                    let v = samples::ssn(rng);
                    positive(rng, pattern, &v)
                }
            }
        }
        "credit_card" => {
            let v = samples::card(rng);
            positive(rng, pattern, &v)
        }
        "aws_access_key" => {
            let v = samples::aws_access_key(rng);
            positive(rng, pattern, &v)
        }
        "aws_secret_key" => {
            let secret = samples::aws_secret_key(rng);
            if rng.random_bool(0.25) {
                // The credentials CSV and INI shapes: the id gives the context.
                let id = samples::aws_access_key(rng);
                let text = if rng.random_bool(0.5) {
                    format!("User name,Access key ID,Secret access key\nci-bot,{id},{secret}")
                } else {
                    format!("[default]\naws_access_key_id = {id}\naws_secret_access_key = {secret}")
                };
                line(
                    &text,
                    &[("aws_access_key", &id), (pattern, &secret)],
                    "positive:aws_secret_key",
                )
            } else {
                let t = labelled_contexts(pattern).choose(rng).expect("non-empty");
                line(&fill(t, &secret), &[(pattern, &secret)], "positive:aws_secret_key")
            }
        }
        "github_token" => {
            let v = samples::github_token(rng);
            positive(rng, pattern, &v)
        }
        "jwt" => {
            let v = samples::jwt(rng);
            positive(rng, pattern, &v)
        }
        "slack_token" => {
            let v = samples::slack_token(rng);
            positive(rng, pattern, &v)
        }
        "private_key_header" => {
            let key = samples::private_key(rng);
            let t = labelled_contexts(pattern).choose(rng).expect("non-empty");
            let header = key.lines().next().expect("a header line").to_string();
            line(&fill(t, &key), &[(pattern, &header)], "positive:private_key_header")
        }
        "generic_api_key" => {
            if rng.random_bool(0.35) {
                {
                    let v = samples::vendor_key(rng);
                    positive(rng, pattern, &v)
                }
            } else {
                let v = samples::opaque_key(rng);
                let t = KEY_LABELS.choose(rng).expect("non-empty");
                line(&fill(t, &v), &[(pattern, &v)], "positive:generic_api_key")
            }
        }
        "ip_address" => {
            let v = if rng.random_bool(0.3) { samples::ipv6(rng) } else { samples::ipv4(rng) };
            positive(rng, pattern, &v)
        }
        "iban" => {
            let v = samples::iban(rng);
            positive(rng, pattern, &v)
        }
        other => unreachable!("no generator for {other}"),
    }
}

/// A valid card number that is not one of the published test numbers (which are reported even
/// after an id word).
fn not_a_test_card(rng: &mut ChaCha8Rng) -> String {
    loop {
        let d = samples::card_digits(rng);
        if !samples::TEST_CARDS.contains(&d.as_str()) {
            return d;
        }
    }
}

/// Sixteen digits with Visa's prefix that fail the Luhn check.
fn luhn_failing(rng: &mut ChaCha8Rng) -> String {
    // Doubling every second digit from the right, as the check does; a sum that is not a
    // multiple of ten fails.
    let luhn_sum = |d: &str| -> u32 {
        d.bytes()
            .rev()
            .enumerate()
            .map(|(i, b)| {
                let x = u32::from(b - b'0');
                if i % 2 == 1 { (x * 2) % 10 + (x * 2) / 10 } else { x }
            })
            .sum()
    };
    loop {
        let d = format!("4{}", digits(rng, 15));
        if !luhn_sum(&d).is_multiple_of(10) {
            return d;
        }
    }
}

fn near_miss(rng: &mut ChaCha8Rng, pattern: &str) -> String {
    let pick = |rng: &mut ChaCha8Rng, xs: &[String]| xs.choose(rng).expect("non-empty").clone();
    match pattern {
        "email" => {
            let name = samples::FIRST_NAMES.choose(rng).expect("names");
            {
                let options: Vec<String> = options![
                    &format!("{name}@localhost"),
                    &format!("follow @{name} for updates"),
                    "icon@2x.png",
                    "logo@3x.webp",
                    &format!("{name} at acme dot io"),
                    &format!("{name}@"),
                    "@acme.io",
                    &format!("{name}..x@acme.io"),
                    "lodash@4.17.21",
                    "git@github.com:acme/shop.git",
                    "npm install @types/node",
                    &format!("ssh://git@gitlab.example.com/{name}/repo.git"),
                    &format!("{name}@acme"),
                    "user@[mailserver]",
                ];
                pick(rng, &options)
            }
        }
        "phone_us" => {
            let options: Vec<String> = options![
                &format!("Order #{}", rng.random_range(2_000_000_000u64..9_999_999_999)),
                &format!("ts={}", rng.random_range(1_600_000_000u64..1_800_000_000)),
                &format!("2024-{:02}-{:02}", rng.random_range(1..13), rng.random_range(1..29)),
                "ISBN 978-0-306-40615-7",
                &format!(
                    "ZIP {}-{:04}",
                    rng.random_range(10000..99999),
                    rng.random_range(0..10000)
                ),
                "+44 20 7946 0958",
                &format!("555-{:04}", rng.random_range(0..10000)),
                "123-456-7890",
                &format!("{0}{0}{0}-{0}{0}{0}-{0}{0}{0}{0}", rng.random_range(0..10)),
                &format!("id {}", rng.random_range(2_000_000_000u64..9_999_999_999)),
                &format!(
                    "total ${},{:03},{:03}.{:02}",
                    rng.random_range(1..99),
                    rng.random_range(0..1000),
                    rng.random_range(0..1000),
                    rng.random_range(0..100)
                ),
                &format!(
                    "v{}.{}.{}",
                    rng.random_range(1..20),
                    rng.random_range(0..99),
                    rng.random_range(0..999)
                ),
                "12:30:45.123",
            ];
            pick(rng, &options)
        }
        "ssn" => {
            let g = rng.random_range(1..100);
            let s = rng.random_range(1..10000);
            {
                let options: Vec<String> = options![
                    &format!("000-{g:02}-{s:04}"),
                    &format!("666-{g:02}-{s:04}"),
                    &format!("{}-{g:02}-{s:04}", rng.random_range(900..1000)),
                    &format!("{:03}-00-{s:04}", rng.random_range(1..666)),
                    &format!("{:03}-{g:02}-0000", rng.random_range(1..666)),
                    &format!("ref {}", digits(rng, 9)),
                    &format!("2023-{:02}-{:02}", rng.random_range(1..13), rng.random_range(1..29)),
                    &format!("part {:03}-{g:02}-{s:05}", rng.random_range(100..600)),
                    &format!("12-{:03}-{g:02}-{s:04}", rng.random_range(100..600)),
                ];
                pick(rng, &options)
            }
        }
        "credit_card" => {
            let options: Vec<String> = options![
                &luhn_failing(rng),
                &{
                    let d = luhn_failing(rng);
                    format!("{} {} {} {}", &d[..4], &d[4..8], &d[8..12], &d[12..])
                },
                &format!("Order number {}", not_a_test_card(rng)),
                &format!("tracking id {}", not_a_test_card(rng)),
                "0000 0000 0000 0000",
                &format!("ts {}", rng.random_range(1_600_000_000_000u64..1_800_000_000_000)),
                "ISBN 9780306406157",
                "IMEI 356938035643809",
                &format!(
                    "uuid {}-{}-4{}-a{}-{}",
                    chars(rng, b"0123456789abcdef", 8),
                    chars(rng, b"0123456789abcdef", 4),
                    chars(rng, b"0123456789abcdef", 3),
                    chars(rng, b"0123456789abcdef", 3),
                    chars(rng, b"0123456789abcdef", 12)
                ),
                &format!("pi is about 3.{}", digits(rng, 16)),
                "4111 1111 1111 111",
                &format!("serial 9{}", digits(rng, 15)),
            ];
            pick(rng, &options)
        }
        "aws_access_key" => {
            let options: Vec<String> = options![
                "AKIAIOSFODNN7EXAMPLE",
                "AKIAI44QH8DHBEXAMPLE",
                "AKIAXXXXXXXXXXXXXXXX",
                &format!("AKIA{}", chars(rng, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 12)),
                &format!("AKIA{}", chars(rng, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 18)),
                &format!("akia{}", chars(rng, b"abcdefghijklmnopqrstuvwxyz234567", 16)),
                &format!("AIDA{}", chars(rng, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 17)),
                "aws_access_key_id = <YOUR_ACCESS_KEY_ID>",
            ];
            pick(rng, &options)
        }
        "aws_secret_key" => {
            let options: Vec<String> = options![
                "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                &samples::aws_secret_key(rng),
                &format!("commit {}", chars(rng, b"0123456789abcdef", 40)),
                "AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY}",
                "aws_secret_access_key = <YOUR_SECRET_ACCESS_KEY>",
                &format!("blob {}", chars(rng, samples::BASE64, 120)),
            ];
            pick(rng, &options)
        }
        "github_token" => {
            let options: Vec<String> = options![
                "ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
                "ghp_YourPersonalAccessTokenGoesRightHere",
                &format!(
                    "ghp_{}",
                    chars(
                        rng,
                        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                        12
                    )
                ),
                &format!(
                    "ghx_{}",
                    chars(
                        rng,
                        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                        36
                    )
                ),
                &format!(
                    "gh_{}",
                    chars(
                        rng,
                        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
                        36
                    )
                ),
                "github_pat_short",
                "the ghp_ prefix marks a classic token",
                "GITHUB_TOKEN=${{ secrets.GITHUB_TOKEN }}",
            ];
            pick(rng, &options)
        }
        "jwt" => {
            let b64 = |s: &str| {
                use base64::Engine as _;
                base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
            };
            let sig =
                chars(rng, b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", 43);
            let payload = b64(r#"{"sub":"42","name":"erin"}"#);
            {
                let options: Vec<String> = options![
                    &b64(r#"{"alg":"HS256","typ":"JWT"}"#),
                    &format!("{}.{payload}.{sig}", b64(r#"{"typ":"JWT"}"#)),
                    &format!("{}.{payload}.{sig}", b64(r#"{"alg" HS256}"#)),
                    &format!("{}=", b64(r#"{"user":"bob","role":"admin"}"#)),
                    "eyeglasses.example.com",
                    &format!("{}.{payload}", b64(r#"{"kid":"k1"}"#)),
                    "eyJ is how base64 JSON starts",
                ];
                pick(rng, &options)
            }
        }
        "slack_token" => {
            let options: Vec<String> = options![
                "xoxb-not-a-real-token",
                "xoxb-your-token-here",
                "xoxb-XXXXXXXXXXXX-XXXXXXXXXXXX-XXXXXXXXXXXXXXXXXXXXXXXX",
                "xoxp-0000",
                "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
                "https://hooks.slack.com/services/",
                &format!(
                    "channel C{} in workspace T{}",
                    chars(rng, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 8),
                    chars(rng, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 8)
                ),
                "see https://api.slack.com/authentication/token-types",
            ];
            pick(rng, &options)
        }
        "private_key_header" => {
            let options: Vec<String> = options![
                "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----",
                "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----",
                "-----BEGIN PGP PUBLIC KEY BLOCK-----",
                "-----BEGIN PGP SIGNATURE-----",
                "BEGIN RSA PRIVATE KEY",
                "-----END RSA PRIVATE KEY-----",
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHd0ZXN0a2V5 deploy@ci",
                "the file starts with a BEGIN line and holds a private key",
            ];
            pick(rng, &options)
        }
        "generic_api_key" => {
            let options: Vec<String> = options![
                "api_key=your_api_key_here",
                "api_key=<API_KEY>",
                "API_KEY=${API_KEY}",
                "api_key=xxxxxxxxxxxxxxxxxxxxxxxx",
                "API_KEY=changeme",
                "apiKey: process.env.STRIPE_API_KEY",
                "token: null",
                "api_key=aaaaaaaaaaaaaaaaaaaa",
                "api_key=1234",
                "the key to success is consistency",
                "max_tokens=4096",
                &format!(
                    "nextPageToken: {}",
                    chars(rng, samples::BASE64, 24).replace(['+', '/'], "x")
                ),
                &format!("\"progressToken\": \"{}\"", chars(rng, b"0123456789abcdef", 20)),
                "publicKey: MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE",
                "Authorization: Basic dXNlcjpwYXNzd29yZA==",
                "pip install scikit-learn; import sk-learn-compatible wrappers",
                "sk_live_xxxxxxxxxxxxxxxxxxxxxxxx",
                "use a Bearer token in the header",
                &format!("idempotency_key: {}", chars(rng, b"0123456789abcdef", 32)),
                "sort_key=created_at_desc",
                "secret santa list is ready",
            ];
            pick(rng, &options)
        }
        "ip_address" => {
            let options: Vec<String> = options![
                "version 1.2.3.4",
                &format!("release v{}.0.0.{}", rng.random_range(1..20), rng.random_range(1..9)),
                "1.2.3.4.5",
                &format!("{}.1.1.1", rng.random_range(256..999)),
                "01.02.03.04",
                &format!("{:02}.{:02}.2024", rng.random_range(1..29), rng.random_range(1..13)),
                &format!(
                    "Chrome/{}.0.{}.{}",
                    rng.random_range(100..130),
                    rng.random_range(1000..7000),
                    rng.random_range(10..200)
                ),
                "1.2.3.4-beta",
                "OID 1.3.6.1.4.1.311.21.7",
                "00:1a:2b:3c:4d:5e",
                "std::vector<int>",
                "upgraded to 2.4.1.0",
                "at 10:30:45",
                &format!(
                    "build {}.{}.{}",
                    rng.random_range(1..20),
                    rng.random_range(0..99),
                    rng.random_range(0..9999)
                ),
            ];
            pick(rng, &options)
        }
        "iban" => {
            let good = samples::iban(rng).replace(' ', "");
            let broken = {
                let mut b: Vec<char> = good.chars().collect();
                let last = b.len() - 1;
                b[last] = if b[last] == '0' { '1' } else { '0' };
                b.into_iter().collect::<String>()
            };
            {
                let options: Vec<String> = options![
                    &broken,
                    &good[..good.len() - 2],
                    &format!("ZZ{}", &good[2..]),
                    "DEUTDEFF500",
                    &format!("AB12{}", chars(rng, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", 16)),
                    "GB82WEST",
                    &format!("SWIFT {}", chars(rng, b"ABCDEFGHIJKLMNOPQRSTUVWXYZ", 8)),
                ];
                pick(rng, &options)
            }
        }
        other => unreachable!("no near misses for {other}"),
    }
}

/// A few lines with several kinds of finding each.
fn mixed(rng: &mut ChaCha8Rng) -> Value {
    let email = samples::email(rng);
    let phone = samples::phone_us(rng);
    let ip = samples::ipv4(rng);
    let card = samples::card(rng);
    match rng.random_range(0..3) {
        0 => line(
            &format!("Customer {email} called from {phone} about a refund."),
            &[("email", &email), ("phone_us", &phone)],
            "mixed",
        ),
        1 => line(
            &format!(
                "{ip} - - [01/May/2024:12:00:03 +0000] \"POST /login HTTP/1.1\" 401 user={email}"
            ),
            &[("ip_address", &ip), ("email", &email)],
            "mixed",
        ),
        _ => line(
            &format!("Payment by {card} failed; notify {email}."),
            &[("credit_card", &card), ("email", &email)],
            "mixed",
        ),
    }
}

pub const PATTERNS: &[&str] = &[
    "email",
    "phone_us",
    "ssn",
    "credit_card",
    "aws_access_key",
    "aws_secret_key",
    "github_token",
    "jwt",
    "slack_token",
    "private_key_header",
    "generic_api_key",
    "ip_address",
    "iban",
];

/// The whole generated corpus, one JSON object per line.
pub fn corpus() -> String {
    let mut rng = samples::rng(SEED);
    let mut lines = Vec::new();
    for pattern in PATTERNS {
        for _ in 0..POSITIVES {
            lines.push(positive_value(&mut rng, pattern));
        }
        for _ in 0..NEGATIVES {
            let text = near_miss(&mut rng, pattern);
            lines.push(negative(&mut rng, pattern, &text));
        }
    }
    for _ in 0..60 {
        lines.push(mixed(&mut rng));
    }
    let mut out = String::new();
    for l in lines {
        out.push_str(&l.to_string());
        out.push('\n');
    }
    out
}
