//! Idempotency keys as stored (`idempotency_keys`): looked up, claimed and finished inside any
//! transaction ([`Tx`]), so that an operation can claim its key in its own first write and
//! store its answer in its own last one — a checkout does, which spares it two transactions of
//! their own. The HTTP side (the header, replaying, answering a repeat) is
//! [`crate::api::idempotency`].
//!
//! A key moves `running` (claimed) → `done` (answer stored), or is deleted when its request
//! failed in a way a retry may mend. [`Key`] also tracks how far *this* request took it, so
//! that whoever runs the operation knows what is left to store.

use std::sync::atomic::{AtomicU8, Ordering};

use serde_json::Value;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use crate::db::{Db, Tx, args};

/// How long a stored response is replayed.
pub const KEEP_MS: i64 = 24 * 60 * 60 * 1000;
/// A key still `running` after this long belongs to a request that died with its process; it
/// is released so that the client's retry can run.
pub const ABANDONED_AFTER_MS: i64 = 10 * 60 * 1000;

/// Forgets keys older than [`KEEP_MS`] and releases keys abandoned while running. Returns how
/// many keys were removed.
pub async fn sweep(db: &Db, now: i64) -> sqlx::Result<u64> {
    db.execute(
        "DELETE FROM idempotency_keys WHERE created_at < $1 OR (state = 'running' AND created_at < $2)",
        args![now - KEEP_MS, now - ABANDONED_AFTER_MS],
    )
    .await
}

/// Claims a key: inserts it `running`, unless a request holds it.
pub(crate) const CLAIM: &str = "INSERT INTO idempotency_keys (scope, key, request_hash, state, created_at) \
     VALUES ($1, $2, $3, 'running', $4) ON CONFLICT (scope, key) DO NOTHING";

/// The statement that stores a key's answer, its arguments ([`Key::finish_args`]) numbered
/// from `$first`: one text per position, so a statement that carries it as a part of a
/// `WITH` can put it after its own arguments.
pub(crate) fn finish_sql(first: usize) -> String {
    let n = |i: usize| first + i;
    format!(
        "UPDATE idempotency_keys SET state = 'done', response_status = ${}, response_body = ${} \
         WHERE scope = ${} AND key = ${}",
        n(2),
        n(3),
        n(0),
        n(1)
    )
}

/// One request's key: the scope it is unique in, the key, the hash of the request's canonical
/// body, and the time of the request.
#[derive(Debug)]
pub struct Key {
    scope: String,
    key: String,
    hash: String,
    now: i64,
    progress: AtomicU8,
}

/// How far this request has taken its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Not claimed (yet).
    Unclaimed,
    /// Claimed by this request, and the claim committed.
    Claimed,
    /// This request's answer is stored with it.
    Finished,
    /// Another request with the same key claimed it first.
    Taken,
    /// Refused before it began: the caller could not reach what the request names (no such
    /// cart, or not theirs). Nothing is stored with the key — a retry with credentials that
    /// reach it runs anew, and a stranger's requests cost no write.
    Refused,
}

/// What the store says about a key.
#[derive(Debug, Clone)]
pub enum Seen {
    /// No request has claimed it.
    New,
    /// Claimed by a request with another body.
    OtherRequest,
    /// Claimed by the same request, which is still running.
    Running,
    /// The same request finished with this status and answer (JSON, as it was sent).
    Done(u16, Box<RawValue>),
}

impl Key {
    /// The key `key` in `scope` for a request whose canonical body is `body`.
    pub fn new(scope: &str, key: &str, body: &Value, now: i64) -> Self {
        Self {
            scope: scope.to_owned(),
            key: key.to_owned(),
            hash: hex::encode(Sha256::digest(body.to_string().as_bytes())),
            now,
            progress: AtomicU8::new(0),
        }
    }

    /// Its scope, key and request hash, as stored.
    pub fn parts(&self) -> (&str, &str, &str) {
        (&self.scope, &self.key, &self.hash)
    }

    /// The arguments of [`CLAIM`] for this key.
    pub(crate) fn claim_args(&self) -> [crate::db::Value; 4] {
        args![&self.scope, &self.key, &self.hash, self.now]
    }

    /// How far this request has taken the key.
    pub fn progress(&self) -> Progress {
        match self.progress.load(Ordering::Acquire) {
            0 => Progress::Unclaimed,
            1 => Progress::Claimed,
            2 => Progress::Finished,
            3 => Progress::Taken,
            _ => Progress::Refused,
        }
    }

    /// Records how far this request has taken the key; called once the transaction that did
    /// it has committed (or, for [`Progress::Taken`], once the claim was refused).
    pub fn advance(&self, to: Progress) {
        let value = match to {
            Progress::Unclaimed => 0,
            Progress::Claimed => 1,
            Progress::Finished => 2,
            Progress::Taken => 3,
            Progress::Refused => 4,
        };
        self.progress.store(value, Ordering::Release);
    }

    /// What the store says about the key.
    pub async fn seen_in(&self, tx: &mut dyn Tx) -> sqlx::Result<Seen> {
        let rows = tx
            .fetch(
                "SELECT request_hash, state, response_status, response_body FROM idempotency_keys \
                 WHERE scope = $1 AND key = $2",
                &args![&self.scope, &self.key],
            )
            .await?;
        let Some(row) = rows.first() else {
            return Ok(Seen::New);
        };
        if row.get::<String>("request_hash")? != self.hash {
            return Ok(Seen::OtherRequest);
        }
        if row.get::<String>("state")? != "done" {
            return Ok(Seen::Running);
        }
        let status: Option<i64> = row.get("response_status")?;
        let body: Option<String> = row.get("response_body")?;
        Ok(Seen::Done(
            status.and_then(|s| u16::try_from(s).ok()).unwrap_or(200),
            body.and_then(|b| RawValue::from_string(b).ok())
                .unwrap_or_default(),
        ))
    }

    /// Claims the key for this request; `false` if a request already holds it. The claim
    /// lasts if the transaction commits.
    pub async fn claim_in(&self, tx: &mut dyn Tx) -> sqlx::Result<bool> {
        Ok(tx.execute(CLAIM, &self.claim_args()).await? == 1)
    }

    /// Stores this request's answer (`body`, serialized JSON — serialized before the
    /// transaction, not while it holds the write lock) with the key it claimed.
    pub async fn finish_in(&self, tx: &mut dyn Tx, status: u16, body: &str) -> sqlx::Result<()> {
        static FINISH: crate::db::SqlByCount = crate::db::SqlByCount::new();
        tx.execute(&FINISH.get(1, finish_sql), &self.finish_args(status, body))
            .await
            .map(drop)
    }

    /// The arguments of [`finish_sql`]: this key, and the answer to store with it.
    pub(crate) fn finish_args(&self, status: u16, body: &str) -> [crate::db::Value; 4] {
        args![&self.scope, &self.key, i64::from(status), body]
    }

    /// Claims the key and stores the answer (serialized) at once, for a request that ended
    /// before it claimed (a refusal); nothing if another request holds the key meanwhile.
    pub async fn claim_finished_in(
        &self,
        tx: &mut dyn Tx,
        status: u16,
        body: &str,
    ) -> sqlx::Result<()> {
        tx.execute(
            "INSERT INTO idempotency_keys \
               (scope, key, request_hash, state, response_status, response_body, created_at) \
             VALUES ($1, $2, $3, 'done', $4, $5, $6) ON CONFLICT (scope, key) DO NOTHING",
            &args![
                &self.scope,
                &self.key,
                &self.hash,
                i64::from(status),
                body,
                self.now
            ],
        )
        .await
        .map(drop)
    }

    /// Forgets the key this request claimed (its failure may be mended by a retry).
    pub async fn forget_in(&self, tx: &mut dyn Tx) -> sqlx::Result<()> {
        tx.execute(
            "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2",
            &args![&self.scope, &self.key],
        )
        .await
        .map(drop)
    }
}
