//! Corrections and retention, on both stores: a correction is a new event and changes nothing in
//! place; retention removes an old range only after a signed `retention_cut`, which `verify`
//! reports as legitimate, while a deletion without a cut is still `missing`.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::{TestLedger, run_cli};
use futures::TryStreamExt;
use mcp_ledger::record::checkpoint::SigningKey;
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
    correct_appends_a_correction_and_verify_stays_intact,
    retention_apply_cuts_after_a_signed_checkpoint_and_verify_accepts_it,
    a_deletion_without_a_cut_is_missing,
);

struct Keys {
    dir: tempfile::TempDir,
    private: PathBuf,
    public: PathBuf,
}

fn keys() -> Keys {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::from_seed("test.example/ledger", [42; 32]).unwrap();
    let private = dir.path().join("ledger.key");
    let public = dir.path().join("ledger.key.pub");
    std::fs::write(&private, key.to_private_key()).unwrap();
    std::fs::write(&public, key.verifying_key().to_string()).unwrap();
    Keys { dir, private, public }
}

async fn append(store: &Arc<dyn Store>, n: usize, padding: usize) -> Vec<Event> {
    let drafts: Vec<Draft> = (0..n)
        .map(|i| {
            Draft::new(
                EventType::ToolCall,
                json!({"call_id": format!("c{i}"), "tool": "t", "pad": "x".repeat(padding)}),
            )
        })
        .collect();
    store.append(DEFAULT_CHAIN, &drafts).await.unwrap()
}

async fn all_events(store: &Arc<dyn Store>) -> Vec<Event> {
    store.events().try_collect().await.unwrap()
}

fn verify(ledger: &TestLedger, keys: Option<&Keys>) -> (i32, String) {
    let url = ledger.url_string();
    let mut args = vec!["verify", "--ledger", &url];
    let public;
    if let Some(keys) = keys {
        public = keys.public.display().to_string();
        args.extend(["--key", &public]);
    }
    let (code, stdout, stderr) = run_cli(&args);
    (code, format!("{stdout}{stderr}"))
}

async fn correct_appends_a_correction_and_verify_stays_intact(ledger: TestLedger) {
    let store = ledger.open().await;
    let original = append(&store, 3, 0).await;
    let before = all_events(&store).await;
    let url = ledger.url_string();

    let (code, stdout, stderr) = run_cli(&[
        "correct",
        &original[1].event_id,
        "--reason",
        "wrong target recorded",
        "--operator",
        "alice",
        "--ledger",
        &url,
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let after = all_events(&store).await;
    assert_eq!(after.len(), 4);
    assert_eq!(&after[..3], &before[..], "nothing changed in place");
    let correction = &after[3];
    assert_eq!(correction.event_type, "correction");
    assert_eq!(correction.data["corrects"], json!(original[1].event_id));
    assert_eq!(correction.data["seq"], json!(2));
    assert_eq!(correction.data["reason"], json!("wrong target recorded"));
    assert_eq!(correction.data["by"], json!("alice"));
    assert_eq!(correction.prev_hash, original[2].hash);

    let (code, out) = verify(&ledger, None);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact"), "{out}");

    let (code, stdout, stderr) =
        run_cli(&["correct", "no-such-event", "--reason", "x", "--ledger", &url]);
    assert_eq!(code, 64, "{stdout}{stderr}");
    assert!(stderr.contains("no event with id"), "{stderr}");
    assert_eq!(all_events(&store).await.len(), 4, "an unknown id appends nothing");
    store.close().await;
}

fn config(ledger: &TestLedger, keys: &Keys, extra: &str) -> PathBuf {
    let path = keys.dir.path().join("mcp-ledger.toml");
    std::fs::write(
        &path,
        format!("[ledger]\nurl = \"{}\"\n\n[audit]\n{extra}\n", ledger.url_string()),
    )
    .unwrap();
    path
}

async fn retention_apply_cuts_after_a_signed_checkpoint_and_verify_accepts_it(ledger: TestLedger) {
    let store = ledger.open().await;
    // 30 events of about 50 kB: about 1.5 MB, over a 1 MB limit.
    append(&store, 30, 50_000).await;
    let keys = keys();
    let config = config(&ledger, &keys, "retention_max_size_mb = 1");
    let config = config.display().to_string();
    let private = keys.private.display().to_string();

    // Without a key nothing happens.
    let (code, stdout, stderr) = run_cli(&["retention", "apply", "--config", &config]);
    assert_eq!(code, 64, "{stdout}{stderr}");
    assert!(stderr.contains("signing key"), "{stderr}");

    // A dry run removes nothing.
    let (code, stdout, stderr) = run_cli(&["retention", "apply", "--config", &config, "--dry-run"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(stdout.contains("would remove seq 1..="), "{stdout}");
    assert_eq!(all_events(&store).await.len(), 30);

    let (code, stdout, stderr) =
        run_cli(&["retention", "apply", "--config", &config, "--key", &private, "--json"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let outcome: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let up_to = outcome["plan"]["up_to_seq"].as_i64().unwrap();
    assert!((1..30).contains(&up_to), "{outcome}");
    assert_eq!(outcome["cut"]["removed_events"], json!(up_to), "{outcome}");

    let events = all_events(&store).await;
    assert_eq!(events[0].seq, up_to + 1, "the old range is gone");
    let cut = events.last().unwrap();
    assert_eq!(cut.event_type, "retention_cut");
    assert_eq!(cut.seq, 31);
    assert_eq!(cut.data["up_to_seq"], json!(up_to));
    assert_eq!(cut.data["up_to_hash"], json!(events[0].prev_hash));
    assert_eq!(cut.data["removed_events"], json!(up_to));
    let latest = store.latest_checkpoint(DEFAULT_CHAIN).await.unwrap().unwrap();
    assert_eq!(latest.tree_size, 31, "a signed checkpoint covers the cut");

    let (code, out) = verify(&ledger, Some(&keys));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("retention: chain default starts at seq"), "{out}");
    assert!(out.contains("intact"), "{out}");
    assert!(!out.contains("missing"), "{out}");

    // Later events still verify, and later checkpoints still check out from the cut's tree.
    append(&store, 2, 0).await;
    let (code, stdout, stderr) =
        run_cli(&["checkpoint", "--ledger", &ledger.url_string(), "--key", &private]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let (code, out) = verify(&ledger, Some(&keys));
    assert_eq!(code, 0, "{out}");

    // The database still refuses any other deletion, beyond the cut as well.
    let table = ledger.events_table();
    let error = ledger
        .exec_as_owner(&format!("DELETE FROM {table} WHERE seq = {}", up_to + 1))
        .await
        .expect_err("a delete beyond the cut is refused");
    assert!(error.to_string().contains("append-only"), "{error}");

    // Removing more rows behind the cut's back is tampering.
    drop_delete_guard_and_delete(&ledger, up_to + 2).await;
    let (code, out) = verify(&ledger, Some(&keys));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("missing"), "{out}");
    store.close().await;
}

/// What an attacker with the owner's access does: lifts the guard, deletes `seq <= up_to`.
async fn drop_delete_guard_and_delete(ledger: &TestLedger, up_to: i64) {
    let sql = if ledger.is_postgres() {
        format!(
            "ALTER TABLE mcp_ledger.events DISABLE TRIGGER USER; \
             DELETE FROM mcp_ledger.events WHERE seq <= {up_to}; \
             ALTER TABLE mcp_ledger.events ENABLE TRIGGER USER;"
        )
    } else {
        format!("DROP TRIGGER events_refuse_delete; DELETE FROM events WHERE seq <= {up_to};")
    };
    ledger.exec_as_owner(&sql).await.unwrap();
}

async fn a_deletion_without_a_cut_is_missing(ledger: TestLedger) {
    let store = ledger.open().await;
    append(&store, 5, 0).await;
    let table = ledger.events_table();
    ledger
        .exec_as_owner(&format!("DELETE FROM {table} WHERE seq <= 2"))
        .await
        .expect_err("the triggers refuse a delete without a cut");
    drop_delete_guard_and_delete(&ledger, 2).await;
    let (code, out) = verify(&ledger, None);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("missing"), "{out}");
    assert!(!out.contains("retention:"), "{out}");
    store.close().await;
}

#[tokio::test]
async fn postgres_writer_role_still_cannot_delete_or_record_a_cut() {
    let Some(ledger) = TestLedger::postgres().await else {
        return;
    };
    let store = ledger.open().await;
    append(&store, 3, 0).await;
    store.close().await;
    let url = ledger.writer_role_url("mcp_ledger_test_app").await;
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await.unwrap();
    for statement in [
        "BEGIN; SET LOCAL mcp_ledger.retention = 'on'; \
         DELETE FROM mcp_ledger.events WHERE seq <= 1; COMMIT;",
        "INSERT INTO mcp_ledger.retention_cuts (chain_id, up_to_seq, cut_event_id) \
         VALUES ('default', 1, 'x')",
        "DELETE FROM mcp_ledger.payloads",
    ] {
        let error = sqlx::raw_sql(statement).execute(&mut conn).await.expect_err(statement);
        let code = error.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some("42501"), "{statement}: {error}");
        let _ = sqlx::raw_sql("ROLLBACK").execute(&mut conn).await;
    }
}

/// `retention_days`: events older than the limit go, newer ones stay. The old events are sealed
/// with old timestamps and inserted as the file's owner would restore an old ledger.
#[tokio::test]
async fn retention_days_cuts_what_is_older_than_the_limit() {
    let ledger = TestLedger::sqlite();
    let store = ledger.open().await;
    let ten_days_ago = time::OffsetDateTime::now_utc() - time::Duration::days(10);
    let mut prev = mcp_ledger::record::GENESIS_PREV_HASH.to_owned();
    let mut inserts = String::new();
    for seq in 1..=10 {
        let draft =
            Draft::new(EventType::ToolCall, json!({"call_id": format!("old{seq}"), "tool": "t"}));
        let event = draft.seal(DEFAULT_CHAIN, seq, &prev, ten_days_ago);
        inserts.push_str(&format!(
            "INSERT INTO events (chain_id, seq, event_id, event_type, timestamp, session_id, agent, server, data, prev_hash, hash) \
             VALUES ('{}', {}, '{}', '{}', '{}', NULL, NULL, NULL, '{}', '{}', '{}');",
            event.chain_id, event.seq, event.event_id, event.event_type, event.timestamp, event.data, event.prev_hash, event.hash
        ));
        prev = event.hash.clone();
    }
    ledger.exec_as_owner(&inserts).await.unwrap();
    append(&store, 5, 0).await;
    assert_eq!(verify(&ledger, None).0, 0, "the restored ledger is intact");

    let keys = keys();
    let config = config(&ledger, &keys, "retention_days = 3");
    let (code, stdout, stderr) = run_cli(&[
        "retention",
        "apply",
        "--config",
        &config.display().to_string(),
        "--key",
        &keys.private.display().to_string(),
        "--json",
    ]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let outcome: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(outcome["plan"]["up_to_seq"], 10, "{outcome}");
    let events = all_events(&store).await;
    assert_eq!(events[0].seq, 11, "exactly the old events are gone");
    let (code, out) = verify(&ledger, Some(&keys));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("retention: chain default starts at seq 11"), "{out}");
    store.close().await;
}
