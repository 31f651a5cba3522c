//! The connection a store appends through, held from one append to the next.
//!
//! A pooled connection costs the append path two more round trips per commit: sqlx pings a
//! connection when it is taken from the pool and again when it is returned (for Postgres a
//! network round trip that wakes the backend; for SQLite a hop to the connection's worker
//! thread). The writer appends one batch at a time, so one connection kept open serves it.

use std::time::{Duration, Instant};

use sqlx::{ConnectOptions, Connection, Pool};
use tokio::sync::Mutex;

use super::StoreError;

/// A held connection unused for longer than this is pinged before an append, so that one closed
/// while the proxy was quiet (a server restart) is replaced instead of failing a call.
const IDLE_PING: Duration = Duration::from_secs(1);

pub(super) struct HeldConnection<C: Connection> {
    options: C::Options,
    connect_timeout: Duration,
    open: Mutex<Option<(C, Instant)>>,
}

impl<C: Connection> HeldConnection<C> {
    pub(super) fn new(options: C::Options, connect_timeout: Duration) -> Self {
        HeldConnection { options, connect_timeout, open: Mutex::new(None) }
    }

    /// Runs `append` on the held connection, or, while another chain's writer is using it, on
    /// one from `pool`. A failed append drops the held connection: it may be what failed.
    pub(super) async fn append<T>(
        &self,
        pool: &Pool<C::Database>,
        append: impl AsyncFnOnce(&mut C) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let Ok(mut open) = self.open.try_lock() else {
            return append(&mut *pool.acquire().await?).await;
        };
        let appended = append(self.ready(&mut open).await?).await;
        if appended.is_err() {
            *open = None;
        }
        appended
    }

    /// The open connection, checked first if it sat unused for a while; or a new one.
    async fn ready<'a>(&self, open: &'a mut Option<(C, Instant)>) -> Result<&'a mut C, StoreError> {
        if let Some((conn, last_used)) = open
            && last_used.elapsed() > IDLE_PING
            && conn.ping().await.is_err()
        {
            *open = None;
        }
        if open.is_none() {
            let conn = tokio::time::timeout(self.connect_timeout, self.options.connect())
                .await
                .map_err(|_| StoreError::Timeout(self.connect_timeout))??;
            *open = Some((conn, Instant::now()));
        }
        let (conn, last_used) = open.as_mut().expect("opened above");
        *last_used = Instant::now();
        Ok(conn)
    }

    pub(super) async fn close(&self) {
        if let Some((conn, _)) = self.open.lock().await.take() {
            let _ = conn.close().await;
        }
    }
}
