//! `Idempotency-Key` for requests that must not run twice (checkout; payment operations).
//!
//! The first request with a key runs and its response is stored; a repeat with the same body
//! gets the stored response again, a repeat with a different body gets 422, and a repeat while
//! the first still runs gets 409 and may retry. Keys are scoped (e.g. to a cart) and kept at
//! least 24 hours. A response that is a server-side failure (5xx) is not stored: the operation
//! was rolled back, so a retry may run it again.
//!
//! Handlers use [`once`]: it claims the key, runs the operation only when the key is new,
//! stores its answer and replays it afterwards. [`key`] reads a required header,
//! [`optional_key`] one that a route accepts but does not insist on.

use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::ApiError;
use crate::db::{Db, args};

/// The longest key accepted.
pub const MAX_KEY_LEN: usize = 255;

/// What to do with a request.
enum Begin {
    /// First time: run it, then [`finish`].
    Run,
    /// Seen and finished: answer this.
    Replay(StatusCode, Value),
}

/// The `Idempotency-Key` header, required.
pub fn key(headers: &HeaderMap) -> Result<String, ApiError> {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or_default();
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "idempotency_key_required",
            format!("an Idempotency-Key header of 1 to {MAX_KEY_LEN} characters is required"),
        ));
    }
    Ok(key.to_owned())
}

/// The `Idempotency-Key` header if there is one. A header that is present but empty, too long
/// or not text is refused rather than ignored: the caller meant to be protected.
pub fn optional_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(_) => key(headers).map(Some),
    }
}

/// Runs `operation` at most once per `key` in `scope` and answers with its stored response
/// ever after; without a key it simply runs. `body` is the request's canonical form: the same
/// key with another body is 422, and while the first request runs a repeat is 409.
///
/// An error of `operation` is a response like any other (stored and replayed) unless it is a
/// server-side failure that a retry might mend. The future is not polled when the answer is a
/// replay.
///
/// The whole of it runs as a task of its own: a client that disconnects (or times out) drops
/// its request, but never a money operation half-way, nor the recording of its answer.
pub async fn once(
    db: &Db,
    scope: &str,
    key: Option<&str>,
    body: &Value,
    now: i64,
    operation: impl Future<Output = Result<(StatusCode, Value), ApiError>> + Send + 'static,
) -> Result<(StatusCode, Value), ApiError> {
    let (db, scope, key, body) = (
        db.clone(),
        scope.to_owned(),
        key.map(str::to_owned),
        body.clone(),
    );
    tokio::spawn(async move { run_once(&db, &scope, key.as_deref(), &body, now, operation).await })
        .await
        .map_err(|e| ApiError::internal(&e))?
}

async fn run_once(
    db: &Db,
    scope: &str,
    key: Option<&str>,
    body: &Value,
    now: i64,
    operation: impl Future<Output = Result<(StatusCode, Value), ApiError>>,
) -> Result<(StatusCode, Value), ApiError> {
    let Some(key) = key else {
        return Ok(operation.await.unwrap_or_else(|e| (e.status(), e.body())));
    };
    if let Begin::Replay(status, stored) = begin(db, scope, key, body, now).await? {
        return Ok((status, stored));
    }
    let (status, answer, keep) = match operation.await {
        Ok((status, answer)) => (status, answer, !status.is_server_error()),
        Err(e) => (e.status(), e.body(), e.is_final()),
    };
    finish(db, scope, key, status, &answer, keep).await;
    Ok((status, answer))
}

/// Claims `key` in `scope` for a request whose canonical body is `body`.
async fn begin(db: &Db, scope: &str, key: &str, body: &Value, now: i64) -> Result<Begin, ApiError> {
    let hash = hex::encode(Sha256::digest(body.to_string().as_bytes()));
    let inserted = db
        .execute(
            "INSERT INTO idempotency_keys (scope, key, request_hash, state, created_at) \
             VALUES ($1, $2, $3, 'running', $4) ON CONFLICT (scope, key) DO NOTHING",
            args![scope, key, &hash, now],
        )
        .await
        .map_err(|e| ApiError::internal(&e))?;
    if inserted == 1 {
        return Ok(Begin::Run);
    }
    let row = sqlx::query(
        "SELECT request_hash, state, response_status, response_body FROM idempotency_keys WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .fetch_one(db.reader())
    .await
    .map_err(|e| ApiError::internal(&e))?;
    let stored_hash: String = row
        .try_get("request_hash")
        .map_err(|e| ApiError::internal(&e))?;
    if stored_hash != hash {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request",
        ));
    }
    let state: String = row.try_get("state").map_err(|e| ApiError::internal(&e))?;
    if state != "done" {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "request_in_progress",
            "a request with this Idempotency-Key is still running; retry shortly",
        ));
    }
    let status: i32 = row
        .try_get("response_status")
        .map_err(|e| ApiError::internal(&e))?;
    let body: String = row
        .try_get("response_body")
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Begin::Replay(
        u16::try_from(status)
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::OK),
        serde_json::from_str(&body).unwrap_or(Value::Null),
    ))
}

/// Stores the response of a request that ran, or forgets the key (`keep` false: a server
/// failure that a retry may mend).
async fn finish(db: &Db, scope: &str, key: &str, status: StatusCode, body: &Value, keep: bool) {
    let (sql, values) = if keep {
        (
            "UPDATE idempotency_keys SET state = 'done', response_status = $3, response_body = $4 \
             WHERE scope = $1 AND key = $2",
            args![scope, key, i64::from(status.as_u16()), body.to_string()].to_vec(),
        )
    } else {
        (
            "DELETE FROM idempotency_keys WHERE scope = $1 AND key = $2",
            args![scope, key].to_vec(),
        )
    };
    let result = db.execute(sql, values).await;
    if let Err(e) = result {
        tracing::error!(scope, key, "could not store the idempotent response: {e}");
    }
}

/// How long a stored response is replayed.
pub const KEEP_MS: i64 = 24 * 60 * 60 * 1000;
/// A key still `running` after this long belongs to a request that died with its process; it
/// is released so that the client's retry can run.
pub const ABANDONED_AFTER_MS: i64 = 10 * 60 * 1000;

/// Forgets keys older than [`KEEP_MS`] and releases keys abandoned while running. Returns how
/// many keys were removed.
pub async fn sweep(db: &Db, now: i64) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "DELETE FROM idempotency_keys WHERE created_at < $1 OR (state = 'running' AND created_at < $2)",
    )
    .bind(now - KEEP_MS)
    .bind(now - ABANDONED_AFTER_MS)
    .execute(&mut *db.write_conn().await?)
    .await?
    .rows_affected())
}
