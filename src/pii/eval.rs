//! Labelled corpora and their scoring: what `mcp-ledger pii eval` and `tests/pii_corpus.rs` run.
//! Pure — callers read the files; this parses their contents and counts.
//!
//! A corpus is JSON Lines (a `.json` file may also hold one array of items). Each item is a text
//! or a JSON payload with the findings expected in it; the accepted field names are liberal so
//! that corpora written for other tools load as they are (`docs/pii.md` lists them all):
//!
//! ```text
//! {"text": "mail bob@acme.io", "expect": [{"pattern": "email", "value": "bob@acme.io"}]}
//! {"text": "version 1.2.3.4", "expect": []}
//! {"json": {"a": ["536-22-1234"]}, "expect": [{"pattern": "ssn", "pointer": "/a/0"}]}
//! ```
//!
//! Scoring, per pattern. Text items: an expectation is met (true positive) by a finding of its
//! pattern that overlaps its span — given as `start`/`end`, or every occurrence of its `value`,
//! or anywhere when it has neither; unmet, it is a false negative. A finding that meets nothing is
//! a false positive, except that a second finding on an expectation already met (the same value
//! written twice, labelled once) counts as neither. JSON items: findings and expectations are
//! matched by pattern and pointer (any pointer when the expectation has none, the pointers of the
//! strings containing it when it has only a `value`); leftovers are false positives and negatives.

use std::collections::BTreeMap;
use std::ops::Range;

use serde::Serialize;
use serde_json::{Map, Value};

use super::Scanner;

/// Where an item came from: file name (as the caller gave it) and 1-based line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Location {
    pub file: String,
    pub line: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// One labelled example.
#[derive(Debug, Clone)]
pub struct Item {
    pub location: Location,
    pub input: Input,
    pub expect: Vec<Expect>,
}

#[derive(Debug, Clone)]
pub enum Input {
    Text(String),
    Json(Value),
}

/// One expected finding. `pattern` is canonical (see [`canonical_pattern`]).
#[derive(Debug, Clone, Default)]
pub struct Expect {
    pub pattern: String,
    pub value: Option<String>,
    /// Byte range into the text, resolved from the item's offsets.
    pub span: Option<Range<usize>>,
    pub pointer: Option<String>,
}

/// A corpus line that could not be read. Names the file and line; never quotes the line (it may
/// hold real secrets).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {problem}")]
pub struct EvalError {
    pub location: Location,
    pub problem: String,
}

const INPUT_TEXT: &[&str] = &["text", "input", "content", "string", "sentence", "data"];
const INPUT_JSON: &[&str] = &["json", "payload", "body", "message"];
#[rustfmt::skip]
const LABEL_LISTS: &[&str] = &[
    "expect", "expected", "labels", "findings", "entities", "spans", "annotations", "pii",
    "secrets", "matches",
];
const PATTERN_KEYS: &[&str] = &["pattern", "type", "label", "entity", "kind", "name", "category"];
const VALUE_KEYS: &[&str] = &["value", "text", "match", "matched", "span_text", "secret"];
const POINTER_KEYS: &[&str] = &["pointer", "path", "json_pointer", "location"];

/// Label names other tools use, mapped to this scanner's names. Compared after lower-casing and
/// turning every run of non-alphanumerics into `_`.
const ALIASES: &[(&str, &[&str])] = &[
    ("email", &["email_address", "e_mail", "mail"]),
    (
        "phone_us",
        &["phone", "phone_number", "us_phone", "us_phone_number", "telephone", "phone_number_us"],
    ),
    ("ssn", &["us_ssn", "social_security_number", "us_social_security_number"]),
    (
        "credit_card",
        &["card", "credit_card_number", "cc", "card_number", "payment_card", "pan", "creditcard"],
    ),
    ("aws_access_key", &["aws_access_key_id", "aws_key_id", "aws_access_key_ids"]),
    ("aws_secret_key", &["aws_secret_access_key", "aws_secret"]),
    ("github_token", &["github_pat", "gh_token", "github", "github_access_token"]),
    ("jwt", &["json_web_token", "jwt_token"]),
    ("slack_token", &["slack", "slack_webhook", "slack_webhook_url", "slack_bot_token"]),
    (
        "private_key_header",
        &["private_key", "pem", "pem_private_key", "ssh_private_key", "rsa_private_key"],
    ),
    (
        "generic_api_key",
        &["api_key", "apikey", "generic_secret", "secret", "token", "bearer_token", "generic_key"],
    ),
    ("ip_address", &["ip", "ipv4", "ipv6", "ip_v4", "ip_v6", "ipv4_address", "ipv6_address"]),
    ("iban", &["iban_code", "iban_number"]),
];

/// A label name reduced to this scanner's name where one is known, else to its reduced form.
pub fn canonical_pattern(label: &str) -> String {
    let mut reduced = String::new();
    for c in label.trim().chars() {
        if c.is_alphanumeric() {
            reduced.extend(c.to_lowercase());
        } else if !reduced.ends_with('_') {
            reduced.push('_');
        }
    }
    let reduced = reduced.trim_matches('_').to_string();
    ALIASES
        .iter()
        .find(|(name, aliases)| *name == reduced || aliases.contains(&reduced.as_str()))
        .map_or(reduced, |(name, _)| name.to_string())
}

/// A corpus file's items, and the lines that could not be read (skipped).
#[derive(Debug, Default)]
pub struct Parsed {
    pub items: Vec<Item>,
    pub errors: Vec<EvalError>,
}

/// Parses a corpus file's contents: JSON Lines (blank lines and lines starting with `#` or `//`
/// are skipped), or one JSON array of items. A line that is not a readable item is reported in
/// `errors` and skipped, so one odd line does not stop an evaluation.
pub fn parse(contents: &str, file: &str) -> Parsed {
    let mut parsed = Parsed::default();
    let mut take = |r: Result<Item, EvalError>| match r {
        Ok(item) => parsed.items.push(item),
        Err(e) => parsed.errors.push(e),
    };
    if contents.trim_start().starts_with('[')
        && let Ok(Value::Array(values)) = serde_json::from_str::<Value>(contents)
    {
        for (i, v) in values.into_iter().enumerate() {
            take(item(v, Location { file: file.to_string(), line: i + 1 }));
        }
        return parsed;
    }
    for (i, line) in contents.lines().enumerate() {
        let location = Location { file: file.to_string(), line: i + 1 };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with("//") {
            continue;
        }
        take(
            serde_json::from_str(line)
                .map_err(|e: serde_json::Error| EvalError {
                    location: location.clone(),
                    problem: format!("not a JSON object ({})", e.classify_name()),
                })
                .and_then(|value| item(value, location)),
        );
    }
    parsed
}

trait ClassifyName {
    fn classify_name(&self) -> &'static str;
}

impl ClassifyName for serde_json::Error {
    fn classify_name(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "i/o error",
            serde_json::error::Category::Syntax => "syntax error",
            serde_json::error::Category::Data => "unexpected value",
            serde_json::error::Category::Eof => "unexpected end of line",
        }
    }
}

fn first<'a>(obj: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().find_map(|k| obj.get(*k)).filter(|v| !v.is_null())
}

fn first_str<'a>(obj: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| obj.get(*k).and_then(Value::as_str))
}

fn item(value: Value, location: Location) -> Result<Item, EvalError> {
    let fail = |problem: &str| EvalError { location: location.clone(), problem: problem.into() };
    let Value::Object(obj) = value else { return Err(fail("an item must be a JSON object")) };
    let input = if let Some(v) = first(&obj, INPUT_JSON) {
        Input::Json(v.clone())
    } else {
        match first(&obj, INPUT_TEXT) {
            Some(Value::String(s)) => Input::Text(s.clone()),
            Some(v) => Input::Json(v.clone()),
            None => {
                return Err(fail(
                    "no input: expected a `text` (or `input`, `content`) string or a `json` value",
                ));
            }
        }
    };
    let text = match &input {
        Input::Text(t) => Some(t.as_str()),
        Input::Json(_) => None,
    };
    let mut expect = Vec::new();
    match first(&obj, LABEL_LISTS) {
        Some(Value::Array(labels)) => {
            for (n, label) in labels.iter().enumerate() {
                let e =
                    expectation(label, text).map_err(|p| fail(&format!("label {}: {p}", n + 1)))?;
                expect.extend(e);
            }
        }
        Some(Value::Object(_)) | Some(Value::String(_)) => {
            let label = first(&obj, LABEL_LISTS).expect("just matched");
            expect.extend(expectation(label, text).map_err(|p| fail(&format!("label: {p}")))?);
        }
        Some(_) => return Err(fail("labels must be a list")),
        None => {
            // A single label written at the top level: {"text": …, "pattern": "email", "value": …}.
            if first_str(&obj, PATTERN_KEYS).is_some() {
                let mut top = obj.clone();
                top.retain(|k, _| {
                    !INPUT_TEXT.contains(&k.as_str()) && !INPUT_JSON.contains(&k.as_str())
                });
                let top = Value::Object(top);
                expect.extend(expectation(&top, text).map_err(|p| fail(&format!("label: {p}")))?);
            }
        }
    }
    Ok(Item { location, input, expect })
}

/// Names that mean "nothing expected" where a pattern name would be.
fn is_negative_label(name: &str) -> bool {
    matches!(name, "" | "none" | "negative" | "o" | "clean" | "null")
}

fn expectation(label: &Value, text: Option<&str>) -> Result<Option<Expect>, String> {
    let obj = match label {
        Value::String(s) => {
            let pattern = canonical_pattern(s);
            return Ok(
                (!is_negative_label(&pattern)).then(|| Expect { pattern, ..Expect::default() })
            );
        }
        Value::Object(obj) => obj,
        _ => return Err("must be an object or a pattern name".into()),
    };
    let pattern = canonical_pattern(
        first_str(obj, PATTERN_KEYS).ok_or("has no `pattern` (or `type`, `label`)")?,
    );
    if is_negative_label(&pattern) {
        return Ok(None);
    }
    let value = first_str(obj, VALUE_KEYS).map(str::to_string);
    let pointer = first_str(obj, POINTER_KEYS).map(str::to_string);
    let offsets = offsets(obj);
    let span = match (text, offsets) {
        (Some(text), Some((start, end))) => Some(
            resolve_offsets(text, start, end, value.as_deref())
                .ok_or("its offsets do not fit the text")?,
        ),
        _ => None,
    };
    Ok(Some(Expect { pattern, value, span, pointer }))
}

fn offsets(obj: &Map<String, Value>) -> Option<(usize, usize)> {
    let num = |keys: &[&str]| keys.iter().find_map(|k| obj.get(*k).and_then(Value::as_u64));
    if let Some(Value::Array(pair)) = obj.get("span").or_else(|| obj.get("offsets"))
        && let [Some(s), Some(e)] = [pair.first(), pair.get(1)].map(|v| v.and_then(Value::as_u64))
    {
        return Some((s as usize, e as usize));
    }
    let start = num(&["start", "begin", "start_offset", "from"])?;
    let end = num(&["end", "stop", "end_offset", "to"])?;
    Some((start as usize, end as usize))
}

/// Offsets are read as characters (as Python and most labelling tools count); if that does not
/// give the labelled value but bytes do, as bytes.
fn resolve_offsets(
    text: &str,
    start: usize,
    end: usize,
    value: Option<&str>,
) -> Option<Range<usize>> {
    let byte_at = |chars: usize| {
        text.char_indices().map(|(i, _)| i).chain(std::iter::once(text.len())).nth(chars)
    };
    let as_chars = byte_at(start).zip(byte_at(end)).map(|(s, e)| s..e).filter(|r| r.start <= r.end);
    let as_bytes = (start <= end
        && end <= text.len()
        && text.is_char_boundary(start)
        && text.is_char_boundary(end))
    .then_some(start..end);
    match value {
        Some(v) => {
            let fits = |r: &Range<usize>| text.get(r.clone()) == Some(v);
            as_chars
                .clone()
                .filter(fits)
                .or(as_bytes.clone().filter(fits))
                .or(as_chars)
                .or(as_bytes)
        }
        None => as_chars.or(as_bytes),
    }
}

/// True and false positives and negatives of one pattern.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub tp: usize,
    pub fp: usize,
    #[serde(rename = "fn")]
    pub fn_: usize,
}

impl Counts {
    /// 1 when nothing was reported (nothing to be wrong about).
    pub fn precision(&self) -> f64 {
        if self.tp + self.fp == 0 { 1.0 } else { self.tp as f64 / (self.tp + self.fp) as f64 }
    }

    /// 1 when nothing was expected.
    pub fn recall(&self) -> f64 {
        if self.tp + self.fn_ == 0 { 1.0 } else { self.tp as f64 / (self.tp + self.fn_) as f64 }
    }

    pub fn f1(&self) -> f64 {
        let (p, r) = (self.precision(), self.recall());
        if p + r == 0.0 { 0.0 } else { 2.0 * p * r / (p + r) }
    }

    /// Whether there is anything to score.
    pub fn is_empty(&self) -> bool {
        self.tp + self.fp + self.fn_ == 0
    }

    fn add(&mut self, other: Counts) {
        self.tp += other.tp;
        self.fp += other.fp;
        self.fn_ += other.fn_;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MissKind {
    /// Reported but not expected.
    Fp,
    /// Expected but not reported.
    Fn,
}

/// One mistake: where, which pattern, and where in the item (`bytes 12..24` or a pointer).
#[derive(Debug, Clone, Serialize)]
pub struct Miss {
    #[serde(flatten)]
    pub location: Location,
    pub pattern: String,
    pub kind: MissKind,
    #[serde(rename = "where")]
    pub place: String,
    /// The text concerned — filled only when the caller asks for values.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// The result of scoring a corpus.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub items: usize,
    /// Items that expect nothing.
    pub negatives: usize,
    pub patterns: BTreeMap<String, Counts>,
    pub misses: Vec<Miss>,
}

impl Report {
    /// All patterns together (micro-averaged).
    pub fn overall(&self) -> Counts {
        let mut all = Counts::default();
        self.patterns.values().for_each(|c| all.add(*c));
        all
    }

    /// Patterns whose precision or recall is below `min`.
    pub fn below(&self, min: f64) -> Vec<&str> {
        self.patterns
            .iter()
            .filter(|(_, c)| !c.is_empty() && (c.precision() < min || c.recall() < min))
            .map(|(p, _)| p.as_str())
            .collect()
    }
}

/// Scores `scanner` on `items`. With `show_values`, misses carry the text concerned.
pub fn evaluate(scanner: &Scanner, items: &[Item], show_values: bool) -> Report {
    let mut report = Report { items: items.len(), ..Report::default() };
    for name in scanner.pattern_names() {
        report.patterns.insert(name.to_string(), Counts::default());
    }
    for item in items {
        if item.expect.is_empty() {
            report.negatives += 1;
        }
        match &item.input {
            Input::Text(text) => score_text(scanner, item, text, show_values, &mut report),
            Input::Json(value) => score_json(scanner, item, value, show_values, &mut report),
        }
    }
    report
}

fn overlaps(a: &Range<usize>, b: &Range<usize>) -> bool {
    a.start < b.end && b.start < a.end
}

/// Byte ranges of every occurrence of `needle` in `haystack`.
fn occurrences(haystack: &str, needle: &str) -> Vec<Range<usize>> {
    if needle.is_empty() {
        return Vec::new();
    }
    haystack.match_indices(needle).map(|(i, _)| i..i + needle.len()).collect()
}

fn score_text(scanner: &Scanner, item: &Item, text: &str, show: bool, report: &mut Report) {
    let found = scanner.scan_text(text);
    // Where each expectation may be met; `None`: anywhere.
    let places: Vec<Option<Vec<Range<usize>>>> = item
        .expect
        .iter()
        .map(|e| match (&e.span, &e.value) {
            (Some(span), _) => Some(vec![span.clone()]),
            (None, Some(v)) => Some(occurrences(text, v)),
            (None, None) => None,
        })
        .collect();
    let fits = |i: usize, e: &Expect, m: &super::Match| {
        e.pattern == m.pattern
            && places[i].as_ref().is_none_or(|p| p.iter().any(|r| overlaps(r, &m.range)))
    };
    let mut met = vec![false; item.expect.len()];
    let mut used = vec![false; found.len()];
    for (i, e) in item.expect.iter().enumerate() {
        if let Some(j) = (0..found.len()).find(|&j| !used[j] && fits(i, e, &found[j])) {
            met[i] = true;
            used[j] = true;
        }
    }
    let miss = |pattern: &str, kind, range: Option<&Range<usize>>, value: Option<&str>| Miss {
        location: item.location.clone(),
        pattern: pattern.to_string(),
        kind,
        place: range.map_or("anywhere".into(), |r| format!("bytes {}..{}", r.start, r.end)),
        value: show.then(|| value.unwrap_or_default().to_string()),
    };
    for (j, m) in found.iter().enumerate() {
        let counts = report.patterns.entry(m.pattern.clone()).or_default();
        if used[j] {
            counts.tp += 1;
        } else if !item.expect.iter().enumerate().any(|(i, e)| met[i] && fits(i, e, m)) {
            counts.fp += 1;
            report.misses.push(miss(
                &m.pattern,
                MissKind::Fp,
                Some(&m.range),
                Some(&text[m.range.clone()]),
            ));
        }
    }
    for (i, e) in item.expect.iter().enumerate().filter(|(i, _)| !met[*i]) {
        report.patterns.entry(e.pattern.clone()).or_default().fn_ += 1;
        let first = places[i].as_ref().and_then(|p| p.first());
        let value = e.value.as_deref().or(first.map(|r| &text[r.clone()]));
        report.misses.push(miss(&e.pattern, MissKind::Fn, first, value));
    }
}

fn score_json(scanner: &Scanner, item: &Item, value: &Value, show: bool, report: &mut Report) {
    let found = scanner.scan_json(value);
    // The pointers where each expectation may be met; `None`: anywhere.
    let places: Vec<Option<Vec<String>>> = item
        .expect
        .iter()
        .map(|e| match (&e.pointer, &e.value) {
            (Some(p), _) => Some(vec![p.clone()]),
            (None, Some(v)) => Some(strings_containing(value, v)),
            (None, None) => None,
        })
        .collect();
    let mut used = vec![false; found.len()];
    let mut unmet = Vec::new();
    for (i, e) in item.expect.iter().enumerate() {
        let fits = |f: &super::Finding| {
            f.pattern == e.pattern && places[i].as_ref().is_none_or(|p| p.contains(&f.pointer))
        };
        match (0..found.len()).find(|&j| !used[j] && fits(&found[j])) {
            Some(j) => used[j] = true,
            None => unmet.push(i),
        }
    }
    let text_at =
        |pointer: &str| value.pointer(pointer).and_then(Value::as_str).map(str::to_string);
    for (j, f) in found.iter().enumerate() {
        let counts = report.patterns.entry(f.pattern.clone()).or_default();
        if used[j] {
            counts.tp += 1;
        } else {
            counts.fp += 1;
            report.misses.push(Miss {
                location: item.location.clone(),
                pattern: f.pattern.clone(),
                kind: MissKind::Fp,
                place: format!("pointer {}", f.pointer),
                value: show.then(|| text_at(&f.pointer).unwrap_or_default()),
            });
        }
    }
    for i in unmet {
        let e = &item.expect[i];
        report.patterns.entry(e.pattern.clone()).or_default().fn_ += 1;
        let place = places[i].as_ref().and_then(|p| p.first().cloned());
        report.misses.push(Miss {
            location: item.location.clone(),
            pattern: e.pattern.clone(),
            kind: MissKind::Fn,
            place: place.map_or("anywhere".into(), |p| format!("pointer {p}")),
            value: show.then(|| e.value.clone().unwrap_or_default()),
        });
    }
}

/// Pointers of the strings in `value` that contain `needle`.
fn strings_containing(value: &Value, needle: &str) -> Vec<String> {
    fn walk(v: &Value, path: &mut String, needle: &str, out: &mut Vec<String>) {
        match v {
            Value::String(s) if s.contains(needle) => out.push(path.clone()),
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    let len = path.len();
                    path.push_str(&format!("/{i}"));
                    walk(x, path, needle, out);
                    path.truncate(len);
                }
            }
            Value::Object(m) => {
                for (k, x) in m {
                    let len = path.len();
                    path.push('/');
                    path.push_str(&k.replace('~', "~0").replace('/', "~1"));
                    walk(x, path, needle, out);
                    path.truncate(len);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(value, &mut String::new(), needle, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(corpus: &str) -> Report {
        let parsed = parse(corpus, "t.jsonl");
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        evaluate(&Scanner::builtin(), &parsed.items, false)
    }

    #[test]
    fn counts_text_items() {
        let r = run(concat!(
            r#"{"text": "mail bob@acme.io or 536-22-1234", "expect": [{"pattern": "email", "value": "bob@acme.io"}, {"pattern": "ssn", "value": "536-22-1234"}]}"#,
            "\n",
            r#"{"text": "version 1.2.3.4 and 10.0.0.1", "expect": []}"#,
            "\n# a comment\n\n",
            r#"{"input": "call (415) 555-0132", "labels": [{"type": "PHONE_NUMBER", "start": 5, "end": 19}]}"#,
            "\n",
            r#"{"text": "no key here: AKIAIOSFODNN7EXAMPLE", "labels": ["aws_access_key"]}"#,
        ));
        assert_eq!(r.items, 4);
        assert_eq!(r.negatives, 1);
        assert_eq!(r.patterns["email"], Counts { tp: 1, fp: 0, fn_: 0 });
        assert_eq!(r.patterns["ssn"], Counts { tp: 1, fp: 0, fn_: 0 });
        assert_eq!(r.patterns["phone_us"], Counts { tp: 1, fp: 0, fn_: 0 });
        assert_eq!(r.patterns["ip_address"], Counts { tp: 0, fp: 1, fn_: 0 });
        assert_eq!(r.patterns["aws_access_key"], Counts { tp: 0, fp: 0, fn_: 1 });
        assert_eq!(r.below(0.95), ["aws_access_key", "ip_address"]);
        let fp = r.misses.iter().find(|m| m.kind == MissKind::Fp).unwrap();
        assert_eq!((fp.location.line, fp.place.as_str()), (2, "bytes 20..28"));
        assert!(fp.value.is_none(), "values only on request");
    }

    #[test]
    fn counts_json_items_by_pointer() {
        let r = run(
            r#"{"json": {"a": ["bob@acme.io", "x"], "b": {"ssn": "536221234"}}, "expect": [{"pattern": "email", "pointer": "/a/0"}, {"pattern": "ssn", "pointer": "/b/ssn"}, {"pattern": "iban", "pointer": "/a/1"}]}"#,
        );
        assert_eq!(r.patterns["email"].tp, 1);
        assert_eq!(r.patterns["ssn"].tp, 1);
        assert_eq!(r.patterns["iban"].fn_, 1);
    }

    #[test]
    fn repeated_values_are_not_false_positives() {
        let r = run(
            r#"{"text": "bob@acme.io, again bob@acme.io", "expect": [{"pattern": "email", "value": "bob@acme.io"}]}"#,
        );
        assert_eq!(r.patterns["email"], Counts { tp: 1, fp: 0, fn_: 0 });
    }

    #[test]
    fn liberal_names_and_offsets() {
        assert_eq!(canonical_pattern("EMAIL_ADDRESS"), "email");
        assert_eq!(canonical_pattern("Credit Card"), "credit_card");
        assert_eq!(canonical_pattern("IPv6"), "ip_address");
        assert_eq!(canonical_pattern("my-custom"), "my_custom");
        // Character offsets in non-ASCII text, as Python counts them.
        let items = parse(
            r#"{"content": "Grüße jürgen@acme.io", "findings": [{"label": "email", "start": 6, "end": 20}]}"#,
            "f",
        )
        .items;
        assert_eq!(items[0].expect[0].span, Some(8..23));
        let items =
            parse(r#"[{"text": "a", "expect": []}, {"text": "b", "pattern": "none"}]"#, "f").items;
        assert_eq!(items.len(), 2);
        assert!(items.iter().all(|i| i.expect.is_empty()));
    }

    #[test]
    fn errors_name_the_line_not_the_content() {
        let parsed = parse("{\"text\": \"ok\"}\n{not json: sk_live_abc}", "c.jsonl");
        assert_eq!(parsed.items.len(), 1, "the good line is kept");
        let err = &parsed.errors[0];
        assert_eq!(err.location.line, 2);
        assert!(!err.to_string().contains("sk_live"), "{err}");
        let err = &parse(r#"{"expect": []}"#, "c.jsonl").errors[0];
        assert!(err.to_string().contains("no input"), "{err}");
    }
}
