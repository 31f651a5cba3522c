//! The approvals webhook: when a call is held, POST a JSON summary of the request to the
//! configured URL (a chat channel's incoming webhook, a pager, …) so that an operator hears of it.
//!
//! Delivery runs in its own task with a timeout, after the hold is committed: a slow, failing or
//! unreachable webhook never delays or fails the hold, and never touches the decision flow. A
//! failure is logged as a warning naming the approval and the webhook's host only (chat webhooks
//! carry their secret in the path or query). The payload carries no arguments: they may hold
//! personal data, and a chat channel is read more widely than the console.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::approval::HoldRequest;
use crate::config::redact_webhook_url;
use crate::intercept::HoldNotifier;
use crate::record::format_timestamp;

/// Where and how held calls are announced.
#[derive(Clone)]
pub struct Webhook {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    url: reqwest::Url,
    /// The URL for logs: scheme and host only.
    shown: String,
    timeout: Duration,
    /// The console's address; each payload links to its approval there.
    console_url: String,
    /// Where each delivery attempt is recorded, so that a failed announcement is on the record.
    ledger: std::sync::Mutex<Option<crate::store::writer::Ledger>>,
}

/// Why a delivery failed. Never contains the webhook's URL.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("the webhook url is not an absolute http:// or https:// url")]
    Url,
    #[error("cannot build the webhook's http client: {0}")]
    Client(#[source] reqwest::Error),
    #[error("the webhook did not answer within {} ms", .0.as_millis())]
    Timeout(Duration),
    #[error("the webhook could not be reached: {0}")]
    Send(#[source] reqwest::Error),
    #[error("the webhook answered {0}")]
    Status(reqwest::StatusCode),
}

impl Webhook {
    /// `url` with its `${VAR}` already substituted; `console_url` is the console's address as
    /// operators reach it (e.g. `http://127.0.0.1:8931/console`).
    pub fn new(url: &str, timeout: Duration, console_url: &str) -> Result<Self, WebhookError> {
        let parsed = reqwest::Url::parse(url).map_err(|_| WebhookError::Url)?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
            return Err(WebhookError::Url);
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            // A redirect could send the announcement somewhere nobody configured.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("mcp-ledger/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(WebhookError::Client)?;
        Ok(Webhook {
            inner: Arc::new(Inner {
                client,
                shown: redact_webhook_url(url),
                url: parsed,
                timeout,
                console_url: console_url.to_owned(),
                ledger: std::sync::Mutex::default(),
            }),
        })
    }

    /// Records every delivery attempt as an `approval_notice` event in `ledger`.
    pub fn record_to(&self, ledger: crate::store::writer::Ledger) {
        *self.inner.ledger.lock().expect("lock") = Some(ledger);
    }

    /// Appends how the announcement of `request` went; a ledger failure here is only logged,
    /// since the hold itself is already recorded and must not depend on its announcement.
    async fn record(&self, request: &HoldRequest, outcome: &Result<(), WebhookError>) {
        let Some(ledger) = self.inner.ledger.lock().expect("lock").clone() else { return };
        let mut draft = crate::record::Draft::new(
            crate::record::EventType::ApprovalNotice,
            json!({
                "approval_id": request.approval_id,
                "call_id": request.call_id,
                "channel": "webhook",
                "webhook": self.inner.shown,
                "delivered": outcome.is_ok(),
                "error": outcome.as_ref().err().map(|e| e.to_string()),
            }),
        );
        draft.agent = Some(request.agent.clone());
        draft.server = Some(request.server.clone());
        if let Err(error) = ledger.append(draft).await {
            tracing::warn!(%error, approval_id = %request.approval_id, "could not record the webhook delivery");
        }
    }

    /// The webhook's address for logs and messages: scheme and host only.
    pub fn shown_url(&self) -> &str {
        &self.inner.shown
    }

    /// The JSON body announcing `request`. `text` makes it readable as is by chat webhooks that
    /// show a message's `text` (Slack, Mattermost, Rocket.Chat).
    pub fn payload(&self, request: &HoldRequest) -> Value {
        let console_url = format!("{}#{}", self.inner.console_url, request.approval_id);
        let rule = request.rule.as_deref().map(|r| format!(" (rule `{r}`)")).unwrap_or_default();
        let reason = request.reason.as_deref().map(|r| format!(": {r}")).unwrap_or_default();
        let text = format!(
            "mcp-ledger held a call for approval{rule}{reason}. Agent `{}` wants to run `{}` on `{}`. Approve or deny before {}: {console_url}",
            request.agent,
            request.tool,
            request.server,
            format_timestamp(request.expires_at),
        );
        json!({
            "event": "approval_requested",
            "approval_id": request.approval_id,
            "call_id": request.call_id,
            "agent": request.agent,
            "server": request.server,
            "tool": request.tool,
            "rule": request.rule,
            "reason": request.reason,
            "approvers": request.approvers,
            "expires_at": format_timestamp(request.expires_at),
            "console_url": console_url,
            "text": text,
        })
    }

    /// POSTs the announcement of `request`; any 2xx answer is a delivery.
    pub async fn deliver(&self, request: &HoldRequest) -> Result<(), WebhookError> {
        let inner = &self.inner;
        let body = serde_json::to_vec(&self.payload(request)).expect("a JSON value serialises");
        let send = inner
            .client
            .post(inner.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send();
        // reqwest's own timeout covers the exchange; this one also bounds name resolution.
        let response = tokio::time::timeout(inner.timeout, send)
            .await
            .map_err(|_| WebhookError::Timeout(inner.timeout))?
            .map_err(|error| {
                if error.is_timeout() {
                    WebhookError::Timeout(inner.timeout)
                } else {
                    WebhookError::Send(error.without_url())
                }
            })?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(WebhookError::Status(response.status()))
        }
    }
}

impl HoldNotifier for Webhook {
    fn held(&self, request: &HoldRequest) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(approval_id = %request.approval_id, "no async runtime: the approvals webhook was not called");
            return;
        };
        let (webhook, request) = (self.clone(), request.clone());
        runtime.spawn(async move {
            let outcome = webhook.deliver(&request).await;
            webhook.record(&request, &outcome).await;
            match outcome {
                Ok(()) => tracing::info!(
                    approval_id = %request.approval_id, webhook = %webhook.shown_url(),
                    "announced the held call to the approvals webhook"
                ),
                Err(error) => tracing::warn!(
                    approval_id = %request.approval_id, webhook = %webhook.shown_url(),
                    "the approvals webhook failed; the call stays held: {error}"
                ),
            }
        });
    }
}
