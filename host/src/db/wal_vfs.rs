//! A SQLite VFS over the platform's default one that writes a commit's WAL frames to the file
//! together — one `pwrite` per 124 KiB — instead of two calls per frame.
//!
//! SQLite appends each WAL frame as two writes — its 24-byte header, then the page — so a
//! commit of 37 pages (the checkout benchmark's mean) is 74 system calls, each finding and
//! dirtying the page-cache folios it touches (a frame of 4,120 bytes straddles two): a tenth of
//! the server's CPU under checkout load, all of it on the one writer, which every checkout
//! waits for. Here the WAL file's appends are gathered in memory and written at once when the
//! commit frame's page arrives. SQLite publishes a commit (the WAL index) only after its write
//! of that page returns, so no reader can see a frame that is not in the file; a crash before
//! then loses only frames of a transaction that had not committed, as it would anyway.
//!
//! Only appends are gathered. Before anything else is done with the file — a read, an
//! overwrite (SQLite rewrites frames of its own open transaction in place), a sync, a
//! truncation, a size, a file-control, closing it — what is gathered is written first. If
//! that write fails where SQLite cannot see it (it had been told those appends succeeded),
//! the next commit fails too, so that a log with a hole in it is never published.
//! Every other file (the database, its shared memory, journals) is the default VFS's own,
//! untouched: [`open`] lets the default VFS open the file in place and only swaps the WAL's
//! method table for one whose write, read, sync, truncate, size, file-control and close are
//! these.
//!
//! Only the writer's connection (`sqlite.rs`) opens the database through this VFS; the readers,
//! the checkpointing thread and sqlx's connections use the default one, and all of them share
//! the default VFS's file locks (the same files, opened by the same code). A write through
//! sqlx (a lease) that happens to start the WAL over leaves the writer's handle taking its
//! next appends for overwrites — written at once, as before this VFS — until they pass the
//! furthest offset it wrote itself or it starts the WAL over itself: slower for a while,
//! never wrong.
//!
//! Layout: registration ([`register`]), the file's extra state ([`Gathered`], kept after the
//! default VFS's own file struct in the memory SQLite allocates for it), the methods, tests
//! (one fails a flush on purpose, through a test-only switch in [`flush`]).

// The VFS interface is C's; every unsafe block below says what it relies on.
#![allow(unsafe_code)]

use std::ffi::{CStr, c_int, c_void};
use std::sync::OnceLock;
#[cfg(test)]
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::ffi;

/// The name connections open the database with (`Connection::open_with_flags_and_vfs`).
pub(super) const NAME: &str = "cartridge-wal";
const NAME_C: &CStr = c"cartridge-wal";

/// Gathered bytes past which they are written even before a commit (a large transaction
/// whose pages spill before it commits).
const MAX_GATHERED: usize = 4 << 20;

/// The most one call writes: the unix VFS writes at most 128 KiB − 1 bytes at a time (it masks
/// the length with `0x1ffff`), so a larger commit is written in calls of this size.
const MAX_WRITE: usize = 124 * 1024;

/// Commits whose frames were written together: what a test can check (test builds only).
#[cfg(test)]
pub(super) static WHOLE_COMMITS: AtomicU64 = AtomicU64::new(0);

/// The default VFS and the size of its file struct, which ours extends.
struct Registered {
    default: *mut ffi::sqlite3_vfs,
    default_file_size: usize,
}

// SAFETY: the pointer is to SQLite's default VFS, a static struct it never frees or changes.
unsafe impl Send for Registered {}
unsafe impl Sync for Registered {}

static REGISTERED: OnceLock<Result<Registered, c_int>> = OnceLock::new();
/// The WAL's method table: the default VFS's, with our methods in place of some; and the
/// default's table it was made from. Made from the first WAL opened.
static WAL_METHODS: OnceLock<(usize, ffi::sqlite3_io_methods)> = OnceLock::new();

/// Registers the VFS (once per process); an error if SQLite has no default VFS or refuses.
pub(super) fn register() -> rusqlite::Result<()> {
    let registered = REGISTERED.get_or_init(|| {
        // SAFETY: `sqlite3_vfs_find(NULL)` returns the default VFS, a static struct SQLite
        // owns for the life of the process (or NULL). Reading it is allowed at any time.
        unsafe {
            if ffi::sqlite3_initialize() != ffi::SQLITE_OK {
                return Err(ffi::SQLITE_ERROR);
            }
            let default = ffi::sqlite3_vfs_find(std::ptr::null());
            if default.is_null() {
                return Err(ffi::SQLITE_ERROR);
            }
            let default_file_size = usize::try_from((*default).szOsFile).unwrap_or(0);
            // Our VFS is the default one with our `xOpen`, a larger file struct (ours follows
            // the default's) and our name. Its other methods ignore the VFS pointer they are
            // given or read only fields copied here (`mxPathname`, `pAppData`).
            let mut vfs: ffi::sqlite3_vfs = *default;
            vfs.pNext = std::ptr::null_mut();
            vfs.zName = NAME_C.as_ptr();
            vfs.szOsFile =
                c_int::try_from(gathered_offset(default_file_size) + size_of::<Gathered>())
                    .map_err(|_| ffi::SQLITE_ERROR)?;
            vfs.xOpen = Some(open);
            let vfs = Box::into_raw(Box::new(vfs));
            let rc = ffi::sqlite3_vfs_register(vfs, 0);
            if rc != ffi::SQLITE_OK {
                drop(Box::from_raw(vfs));
                return Err(rc);
            }
            // Ours stays registered (and allocated) for the life of the process.
            Ok(Registered {
                default,
                default_file_size,
            })
        }
    });
    match registered {
        Ok(_) => Ok(()),
        Err(rc) => Err(rusqlite::Error::SqliteFailure(
            ffi::Error::new(*rc),
            Some("could not register the WAL-gathering VFS".into()),
        )),
    }
}

/// What a WAL file holds besides the default VFS's struct.
struct Gathered {
    /// The default VFS's method table for this file, which ours forward to.
    methods: *const ffi::sqlite3_io_methods,
    /// Appended bytes not yet written, from offset `start`.
    bytes: Vec<u8>,
    start: i64,
    /// The end of the furthest write through this handle: a write at or past it (or right
    /// after what is gathered) is an append.
    end: i64,
    /// The last gathered write was a commit frame's header: its page, next, ends the commit.
    commit_page_next: bool,
    /// Gathered bytes failed to reach the file when something other than a write asked for
    /// them (SQLite had been told their writes succeeded): the next commit must fail, so
    /// that SQLite never publishes a log with a hole in it. When SQLite saw the failure and
    /// rolled the transaction back itself (a failed read), the next commit fails as well:
    /// this file cannot tell a new transaction from the failed one going on.
    lost: bool,
}

/// Where [`Gathered`] starts in the file's memory: after the default's struct, aligned.
fn gathered_offset(default_file_size: usize) -> usize {
    default_file_size.next_multiple_of(align_of::<Gathered>())
}

/// The [`Gathered`] of a WAL file opened by [`open`].
///
/// # Safety
/// `file` must be a WAL file opened by [`open`] and not yet closed.
unsafe fn gathered<'f>(file: *mut ffi::sqlite3_file) -> &'f mut Gathered {
    let Some(Ok(registered)) = REGISTERED.get() else {
        unreachable!("a file of this VFS exists only once it is registered")
    };
    // SAFETY (caller): SQLite allocated `szOsFile` bytes for this file, aligned for any
    // struct, and `open` wrote a `Gathered` at this offset; SQLite never uses one file from
    // two threads at once.
    unsafe {
        &mut *file
            .cast::<u8>()
            .add(gathered_offset(registered.default_file_size))
            .cast::<Gathered>()
    }
}

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let Some(Ok(registered)) = REGISTERED.get() else {
        return ffi::SQLITE_ERROR;
    };
    // SAFETY: the default VFS opens the file in the memory SQLite gave us, which is larger
    // than its own struct; with the arguments SQLite passed us.
    unsafe {
        let Some(default_open) = (*registered.default).xOpen else {
            return ffi::SQLITE_ERROR;
        };
        let rc = default_open(registered.default, name, file, flags, out_flags);
        if rc != ffi::SQLITE_OK || flags & ffi::SQLITE_OPEN_WAL == 0 || (*file).pMethods.is_null() {
            return rc;
        }
        let methods = (*file).pMethods;
        let (made_from, ours) = WAL_METHODS.get_or_init(|| {
            let mut ours = *methods;
            ours.xClose = Some(close);
            ours.xRead = Some(read);
            ours.xWrite = Some(write);
            ours.xTruncate = Some(truncate);
            ours.xSync = Some(sync);
            ours.xFileSize = Some(file_size);
            ours.xFileControl = Some(file_control);
            (methods as usize, ours)
        });
        if *made_from != methods as usize {
            // A WAL the default VFS opened with other methods: left as it is.
            return rc;
        }
        std::ptr::write(
            file.cast::<u8>()
                .add(gathered_offset(registered.default_file_size))
                .cast::<Gathered>(),
            Gathered {
                methods,
                bytes: Vec::new(),
                start: 0,
                end: 0,
                commit_page_next: false,
                lost: false,
            },
        );
        (*file).pMethods = ours;
        rc
    }
}

/// Writes what is gathered, if anything.
///
/// # Safety
/// `file` must be a WAL file opened by [`open`] and not yet closed.
unsafe fn flush(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY (caller).
    let g = unsafe { gathered(file) };
    if g.bytes.is_empty() {
        return ffi::SQLITE_OK;
    }
    #[cfg(test)]
    if tests::fail_this_flush() {
        g.bytes.clear();
        return ffi::SQLITE_IOERR_WRITE;
    }
    let mut rc = ffi::SQLITE_OK;
    let mut offset = g.start;
    for chunk in g.bytes.chunks(MAX_WRITE) {
        // SAFETY: the default method on the default's file struct, with a buffer of
        // `chunk.len()` bytes; `g.methods` is the table the default VFS set for this file.
        rc = unsafe {
            match (*g.methods).xWrite {
                Some(write) => write(file, chunk.as_ptr().cast(), chunk.len() as c_int, offset),
                None => ffi::SQLITE_IOERR_WRITE,
            }
        };
        if rc != ffi::SQLITE_OK {
            break;
        }
        offset += chunk.len() as i64;
    }
    g.bytes.clear();
    if g.bytes.capacity() > MAX_GATHERED {
        g.bytes.shrink_to(MAX_GATHERED);
    }
    rc
}

unsafe extern "C" fn write(
    file: *mut ffi::sqlite3_file,
    data: *const c_void,
    amount: c_int,
    offset: i64,
) -> c_int {
    let Ok(length) = usize::try_from(amount) else {
        return ffi::SQLITE_IOERR_WRITE;
    };
    // SAFETY: SQLite calls this only on files `open` gave these methods, with `amount` bytes
    // readable at `data`. Each borrow of the file's state ends before `flush` takes its own.
    unsafe {
        let data = std::slice::from_raw_parts(data.cast::<u8>(), length);
        if offset == 0 {
            // The WAL's header: the log starts over (after a checkpoint), and what follows it
            // is appended again from the start.
            let rc = flush(file);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            let g = gathered(file);
            g.end = 0;
            // Nothing of the transaction writing this header was written before it.
            g.lost = false;
        }
        let append = {
            let g = gathered(file);
            if g.bytes.is_empty() {
                offset >= g.end
            } else {
                offset == g.start + g.bytes.len() as i64
            }
        };
        if !append {
            // An overwrite: what is gathered goes first, then this, as SQLite wrote them.
            let rc = flush(file);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            let g = gathered(file);
            g.end = g.end.max(offset + i64::from(amount));
            return match (*g.methods).xWrite {
                Some(write) => write(file, data.as_ptr().cast(), amount, offset),
                None => ffi::SQLITE_IOERR_WRITE,
            };
        }
        let (commit_ends, full) = {
            let g = gathered(file);
            if g.bytes.is_empty() {
                g.start = offset;
            }
            g.bytes.extend_from_slice(data);
            g.end = g.end.max(offset + i64::from(amount));
            let commit_ends = g.commit_page_next;
            // A frame header is the only 24-byte write; its bytes 4..8 are the database's
            // size in pages after a commit, zero in every other frame's.
            g.commit_page_next = !commit_ends && length == 24 && data[4..8] != [0u8; 4];
            (commit_ends, g.bytes.len() >= MAX_GATHERED)
        };
        if !commit_ends && !full {
            return ffi::SQLITE_OK;
        }
        let rc = flush(file);
        if commit_ends && std::mem::take(&mut gathered(file).lost) {
            return if rc == ffi::SQLITE_OK {
                ffi::SQLITE_IOERR_WRITE
            } else {
                rc
            };
        }
        #[cfg(test)]
        if rc == ffi::SQLITE_OK && commit_ends {
            WHOLE_COMMITS.fetch_add(1, Ordering::Relaxed);
        }
        rc
    }
}

/// [`flush`] for anything but a write: a failure is also remembered for the next commit
/// (see [`Gathered::lost`]).
///
/// # Safety
/// As for [`flush`].
unsafe fn flush_before_other(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY (caller).
    unsafe {
        let rc = flush(file);
        if rc != ffi::SQLITE_OK {
            gathered(file).lost = true;
        }
        rc
    }
}

/// Declares a method that writes what is gathered and then runs the default's.
macro_rules! flushed_first {
    ($name:ident, $field:ident, ($($arg:ident: $ty:ty),*)) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> c_int {
            // SAFETY: SQLite calls this only on files `open` gave these methods, with the
            // arguments the default method takes.
            unsafe {
                let rc = flush_before_other(file);
                if rc != ffi::SQLITE_OK {
                    return rc;
                }
                match (*gathered(file).methods).$field {
                    Some(method) => method(file $(, $arg)*),
                    None => ffi::SQLITE_ERROR,
                }
            }
        }
    };
}

flushed_first!(read, xRead, (data: *mut c_void, amount: c_int, offset: i64));
flushed_first!(sync, xSync, (flags: c_int));
flushed_first!(file_size, xFileSize, (size: *mut i64));
flushed_first!(file_control, xFileControl, (op: c_int, arg: *mut c_void));

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    // SAFETY: as for the other methods.
    unsafe {
        let rc = flush_before_other(file);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        let g = gathered(file);
        g.end = g.end.min(size);
        match (*g.methods).xTruncate {
            Some(truncate) => truncate(file, size),
            None => ffi::SQLITE_IOERR_TRUNCATE,
        }
    }
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: SQLite closes a file once; after the default's close the memory is SQLite's
    // again, so our state is dropped first.
    unsafe {
        let flushed = flush(file);
        let methods = gathered(file).methods;
        std::ptr::drop_in_place(std::ptr::from_mut(gathered(file)));
        (*file).pMethods = methods;
        let closed = match (*methods).xClose {
            Some(close) => close(file),
            None => ffi::SQLITE_OK,
        };
        if flushed != ffi::SQLITE_OK {
            flushed
        } else {
            closed
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::sync::atomic::Ordering;

    use rusqlite::{Connection, OpenFlags, ffi};

    thread_local! {
        /// Flushes on this thread that are to fail (as a full disk would), without writing.
        static FAILING_FLUSHES: Cell<u32> = const { Cell::new(0) };
    }

    /// Whether this flush is one to fail (see [`FAILING_FLUSHES`]).
    pub(super) fn fail_this_flush() -> bool {
        FAILING_FLUSHES.with(|left| {
            let n = left.get();
            left.set(n.saturating_sub(1));
            n > 0
        })
    }

    /// A database in WAL, a connection writing through this VFS and one reading through the
    /// default VFS.
    fn pair(dir: &std::path::Path) -> (Connection, Connection) {
        let path = dir.join("gathered.db");
        Connection::open(&path)
            .and_then(|c| {
                c.execute_batch(
                    "PRAGMA journal_mode = WAL; \
                     CREATE TABLE t (n INTEGER PRIMARY KEY, payload BLOB NOT NULL);",
                )
            })
            .expect("a database");
        super::register().expect("registered");
        let writer = Connection::open_with_flags_and_vfs(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            super::NAME,
        )
        .expect("the writer");
        writer
            .execute_batch("PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0;")
            .expect("pragmas");
        let reader = Connection::open(&path).expect("the reader");
        (writer, reader)
    }

    /// The database file and its WAL copied into `dir/copy` (without the shared memory, as
    /// after a crash) and opened: its rows' count and payload sum, once its integrity checks.
    fn recovered(dir: &std::path::Path, copy: &str) -> (i64, i64) {
        let copy = dir.join(copy);
        std::fs::create_dir(&copy).expect("a directory");
        for suffix in ["", "-wal"] {
            std::fs::copy(
                dir.join(format!("gathered.db{suffix}")),
                copy.join(format!("gathered.db{suffix}")),
            )
            .expect("a copy");
        }
        let recovered = Connection::open(copy.join("gathered.db")).expect("the copy");
        let check: String = recovered
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("a check");
        assert_eq!(check, "ok");
        count_and_sum(&recovered)
    }

    fn count_and_sum(conn: &Connection) -> (i64, i64) {
        conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(length(payload)), 0) FROM t",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("a count")
    }

    /// Commits of one page, of many (past one write call's 124 KiB) and of more than is ever
    /// gathered (4 MiB, written before its commit), before and after the WAL starts over:
    /// another connection sees each commit as soon as it returns, and the WAL file alone
    /// (copied without its shared memory, as after a crash) recovers every one of them.
    #[test]
    fn every_commit_is_in_the_wal_file_when_it_returns() {
        let dir = tempfile::tempdir().expect("a directory");
        let (writer, reader) = pair(dir.path());
        let before = super::WHOLE_COMMITS.load(Ordering::Relaxed);
        let mut expected = (0, 0);
        let mut n = 0;
        for (round, rows) in [1, 60, 1_500, 3, 1, 200].into_iter().enumerate() {
            writer.execute_batch("BEGIN IMMEDIATE").expect("begin");
            for _ in 0..rows {
                n += 1;
                let payload = vec![u8::try_from(n % 251).unwrap_or(0); 3_000];
                writer
                    .execute("INSERT INTO t VALUES (?1, ?2)", (n, payload))
                    .expect("insert");
                expected = (expected.0 + 1, expected.1 + 3_000);
            }
            writer.execute_batch("COMMIT").expect("commit");
            assert_eq!(count_and_sum(&reader), expected, "round {round}");

            assert_eq!(
                recovered(dir.path(), &format!("copy-{round}")),
                expected,
                "round {round}, recovered"
            );

            if round == 2 {
                // Everything checkpointed: the next commit starts the WAL over from its header.
                reader
                    .query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(()))
                    .expect("a checkpoint");
            }
        }
        // Each commit's frames went through the gathering path (the 1,500-row one was also
        // written in parts before it, past 4 MiB).
        assert!(super::WHOLE_COMMITS.load(Ordering::Relaxed) >= before + 6);
    }

    /// Frames a transaction spilled before its commit are gathered; if writing them fails
    /// where SQLite does not hear of it (here a file-control call made on the WAL's file from
    /// outside SQLite), SQLite goes on as if they were in the file. Its commit must then fail
    /// rather than publish a log with a hole in it; what was committed before stays, and the
    /// next transaction commits.
    #[test]
    fn a_commit_fails_when_its_spilled_frames_were_lost() {
        let dir = tempfile::tempdir().expect("a directory");
        let (writer, reader) = pair(dir.path());
        let insert = |from: i64, rows: i64| {
            for n in from..from + rows {
                let payload = vec![u8::try_from(n % 251).unwrap_or(0); 3_000];
                writer
                    .execute("INSERT INTO t VALUES (?1, ?2)", (n, payload))
                    .expect("insert");
            }
        };
        insert(1, 10);
        let committed = count_and_sum(&reader);
        assert_eq!(committed, (10, 30_000));

        // A cache of a few pages: the transaction's pages spill to the WAL as it goes.
        writer
            .execute_batch("PRAGMA cache_size = 8; BEGIN IMMEDIATE")
            .expect("begin");
        insert(100, 200);
        // The WAL's file, as SQLite holds it.
        let mut wal: *mut ffi::sqlite3_file = std::ptr::null_mut();
        // SAFETY: the connection is open and used on this thread only; the op writes the WAL's
        // file pointer (open: the transaction has written frames) into `wal`.
        let rc = unsafe {
            ffi::sqlite3_file_control(
                writer.handle(),
                c"main".as_ptr(),
                ffi::SQLITE_FCNTL_JOURNAL_POINTER,
                (&raw mut wal).cast(),
            )
        };
        assert_eq!(rc, ffi::SQLITE_OK);
        assert!(!wal.is_null());
        // A file-control call on the WAL whose answer SQLite never sees; writing the gathered
        // frames first fails.
        FAILING_FLUSHES.with(|left| left.set(1));
        let mut moved: std::ffi::c_int = 0;
        // SAFETY: `wal` is the open WAL of this connection, used on this thread; the op
        // writes an int.
        let rc = unsafe {
            let control = (*(*wal).pMethods)
                .xFileControl
                .expect("a file-control method");
            control(wal, ffi::SQLITE_FCNTL_HAS_MOVED, (&raw mut moved).cast())
        };
        assert_eq!(
            FAILING_FLUSHES.with(Cell::get),
            0,
            "frames were gathered and their flush failed"
        );
        assert_eq!(rc, ffi::SQLITE_IOERR_WRITE);

        // SQLite goes on: more rows, then the commit, which must fail.
        insert(300, 20);
        let commit = writer.execute_batch("COMMIT");
        assert!(commit.is_err(), "a commit over lost frames succeeded");
        if !writer.is_autocommit() {
            writer.execute_batch("ROLLBACK").expect("rollback");
        }
        assert_eq!(count_and_sum(&reader), committed);

        // The next transaction commits, and the files hold exactly what was committed.
        writer.execute_batch("BEGIN IMMEDIATE").expect("begin");
        insert(400, 5);
        writer.execute_batch("COMMIT").expect("the next commit");
        let expected = (15, 45_000);
        assert_eq!(count_and_sum(&reader), expected);
        assert_eq!(recovered(dir.path(), "copy"), expected);
    }
}
