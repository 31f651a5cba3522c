//! One measured MCP session: an rmcp client talking to the demo server, either directly or
//! through `mcp-ledger stdio`, and the latency of every `tools/call` it made.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rmcp::model::{
    CallToolRequestParams, ClientCapabilities, ClientConfig, Implementation, JsonObject,
    ProtocolVersion,
};
use rmcp::service::{Peer, RunningService};
use rmcp::transport::TokioChildProcess;
use rmcp::{RoleClient, ServiceExt};
use serde_json::json;

use super::stats::Summary;
use crate::store::LedgerUrl;

/// The tool every measured call makes: fast and read-only, so the upstream adds little noise.
const TOOL: &str = "lookup_customer";
/// The demo server's customers; calls cycle through them.
const CUSTOMERS: [&str; 5] = ["cus_1001", "cus_1002", "cus_1003", "cus_1004", "cus_1005"];

/// How the client reaches the demo server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Direct,
    Sqlite,
    Postgres,
}

impl Mode {
    pub fn label(self) -> &'static str {
        match self {
            Mode::Direct => "direct",
            Mode::Sqlite => "proxied (sqlite)",
            Mode::Postgres => "proxied (postgres)",
        }
    }
}

pub struct Session {
    pub mode: Mode,
    pub ledger: Option<LedgerUrl>,
    client: RunningService<RoleClient, ClientConfig>,
    /// Every call made, warm-up included, to check the ledger against.
    pub calls_made: usize,
    latencies: Vec<Duration>,
    busy: Duration,
}

impl Session {
    /// Starts `exe demo-server`, behind `exe stdio --ledger <ledger>` when there is a ledger.
    pub async fn start(mode: Mode, exe: &Path, ledger: Option<LedgerUrl>) -> anyhow::Result<Self> {
        let mut command = tokio::process::Command::new(exe);
        if let Some(url) = &ledger {
            command
                .arg("stdio")
                .arg("--ledger")
                .arg(url.to_string())
                .args(["--agent", "bench", "--server", "customer-ops", "--"])
                .arg(exe);
        }
        // Inherited by the proxy's upstream too: only warnings reach stderr, none reach stdout.
        command.arg("demo-server").env("MCP_LEDGER_LOG", "warn");
        let (transport, _no_stderr) = TokioChildProcess::builder(command)
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("cannot start the {} session", mode.label()))?;
        // Pinned as the demo agent pins it: rmcp's default revision has no `initialize`.
        let config = ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("mcp-ledger-bench", env!("CARGO_PKG_VERSION")),
        )
        .with_protocol_version(ProtocolVersion::LATEST_WITH_INITIALIZE);
        let client = config
            .serve(transport)
            .await
            .with_context(|| format!("mcp handshake failed in the {} session", mode.label()))?;
        Ok(Session {
            mode,
            ledger,
            client,
            calls_made: 0,
            latencies: Vec::new(),
            busy: Duration::ZERO,
        })
    }

    /// Makes `calls` calls that are not measured: they warm the processes, caches and connections.
    pub async fn warm_up(&mut self, calls: usize, concurrency: usize) -> anyhow::Result<()> {
        self.round(calls, concurrency, false).await
    }

    /// Makes `calls` measured calls from `concurrency` callers sharing the session.
    pub async fn measure(&mut self, calls: usize, concurrency: usize) -> anyhow::Result<()> {
        self.round(calls, concurrency, true).await
    }

    async fn round(&mut self, calls: usize, concurrency: usize, keep: bool) -> anyhow::Result<()> {
        let remaining = AtomicUsize::new(calls);
        let first = self.calls_made;
        let peer = self.client.peer();
        // The callers are futures on this task rather than spawned tasks: the client's own work is
        // tiny, and at concurrency 1 this is a plain loop with nothing else to schedule.
        let caller = || async {
            let mut times = Vec::new();
            while let Ok(left) =
                remaining.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            {
                times.push(call_once(peer, first + left).await?);
            }
            anyhow::Ok(times)
        };
        let started = Instant::now();
        let times = futures::future::try_join_all((0..concurrency.max(1)).map(|_| caller()))
            .await
            .with_context(|| format!("a call failed in the {} session", self.mode.label()))?;
        let elapsed = started.elapsed();
        self.calls_made += calls;
        if keep {
            self.busy += elapsed;
            self.latencies.extend(times.into_iter().flatten());
        }
        Ok(())
    }

    /// Closes the session (for a proxy: it commits the session's end and exits) and summarises it.
    pub async fn finish(self) -> anyhow::Result<(Mode, Option<LedgerUrl>, usize, Summary)> {
        let summary = Summary::of(&self.latencies, self.busy);
        let label = self.mode.label();
        self.client
            .cancel()
            .await
            .with_context(|| format!("the {label} session did not close cleanly"))?;
        Ok((self.mode, self.ledger, self.calls_made, summary))
    }
}

/// One `tools/call`, timed from just before the request is sent to when its result is back. A
/// tool error fails the run: a benchmark of error paths would not measure the proxy's job.
async fn call_once(peer: &Peer<RoleClient>, n: usize) -> anyhow::Result<Duration> {
    let customer = CUSTOMERS[n % CUSTOMERS.len()];
    let mut arguments = JsonObject::new();
    arguments.insert("customer_id".into(), json!(customer));
    let params = CallToolRequestParams::new(TOOL).with_arguments(arguments);
    let started = Instant::now();
    let result =
        peer.call_tool(params).await.with_context(|| format!("{TOOL} {customer} failed"))?;
    let elapsed = started.elapsed();
    if result.is_error == Some(true) {
        anyhow::bail!("{TOOL} {customer} returned a tool error");
    }
    Ok(elapsed)
}
