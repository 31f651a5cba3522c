//! Label hygiene and what the hooks put into the exposition. The metrics are one process-wide
//! registry, so every test uses server names of its own.

use serde_json::json;

use super::labels::{self, INVALID, MAX_TOOLS, OTHER};
use super::progress::Progress;
use super::*;
use crate::record::{Draft, Event, EventType};

/// Committed-looking events (their hashes do not matter here).
fn events(drafts: Vec<(EventType, serde_json::Value)>) -> Vec<Event> {
    drafts
        .into_iter()
        .enumerate()
        .map(|(n, (event_type, data))| {
            Draft::new(event_type, data).seal(
                "default",
                n as i64 + 1,
                &"0".repeat(64),
                time::OffsetDateTime::UNIX_EPOCH,
            )
        })
        .collect()
}

/// The exposition's lines that mention `needle`.
fn lines_with(needle: &str) -> Vec<String> {
    metrics().encode().lines().filter(|l| l.contains(needle)).map(str::to_owned).collect()
}

#[test]
fn tool_names_that_break_the_mcp_rules_are_not_labels() {
    assert!(labels::is_tool_name("get_weather"));
    assert!(labels::is_tool_name("github/create-issue.v2"));
    for bad in ["", "rm -rf /", "a\"b", "line\nbreak", "naïve", &"x".repeat(129)] {
        assert!(!labels::is_tool_name(bad), "{bad:?}");
        assert_eq!(labels::tool(Some(bad)).as_str(), INVALID, "{bad:?}");
    }
    assert_eq!(labels::tool(None).as_str(), "");
}

#[test]
fn tool_names_beyond_the_limit_share_one_label() {
    // Fill the table (other tests may already have put a few names in it).
    for n in 0..MAX_TOOLS {
        labels::tool(Some(&format!("flood_{n}")));
    }
    assert_eq!(labels::tool(Some("one_too_many_tool")).as_str(), OTHER);
    // Names seen before the table filled keep their own label.
    assert_eq!(labels::tool(Some("flood_0")).as_str(), "flood_0");
}

#[test]
fn a_finished_call_is_counted_by_its_labels_and_never_by_its_values() {
    let session = SessionTelemetry::new("s-1", "ops-bot", "crm-calls", "http");
    let mut trace = CallTrace::start(&session, "call-1", "tools/call", Some("send_email"));
    trace.decided(Decision::Hold);
    let committed = events(vec![
        (
            EventType::ToolResult,
            json!({"call_id": "call-1", "outcome": "denied", "error": "secret@example.com"}),
        ),
        (EventType::PiiDetected, json!({"direction": "output", "counts": {"email": 2, "iban": 1}})),
    ]);
    session.committed(&committed);
    trace.finished(&committed, None);

    let calls = lines_with("server=\"crm-calls\"");
    assert!(
        calls.iter().any(|l| l.starts_with("mcp_ledger_calls_total{")
            && l.contains("agent=\"ops-bot\"")
            && l.contains("method=\"tools/call\"")
            && l.contains("tool=\"send_email\"")
            && l.contains("decision=\"hold\"")
            && l.contains("outcome=\"denied\"")
            && l.ends_with(" 1")),
        "{calls:#?}"
    );
    assert!(
        calls.iter().any(|l| l.starts_with("mcp_ledger_pii_findings_total{")
            && l.contains("pattern=\"email\"")
            && l.contains("direction=\"output\"")
            && l.ends_with(" 2")),
        "{calls:#?}"
    );
    assert!(
        calls.iter().any(|l| l.starts_with("mcp_ledger_call_duration_seconds_count{")),
        "{calls:#?}"
    );
    let text = metrics().encode();
    assert!(!text.contains("secret@example.com"), "a value leaked into the metrics");
    assert!(!text.contains("call-1") && !text.contains("s-1\""), "ids are not labels");
}

#[test]
fn holds_and_sessions_are_gauges_that_go_back_down() {
    let session = SessionTelemetry::new("s-2", "bot", "hold-gauge", "stdio");
    let waiting = || {
        lines_with("server=\"hold-gauge\"")
            .into_iter()
            .find(|l| l.starts_with("mcp_ledger_holds_waiting{") && l.contains("kind=\"result\""))
    };
    let guard = session.held(HoldKind::Result);
    assert!(waiting().unwrap().ends_with(" 1"));
    drop(guard);
    assert!(waiting().unwrap().ends_with(" 0"));
    let total = lines_with("server=\"hold-gauge\"")
        .into_iter()
        .find(|l| l.starts_with("mcp_ledger_holds_total{") && l.contains("kind=\"result\""));
    assert!(total.unwrap().ends_with(" 1"));
}

#[test]
fn upstream_errors_and_commits_are_counted() {
    upstream_error("flaky-upstream", UpstreamError::StartFailed);
    let line = lines_with("server=\"flaky-upstream\"").join("\n");
    assert!(line.contains("mcp_ledger_upstream_errors_total{"), "{line}");
    assert!(line.contains("kind=\"start_failed\""), "{line}");

    metrics().ledger_batch(std::time::Duration::from_micros(300), 3, true);
    let text = metrics().encode();
    assert!(text.contains("# TYPE mcp_ledger_commit_duration_seconds histogram"), "{text}");
    assert!(text.contains("mcp_ledger_commit_batch_size_count"), "{text}");
    assert!(text.contains("mcp_ledger_build_info{version=\""), "{text}");
    assert!(text.trim_end().ends_with("# EOF"), "OpenMetrics text ends with # EOF");
}

#[test]
fn spans_are_disabled_without_an_exporter() {
    let session = SessionTelemetry::new("s-3", "bot", "no-export", "http");
    let span = spans::request(
        &session,
        spans::Request { method: "tools/call", name: Some("x"), ..Default::default() },
    );
    assert!(span.is_disabled());
    assert_eq!(session.network_transport(), "tcp");
}

#[test]
fn progress_is_hidden_unless_asked_for_and_for_machine_readable_output() {
    assert!(!Progress::shown_if("verifying", Some(10), false).is_shown());
    // `--json`: never shown, whatever stderr is.
    assert!(!Progress::events("verifying", None, true).is_shown());
    let hidden = Progress::shown_if("verifying", None, false);
    hidden.inc(5);
    hidden.set_phase("verifying");
}
