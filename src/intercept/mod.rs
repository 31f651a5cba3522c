//! What happens to one crossing of the boundary, independent of transport: decide whether a
//! message is recorded, build its event, and wait for the commit before the caller may forward it.
//!
//! The proxy calls [`SessionRecorder::begin`] for a request before forwarding it and
//! [`SessionRecorder::finish`] for the matching response before delivering it; each returns only
//! once the event is durably committed, or fails so that the proxy can fail closed.

mod admission;
mod bodies;
mod results;

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, Value, json};
use tracing::Instrument;

pub use admission::{Admission, HoldNotifier, HoldOutcome, PendingHold, SharedPolicy};
pub use bodies::{BodyPolicy, Side};
pub use results::{Delivery, PendingResultHold};

use crate::pii::Finding;
use crate::record::{Draft, EventType, RecordedBody};
use crate::store::writer::{AppendError, Ledger};
use crate::telemetry::{self, CallTrace, SessionTelemetry};

/// Which side sent a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// A request from the agent (MCP client) to the upstream server.
    FromAgent,
    /// A request from the upstream server to the agent (sampling, elicitation, roots).
    FromServer,
}

impl Direction {
    fn as_str(self) -> &'static str {
        match self {
            Direction::FromAgent => "agent_to_server",
            Direction::FromServer => "server_to_agent",
        }
    }
}

/// The requests recorded besides `tools/call`, by who sends them.
#[derive(Debug, Clone)]
pub struct RecordedMethods {
    pub from_agent: Vec<String>,
    pub from_server: Vec<String>,
}

impl Default for RecordedMethods {
    fn default() -> Self {
        RecordedMethods {
            from_agent: vec!["resources/read".into(), "prompts/get".into()],
            from_server: vec!["sampling/createMessage".into(), "elicitation/create".into()],
        }
    }
}

/// Who and what a session records events for.
#[derive(Debug, Clone)]
pub struct SessionIdentity {
    pub session_id: String,
    pub agent: String,
    pub server: String,
    /// How the agent reached the proxy: `stdio` or `http`.
    pub transport: &'static str,
    /// A description of the upstream for the session record (never its secrets).
    pub upstream: String,
}

/// A recorded request whose response is still to come.
#[derive(Debug, Clone)]
pub struct OpenCall {
    pub call_id: String,
    method: String,
    tool: Option<String>,
    request_id: String,
    started: Instant,
    /// When the relay handed the request on to its peer; see [`OpenCall::forwarded`].
    forwarded: Option<Instant>,
    /// Set when an operator approved the held call: recorded with its result.
    authorized_by: Option<String>,
    /// `sha256:` of the arguments (tool calls) or params: what an approval binds to.
    input_ref: String,
    /// PII patterns found in the input, for output rules with `input_contains`.
    input_pii: Vec<String>,
    /// The tool call's arguments, kept only when output rules may look at them.
    arguments: Option<Arc<Value>>,
    /// Its span and metric labels (boxed: an `OpenCall` travels inside enums and futures).
    trace: Box<CallTrace>,
}

/// How a recorded request ended.
pub enum Completion<'a> {
    /// A JSON-RPC `result`.
    Result(&'a Value),
    /// A JSON-RPC `error` object.
    Error(&'a Value),
    /// No response will come: the peer went away, the call was cancelled, or the session ended.
    NoResponse { reason: &'a str },
    /// The proxy never forwarded the call: `outcome` is `denied`, `expired`, `cancelled` or
    /// `error`, and `reason` what the agent was told.
    Refused { outcome: &'a str, reason: &'a str },
}

/// Why a crossing could not be recorded. The proxy answers it with an error and forwards nothing.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("the ledger could not commit the event: {0}")]
    Ledger(#[from] AppendError),
    #[error("the message cannot be recorded: {0}")]
    Unrecordable(#[from] crate::record::CanonicalError),
}

/// Records the crossings of one agent session with one upstream server.
#[derive(Clone)]
pub struct SessionRecorder {
    ledger: Ledger,
    /// The policy in force (swapped on reload) and the store holds wait on.
    policy: SharedPolicy,
    store: Option<std::sync::Arc<dyn crate::store::Store>>,
    /// Told about every hold once its request is committed (e.g. the approvals webhook).
    notifier: Option<std::sync::Arc<dyn HoldNotifier>>,
    identity: SessionIdentity,
    recorded: std::sync::Arc<RecordedMethods>,
    /// How bodies are scanned for PII and kept.
    bodies: BodyPolicy,
    started: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Why the session ended, when the transport knows better than the relay (DELETE, idle
    /// expiry, shutdown).
    end_reason: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    /// The session as metrics and spans name it.
    telemetry: SessionTelemetry,
}

impl OpenCall {
    /// The JSON-RPC id of the request, as its sender wrote it.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The request's span, from the moment the relay read it.
    pub fn span(&self) -> &tracing::Span {
        self.trace.span()
    }

    /// The relay hands the request on to its peer now.
    pub fn forwarded(&mut self) {
        self.forwarded = Some(Instant::now());
    }

    /// When the relay handed the request on, if it has.
    pub fn forwarded_at(&self) -> Option<Instant> {
        self.forwarded
    }

    /// The upstream answered the request: how long it had it goes to the metrics.
    pub fn answered_by_upstream(&self) {
        if let Some(forwarded) = self.forwarded {
            self.trace.upstream_answered(forwarded.elapsed());
        }
    }
}

impl SessionRecorder {
    pub fn new(ledger: Ledger, identity: SessionIdentity, recorded: RecordedMethods) -> Self {
        let telemetry = SessionTelemetry::new(
            &identity.session_id,
            &identity.agent,
            &identity.server,
            identity.transport,
        );
        SessionRecorder {
            telemetry,
            ledger,
            policy: SharedPolicy::allow_all(),
            store: None,
            notifier: None,
            identity,
            recorded: std::sync::Arc::new(recorded),
            bodies: BodyPolicy::default(),
            started: Default::default(),
            end_reason: Default::default(),
        }
    }

    /// Decides calls with `policy`; holds wait for decisions appended to `store`.
    pub fn with_policy(
        mut self,
        policy: SharedPolicy,
        store: std::sync::Arc<dyn crate::store::Store>,
    ) -> Self {
        self.policy = policy;
        self.store = Some(store);
        self
    }

    /// Tells `notifier` about every call this session holds.
    pub fn with_notifier(mut self, notifier: Option<std::sync::Arc<dyn HoldNotifier>>) -> Self {
        self.notifier = notifier;
        self
    }

    /// Scans and keeps bodies as `bodies` says (the default: every built-in pattern, redacted).
    pub fn with_bodies(mut self, bodies: BodyPolicy) -> Self {
        self.bodies = bodies;
        self
    }

    pub fn identity(&self) -> &SessionIdentity {
        &self.identity
    }

    /// The session as metrics and spans name it.
    pub fn telemetry(&self) -> &SessionTelemetry {
        &self.telemetry
    }

    /// Whether a request with `method` sent by `direction` is recorded.
    pub fn records(&self, direction: Direction, method: &str) -> bool {
        match direction {
            Direction::FromAgent => {
                method == "tools/call" || self.recorded.from_agent.iter().any(|m| m == method)
            }
            Direction::FromServer => self.recorded.from_server.iter().any(|m| m == method),
        }
    }

    fn draft(&self, event_type: EventType, data: Value) -> Draft {
        let mut draft = Draft::new(event_type, data);
        draft.session_id = Some(self.identity.session_id.clone());
        draft.agent = Some(self.identity.agent.clone());
        draft.server = Some(self.identity.server.clone());
        draft
    }

    /// Whether `method` opens a session: `initialize`, or `server/discover` for clients of the
    /// stateless revision (2026-07-28), which has no handshake.
    pub fn is_handshake(method: &str) -> bool {
        method == "initialize" || method == "server/discover"
    }

    /// Records `session_start` from a handshake request and the upstream's answer. Only the
    /// first handshake of a session is recorded: stateless clients may discover repeatedly.
    pub async fn session_started(
        &self,
        method: &str,
        params: &Value,
        result: &Value,
    ) -> Result<(), RecordError> {
        if self.started.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Ok(());
        }
        let mut data = handshake_summary(method, params, result);
        let fields = data.as_object_mut().expect("built as an object");
        fields.insert("transport".into(), json!(self.identity.transport));
        fields.insert("upstream".into(), json!(self.identity.upstream));
        fields.insert("pii".into(), self.bodies.describe());
        let appended = self.ledger.append(self.draft(EventType::SessionStart, data)).await;
        if appended.is_err() {
            // Not recorded, so a later handshake may try again.
            self.started.store(false, std::sync::atomic::Ordering::SeqCst);
        }
        appended?;
        Ok(())
    }

    /// Sets the reason `session_end` will give, in place of the relay's own.
    pub fn set_end_reason(&self, reason: &str) {
        *self.end_reason.lock().expect("lock") = Some(reason.to_owned());
    }

    /// Records `session_end`, with the reason set by [`Self::set_end_reason`] if there is one.
    pub async fn session_ended(&self, reason: &str) -> Result<(), RecordError> {
        let reason =
            self.end_reason.lock().expect("lock").clone().unwrap_or_else(|| reason.to_owned());
        let draft = self.draft(EventType::SessionEnd, json!({ "reason": reason }));
        self.ledger.append(draft).await?;
        Ok(())
    }

    /// Records a request before it is forwarded, and decides whether it may be: a `tools/call`
    /// is put to the policy, every other recorded request is forwarded. `request_id` is the
    /// JSON-RPC id as the sender wrote it. Its body is scanned for PII and kept as the
    /// [`BodyPolicy`] says; findings are recorded with it. Returns once every event is committed.
    pub async fn begin(
        &self,
        direction: Direction,
        method: &str,
        request_id: &str,
        params: Option<&Value>,
    ) -> Result<Admission, RecordError> {
        let call_id = uuid::Uuid::now_v7().to_string();
        let null = Value::Null;
        let params = params.unwrap_or(&null);
        let is_tool_call = direction == Direction::FromAgent && method == "tools/call";
        let (event_type, tool, input) = if is_tool_call {
            let tool = params.get("name").and_then(Value::as_str).map(str::to_owned);
            (EventType::ToolCall, tool, params.get("arguments").unwrap_or(&null))
        } else {
            (EventType::Request, None, params)
        };
        let (body, findings) = self.bodies.record(input, tool.as_deref(), Side::Input);
        let mut data = json!({
            "call_id": call_id,
            "request_id": request_id,
            "method": method,
            "direction": direction.as_str(),
        });
        let fields = data.as_object_mut().expect("built as an object");
        body.describe("input", fields);
        let policy = self.policy.current();
        let trace = Box::new(CallTrace::start(&self.telemetry, &call_id, method, tool.as_deref()));
        let mut call = OpenCall {
            call_id,
            method: method.to_owned(),
            tool: tool.clone(),
            request_id: request_id.to_owned(),
            started: Instant::now(),
            forwarded: None,
            authorized_by: None,
            input_ref: body.reference.clone(),
            input_pii: body.patterns.clone(),
            arguments: (is_tool_call && policy.has_output_rules()).then(|| Arc::new(input.clone())),
            trace,
        };
        let judged = if is_tool_call {
            let judge = self.judge(&policy, tool.as_deref().unwrap_or(""), input, &call);
            let judged = judge.instrument(telemetry::spans::policy()).await;
            call.trace.decided(judged.effect());
            judged.describe(fields, &self.bodies);
            Some(judged)
        } else {
            None
        };
        let drafts = self.drafts_with_findings(
            self.draft(event_type, data),
            &call,
            Side::Input,
            &body,
            &findings,
        );
        let events =
            self.ledger.append_all(drafts).instrument(telemetry::spans::commit("call")).await?;
        self.telemetry.committed(&events);
        match judged {
            None => Ok(Admission::Forward(call)),
            Some(judged) => self.admit(call, judged, params).await,
        }
    }

    /// `draft` carrying the stored body, followed by a `pii_detected` event if there are
    /// findings: committed together, so a body is never stored without its findings.
    fn drafts_with_findings(
        &self,
        mut draft: Draft,
        call: &OpenCall,
        side: Side,
        body: &RecordedBody,
        findings: &[Finding],
    ) -> Vec<Draft> {
        draft.payloads.extend(body.stored.clone());
        let mut drafts = vec![draft];
        if !findings.is_empty() {
            let data = bodies::pii_detected_data(call, side, body, findings);
            drafts.push(self.draft(EventType::PiiDetected, data));
        }
        drafts
    }

    /// Records how `call` ended before anything is delivered. Returns once committed. Output
    /// rules are not consulted here: responses the agent is about to receive go through
    /// [`SessionRecorder::complete`].
    pub async fn finish(
        &self,
        call: &OpenCall,
        completion: Completion<'_>,
    ) -> Result<(), RecordError> {
        let body = self.output_body(call, &completion);
        let draft = self.result_draft(call, &completion, body.as_ref().map(|(b, _)| b), Map::new());
        let drafts = match &body {
            Some((body, findings)) => {
                self.drafts_with_findings(draft, call, Side::Output, body, findings)
            }
            None => vec![draft],
        };
        let code = match completion {
            Completion::Error(error) => error.get("code").and_then(Value::as_i64),
            _ => None,
        };
        self.commit_end(call, drafts, code).await
    }

    /// Commits the events that end `call` (its result, and the findings in it), then counts the
    /// call and closes out its span. `error_code`: the JSON-RPC error it ended with, if any.
    async fn commit_end(
        &self,
        call: &OpenCall,
        drafts: Vec<Draft>,
        error_code: Option<i64>,
    ) -> Result<(), RecordError> {
        let events =
            self.ledger.append_all(drafts).instrument(telemetry::spans::commit("result")).await?;
        self.telemetry.committed(&events);
        call.trace.finished(&events, error_code);
        Ok(())
    }

    /// The response's body (a result or an error object), scanned and with its storage decided;
    /// `None` when the call ended without one.
    fn output_body(
        &self,
        call: &OpenCall,
        completion: &Completion<'_>,
    ) -> Option<(RecordedBody, Vec<Finding>)> {
        let value = match completion {
            Completion::Result(value) | Completion::Error(value) => *value,
            Completion::NoResponse { .. } | Completion::Refused { .. } => return None,
        };
        Some(self.bodies.record(value, call.tool.as_deref(), Side::Output))
    }

    /// Free text about `call`'s outcome as the ledger may keep it (see [`BodyPolicy::scrub_for`]).
    fn scrub(&self, call: &OpenCall, text: &str) -> String {
        self.bodies.scrub_for(call.tool.as_deref(), Side::Output, text)
    }

    /// The `tool_result` or `response` event of `call`. `extra` is added last (and so
    /// overrides): the output decision, a withheld outcome.
    fn result_draft(
        &self,
        call: &OpenCall,
        completion: &Completion<'_>,
        body: Option<&RecordedBody>,
        extra: Map<String, Value>,
    ) -> Draft {
        let event_type = if call.tool.is_some() || call.method == "tools/call" {
            EventType::ToolResult
        } else {
            EventType::Response
        };
        let mut data = json!({
            "call_id": call.call_id,
            "request_id": call.request_id,
            "method": call.method,
            "duration_ms": u64::try_from(call.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
        let fields = data.as_object_mut().expect("built as an object");
        if let Some(tool) = &call.tool {
            fields.insert("tool".into(), json!(tool));
        }
        if let Some(authorized_by) = &call.authorized_by {
            fields.insert("authorized_by".into(), json!(authorized_by));
        }
        if let Some(body) = body {
            body.describe("output", fields);
        }
        match completion {
            Completion::Result(result) => {
                let is_tool_error = result.get("isError").and_then(Value::as_bool) == Some(true);
                let outcome = if is_tool_error { "tool_error" } else { "ok" };
                fields.insert("outcome".into(), json!(outcome));
            }
            Completion::Error(error) => {
                fields.insert("outcome".into(), json!("error"));
                let summary = summarize_error(error);
                fields.insert("error".into(), json!(self.scrub(call, &summary)));
            }
            Completion::NoResponse { reason } => {
                fields.insert("outcome".into(), json!("no_response"));
                fields.insert("output_ref".into(), Value::Null);
                fields.insert("error".into(), json!(self.scrub(call, reason)));
            }
            Completion::Refused { outcome, reason } => {
                fields.insert("outcome".into(), json!(outcome));
                fields.insert("output_ref".into(), Value::Null);
                fields.insert("error".into(), json!(self.scrub(call, reason)));
            }
        }
        fields.extend(extra);
        self.draft(event_type, data)
    }
}

/// A request the HTTP endpoint turned away for want of valid credentials: who tried (as far as
/// can be told without trusting them), from where, at which endpoint. Never the token.
#[derive(Debug, Clone)]
pub struct AuthFailure {
    pub server: String,
    pub remote_addr: String,
    pub reason: &'static str,
    pub user_agent: Option<String>,
    /// The agent a valid token belonged to, when the token was valid but not for this session.
    pub token_agent: Option<String>,
    /// The session the request named, when it named one. Kept in `data`, not in the
    /// `session_id` column: the attempt is not one of that session's own events.
    pub target_session: Option<String>,
}

/// Records an `auth_failed` event. Returns once it is committed.
pub async fn record_auth_failure(
    ledger: &Ledger,
    failure: &AuthFailure,
) -> Result<(), RecordError> {
    let mut draft = Draft::new(
        EventType::AuthFailed,
        json!({
            "endpoint": format!("/mcp/{}", failure.server),
            "remote_addr": failure.remote_addr,
            "reason": failure.reason,
            "user_agent": failure.user_agent,
            "target_session": failure.target_session,
        }),
    );
    draft.agent = failure.token_agent.clone();
    draft.server = Some(failure.server.clone());
    ledger.append(draft).await?;
    Ok(())
}

/// What `session_start` says about the two peers, from either handshake.
fn handshake_summary(method: &str, params: &Value, result: &Value) -> Value {
    if method == "server/discover" {
        // The stateless revision carries the client's side in the request's `_meta`, and the
        // server's identity in the result's `_meta`.
        let meta = |v: &Value, key: &str| v.get("_meta").and_then(|m| m.get(key)).cloned();
        let requested = meta(params, "io.modelcontextprotocol/protocolVersion");
        return json!({
            "client_info": meta(params, "io.modelcontextprotocol/clientInfo"),
            "client_capabilities": meta(params, "io.modelcontextprotocol/clientCapabilities"),
            "requested_protocol_version": requested,
            "protocol_version": requested,
            "server_info": meta(result, "io.modelcontextprotocol/serverInfo")
                .or_else(|| result.get("serverInfo").cloned()),
            "server_capabilities": result.get("capabilities"),
        });
    }
    json!({
        "client_info": params.get("clientInfo"),
        "client_capabilities": params.get("capabilities"),
        "requested_protocol_version": params.get("protocolVersion"),
        "protocol_version": result.get("protocolVersion"),
        "server_info": result.get("serverInfo"),
        "server_capabilities": result.get("capabilities"),
    })
}

/// `code N: message`, bounded and free of NUL characters (which Postgres cannot store in JSON),
/// for the provenance view's `error` column. The whole error object is in the output payload.
fn summarize_error(error: &Value) -> String {
    const MAX_CHARS: usize = 500;
    let code = error.get("code").map(Value::to_string).unwrap_or_else(|| "?".into());
    let message = error.get("message").and_then(Value::as_str).unwrap_or("");
    let summary: String = format!("code {code}: {message}")
        .chars()
        .map(|c| if c == '\0' { '\u{FFFD}' } else { c })
        .take(MAX_CHARS)
        .collect();
    summary
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshakes_of_both_eras_are_summarised() {
        let legacy = handshake_summary(
            "initialize",
            &json!({"protocolVersion": "2025-11-25", "clientInfo": {"name": "c"}, "capabilities": {}}),
            &json!({"protocolVersion": "2025-06-18", "serverInfo": {"name": "s"}, "capabilities": {"tools": {}}}),
        );
        assert_eq!(legacy["requested_protocol_version"], "2025-11-25");
        assert_eq!(legacy["protocol_version"], "2025-06-18");
        assert_eq!(legacy["server_info"]["name"], "s");

        let stateless = handshake_summary(
            "server/discover",
            &json!({"_meta": {
                "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientInfo": {"name": "c"},
                "io.modelcontextprotocol/clientCapabilities": {"sampling": {}}
            }}),
            &json!({"supportedVersions": ["2026-07-28"], "capabilities": {"tools": {}},
                    "_meta": {"io.modelcontextprotocol/serverInfo": {"name": "s"}}}),
        );
        assert_eq!(stateless["client_info"]["name"], "c");
        assert_eq!(stateless["protocol_version"], "2026-07-28");
        assert_eq!(stateless["server_info"]["name"], "s");
        assert_eq!(stateless["client_capabilities"], json!({"sampling": {}}));
    }

    #[test]
    fn error_summaries_are_bounded_and_storable() {
        let error = json!({"code": -32602, "message": format!("bad\0{}", "x".repeat(1000))});
        let summary = summarize_error(&error);
        assert!(summary.starts_with("code -32602: bad\u{FFFD}x"));
        assert_eq!(summary.chars().count(), 500);
    }
}
