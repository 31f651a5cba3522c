//! The connection a store appends through, held from one append to the next.
//!
//! A pooled connection costs the append path two more round trips per commit: sqlx pings a
//! connection when it is taken from the pool and again when it is returned (for Postgres a
//! network round trip that wakes the backend; for SQLite a hop to the connection's worker
//! thread). The writer appends one batch at a time, so one connection kept open serves it.

use std::time::{Duration, Instant};

use sqlx::{ConnectOptions, Connection};

use super::StoreError;

/// A held connection unused for longer than this is pinged before an append, so that one closed
/// while the proxy was quiet (a server restart) is replaced instead of failing a call.
const IDLE_PING: Duration = Duration::from_secs(1);

pub(super) struct HeldConnection<C: Connection> {
    options: C::Options,
    connect_timeout: Duration,
    open: Option<(C, Instant)>,
}

impl<C: Connection> HeldConnection<C> {
    pub(super) fn new(options: C::Options, connect_timeout: Duration) -> Self {
        HeldConnection { options, connect_timeout, open: None }
    }

    /// The open connection, checked first if it sat unused for a while; or a new one.
    pub(super) async fn get(&mut self) -> Result<&mut C, StoreError> {
        if let Some((conn, last_used)) = &mut self.open
            && last_used.elapsed() > IDLE_PING
            && conn.ping().await.is_err()
        {
            self.open = None;
        }
        if self.open.is_none() {
            let conn = tokio::time::timeout(self.connect_timeout, self.options.connect())
                .await
                .map_err(|_| StoreError::Timeout(self.connect_timeout))??;
            self.open = Some((conn, Instant::now()));
        }
        let (conn, last_used) = self.open.as_mut().expect("opened above");
        *last_used = Instant::now();
        Ok(conn)
    }

    /// Drops the connection after a failed append: it may be the connection that failed.
    pub(super) fn discard(&mut self) {
        self.open = None;
    }

    pub(super) async fn close(&mut self) {
        if let Some((conn, _)) = self.open.take() {
            let _ = conn.close().await;
        }
    }
}
