//! The `/api/approvals` handlers: read the queue, and decide through [`approval::decide`], which
//! enforces the binding (approvers, expiry, first decision wins).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, ApiState};
use crate::approval::{self, DecideError, Entry, State as HoldState, Verdict};
use crate::record::format_timestamp;

type Shared = State<Arc<ApiState>>;

/// `GET /api/whoami`: whose token this is (the console shows it).
pub(super) async fn whoami(
    State(state): Shared,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let operator = state.admit(&headers)?;
    Ok(Json(json!({ "operator": operator })))
}

/// `GET /api/approvals`: `{"approvals": [...]}`, pending requests oldest first.
pub(super) async fn list(
    State(state): Shared,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let operator = state.admit(&headers)?;
    let entries =
        approval::pending_entries(state.store.as_ref()).await.map_err(ApiError::ledger)?;
    let mut approvals = Vec::with_capacity(entries.len());
    for entry in &entries {
        approvals.push(entry_json(&state, entry, &operator).await?);
    }
    Ok(Json(json!({ "approvals": approvals })))
}

/// `GET /api/approvals/{id}`: one request, whatever its state.
pub(super) async fn show(
    State(state): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let operator = state.admit(&headers)?;
    let entry = find(&state, &id).await?;
    Ok(Json(entry_json(&state, &entry, &operator).await?))
}

/// What an operator may send with a decision.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    /// Why: optional for an approval, required for a denial (the agent is told it).
    reason: Option<String>,
    /// The arguments the operator reviewed (`arguments_ref` of the request as shown). If the
    /// request holds other arguments, nothing is decided.
    arguments_ref: Option<String>,
}

/// `POST /api/approvals/{id}/approve`
pub(super) async fn approve(
    State(state): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let operator = state.admit(&headers)?;
    let body = decision_body(&body)?;
    let reason = body.reason.filter(|r| !r.trim().is_empty());
    decide(&state, &id, body.arguments_ref, Verdict::Approved { operator, reason }).await
}

/// `POST /api/approvals/{id}/deny`
pub(super) async fn deny(
    State(state): Shared,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let operator = state.admit(&headers)?;
    let body = decision_body(&body)?;
    let Some(reason) = body.reason.filter(|r| !r.trim().is_empty()) else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "reason_required",
            "a denial needs a reason: send {\"reason\": \"…\"} (the agent is told it)",
        ));
    };
    decide(&state, &id, body.arguments_ref, Verdict::Denied { operator, reason }).await
}

fn decision_body(body: &[u8]) -> Result<DecisionBody, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(DecisionBody::default());
    }
    serde_json::from_slice(body).map_err(|error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "the body must be a JSON object with an optional \"reason\" and \"arguments_ref\": {error}"
            ),
        )
    })
}

async fn find(state: &ApiState, id: &str) -> Result<Entry, ApiError> {
    approval::find(state.store.as_ref(), id).await.map_err(ApiError::ledger)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("there is no approval request {id}"),
        )
    })
}

async fn decide(
    state: &ApiState,
    id: &str,
    reviewed: Option<String>,
    verdict: Verdict,
) -> Result<Json<Value>, ApiError> {
    if let Some(reviewed) = reviewed {
        let entry = find(state, id).await?;
        if entry.request.arguments_ref != reviewed {
            tracing::warn!(approval_id = %id, operator = verdict.operator(), "refused a decision about other arguments than the held call's");
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "arguments_changed",
                format!(
                    "approval {id} holds a call with arguments {}, not the {reviewed} you reviewed; nothing was decided: review the call again",
                    entry.request.arguments_ref
                ),
            ));
        }
    }
    let verdict_name = verdict.as_str();
    let record = approval::decide(state.store.as_ref(), id, verdict).await.map_err(refusal)?;
    tracing::info!(approval_id = %id, call_id = %record.call_id, decided_by = %record.decided_by, verdict = verdict_name, "decided over the approvals api");
    Ok(Json(record.to_data()))
}

/// The status and code of each refusal from the queue.
fn refusal(error: DecideError) -> ApiError {
    let (status, code) = match &error {
        DecideError::Unknown(_) => (StatusCode::NOT_FOUND, "not_found"),
        DecideError::AlreadyDecided { .. } => (StatusCode::CONFLICT, "already_decided"),
        DecideError::Expired { .. } => (StatusCode::CONFLICT, "expired"),
        DecideError::Ended { .. } => (StatusCode::CONFLICT, "ended"),
        DecideError::NotAnApprover { .. } => (StatusCode::FORBIDDEN, "not_an_approver"),
        DecideError::MissingReason => (StatusCode::BAD_REQUEST, "reason_required"),
        DecideError::InvalidOperator(_) | DecideError::NotAnOperatorVerdict(_) => {
            (StatusCode::BAD_REQUEST, "bad_request")
        }
        DecideError::Store(_) => return ApiError::ledger(error),
    };
    ApiError::new(status, code, error.to_string())
}

/// A request as the API shows it: its `approval_requested` data, when and in which session it
/// was requested, where it stands, its arguments (when the body is still held), and whether
/// the asking operator may decide it.
async fn entry_json(state: &ApiState, entry: &Entry, operator: &str) -> Result<Value, ApiError> {
    let request = &entry.request;
    let bodies =
        approval::held_bodies(state.store.as_ref(), entry).await.map_err(ApiError::ledger)?;
    let mut value = request.to_data();
    value["requested_at"] = entry.requested.timestamp.clone().into();
    value["session_id"] = entry.requested.session_id.clone().into();
    value["status"] = entry.state.label().into();
    value["decision"] = match &entry.state {
        HoldState::Decided(decided) => {
            let mut decision = decided.record.to_data();
            decision["decided_at"] = format_timestamp(decided.decided_at).into();
            decision
        }
        _ => Value::Null,
    };
    value["arguments_held"] = bodies.arguments.is_some().into();
    value["arguments_redacted"] = bodies.arguments_redacted.into();
    value["arguments"] = bodies.arguments.unwrap_or(Value::Null);
    value["holds_result"] = request.holds_result().into();
    if request.holds_result() {
        value["result_held"] = bodies.result.is_some().into();
        value["result_redacted"] = bodies.result_redacted.into();
        value["result"] = bodies.result.unwrap_or(Value::Null);
    }
    value["may_decide"] = (entry.state == HoldState::Pending && request.allows(operator)).into();
    Ok(value)
}
