//! The Postgres store, for production and for many proxies sharing one ledger.
//!
//! Appends keep one total order per chain across processes in two ways. The fast path extends
//! the head this process committed last, in a single autocommitted statement: the primary key
//! `(chain_id, seq)` refuses it if another process got there first, and then nothing was written.
//! The fallback reads the head under a transaction-scoped advisory lock. Neither needs UPDATE
//! privilege (a `SELECT … FOR UPDATE` on a head row would), so the proxy can run as the
//! insert-only `mcp_ledger_writer` role; and `prev_hash` can be trusted from the cache because
//! events are never changed once written.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::types::Json;
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool, Postgres, Row};

use super::heads::{FastPath, HeadCache};
use super::held::{BackendId, HeldConnection, Unsettled};
use super::{
    NewCheckpoint, ProvenanceRow, Store, StoreError, StoreOptions, StoredCheckpoint, seal_after,
    unique_payloads,
};
use crate::record::{Draft, Event, Payload, Seal};

/// `SELECT` of every column of `mcp_ledger.events` (in the order `event_from_row` reads them), followed by
/// the rest of the query.
macro_rules! select_events {
    ($rest:literal) => {
        concat!(
            "SELECT chain_id, seq, event_id, event_type, \"timestamp\", session_id, agent, server, \
             data, prev_hash, hash FROM mcp_ledger.events",
            $rest
        )
    };
}

/// SQL that holds when the event aliased `$e` references the payload row `p`: every key under
/// which an event names a body (`docs/ledger-format.md`).
macro_rules! references_body {
    ($e:literal) => {
        concat!(
            $e,
            ".data ->> 'input_ref' = p.reference OR ",
            $e,
            ".data ->> 'output_ref' = p.reference OR ",
            $e,
            ".data ->> 'input_stored_ref' = p.reference OR ",
            $e,
            ".data ->> 'output_stored_ref' = p.reference OR ",
            $e,
            ".data ->> 'arguments_ref' = p.reference"
        )
    };
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/migrations/postgres");

pub struct PostgresStore {
    /// For appends and the small lookups of the proxy's path: every statement is bounded.
    pool: PgPool,
    /// For reads and maintenance that legitimately run long on a large ledger (streaming the
    /// whole chain for `verify`, migrations, retention, erasure): no statement timeout, and no
    /// slow-statement warnings. Connects only when first used.
    long: PgPool,
    /// The connection appends go through (`held.rs` says why). While another append is using
    /// it, appends take one from the pool.
    appender: HeldConnection<PgConnection>,
    /// The last head this process committed, per chain: the fast path's guess at the head.
    heads: HeadCache,
    /// Bounds every wait of the append path, settling included.
    lock_timeout: Duration,
}

/// How often the locked path retries a lost race. Since the fast path takes the chain's lock
/// too, only a deadlock that Postgres breaks by rolling us back is left to retry.
const MAX_LOCKED_ATTEMPTS: u32 = 20;

impl PostgresStore {
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let timeout_ms = options.lock_timeout.as_millis().to_string();
        let base = PgConnectOptions::from_str(url)?.application_name("mcp-ledger");
        // A lock or statement that waits longer than this fails the append, and the call it
        // records fails closed instead of hanging the agent.
        let bounded = base
            .clone()
            .options([("lock_timeout", timeout_ms.as_str()), ("statement_timeout", &timeout_ms)]);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(options.lock_timeout)
            .connect_with(bounded.clone())
            .await?;
        let unbounded = base
            .options([("lock_timeout", timeout_ms.as_str())])
            .log_slow_statements(log::LevelFilter::Off, Duration::from_secs(3600));
        let long = PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(options.lock_timeout)
            .connect_lazy_with(unbounded);
        let store = PostgresStore {
            pool,
            long,
            appender: HeldConnection::new(bounded, options.lock_timeout),
            heads: HeadCache::default(),
            lock_timeout: options.lock_timeout,
        };
        if options.migrate && !store.is_current().await? {
            store.migrate().await.map_err(|e| match e {
                StoreError::Migrate(sqlx::migrate::MigrateError::Execute(source))
                    if is_permission_denied(&source) =>
                {
                    StoreError::NeedsMigration(source)
                }
                other => other,
            })?;
        }
        Ok(store)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Whether every embedded migration has been applied. Readable by the writer role, so an
    /// insert-only proxy can start without trying (and failing) to migrate.
    async fn is_current(&self) -> Result<bool, StoreError> {
        let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        let applied: Result<Option<i64>, sqlx::Error> =
            sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
                .fetch_one(&self.pool)
                .await;
        match applied {
            Ok(version) => Ok(version.unwrap_or(0) >= latest),
            // 42P01: the migrations table does not exist yet, so nothing has been applied.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
}

impl PostgresStore {
    /// Reads the head and inserts under the chain's advisory lock, in one transaction.
    async fn append_locked(
        conn: &mut PgConnection,
        chain_id: &str,
        drafts: &[Draft],
        payloads: &[&Payload],
    ) -> Result<Vec<Seal>, StoreError> {
        let mut tx = conn.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(chain_lock_key(chain_id))
            .execute(&mut *tx)
            .await?;
        let head: Option<(i64, String)> = sqlx::query_as(
            "SELECT seq, hash FROM mcp_ledger.events WHERE chain_id = $1 ORDER BY seq DESC LIMIT 1",
        )
        .bind(chain_id)
        .fetch_optional(&mut *tx)
        .await?;
        let seals = seal_after(chain_id, head, drafts);
        insert_rows(chain_id, &seals, drafts, payloads).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(seals)
    }

    /// Ends the server session `backend` (an append's, whose outcome is unknown) and waits
    /// until it is gone: what it had not committed is rolled back, and nothing more can commit.
    /// The same role may end its own sessions, so the insert-only writer role can too.
    async fn end_session(&self, backend: &BackendId) -> Result<(), StoreError> {
        // Within the statement timeout of the pool's connections, which bounds this query.
        // (A wait of 0 would not wait for the exit at all.)
        let wait = (self.lock_timeout / 2).max(Duration::from_millis(1));
        let ended: Option<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid, $3) FROM pg_stat_activity \
             WHERE pid = $1 AND backend_start::text = $2",
        )
        .bind(backend.pid)
        .bind(&backend.started)
        .bind(wait.as_millis() as i64)
        .fetch_optional(&self.pool)
        .await?;
        match ended {
            // Gone already, or ended within the wait.
            None | Some(true) => Ok(()),
            Some(false) => Err(StoreError::Timeout(wait)),
        }
    }

    /// The fast path, and the locked path when it loses a race or other processes are appending.
    async fn append_on(
        &self,
        conn: &mut PgConnection,
        chain_id: &str,
        drafts: &[Draft],
    ) -> Result<Vec<Seal>, StoreError> {
        let payloads = unique_payloads(drafts);
        // Fast path: extend the head this process wrote last, in one autocommitted statement
        // (one round trip) that takes the chain's lock before inserting. If another process
        // extended the chain meanwhile, the primary key refuses our seq and nothing is written.
        let fast = async |conn: &mut PgConnection, seals: &[Seal]| {
            let inserted = insert_rows(chain_id, seals, drafts, &payloads).execute(conn).await;
            match inserted {
                Ok(_) => FastPath::Appended,
                Err(error) if is_lost_race(&error) => FastPath::LostRace,
                Err(error) => FastPath::Failed(error.into()),
            }
        };
        let locked = async |conn: &mut PgConnection| {
            let mut attempts = 0;
            loop {
                match Self::append_locked(conn, chain_id, drafts, &payloads).await {
                    // Under the chain's lock no other writer can take our seq; what is left is
                    // a deadlock with another chain's writer, which Postgres breaks by rolling
                    // one of us back.
                    Err(StoreError::Database(error))
                        if is_lost_race(&error) && attempts < MAX_LOCKED_ATTEMPTS =>
                    {
                        attempts += 1;
                    }
                    appended => return appended,
                }
            }
        };
        self.heads.append(conn, chain_id, drafts, fast, locked).await
    }
}

/// The one statement every append runs: it stores `payloads` (skipping bodies already stored)
/// and inserts `events`, each column bound as one array. The text never changes with the batch
/// size, so each connection prepares and plans it once; a multi-row `VALUES` list would be a new
/// statement for every batch size, parsed and planned again whenever it fell out of the cache.
///
/// The chain's advisory lock is taken (an init plan, before the first event row) in the same
/// statement, so a fast-path append waits for a locked transaction in another process to
/// commit and then fails on the seq it took, instead of taking that transaction's seq from
/// under it. Without the lock, a locked writer could lose its seq to fast-path writers in other
/// processes on every retry until it gave up: with 8 `stdio` proxies on one ledger a call once
/// failed closed on a duplicate seq, which is how this code could have produced that. Inside
/// the locked path the lock is already held, and taking it again is free.
const INSERT_EVENTS: &str = "\
    WITH stored_payloads AS (\
        INSERT INTO mcp_ledger.payloads (reference, body, size) \
        SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[]) \
        ON CONFLICT (reference) DO NOTHING RETURNING 1) \
    INSERT INTO mcp_ledger.events (chain_id, seq, event_id, event_type, \"timestamp\", \
        session_id, agent, server, data, prev_hash, hash) \
    SELECT $4, * FROM UNNEST($5::bigint[], $6::text[], $7::text[], $8::text[], $9::text[], \
        $10::text[], $11::text[], $12::text[]::jsonb[], $13::text[], $14::text[]) \
    WHERE EXISTS (SELECT FROM pg_advisory_xact_lock($15))";

/// [`INSERT_EVENTS`] with its arguments: the events `drafts` become in `chain_id` with `seals`
/// (in step). `data` is bound as the drafts' canonical text, computed before the batch reached
/// the writer, instead of being serialised again here.
fn insert_rows<'a>(
    chain_id: &'a str,
    seals: &'a [Seal],
    drafts: &'a [Draft],
    payloads: &[&'a Payload],
) -> sqlx::query::Query<'a, Postgres, sqlx::postgres::PgArguments> {
    fn column<'a, T, R>(rows: &'a [R], field: impl Fn(&'a R) -> T) -> Vec<T> {
        rows.iter().map(field).collect()
    }
    sqlx::query(INSERT_EVENTS)
        .bind(column(payloads, |p| p.reference.as_str()))
        .bind(column(payloads, |p| p.body.as_str()))
        .bind(column(payloads, |p| p.size() as i64))
        .bind(chain_id)
        .bind(column(seals, |s| s.seq))
        .bind(column(drafts, |d| d.event_id.as_str()))
        .bind(column(drafts, |d| d.event_type.as_str()))
        .bind(column(seals, |s| s.timestamp.as_str()))
        .bind(column(drafts, |d| d.session_id.as_deref()))
        .bind(column(drafts, |d| d.agent.as_deref()))
        .bind(column(drafts, |d| d.server.as_deref()))
        .bind(column(drafts, Draft::data_json))
        .bind(column(seals, |s| s.prev_hash.as_str()))
        .bind(column(seals, |s| s.hash.as_str()))
        .bind(chain_lock_key(chain_id))
}

/// Whether `error` is a race with another process's writer that left nothing of ours written:
/// it took the seq we tried to append at, or Postgres broke a deadlock by rolling us back.
/// Writers of different chains do not share a lock, and their statements can wait on each
/// other's uncommitted payload rows (the same body stored by both).
fn is_lost_race(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e)
        if (e.code().as_deref() == Some("23505") && e.constraint() == Some("events_pkey"))
            || e.code().as_deref() == Some("40P01"))
}

fn is_permission_denied(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.code().as_deref() == Some("42501"))
}

/// The advisory-lock key of a chain: 64 bits of SHA-256, namespaced so other applications'
/// advisory locks in the same database do not collide with ours.
fn chain_lock_key(chain_id: &str) -> i64 {
    let digest = Sha256::digest(format!("mcp-ledger/chain/{chain_id}"));
    i64::from_be_bytes(digest[..8].try_into().expect("a SHA-256 digest has 8 bytes"))
}

fn event_from_row(row: &sqlx::postgres::PgRow) -> Result<Event, StoreError> {
    let Json(data) = row.try_get::<Json<serde_json::Value>, _>("data")?;
    Ok(Event {
        chain_id: row.try_get("chain_id")?,
        seq: row.try_get("seq")?,
        event_id: row.try_get("event_id")?,
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

#[async_trait]
impl Store for PostgresStore {
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
        for Unsettled { conn, backend } in unsettled {
            // The server finishes a statement it received even with the client gone; only the
            // end of its session makes the outcome final.
            drop(conn);
            if let Some(backend) = backend {
                self.end_session(&backend).await?;
            }
        }
        let ids: Vec<&str> = drafts.iter().map(|d| d.event_id.as_str()).collect();
        let found =
            sqlx::query(select_events!(" WHERE chain_id = $1 AND event_id = ANY($2) ORDER BY seq"))
                .bind(chain_id)
                .bind(&ids)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(event_from_row)
                .collect::<Result<Vec<_>, _>>()?;
        super::settled(drafts, found)
    }

    fn events(&self) -> BoxStream<'_, Result<Event, StoreError>> {
        sqlx::query(select_events!(" ORDER BY chain_id, seq, event_id"))
            .fetch(&self.long)
            .map(|row| event_from_row(&row?))
            .boxed()
    }

    async fn provenance(&self, limit: i64) -> Result<Vec<ProvenanceRow>, StoreError> {
        let rows = sqlx::query_as(
            "SELECT call_id, to_char(\"timestamp\" AT TIME ZONE 'UTC', \
             'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS \"timestamp\", agent, action, target, \
             authorized_by, cost_credits::float8 AS cost_credits, input_ref, output_ref, outcome, \
             server, session_id, error FROM (SELECT * FROM mcp_ledger.provenance \
             ORDER BY \"timestamp\" DESC, call_id DESC LIMIT $1) newest \
             ORDER BY \"timestamp\", call_id",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    async fn payload(&self, reference: &str) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar("SELECT body FROM mcp_ledger.payloads WHERE reference = $1")
            .bind(reference)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        Ok(MIGRATOR.run(&self.long).await?)
    }

    async fn spent_today(&self, agent: &str) -> Result<f64, StoreError> {
        let spent: Option<f64> = sqlx::query_scalar(
            "SELECT SUM((c.data ->> 'cost_credits')::float8) FROM mcp_ledger.events c \
             WHERE c.event_type = 'tool_call' AND c.agent = $1 AND c.\"timestamp\" >= $2 \
             AND COALESCE(c.data #>> '{decision,effect}', 'allow') <> 'deny' \
             AND NOT EXISTS (SELECT 1 FROM mcp_ledger.events r WHERE r.event_type = 'tool_result' \
               AND r.data ->> 'call_id' = c.data ->> 'call_id' \
               AND r.data ->> 'outcome' IN ('denied', 'expired', 'cancelled'))",
        )
        .bind(agent)
        .bind(super::start_of_today())
        .fetch_one(&self.pool)
        .await?;
        Ok(spent.unwrap_or(0.0))
    }

    async fn events_for_call(&self, call_id: &str) -> Result<Vec<Event>, StoreError> {
        // The `?` term lets Postgres use the partial index `events_call_id`.
        sqlx::query(select_events!(
            " \
             WHERE data ->> 'call_id' = $1 AND data ? 'call_id' ORDER BY chain_id, seq"
        ))
        .bind(call_id)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(event_from_row)
        .collect()
    }

    async fn events_of_type(&self, event_type: &str) -> Result<Vec<Event>, StoreError> {
        sqlx::query(select_events!(
            " WHERE event_type = $1 \
             ORDER BY chain_id, seq"
        ))
        .bind(event_type)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(event_from_row)
        .collect()
    }

    async fn watch_approvals(&self) -> Result<Box<dyn super::ApprovalFeed>, StoreError> {
        notify::watch(&self.pool).await
    }

    async fn close(&self) {
        self.appender.close().await;
        self.pool.close().await;
        self.long.close().await;
    }

    async fn events_range(
        &self,
        chain_id: &str,
        from_seq: i64,
        to_seq: i64,
    ) -> Result<Vec<Event>, StoreError> {
        sqlx::query(select_events!(
            " \
             WHERE chain_id = $1 AND seq BETWEEN $2 AND $3 ORDER BY seq, event_id"
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
            "SELECT seq, hash FROM mcp_ledger.events \
             WHERE chain_id = $1 AND seq BETWEEN $2 AND $3 ORDER BY seq, event_id",
        )
        .bind(chain_id)
        .bind(from_seq)
        .bind(to_seq)
        .fetch_all(&self.long)
        .await?)
    }

    async fn event(&self, event_id: &str) -> Result<Option<Event>, StoreError> {
        sqlx::query(select_events!(" WHERE event_id = $1"))
            .bind(event_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(event_from_row)
            .transpose()
    }

    async fn chain_size(&self, chain_id: &str) -> Result<i64, StoreError> {
        let size: Option<i64> =
            sqlx::query_scalar("SELECT max(seq) FROM mcp_ledger.events WHERE chain_id = $1")
                .bind(chain_id)
                .fetch_one(&self.pool)
                .await?;
        Ok(size.unwrap_or(0))
    }

    async fn append_checkpoint(
        &self,
        checkpoint: &NewCheckpoint,
    ) -> Result<Option<StoredCheckpoint>, StoreError> {
        // Under a per-chain advisory lock (not the append lock: checkpoints never hold up
        // events), "larger than the latest" is decided atomically across processes.
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(checkpoint_lock_key(&checkpoint.chain_id))
            .execute(&mut *tx)
            .await?;
        let created_at = crate::record::format_timestamp(time::OffsetDateTime::now_utc());
        let row = sqlx::query(
            "INSERT INTO mcp_ledger.checkpoints \
             (chain_id, tree_size, root_hash, note, tree_state, created_at) \
             SELECT $1, $2, $3, $4, $5, $6 WHERE NOT EXISTS \
             (SELECT 1 FROM mcp_ledger.checkpoints WHERE chain_id = $1 AND tree_size >= $2) \
             RETURNING id, chain_id, tree_size, root_hash, note, tree_state, created_at",
        )
        .bind(&checkpoint.chain_id)
        .bind(checkpoint.tree_size)
        .bind(&checkpoint.root_hash)
        .bind(&checkpoint.note)
        .bind(Json(&checkpoint.tree_state))
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
             FROM mcp_ledger.checkpoints WHERE chain_id = $1 \
             ORDER BY tree_size DESC, id DESC LIMIT 1",
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
             FROM mcp_ledger.checkpoints ORDER BY chain_id, tree_size, id",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(checkpoint_from_row)
        .collect()
    }

    async fn erasable_payloads(&self, older_than: &str) -> Result<Vec<String>, StoreError> {
        self.erasable(older_than).await
    }

    async fn erase_payloads(
        &self,
        references: &[String],
        retention: bool,
    ) -> Result<u64, StoreError> {
        self.erase(references, retention).await
    }

    async fn apply_retention(
        &self,
        chain_id: &str,
        up_to_seq: i64,
        cut_event_id: &str,
        payloads_until: &str,
    ) -> Result<super::RetentionRemoved, StoreError> {
        let mut tx = self.long.begin().await?;
        sqlx::query("SET LOCAL mcp_ledger.retention = 'on'").execute(&mut *tx).await?;
        sqlx::query(
            "INSERT INTO mcp_ledger.retention_cuts (chain_id, up_to_seq, cut_event_id) \
             VALUES ($1, $2, $3) ON CONFLICT (chain_id, up_to_seq) DO NOTHING",
        )
        .bind(chain_id)
        .bind(up_to_seq)
        .bind(cut_event_id)
        .execute(&mut *tx)
        .await?;
        let events = sqlx::query("DELETE FROM mcp_ledger.events WHERE chain_id = $1 AND seq <= $2")
            .bind(chain_id)
            .bind(up_to_seq)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let payloads = sqlx::query(concat!(
            "DELETE FROM mcp_ledger.payloads p WHERE p.created_at <= $1::timestamptz \
             AND NOT EXISTS (SELECT 1 FROM mcp_ledger.events e WHERE ",
            references_body!("e"),
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

impl PostgresStore {
    async fn erasable(&self, older_than: &str) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(concat!(
            "SELECT p.reference FROM mcp_ledger.payloads p WHERE p.created_at <= $1::timestamptz \
             AND NOT EXISTS (SELECT 1 FROM mcp_ledger.events e \
              WHERE e.\"timestamp\" > $1 AND (",
            references_body!("e"),
            ")) ORDER BY p.reference"
        ))
        .bind(older_than)
        .fetch_all(&self.long)
        .await?)
    }

    async fn erase(&self, references: &[String], retention: bool) -> Result<u64, StoreError> {
        let mut tx = self.long.begin().await?;
        if retention {
            sqlx::query("SET LOCAL mcp_ledger.retention = 'on'").execute(&mut *tx).await?;
        }
        let erased = sqlx::query("DELETE FROM mcp_ledger.payloads WHERE reference = ANY($1)")
            .bind(references)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(erased)
    }
}

/// The advisory-lock key under which checkpoints of a chain are stored.
fn checkpoint_lock_key(chain_id: &str) -> i64 {
    chain_lock_key(&format!("checkpoints/{chain_id}"))
}

fn checkpoint_from_row(row: &sqlx::postgres::PgRow) -> Result<StoredCheckpoint, StoreError> {
    let Json(tree_state) = row.try_get::<Json<serde_json::Value>, _>("tree_state")?;
    Ok(StoredCheckpoint {
        id: row.try_get("id")?,
        chain_id: row.try_get("chain_id")?,
        tree_size: row.try_get("tree_size")?,
        root_hash: row.try_get("root_hash")?,
        note: row.try_get("note")?,
        tree_state,
        created_at: row.try_get("created_at")?,
    })
}

/// Approval notifications. The trigger `events_notify_approval` (migration 0002) issues
/// `pg_notify('mcp_ledger_approvals', call_id)` for every approval event inserted, by any writer;
/// Postgres delivers it when (and only if) the inserting transaction commits, so neither append
/// path changes.
mod notify {
    use std::collections::HashMap;
    use std::sync::{Arc, LazyLock, Weak};
    use std::time::Duration;

    use async_trait::async_trait;
    use sqlx::PgPool;
    use sqlx::postgres::{PgListener, PgPoolOptions};
    use tokio::sync::broadcast::{self, error::RecvError};

    use crate::store::{ApprovalFeed, StoreError};

    const CHANNEL: &str = "mcp_ledger_approvals";

    /// How often a waiter re-reads the ledger without a notification: the safety net for
    /// notifications lost while the listening connection reconnects.
    const POLL_INTERVAL: Duration = Duration::from_secs(1);

    /// One LISTEN connection per database and process, shared by every waiter, outside the
    /// store's pool: a held call costs no connection of its own and never starves appends.
    struct Hub {
        wake: broadcast::Sender<()>,
        relay: tokio::task::JoinHandle<()>,
    }

    impl Drop for Hub {
        fn drop(&mut self) {
            // The last waiter is gone: close the listening connection.
            self.relay.abort();
        }
    }

    static HUBS: LazyLock<tokio::sync::Mutex<HashMap<String, Weak<Hub>>>> =
        LazyLock::new(Default::default);

    pub(super) async fn watch(pool: &PgPool) -> Result<Box<dyn ApprovalFeed>, StoreError> {
        match hub(pool).await {
            Ok(hub) => {
                let wake = hub.wake.subscribe();
                Ok(Box::new(NotifyFeed { _hub: hub, wake }))
            }
            // Without a listening connection (e.g. the server's connection limit), polling
            // still finds every decision, only later.
            Err(error) => {
                tracing::warn!(%error, "cannot listen for approval notifications; polling instead");
                Ok(Box::new(crate::store::PollFeed { interval: POLL_INTERVAL }))
            }
        }
    }

    async fn hub(pool: &PgPool) -> Result<Arc<Hub>, StoreError> {
        let options = pool.connect_options();
        let key = format!(
            "{}@{}:{}/{}",
            options.get_username(),
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default()
        );
        let mut hubs = HUBS.lock().await;
        if let Some(hub) = hubs.get(&key).and_then(Weak::upgrade) {
            return Ok(hub);
        }
        hubs.retain(|_, hub| hub.strong_count() > 0);
        let own_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with((*options).clone())
            .await?;
        let mut listener = PgListener::connect_with(&own_pool).await?;
        // LISTEN is in effect before anyone subscribes, so a waiter that subscribes and then
        // reads the ledger misses nothing committed after its read.
        listener.listen(CHANNEL).await?;
        let (wake, _) = broadcast::channel(16);
        let relay = tokio::spawn(relay(listener, wake.clone()));
        let hub = Arc::new(Hub { wake, relay });
        hubs.insert(key, Arc::downgrade(&hub));
        Ok(hub)
    }

    async fn relay(mut listener: PgListener, wake: broadcast::Sender<()>) {
        loop {
            match listener.try_recv().await {
                // A notification, or a lost connection that has been re-established (and may
                // have missed some): either way, waiters should look again.
                Ok(_) => {
                    let _ = wake.send(());
                }
                Err(error) => {
                    tracing::warn!(%error, "approval notifications are unavailable; waiters poll");
                    tokio::time::sleep(POLL_INTERVAL).await;
                }
            }
        }
    }

    struct NotifyFeed {
        _hub: Arc<Hub>,
        wake: broadcast::Receiver<()>,
    }

    #[async_trait]
    impl ApprovalFeed for NotifyFeed {
        async fn changed(&mut self, max: Duration) -> Result<(), StoreError> {
            let wait = POLL_INTERVAL.min(max);
            match tokio::time::timeout(wait, self.wake.recv()).await {
                Ok(Ok(())) | Ok(Err(RecvError::Lagged(_))) | Err(_) => {}
                // The relay is gone (it never ends on its own): fall back to polling.
                Ok(Err(RecvError::Closed)) => tokio::time::sleep(wait).await,
            }
            Ok(())
        }
    }
}
