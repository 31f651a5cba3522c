//! `mcp-ledger verify` against every way of tampering with the database directly, as a
//! superuser or the file's owner would (triggers and constraints out of the way), on both stores.
//! Each case asserts the exit code and that the report names the altered event.

mod common;

use common::{TestLedger, run_cli};
use futures::{StreamExt, TryStreamExt};
use mcp_ledger::record::{Draft, Event, EventType};
use mcp_ledger::store::DEFAULT_CHAIN;
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
    an_untouched_ledger_verifies,
    an_edited_row_is_named_as_modified,
    a_deleted_row_is_named_as_missing,
    swapped_rows_are_named_as_out_of_order,
    a_duplicated_seq_is_named_as_inserted,
    a_rewritten_row_with_a_recomputed_hash_breaks_the_next_link,
    tampering_far_into_a_long_chain_is_found,
);

/// A ledger with `n` events, and the events as written.
async fn ledger_with_events(ledger: &TestLedger, n: usize) -> Vec<Event> {
    let store = ledger.open().await;
    let drafts: Vec<Draft> = (0..n)
        .map(|i| {
            let mut draft = Draft::new(
                EventType::ToolCall,
                json!({"call_id": format!("c{i}"), "tool": "refund", "amount": i}),
            );
            draft.agent = Some("agent-7".into());
            draft
        })
        .collect();
    let events = store.append(DEFAULT_CHAIN, &drafts).await.unwrap();
    store.close().await;
    events
}

fn verify(ledger: &TestLedger) -> (i32, String) {
    let url = ledger.url_string();
    let (code, stdout, stderr) = run_cli(&["verify", "--ledger", &url]);
    (code, format!("{stdout}{stderr}"))
}

/// Removes the append-only protections, as someone with owner access can.
async fn disarm(ledger: &TestLedger) {
    let sql = if ledger.is_postgres() {
        "ALTER TABLE mcp_ledger.events DISABLE TRIGGER USER;"
    } else {
        "DROP TRIGGER events_refuse_update; DROP TRIGGER events_refuse_delete;"
    };
    ledger.exec_as_owner(sql).await.expect("disarm triggers");
}

async fn an_untouched_ledger_verifies(ledger: TestLedger) {
    let events = ledger_with_events(&ledger, 5).await;
    let (code, output) = verify(&ledger);
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("intact: 5 events"), "{output}");

    let url = ledger.url_string();
    let (code, stdout, _) = run_cli(&["verify", "--ledger", &url, "--json"]);
    assert_eq!(code, 0);
    let report: serde_json::Value =
        serde_json::from_str(&stdout).expect("verify --json prints JSON");
    assert_eq!(report["status"], "intact");
    assert_eq!(report["events"], 5);
    assert_eq!(report["chains"][0]["hash"], events[4].hash.as_str());
}

/// SQL for the `data` an attacker writes over a row, typed for the ledger's database.
fn forged_data(ledger: &TestLedger) -> &'static str {
    if ledger.is_postgres() { "'{\"amount\": 9000}'::jsonb" } else { "'{\"amount\": 9000}'" }
}

async fn an_edited_row_is_named_as_modified(ledger: TestLedger) {
    let events = ledger_with_events(&ledger, 5).await;
    disarm(&ledger).await;
    let table = ledger.events_table();
    let data = forged_data(&ledger);
    ledger.exec_as_owner(&format!("UPDATE {table} SET data = {data} WHERE seq = 3")).await.unwrap();

    let (code, output) = verify(&ledger);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains(&format!("modified: event {}", events[2].event_id)), "{output}");
    assert!(output.contains("seq 3"), "{output}");
    assert_eq!(output.matches("modified").count(), 1, "only the edited row is named: {output}");

    let url = ledger.url_string();
    let (_, stdout, _) = run_cli(&["verify", "--ledger", &url, "--json"]);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["status"], "tampered");
    assert_eq!(report["findings"][0]["kind"], "modified");
    assert_eq!(report["findings"][0]["seq"], 3);
    assert_eq!(report["findings"][0]["event_id"], events[2].event_id.as_str());
}

async fn a_deleted_row_is_named_as_missing(ledger: TestLedger) {
    let events = ledger_with_events(&ledger, 5).await;
    disarm(&ledger).await;
    ledger
        .exec_as_owner(&format!("DELETE FROM {} WHERE seq = 2", ledger.events_table()))
        .await
        .unwrap();

    let (code, output) = verify(&ledger);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("missing: seq 2 of chain default is gone"), "{output}");
    assert!(output.contains(&events[2].event_id), "names the event after the gap: {output}");
}

/// SQLite's ledger is read a thousand events at a time: rows on either side of a page boundary,
/// and pages after the first, are checked like any other.
async fn tampering_far_into_a_long_chain_is_found(ledger: TestLedger) {
    let events = ledger_with_events(&ledger, 2_500).await;
    disarm(&ledger).await;
    let table = ledger.events_table();
    let data = forged_data(&ledger);
    ledger
        .exec_as_owner(&format!(
            "UPDATE {table} SET data = {data} WHERE seq IN (1000, 1001, 2400); \
             DELETE FROM {table} WHERE seq = 2000;"
        ))
        .await
        .unwrap();

    let (code, output) = verify(&ledger);
    assert_eq!(code, 1, "{output}");
    for seq in [1000, 1001, 2400] {
        let event_id = &events[seq - 1].event_id;
        assert!(output.contains(&format!("modified: event {event_id}")), "seq {seq}: {output}");
    }
    assert_eq!(output.matches("modified").count(), 3, "only the edited rows: {output}");
    assert!(output.contains("missing: seq 2000 of chain default is gone"), "{output}");
}

async fn swapped_rows_are_named_as_out_of_order(ledger: TestLedger) {
    let events = ledger_with_events(&ledger, 6).await;
    disarm(&ledger).await;
    let table = ledger.events_table();
    ledger
        .exec_as_owner(&format!(
            "UPDATE {table} SET seq = 1000 WHERE seq = 3; \
             UPDATE {table} SET seq = 3 WHERE seq = 4; \
             UPDATE {table} SET seq = 4 WHERE seq = 1000;"
        ))
        .await
        .unwrap();

    let (code, output) = verify(&ledger);
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains(&format!(
            "out of order: event {} (chain default) stands at seq 4 but was recorded at seq 3",
            events[2].event_id
        )),
        "{output}"
    );
    assert!(output.contains(&format!("out of order: event {}", events[3].event_id)), "{output}");
}

async fn a_duplicated_seq_is_named_as_inserted(ledger: TestLedger) {
    let events = ledger_with_events(&ledger, 4).await;
    let table = ledger.events_table();
    // The primary key and the unique event id stand in the way; an owner can drop both.
    let drop_keys = if ledger.is_postgres() {
        "ALTER TABLE mcp_ledger.events DROP CONSTRAINT events_pkey; \
         ALTER TABLE mcp_ledger.events DROP CONSTRAINT events_event_id_key;"
            .to_owned()
    } else {
        "CREATE TABLE events_copy AS SELECT * FROM events; DROP VIEW agent_costs; DROP VIEW provenance; DROP VIEW pii_findings; \
         DROP TABLE events; \
         ALTER TABLE events_copy RENAME TO events;"
            .to_owned()
    };
    ledger.exec_as_owner(&drop_keys).await.unwrap();
    let mut forged = events[1].clone();
    forged.event_id = "01990000-0000-7000-8000-00000000f0f0".into();
    forged.data = json!({"call_id": "forged", "tool": "refund", "amount": 50000});
    forged.hash = forged.compute_hash();
    let data = if ledger.is_postgres() {
        format!("'{}'::jsonb", forged.data)
    } else {
        format!("'{}'", forged.data)
    };
    ledger
        .exec_as_owner(&format!(
            "INSERT INTO {table} (chain_id, seq, event_id, event_type, timestamp, session_id, agent, server, data, prev_hash, hash) \
             VALUES ('default', 2, '{}', 'tool_call', '{}', NULL, 'agent-7', NULL, {data}, '{}', '{}')",
            forged.event_id, forged.timestamp, forged.prev_hash, forged.hash
        ).replace("timestamp,", if ledger.is_postgres() { "\"timestamp\"," } else { "timestamp," }))
        .await
        .unwrap();

    let (code, output) = verify(&ledger);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains("inserted: event"), "{output}");
    assert!(output.contains("claims seq 2"), "{output}");
}

async fn a_rewritten_row_with_a_recomputed_hash_breaks_the_next_link(ledger: TestLedger) {
    let events = ledger_with_events(&ledger, 5).await;
    disarm(&ledger).await;
    let mut rewritten = events[1].clone();
    rewritten.data = json!({"call_id": "c1", "tool": "refund", "amount": 999});
    rewritten.hash = rewritten.compute_hash();
    let table = ledger.events_table();
    let data = if ledger.is_postgres() {
        format!("'{}'::jsonb", rewritten.data)
    } else {
        format!("'{}'", rewritten.data)
    };
    ledger
        .exec_as_owner(&format!(
            "UPDATE {table} SET data = {data}, hash = '{}' WHERE seq = 2",
            rewritten.hash
        ))
        .await
        .unwrap();

    let (code, output) = verify(&ledger);
    assert_eq!(code, 1, "{output}");
    assert!(output.contains(&format!("broken link: event {}", events[2].event_id)), "{output}");
    assert!(output.contains("seq 2 was rewritten"), "{output}");
}

#[tokio::test]
async fn an_unreadable_ledger_could_not_be_checked() {
    let dir = tempfile::tempdir().unwrap();
    let missing = format!("sqlite://{}/nope.db", dir.path().display());
    let (code, _, stderr) = run_cli(&["verify", "--ledger", &missing]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no ledger at"), "{stderr}");

    let (code, _, stderr) = run_cli(&["verify", "--ledger", "postgres://nobody@127.0.0.1:1/none"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("cannot open the ledger"), "{stderr}");

    let (code, _, stderr) = run_cli(&["verify", "--ledger", "mysql://x"]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("unsupported ledger url `mysql://x`"), "{stderr}");
}

#[tokio::test]
async fn events_read_back_in_seq_order_after_tampering() {
    // Guards the premise of the tamper tests: reading orders by seq, not by insertion.
    let ledger = TestLedger::sqlite();
    ledger_with_events(&ledger, 3).await;
    let store = ledger.open().await;
    let events: Vec<Event> = store.events().try_collect().await.unwrap();
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
}

#[tokio::test]
async fn a_row_that_is_not_json_is_named_after_the_events_before_it() {
    let ledger = TestLedger::sqlite();
    let events = ledger_with_events(&ledger, 1_500).await;
    disarm(&ledger).await;
    ledger
        .exec_as_owner(
            // The JSON check and the indexes on JSON paths refuse such a row; an owner can lift
            // the one and drop the others.
            "PRAGMA ignore_check_constraints = ON; \
             DROP INDEX events_call_id; DROP INDEX events_erasure_reference; \
             UPDATE events SET data = '{\"amount\": ' WHERE seq = 1200;",
        )
        .await
        .unwrap();

    let store = ledger.open().await;
    let read: Vec<_> = store.events().collect().await;
    assert_eq!(read.len(), 1_200, "the 1,199 events before it, then its error");
    assert!(read[..1_199].iter().all(Result::is_ok));
    let error = read[1_199].as_ref().unwrap_err().to_string();
    assert!(
        error.contains(&format!("ledger event {} is unreadable", events[1_199].event_id)),
        "{error}"
    );
    store.close().await;

    let (code, output) = verify(&ledger);
    assert_eq!(code, 2, "{output}");
    assert!(output.contains(&events[1_199].event_id), "{output}");
}
