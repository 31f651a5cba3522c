//! Subcommands that read or prepare a ledger: `verify`, `log`, `migrate`.

use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use futures::StreamExt;

use super::{CliError, exit};
use crate::record::checkpoint::VerifyingKey;
use crate::record::verify::{ChainStart, CheckpointClaim, CheckpointVerifier, Report, Verifier};
use crate::store::{self, LedgerUrl, ProvenanceRow, Store, StoreOptions};
use crate::telemetry::progress::Progress;

#[derive(Debug, Clone, Args)]
pub struct LedgerArgs {
    /// The ledger: sqlite://PATH or postgres://USER@HOST/DB [default: $XDG_DATA_HOME/mcp-ledger/ledger.db]
    #[arg(long, env = "MCP_LEDGER_URL")]
    pub ledger: Option<String>,
}

impl LedgerArgs {
    pub fn url(&self) -> Result<LedgerUrl, CliError> {
        match &self.ledger {
            Some(url) => LedgerUrl::parse(url).map_err(|e| CliError::Usage(e.into())),
            None => Ok(LedgerUrl::default_sqlite()),
        }
    }

    /// Opens the ledger for reading: never creates or migrates one. A bad URL is a usage error;
    /// a ledger that cannot be opened is reported through `failed`.
    pub(super) async fn open_existing(
        &self,
        failed: fn(anyhow::Error) -> CliError,
    ) -> Result<Arc<dyn Store>, CliError> {
        let url = self.url()?;
        if let LedgerUrl::Sqlite(path) = &url
            && !path.exists()
        {
            return Err(failed(anyhow::anyhow!("no ledger at {}", path.display())));
        }
        let options = StoreOptions { migrate: false, ..StoreOptions::default() };
        store::open(&url, &options)
            .await
            .with_context(|| format!("cannot open the ledger {url}"))
            .map_err(failed)
    }
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    ledger: LedgerArgs,
    /// Print the report as JSON
    #[arg(long)]
    json: bool,
    /// A trusted checkpoint key (C2SP vkey, or a file holding one, e.g. ledger.key.pub);
    /// repeatable. Without one, checkpoint signatures are not checked
    #[arg(long = "key", value_name = "PUBKEY")]
    keys: Vec<String>,
    /// Also check the checkpoints held in this anchor (a directory of .note files or a file of notes)
    #[arg(long, value_name = "PATH")]
    anchor: Option<std::path::PathBuf>,
    /// Check an evidence bundle written by `export --bundle` instead of a ledger (no database)
    #[arg(long, value_name = "DIR")]
    bundle: Option<std::path::PathBuf>,
}

/// Reads `--key` values: each a vkey, or the path of a file holding one.
pub fn read_keys(values: &[String]) -> Result<Vec<VerifyingKey>, CliError> {
    values
        .iter()
        .map(|value| {
            VerifyingKey::from_vkey(value).or_else(|vkey_error| {
                let path = std::path::Path::new(value);
                if !path.exists() {
                    return Err(CliError::Usage(anyhow::anyhow!(
                        "--key {value}: not a public key ({vkey_error}) and no such file"
                    )));
                }
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the key file {}", path.display()))
                    .map_err(CliError::Usage)?;
                VerifyingKey::from_vkey(&text)
                    .with_context(|| format!("{}: not a public key", path.display()))
                    .map_err(CliError::Usage)
            })
        })
        .collect()
}

/// Streams every event through the verifier and compares the log with every signed checkpoint:
/// those in the `checkpoints` table and, with `anchor`, those held outside the database.
/// `progress` counts the events as they are checked.
pub async fn verify_store_with(
    store: &dyn Store,
    keys: Vec<VerifyingKey>,
    anchor: Option<&std::path::Path>,
    progress: &Progress,
) -> Result<Report, anyhow::Error> {
    let mut claims: Vec<CheckpointClaim> = store
        .checkpoints()
        .await
        .context("cannot read the checkpoints")?
        .into_iter()
        .map(|c| CheckpointClaim {
            label: format!("checkpoint {} (size {})", c.id, c.tree_size),
            chain_id: Some(c.chain_id),
            note: c.note,
        })
        .collect();
    if let Some(anchor) = anchor {
        let notes = crate::checkpointer::read_anchor(anchor)
            .with_context(|| format!("cannot read the anchor {}", anchor.display()))?;
        claims.extend(notes.into_iter().map(|n| CheckpointClaim {
            label: format!("anchored checkpoint {}", n.label),
            chain_id: None,
            note: n.note,
        }));
    }
    // Where chains may legitimately start after retention, read before streaming (the
    // `retention_cut` events come later in their chains than the cut they record).
    let starts: Vec<ChainStart> = store
        .retention_cuts(None)
        .await
        .context("cannot read the retention cuts")?
        .iter()
        .filter_map(ChainStart::from_cut_event)
        .collect();
    let mut checkpoints = CheckpointVerifier::new(claims, keys).with_starts(starts.clone());
    let mut verifier = Verifier::with_starts(starts);
    let mut events = store.events();
    while let Some(event) = events.next().await {
        let event = event.context("cannot read the ledger")?;
        verifier.push(&event);
        checkpoints.push(&event);
        progress.inc(1);
    }
    let mut report = verifier.finish();
    checkpoints.finish_into(&mut report);
    Ok(report)
}

/// Streams every event through the verifier.
pub async fn verify_store(store: &dyn Store) -> Result<Report, anyhow::Error> {
    let mut verifier = Verifier::new();
    let mut events = store.events();
    while let Some(event) = events.next().await {
        verifier.push(&event.context("cannot read the ledger")?);
    }
    Ok(verifier.finish())
}

pub async fn verify(args: VerifyArgs) -> Result<u8, CliError> {
    let keys = read_keys(&args.keys)?;
    if let Some(dir) = &args.bundle {
        return super::bundle_verify::verify_bundle(dir, keys, args.json);
    }
    let store = args.ledger.open_existing(CliError::CouldNotCheck).await?;
    let progress = Progress::events("verifying", None, args.json);
    let report = verify_store_with(store.as_ref(), keys, args.anchor.as_deref(), &progress)
        .await
        .map_err(CliError::CouldNotCheck)?;
    drop(progress);
    store.close().await;
    if args.json {
        let status = if report.intact() { "intact" } else { "tampered" };
        let mut value = serde_json::to_value(&report).expect("a report serialises");
        value["status"] = status.into();
        println!("{value}");
    } else {
        print_report(&report);
        println!(
            "checked: {} events, {} checkpoint(s), {} key(s){}",
            report.events,
            report.checkpoints,
            report.keys,
            if report.keys == 0 && report.checkpoints > 0 {
                " (signatures not checked: pass --key)"
            } else {
                ""
            }
        );
    }
    Ok(if report.intact() { exit::OK } else { exit::FAILURE })
}

pub fn print_report(report: &Report) {
    for cut in &report.retention_cuts {
        println!("{cut}");
    }
    for finding in &report.findings {
        println!("{finding}");
    }
    let chains = report.chains.len();
    if report.intact() {
        let heads: Vec<String> = report
            .chains
            .iter()
            .map(|c| format!("{} at seq {} (head {})", c.chain_id, c.seq, &c.hash[..16]))
            .collect();
        println!(
            "intact: {} events in {chains} chain(s); every hash and link checks out{}{}",
            report.events,
            if heads.is_empty() { "" } else { ": " },
            heads.join(", ")
        );
    } else {
        println!(
            "TAMPERED: {} finding(s) in {} events across {chains} chain(s)",
            report.findings.len(),
            report.events
        );
    }
}

#[derive(Debug, Args)]
pub struct LogArgs {
    #[command(flatten)]
    ledger: LedgerArgs,
    /// How many of the most recent calls to show
    #[arg(long, default_value_t = 50)]
    limit: i64,
    /// Print one JSON object per line instead of a table
    #[arg(long)]
    json: bool,
}

pub async fn log(args: LogArgs) -> Result<u8, CliError> {
    let store = args.ledger.open_existing(CliError::Failed).await?;
    let rows = store.provenance(args.limit).await.map_err(|e| CliError::Failed(e.into()))?;
    store.close().await;
    if args.json {
        for row in &rows {
            println!("{}", serde_json::to_string(row).expect("a row serialises"));
        }
    } else {
        println!("{}", provenance_table(&rows));
    }
    Ok(exit::OK)
}

/// The provenance rows as a terminal table (the columns a reader scans first).
pub fn provenance_table(rows: &[ProvenanceRow]) -> Table {
    let mut table = Table::new();
    table.load_preset(UTF8_FULL_CONDENSED).set_header([
        "timestamp",
        "agent",
        "server",
        "action",
        "outcome",
        "authorized_by",
        "input_ref",
        "output_ref",
    ]);
    let short = |r: &Option<String>| {
        r.as_deref().map(|r| r.chars().take(19).collect::<String>() + "…").unwrap_or_default()
    };
    for row in rows {
        table.add_row([
            row.timestamp.clone(),
            row.agent.clone().unwrap_or_default(),
            row.server.clone().unwrap_or_default(),
            row.action.clone().unwrap_or_default(),
            match &row.error {
                Some(error) => {
                    format!("{} ({})", row.outcome, error.chars().take(40).collect::<String>())
                }
                None => row.outcome.clone(),
            },
            row.authorized_by.clone().unwrap_or_default(),
            short(&row.input_ref),
            short(&row.output_ref),
        ]);
    }
    table
}

pub async fn migrate(args: LedgerArgs) -> Result<u8, CliError> {
    let url = args.url()?;
    let store = store::open(&url, &StoreOptions::default())
        .await
        .with_context(|| format!("cannot migrate the ledger {url}"))
        .map_err(CliError::Failed)?;
    store.close().await;
    println!("the ledger schema at {url} is up to date");
    Ok(exit::OK)
}
