//! The SQL store: sessions, hosts, observer runs, clock fits, flows, raw samples, observer stats,
//! gaps and analysis segments, in SQLite (default) or MySQL/MariaDB. See docs/storage.md.
//!
//! One [`Store`] value wraps a connection pool of either backend; every method has one SQL text
//! per dialect where they differ and binds every value (no SQL is built from data).
//! Writes that belong together (a batch of samples, its flows and stats) share one transaction,
//! and every insert is idempotent, so a batch delivered twice (collector restart, Redis
//! re-delivery, observer retry) is stored once.
mod bulk;
mod migrate;
pub mod model;
mod read;
mod url;
pub mod write;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use model::*;
pub use read::SampleCursor;
pub use url::{
    PASSWORD_ENV, PASSWORD_FILE_ENV, Secret, StoreUrl, password_from_env, read_password_file,
    redact,
};
pub use write::{WriteBatch, WriteOutcome};

/// Errors of the store, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid store URL {url}: {why}")]
    Url { url: String, why: String },
    #[error("failed to read the database password file {path}: {why}")]
    PasswordFile { path: PathBuf, why: String },
    #[error("failed to connect to the store at {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("failed to apply store migration {version} ({name}): {source}")]
    Migrate {
        version: i64,
        name: &'static str,
        source: sqlx::Error,
    },
    #[error("failed to {what}: {source}")]
    Query {
        what: &'static str,
        source: sqlx::Error,
    },
    #[error("{0}")]
    Invalid(String),
}

impl StoreError {
    /// Whether retrying the same operation later may succeed (the database went away, a lock
    /// timed out), as opposed to a bug or bad data.
    pub fn is_transient(&self) -> bool {
        let e = match self {
            StoreError::Query { source, .. } | StoreError::Connect { source, .. } => source,
            _ => return false,
        };
        match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => {
                // SQLite busy/locked; MySQL lock wait timeout, deadlock, server gone, read-only.
                let code = db.code().unwrap_or_default();
                matches!(
                    code.as_ref(),
                    "5" | "6" | "261" | "517" | "1205" | "1213" | "2006" | "2013" | "1290"
                ) || db.message().contains("Lost connection")
            }
            _ => false,
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

pub(crate) fn q(what: &'static str) -> impl FnOnce(sqlx::Error) -> StoreError {
    move |source| StoreError::Query { what, source }
}

#[derive(Debug, Clone)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    MySql(MySqlPool),
}

/// Runs `$body` with `$p` bound to the concrete pool, so one piece of code serves both backends
/// while each expansion is type-checked against its own driver.
macro_rules! on_pool {
    ($store:expr, $p:ident => $body:expr) => {
        match &$store.pool {
            $crate::store::Pool::Sqlite($p) => $body,
            $crate::store::Pool::MySql($p) => $body,
        }
    };
}
pub(crate) use on_pool;

/// Which SQL dialect a store speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    MySql,
}

/// A handle on the store; cheap to clone (it is a pool).
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) pool: Pool,
    url: StoreUrl,
    /// Connections a large MySQL batch is spread over (1 or 2).
    pub(crate) mysql_writers: usize,
    /// How sample rows are bound in MySQL statements.
    pub(crate) mysql_samples: SampleEncoding,
    /// Rows per MySQL JSON statement (fits the server's `max_allowed_packet`).
    pub(crate) mysql_json_rows: usize,
    /// The server's `max_allowed_packet` (0 for SQLite).
    max_packet: u64,
}

/// How a MySQL/MariaDB sample insert carries its rows (SQLite always binds per value).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SampleEncoding {
    /// `VALUES (?, …), …`: one bound parameter per value.
    BoundRows,
    /// One bound JSON array of the rows, unpacked by the server with `JSON_TABLE`.
    Json,
}

/// Rows per JSON statement unless the packet limit asks for fewer.
const JSON_ROWS: usize = 10_000;

impl Store {
    /// Connects to `url`, taking a MySQL password from the environment ([`password_from_env`]),
    /// and applies pending migrations.
    pub async fn open(url: &str) -> Result<Store> {
        let parsed: StoreUrl = url.parse()?;
        let password = match parsed {
            StoreUrl::MySql { .. } => password_from_env()?,
            _ => None,
        };
        Store::open_with(parsed, password).await
    }

    /// Connects with an explicit password (or none) and applies pending migrations.
    pub async fn open_with(url: StoreUrl, password: Option<Secret>) -> Result<Store> {
        let shown = url.to_string();
        let connect_err = |source| StoreError::Connect {
            url: shown.clone(),
            source,
        };
        let pool = match &url {
            StoreUrl::SqliteFile(path) => {
                let opts = sqlite_options(
                    SqliteConnectOptions::new()
                        .filename(path)
                        .create_if_missing(true),
                );
                // One writer at a time is how SQLite works; extra connections serve readers in WAL.
                Pool::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(4)
                        .connect_with(opts)
                        .await
                        .map_err(connect_err)?,
                )
            }
            StoreUrl::SqliteMemory => {
                let opts = sqlite_options(
                    SqliteConnectOptions::from_str("sqlite::memory:").map_err(connect_err)?,
                );
                // Each connection to :memory: is its own database: keep exactly one, forever.
                Pool::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(1)
                        .min_connections(1)
                        .idle_timeout(None)
                        .max_lifetime(None)
                        .connect_with(opts)
                        .await
                        .map_err(connect_err)?,
                )
            }
            StoreUrl::MySql { url: u } => {
                let mut opts = MySqlConnectOptions::from_str(u).map_err(connect_err)?;
                if let Some(p) = &password {
                    opts = opts.password(p.expose());
                }
                Pool::MySql(
                    MySqlPoolOptions::new()
                        .max_connections(4)
                        .acquire_timeout(Duration::from_secs(5))
                        .connect_with(opts)
                        .await
                        .map_err(connect_err)?,
                )
            }
        };
        let max_packet = match &pool {
            Pool::MySql(p) => sqlx::query_scalar::<_, u64>("SELECT @@max_allowed_packet")
                .fetch_one(p)
                .await
                .map_err(q("read the server's max_allowed_packet"))?,
            Pool::Sqlite(_) => 0,
        };
        let store = Store {
            pool,
            url,
            mysql_writers: 2,
            mysql_samples: SampleEncoding::BoundRows,
            mysql_json_rows: bulk::rows_per_statement(max_packet, JSON_ROWS),
            max_packet,
        };
        migrate::run(&store).await?;
        Ok(store)
    }

    /// Chooses how MySQL sample inserts carry their rows, and how many rows a JSON statement
    /// holds at most (`None`: the default; always capped by the server's packet limit).
    pub fn with_sample_encoding(mut self, e: SampleEncoding, json_rows: Option<usize>) -> Store {
        self.mysql_samples = e;
        self.mysql_json_rows =
            bulk::rows_per_statement(self.max_packet, json_rows.unwrap_or(JSON_ROWS));
        self
    }

    /// Spreads large MySQL batches over `n` connections (1 or 2; default 2). More connections let
    /// the server use more cores; on a busy 2-core host one may do as well. SQLite always writes
    /// from one connection.
    pub fn with_mysql_writers(mut self, n: usize) -> Store {
        self.mysql_writers = n.clamp(1, 2);
        self
    }

    pub fn backend(&self) -> Backend {
        match self.pool {
            Pool::Sqlite(_) => Backend::Sqlite,
            Pool::MySql(_) => Backend::MySql,
        }
    }

    /// The store's URL, without any password (safe to print).
    pub fn url(&self) -> &StoreUrl {
        &self.url
    }

    /// `INSERT OR IGNORE` (SQLite) / `INSERT IGNORE` (MySQL).
    pub(crate) fn insert_ignore(&self) -> &'static str {
        match self.backend() {
            Backend::Sqlite => "INSERT OR IGNORE",
            Backend::MySql => "INSERT IGNORE",
        }
    }

    /// Closes every connection (waits for checked-out ones).
    pub async fn close(&self) {
        on_pool!(self, p => p.close().await)
    }
}

/// Pragmas for a write-heavy single-writer workload: WAL so readers never block the writer,
/// NORMAL sync (durable at checkpoints, safe against application crashes), a large page cache.
fn sqlite_options(o: SqliteConnectOptions) -> SqliteConnectOptions {
    o.journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(Duration::from_secs(10))
        .pragma("cache_size", "-131072")
        .pragma("temp_store", "memory")
        .pragma("mmap_size", "268435456")
        .pragma("wal_autocheckpoint", "10000")
}

pub(crate) fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod tests;
