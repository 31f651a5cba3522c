//! One ledger event, before (`Draft`) and after (`Event`) it takes its place in a chain.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use super::canonical::{canonical_value_bytes, payload_ref, sha256_hex, write_str, write_value};

/// `prev_hash` of the first event of every chain.
pub const GENESIS_PREV_HASH: &str =
    "0000000000000000000000000000000000000000000000000000000000000000";

/// The kinds of event this version writes. Stored and hashed as the snake_case string; the verifier
/// accepts any string so that ledgers written by newer versions still verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    SessionStart,
    SessionEnd,
    ToolCall,
    ToolResult,
    Request,
    Response,
    AuthFailed,
    ApprovalRequested,
    ApprovalDecision,
    ApprovalNotice,
    /// A correction of an earlier event, which stays unchanged (`data.corrects` is its id).
    Correction,
    /// Records that the events up to `data.up_to_seq` are about to be removed by retention.
    RetentionCut,
    /// PII or secrets found in a body that crossed the boundary: pattern names and JSON
    /// pointers, never the values.
    PiiDetected,
    /// A payload body is about to be deleted (an erasure request, or payload retention); the
    /// events that reference it stay and still verify.
    Erasure,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::SessionStart => "session_start",
            EventType::SessionEnd => "session_end",
            EventType::ToolCall => "tool_call",
            EventType::ToolResult => "tool_result",
            EventType::Request => "request",
            EventType::Response => "response",
            EventType::AuthFailed => "auth_failed",
            EventType::ApprovalRequested => "approval_requested",
            EventType::ApprovalDecision => "approval_decision",
            EventType::ApprovalNotice => "approval_notice",
            EventType::Correction => "correction",
            EventType::RetentionCut => "retention_cut",
            EventType::PiiDetected => "pii_detected",
            EventType::Erasure => "erasure",
        }
    }
}

impl std::fmt::Display for EventType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An event as stored: every column of the `events` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub chain_id: String,
    pub seq: i64,
    pub event_id: String,
    pub event_type: String,
    pub timestamp: String,
    pub session_id: Option<String>,
    pub agent: Option<String>,
    pub server: Option<String>,
    pub data: Value,
    pub prev_hash: String,
    pub hash: String,
}

/// The hashed preimage — every field of [`Event`] except `hash`, as RFC 8785 canonical JSON — with
/// the four fields a chain assigns left open.
///
/// JCS sorts object keys, so the preimage is always `{"agent":…,"chain_id":…,"data":…,
/// "event_id":…,"event_type":…,"prev_hash":…,"seq":…,"server":…,"session_id":…,"timestamp":…}`:
/// `chain_id`, `prev_hash`, `seq` and `timestamp` fall between three fixed runs of text. Those
/// runs are computed once per draft, before the draft reaches the writer, so that sealing under
/// the chain-head lock is only splicing and SHA-256. Verification builds the same parts from the
/// stored event, so sealing and verifying share one definition of the preimage.
#[derive(Debug, Clone)]
struct PreimageParts {
    /// `{"agent":…,"chain_id":`
    head: Vec<u8>,
    /// `,"data":…,"event_id":…,"event_type":…,"prev_hash":"`
    middle: Vec<u8>,
    /// Where the canonical text of `data` ends in `middle` (it starts after [`DATA_KEY`]).
    data_end: usize,
    /// `,"server":…,"session_id":…,"timestamp":"`
    tail: Vec<u8>,
}

/// What precedes `data` in [`PreimageParts::middle`].
const DATA_KEY: &[u8] = b",\"data\":";

impl PreimageParts {
    fn of(
        agent: Option<&str>,
        data: &Value,
        event_id: &str,
        event_type: &str,
        server: Option<&str>,
        session_id: Option<&str>,
    ) -> Self {
        let mut head = Vec::with_capacity(32);
        head.extend_from_slice(b"{\"agent\":");
        write_optional(&mut head, agent);
        head.extend_from_slice(b",\"chain_id\":");

        let mut middle = Vec::with_capacity(256);
        middle.extend_from_slice(DATA_KEY);
        write_value(&mut middle, data);
        let data_end = middle.len();
        middle.extend_from_slice(b",\"event_id\":");
        write_str(&mut middle, event_id);
        middle.extend_from_slice(b",\"event_type\":");
        write_str(&mut middle, event_type);
        middle.extend_from_slice(b",\"prev_hash\":");

        let mut tail = Vec::with_capacity(96);
        tail.extend_from_slice(b",\"server\":");
        write_optional(&mut tail, server);
        tail.extend_from_slice(b",\"session_id\":");
        write_optional(&mut tail, session_id);
        tail.extend_from_slice(b",\"timestamp\":");
        PreimageParts { head, middle, data_end, tail }
    }

    /// The canonical JSON text of `data`.
    fn data_json(&self) -> &str {
        std::str::from_utf8(&self.middle[DATA_KEY.len()..self.data_end])
            .expect("canonical JSON is UTF-8")
    }

    /// The whole preimage at a place in a chain.
    fn splice(&self, chain_id: &str, prev_hash: &str, seq: i64, timestamp: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            self.head.len() + self.middle.len() + self.tail.len() + chain_id.len() + 128,
        );
        out.extend_from_slice(&self.head);
        write_str(&mut out, chain_id);
        out.extend_from_slice(&self.middle);
        write_str(&mut out, prev_hash);
        out.extend_from_slice(b",\"seq\":");
        write_value(&mut out, &Value::from(seq));
        out.extend_from_slice(&self.tail);
        write_str(&mut out, timestamp);
        out.push(b'}');
        out
    }
}

fn write_optional(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(text) => write_str(out, text),
        None => out.extend_from_slice(b"null"),
    }
}

/// The preimage as a plain struct for `serde_json_canonicalizer`: debug builds, and so every
/// test, check each seal's spliced text against it.
#[cfg(debug_assertions)]
#[derive(serde::Serialize)]
struct ReferencePreimage<'a> {
    chain_id: &'a str,
    seq: i64,
    event_id: &'a str,
    event_type: &'a str,
    timestamp: &'a str,
    session_id: Option<&'a str>,
    agent: Option<&'a str>,
    server: Option<&'a str>,
    data: &'a Value,
    prev_hash: &'a str,
}

#[cfg(debug_assertions)]
impl Event {
    fn reference_preimage(&self) -> ReferencePreimage<'_> {
        ReferencePreimage {
            chain_id: &self.chain_id,
            seq: self.seq,
            event_id: &self.event_id,
            event_type: &self.event_type,
            timestamp: &self.timestamp,
            session_id: self.session_id.as_deref(),
            agent: self.agent.as_deref(),
            server: self.server.as_deref(),
            data: &self.data,
            prev_hash: &self.prev_hash,
        }
    }
}

impl Event {
    /// The bytes whose SHA-256 is `hash`, exactly as `docs/ledger-format.md` specifies them.
    pub fn canonical_preimage(&self) -> Vec<u8> {
        PreimageParts::of(
            self.agent.as_deref(),
            &self.data,
            &self.event_id,
            &self.event_type,
            self.server.as_deref(),
            self.session_id.as_deref(),
        )
        .splice(&self.chain_id, &self.prev_hash, self.seq, &self.timestamp)
    }

    /// Recomputes the hash from the other fields.
    pub fn compute_hash(&self) -> String {
        sha256_hex(&self.canonical_preimage())
    }
}

/// An event waiting for its place in a chain: the writer assigns `seq`, `timestamp`, `prev_hash`
/// and `hash` under the chain-head lock, so that all four follow the chain's total order.
#[derive(Debug, Clone)]
pub struct Draft {
    pub event_id: String,
    pub event_type: EventType,
    pub session_id: Option<String>,
    pub agent: Option<String>,
    pub server: Option<String>,
    pub data: Value,
    /// Bodies that `data` references and that must be committed in the same transaction.
    pub payloads: Vec<Payload>,
    /// The canonical text of the fields above, once [`Draft::prepared`] computed it.
    parts: Option<PreimageParts>,
}

impl Draft {
    pub fn new(event_type: EventType, data: Value) -> Self {
        Draft {
            event_id: uuid::Uuid::now_v7().to_string(),
            event_type,
            session_id: None,
            agent: None,
            server: None,
            data,
            payloads: Vec::new(),
            parts: None,
        }
    }

    /// The draft with its canonical text computed, so that [`Draft::seal`] only splices and
    /// hashes. Consumes the draft: its fields cannot change after their text is fixed. The
    /// writer calls this in the appending task, outside the chain-head lock.
    pub fn prepared(mut self) -> Draft {
        self.parts = Some(self.parts_now());
        self
    }

    fn parts_now(&self) -> PreimageParts {
        PreimageParts::of(
            self.agent.as_deref(),
            &self.data,
            &self.event_id,
            self.event_type.as_str(),
            self.server.as_deref(),
            self.session_id.as_deref(),
        )
    }

    /// `data` as canonical JSON (RFC 8785): the text the event's hash covers, and what the stores
    /// write, so that a prepared draft's `data` is serialised once.
    pub fn data_json(&self) -> Cow<'_, str> {
        match &self.parts {
            Some(parts) => Cow::Borrowed(parts.data_json()),
            None => Cow::Owned(
                String::from_utf8(canonical_value_bytes(&self.data))
                    .expect("canonical JSON is UTF-8"),
            ),
        }
    }

    /// Seals the draft as the event after `prev_hash` at `seq`, stamped with `now`. Copies the
    /// draft's fields; the writer moves each of its drafts into its event ([`Draft::into_event`]).
    pub fn seal(&self, chain_id: &str, seq: i64, prev_hash: &str, now: OffsetDateTime) -> Event {
        let seal = self.seal_stamped(chain_id, seq, prev_hash, format_timestamp(now));
        self.to_event(chain_id, seal)
    }

    /// What sealing the draft at `seq` after `prev_hash`, stamped `timestamp`, gives it, with the
    /// timestamp already formatted ([`format_timestamp`]): a batch's events share one, so the
    /// writer formats it once per batch rather than once per event.
    pub fn seal_stamped(
        &self,
        chain_id: &str,
        seq: i64,
        prev_hash: &str,
        timestamp: String,
    ) -> Seal {
        let computed;
        let parts = match &self.parts {
            Some(parts) => parts,
            None => {
                computed = self.parts_now();
                &computed
            }
        };
        let hash = sha256_hex(&parts.splice(chain_id, prev_hash, seq, &timestamp));
        Seal { seq, prev_hash: prev_hash.to_owned(), hash, timestamp }
    }

    /// [`Draft::into_event`] for a draft its caller keeps: copies the event's fields, not the
    /// payload bodies or the canonical text the draft also holds.
    pub fn to_event(&self, chain_id: &str, seal: Seal) -> Event {
        let fields = Draft {
            event_id: self.event_id.clone(),
            event_type: self.event_type,
            session_id: self.session_id.clone(),
            agent: self.agent.clone(),
            server: self.server.clone(),
            data: self.data.clone(),
            payloads: Vec::new(),
            parts: None,
        };
        fields.into_event(chain_id, seal)
    }

    /// The event this draft became when sealed into `chain_id` as `seal`. Moves the draft's
    /// fields, `data` above all, instead of copying them.
    pub fn into_event(self, chain_id: &str, seal: Seal) -> Event {
        let event = Event {
            chain_id: chain_id.to_owned(),
            seq: seal.seq,
            event_id: self.event_id,
            event_type: self.event_type.as_str().to_owned(),
            timestamp: seal.timestamp,
            session_id: self.session_id,
            agent: self.agent,
            server: self.server,
            data: self.data,
            prev_hash: seal.prev_hash,
            hash: seal.hash,
        };
        #[cfg(debug_assertions)]
        assert_eq!(
            event.hash,
            sha256_hex(
                &super::canonical::canonical_bytes(&event.reference_preimage()).expect("canonical")
            ),
            "the spliced preimage differs from the canonical one"
        );
        event
    }
}

/// What a chain assigns a draft when it seals it: its place, its time and its hash. The rest of
/// the event is the draft's own ([`Draft::into_event`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    pub seq: i64,
    pub prev_hash: String,
    pub hash: String,
    pub timestamp: String,
}

/// RFC 3339 in UTC with exactly six fractional digits and a `Z`, so the text sorts in time order
/// and every language's parser reads it.
pub fn format_timestamp(at: OffsetDateTime) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    // By hand rather than with `Rfc3339`, which is general (offsets, any precision) and shows
    // in the writer's profile; a UTC clock reading is always a four-digit year. Truncated to
    // microseconds: Postgres and most languages keep no more.
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second(),
        at.microsecond()
    )
}

/// A content-addressed body: canonical JSON bytes and their `sha256:` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    pub reference: String,
    pub body: String,
}

impl Payload {
    pub fn of(value: &Value) -> Self {
        let bytes = canonical_value_bytes(value);
        let reference = payload_ref(&bytes);
        // Canonical JSON is valid UTF-8 by construction.
        let body = String::from_utf8(bytes).expect("canonical JSON is UTF-8");
        Payload { reference, body }
    }

    pub fn size(&self) -> usize {
        self.body.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::canonical::canonical_bytes;
    use super::*;
    use serde_json::json;

    #[test]
    fn timestamps_have_six_fraction_digits_in_utc() {
        let at = time::macros::datetime!(2026-11-22 06:30:00.1234567 +02:00);
        assert_eq!(format_timestamp(at), "2026-11-22T04:30:00.123456Z");
        let whole = time::macros::datetime!(2026-01-02 03:04:05 UTC);
        assert_eq!(format_timestamp(whole), "2026-01-02T03:04:05.000000Z");
        // Whatever the moment, the text reads back as that moment, truncated to microseconds.
        let rfc3339 = time::format_description::well_known::Rfc3339;
        for seconds in [0, 951_782_400, 1_764_892_799, 4_102_444_799] {
            let at = OffsetDateTime::from_unix_timestamp_nanos(seconds * 1_000_000_000 + 999_999)
                .expect("in range");
            let read = OffsetDateTime::parse(&format_timestamp(at), &rfc3339).expect("RFC 3339");
            assert_eq!(read, at.replace_nanosecond(999_000).expect("valid"));
        }
    }

    #[test]
    fn sealing_hashes_every_field_but_hash() {
        let mut draft = Draft::new(EventType::ToolCall, json!({"tool": "echo"}));
        draft.agent = Some("me".into());
        let at = time::macros::datetime!(2026-11-22 06:30:00 UTC);
        let event = draft.seal("default", 1, GENESIS_PREV_HASH, at);
        assert_eq!(event.compute_hash(), event.hash);

        let mut other = event.clone();
        other.agent = Some("someone-else".into());
        assert_ne!(other.compute_hash(), event.hash);
        let mut other = event.clone();
        other.seq = 2;
        assert_ne!(other.compute_hash(), event.hash);
    }

    #[test]
    fn the_spliced_preimage_is_the_canonical_one() {
        let mut draft = Draft::new(
            EventType::ToolResult,
            json!({"z": [1.5, null, {"\u{10000}": "\"q\"", "\u{e000}": -3}], "a": "\u{1}"}),
        );
        draft.agent = Some("agent \"\\ é".into());
        draft.session_id = Some("s\n1".into());
        let at = time::macros::datetime!(2026-11-22 06:30:00.5 UTC);
        let unprepared = draft.seal("chain \"x\"", 7, "ab", at);
        let prepared = draft.prepared().seal("chain \"x\"", 7, "ab", at);
        assert_eq!(unprepared, prepared);
        // Every field but `hash`, through the reference canonicaliser. Built here rather than
        // with `reference_preimage`, which exists in debug builds only, so that this test also
        // runs in release builds (`cargo test --release`).
        let mut fields = serde_json::to_value(&unprepared).unwrap();
        fields.as_object_mut().unwrap().remove("hash");
        let reference = canonical_bytes(&fields).unwrap();
        assert_eq!(
            String::from_utf8(unprepared.canonical_preimage()).unwrap(),
            String::from_utf8(reference).unwrap()
        );
    }

    #[test]
    fn data_json_is_the_canonical_text_of_data_prepared_or_not() {
        let data = json!({"z": [1.0, 1e21, "\u{7f}é"], "a": {"y": null, "b": "\"\n"}});
        let canonical = String::from_utf8(canonical_value_bytes(&data)).unwrap();
        let mut draft = Draft::new(EventType::ToolCall, data);
        draft.agent = Some("a".into());
        assert_eq!(draft.data_json(), canonical);
        assert_eq!(draft.prepared().data_json(), canonical);
    }

    #[test]
    fn payload_reference_is_over_canonical_bytes() {
        let a = Payload::of(&json!({"b": 1, "a": [1.0, "x"]}));
        let b = Payload::of(&json!({"a": [1, "x"], "b": 1}));
        assert_eq!(a, b);
        assert_eq!(a.body, r#"{"a":[1,"x"],"b":1}"#);
        assert!(a.reference.starts_with("sha256:"));
        assert_eq!(a.reference.len(), "sha256:".len() + 64);
    }
}
