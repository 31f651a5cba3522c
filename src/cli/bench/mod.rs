//! `mcp-ledger bench`: the latency the proxy adds to a `tools/call`, measured against a direct
//! connection to the same upstream in the same run — direct, through a fresh SQLite ledger, and
//! through a fresh Postgres ledger — with p50, p99, mean and throughput per mode.
//!
//! The machine this runs on is usually shared and noisy, so the modes are interleaved in short
//! rounds (drift hits all of them alike), and the result is a measurement printed with ratios,
//! never a pass/fail test: the exit code says only whether the run itself worked.

mod report;
mod scratch;
mod session;
mod stats;

use std::num::NonZeroUsize;

use anyhow::Context;
use clap::Args;
use futures::StreamExt;

use super::{CliError, exit};
use crate::record::EventType;
use crate::record::verify::Verifier;
use crate::store::{self, LedgerUrl, StoreOptions, redact_password};
use report::{LedgerCheck, ModeRow, Report};
use scratch::ScratchDatabase;
use session::{Mode, Session};
use stats::Summary;

/// Where the scratch database is created when neither `--postgres` nor `DATABASE_URL` says.
const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Measured calls per mode
    #[arg(long, default_value = "2000")]
    calls: NonZeroUsize,
    /// Unmeasured calls per mode before measuring, to warm processes and connections
    #[arg(long, default_value_t = 50)]
    warmup: usize,
    /// Callers sharing each session and calling concurrently
    #[arg(long, default_value = "1")]
    concurrency: NonZeroUsize,
    /// Measured calls per mode in each round; the modes take turns round by round
    #[arg(long, default_value = "200")]
    round: NonZeroUsize,
    /// Postgres URL to create the scratch ledger database with; when given, an unreachable
    /// server is an error [default: $DATABASE_URL, else postgres://postgres@127.0.0.1:5432/postgres]
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// Print the results as JSON
    #[arg(long)]
    json: bool,
}

pub async fn run(args: BenchArgs) -> Result<u8, CliError> {
    let (scratch, skipped) = prepare_postgres(args.postgres.as_deref()).await?;
    let outcome = tokio::select! {
        outcome = bench(&args, scratch.as_ref(), skipped) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    // Dropped on every path, after the sessions (and so the proxies' connections) are gone.
    let dropped = match scratch {
        Some(scratch) => {
            let name = scratch.name.clone();
            scratch
                .drop_database()
                .await
                .with_context(|| format!("the scratch database {name} is left behind"))
        }
        None => Ok(()),
    };
    let report = match outcome {
        Ok(report) => report,
        Err(error) => {
            if let Err(dropped) = dropped {
                eprintln!("mcp-ledger: {dropped:#}");
            }
            return Err(CliError::Failed(error.context("the benchmark failed")));
        }
    };
    if args.json {
        let json = report
            .to_json()
            .context("cannot write the report as json")
            .map_err(CliError::Failed)?;
        println!("{json}");
    } else {
        report.print_text();
    }
    dropped.map_err(CliError::Failed)?;
    if !report.ledgers_complete() {
        return Err(CliError::Failed(anyhow::anyhow!(
            "a ledger does not hold a call and a result event for every call made, or does not verify"
        )));
    }
    Ok(exit::OK)
}

/// Creates the scratch database, or says why Postgres is skipped. Only a server named with
/// `--postgres` must be reachable: the default one is a convenience.
async fn prepare_postgres(
    flag: Option<&str>,
) -> Result<(Option<ScratchDatabase>, Option<String>), CliError> {
    let admin_url = flag
        .map(str::to_owned)
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .unwrap_or_else(|| DEFAULT_POSTGRES.to_owned());
    match ScratchDatabase::create(&admin_url).await {
        Ok(scratch) => Ok((Some(scratch), None)),
        Err(error) if flag.is_some() => Err(CliError::Failed(
            error.context("cannot prepare the postgres ledger for the benchmark"),
        )),
        Err(error) => Ok((None, Some(format!("{error:#}")))),
    }
}

async fn bench(
    args: &BenchArgs,
    postgres: Option<&ScratchDatabase>,
    postgres_skipped: Option<String>,
) -> anyhow::Result<Report> {
    let exe = std::env::current_exe().context("cannot find the mcp-ledger binary")?;
    let dir = tempfile::tempdir().context("cannot create a directory for the sqlite ledger")?;
    let sqlite = LedgerUrl::Sqlite(dir.path().join("bench-ledger.db"));
    let (calls, concurrency, round) = (args.calls.get(), args.concurrency.get(), args.round.get());

    let mut sessions = vec![
        Session::start(Mode::Direct, &exe, None).await?,
        Session::start(Mode::Sqlite, &exe, Some(sqlite.clone())).await?,
    ];
    if let Some(pg) = postgres {
        let url = LedgerUrl::Postgres(pg.url.clone());
        sessions.push(Session::start(Mode::Postgres, &exe, Some(url)).await?);
    }
    for session in &mut sessions {
        session.warm_up(args.warmup, concurrency).await?;
    }
    // Rounds alternate between the modes, and the mode that goes first rotates, so slow drift in
    // the machine's load lands on every mode about equally.
    let (mut done, mut turn) = (0, 0);
    while done < calls {
        let n = round.min(calls - done);
        let count = sessions.len();
        for i in 0..count {
            sessions[(turn + i) % count].measure(n, concurrency).await?;
        }
        done += n;
        turn += 1;
    }

    let mut modes = Vec::new();
    let mut ledgers = Vec::new();
    let mut direct: Option<Summary> = None;
    for session in sessions {
        // Closing a proxied session makes the proxy commit the session's end and exit, so its
        // ledger is complete when read below.
        let (mode, ledger, calls_made, summary) = session.finish().await?;
        let added = match (mode, &direct) {
            (Mode::Direct, _) => {
                direct = Some(summary);
                None
            }
            (_, Some(direct)) => Some(summary.added_to(direct)),
            (_, None) => None,
        };
        modes.push(ModeRow { mode: mode.label(), summary, added });
        if let Some(url) = ledger {
            ledgers.push(check_ledger(mode, &url, calls_made).await?);
        }
    }
    Ok(Report {
        tool: "lookup_customer",
        calls,
        warmup: args.warmup,
        concurrency,
        round,
        upstream: format!("{} demo-server (a fresh child per mode)", exe.display()),
        sqlite_ledger: sqlite.to_string(),
        postgres_ledger: postgres.map(|pg| format!("{} ({})", redact_password(&pg.url), pg.server)),
        modes,
        ledgers,
        postgres_skipped,
    })
}

/// Counts and verifies what a proxied session recorded, so the output shows the recording happened.
async fn check_ledger(
    mode: Mode,
    url: &LedgerUrl,
    calls_made: usize,
) -> anyhow::Result<LedgerCheck> {
    let options = StoreOptions { migrate: false, ..StoreOptions::default() };
    let store = store::open(url, &options)
        .await
        .with_context(|| format!("cannot open the {} ledger {url}", mode.label()))?;
    let mut verifier = Verifier::new();
    let (mut events, mut tool_calls, mut tool_results) = (0, 0, 0);
    {
        let mut stream = store.events();
        while let Some(event) = stream.next().await {
            let event = event.with_context(|| format!("cannot read the ledger {url}"))?;
            verifier.push(&event);
            events += 1;
            if event.event_type == EventType::ToolCall.as_str() {
                tool_calls += 1;
            } else if event.event_type == EventType::ToolResult.as_str() {
                tool_results += 1;
            }
        }
    }
    store.close().await;
    Ok(LedgerCheck {
        ledger: match url {
            LedgerUrl::Sqlite(_) => "sqlite",
            LedgerUrl::Postgres(_) => "postgres",
        },
        events,
        tool_calls,
        tool_results,
        other_events: events - tool_calls - tool_results,
        calls_made: calls_made as u64,
        intact: verifier.finish().intact(),
    })
}
