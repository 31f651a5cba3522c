//! `mcp-ledger prove EVENT_ID` and `mcp-ledger consistency OLD_SIZE NEW_SIZE`: RFC 6962 proofs
//! against signed checkpoints, each printed with everything needed to check it offline (the
//! signed note, the leaf, the path) and checked here the way an offline verifier would: from the
//! note's root, never from the database.

use anyhow::{Context, anyhow};
use clap::Args;
use serde_json::json;

use super::ledger::read_keys;
use super::{CliError, LedgerArgs, exit};
use crate::record::checkpoint::{self, VerifyingKey};
use crate::record::merkle::{self, Hash, event_leaf_hash};
use crate::record::verify::{checkpoint_origin, unsigned_body};
use crate::store::{DEFAULT_CHAIN, Store, StoredCheckpoint};

#[derive(Debug, Args)]
pub struct ProveArgs {
    #[command(flatten)]
    ledger: LedgerArgs,
    /// The event to prove
    event_id: String,
    /// A trusted checkpoint key (vkey or file); repeatable. With one, the note's signature and
    /// origin are checked too
    #[arg(long = "key", value_name = "PUBKEY")]
    keys: Vec<String>,
    /// Print the proof as JSON
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct ConsistencyArgs {
    #[command(flatten)]
    ledger: LedgerArgs,
    /// The tree size of the older checkpoint
    old_size: u64,
    /// The tree size of the newer checkpoint
    new_size: u64,
    /// The chain the checkpoints belong to
    #[arg(long, default_value = DEFAULT_CHAIN)]
    chain: String,
    /// A trusted checkpoint key (vkey or file); repeatable
    #[arg(long = "key", value_name = "PUBKEY")]
    keys: Vec<String>,
    /// Print the proof as JSON
    #[arg(long)]
    json: bool,
}

/// The size and root a checkpoint note commits to. With `keys`, the note must be signed by one
/// of them whose origin for `chain_id` is the note's origin.
pub fn checkpoint_head(
    note: &str,
    chain_id: &str,
    keys: &[VerifyingKey],
) -> Result<(u64, Hash), String> {
    let (origin, size, root) =
        unsigned_body(note).ok_or_else(|| "the checkpoint note is malformed".to_owned())?;
    if !keys.is_empty() {
        let for_origin: Vec<VerifyingKey> = keys
            .iter()
            .filter(|k| checkpoint_origin(k.name(), chain_id) == origin)
            .cloned()
            .collect();
        if for_origin.is_empty() {
            return Err(format!("no trusted key signs origin {origin:?} of chain {chain_id}"));
        }
        checkpoint::verify(note, &for_origin).map_err(|e| e.to_string())?;
    }
    Ok((size, root))
}

/// Checks an inclusion proof offline: `event_hash` (hex) is leaf `index` of the tree the note
/// signed.
pub fn check_inclusion(
    note: &str,
    chain_id: &str,
    keys: &[VerifyingKey],
    event_hash: &str,
    index: u64,
    proof: &[Hash],
) -> Result<(), String> {
    let (size, root) = checkpoint_head(note, chain_id, keys)?;
    let leaf = event_leaf_hash(event_hash).map_err(|e| e.to_string())?;
    merkle::verify_inclusion(&leaf, index, size, proof, &root).map_err(|e| e.to_string())
}

/// Checks a consistency proof offline between two signed notes.
pub fn check_consistency(
    old_note: &str,
    new_note: &str,
    chain_id: &str,
    keys: &[VerifyingKey],
    proof: &[Hash],
) -> Result<(), String> {
    let (old_size, old_root) = checkpoint_head(old_note, chain_id, keys)?;
    let (new_size, new_root) = checkpoint_head(new_note, chain_id, keys)?;
    merkle::verify_consistency(old_size, new_size, &old_root, &new_root, proof)
        .map_err(|e| e.to_string())
}

/// The leaf hashes of seqs `1..=size` of a chain, refusing a log that does not hold exactly them.
async fn leaves(store: &dyn Store, chain_id: &str, size: u64) -> Result<Vec<Hash>, anyhow::Error> {
    let rows = store.event_hashes(chain_id, 1, size as i64).await?;
    let mut leaves = Vec::with_capacity(rows.len());
    for (n, (seq, hash)) in rows.iter().enumerate() {
        if *seq != n as i64 + 1 {
            return Err(anyhow!(
                "chain {chain_id} does not hold seq {} where expected; run `mcp-ledger verify`",
                n + 1
            ));
        }
        leaves.push(event_leaf_hash(hash)?);
    }
    if leaves.len() as u64 != size {
        return Err(anyhow!(
            "chain {chain_id} holds {} events but its checkpoint covers {size}: it was \
             truncated; run `mcp-ledger verify`",
            leaves.len()
        ));
    }
    Ok(leaves)
}

fn hexes(proof: &[Hash]) -> Vec<String> {
    proof.iter().map(hex::encode).collect()
}

pub async fn prove(args: ProveArgs) -> Result<u8, CliError> {
    let keys = read_keys(&args.keys)?;
    let store = args.ledger.open_existing(CliError::Failed).await?;
    let outcome = prove_in(store.as_ref(), &args, &keys).await;
    store.close().await;
    outcome.map_err(CliError::Failed)
}

async fn prove_in(
    store: &dyn Store,
    args: &ProveArgs,
    keys: &[VerifyingKey],
) -> Result<u8, anyhow::Error> {
    let event = store
        .event(&args.event_id)
        .await?
        .ok_or_else(|| anyhow!("no event {} in the ledger", args.event_id))?;
    let checkpoint = store.latest_checkpoint(&event.chain_id).await?.ok_or_else(|| {
        anyhow!(
            "chain {} has no checkpoint yet; sign one with `mcp-ledger checkpoint --key KEY`",
            event.chain_id
        )
    })?;
    let size = checkpoint.tree_size as u64;
    let index = (event.seq - 1) as u64;
    if index >= size {
        return Err(anyhow!(
            "event {} (seq {}) is newer than the latest checkpoint of chain {} (size {size}); \
             sign one with `mcp-ledger checkpoint --key KEY`",
            event.event_id,
            event.seq,
            event.chain_id
        ));
    }
    let leaves = leaves(store, &event.chain_id, size).await?;
    let proof = merkle::inclusion_proof(&leaves, index, size)?;
    let fields_match = event.compute_hash() == event.hash;
    let verdict =
        check_inclusion(&checkpoint.note, &event.chain_id, keys, &event.hash, index, &proof)
            .and_then(|()| {
                if fields_match {
                    Ok(())
                } else {
                    Err("the event's fields do not match its hash: it was modified".to_owned())
                }
            });
    if args.json {
        let value = json!({
            "event_id": event.event_id,
            "chain_id": event.chain_id,
            "seq": event.seq,
            "leaf_index": index,
            "event_hash": event.hash,
            "leaf_hash": hex::encode(event_leaf_hash(&event.hash)?),
            "tree_size": size,
            "root_hash": checkpoint.root_hash,
            "checkpoint_id": checkpoint.id,
            "checkpoint": checkpoint.note,
            "proof": hexes(&proof),
            "signature_checked": !keys.is_empty(),
            "verified": verdict.is_ok(),
            "error": verdict.as_ref().err(),
        });
        println!("{value}");
    } else {
        println!(
            "inclusion proof: event {} (chain {}, seq {}) is leaf {index} of checkpoint {} (size {size})",
            event.event_id, event.chain_id, event.seq, checkpoint.id
        );
        println!("event hash: {}", event.hash);
        println!("leaf hash:  {}", hex::encode(event_leaf_hash(&event.hash)?));
        println!("root hash:  {}", checkpoint.root_hash);
        println!("path ({} hashes, leaf to root):", proof.len());
        for hash in &proof {
            println!("  {}", hex::encode(hash));
        }
        println!("checkpoint:");
        print!("{}", checkpoint.note);
        report_verdict(&verdict, keys);
    }
    Ok(if verdict.is_ok() { exit::OK } else { exit::FAILURE })
}

fn report_verdict(verdict: &Result<(), String>, keys: &[VerifyingKey]) {
    match verdict {
        Ok(()) if keys.is_empty() => {
            println!("verified against the note's root (signature not checked: pass --key)")
        }
        Ok(()) => println!("verified against the note's root, signed by a trusted key"),
        Err(reason) => println!("NOT VERIFIED: {reason}"),
    }
}

pub async fn consistency(args: ConsistencyArgs) -> Result<u8, CliError> {
    let keys = read_keys(&args.keys)?;
    if args.old_size > args.new_size {
        return Err(CliError::Usage(anyhow!(
            "OLD_SIZE {} is larger than NEW_SIZE {}",
            args.old_size,
            args.new_size
        )));
    }
    let store = args.ledger.open_existing(CliError::Failed).await?;
    let outcome = consistency_in(store.as_ref(), &args, &keys).await;
    store.close().await;
    outcome.map_err(CliError::Failed)
}

async fn consistency_in(
    store: &dyn Store,
    args: &ConsistencyArgs,
    keys: &[VerifyingKey],
) -> Result<u8, anyhow::Error> {
    let checkpoints: Vec<StoredCheckpoint> = store
        .checkpoints()
        .await
        .context("cannot read the checkpoints")?
        .into_iter()
        .filter(|c| c.chain_id == args.chain)
        .collect();
    let find = |size: u64| {
        checkpoints.iter().find(|c| c.tree_size as u64 == size).ok_or_else(|| {
            let sizes: Vec<String> = checkpoints.iter().map(|c| c.tree_size.to_string()).collect();
            anyhow!(
                "chain {} has no checkpoint of size {size} (checkpointed sizes: {})",
                args.chain,
                if sizes.is_empty() { "none".to_owned() } else { sizes.join(", ") }
            )
        })
    };
    let (old, new) = (find(args.old_size)?, find(args.new_size)?);
    let leaves = leaves(store, &args.chain, args.new_size).await?;
    let proof = merkle::consistency_proof(&leaves, args.old_size, args.new_size)?;
    let verdict = check_consistency(&old.note, &new.note, &args.chain, keys, &proof);
    if args.json {
        let value = json!({
            "chain_id": args.chain,
            "old_size": args.old_size,
            "new_size": args.new_size,
            "old_root_hash": old.root_hash,
            "new_root_hash": new.root_hash,
            "old_checkpoint": old.note,
            "new_checkpoint": new.note,
            "proof": hexes(&proof),
            "signature_checked": !keys.is_empty(),
            "verified": verdict.is_ok(),
            "error": verdict.as_ref().err(),
        });
        println!("{value}");
    } else {
        println!(
            "consistency proof: checkpoint {} (size {}) is a prefix of checkpoint {} (size {}) of chain {}",
            old.id, args.old_size, new.id, args.new_size, args.chain
        );
        println!("old root: {}", old.root_hash);
        println!("new root: {}", new.root_hash);
        println!("path ({} hashes):", proof.len());
        for hash in &proof {
            println!("  {}", hex::encode(hash));
        }
        println!("old checkpoint:");
        print!("{}", old.note);
        println!("new checkpoint:");
        print!("{}", new.note);
        report_verdict(&verdict, keys);
    }
    Ok(if verdict.is_ok() { exit::OK } else { exit::FAILURE })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::checkpoint::{Checkpoint, SigningKey};
    use crate::record::merkle::CompactTree;

    fn event_hashes(n: usize) -> Vec<String> {
        (0..n).map(|i| hex::encode(merkle::leaf_hash(&[i as u8]))).collect()
    }

    fn setup(n: usize) -> (SigningKey, Vec<String>, Vec<Hash>, String) {
        let key = SigningKey::from_seed("test.example/ledger", [7; 32]).unwrap();
        let hashes = event_hashes(n);
        let leaves: Vec<Hash> = hashes.iter().map(|h| event_leaf_hash(h).unwrap()).collect();
        let tree = CompactTree::from_leaves(&leaves);
        let note = checkpoint::sign(&Checkpoint::of_tree(key.name(), &tree).unwrap(), &key);
        (key, hashes, leaves, note)
    }

    #[test]
    fn honest_inclusion_proofs_verify_and_adversarial_ones_do_not() {
        let (key, hashes, leaves, note) = setup(11);
        let keys = [key.verifying_key()];
        let proof = merkle::inclusion_proof(&leaves, 5, 11).unwrap();
        check_inclusion(&note, "default", &keys, &hashes[5], 5, &proof).unwrap();
        check_inclusion(&note, "default", &[], &hashes[5], 5, &proof).unwrap();

        // Wrong sibling order.
        let mut swapped = proof.clone();
        swapped.swap(0, 1);
        assert!(check_inclusion(&note, "default", &keys, &hashes[5], 5, &swapped).is_err());
        // Truncated path.
        let short = &proof[..proof.len() - 1];
        assert!(check_inclusion(&note, "default", &keys, &hashes[5], 5, short).is_err());
        // Another leaf, another index.
        assert!(check_inclusion(&note, "default", &keys, &hashes[6], 5, &proof).is_err());
        assert!(check_inclusion(&note, "default", &keys, &hashes[5], 4, &proof).is_err());
        // A proof for another tree size.
        let other_size = merkle::inclusion_proof(&leaves, 5, 10).unwrap();
        assert!(check_inclusion(&note, "default", &keys, &hashes[5], 5, &other_size).is_err());
        // Another key.
        let other = SigningKey::from_seed("test.example/ledger", [8; 32]).unwrap();
        let err =
            check_inclusion(&note, "default", &[other.verifying_key()], &hashes[5], 5, &proof)
                .unwrap_err();
        assert!(err.contains("no signature by a trusted key"), "{err}");
        // A valid signature by the trusted key, but over another origin (another chain's log).
        let tree = CompactTree::from_leaves(&leaves);
        let elsewhere = checkpoint::sign(
            &Checkpoint::of_tree(checkpoint_origin(key.name(), "other"), &tree).unwrap(),
            &key,
        );
        let err = check_inclusion(&elsewhere, "default", &keys, &hashes[5], 5, &proof).unwrap_err();
        assert!(err.contains("no trusted key signs origin"), "{err}");
        // An edited note.
        let forged = note.replacen("\n11\n", "\n12\n", 1);
        let err = check_inclusion(&forged, "default", &keys, &hashes[5], 5, &proof).unwrap_err();
        assert!(err.contains("does not verify"), "{err}");
    }

    #[test]
    fn honest_consistency_proofs_verify_and_adversarial_ones_do_not() {
        let (key, _, leaves, new_note) = setup(13);
        let keys = [key.verifying_key()];
        let old_tree = CompactTree::from_leaves(&leaves[..6]);
        let old_note = checkpoint::sign(&Checkpoint::of_tree(key.name(), &old_tree).unwrap(), &key);
        let proof = merkle::consistency_proof(&leaves, 6, 13).unwrap();
        check_consistency(&old_note, &new_note, "default", &keys, &proof).unwrap();

        let mut swapped = proof.clone();
        swapped.swap(0, 1);
        assert!(check_consistency(&old_note, &new_note, "default", &keys, &swapped).is_err());
        assert!(check_consistency(&old_note, &new_note, "default", &keys, &proof[1..]).is_err());
        let other_size = merkle::consistency_proof(&leaves, 5, 13).unwrap();
        assert!(check_consistency(&old_note, &new_note, "default", &keys, &other_size).is_err());
        // A forked log: the old checkpoint over different leaves.
        let mut forked = leaves[..6].to_vec();
        forked[2] = merkle::leaf_hash(b"forged");
        let forked_note = checkpoint::sign(
            &Checkpoint::of_tree(key.name(), &CompactTree::from_leaves(&forked)).unwrap(),
            &key,
        );
        assert!(check_consistency(&forked_note, &new_note, "default", &keys, &proof).is_err());
        let other = SigningKey::from_seed("test.example/ledger", [9; 32]).unwrap();
        assert!(
            check_consistency(&old_note, &new_note, "default", &[other.verifying_key()], &proof)
                .is_err()
        );
    }
}
