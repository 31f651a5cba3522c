use std::io::Write;

use clap::Parser;
use mcp_ledger::cli::{Cli, exit};

// The proxy's hot path allocates a great deal (JSON values, canonical bytes, channel buffers);
// glibc's malloc was about a quarter of its CPU under load (docs/performance.md), and a
// thread-caching allocator takes most of that away.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            // clap exits 2 on a usage error, but 2 means "could not check" for `verify`.
            std::process::exit(if error.use_stderr() {
                exit::USAGE.into()
            } else {
                exit::OK.into()
            });
        }
    };
    mcp_ledger::cli::init_logging();
    let runtime = match cli.runtime_threads() {
        1 => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        threads => {
            tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()
        }
    };
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("mcp-ledger: cannot start the async runtime: {error}");
            std::process::exit(exit::FAILURE.into());
        }
    };
    let code = runtime.block_on(mcp_ledger::cli::run(cli));
    let _ = std::io::stdout().flush();
    // Exit without waiting for the runtime's blocking threads: a read of the agent's stdin may
    // still be parked there after the upstream went away, and would hold the process open.
    std::process::exit(code.into());
}
