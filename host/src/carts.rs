//! Carts: lines of SKUs in one currency, coupon codes, checkout details (email, addresses),
//! the chosen shipping method, and a secret token.
//!
//! A cart is reached with its id *and* its token (the token is stored as a SHA-256 digest);
//! a wrong token looks exactly like an unknown cart. Prices are never stored on the cart: it
//! is priced when read, from the catalog, the chosen shipping method's rate in its currency
//! and the active pricing plugins.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::catalog::{PricedVariant, Prices};
use crate::db::{Db, Tx, Value, args};
use crate::plugin::bindings::pricing;
use crate::plugin::bindings::types::{Attribute, Money};
use crate::shipping::{self, Offer};

/// Largest quantity of one line.
pub const MAX_LINE_QUANTITY: i64 = 999;
/// Most lines in a cart.
pub const MAX_LINES: usize = 100;
/// Most coupon codes on a cart.
pub const MAX_COUPONS: usize = 10;

/// Why a cart operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum CartError {
    /// Unknown cart, or the wrong token for it.
    #[error("no such cart")]
    NotFound,
    /// Unknown line.
    #[error("no such line in this cart")]
    LineNotFound,
    /// The SKU does not exist, is archived, or has no price in the cart's currency.
    #[error("SKU {0:?} is not for sale in this cart's currency")]
    NotForSale(String),
    /// Bad input; the message says what.
    #[error("{0}")]
    Invalid(String),
    /// The shipping method is not offered for this cart or does not ship to its address.
    #[error("{0}")]
    ShippingUnavailable(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The catalog failed.
    #[error(transparent)]
    Catalog(#[from] crate::catalog::CatalogError),
}

impl CartError {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            CartError::NotFound => "cart_not_found",
            CartError::LineNotFound => "line_not_found",
            CartError::NotForSale(_) => "not_for_sale",
            CartError::Invalid(_) => "invalid_input",
            CartError::ShippingUnavailable(_) => "shipping_unavailable",
            CartError::Database(_) | CartError::Catalog(_) => "internal",
        }
    }
}

type Result<T> = std::result::Result<T, CartError>;

/// A cart's contents, unpriced.
#[derive(Debug, Clone, Serialize)]
pub struct CartContents {
    /// Its id.
    pub id: String,
    /// Its currency.
    pub currency: String,
    /// Its owner, if a customer is signed in.
    pub customer_id: Option<String>,
    /// Its lines, in the order they were added.
    pub lines: Vec<CartLine>,
    /// Entered coupon codes, upper-case.
    pub coupon_codes: Vec<String>,
    /// The chosen shipping method's code.
    pub shipping_method: Option<String>,
    /// The chosen method priced in the cart's currency; `None` when none is chosen, or the
    /// chosen one is no longer offered or does not ship to the saved shipping address.
    pub shipping: Option<Offer>,
    /// The order the cart became, unless that was cancelled.
    #[serde(skip)]
    pub live_order: Option<String>,
    /// The checkout details saved on it.
    #[serde(skip)]
    pub details: CartDetails,
    /// The digest of its token.
    #[serde(skip)]
    token_hash: String,
    /// The catalog generation read with it (see [`crate::catalog::Prices`]), by which its
    /// lines are priced from the catalog cache; 0 for a cart just created, with nothing to
    /// price.
    #[serde(skip)]
    pub(crate) generation: i64,
    /// The orders its owner placed that were not cancelled (0 for a guest's cart): the pricing
    /// hook's `customer.order-count`.
    #[serde(skip)]
    pub(crate) owner_orders: u32,
    /// Its owner's segments (none for a guest's cart): the hooks' `customer.tags`.
    #[serde(skip)]
    pub(crate) owner_tags: Vec<String>,
}

/// What opens a cart: its secret token as sent, or its owner signed in.
#[derive(Debug, Clone, Default)]
pub struct CartKey {
    /// The cart's token (`X-Cart-Token`).
    pub token: Option<String>,
    /// The signed-in customer.
    pub customer: Option<String>,
}

/// Checks, inside the caller's transaction, that `key` opens cart `id`; a cart it does not
/// open is no cart at all ([`CartError::NotFound`]).
async fn open_in(tx: &mut dyn Tx, id: &str, key: &CartKey) -> Result<()> {
    let rows = tx
        .fetch(
            "SELECT token_hash, customer_id FROM carts WHERE id = $1",
            &args![id],
        )
        .await?;
    let row = rows.first().ok_or(CartError::NotFound)?;
    let stored: String = row.get("token_hash")?;
    let owner: Option<String> = row.get("customer_id")?;
    if !opens(&stored, owner.as_deref(), key) {
        return Err(CartError::NotFound);
    }
    Ok(())
}

/// A cart with the catalog's answer for its SKUs: everything pricing it needs. Every change
/// to a cart returns it as its own transaction left it (read on the connection that wrote,
/// rather than in a read transaction of its own afterwards).
#[derive(Debug, Clone)]
pub struct CartView {
    /// The cart.
    pub contents: CartContents,
    /// Its SKUs for sale in its currency; a SKU missing here is no longer for sale.
    pub variants: HashMap<String, PricedVariant>,
}

impl CartView {
    /// The cart as the pricing hook sees it, with catalog prices; lines whose SKU is no longer
    /// for sale in the cart's currency are left out and returned separately.
    pub fn pricing_input(&self, now: i64) -> (pricing::Cart, Vec<String>) {
        pricing_cart(&self.contents, self.variants.clone(), now)
    }
}

/// Cart `id` and the catalog's answer for its SKUs, inside the caller's transaction.
async fn view_in(tx: &mut dyn Tx, prices: &Prices, id: &str) -> Result<CartView> {
    let contents = contents_in(tx, id).await?.ok_or(CartError::NotFound)?;
    let skus: Vec<String> = contents.lines.iter().map(|l| l.sku.clone()).collect();
    let variants = crate::catalog::priced_variants_at(
        tx,
        prices,
        contents.generation,
        &skus,
        &contents.currency,
    )
    .await?;
    Ok(CartView { contents, variants })
}

impl CartContents {
    /// Whether `key` opens this cart.
    pub fn opens_with(&self, key: &CartKey) -> bool {
        opens(&self.token_hash, self.customer_id.as_deref(), key)
    }
}

/// Whether `key`'s token (against the stored digest `token_hash`) or its signed-in customer
/// (against the cart's `owner`) opens a cart.
fn opens(token_hash: &str, owner: Option<&str>, key: &CartKey) -> bool {
    // Both sides are digests of fixed length, so comparing them leaks nothing useful.
    let by_token = key
        .token
        .as_deref()
        .is_some_and(|t| token_hash == digest(t));
    let by_owner = key.customer.is_some() && owner == key.customer.as_deref();
    by_token || by_owner
}

/// One line.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct CartLine {
    /// Its id.
    pub id: String,
    /// The SKU.
    pub sku: String,
    /// Units.
    pub quantity: i64,
}

/// Checkout details saved on a cart.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CartDetails {
    /// Where to send the receipt.
    #[serde(default)]
    pub email: Option<String>,
    /// Where to ship.
    #[serde(default)]
    pub shipping_address: Option<crate::orders::Address>,
    /// Where to bill; the shipping address when absent.
    #[serde(default)]
    pub billing_address: Option<crate::orders::Address>,
}

/// The carts service.
#[derive(Debug, Clone)]
pub struct Carts {
    db: Db,
    /// The catalog's answers for SKUs, shared with checkout.
    prices: Prices,
}

fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

fn check_quantity(quantity: i64) -> Result<()> {
    if !(1..=MAX_LINE_QUANTITY).contains(&quantity) {
        return Err(CartError::Invalid(format!(
            "quantity must be 1 to {MAX_LINE_QUANTITY}, got {quantity}"
        )));
    }
    Ok(())
}

/// Coupon codes as a cart keeps them: trimmed, upper-case, without duplicates.
fn coupon_codes(codes: &[String]) -> Result<BTreeSet<String>> {
    let codes: BTreeSet<String> = codes.iter().map(|c| c.trim().to_uppercase()).collect();
    if codes.len() > MAX_COUPONS {
        return Err(CartError::Invalid(format!(
            "at most {MAX_COUPONS} coupon codes"
        )));
    }
    for code in &codes {
        if code.is_empty()
            || code.len() > 64
            || !code
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(CartError::Invalid(format!(
                "coupon code {code:?}: use 1 to 64 letters, digits, '-' or '_'"
            )));
        }
    }
    Ok(codes)
}

/// Checkout details, checked, as the cart stores them (JSON text).
fn checked_details(details: &CartDetails) -> Result<String> {
    if let Some(email) = &details.email
        && (!email.contains('@') || email.len() > 254)
    {
        return Err(CartError::Invalid("email is not an email address".into()));
    }
    for (what, address) in [
        ("shipping_address", &details.shipping_address),
        ("billing_address", &details.billing_address),
    ] {
        if let Some(address) = address {
            address
                .validate(what)
                .map_err(|e| CartError::Invalid(e.to_string()))?;
        }
    }
    serde_json::to_string(details).map_err(|e| CartError::Invalid(e.to_string()))
}

impl Carts {
    /// Carts over `db`.
    pub fn new(db: Db, prices: Prices) -> Self {
        Self { db, prices }
    }

    /// Creates an empty cart, owned by `customer` if one is signed in; returns it and its secret
    /// token (shown once).
    pub async fn create(
        &self,
        currency: &str,
        customer: Option<&str>,
        now: i64,
    ) -> Result<(CartView, String)> {
        if !crate::catalog::is_currency(currency) {
            return Err(CartError::Invalid(format!(
                "{currency:?} is not an ISO 4217 currency code"
            )));
        }
        let id = uuid::Uuid::now_v7().to_string();
        let token = format!(
            "ct_{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let token_hash = digest(&token);
        self.db
            .execute(
                "INSERT INTO carts (id, token_hash, currency, customer_id, created_at, updated_at) \
                 VALUES ($1, $2, $3, $5, $4, $4)",
                args![&id, &token_hash, currency, now, customer],
            )
            .await?;
        // As the database now holds it: nothing to read back.
        let contents = CartContents {
            id,
            currency: currency.to_owned(),
            customer_id: customer.map(str::to_owned),
            lines: Vec::new(),
            coupon_codes: Vec::new(),
            shipping_method: None,
            shipping: None,
            live_order: None,
            details: CartDetails::default(),
            token_hash,
            generation: 0,
            // Priced only once it has lines, which a read gives with these.
            owner_orders: 0,
            owner_tags: Vec::new(),
        };
        let view = CartView {
            contents,
            variants: HashMap::new(),
        };
        Ok((view, token))
    }

    /// Checks that `key` opens cart `id`.
    pub async fn authorize(&self, id: &str, key: &CartKey) -> Result<()> {
        let (id, key) = (id.to_owned(), key.clone());
        self.db
            .read(move |tx| Box::pin(async move { open_in(tx, &id, &key).await }))
            .await
    }

    /// The SKUs in `customer`'s open cart, in the order they were added: the cart of theirs
    /// changed last that has not become an order (an order since cancelled does not count).
    /// None when they have no such cart. The personalization hook's `cart-skus`.
    pub async fn open_cart_skus(&self, customer: &str) -> Result<Vec<String>> {
        let customer = customer.to_owned();
        self.db
            .read(move |tx| {
                Box::pin(async move {
                    let rows = tx
                        .fetch(
                            "SELECT sku FROM cart_lines WHERE cart_id = ( \
                               SELECT c.id FROM carts c WHERE c.customer_id = $1 \
                                 AND NOT EXISTS (SELECT 1 FROM orders o \
                                   WHERE o.cart_id = c.id AND o.status <> 'cancelled') \
                               ORDER BY c.updated_at DESC, c.id DESC LIMIT 1) \
                             ORDER BY position",
                            &args![&customer],
                        )
                        .await?;
                    rows.iter()
                        .map(|row| Ok(row.get("sku")?))
                        .collect::<Result<Vec<String>>>()
                })
            })
            .await
    }

    /// The cart, if `key` opens it, and the catalog's answer for its SKUs, in one read.
    pub async fn view(&self, id: &str, key: &CartKey) -> Result<CartView> {
        let (id, key) = (id.to_owned(), key.clone());
        let prices = self.prices.clone();
        self.db
            .read(move |tx| {
                Box::pin(async move {
                    let view = view_in(tx, &prices, &id).await?;
                    if !view.contents.opens_with(&key) {
                        return Err(CartError::NotFound);
                    }
                    Ok(view)
                })
            })
            .await
    }

    /// Adds `quantity` of `sku` to the cart `key` opens; adding a SKU already in the cart adds
    /// to its line.
    pub async fn add_line(
        &self,
        id: &str,
        key: &CartKey,
        sku: &str,
        quantity: i64,
        now: i64,
    ) -> Result<CartView> {
        // Refused only once the cart is open: to anyone else it is no cart at all.
        let checked = check_quantity(quantity);
        let line = args![
            uuid::Uuid::now_v7().to_string(),
            id,
            sku,
            quantity,
            now,
            MAX_LINE_QUANTITY
        ];
        let (wanted, cart, key) = (sku.to_owned(), id.to_owned(), key.clone());
        let prices = self.prices.clone();
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    open_in(tx, &cart, &key).await?;
                    checked?;
                    // What the checks need, in one statement: whether the SKU is for sale in
                    // the cart's currency, how many lines the cart has, and whether one is
                    // this SKU's. Checked in the transaction that adds the line, so two adds at
                    // once cannot both pass the line limit on SQLite.
                    let found = tx
                        .fetch(
                            "SELECT \
                               CAST((SELECT COUNT(*) FROM variants v JOIN products p ON p.id = v.product_id \
                                     JOIN variant_prices pr ON pr.sku = v.sku AND pr.currency = c.currency \
                                     WHERE v.sku = $3 AND p.status = 'active') AS BIGINT) AS for_sale, \
                               CAST((SELECT COUNT(*) FROM cart_lines l WHERE l.cart_id = c.id) AS BIGINT) AS lines, \
                               CAST((SELECT COUNT(*) FROM cart_lines l WHERE l.cart_id = c.id AND l.sku = $3) AS BIGINT) AS has_line \
                             FROM carts c WHERE c.id = $2",
                            &line,
                        )
                        .await?;
                    let row = found.first().ok_or(CartError::NotFound)?;
                    if row.get::<i64>("for_sale")? == 0 {
                        return Err(CartError::NotForSale(wanted));
                    }
                    let lines = usize::try_from(row.get::<i64>("lines")?).unwrap_or(usize::MAX);
                    if lines >= MAX_LINES && row.get::<i64>("has_line")? == 0 {
                        return Err(CartError::Invalid(format!(
                            "a cart holds at most {MAX_LINES} lines"
                        )));
                    }
                    // Guarded statements, not read-then-write: two requests adding the same SKU
                    // at once end as one line, and never above the maximum quantity.
                    let inserted = tx
                        .execute(
                            "INSERT INTO cart_lines (id, cart_id, sku, quantity, position) \
                             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (cart_id, sku) DO NOTHING",
                            &line[..5],
                        )
                        .await?;
                    if inserted == 0 {
                        let added = tx
                            .execute(
                                "UPDATE cart_lines SET quantity = quantity + $4 \
                                 WHERE cart_id = $2 AND sku = $3 AND quantity + $4 <= $6",
                                &line,
                            )
                            .await?;
                        if added == 0 {
                            return Err(CartError::Invalid(format!(
                                "a line holds at most {MAX_LINE_QUANTITY} units"
                            )));
                        }
                    }
                    touch(tx, &line[1], &line[4]).await?;
                    view_in(tx, &prices, &cart).await
                })
            })
            .await
    }

    /// Sets a line's quantity.
    pub async fn set_quantity(
        &self,
        id: &str,
        key: &CartKey,
        line_id: &str,
        quantity: i64,
        now: i64,
    ) -> Result<CartView> {
        let checked = check_quantity(quantity);
        self.change_line(
            id,
            key,
            checked,
            "UPDATE cart_lines SET quantity = $3 WHERE id = $1 AND cart_id = $2",
            args![line_id, id, quantity],
            now,
        )
        .await
    }

    /// Removes a line.
    pub async fn remove_line(
        &self,
        id: &str,
        key: &CartKey,
        line_id: &str,
        now: i64,
    ) -> Result<CartView> {
        self.change_line(
            id,
            key,
            Ok(()),
            "DELETE FROM cart_lines WHERE id = $1 AND cart_id = $2",
            args![line_id, id],
            now,
        )
        .await
    }

    /// Once `key` opens cart `id` (`$2`) and the request `checked` out, runs `sql` on line `$1`
    /// and touches the cart; no such line is an error.
    async fn change_line<A>(
        &self,
        id: &str,
        key: &CartKey,
        checked: Result<()>,
        sql: &'static str,
        args: A,
        now: i64,
    ) -> Result<CartView>
    where
        A: AsRef<[Value]> + Send + 'static,
    {
        let (cart, key) = (id.to_owned(), key.clone());
        let prices = self.prices.clone();
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    open_in(tx, &cart, &key).await?;
                    checked?;
                    let args = args.as_ref();
                    if tx.execute(sql, args).await? == 0 {
                        return Err(CartError::LineNotFound);
                    }
                    touch(tx, &args[1], &Value::from(now)).await?;
                    view_in(tx, &prices, &cart).await
                })
            })
            .await
    }

    /// Replaces the cart's coupon codes (upper-cased, without duplicates).
    pub async fn set_coupons(
        &self,
        id: &str,
        key: &CartKey,
        codes: &[String],
        now: i64,
    ) -> Result<CartView> {
        let checked = coupon_codes(codes);
        let (id, key, cart, now) = (
            id.to_owned(),
            key.clone(),
            Value::from(id),
            Value::from(now),
        );
        let prices = self.prices.clone();
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    open_in(tx, &id, &key).await?;
                    let codes = checked?;
                    touch(tx, &cart, &now).await?;
                    tx.execute(
                        "DELETE FROM cart_coupons WHERE cart_id = $1",
                        std::slice::from_ref(&cart),
                    )
                    .await?;
                    for code in codes {
                        tx.execute(
                            "INSERT INTO cart_coupons (cart_id, code) VALUES ($1, $2)",
                            &[cart.clone(), Value::from(code)],
                        )
                        .await?;
                    }
                    view_in(tx, &prices, &id).await
                })
            })
            .await
    }

    /// Saves what the shopper entered for checkout (email, addresses), replacing what was
    /// there; checkout uses it for anything its request leaves out.
    pub async fn set_details(
        &self,
        id: &str,
        key: &CartKey,
        details: &CartDetails,
        now: i64,
    ) -> Result<CartView> {
        let checked = checked_details(details);
        let change = args![
            id,
            checked.as_ref().map(String::as_str).unwrap_or_default(),
            now
        ];
        let (cart, key) = (id.to_owned(), key.clone());
        let prices = self.prices.clone();
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    open_in(tx, &cart, &key).await?;
                    checked?;
                    tx.execute(
                        "UPDATE carts SET details = $2, updated_at = $3 WHERE id = $1",
                        &change,
                    )
                    .await?;
                    view_in(tx, &prices, &cart).await
                })
            })
            .await
    }

    /// Chooses the shipping method `code` (or none): it must be offered in the cart's currency
    /// and, when the cart has a saved shipping address, ship there. Checkout checks again.
    pub async fn set_shipping_method(
        &self,
        id: &str,
        key: &CartKey,
        code: Option<&str>,
        now: i64,
    ) -> Result<CartView> {
        let checked = match code {
            Some(code) if !shipping::is_code(code) => Err(CartError::Invalid(
                "code must be 1 to 64 letters, digits, '-' or '_'".into(),
            )),
            _ => Ok(()),
        };
        let (change, cart, key) = (args![id, code, now], id.to_owned(), key.clone());
        let prices = self.prices.clone();
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    open_in(tx, &cart, &key).await?;
                    checked?;
                    if let Some(Value::Text(code)) = change.get(1) {
                        let rows = tx
                            .fetch(
                                "SELECT c.currency, c.details, m.countries, r.amount FROM carts c \
                                 LEFT JOIN shipping_methods m ON m.code = $2 AND m.status = 'active' \
                                 LEFT JOIN shipping_rates r ON r.method_id = m.id AND r.currency = c.currency \
                                 WHERE c.id = $1",
                                &change[..2],
                            )
                            .await?;
                        let row = rows.first().ok_or(CartError::NotFound)?;
                        if row.get::<Option<i64>>("amount")?.is_none() {
                            let currency: String = row.get("currency")?;
                            return Err(CartError::ShippingUnavailable(format!(
                                "shipping method {code:?} is not offered in {currency}"
                            )));
                        }
                        let countries = shipping::countries_of(row.get("countries")?)?;
                        if let (Some(countries), Some(country)) = (countries, saved_country(row)?)
                            && !countries.contains(&country)
                        {
                            return Err(CartError::ShippingUnavailable(format!(
                                "shipping method {code:?} does not ship to {country}"
                            )));
                        }
                    }
                    let changed = tx
                        .execute(
                            "UPDATE carts SET shipping_method = $2, updated_at = $3 WHERE id = $1",
                            &change,
                        )
                        .await?;
                    if changed == 0 {
                        return Err(CartError::NotFound);
                    }
                    view_in(tx, &prices, &cart).await
                })
            })
            .await
    }

    /// The shipping methods offered to the cart: those priced in its currency that ship to its
    /// saved shipping address (any address, when none is saved yet). Returns them and the
    /// country they were chosen for.
    pub async fn shipping_offers(
        &self,
        id: &str,
        key: &CartKey,
    ) -> Result<(Vec<Offer>, Option<String>)> {
        let (id, key) = (id.to_owned(), key.clone());
        let prices = self.prices.clone();
        self.db
            .read(move |tx| {
                Box::pin(async move {
                    let rows = tx
                        .fetch(
                            "SELECT currency, details, token_hash, customer_id FROM carts WHERE id = $1",
                            &args![&id],
                        )
                        .await?;
                    let row = rows
                        .first()
                        .filter(|row| {
                            let stored = row.text("token_hash").unwrap_or_default();
                            let owner = row.get::<Option<String>>("customer_id").ok().flatten();
                            opens(stored, owner.as_deref(), &key)
                        })
                        .ok_or(CartError::NotFound)?;
                    let currency: String = row.get("currency")?;
                    let country = saved_country(row)?;
                    let generation = crate::catalog::generation_in(tx).await?;
                    let mut offers =
                        shipping::offers_at(tx, &prices, generation, &currency).await?;
                    if let Some(country) = &country {
                        offers.retain(|o| o.ships_to(country));
                    }
                    Ok((offers, country))
                })
            })
            .await
    }
}

/// The cart as the pricing hook sees it, given the catalog's answer for its SKUs; lines whose
/// SKU is missing from `variants` are left out and returned separately.
pub(crate) fn pricing_cart(
    contents: &CartContents,
    mut variants: HashMap<String, PricedVariant>,
    now: i64,
) -> (pricing::Cart, Vec<String>) {
    let mut lines = Vec::with_capacity(contents.lines.len());
    let mut unavailable = Vec::new();
    {
        for line in &contents.lines {
            let Some(variant) = variants.remove(&line.sku) else {
                unavailable.push(line.sku.clone());
                continue;
            };
            lines.push(pricing::CartLine {
                id: line.id.clone(),
                product_id: variant.product_id,
                sku: line.sku.clone(),
                variant_attributes: variant
                    .options
                    .into_iter()
                    .map(|(name, value)| Attribute { name, value })
                    .collect(),
                categories: variant.categories,
                quantity: u32::try_from(line.quantity).unwrap_or(u32::MAX),
                unit_price: Money {
                    amount: u64::try_from(variant.unit_price).unwrap_or(0),
                    currency: contents.currency.clone(),
                },
            });
        }
    }
    (
        pricing::Cart {
            id: contents.id.clone(),
            currency: contents.currency.clone(),
            lines,
            customer: contents.customer_id.as_ref().map(|id| pricing::Customer {
                id: id.clone(),
                tags: contents.owner_tags.clone(),
                order_count: contents.owner_orders,
            }),
            coupon_codes: contents.coupon_codes.clone(),
            shipping: contents.shipping.as_ref().map(|offer| Money {
                amount: u64::try_from(offer.amount).unwrap_or(0),
                currency: offer.currency.clone(),
            }),
            now,
        },
        unavailable,
    )
}

/// [`Carts::contents`] inside the caller's transaction; `None` for no such cart.
pub(crate) async fn contents_in(tx: &mut dyn Tx, id: &str) -> sqlx::Result<Option<CartContents>> {
    // The cart with its shipping method priced in its currency, then one row per line, in
    // one statement (one round trip on PostgreSQL). Not a join of the cart with its lines:
    // then the coupon and live-order look-ups and the shipping joins ran again for every line
    // (SQLite evaluates a correlated subquery per row). The cart's row is the one without a
    // line id; no such row, no such cart. The cart's row also carries the catalog generation
    // its lines are to be priced by: read with the cart, before anything the catalog cache
    // serves by it, and without a statement of its own.
    let rows = tx
        .fetch(
            "SELECT c.id, c.currency, c.customer_id, c.shipping_method, c.details, c.token_hash, \
               m.code, m.name, m.carrier, m.countries, r.amount, r.currency AS rate_currency, \
               (SELECT string_agg(k.code, ',') FROM cart_coupons k \
                WHERE k.cart_id = c.id) AS coupon_codes, \
               (SELECT o.id FROM orders o WHERE o.cart_id = c.id AND o.status <> 'cancelled') \
                 AS live_order, \
               (SELECT g.generation FROM catalog_generation g WHERE g.id = 1) AS generation, \
               (SELECT CAST(COUNT(*) AS BIGINT) FROM orders p \
                WHERE p.customer_id = c.customer_id AND p.status <> 'cancelled') AS owner_orders, \
               (SELECT string_agg(t.tag, ',') FROM customer_tags t \
                WHERE t.customer_id = c.customer_id) AS owner_tags, \
               NULL AS line_id, NULL AS sku, NULL AS quantity, NULL AS position \
             FROM carts c \
             LEFT JOIN shipping_methods m ON m.code = c.shipping_method AND m.status = 'active' \
             LEFT JOIN shipping_rates r ON r.method_id = m.id AND r.currency = c.currency \
             WHERE c.id = $1 \
             UNION ALL \
             SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, \
               NULL, NULL, NULL, NULL, NULL, l.id, l.sku, l.quantity, l.position \
             FROM cart_lines l WHERE l.cart_id = $1",
            &args![id],
        )
        .await?;
    let mut cart = None;
    let mut lines = Vec::with_capacity(rows.len());
    for row in &rows {
        let Some(line_id) = row.get::<Option<String>>("line_id")? else {
            cart = Some(row);
            continue;
        };
        lines.push((
            row.get::<i64>("position")?,
            CartLine {
                id: line_id,
                sku: row.get("sku")?,
                quantity: row.get("quantity")?,
            },
        ));
    }
    let Some(cart) = cart else {
        return Ok(None);
    };
    // In the order they were added (`position`, then `id` for lines added at one moment),
    // sorted here: in SQL that took a temporary B-tree per read.
    lines.sort_unstable_by(|(a, x), (b, y)| a.cmp(b).then_with(|| x.id.cmp(&y.id)));
    let lines = lines.into_iter().map(|(_, line)| line).collect();
    // Codes are letters, digits, '-' and '_': a comma cannot be part of one.
    let coupon_codes = crate::customers::split_sorted(cart.get("coupon_codes")?);
    let shipping = match cart.get::<Option<i64>>("amount")? {
        Some(amount) => Some(Offer {
            code: cart.get("code")?,
            name: cart.get("name")?,
            carrier: cart.get("carrier")?,
            amount,
            currency: cart.get("rate_currency")?,
            countries: shipping::countries_of(cart.get("countries")?)?,
        }),
        None => None,
    };
    // Chosen before the saved address moved somewhere it does not ship: not priced, as
    // checkout would refuse it.
    let details = details_of(cart.get("details")?);
    let country = details
        .shipping_address
        .as_ref()
        .map(|a| a.country.as_str());
    let shipping = shipping.filter(|offer| country.is_none_or(|c| offer.ships_to(c)));
    Ok(Some(CartContents {
        id: cart.get("id")?,
        currency: cart.get("currency")?,
        customer_id: cart.get("customer_id")?,
        lines,
        coupon_codes,
        shipping_method: cart.get("shipping_method")?,
        shipping,
        live_order: cart.get("live_order")?,
        details,
        token_hash: cart.get("token_hash")?,
        generation: cart.get("generation")?,
        owner_orders: u32::try_from(cart.get::<i64>("owner_orders")?).unwrap_or(u32::MAX),
        owner_tags: crate::customers::split_sorted(cart.get("owner_tags")?),
    }))
}

/// Saved checkout details from their stored text (none saved, or unreadable: empty).
fn details_of(stored: Option<String>) -> CartDetails {
    stored
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// The country of the shipping address saved with the cart, from a row with its `details`.
fn saved_country(row: &crate::db::Row) -> sqlx::Result<Option<String>> {
    Ok(details_of(row.get("details")?)
        .shipping_address
        .map(|a| a.country))
}

/// Marks cart `id` changed at `now`, in the caller's transaction; whether there is such a cart.
async fn touch(tx: &mut dyn Tx, id: &Value, now: &Value) -> Result<bool> {
    Ok(tx
        .execute(
            "UPDATE carts SET updated_at = $2 WHERE id = $1",
            &[id.clone(), now.clone()],
        )
        .await?
        == 1)
}
