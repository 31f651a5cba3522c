//! The configuration file, `mcp-ledger.toml`: its shape, its validation, and the `${VAR}`
//! references through which secrets reach it from the environment.
//!
//! Loading is strict: an unknown key, a value of the wrong type or an invalid setting is an error
//! naming the file, the line and the key (`mcp-ledger.toml:12:1: …`). Secrets stay out of the
//! file and out of every message: `env` and `headers` values and `ledger.url` may hold `${VAR}`,
//! substituted by [`Config::resolve_secrets`] at start-up, and `Debug` never prints them.

mod raw;
mod secrets;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use crate::record::Storage;

pub use secrets::{ConfigWarning, Place, redact_webhook_url};

/// The file's name when a configuration is not read from a file (and the conventional name).
pub const DEFAULT_FILE_NAME: &str = "mcp-ledger.toml";

/// A whole `mcp-ledger.toml`. Every table is optional; [`Config::validate_for_serve`] adds what
/// `serve` needs on top.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    pub ledger: LedgerConfig,
    pub listen: ListenConfig,
    pub servers: Vec<ServerConfig>,
    pub agents: Vec<AgentConfig>,
    /// `[[operators]]`: who may decide held calls through the HTTP API and the console.
    pub operators: Vec<OperatorConfig>,
    pub audit: AuditConfig,
    pub policy: PolicyConfig,
    pub approvals: ApprovalsConfig,
    /// `[telemetry]`: the Prometheus endpoint and OTLP span export.
    pub telemetry: TelemetryConfig,
    /// The file this was loaded from, for messages; `None` when built in code.
    pub path: Option<PathBuf>,
}

/// `[ledger]`
#[derive(Clone, PartialEq, Eq)]
pub struct LedgerConfig {
    /// `sqlite://PATH` or `postgres://…`; may hold `${VAR}`.
    pub url: Option<String>,
    /// The Ed25519 key file; a relative path is relative to the configuration file.
    pub signing_key: Option<PathBuf>,
    /// How long a ledger write may wait for a lock or connection before the call fails closed.
    pub lock_timeout_ms: u64,
    /// The chain this process appends to and checkpoints (default `default`). Proxies on
    /// different chains do not wait for each other's appends.
    pub chain: String,
    /// Sign a checkpoint after this many new events (default 1000)...
    pub checkpoint_every_events: u64,
    /// ...or after this many seconds with new events (default 60), and at shutdown.
    pub checkpoint_every_secs: u64,
    /// Where every checkpoint is also written: a directory (one file per checkpoint) or a file
    /// (appended), meant to live on write-once storage; relative to the configuration file.
    pub anchor: Option<PathBuf>,
}

/// `[listen]`: the Streamable HTTP endpoint of `serve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenConfig {
    pub addr: SocketAddr,
    /// `Origin` values accepted besides the loopback ones; empty means loopback origins only.
    pub allowed_origins: Vec<String>,
    /// `Host` values accepted besides the loopback ones; empty means loopback hosts only.
    pub allowed_hosts: Vec<String>,
    pub max_body_bytes: usize,
    /// Open HTTP sessions at most; at the limit a new one evicts the least recently active
    /// session without an open stream, and is refused only when there is none.
    pub max_sessions: usize,
    pub session_idle_timeout_secs: u64,
}

/// One `[[servers]]` entry: an upstream MCP server, served at `/mcp/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Unique and URL-path-safe (see [`is_valid_name`]).
    pub name: String,
    pub transport: UpstreamTransport,
    /// One upstream connection shared by every agent session, instead of one per session.
    pub shared: bool,
    /// Methods recorded besides `tools/call`; `None` means the default set.
    pub record_methods: Option<Vec<String>>,
    /// How long a recorded call may wait for its response before the proxy answers it with an
    /// error (and records that); 0 waits forever.
    pub call_timeout_secs: u64,
    /// How this server's bodies are stored; `None`: `[audit] payloads`.
    pub payloads: Option<Storage>,
    /// Per tool of this server, overriding `payloads`.
    pub tool_payloads: BTreeMap<String, Storage>,
}

/// The default `call_timeout_secs`: long enough for slow tools, short enough that a hung upstream
/// does not hold an agent forever.
pub const DEFAULT_CALL_TIMEOUT_SECS: u64 = 600;

/// How to reach an upstream: in TOML, `command` (+ `env`, `cwd`) or `url` (+ `headers`).
#[derive(Clone, PartialEq, Eq)]
pub enum UpstreamTransport {
    /// A child process speaking MCP on stdio. `env` values may hold `${VAR}`.
    Stdio { command: Vec<String>, env: BTreeMap<String, String>, cwd: Option<PathBuf> },
    /// A Streamable HTTP server. `headers` values may hold `${VAR}`.
    Http { url: String, headers: BTreeMap<String, String> },
}

/// One `[[agents]]` entry: a bearer token's hash and the name calls are recorded under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    pub name: String,
    /// Lower-case hex SHA-256 of the token string (see [`token_sha256`]).
    pub token_sha256: String,
}

/// One `[[operators]]` entry: a person who approves or denies held calls over HTTP. Decisions
/// are recorded as `operator/<name>`. An operator's token is never also an agent's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorConfig {
    pub name: String,
    /// Lower-case hex SHA-256 of the token string (see [`token_sha256`]).
    pub token_sha256: String,
}

/// `[approvals]`: telling operators that a call is waiting.
#[derive(Clone, PartialEq, Eq)]
pub struct ApprovalsConfig {
    /// Every hold is POSTed here as JSON; may hold `${VAR}` (a chat webhook's URL is a secret).
    pub webhook_url: Option<String>,
    /// How long one webhook delivery may take before it counts as failed.
    pub webhook_timeout_ms: u64,
    /// The console's address as operators reach it, sent in the webhook's `console_url`;
    /// default `http://<listen addr>/console`.
    pub console_url: Option<String>,
}

/// The default `[approvals] webhook_timeout_ms`.
pub const DEFAULT_WEBHOOK_TIMEOUT_MS: u64 = 3000;

impl Default for ApprovalsConfig {
    fn default() -> Self {
        ApprovalsConfig {
            webhook_url: None,
            webhook_timeout_ms: DEFAULT_WEBHOOK_TIMEOUT_MS,
            console_url: None,
        }
    }
}

/// `[telemetry]`: metrics and traces. See docs/observability.md.
#[derive(Clone, PartialEq, Eq)]
pub struct TelemetryConfig {
    /// Serve Prometheus metrics at `GET /metrics` beside the MCP endpoints (`serve`).
    pub metrics: bool,
    /// The OTLP/HTTP collector's base URL (`/v1/traces` is appended), like
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`; with neither, no spans are exported.
    pub otlp_endpoint: Option<String>,
    /// `None`: `OTEL_EXPORTER_OTLP_PROTOCOL` if set, else `http/protobuf`.
    pub protocol: Option<OtlpProtocol>,
    /// `service.name` of the exported spans; `None`: `OTEL_SERVICE_NAME`, else `mcp-ledger`.
    pub service_name: Option<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig { metrics: true, otlp_endpoint: None, protocol: None, service_name: None }
    }
}

/// How spans travel to the collector: OTLP over HTTP, as protobuf or JSON (gRPC is not built in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtlpProtocol {
    HttpProtobuf,
    HttpJson,
}

impl OtlpProtocol {
    /// The value `OTEL_EXPORTER_OTLP_PROTOCOL` would have.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "http/protobuf" => Some(OtlpProtocol::HttpProtobuf),
            "http/json" => Some(OtlpProtocol::HttpJson),
            _ => None,
        }
    }
}

/// `[audit]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// Scan every recorded body for PII and secrets (`pii_detected` events, redaction).
    pub scan_pii: bool,
    pub retention_days: Option<u32>,
    pub retention_max_size_mb: Option<u64>,
    /// Keep the arguments of tool calls; `false` stores them as `none` (reference and size).
    pub log_tool_args: bool,
    /// How bodies are stored unless a server or tool says otherwise: `redacted` by default
    /// when scanning, `full` when not.
    pub payloads: Storage,
    /// Built-in PII patterns not to run.
    pub pii_disabled: Vec<String>,
    /// `[[audit.pii_patterns]]`: custom patterns as `(name, regex)`.
    pub pii_patterns: Vec<(String, String)>,
    /// Payload bodies no event newer than this many days references are erased by `retention
    /// apply`; default `retention_days`.
    pub payload_retention_days: Option<u32>,
}

impl AuditConfig {
    /// The scanner settings, or `None` when scanning is off.
    pub fn scanner_config(&self) -> Option<crate::pii::ScannerConfig> {
        self.scan_pii.then(|| crate::pii::ScannerConfig {
            disabled: self.pii_disabled.clone(),
            custom: self.pii_patterns.clone(),
        })
    }

    /// How long payload bodies are kept, if they expire.
    pub fn payload_retention(&self) -> Option<u32> {
        self.payload_retention_days.or(self.retention_days)
    }
}

/// `[policy]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// The directory of `*.toml` policies; a relative path is relative to the configuration file.
    pub dir: Option<PathBuf>,
    /// The decision when no rule matches: `allow`, `deny` or `hold`.
    pub default: String,
}

impl Default for LedgerConfig {
    fn default() -> Self {
        LedgerConfig {
            url: None,
            signing_key: None,
            lock_timeout_ms: 5000,
            chain: crate::store::DEFAULT_CHAIN.to_owned(),
            checkpoint_every_events: 1000,
            checkpoint_every_secs: 60,
            anchor: None,
        }
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8931)),
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            max_body_bytes: 4 * 1024 * 1024,
            max_sessions: 1000,
            session_idle_timeout_secs: 1800,
        }
    }
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            scan_pii: true,
            retention_days: None,
            retention_max_size_mb: None,
            log_tool_args: true,
            payloads: Storage::Redacted,
            pii_disabled: Vec::new(),
            pii_patterns: Vec::new(),
            payload_retention_days: None,
        }
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig { dir: None, default: "allow".to_owned() }
    }
}

/// Why a configuration could not be loaded or prepared. Messages name the file, and the line and
/// key where there is one; they never contain a secret value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no configuration file at {}", path.display())]
    NotFound { path: PathBuf },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A syntax, type or validation error at a place in the file.
    #[error("{file}:{line}:{column}: {message}")]
    Invalid { file: String, line: usize, column: usize, message: String },
    /// An error the TOML parser could not place.
    #[error("{file}: {message}")]
    Unplaced { file: String, message: String },
    #[error("{file}: no [[servers]] table; `serve` needs at least one upstream server")]
    NoServers { file: String },
    #[error("{file}: environment variable {variable} is not set; {place} needs it")]
    MissingVariable { file: String, variable: String, place: Place },
    #[error("{file}: {place} is not a valid http header value once its ${{VAR}} are substituted")]
    InvalidHeaderValue { file: String, place: Place },
    #[error(
        "{file}: {place} is not an absolute http:// or https:// url once its ${{VAR}} are substituted"
    )]
    InvalidUrl { file: String, place: Place },
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ConfigError::NotFound { path: path.to_owned() }
            } else {
                ConfigError::Read { path: path.to_owned(), source }
            }
        })?;
        Config::from_toml(&text, path)
    }

    /// Parses and validates `text` as if read from `path`: messages name `path`, and relative
    /// paths in the file (`signing_key`, `cwd`, `policy.dir`) are taken relative to its directory.
    pub fn from_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut config = raw::parse(text, &path.display().to_string())?;
        config.path = Some(path.to_owned());
        if let Some(base) = path.parent() {
            config.resolve_relative_paths(base);
        }
        Ok(config)
    }

    /// What `serve` needs beyond a valid file: at least one upstream server.
    pub fn validate_for_serve(&self) -> Result<(), ConfigError> {
        if self.servers.is_empty() {
            return Err(ConfigError::NoServers { file: self.file_label() });
        }
        Ok(())
    }

    /// The server called `name`.
    pub fn server(&self, name: &str) -> Option<&ServerConfig> {
        self.servers.iter().find(|server| server.name == name)
    }

    /// The agent whose token this is. Compares hashes in constant time.
    pub fn agent_by_token(&self, token: &str) -> Option<&AgentConfig> {
        let presented = token_sha256(token);
        self.agents.iter().find(|agent| constant_time_eq(&agent.token_sha256, &presented))
    }

    /// The operator whose token this is. Compares hashes in constant time.
    pub fn operator_by_token(&self, token: &str) -> Option<&OperatorConfig> {
        let presented = token_sha256(token);
        self.operators.iter().find(|op| constant_time_eq(&op.token_sha256, &presented))
    }

    /// The file name used in messages.
    fn file_label(&self) -> String {
        match &self.path {
            Some(path) => path.display().to_string(),
            None => DEFAULT_FILE_NAME.to_owned(),
        }
    }

    fn resolve_relative_paths(&mut self, base: &Path) {
        let rebase = |path: &mut PathBuf| {
            if path.is_relative() {
                *path = base.join(&*path);
            }
        };
        if let Some(key) = &mut self.ledger.signing_key {
            rebase(key);
        }
        if let Some(anchor) = &mut self.ledger.anchor {
            rebase(anchor);
        }
        if let Some(dir) = &mut self.policy.dir {
            rebase(dir);
        }
        for server in &mut self.servers {
            if let UpstreamTransport::Stdio { cwd: Some(cwd), .. } = &mut server.transport {
                rebase(cwd);
            }
        }
    }
}

/// Whether `name` may name a server, an agent or an operator: non-empty `[A-Za-z0-9._-]`, and not `.` or `..`
/// (servers are served at `/mcp/<name>`, where those two would be path segments).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The lower-case hex SHA-256 of a token string, as written in `[[agents]] token_sha256`.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

const REDACTED: &str = "<redacted>";

/// Keys shown, values hidden: `env` and `headers` values are secrets or point at them.
struct RedactedMap<'a>(&'a BTreeMap<String, String>);

impl fmt::Debug for RedactedMap<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.0.keys().map(|key| (key, REDACTED))).finish()
    }
}

impl fmt::Debug for UpstreamTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UpstreamTransport::Stdio { command, env, cwd } => f
                .debug_struct("Stdio")
                .field("command", command)
                .field("env", &RedactedMap(env))
                .field("cwd", cwd)
                .finish(),
            UpstreamTransport::Http { url, headers } => f
                .debug_struct("Http")
                .field("url", &secrets::redact_url_password(url))
                .field("headers", &RedactedMap(headers))
                .finish(),
        }
    }
}

impl fmt::Debug for ApprovalsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApprovalsConfig")
            .field("webhook_url", &self.webhook_url.as_deref().map(secrets::redact_webhook_url))
            .field("webhook_timeout_ms", &self.webhook_timeout_ms)
            .field("console_url", &self.console_url)
            .finish()
    }
}

impl fmt::Debug for TelemetryConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TelemetryConfig")
            .field("metrics", &self.metrics)
            .field(
                "otlp_endpoint",
                &self.otlp_endpoint.as_deref().map(secrets::redact_url_password),
            )
            .field("protocol", &self.protocol)
            .field("service_name", &self.service_name)
            .finish()
    }
}

impl fmt::Debug for LedgerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LedgerConfig")
            .field("url", &self.url.as_deref().map(secrets::redact_url_password))
            .field("signing_key", &self.signing_key)
            .field("lock_timeout_ms", &self.lock_timeout_ms)
            .field("chain", &self.chain)
            .field("checkpoint_every_events", &self.checkpoint_every_events)
            .field("checkpoint_every_secs", &self.checkpoint_every_secs)
            .field("anchor", &self.anchor)
            .finish()
    }
}
