//! The database: SQLite by default (a file in the data directory, WAL), PostgreSQL for
//! production and several hosts on one database. One code path serves both through sqlx's
//! `Any` driver; the SQL is the common subset (`$n` parameters, no `FOR UPDATE`), and the only
//! per-backend files are the migrations in `migrations/sqlite` and `migrations/postgres`.
//!
//! Concurrency: on PostgreSQL, writers lock the rows they change in a fixed order. SQLite has a
//! single writer anyway, so its write pool has one connection and write transactions begin
//! `IMMEDIATE` ([`Db::begin`]): they queue instead of failing with `SQLITE_BUSY`. Reads outside
//! transactions go to [`Db::reader`], a few read-only connections (WAL lets them read while
//! the writer writes), so they do not wait behind the writer.
//!
//! Durability: SQLite runs with `synchronous = NORMAL` in WAL mode — a process crash loses
//! nothing; a power loss can lose the last transactions committed before it.

use std::time::Duration;

use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

/// Which database is behind a [`Db`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// A connection pool and the backend behind it.
#[derive(Debug, Clone)]
pub struct Db {
    pool: AnyPool,
    /// SQLite only: read-only connections for statements outside transactions, so reads do
    /// not queue behind the one writer. `None` on PostgreSQL (its pool serves both) and for an
    /// in-memory SQLite database (other connections would see another database).
    readers: Option<AnyPool>,
    backend: Backend,
    url: Url,
}

/// The database URL, kept for connections outside the pool (PostgreSQL's LISTEN). It may hold
/// a password, so it never shows in debug output.
#[derive(Clone)]
struct Url(std::sync::Arc<str>);

impl std::fmt::Debug for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Url(..)")
    }
}

/// `$from, $from+1, …` — `count` numbered parameters for an `IN (…)` list or a `VALUES` row.
pub(crate) fn params(from: usize, count: usize) -> String {
    (from..from + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `($from, …), (…), …` — `rows` parenthesised groups of `width` numbered parameters.
pub(crate) fn param_rows(from: usize, rows: usize, width: usize) -> String {
    (0..rows)
        .map(|r| format!("({})", params(from + r * width, width)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Binds a list of values in order, for statements built with [`params`] or [`param_rows`].
pub(crate) trait BindEach<'q>: Sized {
    /// Binds every value of `values`, in order.
    fn bind_each<T, I>(self, values: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: 'q + sqlx::Encode<'q, sqlx::Any> + sqlx::Type<sqlx::Any>;
}

impl<'q> BindEach<'q> for sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    fn bind_each<T, I>(mut self, values: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: 'q + sqlx::Encode<'q, sqlx::Any> + sqlx::Type<sqlx::Any>,
    {
        for value in values {
            self = self.bind(value);
        }
        self
    }
}

/// Read-only SQLite connections (each is a thread in sqlx's driver).
const SQLITE_READERS: u32 = 4;

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

impl Db {
    /// Connects to `url` (`sqlite://path/to/file.db` or `postgres://…`), creating a SQLite
    /// file if there is none.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            anyhow::bail!("unsupported database URL {url:?}: use sqlite:// or postgres://");
        };
        let url = match backend {
            Backend::Sqlite if !url.contains("mode=") => {
                let sep = if url.contains('?') { '&' } else { '?' };
                format!("{url}{sep}mode=rwc")
            }
            _ => url.to_owned(),
        };
        let options: AnyConnectOptions = url.parse().context("parsing the database URL")?;
        let writer = match backend {
            Backend::Sqlite => {
                AnyPoolOptions::new()
                    .max_connections(1)
                    // An embedded file cannot go away under us, and the ping before each
                    // acquire is a round trip through sqlx's SQLite worker thread: on a
                    // checkout of some eighty statements, profiling showed those hand-offs,
                    // not SQLite, to be where the time goes.
                    .test_before_acquire(false)
                    .acquire_timeout(Duration::from_secs(30))
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            for pragma in [
                                "PRAGMA journal_mode = WAL",
                                "PRAGMA synchronous = NORMAL",
                                "PRAGMA foreign_keys = ON",
                                "PRAGMA busy_timeout = 5000",
                            ] {
                                conn.execute(pragma).await?;
                            }
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await
            }
            Backend::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(options)
                    .await
            }
        }
        .context("connecting to the database")?;
        let readers = if backend == Backend::Sqlite && !url.contains(":memory:") {
            // Opened after the writer created the file and set WAL, which is kept in the file:
            // readers and the writer then never block each other.
            let read_only = url.replace("mode=rwc", "mode=ro");
            let options: AnyConnectOptions =
                read_only.parse().context("parsing the database URL")?;
            Some(
                AnyPoolOptions::new()
                    .max_connections(SQLITE_READERS)
                    .test_before_acquire(false)
                    .acquire_timeout(Duration::from_secs(30))
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute("PRAGMA busy_timeout = 5000").await?;
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await
                    .context("opening read connections to the database")?,
            )
        } else {
            None
        };
        Ok(Self {
            pool: writer,
            readers,
            backend,
            url: Url(url.into()),
        })
    }

    /// Applies the backend's pending migrations.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        let migrator = match self.backend {
            Backend::Sqlite => &SQLITE_MIGRATIONS,
            Backend::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator
            .run(&self.pool)
            .await
            .context("applying migrations")?;
        Ok(())
    }

    /// The pool. Writes, and every transaction, go here.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Where a single read outside a transaction goes: SQLite's read-only connections, or the
    /// pool. Each statement sees everything committed before it started, as on the pool.
    pub fn reader(&self) -> &AnyPool {
        self.readers.as_ref().unwrap_or(&self.pool)
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Begins a transaction that will write. On SQLite it is `BEGIN IMMEDIATE`: the
    /// database's write lock is taken before the first read, so what the transaction reads
    /// cannot change before it writes — the guarantee PostgreSQL's row locks give — and a second
    /// host on the same file waits for the lock (up to the busy timeout) instead of failing
    /// when it tries to upgrade a read transaction.
    pub async fn begin(&self) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Any>> {
        match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.pool.begin().await,
        }
    }

    /// A PostgreSQL listener on `channel`, on its own connection; none on SQLite.
    pub async fn listen(
        &self,
        channel: &str,
    ) -> anyhow::Result<Option<sqlx::postgres::PgListener>> {
        if self.backend != Backend::Postgres {
            return Ok(None);
        }
        let mut listener = sqlx::postgres::PgListener::connect(&self.url.0).await?;
        listener.listen(channel).await?;
        Ok(Some(listener))
    }
}
