//! `mcp-ledger retention apply`: remove whole old ranges of a chain, honouring `[audit]
//! retention_days` and `retention_max_size_mb`, in a way `verify` can tell from tampering.
//!
//! Order matters, and every step happens before anything is removed:
//! 1. a signed checkpoint covering the range is made (or found);
//! 2. a `retention_cut` event is appended to the chain, recording `up_to_seq`, the hash of the
//!    event there (the link the first remaining event keeps), the Merkle tree at `up_to_seq`,
//!    the covering checkpoint, the reason and the count;
//! 3. a signed checkpoint covering the `retention_cut` event itself is made;
//! 4. only then does [`Store::apply_retention`] remove the range, in one transaction.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, anyhow};
use clap::{Args, Subcommand};
use serde_json::json;

use super::checkpoints::read_signing_key;
use super::{CliError, LedgerArgs, configured, exit};
use crate::checkpointer::{Anchor, Checkpointer, FileAnchor};
use crate::record::merkle::{CompactTree, event_leaf_hash};
use crate::record::verify::ChainStart;
use crate::record::{Draft, Event, EventType};
use crate::store::{self, DEFAULT_CHAIN, Store, StoreOptions};

/// Events read at a time when measuring or hashing a range.
const PAGE: i64 = 5_000;

#[derive(Debug, Args)]
pub struct RetentionArgs {
    #[command(subcommand)]
    command: RetentionCommand,
}

#[derive(Debug, Subcommand)]
enum RetentionCommand {
    /// Remove the events older than `[audit] retention_days` (and the oldest beyond
    /// `retention_max_size_mb`) after a signed `retention_cut`
    Apply(ApplyArgs),
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    ledger: LedgerArgs,
    /// The configuration file whose `[audit]` and `[ledger]` tables apply
    #[arg(long, value_name = "FILE", default_value = "mcp-ledger.toml")]
    config: PathBuf,
    /// The private key that signs the checkpoints [default: `[ledger] signing_key`]
    #[arg(long, value_name = "PRIV")]
    key: Option<PathBuf>,
    /// The chain to apply retention to
    #[arg(long, default_value = DEFAULT_CHAIN)]
    chain: String,
    /// Say what would be removed, and remove nothing
    #[arg(long)]
    dry_run: bool,
    /// Print the outcome as JSON
    #[arg(long)]
    json: bool,
}

pub async fn run(args: RetentionArgs) -> Result<u8, CliError> {
    match args.command {
        RetentionCommand::Apply(args) => apply(args).await,
    }
}

/// What retention would remove from a chain.
#[derive(Debug, Clone, serde::Serialize)]
struct Plan {
    chain_id: String,
    /// The first seq still held.
    first_seq: i64,
    /// The last seq to remove (`first_seq - 1` when there is nothing to remove).
    up_to_seq: i64,
    head_seq: i64,
    reasons: Vec<String>,
}

impl Plan {
    fn count(&self) -> i64 {
        (self.up_to_seq - self.first_seq + 1).max(0)
    }
}

async fn apply(args: ApplyArgs) -> Result<u8, CliError> {
    let config = configured::load(&args.config)?;
    let days = config.audit.retention_days;
    let max_mb = config.audit.retention_max_size_mb;
    let payload_days = config.audit.payload_retention();
    let events_retention = days.is_some() || max_mb.is_some();
    if !events_retention && payload_days.is_none() {
        return Err(CliError::Usage(anyhow!(
            "{}: [audit] sets none of retention_days, retention_max_size_mb and \
             payload_retention_days; nothing to apply",
            args.config.display()
        )));
    }
    let key_path = args.key.clone().or_else(|| config.ledger.signing_key.clone());
    let key = match (&key_path, args.dry_run || !events_retention) {
        (Some(path), _) => Some(read_signing_key(path).map_err(CliError::Usage)?),
        (None, true) => None,
        (None, false) => {
            return Err(CliError::Usage(anyhow!(
                "retention needs a signing key: pass --key PRIVATE or set [ledger] signing_key"
            )));
        }
    };
    let url = configured::ledger_url(&args.ledger, Some(&config))?;
    let options = StoreOptions { migrate: false, ..StoreOptions::default() };
    let store = store::open(&url, &options)
        .await
        .with_context(|| format!("cannot open the ledger {url}"))
        .map_err(CliError::Failed)?;
    let anchor =
        config.ledger.anchor.as_ref().map(|p| Arc::new(FileAnchor::new(p)) as Arc<dyn Anchor>);
    let outcome = async {
        let mut events = None;
        if events_retention {
            let plan = plan(store.as_ref(), &args.chain, days, max_mb).await?;
            let cut = if args.dry_run || plan.count() == 0 {
                None
            } else {
                let key = key.expect("checked above");
                Some(cut(store.clone(), &plan, key, anchor, days, max_mb).await?)
            };
            events = Some((plan, cut));
        }
        let payloads = match payload_days {
            Some(days) => {
                Some(expire_payloads(store.as_ref(), &args.chain, days, args.dry_run).await?)
            }
            None => None,
        };
        Ok::<_, anyhow::Error>((events, payloads))
    }
    .await;
    store.close().await;
    let (events, payloads) = outcome.map_err(CliError::Failed)?;
    if args.json {
        let value = json!({
            "plan": events.as_ref().map(|(plan, _)| plan),
            "dry_run": args.dry_run,
            "cut": events.as_ref().and_then(|(_, cut)| cut.as_ref()).map(|(event, removed)| json!({
                "event_id": event.event_id,
                "seq": event.seq,
                "removed_events": removed.events,
                "removed_payloads": removed.payloads,
            })),
            "payload_retention": payloads,
        });
        println!("{value}");
        return Ok(exit::OK);
    }
    if let Some((plan, cut)) = &events {
        print_events_outcome(plan, cut.as_ref());
    }
    if let Some(expiry) = &payloads {
        let verb = if args.dry_run { "would erase" } else { "erased" };
        println!(
            "{verb} {} payload bodies that no event since {} references (payload retention of {} days){}",
            expiry.bodies,
            expiry.older_than,
            expiry.days,
            expiry
                .erasure_event
                .as_ref()
                .map(|id| format!("; erasure event {id}"))
                .unwrap_or_default()
        );
    }
    Ok(exit::OK)
}

fn print_events_outcome(plan: &Plan, cut: Option<&(Event, store::RetentionRemoved)>) {
    if plan.count() == 0 {
        println!("nothing to remove from chain {} ({})", plan.chain_id, plan.reasons.join("; "));
    } else if let Some((event, removed)) = cut {
        println!(
            "removed seq {}..={} of chain {} ({} events, {} payload bodies) after retention_cut {} \
             at seq {} ({})",
            plan.first_seq,
            plan.up_to_seq,
            plan.chain_id,
            removed.events,
            removed.payloads,
            event.event_id,
            event.seq,
            plan.reasons.join("; ")
        );
    } else {
        println!(
            "would remove seq {}..={} of chain {} ({} events; {})",
            plan.first_seq,
            plan.up_to_seq,
            plan.chain_id,
            plan.count(),
            plan.reasons.join("; ")
        );
    }
}

/// What payload retention erased (or would erase).
#[derive(Debug, Clone, serde::Serialize)]
struct PayloadExpiry {
    days: u32,
    older_than: String,
    bodies: usize,
    /// The first `erasure` event recording it (there is one per [`REFERENCES_PER_EVENT`]).
    erasure_event: Option<String>,
}

/// References listed in one `erasure` event of payload retention, so that no event grows large.
const REFERENCES_PER_EVENT: usize = 1_000;

/// Erases the payload bodies no event of the last `days` days references: records them in
/// `erasure` events (scope `retention`), then deletes them. The events that reference them stay,
/// and still verify.
async fn expire_payloads(
    store: &dyn Store,
    chain_id: &str,
    days: u32,
    dry_run: bool,
) -> anyhow::Result<PayloadExpiry> {
    let cutoff = time::OffsetDateTime::now_utc() - time::Duration::days(i64::from(days));
    let older_than = crate::record::format_timestamp(cutoff);
    let references = store.erasable_payloads(&older_than).await?;
    let mut expiry = PayloadExpiry {
        days,
        older_than: older_than.clone(),
        bodies: references.len(),
        erasure_event: None,
    };
    if dry_run || references.is_empty() {
        return Ok(expiry);
    }
    let drafts: Vec<Draft> = references
        .chunks(REFERENCES_PER_EVENT)
        .map(|chunk| {
            Draft::new(
                EventType::Erasure,
                json!({
                    "scope": "retention",
                    "references": chunk,
                    "older_than": older_than,
                    "payload_retention_days": days,
                    "reason": format!("payload retention: bodies no event since {older_than} references"),
                }),
            )
        })
        .collect();
    let events = store
        .append_settled(chain_id, &drafts)
        .await
        .context("cannot append the erasure events; nothing was erased")?;
    expiry.erasure_event = events.first().map(|e| e.event_id.clone());
    let erased = store
        .erase_payloads(&references, true)
        .await
        .context("the erasure is recorded, but the bodies could not be deleted (retention must run as the ledger's owner)")?;
    expiry.bodies = usize::try_from(erased).unwrap_or(usize::MAX);
    Ok(expiry)
}

/// The newest recorded cut of `chain_id`, if any.
async fn last_cut(store: &dyn Store, chain_id: &str) -> anyhow::Result<Option<ChainStart>> {
    let cuts = store.retention_cuts(Some(chain_id)).await?;
    Ok(cuts.iter().rev().find_map(ChainStart::from_cut_event))
}

async fn event_at(store: &dyn Store, chain_id: &str, seq: i64) -> anyhow::Result<Event> {
    store
        .events_range(chain_id, seq, seq)
        .await?
        .pop()
        .ok_or_else(|| anyhow!("chain {chain_id} has no event at seq {seq}"))
}

async fn plan(
    store: &dyn Store,
    chain_id: &str,
    days: Option<u32>,
    max_mb: Option<u64>,
) -> anyhow::Result<Plan> {
    let head_seq = store.chain_size(chain_id).await?;
    let first_seq = match last_cut(store, chain_id).await? {
        Some(cut) => cut.seq,
        None => 1,
    };
    let mut plan = Plan {
        chain_id: chain_id.to_owned(),
        first_seq,
        up_to_seq: first_seq - 1,
        head_seq,
        reasons: Vec::new(),
    };
    if head_seq < first_seq {
        plan.reasons.push("the chain holds no events".into());
        return Ok(plan);
    }
    if let Some(days) = days {
        let cutoff = time::OffsetDateTime::now_utc() - time::Duration::days(i64::from(days));
        let cutoff = crate::record::format_timestamp(cutoff);
        // Timestamps are stamped under the chain-head lock, so they rise with seq: the last
        // event older than the cutoff is found by bisection.
        let (mut low, mut high) = (first_seq - 1, head_seq);
        while low < high {
            let mid = low + (high - low + 1) / 2;
            if event_at(store, chain_id, mid).await?.timestamp < cutoff {
                low = mid;
            } else {
                high = mid - 1;
            }
        }
        if low >= first_seq {
            plan.up_to_seq = plan.up_to_seq.max(low);
            plan.reasons.push(format!("retention_days = {days}: events before {cutoff}"));
        }
    }
    if let Some(max_mb) = max_mb {
        let limit = max_mb.saturating_mul(1024 * 1024);
        // The size of the chain's events as stored (their JSON), newest first: keep what fits.
        let mut sizes = Vec::new();
        let mut from = first_seq;
        while from <= head_seq {
            let events = store.events_range(chain_id, from, from + PAGE - 1).await?;
            sizes.extend(
                events.iter().map(|e| {
                    (e.seq, serde_json::to_string(e).map(|s| s.len() as u64).unwrap_or(0))
                }),
            );
            from += PAGE;
        }
        let total: u64 = sizes.iter().map(|(_, s)| s).sum();
        if total > limit {
            let mut excess = total - limit;
            let mut up_to = first_seq - 1;
            for (seq, size) in &sizes {
                if excess == 0 {
                    break;
                }
                excess = excess.saturating_sub(*size);
                up_to = *seq;
            }
            if up_to > plan.up_to_seq {
                plan.up_to_seq = up_to;
            }
            plan.reasons
                .push(format!("retention_max_size_mb = {max_mb}: the events take {total} bytes"));
        }
    }
    if plan.reasons.is_empty() {
        plan.reasons.push("everything is within the retention limits".into());
    }
    Ok(plan)
}

/// Steps 1–4 of the module documentation. Returns the `retention_cut` event and what was removed.
async fn cut(
    store: Arc<dyn Store>,
    plan: &Plan,
    key: crate::record::checkpoint::SigningKey,
    anchor: Option<Arc<dyn Anchor>>,
    days: Option<u32>,
    max_mb: Option<u64>,
) -> anyhow::Result<(Event, store::RetentionRemoved)> {
    let chain_id = plan.chain_id.as_str();
    // 1. A signed checkpoint covering the range.
    let mut checkpointer = Checkpointer::resume(store.clone(), chain_id, key, anchor)
        .await
        .context("cannot resume checkpointing")?;
    checkpointer.checkpoint().await.context("cannot sign a checkpoint before the cut")?;
    let covering = store
        .latest_checkpoint(chain_id)
        .await?
        .filter(|c| c.tree_size >= plan.up_to_seq)
        .ok_or_else(|| anyhow!("no signed checkpoint covers seq {}", plan.up_to_seq))?;

    // The Merkle tree at up_to_seq: from the previous cut's tree (or empty), plus the leaves.
    let mut tree = match last_cut(store.as_ref(), chain_id).await? {
        Some(previous) => {
            previous.tree.ok_or_else(|| anyhow!("the previous retention cut recorded no tree"))?
        }
        None => CompactTree::new(),
    };
    let mut from = plan.first_seq;
    while from <= plan.up_to_seq {
        let to = (from + PAGE - 1).min(plan.up_to_seq);
        for (_, hash) in store.event_hashes(chain_id, from, to).await? {
            tree.push(event_leaf_hash(&hash)?);
        }
        from = to + 1;
    }
    if tree.size() != plan.up_to_seq as u64 {
        return Err(anyhow!(
            "chain {chain_id} does not hold every event of seq {}..={}; run `mcp-ledger verify`",
            plan.first_seq,
            plan.up_to_seq
        ));
    }
    let last_removed = event_at(store.as_ref(), chain_id, plan.up_to_seq).await?;

    // 2. The retention_cut event.
    let draft = Draft::new(
        EventType::RetentionCut,
        json!({
            "first_seq": plan.first_seq,
            "up_to_seq": plan.up_to_seq,
            "up_to_hash": last_removed.hash,
            "up_to_root": hex::encode(tree.root()),
            "tree_state": tree,
            "checkpoint": {
                "id": covering.id,
                "tree_size": covering.tree_size,
                "root_hash": covering.root_hash,
            },
            "reason": plan.reasons.join("; "),
            "retention_days": days,
            "retention_max_size_mb": max_mb,
            "removed_events": plan.count(),
        }),
    );
    let event = store
        .append_settled(chain_id, std::slice::from_ref(&draft))
        .await
        .context("cannot append the retention_cut event")?
        .pop()
        .expect("one draft, one event");

    // 3. A signed checkpoint covering the retention_cut event.
    checkpointer.checkpoint().await.context("cannot sign a checkpoint of the cut")?;
    let latest = store.latest_checkpoint(chain_id).await?;
    if latest.is_none_or(|c| c.tree_size < event.seq) {
        return Err(anyhow!(
            "no signed checkpoint covers the retention_cut at seq {}; nothing was removed",
            event.seq
        ));
    }

    // 4. Remove the range.
    let removed = store
        .apply_retention(chain_id, plan.up_to_seq, &event.event_id, &last_removed.timestamp)
        .await
        .context("cannot remove the range (retention must run as the ledger's owner)")?;
    Ok((event, removed))
}
