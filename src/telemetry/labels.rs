//! Label values for metrics, and the rules that keep them safe and bounded.
//!
//! **Invariant:** a label value is a name an operator configured or a protocol chose — server,
//! agent, method, tool, PII pattern — or one of the fixed words below. Never an argument, a
//! result, an id, a token or a secret. Names an agent can make up (tool names) are checked
//! against the MCP tool-name rules and counted: past [`MAX_TOOLS`] distinct tools a call is
//! labelled `_other`, so a misbehaving agent cannot grow the number of series without end.

use std::collections::HashMap;
use std::fmt::Write;
use std::sync::{Arc, LazyLock, RwLock};

use prometheus_client::encoding::{EncodeLabelValue, LabelValueEncoder};

/// A label value shared by every series that uses it: cloning it is a reference count.
pub type Name = Arc<String>;

/// The most distinct tool names that get series of their own, across every server.
pub const MAX_TOOLS: usize = 256;

/// The most distinct method names (recorded methods are configured, so this is never reached in
/// practice; it is a guard all the same).
pub const MAX_METHODS: usize = 64;

/// The most distinct server, agent and pattern names: all come from the configuration.
pub const MAX_CONFIGURED: usize = 4096;

/// What a tool name that breaks the MCP naming rules is labelled as.
pub const INVALID: &str = "_invalid";

/// What a name past its kind's limit is labelled as.
pub const OTHER: &str = "_other";

/// One kind of name, interned: the first `limit` distinct values get a label of their own.
struct Interner {
    limit: usize,
    /// Read-mostly: after the first calls every lookup finds its name under the read lock.
    names: RwLock<HashMap<String, Name>>,
    other: Name,
}

impl Interner {
    fn new(limit: usize) -> Self {
        Interner { limit, names: RwLock::default(), other: Arc::new(OTHER.to_owned()) }
    }

    /// The shared label for `value`; allocates only the first time a value is seen.
    fn get(&self, value: &str) -> Name {
        if let Some(name) = self.names.read().expect("label lock").get(value) {
            return name.clone();
        }
        let mut names = self.names.write().expect("label lock");
        if let Some(name) = names.get(value) {
            return name.clone();
        }
        if names.len() >= self.limit {
            return self.other.clone();
        }
        let name = Arc::new(value.to_owned());
        names.insert(value.to_owned(), name.clone());
        name
    }
}

static TOOLS: LazyLock<Interner> = LazyLock::new(|| Interner::new(MAX_TOOLS));
static METHODS: LazyLock<Interner> = LazyLock::new(|| Interner::new(MAX_METHODS));
static CONFIGURED: LazyLock<Interner> = LazyLock::new(|| Interner::new(MAX_CONFIGURED));
static NONE: LazyLock<Name> = LazyLock::new(|| Arc::new(String::new()));
static INVALID_NAME: LazyLock<Name> = LazyLock::new(|| Arc::new(INVALID.to_owned()));

/// The label of a configured name (server, agent, PII pattern).
pub fn configured(value: &str) -> Name {
    CONFIGURED.get(value)
}

/// The label of a JSON-RPC method.
pub fn method(value: &str) -> Name {
    METHODS.get(value)
}

/// The label of a tool: its name when it follows the MCP rules, `_invalid` when it does not,
/// `_other` once [`MAX_TOOLS`] names are in use; empty for requests that name no tool.
pub fn tool(value: Option<&str>) -> Name {
    match value {
        None => NONE.clone(),
        Some(value) if !is_tool_name(value) => INVALID_NAME.clone(),
        Some(value) => TOOLS.get(value),
    }
}

/// Whether `name` follows the MCP tool-name rules (2025-11-25): 1 to 128 characters of ASCII
/// letters, digits, `_`, `-`, `.` and `/`. Anything else (spaces, quotes, control characters,
/// a pasted argument) is not used as a label or a span name.
pub fn is_tool_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'))
}

/// Label values from a fixed set of words.
macro_rules! words {
    ($(#[$doc:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name { $($variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                encoder.write_str(self.as_str())
            }
        }
    };
}

words! {
    /// What the policy made of a request: `none` for requests it does not judge.
    Decision { None => "none", Allow => "allow", Deny => "deny", Hold => "hold" }
}

words! {
    /// How a recorded request ended, as its `tool_result` or `response` event says.
    Outcome {
        Ok => "ok",
        ToolError => "tool_error",
        Error => "error",
        Denied => "denied",
        Expired => "expired",
        Cancelled => "cancelled",
        NoResponse => "no_response",
        Withheld => "withheld",
        Other => "other",
    }
}

impl Outcome {
    /// The outcome an event's `outcome` field names (`other` for a word this build does not know).
    pub fn parse(text: Option<&str>) -> Outcome {
        match text {
            Some("ok") => Outcome::Ok,
            Some("tool_error") => Outcome::ToolError,
            Some("error") => Outcome::Error,
            Some("denied") => Outcome::Denied,
            Some("expired") => Outcome::Expired,
            Some("cancelled") => Outcome::Cancelled,
            Some("no_response") => Outcome::NoResponse,
            Some("withheld") => Outcome::Withheld,
            _ => Outcome::Other,
        }
    }
}

words! {
    /// What went wrong with an upstream server.
    UpstreamError {
        JsonRpcError => "jsonrpc_error",
        Closed => "closed",
        Timeout => "timeout",
        StartFailed => "start_failed",
    }
}

words! {
    /// What waits for an operator: a call before it runs, or a result before the agent sees it.
    HoldKind { Call => "call", Result => "result" }
}

words! {
    /// Which body a PII finding was in.
    PiiDirection { Input => "input", Output => "output" }
}

words! {
    /// What the proxy refused to pass on because the ledger could not record it.
    FailStage { Request => "request", Response => "response" }
}
