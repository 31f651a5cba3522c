//! `jwt`: JSON Web Tokens — three (or, encrypted, five) base64url parts joined by dots, whose
//! first part decodes to a JSON object with a string `alg`.
//!
//! The header check is what keeps this precise: any `eyJ…` string is base64 of something starting
//! with `{"` (which every header in practice does), but only a token header has `alg`. Standard-alphabet base64 and `=` padding, which
//! hand-made tokens sometimes carry, are accepted too.

use std::ops::Range;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};

use super::{Candidate, Rule, family, priority};

pub(super) const RULES: &[Rule] = &[Rule {
    pattern: "jwt",
    regex: r"\beyJ[A-Za-z0-9_\-]{7,}={0,2}\.[A-Za-z0-9_\-]{2,}={0,2}\.(?:[A-Za-z0-9_\-]+={0,2})?",
    validate: jwt,
    priority: priority::STRUCTURED,
    families: family::JWT,
    min_digits: 0,
}];

fn jwt(c: &Candidate<'_>) -> Option<Range<usize>> {
    let header = c.value().split('.').next()?.trim_end_matches('=');
    let bytes = URL_SAFE_NO_PAD.decode(header).or_else(|_| STANDARD_NO_PAD.decode(header)).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value.get("alg")?.as_str()?;
    // An encrypted token (JWE) has two more parts; cover them so redaction leaves nothing behind.
    let mut end = c.span.end;
    let rest = c.text.as_bytes();
    for _ in 0..2 {
        let part = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-');
        if rest.get(end) == Some(&b'.') && rest.get(end + 1).is_some_and(part) {
            end += 1;
            while rest.get(end).is_some_and(part) {
                end += 1;
            }
        }
    }
    Some(c.span.start..end)
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use crate::pii::tests::{assert_flags, assert_not_flags, spans};

    fn b64url(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn needs_a_json_header_with_alg() {
        let payload = b64url(r#"{"sub":"1234567890"}"#);
        let token = format!(
            "{}.{payload}.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
            b64url(r#"{"alg":"HS256","typ":"JWT"}"#)
        );
        assert_eq!(spans(&format!("Authorization: Bearer {token}")), [("jwt", token.as_str())]);
        let unsigned = format!("{}.{payload}.", b64url(r#"{"alg":"none"}"#));
        assert_eq!(spans(&format!("t={unsigned} ok")), [("jwt", unsigned.as_str())]);
        let not_json = format!("{}.{payload}.abcdef", b64url(r#"{"alg" HS256}"#));
        assert!(not_json.starts_with("eyJ"));
        assert_not_flags("jwt", &not_json);
        assert_not_flags("jwt", &format!("{}.{payload}.abcdef", b64url(r#"{"typ":"JWT"}"#)));
        assert_not_flags("jwt", "eyeglasses.example.com");
        assert_flags("jwt", &format!("{}==.{payload}.sig", b64url(r#"{"alg":"RS256"}"#)));
    }
}
