//! The benchmark's scratch Postgres databases: created fresh for one run, so the proxied modes
//! start from an empty chain like the SQLite ones, and dropped at the end; and the server-side
//! counters read about them (commits, backends), always through the admin database so that the
//! reading adds no transaction to the database being measured.

use std::time::Duration;

use anyhow::Context;
use sqlx::postgres::{PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Executor};

use crate::store::redact_password;

/// How long reaching the server may take before Postgres counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A database created for this run.
#[derive(Debug)]
pub struct ScratchDatabase {
    admin_url: String,
    pub name: String,
    /// The ledger URL of the scratch database (the admin URL with its database replaced).
    pub url: String,
    /// The server's version and durability settings, so a reader knows what "commit" meant.
    pub server: String,
}

impl ScratchDatabase {
    /// Connects with `admin_url` and creates an empty database with a random name.
    pub async fn create(admin_url: &str) -> anyhow::Result<ScratchDatabase> {
        let mut admin = connect(admin_url).await?;
        let name = format!("mcp_ledger_bench_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        admin
            .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .with_context(|| format!("cannot create the scratch database {name}"))?;
        let server = describe_server(&mut admin).await;
        // Closing is best effort: the database exists either way.
        let _ = admin.close().await;
        Ok(ScratchDatabase {
            admin_url: admin_url.to_owned(),
            url: with_database(admin_url, &name)?,
            name,
            server,
        })
    }

    /// A reader of this database's counters, connected to the admin database.
    pub async fn probe(&self) -> anyhow::Result<PgProbe> {
        let admin = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect(&self.admin_url)
            .await
            .with_context(|| {
                format!("cannot connect to postgres at {}", redact_password(&self.admin_url))
            })?;
        Ok(PgProbe { admin, database: self.name.clone() })
    }

    /// Drops the database, disconnecting anything still connected to it.
    pub async fn drop_database(self) -> anyhow::Result<()> {
        let mut admin = connect(&self.admin_url).await?;
        admin
            .execute(format!(r#"DROP DATABASE IF EXISTS "{}" WITH (FORCE)"#, self.name).as_str())
            .await
            .with_context(|| format!("cannot drop the scratch database {}", self.name))?;
        let _ = admin.close().await;
        Ok(())
    }
}

/// Server-side counters of one database.
pub struct PgProbe {
    admin: PgPool,
    database: String,
}

impl PgProbe {
    /// Transactions committed in the database so far (`pg_stat_database.xact_commit`). A backend
    /// reports its counts when it goes idle (at most once a second) and when it exits, so the
    /// difference is exact only between moments when no backend of the database is active: read
    /// it before the proxies connect and after [`PgProbe::wait_disconnected`].
    pub async fn xact_commit(&self) -> anyhow::Result<i64> {
        // Each query runs in its own transaction, so it sees a fresh statistics snapshot.
        let commits: Option<i64> =
            sqlx::query_scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = $1")
                .bind(&self.database)
                .fetch_optional(&self.admin)
                .await
                .context("cannot read pg_stat_database")?;
        Ok(commits.unwrap_or(0))
    }

    /// The process ids of the backends serving the database, to read their CPU time.
    pub async fn backend_pids(&self) -> anyhow::Result<Vec<u32>> {
        let pids: Vec<i32> =
            sqlx::query_scalar("SELECT pid FROM pg_stat_activity WHERE datname = $1")
                .bind(&self.database)
                .fetch_all(&self.admin)
                .await
                .context("cannot read pg_stat_activity")?;
        Ok(pids.into_iter().filter_map(|pid| u32::try_from(pid).ok()).collect())
    }

    /// Waits until no backend serves the database (the proxies' connections have closed and their
    /// backends have exited, so their statistics are flushed).
    pub async fn wait_disconnected(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.backend_pids().await?.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "connections to the scratch database {} were still open after {timeout:?}",
                    self.database
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn close(&self) {
        self.admin.close().await;
    }
}

async fn connect(url: &str) -> anyhow::Result<PgConnection> {
    let shown = redact_password(url);
    tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect(url))
        .await
        .with_context(|| format!("postgres at {shown} did not answer within {CONNECT_TIMEOUT:?}"))?
        .with_context(|| format!("cannot connect to postgres at {shown}"))
}

/// `PostgreSQL 15.4, synchronous_commit=on, fsync=on`, or what of it could be read.
async fn describe_server(conn: &mut PgConnection) -> String {
    let mut parts = Vec::new();
    for setting in ["server_version", "synchronous_commit", "fsync"] {
        let value: Result<String, _> =
            sqlx::query_scalar(&format!("SHOW {setting}")).fetch_one(&mut *conn).await;
        if let Ok(value) = value {
            parts.push(match setting {
                // `15.4 (Debian 15.4-1)`: the distribution's suffix is noise here.
                "server_version" => {
                    let version = value.split_whitespace().next().unwrap_or_default();
                    format!("PostgreSQL {version}")
                }
                _ => format!("{setting}={value}"),
            });
        }
    }
    parts.join(", ")
}

/// `url` with its database (the path) replaced by `database`, keeping user, host and parameters.
fn with_database(url: &str, database: &str) -> anyhow::Result<String> {
    let (scheme, rest) = url
        .split_once("://")
        .with_context(|| format!("not a postgres url: {}", redact_password(url)))?;
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let authority = before_query.split_once('/').map_or(before_query, |(authority, _)| authority);
    let query = query.map(|q| format!("?{q}")).unwrap_or_default();
    Ok(format!("{scheme}://{authority}/{database}{query}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_and_keeps_everything_else() {
        let cases = [
            ("postgres://postgres@127.0.0.1:5432/postgres", "postgres://postgres@127.0.0.1:5432/b"),
            ("postgres://u:p@h/db?sslmode=disable", "postgres://u:p@h/b?sslmode=disable"),
            ("postgresql://u@h:5432", "postgresql://u@h:5432/b"),
            ("postgres://u@h?application_name=x", "postgres://u@h/b?application_name=x"),
        ];
        for (admin, expected) in cases {
            assert_eq!(with_database(admin, "b").expect(admin), expected);
        }
    }

    #[test]
    fn a_url_without_a_scheme_is_an_error_naming_it() {
        let error = with_database("127.0.0.1:5432", "b").expect_err("no scheme");
        assert!(format!("{error:#}").contains("not a postgres url: 127.0.0.1:5432"), "{error:#}");
    }
}
