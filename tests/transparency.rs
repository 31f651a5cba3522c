//! The agent cannot tell the proxy is there: bytes pass through unchanged in both directions —
//! unknown fields, unknown methods, odd spacing, progress, server-to-client requests, batches and
//! even invalid JSON — while every tools/call and its result are recorded. A scripted upstream
//! (`fixtures/scripted_upstream.js`) logs what it receives verbatim and answers with fixed lines.

mod common;

use std::path::{Path, PathBuf};

use common::stdio_client::LineClient;
use common::{BIN, TestLedger};
use futures::TryStreamExt;
use serde_json::{Value, json};

struct Setup {
    client: LineClient,
    upstream_log: PathBuf,
    ledger: TestLedger,
    _dir: tempfile::TempDir,
}

fn fixture() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/scripted_upstream.js")
        .display()
        .to_string()
}

async fn start() -> Setup {
    start_with(&[]).await
}

async fn start_with(extra: &[&str]) -> Setup {
    let ledger = TestLedger::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let upstream_log = dir.path().join("upstream.log");
    let url = ledger.url_string();
    let fixture = fixture();
    let mut args: Vec<&str> =
        vec!["stdio", "--ledger", &url, "--agent", "a1", "--server", "scripted"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "node", &fixture]);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    // The upstream's log path is set for this child only.
    let mut client = LineClient::spawn_with_env(
        BIN,
        &args,
        &[("UPSTREAM_LOG", upstream_log.display().to_string())],
    );
    let reply = client.initialize().await;
    assert_eq!(
        reply["result"]["serverInfo"]["x-vendor"], "acme",
        "unknown fields in the handshake pass: {reply}"
    );
    Setup { client, upstream_log, ledger, _dir: dir }
}

fn received_by_upstream(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log).unwrap_or_default().lines().map(str::to_owned).collect()
}

#[tokio::test]
async fn requests_and_results_pass_byte_for_byte() {
    let mut s = start().await;
    // Unusual spacing, key order, escapes and unknown fields, exactly as an agent might send them.
    let request = r#"{ "params" : {"arguments":{"z":1,"a":"\u00e9","n":1.50},"name":"echo_raw","_meta":{"progressToken":"tok-1"},"x-client-field":[true]}, "method":"tools/call","id":42,"jsonrpc":"2.0" }"#;
    s.client.send_line(request).await;

    let progress = s.client.recv_raw().await;
    assert_eq!(
        progress,
        r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":"tok-1","progress":1,"total":2,"x-note":"half"}}"#
    );
    let result = s.client.recv_raw().await;
    assert_eq!(
        result,
        r#"{"jsonrpc":"2.0",  "id":42,"result":{"isError":false,"content":[{"type":"text","text":"h\u00e9llo","x-extra":1}],"structuredContent":{"b":2,"a":[1,2.5e10]},"x-unknown-result-field":{"nested":true}}}"#
    );
    let upstream_saw = received_by_upstream(&s.upstream_log);
    assert!(
        upstream_saw.iter().any(|l| l == request),
        "upstream got the request unchanged: {upstream_saw:#?}"
    );

    // Recorded: the call and its result, with the arguments and result stored by reference.
    s.client.close().await;
    let store = s.ledger.open().await;
    let rows = store.provenance(10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].action.as_deref(), Some("echo_raw"));
    assert_eq!(rows[0].outcome, "ok");
    let arguments = store.payload(rows[0].input_ref.as_deref().unwrap()).await.unwrap().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({"z": 1, "a": "é", "n": 1.5})
    );
    let output = store.payload(rows[0].output_ref.as_deref().unwrap()).await.unwrap().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&output).unwrap()["x-unknown-result-field"],
        json!({"nested": true})
    );
}

#[tokio::test]
async fn unknown_methods_notifications_batches_and_garbage_pass_unchanged() {
    let mut s = start().await;
    let custom =
        r#"{"jsonrpc":"2.0","id":"c-1","method":"vendor/custom","params":{"x":[1,{"y":null}]}}"#;
    s.client.send_line(custom).await;
    let reply = s.client.recv().await;
    assert_eq!(
        reply["result"],
        json!({"echoed": "vendor/custom", "params": {"x": [1, {"y": null}]}})
    );

    let note = r#"{"jsonrpc":"2.0","method":"notifications/vendor","params":{"q":1}}"#;
    s.client.send_line(note).await;
    let batch = r#"[{"jsonrpc":"2.0","id":7,"method":"vendor/a"},{"jsonrpc":"2.0","method":"notifications/x"},{"jsonrpc":"2.0","id":8,"method":"vendor/b"}]"#;
    s.client.send_line(batch).await;
    assert_eq!(
        s.client.recv_raw().await,
        r#"[{"jsonrpc":"2.0","id":7,"result":{"batched":"vendor/a"}},{"jsonrpc":"2.0","id":8,"result":{"batched":"vendor/b"}}]"#
    );
    s.client.send_line("this is not json").await;
    assert_eq!(
        s.client.recv_raw().await,
        r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"Parse error"}}"#
    );

    let upstream_saw = received_by_upstream(&s.upstream_log);
    for line in [custom, note, batch, "this is not json"] {
        assert!(
            upstream_saw.iter().any(|l| l == line),
            "{line} reached the upstream unchanged: {upstream_saw:#?}"
        );
    }
}

#[tokio::test]
async fn a_batch_with_a_tool_call_is_recorded_and_kept_whole() {
    let mut s = start().await;
    let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{}}},{"jsonrpc":"2.0","id":2,"method":"vendor/b"}]"#;
    s.client.send_line(batch).await;
    let reply = s.client.recv().await;
    assert_eq!(reply.as_array().map(Vec::len), Some(2), "{reply}");
    let upstream_saw = received_by_upstream(&s.upstream_log);
    assert!(
        upstream_saw.iter().any(|l| l == batch),
        "the batch reached the upstream unchanged: {upstream_saw:#?}"
    );
    s.client.close().await;
    let store = s.ledger.open().await;
    let rows = store.provenance(10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].action.as_deref(), Some("x"));
}

#[tokio::test]
async fn server_to_client_sampling_is_relayed_and_recorded() {
    let mut s = start().await;
    let (id, call) =
        s.client.request_message("tools/call", json!({"name": "ask_agent", "arguments": {}}));
    s.client.send(&call).await;
    let sampling = s.client.recv().await;
    assert_eq!(sampling["method"], "sampling/createMessage");
    assert_eq!(sampling["id"], format!("srv-{id}"));
    let answer = json!({"jsonrpc": "2.0", "id": sampling["id"], "result": {"role": "assistant", "model": "m", "content": {"type": "text", "text": "forty-two"}}});
    s.client.send(&answer).await;
    let result = s.client.recv().await;
    assert_eq!(result["id"], id);
    assert_eq!(result["result"]["content"][0]["text"], "agent said: forty-two");
    s.client.close().await;

    let store = s.ledger.open().await;
    let events: Vec<_> = store.events().try_collect().await.unwrap();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(
        types,
        ["session_start", "tool_call", "request", "response", "tool_result", "session_end"]
    );
    assert_eq!(events[2].data["method"], "sampling/createMessage");
    assert_eq!(events[2].data["direction"], "server_to_agent");
    assert_eq!(events[3].data["outcome"], "ok");
    assert_eq!(events[0].data["server_info"]["name"], "scripted");
    assert_eq!(events[0].data["client_info"]["name"], "line-client");
}

#[tokio::test]
async fn an_upstream_crash_answers_in_flight_calls_and_records_them() {
    let mut s = start().await;
    let (hang_id, hang) =
        s.client.request_message("tools/call", json!({"name": "hang", "arguments": {}}));
    s.client.send(&hang).await;
    let (crash_id, crash) =
        s.client.request_message("tools/call", json!({"name": "crash", "arguments": {}}));
    s.client.send(&crash).await;

    let mut answered = Vec::new();
    for _ in 0..2 {
        let reply = s.client.recv().await;
        assert_eq!(reply["error"]["code"], -32001, "{reply}");
        assert_eq!(reply["error"]["data"]["mcp_ledger"], "upstream_closed");
        answered.push(reply["id"].as_i64().unwrap());
    }
    answered.sort();
    assert_eq!(answered, [hang_id, crash_id]);
    assert_eq!(s.client.recv_or_eof().await, None, "the proxy ends when its upstream does");
    let status = s.client.child.wait().await.unwrap();
    assert_eq!(status.code(), Some(1));

    let store = s.ledger.open().await;
    let rows = store.provenance(10).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.outcome == "no_response"), "{rows:#?}");
    let events: Vec<_> = store.events().try_collect().await.unwrap();
    assert_eq!(events.last().unwrap().event_type, "session_end");
    assert!(mcp_ledger::record::verify::verify_all(&events).intact());
}

#[tokio::test]
async fn a_call_the_upstream_sits_on_times_out_with_a_recorded_error() {
    let mut s = start_with(&["--call-timeout-secs", "1"]).await;
    let (slow_id, slow) =
        s.client.request_message("tools/call", json!({"name": "slow", "arguments": {"ms": 2500}}));
    s.client.send(&slow).await;
    let reply = s.client.recv().await;
    assert_eq!(reply["id"], slow_id);
    assert_eq!(reply["error"]["code"], -32001, "{reply}");
    assert_eq!(reply["error"]["data"]["mcp_ledger"], "timeout");
    assert!(
        reply["error"]["message"].as_str().unwrap().contains("did not answer within 1 s"),
        "{reply}"
    );

    // The late answer is dropped (the agent already has its error); the session goes on.
    let ok = s.client.request("vendor/after", json!({})).await;
    assert_eq!(ok["result"]["echoed"], "vendor/after");
    tokio::time::sleep(std::time::Duration::from_millis(2000)).await;
    let again = s.client.request("vendor/again", json!({})).await;
    assert_eq!(
        again["result"]["echoed"], "vendor/again",
        "no stray late response came first: {again}"
    );
    s.client.close().await;

    let store = s.ledger.open().await;
    let rows = store.provenance(10).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].outcome, "no_response");
    assert!(rows[0].error.as_deref().unwrap().contains("did not answer within 1 s"), "{rows:#?}");
}
