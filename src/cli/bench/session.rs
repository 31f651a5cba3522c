//! One agent session of the benchmark, over either transport, and the one call it makes.
//!
//! Over stdio a session is a child process, as MCP clients run servers: the demo server itself
//! (direct), or `mcp-ledger stdio` with the demo server behind it (proxied); the client is
//! rmcp's. Over HTTP a session is an [`HttpSession`] to the upstream's own endpoint (direct) or to
//! `serve`'s (proxied).

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation, JsonObject,
    ProtocolVersion,
};
use rmcp::service::{Peer, RunningService};
use rmcp::transport::TokioChildProcess;
use rmcp::{RoleClient, ServiceExt};
use serde_json::json;

use super::http_client::HttpSession;
use super::serve_child::{SERVER_NAME, ledger_arg};
use crate::store::LedgerUrl;

/// The tool every measured call makes: fast and read-only, so the upstream adds little noise.
pub const TOOL: &str = "lookup_customer";
/// The demo server's customers; calls cycle through them.
const CUSTOMERS: [&str; 5] = ["cus_1001", "cus_1002", "cus_1003", "cus_1004", "cus_1005"];

/// A handle that makes calls on one session; clones make calls on the same session.
#[derive(Clone)]
pub enum Caller {
    Stdio(Peer<RoleClient>),
    Http(HttpSession),
}

impl Caller {
    /// One `tools/call`, timed from just before the request is sent to when its result is back.
    /// A tool error fails the run: a benchmark of error paths would not measure the proxy's job.
    pub async fn call(&self, n: usize) -> anyhow::Result<Duration> {
        let customer = CUSTOMERS[n % CUSTOMERS.len()];
        match self {
            Caller::Stdio(peer) => {
                let mut arguments = JsonObject::new();
                arguments.insert("customer_id".into(), json!(customer));
                let params = CallToolRequestParams::new(TOOL).with_arguments(arguments);
                let started = Instant::now();
                let result = peer
                    .call_tool(params)
                    .await
                    .with_context(|| format!("{TOOL} {customer} failed"))?;
                let elapsed = started.elapsed();
                if result.is_error == Some(true) {
                    anyhow::bail!("{TOOL} {customer} returned a tool error");
                }
                Ok(elapsed)
            }
            Caller::Http(session) => {
                let arguments = format!(r#"{{"customer_id":"{customer}"}}"#);
                let started = Instant::now();
                session
                    .call_tool(TOOL, &arguments)
                    .await
                    .with_context(|| format!("{TOOL} {customer} failed"))?;
                Ok(started.elapsed())
            }
        }
    }
}

/// An MCP client on a child process's stdio.
pub struct StdioSession {
    pub client: RunningService<RoleClient, ClientConfig>,
    /// The `mcp-ledger stdio` process, when proxied.
    pub proxy_pid: Option<u32>,
}

impl StdioSession {
    /// Starts `exe demo-server`, behind `exe stdio --ledger <ledger>` when there is a ledger.
    /// With `chain`, the proxy appends to that chain instead of the default one.
    pub async fn start(
        exe: &Path,
        ledger: Option<&LedgerUrl>,
        chain: Option<String>,
    ) -> anyhow::Result<StdioSession> {
        let mut command = tokio::process::Command::new(exe);
        if let Some(url) = ledger {
            command.arg("stdio").arg("--ledger").arg(ledger_arg(url));
            if let Some(chain) = chain {
                command.arg("--chain").arg(chain);
            }
            command.args(["--agent", "bench", "--server", SERVER_NAME, "--"]).arg(exe);
        }
        // Inherited by the proxy's upstream too: only warnings reach stderr, none reach stdout.
        command.arg("demo-server").env("MCP_LEDGER_LOG", "warn");
        let (transport, _no_stderr) = TokioChildProcess::builder(command)
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start a stdio session")?;
        let pid = transport.id().ok_or_else(|| anyhow!("a stdio session exited at once"))?;
        // Pinned as the demo agent pins it: rmcp's default revision has no `initialize`.
        let config = ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("mcp-ledger-bench", env!("CARGO_PKG_VERSION")),
        )
        .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE);
        let client = config.serve(transport).await.context("mcp handshake failed")?;
        Ok(StdioSession { client, proxy_pid: ledger.map(|_| pid) })
    }

    /// Closes the session: a proxy then commits the session's end and exits.
    pub async fn close(self) -> anyhow::Result<()> {
        self.client.cancel().await.context("a stdio session did not close cleanly")?;
        Ok(())
    }
}
