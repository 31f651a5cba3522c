//! The spans of recorded requests, named and attributed after the OpenTelemetry semantic
//! conventions for MCP (`semantic-conventions-genai`, docs/gen-ai/mcp.md, status
//! *Development*: names may still change there, and we follow them when they do).
//!
//! One `SERVER` span per recorded request, from the moment the relay reads it to the moment its
//! response is committed and queued for the sender, named `{mcp.method.name} {target}` (the tool
//! or prompt name) or `{mcp.method.name}`. Its children: `policy decision` (tools/call) and one
//! `ledger commit` per commit (`mcp_ledger.record` = `call`, `result`, `hold`).
//!
//! All of them use the [`TARGET`] target, which only the OTLP layer listens to (see `otlp`):
//! with no exporter configured the spans are disabled at their call sites and cost next to
//! nothing, and they never show in the stderr log.
//!
//! What is deliberately left out, though the conventions allow it: `gen_ai.tool.call.arguments`
//! and `.result` (opt-in there; they are values, which stay in the ledger), `mcp.resource.uri`
//! (a URI may name a person or a file; it is in the ledger, redacted as configured), and the
//! status description (the upstream's error message is free text).

use tracing::Span;
use tracing::field::Empty;

use super::SessionTelemetry;
use super::labels::{Decision, Outcome, is_tool_name};

/// The `tracing` target of every span made here.
pub const TARGET: &str = "mcp_ledger::spans";

/// The longest `jsonrpc.request.id` recorded; an agent chooses its ids, and a span is no place
/// for a megabyte of one.
const MAX_ID_CHARS: usize = 128;

/// What the relay knows of a request when it reads it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request<'a> {
    /// `mcp.method.name`.
    pub method: &'a str,
    /// `params.name` of a `tools/call` or `prompts/get`: the span's target.
    pub name: Option<&'a str>,
    /// The JSON-RPC id as text (a string id without its quotes); `None` for a null id.
    pub request_id: Option<&'a str>,
    /// `mcp.protocol.version`, once the handshake settled it.
    pub protocol_version: Option<&'a str>,
}

/// The span of one recorded request of `session`. Run its recording inside it (`Instrument`):
/// [`super::CallTrace::start`] takes the current span as the call's.
pub fn request(session: &SessionTelemetry, request: Request<'_>) -> Span {
    let span = tracing::info_span!(
        target: TARGET,
        "mcp request",
        otel.name = Empty,
        otel.kind = "server",
        otel.status_code = Empty,
        "mcp.method.name" = request.method,
        "gen_ai.operation.name" = Empty,
        "gen_ai.tool.name" = Empty,
        "gen_ai.prompt.name" = Empty,
        "jsonrpc.request.id" = Empty,
        "mcp.session.id" = &*session.session_id,
        "mcp.protocol.version" = Empty,
        "network.transport" = session.network_transport(),
        "error.type" = Empty,
        "mcp_ledger.call_id" = Empty,
        "mcp_ledger.decision" = Empty,
        "mcp_ledger.outcome" = Empty,
        "mcp_ledger.server" = session.server.as_str(),
        "mcp_ledger.agent" = session.agent.as_str(),
    );
    if span.is_disabled() {
        return span;
    }
    // A name an agent made up goes into the span name only if it looks like a name.
    let target = request.name.filter(|name| is_tool_name(name));
    match target {
        Some(target) => span.record("otel.name", format!("{} {target}", request.method)),
        None => span.record("otel.name", request.method),
    };
    match (request.method, target) {
        ("tools/call", tool) => {
            span.record("gen_ai.operation.name", "execute_tool");
            if let Some(tool) = tool {
                span.record("gen_ai.tool.name", tool);
            }
        }
        ("prompts/get", Some(prompt)) => {
            span.record("gen_ai.prompt.name", prompt);
        }
        _ => {}
    }
    if let Some(id) = request.request_id {
        let end = id.char_indices().nth(MAX_ID_CHARS).map_or(id.len(), |(at, _)| at);
        span.record("jsonrpc.request.id", &id[..end]);
    }
    if let Some(version) = request.protocol_version {
        span.record("mcp.protocol.version", version);
    }
    span
}

/// Marks `span` failed: `error.type` (a JSON-RPC error code, `tool_error`, `timeout`,
/// `ledger_unavailable`, …) and an `ERROR` status.
pub fn failed(span: &Span, error_type: &str) {
    span.record("error.type", error_type);
    span.record("otel.status_code", "error");
}

/// Records how a request ended. A tool result the agent receives with `isError` (the tool's
/// own error, or the proxy's refusal: denied, expired, withheld) is `tool_error`, as the
/// conventions say; a JSON-RPC error is its code. For `no_response` the relay, which knows
/// why nothing came (`timeout`, `upstream_closed`, `session_closed`), calls [`failed`] itself.
pub(super) fn ended(span: &Span, outcome: Outcome, error_code: Option<i64>) {
    if span.is_disabled() {
        return;
    }
    span.record("mcp_ledger.outcome", outcome.as_str());
    match outcome {
        Outcome::Ok | Outcome::NoResponse => {}
        Outcome::ToolError | Outcome::Denied | Outcome::Expired | Outcome::Withheld => {
            failed(span, "tool_error");
        }
        Outcome::Error => match error_code {
            Some(code) => failed(span, &code.to_string()),
            None => failed(span, "_OTHER"),
        },
        Outcome::Cancelled => failed(span, "cancelled"),
        Outcome::Other => failed(span, "_OTHER"),
    }
}

/// The child span of a policy evaluation; see [`decided`].
pub fn policy() -> Span {
    tracing::info_span!(
        target: TARGET,
        "policy decision",
        "mcp_ledger.decision" = Empty,
        "mcp_ledger.policy.rule" = Empty,
    )
}

/// Records the decision, and the rule that made it (a configured name), on a [`policy`] span.
pub fn decided(span: &Span, decision: Decision, rule: Option<&str>) {
    span.record("mcp_ledger.decision", decision.as_str());
    if let Some(rule) = rule {
        span.record("mcp_ledger.policy.rule", rule);
    }
}

/// The child span of one ledger commit: `record` says what is committed (`call`, `result`,
/// `hold`).
pub fn commit(record: &'static str) -> Span {
    tracing::info_span!(target: TARGET, "ledger commit", "mcp_ledger.record" = record)
}
