//! `Idempotency-Key` for requests that must not run twice (checkout; payment operations).
//!
//! The first request with a key runs and its response is stored; a repeat with the same body
//! gets the stored response again, a repeat with a different body gets 422, and a repeat while
//! the first still runs gets 409 and may retry. Keys are scoped (e.g. to a cart) and kept at
//! least 24 hours. A response that is a server-side failure (5xx) is not stored: the operation
//! was rolled back, so a retry may run it again.
//!
//! Handlers use [`once`]: it claims the key, runs the operation only when the key is new,
//! stores its answer and replays it afterwards; [`once_within`] does the same for an operation
//! that looks up, claims and finishes the key inside its own transactions (checkout). [`key`] reads a
//! required header, [`optional_key`] one that a route accepts but does not insist on. The
//! table itself is [`crate::idempotency`]'s.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;
use serde_json::value::RawValue;

use super::ApiError;
use crate::db::Db;
use crate::idempotency::{Key, Progress, Seen};

/// What an idempotent request answers: its status and its body, as the JSON text it is sent,
/// stored and replayed in (serialized once).
pub type Answer = (StatusCode, Box<RawValue>);

/// An [`Answer`] as a handler's response.
pub struct Answered(pub Answer);

impl axum::response::IntoResponse for Answered {
    fn into_response(self) -> axum::response::Response {
        let (status, body) = self.0;
        (status, axum::Json(body)).into_response()
    }
}

/// The longest key accepted.
pub const MAX_KEY_LEN: usize = 255;

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
    operation: impl Future<Output = Result<Answer, ApiError>> + Send + 'static,
) -> Result<Answer, ApiError> {
    let Some(key) = key else {
        return detached(async move { Ok(answer(operation.await).0) }).await;
    };
    let (db, key) = (db.clone(), Arc::new(Key::new(scope, key, body, now)));
    detached(async move {
        let claim = key.clone();
        let claimed = db
            .write(move |tx| Box::pin(async move { claim.claim_in(tx).await }))
            .await
            .map_err(|e| ApiError::internal(&e))?;
        if !claimed {
            return replay(&db, &key).await;
        }
        key.advance(Progress::Claimed);
        settle(&db, &key, operation.await).await
    })
    .await
}

/// [`once`] for an operation that looks the key up in its own first read, claims it in its
/// own first write transaction and stores its answer in its own last one ([`Key::seen_in`],
/// [`Key::claim_in`], [`Key::finish_in`], advancing the key as each commits): a checkout, which
/// so needs no reads or transactions for the key of its own. An operation that finds the key
/// used, or loses the claim to a repeat racing it (its transaction rolled back), stops with
/// the key advanced to [`Progress::Taken`] and is answered as a repeat; one refused before it
/// began ([`Progress::Refused`]) is answered as it is, and nothing is stored. Whatever else the
/// operation did not store is stored after it, as [`once`] would.
pub async fn once_within<Op, Fut>(
    db: &Db,
    scope: &str,
    key: &str,
    body: &Value,
    now: i64,
    operation: Op,
) -> Result<Answer, ApiError>
where
    Op: FnOnce(Arc<Key>) -> Fut,
    Fut: Future<Output = Result<Answer, ApiError>> + Send + 'static,
{
    let (db, key) = (db.clone(), Arc::new(Key::new(scope, key, body, now)));
    let operation = operation(key.clone());
    detached(async move {
        let outcome = operation.await;
        match key.progress() {
            Progress::Finished | Progress::Refused => outcome,
            Progress::Taken => replay(&db, &key).await,
            Progress::Claimed | Progress::Unclaimed => settle(&db, &key, outcome).await,
        }
    })
    .await
}

/// Runs `work` as a task of its own, started at once, and returns its outcome (see [`once`]).
fn detached(
    work: impl Future<Output = Result<Answer, ApiError>> + Send + 'static,
) -> impl Future<Output = Result<Answer, ApiError>> {
    let task = tokio::spawn(work);
    async move { task.await.map_err(|e| ApiError::internal(&e))? }
}

/// An operation's outcome as a response, and whether to keep it for repeats.
fn answer(outcome: Result<Answer, ApiError>) -> (Answer, bool) {
    match outcome {
        Ok((status, body)) => ((status, body), !status.is_server_error()),
        Err(e) => {
            let keep = e.is_final();
            ((e.status(), json(&e.body())), keep)
        }
    }
}

/// `value` as the JSON text an [`Answer`] carries.
pub fn json<T: serde::Serialize + ?Sized>(value: &T) -> Box<RawValue> {
    // Serializing a value the host built cannot fail (no map has non-string keys).
    serde_json::value::to_raw_value(value).unwrap_or_default()
}

/// Stores what the operation answered with the key (or forgets the key: `keep` false, a
/// server failure that a retry may mend), as far as the operation did not.
async fn settle(
    db: &Db,
    key: &Arc<Key>,
    outcome: Result<Answer, ApiError>,
) -> Result<Answer, ApiError> {
    let ((status, body), keep) = answer(outcome);
    let (claimed, stored, code) = (
        key.progress() == Progress::Claimed,
        body.get().to_owned(),
        status.as_u16(),
    );
    let key_ = key.clone();
    let result = db
        .write(move |tx| {
            Box::pin(async move {
                match (claimed, keep) {
                    (true, true) => key_.finish_in(tx, code, &stored).await,
                    (true, false) => key_.forget_in(tx).await,
                    (false, true) => key_.claim_finished_in(tx, code, &stored).await,
                    (false, false) => Ok(()),
                }
            })
        })
        .await;
    if let Err(e) = result {
        tracing::error!(key = ?key, "could not store the idempotent response: {e}");
    }
    Ok((status, body))
}

/// The answer to a repeat of a request whose key is already claimed, if it is.
async fn repeat(db: &Db, key: &Arc<Key>) -> Result<Option<Result<Answer, ApiError>>, ApiError> {
    let look = key.clone();
    let seen = db
        .read(move |tx| Box::pin(async move { look.seen_in(tx).await }))
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(match seen {
        Seen::New => None,
        Seen::OtherRequest => Some(Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request",
        ))),
        Seen::Running => Some(Err(in_progress())),
        Seen::Done(status, body) => Some(Ok((
            StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            body,
        ))),
    })
}

/// The answer to a request that lost the claim of its key to another.
async fn replay(db: &Db, key: &Arc<Key>) -> Result<Answer, ApiError> {
    // Gone again already (the other request failed and forgot it): retrying is right.
    repeat(db, key).await?.unwrap_or_else(|| Err(in_progress()))
}

fn in_progress() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "request_in_progress",
        "a request with this Idempotency-Key is still running; retry shortly",
    )
}

pub use crate::idempotency::{ABANDONED_AFTER_MS, KEEP_MS, sweep};
