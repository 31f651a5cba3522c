//! Secrets reach the configuration from the environment: `${VAR}` in `env` and `headers` values
//! and in `ledger.url`, substituted once at start-up. This module also spots secrets written into
//! the file literally, and hides them from `Debug`. No function here puts a value in a message.

use std::fmt;
use std::ops::Range;

use super::{Config, ConfigError, UpstreamTransport};

/// A value that may hold `${VAR}`, named the way messages name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    LedgerUrl,
    Env {
        server: String,
        name: String,
    },
    Header {
        server: String,
        name: String,
    },
    /// The `url` of an HTTP server (which cannot hold `${VAR}`).
    Url {
        server: String,
    },
    /// `[approvals] webhook_url`.
    WebhookUrl,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::LedgerUrl => f.write_str("ledger.url"),
            Place::Env { server, name } => write!(f, "env {name} of server {server}"),
            Place::Header { server, name } => write!(f, "header {name} of server {server}"),
            Place::Url { server } => write!(f, "url of server {server}"),
            Place::WebhookUrl => f.write_str("approvals.webhook_url"),
        }
    }
}

/// Something `serve` should tell the operator about, though it can run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigWarning {
    /// The value looks like a credential written into the file instead of `${VAR}`.
    LiteralSecret(Place),
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigWarning::LiteralSecret(place @ Place::WebhookUrl) => write!(
                f,
                "{place} holds a literal secret in its query or password; write the url as ${{VAR}}"
            ),
            ConfigWarning::LiteralSecret(place @ Place::Url { .. }) => write!(
                f,
                "{place} holds a password; move it to a header such as Authorization = \"Basic ${{VAR}}\""
            ),
            ConfigWarning::LiteralSecret(place) => {
                write!(f, "{place} holds a literal secret; use ${{VAR}}")
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum TemplateError {
    /// `${` without its `}`.
    Unterminated,
    /// `${…}` around something that is not a variable name.
    BadName,
    /// The variable is not set.
    Missing(String),
}

/// Replaces every `${NAME}` with `lookup(NAME)`; `$${` stands for a literal `${`, and any other
/// `$` is kept as it is.
pub(super) fn substitute(
    template: &str,
    lookup: &mut dyn FnMut(&str) -> Option<String>,
) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let from_dollar = &rest[dollar..];
        if let Some(after) = from_dollar.strip_prefix("$${") {
            out.push_str("${");
            rest = after;
        } else if let Some(body) = from_dollar.strip_prefix("${") {
            let end = body.find('}').ok_or(TemplateError::Unterminated)?;
            let name = &body[..end];
            if !is_variable_name(name) {
                return Err(TemplateError::BadName);
            }
            out.push_str(&lookup(name).ok_or_else(|| TemplateError::Missing(name.to_owned()))?);
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = &from_dollar[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn is_variable_name(name: &str) -> bool {
    name.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl Config {
    /// A copy with every `${VAR}` substituted through `lookup` (normally
    /// `|name| std::env::var(name).ok()`). Call [`Config::warnings`] on the original: the copy
    /// holds the secrets themselves.
    pub fn resolve_secrets(
        &self,
        mut lookup: impl FnMut(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let file = self.file_label();
        let mut resolve = |value: &mut String, place: Place| -> Result<(), ConfigError> {
            *value = substitute(value, &mut lookup).map_err(|error| match error {
                TemplateError::Missing(variable) => ConfigError::MissingVariable {
                    file: file.clone(),
                    variable,
                    place: place.clone(),
                },
                // Loading checked the syntax; only a config built in code gets here.
                TemplateError::Unterminated | TemplateError::BadName => ConfigError::Unplaced {
                    file: file.clone(),
                    message: format!("{place} has a malformed `${{…}}`"),
                },
            })?;
            if let Place::Header { .. } = place
                && http::HeaderValue::from_str(value).is_err()
            {
                return Err(ConfigError::InvalidHeaderValue { file: file.clone(), place });
            }
            Ok(())
        };
        let mut resolved = self.clone();
        if let Some(url) = &mut resolved.ledger.url {
            resolve(url, Place::LedgerUrl)?;
        }
        if let Some(url) = &mut resolved.approvals.webhook_url {
            resolve(url, Place::WebhookUrl)?;
            if !super::raw::is_http_url(url) {
                return Err(ConfigError::InvalidUrl { file, place: Place::WebhookUrl });
            }
        }
        for server in &mut resolved.servers {
            let name = &server.name;
            match &mut server.transport {
                UpstreamTransport::Stdio { env, .. } => {
                    for (key, value) in env {
                        resolve(value, Place::Env { server: name.clone(), name: key.clone() })?;
                    }
                }
                UpstreamTransport::Http { headers, .. } => {
                    for (key, value) in headers {
                        resolve(value, Place::Header { server: name.clone(), name: key.clone() })?;
                    }
                }
            }
        }
        Ok(resolved)
    }

    /// Values that look like credentials written into the file rather than taken from `${VAR}`.
    pub fn warnings(&self) -> Vec<ConfigWarning> {
        let mut warnings = Vec::new();
        if let Some(url) = &self.ledger.url
            && url_password(url).is_some_and(|range| !url[range].contains("${"))
        {
            warnings.push(ConfigWarning::LiteralSecret(Place::LedgerUrl));
        }
        if let Some(url) = &self.approvals.webhook_url
            && has_literal_url_secret(url)
        {
            warnings.push(ConfigWarning::LiteralSecret(Place::WebhookUrl));
        }
        for server in &self.servers {
            let name = &server.name;
            match &server.transport {
                UpstreamTransport::Stdio { env, .. } => {
                    for (key, value) in env {
                        if is_literal(value) && is_secret_env_name(key) {
                            warnings.push(ConfigWarning::LiteralSecret(Place::Env {
                                server: name.clone(),
                                name: key.clone(),
                            }));
                        }
                    }
                }
                UpstreamTransport::Http { url, headers } => {
                    if url_password(url).is_some() {
                        warnings.push(ConfigWarning::LiteralSecret(Place::Url {
                            server: name.clone(),
                        }));
                    }
                    for (key, value) in headers {
                        if is_literal(value) && is_secret_header(key, value) {
                            warnings.push(ConfigWarning::LiteralSecret(Place::Header {
                                server: name.clone(),
                                name: key.clone(),
                            }));
                        }
                    }
                }
            }
        }
        warnings
    }
}

fn is_literal(value: &str) -> bool {
    !value.trim().is_empty() && !value.contains("${")
}

fn is_secret_env_name(name: &str) -> bool {
    let name = name.to_ascii_uppercase();
    ["TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "API_KEY", "APIKEY", "PRIVATE_KEY"]
        .iter()
        .any(|word| name.contains(word))
        || name.ends_with("_KEY")
        || name.ends_with("_PAT")
}

fn is_secret_header(name: &str, value: &str) -> bool {
    let name = name.to_ascii_lowercase();
    let value = value.trim_start().to_ascii_lowercase();
    matches!(name.as_str(), "authorization" | "proxy-authorization" | "cookie")
        || ["token", "secret", "api-key", "apikey", "password", "credential"]
            .iter()
            .any(|word| name.contains(word))
        || ["bearer ", "basic ", "token "].iter().any(|scheme| value.starts_with(scheme))
}

/// Where the password of a `scheme://user:password@host/…` URL is, if it has one.
fn url_password(url: &str) -> Option<Range<usize>> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let at = authority.rfind('@')?;
    let colon = authority[..at].find(':')?;
    Some(start + colon + 1..start + at).filter(|range| !range.is_empty())
}

/// Whether a URL written in the file carries a credential literally: a password, or a query
/// parameter named like a secret (`token`, `key`, `sig`, …) or holding a token-like value.
fn has_literal_url_secret(url: &str) -> bool {
    if url_password(url).is_some_and(|range| !url[range].contains("${")) {
        return true;
    }
    let Some((_, query)) = url.split_once('?') else { return false };
    let query = query.split('#').next().unwrap_or_default();
    query.split('&').filter_map(|pair| pair.split_once('=')).any(|(name, value)| {
        if !is_literal(value) {
            return false;
        }
        let name = name.to_ascii_lowercase();
        let named_secret = ["token", "secret", "key", "sig", "password", "passwd", "auth", "code"]
            .iter()
            .any(|word| name.contains(word));
        let token_like = value.len() >= 16
            && value.bytes().any(|b| b.is_ascii_digit())
            && value.bytes().any(|b| b.is_ascii_alphabetic());
        named_secret || token_like
    })
}

/// A webhook URL for display: its password, path and query hidden (chat webhooks keep their
/// secret in the path or the query), so only the scheme and host remain.
pub fn redact_webhook_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(parsed) if parsed.host_str().is_some() => {
            let port = parsed.port().map(|p| format!(":{p}")).unwrap_or_default();
            let hidden = parsed.path() != "/" || parsed.query().is_some();
            let tail = if hidden { "/<redacted>" } else { "/" };
            format!("{}://{}{port}{tail}", parsed.scheme(), parsed.host_str().unwrap_or_default())
        }
        _ => super::REDACTED.to_owned(),
    }
}

/// The URL with its password, if any, replaced for display.
pub(super) fn redact_url_password(url: &str) -> String {
    match url_password(url) {
        Some(range) => format!("{}{}{}", &url[..range.start], super::REDACTED, &url[range.end..]),
        None => url.to_owned(),
    }
}
