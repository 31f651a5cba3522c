//! `mcp-ledger serve`: the Streamable HTTP front end for every configured upstream.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Args;

use super::{CliError, LedgerArgs, configured, exit};
use crate::api::{self, ApiState, OperatorTokens};
use crate::intercept::BodyPolicy;
use crate::proxy::http_server::{
    AgentTokens, Endpoint, HttpProxy, OriginPolicy, ServeSettings, serve_with,
};
use crate::store::writer::Ledger;
use crate::store::{self, StoreOptions};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The configuration file
    #[arg(long, default_value = crate::config::DEFAULT_FILE_NAME)]
    config: PathBuf,
    /// Listen here instead of the file's [listen] addr
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// The policy directory [default: the file's [policy] dir; none: allow and record everything]
    #[arg(long, value_name = "DIR")]
    policy: Option<PathBuf>,
    /// Threads that run sessions, the writer and the HTTP server; 1 runs everything on one
    /// thread, with no hand-offs between threads [default: one per two CPUs, at least 1]
    #[arg(long, env = "MCP_LEDGER_THREADS", value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    #[command(flatten)]
    ledger: LedgerArgs,
}

impl ServeArgs {
    /// `--threads`, if given.
    pub fn threads(&self) -> Option<usize> {
        self.threads.map(usize::from)
    }
}

/// `serve`'s runtime threads on a machine with `cpus` CPUs when `--threads` is not given.
pub fn default_threads(cpus: usize) -> usize {
    (cpus / 2).max(1)
}

pub async fn run(args: ServeArgs) -> Result<u8, CliError> {
    let config = configured::load(&args.config)?;
    config.validate_for_serve().map_err(|e| CliError::Usage(e.into()))?;
    let addr = args.listen.unwrap_or(config.listen.addr);
    let exporter = crate::telemetry::otlp::start(&config.telemetry)
        .map_err(|e| CliError::Usage(anyhow!(e)))?;

    let allow_anonymous = config.agents.is_empty();
    if allow_anonymous {
        if !addr.ip().is_loopback() {
            return Err(CliError::Usage(anyhow!(
                "refusing to listen on {addr} without [[agents]]: anyone who can reach it could \
                 call your servers; add agents with `mcp-ledger agents add NAME`, or listen on \
                 127.0.0.1"
            )));
        }
        tracing::warn!(%addr, "no [[agents]] configured: accepting every caller as agent `anonymous` (loopback only)");
    }
    let agents: Vec<(String, String)> =
        config.agents.iter().map(|a| (a.name.clone(), a.token_sha256.clone())).collect();
    let agents =
        AgentTokens::new(&agents, allow_anonymous).map_err(|e| CliError::Usage(anyhow!(e)))?;
    let operators =
        OperatorTokens::from_config(&config).map_err(|e| CliError::Usage(anyhow!(e)))?;
    if operators.is_empty() {
        tracing::info!(
            "no [[operators]] configured: the approvals API and console refuse every request; add one with `mcp-ledger operators add NAME`"
        );
    }
    let scanner = configured::scanner(&config.audit)?;
    let mut endpoints = HashMap::new();
    for server in &config.servers {
        let endpoint = Endpoint {
            upstream: configured::upstream_spec(server)?,
            recorded: configured::recorded_methods(server),
            call_timeout: configured::call_timeout(server),
            shared: server.shared,
            bodies: BodyPolicy::configured(&config.audit, Some(server), scanner.clone()),
        };
        endpoints.insert(server.name.clone(), endpoint);
    }
    let url = configured::ledger_url(&args.ledger, Some(&config))?;
    let lock_timeout = Duration::from_millis(config.ledger.lock_timeout_ms);
    let options = StoreOptions { lock_timeout, ..StoreOptions::default() };
    let store = store::open(&url, &options)
        .await
        .with_context(|| format!("cannot open the ledger {url}"))
        .map_err(CliError::Failed)?;
    let chain = &config.ledger.chain;
    let (ledger, writer) = Ledger::start(store.clone(), chain, 2 * lock_timeout);
    let checkpointer =
        super::checkpoints::start_checkpointer(store.clone(), &config.ledger, chain).await?;

    let patterns = scanner.iter().flat_map(|s| s.pattern_names().map(str::to_owned)).collect();
    let policy = configured::start_policy(args.policy.as_deref(), Some(&config), patterns)?;
    let origins = OriginPolicy {
        allowed_hosts: config.listen.allowed_hosts.clone(),
        allowed_origins: config.listen.allowed_origins.clone(),
    };
    let mut settings = ServeSettings {
        policy,
        store: store.clone(),
        endpoints,
        agents,
        origins: origins.clone(),
        max_body_bytes: config.listen.max_body_bytes,
        max_sessions: config.listen.max_sessions,
        session_idle_timeout: Duration::from_secs(config.listen.session_idle_timeout_secs),
        notifier: None,
        metrics: config.telemetry.metrics,
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
        .map_err(CliError::Failed)?;
    let bound = listener.local_addr().map_err(|e| CliError::Failed(e.into()))?;
    let console_url =
        config.approvals.console_url.clone().unwrap_or_else(|| format!("http://{bound}/console"));
    settings.notifier = configured::approvals_webhook(&config, &console_url, &ledger)?;
    let api = api::router(ApiState { store: store.clone(), operators, origins });
    let proxy = HttpProxy::new(settings, ledger);
    let threads = tokio::runtime::Handle::current().metrics().num_workers();
    tracing::info!(ledger = %url, threads, "recording to the ledger");
    for server in &config.servers {
        // Printed, not logged: it is the address to put in client configs.
        println!("serving {} at http://{bound}/mcp/{}", server.name, server.name);
    }
    println!("operator console at {console_url}");

    serve_with(listener, proxy, api, shutdown_signal())
        .await
        .with_context(|| format!("the HTTP server on {bound} failed"))
        .map_err(CliError::Failed)?;
    // Every session has ended and dropped its ledger handle: wait for the last commits.
    let _ = writer.await;
    if let Some(checkpointer) = checkpointer {
        checkpointer.finish().await;
    }
    store.close().await;
    if let Some(exporter) = exporter {
        exporter.finish().await;
    }
    Ok(exit::OK)
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutting down: ending sessions and committing their last events");
}
