//! Small text helpers the validators share: looking at the characters and words around a
//! candidate, entropy, and the shapes of placeholder and word-like values.
//!
//! All of these run only on candidates (a regex already matched), never over whole payloads, so
//! they favour clarity over speed.

/// The char before byte `pos`.
pub(crate) fn prev_char(text: &str, pos: usize) -> Option<char> {
    text[..pos].chars().next_back()
}

/// The char at byte `pos`.
pub(crate) fn next_char(text: &str, pos: usize) -> Option<char> {
    text[pos..].chars().next()
}

/// Up to `n` bytes of `text` before byte `pos`, cut at a char boundary.
pub(crate) fn window_before(text: &str, pos: usize, n: usize) -> &str {
    let mut start = pos.saturating_sub(n);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..pos]
}

/// Up to `n` bytes of `text` after byte `pos`, cut at a char boundary.
pub(crate) fn window_after(text: &str, pos: usize, n: usize) -> &str {
    let mut end = (pos + n).min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[pos..end]
}

/// The ASCII-alphanumeric words of `s`, last first.
pub(crate) fn words_rev(s: &str) -> impl Iterator<Item = &str> {
    s.rsplit(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty())
}

/// Whether one of the words of `s` is (case-insensitively) one of `words`.
pub(crate) fn has_word(s: &str, words: &[&str]) -> bool {
    words_rev(s).any(|w| words.iter().any(|x| w.eq_ignore_ascii_case(x)))
}

/// Whether `s` contains one of `needles` (lower-case), ignoring ASCII case.
pub(crate) fn mentions(s: &str, needles: &[&str]) -> bool {
    let lower = s.to_ascii_lowercase();
    needles.iter().any(|n| lower.contains(n))
}

/// A JSON key or label reduced to lower-case ASCII letters and digits (`X-API-Key` → `xapikey`),
/// so that `api_key`, `apiKey` and `API-KEY` compare equal.
pub(crate) fn normalize_label(s: &str) -> String {
    s.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect()
}

/// Shannon entropy of the bytes of `s`, in bits per byte.
pub(crate) fn entropy(s: &str) -> f64 {
    let mut counts = [0u32; 256];
    for b in s.bytes() {
        counts[usize::from(b)] += 1;
    }
    let n = s.len() as f64;
    if n == 0.0 {
        return 0.0;
    }
    counts
        .iter()
        .filter(|&&k| k > 0)
        .map(|&k| {
            let p = f64::from(k) / n;
            -p * p.log2()
        })
        .sum()
}

/// The longest run of one repeated byte.
pub(crate) fn longest_run(s: &str) -> usize {
    let mut best = 0;
    let mut run = 0;
    let mut prev = None;
    for b in s.bytes() {
        run = if Some(b) == prev { run + 1 } else { 1 };
        prev = Some(b);
        best = best.max(run);
    }
    best
}

/// Words that mark a value as a stand-in rather than a real secret (`your_api_key_here`,
/// `<token>`, `xxxx…`, AWS's `…EXAMPLE` keys).
#[rustfmt::skip]
const PLACEHOLDER_WORDS: &[&str] = &[
    "example", "your", "xxxx", "placeholder", "changeme", "change_me", "redacted", "dummy",
    "sample", "insert", "replace", "here", "todo", "foobar", "notreal", "not_real", "fake", "****",
];

/// Whether `v` reads as a placeholder (see [`PLACEHOLDER_WORDS`]) or is one byte repeated.
pub(crate) fn is_placeholder(v: &str) -> bool {
    let lower = v.to_ascii_lowercase();
    PLACEHOLDER_WORDS.iter().any(|p| lower.contains(p)) || longest_run(v) * 2 > v.len()
}

/// Whether `v` is made of words rather than random characters: `process.env.API_KEY`,
/// `my-secret-value`, `configApiKeyValue`. Such values are names of secrets, not secrets.
///
/// A segment (split at `_ - . / + = ~`) is word-like when it is letters only and reads like a
/// word: all lower-case, all upper-case, or camel-case humps of at least two lower-case letters.
/// Random keys rarely have long letters-only segments of one of those shapes.
pub(crate) fn is_word_like(v: &str) -> bool {
    let total = v.len();
    let wordy: usize = v
        .split(['_', '-', '.', '/', '+', '=', '~', ':'])
        .filter(|seg| seg.len() >= 2 && seg.bytes().all(|b| b.is_ascii_alphabetic()))
        .filter(|seg| {
            seg.bytes().all(|b| b.is_ascii_lowercase())
                || seg.bytes().all(|b| b.is_ascii_uppercase())
                || is_camel_words(seg)
        })
        .map(str::len)
        .sum();
    wordy * 10 >= total * 6
}

/// `Config`, `apiKeyValue`, `ApiKey`: humps of one optional capital and two or more lower-case.
fn is_camel_words(seg: &str) -> bool {
    let b = seg.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_uppercase() {
            i += 1;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_lowercase() {
            i += 1;
        }
        if i - start < 2 {
            return false;
        }
    }
    true
}

/// Counts of the character classes in `s`.
pub(crate) struct Classes {
    pub upper: usize,
    pub lower: usize,
    pub digit: usize,
    pub other: usize,
}

pub(crate) fn classes(s: &str) -> Classes {
    let mut c = Classes { upper: 0, lower: 0, digit: 0, other: 0 };
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' => c.upper += 1,
            b'a'..=b'z' => c.lower += 1,
            b'0'..=b'9' => c.digit += 1,
            _ => c.other += 1,
        }
    }
    c
}

/// The ASCII digits of `s` as numbers.
pub(crate) fn digits(s: &str) -> Vec<u8> {
    s.bytes().filter(u8::is_ascii_digit).map(|b| b - b'0').collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_like_values() {
        for v in ["process.env.API_KEY", "my-secret-value-123", "configApiKeyValue", "YOUR_KEY"] {
            assert!(is_word_like(v), "{v}");
        }
        for v in ["4eC39HqLyjWDarjtT1zdp7dc", "Zx9Qw3Lm7Pv2Rt8K", "f3A9kq0LzP7wXv2N8yR5"] {
            assert!(!is_word_like(v), "{v}");
        }
    }

    #[test]
    fn placeholders() {
        assert!(is_placeholder("your_api_key_here"));
        assert!(is_placeholder("xxxxxxxxxxxxxxxxxxxx"));
        assert!(is_placeholder("aaaaaaaaaaaaaaaaaaaaaaaa"));
        assert!(!is_placeholder("Zx9Qw3Lm7Pv2Rt8K"));
    }

    #[test]
    fn windows_respect_char_boundaries() {
        let t = "Grüße: x";
        let pos = t.find('x').unwrap();
        assert_eq!(window_before(t, pos, 6), "ße: ");
        assert_eq!(window_after("ab→c", 1, 2), "b");
        assert_eq!(normalize_label("X-API-Key"), "xapikey");
        assert!(has_word("Call me at", &["call"]));
        assert!(!has_word("recall", &["call"]));
    }

    #[test]
    fn entropy_of_uniform_and_random() {
        assert_eq!(entropy("aaaa"), 0.0);
        assert!((entropy("abcd") - 2.0).abs() < 1e-9);
    }
}
