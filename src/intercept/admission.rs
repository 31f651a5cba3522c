//! What the policy makes of a `tools/call`: forward it, refuse it with a tool error the agent
//! can read, or hold it until an operator decides. Every outcome is committed before the proxy
//! acts on it.

use std::sync::{Arc, RwLock};

use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{BodyPolicy, Completion, OpenCall, RecordError, SessionRecorder, Side};
use crate::approval::{self, DecisionRecord, HoldRequest, Verdict};
use crate::policy::{CallContext, Decision, PolicySet};
use crate::record::EventType;
use crate::telemetry;

/// The policy set in force, shared by every session and swapped whole on reload.
#[derive(Clone)]
pub struct SharedPolicy(Arc<RwLock<Arc<PolicySet>>>);

impl SharedPolicy {
    pub fn new(set: PolicySet) -> Self {
        SharedPolicy(Arc::new(RwLock::new(Arc::new(set))))
    }

    /// No policy configured: every call is allowed, as `default:allow`.
    pub fn allow_all() -> Self {
        Self::new(PolicySet::allow_all())
    }

    pub fn current(&self) -> Arc<PolicySet> {
        self.0.read().expect("policy lock").clone()
    }

    /// Puts `set` in force for every call decided from now on.
    pub fn replace(&self, set: PolicySet) {
        *self.0.write().expect("policy lock") = Arc::new(set);
    }
}

/// Told about each held call once its `approval_requested` event is committed, so that
/// operators hear of it (the approvals webhook). `held` must return at once: delivery happens
/// in the background and its failure never touches the hold.
pub trait HoldNotifier: Send + Sync {
    fn held(&self, request: &HoldRequest);
}

/// What the proxy does with a recorded request.
pub enum Admission {
    /// Forward it.
    Forward(OpenCall),
    /// Never forward it; answer the agent with this JSON-RPC `result` (a tool error).
    Refuse { call: OpenCall, result: Value },
    /// Wait for an operator, then forward or refuse ([`SessionRecorder::resolve_hold`]).
    Hold(Box<PendingHold>),
}

/// A held call and its approval request, both committed.
pub struct PendingHold {
    pub call: OpenCall,
    pub request: HoldRequest,
    /// The agent's progress token, if it gave one: the proxy reports the wait through it.
    pub progress_token: Option<Value>,
}

/// How a hold ended.
pub enum HoldOutcome {
    /// Approved: forward the call (its result is recorded as usual).
    Forward(OpenCall),
    /// Denied or expired: answer with this `result`; the call's result is recorded.
    Refuse(Value),
    /// The agent cancelled the call: no answer is owed.
    Cancelled,
}

/// A policy decision about to be recorded with its call.
pub(super) struct Judged {
    tool: String,
    decision: Decision,
    digest: String,
}

impl Judged {
    /// Adds the decision's fields to the `tool_call` event's data. The target is an argument's
    /// value, so it is scrubbed of PII unless the arguments are kept in full.
    pub(super) fn describe(&self, fields: &mut Map<String, Value>, bodies: &BodyPolicy) {
        let target =
            self.decision.target().map(|t| bodies.scrub_for(Some(&self.tool), Side::Input, t));
        let mut decision = self.decision.to_record(&self.digest);
        decision["target"] = json!(target);
        fields.insert("tool".into(), json!(self.tool));
        fields.insert("target".into(), json!(target));
        fields.insert("decision".into(), decision);
        fields.insert("authorized_by".into(), json!(self.decision.authorized_by(&self.digest)));
        fields.insert("cost_credits".into(), cost_value(self.decision.cost()));
    }
}

impl Judged {
    /// The decision as metrics and spans name it.
    pub(super) fn effect(&self) -> telemetry::Decision {
        match self.decision {
            Decision::Allow { .. } => telemetry::Decision::Allow,
            Decision::Deny { .. } => telemetry::Decision::Deny,
            Decision::Hold { .. } => telemetry::Decision::Hold,
        }
    }
}

/// Whole credits as an integer, so that JCS and SQL see `2`, not `2.0`.
fn cost_value(cost: f64) -> Value {
    if cost.fract() == 0.0 && cost.abs() < 9.0e15 { json!(cost as i64) } else { json!(cost) }
}

/// A tool result that tells the agent, in words it can act on, why its call did not run.
pub(super) fn tool_error(text: &str) -> Value {
    json!({"content": [{"type": "text", "text": text}], "isError": true})
}

impl SessionRecorder {
    pub(super) async fn judge(
        &self,
        policy: &PolicySet,
        tool: &str,
        arguments: &Value,
        call: &OpenCall,
    ) -> Judged {
        let context = CallContext {
            agent: &self.identity.agent,
            server: &self.identity.server,
            tool,
            arguments,
            spent_today: self.spent_today(policy).await,
            input_pii: &call.input_pii,
        };
        let judged = Judged {
            tool: tool.to_owned(),
            decision: policy.evaluate(&context),
            digest: policy.digest().to_owned(),
        };
        // Run inside the `policy decision` span (see `begin`).
        let rule = judged.decision.rule().map(|rule| rule.name.as_str());
        telemetry::spans::decided(&tracing::Span::current(), judged.effect(), rule);
        judged
    }

    /// Credits this agent spent today, when a budget applies to it (else not needed).
    async fn spent_today(&self, policy: &PolicySet) -> Option<f64> {
        policy.budget_for(&self.identity.agent)?;
        let store = self.store.as_ref()?;
        match store.spent_today(&self.identity.agent).await {
            Ok(spent) => Some(spent),
            Err(error) => {
                // Without the figure the budget cannot be checked: the policy then denies.
                tracing::error!(%error, agent = %self.identity.agent, "cannot read today's spending");
                None
            }
        }
    }

    pub(super) async fn admit(
        &self,
        call: OpenCall,
        judged: Judged,
        params: &Value,
    ) -> Result<Admission, RecordError> {
        match judged.decision {
            Decision::Allow { .. } => Ok(Admission::Forward(call)),
            Decision::Deny { ref reason, .. } => {
                let text = match judged.decision.rule() {
                    Some(rule) => format!("Denied by policy rule `{}`: {reason}", rule.name),
                    None => format!("Denied by policy: {reason}"),
                };
                self.finish(&call, Completion::Refused { outcome: "denied", reason: &text })
                    .await?;
                Ok(Admission::Refuse { call, result: tool_error(&text) })
            }
            Decision::Hold { ref reason, ref approvers, expires_after, .. } => {
                let Some(_) = &self.store else {
                    let text = "Held for operator approval, but this proxy has no approval queue";
                    self.finish(&call, Completion::Refused { outcome: "denied", reason: text })
                        .await?;
                    return Ok(Admission::Refuse { call, result: tool_error(text) });
                };
                let request = HoldRequest::new(
                    call.call_id.clone(),
                    self.identity.agent.clone(),
                    self.identity.server.clone(),
                    judged.tool.clone(),
                    call.input_ref.clone(),
                    judged.digest.clone(),
                    judged.decision.rule().map(|r| r.name.clone()),
                    reason.clone(),
                    approvers.clone(),
                    expires_after,
                );
                let mut draft = self.draft(EventType::ApprovalRequested, request.to_data());
                draft.session_id = Some(self.identity.session_id.clone());
                self.ledger.append(draft).instrument(telemetry::spans::commit("hold")).await?;
                if let Some(notifier) = &self.notifier {
                    notifier.held(&request);
                }
                tracing::info!(approval_id = %request.approval_id, tool = %judged.tool, agent = %self.identity.agent, "call held for approval");
                let progress_token =
                    params.get("_meta").and_then(|m| m.get("progressToken")).cloned();
                Ok(Admission::Hold(Box::new(PendingHold { call, request, progress_token })))
            }
        }
    }

    /// Waits for the operator's decision on a held call and records how it ended.
    pub async fn resolve_hold(
        &self,
        hold: PendingHold,
        cancel: CancellationToken,
    ) -> Result<HoldOutcome, RecordError> {
        let store = self.store.as_ref().expect("holds are only made with a store");
        let verdict = approval::wait(store.as_ref(), &hold.request, cancel).await;
        let (outcome, text) = match verdict {
            Ok(Verdict::Approved { operator, .. }) => {
                tracing::info!(approval_id = %hold.request.approval_id, %operator, "held call approved");
                let mut call = hold.call;
                call.authorized_by = Some(format!("approval:operator/{operator}"));
                return Ok(HoldOutcome::Forward(call));
            }
            Ok(Verdict::Denied { operator, reason }) => {
                ("denied", format!("Denied by operator {operator}: {reason}"))
            }
            Ok(Verdict::Expired) => {
                // Nobody decided in time: the expiry is a decision too, and the ledger says so.
                let record = DecisionRecord::for_request(&hold.request, Verdict::Expired);
                self.ledger
                    .append(self.draft(EventType::ApprovalDecision, record.to_data()))
                    .await?;
                ("expired", "Held for operator approval, but nobody approved it in time".to_owned())
            }
            Ok(Verdict::Cancelled) => {
                let reason = "the agent cancelled the call while it was held";
                self.finish(&hold.call, Completion::Refused { outcome: "cancelled", reason })
                    .await?;
                return Ok(HoldOutcome::Cancelled);
            }
            Err(error) => {
                tracing::error!(%error, "cannot read approval decisions; failing the held call closed");
                (
                    "error",
                    "The approval queue could not be read, so the call was not run".to_owned(),
                )
            }
        };
        self.finish(&hold.call, Completion::Refused { outcome, reason: &text }).await?;
        Ok(HoldOutcome::Refuse(tool_error(&text)))
    }
}
