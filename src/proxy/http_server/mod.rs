//! `mcp-ledger serve`: the MCP Streamable HTTP transport, one endpoint per upstream at
//! `/mcp/{server}`, in front of the same relay that serves stdio.
//!
//! Served with axum directly rather than through rmcp's `StreamableHttpService`, which would
//! require a typed `ServerHandler` and so re-serialise every message; here the bytes an agent POSTs
//! are the bytes the relay forwards. Each downstream session has its own relay and upstream.

// Handlers return `Result<_, Response>` to bail out with a finished HTTP answer; the size of
// `Response` in a short-lived `Err` costs nothing worth boxing for.
#![allow(clippy::result_large_err)]

mod guard;
mod session;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

pub use guard::{ANONYMOUS, AgentTokens, AuthRejection, OriginPolicy};
pub use session::HttpSession;
use session::{StreamMessage, posted_requests};

use super::jsonrpc::{Envelope, Kind};
use super::lines::{LineSink, line_queue};
use super::relay::{RelayOptions, relay_with};
use super::shared_upstream::SharedUpstream;
use super::upstream::{self, UpstreamSpec};
use crate::intercept::{
    AuthFailure, BodyPolicy, HoldNotifier, RecordedMethods, SessionIdentity, SessionRecorder,
    SharedPolicy, record_auth_failure,
};
use crate::store::Store;
use crate::store::writer::Ledger;
use crate::telemetry::{self, UpstreamError};

const SESSION_HEADER: &str = "mcp-session-id";

/// How long a POST's answer may take to still go back as plain JSON to a client that accepts
/// both JSON and SSE (see `json_or_sse_response`).
const JSON_ANSWER_WAIT: Duration = Duration::from_secs(1);
/// How long an upstream gets to finish once its session ends.
const UPSTREAM_GRACE: Duration = Duration::from_secs(5);

/// One upstream endpoint.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub upstream: UpstreamSpec,
    pub recorded: RecordedMethods,
    /// How long a recorded call may go unanswered; `None` waits forever.
    pub call_timeout: Option<Duration>,
    /// One upstream connection for every session, instead of one each.
    pub shared: bool,
    /// How bodies are scanned for PII and kept.
    pub bodies: BodyPolicy,
}

/// Everything `serve` needs, already validated and with secrets resolved.
#[derive(Clone)]
pub struct ServeSettings {
    pub endpoints: HashMap<String, Endpoint>,
    pub agents: AgentTokens,
    pub origins: OriginPolicy,
    pub max_body_bytes: usize,
    pub max_sessions: usize,
    pub session_idle_timeout: Duration,
    /// The policy every call is put to, and the store held calls wait on.
    pub policy: SharedPolicy,
    pub store: Arc<dyn Store>,
    /// Told about every held call (the approvals webhook), if configured.
    pub notifier: Option<Arc<dyn HoldNotifier>>,
    /// Serve Prometheus metrics at `GET /metrics`.
    pub metrics: bool,
}

/// Shared state of the HTTP front end.
pub struct HttpProxy {
    settings: ServeSettings,
    ledger: Ledger,
    sessions: Mutex<HashMap<String, Arc<HttpSession>>>,
    /// The implicit session of each (agent, endpoint) for stateless-revision clients.
    implicit: Mutex<HashMap<(String, String), String>>,
    /// The running upstream of each `shared` endpoint.
    shared_upstreams: Mutex<HashMap<String, SharedUpstream>>,
    /// Sessions being started and not yet in `sessions`; counted against `max_sessions`.
    starting: AtomicUsize,
}

/// A claimed session slot; released when dropped (by then the session is in the map, or failed).
struct SlotReservation<'a>(&'a AtomicUsize);

impl Drop for SlotReservation<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl HttpProxy {
    pub fn new(settings: ServeSettings, ledger: Ledger) -> Arc<Self> {
        Arc::new(HttpProxy {
            settings,
            ledger,
            sessions: Mutex::default(),
            implicit: Mutex::default(),
            shared_upstreams: Mutex::default(),
            starting: AtomicUsize::new(0),
        })
    }

    /// The axum router: `/mcp/{server}` for POST, GET and DELETE, `/healthz`, and `/metrics`
    /// unless turned off.
    pub fn router(self: &Arc<Self>) -> Router {
        let mut router = Router::new()
            .route("/mcp/{server}", post(handle_post).get(handle_get).delete(handle_delete))
            .route("/healthz", axum::routing::get(|| async { "ok" }));
        if self.settings.metrics {
            router = router.route("/metrics", axum::routing::get(handle_metrics));
        }
        router.layer(DefaultBodyLimit::max(self.settings.max_body_bytes)).with_state(self.clone())
    }

    pub fn session_count(&self) -> usize {
        self.sessions.lock().expect("lock").len()
    }

    /// Ends every session and waits for their last events to be committed.
    pub async fn close_all(&self) {
        let sessions: Vec<_> = self.sessions.lock().expect("lock").values().cloned().collect();
        for session in &sessions {
            session.close_because("the proxy shut down");
        }
        for session in sessions {
            let _ = tokio::time::timeout(UPSTREAM_GRACE * 2, session.ended.cancelled()).await;
        }
    }

    /// Closes sessions idle for longer than the configured timeout; run periodically.
    pub fn expire_idle_sessions(&self) {
        let timeout = self.settings.session_idle_timeout;
        for session in self.sessions.lock().expect("lock").values() {
            if session.idle_for() > timeout && !session.has_open_streams() {
                tracing::info!(session = %session.id, agent = %session.agent, "closing an idle session");
                session.close_because(&format!("idle for more than {} s", timeout.as_secs()));
            }
        }
    }

    fn session(&self, id: &str) -> Option<Arc<HttpSession>> {
        self.sessions.lock().expect("lock").get(id).cloned()
    }

    /// Starts a session for `agent` on `server`: connects the upstream and starts its relay.
    fn start_session(
        self: &Arc<Self>,
        agent: &str,
        server: &str,
        endpoint: &Endpoint,
    ) -> Result<Arc<HttpSession>, Response> {
        // Held until the session is in the map, so concurrent starts cannot overshoot the limit.
        let slot = self.reserve_slot()?;
        let pipe = self.upstream_for(server, endpoint).map_err(|error| {
            telemetry::upstream_error(server, UpstreamError::StartFailed);
            tracing::error!(%error, %server, "cannot start the upstream");
            error_reply(
                StatusCode::BAD_GATEWAY,
                &format!("cannot start the upstream server `{server}`"),
            )
        })?;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let identity = SessionIdentity {
            session_id: id.clone(),
            agent: agent.to_owned(),
            server: server.to_owned(),
            transport: "http",
            upstream: endpoint.upstream.describe(),
        };
        let recorder =
            SessionRecorder::new(self.ledger.clone(), identity, endpoint.recorded.clone())
                .with_policy(self.settings.policy.clone(), self.settings.store.clone())
                .with_notifier(self.settings.notifier.clone())
                .with_bodies(endpoint.bodies.clone());
        let (to_relay, from_agent) = mpsc::channel(256);
        let agent_in = tokio_util::io::StreamReader::new(ReceiverStream::new(from_agent));
        let (relay_out, dispatcher_in) = line_queue();
        let session = HttpSession::new(id.clone(), agent.to_owned(), server.to_owned(), to_relay);
        session.set_recorder(recorder.clone());
        let call_timeout = endpoint.call_timeout;
        tokio::spawn(session.clone().dispatch(dispatcher_in));
        tokio::spawn(async move {
            let options = RelayOptions { grace: UPSTREAM_GRACE, call_timeout };
            let end = relay_with(
                options,
                recorder,
                agent_in,
                LineSink::Queue(relay_out),
                pipe.reader,
                pipe.writer,
            )
            .await;
            tracing::debug!(?end, "http session relay ended");
            upstream::reap(pipe.child, UPSTREAM_GRACE).await;
        });
        let mut sessions = self.sessions.lock().expect("lock");
        sessions.insert(id.clone(), session.clone());
        // Released under the lock `reserve_slot` counts under: a moment of both would count this
        // session twice and refuse a start the limit allows.
        drop(slot);
        drop(sessions);
        let proxy = Arc::downgrade(self);
        let ended = session.ended.clone();
        tokio::spawn(async move {
            ended.cancelled().await;
            if let Some(proxy) = proxy.upgrade() {
                proxy.sessions.lock().expect("lock").remove(&id);
            }
        });
        tracing::info!(session = %session.id, %agent, %server, "session started");
        Ok(session)
    }

    /// Claims room for one more session, making room at `max_sessions` ([`make_room`]).
    fn reserve_slot(&self) -> Result<SlotReservation<'_>, Response> {
        let mut sessions = self.sessions.lock().expect("lock");
        let starting = self.starting.load(Ordering::SeqCst);
        let limit = self.settings.max_sessions;
        if sessions.len() + starting >= limit {
            make_room(&mut sessions, limit)?;
        }
        self.starting.fetch_add(1, Ordering::SeqCst);
        Ok(SlotReservation(&self.starting))
    }

    /// A pipe to the endpoint's upstream: a new connection, or a share of the running one.
    fn upstream_for(
        &self,
        server: &str,
        endpoint: &Endpoint,
    ) -> Result<upstream::UpstreamPipe, super::stdio::StdioError> {
        if !endpoint.shared {
            return upstream::connect(&endpoint.upstream);
        }
        let mut shared = self.shared_upstreams.lock().expect("lock");
        if let Some(running) = shared.get(server).filter(|s| s.is_alive()) {
            return Ok(running.attach());
        }
        // None yet, or the last one went away: a fresh upstream for this and later sessions.
        let running = SharedUpstream::start(upstream::connect(&endpoint.upstream)?);
        let pipe = running.attach();
        shared.insert(server.to_owned(), running);
        Ok(pipe)
    }

    /// The implicit session of `agent` on `server`, started on first use.
    fn implicit_session(
        self: &Arc<Self>,
        agent: &str,
        server: &str,
        endpoint: &Endpoint,
    ) -> Result<Arc<HttpSession>, Response> {
        let key = (agent.to_owned(), server.to_owned());
        let existing = self.implicit.lock().expect("lock").get(&key).cloned();
        if let Some(session) = existing.and_then(|id| self.session(&id)) {
            return Ok(session);
        }
        let session = self.start_session(agent, server, endpoint)?;
        self.implicit.lock().expect("lock").insert(key.clone(), session.id.clone());
        let proxy = Arc::downgrade(self);
        let (ended, id) = (session.ended.clone(), session.id.clone());
        tokio::spawn(async move {
            ended.cancelled().await;
            if let Some(proxy) = proxy.upgrade() {
                proxy.implicit.lock().expect("lock").retain(|_, current| *current != id);
            }
        });
        Ok(session)
    }

    /// Checks `Host`/`Origin` and the bearer token; records and refuses failures.
    async fn admit(
        &self,
        server: &str,
        remote: SocketAddr,
        headers: &HeaderMap,
    ) -> Result<(String, &Endpoint), Response> {
        if let Err(which) = self.settings.origins.check(headers) {
            return Err(error_reply(
                StatusCode::FORBIDDEN,
                &format!("the {which} header is not allowed"),
            ));
        }
        let Some(endpoint) = self.settings.endpoints.get(server) else {
            return Err(error_reply(
                StatusCode::NOT_FOUND,
                &format!("no MCP server named `{server}`"),
            ));
        };
        match self.settings.agents.authenticate(headers) {
            Ok(agent) => Ok((agent, endpoint)),
            Err(rejection) => {
                Err(self.refuse_auth(server, remote, headers, rejection.reason(), None).await)
            }
        }
    }

    async fn refuse_auth(
        &self,
        server: &str,
        remote: SocketAddr,
        headers: &HeaderMap,
        reason: &'static str,
        token_agent: Option<String>,
    ) -> Response {
        let failure = AuthFailure {
            server: server.to_owned(),
            remote_addr: remote.to_string(),
            reason,
            user_agent: headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            token_agent,
            target_session: headers
                .get(SESSION_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        };
        tracing::warn!(%server, remote = %remote, %reason, "refused an unauthenticated request");
        if let Err(error) = record_auth_failure(&self.ledger, &failure).await {
            tracing::error!(%error, "could not record an auth failure");
        }
        let mut response =
            error_reply(StatusCode::UNAUTHORIZED, &format!("unauthorized: {reason}"));
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        response
    }

    /// The session a request names, if it exists and belongs to `agent`.
    async fn owned_session(
        &self,
        server: &str,
        agent: &str,
        remote: SocketAddr,
        headers: &HeaderMap,
    ) -> Result<Option<Arc<HttpSession>>, Response> {
        let Some(id) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
            return Ok(None);
        };
        let Some(session) = self.session(id).filter(|s| s.server == server) else {
            // 404 tells a client its session is gone and it should initialize again.
            return Err(error_reply(StatusCode::NOT_FOUND, "unknown or expired MCP session"));
        };
        if session.agent != agent {
            let reason = "token of another agent for this session";
            return Err(self
                .refuse_auth(server, remote, headers, reason, Some(agent.to_owned()))
                .await);
        }
        // A request for it is activity: eviction at `max_sessions` looks elsewhere first.
        session.touch();
        Ok(Some(session))
    }
}

async fn handle_post(
    State(proxy): State<Arc<HttpProxy>>,
    Path(server): Path<String>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let (agent, endpoint) = match proxy.admit(&server, remote, &headers).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    let body = match body {
        Ok(body) => body,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let limit = proxy.settings.max_body_bytes;
            let mut response = jsonrpc_error_reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                -32600,
                &format!("the request body exceeds the proxy's limit of {limit} bytes"),
            );
            // The rest of the body was never read, so this connection cannot carry another
            // request: say so, or a client may reuse it and lose its next request.
            response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
            return response;
        }
        Err(rejection) => return error_reply(rejection.status(), &rejection.body_text()),
    };
    let Some(posted) = posted_requests(&body) else {
        return jsonrpc_error_reply(
            StatusCode::BAD_REQUEST,
            -32700,
            "the body is not a JSON-RPC message",
        );
    };
    let existing = match proxy.owned_session(&server, &agent, remote, &headers).await {
        Ok(session) => session,
        Err(response) => return response,
    };
    let (session, created) = match existing {
        Some(session) => (session, false),
        None if is_initialize(&body) => match proxy.start_session(&agent, &server, endpoint) {
            Ok(session) => (session, true),
            Err(response) => return response,
        },
        // The stateless revision (2026-07-28) has no session header: its requests share one
        // implicit session per agent and endpoint, which still records them as one session.
        None if is_stateless(&body) => match proxy.implicit_session(&agent, &server, endpoint) {
            Ok(session) => (session, false),
            Err(response) => return response,
        },
        None => {
            return jsonrpc_error_reply(
                StatusCode::BAD_REQUEST,
                -32600,
                "missing Mcp-Session-Id header: start a session with an initialize request",
            );
        }
    };

    if posted.requests.is_empty() {
        // Notifications and responses: accepted once handed to the relay, which records and
        // forwards them in order.
        return if session.send_to_relay(body.to_vec()).await {
            StatusCode::ACCEPTED.into_response()
        } else {
            error_reply(StatusCode::NOT_FOUND, "the MCP session has ended")
        };
    }
    let stream = session.open_post_stream(&posted);
    if !session.send_to_relay(body.to_vec()).await {
        return error_reply(StatusCode::NOT_FOUND, "the MCP session has ended");
    }
    let mut response = if accepts_event_stream(&headers) {
        json_or_sse_response(stream, posted.requests.len()).await
    } else {
        json_response(stream).await
    };
    if created {
        let value = HeaderValue::from_str(&session.id).expect("a hex session id is a valid header");
        response.headers_mut().insert(SESSION_HEADER, value);
    }
    response
}

async fn handle_get(
    State(proxy): State<Arc<HttpProxy>>,
    Path(server): Path<String>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let (agent, _) = match proxy.admit(&server, remote, &headers).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    if !accepts_event_stream(&headers) {
        return error_reply(
            StatusCode::NOT_ACCEPTABLE,
            "GET opens an event stream: send Accept: text/event-stream",
        );
    }
    match proxy.owned_session(&server, &agent, remote, &headers).await {
        Ok(Some(session)) => sse_response(None, session.open_standalone_stream()),
        Ok(None) => {
            jsonrpc_error_reply(StatusCode::BAD_REQUEST, -32600, "missing Mcp-Session-Id header")
        }
        Err(response) => response,
    }
}

async fn handle_delete(
    State(proxy): State<Arc<HttpProxy>>,
    Path(server): Path<String>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let (agent, _) = match proxy.admit(&server, remote, &headers).await {
        Ok(admitted) => admitted,
        Err(response) => return response,
    };
    match proxy.owned_session(&server, &agent, remote, &headers).await {
        Ok(Some(session)) => {
            session.close_because("the agent ended the session (HTTP DELETE)");
            // Answer once the session's end is recorded, so a client that deletes and then
            // audits sees it.
            let _ = tokio::time::timeout(UPSTREAM_GRACE * 2, session.ended.cancelled()).await;
            StatusCode::OK.into_response()
        }
        Ok(None) => {
            jsonrpc_error_reply(StatusCode::BAD_REQUEST, -32600, "missing Mcp-Session-Id header")
        }
        Err(response) => response,
    }
}

async fn handle_metrics(State(proxy): State<Arc<HttpProxy>>, headers: HeaderMap) -> Response {
    metrics_reply(&proxy.settings.origins, &headers)
}

/// `GET /metrics`: the Prometheus metrics, behind the same `Host`/`Origin` check as every other
/// route (so a web page cannot read them through DNS rebinding) but without a token: they hold
/// names and counts only, never a value, and a scraper on the loopback interface is the common
/// case. Reaching them from another host takes an `allowed_hosts` entry, as for the MCP routes.
pub fn metrics_reply(origins: &OriginPolicy, headers: &HeaderMap) -> Response {
    if let Err(which) = origins.check(headers) {
        return error_reply(StatusCode::FORBIDDEN, &format!("the {which} header is not allowed"));
    }
    let headers =
        [(header::CONTENT_TYPE, telemetry::CONTENT_TYPE), (header::CACHE_CONTROL, "no-store")];
    (headers, telemetry::metrics().encode()).into_response()
}

/// A router that serves only `GET /metrics`, for `stdio --metrics-addr`.
pub fn metrics_router(origins: OriginPolicy) -> Router {
    let origins = Arc::new(origins);
    Router::new().route(
        "/metrics",
        axum::routing::get(
            move |headers: HeaderMap| async move { metrics_reply(&origins, &headers) },
        ),
    )
}

fn is_initialize(body: &[u8]) -> bool {
    Envelope::parse(body).is_some_and(|envelope| {
        matches!(envelope.kind(), Kind::Request { method: "initialize", .. })
    })
}

/// Whether a message without a session header belongs to the stateless revision: it is
/// `server/discover`, or it names its protocol version in `_meta` as that revision requires.
fn is_stateless(body: &[u8]) -> bool {
    let Some(envelope) = Envelope::parse(body) else { return false };
    if envelope.method.as_deref() == Some("server/discover") {
        return true;
    }
    #[derive(serde::Deserialize)]
    struct Params<'a> {
        #[serde(borrow, rename = "_meta")]
        meta: Option<HashMap<&'a str, &'a serde_json::value::RawValue>>,
    }
    envelope
        .params
        .and_then(|p| serde_json::from_str::<Params>(p.get()).ok())
        .and_then(|p| p.meta)
        .is_some_and(|meta| meta.contains_key("io.modelcontextprotocol/protocolVersion"))
}

fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("text/event-stream"))
}

/// For clients that accept both kinds: a POST of one request whose first message, arriving within
/// [`JSON_ANSWER_WAIT`], is its response gets it as a plain JSON body (nothing to frame, stream
/// and close on either side). Anything else is an SSE stream, started by then at the latest, so
/// that a slow or held call keeps its client's connection alive with keep-alive comments.
async fn json_or_sse_response(
    mut messages: mpsc::Receiver<StreamMessage>,
    requests: usize,
) -> Response {
    if requests != 1 {
        // A batch streams from the start: nothing to wait for.
        return sse_response(None, messages);
    }
    let first = match tokio::time::timeout(JSON_ANSWER_WAIT, messages.recv()).await {
        Ok(Some(first)) => first,
        Ok(None) | Err(_) => return sse_response(None, messages),
    };
    if first.answers {
        return ([(header::CONTENT_TYPE, "application/json")], first.bytes).into_response();
    }
    sse_response(Some(first), messages)
}

/// An SSE stream of `first` (when given) and then every message of `messages`.
fn sse_response(first: Option<StreamMessage>, messages: mpsc::Receiver<StreamMessage>) -> Response {
    let events = futures::stream::iter(first).chain(ReceiverStream::new(messages)).map(|message| {
        Ok::<_, Infallible>(
            Event::default().event("message").data(String::from_utf8_lossy(&message.bytes)),
        )
    });
    Sse::new(events).keep_alive(KeepAlive::default()).into_response()
}

/// For clients that accept only JSON: waits for the responses and returns them in one body.
/// Notifications sent meanwhile cannot reach such a client and are dropped.
async fn json_response(mut messages: mpsc::Receiver<StreamMessage>) -> Response {
    let mut responses = Vec::new();
    while let Some(message) = messages.recv().await {
        if message.answers {
            responses.push(message.bytes);
        }
    }
    let body = match responses.len() {
        1 => responses.pop().expect("one"),
        _ => {
            let parts: Vec<&[u8]> = responses.iter().map(|r| r.as_ref()).collect();
            Bytes::from([b"[".as_slice(), &parts.join(&b","[..]), b"]"].concat())
        }
    };
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A plain error for requests that never became JSON-RPC traffic (auth, routing, limits).
fn error_reply(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

/// A JSON-RPC error body (id null) for a message the proxy could not accept.
fn jsonrpc_error_reply(status: StatusCode, code: i64, message: &str) -> Response {
    let body = json!({"jsonrpc": "2.0", "id": null, "error": {"code": code, "message": message}});
    (status, axum::Json(body)).into_response()
}

/// Frees one slot of a full session map. A session that is ending already (DELETE, expiry)
/// leaves the map now instead of once its end is recorded. Otherwise the least recently active
/// session with no open stream (no request waiting for its answer, no GET stream; and not one
/// whose first request is still on its way in) is evicted: its relay records `session_end` with
/// the reason and stops its upstream, and its client gets 404 on its next request, which MCP
/// tells it to answer by initializing again. Refused (503) only when every session has a
/// request or stream open.
///
/// Refusing whenever the map is full would let a client that starts a session per task and
/// never sends DELETE (many scripts and load generators do) lock every other client out until
/// the idle timeout.
fn make_room(
    sessions: &mut HashMap<String, Arc<HttpSession>>,
    limit: usize,
) -> Result<(), Response> {
    if let Some(ending) = sessions.values().find(|s| s.is_closing()).map(|s| s.id.clone()) {
        sessions.remove(&ending);
        return Ok(());
    }
    let idlest = sessions
        .values()
        .filter(|session| session.is_evictable())
        .max_by_key(|session| session.idle_for())
        .map(|session| session.id.clone());
    let Some(evicted) = idlest.and_then(|id| sessions.remove(&id)) else {
        return Err(error_reply(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "the proxy has reached its limit of {limit} sessions, and every one of them has \
                 a request or stream open"
            ),
        ));
    };
    tracing::info!(session = %evicted.id, agent = %evicted.agent, "evicting the least recently active session to make room");
    evicted.close_because(&format!(
        "evicted: the proxy reached its limit of {limit} sessions, and this one was the least \
         recently active with no open stream"
    ));
    telemetry::session_evicted();
    Ok(())
}

/// Serves `proxy` on `listener` until `shutdown` resolves; then stops accepting, ends every
/// session and waits for their records.
pub async fn serve(
    listener: tokio::net::TcpListener,
    proxy: Arc<HttpProxy>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, proxy, Router::new(), shutdown).await
}

/// [`serve`], with `extra` routes (the operator API and console) beside the proxy's.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    proxy: Arc<HttpProxy>,
    extra: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let reaper = {
        // Check at least twice per timeout, and at most every 30 s.
        let every = (proxy.settings.session_idle_timeout / 2)
            .clamp(Duration::from_millis(500), Duration::from_secs(30));
        let proxy = Arc::downgrade(&proxy);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match proxy.upgrade() {
                    Some(proxy) => proxy.expire_idle_sessions(),
                    None => break,
                }
            }
        })
    };
    let app = proxy.router().merge(extra).into_make_service_with_connect_info::<SocketAddr>();
    // Open event streams would keep axum's graceful shutdown waiting forever: end the sessions
    // (which closes their streams) as soon as shutdown begins.
    let closer = proxy.clone();
    let shutdown = async move {
        shutdown.await;
        closer.close_all().await;
    };
    // A response is written in several small pieces (headers, each SSE event, the end of the
    // stream); with Nagle's algorithm on, the last piece waits for the client's delayed ACK,
    // about 40 ms on Linux, on every call.
    use axum::serve::ListenerExt;
    let listener = listener.tap_io(|tcp| {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::warn!(%error, "cannot set TCP_NODELAY on a connection");
        }
    });
    let result = axum::serve(listener, app).with_graceful_shutdown(shutdown).await;
    reaper.abort();
    proxy.close_all().await;
    result
}
