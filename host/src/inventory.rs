//! Multi-location inventory that cannot oversell.
//!
//! Per SKU and location the database keeps `on_hand` and `committed`; what is *reserved* is
//! the sum of active reservations that have not expired, computed when needed, so an expired
//! reservation stops counting the instant it expires — no cleanup job is involved.
//! `available = on_hand − committed − reserved`.
//!
//! Every write takes the write lock of the level rows it depends on before it reads them, in
//! one fixed order (SKU, then location id), so two checkouts can never both see the last unit
//! and deadlocks between them cannot happen. (Every platform that oversold read stock first
//! and wrote it back later.) On SQLite the single writer gives the same guarantee.
//!
//! Lifecycle: checkout [`reserve`](Inventory::reserve)s with an expiry → placing the order
//! [`commit`](Inventory::commit)s → fulfilment [`ship`](Inventory::ship)s from committed;
//! [`release`](Inventory::release) and [`cancel`](Inventory::cancel) give stock back and a
//! return [`restock`](Inventory::restock)s, each exactly once. Every change is recorded as a
//! movement.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::{Any, Row, Transaction};

use crate::db::{Backend, BindEach, Db, param_rows, params};

/// Why an inventory operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// Not enough available stock across all locations.
    #[error("insufficient stock for {sku}: {requested} requested, {available} available")]
    Insufficient {
        /// The SKU.
        sku: String,
        /// What was asked for.
        requested: i64,
        /// What is available.
        available: i64,
    },
    /// The SKU is not stocked anywhere.
    #[error("no stock is kept for SKU {0:?}")]
    UnknownSku(String),
    /// The stock location does not exist.
    #[error("no stock location {0:?}")]
    UnknownLocation(String),
    /// Quantities must be positive.
    #[error("quantity must be at least 1, got {0}")]
    InvalidQuantity(i64),
    /// The reservation expired before it could be committed.
    #[error("the reservation for {0} has expired")]
    Expired(String),
    /// There is nothing in the state the operation needs.
    #[error("nothing to {action} for {reference}")]
    NothingTo {
        /// The operation.
        action: &'static str,
        /// The reference.
        reference: String,
    },
    /// A write-off would leave less on hand than is committed and reserved.
    #[error("cannot remove {requested} of {sku} at {location}: only {available} is available")]
    WouldGoNegative {
        /// The SKU.
        sku: String,
        /// The location.
        location: String,
        /// What was asked to be removed.
        requested: i64,
        /// What is available.
        available: i64,
    },
    /// The database failed.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl InventoryError {
    /// The stable error code.
    pub fn code(&self) -> &'static str {
        match self {
            InventoryError::Insufficient { .. } => "insufficient_stock",
            InventoryError::UnknownSku(_) => "unknown_sku",
            InventoryError::UnknownLocation(_) => "unknown_location",
            InventoryError::InvalidQuantity(_) => "invalid_quantity",
            InventoryError::Expired(_) => "reservation_expired",
            InventoryError::NothingTo { .. } => "invalid_state",
            InventoryError::WouldGoNegative { .. } => "insufficient_stock",
            InventoryError::Database(_) => "internal",
        }
    }
}

type Result<T> = std::result::Result<T, InventoryError>;

/// Stock of one SKU at one location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StockLevel {
    /// The SKU.
    pub sku: String,
    /// The location.
    pub location_id: String,
    /// Physically there.
    pub on_hand: i64,
    /// Held by active, unexpired reservations.
    pub reserved: i64,
    /// Sold, not yet shipped.
    pub committed: i64,
    /// `on_hand − reserved − committed`.
    pub available: i64,
}

/// Part of a reservation: this many units of a SKU from one location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Allocation {
    /// The SKU.
    pub sku: String,
    /// Where it ships from.
    pub location_id: String,
    /// How many.
    pub quantity: i64,
}

/// The inventory service.
#[derive(Debug, Clone)]
pub struct Inventory {
    db: Db,
}

/// Reserved units of a level at `now`, as a SQL expression over `l` (inventory_levels).
const RESERVED: &str = "CAST(COALESCE((SELECT SUM(r.quantity) FROM reservations r \
     WHERE r.sku = l.sku AND r.location_id = l.location_id AND r.state = 'active' \
     AND r.expires_at > $1), 0) AS BIGINT)";

/// The most rows one multi-row statement carries (parameter limits: SQLite 32,766, PostgreSQL
/// 65,535; a row here has at most 7).
const ROWS_PER_STATEMENT: usize = 500;

impl Inventory {
    /// Inventory over `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// Creates or renames a stock location. Lower `priority` ships first.
    pub async fn upsert_location(&self, id: &str, name: &str, priority: i32) -> Result<()> {
        sqlx::query(
            "INSERT INTO stock_locations (id, name, priority) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, priority = excluded.priority",
        )
        .bind(id)
        .bind(name)
        .bind(priority)
        .execute(self.db.pool())
        .await?;
        Ok(())
    }

    /// Stock of `sku` at every location, in shipping order.
    pub async fn levels(&self, sku: &str, now: i64) -> Result<Vec<StockLevel>> {
        let rows = sqlx::query(&format!(
            "SELECT l.sku, l.location_id, l.on_hand, l.committed, {RESERVED} AS reserved \
             FROM inventory_levels l JOIN stock_locations s ON s.id = l.location_id \
             WHERE l.sku = $2 ORDER BY s.priority, l.location_id"
        ))
        .bind(now)
        .bind(sku)
        .fetch_all(self.db.reader())
        .await?;
        rows.iter()
            .map(|row| {
                let on_hand: i64 = row.try_get("on_hand")?;
                let committed: i64 = row.try_get("committed")?;
                let reserved: i64 = row.try_get("reserved")?;
                Ok(StockLevel {
                    sku: row.try_get("sku")?,
                    location_id: row.try_get("location_id")?,
                    on_hand,
                    reserved,
                    committed,
                    available: on_hand - committed - reserved,
                })
            })
            .collect()
    }

    /// Units of `sku` available across all locations.
    pub async fn available(&self, sku: &str, now: i64) -> Result<i64> {
        Ok(self
            .levels(sku, now)
            .await?
            .iter()
            .map(|l| l.available)
            .sum())
    }

    /// Receives (positive `delta`) or writes off (negative) stock at a location. A write-off
    /// never takes away stock that is reserved or committed.
    pub async fn adjust(
        &self,
        sku: &str,
        location_id: &str,
        delta: i64,
        reason: &str,
        now: i64,
    ) -> Result<StockLevel> {
        let mut tx = self.db.begin().await?;
        let location_known = sqlx::query("SELECT id FROM stock_locations WHERE id = $1")
            .bind(location_id)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if !location_known {
            return Err(InventoryError::UnknownLocation(location_id.to_owned()));
        }
        let sku_known = sqlx::query("SELECT sku FROM variants WHERE sku = $1")
            .bind(sku)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        if !sku_known {
            return Err(InventoryError::UnknownSku(sku.to_owned()));
        }
        sqlx::query(
            "INSERT INTO inventory_levels (sku, location_id) VALUES ($1, $2) \
             ON CONFLICT (sku, location_id) DO NOTHING",
        )
        .bind(sku)
        .bind(location_id)
        .execute(&mut *tx)
        .await?;
        lock_levels(
            &mut tx,
            self.db.backend(),
            &[(sku.to_owned(), location_id.to_owned())],
        )
        .await?;
        let available = level_available(&mut tx, sku, location_id, now).await?;
        if available + delta < 0 {
            return Err(InventoryError::WouldGoNegative {
                sku: sku.to_owned(),
                location: location_id.to_owned(),
                requested: -delta,
                available,
            });
        }
        sqlx::query(
            "UPDATE inventory_levels SET on_hand = on_hand + $3 WHERE sku = $1 AND location_id = $2",
        )
        .bind(sku)
        .bind(location_id)
        .bind(delta)
        .execute(&mut *tx)
        .await?;
        let moved = Allocation {
            sku: sku.to_owned(),
            location_id: location_id.to_owned(),
            quantity: delta,
        };
        record_movements(&mut tx, &[moved], reason, 1, None, now).await?;
        tx.commit().await?;
        let level = self
            .levels(sku, now)
            .await?
            .into_iter()
            .find(|l| l.location_id == location_id);
        level.ok_or_else(|| InventoryError::UnknownSku(sku.to_owned()))
    }

    /// Reserves `demand` (SKU, quantity) for `reference` until `expires_at`, allocating each
    /// SKU across locations in priority order. All or nothing: if any SKU falls short, nothing
    /// is reserved. Lines that draw on the same SKU are added up first. A reference that
    /// already holds active reservations has them replaced.
    pub async fn reserve(
        &self,
        reference: &str,
        demand: &[(String, i64)],
        now: i64,
        expires_at: i64,
    ) -> Result<Vec<Allocation>> {
        let mut wanted: BTreeMap<&str, i64> = BTreeMap::new();
        for (sku, quantity) in demand {
            if *quantity <= 0 {
                return Err(InventoryError::InvalidQuantity(*quantity));
            }
            let total = wanted.entry(sku.as_str()).or_default();
            *total = total.saturating_add(*quantity);
        }
        let skus: Vec<&str> = wanted.keys().copied().collect();
        let mut tx = self.db.begin().await?;
        // Lock every level involved, in (sku, location) order, before reading any of them.
        let rows = sqlx::query(&format!(
            "SELECT sku, location_id FROM inventory_levels WHERE sku IN ({}) \
             ORDER BY sku, location_id",
            params(1, skus.len())
        ))
        .bind_each(skus.iter().copied())
        .fetch_all(&mut *tx)
        .await?;
        let mut levels: Vec<(String, String)> = Vec::with_capacity(rows.len());
        for row in &rows {
            levels.push((row.try_get("sku")?, row.try_get("location_id")?));
        }
        if let Some(sku) = skus
            .iter()
            .find(|sku| !levels.iter().any(|(s, _)| s == *sku))
        {
            return Err(InventoryError::UnknownSku((*sku).to_owned()));
        }
        lock_levels(&mut tx, self.db.backend(), &levels).await?;
        sqlx::query(
            "UPDATE reservations SET state = 'released' WHERE reference = $1 AND state = 'active'",
        )
        .bind(reference)
        .execute(&mut *tx)
        .await?;

        let rows = sqlx::query(&format!(
            "SELECT l.sku, l.location_id, l.on_hand - l.committed - {RESERVED} AS available \
             FROM inventory_levels l JOIN stock_locations s ON s.id = l.location_id \
             WHERE l.sku IN ({}) ORDER BY l.sku, s.priority, l.location_id",
            params(2, skus.len())
        ))
        .bind(now)
        .bind_each(skus.iter().copied())
        .fetch_all(&mut *tx)
        .await?;
        let mut allocations = Vec::new();
        for (sku, &requested) in &wanted {
            let mut remaining = requested;
            let mut total_available = 0;
            for row in &rows {
                if row.try_get::<&str, _>("sku")? != *sku {
                    continue;
                }
                let available: i64 = row.try_get("available")?;
                total_available += available.max(0);
                if remaining > 0 && available > 0 {
                    let take = available.min(remaining);
                    remaining -= take;
                    allocations.push(Allocation {
                        sku: (*sku).to_owned(),
                        location_id: row.try_get("location_id")?,
                        quantity: take,
                    });
                }
            }
            if remaining > 0 {
                return Err(InventoryError::Insufficient {
                    sku: (*sku).to_owned(),
                    requested,
                    available: total_available,
                });
            }
        }
        for chunk in allocations.chunks(ROWS_PER_STATEMENT) {
            let sql = format!(
                "INSERT INTO reservations (id, reference, sku, location_id, quantity, expires_at, created_at, state) \
                 VALUES {}",
                param_rows(1, chunk.len(), 7).replace(')', ", 'active')")
            );
            let mut insert = sqlx::query(&sql);
            for a in chunk {
                insert = insert
                    .bind(uuid::Uuid::now_v7().to_string())
                    .bind(reference)
                    .bind(&a.sku)
                    .bind(&a.location_id)
                    .bind(a.quantity)
                    .bind(expires_at)
                    .bind(now);
            }
            insert.execute(&mut *tx).await?;
        }
        record_movements(&mut tx, &allocations, "reserve", 1, Some(reference), now).await?;
        tx.commit().await?;
        Ok(allocations)
    }

    /// Turns `reference`'s active reservations into committed stock (the order is placed).
    /// Fails if they expired: their stock may already belong to someone else.
    pub async fn commit(&self, reference: &str, now: i64) -> Result<Vec<Allocation>> {
        let mut tx = self.db.begin().await?;
        let allocations = self.commit_in(&mut tx, reference, now).await?;
        tx.commit().await?;
        Ok(allocations)
    }

    /// [`commit`](Self::commit) inside the caller's write transaction (begun with
    /// [`Db::begin`]), so that the order and its stock are recorded together or not at all.
    pub async fn commit_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        reference: &str,
        now: i64,
    ) -> Result<Vec<Allocation>> {
        let held = reservations_in(tx, reference, "active").await?;
        if held.is_empty() {
            return Err(InventoryError::NothingTo {
                action: "commit",
                reference: reference.to_owned(),
            });
        }
        if held.iter().any(|(_, expires_at)| *expires_at <= now) {
            return Err(InventoryError::Expired(reference.to_owned()));
        }
        let allocations: Vec<Allocation> = held.into_iter().map(|(a, _)| a).collect();
        lock_levels(tx, self.db.backend(), &levels_of(&allocations)).await?;
        sqlx::query(
            "UPDATE inventory_levels SET committed = committed + CAST((SELECT SUM(r.quantity) \
             FROM reservations r WHERE r.reference = $1 AND r.state = 'active' \
             AND r.sku = inventory_levels.sku AND r.location_id = inventory_levels.location_id) AS BIGINT) \
             WHERE EXISTS (SELECT 1 FROM reservations r WHERE r.reference = $1 AND r.state = 'active' \
             AND r.sku = inventory_levels.sku AND r.location_id = inventory_levels.location_id)",
        )
        .bind(reference)
        .execute(&mut **tx)
        .await?;
        record_movements(tx, &allocations, "commit", 1, Some(reference), now).await?;
        sqlx::query(
            "UPDATE reservations SET state = 'committed' WHERE reference = $1 AND state = 'active'",
        )
        .bind(reference)
        .execute(&mut **tx)
        .await?;
        Ok(allocations)
    }

    /// Releases `reference`'s active reservations (checkout abandoned or failed). Idempotent:
    /// returns the units released, 0 the second time.
    pub async fn release(&self, reference: &str, now: i64) -> Result<i64> {
        let mut tx = self.db.begin().await?;
        let held: Vec<Allocation> = reservations_in(&mut tx, reference, "active")
            .await?
            .into_iter()
            .map(|(a, _)| a)
            .collect();
        record_movements(&mut tx, &held, "release", -1, Some(reference), now).await?;
        let units = held.iter().map(|a| a.quantity).sum();
        sqlx::query(
            "UPDATE reservations SET state = 'released' WHERE reference = $1 AND state = 'active'",
        )
        .bind(reference)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(units)
    }

    /// Ships everything committed for `reference`: it leaves `committed` and `on_hand`.
    pub async fn ship(&self, reference: &str, now: i64) -> Result<Vec<Allocation>> {
        self.settle(reference, "ship", now).await
    }

    /// Ships `items` (SKU, quantity) of what is committed for `reference`, taking from
    /// locations in priority order. Part of a reservation can ship: the rest stays committed.
    pub async fn ship_items(
        &self,
        reference: &str,
        items: &[(String, i64)],
        now: i64,
    ) -> Result<Vec<Allocation>> {
        if let Some((_, q)) = items.iter().find(|(_, q)| *q <= 0) {
            return Err(InventoryError::InvalidQuantity(*q));
        }
        let mut tx = self.db.begin().await?;
        let rows = sqlx::query(
            "SELECT r.id, r.sku, r.location_id, r.quantity FROM reservations r \
             JOIN stock_locations s ON s.id = r.location_id \
             WHERE r.reference = $1 AND r.state = 'committed' ORDER BY r.sku, s.priority, r.location_id",
        )
        .bind(reference)
        .fetch_all(&mut *tx)
        .await?;
        let mut committed = Vec::with_capacity(rows.len());
        for r in &rows {
            committed.push((
                r.try_get::<String, _>("id")?,
                r.try_get::<String, _>("sku")?,
                r.try_get::<String, _>("location_id")?,
                r.try_get::<i64, _>("quantity")?,
            ));
        }
        let mut shipped = Vec::new();
        for (sku, quantity) in items {
            let mut remaining = *quantity;
            for (id, _, location, held) in committed.iter().filter(|c| &c.1 == sku) {
                if remaining == 0 {
                    break;
                }
                let take = remaining.min(*held);
                remaining -= take;
                shipped.push((
                    id.clone(),
                    sku.clone(),
                    location.clone(),
                    take,
                    take == *held,
                ));
            }
            if remaining > 0 {
                return Err(InventoryError::NothingTo {
                    action: "ship that much",
                    reference: format!("{reference} ({sku})"),
                });
            }
        }
        let levels: Vec<(String, String)> =
            shipped.iter().map(|s| (s.1.clone(), s.2.clone())).collect();
        lock_levels(&mut tx, self.db.backend(), &levels).await?;
        let mut allocations = Vec::with_capacity(shipped.len());
        for (id, sku, location, take, whole) in shipped {
            if whole {
                sqlx::query("UPDATE reservations SET state = 'shipped' WHERE id = $1")
                    .bind(&id)
                    .execute(&mut *tx)
                    .await?;
            } else {
                sqlx::query("UPDATE reservations SET quantity = quantity - $2 WHERE id = $1")
                    .bind(&id)
                    .bind(take)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO reservations (id, reference, sku, location_id, quantity, state, expires_at, created_at) \
                     VALUES ($1, $2, $3, $4, $5, 'shipped', $6, $6)",
                )
                .bind(uuid::Uuid::now_v7().to_string())
                .bind(reference)
                .bind(&sku)
                .bind(&location)
                .bind(take)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            sqlx::query(
                "UPDATE inventory_levels SET committed = committed - $3, on_hand = on_hand - $3 \
                 WHERE sku = $1 AND location_id = $2",
            )
            .bind(&sku)
            .bind(&location)
            .bind(take)
            .execute(&mut *tx)
            .await?;
            allocations.push(Allocation {
                sku,
                location_id: location,
                quantity: take,
            });
        }
        record_movements(&mut tx, &allocations, "ship", -1, Some(reference), now).await?;
        tx.commit().await?;
        Ok(allocations)
    }

    /// What was shipped for `reference`, by location.
    pub async fn shipped(&self, reference: &str) -> Result<Vec<Allocation>> {
        let mut tx = self.db.begin().await?;
        let shipped = reservations_in(&mut tx, reference, "shipped").await?;
        tx.commit().await?;
        Ok(shipped.into_iter().map(|(a, _)| a).collect())
    }

    /// Cancels an order's committed stock before it ships: it becomes available again.
    /// Exactly once: a second cancel finds nothing committed.
    pub async fn cancel(&self, reference: &str, now: i64) -> Result<Vec<Allocation>> {
        self.settle(reference, "cancel", now).await
    }

    async fn settle(
        &self,
        reference: &str,
        action: &'static str,
        now: i64,
    ) -> Result<Vec<Allocation>> {
        let mut tx = self.db.begin().await?;
        let committed: Vec<Allocation> = reservations_in(&mut tx, reference, "committed")
            .await?
            .into_iter()
            .map(|(a, _)| a)
            .collect();
        if committed.is_empty() {
            return Err(InventoryError::NothingTo {
                action,
                reference: reference.to_owned(),
            });
        }
        lock_levels(&mut tx, self.db.backend(), &levels_of(&committed)).await?;
        let (sql, state) = match action {
            "ship" => (
                "UPDATE inventory_levels SET committed = committed - $3, on_hand = on_hand - $3 \
                 WHERE sku = $1 AND location_id = $2",
                "shipped",
            ),
            _ => (
                "UPDATE inventory_levels SET committed = committed - $3 WHERE sku = $1 AND location_id = $2",
                "released",
            ),
        };
        for a in &committed {
            sqlx::query(sql)
                .bind(&a.sku)
                .bind(&a.location_id)
                .bind(a.quantity)
                .execute(&mut *tx)
                .await?;
        }
        record_movements(&mut tx, &committed, action, -1, Some(reference), now).await?;
        sqlx::query(&format!(
            "UPDATE reservations SET state = '{state}' WHERE reference = $1 AND state = 'committed'"
        ))
        .bind(reference)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(committed)
    }

    /// Puts returned units back on hand, exactly once per `return_reference`, SKU and
    /// location: repeating the same return changes nothing and returns `false`.
    pub async fn restock(
        &self,
        return_reference: &str,
        sku: &str,
        location_id: &str,
        quantity: i64,
        now: i64,
    ) -> Result<bool> {
        if quantity <= 0 {
            return Err(InventoryError::InvalidQuantity(quantity));
        }
        let mut tx = self.db.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO inventory_movements (sku, location_id, kind, quantity, reference, at) \
             VALUES ($1, $2, 'restock', $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(sku)
        .bind(location_id)
        .bind(quantity)
        .bind(return_reference)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            return Ok(false);
        }
        let updated = sqlx::query(
            "UPDATE inventory_levels SET on_hand = on_hand + $3 WHERE sku = $1 AND location_id = $2",
        )
        .bind(sku)
        .bind(location_id)
        .bind(quantity)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(InventoryError::UnknownSku(sku.to_owned()));
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The movements of `sku` at `location_id`, oldest first: (kind, quantity, reference).
    pub async fn movements(
        &self,
        sku: &str,
        location_id: &str,
    ) -> Result<Vec<(String, i64, Option<String>)>> {
        let rows = sqlx::query(
            "SELECT kind, quantity, reference FROM inventory_movements \
             WHERE sku = $1 AND location_id = $2 ORDER BY id",
        )
        .bind(sku)
        .bind(location_id)
        .fetch_all(self.db.reader())
        .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("kind")?,
                    r.try_get("quantity")?,
                    r.try_get("reference")?,
                ))
            })
            .collect()
    }
}

/// Takes the write locks of `levels` (SKU, location), in (SKU, location) order whatever order
/// they come in, so two writers never wait for each other in a cycle. On PostgreSQL these are
/// row locks, taken by one ordered `SELECT … FOR UPDATE` (rows are locked in the order the
/// sort returns them); on SQLite the transaction already holds the database's write lock
/// ([`Db::begin`] is `BEGIN IMMEDIATE`), so there is nothing more to take.
async fn lock_levels(
    tx: &mut Transaction<'_, Any>,
    backend: Backend,
    levels: &[(String, String)],
) -> Result<()> {
    if backend == Backend::Sqlite || levels.is_empty() {
        return Ok(());
    }
    let mut sorted: Vec<&(String, String)> = levels.iter().collect();
    sorted.sort();
    sorted.dedup();
    for chunk in sorted.chunks(ROWS_PER_STATEMENT) {
        sqlx::query(&format!(
            "SELECT sku FROM inventory_levels WHERE (sku, location_id) IN ({}) \
             ORDER BY sku, location_id FOR UPDATE",
            param_rows(1, chunk.len(), 2)
        ))
        .bind_each(
            chunk
                .iter()
                .flat_map(|(sku, location)| [sku.as_str(), location.as_str()]),
        )
        .fetch_all(&mut **tx)
        .await?;
    }
    Ok(())
}

/// The levels `allocations` draw on, as [`lock_levels`] takes them.
fn levels_of(allocations: &[Allocation]) -> Vec<(String, String)> {
    allocations
        .iter()
        .map(|a| (a.sku.clone(), a.location_id.clone()))
        .collect()
}

async fn level_available(
    tx: &mut Transaction<'_, Any>,
    sku: &str,
    location_id: &str,
    now: i64,
) -> Result<i64> {
    let row = sqlx::query(&format!(
        "SELECT l.on_hand - l.committed - {RESERVED} AS available FROM inventory_levels l \
         WHERE l.sku = $2 AND l.location_id = $3"
    ))
    .bind(now)
    .bind(sku)
    .bind(location_id)
    .fetch_one(&mut **tx)
    .await?;
    Ok(row.try_get("available")?)
}

async fn reservations_in(
    tx: &mut Transaction<'_, Any>,
    reference: &str,
    state: &str,
) -> Result<Vec<(Allocation, i64)>> {
    let rows = sqlx::query(
        "SELECT sku, location_id, quantity, expires_at FROM reservations \
         WHERE reference = $1 AND state = $2 ORDER BY sku, location_id",
    )
    .bind(reference)
    .bind(state)
    .fetch_all(&mut **tx)
    .await?;
    rows.iter()
        .map(|r| {
            Ok((
                Allocation {
                    sku: r.try_get("sku")?,
                    location_id: r.try_get("location_id")?,
                    quantity: r.try_get("quantity")?,
                },
                r.try_get("expires_at")?,
            ))
        })
        .collect()
}

/// Records one movement per allocation, `sign` × its quantity, in as few statements as the
/// parameter limits allow.
async fn record_movements(
    tx: &mut Transaction<'_, Any>,
    allocations: &[Allocation],
    kind: &str,
    sign: i64,
    reference: Option<&str>,
    now: i64,
) -> Result<()> {
    for chunk in allocations.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO inventory_movements (sku, location_id, kind, quantity, reference, at) VALUES {}",
            param_rows(1, chunk.len(), 6)
        );
        let mut insert = sqlx::query(&sql);
        for a in chunk {
            insert = insert
                .bind(&a.sku)
                .bind(&a.location_id)
                .bind(kind)
                .bind(sign * a.quantity)
                .bind(reference)
                .bind(now);
        }
        insert.execute(&mut **tx).await?;
    }
    Ok(())
}
