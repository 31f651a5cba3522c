//! Canonical JSON (RFC 8785) and the hashes built on it.

use std::cmp::Ordering;

use serde::Serialize;
use serde_json::{Number, Value};
use sha2::{Digest, Sha256};

/// A value could not be canonicalised (for example a float that is NaN or infinite, which JCS
/// cannot express).
#[derive(Debug, thiserror::Error)]
#[error("cannot canonicalise value: {0}")]
pub struct CanonicalError(#[from] serde_json::Error);

/// RFC 8785 canonical JSON bytes of any serialisable `value`.
///
/// `serde_json_canonicalizer` implements the ECMAScript number formatting and UTF-16 key ordering
/// that JCS requires; both are easy to get subtly wrong by hand. Hot paths that already hold a
/// [`Value`] use [`canonical_value_bytes`].
pub fn canonical_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>, CanonicalError> {
    Ok(serde_json_canonicalizer::to_vec(value)?)
}

/// RFC 8785 canonical JSON bytes of `value`; the same bytes as [`canonical_bytes`].
pub fn canonical_value_bytes(value: &Value) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    write_value(&mut out, value);
    out
}

/// Appends the canonical form of `value` to `out`.
///
/// Written here rather than delegated to `serde_json_canonicalizer` because this runs for every
/// payload body and every event hash, and the crate's serializer parses each object key back into
/// a `Value` to sort it and buffers every member in its own `Vec`: allocation was the largest
/// single cost of the proxy under load (docs/performance.md). What is subtle stays with the
/// crate: a number that is not a safe integer is formatted by it (ECMAScript's shortest
/// round-trip rules). Keys are ordered by UTF-16 code units as RFC 8785 §3.2.3 requires, and
/// strings are escaped by `serde_json`, whose escapes (`\"`, `\\`, `\b \f \n \r \t`, other
/// controls as lower-case `\u00xx`, nothing else) are exactly JCS's. The tests compare both
/// implementations on generated values.
pub fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(number) => write_number(out, number),
        Value::String(text) => write_str(out, text),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(members) => {
            let mut sorted: Vec<(&String, &Value)> = members.iter().collect();
            sorted.sort_unstable_by(|a, b| utf16_order(a.0, b.0));
            out.push(b'{');
            for (i, (key, item)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, key);
                out.push(b':');
                write_value(out, item);
            }
            out.push(b'}');
        }
    }
}

/// Appends `text` as a JSON string literal.
///
/// Most strings an event holds (keys, ids, references, timestamps) need no escape, and for them
/// the bytes are copied as they are after a check the compiler vectorises; `serde_json` looks
/// each byte up in its escape table (4 % of `serve`'s instructions before this, callgrind,
/// docs/performance.md). A string that needs an escape goes to `serde_json`, whose escapes are
/// JCS's (see [`write_value`]).
pub fn write_str(out: &mut Vec<u8>, text: &str) {
    if needs_escape(text.as_bytes()) {
        serde_json::to_writer(&mut *out, text).expect("writing a string into a Vec cannot fail");
    } else {
        out.reserve(text.len() + 2);
        out.push(b'"');
        out.extend_from_slice(text.as_bytes());
        out.push(b'"');
    }
}

/// Whether `bytes` hold a quote, a backslash or a control character, the bytes JSON escapes.
/// A fold with no early exit, so that the loop has no branch per byte and becomes vector
/// compares; the strings checked are short, and a scan to the end costs less than a branch.
fn needs_escape(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .fold(false, |found, &byte| found | (byte < 0x20) | (byte == b'"') | (byte == b'\\'))
}

/// The largest integer every IEEE 754 double (and so every JCS reader) holds exactly.
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

fn write_number(out: &mut Vec<u8>, number: &Number) {
    let safe =
        number.as_u64().filter(|n| *n <= MAX_SAFE_INTEGER).map(|n| (false, n)).or_else(|| {
            number
                .as_i64()
                .filter(|n| n.unsigned_abs() <= MAX_SAFE_INTEGER)
                .map(|n| (n < 0, n.unsigned_abs()))
        });
    match safe {
        Some((negative, magnitude)) => {
            if negative {
                out.push(b'-');
            }
            out.extend_from_slice(itoa::Buffer::new().format(magnitude).as_bytes());
        }
        None => {
            let text = serde_json_canonicalizer::to_vec(number)
                .expect("a serde_json Number is always finite");
            out.extend_from_slice(&text);
        }
    }
}

/// Orders object keys by their UTF-16 code units. For keys without characters outside the Basic
/// Multilingual Plane this is byte order, which is the common case and much cheaper.
fn utf16_order(a: &str, b: &str) -> Ordering {
    let astral = |s: &str| s.bytes().any(|byte| byte >= 0xF0);
    if astral(a) || astral(b) { a.encode_utf16().cmp(b.encode_utf16()) } else { a.cmp(b) }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let digits = sha256_digits(bytes);
    std::str::from_utf8(&digits).expect("hex digits are ASCII").to_owned()
}

/// The content address of a payload body: `sha256:<hex of SHA-256 of its canonical JSON>`.
pub fn payload_ref(canonical_body: &[u8]) -> String {
    let digits = sha256_digits(canonical_body);
    let mut reference = String::with_capacity(PAYLOAD_REF_PREFIX.len() + digits.len());
    reference.push_str(PAYLOAD_REF_PREFIX);
    reference.push_str(std::str::from_utf8(&digits).expect("hex digits are ASCII"));
    reference
}

const PAYLOAD_REF_PREFIX: &str = "sha256:";

/// The SHA-256 of `bytes` as 64 lowercase hex digits. Through `hex::encode_to_slice`, not
/// `hex::encode`, which collects its `String` a `char` at a time: a few thousand instructions
/// per hash, and every recorded call hashes five or six times (callgrind, docs/performance.md).
fn sha256_digits(bytes: &[u8]) -> [u8; 64] {
    let mut digits = [0u8; 64];
    hex::encode_to_slice(Sha256::digest(bytes), &mut digits).expect("32 bytes are 64 digits");
    digits
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A small deterministic generator (xorshift) so that the comparison below covers thousands
    /// of shapes without a property-testing dependency.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn text(&mut self) -> String {
            const PIECES: [&str; 16] = [
                "a",
                "B",
                "z",
                "é",
                "\u{e000}",
                "\u{ffff}",
                "😀",
                "\u{10000}",
                "\"",
                "\\",
                "\n",
                "\u{1}",
                "\u{1f}",
                "\u{7f}",
                "\u{2028}",
                "/",
            ];
            (0..self.below(6)).map(|_| PIECES[self.below(16) as usize]).collect()
        }

        fn number(&mut self) -> Value {
            match self.below(8) {
                0 => json!(self.next() as i64),
                1 => json!(self.below(1 << 54)),
                2 => json!(-(self.below(1 << 54) as i64)),
                3 => json!(u64::MAX - self.below(10)),
                4 => json!(f64::from_bits(self.next() >> 2)),
                5 => json!(self.below(1000) as f64 / 8.0),
                6 => json!(1e21 * (self.below(100) as f64 + 0.5)),
                _ => json!(self.below(100)),
            }
        }

        fn value(&mut self, depth: u32) -> Value {
            let kind = if depth == 0 { self.below(4) } else { self.below(6) };
            match kind {
                0 => Value::Null,
                1 => json!(self.below(2) == 0),
                2 => self.number(),
                3 => Value::String(self.text()),
                4 => (0..self.below(5)).map(|_| self.value(depth - 1)).collect(),
                _ => Value::Object(
                    (0..self.below(6)).map(|_| (self.text(), self.value(depth - 1))).collect(),
                ),
            }
        }
    }

    #[test]
    fn agrees_with_the_reference_implementation_on_generated_values() {
        let mut generator = Gen(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let value = generator.value(4);
            let expected = serde_json_canonicalizer::to_vec(&value).unwrap();
            assert_eq!(
                String::from_utf8(canonical_value_bytes(&value)).unwrap(),
                String::from_utf8(expected).unwrap(),
                "{value:?}"
            );
        }
    }

    #[test]
    fn strings_escape_as_serde_json_does_wherever_the_escape_falls() {
        // Long and short strings, with each byte JSON escapes at every position, so that the
        // check's vectorised body and its scalar tail (lengths around 8, 16 and 32) both see one.
        for len in [0, 1, 15, 16, 17, 31, 32, 33, 70] {
            let plain = "é-x".repeat(len).chars().take(len).collect::<String>();
            let mut cases = vec![plain.clone()];
            for at in 0..=plain.chars().count() {
                for special in ['"', '\\', '\n', '\u{0}', '\u{1f}', '\u{7f}', '\u{2028}'] {
                    let mut text: Vec<char> = plain.chars().collect();
                    text.insert(at, special);
                    cases.push(text.into_iter().collect());
                }
            }
            for text in cases {
                let mut out = Vec::new();
                write_str(&mut out, &text);
                assert_eq!(out, serde_json::to_vec(&text).unwrap(), "{text:?}");
            }
        }
    }

    #[test]
    fn keys_sort_by_utf16_code_units_not_bytes() {
        // U+E000 is one UTF-16 unit (0xE000); U+10000 is a surrogate pair starting 0xD800, so it
        // sorts first in JCS even though its UTF-8 bytes are larger.
        let value = json!({"\u{e000}": 1, "\u{10000}": 2, "b": 3, "a": 4});
        assert_eq!(
            String::from_utf8(canonical_value_bytes(&value)).unwrap(),
            "{\"a\":4,\"b\":3,\"\u{10000}\":2,\"\u{e000}\":1}"
        );
    }

    #[test]
    fn numbers_follow_ecmascript() {
        let value = json!([1.0, -0.0, 1e21, 1.5e-7, 9007199254740993_u64, -12]);
        assert_eq!(
            String::from_utf8(canonical_value_bytes(&value)).unwrap(),
            "[1,0,1e+21,1.5e-7,9007199254740992,-12]"
        );
    }

    #[test]
    fn hashes_are_lowercase_hex_of_sha256() {
        // FIPS 180-2's example "abc", and the empty input.
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_hex(b"abc"), abc);
        assert_eq!(payload_ref(b"abc"), format!("sha256:{abc}"));
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
