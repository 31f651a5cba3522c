//! One downstream Streamable HTTP session: the relay that serves it, and the routing of what the
//! relay sends toward the agent onto the right HTTP response stream.
//!
//! The relay speaks lines; HTTP speaks per-request streams. A response goes to the stream of the
//! POST that carried its request; a progress notification to the stream of the request that gave
//! its token; a server-to-client request or other notification to the newest open POST stream (it
//! is almost always made while serving that request), else to the standalone GET stream, else it
//! waits for one.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::proxy::jsonrpc::{Envelope, Kind, batch_members, error_response, id_key};
use crate::proxy::lines::LineOutbox;

/// Messages held for a standalone stream that is not open yet.
const BACKLOG_LIMIT: usize = 1024;

/// JSON-RPC error code for a request whose session ended before it was answered.
pub const SESSION_CLOSED: i64 = -32001;

/// A message on its way to the agent over one of the session's HTTP streams.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamMessage {
    pub bytes: Bytes,
    /// It holds the response to a request of the POST whose stream it is on (for a batch, to
    /// at least one), so a POST answered with plain JSON may carry it. Known from routing, so
    /// the message is not parsed again to find out.
    pub answers: bool,
}

impl StreamMessage {
    fn other(bytes: Bytes) -> Self {
        StreamMessage { bytes, answers: false }
    }
}

/// Where one POST's messages go, and how many of its requests are still unanswered.
struct PostStream {
    sender: mpsc::Sender<StreamMessage>,
    unanswered: usize,
    opened: u64,
}

#[derive(Default)]
struct Routes {
    posts: HashMap<u64, PostStream>,
    /// Request id key -> the POST that carried it.
    by_request: HashMap<String, u64>,
    /// Progress token key -> request id key.
    by_progress: HashMap<String, String>,
    standalone: Option<mpsc::Sender<StreamMessage>>,
    backlog: VecDeque<Bytes>,
    next_post: u64,
}

pub struct HttpSession {
    pub id: String,
    pub agent: String,
    pub server: String,
    to_relay: Mutex<Option<mpsc::Sender<Result<Bytes, std::io::Error>>>>,
    routes: Mutex<Routes>,
    last_active: Mutex<Instant>,
    /// Whether the agent has handed the session a message yet. Until then the request that
    /// started it is still on its way in, and the session must not be evicted from under it.
    relayed: AtomicBool,
    /// Cancelled once the relay has ended and every stream was closed.
    pub ended: CancellationToken,
    /// Told why the session closed, when the closing is ours (DELETE, expiry, shutdown).
    recorder: Mutex<Option<crate::intercept::SessionRecorder>>,
}

/// The requests in one POST body: (id key, progress token key) for each.
pub struct PostedRequests {
    pub requests: Vec<(String, Option<String>)>,
}

impl HttpSession {
    pub fn new(
        id: String,
        agent: String,
        server: String,
        to_relay: mpsc::Sender<Result<Bytes, std::io::Error>>,
    ) -> Arc<Self> {
        Arc::new(HttpSession {
            id,
            agent,
            server,
            to_relay: Mutex::new(Some(to_relay)),
            routes: Mutex::default(),
            last_active: Mutex::new(Instant::now()),
            relayed: AtomicBool::new(false),
            ended: CancellationToken::new(),
            recorder: Mutex::default(),
        })
    }

    /// Lets [`Self::close_because`] put its reason into the session's `session_end`.
    pub fn set_recorder(&self, recorder: crate::intercept::SessionRecorder) {
        *self.recorder.lock().expect("lock") = Some(recorder);
    }

    pub fn touch(&self) {
        *self.last_active.lock().expect("lock") = Instant::now();
    }

    pub fn idle_for(&self) -> std::time::Duration {
        self.last_active.lock().expect("lock").elapsed()
    }

    /// Whether a client is still listening on one of the session's streams. A stream whose
    /// client went away does not count: it must not keep an idle session alive.
    pub fn has_open_streams(&self) -> bool {
        let routes = self.routes.lock().expect("lock");
        routes.posts.values().any(|p| !p.sender.is_closed())
            || routes.standalone.as_ref().is_some_and(|s| !s.is_closed())
    }

    /// Whether the session may be closed to make room for another: it has been handed a
    /// message, and no client is waiting on one of its streams.
    pub fn is_evictable(&self) -> bool {
        self.relayed.load(Ordering::SeqCst) && !self.has_open_streams()
    }

    /// Opens a stream for a POST whose requests are `posted`; its receiver yields every message
    /// for those requests and ends after the last response.
    pub fn open_post_stream(&self, posted: &PostedRequests) -> mpsc::Receiver<StreamMessage> {
        let (sender, receiver) = mpsc::channel(256);
        let mut routes = self.routes.lock().expect("lock");
        let post = routes.next_post;
        routes.next_post += 1;
        for (id, token) in &posted.requests {
            routes.by_request.insert(id.clone(), post);
            if let Some(token) = token {
                routes.by_progress.insert(token.clone(), id.clone());
            }
        }
        routes
            .posts
            .insert(post, PostStream { sender, unanswered: posted.requests.len(), opened: post });
        receiver
    }

    /// Opens (or replaces) the standalone stream for server-initiated messages.
    pub fn open_standalone_stream(&self) -> mpsc::Receiver<StreamMessage> {
        let (sender, receiver) = mpsc::channel(256);
        let mut routes = self.routes.lock().expect("lock");
        while let Some(message) = routes.backlog.pop_front() {
            if sender.try_send(StreamMessage::other(message.clone())).is_err() {
                routes.backlog.push_front(message);
                break;
            }
        }
        routes.standalone = Some(sender);
        receiver
    }

    /// Passes a line from the agent to the relay. `false` once the session has ended.
    pub async fn send_to_relay(&self, mut line: Vec<u8>) -> bool {
        self.touch();
        self.relayed.store(true, Ordering::SeqCst);
        line.push(b'\n');
        let sender = self.to_relay.lock().expect("lock").clone();
        match sender {
            Some(sender) => sender.send(Ok(Bytes::from(line))).await.is_ok(),
            None => false,
        }
    }

    /// Whether the agent's side is closed already (DELETE, expiry, eviction): the session is
    /// ending and leaves the proxy's map once its relay has recorded the end.
    pub fn is_closing(&self) -> bool {
        self.to_relay.lock().expect("lock").is_none()
    }

    /// Ends the agent's side: the relay records the end of the session and stops the upstream.
    pub fn close(&self) {
        self.to_relay.lock().expect("lock").take();
    }

    /// [`Self::close`], recording `reason` as why the session ended.
    pub fn close_because(&self, reason: &str) {
        if let Some(recorder) = self.recorder.lock().expect("lock").as_ref() {
            recorder.set_end_reason(reason);
        }
        self.close();
    }

    /// Routes lines the relay writes toward the agent until the relay closes them, then answers
    /// whatever is still waiting and ends every stream.
    pub async fn dispatch(self: Arc<Self>, mut from_relay: LineOutbox) {
        while let Some(line) = from_relay.next_message().await {
            self.route(Bytes::from(line)).await;
        }
        self.close();
        let orphans: Vec<(String, mpsc::Sender<StreamMessage>)> = {
            let mut routes = self.routes.lock().expect("lock");
            let waiting: Vec<_> = routes.by_request.drain().collect();
            let orphans = waiting
                .into_iter()
                .filter_map(|(id, post)| routes.posts.get(&post).map(|p| (id, p.sender.clone())))
                .collect();
            routes.posts.clear();
            routes.standalone = None;
            orphans
        };
        // Requests the ledger did not record (tools/list, ping, …) get no answer from the relay
        // when the upstream goes away; answer them here so no client waits forever.
        for (id, sender) in orphans {
            if let Ok(raw) = serde_json::from_str::<&RawValue>(&id) {
                let answer = error_response(
                    raw,
                    SESSION_CLOSED,
                    "the MCP session ended before the upstream server answered",
                    "session_closed",
                );
                let bytes = Bytes::from(answer.trim_ascii_end().to_vec());
                let _ = sender.send(StreamMessage { bytes, answers: true }).await;
            }
        }
        self.ended.cancel();
    }

    async fn route(&self, line: Bytes) {
        let target = {
            let mut routes = self.routes.lock().expect("lock");
            routes.target_for(&line)
        };
        match target {
            Target::Stream { sender, answers } => {
                let _ = sender.send(StreamMessage { bytes: line, answers }).await;
            }
            Target::Backlog => {
                let mut routes = self.routes.lock().expect("lock");
                if routes.backlog.len() == BACKLOG_LIMIT {
                    tracing::warn!(session = %self.id, "no stream for server messages; dropping the oldest");
                    routes.backlog.pop_front();
                }
                routes.backlog.push_back(line);
            }
        }
    }
}

enum Target {
    Stream { sender: mpsc::Sender<StreamMessage>, answers: bool },
    Backlog,
}

impl Routes {
    fn target_for(&mut self, line: &[u8]) -> Target {
        let responses: Vec<String> = match batch_members(line) {
            Some(members) => {
                members.iter().filter_map(|m| response_id(m.get().as_bytes())).collect()
            }
            None => response_id(line).into_iter().collect(),
        };
        if let Some(first) = responses.first() {
            let Some(&post) = self.by_request.get(first) else {
                return self.server_initiated();
            };
            for id in &responses {
                self.by_request.remove(id);
                self.by_progress.retain(|_, request| request != id);
            }
            let stream = self.posts.get_mut(&post).expect("a routed request has its post");
            let sender = stream.sender.clone();
            stream.unanswered = stream.unanswered.saturating_sub(responses.len());
            if stream.unanswered == 0 {
                // The last response closes the POST's stream once it is sent.
                self.posts.remove(&post);
            }
            return Target::Stream { sender, answers: true };
        }
        if let Some(post) = progress_request(line)
            .and_then(|token| self.by_progress.get(&token))
            .and_then(|request| self.by_request.get(request))
            .and_then(|post| self.posts.get(post))
        {
            return Target::Stream { sender: post.sender.clone(), answers: false };
        }
        self.server_initiated()
    }

    fn server_initiated(&mut self) -> Target {
        if let Some(newest) = self.posts.values().max_by_key(|p| p.opened) {
            return Target::Stream { sender: newest.sender.clone(), answers: false };
        }
        match &self.standalone {
            Some(sender) if !sender.is_closed() => {
                Target::Stream { sender: sender.clone(), answers: false }
            }
            _ => Target::Backlog,
        }
    }
}

fn response_id(bytes: &[u8]) -> Option<String> {
    let envelope = Envelope::parse(bytes)?;
    match envelope.kind() {
        Kind::Response { id } => Some(id_key(id)),
        _ => None,
    }
}

/// The progress token a notification refers to, as an id key.
fn progress_request(bytes: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Progress<'a> {
        #[serde(borrow, rename = "progressToken")]
        progress_token: &'a RawValue,
    }
    let envelope = Envelope::parse(bytes)?;
    let params: Progress = serde_json::from_str(envelope.params?.get()).ok()?;
    Some(id_key(params.progress_token))
}

/// The requests in a POST body and their progress tokens, or `None` when the body is neither a
/// JSON-RPC message nor a batch of them. Notifications and responses are not listed: they are
/// answered with 202 at once. One parse serves both the check and the listing.
pub fn posted_requests(body: &[u8]) -> Option<PostedRequests> {
    let requests = match batch_members(body) {
        Some(members) => members
            .iter()
            .filter_map(|m| Envelope::parse(m.get().as_bytes()))
            .filter_map(|envelope| posted_request(&envelope))
            .collect(),
        None => posted_request(&Envelope::parse(body)?).into_iter().collect(),
    };
    Some(PostedRequests { requests })
}

/// A request's id key and progress token key; `None` for anything but a request.
fn posted_request(envelope: &Envelope<'_>) -> Option<(String, Option<String>)> {
    let Kind::Request { id, .. } = envelope.kind() else { return None };
    #[derive(serde::Deserialize)]
    struct Meta<'a> {
        #[serde(borrow, rename = "progressToken")]
        progress_token: Option<&'a RawValue>,
    }
    #[derive(serde::Deserialize)]
    struct Params<'a> {
        #[serde(borrow, rename = "_meta")]
        meta: Option<Meta<'a>>,
    }
    let token = envelope
        .params
        .and_then(|p| serde_json::from_str::<Params>(p.get()).ok())
        .and_then(|p| p.meta)
        .and_then(|m| m.progress_token)
        .map(id_key);
    Some((id_key(id), token))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn posted(body: &[u8]) -> PostedRequests {
        posted_requests(body).expect("a JSON-RPC message or batch")
    }

    fn session() -> (Arc<HttpSession>, mpsc::Receiver<Result<Bytes, std::io::Error>>) {
        let (to_relay, from_agent) = mpsc::channel(8);
        (HttpSession::new("s".into(), "a".into(), "srv".into(), to_relay), from_agent)
    }

    #[test]
    fn posted_requests_list_ids_and_progress_tokens() {
        let single = posted(br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"_meta":{"progressToken":"p"}}}"#);
        assert_eq!(single.requests, [("3".to_owned(), Some("\"p\"".to_owned()))]);
        let batch =
            posted(br#"[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","method":"n"}]"#);
        assert_eq!(batch.requests, [("1".to_owned(), None)]);
        assert!(posted(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#).requests.is_empty());
        // Neither a message nor a batch: the handler answers it with a parse error.
        assert!(posted_requests(b"not json").is_none());
        assert!(posted_requests(b"42").is_none());
    }

    #[tokio::test]
    async fn responses_progress_and_server_requests_find_their_streams() {
        let (session, _relay) = session();
        let mut standalone = session.open_standalone_stream();
        let mut post = session.open_post_stream(&posted(
            br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"_meta":{"progressToken":9}}}"#,
        ));
        let progress = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":9,"progress":1}}"#;
        let sampling = r#"{"jsonrpc":"2.0","id":0,"method":"sampling/createMessage","params":{}}"#;
        let response = r#"{"jsonrpc":"2.0","id":7,"result":{}}"#;
        let later = r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#;
        for line in [progress, sampling, response, later] {
            session.route(Bytes::from(line)).await;
        }
        let mut next = async || post.recv().await.map(|m| (m.bytes, m.answers));
        assert_eq!(next().await.unwrap(), (Bytes::from(progress), false));
        assert_eq!(next().await.unwrap(), (Bytes::from(sampling), false));
        assert_eq!(next().await.unwrap(), (Bytes::from(response), true));
        assert!(next().await.is_none(), "the stream ends after its last response");
        assert_eq!(standalone.recv().await.unwrap(), StreamMessage::other(Bytes::from(later)));
    }

    #[tokio::test]
    async fn server_messages_wait_for_a_stream() {
        let (session, _relay) = session();
        let note = r#"{"jsonrpc":"2.0","method":"notifications/message","params":{}}"#;
        session.route(Bytes::from(note)).await;
        let mut standalone = session.open_standalone_stream();
        assert_eq!(standalone.recv().await.unwrap().bytes, note);
    }

    #[tokio::test]
    async fn unanswered_requests_are_answered_when_the_relay_ends() {
        let (session, _relay) = session();
        let mut post = session
            .open_post_stream(&posted(br#"{"jsonrpc":"2.0","id":"q","method":"tools/list"}"#));
        let (relay_side, dispatcher_side) = crate::proxy::lines::line_queue();
        drop(relay_side);
        session.clone().dispatch(dispatcher_side).await;
        let message = post.recv().await.unwrap();
        assert!(message.answers, "an orphan's error answers its request");
        let answer: serde_json::Value = serde_json::from_slice(&message.bytes).unwrap();
        assert_eq!(answer["id"], "q");
        assert_eq!(answer["error"]["code"], SESSION_CLOSED);
        assert!(session.ended.is_cancelled());
    }
}
