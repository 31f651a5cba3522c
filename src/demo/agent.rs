//! The demo's scripted agent: an MCP client that plays a fixed, realistic customer-support session
//! (lookups, an email, refunds, a resource read, a prompt) against whatever server it is given —
//! in the demo, `mcp-ledger stdio` in front of `customer-ops` — and reports what happened to each
//! call. It never fails because a call failed: refused and failing calls are the point of the demo.

use std::process::Stdio;

use anyhow::Context as _;
use rmcp::{
    RoleClient, ServiceError, ServiceExt,
    model::{
        CallToolRequestParams, CallToolResult, ClientCapabilities, ClientConfig,
        GetPromptRequestParams, Implementation, JsonObject, ProtocolVersion,
        ReadResourceRequestParams,
    },
    service::RunningService,
    transport::{IntoTransport, TokioChildProcess},
};
use serde_json::{Value, json};

use super::server::DIRECTORY_URI;

/// One step of the script and how it ended.
#[derive(Debug, Clone, PartialEq)]
pub struct ScriptedCall {
    /// The tool name for a `tools/call`; the method (`resources/read`, `prompts/get`) otherwise.
    pub tool: String,
    /// The tool's arguments, or the request's params for other methods.
    pub arguments: Value,
    /// `"ok"`, `"tool error: <text>"` (the tool ran and reported `isError`), or `"error: <text>"`
    /// (a JSON-RPC error or transport failure, e.g. the proxy refused the call).
    pub outcome: String,
}

type Client = RunningService<RoleClient, ClientConfig>;

/// Starts `command` as a child MCP server (its stderr inherited, so the proxy's logs show), runs
/// the script against it, then closes stdin and waits for the child to exit.
pub async fn run_scripted_agent(
    command: tokio::process::Command,
) -> anyhow::Result<Vec<ScriptedCall>> {
    let program = command.as_std().get_program().to_string_lossy().into_owned();
    let (transport, _no_stderr) = TokioChildProcess::builder(command)
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("could not start mcp server `{program}`"))?;
    run_script(transport).await
}

/// Runs the script over any client transport; closing the client closes the transport (for a
/// child process: stdin EOF, then a wait, SIGTERM and kill as a last resort).
pub(crate) async fn run_script<T, E, A>(transport: T) -> anyhow::Result<Vec<ScriptedCall>>
where
    T: IntoTransport<RoleClient, E, A>,
    E: std::error::Error + Send + Sync + 'static,
{
    // Pinned to the newest revision that still has an `initialize` handshake: rmcp's default is
    // the newest revision of all, which replaced `initialize` and which servers then downgrade.
    let config = ClientConfig::new(
        ClientCapabilities::default(),
        Implementation::new("mcp-ledger-demo-agent", env!("CARGO_PKG_VERSION")),
    )
    .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE);
    let client =
        config.serve(transport).await.context("mcp handshake with the demo server failed")?;
    let played = play(&client).await;
    // Close before looking at the result, so the child is reaped on every path.
    let quit = client.cancel().await.context("demo agent's client task failed")?;
    tracing::debug!(?quit, "demo agent disconnected");
    played
}

async fn play(client: &Client) -> anyhow::Result<Vec<ScriptedCall>> {
    let tools = client.list_all_tools().await.context("could not list the demo server's tools")?;
    tracing::info!(
        tools = ?tools.iter().map(|t| t.name.as_ref()).collect::<Vec<_>>(),
        "demo agent sees tools"
    );

    let mut calls = Vec::new();
    let (found, result) =
        call_tool(client, "lookup_customer", json!({ "customer_id": "cus_1001" })).await;
    calls.push(found);
    // Use the address the lookup returned, as a real agent would; fall back if it was refused.
    let email = result
        .and_then(|r| r.structured_content)
        .and_then(|c| c.get("email").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_else(|| "dana.whitfield@example.com".to_owned());

    let script = [
        ("lookup_customer", json!({ "customer_id": "cus_9999" })),
        (
            "send_email",
            json!({
                "to": email,
                "subject": "About the duplicate charge on invoice INV-2291",
                "body": "Hi Dana,\n\nYou were charged twice for invoice INV-2291. We have \
                         refunded the duplicate charge of 42.50 USD; it should appear within \
                         5 business days.\n\nSorry for the trouble,\nThe Support Team",
            }),
        ),
        (
            "issue_refund",
            json!({
                "customer_id": "cus_1001",
                "amount": 42.50,
                "currency": "USD",
                "reason": "duplicate charge on invoice INV-2291",
            }),
        ),
        (
            "issue_refund",
            json!({
                "customer_id": "cus_1002",
                "amount": 25000.0,
                "currency": "USD",
                "reason": "goodwill credit for the March outage",
            }),
        ),
    ];
    for (tool, arguments) in script {
        calls.push(call_tool(client, tool, arguments).await.0);
    }

    let read = ReadResourceRequestParams::new(DIRECTORY_URI);
    let outcome = outcome_of(client.read_resource(read).await.map(|_| ()));
    calls.push(record("resources/read", json!({ "uri": DIRECTORY_URI }), outcome));

    let prompt_args = json!({ "customer_id": "cus_1001", "issue": "a duplicate charge" });
    let get = GetPromptRequestParams::new("draft_apology").with_arguments(as_object(&prompt_args));
    let outcome = outcome_of(client.get_prompt(get).await.map(|_| ()));
    calls.push(record(
        "prompts/get",
        json!({ "name": "draft_apology", "arguments": prompt_args }),
        outcome,
    ));
    Ok(calls)
}

async fn call_tool(
    client: &Client,
    tool: &str,
    arguments: Value,
) -> (ScriptedCall, Option<CallToolResult>) {
    let params = CallToolRequestParams::new(tool.to_owned()).with_arguments(as_object(&arguments));
    match client.call_tool(params).await {
        Ok(result) if result.is_error == Some(true) => {
            let text = text_of(&result);
            (record(tool, arguments, format!("tool error: {text}")), Some(result))
        }
        Ok(result) => (record(tool, arguments, "ok".to_owned()), Some(result)),
        Err(error) => (record(tool, arguments, outcome_of(Err(error))), None),
    }
}

fn outcome_of(result: Result<(), ServiceError>) -> String {
    match result {
        Ok(()) => "ok".to_owned(),
        Err(ServiceError::McpError(error)) => {
            format!("error: {} (code {})", error.message, error.code.0)
        }
        Err(error) => format!("error: {error}"),
    }
}

fn record(tool: &str, arguments: Value, outcome: String) -> ScriptedCall {
    tracing::info!(tool, %outcome, "demo agent call");
    ScriptedCall { tool: tool.to_owned(), arguments, outcome }
}

fn as_object(value: &Value) -> JsonObject {
    value.as_object().cloned().unwrap_or_default()
}

fn text_of(result: &CallToolResult) -> String {
    let texts: Vec<&str> = result
        .content
        .iter()
        .filter_map(|block| block.as_text().map(|t| t.text.as_str()))
        .collect();
    texts.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::server::serve_io;

    #[tokio::test]
    async fn script_against_customer_ops_reports_each_outcome_in_order() {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("calls.jsonl");
        let (agent_io, server_io) = tokio::io::duplex(64 * 1024);
        let (reader, writer) = tokio::io::split(server_io);
        let server = tokio::spawn(serve_io(reader, writer, Some(log.clone())));

        let calls = run_script(agent_io).await.expect("script runs");
        let summary: Vec<(&str, &str)> =
            calls.iter().map(|c| (c.tool.as_str(), c.outcome.as_str())).collect();
        assert_eq!(
            summary,
            [
                ("lookup_customer", "ok"),
                ("lookup_customer", "tool error: no customer with id `cus_9999`"),
                ("send_email", "ok"),
                ("issue_refund", "ok"),
                (
                    "issue_refund",
                    "tool error: refund amount 25000 is out of range: it must be greater than 0 \
                     and at most 10000"
                ),
                ("resources/read", "ok"),
                ("prompts/get", "ok"),
            ]
        );
        // The email goes to the address the lookup returned.
        assert_eq!(calls[2].arguments["to"], "dana.whitfield@example.com");
        assert_eq!(calls[3].arguments["amount"], 42.5);

        // The upstream saw exactly the five tool calls, with the arguments the agent reports.
        let logged: Vec<Value> = std::fs::read_to_string(&log)
            .expect("read call log")
            .lines()
            .map(|l| serde_json::from_str(l).expect("json line"))
            .collect();
        let expected: Vec<Value> = calls[..5]
            .iter()
            .map(|c| json!({ "tool": c.tool, "arguments": c.arguments }))
            .collect();
        assert_eq!(logged, expected);

        // The agent disconnects when done, which ends the server.
        let served = tokio::time::timeout(std::time::Duration::from_secs(5), server)
            .await
            .expect("server stops after the agent disconnects")
            .expect("server task joins");
        assert!(served.is_ok(), "{served:?}");
    }

    #[tokio::test]
    async fn a_command_that_cannot_start_is_an_error_naming_it() {
        let command = tokio::process::Command::new("/nonexistent/mcp-server");
        let error = run_scripted_agent(command).await.expect_err("spawn fails");
        assert!(
            format!("{error:#}").contains("could not start mcp server `/nonexistent/mcp-server`"),
            "{error:#}"
        );
    }

    #[tokio::test]
    async fn a_child_that_is_not_an_mcp_server_fails_the_handshake() {
        // `true` exits at once without answering `initialize`.
        let error = run_scripted_agent(tokio::process::Command::new("true"))
            .await
            .expect_err("handshake fails");
        assert!(
            format!("{error:#}").contains("mcp handshake with the demo server failed"),
            "{error:#}"
        );
    }
}
