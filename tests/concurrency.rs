//! Several `mcp-ledger stdio` processes (one per agent, as MCP clients start them) appending to
//! one ledger at once still produce one gap-free chain that verifies, with nothing lost.

mod common;

use common::stdio_client::{LineClient, proxy_args};
use common::{BIN, TestLedger, run_cli};
use futures::TryStreamExt;
use serde_json::json;

const PROCESSES: usize = 4;
const CALLS_PER_PROCESS: usize = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_four_processes_one_chain() {
    four_processes_one_chain(TestLedger::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_four_processes_one_chain() {
    if let Some(ledger) = TestLedger::postgres().await {
        four_processes_one_chain(ledger).await;
    }
}

async fn four_processes_one_chain(ledger: TestLedger) {
    // Create the schema first, so the processes race on appends rather than on migrations.
    ledger.open().await.close().await;
    let url = ledger.url_string();
    let agents = (0..PROCESSES).map(|p| {
        let url = url.clone();
        tokio::spawn(async move {
            let mut client = LineClient::spawn(BIN, &proxy_args(&url, &format!("agent-{p}"), None));
            client.initialize().await;
            // Pipeline every call at once: the proxy's writer batches them while other processes
            // compete for the same chain head.
            let mut ids = Vec::new();
            for i in 0..CALLS_PER_PROCESS {
                let customer = format!("cus_100{}", 1 + i % 5);
                let (id, message) = client.request_message(
                    "tools/call",
                    json!({"name": "lookup_customer", "arguments": {"customer_id": customer}}),
                );
                client.send(&message).await;
                ids.push(id);
            }
            let mut answered = Vec::new();
            while answered.len() < ids.len() {
                let reply = client.recv().await;
                assert!(reply.get("error").is_none(), "call failed: {reply}");
                assert_eq!(reply["result"]["isError"], json!(false), "{reply}");
                answered.push(reply["id"].as_i64().unwrap());
            }
            answered.sort();
            assert_eq!(answered, ids);
            assert!(client.close().await.success());
        })
    });
    for agent in futures::future::join_all(agents).await {
        agent.expect("agent task");
    }

    let store = ledger.open().await;
    let events: Vec<_> = store.events().try_collect().await.unwrap();
    // Per process: session_start, a call and a result per call, session_end (and the PII
    // found in the demo's customer records, which are not counted here).
    let recorded = events.iter().filter(|e| e.event_type != "pii_detected").count();
    assert_eq!(recorded, PROCESSES * (2 * CALLS_PER_PROCESS + 2));
    let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=events.len() as i64).collect::<Vec<_>>(), "gap-free");
    for p in 0..PROCESSES {
        let agent = format!("agent-{p}");
        let calls = events
            .iter()
            .filter(|e| e.agent.as_deref() == Some(agent.as_str()) && e.event_type == "tool_call");
        assert_eq!(calls.count(), CALLS_PER_PROCESS, "{agent}");
    }
    let rows = store.provenance(1000).await.unwrap();
    assert_eq!(rows.len(), PROCESSES * CALLS_PER_PROCESS);
    assert!(rows.iter().all(|r| r.outcome == "ok"), "every call has its result");
    store.close().await;

    let (code, stdout, stderr) = run_cli(&["verify", "--ledger", &url]);
    assert_eq!(code, 0, "{stdout}{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_processes_on_chains_of_their_own() {
    processes_on_chains_of_their_own(TestLedger::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_processes_on_chains_of_their_own() {
    if let Some(ledger) = TestLedger::postgres().await {
        processes_on_chains_of_their_own(ledger).await;
    }
}

/// A proxy given a chain of its own (`--chain`, or `[ledger] chain` in its config) appends to
/// that chain only, and signs its checkpoints for it: each chain is gap-free on its own and
/// `verify` checks them all.
async fn processes_on_chains_of_their_own(ledger: TestLedger) {
    ledger.open().await.close().await;
    let url = ledger.url_string();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("ledger.key").display().to_string();
    let (code, _, stderr) = run_cli(&["keygen", "--name", "ledger.test/chains", "--out", &key]);
    assert_eq!(code, 0, "{stderr}");
    let config = dir.path().join("mcp-ledger.toml");
    std::fs::write(
        &config,
        format!(
            "[ledger]\nurl = {url}\nsigning_key = {key}\nchain = \"team-c\"\n",
            url = serde_json::to_string(&url).unwrap(),
            key = serde_json::to_string(&key).unwrap(),
        ),
    )
    .unwrap();
    let chains = ["team-a", "team-b", "team-c", "default"];
    let agents = chains.iter().map(|chain| {
        let mut args = proxy_args(&url, chain, None);
        let flag = match *chain {
            "team-c" => Some(("--config", config.display().to_string())),
            "default" => None,
            named => Some(("--chain", named.to_owned())),
        };
        if let Some((flag, value)) = flag {
            args.splice(1..1, [flag.to_owned(), value]);
        }
        tokio::spawn(async move {
            let mut client = LineClient::spawn(BIN, &args);
            client.initialize().await;
            for i in 0..5 {
                let customer = format!("cus_100{}", 1 + i);
                let reply =
                    client.call_tool("lookup_customer", json!({"customer_id": customer})).await;
                assert_eq!(reply["result"]["isError"], json!(false), "{reply}");
            }
            assert!(client.close().await.success());
        })
    });
    for agent in futures::future::join_all(agents).await {
        agent.expect("agent task");
    }

    let store = ledger.open().await;
    let events: Vec<_> = store.events().try_collect().await.unwrap();
    for chain in chains {
        let own: Vec<_> = events.iter().filter(|e| e.chain_id == chain).collect();
        let seqs: Vec<i64> = own.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=own.len() as i64).collect::<Vec<_>>(), "{chain} is gap-free");
        // The agent is named after its chain: every event of a session is on its chain.
        assert!(own.iter().all(|e| e.agent.as_deref() == Some(chain)), "{chain}");
        let calls = own.iter().filter(|e| e.event_type == "tool_call").count();
        assert_eq!(calls, 5, "{chain}");
    }
    let checkpoint = store.latest_checkpoint("team-c").await.unwrap();
    let size = store.chain_size("team-c").await.unwrap();
    assert_eq!(checkpoint.map(|c| c.tree_size), Some(size), "team-c was checkpointed whole");
    assert_eq!(store.latest_checkpoint("team-a").await.unwrap().map(|c| c.tree_size), None);
    store.close().await;

    let (code, stdout, stderr) = run_cli(&["verify", "--ledger", &url]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, stdout, stderr) = run_cli(&["stdio", "--chain", "team/x", "--", "true"]);
    assert_eq!(code, 64, "{stdout}{stderr}");
    assert!(stderr.contains("a chain name may hold only"), "{stderr}");
}
