//! Turning a loaded `mcp-ledger.toml` into what the library runs: upstream specs, recorded
//! methods, the ledger URL. Shared by `serve` and `stdio --config`.

use std::path::Path;

use anyhow::Context;

use super::{CliError, LedgerArgs};
use crate::config::{Config, ServerConfig, UpstreamTransport};
use crate::intercept::RecordedMethods;
use crate::proxy::http_upstream::HttpUpstreamConfig;
use crate::proxy::upstream::UpstreamSpec;
use crate::store::LedgerUrl;

/// Loads the file, reports its warnings, and resolves `${VAR}` from the environment. Every
/// problem is a usage error (exit 64) that names the file and line.
pub fn load(path: &Path) -> Result<Config, CliError> {
    let config = Config::load(path).map_err(|e| CliError::Usage(e.into()))?;
    // Warn on the file as written: the resolved copy holds real secrets, which would all look
    // like literals.
    for warning in config.warnings() {
        tracing::warn!("{}: {warning}", path.display());
    }
    config.resolve_secrets(|name| std::env::var(name).ok()).map_err(|e| CliError::Usage(e.into()))
}

/// The ledger URL: `--ledger` or `MCP_LEDGER_URL` first, then the file's `[ledger] url`, then the
/// default SQLite file.
pub fn ledger_url(args: &LedgerArgs, config: Option<&Config>) -> Result<LedgerUrl, CliError> {
    if args.ledger.is_some() {
        return args.url();
    }
    match config.and_then(|c| c.ledger.url.as_deref()) {
        Some(url) => LedgerUrl::parse(url).context("in [ledger] url").map_err(CliError::Usage),
        None => Ok(LedgerUrl::default_sqlite()),
    }
}

pub fn upstream_spec(server: &ServerConfig) -> Result<UpstreamSpec, CliError> {
    Ok(match &server.transport {
        UpstreamTransport::Stdio { command, env, cwd } => UpstreamSpec::Stdio {
            command: command.clone(),
            env: env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            cwd: cwd.clone(),
        },
        UpstreamTransport::Http { url, headers } => {
            let config = HttpUpstreamConfig::new(url)
                .and_then(|config| {
                    headers
                        .iter()
                        .try_fold(config, |config, (name, value)| config.header(name, value))
                })
                .with_context(|| format!("server {}", server.name))
                .map_err(CliError::Usage)?;
            UpstreamSpec::Http(config)
        }
    })
}

/// `call_timeout_secs`, where 0 means no limit.
pub fn call_timeout(server: &ServerConfig) -> Option<std::time::Duration> {
    (server.call_timeout_secs > 0).then(|| std::time::Duration::from_secs(server.call_timeout_secs))
}

pub fn recorded_methods(server: &ServerConfig) -> RecordedMethods {
    match &server.record_methods {
        None => RecordedMethods::default(),
        // One list in the file; each method is recorded in whichever direction it travels.
        Some(methods) => {
            RecordedMethods { from_agent: methods.clone(), from_server: methods.clone() }
        }
    }
}
