//! Who may talk to the HTTP endpoint: bearer-token authentication of agents, and the `Host` and
//! `Origin` checks that stop a web page from reaching a local proxy through DNS rebinding.

use http::HeaderMap;
use http::header::{AUTHORIZATION, HOST, ORIGIN};
use sha2::{Digest, Sha256};

use crate::proxy::is_loopback_host;

/// The agents allowed to connect, by the SHA-256 of their token (the config never holds tokens).
#[derive(Debug, Clone, Default)]
pub struct AgentTokens {
    agents: Vec<(String, [u8; 32])>,
    /// With no agents configured on a loopback address, callers are accepted as `anonymous`.
    pub allow_anonymous: bool,
}

/// Why a request was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRejection {
    MissingToken,
    UnknownToken,
}

impl AuthRejection {
    pub fn reason(self) -> &'static str {
        match self {
            AuthRejection::MissingToken => "missing bearer token",
            AuthRejection::UnknownToken => "unknown token",
        }
    }
}

pub const ANONYMOUS: &str = "anonymous";

impl AgentTokens {
    /// `agents` pairs names with lower-case hex SHA-256 digests of their tokens.
    pub fn new(agents: &[(String, String)], allow_anonymous: bool) -> Result<Self, String> {
        let agents = agents
            .iter()
            .map(|(name, digest)| {
                let bytes = hex::decode(digest)
                    .ok()
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| {
                        format!("agent `{name}` has a token_sha256 that is not 64 hex digits")
                    })?;
                Ok((name.clone(), bytes))
            })
            .collect::<Result<_, String>>()?;
        Ok(AgentTokens { agents, allow_anonymous })
    }

    /// The agent the request's bearer token belongs to.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<String, AuthRejection> {
        let token = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            // The auth scheme is case-insensitive (RFC 9110 §11.1).
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let Some(token) = token else {
            return if self.allow_anonymous && self.agents.is_empty() {
                Ok(ANONYMOUS.to_owned())
            } else {
                Err(AuthRejection::MissingToken)
            };
        };
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Compare every digest in full, so timing says nothing about which agent nearly matched.
        let mut found = None;
        for (name, expected) in &self.agents {
            let differs = expected.iter().zip(digest.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if differs == 0 {
                found = Some(name.clone());
            }
        }
        found.ok_or(AuthRejection::UnknownToken)
    }
}

/// Which `Host` and `Origin` values are acceptable.
#[derive(Debug, Clone, Default)]
pub struct OriginPolicy {
    /// Extra hosts (`name` or `name:port`) besides loopback names.
    pub allowed_hosts: Vec<String>,
    /// Extra origins (`scheme://host[:port]`) besides loopback origins.
    pub allowed_origins: Vec<String>,
}

impl OriginPolicy {
    /// `Err` names the header that failed.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        if let Some(host) = headers.get(HOST).and_then(|h| h.to_str().ok()) {
            let allowed = is_loopback_host(host_name(host))
                || self.allowed_hosts.iter().any(|h| {
                    h.eq_ignore_ascii_case(host) || h.eq_ignore_ascii_case(host_name(host))
                });
            if !allowed {
                return Err("Host");
            }
        }
        if let Some(origin) = headers.get(ORIGIN) {
            let origin = origin.to_str().map_err(|_| "Origin")?;
            let host = origin.split_once("://").map(|(_, rest)| rest).unwrap_or(origin);
            let allowed = is_loopback_host(host_name(host))
                || self.allowed_origins.iter().any(|o| o.eq_ignore_ascii_case(origin));
            if !allowed {
                return Err("Origin");
            }
        }
        Ok(())
    }
}

/// The host part of `host[:port]`, including bracketed IPv6.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, v.parse().unwrap());
        }
        map
    }

    fn digest(token: &str) -> String {
        hex::encode(Sha256::digest(token.as_bytes()))
    }

    #[test]
    fn tokens_map_to_their_agents() {
        let tokens = AgentTokens::new(
            &[("ops".into(), digest("t-ops")), ("bot".into(), digest("t-bot"))],
            false,
        )
        .unwrap();
        assert_eq!(
            tokens.authenticate(&headers(&[("authorization", "Bearer t-bot")])),
            Ok("bot".into())
        );
        assert_eq!(
            tokens.authenticate(&headers(&[("authorization", "Bearer nope")])),
            Err(AuthRejection::UnknownToken)
        );
        assert_eq!(tokens.authenticate(&headers(&[])), Err(AuthRejection::MissingToken));
        assert_eq!(
            tokens.authenticate(&headers(&[("authorization", "Basic x")])),
            Err(AuthRejection::MissingToken)
        );
        assert!(AgentTokens::new(&[("x".into(), "abc".into())], false).is_err());
    }

    #[test]
    fn anonymous_only_without_agents_and_when_allowed() {
        let open = AgentTokens::new(&[], true).unwrap();
        assert_eq!(open.authenticate(&headers(&[])), Ok(ANONYMOUS.into()));
        let closed = AgentTokens::new(&[], false).unwrap();
        assert_eq!(closed.authenticate(&headers(&[])), Err(AuthRejection::MissingToken));
    }

    #[test]
    fn hosts_and_origins_outside_loopback_are_refused() {
        let policy = OriginPolicy::default();
        assert!(policy.check(&headers(&[("host", "127.0.0.1:8931")])).is_ok());
        assert!(
            policy
                .check(&headers(&[("host", "localhost:8931"), ("origin", "http://localhost:3000")]))
                .is_ok()
        );
        assert!(policy.check(&headers(&[("host", "[::1]:8931")])).is_ok());
        assert_eq!(policy.check(&headers(&[("host", "evil.example:8931")])), Err("Host"));
        assert_eq!(
            policy.check(&headers(&[("host", "127.0.0.1"), ("origin", "https://evil.example")])),
            Err("Origin")
        );
        let configured = OriginPolicy {
            allowed_hosts: vec!["proxy.internal".into()],
            allowed_origins: vec!["https://app.internal".into()],
        };
        assert!(
            configured
                .check(&headers(&[
                    ("host", "proxy.internal:8931"),
                    ("origin", "https://app.internal")
                ]))
                .is_ok()
        );
    }
}
