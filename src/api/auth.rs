//! Who may use the operator API: bearer tokens of `[[operators]]`, never those of agents, and
//! the same `Host`/`Origin` checks as `/mcp` (plus same-origin requests from the console).
//! Tokens are known only by their SHA-256 and compared in constant time; none is ever logged.

use http::HeaderMap;
use http::header::{AUTHORIZATION, HOST, ORIGIN};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::proxy::http_server::OriginPolicy;

/// The operators' token digests, and the agents' (to tell an agent why it is refused).
#[derive(Debug, Clone, Default)]
pub struct OperatorTokens {
    operators: Vec<(String, [u8; 32])>,
    agents: Vec<[u8; 32]>,
}

/// Why a request was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthRejection {
    MissingToken,
    UnknownToken,
    /// The token is an agent's: agents never see or decide approvals.
    AgentToken,
}

impl OperatorTokens {
    /// `operators` and `agents` pair names with lower-case hex SHA-256 digests of their tokens.
    pub fn new(
        operators: &[(String, String)],
        agents: &[(String, String)],
    ) -> Result<Self, String> {
        let decode = |kind: &str, name: &str, digest: &str| {
            hex::decode(digest).ok().and_then(|b| <[u8; 32]>::try_from(b).ok()).ok_or_else(|| {
                format!("{kind} `{name}` has a token_sha256 that is not 64 hex digits")
            })
        };
        let operators = operators
            .iter()
            .map(|(name, digest)| Ok((name.clone(), decode("operator", name, digest)?)))
            .collect::<Result<Vec<_>, String>>()?;
        let agents = agents
            .iter()
            .map(|(name, digest)| decode("agent", name, digest))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(OperatorTokens { operators, agents })
    }

    /// The `[[operators]]` and `[[agents]]` of a loaded configuration.
    pub fn from_config(config: &Config) -> Result<Self, String> {
        let operators: Vec<_> =
            config.operators.iter().map(|o| (o.name.clone(), o.token_sha256.clone())).collect();
        let agents: Vec<_> =
            config.agents.iter().map(|a| (a.name.clone(), a.token_sha256.clone())).collect();
        OperatorTokens::new(&operators, &agents)
    }

    pub fn is_empty(&self) -> bool {
        self.operators.is_empty()
    }

    /// The operator the request's bearer token belongs to.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<String, AuthRejection> {
        let token = headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .filter(|token| !token.is_empty())
            .ok_or(AuthRejection::MissingToken)?;
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        // Every digest is compared in full, so timing tells nothing about near misses.
        let mut operator = None;
        for (name, expected) in &self.operators {
            if same(expected, &digest) {
                operator = Some(name.clone());
            }
        }
        let mut agent = false;
        for expected in &self.agents {
            agent |= same(expected, &digest);
        }
        match (operator, agent) {
            (Some(name), false) => Ok(name),
            // The configuration refuses a token shared by both; be safe anyway.
            (_, true) => Err(AuthRejection::AgentToken),
            (None, false) => Err(AuthRejection::UnknownToken),
        }
    }
}

fn same(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `/mcp` checks of `Host` and `Origin`; a request whose `Origin` is the very host it was
/// sent to (the console calling its own API) needs only its `Host` to pass. `Err` names the
/// header at fault.
pub fn check_origin(policy: &OriginPolicy, headers: &HeaderMap) -> Result<(), &'static str> {
    let host = headers.get(HOST).and_then(|h| h.to_str().ok());
    let origin = headers.get(ORIGIN).and_then(|o| o.to_str().ok());
    if let (Some(host), Some(origin)) = (host, origin) {
        let same_origin = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|authority| authority.eq_ignore_ascii_case(host));
        if same_origin {
            let mut host_only = headers.clone();
            host_only.remove(ORIGIN);
            return policy.check(&host_only);
        }
    }
    policy.check(headers)
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
        crate::config::token_sha256(token)
    }

    #[test]
    fn only_operator_tokens_authenticate() {
        let tokens = OperatorTokens::new(
            &[("alice".into(), digest("t-alice")), ("bob".into(), digest("t-bob"))],
            &[("bot".into(), digest("t-bot"))],
        )
        .unwrap();
        let bearer = |t: &str| headers(&[("authorization", &format!("Bearer {t}"))]);
        assert_eq!(tokens.authenticate(&bearer("t-bob")), Ok("bob".into()));
        assert_eq!(tokens.authenticate(&bearer("t-bot")), Err(AuthRejection::AgentToken));
        assert_eq!(tokens.authenticate(&bearer("nope")), Err(AuthRejection::UnknownToken));
        assert_eq!(tokens.authenticate(&headers(&[])), Err(AuthRejection::MissingToken));
        assert_eq!(tokens.authenticate(&bearer("")), Err(AuthRejection::MissingToken));
        assert_eq!(
            tokens.authenticate(&headers(&[("authorization", "bearer t-alice")])),
            Ok("alice".into())
        );
        assert!(OperatorTokens::new(&[("x".into(), "abc".into())], &[]).is_err());
        // No operators: nobody gets in, and an agent is still told why.
        let none = OperatorTokens::new(&[], &[("bot".into(), digest("t-bot"))]).unwrap();
        assert!(none.is_empty());
        assert_eq!(none.authenticate(&bearer("t-bot")), Err(AuthRejection::AgentToken));
        assert_eq!(none.authenticate(&bearer("t-x")), Err(AuthRejection::UnknownToken));
    }

    #[test]
    fn same_origin_requests_need_only_an_allowed_host() {
        let policy =
            OriginPolicy { allowed_hosts: vec!["ledger.internal".into()], allowed_origins: vec![] };
        let same = headers(&[
            ("host", "ledger.internal:8931"),
            ("origin", "https://ledger.internal:8931"),
        ]);
        assert_eq!(check_origin(&policy, &same), Ok(()));
        let other =
            headers(&[("host", "ledger.internal:8931"), ("origin", "https://evil.example")]);
        assert_eq!(check_origin(&policy, &other), Err("Origin"));
        let rebound = headers(&[("host", "evil.example"), ("origin", "http://evil.example")]);
        assert_eq!(check_origin(&policy, &rebound), Err("Host"));
        let local = headers(&[("host", "127.0.0.1:1"), ("origin", "http://localhost:2")]);
        assert_eq!(check_origin(&OriginPolicy::default(), &local), Ok(()));
    }
}
