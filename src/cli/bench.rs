//! `mcp-ledger bench`: placeholder until the benchmark lands.
use clap::Args;

use super::CliError;

#[derive(Debug, Args)]
pub struct BenchArgs {}

pub async fn run(_args: BenchArgs) -> Result<u8, CliError> {
    Err(CliError::Failed(anyhow::anyhow!("bench is not built yet")))
}
