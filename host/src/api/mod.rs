//! The HTTP API: routes, the shared state, authentication and the error convention.
//!
//! - `/health`, `/ready`: liveness and readiness (the database answers).
//! - `/admin/…`: the operator's and merchant's API; every route needs an admin bearer token.
//! - `/store/…`: the storefront; a cart is reached with its id and its `X-Cart-Token`.
//! - `/webhooks/…`: deliveries from payment gateways, authenticated by their signature.
//!
//! Every error is `{"error": {"code", "message"}}` with a stable code ([`ApiError`]).
//! `/openapi.json` documents all of it.

mod admin;
mod error;
pub mod idempotency;
pub mod openapi;
mod plugins;
mod storefront;
mod webhooks;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::routing::get;
use axum::{Json, Router};
use sha2::{Digest, Sha256};

pub use error::ApiError;

use crate::carts::Carts;
use crate::catalog::Catalog;
use crate::customers::Customers;
use crate::db::Db;
use crate::inventory::Inventory;
use crate::orders::{CheckoutPlugins, Orders};
use crate::plugin::{HookKind, Plugin};
use crate::registry::Registry;
use crate::shipping::Shipping;

/// Largest request body accepted.
pub const BODY_LIMIT_BYTES: usize = 256 * 1024;

/// The most stock levels one maintenance pass releases lapsed reservations on (each pass is
/// one transaction holding their locks).
const LAPSED_LEVELS_PER_SWEEP: i64 = 200;

/// Shared state of the application. Cloning is one reference count: axum clones the state for
/// every extractor of every request, and a clone of each service's handles cost dozens of
/// reference counts shared by both cores.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

/// What an [`AppState`] shares.
#[derive(Clone)]
pub struct Services {
    db: Db,
    catalog: Catalog,
    inventory: Inventory,
    carts: Carts,
    orders: Orders,
    customers: Customers,
    shipping: Shipping,
    registry: Registry,
    /// The digest of the scrape-only token `/metrics` also accepts, if one is configured.
    metrics_token: Option<Arc<str>>,
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

impl AppState {
    /// State over a migrated database, serving the plugins `registry` says are active.
    pub fn new(db: Db, registry: Registry) -> Self {
        let catalog = Catalog::new(db.clone());
        let inventory = Inventory::new(db.clone());
        // One cache of the catalog's answers for carts and checkout (always current: see
        // `catalog::Prices`).
        let prices = crate::catalog::Prices::default();
        let carts = Carts::new(db.clone(), prices.clone());
        Self(Arc::new(Services {
            orders: Orders::new(db.clone(), inventory.clone(), prices),
            customers: Customers::new(db.clone()),
            shipping: Shipping::new(db.clone()),
            inventory,
            carts,
            catalog,
            registry,
            db,
            metrics_token: None,
        }))
    }

    /// The same state with a scrape-only bearer token for `/metrics` (stored as its digest):
    /// a Prometheus server then needs no admin token. Admin tokens are accepted either way.
    #[must_use]
    pub fn with_metrics_token(mut self, token: &str) -> Self {
        Arc::make_mut(&mut self.0).metrics_token = Some(Arc::from(digest(token)));
        self
    }

    /// The plugin registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The active plugins of a hook, in the operator's order, as they are now.
    pub fn hook(&self, kind: HookKind) -> Vec<Arc<Plugin>> {
        self.registry.snapshot().hook(kind)
    }

    /// The active plugin named `name`, as it is now.
    pub fn plugin(&self, name: &str) -> Option<Arc<Plugin>> {
        self.registry.snapshot().get(name)
    }

    /// The plugins a checkout runs, taken from one snapshot: one checkout sees one set of
    /// versions from start to end, whatever is swapped meanwhile.
    pub fn checkout_plugins(&self) -> CheckoutPlugins {
        let snapshot = self.registry.snapshot();
        CheckoutPlugins {
            pricing: snapshot.hook(HookKind::Pricing),
            fraud: snapshot.hook(HookKind::Fraud),
            payment: snapshot.hook(HookKind::Payment),
        }
    }

    /// Every few minutes, for as long as the returned task runs: settles interrupted checkouts
    /// ([`AppState::recover_interrupted_checkouts`]), sweeps expired and abandoned idempotency
    /// keys, releases lapsed reservations on levels no checkout touched since
    /// ([`Inventory::release_lapsed`]), and forgets week-old refused payments
    /// ([`crate::orders::sweep_payment_failures`]) and stale failed logins. Several hosts on one
    /// database may all run it.
    pub fn spawn_maintenance(&self) -> tokio::task::JoinHandle<()> {
        let state = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(300));
            loop {
                every.tick().await;
                // Before the key sweep: an interrupted checkout's key is answered, not dropped.
                match state.recover_interrupted_checkouts(now_ms()).await {
                    Ok(done) if done == crate::recovery::Recovered::default() => {}
                    Ok(done) => tracing::info!(?done, "interrupted checkouts recovered"),
                    Err(e) => tracing::warn!("recovering interrupted checkouts failed: {e}"),
                }
                match idempotency::sweep(&state.db, now_ms()).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(keys = n, "idempotency keys swept"),
                    Err(e) => tracing::warn!("idempotency sweep failed: {e}"),
                }
                match state
                    .inventory
                    .release_lapsed(now_ms(), LAPSED_LEVELS_PER_SWEEP)
                    .await
                {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(units = n, "lapsed reservations released"),
                    Err(e) => tracing::warn!("releasing lapsed reservations failed: {e}"),
                }
                if let Err(e) = crate::orders::sweep_payment_failures(&state.db, now_ms()).await {
                    tracing::warn!("forgetting old payment failures failed: {e}");
                }
                if let Err(e) = state.customers.sweep_login_failures(now_ms()).await {
                    tracing::warn!("sweeping failed logins failed: {e}");
                }
            }
        })
    }

    /// Settles the checkouts interrupted between authorising and recording their order, as
    /// the clock reads `now`: looks their payments up through the active connectors, voids
    /// them and releases the stock (see [`crate::recovery`]); and orders left `capturing`
    /// ([`Orders::settle_stuck_captures`]). The maintenance task runs it.
    pub async fn recover_interrupted_checkouts(
        &self,
        now: i64,
    ) -> Result<crate::recovery::Recovered, crate::orders::OrderError> {
        let registry = self.registry.clone();
        let connector = move |name: &str| registry.snapshot().get(name);
        let mut done = crate::recovery::recover(&self.db, &connector, now).await?;
        let settled = self
            .orders
            .settle_stuck_captures(&connector, now, &mut done)
            .await;
        done.count();
        settled.map(|()| done)
    }

    /// Stores `token` (hashed) as an admin credential named `name`.
    pub async fn add_admin_token(&self, name: &str, token: &str) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO admin_tokens (token_hash, name, created_at) VALUES ($1, $2, $3) \
             ON CONFLICT (token_hash) DO NOTHING",
        )
        .bind(digest(token))
        .bind(name)
        .bind(now_ms())
        .execute(&mut *self.db.write_conn().await?)
        .await?;
        Ok(())
    }
}

/// A request body that must be a JSON object, deserialized as `T`. axum's `Json` alone also
/// takes an array for a struct (serde fills its fields in order, so `["EUR"]` would create a
/// cart), which no client means and the OpenAPI document does not allow. The refusals are
/// `Json`'s, with the same codes, and `invalid_input` for an array.
pub(crate) struct JsonObject<T>(pub T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S>
    for JsonObject<T>
{
    type Rejection = ApiError;

    async fn from_request(request: axum::extract::Request, state: &S) -> Result<Self, ApiError> {
        let is_json = request
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase())
            .is_some_and(|v| {
                v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
            });
        if !is_json {
            return Err(ApiError::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "Expected request with `Content-Type: application/json`",
            ));
        }
        let bytes = axum::body::Bytes::from_request(request, state).await?;
        refuse_arrays(&bytes)?;
        let Json(value) = Json::<T>::from_bytes(&bytes)?;
        refuse_nul(&bytes)?;
        Ok(Self(value))
    }
}

/// Refuses a JSON body with a NUL character (`\u0000`) in a string. PostgreSQL cannot store
/// one in text (a 500 there, while SQLite took it): no field accepts it, on either database.
pub(crate) fn refuse_nul(body: &[u8]) -> Result<(), ApiError> {
    let mut at = 0;
    while at < body.len() {
        if body[at] == b'\\' {
            if body.get(at + 1..at + 6) == Some(b"u0000") {
                return Err(ApiError::invalid(
                    "text must not contain the NUL character (\\u0000)",
                ));
            }
            // An escape is two bytes at least; `\\` must not start another.
            at += 2;
        } else {
            at += 1;
        }
    }
    Ok(())
}

/// Refuses a request whose path or query holds a NUL character (`%00`): no id, filter or
/// name can contain one, and PostgreSQL cannot even compare text with it.
async fn refuse_nul_in_uri(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let uri = request.uri();
    if uri.path().contains("%00") || uri.query().is_some_and(|q| q.contains("%00")) {
        return ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "invalid_uri",
            "the path and query must not contain the NUL character (%00)",
        )
        .into_response();
    }
    next.run(request).await
}

/// Refuses a body that is a JSON array where an object is wanted.
pub(crate) fn refuse_arrays(body: &[u8]) -> Result<(), ApiError> {
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return Err(ApiError::invalid("the body must be a JSON object"));
    }
    Ok(())
}

/// Units of one SKU: a line of a fulfilment or a return.
#[derive(serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SkuUnits {
    /// The SKU.
    pub(crate) sku: String,
    /// Units.
    pub(crate) quantity: u32,
}

/// The application's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(|| async { Json(Status { status: "ok" }) }))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(|| async { Json(openapi::document()) }))
        .nest("/admin", admin::routes().merge(plugins::routes()))
        .nest("/store", storefront::routes())
        .nest("/webhooks", webhooks::routes())
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .layer(axum::middleware::from_fn(refuse_nul_in_uri))
        .layer(
            tower_http::trace::TraceLayer::new_for_http().make_span_with(
                |request: &axum::http::Request<axum::body::Body>| {
                    // The route's template, not the concrete path: ids stay out of span names
                    // and metrics stay bounded.
                    let route = request
                        .extensions()
                        .get::<axum::extract::MatchedPath>()
                        .map_or("unmatched", axum::extract::MatchedPath::as_str);
                    tracing::info_span!("http", method = %request.method(), route)
                },
            ),
        )
        .with_state(state)
}

async fn ready(State(state): State<AppState>) -> Result<Json<Status>, ApiError> {
    state.db.ping().await.map_err(|e| ApiError::internal(&e))?;
    Ok(Json(Status { status: "ready" }))
}

/// What `/health` and `/ready` answer.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub(crate) struct Status {
    /// `ok` (the process serves) or `ready` (its database answers too).
    status: &'static str,
}

/// Proof that the request may read `/metrics`: the scrape-only token, or an admin token.
/// Plugin names, versions and call volumes are the operator's business, not the public's.
pub struct MetricsReader;

impl FromRequestParts<AppState> for MetricsReader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or_else(ApiError::unauthorized)?;
        if state
            .metrics_token
            .as_deref()
            .is_some_and(|wanted| digest(token) == wanted)
        {
            return Ok(MetricsReader);
        }
        Admin::from_request_parts(parts, state).await?;
        Ok(MetricsReader)
    }
}

/// Prometheus metrics: per-plugin calls by outcome and latency, this host's instance slots,
/// and the recovery of interrupted checkouts.
async fn metrics(
    State(state): State<AppState>,
    _: MetricsReader,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    let runtime = state.registry().runtime();
    let mut text = crate::plugin::metrics::render();
    text.push_str(&crate::plugin::metrics::render_slots(
        runtime.config().max_instances,
        runtime.free_instance_slots(),
        runtime.idle_instances(),
    ));
    match crate::recovery::render_metrics(&state.db, now_ms()).await {
        Ok(recovery) => text.push_str(&recovery),
        Err(e) => tracing::warn!("reading the interrupted checkouts for /metrics failed: {e}"),
    }
    match crate::payment_events::render_metrics(&state.db).await {
        Ok(disputes) => text.push_str(&disputes),
        Err(e) => tracing::warn!("reading the disputes for /metrics failed: {e}"),
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        text,
    )
}

/// The id of one attempt at `operation` on `subject` under idempotency key `key`: the same for
/// every retry with that key, different for another key. A checkout's becomes the order's id;
/// a refund's names it at the gateway, so that the gateway's own idempotency sees a retry as
/// the same request.
///
/// When `subject` is a time-ordered id (a cart's, an order's: UUIDv7), so is the attempt's,
/// with the subject's time: orders then sort roughly by when they were placed, and every index
/// that leads with an order's id takes new orders at its end (a few pages written per commit)
/// rather than at random places in the whole history (a page each).
pub(crate) fn attempt_id(operation: &str, subject: &str, key: &str) -> String {
    let digest = Sha256::digest(format!("{operation}\0{subject}\0{key}").as_bytes());
    let builder = match uuid::Uuid::parse_str(subject)
        .ok()
        .and_then(|subject| subject.get_timestamp())
    {
        Some(at) => {
            let (seconds, nanos) = at.to_unix();
            let millis = seconds * 1000 + u64::from(nanos) / 1_000_000;
            let mut rest = [0u8; 10];
            rest.copy_from_slice(&digest[..10]);
            uuid::Builder::from_unix_timestamp_millis(millis, &rest)
        }
        None => {
            let mut bytes = [0u8; 16];
            bytes.copy_from_slice(&digest[..16]);
            uuid::Builder::from_custom_bytes(bytes)
        }
    };
    builder.into_uuid().to_string()
}

/// `text` with every run of eight or more digits blanked: what could be a card number.
pub(crate) fn without_long_numbers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut digits = String::new();
    for c in text.chars().chain(std::iter::once(' ')) {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        if digits.len() >= 8 {
            out.push_str("[number]");
        } else {
            out.push_str(&digits);
        }
        digits.clear();
        out.push(c);
    }
    out.pop();
    out
}

/// Now, in Unix milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn bearer(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Proof that the request carries an admin bearer token.
pub struct Admin {
    /// The token's name.
    pub name: String,
}

impl Admin {
    /// Who the audit log names for what this token does.
    pub fn actor(&self) -> String {
        format!("admin:{}", self.name)
    }
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or_else(ApiError::unauthorized)?;
        let row = sqlx::query("SELECT name FROM admin_tokens WHERE token_hash = $1")
            .bind(digest(token))
            .fetch_optional(state.db.reader())
            .await
            .map_err(|e| ApiError::internal(&e))?
            .ok_or_else(ApiError::unauthorized)?;
        Ok(Admin {
            name: sqlx::Row::try_get(&row, "name").map_err(|e| ApiError::internal(&e))?,
        })
    }
}

/// Proof that the request carries a valid customer bearer token.
pub struct SignedIn {
    /// The customer's id.
    pub customer_id: String,
}

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts).ok_or_else(ApiError::unauthorized)?;
        let customer_id = state
            .customers
            .authenticate(token, now_ms())
            .await?
            .ok_or_else(ApiError::unauthorized)?;
        Ok(SignedIn { customer_id })
    }
}

/// The signed-in customer, if the request carries a valid customer token.
pub struct MaybeSignedIn(pub Option<String>);

impl FromRequestParts<AppState> for MaybeSignedIn {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match bearer(parts) {
            None => Ok(MaybeSignedIn(None)),
            Some(token) => Ok(MaybeSignedIn(
                state.customers.authenticate(token, now_ms()).await?,
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{attempt_id, without_long_numbers};

    #[test]
    fn long_numbers_are_blanked_and_short_ones_kept() {
        assert_eq!(
            without_long_numbers(
                "invalid type: integer `4242424242424242`, expected a string at line 1 column 20"
            ),
            "invalid type: integer `[number]`, expected a string at line 1 column 20"
        );
        assert_eq!(without_long_numbers("12345678"), "[number]");
        assert_eq!(without_long_numbers("a 1234567 b"), "a 1234567 b");
    }

    #[test]
    fn attempts_are_stable_per_key_and_differ_across_keys() {
        let a = attempt_id("checkout", "cart-1", "k1");
        assert_eq!(a, attempt_id("checkout", "cart-1", "k1"));
        assert_ne!(a, attempt_id("checkout", "cart-1", "k2"));
        assert_ne!(a, attempt_id("checkout", "cart-2", "k1"));
        assert_ne!(a, attempt_id("refund", "cart-1", "k1"));
        assert!(uuid::Uuid::parse_str(&a).is_ok());
    }

    #[test]
    fn attempts_on_time_ordered_subjects_sort_by_the_subjects_time() {
        let earlier = uuid::Uuid::new_v7(uuid::Timestamp::from_unix_time(1_700_000_000, 0, 0, 0));
        let later = uuid::Uuid::new_v7(uuid::Timestamp::from_unix_time(1_700_000_001, 0, 0, 0));
        let (earlier, later) = (earlier.to_string(), later.to_string());
        // Whatever the keys: the attempt on the later subject sorts after.
        for (k1, k2) in [("a", "b"), ("b", "a"), ("zzz", "0")] {
            assert!(attempt_id("checkout", &earlier, k1) < attempt_id("checkout", &later, k2));
        }
        let attempt = uuid::Uuid::parse_str(&attempt_id("checkout", &later, "k")).expect("a UUID");
        assert_eq!(attempt.get_version_num(), 7);
        assert_eq!(
            attempt.get_timestamp().map(|t| t.to_unix().0),
            Some(1_700_000_001)
        );
        assert_eq!(
            attempt_id("checkout", &later, "k"),
            attempt_id("checkout", &later, "k")
        );
        assert_ne!(
            attempt_id("checkout", &later, "k"),
            attempt_id("checkout", &later, "l")
        );
    }
}
