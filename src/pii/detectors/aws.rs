//! `aws_access_key` and `aws_secret_key`.
//!
//! Access key ids are `AKIA` (long-term), `ASIA` (temporary), `ABIA`, `ACCA` or the older `A3T?`,
//! then 16 upper-case letters or digits. AWS documents `AKIAIOSFODNN7EXAMPLE` and friends, so ids ending in `EXAMPLE`
//! are not findings, nor are `AKIAXXXXXXXXXXXXXXXX`-style stand-ins.
//!
//! A secret access key is 40 characters of base64 (`A-Z a-z 0-9 / +`). A bare string of that
//! shape is ambiguous (a slice of a blob, a hash in some other encoding, an unrelated token), so
//! it is reported only with AWS context ([`secret_context_ok`]): the word `aws` or the phrase
//! `secret access` shortly before it (this covers `aws_secret_access_key=`, `SecretAccessKey:`,
//! `AWS_SECRET=`), an access key id near it (the CSV and `~/.aws/credentials` shapes), or the word
//! `secret` shortly before a value that contains `/` or `+` (which a plain alphanumeric API key
//! never does). The same rule applies with a JSON member name as the context. A labelled
//! `secret_key=<40 alphanumerics>` without AWS context is left to `generic_api_key`. The value must
//! also look random: upper, lower and digits, not hex, high entropy, no `EXAMPLE`.

use std::ops::Range;

use super::context::{
    classes, entropy, is_placeholder, normalize_label, window_after, window_before, words_rev,
};
use super::{Candidate, Rule, family, priority};

pub(super) const RULES: &[Rule] = &[
    Rule {
        pattern: "aws_access_key",
        regex: r"\b(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}\b",
        validate: access_key,
        priority: priority::STRUCTURED,
        families: family::AWS_ID,
        min_digits: 0,
    },
    Rule {
        pattern: "aws_secret_key",
        regex: r"[A-Za-z0-9/+]{40}",
        validate: contextual_secret,
        priority: priority::AWS_SECRET,
        families: family::AWS_CONTEXT | family::AWS_ID,
        min_digits: 0,
    },
];

fn access_key(c: &Candidate<'_>) -> Option<Range<usize>> {
    let tail = &c.value()[4..];
    if tail.contains("EXAMPLE") || is_placeholder(tail) || entropy(tail) < 2.5 {
        return None;
    }
    Some(c.span.clone())
}

/// Whether `v` has the shape of a real secret access key (see the module docs).
pub(crate) fn secret_value_ok(v: &str) -> bool {
    let k = classes(v);
    v.len() == 40
        && k.upper > 0
        && k.lower > 0
        && k.digit > 0
        && !v.contains("EXAMPLE")
        && !is_placeholder(v)
        && entropy(v) >= 4.0
}

/// Whether the 40 characters at `span` stand alone rather than being a slice of a longer run.
fn stands_alone(text: &str, span: &Range<usize>) -> bool {
    let base64 = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'+');
    // `=` can only pad the end of a longer run; before the value it is `key=`.
    !window_before(text, span.start, 1).as_bytes().first().is_some_and(base64)
        && !window_after(text, span.end, 1)
            .as_bytes()
            .first()
            .is_some_and(|b| base64(b) || *b == b'=')
}

fn contextual_secret(c: &Candidate<'_>) -> Option<Range<usize>> {
    if !stands_alone(c.text, &c.span) || !secret_value_ok(c.value()) {
        return None;
    }
    let near = window_before(c.text, c.span.start, 80);
    let from = c.span.start.saturating_sub(300);
    let around = window_after(c.text, from, c.span.end + 300 - from);
    (secret_context_ok(near, c.value()) || has_access_key_id(around)).then(|| c.span.clone())
}

/// Whether `context` (the text just before a secret-shaped `value`, or its JSON member name) says
/// it is an AWS secret key; see the module docs.
pub(crate) fn secret_context_ok(context: &str, value: &str) -> bool {
    // A word starting with `aws` (`AWS_SECRET`, `awsSecret`), not the letters inside `laws`.
    let aws = words_rev(context).any(|w| w.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("aws")));
    let flat = normalize_label(context);
    aws || flat.contains("secretaccess") || (flat.contains("secret") && value.contains(['/', '+']))
}

/// Whether `s` contains something shaped like an access key id.
fn has_access_key_id(s: &str) -> bool {
    let b = s.as_bytes();
    b.windows(20).any(|w| {
        matches!(&w[..4], b"AKIA" | b"ASIA")
            && w[4..].iter().all(|x| x.is_ascii_uppercase() || x.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use crate::pii::tests::{assert_flags, assert_not_flags, spans};

    const SECRET: &str = "k8Jd7Hs2Lq9Wm3Np5Rt1Vx4Zb6Cf0Gh2Jk8Mn3Pq";

    #[test]
    fn access_key_ids() {
        assert_flags("aws_access_key", "key AKIAZ4X7QWERTY2PLMNB");
        assert_flags("aws_access_key", "ASIAY34FZKBOKMUTVV7A,");
        assert_not_flags("aws_access_key", "AKIAIOSFODNN7EXAMPLE");
        assert_not_flags("aws_access_key", "AKIAXXXXXXXXXXXXXXXX");
        assert_not_flags("aws_access_key", "AKIAZ4X7QWERTY2PLMN");
        assert_not_flags("aws_access_key", "AKIAZ4X7QWERTY2PLMNBX");
    }

    #[test]
    fn labelled_secrets() {
        assert_eq!(SECRET.len(), 40);
        for text in [
            format!("aws_secret_access_key = \"{SECRET}\""),
            format!("export AWS_SECRET_ACCESS_KEY={SECRET}"),
            format!("\"SecretAccessKey\": \"{SECRET}\","),
            format!("AWS Secret Access Key: {SECRET}"),
            format!("MY_AWS_SECRET={SECRET}"),
            format!("aws:\n  region: us-east-1\n  secret_key: {SECRET}"),
        ] {
            assert_eq!(spans(&text), [("aws_secret_key", SECRET)], "{text}");
        }
        assert_not_flags(
            "aws_secret_key",
            "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        );
    }

    #[test]
    fn bare_secrets_need_context() {
        assert_not_flags("aws_secret_key", SECRET);
        assert_not_flags("aws_secret_key", &format!("secret_key={SECRET}"));
        assert_flags("aws_secret_key", "secret_key=k8Jd7Hs2Lq9Wm3Np5Rt1/x4Zb6Cf0Gh2Jk8Mn3Pq");
        assert_flags("aws_secret_key", &format!("AKIAZ4X7QWERTY2PLMNB,{SECRET}"));
        assert_flags("aws_secret_key", &format!("the AWS secret is {SECRET}."));
        assert_not_flags("aws_secret_key", &format!("new laws: {SECRET}"));
        // A git SHA-1 is hex, and 40-char slices of longer base64 runs do not stand alone.
        assert_not_flags("aws_secret_key", "secret 3f786850e387550fdab836ed7e6dc881de23001b");
        assert_not_flags("aws_secret_key", &format!("secret {SECRET}{SECRET}"));
    }
}
