//! Multi-location inventory that cannot oversell.
//!
//! Per SKU and location the database keeps `on_hand` and `held`: the units of every active
//! (reserved) or committed reservation there, so `available = on_hand − held`, read off the
//! row a checkout locks, and `held ≤ on_hand` is a constraint — the database itself refuses to
//! oversell. Placing an order turns reserved into committed without touching the level row:
//! only reserving, releasing, shipping and adjusting write it.
//!
//! An expired reservation stops counting the instant it expires, with no cleanup job: every
//! read adds lapsed reservations that are still `active` back to what is available, and every
//! writer that needs stock first releases the lapsed reservations of the levels it locked (and
//! records each as an `expire` movement). A reservation is committed or released by one
//! statement on its own row, so an order being placed and a checkout taking its lapsed stock
//! cannot both win: whichever changes the row first decides, and committing checks that it got
//! every reservation it made.
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
use std::sync::Arc;

use serde::Serialize;
use sqlx::Row;

use crate::db::{Backend, Db, FromValue, SqlByCount, Tx, Value, args, param_rows, params};

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

/// An inventory operation's outcome.
pub type Result<T> = std::result::Result<T, InventoryError>;

/// Stock of one SKU at one location.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct StockLevel {
    /// The SKU.
    pub sku: String,
    /// The location.
    pub location_id: String,
    /// Physically there.
    pub on_hand: i64,
    /// Held by active reservations that have not expired.
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
    /// Admission to reserving on PostgreSQL: see [`Inventory::admit_reservation`].
    gate: Arc<tokio::sync::Semaphore>,
}

/// How many reserving transactions one host runs on PostgreSQL at once.
const RESERVING_AT_ONCE: usize = 4;

/// Units of a level still `held` by reservations that lapsed at `$1` and were not released
/// yet — they no longer count — as a SQL expression over `l` (inventory_levels).
const LAPSED: &str = "CAST(COALESCE((SELECT SUM(r.quantity) FROM reservations r \
     WHERE r.sku = l.sku AND r.location_id = l.location_id AND r.state = 'active' \
     AND r.expires_at <= $1), 0) AS BIGINT)";

/// Units of a level's active reservations, lapsed or not, as a SQL expression over `l`: what
/// it holds beyond them is committed (sold, not shipped).
const ACTIVE: &str = "CAST(COALESCE((SELECT SUM(r.quantity) FROM reservations r \
     WHERE r.sku = l.sku AND r.location_id = l.location_id AND r.state = 'active'), 0) \
     AS BIGINT)";

/// The most rows one multi-row statement carries (parameter limits: SQLite 32,766, PostgreSQL
/// 65,535; a row here has at most 7).
const ROWS_PER_STATEMENT: usize = 500;

impl Inventory {
    /// Inventory over `db`.
    pub fn new(db: Db) -> Self {
        Self {
            db,
            gate: Arc::new(tokio::sync::Semaphore::new(RESERVING_AT_ONCE)),
        }
    }

    /// A turn to run a reserving transaction ([`reserve_in`]); hold it until the transaction
    /// has finished. On PostgreSQL checkouts of the same SKUs queue for the level rows' locks,
    /// and every commit there wakes every backend waiting behind it to re-read the rows: with
    /// dozens waiting, that churn costs more than the work. A few transactions at a time per
    /// host keep the queue here, where waiting is free; the row locks still decide between
    /// hosts. On SQLite the single writer queues them already (and commits them in groups), so
    /// there is no gate.
    pub async fn admit_reservation(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        match self.db.backend() {
            Backend::Sqlite => None,
            Backend::Postgres => self.gate.acquire().await.ok(),
        }
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
        .execute(&mut *self.db.write_conn().await?)
        .await?;
        Ok(())
    }

    /// Stock of `sku` at every location, in shipping order.
    pub async fn levels(&self, sku: &str, now: i64) -> Result<Vec<StockLevel>> {
        let rows = sqlx::query(&format!(
            "SELECT l.sku, l.location_id, l.on_hand, l.held, {LAPSED} AS lapsed, \
             {ACTIVE} AS active \
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
                let held: i64 = row.try_get("held")?;
                let lapsed: i64 = row.try_get("lapsed")?;
                let active: i64 = row.try_get("active")?;
                Ok(StockLevel {
                    sku: row.try_get("sku")?,
                    location_id: row.try_get("location_id")?,
                    on_hand,
                    reserved: active - lapsed,
                    // `held` is every active and committed reservation's units.
                    committed: held - active,
                    available: on_hand - held + lapsed,
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
        let (sku_owned, location, reason) =
            (sku.to_owned(), location_id.to_owned(), reason.to_owned());
        self.db
            .write(move |tx| Box::pin(adjust_in(tx, sku_owned, location, delta, reason, now)))
            .await?;
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
    ///
    /// On PostgreSQL it is two statements and no transaction when nothing needs releasing
    /// first ([`reserve_at_once`]); otherwise, and on SQLite, one write transaction.
    /// Committed without waiting for the disk ([`Db::write_unsynced`], [`Db::unsynced`]), so
    /// the level locks are released without it. Nothing durable rests on a reservation
    /// alone: what makes it count is the commit that places the order, which does wait. A
    /// crash before that loses at most reservations whose orders were never placed (the
    /// checkout's record then fails and voids the payment).
    pub async fn reserve(
        &self,
        reference: &str,
        demand: &[(String, i64)],
        now: i64,
        expires_at: i64,
    ) -> Result<Vec<Allocation>> {
        let wanted = demand_of(demand)?;
        let reference = reference.to_owned();
        if self.db.backend() == Backend::Postgres {
            let at_once = reserve_at_once(
                &self.db,
                None,
                reference.clone(),
                wanted.clone(),
                now,
                expires_at,
            )
            .await?;
            if let AtOnce::Reserved(allocations) = at_once {
                return Ok(allocations);
            }
        }
        let _turn = self.admit_reservation().await;
        self.db
            .write_unsynced(move |tx| Box::pin(reserve_in(tx, reference, wanted, now, expires_at)))
            .await
    }

    /// Turns the reservations [`reserve`](Self::reserve) made for `reference` — `reserved`,
    /// what it returned — into committed stock (the order is placed). Fails, committing
    /// nothing, if any of them expired: their stock may already belong to someone else.
    pub async fn commit(
        &self,
        reference: &str,
        reserved: &[Allocation],
        now: i64,
    ) -> Result<Vec<Allocation>> {
        let (reference, expected) = (reference.to_owned(), reserved.len());
        self.db
            .write(move |tx| {
                Box::pin(async move { commit_in(tx, &reference, expected, now).await })
            })
            .await
    }

    /// Releases reservations that lapsed by `now` and are still marked active, on at most
    /// `levels` stock levels, recording each as an `expire` movement; returns the units
    /// released. Lapsed stock already counts as available (reads add it back), and a checkout
    /// releases the lapsed reservations of the levels it reserves on — this tidies the levels
    /// nobody reserves on again, so that their `held` and the reservations table say what is
    /// really held. Safe beside checkouts: each reservation is released by one guarded
    /// statement under its level's lock.
    pub async fn release_lapsed(&self, now: i64, levels: i64) -> Result<i64> {
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    let rows = tx
                        .fetch(
                            "SELECT DISTINCT sku, location_id FROM reservations \
                             WHERE state = 'active' AND expires_at <= $1 \
                             ORDER BY sku, location_id LIMIT $2",
                            &args![now, levels],
                        )
                        .await?;
                    let levels = rows
                        .iter()
                        .map(|row| Ok((row.get("sku")?, row.get("location_id")?)))
                        .collect::<Result<Vec<(String, String)>>>()?;
                    if levels.is_empty() {
                        return Ok(0);
                    }
                    lock_levels(tx, &levels).await?;
                    let freed = release_stale_in(tx, &levels, None, now).await?;
                    Ok(freed.iter().map(|a| a.quantity).sum())
                })
            })
            .await
    }

    /// Releases `reference`'s active reservations (checkout abandoned or failed). Idempotent:
    /// returns the units released, 0 the second time.
    pub async fn release(&self, reference: &str, now: i64) -> Result<i64> {
        let reference = reference.to_owned();
        self.db
            .write(move |tx| Box::pin(release_in(tx, reference, now)))
            .await
    }

    /// Ships everything committed for `reference`: it leaves `held` and `on_hand`.
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
        let (reference, items) = (reference.to_owned(), items.to_vec());
        self.db
            .write(move |tx| Box::pin(ship_items_in(tx, reference, items, now)))
            .await
    }

    /// What was shipped for `reference`, by location.
    pub async fn shipped(&self, reference: &str) -> Result<Vec<Allocation>> {
        let rows = sqlx::query(
            "SELECT sku, location_id, quantity FROM reservations \
             WHERE reference = $1 AND state = 'shipped' ORDER BY sku, location_id",
        )
        .bind(reference)
        .fetch_all(self.db.reader())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Allocation {
                    sku: r.try_get("sku")?,
                    location_id: r.try_get("location_id")?,
                    quantity: r.try_get("quantity")?,
                })
            })
            .collect()
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
        let reference = reference.to_owned();
        self.db
            .write(move |tx| Box::pin(settle_in(tx, reference, action, now)))
            .await
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
        let restock = args![sku, location_id, quantity, return_reference, now];
        self.db
            .write(move |tx| {
                Box::pin(async move {
                    let inserted = tx
                        .execute(
                            "INSERT INTO inventory_movements (sku, location_id, kind, quantity, reference, at) \
                             VALUES ($1, $2, 'restock', $3, $4, $5) ON CONFLICT DO NOTHING",
                            &restock,
                        )
                        .await?;
                    if inserted == 0 {
                        return Ok(false);
                    }
                    let updated = tx
                        .execute(
                            "UPDATE inventory_levels SET on_hand = on_hand + $3 \
                             WHERE sku = $1 AND location_id = $2",
                            &restock[..3],
                        )
                        .await?;
                    if updated == 0 {
                        return Err(InventoryError::UnknownSku(
                            String::from_value(&restock[0]).unwrap_or_default(),
                        ));
                    }
                    Ok(true)
                })
            })
            .await
    }

    /// The movements of `sku` at `location_id`, oldest first: (kind, quantity, reference).
    /// An audit read: on SQLite it scans the ledger, which keeps no index by level (migration
    /// 0030: every checkout would write ten entries into one).
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

async fn adjust_in(
    tx: &mut dyn Tx,
    sku: String,
    location_id: String,
    delta: i64,
    reason: String,
    now: i64,
) -> Result<()> {
    if tx
        .fetch(
            "SELECT id FROM stock_locations WHERE id = $1",
            &args![&location_id],
        )
        .await?
        .is_empty()
    {
        return Err(InventoryError::UnknownLocation(location_id));
    }
    if tx
        .fetch("SELECT sku FROM variants WHERE sku = $1", &args![&sku])
        .await?
        .is_empty()
    {
        return Err(InventoryError::UnknownSku(sku));
    }
    tx.execute(
        "INSERT INTO inventory_levels (sku, location_id) VALUES ($1, $2) \
         ON CONFLICT (sku, location_id) DO NOTHING",
        &args![&sku, &location_id],
    )
    .await?;
    lock_levels(tx, &[(sku.clone(), location_id.clone())]).await?;
    // What lapsed no longer counts: release it, so `held` is what really holds stock.
    release_stale_in(tx, &[(sku.clone(), location_id.clone())], None, now).await?;
    let available = tx
        .fetch_one(
            "SELECT on_hand - held AS available FROM inventory_levels \
             WHERE sku = $1 AND location_id = $2",
            &args![&sku, &location_id],
        )
        .await?
        .get::<i64>("available")?;
    if available + delta < 0 {
        return Err(InventoryError::WouldGoNegative {
            sku,
            location: location_id,
            requested: -delta,
            available,
        });
    }
    tx.execute(
        "UPDATE inventory_levels SET on_hand = on_hand + $3 WHERE sku = $1 AND location_id = $2",
        &args![&sku, &location_id, delta],
    )
    .await?;
    let moved = Allocation {
        sku,
        location_id,
        quantity: delta,
    };
    record_movements(tx, &[moved], &reason, 1, None, now).await
}

/// What `demand` asks for per SKU (lines of one SKU added up); every quantity must be
/// positive. What [`reserve_in`] takes.
pub fn demand_of(demand: &[(String, i64)]) -> Result<BTreeMap<String, i64>> {
    let mut wanted: BTreeMap<String, i64> = BTreeMap::new();
    for (sku, quantity) in demand {
        if *quantity <= 0 {
            return Err(InventoryError::InvalidQuantity(*quantity));
        }
        let total = wanted.entry(sku.clone()).or_default();
        *total = total.saturating_add(*quantity);
    }
    Ok(wanted)
}

/// Reserves `wanted` (from [`demand_of`]) under `reference` until `expires_at`, inside `tx`
/// — see [`Inventory::reserve`], and run it as that does, in [`Db::write_unsynced`].
pub async fn reserve_in(
    tx: &mut dyn Tx,
    reference: String,
    wanted: BTreeMap<String, i64>,
    now: i64,
    expires_at: i64,
) -> Result<Vec<Allocation>> {
    let postgres = tx.backend() == Backend::Postgres;
    // Before taking the locks (so it costs the other checkouts no wait): the reference's own
    // earlier reservations, which a retry replaces — their levels are locked too — and
    // whether any wanted SKU holds reservations that lapsed and must be released first. A
    // snapshot taken before the locks can only over-report either: a reservation leaves
    // `active` once, and lapses long after it was made.
    //
    // Lapsed ones are looked up level by level, one correlated look-up per level of the
    // wanted SKUs: the index of active reservations is (sku, location, expiry), and only with
    // both bound does the expiry bound the scan. Any other shape leaves PostgreSQL's planner
    // a choice, and with the statistics of a young store (tables planned while nearly empty)
    // it chose to walk the whole index by expiry — which still holds an entry for every
    // reservation committed since the last vacuum: thousands per checkout on a busy store.
    // A sub-select with a LIMIT cannot be turned into a join, so the plan is the same on
    // both databases at any size.
    let mut values = args![&reference, now].to_vec();
    values.extend(wanted.keys().map(Value::from));
    static STALE: SqlByCount = SqlByCount::new();
    let stale = tx
        .fetch(
            &STALE.get(wanted.len(), |count| {
                format!(
                    "SELECT sku FROM reservations WHERE reference = $1 AND state = 'active' \
                     UNION ALL \
                     SELECT l.sku FROM inventory_levels l WHERE l.sku IN ({}) \
                     AND (SELECT r.expires_at FROM reservations r WHERE r.sku = l.sku \
                          AND r.location_id = l.location_id AND r.state = 'active' \
                          AND r.expires_at <= $2 LIMIT 1) IS NOT NULL",
                    params(3, count)
                )
            }),
            &values,
        )
        .await?;
    let mut skus: Vec<String> = wanted.keys().cloned().collect();
    for row in &stale {
        skus.push(row.get("sku")?);
    }
    skus.sort();
    skus.dedup();
    // Lock every level involved in (sku, location) order, reading what they hold as it is
    // now (on PostgreSQL a row locked after waiting is read as its newest version; SQLite's
    // write transaction holds the whole database).
    static LEVELS: [SqlByCount; 2] = [SqlByCount::new(), SqlByCount::new()];
    let values: Vec<Value> = skus.iter().map(Value::from).collect();
    let rows = tx
        .fetch(
            &LEVELS[usize::from(postgres)].get(skus.len(), |count| {
                let lock = if postgres { " FOR UPDATE OF l" } else { "" };
                format!(
                    "SELECT l.sku, l.location_id, s.priority, l.on_hand, l.held \
                     FROM inventory_levels l JOIN stock_locations s ON s.id = l.location_id \
                     WHERE l.sku IN ({}) ORDER BY l.sku, l.location_id{lock}",
                    params(1, count)
                )
            }),
            &values,
        )
        .await?;
    // (sku, priority, location) → on_hand − held.
    let mut levels: BTreeMap<(String, i32, String), i64> = BTreeMap::new();
    for row in &rows {
        let held: i64 = row.get("held")?;
        levels.insert(
            (
                row.get("sku")?,
                row.get("priority")?,
                row.get("location_id")?,
            ),
            row.get::<i64>("on_hand")? - held,
        );
    }
    if let Some(sku) = wanted
        .keys()
        .find(|sku| !levels.keys().any(|(s, _, _)| s == *sku))
    {
        return Err(InventoryError::UnknownSku(sku.clone()));
    }
    if !stale.is_empty() {
        let locked: Vec<(String, String)> = levels
            .keys()
            .map(|(sku, _, location)| (sku.clone(), location.clone()))
            .collect();
        for freed in release_stale_in(tx, &locked, Some(&reference), now).await? {
            if let Some(available) = levels
                .iter_mut()
                .find(|((s, _, l), _)| *s == freed.sku && *l == freed.location_id)
                .map(|(_, a)| a)
            {
                *available += freed.quantity;
            }
        }
    }

    let allocations = allocate(&wanted, &levels)?;
    static RESERVE: [SqlByCount; 2] = [SqlByCount::new(), SqlByCount::new()];
    for chunk in allocations.chunks(ROWS_PER_STATEMENT) {
        let sql = RESERVE[usize::from(postgres)].get(chunk.len(), |count| {
            let insert = format!(
                "INSERT INTO reservations (id, reference, sku, location_id, quantity, expires_at, created_at, state) \
                 VALUES {}",
                param_rows(1, count, 7).replace(')', ", 'active')")
            );
            // PostgreSQL: the movements and the levels in the same statement (the levels are
            // locked until the commit; each round trip here is one every other checkout of
            // these SKUs waits for); SQLite: one statement each.
            if postgres {
                format!(
                    "WITH ins AS ({insert} RETURNING sku, location_id, quantity, reference, created_at), \
                     mv AS (INSERT INTO inventory_movements (sku, location_id, kind, quantity, reference, at) \
                            SELECT sku, location_id, 'reserve', quantity, reference, created_at FROM ins), \
                     s AS (SELECT sku, location_id, SUM(quantity) AS quantity FROM ins GROUP BY sku, location_id) \
                     UPDATE inventory_levels l SET held = l.held + s.quantity FROM s \
                     WHERE l.sku = s.sku AND l.location_id = s.location_id"
                )
            } else {
                insert
            }
        });
        let mut values = Vec::with_capacity(chunk.len() * 7);
        for a in chunk {
            values.extend(args![
                uuid::Uuid::now_v7().to_string(),
                &reference,
                &a.sku,
                &a.location_id,
                a.quantity,
                expires_at,
                now,
            ]);
        }
        tx.execute(&sql, &values).await?;
    }
    if !postgres {
        record_movements(tx, &allocations, "reserve", 1, Some(&reference), now).await?;
        hold(tx, &allocations).await?;
    }
    Ok(allocations)
}

/// Allocates each wanted SKU across its locations in priority order, from `levels`
/// ((sku, priority, location) → on hand − held); an error if a SKU has too little.
fn allocate(
    wanted: &BTreeMap<String, i64>,
    levels: &BTreeMap<(String, i32, String), i64>,
) -> Result<Vec<Allocation>> {
    let mut allocations = Vec::new();
    for (sku, &requested) in wanted {
        let mut remaining = requested;
        let mut total_available = 0;
        for ((_, _, location_id), &available) in levels.iter().filter(|((s, _, _), _)| s == sku) {
            total_available += available.max(0);
            if remaining > 0 && available > 0 {
                let take = available.min(remaining);
                remaining -= take;
                allocations.push(Allocation {
                    sku: sku.clone(),
                    location_id: location_id.clone(),
                    quantity: take,
                });
            }
        }
        if remaining > 0 {
            return Err(InventoryError::Insufficient {
                sku: sku.clone(),
                requested,
                available: total_available,
            });
        }
    }
    Ok(allocations)
}

/// What [`reserve_at_once`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AtOnce {
    /// Claimed and reserved: the allocations.
    Reserved(Vec<Allocation>),
    /// The claim found its key held by another request; nothing was written.
    KeyTaken,
    /// Nothing was written, and the reservation needs [`reserve_in`] in a transaction: the
    /// database is SQLite; or the reference has reservations to replace, or a wanted SKU has
    /// lapsed ones to release; or the stock as read is not enough (the locked read decides,
    /// and says how much there is); or the stock changed between the read and the write.
    Transaction,
}

/// SQLSTATE with which [`reserve_at_once`]'s statement undoes itself when a level no longer
/// has what it allocated there (by `cartridge_refuse`, migration 0027).
const STOCK_MOVED: &str = "CR001";

/// PostgreSQL: [`reserve_in`]'s work, with the caller's claim, in two statements outside a
/// transaction on an [`Db::unsynced`] connection, when nothing needs releasing first.
///
/// The reserving transaction held the level rows' locks across three round trips (the
/// locking read, the insert, the commit) and the host's turns between them; in a flash sale
/// every checkout queues for the same rows, so that hold was what bounded checkouts per second.
/// Here the levels are read without locks and allocated by priority as [`reserve_in`] does;
/// then one statement runs `claim` if there is one (CTEs: `k`, with a row if the claim
/// succeeded, and any others, over parameters `$1…`; see
/// [`crate::recovery::Attempt::claim_parts`]), locks the allocated levels in (sku, location)
/// order, raises `held` only where it still covers the allocation (a guarded write), inserts
/// the reservations and their movements — and undoes all of it, by raising [`STOCK_MOVED`],
/// unless every allocation was covered. The locks are held for that one statement.
///
/// Allocation follows priority as the levels were read: stock that arrives at a preferred
/// location between the read and the write (milliseconds) is not used by this checkout. No
/// level is ever held beyond what it has.
pub(crate) async fn reserve_at_once(
    db: &Db,
    claim: Option<(&'static str, Vec<Value>)>,
    reference: String,
    wanted: BTreeMap<String, i64>,
    now: i64,
    expires_at: i64,
) -> Result<AtOnce> {
    let outcome = db
        .unsynced(move |tx| {
            Box::pin(async move {
                // The levels, and anything that must be released first: lapsed reservations
                // of a level (one bounded look-up each, as in `reserve_in`) and the
                // reference's own.
                let mut values = args![&reference, now].to_vec();
                values.extend(wanted.keys().map(Value::from));
                let rows = tx
                    .fetch(
                        &format!(
                            "SELECT l.sku, l.location_id, s.priority, l.on_hand - l.held AS available, \
                               CAST(CASE WHEN (SELECT r.expires_at FROM reservations r \
                                 WHERE r.sku = l.sku AND r.location_id = l.location_id \
                                 AND r.state = 'active' AND r.expires_at <= $2 LIMIT 1) IS NULL \
                               THEN 0 ELSE 1 END AS BIGINT) AS release \
                             FROM inventory_levels l JOIN stock_locations s ON s.id = l.location_id \
                             WHERE l.sku IN ({}) \
                             UNION ALL \
                             SELECT sku, location_id, 0, 0, 1 FROM reservations \
                             WHERE reference = $1 AND state = 'active'",
                            params(3, wanted.len())
                        ),
                        &values,
                    )
                    .await?;
                let mut levels: BTreeMap<(String, i32, String), i64> = BTreeMap::new();
                for row in &rows {
                    if row.get::<i64>("release")? != 0 {
                        return Ok(AtOnce::Transaction);
                    }
                    levels.insert(
                        (
                            row.get("sku")?,
                            row.get("priority")?,
                            row.get("location_id")?,
                        ),
                        row.get("available")?,
                    );
                }
                let Ok(allocations) = allocate(&wanted, &levels) else {
                    return Ok(AtOnce::Transaction);
                };
                if allocations.is_empty() || allocations.len() > ROWS_PER_STATEMENT {
                    return Ok(AtOnce::Transaction);
                }
                reserve_allocated(tx, claim, &reference, &allocations, now, expires_at).await
            })
        })
        .await;
    outcome.unwrap_or(Ok(AtOnce::Transaction))
}

/// The statement of [`reserve_at_once`], for `allocations` made from levels read without
/// locks: [`AtOnce::Transaction`], with nothing written, if any level no longer covers its
/// allocation. `claim` as for [`reserve_at_once`]; without one, nothing is claimed.
async fn reserve_allocated(
    tx: &mut dyn Tx,
    claim: Option<(&'static str, Vec<Value>)>,
    reference: &str,
    allocations: &[Allocation],
    now: i64,
    expires_at: i64,
) -> Result<AtOnce> {
    let (claim, mut values) = claim.unwrap_or(("k AS (SELECT 1)", Vec::new()));
    let first = values.len() + 1;
    let (reference_at, now_at, expires_at_at, count_at) = (first, first + 1, first + 2, first + 3);
    values.extend(args![
        reference,
        now,
        expires_at,
        i64::try_from(allocations.len()).unwrap_or(i64::MAX)
    ]);
    let rows_from = values.len() + 1;
    for a in allocations {
        values.extend(args![
            uuid::Uuid::now_v7().to_string(),
            &a.sku,
            &a.location_id,
            a.quantity,
        ]);
    }
    let sql = format!(
        "WITH {claim}, \
         v (id, sku, location_id, quantity) AS (VALUES {rows}), \
         lk AS (SELECT l.sku FROM inventory_levels l \
                WHERE (l.sku, l.location_id) IN (SELECT sku, location_id FROM v) \
                AND EXISTS (SELECT 1 FROM k) \
                ORDER BY l.sku, l.location_id FOR UPDATE OF l), \
         up AS (UPDATE inventory_levels l SET held = l.held + v.quantity FROM v \
                WHERE (SELECT COUNT(*) FROM lk) > 0 \
                AND l.sku = v.sku AND l.location_id = v.location_id \
                AND l.on_hand - l.held >= v.quantity RETURNING l.sku), \
         ins AS (INSERT INTO reservations \
                   (id, reference, sku, location_id, quantity, expires_at, created_at, state) \
                 SELECT v.id, ${reference_at}, v.sku, v.location_id, v.quantity, \
                   ${expires_at_at}, ${now_at}, 'active' FROM v WHERE EXISTS (SELECT 1 FROM k) \
                 RETURNING sku, location_id, quantity), \
         mv AS (INSERT INTO inventory_movements (sku, location_id, kind, quantity, reference, at) \
                SELECT sku, location_id, 'reserve', quantity, ${reference_at}, ${now_at} FROM ins) \
         SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM k) THEN CAST(0 AS BIGINT) \
           WHEN (SELECT COUNT(*) FROM up) = ${count_at} THEN CAST(1 AS BIGINT) \
           ELSE cartridge_refuse('{STOCK_MOVED}', 'a stock level changed since it was read') END \
           AS claimed",
        rows = typed_rows(rows_from, allocations.len()),
    );
    let claimed = match tx.fetch(&sql, &values).await {
        Ok(rows) => rows
            .first()
            .map_or(Ok(0), |row| row.get::<i64>("claimed"))?,
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(STOCK_MOVED) => {
            return Ok(AtOnce::Transaction);
        }
        Err(e) => return Err(e.into()),
    };
    Ok(if claimed == 1 {
        AtOnce::Reserved(allocations.to_vec())
    } else {
        AtOnce::KeyTaken
    })
}

/// `VALUES` rows of (id, sku, location, quantity) from parameter `$from`, the quantity typed
/// (a `VALUES` list in a CTE takes its column types from its first row).
fn typed_rows(from: usize, rows: usize) -> String {
    let mut out = String::with_capacity(rows * 36);
    for row in 0..rows {
        let p = from + row * 4;
        if row > 0 {
            out.push_str(", ");
        }
        out.push_str(&format!(
            "(${p}, ${}, ${}, CAST(${} AS BIGINT))",
            p + 1,
            p + 2,
            p + 3
        ));
    }
    out
}

/// Raises `held` by each allocation (their level rows locked by the caller), in one statement
/// per [`ROWS_PER_STATEMENT`] levels. Each level must appear once, as in a reservation's
/// allocations: an `UPDATE … FROM` applies one matching row per level (a release's lapsed
/// reservations may name a level twice, so [`unhold`] goes row by row).
///
/// The levels are named by the allocations, not found again through the reservations: the
/// reservations of a level are indexed by level and expiry, so a sum of one reference's
/// reservations per level walked every active reservation of the level — all the checkouts
/// in flight for a popular SKU — and was the costliest statement of a checkout on SQLite.
async fn hold(tx: &mut dyn Tx, allocations: &[Allocation]) -> Result<()> {
    static HOLD: SqlByCount = SqlByCount::new();
    for chunk in allocations.chunks(ROWS_PER_STATEMENT) {
        let sql = HOLD.get(chunk.len(), |count| {
            format!(
                "WITH v (sku, location_id, quantity) AS (VALUES {}) \
                 UPDATE inventory_levels SET held = held + v.quantity FROM v \
                 WHERE inventory_levels.sku = v.sku AND inventory_levels.location_id = v.location_id",
                param_rows(1, count, 3)
            )
        });
        let mut values = Vec::with_capacity(chunk.len() * 3);
        for a in chunk {
            values.extend(args![&a.sku, &a.location_id, a.quantity]);
        }
        tx.execute(&sql, &values).await?;
    }
    Ok(())
}

/// Releases, on `levels` (sku, location — their rows locked by the caller), the active
/// reservations that lapsed at `now` — recorded as `expire` movements — and those of `own` (a
/// reference reserving again: `release`), and lowers `held` by what they held. Returns what
/// it freed. Each reservation is changed by one guarded statement, so one that was committed
/// or released meanwhile is left alone.
async fn release_stale_in(
    tx: &mut dyn Tx,
    levels: &[(String, String)],
    own: Option<&str>,
    now: i64,
) -> Result<Vec<Allocation>> {
    let mut rows = Vec::new();
    for chunk in levels.chunks(ROWS_PER_STATEMENT) {
        let mut values = args![now, own].to_vec();
        for (sku, location) in chunk {
            values.extend(args![sku, location]);
        }
        rows.extend(
            tx.fetch(
                &format!(
                    "UPDATE reservations SET state = 'released' \
                     WHERE state = 'active' AND (expires_at <= $1 OR reference = $2) \
                     AND (sku, location_id) IN ({}) \
                     RETURNING sku, location_id, quantity, reference, expires_at",
                    param_rows(3, chunk.len(), 2)
                ),
                &values,
            )
            .await?,
        );
    }
    let mut freed = Vec::with_capacity(rows.len());
    for row in &rows {
        let freed_one = Allocation {
            sku: row.get("sku")?,
            location_id: row.get("location_id")?,
            quantity: row.get("quantity")?,
        };
        let reference: String = row.get("reference")?;
        let kind = if own == Some(reference.as_str()) && row.get::<i64>("expires_at")? > now {
            "release"
        } else {
            "expire"
        };
        tx.execute(
            "INSERT INTO inventory_movements (sku, location_id, kind, quantity, reference, at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            &args![
                &freed_one.sku,
                &freed_one.location_id,
                kind,
                -freed_one.quantity,
                reference,
                now
            ],
        )
        .await?;
        freed.push(freed_one);
    }
    unhold(tx, &freed).await?;
    Ok(freed)
}

/// Lowers `held` by each allocation (their level rows locked by the caller).
async fn unhold(tx: &mut dyn Tx, allocations: &[Allocation]) -> Result<()> {
    for a in allocations {
        tx.execute(
            "UPDATE inventory_levels SET held = held - $3 WHERE sku = $1 AND location_id = $2",
            &args![&a.sku, &a.location_id, a.quantity],
        )
        .await?;
    }
    Ok(())
}

/// [`Inventory::commit`] inside the caller's write transaction, so that an order and its stock
/// are recorded together or not at all: `expected` is how many reservations the reserve made
/// (one per allocation). The level rows are not touched — committed stock is still `held` —
/// so no other checkout waits for this one.
pub async fn commit_in(
    tx: &mut dyn Tx,
    reference: &str,
    expected: usize,
    now: i64,
) -> Result<Vec<Allocation>> {
    let rows = if tx.backend() == Backend::Postgres {
        tx.fetch(
            &format!(
                "WITH {} SELECT sku, location_id, quantity, expires_at FROM r",
                commit_parts_on_postgres(2)
            ),
            &args![reference, now],
        )
        .await?
    } else {
        tx.fetch(COMMIT_RESERVATIONS, &args![reference]).await?
    };
    committed_in(tx, reference, expected, now, &rows).await
}

/// Moves the active reservations of reference `$1` to committed, each by this one statement
/// on its own row: one that a checkout released as lapsed meanwhile is not found here, and
/// one found here cannot be released. Returns what [`committed_in`] checks.
pub(crate) const COMMIT_RESERVATIONS: &str = "UPDATE reservations SET state = 'committed' \
     WHERE reference = $1 AND state = 'active' \
     RETURNING sku, location_id, quantity, expires_at";

/// PostgreSQL: [`COMMIT_RESERVATIONS`] and the `commit` movements of what it committed, as
/// parts of a `WITH` (`r`, the committed reservations, and `mv`), for a statement that can
/// carry more: `$1` is the reference, `$now_param` the time of the movements.
pub(crate) fn commit_parts_on_postgres(now_param: usize) -> String {
    format!(
        "r AS ({COMMIT_RESERVATIONS}), \
         mv AS (INSERT INTO inventory_movements (sku, location_id, kind, quantity, reference, at) \
                SELECT sku, location_id, 'commit', quantity, $1, ${now_param} FROM r)"
    )
}

/// SQLSTATE of a statement that failed [`commit_check_on_postgres`]: see
/// [`why_not_committed`].
pub(crate) const NOT_COMMITTED: &str = "CR002";

/// PostgreSQL: an expression over the `r` of [`commit_parts_on_postgres`] that fails its
/// whole statement with [`NOT_COMMITTED`] unless exactly `$expected_param` reservations were
/// committed and none of them had expired at `$now_param` — [`committed_in`]'s check, for a
/// statement that runs outside a transaction.
pub(crate) fn commit_check_on_postgres(now_param: usize, expected_param: usize) -> String {
    format!(
        "CASE WHEN (SELECT COUNT(*) FROM r) = ${expected_param} \
           AND NOT EXISTS (SELECT 1 FROM r WHERE expires_at <= ${now_param}) \
         THEN CAST(1 AS BIGINT) \
         ELSE cartridge_refuse('{NOT_COMMITTED}', 'the reservations could not be committed') END"
    )
}

/// Why the reservations of `reference` could not be committed at `commit_at`, once the
/// statement that tried has been undone: [`InventoryError::Expired`] if some had expired, or
/// were released as lapsed by another checkout (a checkout releases its own only when it
/// gives up, and then never commits); otherwise there was nothing (or not all) to commit.
pub(crate) async fn why_not_committed(
    tx: &mut dyn Tx,
    reference: &str,
    commit_at: i64,
) -> InventoryError {
    let lapsed = tx
        .fetch(
            "SELECT 1 FROM reservations WHERE reference = $1 \
             AND (state = 'released' OR (state = 'active' AND expires_at <= $2)) LIMIT 1",
            &args![reference, commit_at],
        )
        .await;
    match lapsed {
        Err(e) => e.into(),
        Ok(rows) if !rows.is_empty() => InventoryError::Expired(reference.to_owned()),
        Ok(_) => InventoryError::NothingTo {
            action: "commit",
            reference: reference.to_owned(),
        },
    }
}

/// The rest of [`commit_in`], on the `rows` its [`COMMIT_RESERVATIONS`] returned (on
/// PostgreSQL, with [`commit_parts_on_postgres`], whose movements are then written): an
/// error unless exactly the `expected` reservations were committed, none of them expired at
/// `now`. The caller must roll the transaction back on an error.
pub(crate) async fn committed_in(
    tx: &mut dyn Tx,
    reference: &str,
    expected: usize,
    now: i64,
    rows: &[crate::db::Row],
) -> Result<Vec<Allocation>> {
    // In (sku, location) order, as every other read of a reference's reservations.
    let mut held = allocations_of(rows)?;
    held.sort_by(|a, b| (&a.0.sku, &a.0.location_id).cmp(&(&b.0.sku, &b.0.location_id)));
    // The caller rolls the transaction back on any of these errors, so nothing is committed.
    if held.iter().any(|(_, expires_at)| *expires_at <= now) {
        return Err(InventoryError::Expired(reference.to_owned()));
    }
    if held.len() != expected {
        // Fewer than were made: if some of them were released, another checkout took them as
        // lapsed (a checkout releases its own only when it gives up, and then never commits).
        let lapsed = !tx
            .fetch(
                "SELECT 1 FROM reservations WHERE reference = $1 AND state = 'released'",
                &args![reference],
            )
            .await?
            .is_empty();
        return Err(if lapsed {
            InventoryError::Expired(reference.to_owned())
        } else {
            InventoryError::NothingTo {
                action: "commit",
                reference: reference.to_owned(),
            }
        });
    }
    let allocations: Vec<Allocation> = held.into_iter().map(|(a, _)| a).collect();
    if tx.backend() == Backend::Sqlite {
        record_movements(tx, &allocations, "commit", 1, Some(reference), now).await?;
    }
    Ok(allocations)
}

pub(crate) async fn release_in(tx: &mut dyn Tx, reference: String, now: i64) -> Result<i64> {
    // Lock the levels first (in order); then release what is still active — a checkout may
    // have released some of it as lapsed meanwhile.
    if reservations_locking_levels_in(tx, &reference, "active")
        .await?
        .is_empty()
    {
        return Ok(0);
    }
    let rows = tx
        .fetch(
            "UPDATE reservations SET state = 'released' WHERE reference = $1 AND state = 'active' \
             RETURNING sku, location_id, quantity, expires_at",
            &args![&reference],
        )
        .await?;
    let released: Vec<Allocation> = allocations_of(&rows)?.into_iter().map(|(a, _)| a).collect();
    unhold(tx, &released).await?;
    record_movements(tx, &released, "release", -1, Some(&reference), now).await?;
    Ok(released.iter().map(|a| a.quantity).sum())
}

async fn ship_items_in(
    tx: &mut dyn Tx,
    reference: String,
    items: Vec<(String, i64)>,
    now: i64,
) -> Result<Vec<Allocation>> {
    let rows = tx
        .fetch(
            "SELECT r.id, r.sku, r.location_id, r.quantity FROM reservations r \
             JOIN stock_locations s ON s.id = r.location_id \
             WHERE r.reference = $1 AND r.state = 'committed' ORDER BY r.sku, s.priority, r.location_id",
            &args![&reference],
        )
        .await?;
    let mut committed = Vec::with_capacity(rows.len());
    for r in &rows {
        committed.push((
            r.get::<String>("id")?,
            r.get::<String>("sku")?,
            r.get::<String>("location_id")?,
            r.get::<i64>("quantity")?,
        ));
    }
    let mut shipped = Vec::new();
    for (sku, quantity) in &items {
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
    lock_levels(tx, &levels).await?;
    let mut allocations = Vec::with_capacity(shipped.len());
    for (id, sku, location, take, whole) in shipped {
        if whole {
            tx.execute(
                "UPDATE reservations SET state = 'shipped' WHERE reference = $1 AND id = $2",
                &args![&reference, &id],
            )
            .await?;
        } else {
            tx.execute(
                "UPDATE reservations SET quantity = quantity - $3 WHERE reference = $1 AND id = $2",
                &args![&reference, &id, take],
            )
            .await?;
            tx.execute(
                "INSERT INTO reservations (id, reference, sku, location_id, quantity, state, expires_at, created_at) \
                 VALUES ($1, $2, $3, $4, $5, 'shipped', $6, $6)",
                &args![
                    uuid::Uuid::now_v7().to_string(),
                    &reference,
                    &sku,
                    &location,
                    take,
                    now
                ],
            )
            .await?;
        }
        tx.execute(
            "UPDATE inventory_levels SET held = held - $3, on_hand = on_hand - $3 \
             WHERE sku = $1 AND location_id = $2",
            &args![&sku, &location, take],
        )
        .await?;
        allocations.push(Allocation {
            sku,
            location_id: location,
            quantity: take,
        });
    }
    record_movements(tx, &allocations, "ship", -1, Some(&reference), now).await?;
    Ok(allocations)
}

async fn settle_in(
    tx: &mut dyn Tx,
    reference: String,
    action: &'static str,
    now: i64,
) -> Result<Vec<Allocation>> {
    let committed: Vec<Allocation> = reservations_in(tx, &reference, "committed")
        .await?
        .into_iter()
        .map(|(a, _)| a)
        .collect();
    if committed.is_empty() {
        return Err(InventoryError::NothingTo { action, reference });
    }
    lock_levels(tx, &levels_of(&committed)).await?;
    let (sql, state) = match action {
        "ship" => (
            "UPDATE inventory_levels SET held = held - $3, on_hand = on_hand - $3 \
             WHERE sku = $1 AND location_id = $2",
            "shipped",
        ),
        _ => (
            "UPDATE inventory_levels SET held = held - $3 WHERE sku = $1 AND location_id = $2",
            "released",
        ),
    };
    for a in &committed {
        tx.execute(sql, &args![&a.sku, &a.location_id, a.quantity])
            .await?;
    }
    record_movements(tx, &committed, action, -1, Some(&reference), now).await?;
    tx.execute(
        &format!(
            "UPDATE reservations SET state = '{state}' WHERE reference = $1 AND state = 'committed'"
        ),
        &args![&reference],
    )
    .await?;
    Ok(committed)
}

/// Takes the write locks of `levels` (SKU, location), in (SKU, location) order whatever order
/// they come in, so two writers never wait for each other in a cycle. On PostgreSQL these are
/// row locks, taken by one ordered `SELECT … FOR UPDATE` (rows are locked in the order the
/// sort returns them); on SQLite the transaction already holds the database's write lock
/// ([`Db::write`] begins `IMMEDIATE`), so there is nothing more to take.
async fn lock_levels(tx: &mut dyn Tx, levels: &[(String, String)]) -> Result<()> {
    if tx.backend() == Backend::Sqlite || levels.is_empty() {
        return Ok(());
    }
    let mut sorted: Vec<&(String, String)> = levels.iter().collect();
    sorted.sort();
    sorted.dedup();
    for chunk in sorted.chunks(ROWS_PER_STATEMENT) {
        let keys: Vec<Value> = chunk
            .iter()
            .flat_map(|(sku, location)| [Value::from(sku), Value::from(location)])
            .collect();
        tx.fetch(
            &format!(
                "SELECT sku FROM inventory_levels WHERE (sku, location_id) IN ({}) \
                 ORDER BY sku, location_id FOR UPDATE",
                param_rows(1, chunk.len(), 2)
            ),
            &keys,
        )
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

async fn reservations_in(
    tx: &mut dyn Tx,
    reference: &str,
    state: &str,
) -> Result<Vec<(Allocation, i64)>> {
    let rows = tx
        .fetch(
            "SELECT sku, location_id, quantity, expires_at FROM reservations \
             WHERE reference = $1 AND state = $2 ORDER BY sku, location_id",
            &args![reference, state],
        )
        .await?;
    allocations_of(&rows)
}

/// [`reservations_in`], also locking the levels they draw on, in (sku, location) order, as
/// [`lock_levels`] would — in the same statement (on SQLite the transaction holds the whole
/// database, so it is the plain read).
async fn reservations_locking_levels_in(
    tx: &mut dyn Tx,
    reference: &str,
    state: &str,
) -> Result<Vec<(Allocation, i64)>> {
    if tx.backend() == Backend::Sqlite {
        return reservations_in(tx, reference, state).await;
    }
    let rows = tx
        .fetch(
            "SELECT r.sku, r.location_id, r.quantity, r.expires_at FROM reservations r \
             JOIN inventory_levels l ON l.sku = r.sku AND l.location_id = r.location_id \
             WHERE r.reference = $1 AND r.state = $2 ORDER BY r.sku, r.location_id \
             FOR UPDATE OF l",
            &args![reference, state],
        )
        .await?;
    allocations_of(&rows)
}

/// (allocation, expiry) from rows with `sku`, `location_id`, `quantity` and `expires_at`.
fn allocations_of(rows: &[crate::db::Row]) -> Result<Vec<(Allocation, i64)>> {
    rows.iter()
        .map(|r| {
            Ok((
                Allocation {
                    sku: r.get("sku")?,
                    location_id: r.get("location_id")?,
                    quantity: r.get("quantity")?,
                },
                r.get("expires_at")?,
            ))
        })
        .collect()
}

/// Records one movement per allocation, `sign` × its quantity, in as few statements as the
/// parameter limits allow.
async fn record_movements(
    tx: &mut dyn Tx,
    allocations: &[Allocation],
    kind: &str,
    sign: i64,
    reference: Option<&str>,
    now: i64,
) -> Result<()> {
    static MOVEMENTS: SqlByCount = SqlByCount::new();
    for chunk in allocations.chunks(ROWS_PER_STATEMENT) {
        let sql = MOVEMENTS.get(chunk.len(), |count| {
            format!(
                "INSERT INTO inventory_movements (sku, location_id, kind, quantity, reference, at) VALUES {}",
                param_rows(1, count, 6)
            )
        });
        let mut values = Vec::with_capacity(chunk.len() * 6);
        for a in chunk {
            values.extend(args![
                &a.sku,
                &a.location_id,
                kind,
                sign * a.quantity,
                reference,
                now
            ]);
        }
        tx.execute(&sql, &values).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_000_000_000;

    /// A PostgreSQL store with one SKU, one unit of it in `eu` and none in `us`.
    async fn one_unit(url: &str) -> (Db, Inventory) {
        let db = Db::connect(url).await.expect("connect");
        db.migrate().await.expect("migrate");
        for sql in [
            "INSERT INTO products (id, title, created_at) VALUES ('tee', 'Tee', 0)",
            "INSERT INTO variants (sku, product_id, title) VALUES ('TEE-L', 'tee', 'L')",
        ] {
            sqlx::query(sql).execute(db.pool()).await.expect("seed");
        }
        let inventory = Inventory::new(db.clone());
        inventory
            .upsert_location("eu", "Berlin", 1)
            .await
            .expect("eu");
        inventory
            .upsert_location("us", "Reno", 2)
            .await
            .expect("us");
        inventory
            .adjust("TEE-L", "eu", 1, "receive", NOW)
            .await
            .expect("receive");
        inventory
            .adjust("TEE-L", "us", 0, "receive", NOW)
            .await
            .expect("level");
        (db, inventory)
    }

    /// The held units of each level, the reservations and the movements.
    async fn state(db: &Db) -> (Vec<(String, i64)>, i64, i64) {
        let held = sqlx::query(
            "SELECT location_id, held FROM inventory_levels WHERE sku = 'TEE-L' ORDER BY location_id",
        )
        .fetch_all(db.pool())
        .await
        .expect("levels")
        .iter()
        .map(|r| (r.get("location_id"), r.get("held")))
        .collect();
        let count = |sql: &'static str| async move {
            sqlx::query(sql)
                .fetch_one(db.pool())
                .await
                .expect("count")
                .get::<i64, _>(0)
        };
        (
            held,
            count("SELECT COUNT(*) FROM reservations").await,
            count("SELECT COUNT(*) FROM inventory_movements").await,
        )
    }

    fn take(location: &str, quantity: i64) -> Allocation {
        Allocation {
            sku: "TEE-L".into(),
            location_id: location.into(),
            quantity,
        }
    }

    /// [`reserve_allocated`] of `allocations` for `reference`, on an unsynced connection.
    async fn at_once(
        db: &Db,
        claim: Option<(&'static str, Vec<Value>)>,
        reference: &'static str,
        allocations: Vec<Allocation>,
    ) -> AtOnce {
        db.unsynced(move |tx| {
            Box::pin(async move {
                reserve_allocated(tx, claim, reference, &allocations, NOW, NOW + 60_000).await
            })
        })
        .await
        .expect("PostgreSQL")
        .expect("no error")
    }

    /// The statement that reserves without a transaction checks every level again under its
    /// lock: an allocation made from a read that is no longer true writes nothing at all (the
    /// levels it could cover included), and the caller is sent to the transaction.
    #[tokio::test]
    async fn a_reservation_at_once_from_a_stale_read_writes_nothing() {
        let mut ran = false;
        for t in cartridge_tests::test_databases().await {
            if t.backend != "postgres" {
                continue;
            }
            ran = true;
            let (db, _inventory) = one_unit(&t.url).await;
            let before = state(&db).await;
            assert_eq!(before, (vec![("eu".into(), 0), ("us".into(), 0)], 0, 2));
            for stale in [vec![take("eu", 2)], vec![take("eu", 1), take("us", 1)]] {
                let outcome = at_once(&db, None, "order-1", stale).await;
                assert_eq!(outcome, AtOnce::Transaction);
                assert_eq!(state(&db).await, before, "nothing written");
            }
            // A claim that did not succeed writes nothing either.
            let refused = ("k AS (SELECT 1 WHERE false)", Vec::new());
            let outcome = at_once(&db, Some(refused), "order-2", vec![take("eu", 1)]).await;
            assert_eq!(outcome, AtOnce::KeyTaken);
            assert_eq!(state(&db).await, before);
            // What the levels cover is reserved, held and recorded as a movement.
            let outcome = at_once(&db, None, "order-3", vec![take("eu", 1)]).await;
            assert_eq!(outcome, AtOnce::Reserved(vec![take("eu", 1)]));
            assert_eq!(
                state(&db).await,
                (vec![("eu".into(), 1), ("us".into(), 0)], 1, 3)
            );
            t.drop_database().await;
        }
        if !ran {
            eprintln!("note: PostgreSQL is not configured; the statement is PostgreSQL's alone");
        }
    }

    /// The order statement's own check of the reservations it commits, which lets it run
    /// outside a transaction: any shortfall or expiry undoes the whole statement, and the
    /// reason is found afterwards.
    #[tokio::test]
    async fn committing_at_once_checks_the_reservations_and_undoes_itself() {
        let mut ran = false;
        for t in cartridge_tests::test_databases().await {
            if t.backend != "postgres" {
                continue;
            }
            ran = true;
            let (db, inventory) = one_unit(&t.url).await;
            inventory
                .reserve("order-1", &[("TEE-L".into(), 1)], NOW, NOW + 60_000)
                .await
                .expect("reserve");
            let before = state(&db).await;
            let commit = |expected: i64, at: i64| {
                let db = db.clone();
                async move {
                    db.autocommit(move |tx| {
                        Box::pin(async move {
                            let sql = format!(
                                "WITH {} SELECT {} AS committed",
                                commit_parts_on_postgres(2),
                                commit_check_on_postgres(2, 3)
                            );
                            match tx.fetch(&sql, &args!["order-1", at, expected]).await {
                                Ok(_) => Ok(None),
                                Err(sqlx::Error::Database(e))
                                    if e.code().as_deref() == Some(NOT_COMMITTED) =>
                                {
                                    Ok(Some(why_not_committed(tx, "order-1", at).await))
                                }
                                Err(e) => Err(InventoryError::from(e)),
                            }
                        })
                    })
                    .await
                    .expect("no other error")
                }
            };
            // Expired: nothing committed, no movement.
            let expired = commit(1, NOW + 60_000).await;
            assert!(
                matches!(expired, Some(InventoryError::Expired(_))),
                "{expired:?}"
            );
            assert_eq!(state(&db).await, before);
            // More reservations expected than there are: nothing committed either.
            let short = commit(2, NOW + 1).await;
            assert!(
                matches!(short, Some(InventoryError::NothingTo { .. })),
                "{short:?}"
            );
            assert_eq!(state(&db).await, before);
            // In time and complete: committed, with its movement.
            assert!(commit(1, NOW + 1).await.is_none());
            let (held, reservations, movements) = state(&db).await;
            assert_eq!((held, reservations, movements), (before.0, 1, before.2 + 1));
            let states: Vec<String> = sqlx::query("SELECT state FROM reservations")
                .fetch_all(db.pool())
                .await
                .expect("states")
                .iter()
                .map(|r| r.get("state"))
                .collect();
            assert_eq!(states, ["committed"]);
            t.drop_database().await;
        }
        if !ran {
            eprintln!("note: PostgreSQL is not configured; the statement is PostgreSQL's alone");
        }
    }
}
