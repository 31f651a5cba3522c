//! The embedded SQLite store: the zero-setup default.
//!
//! Several `mcp-ledger stdio` processes may share one file. Each append runs in a
//! `BEGIN IMMEDIATE` transaction, which takes SQLite's write lock before anything is read or
//! written, so heads are extended atomically across processes.
//!
//! Every statement is a round trip to the thread sqlx runs the connection on, and on a small
//! VM each costs more than SQLite's own work on a small batch, so appends send scripts. The
//! fast path is one (begin, insert the events, insert the bodies, commit) that extends the head
//! this process committed last; if another process extended the chain meanwhile, the primary
//! key `(chain_id, seq)` refuses it, the script's transaction is rolled back, and the locked
//! path takes two: begin and read the head, then insert and commit.

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::stream::BoxStream;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Connection, QueryBuilder, Row, Sqlite, SqliteConnection, SqlitePool};

use super::heads::{FastPath, HeadCache};
use super::held::{HeldConnection, Unsettled};
use super::{
    NewCheckpoint, ProvenanceRow, Store, StoreError, StoreOptions, StoredCheckpoint,
    ensure_parent_dir, seal_after, unique_payloads,
};
use crate::record::{Draft, Event, Payload, Seal};

mod pages;

/// `SELECT` of every column of `events` (in the order `event_from_row` reads them), followed by
/// the rest of the query.
macro_rules! select_events {
    ($rest:literal) => {
        concat!(
            "SELECT chain_id, seq, event_id, event_type, timestamp, session_id, agent, server, \
             data, prev_hash, hash FROM events",
            $rest
        )
    };
}

/// SQL that holds when the event aliased `e` references the payload row (`payloads.reference`):
/// every key under which an event names a body (`docs/ledger-format.md`).
macro_rules! references_body {
    () => {
        "payloads.reference IN (json_extract(e.data, '$.input_ref'), \
         json_extract(e.data, '$.output_ref'), json_extract(e.data, '$.input_stored_ref'), \
         json_extract(e.data, '$.output_stored_ref'), json_extract(e.data, '$.arguments_ref'))"
    };
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/migrations/sqlite");

/// SQLite allows 32,766 bound parameters per statement; 11 columns a row.
const MAX_ROWS_PER_INSERT: usize = 2_000;

/// How often a waiter looks for new approval events (SQLite cannot notify other processes).
const SQLITE_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// How long an append sleeps before it tries again for the write lock another process holds.
const WRITE_LOCK_RETRY: Duration = Duration::from_millis(1);

pub struct SqliteStore {
    pool: SqlitePool,
    /// The connection appends go through (`held.rs` says why). While another append is using
    /// it, appends take one from the pool.
    appender: HeldConnection<SqliteConnection>,
    /// The last head this process committed, per chain: the fast path's guess at the head.
    heads: HeadCache,
    /// How long an append waits for the write lock.
    lock_timeout: Duration,
}

impl SqliteStore {
    pub async fn open(path: &Path, options: &StoreOptions) -> Result<Self, StoreError> {
        ensure_parent_dir(path)?;
        let connect = SqliteConnectOptions::from_str("sqlite://")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit the proxy acted on survives power loss, not just a process crash.
            .synchronous(SqliteSynchronous::Full)
            // Deleted payload bodies (erasure, retention) are overwritten, not just unlinked.
            .pragma("secure_delete", "ON")
            .busy_timeout(options.lock_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(options.lock_timeout)
            .connect_with(connect.clone())
            .await?;
        // The appender waits for the write lock in `append_on`, not in SQLite's busy handler. The
        // pragma runs after the connection's others (journal mode included), which still get the
        // whole lock timeout.
        //
        // Its statement journal stays in memory (`temp_store`): a batch's INSERT copies every page
        // it changes there (its rows call JSON functions, so SQLite keeps a way to undo the
        // statement alone), and past 64 KiB (batches of 8 events and more, nearly always) SQLite
        // would spill it to a temporary file created, written and deleted for every batch.
        let appender = HeldConnection::new(
            connect.pragma("busy_timeout", "0").pragma("temp_store", "MEMORY"),
            options.lock_timeout,
        );
        let store = SqliteStore {
            pool,
            appender,
            heads: HeadCache::default(),
            lock_timeout: options.lock_timeout,
        };
        if options.migrate {
            store.migrate().await?;
        }
        Ok(store)
    }

    /// The pool, for tests that inspect or tamper with the database directly.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

fn event_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Event, StoreError> {
    let event_id: String = row.try_get("event_id")?;
    let data: String = row.try_get("data")?;
    let data = serde_json::from_str(&data)
        .map_err(|e| StoreError::Corrupt { event_id: event_id.clone(), reason: e.to_string() })?;
    Ok(Event {
        chain_id: row.try_get("chain_id")?,
        seq: row.try_get("seq")?,
        event_id,
        event_type: row.try_get("event_type")?,
        timestamp: row.try_get("timestamp")?,
        session_id: row.try_get("session_id")?,
        agent: row.try_get("agent")?,
        server: row.try_get("server")?,
        data,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

impl SqliteStore {
    /// The fast path when this process knows the head: one script that extends it; the locked
    /// path otherwise, or when the guessed head was stale.
    async fn append_on(
        &self,
        conn: &mut SqliteConnection,
        chain_id: &str,
        drafts: &[Draft],
    ) -> Result<Vec<Seal>, StoreError> {
        let payloads = unique_payloads(drafts);
        let fast = async |conn: &mut SqliteConnection, seals: &[Seal]| {
            let created_at = now();
            let mut script = QueryBuilder::new("BEGIN IMMEDIATE; ");
            push_inserts_and_commit(&mut script, chain_id, seals, drafts, &payloads, &created_at);
            match script.build().execute(&mut *conn).await {
                Ok(_) => FastPath::Appended,
                // The script's BEGIN IMMEDIATE could not take the write lock, so nothing was
                // begun: the locked path waits for the lock.
                Err(error) if is_busy(&error) => FastPath::Skipped,
                // The script stopped after its BEGIN. Rolled back here, the write lock is let
                // go now, not when the connection is settled, and a lost race can go on on
                // this connection.
                Err(error) => match (roll_back(conn).await, is_lost_race(&error)) {
                    (true, true) => FastPath::LostRace,
                    _ => FastPath::Failed(error.into()),
                },
            }
        };
        let locked = async |conn: &mut SqliteConnection| {
            append_locked(conn, chain_id, drafts, &payloads, self.lock_timeout).await
        };
        self.heads.append(conn, chain_id, drafts, fast, locked).await
    }
}

/// Appends under SQLite's write lock, waiting up to `lock_timeout` while other processes hold it.
///
/// SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25… ms between its tries, so under
/// steady contention a waiter that lost a few times sleeps on long after the lock came free:
/// with 8 `stdio` proxies on one file, p99 +245 ms and p999 +824 ms (docs/performance.md). The
/// held connection has no busy timeout; this tries again every millisecond instead.
async fn append_locked(
    conn: &mut SqliteConnection,
    chain_id: &str,
    drafts: &[Draft],
    payloads: &[&Payload],
    lock_timeout: Duration,
) -> Result<Vec<Seal>, StoreError> {
    let deadline = Instant::now() + lock_timeout;
    loop {
        match append_once(conn, chain_id, drafts, payloads).await? {
            Attempt::Appended(seals) => return Ok(seals),
            Attempt::LockBusy(error) if Instant::now() >= deadline => return Err(error.into()),
            Attempt::LockBusy(_) => tokio::time::sleep(WRITE_LOCK_RETRY).await,
        }
    }
}

enum Attempt {
    Appended(Vec<Seal>),
    /// Another connection held the write lock; nothing was done.
    LockBusy(sqlx::Error),
}

/// One try, in two round trips to the connection's thread, with the write lock held only
/// between them: take the lock (BEGIN IMMEDIATE) and read the head under it; then insert and
/// commit. Across processes the write lock is what everyone waits for, so the fewer round
/// trips it is held across, the more appends a second.
///
/// The transaction is SQL's, not an sqlx `Transaction`, so that each half is one script. Where
/// a script fails after its BEGIN it is rolled back here. If this future is dropped between or
/// during the scripts, the transaction may stay open on the connection, which is then
/// unsettled (`held.rs`): settling closes it, which rolls the transaction back.
async fn append_once(
    conn: &mut SqliteConnection,
    chain_id: &str,
    drafts: &[Draft],
    payloads: &[&Payload],
) -> Result<Attempt, StoreError> {
    let head = sqlx::query_as(
        "BEGIN IMMEDIATE; SELECT seq, hash FROM events WHERE chain_id = ? ORDER BY seq DESC LIMIT 1",
    )
    .bind(chain_id)
    .fetch_optional(&mut *conn)
    .await;
    let head: Option<(i64, String)> = match head {
        Ok(head) => head,
        Err(error) if is_busy(&error) => return Ok(Attempt::LockBusy(error)),
        Err(error) => {
            roll_back(conn).await;
            return Err(error.into());
        }
    };
    let seals = seal_after(chain_id, head, drafts);
    let created_at = now();
    let mut script = QueryBuilder::new("");
    push_inserts_and_commit(&mut script, chain_id, &seals, drafts, payloads, &created_at);
    if let Err(error) = script.build().execute(&mut *conn).await {
        roll_back(conn).await;
        return Err(error.into());
    }
    Ok(Attempt::Appended(seals))
}

/// Ends the transaction a script left open when it stopped part-way; whether that worked (it
/// fails when there is none: the script failed at its BEGIN, or SQLite rolled back itself).
async fn roll_back(conn: &mut SqliteConnection) -> bool {
    sqlx::query("ROLLBACK").execute(conn).await.is_ok()
}

/// Pushes onto a script whose transaction is open the inserts of the events `drafts` become in
/// `chain_id` with `seals` (in step) and of `payloads`, then `COMMIT`. SQLite's limit on bound
/// parameters is per statement, and sqlx binds a script's arguments statement by statement, so a
/// batch of any size is one script.
fn push_inserts_and_commit<'a>(
    script: &mut QueryBuilder<'a, Sqlite>,
    chain_id: &'a str,
    seals: &'a [Seal],
    drafts: &'a [Draft],
    payloads: &[&'a Payload],
    created_at: &'a str,
) {
    let rows = seals.chunks(MAX_ROWS_PER_INSERT).zip(drafts.chunks(MAX_ROWS_PER_INSERT));
    for (seals, drafts) in rows {
        push_insert_events(script, chain_id, seals, drafts);
        script.push("; ");
    }
    for chunk in payloads.chunks(MAX_ROWS_PER_INSERT) {
        push_insert_payloads(script, chunk, created_at);
        script.push("; ");
    }
    script.push("COMMIT");
}

/// `INSERT INTO events` of the events `drafts` become in `chain_id` with `seals` (in step).
/// `data` is stored as the drafts' canonical text, computed before the batch reached the writer:
/// the text the hash covers, serialised once.
fn push_insert_events<'a>(
    sql: &mut QueryBuilder<'a, Sqlite>,
    chain_id: &'a str,
    seals: &'a [Seal],
    drafts: &'a [Draft],
) {
    sql.push(
        "INSERT INTO events (chain_id, seq, event_id, event_type, timestamp, session_id, agent, \
         server, data, prev_hash, hash) ",
    );
    sql.push_values(seals.iter().zip(drafts), |mut row, (seal, draft)| {
        row.push_bind(chain_id)
            .push_bind(seal.seq)
            .push_bind(&draft.event_id)
            .push_bind(draft.event_type.as_str())
            .push_bind(&seal.timestamp)
            .push_bind(&draft.session_id)
            .push_bind(&draft.agent)
            .push_bind(&draft.server)
            .push_bind(draft.data_json())
            .push_bind(&seal.prev_hash)
            .push_bind(&seal.hash);
    });
}

/// `INSERT INTO payloads` of `payloads`, skipping bodies already stored.
fn push_insert_payloads<'a>(
    sql: &mut QueryBuilder<'a, Sqlite>,
    payloads: &[&'a Payload],
    created_at: &'a str,
) {
    sql.push("INSERT INTO payloads (reference, body, size, created_at) ");
    sql.push_values(payloads, |mut row, p| {
        row.push_bind(&p.reference)
            .push_bind(&p.body)
            .push_bind(p.size() as i64)
            .push_bind(created_at);
    });
    sql.push(" ON CONFLICT (reference) DO NOTHING");
}

fn now() -> String {
    crate::record::format_timestamp(time::OffsetDateTime::now_utc())
}

/// Whether `error` is the primary key of `events` refusing a seq another process took first.
fn is_lost_race(error: &sqlx::Error) -> bool {
    // 1555: SQLITE_CONSTRAINT_PRIMARYKEY. The payloads' key cannot conflict (DO NOTHING).
    matches!(error, sqlx::Error::Database(e)
        if e.code().as_deref() == Some("1555") && e.message().contains("events.seq"))
}

/// SQLITE_BUSY, in any of its extended forms: another connection holds a lock this one needs.
fn is_busy(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e)
        if e.code().and_then(|code| code.parse::<i32>().ok()).is_some_and(|code| code & 0xff == 5))
}

#[async_trait]
impl Store for SqliteStore {
    async fn seal_and_commit(
        &self,
        chain_id: &str,
        drafts: &[Draft],
    ) -> Result<Vec<Seal>, StoreError> {
        self.appender
            .append(&self.pool, async |conn| self.append_on(conn, chain_id, drafts).await)
            .await
    }

    async fn settle(
        &self,
        chain_id: &str,
        drafts: &[Draft],
    ) -> Result<Option<Vec<Event>>, StoreError> {
        let Some(unsettled) = self.appender.take_unsettled() else { return Ok(None) };
        for Unsettled { conn, .. } in unsettled {
            // Closing waits for the connection's worker thread to run what was queued to it: a
            // commit already sent, or the rollback of a transaction dropped before its commit.
            let wait = 2 * self.lock_timeout;
            if tokio::time::timeout(wait, conn.close()).await.is_err() {
                return Err(StoreError::Timeout(wait));
            }
        }
        let ids =
            serde_json::to_string(&drafts.iter().map(|d| d.event_id.as_str()).collect::<Vec<_>>())
                .expect("strings serialise");
        let found = sqlx::query(select_events!(
            " WHERE chain_id = ? AND event_id IN (SELECT value FROM json_each(?)) ORDER BY seq"
        ))
        .bind(chain_id)
        .bind(ids)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(event_from_row)
        .collect::<Result<Vec<_>, _>>()?;
        super::settled(drafts, found)
    }

    fn events(&self) -> BoxStream<'_, Result<Event, StoreError>> {
        pages::all_events(&self.pool)
    }

    async fn provenance(&self, limit: i64) -> Result<Vec<ProvenanceRow>, StoreError> {
        let rows = sqlx::query_as(
            "SELECT call_id, timestamp, agent, action, target, authorized_by, \
             CAST(cost_credits AS REAL) AS cost_credits, input_ref, output_ref, outcome, server, \
             session_id, error \
             FROM (SELECT * FROM provenance ORDER BY timestamp DESC, call_id DESC LIMIT ?) \
             ORDER BY timestamp, call_id",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    async fn payload(&self, reference: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT body FROM payloads WHERE reference = ?")
            .bind(reference)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        // sqlx takes no cross-process lock for SQLite migrations: two proxies creating the same
        // new ledger race, and the loser fails on a table the winner just made. Once the winner
        // commits, the loser finds the migration applied.
        let mut attempts = 0;
        loop {
            match MIGRATOR.run(&self.pool).await {
                Ok(()) => return Ok(()),
                Err(_) if attempts < 3 => {
                    attempts += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(100 * attempts)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn spent_today(&self, agent: &str) -> Result<f64, StoreError> {
        let spent: Option<f64> = sqlx::query_scalar(
            "SELECT SUM(CAST(json_extract(c.data, '$.cost_credits') AS REAL)) FROM events c \
             WHERE c.event_type = 'tool_call' AND c.agent = ? AND c.timestamp >= ? \
             AND COALESCE(json_extract(c.data, '$.decision.effect'), 'allow') <> 'deny' \
             AND NOT EXISTS (SELECT 1 FROM events r WHERE r.event_type = 'tool_result' \
               AND json_extract(r.data, '$.call_id') = json_extract(c.data, '$.call_id') \
               AND json_extract(r.data, '$.outcome') IN ('denied', 'expired', 'cancelled'))",
        )
        .bind(agent)
        .bind(super::start_of_today())
        .fetch_one(&self.pool)
        .await?;
        Ok(spent.unwrap_or(0.0))
    }

    async fn events_for_call(&self, call_id: &str) -> Result<Vec<Event>, StoreError> {
        // The `IS NOT NULL` term lets SQLite use the partial index `events_call_id`.
        sqlx::query(select_events!(
            " WHERE json_extract(data, '$.call_id') = ? \
             AND json_extract(data, '$.call_id') IS NOT NULL ORDER BY chain_id, seq"
        ))
        .bind(call_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(event_from_row)
        .collect()
    }

    async fn events_of_type(&self, event_type: &str) -> Result<Vec<Event>, StoreError> {
        sqlx::query(select_events!(" WHERE event_type = ? ORDER BY chain_id, seq"))
            .bind(event_type)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(event_from_row)
            .collect()
    }

    async fn watch_approvals(&self) -> Result<Box<dyn super::ApprovalFeed>, StoreError> {
        // SQLite has no notifications across processes: poll. Each look is one short read on a
        // pooled connection; nothing is held between looks.
        Ok(Box::new(super::PollFeed { interval: SQLITE_POLL_INTERVAL }))
    }

    async fn close(&self) {
        self.appender.close().await;
        self.pool.close().await;
    }

    async fn events_range(
        &self,
        chain_id: &str,
        from_seq: i64,
        to_seq: i64,
    ) -> Result<Vec<Event>, StoreError> {
        sqlx::query(select_events!(
            " WHERE chain_id = ? AND seq BETWEEN ? AND ? \
             ORDER BY seq, event_id"
        ))
        .bind(chain_id)
        .bind(from_seq)
        .bind(to_seq)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(event_from_row)
        .collect()
    }

    async fn event_hashes(
        &self,
        chain_id: &str,
        from_seq: i64,
        to_seq: i64,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT seq, hash FROM events WHERE chain_id = ? AND seq BETWEEN ? AND ? \
             ORDER BY seq, event_id",
        )
        .bind(chain_id)
        .bind(from_seq)
        .bind(to_seq)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn event(&self, event_id: &str) -> Result<Option<Event>, StoreError> {
        sqlx::query(select_events!(" WHERE event_id = ?"))
            .bind(event_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(event_from_row)
            .transpose()
    }

    async fn chain_size(&self, chain_id: &str) -> Result<i64, StoreError> {
        let size: Option<i64> =
            sqlx::query_scalar("SELECT MAX(seq) FROM events WHERE chain_id = ?")
                .bind(chain_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(size.unwrap_or(0))
    }

    async fn append_checkpoint(
        &self,
        checkpoint: &NewCheckpoint,
    ) -> Result<Option<StoredCheckpoint>, StoreError> {
        // BEGIN IMMEDIATE takes the write lock first, so "larger than the latest" is decided
        // atomically across processes.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let created_at = crate::record::format_timestamp(time::OffsetDateTime::now_utc());
        let row = sqlx::query(
            "INSERT INTO checkpoints (chain_id, tree_size, root_hash, note, tree_state, created_at) \
             SELECT ?1, ?2, ?3, ?4, ?5, ?6 WHERE NOT EXISTS \
             (SELECT 1 FROM checkpoints WHERE chain_id = ?1 AND tree_size >= ?2) \
             RETURNING id, chain_id, tree_size, root_hash, note, tree_state, created_at",
        )
        .bind(&checkpoint.chain_id)
        .bind(checkpoint.tree_size)
        .bind(&checkpoint.root_hash)
        .bind(&checkpoint.note)
        .bind(checkpoint.tree_state.to_string())
        .bind(&created_at)
        .fetch_optional(&mut *tx)
        .await?;
        let stored = row.as_ref().map(checkpoint_from_row).transpose()?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn latest_checkpoint(
        &self,
        chain_id: &str,
    ) -> Result<Option<StoredCheckpoint>, StoreError> {
        sqlx::query(
            "SELECT id, chain_id, tree_size, root_hash, note, tree_state, created_at \
             FROM checkpoints WHERE chain_id = ? ORDER BY tree_size DESC, id DESC LIMIT 1",
        )
        .bind(chain_id)
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(checkpoint_from_row)
        .transpose()
    }

    async fn checkpoints(&self) -> Result<Vec<StoredCheckpoint>, StoreError> {
        sqlx::query(
            "SELECT id, chain_id, tree_size, root_hash, note, tree_state, created_at \
             FROM checkpoints ORDER BY chain_id, tree_size, id",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(checkpoint_from_row)
        .collect()
    }

    async fn erasable_payloads(&self, older_than: &str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(concat!(
            "SELECT reference FROM payloads WHERE created_at <= ?1 AND NOT EXISTS \
             (SELECT 1 FROM events e WHERE e.timestamp > ?1 AND (",
            references_body!(),
            ")) ORDER BY reference"
        ))
        .bind(older_than)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn erase_payloads(
        &self,
        references: &[String],
        _retention: bool,
    ) -> Result<u64, StoreError> {
        let mut erased = 0;
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for reference in references {
            erased += sqlx::query("DELETE FROM payloads WHERE reference = ?")
                .bind(reference)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        // `secure_delete` zeroed the bodies in the pages this wrote; moving every page back
        // into the database file and truncating the write-ahead log drops the older copies
        // of those pages that the log still held.
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.pool).await?;
        Ok(erased)
    }

    async fn apply_retention(
        &self,
        chain_id: &str,
        up_to_seq: i64,
        cut_event_id: &str,
        payloads_until: &str,
    ) -> Result<super::RetentionRemoved, StoreError> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let created_at = crate::record::format_timestamp(time::OffsetDateTime::now_utc());
        sqlx::query(
            "INSERT INTO retention_cuts (chain_id, up_to_seq, cut_event_id, created_at) \
             SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM events WHERE event_id = ?3 \
              AND chain_id = ?1 AND event_type = 'retention_cut' AND seq > ?2) \
             ON CONFLICT (chain_id, up_to_seq) DO NOTHING",
        )
        .bind(chain_id)
        .bind(up_to_seq)
        .bind(cut_event_id)
        .bind(&created_at)
        .execute(&mut *tx)
        .await?;
        let events = sqlx::query("DELETE FROM events WHERE chain_id = ? AND seq <= ?")
            .bind(chain_id)
            .bind(up_to_seq)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let payloads = sqlx::query(concat!(
            "DELETE FROM payloads WHERE created_at <= ? AND NOT EXISTS (SELECT 1 FROM events e WHERE ",
            references_body!(),
            ")"
        ))
        .bind(payloads_until)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(super::RetentionRemoved { events, payloads })
    }
}

fn checkpoint_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<StoredCheckpoint, StoreError> {
    let id: i64 = row.try_get("id")?;
    let tree_state: String = row.try_get("tree_state")?;
    let tree_state = serde_json::from_str(&tree_state).map_err(|e| StoreError::Corrupt {
        event_id: format!("checkpoint {id}"),
        reason: e.to_string(),
    })?;
    Ok(StoredCheckpoint {
        id,
        chain_id: row.try_get("chain_id")?,
        tree_size: row.try_get("tree_size")?,
        root_hash: row.try_get("root_hash")?,
        note: row.try_get("note")?,
        tree_state,
        created_at: row.try_get("created_at")?,
    })
}

impl SqliteStore {
    /// Writes a consistent copy of the whole ledger (WAL included) to a new file at `path`.
    pub async fn snapshot_to(&self, path: &Path) -> Result<(), StoreError> {
        sqlx::query("VACUUM INTO ?")
            .bind(path.to_string_lossy().as_ref())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Does what anyone with write access to the file can do: drops the append-only trigger and
    /// rewrites one event's `data` in place, leaving its hash alone. The demo shows `verify`
    /// catching this; the proxy never calls it.
    pub async fn tamper_rewrite_data(
        &self,
        event_id: &str,
        data: &serde_json::Value,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DROP TRIGGER IF EXISTS events_refuse_update").execute(&mut *tx).await?;
        sqlx::query("UPDATE events SET data = ? WHERE event_id = ?")
            .bind(data.to_string())
            .bind(event_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
