//! Canonical JSON (RFC 8785) and the hashes built on it.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// A value could not be canonicalised (for example a float that is NaN or infinite, which JCS
/// cannot express).
#[derive(Debug, thiserror::Error)]
#[error("cannot canonicalise value: {0}")]
pub struct CanonicalError(#[from] serde_json::Error);

/// RFC 8785 canonical JSON bytes of `value`.
///
/// `serde_json_canonicalizer` implements the ECMAScript number formatting and UTF-16 key ordering
/// that JCS requires; both are easy to get subtly wrong by hand.
pub fn canonical_bytes<T: Serialize>(value: &T) -> Result<Vec<u8>, CanonicalError> {
    Ok(serde_json_canonicalizer::to_vec(value)?)
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The content address of a payload body: `sha256:<hex of SHA-256 of its canonical JSON>`.
pub fn payload_ref(canonical_body: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(canonical_body))
}
