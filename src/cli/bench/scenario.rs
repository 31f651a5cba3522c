//! One scenario: a transport and a number of concurrent sessions, measured once directly and
//! once through the proxy into each ledger, with the modes interleaved round by round.
//!
//! The machine this runs on is usually shared and noisy, so the modes take turns in short rounds
//! and the mode that goes first rotates: slow drift in the machine's load lands on every mode
//! about equally, and each proxied mode is compared with a direct run made in the same minutes.

use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use super::fleet::{Context, Fleet, FleetOutcome, Mode, Transport};
use super::stats::Added;
use crate::store::{self, LedgerUrl, StoreOptions};

/// How long the proxies' Postgres backends may take to go away after the proxies exit.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How many calls each mode makes.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Plan {
    /// Measured calls per mode.
    pub calls: usize,
    /// Unmeasured calls per mode before the first round.
    pub warmup: usize,
    /// Measured calls per mode in each round.
    pub round: usize,
}

#[derive(Debug, Serialize)]
pub struct ScenarioOutcome {
    pub transport: Transport,
    pub sessions: usize,
    pub modes: Vec<ModeRow>,
    /// Transactions the Postgres ledger database committed while the scenario's proxies ran.
    pub postgres_commits: Option<Commits>,
}

#[derive(Debug, Serialize)]
pub struct ModeRow {
    #[serde(flatten)]
    pub outcome: FleetOutcome,
    /// Against the direct mode of the same scenario; absent for the direct mode itself.
    pub vs_direct: Option<Added>,
    /// Events per committed batch in the measured rounds, read from the ledger afterwards.
    pub batches: Option<Batches>,
}

/// Events and the batches that committed them, counted in the ledger: every event of one
/// batch is sealed with the same timestamp (the writer stamps a batch once, under the chain-head
/// lock), and consecutive batches get different ones, so a batch is a run of equal timestamps
/// in seq order.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Batches {
    pub events: u64,
    pub batches: u64,
    pub events_per_batch: f64,
}

/// `pg_stat_database.xact_commit` of the ledger database over the life of the Postgres proxies,
/// against the events they appended: every transaction counts, reads and start-up included.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Commits {
    pub events: i64,
    pub transactions: i64,
    pub events_per_transaction: f64,
}

pub async fn run(
    ctx: &Context,
    transport: Transport,
    sessions: usize,
    plan: Plan,
) -> anyhow::Result<ScenarioOutcome> {
    let mut modes = vec![Mode::Direct, Mode::Sqlite];
    if ctx.postgres.is_some() {
        modes.push(Mode::Postgres);
    }
    let before = postgres_counters(ctx, Moment::Before).await?;
    let mut fleets = Vec::new();
    for mode in modes {
        fleets.push(Fleet::start(ctx, transport, mode, sessions).await?);
    }
    for fleet in &mut fleets {
        fleet.warm_up(plan.warmup).await?;
    }
    let (mut done, mut turn) = (0, 0);
    while done < plan.calls {
        let n = plan.round.min(plan.calls - done);
        let count = fleets.len();
        for i in 0..count {
            fleets[(turn + i) % count].measure(n, ctx).await?;
        }
        done += n;
        turn += 1;
    }
    let mut outcomes = Vec::new();
    for fleet in fleets {
        outcomes.push(fleet.finish(ctx).await?);
    }
    let after = postgres_counters(ctx, Moment::After).await?;
    let postgres_commits = match (before, after) {
        (Some((events0, xacts0)), Some((events1, xacts1))) => {
            let (events, transactions) = (events1 - events0, xacts1 - xacts0);
            Some(Commits {
                events,
                transactions,
                events_per_transaction: if transactions > 0 {
                    events as f64 / transactions as f64
                } else {
                    f64::NAN
                },
            })
        }
        _ => None,
    };
    let direct = outcomes.iter().find(|o| o.mode == Mode::Direct).map(|o| o.summary);
    let modes = outcomes
        .into_iter()
        .map(|outcome| ModeRow {
            vs_direct: match (outcome.mode, &direct) {
                (Mode::Direct, _) | (_, None) => None,
                (_, Some(direct)) => Some(outcome.summary.added_to(direct)),
            },
            outcome,
            batches: None,
        })
        .collect();
    Ok(ScenarioOutcome { transport, sessions, modes, postgres_commits })
}

enum Moment {
    Before,
    After,
}

/// The Postgres ledger's chain size and committed transactions, or `None` without Postgres. The
/// transactions are read while nothing is connected to the database, and the chain size is read
/// outside the span between the two readings, so the span holds the proxies' transactions only.
async fn postgres_counters(ctx: &Context, moment: Moment) -> anyhow::Result<Option<(i64, i64)>> {
    let Some(pg) = &ctx.postgres else { return Ok(None) };
    let transactions = async {
        pg.probe.wait_disconnected(DISCONNECT_TIMEOUT).await?;
        pg.probe.xact_commit().await
    };
    Ok(Some(match moment {
        Moment::Before => {
            let events = ledger_size(&pg.url, &ctx.chains).await?;
            (events, transactions.await?)
        }
        Moment::After => {
            let transactions = transactions.await?;
            (ledger_size(&pg.url, &ctx.chains).await?, transactions)
        }
    }))
}

/// How many events `chains` of `url` hold together.
pub async fn ledger_size(url: &LedgerUrl, chains: &[String]) -> anyhow::Result<i64> {
    let options = StoreOptions { migrate: false, ..StoreOptions::default() };
    let store = store::open(url, &options)
        .await
        .with_context(|| format!("cannot open the ledger {url}"))?;
    let size = async {
        let mut total = 0;
        for chain in chains {
            total += store.chain_size(chain).await?;
        }
        Ok::<_, store::StoreError>(total)
    }
    .await;
    store.close().await;
    size.with_context(|| format!("cannot read the size of the ledger {url}"))
}
