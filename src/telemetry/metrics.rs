//! The process's Prometheus metrics: every family registered once, at first use, and encoded as
//! OpenMetrics text for `GET /metrics`.
//!
//! Built on `prometheus-client`, the Prometheus project's own Rust client: it has no hidden
//! global registry, label sets are typed structs (so a label can only hold what its type
//! allows — see `labels`), and it writes the OpenMetrics text format that Prometheus scrapes.
//! Updating a series is an atomic add after a read-locked map lookup; no formatting happens
//! until a scrape.

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};

use super::labels::{Decision, FailStage, HoldKind, Name, Outcome, PiiDirection, UpstreamError};

/// The content type of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct CallLabels {
    pub server: Name,
    pub agent: Name,
    pub method: Name,
    pub tool: Name,
    pub decision: Decision,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct MethodLabels {
    pub server: Name,
    pub method: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct HoldLabels {
    pub server: Name,
    pub kind: HoldKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct UpstreamLabels {
    pub server: Name,
    pub kind: UpstreamError,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct PiiLabels {
    pub server: Name,
    pub pattern: Name,
    pub direction: PiiDirection,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct TransportLabels {
    pub transport: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct FailLabels {
    pub server: Name,
    pub stage: FailStage,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every metric the proxy keeps. One per process: see [`metrics`].
pub struct Metrics {
    registry: Registry,
    pub(super) calls: Family<CallLabels, Counter>,
    pub(super) call_duration: Histograms<MethodLabels>,
    pub(super) upstream_duration: Histograms<MethodLabels>,
    pub(super) holds_waiting: Family<HoldLabels, Gauge>,
    pub(super) holds: Family<HoldLabels, Counter>,
    commit_duration: Histogram,
    commit_wait: Histogram,
    commit_batch: Histogram,
    commit_failures: Counter,
    pub(super) upstream_errors: Family<UpstreamLabels, Counter>,
    pub(super) pii_findings: Family<PiiLabels, Counter>,
    pub(super) sessions_open: Family<TransportLabels, Gauge>,
    pub(super) sessions: Family<TransportLabels, Counter>,
    pub(super) sessions_evicted: Counter,
    pub(super) fail_closed: Family<FailLabels, Counter>,
}

/// Call durations: 1 ms to about 30 s, doubling (a held call waits longer and lands in +Inf).
fn call_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

/// Upstream answers: 0.1 ms to about 52 s, doubling (a tool can take long; most answer in ms).
fn upstream_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// The process's metrics, registered on first use.
pub fn metrics() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &METRICS
}

impl Metrics {
    fn new() -> Metrics {
        let mut root = Registry::default();
        let started = Gauge::<i64>::default();
        started.set(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64));
        root.register_with_unit(
            "process_start_time",
            "Start time of the process since the Unix epoch",
            Unit::Seconds,
            started,
        );
        let registry = root.sub_registry_with_prefix("mcp_ledger");
        registry.register(
            "build",
            "The running mcp-ledger version",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        let metrics = Metrics {
            registry: Registry::default(),
            calls: Family::default(),
            call_duration: Family::new_with_constructor(call_buckets),
            upstream_duration: Family::new_with_constructor(upstream_buckets),
            holds_waiting: Family::default(),
            holds: Family::default(),
            // 0.1 ms to about 3 s, doubling: a healthy commit is well under 10 ms.
            commit_duration: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            commit_wait: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            // 1 to 512 events (the writer's largest batch), doubling.
            commit_batch: Histogram::new(exponential_buckets(1.0, 2.0, 10)),
            commit_failures: Counter::default(),
            upstream_errors: Family::default(),
            pii_findings: Family::default(),
            sessions_open: Family::default(),
            sessions: Family::default(),
            sessions_evicted: Counter::default(),
            fail_closed: Family::default(),
        };
        registry.register(
            "calls",
            "Recorded requests that ended (their result is committed), by server, agent, method, \
             tool, policy decision and outcome",
            metrics.calls.clone(),
        );
        registry.register_with_unit(
            "call_duration",
            "Time from reading a recorded request to committing its result",
            Unit::Seconds,
            metrics.call_duration.clone(),
        );
        registry.register_with_unit(
            "upstream_duration",
            "Time a recorded request from the agent spent with the upstream: from being handed on \
             (its call committed) to its response being read; the upstream's share of call_duration",
            Unit::Seconds,
            metrics.upstream_duration.clone(),
        );
        registry.register(
            "holds_waiting",
            "Calls and results waiting for an operator now",
            metrics.holds_waiting.clone(),
        );
        registry.register("holds", "Calls and results held for an operator", metrics.holds.clone());
        registry.register_with_unit(
            "commit_duration",
            "Time the group-commit writer took to append and commit one batch",
            Unit::Seconds,
            metrics.commit_duration.clone(),
        );
        registry.register_with_unit(
            "commit_wait",
            "Time an append waited from reaching the group-commit writer to being committed: \
             the batch in flight ahead of it, then its own",
            Unit::Seconds,
            metrics.commit_wait.clone(),
        );
        registry.register(
            "commit_batch_size",
            "Events committed in one transaction by the group-commit writer",
            metrics.commit_batch.clone(),
        );
        registry.register(
            "commit_failures",
            "Batches the writer could not commit (every call in them failed closed)",
            metrics.commit_failures.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream failures: JSON-RPC error responses, closed connections, timeouts, starts \
             that failed",
            metrics.upstream_errors.clone(),
        );
        registry.register(
            "pii_findings",
            "PII findings recorded in pii_detected events, by pattern and body",
            metrics.pii_findings.clone(),
        );
        registry.register(
            "sessions_open",
            "Agent sessions being relayed now",
            metrics.sessions_open.clone(),
        );
        registry.register("sessions", "Agent sessions started", metrics.sessions.clone());
        registry.register(
            "sessions_evicted",
            "HTTP sessions closed to make room for a new one at max_sessions",
            metrics.sessions_evicted.clone(),
        );
        registry.register(
            "fail_closed",
            "Messages refused because the ledger could not record them",
            metrics.fail_closed.clone(),
        );
        Metrics { registry: root, ..metrics }
    }

    /// Every metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }

    /// One batch of the group-commit writer: how long it took and how many events it held.
    pub fn ledger_batch(&self, took: Duration, events: usize, committed: bool) {
        self.commit_duration.observe(took.as_secs_f64());
        if committed {
            self.commit_batch.observe(events as f64);
        } else {
            self.commit_failures.inc();
        }
    }

    /// One committed append, from the moment it reached the writer's queue.
    pub fn ledger_wait(&self, waited: Duration) {
        self.commit_wait.observe(waited.as_secs_f64());
    }
}
