//! Policies: loading `policies/*.toml` into a [`PolicySet`] and evaluating a tool call into a
//! [`Decision`] — allow, deny or hold, carrying the rule that decided — and, for rules that look
//! at what a call returned (`output_contains`), its result into a [`ResultDecision`].
//!
//! Pure: apart from reading the files in [`PolicySet::load_dir`], nothing here does I/O, and
//! nothing knows of tokio, SQL or the wire format. The file format, operators and precedence
//! are documented in `docs/policies.md`.
//!
//! **Invariant**: there is no "no decision". A call that no rule matches gets the configured
//! default as a [`Decision`] with `rule: None`, and a set with no files is
//! [`PolicySet::allow_all`], whose decisions say `default:allow`.

mod decision;
mod error;
mod operand;
mod parse;
mod rule;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde_json::{Value, json};

pub use decision::{BudgetExceeded, Decision, ResultDecision};
pub use error::PolicyError;
pub use operand::parse_duration;
use rule::Rule;

/// How many hex digits of the digest `authorized_by` and `policy check` show.
pub const DIGEST_PREFIX_LEN: usize = 12;

/// How long a hold waits for an operator when its rule gives no `expires_after` (and when the
/// default effect is `hold`).
pub const DEFAULT_HOLD_EXPIRY: Duration = Duration::from_secs(3600);

/// Versions the canonical form: a change to it changes every digest on purpose.
const CANONICAL_FORMAT: &str = "mcp-ledger-policy/1";

/// What a rule or the default decides. Ordered by restrictiveness: `Allow < Redact < Hold <
/// Deny`, and when several rules match, the greatest wins. `Redact` is only an output rule's
/// effect (the agent gets the result with its findings redacted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Effect {
    Allow,
    Redact,
    Hold,
    Deny,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Redact => "redact",
            Effect::Hold => "hold",
            Effect::Deny => "deny",
        }
    }
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Effect {
    /// A default effect (`[policy] default`, `--default`): `allow`, `hold` or `deny` — the
    /// effects that can stand for a call no rule matched.
    pub fn parse_default(text: &str) -> Option<Effect> {
        text.parse().ok().filter(|e| *e != Effect::Redact)
    }
}

impl FromStr for Effect {
    type Err = ();

    /// `allow`, `redact`, `hold` or `deny`, lower-case as in the files.
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "allow" => Ok(Effect::Allow),
            "redact" => Ok(Effect::Redact),
            "hold" => Ok(Effect::Hold),
            "deny" => Ok(Effect::Deny),
            _ => Err(()),
        }
    }
}

/// Where a rule is defined. `line` is the line of its `name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RuleRef {
    pub name: String,
    pub file: PathBuf,
    pub line: usize,
}

/// One tools/call as the policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct CallContext<'a> {
    pub agent: &'a str,
    pub server: &'a str,
    pub tool: &'a str,
    /// The call's `arguments` (`Value::Null` when it has none).
    pub arguments: &'a Value,
    /// Credits the agent has spent today. Needed only when the agent has a budget
    /// ([`PolicySet::budget_for`]); if it has one and this is `None`, the call is denied.
    pub spent_today: Option<f64>,
    /// The PII patterns found in the arguments (each name once or more; empty when the
    /// proxy does not scan), for rules with `input_contains`.
    pub input_pii: &'a [String],
}

/// A daily budget: the `[budgets]` key that applies (an agent's name or `*`) and its limit.
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub key: String,
    pub limit: f64,
}

/// Every rule in load order, the default effect, the budgets, and the digest over all of them.
#[derive(Debug, Clone)]
pub struct PolicySet {
    rules: Vec<Rule>,
    default: Effect,
    budgets: BTreeMap<String, f64>,
    files: usize,
    digest: String,
}

impl PolicySet {
    /// Loads every `*.toml` file directly in `dir` (not in subdirectories; names starting with
    /// `.` are skipped), in file-name order. `default` is the configured `[policy] default`.
    pub fn load_dir(dir: &Path, default: Effect) -> Result<PolicySet, PolicyError> {
        let read_error = |path: &Path, error: std::io::Error| PolicyError::Read {
            path: path.to_owned(),
            message: error.to_string().to_lowercase(),
        };
        let mut paths = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| read_error(dir, e))? {
            let entry = entry.map_err(|e| read_error(dir, e))?;
            let name = entry.file_name();
            let is_policy =
                name.to_str().is_some_and(|n| n.ends_with(".toml") && !n.starts_with('.'));
            if is_policy && entry.path().is_file() {
                paths.push((name, entry.path()));
            }
        }
        paths.sort();
        let mut sources = Vec::with_capacity(paths.len());
        for (_, path) in paths {
            let text = std::fs::read_to_string(&path).map_err(|e| read_error(&path, e))?;
            sources.push((path, text));
        }
        PolicySet::from_sources(&sources, default)
    }

    /// Builds a set from `(file name, text)` pairs, in the order given. Reports every problem
    /// in every file, or none.
    pub fn from_sources(
        sources: &[(PathBuf, String)],
        default: Effect,
    ) -> Result<PolicySet, PolicyError> {
        let mut problems = Vec::new();
        let mut rules: Vec<Rule> = Vec::new();
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut budgets = BTreeMap::new();
        let mut budget_places: HashMap<String, (PathBuf, usize)> = HashMap::new();
        for (file, text) in sources {
            let parsed = parse::parse_file(file, text);
            problems.extend(parsed.problems);
            for rule in parsed.rules {
                if let Some(&first) = names.get(&rule.at.name) {
                    let first = &rules[first].at;
                    problems.push(PolicyError::Invalid {
                        file: rule.at.file.clone(),
                        line: rule.at.line,
                        column: rule.column,
                        message: format!(
                            "rule `{}` is already defined at {}:{}; rule names must be unique",
                            rule.at.name,
                            first.file.display(),
                            first.line
                        ),
                    });
                    continue;
                }
                names.insert(rule.at.name.clone(), rules.len());
                rules.push(rule);
            }
            for budget in parsed.budgets {
                if let Some((first_file, first_line)) = budget_places.get(&budget.agent) {
                    problems.push(PolicyError::Invalid {
                        file: file.clone(),
                        line: budget.line,
                        column: budget.column,
                        message: format!(
                            "the budget for `{}` is already set at {}:{first_line}",
                            budget.agent,
                            first_file.display()
                        ),
                    });
                    continue;
                }
                budget_places.insert(budget.agent.clone(), (file.clone(), budget.line));
                budgets.insert(budget.agent, budget.limit);
            }
        }
        if !problems.is_empty() {
            return Err(PolicyError::from_list(problems));
        }
        Ok(PolicySet::new(rules, default, budgets, sources.len()))
    }

    /// No policy configured: every call is allowed by default (`authorized_by` `default:allow`),
    /// with no rules and no budgets.
    pub fn allow_all() -> PolicySet {
        PolicySet::new(Vec::new(), Effect::Allow, BTreeMap::new(), 0)
    }

    fn new(
        rules: Vec<Rule>,
        default: Effect,
        budgets: BTreeMap<String, f64>,
        files: usize,
    ) -> Self {
        let canonical = json!({
            "format": CANONICAL_FORMAT,
            "default": default.as_str(),
            "rules": rules.iter().map(Rule::canonical).collect::<Vec<_>>(),
            "budgets": budgets.iter().map(|(k, v)| (k.clone(), rule::number(*v))).collect::<serde_json::Map<_, _>>(),
        });
        let bytes = crate::record::canonical_bytes(&canonical)
            .expect("every number in a policy set is finite");
        let digest = crate::record::sha256_hex(&bytes);
        PolicySet { rules, default, budgets, files, digest }
    }

    /// Lower-case hex SHA-256 of the canonical form (RFC 8785 JSON) of every rule in load order,
    /// the default and the budgets. Whitespace, comments, file names and line numbers do not
    /// enter it; anything that can change a decision does.
    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// The first [`DIGEST_PREFIX_LEN`] hex digits of the digest, as `authorized_by` shows them.
    pub fn digest_prefix(&self) -> &str {
        &self.digest[..DIGEST_PREFIX_LEN]
    }

    pub fn default_effect(&self) -> Effect {
        self.default
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }

    /// How many files the set was loaded from.
    pub fn file_count(&self) -> usize {
        self.files
    }

    /// Every rule, in load order.
    pub fn rules(&self) -> impl Iterator<Item = &RuleRef> {
        self.rules.iter().map(|r| &r.at)
    }

    /// The daily budget that applies to `agent`: its own entry, else the `*` entry. When this is
    /// `Some`, [`CallContext::spent_today`] must be given.
    pub fn budget_for(&self, agent: &str) -> Option<Budget> {
        let (key, limit) =
            self.budgets.get_key_value(agent).or_else(|| self.budgets.get_key_value("*"))?;
        Some(Budget { key: key.clone(), limit: *limit })
    }

    /// Decides one call. Every matching rule is considered; the most restrictive effect wins
    /// (deny > hold > allow), the first in load order among equals. No match: the default.
    /// Then a call that is not denied is checked against the agent's budget.
    pub fn evaluate(&self, call: &CallContext<'_>) -> Decision {
        let mut winner: Option<&Rule> = None;
        let call_rules = self.rules.iter().filter(|r| !r.is_output_rule());
        for rule in call_rules.filter(|r| r.matches(call)) {
            if winner.is_none_or(|w| rule.effect > w.effect) {
                winner = Some(rule);
                if rule.effect == Effect::Deny {
                    break;
                }
            }
        }
        let decision = match winner {
            Some(rule) => decide(rule, call.arguments),
            None => self.default_decision(),
        };
        match decision {
            Decision::Deny { .. } => decision,
            _ => self.check_budget(call, decision),
        }
    }

    /// Whether any rule decides results (`output_contains`): only then is a result worth
    /// putting to [`PolicySet::evaluate_result`].
    pub fn has_output_rules(&self) -> bool {
        self.rules.iter().any(Rule::is_output_rule)
    }

    /// Checks that every PII pattern the rules name is one the proxy detects (`known`; empty
    /// when it does not scan), so that a misspelt pattern cannot leave a rule silently inert.
    pub fn check_pii_patterns(&self, known: &[String]) -> Result<(), PolicyError> {
        let mut problems = Vec::new();
        for rule in &self.rules {
            let mut problem = |message: String| {
                problems.push(PolicyError::Invalid {
                    file: rule.at.file.clone(),
                    line: rule.at.line,
                    column: rule.column,
                    message: format!("rule `{}`: {message}", rule.at.name),
                });
            };
            let lists = [
                ("input_contains", &rule.input_contains),
                ("output_contains", &rule.output_contains),
            ];
            for (key, list) in lists {
                let Some(list) = list else { continue };
                if known.is_empty() {
                    problem(format!(
                        "`{key}` looks for PII, but PII scanning is off (`[audit] scan_pii = false`)"
                    ));
                    continue;
                }
                for name in list.iter().filter(|n| *n != "*" && !known.contains(n)) {
                    problem(format!(
                        "`{key}` names `{name}`, which is not a PII pattern this proxy detects ({})",
                        known.join(", ")
                    ));
                }
            }
        }
        if problems.is_empty() { Ok(()) } else { Err(PolicyError::from_list(problems)) }
    }

    /// Decides what the agent gets of a call's result that carries the PII patterns
    /// `output_pii`. Only output rules (`output_contains`) take part; the most restrictive
    /// matching one wins (deny > hold > redact), the first in load order among equals. No match
    /// (or no findings): the result is delivered as it is. There is no default for results.
    pub fn evaluate_result(&self, call: &CallContext<'_>, output_pii: &[String]) -> ResultDecision {
        let mut winner: Option<&Rule> = None;
        for rule in self.rules.iter().filter(|r| r.matches_result(call, output_pii)) {
            if winner.is_none_or(|w| rule.effect > w.effect) {
                winner = Some(rule);
            }
        }
        let Some(rule) = winner else { return ResultDecision::Deliver };
        let at = rule.at.clone();
        match rule.effect {
            Effect::Deny => ResultDecision::Withhold {
                reason: rule.reason.clone().unwrap_or_else(|| {
                    format!("the result was withheld by policy rule `{}`", at.name)
                }),
                rule: at,
            },
            Effect::Hold => ResultDecision::Hold {
                rule: at,
                reason: rule.reason.clone(),
                approvers: rule.approvers.clone(),
                expires_after: rule.expires_after.unwrap_or(DEFAULT_HOLD_EXPIRY),
            },
            // The parser admits only deny, hold and redact on output rules.
            Effect::Redact | Effect::Allow => ResultDecision::Redact { rule: at },
        }
    }

    fn default_decision(&self) -> Decision {
        match self.default {
            // The configuration admits only allow, hold and deny as the default.
            Effect::Allow | Effect::Redact => {
                Decision::Allow { rule: None, cost: 0.0, target: None }
            }
            Effect::Deny => Decision::Deny {
                rule: None,
                reason: "no policy rule allows this call (the default is deny)".to_owned(),
                cost: 0.0,
                target: None,
                budget: None,
            },
            Effect::Hold => Decision::Hold {
                rule: None,
                reason: Some("no policy rule matched (the default is hold)".to_owned()),
                approvers: Vec::new(),
                expires_after: DEFAULT_HOLD_EXPIRY,
                cost: 0.0,
                target: None,
            },
        }
    }

    fn check_budget(&self, call: &CallContext<'_>, decision: Decision) -> Decision {
        let Some(budget) = self.budget_for(call.agent) else {
            return decision;
        };
        let cost = decision.cost();
        let spent = call.spent_today.filter(|s| s.is_finite());
        let reason = match spent {
            Some(spent) if spent + cost <= budget.limit => return decision,
            Some(spent) => format!(
                "daily budget `{}` exceeded: agent `{}` has spent {spent} of {} credits today and this call costs {cost}",
                budget.key, call.agent, budget.limit
            ),
            None => format!(
                "daily budget `{}` of {} credits applies to agent `{}` but today's spending is unknown",
                budget.key, budget.limit, call.agent
            ),
        };
        // The budget decided, not the rule that matched: `rule` is empty, `budget` says why.
        Decision::Deny {
            rule: None,
            reason,
            cost,
            target: decision.target().map(str::to_owned),
            budget: Some(BudgetExceeded {
                budget: budget.key,
                limit: budget.limit,
                spent_today: spent,
                cost,
            }),
        }
    }
}

/// The decision of the rule that won.
fn decide(rule: &Rule, arguments: &Value) -> Decision {
    let at = Some(rule.at.clone());
    let target = rule.target.as_deref().and_then(|pointer| rule::target_of(arguments, pointer));
    match rule.effect {
        // Call rules are never `redact` (the parser admits it only with `output_contains`).
        Effect::Allow | Effect::Redact => Decision::Allow { rule: at, cost: rule.cost, target },
        Effect::Deny => Decision::Deny {
            rule: at,
            reason: rule
                .reason
                .clone()
                .unwrap_or_else(|| format!("denied by policy rule `{}`", rule.at.name)),
            cost: rule.cost,
            target,
            budget: None,
        },
        Effect::Hold => Decision::Hold {
            rule: at,
            reason: rule.reason.clone(),
            approvers: rule.approvers.clone(),
            expires_after: rule.expires_after.unwrap_or(DEFAULT_HOLD_EXPIRY),
            cost: rule.cost,
            target,
        },
    }
}
