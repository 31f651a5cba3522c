//! Shared test fixtures: fresh ledgers on both stores, and the binary under test.
//!
//! Postgres tests use a real server: `DATABASE_URL` names an admin connection (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), and each test gets a database of its own that
//! is dropped afterwards. When Postgres cannot be reached the test is skipped with a note, unless
//! `MCP_LEDGER_REQUIRE_POSTGRES=1` (as CI sets), which turns that into a failure.
#![allow(dead_code)]

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use mcp_ledger::store::{self, LedgerUrl, Store, StoreOptions};
use sqlx::ConnectOptions;
use sqlx::postgres::PgConnectOptions;

pub const BIN: &str = env!("CARGO_BIN_EXE_mcp-ledger");

const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub fn admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

fn postgres_required() -> bool {
    std::env::var("MCP_LEDGER_REQUIRE_POSTGRES").is_ok_and(|v| v == "1" || v == "true")
}

/// The store at `url` (as `mcp-ledger` would open it: migrating if the role may).
pub async fn open_url(url: &str) -> Arc<dyn Store> {
    let parsed = LedgerUrl::parse(url).expect("a ledger url");
    store::open(&parsed, &StoreOptions::default()).await.expect("open the ledger")
}

/// A fresh, empty ledger that is removed when dropped.
pub struct TestLedger {
    pub url: LedgerUrl,
    guard: Guard,
}

enum Guard {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres { admin: String, database: String },
}

impl TestLedger {
    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("ledger.db");
        TestLedger { url: LedgerUrl::Sqlite(path), guard: Guard::Sqlite(dir) }
    }

    /// A fresh Postgres database, or `None` (with a note on stderr) when Postgres is unavailable
    /// and not required.
    pub async fn postgres() -> Option<Self> {
        let admin = admin_url();
        let connect = match PgConnectOptions::from_str(&admin) {
            Ok(options) => options.connect().await,
            Err(e) => Err(e),
        };
        let mut conn = match connect {
            Ok(conn) => conn,
            Err(error) => {
                if postgres_required() {
                    panic!(
                        "Postgres is required (MCP_LEDGER_REQUIRE_POSTGRES=1) but {admin} is unreachable: {error}"
                    );
                }
                eprintln!("note: skipping a Postgres test: {admin} is unreachable ({error})");
                return None;
            }
        };
        let database = format!("mcp_ledger_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {database}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let mut options = PgConnectOptions::from_str(&admin).expect("admin url parses");
        options = options.database(&database);
        let url = pg_url(&options, &database);
        Some(TestLedger {
            url: LedgerUrl::Postgres(url),
            guard: Guard::Postgres { admin, database },
        })
    }

    pub fn url_string(&self) -> String {
        self.url.to_string()
    }

    pub fn sqlite_path(&self) -> Option<PathBuf> {
        match &self.url {
            LedgerUrl::Sqlite(path) => Some(path.clone()),
            LedgerUrl::Postgres(_) => None,
        }
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.url, LedgerUrl::Postgres(_))
    }

    pub async fn open(&self) -> Arc<dyn Store> {
        store::open(&self.url, &StoreOptions::default()).await.expect("open test ledger")
    }

    /// Runs raw SQL against the ledger as its owner (a superuser in Postgres): what an attacker
    /// with database access can do, triggers and constraints included.
    pub async fn exec_as_owner(&self, sql: &str) -> Result<(), sqlx::Error> {
        match &self.url {
            LedgerUrl::Sqlite(path) => {
                let mut conn =
                    sqlx::sqlite::SqliteConnectOptions::new().filename(path).connect().await?;
                sqlx::raw_sql(sql).execute(&mut conn).await?;
            }
            LedgerUrl::Postgres(url) => {
                let mut conn = PgConnectOptions::from_str(url)?.connect().await?;
                sqlx::raw_sql(sql).execute(&mut conn).await?;
            }
        }
        Ok(())
    }

    /// The Postgres ledger's URL for `role`, a login role in `mcp_ledger_writer` (created if it
    /// is not there yet; the ledger must be migrated). The roles are per server, not per
    /// database, so tests that share a name share the role.
    pub async fn writer_role_url(&self, role: &str) -> String {
        self.exec_as_owner(&format!(
            "DO $$ BEGIN CREATE ROLE {role} LOGIN IN ROLE mcp_ledger_writer; \
             EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$;"
        ))
        .await
        .expect("create the writer role");
        let url =
            self.url_string().replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
        assert!(url.contains(role), "the test expects the admin user to be `postgres`: {url}");
        url
    }

    /// Every byte the database holds: the SQLite file with its journal files, or a `pg_dump`
    /// of the Postgres database. What a search of "the whole database" searches.
    pub fn stored_bytes(&self) -> Vec<u8> {
        match &self.url {
            LedgerUrl::Sqlite(path) => ["", "-wal", "-shm", "-journal"]
                .iter()
                .filter_map(|suffix| std::fs::read(format!("{}{suffix}", path.display())).ok())
                .flatten()
                .collect(),
            LedgerUrl::Postgres(url) => {
                let output =
                    std::process::Command::new("pg_dump").arg(url).output().expect("run pg_dump");
                assert!(
                    output.status.success(),
                    "pg_dump: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                output.stdout
            }
        }
    }

    /// The table name to use in raw SQL.
    pub fn events_table(&self) -> &'static str {
        if self.is_postgres() { "mcp_ledger.events" } else { "events" }
    }
}

fn pg_url(options: &PgConnectOptions, database: &str) -> String {
    let user = options.get_username();
    let host = options.get_host();
    let port = options.get_port();
    format!("postgres://{user}@{host}:{port}/{database}")
}

impl Drop for TestLedger {
    fn drop(&mut self) {
        if let Guard::Postgres { admin, database } = &self.guard {
            let (admin, database) = (admin.clone(), database.clone());
            // Drop runs inside the test's runtime, which cannot block on itself.
            let _ = std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
                if let Ok(runtime) = runtime {
                    runtime.block_on(async {
                        if let Ok(mut conn) =
                            PgConnectOptions::from_str(&admin).expect("parses").connect().await
                        {
                            let _ = sqlx::query(&format!(
                                "DROP DATABASE IF EXISTS {database} WITH (FORCE)"
                            ))
                            .execute(&mut conn)
                            .await;
                        }
                    });
                }
            })
            .join();
        }
    }
}

/// Whether `needle` occurs in `haystack`, byte for byte.
pub fn contains_bytes(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

/// Runs `mcp-ledger` with `args` and returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(BIN).args(args).output().expect("run mcp-ledger");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

pub mod chaos;
pub mod stdio_client;
