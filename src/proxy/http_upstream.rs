//! A remote MCP server reached over Streamable HTTP (spec revisions 2025-03-26, 2025-06-18 and
//! 2025-11-25), exposed to the relay as lines: it reads the upstream's messages as the same
//! newline-delimited JSON-RPC a child process writes, and puts the agent's in a queue of lines.
//!
//! Each line the relay queues is POSTed as its exact bytes (without the line ending), with the
//! configured headers, the session id the server assigned in the response to `initialize`, and
//! the protocol version read from the initialize result. What answers it comes out of the reader
//! as lines: a JSON body as one line, an SSE stream as one line per message event, in order.
//! Messages the server sends on its own arrive on the standalone `GET` stream, opened once the
//! session is established (after the line that follows `initialize` was accepted, normally
//! `notifications/initialized`).
//!
//! **Byte fidelity.** Bodies and SSE `data` are passed on unchanged, with one exception forced by
//! the framing: a payload that contains line breaks (a pretty-printed JSON body, or SSE data
//! split over several `data:` fields) has its `\r` and `\n` bytes removed. In valid JSON these
//! can only be whitespace between tokens, so the JSON value is the same.
//!
//! **Order and concurrency.** Lines are sent in pipe order and then answered concurrently: the
//! next line is POSTed once the previous one was handed to the connection (a request), accepted
//! by the server (a notification or response, which servers answer 202 at once; waited for up to
//! a few seconds), or answered (`initialize`, which the session depends on).
//!
//! **Failures** become JSON-RPC error responses (code -32001) for the requests they leave
//! unanswered, naming the upstream's host and the HTTP status or error kind, never the URL's
//! path or query, nor any header. A 404 to a request that carried the session id means the
//! server ended the session: every request in flight is answered with an error and the reader
//! ends, so the relay ends the session. A response stream that breaks off before answering is
//! resumed with `GET` + `Last-Event-ID` after the server's `retry` time when the server gave
//! event ids; otherwise its requests are answered with an error. Requests the agent cancelled
//! (`notifications/cancelled`) are not answered in its stead.
//!
//! **Shutdown.** When the line queue is closed (the agent left), what is in flight gets
//! [`SHUTDOWN_DRAIN`] to finish (as a child process gets to answer what it read before its stdin
//! closed), then the session is ended with `DELETE` (a 405 is fine) and the reader ends.

mod client;
mod exchange;
mod loopback;
mod sse;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use reqwest::Url;
use tokio::io::AsyncBufRead;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::io::StreamReader;
use tokio_util::sync::CancellationToken;

use super::lines::{LineOutbox, LineQueue, line_queue};
use client::{Signal, Upstream, error_chain};
use exchange::{Outgoing, exchange, listen};

/// The largest message (JSON body or SSE event) accepted from the upstream.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// How long messages in flight get to finish after the agent left, before the session is ended.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(3);

/// How long the next line waits for the server to accept a notification or response.
const ACCEPT_WAIT: Duration = Duration::from_secs(5);

const EMIT_QUEUE: usize = 256;

/// How to reach one Streamable HTTP MCP server.
#[derive(Clone)]
pub struct HttpUpstreamConfig {
    /// The MCP endpoint, `http://` or `https://`.
    pub url: Url,
    /// Sent with every request (e.g. `Authorization`). Values are secrets: never logged.
    /// Headers the transport sets itself (`Accept`, `Content-Type`, `Mcp-Session-Id`,
    /// `MCP-Protocol-Version`, `Last-Event-ID`) are ignored.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// How long a POSTed message may take to be answered (the response to a request, including
    /// its stream). `None`: no limit.
    pub request_timeout: Option<Duration>,
}

/// Why an upstream URL or header is unusable. Never holds a header value or the URL itself.
#[derive(Debug, thiserror::Error)]
pub enum HttpUpstreamConfigError {
    #[error("the upstream URL is not valid: {0}")]
    InvalidUrl(String),
    #[error("the upstream URL must start with http:// or https://, not {0}://")]
    Scheme(String),
    #[error("the upstream URL names no host")]
    NoHost,
    #[error("`{0}` is not a valid HTTP header name")]
    HeaderName(String),
    #[error("the value of header `{0}` is not a valid HTTP header value")]
    HeaderValue(String),
    #[error("header `{0}` is set by the MCP transport and cannot be configured")]
    Reserved(String),
}

impl HttpUpstreamConfig {
    /// A configuration for `url`, with no headers and no timeout.
    pub fn new(url: &str) -> Result<Self, HttpUpstreamConfigError> {
        let url =
            Url::parse(url).map_err(|e| HttpUpstreamConfigError::InvalidUrl(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(HttpUpstreamConfigError::Scheme(url.scheme().to_owned()));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(HttpUpstreamConfigError::NoHost);
        }
        Ok(HttpUpstreamConfig { url, headers: Vec::new(), request_timeout: None })
    }

    /// Adds a header sent with every request.
    pub fn header(mut self, name: &str, value: &str) -> Result<Self, HttpUpstreamConfigError> {
        let header = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| HttpUpstreamConfigError::HeaderName(name.to_owned()))?;
        if client::RESERVED.contains(&header.as_str()) {
            return Err(HttpUpstreamConfigError::Reserved(name.to_owned()));
        }
        let mut value = HeaderValue::from_str(value)
            .map_err(|_| HttpUpstreamConfigError::HeaderValue(name.to_owned()))?;
        value.set_sensitive(true);
        self.headers.push((header, value));
        Ok(self)
    }

    /// `scheme://host[:port]`: what logs and records may show of the URL (its path and query,
    /// and any user info, may hold secrets).
    pub fn redacted_origin(&self) -> String {
        format!("{}://{}", self.url.scheme(), host_label(&self.url))
    }
}

impl std::fmt::Debug for HttpUpstreamConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("HttpUpstreamConfig")
            .field("url", &self.redacted_origin())
            .field("headers", &names)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

/// `host[:port]` (the port only when the URL names one).
fn host_label(url: &Url) -> String {
    let host = url.host_str().unwrap_or("?");
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    }
}

/// Connects lazily (nothing is sent until the first line) and returns the two pipe ends for
/// [`relay`](crate::proxy::relay::relay): the lines the upstream sends, and a queue that takes
/// lines for it. Closing the queue (or dropping every sender) ends the session. Must be called
/// inside a Tokio runtime: the exchange runs in background tasks.
pub fn http_upstream(
    config: HttpUpstreamConfig,
) -> (impl AsyncBufRead + Unpin + Send + 'static, LineQueue) {
    let (to_upstream, input) = line_queue();
    let (lines, outbox) = mpsc::channel(EMIT_QUEUE);
    let close = CancellationToken::new();
    let from_upstream = emitted_lines(outbox, close.clone());
    match Upstream::new(&config, lines) {
        Ok(upstream) => {
            tokio::spawn(run(Arc::new(upstream), input, close));
        }
        Err(error) => {
            tracing::error!(upstream = %config.redacted_origin(), error = %error_chain(&error), "cannot create the HTTP client");
            close.cancel();
        }
    }
    (from_upstream, to_upstream)
}

/// Takes the agent's lines and sends each on in order; then winds the session down.
async fn run(up: Arc<Upstream>, mut input: LineOutbox, close: CancellationToken) {
    let mut tasks = JoinSet::new();
    let mut listener = None;
    let mut listen_after_next = false;
    loop {
        while tasks.try_join_next().is_some() {}
        let line = tokio::select! {
            biased;
            _ = up.expired.cancelled() => break,
            line = input.next() => line,
        };
        let Some(line) = line else { break };
        let Some(msg) = Outgoing::parse(&line) else { continue };
        let initialize = msg.initialize.is_some();
        up.note_cancelled(msg.cancels.iter().cloned());
        let (proceed, proceeded) = Signal::new();
        tasks.spawn(exchange(up.clone(), msg, proceed));
        let wait = async {
            if initialize {
                let _ = proceeded.await;
            } else {
                let _ = tokio::time::timeout(ACCEPT_WAIT, proceeded).await;
            }
        };
        tokio::select! {
            biased;
            _ = up.expired.cancelled() => break,
            _ = wait => {}
        }
        if initialize {
            listen_after_next = up.initialized();
        } else if std::mem::take(&mut listen_after_next) && listener.is_none() {
            listener = Some(tokio::spawn(listen(up.clone())));
        }
    }
    // The agent's further lines have nowhere to go.
    drop(input);
    let agent_left = !up.expired.is_cancelled();
    let drained =
        tokio::time::timeout(SHUTDOWN_DRAIN, async { while tasks.join_next().await.is_some() {} })
            .await;
    if drained.is_err() {
        tracing::debug!(host = %up.host, in_flight = tasks.len(), "abandoning messages still in flight");
    }
    tasks.abort_all();
    if let Some(listener) = listener {
        listener.abort();
    }
    if agent_left {
        up.delete_session().await;
    }
    close.cancel();
}

/// The reader half: the emitted lines, whole and in the order queued, read straight from the
/// queue (no task and no pipe in between, so a response reaches the relay one hand-off sooner);
/// it ends once `close` fires and what was queued before is read. A reader dropped early drops
/// the queue with it, so no producer blocks on a full one.
fn emitted_lines(
    outbox: mpsc::Receiver<Vec<u8>>,
    close: CancellationToken,
) -> impl AsyncBufRead + Unpin + Send + 'static {
    let lines = futures::stream::unfold((outbox, close), |(mut outbox, close)| async move {
        let line = tokio::select! {
            biased;
            line = outbox.recv() => line,
            _ = close.cancelled() => {
                outbox.close();
                outbox.recv().await
            }
        };
        line.map(|line| (Ok::<_, std::io::Error>(Bytes::from(line)), (outbox, close)))
    });
    StreamReader::new(Box::pin(lines))
}
