//! `mcp-ledger checkpoint`: sign a checkpoint of the ledger now; and the start-up of the
//! background checkpointer that `serve` and `stdio` run when `[ledger] signing_key` is set.
//!
//! Without a signing key no checkpoints are written at all: an unsigned tree head proves nothing
//! that the hash chain does not, and the anchor exists to hold signed ones.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Args;

use super::{CliError, LedgerArgs, exit};
use crate::checkpointer::{Anchor, Checkpointer, CheckpointerHandle, FileAnchor, Schedule};
use crate::config::LedgerConfig;
use crate::record::checkpoint::SigningKey;
use crate::store::{self, DEFAULT_CHAIN, Store, StoreOptions};

/// Reads a private key file written by `mcp-ledger keygen`. Errors never show the key.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, anyhow::Error> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the signing key {}", path.display()))?;
    SigningKey::from_private_key(&text)
        .with_context(|| format!("{}: not a signing key", path.display()))
}

/// Starts the background checkpointer of the default chain when `[ledger] signing_key` is set.
/// Call [`CheckpointerHandle::finish`] after the writer's last commit for the final checkpoint.
pub async fn start_checkpointer(
    store: Arc<dyn Store>,
    config: &LedgerConfig,
    chain: &str,
) -> Result<Option<CheckpointerHandle>, CliError> {
    let Some(key_path) = &config.signing_key else {
        tracing::warn!("no [ledger] signing_key: no checkpoints are signed or anchored");
        return Ok(None);
    };
    let key = read_signing_key(key_path).map_err(CliError::Usage)?;
    let anchor = config.anchor.as_ref().map(|p| Arc::new(FileAnchor::new(p)) as Arc<dyn Anchor>);
    let checkpointer = Checkpointer::resume(store, chain, key, anchor)
        .await
        .context("cannot resume checkpointing")
        .map_err(CliError::Failed)?;
    let schedule = Schedule::new(
        config.checkpoint_every_events,
        Duration::from_secs(config.checkpoint_every_secs),
    );
    Ok(Some(checkpointer.spawn(schedule)))
}

#[derive(Debug, Args)]
pub struct CheckpointArgs {
    #[command(flatten)]
    ledger: LedgerArgs,
    /// The private key file (from `mcp-ledger keygen`)
    #[arg(long, value_name = "PATH")]
    key: PathBuf,
    /// Also write the checkpoint to this anchor (a directory, or a file to append to)
    #[arg(long, value_name = "PATH")]
    anchor: Option<PathBuf>,
    /// The chain to checkpoint
    #[arg(long, default_value = DEFAULT_CHAIN)]
    chain: String,
    /// Print the stored checkpoint as JSON
    #[arg(long)]
    json: bool,
}

pub async fn run(args: CheckpointArgs) -> Result<u8, CliError> {
    let key = read_signing_key(&args.key).map_err(CliError::Usage)?;
    let url = args.ledger.url()?;
    let options = StoreOptions { migrate: false, ..StoreOptions::default() };
    let store = store::open(&url, &options)
        .await
        .with_context(|| format!("cannot open the ledger {url}"))
        .map_err(CliError::Failed)?;
    let anchor = args.anchor.as_ref().map(|p| Arc::new(FileAnchor::new(p)) as Arc<dyn Anchor>);
    let outcome = async {
        let mut checkpointer =
            Checkpointer::resume(store.clone(), &args.chain, key, anchor).await?;
        checkpointer.checkpoint().await.map(|stored| (stored, checkpointer.tree().size()))
    }
    .await;
    store.close().await;
    let (stored, size) = outcome.map_err(|e| CliError::Failed(anyhow!(e)))?;
    match (stored, args.json) {
        (Some(stored), true) => println!("{}", serde_json::to_string(&stored).expect("serialises")),
        (Some(stored), false) => {
            println!(
                "checkpoint {} of chain {}: {} events, root {}",
                stored.id, stored.chain_id, stored.tree_size, stored.root_hash
            );
            print!("{}", stored.note);
        }
        (None, true) => println!("null"),
        (None, false) => println!(
            "nothing to checkpoint: chain {} has {size} events, all covered by a checkpoint",
            args.chain
        ),
    }
    Ok(exit::OK)
}
