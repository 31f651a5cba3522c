//! `mcp-ledger verify --bundle DIR`: checks an evidence bundle written by `export --bundle` with
//! no database: every event's hash and link, the checkpoint note's signature, and every inclusion
//! proof against the note's root. Exit 0 intact, 1 tampered, 2 could not check.

use std::path::Path;

use anyhow::{Context, anyhow};
use serde::Deserialize;
use serde_json::json;

use super::export::BUNDLE_FORMAT;
use super::proofs::checkpoint_head;
use super::{CliError, exit};
use crate::record::checkpoint::VerifyingKey;
use crate::record::merkle::{self, Hash, event_leaf_hash};
use crate::record::{Event, GENESIS_PREV_HASH};

#[derive(Debug, Deserialize)]
struct ProofLine {
    seq: i64,
    event_id: String,
    leaf_index: u64,
    tree_size: u64,
    proof: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct Manifest {
    format: String,
    chain_id: String,
}

fn read(dir: &Path, name: &str) -> Result<String, anyhow::Error> {
    std::fs::read_to_string(dir.join(name))
        .with_context(|| format!("cannot read {}", dir.join(name).display()))
}

fn lines<T: serde::de::DeserializeOwned>(text: &str, name: &str) -> Result<Vec<T>, anyhow::Error> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| serde_json::from_str(l).with_context(|| format!("{name} line {}", n + 1)))
        .collect()
}

/// Everything a bundle holds, parsed.
struct Bundle {
    chain_id: String,
    anchor: Option<Event>,
    events: Vec<Event>,
    proofs: Vec<ProofLine>,
    note: String,
    key: VerifyingKey,
    key_source: String,
}

fn load(dir: &Path, keys: Vec<VerifyingKey>) -> Result<Bundle, anyhow::Error> {
    let manifest: Manifest =
        serde_json::from_str(&read(dir, "manifest.json")?).context("manifest.json")?;
    if manifest.format != BUNDLE_FORMAT {
        return Err(anyhow!(
            "unknown bundle format {:?} (expected {BUNDLE_FORMAT})",
            manifest.format
        ));
    }
    let anchor = match std::fs::read_to_string(dir.join("anchor_event.json")) {
        Ok(text) => Some(serde_json::from_str(&text).context("anchor_event.json")?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).context("cannot read anchor_event.json"),
    };
    let (key, key_source) = match keys.into_iter().next() {
        Some(key) => (key, "--key".to_owned()),
        None => {
            let text = read(dir, "key.vkey")?;
            let key = VerifyingKey::from_vkey(&text).context("key.vkey is not a public key")?;
            (key, "the bundle's key.vkey (pass --key to trust your own copy)".to_owned())
        }
    };
    Ok(Bundle {
        chain_id: manifest.chain_id,
        anchor,
        events: lines(&read(dir, "events.jsonl")?, "events.jsonl")?,
        proofs: lines(&read(dir, "proofs.jsonl")?, "proofs.jsonl")?,
        note: read(dir, "checkpoint.note")?,
        key,
        key_source,
    })
}

/// The findings of a loaded bundle (empty: intact), and the checkpoint's size.
fn check(bundle: &Bundle) -> (Vec<String>, Option<(u64, Hash)>) {
    let mut findings = Vec::new();
    let chain = &bundle.chain_id;
    let name = |e: &Event| format!("event {} (seq {})", e.event_id, e.seq);
    if bundle.events.is_empty() {
        findings.push("events.jsonl holds no events".to_owned());
    }
    // Hashes and links, starting from the anchor event (or the genesis hash at seq 1).
    let mut prev: Option<&Event> = None;
    for event in bundle.anchor.iter().chain(bundle.events.iter()) {
        if event.chain_id != *chain {
            findings.push(format!(
                "{} belongs to chain {}, not {chain}",
                name(event),
                event.chain_id
            ));
        }
        if event.compute_hash() != event.hash {
            findings.push(format!("modified: {} does not match its hash", name(event)));
        }
        match prev {
            Some(p) if event.seq != p.seq + 1 => {
                findings.push(format!("missing: {} follows seq {}", name(event), p.seq))
            }
            Some(p) if event.prev_hash != p.hash => findings.push(format!(
                "broken link: {} does not point to the event before it",
                name(event)
            )),
            None if event.seq == 1 && event.prev_hash != GENESIS_PREV_HASH => {
                findings.push(format!("broken link: {} does not start the chain", name(event)))
            }
            None if event.seq != 1 && bundle.anchor.is_none() => findings.push(format!(
                "missing: the range starts at seq {} but anchor_event.json is absent",
                event.seq
            )),
            _ => {}
        }
        prev = Some(event);
    }
    // The note, signed by the trusted key.
    let head = match checkpoint_head(&bundle.note, chain, std::slice::from_ref(&bundle.key)) {
        Ok(head) => head,
        Err(reason) => {
            findings.push(format!("bad checkpoint: {reason}"));
            return (findings, None);
        }
    };
    let (size, root) = head;
    // One proof per event, each leading to the note's root.
    let expected: Vec<&Event> = bundle.anchor.iter().chain(bundle.events.iter()).collect();
    if bundle.proofs.len() != expected.len() {
        findings.push(format!(
            "proofs.jsonl holds {} proofs for {} events",
            bundle.proofs.len(),
            expected.len()
        ));
    }
    for (event, proof) in expected.iter().zip(&bundle.proofs) {
        let verdict = (|| {
            if proof.seq != event.seq || proof.event_id != event.event_id {
                return Err(format!(
                    "the proof is for event {} (seq {})",
                    proof.event_id, proof.seq
                ));
            }
            if proof.leaf_index != (event.seq - 1) as u64 || proof.tree_size != size {
                return Err(format!(
                    "the proof is for leaf {} of a tree of size {}, not leaf {} of {size}",
                    proof.leaf_index,
                    proof.tree_size,
                    event.seq - 1
                ));
            }
            let path: Vec<Hash> = proof
                .proof
                .iter()
                .map(|h| hex::decode(h).ok().and_then(|b| b.try_into().ok()))
                .collect::<Option<_>>()
                .ok_or("a proof hash is not 32 bytes of hex")?;
            let leaf = event_leaf_hash(&event.hash).map_err(|e| e.to_string())?;
            merkle::verify_inclusion(&leaf, proof.leaf_index, size, &path, &root)
                .map_err(|e| e.to_string())
        })();
        if let Err(reason) = verdict {
            findings.push(format!("bad proof: {}: {reason}", name(event)));
        }
    }
    (findings, Some(head))
}

pub fn verify_bundle(dir: &Path, keys: Vec<VerifyingKey>, as_json: bool) -> Result<u8, CliError> {
    let bundle = load(dir, keys)
        .with_context(|| format!("cannot check the bundle {}", dir.display()))
        .map_err(CliError::CouldNotCheck)?;
    let (findings, head) = check(&bundle);
    let intact = findings.is_empty();
    let trusted = format!("{}+{}", bundle.key.name(), bundle.key.fingerprint());
    if as_json {
        let value = json!({
            "status": if intact { "intact" } else { "tampered" },
            "chain_id": bundle.chain_id,
            "events": bundle.events.len(),
            "first_seq": bundle.events.first().map(|e| e.seq),
            "last_seq": bundle.events.last().map(|e| e.seq),
            "tree_size": head.map(|(s, _)| s),
            "root_hash": head.map(|(_, r)| hex::encode(r)),
            "trusted_key": trusted,
            "key_source": bundle.key_source,
            "findings": findings,
        });
        println!("{value}");
    } else {
        for finding in &findings {
            println!("{finding}");
        }
        println!("trusted key: {trusted}, from {}", bundle.key_source);
        if intact {
            let (size, root) = head.expect("intact means the note verified");
            println!(
                "intact: {} events of chain {} (seqs {}..={}); every hash and link checks out and \
                 every event is in the signed checkpoint of size {size} (root {})",
                bundle.events.len(),
                bundle.chain_id,
                bundle.events[0].seq,
                bundle.events[bundle.events.len() - 1].seq,
                &hex::encode(root)[..16]
            );
        } else {
            println!("TAMPERED: {} finding(s) in the bundle {}", findings.len(), dir.display());
        }
    }
    Ok(if intact { exit::OK } else { exit::FAILURE })
}
