//! Budgets, `authorized_by`, what a decision records, and the digest.

use super::*;

fn budget_set() -> PolicySet {
    load(
        r#"
        [[rule]]
        name = "searches"
        effect = "allow"
        tool = "search"
        cost = 5
        [[rule]]
        name = "hold-exports"
        effect = "hold"
        tool = "export"
        cost = 5
        [[rule]]
        name = "deny-wipes"
        effect = "deny"
        tool = "wipe"
        cost = 5

        [budgets]
        support-bot = 100
        "*" = 10
        "#,
    )
}

fn spending(set: &PolicySet, agent: &str, tool: &str, spent: Option<f64>) -> Decision {
    let args = json!({});
    set.evaluate(&CallContext {
        agent,
        server: "s",
        tool,
        arguments: &args,
        spent_today: spent,
        input_pii: &[],
    })
}

#[test]
fn budgets_deny_calls_beyond_them_and_name_the_budget() {
    let set = budget_set();
    assert_eq!(
        set.budget_for("support-bot"),
        Some(Budget { key: "support-bot".into(), limit: 100.0 })
    );
    assert_eq!(set.budget_for("other"), Some(Budget { key: "*".into(), limit: 10.0 }));

    let allowed = spending(&set, "support-bot", "search", Some(95.0));
    assert_eq!(allowed.effect(), Effect::Allow, "95 + 5 is exactly the budget");
    let denied = spending(&set, "support-bot", "search", Some(95.5));
    assert_eq!(
        denied,
        Decision::Deny {
            rule: None,
            reason: "daily budget `support-bot` exceeded: agent `support-bot` has spent 95.5 of \
                     100 credits today and this call costs 5"
                .into(),
            cost: 5.0,
            target: None,
            budget: Some(BudgetExceeded {
                budget: "support-bot".into(),
                limit: 100.0,
                spent_today: Some(95.5),
                cost: 5.0,
            }),
        }
    );
    assert_eq!(spending(&set, "other", "search", Some(6.0)).effect(), Effect::Deny, "`*` applies");
    assert_eq!(spending(&set, "other", "search", Some(5.0)).effect(), Effect::Allow);
    assert_eq!(spending(&set, "other", "export", Some(6.0)).effect(), Effect::Deny, "holds too");
    assert_eq!(spending(&set, "other", "export", Some(0.0)).effect(), Effect::Hold);
    // The default decides unmatched calls at cost 0: allowed up to the budget.
    assert_eq!(spending(&set, "other", "lookup", Some(10.0)).effect(), Effect::Allow);
    assert_eq!(spending(&set, "other", "lookup", Some(10.5)).effect(), Effect::Deny);

    // A rule's deny stays the rule's, whatever the budget.
    let wipe = spending(&set, "other", "wipe", Some(1000.0));
    assert_eq!(wipe.rule().map(|r| r.name.as_str()), Some("deny-wipes"));
    assert!(matches!(wipe, Decision::Deny { budget: None, .. }));
}

#[test]
fn a_budget_without_todays_spending_denies() {
    let set = budget_set();
    let decision = spending(&set, "support-bot", "search", None);
    let Decision::Deny { reason, budget: Some(budget), .. } = &decision else {
        panic!("{decision:?}")
    };
    assert!(reason.contains("today's spending is unknown"), "{reason}");
    assert_eq!(budget.spent_today, None);
    assert_eq!(spending(&set, "x", "search", Some(f64::NAN)).effect(), Effect::Deny);

    let no_budgets = load("[[rule]]\nname = \"r\"\neffect = \"allow\"\ncost = 5\n");
    assert_eq!(no_budgets.budget_for("support-bot"), None);
    assert_eq!(spending(&no_budgets, "support-bot", "search", None).effect(), Effect::Allow);
}

#[test]
fn authorized_by_follows_the_grammar() {
    let set = load("[[rule]]\nname = \"lookups.v2\"\neffect = \"allow\"\ntool = \"lookup\"\n");
    let args = json!({});
    let digest = set.digest();
    let by_rule = set.evaluate(&call("lookup", &args));
    assert_eq!(by_rule.authorized_by(digest), Some(format!("policy:lookups.v2@{}", &digest[..12])));
    assert_eq!(set.digest_prefix(), &digest[..12]);
    let by_default = set.evaluate(&call("other", &args));
    assert_eq!(by_default.authorized_by(digest).as_deref(), Some("default:allow"));

    let all = PolicySet::allow_all();
    let decision = all.evaluate(&call("anything", &args));
    assert_eq!(decision, Decision::Allow { rule: None, cost: 0.0, target: None });
    assert_eq!(decision.authorized_by(all.digest()).as_deref(), Some("default:allow"));

    let strict = load(
        "[[rule]]\nname = \"d\"\neffect = \"deny\"\n[[rule]]\nname = \"h\"\neffect = \"hold\"\ntool = \"h\"\n",
    );
    assert_eq!(strict.evaluate(&call("x", &args)).authorized_by(digest), None, "deny");
    let hold = load("[[rule]]\nname = \"h\"\neffect = \"hold\"\n").evaluate(&call("x", &args));
    assert_eq!(hold.authorized_by(digest), None, "a hold is authorized by its approval");
}

#[test]
fn records_carry_every_key() {
    let digest = "ab".repeat(32);
    let allow = Decision::Allow { rule: None, cost: 0.0, target: None };
    assert_eq!(
        allow.to_record(&digest),
        json!({
            "effect": "allow", "rule": null, "reason": null, "policy_digest": digest, "cost": 0,
            "target": null, "approvers": [], "expires_after_secs": null, "budget": null,
        })
    );
    let rule = RuleRef { name: "hold-refunds".into(), file: FILE.into(), line: 3 };
    let hold = Decision::Hold {
        rule: Some(rule),
        reason: Some("large refund".into()),
        approvers: vec!["alice".into()],
        expires_after: Duration::from_secs(7200),
        cost: 2.5,
        target: Some("cus_1001".into()),
    };
    assert_eq!(
        hold.to_record(&digest),
        json!({
            "effect": "hold", "rule": "hold-refunds", "reason": "large refund",
            "policy_digest": digest, "cost": 2.5, "target": "cus_1001", "approvers": ["alice"],
            "expires_after_secs": 7200, "budget": null,
        })
    );
    let denied = spending(&budget_set(), "other", "search", Some(8.0));
    let record = denied.to_record(&digest);
    assert_eq!(record["effect"], "deny");
    assert_eq!(record["rule"], Value::Null);
    assert_eq!(record["cost"], json!(5));
    assert_eq!(
        record["budget"],
        json!({ "budget": "*", "limit": 10, "spent_today": 8, "cost": 5 })
    );
}

const DIGEST_BASE: &str = r#"
[[rule]]
name = "hold-refunds"
effect = "hold"
tool = "issue_refund"
when = [{ arg = "/amount", gt = 500 }]

[budgets]
bot = 10
"#;

#[test]
fn the_digest_ignores_layout_and_follows_meaning() {
    let base = load(DIGEST_BASE);
    let digest = base.digest();
    assert_eq!(digest.len(), 64);
    assert!(digest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')), "{digest}");
    assert_eq!(load(DIGEST_BASE).digest(), digest, "stable");

    let same = [
        // Comments, blank lines, indentation, key order, table form, explicit defaults, 500.0.
        "# refunds\n\n[budgets]\nbot = 10.0\n\n  [[rule]]\n  tool = [\"issue_refund\"]   # the tool\n  effect = \"hold\"\n  name = \"hold-refunds\"\n  agent = \"*\"\n  cost = 0\n  [[rule.when]]\n  gt = 500.0\n  arg = \"/amount\"\n",
    ];
    for text in same {
        assert_eq!(load(text).digest(), digest, "{text}");
    }
    // The same rule split over two differently named files.
    let split = PolicySet::from_sources(
        &[
            ("x/a.toml".into(), DIGEST_BASE.replace("[budgets]\nbot = 10\n", "")),
            ("y/b.toml".into(), "[budgets]\nbot = 10\n".into()),
        ],
        Effect::Allow,
    )
    .expect("loads");
    assert_eq!(split.digest(), digest);

    let changed = [
        DIGEST_BASE.replace("gt = 500", "gt = 501"),
        DIGEST_BASE.replace("gt = 500", "gte = 500"),
        DIGEST_BASE.replace("hold-refunds", "hold-refund"),
        DIGEST_BASE.replace("\"hold\"", "\"deny\""),
        DIGEST_BASE.replace("issue_refund", "issue_*"),
        DIGEST_BASE.replace("bot = 10", "bot = 11"),
        DIGEST_BASE.replace("[budgets]\nbot = 10\n", ""),
        DIGEST_BASE.replace("effect = \"hold\"", "effect = \"hold\"\ncost = 1"),
        DIGEST_BASE.replace("effect = \"hold\"", "effect = \"hold\"\nexpires_after = \"1h\""),
        DIGEST_BASE.to_owned() + "[[rule]]\nname = \"more\"\neffect = \"allow\"\n",
    ];
    for text in &changed {
        assert_ne!(load(text).digest(), digest, "{text}");
    }
    assert_ne!(load_with(Effect::Deny, DIGEST_BASE).digest(), digest, "the default counts");

    // Order decides among equal effects, so it is part of the digest.
    let a = "[[rule]]\nname = \"a\"\neffect = \"allow\"\ncost = 1\n";
    let b = "[[rule]]\nname = \"b\"\neffect = \"allow\"\ncost = 2\n";
    assert_ne!(load(&format!("{a}{b}")).digest(), load(&format!("{b}{a}")).digest());

    let empty = PolicySet::from_sources(&[], Effect::Allow).expect("empty");
    assert_eq!(empty.digest(), PolicySet::allow_all().digest());
}
