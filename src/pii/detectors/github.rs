//! `github_token`: personal access tokens (`ghp_`), OAuth (`gho_`), user-to-server (`ghu_`),
//! server-to-server (`ghs_`) and refresh (`ghr_`) tokens — a prefix and 36 alphanumerics today,
//! up to 255 by GitHub's own note — and fine-grained tokens (`github_pat_` and 82 characters).
//!
//! Validation: the random part looks random (entropy, not a placeholder such as `ghp_xxxx…` or
//! `ghp_your_token_here`).

use std::ops::Range;

use super::context::{entropy, is_placeholder, is_word_like};
use super::{Candidate, Rule, family, priority};

pub(super) const RULES: &[Rule] = &[Rule {
    pattern: "github_token",
    regex: r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{40,})\b",
    validate: github_token,
    priority: priority::STRUCTURED,
    families: family::GITHUB,
    min_digits: 0,
}];

fn github_token(c: &Candidate<'_>) -> Option<Range<usize>> {
    let s = c.value();
    let tail = s.strip_prefix("github_pat_").unwrap_or(&s[4..]);
    let ok =
        tail.len() <= 255 && entropy(tail) >= 3.0 && !is_placeholder(tail) && !is_word_like(tail);
    ok.then(|| c.span.clone())
}

#[cfg(test)]
mod tests {
    use crate::pii::tests::{assert_flags, assert_not_flags};

    #[test]
    fn token_kinds() {
        let tail = "1a2B3c4D5e6F7g8H9i0JkLmNoPqRsTuVwXyZ";
        assert_eq!(tail.len(), 36);
        for prefix in ["ghp_", "gho_", "ghu_", "ghs_", "ghr_"] {
            assert_flags("github_token", &format!("token {prefix}{tail}"));
        }
        assert_flags(
            "github_token",
            "GITHUB_TOKEN=github_pat_11ABCDEFG0123456789abc_defGHIJKLMNOPqrstuvwxYZ0123456789abcdefGHIJKLMNOPQRSTU",
        );
    }

    #[test]
    fn placeholders_and_short_ones() {
        assert_not_flags("github_token", "ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
        assert_not_flags("github_token", "ghp_YourPersonalAccessTokenGoesRightHere");
        assert_not_flags("github_token", "ghp_short123");
        assert_not_flags("github_token", "xghp_1a2B3c4D5e6F7g8H9i0JkLmNoPqRsTuVwXyZ");
    }
}
