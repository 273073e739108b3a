//! Shipping methods: how a merchant ships — a name, an optional carrier, a flat rate per
//! currency, and the countries it ships to (or anywhere).
//!
//! A cart names its shopper's choice by code. Reading the cart prices the choice: the rate in
//! the cart's currency goes to the pricing plugins as the cart's shipping, so a free-shipping
//! promotion can discount it. Checkout decides again from what is offered at that moment and
//! the address it ships to ([`choose`]), and the order keeps a copy of the method as priced.
//!
//! The rule for "must the shopper choose?": a store with no active method priced in a currency
//! ships nothing in it (digital goods, or shipping not set up), and checkout needs no method;
//! once one exists, checkout needs one that ships to the address.
//!
//! Methods are archived, never deleted: carts refer to them by code. Layout: the admin service
//! ([`Shipping`]), the offer as a cart sees it ([`Offer`], [`offers_in`]) and the checkout
//! rule ([`choose`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::db::{Db, Row, Tx, Value, args};

/// Most countries one method lists.
pub const MAX_COUNTRIES: usize = 250;
/// Most currencies one method has a rate in.
pub const MAX_RATES: usize = 50;

/// Why a shipping operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum ShippingError {
    /// Unknown method id.
    #[error("no shipping method {0:?}")]
    NotFound(String),
    /// The code is used by another method (archived ones included).
    #[error("shipping method code {0:?} is taken")]
    CodeTaken(String),
    /// Bad input; the message says what.
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl ShippingError {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            ShippingError::NotFound(_) => "shipping_method_not_found",
            ShippingError::CodeTaken(_) => "shipping_method_code_taken",
            ShippingError::Invalid(_) => "invalid_input",
            ShippingError::Database(_) => "internal",
        }
    }
}

type Result<T> = std::result::Result<T, ShippingError>;

/// A shipping method as the admin API shows it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct ShippingMethod {
    /// Its id.
    pub id: String,
    /// What carts and orders call it: unique, never changes.
    pub code: String,
    /// What the shopper sees.
    pub name: String,
    /// The carrier, if the merchant names one.
    pub carrier: Option<String>,
    /// ISO 3166-1 alpha-2 codes it ships to; `None` ships anywhere.
    pub countries: Option<Vec<String>>,
    /// Where it is listed (lowest first, then by code).
    pub position: i64,
    /// `active` or `archived`.
    pub status: String,
    /// Rate per currency, in minor units.
    pub rates: BTreeMap<String, i64>,
    /// Created at (ms).
    pub created_at: i64,
    /// Last changed at (ms).
    pub updated_at: i64,
}

/// What a merchant sends to create a method.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewShippingMethod {
    /// Letters, digits, `-` and `_`; 1 to 64 characters; unique.
    pub code: String,
    /// 1 to 200 characters.
    pub name: String,
    /// Up to 100 characters.
    #[serde(default)]
    pub carrier: Option<String>,
    /// Where it ships; absent ships anywhere.
    #[serde(default)]
    pub countries: Option<Vec<String>>,
    /// Listing position.
    #[serde(default)]
    pub position: i32,
    /// Rate per currency, in minor units (at least one).
    pub rates: BTreeMap<String, i64>,
}

/// What a merchant sends to replace a method (its code stays).
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ShippingMethodUpdate {
    /// 1 to 200 characters.
    pub name: String,
    /// Up to 100 characters.
    #[serde(default)]
    pub carrier: Option<String>,
    /// Where it ships; absent ships anywhere.
    #[serde(default)]
    pub countries: Option<Vec<String>>,
    /// Listing position.
    #[serde(default)]
    pub position: i32,
    /// Rate per currency, in minor units (at least one); replaces the old rates.
    pub rates: BTreeMap<String, i64>,
    /// `active` or `archived`: required, so that a replace never revives an archived method
    /// by leaving it out.
    pub status: String,
}

/// A method as offered to a cart: priced in the cart's currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Offer {
    /// The method's code.
    pub code: String,
    /// Its name.
    pub name: String,
    /// Its carrier.
    pub carrier: Option<String>,
    /// The rate, in minor units of `currency`.
    pub amount: i64,
    /// The currency.
    pub currency: String,
    /// Where it ships; `None` ships anywhere.
    #[serde(skip)]
    pub countries: Option<Vec<String>>,
}

impl Offer {
    /// Whether it ships to `country` (ISO 3166-1 alpha-2).
    pub fn ships_to(&self, country: &str) -> bool {
        self.countries
            .as_ref()
            .is_none_or(|list| list.iter().any(|c| c == country))
    }
}

/// Why checkout cannot ship the cart as asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The store ships in this currency and the shopper chose no method.
    #[error("choose a shipping method: {}", if .0.is_empty() { "none ships to this address".to_owned() } else { .0.join(", ") })]
    Required(Vec<String>),
    /// The chosen method is not offered (any more) or does not ship to the address.
    #[error("{0}")]
    Unavailable(String),
}

/// The offer checkout ships with: `chosen` (a code) among `offers`, for an address in
/// `country`. `None` when the store ships nothing in this currency and nothing was chosen.
pub fn choose(
    offers: &[Offer],
    chosen: Option<&str>,
    country: &str,
) -> std::result::Result<Option<Offer>, Refusal> {
    match chosen {
        Some(code) => {
            let offer = offers.iter().find(|o| o.code == code).ok_or_else(|| {
                Refusal::Unavailable(format!(
                    "shipping method {code:?} is not offered for this cart"
                ))
            })?;
            if !offer.ships_to(country) {
                return Err(Refusal::Unavailable(format!(
                    "shipping method {code:?} does not ship to {country}"
                )));
            }
            Ok(Some(offer.clone()))
        }
        None if offers.is_empty() => Ok(None),
        None => {
            let fitting: Vec<String> = offers
                .iter()
                .filter(|o| o.ships_to(country))
                .map(|o| o.code.clone())
                .collect();
            if fitting.is_empty() {
                return Err(Refusal::Unavailable(format!(
                    "no shipping method ships to {country}"
                )));
            }
            Err(Refusal::Required(fitting))
        }
    }
}

/// The active methods priced in `currency`, in listing order, in the caller's transaction.
pub(crate) async fn offers_in(tx: &mut dyn Tx, currency: &str) -> sqlx::Result<Vec<Offer>> {
    tx.fetch(
        "SELECT m.code, m.name, m.carrier, m.countries, m.position, r.amount, r.currency \
         FROM shipping_methods m JOIN shipping_rates r ON r.method_id = m.id AND r.currency = $1 \
         WHERE m.status = 'active' ORDER BY m.position",
        &args![currency],
    )
    .await?
    .iter()
    .map(|row| Ok((row.get::<i64>("position")?, offer_of(row)?)))
    .collect::<sqlx::Result<Vec<_>>>()
    .map(|mut offers| {
        // Ties by code, byte-wise: the databases' collations differ.
        offers.sort_by(|(p, a), (q, b)| p.cmp(q).then_with(|| a.code.cmp(&b.code)));
        offers.into_iter().map(|(_, offer)| offer).collect()
    })
}

/// [`offers_in`] through the cache of the catalog's answers, at the catalog generation the
/// caller's transaction read first ([`crate::catalog::generation_in`]): shipping methods and
/// rates move the generation too (migration 0021).
pub(crate) async fn offers_at(
    tx: &mut dyn Tx,
    prices: &crate::catalog::Prices,
    generation: i64,
    currency: &str,
) -> sqlx::Result<Vec<Offer>> {
    if let Some(offers) = prices.offers(generation, currency) {
        return Ok(offers);
    }
    let offers = offers_in(tx, currency).await?;
    prices.put_offers(generation, currency, &offers);
    Ok(offers)
}

/// An [`Offer`] from a row with `code`, `name`, `carrier`, `countries`, `amount`, `currency`.
pub(crate) fn offer_of(row: &Row) -> sqlx::Result<Offer> {
    Ok(Offer {
        code: row.get("code")?,
        name: row.get("name")?,
        carrier: row.get("carrier")?,
        amount: row.get("amount")?,
        currency: row.get("currency")?,
        countries: countries_of(row.get("countries")?)?,
    })
}

pub(crate) fn countries_of(stored: Option<String>) -> sqlx::Result<Option<Vec<String>>> {
    stored
        .map(|text| {
            serde_json::from_str(&text).map_err(|e| sqlx::Error::ColumnDecode {
                index: "countries".into(),
                source: e.into(),
            })
        })
        .transpose()
}

/// Whether `code` is a well-formed method code.
pub fn is_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Checks what create and replace share; returns the countries as stored (JSON, deduplicated
/// and sorted) and the rates as statement arguments.
fn check(
    name: &str,
    carrier: Option<&str>,
    countries: Option<&[String]>,
    rates: &BTreeMap<String, i64>,
) -> Result<Option<String>> {
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(ShippingError::Invalid(
            "name must be 1 to 200 characters".into(),
        ));
    }
    if carrier.is_some_and(|c| c.trim().is_empty() || c.chars().count() > 100) {
        return Err(ShippingError::Invalid(
            "carrier must be 1 to 100 characters".into(),
        ));
    }
    if rates.is_empty() || rates.len() > MAX_RATES {
        return Err(ShippingError::Invalid(format!(
            "rates must price 1 to {MAX_RATES} currencies"
        )));
    }
    for (currency, amount) in rates {
        if !crate::catalog::is_currency(currency) {
            return Err(ShippingError::Invalid(format!(
                "{currency:?} is not an ISO 4217 currency code"
            )));
        }
        if !(0..=1_000_000_000).contains(amount) {
            return Err(ShippingError::Invalid(format!(
                "the {currency} rate must be 0 to 1000000000 minor units, got {amount}"
            )));
        }
    }
    let Some(countries) = countries else {
        return Ok(None);
    };
    if countries.is_empty() || countries.len() > MAX_COUNTRIES {
        return Err(ShippingError::Invalid(format!(
            "countries must list 1 to {MAX_COUNTRIES} codes, or be left out to ship anywhere"
        )));
    }
    for country in countries {
        if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(ShippingError::Invalid(format!(
                "{country:?} is not an ISO 3166-1 alpha-2 country code"
            )));
        }
    }
    let set: std::collections::BTreeSet<&String> = countries.iter().collect();
    Ok(Some(
        serde_json::to_string(&set).map_err(|e| ShippingError::Invalid(e.to_string()))?,
    ))
}

/// Replaces method `id`'s rates with `rates`, in the caller's transaction.
async fn set_rates(tx: &mut dyn Tx, id: &Value, rates: &BTreeMap<String, i64>) -> Result<()> {
    tx.execute(
        "DELETE FROM shipping_rates WHERE method_id = $1",
        std::slice::from_ref(id),
    )
    .await?;
    for (currency, amount) in rates {
        tx.execute(
            "INSERT INTO shipping_rates (method_id, currency, amount) VALUES ($1, $2, $3)",
            &[id.clone(), Value::from(currency), Value::from(*amount)],
        )
        .await?;
    }
    Ok(())
}

/// Method `id` with its rates, in the caller's transaction.
async fn method_in(tx: &mut dyn Tx, id: &str) -> Result<Option<ShippingMethod>> {
    Ok(methods_in(tx, Some(id)).await?.into_iter().next())
}

/// Every method (or the one with id `only`), in listing order, with its rates.
async fn methods_in(tx: &mut dyn Tx, only: Option<&str>) -> Result<Vec<ShippingMethod>> {
    let rows = tx
        .fetch(
            "SELECT m.id, m.code, m.name, m.carrier, m.countries, m.position, m.status, \
             m.created_at, m.updated_at, r.currency, r.amount \
             FROM shipping_methods m LEFT JOIN shipping_rates r ON r.method_id = m.id \
             WHERE $1 IS NULL OR m.id = $1 ORDER BY m.id, r.currency",
            &args![only],
        )
        .await?;
    let mut methods: Vec<ShippingMethod> = Vec::new();
    for row in &rows {
        let id: String = row.get("id")?;
        if methods.last().is_none_or(|m| m.id != id) {
            methods.push(ShippingMethod {
                id,
                code: row.get("code")?,
                name: row.get("name")?,
                carrier: row.get("carrier")?,
                countries: countries_of(row.get("countries")?)?,
                position: row.get("position")?,
                status: row.get("status")?,
                rates: BTreeMap::new(),
                created_at: row.get("created_at")?,
                updated_at: row.get("updated_at")?,
            });
        }
        if let (Some(method), Some(currency)) =
            (methods.last_mut(), row.get::<Option<String>>("currency")?)
        {
            method.rates.insert(currency, row.get("amount")?);
        }
    }
    // Listing order: position, then code byte-wise (the databases' collations differ).
    methods.sort_by(|a, b| {
        a.position
            .cmp(&b.position)
            .then_with(|| a.code.cmp(&b.code))
    });
    Ok(methods)
}

/// The shipping methods service.
#[derive(Debug, Clone)]
pub struct Shipping {
    db: Db,
}

impl Shipping {
    /// Shipping methods over `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Creates a method.
    pub async fn create(&self, new: &NewShippingMethod, now: i64) -> Result<ShippingMethod> {
        if !is_code(&new.code) {
            return Err(ShippingError::Invalid(
                "code must be 1 to 64 letters, digits, '-' or '_'".into(),
            ));
        }
        let countries = check(
            &new.name,
            new.carrier.as_deref(),
            new.countries.as_deref(),
            &new.rates,
        )?;
        let id = uuid::Uuid::now_v7().to_string();
        let row = args![
            &id,
            &new.code,
            new.name.trim(),
            new.carrier.as_deref().map(str::trim),
            countries.as_deref(),
            i64::from(new.position),
            now,
        ];
        let (code, rates) = (new.code.clone(), new.rates.clone());
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    let inserted = tx
                        .execute(
                            "INSERT INTO shipping_methods \
                             (id, code, name, carrier, countries, position, status, created_at, updated_at) \
                             VALUES ($1, $2, $3, $4, $5, $6, 'active', $7, $7) \
                             ON CONFLICT (code) DO NOTHING",
                            &row,
                        )
                        .await?;
                    if inserted == 0 {
                        return Err(ShippingError::CodeTaken(code));
                    }
                    set_rates(tx, &row[0], &rates).await?;
                    method_in(tx, &id)
                        .await?
                        .ok_or_else(|| ShippingError::NotFound(id))
                })
            })
            .await
    }

    /// Replaces method `id` (everything but its code).
    pub async fn replace(
        &self,
        id: &str,
        update: &ShippingMethodUpdate,
        now: i64,
    ) -> Result<ShippingMethod> {
        let countries = check(
            &update.name,
            update.carrier.as_deref(),
            update.countries.as_deref(),
            &update.rates,
        )?;
        if !matches!(update.status.as_str(), "active" | "archived") {
            return Err(ShippingError::Invalid(
                "status must be 'active' or 'archived'".into(),
            ));
        }
        let row = args![
            id,
            update.name.trim(),
            update.carrier.as_deref().map(str::trim),
            countries.as_deref(),
            i64::from(update.position),
            &update.status,
            now,
        ];
        let (id, rates) = (id.to_owned(), update.rates.clone());
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    let changed = tx
                        .execute(
                            "UPDATE shipping_methods SET name = $2, carrier = $3, countries = $4, \
                             position = $5, status = $6, updated_at = $7 WHERE id = $1",
                            &row,
                        )
                        .await?;
                    if changed == 0 {
                        return Err(ShippingError::NotFound(id));
                    }
                    set_rates(tx, &row[0], &rates).await?;
                    method_in(tx, &id).await?.ok_or(ShippingError::NotFound(id))
                })
            })
            .await
    }

    /// Method `id`.
    pub async fn get(&self, id: &str) -> Result<ShippingMethod> {
        let id = id.to_owned();
        self.db
            .read(move |tx| {
                Box::pin(
                    async move { method_in(tx, &id).await?.ok_or(ShippingError::NotFound(id)) },
                )
            })
            .await
    }

    /// Every method, archived ones included, in listing order.
    pub async fn list(&self) -> Result<Vec<ShippingMethod>> {
        self.db
            .read(move |tx| Box::pin(async move { methods_in(tx, None).await }))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer(code: &str, countries: Option<&[&str]>) -> Offer {
        Offer {
            code: code.into(),
            name: code.into(),
            carrier: None,
            amount: 495,
            currency: "EUR".into(),
            countries: countries.map(|c| c.iter().map(|s| (*s).to_owned()).collect()),
        }
    }

    #[test]
    fn nothing_offered_and_nothing_chosen_ships_nothing() {
        assert_eq!(choose(&[], None, "DE"), Ok(None));
    }

    #[test]
    fn offered_but_not_chosen_is_required_listing_what_fits() {
        let offers = [offer("eu", Some(&["DE", "FR"])), offer("world", None)];
        assert_eq!(
            choose(&offers, None, "US"),
            Err(Refusal::Required(vec!["world".into()]))
        );
        assert_eq!(
            choose(&offers, None, "DE"),
            Err(Refusal::Required(vec!["eu".into(), "world".into()]))
        );
    }

    #[test]
    fn a_choice_must_be_offered_and_ship_to_the_country() {
        let offers = [offer("eu", Some(&["DE", "FR"]))];
        assert_eq!(
            choose(&offers, Some("eu"), "FR"),
            Ok(Some(offers[0].clone()))
        );
        assert!(matches!(
            choose(&offers, Some("eu"), "US"),
            Err(Refusal::Unavailable(_))
        ));
        assert!(matches!(
            choose(&offers, Some("express"), "DE"),
            Err(Refusal::Unavailable(_))
        ));
        assert!(matches!(
            choose(&offers, None, "US"),
            Err(Refusal::Unavailable(_))
        ));
    }

    #[test]
    fn checks_refuse_bad_input() {
        let rates = BTreeMap::from([("EUR".to_owned(), 495)]);
        assert!(check("Standard", None, None, &rates).is_ok());
        assert!(check(" ", None, None, &rates).is_err());
        assert!(check("Standard", Some(""), None, &rates).is_err());
        assert!(check("Standard", None, None, &BTreeMap::new()).is_err());
        assert!(check("Standard", None, Some(&[]), &rates).is_err());
        assert!(check("Standard", None, Some(&["de".into()]), &rates).is_err());
        let negative = BTreeMap::from([("EUR".to_owned(), -1)]);
        assert!(check("Standard", None, None, &negative).is_err());
        let bad_currency = BTreeMap::from([("euro".to_owned(), 1)]);
        assert!(check("Standard", None, None, &bad_currency).is_err());
        assert_eq!(
            check(
                "S",
                None,
                Some(&["FR".into(), "DE".into(), "FR".into()]),
                &rates
            )
            .ok()
            .flatten(),
            Some(r#"["DE","FR"]"#.into())
        );
    }
}
