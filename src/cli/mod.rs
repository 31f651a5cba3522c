//! The `mcp-ledger` command line: argument parsing, output formatting and exit codes. Everything
//! it does goes through the library API.

mod agents;
mod approvals;
mod bench;
mod bundle_verify;
mod checkpoints;
mod configured;
mod correct;
mod demo;
mod erase;
mod export;
mod keygen;
mod ledger;
mod operators;
mod pii;
mod policy;
mod policy_test;
mod proofs;
mod retention;
mod serve;
mod stdio;

use clap::{Parser, Subcommand};

pub use ledger::LedgerArgs;

/// Exit codes shared by every subcommand.
pub mod exit {
    /// The ledger verified, or the command did what it was asked.
    pub const OK: u8 = 0;
    /// The command failed (for `verify`: the ledger was tampered with).
    pub const FAILURE: u8 = 1;
    /// `verify` could not check the ledger.
    pub const COULD_NOT_CHECK: u8 = 2;
    /// Bad command line or configuration (sysexits `EX_USAGE`).
    pub const USAGE: u8 = 64;
}

#[derive(Debug, Parser)]
#[command(
    name = "mcp-ledger",
    version,
    about = "A transparent MCP proxy that records every tool call in a tamper-evident ledger before forwarding it"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve one agent over stdio and relay to an upstream MCP server started as a child process
    Stdio(stdio::StdioArgs),
    /// Serve the MCP Streamable HTTP transport for every configured upstream, at /mcp/{server}
    Serve(serve::ServeArgs),
    /// Manage the agents allowed to call `serve` (`agents add NAME` creates a token)
    Agents(agents::AgentsArgs),
    /// Manage the operators who decide held calls over HTTP (`operators add NAME` creates a token)
    Operators(operators::OperatorsArgs),
    /// List, show, approve or deny calls held for an operator
    Approvals(approvals::ApprovalsArgs),
    /// Check policy files (`policy check [DIR]`) or replay recorded calls against new ones (`policy test DIR`)
    Policy(policy::PolicyArgs),
    /// Create the Ed25519 key pair that signs checkpoints (private key mode 0600, public key in PATH.pub)
    Keygen(keygen::KeygenArgs),
    /// Recompute every hash and link; exit 0 intact, 1 tampered, 2 could not check
    Verify(ledger::VerifyArgs),
    /// Show recorded tool calls (the provenance view), newest last
    Log(ledger::LogArgs),
    /// Sign a checkpoint of the ledger now (and write it to an anchor)
    Checkpoint(checkpoints::CheckpointArgs),
    /// Print and check an inclusion proof of an event against the latest checkpoint
    Prove(proofs::ProveArgs),
    /// Print and check a proof that one checkpoint's log is a prefix of another's
    Consistency(proofs::ConsistencyArgs),
    /// Append a `correction` event referencing an earlier event (nothing is changed in place)
    Correct(correct::CorrectArgs),
    /// Erase one payload body (an erasure request): records an `erasure` event, deletes the body; verify still passes
    Erase(erase::EraseArgs),
    /// Write an evidence bundle (events, checkpoint, inclusion proofs, key) that `verify --bundle` checks offline
    Export(export::ExportArgs),
    /// Remove whole old ranges of the ledger after a signed `retention_cut` (`retention apply`)
    Retention(retention::RetentionArgs),
    /// Create or update the ledger schema (and, in Postgres, the writer and auditor roles)
    Migrate(LedgerArgs),
    /// Run the built-in demo: an agent, the proxy and a customer-operations server, end to end
    Demo(demo::DemoArgs),
    /// Measure the latency the proxy adds to a tools/call, against a direct connection
    Bench(bench::BenchArgs),
    /// Try the PII detectors on a file, score them on a labelled corpus, or measure their speed
    Pii(pii::PiiArgs),
    /// The demo's customer-operations MCP server, on stdio (used by `demo` and the tests)
    #[command(hide = true)]
    DemoServer {
        /// Append every tools/call the server receives to this file, one JSON line each
        #[arg(long)]
        call_log: Option<std::path::PathBuf>,
    },
}

impl Cli {
    /// How many threads the async runtime gets; 1 means a current-thread runtime.
    ///
    /// A `stdio` proxy serves one agent, and at one call at a time most of its CPU went into
    /// waking runtime threads for each hand-off between its tasks (docs/performance.md); on one
    /// thread those hand-offs are plain polls. `serve` takes `--threads`, by default one per two
    /// CPUs: it shares the machine with its database and usually with the agents and upstreams,
    /// and on the 2-CPU benchmark machine one thread did as many calls per second at 64 sessions
    /// as two, with less CPU per call and lower latency at one session (docs/performance.md).
    /// Everything else keeps tokio's default of one thread per CPU.
    pub fn runtime_threads(&self) -> usize {
        let cpus = || std::thread::available_parallelism().map_or(1, usize::from);
        match &self.command {
            Command::Stdio(_) => 1,
            Command::Serve(args) => {
                args.threads().unwrap_or_else(|| serve::default_threads(cpus()))
            }
            _ => cpus(),
        }
    }
}

/// Runs the parsed command line and returns the process exit code.
pub async fn run(cli: Cli) -> u8 {
    let outcome = match cli.command {
        Command::Stdio(args) => stdio::run(args).await,
        Command::Serve(args) => serve::run(args).await,
        Command::Agents(args) => agents::run(args).await,
        Command::Operators(args) => operators::run(args).await,
        Command::Approvals(args) => approvals::run(args).await,
        Command::Policy(args) => policy::run(args).await,
        Command::Keygen(args) => keygen::run(args).await,
        Command::Verify(args) => ledger::verify(args).await,
        Command::Log(args) => ledger::log(args).await,
        Command::Checkpoint(args) => checkpoints::run(args).await,
        Command::Prove(args) => proofs::prove(args).await,
        Command::Consistency(args) => proofs::consistency(args).await,
        Command::Correct(args) => correct::run(args).await,
        Command::Erase(args) => erase::run(args).await,
        Command::Export(args) => export::run(args).await,
        Command::Retention(args) => retention::run(args).await,
        Command::Migrate(args) => ledger::migrate(args).await,
        Command::Demo(args) => demo::run(args).await,
        Command::Bench(args) => bench::run(args).await,
        Command::Pii(args) => pii::run(args).await,
        Command::DemoServer { call_log } => crate::demo::server::serve_stdio(call_log)
            .await
            .map(|()| exit::OK)
            .map_err(CliError::Failed),
    };
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("mcp-ledger: {error:#}");
            error.exit_code()
        }
    }
}

/// A failed command: what went wrong, and which exit code says so.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0:#}")]
    Usage(anyhow::Error),
    #[error("{0:#}")]
    Failed(anyhow::Error),
    #[error("{0:#}")]
    CouldNotCheck(anyhow::Error),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => exit::USAGE,
            CliError::Failed(_) => exit::FAILURE,
            CliError::CouldNotCheck(_) => exit::COULD_NOT_CHECK,
        }
    }
}

/// Installs the stderr logger, and the (empty until configured) slot through which request
/// spans reach an OTLP exporter. Stdout belongs to the protocol (in `stdio`) or to the command's
/// output, so logs never go there.
pub fn init_logging() {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = tracing_subscriber::EnvFilter::try_from_env("MCP_LEDGER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,mcp_ledger=info"));
    // The request spans are for the exporter: they stay out of the log whatever the filter says.
    let spans_off = format!("{}=off", crate::telemetry::spans::TARGET);
    let filter = filter.add_directive(spans_off.parse().expect("a valid directive"));
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_filter(filter);
    tracing_subscriber::registry().with(crate::telemetry::otlp::layer()).with(log).init();
}
