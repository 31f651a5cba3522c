//! Operators decide held calls over HTTP, end to end through the real `serve` binary: the agent's
//! call waits while `/api/approvals` lists it; a denial means the upstream never sees it (the
//! demo server's call log) and `provenance` says `denied`; agent tokens never decide; a decision
//! about other arguments is refused by the API and ignored by the waiting proxy; every hold is
//! announced to the webhook, and a dead webhook holds nothing up.

mod common;
#[path = "serve/harness.rs"]
mod harness;

use std::sync::Arc;
use std::time::Duration;

use harness::*;
use mcp_ledger::approval::{DecisionRecord, HoldRequest, Verdict};
use mcp_ledger::record::{Draft, EventType, Payload};
use mcp_ledger::store::{DEFAULT_CHAIN, Store};
use reqwest::StatusCode;
use serde_json::{Value, json};

use common::run_cli;

/// Mail outside example.com is held for alice.
const POLICY: &str = r#"
[[rule]]
name = "demo-reads"
effect = "allow"
server = "demo"
tool = "*"

[[rule]]
name = "hold-outside-email"
effect = "hold"
server = "demo"
tool = "send_email"
reason = "mail to an outside address"
approvers = ["alice"]
expires_after = "2m"
[[rule.when]]
arg = "/to"
not_matches = "@example\\.com$"
"#;

const PATIENCE: Duration = Duration::from_secs(30);

/// An `[[operators]]` entry with the token it sends.
struct Operator {
    name: &'static str,
    token: String,
}

struct Setup {
    serve: Serve,
    agent: AgentCred,
    alice: Operator,
    bob: Operator,
    _policies: tempfile::TempDir,
}

/// `serve` with agent `bot`, operators alice and bob, the hold policy, and `approvals` (the
/// body of an `[approvals]` table, if any).
async fn start(approvals: Option<String>) -> Setup {
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(policies.path().join("mail.toml"), POLICY).unwrap();
    let agent = AgentCred::new("bot");
    let alice = Operator { name: "alice", token: format!("mcpl_op_{}", uuid::Uuid::new_v4()) };
    let bob = Operator { name: "bob", token: format!("mcpl_op_{}", uuid::Uuid::new_v4()) };
    let sha = mcp_ledger::config::token_sha256;
    let mut raw = format!(
        "\n[[agents]]\nname = \"{}\"\ntoken_sha256 = \"{}\"\n",
        agent.name,
        sha(&agent.token)
    );
    for op in [&alice, &bob] {
        raw.push_str(&format!(
            "\n[[operators]]\nname = \"{}\"\ntoken_sha256 = \"{}\"\n",
            op.name,
            sha(&op.token)
        ));
    }
    raw.push_str(&format!(
        "\n[policy]\ndir = {}\n",
        serde_json::to_string(&policies.path().display().to_string()).unwrap()
    ));
    if let Some(approvals) = approvals {
        raw.push_str(&format!("\n[approvals]\n{approvals}\n"));
    }
    let serve = Serve::start(Options { raw_agents: Some(raw), ..Options::default() }).await;
    Setup { serve, agent, alice, bob, _policies: policies }
}

fn outside_email() -> Value {
    json!({"to": "someone@elsewhere.net", "subject": "quote", "body": "see attached"})
}

impl Setup {
    fn api_get(&self, path: &str, token: Option<&str>) -> reqwest::RequestBuilder {
        let mut request = self.serve.http.client.get(format!("{}{path}", self.serve.http.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request
    }

    fn api_post(&self, path: &str, token: &str, body: Value) -> reqwest::RequestBuilder {
        self.serve
            .http
            .client
            .post(format!("{}{path}", self.serve.http.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
    }

    /// Starts an MCP session as the agent and sends `send_email` in the background; the task
    /// returns the JSON-RPC response once the hold is resolved.
    async fn held_call(&self, id: u64, arguments: Value) -> tokio::task::JoinHandle<Value> {
        let mcp = self.serve.mcp(DEMO, Some(&self.agent));
        let session = mcp.initialize().await;
        tokio::spawn(async move {
            let reply = mcp
                .post_within(Some(&session), &call_body(id, "send_email", arguments), PATIENCE)
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
            reply.response(&json!(id))
        })
    }

    /// The pending request for `tool`, as alice sees it, once it appears.
    async fn pending(&self, tool: &str) -> Value {
        eventually("a held call in /api/approvals", PATIENCE, || async {
            let reply = send(self.api_get("/api/approvals", Some(&self.alice.token)), QUICK).await;
            assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
            reply.json()["approvals"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["tool"] == tool)
                .cloned()
        })
        .await
    }

    fn emails_received(&self) -> usize {
        self.serve.call_log().iter().filter(|c| c["tool"] == "send_email").count()
    }

    async fn store(&self) -> Arc<dyn Store> {
        self.serve.files.ledger.open().await
    }
}

async fn finished(task: tokio::task::JoinHandle<Value>) -> Value {
    tokio::time::timeout(PATIENCE, task).await.expect("the held call was answered").unwrap()
}

#[tokio::test]
async fn a_call_held_and_denied_through_the_api_never_runs() {
    let s = start(None).await;
    let call = s.held_call(1, outside_email()).await;
    let held = s.pending("send_email").await;
    assert_eq!(held["agent"], json!(s.agent.name));
    assert_eq!(held["server"], DEMO);
    // Kept redacted by default: the operator sees every argument but the address itself.
    let mut shown = outside_email();
    shown["to"] = json!("[REDACTED:email]");
    assert_eq!(
        held["arguments"], shown,
        "the operator sees the arguments as the ledger keeps them"
    );
    assert_eq!(held["arguments_redacted"], true);
    assert_eq!(held["rule"], "hold-outside-email");
    assert_eq!(held["approvers"], json!(["alice"]));
    assert_eq!(held["may_decide"], true);
    let id = held["approval_id"].as_str().unwrap().to_owned();
    assert_eq!(s.emails_received(), 0, "held, not forwarded");

    // A denial needs a reason; bob is not an approver of this rule.
    let deny = format!("/api/approvals/{id}/deny");
    let reply = send(s.api_post(&deny, &s.alice.token, json!({})), QUICK).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
    assert_eq!(reply.json()["code"], "reason_required");
    let reply = send(s.api_post(&deny, &s.bob.token, json!({"reason": "no"})), QUICK).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    assert_eq!(reply.json()["code"], "not_an_approver");

    let reason = "no quotes to outside addresses this week";
    let reply = send(s.api_post(&deny, &s.alice.token, json!({"reason": reason})), QUICK).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(reply.json()["verdict"], "denied");

    let response = finished(call).await;
    assert_eq!(response["result"]["isError"], true, "{response}");
    assert_eq!(
        response["result"]["content"][0]["text"],
        json!(format!("Denied by operator alice: {reason}"))
    );
    assert_eq!(s.emails_received(), 0, "the upstream never saw the denied call");
    let reply = send(s.api_post(&deny, &s.alice.token, json!({"reason": "again"})), QUICK).await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{reply:?}");
    assert_eq!(reply.json()["code"], "already_decided");

    let store = s.store().await;
    let rows = store.provenance(20).await.unwrap();
    let email: Vec<_> = rows.iter().filter(|r| r.action.as_deref() == Some("send_email")).collect();
    assert_eq!(email.len(), 1, "{rows:?}");
    assert_eq!(email[0].outcome, "denied");
    assert_eq!(email[0].authorized_by, None);
    let events = s.serve.events().await;
    let decisions = of_type(&events, "approval_decision");
    assert_eq!(decisions.len(), 1, "{decisions:?}");
    let decision = &decisions[0].data;
    assert_eq!(decision["approval_id"], json!(id));
    assert_eq!(decision["decided_by"], "operator/alice", "who");
    assert_eq!(decision["reason"], reason, "why");
    assert!(!decisions[0].timestamp.is_empty(), "when");
    store.close().await;

    let (status, files, stderr) = s.serve.stop().await;
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains(&s.alice.token), "tokens never reach the log");
    let (code, out, err) = run_cli(&["verify", "--ledger", &files.ledger.url_string()]);
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test]
async fn agent_tokens_can_never_see_or_decide_approvals() {
    let s = start(None).await;
    let call = s.held_call(1, outside_email()).await;
    let id = s.pending("send_email").await["approval_id"].as_str().unwrap().to_owned();
    let agent = &s.agent.token;

    let reply = send(s.api_get("/api/approvals", Some(agent)), QUICK).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    assert_eq!(reply.json()["code"], "agent_token");
    assert!(!reply.body.contains("someone@elsewhere.net"), "no arguments for agents");
    for verdict in ["approve", "deny"] {
        let path = format!("/api/approvals/{id}/{verdict}");
        let reply = send(s.api_post(&path, agent, json!({"reason": "self-service"})), QUICK).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{verdict}: {reply:?}");
        assert!(reply.json()["error"].as_str().unwrap().contains("agent"), "{reply:?}");
    }
    for token in [None, Some("mcpl_not_a_token")] {
        let path = format!("/api/approvals/{id}/approve");
        let mut request = s.serve.http.client.post(format!("{}{path}", s.serve.http.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let reply = send(request, QUICK).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
        assert_eq!(reply.header("www-authenticate").as_deref(), Some("Bearer"));
    }
    let events = s.serve.events().await;
    assert!(of_type(&events, "approval_decision").is_empty(), "nothing was decided");
    assert_eq!(s.pending("send_email").await["status"], "pending");
    assert!(!call.is_finished(), "the call still waits");
    assert_eq!(s.emails_received(), 0);
    call.abort();
}

#[tokio::test]
async fn an_approval_for_changed_arguments_is_refused_and_the_call_keeps_waiting() {
    let s = start(None).await;
    let call = s.held_call(1, outside_email()).await;
    let held = s.pending("send_email").await;
    let id = held["approval_id"].as_str().unwrap().to_owned();
    let changed = json!({"to": "attacker@elsewhere.net", "subject": "quote", "body": "all of it"});
    let changed_ref = Payload::of(&changed).reference;

    // Through the API: the operator reviewed other arguments than the call holds.
    let approve = format!("/api/approvals/{id}/approve");
    let reply =
        send(s.api_post(&approve, &s.alice.token, json!({"arguments_ref": changed_ref})), QUICK)
            .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{reply:?}");
    assert_eq!(reply.json()["code"], "arguments_changed");

    // Forged into the ledger directly: a decision by alice that binds other arguments. The
    // waiting proxy must ignore it.
    let store = s.store().await;
    let requested = of_type(&s.serve.events().await, "approval_requested")[0].clone();
    let mut request = HoldRequest::from_event(&requested).unwrap();
    assert_eq!(request.arguments_ref, held["arguments_ref"].as_str().unwrap());
    request.arguments_ref = changed_ref;
    let forged = DecisionRecord::for_request(
        &request,
        Verdict::Approved { operator: "alice".into(), reason: Some("forged".into()) },
    );
    let mut draft = Draft::new(EventType::ApprovalDecision, forged.to_data());
    draft.session_id.clone_from(&requested.session_id);
    draft.agent.clone_from(&requested.agent);
    draft.server.clone_from(&requested.server);
    store.append(DEFAULT_CHAIN, &[draft]).await.unwrap();

    // The proxy looks every 250 ms; give it several looks.
    eventually("the proxy to notice and ignore the forged decision", PATIENCE, || async {
        let stderr = s.serve.process.stderr_text();
        stderr.contains("ignoring an approval decision").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(!call.is_finished(), "the call still waits");
    assert_eq!(s.emails_received(), 0, "the forged approval let nothing through");
    assert_eq!(s.pending("send_email").await["status"], "pending");

    // A decision about the arguments the call really holds goes through.
    let reviewed = held["arguments_ref"].clone();
    let reply =
        send(s.api_post(&approve, &s.alice.token, json!({"arguments_ref": reviewed})), QUICK).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let response = finished(call).await;
    assert_eq!(response["result"]["isError"], false, "{response}");
    assert_eq!(s.emails_received(), 1);
    let rows = store.provenance(20).await.unwrap();
    let email = rows.iter().find(|r| r.action.as_deref() == Some("send_email")).unwrap();
    assert_eq!(email.authorized_by.as_deref(), Some("approval:operator/alice"));
    assert_eq!(email.outcome, "ok");
    store.close().await;
}

/// A webhook receiver: every JSON body POSTed to it.
async fn webhook_receiver() -> (String, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    let (sender, bodies) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hooks/ops",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let sender = sender.clone();
            async move {
                let _ = sender.send(body);
                StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks/ops", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, bodies)
}

#[tokio::test]
async fn every_hold_is_announced_to_the_webhook() {
    let (url, mut bodies) = webhook_receiver().await;
    let s = start(Some(format!("webhook_url = \"{url}\""))).await;
    let call = s.held_call(1, outside_email()).await;
    let held = s.pending("send_email").await;
    let body = tokio::time::timeout(PATIENCE, bodies.recv()).await.expect("announced").unwrap();
    assert_eq!(body["event"], "approval_requested");
    for key in ["approval_id", "call_id", "agent", "server", "tool", "rule", "reason", "approvers"]
    {
        assert_eq!(body[key], held[key], "{key}");
    }
    assert_eq!(body["expires_at"], held["expires_at"]);
    let console =
        format!("{}/console#{}", s.serve.http.base, held["approval_id"].as_str().unwrap());
    assert_eq!(body["console_url"], json!(console));
    assert!(body.get("arguments").is_none(), "arguments stay out of chat channels: {body}");

    let id = held["approval_id"].as_str().unwrap();
    let reply =
        send(s.api_post(&format!("/api/approvals/{id}/approve"), &s.alice.token, json!({})), QUICK)
            .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(finished(call).await["result"]["isError"], false);
    assert!(bodies.try_recv().is_err(), "one announcement per hold");
}

#[tokio::test]
async fn a_webhook_at_a_closed_port_holds_nothing_up() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let secret = "hook-s3cret-value";
    let s = start(Some(format!("webhook_url = \"http://{closed}/hook?sig={secret}\""))).await;
    let call = s.held_call(1, outside_email()).await;
    let held = s.pending("send_email").await;
    let id = held["approval_id"].as_str().unwrap();

    eventually("the failed delivery to be logged", PATIENCE, || async {
        s.serve.process.stderr_text().contains("the approvals webhook failed").then_some(())
    })
    .await;
    let reply = send(
        s.api_post(&format!("/api/approvals/{id}/deny"), &s.alice.token, json!({"reason": "no"})),
        QUICK,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert_eq!(finished(call).await["result"]["isError"], true);
    assert_eq!(s.emails_received(), 0);
    let (status, _, stderr) = s.serve.stop().await;
    assert!(status.success(), "{stderr}");
    assert!(!stderr.contains(secret), "the webhook's secret never reaches the log: {stderr}");
}

#[tokio::test]
async fn a_webhook_that_never_answers_holds_nothing_up() {
    // Accepts connections and never answers: only the timeout ends each delivery.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let accepted = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let s =
        start(Some(format!("webhook_url = \"http://{addr}/hook\"\nwebhook_timeout_ms = 60000")))
            .await;
    let call = s.held_call(1, outside_email()).await;
    let id = s.pending("send_email").await["approval_id"].as_str().unwrap().to_owned();
    let reply =
        send(s.api_post(&format!("/api/approvals/{id}/approve"), &s.alice.token, json!({})), QUICK)
            .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let response = finished(call).await;
    assert_eq!(response["result"]["isError"], false, "{response}");
    assert_eq!(s.emails_received(), 1);
    accepted.abort();
}
