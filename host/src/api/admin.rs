//! `/admin`: catalog, inventory and plugins, for merchants and operators. Every handler takes
//! [`Admin`], so no route here answers without an admin token.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Admin, ApiError, AppState, now_ms};
use crate::catalog::NewProduct;
use crate::shipping::{NewShippingMethod, ShippingMethodUpdate};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/products", post(create_product))
        .route("/products/{id}", get(product).patch(update_product))
        .route("/products/{id}/archive", post(archive_product))
        .route("/categories", post(create_category))
        .route("/locations", post(upsert_location))
        .route("/inventory/{sku}", get(stock))
        .route("/inventory/{sku}/{location}/adjust", post(adjust_stock))
        .route("/orders", get(orders))
        .route("/orders/{id}", get(order))
        .route("/orders/{id}/fulfil", post(fulfil))
        .route("/orders/{id}/capture", post(capture))
        .route("/orders/{id}/cancel", post(cancel))
        .route("/orders/{id}/refunds", post(refund))
        .route("/orders/{id}/returns", post(receive_return))
        .route(
            "/shipping-methods",
            get(shipping_methods).post(create_shipping_method),
        )
        .route(
            "/shipping-methods/{id}",
            get(shipping_method).put(replace_shipping_method),
        )
}

async fn create_shipping_method(
    _: Admin,
    State(state): State<AppState>,
    body: Result<Json<NewShippingMethod>, JsonRejection>,
) -> Result<(axum::http::StatusCode, Json<Value>), ApiError> {
    let Json(new) = body?;
    let method = state.shipping.create(&new, now_ms()).await?;
    Ok((axum::http::StatusCode::CREATED, Json(json!(method))))
}

async fn shipping_methods(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        json!({"shipping_methods": state.shipping.list().await?}),
    ))
}

async fn shipping_method(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(state.shipping.get(&id).await?)))
}

/// Replaces a method's name, carrier, countries, position, rates and status (its code stays).
/// Carts that chose it see the change when next read; orders keep what they were priced with.
async fn replace_shipping_method(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<ShippingMethodUpdate>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(update) = body?;
    Ok(Json(json!(
        state.shipping.replace(&id, &update, now_ms()).await?
    )))
}

async fn create_product(
    _: Admin,
    State(state): State<AppState>,
    body: Result<Json<NewProduct>, JsonRejection>,
) -> Result<(axum::http::StatusCode, Json<Value>), ApiError> {
    let Json(new) = body?;
    let product = state.catalog.create_product(&new, now_ms()).await?;
    Ok((axum::http::StatusCode::CREATED, Json(json!(product))))
}

async fn product(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let product = state
        .catalog
        .product(&id, true)
        .await?
        .ok_or_else(|| ApiError::not_found("not_found", format!("no product {id:?}")))?;
    Ok(Json(json!(product)))
}

async fn update_product(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<crate::catalog::ProductUpdate>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(update) = body?;
    Ok(Json(json!(
        state.catalog.update(&id, &update, now_ms()).await?
    )))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OrderQuery {
    status: Option<String>,
    email: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

async fn orders(
    _: Admin,
    State(state): State<AppState>,
    query: Result<axum::extract::Query<OrderQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let axum::extract::Query(q) = query?;
    let orders = state
        .orders
        .search(
            q.status.as_deref(),
            q.email.as_deref(),
            q.limit.unwrap_or(20),
            q.offset.unwrap_or(0),
        )
        .await?;
    Ok(Json(json!({"orders": orders})))
}

async fn archive_product(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(state.catalog.archive(&id, now_ms()).await?)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewCategory {
    id: String,
    name: String,
    parent: Option<String>,
}

async fn create_category(
    _: Admin,
    State(state): State<AppState>,
    body: Result<Json<NewCategory>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(c) = body?;
    state
        .catalog
        .create_category(&c.id, c.parent.as_deref(), &c.name)
        .await?;
    Ok(Json(
        json!({"id": c.id, "name": c.name, "parent": c.parent}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Location {
    id: String,
    name: String,
    #[serde(default = "default_priority")]
    priority: i32,
}

fn default_priority() -> i32 {
    100
}

async fn upsert_location(
    _: Admin,
    State(state): State<AppState>,
    body: Result<Json<Location>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(l) = body?;
    if !crate::catalog::is_sku(&l.id) || l.name.trim().is_empty() {
        return Err(ApiError::invalid(
            "a location needs an id (letters, digits, '.', '_', '-') and a name",
        ));
    }
    state
        .inventory
        .upsert_location(&l.id, &l.name, l.priority)
        .await?;
    Ok(Json(
        json!({"id": l.id, "name": l.name, "priority": l.priority}),
    ))
}

async fn stock(
    _: Admin,
    State(state): State<AppState>,
    Path(sku): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        json!({"levels": state.inventory.levels(&sku, now_ms()).await?}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Adjustment {
    delta: i64,
    reason: String,
}

async fn adjust_stock(
    _: Admin,
    State(state): State<AppState>,
    Path((sku, location)): Path<(String, String)>,
    body: Result<Json<Adjustment>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(a) = body?;
    if a.delta == 0 || a.delta.unsigned_abs() > 1_000_000 {
        return Err(ApiError::invalid(
            "delta must be non-zero and at most 1,000,000 either way",
        ));
    }
    if a.reason.trim().is_empty() || a.reason.len() > 64 {
        return Err(ApiError::invalid("reason must be 1 to 64 characters"));
    }
    let level = state
        .inventory
        .adjust(&sku, &location, a.delta, &a.reason, now_ms())
        .await?;
    Ok(Json(json!(level)))
}

async fn order(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.orders.order(&id).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fulfilment {
    #[serde(default)]
    carrier: Option<String>,
    #[serde(default)]
    tracking: Option<String>,
    /// What ships; everything left when absent.
    #[serde(default)]
    lines: Option<Vec<ReturnLine>>,
}

async fn fulfil(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<Option<Fulfilment>>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(f) = body?;
    let f = f.unwrap_or(Fulfilment {
        carrier: None,
        tracking: None,
        lines: None,
    });
    let items = f.lines.map(|lines| {
        lines
            .into_iter()
            .map(|l| (l.sku, i64::from(l.quantity)))
            .collect()
    });
    Ok(Json(
        state
            .orders
            .fulfil(&id, items, f.carrier, f.tracking, now_ms())
            .await?,
    ))
}

/// The payment connector that took the order's payment.
async fn connector_of(
    state: &AppState,
    id: &str,
) -> Result<std::sync::Arc<crate::plugin::Plugin>, ApiError> {
    let order = state.orders.order(id).await?;
    let recorded = order["payment"]["plugin"].as_str().unwrap_or_default();
    let name = recorded.split('@').next().unwrap_or_default();
    state.plugin(name).ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "connector_unavailable",
            format!("the payment connector {recorded:?} is not installed"),
        )
    })
}

/// What a capture may say; an empty body captures everything authorised.
#[derive(Deserialize, serde::Serialize, Default)]
#[serde(deny_unknown_fields)]
struct Capture {
    #[serde(default)]
    amount: Option<u32>,
}

/// A JSON body that may be left out entirely (empty, or `null`).
pub(super) fn optional_body<T: serde::de::DeserializeOwned + Default>(
    bytes: &[u8],
) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    match serde_json::from_slice::<Option<T>>(bytes) {
        Ok(value) => Ok(value.unwrap_or_default()),
        Err(e) if e.is_data() => Err(ApiError::invalid(e.to_string())),
        Err(e) => Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "malformed_json",
            e.to_string(),
        )),
    }
}

// Money routes and `Idempotency-Key`.
//
// Refunds *require* a key: two identical partial refunds are both legitimate, so without a key
// a retried request (a timeout, a double click) would refund twice and nothing could tell.
// Capture and cancel *accept* one, as Stripe accepts a key on every POST without insisting:
// each is a one-way transition of the order, so a repeat without a key can never move money
// twice — it gets 409 `invalid_transition` — while a repeat with the key gets the first
// answer replayed, which is what a client retrying after a timeout wants to see. Keys are
// scoped to the order and the operation and kept 24 hours.

/// Captures the authorised payment, all of it or `amount`. Takes an optional
/// `Idempotency-Key` (see above).
async fn capture(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<(axum::http::StatusCode, Json<Value>), ApiError> {
    let key = super::idempotency::optional_key(&headers)?;
    let capture: Capture = optional_body(&body)?;
    let now = now_ms();
    let (scope, canonical, db) = (format!("capture:{id}"), json!(capture), state.db.clone());
    let operation = async move {
        let connector = connector_of(&state, &id).await?;
        let order = state
            .orders
            .capture(&id, capture.amount.map(i64::from), &connector, now)
            .await?;
        Ok::<_, ApiError>((axum::http::StatusCode::OK, order))
    };
    let (status, body) =
        super::idempotency::once(&db, &scope, key.as_deref(), &canonical, now, operation).await?;
    Ok((status, Json(body)))
}

/// Cancels the order: voids or refunds, and restocks. Takes an optional `Idempotency-Key`
/// (see above).
async fn cancel(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<(axum::http::StatusCode, Json<Value>), ApiError> {
    let key = super::idempotency::optional_key(&headers)?;
    let now = now_ms();
    let (scope, db) = (format!("cancel:{id}"), state.db.clone());
    let operation = async move {
        let connector = connector_of(&state, &id).await?;
        let order = state.orders.cancel(&id, &connector, now).await?;
        Ok::<_, ApiError>((axum::http::StatusCode::OK, order))
    };
    let (status, body) =
        super::idempotency::once(&db, &scope, key.as_deref(), &Value::Null, now, operation).await?;
    Ok((status, Json(body)))
}

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct Refund {
    amount: u32,
    #[serde(default)]
    reason: Option<String>,
}

/// Refunds part or all of what was captured. Requires an `Idempotency-Key` (see above).
async fn refund(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    body: Result<Json<Refund>, JsonRejection>,
) -> Result<(axum::http::StatusCode, Json<Value>), ApiError> {
    let key = super::idempotency::key(&headers)?;
    let Json(refund) = body?;
    let now = now_ms();
    let canonical = json!(refund);
    let (scope, db) = (format!("refund:{id}"), state.db.clone());
    // The refund's gateway operation id comes from the key: a retry of this request (after a
    // timeout, whatever happened at the gateway) is the same refund to the gateway.
    let attempt = super::attempt_id("refund", &id, &key);
    let operation = async move {
        let connector = connector_of(&state, &id).await?;
        let order = state
            .orders
            .refund(
                &id,
                i64::from(refund.amount),
                refund.reason,
                &connector,
                &attempt,
                now,
            )
            .await?;
        Ok::<_, ApiError>((axum::http::StatusCode::OK, order))
    };
    let (status, body) =
        super::idempotency::once(&db, &scope, Some(&key), &canonical, now, operation).await?;
    Ok((status, Json(body)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReturnLine {
    sku: String,
    quantity: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Return {
    return_id: String,
    lines: Vec<ReturnLine>,
}

/// Receives a return: the units go back on hand, exactly once per `return_id`.
async fn receive_return(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<Json<Return>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let Json(r) = body?;
    let lines: Vec<(String, i64)> = r
        .lines
        .into_iter()
        .map(|l| (l.sku, i64::from(l.quantity)))
        .collect();
    Ok(Json(
        state
            .orders
            .receive_return(&id, &r.return_id, &lines, now_ms())
            .await?,
    ))
}
