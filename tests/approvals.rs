//! The hold queue against both stores: requests and decisions as ledger events, waiting for a
//! decision made in this process or another (the CLI), and everything that must not count.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestLedger, run_cli};
use mcp_ledger::approval::{self, DecideError, DecisionRecord, HoldRequest, Verdict};
use mcp_ledger::record::{Draft, EventType, Payload};
use mcp_ledger::store::{DEFAULT_CHAIN, Store};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

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
    approval_events_are_found_by_call_and_by_type,
    pending_lists_requests_until_they_are_decided,
    wait_wakes_within_a_second_of_a_decision,
    wait_wakes_when_the_cli_approves_from_another_process,
    a_denial_is_the_verdict,
    decisions_that_do_not_bind_do_not_wake_it,
    an_undecided_request_expires,
    cancelling_ends_the_wait,
    decide_refuses_what_it_must,
    the_cli_lists_shows_and_refuses,
    postgres_notifies_waiters_without_polling,
);

/// How soon after a decision the waiting proxy must wake.
const WAKE_WITHIN: Duration = Duration::from_secs(1);

/// A held call's request, and the draft that records it (with the arguments' body).
fn hold(
    call_id: &str,
    arguments: Value,
    approvers: &[&str],
    expires: Duration,
) -> (HoldRequest, Draft) {
    let payload = Payload::of(&arguments);
    let request = HoldRequest::new(
        call_id.into(),
        "agent-a".into(),
        "crm".into(),
        "refund".into(),
        payload.reference.clone(),
        "digest-1".into(),
        Some("big-refunds".into()),
        Some("refunds over 100 need a human".into()),
        approvers.iter().map(|a| a.to_string()).collect(),
        expires,
    );
    let mut draft = Draft::new(EventType::ApprovalRequested, request.to_data());
    draft.agent = Some("agent-a".into());
    draft.server = Some("crm".into());
    draft.session_id = Some("session-1".into());
    draft.payloads.push(payload);
    (request, draft)
}

async fn requested(
    store: &Arc<dyn Store>,
    call_id: &str,
    approvers: &[&str],
    expires: Duration,
) -> HoldRequest {
    let (request, draft) =
        hold(call_id, json!({"amount": 250, "customer": "c-17"}), approvers, expires);
    store.append(DEFAULT_CHAIN, &[draft]).await.unwrap();
    request
}

fn approve(operator: &str) -> Verdict {
    Verdict::Approved { operator: operator.into(), reason: None }
}

/// Starts `wait` in a task; the handle yields its verdict and when it returned.
fn waiting(
    store: &Arc<dyn Store>,
    request: &HoldRequest,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<(Verdict, Instant)> {
    let (store, request) = (store.clone(), request.clone());
    tokio::spawn(async move {
        let verdict = approval::wait(store.as_ref(), &request, cancel).await.unwrap();
        (verdict, Instant::now())
    })
}

async fn append_decision(store: &Arc<dyn Store>, record: &DecisionRecord) {
    let draft = Draft::new(EventType::ApprovalDecision, record.to_data());
    store.append(DEFAULT_CHAIN, &[draft]).await.unwrap();
}

async fn approval_events_are_found_by_call_and_by_type(ledger: TestLedger) {
    let store = ledger.open().await;
    let first = requested(&store, "call-1", &[], Duration::from_secs(60)).await;
    let second = requested(&store, "call-2", &[], Duration::from_secs(60)).await;
    let mut unrelated =
        Draft::new(EventType::ToolCall, json!({"call_id": "call-1", "tool": "refund"}));
    unrelated.agent = Some("agent-a".into());
    store.append(DEFAULT_CHAIN, &[unrelated]).await.unwrap();
    approval::decide(store.as_ref(), &first.approval_id, approve("alice")).await.unwrap();

    let for_call: Vec<String> =
        store.events_for_call("call-1").await.unwrap().into_iter().map(|e| e.event_type).collect();
    assert_eq!(for_call, ["approval_requested", "tool_call", "approval_decision"]);
    let requests = store.events_of_type("approval_requested").await.unwrap();
    let ids: Vec<_> = requests.iter().filter_map(HoldRequest::from_event).collect();
    assert_eq!(ids, [first.clone(), second]);
    assert!(store.events_for_call("call-unknown").await.unwrap().is_empty());

    // The decision sits next to the request: same chain, session, agent and server.
    let decision = store.events_of_type("approval_decision").await.unwrap().remove(0);
    assert_eq!(decision.session_id.as_deref(), Some("session-1"));
    assert_eq!(decision.agent.as_deref(), Some("agent-a"));
    assert_eq!(decision.server.as_deref(), Some("crm"));
    let record = DecisionRecord::from_event(&decision).unwrap();
    assert_eq!(record.authorized_by().as_deref(), Some("approval:operator/alice"));
}

async fn pending_lists_requests_until_they_are_decided(ledger: TestLedger) {
    let store = ledger.open().await;
    let first = requested(&store, "call-1", &[], Duration::from_secs(60)).await;
    let second = requested(&store, "call-2", &[], Duration::from_secs(60)).await;
    let _expired = requested(&store, "call-3", &[], Duration::ZERO).await;
    assert_eq!(approval::pending(store.as_ref()).await.unwrap(), [first.clone(), second.clone()]);

    let record =
        approval::decide(store.as_ref(), &first.approval_id, approve("alice")).await.unwrap();
    assert_eq!(record.decided_by, "operator/alice");
    assert_eq!(approval::pending(store.as_ref()).await.unwrap(), std::slice::from_ref(&second));

    // A call that ended without a decision (the agent cancelled it) is no longer pending.
    let result =
        Draft::new(EventType::ToolResult, json!({"call_id": "call-2", "outcome": "cancelled"}));
    store.append(DEFAULT_CHAIN, &[result]).await.unwrap();
    assert!(approval::pending(store.as_ref()).await.unwrap().is_empty());
    let err =
        approval::decide(store.as_ref(), &second.approval_id, approve("alice")).await.unwrap_err();
    assert!(
        matches!(err, DecideError::Ended { ref outcome, .. } if outcome == "cancelled"),
        "{err}"
    );
}

async fn wait_wakes_within_a_second_of_a_decision(ledger: TestLedger) {
    let store = ledger.open().await;
    let request = requested(&store, "call-1", &["alice"], Duration::from_secs(60)).await;
    let waiter = waiting(&store, &request, CancellationToken::new());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "wait returned before anyone decided");

    let reason = Some("customer verified".to_owned());
    let verdict = Verdict::Approved { operator: "alice".into(), reason: reason.clone() };
    approval::decide(store.as_ref(), &request.approval_id, verdict.clone()).await.unwrap();
    let decided = Instant::now();
    let (got, woke) = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
    assert_eq!(got, verdict);
    assert!(woke - decided < WAKE_WITHIN, "woke {:?} after the decision", woke - decided);
}

async fn wait_wakes_when_the_cli_approves_from_another_process(ledger: TestLedger) {
    let store = ledger.open().await;
    let request = requested(&store, "call-1", &[], Duration::from_secs(60)).await;
    let waiter = waiting(&store, &request, CancellationToken::new());
    let (url, id) = (ledger.url_string(), request.approval_id.clone());
    let (code, stdout, stderr) = tokio::task::spawn_blocking(move || {
        run_cli(&[
            "approvals",
            "approve",
            &id,
            "--ledger",
            &url,
            "--operator",
            "carol",
            "--reason",
            "ok",
        ])
    })
    .await
    .unwrap();
    let decided = Instant::now();
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    assert!(stdout.contains("approved") && stdout.contains("operator/carol"), "{stdout}");
    let (got, woke) = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
    assert_eq!(got, Verdict::Approved { operator: "carol".into(), reason: Some("ok".into()) });
    assert!(woke.saturating_duration_since(decided) < WAKE_WITHIN);
}

async fn a_denial_is_the_verdict(ledger: TestLedger) {
    let store = ledger.open().await;
    let request = requested(&store, "call-1", &[], Duration::from_secs(60)).await;
    let waiter = waiting(&store, &request, CancellationToken::new());
    let verdict = Verdict::Denied { operator: "bob".into(), reason: "not this customer".into() };
    let record =
        approval::decide(store.as_ref(), &request.approval_id, verdict.clone()).await.unwrap();
    assert_eq!(record.authorized_by(), None);
    let (got, _) = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
    assert_eq!(got, verdict);
}

async fn decisions_that_do_not_bind_do_not_wake_it(ledger: TestLedger) {
    let store = ledger.open().await;
    let expires = Duration::from_millis(1500);
    let request = requested(&store, "call-1", &["alice"], expires).await;
    let other = requested(&store, "call-2", &["alice"], Duration::from_secs(60)).await;
    let started = Instant::now();
    let waiter = waiting(&store, &request, CancellationToken::new());

    // Another call approved, through the queue.
    approval::decide(store.as_ref(), &other.approval_id, approve("alice")).await.unwrap();
    // The other call's approval copied onto this call: its arguments differ.
    let mut replayed = DecisionRecord::for_request(&other, approve("alice"));
    replayed.approval_id.clone_from(&request.approval_id);
    replayed.call_id.clone_from(&request.call_id);
    replayed.arguments_ref = Payload::of(&json!({"amount": 99_999})).reference;
    append_decision(&store, &replayed).await;
    // This call, under another policy, and by someone who is not an approver.
    let mut other_policy = DecisionRecord::for_request(&request, approve("alice"));
    other_policy.policy_digest = "digest-2".into();
    append_decision(&store, &other_policy).await;
    append_decision(&store, &DecisionRecord::for_request(&request, approve("mallory"))).await;

    let (got, woke) = tokio::time::timeout(Duration::from_secs(10), waiter).await.unwrap().unwrap();
    assert_eq!(got, Verdict::Expired);
    assert!(woke - started >= expires - Duration::from_millis(100), "{:?}", woke - started);
    // Nothing that was appended made it decided, so an approval now is too late.
    let err =
        approval::decide(store.as_ref(), &request.approval_id, approve("alice")).await.unwrap_err();
    assert!(matches!(err, DecideError::Expired { recorded: false, .. }), "{err}");
}

async fn an_undecided_request_expires(ledger: TestLedger) {
    let store = ledger.open().await;
    let expires = Duration::from_millis(700);
    let request = requested(&store, "call-1", &[], expires).await;
    let started = Instant::now();
    let waiter = waiting(&store, &request, CancellationToken::new());
    let (got, woke) = tokio::time::timeout(Duration::from_secs(10), waiter).await.unwrap().unwrap();
    assert_eq!(got, Verdict::Expired);
    let waited = woke - started;
    assert!(
        waited >= expires - Duration::from_millis(100) && waited < expires + WAKE_WITHIN,
        "{waited:?}"
    );
    assert!(approval::pending(store.as_ref()).await.unwrap().is_empty());
    // The proxy records the expiry; later decisions are refused as already decided.
    append_decision(&store, &DecisionRecord::for_request(&request, Verdict::Expired)).await;
    let err =
        approval::decide(store.as_ref(), &request.approval_id, approve("alice")).await.unwrap_err();
    assert!(matches!(err, DecideError::AlreadyDecided { verdict: "expired", .. }), "{err}");
}

async fn cancelling_ends_the_wait(ledger: TestLedger) {
    let store = ledger.open().await;
    let request = requested(&store, "call-1", &[], Duration::from_secs(60)).await;
    let cancel = CancellationToken::new();
    let waiter = waiting(&store, &request, cancel.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cancelled = Instant::now();
    cancel.cancel();
    let (got, woke) = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
    assert_eq!(got, Verdict::Cancelled);
    assert!(woke - cancelled < Duration::from_millis(200));
}

async fn decide_refuses_what_it_must(ledger: TestLedger) {
    let store = ledger.open().await;
    let request = requested(&store, "call-1", &["alice", "bob"], Duration::from_secs(60)).await;
    let id = request.approval_id.as_str();
    let decide = |id: String, verdict: Verdict| {
        let store = store.clone();
        async move { approval::decide(store.as_ref(), &id, verdict).await.unwrap_err() }
    };

    let err = decide("no-such-id".into(), approve("alice")).await;
    assert!(
        matches!(err, DecideError::Unknown(_)) && err.to_string().contains("no-such-id"),
        "{err}"
    );
    let err = decide(id.into(), approve("mallory")).await;
    assert!(matches!(err, DecideError::NotAnApprover { .. }), "{err}");
    assert!(err.to_string().contains("mallory") && err.to_string().contains("alice, bob"), "{err}");
    let err = decide(id.into(), approve("")).await;
    assert!(matches!(err, DecideError::InvalidOperator(_)), "{err}");
    let err =
        decide(id.into(), Verdict::Denied { operator: "bob".into(), reason: " ".into() }).await;
    assert!(matches!(err, DecideError::MissingReason), "{err}");
    let err = decide(id.into(), Verdict::Expired).await;
    assert!(matches!(err, DecideError::NotAnOperatorVerdict("expired")), "{err}");
    // None of that was recorded.
    assert!(store.events_of_type("approval_decision").await.unwrap().is_empty());

    approval::decide(store.as_ref(), id, approve("bob")).await.unwrap();
    let err =
        decide(id.into(), Verdict::Denied { operator: "alice".into(), reason: "no".into() }).await;
    assert!(matches!(err, DecideError::AlreadyDecided { verdict: "approved", .. }), "{err}");
    assert!(err.to_string().contains("operator/bob"), "{err}");
    assert_eq!(store.events_of_type("approval_decision").await.unwrap().len(), 1);

    let expired = requested(&store, "call-2", &[], Duration::ZERO).await;
    let err = decide(expired.approval_id.clone(), approve("alice")).await;
    assert!(matches!(err, DecideError::Expired { .. }), "{err}");
    assert!(err.is_refusal());
}

async fn the_cli_lists_shows_and_refuses(ledger: TestLedger) {
    let store = ledger.open().await;
    let first = requested(&store, "call-1", &["alice"], Duration::from_secs(600)).await;
    let second = requested(&store, "call-2", &[], Duration::from_secs(600)).await;
    let url = ledger.url_string();
    let cli = |args: Vec<String>| {
        tokio::task::spawn_blocking(move || {
            run_cli(&args.iter().map(String::as_str).collect::<Vec<_>>())
        })
    };
    let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    let (code, stdout, stderr) =
        cli(args(&["approvals", "list", "--json", "--ledger", &url])).await.unwrap();
    assert_eq!(code, 0, "{stderr}");
    let rows: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert_eq!(rows[0]["approval_id"], first.approval_id.as_str());
    assert_eq!(rows[0]["status"], "pending");
    assert_eq!(rows[0]["tool"], "refund");
    assert_eq!(rows[0]["approvers"], json!(["alice"]));
    assert_eq!(rows[0]["arguments_ref"], first.arguments_ref.as_str());
    assert!(rows[0]["requested_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(rows[1]["approval_id"], second.approval_id.as_str());

    let (code, stdout, _) = cli(args(&["approvals", "list", "--ledger", &url])).await.unwrap();
    assert_eq!(code, 0);
    assert!(stdout.contains(&first.approval_id) && stdout.contains("big-refunds"), "{stdout}");

    let (code, stdout, stderr) =
        cli(args(&["approvals", "show", &first.approval_id, "--json", "--ledger", &url]))
            .await
            .unwrap();
    assert_eq!(code, 0, "{stderr}");
    let shown: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(shown["arguments"], json!({"amount": 250, "customer": "c-17"}));
    assert_eq!(shown["rule"], "big-refunds");
    assert_eq!(shown["reason"], "refunds over 100 need a human");
    assert_eq!(shown["expires_at"], first.to_data()["expires_at"]);
    let (code, stdout, _) =
        cli(args(&["approvals", "show", &first.approval_id, "--ledger", &url])).await.unwrap();
    assert_eq!(code, 0);
    assert!(stdout.contains("\"customer\": \"c-17\"") && stdout.contains("pending"), "{stdout}");

    // Refusals are usage errors (64), and name what is wrong.
    let (code, _, stderr) = cli(args(&[
        "approvals",
        "approve",
        &first.approval_id,
        "--operator",
        "mallory",
        "--ledger",
        &url,
    ]))
    .await
    .unwrap();
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("mallory"), "{stderr}");
    let (code, _, stderr) =
        cli(args(&["approvals", "show", "no-such-id", "--ledger", &url])).await.unwrap();
    assert_eq!(code, 64, "{stderr}");
    let (code, stdout, stderr) = cli(args(&[
        "approvals",
        "deny",
        &first.approval_id,
        "--reason",
        "wrong customer",
        "--operator",
        "alice",
        "--ledger",
        &url,
    ]))
    .await
    .unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("denied"), "{stdout}");
    let (code, _, stderr) = cli(args(&[
        "approvals",
        "approve",
        &first.approval_id,
        "--operator",
        "alice",
        "--ledger",
        &url,
    ]))
    .await
    .unwrap();
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("already decided"), "{stderr}");

    let (code, stdout, _) =
        cli(args(&["approvals", "list", "--json", "--ledger", &url])).await.unwrap();
    assert_eq!(code, 0);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let (_, stdout, _) =
        cli(args(&["approvals", "show", &first.approval_id, "--json", "--ledger", &url]))
            .await
            .unwrap();
    let shown: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(shown["status"], "denied");
    assert_eq!(shown["decision"]["decided_by"], "operator/alice");
    assert_eq!(shown["decision"]["reason"], "wrong customer");
}

/// On Postgres a waiter wakes on the commit's notification, well before its 1 s safety poll.
async fn postgres_notifies_waiters_without_polling(ledger: TestLedger) {
    let store = ledger.open().await;
    let mut feed = store.watch_approvals().await.unwrap();
    let request = requested(&store, "call-1", &[], Duration::from_secs(60)).await;
    // The request's own notification may be queued: drain it.
    feed.changed(Duration::from_millis(50)).await.unwrap();
    feed.changed(Duration::from_millis(50)).await.unwrap();
    let writer = store.clone();
    let id = request.approval_id.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        approval::decide(writer.as_ref(), &id, approve("alice")).await.unwrap();
    });
    let started = Instant::now();
    feed.changed(Duration::from_secs(30)).await.unwrap();
    let waited = started.elapsed();
    let bound =
        if ledger.is_postgres() { Duration::from_millis(700) } else { Duration::from_millis(400) };
    assert!(waited < bound, "waited {waited:?}");
}

/// The proxy and operators may run as the insert-only writer role: the notification trigger and
/// LISTEN need nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_writer_role_runs_the_whole_queue() {
    let Some(ledger) = TestLedger::postgres().await else {
        return;
    };
    ledger.open().await.close().await; // migrates as the owner, creating the roles
    let url = ledger.writer_role_url("mcp_ledger_test_app").await;
    let store = common::open_url(&url).await;
    let request = requested(&store, "call-1", &[], Duration::from_secs(60)).await;
    let waiter = waiting(&store, &request, CancellationToken::new());
    tokio::time::sleep(Duration::from_millis(200)).await;
    approval::decide(store.as_ref(), &request.approval_id, approve("alice")).await.unwrap();
    let decided = Instant::now();
    let (got, woke) = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap();
    assert_eq!(got, approve("alice"));
    assert!(woke - decided < Duration::from_millis(700), "{:?}", woke - decided);
}

/// An operator's decision whose commit answer was lost on the way back from Postgres stands:
/// `decide` settles the failed append, finds the decision in the ledger and reports it made,
/// instead of an error the operator would retry into "already decided".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_whose_commit_answer_was_lost_stands() {
    let Some(ledger) = TestLedger::postgres().await else { return };
    ledger.open().await.close().await;
    let (chaos, url) = common::chaos::ChaosProxy::in_front_of(&ledger.url_string()).await;
    let store = common::open_url(&url).await;
    let request = requested(&store, "call-1", &[], Duration::from_secs(60)).await;

    chaos.lose_answer_to("marker-5d0b");
    let verdict =
        Verdict::Approved { operator: "alice".into(), reason: Some("marker-5d0b".into()) };
    let record = approval::decide(store.as_ref(), &request.approval_id, verdict.clone()).await;
    assert!(chaos.has_sprung(), "the decision never reached the database");
    assert_eq!(record.expect("the decision was recorded").verdict, verdict);
    let entry = approval::find(store.as_ref(), &request.approval_id).await.unwrap().unwrap();
    assert!(matches!(entry.state, approval::State::Decided(_)), "{:?}", entry.state);
    store.close().await;
}
