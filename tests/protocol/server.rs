//! The in-process upstream: an rmcp server exposing every MCP feature, served with rmcp's
//! Streamable HTTP server on 127.0.0.1:0. It keeps what it observed (the log level, the
//! subscriptions, a cancellation) in a [`ServerState`] the test can wait on.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, CancelledNotificationParam,
    CompleteRequestParams, CompleteResult, CreateMessageRequest, CreateMessageRequestParams,
    CustomNotification, CustomRequest, CustomResult, ElicitRequest, ElicitRequestParams,
    GetPromptRequestParams, GetPromptResponse, GetPromptResult, Implementation, ListPromptsResult,
    ListResourceTemplatesResult, ListResourcesResult, ListRootsRequest, ListToolsResult,
    LoggingLevel, LoggingMessageNotificationParam, PaginatedRequestParams, PingRequest,
    ProgressNotificationParam, ReadResourceRequestParams, ReadResourceResponse, ReadResourceResult,
    ResourceUpdatedNotificationParam, ServerCapabilities, ServerConfig, ServerNotification,
    ServerRequest, SetLevelRequestParams, SubscribeRequestParams, UnsubscribeRequestParams,
};
use rmcp::service::{NotificationContext, RequestContext, RoleServer};
use rmcp::transport::streamable_http_server::{
    StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
};
use rmcp::{ErrorData, ServerHandler};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

/// A custom notification the server sends on request, to learn that the client's standalone
/// stream is up (see [`super::client::Session::await_standalone_stream`]).
pub const BEACON: &str = "notifications/x-protocol-test/beacon";

/// The resources the server lists; the first can be subscribed to.
pub const TEXT_URI: &str = "test://features/readme.txt";
pub const BLOB_URI: &str = "test://features/logo.bin";

/// What the server observed, shared between the handler (one per session) and the test.
#[derive(Default)]
pub struct ServerState {
    level: Mutex<Option<LoggingLevel>>,
    subscriptions: Mutex<BTreeSet<String>>,
    /// Set once the `slow` tool has started, so the client knows when to cancel it.
    pub slow_started: watch::Sender<bool>,
    /// The JSON-RPC id the server saw for the `slow` call.
    pub slow_request_id: watch::Sender<Value>,
    /// What the `slow` tool saw: `{"cancelled": true}` once its request was cancelled.
    pub slow_outcome: watch::Sender<Option<Value>>,
    /// Every `notifications/cancelled` the server handler received, as its params.
    pub cancellations: watch::Sender<Vec<Value>>,
    /// Custom notifications the client sent.
    pub custom_notifications: watch::Sender<Vec<Value>>,
    /// Releases what `announce_later` left waiting: a notification sent outside any request.
    pub release: Notify,
    /// The roots the server asked for, on its own, after `notifications/roots/list_changed`.
    pub roots_after_change: watch::Sender<Option<Value>>,
}

#[derive(Clone)]
pub struct FeatureServer(pub Arc<ServerState>);

/// A running in-process server: its URL, its state, and the token that stops it.
pub struct RunningServer {
    pub url: String,
    pub state: Arc<ServerState>,
    stop: CancellationToken,
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Serves a fresh [`FeatureServer`] on 127.0.0.1:0 at `/mcp`.
pub async fn start() -> RunningServer {
    let state = Arc::new(ServerState::default());
    let stop = CancellationToken::new();
    let handler_state = state.clone();
    let service = StreamableHttpService::new(
        move || Ok(FeatureServer(handler_state.clone())),
        Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default()
            .with_sse_keep_alive(None)
            .with_cancellation_token(stop.child_token()),
    );
    let router = axum::Router::new().nest_service("/mcp", service);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}/mcp", listener.local_addr().expect("local addr"));
    let shutdown = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled_owned().await })
            .await;
    });
    RunningServer { url, state, stop }
}

fn typed<T: DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("the test's own JSON does not fit the rmcp type: {e}: {value}"))
}

fn internal(error: impl std::fmt::Display) -> ErrorData {
    ErrorData::internal_error(error.to_string(), None)
}

fn text_result(text: &str, structured: Value) -> CallToolResult {
    typed(json!({
        "content": [{"type": "text", "text": text}],
        "structuredContent": structured,
        "isError": false,
    }))
}

/// The agent's answer to a server-to-agent request, or the JSON-RPC error it answered with.
fn agent_answer(
    answer: Result<rmcp::model::ClientResult, rmcp::service::ServiceError>,
) -> Result<Value, ErrorData> {
    match answer {
        Ok(result) => Ok(json!({ "answer": result })),
        Err(rmcp::service::ServiceError::McpError(error)) => Ok(json!({ "agent_error": error })),
        Err(other) => Err(internal(other)),
    }
}

/// Severity order of the MCP logging levels (RFC 5424, lowest first).
const LEVELS: [&str; 8] =
    ["debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"];

fn level_name(level: LoggingLevel) -> String {
    serde_json::to_value(level).expect("serialises").as_str().expect("a string").to_owned()
}

fn rank(level: &str) -> usize {
    LEVELS.iter().position(|l| *l == level).expect("a known level")
}

impl FeatureServer {
    async fn tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let arguments = Value::Object(request.arguments.clone().unwrap_or_default());
        let peer = &context.peer;
        match request.name.as_ref() {
            "echo" => Ok(text_result("echoed", json!({ "arguments": arguments }))),
            "fail" => Ok(typed(json!({
                "content": [{"type": "text", "text": "the tool failed on purpose"}],
                "isError": true,
            }))),
            "announce" => {
                peer.notify_tool_list_changed().await.map_err(internal)?;
                peer.notify_prompt_list_changed().await.map_err(internal)?;
                peer.notify_resource_list_changed().await.map_err(internal)?;
                Ok(text_result(
                    "announced",
                    json!({ "announced": ["tools", "prompts", "resources"] }),
                ))
            }
            "announce_later" => {
                // Sent from a task of its own once the test releases it, so it belongs to no
                // request: rmcp puts it on the standalone stream.
                let state = self.0.clone();
                let peer = peer.clone();
                tokio::spawn(async move {
                    state.release.notified().await;
                    let _ = peer.notify_tool_list_changed().await;
                });
                Ok(text_result("will announce", json!({})))
            }
            "touch" => {
                let subscribed: Vec<String> =
                    self.0.subscriptions.lock().expect("lock").iter().cloned().collect();
                for uri in &subscribed {
                    peer.notify_resource_updated(ResourceUpdatedNotificationParam::new(uri))
                        .await
                        .map_err(internal)?;
                }
                Ok(text_result("touched", json!({ "notified": subscribed })))
            }
            "log" => {
                let threshold = *self.0.level.lock().expect("lock");
                let threshold = threshold.map(level_name).unwrap_or_else(|| "debug".to_owned());
                let mut emitted = Vec::new();
                for level in LEVELS.iter().filter(|l| rank(l) >= rank(&threshold)) {
                    let param = LoggingMessageNotificationParam::new(
                        typed(json!(level)),
                        json!({ "message": format!("a {level} message"), "n": rank(level) }),
                    )
                    .with_logger("protocol-test");
                    peer.notify_logging_message(param).await.map_err(internal)?;
                    emitted.push(*level);
                }
                Ok(text_result("logged", json!({ "threshold": threshold, "emitted": emitted })))
            }
            "beacon" => {
                let note = CustomNotification::new(BEACON, Some(arguments.clone()));
                peer.send_notification(ServerNotification::CustomNotification(note))
                    .await
                    .map_err(internal)?;
                Ok(text_result("beacon sent", json!({})))
            }
            "progress" => {
                let token = context
                    .meta
                    .get_progress_token()
                    .ok_or_else(|| ErrorData::invalid_params("no progress token", None))?;
                for step in 1..=3 {
                    let param = ProgressNotificationParam::new(token.clone(), f64::from(step))
                        .with_total(3.0)
                        .with_message(format!("step {step} of 3"));
                    peer.notify_progress(param).await.map_err(internal)?;
                }
                Ok(text_result("progressed", json!({ "steps": 3 })))
            }
            "slow" => {
                self.0
                    .slow_request_id
                    .send_replace(serde_json::to_value(&context.id).map_err(internal)?);
                self.0.slow_started.send_replace(true);
                tokio::select! {
                    _ = context.ct.cancelled() => {
                        self.0.slow_outcome.send_replace(Some(json!({ "cancelled": true })));
                        Ok(text_result("cancelled", json!({})))
                    }
                    _ = tokio::time::sleep(Duration::from_secs(30)) => {
                        self.0.slow_outcome.send_replace(Some(json!({ "cancelled": false })));
                        Ok(text_result("finished without being cancelled", json!({})))
                    }
                }
            }
            "sample" => {
                let refuse = arguments["refuse"] == json!(true);
                let params: CreateMessageRequestParams = typed(json!({
                    "messages": [
                        {"role": "user", "content": {"type": "text", "text": "What is 2 + 2?"}}
                    ],
                    "systemPrompt": "Answer briefly.",
                    "maxTokens": 32,
                    "temperature": 0.5,
                    "stopSequences": ["\n\n"],
                    "metadata": {"purpose": "protocol-test", "refuse": refuse},
                }));
                let request = CreateMessageRequest::new(params);
                let answer = peer.send_request(ServerRequest::CreateMessageRequest(request)).await;
                Ok(text_result("sampled", agent_answer(answer)?))
            }
            "elicit" => {
                let message = match arguments["decline"] == json!(true) {
                    true => "Who are you? (decline this)",
                    false => "Who are you?",
                };
                let params: ElicitRequestParams = typed(json!({
                    "mode": "form",
                    "message": message,
                    "requestedSchema": {
                        "type": "object",
                        "properties": {
                            "name": {"type": "string", "description": "Your name"},
                            "age": {"type": "integer", "minimum": 0}
                        },
                        "required": ["name"]
                    }
                }));
                let answer = peer
                    .send_request(ServerRequest::ElicitRequest(ElicitRequest::new(params)))
                    .await;
                Ok(text_result("elicited", agent_answer(answer)?))
            }
            "roots" => {
                let answer = peer
                    .send_request(ServerRequest::ListRootsRequest(ListRootsRequest::default()))
                    .await
                    .map_err(internal)?;
                Ok(text_result("listed roots", json!({ "answer": answer })))
            }
            "ping_client" => {
                let answer = peer
                    .send_request(ServerRequest::PingRequest(PingRequest::default()))
                    .await
                    .map_err(internal)?;
                Ok(text_result("pinged the client", json!({ "answer": answer })))
            }
            "ask_custom" => {
                let request = CustomRequest::new(
                    "x-protocol-test/ask",
                    Some(json!({ "question": "custom?", "nested": {"list": [1, "two", null]} })),
                );
                let answer = peer
                    .send_request(ServerRequest::CustomRequest(request))
                    .await
                    .map_err(internal)?;
                let note = CustomNotification::new(
                    "notifications/x-protocol-test/server-said",
                    Some(json!({ "after": "ask_custom" })),
                );
                peer.send_notification(ServerNotification::CustomNotification(note))
                    .await
                    .map_err(internal)?;
                Ok(text_result("asked", json!({ "answer": answer })))
            }
            _ => Err(ErrorData::invalid_params(format!("no tool named {}", request.name), None)),
        }
    }
}

fn tool_list() -> Value {
    let object = |properties: Value, required: Value| json!({"type": "object", "properties": properties, "required": required});
    let empty = json!({"type": "object", "properties": {}});
    json!({
        "tools": [
            {
                "name": "echo",
                "title": "Echo",
                "description": "Returns its arguments as structured content",
                "inputSchema": object(
                    json!({"text": {"type": "string"}, "n": {"type": "array"}}),
                    json!(["text"]),
                ),
                "outputSchema": {"type": "object", "properties": {"arguments": {"type": "object"}}},
                "annotations": {"readOnlyHint": true, "idempotentHint": true},
                "_meta": {"example.com/tag": "plain"}
            },
            {"name": "fail", "description": "Always reports a tool error", "inputSchema": empty},
            {"name": "announce", "description": "Sends the list_changed notifications", "inputSchema": empty},
            {"name": "announce_later", "description": "Sends tools/list_changed when released", "inputSchema": empty},
            {"name": "touch", "description": "Updates subscribed resources", "inputSchema": empty},
            {"name": "log", "description": "Logs at every level", "inputSchema": empty},
            {"name": "beacon", "description": "Sends a custom notification", "inputSchema": empty},
            {"name": "progress", "description": "Reports progress 3 times", "inputSchema": empty},
            {"name": "slow", "description": "Waits until cancelled", "inputSchema": empty},
            {"name": "sample", "description": "Asks the client's model", "inputSchema": empty},
            {"name": "elicit", "description": "Asks the user", "inputSchema": empty},
            {"name": "roots", "description": "Lists the client's roots", "inputSchema": empty},
            {"name": "ping_client", "description": "Pings the client", "inputSchema": empty},
            {"name": "ask_custom", "description": "Sends a custom request", "inputSchema": empty}
        ]
    })
}

impl ServerHandler for FeatureServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_logging()
                .enable_completions()
                .enable_prompts()
                .enable_resources()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_resources_subscribe()
                .enable_resources_list_changed()
                .build(),
        )
        .with_server_info(Implementation::new("protocol-features", "1.2.3"))
        .with_instructions("Every MCP feature, for the proxy's protocol tests.")
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(typed(tool_list()))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        self.tool(request, context).await.map(CallToolResponse::from)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, ErrorData> {
        Ok(typed(json!({
            "resources": [
                {
                    "uri": TEXT_URI, "name": "readme", "title": "Read me",
                    "description": "A text resource", "mimeType": "text/plain", "size": 26,
                    "annotations": {"audience": ["user", "assistant"], "priority": 0.5}
                },
                {"uri": BLOB_URI, "name": "logo", "mimeType": "application/octet-stream"}
            ]
        })))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, ErrorData> {
        Ok(typed(json!({
            "resourceTemplates": [{
                "uriTemplate": "test://features/cities/{city}",
                "name": "city",
                "description": "A city by name",
                "mimeType": "application/json"
            }]
        })))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, ErrorData> {
        let contents = match request.uri.as_str() {
            TEXT_URI => json!([{
                "uri": TEXT_URI, "mimeType": "text/plain", "text": "héllo, \"resource\"\n\tline 2"
            }]),
            BLOB_URI => json!([{
                "uri": BLOB_URI, "mimeType": "application/octet-stream", "blob": "AAECAwT/"
            }]),
            uri if uri.starts_with("test://features/cities/") => json!([{
                "uri": uri, "mimeType": "application/json",
                "text": json!({"city": &uri["test://features/cities/".len()..]}).to_string()
            }]),
            _ => {
                return Err(ErrorData::resource_not_found(
                    format!("no resource at {}", request.uri),
                    Some(json!({ "uri": request.uri })),
                ));
            }
        };
        Ok(ReadResourceResult::new(typed(contents)).into())
    }

    async fn subscribe(
        &self,
        request: SubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.0.subscriptions.lock().expect("lock").insert(request.uri);
        Ok(())
    }

    async fn unsubscribe(
        &self,
        request: UnsubscribeRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        self.0.subscriptions.lock().expect("lock").remove(&request.uri);
        Ok(())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, ErrorData> {
        Ok(typed(json!({
            "prompts": [{
                "name": "greet",
                "title": "Greeting",
                "description": "Greets someone in a city",
                "arguments": [
                    {"name": "name", "description": "Who", "required": true},
                    {"name": "city", "description": "Where", "required": false}
                ]
            }]
        })))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, ErrorData> {
        if request.name != "greet" {
            return Err(ErrorData::invalid_params(format!("no prompt {}", request.name), None));
        }
        let arguments = request.arguments.unwrap_or_default();
        let name = arguments.get("name").and_then(Value::as_str).unwrap_or("nobody");
        let city = arguments.get("city").and_then(Value::as_str).unwrap_or("nowhere");
        let result: GetPromptResult = typed(json!({
            "description": "A greeting",
            "messages": [
                {"role": "user", "content": {"type": "text", "text": format!("Greet {name} from {city}.")}},
                {"role": "assistant", "content": {
                    "type": "resource",
                    "resource": {"uri": TEXT_URI, "mimeType": "text/plain", "text": "context"}
                }}
            ]
        }));
        Ok(result.into())
    }

    async fn complete(
        &self,
        request: CompleteRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<CompleteResult, ErrorData> {
        let request = serde_json::to_value(&request).map_err(internal)?;
        let prefix = request["argument"]["value"].as_str().unwrap_or_default().to_owned();
        let candidates: &[&str] = match request["argument"]["name"].as_str() {
            Some("city") => &["Lisbon", "Lima", "Linz", "London"],
            Some("name") => &["Ada", "Alan", "Grace"],
            _ => &[],
        };
        let values: Vec<&str> =
            candidates.iter().copied().filter(|c| c.starts_with(prefix.as_str())).collect();
        Ok(typed(json!({
            "completion": {"values": values, "total": values.len(), "hasMore": false}
        })))
    }

    async fn set_level(
        &self,
        request: SetLevelRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<(), ErrorData> {
        *self.0.level.lock().expect("lock") = Some(request.level);
        let param = LoggingMessageNotificationParam::new(
            request.level,
            json!({ "message": "log level set", "level": level_name(request.level) }),
        )
        .with_logger("protocol-test");
        context.peer.notify_logging_message(param).await.map_err(internal)?;
        Ok(())
    }

    async fn on_custom_request(
        &self,
        request: CustomRequest,
        _context: RequestContext<RoleServer>,
    ) -> Result<CustomResult, ErrorData> {
        Ok(CustomResult::new(json!({
            "method": request.method,
            "params": request.params,
            "answer": {"x-custom": true, "list": [1, 2, 3]},
        })))
    }

    async fn on_custom_notification(
        &self,
        notification: CustomNotification,
        _context: NotificationContext<RoleServer>,
    ) {
        let note = json!({ "method": notification.method, "params": notification.params });
        self.0.custom_notifications.send_modify(|notes| notes.push(note));
    }

    async fn on_roots_list_changed(&self, context: NotificationContext<RoleServer>) {
        // A server-to-client request made outside any client request.
        let roots = match context.peer.list_roots().await {
            Ok(roots) => serde_json::to_value(roots).expect("serialises"),
            Err(error) => json!({ "error": error.to_string() }),
        };
        self.0.roots_after_change.send_replace(Some(roots));
    }

    async fn on_cancelled(
        &self,
        notification: CancelledNotificationParam,
        _context: NotificationContext<RoleServer>,
    ) {
        let params = serde_json::to_value(notification).expect("serialises");
        self.0.cancellations.send_modify(|all| all.push(params));
    }
}
