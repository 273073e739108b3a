//! The data layer's write path on both databases: a `Db::write` body commits or rolls back as a
//! whole, binds `$n` arguments by number, reads rows the same way on SQLite and PostgreSQL, and
//! takes turns with sqlx writes without losing any. On SQLite the body runs on the writer
//! thread: one that waits on anything but its own statements is refused, and one that panics
//! does not take the writer down.

use std::sync::Arc;

use cartridge_host::db::{Backend, Db, JobFuture, Tx, Value};
use cartridge_tests::test_databases;

async fn migrated(url: &str) -> Db {
    let db = Db::connect(url).await.expect("connect");
    db.migrate().await.expect("migrate");
    db
}

async fn locations(db: &Db) -> Vec<(String, String, i64)> {
    db.write(|tx| {
        Box::pin(async move {
            let rows = tx
                .fetch(
                    "SELECT id, name, priority FROM stock_locations ORDER BY id",
                    &[],
                )
                .await?;
            rows.iter()
                .map(|r| Ok((r.get("id")?, r.get("name")?, r.get("priority")?)))
                .collect::<sqlx::Result<Vec<_>>>()
        })
    })
    .await
    .expect("read locations")
}

async fn insert(tx: &mut dyn Tx, id: &str, priority: i64) -> sqlx::Result<u64> {
    tx.execute(
        "INSERT INTO stock_locations (id, name, priority) VALUES ($1, $1, $2)",
        &[Value::from(id), Value::from(priority)],
    )
    .await
}

#[derive(Debug)]
enum Refused {
    // Read through `Debug` when an assertion fails.
    #[allow(dead_code)]
    Db(sqlx::Error),
    Mine,
}

impl From<sqlx::Error> for Refused {
    fn from(e: sqlx::Error) -> Self {
        Self::Db(e)
    }
}

#[tokio::test]
async fn a_body_commits_whole_or_not_at_all() {
    for t in test_databases().await {
        let db = migrated(&t.url).await;
        let inserted = db
            .write(|tx| {
                Box::pin(async move {
                    insert(tx, "a", 1).await?;
                    insert(tx, "b", 2).await
                })
            })
            .await
            .expect("write");
        assert_eq!(inserted, 1, "{}", t.backend);

        // The body's own error: everything it wrote is undone.
        let refused = db
            .write(|tx| {
                Box::pin(async move {
                    insert(tx, "c", 3).await?;
                    Err::<(), _>(Refused::Mine)
                })
            })
            .await;
        assert!(matches!(refused, Err(Refused::Mine)), "{}", t.backend);

        // A statement's error: a duplicate key, reported as one, and the insert before it undone.
        let duplicate = db
            .write(|tx| {
                Box::pin(async move {
                    insert(tx, "d", 4).await?;
                    insert(tx, "a", 5).await
                })
            })
            .await
            .expect_err("a duplicate id");
        let kind = duplicate
            .as_database_error()
            .map(|e| e.is_unique_violation());
        assert_eq!(kind, Some(true), "{}: {duplicate}", t.backend);

        assert_eq!(
            locations(&db).await,
            vec![("a".into(), "a".into(), 1), ("b".into(), "b".into(), 2)],
            "{}",
            t.backend
        );
        t.drop_database().await;
    }
}

#[tokio::test]
async fn arguments_bind_by_number_and_rows_read_alike() {
    for t in test_databases().await {
        let db = migrated(&t.url).await;
        let row = db
            .write(|tx| {
                Box::pin(async move {
                    // Out of order and used twice, as sqlx binds them.
                    tx.execute(
                        "INSERT INTO stock_locations (id, name, priority) VALUES ($2, $2 || '-' || $3, $1)",
                        &[Value::from(7_i64), Value::from("x"), Value::from("name")],
                    )
                    .await?;
                    tx.fetch_one(
                        "SELECT id, name, priority, CAST($1 AS BIGINT) AS no_int, \
                         CAST($2 AS TEXT) AS no_text FROM stock_locations WHERE id = $3",
                        &[Value::NullInt, Value::NullText, Value::from("x")],
                    )
                    .await
                })
            })
            .await
            .expect("write");
        assert_eq!(row.text("name").expect("name"), "x-name", "{}", t.backend);
        // PostgreSQL's INTEGER column reads as every integer type does.
        assert_eq!(row.get::<i64>("priority").expect("i64"), 7, "{}", t.backend);
        assert_eq!(row.get::<i32>("priority").expect("i32"), 7, "{}", t.backend);
        assert_eq!(row.get::<Option<i64>>("no_int").expect("null int"), None);
        assert_eq!(row.get::<Option<String>>("no_text").expect("null"), None);
        assert!(row.get::<i64>("no_int").is_err(), "a null is not an i64");
        assert!(row.get::<i64>("name").is_err(), "text is not an i64");
        assert!(row.get::<String>("missing").is_err(), "no such column");

        let missing = db
            .write(|tx| {
                Box::pin(async move {
                    tx.fetch(
                        "SELECT id FROM stock_locations WHERE id = $2",
                        &[Value::from("x")],
                    )
                    .await
                })
            })
            .await;
        assert!(
            missing.is_err(),
            "{}: $2 without a second argument",
            t.backend
        );
        t.drop_database().await;
    }
}

#[tokio::test]
async fn sqlite_refuses_a_body_that_waits_on_something_else() {
    for t in test_databases().await {
        let db = migrated(&t.url).await;
        let outcome = db
            .write(|tx| {
                Box::pin(async move {
                    insert(tx, "a", 1).await?;
                    tokio::task::yield_now().await;
                    insert(tx, "b", 2).await
                })
            })
            .await;
        if db.backend() == Backend::Sqlite {
            let error = outcome.expect_err("refused on the writer thread");
            assert!(
                error.to_string().contains("awaited something other"),
                "{error}"
            );
            assert!(locations(&db).await.is_empty(), "rolled back");
        } else {
            outcome.expect("an ordinary future on PostgreSQL");
            assert_eq!(locations(&db).await.len(), 2);
        }
        t.drop_database().await;
    }
}

#[tokio::test]
async fn sqlite_writer_survives_a_panicking_body() {
    let t = test_databases().await.remove(0);
    assert_eq!(t.backend, "sqlite");
    let db = migrated(&t.url).await;
    let outcome = db
        .write(|tx| {
            Box::pin(async move {
                insert(tx, "a", 1).await?;
                if tx.backend() == Backend::Sqlite {
                    panic!("a bug in a write transaction");
                }
                Ok::<(), sqlx::Error>(())
            })
        })
        .await;
    assert!(outcome.is_err(), "the caller hears of it");
    assert!(locations(&db).await.is_empty(), "rolled back");
    db.write(|tx| Box::pin(async move { insert(tx, "b", 2).await }))
        .await
        .expect("the writer still serves");
    assert_eq!(locations(&db).await.len(), 1);
}

/// Read-modify-write through every write path at once: `Db::write` bodies, sqlx transactions
/// and single sqlx statements. None may lose another's update or fail for the lock.
#[tokio::test]
async fn write_paths_take_turns() {
    for t in test_databases().await {
        let db = migrated(&t.url).await;
        db.write(|tx| Box::pin(async move { insert(tx, "counter", 0).await }))
            .await
            .expect("seed");
        let lock = if db.backend() == Backend::Postgres {
            " FOR UPDATE"
        } else {
            ""
        };
        let read = Arc::<str>::from(format!(
            "SELECT CAST(priority AS BIGINT) AS priority FROM stock_locations WHERE id = 'counter'{lock}"
        ));
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..60 {
            let (db, read) = (db.clone(), read.clone());
            tasks.spawn(async move {
                match n % 3 {
                    0 => db
                        .write(move |tx| {
                            Box::pin(async move {
                                let now: i64 = tx.fetch_one(&read, &[]).await?.get("priority")?;
                                tx.execute(
                                    "UPDATE stock_locations SET priority = $1 WHERE id = 'counter'",
                                    &[Value::from(now + 1)],
                                )
                                .await
                            })
                        })
                        .await
                        .map(drop),
                    1 => {
                        use sqlx::Row;
                        let mut tx = db.begin().await?;
                        let now: i64 = sqlx::query(&read)
                            .fetch_one(&mut *tx)
                            .await?
                            .try_get("priority")?;
                        sqlx::query(
                            "UPDATE stock_locations SET priority = $1 WHERE id = 'counter'",
                        )
                        .bind(now + 1)
                        .execute(&mut *tx)
                        .await?;
                        tx.commit().await
                    }
                    _ => sqlx::query(
                        "UPDATE stock_locations SET priority = priority + 1 WHERE id = 'counter'",
                    )
                    .execute(&mut *db.write_conn().await?)
                    .await
                    .map(drop),
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("task").expect("write");
        }
        assert_eq!(
            locations(&db).await,
            vec![("counter".into(), "counter".into(), 60)],
            "{}",
            t.backend
        );
        t.drop_database().await;
    }
}

/// A read body sees what was committed before it, and on SQLite cannot write: not on a
/// read-only reader, and not on the writer's connection, which an idle writer lends to reads
/// (what the body wrote is rolled back) — and which writes afterwards as before.
#[tokio::test]
async fn read_bodies_read() {
    for t in test_databases().await {
        let db = migrated(&t.url).await;
        db.write(|tx| Box::pin(async move { insert(tx, "a", 1).await }))
            .await
            .expect("write");
        let seen = db
            .read(|tx| {
                Box::pin(async move {
                    tx.fetch_one(
                        "SELECT name FROM stock_locations WHERE id = $1",
                        &[Value::from("a")],
                    )
                    .await?
                    .get::<String>("name")
                })
            })
            .await
            .expect("read");
        assert_eq!(seen, "a", "{}", t.backend);
        if db.backend() == Backend::Sqlite {
            let refused = db
                .read(|tx| Box::pin(async move { insert(tx, "b", 2).await }))
                .await;
            assert!(refused.is_err(), "a reader wrote");
            assert_eq!(locations(&db).await.len(), 1);
            db.write(|tx| Box::pin(async move { insert(tx, "c", 3).await }))
                .await
                .expect("the writer writes after lending its connection to a read");
            assert_eq!(locations(&db).await.len(), 2);
        }
        t.drop_database().await;
    }
}

/// The rows of `stock_locations`, counted by `tx`.
async fn count_locations(tx: &mut dyn Tx) -> sqlx::Result<i64> {
    tx.fetch_one("SELECT COUNT(*) AS n FROM stock_locations", &[])
        .await?
        .get("n")
}

/// A read body that counts the locations, has `other` insert `id` and commit, and counts again.
fn count_around_a_commit(
    other: Db,
    id: &'static str,
) -> impl for<'t> FnOnce(&'t mut dyn Tx) -> JobFuture<'t, (i64, i64), sqlx::Error> + Send + 'static
{
    move |tx| {
        Box::pin(async move {
            let before = count_locations(tx).await?;
            other
                .write(move |w| Box::pin(async move { insert(w, id, 2).await }))
                .await?;
            Ok((before, count_locations(tx).await?))
        })
    }
}

/// A snapshot read's statements agree with each other. On PostgreSQL a row committed between
/// two of them is seen by neither, where a plain read's second statement sees it, and a write
/// in one is refused; on SQLite every read body is one transaction (and awaits nothing but
/// its statements, so nothing can commit in between from inside it).
#[tokio::test]
async fn snapshot_reads_agree_with_themselves() {
    for t in test_databases().await {
        let db = migrated(&t.url).await;
        db.write(|tx| Box::pin(async move { insert(tx, "a", 1).await }))
            .await
            .expect("write");
        if db.backend() != Backend::Postgres {
            let n = db
                .read_snapshot(|tx| Box::pin(async move { count_locations(tx).await }))
                .await
                .expect("read");
            assert_eq!(n, 1);
            t.drop_database().await;
            continue;
        }
        for (snapshot, id, seen) in [(true, "b", (1, 1)), (false, "c", (2, 3))] {
            let body = count_around_a_commit(db.clone(), id);
            let counted = if snapshot {
                db.read_snapshot(body).await
            } else {
                db.read(body).await
            };
            assert_eq!(counted.expect("read"), seen, "snapshot: {snapshot}");
        }
        let refused = db
            .read_snapshot(|tx| Box::pin(async move { insert(tx, "d", 4).await }))
            .await;
        assert!(refused.is_err(), "a snapshot read wrote");
        assert_eq!(locations(&db).await.len(), 3);
        t.drop_database().await;
    }
}

/// A task that loops over reads which complete at once (on SQLite they run inline, on the
/// caller's thread) still lets the other tasks of its runtime run now and then: on a
/// single-threaded runtime, a task spawned before the loop starts must get its turn long
/// before the loop ends.
#[tokio::test(flavor = "current_thread")]
async fn a_loop_of_reads_lets_other_tasks_run() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    const READS: usize = 5_000;
    for t in test_databases().await {
        let db = migrated(&t.url).await;
        let done = Arc::new(AtomicUsize::new(0));
        let seen_at = Arc::new(AtomicUsize::new(usize::MAX));
        let other = tokio::spawn({
            let (done, seen_at) = (done.clone(), seen_at.clone());
            async move { seen_at.store(done.load(Ordering::SeqCst), Ordering::SeqCst) }
        });
        for _ in 0..READS {
            db.read(|tx| {
                Box::pin(async move { tx.fetch("SELECT 1 AS one", &[]).await.map(|r| r.len()) })
            })
            .await
            .expect("read");
            done.fetch_add(1, Ordering::SeqCst);
        }
        other.await.expect("the other task");
        let at = seen_at.load(Ordering::SeqCst);
        assert!(
            at < READS / 2,
            "{}: the other task first ran after {at} of {READS} reads",
            t.backend
        );
        t.drop_database().await;
    }
}

/// Write bodies that queue up behind the writer (here: behind a sqlx write holding it) commit
/// together on SQLite, each in a savepoint of its own: one that fails, panics or breaks a
/// constraint leaves no trace, and the others commit all the same.
#[tokio::test]
async fn queued_bodies_commit_together_each_on_its_own() {
    for t in test_databases().await {
        let db = migrated(&t.url).await;
        let sqlite = db.backend() == Backend::Sqlite;
        let held = db.write_conn().await.expect("hold the writer");
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..24_i64 {
            let db = db.clone();
            tasks.spawn(async move {
                let outcome = db
                    .write(move |tx| {
                        Box::pin(async move {
                            let id = if n % 4 == 3 {
                                "same".to_owned()
                            } else {
                                format!("loc-{n:02}")
                            };
                            insert(tx, &id, n).await?;
                            match n % 4 {
                                0 => Err(Refused::Mine),
                                2 if sqlite => panic!("a bug in body {n}"),
                                2 => Err(Refused::Mine),
                                _ => Ok(id),
                            }
                        })
                    })
                    .await;
                (n, outcome)
            });
        }
        // Let every body queue behind the held writer before it goes on.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        drop(held);
        let mut committed = Vec::new();
        while let Some(done) = tasks.join_next().await {
            let (n, outcome) = done.expect("task");
            match (n % 4, outcome) {
                (1 | 3, Ok(id)) => committed.push(id),
                (3, Err(Refused::Db(e))) => assert!(
                    e.as_database_error()
                        .is_some_and(|e| e.is_unique_violation()),
                    "{e}"
                ),
                (0, Err(Refused::Mine)) | (2, Err(_)) => {}
                (n, outcome) => panic!("{}: body {n}: {outcome:?}", t.backend),
            }
        }
        committed.sort();
        let stored: Vec<String> = locations(&db).await.into_iter().map(|l| l.0).collect();
        assert_eq!(stored, committed, "{}", t.backend);
        assert_eq!(
            stored.len(),
            7,
            "six bodies and one of the same id: {stored:?}"
        );
        t.drop_database().await;
    }
}

/// PostgreSQL: a pooled connection the server dropped while it sat idle (a restart, a
/// failover, an idle-session timeout) is found out before it is handed out (the pool pings
/// it), not by the request that gets it.
#[tokio::test]
async fn postgres_replaces_a_connection_the_server_dropped_while_idle() {
    for t in test_databases().await {
        if t.backend != "postgres" {
            continue;
        }
        let db = migrated(&t.url).await;
        let one = |db: Db| async move {
            db.read(|tx| {
                Box::pin(async move {
                    tx.fetch_one("SELECT 1 AS one", &[])
                        .await?
                        .get::<i64>("one")
                })
            })
            .await
        };
        assert_eq!(one(db.clone()).await.expect("first read"), 1);
        {
            use sqlx::Connection;
            let mut admin = sqlx::PgConnection::connect(&t.url).await.expect("connect");
            let killed = sqlx::query(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
            )
            .fetch_all(&mut admin)
            .await
            .expect("terminate the pool's connections");
            assert!(!killed.is_empty(), "the pool had a connection to drop");
            admin.close().await.expect("close");
        }
        tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
        assert_eq!(
            one(db.clone())
                .await
                .expect("read after the server dropped the connections"),
            1
        );
        drop(db);
        t.drop_database().await;
    }
}

/// PostgreSQL: `write_unsynced` commits without waiting for the WAL flush, for its own
/// transaction only — the connection goes back to the pool as it was, and `write` still waits.
/// Both commit what their bodies wrote.
#[tokio::test]
async fn unsynced_writes_are_unsynced_alone() {
    for t in test_databases().await {
        let db = migrated(&t.url).await;
        // One body at a time: the pool has one connection, so the second write runs where
        // the first did.
        async fn setting(tx: &mut dyn Tx) -> sqlx::Result<Option<String>> {
            if tx.backend() != Backend::Postgres {
                return Ok(None);
            }
            tx.fetch_one("SELECT current_setting('synchronous_commit') AS s", &[])
                .await?
                .get::<String>("s")
                .map(Some)
        }
        let unsynced = db
            .write_unsynced(move |tx| {
                Box::pin(async move {
                    insert(tx, "unsynced", 1).await?;
                    setting(tx).await
                })
            })
            .await
            .expect("unsynced write");
        let synced = db
            .write(move |tx| {
                Box::pin(async move {
                    insert(tx, "synced", 2).await?;
                    setting(tx).await
                })
            })
            .await
            .expect("write");
        if t.backend == "postgres" {
            assert_eq!(unsynced.as_deref(), Some("off"));
            assert_eq!(
                synced.as_deref(),
                Some("on"),
                "the setting ended with its transaction"
            );
        }
        let stored: Vec<String> = locations(&db).await.into_iter().map(|l| l.0).collect();
        assert_eq!(stored, ["synced", "unsynced"], "{}", t.backend);
        t.drop_database().await;
    }
}

/// PostgreSQL: a host opens no more connections than it was given, however many requests
/// want one at once; they take turns.
#[tokio::test]
async fn postgres_pool_keeps_to_its_size() {
    for t in test_databases().await {
        if t.backend != "postgres" {
            continue;
        }
        migrated(&t.url).await;
        let db = Db::connect_with(&t.url, 3).await.expect("connect");
        let mut readers = tokio::task::JoinSet::new();
        for _ in 0..24 {
            let db = db.clone();
            readers.spawn(async move {
                db.read(|tx| {
                    Box::pin(async move {
                        let row = tx
                            .fetch_one(
                                "SELECT CAST(pg_backend_pid() AS BIGINT) AS pid, pg_sleep(0.02)",
                                &[],
                            )
                            .await?;
                        row.get::<i64>("pid")
                    })
                })
                .await
            });
        }
        let mut pids = std::collections::BTreeSet::new();
        while let Some(pid) = readers.join_next().await {
            pids.insert(pid.expect("join").expect("read"));
        }
        assert!(
            (2..=3).contains(&pids.len()),
            "24 reads at once on a pool of 3 ran on {} connections",
            pids.len()
        );
        drop(db);
        t.drop_database().await;
    }
}

/// The salts in a WAL file's header (bytes 16..24), if it has one.
fn wal_salts(path: &str) -> Option<[u8; 8]> {
    use std::io::Read;
    let mut header = [0u8; 24];
    std::fs::File::open(path)
        .ok()?
        .read_exact(&mut header)
        .ok()?;
    header[16..24].try_into().ok()
}

/// SQLite: under a steady stream of writes the WAL still starts over. A passive checkpoint
/// alone never lets it (there is always a frame written since the checkpoint began), and the
/// file grew by the size of everything written — gigabytes in a minute of checkouts.
#[tokio::test]
async fn sqlite_wal_starts_over_under_a_steady_stream_of_writes() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
    const BODY: usize = 32 * 1024;
    // The writers stop once the WAL has started over this often...
    const START_OVERS: usize = 2;
    // ...or, failing that, after this much: some 40 times the length past which the WAL is
    // made to start over.
    const MOST: usize = 1 << 30;
    const WRITERS: usize = 4;
    let t = test_databases().await.remove(0);
    assert_eq!(t.backend, "sqlite");
    let db = migrated(&t.url).await;
    db.execute(
        "CREATE TABLE wal_stream (id INTEGER PRIMARY KEY, body TEXT NOT NULL)",
        &[],
    )
    .await
    .expect("create table");
    let path = t.url.trim_start_matches("sqlite://").to_owned() + "-wal";
    let written = Arc::new(AtomicUsize::new(0));
    let start_overs = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    // The WAL's header as it changes: SQLite writes a new one (new salts) each time the WAL
    // starts over from its beginning, and never otherwise. Watched from a thread of its own:
    // a task on this test's runtime would look only when the writers let it.
    let watcher = {
        let (path, start_overs, done) = (path.clone(), start_overs.clone(), done.clone());
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            while !done.load(Relaxed) {
                if let Some(salts) = wal_salts(&path) {
                    seen.insert(salts);
                    start_overs.store(seen.len().saturating_sub(1), Relaxed);
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    };
    // How often it starts over per byte written depends on how fast the checkpointing thread
    // copies the WAL back (the disk, a loaded machine), so the writers go on until it has
    // started over often enough, not for a fixed amount.
    let mut writers = tokio::task::JoinSet::new();
    for _ in 0..WRITERS {
        let (db, written, start_overs) = (db.clone(), written.clone(), start_overs.clone());
        writers.spawn(async move {
            // Back to back, from several tasks at once: the writer is never idle for long.
            while start_overs.load(Relaxed) < START_OVERS && written.fetch_add(BODY, Relaxed) < MOST
            {
                db.write(|tx| {
                    Box::pin(async move {
                        let body = uuid::Uuid::new_v4().simple().to_string().repeat(BODY / 32);
                        tx.execute(
                            "INSERT INTO wal_stream (body) VALUES ($1)",
                            &[Value::from(body)],
                        )
                        .await?;
                        tx.execute(
                            "DELETE FROM wal_stream WHERE id < (SELECT MAX(id) FROM wal_stream) - 64",
                            &[],
                        )
                        .await
                    })
                })
                .await
                .expect("write");
            }
        });
    }
    while let Some(writer) = writers.join_next().await {
        writer.expect("writer");
    }
    done.store(true, Relaxed);
    watcher.join().expect("watcher");
    // Without the start-over: one header, and a WAL as long as every frame ever written.
    assert!(
        start_overs.load(Relaxed) >= START_OVERS,
        "the WAL started over {} times while {} MiB were written; its file is {} MiB",
        start_overs.load(Relaxed),
        written.load(Relaxed) >> 20,
        std::fs::metadata(&path).map_or(0, |m| m.len()) >> 20
    );
}
