//! The stage timings `serve` measures itself, read from its `GET /metrics` (OpenMetrics text):
//! how long the writer's commits took, how many events each carried, how long an append waited
//! for its commit (the batch in flight ahead of it, then its own), how long a recorded call took
//! inside the proxy from reading the request to committing the result, and how much of that the
//! upstream had it. Over the whole life of the process (warm-up and session events included),
//! which is what the counters hold.

use anyhow::Context as _;
use serde::Serialize;

/// Means over the life of one `serve`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct StageTimings {
    /// Mean time to append and commit one batch, in milliseconds.
    pub commit_ms: f64,
    /// Mean events per committed batch.
    pub commit_batch: f64,
    pub commits: f64,
    /// Mean time from an append reaching the writer to its commit, in milliseconds. A recorded
    /// call waits for two appends (its call, then its result).
    pub append_wait_ms: f64,
    /// Mean time from reading a recorded request to committing its result, in milliseconds:
    /// the call commit, the upstream's answer and the result commit.
    pub call_in_proxy_ms: f64,
    /// Mean time a recorded call spent with the upstream, from being handed on to its response
    /// being read, in milliseconds.
    pub upstream_ms: f64,
    /// What is left of `call_in_proxy_ms` after the upstream and two append waits: the proxy's
    /// own work on the call (parsing, policy, building and sealing events, HTTP on both sides)
    /// and the time the call's tasks waited for the proxy's thread.
    pub rest_ms: f64,
}

/// Reads `serve`'s metrics; `endpoint` is its MCP endpoint (`http://ADDR/mcp/NAME`).
pub async fn read(client: &reqwest::Client, endpoint: &str) -> anyhow::Result<StageTimings> {
    let base = endpoint.split("/mcp/").next().unwrap_or(endpoint);
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .context("cannot read serve's /metrics")?
        .text()
        .await
        .context("cannot read serve's /metrics")?;
    Ok(parse(&text))
}

fn parse(text: &str) -> StageTimings {
    let sum = |name: &str| -> f64 {
        text.lines()
            .filter(|line| {
                line.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let mean = |total: f64, count: f64| if count > 0.0 { total / count } else { 0.0 };
    let commits = sum("mcp_ledger_commit_duration_seconds_count");
    let mut timings = StageTimings {
        commit_ms: mean(sum("mcp_ledger_commit_duration_seconds_sum") * 1e3, commits),
        commit_batch: mean(
            sum("mcp_ledger_commit_batch_size_sum"),
            sum("mcp_ledger_commit_batch_size_count"),
        ),
        commits,
        append_wait_ms: mean(
            sum("mcp_ledger_commit_wait_seconds_sum") * 1e3,
            sum("mcp_ledger_commit_wait_seconds_count"),
        ),
        call_in_proxy_ms: mean(
            sum("mcp_ledger_call_duration_seconds_sum") * 1e3,
            sum("mcp_ledger_call_duration_seconds_count"),
        ),
        upstream_ms: mean(
            sum("mcp_ledger_upstream_duration_seconds_sum") * 1e3,
            sum("mcp_ledger_upstream_duration_seconds_count"),
        ),
        rest_ms: 0.0,
    };
    timings.rest_ms = timings.call_in_proxy_ms - timings.upstream_ms - 2.0 * timings.append_wait_ms;
    timings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn means_over_every_label_set() {
        let text = "\
# TYPE mcp_ledger_commit_duration_seconds histogram
mcp_ledger_commit_duration_seconds_sum 0.5
mcp_ledger_commit_duration_seconds_count 250
mcp_ledger_commit_duration_seconds_bucket{le=\"0.0001\"} 0
mcp_ledger_commit_wait_seconds_sum 3.0
mcp_ledger_commit_wait_seconds_count 600
mcp_ledger_commit_batch_size_sum 1000
mcp_ledger_commit_batch_size_count 250
mcp_ledger_call_duration_seconds_sum{server=\"a\",outcome=\"ok\"} 1.0
mcp_ledger_call_duration_seconds_count{server=\"a\",outcome=\"ok\"} 300
mcp_ledger_call_duration_seconds_sum{server=\"b\",outcome=\"ok\"} 2.0
mcp_ledger_call_duration_seconds_count{server=\"b\",outcome=\"ok\"} 700
mcp_ledger_upstream_duration_seconds_sum{server=\"a\",method=\"tools/call\"} 0.5
mcp_ledger_upstream_duration_seconds_count{server=\"a\",method=\"tools/call\"} 1000
# EOF
";
        let t = parse(text);
        assert_eq!(t.commits, 250.0);
        assert_eq!(t.commit_ms, 2.0);
        assert_eq!(t.commit_batch, 4.0);
        assert_eq!(t.append_wait_ms, 5.0);
        assert_eq!(t.call_in_proxy_ms, 3.0);
        assert_eq!(t.upstream_ms, 0.5);
        assert_eq!(t.rest_ms, 3.0 - 0.5 - 2.0 * 5.0);
    }
}
