//! The connection a store appends through, held from one append to the next, and the appends
//! whose outcome is unknown.
//!
//! A pooled connection costs the append path two more round trips per commit: sqlx pings a
//! connection when it is taken from the pool and again when it is returned (for Postgres a
//! network round trip that wakes the backend; for SQLite a hop to the connection's worker
//! thread). The writer appends one batch at a time, so one connection kept open serves it.
//!
//! An append that fails, or is abandoned mid-way (the writer's commit timeout drops it), may
//! still commit: Postgres finishes a statement it has received whether or not the client is
//! still there to hear the answer, and SQLite's worker thread runs every command already queued
//! to it. Its connection is therefore not thrown away but kept as [`Unsettled`], with the
//! database's id for it, until the store settles it (`Store::settle`): waits until nothing sent
//! through it can still commit, then looks at what did.

use std::time::{Duration, Instant};

use sqlx::{ConnectOptions, Connection, PgConnection, Pool, SqliteConnection};
use tokio::sync::Mutex;

use super::StoreError;

/// A held connection unused for longer than this is pinged before an append, so that one closed
/// while the proxy was quiet (a server restart) is replaced instead of failing a call.
const IDLE_PING: Duration = Duration::from_secs(1);

/// How many unsettled connections are kept before the oldest is let go. The writer settles
/// after every failed batch, so more than one only piles up when appends outside the writer
/// fail; the bound keeps those from holding connections open for ever.
const MAX_UNSETTLED: usize = 4;

/// The database's own name for the session behind a connection: enough to end that session
/// from another connection, and to tell it from a later session that reuses its process id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct BackendId {
    pub pid: i32,
    /// `pg_stat_activity.backend_start`, as text.
    pub started: String,
}

/// A connection an append can go through: it can name its server-side session, if it has one.
pub(super) trait AppendConnection: Connection {
    fn backend_id(&mut self)
    -> impl Future<Output = Result<Option<BackendId>, sqlx::Error>> + Send;
}

impl AppendConnection for PgConnection {
    async fn backend_id(&mut self) -> Result<Option<BackendId>, sqlx::Error> {
        let (pid, started): (i32, String) = sqlx::query_as(
            "SELECT pid, backend_start::text FROM pg_stat_activity WHERE pid = pg_backend_pid()",
        )
        .fetch_one(self)
        .await?;
        Ok(Some(BackendId { pid, started }))
    }
}

impl AppendConnection for SqliteConnection {
    /// SQLite runs in this process: its "session" is the connection's worker thread, which
    /// settling waits for by closing the connection.
    async fn backend_id(&mut self) -> Result<Option<BackendId>, sqlx::Error> {
        Ok(None)
    }
}

/// The connection of an append whose outcome is unknown.
pub(super) struct Unsettled<C> {
    pub conn: C,
    pub backend: Option<BackendId>,
}

struct Held<C> {
    conn: C,
    backend: Option<BackendId>,
    last_used: Instant,
}

pub(super) struct HeldConnection<C: AppendConnection> {
    options: C::Options,
    connect_timeout: Duration,
    open: Mutex<Option<Held<C>>>,
    unsettled: std::sync::Mutex<Vec<Unsettled<C>>>,
}

/// Hands the connection of an append that did not succeed — because it failed, or because its
/// future was dropped mid-way — to the unsettled list; disarmed by taking the connection back.
struct InFlight<'a, C: AppendConnection> {
    owner: &'a HeldConnection<C>,
    held: Option<Held<C>>,
}

impl<C: AppendConnection> Drop for InFlight<'_, C> {
    fn drop(&mut self) {
        if let Some(Held { conn, backend, .. }) = self.held.take() {
            let mut unsettled = self.owner.unsettled.lock().expect("lock");
            if unsettled.len() == MAX_UNSETTLED {
                tracing::warn!("letting go of an unsettled ledger connection; more are waiting");
                unsettled.remove(0);
            }
            unsettled.push(Unsettled { conn, backend });
        }
    }
}

impl<C: AppendConnection> HeldConnection<C> {
    pub(super) fn new(options: C::Options, connect_timeout: Duration) -> Self {
        HeldConnection {
            options,
            connect_timeout,
            open: Mutex::new(None),
            unsettled: std::sync::Mutex::default(),
        }
    }

    /// Runs `append` on the held connection, or, while another append is using it (another
    /// chain's writer, or an append outside the writer), on one taken out of `pool`. The
    /// connection of an append that fails or is dropped before it finished becomes
    /// [`Unsettled`]; a new one is opened for the next append.
    pub(super) async fn append<T>(
        &self,
        pool: &Pool<C::Database>,
        append: impl AsyncFnOnce(&mut C) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let Ok(mut open) = self.open.try_lock() else {
            // Detached so that, like the held one, it can be settled if the append fails. It is
            // closed afterwards either way: the pool opens a new one when it needs one.
            let mut conn = pool.acquire().await?.detach();
            let backend = conn.backend_id().await?;
            let held = Held { conn, backend, last_used: Instant::now() };
            let (appended, held) = self.watched(held, append).await;
            if let Some(held) = held {
                let _ = held.conn.close().await;
            }
            return appended;
        };
        let held = self.ready(open.take()).await?;
        let (appended, held) = self.watched(held, append).await;
        *open = held;
        appended
    }

    /// Runs `append` on `held`; gives the connection back only if it succeeded.
    async fn watched<T>(
        &self,
        held: Held<C>,
        append: impl AsyncFnOnce(&mut C) -> Result<T, StoreError>,
    ) -> (Result<T, StoreError>, Option<Held<C>>) {
        let mut in_flight = InFlight { owner: self, held: Some(held) };
        let conn = &mut in_flight.held.as_mut().expect("just put there").conn;
        let appended = append(conn).await;
        let held = if appended.is_ok() { in_flight.held.take() } else { None };
        (appended, held)
    }

    /// `open` if it is usable (checked first if it sat unused for a while), or a new connection.
    async fn ready(&self, open: Option<Held<C>>) -> Result<Held<C>, StoreError> {
        let mut open = open;
        if let Some(held) = &mut open
            && held.last_used.elapsed() > IDLE_PING
            && held.conn.ping().await.is_err()
        {
            open = None;
        }
        let mut held = match open {
            Some(held) => held,
            None => {
                let connect = async {
                    let mut conn = self.options.connect().await?;
                    let backend = conn.backend_id().await?;
                    Ok::<_, sqlx::Error>(Held { conn, backend, last_used: Instant::now() })
                };
                tokio::time::timeout(self.connect_timeout, connect)
                    .await
                    .map_err(|_| StoreError::Timeout(self.connect_timeout))??
            }
        };
        held.last_used = Instant::now();
        Ok(held)
    }

    /// The connections of appends whose outcome is unknown, oldest first, for the caller to
    /// settle; `None` when there are none: an append that failed without one never had a
    /// connection, so it sent nothing.
    pub(super) fn take_unsettled(&self) -> Option<Vec<Unsettled<C>>> {
        let unsettled = std::mem::take(&mut *self.unsettled.lock().expect("lock"));
        (!unsettled.is_empty()).then_some(unsettled)
    }

    pub(super) async fn close(&self) {
        if let Some(held) = self.open.lock().await.take() {
            let _ = held.conn.close().await;
        }
        for unsettled in self.take_unsettled().unwrap_or_default() {
            let _ = unsettled.conn.close().await;
        }
    }
}
