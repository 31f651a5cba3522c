//! What the agent gets of a response: the output rules (`output_contains`) look at the PII
//! found in a tool call's result and deliver it as it is, redact it, withhold it, or hold it
//! until an operator releases or withholds it. Every outcome is committed before the agent
//! sees anything.

use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::admission::tool_error;
use super::{Completion, OpenCall, RecordError, SessionRecorder, Side};
use crate::approval::{self, DecisionRecord, HoldRequest, Verdict};
use crate::pii::Finding;
use crate::policy::{CallContext, ResultDecision};
use crate::record::{EventType, RecordedBody};
use crate::telemetry;

/// What to send the agent in place of a response, once it is recorded.
pub enum Delivery {
    /// The response as the upstream sent it (its original bytes).
    AsIs,
    /// A response carrying this `result` instead: redacted, or a tool error saying why the
    /// result was withheld.
    Replace(Value),
    /// The result waits for an operator ([`SessionRecorder::resolve_result_hold`]).
    Hold(Box<PendingResultHold>),
    /// Nothing: the agent cancelled the call while its result was held.
    Nothing,
}

/// A result held for an operator; its `approval_requested` event (and findings) are committed,
/// its `tool_result` is not yet.
pub struct PendingResultHold {
    pub call: OpenCall,
    pub request: HoldRequest,
    body: RecordedBody,
    decision: Value,
    /// The result as the upstream sent it, for its outcome (`ok` or `tool_error`) on release.
    result: Value,
}

impl SessionRecorder {
    /// Records the response to `call` and decides what the agent gets: tool-call results that
    /// carry PII are put to the output rules; everything else is delivered as it is. Returns
    /// once committed.
    pub async fn complete(
        &self,
        call: &OpenCall,
        completion: Completion<'_>,
    ) -> Result<Delivery, RecordError> {
        let policy = self.policy.current();
        let Completion::Result(result) = completion else {
            self.finish(call, completion).await?;
            return Ok(Delivery::AsIs);
        };
        let Some(arguments) = call.arguments.as_ref().filter(|_| policy.has_output_rules()) else {
            self.finish(call, completion).await?;
            return Ok(Delivery::AsIs);
        };
        let (body, findings) = self.bodies.record(result, call.tool.as_deref(), Side::Output);
        let context = CallContext {
            agent: &self.identity.agent,
            server: &self.identity.server,
            tool: call.tool.as_deref().unwrap_or(""),
            arguments,
            spent_today: None,
            input_pii: &call.input_pii,
        };
        let decision = if body.patterns.is_empty() {
            ResultDecision::Deliver
        } else {
            policy.evaluate_result(&context, &body.patterns)
        };
        let record = decision.to_record(policy.digest());
        let (extra, delivery) = match decision {
            ResultDecision::Deliver => (Map::new(), Delivery::AsIs),
            ResultDecision::Redact { .. } => {
                let redacted = self.bodies.redacted(result).unwrap_or_else(|| result.clone());
                (decided(record, &[("delivered", json!("redacted"))]), Delivery::Replace(redacted))
            }
            ResultDecision::Withhold { ref rule, ref reason } => {
                let text =
                    format!("The result was withheld by policy rule `{}`: {reason}", rule.name);
                let extra =
                    decided(record, &[("outcome", json!("withheld")), ("error", json!(text))]);
                (extra, Delivery::Replace(tool_error(&text)))
            }
            ResultDecision::Hold { ref rule, ref reason, ref approvers, expires_after } => {
                let request = HoldRequest::new(
                    call.call_id.clone(),
                    self.identity.agent.clone(),
                    self.identity.server.clone(),
                    call.tool.clone().unwrap_or_default(),
                    call.input_ref.clone(),
                    policy.digest().to_owned(),
                    Some(rule.name.clone()),
                    reason.clone(),
                    approvers.clone(),
                    expires_after,
                )
                .for_result(body.reference.clone());
                return self.hold_result(call, request, result, body, &findings, record).await;
            }
        };
        let draft = self.result_draft(call, &Completion::Result(result), Some(&body), extra);
        let drafts = self.drafts_with_findings(draft, call, Side::Output, &body, &findings);
        self.commit_end(call, drafts, None).await?;
        Ok(delivery)
    }

    /// Commits the hold of a result (its request, its stored body for the operator to read,
    /// its findings) and tells the notifier.
    async fn hold_result(
        &self,
        call: &OpenCall,
        request: HoldRequest,
        result: &Value,
        body: RecordedBody,
        findings: &[Finding],
        decision: Value,
    ) -> Result<Delivery, RecordError> {
        // The request also says how the held result is kept, so an operator can read it.
        let mut data = request.to_data();
        body.describe("output", data.as_object_mut().expect("an object"));
        let draft = self.draft(EventType::ApprovalRequested, data);
        let drafts = self.drafts_with_findings(draft, call, Side::Output, &body, findings);
        let events =
            self.ledger.append_all(drafts).instrument(telemetry::spans::commit("hold")).await?;
        self.telemetry.committed(&events);
        if let Some(notifier) = &self.notifier {
            notifier.held(&request);
        }
        tracing::info!(approval_id = %request.approval_id, agent = %self.identity.agent, "result held for approval");
        let result = result.clone();
        let call = call.clone();
        Ok(Delivery::Hold(Box::new(PendingResultHold { call, request, body, decision, result })))
    }

    /// Waits for the operator's decision on a held result, records how it ended, and says what
    /// the agent gets.
    pub async fn resolve_result_hold(
        &self,
        hold: PendingResultHold,
        cancel: CancellationToken,
    ) -> Result<Delivery, RecordError> {
        let store = self.store.as_ref().expect("results are only held with a store");
        let verdict = approval::wait(store.as_ref(), &hold.request, cancel).await;
        let decision = hold.decision.clone();
        let (extra, delivery) = match verdict {
            Ok(Verdict::Approved { operator, .. }) => {
                let extra =
                    decided(decision, &[("released_by", json!(format!("operator/{operator}")))]);
                (extra, Delivery::AsIs)
            }
            Ok(Verdict::Cancelled) => {
                let reason = "the agent cancelled the call while its result was held";
                (
                    decided(decision, &[("outcome", json!("cancelled")), ("error", json!(reason))]),
                    Delivery::Nothing,
                )
            }
            Ok(verdict) => {
                let text = match &verdict {
                    Verdict::Denied { operator, reason } => {
                        format!("The result was withheld by operator {operator}: {reason}")
                    }
                    _ => {
                        "The result was held for operator approval, but nobody released it in time"
                            .to_owned()
                    }
                };
                if verdict == Verdict::Expired {
                    let record = DecisionRecord::for_request(&hold.request, Verdict::Expired);
                    self.ledger
                        .append(self.draft(EventType::ApprovalDecision, record.to_data()))
                        .await?;
                }
                let extra = decided(
                    decision,
                    &[
                        ("outcome", json!("withheld")),
                        ("error", json!(self.scrub(&hold.call, &text))),
                    ],
                );
                (extra, Delivery::Replace(tool_error(&text)))
            }
            Err(error) => {
                tracing::error!(%error, "cannot read approval decisions; withholding the held result");
                let text = "The approval queue could not be read, so the result was withheld";
                (
                    decided(decision, &[("outcome", json!("withheld")), ("error", json!(text))]),
                    Delivery::Replace(tool_error(text)),
                )
            }
        };
        let completion = Completion::Result(&hold.result);
        let draft = self.result_draft(&hold.call, &completion, Some(&hold.body), extra);
        self.commit_end(&hold.call, vec![draft], None).await?;
        Ok(delivery)
    }
}

/// The `output_decision` of a result and the keys that go with it, for a `tool_result` event.
fn decided(decision: Value, also: &[(&str, Value)]) -> Map<String, Value> {
    let mut extra = Map::new();
    extra.insert("output_decision".into(), decision);
    for (key, value) in also {
        extra.insert((*key).to_owned(), value.clone());
    }
    extra
}
