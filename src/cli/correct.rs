//! `mcp-ledger correct EVENT_ID --reason R`: append a `correction` event that references an
//! earlier event. Nothing is changed in place: the original stays exactly as it was hashed.

use anyhow::Context;
use clap::Args;
use serde_json::json;

use super::{CliError, LedgerArgs, exit};
use crate::record::{Draft, EventType};

#[derive(Debug, Args)]
pub struct CorrectArgs {
    #[command(flatten)]
    ledger: LedgerArgs,
    /// The `event_id` of the event being corrected
    event_id: String,
    /// Why the event is corrected (recorded in the correction)
    #[arg(long)]
    reason: String,
    /// Who corrects it [default: $USER]
    #[arg(long, value_name = "NAME")]
    operator: Option<String>,
    /// Print the correction event as JSON
    #[arg(long)]
    json: bool,
}

pub async fn run(args: CorrectArgs) -> Result<u8, CliError> {
    if args.reason.trim().is_empty() {
        return Err(CliError::Usage(anyhow::anyhow!("--reason must not be empty")));
    }
    let store = args.ledger.open_existing(CliError::Failed).await?;
    let original = store
        .event(&args.event_id)
        .await
        .context("cannot read the ledger")
        .map_err(CliError::Failed)?;
    let Some(original) = original else {
        store.close().await;
        return Err(CliError::Usage(anyhow::anyhow!("no event with id {}", args.event_id)));
    };
    let by = args
        .operator
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "unknown".to_owned());
    let mut draft = Draft::new(
        EventType::Correction,
        json!({
            "corrects": original.event_id,
            "seq": original.seq,
            "reason": args.reason,
            "by": by,
        }),
    );
    draft.server = original.server.clone();
    let appended = store
        .append_settled(&original.chain_id, std::slice::from_ref(&draft))
        .await
        .context("cannot append the correction")
        .map_err(CliError::Failed);
    store.close().await;
    let event = appended?.pop().expect("one draft, one event");
    if args.json {
        println!("{}", serde_json::to_string(&event).expect("an event serialises"));
    } else {
        println!(
            "appended correction {} at seq {} of chain {}: corrects {} (seq {})",
            event.event_id, event.seq, event.chain_id, original.event_id, original.seq
        );
    }
    Ok(exit::OK)
}
