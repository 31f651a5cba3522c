//! The message pump between an agent and an upstream server that both speak newline-delimited
//! JSON-RPC (the stdio framing).
//!
//! Each direction has a reader and a forwarder. The reader classifies every line at once and,
//! when the line must be recorded, starts the recording in its own task; the forwarder sends lines
//! on strictly in the order they arrived, each only once its recording has committed. So commits
//! of concurrent calls overlap (and batch in the writer) while the wire order is kept.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures::future::{BoxFuture, FutureExt, join_all};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tracing::{Instrument, Span};

use super::jsonrpc::{Envelope, Kind, batch_members, error_response, id_key};
use super::lines::LineSink;
use crate::intercept::{
    Admission, Completion, Delivery, Direction, HoldOutcome, OpenCall, PendingHold,
    PendingResultHold, SessionRecorder,
};
use crate::telemetry::{FailStage, HoldKind, UpstreamError, spans};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

/// JSON-RPC error code for "the proxy refused to pass this on" (implementation-defined range).
pub const LEDGER_UNAVAILABLE: i64 = -32000;

/// JSON-RPC error code for a call the upstream will never answer because it went away.
pub const UPSTREAM_GONE: i64 = -32001;

/// Steps waiting for a direction's forwarder.
const STEP_DEPTH: usize = 1024;

/// How a relay ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEnd {
    /// The agent closed its side; the upstream was shut down after it.
    AgentClosed,
    /// The upstream closed its side (exited or crashed) while the agent was connected.
    UpstreamClosed,
}

/// What becomes of one line (or batch member).
#[derive(Default)]
struct Outcome {
    /// Bytes to pass on to the other peer.
    forward: Option<Vec<u8>>,
    /// Bytes to answer the sender with instead (a refusal).
    answer: Option<Vec<u8>>,
}

impl Outcome {
    fn forward(bytes: Vec<u8>) -> Self {
        Outcome { forward: Some(bytes), answer: None }
    }
    fn answer(bytes: Vec<u8>) -> Self {
        Outcome { forward: None, answer: Some(bytes) }
    }
}

enum Step {
    Ready(Outcome),
    Recording(JoinHandle<Outcome>),
}

/// How a relay behaves beyond moving lines.
#[derive(Debug, Clone, Copy)]
pub struct RelayOptions {
    /// When the agent closes first, how long the upstream gets to finish what it is sending.
    pub grace: Duration,
    /// How long a recorded request may wait for its response before the relay answers it with
    /// an error and records that it went unanswered. `None` waits forever.
    pub call_timeout: Option<Duration>,
}

/// State shared by both directions of one session.
struct Shared {
    recorder: SessionRecorder,
    call_timeout: Option<Duration>,
    /// Where answers the relay makes itself go; weak, so that they never keep a peer's writer
    /// open after the relay ended.
    to_agent: mpsc::WeakSender<Vec<u8>>,
    to_upstream: mpsc::WeakSender<Vec<u8>>,
    /// Calls already answered by a timeout, whose late responses must not be passed on.
    timed_out: Mutex<std::collections::HashSet<(Direction, String)>>,
    /// Calls held for approval, by request id key: cancelling the token ends the wait.
    held: Mutex<HashMap<String, CancellationToken>>,
    /// Recorded requests from the agent, by id, waiting for the upstream's response.
    open_from_agent: Mutex<HashMap<String, OpenCall>>,
    /// Recorded requests from the upstream, by id, waiting for the agent's response.
    open_from_server: Mutex<HashMap<String, OpenCall>>,
    /// Handshake requests (method, params) by request id, until the upstream answers.
    handshakes: Mutex<HashMap<String, (String, Value)>>,
    /// The MCP revision the handshake settled on, for the request spans.
    protocol_version: OnceLock<String>,
    /// Told when a call is opened, so that [`expire_calls`] wakes from having nothing to wait
    /// for.
    call_opened: Notify,
}

impl Shared {
    fn open_calls(&self, sender: Direction) -> &Mutex<HashMap<String, OpenCall>> {
        match sender {
            Direction::FromAgent => &self.open_from_agent,
            Direction::FromServer => &self.open_from_server,
        }
    }

    /// Registers a forwarded call as waiting for its response; [`expire_calls`] times it out.
    fn open(&self, direction: Direction, id: &RawValue, mut call: OpenCall) {
        call.forwarded();
        self.open_calls(direction).lock().expect("lock").insert(id_key(id), call);
        if self.call_timeout.is_some() {
            self.call_opened.notify_one();
        }
    }

    /// When the longest-waiting open call was forwarded, if any call is open.
    fn first_forwarded(&self) -> Option<Instant> {
        [Direction::FromAgent, Direction::FromServer]
            .into_iter()
            .filter_map(|direction| {
                let open = self.open_calls(direction).lock().expect("lock");
                open.values().filter_map(OpenCall::forwarded_at).min()
            })
            .min()
    }

    /// Takes out of the open calls every one forwarded at or before `cutoff`, and marks each as
    /// timed out, so that a response arriving from now on is dropped rather than passed on.
    fn time_out_forwarded_by(&self, cutoff: Instant) -> Vec<(Direction, OpenCall)> {
        let mut due = Vec::new();
        for direction in [Direction::FromAgent, Direction::FromServer] {
            // Both under the open calls' lock (then `timed_out`'s, the order the response path
            // takes them in), so that no response finds its call neither open nor timed out.
            let mut open = self.open_calls(direction).lock().expect("lock");
            let mut timed_out = self.timed_out.lock().expect("lock");
            let keys: Vec<String> = open
                .iter()
                .filter(|(_, call)| call.forwarded_at().is_some_and(|at| at <= cutoff))
                .map(|(key, _)| key.clone())
                .collect();
            for key in keys {
                if let Some(call) = open.remove(&key) {
                    timed_out.insert((direction, key));
                    due.push((direction, call));
                }
            }
        }
        due
    }

    /// The peer that sent requests travelling in `direction`, for answering them.
    fn requester(&self, direction: Direction) -> Option<mpsc::Sender<Vec<u8>>> {
        match direction {
            Direction::FromAgent => self.to_agent.upgrade(),
            Direction::FromServer => self.to_upstream.upgrade(),
        }
    }
}

/// Relays between the agent (`agent_in`/`agent_out`) and the upstream (`up_in`/`up_out`)
/// until one side closes, recording through `recorder`. Records `session_end` before returning.
///
/// When the agent closes first, the upstream's input is closed and the upstream gets `grace` to
/// finish what it is still sending.
pub async fn relay<AR, UR>(
    recorder: SessionRecorder,
    agent_in: AR,
    agent_out: LineSink,
    up_in: UR,
    up_out: LineSink,
    grace: Duration,
) -> RelayEnd
where
    AR: AsyncBufRead + Unpin + Send + 'static,
    UR: AsyncBufRead + Unpin + Send + 'static,
{
    let options = RelayOptions { grace, call_timeout: None };
    relay_with(options, recorder, agent_in, agent_out, up_in, up_out).await
}

/// [`relay`] with every option.
pub async fn relay_with<AR, UR>(
    options: RelayOptions,
    recorder: SessionRecorder,
    agent_in: AR,
    agent_out: LineSink,
    up_in: UR,
    up_out: LineSink,
) -> RelayEnd
where
    AR: AsyncBufRead + Unpin + Send + 'static,
    UR: AsyncBufRead + Unpin + Send + 'static,
{
    let grace = options.grace;
    let (agent_queue, agent_writer) = agent_out.into_queue();
    let (upstream_queue, upstream_writer) = up_out.into_queue();
    // The agent's queue ends when the relay and its tasks let go of it; the upstream's is
    // closed when the agent leaves, which is how the upstream learns the session is over.
    let to_agent = agent_queue.lines;
    let to_upstream = upstream_queue.lines.clone();
    let shared = Arc::new(Shared {
        recorder,
        call_timeout: options.call_timeout,
        to_agent: to_agent.downgrade(),
        to_upstream: to_upstream.downgrade(),
        timed_out: Mutex::default(),
        held: Mutex::default(),
        open_from_agent: Mutex::default(),
        open_from_server: Mutex::default(),
        handshakes: Mutex::default(),
        protocol_version: OnceLock::new(),
        call_opened: Notify::new(),
    });
    let _open = shared.recorder.telemetry().opened();
    // Stopped when the relay ends (or is dropped); a call it is timing out finishes on its own.
    let _expiry = options
        .call_timeout
        .map(|limit| AbortOnDropHandle::new(tokio::spawn(expire_calls(shared.clone(), limit))));

    let mut from_agent = tokio::spawn(pump(
        Direction::FromAgent,
        shared.clone(),
        agent_in,
        to_upstream.clone(),
        to_agent.clone(),
    ));
    let mut from_upstream = tokio::spawn(pump(
        Direction::FromServer,
        shared.clone(),
        up_in,
        to_agent.clone(),
        to_upstream,
    ));

    let end = tokio::select! {
        _ = &mut from_agent => RelayEnd::AgentClosed,
        _ = &mut from_upstream => RelayEnd::UpstreamClosed,
    };
    match end {
        RelayEnd::AgentClosed => {
            // Closing its input is how a stdio server learns the session is over; everything the
            // agent sent has been passed on by now.
            upstream_queue.close();
            if tokio::time::timeout(grace, &mut from_upstream).await.is_err() {
                tracing::warn!(?grace, "upstream did not close after the agent left");
                from_upstream.abort();
            }
        }
        RelayEnd::UpstreamClosed => {
            from_agent.abort();
            match upstream_writer {
                Some(writer) => writer.abort(),
                None => upstream_queue.close(),
            }
        }
    }

    let (reason, error_type) = match end {
        RelayEnd::AgentClosed => ("the agent closed the session", "session_closed"),
        RelayEnd::UpstreamClosed => {
            shared.recorder.telemetry().upstream_error(UpstreamError::Closed);
            ("the upstream server closed the connection", "upstream_closed")
        }
    };
    let unanswered = settle_open_calls(&shared, reason, error_type).await;
    if end == RelayEnd::UpstreamClosed {
        // Answer the agent's calls that will never get a response, so that nothing hangs.
        for request_id in unanswered {
            if let Ok(id) = RawValue::from_string(request_id) {
                let answer = error_response(
                    &id,
                    UPSTREAM_GONE,
                    "the upstream MCP server closed the connection before answering",
                    "upstream_closed",
                );
                let _ = to_agent.send(answer).await;
            }
        }
    }
    if let Err(error) = shared.recorder.session_ended(reason).await {
        tracing::error!(%error, "could not record session_end");
    }
    drop(to_agent);
    if let Some(writer) = agent_writer {
        let _ = writer.await;
    }
    end
}

/// Records every call still waiting for a response as unanswered (`error_type` on its span),
/// and returns the request ids of those the agent made.
async fn settle_open_calls(shared: &Shared, reason: &str, error_type: &str) -> Vec<String> {
    let from_agent: Vec<_> = shared.open_from_agent.lock().expect("lock").drain().collect();
    let from_server: Vec<_> = shared.open_from_server.lock().expect("lock").drain().collect();
    for (_, call) in from_agent.iter().chain(&from_server) {
        spans::failed(call.span(), error_type);
        let finished = shared.recorder.finish(call, Completion::NoResponse { reason });
        if let Err(error) = finished.instrument(call.span().clone()).await {
            tracing::error!(%error, call_id = %call.call_id, "could not record an unanswered call");
        }
    }
    from_agent.into_iter().map(|(_, call)| call.request_id().to_owned()).collect()
}

/// Reads lines from `sender`, and passes each on (or answers it) in arrival order.
async fn pump<R: AsyncBufRead + Unpin + Send + 'static>(
    sender: Direction,
    shared: Arc<Shared>,
    mut input: R,
    onward: mpsc::Sender<Vec<u8>>,
    back: mpsc::Sender<Vec<u8>>,
) {
    let (steps, mut ordered) = mpsc::channel::<Step>(STEP_DEPTH);
    let forwarder = tokio::spawn(async move {
        while let Some(step) = ordered.recv().await {
            let outcome = match step {
                Step::Ready(outcome) => outcome,
                Step::Recording(task) => match task.await {
                    Ok(outcome) => outcome,
                    Err(error) => {
                        tracing::error!(%error, "a recording task failed; dropping its message");
                        Outcome::default()
                    }
                },
            };
            if let Some(bytes) = outcome.answer {
                let _ = back.send(bytes).await;
            }
            if let Some(bytes) = outcome.forward
                && onward.send(bytes).await.is_err()
            {
                break;
            }
        }
    });

    loop {
        let mut line = Vec::new();
        match input.read_until(b'\n', &mut line).await {
            Ok(0) => break,
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(%error, side = ?sender, "read failed; closing");
                break;
            }
        }
        let step = plan_line(sender, &shared, line);
        if steps.send(step).await.is_err() {
            break;
        }
    }
    drop(steps);
    let _ = forwarder.await;
}

fn plan_line(sender: Direction, shared: &Arc<Shared>, line: Vec<u8>) -> Step {
    if let Some(members) = batch_members(&line) {
        let plans: Vec<_> =
            members.iter().map(|m| plan_message(sender, shared, m.get().as_bytes())).collect();
        if plans.iter().all(|p| p.is_none()) {
            return Step::Ready(Outcome::forward(line));
        }
        let members: Vec<Vec<u8>> = members.iter().map(|m| m.get().as_bytes().to_vec()).collect();
        return Step::Recording(tokio::spawn(async move {
            let outcomes = join_all(plans.into_iter().zip(members).map(|(plan, raw)| match plan {
                Some(plan) => plan,
                None => async move { Outcome::forward(raw) }.boxed(),
            }))
            .await;
            join_batch(outcomes)
        }));
    }
    match plan_message(sender, shared, &line) {
        None => Step::Ready(Outcome::forward(line)),
        Some(plan) => Step::Recording(tokio::spawn(plan)),
    }
}

/// Reassembles batch members into at most one batch each way.
fn join_batch(outcomes: Vec<Outcome>) -> Outcome {
    fn join(parts: Vec<Vec<u8>>) -> Option<Vec<u8>> {
        if parts.is_empty() {
            return None;
        }
        let mut out = b"[".to_vec();
        for (i, part) in parts.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend(part.trim_ascii());
        }
        out.extend(b"]\n");
        Some(out)
    }
    let (forward, answer): (Vec<_>, Vec<_>) =
        outcomes.into_iter().map(|o| (o.forward, o.answer)).unzip();
    Outcome {
        forward: join(forward.into_iter().flatten().collect()),
        answer: join(answer.into_iter().flatten().collect()),
    }
}

/// Decides what one message needs. `None`: pass it on as it is, now. `Some`: a recording to
/// run before it may pass.
fn plan_message(
    sender: Direction,
    shared: &Arc<Shared>,
    bytes: &[u8],
) -> Option<BoxFuture<'static, Outcome>> {
    let envelope = Envelope::parse(bytes)?;
    match envelope.kind() {
        Kind::Request { id, method } => {
            if sender == Direction::FromAgent && SessionRecorder::is_handshake(method) {
                let params = parse_value(envelope.params);
                let handshake = (method.to_owned(), params);
                shared.handshakes.lock().expect("lock").insert(id_key(id), handshake);
                return None;
            }
            if !shared.recorder.records(sender, method) {
                return None;
            }
            let params: Option<Value> = envelope.params.map(|p| parse_value(Some(p)));
            let span = request_span(shared, method, id, params.as_ref());
            let shared = shared.clone();
            let id = id.to_owned();
            let method = method.to_owned();
            let raw = bytes.to_vec();
            Some(
                async move {
                    let call = shared
                        .recorder
                        .begin(sender, &method, id.get(), params.as_ref())
                        .await;
                    match call {
                        Ok(Admission::Forward(call)) => {
                            shared.open(sender, &id, call);
                            Outcome::forward(raw)
                        }
                        Ok(Admission::Refuse { result, .. }) => Outcome::answer(result_response(&id, &result)),
                        Ok(Admission::Hold(hold)) => {
                            // The held call waits aside, so that it does not hold up the
                            // messages behind it; it is forwarded when approved.
                            let cancel = CancellationToken::new();
                            shared.held.lock().expect("lock").insert(id_key(&id), cancel.clone());
                            let span = hold.call.span().clone();
                            let wait = await_hold(Arc::downgrade(&shared), *hold, id, raw, cancel);
                            tokio::spawn(wait.instrument(span));
                            Outcome::default()
                        }
                        Err(error) => {
                            spans::failed(&Span::current(), "ledger_unavailable");
                            shared.recorder.telemetry().fail_closed(FailStage::Request);
                            tracing::error!(%error, %method, "refusing to forward an unrecorded request");
                            Outcome::answer(error_response(
                                &id,
                                LEDGER_UNAVAILABLE,
                                "mcp-ledger could not record this request, so it was not forwarded",
                                "ledger_unavailable",
                            ))
                        }
                    }
                }
                .instrument(span)
                .boxed(),
            )
        }
        Kind::Response { id } => {
            if sender == Direction::FromServer && envelope.error.is_some() {
                shared.recorder.telemetry().upstream_error(UpstreamError::JsonRpcError);
            }
            let key = id_key(id);
            let requester = match sender {
                Direction::FromAgent => Direction::FromServer,
                Direction::FromServer => Direction::FromAgent,
            };
            if sender == Direction::FromServer {
                let handshake = shared.handshakes.lock().expect("lock").remove(&key);
                if let Some(handshake) = handshake {
                    return Some(record_session_start(
                        shared.clone(),
                        id,
                        handshake,
                        envelope.result,
                        bytes,
                    ));
                }
            }
            let call = {
                // Under the open calls' lock, as `expire_calls` takes a call out and marks it:
                // a response finds its call either open or timed out, never neither.
                let mut open = shared.open_calls(requester).lock().expect("lock");
                if shared.timed_out.lock().expect("lock").remove(&(requester, key.clone())) {
                    // The requester already got a timeout error for this id; a second answer
                    // would confuse it, and this one was never recorded.
                    tracing::warn!(id = %key, "dropping a response that came after its call timed out");
                    return Some(async { Outcome::default() }.boxed());
                }
                open.remove(&key)?
            };
            if requester == Direction::FromAgent {
                call.answered_by_upstream();
            }
            let span = call.span().clone();
            let shared = shared.clone();
            let id = id.to_owned();
            let result = envelope.result.map(|r| parse_value(Some(r)));
            let error = envelope.error.map(|e| parse_value(Some(e)));
            let raw = bytes.to_vec();
            Some(
                async move {
                    let completion = match (&result, &error) {
                        (Some(result), _) => Completion::Result(result),
                        (None, Some(error)) => Completion::Error(error),
                        (None, None) => unreachable!("a response has a result or an error"),
                    };
                    match shared.recorder.complete(&call, completion).await {
                        Ok(Delivery::AsIs) => Outcome::forward(raw),
                        Ok(Delivery::Replace(result)) => Outcome::forward(result_response(&id, &result)),
                        Ok(Delivery::Nothing) => Outcome::default(),
                        Ok(Delivery::Hold(hold)) => {
                            // Like a held call, a held result waits aside; the agent may
                            // cancel it in the meantime.
                            let cancel = CancellationToken::new();
                            shared.held.lock().expect("lock").insert(id_key(&id), cancel.clone());
                            let span = hold.call.span().clone();
                            let wait = await_result_hold(Arc::downgrade(&shared), *hold, id, raw, cancel);
                            tokio::spawn(wait.instrument(span));
                            Outcome::default()
                        }
                        Err(error) => {
                            spans::failed(&Span::current(), "ledger_unavailable");
                            shared.recorder.telemetry().fail_closed(FailStage::Response);
                            tracing::error!(%error, call_id = %call.call_id, "withholding an unrecorded response");
                            Outcome::forward(error_response(
                                &id,
                                LEDGER_UNAVAILABLE,
                                "mcp-ledger could not record the response, so it was withheld",
                                "ledger_unavailable",
                            ))
                        }
                    }
                }
                .instrument(span)
                .boxed(),
            )
        }
        Kind::Notification { method: "notifications/cancelled" }
            if sender == Direction::FromAgent =>
        {
            let request = cancelled_request(envelope.params)?;
            let held = shared.held.lock().expect("lock").remove(&request)?;
            // The upstream never saw the held call, so the cancellation is ours to act on.
            held.cancel();
            Some(async { Outcome::default() }.boxed())
        }
        Kind::Notification { .. } | Kind::Other => None,
    }
}

/// The request a `notifications/cancelled` names, as an id key.
fn cancelled_request(params: Option<&RawValue>) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Cancelled<'a> {
        #[serde(borrow, rename = "requestId")]
        request_id: &'a RawValue,
    }
    serde_json::from_str::<Cancelled>(params?.get()).ok().map(|c| id_key(c.request_id))
}

/// A JSON-RPC success response carrying `result`, as one line.
fn result_response(id: &RawValue, result: &Value) -> Vec<u8> {
    format!(r#"{{"jsonrpc":"2.0","id":{},"result":{result}}}"#, id.get()).into_bytes()
}

/// How often a held call tells an agent that gave a progress token that it is still waiting.
const HOLD_PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// Waits out a held call: reports progress while it waits, then forwards it or answers it.
async fn await_hold(
    shared: std::sync::Weak<Shared>,
    hold: PendingHold,
    id: Box<RawValue>,
    raw: Vec<u8>,
    cancel: CancellationToken,
) {
    let Some(recorder) = shared.upgrade().map(|s| s.recorder.clone()) else { return };
    let _waiting = recorder.telemetry().held(HoldKind::Call);
    let token = hold.progress_token.clone();
    let approval_id = hold.request.approval_id.clone();
    let resolution = recorder.resolve_hold(hold, cancel);
    tokio::pin!(resolution);
    let mut ticks = tokio::time::interval(HOLD_PROGRESS_EVERY);
    let mut progress = 0u64;
    let outcome = loop {
        tokio::select! {
            outcome = &mut resolution => break outcome,
            _ = ticks.tick(), if token.is_some() => {
                let Some(to_agent) = shared.upgrade().and_then(|s| s.to_agent.upgrade()) else { continue };
                progress += 1;
                let note = serde_json::json!({
                    "jsonrpc": "2.0",
                    "method": "notifications/progress",
                    "params": {
                        "progressToken": token,
                        "progress": progress,
                        "message": format!("waiting for an operator to approve this call (approval {approval_id})"),
                    }
                });
                let _ = to_agent.send(note.to_string().into_bytes()).await;
            }
        }
    };
    let Some(shared) = shared.upgrade() else { return };
    shared.held.lock().expect("lock").remove(&id_key(&id));
    let answer = match outcome {
        Ok(HoldOutcome::Forward(call)) => {
            shared.open(Direction::FromAgent, &id, call);
            if let Some(to_upstream) = shared.to_upstream.upgrade() {
                let _ = to_upstream.send(raw).await;
            }
            return;
        }
        Ok(HoldOutcome::Refuse(result)) => result_response(&id, &result),
        Ok(HoldOutcome::Cancelled) => return,
        Err(error) => {
            tracing::error!(%error, "cannot record how a held call ended; refusing it");
            error_response(
                &id,
                LEDGER_UNAVAILABLE,
                "mcp-ledger could not record the outcome of this held call, so it was not forwarded",
                "ledger_unavailable",
            )
        }
    };
    if let Some(to_agent) = shared.to_agent.upgrade() {
        let _ = to_agent.send(answer).await;
    }
}

/// Waits out a held result: delivers it (or what replaces it) once an operator decides.
async fn await_result_hold(
    shared: std::sync::Weak<Shared>,
    hold: PendingResultHold,
    id: Box<RawValue>,
    raw: Vec<u8>,
    cancel: CancellationToken,
) {
    let Some(recorder) = shared.upgrade().map(|s| s.recorder.clone()) else { return };
    let waiting = recorder.telemetry().held(HoldKind::Result);
    let outcome = recorder.resolve_result_hold(hold, cancel).await;
    drop(waiting);
    let Some(shared) = shared.upgrade() else { return };
    shared.held.lock().expect("lock").remove(&id_key(&id));
    let answer = match outcome {
        Ok(Delivery::AsIs) => raw,
        Ok(Delivery::Replace(result)) => result_response(&id, &result),
        Ok(Delivery::Nothing | Delivery::Hold(_)) => return,
        Err(error) => {
            tracing::error!(%error, "cannot record how a held result ended; withholding it");
            error_response(
                &id,
                LEDGER_UNAVAILABLE,
                "mcp-ledger could not record the outcome of this held result, so it was withheld",
                "ledger_unavailable",
            )
        }
    };
    if let Some(to_agent) = shared.to_agent.upgrade() {
        let _ = to_agent.send(answer).await;
    }
}

/// Answers, and records as unanswered, every call of the session whose peer has not answered
/// it within `limit` of its forwarding. One task per session that sleeps until the oldest open
/// call's deadline, rather than a timer task per call: such a task outlived its call by the whole
/// limit (600 s by default), and under load the sleeping tasks grew `serve`'s memory by about
/// 1.5 KB per call (docs/performance.md).
async fn expire_calls(shared: Arc<Shared>, limit: Duration) {
    loop {
        let Some(first) = shared.first_forwarded() else {
            shared.call_opened.notified().await;
            continue;
        };
        // Every call is opened with the same limit, so no call opened later has an earlier
        // deadline: nothing needs to interrupt this sleep.
        let deadline = first + limit;
        if deadline > Instant::now() {
            tokio::time::sleep_until(deadline.into()).await;
            continue;
        }
        let cutoff = Instant::now().checked_sub(limit).unwrap_or(first);
        for (direction, call) in shared.time_out_forwarded_by(cutoff) {
            tokio::spawn(time_out(shared.clone(), direction, call, limit));
        }
    }
}

/// Ends `call`, which its peer did not answer within `limit` (already marked as timed out):
/// records it, and answers its sender with an error.
async fn time_out(shared: Arc<Shared>, direction: Direction, call: OpenCall, limit: Duration) {
    let who = match direction {
        Direction::FromAgent => "the upstream MCP server",
        Direction::FromServer => "the agent",
    };
    let reason = format!("{who} did not answer within {} s", limit.as_secs());
    tracing::warn!(call_id = %call.call_id, %reason, "call timed out");
    if direction == Direction::FromAgent {
        shared.recorder.telemetry().upstream_error(UpstreamError::Timeout);
    }
    spans::failed(call.span(), "timeout");
    let finished = shared.recorder.finish(&call, Completion::NoResponse { reason: &reason });
    if let Err(error) = finished.instrument(call.span().clone()).await {
        tracing::error!(%error, call_id = %call.call_id, "could not record a timed-out call");
    }
    // The id is the sender's own JSON, read as such when the call opened.
    if let Some(requester) = shared.requester(direction)
        && let Ok(id) = RawValue::from_string(call.request_id().to_owned())
    {
        let _ = requester.send(error_response(&id, UPSTREAM_GONE, &reason, "timeout")).await;
    }
}

fn record_session_start(
    shared: Arc<Shared>,
    id: &RawValue,
    (method, params): (String, Value),
    result: Option<&RawValue>,
    bytes: &[u8],
) -> BoxFuture<'static, Outcome> {
    let id = id.to_owned();
    let result = result.map(|r| parse_value(Some(r)));
    let raw = bytes.to_vec();
    async move {
        // A handshake that failed upstream starts no session; pass the error on.
        let Some(result) = result else {
            return Outcome::forward(raw);
        };
        if let Some(version) = protocol_version(&params, &result) {
            let _ = shared.protocol_version.set(version.to_owned());
        }
        match shared.recorder.session_started(&method, &params, &result).await {
            Ok(()) => Outcome::forward(raw),
            Err(error) => {
                tracing::error!(%error, "cannot record session_start; refusing the session");
                Outcome::forward(error_response(
                    &id,
                    LEDGER_UNAVAILABLE,
                    "mcp-ledger could not record the start of this session, so it was refused",
                    "ledger_unavailable",
                ))
            }
        }
    }
    .boxed()
}

/// The MCP revision a handshake settled on: the `initialize` result's `protocolVersion`, or the
/// version a stateless (2026-07-28) client named in its request's `_meta`.
fn protocol_version<'a>(params: &'a Value, result: &'a Value) -> Option<&'a str> {
    result.get("protocolVersion").and_then(Value::as_str).or_else(|| {
        params
            .get("_meta")
            .and_then(|meta| meta.get("io.modelcontextprotocol/protocolVersion"))
            .and_then(Value::as_str)
    })
}

/// The span of a recorded request (see `telemetry::spans`), from its routing fields.
fn request_span(shared: &Shared, method: &str, id: &RawValue, params: Option<&Value>) -> Span {
    let name = match method {
        "tools/call" | "prompts/get" => params.and_then(|p| p.get("name")).and_then(Value::as_str),
        _ => None,
    };
    let request_id = id_text(id);
    let request = spans::Request {
        method,
        name,
        request_id: request_id.as_deref(),
        protocol_version: shared.protocol_version.get().map(String::as_str),
    };
    spans::request(shared.recorder.telemetry(), request)
}

/// A JSON-RPC id as `jsonrpc.request.id` wants it: a string id without its quotes, a number as
/// written; `None` for null. Borrowed unless the string has escapes.
fn id_text(id: &RawValue) -> Option<Cow<'_, str>> {
    let raw = id.get().trim();
    if raw == "null" {
        return None;
    }
    match raw.strip_prefix('"').and_then(|r| r.strip_suffix('"')) {
        Some(inner) if !inner.contains('\\') => Some(Cow::Borrowed(inner)),
        Some(_) => serde_json::from_str::<String>(raw).ok().map(Cow::Owned),
        None => Some(Cow::Borrowed(raw)),
    }
}

fn parse_value(raw: Option<&RawValue>) -> Value {
    raw.and_then(|r| serde_json::from_str(r.get()).ok()).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tokio::io::{AsyncWriteExt, BufReader, DuplexStream, Lines, ReadHalf, WriteHalf};

    use super::*;
    use crate::intercept::{RecordedMethods, SessionIdentity};
    use crate::store::writer::Ledger;
    use crate::store::{DEFAULT_CHAIN, SqliteStore, Store, StoreOptions};

    /// The agent's end of a relay whose upstream answers every request at once, except a
    /// `tools/call` of the tool `hang`, which it never answers.
    struct Session {
        to_proxy: WriteHalf<DuplexStream>,
        from_proxy: Lines<BufReader<ReadHalf<DuplexStream>>>,
        relay: JoinHandle<RelayEnd>,
        next_id: u64,
        _dir: tempfile::TempDir,
    }

    impl Session {
        async fn start(call_timeout: Duration) -> Session {
            let dir = tempfile::tempdir().unwrap();
            let store: Arc<dyn Store> = Arc::new(
                SqliteStore::open(&dir.path().join("ledger.db"), &StoreOptions::default())
                    .await
                    .unwrap(),
            );
            let (ledger, _writer) = Ledger::start(store, DEFAULT_CHAIN, Duration::from_secs(10));
            let identity = SessionIdentity {
                session_id: "expiry-test".into(),
                agent: "tester".into(),
                server: "scripted".into(),
                transport: "stdio",
                upstream: "in-process".into(),
            };
            let recorder = SessionRecorder::new(ledger, identity, RecordedMethods::default());
            let (agent, proxy_agent) = tokio::io::duplex(1 << 16);
            let (upstream, proxy_upstream) = tokio::io::duplex(1 << 16);
            tokio::spawn(answer_all_but_hang(upstream));
            let (proxy_agent_in, proxy_agent_out) = tokio::io::split(proxy_agent);
            let (proxy_up_in, proxy_up_out) = tokio::io::split(proxy_upstream);
            let options =
                RelayOptions { grace: Duration::from_secs(1), call_timeout: Some(call_timeout) };
            let relay = tokio::spawn(relay_with(
                options,
                recorder,
                BufReader::new(proxy_agent_in),
                LineSink::stream(proxy_agent_out),
                BufReader::new(proxy_up_in),
                LineSink::stream(proxy_up_out),
            ));
            let (from_proxy, to_proxy) = tokio::io::split(agent);
            let from_proxy = BufReader::new(from_proxy).lines();
            Session { to_proxy, from_proxy, relay, next_id: 0, _dir: dir }
        }

        /// Sends a `tools/call` of `tool` and returns its id.
        async fn call(&mut self, tool: &str) -> u64 {
            self.next_id += 1;
            let line = json!({"jsonrpc": "2.0", "id": self.next_id, "method": "tools/call",
                              "params": {"name": tool, "arguments": {}}});
            self.to_proxy.write_all(format!("{line}\n").as_bytes()).await.unwrap();
            self.next_id
        }

        async fn reply(&mut self) -> Value {
            let line = tokio::time::timeout(Duration::from_secs(10), self.from_proxy.next_line())
                .await
                .expect("an answer in time")
                .unwrap()
                .expect("the relay is still running");
            serde_json::from_str(&line).unwrap()
        }

        async fn close(mut self) {
            self.to_proxy.shutdown().await.unwrap();
            drop(self.to_proxy);
            assert_eq!(self.relay.await.unwrap(), RelayEnd::AgentClosed);
        }
    }

    async fn answer_all_but_hang(upstream: DuplexStream) {
        let (input, mut output) = tokio::io::split(upstream);
        let mut lines = BufReader::new(input).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let request: Value = serde_json::from_str(&line).unwrap();
            if request["params"]["name"] == "hang" || request.get("id").is_none() {
                continue;
            }
            let answer = json!({"jsonrpc": "2.0", "id": request["id"],
                                "result": {"content": [{"type": "text", "text": "done"}]}});
            if output.write_all(format!("{answer}\n").as_bytes()).await.is_err() {
                break;
            }
        }
    }

    fn alive_tasks() -> usize {
        tokio::runtime::Handle::current().metrics().num_alive_tasks()
    }

    #[tokio::test]
    async fn answered_calls_leave_nothing_waiting_for_their_timeout() {
        let mut session = Session::start(Duration::from_secs(600)).await;
        let call_and_answer = async |session: &mut Session| {
            let id = session.call("echo").await;
            assert_eq!(session.reply().await["id"], id);
        };
        for _ in 0..10 {
            call_and_answer(&mut session).await;
        }
        let before = alive_tasks();
        for _ in 0..200 {
            call_and_answer(&mut session).await;
        }
        // A timer per call would keep 200 more tasks alive for the next ten minutes.
        let after = alive_tasks();
        assert!(after <= before + 2, "{before} tasks alive before 200 calls, {after} after");
        session.close().await;
    }

    #[tokio::test]
    async fn unanswered_calls_time_out_among_answered_ones_and_after_a_quiet_spell() {
        let mut session = Session::start(Duration::from_secs(1)).await;
        let hung = session.call("hang").await;
        let started = Instant::now();
        for _ in 0..3 {
            let id = session.call("echo").await;
            assert_eq!(session.reply().await["id"], id, "answered calls pass the hung one");
        }
        let timed_out = session.reply().await;
        assert_eq!(timed_out["id"], hung);
        assert_eq!(timed_out["error"]["data"]["mcp_ledger"], "timeout", "{timed_out}");
        assert!(started.elapsed() >= Duration::from_millis(900), "{:?}", started.elapsed());

        // Nothing open now; a call that hangs after that is still timed out.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let hung_again = session.call("hang").await;
        let answered = session.call("echo").await;
        assert_eq!(session.reply().await["id"], answered);
        let timed_out = session.reply().await;
        assert_eq!(timed_out["id"], hung_again, "{timed_out}");
        assert_eq!(timed_out["error"]["code"], UPSTREAM_GONE);
        session.close().await;
    }
}
