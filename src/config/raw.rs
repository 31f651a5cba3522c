//! The file as TOML has it, with the span of everything a message may need to point at, and its
//! conversion into a validated [`Config`]. Every table denies unknown keys.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use super::secrets::{self, Place, TemplateError};
use super::{
    AgentConfig, ApprovalsConfig, AuditConfig, Config, ConfigError, LedgerConfig, ListenConfig,
    OperatorConfig, OtlpProtocol, PolicyConfig, ServerConfig, Storage, TelemetryConfig,
    UpstreamTransport, is_valid_name,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    ledger: RawLedger,
    #[serde(default)]
    listen: RawListen,
    #[serde(default)]
    servers: Vec<Spanned<RawServer>>,
    #[serde(default)]
    agents: Vec<Spanned<RawAgent>>,
    #[serde(default)]
    operators: Vec<Spanned<RawAgent>>,
    #[serde(default)]
    audit: RawAudit,
    #[serde(default)]
    policy: RawPolicy,
    #[serde(default)]
    approvals: RawApprovals,
    #[serde(default)]
    telemetry: RawTelemetry,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLedger {
    url: Option<Spanned<String>>,
    signing_key: Option<PathBuf>,
    lock_timeout_ms: Option<u64>,
    chain: Option<Spanned<String>>,
    checkpoint_every_events: Option<Spanned<u64>>,
    checkpoint_every_secs: Option<Spanned<u64>>,
    anchor: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawListen {
    addr: Option<SocketAddr>,
    allowed_origins: Option<Vec<String>>,
    allowed_hosts: Option<Vec<String>>,
    max_body_bytes: Option<Spanned<usize>>,
    max_sessions: Option<Spanned<usize>>,
    session_idle_timeout_secs: Option<Spanned<u64>>,
}

type RawMap = Spanned<BTreeMap<Spanned<String>, Spanned<String>>>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    name: Spanned<String>,
    command: Option<Spanned<Vec<String>>>,
    env: Option<RawMap>,
    cwd: Option<Spanned<PathBuf>>,
    url: Option<Spanned<String>>,
    headers: Option<RawMap>,
    #[serde(default)]
    shared: bool,
    record_methods: Option<Vec<String>>,
    call_timeout_secs: Option<u64>,
    payloads: Option<Spanned<String>>,
    tool_payloads: Option<BTreeMap<String, Spanned<String>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    name: Spanned<String>,
    token_sha256: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    scan_pii: Option<Spanned<bool>>,
    retention_days: Option<Spanned<u32>>,
    retention_max_size_mb: Option<Spanned<u64>>,
    log_tool_args: Option<bool>,
    payloads: Option<Spanned<String>>,
    pii_disabled: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pii_patterns: Vec<Spanned<RawPiiPattern>>,
    payload_retention_days: Option<Spanned<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPiiPattern {
    name: Spanned<String>,
    regex: Spanned<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    dir: Option<PathBuf>,
    default: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawApprovals {
    webhook_url: Option<Spanned<String>>,
    webhook_timeout_ms: Option<Spanned<u64>>,
    console_url: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTelemetry {
    metrics: Option<bool>,
    otlp_endpoint: Option<Spanned<String>>,
    protocol: Option<Spanned<String>>,
    service_name: Option<Spanned<String>>,
}

/// The text being parsed and the name messages give it.
struct Source<'a> {
    file: &'a str,
    text: &'a str,
}

impl Source<'_> {
    /// 1-based line and column (in characters) of a byte offset.
    fn position(&self, offset: usize) -> (usize, usize) {
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        (line, before[line_start..].chars().count() + 1)
    }

    fn line(&self, span: &Range<usize>) -> usize {
        self.position(span.start).0
    }

    fn error(&self, span: Range<usize>, message: impl Into<String>) -> ConfigError {
        let (line, column) = self.position(span.start);
        ConfigError::Invalid { file: self.file.to_owned(), line, column, message: message.into() }
    }

    fn toml_error(&self, error: toml::de::Error) -> ConfigError {
        let message = hide_string_value(&error.message().lines().collect::<Vec<_>>().join("; "));
        match error.span() {
            Some(span) => self.error(span, message),
            None => ConfigError::Unplaced { file: self.file.to_owned(), message },
        }
    }

    /// Checks the `${VAR}` syntax of a value now, so that its error can point at the line.
    fn check_template(&self, value: &Spanned<String>, place: &Place) -> Result<(), ConfigError> {
        secrets::substitute(value.get_ref(), &mut |_| Some(String::new())).map(drop).map_err(
            |error| {
                let problem = match error {
                    TemplateError::Unterminated => {
                        "has an unterminated `${`; write `$${` for a literal `${`"
                    }
                    _ => "has a `${…}` that does not hold an environment variable name (letters, digits and `_`)",
                };
                self.error(value.span(), format!("{place} {problem}"))
            },
        )
    }
}

/// serde quotes the offending string in type errors; it could be a secret typed in the wrong
/// place, so it is left out.
fn hide_string_value(message: &str) -> String {
    for prefix in ["invalid type: string \"", "invalid value: string \""] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some(end) = rest.rfind("\", expected ")
        {
            return format!("{}{}", &prefix[..prefix.len() - 2], &rest[end + 1..]);
        }
    }
    message.to_owned()
}

/// Parses and validates a whole file. Relative paths are left as written.
pub(super) fn parse(text: &str, file: &str) -> Result<Config, ConfigError> {
    let source = Source { file, text };
    let raw: RawConfig = toml::from_str(text).map_err(|e| source.toml_error(e))?;
    let agents = agents(&source, raw.agents)?;
    let audit = audit(&source, raw.audit)?;
    Ok(Config {
        ledger: ledger(&source, raw.ledger)?,
        listen: listen(&source, raw.listen)?,
        servers: servers(&source, raw.servers, &audit)?,
        operators: operators(&source, raw.operators, &agents)?,
        agents,
        audit,
        policy: policy(&source, raw.policy)?,
        approvals: approvals(&source, raw.approvals)?,
        telemetry: telemetry(&source, raw.telemetry)?,
        path: None,
    })
}

fn ledger(source: &Source, raw: RawLedger) -> Result<LedgerConfig, ConfigError> {
    if let Some(url) = &raw.url {
        source.check_template(url, &Place::LedgerUrl)?;
    }
    if let Some(chain) = &raw.chain
        && let Some(problem) = crate::store::chain_id_problem(chain.get_ref())
    {
        return Err(source.error(chain.span(), format!("ledger.chain: {problem}")));
    }
    let defaults = LedgerConfig::default();
    Ok(LedgerConfig {
        url: raw.url.map(Spanned::into_inner),
        signing_key: raw.signing_key,
        lock_timeout_ms: raw.lock_timeout_ms.unwrap_or(defaults.lock_timeout_ms),
        chain: raw.chain.map_or(defaults.chain, Spanned::into_inner),
        checkpoint_every_events: at_least_one(
            source,
            raw.checkpoint_every_events,
            "checkpoint_every_events",
        )?
        .unwrap_or(defaults.checkpoint_every_events),
        checkpoint_every_secs: at_least_one(
            source,
            raw.checkpoint_every_secs,
            "checkpoint_every_secs",
        )?
        .unwrap_or(defaults.checkpoint_every_secs),
        anchor: raw.anchor,
    })
}

/// A count or duration where zero would make the setting useless.
fn at_least_one<T: PartialEq + From<u8>>(
    source: &Source,
    value: Option<Spanned<T>>,
    key: &str,
) -> Result<Option<T>, ConfigError> {
    match value {
        Some(value) if *value.get_ref() == T::from(0) => {
            Err(source.error(value.span(), format!("`{key}` must be at least 1")))
        }
        value => Ok(value.map(Spanned::into_inner)),
    }
}

fn listen(source: &Source, raw: RawListen) -> Result<ListenConfig, ConfigError> {
    let defaults = ListenConfig::default();
    Ok(ListenConfig {
        addr: raw.addr.unwrap_or(defaults.addr),
        allowed_origins: raw.allowed_origins.unwrap_or(defaults.allowed_origins),
        allowed_hosts: raw.allowed_hosts.unwrap_or(defaults.allowed_hosts),
        max_body_bytes: at_least_one(source, raw.max_body_bytes, "listen.max_body_bytes")?
            .unwrap_or(defaults.max_body_bytes),
        max_sessions: at_least_one(source, raw.max_sessions, "listen.max_sessions")?
            .unwrap_or(defaults.max_sessions),
        session_idle_timeout_secs: at_least_one(
            source,
            raw.session_idle_timeout_secs,
            "listen.session_idle_timeout_secs",
        )?
        .unwrap_or(defaults.session_idle_timeout_secs),
    })
}

const NAME_RULE: &str = "use letters, digits, `.`, `_` and `-`";

/// Checks a server or agent name and that no earlier entry of the same kind took it.
fn unique_name(
    source: &Source,
    name: &Spanned<String>,
    kind: &str,
    seen: &mut HashMap<String, usize>,
) -> Result<String, ConfigError> {
    let value = name.get_ref();
    if !is_valid_name(value) {
        return Err(source.error(
            name.span(),
            format!("{kind} name `{value}` is not url-path-safe; {NAME_RULE}"),
        ));
    }
    let line = source.line(&name.span());
    if let Some(first) = seen.insert(value.clone(), line) {
        seen.insert(value.clone(), first);
        return Err(source.error(
            name.span(),
            format!("duplicate {kind} name `{value}` (first defined at line {first})"),
        ));
    }
    Ok(value.clone())
}

fn servers(
    source: &Source,
    raw: Vec<Spanned<RawServer>>,
    audit: &AuditConfig,
) -> Result<Vec<ServerConfig>, ConfigError> {
    let mut seen = HashMap::new();
    let mut servers = Vec::with_capacity(raw.len());
    for entry in raw {
        let span = entry.span();
        let raw = entry.into_inner();
        let name = unique_name(source, &raw.name, "server", &mut seen)?;
        let transport = match (raw.command, raw.url) {
            (Some(_), Some(_)) => {
                return Err(source.error(
                    span,
                    format!("server `{name}` has both `command` and `url`; give exactly one"),
                ));
            }
            (None, None) => {
                return Err(source.error(
                    span,
                    format!("server `{name}` has neither `command` nor `url`; give exactly one"),
                ));
            }
            (Some(command), None) => {
                if let Some(headers) = &raw.headers {
                    return Err(source.error(
                        headers.span(),
                        format!("server `{name}`: `headers` apply only to a `url` server"),
                    ));
                }
                if command.get_ref().first().is_none_or(String::is_empty) {
                    return Err(source.error(
                        command.span(),
                        format!("server `{name}`: `command` must start with the program to run"),
                    ));
                }
                let env = match raw.env {
                    Some(env) => env_vars(source, &name, env)?,
                    None => BTreeMap::new(),
                };
                UpstreamTransport::Stdio {
                    command: command.into_inner(),
                    env,
                    cwd: raw.cwd.map(Spanned::into_inner),
                }
            }
            (None, Some(url)) => {
                for (key, span) in
                    [("env", raw.env.map(|e| e.span())), ("cwd", raw.cwd.map(|c| c.span()))]
                {
                    if let Some(span) = span {
                        return Err(source.error(
                            span,
                            format!("server `{name}`: `{key}` applies only to a `command` server"),
                        ));
                    }
                }
                let headers = match raw.headers {
                    Some(headers) => headers_map(source, &name, headers)?,
                    None => BTreeMap::new(),
                };
                UpstreamTransport::Http { url: http_url(source, &name, url)?, headers }
            }
        };
        let key = format!("servers.{name}.payloads");
        let payloads = raw.payloads.map(|m| storage(source, &m, &key, audit)).transpose()?;
        let mut tool_payloads = BTreeMap::new();
        for (tool, mode) in raw.tool_payloads.unwrap_or_default() {
            let key = format!("servers.{name}.tool_payloads.{tool}");
            tool_payloads.insert(tool, storage(source, &mode, &key, audit)?);
        }
        servers.push(ServerConfig {
            name,
            transport,
            shared: raw.shared,
            record_methods: raw.record_methods,
            call_timeout_secs: raw.call_timeout_secs.unwrap_or(super::DEFAULT_CALL_TIMEOUT_SECS),
            payloads,
            tool_payloads,
        });
    }
    Ok(servers)
}

fn http_url(source: &Source, server: &str, url: Spanned<String>) -> Result<String, ConfigError> {
    // The URL itself is not repeated: it may carry credentials.
    match reqwest::Url::parse(url.get_ref()) {
        Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => Ok(url.into_inner()),
        _ => Err(source.error(
            url.span(),
            format!("server `{server}`: `url` must be an absolute http:// or https:// url"),
        )),
    }
}

fn env_vars(
    source: &Source,
    server: &str,
    raw: RawMap,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut env = BTreeMap::new();
    for (key, value) in raw.into_inner() {
        let name = key.get_ref();
        if name.is_empty() || name.contains(['=', '\0']) {
            return Err(source.error(
                key.span(),
                format!("server `{server}`: `{name}` is not an environment variable name"),
            ));
        }
        let place = Place::Env { server: server.to_owned(), name: name.clone() };
        source.check_template(&value, &place)?;
        env.insert(key.into_inner(), value.into_inner());
    }
    Ok(env)
}

fn headers_map(
    source: &Source,
    server: &str,
    raw: RawMap,
) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut headers = BTreeMap::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    for (key, value) in raw.into_inner() {
        let name = key.get_ref();
        if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(source.error(
                key.span(),
                format!("server `{server}`: `{name}` is not an http header name"),
            ));
        }
        if let Some(first) = seen.insert(name.to_ascii_lowercase(), name.clone()) {
            return Err(source.error(
                key.span(),
                format!(
                    "server `{server}`: header `{name}` repeats `{first}` (header names ignore case)"
                ),
            ));
        }
        let place = Place::Header { server: server.to_owned(), name: name.clone() };
        source.check_template(&value, &place)?;
        headers.insert(key.into_inner(), value.into_inner());
    }
    Ok(headers)
}

/// Checks the `token_sha256` of an agent or operator: 64 lower-case hex digits.
fn token_digest(
    source: &Source,
    kind: &str,
    name: &str,
    digest: &Spanned<String>,
) -> Result<(), ConfigError> {
    // The value is not repeated: a token pasted here by mistake is a secret.
    let token = digest.get_ref();
    if token.len() != 64 || !token.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(source.error(
            digest.span(),
            format!(
                "{kind} `{name}`: `token_sha256` must be 64 lower-case hex digits, the sha-256 of the token (see `mcp-ledger {kind}s add`)"
            ),
        ));
    }
    Ok(())
}

fn agents(source: &Source, raw: Vec<Spanned<RawAgent>>) -> Result<Vec<AgentConfig>, ConfigError> {
    let mut seen = HashMap::new();
    let mut by_token: HashMap<String, String> = HashMap::new();
    let mut agents = Vec::with_capacity(raw.len());
    for entry in raw {
        let raw = entry.into_inner();
        let name = unique_name(source, &raw.name, "agent", &mut seen)?;
        token_digest(source, "agent", &name, &raw.token_sha256)?;
        let token = raw.token_sha256.get_ref();
        if let Some(other) = by_token.insert(token.clone(), name.clone()) {
            return Err(source.error(
                raw.token_sha256.span(),
                format!("agent `{name}` has the same `token_sha256` as agent `{other}`"),
            ));
        }
        agents.push(AgentConfig { name, token_sha256: raw.token_sha256.into_inner() });
    }
    Ok(agents)
}

/// `[[operators]]`: the same rules as agents, and no operator may share a token with an agent
/// (an agent could then approve its own held calls).
fn operators(
    source: &Source,
    raw: Vec<Spanned<RawAgent>>,
    agents: &[AgentConfig],
) -> Result<Vec<OperatorConfig>, ConfigError> {
    let mut seen = HashMap::new();
    let mut by_token: HashMap<String, String> = HashMap::new();
    let mut operators = Vec::with_capacity(raw.len());
    for entry in raw {
        let raw = entry.into_inner();
        let name = unique_name(source, &raw.name, "operator", &mut seen)?;
        token_digest(source, "operator", &name, &raw.token_sha256)?;
        let token = raw.token_sha256.get_ref();
        if let Some(agent) = agents.iter().find(|agent| &agent.token_sha256 == token) {
            return Err(source.error(
                raw.token_sha256.span(),
                format!(
                    "operator `{name}` has the same `token_sha256` as agent `{}`; an agent's token must never decide approvals, so give the operator its own (`mcp-ledger operators add {name}`)",
                    agent.name
                ),
            ));
        }
        if let Some(other) = by_token.insert(token.clone(), name.clone()) {
            return Err(source.error(
                raw.token_sha256.span(),
                format!("operator `{name}` has the same `token_sha256` as operator `{other}`"),
            ));
        }
        operators.push(OperatorConfig { name, token_sha256: raw.token_sha256.into_inner() });
    }
    Ok(operators)
}

fn approvals(source: &Source, raw: RawApprovals) -> Result<ApprovalsConfig, ConfigError> {
    let defaults = ApprovalsConfig::default();
    if let Some(url) = &raw.webhook_url {
        source.check_template(url, &Place::WebhookUrl)?;
        // With `${VAR}` in it, the URL is checked once substituted (`resolve_secrets`).
        if !url.get_ref().contains("${") && !is_http_url(url.get_ref()) {
            return Err(source.error(
                url.span(),
                "`approvals.webhook_url` must be an absolute http:// or https:// url",
            ));
        }
    }
    if let Some(url) = &raw.console_url
        && !is_http_url(url.get_ref())
    {
        return Err(source.error(
            url.span(),
            "`approvals.console_url` must be an absolute http:// or https:// url",
        ));
    }
    Ok(ApprovalsConfig {
        webhook_url: raw.webhook_url.map(Spanned::into_inner),
        webhook_timeout_ms: at_least_one(
            source,
            raw.webhook_timeout_ms,
            "approvals.webhook_timeout_ms",
        )?
        .unwrap_or(defaults.webhook_timeout_ms),
        console_url: raw.console_url.map(Spanned::into_inner),
    })
}

fn telemetry(source: &Source, raw: RawTelemetry) -> Result<TelemetryConfig, ConfigError> {
    if let Some(url) = &raw.otlp_endpoint
        && !is_http_url(url.get_ref())
    {
        return Err(source.error(
            url.span(),
            "`telemetry.otlp_endpoint` must be an absolute http:// or https:// url (the \
             collector's OTLP/HTTP base, e.g. http://127.0.0.1:4318)",
        ));
    }
    let protocol = match &raw.protocol {
        None => None,
        Some(value) => Some(OtlpProtocol::parse(value.get_ref()).ok_or_else(|| {
            source.error(
                value.span(),
                format!(
                    "`telemetry.protocol` must be \"http/protobuf\" or \"http/json\", not \"{}\" \
                     (grpc is not built in)",
                    value.get_ref().escape_debug()
                ),
            )
        })?),
    };
    if let Some(name) = &raw.service_name
        && (name.get_ref().trim().is_empty() || name.get_ref().chars().any(char::is_control))
    {
        return Err(source.error(
            name.span(),
            "`telemetry.service_name` must be a non-empty name without control characters",
        ));
    }
    Ok(TelemetryConfig {
        metrics: raw.metrics.unwrap_or(TelemetryConfig::default().metrics),
        otlp_endpoint: raw.otlp_endpoint.map(Spanned::into_inner),
        protocol,
        service_name: raw.service_name.map(Spanned::into_inner),
    })
}

/// Whether `url` is an absolute http(s) URL with a host.
pub(super) fn is_http_url(url: &str) -> bool {
    reqwest::Url::parse(url)
        .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
}

fn audit(source: &Source, raw: RawAudit) -> Result<AuditConfig, ConfigError> {
    let defaults = AuditConfig::default();
    let scan_pii = raw.scan_pii.as_ref().is_none_or(|s| *s.get_ref());
    let mut audit = AuditConfig {
        scan_pii,
        retention_days: at_least_one(source, raw.retention_days, "audit.retention_days")?,
        retention_max_size_mb: at_least_one(
            source,
            raw.retention_max_size_mb,
            "audit.retention_max_size_mb",
        )?,
        log_tool_args: raw.log_tool_args.unwrap_or(defaults.log_tool_args),
        // Without a scanner there is nothing to redact with, so bodies are kept as they are.
        payloads: if scan_pii { Storage::Redacted } else { Storage::Full },
        pii_disabled: Vec::new(),
        pii_patterns: Vec::new(),
        payload_retention_days: at_least_one(
            source,
            raw.payload_retention_days,
            "audit.payload_retention_days",
        )?,
    };
    if let Some(mode) = &raw.payloads {
        audit.payloads = storage(source, mode, "audit.payloads", &audit)?;
    }
    let builtins: Vec<&str> = crate::pii::builtin_names().collect();
    for name in raw.pii_disabled.unwrap_or_default() {
        if !builtins.contains(&name.get_ref().as_str()) {
            return Err(source.error(
                name.span(),
                format!(
                    "`audit.pii_disabled` names `{}`, which is not a built-in PII pattern ({})",
                    name.get_ref().escape_debug(),
                    builtins.join(", ")
                ),
            ));
        }
        audit.pii_disabled.push(name.into_inner());
    }
    for entry in raw.pii_patterns {
        let span = entry.span();
        let RawPiiPattern { name, regex } = entry.into_inner();
        let one = crate::pii::ScannerConfig {
            disabled: Vec::new(),
            custom: vec![(name.get_ref().clone(), regex.get_ref().clone())],
        };
        if let Err(error) = crate::pii::Scanner::new(&one) {
            let at = match error {
                crate::pii::PiiError::InvalidRegex { .. } => regex.span(),
                _ => name.span(),
            };
            return Err(source.error(at, format!("`audit.pii_patterns`: {error}")));
        }
        if audit.pii_patterns.iter().any(|(n, _)| n == name.get_ref()) {
            return Err(source
                .error(span, format!("`audit.pii_patterns` defines `{}` twice", name.get_ref())));
        }
        audit.pii_patterns.push((name.into_inner(), regex.into_inner()));
    }
    if let Some(scan) = &raw.scan_pii
        && !scan_pii
        && !audit.pii_patterns.is_empty()
    {
        return Err(source.error(
            scan.span(),
            "`audit.pii_patterns` are defined but `audit.scan_pii` is false, so they would never run",
        ));
    }
    Ok(audit)
}

/// A storage mode: `full`, `redacted` or `none`; `redacted` only when PII scanning is on.
fn storage(
    source: &Source,
    mode: &Spanned<String>,
    key: &str,
    audit: &AuditConfig,
) -> Result<Storage, ConfigError> {
    let Some(storage) = Storage::parse(mode.get_ref()) else {
        return Err(source.error(
            mode.span(),
            format!(
                "`{key}` must be \"full\", \"redacted\" or \"none\", not \"{}\"",
                mode.get_ref().escape_debug()
            ),
        ));
    };
    if storage == Storage::Redacted && !audit.scan_pii {
        return Err(source.error(
            mode.span(),
            format!("`{key}` is \"redacted\", but `audit.scan_pii` is false: redaction needs the scanner"),
        ));
    }
    Ok(storage)
}

fn policy(source: &Source, raw: RawPolicy) -> Result<PolicyConfig, ConfigError> {
    let default = match raw.default {
        None => PolicyConfig::default().default,
        Some(value) if matches!(value.get_ref().as_str(), "allow" | "deny" | "hold") => {
            value.into_inner()
        }
        Some(value) => {
            return Err(source.error(
                value.span(),
                format!(
                    "`policy.default` must be \"allow\", \"deny\" or \"hold\", not \"{}\"",
                    value.get_ref().escape_debug()
                ),
            ));
        }
    };
    Ok(PolicyConfig { dir: raw.dir, default })
}
