//! The store suite: the same tests against SQLite and Postgres, through the `Store` trait and
//! the group-commit writer, plus what the databases themselves refuse.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestLedger;
use common::chaos::ChaosProxy;
use futures::TryStreamExt;
use mcp_ledger::record::verify::verify_all;
use mcp_ledger::record::{Draft, EventType, GENESIS_PREV_HASH, Payload, canonical_value_bytes};
use mcp_ledger::store::writer::Ledger;
use mcp_ledger::store::{DEFAULT_CHAIN, Store};
use serde_json::json;

/// Runs each named test against both stores.
macro_rules! both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() { super::$name(super::TestLedger::sqlite()).await })*
        }
        mod postgres {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() {
                if let Some(ledger) = super::TestLedger::postgres().await {
                    super::$name(ledger).await
                }
            })*
        }
    };
}

both_stores!(
    appends_are_sealed_in_order_and_read_back,
    a_long_ledger_of_several_chains_reads_back_whole_and_in_order,
    a_batch_bigger_than_one_statement_is_one_append,
    payloads_are_content_addressed_and_deduplicated,
    concurrent_appends_batch_into_one_gap_free_chain,
    the_database_refuses_to_change_events,
    provenance_has_one_row_per_tool_call,
    migrations_are_idempotent,
    two_stores_on_one_ledger_keep_one_chain,
    a_head_another_process_moved_is_read_again,
    a_refused_append_leaves_the_ledger_writable,
    spent_today_counts_what_ran_or_waits,
    payload_retention_erases_only_bodies_nothing_recent_references,
    settling_an_append_that_never_had_a_connection_is_none_at_once,
);

fn tool_call(call_id: &str, tool: &str, arguments: serde_json::Value) -> Draft {
    let input = Payload::of(&arguments);
    let mut draft = Draft::new(
        EventType::ToolCall,
        json!({
            "call_id": call_id, "tool": tool, "input_ref": input.reference,
            "authorized_by": "default:allow", "cost_credits": 0, "target": null,
        }),
    );
    draft.agent = Some("tester".into());
    draft.server = Some("test-server".into());
    draft.session_id = Some("session-1".into());
    draft.payloads.push(input);
    draft
}

async fn all_events(store: &Arc<dyn Store>) -> Vec<mcp_ledger::record::Event> {
    store.events().try_collect().await.expect("read events")
}

/// `settle` is what the writer asks after an append failed in a way that may leave its outcome
/// unknown (tests/fail_closed.rs breaks connections mid-append for it; the tests further down
/// settle failed appends on each store). An append that failed before it had a connection sent
/// nothing, so it is settled as not committed without asking the database: even these drafts,
/// committed through the same store, do not count, since no failed append of them is pending.
async fn settling_an_append_that_never_had_a_connection_is_none_at_once(ledger: TestLedger) {
    let store = ledger.open().await;
    let committed = vec![tool_call("c1", "lookup", json!({"id": 1}))];
    store.append(DEFAULT_CHAIN, &committed).await.unwrap();
    assert_eq!(store.settle(DEFAULT_CHAIN, &committed).await.unwrap(), None);
    store.close().await;
}

async fn appends_are_sealed_in_order_and_read_back(ledger: TestLedger) {
    let store = ledger.open().await;
    let first =
        store.append(DEFAULT_CHAIN, &[tool_call("c1", "echo", json!({"x": 1}))]).await.unwrap();
    let more = store
        .append(
            DEFAULT_CHAIN,
            &[tool_call("c2", "echo", json!({})), tool_call("c3", "echo", json!({}))],
        )
        .await
        .unwrap();
    assert_eq!(first[0].seq, 1);
    assert_eq!(first[0].prev_hash, GENESIS_PREV_HASH);
    assert_eq!(more.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 3]);
    assert_eq!(more[0].prev_hash, first[0].hash);

    let stored = all_events(&store).await;
    assert_eq!(stored.len(), 3);
    // What comes back is exactly what was sealed, so every hash recomputes.
    assert_eq!(stored[0], first[0]);
    assert_eq!(stored[1..], more[..]);
    assert!(verify_all(&stored).intact());
    store.close().await;
}

/// More events than SQLite reads in one page, in two chains appended in turns, with text that
/// JSON must escape: every event comes back exactly as sealed, ordered by chain and seq.
async fn a_long_ledger_of_several_chains_reads_back_whole_and_in_order(ledger: TestLedger) {
    let store = ledger.open().await;
    let mut sealed = Vec::new();
    for round in 0..5 {
        for chain in ["zeta", "alpha"] {
            let drafts: Vec<Draft> = (0..500)
                .map(|i| {
                    let mut draft = tool_call(
                        &format!("{chain}-{round}-{i}"),
                        "echo",
                        json!({"text": "quote \" backslash \\ tab \t é 🦀", "i": i}),
                    );
                    draft.server = (i % 3 == 0).then(|| "srv \"x\"".to_owned());
                    draft
                })
                .collect();
            sealed.extend(store.append(chain, &drafts).await.unwrap());
        }
    }
    sealed.sort_by(|a, b| (&a.chain_id, a.seq).cmp(&(&b.chain_id, b.seq)));

    let stored = all_events(&store).await;
    assert_eq!(stored.len(), 5_000);
    assert!(stored == sealed, "the events read back differ from those sealed");
    assert!(verify_all(&stored).intact());
    store.close().await;
}

/// A batch with more rows than SQLite binds in one statement (2,000) is still one append,
/// both when the store reads the head first (a new store) and when it extends its own.
async fn a_batch_bigger_than_one_statement_is_one_append(ledger: TestLedger) {
    let store = ledger.open().await;
    let batch = |round: usize| -> Vec<Draft> {
        (0..4_500)
            .map(|i| tool_call(&format!("c{round}-{i}"), "echo", json!({round.to_string(): i})))
            .collect()
    };
    for round in 0..2 {
        let appended = store.append(DEFAULT_CHAIN, &batch(round)).await.expect("appended");
        assert_eq!(appended.len(), 4_500);
        assert_eq!(appended[0].seq, 1 + 4_500 * round as i64);
    }
    let stored = all_events(&store).await;
    assert_eq!(stored.len(), 9_000);
    assert!(verify_all(&stored).intact());
    let body = Payload::of(&json!({"1": 4_499}));
    assert!(store.payload(&body.reference).await.unwrap().is_some(), "the last body is stored");
    store.close().await;
}

async fn payloads_are_content_addressed_and_deduplicated(ledger: TestLedger) {
    let store = ledger.open().await;
    let arguments =
        json!({"to": "dana@example.com", "amount": 42.5, "nested": {"b": [1, 2], "a": null}});
    store.append(DEFAULT_CHAIN, &[tool_call("c1", "send", arguments.clone())]).await.unwrap();
    // The same body again (keys in another order) is the same reference, stored once.
    let same =
        json!({"nested": {"a": null, "b": [1, 2]}, "amount": 42.5, "to": "dana@example.com"});
    store.append(DEFAULT_CHAIN, &[tool_call("c2", "send", same)]).await.unwrap();

    let reference = Payload::of(&arguments).reference;
    let body = store.payload(&reference).await.unwrap().expect("payload stored");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap(), arguments);
    assert_eq!(mcp_ledger::record::payload_ref(body.as_bytes()), reference);
    assert_eq!(store.payload("sha256:0000").await.unwrap(), None);
    store.close().await;
}

async fn concurrent_appends_batch_into_one_gap_free_chain(ledger: TestLedger) {
    let store = ledger.open().await;
    let (writer, task) = Ledger::start(store.clone(), DEFAULT_CHAIN, Duration::from_secs(10));
    let appends = (0..300).map(|i| {
        let writer = writer.clone();
        tokio::spawn(async move {
            writer.append(tool_call(&format!("c{i}"), "echo", json!({"i": i}))).await
        })
    });
    let committed: Vec<_> = futures::future::join_all(appends)
        .await
        .into_iter()
        .map(|r| r.unwrap().expect("committed"))
        .collect();
    drop(writer);
    task.await.unwrap();

    let mut seqs: Vec<_> = committed.iter().map(|e| e.seq).collect();
    seqs.sort();
    assert_eq!(seqs, (1..=300).collect::<Vec<_>>());
    let stored = all_events(&store).await;
    assert_eq!(stored.len(), 300);
    assert!(verify_all(&stored).intact());
    // Each caller got back its event as the ledger holds it, `data` and all.
    let mut returned = committed;
    returned.sort_by_key(|e| e.seq);
    assert_eq!(returned, stored);
    store.close().await;
}

async fn the_database_refuses_to_change_events(ledger: TestLedger) {
    let store = ledger.open().await;
    store.append(DEFAULT_CHAIN, &[tool_call("c1", "echo", json!({}))]).await.unwrap();
    store.close().await;
    let table = ledger.events_table();

    let update = ledger.exec_as_owner(&format!("UPDATE {table} SET agent = 'mallory'")).await;
    let error = update.expect_err("UPDATE must be refused").to_string();
    assert!(error.contains("append-only"), "{error}");
    let delete = ledger.exec_as_owner(&format!("DELETE FROM {table}")).await;
    assert!(delete.expect_err("DELETE must be refused").to_string().contains("append-only"));
    if ledger.is_postgres() {
        let truncate = ledger.exec_as_owner(&format!("TRUNCATE {table}")).await;
        assert!(
            truncate.expect_err("TRUNCATE must be refused").to_string().contains("append-only")
        );
    }
    let store = ledger.open().await;
    assert_eq!(all_events(&store).await.len(), 1);
    store.close().await;
}

async fn provenance_has_one_row_per_tool_call(ledger: TestLedger) {
    let store = ledger.open().await;
    let output = Payload::of(&json!({"content": [{"type": "text", "text": "hi"}]}));
    let mut result = Draft::new(
        EventType::ToolResult,
        json!({"call_id": "c1", "tool": "echo", "outcome": "ok", "output_ref": output.reference}),
    );
    result.payloads.push(output.clone());
    let failed = Draft::new(
        EventType::ToolResult,
        json!({"call_id": "c2", "tool": "boom", "outcome": "error", "output_ref": null, "error": "code -32603: boom"}),
    );
    let other =
        Draft::new(EventType::Request, json!({"call_id": "r1", "method": "resources/read"}));
    store
        .append(
            DEFAULT_CHAIN,
            &[
                tool_call("c1", "echo", json!({"text": "hi"})),
                tool_call("c2", "boom", json!({})),
                tool_call("c3", "slow", json!({})),
                result,
                failed,
                other,
            ],
        )
        .await
        .unwrap();
    let rows = store.provenance(100).await.unwrap();
    assert_eq!(rows.len(), 3, "{rows:#?}");
    let row = |id: &str| rows.iter().find(|r| r.call_id == id).expect("row");
    let c1 = row("c1");
    assert_eq!(c1.action.as_deref(), Some("echo"));
    assert_eq!(c1.agent.as_deref(), Some("tester"));
    assert_eq!(c1.server.as_deref(), Some("test-server"));
    assert_eq!(c1.session_id.as_deref(), Some("session-1"));
    assert_eq!(c1.authorized_by.as_deref(), Some("default:allow"));
    assert_eq!(c1.cost_credits, Some(0.0));
    assert_eq!(c1.outcome, "ok");
    assert_eq!(c1.output_ref.as_deref(), Some(output.reference.as_str()));
    assert!(c1.input_ref.as_deref().unwrap().starts_with("sha256:"));
    assert!(c1.timestamp.ends_with('Z') && c1.timestamp.len() == 27, "{}", c1.timestamp);
    assert_eq!(row("c2").outcome, "error");
    assert_eq!(row("c2").error.as_deref(), Some("code -32603: boom"));
    assert_eq!(row("c3").outcome, "pending");
    assert_eq!(store.provenance(1).await.unwrap().len(), 1);
    store.close().await;
}

async fn migrations_are_idempotent(ledger: TestLedger) {
    let store = ledger.open().await;
    store.append(DEFAULT_CHAIN, &[tool_call("c1", "echo", json!({}))]).await.unwrap();
    store.migrate().await.expect("migrating again is a no-op");
    store.close().await;
    let reopened = ledger.open().await;
    assert_eq!(all_events(&reopened).await.len(), 1);
    reopened.close().await;
}

/// Two independent stores (as two processes would have) appending at once still form one chain.
async fn two_stores_on_one_ledger_keep_one_chain(ledger: TestLedger) {
    let a = ledger.open().await;
    let b = ledger.open().await;
    let (wa, ta) = Ledger::start(a.clone(), DEFAULT_CHAIN, Duration::from_secs(20));
    let (wb, tb) = Ledger::start(b.clone(), DEFAULT_CHAIN, Duration::from_secs(20));
    let appends = (0..200).map(|i| {
        let writer = if i % 2 == 0 { wa.clone() } else { wb.clone() };
        tokio::spawn(async move {
            writer.append(tool_call(&format!("c{i}"), "echo", json!({"i": i}))).await
        })
    });
    for result in futures::future::join_all(appends).await {
        result.unwrap().expect("committed");
    }
    drop((wa, wb));
    ta.await.unwrap();
    tb.await.unwrap();
    let events = all_events(&a).await;
    assert_eq!(events.len(), 200);
    let report = verify_all(&events);
    assert!(report.intact(), "{:?}", report.findings);
    a.close().await;
    b.close().await;
}

/// Each store extends the head it committed last without reading it (one round trip); when
/// another process moved the head meanwhile, the guess is refused, nothing of it is written,
/// and the append lands after the other process's events.
async fn a_head_another_process_moved_is_read_again(ledger: TestLedger) {
    let a = ledger.open().await;
    let b = ledger.open().await;
    for (i, store) in [&a, &b, &a, &a, &b, &a].into_iter().enumerate() {
        let drafts = [tool_call(&format!("c{i}"), "echo", json!({"i": i}))];
        let appended = store.append(DEFAULT_CHAIN, &drafts).await.expect("appended");
        assert_eq!(appended[0].seq, i as i64 + 1);
    }
    let events = all_events(&a).await;
    assert_eq!(events.len(), 6);
    let report = verify_all(&events);
    assert!(report.intact(), "{:?}", report.findings);
    a.close().await;
    b.close().await;
}

/// An append the database refuses (here an event id that is already in the ledger) fails,
/// writes nothing, and leaves no lock behind: the next append commits at once, well inside a
/// lock timeout that a transaction left open would run out.
async fn a_refused_append_leaves_the_ledger_writable(ledger: TestLedger) {
    let options = mcp_ledger::store::StoreOptions {
        lock_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let store = mcp_ledger::store::open(&ledger.url, &options).await.unwrap();
    let other = mcp_ledger::store::open(&ledger.url, &options).await.unwrap();
    let first = [tool_call("c1", "echo", json!({}))];
    store.append(DEFAULT_CHAIN, &first).await.expect("appended");
    let again = [tool_call("c2", "echo", json!({})), first[0].clone()];
    store.append(DEFAULT_CHAIN, &again).await.expect_err("event ids are unique");
    let next = [tool_call("c3", "echo", json!({}))];
    assert_eq!(
        other.append(DEFAULT_CHAIN, &next).await.expect("another process appends")[0].seq,
        2
    );
    let last = [tool_call("c4", "echo", json!({}))];
    assert_eq!(store.append(DEFAULT_CHAIN, &last).await.expect("appends again")[0].seq, 3);
    // The same from a store that has not appended yet, so reads the head under the lock first.
    let fresh = mcp_ledger::store::open(&ledger.url, &options).await.unwrap();
    fresh.append(DEFAULT_CHAIN, &again).await.expect_err("event ids are unique");
    let after = [tool_call("c5", "echo", json!({}))];
    assert_eq!(
        other.append(DEFAULT_CHAIN, &after).await.expect("another process appends")[0].seq,
        4
    );
    let events = all_events(&store).await;
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3, 4]);
    assert!(verify_all(&events).intact());
    fresh.close().await;
    other.close().await;
    store.close().await;
}

/// A connection of its own to a SQLite ledger's file, as another process would open it.
async fn raw_sqlite(ledger: &TestLedger) -> sqlx::SqliteConnection {
    use sqlx::Connection;
    let path = ledger.sqlite_path().expect("a SQLite ledger");
    sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("open the SQLite file")
}

/// SQLite keeps `data` as text: the canonical JSON its hash covers, the same whether the draft
/// came through the writer (its text computed beforehand) or straight to the store.
#[tokio::test]
async fn sqlite_stores_data_as_its_canonical_text() {
    let ledger = TestLedger::sqlite();
    let store = ledger.open().await;
    let data = json!({"z": [1.0, 1e21, "é\u{1}"], "a": {"y": null, "b": "\"q\""}});
    let drafts = [
        Draft::new(EventType::ToolCall, data.clone()),
        Draft::new(EventType::ToolCall, data.clone()).prepared(),
    ];
    store.append(DEFAULT_CHAIN, &drafts).await.unwrap();
    store.close().await;

    let mut conn = raw_sqlite(&ledger).await;
    let texts: Vec<String> = sqlx::query_scalar("SELECT data FROM events ORDER BY seq")
        .fetch_all(&mut conn)
        .await
        .expect("read data");
    let canonical = String::from_utf8(canonical_value_bytes(&data)).unwrap();
    assert_eq!(texts, [canonical.clone(), canonical]);
}

/// Another process holding SQLite's write lock (here a raw connection in `BEGIN IMMEDIATE`)
/// holds an append up until it lets go, and past the lock timeout fails it with nothing written.
#[tokio::test]
async fn sqlite_appends_wait_for_another_process_write_lock_up_to_the_timeout() {
    let ledger = TestLedger::sqlite();
    let options = mcp_ledger::store::StoreOptions {
        lock_timeout: Duration::from_millis(400),
        ..Default::default()
    };
    let store = mcp_ledger::store::open(&ledger.url, &options).await.unwrap();
    let mut other = raw_sqlite(&ledger).await;

    // Held for less than the timeout: the append waits, then commits.
    sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut other).await.unwrap();
    let first = [tool_call("c1", "echo", json!({}))];
    let append = store.append(DEFAULT_CHAIN, &first);
    let release = async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        sqlx::raw_sql("COMMIT").execute(&mut other).await.unwrap();
    };
    let (appended, ()) = tokio::join!(append, release);
    assert_eq!(appended.expect("appended once the lock was free")[0].seq, 1);

    // Held past the timeout: the append fails, naming the lock, and writes nothing.
    sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut other).await.unwrap();
    let error = store
        .append(DEFAULT_CHAIN, &[tool_call("c2", "echo", json!({}))])
        .await
        .expect_err("the lock was held past the timeout");
    assert!(error.to_string().contains("locked"), "{error}");
    sqlx::raw_sql("COMMIT").execute(&mut other).await.unwrap();
    let appended = store.append(DEFAULT_CHAIN, &[tool_call("c3", "echo", json!({}))]).await;
    assert_eq!(appended.expect("appends again once the lock is free")[0].seq, 2);
    let stored = all_events(&store).await;
    assert_eq!(stored.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    assert!(verify_all(&stored).intact());
    store.close().await;
}

/// An SQLite append that gave up (the write lock was held past the timeout) is settled by
/// closing its connection, which waits for whatever was queued to it, then looking its events
/// up: not there, `None`; there (here committed by another process after all, as an abandoned
/// commit's worker thread could have), the events as stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_settles_an_append_it_gave_up_on() {
    let ledger = TestLedger::sqlite();
    let options = mcp_ledger::store::StoreOptions {
        lock_timeout: Duration::from_millis(100),
        ..Default::default()
    };
    let store = mcp_ledger::store::open(&ledger.url, &options).await.unwrap();
    let elsewhere = ledger.open().await;
    let mut other = raw_sqlite(&ledger).await;

    let never = [tool_call("c1", "echo", json!({}))];
    sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut other).await.unwrap();
    store.append(DEFAULT_CHAIN, &never).await.expect_err("the lock was held");
    sqlx::raw_sql("ROLLBACK").execute(&mut other).await.unwrap();
    assert_eq!(store.settle(DEFAULT_CHAIN, &never).await.unwrap(), None);

    let landed = [tool_call("c2", "echo", json!({})), tool_call("c3", "echo", json!({}))];
    sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut other).await.unwrap();
    store.append(DEFAULT_CHAIN, &landed).await.expect_err("the lock was held");
    sqlx::raw_sql("ROLLBACK").execute(&mut other).await.unwrap();
    let events = elsewhere.append(DEFAULT_CHAIN, &landed).await.unwrap();
    assert_eq!(store.settle(DEFAULT_CHAIN, &landed).await.unwrap(), Some(events));
    // The same ids in another chain are not these events.
    sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut other).await.unwrap();
    store.append("another-chain", &landed).await.expect_err("the lock was held");
    sqlx::raw_sql("ROLLBACK").execute(&mut other).await.unwrap();
    assert_eq!(store.settle("another-chain", &landed).await.unwrap(), None);
    elsewhere.close().await;
    store.close().await;
}

/// In Postgres the proxy can run as a role that may only insert and read.
#[tokio::test]
async fn postgres_writer_role_can_append_but_not_change_history() {
    let Some(ledger) = TestLedger::postgres().await else {
        return;
    };
    let store = ledger.open().await; // migrates as the owner, creating the roles
    store.close().await;
    let url = ledger.writer_role_url("mcp_ledger_test_app").await;
    let as_writer = mcp_ledger::store::open(
        &mcp_ledger::store::LedgerUrl::parse(&url).unwrap(),
        &mcp_ledger::store::StoreOptions::default(),
    )
    .await
    .expect("the writer role opens an already-migrated ledger");
    as_writer
        .append(DEFAULT_CHAIN, &[tool_call("c1", "echo", json!({}))])
        .await
        .expect("writer appends");
    assert_eq!(as_writer.provenance(10).await.unwrap().len(), 1);
    as_writer.close().await;

    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&url).await.unwrap();
    for statement in [
        "UPDATE mcp_ledger.events SET agent = 'x'",
        "DELETE FROM mcp_ledger.events",
        "TRUNCATE mcp_ledger.events",
        "DROP TRIGGER events_refuse_change ON mcp_ledger.events",
    ] {
        let error = sqlx::query(statement).execute(&mut conn).await.expect_err(statement);
        let code = error.as_database_error().and_then(|e| e.code()).map(|c| c.into_owned());
        assert_eq!(code.as_deref(), Some("42501"), "{statement}: {error}");
    }
}

/// The insert-only role can settle appends whose connection broke (it may end its own server
/// sessions): the events of one whose answer was lost are found; one that never arrived is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_writer_role_settles_an_append_whose_answer_was_lost() {
    let Some(ledger) = TestLedger::postgres().await else { return };
    ledger.open().await.close().await;
    let as_writer = ledger.writer_role_url("mcp_ledger_test_settler").await;
    let (chaos, url) = ChaosProxy::in_front_of(&as_writer).await;
    let store = common::open_url(&url).await;
    store.append(DEFAULT_CHAIN, &[tool_call("c1", "echo", json!({}))]).await.unwrap();

    chaos.lose_answer_to("marker-4f1e");
    let lost = [tool_call("c2", "echo", json!({"note": "marker-4f1e"}))];
    let error = store.append(DEFAULT_CHAIN, &lost).await.expect_err("the answer never came");
    assert!(error.is_connection_lost(), "{error}");
    let settled = store.settle(DEFAULT_CHAIN, &lost).await.unwrap().expect("it had committed");
    assert_eq!(settled.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
    // Broken before the server got it: not committed, and it never will be.
    chaos.drop_before("marker-9c2a");
    let dropped = [tool_call("c3", "echo", json!({"note": "marker-9c2a"}))];
    let error = store.append(DEFAULT_CHAIN, &dropped).await.expect_err("never arrived");
    assert!(error.is_connection_lost(), "{error}");
    assert_eq!(store.settle(DEFAULT_CHAIN, &dropped).await.unwrap(), None);
    // The store goes on, on a new connection, after the settled batch.
    let next = store.append(DEFAULT_CHAIN, &[tool_call("c4", "echo", json!({}))]).await.unwrap();
    assert_eq!(next[0].seq, 3);
    assert!(verify_all(&all_events(&store).await).intact());
    store.close().await;
}

/// Today's spending: allowed and held calls count, denied, expired and cancelled ones do not.
async fn spent_today_counts_what_ran_or_waits(ledger: TestLedger) {
    let store = ledger.open().await;
    let call = |id: &str, effect: &str, cost: f64, agent: &str| {
        let mut draft = Draft::new(
            EventType::ToolCall,
            json!({"call_id": id, "tool": "t", "cost_credits": cost, "decision": {"effect": effect}}),
        );
        draft.agent = Some(agent.into());
        draft
    };
    let refused = Draft::new(
        EventType::ToolResult,
        json!({"call_id": "held-then-expired", "outcome": "expired"}),
    );
    store
        .append(
            DEFAULT_CHAIN,
            &[
                call("allowed", "allow", 2.5, "a"),
                call("held", "hold", 1.0, "a"),
                call("held-then-expired", "hold", 4.0, "a"),
                call("denied", "deny", 8.0, "a"),
                call("other-agent", "allow", 16.0, "b"),
                refused,
            ],
        )
        .await
        .unwrap();
    assert_eq!(store.spent_today("a").await.unwrap(), 3.5);
    assert_eq!(store.spent_today("b").await.unwrap(), 16.0);
    assert_eq!(store.spent_today("nobody").await.unwrap(), 0.0);
    store.close().await;
}

/// Payload retention: a body is erasable once it was stored before the cutoff and no event
/// after the cutoff references it, under any key (a redacted copy's `*_stored_ref` included).
async fn payload_retention_erases_only_bodies_nothing_recent_references(ledger: TestLedger) {
    let store = ledger.open().await;
    let old = Payload::of(&json!({"old": true}));
    let redacted = Payload::of(&json!({"to": "[REDACTED:email]"}));
    let mut first =
        Draft::new(EventType::ToolCall, json!({"call_id": "c1", "input_ref": old.reference}));
    first.payloads.push(old.clone());
    let mut second = Draft::new(
        EventType::ToolCall,
        json!({"call_id": "c2", "input_ref": "sha256:original", "input_stored": "redacted",
               "input_stored_ref": redacted.reference}),
    );
    second.payloads.push(redacted.clone());
    store.append(DEFAULT_CHAIN, &[first]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let between = mcp_ledger::record::format_timestamp(time::OffsetDateTime::now_utc());
    tokio::time::sleep(Duration::from_millis(20)).await;
    store.append(DEFAULT_CHAIN, &[second]).await.unwrap();

    // Nothing was stored before a cutoff in the past.
    assert!(store.erasable_payloads("2000-01-01T00:00:00.000000Z").await.unwrap().is_empty());
    // Only the first call's body was stored before `between`, and nothing later references it.
    assert_eq!(
        store.erasable_payloads(&between).await.unwrap(),
        std::slice::from_ref(&old.reference)
    );
    let future = mcp_ledger::record::format_timestamp(
        time::OffsetDateTime::now_utc() + time::Duration::days(1),
    );
    let mut erasable = store.erasable_payloads(&future).await.unwrap();
    erasable.sort();
    let mut expected = vec![old.reference.clone(), redacted.reference.clone()];
    expected.sort();
    assert_eq!(erasable, expected, "nothing after a cutoff in the future references them");

    let erased = store.erase_payloads(std::slice::from_ref(&old.reference), true).await.unwrap();
    assert_eq!(erased, 1);
    assert!(store.payload(&old.reference).await.unwrap().is_none());
    assert!(store.payload(&redacted.reference).await.unwrap().is_some());
    let events = all_events(&store).await;
    assert!(verify_all(&events).intact(), "bodies are not hashed into the chain");
    store.close().await;
}

/// Reading the whole chain is not an append: it may take longer than the lock timeout that
/// bounds every statement of the proxy's path (a 500,000-event `verify` streams for seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_streams_the_whole_chain_past_the_statement_timeout() {
    let Some(ledger) = TestLedger::postgres().await else { return };
    let writer = ledger.open().await;
    // Enough bytes (16 MiB) that the server cannot finish sending before the reader pauses.
    let filler = "x".repeat(8 * 1024);
    for batch in 0..4 {
        let drafts: Vec<Draft> = (0..500)
            .map(|i| {
                let data = json!({"call_id": format!("c{batch}-{i}"), "filler": filler});
                Draft::new(EventType::Request, data)
            })
            .collect();
        writer.append(DEFAULT_CHAIN, &drafts).await.unwrap();
    }
    writer.close().await;

    let options = mcp_ledger::store::StoreOptions {
        lock_timeout: Duration::from_millis(100),
        ..Default::default()
    };
    let store = mcp_ledger::store::open(&ledger.url, &options).await.unwrap();
    let mut events = store.events();
    let mut seen = 0;
    while let Some(event) = futures::StreamExt::next(&mut events).await {
        event.expect("the stream outlives the statement timeout");
        seen += 1;
        if seen == 1 {
            // A reader slower than the timeout: the statement stays open meanwhile.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    assert_eq!(seen, 2000);
    drop(events);
    store.close().await;
}

/// Appends go through one connection the store keeps open. The server closing it while the
/// proxy is quiet (a restart, an idle-connection reaper) must not fail the next call: a held
/// connection idle for over a second is checked first and replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_appends_survive_the_server_closing_the_held_connection() {
    let Some(ledger) = TestLedger::postgres().await else { return };
    let store = ledger.open().await;
    store.append(DEFAULT_CHAIN, &[tool_call("c1", "lookup", json!({"id": 1}))]).await.unwrap();

    ledger
        .exec_as_owner(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    store.append(DEFAULT_CHAIN, &[tool_call("c2", "lookup", json!({"id": 2}))]).await.unwrap();
    let events = all_events(&store).await;
    assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    assert!(verify_all(&events).intact());
    store.close().await;
}
