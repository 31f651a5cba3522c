//! End-to-end transparency and recording against a real third-party MCP server: the npm reference
//! server `@modelcontextprotocol/server-everything`, pinned in `tests/npm/package.json`.
//!
//! The same scripted rmcp client talks to the server twice: once directly (client → server child)
//! and once through `mcp-ledger stdio` into a fresh SQLite ledger. It calls every tool the server
//! lists (plus a few calls that end in tool errors and JSON-RPC errors), lists and reads
//! resources and prompts, and serves the server's own requests (sampling, elicitation, roots)
//! with canned answers. This proves that
//! - the agent sees the same JSON from the server either way: every response is compared as the
//!   raw JSON the client read off the wire, progress notifications included, and so are the
//!   requests the server sends to the client (invariant 3, "transparent");
//! - every `tools/call` through the proxy left exactly one `tool_call` and one `tool_result`
//!   event, joined by `call_id`, whose payload references are those of the exact arguments sent
//!   and the exact result delivered, with the right outcome; the server's sampling and
//!   elicitation requests, and the agent's `resources/read` and `prompts/get`, left
//!   `request`/`response` pairs; the session has one start and one end; the chain verifies.
//!
//! The script and the checks are in `tests/common/everything.rs`, shared with the Streamable HTTP
//! variants in `tests/everything_http.rs`.
//!
//! Needs `node` and `npm ci --prefix tests/npm`; without them the test fails and says so.

#[path = "common/everything.rs"]
mod e2e;

use e2e::{
    Checks, Connect, Recorded, base64_decode, check_ledger, compare_runs, normalise, run_script,
    server_command, server_entry,
};
use serde_json::json;
use tokio::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_server_is_unchanged_and_fully_recorded_through_the_proxy() {
    let entry = server_entry();
    let upstream = server_command(&entry);
    let dir = tempfile::tempdir().expect("temp dir");
    let ledger = dir.path().join("ledger.db");

    let mut direct = Command::new(&upstream[0]);
    direct.args(&upstream[1..]);
    let mut proxied = Command::new(env!("CARGO_BIN_EXE_mcp-ledger"));
    proxied
        .arg("stdio")
        .arg("--ledger")
        .arg(format!("sqlite://{}", ledger.display()))
        .args(["--agent", "e2e-agent", "--server", "everything", "--"])
        .args(&upstream);

    // One after the other, so that the two servers never compete for the machine's two cores
    // and time-dependent behaviour (roots sync after 350 ms, progress pacing) lines up.
    let direct = run_script("direct", Connect::Stdio(direct)).await;
    let proxied = run_script("proxied", Connect::Stdio(proxied)).await;

    let mut checks = Checks::default();
    compare_runs(&direct, &proxied, &mut checks);
    let recorded = Recorded {
        agent: "e2e-agent",
        server: "everything",
        transport: "stdio",
        upstream: "stdio",
    };
    check_ledger(&ledger, &proxied, &recorded, &mut checks).await;
    checks.finish(&[&direct, &proxied]);
}

#[test]
fn base64_decoding_and_time_of_day_normalisation() {
    assert_eq!(base64_decode("aGk=").as_deref(), Some(&b"hi"[..]));
    assert_eq!(base64_decode("aGVsbG8").as_deref(), Some(&b"hello"[..]));
    assert_eq!(base64_decode("not base64!"), None);
    let mut value = json!({
        "text": "Resource 2: This is a plaintext resource created at 3:04:05 PM",
        // "Resource 1: This is a base64 blob created at 9:00:00 AM"
        "blob": "UmVzb3VyY2UgMTogVGhpcyBpcyBhIGJhc2U2NCBibG9iIGNyZWF0ZWQgYXQgOTowMDowMCBBTQ==",
        "other": "created at noon",
        "session": "Stopped simulated logging for session 8c6a9703-5262-4bdc-b020-5b1f7c391b53",
        "no session": "Stopped simulated logging for session undefined",
    });
    normalise(&mut value);
    assert_eq!(
        value,
        json!({
            "text": "Resource 2: This is a plaintext resource created at <time of day>",
            "blob": "<base64 of: Resource 1: This is a base64 blob created at <time of day>>",
            "other": "created at noon",
            "session": "Stopped simulated logging for session <session id>",
            "no session": "Stopped simulated logging for session undefined",
        })
    );
}
