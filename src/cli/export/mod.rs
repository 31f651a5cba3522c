//! `mcp-ledger export --bundle DIR`: an evidence bundle that can be checked with no database —
//! the selected events of one chain, the signed checkpoint that covers them, an RFC 6962
//! inclusion proof per event and the public key. Layout (see docs/verification.md):
//!
//! - `events.jsonl`: every column of each selected event, one JSON object per line, in seq order;
//! - `anchor_event.json`: the event just before the range (absent when the range starts at seq 1),
//!   so that the first event's `prev_hash` can be checked;
//! - `checkpoint.note`: the latest signed checkpoint of the chain (it must cover the last event);
//! - `proofs.jsonl`: `{seq, event_id, leaf_index, tree_size, proof: [hex…]}` per event (the anchor
//!   event included);
//! - `key.vkey`: the C2SP public key that signed the note;
//! - `manifest.json`: format version, chain, range, counts and tool version.

mod levels;

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use clap::Args;
use serde_json::json;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::ledger::read_keys;
use super::proofs::checkpoint_head;
use super::{CliError, LedgerArgs, exit};
use crate::record::merkle::event_leaf_hash;
use crate::record::{Event, format_timestamp};
use crate::store::{DEFAULT_CHAIN, Store};
use crate::telemetry::progress::Progress;

/// The `format` of `manifest.json`.
pub const BUNDLE_FORMAT: &str = "mcp-ledger-bundle/1";

/// Every file a bundle may hold.
const BUNDLE_FILES: [&str; 6] = [
    "events.jsonl",
    "anchor_event.json",
    "checkpoint.note",
    "proofs.jsonl",
    "key.vkey",
    "manifest.json",
];

/// Events read from the store at a time, so the ledger is never held in memory.
const PAGE: i64 = 1000;

/// Event hashes read from the store at a time while the tree is built.
const HASH_PAGE: i64 = 20_000;

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    ledger: LedgerArgs,
    /// Write an evidence bundle into this directory (created if needed; must be empty)
    #[arg(long, value_name = "DIR")]
    bundle: PathBuf,
    /// The public key (C2SP vkey, or a file holding one) that signs the chain's checkpoints
    #[arg(long = "key", value_name = "PUBKEY")]
    key: String,
    /// Only events at or after this time: RFC 3339, or a duration ago (90s, 30m, 24h, 7d)
    #[arg(long, value_name = "TIME")]
    since: Option<String>,
    /// Only events at or before this time: RFC 3339, or a duration ago
    #[arg(long, value_name = "TIME")]
    until: Option<String>,
    /// The chain to export
    #[arg(long, default_value = DEFAULT_CHAIN)]
    chain: String,
}

/// `RFC3339` or `<n>{s,m,h,d}` ago, as a ledger timestamp (which compares as text).
pub fn parse_time(value: &str, now: OffsetDateTime) -> Result<String, String> {
    if let Ok(at) = OffsetDateTime::parse(value, &Rfc3339) {
        return Ok(format_timestamp(at));
    }
    let split = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let n: i64 = number.parse().map_err(|_| format!("{value:?} is not RFC 3339 or a duration"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{value:?}: a duration ends in s, m, h or d")),
    };
    Ok(format_timestamp(now - time::Duration::seconds(n.saturating_mul(seconds))))
}

pub async fn run(args: ExportArgs) -> Result<u8, CliError> {
    let keys = read_keys(std::slice::from_ref(&args.key))?;
    let now = OffsetDateTime::now_utc();
    let since = args.since.as_deref().map(|v| parse_time(v, now)).transpose();
    let until = args.until.as_deref().map(|v| parse_time(v, now)).transpose();
    let (since, until) = match (since, until) {
        (Ok(s), Ok(u)) => (s, u),
        (Err(e), _) | (_, Err(e)) => return Err(CliError::Usage(anyhow!(e))),
    };
    prepare_dir(&args.bundle).map_err(CliError::Usage)?;
    let store = args.ledger.open_existing(CliError::Failed).await?;
    let outcome = export_bundle(store.as_ref(), &args, &keys[0], since, until).await;
    store.close().await;
    if outcome.is_err() {
        // Leave no half-written bundle behind (the directory was empty before).
        for name in BUNDLE_FILES {
            let _ = std::fs::remove_file(args.bundle.join(name));
        }
    }
    let summary = outcome.map_err(CliError::Failed)?;
    println!("{summary}");
    Ok(exit::OK)
}

fn prepare_dir(dir: &Path) -> Result<(), anyhow::Error> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if std::fs::read_dir(dir)?.next().is_some() {
        return Err(anyhow!("{} is not empty; export into a new directory", dir.display()));
    }
    Ok(())
}

fn event_line(event: &Event) -> String {
    serde_json::to_string(event).expect("an event serialises")
}

async fn export_bundle(
    store: &dyn Store,
    args: &ExportArgs,
    key: &crate::record::checkpoint::VerifyingKey,
    since: Option<String>,
    until: Option<String>,
) -> Result<String, anyhow::Error> {
    let chain = &args.chain;
    let dir = &args.bundle;
    let checkpoint = store.latest_checkpoint(chain).await?.ok_or_else(|| {
        anyhow!(
            "chain {chain} has no checkpoint yet; sign one with `mcp-ledger checkpoint --key KEY`"
        )
    })?;
    let size = checkpoint.tree_size as u64;
    let (_, root) =
        checkpoint_head(&checkpoint.note, chain, std::slice::from_ref(key)).map_err(|e| {
            anyhow!("the latest checkpoint of chain {chain} does not verify with {}: {e}", args.key)
        })?;

    // Stream the chain page by page, writing the selected events as they come; nothing per
    // event stays in memory (the proofs below read the events back from the file).
    let chain_size = store.chain_size(chain).await?;
    // `export` prints no machine-readable output, so progress shows whenever stderr is a terminal.
    let progress = Progress::events("reading events", Some(chain_size.max(0) as u64), false);
    let events_path = dir.join("events.jsonl");
    let mut out = BufWriter::new(File::create(&events_path).context("cannot write events.jsonl")?);
    let mut selected = Selected::default();
    let mut before: Option<Event> = None;
    let mut from = 1;
    'pages: while from <= chain_size {
        let to = (from + PAGE - 1).min(chain_size);
        for event in store.events_range(chain, from, to).await? {
            if until.as_ref().is_some_and(|u| event.timestamp.as_str() > u.as_str()) {
                break 'pages;
            }
            if since.as_ref().is_some_and(|s| event.timestamp.as_str() < s.as_str()) {
                before = Some(event);
                continue;
            }
            writeln!(out, "{}", event_line(&event))?;
            selected.add(event.seq);
        }
        progress.inc((to - from + 1) as u64);
        from = to + 1;
    }
    out.flush()?;
    drop(out);
    let (Some(first), Some(last)) = (selected.first, selected.last) else {
        return Err(anyhow!("no events of chain {chain} in the selected range"));
    };
    if last as u64 > size {
        return Err(anyhow!(
            "the latest checkpoint of chain {chain} covers seqs 1..={size}, but the last event \
             selected is seq {last}; sign a newer one with `mcp-ledger checkpoint --key KEY` (or \
             pass --until)"
        ));
    }
    let anchor = before.filter(|b| b.seq == first - 1);
    if first > 1 && anchor.is_none() {
        return Err(anyhow!("cannot read seq {} of chain {chain}", first - 1));
    }

    // The checkpoint's tree, built on disk from its leaves, must have the root the note signed.
    progress.set_phase("building the tree");
    progress.restart(Some(size));
    let tree = build_tree(store, chain, size, &progress, dir).await?;
    if tree.root()? != root {
        return Err(anyhow!(
            "chain {chain} does not hash to the root its latest checkpoint signed; run \
             `mcp-ledger verify --key …`"
        ));
    }

    // One proof per exported event (the anchor first), in seq order.
    let mut proofs = BufWriter::new(
        File::create(dir.join("proofs.jsonl")).context("cannot write proofs.jsonl")?,
    );
    let mut prover = tree.prover()?;
    progress.set_phase("writing proofs");
    progress.restart(Some(u64::from(anchor.is_some()) + selected.count));
    let mut write_proof = |seq: i64, event_id: &str| -> Result<(), anyhow::Error> {
        progress.inc(1);
        let index = (seq - 1) as u64;
        let proof = prover.proof(index)?;
        let line = json!({
            "seq": seq,
            "event_id": event_id,
            "leaf_index": index,
            "tree_size": size,
            "proof": proof.iter().map(hex::encode).collect::<Vec<_>>(),
        });
        writeln!(proofs, "{line}")?;
        Ok(())
    };
    if let Some(anchor) = &anchor {
        write_proof(anchor.seq, &anchor.event_id)?;
    }
    for line in BufReader::new(File::open(&events_path)?).lines() {
        let placed: Placed = serde_json::from_str(&line?).context("re-reading events.jsonl")?;
        write_proof(placed.seq, &placed.event_id)?;
    }
    proofs.flush()?;
    drop(proofs);
    drop(tree);
    if let Some(anchor) = &anchor {
        std::fs::write(dir.join("anchor_event.json"), event_line(anchor) + "\n")?;
    }
    std::fs::write(dir.join("checkpoint.note"), &checkpoint.note)?;
    std::fs::write(dir.join("key.vkey"), format!("{key}\n"))?;
    let manifest = json!({
        "format": BUNDLE_FORMAT,
        "chain_id": chain,
        "since": since,
        "until": until,
        "first_seq": first,
        "last_seq": last,
        "events": selected.count,
        "anchor_event": anchor.is_some(),
        "tree_size": size,
        "root_hash": hex::encode(root),
        "key": format!("{}+{}", key.name(), key.fingerprint()),
        "tool_version": env!("CARGO_PKG_VERSION"),
    });
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(&manifest).expect("json") + "\n",
    )?;
    Ok(format!(
        "exported {} event(s) of chain {chain} (seqs {}..={}) to {} with checkpoint size {size}; \
         check it with `mcp-ledger verify --bundle {}`",
        selected.count,
        first,
        last,
        dir.display(),
        dir.display()
    ))
}

/// What the first pass keeps of the selected events: their count and seq range.
#[derive(Default)]
struct Selected {
    count: u64,
    first: Option<i64>,
    last: Option<i64>,
}

impl Selected {
    fn add(&mut self, seq: i64) {
        self.count += 1;
        self.first.get_or_insert(seq);
        self.last = Some(seq);
    }
}

/// The fields of an exported event that its proof line names.
#[derive(serde::Deserialize)]
struct Placed {
    seq: i64,
    event_id: String,
}

/// The tree of the first `size` events of `chain`, from their hashes read a page at a time.
async fn build_tree(
    store: &dyn Store,
    chain: &str,
    size: u64,
    progress: &Progress,
    dir: &Path,
) -> Result<levels::LevelFiles, anyhow::Error> {
    let mut leaves = levels::LeafWriter::new_in(dir).context("cannot create the tree's files")?;
    let mut expected = 1;
    while expected <= size as i64 {
        let page_start = expected;
        let to = (page_start + HASH_PAGE - 1).min(size as i64);
        for (seq, hash) in store.event_hashes(chain, expected, to).await? {
            if seq != expected {
                return Err(anyhow!(
                    "chain {chain} does not hold every event its checkpoint covers (seqs \
                     1..={size}; seq {expected} is missing or repeated): they were removed by \
                     retention or tampered with (run `mcp-ledger verify`); a bundle needs them \
                     all to build its proofs"
                ));
            }
            leaves.push(&event_leaf_hash(&hash)?)?;
            expected += 1;
        }
        if expected <= to {
            return Err(anyhow!(
                "chain {chain} does not hold every event its checkpoint covers (seqs 1..={size}; \
                 seq {expected} is missing): they were removed by retention or tampered with (run \
                 `mcp-ledger verify`); a bundle needs them all to build its proofs"
            ));
        }
        progress.inc((to - page_start + 1) as u64);
    }
    Ok(leaves.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_a_duration_ago() {
        let now = time::macros::datetime!(2026-11-22 06:30:00 UTC);
        assert_eq!(
            parse_time("2026-11-22T08:30:00+02:00", now).unwrap(),
            "2026-11-22T06:30:00.000000Z"
        );
        assert_eq!(parse_time("90s", now).unwrap(), "2026-11-22T06:28:30.000000Z");
        assert_eq!(parse_time("2h", now).unwrap(), "2026-11-22T04:30:00.000000Z");
        assert_eq!(parse_time("1d", now).unwrap(), "2026-11-21T06:30:00.000000Z");
        assert!(parse_time("5w", now).is_err());
        assert!(parse_time("yesterday", now).is_err());
    }
}
