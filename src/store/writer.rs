//! The group-commit writer: one task per process and chain that turns concurrent appends into
//! batched transactions.
//!
//! Callers send a [`Draft`] and wait for its commit. The task takes whatever is waiting (up to
//! [`MAX_BATCH`]), appends it in one transaction, and answers every waiter. Under load the batch
//! grows on its own, because drafts pile up while the previous commit is in flight; at low load a
//! draft is committed alone, with no added wait.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::{Settled, Store, StoreError, settle_failed};
use crate::record::{Draft, Event};

/// The most drafts one transaction takes.
pub const MAX_BATCH: usize = 512;

/// Why an append did not commit. Cloneable: one failed transaction fails every draft in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AppendError {
    #[error("{0}")]
    Store(Arc<StoreError>),
    #[error("the ledger writer has stopped")]
    Stopped,
}

/// Drafts that commit together (in one transaction, next to each other in the chain).
struct Job {
    drafts: Vec<Draft>,
    /// When the job was queued: its wait for the batch in flight ahead of it counts too.
    queued: Instant,
    committed: oneshot::Sender<Result<Vec<Event>, AppendError>>,
}

/// A handle to the writer task. Cheap to clone; the task ends when every handle is dropped and
/// what was queued is committed.
#[derive(Clone)]
pub struct Ledger {
    jobs: mpsc::Sender<Job>,
}

impl Ledger {
    /// Starts the writer for `chain_id` on `store`. `commit_timeout` bounds each transaction:
    /// past it the batch fails (closed) rather than leaving agents waiting.
    pub fn start(
        store: Arc<dyn Store>,
        chain_id: &str,
        commit_timeout: Duration,
    ) -> (Ledger, JoinHandle<()>) {
        let (jobs, queue) = mpsc::channel(4 * MAX_BATCH);
        let task = tokio::spawn(run(store, chain_id.to_owned(), commit_timeout, queue));
        (Ledger { jobs }, task)
    }

    /// Appends `draft` and returns the event once it is durably committed.
    pub async fn append(&self, draft: Draft) -> Result<Event, AppendError> {
        let mut events = self.append_all(vec![draft]).await?;
        Ok(events.pop().expect("one draft makes one event"))
    }

    /// Appends `drafts` in one transaction, consecutively and in order, and returns the events
    /// once they are durably committed: all of them or none.
    ///
    /// The drafts' canonical text is computed here, in the caller's task and in parallel with
    /// other callers, so that the writer's critical section (head, seal, insert, commit) only
    /// splices in each event's place in the chain and hashes it.
    pub async fn append_all(&self, drafts: Vec<Draft>) -> Result<Vec<Event>, AppendError> {
        if drafts.is_empty() {
            return Ok(Vec::new());
        }
        let drafts = drafts.into_iter().map(Draft::prepared).collect();
        let (committed, wait) = oneshot::channel();
        let job = Job { drafts, queued: Instant::now(), committed };
        self.jobs.send(job).await.map_err(|_| AppendError::Stopped)?;
        wait.await.map_err(|_| AppendError::Stopped)?
    }
}

async fn run(
    store: Arc<dyn Store>,
    chain_id: String,
    commit_timeout: Duration,
    mut queue: mpsc::Receiver<Job>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut drafts = Vec::with_capacity(batch.len());
        let mut waiters = Vec::with_capacity(batch.len());
        for job in batch.drain(..) {
            waiters.push((job.drafts.len(), job.queued, job.committed));
            drafts.extend(job.drafts);
        }
        let started = Instant::now();
        let batch_len = drafts.len();
        let outcome = commit(&*store, &chain_id, drafts, commit_timeout).await;
        let metrics = crate::telemetry::metrics();
        metrics.ledger_batch(started.elapsed(), batch_len, outcome.is_ok());
        match outcome {
            Ok(events) => {
                tracing::debug!(batch = events.len(), "ledger batch committed");
                let mut events = events.into_iter();
                for (count, queued, waiter) in waiters {
                    metrics.ledger_wait(queued.elapsed());
                    // A waiter that gave up is fine: the events are committed either way.
                    let _ = waiter.send(Ok(events.by_ref().take(count).collect()));
                }
            }
            Err(error) => {
                tracing::error!(%error, batch = batch_len, "ledger append failed; failing the batch closed");
                let error = AppendError::Store(Arc::new(error));
                for (_, _, waiter) in waiters {
                    let _ = waiter.send(Err(error.clone()));
                }
            }
        }
    }
}

/// Appends one batch. A batch reported as failed did not commit: when an append fails in a way
/// that leaves its outcome unknown, the store settles it first (`Store::settle`), and a batch
/// that committed after all is a success. A batch that certainly did not commit because the
/// connection was lost is tried once more on a new one. Each step takes at most
/// `commit_timeout`, and all of them together twice that, so a call still fails closed in
/// bounded time. The drafts are kept until the outcome is known, for the settling and the try
/// again; committed, each is moved into its event.
async fn commit(
    store: &dyn Store,
    chain_id: &str,
    drafts: Vec<Draft>,
    commit_timeout: Duration,
) -> Result<Vec<Event>, StoreError> {
    let deadline = Instant::now() + 2 * commit_timeout;
    let step = || deadline.saturating_duration_since(Instant::now()).min(commit_timeout);
    let mut retried = false;
    loop {
        let error = match bounded(step(), store.seal_and_commit(chain_id, &drafts)).await {
            Ok(seals) => {
                let events = drafts.into_iter().zip(seals);
                return Ok(events.map(|(draft, seal)| draft.into_event(chain_id, seal)).collect());
            }
            Err(error) => error,
        };
        match settle_failed(store, chain_id, &drafts, &error, Some(step())).await {
            Settled::Committed(events) => return Ok(events),
            Settled::NotCommitted
                if !retried && error.is_connection_lost() && !step().is_zero() =>
            {
                tracing::warn!(%error, "the ledger connection was lost before the batch committed; trying once more");
                retried = true;
            }
            Settled::NotCommitted | Settled::Unknown => return Err(error),
        }
    }
}

async fn bounded<T>(
    limit: Duration,
    work: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, work).await.unwrap_or(Err(StoreError::Timeout(limit)))
}
