//! Rules that look at PII: `input_contains` on calls, `output_contains` on results (deny, hold,
//! redact), what is refused when loading, and the pattern check against the scanner.

use super::*;

fn with_input_pii<'a>(tool: &'a str, arguments: &'a Value, found: &'a [String]) -> CallContext<'a> {
    CallContext { input_pii: found, ..call(tool, arguments) }
}

fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

const RULES: &str = r#"
    [[rule]]
    name = "hold-ssn-in-arguments"
    effect = "hold"
    input_contains = ["ssn", "credit_card"]

    [[rule]]
    name = "deny-keys-in-arguments"
    effect = "deny"
    tool = "send_*"
    input_contains = "*"

    [[rule]]
    name = "hold-private-keys-in-results"
    effect = "hold"
    output_contains = ["private_key_header"]
    approvers = ["security"]
    expires_after = "10m"

    [[rule]]
    name = "withhold-cards"
    effect = "deny"
    tool = "export"
    output_contains = "credit_card"
    reason = "card numbers stay inside"

    [[rule]]
    name = "redact-emails"
    effect = "redact"
    output_contains = ["email", "phone_us"]
"#;

#[test]
fn input_contains_matches_only_calls_carrying_a_named_pattern() {
    let set = load(RULES);
    let args = json!({});
    let none = names(&[]);
    assert_eq!(decided_by(&set, &with_input_pii("lookup", &args, &none)).0, Effect::Allow);
    let ssn = names(&["ssn"]);
    assert_eq!(
        decided_by(&set, &with_input_pii("lookup", &args, &ssn)),
        (Effect::Hold, "hold-ssn-in-arguments".into())
    );
    let email = names(&["email"]);
    assert_eq!(decided_by(&set, &with_input_pii("lookup", &args, &email)).0, Effect::Allow);
    assert_eq!(
        decided_by(&set, &with_input_pii("send_mail", &args, &email)),
        (Effect::Deny, "deny-keys-in-arguments".into()),
        "`*` matches any finding"
    );
    assert_eq!(decided_by(&set, &with_input_pii("send_mail", &args, &none)).0, Effect::Allow);
}

#[test]
fn output_rules_decide_results_and_never_calls() {
    let set = load(RULES);
    assert!(set.has_output_rules());
    let args = json!({});
    let none = names(&[]);
    let lookup = call("lookup", &args);
    // Call evaluation ignores output rules even when they would match everything else.
    assert_eq!(set.evaluate(&lookup).effect(), Effect::Allow);

    assert_eq!(set.evaluate_result(&lookup, &none), ResultDecision::Deliver);
    assert_eq!(set.evaluate_result(&lookup, &names(&["ssn"])), ResultDecision::Deliver);
    match set.evaluate_result(&lookup, &names(&["private_key_header", "email"])) {
        ResultDecision::Hold { rule, approvers, expires_after, .. } => {
            assert_eq!(rule.name, "hold-private-keys-in-results", "hold beats redact");
            assert_eq!(approvers, ["security"]);
            assert_eq!(expires_after, Duration::from_secs(600));
        }
        other => panic!("expected a hold, got {other:?}"),
    }
    let export = call("export", &args);
    match set.evaluate_result(&export, &names(&["credit_card", "private_key_header"])) {
        ResultDecision::Withhold { rule, reason } => {
            assert_eq!(rule.name, "withhold-cards", "deny beats hold");
            assert_eq!(reason, "card numbers stay inside");
        }
        other => panic!("expected a withhold, got {other:?}"),
    }
    let redact = set.evaluate_result(&lookup, &names(&["phone_us"]));
    assert_eq!(redact.effect(), Effect::Redact);
    assert_eq!(redact.rule().unwrap().name, "redact-emails");
    let record = redact.to_record(set.digest());
    assert_eq!(record["effect"], "redact");
    assert_eq!(record["rule"], "redact-emails");
    assert_eq!(record["policy_digest"], set.digest());
}

#[test]
fn output_rules_are_checked_when_loading() {
    let problems = |text: &str| {
        PolicySet::from_sources(&[(PathBuf::from(FILE), text.to_owned())], Effect::Allow)
            .expect_err("invalid")
            .problems()
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        problems("[[rule]]\nname = \"r\"\neffect = \"redact\"\n"),
        [format!(
            "{FILE}:3:10: rule `r`: \"redact\" applies to results: give the rule `output_contains`, the PII patterns to redact from what the agent receives"
        )]
    );
    assert_eq!(
        problems("[[rule]]\nname = \"r\"\neffect = \"allow\"\noutput_contains = \"email\"\n"),
        [format!(
            "{FILE}:4:19: rule `r`: a rule with `output_contains` decides what the agent gets of a result: its effect is \"deny\", \"hold\" or \"redact\", not \"allow\""
        )]
    );
    assert_eq!(
        problems("[[rule]]\nname = \"r\"\neffect = \"deny\"\noutput_contains = []\n"),
        [format!("{FILE}:4:19: rule `r`: `output_contains` must list at least one PII pattern")]
    );
    assert_eq!(
        problems("[[rule]]\nname = \"r\"\neffect = \"hold\"\ninput_contains = [\"e mail\"]\n"),
        [format!(
            "{FILE}:4:18: rule `r`: `input_contains` names `e mail`, which is not a PII pattern name"
        )]
    );
    assert_eq!(
        problems(
            "[[rule]]\nname = \"r\"\neffect = \"deny\"\noutput_contains = \"ssn\"\ncost = 3\n"
        ),
        [format!(
            "{FILE}:5:8: rule `r`: `cost` belongs to the call, not to a rule on its result (`output_contains`)"
        )]
    );
}

#[test]
fn named_patterns_must_be_ones_the_scanner_runs() {
    let set = load(RULES);
    let all = names(&["email", "phone_us", "ssn", "credit_card", "private_key_header"]);
    assert!(set.check_pii_patterns(&all).is_ok());
    let error =
        set.check_pii_patterns(&names(&["email", "ssn", "credit_card", "phone_us"])).unwrap_err();
    let problems: Vec<String> = error.problems().iter().map(|p| p.to_string()).collect();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains(
            "rule `hold-private-keys-in-results`: `output_contains` names `private_key_header`, which is not a PII pattern this proxy detects"
        ),
        "{problems:?}"
    );
    let off = set.check_pii_patterns(&[]).unwrap_err();
    assert_eq!(off.problems().len(), 5, "every PII rule is inert without scanning");
    assert!(off.to_string().contains("PII scanning is off"));
    assert!(load("[[rule]]\nname = \"r\"\neffect = \"allow\"\n").check_pii_patterns(&[]).is_ok());
}

#[test]
fn the_digest_of_rules_without_pii_keys_is_unchanged_and_pii_keys_enter_it() {
    let plain = "[[rule]]\nname = \"r\"\neffect = \"hold\"\n";
    let with_input = "[[rule]]\nname = \"r\"\neffect = \"hold\"\ninput_contains = \"ssn\"\n";
    let with_other = "[[rule]]\nname = \"r\"\neffect = \"hold\"\ninput_contains = \"email\"\n";
    let digests: Vec<String> =
        [plain, with_input, with_other].iter().map(|t| load(t).digest().to_owned()).collect();
    assert_ne!(digests[0], digests[1]);
    assert_ne!(digests[1], digests[2]);
    // The canonical form of a rule without the keys has no trace of them.
    let canonical = load(plain).rules[0].canonical();
    assert!(
        canonical.get("input_contains").is_none() && canonical.get("output_contains").is_none()
    );
}
