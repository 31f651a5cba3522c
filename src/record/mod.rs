//! The event model and everything that can be computed from it without I/O: canonical bytes
//! (RFC 8785 JCS), SHA-256 hashes, payload references and chain verification.
//!
//! **Invariant:** nothing in here touches tokio, sqlx or the file system, so the verifier an auditor
//! trusts is the same code the tests and fuzzers exercise.

mod body;
mod canonical;
pub mod checkpoint;
mod event;
pub mod merkle;
pub mod verify;

pub use body::{RecordedBody, Storage, pii_patterns, stored_body_ref};
pub use canonical::{
    CanonicalError, canonical_bytes, canonical_value_bytes, payload_ref, sha256_hex,
};
pub use event::{Draft, Event, EventType, GENESIS_PREV_HASH, Payload, Seal, format_timestamp};
