use base64::Engine as _;
use serde_json::json;

use super::*;

fn scanner() -> &'static Scanner {
    static SCANNER: std::sync::OnceLock<Scanner> = std::sync::OnceLock::new();
    SCANNER.get_or_init(Scanner::builtin)
}

/// Pattern names found in `text`.
fn found(text: &str) -> Vec<String> {
    scanner().scan_text(text).into_iter().map(|m| m.pattern).collect()
}

fn assert_flags(pattern: &str, text: &str) {
    let f = found(text);
    assert!(f.iter().any(|p| p == pattern), "{pattern} expected in {text:?}, got {f:?}");
}

fn assert_not_flags(pattern: &str, text: &str) {
    let f = found(text);
    assert!(!f.iter().any(|p| p == pattern), "{pattern} not expected in {text:?}, got {f:?}");
}

fn b64url(s: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
}

#[test]
fn builtin_set_is_complete() {
    let names: Vec<&str> = builtin_names().collect();
    for p in [
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
    ] {
        assert!(names.contains(&p), "{p}");
    }
}

#[test]
fn email() {
    assert_flags("email", "write to alice.smith@corp.acme.io today");
    assert_flags("email", "<Bob+tag@Example.COM>");
    assert_not_flags("email", "alice@localhost");
    assert_not_flags("email", "not an email @ all");
    assert_not_flags("email", "a..b@acme.io");
    assert_flags("email", "Grüße an jürgen.alice@acme.io – danke");
}

#[test]
fn phone_us() {
    assert_flags("phone_us", "call (202) 555-0143");
    assert_flags("phone_us", "call +1 415-555-2671 now");
    assert_flags("phone_us", "415.555.2671");
    assert_not_flags("phone_us", "id 4155552671"); // bare digit run
    assert_not_flags("phone_us", "123-456-7890"); // area code cannot start with 1
    assert_not_flags("phone_us", "415-911-2671"); // N11 exchange
}

#[test]
fn ssn_with_impossible_ranges() {
    assert_flags("ssn", "ssn 536-22-1234");
    for bad in
        ["000-12-3456", "666-12-3456", "912-34-5678", "536-00-1234", "536-22-0000", "078-05-1120"]
    {
        assert_not_flags("ssn", bad);
    }
    assert_not_flags("ssn", "5362-2-1234");
}

#[test]
fn credit_card_with_luhn() {
    assert_flags("credit_card", "card 4111 1111 1111 1111 exp 12/29");
    assert_flags("credit_card", "5555-5555-5555-4444");
    assert_flags("credit_card", "378282246310005");
    assert_flags("credit_card", "amex 3782 822463 10005");
    assert_not_flags("credit_card", "4111 1111 1111 1112"); // Luhn fails
    assert_not_flags("credit_card", "4111111111111121"); // Luhn fails
    assert_not_flags("credit_card", "0000000000000000");
    assert_not_flags("credit_card", "9111111111111111111"); // unknown issuer
}

#[test]
fn aws_keys() {
    assert_flags("aws_access_key", "key AKIAZ4X7QWERTY2PLMNB");
    assert_not_flags("aws_access_key", "AKIAIOSFODNN7EXAMPLE"); // documented example
    assert_not_flags("aws_access_key", "AKIAZ4X7QWERTY2PLMN"); // too short
    let secret = "k8Jd7Hs2Lq9Wm3Np5Rt1Vx4Zb6Cf0Gh2Jk8Mn3Pq";
    assert_eq!(secret.len(), 40);
    let text = format!("aws_secret_access_key = \"{secret}\"");
    assert_flags("aws_secret_key", &text);
    let m = scanner().scan_text(&text);
    let start = text.find(secret).unwrap();
    assert_eq!(m[0].range, start..start + 40, "only the value is the span");
    assert_not_flags(
        "aws_secret_key",
        "aws_secret_access_key=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    );
    assert_not_flags("aws_secret_key", secret); // no context
}

#[test]
fn github_token() {
    let tok = "ghp_1a2B3c4D5e6F7g8H9i0JkLmNoPqRsTuVwXyZ";
    assert_eq!(tok.len(), 40);
    assert_flags("github_token", &format!("token {tok}"));
    assert_not_flags("github_token", "ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
    assert_not_flags("github_token", "ghp_short123");
}

#[test]
fn jwt_needs_json_header_with_alg() {
    let payload = b64url(r#"{"sub":"1234567890"}"#);
    let good = format!(
        "Bearer {}.{payload}.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U",
        b64url(r#"{"alg":"HS256","typ":"JWT"}"#)
    );
    assert_flags("jwt", &good);
    let not_json = format!("{}.{payload}.abcdef", b64url(r#"{"alg" HS256}"#));
    assert!(not_json.starts_with("eyJ"));
    assert_not_flags("jwt", &not_json);
    let no_alg = format!("{}.{payload}.abcdef", b64url(r#"{"typ":"JWT"}"#));
    assert_not_flags("jwt", &no_alg);
}

#[test]
fn slack_token() {
    assert_flags("slack_token", "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx");
    assert_not_flags("slack_token", "xoxb-not-a-real-token");
}

#[test]
fn private_key_header() {
    assert_flags("private_key_header", "-----BEGIN RSA PRIVATE KEY-----\nMIIE");
    assert_flags("private_key_header", "-----BEGIN OPENSSH PRIVATE KEY-----");
    assert_flags("private_key_header", "-----BEGIN PRIVATE KEY-----");
    assert_not_flags("private_key_header", "-----BEGIN PUBLIC KEY-----");
}

#[test]
fn generic_api_key_entropy_and_context() {
    assert_flags("generic_api_key", "api_key=Zx9Qw3Lm7Pv2Rt8K");
    assert_flags("generic_api_key", r#"{"client_secret": "f3A9kq0LzP7wXv2N8yR5"}"#);
    assert_not_flags("generic_api_key", "api_key=aaaaaaaaaaaaaaaa"); // low entropy
    assert_not_flags("generic_api_key", "api_key=your_api_key_here_123");
    assert_not_flags("generic_api_key", "Zx9Qw3Lm7Pv2Rt8K"); // no context
}

#[test]
fn ip_address_octets_and_versions() {
    assert_flags("ip_address", "connect to 192.168.10.20 now");
    assert_flags("ip_address", "8.8.8.8");
    assert_not_flags("ip_address", "1.2.3.4.5");
    assert_not_flags("ip_address", "version 1.2.3");
    assert_not_flags("ip_address", "version 1.2.3.4");
    assert_not_flags("ip_address", "v1.2.3.4");
    assert_not_flags("ip_address", "999.1.1.1");
    assert_not_flags("ip_address", "01.2.3.4");
}

#[test]
fn iban_checksum() {
    assert_flags("iban", "pay to DE89 3704 0044 0532 0130 00 please");
    assert_flags("iban", "GB82WEST12345698765432");
    assert_not_flags("iban", "DE89 3704 0044 0532 0130 01"); // checksum fails
    assert_not_flags("iban", "GB82WEST123456987654"); // wrong length for GB
}

#[test]
fn overlapping_matches_are_resolved() {
    let m = scanner().scan_text("a 4111111111111111 b 192.168.1.1");
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
        [("email", "/a~1b/c~0d/1"), ("ssn", "/a~1b/c~0d/1"), ("ip_address", "/deep/0/0/0/x"),]
    );
}

#[test]
fn credential_key_context_in_json() {
    let v = json!({"headers": {"x-api-key": "Zx9Qw3Lm7Pv2Rt8K"}, "token": "aaaaaaaaaaaaaaaaaaaa"});
    let f = scanner().scan_json(&v);
    assert_eq!(
        f,
        [Finding { pattern: "generic_api_key".into(), pointer: "/headers/x-api-key".into() }]
    );
}

#[test]
fn binary_blobs_are_skipped() {
    let key = "AKIAZ4X7QWERTY2PLMNB"; // valid base64 alphabet, and an AWS key as text
    let v = json!({
        "content": [
            {"type": "image", "data": key, "mimeType": "image/png"},
            {"type": "audio", "data": key},
            {"type": "resource", "resource": {"uri": "file:///x", "mimeType": "application/octet-stream", "blob": key}},
            {"type": "text", "data": key},
            {"type": "image", "data": "not base64: bob@acme.io"},
        ]
    });
    let f = scanner().scan_json(&v);
    let got: Vec<(&str, &str)> =
        f.iter().map(|f| (f.pattern.as_str(), f.pointer.as_str())).collect();
    assert_eq!(got, [("aws_access_key", "/content/3/data"), ("email", "/content/4/data")]);
    let (red, _) = scanner().redact_json(&v);
    assert_eq!(red["content"][0]["data"], key, "blob left untouched");
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
    // Nothing to redact: identical value.
    let clean = json!({"a": [1, "two", {"b": true}]});
    assert_eq!(scanner().redact_json(&clean), (clean.clone(), vec![]));
}

#[test]
fn findings_never_carry_the_value() {
    let v = json!({"t": "mail alice@acme.io ssn 536-22-1234"});
    let (_, findings) = scanner().redact_json(&v);
    let dbg = format!("{findings:?} {:?}", scanner().scan_text("alice@acme.io"));
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
}

#[test]
fn disabled_pattern() {
    let s =
        Scanner::new(&ScannerConfig { disabled: vec!["email".into()], custom: vec![] }).unwrap();
    assert!(s.scan_text("alice@acme.io").is_empty());
    assert!(!s.pattern_names().any(|n| n == "email"));
    assert_eq!(s.scan_text("ssn 536-22-1234").len(), 1);
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
fn large_payload_one_pass() {
    let filler = "lorem ipsum dolor sit amet, version 1.2.3 — naïve café ".repeat(4000);
    let text = format!("{filler} mail bob@acme.io {filler}");
    let start = std::time::Instant::now();
    let m = scanner().scan_text(&text);
    let elapsed = start.elapsed();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].pattern, "email");
    eprintln!("scanned {} bytes in {elapsed:?}", text.len());
}
