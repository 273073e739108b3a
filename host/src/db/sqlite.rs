//! SQLite's writer — the one write connection (rusqlite) with its own OS thread — its readers
//! (read-only connections, a thread each), and a thread that checkpoints the WAL.
//!
//! A SQLite database has one writer at a time, so write transactions queue anyway; the
//! question is only how long each holds the lock. Through sqlx's driver every statement is a
//! hand-off to the connection's worker thread and back to a tokio task, which under load waits
//! its turn on a busy runtime — with the write lock held. Here a transaction body
//! ([`super::Tx`]) runs from `BEGIN` to `COMMIT` without leaving the thread it runs on: each
//! statement returns at once, so the body is polled to completion in one go.
//!
//! **Inline first.** A hand-off to a connection's thread and back costs two context switches,
//! and under load those switches were most of a request's cost. So a body first tries to run
//! right where it is asked for, on the calling (tokio) thread: if a connection is free, the
//! caller takes the connection's lock and runs the body there, which takes microseconds because
//! a body awaits nothing but its own statements. A connection's thread holds the same lock
//! while it runs a job (or sits parked under a [`Lease`]); an inline caller only ever
//! `try_lock`s it, so a tokio thread never blocks on it.
//!
//! **Group commit, served where it is asked for.** Write bodies go through one queue
//! ([`WriteQueue`]). A caller who finds nobody serving it serves one group on its own thread:
//! its body and every write body asked for while that group runs (up to [`GROUP_MAX`]) in one
//! transaction, each after the first in a savepoint of its own, committed once — a body that
//! fails rolls back to its savepoint alone, and every body hears of its commit only after the
//! commit. The WAL then gets each changed page once per group instead of once per body, and
//! the file locks are taken once. A body asked for while someone serves just joins the queue.
//! What is left after a caller's group goes to the writer thread, which serves until the
//! queue is empty; so does the queue of a caller who would have to wait (the connection held
//! by a read or by the checkpointing thread, or a lease next). Before, a caller ran its body
//! alone and every body asked for meanwhile went to the writer thread, a wake-up each: under
//! the checkout benchmark's load, most of them.
//!
//! **Checkpoints off the write path.** The writer does not checkpoint (`wal_autocheckpoint =
//! 0`); a thread of its own runs a passive checkpoint every [`CHECKPOINT_EVERY`], which needs no
//! write lock and keeps its `fsync`s out of the writer's way, and pauses the writer for a moment
//! now and then so that the WAL starts over instead of growing without end ([`checkpointer`]).
//!
//! Writes still written against sqlx (the less frequent ones) take a [`Lease`]: a job that
//! parks the writer thread until the lease is dropped, so that exactly one of the two
//! connections writes at a time and neither waits on SQLite's busy handler (which sleeps in
//! milliseconds). Jobs and leases are served in the order they are asked for. (A commit
//! through sqlx also empties the rusqlite connections' page caches, one more reason to keep
//! the hot paths off it.) Every write waits while a lease is held, so a lease held for more
//! than [`SLOW_LEASE`], and a lease waited for that long, are logged with the place in the
//! code that asked for it (the holder's, for one never granted).
//!
//! Read bodies ([`super::Db::read`]) run the same way, each in a read transaction of its own
//! (one snapshot for all its statements); WAL lets them read while the writer writes. A read
//! goes to the writer's connection first, if it is idle (and may not write there): in WAL mode
//! a connection's page cache is emptied whenever another connection has committed since its
//! last transaction, so a reader refills every page a read touches (a `pread` each), while the
//! writer's cache stays warm — the commits are its own. Only a busy writer sends a read to the
//! readers.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::task::{Context, Poll, Waker};

use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, OpenFlags};

use super::Backend;
use super::tx::{JobFuture, Row, SqliteError, Tx, Value};

/// What the writer is asked to do.
enum Job {
    /// Runs alone, outside any transaction, on the writer thread: a lease.
    Alone(Alone),
    /// A write body, run in a group's transaction (see [`group`]).
    Grouped(Grouped),
}

/// A job that runs alone: a read body (which opens its own transaction), a lease.
type Alone = Box<dyn FnOnce(&mut Connection) + Send>;

/// Runs a write body inside the group's open transaction (`Ok`), or tells its caller that the
/// transaction could not begin (`Err`). Returns what answers the caller once the group's
/// commit is known, or `None` if the body failed (its caller has its answer already).
type Grouped = Box<dyn FnOnce(Result<Slot<'_>, &rusqlite::Error>) -> Option<Settle> + Send>;

/// Where in its group's transaction a write body runs.
enum Slot<'c> {
    /// First: nothing else is in the transaction yet, so the body needs no savepoint — if it
    /// fails, rolling back the transaction undoes it (and nothing joins after it).
    First(&'c mut Connection),
    /// After others: in a savepoint of its own, so that failing undoes it alone.
    Joined(&'c mut Connection),
}

/// Answers a write body's caller with its group's commit: `Ok` committed, `Err` not.
type Settle = Box<dyn FnOnce(Result<(), &rusqlite::Error>) + Send>;

/// The most write bodies committed together.
const GROUP_MAX: usize = 64;

/// The handle to a set of connection threads (the writer, or the readers). Cloning shares
/// the threads.
#[derive(Clone)]
pub(super) struct Threads {
    jobs: Jobs,
    /// One per thread; a thread holds its connection's lock while it runs a job.
    conns: Arc<[Mutex<Connection>]>,
    /// Jobs sent and not yet taken: an inline body does not overtake them.
    queued: Arc<AtomicUsize>,
    /// How each body's transaction begins.
    begin: &'static str,
    /// The writer's: keeps the checkpointing thread alive (it stops when the last clone goes).
    _checkpoints: Option<mpsc::Sender<()>>,
}

/// Where jobs wait.
#[derive(Clone)]
enum Jobs {
    /// The readers': any idle reader thread takes the next.
    Readers(mpsc::Sender<Alone>),
    /// The writer's: served where they are asked for, or by the writer thread.
    Writer(Arc<WriterHandle>),
}

impl std::fmt::Debug for Threads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Threads")
            .field("connections", &self.conns.len())
            .field("begin", &self.begin)
            .finish_non_exhaustive()
    }
}

/// Permission to write through sqlx's connection: the writer thread waits until it is dropped.
#[derive(Debug)]
pub struct Lease {
    _release: mpsc::Sender<()>,
}

/// Where in the code a lease was asked for ([`Threads::lease`]).
pub(super) type Asker = &'static std::panic::Location<'static>;

/// A lease held or waited for longer than this is logged: every write waits meanwhile.
const SLOW_LEASE: std::time::Duration = std::time::Duration::from_secs(1);

/// Prepared statements kept per connection (every distinct write statement the host runs,
/// with room to spare: batched inserts vary with their row counts).
const STATEMENT_CACHE: usize = 256;

/// How long a sqlx write waits for its turn on the writer thread.
const LEASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl Threads {
    /// Opens the writer's connection to `path` (which must exist: sqlx's pool created it and
    /// set WAL) and starts its thread.
    pub(super) fn writer(path: &Path) -> anyhow::Result<Self> {
        // Through the VFS that writes each commit's WAL frames in one call (`wal_vfs`).
        super::wal_vfs::register()?;
        let conn = Connection::open_with_flags_and_vfs(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            super::wal_vfs::NAME,
        )?;
        // The writer's page cache outlives its transactions (only another connection's
        // commit empties it), so it is given room for the hot tables and indexes. Each body of
        // a group runs in a savepoint, whose journal of changed pages SQLite spills to a temp
        // file past 64 KiB — a `pwrite` per page, a fifth of the writer's time under load —
        // unless temp storage is memory (bounded by the group's size, [`GROUP_MAX`]).
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
             PRAGMA cache_size = -16384; PRAGMA wal_autocheckpoint = 0; \
             PRAGMA temp_store = MEMORY;",
        )?;
        let conns = Self::conns(vec![conn])?;
        let queued = Arc::new(AtomicUsize::new(0));
        let queue = Arc::new(WriteQueue::default());
        {
            let (conns, queue, queued) = (conns.clone(), queue.clone(), queued.clone());
            std::thread::Builder::new()
                .name("cartridge-sqlite-writer".into())
                .spawn(move || serve_writes(&queue, &conns[0], &queued))?;
        }
        Ok(Self {
            jobs: Jobs::Writer(Arc::new(WriterHandle(queue))),
            _checkpoints: Some(checkpointer(path, conns.clone())?),
            conns,
            queued,
            begin: "BEGIN IMMEDIATE",
        })
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
        let conns = Self::conns(conns)?;
        let queued = Arc::new(AtomicUsize::new(0));
        let (jobs, queue) = mpsc::channel::<Alone>();
        let queue = Arc::new(Mutex::new(queue));
        for index in 0..conns.len() {
            let (conns, queue, queued) = (conns.clone(), queue.clone(), queued.clone());
            std::thread::Builder::new()
                .name("cartridge-sqlite-reader".into())
                .spawn(move || serve_reads(&conns[index], &queue, &queued))?;
        }
        Ok(Self {
            jobs: Jobs::Readers(jobs),
            conns,
            queued,
            begin: "BEGIN",
            _checkpoints: None,
        })
    }

    fn conns(conns: Vec<Connection>) -> anyhow::Result<Arc<[Mutex<Connection>]>> {
        for conn in &conns {
            // Only another process on the same file can make a connection wait: this
            // process's writes take turns through the writer's lock.
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        }
        Ok(conns.into_iter().map(Mutex::new).collect())
    }

    /// Queues `job` to run alone: a read body for any idle reader thread, a lease for the
    /// writer thread.
    fn send(&self, job: Alone) -> sqlx::Result<()> {
        match &self.jobs {
            Jobs::Writer(writer) => {
                writer.0.push(Job::Alone(job), &self.conns[0], &self.queued);
                Ok(())
            }
            Jobs::Readers(readers) => {
                self.queued.fetch_add(1, Ordering::AcqRel);
                readers.send(job).map_err(|_| {
                    self.queued.fetch_sub(1, Ordering::AcqRel);
                    sqlx::Error::WorkerCrashed
                })
            }
        }
    }

    /// A connection nobody is using and nothing queued is waiting for, if there is one.
    fn idle(&self) -> Option<MutexGuard<'_, Connection>> {
        if self.queued.load(Ordering::Acquire) != 0 {
            return None;
        }
        self.conns.iter().find_map(|conn| match conn.try_lock() {
            Ok(conn) => Some(conn),
            // A panic never unwinds through a held lock (jobs are caught inside it), but a
            // poisoned connection is as usable as any: `run` rolls back what is open.
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        })
    }

    /// Runs `body` as one transaction. A write body joins the writer's queue, which may run it
    /// right here ([`WriteQueue`]); a read body runs on the calling thread if a reader is idle,
    /// otherwise on a reader's thread.
    pub(super) async fn transact<R, E, F>(&self, body: F) -> Result<R, E>
    where
        F: for<'t> FnOnce(&'t mut dyn Tx) -> JobFuture<'t, R, E> + Send + 'static,
        R: Send + 'static,
        E: From<sqlx::Error> + Send + 'static,
    {
        if let Jobs::Writer(writer) = &self.jobs {
            let (done, outcome) = tokio::sync::oneshot::channel();
            let body = grouped(body, move |result| {
                let _ = done.send(result);
            });
            writer
                .0
                .push(Job::Grouped(body), &self.conns[0], &self.queued);
            return outcome.await.map_err(|_| sqlx::Error::WorkerCrashed)?;
        }
        let begin = self.begin;
        let body = match self.run_inline(body, |conn, body| transact(conn, begin, body)) {
            Ok(outcome) => {
                // A body run here never returned `Pending`, so a task looping over such calls
                // would hold its worker thread for as long as it loops. Count the call against
                // the task's budget, as tokio's own resources do: every so often it yields.
                tokio::task::coop::consume_budget().await;
                return outcome;
            }
            Err(body) => body,
        };
        let (done, outcome) = tokio::sync::oneshot::channel();
        self.send(Box::new(move |conn| {
            let _ = done.send(transact(conn, begin, body));
        }))?;
        outcome.await.map_err(|_| sqlx::Error::WorkerCrashed)?
    }

    /// Runs `body`, which only reads, in a read transaction right here if a connection is
    /// idle; otherwise hands it back. Meant for the writer's connection, whose page cache
    /// stays warm (see the module's documentation). A body that writes after all is rolled
    /// back and refused with SQLite's own error for a read-only connection, as on a reader.
    /// (Not `PRAGMA query_only`: changing it expires every statement the connection has
    /// prepared.)
    pub(super) fn read_inline<R, E, F>(&self, body: F) -> Result<Result<R, E>, F>
    where
        F: for<'t> FnOnce(&'t mut dyn Tx) -> JobFuture<'t, R, E> + Send + 'static,
        E: From<sqlx::Error>,
    {
        self.run_inline(body, transact_read)
    }

    /// Runs `body` right here with `transaction` (which begins and commits it) if a connection
    /// is idle; otherwise hands it back.
    fn run_inline<R, E, F>(
        &self,
        body: F,
        transaction: impl FnOnce(&mut Connection, F) -> Result<R, E>,
    ) -> Result<Result<R, E>, F>
    where
        F: for<'t> FnOnce(&'t mut dyn Tx) -> JobFuture<'t, R, E> + Send + 'static,
        E: From<sqlx::Error>,
    {
        let Some(mut conn) = self.idle() else {
            return Err(body);
        };
        let mut outcome = Err(sqlx::Error::WorkerCrashed.into());
        run(&mut conn, |conn| outcome = transaction(conn, body));
        Ok(outcome)
    }

    /// Waits for the writer thread to park, and keeps it parked until the lease is dropped.
    /// `asker` is where in the code it was asked for, named in the logs when it is slow.
    pub(super) async fn lease(&self, asker: Asker) -> sqlx::Result<Lease> {
        let Jobs::Writer(writer) = &self.jobs else {
            return Err(sqlx::Error::WorkerCrashed);
        };
        let queue = Arc::clone(&writer.0);
        let (granted, on_grant) = tokio::sync::oneshot::channel();
        let (release, on_release) = mpsc::channel::<()>();
        let asked = std::time::Instant::now();
        self.send(Box::new(move |_| {
            let since = std::time::Instant::now();
            *lock(&queue.leased) = Some(asker);
            // Nobody waits any more (the asking future was dropped): nothing to hold.
            if granted.send(()).is_ok() {
                // Returns when the lease's sender is dropped.
                let _ = on_release.recv();
            }
            *lock(&queue.leased) = None;
            let held = since.elapsed();
            if held > SLOW_LEASE {
                tracing::warn!(
                    held_ms = held.as_millis(),
                    asked_at = %asker,
                    "the SQLite writer was leased for over a second; every write waited"
                );
            }
        }))?;
        // As long as a pooled connection was waited for before the writer thread existed: a
        // lease that never comes is a bug (a lease held across another write), not a queue.
        let outcome = tokio::time::timeout(LEASE_TIMEOUT, on_grant).await;
        let waited = asked.elapsed();
        match outcome {
            Ok(Ok(())) => {
                if waited > SLOW_LEASE {
                    tracing::warn!(
                        waited_ms = waited.as_millis(),
                        asked_at = %asker,
                        "a lease of the SQLite writer waited over a second"
                    );
                }
                Ok(Lease { _release: release })
            }
            Ok(Err(_)) => Err(sqlx::Error::WorkerCrashed),
            Err(_) => {
                let holder = *lock(&writer.0.leased);
                tracing::error!(
                    asked_at = %asker,
                    leased_to = %holder.map_or_else(|| "nobody".to_owned(), ToString::to_string),
                    "a lease of the SQLite writer was not granted in {LEASE_TIMEOUT:?}"
                );
                Err(sqlx::Error::PoolTimedOut)
            }
        }
    }
}

/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(100);

/// The WAL's length, in frames (pages), past which the checkpointing thread has it start over
/// from its beginning: 16,384 frames of 4 KiB, 64 MiB. Each start-over holds the writer for
/// a moment (~1.5 ms under the checkout benchmark's load, where the WAL grows by some
/// 100 MiB/s, and every request in flight waits that long), so not every round: about twice
/// a second at that load.
const RESTART_WAL_AFTER_FRAMES: i64 = 16_384;

/// Starts the thread that checkpoints the WAL, on a connection of its own. Left to SQLite, the
/// commit that grows the WAL past a threshold checkpoints it — on the writer, with the write
/// lock held and an `fsync` or two inside. A passive checkpoint needs no write lock, so here it
/// runs beside the writer instead of in its way.
///
/// A passive checkpoint alone never lets the WAL start over: SQLite rewinds the WAL only when a
/// write transaction begins while every frame in it has been copied back, and under a steady
/// stream of writes there is always a frame written since the checkpoint began — the file grew
/// by gigabytes in a minute of checkouts, and every commit appended to it (a new page of the
/// file each time, not a rewrite of one the kernel already holds). So once the WAL is longer
/// than [`RESTART_WAL_AFTER_FRAMES`], the thread flushes what it copied back so far
/// ([`Files::sync`]), takes the writer's connection (`writer`) for a moment, copies back the
/// few frames written since its last passive checkpoint, and gives it back: the writer's next
/// transaction then finds the WAL fully copied and rewinds it. Readers are not held up; one
/// still reading old frames at that instant only defers the rewind to the next round. The
/// thread stops when the returned sender (and every clone) is dropped.
fn checkpointer(path: &Path, writer: Arc<[Mutex<Connection>]>) -> anyhow::Result<mpsc::Sender<()>> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let (keep, stop) = mpsc::channel::<()>();
    let files = Files::of(path);
    std::thread::Builder::new()
        .name("cartridge-sqlite-checkpoint".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
                if let Err(e) = checkpoint_and_restart(&conn, &writer[0], &files) {
                    tracing::warn!("WAL checkpoint failed: {e}");
                }
            }
        })?;
    Ok(keep)
}

/// One round of the checkpointing thread (see [`checkpointer`]). Passive checkpoints copy
/// back what was written until one finds little to do (each copies what was written while the
/// one before ran); only then, if the WAL is long, is the writer held for the last few frames.
fn checkpoint_and_restart(
    conn: &Connection,
    writer: &Mutex<Connection>,
    files: &Files,
) -> rusqlite::Result<()> {
    const SHORT: std::time::Duration = std::time::Duration::from_millis(2);
    const MOST_PASSES: usize = 4;
    let mut passes = 0;
    let frames = loop {
        let started = std::time::Instant::now();
        let frames = checkpoint(conn)?;
        passes += 1;
        if frames <= RESTART_WAL_AFTER_FRAMES || started.elapsed() < SHORT || passes == MOST_PASSES
        {
            break frames;
        }
    };
    if frames > RESTART_WAL_AFTER_FRAMES {
        // What the holding checkpoint would flush, flushed first without holding anyone: the
        // pages copied back so far; then, after copying back what was written meanwhile, those.
        files.sync();
        checkpoint(conn)?;
        files.sync();
        let _held = writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        checkpoint(conn)?;
    }
    Ok(())
}

/// The database file and its WAL, by path, to be flushed to disk from outside SQLite.
struct Files {
    database: std::path::PathBuf,
    wal: std::path::PathBuf,
}

impl Files {
    fn of(database: &Path) -> Self {
        let mut wal = database.as_os_str().to_owned();
        wal.push("-wal");
        Self {
            database: database.to_owned(),
            wal: wal.into(),
        }
    }

    /// Flushes both files' written pages to disk (`fdatasync`). The checkpoint that holds the
    /// writer must flush the WAL before it copies frames back and the database file after, and
    /// a flush takes as long as what is unflushed: the passive checkpoints leave the pages they
    /// copy back unflushed in the database file (SQLite flushes it only when a checkpoint has
    /// copied the whole WAL), and under the checkout benchmark's load the writer was held
    /// 4–5 ms on average, mostly in that flush. With the files flushed here first, unheld, it
    /// is held ~1.5 ms. A failure here only leaves the work to the held checkpoint, so it is
    /// logged, not returned.
    fn sync(&self) {
        for path in [&self.database, &self.wal] {
            if let Err(e) = std::fs::File::open(path).and_then(|file| file.sync_data()) {
                tracing::debug!("flushing {} before a WAL restart: {e}", path.display());
            }
        }
    }
}

/// A passive checkpoint; returns how many frames the WAL holds.
fn checkpoint(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| row.get(1))
}

fn serve_reads(
    conn: &Mutex<Connection>,
    queue: &Mutex<mpsc::Receiver<Alone>>,
    queued: &AtomicUsize,
) {
    loop {
        // The queue's lock is held only while waiting for the next job, never while running
        // one.
        let next = match queue.lock() {
            Ok(queue) => queue.recv(),
            Err(_) => return,
        };
        let Ok(job) = next else { return };
        queued.fetch_sub(1, Ordering::AcqRel);
        run(&mut lock(conn), job);
    }
}

/// `mutex` locked; a poisoned one as usable as any (a panic never unwinds through a held lock
/// here: jobs are caught inside it, and `run` rolls back what a job left open).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The writer's jobs, in the order they were asked for, and who serves them: at most one
/// thread at a time, either a caller's ([`WriteQueue::push`]) or the writer thread
/// ([`serve_writes`]). A job pushed while someone serves is theirs to run.
#[derive(Default)]
struct WriteQueue {
    state: Mutex<Waiting>,
    /// Wakes the writer thread: the queue was handed to it, or the last handle went.
    handed: std::sync::Condvar,
    /// Where the lease the writer thread is parked under was asked for, if it is.
    leased: Mutex<Option<Asker>>,
}

#[derive(Default)]
struct Waiting {
    jobs: std::collections::VecDeque<Job>,
    /// Someone serves the queue.
    served: bool,
    /// The one serving it is (or is about to be) the writer thread.
    by_thread: bool,
    /// Every handle is gone: the writer thread stops once the queue is empty.
    closed: bool,
}

/// What `Threads` holds of the writer's queue: when the last clone goes, the writer thread
/// stops.
struct WriterHandle(Arc<WriteQueue>);

impl Drop for WriterHandle {
    fn drop(&mut self) {
        lock(&self.0.state).closed = true;
        self.0.handed.notify_one();
    }
}

impl WriteQueue {
    /// Queues `job`; if nobody serves the queue, serves it on this thread.
    fn push(&self, job: Job, conn: &Mutex<Connection>, queued: &AtomicUsize) {
        let mut waiting = lock(&self.state);
        waiting.jobs.push_back(job);
        queued.fetch_add(1, Ordering::AcqRel);
        if waiting.served {
            return;
        }
        waiting.served = true;
        drop(waiting);
        let unwinding = HandOverOnUnwind(self);
        self.serve_here(conn, queued);
        std::mem::forget(unwinding);
    }

    /// Serves one group on this thread — the write bodies waiting now and those asked for
    /// while it runs — unless that means a wait: the connection is held by someone else, or a
    /// lease is next (it parks the thread that runs it). Whatever is left then goes to the
    /// writer thread. (Serving on here until the queue is empty was tried: groups came out
    /// smaller, since the writer thread's wake-up is what lets later bodies gather, and at 32
    /// checkouts in flight each cost a fifth more CPU in commits.)
    fn serve_here(&self, conn: &Mutex<Connection>, queued: &AtomicUsize) {
        let mut conn = match conn.try_lock() {
            Ok(conn) => conn,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return self.hand_over(),
        };
        // The queue holds at least the job just pushed, and only the one serving it pops.
        let Some(first) = self.next_body(queued) else {
            return self.hand_over();
        };
        group(&mut conn, first, || self.next_body(queued));
        drop(conn);
        let mut waiting = lock(&self.state);
        if waiting.jobs.is_empty() {
            waiting.served = false;
        } else {
            drop(waiting);
            self.hand_over();
        }
    }

    /// The next job if it is a write body (a lease waits for the writer thread).
    fn next_body(&self, queued: &AtomicUsize) -> Option<Grouped> {
        let mut waiting = lock(&self.state);
        match waiting.jobs.pop_front() {
            Some(Job::Grouped(body)) => {
                queued.fetch_sub(1, Ordering::AcqRel);
                Some(body)
            }
            Some(alone @ Job::Alone(_)) => {
                waiting.jobs.push_front(alone);
                None
            }
            None => None,
        }
    }

    /// Hands the queue, still served, to the writer thread.
    fn hand_over(&self) {
        lock(&self.state).by_thread = true;
        self.handed.notify_one();
    }
}

/// Hands the queue to the writer thread if serving it on a caller's thread panics, so that it
/// is never left served by nobody.
struct HandOverOnUnwind<'q>(&'q WriteQueue);

impl Drop for HandOverOnUnwind<'_> {
    fn drop(&mut self) {
        self.0.hand_over();
    }
}

/// The writer thread: serves the queue whenever it is handed over, until it is empty; stops
/// when every handle is gone and nothing is left to run.
fn serve_writes(queue: &WriteQueue, conn: &Mutex<Connection>, queued: &AtomicUsize) {
    loop {
        let job = {
            let mut waiting = lock(&queue.state);
            loop {
                if waiting.by_thread {
                    match waiting.jobs.pop_front() {
                        Some(job) => break job,
                        None => {
                            waiting.by_thread = false;
                            waiting.served = false;
                        }
                    }
                }
                if waiting.closed && !waiting.served {
                    return;
                }
                waiting = queue
                    .handed
                    .wait(waiting)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
        };
        queued.fetch_sub(1, Ordering::AcqRel);
        let mut conn = lock(conn);
        match job {
            Job::Alone(alone) => run(&mut conn, alone),
            Job::Grouped(first) => group(&mut conn, first, || queue.next_body(queued)),
        }
    }
}

/// Group commit: runs `first` and the write bodies `next` yields (up to [`GROUP_MAX`] in all)
/// in one transaction, each after the first inside a savepoint of its own, and commits them
/// together. A body that fails is rolled back to its savepoint (the first: the transaction is
/// rolled back, and the group ends there) and answered at once; the others are answered after
/// the commit, with its outcome. Under load this turns many small commits — each writing its
/// pages to the WAL and taking and dropping the file locks — into one.
fn group(conn: &mut Connection, first: Grouped, mut next: impl FnMut() -> Option<Grouped>) {
    if let Err(e) = control(conn, "BEGIN IMMEDIATE") {
        if let Some(settle) = first(Err(&e)) {
            settle(Err(&e));
        }
        return;
    }
    let Some(settle) = first(Ok(Slot::First(conn))) else {
        // The first body failed, and the transaction holds nothing but what it did.
        if !conn.is_autocommit() {
            let _ = control(conn, "ROLLBACK");
        }
        return;
    };
    let mut ran = 1;
    let mut settles = vec![settle];
    // A transaction SQLite rolled back by itself (an I/O error, say) takes no more bodies.
    while ran < GROUP_MAX && !conn.is_autocommit() {
        let Some(body) = next() else { break };
        ran += 1;
        settles.extend(body(Ok(Slot::Joined(conn))));
    }
    let commit = if conn.is_autocommit() {
        Err(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ABORT),
            Some("the transaction was rolled back before it could commit".into()),
        ))
    } else {
        control(conn, "COMMIT")
    };
    if !conn.is_autocommit() {
        let _ = control(conn, "ROLLBACK");
    }
    for settle in settles {
        settle(commit.as_ref().map(|_| ()));
    }
}

/// Wraps a write body as a [`Grouped`] job; `answer` gets its outcome.
fn grouped<R, E, F>(body: F, answer: impl FnOnce(Result<R, E>) + Send + 'static) -> Grouped
where
    F: for<'t> FnOnce(&'t mut dyn Tx) -> JobFuture<'t, R, E> + Send + 'static,
    R: Send + 'static,
    E: From<sqlx::Error> + Send + 'static,
{
    Box::new(move |slot| {
        let outcome = match slot {
            Ok(Slot::First(conn)) => caught(conn, body),
            Ok(Slot::Joined(conn)) => in_savepoint(conn, body),
            Err(e) => Err(SqliteError::wrap(copy_error(e)).into()),
        };
        match outcome {
            Ok(value) => Some(Box::new(move |commit: Result<(), &rusqlite::Error>| {
                answer(
                    commit
                        .map(|()| value)
                        .map_err(|e| SqliteError::wrap(copy_error(e)).into()),
                );
            })),
            Err(e) => {
                answer(Err(e));
                None
            }
        }
    })
}

/// Runs `body` to completion; a panic in it is its error.
fn caught<R, E, F>(conn: &mut Connection, body: F) -> Result<R, E>
where
    F: for<'t> FnOnce(&'t mut dyn Tx) -> JobFuture<'t, R, E>,
    E: From<sqlx::Error>,
{
    match std::panic::catch_unwind(AssertUnwindSafe(|| poll_once(conn, body))) {
        Ok(outcome) => outcome,
        Err(_) => {
            tracing::error!("a database transaction panicked; it was rolled back");
            Err(sqlx::Error::WorkerCrashed.into())
        }
    }
}

/// Runs `body` inside a savepoint of the open transaction: released when it returns `Ok`,
/// rolled back to otherwise (an error, a body that awaited something else, a panic).
fn in_savepoint<R, E, F>(conn: &mut Connection, body: F) -> Result<R, E>
where
    F: for<'t> FnOnce(&'t mut dyn Tx) -> JobFuture<'t, R, E>,
    E: From<sqlx::Error>,
{
    let fixed = |conn: &Connection, sql: &str| -> Result<(), E> {
        control(conn, sql).map_err(|e| SqliteError::wrap(e).into())
    };
    fixed(conn, "SAVEPOINT body")?;
    let outcome = caught(conn, body);
    let outcome = outcome.and_then(|value| fixed(conn, "RELEASE body").map(|()| value));
    if outcome.is_err() && !conn.is_autocommit() {
        let _ = fixed(conn, "ROLLBACK TO body");
        let _ = fixed(conn, "RELEASE body");
    }
    outcome
}

/// Runs a transaction-control statement (`BEGIN`, `COMMIT`, `SAVEPOINT`…) from the
/// connection's statement cache: parsed once per connection, not once per transaction.
fn control(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// The same error again (rusqlite's errors are not `Clone`): one commit answers many bodies.
fn copy_error(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, message) => {
            rusqlite::Error::SqliteFailure(*code, message.clone())
        }
        other => rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR),
            Some(other.to_string()),
        ),
    }
}

/// Runs `job` on `conn` and rolls back whatever it left open. A panicking body must not take
/// the connection (and every later write) with it: it is caught here, and its caller sees no
/// answer (a crashed worker).
fn run(conn: &mut Connection, job: impl FnOnce(&mut Connection)) {
    if std::panic::catch_unwind(AssertUnwindSafe(|| job(conn))).is_err() {
        tracing::error!("a database transaction panicked; it was rolled back");
    }
    if !conn.is_autocommit() {
        let _ = control(conn, "ROLLBACK");
    }
}

/// Runs a read body in a transaction of its own.
fn transact<R, E, F>(conn: &mut Connection, begin: &str, body: F) -> Result<R, E>
where
    F: for<'t> FnOnce(&'t mut dyn Tx) -> JobFuture<'t, R, E>,
    E: From<sqlx::Error>,
{
    control(conn, begin).map_err(SqliteError::wrap)?;
    let value = poll_once(conn, body)?;
    control(conn, "COMMIT").map_err(SqliteError::wrap)?;
    Ok(value)
    // An open transaction (an error above) is rolled back by `run`.
}

/// Runs a read body in a read transaction of its own on a connection that could write: what
/// it changed (if anything) is left for [`run`] to roll back, and it gets the error a read-only
/// connection gives.
fn transact_read<R, E, F>(conn: &mut Connection, body: F) -> Result<R, E>
where
    F: for<'t> FnOnce(&'t mut dyn Tx) -> JobFuture<'t, R, E>,
    E: From<sqlx::Error>,
{
    let before = conn.total_changes();
    control(conn, "BEGIN").map_err(SqliteError::wrap)?;
    let value = poll_once(conn, body)?;
    if conn.total_changes() != before {
        return Err(SqliteError::wrap(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_READONLY),
            Some("attempt to write in a read body".into()),
        ))
        .into());
    }
    control(conn, "COMMIT").map_err(SqliteError::wrap)?;
    Ok(value)
}

/// Runs `body` to completion: every statement it awaits is ready at once.
fn poll_once<R, E, F>(conn: &mut Connection, body: F) -> Result<R, E>
where
    F: for<'t> FnOnce(&'t mut dyn Tx) -> JobFuture<'t, R, E>,
    E: From<sqlx::Error>,
{
    let mut tx = SqliteTx(conn);
    let mut future = body(&mut tx);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(outcome) => outcome,
        // Anything else a body awaits (a lock, a plugin call) does not belong inside a
        // transaction.
        Poll::Pending => Err(sqlx::Error::Protocol(
            "a write transaction awaited something other than its own statements".into(),
        )
        .into()),
    }
}

/// `sql` with its `$n` parameters written `?n` (a `$` followed by a digit; the host's SQL has
/// no such text inside a literal).
fn numbered(sql: &str) -> std::borrow::Cow<'_, str> {
    let bytes = sql.as_bytes();
    let mut out: Option<String> = None;
    let mut copied = 0;
    let mut at = 0;
    // `find` looks for the byte a word at a time: statements are long, their parameters few.
    while let Some(found) = sql[at..].find('$') {
        let dollar = at + found;
        at = dollar + 1;
        if bytes.get(at).is_some_and(u8::is_ascii_digit) {
            let out = out.get_or_insert_with(|| String::with_capacity(sql.len()));
            out.push_str(&sql[copied..dollar]);
            out.push('?');
            copied = at;
        }
    }
    match out {
        None => sql.into(),
        Some(mut out) => {
            out.push_str(&sql[copied..]);
            out.into()
        }
    }
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
    /// appears, as sqlx binds it. SQLite reads `$1` as a *named* parameter, and finding out
    /// which slot a name took is a linear search per slot (a tenth of the writer's statement
    /// time in a profile); `?1` is the same parameter by number, so `$n` is spelled `?n`.
    fn prepare<'s>(
        conn: &'s Connection,
        sql: &str,
        args: &[Value],
    ) -> rusqlite::Result<rusqlite::CachedStatement<'s>> {
        let mut statement = conn.prepare_cached(&numbered(sql))?;
        let count = statement.parameter_count();
        if count > args.len() {
            return Err(rusqlite::Error::InvalidParameterCount(count, args.len()));
        }
        // Slots no `?n` names stay unbound (NULL); none is read.
        for (index, value) in args.iter().enumerate().take(count) {
            statement.raw_bind_parameter(index + 1, value)?;
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

#[cfg(test)]
mod tests {
    use super::{
        Arc, Connection, Files, JobFuture, Jobs, Mutex, OpenFlags, Ordering,
        RESTART_WAL_AFTER_FRAMES, SLOW_LEASE, Threads, Tx, checkpoint, checkpoint_and_restart,
        lock, numbered,
    };

    /// A new database in WAL with one table, and the writer's threads on it.
    fn writer_on_a_new_database() -> anyhow::Result<(tempfile::TempDir, Threads)> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("writer.db");
        Connection::open(&path)?
            .execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (n INTEGER PRIMARY KEY);")?;
        let writer = Threads::writer(&path)?;
        Ok((dir, writer))
    }

    fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a runtime")
            .block_on(future)
    }

    /// A write body inserting `n`; answers the name of the thread it ran on.
    fn insert(n: i64) -> impl for<'t> FnOnce(&'t mut dyn Tx) -> JobFuture<'t, String, sqlx::Error> {
        move |tx: &mut dyn Tx| -> JobFuture<'_, String, sqlx::Error> {
            Box::pin(async move {
                tx.execute("INSERT INTO t VALUES ($1)", &[n.into()]).await?;
                Ok(std::thread::current().name().unwrap_or("").to_owned())
            })
        }
    }

    fn count(writer: &Threads) -> i64 {
        lock(&writer.conns[0])
            .query_row("SELECT COUNT(*) FROM t", [], |row| row.get(0))
            .expect("a count")
    }

    /// A write asked for while another thread serves the writer's queue joins that thread's
    /// group and runs there: no hand-off to the writer thread.
    #[test]
    fn a_write_asked_for_while_another_thread_serves_runs_in_its_group() -> anyhow::Result<()> {
        let (_dir, writer) = writer_on_a_new_database()?;
        let (started, on_start) = std::sync::mpsc::channel();
        let serving = {
            let (writer, queued) = (writer.clone(), writer.queued.clone());
            std::thread::Builder::new()
                .name("serving".into())
                .spawn(move || {
                    block_on(
                        writer.transact(move |tx: &mut dyn Tx| -> JobFuture<'_, _, _> {
                            Box::pin(async move {
                                tx.execute("INSERT INTO t VALUES (1)", &[]).await?;
                                let _ = started.send(());
                                // Until the second write is queued behind this one.
                                while queued.load(Ordering::Acquire) == 0 {
                                    std::thread::sleep(std::time::Duration::from_millis(1));
                                }
                                Ok::<_, sqlx::Error>(())
                            })
                        }),
                    )
                })?
        };
        on_start.recv()?;
        let ran_on = block_on(writer.transact(insert(2)))?;
        serving.join().expect("the serving thread")?;
        assert_eq!(ran_on, "serving");
        assert_eq!(count(&writer), 2);
        Ok(())
    }

    /// While the writer's connection is held by someone else (a read, the checkpointing
    /// thread), a write is handed to the writer thread, which waits for it; the caller's
    /// thread does not.
    #[test]
    fn a_write_finding_the_connection_held_is_handed_to_the_writer_thread() -> anyhow::Result<()> {
        let (_dir, writer) = writer_on_a_new_database()?;
        let (held, on_held) = std::sync::mpsc::channel();
        let holder = {
            let writer = writer.clone();
            std::thread::spawn(move || {
                let _conn = lock(&writer.conns[0]);
                let _ = held.send(());
                std::thread::sleep(std::time::Duration::from_millis(50));
            })
        };
        on_held.recv()?;
        let ran_on = block_on(writer.transact(insert(1)))?;
        holder.join().expect("the holding thread");
        assert_eq!(ran_on, "cartridge-sqlite-writer");
        // Once the writer thread has found the queue empty (it answers a body before it
        // looks again, and on a busy machine that can take a while), the queue is served by
        // nobody: the next write runs right here.
        let super::Jobs::Writer(handle) = &writer.jobs else {
            anyhow::bail!("not a writer");
        };
        let started = std::time::Instant::now();
        while lock(&handle.0.state).served {
            anyhow::ensure!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "the writer thread never let the queue go"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let ran_on = block_on(writer.transact(insert(2)))?;
        assert_eq!(ran_on, std::thread::current().name().unwrap_or(""));
        assert_eq!(count(&writer), 2);
        Ok(())
    }

    /// A write asked for after a lease waits until the lease is dropped: jobs run in the
    /// order they are asked for.
    #[test]
    fn a_write_behind_a_lease_waits_for_it() -> anyhow::Result<()> {
        let (_dir, writer) = writer_on_a_new_database()?;
        let lease = block_on(writer.lease(std::panic::Location::caller()))?;
        let write = {
            let writer = writer.clone();
            std::thread::spawn(move || block_on(writer.transact(insert(1))))
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!write.is_finished(), "the write ran under the lease");
        drop(lease);
        assert_eq!(
            write.join().expect("the writing thread")?,
            "cartridge-sqlite-writer"
        );
        assert_eq!(count(&writer), 1);
        Ok(())
    }

    /// What a test's `tracing` events printed, as text.
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Logs {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            lock(&self.0).extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Logs {
        fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync {
            let logs = self.clone();
            tracing_subscriber::fmt()
                .with_writer(move || logs.clone())
                .with_ansi(false)
                .finish()
        }

        fn text(&self) -> String {
            String::from_utf8_lossy(lock(&self.0).as_slice()).into_owned()
        }
    }

    /// A lease granted after more than [`SLOW_LEASE`] is logged with the place that asked for
    /// it, and while a lease is held the writer knows whose it is (named if another is never
    /// granted).
    #[test]
    fn a_slow_lease_is_logged_with_where_it_was_asked_for() -> anyhow::Result<()> {
        let (_dir, writer) = writer_on_a_new_database()?;
        let Jobs::Writer(handle) = &writer.jobs else {
            anyhow::bail!("not the writer");
        };
        let first = std::panic::Location::caller();
        let lease = block_on(writer.lease(first))?;
        assert_eq!(*lock(&handle.0.leased), Some(first));
        let releasing = std::thread::spawn(move || {
            std::thread::sleep(SLOW_LEASE + std::time::Duration::from_millis(200));
            drop(lease);
        });
        let logs = Logs::default();
        let second = std::panic::Location::caller();
        let lease = tracing::subscriber::with_default(logs.subscriber(), || {
            block_on(writer.lease(second))
        })?;
        releasing.join().expect("the releasing thread");
        assert_eq!(*lock(&handle.0.leased), Some(second));
        let text = logs.text();
        assert!(
            text.contains("waited over a second") && text.contains(&second.to_string()),
            "{text}"
        );
        drop(lease);
        // The writer thread forgets the holder once it goes on.
        block_on(writer.transact(insert(1)))?;
        assert_eq!(*lock(&handle.0.leased), None);
        Ok(())
    }

    /// A WAL past the restart length is copied back (flushed ahead, then with the writer held)
    /// so that the writer's next transaction starts it over, and no row is lost on the way.
    #[test]
    fn a_long_wal_starts_over_after_a_round_and_keeps_every_row() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("wal.db");
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE;
        let writer = Connection::open_with_flags(&path, flags)?;
        writer.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
             PRAGMA wal_autocheckpoint = 0; CREATE TABLE t (n INTEGER PRIMARY KEY, b BLOB);",
        )?;
        // About a page per row: a WAL longer than the restart length.
        let rows = RESTART_WAL_AFTER_FRAMES + 1_000;
        writer.execute(
            "WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < ?1) \
             INSERT INTO t SELECT n, randomblob(4000) FROM s",
            [rows],
        )?;
        let checkpointer = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)?;
        assert!(checkpoint(&checkpointer)? > RESTART_WAL_AFTER_FRAMES);
        let writer = Mutex::new(writer);
        checkpoint_and_restart(&checkpointer, &writer, &Files::of(&path))?;
        let writer = writer
            .into_inner()
            .map_err(|_| anyhow::anyhow!("poisoned"))?;
        writer.execute("INSERT INTO t VALUES (?1, x'00')", [rows + 1])?;
        // The WAL holds only that last commit's frames now.
        let frames = checkpoint(&checkpointer)?;
        assert!(frames < 10, "the WAL did not start over: {frames} frames");
        let reader = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let count: i64 = reader.query_row("SELECT COUNT(*) FROM t", [], |row| row.get(0))?;
        assert_eq!(count, rows + 1);
        Ok(())
    }

    #[test]
    fn dollar_parameters_are_numbered_and_other_text_is_left_alone() {
        assert_eq!(
            numbered("SELECT $1, $12 FROM t WHERE a = $1 AND b = '$' AND c = $x"),
            "SELECT ?1, ?12 FROM t WHERE a = ?1 AND b = '$' AND c = $x"
        );
        assert_eq!(numbered("SELECT 1"), "SELECT 1");
        assert_eq!(numbered("$"), "$");
        assert_eq!(numbered("x$9"), "x?9");
    }
}
