//! Walking JSON values: which strings are scanned, their RFC 6901 pointers, and redaction.
//!
//! * Every string value at any depth is scanned, with its member name (if it is an object member)
//!   as context. Object keys themselves are not scanned.
//! * Binary blobs are not scanned as text, because base64 is noise to the detectors (and costs
//!   time). A string is a blob when it is
//!   - the `blob` or `data` member of an object whose `type` is `"image"` or `"audio"` or which has
//!     a `mimeType` member (MCP image/audio content and blob resource contents), and is base64
//!     (base64 alphabet, `=` padding, whitespace) — such a member that is *not* base64 is scanned;
//!   - or, anywhere, a `data:` URI with `;base64,`;
//!   - or, anywhere, 1 KiB or more of nothing but base64 characters and line breaks (no spaces, so
//!     never prose): long enough that no detector's format fits inside it with boundaries.
//! * Pointers are built only for strings that have findings: the walk keeps a stack of borrowed
//!   path segments instead of a string, so clean payloads allocate nothing per value.

use serde_json::{Map, Value};

use super::{Finding, Match, Scanner, apply_redaction};

/// Length from which an unkeyed all-base64 string is treated as a blob.
const LONG_BLOB: usize = 1024;

enum Segment<'a> {
    Key(&'a str),
    Index(usize),
}

/// Renders `path` as an RFC 6901 pointer (`~` → `~0`, `/` → `~1`).
fn pointer(path: &[Segment<'_>]) -> String {
    let mut p = String::new();
    for seg in path {
        p.push('/');
        match seg {
            Segment::Index(i) => p.push_str(&i.to_string()),
            Segment::Key(k) => {
                for c in k.chars() {
                    match c {
                        '~' => p.push_str("~0"),
                        '/' => p.push_str("~1"),
                        c => p.push(c),
                    }
                }
            }
        }
    }
    p
}

/// What a walk does with each scanned string.
trait Visitor {
    fn string(&mut self, scanner: &Scanner, s: &str, key: Option<&str>, path: &[Segment<'_>]);
}

struct Collect(Vec<Finding>);

impl Visitor for Collect {
    fn string(&mut self, scanner: &Scanner, s: &str, key: Option<&str>, path: &[Segment<'_>]) {
        let found = scanner.scan_str(s, key);
        if !found.is_empty() {
            let pointer = pointer(path);
            self.0.extend(found.into_iter().map(|(n, _)| Finding {
                pattern: scanner.names[n].clone(),
                pointer: pointer.clone(),
            }));
        }
    }
}

struct Count(usize);

impl Visitor for Count {
    fn string(&mut self, scanner: &Scanner, s: &str, key: Option<&str>, _: &[Segment<'_>]) {
        self.0 += scanner.scan_str(s, key).len();
    }
}

pub(super) fn scan(scanner: &Scanner, value: &Value) -> Vec<Finding> {
    let mut v = Collect(Vec::new());
    walk(scanner, value, None, &mut Vec::new(), &mut v);
    v.0
}

pub(super) fn count(scanner: &Scanner, value: &Value) -> usize {
    let mut v = Count(0);
    walk(scanner, value, None, &mut Vec::new(), &mut v);
    v.0
}

fn walk<'a>(
    scanner: &Scanner,
    value: &'a Value,
    key: Option<&'a str>,
    path: &mut Vec<Segment<'a>>,
    visitor: &mut impl Visitor,
) {
    match value {
        Value::String(s) if !is_unkeyed_blob(s) => visitor.string(scanner, s, key, path),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                path.push(Segment::Index(i));
                walk(scanner, item, None, path, visitor);
                path.pop();
            }
        }
        Value::Object(map) => {
            for (k, v) in map {
                if let Value::String(s) = v
                    && is_member_blob(map, k, s)
                {
                    continue;
                }
                path.push(Segment::Key(k));
                walk(scanner, v, Some(k), path, visitor);
                path.pop();
            }
        }
        _ => {}
    }
}

/// A copy of `value` with every finding redacted, and the findings.
pub(super) fn redact(scanner: &Scanner, value: &Value) -> (Value, Vec<Finding>) {
    let (redacted, findings) = redact_if_found(scanner, value);
    (redacted.unwrap_or_else(|| value.clone()), findings)
}

/// Like [`redact`], but `None` instead of a copy when nothing was found (the common case: a clean
/// body costs a scan, not a copy).
pub(super) fn redact_if_found(scanner: &Scanner, value: &Value) -> (Option<Value>, Vec<Finding>) {
    let mut findings = Vec::new();
    let redacted = redact_walk(scanner, value, None, &mut Vec::new(), &mut findings);
    (redacted, findings)
}

/// The redacted copy of `value`, or `None` when nothing in it changed: containers are copied
/// only on the way back up from a change.
fn redact_walk<'a>(
    scanner: &Scanner,
    value: &'a Value,
    key: Option<&'a str>,
    path: &mut Vec<Segment<'a>>,
    findings: &mut Vec<Finding>,
) -> Option<Value> {
    match value {
        Value::String(s) => {
            if is_unkeyed_blob(s) {
                return None;
            }
            let found = scanner.scan_str(s, key);
            if found.is_empty() {
                return None;
            }
            let pointer = pointer(path);
            let matches: Vec<Match> = found
                .into_iter()
                .map(|(n, range)| Match { pattern: scanner.names[n].clone(), range })
                .collect();
            findings.extend(
                matches
                    .iter()
                    .map(|m| Finding { pattern: m.pattern.clone(), pointer: pointer.clone() }),
            );
            Some(Value::String(apply_redaction(s, &matches)))
        }
        Value::Array(items) => {
            let mut copy: Option<Vec<Value>> = None;
            for (i, item) in items.iter().enumerate() {
                path.push(Segment::Index(i));
                let changed = redact_walk(scanner, item, None, path, findings);
                path.pop();
                if let Some(changed) = changed {
                    copy.get_or_insert_with(|| items[..i].to_vec()).push(changed);
                } else if let Some(copy) = &mut copy {
                    copy.push(item.clone());
                }
            }
            copy.map(Value::Array)
        }
        Value::Object(map) => {
            let mut copy: Option<Map<String, Value>> = None;
            for (i, (k, v)) in map.iter().enumerate() {
                let changed = match v {
                    Value::String(s) if is_member_blob(map, k, s) => None,
                    _ => {
                        path.push(Segment::Key(k));
                        let changed = redact_walk(scanner, v, Some(k), path, findings);
                        path.pop();
                        changed
                    }
                };
                if let Some(changed) = changed {
                    let copy = copy.get_or_insert_with(|| {
                        map.iter().take(i).map(|(k, v)| (k.clone(), v.clone())).collect()
                    });
                    copy.insert(k.clone(), changed);
                } else if let Some(copy) = &mut copy {
                    copy.insert(k.clone(), v.clone());
                }
            }
            copy.map(Value::Object)
        }
        _ => None,
    }
}

fn is_base64_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'-' | b'_')
}

/// The member rule from the module docs.
fn is_member_blob(obj: &Map<String, Value>, key: &str, s: &str) -> bool {
    if key != "blob" && key != "data" {
        return false;
    }
    let media = matches!(obj.get("type").and_then(Value::as_str), Some("image" | "audio"));
    if !media && !obj.contains_key("mimeType") {
        return false;
    }
    is_data_uri(s) || s.bytes().all(|b| is_base64_byte(b) || b.is_ascii_whitespace())
}

/// The two key-independent rules from the module docs.
fn is_unkeyed_blob(s: &str) -> bool {
    is_data_uri(s)
        || (s.len() >= LONG_BLOB
            && s.bytes().all(|b| is_base64_byte(b) || b == b'\n' || b == b'\r'))
}

/// `data:image/png;base64,iVBOR…` with nothing but base64 after the comma.
fn is_data_uri(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("data:") else { return false };
    let Some(comma) = rest.find(',') else { return false };
    rest[..comma].ends_with(";base64")
        && rest[comma + 1..].bytes().all(|b| is_base64_byte(b) || b.is_ascii_whitespace())
}
