//! One policy file from TOML text to checked rules and budgets. Every problem is reported with
//! the file, line and column it is about; a file reports all its problems, not just the first.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use toml::Spanned;

use super::rule::{Comparison, Glob, Op, Predicate, Rule};
use super::{Effect, PolicyError, RuleRef};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<Spanned<RawRule>>,
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

pub(super) const OPERATORS: &str =
    "equals, not_equals, one_of, not_one_of, matches, not_matches, gt, gte, lt, lte, absent";

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
    for entry in raw.rule {
        let mut problems = Vec::new();
        if let Some(rule) = source.rule(entry, &mut problems) {
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

    fn rule(&self, entry: Spanned<RawRule>, problems: &mut Vec<PolicyError>) -> Option<Rule> {
        let raw = entry.into_inner();
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
        let effect = match raw.effect.get_ref().parse::<Effect>() {
            Ok(effect) => effect,
            Err(()) => {
                problem(
                    raw.effect.span(),
                    format!(
                        "unknown effect `{}`; use \"allow\", \"deny\" or \"hold\"",
                        raw.effect.get_ref().escape_debug()
                    ),
                );
                Effect::Deny
            }
        };
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
            && effect == Effect::Allow
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
            if effect != Effect::Hold {
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
            if effect != Effect::Hold {
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
        if problems.len() > before {
            return None;
        }
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

/// A finite TOML integer or float.
fn number(value: &toml::Value) -> Option<f64> {
    match value {
        toml::Value::Integer(n) => Some(*n as f64),
        toml::Value::Float(x) if x.is_finite() => Some(*x),
        _ => None,
    }
}

/// `"pattern"` or `["pattern", …]`, at least one, none empty.
fn patterns(value: &toml::Value) -> Result<Vec<Glob>, String> {
    let list = match value {
        toml::Value::String(s) => vec![s.as_str()],
        toml::Value::Array(items) if !items.is_empty() => items
            .iter()
            .map(|item| item.as_str().ok_or(()))
            .collect::<Result<_, _>>()
            .map_err(|()| "must be a pattern or a list of patterns (strings)".to_owned())?,
        toml::Value::Array(_) => return Err("must list at least one pattern".to_owned()),
        _ => return Err("must be a pattern or a list of patterns (strings)".to_owned()),
    };
    if list.iter().any(|p| p.is_empty()) {
        return Err("has an empty pattern; use \"*\" to match any name".to_owned());
    }
    Ok(list.into_iter().map(|p| Glob(p.to_owned())).collect())
}

type Problem = (Range<usize>, String);

/// One `[[rule.when]]` table: `arg` and one or more operators, each a predicate.
fn predicates(
    entry: Spanned<BTreeMap<Spanned<String>, Spanned<toml::Value>>>,
) -> Result<Vec<Predicate>, Problem> {
    let span = entry.span();
    let (args, operators): (Vec<_>, Vec<_>) =
        entry.into_inner().into_iter().partition(|(key, _)| key.get_ref() == "arg");
    let Some((_, arg)) = args.into_iter().next() else {
        return Err((
            span,
            "a `when` entry needs `arg`, a JSON pointer such as \"/amount\"".into(),
        ));
    };
    let pointer = match arg.get_ref() {
        toml::Value::String(pointer) => {
            check_pointer(pointer).map_err(|m| (arg.span(), format!("`arg` {m}")))?;
            pointer.clone()
        }
        _ => return Err((arg.span(), "`arg` must be a string, a JSON pointer".into())),
    };
    if operators.is_empty() {
        return Err((
            span,
            format!("the `when` entry for `{pointer}` has no operator; use one of {OPERATORS}"),
        ));
    }
    operators
        .into_iter()
        .map(|(key, value)| {
            let key_name = key.get_ref().as_str();
            match operator(key_name, value.get_ref()) {
                Some(Ok(op)) => Ok(Predicate { arg: pointer.clone(), op }),
                Some(Err(message)) => Err((value.span(), format!("`{key_name}` {message}"))),
                None => Err((
                    key.span(),
                    format!(
                        "unknown operator `{}`; use one of {OPERATORS}",
                        key_name.escape_debug()
                    ),
                )),
            }
        })
        .collect()
}

/// The operator named `key` with its operand, or `None` when there is no such operator.
fn operator(key: &str, value: &toml::Value) -> Option<Result<Op, String>> {
    let comparison = |comparison| {
        number(value).map(|bound| Op::Compare(comparison, bound)).ok_or("must be a number".into())
    };
    let list = || match value {
        toml::Value::Array(items) => items.iter().map(json).collect::<Result<Vec<_>, _>>(),
        _ => Err("must be a list of values".to_owned()),
    };
    let regex = || match value {
        toml::Value::String(pattern) => regex::Regex::new(pattern).map_err(regex_problem),
        _ => Err("must be a regular expression (a string)".to_owned()),
    };
    Some(match key {
        "equals" => json(value).map(Op::Equals),
        "not_equals" => json(value).map(Op::NotEquals),
        "one_of" => list().map(Op::OneOf),
        "not_one_of" => list().map(Op::NotOneOf),
        "matches" => regex().map(Op::Matches),
        "not_matches" => regex().map(Op::NotMatches),
        "gt" => comparison(Comparison::Gt),
        "gte" => comparison(Comparison::Gte),
        "lt" => comparison(Comparison::Lt),
        "lte" => comparison(Comparison::Lte),
        "absent" => value.as_bool().map(Op::Absent).ok_or_else(|| "must be true or false".into()),
        _ => return None,
    })
}

/// The regex crate's message is several lines with a caret under the fault; the last line says
/// what is wrong.
fn regex_problem(error: regex::Error) -> String {
    let text = error.to_string();
    let last = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("invalid");
    let what = last.trim().trim_start_matches("error: ").trim_end_matches('.');
    // House style: messages are lower-case ("Compiled regex exceeds…" → "compiled regex…").
    let mut chars = what.chars();
    let what = match (chars.next(), chars.next()) {
        (Some(first), Some(second)) if second.is_lowercase() => {
            first.to_lowercase().chain(what[first.len_utf8()..].chars()).collect()
        }
        _ => what.to_owned(),
    };
    format!("is not a valid regular expression: {what}")
}

fn json(value: &toml::Value) -> Result<Value, String> {
    Ok(match value {
        toml::Value::String(s) => Value::String(s.clone()),
        toml::Value::Integer(n) => Value::from(*n),
        toml::Value::Float(x) if x.is_finite() => Value::from(*x),
        toml::Value::Float(_) => return Err("cannot compare with nan or inf".into()),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Array(items) => {
            Value::Array(items.iter().map(json).collect::<Result<_, _>>()?)
        }
        toml::Value::Table(table) => Value::Object(
            table.iter().map(|(k, v)| Ok((k.clone(), json(v)?))).collect::<Result<_, String>>()?,
        ),
        toml::Value::Datetime(_) => {
            return Err("cannot compare with a TOML date; write it as a string".into());
        }
    })
}

/// A JSON pointer (RFC 6901): empty (the whole arguments) or `/`-separated, `~` only as `~0`
/// or `~1`.
fn check_pointer(pointer: &str) -> Result<(), String> {
    if !pointer.is_empty() && !pointer.starts_with('/') {
        return Err(format!(
            "must be a JSON pointer starting with `/`, such as \"/{}\"",
            pointer.escape_debug()
        ));
    }
    let mut chars = pointer.chars();
    while let Some(c) = chars.next() {
        if c == '~' && !matches!(chars.next(), Some('0' | '1')) {
            return Err(
                "has a `~` not followed by 0 or 1 (write `~0` for `~`, `~1` for `/`)".into()
            );
        }
    }
    Ok(())
}

/// `"90s"`, `"30m"`, `"4h"`, `"1d"`, `"1h30m"`: at least one number-unit pair, more than zero.
fn parse_duration(text: &str) -> Option<Duration> {
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return None,
        };
        let n: u64 = digits.parse().ok()?;
        total = total.checked_add(n.checked_mul(unit)?)?;
        digits.clear();
    }
    (digits.is_empty() && total > 0).then(|| Duration::from_secs(total))
}
