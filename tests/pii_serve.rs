//! PII settings of `mcp-ledger.toml` through `serve` over Streamable HTTP: a custom pattern is
//! found and redacted, a disabled built-in is not, a tool kept as `none` leaves no body, and no
//! sensitive value reaches the ledger file.

mod common;
#[path = "serve/harness.rs"]
mod harness;

use harness::*;
use serde_json::json;

const EMAIL: &str = "omar.haddad@fabrikam-mail.com";
const EMPLOYEE: &str = "EMP-472913";

fn pii_server() -> String {
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pii_upstream.js");
    format!(
        r#"
[[servers]]
name = "crm"
command = ["node", {fixture:?}]
env = {{ PII_CARD = "4111 1111 1111 1111", PII_AWS_KEY = "AKIAQ3XWZ5MPLR7TNBVY" }}
tool_payloads = {{ ping = "none" }}

[audit]
pii_disabled = ["ip_address"]

[[audit.pii_patterns]]
name = "employee_id"
regex = '\bEMP-[0-9]{{6}}\b'
"#,
        fixture = fixture.display().to_string()
    )
}

#[tokio::test]
async fn configured_patterns_and_storage_modes_apply_to_http_sessions() {
    let agent = AgentCred::new("support-bot");
    let serve = Serve::start(Options {
        agents: vec![agent.clone()],
        extra_servers: pii_server(),
        ..Options::default()
    })
    .await;
    let mcp = serve.mcp("crm", Some(&agent));
    let session = mcp.initialize().await;
    let note = format!("ask {EMPLOYEE} from 10.20.30.40 via {EMAIL}");
    let reply = mcp.post(Some(&session), &call_body(2, "lookup", json!({"note": note}))).await;
    let result = reply.response(&json!(2));
    assert_eq!(result["result"]["structuredContent"]["customer"]["card"], "4111 1111 1111 1111");
    let reply = mcp.post(Some(&session), &call_body(3, "ping", json!({"to": EMAIL}))).await;
    assert_eq!(reply.response(&json!(3))["result"]["content"][0]["text"], "pong");
    let (status, files, _) = serve.stop().await;
    assert!(status.success());

    let events = read_events(&files.ledger).await;
    let calls = of_type(&events, "tool_call");
    assert_eq!(
        calls[0].data["input_pii"],
        json!(["email", "employee_id"]),
        "no ip_address: disabled"
    );
    assert_eq!(calls[0].data["input_stored"], "redacted");
    assert_eq!(calls[1].data["input_stored"], "none", "tool_payloads keeps nothing of ping");
    let start = of_type(&events, "session_start")[0];
    assert_eq!(start.data["pii"]["tool_payloads"], json!({"ping": "none"}));
    assert!(start.data["pii"]["patterns"].as_array().unwrap().contains(&json!("employee_id")));

    let store = files.ledger.open().await;
    let kept =
        store.payload(calls[0].data["input_stored_ref"].as_str().unwrap()).await.unwrap().unwrap();
    assert_eq!(
        kept,
        r#"{"note":"ask [REDACTED:employee_id] from 10.20.30.40 via [REDACTED:email]"}"#
    );
    store.close().await;
    let bytes = ledger_bytes(&files.ledger);
    for value in [EMAIL, EMPLOYEE, "4111 1111 1111 1111", "AKIAQ3XWZ5MPLR7TNBVY"] {
        assert!(!contains(&bytes, value), "the ledger holds `{value}`");
    }
}
