//! Observability end to end, through the real binary: `serve`'s `/metrics` after real calls
//! (allowed, failed, denied, held, with PII), request spans received by a fake OTLP/HTTP
//! collector, `stdio --metrics-addr`, and progress that never shows in piped output.

mod common;
#[path = "serve/harness.rs"]
mod harness;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harness::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

use common::{TestLedger, run_cli};
use mcp_ledger::record::checkpoint::SigningKey;
use mcp_ledger::record::{Draft, EventType};
use mcp_ledger::store::DEFAULT_CHAIN;

const PATIENCE: Duration = Duration::from_secs(30);

/// Refunds are denied; mail outside example.com is held for alice; everything else is allowed.
const POLICY: &str = r#"
[[rule]]
name = "demo-rest"
effect = "allow"
server = "demo"
tool = "*"

[[rule]]
name = "no-refunds"
effect = "deny"
server = "demo"
tool = "issue_refund"
reason = "refunds need a person"

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

/// One sample of the exposition: metric name, labels, value.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses the OpenMetrics text (label values here never hold `,` `"` or `}`).
fn samples(text: &str) -> Vec<Sample> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("`series value`");
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let labels = labels
                .split(',')
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair.split_once('=').expect("`key=\"value\"`");
                    (key.to_owned(), value.trim_matches('"').to_owned())
                })
                .collect();
            Sample { name: name.to_owned(), labels, value: value.parse().expect("a number") }
        })
        .collect()
}

/// The value of the one sample named `name` whose labels include `labels`; 0 when none is.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .collect();
    assert!(matching.len() <= 1, "several samples of {name} match {labels:?}: {matching:#?}");
    matching.first().map_or(0.0, |s| s.value)
}

async fn scrape(serve: &Serve) -> (String, Vec<Sample>) {
    let reply = send(serve.http.client.get(format!("{}/metrics", serve.http.base)), QUICK).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let content_type = reply.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    let parsed = samples(&reply.body);
    (reply.body, parsed)
}

struct Setup {
    serve: Serve,
    agent: AgentCred,
    operator_token: String,
    _policies: tempfile::TempDir,
}

/// `serve` with agent `bot`, operator alice and the policy above; `extra` is appended to the
/// configuration.
async fn start(extra: &str) -> Setup {
    let policies = tempfile::tempdir().unwrap();
    std::fs::write(policies.path().join("policy.toml"), POLICY).unwrap();
    let agent = AgentCred::new("bot");
    let operator_token = format!("mcpl_op_{}", uuid::Uuid::new_v4().simple());
    let sha = mcp_ledger::config::token_sha256;
    let raw = format!(
        "\n[[agents]]\nname = \"bot\"\ntoken_sha256 = \"{}\"\n\n[[operators]]\nname = \"alice\"\ntoken_sha256 = \"{}\"\n\n[policy]\ndir = {}\n{extra}",
        sha(&agent.token),
        sha(&operator_token),
        serde_json::to_string(&policies.path().display().to_string()).unwrap(),
    );
    let serve = Serve::start(Options { raw_agents: Some(raw), ..Options::default() }).await;
    Setup { serve, agent, operator_token, _policies: policies }
}

impl Setup {
    fn api(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.serve
            .http
            .client
            .request(method, format!("{}{path}", self.serve.http.base))
            .bearer_auth(&self.operator_token)
    }
}

#[tokio::test]
async fn metrics_count_real_calls_by_decision_and_outcome_holds_commits_and_pii() {
    let s = start("").await;
    let mcp = s.serve.mcp(DEMO, Some(&s.agent));
    let session = mcp.initialize().await;

    let ok = mcp.call(&session, 1, "lookup_customer", json!({"customer_id": "cus_1001"})).await;
    assert_eq!(ok["result"]["isError"], json!(false), "{ok}");
    let failed = mcp.call(&session, 2, "lookup_customer", json!({"customer_id": "cus_9"})).await;
    assert_eq!(failed["result"]["isError"], true, "{failed}");
    let mail = json!({"to": "dana.whitfield@example.com", "subject": "hi", "body": "hello"});
    let sent = mcp.call(&session, 3, "send_email", mail).await;
    assert_eq!(sent["result"]["isError"], json!(false), "{sent}");
    let refund = json!({"customer_id": "cus_1001", "amount": 5, "currency": "EUR", "reason": "x"});
    let denied = mcp.call(&session, 4, "issue_refund", refund).await;
    assert_eq!(denied["result"]["isError"], true, "{denied}");

    // A held call: the gauge shows it while it waits.
    let held_mcp = mcp.clone();
    let held_session = session.clone();
    let outside = json!({"to": "someone@elsewhere.net", "subject": "quote", "body": "x"});
    let held = tokio::spawn(async move {
        let body = call_body(5, "send_email", outside);
        held_mcp.post_within(Some(&held_session), &body, PATIENCE).await.response(&json!(5))
    });
    let waiting = [("server", DEMO), ("kind", "call")];
    eventually("the held call in the gauge", PATIENCE, || async {
        let (_, samples) = scrape(&s.serve).await;
        (value(&samples, "mcp_ledger_holds_waiting", &waiting) == 1.0).then_some(())
    })
    .await;
    let (_, during) = scrape(&s.serve).await;
    assert_eq!(value(&during, "mcp_ledger_holds_total", &waiting), 1.0);
    assert_eq!(value(&during, "mcp_ledger_sessions_open", &[("transport", "http")]), 1.0);

    let pending = send(s.api(reqwest::Method::GET, "/api/approvals"), QUICK).await.json();
    let id = pending["approvals"][0]["approval_id"].as_str().expect("one pending").to_owned();
    let deny = s
        .api(reqwest::Method::POST, &format!("/api/approvals/{id}/deny"))
        .header("content-type", "application/json")
        .body(json!({"reason": "not today"}).to_string());
    assert_eq!(send(deny, QUICK).await.status, StatusCode::OK);
    let answer = tokio::time::timeout(PATIENCE, held).await.expect("answered").unwrap();
    assert_eq!(answer["result"]["isError"], true, "{answer}");

    // The call is counted once its result is committed, which is before the agent gets it.
    let (text, after) = scrape(&s.serve).await;
    let calls = |tool: &str, decision: &str, outcome: &str| {
        value(
            &after,
            "mcp_ledger_calls_total",
            &[
                ("server", DEMO),
                ("agent", "bot"),
                ("method", "tools/call"),
                ("tool", tool),
                ("decision", decision),
                ("outcome", outcome),
            ],
        )
    };
    assert_eq!(calls("lookup_customer", "allow", "ok"), 1.0, "{text}");
    assert_eq!(calls("lookup_customer", "allow", "tool_error"), 1.0, "{text}");
    assert_eq!(calls("send_email", "allow", "ok"), 1.0, "{text}");
    assert_eq!(calls("issue_refund", "deny", "denied"), 1.0, "{text}");
    assert_eq!(calls("send_email", "hold", "denied"), 1.0, "{text}");
    assert_eq!(value(&after, "mcp_ledger_holds_waiting", &waiting), 0.0, "{text}");
    assert_eq!(value(&after, "mcp_ledger_holds_total", &waiting), 1.0, "{text}");
    let duration = [("server", DEMO), ("method", "tools/call")];
    assert_eq!(value(&after, "mcp_ledger_call_duration_seconds_count", &duration), 5.0);
    // Only the three calls that were forwarded were with the upstream, each for part of its
    // time in the proxy.
    assert_eq!(value(&after, "mcp_ledger_upstream_duration_seconds_count", &duration), 3.0);
    let upstream = value(&after, "mcp_ledger_upstream_duration_seconds_sum", &duration);
    let in_proxy = value(&after, "mcp_ledger_call_duration_seconds_sum", &duration);
    assert!(upstream > 0.0 && upstream < in_proxy, "upstream {upstream} s of {in_proxy} s\n{text}");

    // The group-commit writer's histograms have every commit of the session.
    let commits = value(&after, "mcp_ledger_commit_duration_seconds_count", &[]);
    assert!(commits >= 10.0, "a call and a result per call, and more: {commits}\n{text}");
    assert!(value(&after, "mcp_ledger_commit_batch_size_count", &[]) >= 10.0, "{text}");
    assert!(value(&after, "mcp_ledger_commit_batch_size_sum", &[]) >= commits, "{text}");
    assert_eq!(value(&after, "mcp_ledger_commit_failures_total", &[]), 0.0, "{text}");
    // Every append's wait for its commit: at least one per batch, and never shorter in all
    // than the batches that committed them.
    let appends = value(&after, "mcp_ledger_commit_wait_seconds_count", &[]);
    assert!(appends >= commits, "{appends} appends in {commits} batches\n{text}");
    let waited = value(&after, "mcp_ledger_commit_wait_seconds_sum", &[]);
    let committing = value(&after, "mcp_ledger_commit_duration_seconds_sum", &[]);
    assert!(waited >= committing, "waited {waited} s, committing took {committing} s\n{text}");

    // The addresses (input, and the demo's echo of it in the output) are PII findings; the
    // metrics name the pattern, never the address.
    let email = |direction| {
        value(
            &after,
            "mcp_ledger_pii_findings_total",
            &[("server", DEMO), ("pattern", "email"), ("direction", direction)],
        )
    };
    assert_eq!(email("input"), 2.0, "the send and the held one: {text}");
    assert!(email("output") >= 2.0, "the lookup's email and the send's echo: {text}");
    for value in ["dana.whitfield", "elsewhere.net", "cus_1001", &s.agent.token, &s.operator_token]
    {
        assert!(!text.contains(value), "{value} in the metrics");
    }

    // A page elsewhere cannot read them (DNS rebinding); they need no token.
    let foreign = s
        .serve
        .http
        .client
        .get(format!("{}/metrics", s.serve.http.base))
        .header("host", "evil.example");
    assert_eq!(send(foreign, QUICK).await.status, StatusCode::FORBIDDEN);

    let (status, _, _) = s.serve.stop().await;
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn metrics_can_be_turned_off() {
    let s = start("\n[telemetry]\nmetrics = false\n").await;
    let reply =
        send(s.serve.http.client.get(format!("{}/metrics", s.serve.http.base)), QUICK).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");
}

/// A fake OTLP/HTTP collector: every JSON body POSTed to /v1/traces.
struct Collector {
    url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
    _server: tokio::task::JoinHandle<()>,
}

impl Collector {
    async fn start() -> Collector {
        let bodies: Arc<Mutex<Vec<Value>>> = Arc::default();
        let kept = bodies.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
                let kept = kept.clone();
                async move {
                    let content_type = headers.get("content-type").unwrap().to_str().unwrap();
                    assert_eq!(content_type, "application/json");
                    kept.lock().unwrap().push(serde_json::from_str(&body).expect("json"));
                    axum::Json(json!({}))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Collector { url, bodies, _server: server }
    }

    /// Every span received, as (span, its attributes as a map).
    fn spans(&self) -> Vec<(Value, BTreeMap<String, Value>)> {
        let mut spans = Vec::new();
        for body in self.bodies.lock().unwrap().iter() {
            for resource in body["resourceSpans"].as_array().into_iter().flatten() {
                for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
                    for span in scope["spans"].as_array().into_iter().flatten() {
                        let attributes = span["attributes"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|kv| (kv["key"].as_str().unwrap().to_owned(), plain(&kv["value"])))
                            .collect();
                        spans.push((span.clone(), attributes));
                    }
                }
            }
        }
        spans
    }

    fn service_names(&self) -> Vec<Value> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| b["resourceSpans"].as_array().cloned().unwrap_or_default())
            .flat_map(|r| r["resource"]["attributes"].as_array().cloned().unwrap_or_default())
            .filter(|kv| kv["key"] == "service.name")
            .map(|kv| plain(&kv["value"]))
            .collect()
    }
}

/// An OTLP `AnyValue` as plain JSON.
fn plain(value: &Value) -> Value {
    for key in ["stringValue", "boolValue", "doubleValue"] {
        if let Some(v) = value.get(key) {
            return v.clone();
        }
    }
    match value.get("intValue") {
        Some(Value::String(n)) => json!(n.parse::<i64>().unwrap()),
        Some(n) => n.clone(),
        None => value.clone(),
    }
}

fn kind_is_server(span: &Value) -> bool {
    span["kind"] == json!(2) || span["kind"] == "SPAN_KIND_SERVER"
}

#[tokio::test]
async fn request_spans_reach_an_otlp_collector_with_the_mcp_conventions() {
    let collector = Collector::start().await;
    let extra = format!(
        "\n[telemetry]\notlp_endpoint = \"{}\"\nprotocol = \"http/json\"\nservice_name = \"ledger-test\"\n",
        collector.url
    );
    let s = start(&extra).await;
    let mcp = s.serve.mcp(DEMO, Some(&s.agent));
    let session = mcp.initialize().await;
    mcp.call(&session, 7, "lookup_customer", json!({"customer_id": "cus_1001"})).await;
    mcp.call(&session, 8, "lookup_customer", json!({"customer_id": "cus_404"})).await;
    let events = s.serve.events().await;
    // Spans are sent in batches; stopping the proxy flushes what is left.
    let (status, _, stderr) = s.serve.stop().await;
    assert!(status.success(), "{status:?}\n{stderr}");

    let spans = collector.spans();
    assert_eq!(collector.service_names().first(), Some(&json!("ledger-test")));
    let calls: Vec<_> =
        spans.iter().filter(|(span, _)| span["name"] == "tools/call lookup_customer").collect();
    assert_eq!(calls.len(), 2, "one span per tools/call: {spans:#?}");
    let (ok, attributes) = calls
        .iter()
        .find(|(_, a)| a.get("jsonrpc.request.id") == Some(&json!("7")))
        .expect("the span of request 7");
    assert!(kind_is_server(ok), "{ok}");
    let call_id = events
        .iter()
        .find(|e| e.event_type == "tool_call" && e.data["request_id"] == "7")
        .map(|e| e.data["call_id"].clone())
        .expect("the call in the ledger");
    let expected = [
        ("mcp.method.name", json!("tools/call")),
        ("gen_ai.tool.name", json!("lookup_customer")),
        ("gen_ai.operation.name", json!("execute_tool")),
        ("mcp.session.id", json!(session)),
        ("mcp.protocol.version", json!("2025-06-18")),
        ("network.transport", json!("tcp")),
        ("mcp_ledger.call_id", call_id),
        ("mcp_ledger.decision", json!("allow")),
        ("mcp_ledger.outcome", json!("ok")),
        ("mcp_ledger.server", json!(DEMO)),
        ("mcp_ledger.agent", json!("bot")),
    ];
    for (key, value) in expected {
        assert_eq!(attributes.get(key), Some(&value), "{key} in {attributes:#?}");
    }
    assert!(!attributes.contains_key("error.type"), "{attributes:#?}");

    // Its children: the policy decision and the two commits (call, result), in its trace.
    let children: Vec<_> =
        spans.iter().filter(|(span, _)| span["parentSpanId"] == ok["spanId"]).collect();
    let mut names: Vec<String> = children
        .iter()
        .map(|(span, a)| match a.get("mcp_ledger.record") {
            Some(record) => {
                format!("{} {}", span["name"].as_str().unwrap(), record.as_str().unwrap())
            }
            None => span["name"].as_str().unwrap().to_owned(),
        })
        .collect();
    names.sort();
    assert_eq!(names, ["ledger commit call", "ledger commit result", "policy decision"]);
    for (child, _) in &children {
        assert_eq!(child["traceId"], ok["traceId"]);
    }
    let (_, policy) = children.iter().find(|(span, _)| span["name"] == "policy decision").unwrap();
    assert_eq!(policy.get("mcp_ledger.policy.rule"), Some(&json!("demo-rest")));

    // The unknown customer: a tool error, and the span says so.
    let (failed, attributes) = calls
        .iter()
        .find(|(_, a)| a.get("jsonrpc.request.id") == Some(&json!("8")))
        .expect("the span of request 8");
    assert_eq!(attributes.get("error.type"), Some(&json!("tool_error")), "{attributes:#?}");
    assert_eq!(attributes.get("mcp_ledger.outcome"), Some(&json!("tool_error")));
    let code = &failed["status"]["code"];
    assert!(code == &json!(2) || code == "STATUS_CODE_ERROR", "{failed}");

    // Names, ids and outcomes only: no argument reaches the collector.
    let all = serde_json::to_string(&*collector.bodies.lock().unwrap()).unwrap();
    assert!(!all.contains("cus_1001") && !all.contains("cus_404"), "an argument was exported");
    assert!(!all.contains(&s.agent.token));
}

#[tokio::test]
async fn an_unreachable_collector_never_breaks_a_call() {
    // Nothing listens on this port once the listener is dropped.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let extra = format!("\n[telemetry]\notlp_endpoint = \"http://127.0.0.1:{port}\"\n");
    let s = start(&extra).await;
    let mcp = s.serve.mcp(DEMO, Some(&s.agent));
    let session = mcp.initialize().await;
    let ok = mcp.call(&session, 1, "lookup_customer", json!({"customer_id": "cus_1002"})).await;
    assert_eq!(ok["result"]["isError"], json!(false), "{ok}");
    let (status, _, stderr) = s.serve.stop().await;
    assert!(status.success(), "{status:?}\n{stderr}");
    let reports = stderr.matches("cannot export spans to the otlp collector").count();
    assert!(reports <= 1, "reported once at most:\n{stderr}");
}

#[tokio::test]
async fn stdio_serves_metrics_while_the_session_lasts() {
    let ledger = TestLedger::sqlite();
    // A free port (released at once; nothing else in this test binds one).
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let args: Vec<String> = [
        "stdio",
        "--ledger",
        &ledger.url_string(),
        "--agent",
        "desk",
        "--server",
        "demo",
        "--metrics-addr",
        &format!("127.0.0.1:{port}"),
        "--",
        common::BIN,
        "demo-server",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut client = common::stdio_client::LineClient::spawn(common::BIN, &args);
    client.initialize().await;
    let reply = client.call_tool("lookup_customer", json!({"customer_id": "cus_1003"})).await;
    assert_eq!(reply["result"]["isError"], json!(false), "{reply}");
    let http = Http::new(port);
    let reply = send(http.client.get(format!("{}/metrics", http.base)), QUICK).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let samples = samples(&reply.body);
    let labels = [("server", "demo"), ("agent", "desk"), ("tool", "lookup_customer")];
    let ok = [&labels[..], &[("decision", "allow"), ("outcome", "ok")]].concat();
    assert_eq!(value(&samples, "mcp_ledger_calls_total", &ok), 1.0, "{}", reply.body);
    assert_eq!(value(&samples, "mcp_ledger_sessions_open", &[("transport", "stdio")]), 1.0);
    assert!(client.close().await.success());
}

#[tokio::test]
async fn stdio_serves_metrics_only_on_loopback() {
    let (code, _, stderr) = run_cli(&[
        "stdio",
        "--ledger",
        "sqlite:///nonexistent/never-created.db",
        "--metrics-addr",
        "0.0.0.0:9464",
        "--",
        "true",
    ]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("--metrics-addr 0.0.0.0:9464"), "{stderr}");
}

/// A small signed ledger: a few events and a checkpoint over them. Returns its URL and the
/// public key's file.
async fn signed_ledger(ledger: &TestLedger, keys: &std::path::Path) -> String {
    let key = SigningKey::from_seed("test.example/ledger", [7; 32]).unwrap();
    let private = keys.join("ledger.key");
    let public = keys.join("ledger.key.pub");
    std::fs::write(&private, key.to_private_key()).unwrap();
    std::fs::write(&public, key.verifying_key().to_string()).unwrap();
    let store = ledger.open().await;
    for i in 0..5 {
        let draft = Draft::new(EventType::ToolCall, json!({"call_id": format!("c{i}")}));
        store.append(DEFAULT_CHAIN, &[draft]).await.unwrap();
    }
    store.close().await;
    let url = ledger.url_string();
    let (code, out, err) =
        run_cli(&["checkpoint", "--ledger", &url, "--key", private.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    public.display().to_string()
}

#[tokio::test]
async fn piped_verify_and_export_print_no_progress() {
    let ledger = TestLedger::sqlite();
    let keys = tempfile::tempdir().unwrap();
    let public = signed_ledger(&ledger, keys.path()).await;
    let url = ledger.url_string();
    for json in [false, true] {
        let mut args = vec!["verify", "--ledger", &url, "--key", &public];
        if json {
            args.push("--json");
        }
        let (code, stdout, stderr) = run_cli(&args);
        assert_eq!(code, 0, "{stdout}{stderr}");
        assert_eq!(stderr, "", "{args:?} wrote to a piped stderr");
        assert!(!stdout.contains('\r') && !stdout.contains('\u{1b}'), "{stdout:?}");
        assert!(stdout.contains('5'), "{stdout}");
    }
    let bundle = keys.path().join("bundle");
    let bundle = bundle.to_str().unwrap();
    let (code, stdout, stderr) =
        run_cli(&["export", "--ledger", &url, "--key", &public, "--bundle", bundle]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(stderr, "", "export wrote to a piped stderr");
    assert!(stdout.starts_with("exported 5 event(s)"), "{stdout}");
}
