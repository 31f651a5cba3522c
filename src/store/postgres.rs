//! The Postgres store, for production and for many proxies sharing one ledger.
//!
//! Appends serialise per chain on a transaction-scoped advisory lock, taken before the head is
//! read, so any number of processes extend one chain in one total order. The lock needs no UPDATE
//! privilege (a `SELECT … FOR UPDATE` on a head row would), which lets the proxy run as the
//! insert-only `mcp_ledger_writer` role.

use std::str::FromStr;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::types::Json;
use sqlx::{PgPool, QueryBuilder, Row};

use super::{ProvenanceRow, Store, StoreError, StoreOptions, seal_after};
use crate::record::{Draft, Event};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("src/store/migrations/postgres");

/// Postgres allows 65,535 bound parameters per statement; 11 columns a row.
const MAX_ROWS_PER_INSERT: usize = 5_000;

pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let timeout_ms = options.lock_timeout.as_millis().to_string();
        let connect = PgConnectOptions::from_str(url)?
            .application_name("mcp-ledger")
            // A lock or statement that waits longer than this fails the append, and the call it
            // records fails closed instead of hanging the agent.
            .options([("lock_timeout", timeout_ms.as_str()), ("statement_timeout", &timeout_ms)]);
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(options.lock_timeout)
            .connect_with(connect)
            .await?;
        let store = PostgresStore { pool };
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
    async fn append(&self, chain_id: &str, drafts: &[Draft]) -> Result<Vec<Event>, StoreError> {
        let mut tx = self.pool.begin().await?;
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
        let events = seal_after(chain_id, head, drafts)?;

        for chunk in events.chunks(MAX_ROWS_PER_INSERT) {
            let mut insert = QueryBuilder::new(
                "INSERT INTO mcp_ledger.events (chain_id, seq, event_id, event_type, \"timestamp\", \
                 session_id, agent, server, data, prev_hash, hash) ",
            );
            insert.push_values(chunk, |mut row, e| {
                row.push_bind(&e.chain_id)
                    .push_bind(e.seq)
                    .push_bind(&e.event_id)
                    .push_bind(&e.event_type)
                    .push_bind(&e.timestamp)
                    .push_bind(&e.session_id)
                    .push_bind(&e.agent)
                    .push_bind(&e.server)
                    .push_bind(Json(&e.data))
                    .push_bind(&e.prev_hash)
                    .push_bind(&e.hash);
            });
            insert.build().execute(&mut *tx).await?;
        }

        let payloads: Vec<_> = drafts.iter().flat_map(|d| &d.payloads).collect();
        if !payloads.is_empty() {
            let mut insert =
                QueryBuilder::new("INSERT INTO mcp_ledger.payloads (reference, body, size) ");
            insert.push_values(&payloads, |mut row, p| {
                row.push_bind(&p.reference).push_bind(&p.body).push_bind(p.size() as i64);
            });
            insert.push(" ON CONFLICT (reference) DO NOTHING");
            insert.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(events)
    }

    fn events(&self) -> BoxStream<'_, Result<Event, StoreError>> {
        sqlx::query(
            "SELECT chain_id, seq, event_id, event_type, \"timestamp\", session_id, agent, server, \
             data, prev_hash, hash FROM mcp_ledger.events ORDER BY chain_id, seq, event_id",
        )
        .fetch(&self.pool)
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
        Ok(MIGRATOR.run(&self.pool).await?)
    }

    async fn close(&self) {
        self.pool.close().await;
    }
}
