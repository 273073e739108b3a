//! SQLite's writer — one OS thread owning the one write connection (rusqlite) — and its
//! readers, a few threads with a read-only connection each.
//!
//! A SQLite database has one writer at a time, so write transactions queue anyway; the
//! question is only how long each holds the lock. Through sqlx's driver every statement is a
//! hand-off to the connection's worker thread and back to a tokio task, which under load waits
//! its turn on a busy runtime — with the write lock held. Here a transaction body
//! ([`super::Tx`]) runs on the writer thread from `BEGIN IMMEDIATE` to `COMMIT` without leaving
//! it: each statement returns at once, so the body is polled to completion in one go.
//!
//! Writes still written against sqlx (the less frequent ones) take a [`Lease`]: a job that
//! parks the writer thread until the lease is dropped, so that exactly one of the two
//! connections writes at a time and neither waits on SQLite's busy handler (which sleeps in
//! milliseconds). Jobs and leases are served in the order they are asked for.
//!
//! Read bodies ([`super::Db::read`]) run the same way on the reader threads, each in a read
//! transaction of its own (one snapshot for all its statements); WAL lets them read while the
//! writer writes.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags};

use super::Backend;
use super::tx::{JobFuture, Row, SqliteError, Tx, Value};

type Job = Box<dyn FnOnce(&mut Connection) + Send>;

/// The handle to a set of connection threads (the writer, or the readers). Cloning shares
/// the threads.
#[derive(Debug, Clone)]
pub(super) struct Threads {
    jobs: mpsc::Sender<Job>,
    /// How each body's transaction begins.
    begin: &'static str,
}

/// Permission to write through sqlx's connection: the writer thread waits until it is dropped.
#[derive(Debug)]
pub struct Lease {
    _release: mpsc::Sender<()>,
}

/// Prepared statements kept per connection (every distinct write statement the host runs,
/// with room to spare: batched inserts vary with their row counts).
const STATEMENT_CACHE: usize = 256;

/// How long a sqlx write waits for its turn on the writer thread.
const LEASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Threads {
    /// Opens the writer's connection to `path` (which must exist: sqlx's pool created it and
    /// set WAL) and starts its thread.
    pub(super) fn writer(path: &Path) -> anyhow::Result<Self> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
        )?;
        Self::start("cartridge-sqlite-writer", vec![conn], "BEGIN IMMEDIATE")
    }

    /// Opens `count` read-only connections to `path` and starts a thread for each.
    pub(super) fn readers(path: &Path, count: usize) -> anyhow::Result<Self> {
        let conns = (0..count)
            .map(|_| {
                Connection::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )
            })
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Self::start("cartridge-sqlite-reader", conns, "BEGIN")
    }

    fn start(name: &str, conns: Vec<Connection>, begin: &'static str) -> anyhow::Result<Self> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for conn in conns {
            // Only another process on the same file can make a connection wait: this
            // process's writes take turns through the writer thread.
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
            let queue = queue.clone();
            std::thread::Builder::new()
                .name(name.into())
                .spawn(move || serve(conn, &queue))?;
        }
        Ok(Self { jobs, begin })
    }

    fn send(&self, job: Job) -> sqlx::Result<()> {
        self.jobs.send(job).map_err(|_| sqlx::Error::WorkerCrashed)
    }

    /// Runs `body` as one transaction on one of the threads.
    pub(super) async fn transact<R, E, F>(&self, body: F) -> Result<R, E>
    where
        F: for<'t> FnOnce(&'t mut dyn Tx) -> JobFuture<'t, R, E> + Send + 'static,
        R: Send + 'static,
        E: From<sqlx::Error> + Send + 'static,
    {
        let (done, outcome) = tokio::sync::oneshot::channel();
        let begin = self.begin;
        self.send(Box::new(move |conn| {
            let _ = done.send(transact(conn, begin, body));
        }))?;
        outcome.await.map_err(|_| sqlx::Error::WorkerCrashed)?
    }

    /// Waits for the writer thread to park, and keeps it parked until the lease is dropped.
    pub(super) async fn lease(&self) -> sqlx::Result<Lease> {
        let (granted, on_grant) = tokio::sync::oneshot::channel();
        let (release, on_release) = mpsc::channel::<()>();
        self.send(Box::new(move |_| {
            // Nobody waits any more (the asking future was dropped): nothing to hold.
            if granted.send(()).is_ok() {
                // Returns when the lease's sender is dropped.
                let _ = on_release.recv();
            }
        }))?;
        // As long as a pooled connection was waited for before the writer thread existed: a
        // lease that never comes is a bug (a lease held across another write), not a queue.
        match tokio::time::timeout(LEASE_TIMEOUT, on_grant).await {
            Ok(Ok(())) => Ok(Lease { _release: release }),
            Ok(Err(_)) => Err(sqlx::Error::WorkerCrashed),
            Err(_) => Err(sqlx::Error::PoolTimedOut),
        }
    }
}

fn serve(mut conn: Connection, queue: &Mutex<mpsc::Receiver<Job>>) {
    loop {
        // The lock is held only while waiting for the next job, never while running one.
        let next = match queue.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return,
        };
        let Ok(job) = next else { return };
        // A panicking body must not take the thread (and every later write) with it; its
        // caller sees the dropped answer as a crashed worker.
        if std::panic::catch_unwind(AssertUnwindSafe(|| job(&mut conn))).is_err() {
            tracing::error!("a database transaction panicked; it was rolled back");
        }
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
    }
}

fn transact<R, E, F>(conn: &mut Connection, begin: &str, body: F) -> Result<R, E>
where
    F: for<'t> FnOnce(&'t mut dyn Tx) -> JobFuture<'t, R, E>,
    E: From<sqlx::Error>,
{
    conn.execute_batch(begin).map_err(SqliteError::wrap)?;
    let outcome = {
        let mut tx = SqliteTx(conn);
        let mut future = body(&mut tx);
        match future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(outcome) => Some(outcome),
            Poll::Pending => None,
        }
    };
    match outcome {
        Some(Ok(value)) => match conn.execute_batch("COMMIT") {
            Ok(()) => Ok(value),
            Err(e) => Err(SqliteError::wrap(e).into()),
        },
        Some(Err(e)) => Err(e),
        // Everything a body awaits on this thread is ready at once; anything else (a lock, a
        // plugin call) does not belong inside a write transaction.
        None => Err(sqlx::Error::Protocol(
            "a write transaction awaited something other than its own statements".into(),
        )
        .into()),
    }
    // An open transaction (an error above) is rolled back by `serve`.
}

/// [`Tx`] on the writer thread's connection: every call has finished when it returns.
struct SqliteTx<'c>(&'c mut Connection);

impl rusqlite::ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::Borrowed(match self {
            Value::Int(v) => ValueRef::Integer(*v),
            Value::Text(v) => ValueRef::Text(v.as_bytes()),
            Value::NullInt | Value::NullText => ValueRef::Null,
        }))
    }
}

impl SqliteTx<'_> {
    /// The cached statement for `sql` with `args` bound: `$n` is `args[n - 1]` wherever it
    /// appears, as sqlx binds it.
    fn prepare<'s>(
        conn: &'s Connection,
        sql: &str,
        args: &[Value],
    ) -> rusqlite::Result<rusqlite::CachedStatement<'s>> {
        let mut statement = conn.prepare_cached(sql)?;
        for index in 1..=statement.parameter_count() {
            let number = match statement.parameter_name(index) {
                None => index,
                Some(name) => name
                    .strip_prefix('$')
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| rusqlite::Error::InvalidParameterName(name.to_owned()))?,
            };
            let value = number
                .checked_sub(1)
                .and_then(|i| args.get(i))
                .ok_or(rusqlite::Error::InvalidParameterCount(number, args.len()))?;
            statement.raw_bind_parameter(index, value)?;
        }
        Ok(statement)
    }

    fn execute_now(&mut self, sql: &str, args: &[Value]) -> rusqlite::Result<u64> {
        let mut statement = Self::prepare(self.0, sql, args)?;
        Ok(statement.raw_execute()? as u64)
    }

    fn fetch_now(&mut self, sql: &str, args: &[Value]) -> rusqlite::Result<Vec<Row>> {
        let mut statement = Self::prepare(self.0, sql, args)?;
        let columns: Arc<[String]> = statement
            .column_names()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let mut rows = statement.raw_query();
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let values = (0..columns.len())
                .map(|i| {
                    Ok(match row.get_ref(i)? {
                        ValueRef::Null => Value::NullText,
                        ValueRef::Integer(v) => Value::Int(v),
                        ValueRef::Text(v) => Value::Text(
                            std::str::from_utf8(v)
                                .map_err(rusqlite::Error::Utf8Error)?
                                .to_owned(),
                        ),
                        other => {
                            return Err(rusqlite::Error::InvalidColumnType(
                                i,
                                columns[i].clone(),
                                other.data_type(),
                            ));
                        }
                    })
                })
                .collect::<rusqlite::Result<Vec<_>>>()?;
            out.push(Row::new(columns.clone(), values));
        }
        Ok(out)
    }
}

impl Tx for SqliteTx<'_> {
    fn execute<'a>(&'a mut self, sql: &'a str, args: &'a [Value]) -> super::TxFuture<'a, u64> {
        let result = self.execute_now(sql, args).map_err(SqliteError::wrap);
        Box::pin(std::future::ready(result))
    }

    fn fetch<'a>(&'a mut self, sql: &'a str, args: &'a [Value]) -> super::TxFuture<'a, Vec<Row>> {
        let result = self.fetch_now(sql, args).map_err(SqliteError::wrap);
        Box::pin(std::future::ready(result))
    }

    fn backend(&self) -> Backend {
        Backend::Sqlite
    }
}
