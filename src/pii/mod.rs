//! PII and secret detection and redaction. Pure: knows nothing of transports, storage or MCP
//! routing; it only sees text and JSON values. `docs/pii.md` describes every detector.
//!
//! * [`Scanner`] is built once from a [`ScannerConfig`]: the enabled built-in detectors plus custom
//!   `(name, regex)` detectors. It is `Send + Sync`; share one behind an `Arc`.
//! * Speed: one pass of a multi-pattern regex of short triggers over each string finds where
//!   candidates can be ([`triggers`]); each detector's own regex then runs only in the small
//!   windows around its triggers, and its validator accepts, adjusts or rejects what it finds.
//!   Strings without a trigger cost that one pass. Custom patterns run over the whole string.
//! * Values never leak: [`Match`] and [`Finding`] carry the pattern name and a location (byte range,
//!   RFC 6901 JSON pointer) — never the matched text nor a hash of it, Debug included.
//! * Overlaps: within one string, when two findings overlap, the more specific pattern wins (a
//!   GitHub token labelled `token=` is a `github_token`, not a `generic_api_key`), then the earlier
//!   and longer one; every byte belongs to at most one finding.
//! * JSON coverage: every string value at any depth of arrays and objects is scanned (see
//!   [`json`]). Object keys are not scanned; they are context (`{"api_key": "…"}`).
//! * Binary blobs are not scanned as text (see [`json`] for the rule).

mod detectors;
pub mod eval;
mod json;
pub mod samples;
#[cfg(test)]
pub(crate) mod tests;
mod triggers;
pub mod workload;

use std::collections::BTreeMap;
use std::ops::Range;

use regex::{Regex, RegexSet};
use serde_json::Value;

use detectors::{Candidate, Validate};

/// Names of the built-in detectors, in the order they are listed in the docs.
pub fn builtin_names() -> impl Iterator<Item = &'static str> {
    detectors::PATTERNS.iter().map(|p| p.name)
}

/// One line on what a built-in detector finds, or `None` for an unknown name.
pub fn builtin_summary(name: &str) -> Option<&'static str> {
    detectors::PATTERNS.iter().find(|p| p.name == name).map(|p| p.summary)
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

/// One compiled regex with what to do with its matches.
struct Detector {
    /// Index into `Scanner::names`.
    name: usize,
    /// Trigger families whose windows this detector runs in; 0 (custom patterns): everywhere.
    families: u16,
    /// See `detectors::Rule::min_digits`.
    min_digits: u8,
    regex: Regex,
    value_group: Option<usize>,
    label_group: Option<usize>,
    validate: Option<Validate>,
    priority: u8,
}

/// Built-in detectors that run in the same windows, and a set that tells which of them match in
/// a given window (so that five number detectors cost one pass over a window, not five).
struct Group {
    families: u16,
    members: Vec<usize>,
    set: Option<RegexSet>,
}

/// A compiled set of detectors. Build once, share freely (`Send + Sync`).
pub struct Scanner {
    /// Pattern names, built-ins first (in [`builtin_names`] order), then custom ones.
    names: Vec<String>,
    detectors: Vec<Detector>,
    groups: Vec<Group>,
    /// Custom detectors, which have no triggers and run over whole strings.
    custom: Vec<usize>,
    triggers: triggers::Triggers,
    /// Whether `generic_api_key` / `aws_secret_key` run, for the JSON member-name rule.
    generic: Option<usize>,
    aws_secret: Option<usize>,
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner").field("patterns", &self.names).finish()
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
        let mut names: Vec<String> = builtin_names()
            .filter(|b| !config.disabled.iter().any(|d| d == b))
            .map(str::to_string)
            .collect();
        let mut detectors = Vec::new();
        for rule in detectors::rules() {
            let Some(name) = names.iter().position(|n| n == rule.pattern) else { continue };
            // ASCII word boundaries keep the DFA usable on non-ASCII text (a Unicode `\b` makes
            // the regex engine give up its fast path whenever a payload has a non-ASCII byte).
            let source = rule.regex.replace(r"\b", r"(?-u:\b)");
            let regex = Regex::new(&source).expect("built-in PII regex compiles");
            let mut d = Detector::new(name, regex, Some(rule.validate), rule.priority);
            d.families = rule.families;
            d.min_digits = rule.min_digits;
            detectors.push(d);
        }
        for (name, source) in &config.custom {
            if !valid_name(name) {
                return Err(PiiError::InvalidName(name.clone()));
            }
            if builtin_names().any(|b| b == name) || names.contains(name) {
                return Err(PiiError::DuplicatePattern(name.clone()));
            }
            let regex = Regex::new(source).map_err(|e| PiiError::InvalidRegex {
                name: name.clone(),
                reason: e.to_string(),
            })?;
            names.push(name.clone());
            detectors.push(Detector::new(
                names.len() - 1,
                regex,
                None,
                detectors::priority::CUSTOM,
            ));
        }
        let mut groups: Vec<Group> = Vec::new();
        for (i, d) in detectors.iter().enumerate().filter(|(_, d)| d.families != 0) {
            match groups.iter_mut().find(|g| g.families == d.families) {
                Some(g) => g.members.push(i),
                None => groups.push(Group { families: d.families, members: vec![i], set: None }),
            }
        }
        for g in groups.iter_mut().filter(|g| g.members.len() > 1) {
            let set = RegexSet::new(g.members.iter().map(|&i| detectors[i].regex.as_str()))
                .expect("built-in PII regexes compile as a set");
            g.set = Some(set);
        }
        let custom = (0..detectors.len()).filter(|&i| detectors[i].families == 0).collect();
        let find = |n: &str| names.iter().position(|x| x == n);
        Ok(Scanner {
            generic: find("generic_api_key"),
            aws_secret: find("aws_secret_key"),
            names,
            detectors,
            groups,
            custom,
            triggers: triggers::Triggers::new(),
        })
    }

    /// All built-in detectors, no custom ones.
    pub fn builtin() -> Scanner {
        Scanner::new(&ScannerConfig::default()).expect("built-in PII patterns compile")
    }

    /// Names of the detectors this scanner runs.
    pub fn pattern_names(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(String::as_str)
    }

    /// Detections in `text`, sorted by position, non-overlapping.
    pub fn scan_text(&self, text: &str) -> Vec<Match> {
        self.scan_str(text, None)
            .into_iter()
            .map(|(name, range)| Match { pattern: self.names[name].clone(), range })
            .collect()
    }

    /// Findings for every string in `value`, recursively (see [`json`] for the rules).
    pub fn scan_json(&self, value: &Value) -> Vec<Finding> {
        json::scan(self, value)
    }

    /// Parses `bytes` as JSON and scans it: the proxy's view of a message body.
    pub fn scan_json_bytes(&self, bytes: &[u8]) -> Result<Vec<Finding>, serde_json::Error> {
        let value: Value = serde_json::from_slice(bytes)?;
        Ok(self.scan_json(&value))
    }

    /// How many findings [`Scanner::scan_json`] would return, without building them.
    pub fn count_json(&self, value: &Value) -> usize {
        json::count(self, value)
    }

    /// A copy of `value` with each match replaced by `[REDACTED:<pattern>]`, and the findings.
    pub fn redact_json(&self, value: &Value) -> (Value, Vec<Finding>) {
        json::redact(self, value)
    }

    /// The same, with `None` instead of a copy when nothing was found.
    pub fn redact_json_if_found(&self, value: &Value) -> (Option<Value>, Vec<Finding>) {
        json::redact_if_found(self, value)
    }

    /// Redacts `text` in place of each match; returns the new text and the matches.
    pub fn redact_text(&self, text: &str) -> (String, Vec<Match>) {
        let matches = self.scan_text(text);
        (apply_redaction(text, &matches), matches)
    }

    /// The same as [`Scanner::scan_text`] without triggers and windows: every detector over the
    /// whole text. Slow; the tests check that it agrees with the fast path.
    #[cfg(test)]
    pub(crate) fn scan_text_exhaustive(&self, text: &str) -> Vec<Match> {
        let mut found = Vec::new();
        for d in &self.detectors {
            d.run(text, 0..text.len(), None, &mut found);
        }
        resolve_overlaps(found)
            .into_iter()
            .map(|(name, range)| Match { pattern: self.names[name].clone(), range })
            .collect()
    }

    /// Detections in one string, with its JSON member name (if any) as context: `(name, range)`
    /// sorted by position.
    fn scan_str(&self, text: &str, key: Option<&str>) -> Vec<(usize, Range<usize>)> {
        let mut found: Vec<(u8, usize, Range<usize>)> = Vec::new();
        if !text.is_empty() {
            let windows = self.triggers.windows(text);
            for g in self.groups.iter().filter(|g| windows.any(g.families)) {
                for w in windows.of(g.families).iter() {
                    self.run_group(g, text, w.clone(), key, &mut found);
                }
            }
            for &i in &self.custom {
                self.detectors[i].run(text, 0..text.len(), key, &mut found);
            }
        }
        if let Some(key) = key {
            self.member_name_rule(text, key, &mut found);
        }
        resolve_overlaps(found)
    }

    /// Runs the members of `g` that can match in `window`.
    fn run_group(
        &self,
        g: &Group,
        text: &str,
        window: Range<usize>,
        key: Option<&str>,
        found: &mut Vec<(u8, usize, Range<usize>)>,
    ) {
        let slice = &text[window.clone()];
        let digits = slice.bytes().filter(u8::is_ascii_digit).count();
        let mut run = |i: usize| {
            let d = &self.detectors[i];
            if digits >= usize::from(d.min_digits) {
                d.run(text, window.clone(), key, found);
            }
        };
        match &g.set {
            Some(set) => {
                if g.members.iter().any(|&i| digits >= usize::from(self.detectors[i].min_digits)) {
                    set.matches(slice).iter().for_each(|m| run(g.members[m]));
                }
            }
            None => g.members.iter().for_each(|&i| run(i)),
        }
    }

    /// A string whose member name is a credential name is checked as a whole (JSON has no
    /// `api_key=` inside `{"api_key": "…"}`), unless something already covers it.
    fn member_name_rule(&self, text: &str, key: &str, found: &mut Vec<(u8, usize, Range<usize>)>) {
        if self.generic.is_none() && self.aws_secret.is_none() {
            return;
        }
        let Some((pattern, span)) = detectors::whole_value(key, text) else { return };
        if found.iter().any(|(_, _, r)| r.start < span.end && span.start < r.end) {
            return;
        }
        let (name, priority) = match pattern {
            "aws_secret_key" => (self.aws_secret, detectors::priority::AWS_SECRET),
            _ => (self.generic, detectors::priority::GENERIC),
        };
        // With `aws_secret_key` disabled, an AWS secret under a credential name is still a key.
        if let Some(name) = name.or(self.generic) {
            found.push((priority, name, span));
        }
    }
}

impl Detector {
    fn new(name: usize, regex: Regex, validate: Option<Validate>, priority: u8) -> Detector {
        let group = |g: &str| regex.capture_names().position(|n| n == Some(g));
        let (value_group, label_group) = (group("v"), group("k"));
        Detector {
            name,
            families: 0,
            min_digits: 0,
            value_group,
            label_group,
            regex,
            validate,
            priority,
        }
    }

    /// Appends this detector's validated matches inside `window` of `text` as
    /// `(priority, name, span)`. Window edges are where no match can cross (see [`triggers`]), so
    /// searching the slice finds what searching the whole text would find there.
    fn run(
        &self,
        text: &str,
        window: Range<usize>,
        key: Option<&str>,
        found: &mut Vec<(u8, usize, Range<usize>)>,
    ) {
        let base = window.start;
        let slice = &text[window];
        let at = |r: Range<usize>| base + r.start..base + r.end;
        let mut push = |span: Range<usize>, label: Option<Range<usize>>| {
            let span = match self.validate {
                Some(validate) => validate(&Candidate { text, span, label, key }),
                None => Some(span),
            };
            if let Some(span) = span.filter(|s| !s.is_empty()) {
                found.push((self.priority, self.name, span));
            }
        };
        if self.value_group.is_none() && self.label_group.is_none() {
            for m in self.regex.find_iter(slice) {
                push(at(m.range()), None);
            }
            return;
        }
        for caps in self.regex.captures_iter(slice) {
            let Some(whole) = caps.get(0) else { continue };
            let span =
                self.value_group.and_then(|g| caps.get(g)).map_or(whole.range(), |m| m.range());
            push(at(span), self.label_group.and_then(|g| caps.get(g)).map(|m| at(m.range())));
        }
    }
}

/// Keeps, where spans overlap, the finding of higher priority, then the earlier-starting, then
/// the longer; returns `(name, range)` sorted by start.
fn resolve_overlaps(mut found: Vec<(u8, usize, Range<usize>)>) -> Vec<(usize, Range<usize>)> {
    if found.len() <= 1 {
        return found.into_iter().map(|(_, n, r)| (n, r)).collect();
    }
    found.sort_by(|a, b| b.0.cmp(&a.0).then(a.2.start.cmp(&b.2.start)).then(b.2.end.cmp(&a.2.end)));
    // Kept spans by start; they never overlap, so a new span overlaps one of them exactly when it
    // overlaps its nearest neighbour on the left or the right.
    let mut kept: BTreeMap<usize, (usize, usize)> = BTreeMap::new();
    for (_, name, r) in found {
        let left = kept.range(..=r.start).next_back().is_some_and(|(_, &(end, _))| end > r.start);
        let right = kept.range(r.start..r.end).next().is_some();
        if !left && !right {
            kept.insert(r.start, (r.end, name));
        }
    }
    kept.into_iter().map(|(start, (end, name))| (name, start..end)).collect()
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
