//! The chain heads this process committed last: a store's guess at where each chain ends, so
//! that an append can extend the chain in one round trip instead of reading the head first.
//!
//! The guess is only ever a guess. Another process may have appended since; the store's
//! primary key `(chain_id, seq)` then refuses the guessed seq and nothing is written, and the
//! store falls back to reading the head under its lock. Events are never changed once written,
//! so a head that is still the head still has the hash remembered here.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{StoreError, seal_after};
use crate::record::{Draft, Seal};

/// How long guessing stays off after a lost race: other processes are appending too, and
/// their heads would keep invalidating ours, so the store serialises on its lock instead of
/// wasting round trips.
const CONTENTION_BACKOFF: Duration = Duration::from_secs(1);

/// How an append by the guessed head went.
pub(super) enum FastPath {
    Appended,
    /// The guess was stale: another process extended the chain, and nothing was written.
    LostRace,
    /// Not attempted after all (SQLite: another process held the write lock); nothing written.
    Skipped,
    Failed(StoreError),
}

#[derive(Default)]
pub(super) struct HeadCache {
    heads: Mutex<HashMap<String, (i64, String)>>,
    contended_until: Mutex<Option<Instant>>,
}

impl HeadCache {
    /// Appends `drafts` to `chain_id`: by `fast`, sealed after the head this process committed
    /// last, when it knows that head and has not seen another process append lately; otherwise,
    /// or when `fast` lost the race or was skipped, by `locked`, which reads the head under the
    /// chain's lock and seals after it. Either way the head is remembered, or forgotten when the
    /// append failed.
    pub(super) async fn append<C>(
        &self,
        conn: &mut C,
        chain_id: &str,
        drafts: &[Draft],
        fast: impl AsyncFnOnce(&mut C, &[Seal]) -> FastPath,
        locked: impl AsyncFnOnce(&mut C) -> Result<Vec<Seal>, StoreError>,
    ) -> Result<Vec<Seal>, StoreError> {
        if let Some(head) = self.guess(chain_id) {
            let seals = seal_after(chain_id, Some(head), drafts);
            match fast(conn, &seals).await {
                FastPath::Appended => {
                    self.remember(chain_id, &seals);
                    return Ok(seals);
                }
                FastPath::LostRace => self.lost_race(),
                FastPath::Skipped => {}
                FastPath::Failed(error) => {
                    self.forget(chain_id);
                    return Err(error);
                }
            }
        }
        let appended = locked(conn).await;
        match &appended {
            Ok(seals) => self.remember(chain_id, seals),
            Err(_) => self.forget(chain_id),
        }
        appended
    }

    /// The head of `chain_id` to extend without reading it, unless another process was seen
    /// appending lately.
    fn guess(&self, chain_id: &str) -> Option<(i64, String)> {
        let contended =
            self.contended_until.lock().expect("lock").is_some_and(|until| Instant::now() < until);
        if contended {
            return None;
        }
        self.heads.lock().expect("lock").get(chain_id).cloned()
    }

    /// `seals` were committed at the end of their chain.
    fn remember(&self, chain_id: &str, seals: &[Seal]) {
        if let Some(last) = seals.last() {
            self.heads
                .lock()
                .expect("lock")
                .insert(chain_id.to_owned(), (last.seq, last.hash.clone()));
        }
    }

    /// An append failed in a way that says nothing about the head: read it next time.
    fn forget(&self, chain_id: &str) {
        self.heads.lock().expect("lock").remove(chain_id);
    }

    /// A guessed head turned out to be stale: another process extended the chain.
    fn lost_race(&self) {
        *self.contended_until.lock().expect("lock") = Some(Instant::now() + CONTENTION_BACKOFF);
    }
}
