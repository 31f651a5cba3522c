//! The queue itself, read from and written to the ledger: waiting for a decision, listing what
//! waits, and deciding. No state lives outside the ledger, so any process that reaches it can
//! decide, and a proxy can wait on decisions made anywhere.

use std::collections::HashSet;

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

use super::{DecisionRecord, HoldRequest, Verdict, binds, parse_timestamp};
use crate::record::{Draft, Event, EventType, format_timestamp};
use crate::store::{Store, StoreError};

/// A binding decision and when it was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub record: DecisionRecord,
    pub decided_at: OffsetDateTime,
    pub event_id: String,
}

/// Where a request stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    /// Nobody has decided yet and it has not expired.
    Pending,
    /// The first decision that binds to the request (later ones change nothing).
    Decided(Box<Decided>),
    /// Nobody decided before `expires_at` (and no proxy has recorded the expiry yet).
    Expired,
    /// The call ended without a decision, e.g. the agent cancelled it: `outcome` of its result.
    Ended { outcome: String },
}

impl State {
    /// `pending`, `approved`, `denied`, `expired`, `cancelled`, or the outcome of an ended call.
    pub fn label(&self) -> &str {
        match self {
            State::Pending => "pending",
            State::Decided(decided) => decided.record.verdict.as_str(),
            State::Expired => "expired",
            State::Ended { outcome } => outcome,
        }
    }
}

/// One approval request as the ledger holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub request: HoldRequest,
    /// The `approval_requested` event (chain, session, timestamp).
    pub requested: Event,
    pub state: State,
}

/// The request `approval_id` and where it stands, or `None` if the ledger has no such request.
pub async fn find(store: &dyn Store, approval_id: &str) -> Result<Option<Entry>, StoreError> {
    let requests = store.events_of_type(EventType::ApprovalRequested.as_str()).await?;
    let Some((request, requested)) = requests
        .into_iter()
        .filter_map(|event| Some((HoldRequest::from_event(&event)?, event)))
        .find(|(request, _)| request.approval_id == approval_id)
    else {
        return Ok(None);
    };
    let events = store.events_for_call(&request.call_id).await?;
    let state = state_of(&request, &events, OffsetDateTime::now_utc(), |_, _| {});
    Ok(Some(Entry { request, requested, state }))
}

/// Requests that have no decision event yet and have not expired, oldest first.
pub async fn pending(store: &dyn Store) -> Result<Vec<HoldRequest>, StoreError> {
    Ok(pending_entries(store).await?.into_iter().map(|entry| entry.request).collect())
}

/// [`pending`], with the events that requested them.
pub async fn pending_entries(store: &dyn Store) -> Result<Vec<Entry>, StoreError> {
    let now = OffsetDateTime::now_utc();
    let mut entries = Vec::new();
    for requested in store.events_of_type(EventType::ApprovalRequested.as_str()).await? {
        let Some(request) = HoldRequest::from_event(&requested) else {
            tracing::warn!(event_id = %requested.event_id, "ignoring a malformed approval request");
            continue;
        };
        if request.expires_at <= now {
            continue;
        }
        let events = store.events_for_call(&request.call_id).await?;
        let state = state_of(&request, &events, now, |_, _| {});
        if state == State::Pending {
            entries.push(Entry { request, requested, state });
        }
    }
    entries.sort_by(|a, b| {
        (&a.requested.timestamp, a.requested.seq).cmp(&(&b.requested.timestamp, b.requested.seq))
    });
    Ok(entries)
}

/// Waits for the first binding decision event for `req` (ignoring non-binding ones, logging
/// why), until `req.expires_at` → `Ok(Verdict::Expired)`, or `cancel` → `Ok(Verdict::Cancelled)`.
///
/// Postgres wakes it through LISTEN/NOTIFY within milliseconds of the decision's commit (and it
/// re-reads every second regardless); SQLite is polled every 250 ms. No connection is held
/// between looks (Postgres shares one LISTEN connection per process, outside the pool). A store
/// error ends the wait with `Err`: the caller fails the call closed.
pub async fn wait(
    store: &dyn Store,
    req: &HoldRequest,
    cancel: CancellationToken,
) -> Result<Verdict, StoreError> {
    // Subscribe before the first look, so that a decision committed in between wakes us.
    let mut feed = store.watch_approvals().await?;
    let mut reported = HashSet::new();
    loop {
        let events = store.events_for_call(&req.call_id).await?;
        let now = OffsetDateTime::now_utc();
        let state = state_of(req, &events, now, |event, why| {
            if reported.insert(event.event_id.clone()) {
                tracing::warn!(
                    approval_id = %req.approval_id, call_id = %req.call_id,
                    event_id = %event.event_id, "ignoring an approval decision: {why}"
                );
            }
        });
        // A look after the deadline still finds a decision made before it.
        if let State::Decided(decided) = state {
            return Ok(decided.record.verdict);
        }
        let Ok(remaining) = std::time::Duration::try_from(req.expires_at - now) else {
            return Ok(Verdict::Expired);
        };
        if remaining.is_zero() {
            return Ok(Verdict::Expired);
        }
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Ok(Verdict::Cancelled),
            changed = feed.changed(remaining) => changed?,
        }
    }
}

/// Why an operator's decision was not recorded, or does not count.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    #[error("there is no approval request {0}")]
    Unknown(String),
    #[error(
        "approval {approval_id} was already decided: {verdict} by {decided_by} at {decided_at}"
    )]
    AlreadyDecided {
        approval_id: String,
        verdict: &'static str,
        decided_by: String,
        decided_at: String,
    },
    #[error("approval {approval_id} expired at {expires_at}{}",
        if *recorded { " (this decision was recorded too late and does not count)" } else { "" })]
    Expired { approval_id: String, expires_at: String, recorded: bool },
    #[error("the call held by approval {approval_id} has already ended ({outcome})")]
    Ended { approval_id: String, outcome: String },
    #[error("operator `{operator}` may not decide approval {approval_id}; its approvers are: {}",
        approvers.join(", "))]
    NotAnApprover { approval_id: String, operator: String, approvers: Vec<String> },
    #[error(
        "`{0}` is not an operator name: it must be non-empty, without spaces or control characters"
    )]
    InvalidOperator(String),
    #[error("a denial needs a reason")]
    MissingReason,
    #[error("an operator can approve or deny, not record `{0}`")]
    NotAnOperatorVerdict(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl DecideError {
    /// Whether the operator asked for something the queue refuses (as opposed to the ledger
    /// failing): the CLI's usage exit code.
    pub fn is_refusal(&self) -> bool {
        !matches!(self, DecideError::Store(_))
    }
}

/// Appends an operator's decision for the pending request `approval_id` (error if unknown,
/// already decided, expired, or the operator is not among `approvers`).
///
/// Two operators deciding at once both get their events into the ledger; the first in chain
/// order is the decision, and the other is told [`DecideError::AlreadyDecided`].
pub async fn decide(
    store: &dyn Store,
    approval_id: &str,
    verdict: Verdict,
) -> Result<DecisionRecord, DecideError> {
    let Some(operator) = verdict.operator() else {
        return Err(DecideError::NotAnOperatorVerdict(verdict.as_str()));
    };
    if operator.is_empty() || operator.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(DecideError::InvalidOperator(operator.to_owned()));
    }
    if let Verdict::Denied { reason, .. } = &verdict
        && reason.trim().is_empty()
    {
        return Err(DecideError::MissingReason);
    }
    let entry = find(store, approval_id)
        .await?
        .ok_or_else(|| DecideError::Unknown(approval_id.to_owned()))?;
    refuse_unless_pending(&entry, false)?;
    if !entry.request.allows(operator) {
        return Err(DecideError::NotAnApprover {
            approval_id: approval_id.to_owned(),
            operator: operator.to_owned(),
            approvers: entry.request.approvers.clone(),
        });
    }

    let record = DecisionRecord::for_request(&entry.request, verdict);
    let mut draft = Draft::new(EventType::ApprovalDecision, record.to_data());
    draft.session_id.clone_from(&entry.requested.session_id);
    draft.agent.clone_from(&entry.requested.agent);
    draft.server.clone_from(&entry.requested.server);
    let appended = store.append_settled(&entry.requested.chain_id, &[draft]).await?;
    let event_id = &appended.first().expect("one draft makes one event").event_id;

    // Between the look and the append another decision may have landed, or the request may
    // have expired: the ledger's order says which decision counts.
    let after = find(store, approval_id)
        .await?
        .ok_or_else(|| DecideError::Unknown(approval_id.to_owned()))?;
    match &after.state {
        State::Decided(decided) if &decided.event_id == event_id => Ok(record),
        _ => Err(refuse_unless_pending(&after, true).err().unwrap_or_else(|| {
            // Not binding, yet nothing else decided and it has not expired: only a clock
            // running backwards gets here.
            DecideError::Expired {
                approval_id: approval_id.to_owned(),
                expires_at: format_timestamp(after.request.expires_at),
                recorded: true,
            }
        })),
    }
}

fn refuse_unless_pending(entry: &Entry, recorded: bool) -> Result<(), DecideError> {
    let approval_id = entry.request.approval_id.clone();
    match &entry.state {
        State::Pending => Ok(()),
        State::Decided(decided) => Err(DecideError::AlreadyDecided {
            approval_id,
            verdict: decided.record.verdict.as_str(),
            decided_by: decided.record.decided_by.clone(),
            decided_at: format_timestamp(decided.decided_at),
        }),
        State::Expired => Err(DecideError::Expired {
            approval_id,
            expires_at: format_timestamp(entry.request.expires_at),
            recorded,
        }),
        State::Ended { outcome } => {
            Err(DecideError::Ended { approval_id, outcome: outcome.clone() })
        }
    }
}

/// Where `req` stands given the events of its call (in chain order) at `now`. Decision events
/// that do not bind are passed to `ignored` with the reason.
pub(super) fn state_of(
    req: &HoldRequest,
    events: &[Event],
    now: OffsetDateTime,
    mut ignored: impl FnMut(&Event, &dyn std::fmt::Display),
) -> State {
    for event in events {
        // Once the call has a result, nothing decided later can matter.
        if event.event_type == EventType::ToolResult.as_str() {
            let outcome = event.data.get("outcome").and_then(|o| o.as_str());
            return State::Ended { outcome: outcome.unwrap_or("ended").to_owned() };
        }
        if event.event_type != EventType::ApprovalDecision.as_str() {
            continue;
        }
        let Some(record) = DecisionRecord::from_event(event) else {
            ignored(event, &"it is malformed");
            continue;
        };
        // A call can be held twice (the call, then its result): the other hold's decisions
        // are not about this one, and not suspicious either.
        if record.approval_id != req.approval_id {
            continue;
        }
        let Some(decided_at) = parse_timestamp(&event.timestamp) else {
            ignored(event, &"its timestamp is unreadable");
            continue;
        };
        match binds(req, &record, decided_at) {
            Ok(()) => {
                return State::Decided(Box::new(Decided {
                    record,
                    decided_at,
                    event_id: event.event_id.clone(),
                }));
            }
            Err(why) => ignored(event, &why),
        }
    }
    if now >= req.expires_at { State::Expired } else { State::Pending }
}
