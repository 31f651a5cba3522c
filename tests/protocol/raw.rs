//! Unknown fields and unknown methods, byte for byte. rmcp's typed models drop unknown fields,
//! so this part drives a scripted node upstream (`fixtures/protocol_upstream.js`) with raw
//! JSON-RPC lines: directly over stdio, through `mcp-ledger stdio --config`, and through
//! `mcp-ledger serve` over HTTP. Each side must receive exactly what the other sent.

use std::path::{Path, PathBuf};
use std::pin::Pin;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde_json::{Value, json};

use super::client::{STDIO_AGENT, ServeProcess, WAIT, toml_string, write_config};
use crate::common::stdio_client::LineClient;
use crate::common::{BIN, TestLedger};

pub const RAW_SERVER: &str = "raw";

fn fixture() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/protocol_upstream.js")
        .display()
        .to_string()
}

/// One message the agent sends, and what it expects back.
pub enum Step {
    /// A request: read until its response arrives.
    Request { id: Value, line: &'static str },
    /// A notification: nothing comes back.
    Notification(&'static str),
}

/// The agent's lines, with unknown fields everywhere, odd spacing and key order.
pub fn script() -> Vec<Step> {
    use Step::{Notification, Request};
    vec![
        Request {
            id: json!(1),
            line: r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{"x-client-capability":{"on":1},"roots":{"listChanged":true}},"clientInfo":{"name":"raw-agent","version":"1.0.0","x-client-vendor":"acme"},"x-init-param":[null]}}"#,
        },
        Notification(
            r#"{"jsonrpc":"2.0","method":"notifications/initialized","params":{"x-initialized-extra":1}}"#,
        ),
        Request {
            id: json!("list-1"),
            line: r#"{"jsonrpc":"2.0","id":"list-1","method":"tools/list","params":{"x-list-param":true}}"#,
        },
        Request {
            id: json!(42),
            line: r#"{ "params" : {"arguments":{"z":1,"a":"\u00e9","n":1.50},"name":"echo_raw","_meta":{"progressToken":"tok-1","x-meta":2},"x-client-field":[true]}, "method":"tools/call","id":42,"jsonrpc":"2.0" }"#,
        },
        Request {
            id: json!("u-1"),
            line: r#"{"jsonrpc":"2.0","id":"u-1","method":"vendor/unknown","params":{"x":[1,{"y":null}],"big":12345678901234567890,"f":1e-7}}"#,
        },
        Notification(
            r#"{"jsonrpc":"2.0","method":"notifications/vendor/agent-note","params":{"x-n":1,"s":"\ud83d\ude00"}}"#,
        ),
        Request {
            id: json!(43),
            line: r#"{"jsonrpc":"2.0","id":43,"method":"tools/call","params":{"name":"server_asks","arguments":{}}}"#,
        },
        Request {
            id: json!(44),
            line: r#"{"jsonrpc":"2.0","id":44,"method":"tools/call","params":{"name":"notify_raw","arguments":{"x-arg":{}}}}"#,
        },
        Request {
            id: json!("u-2"),
            line: r#"{"jsonrpc":"2.0","id":"u-2","method":"vendor/second","params":{}}"#,
        },
    ]
}

/// The agent's answer to the upstream's `vendor/ask` request, with unknown fields.
pub fn answer_to_ask(id: &Value) -> String {
    format!(
        r#"{{"jsonrpc":"2.0","id":{id},"result":{{"x-answer":"this one","n":[1,2],"_meta":{{"x-m":true}}}}}}"#
    )
}

/// What the agent received for each step (raw lines), and what the upstream received.
pub struct RawRun {
    pub label: &'static str,
    pub received: Vec<Vec<String>>,
    pub upstream_log: Vec<String>,
}

fn is_response_to(line: &str, id: &Value) -> bool {
    let message: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    message.get("method").is_none() && message.get("id") == Some(id)
}

/// A server-to-agent request in `line`, if it is one: its id.
fn server_request_id(line: &str) -> Option<Value> {
    let message: Value = serde_json::from_str(line).ok()?;
    message.get("method")?;
    message.get("id").cloned()
}

fn read_log(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap_or_default().lines().map(str::to_owned).collect()
}

/// Plays the script over a line transport (node directly, or `mcp-ledger stdio`).
async fn play_lines(client: &mut LineClient) -> Vec<Vec<String>> {
    let mut received = Vec::new();
    for step in script() {
        let mut lines = Vec::new();
        match step {
            Step::Notification(line) => client.send_line(line).await,
            Step::Request { id, line } => {
                client.send_line(line).await;
                loop {
                    let got = client.recv_raw().await;
                    lines.push(got.clone());
                    if let Some(ask) = server_request_id(&got) {
                        client.send_line(&answer_to_ask(&ask)).await;
                    } else if is_response_to(&got, &id) {
                        break;
                    }
                }
            }
        }
        received.push(lines);
    }
    received
}

pub async fn run_direct(dir: &Path) -> RawRun {
    let log = dir.join("direct-upstream.log");
    let mut client = LineClient::spawn_with_env(
        "node",
        &[fixture()],
        &[("UPSTREAM_LOG", log.display().to_string())],
    );
    let received = play_lines(&mut client).await;
    client.close().await;
    RawRun { label: "direct", received, upstream_log: read_log(&log) }
}

/// The configuration for the proxied runs: the fixture as a stdio upstream logging to `log`.
fn raw_config(dir: &Path, ledger: &TestLedger, log: &Path) -> PathBuf {
    let upstream = format!(
        "command = [\"node\", {fixture}]\nenv = {{ UPSTREAM_LOG = {log} }}",
        fixture = toml_string(&fixture()),
        log = toml_string(&log.display().to_string()),
    );
    write_config(dir, &ledger.url_string(), RAW_SERVER, &upstream)
}

pub async fn run_stdio(dir: &Path, ledger: &TestLedger) -> RawRun {
    let log = dir.join("stdio-upstream.log");
    let config = raw_config(dir, ledger, &log);
    let args: Vec<String> = ["stdio", "--config", &config.display().to_string()]
        .into_iter()
        .chain(["--server", RAW_SERVER, "--agent", STDIO_AGENT])
        .map(str::to_owned)
        .collect();
    let mut client = LineClient::spawn(BIN, &args);
    let received = play_lines(&mut client).await;
    let status = client.close().await;
    assert!(status.success(), "mcp-ledger stdio exited with {status}");
    RawRun { label: "through stdio", received, upstream_log: read_log(&log) }
}

pub async fn run_http(dir: &Path, ledger: &TestLedger) -> RawRun {
    let log = dir.join("http-upstream.log");
    let config = raw_config(dir, ledger, &log);
    let serve = ServeProcess::start(&config, RAW_SERVER).await;
    let mut agent = RawHttp::new(&serve.url);
    let mut received = Vec::new();
    for step in script() {
        let mut lines = Vec::new();
        match step {
            Step::Notification(line) => {
                let response = agent.post(line).await;
                assert_eq!(response.status(), 202, "a notification is accepted: {line}");
            }
            Step::Request { id, line } => {
                let response = agent.post(line).await;
                assert_eq!(response.status(), 200, "POST {line}");
                agent.remember_session(&response, &id);
                let content_type = response
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                if content_type.starts_with("application/json") {
                    // A prompt lone answer comes as the body itself: the upstream's line, as is.
                    let body = response.text().await.expect("a JSON body");
                    assert!(is_response_to(&body, &id), "the body answers {line}: {body}");
                    received.push(vec![body]);
                    continue;
                }
                assert!(
                    content_type.starts_with("text/event-stream"),
                    "an agent that accepts both gets JSON or an event stream: {content_type}"
                );
                let mut events = SseReader::new(response);
                loop {
                    let Some(got) = events.next_data().await else {
                        panic!("the response stream to {line} ended before its response")
                    };
                    lines.push(got.clone());
                    if let Some(ask) = server_request_id(&got) {
                        let answer = agent.post(&answer_to_ask(&ask)).await;
                        assert_eq!(answer.status(), 202, "the agent's answer is accepted");
                    } else if is_response_to(&got, &id) {
                        break;
                    }
                }
            }
        }
        received.push(lines);
    }
    agent.delete().await;
    serve.stop().await;
    RawRun { label: "through serve (HTTP)", received, upstream_log: read_log(&log) }
}

/// A minimal Streamable HTTP agent that posts raw bodies.
struct RawHttp {
    http: reqwest::Client,
    url: String,
    session: Option<String>,
}

impl RawHttp {
    fn new(url: &str) -> Self {
        RawHttp { http: reqwest::Client::new(), url: url.to_owned(), session: None }
    }

    async fn post(&self, body: &str) -> reqwest::Response {
        let mut request = self
            .http
            .post(&self.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(body.to_owned());
        if let Some(session) = &self.session {
            request = request
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", "2025-06-18");
        }
        tokio::time::timeout(WAIT, request.send())
            .await
            .expect("the proxy answers in time")
            .expect("POST to the proxy")
    }

    fn remember_session(&mut self, response: &reqwest::Response, id: &Value) {
        if self.session.is_none() {
            let session = response
                .headers()
                .get("mcp-session-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_else(|| panic!("the answer to request {id} starts a session"));
            self.session = Some(session.to_owned());
        }
    }

    async fn delete(&self) {
        let Some(session) = &self.session else { return };
        let response = tokio::time::timeout(
            WAIT,
            self.http.delete(&self.url).header("mcp-session-id", session).send(),
        )
        .await
        .expect("DELETE answered in time")
        .expect("DELETE");
        assert!(response.status().is_success(), "DELETE: {}", response.status());
    }
}

/// Reads the `data` of each SSE event as it arrives.
struct SseReader {
    stream: Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>,
    buffer: Vec<u8>,
}

impl SseReader {
    fn new(response: reqwest::Response) -> Self {
        SseReader { stream: Box::pin(response.bytes_stream()), buffer: Vec::new() }
    }

    /// The next event's data (its `data:` lines joined by `\n`); `None` at the end.
    async fn next_data(&mut self) -> Option<String> {
        loop {
            if let Some((end, separator)) = event_end(&self.buffer) {
                let event: Vec<u8> = self.buffer.drain(..end + separator).collect();
                let event = String::from_utf8(event).expect("SSE is UTF-8");
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(|d| d.strip_prefix(' ').unwrap_or(d))
                    .collect();
                if !data.is_empty() {
                    return Some(data.join("\n"));
                }
                continue;
            }
            let chunk =
                tokio::time::timeout(WAIT, self.stream.next()).await.expect("an SSE event in time");
            match chunk {
                Some(Ok(bytes)) => self.buffer.extend_from_slice(&bytes),
                Some(Err(error)) => panic!("reading the event stream failed: {error}"),
                None => return None,
            }
        }
    }
}

/// Where the first complete event in `buffer` ends, and the length of its separator.
fn event_end(buffer: &[u8]) -> Option<(usize, usize)> {
    let find = |pattern: &[u8]| buffer.windows(pattern.len()).position(|w| w == pattern);
    [find(b"\r\n\r\n").map(|p| (p, 4)), find(b"\n\n").map(|p| (p, 2))]
        .into_iter()
        .flatten()
        .min_by_key(|(p, _)| *p)
}
