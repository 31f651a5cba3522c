//! Whether a decision found in the ledger is a decision about *this* request: the check that
//! keeps an approval from being replayed for another call or for changed arguments.

use time::OffsetDateTime;

use super::{DecisionRecord, HoldRequest, OPERATOR_PREFIX, SYSTEM};
use crate::record::format_timestamp;

/// Why a decision does not bind to a request. Each message names what differs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("the decision is for approval {found}, not {expected}")]
    ApprovalId { expected: String, found: String },
    #[error("the decision is for call {found}, not {expected}")]
    CallId { expected: String, found: String },
    #[error("the decision approves arguments {found}, but the call's arguments are {expected}")]
    Arguments { expected: String, found: String },
    #[error("the decision is about result {found:?}, but the hold is of {expected:?}")]
    Output { expected: Option<String>, found: Option<String> },
    #[error("the decision was made under policy {found}, but the call was held under {expected}")]
    PolicyDigest { expected: String, found: String },
    #[error("the decision says it was made by `{decided_by}`, which does not match its verdict")]
    DecidedBy { decided_by: String },
    #[error("operator `{operator}` is not among the approvers ({})", approvers.join(", "))]
    NotAnApprover { operator: String, approvers: Vec<String> },
    #[error("the decision was made at {decided_at}, after the request expired at {expires_at}")]
    AfterExpiry { decided_at: String, expires_at: String },
}

/// Whether `decision` is a valid decision for `req`: same approval_id, call_id, arguments_ref,
/// output_ref (holds of results), policy_digest; operator allowed by `approvers`; decided (event timestamp) before
/// `expires_at`. The system's verdicts (`expired`, `cancelled`) are only checked for the first
/// four: they end a hold whoever records them and whenever, and never let a call through.
pub fn binds(
    req: &HoldRequest,
    decision: &DecisionRecord,
    decided_at: OffsetDateTime,
) -> Result<(), Mismatch> {
    if req.approval_id != decision.approval_id {
        return Err(Mismatch::ApprovalId {
            expected: req.approval_id.clone(),
            found: decision.approval_id.clone(),
        });
    }
    if req.call_id != decision.call_id {
        return Err(Mismatch::CallId {
            expected: req.call_id.clone(),
            found: decision.call_id.clone(),
        });
    }
    if req.arguments_ref != decision.arguments_ref {
        return Err(Mismatch::Arguments {
            expected: req.arguments_ref.clone(),
            found: decision.arguments_ref.clone(),
        });
    }
    if req.output_ref != decision.output_ref {
        return Err(Mismatch::Output {
            expected: req.output_ref.clone(),
            found: decision.output_ref.clone(),
        });
    }
    if req.policy_digest != decision.policy_digest {
        return Err(Mismatch::PolicyDigest {
            expected: req.policy_digest.clone(),
            found: decision.policy_digest.clone(),
        });
    }
    let Some(operator) = decision.verdict.operator() else {
        return if decision.decided_by == SYSTEM {
            Ok(())
        } else {
            Err(Mismatch::DecidedBy { decided_by: decision.decided_by.clone() })
        };
    };
    if decision.decided_by.strip_prefix(OPERATOR_PREFIX) != Some(operator) || operator.is_empty() {
        return Err(Mismatch::DecidedBy { decided_by: decision.decided_by.clone() });
    }
    if !req.allows(operator) {
        return Err(Mismatch::NotAnApprover {
            operator: operator.to_owned(),
            approvers: req.approvers.clone(),
        });
    }
    if decided_at >= req.expires_at {
        return Err(Mismatch::AfterExpiry {
            decided_at: format_timestamp(decided_at),
            expires_at: format_timestamp(req.expires_at),
        });
    }
    Ok(())
}
