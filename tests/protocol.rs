//! Every MCP feature works through the proxy exactly as without it, over both downstream
//! transports, in both directions, and is recorded where the ledger records it.
//!
//! For each feature a scenario runs twice against a fresh in-process rmcp server (served with
//! rmcp's Streamable HTTP server on 127.0.0.1:0): once **directly** (rmcp client → server) and
//! once **through the proxy**, either `mcp-ledger serve` (agent → HTTP → proxy → HTTP → server)
//! or `mcp-ledger stdio --config` (agent → stdio → proxy → HTTP → server). What the client
//! received (responses, notifications, the server's requests) and what the server observed
//! (cancellations, custom notifications) must be the same JSON both times; progress tokens and
//! request ids are checked to map back to the ones the client and server used, then masked.
//! The proxied run's ledger must hold a `tool_call`/`tool_result` pair per `tools/call`, a
//! `request`/`response` pair per `resources/read`, `prompts/get`, `sampling/createMessage` and
//! `elicitation/create` (the last two marked `server_to_agent`), all under the session's agent,
//! and the chain must verify.
//!
//! rmcp's typed models drop unknown fields, so unknown fields and methods are checked apart, byte
//! for byte, against a scripted node upstream (see `protocol/raw.rs`).

// Sampling, roots and logging are deprecated in rmcp (SEP-2577), but the revision spoken here
// (2025-11-25) has them.
#![allow(deprecated)]

mod common;

#[path = "protocol/client.rs"]
mod client;
#[path = "protocol/raw.rs"]
mod raw;
#[path = "protocol/server.rs"]
mod server;

use std::collections::BTreeMap;

use futures::TryStreamExt;
use mcp_ledger::record::Event;
use mcp_ledger::record::verify::verify_all;
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, ClientNotification, ClientRequest, CompleteRequest,
    CustomNotification, CustomRequest, GetPromptRequest, GetPromptRequestParams,
    ListPromptsRequest, ListResourceTemplatesRequest, ListResourcesRequest, ListToolsRequest,
    PingRequest, ReadResourceRequest, ReadResourceRequestParams, SetLevelRequest, SubscribeRequest,
    SubscribeRequestParams, UnsubscribeRequest, UnsubscribeRequestParams,
};
use serde_json::{Value, json};

use client::{Route, SERVER_NAME, STDIO_AGENT, ServeProcess, Session, WAIT, toml_string};
use common::TestLedger;
use server::{BLOB_URI, ServerState, TEXT_URI};

/// The MCP features, one scenario each.
#[derive(Debug, Clone, Copy)]
enum Feature {
    Tools,
    ToolListChanged,
    Resources,
    ResourceSubscription,
    Prompts,
    Completion,
    Logging,
    Progress,
    Cancellation,
    Ping,
    Sampling,
    Elicitation,
    Roots,
    CustomMethods,
}

/// An event pair the proxied run must have left in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Recorded {
    /// `tool_call` + `tool_result` for a `tools/call` of this tool, with this outcome.
    Tool { tool: String, outcome: &'static str },
    /// `request` + `response` for this method, sent in this direction, with this outcome.
    Request { method: &'static str, direction: &'static str, outcome: &'static str },
}

/// What one run of a scenario observed.
#[derive(Default)]
struct Transcript {
    /// `(what, JSON)` in order; compared between the direct and the proxied run.
    steps: Vec<(String, Value)>,
    /// What the ledger must hold after a proxied run.
    recorded: Vec<Recorded>,
}

impl Transcript {
    fn step(&mut self, what: &str, value: Value) {
        self.steps.push((what.to_owned(), value));
    }

    fn tool(&mut self, tool: &str, outcome: &'static str) {
        self.recorded.push(Recorded::Tool { tool: tool.to_owned(), outcome });
    }

    fn request(&mut self, method: &'static str, direction: &'static str, outcome: &'static str) {
        self.recorded.push(Recorded::Request { method, direction, outcome });
    }

    /// A `tools/call` whose response is a step, recorded as a tool call with `outcome`.
    async fn call(&mut self, s: &Session, tool: &str, arguments: Value, outcome: &'static str) {
        let response = s.call(tool, arguments).await;
        self.step(&format!("tools/call {tool}"), response);
        self.tool(tool, outcome);
    }

    /// Waits until the client's standalone stream carries notifications (see
    /// [`Session::await_standalone_stream`]); the beacon calls are recorded, not compared.
    async fn standalone_stream(&mut self, s: &Session) {
        // Every attempt is a tools/call of `beacon`.
        for _ in 0..s.await_standalone_stream().await {
            self.tool("beacon", "ok");
        }
    }
}

fn read(uri: &str) -> ClientRequest {
    ReadResourceRequest::new(ReadResourceRequestParams::new(uri)).into()
}

fn typed<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("the test's own JSON does not fit the rmcp type: {e}: {value}"))
}

/// Sorted, so that messages that may travel on different streams compare as a set.
fn sorted(mut values: Vec<Value>) -> Value {
    values.sort_by_key(Value::to_string);
    Value::Array(values)
}

async fn play(feature: Feature, s: &Session, server: &ServerState) -> Transcript {
    let mut t = Transcript::default();
    // The handshake as the client saw it (the proxy must not renegotiate the version).
    let initialize = serde_json::to_value(s.client.peer_info()).expect("serialises");
    t.step("the initialize result", initialize);
    match feature {
        Feature::Tools => {
            let list = s.request("tools/list", ListToolsRequest::default().into()).await;
            t.step("tools/list", list);
            let arguments =
                json!({"text": "héllo \"quoted\"", "n": [1, 2.5, -3e-4, null, {"k": []}]});
            t.call(s, "echo", arguments, "ok").await;
            t.call(s, "fail", json!({}), "tool_error").await;
            t.call(s, "no_such_tool", json!({"x": 1}), "error").await;
        }
        Feature::ToolListChanged => {
            t.standalone_stream(s).await;
            t.call(s, "announce", json!({}), "ok").await;
            for list in ["tools", "prompts", "resources"] {
                let method = format!("notifications/{list}/list_changed");
                let changed = s.wait_for(&method, 1).await;
                t.step(&format!("{method} sent while a request was open"), Value::Array(changed));
            }
            let list = s.request("tools/list", ListToolsRequest::default().into()).await;
            t.step("tools/list after the change", list);
            // A notification that belongs to no request, sent while no request is open.
            t.call(s, "announce_later", json!({}), "ok").await;
            server.release.notify_one();
            let changed = s.wait_for("notifications/tools/list_changed", 2).await;
            t.step("tools/list_changed sent while no request was open", Value::Array(changed));
        }
        Feature::Resources => {
            let list = s.request("resources/list", ListResourcesRequest::default().into()).await;
            t.step("resources/list", list);
            let templates = s
                .request("resources/templates/list", ListResourceTemplatesRequest::default().into())
                .await;
            t.step("resources/templates/list", templates);
            for uri in [TEXT_URI, BLOB_URI, "test://features/cities/Lisbon"] {
                t.step(&format!("resources/read {uri}"), s.request(uri, read(uri)).await);
                t.request("resources/read", "agent_to_server", "ok");
            }
            let missing = "test://features/missing";
            t.step("resources/read of a missing resource", s.request(missing, read(missing)).await);
            t.request("resources/read", "agent_to_server", "error");
        }
        Feature::ResourceSubscription => {
            t.standalone_stream(s).await;
            let subscribe = SubscribeRequest::new(SubscribeRequestParams::new(TEXT_URI));
            t.step("resources/subscribe", s.request("subscribe", subscribe.into()).await);
            t.call(s, "touch", json!({}), "ok").await;
            let updated = s.wait_for("notifications/resources/updated", 1).await;
            t.step("resources/updated notifications", Value::Array(updated));
            let unsubscribe = UnsubscribeRequest::new(UnsubscribeRequestParams::new(TEXT_URI));
            t.step("resources/unsubscribe", s.request("unsubscribe", unsubscribe.into()).await);
            // The server reports whom it notified: nobody, once unsubscribed.
            t.call(s, "touch", json!({}), "ok").await;
        }
        Feature::Prompts => {
            let list = s.request("prompts/list", ListPromptsRequest::default().into()).await;
            t.step("prompts/list", list);
            let cases = [
                ("greet", json!({"name": "Ada", "city": "Lisbon"}), "ok"),
                ("greet", json!({"name": "Grace"}), "ok"),
                ("no_such_prompt", json!({}), "error"),
            ];
            for (name, arguments, outcome) in cases {
                let params = GetPromptRequestParams::new(name)
                    .with_arguments(arguments.as_object().cloned().unwrap_or_default());
                let response = s.request(name, GetPromptRequest::new(params).into()).await;
                t.step(&format!("prompts/get {name} {arguments}"), response);
                t.request("prompts/get", "agent_to_server", outcome);
            }
        }
        Feature::Completion => {
            let cases = [
                json!({"ref": {"type": "ref/prompt", "name": "greet"}, "argument": {"name": "city", "value": "Li"}}),
                json!({"ref": {"type": "ref/prompt", "name": "greet"}, "argument": {"name": "name", "value": "A"}, "context": {"arguments": {"city": "Lisbon"}}}),
                json!({"ref": {"type": "ref/resource", "uri": "test://features/cities/{city}"}, "argument": {"name": "city", "value": "L"}}),
                json!({"ref": {"type": "ref/prompt", "name": "greet"}, "argument": {"name": "other", "value": ""}}),
            ];
            for params in cases {
                let request = CompleteRequest::new(typed(params.clone()));
                let response = s.request("completion/complete", request.into()).await;
                t.step(&format!("completion/complete {params}"), response);
            }
        }
        Feature::Logging => {
            t.standalone_stream(s).await;
            let set: ClientRequest =
                SetLevelRequest::new(typed(json!({"level": "warning"}))).into();
            t.step("logging/setLevel warning", s.request("logging/setLevel", set).await);
            let first = s.wait_for("notifications/message", 1).await;
            t.step("the message sent when the level was set", Value::Array(first));
            t.call(s, "log", json!({}), "ok").await;
            // One when the level was set, then warning, error, critical, alert, emergency.
            let all = s.wait_for("notifications/message", 6).await;
            t.step("every log message, as a set", sorted(all));
        }
        Feature::Progress => {
            // Two calls at once: each one's notifications must carry its own token.
            let first =
                s.start(CallToolRequest::new(CallToolRequestParams::new("progress")).into()).await;
            let second =
                s.start(CallToolRequest::new(CallToolRequestParams::new("progress")).into()).await;
            let tokens = [&first.progress_token, &second.progress_token]
                .map(|token| serde_json::to_value(token).expect("serialises"));
            assert_ne!(tokens[0], tokens[1], "rmcp gives each request a token of its own");
            t.step("tools/call progress (first)", s.finish("tools/call progress", first).await);
            t.step("tools/call progress (second)", s.finish("tools/call progress", second).await);
            t.tool("progress", "ok");
            t.tool("progress", "ok");
            let progress = s.wait_for("notifications/progress", 6).await;
            for (n, token) in tokens.iter().enumerate() {
                let mut mine: Vec<Value> = progress
                    .iter()
                    .filter(|note| &note["params"]["progressToken"] == token)
                    .cloned()
                    .map(|mut note| {
                        note["params"]["progressToken"] = json!("<the request's token>");
                        note
                    })
                    .collect();
                // rmcp runs each notification handler in a task of its own, so the order the
                // handler saw them in is not the wire order: compare them sorted by progress.
                mine.sort_by(|a, b| {
                    let progress = |v: &Value| v["params"]["progress"].as_f64().unwrap_or(-1.0);
                    progress(a).total_cmp(&progress(b))
                });
                t.step(
                    &format!("progress notifications with call {n}'s token"),
                    Value::Array(mine),
                );
            }
            let strangers: Vec<&Value> = progress
                .iter()
                .filter(|note| !tokens.contains(&note["params"]["progressToken"]))
                .collect();
            assert!(
                strangers.is_empty(),
                "{:?}: progress notifications with a token the client never sent: {strangers:#?}",
                s.route
            );
        }
        Feature::Cancellation => {
            let params = CallToolRequestParams::new("slow");
            let handle = s.start(CallToolRequest::new(params).into()).await;
            let mut started = server.slow_started.subscribe();
            tokio::time::timeout(WAIT, started.wait_for(|started| *started))
                .await
                .expect("the slow tool starts")
                .expect("the server state lives");
            let seen_id = server.slow_request_id.borrow().clone();
            handle.cancel(Some("the user changed their mind".to_owned())).await.expect("cancel");
            t.tool("slow", "no_response");
            let mut outcome = server.slow_outcome.subscribe();
            let observed = tokio::time::timeout(WAIT, outcome.wait_for(Option::is_some))
                .await
                .unwrap_or_else(|_| panic!("{:?}: the server never saw the cancellation", s.route))
                .expect("the server state lives")
                .clone();
            t.step("what the slow tool observed", json!(observed));
            let mut cancellations = server.cancellations.subscribe();
            let received = tokio::time::timeout(WAIT, cancellations.wait_for(|c| !c.is_empty()))
                .await
                .expect("the server handler gets notifications/cancelled")
                .expect("the server state lives")
                .clone();
            let masked: Vec<Value> = received
                .into_iter()
                .map(|mut params| {
                    assert_eq!(
                        params["requestId"], seen_id,
                        "{:?}: the cancellation names the id the server saw for the call",
                        s.route
                    );
                    params["requestId"] = json!("<the slow call's id>");
                    params
                })
                .collect();
            t.step("notifications/cancelled as the server got it", Value::Array(masked));
            // The session goes on after a cancellation.
            t.call(s, "echo", json!({"text": "still here"}), "ok").await;
        }
        Feature::Ping => {
            let ping: ClientRequest = PingRequest::default().into();
            t.step("ping (agent to server)", s.request("ping", ping).await);
            t.call(s, "ping_client", json!({}), "ok").await;
            t.step("pings the client got", Value::Array(s.seen_of("ping")));
        }
        Feature::Sampling => {
            t.call(s, "sample", json!({}), "ok").await;
            t.request("sampling/createMessage", "server_to_agent", "ok");
            // The agent answers with a JSON-RPC error this time.
            t.call(s, "sample", json!({"refuse": true}), "ok").await;
            t.request("sampling/createMessage", "server_to_agent", "error");
            t.step(
                "sampling requests the client got",
                Value::Array(s.seen_of("sampling/createMessage")),
            );
        }
        Feature::Elicitation => {
            t.call(s, "elicit", json!({}), "ok").await;
            t.request("elicitation/create", "server_to_agent", "ok");
            t.call(s, "elicit", json!({"decline": true}), "ok").await;
            t.request("elicitation/create", "server_to_agent", "ok");
            t.step(
                "elicitation requests the client got",
                Value::Array(s.seen_of("elicitation/create")),
            );
        }
        Feature::Roots => {
            t.call(s, "roots", json!({}), "ok").await;
            t.step("roots requests the client got", Value::Array(s.seen_of("roots/list")));
            // The client says its roots changed; the server asks for them on its own, outside
            // any client request (on the standalone stream).
            t.standalone_stream(s).await;
            let changed = ClientNotification::RootsListChangedNotification(Default::default());
            s.client.send_notification(changed).await.expect("send roots/list_changed");
            let mut roots = server.roots_after_change.subscribe();
            let got = tokio::time::timeout(WAIT, roots.wait_for(Option::is_some))
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{:?}: the server's own roots/list (after notifications/roots/list_changed) \
                         got no answer within {WAIT:?}; the client saw: {:#?}",
                        s.route,
                        s.seen()
                    )
                })
                .expect("the server state lives")
                .clone();
            t.step("the roots the server got after the change", json!(got));
            t.step("roots requests the client got in all", Value::Array(s.seen_of("roots/list")));
        }
        Feature::CustomMethods => {
            t.standalone_stream(s).await;
            let request = CustomRequest::new(
                "x-protocol-test/hello",
                Some(json!({"greeting": "hi", "x-field": [1, {"deep": null}]})),
            );
            let response =
                s.request("x-protocol-test/hello", ClientRequest::CustomRequest(request)).await;
            t.step("a custom request (agent to server)", response);
            let note = CustomNotification::new(
                "notifications/x-protocol-test/client-said",
                Some(json!({"said": "hello", "n": 1})),
            );
            s.client
                .send_notification(ClientNotification::CustomNotification(note))
                .await
                .expect("send a custom notification");
            let mut notes = server.custom_notifications.subscribe();
            let got = tokio::time::timeout(WAIT, notes.wait_for(|n| !n.is_empty()))
                .await
                .unwrap_or_else(|_| {
                    panic!("{:?}: the server never got the custom notification", s.route)
                })
                .expect("the server state lives")
                .clone();
            t.step("custom notifications the server got", Value::Array(got));
            t.call(s, "ask_custom", json!({}), "ok").await;
            t.step(
                "custom requests the client got",
                Value::Array(s.seen_of("x-protocol-test/ask")),
            );
            let said = s.wait_for("notifications/x-protocol-test/server-said", 1).await;
            t.step("custom notifications the client got", Value::Array(said));
        }
    }
    t
}

/// One run of a scenario, with the ledger its proxy wrote (none for a direct run).
struct Run {
    route: Route,
    transcript: Transcript,
    events: Vec<Event>,
}

async fn run(feature: Feature, route: Route) -> Run {
    let server = server::start().await;
    let ledger = TestLedger::sqlite();
    let dir = tempfile::tempdir().expect("temp dir");
    let upstream = format!("url = {}", toml_string(&server.url));
    let config = client::write_config(dir.path(), &ledger.url_string(), SERVER_NAME, &upstream);
    let mut serve = None;
    let session = match route {
        Route::Direct => Session::connect(route, &server.url).await,
        Route::ServeHttp => {
            let process = ServeProcess::start(&config, SERVER_NAME).await;
            let session = Session::connect(route, &process.url).await;
            serve = Some(process);
            session
        }
        Route::Stdio => Session::connect(route, &config.display().to_string()).await,
    };
    let transcript = play(feature, &session, &server.state).await;
    session.close().await;
    if let Some(serve) = serve {
        serve.stop().await;
    }
    let events = match route {
        Route::Direct => Vec::new(),
        Route::ServeHttp | Route::Stdio => {
            let store = ledger.open().await;
            let events = store.events().try_collect().await.expect("read the ledger");
            store.close().await;
            events
        }
    };
    Run { route, transcript, events }
}

/// Failures collected over a whole test, reported together.
#[derive(Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            self.0.push(message());
        }
    }

    fn finish(self, what: &str) {
        assert!(
            self.0.is_empty(),
            "{what}: {} discrepancies:\n\n{}",
            self.0.len(),
            self.0.join("\n\n")
        );
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}

fn compare(direct: &Run, proxied: &Run, failures: &mut Failures) {
    let keys = |run: &Run| -> Vec<String> {
        run.transcript.steps.iter().map(|(what, _)| what.clone()).collect()
    };
    failures.check(keys(direct) == keys(proxied), || {
        format!(
            "the scenario took different steps:\n  direct: {:?}\n  {:?}: {:?}",
            keys(direct),
            proxied.route,
            keys(proxied)
        )
    });
    for ((what, expected), (_, got)) in
        direct.transcript.steps.iter().zip(&proxied.transcript.steps)
    {
        failures.check(expected == got, || {
            format!(
                "{what}: differs through the proxy ({:?})\n--- direct:\n{}\n--- through the proxy:\n{}",
                proxied.route,
                pretty(expected),
                pretty(got)
            )
        });
    }
}

fn check_ledger(run: &Run, failures: &mut Failures) {
    let route = run.route;
    let events = &run.events;
    let report = verify_all(events);
    failures.check(report.intact(), || format!("{route:?}: the chain does not verify: {report:?}"));

    let agent = match route {
        Route::Stdio => STDIO_AGENT,
        _ => "anonymous",
    };
    let of_type = |t: &str| events.iter().filter(|e| e.event_type == t).collect::<Vec<_>>();
    let starts = of_type("session_start");
    failures.check(starts.len() == 1, || {
        format!("{route:?}: {} session_start events, expected 1", starts.len())
    });
    failures.check(of_type("session_end").len() == 1, || {
        format!("{route:?}: {} session_end events, expected 1", of_type("session_end").len())
    });
    let session = starts.first().and_then(|e| e.session_id.clone());
    for event in events {
        failures.check(event.agent.as_deref() == Some(agent), || {
            format!(
                "{route:?}: event {} ({}) has agent {:?}, expected {agent}",
                event.seq, event.event_type, event.agent
            )
        });
        failures.check(event.server.as_deref() == Some(SERVER_NAME), || {
            format!(
                "{route:?}: event {} ({}) has server {:?}",
                event.seq, event.event_type, event.server
            )
        });
        failures.check(event.session_id == session, || {
            format!(
                "{route:?}: event {} ({}) is outside the session {session:?}",
                event.seq, event.event_type
            )
        });
        let known =
            ["session_start", "session_end", "tool_call", "tool_result", "request", "response"];
        failures.check(known.contains(&event.event_type.as_str()), || {
            format!(
                "{route:?}: unexpected event {} ({}): {}",
                event.seq, event.event_type, event.data
            )
        });
    }

    // Pair every opening event with its closing event by call_id.
    let mut recorded = Vec::new();
    for (open, close) in [("tool_call", "tool_result"), ("request", "response")] {
        for call in of_type(open) {
            let call_id = &call.data["call_id"];
            let closes: Vec<&Event> = events
                .iter()
                .filter(|e| e.event_type == close && e.data["call_id"] == *call_id)
                .collect();
            failures.check(closes.len() == 1, || {
                format!(
                    "{route:?}: {open} {call_id} has {} {close} events: {}",
                    closes.len(),
                    call.data
                )
            });
            let outcome = closes.first().map(|e| e.data["outcome"].clone()).unwrap_or(Value::Null);
            let outcome: &'static str = match outcome.as_str() {
                Some("ok") => "ok",
                Some("error") => "error",
                Some("tool_error") => "tool_error",
                Some("no_response") => "no_response",
                _ => "<none>",
            };
            if open == "tool_call" {
                let tool = call.data["tool"].as_str().unwrap_or("<no tool>").to_owned();
                failures.check(call.data["method"] == "tools/call", || {
                    format!("{route:?}: tool_call not for tools/call: {}", call.data)
                });
                recorded.push(Recorded::Tool { tool, outcome });
            } else {
                let method: &'static str = match call.data["method"].as_str() {
                    Some("resources/read") => "resources/read",
                    Some("prompts/get") => "prompts/get",
                    Some("sampling/createMessage") => "sampling/createMessage",
                    Some("elicitation/create") => "elicitation/create",
                    _ => "<other>",
                };
                let direction: &'static str = match call.data["direction"].as_str() {
                    Some("agent_to_server") => "agent_to_server",
                    Some("server_to_agent") => "server_to_agent",
                    _ => "<none>",
                };
                recorded.push(Recorded::Request { method, direction, outcome });
            }
        }
    }
    let mut expected = run.transcript.recorded.clone();
    expected.sort();
    recorded.sort();
    failures.check(expected == recorded, || {
        let count = |list: &[Recorded]| {
            let mut counts = BTreeMap::new();
            for r in list {
                *counts.entry(format!("{r:?}")).or_insert(0) += 1;
            }
            counts
        };
        format!(
            "{route:?}: the ledger does not hold the expected calls\n  expected: {:#?}\n  recorded: {:#?}",
            count(&expected),
            count(&recorded)
        )
    });
}

async fn check(feature: Feature, route: Route) {
    let direct = run(feature, Route::Direct).await;
    let proxied = run(feature, route).await;
    let mut failures = Failures::default();
    compare(&direct, &proxied, &mut failures);
    check_ledger(&proxied, &mut failures);
    failures.finish(&format!("{feature:?} through {route:?}"));
}

/// One test per feature and downstream transport.
macro_rules! feature_tests {
    ($($name:ident => $feature:ident),* $(,)?) => {
        mod through_serve_http {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::check(crate::Feature::$feature, crate::client::Route::ServeHttp).await;
                }
            )*
        }
        mod through_stdio {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    crate::check(crate::Feature::$feature, crate::client::Route::Stdio).await;
                }
            )*
        }
    };
}

feature_tests! {
    tools => Tools,
    tool_list_changed => ToolListChanged,
    resources => Resources,
    resource_subscription => ResourceSubscription,
    prompts => Prompts,
    completion => Completion,
    logging => Logging,
    progress => Progress,
    cancellation => Cancellation,
    ping_both_ways => Ping,
    sampling => Sampling,
    elicitation => Elicitation,
    roots => Roots,
    custom_methods => CustomMethods,
}

// ------------------------------------------------------------------------------------------
// Unknown fields and methods, byte for byte
// ------------------------------------------------------------------------------------------

fn compare_raw(direct: &raw::RawRun, proxied: &raw::RawRun, failures: &mut Failures) {
    let steps = raw::script();
    for (n, step) in steps.iter().enumerate() {
        let (sent, expected, got) = match step {
            raw::Step::Request { line, .. } => (*line, &direct.received[n], &proxied.received[n]),
            raw::Step::Notification(_) => continue,
        };
        failures.check(expected == got, || {
            format!(
                "{}: the agent received different bytes for\n  {sent}\n--- direct:\n{}\n--- through the proxy:\n{}",
                proxied.label,
                expected.join("\n"),
                got.join("\n")
            )
        });
    }
    failures.check(direct.upstream_log == proxied.upstream_log, || {
        format!(
            "{}: the upstream received different bytes\n--- direct:\n{}\n--- through the proxy:\n{}",
            proxied.label,
            direct.upstream_log.join("\n"),
            proxied.upstream_log.join("\n")
        )
    });
}

/// The direct run itself shows what is being compared: unknown fields and methods really are
/// in the traffic, so an equal comparison is not a vacuous one.
fn check_raw_direct(direct: &raw::RawRun) {
    let all: String = direct.received.iter().flatten().cloned().collect::<Vec<_>>().join("\n");
    for marker in [
        "x-tool-field",
        "x-unknown-result-field",
        "x-echo",
        "vendor/ask",
        "notifications/vendor/event",
        "x-list-extra",
    ] {
        assert!(all.contains(marker), "the direct run has no {marker}: {all}");
    }
    let log = direct.upstream_log.join("\n");
    for marker in
        ["x-client-field", "vendor/unknown", "notifications/vendor/agent-note", "x-answer"]
    {
        assert!(log.contains(marker), "the upstream got no {marker}: {log}");
    }
}

fn check_raw_ledger(events: &[Event], agent: &str, failures: &mut Failures, label: &str) {
    let report = verify_all(events);
    failures.check(report.intact(), || format!("{label}: the chain does not verify: {report:?}"));
    for event in events {
        failures.check(event.agent.as_deref() == Some(agent), || {
            format!(
                "{label}: event {} ({}) has agent {:?}",
                event.seq, event.event_type, event.agent
            )
        });
    }
    let calls: Vec<&Event> = events.iter().filter(|e| e.event_type == "tool_call").collect();
    let tools: Vec<&str> = calls.iter().filter_map(|e| e.data["tool"].as_str()).collect();
    failures.check(tools == ["echo_raw", "server_asks", "notify_raw"], || {
        format!("{label}: recorded tool calls {tools:?}")
    });
    for call in calls {
        let results = events
            .iter()
            .filter(|e| e.event_type == "tool_result" && e.data["call_id"] == call.data["call_id"])
            .count();
        failures
            .check(results == 1, || format!("{label}: {results} tool_result for {}", call.data));
    }
}

async fn ledger_events(ledger: &TestLedger) -> Vec<Event> {
    let store = ledger.open().await;
    let events = store.events().try_collect().await.expect("read the ledger");
    store.close().await;
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_and_methods_pass_byte_for_byte_through_stdio() {
    let dir = tempfile::tempdir().expect("temp dir");
    let direct = raw::run_direct(dir.path()).await;
    check_raw_direct(&direct);
    let ledger = TestLedger::sqlite();
    let proxied = raw::run_stdio(dir.path(), &ledger).await;
    let mut failures = Failures::default();
    compare_raw(&direct, &proxied, &mut failures);
    check_raw_ledger(&ledger_events(&ledger).await, STDIO_AGENT, &mut failures, proxied.label);
    failures.finish("unknown fields and methods through stdio");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_fields_and_methods_pass_byte_for_byte_through_serve_http() {
    let dir = tempfile::tempdir().expect("temp dir");
    let direct = raw::run_direct(dir.path()).await;
    check_raw_direct(&direct);
    let ledger = TestLedger::sqlite();
    let proxied = raw::run_http(dir.path(), &ledger).await;
    let mut failures = Failures::default();
    compare_raw(&direct, &proxied, &mut failures);
    check_raw_ledger(&ledger_events(&ledger).await, "anonymous", &mut failures, proxied.label);
    failures.finish("unknown fields and methods through serve (HTTP)");
}
