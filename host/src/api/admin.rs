//! `/admin`: catalog, inventory and plugins, for merchants and operators. Every handler takes
//! [`Admin`], so no route here answers without an admin token.

use axum::extract::{Path, State};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{Admin, ApiError, AppState, now_ms};
use crate::catalog::NewProduct;
use crate::shipping::{NewShippingMethod, ShippingMethod, ShippingMethodUpdate};

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
        .route("/customers", get(customers))
        .route("/customers/{id}", get(customer))
        .route("/customers/{id}/tags", put(set_customer_tags))
        .route("/checkout-attempts", get(checkout_attempts))
        .route("/checkout-attempts/{id}", delete(dismiss_checkout_attempt))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CustomerQuery {
    /// Only the customer with this email (case-insensitive).
    email: Option<String>,
    /// Only customers in this segment.
    tag: Option<String>,
    /// At most this many (1 to 100).
    limit: Option<u32>,
    /// Skip this many.
    offset: Option<u32>,
}

async fn customers(
    _: Admin,
    State(state): State<AppState>,
    query: Result<axum::extract::Query<CustomerQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<crate::customers::ProfileList>, ApiError> {
    let axum::extract::Query(q) = query?;
    let customers = state
        .customers
        .search(
            q.email.as_deref(),
            q.tag.as_deref(),
            q.limit.unwrap_or(20),
            q.offset.unwrap_or(0),
        )
        .await?;
    Ok(Json(crate::customers::ProfileList { customers }))
}

async fn customer(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<crate::customers::Profile>, ApiError> {
    Ok(Json(state.customers.profile(&id).await?))
}

/// A customer's segments, replacing the ones they had.
#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CustomerTags {
    /// At most 20, each 1 to 40 of `a`-`z`, `0`-`9`, `-` and `_` (upper case is lowered);
    /// empty to clear them.
    tags: Vec<String>,
}

async fn set_customer_tags(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<super::JsonObject<CustomerTags>, ApiError>,
) -> Result<Json<crate::customers::Profile>, ApiError> {
    let super::JsonObject(body) = body?;
    Ok(Json(state.customers.set_tags(&id, &body.tags).await?))
}

/// The most checkout attempts one listing shows.
const ATTEMPTS_LISTED: i64 = 500;

/// Checkouts not yet settled: in flight, waiting for the recovery sweep, or unresolved (their
/// connector cannot look payments up), oldest first.
async fn checkout_attempts(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<CheckoutAttempts>, ApiError> {
    let attempts = crate::recovery::list(&state.db, now_ms(), ATTEMPTS_LISTED)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(CheckoutAttempts { attempts }))
}

/// The checkout attempts not yet settled, oldest first.
#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct CheckoutAttempts {
    /// At most 500 of them.
    attempts: Vec<crate::recovery::AttemptView>,
}

/// A checkout attempt the operator dismissed.
#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct Dismissed {
    /// The attempt's order id.
    dismissed: String,
}

/// Every shipping method, active and archived.
#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct ShippingMethods {
    /// By position, then code.
    shipping_methods: Vec<crate::shipping::ShippingMethod>,
}

/// A SKU's stock at each location that holds it.
#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct StockLevels {
    /// One per location, by allocation order.
    levels: Vec<crate::inventory::StockLevel>,
}

/// Forgets an unresolved checkout attempt the operator has reconciled at the gateway.
async fn dismiss_checkout_attempt(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Dismissed>, ApiError> {
    match crate::recovery::dismiss(&state.db, &id)
        .await
        .map_err(|e| ApiError::internal(&e))?
    {
        Some(true) => Ok(Json(Dismissed { dismissed: id })),
        Some(false) => Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "invalid_state",
            "only an unresolved checkout attempt can be dismissed: this one is still in flight or with the recovery sweep",
        )),
        None => Err(ApiError::not_found(
            "not_found",
            format!("no checkout attempt {id:?}"),
        )),
    }
}

async fn create_shipping_method(
    _: Admin,
    State(state): State<AppState>,
    body: Result<super::JsonObject<NewShippingMethod>, ApiError>,
) -> Result<(axum::http::StatusCode, Json<ShippingMethod>), ApiError> {
    let super::JsonObject(new) = body?;
    let method = state.shipping.create(&new, now_ms()).await?;
    Ok((axum::http::StatusCode::CREATED, Json(method)))
}

async fn shipping_methods(
    _: Admin,
    State(state): State<AppState>,
) -> Result<Json<ShippingMethods>, ApiError> {
    Ok(Json(ShippingMethods {
        shipping_methods: state.shipping.list().await?,
    }))
}

async fn shipping_method(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ShippingMethod>, ApiError> {
    Ok(Json(state.shipping.get(&id).await?))
}

/// Replaces a method's name, carrier, countries, position, rates and status (its code stays).
/// Carts that chose it see the change when next read; orders keep what they were priced with.
async fn replace_shipping_method(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<super::JsonObject<ShippingMethodUpdate>, ApiError>,
) -> Result<Json<ShippingMethod>, ApiError> {
    let super::JsonObject(update) = body?;
    Ok(Json(state.shipping.replace(&id, &update, now_ms()).await?))
}

async fn create_product(
    _: Admin,
    State(state): State<AppState>,
    body: Result<super::JsonObject<NewProduct>, ApiError>,
) -> Result<(axum::http::StatusCode, Json<crate::catalog::Product>), ApiError> {
    let super::JsonObject(new) = body?;
    let product = state.catalog.create_product(&new, now_ms()).await?;
    Ok((axum::http::StatusCode::CREATED, Json(product)))
}

async fn product(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<crate::catalog::Product>, ApiError> {
    let product = state
        .catalog
        .product(&id, true)
        .await?
        .ok_or_else(|| ApiError::not_found("not_found", format!("no product {id:?}")))?;
    Ok(Json(product))
}

async fn update_product(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<super::JsonObject<crate::catalog::ProductUpdate>, ApiError>,
) -> Result<Json<crate::catalog::Product>, ApiError> {
    let super::JsonObject(update) = body?;
    Ok(Json(state.catalog.update(&id, &update, now_ms()).await?))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct OrderQuery {
    /// Only orders in this status.
    status: Option<String>,
    /// Only orders placed with this email (case-insensitive).
    email: Option<String>,
    /// Only orders with a dispute in this status: `inquiry`, `inquiry_closed`, `open` (the
    /// chargebacks still to answer), `won` or `lost`.
    dispute: Option<String>,
    /// At most this many (1 to 100).
    limit: Option<u32>,
    /// Skip this many.
    offset: Option<u32>,
}

async fn orders(
    _: Admin,
    State(state): State<AppState>,
    query: Result<axum::extract::Query<OrderQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<crate::orders::OrderList>, ApiError> {
    let axum::extract::Query(q) = query?;
    let orders = state
        .orders
        .search(
            q.status.as_deref(),
            q.email.as_deref(),
            q.dispute.as_deref(),
            q.limit.unwrap_or(20),
            q.offset.unwrap_or(0),
        )
        .await?;
    Ok(Json(crate::orders::OrderList { orders }))
}

async fn archive_product(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<crate::catalog::Product>, ApiError> {
    Ok(Json(state.catalog.archive(&id, now_ms()).await?))
}

/// A category: what an admin sends to create one, and what the API answers.
#[derive(Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Category {
    /// The category's id.
    id: String,
    /// Its name.
    name: String,
    /// The parent category's id; a top-level category when absent.
    parent: Option<String>,
}

async fn create_category(
    _: Admin,
    State(state): State<AppState>,
    body: Result<super::JsonObject<Category>, ApiError>,
) -> Result<Json<Category>, ApiError> {
    let super::JsonObject(c) = body?;
    state
        .catalog
        .create_category(&c.id, c.parent.as_deref(), &c.name)
        .await?;
    Ok(Json(c))
}

/// A stock location: what an admin sends to create or update one, and what the API answers.
#[derive(Deserialize, Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Location {
    /// The location's id; an existing id is updated.
    id: String,
    /// Its name.
    name: String,
    /// Allocation order: lower is drawn from first (default 100).
    #[serde(default = "default_priority")]
    priority: i32,
}

fn default_priority() -> i32 {
    100
}

async fn upsert_location(
    _: Admin,
    State(state): State<AppState>,
    body: Result<super::JsonObject<Location>, ApiError>,
) -> Result<Json<Location>, ApiError> {
    let super::JsonObject(l) = body?;
    if !crate::catalog::is_sku(&l.id) || l.name.trim().is_empty() {
        return Err(ApiError::invalid(
            "a location needs an id (letters, digits, '.', '_', '-') and a name",
        ));
    }
    state
        .inventory
        .upsert_location(&l.id, &l.name, l.priority)
        .await?;
    Ok(Json(l))
}

async fn stock(
    _: Admin,
    State(state): State<AppState>,
    Path(sku): Path<String>,
) -> Result<Json<StockLevels>, ApiError> {
    Ok(Json(StockLevels {
        levels: state.inventory.levels(&sku, now_ms()).await?,
    }))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Adjustment {
    /// Units added (positive) or removed (negative); non-zero, at most 1,000,000 either way.
    #[schemars(range(min = -1_000_000, max = 1_000_000))]
    delta: i64,
    /// Why, for the movement log.
    reason: String,
}

async fn adjust_stock(
    _: Admin,
    State(state): State<AppState>,
    Path((sku, location)): Path<(String, String)>,
    body: Result<super::JsonObject<Adjustment>, ApiError>,
) -> Result<Json<crate::inventory::StockLevel>, ApiError> {
    let super::JsonObject(a) = body?;
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
    Ok(Json(level))
}

async fn order(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(state.orders.order(&id).await?))
}

#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Fulfilment {
    /// The carrier's name, up to 100 characters.
    #[serde(default)]
    carrier: Option<String>,
    /// The tracking number, up to 100 characters.
    #[serde(default)]
    tracking: Option<String>,
    /// What ships; everything left when absent.
    #[serde(default)]
    lines: Option<Vec<super::SkuUnits>>,
}

async fn fulfil(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, ApiError> {
    // An empty body (or `null`) ships everything left.
    let f: Fulfilment = optional_body(&body)?;
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
#[derive(Deserialize, serde::Serialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Capture {
    /// Minor units; everything authorised when absent.
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
    super::refuse_arrays(bytes)?;
    match serde_json::from_slice::<Option<T>>(bytes) {
        Ok(value) => {
            super::refuse_nul(bytes)?;
            Ok(value.unwrap_or_default())
        }
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
) -> Result<super::idempotency::Answered, ApiError> {
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
        Ok::<_, ApiError>((axum::http::StatusCode::OK, super::idempotency::json(&order)))
    };
    Ok(super::idempotency::Answered(
        super::idempotency::once(&db, &scope, key.as_deref(), &canonical, now, operation).await?,
    ))
}

/// Cancels the order: voids or refunds, and restocks. Takes an optional `Idempotency-Key`
/// (see above).
async fn cancel(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
) -> Result<super::idempotency::Answered, ApiError> {
    let key = super::idempotency::optional_key(&headers)?;
    let now = now_ms();
    let (scope, db) = (format!("cancel:{id}"), state.db.clone());
    let operation = async move {
        let connector = connector_of(&state, &id).await?;
        let order = state.orders.cancel(&id, &connector, now).await?;
        Ok::<_, ApiError>((axum::http::StatusCode::OK, super::idempotency::json(&order)))
    };
    Ok(super::idempotency::Answered(
        super::idempotency::once(&db, &scope, key.as_deref(), &Value::Null, now, operation).await?,
    ))
}

#[derive(Deserialize, serde::Serialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Refund {
    /// Minor units; at most what was captured and not yet refunded.
    amount: u32,
    /// Why, for the gateway and the order's history.
    #[serde(default)]
    reason: Option<String>,
}

/// Refunds part or all of what was captured. Requires an `Idempotency-Key` (see above).
async fn refund(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: axum::http::HeaderMap,
    body: Result<super::JsonObject<Refund>, ApiError>,
) -> Result<super::idempotency::Answered, ApiError> {
    let key = super::idempotency::key(&headers)?;
    let super::JsonObject(refund) = body?;
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
        Ok::<_, ApiError>((axum::http::StatusCode::OK, super::idempotency::json(&order)))
    };
    Ok(super::idempotency::Answered(
        super::idempotency::once(&db, &scope, Some(&key), &canonical, now, operation).await?,
    ))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Return {
    /// The return being received: each is received once.
    return_id: String,
    /// The units that came back.
    lines: Vec<super::SkuUnits>,
}

/// Receives a return: the units go back on hand, exactly once per `return_id`.
async fn receive_return(
    _: Admin,
    State(state): State<AppState>,
    Path(id): Path<String>,
    body: Result<super::JsonObject<Return>, ApiError>,
) -> Result<Json<Value>, ApiError> {
    let super::JsonObject(r) = body?;
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
