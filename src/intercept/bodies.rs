//! How a session scans and keeps the bodies it records: which storage mode applies to a body,
//! the PII findings in it, the `payloads` row (if any), and the `pii_detected` event.
//!
//! **Invariant:** nothing built here holds a scanned value. A finding is a pattern name and a
//! JSON pointer; a redacted body has every finding replaced by `[REDACTED:<pattern>]`; the free
//! text this module scrubs (targets, error summaries, reasons) gets the same replacement.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use serde_json::{Value, json};

use crate::config::{AuditConfig, ServerConfig};
use crate::pii::{Finding, PiiError, Scanner};
use crate::record::{Payload, RecordedBody, Storage};

/// At most this many findings are listed in one `pii_detected` event; `counts` covers them all.
const MAX_LISTED_FINDINGS: usize = 1000;

/// Which way a body went, as `pii_detected` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The request's body: a tool call's arguments, or a request's params.
    Input,
    /// The response's body: a result or an error object.
    Output,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Input => "input",
            Side::Output => "output",
        }
    }
}

/// The scanning and storage settings of one server's sessions. Cheap to clone.
#[derive(Clone)]
pub struct BodyPolicy {
    scanner: Option<Arc<Scanner>>,
    default: Storage,
    per_tool: Arc<HashMap<String, Storage>>,
    /// `[audit] log_tool_args = false`: tool arguments are kept as `none`.
    keep_arguments: bool,
}

impl std::fmt::Debug for BodyPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyPolicy")
            .field("scanning", &self.scanner.is_some())
            .field("default", &self.default.as_str())
            .field("per_tool", &self.per_tool.len())
            .field("keep_arguments", &self.keep_arguments)
            .finish()
    }
}

/// The built-in scanner, compiled once per process.
fn builtin_scanner() -> Arc<Scanner> {
    static SCANNER: OnceLock<Arc<Scanner>> = OnceLock::new();
    SCANNER.get_or_init(|| Arc::new(Scanner::builtin())).clone()
}

impl Default for BodyPolicy {
    /// What an unconfigured proxy does: scan with every built-in pattern, keep bodies redacted.
    fn default() -> Self {
        BodyPolicy {
            scanner: Some(builtin_scanner()),
            default: Storage::Redacted,
            per_tool: Arc::default(),
            keep_arguments: true,
        }
    }
}

impl BodyPolicy {
    /// No scanning; every body kept as it crossed.
    pub fn keep_all() -> Self {
        BodyPolicy { scanner: None, default: Storage::Full, ..BodyPolicy::default() }
    }

    /// The settings of `[audit]`, with `server`'s own `payloads` and `tool_payloads` on top.
    /// `scanner` is the process's scanner for `audit` (see [`BodyPolicy::scanner_for`]).
    pub fn configured(
        audit: &AuditConfig,
        server: Option<&ServerConfig>,
        scanner: Option<Arc<Scanner>>,
    ) -> Self {
        BodyPolicy {
            scanner,
            default: server.and_then(|s| s.payloads).unwrap_or(audit.payloads),
            per_tool: Arc::new(
                server
                    .map(|s| s.tool_payloads.iter().map(|(k, v)| (k.clone(), *v)).collect())
                    .unwrap_or_default(),
            ),
            keep_arguments: audit.log_tool_args,
        }
    }

    /// The scanner `[audit]` asks for (shared by every session of the process), or `None` when
    /// scanning is off.
    pub fn scanner_for(audit: &AuditConfig) -> Result<Option<Arc<Scanner>>, PiiError> {
        let Some(config) = audit.scanner_config() else { return Ok(None) };
        if config == crate::pii::ScannerConfig::default() {
            return Ok(Some(builtin_scanner()));
        }
        Ok(Some(Arc::new(Scanner::new(&config)?)))
    }

    /// Sets the storage mode of every body (the `stdio --payloads` flag).
    pub fn with_default_storage(mut self, storage: Storage) -> Self {
        self.default = storage;
        self.per_tool = Arc::default();
        self
    }

    pub fn scanner(&self) -> Option<&Scanner> {
        self.scanner.as_deref()
    }

    /// Pattern names the scanner runs (empty when it does not scan).
    pub fn pattern_names(&self) -> Vec<String> {
        self.scanner.iter().flat_map(|s| s.pattern_names().map(str::to_owned)).collect()
    }

    /// What `session_start` says about scanning and storage.
    pub fn describe(&self) -> Value {
        json!({
            "scan_pii": self.scanner.is_some(),
            "patterns": self.pattern_names(),
            "payloads": self.default.as_str(),
            "tool_payloads": self.per_tool.iter().map(|(k, v)| (k.clone(), v.as_str())).collect::<BTreeMap<_, _>>(),
            "log_tool_args": self.keep_arguments,
        })
    }

    /// The storage mode of a body of `tool` (`None` for other methods) on `side`.
    fn storage_for(&self, tool: Option<&str>, side: Side) -> Storage {
        if side == Side::Input && tool.is_some() && !self.keep_arguments {
            return Storage::None;
        }
        tool.and_then(|t| self.per_tool.get(t).copied()).unwrap_or(self.default)
    }

    /// Scans `value` and decides what is kept of it. Returns the body as recorded and the
    /// findings (pattern and pointer, relative to `value`).
    pub fn record(
        &self,
        value: &Value,
        tool: Option<&str>,
        side: Side,
    ) -> (RecordedBody, Vec<Finding>) {
        let original = Payload::of(value);
        let size = original.size();
        let reference = original.reference.clone();
        let (findings, stored, storage) = match (&self.scanner, self.storage_for(tool, side)) {
            (None, Storage::None) => (Vec::new(), None, Storage::None),
            (None, Storage::Redacted | Storage::Full) => {
                (Vec::new(), Some(original), Storage::Full)
            }
            (Some(scanner), Storage::None) => (scanner.scan_json(value), None, Storage::None),
            (Some(scanner), Storage::Full) => {
                (scanner.scan_json(value), Some(original), Storage::Full)
            }
            // One pass; a clean body (the common case) is not copied, and is kept as it is.
            (Some(scanner), Storage::Redacted) => match scanner.redact_json_if_found(value) {
                (Some(redacted), findings) => {
                    (findings, Some(Payload::of(&redacted)), Storage::Redacted)
                }
                (None, findings) => (findings, Some(original), Storage::Full),
            },
        };
        let mut patterns: Vec<String> = findings.iter().map(|f| f.pattern.clone()).collect();
        patterns.sort();
        patterns.dedup();
        let body = RecordedBody { size, reference, storage, stored, patterns };
        (body, findings)
    }

    /// `text` as an event may record it when it comes from a body of `tool` on `side` (a
    /// policy target, an error message): as it is where that body is kept in full, else with
    /// every finding replaced — the ledger keeps values only where it was asked to.
    pub fn scrub_for(&self, tool: Option<&str>, side: Side, text: &str) -> String {
        if self.storage_for(tool, side) == Storage::Full {
            return text.to_owned();
        }
        self.scrub(text)
    }

    /// `text` with every finding replaced, for free text recorded in an event's data.
    pub fn scrub(&self, text: &str) -> String {
        match &self.scanner {
            Some(scanner) => scanner.redact_text(text).0,
            None => text.to_owned(),
        }
    }

    /// A copy of `value` with every finding redacted (what the agent gets under a `redact`
    /// rule), or `None` when it does not scan.
    pub fn redacted(&self, value: &Value) -> Option<Value> {
        self.scanner.as_ref().map(|scanner| scanner.redact_json(value).0)
    }
}

/// The `data` of a `pii_detected` event: which call, which side and body, and each finding's
/// pattern and pointer (at most [`MAX_LISTED_FINDINGS`], with `counts` over all of them).
pub fn pii_detected_data(
    call: &super::OpenCall,
    side: Side,
    body: &RecordedBody,
    findings: &[Finding],
) -> Value {
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for finding in findings {
        *counts.entry(finding.pattern.as_str()).or_default() += 1;
    }
    let listed: Vec<Value> = findings
        .iter()
        .take(MAX_LISTED_FINDINGS)
        .map(|f| json!({"pattern": f.pattern, "pointer": f.pointer}))
        .collect();
    json!({
        "call_id": call.call_id,
        "request_id": call.request_id(),
        "method": call.method,
        "tool": call.tool,
        "direction": side.as_str(),
        "body_ref": body.reference,
        "findings": listed,
        "counts": counts,
        "truncated": findings.len() > MAX_LISTED_FINDINGS,
    })
}
