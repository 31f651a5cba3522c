//! `mcp-ledger stdio`: the drop-in for an MCP client's server command.

use anyhow::Context;
use clap::Args;

use super::{CliError, LedgerArgs, exit};
use crate::intercept::{RecordedMethods, SessionIdentity, SessionRecorder};
use crate::proxy::relay::RelayEnd;
use crate::proxy::stdio::{serve_stdio, server_name_from_command, spawn_upstream};
use crate::store::writer::Ledger;
use crate::store::{self, DEFAULT_CHAIN, StoreOptions};

#[derive(Debug, Args)]
pub struct StdioArgs {
    #[command(flatten)]
    ledger: LedgerArgs,
    /// The agent this session is recorded for
    #[arg(long, env = "MCP_LEDGER_AGENT", default_value = "anonymous")]
    agent: String,
    /// The upstream server's name in the ledger [default: derived from the command]
    #[arg(long)]
    server: Option<String>,
    /// How long a ledger write may wait for a lock or connection before the call fails closed
    #[arg(long, default_value_t = 5000, value_name = "MS")]
    lock_timeout_ms: u64,
    /// The upstream MCP server to start, after `--`
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
}

pub async fn run(args: StdioArgs) -> Result<u8, CliError> {
    let url = args.ledger.url()?;
    let lock_timeout = std::time::Duration::from_millis(args.lock_timeout_ms);
    let options = StoreOptions { lock_timeout, ..StoreOptions::default() };
    // Without a ledger nothing may be forwarded, so an unreachable ledger stops us before the
    // upstream is even started.
    let store = store::open(&url, &options)
        .await
        .with_context(|| format!("cannot open the ledger {url}"))
        .map_err(CliError::Failed)?;
    let server = args.server.clone().unwrap_or_else(|| server_name_from_command(&args.command));
    let child = spawn_upstream(&args.command).map_err(|e| CliError::Usage(e.into()))?;

    let (ledger, writer) = Ledger::start(store.clone(), DEFAULT_CHAIN, 2 * lock_timeout);
    let identity = SessionIdentity {
        session_id: uuid::Uuid::now_v7().to_string(),
        agent: args.agent.clone(),
        server: server.clone(),
        transport: "stdio",
        upstream: format!("stdio:{}", args.command[0]),
    };
    tracing::info!(agent = %args.agent, %server, ledger = %url, session_id = %identity.session_id, "recording session");
    let recorder = SessionRecorder::new(ledger, identity, RecordedMethods::default());
    let end = serve_stdio(recorder, child).await;
    // Every handle to the writer is gone once the relay returns: wait for the last commits.
    let _ = writer.await;
    store.close().await;
    Ok(match end {
        RelayEnd::AgentClosed => exit::OK,
        RelayEnd::UpstreamClosed => exit::FAILURE,
    })
}
