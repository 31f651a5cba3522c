//! The API against a real SQLite ledger, served in-process on a loopback port.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::*;
use crate::approval::{HoldRequest, State as HoldState};
use crate::config::token_sha256;
use crate::intercept::HoldNotifier;
use crate::record::{Draft, EventType, Payload};
use crate::store::{self, DEFAULT_CHAIN, LedgerUrl, StoreOptions};

const ALICE: &str = "t-alice";
const BOB: &str = "t-bob";
const AGENT: &str = "t-agent";

struct Api {
    base: String,
    client: reqwest::Client,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

async fn start() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let url = LedgerUrl::Sqlite(dir.path().join("ledger.db"));
    let store = store::open(&url, &StoreOptions::default()).await.unwrap();
    let operators = OperatorTokens::new(
        &[("alice".into(), token_sha256(ALICE)), ("bob".into(), token_sha256(BOB))],
        &[("bot".into(), token_sha256(AGENT))],
    )
    .unwrap();
    let state = ApiState { store: store.clone(), operators, origins: OriginPolicy::default() };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    Api { base, client, store, _dir: dir }
}

/// Holds a call in the ledger as the proxy would: its arguments' body and the request.
async fn hold(store: &dyn Store, approvers: &[&str], arguments: Value) -> HoldRequest {
    let payload = Payload::of(&arguments);
    let request = HoldRequest::new(
        uuid::Uuid::now_v7().to_string(),
        "bot".into(),
        "crm".into(),
        "send_email".into(),
        payload.reference.clone(),
        "digest-1".into(),
        Some("hold-external-email".into()),
        Some("mail to outside addresses".into()),
        approvers.iter().map(|a| a.to_string()).collect(),
        Duration::from_secs(600),
    );
    let mut draft = Draft::new(EventType::ApprovalRequested, request.to_data());
    draft.agent = Some("bot".into());
    draft.server = Some("crm".into());
    draft.session_id = Some("session-1".into());
    draft.payloads.push(payload);
    store.append(DEFAULT_CHAIN, &[draft]).await.unwrap();
    request
}

impl Api {
    async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        reply(request).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        let request = self
            .client
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string());
        reply(request).await
    }

    async fn state(&self, approval_id: &str) -> HoldState {
        crate::approval::find(self.store.as_ref(), approval_id).await.unwrap().unwrap().state
    }
}

async fn reply(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

#[tokio::test]
async fn only_operator_tokens_get_in_and_agents_are_told_why() {
    let api = start().await;
    let (status, body) = api.get("/api/approvals", None).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")), "{body}");
    let (status, body) = api.get("/api/approvals", Some("t-unknown")).await;
    assert_eq!((status, &body), (401, &json!({"error": "unknown token", "code": "unauthorized"})));
    let (status, body) = api.get("/api/approvals", Some(AGENT)).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("agent_token")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("agents can never"), "{body}");

    let response = api.client.get(format!("{}/api/approvals", api.base)).send().await.unwrap();
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_eq!(response.headers()["cache-control"], "no-store");

    let (status, body) = api.get("/api/whoami", Some(ALICE)).await;
    assert_eq!((status, body), (200, json!({"operator": "alice"})));

    let response = api
        .client
        .get(format!("{}/api/approvals", api.base))
        .bearer_auth(ALICE)
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "forbidden_origin");
}

#[tokio::test]
async fn pending_calls_are_listed_with_their_arguments() {
    let api = start().await;
    let arguments = json!({"to": "someone@elsewhere.net", "subject": "hi"});
    let request = hold(api.store.as_ref(), &["alice"], arguments.clone()).await;

    let (status, body) = api.get("/api/approvals", Some(BOB)).await;
    assert_eq!(status, 200, "{body}");
    let listed = &body["approvals"][0];
    assert_eq!(body["approvals"].as_array().unwrap().len(), 1);
    assert_eq!(listed["approval_id"], json!(request.approval_id));
    assert_eq!(listed["arguments"], arguments);
    assert_eq!(listed["arguments_ref"], json!(request.arguments_ref));
    assert_eq!(listed["tool"], "send_email");
    assert_eq!(listed["rule"], "hold-external-email");
    assert_eq!(listed["status"], "pending");
    assert_eq!(listed["session_id"], "session-1");
    assert_eq!(listed["may_decide"], false, "bob is not an approver");
    let (_, as_alice) = api.get("/api/approvals", Some(ALICE)).await;
    assert_eq!(as_alice["approvals"][0]["may_decide"], true);

    let (status, one) =
        api.get(&format!("/api/approvals/{}", request.approval_id), Some(ALICE)).await;
    assert_eq!(status, 200);
    assert_eq!(one["arguments"], arguments);
    let (status, missing) = api.get("/api/approvals/nope", Some(ALICE)).await;
    assert_eq!((status, missing["code"].as_str()), (404, Some("not_found")));
}

#[tokio::test]
async fn a_denial_needs_a_reason_and_is_recorded_once() {
    let api = start().await;
    let request = hold(api.store.as_ref(), &[], json!({"to": "x@y.z"})).await;
    let path = format!("/api/approvals/{}/deny", request.approval_id);

    let (status, body) = api.post(&path, ALICE, json!({})).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("reason_required")), "{body}");
    let (status, body) = api.post(&path, ALICE, json!({"reason": "  "})).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = api.post(&path, ALICE, json!({"reason": "x", "extra": 1})).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_request")), "{body}");
    assert_eq!(api.state(&request.approval_id).await, HoldState::Pending);

    let (status, body) = api.post(&path, ALICE, json!({"reason": "not today"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["verdict"], "denied");
    assert_eq!(body["decided_by"], "operator/alice");
    assert_eq!(body["reason"], "not today");
    assert_eq!(body["authorized_by"], Value::Null);

    let approve = format!("/api/approvals/{}/approve", request.approval_id);
    let (status, body) = api.post(&approve, BOB, json!({})).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("already_decided")), "{body}");
    assert!(body["error"].as_str().unwrap().contains("denied by operator/alice"), "{body}");
    let (_, list) = api.get("/api/approvals", Some(ALICE)).await;
    assert_eq!(list["approvals"], json!([]));
}

#[tokio::test]
async fn approvals_are_refused_for_other_arguments_other_operators_and_agents() {
    let api = start().await;
    let request = hold(api.store.as_ref(), &["alice"], json!({"to": "x@y.z"})).await;
    let path = format!("/api/approvals/{}/approve", request.approval_id);

    let other = Payload::of(&json!({"to": "boss@y.z"})).reference;
    let (status, body) = api.post(&path, ALICE, json!({"arguments_ref": other})).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("arguments_changed")), "{body}");
    assert!(body["error"].as_str().unwrap().contains(&other), "{body}");

    let (status, body) = api.post(&path, BOB, json!({})).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("not_an_approver")), "{body}");
    let (status, body) = api.post(&path, AGENT, json!({})).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("agent_token")), "{body}");
    assert_eq!(api.state(&request.approval_id).await, HoldState::Pending, "nothing decided");

    let (status, body) = api
        .post(&path, ALICE, json!({"arguments_ref": request.arguments_ref, "reason": "fine"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["authorized_by"], "approval:operator/alice");
    // An empty body is an approval without a reason.
    let second = hold(api.store.as_ref(), &[], json!({})).await;
    let response = api
        .client
        .post(format!("{}/api/approvals/{}/approve", api.base, second.approval_id))
        .bearer_auth(BOB)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
}

#[tokio::test]
async fn the_console_is_one_locked_down_page() {
    let api = start().await;
    let response = api.client.get(format!("{}/console", api.base)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(headers["x-frame-options"], "DENY");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("connect-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    let page = response.text().await.unwrap();
    assert!(page.contains("/api/approvals") && page.contains("sessionStorage"));
    assert!(!page.contains(".innerHTML"), "values are put in the page as text only");

    let response = api
        .client
        .get(format!("{}/console", api.base))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
}

/// A local webhook receiver: the bodies it got, and the status it answers.
async fn receiver(status: u16) -> (String, tokio::sync::mpsc::UnboundedReceiver<Value>) {
    let (sender, bodies) = tokio::sync::mpsc::unbounded_channel();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
            let sender = sender.clone();
            async move {
                let _ = sender.send(body);
                axum::http::StatusCode::from_u16(status).unwrap()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook?token=s3cret", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, bodies)
}

fn sample_request() -> HoldRequest {
    HoldRequest::new(
        "call-1".into(),
        "bot".into(),
        "crm".into(),
        "send_email".into(),
        "sha256:aa".into(),
        "digest".into(),
        Some("hold-external-email".into()),
        Some("outside mail".into()),
        vec!["alice".into()],
        Duration::from_secs(60),
    )
}

#[tokio::test]
async fn the_webhook_posts_the_documented_payload() {
    let (url, mut bodies) = receiver(200).await;
    let webhook = Webhook::new(&url, Duration::from_secs(3), "http://ledger/console").unwrap();
    assert_eq!(
        webhook.shown_url().split("://").nth(1).unwrap().split('/').nth(1),
        Some("<redacted>")
    );
    let request = sample_request();
    webhook.deliver(&request).await.unwrap();
    let body = bodies.recv().await.unwrap();
    let keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "agent",
            "approval_id",
            "approvers",
            "call_id",
            "console_url",
            "event",
            "expires_at",
            "reason",
            "rule",
            "server",
            "text",
            "tool"
        ]
    );
    assert_eq!(body["approval_id"], json!(request.approval_id));
    assert_eq!(
        body["console_url"],
        json!(format!("http://ledger/console#{}", request.approval_id))
    );
    assert_eq!(body["approvers"], json!(["alice"]));
    assert!(body["text"].as_str().unwrap().contains("`send_email`"), "{body}");

    // The notifier returns at once and delivers in the background.
    webhook.held(&request);
    let body = tokio::time::timeout(Duration::from_secs(5), bodies.recv()).await.unwrap().unwrap();
    assert_eq!(body["call_id"], "call-1");
}

#[tokio::test]
async fn webhook_failures_are_errors_without_the_url() {
    let (url, _bodies) = receiver(500).await;
    let webhook = Webhook::new(&url, Duration::from_secs(3), "http://c").unwrap();
    let error = webhook.deliver(&sample_request()).await.unwrap_err();
    assert_eq!(error.to_string(), "the webhook answered 500 Internal Server Error");

    // A closed port: refused quickly, and the message never repeats the url.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let webhook =
        Webhook::new(&format!("http://{closed}/x?token=s3cret"), Duration::from_millis(500), "c")
            .unwrap();
    let error = webhook.deliver(&sample_request()).await.unwrap_err();
    let message = format!("{error:#}");
    assert!(message.starts_with("the webhook could not be reached"), "{message}");
    assert!(!message.contains("s3cret") && !message.contains(&closed.to_string()), "{message}");

    assert!(matches!(Webhook::new("ftp://x", Duration::from_secs(1), "c"), Err(WebhookError::Url)));
}
