//! `email`: addresses with Unicode local parts and domains (`jürgen@müller.de`), and `%40` for the
//! `@` of URL-encoded query strings.
//!
//! The regex has no leading word boundary: its local-part class is greedy and the leftmost match
//! wins, so a match always starts at the first character of the local part — a non-ASCII letter
//! included. (An ASCII `\b` there would start `jürgen.alice@…` at `rgen`, leaving `jü` unredacted.)

use std::ops::Range;

use super::context::{next_char, prev_char};
use super::{Candidate, Rule, family, priority};

pub(super) const RULES: &[Rule] = &[Rule {
    pattern: "email",
    regex: r"[\p{L}\p{M}\p{N}._%+'\-]+(?:@|%40)(?:[\p{L}\p{M}\p{N}][\p{L}\p{M}\p{N}\-]*\.)+\p{L}[\p{L}\p{M}]+",
    validate: email,
    priority: priority::EMAIL,
    families: family::AT,
    min_digits: 0,
}];

/// Top-level "domains" that are really file extensions: `image@2x.png`, `logo@3x.webp`.
const FILE_EXTENSIONS: &[&str] = &[
    "png", "jpg", "jpeg", "gif", "svg", "webp", "bmp", "ico", "tif", "tiff", "heic", "avif", "pdf",
    "txt", "log", "json", "yaml", "yml", "xml", "html", "htm", "css", "js", "mjs", "cjs", "ts",
    "tsx", "jsx", "lock", "toml", "ini", "cfg", "conf", "exe", "dll", "dylib", "bin", "zip", "gz",
    "tgz", "bz2", "xz", "tar", "rar", "mp3", "mp4", "wav", "mov", "avi", "mkv", "webm", "csv",
    "tsv", "doc", "docx", "xls", "xlsx", "ppt", "pptx", "java", "kt", "swift", "cpp", "hpp", "php",
];

fn email(c: &Candidate<'_>) -> Option<Range<usize>> {
    let text = c.text;
    // A local part cannot start with these; they are punctuation around the address.
    let lead = c.value().len() - c.value().trim_start_matches(['.', '\'', '%', '+', '-']).len();
    let start = c.span.start + lead;
    let end = c.span.end;
    let s = &text[start..end];
    let (local, domain) = match s.find('@') {
        Some(at) => (&s[..at], &s[at + 1..]),
        None => {
            let at = s.find("%40")?;
            (&s[..at], &s[at + 3..])
        }
    };
    if local.is_empty() || local.len() > 64 || local.ends_with('.') || local.contains("..") {
        return None;
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if domain.len() > 253 || labels.iter().any(|l| l.is_empty() || l.ends_with('-')) {
        return None;
    }
    let tld = labels.last()?;
    if tld.chars().count() > 24 || FILE_EXTENSIONS.iter().any(|e| tld.eq_ignore_ascii_case(e)) {
        return None;
    }
    // `bob@acme.io2`, `bob@acme.io_x`: the address would be part of a longer token.
    if next_char(text, end).is_some_and(|ch| ch.is_alphanumeric() || ch == '_' || ch == '@') {
        return None;
    }
    // `git@github.com:org/repo.git` is an SSH remote, not an address.
    let rest = &text[end..];
    if rest.starts_with(':')
        && rest[1..].starts_with(|ch: char| ch.is_ascii_alphabetic() || "~/._".contains(ch))
    {
        return None;
    }
    if is_url_userinfo(text, start) {
        return None;
    }
    if prev_char(text, start) == Some('@') {
        return None;
    }
    Some(start..end)
}

/// Whether the text before `start` makes this `user@host` the userinfo of a URL
/// (`https://user:pass@host/`, `ssh://git@host/`) rather than an address.
fn is_url_userinfo(text: &str, start: usize) -> bool {
    let token_start = text[..start]
        .rfind(|ch: char| ch.is_whitespace() || matches!(ch, '"' | '\'' | '<' | '(' | '['))
        .map_or(0, |i| i + 1);
    let token = &text[token_start..start];
    match token.rfind("://") {
        // Between the scheme and the address there is no path, query or fragment.
        Some(i) => !token[i + 3..].contains(['/', '?', '#', '=', '&']),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use crate::pii::tests::{assert_flags, assert_not_flags, spans};

    #[test]
    fn finds_addresses() {
        assert_flags("email", "write to alice.smith@corp.acme.io today");
        assert_flags("email", "<Bob+tag@Example.COM>");
        assert_flags("email", "mailto:o'brien@acme.ie");
        assert_flags("email", "GET /invite?email=alice%40acme.io&x=1");
        assert_flags("email", "user@müller.de");
        assert_flags("email", "contact: bob@acme.io: thanks");
    }

    #[test]
    fn covers_non_ascii_local_parts() {
        let text = "Grüße an jürgen.alice@acme.io – danke";
        assert_eq!(spans(text), [("email", "jürgen.alice@acme.io")]);
        assert_eq!(spans("«ßtraße@acme.de»"), [("email", "ßtraße@acme.de")]);
        assert_eq!(spans("...bob@acme.io"), [("email", "bob@acme.io")]);
    }

    #[test]
    fn rejects_look_alikes() {
        for text in [
            "alice@localhost",
            "not an email @ all",
            "a..b@acme.io",
            "image@2x.png",
            "follow @handle",
            "lodash@4.17.21",
            "git@github.com:acme/repo.git",
            "https://user:pass@host.example.com/x",
            "bob@acme.io2",
        ] {
            assert_not_flags("email", text);
        }
    }
}
