//! Two ways a `serve` session departs from one upstream connection per `initialize`: a `shared`
//! upstream that multiplexes every session onto one connection (ids and progress tokens remapped
//! and mapped back), and clients of the stateless revision (2026-07-28), which send no session
//! header at all.

mod common;
#[path = "serve/harness.rs"]
mod harness;

use harness::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn shared_server(files_hint: &str) -> String {
    format!(
        "\n[[servers]]\nname = \"shared\"\nshared = true\ncommand = [\"node\", {}]\nenv = {{ UPSTREAM_LOG = {} }}\n",
        serde_json::to_string(&fixture()).unwrap(),
        serde_json::to_string(files_hint).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_upstream_serves_every_session_with_their_own_ids_and_tokens() {
    let log_dir = tempfile::tempdir().unwrap();
    let shared_log = log_dir.path().join("shared-upstream.log");
    let options = Options {
        extra_servers: shared_server(&shared_log.display().to_string()),
        ..Options::default()
    };
    let serve = Serve::start(options).await;
    let mcp = serve.mcp("shared", None);
    let a = mcp.initialize().await;
    let b = mcp.initialize().await;
    assert_ne!(a, b, "each client has its own session");

    // Both sessions use the same JSON-RPC id and progress token; each must get its own answer.
    let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "echo_raw", "arguments": {}, "_meta": {"progressToken": "tok"}}})
    .to_string();
    let (reply_a, reply_b) = tokio::join!(mcp.post(Some(&a), &call), mcp.post(Some(&b), &call));
    for reply in [&reply_a, &reply_b] {
        assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
        let messages = reply.messages();
        let progress: Vec<&Value> =
            messages.iter().filter(|m| m["method"] == "notifications/progress").collect();
        assert_eq!(progress.len(), 1, "{messages:?}");
        assert_eq!(progress[0]["params"]["progressToken"], "tok", "the token is mapped back");
        let response = reply.response(&json!(1));
        assert_eq!(response["id"], 1, "the id is mapped back");
        assert_eq!(
            response["result"]["x-unknown-result-field"],
            json!({"nested": true}),
            "{response}"
        );
    }

    // One upstream process answered both sessions.
    let whoami = |session: String| {
        let mcp = &mcp;
        async move {
            let body = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "whoami", "arguments": {}}}).to_string();
            mcp.post(Some(&session), &body).await.response(&json!(2))["result"].clone()
        }
    };
    assert_eq!(whoami(a.clone()).await, whoami(b.clone()).await);
    let upstream_saw = std::fs::read_to_string(&shared_log).unwrap();
    assert_eq!(
        upstream_saw.matches("\"method\":\"initialize\"").count(),
        1,
        "initialized once: {upstream_saw}"
    );
    assert_eq!(upstream_saw.matches("notifications/initialized").count(), 1, "{upstream_saw}");
    assert!(
        !upstream_saw.contains("\"id\":1,"),
        "session ids never reach the shared upstream: {upstream_saw}"
    );

    // Each session's calls are recorded in that session.
    let events = serve.events().await;
    for session in [&a, &b] {
        let calls = of_type(
            &in_session(&events, session).into_iter().cloned().collect::<Vec<_>>(),
            "tool_call",
        )
        .len();
        assert_eq!(calls, 2, "session {session}");
    }
    let (status, _, _) = serve.stop().await;
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_clients_without_a_session_header_are_served_and_recorded_as_one_session() {
    let serve = Serve::start(Options::default()).await;
    let mcp = serve.mcp(DEMO, None);
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "io.modelcontextprotocol/clientInfo": {"name": "stateless-client", "version": "1.0"}
    });
    let discover =
        json!({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": meta}})
            .to_string();
    let reply = mcp.post(None, &discover).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.session_id(), None, "the stateless revision has no session header");
    assert!(reply.response(&json!(1))["result"]["supportedVersions"].is_array(), "{reply:?}");

    let call = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
        "params": {"name": "lookup_customer", "arguments": {"customer_id": "cus_1003"}, "_meta": meta}})
    .to_string();
    let reply = mcp.post(None, &call).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.response(&json!(2))["result"]["isError"], false, "{reply:?}");

    // Without the revision's _meta and without a session, it is still a bad request.
    let legacy = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/list"}).to_string();
    assert_eq!(mcp.post(None, &legacy).await.status, StatusCode::BAD_REQUEST);

    let events = serve.events().await;
    let starts = of_type(&events, "session_start");
    assert_eq!(starts.len(), 1);
    assert_eq!(starts[0].data["protocol_version"], "2026-07-28");
    assert_eq!(starts[0].data["client_info"]["name"], "stateless-client");
    let session = starts[0].session_id.clone().unwrap();
    let calls = of_type(&events, "tool_call");
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].session_id.as_deref(),
        Some(session.as_str()),
        "the call is in the discover's session"
    );
    let (status, _, _) = serve.stop().await;
    assert!(status.success());
}
