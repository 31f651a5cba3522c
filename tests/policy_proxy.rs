//! Policies decide every `tools/call` the proxy sees: allowed calls carry the rule that allowed
//! them, denied calls never reach the upstream and the agent gets a tool error that says why,
//! held calls wait for an operator — approved from another process, they run with
//! `authorized_by = approval:operator/<name>`; denied, they never run.

mod common;

use std::path::Path;

use common::stdio_client::{LineClient, proxy_args};
use common::{BIN, TestLedger, run_cli};
use serde_json::{Value, json};

const POLICY: &str = r#"
[[rule]]
name = "customer-ops"
effect = "allow"
server = "customer-ops"
tool = "*"
cost = 1
target = "/customer_id"

[[rule]]
name = "no-large-refunds"
effect = "deny"
server = "customer-ops"
tool = "issue_refund"
reason = "refunds above 1000 go through finance"
[[rule.when]]
arg = "/amount"
gt = 1000

[[rule]]
name = "hold-external-email"
effect = "hold"
server = "customer-ops"
tool = "send_email"
reason = "mail to outside addresses needs a look"
approvers = ["alice"]
expires_after = "1m"
[[rule.when]]
arg = "/to"
not_matches = "@example\\.com$"
"#;

fn calls_received(call_log: &Path) -> Vec<Value> {
    std::fs::read_to_string(call_log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

struct Setup {
    client: LineClient,
    ledger: TestLedger,
    call_log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

async fn start() -> Setup {
    let ledger = TestLedger::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join("ops.toml"), POLICY).unwrap();
    let call_log = dir.path().join("calls.jsonl");
    let mut args = proxy_args(&ledger.url_string(), "support-bot", Some(&call_log));
    args.splice(1..1, ["--policy".to_owned(), policies.display().to_string()]);
    let mut client = LineClient::spawn(BIN, &args);
    client.initialize().await;
    Setup { client, ledger, call_log, _dir: dir }
}

#[tokio::test]
async fn allowed_calls_name_their_rule_and_denied_calls_never_run() {
    let mut s = start().await;
    let ok = s.client.call_tool("lookup_customer", json!({"customer_id": "cus_1001"})).await;
    assert_eq!(ok["result"]["isError"], false, "{ok}");

    let refused = s
        .client
        .call_tool(
            "issue_refund",
            json!({"customer_id": "cus_1001", "amount": 5000, "currency": "USD", "reason": "x"}),
        )
        .await;
    assert_eq!(refused["result"]["isError"], true, "{refused}");
    let text = refused["result"]["content"][0]["text"].as_str().unwrap();
    assert_eq!(
        text,
        "Denied by policy rule `no-large-refunds`: refunds above 1000 go through finance"
    );
    let received = calls_received(&s.call_log);
    assert_eq!(received.len(), 1, "the denied call never reached the upstream: {received:?}");
    assert!(s.client.close().await.success());

    let store = s.ledger.open().await;
    let rows = store.provenance(10).await.unwrap();
    assert_eq!(rows.len(), 2);
    let digest_prefix = mcp_ledger::policy::PolicySet::from_sources(
        &[("ops.toml".into(), POLICY.to_owned())],
        mcp_ledger::policy::Effect::Allow,
    )
    .unwrap()
    .digest_prefix()
    .to_owned();
    assert_eq!(
        rows[0].authorized_by.as_deref(),
        Some(format!("policy:customer-ops@{digest_prefix}").as_str())
    );
    assert_eq!(rows[0].target.as_deref(), Some("cus_1001"));
    assert_eq!(rows[0].cost_credits, Some(1.0));
    assert_eq!(rows[1].outcome, "denied");
    assert_eq!(rows[1].authorized_by, None);
    assert!(rows[1].error.as_deref().unwrap().contains("no-large-refunds"));
    let (code, out, err) = run_cli(&["verify", "--ledger", &s.ledger.url_string()]);
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test]
async fn an_invalid_policy_stops_the_proxy_before_the_upstream_starts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bad.toml"), "[[rule]]\nname = \"x\"\neffect = \"maybe\"\n")
        .unwrap();
    let ledger = TestLedger::sqlite();
    let call_log = dir.path().join("calls.jsonl");
    let mut args = proxy_args(&ledger.url_string(), "a", Some(&call_log));
    args.splice(1..1, ["--policy".to_owned(), dir.path().display().to_string()]);
    let output = std::process::Command::new(BIN).args(&args).output().unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("bad.toml:3"), "names the file and line: {stderr}");
    assert!(!call_log.exists(), "the upstream never started");
}

/// The held calls `approvals list --json` shows, waiting for `tool`.
async fn wait_for_hold(ledger: &str, tool: &str) -> Value {
    for _ in 0..100 {
        let (code, stdout, stderr) = run_cli(&["approvals", "list", "--json", "--ledger", ledger]);
        assert_eq!(code, 0, "{stderr}");
        if let Some(line) = stdout.lines().find(|l| l.contains(tool)) {
            return serde_json::from_str(line).unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no held {tool} call appeared");
}

#[tokio::test]
async fn a_held_call_runs_once_an_allowed_operator_approves_it_and_never_if_denied() {
    let mut s = start().await;
    let url = s.ledger.url_string();
    let outside = json!({"to": "someone@elsewhere.net", "subject": "hi", "body": "b"});
    let (held_id, held) = s.client.request_message(
        "tools/call",
        json!({"name": "send_email", "arguments": outside, "_meta": {"progressToken": "wait-1"}}),
    );
    s.client.send(&held).await;

    // While it waits, the rest of the session goes on.
    let ok = s.client.call_tool("lookup_customer", json!({"customer_id": "cus_1002"})).await;
    assert_eq!(ok["result"]["isError"], false, "{ok}");
    let hold = wait_for_hold(&url, "send_email").await;
    let approval = hold["approval_id"].as_str().unwrap().to_owned();
    assert!(
        calls_received(&s.call_log).iter().all(|c| c["tool"] != "send_email"),
        "held, not forwarded"
    );

    // Only a listed approver may decide.
    let (code, _, stderr) =
        run_cli(&["approvals", "approve", &approval, "--operator", "bob", "--ledger", &url]);
    assert_eq!(code, 64, "{stderr}");
    let (code, _, stderr) =
        run_cli(&["approvals", "approve", &approval, "--operator", "alice", "--ledger", &url]);
    assert_eq!(code, 0, "{stderr}");
    let reply = loop {
        let message = s.client.recv().await;
        if message["id"] == json!(held_id) {
            break message;
        }
        assert_eq!(
            message["method"], "notifications/progress",
            "only progress while waiting: {message}"
        );
        assert_eq!(message["params"]["progressToken"], "wait-1");
    };
    assert_eq!(reply["result"]["isError"], false, "approved and run: {reply}");
    assert!(calls_received(&s.call_log).iter().any(|c| c["tool"] == "send_email"));

    // The same approval cannot be used again; a new held call denied by the operator never runs.
    let (denied_id, denied) =
        s.client.request_message("tools/call", json!({"name": "send_email", "arguments": outside}));
    s.client.send(&denied).await;
    let hold = loop {
        let hold = wait_for_hold(&url, "send_email").await;
        if hold["approval_id"] != json!(approval) {
            break hold;
        }
    };
    let second = hold["approval_id"].as_str().unwrap().to_owned();
    let (code, _, stderr) = run_cli(&[
        "approvals",
        "deny",
        &second,
        "--operator",
        "alice",
        "--reason",
        "not today",
        "--ledger",
        &url,
    ]);
    assert_eq!(code, 0, "{stderr}");
    let reply = s.client.recv().await;
    assert_eq!(reply["id"], json!(denied_id));
    assert_eq!(reply["result"]["isError"], true);
    assert_eq!(reply["result"]["content"][0]["text"], "Denied by operator alice: not today");
    assert_eq!(calls_received(&s.call_log).iter().filter(|c| c["tool"] == "send_email").count(), 1);
    assert!(s.client.close().await.success());

    let store = s.ledger.open().await;
    let rows = store.provenance(10).await.unwrap();
    let emails: Vec<_> =
        rows.iter().filter(|r| r.action.as_deref() == Some("send_email")).collect();
    assert_eq!(emails.len(), 2);
    assert_eq!(emails[0].authorized_by.as_deref(), Some("approval:operator/alice"));
    assert_eq!(emails[0].outcome, "ok");
    assert_eq!(emails[1].authorized_by, None);
    assert_eq!(emails[1].outcome, "denied");
    let (code, out, err) = run_cli(&["verify", "--ledger", &url]);
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test]
async fn policy_test_replays_recorded_calls_against_a_candidate() {
    let mut s = start().await;
    let ok = s.client.call_tool("lookup_customer", json!({"customer_id": "cus_1004"})).await;
    assert_eq!(ok["result"]["isError"], false, "{ok}");
    let refund = json!({"customer_id": "cus_1004", "amount": 20, "currency": "USD", "reason": "late delivery"});
    s.client.call_tool("issue_refund", refund).await;
    assert!(s.client.close().await.success());

    // The candidate denies lookups of the customer that was looked up; refunds are unchanged.
    let candidate = tempfile::tempdir().unwrap();
    let stricter = format!(
        "{POLICY}\n[[rule]]\nname = \"no-vip-lookups\"\neffect = \"deny\"\ntool = \"lookup_customer\"\nreason = \"vip\"\n[[rule.when]]\narg = \"/customer_id\"\nequals = \"cus_1004\"\n"
    );
    std::fs::write(candidate.path().join("ops.toml"), stricter).unwrap();
    let dir = candidate.path().display().to_string();
    let url = s.ledger.url_string();
    let (code, stdout, stderr) =
        run_cli(&["policy", "test", &dir, "--since", "1h", "--ledger", &url, "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["replayed"], 2, "{report}");
    let changes = report["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 1, "{report}");
    assert_eq!(changes[0]["tool"], "lookup_customer");
    assert_eq!(changes[0]["recorded"], "allow (customer-ops)");
    assert_eq!(changes[0]["candidate"], "deny (no-vip-lookups)");

    let (code, stdout, _) = run_cli(&["policy", "test", &dir, "--since", "1h", "--ledger", &url]);
    assert_eq!(code, 0);
    assert!(stdout.contains("1 decision(s) would change"), "{stdout}");
}

#[tokio::test]
async fn a_policy_edit_takes_effect_and_an_invalid_edit_keeps_the_previous_policy() {
    let ledger = TestLedger::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(policies.join("ops.toml"), POLICY).unwrap();
    let mut args = proxy_args(&ledger.url_string(), "support-bot", None);
    args.splice(1..1, ["--policy".to_owned(), policies.display().to_string()]);
    let mut client = LineClient::spawn(BIN, &args);
    client.initialize().await;
    let lookup = json!({"customer_id": "cus_1005"});
    assert_eq!(
        client.call_tool("lookup_customer", lookup.clone()).await["result"]["isError"],
        false
    );

    let deny_lookups = format!(
        "{POLICY}\n[[rule]]\nname = \"lookups-off\"\neffect = \"deny\"\ntool = \"lookup_customer\"\nreason = \"maintenance\"\n"
    );
    std::fs::write(policies.join("ops.toml"), deny_lookups).unwrap();
    let denied_text = "Denied by policy rule `lookups-off`: maintenance";
    let mut reloaded = false;
    for _ in 0..50 {
        let reply = client.call_tool("lookup_customer", lookup.clone()).await;
        if reply["result"]["content"][0]["text"] == denied_text {
            reloaded = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(reloaded, "the edited policy took effect within 10 s");

    // A broken edit is refused; the last good policy stays in force.
    std::fs::write(
        policies.join("ops.toml"),
        "[[rule]]\nname = \"broken\"\neffect = \"perhaps\"\n",
    )
    .unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(4500)).await;
    let reply = client.call_tool("lookup_customer", lookup.clone()).await;
    assert_eq!(reply["result"]["content"][0]["text"], denied_text, "{reply}");
    assert!(client.close().await.success());
}

#[tokio::test]
async fn a_held_call_nobody_decides_expires_and_never_runs() {
    let ledger = TestLedger::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    // The expiry is the clock under test: one second, decided by the proxy, not slept by the test.
    let quick = POLICY.replace("expires_after = \"1m\"", "expires_after = \"1s\"");
    std::fs::write(policies.join("ops.toml"), quick).unwrap();
    let call_log = dir.path().join("calls.jsonl");
    let mut args = proxy_args(&ledger.url_string(), "support-bot", Some(&call_log));
    args.splice(1..1, ["--policy".to_owned(), policies.display().to_string()]);
    let mut client = LineClient::spawn(BIN, &args);
    client.initialize().await;
    let reply = client
        .call_tool("send_email", json!({"to": "x@elsewhere.net", "subject": "s", "body": "b"}))
        .await;
    assert_eq!(reply["result"]["isError"], true, "{reply}");
    assert_eq!(
        reply["result"]["content"][0]["text"],
        "Held for operator approval, but nobody approved it in time"
    );
    assert!(calls_received(&call_log).is_empty(), "an expired hold never runs");
    assert!(client.close().await.success());

    let store = ledger.open().await;
    let rows = store.provenance(10).await.unwrap();
    assert_eq!(rows[0].outcome, "expired");
    assert_eq!(rows[0].authorized_by, None);
    let decisions = store.events_of_type("approval_decision").await.unwrap();
    assert_eq!(decisions.len(), 1);
    assert_eq!(decisions[0].data["verdict"], "expired");
    assert_eq!(decisions[0].data["decided_by"], "system");
    let url = ledger.url_string();
    let (code, _, stderr) = run_cli(&[
        "approvals",
        "approve",
        decisions[0].data["approval_id"].as_str().unwrap(),
        "--operator",
        "alice",
        "--ledger",
        &url,
    ]);
    assert_eq!(code, 64, "an expired hold cannot be approved afterwards: {stderr}");
}

#[tokio::test]
async fn a_daily_budget_denies_the_call_that_would_exceed_it_across_processes() {
    let ledger = TestLedger::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir(&policies).unwrap();
    std::fs::write(
        policies.join("ops.toml"),
        format!("{POLICY}\n[budgets]\n\"support-bot\" = 2\n"),
    )
    .unwrap();
    let call_log = dir.path().join("calls.jsonl");
    let lookup = json!({"customer_id": "cus_1001"});
    // Spending is read from the ledger, so a second proxy process sees what the first one spent.
    for expected_error in [false, false, true] {
        let mut args = proxy_args(&ledger.url_string(), "support-bot", Some(&call_log));
        args.splice(1..1, ["--policy".to_owned(), policies.display().to_string()]);
        let mut client = LineClient::spawn(BIN, &args);
        client.initialize().await;
        let reply = client.call_tool("lookup_customer", lookup.clone()).await;
        assert_eq!(reply["result"]["isError"], expected_error, "{reply}");
        if expected_error {
            let text = reply["result"]["content"][0]["text"].as_str().unwrap();
            assert!(text.contains("daily budget `support-bot` exceeded"), "{text}");
        }
        assert!(client.close().await.success());
    }
    assert_eq!(calls_received(&call_log).len(), 2, "the call over budget never ran");
    let store = ledger.open().await;
    assert_eq!(store.spent_today("support-bot").await.unwrap(), 2.0);
    let rows = store.provenance(10).await.unwrap();
    assert_eq!(rows[2].outcome, "denied");
}
