use std::process::ExitCode;

use clap::Parser;
use mcp_ledger::cli::{Cli, exit};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            let _ = error.print();
            // clap exits 2 on a usage error, but 2 means "could not check" for `verify`.
            return ExitCode::from(if error.use_stderr() { exit::USAGE } else { exit::OK });
        }
    };
    mcp_ledger::cli::init_logging();
    mcp_ledger::cli::run(cli).await
}
