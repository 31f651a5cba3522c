//! `slack_token`: Slack API tokens — bot `xoxb-`, user `xoxp-`, app `xoxa-`, refresh `xoxr-`,
//! legacy `xoxs-`/`xoxo-`, rotating `xoxe-`/`xoxe.xoxp-`, app-level `xapp-` — and incoming-webhook
//! and workflow URLs (`https://hooks.slack.com/services/T…/B…/…`), which are bearer credentials
//! too: anyone holding the URL can post to the channel.
//!
//! Validation: tokens have dash-separated segments with digits and a random-looking body
//! (`xoxb-your-token-here` and `xoxb-XXXX…` are not findings); a webhook's last segment is not a
//! placeholder.

use std::ops::Range;

use super::context::{entropy, is_placeholder, is_word_like};
use super::{Candidate, Rule, family, priority};

pub(super) const RULES: &[Rule] = &[
    Rule {
        pattern: "slack_token",
        regex: r"\b(?:xox(?:[abposr]|e(?:\.xox[bp])?)|xapp)-[0-9A-Za-z][0-9A-Za-z\-]{8,}",
        validate: token,
        priority: priority::STRUCTURED,
        families: family::SLACK,
        min_digits: 0,
    },
    Rule {
        pattern: "slack_token",
        regex: r"https?://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9_/\-]{16,}",
        validate: webhook,
        priority: priority::STRUCTURED,
        families: family::SLACK,
        min_digits: 0,
    },
];

fn token(c: &Candidate<'_>) -> Option<Range<usize>> {
    let s = c.value().trim_end_matches('-');
    let body = s.split_once('-')?.1;
    let ok = body.contains('-')
        && body.bytes().any(|b| b.is_ascii_digit())
        && entropy(body) >= 3.0
        && !is_placeholder(body)
        && !is_word_like(body);
    ok.then(|| c.span.start..c.span.start + s.len())
}

fn webhook(c: &Candidate<'_>) -> Option<Range<usize>> {
    let s = c.value().trim_end_matches('/');
    let last = s.rsplit('/').next()?;
    let ok = s.matches('/').count() >= 5
        && last.len() >= 8
        && !is_placeholder(last)
        && entropy(last) >= 2.5;
    ok.then(|| c.span.start..c.span.start + s.len())
}

#[cfg(test)]
mod tests {
    use crate::pii::tests::{assert_not_flags, spans};

    #[test]
    fn tokens() {
        for t in [
            "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx",
            "xoxp-2718281828-3141592653-5772156649-0c1a7e9b3d5f2a4c6e8b0d2f4a6c8e0b",
            "xoxa-2-4820751963-8Fq2LzW7nRk3",
            "xoxr-9a8b7c6d5e-4f3a2b1c0d",
            "xoxe.xoxp-1-Mi0yLTEyMzQ1Njc4OTAtMTIzNDU2",
            "xapp-1-A0123BCDEFG-4820751963048-9f8e7d6c5b4a39281706f5e4d3c2b1a0",
        ] {
            assert_eq!(spans(&format!("token: {t}.")), [("slack_token", t)]);
        }
        assert_not_flags("slack_token", "xoxb-not-a-real-token");
        assert_not_flags("slack_token", "xoxb-your-token-here-1");
        assert_not_flags("slack_token", "xoxb-XXXXXXXXXXXX-XXXXXXXXXXXX-XXXXXXXXXXXXXXXXXXXXXXXX");
    }

    #[test]
    fn webhooks() {
        let url = "https://hooks.slack.com/services/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";
        assert_eq!(spans(&format!("post to {url} now")), [("slack_token", url)]);
        assert_not_flags(
            "slack_token",
            "https://hooks.slack.com/services/T00000000/B00000000/XXXXXXXXXXXXXXXXXXXXXXXX",
        );
        assert_not_flags("slack_token", "https://hooks.slack.com/services/");
    }
}
