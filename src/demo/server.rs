//! The demo's upstream MCP server, `customer-ops`: a small customer-operations tool server
//! (lookup, email, refund, plus one prompt and one resource) over an in-memory fixture.
//!
//! It is the thing `mcp-ledger demo` puts behind the proxy, and the in-process upstream that
//! tests drive. Its optional call log records every `tools/call` the moment it arrives, before
//! it is handled, so a test can prove that a call the proxy refused never reached the upstream.

use std::{
    path::PathBuf,
    sync::atomic::{AtomicU64, Ordering},
};

use anyhow::Context as _;
use rmcp::{
    ErrorData as McpError, Json, RoleServer, ServerHandler, ServiceExt,
    handler::server::{
        router::{prompt::PromptRouter, tool::ToolRouter},
        tool::ToolCallContext,
        wrapper::Parameters,
    },
    model::{
        CallToolRequestParams, CallToolResponse, GetPromptResult, Implementation, JsonObject,
        ListResourcesResult, PaginatedRequestParams, PromptMessage, ReadResourceRequestParams,
        ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, Role,
        ServerCapabilities, ServerConfig,
    },
    prompt, prompt_handler, prompt_router,
    service::RequestContext,
    tool, tool_handler, tool_router,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    sync::Mutex,
};

/// The one resource this server exposes.
pub const DIRECTORY_URI: &str = "customers://directory";

/// Refunds above this (in major currency units) need a human, so the tool refuses them.
const MAX_REFUND: f64 = 10_000.0;

const INSTRUCTIONS: &str = "Customer operations for the support team. Use lookup_customer \
before acting on an account; send_email queues a message to a customer; issue_refund refunds \
between 0 and 10000 in the account's currency and always needs a reason. The \
customers://directory resource lists every customer; the draft_apology prompt drafts an apology.";

/// Serves `customer-ops` on this process's stdin/stdout until the client disconnects.
/// Nothing but protocol goes to stdout; logs go to stderr through `tracing`.
pub async fn serve_stdio(call_log: Option<PathBuf>) -> anyhow::Result<()> {
    let (stdin, stdout) = rmcp::transport::stdio();
    serve_io(stdin, stdout, call_log).await
}

/// Serves `customer-ops` over any byte stream pair (a pipe, a `tokio::io::duplex` half) until the
/// client disconnects. `call_log`, when given, is opened for append before the handshake.
pub async fn serve_io<R, W>(reader: R, writer: W, call_log: Option<PathBuf>) -> anyhow::Result<()>
where
    R: AsyncRead + Send + Unpin + 'static,
    W: AsyncWrite + Send + Unpin + 'static,
{
    let call_log = match call_log {
        Some(path) => Some(CallLog::open(path).await?),
        None => None,
    };
    let running = CustomerOps::new(call_log)
        .serve((reader, writer))
        .await
        .context("customer-ops could not complete the mcp handshake")?;
    let reason = running.waiting().await.context("customer-ops service task failed")?;
    tracing::debug!(?reason, "customer-ops stopped");
    Ok(())
}

/// Serves `customer-ops` over MCP Streamable HTTP at `http://<listener>/mcp` (rmcp's server,
/// one session per `initialize`, no SSE keep-alives) until `stop` is cancelled. The benchmark
/// runs it in process as the fast HTTP upstream that clients call directly and through `serve`.
pub async fn serve_http(
    listener: tokio::net::TcpListener,
    stop: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    };
    let service = StreamableHttpService::new(
        || Ok(CustomerOps::new(None)),
        std::sync::Arc::new(LocalSessionManager::default()),
        StreamableHttpServerConfig::default()
            .with_sse_keep_alive(None)
            .with_cancellation_token(stop.child_token()),
    );
    let router = axum::Router::new().nest_service("/mcp", service);
    // An SSE answer is written in several small pieces; without TCP_NODELAY, Nagle's algorithm
    // holds the last one back until the client's delayed ACK, some 40 ms later.
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await
}

/// One account in the fixture. Amounts are in minor units so nothing is lost to floats.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Customer {
    /// Stable customer id, e.g. `cus_1001`.
    pub id: &'static str,
    pub name: &'static str,
    pub email: &'static str,
    /// Subscription plan: `starter`, `business` or `enterprise`.
    pub plan: &'static str,
    /// Account status: `active`, `past_due` or `suspended`.
    pub status: &'static str,
    /// Outstanding balance in minor units of `currency` (negative means credit).
    pub balance_cents: i64,
    /// ISO 4217 currency code of the account.
    pub currency: &'static str,
    /// Date the account was opened (YYYY-MM-DD).
    pub customer_since: &'static str,
}

/// The demo's customers; ids, names and addresses are what the scripted agent and tests use.
#[rustfmt::skip] // a table reads better than 50 lines of one field each
pub static CUSTOMERS: [Customer; 5] = [
    Customer { id: "cus_1001", name: "Dana Whitfield", email: "dana.whitfield@example.com",
               plan: "business", status: "active", balance_cents: 4_250, currency: "USD", customer_since: "2021-03-14" },
    Customer { id: "cus_1002", name: "Marcus Okafor", email: "marcus.okafor@example.com",
               plan: "starter", status: "past_due", balance_cents: 12_900, currency: "USD", customer_since: "2023-08-02" },
    Customer { id: "cus_1003", name: "Priya Raman", email: "priya.raman@example.org",
               plan: "enterprise", status: "active", balance_cents: 0, currency: "EUR", customer_since: "2019-11-27" },
    Customer { id: "cus_1004", name: "Tomás Ibarra", email: "tomas.ibarra@example.net",
               plan: "business", status: "active", balance_cents: -1_500, currency: "EUR", customer_since: "2022-05-09" },
    Customer { id: "cus_1005", name: "Hannah Lindqvist", email: "hannah.lindqvist@example.com",
               plan: "starter", status: "suspended", balance_cents: 38_775, currency: "SEK", customer_since: "2024-01-18" },
];

#[derive(Debug, Deserialize, JsonSchema)]
struct LookupCustomerArgs {
    /// The customer's id, e.g. `cus_1001`.
    customer_id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct SendEmailArgs {
    /// Recipient email address.
    #[schemars(email)]
    to: String,
    /// Subject line.
    subject: String,
    /// Plain-text message body.
    body: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct IssueRefundArgs {
    /// The customer to refund, e.g. `cus_1001`.
    customer_id: String,
    /// Amount in major units of `currency`: greater than 0 and at most 10000.
    amount: f64,
    /// ISO 4217 currency code, e.g. `USD`.
    currency: String,
    /// Why the refund is issued; shown to auditors.
    reason: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
struct DraftApologyArgs {
    /// The customer to apologise to, e.g. `cus_1001`.
    customer_id: String,
    /// What went wrong, in a few words (optional).
    issue: Option<String>,
}

/// Appends one JSON line per received `tools/call`; the mutex keeps concurrent lines whole.
struct CallLog {
    file: Mutex<tokio::fs::File>,
}

impl CallLog {
    async fn open(path: PathBuf) -> anyhow::Result<Self> {
        let file = tokio::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .await
            .with_context(|| format!("could not open call log {}", path.display()))?;
        Ok(Self { file: Mutex::new(file) })
    }

    async fn append(&self, tool: &str, arguments: &JsonObject) -> std::io::Result<()> {
        let mut line =
            serde_json::to_vec(&serde_json::json!({ "tool": tool, "arguments": arguments }))?;
        line.push(b'\n');
        let mut file = self.file.lock().await;
        file.write_all(&line).await?;
        // tokio's File writes in the background; flush waits until the line is in the file.
        file.flush().await
    }
}

struct CustomerOps {
    call_log: Option<CallLog>,
    messages_sent: AtomicU64,
    refunds_issued: AtomicU64,
    tool_router: ToolRouter<Self>,
    prompt_router: PromptRouter<Self>,
}

fn unknown_customer(id: &str) -> String {
    format!("no customer with id `{id}`")
}

/// Deliberately loose: enough to catch an agent passing a name or an id where an address goes.
fn looks_like_email(address: &str) -> bool {
    match address.split_once('@') {
        Some((local, domain)) => {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
                && !address.contains(char::is_whitespace)
        }
        None => false,
    }
}

#[tool_router]
impl CustomerOps {
    fn new(call_log: Option<CallLog>) -> Self {
        Self {
            call_log,
            messages_sent: AtomicU64::new(0),
            refunds_issued: AtomicU64::new(0),
            tool_router: Self::tool_router(),
            prompt_router: Self::prompt_router(),
        }
    }

    fn find(&self, id: &str) -> Option<&'static Customer> {
        CUSTOMERS.iter().find(|customer| customer.id == id)
    }

    #[tool(
        description = "Look up a customer's account (name, email, plan, status, balance) by customer id.",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn lookup_customer(
        &self,
        Parameters(args): Parameters<LookupCustomerArgs>,
    ) -> Result<Json<Customer>, String> {
        self.find(&args.customer_id)
            .cloned()
            .map(Json)
            .ok_or_else(|| unknown_customer(&args.customer_id))
    }

    #[tool(
        description = "Queue an email to a customer. Returns the id of the queued message.",
        annotations(read_only_hint = false, destructive_hint = false, open_world_hint = true)
    )]
    async fn send_email(
        &self,
        Parameters(args): Parameters<SendEmailArgs>,
    ) -> Result<String, String> {
        if !looks_like_email(&args.to) {
            return Err(format!("recipient `{}` is not an email address", args.to));
        }
        if args.subject.trim().is_empty() {
            return Err("email subject is empty".to_owned());
        }
        let n = self.messages_sent.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::info!(to = %args.to, body_len = args.body.len(), "queued demo email");
        Ok(format!("queued message msg_{n:04} to {}", args.to))
    }

    #[tool(
        description = "Refund a customer. amount is in major units of currency, greater than 0 and at most 10000.",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = false,
            open_world_hint = true
        )
    )]
    async fn issue_refund(
        &self,
        Parameters(args): Parameters<IssueRefundArgs>,
    ) -> Result<String, String> {
        let customer =
            self.find(&args.customer_id).ok_or_else(|| unknown_customer(&args.customer_id))?;
        // Written so that NaN fails too.
        if !(args.amount > 0.0 && args.amount <= MAX_REFUND) {
            return Err(format!(
                "refund amount {} is out of range: it must be greater than 0 and at most {MAX_REFUND}",
                args.amount
            ));
        }
        let currency = args.currency.trim().to_ascii_uppercase();
        if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_alphabetic()) {
            return Err(format!("currency `{}` is not an ISO 4217 code", args.currency));
        }
        if args.reason.trim().is_empty() {
            return Err("refund reason is empty".to_owned());
        }
        let n = self.refunds_issued.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(format!(
            "refund re_{n:04} of {:.2} {currency} issued to {} ({}): {}",
            args.amount, customer.id, customer.name, args.reason
        ))
    }
}

#[prompt_router]
impl CustomerOps {
    #[prompt(
        name = "draft_apology",
        description = "Draft a short apology email to a customer about a problem with their account."
    )]
    async fn draft_apology(
        &self,
        Parameters(args): Parameters<DraftApologyArgs>,
    ) -> Result<GetPromptResult, McpError> {
        let customer = self
            .find(&args.customer_id)
            .ok_or_else(|| McpError::invalid_params(unknown_customer(&args.customer_id), None))?;
        let issue = args.issue.as_deref().unwrap_or("a recent problem with their account");
        let text = format!(
            "Write a short, sincere apology email to {name} <{email}> ({plan} plan, account {id}) \
             about {issue}. Do not promise a refund; offer to look into it today.",
            name = customer.name,
            email = customer.email,
            plan = customer.plan,
            id = customer.id,
        );
        Ok(GetPromptResult::new(vec![PromptMessage::new_text(Role::User, text)])
            .with_description(format!("apology to {}", customer.name)))
    }
}

#[tool_handler(router = self.tool_router)]
#[prompt_handler(router = self.prompt_router)]
impl ServerHandler for CustomerOps {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_prompts()
                .enable_resources()
                .build(),
        )
        .with_server_info(Implementation::new("customer-ops", env!("CARGO_PKG_VERSION")))
        .with_instructions(INSTRUCTIONS)
    }

    // Written by hand (instead of letting #[tool_handler] generate it) so that the call log is
    // appended before the router even looks at the tool name.
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        if let Some(log) = &self.call_log {
            let arguments = request.arguments.clone().unwrap_or_default();
            if let Err(error) = log.append(&request.name, &arguments).await {
                tracing::error!(%error, tool = %request.name, "could not append to the call log");
                return Err(McpError::internal_error("could not append to the call log", None));
            }
        }
        self.tool_router.call(ToolCallContext::new(self, request, context)).await
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        let directory = Resource::new(DIRECTORY_URI, "customer-directory")
            .with_title("Customer directory")
            .with_description("Every customer's id, name, email, plan and status")
            .with_mime_type("application/json");
        Ok(ListResourcesResult::with_all_items(vec![directory]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        if request.uri != DIRECTORY_URI {
            return Err(McpError::resource_not_found(
                format!("no resource at `{}`", request.uri),
                None,
            ));
        }
        let entries: Vec<_> = CUSTOMERS
            .iter()
            .map(|c| {
                serde_json::json!({
                    "id": c.id, "name": c.name, "email": c.email, "plan": c.plan, "status": c.status,
                })
            })
            .collect();
        let text = serde_json::to_string_pretty(&entries).map_err(|e| {
            McpError::internal_error(format!("could not encode the directory: {e}"), None)
        })?;
        let contents =
            ResourceContents::text(text, DIRECTORY_URI).with_mime_type("application/json");
        Ok(ReadResourceResult::new(vec![contents]).into())
    }
}

#[cfg(test)]
mod tests {
    use rmcp::{
        RoleClient,
        model::{CallToolResult, GetPromptRequestParams},
        service::RunningService,
    };
    use serde_json::{Value, json};

    use super::*;

    type Client = RunningService<RoleClient, ()>;

    /// Runs customer-ops in-process over a duplex pipe and connects a plain rmcp client to it.
    async fn connect(
        call_log: Option<PathBuf>,
    ) -> (Client, tokio::task::JoinHandle<anyhow::Result<()>>) {
        let (client_io, server_io) = tokio::io::duplex(64 * 1024);
        let (reader, writer) = tokio::io::split(server_io);
        let server = tokio::spawn(serve_io(reader, writer, call_log));
        let client = ().serve(client_io).await.expect("client handshake");
        (client, server)
    }

    async fn call(client: &Client, tool: &str, arguments: Value) -> CallToolResult {
        let arguments = arguments.as_object().cloned().expect("arguments are an object");
        let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(arguments);
        client.call_tool(params).await.expect("tools/call answered")
    }

    fn text(result: &CallToolResult) -> &str {
        &result.content[0].as_text().expect("text content").text
    }

    #[tokio::test]
    async fn advertises_identity_capabilities_and_schemas() {
        let (client, _server) = connect(None).await;
        let info = client.peer_info().expect("server info after handshake");
        let implementation = info.server_info.as_ref().expect("serverInfo");
        assert_eq!(implementation.name, "customer-ops");
        assert!(info.instructions.as_deref().is_some_and(|i| i.contains("issue_refund")));
        assert!(info.capabilities.tools.is_some());
        assert!(info.capabilities.prompts.is_some());
        assert!(info.capabilities.resources.is_some());

        let tools = client.list_all_tools().await.expect("tools/list");
        let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        assert_eq!(names, ["issue_refund", "lookup_customer", "send_email"]);
        let schema = |name: &str| {
            let tool = tools.iter().find(|t| t.name == name).expect("tool listed");
            Value::Object((*tool.input_schema).clone())
        };
        assert_eq!(schema("send_email")["properties"]["to"]["format"], "email");
        assert_eq!(
            schema("issue_refund")["required"],
            json!(["customer_id", "amount", "currency", "reason"])
        );
        let lookup = tools.iter().find(|t| t.name == "lookup_customer").expect("lookup");
        let output =
            Value::Object((**lookup.output_schema.as_ref().expect("outputSchema")).clone());
        assert!(output["properties"]["email"].is_object());
    }

    #[tokio::test]
    async fn lookup_returns_structured_record_or_tool_error() {
        let (client, _server) = connect(None).await;
        let found = call(&client, "lookup_customer", json!({ "customer_id": "cus_1001" })).await;
        assert_eq!(found.is_error, Some(false));
        let record = found.structured_content.clone().expect("structuredContent");
        assert_eq!(record["name"], "Dana Whitfield");
        assert_eq!(record["email"], "dana.whitfield@example.com");
        assert_eq!(record["balance_cents"], 4250);
        // The text block carries the same JSON for clients that ignore structuredContent.
        assert_eq!(serde_json::from_str::<Value>(text(&found)).expect("json text"), record);

        let missing = call(&client, "lookup_customer", json!({ "customer_id": "cus_9999" })).await;
        assert_eq!(missing.is_error, Some(true));
        assert_eq!(text(&missing), "no customer with id `cus_9999`");
        assert!(missing.structured_content.is_none());
    }

    #[tokio::test]
    async fn send_email_queues_or_rejects_the_address() {
        let (client, _server) = connect(None).await;
        let email = json!({ "to": "dana.whitfield@example.com", "subject": "Hi", "body": "Hello" });
        let sent = call(&client, "send_email", email).await;
        assert_eq!(sent.is_error, Some(false));
        assert_eq!(text(&sent), "queued message msg_0001 to dana.whitfield@example.com");

        let bad = json!({ "to": "Dana Whitfield", "subject": "Hi", "body": "Hello" });
        let rejected = call(&client, "send_email", bad).await;
        assert_eq!(rejected.is_error, Some(true));
        assert!(text(&rejected).contains("`Dana Whitfield` is not an email address"));
    }

    #[tokio::test]
    async fn issue_refund_validates_amount_customer_and_currency() {
        let (client, _server) = connect(None).await;
        let refund = |customer: &str, amount: f64, currency: &str| {
            json!({ "customer_id": customer, "amount": amount, "currency": currency,
                    "reason": "duplicate charge" })
        };
        let ok = call(&client, "issue_refund", refund("cus_1001", 42.5, "usd")).await;
        assert_eq!(ok.is_error, Some(false));
        assert_eq!(
            text(&ok),
            "refund re_0001 of 42.50 USD issued to cus_1001 (Dana Whitfield): duplicate charge"
        );
        let at_limit = call(&client, "issue_refund", refund("cus_1003", 10_000.0, "EUR")).await;
        assert_eq!(at_limit.is_error, Some(false));
        assert!(text(&at_limit).starts_with("refund re_0002 of 10000.00 EUR"));

        for (args, expected) in [
            (refund("cus_1001", 0.0, "USD"), "refund amount 0 is out of range"),
            (refund("cus_1001", -5.0, "USD"), "refund amount -5 is out of range"),
            (refund("cus_1001", 10_000.01, "USD"), "refund amount 10000.01 is out of range"),
            (refund("cus_4242", 10.0, "USD"), "no customer with id `cus_4242`"),
            (refund("cus_1001", 10.0, "dollars"), "currency `dollars` is not an ISO 4217 code"),
        ] {
            let result = call(&client, "issue_refund", args).await;
            assert_eq!(result.is_error, Some(true), "{expected}");
            assert!(text(&result).starts_with(expected), "{}", text(&result));
        }
    }

    #[tokio::test]
    async fn malformed_arguments_are_a_tool_error_and_unknown_tools_a_protocol_error() {
        let (client, _server) = connect(None).await;
        // rmcp answers a failed argument deserialization in-band (isError), not as -32602.
        let missing = call(&client, "issue_refund", json!({ "customer_id": "cus_1001" })).await;
        assert_eq!(missing.is_error, Some(true));
        assert!(text(&missing).contains("missing field"), "{}", text(&missing));

        let params = CallToolRequestParams::new("delete_customer");
        let error = client.call_tool(params).await.expect_err("unknown tool");
        match error {
            rmcp::ServiceError::McpError(e) => {
                assert_eq!(e.code, rmcp::model::ErrorCode::INVALID_PARAMS)
            }
            other => panic!("expected a JSON-RPC error, got {other}"),
        }
    }

    #[tokio::test]
    async fn directory_resource_and_apology_prompt() {
        let (client, _server) = connect(None).await;
        let resources = client.list_all_resources().await.expect("resources/list");
        assert_eq!(resources.len(), 1);
        assert_eq!(resources[0].uri, DIRECTORY_URI);

        let read = client
            .read_resource(ReadResourceRequestParams::new(DIRECTORY_URI))
            .await
            .expect("resources/read");
        let ResourceContents::TextResourceContents { text, mime_type, .. } = &read.contents[0]
        else {
            panic!("expected text contents");
        };
        assert_eq!(mime_type.as_deref(), Some("application/json"));
        let directory: Vec<Value> = serde_json::from_str(text).expect("directory is json");
        assert_eq!(directory.len(), CUSTOMERS.len());
        assert_eq!(directory[3]["name"], "Tomás Ibarra");
        let unknown =
            client.read_resource(ReadResourceRequestParams::new("customers://nope")).await;
        assert!(unknown.is_err());

        let prompts = client.list_all_prompts().await.expect("prompts/list");
        assert_eq!(prompts.len(), 1);
        assert_eq!(prompts[0].name, "draft_apology");
        let arguments = json!({ "customer_id": "cus_1002", "issue": "a failed card payment" });
        let get = GetPromptRequestParams::new("draft_apology")
            .with_arguments(arguments.as_object().cloned().expect("object"));
        let prompt = client.get_prompt(get).await.expect("prompts/get");
        let message = prompt.messages[0].content.as_text().expect("text").text.clone();
        assert!(message.contains("Marcus Okafor <marcus.okafor@example.com>"));
        assert!(message.contains("a failed card payment"));
        let unknown = GetPromptRequestParams::new("draft_apology").with_arguments(
            json!({ "customer_id": "cus_0" }).as_object().cloned().expect("object"),
        );
        assert!(client.get_prompt(unknown).await.is_err());
    }

    #[tokio::test]
    async fn call_log_records_every_call_before_handling_and_server_exits_on_close() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("calls.jsonl");
        // A pre-existing line proves the log is appended to, not truncated.
        std::fs::write(&path, "{\"tool\":\"earlier\",\"arguments\":{}}\n").expect("seed log");
        let (client, server) = connect(Some(path.clone())).await;

        let sent = [
            ("lookup_customer", json!({ "customer_id": "cus_9999" })),
            (
                "issue_refund",
                json!({ "customer_id": "cus_1001", "amount": -1, "currency": "USD", "reason": "x" }),
            ),
            ("no_such_tool", json!({ "anything": [1, 2] })),
        ];
        for (tool, arguments) in &sent {
            let params = CallToolRequestParams::new(tool.to_string())
                .with_arguments(arguments.as_object().cloned().expect("object"));
            // Failed and unknown calls are logged too: the log is about what arrived.
            let _ = client.call_tool(params).await;
        }
        // Lines are flushed before the response is sent, so they are visible now.
        let lines: Vec<Value> = std::fs::read_to_string(&path)
            .expect("read log")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        assert_eq!(lines.len(), 1 + sent.len());
        for (line, (tool, arguments)) in lines[1..].iter().zip(&sent) {
            assert_eq!(line, &json!({ "tool": tool, "arguments": arguments }));
        }

        client.cancel().await.expect("client closes");
        let served = tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .expect("server stops when the client disconnects")
            .expect("server task joins");
        assert!(served.is_ok(), "{served:?}");
    }

    #[tokio::test]
    async fn unopenable_call_log_is_an_error_naming_the_path() {
        let (_client_io, server_io) = tokio::io::duplex(1024);
        let (reader, writer) = tokio::io::split(server_io);
        let path = PathBuf::from("/nonexistent-dir/calls.jsonl");
        let error = serve_io(reader, writer, Some(path)).await.expect_err("must fail");
        assert!(
            format!("{error:#}").contains("could not open call log /nonexistent-dir/calls.jsonl")
        );
    }
}
