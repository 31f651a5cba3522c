//! The shipped policies load and decide what their comments promise.

use super::*;

fn shipped(dir: &str) -> PolicySet {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    PolicySet::load_dir(&dir, Effect::Allow).unwrap_or_else(|e| panic!("{}:\n{e}", dir.display()))
}

fn decide(set: &PolicySet, tool: &str, arguments: Value, spent: f64) -> (Effect, String) {
    let call = CallContext {
        agent: "support-bot",
        server: "customer-ops",
        tool,
        arguments: &arguments,
        spent_today: Some(spent),
        input_pii: &[],
    };
    decided_by(set, &call)
}

#[test]
fn the_default_policy_allows_and_records_everything() {
    let set = shipped("policies");
    assert_eq!((set.rule_count(), set.file_count()), (0, 1));
    let decision = set.evaluate(&call("issue_refund", &json!({ "amount": 1e6 })));
    assert_eq!(decision.authorized_by(set.digest()).as_deref(), Some("default:allow"));
}

#[test]
fn email_to_outside_domains_is_held() {
    let set = shipped("policies/examples");
    let email = |to: Value| decide(&set, "send_email", json!({ "to": to, "subject": "s" }), 0.0);
    assert_eq!(email(json!("dana.whitfield@example.com")), (Effect::Allow, "emails".into()));
    assert_eq!(email(json!("Dana <DANA@EXAMPLE.COM>")), (Effect::Allow, "emails".into()));
    assert_eq!(
        email(json!("priya.raman@example.org")),
        (Effect::Hold, "hold-email-to-outside-domain".into())
    );
    assert_eq!(email(json!("x@example.com.evil.example")).0, Effect::Hold);
    assert_eq!(email(json!(["a@example.com", "b@gmail.com"])).0, Effect::Hold);
    let cc = json!({ "to": "a@example.com", "cc": ["b@example.com", "eve@evil.example"] });
    assert_eq!(
        decide(&set, "send_email", cc, 0.0),
        (Effect::Hold, "hold-email-cc-outside-domain".into())
    );

    let arguments = json!({ "to": "p@example.org" });
    let held =
        set.evaluate(&CallContext { spent_today: Some(0.0), ..call("send_email", &arguments) });
    let Decision::Hold { approvers, expires_after, target, .. } = held else { panic!("{held:?}") };
    assert_eq!(approvers, ["support-lead", "security-oncall"]);
    assert_eq!(expires_after, Duration::from_secs(4 * 3600));
    assert_eq!(target.as_deref(), Some("p@example.org"));
}

#[test]
fn destructive_sql_is_denied() {
    let set = shipped("policies/examples");
    let sql = |sql: &str| decide(&set, "query", json!({ "sql": sql }), 0.0);
    for (statement, rule) in [
        ("DROP TABLE users", "deny-sql-drop"),
        ("select 1;\n  drop   schema public cascade", "deny-sql-drop"),
        ("TRUNCATE orders", "deny-sql-truncate"),
        ("truncate table orders restart identity", "deny-sql-truncate"),
        ("DELETE FROM users", "deny-sql-delete-without-where"),
        ("delete from public.\"Users\";", "deny-sql-delete-without-where"),
        ("delete from users u", "deny-sql-delete-without-where"),
        ("select 1; DELETE FROM sessions ; select 2", "deny-sql-delete-without-where"),
    ] {
        assert_eq!(sql(statement), (Effect::Deny, rule.to_owned()), "{statement}");
    }
    for statement in [
        "DELETE FROM users WHERE id = 7",
        "delete from sessions s where s.expires_at < now()",
        "select drop_date, truncated from t",
        "update t set x = 1",
    ] {
        assert_eq!(sql(statement).0, Effect::Allow, "{statement}");
    }
}

#[test]
fn refunds_above_500_are_held_and_need_a_reason() {
    let set = shipped("policies/examples");
    let refund = |amount: Value| json!({ "customer_id": "cus_1001", "amount": amount, "currency": "USD", "reason": "dup" });
    assert_eq!(
        decide(&set, "issue_refund", refund(json!(42.5)), 0.0),
        (Effect::Allow, "refunds".into())
    );
    assert_eq!(decide(&set, "issue_refund", refund(json!(500)), 0.0).0, Effect::Allow);
    assert_eq!(
        decide(&set, "issue_refund", refund(json!(25000.0)), 0.0),
        (Effect::Hold, "hold-refunds-above-500".into())
    );
    assert_eq!(decide(&set, "issue_refund", refund(json!("750.00")), 0.0).0, Effect::Hold);
    let no_reason = json!({ "customer_id": "cus_1001", "amount": 25000, "currency": "USD" });
    assert_eq!(
        decide(&set, "issue_refund", no_reason, 0.0),
        (Effect::Deny, "deny-refund-without-reason".into())
    );

    let allowed = set.evaluate(&CallContext {
        spent_today: Some(0.0),
        ..call("issue_refund", &refund(json!(10)))
    });
    assert_eq!(allowed.cost(), 5.0);
    assert_eq!(allowed.target(), Some("cus_1001"));
    let by = allowed.authorized_by(set.digest()).expect("allowed");
    assert_eq!(by, format!("policy:refunds@{}", set.digest_prefix()));
}

#[test]
fn budgets_limit_daily_spending() {
    let set = shipped("policies/examples");
    let lookup = json!({ "customer_id": "cus_1001" });
    assert_eq!(
        decide(&set, "lookup_customer", lookup.clone(), 99.0),
        (Effect::Allow, "lookups".into())
    );
    let over =
        set.evaluate(&CallContext { spent_today: Some(99.5), ..call("lookup_customer", &lookup) });
    let Decision::Deny { reason, budget: Some(budget), .. } = &over else { panic!("{over:?}") };
    assert!(reason.starts_with("daily budget `support-bot` exceeded"), "{reason}");
    assert_eq!((budget.limit, budget.cost), (100.0, 1.0));
    assert_eq!(set.budget_for("another-agent").map(|b| b.limit), Some(20.0));
}

#[test]
fn pii_rules_deny_cards_hold_keys_withhold_credentials_and_redact_contacts() {
    let set = shipped("policies/examples");
    let names = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    let args = json!({ "customer_id": "cus_1" });
    let card = names(&["credit_card"]);
    let with_card = CallContext { input_pii: &card, ..call("lookup_customer", &args) };
    assert_eq!(decided_by(&set, &with_card), (Effect::Deny, "no-card-numbers-to-tools".into()));

    let lookup = call("lookup_customer", &args);
    let rule_of = |found: &[&str]| {
        let decision = set.evaluate_result(&lookup, &names(found));
        (decision.effect(), decision.rule().map(|r| r.name.clone()).unwrap_or_default())
    };
    assert_eq!(rule_of(&[]), (Effect::Allow, String::new()));
    assert_eq!(
        rule_of(&["private_key_header"]),
        (Effect::Hold, "hold-results-with-private-keys".into())
    );
    assert_eq!(
        rule_of(&["aws_access_key", "email"]),
        (Effect::Deny, "withhold-cloud-credentials".into())
    );
    assert_eq!(rule_of(&["phone_us"]), (Effect::Redact, "redact-contact-data-for-support".into()));
    let other = CallContext { agent: "billing-bot", ..lookup };
    assert_eq!(set.evaluate_result(&other, &names(&["email"])), ResultDecision::Deliver);
}
