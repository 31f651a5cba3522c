//! The agent side: an rmcp client whose handler answers the server's requests with canned
//! answers and records everything the server sent it; the three ways to reach the in-process
//! server (directly, through `mcp-ledger serve`, through `mcp-ledger stdio --config`); and the
//! proxy processes themselves.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CancelledNotificationParam, ClientCapabilities,
    ClientConfig, ClientRequest, CreateMessageRequestParams, CreateMessageResult,
    CustomNotification, CustomRequest, CustomResult, ElicitRequestParams, ElicitResult,
    Implementation, ListRootsResult, LoggingMessageNotificationParam, ProgressNotificationParam,
    ProtocolVersion, ResourceUpdatedNotificationParam,
};
use rmcp::service::{
    NotificationContext, PeerRequestOptions, RequestContext, RequestHandle, RoleClient,
    RunningService, ServiceError,
};
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{ClientHandler, ErrorData, ServiceExt};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::watch;

use super::server::BEACON;
use crate::common::BIN;

/// How long one request, or one awaited notification, may take before the test fails naming it.
pub const WAIT: Duration = Duration::from_secs(20);

/// The agent name `stdio` sessions are recorded under (HTTP sessions on loopback without
/// `[[agents]]` are `anonymous`).
pub const STDIO_AGENT: &str = "protocol-agent";

/// The name of the in-process server in the proxy's configuration.
pub const SERVER_NAME: &str = "features";

fn typed<T: DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("the test's own JSON does not fit the rmcp type: {e}: {value}"))
}

/// Everything the server sent to the client that is not a response: notifications and
/// requests, in the order the handler saw them, as `{"kind", "method", "params"}`.
#[derive(Clone, Default)]
pub struct RecordingClient {
    seen: Arc<watch::Sender<Vec<Value>>>,
}

impl RecordingClient {
    fn note(&self, kind: &str, method: &str, params: Value) {
        let entry = json!({ "kind": kind, "method": method, "params": params });
        self.seen.send_modify(|seen| seen.push(entry));
    }
}

fn value_of(params: &impl serde::Serialize) -> Value {
    serde_json::to_value(params).expect("rmcp params serialise")
}

impl ClientHandler for RecordingClient {
    fn get_info(&self) -> ClientConfig {
        let capabilities = ClientCapabilities::builder()
            .enable_roots()
            .enable_roots_list_changed()
            .enable_sampling()
            .enable_elicitation()
            .build();
        ClientConfig::new(capabilities, Implementation::new("protocol-test-agent", "0.9.1"))
            .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE)
    }

    async fn ping(&self, _context: RequestContext<RoleClient>) -> Result<(), ErrorData> {
        self.note("request", "ping", Value::Null);
        Ok(())
    }

    async fn create_message(
        &self,
        params: CreateMessageRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<CreateMessageResult, ErrorData> {
        let params = value_of(&params);
        self.note("request", "sampling/createMessage", params.clone());
        if params["metadata"]["refuse"] == json!(true) {
            return Err(ErrorData::invalid_request(
                "the user refused to sample",
                Some(json!({"x-why": "protocol test"})),
            ));
        }
        Ok(typed(json!({
            "model": "canned-model-1",
            "stopReason": "endTurn",
            "role": "assistant",
            "content": {"type": "text", "text": "4, said the canned model"},
        })))
    }

    async fn create_elicitation(
        &self,
        request: ElicitRequestParams,
        _context: RequestContext<RoleClient>,
    ) -> Result<ElicitResult, ErrorData> {
        let request = value_of(&request);
        self.note("request", "elicitation/create", request.clone());
        if request["message"].as_str().is_some_and(|m| m.contains("decline")) {
            return Ok(typed(json!({"action": "decline"})));
        }
        Ok(typed(json!({"action": "accept", "content": {"name": "Ada", "age": 36}})))
    }

    async fn list_roots(
        &self,
        _context: RequestContext<RoleClient>,
    ) -> Result<ListRootsResult, ErrorData> {
        self.note("request", "roots/list", Value::Null);
        Ok(typed(json!({
            "roots": [
                {"uri": "file:///work/project", "name": "project"},
                {"uri": "file:///tmp/scratch"}
            ]
        })))
    }

    async fn on_custom_request(
        &self,
        request: CustomRequest,
        _context: RequestContext<RoleClient>,
    ) -> Result<CustomResult, ErrorData> {
        let params = request.params.clone().unwrap_or(Value::Null);
        self.note("request", &request.method, params);
        Ok(CustomResult::new(json!({"x-agent-answer": {"ok": true, "echo": request.params}})))
    }

    async fn on_cancelled(
        &self,
        params: CancelledNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.note("notification", "notifications/cancelled", value_of(&params));
    }

    async fn on_progress(
        &self,
        params: ProgressNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.note("notification", "notifications/progress", value_of(&params));
    }

    async fn on_logging_message(
        &self,
        params: LoggingMessageNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.note("notification", "notifications/message", value_of(&params));
    }

    async fn on_resource_updated(
        &self,
        params: ResourceUpdatedNotificationParam,
        _context: NotificationContext<RoleClient>,
    ) {
        self.note("notification", "notifications/resources/updated", value_of(&params));
    }

    async fn on_resource_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.note("notification", "notifications/resources/list_changed", Value::Null);
    }

    async fn on_tool_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.note("notification", "notifications/tools/list_changed", Value::Null);
    }

    async fn on_prompt_list_changed(&self, _context: NotificationContext<RoleClient>) {
        self.note("notification", "notifications/prompts/list_changed", Value::Null);
    }

    async fn on_custom_notification(
        &self,
        notification: CustomNotification,
        _context: NotificationContext<RoleClient>,
    ) {
        let params = notification.params.clone().unwrap_or(Value::Null);
        self.note("notification", &notification.method, params);
    }
}

/// How the agent reaches the in-process server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Direct,
    /// Agent → `mcp-ledger serve` (Streamable HTTP) → server.
    ServeHttp,
    /// Agent → `mcp-ledger stdio --config` (stdio) → server.
    Stdio,
}

pub type Client = RunningService<RoleClient, RecordingClient>;

/// One connected client and what its handler has seen.
pub struct Session {
    pub route: Route,
    pub client: Client,
    seen: Arc<watch::Sender<Vec<Value>>>,
}

/// A response as the client received it: `{"result": …}` or `{"error": …}`.
pub fn response_value(
    label: &str,
    response: Result<rmcp::model::ServerResult, ServiceError>,
) -> Value {
    match response {
        Ok(result) => json!({ "result": value_of(&result) }),
        Err(ServiceError::McpError(error)) => json!({ "error": value_of(&error) }),
        Err(other) => panic!("{label}: the request failed outside JSON-RPC: {other}"),
    }
}

impl Session {
    pub async fn connect(route: Route, url_or_config: &str) -> Session {
        let handler = RecordingClient::default();
        let seen = handler.seen.clone();
        let connecting = async {
            match route {
                Route::Direct | Route::ServeHttp => {
                    let transport =
                        StreamableHttpClientTransport::from_uri(url_or_config.to_owned());
                    handler.serve(transport).await.expect("MCP handshake over HTTP")
                }
                Route::Stdio => {
                    let mut command = tokio::process::Command::new(BIN);
                    command
                        .args(["stdio", "--config", url_or_config, "--server", SERVER_NAME])
                        .args(["--agent", STDIO_AGENT])
                        .env("MCP_LEDGER_LOG", "warn");
                    let (transport, _) = TokioChildProcess::builder(command)
                        .stderr(Stdio::inherit())
                        .spawn()
                        .expect("start mcp-ledger stdio");
                    handler.serve(transport).await.expect("MCP handshake over stdio")
                }
            }
        };
        let client = tokio::time::timeout(WAIT, connecting)
            .await
            .unwrap_or_else(|_| panic!("{route:?}: no handshake within {WAIT:?}"));
        Session { route, client, seen }
    }

    /// Sends `request` and waits for its response.
    pub async fn request(&self, label: &str, request: ClientRequest) -> Value {
        let response = tokio::time::timeout(WAIT, self.client.send_request(request))
            .await
            .unwrap_or_else(|_| panic!("{:?}: no response to {label} within {WAIT:?}", self.route));
        response_value(label, response)
    }

    /// Sends `request` and returns its handle (id, progress token) without waiting.
    pub async fn start(&self, request: ClientRequest) -> RequestHandle<RoleClient> {
        self.client
            .send_request_with_option(request, PeerRequestOptions::no_options())
            .await
            .expect("the request is sent")
    }

    pub async fn finish(&self, label: &str, handle: RequestHandle<RoleClient>) -> Value {
        let response = tokio::time::timeout(WAIT, handle.await_response())
            .await
            .unwrap_or_else(|_| panic!("{:?}: no response to {label} within {WAIT:?}", self.route));
        response_value(label, response)
    }

    pub async fn call(&self, tool: &str, arguments: Value) -> Value {
        let params = CallToolRequestParams::new(tool.to_owned())
            .with_arguments(arguments.as_object().cloned().unwrap_or_default());
        self.request(&format!("tools/call {tool}"), CallToolRequest::new(params).into()).await
    }

    /// What the handler has seen so far.
    pub fn seen(&self) -> Vec<Value> {
        self.seen.borrow().clone()
    }

    /// What the handler has seen with `method`.
    pub fn seen_of(&self, method: &str) -> Vec<Value> {
        self.seen().into_iter().filter(|s| s["method"] == method).collect()
    }

    /// Waits until at least `count` messages with `method` were seen; returns them.
    pub async fn wait_for(&self, method: &str, count: usize) -> Vec<Value> {
        self.try_wait_for(method, count, WAIT).await.unwrap_or_else(|| {
            panic!(
                "{:?}: expected {count} × {method} within {WAIT:?}; the client saw: {:#?}",
                self.route,
                self.seen()
            )
        })
    }

    async fn try_wait_for(
        &self,
        method: &str,
        count: usize,
        limit: Duration,
    ) -> Option<Vec<Value>> {
        let mut receiver = self.seen.subscribe();
        let waiting = receiver
            .wait_for(|seen| seen.iter().filter(|s| s["method"] == method).count() >= count);
        tokio::time::timeout(limit, waiting).await.ok()?.ok()?;
        Some(self.seen_of(method))
    }

    /// rmcp's server sends notifications that belong to no request on the standalone GET
    /// stream, and drops them while no such stream is open; clients open it right after the
    /// handshake, but asynchronously. So before a scenario that depends on such notifications,
    /// ask the server for a beacon on that stream until one arrives.
    /// Returns how many `beacon` tool calls that took.
    pub async fn await_standalone_stream(&self) -> usize {
        for attempt in 1..=20 {
            let answer = self.call("beacon", json!({ "attempt": attempt })).await;
            assert!(answer.get("result").is_some(), "beacon: {answer}");
            if self.try_wait_for(BEACON, 1, Duration::from_millis(500)).await.is_some() {
                return attempt;
            }
        }
        panic!(
            "{:?}: no notification that belongs to no request reached the client in 10 s of \
             asking (the standalone stream never carried one); the client saw: {:#?}",
            self.route,
            self.seen()
        );
    }

    /// Ends the session (for stdio: the proxy process exits after it).
    pub async fn close(self) {
        let route = self.route;
        let closing = tokio::time::timeout(Duration::from_secs(30), self.client.cancel()).await;
        assert!(closing.is_ok(), "{route:?}: the client did not close within 30 s");
    }
}

/// A `mcp-ledger serve` process, stopped with SIGTERM (which ends every session and commits
/// their last events before exiting).
pub struct ServeProcess {
    child: tokio::process::Child,
    pub url: String,
}

impl ServeProcess {
    /// Starts `serve` on 127.0.0.1:0 and reads the URL it prints for `server`.
    pub async fn start(config: &Path, server: &str) -> ServeProcess {
        let mut child = tokio::process::Command::new(BIN)
            .arg("serve")
            .arg("--config")
            .arg(config)
            .args(["--listen", "127.0.0.1:0"])
            .env("MCP_LEDGER_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start mcp-ledger serve");
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let wanted = format!("serving {server} at ");
        let url = tokio::time::timeout(WAIT, async {
            while let Some(line) = lines.next_line().await.expect("read serve's stdout") {
                if let Some(url) = line.strip_prefix(&wanted) {
                    return url.trim().to_owned();
                }
            }
            panic!("mcp-ledger serve exited without printing its address");
        })
        .await
        .expect("mcp-ledger serve prints its address");
        // Keep reading stdout so that the process never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        ServeProcess { child, url }
    }

    pub async fn stop(mut self) {
        let pid = self.child.id().expect("serve is running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid} failed");
        let exit = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("serve exits within 30 s of SIGTERM")
            .expect("wait for serve");
        assert!(exit.success(), "serve exited with {exit} after SIGTERM");
    }
}

/// Writes a configuration with one `[[servers]]` entry named `name`: `upstream` is the TOML of
/// its transport (`url = "…"` or `command = […]` and `env`).
pub fn write_config(dir: &Path, ledger_url: &str, name: &str, upstream: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        "[ledger]\nurl = {ledger}\n\n[[servers]]\nname = {name}\n{upstream}\n",
        ledger = toml_string(ledger_url),
        name = toml_string(name),
    );
    std::fs::write(&path, text).expect("write the config");
    path
}

/// A TOML basic string.
pub fn toml_string(text: &str) -> String {
    serde_json::to_string(text).expect("a JSON string is a TOML basic string here")
}
