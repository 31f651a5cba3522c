//! The checkpointer as users run it: `mcp-ledger keygen`, a config naming the key and an anchor,
//! `stdio --config` in front of the demo server. The proxy signs a checkpoint when the session
//! ends; `verify --key --anchor` and `prove` then check the ledger against it.

mod common;

use common::stdio_client::LineClient;
use common::{BIN, TestLedger, run_cli};
use serde_json::json;

#[tokio::test]
async fn a_stdio_session_ends_with_a_signed_checkpoint_that_verify_and_prove_use() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("ledger.key");
    let key_path = key.display().to_string();
    let (code, _, stderr) = run_cli(&["keygen", "--name", "ledger.test/proxy", "--out", &key_path]);
    assert_eq!(code, 0, "{stderr}");
    let anchor = dir.path().join("anchor");
    std::fs::create_dir(&anchor).unwrap();
    let ledger = TestLedger::sqlite();
    let config = dir.path().join("mcp-ledger.toml");
    std::fs::write(
        &config,
        format!(
            "[ledger]\nurl = {url}\nsigning_key = {key}\nanchor = {anchor}\ncheckpoint_every_events = 1000\n\n\
             [[servers]]\nname = \"customer-ops\"\ncommand = [{bin}, \"demo-server\"]\n",
            url = serde_json::to_string(&ledger.url_string()).unwrap(),
            key = serde_json::to_string(&key_path).unwrap(),
            anchor = serde_json::to_string(&anchor.display().to_string()).unwrap(),
            bin = serde_json::to_string(BIN).unwrap(),
        ),
    )
    .unwrap();
    let args: Vec<String> = [
        "stdio",
        "--config",
        &config.display().to_string(),
        "--server",
        "customer-ops",
        "--agent",
        "a",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut client = LineClient::spawn(BIN, &args);
    client.initialize().await;
    for customer in ["cus_1001", "cus_1002", "cus_1003"] {
        let reply = client.call_tool("lookup_customer", json!({"customer_id": customer})).await;
        assert_eq!(reply["result"]["isError"], false, "{reply}");
    }
    assert!(client.close().await.success());

    // session_start, three calls and results (with the PII found in the customers' records),
    // session_end: one checkpoint over every event.
    let store = ledger.open().await;
    let size = store.chain_size("default").await.unwrap();
    let checkpoints = store.checkpoints().await.unwrap();
    let last = checkpoints.last().expect("a checkpoint was signed at shutdown");
    assert!(size >= 8, "{size}");
    assert_eq!(last.tree_size, size, "{checkpoints:?}");
    let notes: Vec<_> = std::fs::read_dir(&anchor).unwrap().flatten().collect();
    assert!(!notes.is_empty(), "the note reached the anchor");

    let public = format!("{key_path}.pub");
    let url = ledger.url_string();
    let (code, stdout, stderr) = run_cli(&[
        "verify",
        "--ledger",
        &url,
        "--key",
        &public,
        "--anchor",
        &anchor.display().to_string(),
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("checkpoint"), "{stdout}");

    let events: Vec<_> =
        futures::TryStreamExt::try_collect::<Vec<_>>(store.events()).await.unwrap();
    let (code, stdout, stderr) =
        run_cli(&["prove", &events[3].event_id, "--ledger", &url, "--key", &public]);
    assert_eq!(code, 0, "{stdout}{stderr}");
}
