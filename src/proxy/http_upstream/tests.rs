//! The pipe against an in-process rmcp Streamable HTTP server, against small axum mocks for the
//! paths rmcp does not take (errors, expiry, resumption), and under the relay end to end.

#![allow(deprecated)] // rmcp marks sampling deprecated; the revisions served still have it

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures::TryStreamExt;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CreateMessageRequestParams, ProgressNotificationParam, RequestMetaObject, SamplingMessage,
};
use rmcp::transport::streamable_http_server::{
    StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
};
use rmcp::{ErrorData, Peer, RoleServer, tool, tool_router};
use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::*;
use crate::intercept::{RecordedMethods, SessionIdentity, SessionRecorder};
use crate::proxy::lines::{LineQueue, LineSink};
use crate::proxy::relay::{RelayEnd, relay};
use crate::store::writer::Ledger;
use crate::store::{DEFAULT_CHAIN, SqliteStore, Store, StoreOptions};

const WAIT: Duration = Duration::from_secs(20);

fn initialize(id: u32, version: &str) -> String {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "initialize",
        "params": {
            "protocolVersion": version,
            "capabilities": {"sampling": {}},
            "clientInfo": {"name": "pipe-test", "version": "1.0"}
        }
    })
    .to_string()
}

const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

// ---- an rmcp server with a plain tool, a progress tool, a sampling tool and a slow tool ----

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct EchoArgs {
    text: String,
}

#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
struct SlowArgs {
    millis: u64,
}

struct TestServer;

#[tool_router(server_handler)]
impl TestServer {
    #[tool(description = "Returns its text")]
    async fn echo(&self, Parameters(args): Parameters<EchoArgs>) -> String {
        args.text
    }

    #[tool(description = "Sleeps, then answers")]
    async fn slow(&self, Parameters(args): Parameters<SlowArgs>) -> String {
        tokio::time::sleep(Duration::from_millis(args.millis)).await;
        "slept".to_owned()
    }

    #[tool(description = "Reports progress three times")]
    async fn count(
        &self,
        meta: RequestMetaObject,
        client: Peer<RoleServer>,
    ) -> Result<String, ErrorData> {
        let token = meta
            .get_progress_token()
            .ok_or_else(|| ErrorData::invalid_params("no progress token", None))?;
        for step in 1..=3 {
            client
                .notify_progress(
                    ProgressNotificationParam::new(token.clone(), f64::from(step)).with_total(3.0),
                )
                .await
                .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        }
        Ok("counted".to_owned())
    }

    #[tool(description = "Announces a tool list change shortly after answering")]
    async fn announce(&self, client: Peer<RoleServer>) -> String {
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let _ = client.notify_tool_list_changed().await;
        });
        "announcing".to_owned()
    }

    #[tool(description = "Asks the client's model")]
    async fn ask(&self, client: Peer<RoleServer>) -> Result<String, ErrorData> {
        let params = CreateMessageRequestParams::new(vec![SamplingMessage::user_text("2+2?")], 10);
        let result = client
            .create_message(params)
            .await
            .map_err(|e| ErrorData::internal_error(e.to_string(), None))?;
        Ok(format!("the model {} answered", result.model))
    }
}

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

async fn rmcp_server(config: StreamableHttpServerConfig) -> String {
    let service = StreamableHttpService::new(
        || Ok(TestServer),
        Arc::new(LocalSessionManager::default()),
        config.with_sse_keep_alive(None),
    );
    serve(axum::Router::new().nest_service("/mcp", service)).await
}

// ---- driving the pipe with raw lines ----

struct Pipe {
    reader: Pin<Box<dyn AsyncBufRead + Send>>,
    writer: Option<Writer>,
}

/// How a test's lines reach the pipe: the queue the relay would fill, or the agent's end of a
/// byte stream.
enum Writer {
    Queue(LineQueue),
    Stream(Pin<Box<dyn AsyncWrite + Send>>),
}

impl Pipe {
    fn open(config: HttpUpstreamConfig) -> Pipe {
        let (reader, queue) = http_upstream(config);
        Pipe { reader: Box::pin(reader), writer: Some(Writer::Queue(queue)) }
    }

    fn to(url: &str) -> Pipe {
        Pipe::open(HttpUpstreamConfig::new(url).unwrap())
    }

    async fn send(&mut self, line: &str) {
        match self.writer.as_mut().expect("open") {
            Writer::Queue(queue) => queue.lines.send(line.as_bytes().to_vec()).await.unwrap(),
            Writer::Stream(writer) => {
                writer.write_all(format!("{line}\n").as_bytes()).await.unwrap();
                writer.flush().await.unwrap();
            }
        }
    }

    /// The next line, without its `\n`; `None` at the end of the pipe.
    async fn line(&mut self) -> Option<String> {
        let mut line = String::new();
        let read = tokio::time::timeout(WAIT, self.reader.read_line(&mut line))
            .await
            .expect("a line or the end in time")
            .unwrap();
        (read > 0).then(|| {
            assert!(line.ends_with('\n'), "lines end with a newline: {line:?}");
            line.pop();
            assert!(!line.contains('\n'), "one message per line");
            line
        })
    }

    async fn json(&mut self) -> Value {
        let line = self.line().await.expect("a line");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }

    async fn close(&mut self) {
        match self.writer.take().expect("open") {
            Writer::Queue(queue) => queue.close(),
            Writer::Stream(mut writer) => writer.shutdown().await.unwrap(),
        }
    }

    async fn assert_ended(&mut self) {
        assert_eq!(self.line().await, None, "the pipe should have ended");
    }
}

fn assert_upstream_error(line: &Value, id: Value, reason: &str) {
    assert_eq!(line["id"], id, "{line}");
    assert_eq!(line["error"]["code"], -32001, "{line}");
    assert_eq!(line["error"]["data"]["mcp_ledger"], reason, "{line}");
}

// ---- against rmcp ----

#[tokio::test]
async fn an_rmcp_session_flows_through_the_pipe() {
    let url = rmcp_server(StreamableHttpServerConfig::default()).await;
    let mut pipe = Pipe::to(&url);

    pipe.send(&initialize(1, "2025-11-25")).await;
    let init = pipe.json().await;
    assert_eq!(init["id"], 1);
    assert_eq!(init["result"]["protocolVersion"], "2025-11-25");
    pipe.send(INITIALIZED).await;

    pipe.send(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#).await;
    let list = pipe.json().await;
    assert_eq!(list["id"], 2);
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    for tool in ["echo", "count", "ask", "slow"] {
        assert!(names.contains(&tool), "{names:?}");
    }

    let echo = json!({"jsonrpc":"2.0","id":"three","method":"tools/call",
        "params":{"name":"echo","arguments":{"text":"h\u{e9}llo \"w\"\n"}}});
    pipe.send(&echo.to_string()).await;
    let answer = pipe.json().await;
    assert_eq!(answer["id"], "three");
    assert_eq!(answer["result"]["content"][0]["text"], "h\u{e9}llo \"w\"\n");

    pipe.send(r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"count","arguments":{},"_meta":{"progressToken":"tok"}}}"#).await;
    let mut progress = Vec::new();
    let answer = loop {
        let message = pipe.json().await;
        if message["method"] == "notifications/progress" {
            assert_eq!(message["params"]["progressToken"], "tok");
            progress.push(message["params"]["progress"].as_f64().unwrap());
        } else {
            break message;
        }
    };
    assert_eq!(progress, [1.0, 2.0, 3.0]);
    assert_eq!(answer["id"], 4);
    assert_eq!(answer["result"]["content"][0]["text"], "counted");

    // A server-to-client request comes out as a line; the line answering it completes the call.
    pipe.send(
        r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"ask","arguments":{}}}"#,
    )
    .await;
    let sampling = pipe.json().await;
    assert_eq!(sampling["method"], "sampling/createMessage", "{sampling}");
    let reply = json!({"jsonrpc":"2.0","id":sampling["id"],"result":{
        "role":"assistant","content":{"type":"text","text":"4"},"model":"test-model","stopReason":"endTurn"}});
    pipe.send(&reply.to_string()).await;
    let answer = pipe.json().await;
    assert_eq!(answer["id"], 5, "{answer}");
    assert_eq!(answer["result"]["content"][0]["text"], "the model test-model answered");

    // Unknown methods reach the server, and its own error comes back.
    pipe.send(r#"{"jsonrpc":"2.0","id":6,"method":"x/unknown","params":{"y":1}}"#).await;
    let answer = pipe.json().await;
    assert_eq!(answer["id"], 6, "{answer}");
    assert_eq!(answer["error"]["code"], -32601, "{answer}");

    // A message the server sends on its own arrives over the standalone GET stream.
    pipe.send(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"announce","arguments":{}}}"#).await;
    assert_eq!(pipe.json().await["id"], 7);
    let announced = pipe.json().await;
    assert_eq!(announced["method"], "notifications/tools/list_changed", "{announced}");

    pipe.close().await;
    pipe.assert_ended().await;
}

#[tokio::test]
async fn a_slow_request_does_not_hold_up_the_next() {
    // Stateless JSON-response mode: the server answers each POST only when its tool is done.
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(false)
        .with_json_response(true);
    let url = rmcp_server(config).await;
    let mut pipe = Pipe::to(&url);
    pipe.send(&initialize(1, "2025-06-18")).await;
    assert_eq!(pipe.json().await["result"]["protocolVersion"], "2025-06-18");
    pipe.send(INITIALIZED).await;
    pipe.send(r#"{"jsonrpc":"2.0","id":10,"method":"tools/call","params":{"name":"slow","arguments":{"millis":1500}}}"#).await;
    pipe.send(r#"{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{"name":"echo","arguments":{"text":"fast"}}}"#).await;
    let first = pipe.json().await;
    assert_eq!(first["id"], 11, "{first}");
    let second = pipe.json().await;
    assert_eq!(second["id"], 10, "{second}");
    assert_eq!(second["result"]["content"][0]["text"], "slept");
    pipe.close().await;
    pipe.assert_ended().await;
}

#[tokio::test]
async fn calls_to_a_server_on_this_machine_reuse_one_connection() {
    // rmcp behind axum's defaults leaves Nagle's algorithm on: the case where a reused connection
    // used to stall ~40 ms per SSE answer, and why loopback connections were not reused before
    // `loopback::QuickAck`.
    use axum::serve::ListenerExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let service = StreamableHttpService::new(
        || Ok(TestServer),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default().with_sse_keep_alive(None),
    );
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    let listener = listener.tap_io(move |_| {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    let router = axum::Router::new().nest_service("/mcp", service);
    tokio::spawn(async move { axum::serve(listener, router).await });

    let mut pipe = Pipe::to(&url);
    pipe.send(&initialize(1, "2025-11-25")).await;
    assert_eq!(pipe.json().await["id"], 1);
    pipe.send(INITIALIZED).await;
    let calls = 30;
    let started = std::time::Instant::now();
    for id in 2..2 + calls {
        let call = json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
            "params":{"name":"echo","arguments":{"text":"again"}}});
        pipe.send(&call.to_string()).await;
        let answer = pipe.json().await;
        assert_eq!(answer["id"], id, "{answer}");
    }
    // Printed, not asserted (timings are the benchmark's job): ~40 ms a call means the stall.
    eprintln!("{calls} calls in {:?}", started.elapsed());
    // The POSTs share a connection; the standalone GET stream holds one of its own.
    let connections = accepted.load(Ordering::Relaxed);
    assert!(connections <= 3, "{connections} connections for {calls} calls");
    pipe.close().await;
    pipe.assert_ended().await;
}

// ---- against mocks ----

#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    headers: HeaderMap,
    body: Bytes,
}

impl Seen {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    fn rpc_method(&self) -> String {
        self.json()["method"].as_str().unwrap_or_default().to_owned()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

type Requests = Arc<Mutex<Vec<Seen>>>;

/// An MCP endpoint at `/mcp` answering with `handler`; returns its URL and what it received.
async fn mock(handler: impl Fn(&Seen) -> Response + Send + Sync + 'static) -> (String, Requests) {
    let seen: Requests = Arc::default();
    let handler = Arc::new(handler);
    let log = seen.clone();
    let route = axum::routing::any(move |method: Method, headers: HeaderMap, body: Bytes| {
        let (log, handler) = (log.clone(), handler.clone());
        async move {
            let request = Seen { method, headers, body };
            let response = handler(&request);
            log.lock().unwrap().push(request);
            response
        }
    });
    let url = serve(axum::Router::new().route("/mcp", route)).await;
    (url, seen)
}

fn respond(status: StatusCode, content_type: &str, body: impl Into<Body>) -> Response {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(body.into())
        .unwrap()
}

fn json_body(body: &str) -> Response {
    respond(StatusCode::OK, "application/json", body.to_owned())
}

fn status(status: StatusCode) -> Response {
    Response::builder().status(status).body(Body::empty()).unwrap()
}

/// An SSE response: `events` at once, then (unless `hang`) the end of the stream.
fn sse(events: &str, hang: bool) -> Response {
    let first = futures::stream::once({
        let events = Bytes::from(events.to_owned());
        async move { Ok::<_, std::io::Error>(events) }
    });
    let body = if hang {
        Body::from_stream(futures::StreamExt::chain(first, futures::stream::pending()))
    } else {
        Body::from_stream(first)
    };
    respond(StatusCode::OK, "text/event-stream", body)
}

const INIT_RESULT: &str = "{\r\n  \"jsonrpc\": \"2.0\",\n  \"id\": 1,\n  \"result\": {\"protocolVersion\": \"2025-06-18\", \"capabilities\": {}, \"serverInfo\": {\"name\": \"mock\", \"version\": \"1\"}}\n}\n";

/// Answers `initialize` with a session, notifications with 202, and GET with 405; everything
/// else goes to `rest`.
fn session_mock(
    rest: impl Fn(&Seen) -> Response + Send + Sync + 'static,
) -> impl Fn(&Seen) -> Response + Send + Sync + 'static {
    move |seen: &Seen| match (&seen.method, seen.rpc_method().as_str()) {
        (&Method::POST, "initialize") => {
            let mut response = json_body(INIT_RESULT);
            response.headers_mut().insert("mcp-session-id", "sess-1".parse().unwrap());
            response
        }
        (&Method::POST, "notifications/initialized") => status(StatusCode::ACCEPTED),
        (&Method::GET, _) if seen.header("last-event-id").is_none() => {
            status(StatusCode::METHOD_NOT_ALLOWED)
        }
        _ => rest(seen),
    }
}

async fn start_session(pipe: &mut Pipe) {
    pipe.send(&initialize(1, "2025-06-18")).await;
    let line = pipe.line().await.unwrap();
    // Pretty-printed JSON loses its line breaks and nothing else.
    assert_eq!(line, INIT_RESULT.replace(['\r', '\n'], ""));
    pipe.send(INITIALIZED).await;
}

#[tokio::test]
async fn headers_session_and_shutdown_follow_the_spec() {
    let (url, seen) = mock(session_mock(|seen| match seen.method {
        Method::DELETE => status(StatusCode::OK),
        _ => json_body(r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[]}}"#),
    }))
    .await;
    let config = HttpUpstreamConfig::new(&url).unwrap().header("x-api-key", "k-123").unwrap();
    let mut pipe = Pipe::open(config);
    start_session(&mut pipe).await;
    let odd = r#"{"id":2 ,  "jsonrpc":"2.0","method":"tools/list","params":{"x-unknown":[1.50]}}"#;
    pipe.send(odd).await;
    assert_eq!(pipe.line().await.unwrap(), r#"{"jsonrpc":"2.0","id":2,"result":{"tools":[]}}"#);
    // The standalone stream is asked for once the session is established.
    tokio::time::timeout(WAIT, async {
        while !seen.lock().unwrap().iter().any(|s| s.method == Method::GET) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a GET for the standalone stream");
    pipe.close().await;
    pipe.assert_ended().await;

    let seen = seen.lock().unwrap().clone();
    let posts: Vec<&Seen> = seen.iter().filter(|s| s.method == Method::POST).collect();
    assert_eq!(posts.len(), 3);
    assert_eq!(&posts[2].body[..], odd.as_bytes(), "the exact bytes are POSTed");
    for post in &posts {
        assert_eq!(post.header("accept"), Some("application/json, text/event-stream"));
        assert_eq!(post.header("content-type"), Some("application/json"));
    }
    assert_eq!(posts[0].header("mcp-session-id"), None);
    assert_eq!(posts[0].header("mcp-protocol-version"), None);
    for later in &seen[1..] {
        assert_eq!(later.header("mcp-session-id"), Some("sess-1"), "{later:?}");
        assert_eq!(later.header("mcp-protocol-version"), Some("2025-06-18"), "{later:?}");
    }
    for any in &seen {
        assert_eq!(any.header("x-api-key"), Some("k-123"));
    }
    let get = seen.iter().find(|s| s.method == Method::GET).unwrap();
    assert_eq!(get.header("accept"), Some("text/event-stream"));
    let deletes = seen.iter().filter(|s| s.method == Method::DELETE).count();
    assert_eq!(deletes, 1, "the session is ended with one DELETE");
    assert_eq!(seen.last().unwrap().method, Method::DELETE);
}

#[tokio::test]
async fn an_unreachable_upstream_answers_requests_with_errors() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = HttpUpstreamConfig::new(&format!("http://{addr}/secret-path?token=s3cret"))
        .unwrap()
        .header("authorization", "Bearer hunter2")
        .unwrap();
    let mut pipe = Pipe::open(config);
    pipe.send(&initialize(1, "2025-11-25")).await;
    let line = pipe.line().await.unwrap();
    for secret in ["s3cret", "hunter2", "secret-path"] {
        assert!(!line.contains(secret), "{line}");
    }
    let error: Value = serde_json::from_str(&line).unwrap();
    assert_upstream_error(&error, json!(1), "upstream_unreachable");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.contains(&addr.to_string()), "{message}");
    assert!(message.contains("connection refused"), "{message}");
    // A notification has nobody to tell; the next request gets its own error.
    pipe.send(INITIALIZED).await;
    pipe.send(r#"{"jsonrpc":"2.0","id":"two","method":"tools/list"}"#).await;
    assert_upstream_error(&pipe.json().await, json!("two"), "upstream_unreachable");
    pipe.close().await;
    pipe.assert_ended().await;
}

#[tokio::test]
async fn a_response_body_that_breaks_off_is_named_as_such() {
    // A loopback server that promises 100 bytes of JSON, sends a few and hangs up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        while !request.ends_with(b"}") {
            let mut buf = [0; 4096];
            let read = tokio::io::AsyncReadExt::read(&mut socket, &mut buf).await.unwrap();
            assert!(read > 0, "the request ended early");
            request.extend_from_slice(&buf[..read]);
        }
        let head =
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n";
        socket.write_all(format!("{head}{{\"jsonrpc\"").as_bytes()).await.unwrap();
    });
    let mut pipe = Pipe::to(&url);
    pipe.send(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#).await;
    let error = pipe.json().await;
    assert_upstream_error(&error, json!(1), "upstream_unreachable");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(message.ends_with("the response broke off"), "{message}");
}

#[tokio::test]
async fn http_errors_become_error_responses() {
    let server_error =
        r#"{"jsonrpc":"2.0","id":3,"error":{"code":-32602,"message":"bad arguments"}}"#;
    let (url, _) = mock(move |seen| match seen.rpc_method().as_str() {
        "tools/call" => respond(StatusCode::BAD_REQUEST, "application/json", server_error),
        _ => respond(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "boom"),
    })
    .await;
    let mut pipe = Pipe::to(&url);
    pipe.send(&initialize(1, "2025-11-25")).await;
    let error = pipe.json().await;
    assert_upstream_error(&error, json!(1), "upstream_http_error");
    assert!(error["error"]["message"].as_str().unwrap().contains("500"), "{error}");
    // A 4xx that carries the server's own JSON-RPC error for the request passes it on as is.
    pipe.send(r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"x"}}"#).await;
    assert_eq!(pipe.line().await.unwrap(), server_error);
    pipe.close().await;
    pipe.assert_ended().await;
}

#[tokio::test]
async fn an_expired_session_fails_what_is_in_flight_and_ends_the_pipe() {
    let (url, seen) = mock(session_mock(|seen| match seen.rpc_method().as_str() {
        "slow" => sse("id: p-1\ndata:\n\n", true),
        _ => status(StatusCode::NOT_FOUND),
    }))
    .await;
    let mut pipe = Pipe::to(&url);
    start_session(&mut pipe).await;
    pipe.send(r#"{"jsonrpc":"2.0","id":2,"method":"slow"}"#).await;
    pipe.send(r#"{"jsonrpc":"2.0","id":3,"method":"expire"}"#).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let error = pipe.json().await;
        assert_upstream_error(&error, error["id"].clone(), "upstream_session_expired");
        ids.push(error["id"].as_i64().unwrap());
    }
    ids.sort();
    assert_eq!(ids, [2, 3]);
    pipe.assert_ended().await;
    assert!(!seen.lock().unwrap().iter().any(|s| s.method == Method::DELETE));
}

const PROGRESS: &str = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"t","progress":1}}"#;

#[tokio::test]
async fn a_broken_stream_resumes_from_the_last_event_id() {
    let (url, seen) =
        mock(session_mock(|seen| match (&seen.method, seen.header("last-event-id")) {
            (&Method::POST, _) => sse(&format!("id: ev-1\nretry: 20\ndata: {PROGRESS}\n\n"), false),
            (&Method::GET, Some("ev-1")) => {
                // The response, split over two data fields.
                sse(
                    "id: ev-2\ndata: {\"jsonrpc\":\"2.0\",\ndata: \"id\":7,\"result\":{}}\n\n",
                    false,
                )
            }
            _ => status(StatusCode::BAD_REQUEST),
        }))
        .await;
    let mut pipe = Pipe::to(&url);
    start_session(&mut pipe).await;
    pipe.send(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"x"}}"#).await;
    assert_eq!(pipe.line().await.unwrap(), PROGRESS);
    assert_eq!(pipe.line().await.unwrap(), r#"{"jsonrpc":"2.0","id":7,"result":{}}"#);
    let resumed =
        seen.lock().unwrap().iter().find(|s| s.header("last-event-id").is_some()).cloned().unwrap();
    assert_eq!(resumed.method, Method::GET);
    assert_eq!(resumed.header("accept"), Some("text/event-stream"));
    assert_eq!(resumed.header("mcp-session-id"), Some("sess-1"));
    pipe.close().await;
    pipe.assert_ended().await;
}

#[tokio::test]
async fn a_broken_stream_without_event_ids_fails_the_request() {
    let (url, _) = mock(session_mock(|_| sse(&format!("data: {PROGRESS}\n\n"), false))).await;
    let mut pipe = Pipe::to(&url);
    start_session(&mut pipe).await;
    pipe.send(r#"{"jsonrpc":"2.0","id":8,"method":"tools/call","params":{"name":"x"}}"#).await;
    assert_eq!(pipe.line().await.unwrap(), PROGRESS);
    assert_upstream_error(&pipe.json().await, json!(8), "upstream_stream_lost");
    pipe.close().await;
    pipe.assert_ended().await;
}

#[tokio::test]
async fn requests_time_out() {
    let (url, _) = mock(session_mock(|_| sse(": waiting\n\n", true))).await;
    let mut config = HttpUpstreamConfig::new(&url).unwrap();
    config.request_timeout = Some(Duration::from_millis(300));
    let mut pipe = Pipe::open(config);
    start_session(&mut pipe).await;
    pipe.send(r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"x"}}"#).await;
    assert_upstream_error(&pipe.json().await, json!(9), "upstream_timeout");
    pipe.close().await;
    pipe.assert_ended().await;
}

#[tokio::test]
async fn cancelled_requests_are_not_answered_in_the_servers_stead() {
    let (url, _) = mock(session_mock(|seen| match seen.rpc_method().as_str() {
        "tools/call" => sse(": working\n\n", true),
        _ => status(StatusCode::ACCEPTED),
    }))
    .await;
    let mut pipe = Pipe::to(&url);
    start_session(&mut pipe).await;
    pipe.send(r#"{"jsonrpc":"2.0","id":12,"method":"tools/call","params":{"name":"x"}}"#).await;
    pipe.send(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":12}}"#)
        .await;
    pipe.close().await;
    // The stream never answers; at shutdown nothing is made up for the cancelled call.
    pipe.assert_ended().await;
}

#[test]
fn configs_refuse_bad_urls_and_reserved_headers_and_hide_secrets() {
    assert!(HttpUpstreamConfig::new("ftp://x/mcp").is_err());
    assert!(HttpUpstreamConfig::new("not a url").is_err());
    let config = HttpUpstreamConfig::new("https://u:pw@crm.internal:8443/mcp?key=abc").unwrap();
    assert_eq!(config.redacted_origin(), "https://crm.internal:8443");
    assert!(config.clone().header("Mcp-Session-Id", "x").is_err());
    assert!(config.clone().header("bad header", "x").is_err());
    let config = config.header("Authorization", "Bearer tok").unwrap();
    let debug = format!("{config:?}");
    for secret in ["tok", "pw", "abc", "/mcp"] {
        assert!(!debug.contains(secret), "{debug}");
    }
    assert!(debug.contains("authorization"));
}

// ---- under the relay ----

#[tokio::test]
async fn the_relay_records_calls_to_an_http_upstream() {
    let url = rmcp_server(StreamableHttpServerConfig::default()).await;
    let config = HttpUpstreamConfig::new(&url).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(&dir.path().join("ledger.db"), &StoreOptions::default()).await.unwrap(),
    );
    let (ledger, writer) = Ledger::start(store.clone(), DEFAULT_CHAIN, Duration::from_secs(10));
    let identity = SessionIdentity {
        session_id: "http-upstream-test".into(),
        agent: "tester".into(),
        server: "rmcp".into(),
        transport: "stdio",
        upstream: format!("http:{}", config.redacted_origin()),
    };
    let recorder = SessionRecorder::new(ledger, identity, RecordedMethods::default());
    let (up_in, up_out) = http_upstream(config);
    let (agent, proxy) = tokio::io::duplex(1 << 16);
    let (proxy_in, proxy_out) = tokio::io::split(proxy);
    let relayed = tokio::spawn(relay(
        recorder,
        BufReader::new(proxy_in),
        LineSink::stream(proxy_out),
        up_in,
        LineSink::Queue(up_out),
        Duration::from_secs(5),
    ));
    let (agent_in, agent_out) = tokio::io::split(agent);
    let mut pipe = Pipe {
        reader: Box::pin(BufReader::new(agent_in)),
        writer: Some(Writer::Stream(Box::pin(agent_out))),
    };

    pipe.send(&initialize(1, "2025-03-26")).await;
    assert_eq!(pipe.json().await["result"]["protocolVersion"], "2025-03-26");
    pipe.send(INITIALIZED).await;
    pipe.send(r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","arguments":{"text":"recorded"}}}"#).await;
    let answer = pipe.json().await;
    assert_eq!(answer["id"], 2);
    assert_eq!(answer["result"]["content"][0]["text"], "recorded");
    pipe.close().await;
    pipe.assert_ended().await;
    assert_eq!(tokio::time::timeout(WAIT, relayed).await.unwrap().unwrap(), RelayEnd::AgentClosed);
    writer.await.unwrap();

    let events: Vec<_> = store.events().try_collect().await.unwrap();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["session_start", "tool_call", "tool_result", "session_end"], "{types:?}");
    assert_eq!(events[1].data["tool"], "echo", "{}", events[1].data);
}
