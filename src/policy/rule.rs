//! A compiled rule: what it matches (globs on agent, server and tool; predicates on the
//! arguments), what it decides, and its canonical form for the digest.

use std::time::Duration;

use regex::Regex;
use serde_json::{Value, json};

use super::{CallContext, Effect, RuleRef};

/// A rule as loaded: every value checked, every regex compiled.
#[derive(Debug, Clone)]
pub(super) struct Rule {
    pub at: RuleRef,
    /// Column of the rule's name, for messages about the rule as a whole.
    pub column: usize,
    pub effect: Effect,
    pub agent: Vec<Glob>,
    pub server: Vec<Glob>,
    pub tool: Vec<Glob>,
    pub when: Vec<Predicate>,
    pub reason: Option<String>,
    pub cost: f64,
    /// JSON pointer into the arguments naming what the call acts on.
    pub target: Option<String>,
    pub approvers: Vec<String>,
    pub expires_after: Option<Duration>,
    /// PII pattern names (or `*`) of which the arguments must carry at least one.
    pub input_contains: Option<Vec<String>>,
    /// Makes this an output rule, decided on the result: PII pattern names (or `*`) of which
    /// the result must carry at least one.
    pub output_contains: Option<Vec<String>>,
}

impl Rule {
    /// Whether this rule decides results rather than calls.
    pub fn is_output_rule(&self) -> bool {
        self.output_contains.is_some()
    }

    pub fn matches(&self, call: &CallContext<'_>) -> bool {
        any_matches(&self.agent, call.agent)
            && any_matches(&self.server, call.server)
            && any_matches(&self.tool, call.tool)
            && self.when.iter().all(|p| p.holds(call.arguments))
            && self.input_contains.as_deref().is_none_or(|wanted| carries(wanted, call.input_pii))
    }

    /// Whether this output rule applies to a result carrying the patterns `output_pii`.
    pub fn matches_result(&self, call: &CallContext<'_>, output_pii: &[String]) -> bool {
        self.output_contains.as_deref().is_some_and(|wanted| carries(wanted, output_pii))
            && self.matches(call)
    }

    /// Everything that changes what the rule decides, and nothing else: no file, line or
    /// comment, so reformatting a file or moving a rule keeps the digest.
    pub fn canonical(&self) -> Value {
        let globs = |globs: &[Glob]| globs.iter().map(|g| g.0.clone()).collect::<Vec<_>>();
        let mut canonical = json!({
            "name": self.at.name,
            "effect": self.effect.as_str(),
            "agent": globs(&self.agent),
            "server": globs(&self.server),
            "tool": globs(&self.tool),
            "when": self.when.iter().map(Predicate::canonical).collect::<Vec<_>>(),
            "reason": self.reason,
            "cost": number(self.cost),
            "target": self.target,
            "approvers": self.approvers,
            "expires_after_secs": self.expires_after.map(|d| d.as_secs()),
        });
        // Only when set, so that the digests of rules written before these keys existed stay.
        let fields = canonical.as_object_mut().expect("built as an object");
        for (key, list) in
            [("input_contains", &self.input_contains), ("output_contains", &self.output_contains)]
        {
            if let Some(list) = list {
                fields.insert(key.to_owned(), json!(list));
            }
        }
        canonical
    }
}

/// Whether the patterns `found` include one of `wanted` (`*`: any pattern at all).
fn carries(wanted: &[String], found: &[String]) -> bool {
    wanted.iter().any(|w| if w == "*" { !found.is_empty() } else { found.contains(w) })
}

fn any_matches(globs: &[Glob], text: &str) -> bool {
    globs.iter().any(|g| g.matches(text))
}

/// A name pattern: `*` matches any run of characters (including none), `?` exactly one;
/// everything else matches itself, case-sensitively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Glob(pub String);

impl Glob {
    pub fn matches(&self, text: &str) -> bool {
        let pattern = self.0.as_str();
        if pattern == "*" {
            return true;
        }
        if !pattern.contains(['*', '?']) {
            return pattern == text;
        }
        // Bytes are characters when both are ASCII, as names nearly always are: no allocation
        // on the hot path. Otherwise `?` must see whole characters.
        if pattern.is_ascii() && text.is_ascii() {
            wildcard(pattern.as_bytes(), text.as_bytes(), b'*', b'?')
        } else {
            let pattern: Vec<char> = pattern.chars().collect();
            let text: Vec<char> = text.chars().collect();
            wildcard(&pattern, &text, '*', '?')
        }
    }
}

/// Greedy matching with one backtrack point (the last `*` seen): linear in practice, never
/// exponential.
fn wildcard<T: Copy + PartialEq>(pattern: &[T], text: &[T], star: T, any: T) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(&c) if c == star => {
                backtrack = Some((p, t));
                p += 1;
            }
            Some(&c) if c == any || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match backtrack {
                Some((star_p, star_t)) => {
                    p = star_p + 1;
                    t = star_t + 1;
                    backtrack = Some((star_p, star_t + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == star)
}

/// One test on the arguments: the value at `arg` (a JSON pointer) passes `op`.
#[derive(Debug, Clone)]
pub(super) struct Predicate {
    pub arg: String,
    pub op: Op,
}

#[derive(Debug, Clone)]
pub(super) enum Op {
    Equals(Value),
    NotEquals(Value),
    OneOf(Vec<Value>),
    NotOneOf(Vec<Value>),
    Matches(Regex),
    NotMatches(Regex),
    Compare(Comparison, f64),
    Absent(bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Comparison {
    Gt,
    Gte,
    Lt,
    Lte,
}

impl Comparison {
    pub fn key(self) -> &'static str {
        match self {
            Comparison::Gt => "gt",
            Comparison::Gte => "gte",
            Comparison::Lt => "lt",
            Comparison::Lte => "lte",
        }
    }

    fn holds(self, left: f64, right: f64) -> bool {
        match self {
            Comparison::Gt => left > right,
            Comparison::Gte => left >= right,
            Comparison::Lt => left < right,
            Comparison::Lte => left <= right,
        }
    }
}

impl Op {
    pub fn key(&self) -> &'static str {
        match self {
            Op::Equals(_) => "equals",
            Op::NotEquals(_) => "not_equals",
            Op::OneOf(_) => "one_of",
            Op::NotOneOf(_) => "not_one_of",
            Op::Matches(_) => "matches",
            Op::NotMatches(_) => "not_matches",
            Op::Compare(comparison, _) => comparison.key(),
            Op::Absent(_) => "absent",
        }
    }

    /// The test on one scalar (or one element of an array value).
    fn holds_for(&self, value: &Value) -> bool {
        match self {
            Op::Equals(expected) => json_eq(expected, value),
            Op::NotEquals(expected) => !json_eq(expected, value),
            Op::OneOf(options) => options.iter().any(|o| json_eq(o, value)),
            Op::NotOneOf(options) => !options.iter().any(|o| json_eq(o, value)),
            Op::Matches(regex) => value.as_str().is_some_and(|s| regex.is_match(s)),
            // A value that is not a string does not match, so it passes `not_matches`: a hold
            // or deny guarded this way is not escaped by sending a number or an object.
            Op::NotMatches(regex) => !value.as_str().is_some_and(|s| regex.is_match(s)),
            Op::Compare(comparison, bound) => {
                as_number(value).is_some_and(|n| comparison.holds(n, *bound))
            }
            Op::Absent(_) => unreachable!("`absent` is decided before looking at a value"),
        }
    }
}

impl Predicate {
    pub fn holds(&self, arguments: &Value) -> bool {
        let value = arguments.pointer(&self.arg);
        match (&self.op, value) {
            (Op::Absent(absent), value) => value.is_none() == *absent,
            (_, None) => false,
            (Op::Equals(_) | Op::NotEquals(_), Some(value)) => self.op.holds_for(value),
            // Every other operator tests the elements of an array: one is enough.
            (op, Some(Value::Array(items))) => items.iter().any(|item| op.holds_for(item)),
            (op, Some(value)) => op.holds_for(value),
        }
    }

    fn canonical(&self) -> Value {
        let value = match &self.op {
            Op::Equals(v) | Op::NotEquals(v) => v.clone(),
            Op::OneOf(vs) | Op::NotOneOf(vs) => Value::Array(vs.clone()),
            Op::Matches(r) | Op::NotMatches(r) => Value::String(r.as_str().to_owned()),
            Op::Compare(_, bound) => number(*bound),
            Op::Absent(absent) => Value::Bool(*absent),
        };
        json!({ "arg": self.arg, "op": self.op.key(), "value": value })
    }
}

/// JSON equality where numbers compare by value (`500` equals `500.0`).
fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_i64(), y.as_i64()) {
            (Some(x), Some(y)) => x == y,
            _ => match (x.as_u64(), y.as_u64()) {
                (Some(x), Some(y)) => x == y,
                _ => x.as_f64() == y.as_f64(),
            },
        },
        (Value::Array(xs), Value::Array(ys)) => {
            xs.len() == ys.len() && xs.iter().zip(ys).all(|(x, y)| json_eq(x, y))
        }
        (Value::Object(xs), Value::Object(ys)) => {
            xs.len() == ys.len() && xs.iter().all(|(k, x)| ys.get(k).is_some_and(|y| json_eq(x, y)))
        }
        _ => a == b,
    }
}

/// A number, or a string holding a finite decimal number (agents send amounts either way).
fn as_number(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|n| n.is_finite()),
        _ => None,
    }
}

/// A finite number as JSON: an integer when it is one (and fits below 2^53), so records and
/// digests read `5`, not `5.0`.
pub(super) fn number(x: f64) -> Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if x.fract() == 0.0 && x.abs() < EXACT {
        #[allow(clippy::cast_possible_truncation)] // integral and below 2^53: exact
        Value::from(x as i64)
    } else {
        Value::from(x)
    }
}

/// The value at `pointer` as the record's target: strings as they are, anything else as JSON.
pub(super) fn target_of(arguments: &Value, pointer: &str) -> Option<String> {
    arguments.pointer(pointer).map(|value| match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}
