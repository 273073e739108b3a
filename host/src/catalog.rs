//! The catalog: products with variants (unique SKUs, options, a price per currency),
//! categories and free-form attributes.
//!
//! Input types validate themselves on the way in (`NewProduct::validate`); the functions here
//! take validated input and own all the catalog's SQL.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::db::{Db, Tx, Value, params};

/// Why a catalog operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The input breaks a rule; the message says which.
    #[error("{0}")]
    Invalid(String),
    /// A SKU that already exists.
    #[error("SKU {0:?} already exists")]
    SkuTaken(String),
    /// An unknown category.
    #[error("no category {0:?}")]
    UnknownCategory(String),
    /// An unknown product.
    #[error("no product {0:?}")]
    NotFound(String),
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl CatalogError {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            CatalogError::Invalid(_) => "invalid_input",
            CatalogError::SkuTaken(_) => "sku_taken",
            CatalogError::UnknownCategory(_) => "unknown_category",
            CatalogError::NotFound(_) => "not_found",
            CatalogError::Database(_) => "internal",
        }
    }
}

type Result<T> = std::result::Result<T, CatalogError>;

/// A product to create.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProduct {
    /// 1 to 200 characters.
    pub title: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Category ids.
    #[serde(default)]
    pub categories: Vec<String>,
    /// Free-form attributes ("material" = "cotton").
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
    /// At least one.
    pub variants: Vec<NewVariant>,
}

/// A variant to create.
#[derive(Debug, Clone, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewVariant {
    /// Letters, digits, `.`, `_` and `-`; 1 to 64 characters; unique.
    pub sku: String,
    /// e.g. "M / Black".
    pub title: String,
    /// Options such as size and colour.
    #[serde(default)]
    pub options: BTreeMap<String, String>,
    /// Price per ISO 4217 currency, in minor units.
    pub prices: BTreeMap<String, u32>,
}

fn check_text(what: &str, value: &str, max: usize) -> Result<()> {
    let n = value.chars().count();
    if n == 0 || n > max || value.chars().any(char::is_control) {
        return Err(CatalogError::Invalid(format!(
            "{what} must be 1 to {max} printable characters"
        )));
    }
    Ok(())
}

/// Whether `code` looks like an ISO 4217 currency code.
pub fn is_currency(code: &str) -> bool {
    code.len() == 3 && code.bytes().all(|b| b.is_ascii_uppercase())
}

/// Whether `sku` is a well-formed SKU.
pub fn is_sku(sku: &str) -> bool {
    !sku.is_empty()
        && sku.len() <= 64
        && sku
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl NewProduct {
    /// Checks every rule that does not need the database.
    pub fn validate(&self) -> Result<()> {
        check_text("title", &self.title, 200)?;
        if self.description.chars().count() > 10_000 {
            return Err(CatalogError::Invalid(
                "description is over 10,000 characters".into(),
            ));
        }
        if self.variants.is_empty() || self.variants.len() > 100 {
            return Err(CatalogError::Invalid(
                "a product has 1 to 100 variants".into(),
            ));
        }
        if self.attributes.len() > 50 {
            return Err(CatalogError::Invalid("at most 50 attributes".into()));
        }
        for (name, value) in &self.attributes {
            check_text("attribute name", name, 64)?;
            check_text("attribute value", value, 256)?;
        }
        let mut skus = std::collections::HashSet::new();
        for v in &self.variants {
            if !is_sku(&v.sku) {
                return Err(CatalogError::Invalid(format!(
                    "SKU {:?}: use 1 to 64 letters, digits, '.', '_' or '-'",
                    v.sku
                )));
            }
            if !skus.insert(v.sku.as_str()) {
                return Err(CatalogError::Invalid(format!(
                    "SKU {:?} appears twice",
                    v.sku
                )));
            }
            check_text("variant title", &v.title, 200)?;
            if v.prices.is_empty() {
                return Err(CatalogError::Invalid(format!(
                    "SKU {:?} has no price",
                    v.sku
                )));
            }
            for currency in v.prices.keys() {
                if !is_currency(currency) {
                    return Err(CatalogError::Invalid(format!(
                        "{currency:?} is not an ISO 4217 currency code"
                    )));
                }
            }
            for (name, value) in &v.options {
                check_text("option name", name, 64)?;
                check_text("option value", value, 128)?;
            }
        }
        Ok(())
    }
}

/// Changes to a product; absent fields stay as they are.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductUpdate {
    /// New title.
    pub title: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// New category ids (replacing the old).
    pub categories: Option<Vec<String>>,
    /// New attributes (replacing the old).
    pub attributes: Option<BTreeMap<String, String>>,
    /// New prices per SKU of this product: SKU → currency → minor units. Prices not named
    /// stay as they are.
    pub prices: Option<BTreeMap<String, BTreeMap<String, u32>>>,
}

/// A product as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Product {
    /// Its id.
    pub id: String,
    /// Its title.
    pub title: String,
    /// Its description.
    pub description: String,
    /// `active` or `archived`.
    pub status: String,
    /// Category ids.
    pub categories: Vec<String>,
    /// Attributes.
    pub attributes: BTreeMap<String, String>,
    /// Variants, by SKU.
    pub variants: Vec<Variant>,
}

/// A variant as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Variant {
    /// Its SKU.
    pub sku: String,
    /// Its title.
    pub title: String,
    /// Its options.
    pub options: BTreeMap<String, String>,
    /// Price per currency, minor units.
    pub prices: BTreeMap<String, i64>,
}

/// How to filter a listing.
#[derive(Debug, Clone, Default, Deserialize, schemars::JsonSchema)]
pub struct ProductFilter {
    /// Only products in this category or any category below it.
    pub category: Option<String>,
    /// Only products whose title contains this text (case-insensitive).
    pub q: Option<String>,
    /// Only products with this attribute, as `name:value`.
    pub attribute: Option<String>,
    /// At most this many (1 to 100, default 20).
    pub limit: Option<u32>,
    /// Skip this many.
    pub offset: Option<u32>,
}

/// What a cart line needs to know about its variant.
#[derive(Debug, Clone)]
pub struct PricedVariant {
    /// The product.
    pub product_id: String,
    /// Unit price in the cart's currency.
    pub unit_price: i64,
    /// The product's categories, ancestors first.
    pub categories: Vec<String>,
    /// The variant's options.
    pub options: BTreeMap<String, String>,
}

/// The catalog's answers for SKUs (what a cart line reads: product, price, categories,
/// options) and the shipping offers in each currency, cached for [`priced_variants_at`] and
/// [`crate::shipping::offers_at`], which every cart read and checkout make. Each cart and
/// checkout read used to fetch them anew, though they change only when a merchant edits the
/// catalog or the shipping methods.
///
/// **Always current.** Every change to the tables they come from adds one to the database's
/// catalog generation, by trigger, in the change's own transaction (migrations 0020 and 0021),
/// whatever host or tool makes it. A read takes the generation first, in its own snapshot, and
/// uses the cache only if it was filled at that very generation; otherwise it reads the
/// database, and fills the cache if its generation is the newest one seen (an older snapshot
/// neither uses nor fills it). A SKU not for sale (unknown, archived, unpriced in the
/// currency) is never cached, so asking for one always reads the database.
#[derive(Debug, Clone, Default)]
pub struct Prices {
    inner: std::sync::Arc<std::sync::Mutex<CachedPrices>>,
}

#[derive(Debug, Default)]
struct CachedPrices {
    /// The catalog generation the entries were read at.
    generation: i64,
    /// By currency, then SKU.
    entries: HashMap<String, HashMap<String, PricedVariant>>,
    /// Entries in all currencies.
    len: usize,
    /// The active shipping methods priced in each currency, in listing order.
    offers: HashMap<String, Vec<crate::shipping::Offer>>,
}

impl CachedPrices {
    /// Whether answers read at `generation` may be kept: not if the cache has seen a newer
    /// one. A newer one empties the cache first.
    fn keeps(&mut self, generation: i64) -> bool {
        if generation < self.generation {
            return false;
        }
        if generation > self.generation {
            self.entries.clear();
            self.offers.clear();
            self.len = 0;
            self.generation = generation;
        }
        true
    }
}

/// Entries at most: a catalog larger than this is cached again from empty once full.
const CACHED_PRICES: usize = 100_000;

impl Prices {
    /// The cached answers for all of `skus`, if the cache holds every one at `generation`.
    fn get(
        &self,
        generation: i64,
        skus: &[String],
        currency: &str,
    ) -> Option<HashMap<String, PricedVariant>> {
        let cache = self.inner.lock().ok()?;
        if cache.generation != generation {
            return None;
        }
        let by_sku = cache.entries.get(currency)?;
        let mut found = HashMap::with_capacity(skus.len());
        for sku in skus {
            found.insert(sku.clone(), by_sku.get(sku)?.clone());
        }
        Some(found)
    }

    /// Keeps `variants`, read at `generation`, unless the cache has seen a newer one.
    fn put(&self, generation: i64, currency: &str, variants: &HashMap<String, PricedVariant>) {
        let Ok(mut cache) = self.inner.lock() else {
            return;
        };
        if !cache.keeps(generation) {
            return;
        }
        if cache.len + variants.len() > CACHED_PRICES {
            cache.entries.clear();
            cache.len = 0;
        }
        let by_sku = cache.entries.entry(currency.to_owned()).or_default();
        let mut added = 0;
        for (sku, variant) in variants {
            if by_sku.insert(sku.clone(), variant.clone()).is_none() {
                added += 1;
            }
        }
        cache.len += added;
    }

    /// The shipping offers in `currency`, if the cache holds them at `generation`.
    pub(crate) fn offers(
        &self,
        generation: i64,
        currency: &str,
    ) -> Option<Vec<crate::shipping::Offer>> {
        let cache = self.inner.lock().ok()?;
        if cache.generation != generation {
            return None;
        }
        cache.offers.get(currency).cloned()
    }

    /// Keeps the `offers` in `currency`, read at `generation`, unless the cache has seen a
    /// newer one. (Currencies are the few a store sells in: no bound is needed.)
    pub(crate) fn put_offers(
        &self,
        generation: i64,
        currency: &str,
        offers: &[crate::shipping::Offer],
    ) {
        let Ok(mut cache) = self.inner.lock() else {
            return;
        };
        if cache.keeps(generation) {
            cache.offers.insert(currency.to_owned(), offers.to_vec());
        }
    }
}

/// The catalog service.
#[derive(Debug, Clone)]
pub struct Catalog {
    db: Db,
}

impl Catalog {
    /// The catalog over `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Creates a category below `parent` (or at the top).
    pub async fn create_category(&self, id: &str, parent: Option<&str>, name: &str) -> Result<()> {
        if !is_sku(id) {
            return Err(CatalogError::Invalid(format!(
                "category id {id:?}: use letters, digits, '.', '_' or '-'"
            )));
        }
        check_text("category name", name, 100)?;
        if let Some(parent) = parent
            && !self.category_exists(parent).await?
        {
            return Err(CatalogError::UnknownCategory(parent.to_owned()));
        }
        sqlx::query("INSERT INTO categories (id, parent_id, name) VALUES ($1, $2, $3) ON CONFLICT (id) DO UPDATE SET name = excluded.name")
            .bind(id)
            .bind(parent)
            .bind(name)
            .execute(&mut *self.db.write_conn().await?)
            .await?;
        Ok(())
    }

    async fn category_exists(&self, id: &str) -> Result<bool> {
        Ok(sqlx::query("SELECT id FROM categories WHERE id = $1")
            .bind(id)
            .fetch_optional(self.db.reader())
            .await?
            .is_some())
    }

    /// Creates a product with its variants, all or nothing.
    pub async fn create_product(&self, new: &NewProduct, now: i64) -> Result<Product> {
        new.validate()?;
        for category in &new.categories {
            if !self.category_exists(category).await? {
                return Err(CatalogError::UnknownCategory(category.clone()));
            }
        }
        let id = uuid::Uuid::now_v7().to_string();
        let mut tx = self.db.begin().await?;
        sqlx::query("INSERT INTO products (id, title, description, status, created_at, updated_at) VALUES ($1, $2, $3, 'active', $4, $4)")
            .bind(&id)
            .bind(&new.title)
            .bind(&new.description)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        for category in &new.categories {
            sqlx::query("INSERT INTO product_categories (product_id, category_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                .bind(&id)
                .bind(category)
                .execute(&mut *tx)
                .await?;
        }
        for (name, value) in &new.attributes {
            sqlx::query(
                "INSERT INTO product_attributes (product_id, name, value) VALUES ($1, $2, $3)",
            )
            .bind(&id)
            .bind(name)
            .bind(value)
            .execute(&mut *tx)
            .await?;
        }
        for v in &new.variants {
            let inserted = sqlx::query("INSERT INTO variants (sku, product_id, title) VALUES ($1, $2, $3) ON CONFLICT (sku) DO NOTHING")
                .bind(&v.sku)
                .bind(&id)
                .bind(&v.title)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if inserted == 0 {
                return Err(CatalogError::SkuTaken(v.sku.clone()));
            }
            for (currency, amount) in &v.prices {
                sqlx::query(
                    "INSERT INTO variant_prices (sku, currency, amount) VALUES ($1, $2, $3)",
                )
                .bind(&v.sku)
                .bind(currency)
                .bind(i64::from(*amount))
                .execute(&mut *tx)
                .await?;
            }
            for (name, value) in &v.options {
                sqlx::query("INSERT INTO variant_options (sku, name, value) VALUES ($1, $2, $3)")
                    .bind(&v.sku)
                    .bind(name)
                    .bind(value)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        tx.commit().await?;
        self.product(&id, true)
            .await?
            .ok_or_else(|| CatalogError::NotFound(id))
    }

    /// Updates a product, all or nothing. Carts are priced when read, so a new price applies
    /// to every cart from then on; placed orders keep the price they were placed at.
    pub async fn update(&self, id: &str, update: &ProductUpdate, now: i64) -> Result<Product> {
        let current = self
            .product(id, true)
            .await?
            .ok_or_else(|| CatalogError::NotFound(id.to_owned()))?;
        if let Some(title) = &update.title {
            check_text("title", title, 200)?;
        }
        if update
            .description
            .as_ref()
            .is_some_and(|d| d.chars().count() > 10_000)
        {
            return Err(CatalogError::Invalid(
                "description is over 10,000 characters".into(),
            ));
        }
        if let Some(attributes) = &update.attributes {
            for (name, value) in attributes {
                check_text("attribute name", name, 64)?;
                check_text("attribute value", value, 256)?;
            }
        }
        for category in update.categories.iter().flatten() {
            if !self.category_exists(category).await? {
                return Err(CatalogError::UnknownCategory(category.clone()));
            }
        }
        for (sku, prices) in update.prices.iter().flatten() {
            if !current.variants.iter().any(|v| &v.sku == sku) {
                return Err(CatalogError::Invalid(format!(
                    "SKU {sku:?} is not a variant of this product"
                )));
            }
            if let Some(currency) = prices.keys().find(|c| !is_currency(c)) {
                return Err(CatalogError::Invalid(format!(
                    "{currency:?} is not an ISO 4217 currency code"
                )));
            }
        }
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "UPDATE products SET title = $2, description = $3, updated_at = $4 WHERE id = $1",
        )
        .bind(id)
        .bind(update.title.as_ref().unwrap_or(&current.title))
        .bind(update.description.as_ref().unwrap_or(&current.description))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if let Some(categories) = &update.categories {
            sqlx::query("DELETE FROM product_categories WHERE product_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            for category in categories {
                sqlx::query("INSERT INTO product_categories (product_id, category_id) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                    .bind(id)
                    .bind(category)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        if let Some(attributes) = &update.attributes {
            sqlx::query("DELETE FROM product_attributes WHERE product_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            for (name, value) in attributes {
                sqlx::query(
                    "INSERT INTO product_attributes (product_id, name, value) VALUES ($1, $2, $3)",
                )
                .bind(id)
                .bind(name)
                .bind(value)
                .execute(&mut *tx)
                .await?;
            }
        }
        for (sku, prices) in update.prices.iter().flatten() {
            for (currency, amount) in prices {
                sqlx::query(
                    "INSERT INTO variant_prices (sku, currency, amount) VALUES ($1, $2, $3) \
                     ON CONFLICT (sku, currency) DO UPDATE SET amount = excluded.amount",
                )
                .bind(sku)
                .bind(currency)
                .bind(i64::from(*amount))
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        self.product(id, true)
            .await?
            .ok_or_else(|| CatalogError::NotFound(id.to_owned()))
    }

    /// Archives a product: it leaves the storefront; orders keep referring to it.
    pub async fn archive(&self, id: &str, now: i64) -> Result<Product> {
        let updated =
            sqlx::query("UPDATE products SET status = 'archived', updated_at = $2 WHERE id = $1")
                .bind(id)
                .bind(now)
                .execute(&mut *self.db.write_conn().await?)
                .await?
                .rows_affected();
        if updated == 0 {
            return Err(CatalogError::NotFound(id.to_owned()));
        }
        self.product(id, true)
            .await?
            .ok_or_else(|| CatalogError::NotFound(id.to_owned()))
    }

    /// One product; archived ones only when `include_archived`.
    pub async fn product(&self, id: &str, include_archived: bool) -> Result<Option<Product>> {
        let Some(row) =
            sqlx::query("SELECT id, title, description, status FROM products WHERE id = $1")
                .bind(id)
                .fetch_optional(self.db.reader())
                .await?
        else {
            return Ok(None);
        };
        let status: String = row.try_get("status")?;
        if status == "archived" && !include_archived {
            return Ok(None);
        }
        let categories = self.categories_of(id).await?;
        let attributes = pairs(
            sqlx::query("SELECT name, value FROM product_attributes WHERE product_id = $1")
                .bind(id)
                .fetch_all(self.db.reader())
                .await?,
        )?;
        let mut variants = Vec::new();
        for v in sqlx::query("SELECT sku, title FROM variants WHERE product_id = $1 ORDER BY sku")
            .bind(id)
            .fetch_all(self.db.reader())
            .await?
        {
            let sku: String = v.try_get("sku")?;
            let options = self.options_of(&sku).await?;
            let mut prices = BTreeMap::new();
            for p in sqlx::query("SELECT currency, amount FROM variant_prices WHERE sku = $1")
                .bind(&sku)
                .fetch_all(self.db.reader())
                .await?
            {
                prices.insert(p.try_get("currency")?, p.try_get("amount")?);
            }
            variants.push(Variant {
                title: v.try_get("title")?,
                sku,
                options,
                prices,
            });
        }
        Ok(Some(Product {
            id: row.try_get("id")?,
            title: row.try_get("title")?,
            description: row.try_get("description")?,
            status,
            categories,
            attributes,
            variants,
        }))
    }

    /// Active products matching `filter`, newest first.
    pub async fn list(&self, filter: &ProductFilter) -> Result<Vec<Product>> {
        let limit = i64::from(filter.limit.unwrap_or(20).clamp(1, 100));
        let offset = i64::from(filter.offset.unwrap_or(0));
        let categories = match &filter.category {
            Some(root) => self.category_and_descendants(root).await?,
            None => Vec::new(),
        };
        let (attr_name, attr_value) = match &filter.attribute {
            Some(a) => {
                let (n, v) = a.split_once(':').ok_or_else(|| {
                    CatalogError::Invalid("attribute filter must be name:value".into())
                })?;
                (Some(n.to_owned()), Some(v.to_owned()))
            }
            None => (None, None),
        };
        let q = filter.q.as_ref().map(|q| format!("%{}%", q.to_lowercase()));
        // The category list is matched as a delimited string so that one statement, with a
        // fixed number of parameters, serves both backends.
        let category_list = format!(",{},", categories.join(","));
        let rows = sqlx::query(
            "SELECT p.id FROM products p WHERE p.status = 'active' \
             AND ($1 IS NULL OR LOWER(p.title) LIKE $1) \
             AND ($2 IS NULL OR EXISTS (SELECT 1 FROM product_attributes a WHERE a.product_id = p.id AND a.name = $2 AND a.value = $3)) \
             AND ($4 = 0 OR EXISTS (SELECT 1 FROM product_categories c WHERE c.product_id = p.id AND $5 LIKE '%,' || c.category_id || ',%')) \
             ORDER BY p.created_at DESC, p.id DESC LIMIT $6 OFFSET $7",
        )
        .bind(q)
        .bind(attr_name)
        .bind(attr_value)
        .bind(i64::from(filter.category.is_some()))
        .bind(category_list)
        .bind(limit)
        .bind(offset)
        .fetch_all(self.db.reader())
        .await?;
        let mut products = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("id")?;
            if let Some(p) = self.product(&id, false).await? {
                products.push(p);
            }
        }
        Ok(products)
    }

    async fn category_and_descendants(&self, root: &str) -> Result<Vec<String>> {
        if !self.category_exists(root).await? {
            return Err(CatalogError::UnknownCategory(root.to_owned()));
        }
        let mut all = vec![root.to_owned()];
        let mut frontier = vec![root.to_owned()];
        while let Some(parent) = frontier.pop() {
            for row in sqlx::query("SELECT id FROM categories WHERE parent_id = $1")
                .bind(&parent)
                .fetch_all(self.db.reader())
                .await?
            {
                let id: String = row.try_get("id")?;
                if !all.contains(&id) {
                    all.push(id.clone());
                    frontier.push(id);
                }
            }
        }
        Ok(all)
    }

    /// A product's category ids, sorted.
    async fn categories_of(&self, product_id: &str) -> Result<Vec<String>> {
        sqlx::query(
            "SELECT category_id FROM product_categories WHERE product_id = $1 ORDER BY category_id",
        )
        .bind(product_id)
        .fetch_all(self.db.reader())
        .await?
        .iter()
        .map(|r| Ok(r.try_get("category_id")?))
        .collect()
    }

    /// A variant's options.
    async fn options_of(&self, sku: &str) -> Result<BTreeMap<String, String>> {
        pairs(
            sqlx::query("SELECT name, value FROM variant_options WHERE sku = $1")
                .bind(sku)
                .fetch_all(self.db.reader())
                .await?,
        )
    }

    /// The product and categories of each of `skus`, archived or not (for order history),
    /// in one statement whatever their number; a SKU no variant has is missing from the
    /// answer. Categories in id order.
    pub async fn variant_origins(
        &self,
        skus: &[String],
    ) -> Result<HashMap<String, (String, Vec<String>)>> {
        let mut skus: Vec<&str> = skus.iter().map(String::as_str).collect();
        skus.sort_unstable();
        skus.dedup();
        if skus.is_empty() {
            return Ok(HashMap::new());
        }
        let sql = format!(
            "SELECT v.sku, v.product_id, c.category_id FROM variants v \
             LEFT JOIN product_categories c ON c.product_id = v.product_id \
             WHERE v.sku IN ({}) ORDER BY v.sku, c.category_id",
            params(1, skus.len())
        );
        let values: Vec<Value> = skus.iter().copied().map(Value::from).collect();
        let rows = self
            .db
            .read(move |tx| Box::pin(async move { tx.fetch(&sql, &values).await }))
            .await?;
        let mut origins: HashMap<String, (String, Vec<String>)> = HashMap::new();
        for row in &rows {
            let origin = origins
                .entry(row.get("sku")?)
                .or_insert_with(|| (String::new(), Vec::new()));
            origin.0 = row.get("product_id")?;
            if let Some(category) = row.get::<Option<String>>("category_id")? {
                origin.1.push(category);
            }
        }
        Ok(origins)
    }
}

/// The catalog generation (see [`Prices`]), in the caller's transaction. Read it before what
/// is cached by it: what is read after it is at least this new.
pub(crate) async fn generation_in(tx: &mut dyn Tx) -> sqlx::Result<i64> {
    tx.fetch_one(
        "SELECT generation FROM catalog_generation WHERE id = 1",
        &[],
    )
    .await?
    .get("generation")
}

/// What pricing needs to know about `skus` in `currency`, inside the caller's transaction,
/// which read the catalog `generation` first (see [`Prices`]): from the cache, or in three
/// statements whatever their number. A SKU missing from the answer is not for sale in
/// `currency`: unknown, its product archived, or no price in that currency.
pub(crate) async fn priced_variants_at(
    tx: &mut dyn Tx,
    prices: &Prices,
    generation: i64,
    skus: &[String],
    currency: &str,
) -> sqlx::Result<HashMap<String, PricedVariant>> {
    if skus.is_empty() {
        return Ok(HashMap::new());
    }
    if let Some(cached) = prices.get(generation, skus, currency) {
        return Ok(cached);
    }
    let variants = read_priced_variants_in(tx, skus, currency).await?;
    prices.put(generation, currency, &variants);
    Ok(variants)
}

/// The catalog's answer for `skus` in `currency`, from the database.
async fn read_priced_variants_in(
    tx: &mut dyn Tx,
    skus: &[String],
    currency: &str,
) -> sqlx::Result<HashMap<String, PricedVariant>> {
    let mut variants = HashMap::with_capacity(skus.len());
    if skus.is_empty() {
        return Ok(variants);
    }
    let mut found_args = vec![Value::from(currency)];
    found_args.extend(skus.iter().map(Value::from));
    let rows = tx
        .fetch(
            &format!(
                "SELECT v.sku, v.product_id, pr.amount FROM variants v \
                 JOIN products p ON p.id = v.product_id \
                 JOIN variant_prices pr ON pr.sku = v.sku AND pr.currency = $1 \
                 WHERE v.sku IN ({}) AND p.status = 'active'",
                params(2, skus.len())
            ),
            &found_args,
        )
        .await?;
    for row in &rows {
        variants.insert(
            row.get::<String>("sku")?,
            PricedVariant {
                product_id: row.get("product_id")?,
                unit_price: row.get("amount")?,
                categories: Vec::new(),
                options: BTreeMap::new(),
            },
        );
    }
    if variants.is_empty() {
        return Ok(variants);
    }
    let mut products: Vec<&str> = variants.values().map(|v| v.product_id.as_str()).collect();
    products.sort_unstable();
    products.dedup();
    let mut categories: HashMap<String, Vec<String>> = HashMap::new();
    let product_args: Vec<Value> = products.iter().copied().map(Value::from).collect();
    for row in tx
        .fetch(
            &format!(
                "SELECT product_id, category_id FROM product_categories WHERE product_id IN ({}) \
                 ORDER BY product_id, category_id",
                params(1, products.len())
            ),
            &product_args,
        )
        .await?
    {
        categories
            .entry(row.get("product_id")?)
            .or_default()
            .push(row.get("category_id")?);
    }
    let found: Vec<Value> = variants.keys().map(Value::from).collect();
    let options = tx
        .fetch(
            &format!(
                "SELECT sku, name, value FROM variant_options WHERE sku IN ({})",
                params(1, found.len())
            ),
            &found,
        )
        .await?;
    for row in &options {
        if let Some(variant) = variants.get_mut(row.text("sku")?) {
            variant.options.insert(row.get("name")?, row.get("value")?);
        }
    }
    for variant in variants.values_mut() {
        if let Some(list) = categories.get(&variant.product_id) {
            variant.categories.clone_from(list);
        }
    }
    Ok(variants)
}

fn pairs(rows: Vec<sqlx::any::AnyRow>) -> Result<BTreeMap<String, String>> {
    rows.iter()
        .map(|r| Ok((r.try_get("name")?, r.try_get("value")?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(sku: &str, unit_price: i64) -> HashMap<String, PricedVariant> {
        HashMap::from([(
            sku.to_owned(),
            PricedVariant {
                product_id: "p".to_owned(),
                unit_price,
                categories: Vec::new(),
                options: BTreeMap::new(),
            },
        )])
    }

    #[test]
    fn cached_answers_serve_only_the_generation_they_were_read_at() {
        let prices = Prices::default();
        let a = ["A".to_owned()];
        let price = |generation, skus: &[String], currency| {
            prices
                .get(generation, skus, currency)
                .map(|found| found.values().map(|v| v.unit_price).sum::<i64>())
        };
        assert_eq!(price(1, &a, "EUR"), None, "empty");
        prices.put(1, "EUR", &one("A", 100));
        assert_eq!(price(1, &a, "EUR"), Some(100));
        assert_eq!(price(1, &a, "USD"), None, "another currency");
        assert_eq!(
            price(1, &["A".to_owned(), "B".to_owned()], "EUR"),
            None,
            "one missing"
        );
        assert_eq!(price(2, &a, "EUR"), None, "the catalog changed since");
        prices.put(2, "EUR", &one("A", 200));
        // A read in an older snapshot neither fills the cache nor is served from it.
        prices.put(1, "EUR", &one("A", 100));
        assert_eq!(price(2, &a, "EUR"), Some(200));
        assert_eq!(price(1, &a, "EUR"), None);

        // Shipping offers follow the same generation, and a newer one empties both.
        let offer = |amount| crate::shipping::Offer {
            code: "standard".into(),
            name: "Standard".into(),
            carrier: None,
            amount,
            currency: "EUR".into(),
            countries: None,
        };
        let shipping = |generation| {
            prices
                .offers(generation, "EUR")
                .map(|offers| offers.iter().map(|o| o.amount).collect::<Vec<_>>())
        };
        assert_eq!(shipping(2), None, "not read yet");
        prices.put_offers(2, "EUR", &[offer(495)]);
        assert_eq!(shipping(2), Some(vec![495]));
        assert_eq!(prices.offers(2, "USD"), None, "another currency");
        prices.put_offers(1, "EUR", &[offer(100)]);
        assert_eq!(shipping(2), Some(vec![495]), "an older read is not kept");
        prices.put_offers(3, "EUR", &[]);
        assert_eq!(shipping(3), Some(vec![]), "none offered is an answer too");
        assert_eq!(
            price(3, &a, "EUR"),
            None,
            "the prices went with generation 2"
        );
        assert_eq!(shipping(2), None);
    }
}
