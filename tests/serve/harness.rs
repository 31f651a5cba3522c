//! Drives the real `mcp-ledger serve` binary: a temporary config and SQLite ledger, the child
//! process (started, read for its "serving" lines, stopped with SIGTERM), raw HTTP requests and a
//! hand-written SSE parser, and bounded polling of the ledger.
// Shared by several test binaries, each of which uses only part of it.
#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use mcp_ledger::record::Event;
use mcp_ledger::store::{self, StoreOptions};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::{BIN, TestLedger};

/// The two upstreams every test config has: the demo server (with a call log) and the
/// scriptable node upstream (logging every line it receives).
pub const DEMO: &str = "demo";
pub const UP: &str = "up";

pub const USER_AGENT: &str = "serve-test/1.0";

/// One `[[agents]]` entry, with the token a client sends.
#[derive(Clone)]
pub struct AgentCred {
    pub name: String,
    pub token: String,
}

impl AgentCred {
    pub fn new(name: &str) -> Self {
        let token = format!("mcpl_test_{}_{}", name, uuid::Uuid::new_v4().simple());
        AgentCred { name: name.to_owned(), token }
    }
}

#[derive(Default)]
pub struct Options {
    pub agents: Vec<AgentCred>,
    /// Extra `key = value` lines for `[listen]`.
    pub listen: Vec<String>,
    /// `--listen` (default `127.0.0.1:0`).
    pub listen_addr: Option<String>,
    /// Entries written verbatim instead of ones built from `agents` (for `agents add` output).
    pub raw_agents: Option<String>,
    /// Extra `[[servers]]` entries, written verbatim.
    pub extra_servers: String,
    /// `--threads` (default: not given, so serve picks from the CPU count).
    pub threads: Option<u16>,
}

pub struct Files {
    _dir: tempfile::TempDir,
    pub config: PathBuf,
    pub call_log: PathBuf,
    pub upstream_log: PathBuf,
    pub ledger: TestLedger,
    pub threads: Option<u16>,
}

pub fn fixture() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/serve_upstream.js")
        .display()
        .to_string()
}

fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

pub fn write_config(options: &Options) -> Files {
    let dir = tempfile::tempdir().expect("temp dir");
    let call_log = dir.path().join("demo-calls.jsonl");
    let upstream_log = dir.path().join("upstream.log");
    let ledger = TestLedger::sqlite();
    let mut text = String::new();
    text.push_str("[listen]\n");
    for line in &options.listen {
        text.push_str(line);
        text.push('\n');
    }
    text.push_str(&format!(
        "\n[[servers]]\nname = \"{DEMO}\"\ncommand = [{}, \"demo-server\", \"--call-log\", {}]\n",
        toml_str(BIN),
        toml_str(&call_log.display().to_string())
    ));
    text.push_str(&format!(
        "\n[[servers]]\nname = \"{UP}\"\ncommand = [\"node\", {}]\nenv = {{ UPSTREAM_LOG = {} }}\n",
        toml_str(&fixture()),
        toml_str(&upstream_log.display().to_string())
    ));
    text.push_str(&options.extra_servers);
    match &options.raw_agents {
        Some(raw) => text.push_str(raw),
        None => {
            for agent in &options.agents {
                text.push_str(&format!(
                    "\n[[agents]]\nname = \"{}\"\ntoken_sha256 = \"{}\"\n",
                    agent.name,
                    mcp_ledger::config::token_sha256(&agent.token)
                ));
            }
        }
    }
    let config = dir.path().join("mcp-ledger.toml");
    std::fs::write(&config, text).expect("write config");
    Files { _dir: dir, config, call_log, upstream_log, ledger, threads: options.threads }
}

/// A `serve` child process with its output collected by threads.
pub struct Launched {
    pub child: Child,
    stdout: mpsc::Receiver<String>,
    pub stdout_seen: Vec<String>,
    pub stderr: Arc<Mutex<Vec<u8>>>,
}

pub fn launch(files: &Files, listen: &str) -> Launched {
    let mut command = Command::new(BIN);
    command.args(["serve", "--config"]).arg(&files.config).args([
        "--listen",
        listen,
        "--ledger",
        &files.ledger.url_string(),
    ]);
    if let Some(threads) = files.threads {
        command.arg("--threads").arg(threads.to_string());
    }
    let mut child = command
        // As verbose as the crate logs, so a secret in any log line would show.
        .env("MCP_LEDGER_LOG", "warn,mcp_ledger=debug")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mcp-ledger serve");
    let (sender, stdout) = mpsc::channel();
    let out = child.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if sender.send(line).is_err() {
                break;
            }
        }
    });
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let mut err = child.stderr.take().expect("piped stderr");
    let collected = stderr.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match err.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => collected.lock().unwrap().extend_from_slice(&buf[..n]),
            }
        }
    });
    Launched { child, stdout, stdout_seen: Vec::new(), stderr }
}

impl Launched {
    pub fn stderr_text(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Waits (bounded) for the process to exit.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The next stdout line, waiting (bounded) without blocking the runtime.
    async fn next_line(&mut self, deadline: Instant) -> Option<String> {
        loop {
            match self.stdout.try_recv() {
                Ok(line) => {
                    self.stdout_seen.push(line.clone());
                    return Some(line);
                }
                Err(mpsc::TryRecvError::Disconnected) => return None,
                Err(mpsc::TryRecvError::Empty) => {}
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A running `serve` with its files.
pub struct Serve {
    pub process: Launched,
    pub files: Files,
    pub http: Http,
}

impl Serve {
    pub async fn start(options: Options) -> Serve {
        let files = write_config(&options);
        let listen = options.listen_addr.as_deref().unwrap_or("127.0.0.1:0");
        Serve::start_with(files, listen).await
    }

    pub async fn start_with(files: Files, listen: &str) -> Serve {
        let mut process = launch(&files, listen);
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut port = None;
        let mut served = Vec::new();
        while served.len() < 2 {
            let Some(line) = process.next_line(deadline).await else {
                panic!(
                    "serve did not print its `serving` lines; stdout {:?}, stderr:\n{}",
                    process.stdout_seen,
                    process.stderr_text()
                );
            };
            let Some(rest) = line.strip_prefix("serving ") else { continue };
            let (name, url) = rest.split_once(" at ").expect("`serving NAME at URL`");
            let authority = url.strip_prefix("http://").unwrap().split('/').next().unwrap();
            let p: u16 = authority.rsplit_once(':').unwrap().1.parse().unwrap();
            assert!(url.ends_with(&format!("/mcp/{name}")), "{line}");
            port = Some(p);
            served.push(name.to_owned());
        }
        served.sort();
        assert_eq!(served, [DEMO, UP]);
        let port = port.expect("a port");
        Serve { process, files, http: Http::new(port) }
    }

    /// SIGTERM, and the exit status (bounded wait).
    pub async fn stop(mut self) -> (ExitStatus, Files, String) {
        self.process.sigterm();
        let status = self.process.wait_exit(Duration::from_secs(20)).await;
        let stderr = self.process.stderr_text();
        let Some(status) = status else {
            panic!("serve did not exit within 20 s of SIGTERM; stderr:\n{stderr}");
        };
        (status, self.files, stderr)
    }

    pub fn mcp(&self, server: &str, agent: Option<&AgentCred>) -> Mcp {
        Mcp {
            http: self.http.clone(),
            server: server.to_owned(),
            token: agent.map(|a| a.token.clone()),
        }
    }

    pub async fn events(&self) -> Vec<Event> {
        read_events(&self.files.ledger).await
    }

    pub fn call_log(&self) -> Vec<Value> {
        read_jsonl(&self.files.call_log)
    }

    pub fn upstream_log(&self) -> Vec<Value> {
        read_jsonl(&self.files.upstream_log)
    }
}

pub fn read_jsonl(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

pub async fn read_events(ledger: &TestLedger) -> Vec<Event> {
    let options = StoreOptions { migrate: false, ..StoreOptions::default() };
    let store = store::open(&ledger.url, &options).await.expect("open the ledger");
    let events: Vec<Event> = store.events().try_collect().await.expect("read events");
    store.close().await;
    events
}

/// Every byte of the SQLite ledger: the database and its journal files.
pub fn ledger_bytes(ledger: &TestLedger) -> Vec<u8> {
    assert!(ledger.sqlite_path().is_some(), "an SQLite ledger");
    let bytes = ledger.stored_bytes();
    assert!(!bytes.is_empty(), "the ledger file exists");
    bytes
}

pub fn contains(haystack: &[u8], needle: &str) -> bool {
    super::common::contains_bytes(haystack, needle)
}

/// Polls `check` every 25 ms until it returns `Some`, for at most `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub fn of_type<'a>(events: &'a [Event], event_type: &str) -> Vec<&'a Event> {
    events.iter().filter(|e| e.event_type == event_type).collect()
}

pub fn in_session<'a>(events: &'a [Event], session: &str) -> Vec<&'a Event> {
    events.iter().filter(|e| e.session_id.as_deref() == Some(session)).collect()
}

pub fn has_session_end(events: &[Event], session: &str) -> bool {
    end_reason(events, session).is_some()
}

/// The reason in `session`'s `session_end`, once it is recorded.
pub fn end_reason(events: &[Event], session: &str) -> Option<String> {
    in_session(events, session)
        .iter()
        .find(|e| e.event_type == "session_end")
        .map(|e| e.data["reason"].as_str().unwrap_or_default().to_owned())
}

/// A finished HTTP exchange.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
    }

    pub fn session_id(&self) -> Option<String> {
        self.header("mcp-session-id")
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}), status {}: {}", self.status, self.body))
    }

    /// The JSON-RPC messages in the body: SSE `data:` of `message` events, or plain JSON.
    pub fn messages(&self) -> Vec<Value> {
        let is_sse = self.header("content-type").is_some_and(|c| c.contains("text/event-stream"));
        if is_sse {
            let mut parser = SseParser::default();
            parser.push(self.body.as_bytes());
            parser.finish();
            parser
                .events
                .iter()
                .map(|e| {
                    assert_eq!(e.event, "message", "{e:?}");
                    serde_json::from_str(&e.data).unwrap_or_else(|err| panic!("{err}: {e:?}"))
                })
                .collect()
        } else {
            match self.json() {
                Value::Array(items) => items,
                one => vec![one],
            }
        }
    }

    /// The one response with `id`.
    pub fn response(&self, id: &Value) -> Value {
        let responses: Vec<Value> = self
            .messages()
            .into_iter()
            .filter(|m| m.get("id") == Some(id) && m.get("method").is_none())
            .collect();
        assert_eq!(responses.len(), 1, "one response with id {id} in {self:?}");
        responses.into_iter().next().unwrap()
    }
}

/// One server-sent event.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

/// An incremental `text/event-stream` parser (WHATWG rules, minus `id`/`retry`).
#[derive(Default)]
pub struct SseParser {
    buffer: String,
    /// The event being read: its type and its data lines so far.
    current: Option<(String, Vec<String>)>,
    pub events: Vec<SseEvent>,
}

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.push_str(std::str::from_utf8(bytes).expect("SSE is UTF-8"));
        while let Some(end) = self.buffer.find('\n') {
            let line: String = self.buffer.drain(..=end).collect();
            let line = line.trim_end_matches('\n').trim_end_matches('\r');
            self.line(line);
        }
    }

    pub fn finish(&mut self) {
        if !self.buffer.is_empty() {
            let rest = std::mem::take(&mut self.buffer);
            self.line(&rest);
        }
        self.line("");
    }

    fn line(&mut self, line: &str) {
        if line.is_empty() {
            // Dispatch; an event without data is not dispatched.
            if let Some((event, data)) = self.current.take()
                && !data.is_empty()
            {
                let event = if event.is_empty() { "message".to_owned() } else { event };
                self.events.push(SseEvent { event, data: data.join("\n") });
            }
            return;
        }
        if line.starts_with(':') {
            return; // a comment (keep-alive)
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        let (event, data) = self.current.get_or_insert_with(Default::default);
        match field {
            "event" => *event = value.to_owned(),
            "data" => data.push(value.to_owned()),
            _ => {}
        }
    }
}

/// Raw HTTP against the proxy.
#[derive(Clone)]
pub struct Http {
    pub client: reqwest::Client,
    pub base: String,
}

impl Http {
    pub fn new(port: u16) -> Self {
        let client = reqwest::Client::builder()
            .no_proxy()
            .user_agent(USER_AGENT)
            .build()
            .expect("reqwest client");
        Http { client, base: format!("http://127.0.0.1:{port}") }
    }

    pub fn request(&self, method: Method, server: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}/mcp/{server}", self.base))
            .header("accept", "application/json, text/event-stream")
    }
}

/// Sends and reads the whole body, bounded; `Err` if the connection failed.
pub async fn try_send(
    request: reqwest::RequestBuilder,
    within: Duration,
) -> Result<Reply, reqwest::Error> {
    let exchange = async {
        let response = request.send().await?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.text().await?;
        Ok(Reply { status, headers, body })
    };
    tokio::time::timeout(within, exchange).await.expect("the HTTP exchange finished in time")
}

/// Sends and reads the whole body, bounded.
pub async fn send(request: reqwest::RequestBuilder, within: Duration) -> Reply {
    try_send(request, within).await.expect("HTTP exchange")
}

pub const QUICK: Duration = Duration::from_secs(10);

/// An MCP client of one endpoint, as one agent (or none).
#[derive(Clone)]
pub struct Mcp {
    pub http: Http,
    pub server: String,
    pub token: Option<String>,
}

pub fn initialize_body(id: u64) -> String {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "serve-test", "version": "1.0.0"}
        }
    })
    .to_string()
}

pub fn call_body(id: u64, tool: &str, arguments: Value) -> String {
    json!({
        "jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments}
    })
    .to_string()
}

impl Mcp {
    pub fn with_token(&self, token: Option<&str>) -> Mcp {
        Mcp { token: token.map(str::to_owned), ..self.clone() }
    }

    /// A request with this agent's token and, when given, the session header.
    pub fn request(&self, method: Method, session: Option<&str>) -> reqwest::RequestBuilder {
        let mut request = self.http.request(method, &self.server);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(session) = session {
            request = request.header("mcp-session-id", session);
        }
        request
    }

    pub async fn post(&self, session: Option<&str>, body: &str) -> Reply {
        self.post_within(session, body, QUICK).await
    }

    pub async fn post_within(&self, session: Option<&str>, body: &str, within: Duration) -> Reply {
        send(self.post_request(session, body), within).await
    }

    pub fn post_request(&self, session: Option<&str>, body: &str) -> reqwest::RequestBuilder {
        self.request(Method::POST, session)
            .header("content-type", "application/json")
            .body(body.to_owned())
    }

    /// Opens the standalone GET stream of `session`.
    pub async fn open_stream(&self, session: &str) -> EventStream {
        let request =
            self.request(Method::GET, Some(session)).header("accept", "text/event-stream");
        let response = tokio::time::timeout(QUICK, request.send())
            .await
            .expect("GET answered in time")
            .expect("GET");
        assert_eq!(response.status(), StatusCode::OK, "GET stream: {response:?}");
        let content_type = response.headers().get("content-type").unwrap().to_str().unwrap();
        assert!(content_type.starts_with("text/event-stream"), "{content_type}");
        EventStream::new(response)
    }

    pub async fn delete(&self, session: &str) -> Reply {
        send(self.request(Method::DELETE, Some(session)), QUICK).await
    }

    /// `initialize` and `notifications/initialized`; returns the session id.
    pub async fn initialize(&self) -> String {
        let reply = self.post(None, &initialize_body(0)).await;
        assert_eq!(reply.status, StatusCode::OK, "initialize: {reply:?}");
        let session = reply.session_id().expect("initialize returns Mcp-Session-Id");
        let content_type = reply.header("content-type").unwrap_or_default();
        assert!(
            content_type.starts_with("application/json"),
            "a prompt lone answer is plain JSON, even to a client that accepts SSE: {reply:?}"
        );
        let response = reply.response(&json!(0));
        assert!(response.get("result").is_some(), "initialize succeeded: {response}");
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"}).to_string();
        let reply = self.post(Some(&session), &note).await;
        assert_eq!(reply.status, StatusCode::ACCEPTED, "initialized notification: {reply:?}");
        session
    }

    /// A tools/call and its JSON-RPC response.
    pub async fn call(&self, session: &str, id: u64, tool: &str, arguments: Value) -> Value {
        let reply = self.post(Some(session), &call_body(id, tool, arguments)).await;
        assert_eq!(reply.status, StatusCode::OK, "tools/call {tool}: {reply:?}");
        reply.response(&json!(id))
    }

    /// The pid of the upstream serving `session` (the `up` server's `whoami`).
    pub async fn upstream_pid(&self, session: &str, id: u64) -> u64 {
        let response = self.call(session, id, "whoami", json!({})).await;
        response["result"]["structuredContent"]["pid"]
            .as_u64()
            .unwrap_or_else(|| panic!("whoami answered: {response}"))
    }
}

/// An open GET stream, read incrementally.
pub struct EventStream {
    pub response: reqwest::Response,
    parser: SseParser,
    taken: usize,
}

impl EventStream {
    pub fn new(response: reqwest::Response) -> Self {
        EventStream { response, parser: SseParser::default(), taken: 0 }
    }

    /// The next event, or `None` when the stream ends; panics after `within`.
    pub async fn next(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.taken < self.parser.events.len() {
                self.taken += 1;
                return Some(self.parser.events[self.taken - 1].clone());
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .unwrap_or_else(|_| panic!("no SSE event within {within:?}"))
                .expect("read the event stream");
            match chunk {
                Some(bytes) => self.parser.push(&bytes),
                None => {
                    self.parser.finish();
                    if self.taken < self.parser.events.len() {
                        continue;
                    }
                    return None;
                }
            }
        }
    }
}

/// Whether process `pid` is still running (and not a zombie).
pub fn alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            // State is the field after the parenthesised command name.
            let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start()).unwrap_or("");
            !state.starts_with('Z') && !state.starts_with('X')
        }
        Err(_) => false,
    }
}
