//! Fail closed: when the ledger cannot be written, a call is answered with a clear JSON-RPC error
//! and never reaches the upstream server. The demo server's call log shows what it received.
//! And only then: a call whose append did commit, although the connection broke before the
//! proxy heard so, goes ahead.

mod common;

use std::path::Path;
use std::str::FromStr;

use common::chaos::ChaosProxy;
use common::stdio_client::{LineClient, proxy_args};
use common::{BIN, TestLedger};
use serde_json::{Value, json};
use sqlx::ConnectOptions;

fn calls_received(call_log: &Path) -> Vec<Value> {
    std::fs::read_to_string(call_log)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("call log line is JSON"))
        .collect()
}

fn assert_refused(reply: &Value) {
    let error = reply.get("error").unwrap_or_else(|| panic!("expected an error: {reply}"));
    assert_eq!(error["code"], -32000, "{reply}");
    assert_eq!(error["data"]["mcp_ledger"], "ledger_unavailable", "{reply}");
    assert!(error["message"].as_str().unwrap().contains("not forwarded"), "{reply}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_gone_mid_session_refuses_the_call() {
    let Some(ledger) = TestLedger::postgres().await else {
        return;
    };
    ledger.open().await.close().await;
    let (chaos, through_chaos) = ChaosProxy::in_front_of(&ledger.url_string()).await;

    let dir = tempfile::tempdir().unwrap();
    let call_log = dir.path().join("calls.jsonl");
    let mut args = proxy_args(&through_chaos, "agent-1", Some(&call_log));
    args.splice(1..1, ["--lock-timeout-ms".to_owned(), "1000".to_owned()]);
    let mut client = LineClient::spawn(BIN, &args);
    client.initialize().await;

    let ok = client.call_tool("lookup_customer", json!({"customer_id": "cus_1001"})).await;
    assert_eq!(ok["result"]["isError"], false, "{ok}");
    assert_eq!(calls_received(&call_log).len(), 1);

    chaos.cut().await;
    let refused = client
        .call_tool(
            "issue_refund",
            json!({"customer_id": "cus_1001", "amount": 10.0, "currency": "USD", "reason": "x"}),
        )
        .await;
    assert_refused(&refused);
    assert_eq!(calls_received(&call_log).len(), 1, "the upstream never saw the unrecorded call");

    // Nothing but the first call and its result (and the session start) reached the ledger.
    let store = ledger.open().await;
    let rows = store.provenance(10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].action.as_deref(), Some("lookup_customer"));
    store.close().await;
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_too_long_refuses_the_call() {
    let ledger = TestLedger::sqlite();
    let path = ledger.sqlite_path().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let call_log = dir.path().join("calls.jsonl");
    let mut args = proxy_args(&ledger.url_string(), "agent-1", Some(&call_log));
    args.splice(1..1, ["--lock-timeout-ms".to_owned(), "500".to_owned()]);
    let mut client = LineClient::spawn(BIN, &args);
    client.initialize().await;
    let ok = client.call_tool("lookup_customer", json!({"customer_id": "cus_1002"})).await;
    assert_eq!(ok["result"]["isError"], false, "{ok}");

    // Another process holds the write lock and does not let go.
    let mut holder = sqlx::sqlite::SqliteConnectOptions::from_str("sqlite://")
        .unwrap()
        .filename(&path)
        .connect()
        .await
        .unwrap();
    sqlx::raw_sql("BEGIN EXCLUSIVE").execute(&mut holder).await.unwrap();

    let refused = client
        .call_tool("send_email", json!({"to": "a@example.com", "subject": "s", "body": "b"}))
        .await;
    assert_refused(&refused);
    assert_eq!(calls_received(&call_log).len(), 1, "the upstream never saw the unrecorded call");

    // Once the lock is released, calls are recorded and forwarded again.
    sqlx::raw_sql("ROLLBACK").execute(&mut holder).await.unwrap();
    let ok = client.call_tool("lookup_customer", json!({"customer_id": "cus_1003"})).await;
    assert_eq!(ok["result"]["isError"], false, "{ok}");
    assert_eq!(calls_received(&call_log).len(), 2);
    assert!(client.close().await.success());

    let (code, stdout, stderr) = common::run_cli(&["verify", "--ledger", &ledger.url_string()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

/// A stdio proxy whose Postgres connections go through a [`ChaosProxy`], after one call went
/// through; the ledger is returned for checking afterwards.
async fn proxied_through_chaos(ledger: &TestLedger, call_log: &Path) -> (ChaosProxy, LineClient) {
    ledger.open().await.close().await;
    let (chaos, through_chaos) = ChaosProxy::in_front_of(&ledger.url_string()).await;
    let mut args = proxy_args(&through_chaos, "agent-1", Some(call_log));
    args.splice(1..1, ["--lock-timeout-ms".to_owned(), "1000".to_owned()]);
    let mut client = LineClient::spawn(BIN, &args);
    client.initialize().await;
    let ok = client.call_tool("lookup_customer", json!({"customer_id": "cus_1001"})).await;
    assert_eq!(ok["result"]["isError"], false, "{ok}");
    (chaos, client)
}

/// Every call the agent got an answer to has its `tool_call` and `tool_result`, once, and the
/// chain verifies.
async fn assert_recorded_once_each(ledger: &TestLedger, calls: usize) {
    let store = ledger.open().await;
    let rows = store.provenance(10).await.unwrap();
    store.close().await;
    assert_eq!(rows.len(), calls, "{rows:?}");
    for row in &rows {
        assert_eq!(row.action.as_deref(), Some("lookup_customer"), "{row:?}");
        assert_eq!(row.outcome, "ok", "{row:?}");
    }
    let (code, stdout, stderr) = common::run_cli(&["verify", "--ledger", &ledger.url_string()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

/// The connection breaks after Postgres received the append of a call and before its answer
/// came back: the call was recorded, so it must go ahead. (Failing it closed would leave the
/// ledger saying the agent made a call that, as far as the agent knows, was refused, with no
/// result ever recorded.) The proxy ends the broken connection's server session, which makes
/// its outcome final, and finds the events there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_commit_answer_was_lost_goes_ahead() {
    a_call_goes_ahead_despite(ChaosProxy::lose_answer_to).await;
}

/// The connection breaks before Postgres received the append: nothing was recorded, and once
/// that is certain the append is tried again on a new connection, so the call goes ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_whose_append_never_arrived_is_recorded_on_a_new_connection() {
    a_call_goes_ahead_despite(ChaosProxy::drop_before).await;
}

/// A call whose append `break_connection` breaks (armed with a marker in its arguments) still
/// reaches the upstream and the agent, recorded once with its result.
async fn a_call_goes_ahead_despite(break_connection: impl FnOnce(&ChaosProxy, &str)) {
    let Some(ledger) = TestLedger::postgres().await else { return };
    let dir = tempfile::tempdir().unwrap();
    let call_log = dir.path().join("calls.jsonl");
    let (chaos, mut client) = proxied_through_chaos(&ledger, &call_log).await;

    break_connection(&chaos, "cus_1004");
    let reply = client.call_tool("lookup_customer", json!({"customer_id": "cus_1004"})).await;
    assert!(chaos.has_sprung(), "the marker was never sent");
    assert_eq!(reply["result"]["isError"], false, "{reply}");
    assert_eq!(calls_received(&call_log).len(), 2, "the upstream ran the recorded call");
    assert!(client.close().await.success());
    assert_recorded_once_each(&ledger, 2).await;
}

#[tokio::test]
async fn an_unreachable_ledger_stops_the_proxy_before_the_upstream_starts() {
    let dir = tempfile::tempdir().unwrap();
    let call_log = dir.path().join("calls.jsonl");
    let args = proxy_args("postgres://postgres@127.0.0.1:1/nothing", "agent-1", Some(&call_log));
    let output = tokio::process::Command::new(BIN).args(&args).output().await.unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot open the ledger postgres://postgres@127.0.0.1:1/nothing"),
        "{stderr}"
    );
    assert!(!call_log.exists(), "the upstream was never started");
}
