//! Evaluation: globs, every operator, precedence, the default, targets, loading a directory.
//! Budgets, `authorized_by`, records and the digest are in `tests/decisions.rs`, load errors in
//! `tests/errors.rs`, the shipped examples in `tests/examples.rs`.

mod decisions;
mod errors;
mod examples;
mod pii;

use serde_json::json;

use super::rule::Glob;
use super::*;

const FILE: &str = "policies/test.toml";

fn load(text: &str) -> PolicySet {
    load_with(Effect::Allow, text)
}

fn load_with(default: Effect, text: &str) -> PolicySet {
    PolicySet::from_sources(&[(PathBuf::from(FILE), text.to_owned())], default)
        .unwrap_or_else(|e| panic!("policy does not load:\n{e}"))
}

fn call<'a>(tool: &'a str, arguments: &'a Value) -> CallContext<'a> {
    CallContext {
        agent: "support-bot",
        server: "customer-ops",
        tool,
        arguments,
        spent_today: None,
        input_pii: &[],
    }
}

/// The name of the rule that decided, or `-` for the default.
fn decided_by(set: &PolicySet, call: &CallContext<'_>) -> (Effect, String) {
    let decision = set.evaluate(call);
    (decision.effect(), decision.rule().map_or("-".to_owned(), |r| r.name.clone()))
}

/// A set with one deny rule on tool `t` whose only predicate is `predicate` (a TOML inline
/// table body), and whether it denies `arguments`.
fn holds(predicate: &str, arguments: Value) -> bool {
    let set = load(&format!(
        "[[rule]]\nname = \"r\"\neffect = \"deny\"\ntool = \"t\"\nwhen = [{{ {predicate} }}]\n"
    ));
    set.evaluate(&call("t", &arguments)).effect() == Effect::Deny
}

#[test]
fn globs_match_star_and_question_mark() {
    let glob = |p: &str, t: &str| Glob(p.to_owned()).matches(t);
    assert!(glob("*", ""));
    assert!(glob("*", "anything at all"));
    assert!(glob("send_email", "send_email"));
    assert!(!glob("send_email", "send_emails"));
    assert!(!glob("send_email", "Send_email"), "case-sensitive");
    assert!(glob("send_*", "send_email"));
    assert!(glob("send_*", "send_"));
    assert!(glob("*_email", "send_email"));
    assert!(glob("*email*", "bulk_email_send"));
    assert!(glob("a*b*c", "axxbyybzc"));
    assert!(!glob("a*b*c", "axxbyyd"));
    assert!(!glob("a*b*c", "axxcyyc"));
    assert!(glob("a*bc", "abcbc"), "backtracks past an early partial match");
    assert!(glob("db-?", "db-1"));
    assert!(!glob("db-?", "db-10"));
    assert!(!glob("db-?", "db-"));
    assert!(glob("caf?", "café"), "? is one character, not one byte");
    assert!(glob("**", "x"));
    assert!(!glob("", "x"));
}

#[test]
fn agent_server_and_tool_patterns_all_have_to_match() {
    let set = load(
        r#"
        [[rule]]
        name = "r"
        effect = "deny"
        agent = ["support-*", "ops"]
        server = "customer-?ps"
        tool = "issue_*"
        "#,
    );
    let args = json!({});
    let with = |agent, server, tool| {
        let call = CallContext {
            agent,
            server,
            tool,
            arguments: &args,
            spent_today: None,
            input_pii: &[],
        };
        set.evaluate(&call).effect()
    };
    assert_eq!(with("support-bot", "customer-ops", "issue_refund"), Effect::Deny);
    assert_eq!(with("ops", "customer-ops", "issue_refund"), Effect::Deny);
    assert_eq!(with("sales-bot", "customer-ops", "issue_refund"), Effect::Allow);
    assert_eq!(with("support-bot", "billing", "issue_refund"), Effect::Allow);
    assert_eq!(with("support-bot", "customer-ops", "lookup_customer"), Effect::Allow);
}

#[test]
fn equals_compares_json_values_and_numbers_by_value() {
    assert!(holds(r#"arg = "/to", equals = "a@example.com""#, json!({ "to": "a@example.com" })));
    assert!(!holds(r#"arg = "/to", equals = "a@example.com""#, json!({ "to": "b@example.com" })));
    assert!(holds(r#"arg = "/amount", equals = 500"#, json!({ "amount": 500.0 })));
    assert!(holds(r#"arg = "/amount", equals = 500.0"#, json!({ "amount": 500 })));
    assert!(!holds(r#"arg = "/amount", equals = 500"#, json!({ "amount": "500" })), "type matters");
    assert!(holds(r#"arg = "/dry_run", equals = false"#, json!({ "dry_run": false })));
    assert!(holds(r#"arg = "/to", equals = ["a", 1]"#, json!({ "to": ["a", 1.0] })));
    assert!(!holds(r#"arg = "/to", equals = "a""#, json!({ "to": ["a"] })), "whole value");
    assert!(holds(r#"arg = "/o", equals = { k = 1 }"#, json!({ "o": { "k": 1 } })));
    assert!(!holds(r#"arg = "/o", equals = { k = 1 }"#, json!({ "o": { "k": 1, "j": 2 } })));
    assert!(!holds(r#"arg = "/to", equals = "x""#, json!({})), "absent never equals");
}

#[test]
fn not_equals_needs_a_present_value() {
    assert!(holds(r#"arg = "/currency", not_equals = "USD""#, json!({ "currency": "EUR" })));
    assert!(!holds(r#"arg = "/currency", not_equals = "USD""#, json!({ "currency": "USD" })));
    assert!(!holds(r#"arg = "/currency", not_equals = "USD""#, json!({})));
}

#[test]
fn one_of_and_not_one_of_test_scalars_and_any_array_element() {
    let one_of = r#"arg = "/env", one_of = ["prod", "production"]"#;
    assert!(holds(one_of, json!({ "env": "prod" })));
    assert!(!holds(one_of, json!({ "env": "staging" })));
    assert!(holds(one_of, json!({ "env": ["staging", "production"] })));
    assert!(!holds(one_of, json!({ "env": [] })));
    assert!(!holds(one_of, json!({})));
    assert!(holds(r#"arg = "/n", one_of = [1, 2]"#, json!({ "n": 2.0 })));

    let not_one_of = r#"arg = "/to", not_one_of = ["a@example.com", "b@example.com"]"#;
    assert!(holds(not_one_of, json!({ "to": "eve@evil.example" })));
    assert!(!holds(not_one_of, json!({ "to": "a@example.com" })));
    assert!(holds(not_one_of, json!({ "to": ["a@example.com", "eve@evil.example"] })));
    assert!(!holds(not_one_of, json!({ "to": ["a@example.com", "b@example.com"] })));
    assert!(!holds(not_one_of, json!({})));
}

#[test]
fn matches_and_not_matches_apply_to_strings_and_array_elements() {
    let matches = r#"arg = "/sql", matches = '(?i)\bdrop\s+table\b'"#;
    assert!(holds(matches, json!({ "sql": "DROP TABLE users" })));
    assert!(holds(matches, json!({ "sql": "select 1; drop table users" })), "unanchored");
    assert!(!holds(matches, json!({ "sql": "select drop_table from t" })));
    assert!(!holds(matches, json!({ "sql": 42 })), "not a string: no match");
    assert!(holds(matches, json!({ "sql": ["select 1", "drop table t"] })));
    assert!(!holds(matches, json!({})));

    let outside = r#"arg = "/to", not_matches = '@example\.com$'"#;
    assert!(holds(outside, json!({ "to": "eve@evil.example" })));
    assert!(!holds(outside, json!({ "to": "dana@example.com" })));
    assert!(holds(outside, json!({ "to": ["dana@example.com", "eve@evil.example"] })));
    assert!(!holds(outside, json!({ "to": ["dana@example.com"] })));
    assert!(holds(outside, json!({ "to": { "address": "dana@example.com" } })), "not a string");
    assert!(!holds(outside, json!({})), "absent");
}

#[test]
fn comparisons_take_numbers_and_numeric_strings() {
    for (op, results) in [
        ("gt", [false, false, true]),
        ("gte", [false, true, true]),
        ("lt", [true, false, false]),
        ("lte", [true, true, false]),
    ] {
        for (amount, expected) in [499.99, 500.0, 500.01].into_iter().zip(results) {
            let predicate = format!(r#"arg = "/amount", {op} = 500"#);
            assert_eq!(holds(&predicate, json!({ "amount": amount })), expected, "{op} {amount}");
        }
    }
    assert!(holds(r#"arg = "/amount", gt = 500"#, json!({ "amount": "750.00" })));
    assert!(holds(r#"arg = "/amount", gt = 500"#, json!({ "amount": " 501 " })));
    assert!(holds(r#"arg = "/amount", gt = 499.5"#, json!({ "amount": 500 })));
    assert!(holds(r#"arg = "/amount", gt = -1"#, json!({ "amount": 0 })));
    assert!(!holds(r#"arg = "/amount", gt = 500"#, json!({ "amount": "a lot" })));
    assert!(!holds(r#"arg = "/amount", gt = 500"#, json!({ "amount": "inf" })));
    assert!(!holds(r#"arg = "/amount", gt = 500"#, json!({ "amount": true })));
    assert!(!holds(r#"arg = "/amount", gt = 500"#, json!({})));
    assert!(holds(r#"arg = "/amounts", gt = 500"#, json!({ "amounts": [10, 900] })));
}

#[test]
fn several_operators_in_one_entry_and_several_entries_all_must_hold() {
    let range = r#"arg = "/amount", gt = 100, lte = 500"#;
    assert!(holds(range, json!({ "amount": 300 })));
    assert!(!holds(range, json!({ "amount": 100 })));
    assert!(!holds(range, json!({ "amount": 501 })));

    let set = load(
        r#"
        [[rule]]
        name = "r"
        effect = "deny"
        [[rule.when]]
        arg = "/currency"
        equals = "USD"
        [[rule.when]]
        arg = "/amount"
        gt = 10
        "#,
    );
    let effect = |args: Value| set.evaluate(&call("t", &args)).effect();
    assert_eq!(effect(json!({ "currency": "USD", "amount": 11 })), Effect::Deny);
    assert_eq!(effect(json!({ "currency": "EUR", "amount": 11 })), Effect::Allow);
    assert_eq!(effect(json!({ "currency": "USD", "amount": 9 })), Effect::Allow);
}

#[test]
fn absent_distinguishes_missing_from_null_and_pointers_follow_rfc_6901() {
    assert!(holds(r#"arg = "/reason", absent = true"#, json!({})));
    assert!(!holds(r#"arg = "/reason", absent = true"#, json!({ "reason": null })));
    assert!(holds(r#"arg = "/reason", absent = false"#, json!({ "reason": null })));
    assert!(!holds(r#"arg = "/reason", absent = false"#, json!({})));
    assert!(holds(r#"arg = "/reason", absent = true"#, Value::Null), "no arguments at all");

    assert!(holds(r#"arg = "/a/0/b", equals = 1"#, json!({ "a": [{ "b": 1 }] })));
    assert!(holds(r#"arg = "/a~1b/c~0d", equals = 1"#, json!({ "a/b": { "c~d": 1 } })));
    assert!(holds(r#"arg = "", equals = { x = 1 }"#, json!({ "x": 1 })), "\"\" is the whole");
}

#[test]
fn the_most_restrictive_effect_wins_then_the_first_in_load_order() {
    let rule = |name: &str, effect: &str, cost: u32| {
        format!("[[rule]]\nname = \"{name}\"\neffect = \"{effect}\"\ncost = {cost}\n")
    };
    let args = json!({});
    for order in [["allow", "hold", "deny"], ["deny", "hold", "allow"], ["hold", "deny", "allow"]] {
        let text: String = order.iter().map(|e| rule(&format!("{e}-1"), e, 1)).collect();
        assert_eq!(decided_by(&load(&text), &call("t", &args)), (Effect::Deny, "deny-1".into()));
    }
    let text =
        rule("allow-1", "allow", 1) + &rule("hold-1", "hold", 2) + &rule("hold-2", "hold", 3);
    let set = load(&text);
    assert_eq!(decided_by(&set, &call("t", &args)), (Effect::Hold, "hold-1".into()));
    assert_eq!(set.evaluate(&call("t", &args)).cost(), 2.0, "the deciding rule's cost");

    let text = rule("allow-1", "allow", 1) + &rule("allow-2", "allow", 7);
    let decision = load(&text).evaluate(&call("t", &args));
    assert_eq!(decision.rule().map(|r| r.name.as_str()), Some("allow-1"));
    assert_eq!(decision.cost(), 1.0);
}

#[test]
fn the_default_decides_when_no_rule_matches() {
    let text = "[[rule]]\nname = \"r\"\neffect = \"deny\"\ntool = \"drop_*\"\n";
    let args = json!({});
    let allow = load_with(Effect::Allow, text).evaluate(&call("lookup", &args));
    assert_eq!(allow, Decision::Allow { rule: None, cost: 0.0, target: None });

    let deny = load_with(Effect::Deny, text).evaluate(&call("lookup", &args));
    assert!(
        matches!(&deny, Decision::Deny { rule: None, reason, budget: None, .. } if reason.contains("default is deny")),
        "{deny:?}"
    );

    let hold = load_with(Effect::Hold, text).evaluate(&call("lookup", &args));
    let Decision::Hold { rule: None, approvers, expires_after, .. } = &hold else {
        panic!("{hold:?}")
    };
    assert!(approvers.is_empty());
    assert_eq!(*expires_after, DEFAULT_HOLD_EXPIRY);

    // A rule still beats the default, even a less restrictive one.
    let text = "[[rule]]\nname = \"lookups\"\neffect = \"allow\"\ntool = \"lookup\"\n";
    let set = load_with(Effect::Deny, text);
    assert_eq!(decided_by(&set, &call("lookup", &args)), (Effect::Allow, "lookups".into()));
    assert_eq!(decided_by(&set, &call("other", &args)), (Effect::Deny, "-".into()));
}

#[test]
fn a_rule_decides_with_its_reason_approvers_expiry_cost_and_target() {
    let set = load(
        r#"
        [[rule]]
        name = "hold-refunds"
        effect = "hold"
        tool = "issue_refund"
        reason = "large refund"
        cost = 2.5
        target = "/customer_id"
        approvers = ["alice", "bob"]
        expires_after = "1h30m"

        [[rule]]
        name = "deny-wipes"
        effect = "deny"
        tool = "wipe"
        target = "/disk"
        "#,
    );
    let args = json!({ "customer_id": "cus_1001", "disk": { "id": 7 } });
    let hold = set.evaluate(&call("issue_refund", &args));
    let rule = RuleRef { name: "hold-refunds".into(), file: FILE.into(), line: 3 };
    assert_eq!(
        hold,
        Decision::Hold {
            rule: Some(rule),
            reason: Some("large refund".into()),
            approvers: vec!["alice".into(), "bob".into()],
            expires_after: Duration::from_secs(5400),
            cost: 2.5,
            target: Some("cus_1001".into()),
        }
    );
    let deny = set.evaluate(&call("wipe", &args));
    let Decision::Deny { reason, target, .. } = &deny else { panic!("{deny:?}") };
    assert_eq!(reason, "denied by policy rule `deny-wipes`", "a reason is always given");
    assert_eq!(target.as_deref(), Some(r#"{"id":7}"#), "non-strings as JSON text");
    assert_eq!(set.evaluate(&call("wipe", &json!({}))).target(), None, "target not in the call");
}

#[test]
fn effects_order_by_restrictiveness_and_parse_lower_case() {
    assert!(Effect::Allow < Effect::Hold && Effect::Hold < Effect::Deny);
    for effect in [Effect::Allow, Effect::Hold, Effect::Deny] {
        assert_eq!(effect.as_str().parse::<Effect>(), Ok(effect));
        assert_eq!(effect.to_string(), effect.as_str());
    }
    assert_eq!("Allow".parse::<Effect>(), Err(()));
}

#[test]
fn load_dir_reads_top_level_toml_files_in_name_order() {
    let dir = tempfile::tempdir().expect("temp dir");
    let write =
        |name: &str, text: &str| std::fs::write(dir.path().join(name), text).expect("write");
    write("20-second.toml", "[[rule]]\nname = \"second\"\neffect = \"allow\"\n");
    write("10-first.toml", "\n[[rule]]\nname = \"first\"\neffect = \"allow\"\n");
    write("notes.md", "not a policy");
    write(".#10-first.toml", "editor lock file, not toml");
    std::fs::create_dir(dir.path().join("examples")).expect("mkdir");
    write("examples/x.toml", "not toml, not loaded");

    let set = PolicySet::load_dir(dir.path(), Effect::Allow).expect("loads");
    assert_eq!(set.file_count(), 2);
    assert_eq!(set.rule_count(), 2);
    let rules: Vec<_> = set.rules().cloned().collect();
    assert_eq!(
        rules,
        [
            RuleRef { name: "first".into(), file: dir.path().join("10-first.toml"), line: 3 },
            RuleRef { name: "second".into(), file: dir.path().join("20-second.toml"), line: 2 },
        ]
    );
    let args = json!({});
    assert_eq!(decided_by(&set, &call("t", &args)), (Effect::Allow, "first".into()));

    let empty = tempfile::tempdir().expect("temp dir");
    let set = PolicySet::load_dir(empty.path(), Effect::Allow).expect("an empty dir is valid");
    assert_eq!((set.rule_count(), set.file_count()), (0, 0));
}
