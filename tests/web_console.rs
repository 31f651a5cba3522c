//! The operator console in a real browser: `serve` holds an agent's call, headless Chromium
//! (driven by playwright-core through `tests/web/console.mjs`) signs in, sees the call with its
//! arguments and presses approve; the call then runs, authorized by `approval:operator/alice`.
//!
//! Needs Debian's `chromium` and `npm ci --prefix tests/npm`; `.ci/run` installs both. Missing
//! either is a failure that says how to install it, never a skip.

mod common;
#[path = "serve/harness.rs"]
mod harness;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use harness::*;
use reqwest::StatusCode;
use serde_json::json;

const POLICY: &str = r#"
[[rule]]
name = "hold-outside-email"
effect = "hold"
server = "demo"
tool = "send_email"
reason = "mail to an outside address"
approvers = ["alice"]
expires_after = "5m"
[[rule.when]]
arg = "/to"
not_matches = "@example\\.com$"
"#;

const CHROMIUM: &str = "/usr/bin/chromium";

fn require_prerequisites() {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's chromium (`apt-get update && apt-get install -y chromium`; .ci/run does this)"
    );
    let module =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/npm/node_modules/playwright-core");
    assert!(
        module.join("package.json").exists(),
        "{} is missing: run `npm ci --prefix tests/npm` (.ci/run does this)",
        module.display()
    );
    let node = std::process::Command::new("node").arg("--version").output();
    assert!(node.is_ok_and(|o| o.status.success()), "node is missing: install Node.js 20 or later");
}

#[tokio::test]
async fn the_console_approves_a_held_call_in_a_real_browser() {
    require_prerequisites();
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(policies.path().join("mail.toml"), POLICY).unwrap();
    let agent = AgentCred::new("bot");
    let operator_token = format!("mcpl_op_{}", uuid::Uuid::new_v4().simple());
    let sha = mcp_ledger::config::token_sha256;
    let raw = format!(
        "\n[[agents]]\nname = \"bot\"\ntoken_sha256 = \"{}\"\n\n[[operators]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\n\n[policy]\ndir = {}\n",
        sha(&agent.token),
        sha(&operator_token),
        serde_json::to_string(&policies.path().display().to_string()).unwrap()
    );
    let serve = Serve::start(Options { raw_agents: Some(raw), ..Options::default() }).await;

    // The agent's call, over HTTP, waits for the operator in the background.
    let mcp = serve.mcp(DEMO, Some(&agent));
    let session = mcp.initialize().await;
    let arguments =
        json!({"to": "buyer@elsewhere.net", "subject": "your quote", "body": "attached"});
    let call = tokio::spawn(async move {
        let body = call_body(7, "send_email", arguments);
        let reply = mcp.post_within(Some(&session), &body, Duration::from_secs(90)).await;
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        reply.response(&json!(7))
    });

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/web/console.mjs");
    let browser = tokio::process::Command::new("node")
        .arg(&script)
        .env("CONSOLE_URL", format!("{}/console", serve.http.base))
        .env("OPERATOR_TOKEN", &operator_token)
        .env("AGENT_TOKEN", &agent.token)
        .env("EXPECT_TOOL", "send_email")
        // Kept redacted by default: the operator sees the call, not the address itself.
        .env("EXPECT_TEXT", r#""to": "[REDACTED:email]""#)
        .env("CHROMIUM", CHROMIUM)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), browser)
        .await
        .expect("the browser run finished within 2 minutes")
        .expect("run node");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "console.mjs failed ({}):\n{stdout}\n{stderr}\nserve's log:\n{}",
        output.status,
        serve.process.stderr_text()
    );

    let response = tokio::time::timeout(Duration::from_secs(30), call)
        .await
        .expect("the approved call was answered")
        .unwrap();
    assert_eq!(response["result"]["isError"], false, "the call ran: {response}");
    let received: Vec<_> =
        serve.call_log().into_iter().filter(|c| c["tool"] == "send_email").collect();
    assert_eq!(received.len(), 1, "the upstream got the approved call once: {received:?}");

    let store = serve.files.ledger.open().await;
    let rows = store.provenance(20).await.unwrap();
    let email = rows.iter().find(|r| r.action.as_deref() == Some("send_email")).unwrap();
    assert_eq!(email.authorized_by.as_deref(), Some("approval:operator/alice"));
    assert_eq!(email.outcome, "ok");
    store.close().await;
    let events = serve.events().await;
    let decisions = of_type(&events, "approval_decision");
    assert_eq!(decisions.len(), 1, "one decision, by the operator: {decisions:?}");
    assert_eq!(decisions[0].data["decided_by"], "operator/alice");
    assert_eq!(decisions[0].data["reason"], "checked with the customer");
    assert_eq!(decisions[0].data["verdict"], "approved");
}
