//! `private_key_header`: the armour line that opens a private key — PEM (`-----BEGIN RSA PRIVATE
//! KEY-----`, `EC`, `DSA`, `ENCRYPTED`, plain PKCS#8), OpenSSH, PGP (`PRIVATE KEY BLOCK`) and SSH2
//! (`---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----`). Public keys and certificates are not findings.
//!
//! The reported span runs from the header to the matching `END` line, or, when the block is cut
//! short, to the end of the base64 body after it: the body is the secret, so redaction must
//! cover it and not only the line that names it.

use std::ops::Range;

use super::{Candidate, Rule, family, priority};

pub(super) const RULES: &[Rule] = &[Rule {
    pattern: "private_key_header",
    regex: r"-{4,5} ?BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)? ?-{4,5}",
    validate: block,
    priority: priority::STRUCTURED,
    families: family::PEM,
    min_digits: 0,
}];

fn block(c: &Candidate<'_>) -> Option<Range<usize>> {
    let rest = &c.text[c.span.end..];
    let body = body_len(rest);
    let after = &rest[body..];
    let footer_at = body + (after.len() - skip_breaks(after).len());
    let footer = &rest[footer_at..];
    let mut end = body;
    if (footer.starts_with("-----END ") || footer.starts_with("---- END "))
        && let Some(i) = footer.find("PRIVATE KEY")
    {
        let tail = &footer[i + "PRIVATE KEY".len()..];
        let tail = tail.strip_prefix(" BLOCK").unwrap_or(tail);
        let tail = tail.strip_prefix(' ').unwrap_or(tail);
        let dashes = tail.len() - tail.trim_start_matches('-').len();
        if dashes >= 4 {
            end = footer_at + (footer.len() - tail.len()) + dashes;
        }
    }
    Some(c.span.start..c.span.end + end)
}

/// `s` without its leading line breaks, real (`\n`, `\r`) or escaped as in a logged JSON string.
fn skip_breaks(mut s: &str) -> &str {
    loop {
        let t = s.trim_start_matches(['\n', '\r', ' ', '\t']);
        let t = t.strip_prefix("\\n").or_else(|| t.strip_prefix("\\r")).unwrap_or(t);
        if t.len() == s.len() {
            return s;
        }
        s = t;
    }
}

/// Armour headers that may sit between a header line and the base64 body.
const ARMOUR_HEADERS: &[&str] = &["Proc-Type", "DEK-Info", "Comment", "Version", "Hash", "Charset"];

/// Bytes of `rest` that belong to a key body: lines of base64 (separated by real or escaped
/// breaks, or by spaces where a key was pasted on one line) and armour headers. A line of plain
/// letters (`thanks`) is prose, not body.
fn body_len(rest: &str) -> usize {
    let mut end = 0;
    loop {
        let line_start = rest.len() - skip_breaks(&rest[end..]).len();
        let line = &rest[line_start..];
        let line_len = line
            .find(['\n', '\r', ' '])
            .into_iter()
            .chain(line.find("\\n"))
            .chain(line.find("\\r"))
            .min()
            .unwrap_or(line.len());
        let line = line[..line_len].trim_end();
        let k = super::context::classes(line);
        let base64 = !line.is_empty()
            && line.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
            && (line.len() >= 40 || k.digit > 0 || k.other > 0 || (k.upper > 1 && k.lower > 0));
        let header = line.strip_suffix(':').is_some_and(|h| ARMOUR_HEADERS.contains(&h));
        let line = if header {
            // The header's value runs to the end of its line.
            let full = &rest[line_start..];
            full[..full.find(['\n', '\r']).unwrap_or(full.len())].trim_end()
        } else {
            line
        };
        if !(base64 || header) {
            return end;
        }
        end = line_start + line.len();
    }
}

#[cfg(test)]
mod tests {
    use crate::pii::tests::{assert_flags, assert_not_flags, spans};

    #[test]
    fn headers() {
        for kind in ["RSA ", "EC ", "DSA ", "OPENSSH ", "ENCRYPTED ", ""] {
            assert_flags("private_key_header", &format!("-----BEGIN {kind}PRIVATE KEY-----\nMIIE"));
        }
        assert_flags("private_key_header", "-----BEGIN PGP PRIVATE KEY BLOCK-----");
        assert_flags("private_key_header", "---- BEGIN SSH2 ENCRYPTED PRIVATE KEY ----");
        assert_not_flags("private_key_header", "-----BEGIN PUBLIC KEY-----");
        assert_not_flags("private_key_header", "-----BEGIN CERTIFICATE-----");
        assert_not_flags("private_key_header", "-----BEGIN PGP PUBLIC KEY BLOCK-----");
        assert_not_flags("private_key_header", "BEGIN RSA PRIVATE KEY");
    }

    #[test]
    fn span_covers_the_body() {
        let key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEow\nAbC+/=\n-----END RSA PRIVATE KEY-----";
        assert_eq!(spans(&format!("key:\n{key}\nthanks")), [("private_key_header", key)]);
        let cut = "-----BEGIN EC PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nMHcCAQEE\nq83=";
        let one_line =
            "-----BEGIN RSA PRIVATE KEY----- MIIEow AbC+/= -----END RSA PRIVATE KEY-----";
        assert_eq!(spans(&format!("{one_line} ok")), [("private_key_header", one_line)]);
        assert_eq!(spans(&format!("{cut}\n\nmore text")), [("private_key_header", cut)]);
        let escaped = r"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n-----END OPENSSH PRIVATE KEY-----";
        assert_eq!(spans(&format!("log: {escaped}\\n done")), [("private_key_header", escaped)]);
        let prose = "-----BEGIN PRIVATE KEY-----\nthanks";
        assert_eq!(spans(prose), [("private_key_header", "-----BEGIN PRIVATE KEY-----")]);
    }
}
