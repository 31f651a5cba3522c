//! `mcp-ledger serve` end to end: the real binary as a child process (temporary config and SQLite
//! ledger), raw HTTP with reqwest, SSE parsed by hand. Upstreams: the demo server (its call log is
//! the proof of what reached it) and `fixtures/serve_upstream.js` (pid, per-process state,
//! unsolicited notifications, crash and hang).

mod common;
#[path = "serve/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Digest;

use common::run_cli;

fn tool_calls<'a>(
    events: &'a [mcp_ledger::record::Event],
    tool: &str,
) -> Vec<&'a mcp_ledger::record::Event> {
    events.iter().filter(|e| e.event_type == "tool_call" && e.data["tool"] == tool).collect()
}

fn results_of<'a>(
    events: &'a [mcp_ledger::record::Event],
    call: &mcp_ledger::record::Event,
) -> Vec<&'a mcp_ledger::record::Event> {
    events
        .iter()
        .filter(|e| e.event_type == "tool_result" && e.data["call_id"] == call.data["call_id"])
        .collect()
}

fn assert_jsonrpc_error(response: &Value, id: u64) {
    assert_eq!(response["jsonrpc"], "2.0", "{response}");
    assert_eq!(response["id"], id, "{response}");
    assert!(response.get("result").is_none(), "no result: {response}");
    assert!(response["error"]["code"].is_i64(), "a JSON-RPC error: {response}");
    assert!(response["error"]["message"].is_string(), "a JSON-RPC error: {response}");
}

fn assert_no_secret(what: &str, bytes: &[u8], secrets: &[&str]) {
    for secret in secrets {
        assert!(!contains(bytes, secret), "{what} contains the token {secret}");
    }
}

/// Waits until the ledger has a `tool_call` for `tool` in `session` (it is committed before the
/// call is forwarded).
async fn wait_for_call(serve: &Serve, session: &str, tool: &str) {
    eventually(&format!("the {tool} call to be recorded"), Duration::from_secs(10), || async {
        let events = serve.events().await;
        let found =
            tool_calls(&events, tool).iter().any(|e| e.session_id.as_deref() == Some(session));
        found.then_some(())
    })
    .await;
}

// 1. Authentication.

#[tokio::test]
async fn bad_and_foreign_tokens_are_refused_recorded_and_never_forwarded() {
    let alice = AgentCred::new("alice");
    let bob = AgentCred::new("bob");
    let wrong = format!("mcpl_wrong_{}", uuid::Uuid::new_v4().simple());
    let serve =
        Serve::start(Options { agents: vec![alice.clone(), bob.clone()], ..Options::default() })
            .await;
    let anonymous = serve.mcp(DEMO, None);
    let as_alice = serve.mcp(DEMO, Some(&alice));
    let as_bob = serve.mcp(DEMO, Some(&bob));
    let as_wrong = anonymous.with_token(Some(&wrong));

    let auth_failures = || async {
        of_type(&serve.events().await, "auth_failed").into_iter().cloned().collect::<Vec<_>>()
    };
    // Each refusal is committed before the 401 goes out: no polling.
    let check_refusal = |reply: &Reply,
                         failures: &[mcp_ledger::record::Event],
                         reason: &str,
                         agent: Option<&str>| {
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{reply:?}");
        let challenge = reply.header("www-authenticate").unwrap_or_default();
        assert!(challenge.starts_with("Bearer"), "WWW-Authenticate: {challenge:?}");
        assert!(reply.session_id().is_none(), "no session for a refused request");
        let last = failures.last().expect("an auth_failed event");
        assert_eq!(last.data["reason"], reason, "{:?}", last.data);
        assert_eq!(last.data["endpoint"], "/mcp/demo", "{:?}", last.data);
        assert_eq!(last.data["user_agent"], USER_AGENT, "{:?}", last.data);
        let remote = last.data["remote_addr"].as_str().expect("remote_addr");
        assert!(remote.starts_with("127.0.0.1:"), "{remote}");
        assert_eq!(last.agent.as_deref(), agent);
        assert_eq!(last.server.as_deref(), Some(DEMO));
    };

    // No token.
    let reply = anonymous.post(None, &initialize_body(0)).await;
    let failures = auth_failures().await;
    assert_eq!(failures.len(), 1);
    check_refusal(&reply, &failures, "missing bearer token", None);
    // A token nobody has.
    let reply = as_wrong.post(None, &initialize_body(0)).await;
    let failures = auth_failures().await;
    assert_eq!(failures.len(), 2);
    check_refusal(&reply, &failures, "unknown token", None);
    assert!(of_type(&serve.events().await, "session_start").is_empty(), "no session was started");

    // Alice's session works.
    let session = as_alice.initialize().await;
    let first =
        as_alice.call(&session, 1, "lookup_customer", json!({"customer_id": "cus_1001"})).await;
    assert!(first.get("result").is_some(), "{first}");

    // Bob's valid token on Alice's session: POST, GET and DELETE are all refused.
    let refund = call_body(
        2,
        "issue_refund",
        json!({"customer_id": "cus_1002", "amount_cents": 5000, "reason": "bob was here"}),
    );
    let reply = as_bob.post(Some(&session), &refund).await;
    let failures = auth_failures().await;
    assert_eq!(failures.len(), 3);
    check_refusal(&reply, &failures, "token of another agent for this session", Some("bob"));
    let reply = send(
        as_bob.request(Method::GET, Some(&session)).header("accept", "text/event-stream"),
        QUICK,
    )
    .await;
    let failures = auth_failures().await;
    assert_eq!(failures.len(), 4);
    check_refusal(&reply, &failures, "token of another agent for this session", Some("bob"));
    let reply = as_bob.delete(&session).await;
    let failures = auth_failures().await;
    assert_eq!(failures.len(), 5);
    check_refusal(&reply, &failures, "token of another agent for this session", Some("bob"));
    // No token, and an unknown token, on Alice's session.
    let reply = anonymous.post(Some(&session), &refund).await;
    let failures = auth_failures().await;
    assert_eq!(failures.len(), 6);
    check_refusal(&reply, &failures, "missing bearer token", None);
    let reply = as_wrong.post(Some(&session), &refund).await;
    let failures = auth_failures().await;
    assert_eq!(failures.len(), 7);
    check_refusal(&reply, &failures, "unknown token", None);

    // Bob's DELETE did not end the session.
    let second =
        as_alice.call(&session, 3, "lookup_customer", json!({"customer_id": "cus_1003"})).await;
    assert!(second.get("result").is_some(), "{second}");

    // Only Alice's two calls reached the upstream.
    let received = serve.call_log();
    assert_eq!(
        received,
        [
            json!({"tool": "lookup_customer", "arguments": {"customer_id": "cus_1001"}}),
            json!({"tool": "lookup_customer", "arguments": {"customer_id": "cus_1003"}}),
        ],
        "the upstream received only the authenticated calls"
    );

    let reply = as_alice.delete(&session).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let events = serve.events().await;
    assert!(
        tool_calls(&events, "issue_refund").is_empty(),
        "a refused call was recorded as a call"
    );
    let in_alices = in_session(&events, &session);
    for kind in ["session_start", "tool_call", "tool_result", "session_end"] {
        assert!(in_alices.iter().any(|e| e.event_type == kind), "{kind} in the session");
    }
    for event in &in_alices {
        assert_eq!(event.agent.as_deref(), Some("alice"), "{} {:?}", event.event_type, event.data);
        assert_eq!(event.server.as_deref(), Some(DEMO));
    }
    assert_eq!(tool_calls(&events, "lookup_customer").len(), 2);

    let (status, files, stderr) = serve.stop().await;
    assert!(status.success(), "serve exits 0 on SIGTERM: {status:?}\n{stderr}");
    let secrets = [alice.token.as_str(), bob.token.as_str(), wrong.as_str()];
    assert_no_secret("the ledger database", &ledger_bytes(&files.ledger), &secrets);
    assert_no_secret("serve's log", stderr.as_bytes(), &secrets);
    let (code, out, err) = run_cli(&["verify", "--ledger", &files.ledger.url_string()]);
    assert_eq!(code, 0, "verify: {out}{err}");
}

// 2. `agents add --json`.

#[tokio::test]
async fn a_token_from_agents_add_works_against_its_config_entry() {
    let (code, out, err) = run_cli(&["agents", "add", "ci-bot", "--json"]);
    assert_eq!(code, 0, "{err}");
    let printed: Value = serde_json::from_str(out.trim()).expect("--json prints one JSON object");
    assert_eq!(printed["name"], "ci-bot");
    let token = printed["token"].as_str().expect("token").to_owned();
    let digest = printed["token_sha256"].as_str().expect("token_sha256").to_owned();
    assert_eq!(digest, hex::encode(sha2::Sha256::digest(token.as_bytes())), "SHA-256 of the token");

    let entry = format!("\n[[agents]]\nname = \"ci-bot\"\ntoken_sha256 = \"{digest}\"\n");
    let serve = Serve::start(Options { raw_agents: Some(entry), ..Options::default() }).await;
    let bot = serve.mcp(DEMO, None).with_token(Some(&token));
    let session = bot.initialize().await;
    let response =
        bot.call(&session, 1, "lookup_customer", json!({"customer_id": "cus_1004"})).await;
    assert!(response.get("result").is_some(), "{response}");
    let events = serve.events().await;
    let calls = tool_calls(&events, "lookup_customer");
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].agent.as_deref(), Some("ci-bot"));

    // The digest is not a token.
    let reply =
        serve.mcp(DEMO, None).with_token(Some(&digest)).post(None, &initialize_body(0)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);

    let (status, files, stderr) = serve.stop().await;
    assert!(status.success(), "{status:?}\n{stderr}");
    assert_no_secret("the ledger database", &ledger_bytes(&files.ledger), &[&token]);
    assert_no_secret("serve's log", stderr.as_bytes(), &[&token]);
}

// 3. Listening beyond loopback.

#[tokio::test]
async fn a_non_loopback_listener_requires_agents() {
    let files = write_config(&Options::default());
    let mut process = launch(&files, "0.0.0.0:0");
    let status = process.wait_exit(Duration::from_secs(15)).await.expect("serve exits");
    let stderr = process.stderr_text();
    assert_eq!(status.code(), Some(64), "exit code: {status:?}\n{stderr}");
    assert!(stderr.contains("without [[agents]]"), "the message names the problem: {stderr}");
    assert!(stderr.contains("0.0.0.0"), "the message names the address: {stderr}");
    drop(process);

    // With an agent it starts, and still wants the token.
    let ops = AgentCred::new("ops");
    let serve = Serve::start(Options {
        agents: vec![ops.clone()],
        listen_addr: Some("0.0.0.0:0".into()),
        ..Options::default()
    })
    .await;
    assert!(
        serve.process.stdout_seen.iter().any(|l| l.contains("http://0.0.0.0:")),
        "{:?}",
        serve.process.stdout_seen
    );
    let reply = serve.mcp(DEMO, None).post(None, &initialize_body(0)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let session = serve.mcp(DEMO, Some(&ops)).initialize().await;
    assert!(!session.is_empty());
    let (status, _, stderr) = serve.stop().await;
    assert!(status.success(), "{status:?}\n{stderr}");
}

#[tokio::test]
async fn without_agents_loopback_callers_are_anonymous() {
    let serve = Serve::start(Options::default()).await;
    let open = serve.mcp(DEMO, None);
    let session = open.initialize().await;
    let response =
        open.call(&session, 1, "lookup_customer", json!({"customer_id": "cus_1005"})).await;
    assert!(response.get("result").is_some(), "{response}");
    let events = serve.events().await;
    assert_eq!(tool_calls(&events, "lookup_customer")[0].agent.as_deref(), Some("anonymous"));
    let (status, _, stderr) = serve.stop().await;
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(stderr.contains("anonymous"), "a warning about anonymous access: {stderr}");
}

// 4. Host, Origin, body size, session ids.

#[tokio::test]
async fn hosts_origins_sizes_and_session_ids_are_checked() {
    let alice = AgentCred::new("alice");
    let serve = Serve::start(Options {
        agents: vec![alice.clone()],
        listen: vec!["max_body_bytes = 4096".into()],
        ..Options::default()
    })
    .await;
    let m = serve.mcp(DEMO, Some(&alice));

    // DNS rebinding: a foreign Host or Origin is refused before anything else, valid token or not.
    let reply =
        send(m.post_request(None, &initialize_body(0)).header("host", "evil.example"), QUICK).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    assert!(reply.body.contains("Host"), "{reply:?}");
    let reply = send(
        m.post_request(None, &initialize_body(0)).header("origin", "https://evil.example"),
        QUICK,
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{reply:?}");
    assert!(reply.body.contains("Origin"), "{reply:?}");
    let reply = send(
        m.post_request(None, &initialize_body(0)).header("origin", "http://localhost.evil.example"),
        QUICK,
    )
    .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "a look-alike origin: {reply:?}");
    let events = serve.events().await;
    assert!(of_type(&events, "session_start").is_empty(), "refused requests start no session");

    // Loopback origins are fine.
    let reply = send(
        m.post_request(None, &initialize_body(0)).header("origin", "http://localhost:5173"),
        QUICK,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let other = reply.session_id().expect("a session");
    let session = m.initialize().await;
    assert_ne!(other, session);

    // Over the body limit: 413 with a JSON-RPC error naming the limit, and nothing forwarded.
    let padding = "x".repeat(5000);
    let big =
        call_body(7, "lookup_customer", json!({"customer_id": "cus_1001", "padding": padding}));
    let reply = m.post(Some(&session), &big).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "{reply:?}");
    let error = reply.json();
    assert_eq!(error["jsonrpc"], "2.0", "{error}");
    assert!(error["error"]["code"].is_i64(), "{error}");
    assert!(error["error"]["message"].as_str().unwrap().contains("4096"), "{error}");
    // The same without a Content-Length (chunked).
    let chunks = futures::stream::iter(
        big.as_bytes()
            .chunks(1000)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let reply = send(
        m.request(Method::POST, Some(&session))
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(chunks)),
        QUICK,
    )
    .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE, "chunked: {reply:?}");
    assert!(reply.json()["error"]["message"].as_str().unwrap().contains("4096"), "{reply:?}");
    // Just under the limit passes.
    let fits = json!({"customer_id": "cus_1002", "padding": "x".repeat(3000)});
    let response = m.call(&session, 8, "lookup_customer", fits).await;
    assert!(response.get("result").is_some(), "{response}");
    let received = serve.call_log();
    assert_eq!(received.len(), 1, "only the call within the limit was forwarded: {received:?}");
    assert_eq!(received[0]["arguments"]["customer_id"], "cus_1002");
    let events = serve.events().await;
    assert_eq!(
        tool_calls(&events, "lookup_customer").len(),
        1,
        "oversized calls are not recorded as calls"
    );

    // Not initialize, no session: 400 with a JSON-RPC error.
    let reply =
        m.post(None, &call_body(9, "lookup_customer", json!({"customer_id": "cus_1001"}))).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
    let error = reply.json();
    assert_eq!(error["jsonrpc"], "2.0");
    assert!(error["error"]["message"].as_str().unwrap().contains("Mcp-Session-Id"), "{error}");
    // Not JSON at all: 400.
    let reply = m.post(Some(&session), "this is not json").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");
    // Unknown session id: 404 for every method.
    let unknown = "0123456789abcdef0123456789abcdef";
    let reply = m
        .post(Some(unknown), &call_body(10, "lookup_customer", json!({"customer_id": "cus_1001"})))
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");
    let reply =
        send(m.request(Method::GET, Some(unknown)).header("accept", "text/event-stream"), QUICK)
            .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");
    let reply = m.delete(unknown).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");
    // An unknown server: 404.
    let reply = serve.mcp("nope", Some(&alice)).post(None, &initialize_body(0)).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");

    assert_eq!(serve.call_log().len(), 1, "nothing else was forwarded");
    let (status, _, stderr) = serve.stop().await;
    assert!(status.success(), "{status:?}\n{stderr}");
}

// 5. Sessions.

#[tokio::test]
async fn each_session_has_its_own_upstream_and_delete_ends_it() {
    let alice = AgentCred::new("alice");
    let serve = Serve::start(Options { agents: vec![alice.clone()], ..Options::default() }).await;
    let m = serve.mcp(UP, Some(&alice));
    let (s1, s2) = tokio::join!(m.initialize(), m.initialize());
    assert_ne!(s1, s2);
    assert!(s1.len() >= 16 && s1.bytes().all(|b| b.is_ascii_graphic()), "{s1}");

    let (pid1, pid2) = tokio::join!(m.upstream_pid(&s1, 1), m.upstream_pid(&s2, 1));
    assert_ne!(pid1, pid2, "two sessions, two upstream processes");
    assert!(alive(pid1) && alive(pid2));
    // Per-process state is not shared.
    let count = |v: Value| v["result"]["structuredContent"]["count"].as_u64().unwrap();
    assert_eq!(count(m.call(&s1, 2, "count", json!({})).await), 1);
    // Write-ahead: the agent has the result, so its record is committed.
    let events = serve.events().await;
    let counted = tool_calls(&events, "count");
    assert_eq!(counted.len(), 1);
    let result = results_of(&events, counted[0]);
    assert_eq!(result.len(), 1, "the result is committed before the agent gets it");
    assert_eq!(result[0].data["outcome"], "ok");
    // A client that accepts only JSON gets the response as a plain JSON body.
    let reply = send(
        serve
            .http
            .client
            .post(format!("{}/mcp/{UP}", serve.http.base))
            .bearer_auth(&alice.token)
            .header("mcp-session-id", &s1)
            .header("accept", "application/json")
            .header("content-type", "application/json")
            .body(call_body(21, "whoami", json!({}))),
        QUICK,
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    assert!(reply.header("content-type").unwrap().starts_with("application/json"), "{reply:?}");
    assert_eq!(reply.json()["result"]["structuredContent"]["pid"], pid1);
    // A client that accepts both: a prompt lone answer comes as plain JSON, an answer that other
    // messages (progress) come before as an SSE stream, in order.
    let reply = m.post(Some(&s1), &call_body(23, "whoami", json!({}))).await;
    assert!(reply.header("content-type").unwrap().starts_with("application/json"), "{reply:?}");
    let with_progress = json!({"jsonrpc": "2.0", "id": 24, "method": "tools/call",
        "params": {"name": "echo_raw", "arguments": {}, "_meta": {"progressToken": "p24"}}});
    let reply = m.post(Some(&s1), &with_progress.to_string()).await;
    assert!(reply.header("content-type").unwrap().starts_with("text/event-stream"), "{reply:?}");
    let messages = reply.messages();
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[0]["method"], "notifications/progress", "{messages:?}");
    assert_eq!(messages[1]["id"], 24, "{messages:?}");
    // A session belongs to its endpoint.
    let reply = serve
        .mcp(DEMO, Some(&alice))
        .post(Some(&s1), &call_body(22, "lookup_customer", json!({"customer_id": "cus_1001"})))
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "another endpoint's session: {reply:?}");
    assert!(serve.call_log().is_empty());
    assert_eq!(count(m.call(&s1, 3, "count", json!({})).await), 2);
    assert_eq!(count(m.call(&s2, 2, "count", json!({})).await), 1);

    // DELETE answers once session_end is committed.
    let reply = m.delete(&s1).await;
    assert_eq!(reply.status, StatusCode::OK, "{reply:?}");
    let events = serve.events().await;
    assert!(has_session_end(&events, &s1), "session_end is recorded before DELETE returns");
    assert!(!has_session_end(&events, &s2));
    let reply = m.post(Some(&s1), &call_body(4, "count", json!({}))).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");
    let reply =
        send(m.request(Method::GET, Some(&s1)).header("accept", "text/event-stream"), QUICK).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");
    assert_eq!(m.delete(&s1).await.status, StatusCode::NOT_FOUND);
    eventually("the deleted session's upstream to exit", Duration::from_secs(10), || async {
        (!alive(pid1)).then_some(())
    })
    .await;

    // The other session is untouched.
    assert!(alive(pid2));
    assert_eq!(count(m.call(&s2, 5, "count", json!({})).await), 2);
    let events = serve.events().await;
    assert_eq!(
        in_session(&events, &s1).iter().filter(|e| e.event_type == "session_end").count(),
        1,
        "one session_end"
    );
    let (status, files, stderr) = serve.stop().await;
    assert!(status.success(), "{status:?}\n{stderr}");
    let events = read_events(&files.ledger).await;
    assert!(has_session_end(&events, &s2), "shutdown ends the other session");
    assert!(!alive(pid2), "shutdown stops its upstream");
}

#[tokio::test]
async fn session_limit_evicts_the_least_recently_active_and_idle_sessions_expire() {
    let alice = AgentCred::new("alice");
    let serve = Serve::start(Options {
        agents: vec![alice.clone()],
        listen: vec!["max_sessions = 1".into(), "session_idle_timeout_secs = 1".into()],
        ..Options::default()
    })
    .await;
    let m = serve.mcp(UP, Some(&alice));

    // A session with an open stream is never evicted: at the limit, a new one is refused.
    let streaming = m.initialize().await;
    let stream = m.open_stream(&streaming).await;
    let reply = m.post(None, &initialize_body(0)).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{reply:?}");
    assert!(reply.body.contains("limit of 1 sessions"), "{reply:?}");
    assert!(reply.session_id().is_none());
    assert_eq!(of_type(&serve.events().await, "session_start").len(), 1);

    // Without it, the idle session makes room: it ends (its end says why), a new one starts,
    // and the evicted session's client is told to initialize again.
    drop(stream);
    let first = eventually("a session in place of the idle one", QUICK, || async {
        let reply = m.post(None, &initialize_body(0)).await;
        (reply.status == StatusCode::OK).then(|| reply.session_id().expect("session id"))
    })
    .await;
    let reason = eventually("the evicted session's end", QUICK, || async {
        end_reason(&serve.events().await, &streaming)
    })
    .await;
    assert!(reason.starts_with("evicted: the proxy reached its limit of 1 sessions"), "{reason}");
    let reply = m.post(Some(&streaming), &call_body(1, "whoami", json!({}))).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string();
    assert_eq!(m.post(Some(&first), &note).await.status, StatusCode::ACCEPTED);
    let last_active = Instant::now();

    // Idle for a second: closed by the reaper, with session_end recorded.
    let reason = eventually("the idle session to end", Duration::from_secs(6), || async {
        end_reason(&serve.events().await, &first)
    })
    .await;
    let idle = last_active.elapsed();
    assert!(idle >= Duration::from_millis(900), "closed after {idle:?}, before the timeout");
    assert!(reason.starts_with("idle for more than"), "{reason}");
    let reply = m.post(Some(&first), &call_body(1, "whoami", json!({}))).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "{reply:?}");

    // Its slot is free again; and a client that starts a session per task and never ends one
    // (as load generators do) goes on working at the limit, each new session evicting the last.
    for task in 0..4 {
        let session = m.initialize().await;
        assert!(m.upstream_pid(&session, 1).await > 0, "task {task}");
    }
    let metrics = send(serve.http.client.get(format!("{}/metrics", serve.http.base)), QUICK).await;
    assert!(metrics.body.contains("mcp_ledger_sessions_evicted_total 4\n"), "{}", metrics.body);
    let (status, _, stderr) = serve.stop().await;
    assert!(status.success(), "{status:?}\n{stderr}");
}

// 6. The standalone GET stream.

#[tokio::test]
async fn unsolicited_server_messages_arrive_on_the_get_stream() {
    let alice = AgentCred::new("alice");
    let serve = Serve::start(Options { agents: vec![alice.clone()], ..Options::default() }).await;
    let m = serve.mcp(UP, Some(&alice));
    let session = m.initialize().await;
    let note = |tag: &str| {
        format!(
            r#"{{"jsonrpc":"2.0","method":"notifications/message","params":{{"level":"info", "data":{{"later":"{tag}"}},"x-unsolicited":true}}}}"#
        )
    };

    // GET needs an event-stream Accept and a session.
    let reply = send(
        serve
            .http
            .client
            .get(format!("{}/mcp/{UP}", serve.http.base))
            .bearer_auth(&alice.token)
            .header("mcp-session-id", &session)
            .header("accept", "application/json"),
        QUICK,
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_ACCEPTABLE, "{reply:?}");
    let reply =
        send(m.request(Method::GET, None).header("accept", "text/event-stream"), QUICK).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{reply:?}");

    let mut stream = m.open_stream(&session).await;
    let reply = m
        .post(Some(&session), &call_body(1, "notify_later", json!({"tag": "t1", "delay_ms": 100})))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let messages = reply.messages();
    assert_eq!(messages.len(), 1, "only the response on the POST stream: {messages:?}");
    assert_eq!(messages[0]["result"]["content"][0]["text"], "will notify");
    let event = stream.next(Duration::from_secs(5)).await.expect("an event on the GET stream");
    assert_eq!(event.event, "message");
    assert_eq!(event.data, note("t1"), "the upstream's bytes, unchanged");

    // Sent while no stream is open: held until one opens.
    let other = m.initialize().await;
    let response = m.call(&other, 1, "notify_later", json!({"tag": "t2", "delay_ms": 0})).await;
    assert!(response.get("result").is_some());
    let mut late = m.open_stream(&other).await;
    let event = late.next(Duration::from_secs(5)).await.expect("the held notification");
    assert_eq!(event.data, note("t2"));

    // A session with an open stream is still usable, and DELETE ends its stream.
    let response = m.call(&session, 2, "count", json!({})).await;
    assert_eq!(response["result"]["structuredContent"]["count"], 1);
    assert_eq!(m.delete(&session).await.status, StatusCode::OK);
    assert!(
        stream.next(Duration::from_secs(10)).await.is_none(),
        "the stream ends with its session"
    );
    let (status, _, stderr) = serve.stop().await;
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(late.next(Duration::from_secs(10)).await.is_none(), "shutdown ends open streams");
}

// 7. The upstream crashes.

#[tokio::test]
async fn an_upstream_crash_answers_every_open_call_and_a_new_session_works() {
    let alice = AgentCred::new("alice");
    let serve = Serve::start(Options { agents: vec![alice.clone()], ..Options::default() }).await;
    let m = serve.mcp(UP, Some(&alice));
    let session = m.initialize().await;
    let pid = m.upstream_pid(&session, 1).await;

    let hanging = {
        let (m, session) = (m.clone(), session.clone());
        tokio::spawn(async move {
            m.post_within(Some(&session), &call_body(2, "hang", json!({})), Duration::from_secs(20))
                .await
        })
    };
    wait_for_call(&serve, &session, "hang").await;
    let crash = m.post(Some(&session), &call_body(3, "crash", json!({}))).await;
    assert_eq!(crash.status, StatusCode::OK, "{crash:?}");
    assert_jsonrpc_error(&crash.response(&json!(3)), 3);
    // Write-ahead: the agent has the error, so the result is already committed.
    let events = serve.events().await;
    let crashed = tool_calls(&events, "crash");
    assert_eq!(
        results_of(&events, crashed[0]).len(),
        1,
        "crash's result committed before the reply"
    );
    let hang = tokio::time::timeout(Duration::from_secs(10), hanging)
        .await
        .expect("the hanging call is answered after the crash")
        .expect("task");
    assert_eq!(hang.status, StatusCode::OK, "{hang:?}");
    assert_jsonrpc_error(&hang.response(&json!(2)), 2);

    let events = eventually("session_end after the crash", Duration::from_secs(10), || async {
        let events = serve.events().await;
        has_session_end(&events, &session).then_some(events)
    })
    .await;
    let end = in_session(&events, &session)
        .into_iter()
        .find(|e| e.event_type == "session_end")
        .unwrap()
        .seq;
    for tool in ["hang", "crash"] {
        let calls = tool_calls(&events, tool);
        assert_eq!(calls.len(), 1, "{tool}");
        let results = results_of(&events, calls[0]);
        assert_eq!(results.len(), 1, "one result for {tool}");
        assert_eq!(results[0].data["outcome"], "no_response", "{tool}: {:?}", results[0].data);
        assert!(results[0].seq < end, "{tool}'s result precedes session_end");
    }
    let options = mcp_ledger::store::StoreOptions { migrate: false, ..Default::default() };
    let store = mcp_ledger::store::open(&serve.files.ledger.url, &options).await.unwrap();
    let rows = store.provenance(100).await.unwrap();
    store.close().await;
    let outcomes: Vec<(&str, &str)> = rows
        .iter()
        .filter(|r| r.session_id.as_deref() == Some(session.as_str()))
        .map(|r| (r.action.as_deref().unwrap_or(""), r.outcome.as_str()))
        .collect();
    assert!(outcomes.contains(&("hang", "no_response")), "{outcomes:?}");
    assert!(outcomes.contains(&("crash", "no_response")), "{outcomes:?}");
    let forwarded: Vec<Value> = serve
        .upstream_log()
        .into_iter()
        .filter(|m| m["method"] == "tools/call")
        .map(|m| m["params"]["name"].clone())
        .collect();
    assert_eq!(forwarded, [json!("whoami"), json!("hang"), json!("crash")]);
    assert!(!alive(pid));

    // The dead session is gone; a new one gets a fresh upstream.
    eventually("the crashed session to be forgotten", Duration::from_secs(5), || async {
        let reply = m.post(Some(&session), &call_body(4, "whoami", json!({}))).await;
        (reply.status == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    let fresh = m.initialize().await;
    let new_pid = m.upstream_pid(&fresh, 1).await;
    assert_ne!(new_pid, pid);
    let (status, _, stderr) = serve.stop().await;
    assert!(status.success(), "{status:?}\n{stderr}");
}

// 8. One slow call does not hold up anyone else.

#[tokio::test]
async fn a_hanging_call_does_not_stall_other_sessions() {
    let alice = AgentCred::new("alice");
    let bob = AgentCred::new("bob");
    let serve =
        Serve::start(Options { agents: vec![alice.clone(), bob.clone()], ..Options::default() })
            .await;
    let slow = serve.mcp(UP, Some(&alice));
    let fast = serve.mcp(UP, Some(&bob));
    let (sa, sb) = tokio::join!(slow.initialize(), fast.initialize());
    let hanging = {
        let (slow, sa) = (slow.clone(), sa.clone());
        tokio::spawn(async move {
            slow.post_within(Some(&sa), &call_body(1, "hang", json!({})), Duration::from_secs(30))
                .await
        })
    };
    wait_for_call(&serve, &sa, "hang").await;

    let started = Instant::now();
    for i in 1..=20u64 {
        let call = Instant::now();
        let response = fast.call(&sb, i, "count", json!({})).await;
        assert_eq!(response["result"]["structuredContent"]["count"], i);
        assert!(call.elapsed() < Duration::from_secs(2), "call {i} took {:?}", call.elapsed());
    }
    // Bob on another server too, and Alice's own next call alongside her hanging one.
    let demo = serve.mcp(DEMO, Some(&bob));
    let sd = demo.initialize().await;
    assert!(
        demo.call(&sd, 1, "lookup_customer", json!({"customer_id": "cus_1001"}))
            .await
            .get("result")
            .is_some()
    );
    assert!(slow.upstream_pid(&sa, 2).await > 0);
    assert!(started.elapsed() < Duration::from_secs(8), "took {:?}", started.elapsed());
    assert!(!hanging.is_finished(), "the hanging call is still waiting");

    // Ending Alice's session answers her hanging call.
    assert_eq!(slow.delete(&sa).await.status, StatusCode::OK);
    let hang = tokio::time::timeout(Duration::from_secs(10), hanging)
        .await
        .expect("answered")
        .expect("task");
    assert_eq!(hang.status, StatusCode::OK, "{hang:?}");
    assert_jsonrpc_error(&hang.response(&json!(1)), 1);
    let events = serve.events().await;
    let calls = tool_calls(&events, "hang");
    assert_eq!(results_of(&events, calls[0])[0].data["outcome"], "no_response");
    for event in in_session(&events, &sb) {
        assert_eq!(event.agent.as_deref(), Some("bob"));
    }
    for event in in_session(&events, &sa) {
        assert_eq!(event.agent.as_deref(), Some("alice"));
    }
    let (status, _, stderr) = serve.stop().await;
    assert!(status.success(), "{status:?}\n{stderr}");
}

// 9. SIGTERM.

#[tokio::test]
async fn sigterm_ends_open_sessions_and_exits_zero() {
    let alice = AgentCred::new("alice");
    let serve = Serve::start(Options { agents: vec![alice.clone()], ..Options::default() }).await;
    let up = serve.mcp(UP, Some(&alice));
    let demo = serve.mcp(DEMO, Some(&alice));
    let (s_up, s_demo) = tokio::join!(up.initialize(), demo.initialize());
    let pid = up.upstream_pid(&s_up, 1).await;
    let mut stream = up.open_stream(&s_up).await;
    let hanging = {
        let (up, s_up) = (up.clone(), s_up.clone());
        tokio::spawn(async move {
            try_send(
                up.post_request(Some(&s_up), &call_body(2, "hang", json!({}))),
                Duration::from_secs(30),
            )
            .await
        })
    };
    wait_for_call(&serve, &s_up, "hang").await;

    let started = Instant::now();
    let (status, files, stderr) = serve.stop().await;
    assert_eq!(status.code(), Some(0), "{status:?}\n{stderr}");
    assert!(started.elapsed() < Duration::from_secs(10), "shutdown took {:?}", started.elapsed());
    let events = read_events(&files.ledger).await;
    assert!(has_session_end(&events, &s_up), "session_end for the session with an open stream");
    assert!(has_session_end(&events, &s_demo), "session_end for the idle session");
    let calls = tool_calls(&events, "hang");
    let results = results_of(&events, calls[0]);
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].data["outcome"], "no_response");
    assert!(!alive(pid), "the upstream was stopped");

    // The hanging call got an error before the server went away.
    let hang = tokio::time::timeout(Duration::from_secs(10), hanging)
        .await
        .expect("finished")
        .expect("task");
    let reply = hang.expect("the hanging call is answered, not cut off");
    assert_jsonrpc_error(&reply.response(&json!(2)), 2);
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(_)) = stream.response.chunk().await {}
    })
    .await;
    assert!(ended.is_ok(), "the GET stream ended");
    let (code, out, err) = run_cli(&["verify", "--ledger", &files.ledger.url_string()]);
    assert_eq!(code, 0, "verify: {out}{err}");
}

// Probes beyond the brief.

#[tokio::test]
async fn a_dropped_get_stream_does_not_keep_an_idle_session_alive() {
    let alice = AgentCred::new("alice");
    let serve = Serve::start(Options {
        agents: vec![alice.clone()],
        listen: vec!["session_idle_timeout_secs = 1".into()],
        ..Options::default()
    })
    .await;
    let m = serve.mcp(UP, Some(&alice));
    let session = m.initialize().await;
    let stream = m.open_stream(&session).await;
    drop(stream); // the client went away
    // The server may only notice the closed connection at its next SSE keep-alive (15 s).
    eventually("the abandoned session to idle out", Duration::from_secs(20), || async {
        has_session_end(&serve.events().await, &session).then_some(())
    })
    .await;
    let (status, _, stderr) = serve.stop().await;
    assert!(status.success(), "{status:?}\n{stderr}");
}

#[tokio::test]
async fn max_sessions_holds_under_concurrent_initializes() {
    let alice = AgentCred::new("alice");
    let serve = Serve::start(Options {
        agents: vec![alice.clone()],
        threads: Some(3),
        listen: vec!["max_sessions = 2".into()],
        ..Options::default()
    })
    .await;
    let m = serve.mcp(UP, Some(&alice));
    // Each holds its session's GET stream open, so that a session is evictable only between
    // its initialize and its GET.
    let attempts: Vec<_> = (0..8)
        .map(|_| {
            let m = m.clone();
            tokio::spawn(async move {
                let reply = m.post(None, &initialize_body(0)).await;
                let Some(session) = reply.session_id() else { return (reply.status, None) };
                let get =
                    m.request(Method::GET, Some(&session)).header("accept", "text/event-stream");
                let stream = get.send().await.expect("GET");
                (reply.status, (stream.status() == StatusCode::OK).then_some(stream))
            })
        })
        .collect();
    let mut statuses = Vec::new();
    let mut streams = Vec::new();
    for attempt in attempts {
        let (status, stream) = attempt.await.unwrap();
        statuses.push(status);
        streams.extend(stream);
    }
    let accepted = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let refused = statuses.iter().filter(|s| **s == StatusCode::SERVICE_UNAVAILABLE).count();
    assert_eq!(accepted + refused, 8, "{statuses:?}");
    // Every session that was started and not evicted holds a stream now: exactly the limit.
    assert_eq!(streams.len(), 2, "max_sessions = 2, yet {statuses:?}");
    eventually("every evicted session's end", QUICK, || async {
        let events = serve.events().await;
        let started = of_type(&events, "session_start").len();
        let ended = of_type(&events, "session_end").len();
        (started == accepted && started - ended == 2).then_some(())
    })
    .await;
    drop(streams);
    let (status, _, stderr) = serve.stop().await;
    assert!(status.success(), "{status:?}\n{stderr}");
}

/// `serve` runs on one thread by default on a 2-CPU machine, so every other test here exercises
/// that runtime; this one runs it on several, with sessions calling at once.
#[tokio::test]
async fn on_several_threads_concurrent_sessions_record_one_intact_chain() {
    const SESSIONS: u64 = 8;
    const CALLS: u64 = 10;
    let alice = AgentCred::new("alice");
    let serve = Serve::start(Options {
        agents: vec![alice.clone()],
        threads: Some(3),
        ..Options::default()
    })
    .await;
    let demo = serve.mcp(DEMO, Some(&alice));
    let sessions: Vec<_> = (0..SESSIONS)
        .map(|_| {
            let demo = demo.clone();
            tokio::spawn(async move {
                let session = demo.initialize().await;
                for id in 1..=CALLS {
                    let response = demo
                        .call(&session, id, "lookup_customer", json!({"customer_id": "cus_1004"}))
                        .await;
                    assert!(response.get("result").is_some(), "{response}");
                }
                session
            })
        })
        .collect();
    let mut ids = Vec::new();
    for session in sessions {
        ids.push(session.await.expect("session task"));
    }

    let (status, files, stderr) = serve.stop().await;
    assert!(status.success(), "{status:?}\n{stderr}");
    assert!(stderr.contains("threads=3"), "serve logs its thread count: {stderr}");
    let events = read_events(&files.ledger).await;
    let calls = tool_calls(&events, "lookup_customer");
    assert_eq!(calls.len() as u64, SESSIONS * CALLS);
    for call in &calls {
        assert_eq!(results_of(&events, call).len(), 1, "one result for {call:?}");
    }
    for session in &ids {
        assert!(has_session_end(&events, session), "session_end for {session}");
    }
    let (code, out, err) = run_cli(&["verify", "--ledger", &files.ledger.url_string()]);
    assert_eq!(code, 0, "verify: {out}{err}");
}

/// A thread count that is not a positive number is a usage error naming the flag, before
/// anything starts.
#[test]
fn a_bad_thread_count_is_refused_with_its_flag_named() {
    let (code, _, stderr) = run_cli(&["serve", "--threads", "0"]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("--threads"), "{stderr}");

    let output = std::process::Command::new(common::BIN)
        .arg("serve")
        .env("MCP_LEDGER_THREADS", "many")
        .output()
        .expect("run mcp-ledger");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("--threads") && stderr.contains("many"), "{stderr}");
}
