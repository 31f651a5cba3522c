//! One policy file from TOML text to checked rules and budgets. Every problem is reported with
//! the file, line and column it is about; a file reports all its problems, not just the first.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::operand::{check_pointer, number, parse_duration, patterns, predicates};
use super::rule::{Glob, Rule};
use super::{Effect, PolicyError, RuleRef};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<RawRule>,
    #[serde(default)]
    budgets: BTreeMap<Spanned<String>, Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Spanned<String>,
    effect: Spanned<String>,
    agent: Option<Spanned<toml::Value>>,
    server: Option<Spanned<toml::Value>>,
    tool: Option<Spanned<toml::Value>>,
    #[serde(default)]
    when: Vec<Spanned<BTreeMap<Spanned<String>, Spanned<toml::Value>>>>,
    reason: Option<Spanned<String>>,
    cost: Option<Spanned<toml::Value>>,
    target: Option<Spanned<String>>,
    approvers: Option<Spanned<Vec<Spanned<String>>>>,
    expires_after: Option<Spanned<String>>,
    input_contains: Option<Spanned<toml::Value>>,
    output_contains: Option<Spanned<toml::Value>>,
}

/// A budget entry as written, with where, for duplicate checks across files.
pub(super) struct RawBudget {
    pub agent: String,
    pub limit: f64,
    pub line: usize,
    pub column: usize,
}

/// What a file contributed: the rules and budgets that are valid, and the problems found.
#[derive(Default)]
pub(super) struct ParsedFile {
    pub rules: Vec<Rule>,
    pub budgets: Vec<RawBudget>,
    pub problems: Vec<PolicyError>,
}

pub(super) fn parse_file(file: &Path, text: &str) -> ParsedFile {
    let source = Source { file, text };
    let mut parsed = ParsedFile::default();
    let raw: RawFile = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(error) => {
            parsed.problems.push(source.toml_error(&error));
            return parsed;
        }
    };
    for raw in raw.rule {
        let mut problems = Vec::new();
        if let Some(rule) = source.rule(raw, &mut problems) {
            parsed.rules.push(rule);
        }
        parsed.problems.append(&mut problems);
    }
    for (agent, limit) in raw.budgets {
        match source.budget(&agent, &limit) {
            Ok(budget) => parsed.budgets.push(budget),
            Err(problem) => parsed.problems.push(problem),
        }
    }
    parsed
}

/// `"pattern"` or `["pattern", …]` of PII pattern names, or `"*"` for any pattern. Whether the
/// names are patterns the proxy detects is checked where the scanner is known.
fn pii_names(value: &toml::Value) -> Result<Vec<String>, String> {
    const SHAPE: &str = "must be a PII pattern name (such as \"email\"), a list of them, or \"*\"";
    let names: Vec<String> = match value {
        toml::Value::String(name) => vec![name.clone()],
        toml::Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|item| item.as_str().map(str::to_owned).ok_or(()))
            .collect::<Result<_, _>>()
            .map_err(|()| SHAPE.to_owned())?,
        toml::Value::Array(_) => return Err("must list at least one PII pattern".to_owned()),
        _ => return Err(SHAPE.to_owned()),
    };
    match names.iter().find(|n| *n != "*" && !is_valid_name(n)) {
        Some(bad) => {
            Err(format!("names `{}`, which is not a PII pattern name", bad.escape_debug()))
        }
        None => Ok(names),
    }
}

/// Rule names appear in `authorized_by` (`policy:<name>@<digest>`), so they keep to a set of
/// characters that needs no quoting there.
pub(super) fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

struct Source<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Source<'_> {
    /// 1-based line and column (in characters) of a byte offset.
    fn position(&self, offset: usize) -> (usize, usize) {
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }

    fn error(&self, span: Range<usize>, message: impl Into<String>) -> PolicyError {
        let (line, column) = self.position(span.start);
        PolicyError::Invalid { file: self.file.to_owned(), line, column, message: message.into() }
    }

    fn toml_error(&self, error: &toml::de::Error) -> PolicyError {
        let mut message = error.message().lines().collect::<Vec<_>>().join("; ");
        if message.starts_with("unknown field `default`") {
            message = "`default` is not set in a policy file but in mcp-ledger.toml \
                       (`[policy] default`)"
                .to_owned();
        }
        match error.span() {
            Some(span) => self.error(span, message),
            None => PolicyError::Unplaced { file: self.file.to_owned(), message },
        }
    }

    fn rule(&self, raw: RawRule, problems: &mut Vec<PolicyError>) -> Option<Rule> {
        let name = raw.name.get_ref().clone();
        let before = problems.len();
        let mut problem = |span: Range<usize>, message: String| {
            problems.push(self.error(span, format!("rule `{}`: {message}", name.escape_debug())));
        };
        if !is_valid_name(&name) {
            problem(
                raw.name.span(),
                "a rule name may contain only letters, digits, `.`, `_` and `-`".to_owned(),
            );
        }
        // `None` when the effect is unknown: then nothing that depends on it is reported.
        let effect = raw.effect.get_ref().parse::<Effect>().ok();
        if effect.is_none() {
            problem(
                raw.effect.span(),
                format!(
                    "unknown effect `{}`; use \"allow\", \"deny\", \"hold\" or (with \
                     `output_contains`) \"redact\"",
                    raw.effect.get_ref().escape_debug()
                ),
            );
        }
        let not_hold = effect.is_some_and(|e| e != Effect::Hold);
        let mut pii_list = |key: &str, value: Option<Spanned<toml::Value>>| {
            let value = value?;
            match pii_names(value.get_ref()) {
                Ok(names) => Some(names),
                Err(message) => {
                    problem(value.span(), format!("`{key}` {message}"));
                    None
                }
            }
        };
        let input_contains = pii_list("input_contains", raw.input_contains.clone());
        let output_contains = pii_list("output_contains", raw.output_contains.clone());
        match (&raw.output_contains, effect) {
            (Some(value), Some(Effect::Allow)) => problem(
                value.span(),
                "a rule with `output_contains` decides what the agent gets of a result: its \
                 effect is \"deny\", \"hold\" or \"redact\", not \"allow\""
                    .to_owned(),
            ),
            (None, Some(Effect::Redact)) => problem(
                raw.effect.span(),
                "\"redact\" applies to results: give the rule `output_contains`, the PII \
                 patterns to redact from what the agent receives"
                    .to_owned(),
            ),
            _ => {}
        }
        if raw.output_contains.is_some() {
            for (key, span) in [
                ("cost", raw.cost.as_ref().map(Spanned::span)),
                ("target", raw.target.as_ref().map(Spanned::span)),
            ] {
                if let Some(span) = span {
                    problem(
                        span,
                        format!(
                            "`{key}` belongs to the call, not to a rule on its result \
                             (`output_contains`)"
                        ),
                    );
                }
            }
        }
        let mut globs = |key: &str, value: Option<Spanned<toml::Value>>| match value {
            None => vec![Glob("*".to_owned())],
            Some(value) => patterns(value.get_ref()).unwrap_or_else(|message| {
                problem(value.span(), format!("`{key}` {message}"));
                Vec::new()
            }),
        };
        let (agent, server, tool) =
            (globs("agent", raw.agent), globs("server", raw.server), globs("tool", raw.tool));
        let mut when = Vec::new();
        for entry in raw.when {
            match predicates(entry) {
                Ok(mut list) => when.append(&mut list),
                Err((span, message)) => problem(span, message),
            }
        }
        if let Some(reason) = &raw.reason
            && effect == Some(Effect::Allow)
        {
            problem(
                reason.span(),
                "`reason` is given to the agent or operator only for \"deny\" and \"hold\"; \
                 use a comment to explain an allow"
                    .to_owned(),
            );
        }
        let cost = match raw.cost {
            None => 0.0,
            Some(cost) => number(cost.get_ref()).filter(|c| *c >= 0.0).unwrap_or_else(|| {
                problem(cost.span(), "`cost` must be a number of credits, 0 or more".to_owned());
                0.0
            }),
        };
        let target = raw.target.and_then(|target| match check_pointer(target.get_ref()) {
            Ok(()) => Some(target.into_inner()),
            Err(message) => {
                problem(target.span(), format!("`target` {message}"));
                None
            }
        });
        let mut approvers = Vec::new();
        if let Some(list) = raw.approvers {
            if not_hold {
                problem(list.span(), "`approvers` applies only to `effect = \"hold\"`".to_owned());
            }
            for approver in list.into_inner() {
                if approver.get_ref().trim().is_empty() {
                    problem(approver.span(), "an approver name is empty".to_owned());
                }
                approvers.push(approver.into_inner());
            }
        }
        let expires_after = raw.expires_after.and_then(|value| {
            if not_hold {
                problem(
                    value.span(),
                    "`expires_after` applies only to `effect = \"hold\"`".to_owned(),
                );
            }
            parse_duration(value.get_ref()).or_else(|| {
                problem(
                    value.span(),
                    format!(
                        "`expires_after` must be a duration such as \"90s\", \"30m\", \"4h\", \
                         \"1d\" or \"1h30m\", not \"{}\"",
                        value.get_ref().escape_debug()
                    ),
                );
                None
            })
        });
        let reason = raw.reason.map(Spanned::into_inner);
        let effect = effect.filter(|_| problems.len() == before)?;
        let (line, column) = self.position(raw.name.span().start);
        Some(Rule {
            at: RuleRef { name, file: self.file.to_owned(), line },
            column,
            effect,
            agent,
            server,
            tool,
            when,
            reason,
            cost,
            target,
            approvers,
            expires_after,
            input_contains,
            output_contains,
        })
    }

    fn budget(
        &self,
        agent: &Spanned<String>,
        limit: &Spanned<toml::Value>,
    ) -> Result<RawBudget, PolicyError> {
        let name = agent.get_ref();
        if name != "*" && !is_valid_name(name) {
            return Err(self.error(
                agent.span(),
                format!(
                    "budget for `{}`: give an agent name (letters, digits, `.`, `_`, `-`) or \"*\"",
                    name.escape_debug()
                ),
            ));
        }
        let Some(value) = number(limit.get_ref()).filter(|v| *v >= 0.0) else {
            return Err(self.error(
                limit.span(),
                format!("budget for `{name}` must be a number of credits, 0 or more"),
            ));
        };
        let (line, column) = self.position(agent.span().start);
        Ok(RawBudget { agent: name.clone(), limit: value, line, column })
    }
}
