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

/// How often the policy directory is checked for edits.
const POLICY_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// The policy in force: the files in `--policy DIR` or `[policy] dir`, with `[policy] default`.
/// An invalid policy stops start-up (a usage error naming each file, line and problem). While
/// running, edits are picked up within seconds; an invalid edit is reported and the previous
/// policy stays in force.
pub fn start_policy(
    dir_flag: Option<&Path>,
    config: Option<&Config>,
    pii_patterns: Vec<String>,
) -> Result<crate::intercept::SharedPolicy, CliError> {
    use crate::policy::{Effect, PolicySet};
    let default = match config.map(|c| c.policy.default.as_str()) {
        Some(text) => Effect::parse_default(text).ok_or_else(|| {
            CliError::Usage(anyhow::anyhow!(
                "[policy] default must be allow, hold or deny, not `{text}`"
            ))
        })?,
        None => Effect::Allow,
    };
    let dir = dir_flag.map(Path::to_path_buf).or_else(|| config.and_then(|c| c.policy.dir.clone()));
    let Some(dir) = dir else {
        let set = if default == Effect::Allow {
            PolicySet::allow_all()
        } else {
            PolicySet::from_sources(&[], default).map_err(|e| CliError::Usage(e.into()))?
        };
        return Ok(crate::intercept::SharedPolicy::new(set));
    };
    // A rule naming a PII pattern the scanner does not run would never fire: refused like any
    // other invalid policy, at start-up and on reload.
    let load = move |dir: &Path| {
        let set = PolicySet::load_dir(dir, default)?;
        set.check_pii_patterns(&pii_patterns)?;
        Ok::<_, crate::policy::PolicyError>(set)
    };
    let set = load(&dir).map_err(|error| {
        let problems: Vec<String> = error.problems().iter().map(|p| p.to_string()).collect();
        CliError::Usage(anyhow::anyhow!(
            "invalid policy; refusing to start:\n{}",
            problems.join("\n")
        ))
    })?;
    tracing::info!(dir = %dir.display(), rules = set.rule_count(), digest = %set.digest_prefix(), "policy loaded");
    let shared = crate::intercept::SharedPolicy::new(set);
    let watched = shared.clone();
    tokio::spawn(async move {
        let mut seen = policy_fingerprint(&dir);
        loop {
            tokio::time::sleep(POLICY_POLL).await;
            let now = policy_fingerprint(&dir);
            if now == seen {
                continue;
            }
            seen = now;
            match load(&dir) {
                Ok(set) => {
                    tracing::info!(rules = set.rule_count(), digest = %set.digest_prefix(), "policy reloaded");
                    watched.replace(set);
                }
                Err(error) => {
                    for problem in error.problems() {
                        tracing::error!(%problem, "policy edit rejected; the previous policy stays in force");
                    }
                }
            }
        }
    });
    Ok(shared)
}

/// What changes when a policy file is added, removed or edited: names, sizes and times.
fn policy_fingerprint(dir: &Path) -> Vec<(std::path::PathBuf, u64, Option<std::time::SystemTime>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.path().extension().is_some_and(|e| e == "toml"))
        .map(|entry| {
            let meta = entry.metadata().ok();
            (
                entry.path(),
                meta.as_ref().map_or(0, |m| m.len()),
                meta.and_then(|m| m.modified().ok()),
            )
        })
        .collect();
    files.sort();
    files
}

/// The process's PII scanner for `[audit]` (`None` when scanning is off); a custom pattern
/// that does not compile was already refused when the file was loaded.
pub fn scanner(
    audit: &crate::config::AuditConfig,
) -> Result<Option<std::sync::Arc<crate::pii::Scanner>>, CliError> {
    crate::intercept::BodyPolicy::scanner_for(audit).context("in [audit]").map_err(CliError::Usage)
}

/// The approvals webhook of `[approvals]`, recording its deliveries to `ledger`, if one is set.
/// `console_url` is where its messages send operators when `[approvals] console_url` is unset.
pub fn approvals_webhook(
    config: &Config,
    console_url: &str,
    ledger: &crate::store::writer::Ledger,
) -> Result<Option<std::sync::Arc<dyn crate::intercept::HoldNotifier>>, CliError> {
    let Some(url) = &config.approvals.webhook_url else { return Ok(None) };
    let console_url = config.approvals.console_url.as_deref().unwrap_or(console_url);
    let timeout = std::time::Duration::from_millis(config.approvals.webhook_timeout_ms);
    let webhook = crate::api::webhook::Webhook::new(url, timeout, console_url)
        .context("in [approvals] webhook_url")
        .map_err(CliError::Usage)?;
    tracing::info!(webhook = %webhook.shown_url(), "announcing held calls to the approvals webhook");
    webhook.record_to(ledger.clone());
    Ok(Some(std::sync::Arc::new(webhook)))
}
