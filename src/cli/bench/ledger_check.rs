//! After the run: each proxied ledger is read back once, to show that the recording happened
//! (a `tool_call` and a `tool_result` for every call made, and a chain that verifies) and to
//! count the batches the writers committed during each measured round.

use anyhow::Context;
use futures::StreamExt;
use serde::Serialize;

use super::fleet::Window;
use super::scenario::Batches;
use crate::record::EventType;
use crate::record::verify::Verifier;
use crate::store::{self, LedgerUrl, StoreOptions};

/// What one ledger holds after the run.
#[derive(Debug, Serialize)]
pub struct LedgerCheck {
    /// `sqlite` or `postgres`.
    pub ledger: &'static str,
    pub events: u64,
    pub tool_calls: u64,
    pub tool_results: u64,
    /// Session starts and ends, `pii_detected`, and anything else that is not a tool call or
    /// result.
    pub other_events: u64,
    /// Calls the proxied sessions made, warm-up included: each must have a call and a result.
    pub calls_made: u64,
    pub intact: bool,
}

impl LedgerCheck {
    pub fn complete(&self) -> bool {
        self.intact && self.tool_calls == self.calls_made && self.tool_results == self.calls_made
    }
}

/// Reads, counts and verifies the ledger at `url`, and counts the events and batches sealed in
/// each of `windows` (which must not overlap); `batches[i]` is for `windows[i]`.
pub async fn check(
    url: &LedgerUrl,
    calls_made: usize,
    windows: &[Window],
) -> anyhow::Result<(LedgerCheck, Vec<Batches>)> {
    let options = StoreOptions { migrate: false, ..StoreOptions::default() };
    let store = store::open(url, &options)
        .await
        .with_context(|| format!("cannot open the ledger {url}"))?;
    let mut order: Vec<usize> = (0..windows.len()).collect();
    order.sort_by(|a, b| windows[*a].cmp(&windows[*b]));
    let mut batches = vec![Batches::default(); windows.len()];
    let mut verifier = Verifier::new();
    let (mut events, mut tool_calls, mut tool_results) = (0, 0, 0);
    let mut previous_timestamp = String::new();
    {
        let mut stream = store.events();
        while let Some(event) = stream.next().await {
            let event = event.with_context(|| format!("cannot read the ledger {url}"))?;
            verifier.push(&event);
            events += 1;
            if event.event_type == EventType::ToolCall.as_str() {
                tool_calls += 1;
            } else if event.event_type == EventType::ToolResult.as_str() {
                tool_results += 1;
            }
            if let Some(i) = window_of(&event.timestamp, windows, &order) {
                batches[i].events += 1;
                if event.timestamp != previous_timestamp {
                    batches[i].batches += 1;
                }
            }
            previous_timestamp = event.timestamp;
        }
    }
    store.close().await;
    for b in &mut batches {
        b.events_per_batch = if b.batches > 0 { b.events as f64 / b.batches as f64 } else { 0.0 };
    }
    let check = LedgerCheck {
        ledger: match url {
            LedgerUrl::Sqlite(_) => "sqlite",
            LedgerUrl::Postgres(_) => "postgres",
        },
        events,
        tool_calls,
        tool_results,
        other_events: events - tool_calls - tool_results,
        calls_made: calls_made as u64,
        intact: verifier.finish().intact(),
    };
    Ok((check, batches))
}

/// The window (index into `windows`) that holds `timestamp`; `order` sorts the windows by start.
/// Timestamps share one fixed-width format, so they compare as text.
fn window_of(timestamp: &str, windows: &[Window], order: &[usize]) -> Option<usize> {
    let after = order.partition_point(|&i| windows[i].start.as_str() <= timestamp);
    let i = order[after.checked_sub(1)?];
    (timestamp <= windows[i].end.as_str()).then_some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(start: &str, end: &str) -> Window {
        Window {
            start: format!("2026-01-01T00:00:{start}Z"),
            end: format!("2026-01-01T00:00:{end}Z"),
        }
    }

    #[test]
    fn a_timestamp_belongs_to_the_window_that_spans_it() {
        let windows = [window("05.000000", "06.000000"), window("01.000000", "02.000000")];
        let order = [1, 0];
        let at = |s: &str| window_of(&format!("2026-01-01T00:00:{s}Z"), &windows, &order);
        assert_eq!(at("01.500000"), Some(1));
        assert_eq!(at("05.000000"), Some(0));
        assert_eq!(at("06.000000"), Some(0));
        assert_eq!(at("03.000000"), None);
        assert_eq!(at("00.100000"), None);
        assert_eq!(at("07.000000"), None);
    }
}
