//! Checkout and orders.
//!
//! [`Orders::checkout`] turns a cart into an order in one request: re-price → fraud check →
//! reserve stock → authorise payment → record the order and commit the stock. Every failure
//! after a side effect undoes it: a declined payment releases the reservation; a failure after
//! authorisation voids it. No path leaves a charge without an order or stock reserved beyond
//! its expiry. The order records which plugin versions priced and checked it.
//!
//! Order status, payment status and fulfilment status are kept apart, and each operation
//! checks the transition it makes ([`OrderError::InvalidTransition`] → 409) with a guarded
//! update, never by reading a state and writing later. The payment goes `authorized` →
//! `capturing` (only while a capture's gateway call runs) → `captured` → `partially_refunded`
//! → `refunded`, or `authorized` → `voided`. Amounts keep `captured ≤ authorized` and
//! `refunded ≤ captured` (guarded updates, and CHECK constraints underneath).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};
use sqlx::Row;

use crate::carts::{self, CartError};
use crate::catalog::{self, PricedVariant};
use crate::db::{Backend, Db, SqlByCount, Tx, args, param_rows};
use crate::hooks;
use crate::idempotency;
use crate::inventory::{self, Inventory, InventoryError};
use crate::plugin::bindings::types::{Address as WitAddress, Money};
use crate::plugin::bindings::{fraud, payment};
use crate::plugin::{Call, HookError, PaymentRequest, Plugin};
use crate::recovery::{Attempt, Settled};
use crate::shipping;

/// How long checkout holds stock while payment runs.
pub const RESERVATION_TTL_MS: i64 = 15 * 60 * 1000;
/// Order lines per INSERT statement (7 parameters each; far below either database's limit).
const LINES_PER_STATEMENT: usize = 500;

/// Why a checkout or an order operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// The cart has no lines.
    #[error("the cart is empty")]
    EmptyCart,
    /// The cart cannot be shipped as asked: no method chosen where one is needed, or the
    /// chosen one is not offered or does not ship to the address.
    #[error(transparent)]
    Shipping(#[from] crate::shipping::Refusal),
    /// Some lines are no longer for sale.
    #[error("no longer for sale: {0:?}")]
    Unavailable(Vec<String>),
    /// The fraud check refused the checkout.
    #[error("checkout refused by the fraud check")]
    Denied(Vec<String>),
    /// The gateway refused the payment.
    #[error("payment {code}: {message}")]
    PaymentRefused {
        /// Our payment error code, e.g. `insufficient-funds`.
        code: String,
        /// For the shopper.
        message: String,
    },
    /// No payment connector is installed.
    #[error("no payment connector is installed")]
    NoPaymentConnector,
    /// Input that makes no sense.
    #[error("{0}")]
    Invalid(String),
    /// The order does not exist.
    #[error("no such order")]
    NotFound,
    /// The gateway could not be reached or failed; whether it authorised is unknown. A retry
    /// of the same attempt (the same idempotency key) finds out through the gateway's own
    /// idempotency.
    #[error("the payment gateway is unavailable; retry with the same Idempotency-Key")]
    GatewayUnavailable,
    /// The cart already became an order (another checkout of it succeeded).
    #[error("the cart was already checked out as order {0}")]
    CartOrdered(String),
    /// The order could not be recorded after the payment was authorised; the authorisation
    /// was voided and the stock released. This attempt is over: its gateway operation ids are
    /// spent, so a retry must be a new attempt (a new idempotency key).
    #[error(
        "the order could not be recorded; the payment was released. Check out again with a new Idempotency-Key"
    )]
    Aborted,
    /// The operation is not allowed in the order's current state.
    #[error("cannot {action} an order that is {state}")]
    InvalidTransition {
        /// What was asked.
        action: &'static str,
        /// Where the order stands.
        state: String,
    },
    /// Another request with the same idempotency key claimed it first; this one stopped
    /// before reserving anything.
    #[error("a request with this Idempotency-Key is still running")]
    KeyTaken,
    /// A refund above what is captured and not yet refunded.
    #[error("cannot refund {requested}: only {refundable} is captured and not yet refunded")]
    RefundTooLarge {
        /// What was asked.
        requested: i64,
        /// What may still be refunded.
        refundable: i64,
    },
    /// A capture asking for another amount than the capture already in progress (whose
    /// outcome is not known yet) asked for.
    #[error(
        "a capture of {in_progress} is in progress (its outcome is unknown): retry it with that amount or none, not {requested}"
    )]
    CaptureInProgress {
        /// What was asked.
        requested: i64,
        /// What the capture in progress asked.
        in_progress: i64,
    },
    /// A capture above what was authorised.
    #[error("cannot capture {requested}: only {authorized} is authorised")]
    CaptureTooLarge {
        /// What was asked.
        requested: i64,
        /// What was authorised.
        authorized: i64,
    },
    /// A plugin failed and its policy is fail-closed.
    #[error(transparent)]
    Hook(#[from] HookError),
    /// Stock.
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    /// Carts.
    #[error(transparent)]
    Cart(#[from] crate::carts::CartError),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

type Result<T> = std::result::Result<T, OrderError>;

/// A postal address as the API takes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Address {
    /// Recipient.
    #[schemars(example = &"Ada Lovelace")]
    pub name: String,
    /// Street.
    #[schemars(example = &"Main St 1")]
    pub line1: String,
    /// More street.
    #[serde(default)]
    pub line2: Option<String>,
    /// City.
    #[schemars(example = &"Berlin")]
    pub city: String,
    /// Region or state.
    #[serde(default)]
    pub region: Option<String>,
    /// Postal code.
    #[schemars(example = &"10115")]
    pub postal_code: String,
    /// ISO 3166-1 alpha-2.
    #[schemars(example = &"DE")]
    pub country: String,
}

impl Address {
    /// Checks the address; `what` names it in the error.
    pub fn validate(&self, what: &str) -> Result<()> {
        for (field, value, max) in [
            ("name", &self.name, 200),
            ("line1", &self.line1, 200),
            ("city", &self.city, 100),
            ("postal_code", &self.postal_code, 20),
        ] {
            if value.trim().is_empty() || value.chars().count() > max {
                return Err(OrderError::Invalid(format!(
                    "{what}.{field} must be 1 to {max} characters"
                )));
            }
        }
        if self.country.len() != 2 || !self.country.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(OrderError::Invalid(format!(
                "{what}.country must be an ISO 3166-1 alpha-2 code"
            )));
        }
        Ok(())
    }

    fn to_wit(&self) -> WitAddress {
        WitAddress {
            name: Some(self.name.clone()),
            line1: Some(self.line1.clone()),
            line2: self.line2.clone(),
            city: Some(self.city.clone()),
            region: self.region.clone(),
            postal_code: Some(self.postal_code.clone()),
            country: self.country.clone(),
        }
    }
}

/// What the shopper sends to check out: a [`CheckoutRequest`] whose email and addresses may be
/// left out where the cart has them saved ([`crate::carts::CartDetails`]). Card data never
/// comes here: only a gateway token.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckoutInput {
    /// Where to send the receipt.
    #[serde(default)]
    #[schemars(example = &"ada@example.com")]
    pub email: Option<String>,
    /// Where to ship.
    #[serde(default)]
    pub shipping_address: Option<Address>,
    /// Billing address; the shipping address when absent.
    #[serde(default)]
    pub billing_address: Option<Address>,
    /// The payment gateway's token for the payment method (the demo's test gateway
    /// authorises `tok_visa`).
    #[schemars(example = &"tok_visa")]
    pub payment_token: String,
    /// The shopper's IP, as the storefront saw it.
    #[serde(default)]
    pub client_ip: Option<String>,
    /// The shipping method's code; the one chosen on the cart when absent.
    #[serde(default)]
    pub shipping_method: Option<String>,
}

impl CheckoutInput {
    /// The request, with what it leaves out taken from the details `saved` on the cart.
    pub fn complete(self, saved: &carts::CartDetails) -> Result<CheckoutRequest> {
        let missing = |field: &str| {
            OrderError::Invalid(format!(
                "{field} is required: send it, or save it on the cart first"
            ))
        };
        Ok(CheckoutRequest {
            email: self
                .email
                .or_else(|| saved.email.clone())
                .ok_or_else(|| missing("email"))?,
            shipping_address: self
                .shipping_address
                .or_else(|| saved.shipping_address.clone())
                .ok_or_else(|| missing("shipping_address"))?,
            billing_address: self
                .billing_address
                .or_else(|| saved.billing_address.clone()),
            payment_token: self.payment_token,
            client_ip: self.client_ip,
            shipping_method: self.shipping_method,
        })
    }
}

/// A checkout as it runs: what the shopper sent, completed from the cart's saved details.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckoutRequest {
    /// Where to send the receipt.
    pub email: String,
    /// Where to ship.
    pub shipping_address: Address,
    /// Billing address; the shipping address when absent.
    #[serde(default)]
    pub billing_address: Option<Address>,
    /// The payment gateway's token for the payment method.
    pub payment_token: String,
    /// The shopper's IP, as the storefront saw it.
    #[serde(default)]
    pub client_ip: Option<String>,
    /// The shipping method's code; the one chosen on the cart when absent.
    #[serde(default)]
    pub shipping_method: Option<String>,
}

/// The plugins a checkout runs, each list in hook order.
#[derive(Debug, Clone, Default)]
pub struct CheckoutPlugins {
    /// Pricing.
    pub pricing: Vec<Arc<Plugin>>,
    /// Fraud.
    pub fraud: Vec<Arc<Plugin>>,
    /// Payment connectors; the first one takes the payment.
    pub payment: Vec<Arc<Plugin>>,
}

/// The orders service.
#[derive(Debug, Clone)]
pub struct Orders {
    db: Db,
    inventory: Inventory,
    /// The catalog's answers for SKUs, shared with the carts.
    prices: catalog::Prices,
}

/// Which plugin versions decided an order, and what they decided: stored with the order when
/// it is placed, and shown as its `decisions`.
#[derive(Debug, Serialize, schemars::JsonSchema)]
struct Decisions {
    /// The pricing plugins that priced it, in hook order.
    priced_by: Vec<crate::plugin::PluginRef>,
    /// Fail-open pricing plugins that failed and were skipped.
    pricing_skipped: Vec<hooks::SkippedPlugin>,
    /// The discounts applied, in the order they were applied.
    applied: Vec<crate::pricing::AppliedDiscount>,
    /// The fraud hook's verdict.
    fraud: FraudDecision,
    /// The payment connector that authorised it.
    payment: crate::plugin::PluginRef,
}

/// The fraud hook's verdict on an order.
#[derive(Debug, Serialize, schemars::JsonSchema)]
struct FraudDecision {
    /// `allow`, or `review` (the order is held: status `on_hold`). A denied checkout makes
    /// no order.
    decision: String,
    /// The highest score any fraud plugin gave: 0 (no risk) to 100.
    score: u8,
    /// The fraud plugins that answered, in hook order.
    decided_by: Vec<crate::plugin::PluginRef>,
    /// Every reason given.
    reasons: Vec<FraudReason>,
    /// Fail-open fraud plugins that failed and were skipped.
    skipped: Vec<hooks::SkippedPlugin>,
}

/// A reason a fraud plugin gave for its verdict.
#[derive(Debug, Serialize, schemars::JsonSchema)]
struct FraudReason {
    /// The plugin that gave it (`name@version`).
    plugin: String,
    /// Its machine-readable code.
    code: String,
    /// Its explanation, for the merchant.
    message: String,
}

/// The snake_case name of a contract enum's case (`PaymentErrorCode::InsufficientFunds` →
/// `insufficient_funds`), as the API reports gateway codes.
fn snake_name(case: &impl std::fmt::Debug) -> String {
    let debug = format!("{case:?}");
    let name = debug.rsplit("::").next().unwrap_or(&debug);
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

fn sum(values: impl Iterator<Item = u64>) -> i64 {
    i64::try_from(values.sum::<u64>()).unwrap_or(i64::MAX)
}

fn signed(amount: u64) -> i64 {
    i64::try_from(amount).unwrap_or(i64::MAX)
}

fn money(amount: i64, currency: &str) -> Money {
    Money {
        amount: u64::try_from(amount).unwrap_or(0),
        currency: currency.to_owned(),
    }
}

/// An order as the API shows it. Built from the database by [`Orders::order`], and from what
/// checkout just wrote by checkout itself, so both answers have one shape.
#[derive(Serialize, schemars::JsonSchema)]
pub struct OrderView {
    /// The order's id.
    id: String,
    /// Where the receipt goes, lower-case.
    email: String,
    /// The customer who placed it, when one was signed in.
    customer_id: Option<String>,
    /// `placed`, `on_hold` (a fraud check asked for review) or `cancelled`.
    status: String,
    /// `authorized`, `capturing`, `captured`, `partially_refunded`, `refunded` or `voided`.
    payment_status: String,
    /// `unfulfilled`, `partially_fulfilled` or `fulfilled`.
    fulfilment_status: String,
    /// ISO 4217.
    currency: String,
    /// Sum of the lines before discounts, in minor units.
    subtotal: i64,
    /// Every discount: lines, order and shipping.
    discount_total: i64,
    /// Shipping after its discount.
    shipping_total: i64,
    /// What the shopper pays.
    total: i64,
    /// The shipping method as priced at checkout; null when none was chosen.
    #[schemars(with = "Option<ShippingAtCheckout>")]
    shipping_method: Value,
    /// Where it ships.
    #[schemars(with = "Address")]
    shipping_address: Value,
    /// Where it is billed; null when that is the shipping address.
    #[schemars(with = "Option<Address>")]
    billing_address: Value,
    /// Which plugin versions decided it, and what they decided.
    #[schemars(with = "Decisions")]
    decisions: Value,
    /// Its lines.
    lines: Vec<OrderLineView>,
    /// Shipments, oldest first.
    fulfilments: Vec<FulfilmentView>,
    /// Returns the shopper asked for, oldest first.
    return_requests: Vec<ReturnRequestView>,
    /// The payment, once authorised.
    payment: Option<PaymentView>,
    /// When it was placed, in milliseconds since the Unix epoch.
    created_at: i64,
}

/// A page of orders, newest first.
#[derive(Serialize, schemars::JsonSchema)]
pub struct OrderList {
    /// The orders.
    pub(crate) orders: Vec<OrderView>,
}

/// A shipping method as priced at checkout (the shape of [`OrderView::shipping_method`]).
#[derive(schemars::JsonSchema)]
#[allow(dead_code)] // Stored and shown as JSON; the type only documents it.
struct ShippingAtCheckout {
    /// The method's code.
    code: String,
    /// Its name.
    name: String,
    /// Its carrier.
    carrier: Option<String>,
    /// The rate, in minor units.
    amount: i64,
}

/// One order line.
#[derive(Serialize, schemars::JsonSchema)]
struct OrderLineView {
    /// The SKU.
    sku: String,
    /// Units.
    quantity: i64,
    /// Price per unit, in minor units.
    unit_price: i64,
    /// Everything taken off the line.
    discount: i64,
    /// What the line costs after its discount.
    total: i64,
}

/// Units of a SKU.
#[derive(Serialize, schemars::JsonSchema)]
struct SkuQuantity {
    /// The SKU.
    sku: String,
    /// Units.
    quantity: i64,
}

/// One shipment.
#[derive(Serialize, schemars::JsonSchema)]
struct FulfilmentView {
    /// Its id.
    id: String,
    /// The carrier.
    carrier: Option<String>,
    /// The tracking number.
    tracking: Option<String>,
    /// When it shipped, in milliseconds since the Unix epoch.
    created_at: i64,
    /// What it shipped.
    lines: Vec<SkuQuantity>,
}

/// A return the shopper asked for.
#[derive(Serialize, schemars::JsonSchema)]
struct ReturnRequestView {
    /// Its id.
    id: String,
    /// What comes back.
    #[schemars(with = "Vec<SkuQuantity>")]
    lines: Value,
    /// The shopper's reason.
    reason: Option<String>,
    /// `requested` or `received`.
    status: String,
    /// When it was asked for, in milliseconds since the Unix epoch.
    created_at: i64,
}

/// A return the shopper just asked for.
#[derive(Serialize, schemars::JsonSchema)]
pub struct ReturnRequested {
    /// Its id, for the merchant's `POST /admin/orders/{id}/returns` once it arrives.
    id: String,
    /// The order.
    order_id: String,
    /// `requested`.
    status: &'static str,
    /// What comes back.
    lines: Vec<SkuQuantity>,
    /// The shopper's reason.
    reason: Option<String>,
}

/// The order's payment.
#[derive(Serialize, schemars::JsonSchema)]
struct PaymentView {
    /// The connector that took it (`name@version`).
    plugin: String,
    /// The gateway's reference.
    gateway_reference: String,
    /// Authorised, in minor units.
    authorized: i64,
    /// Captured.
    captured: i64,
    /// Refunded.
    refunded: i64,
    /// Refunds, oldest first.
    refunds: Vec<RefundView>,
    /// Disputes the gateway reported (chargebacks and inquiries), oldest first.
    disputes: Vec<DisputeView>,
}

/// A dispute of the payment, as the gateway last reported it.
#[derive(Serialize, schemars::JsonSchema)]
struct DisputeView {
    /// The gateway's id of the dispute.
    id: String,
    /// `inquiry`, `inquiry_closed`, `open` (a chargeback being decided), `won` or `lost`.
    status: String,
    /// Disputed, in minor units.
    amount: i64,
    /// The gateway's reason (e.g. `fraudulent`).
    reason: String,
    /// When the merchant's evidence is due, if the gateway set a date (milliseconds since the
    /// Unix epoch).
    respond_by: Option<i64>,
    /// When the first event about it occurred, in milliseconds since the Unix epoch.
    opened_at: i64,
    /// When the event it now reflects occurred.
    updated_at: i64,
}

/// One refund.
#[derive(Serialize, schemars::JsonSchema)]
struct RefundView {
    /// Minor units.
    amount: i64,
    /// The gateway's reference for the refund.
    reference: Option<String>,
    /// Why.
    reason: Option<String>,
    /// When, in milliseconds since the Unix epoch.
    created_at: i64,
}

impl From<OrderView> for Value {
    fn from(order: OrderView) -> Self {
        serde_json::to_value(order).unwrap_or(Value::Null)
    }
}

impl Orders {
    /// Orders over `db`.
    pub fn new(db: Db, inventory: Inventory, prices: catalog::Prices) -> Self {
        Self {
            db,
            inventory,
            prices,
        }
    }

    /// Checks out cart `cart_id`. Returns the order as [`Orders::order`] shows it, as the JSON
    /// text that is sent and kept as the idempotency key's answer.
    ///
    /// `attempt` names this checkout attempt and becomes the order's id: the API derives it
    /// from the cart and the idempotency key, so a retry of an attempt whose answer was lost
    /// (a crash, a timeout) reuses the same gateway operation ids — the gateway's idempotency
    /// returns the first authorisation instead of making a second — and, if the first attempt
    /// got as far as the order, answers with that order.
    ///
    /// `key`, when given, is claimed in the transaction that reserves the stock and finished
    /// (the order stored as the answer) in the one that records the order; it is advanced as
    /// each commits. If another request holds it, the checkout stops before reserving with
    /// [`OrderError::KeyTaken`].
    #[allow(clippy::too_many_arguments)]
    pub async fn checkout(
        &self,
        cart_id: &str,
        access: &carts::CartKey,
        input: CheckoutInput,
        plugins: &CheckoutPlugins,
        attempt: Option<&str>,
        key: Option<&Arc<idempotency::Key>>,
        now: i64,
    ) -> Result<Box<RawValue>> {
        let order_id = attempt.map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned);

        // 1. Everything checkout reads before it writes, in one read transaction: the cart
        //    (opened only with its token or by its owner), whether the idempotency key was
        //    used before, the catalog's prices for its SKUs, the buyer's history, the shipping
        //    offers.
        let (cart, email, access) = (cart_id.to_owned(), input.email.clone(), access.clone());
        let look = key.cloned();
        let prices = self.prices.clone();
        let reads = self
            .db
            .read(move |tx| {
                Box::pin(async move {
                    let Some(contents) = carts::contents_in(tx, &cart).await? else {
                        return Err(OrderError::Cart(CartError::NotFound));
                    };
                    if !contents.opens_with(&access) {
                        return Err(OrderError::Cart(CartError::NotFound));
                    }
                    if let Some(key) = &look
                        && !matches!(key.seen_in(tx).await?, idempotency::Seen::New)
                    {
                        return Ok(BeforeCheckout::KeySeen);
                    }
                    if let Some(existing) = contents.live_order {
                        return Ok(BeforeCheckout::Ordered(existing));
                    }
                    let skus: Vec<String> = contents.lines.iter().map(|l| l.sku.clone()).collect();
                    let generation = contents.generation;
                    let variants = catalog::priced_variants_at(
                        tx,
                        &prices,
                        generation,
                        &skus,
                        &contents.currency,
                    )
                    .await?;
                    // The buyer's history by the email the checkout will use (refused later
                    // if it is none or not an email).
                    let email = email
                        .or_else(|| contents.details.email.clone())
                        .unwrap_or_default();
                    let history = history_in(
                        tx,
                        &email,
                        &contents.currency,
                        contents.customer_id.as_deref(),
                        now,
                    )
                    .await?;
                    let offers =
                        shipping::offers_at(tx, &prices, generation, &contents.currency).await?;
                    Ok(BeforeCheckout::Cart {
                        contents: Box::new(contents),
                        variants,
                        history,
                        offers,
                    })
                })
            })
            .await;
        if let (Err(OrderError::Cart(CartError::NotFound)), Some(key)) = (&reads, key) {
            // No such cart, or not the caller's: not an answer to keep for the key.
            key.advance(idempotency::Progress::Refused);
        }
        let (contents, variants, history, offers) = match reads? {
            BeforeCheckout::KeySeen => {
                if let Some(key) = key {
                    key.advance(idempotency::Progress::Taken);
                }
                return Err(OrderError::KeyTaken);
            }
            BeforeCheckout::Ordered(existing) if existing == order_id => {
                let order = self.order(&order_id).await?;
                return Ok(serde_json::value::to_raw_value(&order).unwrap_or_default());
            }
            BeforeCheckout::Ordered(existing) => return Err(OrderError::CartOrdered(existing)),
            BeforeCheckout::Cart {
                contents,
                variants,
                history,
                offers,
            } => (contents, variants, history, offers),
        };
        let request = &input.complete(&contents.details)?;
        if !request.email.contains('@') || request.email.len() > 254 {
            return Err(OrderError::Invalid("email is not an email address".into()));
        }
        request.shipping_address.validate("shipping_address")?;
        let billing = request
            .billing_address
            .clone()
            .unwrap_or_else(|| request.shipping_address.clone());
        billing.validate("billing_address")?;
        if request.payment_token.is_empty() || request.payment_token.len() > 255 {
            return Err(OrderError::Invalid(
                "payment_token must be 1 to 255 characters".into(),
            ));
        }
        let connector = plugins
            .payment
            .first()
            .ok_or(OrderError::NoPaymentConnector)?;

        // Re-priced from the catalog and the pricing plugins: never trust an earlier quote.
        let (mut cart, unavailable) = carts::pricing_cart(&contents, variants, now);
        if !unavailable.is_empty() {
            return Err(OrderError::Unavailable(unavailable));
        }
        if cart.lines.is_empty() {
            return Err(OrderError::EmptyCart);
        }
        // Shipping as offered now, to this address — not as it was when the shopper chose.
        let chosen = request
            .shipping_method
            .as_deref()
            .or(contents.shipping_method.as_deref());
        let shipping = shipping::choose(&offers, chosen, &request.shipping_address.country)?;
        cart.shipping = shipping.as_ref().map(|o| money(o.amount, &o.currency));
        let pricing = hooks::price(&plugins.pricing, &cart).await?;
        let priced = &pricing.priced;
        let currency = priced.currency.clone();

        // 2. Fraud.
        let checkout = fraud::Checkout {
            id: cart_id.to_owned(),
            currency: currency.clone(),
            subtotal: money(signed(priced.subtotal), &currency),
            discount_total: money(
                signed(priced.line_discounts + priced.order_discount + priced.shipping_discount),
                &currency,
            ),
            shipping_total: money(
                signed(priced.shipping - priced.shipping_discount),
                &currency,
            ),
            total: money(signed(priced.total), &currency),
            lines: priced
                .lines
                .iter()
                .zip(&cart.lines)
                .map(|(p, c)| fraud::CheckoutLine {
                    sku: p.sku.clone(),
                    product_id: c.product_id.clone(),
                    quantity: p.quantity,
                    total: money(signed(p.total), &currency),
                    categories: c.categories.clone(),
                })
                .collect(),
            customer: fraud::Customer {
                id: contents.customer_id.clone(),
                email: request.email.clone(),
                tags: contents.owner_tags.clone(),
                history: fraud::CustomerHistory {
                    order_count: history.orders,
                    orders_last_24h: history.orders_last_24h,
                    failed_payments_last_24h: history.failed_payments_last_24h,
                    lifetime_spend: money(history.spend, &currency),
                    chargebacks: history.chargebacks,
                    first_seen: history.first_seen,
                },
            },
            billing_address: Some(billing.to_wit()),
            shipping_address: Some(request.shipping_address.to_wit()),
            client_ip: request.client_ip.clone(),
            payment: fraud::PaymentMethod {
                kind: "card".into(),
                brand: None,
                last4: None,
                issuer_country: None,
                fingerprint: None,
                metadata: vec![],
            },
            now,
        };
        let verdict = hooks::assess(&plugins.fraud, &checkout).await?;
        if verdict.decision == fraud::Decision::Deny {
            return Err(OrderError::Denied(
                verdict
                    .reasons
                    .iter()
                    .map(|(_, r)| r.code.clone())
                    .collect(),
            ));
        }
        let status = if verdict.decision == fraud::Decision::Review {
            "on_hold"
        } else {
            "placed"
        };

        // 3. Reserve stock under the order's id.
        let demand: Vec<(String, i64)> = priced
            .lines
            .iter()
            .map(|l| (l.sku.clone(), i64::from(l.quantity)))
            .collect();
        let wanted = inventory::demand_of(&demand)?;
        let (reference, claim) = (order_id.clone(), key.cloned());
        let attempt = Attempt {
            order_id: order_id.clone(),
            connector: connector.manifest().name.clone(),
            amount: signed(priced.total),
            currency: currency.clone(),
        };
        let expires_at = now + RESERVATION_TTL_MS;
        // PostgreSQL: two statements and no transaction, when nothing needs releasing first.
        let at_once = if self.db.backend() == Backend::Postgres {
            inventory::reserve_at_once(
                &self.db,
                Some(attempt.claim_parts(key.map(|k| &**k), now)),
                order_id.clone(),
                wanted.clone(),
                now,
                expires_at,
            )
            .await?
        } else {
            inventory::AtOnce::Transaction
        };
        let reserved = match at_once {
            inventory::AtOnce::Reserved(allocations) => Some(allocations.len()),
            inventory::AtOnce::KeyTaken => None,
            inventory::AtOnce::Transaction => {
                self.reserve_in_transaction(attempt, claim, reference, wanted, now, expires_at)
                    .await?
            }
        };
        let Some(reservations) = reserved else {
            if let Some(key) = key {
                key.advance(idempotency::Progress::Taken);
            }
            return Err(OrderError::KeyTaken);
        };
        if let Some(key) = key {
            key.advance(idempotency::Progress::Claimed);
        }

        // 4. Authorise the payment; undo the reservation on any failure.
        let authorize = PaymentRequest::Authorize(payment::AuthorizeRequest {
            operation_id: format!("{order_id}:authorize"),
            order_reference: order_id.clone(),
            amount: money(signed(priced.total), &currency),
            payment_token: request.payment_token.clone(),
            customer_email: Some(request.email.clone()),
            metadata: vec![],
            now,
        });
        // A refusal is remembered against the buyer (their history's failed payments).
        let failed = |code: &str| PaymentFailure {
            email: crate::customers::normalized_email(&request.email),
            customer_id: contents.customer_id.clone(),
            code: code.to_owned(),
            amount: signed(priced.total),
            currency: currency.clone(),
        };
        let authorized = match connector.payment(&authorize).await {
            Ok(call) => match call.output {
                Ok(result) => result,
                Err(refusal) if refusal.code == payment::PaymentErrorCode::GatewayUnavailable => {
                    // Maybe authorised, maybe not: not a final answer. A retry with the same
                    // key is the same attempt, and the gateway's idempotency tells; without
                    // one, the attempt is left for the recovery sweep to look up.
                    self.abandon(&order_id, Settled::No, None, now).await?;
                    return Err(OrderError::GatewayUnavailable);
                }
                Err(refusal) => {
                    let code = snake_name(&refusal.code);
                    self.abandon(&order_id, Settled::Yes, Some(failed(&code)), now)
                        .await?;
                    return Err(OrderError::PaymentRefused {
                        code,
                        message: "the payment was declined".into(),
                    });
                }
            },
            Err(e) => {
                // The connector failed; it may have reached the gateway first.
                self.abandon(&order_id, Settled::No, None, now).await?;
                return Err(e.into());
            }
        };
        let partial = authorized.amount.amount != priced.total;
        if authorized.status != payment::PaymentStatus::Authorized || partial {
            // 3-D Secure or an asynchronous method: this checkout cannot hand the shopper a
            // challenge, so it must not record an order on money that is not held — nor on
            // less than the total (a partial authorisation). Release what the gateway started
            // (a gateway that captured at once gets a refund), and the stock.
            let undo = undo_request(&order_id, &authorized, now);
            let undone = match connector.payment(&undo).await {
                Ok(Call { output: Ok(_), .. }) => Settled::Yes,
                Ok(Call {
                    output: Err(refusal),
                    ..
                }) => {
                    tracing::error!(order = %order_id, "the gateway refused to release an incomplete authorisation; the recovery sweep will ask again (gateway reference {}): {}", authorized.gateway_reference, refusal.message);
                    Settled::No
                }
                Err(e) => {
                    tracing::error!(order = %order_id, "releasing an incomplete authorisation failed; the recovery sweep will ask again (gateway reference {}): {e}", authorized.gateway_reference);
                    Settled::No
                }
            };
            let (code, message) = if partial {
                (
                    "partial_authorization".to_owned(),
                    "the gateway authorised less than the total",
                )
            } else {
                (
                    snake_name(&authorized.status),
                    "the payment needs a step this checkout does not support",
                )
            };
            self.abandon(&order_id, undone, Some(failed(&code)), now)
                .await?;
            return Err(OrderError::PaymentRefused {
                code,
                message: message.into(),
            });
        }

        // 5. Record the order and commit its stock in one transaction; on failure void the
        //    authorisation.
        let decisions = serde_json::to_value(Decisions {
            priced_by: pricing.decided_by.clone(),
            pricing_skipped: pricing.skipped.clone(),
            applied: priced.applied.clone(),
            fraud: FraudDecision {
                decision: snake_name(&verdict.decision),
                score: verdict.score,
                decided_by: verdict.decided_by.clone(),
                reasons: verdict
                    .reasons
                    .iter()
                    .map(|(plugin, r)| FraudReason {
                        plugin: plugin.clone(),
                        code: r.code.clone(),
                        message: r.message.clone(),
                    })
                    .collect(),
                skipped: verdict.skipped.clone(),
            },
            payment: connector.reference(),
        })
        .unwrap_or_default();
        let recorded = self
            .record(
                &order_id,
                cart_id,
                request,
                &billing,
                status,
                priced,
                &decisions,
                connector,
                &authorized,
                shipping.as_ref(),
                contents.customer_id.as_deref(),
                reservations,
                key,
                now,
            )
            .await;
        let order = match recorded {
            Ok(order) => order,
            Err(e) => {
                tracing::error!(order = %order_id, "order could not be completed, voiding: {e}");
                let void = PaymentRequest::Void(payment::VoidRequest {
                    operation_id: format!("{order_id}:void"),
                    gateway_reference: authorized.gateway_reference.clone(),
                    amount: authorized.amount.clone(),
                    now,
                });
                let voided = match connector.payment(&void).await {
                    Ok(call) => match call.output {
                        Ok(_) => true,
                        Err(refusal) => {
                            tracing::error!(order = %order_id, "the gateway refused the void; reconcile by gateway reference {}: {}", authorized.gateway_reference, refusal.message);
                            false
                        }
                    },
                    Err(void_error) => {
                        tracing::error!(order = %order_id, "void failed; reconcile by gateway reference {}: {void_error}", authorized.gateway_reference);
                        false
                    }
                };
                let settled = if voided { Settled::Yes } else { Settled::No };
                if let Err(e) = self.abandon(&order_id, settled, None, now).await {
                    tracing::error!(order = %order_id, "could not release the failed checkout's stock: {e}");
                }
                // Only an order still as this attempt left it; and 'voided' only if it was: a
                // failed void leaves the payment 'authorized' on a cancelled order, for the operator
                // to reconcile.
                if let Err(e) = self
                    .db
                    .execute(
                        "UPDATE orders SET status = 'cancelled', payment_status = $2 \
                         WHERE id = $1 AND payment_status = 'authorized'",
                        args![&order_id, if voided { "voided" } else { "authorized" }],
                    )
                    .await
                {
                    tracing::error!(order = %order_id, "could not mark the failed order cancelled: {e}");
                }
                // Lost a race with another checkout of the same cart: say so, not "internal".
                if let Ok(Some(existing)) = self.live_order_of_cart(cart_id).await {
                    return Err(OrderError::CartOrdered(existing));
                }
                // Replaying this attempt would replay the voided authorisation at the gateway.
                return Err(OrderError::Aborted);
            }
        };
        Ok(order)
    }

    /// Claims the checkout's key, records its attempt and reserves its stock in one write
    /// transaction; `None` if another request holds the key.
    async fn reserve_in_transaction(
        &self,
        attempt: Attempt,
        claim: Option<Arc<idempotency::Key>>,
        reference: String,
        wanted: BTreeMap<String, i64>,
        now: i64,
        expires_at: i64,
    ) -> Result<Option<usize>> {
        let _turn = self.inventory.admit_reservation().await;
        self.db
            .write_unsynced(move |tx| {
                Box::pin(async move {
                    // Before the stock rows are locked: on PostgreSQL, every round trip
                    // after that holds the locks longer.
                    if !attempt
                        .claim_and_begin_in(tx, claim.as_deref(), now)
                        .await?
                    {
                        return Ok(None);
                    }
                    let allocations =
                        inventory::reserve_in(tx, reference, wanted, now, expires_at).await?;
                    Ok::<_, OrderError>(Some(allocations.len()))
                })
            })
            .await
    }

    /// Releases a failed checkout's stock; and, when the gateway is known to hold nothing for
    /// it, forgets the attempt in the same transaction (otherwise the recovery sweep looks the
    /// payment up later); and keeps the gateway's refusal, if that is why, for the buyer's
    /// history.
    async fn abandon(
        &self,
        order_id: &str,
        settled: Settled,
        failure: Option<PaymentFailure>,
        now: i64,
    ) -> Result<i64> {
        let id = order_id.to_owned();
        Ok(self
            .db
            .write(move |tx| {
                Box::pin(async move {
                    let released = inventory::release_in(tx, id.clone(), now).await?;
                    if settled == Settled::Yes {
                        Attempt::end_in(tx, &id).await?;
                    }
                    if let Some(f) = failure {
                        tx.execute(
                            "INSERT INTO payment_failures \
                               (email, at, order_id, customer_id, code, amount, currency) \
                             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                            &args![
                                f.email,
                                now,
                                &id,
                                f.customer_id,
                                f.code,
                                f.amount,
                                f.currency
                            ],
                        )
                        .await?;
                    }
                    Ok::<_, InventoryError>(released)
                })
            })
            .await?)
    }

    /// The cart's order, unless it was cancelled.
    async fn live_order_of_cart(&self, cart_id: &str) -> Result<Option<String>> {
        let cart_id = cart_id.to_owned();
        self.db
            .read(move |tx| Box::pin(async move { live_order_in(tx, &cart_id).await }))
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn record(
        &self,
        order_id: &str,
        cart_id: &str,
        request: &CheckoutRequest,
        billing: &Address,
        status: &str,
        priced: &crate::pricing::PricedCart,
        decisions: &Value,
        connector: &Plugin,
        authorized: &payment::PaymentResult,
        shipping: Option<&shipping::Offer>,
        customer_id: Option<&str>,
        reservations: usize,
        key: Option<&Arc<idempotency::Key>>,
        now: i64,
    ) -> std::result::Result<Box<RawValue>, InventoryError> {
        // The order as `order` reads it back; what is written is taken from it.
        let order = OrderView {
            id: order_id.to_owned(),
            email: crate::customers::normalized_email(&request.email),
            // The cart's owner; a cart never changes owner.
            customer_id: customer_id.map(str::to_owned),
            status: status.to_owned(),
            payment_status: "authorized".into(),
            fulfilment_status: "unfulfilled".into(),
            currency: priced.currency.clone(),
            subtotal: signed(priced.subtotal),
            discount_total: sum([
                priced.line_discounts,
                priced.order_discount,
                priced.shipping_discount,
            ]
            .into_iter()),
            shipping_total: signed(priced.shipping - priced.shipping_discount),
            total: signed(priced.total),
            shipping_method: shipping.map_or(Value::Null, |o| {
                json!({"code": o.code, "name": o.name, "carrier": o.carrier, "amount": o.amount})
            }),
            shipping_address: json!(request.shipping_address),
            billing_address: json!(billing),
            decisions: decisions.clone(),
            lines: priced
                .lines
                .iter()
                .map(|line| OrderLineView {
                    sku: line.sku.clone(),
                    quantity: i64::from(line.quantity),
                    unit_price: signed(line.unit_price),
                    discount: signed(line.discount),
                    total: signed(line.total),
                })
                .collect(),
            fulfilments: vec![],
            return_requests: vec![],
            payment: None,
            created_at: now,
        };
        let payment = PaymentView {
            plugin: connector.manifest().id(),
            gateway_reference: authorized.gateway_reference.clone(),
            authorized: signed(authorized.amount.amount),
            captured: 0,
            refunded: 0,
            refunds: vec![],
            disputes: vec![],
        };
        // Everything but the statements is prepared before the transaction: on SQLite a write
        // transaction holds the database's one write lock from its first statement.
        let insert = OrderInsert::new(&order, cart_id, &payment, &authorized.amount.currency);
        let mut order = order;
        order.payment = Some(payment);
        // Serialized once: the same text is stored as the key's answer and sent.
        let answer = serde_json::value::to_raw_value(&order).unwrap_or_default();
        let finish = key.cloned().map(|key| (key, answer.get().to_owned()));
        let id = order_id.to_owned();
        // PostgreSQL: one statement that checks the reservations itself, so no transaction
        // around it (unless the lines need more statements than one).
        let checked = self.db.backend() == Backend::Postgres && insert.lines.len() <= 1;
        let body = crate::db::job(move |tx| {
            Box::pin(async move {
                // Expiry is judged by the clock now, not when the checkout began: a checkout
                // stalled past its reservation must not commit stock that others may have
                // reserved since it stopped counting.
                let commit_at = now.max(wall_clock_ms());
                // 201 Created: the API's answer to a checkout.
                let finish = finish
                    .as_ref()
                    .map(|(key, answer)| (&**key, 201, answer.as_str()));
                // Also ends the checkout attempt, stores the key's answer and commits the
                // reservations.
                if checked {
                    return match insert
                        .run_checked_on_postgres(tx, finish, commit_at, reservations)
                        .await
                    {
                        Err(sqlx::Error::Database(e))
                            if e.code().as_deref() == Some(inventory::NOT_COMMITTED) =>
                        {
                            Err(inventory::why_not_committed(tx, &id, commit_at).await)
                        }
                        other => Ok(other?),
                    };
                }
                let committed = insert.run_in(tx, finish, commit_at).await?;
                inventory::committed_in(tx, &id, reservations, commit_at, &committed).await?;
                Ok(())
            })
        });
        if checked {
            self.db.autocommit(body).await?;
        } else {
            self.db.write(body).await?;
        }
        if let Some(key) = key {
            key.advance(idempotency::Progress::Finished);
        }
        Ok(answer)
    }

    /// An order with its lines and payment.
    pub async fn order(&self, id: &str) -> Result<Value> {
        let ids = vec![id.to_owned()];
        let mut found = self
            .db
            .read_snapshot(move |tx| Box::pin(async move { views_in(tx, &ids).await }))
            .await?;
        Ok(found.pop().ok_or(OrderError::NotFound)?.into())
    }

    /// Orders for the merchant, newest first, optionally of one status or email, or with a
    /// dispute in the given status (`open`: the chargebacks still to answer).
    pub async fn search(
        &self,
        status: Option<&str>,
        email: Option<&str>,
        dispute: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> Result<Vec<OrderView>> {
        let filter = args![
            status.map_or(crate::db::Value::NullText, Into::into),
            email.map_or(crate::db::Value::NullText, |e| {
                crate::customers::normalized_email(e).into()
            }),
            i64::from(limit.clamp(1, 100)),
            i64::from(offset),
            dispute.map_or(crate::db::Value::NullText, Into::into),
        ];
        Ok(self
            .db
            .read_snapshot(move |tx| {
                Box::pin(async move {
                    let ids = tx
                        .fetch(
                            "SELECT id FROM orders WHERE ($1 IS NULL OR status = $1) \
                             AND ($2 IS NULL OR email = $2) \
                             AND ($5 IS NULL OR id IN (SELECT order_id FROM disputes WHERE status = $5)) \
                             ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4",
                            &filter,
                        )
                        .await?;
                    views_in(tx, &ids_of(&ids)?).await
                })
            })
            .await?)
    }

    /// The orders of a customer, newest first (the latest 100).
    pub async fn for_customer(&self, customer_id: &str) -> Result<Vec<OrderView>> {
        let customer = args![customer_id];
        Ok(self
            .db
            .read_snapshot(move |tx| {
                Box::pin(async move {
                    let ids = tx
                        .fetch(
                            "SELECT id FROM orders WHERE customer_id = $1 \
                             ORDER BY created_at DESC, id DESC LIMIT 100",
                            &customer,
                        )
                        .await?;
                    views_in(tx, &ids_of(&ids)?).await
                })
            })
            .await?)
    }

    /// What a customer bought, most recent first (at most 200 lines): (order id, SKU,
    /// quantity, time).
    pub async fn purchases(&self, customer_id: &str) -> Result<Vec<(String, String, i64, i64)>> {
        let rows = sqlx::query(
            "SELECT o.id, l.sku, l.quantity, o.created_at FROM order_lines l JOIN orders o ON o.id = l.order_id \
             WHERE o.customer_id = $1 AND o.status <> 'cancelled' ORDER BY o.created_at DESC, l.line_no LIMIT 200",
        )
        .bind(customer_id)
        .fetch_all(self.db.reader())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("id")?,
                    r.try_get("sku")?,
                    r.try_get("quantity")?,
                    r.try_get("created_at")?,
                ))
            })
            .collect()
    }

    /// Whether order `id` belongs to `customer_id`.
    pub async fn owned_by(&self, id: &str, customer_id: &str) -> Result<bool> {
        Ok(
            sqlx::query("SELECT id FROM orders WHERE id = $1 AND customer_id = $2")
                .bind(id)
                .bind(customer_id)
                .fetch_optional(self.db.reader())
                .await?
                .is_some(),
        )
    }

    async fn states(&self, id: &str) -> Result<(String, String, String)> {
        let row = sqlx::query(
            "SELECT status, payment_status, fulfilment_status FROM orders WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.db.reader())
        .await?
        .ok_or(OrderError::NotFound)?;
        Ok((
            row.try_get("status")?,
            row.try_get("payment_status")?,
            row.try_get("fulfilment_status")?,
        ))
    }

    /// Ships some or all of what is left to ship (`items`; everything left when none), with an
    /// optional carrier and tracking number. The order is `partially_fulfilled` until every
    /// unit has shipped. Never more than was ordered ships.
    pub async fn fulfil(
        &self,
        id: &str,
        items: Option<Vec<(String, i64)>>,
        carrier: Option<String>,
        tracking: Option<String>,
        now: i64,
    ) -> Result<Value> {
        for (what, value) in [("carrier", &carrier), ("tracking", &tracking)] {
            if value
                .as_ref()
                .is_some_and(|v| v.trim().is_empty() || v.len() > 128)
            {
                return Err(OrderError::Invalid(format!(
                    "{what} must be 1 to 128 characters"
                )));
            }
        }
        let mut tx = self.db.begin().await?;
        // Lock the order row: concurrent fulfilments of one order take turns. A voided payment
        // holds no money any more (the gateway voided it, or the authorisation lapsed): nothing
        // ships on it; the merchant cancels (restocking) or takes payment anew.
        let locked = sqlx::query("UPDATE orders SET updated_at = $2 WHERE id = $1 AND status = 'placed' AND fulfilment_status <> 'fulfilled' AND payment_status <> 'voided'")
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if locked == 0 {
            drop(tx);
            let (status, payment_status, fulfilment) = self.states(id).await?;
            return Err(OrderError::InvalidTransition {
                action: "fulfil",
                state: format!("{status}/{payment_status}/{fulfilment}"),
            });
        }
        let mut remaining: Vec<(String, i64)> = Vec::new();
        for row in sqlx::query(
            "SELECT l.sku, CAST(SUM(l.quantity) AS BIGINT) AS ordered, \
             CAST(COALESCE((SELECT SUM(fl.quantity) FROM fulfilment_lines fl JOIN fulfilments f ON f.id = fl.fulfilment_id \
               WHERE f.order_id = l.order_id AND fl.sku = l.sku), 0) AS BIGINT) AS shipped \
             FROM order_lines l WHERE l.order_id = $1 GROUP BY l.order_id, l.sku ORDER BY l.sku",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await?
        {
            let ordered: i64 = row.try_get("ordered")?;
            let shipped: i64 = row.try_get("shipped")?;
            remaining.push((row.try_get("sku")?, ordered - shipped));
        }
        let items: Vec<(String, i64)> = match items {
            None => remaining.iter().filter(|(_, q)| *q > 0).cloned().collect(),
            Some(items) => {
                for (sku, quantity) in &items {
                    let left = remaining
                        .iter()
                        .find(|(s, _)| s == sku)
                        .map_or(0, |(_, q)| *q);
                    if *quantity <= 0 || *quantity > left {
                        return Err(OrderError::Invalid(format!(
                            "{sku}: cannot ship {quantity}, {left} left to ship"
                        )));
                    }
                }
                items
            }
        };
        if items.is_empty() {
            return Err(OrderError::Invalid("nothing to ship".into()));
        }
        let fulfilment_id = uuid::Uuid::now_v7().to_string();
        sqlx::query("INSERT INTO fulfilments (id, order_id, carrier, tracking, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(&fulfilment_id)
            .bind(id)
            .bind(&carrier)
            .bind(&tracking)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        for (sku, quantity) in &items {
            sqlx::query(
                "INSERT INTO fulfilment_lines (fulfilment_id, sku, quantity) VALUES ($1, $2, $3)",
            )
            .bind(&fulfilment_id)
            .bind(sku)
            .bind(quantity)
            .execute(&mut *tx)
            .await?;
        }
        let everything = remaining.iter().all(|(sku, left)| {
            items.iter().find(|(s, _)| s == sku).map_or(0, |(_, q)| *q) == *left
        });
        sqlx::query("UPDATE orders SET fulfilment_status = $2 WHERE id = $1")
            .bind(id)
            .bind(if everything {
                "fulfilled"
            } else {
                "partially_fulfilled"
            })
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.inventory.ship_items(id, &items, now).await?;
        self.order(id).await
    }

    /// Captures `amount` of the authorised payment (all of it when `None`). There is one
    /// capture per order, as with Stripe's manual capture: what it leaves is released.
    ///
    /// The order is claimed first (`authorized` → `capturing`, a guarded update), so a capture
    /// and a cancel never both reach the gateway (a cancel refuses a `capturing` order). Every
    /// capture of an order uses one operation id, so the gateway's idempotency makes a second
    /// attempt return the first one's outcome instead of capturing twice.
    ///
    /// How it ends decides the claim: a definite refusal (or a failure before the gateway was
    /// asked) gives it back (`authorized`, so the order can be cancelled and voided); an
    /// outcome nobody knows — the gateway unavailable, the connector failing mid-call, the
    /// result not recorded — keeps the order `capturing`, because the money may have moved.
    /// Such an order is settled by trying the capture again (it may re-enter `capturing`), by
    /// the gateway's webhook, or after a while by [`Orders::settle_stuck_captures`]. Only the call that moved the order from `authorized` gives it
    /// back: a re-entry cannot know what an earlier attempt (or one still running) did, so its
    /// failures leave the order `capturing`.
    ///
    /// The claim records the amount it captures; a re-entry asks the gateway for that amount
    /// again (the same operation must not carry two amounts): naming no amount means that one,
    /// naming another is refused ([`OrderError::CaptureInProgress`]).
    pub async fn capture(
        &self,
        id: &str,
        amount: Option<i64>,
        connector: &Plugin,
        now: i64,
    ) -> Result<Value> {
        if amount.is_some_and(|a| a <= 0) {
            return Err(OrderError::Invalid("amount must be at least 1".into()));
        }
        // What the payment allows (fixed since checkout) and what a capture in flight asked.
        let Some(pay) = sqlx::query(
            "SELECT p.gateway_reference, p.currency, p.authorized, o.capture_amount \
             FROM payments p JOIN orders o ON o.id = p.order_id WHERE p.order_id = $1",
        )
        .bind(id)
        .fetch_optional(self.db.reader())
        .await?
        else {
            let (status, payment_status, _) = self.states(id).await?;
            return Err(OrderError::InvalidTransition {
                action: "capture",
                state: format!("{status}/{payment_status}"),
            });
        };
        let authorized: i64 = pay.try_get("authorized")?;
        let in_flight: Option<i64> = pay.try_get("capture_amount")?;
        // A fresh claim captures what is asked (all by default); a re-entry what was asked.
        let fresh_amount = amount.unwrap_or(authorized);
        let again_amount = amount.or(in_flight).unwrap_or(authorized);
        for requested in [fresh_amount, again_amount] {
            if requested > authorized {
                return Err(OrderError::CaptureTooLarge {
                    requested,
                    authorized,
                });
            }
        }
        let payment = ClaimedPayment {
            gateway_reference: pay.try_get("gateway_reference")?,
            currency: pay.try_get("currency")?,
        };
        let fresh = sqlx::query(
            "UPDATE orders SET payment_status = 'capturing', capture_amount = $3, updated_at = $2 \
             WHERE id = $1 AND payment_status = 'authorized' AND status <> 'cancelled'",
        )
        .bind(id)
        .bind(now)
        .bind(fresh_amount)
        .execute(&mut *self.db.write_conn().await?)
        .await?
        .rows_affected()
            == 1;
        // Orders claimed before the amount was recorded have none: any amount re-enters.
        let claimed = fresh
            || sqlx::query(
                "UPDATE orders SET updated_at = $2 WHERE id = $1 AND payment_status = 'capturing' \
                 AND status <> 'cancelled' AND (capture_amount IS NULL OR capture_amount = $3)",
            )
            .bind(id)
            .bind(now)
            .bind(again_amount)
            .execute(&mut *self.db.write_conn().await?)
            .await?
            .rows_affected()
                == 1;
        if !claimed {
            let (status, payment_status, _) = self.states(id).await?;
            // Read again: another capture may have claimed the order since the read above.
            let in_progress: Option<i64> =
                sqlx::query_scalar("SELECT capture_amount FROM orders WHERE id = $1")
                    .bind(id)
                    .fetch_optional(self.db.reader())
                    .await?
                    .flatten();
            if payment_status == "capturing"
                && status != "cancelled"
                && let Some(in_progress) = in_progress
            {
                return Err(OrderError::CaptureInProgress {
                    requested: again_amount,
                    in_progress,
                });
            }
            return Err(OrderError::InvalidTransition {
                action: "capture",
                state: format!("{status}/{payment_status}"),
            });
        }
        let amount = if fresh { fresh_amount } else { again_amount };
        match self
            .capture_claimed(id, &payment, amount, connector, now)
            .await
        {
            Ok(()) => {}
            Err(CaptureFailure::Definite(e)) if fresh => {
                sqlx::query(
                    "UPDATE orders SET payment_status = 'authorized' WHERE id = $1 AND payment_status = 'capturing'",
                )
                .bind(id)
                .execute(&mut *self.db.write_conn().await?)
                .await?;
                return Err(e);
            }
            Err(CaptureFailure::Definite(e) | CaptureFailure::Uncertain(e)) => {
                tracing::warn!(order = %id, "capture outcome unknown, the order stays capturing until a retry or the gateway's webhook settles it: {e}");
                return Err(e);
            }
        }
        self.order(id).await
    }

    /// Settles orders left `capturing` (a capture whose outcome nobody learned: see
    /// [`Orders::capture`]) for longer than [`crate::recovery::INTERRUPTED_AFTER_MS`] with no
    /// retry and no webhook since: asks the order's connector what the gateway holds. Captured:
    /// the capture is recorded as the capture call would have. Still only authorised: no
    /// capture happened, and the order goes back to `authorized` (to be captured again or
    /// cancelled); voided at the gateway: the payment is `voided`, as the gateway's webhook
    /// would have made it. Anything else, or a connector that cannot look up, leaves the order
    /// as it is. Counts what it settled in `done`.
    pub async fn settle_stuck_captures(
        &self,
        connector: &impl Fn(&str) -> Option<Arc<Plugin>>,
        now: i64,
        done: &mut crate::recovery::Recovered,
    ) -> Result<()> {
        let stuck = sqlx::query(
            "SELECT o.id, o.updated_at, p.plugin, p.currency, p.authorized \
             FROM orders o JOIN payments p ON p.order_id = o.id \
             WHERE o.payment_status = 'capturing' AND o.status <> 'cancelled' AND o.updated_at < $1 \
             ORDER BY o.updated_at LIMIT 100",
        )
        .bind(now - crate::recovery::INTERRUPTED_AFTER_MS)
        .fetch_all(self.db.reader())
        .await?;
        for row in stuck {
            let id: String = row.try_get("id")?;
            let seen: i64 = row.try_get("updated_at")?;
            let plugin: String = row.try_get("plugin")?;
            let Some(connector) =
                connector(plugin.split('@').next().unwrap_or_default()).filter(|c| c.looks_up())
            else {
                continue;
            };
            let authorized: i64 = row.try_get("authorized")?;
            let currency: String = row.try_get("currency")?;
            let request = payment::FindRequest {
                operation_id: format!("{id}:authorize"),
                order_reference: id.clone(),
                amount: money(authorized, &currency),
                sent_at: seen,
                now,
            };
            let found = match connector.find(&request).await {
                Ok(Call {
                    output: Ok(Some(found)),
                    ..
                }) => found,
                Ok(Call { output, .. }) => {
                    tracing::warn!(order = %id, "a capture's outcome is still unknown: the gateway's lookup answered {output:?}");
                    done.deferred += 1;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(order = %id, "looking up a capture's outcome failed: {e}");
                    done.deferred += 1;
                    continue;
                }
            };
            match found.status {
                payment::PaymentStatus::Captured => {
                    self.record_capture(&id, &found, now).await?;
                    tracing::info!(order = %id, captured = found.amount.amount, "recorded a capture whose answer was lost");
                    done.captured += 1;
                }
                payment::PaymentStatus::Authorized | payment::PaymentStatus::Voided => {
                    // Never captured: authorised still, or voided at the gateway (as its
                    // webhook would report). Guarded on the claim as it was read: a retry of
                    // the capture since then renewed it, and its outcome is its own to settle.
                    let state = if found.status == payment::PaymentStatus::Voided {
                        "voided"
                    } else {
                        "authorized"
                    };
                    let released = sqlx::query(
                        "UPDATE orders SET payment_status = $3, updated_at = $4 \
                         WHERE id = $1 AND payment_status = 'capturing' AND updated_at = $2",
                    )
                    .bind(&id)
                    .bind(seen)
                    .bind(state)
                    .bind(now)
                    .execute(&mut *self.db.write_conn().await?)
                    .await?
                    .rows_affected();
                    if released == 1 {
                        tracing::info!(order = %id, "a capture whose answer was lost never happened: the payment is {state}");
                        done.uncaptured += 1;
                    }
                }
                other => {
                    tracing::warn!(order = %id, "a capture's outcome is unknown and the gateway says the payment is {other:?}: left for the operator or the gateway's webhook");
                    done.deferred += 1;
                }
            }
        }
        Ok(())
    }

    /// The gateway half of [`Orders::capture`], once the order is claimed for `amount`.
    async fn capture_claimed(
        &self,
        id: &str,
        payment: &ClaimedPayment,
        amount: i64,
        connector: &Plugin,
        now: i64,
    ) -> std::result::Result<(), CaptureFailure> {
        let request = PaymentRequest::Capture(payment::CaptureRequest {
            operation_id: format!("{id}:capture"),
            gateway_reference: payment.gateway_reference.clone(),
            amount: money(amount, &payment.currency),
            final_capture: true,
            now,
        });
        // From here on, a failure may hide a capture the gateway made.
        let result = match connector.payment(&request).await {
            Ok(call) => match call.output {
                Ok(result) => result,
                Err(refusal) if refusal.code == payment::PaymentErrorCode::GatewayUnavailable => {
                    return Err(CaptureFailure::Uncertain(OrderError::GatewayUnavailable));
                }
                Err(refusal) => {
                    return Err(CaptureFailure::Definite(OrderError::PaymentRefused {
                        code: snake_name(&refusal.code),
                        message: "the capture was refused".into(),
                    }));
                }
            },
            Err(e) => return Err(CaptureFailure::Uncertain(e.into())),
        };
        self.record_capture(id, &result, now)
            .await
            .map_err(|e| CaptureFailure::Uncertain(e.into()))
    }

    /// Records a capture the gateway made, unless a webhook settled the order meanwhile.
    async fn record_capture(
        &self,
        id: &str,
        result: &payment::PaymentResult,
        now: i64,
    ) -> std::result::Result<(), sqlx::Error> {
        let captured = signed(result.amount.amount);
        // A webhook may have recorded the capture (or a void) meanwhile: then the order is no
        // longer `capturing` and nothing here changes. The order row first, then the payment.
        let mut tx = self.db.begin().await?;
        let settled = sqlx::query(
            "UPDATE orders SET payment_status = 'captured', updated_at = $2 WHERE id = $1 AND payment_status = 'capturing'",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if settled == 1 {
            let recorded = sqlx::query(
                "UPDATE payments SET captured = $2 WHERE order_id = $1 AND captured = 0 AND $2 <= authorized",
            )
            .bind(id)
            .bind(captured)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            // A refund the gateway reported before this capture was recorded waited for it
            // (its capture event, when it comes, finds the capture recorded and stops there).
            if recorded == 1 {
                let pay = sqlx::query(
                    "SELECT plugin, gateway_reference, currency FROM payments WHERE order_id = $1",
                )
                .bind(id)
                .fetch_one(&mut *tx)
                .await?;
                let plugin: String = pay.try_get("plugin")?;
                let connector = plugin.split('@').next().unwrap_or_default();
                let reference: String = pay.try_get("gateway_reference")?;
                let currency: String = pay.try_get("currency")?;
                crate::payment_events::apply_waiting_refunds(
                    &mut tx, connector, &reference, id, &currency, captured, now,
                )
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Cancels an order that has not shipped: voids the authorisation, or refunds what was
    /// captured and not yet refunded, and puts the stock back. Exactly once. An order whose
    /// payment was voided (nothing more of it can ship) can also be cancelled after part of it
    /// shipped: what had not shipped goes back to stock.
    ///
    /// The cancel claims the order with a guarded update that a capture in flight blocks (and
    /// a capture needs an order that is not cancelled), so a void never races a capture. The
    /// remainder to refund is claimed with a compare-and-swap on `refunded`, so a partial
    /// refund running at the same time is never refunded a second time.
    pub async fn cancel(&self, id: &str, connector: &Plugin, now: i64) -> Result<Value> {
        let claimed = sqlx::query(
            "UPDATE orders SET status = 'cancelled', updated_at = $2 WHERE id = $1 \
             AND status <> 'cancelled' AND payment_status <> 'capturing' \
             AND (fulfilment_status = 'unfulfilled' \
                  OR (fulfilment_status = 'partially_fulfilled' AND payment_status = 'voided'))",
        )
        .bind(id)
        .bind(now)
        .execute(&mut *self.db.write_conn().await?)
        .await?
        .rows_affected();
        if claimed == 0 {
            let (status, payment_status, fulfilment) = self.states(id).await?;
            return Err(OrderError::InvalidTransition {
                action: "cancel",
                state: format!("{status}/{payment_status}/{fulfilment}"),
            });
        }
        // From here on the payment can no longer be captured: its status is settled.
        let (_, payment_status, _) = self.states(id).await?;
        let pay = sqlx::query(
            "SELECT gateway_reference, currency, authorized FROM payments WHERE order_id = $1",
        )
        .bind(id)
        .fetch_one(self.db.reader())
        .await?;
        let reference: String = pay.try_get("gateway_reference")?;
        let currency: String = pay.try_get("currency")?;
        if payment_status == "authorized" {
            let authorized: i64 = pay.try_get("authorized")?;
            let void = PaymentRequest::Void(payment::VoidRequest {
                operation_id: format!("{id}:void"),
                gateway_reference: reference,
                amount: money(authorized, &currency),
                now,
            });
            match connector.payment(&void).await.map(|c| c.output) {
                Ok(Ok(_)) => {
                    sqlx::query(
                        "UPDATE orders SET payment_status = 'voided' WHERE id = $1 AND payment_status = 'authorized'",
                    )
                    .bind(id)
                    .execute(&mut *self.db.write_conn().await?)
                    .await?;
                }
                other => {
                    tracing::error!(order = %id, "cancelled, but the void failed; reconcile: {other:?}")
                }
            }
        } else if let Some(amount) = self.claim_remaining_refund(id).await? {
            let refund = PaymentRequest::Refund(payment::RefundRequest {
                operation_id: format!("{id}:cancel-refund"),
                gateway_reference: reference,
                amount: money(amount, &currency),
                reason: Some("order cancelled".into()),
                now,
            });
            let done = match connector.payment(&refund).await.map(|c| c.output) {
                Ok(Ok(result)) => Some(result),
                other => {
                    tracing::error!(order = %id, "cancelled, but the refund failed; reconcile: {other:?}");
                    None
                }
            };
            self.settle_refund(id, amount, &refund, done.as_ref(), now)
                .await?;
        }
        self.inventory.cancel(id, now).await?;
        self.order(id).await
    }

    /// Claims everything captured and not yet refunded for a refund: `None` when nothing is
    /// left. A compare-and-swap on `refunded`, retried while concurrent refunds move it.
    async fn claim_remaining_refund(&self, id: &str) -> Result<Option<i64>> {
        loop {
            let row = sqlx::query("SELECT captured, refunded FROM payments WHERE order_id = $1")
                .bind(id)
                .fetch_one(self.db.reader())
                .await?;
            let captured: i64 = row.try_get("captured")?;
            let refunded: i64 = row.try_get("refunded")?;
            if refunded >= captured {
                return Ok(None);
            }
            let swapped = sqlx::query(
                "UPDATE payments SET refunded = captured WHERE order_id = $1 AND refunded = $2 AND captured = $3",
            )
            .bind(id)
            .bind(refunded)
            .bind(captured)
            .execute(&mut *self.db.write_conn().await?)
            .await?
            .rows_affected();
            if swapped == 1 {
                return Ok(Some(captured - refunded));
            }
        }
    }

    /// Settles a refund claim of `claimed`: records what the gateway refunded (`done`, the
    /// result of `request`) in the refund ledger, gives back what it did not, and brings the
    /// payment status in line with the amounts.
    async fn settle_refund(
        &self,
        id: &str,
        claimed: i64,
        request: &PaymentRequest,
        done: Option<&payment::PaymentResult>,
        now: i64,
    ) -> Result<()> {
        let moved = done.map_or(0, |r| signed(r.amount.amount)).min(claimed);
        let mut tx = self.db.begin().await?;
        // The order row first, then the payment: the order every writer locks them in.
        sqlx::query("UPDATE orders SET updated_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        if let (PaymentRequest::Refund(refund), Some(result)) = (request, done)
            && moved > 0
        {
            sqlx::query(
                "INSERT INTO payment_refunds (operation_id, order_id, amount, step_reference, reason, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&refund.operation_id)
            .bind(id)
            .bind(moved)
            .bind(&result.step_reference)
            .bind(&refund.reason)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        if claimed > moved {
            sqlx::query("UPDATE payments SET refunded = refunded - $2 WHERE order_id = $1")
                .bind(id)
                .bind(claimed - moved)
                .execute(&mut *tx)
                .await?;
        }
        settle_payment_status(&mut tx, id, now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Refunds `amount` of what was captured. Concurrent refunds can never add up to more than
    /// the captured amount: each claims its amount with a guarded update before the gateway is
    /// asked, and gives back what the gateway did not refund.
    pub async fn refund(
        &self,
        id: &str,
        amount: i64,
        reason: Option<String>,
        connector: &Plugin,
        attempt: &str,
        now: i64,
    ) -> Result<Value> {
        if amount <= 0 {
            return Err(OrderError::Invalid("amount must be at least 1".into()));
        }
        self.states(id).await?;
        let claimed = sqlx::query(
            "UPDATE payments SET refunded = refunded + $2 WHERE order_id = $1 AND refunded + $2 <= captured",
        )
        .bind(id)
        .bind(amount)
        .execute(&mut *self.db.write_conn().await?)
        .await?
        .rows_affected();
        if claimed == 0 {
            let row =
                sqlx::query("SELECT captured - refunded AS left FROM payments WHERE order_id = $1")
                    .bind(id)
                    .fetch_one(self.db.reader())
                    .await?;
            return Err(OrderError::RefundTooLarge {
                requested: amount,
                refundable: row.try_get("left")?,
            });
        }
        let pay =
            sqlx::query("SELECT gateway_reference, currency FROM payments WHERE order_id = $1")
                .bind(id)
                .fetch_one(self.db.reader())
                .await?;
        let request = PaymentRequest::Refund(payment::RefundRequest {
            operation_id: format!("{id}:refund:{attempt}"),
            gateway_reference: pay.try_get("gateway_reference")?,
            amount: money(amount, &pay.try_get::<String, _>("currency")?),
            reason,
            now,
        });
        let (done, refused) = match connector.payment(&request).await {
            Ok(call) => match call.output {
                Ok(result) => (Some(result), None),
                Err(e) => (
                    None,
                    Some(OrderError::PaymentRefused {
                        code: snake_name(&e.code),
                        message: "the refund was refused".into(),
                    }),
                ),
            },
            Err(e) => (None, Some(e.into())),
        };
        self.settle_refund(id, amount, &request, done.as_ref(), now)
            .await?;
        if let Some(error) = refused {
            return Err(error);
        }
        self.order(id).await
    }

    /// Records a customer's request to return `lines` of a shipped order. The request's id is
    /// the `return_id` the merchant receives it under.
    pub async fn request_return(
        &self,
        id: &str,
        customer_id: &str,
        lines: &[(String, i64)],
        reason: Option<String>,
        now: i64,
    ) -> Result<ReturnRequested> {
        if lines.is_empty() || lines.len() > 100 || lines.iter().any(|(_, q)| *q <= 0) {
            return Err(OrderError::Invalid(
                "a return needs 1 to 100 lines with quantities of at least 1".into(),
            ));
        }
        if reason.as_ref().is_some_and(|r| r.chars().count() > 500) {
            return Err(OrderError::Invalid("reason is over 500 characters".into()));
        }
        let (status, _, fulfilment) = self.states(id).await?;
        if fulfilment == "unfulfilled" {
            return Err(OrderError::InvalidTransition {
                action: "return",
                state: format!("{status}/{fulfilment}"),
            });
        }
        let shipped = self.inventory.shipped(id).await?;
        for (sku, quantity) in lines {
            let sold: i64 = shipped
                .iter()
                .filter(|a| &a.sku == sku)
                .map(|a| a.quantity)
                .sum();
            if *quantity > sold {
                return Err(OrderError::Invalid(format!(
                    "{sku}: {quantity} asked back but {sold} shipped"
                )));
            }
        }
        let request_id = format!("rr_{}", uuid::Uuid::now_v7().simple());
        let lines: Vec<SkuQuantity> = lines
            .iter()
            .map(|(sku, quantity)| SkuQuantity {
                sku: sku.clone(),
                quantity: *quantity,
            })
            .collect();
        let lines_json = json!(lines);
        sqlx::query("INSERT INTO return_requests (id, order_id, customer_id, lines, reason, status, created_at) VALUES ($1, $2, $3, $4, $5, 'requested', $6)")
            .bind(&request_id)
            .bind(id)
            .bind(customer_id)
            .bind(lines_json.to_string())
            .bind(&reason)
            .bind(now)
            .execute(&mut *self.db.write_conn().await?)
            .await?;
        Ok(ReturnRequested {
            id: request_id,
            order_id: id.to_owned(),
            status: "requested",
            lines,
            reason,
        })
    }

    /// Receives returned units of a shipped order and puts them back on hand where they
    /// shipped from. Never more than was sold comes back, and the same `return_id` is
    /// processed once, however often it is sent.
    pub async fn receive_return(
        &self,
        id: &str,
        return_id: &str,
        lines: &[(String, i64)],
        now: i64,
    ) -> Result<Value> {
        if return_id.is_empty() || return_id.len() > 64 {
            return Err(OrderError::Invalid(
                "return_id must be 1 to 64 characters".into(),
            ));
        }
        if lines.is_empty() || lines.iter().any(|(_, q)| *q <= 0) {
            return Err(OrderError::Invalid(
                "a return needs lines with quantities of at least 1".into(),
            ));
        }
        let (status, _, fulfilment) = self.states(id).await?;
        if fulfilment != "fulfilled" {
            return Err(OrderError::InvalidTransition {
                action: "return",
                state: format!("{status}/{fulfilment}"),
            });
        }
        let shipped = self.inventory.shipped(id).await?;
        let mut tx = self.db.begin().await?;
        // Serialises returns of this order: the order row is locked until commit.
        sqlx::query("UPDATE orders SET updated_at = $2 WHERE id = $1")
            .bind(id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let mut restock = Vec::new();
        for (sku, quantity) in lines {
            let seen = sqlx::query(
                "SELECT quantity, location_id FROM order_returns WHERE return_id = $1 AND sku = $2",
            )
            .bind(return_id)
            .bind(sku)
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(row) = seen {
                // Already received under this return id: restock again (idempotent) in case
                // an earlier attempt stopped half-way.
                restock.push((
                    sku.clone(),
                    row.try_get::<String, _>("location_id")?,
                    row.try_get::<i64, _>("quantity")?,
                ));
                continue;
            }
            let sold: i64 = shipped
                .iter()
                .filter(|a| &a.sku == sku)
                .map(|a| a.quantity)
                .sum();
            let returned: i64 = sqlx::query("SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) AS n FROM order_returns WHERE order_id = $1 AND sku = $2")
                .bind(id)
                .bind(sku)
                .fetch_one(&mut *tx)
                .await?
                .try_get("n")?;
            if returned + quantity > sold {
                return Err(OrderError::Invalid(format!(
                    "{sku}: {quantity} returned but only {} of {sold} sold can still come back",
                    sold - returned
                )));
            }
            let location = shipped
                .iter()
                .find(|a| &a.sku == sku)
                .map(|a| a.location_id.clone())
                .unwrap_or_default();
            sqlx::query("INSERT INTO order_returns (order_id, return_id, sku, location_id, quantity, received_at) VALUES ($1, $2, $3, $4, $5, $6)")
                .bind(id)
                .bind(return_id)
                .bind(sku)
                .bind(&location)
                .bind(quantity)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            restock.push((sku.clone(), location, *quantity));
        }
        tx.commit().await?;
        for (sku, location, quantity) in restock {
            self.inventory
                .restock(&format!("{id}:{return_id}"), &sku, &location, quantity, now)
                .await?;
        }
        sqlx::query(
            "UPDATE return_requests SET status = 'received' WHERE id = $1 AND order_id = $2",
        )
        .bind(return_id)
        .bind(id)
        .execute(&mut *self.db.write_conn().await?)
        .await?;
        self.order(id).await
    }
}

/// Sets a captured order's payment status from its amounts: `captured`, `partially_refunded`
/// or `refunded`. Orders whose payment was never captured (authorised, capturing, voided) are
/// left alone.
/// Writes a new order, its lines and its payment; returns the customer the cart belonged to.
/// What checkout reads before it writes.
/// The wall clock in ms since the Unix epoch.
fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// What releases the money a checkout's authorisation `result` holds: a void, or a refund when
/// the gateway captured at once. The same operation ids every time, so repeating it is safe.
pub(crate) fn undo_request(
    order_id: &str,
    result: &payment::PaymentResult,
    now: i64,
) -> PaymentRequest {
    if result.status == payment::PaymentStatus::Captured {
        PaymentRequest::Refund(payment::RefundRequest {
            operation_id: format!("{order_id}:refund-unrequested-capture"),
            gateway_reference: result.gateway_reference.clone(),
            amount: result.amount.clone(),
            reason: Some("captured at authorisation; checkout refused".into()),
            now,
        })
    } else {
        PaymentRequest::Void(payment::VoidRequest {
            operation_id: format!("{order_id}:void"),
            gateway_reference: result.gateway_reference.clone(),
            amount: result.amount.clone(),
            now,
        })
    }
}

/// How a claimed capture failed, which decides whether the claim is given back.
enum CaptureFailure {
    /// Nothing moved at the gateway: refused, or failed before it was asked.
    Definite(OrderError),
    /// The gateway may have captured.
    Uncertain(OrderError),
}

/// The payment a capture asks the gateway about.
struct ClaimedPayment {
    gateway_reference: String,
    currency: String,
}

enum BeforeCheckout {
    /// The idempotency key was used before (the answer is the API's to give).
    KeySeen,
    /// The cart already has a live order.
    Ordered(String),
    /// The cart, the catalog's answer for its SKUs, and the buyer's history.
    Cart {
        contents: Box<carts::CartContents>,
        variants: HashMap<String, PricedVariant>,
        history: History,
        /// The shipping methods offered in the cart's currency.
        offers: Vec<shipping::Offer>,
    },
}

/// The cart's order, unless it was cancelled.
async fn live_order_in(tx: &mut dyn Tx, cart_id: &str) -> Result<Option<String>> {
    Ok(tx
        .fetch(
            "SELECT id FROM orders WHERE cart_id = $1 AND status <> 'cancelled'",
            &args![cart_id],
        )
        .await?
        .first()
        .map(|r| r.get::<String>("id"))
        .transpose()?)
}

/// How long a refused payment is kept (see [`sweep_payment_failures`]).
pub const PAYMENT_FAILURES_KEPT_MS: i64 = 7 * 24 * 60 * 60 * 1000;

/// Forgets the refused payments (`payment_failures`) older than [`PAYMENT_FAILURES_KEPT_MS`]
/// as the clock reads `now`: the buyer's history counts only the last day's, and a week is
/// kept for a merchant looking into one. Returns how many were forgotten. The maintenance
/// task runs it.
pub async fn sweep_payment_failures(db: &Db, now: i64) -> sqlx::Result<u64> {
    db.execute(
        "DELETE FROM payment_failures WHERE at < $1",
        args![now - PAYMENT_FAILURES_KEPT_MS],
    )
    .await
}

/// A payment the gateway refused at checkout, as `payment_failures` keeps it (migration
/// 0024): the buyer's history counts them. An unreachable gateway or a failing connector is
/// not one: it says nothing about the buyer.
struct PaymentFailure {
    /// Lower-cased, as orders keep it.
    email: String,
    customer_id: Option<String>,
    /// The refusal's code, as the checkout's error gives it.
    code: String,
    amount: i64,
    currency: String,
}

/// What the fraud hook is told of a buyer's past ([`fraud::CustomerHistory`]), by the
/// checkout's email.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct History {
    /// Orders that were not cancelled.
    orders: u32,
    /// Of those, the ones of the last 24 hours.
    orders_last_24h: u32,
    /// Payments the gateway refused in the last 24 hours (`payment_failures`).
    failed_payments_last_24h: u32,
    /// The totals of those orders in the checkout's currency, in its minor units: amounts in
    /// other currencies are not added (there is no exchange rate to add them with).
    spend: i64,
    /// The first order's time, or the account's creation if that is earlier.
    first_seen: Option<i64>,
    /// Chargebacks on earlier orders (disputes past the inquiry stage, whatever their end).
    chargebacks: u32,
}

/// A buyer's history in one statement (see [`History`]): `$1` the email (lower-cased, as
/// orders store it), `$2` the start of the last 24 hours, `$3` the checkout's currency, `$4`
/// the cart's owner (none for a guest); an account counts if it is the owner's or has the
/// email (two look-ups by key, not one `OR`, which PostgreSQL answers with a bitmap of both
/// indexes). The orders part reads the email index alone (migrations 0023 and 0024): a buyer
/// with many orders costs index pages, not a table row per order; the chargebacks, the
/// disputes' email index alone (migration 0028).
const HISTORY: &str = "SELECT CAST(COUNT(*) AS BIGINT) AS n, \
     CAST(COALESCE(SUM(CASE WHEN created_at > $2 THEN 1 ELSE 0 END), 0) AS BIGINT) AS recent, \
     CAST(COALESCE(SUM(CASE WHEN currency = $3 THEN total ELSE 0 END), 0) AS BIGINT) AS spend, \
     MIN(created_at) AS first, \
     (SELECT CAST(COUNT(*) AS BIGINT) FROM payment_failures f WHERE f.email = $1 AND f.at > $2) AS failed, \
     (SELECT c.created_at FROM customers c WHERE c.email = $1) AS joined, \
     (SELECT c.created_at FROM customers c WHERE c.id = $4) AS owner_joined, \
     (SELECT CAST(COUNT(*) AS BIGINT) FROM disputes d WHERE d.email = $1 \
      AND d.status IN ('open', 'won', 'lost')) AS chargebacks \
     FROM orders WHERE email = $1 AND status <> 'cancelled'";

async fn history_in(
    tx: &mut dyn Tx,
    email: &str,
    currency: &str,
    customer_id: Option<&str>,
    now: i64,
) -> Result<History> {
    let row = tx
        .fetch_one(
            HISTORY,
            &args![
                crate::customers::normalized_email(email),
                now - 24 * 60 * 60 * 1000,
                currency,
                customer_id
            ],
        )
        .await?;
    let count = |column: &str| -> Result<u32> {
        Ok(u32::try_from(row.get::<i64>(column)?).unwrap_or(u32::MAX))
    };
    let mut seen = Vec::with_capacity(3);
    for column in ["first", "joined", "owner_joined"] {
        seen.extend(row.get::<Option<i64>>(column)?);
    }
    Ok(History {
        orders: count("n")?,
        orders_last_24h: count("recent")?,
        failed_payments_last_24h: count("failed")?,
        spend: row.get("spend")?,
        first_seen: seen.into_iter().min(),
        chargebacks: count("chargebacks")?,
    })
}

/// The statements that insert an order, its lines and its payment, and end its checkout
/// attempt, with their values: built before the write transaction, run inside it (with the
/// key's answer and the reservations' commit, [`OrderInsert::run_in`]). On PostgreSQL one
/// statement (data-modifying CTEs; the foreign keys are checked at its end), on SQLite one per
/// table.
struct OrderInsert {
    /// The order's and the payment's values.
    values: Vec<crate::db::Value>,
    /// Each statement's lines.
    lines: Vec<Vec<crate::db::Value>>,
}

impl OrderInsert {
    const ORDER: &str = "INSERT INTO orders (id, cart_id, email, status, payment_status, fulfilment_status, currency, \
         subtotal, discount_total, shipping_total, total, shipping_address, billing_address, decisions, created_at, updated_at, \
         shipping_method, customer_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $15, $16, $17)";
    const PAYMENT: &str = "INSERT INTO payments (order_id, plugin, gateway_reference, currency, authorized) \
         VALUES ($1, $18, $19, $20, $21)";
    const LINES: &str = "INSERT INTO order_lines (order_id, line_no, sku, quantity, unit_price, discount, total) VALUES";
    /// The checkout attempt is over once its order is recorded (see [`crate::recovery`]).
    const END_ATTEMPT: &str = "DELETE FROM checkout_attempts WHERE order_id = $1";
    /// Values of the order and payment statements.
    const WIDTH: usize = 21;

    /// [`Self::LINES`] for `count` lines, numbered from `$1`.
    fn lines(count: usize) -> std::borrow::Cow<'static, str> {
        static LINES: SqlByCount = SqlByCount::new();
        LINES.get(count, |count| {
            format!("{} {}", Self::LINES, param_rows(1, count, 7))
        })
    }

    fn new(
        order: &OrderView,
        cart_id: &str,
        payment: &PaymentView,
        payment_currency: &str,
    ) -> Self {
        let values = args![
            &order.id,
            cart_id,
            &order.email,
            &order.status,
            &order.payment_status,
            &order.fulfilment_status,
            &order.currency,
            order.subtotal,
            order.discount_total,
            order.shipping_total,
            order.total,
            order.shipping_address.to_string(),
            order.billing_address.to_string(),
            order.decisions.to_string(),
            order.created_at,
            (!order.shipping_method.is_null()).then(|| order.shipping_method.to_string()),
            order.customer_id.as_deref(),
            &payment.plugin,
            &payment.gateway_reference,
            payment_currency,
            payment.authorized,
        ]
        .to_vec();
        debug_assert_eq!(values.len(), Self::WIDTH);
        let lines = order
            .lines
            .chunks(LINES_PER_STATEMENT)
            .enumerate()
            .map(|(chunk_no, chunk)| {
                let mut values = Vec::with_capacity(chunk.len() * 7);
                for (i, line) in chunk.iter().enumerate() {
                    let line_no = chunk_no * LINES_PER_STATEMENT + i;
                    values.extend(args![
                        &order.id,
                        i64::try_from(line_no).unwrap_or(i64::MAX),
                        &line.sku,
                        line.quantity,
                        line.unit_price,
                        line.discount,
                        line.total,
                    ]);
                }
                values
            })
            .collect();
        Self { values, lines }
    }

    /// Writes the order, its payment and lines, and ends its checkout attempt; then stores
    /// `finish` (the key, the status and the answer) and commits the order's reservations
    /// ([`inventory::COMMIT_RESERVATIONS`], their movements written at `commit_at` on
    /// PostgreSQL). Returns the committed reservations, for [`inventory::committed_in`].
    ///
    /// On PostgreSQL all of it is one statement (parts of one `WITH`) unless the order has
    /// more lines than one statement carries: a record transaction of three round trips
    /// (begin, the statement, commit), where it took five. On SQLite, one statement each.
    async fn run_in(
        self,
        tx: &mut dyn Tx,
        finish: Option<(&idempotency::Key, u16, &str)>,
        commit_at: i64,
    ) -> std::result::Result<Vec<crate::db::Row>, sqlx::Error> {
        let Self { mut values, lines } = self;
        let mut lines = lines.into_iter();
        if tx.backend() == Backend::Postgres {
            let sql = format!(
                "{} SELECT sku, location_id, quantity, expires_at FROM r",
                Self::postgres_parts(&mut values, lines.next(), finish, commit_at).0
            );
            let committed = tx.fetch(&sql, &values).await?;
            for chunk in lines {
                tx.execute(&Self::lines(chunk.len() / 7), &chunk).await?;
            }
            return Ok(committed);
        }
        tx.execute(Self::ORDER, &values[..17]).await?;
        tx.execute(Self::PAYMENT, &values).await?;
        tx.execute(Self::END_ATTEMPT, &values[..1]).await?;
        for chunk in lines {
            tx.execute(&Self::lines(chunk.len() / 7), &chunk).await?;
        }
        if let Some((key, status, answer)) = finish {
            key.finish_in(tx, status, answer).await?;
        }
        tx.fetch(inventory::COMMIT_RESERVATIONS, &values[..1]).await
    }

    /// PostgreSQL, for an order whose lines fit one statement: [`Self::run_in`]'s statement,
    /// which also checks what [`inventory::committed_in`] checks — exactly `expected`
    /// reservations committed, none expired at `commit_at` — and fails as a whole with
    /// [`inventory::NOT_COMMITTED`] otherwise. So it needs no transaction around it: one round
    /// trip where a transaction took three.
    async fn run_checked_on_postgres(
        self,
        tx: &mut dyn Tx,
        finish: Option<(&idempotency::Key, u16, &str)>,
        commit_at: i64,
        expected: usize,
    ) -> std::result::Result<(), sqlx::Error> {
        let Self { mut values, lines } = self;
        let (parts, now_at) =
            Self::postgres_parts(&mut values, lines.into_iter().next(), finish, commit_at);
        values.push(i64::try_from(expected).unwrap_or(i64::MAX).into());
        let sql = format!(
            "{parts} SELECT {} AS committed",
            inventory::commit_check_on_postgres(now_at, now_at + 1)
        );
        tx.fetch(&sql, &values).await.map(drop)
    }

    /// PostgreSQL: the `WITH` of the order's statement — the order, payment, attempt's end,
    /// the `lines` (one statement's worth), the key's answer, and the reservations' commit
    /// with its movements (`r`, `mv`) — its arguments appended to `values` after the order's.
    /// Returns it with the parameter number of `commit_at`.
    fn postgres_parts(
        values: &mut Vec<crate::db::Value>,
        lines: Option<Vec<crate::db::Value>>,
        finish: Option<(&idempotency::Key, u16, &str)>,
        commit_at: i64,
    ) -> (String, usize) {
        let mut sql = format!(
            "WITH o AS ({}), p AS ({}), a AS ({})",
            Self::ORDER,
            Self::PAYMENT,
            Self::END_ATTEMPT
        );
        if let Some(first) = lines {
            sql.push_str(&format!(
                ", l AS ({} {})",
                Self::LINES,
                param_rows(values.len() + 1, first.len() / 7, 7)
            ));
            values.extend(first);
        }
        if let Some((key, status, answer)) = finish {
            sql.push_str(&format!(
                ", k AS ({})",
                idempotency::finish_sql(values.len() + 1)
            ));
            values.extend(key.finish_args(status, answer));
        }
        values.push(commit_at.into());
        let now_at = values.len();
        sql.push_str(&format!(
            ", {}",
            inventory::commit_parts_on_postgres(now_at)
        ));
        (sql, now_at)
    }
}

pub(crate) async fn settle_payment_status(
    conn: &mut sqlx::AnyConnection,
    id: &str,
    now: i64,
) -> std::result::Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE orders SET updated_at = $2, payment_status = (SELECT CASE WHEN refunded = 0 THEN 'captured' \
         WHEN refunded >= captured THEN 'refunded' ELSE 'partially_refunded' END FROM payments WHERE order_id = $1) \
         WHERE id = $1 AND payment_status IN ('captured', 'partially_refunded', 'refunded')",
    )
    .bind(id)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// The `id` column of `rows`.
fn ids_of(rows: &[crate::db::Row]) -> sqlx::Result<Vec<String>> {
    rows.iter().map(|r| r.get("id")).collect()
}

/// `$head`, the set of order ids given as `$1` (a JSON array of strings), then `$tail`: one
/// statement text per backend however many orders are read, so a page of orders does not
/// fill the statement caches with one text per page size.
macro_rules! of_orders {
    ($backend:expr, $head:literal, $tail:literal) => {
        match $backend {
            Backend::Sqlite => concat!($head, " (SELECT value FROM json_each($1)) ", $tail),
            Backend::Postgres => concat!(
                $head,
                " (SELECT json_array_elements_text(CAST($1 AS json))) ",
                $tail
            ),
        }
    };
}

/// The orders `ids`, in that order, each with its lines, payment and refunds, fulfilments and
/// return requests (an id that names no order is left out). Seven statements however many
/// orders there are: run it in [`Db::read_snapshot`], so that they agree.
async fn views_in(tx: &mut dyn Tx, ids: &[String]) -> sqlx::Result<Vec<OrderView>> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let set = args![serde_json::to_string(ids).unwrap_or_default()];
    let backend = tx.backend();
    let orders = Page {
        position: ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), i))
            .collect(),
        len: ids.len(),
        set: &set,
    };
    let json = |row: &crate::db::Row, column: &str| -> sqlx::Result<Value> {
        Ok(row
            .get::<Option<String>>(column)?
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or(Value::Null))
    };

    let sql = of_orders!(
        backend,
        "SELECT order_id, sku, quantity, unit_price, discount, total FROM order_lines WHERE order_id IN",
        "ORDER BY order_id, line_no"
    );
    let mut lines = orders
        .each(tx, sql, |r| {
            Ok(OrderLineView {
                sku: r.get("sku")?,
                quantity: r.get("quantity")?,
                unit_price: r.get("unit_price")?,
                discount: r.get("discount")?,
                total: r.get("total")?,
            })
        })
        .await?;
    let sql = of_orders!(
        backend,
        "SELECT order_id, amount, step_reference, reason, created_at FROM payment_refunds WHERE order_id IN",
        "ORDER BY created_at, operation_id"
    );
    let mut refunds = orders
        .each(tx, sql, |r| {
            Ok(RefundView {
                amount: r.get("amount")?,
                reference: r.get("step_reference")?,
                reason: r.get("reason")?,
                created_at: r.get("created_at")?,
            })
        })
        .await?;
    let sql = of_orders!(
        backend,
        "SELECT order_id, dispute_id, status, amount, reason, respond_by, opened_at, updated_at \
         FROM disputes WHERE order_id IN",
        "ORDER BY opened_at, dispute_id"
    );
    let mut disputes = orders
        .each(tx, sql, |r| {
            Ok(DisputeView {
                id: r.get("dispute_id")?,
                status: r.get("status")?,
                amount: r.get("amount")?,
                reason: r.get("reason")?,
                respond_by: r.get("respond_by")?,
                opened_at: r.get("opened_at")?,
                updated_at: r.get("updated_at")?,
            })
        })
        .await?;
    let sql = of_orders!(
        backend,
        "SELECT order_id, plugin, gateway_reference, authorized, captured, refunded FROM payments WHERE order_id IN",
        ""
    );
    let mut payments = orders
        .each(tx, sql, |r| {
            Ok(PaymentView {
                plugin: r.get("plugin")?,
                gateway_reference: r.get("gateway_reference")?,
                authorized: r.get("authorized")?,
                captured: r.get("captured")?,
                refunded: r.get("refunded")?,
                refunds: Vec::new(),
                disputes: Vec::new(),
            })
        })
        .await?;
    let sql = of_orders!(
        backend,
        "SELECT id, order_id, carrier, tracking, created_at FROM fulfilments WHERE order_id IN",
        "ORDER BY created_at, id"
    );
    let mut fulfilments = orders
        .each(tx, sql, |r| {
            Ok(FulfilmentView {
                id: r.get("id")?,
                carrier: r.get("carrier")?,
                tracking: r.get("tracking")?,
                created_at: r.get("created_at")?,
                lines: Vec::new(),
            })
        })
        .await?;
    let sql = of_orders!(
        backend,
        "SELECT l.fulfilment_id, l.sku, l.quantity FROM fulfilment_lines l \
         JOIN fulfilments f ON f.id = l.fulfilment_id WHERE f.order_id IN",
        "ORDER BY l.fulfilment_id, l.sku"
    );
    let mut shipped: HashMap<String, Vec<SkuQuantity>> = HashMap::new();
    for r in tx.fetch(sql, &set).await? {
        shipped
            .entry(r.get("fulfilment_id")?)
            .or_default()
            .push(SkuQuantity {
                sku: r.get("sku")?,
                quantity: r.get("quantity")?,
            });
    }
    for fulfilment in fulfilments.iter_mut().flatten() {
        fulfilment.lines = shipped.remove(&fulfilment.id).unwrap_or_default();
    }
    let sql = of_orders!(
        backend,
        "SELECT id, order_id, lines, reason, status, created_at FROM return_requests WHERE order_id IN",
        "ORDER BY created_at, id"
    );
    let mut returns = orders
        .each(tx, sql, |r| {
            Ok(ReturnRequestView {
                id: r.get("id")?,
                lines: json(r, "lines")?,
                reason: r.get("reason")?,
                status: r.get("status")?,
                created_at: r.get("created_at")?,
            })
        })
        .await?;

    let sql = of_orders!(
        backend,
        "SELECT id, email, customer_id, status, payment_status, fulfilment_status, currency, \
         subtotal, discount_total, shipping_total, total, shipping_method, shipping_address, \
         billing_address, decisions, created_at FROM orders WHERE id IN",
        ""
    );
    let mut views: Vec<Option<OrderView>> = ids.iter().map(|_| None).collect();
    for r in tx.fetch(sql, &set).await? {
        let Some(&i) = orders.position.get(r.text("id")?) else {
            continue;
        };
        let payment = payments[i].pop().map(|mut payment| {
            payment.refunds = std::mem::take(&mut refunds[i]);
            payment.disputes = std::mem::take(&mut disputes[i]);
            payment
        });
        views[i] = Some(OrderView {
            id: r.get("id")?,
            email: r.get("email")?,
            customer_id: r.get("customer_id")?,
            status: r.get("status")?,
            payment_status: r.get("payment_status")?,
            fulfilment_status: r.get("fulfilment_status")?,
            currency: r.get("currency")?,
            subtotal: r.get("subtotal")?,
            discount_total: r.get("discount_total")?,
            shipping_total: r.get("shipping_total")?,
            total: r.get("total")?,
            shipping_method: json(&r, "shipping_method")?,
            shipping_address: json(&r, "shipping_address")?,
            billing_address: json(&r, "billing_address")?,
            decisions: json(&r, "decisions")?,
            lines: std::mem::take(&mut lines[i]),
            fulfilments: std::mem::take(&mut fulfilments[i]),
            return_requests: std::mem::take(&mut returns[i]),
            payment,
            created_at: r.get("created_at")?,
        });
    }
    Ok(views.into_iter().flatten().collect())
}

/// The orders [`views_in`] reads: where each id stands on the page, and the statement
/// argument that names them all.
struct Page<'a> {
    position: HashMap<&'a str, usize>,
    len: usize,
    set: &'a [crate::db::Value],
}

impl Page<'_> {
    /// The rows of `sql` over the page's orders, each built by `build`, in one list per order
    /// (by the row's `order_id`, in the statement's order).
    async fn each<T>(
        &self,
        tx: &mut dyn Tx,
        sql: &str,
        build: impl Fn(&crate::db::Row) -> sqlx::Result<T>,
    ) -> sqlx::Result<Vec<Vec<T>>> {
        let mut out: Vec<Vec<T>> = (0..self.len).map(|_| Vec::new()).collect();
        for row in tx.fetch(sql, self.set).await? {
            if let Some(&i) = self.position.get(row.text("order_id")?) {
                out[i].push(build(&row)?);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_codes_are_reported_in_snake_case() {
        assert_eq!(
            snake_name(&payment::PaymentErrorCode::InsufficientFunds),
            "insufficient_funds"
        );
        assert_eq!(
            snake_name(&payment::PaymentStatus::RequiresAction),
            "requires_action"
        );
        assert_eq!(snake_name(&payment::PaymentErrorCode::Declined), "declined");
    }

    /// The buyer's history is read by every checkout; from the table, it cost a row look-up
    /// per earlier order of the buyer.
    #[tokio::test]
    async fn a_buyers_history_is_read_from_the_email_index_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("plan.db").display());
        let db = crate::db::Db::connect(&url).await.expect("connect");
        db.migrate().await.expect("migrate");
        let plan: Vec<String> = sqlx::query(&format!("EXPLAIN QUERY PLAN {HISTORY}"))
            .fetch_all(db.reader())
            .await
            .expect("plan")
            .iter()
            .map(|step| sqlx::Row::get(step, "detail"))
            .collect();
        assert!(
            plan.iter()
                .any(|step| step.contains("USING COVERING INDEX orders_by_email (email=?)")),
            "{plan:?}"
        );
    }
}
