//! Scanner-level tests (JSON walking, overlaps, redaction, configuration) and the helpers the
//! per-detector tests in `detectors/*.rs` share.

use serde_json::json;

use super::*;

pub(crate) fn scanner() -> &'static Scanner {
    static SCANNER: std::sync::OnceLock<Scanner> = std::sync::OnceLock::new();
    SCANNER.get_or_init(Scanner::builtin)
}

/// Pattern names found in `text`.
fn found(text: &str) -> Vec<String> {
    scanner().scan_text(text).into_iter().map(|m| m.pattern).collect()
}

pub(crate) fn assert_flags(pattern: &str, text: &str) {
    let f = found(text);
    assert!(f.iter().any(|p| p == pattern), "{pattern} expected in {text:?}, got {f:?}");
}

pub(crate) fn assert_not_flags(pattern: &str, text: &str) {
    let f = found(text);
    assert!(!f.iter().any(|p| p == pattern), "{pattern} not expected in {text:?}, got {f:?}");
}

/// `(pattern, matched text)` of every match in `text`.
pub(crate) fn spans(text: &str) -> Vec<(&'static str, &str)> {
    let name = |p: &str| builtin_names().find(|n| *n == p).expect("a built-in pattern");
    scanner().scan_text(text).into_iter().map(|m| (name(&m.pattern), &text[m.range])).collect()
}

#[test]
fn builtin_set_is_complete() {
    let names: Vec<&str> = builtin_names().collect();
    assert_eq!(
        names,
        [
            "email",
            "phone_us",
            "ssn",
            "credit_card",
            "aws_access_key",
            "aws_secret_key",
            "github_token",
            "jwt",
            "slack_token",
            "private_key_header",
            "generic_api_key",
            "ip_address",
            "iban",
        ]
    );
    assert!(names.iter().all(|n| builtin_summary(n).is_some()));
    assert_eq!(scanner().pattern_names().collect::<Vec<_>>(), names);
}

#[test]
fn scanner_is_shareable() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Scanner>();
}

#[test]
fn specific_patterns_win_overlaps() {
    let tok = "ghp_1a2B3c4D5e6F7g8H9i0JkLmNoPqRsTuVwXyZ";
    assert_eq!(spans(&format!("token={tok}")), [("github_token", tok)]);
    let m = scanner().scan_text("a 4111111111111111 b 192.168.1.1 c");
    let names: Vec<&str> = m.iter().map(|m| m.pattern.as_str()).collect();
    assert_eq!(names, ["credit_card", "ip_address"]);
    assert!(m.windows(2).all(|w| w[0].range.end <= w[1].range.start));
}

#[test]
fn json_recursion_and_pointer_escaping() {
    let v = json!({
        "a/b": { "c~d": ["nothing here", "mail bob@acme.io or 536-22-1234"] },
        "n": 5,
        "deep": [[[{"x": "8.8.4.4"}]]],
    });
    let mut f = scanner().scan_json(&v);
    f.sort_by(|a, b| (&a.pointer, &a.pattern).cmp(&(&b.pointer, &b.pattern)));
    let got: Vec<(&str, &str)> =
        f.iter().map(|f| (f.pattern.as_str(), f.pointer.as_str())).collect();
    assert_eq!(
        got,
        [("email", "/a~1b/c~0d/1"), ("ssn", "/a~1b/c~0d/1"), ("ip_address", "/deep/0/0/0/x")]
    );
    assert_eq!(scanner().count_json(&v), 3);
    let bytes = serde_json::to_vec(&v).unwrap();
    assert_eq!(scanner().scan_json_bytes(&bytes).unwrap().len(), 3);
    assert!(scanner().scan_json_bytes(b"{not json").is_err());
}

#[test]
fn binary_blobs_are_skipped() {
    let key = "AKIAZ4X7QWERTY2PLMNB"; // valid base64 alphabet, and an AWS key as text
    let long = format!("{}AKIAZ4X7QWERTY2PLMNB/{}", "A".repeat(600), "b".repeat(600));
    let v = json!({
        "content": [
            {"type": "image", "data": key, "mimeType": "image/png"},
            {"type": "audio", "data": key},
            {"type": "resource", "resource": {"uri": "file:///x", "mimeType": "application/octet-stream", "blob": key}},
            {"type": "text", "data": key},
            {"type": "image", "data": "not base64: bob@acme.io"},
            {"type": "text", "text": format!("data:image/png;base64,{key}")},
            {"type": "text", "text": long},
        ]
    });
    let f = scanner().scan_json(&v);
    let got: Vec<(&str, &str)> =
        f.iter().map(|f| (f.pattern.as_str(), f.pointer.as_str())).collect();
    assert_eq!(got, [("aws_access_key", "/content/3/data"), ("email", "/content/4/data")]);
    let (red, _) = scanner().redact_json(&v);
    assert_eq!(red["content"][0]["data"], key, "blob left untouched");
    assert_eq!(red["content"][6]["text"], v["content"][6]["text"]);
}

#[test]
fn redaction_output() {
    let v = json!({
        "content": [{"type": "text", "text": "mail alice@acme.io, ssn 536-22-1234."}],
        "isError": false,
        "meta": {"api_key": "Zx9Qw3Lm7Pv2Rt8K", "n": null}
    });
    let (red, findings) = scanner().redact_json(&v);
    assert_eq!(
        red,
        json!({
            "content": [{"type": "text", "text": "mail [REDACTED:email], ssn [REDACTED:ssn]."}],
            "isError": false,
            "meta": {"api_key": "[REDACTED:generic_api_key]", "n": null}
        })
    );
    assert_eq!(findings.len(), 3);
    assert_eq!(findings, scanner().scan_json(&v));
    let (text, m) = scanner().redact_text("key=AKIAZ4X7QWERTY2PLMNB;");
    assert_eq!(text, "key=[REDACTED:aws_access_key];");
    assert_eq!(m.len(), 1);
    let clean = json!({"a": [1, "two", {"b": true}]});
    assert_eq!(scanner().redact_json(&clean), (clean.clone(), vec![]));
    // Without a finding there is no copy; with one, the copy keeps every untouched sibling,
    // before and after the change, at every level.
    assert_eq!(scanner().redact_json_if_found(&clean), (None, vec![]));
    let (copy, found) = scanner().redact_json_if_found(&v);
    assert_eq!(copy, Some(red));
    assert_eq!(found, findings);
    let deep = json!({"a": 1, "b": [true, {"x": "bob@acme.io", "y": [2]}, "z"], "c": {"d": null}});
    let (copy, _) = scanner().redact_json_if_found(&deep);
    assert_eq!(
        copy,
        Some(
            json!({"a": 1, "b": [true, {"x": "[REDACTED:email]", "y": [2]}, "z"], "c": {"d": null}})
        )
    );
}

#[test]
fn redaction_leaves_no_part_of_a_non_ascii_address() {
    let (text, _) = scanner().redact_text("Grüße an jürgen.alice@acme.io – danke");
    assert_eq!(text, "Grüße an [REDACTED:email] – danke");
}

#[test]
fn findings_never_carry_the_value() {
    let v = json!({"t": "mail alice@acme.io ssn 536-22-1234"});
    let (_, findings) = scanner().redact_json(&v);
    let dbg = format!("{findings:?} {:?} {:?}", scanner().scan_text("alice@acme.io"), scanner());
    assert!(!dbg.contains("alice") && !dbg.contains("536"), "{dbg}");
}

#[test]
fn custom_pattern() {
    let s = Scanner::new(&ScannerConfig {
        disabled: vec![],
        custom: vec![
            ("employee_id".into(), r"\bEMP-[0-9]{6}\b".into()),
            ("ticket".into(), r"ticket #(?P<v>[0-9]{4})".into()),
        ],
    })
    .unwrap();
    let (red, f) = s.redact_json(&json!(["who is EMP-123456?", "see ticket #4821"]));
    assert_eq!(red, json!(["who is [REDACTED:employee_id]?", "see ticket #[REDACTED:ticket]"]));
    assert_eq!(f[0].pointer, "/0");
    assert_eq!(f[1].pattern, "ticket");
    assert!(s.pattern_names().any(|n| n == "ticket"));
}

#[test]
fn disabled_pattern() {
    let s =
        Scanner::new(&ScannerConfig { disabled: vec!["email".into()], custom: vec![] }).unwrap();
    assert!(s.scan_text("alice@acme.io").is_empty());
    assert!(!s.pattern_names().any(|n| n == "email"));
    assert_eq!(s.scan_text("ssn 536-22-1234").len(), 1);
    let s = Scanner::new(&ScannerConfig {
        disabled: vec!["generic_api_key".into(), "aws_secret_key".into()],
        custom: vec![],
    })
    .unwrap();
    assert!(s.scan_json(&json!({"api_key": "Zx9Qw3Lm7Pv2Rt8K"})).is_empty());
}

#[test]
fn config_errors() {
    let err = |c: ScannerConfig| Scanner::new(&c).unwrap_err();
    assert_eq!(
        err(ScannerConfig { disabled: vec!["emial".into()], custom: vec![] }),
        PiiError::UnknownPattern("emial".into())
    );
    assert!(matches!(
        err(ScannerConfig { disabled: vec![], custom: vec![("x".into(), "(".into())] }),
        PiiError::InvalidRegex { .. }
    ));
    assert!(matches!(
        err(ScannerConfig { disabled: vec![], custom: vec![("email".into(), "x".into())] }),
        PiiError::DuplicatePattern(_)
    ));
    assert!(matches!(
        err(ScannerConfig { disabled: vec![], custom: vec![("bad name]".into(), "x".into())] }),
        PiiError::InvalidName(_)
    ));
}

#[test]
fn large_text_is_scanned_whole() {
    let filler = "lorem ipsum dolor sit amet, version 1.2.3 — naïve café ".repeat(4000);
    let text = format!("{filler} mail bob@acme.io {filler}");
    let m = scanner().scan_text(&text);
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].pattern, "email");
    assert_eq!(&text[m[0].range.clone()], "bob@acme.io");
}

/// Every string of the benchmark workload (prose, logs, tables, records, code) gives the same
/// matches through triggers and windows as through every detector over the whole string.
#[test]
fn windows_find_what_a_full_scan_finds() {
    fn strings<'a>(v: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match v {
            serde_json::Value::String(s) => out.push(s),
            serde_json::Value::Array(a) => a.iter().for_each(|x| strings(x, out)),
            serde_json::Value::Object(m) => m.values().for_each(|x| strings(x, out)),
            _ => {}
        }
    }
    let payloads = workload::build(1 << 20, 11);
    let mut all = Vec::new();
    for p in &payloads {
        strings(&p.value, &mut all);
    }
    // Long stretches without a boundary character, where window edges fall back to the ends.
    let query: Vec<String> = (0..400)
        .map(|i| {
            format!(
                "u{i}=bob{i}%40acme.io&ip{i}=10.0.{}.{}&ssn{i}=536-22-{:04}",
                i % 256,
                i % 200,
                1000 + i
            )
        })
        .collect();
    let query = query.join("&");
    all.push(&query);
    let mut checked = 0;
    for s in all.into_iter().filter(|s| s.len() < 40_000) {
        assert_eq!(scanner().scan_text(s), scanner().scan_text_exhaustive(s), "{s}");
        checked += 1;
    }
    assert!(checked > 1000);
}
