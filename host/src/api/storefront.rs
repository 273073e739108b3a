//! `/store`: what shoppers use. Product listings show active products only; a cart is reached
//! with its id and its secret token in `X-Cart-Token`, and anything else about it is a 404.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{get, patch, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{ApiError, AppState, MaybeSignedIn, SignedIn, now_ms};
use crate::carts::{CartKey, CartView};
use crate::catalog::ProductFilter;
use crate::orders::CheckoutInput;
use crate::plugin::HookKind;

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/products", get(list_products))
        .route("/products/{id}", get(product))
        .route("/recommendations", get(recommendations))
        .route("/carts", post(create_cart))
        .route("/carts/{id}", get(cart))
        .route("/carts/{id}/lines", post(add_line))
        .route(
            "/carts/{id}/lines/{line}",
            patch(set_quantity).delete(remove_line),
        )
        .route("/carts/{id}/coupons", put(set_coupons))
        .route("/carts/{id}/details", put(set_details))
        .route("/carts/{id}/shipping-methods", get(shipping_offers))
        .route("/carts/{id}/shipping-method", put(set_shipping_method))
        .route("/carts/{id}/checkout", post(checkout))
        .route("/customers", post(register))
        .route("/customers/login", post(login))
        .route("/customers/me/orders", get(my_orders))
        .route("/orders/{id}", get(my_order))
        .route("/orders/{id}/returns", post(request_return))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Registration {
    /// The account's email; unique.
    email: String,
    /// 10 to 1,024 characters.
    password: String,
    /// The customer's name.
    name: String,
}

async fn register(
    State(state): State<AppState>,
    body: Result<super::JsonObject<Registration>, ApiError>,
) -> Result<(StatusCode, Json<crate::customers::Customer>), ApiError> {
    let super::JsonObject(r) = body?;
    let customer = state
        .customers
        .register(&r.email, &r.password, &r.name, now_ms())
        .await?;
    Ok((StatusCode::CREATED, Json(customer)))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Login {
    /// The account's email.
    email: String,
    /// Its password.
    password: String,
}

async fn login(
    State(state): State<AppState>,
    body: Result<super::JsonObject<Login>, ApiError>,
) -> Result<Json<SignedInBody>, ApiError> {
    let super::JsonObject(l) = body?;
    let (customer, token) = state
        .customers
        .login(&l.email, &l.password, now_ms())
        .await?;
    Ok(Json(SignedInBody { customer, token }))
}

/// A login's answer.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub(crate) struct SignedInBody {
    /// Who signed in.
    customer: crate::customers::Customer,
    /// Their bearer token (`Authorization: Bearer …`), for their carts and orders.
    token: String,
}

async fn my_orders(
    State(state): State<AppState>,
    me: SignedIn,
) -> Result<Json<crate::orders::OrderList>, ApiError> {
    Ok(Json(crate::orders::OrderList {
        orders: state.orders.for_customer(&me.customer_id).await?,
    }))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReturnRequest {
    /// The units to return.
    lines: Vec<super::SkuUnits>,
    /// Why.
    #[serde(default)]
    reason: Option<String>,
}

/// Asks to return units of one of the signed-in customer's shipped orders.
async fn request_return(
    State(state): State<AppState>,
    me: SignedIn,
    Path(id): Path<String>,
    body: Result<super::JsonObject<ReturnRequest>, ApiError>,
) -> Result<(StatusCode, Json<crate::orders::ReturnRequested>), ApiError> {
    let super::JsonObject(r) = body?;
    if !state.orders.owned_by(&id, &me.customer_id).await? {
        return Err(ApiError::not_found("order_not_found", "no such order"));
    }
    let lines: Vec<(String, i64)> = r
        .lines
        .into_iter()
        .map(|l| (l.sku, i64::from(l.quantity)))
        .collect();
    let request = state
        .orders
        .request_return(&id, &me.customer_id, &lines, r.reason, now_ms())
        .await?;
    Ok((StatusCode::CREATED, Json(request)))
}

/// One of the signed-in customer's orders; anyone else's is a 404.
async fn my_order(
    State(state): State<AppState>,
    me: SignedIn,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if !state.orders.owned_by(&id, &me.customer_id).await? {
        return Err(ApiError::not_found("order_not_found", "no such order"));
    }
    Ok(Json(state.orders.order(&id).await?))
}

async fn set_details(
    State(state): State<AppState>,
    CartCaller(id, key): CartCaller,
    body: Result<super::JsonObject<crate::carts::CartDetails>, ApiError>,
) -> Result<Json<PricedCartBody>, ApiError> {
    let details = opened_body(&state, &id, &key, body).await?;
    let now = now_ms();
    let view = state.carts.set_details(&id, &key, &details, now).await?;
    let saved = view.contents.details.clone();
    let mut body = priced(&state, view, now).await?;
    body.details = Some(saved);
    Ok(Json(body))
}

/// The shipping methods the cart can choose from, priced in its currency; only those that ship
/// to its saved shipping address when it has one.
async fn shipping_offers(
    State(state): State<AppState>,
    CartCaller(id, key): CartCaller,
) -> Result<Json<ShippingOffers>, ApiError> {
    let (shipping_methods, country) = state.carts.shipping_offers(&id, &key).await?;
    Ok(Json(ShippingOffers {
        shipping_methods,
        country,
    }))
}

/// The shipping methods a cart can choose.
#[derive(Serialize, schemars::JsonSchema)]
pub(crate) struct ShippingOffers {
    /// Those priced in the cart's currency that ship to its saved address (to anywhere, while
    /// no address is saved), by position.
    shipping_methods: Vec<crate::shipping::Offer>,
    /// The saved shipping address's country, if any.
    country: Option<String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShippingChoice {
    /// A method's code, or null for none. Required: `{}` is a mistake, not a way to clear it.
    #[serde(deserialize_with = "Option::deserialize")]
    #[schemars(required, with = "Option<String>")]
    code: Option<String>,
}

async fn set_shipping_method(
    State(state): State<AppState>,
    CartCaller(id, key): CartCaller,
    body: Result<super::JsonObject<ShippingChoice>, ApiError>,
) -> Result<Json<PricedCartBody>, ApiError> {
    let choice = opened_body(&state, &id, &key, body).await?;
    let now = now_ms();
    let view = state
        .carts
        .set_shipping_method(&id, &key, choice.code.as_deref(), now)
        .await?;
    Ok(Json(priced(&state, view, now).await?))
}

/// Checks the cart out. Requires an `Idempotency-Key`: a retry with the same key and body gets
/// the first answer, never a second order or charge.
///
/// The cart is opened (its token, or its owner signed in) in the checkout's own first read,
/// with the key's look-up and everything else checkout reads. A request refused before that
/// (no key, a body that is not a checkout) opens it on its own first, so that a caller without
/// access learns nothing but "no such cart" either way; like Stripe, such a refusal is not
/// kept as the key's answer (nothing ran).
async fn checkout(
    State(state): State<AppState>,
    CartCaller(id, cart_key): CartCaller,
    headers: axum::http::HeaderMap,
    body: Result<super::JsonObject<Value>, ApiError>,
) -> Result<super::idempotency::Answered, ApiError> {
    let parsed = super::idempotency::key(&headers).and_then(|key| {
        let super::JsonObject(body) = body?;
        // serde quotes the offending value; a card number sent by mistake must not come back
        // (nor be stored with the idempotent answer).
        let input = serde_json::from_value::<CheckoutInput>(body.clone()).map_err(|e| {
            ApiError::invalid(format!(
                "not a valid checkout: {}",
                super::without_long_numbers(&e.to_string())
            ))
        })?;
        Ok((key, body, input))
    });
    let (key, canonical, input) = match parsed {
        Ok(parsed) => parsed,
        Err(refused) => {
            state.carts.authorize(&id, &cart_key).await?;
            return Err(refused);
        }
    };
    let now = now_ms();
    let attempt = super::attempt_id("checkout", &id, &key);
    let (scope, db) = (format!("checkout:{id}"), state.db.clone());
    // The key is looked up in the checkout's first read, claimed with the stock and finished
    // with the order, in their transactions.
    let operation = |claim: Arc<crate::idempotency::Key>| async move {
        let order = state
            .orders
            .checkout(
                &id,
                &cart_key,
                input,
                &state.checkout_plugins(),
                Some(&attempt),
                Some(&claim),
                now,
            )
            .await?;
        Ok::<_, ApiError>((StatusCode::CREATED, order))
    };
    Ok(super::idempotency::Answered(
        super::idempotency::once_within(&db, &scope, &key, &canonical, now, operation).await?,
    ))
}

/// Active products. For a signed-in customer the personalization plugins re-rank the page;
/// if they fail, the default order stands.
async fn list_products(
    State(state): State<AppState>,
    MaybeSignedIn(customer): MaybeSignedIn,
    filter: Result<Query<ProductFilter>, QueryRejection>,
) -> Result<Json<ProductPage>, ApiError> {
    let Query(filter) = filter?;
    let products = state.catalog.list(&filter).await?;
    let (products, ranked_by) = personalize(&state, customer.as_deref(), products, 0).await?;
    Ok(Json(ProductPage {
        products: products.0,
        ranked_by,
    }))
}

/// A page of products: a listing, or recommendations.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub(crate) struct ProductPage {
    /// The products, in the order to show them.
    products: Vec<crate::catalog::Product>,
    /// Who ordered them, for a signed-in shopper while personalization plugins are active;
    /// null otherwise (the default order).
    ranked_by: Option<RankedBy>,
}

/// What the personalization hook did with a page.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub(crate) struct RankedBy {
    /// The plugin whose ranking stands; null when every plugin failed (the default order).
    decided_by: Option<crate::plugin::PluginRef>,
    /// Fail-open personalization plugins that failed, and were skipped.
    skipped: Vec<crate::hooks::SkippedPlugin>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RecommendationQuery {
    /// How many (1 to 20, default 4).
    limit: Option<u32>,
}

/// Products recommended for the shopper (the default order for anonymous shoppers or when no
/// personalization plugin answers).
async fn recommendations(
    State(state): State<AppState>,
    MaybeSignedIn(customer): MaybeSignedIn,
    query: Result<Query<RecommendationQuery>, QueryRejection>,
) -> Result<Json<ProductPage>, ApiError> {
    let Query(q) = query?;
    let limit = q.limit.unwrap_or(4).clamp(1, 20);
    let candidates = state
        .catalog
        .list(&ProductFilter {
            limit: Some(100),
            ..ProductFilter::default()
        })
        .await?;
    let (products, ranked_by) = personalize(&state, customer.as_deref(), candidates, limit).await?;
    Ok(Json(ProductPage {
        products: products.1,
        ranked_by,
    }))
}

/// Ranks `products` (and picks `limit` recommendations) with the personalization hook. Each
/// product is represented by one variant: the one in the shopper's open cart if there is one,
/// so that a plugin which leaves out what is in the cart leaves out the product, else its
/// first. Returns (ranked, recommended) and the plugin that ranked, if any.
async fn personalize(
    state: &AppState,
    customer: Option<&str>,
    products: Vec<crate::catalog::Product>,
    limit: u32,
) -> Result<
    (
        (Vec<crate::catalog::Product>, Vec<crate::catalog::Product>),
        Option<RankedBy>,
    ),
    ApiError,
> {
    use crate::plugin::bindings::personalization::{Candidate, Context, Purchase};
    use crate::plugin::bindings::types::{Attribute, Money};
    let plugins = state.hook(HookKind::Personalization);
    let default_picks = |products: &[crate::catalog::Product]| {
        products
            .iter()
            .take(limit as usize)
            .cloned()
            .collect::<Vec<_>>()
    };
    let Some(customer) = customer.filter(|_| !plugins.is_empty() && !products.is_empty()) else {
        let picks = default_picks(&products);
        return Ok(((products, picks), None));
    };
    let bought = state.orders.purchases(customer).await?;
    let skus: Vec<String> = bought.iter().map(|(_, sku, _, _)| sku.clone()).collect();
    let origins = state.catalog.variant_origins(&skus).await?;
    let purchases: Vec<Purchase> = bought
        .into_iter()
        .filter_map(|(order_id, sku, quantity, at)| {
            let (product_id, categories) = origins.get(&sku)?.clone();
            Some(Purchase {
                sku,
                product_id,
                categories,
                quantity: u32::try_from(quantity).unwrap_or(u32::MAX),
                at,
                order_id,
            })
        })
        .collect();
    let cart_skus = state.carts.open_cart_skus(customer).await?;
    let candidates: Vec<Candidate> = products
        .iter()
        .filter_map(|p| {
            let v = representative(p, &cart_skus)?;
            let (currency, amount) = v.prices.iter().next()?;
            Some(Candidate {
                sku: v.sku.clone(),
                product_id: p.id.clone(),
                title: p.title.clone(),
                categories: p.categories.clone(),
                price: Money {
                    amount: u64::try_from(*amount).unwrap_or(0),
                    currency: currency.clone(),
                },
                attributes: p
                    .attributes
                    .iter()
                    .map(|(name, value)| Attribute {
                        name: name.clone(),
                        value: value.clone(),
                    })
                    .collect(),
            })
        })
        .collect();
    // The segments the merchant put the customer in; an account gone since its token was
    // issued has none.
    let customer_tags = match state.customers.profile(customer).await {
        Ok(profile) => profile.tags,
        Err(crate::customers::CustomerError::NotFound) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let context = Context {
        customer_id: Some(customer.to_owned()),
        customer_tags,
        purchases,
        cart_skus,
        candidates,
        limit,
        now: now_ms(),
    };
    let outcome = crate::hooks::rank(&plugins, &context).await?;
    let by_sku = |sku: &String| {
        products
            .iter()
            .find(|p| representative(p, &context.cart_skus).is_some_and(|v| &v.sku == sku))
            .cloned()
    };
    let mut ranked: Vec<crate::catalog::Product> =
        outcome.ranking.ranked.iter().filter_map(by_sku).collect();
    // Products without a variant to rank them by keep their place at the end.
    let unranked: Vec<crate::catalog::Product> = products
        .iter()
        .filter(|p| !ranked.iter().any(|r| r.id == p.id))
        .cloned()
        .collect();
    ranked.extend(unranked);
    let recommended = outcome
        .ranking
        .recommended
        .iter()
        .filter_map(by_sku)
        .collect();
    Ok((
        (ranked, recommended),
        Some(RankedBy {
            decided_by: outcome.decided_by,
            skipped: outcome.skipped,
        }),
    ))
}

/// The variant that stands for `product` before the personalization hook (see
/// [`personalize`]): the one in the shopper's cart, else its first.
fn representative<'p>(
    product: &'p crate::catalog::Product,
    cart_skus: &[String],
) -> Option<&'p crate::catalog::Variant> {
    product
        .variants
        .iter()
        .find(|v| cart_skus.contains(&v.sku))
        .or_else(|| product.variants.first())
}

async fn product(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<crate::catalog::Product>, ApiError> {
    let product = state
        .catalog
        .product(&id, false)
        .await?
        .ok_or_else(|| ApiError::not_found("not_found", format!("no product {id:?}")))?;
    Ok(Json(product))
}

/// The cart named in the path and what the caller offers to open it with: its `X-Cart-Token`,
/// or a signed-in customer (its owner, if it has one). Nothing is read here: each cart operation
/// opens the cart in its own transaction, and to anyone it does not open for, the cart does not
/// exist.
struct CartCaller(String, CartKey);

impl FromRequestParts<AppState> for CartCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Path(params): Path<Vec<(String, String)>> =
            Path::from_request_parts(parts, state).await?;
        let id = params
            .into_iter()
            .find(|(k, _)| k == "id")
            .map(|(_, v)| v)
            .ok_or_else(|| ApiError::not_found("cart_not_found", "no such cart"))?;
        let token = parts
            .headers
            .get("x-cart-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let MaybeSignedIn(customer) = MaybeSignedIn::from_request_parts(parts, state).await?;
        Ok(CartCaller(id, CartKey { token, customer }))
    }
}

/// The request's body; or, when it is not one, its refusal — once the cart is open: a caller
/// it does not open for learns nothing but "no such cart".
async fn opened_body<T>(
    state: &AppState,
    id: &str,
    key: &CartKey,
    body: Result<super::JsonObject<T>, ApiError>,
) -> Result<T, ApiError> {
    match body {
        Ok(super::JsonObject(body)) => Ok(body),
        Err(refused) => {
            state.carts.authorize(id, key).await?;
            Err(refused)
        }
    }
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewCart {
    /// ISO 4217 code, upper case; the cart is priced in it.
    #[schemars(regex(pattern = "^[A-Z]{3}$"), example = &"EUR")]
    currency: String,
}

async fn create_cart(
    State(state): State<AppState>,
    MaybeSignedIn(customer): MaybeSignedIn,
    body: Result<super::JsonObject<NewCart>, ApiError>,
) -> Result<(StatusCode, Json<PricedCartBody>), ApiError> {
    let super::JsonObject(new) = body?;
    let now = now_ms();
    let (view, token) = state
        .carts
        .create(&new.currency, customer.as_deref(), now)
        .await?;
    let mut body = priced(&state, view, now).await?;
    body.token = Some(token);
    Ok((StatusCode::CREATED, Json(body)))
}

async fn cart(
    State(state): State<AppState>,
    CartCaller(id, key): CartCaller,
) -> Result<Json<PricedCartBody>, ApiError> {
    let view = state.carts.view(&id, &key).await?;
    Ok(Json(priced(&state, view, now_ms()).await?))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct NewLine {
    /// The variant's SKU (`TEE-M` is one of the demo store's).
    #[schemars(example = &"TEE-M")]
    sku: String,
    /// Units; added to the line when the cart already holds the SKU.
    #[schemars(range(min = 1, max = 999), example = 1)]
    quantity: i64,
}

async fn add_line(
    State(state): State<AppState>,
    CartCaller(id, key): CartCaller,
    body: Result<super::JsonObject<NewLine>, ApiError>,
) -> Result<Json<PricedCartBody>, ApiError> {
    let line = opened_body(&state, &id, &key, body).await?;
    let now = now_ms();
    let view = state
        .carts
        .add_line(&id, &key, &line.sku, line.quantity, now)
        .await?;
    Ok(Json(priced(&state, view, now).await?))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Quantity {
    /// The line's new quantity.
    #[schemars(range(min = 1, max = 999))]
    quantity: i64,
}

async fn set_quantity(
    State(state): State<AppState>,
    CartCaller(id, key): CartCaller,
    Path((_, line)): Path<(String, String)>,
    body: Result<super::JsonObject<Quantity>, ApiError>,
) -> Result<Json<PricedCartBody>, ApiError> {
    let q = opened_body(&state, &id, &key, body).await?;
    let now = now_ms();
    let view = state
        .carts
        .set_quantity(&id, &key, &line, q.quantity, now)
        .await?;
    Ok(Json(priced(&state, view, now).await?))
}

async fn remove_line(
    State(state): State<AppState>,
    CartCaller(id, key): CartCaller,
    Path((_, line)): Path<(String, String)>,
) -> Result<Json<PricedCartBody>, ApiError> {
    let now = now_ms();
    let view = state.carts.remove_line(&id, &key, &line, now).await?;
    Ok(Json(priced(&state, view, now).await?))
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Coupons {
    /// The codes the shopper entered, replacing those entered before.
    codes: Vec<String>,
}

async fn set_coupons(
    State(state): State<AppState>,
    CartCaller(id, key): CartCaller,
    body: Result<super::JsonObject<Coupons>, ApiError>,
) -> Result<Json<PricedCartBody>, ApiError> {
    let c = opened_body(&state, &id, &key, body).await?;
    let now = now_ms();
    let view = state.carts.set_coupons(&id, &key, &c.codes, now).await?;
    Ok(Json(priced(&state, view, now).await?))
}

/// A cart as every cart route answers: its contents, priced by the active pricing plugins.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub(crate) struct PricedCartBody {
    /// The cart's id.
    id: String,
    /// ISO 4217.
    currency: String,
    /// Its lines, in the order they were added.
    lines: Vec<crate::carts::CartLine>,
    /// Entered coupon codes, upper-case.
    coupon_codes: Vec<String>,
    /// The chosen shipping method; null when none is chosen.
    shipping_method: Option<ChosenShipping>,
    /// SKUs of lines no longer for sale in the cart's currency: left out of the price, and
    /// refused at checkout.
    unavailable: Vec<String>,
    /// The price, with every applied discount.
    pricing: crate::pricing::PricedCart,
    /// The pricing plugins whose decisions were applied, in hook order.
    priced_by: Vec<crate::plugin::PluginRef>,
    /// Fail-open pricing plugins that failed, and were skipped.
    skipped_plugins: Vec<crate::hooks::SkippedPlugin>,
    /// The cart's secret token: in the answer that creates it, and never again.
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    /// The checkout details saved: in the answer that saves them.
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<crate::carts::CartDetails>,
}

/// The cart's chosen shipping method.
#[derive(serde::Serialize, schemars::JsonSchema)]
#[serde(untagged)]
enum ChosenShipping {
    /// Priced in the cart's currency, and shipping to its saved address.
    Available {
        /// The method's code.
        code: String,
        /// Its name.
        name: String,
        /// Its carrier.
        carrier: Option<String>,
        /// The rate, in minor units of the cart's currency.
        amount: i64,
        /// True.
        #[schemars(extend("const" = true))]
        available: bool,
    },
    /// Chosen, but archived, no longer priced in this currency or not shipping to the saved
    /// address: checkout will ask for another.
    Unavailable {
        /// The method's code.
        code: String,
        /// False.
        #[schemars(extend("const" = false))]
        available: bool,
    },
}

/// The cart priced by the active pricing plugins, in hook order. A failing fail-open plugin
/// is skipped (and listed); a failing fail-closed one fails the request with its named error.
async fn priced(state: &AppState, view: CartView, now: i64) -> Result<PricedCartBody, ApiError> {
    let (input, unavailable) = view.pricing_input(now);
    let contents = view.contents;
    let outcome = crate::hooks::price(&state.hook(HookKind::Pricing), &input).await?;
    let shipping_method = match (contents.shipping_method, contents.shipping) {
        (_, Some(offer)) => Some(ChosenShipping::Available {
            code: offer.code,
            name: offer.name,
            carrier: offer.carrier,
            amount: offer.amount,
            available: true,
        }),
        (Some(code), None) => Some(ChosenShipping::Unavailable {
            code,
            available: false,
        }),
        (None, None) => None,
    };
    Ok(PricedCartBody {
        id: contents.id,
        currency: contents.currency,
        lines: contents.lines,
        coupon_codes: contents.coupon_codes,
        shipping_method,
        unavailable,
        pricing: outcome.priced,
        priced_by: outcome.decided_by,
        skipped_plugins: outcome.skipped,
        token: None,
        details: None,
    })
}
