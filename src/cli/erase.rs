//! `mcp-ledger erase REF --reason R`: a legal erasure request. Appends an `erasure` event that
//! names the payload reference, then deletes the body. The events that reference the body stay
//! exactly as they were hashed, so `verify` still passes; the body is gone.

use anyhow::{Context, anyhow};
use clap::Args;
use serde_json::json;

use super::{CliError, LedgerArgs, exit};
use crate::record::{Draft, Event, EventType};
use crate::store::{DEFAULT_CHAIN, Store};

#[derive(Debug, Args)]
pub struct EraseArgs {
    #[command(flatten)]
    ledger: LedgerArgs,
    /// The payload reference (`sha256:<hex>`) whose body is erased, as in `input_body_ref` or
    /// `output_body_ref` of the provenance view
    reference: String,
    /// Why it is erased, e.g. the erasure request's ticket (recorded in the erasure event)
    #[arg(long)]
    reason: String,
    /// Who erases it [default: $USER]
    #[arg(long, value_name = "NAME")]
    operator: Option<String>,
    /// Print the outcome as JSON
    #[arg(long)]
    json: bool,
}

pub async fn run(args: EraseArgs) -> Result<u8, CliError> {
    if args.reason.trim().is_empty() {
        return Err(CliError::Usage(anyhow!("--reason must not be empty")));
    }
    if !is_reference(&args.reference) {
        return Err(CliError::Usage(anyhow!(
            "`{}` is not a payload reference: expected sha256: and 64 lower-case hex digits",
            args.reference
        )));
    }
    let store = args.ledger.open_existing(CliError::Failed).await?;
    let outcome = erase(store.as_ref(), &args).await;
    store.close().await;
    let (event, erased) = outcome?;
    if args.json {
        let value = json!({"reference": args.reference, "erasure_event": event, "erased": erased});
        println!("{value}");
    } else if erased {
        println!(
            "erased the body of {} (erasure event {} at seq {}); the events that reference it \
             are unchanged and still verify",
            args.reference, event.event_id, event.seq
        );
    } else {
        println!(
            "the body of {} was already erased (erasure event {} at seq {})",
            args.reference, event.event_id, event.seq
        );
    }
    Ok(exit::OK)
}

/// Records the erasure (unless one is already recorded), then deletes the body. Returns the
/// erasure event and whether a body was deleted now.
async fn erase(store: &dyn Store, args: &EraseArgs) -> Result<(Event, bool), CliError> {
    let failed = |e: anyhow::Error| CliError::Failed(e);
    let body =
        store.payload(&args.reference).await.context("cannot read the ledger").map_err(failed)?;
    let earlier = store
        .events_of_type(EventType::Erasure.as_str())
        .await
        .context("cannot read the ledger")
        .map_err(failed)?
        .into_iter()
        .find(|e| e.data.get("reference").and_then(|r| r.as_str()) == Some(&args.reference));
    let event = match (&body, earlier) {
        (None, Some(earlier)) => return Ok((earlier, false)),
        (None, None) => {
            return Err(CliError::Failed(anyhow!(
                "no body is stored under {}: it was never kept (payloads = \"none\"), was \
                 removed by retention, or is kept redacted under its own reference (see \
                 input_body_ref / output_body_ref in the provenance view)",
                args.reference
            )));
        }
        // A body still there despite an erasure: the delete failed last time; finish it.
        (Some(_), Some(earlier)) => earlier,
        (Some(body), None) => {
            let by = args
                .operator
                .clone()
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "unknown".to_owned());
            let draft = Draft::new(
                EventType::Erasure,
                json!({
                    "scope": "request",
                    "reference": args.reference,
                    "size": body.len(),
                    "reason": args.reason,
                    "by": by,
                }),
            );
            store
                .append_settled(DEFAULT_CHAIN, std::slice::from_ref(&draft))
                .await
                .context("cannot append the erasure event; nothing was erased")
                .map_err(failed)?
                .pop()
                .expect("one draft, one event")
        }
    };
    let erased = store
        .erase_payloads(std::slice::from_ref(&args.reference), false)
        .await
        .context("the erasure is recorded, but the body could not be deleted (erasure must run as the ledger's owner); run the command again")
        .map_err(failed)?;
    Ok((event, erased > 0))
}

fn is_reference(text: &str) -> bool {
    text.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}
