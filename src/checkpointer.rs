//! The checkpointer: a background task that signs checkpoints of a chain's Merkle tree, stores
//! them in the `checkpoints` table and publishes them to an external [`Anchor`].
//!
//! It keeps the chain's [`CompactTree`] in memory, resumed from the latest stored checkpoint's
//! `tree_state`, and on each round reads only the events after it (by seq): signing a checkpoint
//! costs O(log n) amortised per event and never rereads the log. Before an event becomes a leaf
//! its hash is recomputed and its link to the previous event checked, so a log edited under a
//! running proxy is refused, never signed.
//!
//! Several processes may checkpoint one ledger: the store keeps only checkpoints larger than the
//! chain's latest (decided under a lock), so none is stored twice; a process that loses the race
//! simply moves on.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::record::checkpoint::{self, Checkpoint, CheckpointError, SigningKey};
use crate::record::merkle::{CompactTree, event_leaf_hash};
use crate::record::verify::checkpoint_origin;
use crate::record::{Event, GENESIS_PREV_HASH};
use crate::store::{NewCheckpoint, Store, StoreError, StoredCheckpoint};

/// How many events one read takes while catching up.
const PAGE: i64 = 1_000;

/// Why a checkpoint could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "refusing to checkpoint chain {chain_id}: event {event_id} (seq {seq}) {reason}; run `mcp-ledger verify`"
    )]
    Tampered { chain_id: String, seq: i64, event_id: String, reason: String },
    #[error("refusing to checkpoint chain {chain_id}: seq {seq} is missing")]
    Gap { chain_id: String, seq: i64 },
    #[error("checkpoint {id} of chain {chain_id} has an unusable tree_state: {reason}")]
    BadState { id: i64, chain_id: String, reason: String },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("cannot write the checkpoint to the anchor {path}: {source}")]
    Anchor { path: PathBuf, source: std::io::Error },
}

/// When the background task signs: every `every_events` events or every `every` (whichever
/// comes first, and only when the log grew), looking for new events every `poll`.
#[derive(Debug, Clone)]
pub struct Schedule {
    pub every_events: u64,
    pub every: Duration,
    pub poll: Duration,
}

impl Schedule {
    pub fn new(every_events: u64, every: Duration) -> Self {
        Schedule { every_events, every, poll: every.min(Duration::from_secs(1)) }
    }
}

/// Signs and stores checkpoints of one chain.
pub struct Checkpointer {
    store: Arc<dyn Store>,
    chain_id: String,
    origin: String,
    key: SigningKey,
    anchor: Option<Arc<dyn Anchor>>,
    tree: CompactTree,
    /// The stored hash of the event at `tree.size()` (genesis when the tree is empty).
    last_hash: String,
    /// The size of the latest stored checkpoint this process knows of.
    checkpointed: Option<u64>,
}

impl Checkpointer {
    /// Resumes from the chain's latest stored checkpoint (or the empty tree).
    pub async fn resume(
        store: Arc<dyn Store>,
        chain_id: &str,
        key: SigningKey,
        anchor: Option<Arc<dyn Anchor>>,
    ) -> Result<Self, CheckpointerError> {
        let origin = checkpoint_origin(key.name(), chain_id);
        let mut checkpointer = Checkpointer {
            store,
            chain_id: chain_id.to_owned(),
            origin,
            key,
            anchor,
            tree: CompactTree::new(),
            last_hash: GENESIS_PREV_HASH.to_owned(),
            checkpointed: None,
        };
        if let Some(latest) = checkpointer.store.latest_checkpoint(chain_id).await? {
            checkpointer.adopt(&latest).await?;
        }
        Ok(checkpointer)
    }

    /// Takes over the tree of a stored checkpoint, after checking it against its own columns.
    async fn adopt(&mut self, stored: &StoredCheckpoint) -> Result<(), CheckpointerError> {
        let bad = |reason: String| CheckpointerError::BadState {
            id: stored.id,
            chain_id: stored.chain_id.clone(),
            reason,
        };
        let tree: CompactTree =
            serde_json::from_value(stored.tree_state.clone()).map_err(|e| bad(e.to_string()))?;
        if tree.size() != stored.tree_size as u64 || hex::encode(tree.root()) != stored.root_hash {
            return Err(bad("it does not match the checkpoint's size and root".into()));
        }
        let last_hash = if tree.size() == 0 {
            GENESIS_PREV_HASH.to_owned()
        } else {
            let seq = stored.tree_size;
            let events = self.store.events_range(&self.chain_id, seq, seq).await?;
            let [event] = events.as_slice() else {
                return Err(CheckpointerError::Gap { chain_id: self.chain_id.clone(), seq });
            };
            // The compact tree keeps no leaves, so this event cannot be compared with it here;
            // the next checkpoint's root binds it, and `verify` checks every root.
            event.hash.clone()
        };
        self.tree = tree;
        self.last_hash = last_hash;
        self.checkpointed = Some(stored.tree_size as u64);
        Ok(())
    }

    /// The tree as far as it has been read.
    pub fn tree(&self) -> &CompactTree {
        &self.tree
    }

    /// The size of the latest stored checkpoint this process knows of.
    pub fn checkpointed(&self) -> Option<u64> {
        self.checkpointed
    }

    /// Reads the events after the tree and adds them as leaves, checking each one's hash and link.
    async fn catch_up(&mut self) -> Result<(), CheckpointerError> {
        loop {
            let from = self.tree.size() as i64 + 1;
            let events = self.store.events_range(&self.chain_id, from, from + PAGE - 1).await?;
            let read = events.len() as i64;
            for event in &events {
                self.push(event)?;
            }
            if read < PAGE {
                return Ok(());
            }
        }
    }

    fn push(&mut self, event: &Event) -> Result<(), CheckpointerError> {
        let expected = self.tree.size() as i64 + 1;
        let tampered = |reason: &str| CheckpointerError::Tampered {
            chain_id: self.chain_id.clone(),
            seq: event.seq,
            event_id: event.event_id.clone(),
            reason: reason.to_owned(),
        };
        if event.seq != expected {
            return Err(if event.seq > expected {
                CheckpointerError::Gap { chain_id: self.chain_id.clone(), seq: expected }
            } else {
                tampered("repeats a seq")
            });
        }
        if event.prev_hash != self.last_hash {
            return Err(tampered("does not link to the event before it"));
        }
        if event.compute_hash() != event.hash {
            return Err(tampered("does not match its hash"));
        }
        let leaf = event_leaf_hash(&event.hash).map_err(|e| tampered(&e.to_string()))?;
        self.tree.push(leaf);
        self.last_hash.clone_from(&event.hash);
        Ok(())
    }

    /// Signs, stores and anchors a checkpoint of everything committed so far, unless the chain
    /// is empty or a checkpoint of this size (or larger) is already stored. Returns the stored
    /// checkpoint, if this call stored one.
    pub async fn checkpoint(&mut self) -> Result<Option<StoredCheckpoint>, CheckpointerError> {
        self.catch_up().await?;
        let size = self.tree.size();
        if size == 0 || self.checkpointed.is_some_and(|done| done >= size) {
            return Ok(None);
        }
        let signed = Checkpoint::of_tree(self.origin.clone(), &self.tree)?;
        let note = checkpoint::sign(&signed, &self.key);
        let new = NewCheckpoint {
            chain_id: self.chain_id.clone(),
            tree_size: size as i64,
            root_hash: hex::encode(signed.root()),
            note,
            tree_state: serde_json::to_value(&self.tree).expect("a compact tree serialises"),
        };
        match self.store.append_checkpoint(&new).await? {
            Some(stored) => {
                self.checkpointed = Some(size);
                if let Some(anchor) = &self.anchor {
                    anchor.publish(&self.chain_id, size, &stored.note).await?;
                }
                tracing::info!(chain_id = %self.chain_id, tree_size = size, id = stored.id, "checkpoint signed");
                Ok(Some(stored))
            }
            None => {
                // Another process stored this size or a larger one first.
                let latest = self.store.latest_checkpoint(&self.chain_id).await?;
                self.checkpointed = latest.map(|l| l.tree_size as u64).max(Some(size));
                Ok(None)
            }
        }
    }

    /// Starts the background task. It signs on `schedule` and once more when
    /// [`CheckpointerHandle::finish`] is called (after the writer's last commit).
    pub fn spawn(self, schedule: Schedule) -> CheckpointerHandle {
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run(self, schedule, stopped));
        CheckpointerHandle { stop, task }
    }
}

async fn run(
    mut checkpointer: Checkpointer,
    schedule: Schedule,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut last_round = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(schedule.poll) => {}
            _ = &mut stopped => break,
        }
        let done = checkpointer.checkpointed.unwrap_or(0);
        let size = match checkpointer.store.chain_size(&checkpointer.chain_id).await {
            Ok(size) => size.max(0) as u64,
            Err(error) => {
                tracing::warn!(%error, "cannot read the chain head for checkpointing");
                continue;
            }
        };
        let due = size > done
            && (size - done >= schedule.every_events.max(1)
                || last_round.elapsed() >= schedule.every);
        if due {
            last_round = Instant::now();
            if let Err(error) = checkpointer.checkpoint().await {
                tracing::error!(%error, "checkpoint failed");
            }
        }
    }
    if let Err(error) = checkpointer.checkpoint().await {
        tracing::error!(%error, "final checkpoint failed");
    }
}

/// The running checkpointer.
pub struct CheckpointerHandle {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl CheckpointerHandle {
    /// Signs a final checkpoint and stops. Call it after the writer's last commit.
    pub async fn finish(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// Somewhere outside the database that keeps every checkpoint, ideally on write-once storage, so
/// that truncating or rewriting the database (checkpoints table included) is still caught.
#[async_trait]
pub trait Anchor: Send + Sync {
    async fn publish(
        &self,
        chain_id: &str,
        tree_size: u64,
        note: &str,
    ) -> Result<(), CheckpointerError>;
}

/// A directory (one file per checkpoint, `<chain>-<size>.note`, never overwritten) or a file
/// (notes appended, separated by a blank line).
#[derive(Debug, Clone)]
pub struct FileAnchor {
    path: PathBuf,
}

impl FileAnchor {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        FileAnchor { path: path.into() }
    }

    fn write(&self, chain_id: &str, tree_size: u64, note: &str) -> std::io::Result<()> {
        if self.path.is_dir() {
            let safe: String = chain_id
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '-' })
                .collect();
            let path = self.path.join(format!("{safe}-{tree_size:020}.note"));
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    file.write_all(note.as_bytes())?;
                    file.sync_all()?;
                }
                // Written before (same size, same key: Ed25519 signs deterministically).
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if std::fs::read_to_string(&path)? != note {
                        return Err(std::io::Error::other(format!(
                            "{} already holds a different checkpoint",
                            path.display()
                        )));
                    }
                }
                Err(e) => return Err(e),
            }
            Ok(())
        } else {
            let mut file =
                std::fs::OpenOptions::new().append(true).create(true).open(&self.path)?;
            file.write_all(format!("{note}\n").as_bytes())?;
            file.sync_data()
        }
    }
}

#[async_trait]
impl Anchor for FileAnchor {
    async fn publish(
        &self,
        chain_id: &str,
        tree_size: u64,
        note: &str,
    ) -> Result<(), CheckpointerError> {
        let anchor = self.clone();
        let (chain_id, note) = (chain_id.to_owned(), note.to_owned());
        tokio::task::spawn_blocking(move || anchor.write(&chain_id, tree_size, &note))
            .await
            .map_err(std::io::Error::other)
            .and_then(|written| written)
            .map_err(|source| CheckpointerError::Anchor { path: self.path.clone(), source })
    }
}

/// A note read back from an anchor, with where it was found (`path` or `path:line`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchoredNote {
    pub label: String,
    pub note: String,
}

/// Every note held by a [`FileAnchor`] at `path` (a directory of `.note` files, or one file of
/// notes separated by blank lines), in order.
pub fn read_anchor(path: &Path) -> std::io::Result<Vec<AnchoredNote>> {
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        files.retain(|f| f.extension().is_some_and(|e| e == "note"));
        files.sort();
        return files
            .into_iter()
            .map(|file| {
                Ok(AnchoredNote {
                    label: file.display().to_string(),
                    note: std::fs::read_to_string(&file)?,
                })
            })
            .collect();
    }
    Ok(split_notes(&std::fs::read_to_string(path)?)
        .into_iter()
        .map(|(line, note)| AnchoredNote { label: format!("{}:{line}", path.display()), note })
        .collect())
}

/// Splits concatenated notes: each is text lines, a blank line, then signature lines (`— `),
/// and ends at the next blank line or the end of the file. Returns each with its first line.
fn split_notes(text: &str) -> Vec<(usize, String)> {
    let mut notes = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    let mut in_signatures = false;
    for (n, line) in text.split_inclusive('\n').enumerate() {
        let blank = line.trim_end_matches('\n').is_empty();
        if current.is_empty() {
            if blank {
                continue;
            }
            start = n + 1;
        }
        if blank && in_signatures {
            notes.push((start, std::mem::take(&mut current)));
            in_signatures = false;
            continue;
        }
        if blank {
            in_signatures = true;
        } else if in_signatures && !line.starts_with('\u{2014}') {
            // Not a signature line: the note ended without a blank line; start a new one.
            notes.push((start, std::mem::take(&mut current)));
            in_signatures = false;
            start = n + 1;
        }
        current.push_str(line);
    }
    if !current.trim().is_empty() {
        notes.push((start, current));
    }
    notes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenated_notes_split_back() {
        let a = "o\n1\nAAAA\n\n\u{2014} o sig1\n";
        let b = "o\n2\nBBBB\n\n\u{2014} o sig2\n\u{2014} p sig3\n";
        let text = format!("{a}\n{b}\n");
        assert_eq!(split_notes(&text), [(1, a.to_owned()), (7, b.to_owned())]);
        assert_eq!(split_notes(a), [(1, a.to_owned())]);
        assert!(split_notes("").is_empty());
    }
}
