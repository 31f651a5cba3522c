//! Every load error names the file, line and column, and what is wrong.

use super::*;

/// Every problem in `text` loaded as `policies/test.toml`, one string each.
fn problems(text: &str) -> Vec<String> {
    problems_in(&[(FILE, text)])
}

fn problems_in(files: &[(&str, &str)]) -> Vec<String> {
    let sources: Vec<_> = files.iter().map(|(f, t)| (PathBuf::from(f), (*t).to_owned())).collect();
    match PolicySet::from_sources(&sources, Effect::Allow) {
        Ok(_) => panic!("loaded without error:\n{files:?}"),
        Err(error) => error.problems().iter().map(ToString::to_string).collect(),
    }
}

/// The one problem of a file holding a single rule `r` with `effect` and the extra `lines`
/// (which start on line 4).
fn rule_problem(effect: &str, lines: &str) -> String {
    let all = problems(&format!("[[rule]]\nname = \"r\"\neffect = \"{effect}\"\n{lines}\n"));
    assert_eq!(all.len(), 1, "{all:#?}");
    all.into_iter().next().expect("one")
}

const OPS: &str =
    "equals, not_equals, one_of, not_one_of, matches, not_matches, gt, gte, lt, lte, absent";

#[test]
fn toml_syntax_and_shape_errors_are_placed() {
    assert_eq!(
        problems("[[rule]\n"),
        ["policies/test.toml:1:8: unclosed array table, expected `]`"]
    );
    assert_eq!(
        problems("[[rule]]\nname = \"r\"\nefect = \"deny\"\n"),
        [
            "policies/test.toml:3:1: unknown field `efect`, expected one of `name`, `effect`, `agent`, `server`, `tool`, `when`, `reason`, `cost`, `target`, `approvers`, `expires_after`, `input_contains`, `output_contains`"
        ]
    );
    assert_eq!(
        problems("[rules]\n"),
        ["policies/test.toml:1:2: unknown field `rules`, expected `rule` or `budgets`"]
    );
    assert_eq!(
        problems("[[rule]]\nname = \"a\"\neffect = \"deny\"\n\n[[rule]]\neffect = \"deny\"\n"),
        ["policies/test.toml:5:1: missing field `name`"]
    );
    assert_eq!(
        problems("[[rule]]\nname = 5\neffect = \"deny\"\n"),
        ["policies/test.toml:2:8: invalid type: integer `5`, expected a string"]
    );
}

#[test]
fn a_default_in_a_policy_file_points_to_the_configuration() {
    assert_eq!(
        problems("# old placeholder\ndefault = \"allow\"\n"),
        [
            "policies/test.toml:2:1: `default` is not set in a policy file but in mcp-ledger.toml (`[policy] default`)"
        ]
    );
}

#[test]
fn names_and_effects_are_checked() {
    assert_eq!(
        problems("[[rule]]\nname = \"hold refunds\"\neffect = \"hold\"\n"),
        [
            "policies/test.toml:2:8: rule `hold refunds`: a rule name may contain only letters, digits, `.`, `_` and `-`"
        ]
    );
    assert_eq!(
        problems("[[rule]]\nname = \"a@b\"\neffect = \"hold\"\n").len(),
        1,
        "`@` would break authorized_by"
    );
    assert_eq!(
        rule_problem("permit", ""),
        "policies/test.toml:3:10: rule `r`: unknown effect `permit`; use \"allow\", \"deny\", \"hold\" or (with `output_contains`) \"redact\""
    );
    // Nothing is reported that only follows from the unknown effect.
    let problem = rule_problem("holdd", "approvers = [\"alice\"]\nexpires_after = \"1h\"");
    assert!(problem.contains("unknown effect `holdd`"), "{problem}");
}

#[test]
fn patterns_are_checked() {
    assert_eq!(
        rule_problem("deny", "agent = \"\""),
        "policies/test.toml:4:9: rule `r`: `agent` has an empty pattern; use \"*\" to match any name"
    );
    assert_eq!(
        rule_problem("deny", "server = []"),
        "policies/test.toml:4:10: rule `r`: `server` must list at least one pattern"
    );
    assert_eq!(
        rule_problem("deny", "tool = [\"a\", 1]"),
        "policies/test.toml:4:8: rule `r`: `tool` must be a pattern or a list of patterns (strings)"
    );
}

#[test]
fn unknown_operators_are_named() {
    assert_eq!(
        rule_problem("hold", "[[rule.when]]\narg = \"/amount\"\ngt_eq = 500"),
        format!("policies/test.toml:6:1: rule `r`: unknown operator `gt_eq`; use one of {OPS}")
    );
}

#[test]
fn when_entries_need_a_pointer_and_an_operator() {
    assert_eq!(
        rule_problem("deny", "[[rule.when]]\ngt = 5"),
        "policies/test.toml:4:1: rule `r`: a `when` entry needs `arg`, a JSON pointer such as \"/amount\""
    );
    assert_eq!(
        rule_problem("deny", "when = [{ arg = \"/amount\" }]"),
        format!(
            "policies/test.toml:4:9: rule `r`: the `when` entry for `/amount` has no operator; use one of {OPS}"
        )
    );
    assert_eq!(
        rule_problem("deny", "when = [{ arg = \"amount\", gt = 5 }]"),
        "policies/test.toml:4:17: rule `r`: `arg` must be a JSON pointer starting with `/`, such as \"/amount\""
    );
    assert_eq!(
        rule_problem("deny", "when = [{ arg = \"/a~2\", gt = 5 }]"),
        "policies/test.toml:4:17: rule `r`: `arg` has a `~` not followed by 0 or 1 (write `~0` for `~`, `~1` for `/`)"
    );
    assert_eq!(
        rule_problem("deny", "when = [{ arg = 5, gt = 5 }]"),
        "policies/test.toml:4:17: rule `r`: `arg` must be a string, a JSON pointer"
    );
}

#[test]
fn operands_are_checked() {
    let operand = |op: &str, value: &str| {
        rule_problem("deny", &format!("[[rule.when]]\narg = \"/x\"\n{op} = {value}"))
    };
    let at = |op: &str, what: &str| {
        format!("policies/test.toml:6:{}: rule `r`: `{op}` {what}", op.len() + 4)
    };
    assert_eq!(operand("gt", "\"500\""), at("gt", "must be a number"));
    assert_eq!(operand("lte", "nan"), at("lte", "must be a number"));
    assert_eq!(operand("one_of", "\"a\""), at("one_of", "must be a list of values"));
    assert_eq!(operand("not_one_of", "1"), at("not_one_of", "must be a list of values"));
    assert_eq!(operand("absent", "\"yes\""), at("absent", "must be true or false"));
    assert_eq!(operand("matches", "5"), at("matches", "must be a regular expression (a string)"));
    assert_eq!(
        operand("equals", "1979-05-27"),
        at("equals", "cannot compare with a TOML date; write it as a string")
    );
    assert_eq!(operand("not_equals", "inf"), at("not_equals", "cannot compare with nan or inf"));
}

#[test]
fn regexes_are_compiled_at_load() {
    assert_eq!(
        rule_problem("deny", "[[rule.when]]\narg = \"/sql\"\nmatches = '(?i)drop (table'"),
        "policies/test.toml:6:11: rule `r`: `matches` is not a valid regular expression: unclosed group"
    );
    assert_eq!(
        rule_problem("deny", "[[rule.when]]\narg = \"/sql\"\nnot_matches = 'a{99999999}'"),
        "policies/test.toml:6:15: rule `r`: `not_matches` is not a valid regular expression: compiled regex exceeds size limit of 10485760 bytes"
    );
}

#[test]
fn fields_that_do_not_apply_to_the_effect_are_errors() {
    assert_eq!(
        rule_problem("allow", "reason = \"fine\""),
        "policies/test.toml:4:10: rule `r`: `reason` is given to the agent or operator only for \"deny\" and \"hold\"; use a comment to explain an allow"
    );
    assert_eq!(
        rule_problem("deny", "approvers = [\"alice\"]"),
        "policies/test.toml:4:13: rule `r`: `approvers` applies only to `effect = \"hold\"`"
    );
    assert_eq!(
        rule_problem("allow", "expires_after = \"1h\""),
        "policies/test.toml:4:17: rule `r`: `expires_after` applies only to `effect = \"hold\"`"
    );
}

#[test]
fn hold_settings_cost_and_target_are_checked() {
    assert_eq!(
        rule_problem("hold", "approvers = [\"alice\", \" \"]"),
        "policies/test.toml:4:23: rule `r`: an approver name is empty"
    );
    for bad in
        ["\"\"", "\"0s\"", "\"10\"", "\"1w\"", "\"h\"", "\"1h 30m\"", "\"99999999999999999999s\""]
    {
        let problem = rule_problem("hold", &format!("expires_after = {bad}"));
        assert!(
            problem.starts_with("policies/test.toml:4:17: rule `r`: `expires_after` must be a duration such as \"90s\", \"30m\", \"4h\", \"1d\" or \"1h30m\", not "),
            "{bad}: {problem}"
        );
    }
    assert_eq!(
        rule_problem("deny", "cost = -1"),
        "policies/test.toml:4:8: rule `r`: `cost` must be a number of credits, 0 or more"
    );
    assert_eq!(
        rule_problem("deny", "cost = \"5\""),
        "policies/test.toml:4:8: rule `r`: `cost` must be a number of credits, 0 or more"
    );
    assert_eq!(
        rule_problem("deny", "target = \"customer_id\""),
        "policies/test.toml:4:10: rule `r`: `target` must be a JSON pointer starting with `/`, such as \"/customer_id\""
    );
}

#[test]
fn durations_combine_units() {
    for (text, secs) in [
        ("90s", 90),
        ("30m", 1800),
        ("4h", 14_400),
        ("1d", 86_400),
        ("1h30m", 5400),
        ("1d12h", 129_600),
    ] {
        let set = load(&format!(
            "[[rule]]\nname = \"r\"\neffect = \"hold\"\nexpires_after = \"{text}\"\n"
        ));
        let decision = set.evaluate(&call("t", &Value::Null));
        let Decision::Hold { expires_after, .. } = decision else { panic!("{decision:?}") };
        assert_eq!(expires_after, Duration::from_secs(secs), "{text}");
    }
}

#[test]
fn budgets_are_checked() {
    assert_eq!(
        problems("[budgets]\nbot = \"100\"\n"),
        ["policies/test.toml:2:7: budget for `bot` must be a number of credits, 0 or more"]
    );
    assert_eq!(
        problems("[budgets]\nbot = -5\n"),
        ["policies/test.toml:2:7: budget for `bot` must be a number of credits, 0 or more"]
    );
    assert_eq!(
        problems("[budgets]\n\"support bot\" = 5\n"),
        [
            "policies/test.toml:2:1: budget for `support bot`: give an agent name (letters, digits, `.`, `_`, `-`) or \"*\""
        ]
    );
}

#[test]
fn duplicates_across_files_name_both_places() {
    let a = "[[rule]]\nname = \"hold-refunds\"\neffect = \"hold\"\n\n[budgets]\nbot = 5\n";
    let b = "# b\n[[rule]]\nname = \"hold-refunds\"\neffect = \"deny\"\n[budgets]\nbot = 6\n";
    assert_eq!(
        problems_in(&[("policies/a.toml", a), ("policies/b.toml", b)]),
        [
            "policies/b.toml:3:8: rule `hold-refunds` is already defined at policies/a.toml:2; rule names must be unique",
            "policies/b.toml:6:1: the budget for `bot` is already set at policies/a.toml:6",
        ]
    );
    assert_eq!(
        problems(
            "[[rule]]\nname = \"r\"\neffect = \"deny\"\n[[rule]]\nname = \"r\"\neffect = \"deny\"\n"
        ),
        [
            "policies/test.toml:5:8: rule `r` is already defined at policies/test.toml:2; rule names must be unique"
        ]
    );
}

#[test]
fn every_problem_in_every_file_is_reported() {
    let a = "[[rule]]\nname = \"a\"\neffect = \"maybe\"\n\n[[rule]]\nname = \"b\"\neffect = \"allow\"\nreason = \"x\"\ncost = -1\n";
    let b = "not toml\n";
    let all = problems_in(&[("policies/a.toml", a), ("policies/b.toml", b)]);
    assert_eq!(all.len(), 4, "{all:#?}");
    assert!(all[0].starts_with("policies/a.toml:3:10: rule `a`: unknown effect"));
    assert!(all[1].starts_with("policies/a.toml:8:10: rule `b`: `reason`"));
    assert!(all[2].starts_with("policies/a.toml:9:8: rule `b`: `cost`"));
    assert!(all[3].starts_with("policies/b.toml:1:"));

    let sources = [(PathBuf::from("policies/a.toml"), a.to_owned())];
    let error = PolicySet::from_sources(&sources, Effect::Allow).expect_err("invalid");
    assert!(matches!(&error, PolicyError::Several(list) if list.len() == 3));
    assert_eq!(error.to_string().lines().count(), 3, "one problem per line");
    assert_eq!(error.path(), None);
    assert_eq!(error.problems()[0].path(), Some(std::path::Path::new("policies/a.toml")));
}

#[test]
fn an_unreadable_directory_is_named() {
    let error = PolicySet::load_dir(std::path::Path::new("/nonexistent/policies"), Effect::Allow)
        .expect_err("no such directory");
    assert_eq!(
        error.to_string(),
        "cannot read /nonexistent/policies: no such file or directory (os error 2)"
    );
}
