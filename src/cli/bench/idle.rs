//! What open but idle HTTP sessions cost `serve` in memory: open many sessions (`initialize` and
//! `notifications/initialized`, as a client does before its first call), leave them idle, and
//! read the proxy's resident memory before and after.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use super::fleet::Context;
use super::http_client::HttpSession;
use super::serve_child::{ServeProcess, Upstream};
use crate::store::LedgerUrl;

/// Sessions opened at once.
const OPEN_PARALLELISM: usize = 16;
/// How long the proxy gets to settle before and after the sessions are opened.
const SETTLE: Duration = Duration::from_secs(1);

#[derive(Debug, Serialize)]
pub struct IdleOutcome {
    pub sessions: usize,
    pub upstream: &'static str,
    pub shared_upstream: bool,
    /// `sqlite` or `postgres`.
    pub ledger: &'static str,
    /// How long opening every session took.
    pub open_secs: f64,
    /// Resident memory of `serve` once started, before any session.
    pub rss_before_bytes: Option<u64>,
    /// Resident memory with every session open and idle.
    pub rss_idle_bytes: Option<u64>,
    /// The high-water mark, opening included.
    pub peak_rss_bytes: Option<u64>,
    /// `(rss_idle - rss_before) / sessions`.
    pub bytes_per_session: Option<f64>,
}

pub async fn run(
    ctx: &Context,
    sessions: usize,
    upstream: Upstream,
    ledger: &LedgerUrl,
) -> anyhow::Result<IdleOutcome> {
    let serve = ServeProcess::start(ctx, ledger, upstream).await?;
    tokio::time::sleep(SETTLE).await;
    let before = serve.memory();
    let started = Instant::now();
    let (client, url) = (&ctx.http, serve.url.as_str());
    let open: Vec<HttpSession> = futures::stream::iter(0..sessions)
        .map(|_| HttpSession::open(client, url))
        .buffer_unordered(OPEN_PARALLELISM)
        .try_collect()
        .await
        .with_context(|| format!("cannot open {sessions} idle sessions"))?;
    let open_secs = started.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let idle = serve.memory();
    // `serve` ends the sessions itself on SIGTERM, committing each one's end.
    let peak = serve.stop().await?;
    drop(open);
    let (rss_before, rss_idle) = (before.map(|m| m.rss), idle.map(|m| m.rss));
    Ok(IdleOutcome {
        sessions,
        upstream: upstream.describe(),
        shared_upstream: upstream == Upstream::Shared,
        ledger: match ledger {
            LedgerUrl::Sqlite(_) => "sqlite",
            LedgerUrl::Postgres(_) => "postgres",
        },
        open_secs,
        rss_before_bytes: rss_before,
        rss_idle_bytes: rss_idle,
        peak_rss_bytes: peak.map(|m| m.peak),
        bytes_per_session: match (rss_before, rss_idle) {
            (Some(before), Some(idle)) if sessions > 0 => {
                Some((idle as f64 - before as f64) / sessions as f64)
            }
            _ => None,
        },
    })
}
