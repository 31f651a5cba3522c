//! PII and secret detection and redaction. Pure: knows nothing of transports, storage or MCP
//! routing; it only sees text and JSON values.
//!
//! * [`Scanner`] is built once from a [`ScannerConfig`]: the enabled built-in detectors plus custom
//!   `(name, regex)` detectors.
//! * Speed: a `RegexSet` over all detectors runs once over each string; only the detectors it
//!   reports are run again (per-pattern `Regex`) to get spans, then validated.
//! * Values never leak: [`Match`] and [`Finding`] carry the pattern name and a location (byte range,
//!   RFC 6901 JSON pointer) — never the matched text nor a hash of it, Debug included.
//! * Overlaps: within one string, when two detectors match overlapping spans, the earlier-starting
//!   (then longer) match wins and the other is dropped, so each byte is attributed to one pattern.
//! * JSON coverage: every string value at any depth of arrays and objects is scanned. Object keys
//!   are not scanned (they are structure, and renaming them on redaction could collide).
//! * Binary blobs are not scanned as text. The rule: a string under a key named `blob` or `data`,
//!   inside an object whose `type` is `"image"` or `"audio"` or which has a `mimeType` member, and
//!   whose content is base64 (only base64 alphabet, `=` padding and whitespace). This covers MCP
//!   image/audio content and blob resource contents. Such a string that is *not* base64 is scanned.
//! * Credential context: a string value whose object key is credential-like (`api_key`, `token`,
//!   `client_secret`, …) is checked as a whole as a `generic_api_key` (same entropy validation).

mod patterns;
#[cfg(test)]
mod tests;

use std::ops::Range;

use regex::{Regex, RegexSet};
use serde_json::{Map, Value};

/// Names of the built-in detectors, in the order they are tried.
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    patterns::BUILTINS.iter().map(|b| b.name)
}

/// Which detectors to run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScannerConfig {
    /// Built-in detector names to disable (see [`builtin_names`]).
    pub disabled: Vec<String>,
    /// Custom detectors: `(name, regex)`. A capture group named `v`, if present, is the reported
    /// and redacted span; otherwise the whole match is.
    pub custom: Vec<(String, String)>,
}

/// Why a [`ScannerConfig`] was rejected. Contains pattern names and regex sources from config
/// (never scanned values).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PiiError {
    #[error("unknown built-in PII pattern `{0}` in disabled list")]
    UnknownPattern(String),
    #[error("PII pattern name `{0}` is invalid (use letters, digits, `_`, `-`, `.`)")]
    InvalidName(String),
    #[error("PII pattern name `{0}` is defined twice (or shadows a built-in)")]
    DuplicatePattern(String),
    #[error("custom PII pattern `{name}` is not a valid regex: {reason}")]
    InvalidRegex { name: String, reason: String },
}

/// One detection inside a text: the pattern name and the byte range. Never the text itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub pattern: String,
    pub range: Range<usize>,
}

/// One detection inside a JSON value: the pattern name and the RFC 6901 pointer of the string.
/// Never the value, nor a hash of it. One finding per match (a string may yield several).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Finding {
    pub pattern: String,
    pub pointer: String,
}

struct Detector {
    name: String,
    regex: Regex,
    has_value_group: bool,
    validate: Option<patterns::Validate>,
}

/// A compiled set of detectors. Build once, share freely (`Send + Sync`).
pub struct Scanner {
    detectors: Vec<Detector>,
    set: RegexSet,
    /// Index of `generic_api_key` when enabled, for the credential-key context rule.
    generic_idx: Option<usize>,
    credential_key: Regex,
    credential_value: Regex,
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.detectors.iter().map(|d| d.name.as_str()).collect();
        f.debug_struct("Scanner").field("patterns", &names).finish()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl Scanner {
    /// Builds a scanner from config: built-ins minus `disabled`, plus `custom`.
    pub fn new(config: &ScannerConfig) -> Result<Scanner, PiiError> {
        for name in &config.disabled {
            if !builtin_names().any(|b| b == name) {
                return Err(PiiError::UnknownPattern(name.clone()));
            }
        }
        let mut detectors = Vec::new();
        for b in patterns::BUILTINS {
            if config.disabled.iter().any(|d| d == b.name) {
                continue;
            }
            // ASCII word boundaries keep the DFA usable on non-ASCII text (Unicode `\b` would
            // force the slower engines whenever a payload contains a non-ASCII character).
            let source = b.regex.replace(r"\b", r"(?-u:\b)");
            let regex = Regex::new(&source).expect("built-in PII regex compiles");
            detectors.push(Detector {
                name: b.name.to_string(),
                has_value_group: regex.capture_names().any(|n| n == Some("v")),
                regex,
                validate: b.validate,
            });
        }
        for (name, source) in &config.custom {
            if !valid_name(name) {
                return Err(PiiError::InvalidName(name.clone()));
            }
            if builtin_names().any(|b| b == name) || detectors.iter().any(|d| &d.name == name) {
                return Err(PiiError::DuplicatePattern(name.clone()));
            }
            let regex = Regex::new(source).map_err(|e| PiiError::InvalidRegex {
                name: name.clone(),
                reason: e.to_string(),
            })?;
            detectors.push(Detector {
                name: name.clone(),
                has_value_group: regex.capture_names().any(|n| n == Some("v")),
                regex,
                validate: None,
            });
        }
        let set = RegexSet::new(detectors.iter().map(|d| d.regex.as_str()))
            .map_err(|e| PiiError::InvalidRegex { name: "(set)".into(), reason: e.to_string() })?;
        let generic_idx = detectors.iter().position(|d| d.name == "generic_api_key");
        Ok(Scanner {
            detectors,
            set,
            generic_idx,
            credential_key: Regex::new(patterns::CREDENTIAL_KEY_NAME).expect("compiles"),
            credential_value: Regex::new(patterns::CREDENTIAL_VALUE).expect("compiles"),
        })
    }

    /// All built-in detectors, no custom ones.
    pub fn builtin() -> Scanner {
        Scanner::new(&ScannerConfig::default()).expect("built-in PII patterns compile")
    }

    /// Names of the detectors this scanner runs.
    pub fn pattern_names(&self) -> impl Iterator<Item = &str> {
        self.detectors.iter().map(|d| d.name.as_str())
    }

    /// Detections in `text`, sorted by position, non-overlapping.
    pub fn scan_text(&self, text: &str) -> Vec<Match> {
        if text.is_empty() {
            return Vec::new();
        }
        let hits = self.set.matches(text);
        if !hits.matched_any() {
            return Vec::new();
        }
        let mut found = Vec::new();
        for i in hits.iter() {
            let d = &self.detectors[i];
            let mut push = |r: Range<usize>| {
                if !r.is_empty() && d.validate.is_none_or(|f| f(text, r.clone())) {
                    found.push(Match { pattern: d.name.clone(), range: r });
                }
            };
            if d.has_value_group {
                for caps in d.regex.captures_iter(text) {
                    if let Some(m) = caps.name("v").or_else(|| caps.get(0)) {
                        push(m.range());
                    }
                }
            } else {
                for m in d.regex.find_iter(text) {
                    push(m.range());
                }
            }
        }
        resolve_overlaps(found)
    }

    /// Findings for every string in `value`, recursively (see the module docs for the rules).
    pub fn scan_json(&self, value: &Value) -> Vec<Finding> {
        let mut out = Vec::new();
        let mut ptr = String::new();
        self.walk(value, None, &mut ptr, &mut out, false);
        out
    }

    /// A copy of `value` with each match replaced by `[REDACTED:<pattern>]`, and the findings.
    pub fn redact_json(&self, value: &Value) -> (Value, Vec<Finding>) {
        let mut out = Vec::new();
        let mut ptr = String::new();
        let redacted =
            self.walk(value, None, &mut ptr, &mut out, true).unwrap_or_else(|| value.clone());
        (redacted, out)
    }

    /// Redacts `text` in place of each match; returns the new text and the matches.
    pub fn redact_text(&self, text: &str) -> (String, Vec<Match>) {
        let matches = self.scan_text(text);
        (apply_redaction(text, &matches), matches)
    }

    /// Matches in one string value, with its object key (if any) as context.
    fn scan_string(&self, s: &str, key: Option<&str>) -> Vec<Match> {
        let mut matches = self.scan_text(s);
        if let (Some(idx), Some(key)) = (self.generic_idx, key)
            && matches.is_empty()
            && self.credential_key.is_match(key)
            && self.credential_value.is_match(s)
            && patterns::generic_api_key(s, 0..s.len())
        {
            matches.push(Match { pattern: self.detectors[idx].name.clone(), range: 0..s.len() });
        }
        matches
    }

    /// Visits `value`; in redact mode returns the rewritten copy.
    fn walk(
        &self,
        value: &Value,
        key: Option<&str>,
        ptr: &mut String,
        out: &mut Vec<Finding>,
        redact: bool,
    ) -> Option<Value> {
        match value {
            Value::String(s) => {
                let matches = self.scan_string(s, key);
                out.extend(
                    matches
                        .iter()
                        .map(|m| Finding { pattern: m.pattern.clone(), pointer: ptr.clone() }),
                );
                redact.then(|| Value::String(apply_redaction(s, &matches)))
            }
            Value::Array(items) => {
                let mut copy = Vec::with_capacity(if redact { items.len() } else { 0 });
                for (i, item) in items.iter().enumerate() {
                    let len = ptr.len();
                    ptr.push('/');
                    ptr.push_str(&i.to_string());
                    let v = self.walk(item, None, ptr, out, redact);
                    ptr.truncate(len);
                    if let Some(v) = v {
                        copy.push(v);
                    }
                }
                redact.then_some(Value::Array(copy))
            }
            Value::Object(map) => {
                let mut copy = Map::new();
                for (k, v) in map {
                    if let Value::String(s) = v
                        && is_binary_blob(map, k, s)
                    {
                        if redact {
                            copy.insert(k.clone(), v.clone());
                        }
                        continue;
                    }
                    let len = ptr.len();
                    ptr.push('/');
                    push_escaped(ptr, k);
                    let nv = self.walk(v, Some(k), ptr, out, redact);
                    ptr.truncate(len);
                    if let Some(nv) = nv {
                        copy.insert(k.clone(), nv);
                    }
                }
                redact.then_some(Value::Object(copy))
            }
            other => redact.then(|| other.clone()),
        }
    }
}

/// RFC 6901 escaping of one reference token: `~` → `~0`, `/` → `~1`.
fn push_escaped(ptr: &mut String, token: &str) {
    for c in token.chars() {
        match c {
            '~' => ptr.push_str("~0"),
            '/' => ptr.push_str("~1"),
            c => ptr.push(c),
        }
    }
}

/// The binary-blob rule from the module docs.
fn is_binary_blob(obj: &Map<String, Value>, key: &str, s: &str) -> bool {
    if key != "blob" && key != "data" {
        return false;
    }
    let media = matches!(obj.get("type").and_then(Value::as_str), Some("image" | "audio"));
    if !media && !obj.contains_key("mimeType") {
        return false;
    }
    s.bytes().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_')
            || b.is_ascii_whitespace()
    })
}

/// Keeps the earliest-starting (then longest) match where spans overlap; sorted by start.
fn resolve_overlaps(mut found: Vec<Match>) -> Vec<Match> {
    found.sort_by(|a, b| a.range.start.cmp(&b.range.start).then(b.range.end.cmp(&a.range.end)));
    let mut kept: Vec<Match> = Vec::with_capacity(found.len());
    for m in found {
        if kept.last().is_none_or(|k| m.range.start >= k.range.end) {
            kept.push(m);
        }
    }
    kept
}

/// Replaces each (sorted, non-overlapping) match with `[REDACTED:<pattern>]`.
fn apply_redaction(text: &str, matches: &[Match]) -> String {
    let mut s = String::with_capacity(text.len());
    let mut pos = 0;
    for m in matches {
        s.push_str(&text[pos..m.range.start]);
        s.push_str("[REDACTED:");
        s.push_str(&m.pattern);
        s.push(']');
        pos = m.range.end;
    }
    s.push_str(&text[pos..]);
    s
}
