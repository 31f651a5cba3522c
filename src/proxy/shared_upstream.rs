//! One upstream connection serving many downstream sessions (`shared = true`).
//!
//! Each session's relay gets a queue of lines each way; this module multiplexes them onto the
//! real pipe.
//! Request ids and progress tokens are rewritten to values unique on the upstream connection and
//! mapped back on the way out — the only bytes a shared upstream changes, and only inside the
//! `id` and `progressToken` (and `requestId` of cancellations) values. The upstream is initialized
//! once; later sessions get the upstream's original `initialize` result under their own id.
//! Server-to-client requests go to the session with the newest request in flight; other
//! notifications go to every session.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::io::StreamReader;

use super::jsonrpc::{Envelope, Kind, id_key};
use super::lines::{LineOutbox, LineSink, line_queue};
use super::upstream::UpstreamPipe;

/// A session's request as it is known upstream.
struct Pending {
    session: u64,
    original_id: String,
    /// Whether this is the one `initialize` that reached upstream.
    initialize: bool,
    /// The upstream progress token (key) the request carries, if any.
    token: Option<String>,
}

#[derive(Default)]
struct Maps {
    sessions: HashMap<u64, mpsc::Sender<Vec<u8>>>,
    /// Upstream request id (key) -> whose request it is.
    requests: HashMap<String, Pending>,
    /// (session, original id key) -> upstream id text, for cancellations.
    by_original: HashMap<(u64, String), String>,
    /// Upstream progress token (key) -> (session, original token text).
    tokens: HashMap<String, (u64, String)>,
    /// Server-to-client request id (key) -> the session it was sent to.
    server_requests: HashMap<String, u64>,
    /// The session with the newest request in flight.
    newest: Option<u64>,
}

enum Initialization {
    NotStarted,
    Pending,
    /// The upstream's `result` object, raw.
    Done(String),
}

struct Inner {
    to_upstream: mpsc::Sender<Vec<u8>>,
    maps: Mutex<Maps>,
    initialization: Mutex<Initialization>,
    initialized_sent: AtomicBool,
    /// Bumped whenever `initialization` leaves `Pending`.
    init_done: watch::Sender<u64>,
    next: AtomicU64,
    alive: AtomicBool,
}

/// A running shared upstream. Cheap to clone.
#[derive(Clone)]
pub struct SharedUpstream {
    inner: Arc<Inner>,
}

impl SharedUpstream {
    /// Takes over `pipe` and starts routing its lines.
    pub fn start(pipe: UpstreamPipe) -> Self {
        // Ends when the last session and the reader let go of `Inner`.
        let (to_upstream, _writer) = pipe.writer.into_queue();
        let to_upstream = to_upstream.lines;
        let (init_done, _) = watch::channel(0u64);
        let inner = Arc::new(Inner {
            to_upstream,
            maps: Mutex::default(),
            initialization: Mutex::new(Initialization::NotStarted),
            initialized_sent: AtomicBool::new(false),
            init_done,
            next: AtomicU64::new(1),
            alive: AtomicBool::new(true),
        });
        let reader_inner = inner.clone();
        let mut child = pipe.child;
        let mut reader = pipe.reader;
        tokio::spawn(async move {
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let trimmed = line.trim_ascii_end().to_vec();
                reader_inner.on_upstream_line(trimmed).await;
            }
            // The upstream is gone: every session sees its end.
            reader_inner.alive.store(false, Ordering::SeqCst);
            reader_inner.maps.lock().expect("lock").sessions.clear();
            if let Some(child) = child.as_mut() {
                let _ = child.wait().await;
            }
        });
        SharedUpstream { inner }
    }

    /// Whether the upstream is still connected.
    pub fn is_alive(&self) -> bool {
        self.inner.alive.load(Ordering::SeqCst)
    }

    /// The line queues of one more session.
    pub fn attach(&self) -> UpstreamPipe {
        let session = self.inner.next.fetch_add(1, Ordering::SeqCst);
        let (relay_writer, mux_reader) = line_queue();
        let (to_session, session_outbox) = mpsc::channel::<Vec<u8>>(1024);
        self.inner.maps.lock().expect("lock").sessions.insert(session, to_session);
        // The relay reads the session's lines straight from its queue; the queue ends, and with
        // it the relay's reader, when the session is forgotten or the upstream is gone.
        let session_lines = ReceiverStream::new(session_outbox).map(|mut line| {
            line.push(b'\n');
            Ok::<_, std::io::Error>(Bytes::from(line))
        });
        let inner = self.inner.clone();
        tokio::spawn(async move { inner.serve_session(session, mux_reader).await });
        UpstreamPipe {
            reader: Box::pin(StreamReader::new(session_lines)),
            writer: LineSink::Queue(relay_writer),
            child: None,
        }
    }
}

#[derive(Deserialize)]
struct MetaToken<'a> {
    #[serde(borrow, rename = "progressToken")]
    progress_token: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ParamsWithMeta<'a> {
    #[serde(borrow, rename = "_meta")]
    meta: Option<MetaToken<'a>>,
    #[serde(borrow, rename = "requestId")]
    request_id: Option<&'a RawValue>,
}

/// Where `raw` (a slice borrowed from `line`) starts in `line`.
fn offset_in(line: &[u8], raw: &RawValue) -> usize {
    raw.get().as_ptr() as usize - line.as_ptr() as usize
}

/// `line` with the borrowed values replaced, each given as (value inside `line`, new text).
fn rewrite(line: &[u8], mut edits: Vec<(usize, usize, String)>) -> Vec<u8> {
    edits.sort_by_key(|(start, _, _)| *start);
    let mut out = Vec::with_capacity(line.len() + 32);
    let mut at = 0;
    for (start, len, text) in edits {
        out.extend_from_slice(&line[at..start]);
        out.extend_from_slice(text.as_bytes());
        at = start + len;
    }
    out.extend_from_slice(&line[at..]);
    out
}

impl Inner {
    async fn serve_session(self: Arc<Self>, session: u64, mut from_relay: LineOutbox) {
        while let Some(line) = from_relay.next_message().await {
            if let Some(line) = self.session_line(session, line).await {
                let _ = self.to_upstream.send(line).await;
            }
        }
        // The session ended: cancel what it still has in flight and forget it.
        let cancels: Vec<String> = {
            let mut maps = self.maps.lock().expect("lock");
            maps.sessions.remove(&session);
            maps.tokens.retain(|_, (owner, _)| *owner != session);
            maps.server_requests.retain(|_, owner| *owner != session);
            let mine: Vec<(String, String)> = maps
                .by_original
                .iter()
                .filter(|((owner, _), _)| *owner == session)
                .map(|((_, original), upstream)| (original.clone(), upstream.clone()))
                .collect();
            mine.into_iter()
                .map(|(original, upstream)| {
                    maps.by_original.remove(&(session, original));
                    maps.requests.remove(&id_key_text(&upstream));
                    upstream
                })
                .collect()
        };
        for upstream_id in cancels {
            let cancel = format!(
                r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":{upstream_id},"reason":"the agent's session ended"}}}}"#
            );
            let _ = self.to_upstream.send(cancel.into_bytes()).await;
        }
    }

    /// What to send upstream for a line from `session`, if anything.
    async fn session_line(&self, session: u64, line: Vec<u8>) -> Option<Vec<u8>> {
        // Not a single message (a batch, or not JSON): passed on as it is. A batch's requests
        // keep their ids, so their answers cannot be routed back; shared upstreams need
        // clients that do not batch (batching left MCP in 2025-06-18).
        let Some(envelope) = Envelope::parse(&line) else { return Some(line) };
        match envelope.kind() {
            Kind::Request { id, method } => {
                if method == "initialize" {
                    return self.initialize(session, id, &line).await;
                }
                let upstream_id = format!("\"mcpl-{}\"", self.next.fetch_add(1, Ordering::SeqCst));
                let mut edits = vec![(offset_in(&line, id), id.get().len(), upstream_id.clone())];
                let params: Option<ParamsWithMeta> =
                    envelope.params.and_then(|p| serde_json::from_str(p.get()).ok());
                let mut maps = self.maps.lock().expect("lock");
                let mut token_key = None;
                if let Some(token) = params.and_then(|p| p.meta).and_then(|m| m.progress_token) {
                    let upstream_token =
                        format!("\"mcpl-p-{}\"", self.next.fetch_add(1, Ordering::SeqCst));
                    edits.push((
                        offset_in(&line, token),
                        token.get().len(),
                        upstream_token.clone(),
                    ));
                    let key = id_key_text(&upstream_token);
                    maps.tokens.insert(key.clone(), (session, token.get().to_owned()));
                    token_key = Some(key);
                }
                let pending = Pending {
                    session,
                    original_id: id.get().to_owned(),
                    initialize: false,
                    token: token_key,
                };
                maps.requests.insert(id_key_text(&upstream_id), pending);
                maps.by_original.insert((session, id_key(id)), upstream_id);
                maps.newest = Some(session);
                Some(rewrite(&line, edits))
            }
            Kind::Notification { method } => {
                if method == "notifications/initialized" {
                    // The upstream was initialized once; it expects this once.
                    let first = !self.initialized_sent.swap(true, Ordering::SeqCst);
                    return first.then_some(line);
                }
                if method == "notifications/cancelled" {
                    let params: Option<ParamsWithMeta> =
                        envelope.params.and_then(|p| serde_json::from_str(p.get()).ok());
                    if let Some(request) = params.and_then(|p| p.request_id) {
                        let maps = self.maps.lock().expect("lock");
                        let upstream = maps.by_original.get(&(session, id_key(request)))?;
                        let edit =
                            (offset_in(&line, request), request.get().len(), upstream.clone());
                        return Some(rewrite(&line, vec![edit]));
                    }
                }
                Some(line)
            }
            // Answers to server-to-client requests keep the server's ids, unique upstream.
            Kind::Response { id } => {
                self.maps.lock().expect("lock").server_requests.remove(&id_key(id));
                Some(line)
            }
            Kind::Other => Some(line),
        }
    }

    /// The first `initialize` goes upstream; later ones wait for its result and get a copy. If
    /// the upstream refuses it, the next waiting session tries its own.
    async fn initialize(&self, session: u64, id: &RawValue, line: &[u8]) -> Option<Vec<u8>> {
        let mut changes = self.init_done.subscribe();
        loop {
            let result = {
                let mut state = self.initialization.lock().expect("lock");
                match &*state {
                    Initialization::NotStarted => {
                        *state = Initialization::Pending;
                        None
                    }
                    Initialization::Pending => Some(None),
                    Initialization::Done(result) => Some(Some(result.clone())),
                }
            };
            match result {
                // Ours goes upstream.
                None => {
                    let upstream_id =
                        format!("\"mcpl-{}\"", self.next.fetch_add(1, Ordering::SeqCst));
                    let pending = Pending {
                        session,
                        original_id: id.get().to_owned(),
                        initialize: true,
                        token: None,
                    };
                    self.maps
                        .lock()
                        .expect("lock")
                        .requests
                        .insert(id_key_text(&upstream_id), pending);
                    let edit = (offset_in(line, id), id.get().len(), upstream_id);
                    return Some(rewrite(line, vec![edit]));
                }
                Some(None) => {
                    if changes.changed().await.is_err() {
                        return None;
                    }
                }
                Some(Some(result)) => {
                    let answer =
                        format!(r#"{{"jsonrpc":"2.0","id":{},"result":{result}}}"#, id.get());
                    let sender = self.maps.lock().expect("lock").sessions.get(&session).cloned();
                    if let Some(sender) = sender {
                        let _ = sender.send(answer.into_bytes()).await;
                    }
                    return None;
                }
            }
        }
    }

    async fn on_upstream_line(&self, line: Vec<u8>) {
        let Some(envelope) = Envelope::parse(&line) else { return self.broadcast(line).await };
        let (target, out) = match envelope.kind() {
            Kind::Response { id } => {
                let pending = self.maps.lock().expect("lock").requests.remove(&id_key(id));
                let Some(pending) = pending else { return };
                if pending.initialize {
                    if let Some(result) = envelope.result {
                        *self.initialization.lock().expect("lock") =
                            Initialization::Done(result.get().to_owned());
                    } else {
                        // A failed initialize may be tried again by the next session.
                        *self.initialization.lock().expect("lock") = Initialization::NotStarted;
                    }
                    self.init_done.send_modify(|generation| *generation += 1);
                }
                {
                    let mut maps = self.maps.lock().expect("lock");
                    maps.by_original.remove(&(pending.session, id_key_text(&pending.original_id)));
                    if let Some(token) = &pending.token {
                        maps.tokens.remove(token);
                    }
                }
                let edit = (offset_in(&line, id), id.get().len(), pending.original_id);
                (Some(pending.session), rewrite(&line, vec![edit]))
            }
            Kind::Notification { .. } => {
                let params: Option<ParamsWithMeta> =
                    envelope.params.and_then(|p| serde_json::from_str(p.get()).ok());
                let token = params.and_then(|p| p.meta).and_then(|m| m.progress_token);
                // Progress carries its token at params.progressToken, not in _meta.
                let token = token.or_else(|| progress_token(envelope.params));
                match token {
                    Some(token) => {
                        let owner =
                            self.maps.lock().expect("lock").tokens.get(&id_key(token)).cloned();
                        match owner {
                            Some((session, original)) => {
                                let edit = (offset_in(&line, token), token.get().len(), original);
                                (Some(session), rewrite(&line, vec![edit]))
                            }
                            None => (None, line.clone()),
                        }
                    }
                    None => (None, line.clone()),
                }
            }
            Kind::Request { id, .. } => {
                let mut maps = self.maps.lock().expect("lock");
                let session = maps
                    .newest
                    .filter(|s| maps.sessions.contains_key(s))
                    .or_else(|| maps.sessions.keys().next().copied());
                if let Some(session) = session {
                    maps.server_requests.insert(id_key(id), session);
                }
                (session, line.clone())
            }
            Kind::Other => (None, line.clone()),
        };
        match target {
            Some(session) => {
                let sender = self.maps.lock().expect("lock").sessions.get(&session).cloned();
                if let Some(sender) = sender {
                    let _ = sender.send(out).await;
                }
            }
            None => self.broadcast(out).await,
        }
    }

    async fn broadcast(&self, line: Vec<u8>) {
        let senders: Vec<_> = self.maps.lock().expect("lock").sessions.values().cloned().collect();
        for sender in senders {
            let _ = sender.send(line.clone()).await;
        }
    }
}

fn progress_token(params: Option<&RawValue>) -> Option<&RawValue> {
    #[derive(Deserialize)]
    struct Progress<'a> {
        #[serde(borrow, rename = "progressToken")]
        progress_token: &'a RawValue,
    }
    serde_json::from_str::<Progress>(params?.get()).ok().map(|p| p.progress_token)
}

fn id_key_text(raw: &str) -> String {
    serde_json::from_str::<&RawValue>(raw).map(id_key).unwrap_or_else(|_| raw.to_owned())
}
