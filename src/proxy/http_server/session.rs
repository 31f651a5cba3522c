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

/// Where one POST's messages go, and how many of its requests are still unanswered.
struct PostStream {
    sender: mpsc::Sender<Bytes>,
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
    standalone: Option<mpsc::Sender<Bytes>>,
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
    pub fn open_post_stream(&self, posted: &PostedRequests) -> mpsc::Receiver<Bytes> {
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
    pub fn open_standalone_stream(&self) -> mpsc::Receiver<Bytes> {
        let (sender, receiver) = mpsc::channel(256);
        let mut routes = self.routes.lock().expect("lock");
        while let Some(message) = routes.backlog.pop_front() {
            if sender.try_send(message.clone()).is_err() {
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
        let orphans: Vec<(String, mpsc::Sender<Bytes>)> = {
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
                let _ = sender.send(Bytes::from(answer.trim_ascii_end().to_vec())).await;
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
            Target::Stream(sender) => {
                let _ = sender.send(line).await;
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
    Stream(mpsc::Sender<Bytes>),
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
            return Target::Stream(sender);
        }
        if let Some(post) = progress_request(line)
            .and_then(|token| self.by_progress.get(&token))
            .and_then(|request| self.by_request.get(request))
            .and_then(|post| self.posts.get(post))
        {
            return Target::Stream(post.sender.clone());
        }
        self.server_initiated()
    }

    fn server_initiated(&mut self) -> Target {
        if let Some(newest) = self.posts.values().max_by_key(|p| p.opened) {
            return Target::Stream(newest.sender.clone());
        }
        match &self.standalone {
            Some(sender) if !sender.is_closed() => Target::Stream(sender.clone()),
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

/// The requests in a POST body and their progress tokens. Notifications and responses are not
/// listed: they are answered with 202 at once.
pub fn posted_requests(body: &[u8]) -> PostedRequests {
    let one = |bytes: &[u8]| -> Option<(String, Option<String>)> {
        let envelope = Envelope::parse(bytes)?;
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
    };
    let requests = match batch_members(body) {
        Some(members) => members.iter().filter_map(|m| one(m.get().as_bytes())).collect(),
        None => one(body).into_iter().collect(),
    };
    PostedRequests { requests }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> (Arc<HttpSession>, mpsc::Receiver<Result<Bytes, std::io::Error>>) {
        let (to_relay, from_agent) = mpsc::channel(8);
        (HttpSession::new("s".into(), "a".into(), "srv".into(), to_relay), from_agent)
    }

    #[test]
    fn posted_requests_list_ids_and_progress_tokens() {
        let posted = posted_requests(br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"_meta":{"progressToken":"p"}}}"#);
        assert_eq!(posted.requests, [("3".to_owned(), Some("\"p\"".to_owned()))]);
        let batch = posted_requests(
            br#"[{"jsonrpc":"2.0","id":1,"method":"a"},{"jsonrpc":"2.0","method":"n"}]"#,
        );
        assert_eq!(batch.requests, [("1".to_owned(), None)]);
        assert!(posted_requests(br#"{"jsonrpc":"2.0","id":1,"result":{}}"#).requests.is_empty());
    }

    #[tokio::test]
    async fn responses_progress_and_server_requests_find_their_streams() {
        let (session, _relay) = session();
        let mut standalone = session.open_standalone_stream();
        let mut post = session.open_post_stream(&posted_requests(
            br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"_meta":{"progressToken":9}}}"#,
        ));
        let progress = r#"{"jsonrpc":"2.0","method":"notifications/progress","params":{"progressToken":9,"progress":1}}"#;
        let sampling = r#"{"jsonrpc":"2.0","id":0,"method":"sampling/createMessage","params":{}}"#;
        let response = r#"{"jsonrpc":"2.0","id":7,"result":{}}"#;
        let later = r#"{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}"#;
        for line in [progress, sampling, response, later] {
            session.route(Bytes::from(line)).await;
        }
        assert_eq!(post.recv().await.unwrap(), progress);
        assert_eq!(post.recv().await.unwrap(), sampling);
        assert_eq!(post.recv().await.unwrap(), response);
        assert!(post.recv().await.is_none(), "the stream ends after its last response");
        assert_eq!(standalone.recv().await.unwrap(), later);
    }

    #[tokio::test]
    async fn server_messages_wait_for_a_stream() {
        let (session, _relay) = session();
        let note = r#"{"jsonrpc":"2.0","method":"notifications/message","params":{}}"#;
        session.route(Bytes::from(note)).await;
        let mut standalone = session.open_standalone_stream();
        assert_eq!(standalone.recv().await.unwrap(), note);
    }

    #[tokio::test]
    async fn unanswered_requests_are_answered_when_the_relay_ends() {
        let (session, _relay) = session();
        let mut post = session.open_post_stream(&posted_requests(
            br#"{"jsonrpc":"2.0","id":"q","method":"tools/list"}"#,
        ));
        let (relay_side, dispatcher_side) = crate::proxy::lines::line_queue();
        drop(relay_side);
        session.clone().dispatch(dispatcher_side).await;
        let answer: serde_json::Value =
            serde_json::from_slice(&post.recv().await.unwrap()).unwrap();
        assert_eq!(answer["id"], "q");
        assert_eq!(answer["error"]["code"], SESSION_CLOSED);
        assert!(session.ended.is_cancelled());
    }
}
