//! Signed checkpoints, their anchor, proofs, and the verdicts `verify` gives when the database is
//! tampered with behind them — each tampering done with direct SQL, on both stores.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::{TestLedger, run_cli};
use futures::TryStreamExt;
use mcp_ledger::checkpointer::{Anchor, Checkpointer, FileAnchor, Schedule, read_anchor};
use mcp_ledger::record::checkpoint::SigningKey;
use mcp_ledger::record::merkle::{CompactTree, event_leaf_hash};
use mcp_ledger::record::{Draft, Event, EventType};
use mcp_ledger::store::{DEFAULT_CHAIN, Store};
use serde_json::json;

macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() { super::$name(super::TestLedger::sqlite()).await })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                if let Some(ledger) = super::TestLedger::postgres().await {
                    super::$name(ledger).await
                }
            })*
        }
    };
}

both_stores!(
    checkpoints_are_signed_every_n_events_and_at_shutdown,
    prove_and_consistency_verify,
    deleting_the_newest_events_is_truncated,
    rewriting_history_with_recomputed_hashes_is_rewritten,
    an_edited_signature_is_a_bad_signature,
    another_key_is_an_unknown_key,
    the_anchor_catches_what_the_database_no_longer_shows,
);

const KEY_NAME: &str = "test.example/ledger";

struct Keys {
    _dir: tempfile::TempDir,
    private: PathBuf,
    public: PathBuf,
    other_public: PathBuf,
    key: SigningKey,
}

fn keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_seed(KEY_NAME, [42; 32]).unwrap();
    let other = SigningKey::from_seed(KEY_NAME, [43; 32]).unwrap();
    let private = dir.path().join("ledger.key");
    let public = dir.path().join("ledger.key.pub");
    let other_public = dir.path().join("other.key.pub");
    std::fs::write(&private, key.to_private_key()).unwrap();
    std::fs::write(&public, key.verifying_key().to_string()).unwrap();
    std::fs::write(&other_public, other.verifying_key().to_string()).unwrap();
    Keys { _dir: dir, private, public, other_public, key }
}

async fn append(store: &Arc<dyn Store>, n: usize) -> Vec<Event> {
    let drafts: Vec<Draft> = (0..n)
        .map(|i| Draft::new(EventType::ToolCall, json!({"call_id": format!("c{i}"), "amount": i})))
        .collect();
    store.append(DEFAULT_CHAIN, &drafts).await.unwrap()
}

fn s(path: &Path) -> String {
    path.display().to_string()
}

fn checkpoint(ledger: &TestLedger, keys: &Keys, anchor: Option<&Path>) -> String {
    let url = ledger.url_string();
    let key = s(&keys.private);
    let mut args = vec!["checkpoint", "--ledger", &url, "--key", &key];
    let anchor = anchor.map(s);
    if let Some(anchor) = &anchor {
        args.extend(["--anchor", anchor]);
    }
    let (code, stdout, stderr) = run_cli(&args);
    assert_eq!(code, 0, "{stdout}{stderr}");
    stdout
}

fn verify(ledger: &TestLedger, extra: &[&str]) -> (i32, String) {
    let url = ledger.url_string();
    let mut args = vec!["verify", "--ledger", &url];
    args.extend(extra);
    let (code, stdout, stderr) = run_cli(&args);
    (code, format!("{stdout}{stderr}"))
}

fn checkpoints_table(ledger: &TestLedger) -> &'static str {
    if ledger.is_postgres() { "mcp_ledger.checkpoints" } else { "checkpoints" }
}

/// Removes the append-only protections of both tables, as someone with owner access can.
async fn disarm(ledger: &TestLedger) {
    let sql = if ledger.is_postgres() {
        "ALTER TABLE mcp_ledger.events DISABLE TRIGGER USER; \
         ALTER TABLE mcp_ledger.checkpoints DISABLE TRIGGER USER;"
    } else {
        "DROP TRIGGER events_refuse_update; DROP TRIGGER events_refuse_delete; \
         DROP TRIGGER checkpoints_refuse_update; DROP TRIGGER checkpoints_refuse_delete;"
    };
    ledger.exec_as_owner(sql).await.expect("disarm triggers");
}

async fn wait_for_size(store: &Arc<dyn Store>, size: i64) {
    for _ in 0..250 {
        if store.latest_checkpoint(DEFAULT_CHAIN).await.unwrap().map(|c| c.tree_size) == Some(size)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no checkpoint of size {size}");
}

async fn checkpoints_are_signed_every_n_events_and_at_shutdown(ledger: TestLedger) {
    let keys = keys();
    let anchor_dir = tempfile::tempdir().unwrap();
    let store = ledger.open().await;
    let anchor: Arc<dyn Anchor> = Arc::new(FileAnchor::new(anchor_dir.path()));
    let checkpointer =
        Checkpointer::resume(store.clone(), DEFAULT_CHAIN, keys.key.clone(), Some(anchor.clone()))
            .await
            .unwrap();
    let schedule = Schedule {
        every_events: 3,
        every: Duration::from_secs(3600),
        poll: Duration::from_millis(10),
    };
    let handle = checkpointer.spawn(schedule);
    let mut events = append(&store, 3).await;
    wait_for_size(&store, 3).await;
    events.extend(append(&store, 2).await);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(store.latest_checkpoint(DEFAULT_CHAIN).await.unwrap().unwrap().tree_size, 3);
    events.extend(append(&store, 1).await);
    wait_for_size(&store, 6).await;
    events.extend(append(&store, 1).await);
    handle.finish().await;

    let stored = store.checkpoints().await.unwrap();
    assert_eq!(stored.iter().map(|c| c.tree_size).collect::<Vec<_>>(), [3, 6, 7]);
    let leaves: Vec<_> = events.iter().map(|e| event_leaf_hash(&e.hash).unwrap()).collect();
    let full = CompactTree::from_leaves(&leaves);
    assert_eq!(stored[2].root_hash, hex::encode(full.root()));
    assert!(stored[2].note.starts_with(&format!("{KEY_NAME}\n7\n")), "{}", stored[2].note);
    let anchored = read_anchor(anchor_dir.path()).unwrap();
    assert_eq!(
        anchored.iter().map(|a| a.note.clone()).collect::<Vec<_>>(),
        [stored[0].note.clone(), stored[1].note.clone(), stored[2].note.clone()]
    );

    // Another process resumes from the stored tree state: nothing new, nothing stored twice.
    let mut again =
        Checkpointer::resume(store.clone(), DEFAULT_CHAIN, keys.key.clone(), Some(anchor))
            .await
            .unwrap();
    assert_eq!(again.tree().size(), 7);
    assert!(again.checkpoint().await.unwrap().is_none());
    let more = append(&store, 2).await;
    let next = again.checkpoint().await.unwrap().expect("a checkpoint of size 9");
    let mut tree = full;
    tree.extend(more.iter().map(|e| event_leaf_hash(&e.hash).unwrap()));
    assert_eq!((next.tree_size, next.root_hash.clone()), (9, hex::encode(tree.root())));
    store.close().await;

    let public = s(&keys.public);
    let anchor = s(anchor_dir.path());
    let (code, output) = verify(&ledger, &["--key", &public, "--anchor", &anchor]);
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("checked: 9 events, 8 checkpoint(s), 1 key(s)"), "{output}");
}

async fn prove_and_consistency_verify(ledger: TestLedger) {
    let keys = keys();
    let store = ledger.open().await;
    let first = append(&store, 5).await;
    checkpoint(&ledger, &keys, None);
    let second = append(&store, 6).await;
    checkpoint(&ledger, &keys, None);
    store.close().await;
    let url = ledger.url_string();
    let public = s(&keys.public);

    let (code, stdout, stderr) =
        run_cli(&["prove", "--ledger", &url, &first[2].event_id, "--key", &public]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("is leaf 2 of checkpoint 2 (size 11)"), "{stdout}");
    assert!(stdout.contains("signed by a trusted key"), "{stdout}");

    let (code, stdout, _) =
        run_cli(&["prove", "--ledger", &url, &second[5].event_id, "--json", "--key", &public]);
    assert_eq!(code, 0, "{stdout}");
    let proof: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(proof["verified"], true);
    assert_eq!(proof["leaf_index"], 10);
    assert_eq!(proof["tree_size"], 11);

    let other = s(&keys.other_public);
    let (code, stdout, _) =
        run_cli(&["prove", "--ledger", &url, &first[0].event_id, "--key", &other]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("NOT VERIFIED: no signature by a trusted key"), "{stdout}");

    let (code, stdout, stderr) =
        run_cli(&["consistency", "--ledger", &url, "5", "11", "--key", &public]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("checkpoint 1 (size 5) is a prefix of checkpoint 2 (size 11)"));
    let (code, stdout, _) = run_cli(&["consistency", "--ledger", &url, "5", "11", "--json"]);
    assert_eq!(code, 0);
    let proof: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(proof["verified"], true);
    assert!(!proof["proof"].as_array().unwrap().is_empty());

    let (code, _, stderr) = run_cli(&["consistency", "--ledger", &url, "4", "11"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("no checkpoint of size 4 (checkpointed sizes: 5, 11)"), "{stderr}");
}

async fn deleting_the_newest_events_is_truncated(ledger: TestLedger) {
    let keys = keys();
    let store = ledger.open().await;
    append(&store, 6).await;
    store.close().await;
    checkpoint(&ledger, &keys, None);
    disarm(&ledger).await;
    let table = ledger.events_table();
    ledger.exec_as_owner(&format!("DELETE FROM {table} WHERE seq >= 5")).await.unwrap();

    let public = s(&keys.public);
    let (code, output) = verify(&ledger, &["--key", &public]);
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains(
            "truncated: chain default has 4 events but checkpoint 1 (size 6) signed 6; \
             the events after seq 4 were deleted"
        ),
        "{output}"
    );
    let url = ledger.url_string();
    let (_, stdout, _) = run_cli(&["verify", "--ledger", &url, "--json", "--key", &public]);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["status"], "tampered");
    assert_eq!(report["findings"][0]["kind"], "truncated");
    assert_eq!(report["findings"][0]["checkpoint"], "checkpoint 1 (size 6)");
    assert_eq!(report["checkpoints"], 1);
    assert_eq!(report["keys"], 1);
}

/// Rewrites event `seq` (1-based) and recomputes every later hash and link, so that the hash
/// chain alone verifies.
async fn rewrite_from(ledger: &TestLedger, seq: usize) {
    let store = ledger.open().await;
    let mut events: Vec<Event> = store.events().try_collect().await.unwrap();
    store.close().await;
    events[seq - 1].data = json!({"call_id": "c-forged", "amount": 1_000_000});
    let mut sql = String::new();
    for i in seq - 1..events.len() {
        if i > 0 {
            events[i].prev_hash = events[i - 1].hash.clone();
        }
        events[i].hash = events[i].compute_hash();
        let data = if ledger.is_postgres() {
            format!("'{}'::jsonb", events[i].data)
        } else {
            format!("'{}'", events[i].data)
        };
        sql.push_str(&format!(
            "UPDATE {} SET data = {data}, prev_hash = '{}', hash = '{}' WHERE seq = {};",
            ledger.events_table(),
            events[i].prev_hash,
            events[i].hash,
            events[i].seq
        ));
    }
    ledger.exec_as_owner(&sql).await.unwrap();
}

async fn rewriting_history_with_recomputed_hashes_is_rewritten(ledger: TestLedger) {
    let keys = keys();
    let store = ledger.open().await;
    append(&store, 6).await;
    store.close().await;
    checkpoint(&ledger, &keys, None);
    disarm(&ledger).await;
    rewrite_from(&ledger, 2).await;

    let (code, output) = verify(&ledger, &[]);
    assert_eq!(code, 1, "{output}");
    assert!(!output.contains("broken link"), "the chain alone verifies: {output}");
    assert!(output.contains("rewritten: seqs 1..=6 of chain default hash to root"), "{output}");
    assert!(output.contains("but checkpoint 1 (size 6) signed root"), "{output}");
    assert!(output.contains("(signatures not checked: pass --key)"), "{output}");
}

async fn an_edited_signature_is_a_bad_signature(ledger: TestLedger) {
    let keys = keys();
    let store = ledger.open().await;
    append(&store, 4).await;
    store.close().await;
    checkpoint(&ledger, &keys, None);
    disarm(&ledger).await;
    // Change the signature's last base64 character (a signature byte, not padding). It carries
    // the last byte's low four bits and two zero bits; "A" and "E" both keep those zero bits, so
    // the text stays canonical base64 and only the signature is wrong.
    let store = ledger.open().await;
    let note = store.latest_checkpoint(DEFAULT_CHAIN).await.unwrap().unwrap().note;
    store.close().await;
    let body_end = note.trim_end().len();
    let last = &note[body_end - 2..body_end - 1];
    let forged = format!(
        "{}{}{}",
        &note[..body_end - 2],
        if last == "A" { "E" } else { "A" },
        &note[body_end - 1..]
    );
    assert_ne!(forged, note);
    ledger
        .exec_as_owner(&format!(
            "UPDATE {} SET note = '{forged}' WHERE id = 1",
            checkpoints_table(&ledger)
        ))
        .await
        .unwrap();

    let public = s(&keys.public);
    let (code, output) = verify(&ledger, &["--key", &public]);
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains(&format!(
            "bad signature: checkpoint 1 (size 4): the signature by {KEY_NAME}+{} does not verify",
            keys.key.fingerprint()
        )),
        "{output}"
    );
}

async fn another_key_is_an_unknown_key(ledger: TestLedger) {
    let keys = keys();
    let store = ledger.open().await;
    append(&store, 4).await;
    store.close().await;
    checkpoint(&ledger, &keys, None);

    let public = s(&keys.public);
    let (code, output) = verify(&ledger, &["--key", &public]);
    assert_eq!(code, 0, "{output}");
    let other = s(&keys.other_public);
    let (code, output) = verify(&ledger, &["--key", &other]);
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains(&format!(
            "unknown key: checkpoint 1 (size 4): no signature by a trusted key (signed by: {KEY_NAME}+{})",
            keys.key.fingerprint()
        )),
        "{output}"
    );
}

async fn the_anchor_catches_what_the_database_no_longer_shows(ledger: TestLedger) {
    let keys = keys();
    let anchor_dir = tempfile::tempdir().unwrap();
    let anchor_file = anchor_dir.path().join("checkpoints.notes");
    let store = ledger.open().await;
    append(&store, 4).await;
    store.close().await;
    checkpoint(&ledger, &keys, Some(&anchor_file));
    let store = ledger.open().await;
    append(&store, 4).await;
    store.close().await;
    checkpoint(&ledger, &keys, Some(&anchor_file));
    assert_eq!(read_anchor(&anchor_file).unwrap().len(), 2);

    // Truncate the events and erase every trace of the checkpoints in the database.
    disarm(&ledger).await;
    let (events, checkpoints) = (ledger.events_table(), checkpoints_table(&ledger));
    ledger
        .exec_as_owner(&format!("DELETE FROM {events} WHERE seq > 6; DELETE FROM {checkpoints};"))
        .await
        .unwrap();
    let public = s(&keys.public);
    let (code, output) = verify(&ledger, &["--key", &public]);
    assert_eq!(code, 0, "the database alone looks intact: {output}");

    let anchor = s(&anchor_file);
    let (code, output) = verify(&ledger, &["--key", &public, "--anchor", &anchor]);
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains(&format!(
            "truncated: chain default has 6 events but anchored checkpoint {anchor}:7 signed 8"
        )),
        "{output}"
    );
    assert!(!output.contains(":1 signed"), "the first checkpoint still holds: {output}");

    // Rewriting history instead (hashes recomputed) is caught against the anchor too.
    rewrite_from(&ledger, 3).await;
    let (code, output) = verify(&ledger, &["--key", &public, "--anchor", &anchor]);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("rewritten: seqs 1..=4 of chain default"), "{output}");
    assert!(output.contains(&format!("anchored checkpoint {anchor}:1 signed root")), "{output}");
}
