use std::time::Duration;

use serde_json::json;
use time::macros::datetime;

use super::*;
use crate::record::{Draft, GENESIS_PREV_HASH};

fn request(approvers: &[&str]) -> HoldRequest {
    let mut req = HoldRequest::new(
        "call-1".into(),
        "agent-a".into(),
        "crm".into(),
        "refund".into(),
        "sha256:aaaa".into(),
        "digest-1".into(),
        Some("refunds-over-100".into()),
        Some("large refund".into()),
        approvers.iter().map(|a| a.to_string()).collect(),
        Duration::from_secs(600),
    );
    req.expires_at = datetime!(2026-05-01 12:10:00.123456 UTC);
    req
}

fn approved_by(req: &HoldRequest, operator: &str) -> DecisionRecord {
    DecisionRecord::for_request(req, Verdict::Approved { operator: operator.into(), reason: None })
}

/// Well before the request in [`request`] expires.
const IN_TIME: time::OffsetDateTime = datetime!(2026-05-01 12:05:00 UTC);

fn sealed(event_type: EventType, data: serde_json::Value) -> Event {
    let mut draft = Draft::new(event_type, data);
    draft.agent = Some("column-agent".into());
    draft.server = Some("column-server".into());
    draft.seal("default", 1, GENESIS_PREV_HASH, IN_TIME)
}

#[test]
fn a_matching_decision_binds() {
    let req = request(&["alice"]);
    assert_eq!(binds(&req, &approved_by(&req, "alice"), IN_TIME), Ok(()));
    let denied = DecisionRecord::for_request(
        &req,
        Verdict::Denied { operator: "alice".into(), reason: "no".into() },
    );
    assert_eq!(binds(&req, &denied, IN_TIME), Ok(()));
}

#[test]
fn any_operator_may_decide_when_there_are_no_approvers() {
    let req = request(&[]);
    assert_eq!(binds(&req, &approved_by(&req, "whoever"), IN_TIME), Ok(()));
}

#[test]
fn approvers_may_be_written_with_the_operator_prefix() {
    let req = request(&["operator/alice"]);
    assert_eq!(binds(&req, &approved_by(&req, "alice"), IN_TIME), Ok(()));
}

#[test]
fn a_decision_for_another_call_does_not_bind() {
    let req = request(&[]);
    let mut other = req.clone();
    other.call_id = "call-2".into();
    let err = binds(&req, &approved_by(&other, "alice"), IN_TIME).unwrap_err();
    assert!(matches!(err, Mismatch::CallId { .. }), "{err:?}");
    assert!(err.to_string().contains("call-2") && err.to_string().contains("call-1"), "{err}");
}

#[test]
fn a_decision_for_another_approval_does_not_bind() {
    let req = request(&[]);
    let mut other = req.clone();
    other.approval_id = "another".into();
    let err = binds(&req, &approved_by(&other, "alice"), IN_TIME).unwrap_err();
    assert!(matches!(err, Mismatch::ApprovalId { .. }), "{err:?}");
    assert!(err.to_string().contains("another"), "{err}");
}

#[test]
fn an_approval_of_changed_arguments_does_not_bind() {
    let req = request(&[]);
    let mut changed = approved_by(&req, "alice");
    changed.arguments_ref = "sha256:bbbb".into();
    let err = binds(&req, &changed, IN_TIME).unwrap_err();
    assert_eq!(
        err,
        Mismatch::Arguments { expected: "sha256:aaaa".into(), found: "sha256:bbbb".into() }
    );
    assert!(err.to_string().contains("arguments sha256:bbbb"), "{err}");
}

#[test]
fn a_decision_under_another_policy_does_not_bind() {
    let req = request(&[]);
    let mut other = approved_by(&req, "alice");
    other.policy_digest = "digest-2".into();
    let err = binds(&req, &other, IN_TIME).unwrap_err();
    assert!(matches!(err, Mismatch::PolicyDigest { .. }), "{err:?}");
    assert!(err.to_string().contains("digest-2"), "{err}");
}

#[test]
fn an_operator_outside_the_approvers_does_not_bind() {
    let req = request(&["alice", "bob"]);
    let err = binds(&req, &approved_by(&req, "mallory"), IN_TIME).unwrap_err();
    assert!(matches!(err, Mismatch::NotAnApprover { .. }), "{err:?}");
    assert_eq!(err.to_string(), "operator `mallory` is not among the approvers (alice, bob)");
}

#[test]
fn a_decision_after_expiry_does_not_bind() {
    let req = request(&[]);
    let decision = approved_by(&req, "alice");
    let err = binds(&req, &decision, req.expires_at).unwrap_err();
    assert!(matches!(err, Mismatch::AfterExpiry { .. }), "{err:?}");
    assert!(err.to_string().contains("2026-05-01T12:10:00.123456Z"), "{err}");
    let just_before = req.expires_at - time::Duration::microseconds(1);
    assert_eq!(binds(&req, &decision, just_before), Ok(()));
}

#[test]
fn decided_by_must_agree_with_the_verdict() {
    let req = request(&["alice"]);
    let mut forged = approved_by(&req, "alice");
    forged.decided_by = "operator/mallory".into();
    assert!(matches!(binds(&req, &forged, IN_TIME), Err(Mismatch::DecidedBy { .. })));
    let mut system = DecisionRecord::for_request(&req, Verdict::Expired);
    system.decided_by = "operator/alice".into();
    assert!(matches!(binds(&req, &system, IN_TIME), Err(Mismatch::DecidedBy { .. })));
}

#[test]
fn the_systems_verdicts_bind_whenever_they_are_recorded() {
    let req = request(&["alice"]);
    let after = req.expires_at + time::Duration::seconds(1);
    for verdict in [Verdict::Expired, Verdict::Cancelled] {
        let record = DecisionRecord::for_request(&req, verdict);
        assert_eq!(record.decided_by, "system");
        assert_eq!(binds(&req, &record, after), Ok(()));
        let mut changed = record.clone();
        changed.arguments_ref = "sha256:bbbb".into();
        assert!(binds(&req, &changed, after).is_err());
    }
}

#[test]
fn new_requests_get_a_v7_id_and_an_expiry_in_whole_microseconds() {
    let before = time::OffsetDateTime::now_utc();
    let req = HoldRequest::new(
        "c".into(),
        "a".into(),
        "s".into(),
        "t".into(),
        "sha256:x".into(),
        "d".into(),
        None,
        None,
        vec![],
        Duration::from_secs(60),
    );
    let id = uuid::Uuid::parse_str(&req.approval_id).unwrap();
    assert_eq!(id.get_version_num(), 7);
    assert_eq!(req.expires_at.nanosecond() % 1_000, 0);
    let ahead = req.expires_at - before;
    assert!(ahead > time::Duration::seconds(59) && ahead <= time::Duration::seconds(61), "{ahead}");
    // An absurd expiry saturates instead of overflowing.
    let far = HoldRequest::new(
        "c".into(),
        "a".into(),
        "s".into(),
        "t".into(),
        "sha256:x".into(),
        "d".into(),
        None,
        None,
        vec![],
        Duration::MAX,
    );
    assert!(far.expires_at > req.expires_at);
}

#[test]
fn requests_round_trip_through_their_event() {
    let req = request(&["alice", "bob"]);
    let data = req.to_data();
    assert_eq!(
        data,
        json!({
            "approval_id": req.approval_id, "call_id": "call-1", "agent": "agent-a",
            "server": "crm", "tool": "refund", "arguments_ref": "sha256:aaaa",
            "policy_digest": "digest-1", "rule": "refunds-over-100", "reason": "large refund",
            "approvers": ["alice", "bob"], "expires_at": "2026-05-01T12:10:00.123456Z",
        })
    );
    let event = sealed(EventType::ApprovalRequested, data);
    assert_eq!(HoldRequest::from_event(&event), Some(req.clone()));

    let mut bare = request(&[]);
    bare.rule = None;
    bare.reason = None;
    let event = sealed(EventType::ApprovalRequested, bare.to_data());
    assert_eq!(HoldRequest::from_event(&event), Some(bare));
}

#[test]
fn requests_without_agent_in_data_fall_back_to_the_columns() {
    let req = request(&[]);
    let mut data = req.to_data();
    data.as_object_mut().unwrap().remove("agent");
    data.as_object_mut().unwrap().remove("server");
    let read = HoldRequest::from_event(&sealed(EventType::ApprovalRequested, data)).unwrap();
    assert_eq!((read.agent.as_str(), read.server.as_str()), ("column-agent", "column-server"));
}

#[test]
fn malformed_requests_are_not_read() {
    let req = request(&[]);
    for (key, value) in [
        ("expires_at", json!("tomorrow")),
        ("approvers", json!("alice")),
        ("call_id", json!(null)),
        ("rule", json!(7)),
    ] {
        let mut data = req.to_data();
        data[key] = value;
        assert_eq!(HoldRequest::from_event(&sealed(EventType::ApprovalRequested, data)), None);
    }
    // Another event type is never a request.
    assert_eq!(HoldRequest::from_event(&sealed(EventType::ToolCall, req.to_data())), None);
}

#[test]
fn decisions_round_trip_through_their_event() {
    let req = request(&[]);
    for verdict in [
        Verdict::Approved { operator: "alice".into(), reason: Some("checked".into()) },
        Verdict::Approved { operator: "alice".into(), reason: None },
        Verdict::Denied { operator: "bob".into(), reason: "too much".into() },
        Verdict::Expired,
        Verdict::Cancelled,
    ] {
        let record = DecisionRecord::for_request(&req, verdict);
        let event = sealed(EventType::ApprovalDecision, record.to_data());
        assert_eq!(DecisionRecord::from_event(&event), Some(record));
    }
}

#[test]
fn an_approval_records_who_authorized_the_call() {
    let req = request(&[]);
    let record = DecisionRecord::for_request(
        &req,
        Verdict::Approved { operator: "alice".into(), reason: Some("ok".into()) },
    );
    assert_eq!(record.authorized_by().as_deref(), Some("approval:operator/alice"));
    assert_eq!(
        record.to_data(),
        json!({
            "approval_id": req.approval_id, "call_id": "call-1", "arguments_ref": "sha256:aaaa",
            "policy_digest": "digest-1", "verdict": "approved", "decided_by": "operator/alice",
            "reason": "ok", "authorized_by": "approval:operator/alice",
        })
    );
    let denied = DecisionRecord::for_request(
        &req,
        Verdict::Denied { operator: "alice".into(), reason: "no".into() },
    );
    assert_eq!(denied.authorized_by(), None);
    assert_eq!(denied.to_data()["authorized_by"], json!(null));
    assert_eq!(DecisionRecord::for_request(&req, Verdict::Expired).authorized_by(), None);
}

#[test]
fn malformed_decisions_are_not_read() {
    let req = request(&[]);
    let approved = approved_by(&req, "alice").to_data();
    let denied = DecisionRecord::for_request(
        &req,
        Verdict::Denied { operator: "alice".into(), reason: "no".into() },
    )
    .to_data();
    let cases = [
        (approved.clone(), "verdict", json!("maybe")),
        (approved.clone(), "decided_by", json!("alice")),
        (approved.clone(), "decided_by", json!("operator/")),
        (approved.clone(), "decided_by", json!("system")),
        (approved.clone(), "arguments_ref", json!(null)),
        (denied.clone(), "reason", json!(null)),
        (
            DecisionRecord::for_request(&req, Verdict::Expired).to_data(),
            "decided_by",
            json!("operator/alice"),
        ),
    ];
    for (mut data, key, value) in cases {
        data[key] = value;
        let event = sealed(EventType::ApprovalDecision, data.clone());
        assert_eq!(DecisionRecord::from_event(&event), None, "{data}");
    }
    assert_eq!(DecisionRecord::from_event(&sealed(EventType::ToolResult, approved)), None);
}

fn at_seq(event_type: EventType, data: serde_json::Value, seq: i64) -> Event {
    let draft = Draft::new(event_type, data);
    draft.seal("default", seq, GENESIS_PREV_HASH, IN_TIME)
}

#[test]
fn the_first_binding_decision_counts_and_the_others_are_reported() {
    use super::queue::{State, state_of};
    let req = request(&["alice", "bob"]);
    let by_mallory = approved_by(&req, "mallory");
    let denied = DecisionRecord::for_request(
        &req,
        Verdict::Denied { operator: "bob".into(), reason: "no".into() },
    );
    let events = [
        at_seq(EventType::ApprovalRequested, req.to_data(), 1),
        at_seq(EventType::ApprovalDecision, by_mallory.to_data(), 2),
        at_seq(EventType::ApprovalDecision, json!({"verdict": "approved"}), 3),
        at_seq(EventType::ApprovalDecision, denied.to_data(), 4),
        at_seq(EventType::ApprovalDecision, approved_by(&req, "alice").to_data(), 5),
    ];
    let mut ignored = Vec::new();
    let state = state_of(&req, &events, IN_TIME, |event, why| {
        ignored.push((event.seq, why.to_string()));
    });
    let State::Decided(decided) = state else { panic!("{state:?}") };
    assert_eq!(decided.record, denied);
    assert_eq!(decided.event_id, events[3].event_id);
    assert_eq!(ignored.len(), 2, "{ignored:?}");
    assert!(ignored[0].1.contains("mallory"), "{ignored:?}");
    assert_eq!(ignored[1], (3, "it is malformed".to_owned()));
}

#[test]
fn nothing_decided_after_the_call_ended_counts() {
    use super::queue::{State, state_of};
    let req = request(&[]);
    let events = [
        at_seq(EventType::ToolResult, json!({"call_id": "call-1", "outcome": "cancelled"}), 1),
        at_seq(EventType::ApprovalDecision, approved_by(&req, "alice").to_data(), 2),
    ];
    let state = state_of(&req, &events, IN_TIME, |_, _| {});
    assert_eq!(state, State::Ended { outcome: "cancelled".into() });
    assert_eq!(state.label(), "cancelled");
    assert_eq!(state_of(&req, &[], IN_TIME, |_, _| {}), State::Pending);
    assert_eq!(state_of(&req, &[], req.expires_at, |_, _| {}), State::Expired);
}
