//! What an event says about the bodies it references: how each was stored (`full`, `redacted`
//! or `none`), where the stored copy is, and which PII patterns were found in it. The keys are
//! `<side>_ref`, `<side>_stored`, `<side>_stored_ref` and `<side>_pii`, with side `input` or
//! `output` (see `docs/ledger-format.md`).

use serde_json::{Map, Value, json};

use super::Payload;

/// How a body is kept in `payloads`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Storage {
    /// As it crossed the boundary: the stored body hashes to `<side>_ref`.
    Full,
    /// With every PII finding replaced by `[REDACTED:<pattern>]`, under its own reference
    /// (`<side>_stored_ref`), so the chain vouches for the redacted copy too.
    Redacted,
    /// Not kept: only the reference and the size are recorded.
    None,
}

impl Storage {
    pub fn as_str(self) -> &'static str {
        match self {
            Storage::Full => "full",
            Storage::Redacted => "redacted",
            Storage::None => "none",
        }
    }

    pub fn parse(text: &str) -> Option<Storage> {
        match text {
            "full" => Some(Storage::Full),
            "redacted" => Some(Storage::Redacted),
            "none" => Some(Storage::None),
            _ => None,
        }
    }
}

/// One body as recorded: the reference of what crossed the boundary, and what was kept of it.
#[derive(Debug, Clone)]
pub struct RecordedBody {
    /// `sha256:` of the body as it crossed (canonical JSON).
    pub reference: String,
    pub size: usize,
    /// How it was kept. `Redacted` is only used when redaction changed something: a body with
    /// no findings is kept in full.
    pub storage: Storage,
    /// The row for `payloads`, if anything is kept.
    pub stored: Option<Payload>,
    /// The PII patterns found, each once, sorted.
    pub patterns: Vec<String>,
}

impl RecordedBody {
    /// Adds the `<side>_…` keys to an event's data.
    pub fn describe(&self, side: &str, fields: &mut Map<String, Value>) {
        fields.insert(format!("{side}_ref"), json!(self.reference));
        fields.insert(format!("{side}_size"), json!(self.size));
        fields.insert(format!("{side}_stored"), json!(self.storage.as_str()));
        if self.storage == Storage::Redacted
            && let Some(stored) = &self.stored
        {
            fields.insert(format!("{side}_stored_ref"), json!(stored.reference));
        }
        if !self.patterns.is_empty() {
            fields.insert(format!("{side}_pii"), json!(self.patterns));
        }
    }
}

/// The reference under which the body of `side` is kept, if it is kept: `<side>_stored_ref`
/// for a redacted body, else `<side>_ref` (events written before storage modes existed kept
/// every body in full); `None` when it was not kept.
pub fn stored_body_ref<'a>(data: &'a Value, side: &str) -> Option<&'a str> {
    let text = |key: String| data.get(key).and_then(Value::as_str);
    match text(format!("{side}_stored")).and_then(Storage::parse) {
        Some(Storage::None) => None,
        Some(Storage::Redacted) => text(format!("{side}_stored_ref")),
        Some(Storage::Full) | None => text(format!("{side}_ref")),
    }
}

/// The PII patterns recorded as found in the body of `side` (`<side>_pii`).
pub fn pii_patterns(data: &Value, side: &str) -> Vec<String> {
    data.get(format!("{side}_pii"))
        .and_then(Value::as_array)
        .map(|names| names.iter().filter_map(Value::as_str).map(str::to_owned).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stored_copy_is_found_for_every_mode() {
        let full = json!({"input_ref": "sha256:a", "input_stored": "full"});
        assert_eq!(stored_body_ref(&full, "input"), Some("sha256:a"));
        let legacy = json!({"output_ref": "sha256:b"});
        assert_eq!(stored_body_ref(&legacy, "output"), Some("sha256:b"));
        let redacted = json!({"input_ref": "sha256:a", "input_stored": "redacted",
                              "input_stored_ref": "sha256:c"});
        assert_eq!(stored_body_ref(&redacted, "input"), Some("sha256:c"));
        let none = json!({"input_ref": "sha256:a", "input_stored": "none"});
        assert_eq!(stored_body_ref(&none, "input"), None);
        assert_eq!(
            pii_patterns(&json!({"input_pii": ["email", "ssn"]}), "input"),
            ["email", "ssn"]
        );
        assert!(pii_patterns(&full, "input").is_empty());
    }
}
