//! `/webhooks`: deliveries from payment gateways. No bearer token: a delivery is authenticated
//! by its signature, which the connector plugin named in the path verifies with its secret
//! (`parse-webhook` in the payment contract; Stripe's `t=…,v1=HMAC` scheme, 300 s tolerance).
//!
//! `POST /webhooks/payments/{plugin}` hands the raw body and the headers (less credentials a
//! gateway never sends: `authorization`, `cookie`, `proxy-authorization`) to the plugin, stores
//! the verified event and applies it ([`crate::payment_events`]), and answers 200 only after
//! that is committed — a gateway that gets anything else delivers again. A repeated event id
//! is answered 200 with `duplicate: true` and changes nothing. A delivery the connector
//! decodes as `other` is offered to its `parse-dispute` too, when it exports
//! `payment-disputes`: a dispute is stored as such.
//!
//! Refusals, each with a stable code: an unknown connector is 404 `unknown_plugin`; a missing,
//! forged or stale signature (outside the connector's tolerance) is 400 `invalid_signature` —
//! the contract's `invalid-signature` covers all three, the message says which; a body the
//! connector cannot decode is 400 `malformed_webhook`; a connector that fails is 502 with its
//! named error.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use sha2::{Digest, Sha256};

use super::{ApiError, AppState, now_ms};
use crate::payment_events::{self, Delivery, Recorded};
use crate::plugin::HookKind;
use crate::plugin::bindings::payment::{WebhookError, WebhookEventKind, WebhookRequest};

/// Headers never passed to a plugin.
const WITHHELD_HEADERS: &[&str] = &["authorization", "cookie", "proxy-authorization"];

pub(super) fn routes() -> Router<AppState> {
    Router::new().route("/payments/{plugin}", post(payment_webhook))
}

/// The headers as the contract wants them: names lower-cased (as `http` keeps them), values
/// that are not text left out.
fn forwarded(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| !WITHHELD_HEADERS.contains(&name.as_str()))
        .filter_map(|(name, value)| {
            Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned()))
        })
        .collect()
}

async fn payment_webhook(
    State(state): State<AppState>,
    Path(plugin): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<Delivered>, ApiError> {
    let connector = state
        .plugin(&plugin)
        .filter(|p| p.hook() == HookKind::Payment)
        .ok_or_else(|| {
            ApiError::not_found("unknown_plugin", format!("no payment connector {plugin:?}"))
        })?;
    let body = body?;
    let now = now_ms();
    let request = WebhookRequest {
        headers: forwarded(&headers),
        body: body.to_vec(),
        now,
    };
    let event = connector
        .parse_webhook(&request)
        .await?
        .output
        .map_err(|e| refused(&plugin, e))?;
    // A delivery about something other than a payment step may report a dispute.
    let dispute = if event.kind == WebhookEventKind::Other && connector.reads_disputes() {
        connector
            .parse_dispute(&request)
            .await?
            .output
            .map_err(|e| refused(&plugin, e))?
    } else {
        None
    };
    let delivery = match &dispute {
        Some(dispute) => Delivery::Dispute(dispute),
        None => Delivery::Payment(&event),
    };
    let digest = hex::encode(Sha256::digest(&body));
    let recorded = payment_events::record(&state.db, &plugin, delivery, &digest, now)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let (duplicate, outcome) = match recorded {
        Recorded::New(outcome) => (false, outcome.as_str().to_owned()),
        Recorded::Duplicate(outcome) => (true, outcome),
    };
    let event_id = delivery.event_id().to_owned();
    tracing::info!(plugin, event = %event_id, duplicate, outcome, "payment webhook");
    Ok(Json(Delivered {
        event_id,
        duplicate,
        outcome,
    }))
}

/// The answer to a delivery its connector would not accept.
fn refused(plugin: &str, error: WebhookError) -> ApiError {
    match error {
        WebhookError::InvalidSignature(why) => {
            tracing::warn!(plugin, "webhook refused: {why}");
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_signature",
                format!("the signature does not verify: {why}"),
            )
        }
        WebhookError::Malformed(why) => ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_webhook",
            format!("the event cannot be decoded: {why}"),
        ),
    }
}

/// A delivery acknowledged: the gateway stops retrying it.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub(crate) struct Delivered {
    /// The gateway's id of the event.
    event_id: String,
    /// Whether it had been delivered before (stored and applied once, then only acknowledged).
    duplicate: bool,
    /// What applying it did (the first delivery's outcome, for a duplicate).
    outcome: String,
}
