//! What the policy decided about one call, carrying the rule that decided it, and how that is
//! written into the ledger.

use std::time::Duration;

use serde_json::{Value, json};

use super::rule::number;
use super::{DIGEST_PREFIX_LEN, Effect, RuleRef};

/// The outcome of [`PolicySet::evaluate`](super::PolicySet::evaluate). `rule` is `None` when no
/// rule matched and the configured default decided (or, for a deny, a budget did).
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Forward the call.
    Allow { rule: Option<RuleRef>, cost: f64, target: Option<String> },
    /// Answer the agent with an error; never forward.
    Deny {
        rule: Option<RuleRef>,
        /// Shown to the agent and recorded.
        reason: String,
        cost: f64,
        target: Option<String>,
        /// Set when the call was denied because it would exceed the agent's daily budget.
        budget: Option<BudgetExceeded>,
    },
    /// Wait for an operator: forward on approval, answer with an error on denial or expiry.
    Hold {
        rule: Option<RuleRef>,
        reason: Option<String>,
        /// Operators who may decide; empty means any operator.
        approvers: Vec<String>,
        expires_after: Duration,
        cost: f64,
        target: Option<String>,
    },
}

/// Why a budget denied a call: which entry of `[budgets]` applied and the numbers compared.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetExceeded {
    /// The key in `[budgets]`: the agent's name, or `*`.
    pub budget: String,
    pub limit: f64,
    /// What the agent had spent today; `None` when the caller could not say, which denies too.
    pub spent_today: Option<f64>,
    pub cost: f64,
}

impl Decision {
    pub fn effect(&self) -> Effect {
        match self {
            Decision::Allow { .. } => Effect::Allow,
            Decision::Deny { .. } => Effect::Deny,
            Decision::Hold { .. } => Effect::Hold,
        }
    }

    /// The rule that decided, if a rule did.
    pub fn rule(&self) -> Option<&RuleRef> {
        match self {
            Decision::Allow { rule, .. }
            | Decision::Deny { rule, .. }
            | Decision::Hold { rule, .. } => rule.as_ref(),
        }
    }

    /// The call's price in credits (the deciding rule's `cost`; 0 when the default decided).
    /// A denied call was not made: it should not count towards what an agent has spent.
    pub fn cost(&self) -> f64 {
        match self {
            Decision::Allow { cost, .. }
            | Decision::Deny { cost, .. }
            | Decision::Hold { cost, .. } => *cost,
        }
    }

    /// What the call acts on, from the deciding rule's `target` pointer.
    pub fn target(&self) -> Option<&str> {
        match self {
            Decision::Allow { target, .. }
            | Decision::Deny { target, .. }
            | Decision::Hold { target, .. } => target.as_deref(),
        }
    }

    /// The `authorized_by` of a call this decision lets through on its own:
    /// `policy:<rule>@<first 12 hex of the digest>` when a rule allowed it, `default:allow` when
    /// the default did. `None` for a deny (nobody authorized it) and for a hold, which is
    /// authorized later by an approval (`approval:operator/<name>`).
    pub fn authorized_by(&self, digest: &str) -> Option<String> {
        match self {
            Decision::Allow { rule: Some(rule), .. } => {
                let prefix = digest.get(..DIGEST_PREFIX_LEN).unwrap_or(digest);
                Some(format!("policy:{}@{prefix}", rule.name))
            }
            Decision::Allow { rule: None, .. } => Some("default:allow".to_owned()),
            Decision::Deny { .. } | Decision::Hold { .. } => None,
        }
    }

    /// The decision as the ledger stores it in the `tool_call` event. Every key is always
    /// present (null or empty when it does not apply), so queries need not test for them.
    pub fn to_record(&self, digest: &str) -> Value {
        let (reason, approvers, expires_after, budget) = match self {
            Decision::Allow { .. } => (None, &[][..], None, None),
            Decision::Deny { reason, budget, .. } => {
                (Some(reason.as_str()), &[][..], None, budget.as_ref())
            }
            Decision::Hold { reason, approvers, expires_after, .. } => {
                (reason.as_deref(), approvers.as_slice(), Some(expires_after.as_secs()), None)
            }
        };
        json!({
            "effect": self.effect().as_str(),
            "rule": self.rule().map(|r| r.name.as_str()),
            "reason": reason,
            "policy_digest": digest,
            "cost": number(self.cost()),
            "target": self.target(),
            "approvers": approvers,
            "expires_after_secs": expires_after,
            "budget": budget.map(|b| json!({
                "budget": b.budget,
                "limit": number(b.limit),
                "spent_today": b.spent_today.map(number),
                "cost": number(b.cost),
            })),
        })
    }
}

/// What the agent gets of a result that output rules (`output_contains`) looked at: the outcome
/// of [`PolicySet::evaluate_result`](super::PolicySet::evaluate_result). Unlike a call, a result
/// has no default: no matching rule means [`ResultDecision::Deliver`].
#[derive(Debug, Clone, PartialEq)]
pub enum ResultDecision {
    /// Pass the result on as the upstream sent it.
    Deliver,
    /// Pass it on with every finding replaced by `[REDACTED:<pattern>]`.
    Redact { rule: RuleRef },
    /// Wait for an operator: deliver on approval, withhold on denial or expiry.
    Hold { rule: RuleRef, reason: Option<String>, approvers: Vec<String>, expires_after: Duration },
    /// Answer the agent with a tool error instead of the result (the call did run).
    Withhold { rule: RuleRef, reason: String },
}

impl ResultDecision {
    /// The deciding rule's effect; `allow` for a plain delivery.
    pub fn effect(&self) -> Effect {
        match self {
            ResultDecision::Deliver => Effect::Allow,
            ResultDecision::Redact { .. } => Effect::Redact,
            ResultDecision::Hold { .. } => Effect::Hold,
            ResultDecision::Withhold { .. } => Effect::Deny,
        }
    }

    pub fn rule(&self) -> Option<&RuleRef> {
        match self {
            ResultDecision::Deliver => None,
            ResultDecision::Redact { rule }
            | ResultDecision::Hold { rule, .. }
            | ResultDecision::Withhold { rule, .. } => Some(rule),
        }
    }

    /// The decision as the `tool_result` event stores it (`output_decision`).
    pub fn to_record(&self, digest: &str) -> Value {
        let (reason, approvers, expires_after) = match self {
            ResultDecision::Deliver | ResultDecision::Redact { .. } => (None, &[][..], None),
            ResultDecision::Withhold { reason, .. } => (Some(reason.as_str()), &[][..], None),
            ResultDecision::Hold { reason, approvers, expires_after, .. } => {
                (reason.as_deref(), approvers.as_slice(), Some(expires_after.as_secs()))
            }
        };
        json!({
            "effect": self.effect().as_str(),
            "rule": self.rule().map(|r| r.name.as_str()),
            "reason": reason,
            "policy_digest": digest,
            "approvers": approvers,
            "expires_after_secs": expires_after,
        })
    }
}
