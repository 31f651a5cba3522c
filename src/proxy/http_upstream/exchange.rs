//! One message's round trip (POST, then the JSON body or SSE stream that answers it, resumed
//! when it breaks) and the standalone GET stream for server-initiated messages.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;

use super::MAX_MESSAGE_BYTES;
use super::client::{
    Answer, Failure, Req, Sent, Signal, Upstream, error_chain, has_content_type, read_body,
};
use super::sse::SseParser;
use crate::proxy::jsonrpc::{Envelope, Kind, batch_members, id_key};
use crate::proxy::lines::without_line_end;

/// Resumption attempts in a row that bring nothing before a response stream counts as lost.
const MAX_RESUME_ATTEMPTS: u32 = 5;
/// The reconnection delay when the server named none.
const DEFAULT_RETRY: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a response stream is still read after the awaited responses arrived (a server
/// SHOULD end it then; this only catches stragglers).
const LINGER: Duration = Duration::from_secs(1);
/// A non-2xx body is read only to find a JSON-RPC error for the request, up to this size.
const MAX_ERROR_BODY: usize = 64 << 10;

/// One line from the agent, ready to POST.
pub(super) struct Outgoing {
    /// The exact bytes, without the line ending.
    pub body: Bytes,
    /// The requests in it (one, or several in a batch): id key and id as written.
    pub requests: Vec<(String, Box<RawValue>)>,
    /// The id key of an `initialize` request in it.
    pub initialize: Option<String>,
    /// Id keys of requests this line cancels (`notifications/cancelled`).
    pub cancels: Vec<String>,
}

#[derive(Deserialize)]
struct CancelledParams<'a> {
    #[serde(rename = "requestId", borrow)]
    request_id: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct InitializeResult<'a> {
    #[serde(rename = "protocolVersion", borrow)]
    protocol_version: Option<Cow<'a, str>>,
}

/// Calls `f` with each message of a line: the members of a batch, or the line itself.
fn each_message(line: &[u8], mut f: impl FnMut(&[u8])) {
    match batch_members(line) {
        Some(members) => members.iter().for_each(|m| f(m.get().as_bytes())),
        None => f(line),
    }
}

impl Outgoing {
    /// `None` for a blank line.
    pub fn parse(line: &[u8]) -> Option<Outgoing> {
        let body = without_line_end(line);
        if body.trim_ascii().is_empty() {
            return None;
        }
        let mut out = Outgoing {
            body: Bytes::copy_from_slice(body),
            requests: Vec::new(),
            initialize: None,
            cancels: Vec::new(),
        };
        each_message(body, |bytes| {
            let Some(envelope) = Envelope::parse(bytes) else { return };
            match envelope.kind() {
                Kind::Request { id, method } => {
                    let key = id_key(id);
                    if method == "initialize" {
                        out.initialize = Some(key.clone());
                    }
                    out.requests.push((key, id.to_owned()));
                }
                Kind::Notification { method: "notifications/cancelled" } => {
                    let id = envelope.params.and_then(|p| {
                        serde_json::from_str::<CancelledParams>(p.get()).ok()?.request_id
                    });
                    out.cancels.extend(id.map(id_key));
                }
                _ => {}
            }
        });
        Some(out)
    }
}

/// The requests of one POST still waiting for their response.
struct Awaiting {
    ids: Vec<(String, Box<RawValue>)>,
    initialize: Option<String>,
    expects: bool,
}

impl Awaiting {
    fn new(msg: &Outgoing) -> Self {
        Awaiting {
            ids: msg.requests.clone(),
            initialize: msg.initialize.clone(),
            expects: !msg.requests.is_empty(),
        }
    }

    fn none() -> Self {
        Awaiting { ids: Vec::new(), initialize: None, expects: false }
    }

    /// Every response this POST asked for has arrived.
    fn done(&self) -> bool {
        self.expects && self.ids.is_empty()
    }

    /// Notes the responses in `line` (learning the protocol version from an initialize
    /// result); returns how many awaited ids it answered.
    fn observe(&mut self, up: &Upstream, line: &[u8]) -> usize {
        if self.ids.is_empty() {
            return 0;
        }
        let mut answered = 0;
        each_message(line, |bytes| {
            let Some(envelope) = Envelope::parse(bytes) else { return };
            let Kind::Response { id } = envelope.kind() else { return };
            let key = id_key(id);
            let Some(at) = self.ids.iter().position(|(k, _)| *k == key) else { return };
            self.ids.swap_remove(at);
            answered += 1;
            if self.initialize.as_ref() == Some(&key)
                && let Some(result) = envelope.result
            {
                let version = serde_json::from_str::<InitializeResult>(result.get())
                    .ok()
                    .and_then(|r| r.protocol_version);
                up.set_initialized(version.as_deref());
            }
        });
        answered
    }

    /// Drops the requests the agent cancelled: their responses are not owed.
    fn forget_cancelled(&mut self, up: &Upstream) {
        self.ids.retain(|(key, _)| !up.was_cancelled(key, false));
    }
}

/// A payload as one pipe line: line breaks (which valid JSON holds only as whitespace between
/// tokens) removed, `\n` appended. Every other byte is kept.
pub(super) fn to_line(mut payload: Vec<u8>) -> Vec<u8> {
    if payload.iter().any(|b| *b == b'\n' || *b == b'\r') {
        payload.retain(|b| *b != b'\n' && *b != b'\r');
    }
    payload.push(b'\n');
    payload
}

/// POSTs `msg` and emits what answers it. `proceed` fires once the next line may be sent: when
/// the connection took the body (requests), when the server accepted it (notifications,
/// responses), or when it was answered (`initialize`).
pub(super) async fn exchange(up: Arc<Upstream>, msg: Outgoing, proceed: Arc<Signal>) {
    let mut awaiting = Awaiting::new(&msg);
    let deliver = deliver(&up, &msg, &proceed, &mut awaiting);
    let outcome = tokio::select! {
        biased;
        _ = up.expired.cancelled() => Err(Failure::SessionExpired),
        outcome = async {
            match up.request_timeout {
                Some(limit) => tokio::time::timeout(limit, deliver)
                    .await
                    .unwrap_or(Err(Failure::Timeout(limit))),
                None => deliver.await,
            }
        } => outcome,
    };
    proceed.fire();
    awaiting.forget_cancelled(&up);
    let failure = match outcome {
        Err(failure) => Some(failure),
        Ok(()) if !awaiting.ids.is_empty() => Some(Failure::NoAnswer),
        Ok(()) => None,
    };
    if let Some(failure) = failure {
        if awaiting.ids.is_empty() && !awaiting.expects {
            tracing::warn!(host = %up.host, ?failure, "a notification or response to the upstream was not delivered");
        } else if !awaiting.ids.is_empty() {
            tracing::debug!(host = %up.host, ?failure, requests = awaiting.ids.len(), "answering requests with an error");
        }
        for (_, id) in &awaiting.ids {
            up.emit(up.error_line(id, &failure)).await;
        }
    }
    for (key, _) in &msg.requests {
        up.was_cancelled(key, true);
    }
}

async fn deliver(
    up: &Upstream,
    msg: &Outgoing,
    proceed: &Arc<Signal>,
    awaiting: &mut Awaiting,
) -> Result<(), Failure> {
    let initialize = msg.initialize.is_some();
    let on_send = (!msg.requests.is_empty() && !initialize).then(|| proceed.clone());
    let req = Req::Post { body: msg.body.clone(), on_send, initialize };
    let Sent { mut response, session } = up.send(req).await.map_err(|error| {
        tracing::debug!(host = %up.host, error = %error_chain(&*error), "POST failed");
        Failure::from_error(&*error)
    })?;
    if !initialize {
        proceed.fire();
    }
    let status = response.status();
    if initialize && status.is_success() {
        up.set_session_id(response.headers().get(super::client::MCP_SESSION_ID));
    }
    if status == StatusCode::NOT_FOUND && up.expire_if_current(&session) {
        return Err(Failure::SessionExpired);
    }
    if !status.is_success() {
        // The body may hold the server's own JSON-RPC error for the request: pass that on.
        if awaiting.expects
            && has_content_type(&response, "application/json")
            && let Ok(body) = read_body(&mut response, MAX_ERROR_BODY).await
        {
            let line = to_line(body);
            if awaiting.observe(up, &line) > 0 {
                up.emit(line).await;
                if awaiting.ids.is_empty() {
                    return Ok(());
                }
            }
        }
        return Err(Failure::Status(status));
    }
    if matches!(status, StatusCode::ACCEPTED | StatusCode::NO_CONTENT) {
        return Ok(());
    }
    if has_content_type(&response, "text/event-stream") {
        return read_stream(up, response, awaiting).await;
    }
    let body = read_body(&mut response, MAX_MESSAGE_BYTES).await?;
    if body.trim_ascii().is_empty() {
        return Ok(());
    }
    if !has_content_type(&response, "application/json") {
        return Err(Failure::BadResponse("neither JSON nor an event stream"));
    }
    let line = to_line(body);
    awaiting.observe(up, &line);
    up.emit(line).await;
    Ok(())
}

/// Emits the messages of a response stream until it answered every request, resuming it with
/// `GET` + `Last-Event-ID` when it breaks off first and the server gave event ids.
async fn read_stream(
    up: &Upstream,
    response: Answer,
    awaiting: &mut Awaiting,
) -> Result<(), Failure> {
    let mut parser = SseParser::new(MAX_MESSAGE_BYTES);
    let mut next = Some(response);
    let mut fruitless = 0u32;
    loop {
        if let Some(response) = next.take() {
            let progressed = pump(up, response, &mut parser, awaiting).await?;
            if awaiting.done() || !awaiting.expects {
                return Ok(());
            }
            awaiting.forget_cancelled(up);
            if awaiting.ids.is_empty() {
                return Ok(());
            }
            if progressed {
                fruitless = 0;
            }
        }
        let Some(last_event_id) = parser.last_event_id().map(str::to_owned) else {
            return Err(Failure::StreamLost);
        };
        fruitless += 1;
        if fruitless > MAX_RESUME_ATTEMPTS {
            return Err(Failure::StreamLost);
        }
        tokio::time::sleep(reconnect_delay(parser.retry(), fruitless - 1)).await;
        match up.send(Req::Get { last_event_id: Some(&last_event_id) }).await {
            Ok(Sent { response, session }) => {
                let status = response.status();
                if status == StatusCode::NOT_FOUND && up.expire_if_current(&session) {
                    return Err(Failure::SessionExpired);
                }
                if status.is_success() && has_content_type(&response, "text/event-stream") {
                    next = Some(response);
                } else if status.is_client_error() || status.is_success() {
                    tracing::debug!(host = %up.host, %status, "the upstream cannot resume a response stream");
                    return Err(Failure::StreamLost);
                } else {
                    tracing::debug!(host = %up.host, %status, "resuming a response stream failed; retrying");
                }
            }
            Err(error) => {
                tracing::debug!(host = %up.host, error = %error_chain(&*error), "resuming a response stream failed; retrying");
            }
        }
    }
}

/// Emits the message events of one SSE connection until it ends (or, once `awaiting` is done,
/// for at most [`LINGER`]). Returns whether the stream's cursor moved.
async fn pump(
    up: &Upstream,
    mut response: Answer,
    parser: &mut SseParser,
    awaiting: &mut Awaiting,
) -> Result<bool, Failure> {
    parser.reconnected();
    let cursor = parser.last_event_id().map(str::to_owned);
    let mut dispatched = false;
    let mut events = Vec::new();
    let mut deadline: Option<Instant> = None;
    loop {
        let chunk = match deadline {
            Some(at) => match tokio::time::timeout_at(at, response.chunk()).await {
                Ok(chunk) => chunk,
                Err(_) => break,
            },
            None => response.chunk().await,
        };
        let chunk = match chunk {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(error) => {
                tracing::debug!(host = %up.host, error = %error_chain(&*error), "an SSE stream broke off");
                break;
            }
        };
        parser
            .feed(&chunk, &mut events)
            .map_err(|_| Failure::BadResponse("an SSE event is too large"))?;
        for event in events.drain(..) {
            dispatched = true;
            if !event.is_message() {
                continue;
            }
            let line = to_line(event.data);
            awaiting.observe(up, &line);
            up.emit(line).await;
        }
        if deadline.is_none() && awaiting.done() {
            deadline = Some(Instant::now() + LINGER);
        }
    }
    Ok(dispatched || parser.last_event_id() != cursor.as_deref())
}

/// How long to wait before reconnecting: at least what the server asked for (`retry`), more
/// after repeated failures.
fn reconnect_delay(retry: Option<Duration>, failures: u32) -> Duration {
    let backoff = match failures {
        0 => Duration::ZERO,
        n => (Duration::from_millis(250) * 2u32.saturating_pow(n.min(16))).min(MAX_BACKOFF),
    };
    retry.unwrap_or(DEFAULT_RETRY).max(backoff)
}

/// The standalone `GET` stream: server-initiated messages, for as long as the session lives.
/// Ends when the server does not offer one (405) or the session expired.
pub(super) async fn listen(up: Arc<Upstream>) {
    let mut parser = SseParser::new(MAX_MESSAGE_BYTES);
    let mut awaiting = Awaiting::none();
    let mut failures = 0u32;
    loop {
        let last_event_id = parser.last_event_id().map(str::to_owned);
        match up.send(Req::Get { last_event_id: last_event_id.as_deref() }).await {
            Ok(Sent { response, session }) => {
                let status = response.status();
                if status == StatusCode::METHOD_NOT_ALLOWED {
                    tracing::debug!(host = %up.host, "the upstream offers no standalone SSE stream");
                    return;
                }
                if status == StatusCode::NOT_FOUND && up.expire_if_current(&session) {
                    return;
                }
                if status.is_success() && has_content_type(&response, "text/event-stream") {
                    match pump(&up, response, &mut parser, &mut awaiting).await {
                        Ok(true) => failures = 0,
                        Ok(false) => failures += 1,
                        Err(failure) => {
                            tracing::warn!(host = %up.host, ?failure, "dropping the standalone SSE stream");
                            failures += 1;
                        }
                    }
                } else {
                    if failures == 0 {
                        tracing::warn!(host = %up.host, %status, "the upstream refused the standalone SSE stream; retrying");
                    }
                    failures += 1;
                }
            }
            Err(error) => {
                if failures == 0 {
                    tracing::warn!(host = %up.host, error = %error_chain(&*error), "the standalone SSE stream failed; retrying");
                }
                failures += 1;
            }
        }
        tokio::time::sleep(reconnect_delay(parser.retry(), failures)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_lose_only_line_breaks() {
        assert_eq!(to_line(b"{\"a\": 1}".to_vec()), b"{\"a\": 1}\n");
        assert_eq!(to_line(b"{\r\n  \"a\": [1,\n 2]\n}\n".to_vec()), b"{  \"a\": [1, 2]}\n");
    }

    #[test]
    fn outgoing_lines_are_classified() {
        let msg = Outgoing::parse(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\"}\r\n")
            .unwrap();
        assert_eq!(&msg.body[..], b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\"}");
        assert_eq!(msg.initialize.as_deref(), Some("1"));
        let batch = br#"[{"jsonrpc":"2.0","id":"a","method":"x"},{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":7}}]"#;
        let msg = Outgoing::parse(batch).unwrap();
        assert_eq!(&msg.body[..], &batch[..]);
        assert_eq!(msg.requests.len(), 1);
        assert_eq!(msg.requests[0].1.get(), "\"a\"");
        assert_eq!(msg.cancels, ["7"]);
        assert!(Outgoing::parse(b"  \n").is_none());
        let odd = Outgoing::parse(b"not json\n").unwrap();
        assert!(odd.requests.is_empty());
    }

    #[test]
    fn reconnecting_respects_retry_and_backs_off() {
        assert_eq!(reconnect_delay(None, 0), DEFAULT_RETRY);
        assert_eq!(reconnect_delay(Some(Duration::from_millis(10)), 0), Duration::from_millis(10));
        assert_eq!(reconnect_delay(Some(Duration::from_millis(10)), 2), Duration::from_secs(1));
        assert_eq!(reconnect_delay(Some(Duration::from_secs(5)), 1), Duration::from_secs(5));
        assert_eq!(reconnect_delay(None, 40), MAX_BACKOFF);
    }
}
