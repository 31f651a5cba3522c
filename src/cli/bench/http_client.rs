//! The benchmark's MCP client over Streamable HTTP: just enough of the transport to open a
//! session (`initialize`, `notifications/initialized`), call a tool, and end the session.
//!
//! It is deliberately small rather than rmcp's full client: every POST is one request whose
//! answer is read from the JSON body or the SSE stream, with no standalone GET stream and no
//! typed (re)serialisation, so that the load generator's own cost stays small and is identical
//! whether it talks to the upstream directly or through `serve`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, anyhow, bail};
use futures::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderValue};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The revision the client asks for: the newest one that still has `initialize`.
const PROTOCOL_VERSION: &str = "2025-11-25";
const SESSION_HEADER: &str = "mcp-session-id";
const VERSION_HEADER: &str = "mcp-protocol-version";

/// A connection pool for every session of one run, so sessions share keep-alive connections as
/// a client host's agents would.
pub fn client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .tcp_nodelay(true)
        .build()
        .context("cannot build the benchmark's http client")
}

/// One open MCP session. Cheap to clone: clones share the session and its id counter.
#[derive(Clone)]
pub struct HttpSession {
    client: reqwest::Client,
    url: Arc<str>,
    session_id: Option<HeaderValue>,
    protocol: HeaderValue,
    next_id: Arc<AtomicU64>,
}

/// The routing fields of a JSON-RPC message, borrowed.
#[derive(Deserialize)]
struct Reply<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    #[serde(borrow)]
    result: Option<&'a RawValue>,
    #[serde(borrow)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ToolResult {
    #[serde(rename = "isError")]
    is_error: Option<bool>,
}

#[derive(Deserialize)]
struct InitializeResult {
    #[serde(rename = "protocolVersion")]
    protocol_version: String,
}

impl HttpSession {
    /// Opens a session at `url` (`initialize`, then `notifications/initialized`).
    pub async fn open(client: &reqwest::Client, url: &str) -> anyhow::Result<HttpSession> {
        let mut session = HttpSession {
            client: client.clone(),
            url: Arc::from(url),
            session_id: None,
            protocol: HeaderValue::from_static(PROTOCOL_VERSION),
            next_id: Arc::new(AtomicU64::new(1)),
        };
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":0,"method":"initialize","params":{{"protocolVersion":"{PROTOCOL_VERSION}","capabilities":{{}},"clientInfo":{{"name":"mcp-ledger-bench","version":"{}"}}}}}}"#,
            env!("CARGO_PKG_VERSION")
        );
        let response = session.post(body).await.context("initialize failed")?;
        session.session_id = response.headers().get(SESSION_HEADER).cloned();
        let result = answer(response, "0").await.context("initialize failed")?;
        let init: InitializeResult = serde_json::from_str(&result)
            .context("the initialize result has no protocolVersion")?;
        session.protocol = HeaderValue::from_str(&init.protocol_version)
            .context("the negotiated protocol version is not a valid header")?;
        let response = session
            .post(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#.to_owned())
            .await
            .context("notifications/initialized failed")?;
        if !response.status().is_success() {
            bail!("notifications/initialized was answered {}", response.status());
        }
        Ok(session)
    }

    /// Calls `tool` with `arguments` (a JSON object) and fails on any error, tool errors too.
    pub async fn call_tool(&self, tool: &str, arguments: &str) -> anyhow::Result<()> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/call","params":{{"name":"{tool}","arguments":{arguments}}}}}"#
        );
        let response = self.post(body).await?;
        let result = answer(response, &id.to_string()).await?;
        let tool_result: ToolResult =
            serde_json::from_str(&result).context("the tools/call result is not an object")?;
        if tool_result.is_error == Some(true) {
            bail!("{tool} returned a tool error");
        }
        Ok(())
    }

    /// Ends the session with `DELETE` (a server may refuse it with 405; that is fine too).
    pub async fn close(&self) -> anyhow::Result<()> {
        let Some(id) = &self.session_id else { return Ok(()) };
        let response = self
            .client
            .delete(&*self.url)
            .header(SESSION_HEADER, id)
            .header(VERSION_HEADER, &self.protocol)
            .send()
            .await
            .context("DELETE of the session failed")?;
        match response.status() {
            status if status.is_success() || status == reqwest::StatusCode::METHOD_NOT_ALLOWED => {
                Ok(())
            }
            status => Err(anyhow!("DELETE of the session was answered {status}")),
        }
    }

    async fn post(&self, body: String) -> anyhow::Result<reqwest::Response> {
        let mut request = self
            .client
            .post(&*self.url)
            .header(ACCEPT, "application/json, text/event-stream")
            .header(CONTENT_TYPE, "application/json")
            .header(VERSION_HEADER, &self.protocol)
            .body(body);
        if let Some(id) = &self.session_id {
            request = request.header(SESSION_HEADER, id);
        }
        request.send().await.with_context(|| format!("POST to {} failed", self.url))
    }
}

/// The `result` of the response with `id` (its JSON text), from a JSON body or an SSE stream.
async fn answer(response: reqwest::Response, id: &str) -> anyhow::Result<String> {
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        bail!("answered {status}: {}", text.chars().take(200).collect::<String>());
    }
    let is_sse = response
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if !is_sse {
        let body = response.bytes().await.context("cannot read the response body")?;
        return result_of(&body, id)?.ok_or_else(|| anyhow!("the body does not answer id {id}"));
    }
    let mut events = sse_stream::SseStream::from_bytes_stream(response.bytes_stream());
    while let Some(event) = events.next().await {
        let event = event.context("the response stream broke off")?;
        // Priming events and notifications carry no answer to this request.
        let Some(data) = event.data.filter(|d| !d.trim().is_empty()) else { continue };
        if let Some(result) = result_of(data.as_bytes(), id)? {
            return Ok(result);
        }
    }
    bail!("the response stream ended without answering id {id}")
}

/// `Some(result)` when `message` is the response to `id`; an error response is an error.
fn result_of(message: &[u8], id: &str) -> anyhow::Result<Option<String>> {
    let reply: Reply = serde_json::from_slice(message).context("a message is not JSON-RPC")?;
    if reply.id.map(RawValue::get) != Some(id) {
        return Ok(None);
    }
    if let Some(error) = reply.error {
        bail!("answered with a JSON-RPC error: {}", error.get());
    }
    let result = reply.result.ok_or_else(|| anyhow!("the response to id {id} has no result"))?;
    Ok(Some(result.get().to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_result_of_its_own_id_only() {
        let message = br#"{"jsonrpc":"2.0","id":7,"result":{"content":[],"isError":false}}"#;
        assert_eq!(result_of(message, "8").expect("json"), None);
        let result = result_of(message, "7").expect("json").expect("answers 7");
        assert_eq!(result, r#"{"content":[],"isError":false}"#);
    }

    #[test]
    fn an_error_response_is_an_error_naming_it() {
        let message = br#"{"jsonrpc":"2.0","id":3,"error":{"code":-32000,"message":"no ledger"}}"#;
        let error = result_of(message, "3").expect_err("an error response");
        assert!(format!("{error:#}").contains("no ledger"), "{error:#}");
    }

    #[test]
    fn notifications_are_not_answers() {
        let message = br#"{"jsonrpc":"2.0","method":"notifications/progress","params":{}}"#;
        assert_eq!(result_of(message, "1").expect("json"), None);
    }
}
