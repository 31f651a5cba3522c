//! Streaming chain verification: feed events in `(chain_id, seq)` order, get findings that name
//! each bad event and say what is wrong with it.
//!
//! Memory stays constant in the number of events: the verifier keeps only the previous event's
//! hash per chain. Reordering is recognised without an index of all hashes by trying the seqs near
//! a failing event: a swap moves rows by a few places far more often than by thousands, and a row
//! moved further is still reported (as modified).

use std::collections::VecDeque;

use serde::Serialize;

use super::event::{Event, GENESIS_PREV_HASH};

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
}

impl Finding {
    pub fn kind(&self) -> &'static str {
        match self {
            Finding::Modified { .. } => "modified",
            Finding::OutOfOrder { .. } => "out_of_order",
            Finding::Missing { .. } => "missing",
            Finding::Inserted { .. } => "inserted",
            Finding::BrokenLink { .. } => "broken_link",
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
}

impl Verifier {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, event: &Event) {
        self.report.events += 1;
        if self.current.as_ref().is_none_or(|c| c.chain_id != event.chain_id) {
            self.close_chain();
            self.current = Some(ChainState {
                chain_id: event.chain_id.clone(),
                expected_seq: 1,
                last_hash: GENESIS_PREV_HASH.to_owned(),
                last_flagged: false,
                recent_hashes: VecDeque::new(),
            });
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
    event.compute_hash().is_ok_and(|h| h == event.hash)
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
                let event = draft.seal("default", seq, &prev, at).unwrap();
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
        events[1].hash = events[1].compute_hash().unwrap();
        let report = verify_all(&events);
        assert_eq!(kinds(&report), [("broken_link", 3)]);
    }

    #[test]
    fn a_duplicate_seq_is_inserted() {
        let mut events = chain(4);
        let mut forged = events[1].clone();
        forged.event_id = "forged".into();
        forged.hash = forged.compute_hash().unwrap();
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
}
