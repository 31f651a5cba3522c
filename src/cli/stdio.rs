//! `mcp-ledger stdio`: the drop-in for an MCP client's server command.

use std::path::PathBuf;

use anyhow::{Context, anyhow};
use clap::Args;

use super::{CliError, LedgerArgs, configured, exit};
use crate::config::DEFAULT_CALL_TIMEOUT_SECS;
use crate::config::Storage;
use crate::intercept::{BodyPolicy, RecordedMethods, SessionIdentity, SessionRecorder};
use crate::proxy::relay::RelayEnd;
use crate::proxy::stdio::{serve_stdio, server_name_from_command};
use crate::proxy::upstream::{self, UpstreamSpec};
use crate::store::writer::Ledger;
use crate::store::{self, DEFAULT_CHAIN, StoreOptions};

#[derive(Debug, Args)]
pub struct StdioArgs {
    /// A configuration file whose [[servers]] entry named by --server is the upstream (stdio or
    /// HTTP), used when no command follows `--`
    #[arg(long)]
    config: Option<PathBuf>,
    #[command(flatten)]
    ledger: LedgerArgs,
    /// The policy directory [default: the config's [policy] dir; none: allow and record everything]
    #[arg(long, value_name = "DIR")]
    policy: Option<PathBuf>,
    /// The agent this session is recorded for
    #[arg(long, env = "MCP_LEDGER_AGENT", default_value = "anonymous")]
    agent: String,
    /// The upstream server's name in the ledger (and in --config) [default: derived from the command]
    #[arg(long)]
    server: Option<String>,
    /// How long a ledger write may wait for a lock or connection before the call fails closed
    /// [default: 5000, or the file's lock_timeout_ms]
    #[arg(long, value_name = "MS")]
    lock_timeout_ms: Option<u64>,
    /// The chain to append to [default: the file's [ledger] chain, else `default`]. Proxies on
    /// different chains of one ledger do not wait for each other's appends
    #[arg(long, value_name = "NAME", value_parser = parse_chain)]
    chain: Option<String>,
    /// How long a recorded call may go unanswered before the agent gets an error (0: no limit)
    /// [default: 600, or the server's call_timeout_secs]
    #[arg(long, value_name = "SECS")]
    call_timeout_secs: Option<u64>,
    /// How argument and result bodies are kept: full, redacted (PII replaced), or none (only
    /// their reference and size) [default: redacted, or the config's [audit] payloads]
    #[arg(long, value_name = "MODE", value_parser = ["full", "redacted", "none"])]
    payloads: Option<String>,
    /// Do not scan bodies for PII and secrets (bodies are then kept in full unless --payloads none)
    #[arg(long)]
    no_pii_scan: bool,
    /// Serve Prometheus metrics at http://ADDR/metrics while the session lasts (a loopback
    /// address: the endpoint has no authentication)
    #[arg(long, value_name = "ADDR")]
    metrics_addr: Option<std::net::SocketAddr>,
    /// The upstream MCP server to start, after `--`
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

/// What `stdio` runs: which upstream, under which name, recording which methods.
struct Plan {
    server: String,
    upstream: UpstreamSpec,
    recorded: RecordedMethods,
    ledger_url: store::LedgerUrl,
    lock_timeout_ms: u64,
    chain: String,
    call_timeout_secs: u64,
    config: Option<crate::config::Config>,
}

fn parse_chain(name: &str) -> Result<String, String> {
    match store::chain_id_problem(name) {
        None => Ok(name.to_owned()),
        Some(problem) => Err(problem.to_owned()),
    }
}

fn plan(args: &StdioArgs) -> Result<Plan, CliError> {
    let config = args.config.as_deref().map(configured::load).transpose()?;
    let lock_timeout_ms =
        args.lock_timeout_ms.or(config.as_ref().map(|c| c.ledger.lock_timeout_ms)).unwrap_or(5000);
    let ledger_url = configured::ledger_url(&args.ledger, config.as_ref())?;
    let chain = args
        .chain
        .clone()
        .or_else(|| config.as_ref().map(|c| c.ledger.chain.clone()))
        .unwrap_or_else(|| DEFAULT_CHAIN.to_owned());
    if !args.command.is_empty() {
        let server = args.server.clone().unwrap_or_else(|| server_name_from_command(&args.command));
        let upstream =
            UpstreamSpec::Stdio { command: args.command.clone(), env: Vec::new(), cwd: None };
        return Ok(Plan {
            server,
            upstream,
            recorded: RecordedMethods::default(),
            ledger_url,
            lock_timeout_ms,
            chain,
            call_timeout_secs: args.call_timeout_secs.unwrap_or(DEFAULT_CALL_TIMEOUT_SECS),
            config,
        });
    }
    let (Some(config), Some(name)) = (&config, &args.server) else {
        return Err(CliError::Usage(anyhow!(
            "no upstream: put its command after `--` (e.g. `mcp-ledger stdio -- npx -y \
             @modelcontextprotocol/server-everything`), or name a configured one with \
             `--config FILE --server NAME`"
        )));
    };
    let server = config.server(name).ok_or_else(|| {
        let known: Vec<&str> = config.servers.iter().map(|s| s.name.as_str()).collect();
        CliError::Usage(anyhow!(
            "{}: no [[servers]] entry named `{name}` (configured: {})",
            args.config.as_ref().expect("config given").display(),
            known.join(", ")
        ))
    })?;
    Ok(Plan {
        server: server.name.clone(),
        upstream: configured::upstream_spec(server)?,
        recorded: configured::recorded_methods(server),
        ledger_url,
        lock_timeout_ms,
        chain,
        call_timeout_secs: args.call_timeout_secs.unwrap_or(server.call_timeout_secs),
        config: Some(config.clone()),
    })
}

/// Scanning and storage: the config's `[audit]` (and the server's own settings), then the flags.
fn body_policy(args: &StdioArgs, plan: &Plan) -> Result<BodyPolicy, CliError> {
    let mut audit = plan.config.as_ref().map(|c| c.audit.clone()).unwrap_or_default();
    if args.no_pii_scan {
        audit.scan_pii = false;
        audit.pii_patterns.clear();
        if audit.payloads == Storage::Redacted {
            audit.payloads = Storage::Full;
        }
    }
    let server = plan.config.as_ref().and_then(|c| c.server(&plan.server));
    let scanner = configured::scanner(&audit)?;
    let bodies = BodyPolicy::configured(&audit, server, scanner);
    let Some(mode) = &args.payloads else { return Ok(bodies) };
    let storage = Storage::parse(mode).expect("clap admits only the three modes");
    if storage == Storage::Redacted && args.no_pii_scan {
        return Err(CliError::Usage(anyhow!(
            "--payloads redacted needs the PII scanner, which --no-pii-scan turns off"
        )));
    }
    Ok(bodies.with_default_storage(storage))
}

/// Serves `GET /metrics` on `addr` (loopback only) until the returned task is aborted.
async fn serve_metrics(
    addr: std::net::SocketAddr,
) -> Result<tokio::task::JoinHandle<()>, CliError> {
    if !addr.ip().is_loopback() {
        return Err(CliError::Usage(anyhow!(
            "--metrics-addr {addr}: metrics are served without authentication, so only on a \
             loopback address (e.g. 127.0.0.1:9464); scrape other hosts through `serve`"
        )));
    }
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for metrics"))
        .map_err(CliError::Failed)?;
    let bound = listener.local_addr().map_err(|e| CliError::Failed(e.into()))?;
    tracing::info!("serving metrics at http://{bound}/metrics");
    let router = crate::proxy::http_server::metrics_router(Default::default());
    Ok(tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, router).await {
            tracing::warn!(%error, "the metrics endpoint stopped");
        }
    }))
}

pub async fn run(args: StdioArgs) -> Result<u8, CliError> {
    let plan = plan(&args)?;
    let telemetry = plan.config.as_ref().map(|c| c.telemetry.clone()).unwrap_or_default();
    let exporter =
        crate::telemetry::otlp::start(&telemetry).map_err(|e| CliError::Usage(anyhow!(e)))?;
    let metrics = match args.metrics_addr {
        Some(addr) => Some(serve_metrics(addr).await?),
        None => None,
    };
    let url = &plan.ledger_url;
    let lock_timeout = std::time::Duration::from_millis(plan.lock_timeout_ms);
    let options = StoreOptions { lock_timeout, ..StoreOptions::default() };
    // Without a ledger nothing may be forwarded, so an unreachable ledger stops us before the
    // upstream is even started.
    let store = store::open(url, &options)
        .await
        .with_context(|| format!("cannot open the ledger {url}"))
        .map_err(CliError::Failed)?;
    let bodies = body_policy(&args, &plan)?;
    // An invalid policy stops us before the upstream is started, like an unreachable ledger.
    let policy = configured::start_policy(
        args.policy.as_deref(),
        plan.config.as_ref(),
        bodies.pattern_names(),
    )?;
    // So does an unreadable signing key.
    let checkpointer = match &plan.config {
        Some(config) => {
            super::checkpoints::start_checkpointer(store.clone(), &config.ledger, &plan.chain)
                .await?
        }
        None => None,
    };
    let pipe = upstream::connect(&plan.upstream).map_err(|e| CliError::Usage(e.into()))?;

    let (ledger, writer) = Ledger::start(store.clone(), &plan.chain, 2 * lock_timeout);
    let identity = SessionIdentity {
        session_id: uuid::Uuid::now_v7().to_string(),
        agent: args.agent.clone(),
        server: plan.server.clone(),
        transport: "stdio",
        upstream: plan.upstream.describe(),
    };
    tracing::info!(agent = %args.agent, server = %plan.server, ledger = %url, chain = %plan.chain, session_id = %identity.session_id, "recording session");
    // Operators reach held calls through a `serve` on this ledger, if there is one.
    let webhook = match &plan.config {
        Some(config) => {
            let console = format!("http://{}/console", config.listen.addr);
            configured::approvals_webhook(config, &console, &ledger)?
        }
        None => None,
    };
    let recorder = SessionRecorder::new(ledger, identity, plan.recorded)
        .with_policy(policy, store.clone())
        .with_notifier(webhook)
        .with_bodies(bodies);
    let call_timeout = (plan.call_timeout_secs > 0)
        .then(|| std::time::Duration::from_secs(plan.call_timeout_secs));
    let end = serve_stdio(recorder, pipe, call_timeout).await;
    // Every handle to the writer is gone once the relay returns: wait for the last commits.
    let _ = writer.await;
    if let Some(checkpointer) = checkpointer {
        checkpointer.finish().await;
    }
    store.close().await;
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    if let Some(exporter) = exporter {
        exporter.finish().await;
    }
    Ok(match end {
        RelayEnd::AgentClosed => exit::OK,
        RelayEnd::UpstreamClosed => exit::FAILURE,
    })
}
