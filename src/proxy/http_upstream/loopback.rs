//! Pooled keep-alive connections to plain-HTTP upstreams on this machine, without the 40 ms
//! Nagle stall.
//!
//! Many servers (axum's default among them) leave Nagle's algorithm on and write an SSE answer
//! in two small pieces: the headers, then the event. On a reused connection Linux delays our ACK
//! of the first piece (up to 40 ms), and the server's Nagle holds the second until that ACK
//! arrives. Setting `TCP_QUICKACK` after every read that brought data sends the pending ACK at
//! once, so the server's second write goes out immediately. That is one `setsockopt` per read,
//! against a connect, an accept and a close per request when connections were not reused (12 %
//! of `serve`'s CPU at 64 sessions, docs/performance.md).
//!
//! reqwest gives no access to a connection's socket, hence hyper-util's client (the same hyper
//! reqwest runs on) with a connector of our own. Requests are built as `http` requests to the
//! upstream's `Uri`, parsed once, and answers come back as hyper's responses: going through
//! reqwest's types would parse a URL twice per message (`client::Answer` hides which client
//! carried one).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

/// How long an unused pooled connection is kept (servers commonly close theirs after 60-120 s;
/// a connection the server closed first is noticed and replaced by the pool).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub(super) type LoopbackClient = Client<QuickAckConnector, reqwest::Body>;

/// The process's client for loopback `http://` upstreams, shared by every upstream session.
pub(super) fn client(connect_timeout: Duration) -> &'static LoopbackClient {
    static CLIENT: OnceLock<LoopbackClient> = OnceLock::new();
    CLIENT.get_or_init(|| {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .build(QuickAckConnector(http))
    })
}

/// Sends `request` over `client`.
pub(super) async fn send(
    client: &LoopbackClient,
    request: http::Request<reqwest::Body>,
) -> Result<http::Response<Incoming>, BoxError> {
    Ok(client.request(request).await?)
}

/// The next data frame of `body` (trailers are skipped); `None` at its end.
pub(super) async fn chunk(body: &mut Incoming) -> Result<Option<Bytes>, BoxError> {
    while let Some(frame) = body.frame().await {
        match frame.map_err(BodyBrokeOff)?.into_data() {
            Ok(data) => return Ok(Some(data)),
            Err(_trailers) => continue,
        }
    }
    Ok(None)
}

/// A response body that could not be read to its end (`client::error_kind` names it).
#[derive(Debug, thiserror::Error)]
#[error("the response body broke off")]
pub(super) struct BodyBrokeOff(#[source] hyper::Error);

/// `HttpConnector`, with each connection wrapped in [`QuickAck`].
#[derive(Clone)]
pub(super) struct QuickAckConnector(HttpConnector);

impl tower_service::Service<Uri> for QuickAckConnector {
    type Response = QuickAck;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<QuickAck, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move { Ok(QuickAck(connecting.await?)) })
    }
}

/// A TCP connection that acknowledges what it read at once.
pub(super) struct QuickAck(TokioIo<TcpStream>);

impl QuickAck {
    fn acknowledge_now(&self) {
        // Best effort: on failure the connection still works, at worst with the stall.
        let _ = socket2::SockRef::from(self.0.inner()).set_tcp_quickack(true);
    }
}

impl Read for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.0).poll_read(cx, buf);
        // Ready means data (or the end of the stream, where the call is merely wasted).
        if matches!(polled, Poll::Ready(Ok(()))) {
            self.acknowledge_now();
        }
        polled
    }
}

impl Write for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl Connection for QuickAck {
    fn connected(&self) -> Connected {
        self.0.connected()
    }
}
