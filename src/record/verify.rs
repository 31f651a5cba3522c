//! Streaming chain verification: feed events in `(chain_id, seq)` order, get findings that name
//! each bad event and say what is wrong with it.
//!
//! Memory stays constant in the number of events: the verifier keeps only the previous event's
//! hash per chain. Reordering is recognised without an index of all hashes by trying the seqs near
//! a failing event: a swap moves rows by a few places far more often than by thousands, and a row
//! moved further is still reported (as modified).

use std::collections::{BTreeMap, VecDeque};

use base64::Engine;
use serde::Serialize;

use super::checkpoint::{self, Checkpoint, CheckpointError, VerifyingKey};
use super::event::{Event, GENESIS_PREV_HASH};
use super::merkle::{CompactTree, EMPTY_ROOT, Hash, event_leaf_hash, leaf_hash};

/// How far from its stored position a row is searched for when its hash does not match.
const REORDER_SEARCH_RADIUS: i64 = 64;

/// One thing wrong with the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Finding {
    /// The stored hash does not match the event's fields: the row was edited after it was written.
    Modified { chain_id: String, seq: i64, event_id: String },
    /// The row hashes correctly, but only at another position: rows were swapped or renumbered.
    OutOfOrder { chain_id: String, seq: i64, event_id: String, written_at_seq: i64 },
    /// Sequence numbers are missing: events were deleted.
    Missing { chain_id: String, from_seq: i64, to_seq: i64, next_event_id: String },
    /// A second row claims a sequence number that already has one.
    Inserted { chain_id: String, seq: i64, event_id: String },
    /// The row hashes correctly but does not link to the row before it: the row before was
    /// rewritten with a recomputed hash, or this one was forged into the chain.
    BrokenLink { chain_id: String, seq: i64, event_id: String },
    /// The chain has fewer events than a signed checkpoint covers: events were deleted at its end.
    Truncated { chain_id: String, checkpoint: String, tree_size: u64, log_size: u64 },
    /// The chain's first `tree_size` events do not hash to the root a checkpoint signed: history
    /// was rewritten (even if every hash and link was recomputed).
    Rewritten {
        chain_id: String,
        checkpoint: String,
        tree_size: u64,
        checkpoint_root: String,
        log_root: String,
    },
    /// A checkpoint's signature by a trusted key does not verify, or the note is malformed.
    BadSignature { checkpoint: String, reason: String },
    /// A checkpoint is not signed by any trusted key for its origin.
    UnknownKey { checkpoint: String, reason: String },
}

impl Finding {
    pub fn kind(&self) -> &'static str {
        match self {
            Finding::Modified { .. } => "modified",
            Finding::OutOfOrder { .. } => "out_of_order",
            Finding::Missing { .. } => "missing",
            Finding::Inserted { .. } => "inserted",
            Finding::BrokenLink { .. } => "broken_link",
            Finding::Truncated { .. } => "truncated",
            Finding::Rewritten { .. } => "rewritten",
            Finding::BadSignature { .. } => "bad_signature",
            Finding::UnknownKey { .. } => "unknown_key",
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Finding::Modified { chain_id, seq, event_id } => write!(
                f,
                "modified: event {event_id} (chain {chain_id}, seq {seq}) does not match its hash; \
                 its contents were changed after it was recorded"
            ),
            Finding::OutOfOrder { chain_id, seq, event_id, written_at_seq } => write!(
                f,
                "out of order: event {event_id} (chain {chain_id}) stands at seq {seq} but was \
                 recorded at seq {written_at_seq}"
            ),
            Finding::Missing { chain_id, from_seq, to_seq, next_event_id } => {
                if from_seq == to_seq {
                    write!(f, "missing: seq {from_seq} of chain {chain_id} is gone")?;
                } else {
                    write!(f, "missing: seqs {from_seq}..={to_seq} of chain {chain_id} are gone")?;
                }
                write!(f, " (the next event present is {next_event_id})")
            }
            Finding::Inserted { chain_id, seq, event_id } => write!(
                f,
                "inserted: event {event_id} claims seq {seq} of chain {chain_id}, which another event \
                 already holds"
            ),
            Finding::BrokenLink { chain_id, seq, event_id } => write!(
                f,
                "broken link: event {event_id} (chain {chain_id}, seq {seq}) does not point to the \
                 event before it; seq {} was rewritten or this event was forged",
                seq - 1
            ),
            Finding::Truncated { chain_id, checkpoint, tree_size, log_size } => write!(
                f,
                "truncated: chain {chain_id} has {log_size} events but {checkpoint} signed \
                 {tree_size}; the events after seq {log_size} were deleted"
            ),
            Finding::Rewritten { chain_id, checkpoint, tree_size, checkpoint_root, log_root } => {
                write!(
                    f,
                    "rewritten: seqs 1..={tree_size} of chain {chain_id} hash to root {} but \
                     {checkpoint} signed root {}; history was changed, removed or replaced",
                    &log_root[..16.min(log_root.len())],
                    &checkpoint_root[..16.min(checkpoint_root.len())]
                )
            }
            Finding::BadSignature { checkpoint, reason } => {
                write!(f, "bad signature: {checkpoint}: {reason}")
            }
            Finding::UnknownKey { checkpoint, reason } => {
                write!(f, "unknown key: {checkpoint}: {reason}")
            }
        }
    }
}

/// The last accepted event of one chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainHead {
    pub chain_id: String,
    pub seq: i64,
    pub hash: String,
}

/// What verification found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub events: u64,
    pub chains: Vec<ChainHead>,
    pub findings: Vec<Finding>,
    /// Signed checkpoints compared with the log (see [`CheckpointVerifier`]).
    pub checkpoints: u64,
    /// Trusted keys the checkpoints' signatures were checked against (0: not checked).
    pub keys: u64,
    /// Legitimate retention cuts: chains that start after a recorded `retention_cut` (not
    /// findings; see [`Verifier::with_starts`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub retention_cuts: Vec<ChainStart>,
}

/// Where a chain legitimately starts after a retention cut: its first remaining event must have
/// `seq` and link to `prev_hash` (the hash of the last removed event), both recorded by a
/// `retention_cut` event further on in the same chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainStart {
    pub chain_id: String,
    /// The seq of the first remaining event (`up_to_seq + 1`).
    pub seq: i64,
    /// The hash of the event at `up_to_seq`.
    pub prev_hash: String,
    /// The `retention_cut` event that records the cut.
    pub cut_event_id: String,
    /// The Merkle tree of the chain at `up_to_seq`, when the cut recorded it: lets the
    /// [`CheckpointVerifier`] keep checking the checkpoints after the cut.
    #[serde(skip)]
    pub tree: Option<CompactTree>,
}

impl ChainStart {
    /// The start a `retention_cut` event records, if it is one and is well formed.
    pub fn from_cut_event(event: &Event) -> Option<ChainStart> {
        if event.event_type != "retention_cut" {
            return None;
        }
        let up_to_seq = event.data.get("up_to_seq")?.as_i64()?;
        let prev_hash = event.data.get("up_to_hash")?.as_str()?.to_owned();
        let tree = event
            .data
            .get("tree_state")
            .and_then(|t| serde_json::from_value::<CompactTree>(t.clone()).ok())
            .filter(|t| t.size() == up_to_seq as u64);
        Some(ChainStart {
            chain_id: event.chain_id.clone(),
            seq: up_to_seq + 1,
            prev_hash,
            cut_event_id: event.event_id.clone(),
            tree,
        })
    }
}

impl std::fmt::Display for ChainStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "retention: chain {} starts at seq {} after a recorded cut (retention_cut {}); \
             seq 1..={} removed by retention, not tampering",
            self.chain_id,
            self.seq,
            self.cut_event_id,
            self.seq - 1
        )
    }
}

impl Report {
    pub fn intact(&self) -> bool {
        self.findings.is_empty()
    }
}

struct ChainState {
    chain_id: String,
    /// The seq the next row should have.
    expected_seq: i64,
    /// The stored hash of the last row, which the next row's `prev_hash` must equal.
    last_hash: String,
    /// Whether the last row already has a finding of its own.
    last_flagged: bool,
    /// Stored hashes of the most recent rows, so that the rows after a reported swap are not
    /// reported again for linking to a row that merely moved.
    recent_hashes: VecDeque<String>,
}

/// Feed events in `(chain_id, seq)` order with [`Verifier::push`], then call [`Verifier::finish`].
#[derive(Default)]
pub struct Verifier {
    current: Option<ChainState>,
    report: Report,
    /// Candidate legitimate starts per chain (after retention cuts).
    starts: BTreeMap<String, Vec<ChainStart>>,
}

impl Verifier {
    pub fn new() -> Self {
        Self::default()
    }

    /// A verifier that accepts a chain starting after a recorded retention cut: when a chain's
    /// first event has the `seq` and `prev_hash` of one of `starts`, the removed range is
    /// reported in [`Report::retention_cuts`] instead of as `missing`. Any other gap, or a first
    /// event that does not match, is reported exactly as by [`Verifier::new`].
    pub fn with_starts(starts: impl IntoIterator<Item = ChainStart>) -> Self {
        let mut verifier = Self::default();
        for start in starts {
            verifier.starts.entry(start.chain_id.clone()).or_default().push(start);
        }
        verifier
    }

    pub fn push(&mut self, event: &Event) {
        self.report.events += 1;
        if self.current.as_ref().is_none_or(|c| c.chain_id != event.chain_id) {
            self.close_chain();
            let mut state = ChainState {
                chain_id: event.chain_id.clone(),
                expected_seq: 1,
                last_hash: GENESIS_PREV_HASH.to_owned(),
                last_flagged: false,
                recent_hashes: VecDeque::new(),
            };
            if event.seq > 1
                && let Some(start) = self.starts.get(&event.chain_id).and_then(|starts| {
                    starts
                        .iter()
                        .rev()
                        .find(|s| s.seq == event.seq && s.prev_hash == event.prev_hash)
                })
            {
                state.expected_seq = start.seq;
                state.last_hash.clone_from(&start.prev_hash);
                self.report.retention_cuts.push(start.clone());
            }
            self.current = Some(state);
        }
        let chain = self.current.as_mut().expect("set above");
        let findings = &mut self.report.findings;

        if event.seq < chain.expected_seq {
            // Rows arrive sorted by seq, so a smaller seq is a repeat of one already seen.
            findings.push(Finding::Inserted {
                chain_id: event.chain_id.clone(),
                seq: event.seq,
                event_id: event.event_id.clone(),
            });
            return;
        }

        let mut explained = false;
        if event.seq > chain.expected_seq {
            findings.push(Finding::Missing {
                chain_id: event.chain_id.clone(),
                from_seq: chain.expected_seq,
                to_seq: event.seq - 1,
                next_event_id: event.event_id.clone(),
            });
            // The broken link after a gap is the gap itself, not a second finding.
            explained = true;
        }

        if !hash_matches(event) {
            explained = true;
            findings.push(match written_at_seq(event) {
                Some(written_at_seq) => Finding::OutOfOrder {
                    chain_id: event.chain_id.clone(),
                    seq: event.seq,
                    event_id: event.event_id.clone(),
                    written_at_seq,
                },
                None => Finding::Modified {
                    chain_id: event.chain_id.clone(),
                    seq: event.seq,
                    event_id: event.event_id.clone(),
                },
            });
        }

        let linked_to_moved_row =
            chain.last_flagged && chain.recent_hashes.contains(&event.prev_hash);
        if !explained && event.prev_hash != chain.last_hash && !linked_to_moved_row {
            findings.push(Finding::BrokenLink {
                chain_id: event.chain_id.clone(),
                seq: event.seq,
                event_id: event.event_id.clone(),
            });
        }

        chain.expected_seq = event.seq + 1;
        chain.last_hash.clone_from(&event.hash);
        chain.last_flagged = explained;
        if chain.recent_hashes.len() == 2 * REORDER_SEARCH_RADIUS as usize {
            chain.recent_hashes.pop_front();
        }
        chain.recent_hashes.push_back(event.hash.clone());
    }

    pub fn finish(mut self) -> Report {
        self.close_chain();
        self.report
    }

    fn close_chain(&mut self) {
        if let Some(chain) = self.current.take() {
            self.report.chains.push(ChainHead {
                chain_id: chain.chain_id,
                seq: chain.expected_seq - 1,
                hash: chain.last_hash,
            });
        }
    }
}

fn hash_matches(event: &Event) -> bool {
    event.compute_hash() == event.hash
}

/// The nearby seq at which this row's stored hash does verify, if any.
fn written_at_seq(event: &Event) -> Option<i64> {
    let mut probe = event.clone();
    (1..=REORDER_SEARCH_RADIUS)
        .flat_map(|d| [event.seq - d, event.seq + d])
        .filter(|&s| s >= 1)
        .find(|&s| {
            probe.seq = s;
            hash_matches(&probe)
        })
}

/// Verifies a whole sequence of events at once.
pub fn verify_all<'a>(events: impl IntoIterator<Item = &'a Event>) -> Report {
    let mut verifier = Verifier::new();
    for event in events {
        verifier.push(event);
    }
    verifier.finish()
}

/// The chain that has no name of its own (the store's `DEFAULT_CHAIN`).
const DEFAULT_CHAIN: &str = "default";

/// The origin of the checkpoints of `chain_id` signed by the key named `key_name`: the key name
/// for the default chain, `<key name>/chains/<chain>` for any other.
pub fn checkpoint_origin(key_name: &str, chain_id: &str) -> String {
    if chain_id == DEFAULT_CHAIN {
        key_name.to_owned()
    } else {
        format!("{key_name}/chains/{chain_id}")
    }
}

/// The chain a checkpoint origin is about (the inverse of [`checkpoint_origin`]).
pub fn origin_chain(origin: &str) -> &str {
    origin.rsplit_once("/chains/").map_or(DEFAULT_CHAIN, |(_, chain)| chain)
}

/// A signed checkpoint to compare with the log: from the `checkpoints` table or an anchor.
#[derive(Debug, Clone)]
pub struct CheckpointClaim {
    /// How findings name it, e.g. `checkpoint 3` or `anchored checkpoint /mnt/worm/default-10.note`.
    pub label: String,
    /// The chain it belongs to, when known (a table row); otherwise taken from the origin.
    pub chain_id: Option<String>,
    pub note: String,
}

struct Expected {
    size: u64,
    root: Hash,
    label: String,
}

/// Compares signed checkpoints with the log. Feed the same events as the [`Verifier`], in the
/// same order, then [`CheckpointVerifier::finish`].
///
/// Leaf `i` of a chain's tree is its `i + 1`-th distinct seq as stored (a repeated seq is skipped),
/// with the stored hash as leaf bytes: then deleted rows at the end show as `truncated`, and any
/// other change to the first `tree_size` rows — even with every hash and link recomputed — as
/// `rewritten`. With `keys`, each note's signature must verify with a trusted key whose origin
/// it names; without, notes are only parsed (the summary says so).
pub struct CheckpointVerifier {
    keys: Vec<VerifyingKey>,
    expected: BTreeMap<String, Vec<Expected>>,
    findings: Vec<Finding>,
    checked: u64,
    current: Option<TreeState>,
    /// Retention cuts whose recorded tree the chain's tree resumes from (see `with_starts`).
    starts: BTreeMap<String, Vec<ChainStart>>,
}

struct TreeState {
    chain_id: String,
    tree: CompactTree,
    last_seq: i64,
    expected: Vec<Expected>,
    next: usize,
}

impl CheckpointVerifier {
    pub fn new(claims: impl IntoIterator<Item = CheckpointClaim>, keys: Vec<VerifyingKey>) -> Self {
        let mut verifier = CheckpointVerifier {
            keys,
            expected: BTreeMap::new(),
            findings: Vec::new(),
            checked: 0,
            current: None,
            starts: BTreeMap::new(),
        };
        for claim in claims {
            verifier.checked += 1;
            match verifier.open(&claim) {
                Ok((chain_id, expected)) => {
                    verifier.expected.entry(chain_id).or_default().push(expected)
                }
                Err(finding) => verifier.findings.push(finding),
            }
        }
        for list in verifier.expected.values_mut() {
            list.sort_by_key(|e| e.size);
        }
        verifier
    }

    /// Also accepts chains that start after a recorded retention cut: when a chain's first event
    /// matches one of `starts` that recorded the tree at the cut, the tree resumes from it;
    /// checkpoints older than the cut can no longer be compared and are skipped (one of exactly
    /// the cut's size must still have the cut's root).
    pub fn with_starts(mut self, starts: impl IntoIterator<Item = ChainStart>) -> Self {
        for start in starts.into_iter().filter(|s| s.tree.is_some()) {
            self.starts.entry(start.chain_id.clone()).or_default().push(start);
        }
        self
    }

    /// Checks a claim's signature (when there are keys) and returns its chain and tree head.
    fn open(&self, claim: &CheckpointClaim) -> Result<(String, Expected), Finding> {
        let label = claim.label.clone();
        let bad = |reason: String| Finding::BadSignature { checkpoint: label.clone(), reason };
        let (origin, size, root) =
            unsigned_body(&claim.note).ok_or_else(|| bad("the note is malformed".into()))?;
        let chain_id = claim.chain_id.clone().unwrap_or_else(|| origin_chain(&origin).to_owned());
        if !self.keys.is_empty() {
            let for_origin: Vec<VerifyingKey> = self
                .keys
                .iter()
                .filter(|k| checkpoint_origin(k.name(), &chain_id) == origin)
                .cloned()
                .collect();
            if for_origin.is_empty() {
                return Err(Finding::UnknownKey {
                    checkpoint: label,
                    reason: format!(
                        "no trusted key signs origin {origin:?} (chain {chain_id}); trusted: {}",
                        self.keys.iter().map(|k| k.to_string()).collect::<Vec<_>>().join(", ")
                    ),
                });
            }
            match checkpoint::verify(&claim.note, &for_origin) {
                Ok(_) => {}
                Err(CheckpointError::UnknownKey { .. }) => {
                    return Err(Finding::UnknownKey {
                        checkpoint: label,
                        reason: CheckpointError::UnknownKey { signers: signers(&claim.note) }
                            .to_string(),
                    });
                }
                Err(error) => return Err(bad(error.to_string())),
            }
        }
        Ok((chain_id, Expected { size, root, label }))
    }

    pub fn push(&mut self, event: &Event) {
        if self.current.as_ref().is_none_or(|c| c.chain_id != event.chain_id) {
            self.close_chain();
            self.current = Some(TreeState {
                chain_id: event.chain_id.clone(),
                tree: CompactTree::new(),
                last_seq: 0,
                expected: self.expected.remove(&event.chain_id).unwrap_or_default(),
                next: 0,
            });
            self.resume_after_cut(event);
        }
        let state = self.current.as_mut().expect("set above");
        if event.seq <= state.last_seq || state.next == state.expected.len() {
            return;
        }
        state.last_seq = event.seq;
        let leaf =
            event_leaf_hash(&event.hash).unwrap_or_else(|_| leaf_hash(event.hash.as_bytes()));
        state.tree.push(leaf);
        let size = state.tree.size();
        while let Some(expected) = state.expected.get(state.next).filter(|e| e.size <= size) {
            let root = state.tree.root();
            if expected.size == size && expected.root != root {
                self.findings.push(Finding::Rewritten {
                    chain_id: state.chain_id.clone(),
                    checkpoint: expected.label.clone(),
                    tree_size: expected.size,
                    checkpoint_root: hex::encode(expected.root),
                    log_root: hex::encode(root),
                });
            } else if expected.size == 0 && expected.root != EMPTY_ROOT {
                self.findings.push(Finding::BadSignature {
                    checkpoint: expected.label.clone(),
                    reason: "an empty tree with a non-empty root".into(),
                });
            }
            state.next += 1;
        }
    }

    /// Starts the current chain's tree from a retention cut that `first` (its first event) follows.
    fn resume_after_cut(&mut self, first: &Event) {
        let Some(state) = self.current.as_mut() else { return };
        let Some(start) = self.starts.get(&first.chain_id).and_then(|starts| {
            starts.iter().rev().find(|s| s.seq == first.seq && s.prev_hash == first.prev_hash)
        }) else {
            return;
        };
        let Some(tree) = start.tree.clone() else { return };
        let cut_size = tree.size();
        while let Some(expected) = state.expected.get(state.next).filter(|e| e.size <= cut_size) {
            if expected.size == cut_size && expected.root != tree.root() {
                self.findings.push(Finding::Rewritten {
                    chain_id: state.chain_id.clone(),
                    checkpoint: expected.label.clone(),
                    tree_size: expected.size,
                    checkpoint_root: hex::encode(expected.root),
                    log_root: hex::encode(tree.root()),
                });
            }
            state.next += 1;
        }
        state.tree = tree;
        state.last_seq = first.seq - 1;
    }

    fn close_chain(&mut self) {
        if let Some(state) = self.current.take() {
            self.truncated(&state.chain_id, &state.expected[state.next..], state.tree.size());
        }
    }

    fn truncated(&mut self, chain_id: &str, expected: &[Expected], log_size: u64) {
        for e in expected.iter().filter(|e| e.size > log_size) {
            self.findings.push(Finding::Truncated {
                chain_id: chain_id.to_owned(),
                checkpoint: e.label.clone(),
                tree_size: e.size,
                log_size,
            });
        }
    }

    /// The findings, and how many checkpoints and keys were checked.
    pub fn finish(mut self) -> (Vec<Finding>, u64, u64) {
        self.close_chain();
        // Chains that have checkpoints but no events at all.
        for (chain_id, expected) in std::mem::take(&mut self.expected) {
            self.truncated(&chain_id, &expected, 0);
        }
        (self.findings, self.checked, self.keys.len() as u64)
    }

    /// Adds the findings and counts to a [`Verifier`]'s report.
    pub fn finish_into(self, report: &mut Report) {
        let (findings, checkpoints, keys) = self.finish();
        report.findings.extend(findings);
        report.checkpoints = checkpoints;
        report.keys = keys;
    }
}

/// The origin, size and root of a note's checkpoint text, without checking any signature.
pub fn unsigned_body(note: &str) -> Option<(String, u64, Hash)> {
    let text = &note[..=note.rfind("\n\n")?];
    let mut lines = text.lines();
    let (origin, size, root) = (lines.next()?, lines.next()?, lines.next()?);
    let size = size.parse().ok()?;
    let root = base64::engine::general_purpose::STANDARD.decode(root).ok()?.try_into().ok()?;
    let checkpoint = Checkpoint::new(origin, size, root).ok()?;
    Some((checkpoint.origin().to_owned(), checkpoint.size(), *checkpoint.root()))
}

/// The `name+keyid` of every signature line of a note, as far as they can be read.
fn signers(note: &str) -> Vec<String> {
    let Some(split) = note.rfind("\n\n") else { return Vec::new() };
    note[split + 2..]
        .lines()
        .filter_map(|line| {
            let (name, blob) = line.strip_prefix("\u{2014} ")?.split_once(' ')?;
            let blob = base64::engine::general_purpose::STANDARD.decode(blob).ok()?;
            let id: [u8; 4] = blob.get(..4)?.try_into().ok()?;
            Some(format!("{name}+{}", hex::encode(id)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::{Draft, EventType};
    use serde_json::json;

    fn chain(n: i64) -> Vec<Event> {
        let at = time::macros::datetime!(2026-11-22 06:30:00 UTC);
        let mut prev = GENESIS_PREV_HASH.to_owned();
        (1..=n)
            .map(|seq| {
                let draft = Draft::new(EventType::ToolCall, json!({"n": seq}));
                let event = draft.seal("default", seq, &prev, at);
                prev.clone_from(&event.hash);
                event
            })
            .collect()
    }

    fn kinds(report: &Report) -> Vec<(&'static str, i64)> {
        report
            .findings
            .iter()
            .map(|f| {
                let seq = match f {
                    Finding::Modified { seq, .. }
                    | Finding::OutOfOrder { seq, .. }
                    | Finding::Inserted { seq, .. }
                    | Finding::BrokenLink { seq, .. } => *seq,
                    Finding::Missing { from_seq, .. } => *from_seq,
                    _ => 0,
                };
                (f.kind(), seq)
            })
            .collect()
    }

    #[test]
    fn an_untouched_chain_is_intact() {
        let events = chain(10);
        let report = verify_all(&events);
        assert!(report.intact(), "{:?}", report.findings);
        assert_eq!(report.events, 10);
        assert_eq!(report.chains[0].seq, 10);
        assert_eq!(report.chains[0].hash, events[9].hash);
    }

    #[test]
    fn an_edited_row_is_modified() {
        let mut events = chain(5);
        events[2].data = json!({"n": 300});
        let report = verify_all(&events);
        assert_eq!(kinds(&report), [("modified", 3)]);
    }

    #[test]
    fn a_deleted_row_is_missing() {
        let mut events = chain(5);
        let gone = events.remove(1);
        let report = verify_all(&events);
        assert_eq!(kinds(&report), [("missing", 2)]);
        assert_ne!(gone.event_id, events[1].event_id);
        assert!(report.findings[0].to_string().contains(&events[1].event_id));
    }

    #[test]
    fn swapped_rows_are_out_of_order() {
        let mut events = chain(6);
        events[2].seq = 4;
        events[3].seq = 3;
        events.swap(2, 3);
        let report = verify_all(&events);
        assert_eq!(kinds(&report), [("out_of_order", 3), ("out_of_order", 4)]);
        assert!(matches!(report.findings[0], Finding::OutOfOrder { written_at_seq: 4, .. }));
    }

    #[test]
    fn a_rewritten_row_with_recomputed_hash_breaks_the_next_link() {
        let mut events = chain(5);
        events[1].data = json!({"n": "forged"});
        events[1].hash = events[1].compute_hash();
        let report = verify_all(&events);
        assert_eq!(kinds(&report), [("broken_link", 3)]);
    }

    #[test]
    fn a_duplicate_seq_is_inserted() {
        let mut events = chain(4);
        let mut forged = events[1].clone();
        forged.event_id = "forged".into();
        forged.hash = forged.compute_hash();
        events.insert(2, forged);
        let report = verify_all(&events);
        assert_eq!(kinds(&report), [("inserted", 2)]);
    }

    #[test]
    fn a_chain_that_does_not_start_at_one_is_missing_its_head() {
        let events = chain(3);
        let report = verify_all(&events[1..]);
        assert_eq!(kinds(&report), [("missing", 1)]);
    }

    fn start_after(events: &[Event], up_to_seq: i64, cut_event_id: &str) -> ChainStart {
        ChainStart {
            chain_id: "default".into(),
            seq: up_to_seq + 1,
            prev_hash: events[up_to_seq as usize - 1].hash.clone(),
            cut_event_id: cut_event_id.into(),
            tree: None,
        }
    }

    #[test]
    fn a_recorded_retention_cut_is_not_missing() {
        let events = chain(6);
        let mut verifier = Verifier::with_starts([start_after(&events, 3, "cut")]);
        for event in &events[3..] {
            verifier.push(event);
        }
        let report = verifier.finish();
        assert!(report.intact(), "{:?}", report.findings);
        assert_eq!(report.retention_cuts.len(), 1);
        assert_eq!(report.retention_cuts[0].seq, 4);
        assert_eq!(report.chains[0].seq, 6);
    }

    #[test]
    fn a_cut_that_does_not_match_the_first_event_is_still_missing() {
        let events = chain(6);
        // The cut says seq 1..=2 were removed, but 1..=3 are gone.
        let mut verifier = Verifier::with_starts([start_after(&events, 2, "cut")]);
        for event in &events[3..] {
            verifier.push(event);
        }
        let report = verifier.finish();
        assert_eq!(kinds(&report), [("missing", 1)]);
        assert!(report.retention_cuts.is_empty());

        // A gap after a legitimate start is missing too.
        let mut verifier = Verifier::with_starts([start_after(&events, 2, "cut")]);
        for event in events[2..].iter().filter(|e| e.seq != 5) {
            verifier.push(event);
        }
        let report = verifier.finish();
        assert_eq!(kinds(&report), [("missing", 5)]);
        assert_eq!(report.retention_cuts.len(), 1);
    }
}
