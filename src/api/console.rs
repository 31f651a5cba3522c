//! `GET /console`: the operator's web page. One static file with inline script and style, served
//! with a Content-Security-Policy that allows exactly those (by hash) and connections to this
//! origin only, and that forbids framing (no clickjacking of the approve button).

use std::sync::{Arc, LazyLock};

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::{ApiState, check_origin};

const PAGE: &str = include_str!("console.html");

static CSP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src 'self' data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        inline_hashes(PAGE, "script"),
        inline_hashes(PAGE, "style")
    )
});

pub(super) async fn page(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    if let Err(which) = check_origin(&state.origins, &headers) {
        return (StatusCode::FORBIDDEN, format!("the {which} header is not allowed\n"))
            .into_response();
    }
    let mut response = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response();
    let headers = response.headers_mut();
    let csp = HeaderValue::from_str(&CSP).expect("the policy is ascii");
    headers.insert(header::CONTENT_SECURITY_POLICY, csp);
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `'sha256-…'` of the body of every `<tag>…</tag>` in `page`, space-separated (`'none'` if
/// there is none).
fn inline_hashes(page: &str, tag: &str) -> String {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut hashes = Vec::new();
    let mut rest = page;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let Some(end) = body.find(&close) else { break };
        hashes.push(format!("'sha256-{}'", base64(&Sha256::digest(&body.as_bytes()[..end]))));
        rest = &body[end + close.len()..];
    }
    if hashes.is_empty() { "'none'".to_owned() } else { hashes.join(" ") }
}

/// Standard base64 with padding (RFC 4648 §4), as CSP hash sources are written.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }

    #[test]
    fn the_policy_allows_exactly_the_inline_script_and_style() {
        let page = "<style>a{}</style><script>x()</script><script>y()</script>";
        let script = inline_hashes(page, "script");
        assert_eq!(script.matches("'sha256-").count(), 2);
        assert!(script.contains(&base64(&Sha256::digest(b"x()"))));
        assert_eq!(inline_hashes("<p>", "script"), "'none'");
        assert!(
            CSP.contains("script-src 'sha256-") && CSP.contains("style-src 'sha256-"),
            "{}",
            *CSP
        );
        assert!(CSP.contains("frame-ancestors 'none'"));
    }
}
