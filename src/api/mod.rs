//! The operator HTTP API and web console, served by `serve` beside `/mcp/{server}`: list held
//! calls with their arguments, and approve or deny them. Knows nothing of transports: it reads
//! and appends through [`crate::approval`], exactly like `mcp-ledger approvals`, so a decision
//! made here is an `approval_decision` event that any waiting proxy, in any process, honours.
//!
//! | route | what |
//! |---|---|
//! | `GET /api/approvals` | pending held calls, oldest first, with their arguments |
//! | `GET /api/approvals/{id}` | one request, whatever its state |
//! | `POST /api/approvals/{id}/approve` | `{"reason"?, "arguments_ref"?}` |
//! | `POST /api/approvals/{id}/deny` | `{"reason", "arguments_ref"?}`; the reason is required |
//! | `GET /api/whoami` | `{"operator": name}` |
//! | `GET /console` | the web console (one page, no external resources) |
//!
//! **Invariant:** only `[[operators]]` tokens get in. An agent's token is refused with 403 even
//! if it were somehow also configured as an operator's, so an agent can never approve its own
//! held call.

// Handlers return `Result<_, ApiError>`; the error is a finished response.
#![allow(clippy::result_large_err)]

mod approvals;
mod auth;
mod console;
#[cfg(test)]
mod tests;
pub mod webhook;

use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

pub use auth::{AuthRejection, OperatorTokens, check_origin};
pub use webhook::{Webhook, WebhookError};

use crate::proxy::http_server::OriginPolicy;
use crate::store::Store;

/// What the API needs: the ledger, who may use it, and which hosts and origins may reach it.
#[derive(Clone)]
pub struct ApiState {
    pub store: Arc<dyn Store>,
    pub operators: OperatorTokens,
    pub origins: OriginPolicy,
}

/// The API and console routes, to merge beside the proxy's.
pub fn router(state: ApiState) -> Router {
    let api = Router::new()
        .route("/api/approvals", get(approvals::list))
        .route("/api/approvals/{id}", get(approvals::show))
        .route("/api/approvals/{id}/approve", post(approvals::approve))
        .route("/api/approvals/{id}/deny", post(approvals::deny))
        .route("/api/whoami", get(approvals::whoami))
        .layer(axum::middleware::map_response(no_store));
    api.route("/console", get(console::page)).with_state(Arc::new(state))
}

/// Nothing the API answers may be cached: it holds call arguments.
async fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

impl ApiState {
    /// The operator making the request, after the `Host`/`Origin` checks; never logs the token.
    fn admit(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        if let Err(which) = check_origin(&self.origins, headers) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden_origin",
                format!("the {which} header is not allowed"),
            ));
        }
        self.operators.authenticate(headers).map_err(|rejection| {
            tracing::warn!(reason = ?rejection, "refused an approvals api request");
            match rejection {
                AuthRejection::AgentToken => ApiError::new(
                    StatusCode::FORBIDDEN,
                    "agent_token",
                    "this is an agent's token: agents can never see or decide approvals; use an operator's token (`mcp-ledger operators add NAME`)",
                ),
                AuthRejection::MissingToken => ApiError::unauthorized(
                    "missing bearer token: send `Authorization: Bearer <operator token>`",
                ),
                AuthRejection::UnknownToken if self.operators.is_empty() => ApiError::unauthorized(
                    "no [[operators]] are configured; add one with `mcp-ledger operators add NAME` and restart `serve`",
                ),
                AuthRejection::UnknownToken => ApiError::unauthorized("unknown token"),
            }
        })
    }
}

/// An error answer: `{"error": message, "code": code}` with its status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    fn unauthorized(message: &str) -> Self {
        ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// The ledger failed: the details go to the log, not to the caller.
    fn ledger(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "the approvals api cannot use the ledger");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "ledger_unavailable",
            "the ledger could not be read or written; nothing was decided",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = axum::Json(json!({ "error": self.message, "code": self.code }));
        let mut response = (self.status, body).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}
