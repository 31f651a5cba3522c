//! `mcp-ledger bench`: what the proxy costs, measured against a direct connection in the same
//! run. A fast upstream (the demo server) is called by N concurrent agent sessions over stdio and
//! over Streamable HTTP, directly and through the proxy into a fresh SQLite ledger and a fresh
//! Postgres ledger; the run also opens many idle HTTP sessions, and times `verify` and `export`
//! on large ledgers. Every number is printed next to the target for it.
//!
//! The machine this runs on is usually shared and noisy, so the modes of a scenario are
//! interleaved in short rounds (see [`scenario`]), and the result is a measurement printed with
//! ratios, never a pass/fail test: the exit code says only whether the run itself worked. Every
//! scratch database, temporary directory and child process is removed on every path, Ctrl-C
//! included. How to run it and what a run on the reference machine found: `docs/performance.md`.

mod bounds;
mod bulk;
mod fleet;
mod http_client;
mod idle;
mod ledger_check;
mod procstat;
mod report;
mod scenario;
mod scratch;
mod serve_child;
mod serve_metrics;
mod session;
mod stats;

use std::num::NonZeroUsize;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use super::{CliError, exit};
use crate::store::{self, LedgerUrl, StoreOptions, redact_password};
use fleet::{Context, Mode, PgLedger, Transport};
use report::{Machine, Report};
use scenario::{Batches, Plan};
use scratch::ScratchDatabase;
use serve_child::Upstream;

/// Where the scratch databases are created when neither `--postgres` nor `DATABASE_URL` says.
const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Measured calls per mode in each scenario [default: 5000; --quick: 30]
    #[arg(long)]
    calls: Option<NonZeroUsize>,
    /// Unmeasured calls per mode before measuring, to warm processes and connections
    /// [default: 200; --quick: 5]
    #[arg(long)]
    warmup: Option<usize>,
    /// Measured calls per mode in each round; the modes take turns round by round
    /// [default: 500; --quick: 10]
    #[arg(long)]
    round: Option<NonZeroUsize>,
    /// Concurrent sessions of the stdio scenarios, one scenario each; every session is its own
    /// `mcp-ledger stdio` process [default: 1,8; --quick: 1,2]
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    stdio_sessions: Option<Vec<NonZeroUsize>>,
    /// Which chains the stdio proxies append to: `shared` (all to `default`, one total order, as
    /// `stdio` does unless told otherwise) or `own` (each to a chain of its own, `--chain
    /// bench-stdio-N`)
    #[arg(long, value_name = "CHAINS", default_value = "shared")]
    stdio_chains: StdioChains,
    /// Concurrent sessions of the HTTP scenarios, one scenario each, all through one
    /// `mcp-ledger serve` [default: 1,4,16,64; --quick: 1,4]
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    http_sessions: Option<Vec<NonZeroUsize>>,
    /// Idle HTTP sessions to open against `serve` [default: 1000; --quick: 10]
    #[arg(long)]
    idle_sessions: Option<NonZeroUsize>,
    /// Ledger sizes, in events, at which `verify` and `export` are timed, ascending
    /// [default: 5000,50000,500000; --quick: 300,900]
    #[arg(long, value_delimiter = ',', value_name = "EVENTS,...")]
    ledger_sizes: Option<Vec<u64>>,
    /// How long one `export` may run before it is stopped and reported as such
    /// [default: 60; --quick: 20]
    #[arg(long, value_name = "SECS")]
    export_limit_secs: Option<u64>,
    /// Parts of the run to leave out
    #[arg(long, value_delimiter = ',', value_name = "PART,...")]
    skip: Vec<Part>,
    /// A short run that checks the harness rather than measuring the proxy
    #[arg(long)]
    quick: bool,
    /// Postgres URL to create the scratch ledger databases with; when given, an unreachable
    /// server is an error [default: $DATABASE_URL, else postgres://postgres@127.0.0.1:5432/postgres]
    #[arg(long, value_name = "URL")]
    postgres: Option<String>,
    /// Print the results as JSON
    #[arg(long)]
    json: bool,
    /// Start every `serve` under this command, split at spaces, to profile it in place: e.g.
    /// `--serve-wrapper 'valgrind --tool=callgrind --callgrind-out-file=cg.%p'` counts its
    /// instructions, which a shared machine's load does not move (docs/performance.md). The
    /// timing columns then measure the wrapper too.
    #[arg(long, value_name = "COMMAND")]
    serve_wrapper: Option<String>,
}

/// Which chains the stdio proxies of a run append to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StdioChains {
    /// All to the default chain.
    Shared,
    /// Each proxy to a chain of its own.
    Own,
}

impl StdioChains {
    /// How the report says it.
    pub fn describe(self) -> &'static str {
        match self {
            StdioChains::Shared => "the stdio proxies of a mode append to one chain (`default`)",
            StdioChains::Own => {
                "each stdio proxy appends to a chain of its own (`--chain bench-stdio-N`)"
            }
        }
    }

    /// The chain the `index`th stdio session of a scenario appends to, when not the default.
    pub fn of_session(self, index: usize) -> Option<String> {
        match self {
            StdioChains::Shared => None,
            StdioChains::Own => Some(format!("bench-stdio-{index}")),
        }
    }
}

/// A part of the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    /// The stdio scenarios
    Stdio,
    /// The HTTP scenarios
    Http,
    /// The idle HTTP sessions
    Idle,
    /// verify and export on large ledgers
    Ledger,
}

/// The arguments with `--quick`'s or the full run's defaults filled in.
struct Settings {
    plan: Plan,
    stdio_sessions: Vec<usize>,
    stdio_chains: StdioChains,
    http_sessions: Vec<usize>,
    idle_sessions: Option<usize>,
    ledger_sizes: Vec<u64>,
    export_limit: Duration,
    /// The program and arguments every `serve` is started under (`--serve-wrapper`).
    serve_wrapper: Vec<String>,
}

impl Settings {
    fn of(args: &BenchArgs) -> Settings {
        let quick = args.quick;
        let pick = |given: Option<usize>, full: usize, short: usize| {
            given.unwrap_or(if quick { short } else { full })
        };
        let levels =
            |given: &Option<Vec<NonZeroUsize>>, part: Part, full: &[usize], short: &[usize]| {
                if args.skip.contains(&part) {
                    return Vec::new();
                }
                match given {
                    Some(levels) => levels.iter().map(|n| n.get()).collect(),
                    None if quick => short.to_vec(),
                    None => full.to_vec(),
                }
            };
        let mut ledger_sizes = match &args.ledger_sizes {
            Some(sizes) => sizes.clone(),
            None if quick => vec![300, 900],
            None => vec![5_000, 50_000, 500_000],
        };
        ledger_sizes.retain(|size| *size > 0);
        ledger_sizes.sort_unstable();
        ledger_sizes.dedup();
        if args.skip.contains(&Part::Ledger) {
            ledger_sizes.clear();
        }
        Settings {
            plan: Plan {
                calls: pick(args.calls.map(NonZeroUsize::get), 5000, 30),
                warmup: pick(args.warmup, 200, 5),
                round: pick(args.round.map(NonZeroUsize::get), 500, 10),
            },
            stdio_sessions: levels(&args.stdio_sessions, Part::Stdio, &[1, 8], &[1, 2]),
            stdio_chains: args.stdio_chains,
            http_sessions: levels(&args.http_sessions, Part::Http, &[1, 4, 16, 64], &[1, 4]),
            idle_sessions: (!args.skip.contains(&Part::Idle))
                .then(|| pick(args.idle_sessions.map(NonZeroUsize::get), 1000, 10)),
            ledger_sizes,
            export_limit: Duration::from_secs(args.export_limit_secs.unwrap_or(if quick {
                20
            } else {
                60
            })),
            serve_wrapper: args
                .serve_wrapper
                .iter()
                .flat_map(|command| command.split_whitespace())
                .map(str::to_owned)
                .collect(),
        }
    }

    /// Whether anything runs through the proxy (and so needs the proxied ledgers).
    fn proxies(&self) -> bool {
        !self.stdio_sessions.is_empty()
            || !self.http_sessions.is_empty()
            || self.idle_sessions.is_some()
    }
}

pub async fn run(args: BenchArgs) -> Result<u8, CliError> {
    let settings = Settings::of(&args);
    if cfg!(debug_assertions) {
        eprintln!(
            "mcp-ledger bench: WARNING: this is a debug build, several times slower than a release \
             build; its numbers say little about the proxy. Measure with `cargo run --release -- \
             bench`."
        );
    }
    let wanted = usize::from(settings.proxies()) + usize::from(!settings.ledger_sizes.is_empty());
    let (scratch, skipped) = prepare_postgres(args.postgres.as_deref(), wanted).await?;
    let (run_db, bulk_db) = match (settings.proxies(), scratch.as_slice()) {
        (true, [run, rest @ ..]) => (Some(run), rest.first()),
        (false, [bulk, ..]) => (None, Some(bulk)),
        _ => (None, None),
    };
    let outcome = tokio::select! {
        outcome = bench(&settings, run_db, bulk_db, skipped) => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    // Dropped on every path, after the sessions (and so the proxies' connections) are gone.
    let mut dropped = Ok(());
    for database in scratch {
        let name = database.name.clone();
        let result = database
            .drop_database()
            .await
            .with_context(|| format!("the scratch database {name} is left behind"));
        if let Err(error) = result {
            eprintln!("mcp-ledger: {error:#}");
            dropped = Err(error);
        }
    }
    let report =
        outcome.map_err(|error| CliError::Failed(error.context("the benchmark failed")))?;
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

/// Creates `wanted` scratch databases, or says why Postgres is skipped. Only a server named with
/// `--postgres` must be reachable: the default one is a convenience.
async fn prepare_postgres(
    flag: Option<&str>,
    wanted: usize,
) -> Result<(Vec<ScratchDatabase>, Option<String>), CliError> {
    let admin_url = flag
        .map(str::to_owned)
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .unwrap_or_else(|| DEFAULT_POSTGRES.to_owned());
    let mut created = Vec::new();
    for _ in 0..wanted {
        match ScratchDatabase::create(&admin_url).await {
            Ok(scratch) => {
                // Named, so that a run killed outright (SIGKILL) leaves a trail to clean up.
                eprintln!(
                    "mcp-ledger bench: created the scratch database {} (dropped at the end)",
                    scratch.name
                );
                created.push(scratch);
            }
            Err(error) => {
                for database in created {
                    let _ = database.drop_database().await;
                }
                return match flag {
                    Some(_) => Err(CliError::Failed(
                        error.context("cannot prepare the postgres ledgers for the benchmark"),
                    )),
                    None => Ok((Vec::new(), Some(format!("{error:#}")))),
                };
            }
        }
    }
    Ok((created, None))
}

async fn bench(
    settings: &Settings,
    run_db: Option<&ScratchDatabase>,
    bulk_db: Option<&ScratchDatabase>,
    postgres_skipped: Option<String>,
) -> anyhow::Result<Report> {
    let load_at_start = procstat::load_average();
    let exe = std::env::current_exe().context("cannot find the mcp-ledger binary")?;
    let dir = tempfile::tempdir().context("cannot create a directory for the sqlite ledgers")?;
    let sqlite = LedgerUrl::Sqlite(dir.path().join("bench-ledger.db"));

    // The fast upstream, in this process: the HTTP scenarios call it directly and through serve.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen for the upstream on 127.0.0.1")?;
    let upstream_url = format!("http://{}/mcp", listener.local_addr()?);
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop_upstream = stop.clone().drop_guard();
    tokio::spawn(crate::demo::server::serve_http(listener, stop));

    let postgres = match run_db {
        Some(db) => {
            Some(PgLedger { url: LedgerUrl::Postgres(db.url.clone()), probe: db.probe().await? })
        }
        None => None,
    };
    // Created up front, so that the first scenario can read the chain's size before it starts.
    migrate(&sqlite).await?;
    if let Some(pg) = &postgres {
        migrate(&pg.url).await?;
    }
    let most_stdio_sessions = settings.stdio_sessions.iter().copied().max().unwrap_or(0);
    let ctx = Context {
        exe: exe.clone(),
        serve_wrapper: settings.serve_wrapper.clone(),
        sqlite: sqlite.clone(),
        postgres,
        upstream_url,
        http: http_client::client()?,
        stdio_chains: settings.stdio_chains,
        chains: std::iter::once(store::DEFAULT_CHAIN.to_owned())
            .chain((0..most_stdio_sessions).filter_map(|i| settings.stdio_chains.of_session(i)))
            .collect(),
    };

    let mut scenarios = Vec::new();
    let levels = settings
        .stdio_sessions
        .iter()
        .map(|n| (Transport::Stdio, *n))
        .chain(settings.http_sessions.iter().map(|n| (Transport::Http, *n)));
    for (transport, sessions) in levels {
        eprintln!("mcp-ledger bench: {} with {sessions} session(s)…", transport.label());
        scenarios.push(scenario::run(&ctx, transport, sessions, settings.plan).await?);
    }

    let mut idle = Vec::new();
    if let Some(sessions) = settings.idle_sessions {
        let ledger = ctx.ledger(Mode::Postgres).unwrap_or_else(|| sqlite.clone());
        for upstream in [Upstream::Shared, Upstream::PerSession] {
            eprintln!("mcp-ledger bench: {sessions} idle http sessions, {}…", upstream.describe());
            idle.push(idle::run(&ctx, sessions, upstream, &ledger).await?);
        }
    }

    let mut ledgers = Vec::new();
    for mode in [Mode::Sqlite, Mode::Postgres] {
        let Some(url) = ctx.ledger(mode) else { continue };
        if settings.stdio_sessions.is_empty() && settings.http_sessions.is_empty() {
            continue;
        }
        ledgers.push(check_and_count_batches(&url, mode, &mut scenarios).await?);
    }
    if let Some(pg) = &ctx.postgres {
        pg.probe.close().await;
    }

    let mut bulk = Vec::new();
    if !settings.ledger_sizes.is_empty() {
        let mut urls = vec![LedgerUrl::Sqlite(dir.path().join("bulk-ledger.db"))];
        urls.extend(bulk_db.map(|db| LedgerUrl::Postgres(db.url.clone())));
        for url in urls {
            eprintln!("mcp-ledger bench: verify and export on {url}…");
            bulk.extend(
                bulk::run(&exe, dir.path(), &url, &settings.ledger_sizes, settings.export_limit)
                    .await?,
            );
        }
    }

    let cpus = std::thread::available_parallelism().map_or(0, NonZeroUsize::get);
    Ok(Report {
        build: if cfg!(debug_assertions) { "debug" } else { "release" },
        machine: Machine {
            cpus,
            cpu_model: procstat::cpu_model(),
            memory_bytes: procstat::memory_total(),
            postgres: run_db.or(bulk_db).map(|db| db.server.clone()),
            load_average_at_start: load_at_start,
            load_average_at_end: procstat::load_average(),
        },
        plan: settings.plan,
        upstream: "the demo server's lookup_customer: over stdio a `mcp-ledger demo-server` child \
                   per session; over http rmcp's Streamable HTTP server in the bench process"
            .to_owned(),
        serve_threads: serve_threads(cpus, &ctx.serve_wrapper),
        stdio_chains: settings.stdio_chains,
        sqlite_ledger: sqlite.to_string(),
        postgres_ledger: run_db.map(|db| format!("{} ({})", redact_password(&db.url), db.server)),
        postgres_skipped,
        scenarios,
        idle,
        bulk,
        ledgers,
    })
}

/// The threads the `serve` children run on, and what they run under, for the report: they
/// inherit `MCP_LEDGER_THREADS` from the bench, and otherwise take `serve`'s default for the
/// machine.
fn serve_threads(cpus: usize, wrapper: &[String]) -> String {
    let threads = match std::env::var("MCP_LEDGER_THREADS") {
        Ok(threads) => format!("{threads} thread(s), from MCP_LEDGER_THREADS"),
        Err(_) => format!(
            "{} thread(s), the default for {cpus} cpus (one per two; MCP_LEDGER_THREADS=N sets it)",
            super::serve::default_threads(cpus)
        ),
    };
    match wrapper {
        [] => threads,
        _ => format!("{threads}; run under `{}`", wrapper.join(" ")),
    }
}

async fn migrate(url: &LedgerUrl) -> anyhow::Result<()> {
    let store = store::open(url, &StoreOptions::default())
        .await
        .with_context(|| format!("cannot create the ledger {url}"))?;
    store.close().await;
    Ok(())
}

/// Checks the ledger of `mode` and fills in each of its scenario rows' batch counts.
async fn check_and_count_batches(
    url: &LedgerUrl,
    mode: Mode,
    scenarios: &mut [scenario::ScenarioOutcome],
) -> anyhow::Result<ledger_check::LedgerCheck> {
    let mut windows = Vec::new();
    let mut owners = Vec::new();
    let mut calls_made = 0;
    for (s, scenario) in scenarios.iter().enumerate() {
        for (r, row) in scenario.modes.iter().enumerate() {
            if row.outcome.mode != mode {
                continue;
            }
            calls_made += row.outcome.calls_made;
            for window in &row.outcome.windows {
                windows.push(window.clone());
                owners.push((s, r));
            }
        }
    }
    let (check, batches) = ledger_check::check(url, calls_made, &windows).await?;
    for ((s, r), counted) in owners.into_iter().zip(batches) {
        let total = scenarios[s].modes[r].batches.get_or_insert_with(Batches::default);
        total.events += counted.events;
        total.batches += counted.batches;
        total.events_per_batch =
            if total.batches > 0 { total.events as f64 / total.batches as f64 } else { 0.0 };
    }
    Ok(check)
}
