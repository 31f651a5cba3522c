//! The HTTP side of the upstream: one `reqwest` client, the session's headers, how requests are
//! built and sent, and how failures are described (by host and kind, never by URL or header).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{ACCEPT, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use reqwest::Url;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::HttpUpstreamConfig;
use super::loopback::{self, LoopbackClient};
use crate::proxy::jsonrpc::error_response;
use crate::proxy::relay::UPSTREAM_GONE;

pub(super) const MCP_SESSION_ID: HeaderName = HeaderName::from_static("mcp-session-id");
pub(super) const MCP_PROTOCOL_VERSION: HeaderName = HeaderName::from_static("mcp-protocol-version");
pub(super) const LAST_EVENT_ID: HeaderName = HeaderName::from_static("last-event-id");

/// Headers the transport sets itself; a configured header of the same name is ignored.
pub(super) const RESERVED: [&str; 6] = [
    "accept",
    "content-type",
    "content-length",
    "mcp-session-id",
    "mcp-protocol-version",
    "last-event-id",
];

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const DELETE_TIMEOUT: Duration = Duration::from_secs(3);
/// Same-origin 307/308 redirects followed per request (each keeps method and body).
const MAX_REDIRECTS: usize = 5;

/// What the server assigned during initialization.
#[derive(Default)]
struct Session {
    id: Option<HeaderValue>,
    version: Option<HeaderValue>,
    initialized: bool,
}

/// A one-shot "you may go on" for the line dispatcher; firing twice is harmless.
pub(super) struct Signal(Mutex<Option<oneshot::Sender<()>>>);

impl Signal {
    pub fn new() -> (Arc<Signal>, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        (Arc::new(Signal(Mutex::new(Some(tx)))), rx)
    }

    pub fn fire(&self) {
        if let Some(tx) = self.0.lock().expect("lock").take() {
            let _ = tx.send(());
        }
    }
}

/// One HTTP request to the MCP endpoint.
pub(super) enum Req<'a> {
    /// A JSON-RPC message. `on_send` fires when the connection takes the body; an
    /// `initialize` goes out without the (old) session's headers.
    Post {
        body: Bytes,
        on_send: Option<Arc<Signal>>,
        initialize: bool,
    },
    /// An SSE stream: the standalone one, or a resumption after `last_event_id`.
    Get {
        last_event_id: Option<&'a str>,
    },
    Delete,
}

/// A response, and the session id the request carried (to tell an expired session).
pub(super) struct Sent {
    pub response: Answer,
    pub session: Option<HeaderValue>,
}

/// A response as the exchange reads it, from whichever client carried the request: hyper's
/// own for loopback upstreams (no reqwest wrapper, whose conversion parses a URL for every
/// response), reqwest's for the rest.
pub(super) enum Answer {
    Reqwest(reqwest::Response),
    Loopback(http::Response<hyper::body::Incoming>),
}

impl Answer {
    pub fn status(&self) -> StatusCode {
        match self {
            Answer::Reqwest(response) => response.status(),
            Answer::Loopback(response) => response.status(),
        }
    }

    pub fn headers(&self) -> &HeaderMap {
        match self {
            Answer::Reqwest(response) => response.headers(),
            Answer::Loopback(response) => response.headers(),
        }
    }

    /// The next piece of the body; `None` at its end.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, SendError> {
        match self {
            Answer::Reqwest(response) => Ok(response.chunk().await?),
            Answer::Loopback(response) => loopback::chunk(response.body_mut()).await,
        }
    }
}

/// Why a message did not get through, as the agent is told.
#[derive(Debug)]
pub(super) enum Failure {
    Transport(&'static str),
    Timeout(Duration),
    Status(StatusCode),
    SessionExpired,
    StreamLost,
    NoAnswer,
    BadResponse(&'static str),
}

impl Failure {
    pub fn from_error(error: &(dyn std::error::Error + 'static)) -> Failure {
        Failure::Transport(error_kind(error))
    }

    fn describe(&self, host: &str) -> (String, &'static str) {
        match self {
            Failure::Transport(kind) => (
                format!(
                    "mcp-ledger could not get the message to the upstream MCP server at {host}: {kind}"
                ),
                "upstream_unreachable",
            ),
            Failure::Timeout(after) => (
                format!(
                    "the upstream MCP server at {host} did not answer within {} s",
                    after.as_secs_f64()
                ),
                "upstream_timeout",
            ),
            Failure::Status(status) => (
                format!("the upstream MCP server at {host} answered HTTP {status}"),
                "upstream_http_error",
            ),
            Failure::SessionExpired => (
                format!(
                    "the upstream MCP server at {host} ended the session (HTTP 404); reconnect to start a new one"
                ),
                "upstream_session_expired",
            ),
            Failure::StreamLost => (
                format!(
                    "the upstream MCP server at {host} closed the response stream before answering"
                ),
                "upstream_stream_lost",
            ),
            Failure::NoAnswer => (
                format!(
                    "the upstream MCP server at {host} accepted the request without answering it"
                ),
                "upstream_no_answer",
            ),
            Failure::BadResponse(what) => (
                format!("the upstream MCP server at {host} sent an unusable response: {what}"),
                "upstream_bad_response",
            ),
        }
    }
}

/// Why a request got no response: reqwest's error, or the loopback client's.
pub(super) type SendError = Box<dyn std::error::Error + Send + Sync>;

/// The kind of a transport error, in words that hold no URL, header or body.
pub(super) fn error_kind(error: &(dyn std::error::Error + 'static)) -> &'static str {
    let mut source = Some(error);
    while let Some(inner) = source {
        if let Some(io) = inner.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            match io.kind() {
                ConnectionRefused => return "connection refused",
                ConnectionReset | ConnectionAborted | BrokenPipe => return "connection reset",
                TimedOut => return "connection timed out",
                _ => {}
            }
        }
        source = inner.source();
    }
    if let Some(error) = error.downcast_ref::<reqwest::Error>() {
        if error.is_timeout() {
            return "timed out";
        } else if error.is_connect() {
            return "could not connect";
        } else if error.is_body() || error.is_decode() {
            return "the response broke off";
        }
    }
    if let Some(error) = error.downcast_ref::<hyper_util::client::legacy::Error>()
        && error.is_connect()
    {
        return "could not connect";
    }
    if error.is::<loopback::BodyBrokeOff>() {
        return "the response broke off";
    }
    "the HTTP request failed"
}

/// The error chain below the error's own message (reqwest's names the URL), for logs.
pub(super) fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error_kind(error).to_owned();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

fn is_loopback(url: &Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    crate::proxy::is_loopback_host(host.trim_start_matches('[').trim_end_matches(']'))
}

/// The HTTP client of every upstream session of the process (one for loopback upstreams, one
/// for remote ones): a client holds a TLS configuration and a connection pool, about a hundred
/// KiB, which a thousand idle sessions each building their own would multiply. Clones share
/// both; what differs per session (headers, the session id) is set per request.
fn shared_client(loopback: bool) -> Result<reqwest::Client, reqwest::Error> {
    static CLIENTS: [std::sync::OnceLock<reqwest::Client>; 2] =
        [std::sync::OnceLock::new(), std::sync::OnceLock::new()];
    let slot = &CLIENTS[usize::from(loopback)];
    if let Some(client) = slot.get() {
        return Ok(client.clone());
    }
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(CONNECT_TIMEOUT);
    if loopback {
        // Only `https://` loopback upstreams come here (plain HTTP ones go through
        // `loopback::client`). Servers that do not set TCP_NODELAY write an SSE response in two
        // small writes, and on a reused connection Nagle's algorithm holds the second until
        // our delayed ACK, ~40 ms later; reqwest cannot set TCP_QUICKACK, so these connections
        // are not reused (a fresh one starts in quick-ACK mode). Remote servers keep pooled
        // connections, where a new TLS handshake per request would cost more than it saves.
        builder = builder.pool_max_idle_per_host(0);
    }
    // A failed build is not cached: the next session tries again.
    let client = builder.build()?;
    Ok(slot.get_or_init(|| client).clone())
}

/// Everything one upstream connection shares between its tasks.
pub(super) struct Upstream {
    client: reqwest::Client,
    /// Set for `http://` upstreams on this machine: requests go over its pooled connections,
    /// to the URL as a `Uri` (parsed here once, not per request).
    loopback: Option<(&'static LoopbackClient, Uri)>,
    url: Url,
    /// `host[:port]` of the URL, the only part of it that messages and logs name.
    pub host: String,
    headers: HeaderMap,
    session: Mutex<Session>,
    pub request_timeout: Option<Duration>,
    lines: mpsc::Sender<Vec<u8>>,
    /// Cancelled when the server ends the session (404): every task winds down.
    pub expired: CancellationToken,
    /// Ids (keys) of requests the agent cancelled; their responses are not owed.
    cancelled: Mutex<std::collections::HashSet<String>>,
}

impl Upstream {
    pub fn new(
        config: &HttpUpstreamConfig,
        lines: mpsc::Sender<Vec<u8>>,
    ) -> Result<Upstream, reqwest::Error> {
        let on_this_machine = is_loopback(&config.url);
        let client = shared_client(on_this_machine)?;
        let loopback = (on_this_machine && config.url.scheme() == "http")
            .then(|| Uri::try_from(config.url.as_str()).ok())
            .flatten()
            .map(|uri| (loopback::client(CONNECT_TIMEOUT), uri));
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            if RESERVED.contains(&name.as_str()) {
                tracing::warn!(header = %name, "ignoring a configured header that the MCP transport sets itself");
                continue;
            }
            let mut value = value.clone();
            value.set_sensitive(true);
            headers.append(name.clone(), value);
        }
        // Here rather than on the reqwest client, so that the loopback client sends it too; a
        // configured User-Agent wins.
        headers
            .entry(USER_AGENT)
            .or_insert(HeaderValue::from_static(concat!("mcp-ledger/", env!("CARGO_PKG_VERSION"))));
        Ok(Upstream {
            client,
            loopback,
            url: config.url.clone(),
            host: super::host_label(&config.url),
            headers,
            session: Mutex::default(),
            request_timeout: config.request_timeout,
            lines,
            expired: CancellationToken::new(),
            cancelled: Mutex::default(),
        })
    }

    /// Queues one line (ending in `\n`) for the reader half of the pipe.
    pub async fn emit(&self, line: Vec<u8>) {
        let _ = self.lines.send(line).await;
    }

    /// A JSON-RPC error response line for request `id`.
    pub fn error_line(&self, id: &RawValue, failure: &Failure) -> Vec<u8> {
        let (message, reason) = failure.describe(&self.host);
        error_response(id, UPSTREAM_GONE, &message, reason)
    }

    pub fn session_id(&self) -> Option<HeaderValue> {
        self.session.lock().expect("lock").id.clone()
    }

    /// Takes the session id from the response to `initialize` (a new session replaces the old).
    pub fn set_session_id(&self, id: Option<&HeaderValue>) {
        let id =
            id.filter(|v| !v.is_empty() && v.as_bytes().iter().all(|b| (0x21..=0x7e).contains(b)));
        let mut session = self.session.lock().expect("lock");
        session.id = id.cloned().map(|mut v| {
            v.set_sensitive(true);
            v
        });
        session.version = None;
        session.initialized = false;
    }

    /// Records the initialize result: the session is established, at `version` if it is one.
    pub fn set_initialized(&self, version: Option<&str>) {
        let mut session = self.session.lock().expect("lock");
        session.version = version.and_then(|v| HeaderValue::from_str(v).ok());
        session.initialized = true;
    }

    pub fn initialized(&self) -> bool {
        self.session.lock().expect("lock").initialized
    }

    /// After a 404 to a request that carried `attached`: if that is still the session, it has
    /// expired, and everything winds down. Returns whether it was.
    pub fn expire_if_current(&self, attached: &Option<HeaderValue>) -> bool {
        let current = attached.is_some() && *attached == self.session_id();
        if current && !self.expired.is_cancelled() {
            tracing::warn!(host = %self.host, "the upstream ended the MCP session (HTTP 404)");
            self.expired.cancel();
        }
        current
    }

    pub fn note_cancelled(&self, keys: impl IntoIterator<Item = String>) {
        self.cancelled.lock().expect("lock").extend(keys);
    }

    /// Whether the agent cancelled the request with id `key`; forgets it when `forget`.
    pub fn was_cancelled(&self, key: &str, forget: bool) -> bool {
        let mut cancelled = self.cancelled.lock().expect("lock");
        if forget { cancelled.remove(key) } else { cancelled.contains(key) }
    }

    fn headers_for(&self, req: &Req<'_>) -> HeaderMap {
        let mut headers = self.headers.clone();
        let mut with_session = true;
        match req {
            Req::Post { body, initialize, .. } => {
                headers.insert(
                    ACCEPT,
                    HeaderValue::from_static("application/json, text/event-stream"),
                );
                headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
                with_session = !initialize;
            }
            Req::Get { last_event_id } => {
                headers.insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
                if let Some(id) = last_event_id.and_then(|id| HeaderValue::from_str(id).ok()) {
                    headers.insert(LAST_EVENT_ID, id);
                }
            }
            Req::Delete => {}
        }
        if with_session {
            let session = self.session.lock().expect("lock");
            if let Some(id) = &session.id {
                headers.insert(MCP_SESSION_ID, id.clone());
            }
            if let Some(version) = &session.version {
                headers.insert(MCP_PROTOCOL_VERSION, version.clone());
            }
        }
        headers
    }

    /// Sends `req`, following same-origin 307/308 redirects (which keep method and body).
    pub async fn send(&self, req: Req<'_>) -> Result<Sent, SendError> {
        let headers = self.headers_for(&req);
        let session = headers.get(MCP_SESSION_ID).cloned();
        // Owned only once a redirect moves it.
        let mut url = std::borrow::Cow::Borrowed(&self.url);
        for hop in 0..=MAX_REDIRECTS {
            let (method, body) = match &req {
                Req::Post { body, on_send, .. } => {
                    let body = match on_send {
                        // The body is handed over once the connection is ready to write it:
                        // that is when the message counts as sent, in pipe order.
                        Some(signal) if hop == 0 => {
                            let (signal, body) = (signal.clone(), body.clone());
                            reqwest::Body::wrap_stream(futures::stream::once(async move {
                                signal.fire();
                                Ok::<_, std::io::Error>(body)
                            }))
                        }
                        _ => reqwest::Body::from(body.clone()),
                    };
                    (Method::POST, Some(body))
                }
                Req::Get { .. } => (Method::GET, None),
                Req::Delete => (Method::DELETE, None),
            };
            let response = match &self.loopback {
                Some((client, uri)) => {
                    let uri = if hop == 0 { uri.clone() } else { Uri::try_from(url.as_str())? };
                    let mut request = http::Request::new(body.unwrap_or_default());
                    *request.method_mut() = method;
                    *request.uri_mut() = uri;
                    *request.headers_mut() = headers.clone();
                    Answer::Loopback(loopback::send(client, request).await?)
                }
                None => {
                    let mut builder =
                        self.client.request(method, url.as_ref().clone()).headers(headers.clone());
                    if let Some(body) = body {
                        builder = builder.body(body);
                    }
                    Answer::Reqwest(builder.send().await?)
                }
            };
            if matches!(
                response.status(),
                StatusCode::TEMPORARY_REDIRECT | StatusCode::PERMANENT_REDIRECT
            ) && hop < MAX_REDIRECTS
                && let Some(next) = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| url.join(l).ok())
                    .filter(|next| next.origin() == url.origin())
            {
                tracing::debug!(host = %self.host, status = %response.status(), "following a same-origin redirect");
                url = std::borrow::Cow::Owned(next);
                continue;
            }
            return Ok(Sent { response, session });
        }
        unreachable!("the last hop returns")
    }

    /// Ends the session on the server (`DELETE`); a 405 means the server does not allow it.
    pub async fn delete_session(&self) {
        if self.session_id().is_none() {
            return;
        }
        match tokio::time::timeout(DELETE_TIMEOUT, self.send(Req::Delete)).await {
            Ok(Ok(sent)) => {
                let status = sent.response.status();
                if !status.is_success() && status != StatusCode::METHOD_NOT_ALLOWED {
                    tracing::debug!(host = %self.host, %status, "the upstream refused to end the session");
                }
            }
            Ok(Err(error)) => {
                tracing::debug!(host = %self.host, error = %error_chain(&*error), "could not end the upstream session")
            }
            Err(_) => tracing::debug!(host = %self.host, "ending the upstream session timed out"),
        }
    }
}

/// Whether a response's `Content-Type` is `kind` (`application/json`, `text/event-stream`).
pub(super) fn has_content_type(response: &Answer, kind: &str) -> bool {
    response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(kind))
}

/// Reads a whole body, refusing more than `limit` bytes.
pub(super) async fn read_body(response: &mut Answer, limit: usize) -> Result<Vec<u8>, Failure> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| Failure::from_error(&*e))? {
        if body.len() + chunk.len() > limit {
            return Err(Failure::BadResponse("the body is too large"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}
