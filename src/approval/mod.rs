//! The hold queue: approval requests and decisions as ledger events, binding a decision to the
//! exact call it approves, and waiting for one. Knows nothing of transports.
//!
//! A held call is an `approval_requested` event ([`HoldRequest`]) and, once someone decides, an
//! `approval_decision` event ([`DecisionRecord`]). Both carry the `call_id`, so the ledger's call
//! index finds them. Nothing is kept in memory: an operator in another process (the CLI, the API)
//! decides by appending to the ledger, and the waiting proxy sees it there ([`wait`]).
//!
//! **Invariant:** a decision counts only if it [`binds`] to the request: same approval, call,
//! arguments digest and policy digest, decided by an allowed operator before the request expired.
//! Anything else in the ledger, forged or mistaken, is ignored (and logged).

mod binding;
mod bodies;
mod queue;
#[cfg(test)]
mod tests;

use std::time::Duration;

use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::record::{Event, EventType, format_timestamp};

pub use binding::{Mismatch, binds};
pub use bodies::{HeldBodies, held_bodies};
pub use queue::{DecideError, Decided, Entry, State, decide, find, pending, pending_entries, wait};

/// A held call waiting for an operator: the `data` of an `approval_requested` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HoldRequest {
    pub approval_id: String,
    pub call_id: String,
    pub agent: String,
    pub server: String,
    pub tool: String,
    /// `sha256:…` of the call's arguments (canonical JSON): what the operator approves.
    pub arguments_ref: String,
    /// The digest of the policy set that held the call.
    pub policy_digest: String,
    pub rule: Option<String>,
    pub reason: Option<String>,
    /// Operators who may decide; empty means any operator.
    pub approvers: Vec<String>,
    /// Whole microseconds, so that the request reads back exactly as it was written.
    pub expires_at: OffsetDateTime,
    /// Set when what is held is the call's *result* (an output rule): `sha256:…` of the result
    /// the operator releases to the agent or withholds. `None`: the call itself is held.
    pub output_ref: Option<String>,
}

impl HoldRequest {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        call_id: String,
        agent: String,
        server: String,
        tool: String,
        arguments_ref: String,
        policy_digest: String,
        rule: Option<String>,
        reason: Option<String>,
        approvers: Vec<String>,
        expires_after: Duration,
    ) -> Self {
        let expires_at = OffsetDateTime::now_utc()
            .checked_add(time::Duration::try_from(expires_after).unwrap_or(time::Duration::MAX))
            .unwrap_or(time::PrimitiveDateTime::MAX.assume_utc());
        HoldRequest {
            approval_id: uuid::Uuid::now_v7().to_string(),
            call_id,
            agent,
            server,
            tool,
            arguments_ref,
            policy_digest,
            rule,
            reason,
            approvers,
            expires_at: truncate_to_micros(expires_at),
            output_ref: None,
        }
    }

    /// Makes this the hold of the call's result `output_ref` rather than of the call.
    pub fn for_result(mut self, output_ref: String) -> Self {
        self.output_ref = Some(output_ref);
        self
    }

    /// Whether this holds a result (already produced upstream) rather than a call.
    pub fn holds_result(&self) -> bool {
        self.output_ref.is_some()
    }

    /// The `data` of the `approval_requested` event. `agent` and `server` are repeated from the
    /// event's columns so that the request reads the same wherever it is copied.
    pub fn to_data(&self) -> Value {
        let mut data = json!({
            "approval_id": self.approval_id,
            "call_id": self.call_id,
            "agent": self.agent,
            "server": self.server,
            "tool": self.tool,
            "arguments_ref": self.arguments_ref,
            "policy_digest": self.policy_digest,
            "rule": self.rule,
            "reason": self.reason,
            "approvers": self.approvers,
            "expires_at": format_timestamp(self.expires_at),
        });
        if let Some(output_ref) = &self.output_ref {
            data["output_ref"] = json!(output_ref);
        }
        data
    }

    /// The request an `approval_requested` event records; `None` for any other event or a
    /// malformed one.
    pub fn from_event(event: &Event) -> Option<Self> {
        if event.event_type != EventType::ApprovalRequested.as_str() {
            return None;
        }
        let data = &event.data;
        let column_or_data = |column: &Option<String>, key: &str| {
            text(data, key).or_else(|| column.clone()).unwrap_or_default()
        };
        Some(HoldRequest {
            approval_id: text(data, "approval_id")?,
            call_id: text(data, "call_id")?,
            agent: column_or_data(&event.agent, "agent"),
            server: column_or_data(&event.server, "server"),
            tool: text(data, "tool").unwrap_or_default(),
            arguments_ref: text(data, "arguments_ref")?,
            policy_digest: text(data, "policy_digest")?,
            rule: optional_text(data, "rule")?,
            reason: optional_text(data, "reason")?,
            approvers: match data.get("approvers") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(items)) => {
                    items.iter().map(|i| i.as_str().map(str::to_owned)).collect::<Option<_>>()?
                }
                Some(_) => return None,
            },
            expires_at: parse_timestamp(data.get("expires_at")?.as_str()?)?,
            output_ref: optional_text(data, "output_ref")?,
        })
    }

    /// Whether `operator` (a bare name) may decide this request.
    pub fn allows(&self, operator: &str) -> bool {
        self.approvers.is_empty()
            || self.approvers.iter().any(|a| {
                a == operator || a.strip_prefix(OPERATOR_PREFIX).is_some_and(|a| a == operator)
            })
    }
}

/// How a hold ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Approved {
        operator: String,
        reason: Option<String>,
    },
    Denied {
        operator: String,
        reason: String,
    },
    /// Nobody decided before `expires_at` (recorded by the waiting proxy, as `system`).
    Expired,
    /// The agent gave up waiting (recorded by the waiting proxy, as `system`).
    Cancelled,
}

impl Verdict {
    /// `approved`, `denied`, `expired` or `cancelled`, as the ledger stores it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Approved { .. } => "approved",
            Verdict::Denied { .. } => "denied",
            Verdict::Expired => "expired",
            Verdict::Cancelled => "cancelled",
        }
    }

    /// The operator's bare name, for the verdicts an operator gives.
    pub fn operator(&self) -> Option<&str> {
        match self {
            Verdict::Approved { operator, .. } | Verdict::Denied { operator, .. } => Some(operator),
            Verdict::Expired | Verdict::Cancelled => None,
        }
    }

    pub fn reason(&self) -> Option<&str> {
        match self {
            Verdict::Approved { reason, .. } => reason.as_deref(),
            Verdict::Denied { reason, .. } => Some(reason),
            Verdict::Expired | Verdict::Cancelled => None,
        }
    }
}

/// `decided_by` of the verdicts nobody in particular gave (expiry, cancellation).
pub const SYSTEM: &str = "system";
const OPERATOR_PREFIX: &str = "operator/";

/// A decision about one request: the `data` of an `approval_decision` event. It repeats what
/// it decides about (call, arguments digest, policy digest), so it cannot be replayed elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionRecord {
    pub approval_id: String,
    pub call_id: String,
    pub arguments_ref: String,
    pub policy_digest: String,
    /// The held result this decision releases or withholds (holds of results only).
    pub output_ref: Option<String>,
    pub verdict: Verdict,
    /// `operator/<name>`, or `system` for expiry and cancellation.
    pub decided_by: String,
}

impl DecisionRecord {
    pub fn for_request(req: &HoldRequest, verdict: Verdict) -> Self {
        let decided_by = match verdict.operator() {
            Some(operator) => format!("{OPERATOR_PREFIX}{operator}"),
            None => SYSTEM.to_owned(),
        };
        DecisionRecord {
            approval_id: req.approval_id.clone(),
            call_id: req.call_id.clone(),
            arguments_ref: req.arguments_ref.clone(),
            policy_digest: req.policy_digest.clone(),
            output_ref: req.output_ref.clone(),
            verdict,
            decided_by,
        }
    }

    /// The `data` of the `approval_decision` event (who and why; the event's timestamp is when).
    pub fn to_data(&self) -> Value {
        let mut data = json!({
            "approval_id": self.approval_id,
            "call_id": self.call_id,
            "arguments_ref": self.arguments_ref,
            "policy_digest": self.policy_digest,
            "verdict": self.verdict.as_str(),
            "decided_by": self.decided_by,
            "reason": self.verdict.reason(),
            "authorized_by": self.authorized_by(),
        });
        if let Some(output_ref) = &self.output_ref {
            data["output_ref"] = json!(output_ref);
        }
        data
    }

    /// The decision an `approval_decision` event records; `None` for any other event or a
    /// malformed one (a verdict that disagrees with `decided_by`, a denial without a reason).
    pub fn from_event(event: &Event) -> Option<Self> {
        if event.event_type != EventType::ApprovalDecision.as_str() {
            return None;
        }
        let data = &event.data;
        let decided_by = text(data, "decided_by")?;
        let operator = decided_by.strip_prefix(OPERATOR_PREFIX).filter(|name| !name.is_empty());
        let reason = optional_text(data, "reason")?;
        let verdict = match (text(data, "verdict")?.as_str(), operator) {
            ("approved", Some(operator)) => {
                Verdict::Approved { operator: operator.to_owned(), reason }
            }
            ("denied", Some(operator)) => {
                Verdict::Denied { operator: operator.to_owned(), reason: reason? }
            }
            ("expired", None) if decided_by == SYSTEM => Verdict::Expired,
            ("cancelled", None) if decided_by == SYSTEM => Verdict::Cancelled,
            _ => return None,
        };
        Some(DecisionRecord {
            approval_id: text(data, "approval_id")?,
            call_id: text(data, "call_id")?,
            arguments_ref: text(data, "arguments_ref")?,
            policy_digest: text(data, "policy_digest")?,
            output_ref: optional_text(data, "output_ref")?,
            verdict,
            decided_by,
        })
    }

    /// `approval:operator/<name>` for an approval of a call: the `authorized_by` of the
    /// forwarded call. The release of a held result authorizes no call, so it has none.
    pub fn authorized_by(&self) -> Option<String> {
        match &self.verdict {
            Verdict::Approved { .. } if self.output_ref.is_some() => None,
            Verdict::Approved { operator, .. } => {
                Some(format!("approval:{OPERATOR_PREFIX}{operator}"))
            }
            _ => None,
        }
    }
}

fn text(data: &Value, key: &str) -> Option<String> {
    data.get(key)?.as_str().map(str::to_owned)
}

/// `Some(None)` when the key is absent or null, `None` when it holds something other than text.
fn optional_text(data: &Value, key: &str) -> Option<Option<String>> {
    match data.get(key) {
        None | Some(Value::Null) => Some(None),
        Some(Value::String(s)) => Some(Some(s.clone())),
        Some(_) => None,
    }
}

/// Parses a ledger timestamp (RFC 3339).
pub fn parse_timestamp(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok().map(|t| t.to_offset(time::UtcOffset::UTC))
}

fn truncate_to_micros(at: OffsetDateTime) -> OffsetDateTime {
    at.replace_nanosecond(at.microsecond() * 1_000).expect("whole microseconds are valid")
}
