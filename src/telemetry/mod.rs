//! Observability: Prometheus metrics, OpenTelemetry spans of recorded requests (exported over
//! OTLP when configured), and progress display for long CLI operations.
//!
//! The proxy's modules call in with one line at the moment something happens — a session
//! starts, a call is decided, a batch commits, an upstream fails — and this module turns it into
//! counters and span attributes. It knows nothing of SQL or of the wire format: it is told
//! names and outcomes, never messages, and reads committed [`Event`]s only for what their
//! documented `data` says (`outcome`, and a `pii_detected` event's `counts` and `direction`).
//!
//! **Invariant:** nothing here carries an argument, a result, a token or any other value that
//! crossed the proxy. Metrics labels are configured or protocol names from a bounded set
//! (`labels`); spans carry names, ids and outcomes (`spans`).

pub mod labels;
mod metrics;
pub mod otlp;
pub mod progress;
pub mod spans;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use serde_json::Value;
use tracing::Span;

pub use labels::{Decision, FailStage, HoldKind, Name, Outcome, PiiDirection, UpstreamError};
pub use metrics::{CONTENT_TYPE, Metrics, metrics};

use crate::record::Event;
use metrics::{CallLabels, FailLabels, HoldLabels, MethodLabels, PiiLabels, TransportLabels};

/// Who one session is, as metrics and spans name it. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SessionTelemetry {
    server: Name,
    agent: Name,
    /// How the agent reached the proxy: `stdio` or `http`.
    transport: &'static str,
    session_id: Arc<str>,
}

impl SessionTelemetry {
    pub fn new(session_id: &str, agent: &str, server: &str, transport: &str) -> Self {
        SessionTelemetry {
            server: labels::configured(server),
            agent: labels::configured(agent),
            transport: if transport == "http" { "http" } else { "stdio" },
            session_id: Arc::from(session_id),
        }
    }

    /// The session is being relayed until the returned guard is dropped.
    pub fn opened(&self) -> GaugeGuard {
        let labels = TransportLabels { transport: self.transport };
        metrics().sessions.get_or_create(&labels).inc();
        GaugeGuard::inc(metrics().sessions_open.get_or_create_owned(&labels))
    }

    /// A call or result of this session waits for an operator until the guard is dropped.
    pub fn held(&self, kind: HoldKind) -> GaugeGuard {
        let labels = HoldLabels { server: self.server.clone(), kind };
        metrics().holds.get_or_create(&labels).inc();
        GaugeGuard::inc(metrics().holds_waiting.get_or_create_owned(&labels))
    }

    /// The upstream failed this way.
    pub fn upstream_error(&self, kind: UpstreamError) {
        upstream_error(&self.server, kind);
    }

    /// A message was refused because the ledger could not record it.
    pub fn fail_closed(&self, stage: FailStage) {
        let labels = FailLabels { server: self.server.clone(), stage };
        metrics().fail_closed.get_or_create(&labels).inc();
    }

    /// Counts what committed `events` say about PII: each `pii_detected` event's findings, by
    /// pattern (its `counts`) and body (its `direction`).
    pub fn committed(&self, events: &[Event]) {
        for event in events.iter().filter(|e| e.event_type == "pii_detected") {
            let direction = match event.data.get("direction").and_then(Value::as_str) {
                Some("output") => PiiDirection::Output,
                _ => PiiDirection::Input,
            };
            let Some(counts) = event.data.get("counts").and_then(Value::as_object) else {
                continue;
            };
            for (pattern, count) in counts {
                let labels = PiiLabels {
                    server: self.server.clone(),
                    pattern: labels::configured(pattern),
                    direction,
                };
                metrics().pii_findings.get_or_create(&labels).inc_by(count.as_u64().unwrap_or(0));
            }
        }
    }

    /// `network.transport` of the semantic conventions: `pipe` for stdio, `tcp` for HTTP.
    pub fn network_transport(&self) -> &'static str {
        if self.transport == "http" { "tcp" } else { "pipe" }
    }
}

/// An upstream of `server` failed this way (also before any session exists, e.g. at start-up).
pub fn upstream_error(server: &str, kind: UpstreamError) {
    let labels = metrics::UpstreamLabels { server: labels::configured(server), kind };
    metrics().upstream_errors.get_or_create(&labels).inc();
}

/// An idle HTTP session was closed to make room for a new one (`max_sessions`).
pub fn session_evicted() {
    metrics().sessions_evicted.inc();
}

/// Decrements its gauge when dropped: a session or hold that ends however it ends.
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn inc(gauge: Gauge) -> Self {
        gauge.inc();
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// What telemetry keeps about one recorded request while it is open: its labels, its policy
/// decision, when it was read, and its span. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CallTrace {
    session: SessionTelemetry,
    method: Name,
    tool: Name,
    decision: Decision,
    started: Instant,
    span: Span,
}

impl CallTrace {
    /// A request of `session` recorded as `call_id`. Its span is the current one: the relay
    /// runs the recording inside the request's span ([`spans::request`]).
    pub fn start(
        session: &SessionTelemetry,
        call_id: &str,
        method: &str,
        tool: Option<&str>,
    ) -> Self {
        let span = Span::current();
        span.record("mcp_ledger.call_id", call_id);
        CallTrace {
            session: session.clone(),
            method: labels::method(method),
            tool: labels::tool(tool),
            decision: Decision::None,
            started: Instant::now(),
            span,
        }
    }

    /// The request's span (ended when the last clone is dropped).
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// The policy decided this.
    pub fn decided(&mut self, decision: Decision) {
        self.decision = decision;
        self.span.record("mcp_ledger.decision", decision.as_str());
    }

    /// The upstream answered the request `waited` after it was handed on.
    pub fn upstream_answered(&self, waited: Duration) {
        let labels =
            MethodLabels { server: self.session.server.clone(), method: self.method.clone() };
        metrics().upstream_duration.get_or_create(&labels).observe(waited.as_secs_f64());
    }

    /// The events that end the request are committed: counts the call by its outcome (the
    /// `outcome` of the `tool_result` or `response` among `events`) and closes out its span.
    /// `error_code` is the JSON-RPC error code when the response was an error.
    pub fn finished(&self, events: &[Event], error_code: Option<i64>) {
        let outcome = events
            .iter()
            .find(|e| matches!(e.event_type.as_str(), "tool_result" | "response"))
            .map(|e| Outcome::parse(e.data.get("outcome").and_then(Value::as_str)))
            .unwrap_or(Outcome::Other);
        let metrics = metrics();
        let session = &self.session;
        let labels = CallLabels {
            server: session.server.clone(),
            agent: session.agent.clone(),
            method: self.method.clone(),
            tool: self.tool.clone(),
            decision: self.decision,
            outcome,
        };
        metrics.calls.get_or_create(&labels).inc();
        let labels = MethodLabels { server: session.server.clone(), method: self.method.clone() };
        metrics.call_duration.get_or_create(&labels).observe(self.started.elapsed().as_secs_f64());
        spans::ended(&self.span, outcome, error_code);
    }
}
