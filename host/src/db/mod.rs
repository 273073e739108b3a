//! The database: SQLite by default (a file in the data directory, WAL), PostgreSQL for
//! production and several hosts on one database. The SQL is the common subset (`$n`
//! parameters; `FOR UPDATE` only where [`Tx::backend`] says PostgreSQL), and the only
//! per-backend files are the migrations in `migrations/sqlite` and `migrations/postgres`.
//!
//! Two ways in, one SQL:
//! - **[`Tx`] bodies** — [`Db::write`] (a write transaction), [`Db::read`] (a read snapshot),
//!   [`Db::execute`] (one write statement). The hot paths (carts, checkout, inventory,
//!   idempotency, the call log) are written this way. On SQLite a body runs on a rusqlite
//!   connection, start to finish without a hand-off: on the calling thread when the connection
//!   is free, else on the connection's own thread, where queued write bodies commit together
//!   (`sqlite.rs`); on PostgreSQL on a sqlx connection as any future does.
//! - **sqlx** on [`Db::begin`], [`Db::write_conn`], [`Db::reader`] and [`Db::pool`], for the
//!   rest (orders after checkout, catalog admin, registry, customers). On SQLite this goes
//!   through sqlx's own driver, a hand-off to its worker thread per statement.
//!
//! Concurrency: on PostgreSQL, writers lock the rows they change in a fixed order. SQLite has a
//! single writer anyway, so write transactions begin `IMMEDIATE` and take turns on one writer
//! connection: [`Db::write`] bodies run on it, and sqlx writes ([`Db::begin`],
//! [`Db::write_conn`]) lease it for their duration, so the two connections never wait on
//! SQLite's busy handler. Reads go to the reader connections ([`Db::read`]) or read-only sqlx
//! connections ([`Db::reader`]); WAL lets them read while the writer writes, so they do not
//! wait behind it.
//!
//! Layout: this file (connecting, migrations, the entry points, the sqlx side), `tx.rs` (the
//! [`Tx`] trait, its values and rows, and its sqlx implementation), `sqlite.rs` (the writer, the
//! readers and the checkpointing thread), `wal_vfs.rs` (the VFS through which the writer hands
//! the WAL each commit's frames in one write).
//!
//! Durability: SQLite runs with `synchronous = NORMAL` in WAL mode — a process crash loses
//! nothing (a body is answered only after its commit); a power loss can lose the last
//! transactions committed before it.

mod sqlite;
mod tx;
mod wal_vfs;

use std::time::Duration;

use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Executor};

pub use sqlite::Lease;
pub(crate) use tx::args;
pub use tx::{FromValue, JobFuture, Row, Tx, TxFuture, Value};

/// Which database is behind a [`Db`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// A connection pool and the backend behind it. Cloning is one reference count: every
/// service and every request's state holds a `Db`, and under load the two cores took turns on
/// the cache lines of each of the handles inside it.
#[derive(Debug, Clone)]
pub struct Db(std::sync::Arc<Handles>);

/// What a [`Db`] shares.
#[derive(Debug)]
pub struct Handles {
    pool: AnyPool,
    /// SQLite only: read-only connections for statements outside transactions, so reads do
    /// not queue behind the one writer. `None` on PostgreSQL (its pool serves both) and for an
    /// in-memory SQLite database (other connections would see another database).
    readers: Option<AnyPool>,
    /// SQLite only (a file): the writer connection and its thread. Without it (PostgreSQL, an in-memory SQLite
    /// database) [`Db::write`] runs its body on a sqlx transaction.
    writer: Option<sqlite::Threads>,
    /// SQLite only (a file): the reader connections and their threads, for [`Db::read`].
    read_threads: Option<sqlite::Threads>,
    /// PostgreSQL only: a few connections whose statements commit on their own without
    /// waiting for their WAL flush, for [`Db::unsynced`].
    unsynced: Option<AnyPool>,
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

/// Statements that differ only by a small number — how many rows or parameters they list, or
/// where their numbering starts — each built once per number (up to [`SqlByCount::KEPT`]) and
/// kept for the life of the process, one per place in the code (a `static`). The checkout's
/// writes build their `VALUES` and `IN` lists this way: formatting them anew on every call
/// cost a few percent of the time the write lock is held.
pub(crate) struct SqlByCount([std::sync::OnceLock<String>; SqlByCount::KEPT]);

impl SqlByCount {
    /// Counts from 0 to `KEPT - 1` are kept; a larger one is built on each call.
    pub(crate) const KEPT: usize = 16;

    pub(crate) const fn new() -> Self {
        Self([const { std::sync::OnceLock::new() }; Self::KEPT])
    }

    /// The statement for `count`, built by `build` the first time.
    pub(crate) fn get(
        &'static self,
        count: usize,
        build: impl FnOnce(usize) -> String,
    ) -> std::borrow::Cow<'static, str> {
        match self.0.get(count) {
            Some(kept) => kept.get_or_init(|| build(count)).as_str().into(),
            None => build(count).into(),
        }
    }
}

/// `$from, $from+1, …` — `count` numbered parameters for an `IN (…)` list or a `VALUES` row.
pub(crate) fn params(from: usize, count: usize) -> String {
    let mut out = String::with_capacity(count * 5);
    push_params(&mut out, from, count);
    out
}

/// `($from, …), (…), …` — `rows` parenthesised groups of `width` numbered parameters.
pub(crate) fn param_rows(from: usize, rows: usize, width: usize) -> String {
    // Built in one buffer: these run inside write transactions, where every allocation is
    // time the database's write lock is held.
    let mut out = String::with_capacity(rows * (width * 5 + 4));
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        push_params(&mut out, from + r * width, width);
        out.push(')');
    }
    out
}

fn push_params(out: &mut String, from: usize, count: usize) {
    use std::fmt::Write;
    for n in from..from + count {
        if n > from {
            out.push_str(", ");
        }
        let _ = write!(out, "${n}");
    }
}

/// Read-only SQLite connections (each is a thread in sqlx's driver).
const SQLITE_READERS: u32 = 4;

/// PostgreSQL: a pooled connection idle at least this long is pinged before it is used.
/// PostgreSQL: connections of the [`Db::unsynced`] pool, per host. They run the checkouts'
/// reserving statements, which queue for the same few stock rows in a flash sale: with more
/// of them in PostgreSQL at once, each commit there wakes more waiters to re-read the rows
/// for nothing, so a few at a time per host, the rest waiting here, where it is free.
pub const UNSYNCED_CONNECTIONS: u32 = 4;

const PING_IF_IDLE_FOR: Duration = Duration::from_millis(500);

/// `body` as a transaction body for [`Db::write`], [`Db::autocommit`] and the like, for a
/// closure bound to a name before it is passed to one of them (a closure written in the call
/// gets this signature from the call).
pub(crate) fn job<R, E, F>(body: F) -> F
where
    F: for<'t> FnOnce(&'t mut dyn Tx) -> JobFuture<'t, R, E>,
{
    body
}

/// A PostgreSQL pool of at most `size` connections.
fn postgres_pool(size: u32) -> AnyPoolOptions {
    AnyPoolOptions::new()
        .max_connections(size)
        .acquire_timeout(Duration::from_secs(30))
        // A connection is pinged before it is handed out only if it sat idle for a while (as
        // HikariCP does): one in use a moment ago is alive, and sqlx already pings every
        // connection as it comes back. Under load that is a round trip saved on every
        // transaction; a connection the server dropped while idle (a restart, an idle-session
        // timeout) is still found out before a request gets it.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// PostgreSQL connections per host when not told: twice this machine's cores, plus one, and
/// at most 16 (several hosts share one server's `max_connections`, 100 by default).
///
/// More is not faster. A PostgreSQL backend per busy connection competes for the same cores
/// (and, when the database runs beside the host, for the host's): on the checkout benchmark's
/// two cores, 16 connections gave 673 checkouts/s, 8 gave 739, 5 and 6 gave 779–795, 3 gave
/// 617 (one session, `BENCHMARKS.md`). A database server with cores of its own wants more —
/// [`Db::connect_with`] takes the number.
pub fn default_pool_size() -> u32 {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    u32::try_from(cores * 2 + 1).map_or(MAX_DEFAULT_POOL, |n| n.min(MAX_DEFAULT_POOL))
}

/// The most connections [`default_pool_size`] asks for.
const MAX_DEFAULT_POOL: u32 = 16;

impl std::ops::Deref for Db {
    type Target = Handles;

    fn deref(&self) -> &Handles {
        &self.0
    }
}

impl Db {
    /// Connects to `url` (`sqlite://path/to/file.db` or `postgres://…`), creating a SQLite
    /// file if there is none; on PostgreSQL with [`default_pool_size`] connections.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        Self::connect_with(url, default_pool_size()).await
    }

    /// [`Db::connect`] with at most `pool_size` PostgreSQL connections (at least 2). SQLite
    /// keeps its own: one writer and a few readers.
    pub async fn connect_with(url: &str, pool_size: u32) -> anyhow::Result<Self> {
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
        let pool = match backend {
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
            Backend::Postgres => postgres_pool(pool_size.max(2)).connect_with(options).await,
        }
        .context("connecting to the database")?;
        let on_file = backend == Backend::Sqlite && !url.contains(":memory:");
        let (writer, read_threads) = if on_file {
            let options: sqlx::sqlite::SqliteConnectOptions =
                url.parse().context("parsing the database URL")?;
            let path = options.get_filename();
            (
                Some(sqlite::Threads::writer(path).context("opening the SQLite writer")?),
                Some(
                    sqlite::Threads::readers(path, SQLITE_READERS as usize)
                        .context("opening the SQLite readers")?,
                ),
            )
        } else {
            (None, None)
        };
        let readers = if on_file {
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
        let unsynced = match backend {
            Backend::Postgres => Some(
                postgres_pool(UNSYNCED_CONNECTIONS)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute("SET synchronous_commit = off").await?;
                            Ok(())
                        })
                    })
                    .connect_lazy_with(url.parse().context("parsing the database URL")?),
            ),
            Backend::Sqlite => None,
        };
        Ok(Self(std::sync::Arc::new(Handles {
            pool,
            readers,
            writer,
            read_threads,
            unsynced,
            backend,
            url: Url(url.into()),
        })))
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

    /// The pool, for reads inside nothing and for migrations. Writes go through
    /// [`Db::write`], [`Db::begin`] or [`Db::write_conn`].
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

    /// Runs `body` as one write transaction: committed if it returns `Ok`, rolled back if it
    /// returns `Err` (or fails to finish). On SQLite it runs on the writer connection (on the
    /// calling thread when it is free, else on the writer's thread, committed with whatever
    /// else queued there); it must await nothing but its own statements (anything else is
    /// refused as an error).
    pub async fn write<R, E, F>(&self, body: F) -> Result<R, E>
    where
        F: for<'t> FnOnce(&'t mut dyn Tx) -> JobFuture<'t, R, E> + Send + 'static,
        R: Send + 'static,
        E: From<sqlx::Error> + Send + 'static,
    {
        self.write_begun_with(None, body).await
    }

    /// [`Db::write`] for a transaction whose commit need not wait for its WAL flush: on
    /// PostgreSQL it begins with `synchronous_commit = off` for itself alone (in the same
    /// round trip as its `BEGIN`), so the locks it holds are released without waiting for the
    /// disk. Only for a transaction nothing durable rests on until a later, synchronous one
    /// commits: PostgreSQL flushes its WAL in order, so once the later one is durable, so is
    /// this. On SQLite it is [`Db::write`].
    pub async fn write_unsynced<R, E, F>(&self, body: F) -> Result<R, E>
    where
        F: for<'t> FnOnce(&'t mut dyn Tx) -> JobFuture<'t, R, E> + Send + 'static,
        R: Send + 'static,
        E: From<sqlx::Error> + Send + 'static,
    {
        self.write_begun_with(Some("BEGIN; SET LOCAL synchronous_commit = off"), body)
            .await
    }

    async fn write_begun_with<R, E, F>(&self, begin: Option<&'static str>, body: F) -> Result<R, E>
    where
        F: for<'t> FnOnce(&'t mut dyn Tx) -> JobFuture<'t, R, E> + Send + 'static,
        R: Send + 'static,
        E: From<sqlx::Error> + Send + 'static,
    {
        if let Some(writer) = &self.writer {
            return writer.transact(body).await;
        }
        let mut tx = match (self.backend, begin) {
            (Backend::Postgres, Some(begin)) => WriteTx {
                tx: self.pool.begin_with(begin).await?,
                _lease: None,
            },
            _ => self.begin().await?,
        };
        let outcome = body(&mut tx::SqlxTx(&mut tx.tx, self.backend)).await;
        if outcome.is_ok() {
            tx.commit().await?;
        }
        outcome
    }

    /// Runs `body`, which only reads: on SQLite in one read transaction (one snapshot; under the
    /// same rule as [`Db::write`]: it awaits nothing but its statements) on the writer's
    /// connection if it is idle (a body that writes there is rolled back and refused), or else
    /// on a reader connection; on PostgreSQL on a pooled connection outside a transaction, so
    /// each statement sees what was committed when it began (a transaction would cost two more
    /// round trips). A body must not depend on two of its statements seeing the same
    /// snapshot (use [`Db::read_snapshot`] for that), and on PostgreSQL nothing stops it from
    /// writing: keep writes in [`Db::write`].
    pub async fn read<R, E, F>(&self, body: F) -> Result<R, E>
    where
        F: for<'t> FnOnce(&'t mut dyn Tx) -> JobFuture<'t, R, E> + Send + 'static,
        R: Send + 'static,
        E: From<sqlx::Error> + Send + 'static,
    {
        if let Some(readers) = &self.read_threads {
            // The writer's connection, when it is idle, reads from a warm page cache; a
            // reader's cache is emptied by every commit since its last read, and refilling it
            // (a `pread` per page) was most of a read's cost.
            let body = match &self.writer {
                Some(writer) => match writer.read_inline(body) {
                    Ok(outcome) => {
                        tokio::task::coop::consume_budget().await;
                        return outcome;
                    }
                    Err(body) => body,
                },
                None => body,
            };
            return readers.transact(body).await;
        }
        let mut conn = self.reader().acquire().await?;
        body(&mut tx::SqlxTx(&mut conn, self.backend)).await
    }

    /// [`Db::read`] whose statements see one snapshot on PostgreSQL too: there it runs in a
    /// `REPEATABLE READ, READ ONLY` transaction, which costs two more round trips and refuses
    /// any write. For reads whose statements must agree with each other, such as an order and
    /// its payment, refunds and shipments read by one statement each. On SQLite, where every
    /// read body is one read transaction already, it runs on a reader connection and never on
    /// the idle writer's: these are the long reads (a page of a hundred orders), and a read on
    /// the writer's connection holds back every write that arrives while it runs.
    pub async fn read_snapshot<R, E, F>(&self, body: F) -> Result<R, E>
    where
        F: for<'t> FnOnce(&'t mut dyn Tx) -> JobFuture<'t, R, E> + Send + 'static,
        R: Send + 'static,
        E: From<sqlx::Error> + Send + 'static,
    {
        if self.backend != Backend::Postgres {
            return match &self.read_threads {
                Some(readers) => readers.transact(body).await,
                None => self.read(body).await,
            };
        }
        let mut tx = self
            .reader()
            .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await?;
        let outcome = body(&mut tx::SqlxTx(&mut tx, self.backend)).await;
        if outcome.is_ok() {
            tx.commit().await?;
        }
        outcome
    }

    /// Begins a sqlx transaction that will write. On SQLite it is `BEGIN IMMEDIATE`, taken
    /// while the writer thread is leased to it: the database's write lock is held before the
    /// first read, so what the transaction reads cannot change before it writes — the
    /// guarantee PostgreSQL's row locks give — and a second host on the same file waits for the
    /// lock (up to the busy timeout) instead of failing when it tries to upgrade a read
    /// transaction. Must not be held across [`Db::write`] (which would wait for it).
    #[track_caller]
    pub fn begin(&self) -> impl Future<Output = sqlx::Result<WriteTx>> + Send + '_ {
        let asker = std::panic::Location::caller();
        async move {
            let lease = self.lease(asker).await?;
            let tx = match self.backend {
                Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
                Backend::Postgres => self.pool.begin().await?,
            };
            Ok(WriteTx { tx, _lease: lease })
        }
    }

    /// PostgreSQL: runs `body` on a connection of its own whose statements run outside a
    /// transaction and commit, each on its own, without waiting for their WAL flush — so the
    /// row locks a statement takes are released when it ends, not a disk write later. Only
    /// for statements nothing durable rests on until a later, synchronous commit (PostgreSQL
    /// flushes its WAL in order: once that later commit is durable, so is this). At most
    /// [`UNSYNCED_CONNECTIONS`] bodies run at once per host; the rest queue here. `None` on
    /// SQLite, where the body is not run.
    pub async fn unsynced<R, E, F>(&self, body: F) -> Option<Result<R, E>>
    where
        F: for<'t> FnOnce(&'t mut dyn Tx) -> JobFuture<'t, R, E> + Send + 'static,
        R: Send + 'static,
        E: From<sqlx::Error> + Send + 'static,
    {
        let pool = self.unsynced.as_ref()?;
        let mut conn = match pool.acquire().await {
            Ok(conn) => conn,
            Err(e) => return Some(Err(e.into())),
        };
        Some(body(&mut tx::SqlxTx(&mut conn, self.backend)).await)
    }

    /// Runs `body`, a write that is one statement checking its own work: on PostgreSQL on a
    /// pooled connection outside a transaction, so the statement commits on its own (waiting
    /// for its WAL flush, as any commit) — a transaction around it would cost two round trips
    /// more; on SQLite as [`Db::write`], where a transaction costs no round trip.
    pub async fn autocommit<R, E, F>(&self, body: F) -> Result<R, E>
    where
        F: for<'t> FnOnce(&'t mut dyn Tx) -> JobFuture<'t, R, E> + Send + 'static,
        R: Send + 'static,
        E: From<sqlx::Error> + Send + 'static,
    {
        if self.backend != Backend::Postgres {
            return self.write(body).await;
        }
        let mut conn = self.pool.acquire().await?;
        body(&mut tx::SqlxTx(&mut conn, self.backend)).await
    }

    /// A connection for a single write statement outside a transaction (holding the writer
    /// thread's turn on SQLite).
    #[track_caller]
    pub fn write_conn(&self) -> impl Future<Output = sqlx::Result<WriteConn>> + Send + '_ {
        let asker = std::panic::Location::caller();
        async move {
            let lease = self.lease(asker).await?;
            Ok(WriteConn {
                conn: self.pool.acquire().await?,
                _lease: lease,
            })
        }
    }

    /// Runs one write statement on its own (autocommit); the number of rows it changed.
    pub async fn execute<A>(&self, sql: &'static str, args: A) -> sqlx::Result<u64>
    where
        A: AsRef<[Value]> + Send + 'static,
    {
        if self.writer.is_some() {
            return self
                .write(move |tx| Box::pin(async move { tx.execute(sql, args.as_ref()).await }))
                .await;
        }
        // One round trip, not three (begin, statement, commit).
        Ok(tx::bind(sqlx::query(sql), args.as_ref())
            .execute(&self.pool)
            .await?
            .rows_affected())
    }

    /// Checks that the database answers, on the write path (the writer connection on SQLite).
    pub async fn ping(&self) -> sqlx::Result<()> {
        self.write(|tx| Box::pin(async move { tx.fetch("SELECT 1", &[]).await.map(drop) }))
            .await
    }

    async fn lease(&self, asker: sqlite::Asker) -> sqlx::Result<Option<Lease>> {
        match &self.writer {
            Some(writer) => writer.lease(asker).await.map(Some),
            None => Ok(None),
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

/// A sqlx write transaction ([`Db::begin`]); dereferences to its connection.
#[derive(Debug)]
pub struct WriteTx {
    tx: sqlx::Transaction<'static, Any>,
    // Dropped after the transaction ends.
    _lease: Option<Lease>,
}

impl WriteTx {
    /// Commits, then lets the writer thread go on.
    pub async fn commit(self) -> sqlx::Result<()> {
        self.tx.commit().await
    }

    /// Rolls back, then lets the writer thread go on.
    pub async fn rollback(self) -> sqlx::Result<()> {
        self.tx.rollback().await
    }
}

impl std::ops::Deref for WriteTx {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        &self.tx
    }
}

impl std::ops::DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.tx
    }
}

/// A pooled connection for one write ([`Db::write_conn`]); dereferences to it.
#[derive(Debug)]
pub struct WriteConn {
    conn: PoolConnection<Any>,
    _lease: Option<Lease>,
}

impl std::ops::Deref for WriteConn {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        &self.conn
    }
}

impl std::ops::DerefMut for WriteConn {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.conn
    }
}

#[cfg(test)]
mod tests {
    use super::{SqlByCount, param_rows, params};

    #[test]
    fn a_statement_by_count_is_built_once_for_each_count_it_keeps() {
        static SQL: SqlByCount = SqlByCount::new();
        let builds = std::cell::Cell::new(0);
        let build = |count| {
            builds.set(builds.get() + 1);
            params(1, count)
        };
        assert_eq!(SQL.get(3, build), "$1, $2, $3");
        assert!(matches!(
            SQL.get(3, build),
            std::borrow::Cow::Borrowed("$1, $2, $3")
        ));
        assert_eq!(SQL.get(1, build), "$1");
        assert_eq!(builds.get(), 2);
        // Past what it keeps, built every time.
        let many = SqlByCount::KEPT;
        assert_eq!(SQL.get(many, build), params(1, many));
        assert_eq!(SQL.get(many, build), params(1, many));
        assert_eq!(builds.get(), 4);
    }

    #[test]
    fn parameter_lists_are_numbered_from_where_they_start() {
        assert_eq!(params(3, 3), "$3, $4, $5");
        assert_eq!(params(1, 0), "");
        assert_eq!(param_rows(2, 2, 3), "($2, $3, $4), ($5, $6, $7)");
        assert_eq!(param_rows(1, 1, 1), "($1)");
    }
}
