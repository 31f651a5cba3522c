//! Durable storage of the ledger: the [`Store`] trait, its SQLite and Postgres implementations,
//! their migrations, and the group-commit [`writer`] that every append goes through.
//!
//! **Invariant:** this is the only module that contains SQL. Nothing here knows about MCP.

mod heads;
mod held;
mod postgres;
mod sqlite;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::Serialize;

use crate::record::{CanonicalError, Draft, Event, Seal};

pub use postgres::PostgresStore;
pub use sqlite::SqliteStore;

/// The chain events go to unless a proxy is given one of its own (`[ledger] chain`).
pub const DEFAULT_CHAIN: &str = "default";

/// Why `name` cannot name a chain, if it cannot: 1-64 ASCII letters, digits, `.`, `_` or `-`,
/// starting with a letter or digit. Checkpoints carry the name in their origin line
/// (`…/chains/NAME`), so it must not hold a `/` or a space.
pub fn chain_id_problem(name: &str) -> Option<&'static str> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > 64 {
        Some("a chain name has 1 to 64 characters")
    } else if !name.chars().all(allowed) {
        Some("a chain name may hold only ASCII letters, digits, `.`, `_` and `-`")
    } else if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        Some("a chain name starts with a letter or a digit")
    } else {
        None
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported ledger url `{0}`: expected sqlite://PATH or postgres://...")]
    UnsupportedUrl(String),
    #[error("cannot create the ledger directory {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("ledger database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("ledger migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(
        "the ledger schema is not up to date and this role cannot migrate it ({0}); \
         run `mcp-ledger migrate` as the database owner"
    )]
    NeedsMigration(sqlx::Error),
    #[error("ledger event {event_id} is unreadable: {reason}")]
    Corrupt { event_id: String, reason: String },
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
    #[error("the ledger did not commit within {0:?}")]
    Timeout(Duration),
}

impl StoreError {
    /// Whether the connection to the database broke (as opposed to the database refusing).
    pub fn is_connection_lost(&self) -> bool {
        matches!(self, StoreError::Database(sqlx::Error::Io(_)))
    }
}

/// Connection settings shared by both stores.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How long an append may wait for the chain-head lock or a connection before it fails (and
    /// the call it records fails closed).
    pub lock_timeout: Duration,
    /// Whether opening the store may create or migrate the schema.
    pub migrate: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { lock_timeout: Duration::from_secs(5), migrate: true }
    }
}

/// One row of the `provenance` view.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct ProvenanceRow {
    pub call_id: String,
    pub timestamp: String,
    pub agent: Option<String>,
    pub action: Option<String>,
    pub target: Option<String>,
    pub authorized_by: Option<String>,
    pub cost_credits: Option<f64>,
    pub input_ref: Option<String>,
    pub output_ref: Option<String>,
    pub outcome: String,
    pub server: Option<String>,
    pub session_id: Option<String>,
    pub error: Option<String>,
}

/// A ledger backend. Implementations keep one total order per chain even when several processes
/// append at once, by taking the chain head under a database lock inside the append transaction.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Seals `drafts` in order after the chain's current head and commits them, with the payload
    /// bodies they reference, in one transaction. Returns each draft's seal, in order: the group
    /// commit writer moves every draft into its event ([`Draft::into_event`]) rather than copying
    /// its `data`.
    async fn seal_and_commit(
        &self,
        chain_id: &str,
        drafts: &[Draft],
    ) -> Result<Vec<Seal>, StoreError>;

    /// [`Store::seal_and_commit`], returning the sealed events (copies of the drafts' fields).
    async fn append(&self, chain_id: &str, drafts: &[Draft]) -> Result<Vec<Event>, StoreError> {
        let seals = self.seal_and_commit(chain_id, drafts).await?;
        Ok(drafts.iter().zip(seals).map(|(draft, seal)| draft.to_event(chain_id, seal)).collect())
    }

    /// Settles an append of `drafts` to `chain_id` whose outcome is unknown, because it failed
    /// after it may have reached the database or was abandoned mid-way: waits until nothing it
    /// sent can still commit, then returns its events if they are in the ledger, or `None` if
    /// they are not and never will be. A batch commits whole, so it is all or none. An append
    /// that failed before it had a connection sent nothing: `None` at once, without a query (so
    /// that a database that is down fails calls closed at once, not after a timeout).
    async fn settle(
        &self,
        chain_id: &str,
        drafts: &[Draft],
    ) -> Result<Option<Vec<Event>>, StoreError>;

    /// [`Store::append`] for appends outside the group-commit writer (an operator's decision, a
    /// CLI command's event): a failed append is settled, so that an error means the drafts did
    /// not commit, or that nobody can tell (then logged with the first event id).
    async fn append_settled(
        &self,
        chain_id: &str,
        drafts: &[Draft],
    ) -> Result<Vec<Event>, StoreError> {
        let error = match self.append(chain_id, drafts).await {
            Ok(events) => return Ok(events),
            Err(error) => error,
        };
        match settle_failed(self, chain_id, drafts, &error, None).await {
            Settled::Committed(events) => Ok(events),
            Settled::NotCommitted | Settled::Unknown => Err(error),
        }
    }

    /// Every event, ordered by `(chain_id, seq, event_id)`, streamed from the database.
    fn events(&self) -> BoxStream<'_, Result<Event, StoreError>>;

    /// The newest `limit` rows of the `provenance` view, oldest first.
    async fn provenance(&self, limit: i64) -> Result<Vec<ProvenanceRow>, StoreError>;

    /// The body stored under a `sha256:` reference, if it is still held.
    async fn payload(&self, reference: &str) -> Result<Option<String>, StoreError>;

    /// Runs the migrations that have not run yet.
    async fn migrate(&self) -> Result<(), StoreError>;

    /// Credits `agent` has spent since midnight UTC: the `cost_credits` of its tool calls that
    /// were not refused (denied, expired or cancelled), held calls still waiting included.
    async fn spent_today(&self, agent: &str) -> Result<f64, StoreError>;

    /// Every event whose `data.call_id` is `call_id`, in chain order (indexed).
    async fn events_for_call(&self, call_id: &str) -> Result<Vec<Event>, StoreError>;

    /// Every event of one `event_type`, in chain order (indexed; meant for rare types such as
    /// `approval_requested`).
    async fn events_of_type(&self, event_type: &str) -> Result<Vec<Event>, StoreError>;

    /// Subscribes to appends of `approval_requested` and `approval_decision` events by any
    /// process. Subscribe *before* reading the state you wait on, so that nothing appended in
    /// between is missed.
    async fn watch_approvals(&self) -> Result<Box<dyn ApprovalFeed>, StoreError>;

    /// Closes the connections, waiting for those in use.
    async fn close(&self);

    /// The events of `chain_id` with `from_seq <= seq <= to_seq`, in seq order (primary key).
    async fn events_range(
        &self,
        chain_id: &str,
        from_seq: i64,
        to_seq: i64,
    ) -> Result<Vec<Event>, StoreError>;

    /// The `(seq, hash)` of the events of `chain_id` with `from_seq <= seq <= to_seq`, in seq
    /// order: the leaves of the chain's Merkle tree, for proofs.
    async fn event_hashes(
        &self,
        chain_id: &str,
        from_seq: i64,
        to_seq: i64,
    ) -> Result<Vec<(i64, String)>, StoreError>;

    /// The event with this `event_id`, if there is one.
    async fn event(&self, event_id: &str) -> Result<Option<Event>, StoreError>;

    /// The highest seq of `chain_id` (0 when it is empty).
    async fn chain_size(&self, chain_id: &str) -> Result<i64, StoreError>;

    /// Stores `checkpoint` if it is larger than every checkpoint of its chain, atomically across
    /// processes; returns the stored row, or `None` when another process already checkpointed
    /// this size or a larger one.
    async fn append_checkpoint(
        &self,
        checkpoint: &NewCheckpoint,
    ) -> Result<Option<StoredCheckpoint>, StoreError>;

    /// The largest checkpoint of `chain_id`.
    async fn latest_checkpoint(
        &self,
        chain_id: &str,
    ) -> Result<Option<StoredCheckpoint>, StoreError>;

    /// Every stored checkpoint, ordered by `(chain_id, tree_size, id)`.
    async fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, StoreError>;

    /// The `retention_cut` events of `chain_id` (of every chain with `None`), in chain order:
    /// read before streaming the chain, so that the verifier knows where it may legitimately
    /// start.
    async fn retention_cuts(&self, chain_id: Option<&str>) -> Result<Vec<Event>, StoreError> {
        let cuts = self.events_of_type("retention_cut").await?;
        Ok(cuts.into_iter().filter(|e| chain_id.is_none_or(|c| e.chain_id == c)).collect())
    }

    /// The payload bodies stored no later than `older_than` that no event newer than
    /// `older_than` references: what payload retention erases.
    async fn erasable_payloads(&self, older_than: &str) -> Result<Vec<String>, StoreError>;

    /// Deletes the payload bodies stored under `references`; returns how many were deleted.
    /// Events are untouched: they hash references, not bodies. In Postgres the database allows
    /// it only for a reference an `erasure` event already names, or with `retention` (owner
    /// only); old copies are also flushed out of SQLite's write-ahead log.
    async fn erase_payloads(
        &self,
        references: &[String],
        retention: bool,
    ) -> Result<u64, StoreError>;

    /// Retention, the one privileged removal: in one transaction, records the cut (which must
    /// name `cut_event_id`, a later `retention_cut` event of the chain), removes the events of
    /// `chain_id` with `seq <= up_to_seq`, and removes the payload bodies stored no later than
    /// `payloads_until` that no remaining event references. The database refuses any other
    /// removal; in Postgres only the owner can do this (the writer role has no DELETE).
    async fn apply_retention(
        &self,
        chain_id: &str,
        up_to_seq: i64,
        cut_event_id: &str,
        payloads_until: &str,
    ) -> Result<RetentionRemoved, StoreError>;
}

/// What [`Store::apply_retention`] removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct RetentionRemoved {
    pub events: u64,
    pub payloads: u64,
}

/// A checkpoint about to be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewCheckpoint {
    pub chain_id: String,
    pub tree_size: i64,
    /// Lower-case hex of the Merkle root.
    pub root_hash: String,
    /// The signed C2SP note.
    pub note: String,
    /// The serialised `CompactTree` at `tree_size`.
    pub tree_state: serde_json::Value,
}

/// One row of the `checkpoints` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredCheckpoint {
    pub id: i64,
    pub chain_id: String,
    pub tree_size: i64,
    pub root_hash: String,
    pub note: String,
    pub tree_state: serde_json::Value,
    pub created_at: String,
}

/// Wakes a waiter when approval events may have been appended: on Postgres through
/// LISTEN/NOTIFY (with a slow poll as a safety net), on SQLite by polling.
#[async_trait]
pub trait ApprovalFeed: Send {
    /// Returns when an approval event may have been appended since the previous call, or when
    /// the store's polling interval has passed, and never later than after `max`. Spurious
    /// returns are allowed: the caller re-reads the ledger either way.
    async fn changed(&mut self, max: Duration) -> Result<(), StoreError>;
}

/// The feed of stores that can only poll: it sleeps for the interval.
pub(crate) struct PollFeed {
    interval: Duration,
}

#[async_trait]
impl ApprovalFeed for PollFeed {
    async fn changed(&mut self, max: Duration) -> Result<(), StoreError> {
        tokio::time::sleep(self.interval.min(max)).await;
        Ok(())
    }
}

/// Where a ledger lives, parsed from `sqlite://PATH` or `postgres://…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerUrl {
    Sqlite(PathBuf),
    Postgres(String),
}

impl LedgerUrl {
    pub fn parse(url: &str) -> Result<Self, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(LedgerUrl::Postgres(url.to_owned()));
        }
        let path = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
            .ok_or_else(|| StoreError::UnsupportedUrl(url.to_owned()))?;
        // Query parameters (sqlx style `?mode=rwc`) are not part of the path.
        let path = path.split('?').next().unwrap_or_default();
        if path.is_empty() {
            return Err(StoreError::UnsupportedUrl(url.to_owned()));
        }
        Ok(LedgerUrl::Sqlite(PathBuf::from(path)))
    }

    /// The default ledger: `$XDG_DATA_HOME/mcp-ledger/ledger.db`.
    pub fn default_sqlite() -> Self {
        let base = dirs::data_dir().unwrap_or_else(|| PathBuf::from("."));
        LedgerUrl::Sqlite(base.join("mcp-ledger").join("ledger.db"))
    }
}

impl std::fmt::Display for LedgerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LedgerUrl::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
            LedgerUrl::Postgres(url) => f.write_str(&redact_password(url)),
        }
    }
}

/// A Postgres URL with any password replaced, fit for logs and error messages.
pub fn redact_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

/// Opens (and, if allowed, migrates) the ledger at `url`.
pub async fn open(url: &LedgerUrl, options: &StoreOptions) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match url {
        LedgerUrl::Sqlite(path) => Arc::new(SqliteStore::open(path, options).await?),
        LedgerUrl::Postgres(url) => Arc::new(PostgresStore::open(url, options).await?),
    })
}

fn ensure_parent_dir(path: &Path) -> Result<(), StoreError> {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => std::fs::create_dir_all(dir)
            .map_err(|source| StoreError::CreateDir { path: dir.to_owned(), source }),
        _ => Ok(()),
    }
}

/// The first timestamp of today (UTC), in the ledger's timestamp format, for range queries.
fn start_of_today() -> String {
    let now = time::OffsetDateTime::now_utc();
    crate::record::format_timestamp(now.replace_time(time::Time::MIDNIGHT))
}

/// What settling a failed append found.
pub(crate) enum Settled {
    /// It had committed after all: these are its events.
    Committed(Vec<Event>),
    /// It did not commit, and never will.
    NotCommitted,
    /// Nobody can tell (settling failed or ran out of time).
    Unknown,
}

/// Settles the append of `drafts` that failed with `error` ([`Store::settle`]), within `limit`
/// if one is given, and logs what it found: a commit after all as a warning, an outcome nobody
/// can tell as an error naming the batch's first event. Shared by the writer and
/// [`Store::append_settled`].
pub(crate) async fn settle_failed<S: Store + ?Sized>(
    store: &S,
    chain_id: &str,
    drafts: &[Draft],
    error: &StoreError,
    limit: Option<Duration>,
) -> Settled {
    let settling = store.settle(chain_id, drafts);
    let settled = match limit {
        Some(limit) => {
            tokio::time::timeout(limit, settling).await.unwrap_or(Err(StoreError::Timeout(limit)))
        }
        None => settling.await,
    };
    match settled {
        Ok(Some(events)) => {
            tracing::warn!(%error, batch = drafts.len(), "a ledger append reported a failure but had committed; its events stand");
            Settled::Committed(events)
        }
        Ok(None) => Settled::NotCommitted,
        Err(settling) => {
            let first_event = drafts.first().map(|d| d.event_id.as_str());
            tracing::error!(
                %error,
                %settling,
                ?first_event,
                batch = drafts.len(),
                "cannot tell whether a failed ledger append committed; reporting it as failed (if \
                 it did commit, the ledger holds events their callers were told had failed)"
            );
            Settled::Unknown
        }
    }
}

/// What a settled append left in the ledger: `found` are the events of the chain whose ids are
/// the drafts', in seq order. Shared by both stores so they judge alike.
fn settled(drafts: &[Draft], found: Vec<Event>) -> Result<Option<Vec<Event>>, StoreError> {
    if found.is_empty() {
        return Ok(None);
    }
    let in_order = found.len() == drafts.len()
        && found.iter().zip(drafts).all(|(event, draft)| event.event_id == draft.event_id);
    if !in_order {
        return Err(StoreError::Corrupt {
            event_id: found[0].event_id.clone(),
            reason: format!(
                "a batch of {} events committed only {} of them, or out of order",
                drafts.len(),
                found.len()
            ),
        });
    }
    Ok(Some(found))
}

/// Seals `drafts` after the head `(seq, hash)`; shared by both stores so sealing is identical.
fn seal_after(chain_id: &str, head: Option<(i64, String)>, drafts: &[Draft]) -> Vec<Seal> {
    let (mut seq, mut prev) =
        head.unwrap_or_else(|| (0, crate::record::GENESIS_PREV_HASH.to_owned()));
    let timestamp = crate::record::format_timestamp(time::OffsetDateTime::now_utc());
    drafts
        .iter()
        .map(|draft| {
            seq += 1;
            let seal = draft.seal_stamped(chain_id, seq, &prev, timestamp.clone());
            prev.clone_from(&seal.hash);
            seal
        })
        .collect()
}

/// The payloads of `drafts`, each body once, sorted by reference. Concurrent transactions that
/// store the same bodies then take their unique-index locks in the same order and cannot
/// deadlock on them.
fn unique_payloads(drafts: &[Draft]) -> Vec<&crate::record::Payload> {
    let mut payloads: Vec<_> = drafts.iter().flat_map(|d| &d.payloads).collect();
    payloads.sort_by(|a, b| a.reference.cmp(&b.reference));
    payloads.dedup_by(|a, b| a.reference == b.reference);
    payloads
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_urls_parse() {
        assert_eq!(
            LedgerUrl::parse("sqlite:///var/lib/l.db").unwrap(),
            LedgerUrl::Sqlite("/var/lib/l.db".into())
        );
        assert_eq!(
            LedgerUrl::parse("sqlite:l.db?mode=rwc").unwrap(),
            LedgerUrl::Sqlite("l.db".into())
        );
        assert!(matches!(LedgerUrl::parse("postgresql://u@h/db").unwrap(), LedgerUrl::Postgres(_)));
        let err = LedgerUrl::parse("mysql://x").unwrap_err();
        assert!(err.to_string().contains("mysql://x"), "{err}");
        assert!(LedgerUrl::parse("sqlite://").is_err());
    }

    #[test]
    fn passwords_are_redacted_for_display() {
        assert_eq!(redact_password("postgres://u:secret@h:5432/db"), "postgres://u:***@h:5432/db");
        assert_eq!(redact_password("postgres://u@h/db"), "postgres://u@h/db");
    }
}
