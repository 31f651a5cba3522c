//! What an operator reads before deciding: the held call's arguments and, for a held result,
//! the result — each as the ledger keeps it (redacted when the storage mode says so; absent
//! when it was never kept or has been erased).

use serde_json::Value;

use super::Entry;
use crate::record::{EventType, stored_body_ref};
use crate::store::{Store, StoreError};

/// The bodies of one approval request, as kept.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HeldBodies {
    /// The call's arguments; `None` when no copy is kept.
    pub arguments: Option<Value>,
    /// Whether the kept arguments had PII replaced by `[REDACTED:<pattern>]`.
    pub arguments_redacted: bool,
    /// The held result (holds of results only); `None` when no copy is kept.
    pub result: Option<Value>,
    pub result_redacted: bool,
}

/// Reads the kept bodies of `entry`'s call (and held result).
pub async fn held_bodies(store: &dyn Store, entry: &Entry) -> Result<HeldBodies, StoreError> {
    let request = &entry.request;
    let mut bodies = HeldBodies::default();
    let call = store
        .events_for_call(&request.call_id)
        .await?
        .into_iter()
        .find(|e| e.event_type == EventType::ToolCall.as_str());
    // Without its call event (another chain, a cut), the arguments may still be kept in full.
    let input_ref = call
        .as_ref()
        .map_or(Some(request.arguments_ref.as_str()), |c| stored_body_ref(&c.data, "input"));
    if let Some(reference) = input_ref {
        bodies.arguments = read(store, reference).await?;
        bodies.arguments_redacted = reference != request.arguments_ref;
    }
    if request.holds_result()
        && let Some(reference) = stored_body_ref(&entry.requested.data, "output")
    {
        bodies.result = read(store, reference).await?;
        bodies.result_redacted = Some(reference) != request.output_ref.as_deref();
    }
    Ok(bodies)
}

/// A stored body as JSON (canonical JSON as stored; an unreadable body as text).
async fn read(store: &dyn Store, reference: &str) -> Result<Option<Value>, StoreError> {
    Ok(store
        .payload(reference)
        .await?
        .map(|body| serde_json::from_str(&body).unwrap_or(Value::String(body))))
}
