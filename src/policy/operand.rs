//! The values inside a rule: name patterns, `when` predicates and their operands, JSON
//! pointers and durations. Each check returns the problem as text; the caller places it.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use serde_json::Value;
use toml::Spanned;

use super::rule::{Comparison, Glob, Op, Predicate};

pub(super) const OPERATORS: &str =
    "equals, not_equals, one_of, not_one_of, matches, not_matches, gt, gte, lt, lte, absent";

/// A finite TOML integer or float.
pub(super) fn number(value: &toml::Value) -> Option<f64> {
    match value {
        toml::Value::Integer(n) => Some(*n as f64),
        toml::Value::Float(x) if x.is_finite() => Some(*x),
        _ => None,
    }
}

/// `"pattern"` or `["pattern", …]`, at least one, none empty.
pub(super) fn patterns(value: &toml::Value) -> Result<Vec<Glob>, String> {
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

pub(super) type Problem = (Range<usize>, String);

/// One `[[rule.when]]` table: `arg` and one or more operators, each a predicate.
pub(super) fn predicates(
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
pub(super) fn check_pointer(pointer: &str) -> Result<(), String> {
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
pub fn parse_duration(text: &str) -> Option<Duration> {
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
