//! The end-to-end script against the npm reference server `@modelcontextprotocol/server-everything`
//! (pinned in `tests/npm/package.json`), shared by `tests/everything.rs` (stdio) and
//! `tests/everything_http.rs` (Streamable HTTP): included by each with `#[path]`.
//!
//! The same scripted rmcp client talks to the server once directly and once through the proxy. It
//! calls every tool the server lists (plus a few calls that end in tool errors and JSON-RPC
//! errors), lists and reads resources and prompts, and serves the server's own requests
//! (sampling, elicitation, roots) with canned answers, keeping every message it read and wrote as
//! the JSON that crossed the wire: the lines of a child's stdio, or the bodies it POSTed and the
//! `data` of every server-sent event it read over HTTP. [`compare_runs`] then checks that the
//! agent sees the same JSON either way (invariant 3, "transparent"), and [`check_ledger`] that the
//! proxy's ledger holds exactly what crossed it.
//!
//! Needs `node` and `npm ci --prefix tests/npm`; without them the tests fail and say so.

// Each test binary uses a part of this module.
#![allow(dead_code)]
// Sampling and roots are deprecated in rmcp (SEP-2577), but the protocol revision spoken here
// (2025-11-25) has them and the everything server exercises them.
#![expect(deprecated)]

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use http::{HeaderName, HeaderValue};
use mcp_ledger::record::verify::verify_all;
use mcp_ledger::record::{Event, Payload};
use mcp_ledger::store::{SqliteStore, Store, StoreOptions};
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, ClientCapabilities, ClientConfig, ClientJsonRpcMessage,
    ClientRequest, CreateMessageRequestParams, CreateMessageResult, CustomRequest, CustomResult,
    ElicitRequestParams, ElicitResult, ElicitationAction, GetPromptRequest, GetPromptRequestParams,
    Implementation, JsonObject, ListPromptsRequest, ListResourceTemplatesRequest,
    ListResourcesRequest, ListRootsResult, ListToolsRequest, PaginatedRequestParams,
    ProgressNotificationParam, ProtocolVersion, ReadResourceRequest, ReadResourceRequestParams,
    Root, ServerJsonRpcMessage,
};
use rmcp::service::{
    NotificationContext, PeerRequestOptions, RequestContext, RoleClient, RunningService,
};
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::transport::streamable_http_client::{
    SseError, StreamableHttpClient, StreamableHttpClientTransportConfig, StreamableHttpError,
    StreamableHttpPostResponse,
};
use rmcp::{ClientHandler, ErrorData, ServiceExt};
use serde_json::{Value, json};
use sse_stream::Sse;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

/// Where `npm ci --prefix tests/npm` puts the server.
pub const SERVER_PACKAGE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/npm/node_modules/@modelcontextprotocol/server-everything"
);

/// How long any one request may take before the test fails naming it, instead of hanging.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a child gets to exit after its input closes. `mcp-ledger` itself waits up to twice
/// its 5 s shutdown grace for an upstream that does not exit, so allow more than that.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Set in both children's environment so `get-env` shows that the upstream environment reaches
/// the server unchanged through the proxy.
pub const ENV_MARKER: (&str, &str) = ("MCP_LEDGER_E2E_MARKER", "same-environment-both-ways");

/// The long-running tool's shape: small, so the test stays fast, but several steps.
const PROGRESS_STEPS: u64 = 3;

/// The server's entry point, or a failure that says how to install it. Never a silent skip: CI
/// runs `npm ci --prefix tests/npm` before `cargo test`, so a missing install is a broken setup.
pub fn server_entry() -> PathBuf {
    let entry = PathBuf::from(SERVER_PACKAGE).join("dist/index.js");
    assert!(
        entry.is_file(),
        "the npm reference server is not installed ({} is missing): run `npm ci --prefix tests/npm` \
         (needs node and npm) before `cargo test`",
        entry.display()
    );
    entry
}

/// The server over stdio, started with `node` (its `stdio` argument selects the transport).
pub fn server_command(entry: &Path) -> Vec<String> {
    vec!["node".to_owned(), entry.display().to_string(), "stdio".to_owned()]
}

/// How the client reaches the server, directly or through the proxy.
pub enum Connect {
    /// A child speaking MCP on its stdio (the server itself, or `mcp-ledger stdio`).
    Stdio(Command),
    /// A Streamable HTTP endpoint, by URL.
    Http(String),
}

// ------------------------------------------------------------------------------------------
// The script
// ------------------------------------------------------------------------------------------

/// Arguments per tool, by name. Tools not named here get arguments built from their input
/// schema's required properties ([`schema_arguments`]), so a tool added in a newer server
/// version is still called.
fn arguments_for(tool: &rmcp::model::Tool) -> Value {
    match tool.name.as_ref() {
        "echo" => json!({ "message": "hello through the ledger" }),
        "get-annotated-message" => json!({ "messageType": "error", "includeImage": true }),
        "get-resource-links" => json!({ "count": 4 }),
        // A blob, whose base64 text embeds a time of day (see `normalise`).
        "get-resource-reference" => json!({ "resourceType": "Blob", "resourceId": 3 }),
        "get-structured-content" => json!({ "location": "Chicago" }),
        "get-sum" => json!({ "a": 2.5, "b": 40 }),
        // A data: URI, so the server fetches nothing from the network (its default is a URL).
        "gzip-file-as-resource" => json!({
            "name": "e2e.txt.gz",
            "data": "data:text/plain;base64,aGVsbG8gZnJvbSB0aGUgbWNwLWxlZGdlciBlMmUgdGVzdAo=",
            "outputType": "resource",
        }),
        "trigger-long-running-operation" => json!({ "duration": 0.3, "steps": PROGRESS_STEPS }),
        "trigger-sampling-request" => {
            json!({ "prompt": "What does a hash chain prove?", "maxTokens": 64 })
        }
        // An explicit elicitation id: the default is a random UUID that the result echoes.
        "trigger-url-elicitation" => json!({
            "url": "https://example.com/mcp-ledger/consent",
            "message": "Please approve the e2e test",
            "elicitationId": "e2e-url-elicitation",
        }),
        "simulate-research-query" => json!({ "topic": "hash chains", "ambiguous": false }),
        _ => schema_arguments(&tool.input_schema),
    }
}

/// Calls made besides one per listed tool, each only if its tool is listed: failures of each
/// kind, so the ledger's outcomes are exercised, and the second press of the two toggles, so
/// that the server has no timers left and exits when its input closes.
fn extra_calls() -> Vec<(&'static str, Value)> {
    vec![
        // Wrong argument types: the server rejects the call.
        ("get-sum", json!({ "a": "two", "b": 2 })),
        // The URL-elicitation error path: JSON-RPC error -32042.
        (
            "trigger-url-elicitation",
            json!({
                "url": "https://example.com/mcp-ledger/prerequisite",
                "elicitationId": "e2e-url-elicitation-error-path",
                "errorPath": true,
            }),
        ),
        ("toggle-simulated-logging", json!({})),
        ("toggle-subscriber-updates", json!({})),
    ]
}

/// A tool no server has: the call fails, and must be recorded as failed.
const UNKNOWN_TOOL: &str = "mcp-ledger-e2e-no-such-tool";

/// Arguments from a JSON Schema's required properties: its default, first enum value, or a
/// plain value of its type.
fn schema_arguments(schema: &JsonObject) -> Value {
    let properties = schema.get("properties").and_then(Value::as_object);
    let required = schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str);
    let mut arguments = serde_json::Map::new();
    for name in required {
        let property = properties.and_then(|p| p.get(name)).cloned().unwrap_or_default();
        let value = if let Some(default) = property.get("default") {
            default.clone()
        } else if let Some(first) =
            property.get("enum").and_then(Value::as_array).and_then(|e| e.first())
        {
            first.clone()
        } else {
            match property.get("type").and_then(Value::as_str) {
                Some("number" | "integer") => property.get("minimum").cloned().unwrap_or(json!(1)),
                Some("boolean") => json!(false),
                Some("array") => json!([]),
                Some("object") => json!({}),
                _ if property.get("format").and_then(Value::as_str) == Some("uri") => {
                    json!("https://example.com/mcp-ledger")
                }
                _ => json!("mcp-ledger e2e"),
            }
        };
        arguments.insert(name.to_owned(), value);
    }
    Value::Object(arguments)
}

/// Everything one run observed.
pub struct Run {
    label: &'static str,
    /// `(what, normalised JSON)` in the order the script produced them; compared across runs.
    transcript: Vec<(String, Value)>,
    /// Every `tools/call`, un-normalised, for the ledger checks.
    calls: Vec<Exchange>,
    /// The `resources/read` and `prompts/get` exchanges.
    other_recorded: Vec<Exchange>,
    /// Every message the client read, as JSON.
    from_server: Vec<Value>,
    /// Every message the client wrote, as JSON.
    to_server: Vec<Value>,
    /// Progress notifications as rmcp delivered them to the client handler.
    delivered_progress: Vec<Value>,
    /// The child's stderr, or over HTTP what the test adds (the servers' output); shown when the
    /// test fails.
    pub stderr: String,
}

/// One request and the raw response the client read for it.
pub struct Exchange {
    method: String,
    /// The request's `params` as sent (with the `_meta` rmcp adds: the ledger records it too).
    params: Value,
    /// The JSON-RPC id as it appeared on the wire.
    id: Value,
    progress_token: Value,
    /// `{"result": …}` or `{"error": …}`, exactly as received.
    response: Value,
}

impl Exchange {
    fn tool(&self) -> &str {
        self.params["name"].as_str().unwrap_or_default()
    }
}

pub async fn run_script(label: &'static str, connect: Connect) -> Run {
    let mut session = Session::start(label, connect).await;
    let mut transcript = Vec::new();

    // The initialize response, as the client read it.
    let initialize = session
        .wire
        .read_messages()
        .into_iter()
        .find(|m| m["result"].get("serverInfo").is_some())
        .expect("an initialize response");
    transcript.push(("initialize".to_owned(), response_of(&initialize)));

    let mut tools = Vec::new();
    let mut cursor = None;
    loop {
        let params = PaginatedRequestParams::default().with_cursor(cursor.clone());
        let page = session.request("tools/list", ListToolsRequest::with_param(params).into()).await;
        let result = &page.response["result"];
        for tool in result["tools"].as_array().expect("tools/list result has tools") {
            tools.push(
                serde_json::from_value::<rmcp::model::Tool>(tool.clone()).expect("a valid tool"),
            );
        }
        cursor = result["nextCursor"].as_str().map(str::to_owned);
        transcript.push(("tools/list".to_owned(), page.response));
        if cursor.is_none() {
            break;
        }
    }
    assert!(
        tools.len() >= 10,
        "{label}: the server listed only {} tools: {:?}",
        tools.len(),
        tools.iter().map(|t| &t.name).collect::<Vec<_>>()
    );

    let mut other_recorded = Vec::new();
    let resources = session.request("resources/list", ListResourcesRequest::default().into()).await;
    let templates = session
        .request("resources/templates/list", ListResourceTemplatesRequest::default().into())
        .await;
    // A static document: its text is a file shipped in the package.
    let uri = resources.response["result"]["resources"][0]["uri"]
        .as_str()
        .expect("the server lists at least one resource")
        .to_owned();
    let read = session
        .request(
            "resources/read",
            ReadResourceRequest::new(ReadResourceRequestParams::new(uri.clone())).into(),
        )
        .await;
    let prompts = session.request("prompts/list", ListPromptsRequest::default().into()).await;
    let prompt_arguments = json!({ "city": "Lisbon", "state": "Lisboa" });
    let prompt = session
        .request(
            "prompts/get",
            GetPromptRequest::new(
                GetPromptRequestParams::new("args-prompt")
                    .with_arguments(prompt_arguments.as_object().cloned().unwrap_or_default()),
            )
            .into(),
        )
        .await;
    for exchange in [resources, templates] {
        transcript.push((exchange.method.clone(), exchange.response));
    }
    transcript.push((format!("resources/read {uri}"), read.response.clone()));
    transcript.push(("prompts/list".to_owned(), prompts.response));
    transcript.push(("prompts/get args-prompt".to_owned(), prompt.response.clone()));
    other_recorded.push(read);
    other_recorded.push(prompt);

    let listed: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    let mut plan: Vec<(String, Value)> =
        tools.iter().map(|t| (t.name.to_string(), arguments_for(t))).collect();
    plan.extend(
        extra_calls()
            .into_iter()
            .filter(|(name, _)| listed.contains(name))
            .map(|(name, arguments)| (name.to_owned(), arguments)),
    );
    plan.push((UNKNOWN_TOOL.to_owned(), json!({})));

    let mut calls = Vec::new();
    for (n, (tool, arguments)) in plan.into_iter().enumerate() {
        let params = CallToolRequestParams::new(tool.clone())
            .with_arguments(arguments.as_object().cloned().unwrap_or_default());
        // rmcp puts a progress token in every request's `_meta`, so any tool may report progress.
        let exchange = session.request("tools/call", CallToolRequest::new(params).into()).await;
        let progress: Vec<Value> = session
            .wire
            .read_messages()
            .into_iter()
            .filter(|m| {
                m["method"] == "notifications/progress"
                    && m["params"]["progressToken"] == exchange.progress_token
            })
            .collect();
        let mut response = exchange.response.clone();
        if tool == "get-env" {
            summarise_environment(&mut response);
        }
        transcript.push((format!("tools/call #{n} {tool}"), response));
        transcript.push((
            format!("tools/call #{n} {tool} progress notifications"),
            Value::Array(progress),
        ));
        calls.push(exchange);
    }

    // The requests the server made of the client, as a set: without their JSON-RPC ids (the
    // server numbers them in the order it sends them), sorted and without repeats, because the
    // server's roots sync runs on a 350 ms timer that races the tool calls: when it is still
    // waiting for the answer as `get-roots-list` runs, the tool asks for the roots once more.
    let mut server_requests: Vec<Value> = session
        .wire
        .read_messages()
        .into_iter()
        .filter(|m| m.get("method").is_some() && m.get("id").is_some())
        .map(|m| json!({ "method": m["method"], "params": m["params"] }))
        .collect();
    server_requests.sort_by_key(Value::to_string);
    server_requests.dedup();
    transcript.push(("requests from the server".to_owned(), Value::Array(server_requests)));

    // The kinds of notification the server sent (list changes, log messages, progress). Only
    // their methods: the simulated-logging tool picks a random level and text for each message.
    let mut notifications: Vec<Value> = session
        .wire
        .read_messages()
        .into_iter()
        .filter(|m| m.get("method").is_some() && m.get("id").is_none())
        .map(|m| m["method"].clone())
        .collect();
    notifications.sort_by_key(Value::to_string);
    notifications.dedup();
    transcript
        .push(("notification methods from the server".to_owned(), Value::Array(notifications)));

    let run = session.finish().await;
    Run {
        label,
        transcript: transcript
            .into_iter()
            .map(|(what, mut value)| {
                normalise(&mut value);
                (what, value)
            })
            .collect(),
        calls,
        other_recorded,
        ..run
    }
}

/// `{"result": …}` or `{"error": …}` of a response message.
pub fn response_of(message: &Value) -> Value {
    match (message.get("result"), message.get("error")) {
        (Some(result), _) => json!({ "result": result }),
        (None, Some(error)) => json!({ "error": error }),
        (None, None) => panic!("not a response: {message}"),
    }
}

// ------------------------------------------------------------------------------------------
// Normalisation: only what the server makes differently on every run
// ------------------------------------------------------------------------------------------

/// The everything server's dynamic resources (`Resource N: This is a plaintext resource created
/// at 10:42:17 AM`, and the same sentence base64-encoded as a blob) end in the wall-clock time
/// of day they were made, which differs between two runs. The time is cut off; the rest stays.
///
/// The URL-elicitation error (-32042) names a prerequisite elicitation whose `elicitationId` the
/// server draws with `randomUUID()` on every call, whatever the arguments; that id is replaced.
///
/// Over Streamable HTTP, the toggle tools name the server's transport session (`… logging for
/// session 3f0c…`), whose id the server draws with `randomUUID()` for each session, so it differs
/// between any two sessions; it is replaced. (Over stdio there is no such id: `session
/// undefined`.)
///
/// Nothing else is normalised: the rest of what this server returns is a function of what it
/// was sent (random ids were avoided by passing explicit ones, and both children get the same
/// environment, so `get-env` is compared whole: see [`summarise_environment`]).
pub fn normalise(value: &mut Value) {
    match value {
        Value::String(text) => {
            if let Some(stable) = without_time_of_day(text) {
                *text = stable;
            }
            if let Some(stable) = without_session_id(text) {
                *text = stable;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise),
        Value::Object(fields) => {
            if let Some(Value::String(blob)) = fields.get_mut("blob")
                && let Some(stable) = base64_decode(blob)
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .and_then(|text| without_time_of_day(&text))
            {
                *blob = format!("<base64 of: {stable}>");
            }
            if let Some(Value::Array(elicitations)) = fields.get_mut("elicitations") {
                for id in elicitations.iter_mut().filter_map(|e| e.get_mut("elicitationId")) {
                    if id.as_str().is_some_and(is_uuid) {
                        *id = json!("<random uuid>");
                    }
                }
            }
            fields.values_mut().for_each(normalise);
        }
        _ => {}
    }
}

/// `get-env` returns the server's whole environment, which is the same both ways (the proxy's
/// child inherits what the test gave the proxy), so it is compared exactly, but through its
/// digest: a failure message must not print the machine's environment, which may hold secrets.
/// The marker variable's value is kept, to show the environment did reach the server.
fn summarise_environment(response: &mut Value) {
    let text = &mut response["result"]["content"][0]["text"];
    let environment: serde_json::Map<String, Value> =
        serde_json::from_str(text.as_str().expect("get-env returns its environment as text"))
            .expect("get-env's text is a JSON object");
    let digest = mcp_ledger::record::sha256_hex(text.as_str().unwrap_or_default().as_bytes());
    *text = json!({
        "variables": environment.len(),
        ENV_MARKER.0: environment.get(ENV_MARKER.0),
        "sha256": digest,
    });
}

fn is_uuid(text: &str) -> bool {
    text.len() == 36
        && text.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// `text` with every UUID that follows `session ` replaced, if it has any.
fn without_session_id(text: &str) -> Option<String> {
    const SESSION: &str = "session ";
    const UUID_LEN: usize = 36;
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut replaced = false;
    while let Some(at) = rest.find(SESSION) {
        let (before, after) = rest.split_at(at + SESSION.len());
        out.push_str(before);
        rest = after;
        if rest.get(..UUID_LEN).is_some_and(is_uuid) {
            out.push_str("<session id>");
            rest = &rest[UUID_LEN..];
            replaced = true;
        }
    }
    out.push_str(rest);
    replaced.then_some(out)
}

fn without_time_of_day(text: &str) -> Option<String> {
    const STAMP: &str = " created at ";
    let at = text.find(STAMP)?;
    text.starts_with("Resource ").then(|| format!("{}{STAMP}<time of day>", &text[..at]))
}

pub fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let sextet = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let digits = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut bits = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            bits |= sextet(c)? << (18 - 6 * i);
        }
        let bytes = bits.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    Some(out)
}

// ------------------------------------------------------------------------------------------
// Direct against proxied
// ------------------------------------------------------------------------------------------

pub fn compare_runs(direct: &Run, proxied: &Run, checks: &mut Checks) {
    let keys =
        |run: &Run| -> Vec<String> { run.transcript.iter().map(|(k, _)| k.clone()).collect() };
    checks.eq("what the script did", &keys(direct), &keys(proxied));
    // Every message compared below is the JSON text as it crossed the wire.
    for ((what, direct), (_, proxied)) in direct.transcript.iter().zip(&proxied.transcript) {
        checks.json_eq(what, direct, proxied);
    }

    // The long-running tool reported every step, and rmcp delivered each report to the client
    // handler, through the proxy as directly.
    for run in [direct, proxied] {
        let long = run.calls.iter().find(|c| c.tool() == "trigger-long-running-operation");
        let Some(long) = long else {
            checks.fail(format!("{}: no trigger-long-running-operation tool", run.label));
            continue;
        };
        let delivered: Vec<(f64, f64)> = run
            .delivered_progress
            .iter()
            .filter(|p| p["progressToken"] == long.progress_token)
            .map(|p| (p["progress"].as_f64().unwrap_or(-1.0), p["total"].as_f64().unwrap_or(-1.0)))
            .collect();
        let expected: Vec<(f64, f64)> =
            (1..=PROGRESS_STEPS).map(|i| (i as f64, PROGRESS_STEPS as f64)).collect();
        checks.eq(
            &format!("{}: progress delivered to the client handler", run.label),
            &expected,
            &delivered,
        );
    }
    checks.json_eq(
        "every progress notification as delivered to the client handler",
        &Value::Array(direct.delivered_progress.clone()),
        &Value::Array(proxied.delivered_progress.clone()),
    );

    // Through the proxy, the client handler answered the same requests with the same answers:
    // what the client wrote back to the server is the same too (ids aside, as above).
    let answers = |run: &Run| -> Value {
        let mut answers: Vec<Value> = run
            .to_server
            .iter()
            .filter(|m| m.get("method").is_none() && m.get("id").is_some())
            .map(response_of)
            .collect();
        answers.sort_by_key(Value::to_string);
        answers.dedup();
        Value::Array(answers)
    };
    checks.json_eq("the client's answers to the server", &answers(direct), &answers(proxied));
}

// ------------------------------------------------------------------------------------------
// The ledger
// ------------------------------------------------------------------------------------------

/// Who and what the proxy's session is recorded as.
pub struct Recorded<'a> {
    /// The agent every event of the session names.
    pub agent: &'a str,
    /// The upstream's name in the ledger (`--server`, or its `[[servers]]` name).
    pub server: &'a str,
    /// How the agent reached the proxy: `stdio` or `http`.
    pub transport: &'a str,
    /// How the proxy reached the server: `stdio` or `http` (the start of the recorded upstream).
    pub upstream: &'a str,
}

pub async fn check_ledger(
    path: &std::path::Path,
    run: &Run,
    recorded: &Recorded<'_>,
    checks: &mut Checks,
) {
    let store = SqliteStore::open(path, &StoreOptions::default())
        .await
        .expect("open the ledger the proxy wrote");
    let events: Vec<Event> = store.events().try_collect().await.expect("read events");
    let provenance = store.provenance(10_000).await.expect("read provenance");
    store.close().await;

    let report = verify_all(&events);
    checks.that(report.intact(), || format!("the chain does not verify: {report:?}"));

    let of_type = |t: &str| events.iter().filter(|e| e.event_type == t).collect::<Vec<_>>();
    let starts = of_type("session_start");
    let ends = of_type("session_end");
    checks.eq("session_start events", &1, &starts.len());
    checks.eq("session_end events", &1, &ends.len());
    if let Some(start) = starts.first() {
        checks.eq(
            "the recorded server",
            &json!("mcp-servers/everything"),
            &start.data["server_info"]["name"],
        );
        checks.eq(
            "the recorded client",
            &json!("mcp-ledger-e2e"),
            &start.data["client_info"]["name"],
        );
        let sessions: Vec<_> = events.iter().filter(|e| e.session_id != start.session_id).collect();
        checks.that(sessions.is_empty(), || format!("events outside the session: {sessions:#?}"));
        checks.eq("the recorded transport", &json!(recorded.transport), &start.data["transport"]);
        let upstream = start.data["upstream"].as_str().unwrap_or_default();
        checks.that(upstream.starts_with(&format!("{}:", recorded.upstream)), || {
            format!("the recorded upstream: expected {}:…, got {upstream:?}", recorded.upstream)
        });
    }
    let others: Vec<_> = events
        .iter()
        .filter(|e| {
            e.agent.as_deref() != Some(recorded.agent)
                || e.server.as_deref() != Some(recorded.server)
        })
        .map(|e| (e.seq, &e.event_type, &e.agent, &e.server))
        .collect();
    checks.that(others.is_empty(), || {
        format!(
            "events not recorded for agent {:?} on server {:?}: {others:?}",
            recorded.agent, recorded.server
        )
    });

    // Every tools/call: one tool_call and one tool_result, joined by call_id, referencing the
    // exact arguments sent and the exact response delivered.
    checks.eq("tool_call events", &run.calls.len(), &of_type("tool_call").len());
    checks.eq("tool_result events", &run.calls.len(), &of_type("tool_result").len());
    for call in &run.calls {
        let what = format!("tools/call {} (id {})", call.tool(), call.id);
        let Some((request, response)) = recorded_pair(
            &events,
            checks,
            &what,
            "tool_call",
            "tool_result",
            "agent_to_server",
            call,
        ) else {
            continue;
        };
        checks.eq(&format!("{what}: tool"), &json!(call.tool()), &request.data["tool"]);
        checks.eq(&format!("{what}: tool in result"), &json!(call.tool()), &response.data["tool"]);
        checks.eq(
            &format!("{what}: input_ref"),
            &json!(reference(&call.params["arguments"])),
            &request.data["input_ref"],
        );
        let outcome = expected_outcome(&call.response);
        checks.eq(&format!("{what}: outcome"), &json!(outcome), &response.data["outcome"]);
        checks.eq(
            &format!("{what}: output_ref"),
            &json!(reference(body_of(&call.response))),
            &response.data["output_ref"],
        );
        let call_id = request.data["call_id"].as_str().unwrap_or_default();
        match provenance.iter().find(|row| row.call_id == call_id) {
            Some(row) => {
                checks.eq(&format!("{what}: provenance outcome"), &outcome, &row.outcome.as_str());
                checks.eq(
                    &format!("{what}: provenance action"),
                    &Some(call.tool().to_owned()),
                    &row.action,
                );
                checks.eq(
                    &format!("{what}: provenance output_ref"),
                    &Some(reference(body_of(&call.response))),
                    &row.output_ref,
                );
            }
            None => checks.fail(format!("{what}: no provenance row for call {call_id}")),
        }
    }
    checks.eq("provenance rows", &run.calls.len(), &provenance.len());
    // The calls above end in every outcome, so none of the outcome checks is vacuous.
    let outcomes: std::collections::BTreeSet<&str> =
        run.calls.iter().map(|c| expected_outcome(&c.response)).collect();
    checks.eq("outcomes exercised", &["error", "ok", "tool_error"].into(), &outcomes);

    // The agent's resources/read and prompts/get.
    for exchange in &run.other_recorded {
        let what = format!("{} (id {})", exchange.method, exchange.id);
        if let Some((request, response)) = recorded_pair(
            &events,
            checks,
            &what,
            "request",
            "response",
            "agent_to_server",
            exchange,
        ) {
            checks.eq(
                &format!("{what}: input_ref"),
                &json!(reference(&exchange.params)),
                &request.data["input_ref"],
            );
            checks.eq(&format!("{what}: outcome"), &json!("ok"), &response.data["outcome"]);
            checks.eq(
                &format!("{what}: output_ref"),
                &json!(reference(body_of(&exchange.response))),
                &response.data["output_ref"],
            );
        }
    }

    // The server's sampling and elicitation requests, with the client's answers.
    for message in &run.from_server {
        let method = message["method"].as_str().unwrap_or_default();
        if !matches!(method, "sampling/createMessage" | "elicitation/create")
            || message.get("id").is_none()
        {
            continue;
        }
        let Some(answer) =
            run.to_server.iter().find(|m| m.get("method").is_none() && m["id"] == message["id"])
        else {
            checks.fail(format!("the client never answered {message}"));
            continue;
        };
        let exchange = Exchange {
            method: method.to_owned(),
            params: message["params"].clone(),
            id: message["id"].clone(),
            progress_token: Value::Null,
            response: response_of(answer),
        };
        let what = format!("{method} from the server (id {})", exchange.id);
        if let Some((request, response)) = recorded_pair(
            &events,
            checks,
            &what,
            "request",
            "response",
            "server_to_agent",
            &exchange,
        ) {
            checks.eq(
                &format!("{what}: input_ref"),
                &json!(reference(&exchange.params)),
                &request.data["input_ref"],
            );
            checks.eq(&format!("{what}: outcome"), &json!("ok"), &response.data["outcome"]);
            checks.eq(
                &format!("{what}: output_ref"),
                &json!(reference(body_of(&exchange.response))),
                &response.data["output_ref"],
            );
        }
    }
    for method in ["sampling/createMessage", "elicitation/create"] {
        let requested = run
            .from_server
            .iter()
            .filter(|m| m["method"] == method && m.get("id").is_some())
            .count();
        checks.that(requested > 0, || {
            format!("the server never sent {method}; the test covers nothing")
        });
    }
    // Nothing recorded twice: as many request and response events per method as there were
    // such requests (per method, so that recording more methods later does not break this).
    let sent_by_server = |method: &str| {
        run.from_server.iter().filter(|m| m["method"] == method && m.get("id").is_some()).count()
    };
    let sent_by_agent =
        |method: &str| run.other_recorded.iter().filter(|e| e.method == method).count();
    for (method, sent) in [
        ("sampling/createMessage", sent_by_server("sampling/createMessage")),
        ("elicitation/create", sent_by_server("elicitation/create")),
        ("resources/read", sent_by_agent("resources/read")),
        ("prompts/get", sent_by_agent("prompts/get")),
    ] {
        for event_type in ["request", "response"] {
            let recorded =
                events.iter().filter(|e| e.event_type == event_type && e.data["method"] == method);
            checks.eq(&format!("{event_type} events for {method}"), &sent, &recorded.count());
        }
    }
}

/// The one request event and the one response event recorded for `exchange`.
fn recorded_pair<'e>(
    events: &'e [Event],
    checks: &mut Checks,
    what: &str,
    request_type: &str,
    response_type: &str,
    direction: &str,
    exchange: &Exchange,
) -> Option<(&'e Event, &'e Event)> {
    // The ledger keeps the JSON-RPC id as its sender wrote it: the id's JSON text.
    let request_id = json!(exchange.id.to_string());
    let requests: Vec<&Event> = events
        .iter()
        .filter(|e| {
            e.event_type == request_type
                && e.data["request_id"] == request_id
                && e.data["direction"] == direction
        })
        .collect();
    let [request] = requests.as_slice() else {
        checks.fail(format!("{what}: expected one {request_type} event, found {requests:#?}"));
        return None;
    };
    checks.eq(&format!("{what}: method"), &json!(exchange.method), &request.data["method"]);
    let call_id = &request.data["call_id"];
    let responses: Vec<&Event> = events
        .iter()
        .filter(|e| e.event_type == response_type && &e.data["call_id"] == call_id)
        .collect();
    let [response] = responses.as_slice() else {
        checks.fail(format!(
            "{what}: expected one {response_type} event with call_id {call_id}, found {responses:#?}"
        ));
        return None;
    };
    checks.that(response.seq > request.seq, || {
        format!(
            "{what}: the response (seq {}) precedes its request (seq {})",
            response.seq, request.seq
        )
    });
    Some((request, response))
}

fn expected_outcome(response: &Value) -> &'static str {
    if response.get("error").is_some() {
        "error"
    } else if response["result"]["isError"] == true {
        "tool_error"
    } else {
        "ok"
    }
}

fn body_of(response: &Value) -> &Value {
    response.get("result").or_else(|| response.get("error")).expect("a response")
}

fn reference(value: &Value) -> String {
    Payload::of(value).reference
}

// ------------------------------------------------------------------------------------------
// Checks that report every failure at once
// ------------------------------------------------------------------------------------------

/// Collects failed expectations so that one run reports every difference, not just the first.
#[derive(Default)]
pub struct Checks {
    failures: Vec<String>,
}

impl Checks {
    pub fn fail(&mut self, message: String) {
        self.failures.push(message);
    }

    pub fn that(&mut self, ok: bool, message: impl FnOnce() -> String) {
        if !ok {
            self.fail(message());
        }
    }

    pub fn eq<T: PartialEq + std::fmt::Debug + ?Sized>(
        &mut self,
        what: &str,
        expected: &T,
        actual: &T,
    ) {
        self.that(expected == actual, || format!("{what}: expected {expected:?}, got {actual:?}"));
    }

    /// Direct against proxied, showing both as JSON.
    pub fn json_eq(&mut self, what: &str, direct: &Value, proxied: &Value) {
        self.that(direct == proxied, || {
            format!("{what} differs through the proxy:\n  direct:  {direct}\n  proxied: {proxied}")
        });
    }

    pub fn finish(self, runs: &[&Run]) {
        if self.failures.is_empty() {
            return;
        }
        for run in runs {
            eprintln!("---- {} stderr ----\n{}", run.label, run.stderr);
        }
        panic!("{} check(s) failed:\n\n{}", self.failures.len(), self.failures.join("\n\n"));
    }
}

// ------------------------------------------------------------------------------------------
// The client: an rmcp client over a child's stdio or over HTTP, with every message each way kept
// ------------------------------------------------------------------------------------------

/// The client's side of the server-to-client features, answered identically in both runs.
#[derive(Clone, Default)]
struct CannedClient {
    progress: Arc<Mutex<Vec<Value>>>,
}

fn client_config() -> ClientConfig {
    // Roots, sampling and both elicitation modes, so the server registers the tools that need
    // them. (rmcp has no field for the client `tasks` capability, so the `*-async` tools that
    // need it are not listed, and so not called.)
    let capabilities: ClientCapabilities = serde_json::from_value(json!({
        "roots": { "listChanged": true },
        "sampling": {},
        "elicitation": { "form": {}, "url": {} },
    }))
    .expect("client capabilities");
    // Pinned to the newest revision that still has an `initialize` handshake, which is what the
    // proxy records a session from.
    ClientConfig::new(capabilities, Implementation::new("mcp-ledger-e2e", "1.0.0"))
        .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
}

impl ClientHandler for CannedClient {
    fn get_info(&self) -> ClientConfig {
        client_config()
    }

    async fn create_message(
        &self,
        _params: CreateMessageRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        Ok(serde_json::from_value(json!({
            "model": "mcp-ledger-e2e-canned-model",
            "stopReason": "endTurn",
            "role": "assistant",
            "content": { "type": "text", "text": "A hash chain proves order and integrity." },
        }))
        .expect("a sampling result"))
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        Ok(match request {
            ElicitRequestParams::FormElicitationParams { .. } => {
                ElicitResult::new(ElicitationAction::Accept).with_content(json!({
                    "name": "Ada Lovelace",
                    "check": true,
                    "email": "ada@example.com",
                    "integer": 7,
                }))
            }
            _ => ElicitResult::new(ElicitationAction::Accept),
        })
    }

    async fn list_roots(
        &self,
        _context: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, ErrorData> {
        Ok(ListRootsResult::new(vec![
            Root::new("file:///tmp/mcp-ledger-e2e").with_name("e2e workspace"),
        ]))
    }

    async fn on_custom_request(
        &self,
        request: CustomRequest,
        _context: RequestContext<RoleClient>,
    ) -> Result<CustomResult, ErrorData> {
        Err(ErrorData::new(
            rmcp::model::ErrorCode::METHOD_NOT_FOUND,
            format!("the e2e client does not serve {}", request.method),
            None,
        ))
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        let value = serde_json::to_value(params).expect("progress serialises");
        locked(&self.progress).push(value);
    }
}

/// A running client, its child process if it has one, and what crossed the wire.
struct Session {
    label: &'static str,
    client: RunningService<RoleClient, CannedClient>,
    handler: CannedClient,
    wire: Wire,
    /// Over stdio: the child and (the task reading) its stderr.
    child: Option<(Child, JoinHandle<String>)>,
}

impl Session {
    async fn start(label: &'static str, connect: Connect) -> Session {
        let handler = CannedClient::default();
        let wire = Wire::default();
        let (client, child) = match connect {
            Connect::Stdio(mut command) => {
                command
                    .env(ENV_MARKER.0, ENV_MARKER.1)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true);
                let mut child = command
                    .spawn()
                    .unwrap_or_else(|e| panic!("{label}: cannot start {command:?}: {e}"));
                let mut stderr = child.stderr.take().expect("piped stderr");
                let stderr = tokio::spawn(async move {
                    let mut text = String::new();
                    let _ = stderr.read_to_string(&mut text).await;
                    text
                });
                let transport = (
                    Tee {
                        inner: child.stdout.take().expect("piped stdout"),
                        seen: wire.read.clone(),
                    },
                    Tee {
                        inner: child.stdin.take().expect("piped stdin"),
                        seen: wire.written.clone(),
                    },
                );
                (handshake(label, handler.clone().serve(transport)).await, Some((child, stderr)))
            }
            Connect::Http(url) => {
                let http = reqwest::Client::builder()
                    // Loopback only: a proxy from the environment must not get in between.
                    .no_proxy()
                    .build()
                    .expect("an HTTP client");
                let tap = HttpTap { inner: http, wire: wire.clone() };
                // One session, and a failure if it is lost: no silent re-initialisation, which
                // would start a second session (and a second one in the ledger).
                let mut config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
                    .reinit_on_expired_session(false);
                config.allow_stateless = false;
                let transport = StreamableHttpClientTransport::with_client(tap, config);
                (handshake(label, handler.clone().serve(transport)).await, None)
            }
        };
        Session { label, client, handler, wire, child }
    }

    /// Sends `request` and returns it and its response as they crossed the wire.
    async fn request(&mut self, method: &str, request: ClientRequest) -> Exchange {
        let label = self.label;
        let handle = self
            .client
            .peer()
            .send_request_with_option(request, PeerRequestOptions::no_options())
            .await
            .unwrap_or_else(|e| panic!("{label}: cannot send {method}: {e}"));
        let id = serde_json::to_value(&handle.id).expect("id");
        let progress_token = serde_json::to_value(&handle.progress_token).expect("token");
        // A JSON-RPC error is a legitimate outcome here; it is compared like a result.
        let _typed = tokio::time::timeout(REQUEST_TIMEOUT, handle.await_response())
            .await
            .unwrap_or_else(|_| panic!("{label}: {method} (id {id}) got no response"));
        let message = self
            .wire
            .read_messages()
            .into_iter()
            .find(|m| m.get("method").is_none() && m["id"] == id)
            .unwrap_or_else(|| panic!("{label}: no response with id {id} on the wire"));
        // The params as sent, with the `_meta` rmcp added (the ledger records them whole).
        let sent = self
            .wire
            .written_messages()
            .into_iter()
            .find(|m| m["method"] == method && m["id"] == id)
            .unwrap_or_else(|| panic!("{label}: {method} with id {id} is not on the wire"));
        let params = sent.get("params").cloned().unwrap_or(Value::Null);
        Exchange {
            method: method.to_owned(),
            params,
            id,
            progress_token,
            response: response_of(&message),
        }
    }

    /// Closes the client (the child's stdin, or over HTTP the session, with a DELETE), waits for
    /// the child to exit, and returns what the session saw.
    async fn finish(mut self) -> Run {
        let label = self.label;
        let quit = self.client.cancel().await;
        assert!(quit.is_ok(), "{label}: the client task failed: {quit:?}");
        let mut stderr = String::new();
        if let Some((mut child, stderr_task)) = self.child.take() {
            let status = tokio::time::timeout(EXIT_TIMEOUT, child.wait())
                .await
                .unwrap_or_else(|_| {
                    panic!("{label}: the child did not exit after its input closed")
                })
                .expect("wait for the child");
            stderr = stderr_task.await.unwrap_or_default();
            // `mcp-ledger stdio` exits 0 when the agent ends the session; node too, on stdin EOF.
            assert!(status.success(), "{label}: the child exited with {status}; stderr:\n{stderr}");
        }
        let delivered_progress = locked(&self.handler.progress).clone();
        Run {
            label,
            transcript: Vec::new(),
            calls: Vec::new(),
            other_recorded: Vec::new(),
            from_server: self.wire.read_messages(),
            to_server: self.wire.written_messages(),
            delivered_progress,
            stderr,
        }
    }
}

/// The client after its `initialize` handshake, or a failure naming the run.
async fn handshake<E: std::fmt::Display>(
    label: &str,
    serving: impl Future<Output = Result<RunningService<RoleClient, CannedClient>, E>>,
) -> RunningService<RoleClient, CannedClient> {
    match tokio::time::timeout(REQUEST_TIMEOUT, serving).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => panic!("{label}: MCP handshake failed: {e}"),
        Err(_) => panic!("{label}: no initialize response"),
    }
}

/// Every byte the client read and wrote: over stdio, the lines of the pipes; over HTTP, one line
/// per message, holding the body of a POST or the `data` of a server-sent event.
#[derive(Clone, Default)]
struct Wire {
    read: Arc<Mutex<Vec<u8>>>,
    written: Arc<Mutex<Vec<u8>>>,
}

impl Wire {
    fn read_messages(&self) -> Vec<Value> {
        let bytes = locked(&self.read).clone();
        messages(&bytes)
    }

    fn written_messages(&self) -> Vec<Value> {
        let bytes = locked(&self.written).clone();
        messages(&bytes)
    }
}

/// The data behind `mutex`, also after a panic elsewhere (which fails the test anyway).
fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The complete newline-delimited JSON messages in `bytes`.
fn messages(bytes: &[u8]) -> Vec<Value> {
    let complete = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(end) => &bytes[..end],
        None => &[][..],
    };
    complete
        .split(|&b| b == b'\n')
        .filter(|line| !line.trim_ascii().is_empty())
        .map(|line| {
            serde_json::from_slice(line).unwrap_or_else(|e| {
                panic!("not a JSON line ({e}): {}", String::from_utf8_lossy(line))
            })
        })
        .collect()
}

/// Passes reads or writes through to `inner`, keeping a copy of the bytes.
struct Tee<T> {
    inner: T,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Tee<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = poll {
            locked(&self.seen).extend_from_slice(&buf.filled()[before..]);
        }
        poll
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for Tee<W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // The copy is taken under the lock held across the write: whoever reads the copy after
        // the peer has answered these bytes finds them in it.
        let seen = self.seen.clone();
        let mut seen = locked(&seen);
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(written)) = poll {
            seen.extend_from_slice(&buf[..written]);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A Streamable HTTP client for rmcp that keeps a copy of every message: what it POSTs (the JSON
/// it serialises the message to, as rmcp's reqwest client does), and, as the server wrote them
/// before anything parses them, every plain JSON answer and the `data` of every event of every
/// stream it reads, POST responses and the standalone GET stream alike.
#[derive(Clone)]
struct HttpTap {
    inner: reqwest::Client,
    wire: Wire,
}

impl HttpTap {
    /// Keeps a message before it is sent: whoever reads the copy after the server has answered
    /// finds the message in it.
    fn sending(&self, message: &ClientJsonRpcMessage) {
        let mut line = serde_json::to_vec(message).expect("a client message serialises");
        line.push(b'\n');
        locked(&self.wire.written).extend_from_slice(&line);
    }

    fn tap_stream(
        &self,
        stream: BoxStream<'static, Result<Sse, SseError>>,
    ) -> BoxStream<'static, Result<Sse, SseError>> {
        let read = self.wire.read.clone();
        stream
            .inspect(move |event| {
                // Events without data (the SDK's resumption priming events) carry no message.
                if let Ok(Sse { data: Some(data), .. }) = event {
                    keep_read(&read, data);
                }
            })
            .boxed()
    }
}

/// Adds one message to the copy of what the client read, as one line. A multi-line SSE `data`
/// field arrives joined with newlines, and a JSON body may span lines; in JSON text a newline
/// can only be whitespace between tokens, so it becomes a space, as on stdio.
fn keep_read(read: &Mutex<Vec<u8>>, text: &str) {
    if text.trim().is_empty() {
        return;
    }
    let mut seen = locked(read);
    seen.extend_from_slice(text.replace(['\r', '\n'], " ").as_bytes());
    seen.push(b'\n');
}

impl StreamableHttpClient for HttpTap {
    type Error = reqwest::Error;

    /// POSTs `message` as rmcp's reqwest client does, but reads a plain JSON answer itself so
    /// the copy is the body's text as the server wrote it (rmcp's client would hand it over
    /// already parsed). SSE answers go through [`Self::tap_stream`]. The error cases are the
    /// ones these tests can meet; rmcp's finer ones (auth challenges, retry-after, body size
    /// bounds) are left out.
    async fn post_message(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        self.sending(&message);
        let mut request = self
            .inner
            .post(uri.as_ref())
            .header(http::header::ACCEPT, "text/event-stream, application/json")
            .json(&message);
        if let Some(token) = auth_header {
            request = request.bearer_auth(token);
        }
        for (name, value) in custom_headers {
            request = request.header(name, value);
        }
        if let Some(session) = &session_id {
            request = request.header("Mcp-Session-Id", session.as_ref());
        }
        let response = request.send().await?;
        let status = response.status();
        if matches!(status, reqwest::StatusCode::ACCEPTED | reqwest::StatusCode::NO_CONTENT) {
            return Ok(StreamableHttpPostResponse::Accepted);
        }
        if status == reqwest::StatusCode::NOT_FOUND && session_id.is_some() {
            return Err(StreamableHttpError::SessionExpired);
        }
        let header = |name: &str| {
            response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
        };
        let session = header("mcp-session-id");
        let content_type = header("content-type").unwrap_or_default();
        if status.is_success() && content_type.starts_with("text/event-stream") {
            let events = sse_stream::SseStream::from_byte_stream(response.bytes_stream()).boxed();
            return Ok(StreamableHttpPostResponse::Sse(self.tap_stream(events), session));
        }
        let body = response.text().await?;
        if content_type.starts_with("application/json")
            && let Ok(parsed) = serde_json::from_str::<ServerJsonRpcMessage>(&body)
            && (status.is_success() || matches!(parsed, ServerJsonRpcMessage::Error(_)))
        {
            keep_read(&self.wire.read, &body);
            return Ok(StreamableHttpPostResponse::Json(parsed, session));
        }
        Err(StreamableHttpError::UnexpectedServerResponse(
            format!("HTTP {status} ({content_type}): {body}").into(),
        ))
    }

    async fn post_message_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        message: ClientJsonRpcMessage,
        session_id: Option<Arc<str>>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<StreamableHttpPostResponse, StreamableHttpError<Self::Error>> {
        // The tests' events are small; the size bound is rmcp's guard, not under test here.
        let _ = max_sse_event_size;
        self.post_message(uri, message, session_id, auth_header, custom_headers).await
    }

    async fn delete_session(
        &self,
        uri: Arc<str>,
        session_id: Arc<str>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<(), StreamableHttpError<Self::Error>> {
        self.inner.delete_session(uri, session_id, auth_header, custom_headers).await
    }

    async fn get_stream(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<Self::Error>> {
        let stream = self
            .inner
            .get_stream(uri, session_id, last_event_id, auth_header, custom_headers)
            .await?;
        Ok(self.tap_stream(stream))
    }

    async fn get_stream_with_max_sse_event_size(
        &self,
        uri: Arc<str>,
        session_id: Option<Arc<str>>,
        last_event_id: Option<String>,
        auth_header: Option<String>,
        custom_headers: HashMap<HeaderName, HeaderValue>,
        max_sse_event_size: usize,
    ) -> Result<BoxStream<'static, Result<Sse, SseError>>, StreamableHttpError<Self::Error>> {
        let stream = self
            .inner
            .get_stream_with_max_sse_event_size(
                uri,
                session_id,
                last_event_id,
                auth_header,
                custom_headers,
                max_sse_event_size,
            )
            .await?;
        Ok(self.tap_stream(stream))
    }
}
