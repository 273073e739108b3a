//! Checkouts interrupted between holding the shopper's money and recording the order.
//!
//! A checkout reserves its stock and then asks the payment connector to authorise. If its
//! process stops before the order is recorded — or the gateway's answer is lost and the
//! shopper never retries — the gateway may hold an authorisation for an order that does not
//! exist. The stock comes back by itself (reservations lapse); the money would stay held until
//! the gateway gives up on it, days later.
//!
//! So every checkout leaves a row in `checkout_attempts` in the transaction that reserves, and
//! takes it away in the one that records the order, or once a failed checkout knows the
//! gateway holds nothing. [`recover`], run by the maintenance sweep, takes up rows older than
//! [`INTERRUPTED_AFTER_MS`]: it holds the checkout's idempotency key (a retry then waits
//! instead of racing it), asks the connector's `payment-lookup` what the gateway holds for the
//! authorize operation, voids (or refunds) it, releases the stock, and stores the final answer
//! `checkout_aborted` with the key, so that a retry is never answered by the gateway's replay
//! of the voided authorisation. No payment token is needed or kept: the lookup goes by the
//! operation id.
//!
//! Boundaries: a row whose order exists is only deleted; a request still holding the key
//! (within [`crate::idempotency::ABANDONED_AFTER_MS`]) is left alone; a gateway that cannot
//! answer now is asked again at the next sweep, for up to a day ([`GIVE_UP_AFTER_MS`]); a
//! connector without `payment-lookup`, or an attempt still unsettled after that day, gets an
//! error log naming the operation, the attempt is kept as `unresolved` for the operator
//! ([`list`], [`dismiss`]), and the key is released so that a retry by the shopper can still
//! complete the order.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};

use serde::Serialize;
use serde_json::json;

use crate::db::{Backend, Db, Tx, args};
use crate::idempotency;
use crate::inventory;
use crate::orders::undo_request;
use crate::plugin::bindings::payment;
use crate::plugin::bindings::types::Money;
use crate::plugin::{Call, Plugin};

/// A checkout attempt is taken up once it is this old: longer than any live checkout takes
/// between reserving and recording, and as long as a retry with its key is waited for.
pub const INTERRUPTED_AFTER_MS: i64 = idempotency::ABANDONED_AFTER_MS;
/// An attempt the sweeps could not settle in this long (as long as an idempotency key is
/// kept) is left to the operator.
pub const GIVE_UP_AFTER_MS: i64 = idempotency::KEEP_MS;
/// How long a sweep that took up an attempt keeps other hosts' sweeps away from it.
const LEASE_MS: i64 = 2 * 60 * 1000;
/// The most attempts one sweep takes up.
const PER_SWEEP: i64 = 100;

/// A checkout between reserving and recording, as `checkout_attempts` keeps it.
pub(crate) struct Attempt {
    pub(crate) order_id: String,
    /// The payment connector's plugin name.
    pub(crate) connector: String,
    pub(crate) amount: i64,
    pub(crate) currency: String,
}

/// Records an attempt, or records it again for a retry of the same attempt.
const BEGIN: &str = "INSERT INTO checkout_attempts \
       (order_id, connector, amount, currency, key_scope, key_name, key_hash, created_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
     ON CONFLICT (order_id) DO UPDATE SET connector = excluded.connector, \
       amount = excluded.amount, currency = excluded.currency, \
       key_scope = excluded.key_scope, key_name = excluded.key_name, \
       key_hash = excluded.key_hash, created_at = excluded.created_at, recovering_at = NULL, \
       unresolved_at = NULL";

/// [`BEGIN`] for each row of `k`.
static BEGIN_FROM_K: LazyLock<String> = LazyLock::new(|| {
    BEGIN.replacen(
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        "SELECT $1, $2, $3, $4, $5, $6, $7, $8 FROM k",
        1,
    )
});

/// PostgreSQL: [`idempotency::CLAIM`] and [`BEGIN`] as parts of a `WITH`: `k` has a row if
/// the claim inserted its row, and the attempt is recorded only then. The claim's arguments
/// follow the attempt's ($9 …).
static CLAIM_PARTS: LazyLock<String> = LazyLock::new(|| {
    let mut claim = idempotency::CLAIM.to_owned();
    for n in 1..=4 {
        claim = claim.replace(&format!("${n},"), &format!("${},", n + 8));
        claim = claim.replace(&format!("${n})"), &format!("${})", n + 8));
    }
    format!("k AS ({claim} RETURNING 1), a AS ({})", *BEGIN_FROM_K)
});

/// [`CLAIM_PARTS`] for a checkout without a key: `k` always has its row.
static UNKEYED_PARTS: LazyLock<String> =
    LazyLock::new(|| format!("k AS (SELECT 1), a AS ({})", *BEGIN_FROM_K));

/// PostgreSQL: [`CLAIM_PARTS`] as one statement.
static CLAIM_AND_BEGIN: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH {} SELECT CAST(COUNT(*) AS BIGINT) AS claimed FROM k",
        *CLAIM_PARTS
    )
});

impl Attempt {
    /// In the reserving transaction, before the stock: claims `key` for the checkout (unless
    /// there is none) and records the attempt. `false`, with nothing recorded, if another
    /// request holds the key. `now` is the authorize request's `now`. On PostgreSQL one
    /// statement, so the checkout pays no round trip for its attempt.
    pub(crate) async fn claim_and_begin_in(
        &self,
        tx: &mut dyn Tx,
        key: Option<&idempotency::Key>,
        now: i64,
    ) -> sqlx::Result<bool> {
        let mut values = self.begin_args(key, now);
        let Some(key) = key else {
            tx.execute(BEGIN, &values).await?;
            return Ok(true);
        };
        if tx.backend() == Backend::Postgres {
            values.extend(key.claim_args());
            let rows = tx.fetch(&CLAIM_AND_BEGIN, &values).await?;
            let claimed: i64 = rows.first().map_or(Ok(0), |row| row.get("claimed"))?;
            return Ok(claimed == 1);
        }
        if tx.execute(idempotency::CLAIM, &key.claim_args()).await? != 1 {
            return Ok(false);
        }
        tx.execute(BEGIN, &values).await?;
        Ok(true)
    }

    /// PostgreSQL: the claim of `key` (if any) and the attempt's record as parts of a `WITH`
    /// — `k`, which has a row if the claim succeeded, and `a` — with their arguments, which
    /// are the statement's first (see [`crate::inventory::reserve_at_once`]).
    pub(crate) fn claim_parts(
        &self,
        key: Option<&idempotency::Key>,
        now: i64,
    ) -> (&'static str, Vec<crate::db::Value>) {
        let mut values = self.begin_args(key, now);
        match key {
            Some(key) => {
                values.extend(key.claim_args());
                (CLAIM_PARTS.as_str(), values)
            }
            None => (UNKEYED_PARTS.as_str(), values),
        }
    }

    /// The arguments of [`BEGIN`]: the attempt and its key's parts.
    fn begin_args(&self, key: Option<&idempotency::Key>, now: i64) -> Vec<crate::db::Value> {
        let (scope, name, hash) = key.map(idempotency::Key::parts).unzip3();
        args![
            &self.order_id,
            &self.connector,
            self.amount,
            &self.currency,
            scope,
            name,
            hash,
            now
        ]
        .to_vec()
    }

    /// Forgets the attempt: its order is recorded, or the gateway holds nothing for it.
    pub(crate) async fn end_in(tx: &mut dyn Tx, order_id: &str) -> sqlx::Result<()> {
        tx.execute(
            "DELETE FROM checkout_attempts WHERE order_id = $1",
            &args![order_id],
        )
        .await
        .map(drop)
    }
}

/// `Option<(a, b, c)>` as three options.
trait Unzip3<'a> {
    fn unzip3(self) -> (Option<&'a str>, Option<&'a str>, Option<&'a str>);
}

impl<'a> Unzip3<'a> for Option<(&'a str, &'a str, &'a str)> {
    fn unzip3(self) -> (Option<&'a str>, Option<&'a str>, Option<&'a str>) {
        match self {
            Some((a, b, c)) => (Some(a), Some(b), Some(c)),
            None => (None, None, None),
        }
    }
}

/// Whether a failed checkout knows what the gateway holds for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    /// The gateway holds nothing (refused, or released): the attempt is over.
    Yes,
    /// The gateway may hold an authorisation: the attempt stays for [`recover`].
    No,
}

/// What one recovery sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Recovered {
    /// Attempts the gateway held nothing for: their stock was released.
    pub released: u32,
    /// Attempts whose authorisation was found and voided (or refunded), and their stock
    /// released.
    pub voided: u32,
    /// Attempts left for a later sweep: the gateway or the connector could not answer now.
    pub deferred: u32,
    /// Attempts whose connector cannot look payments up: their stock released, the attempt
    /// kept (listed at `/admin/checkout-attempts`) and an error log for the operator to
    /// reconcile at the gateway.
    pub unresolved: u32,
    /// Orders left `capturing` that the gateway says were captured: the capture recorded.
    pub captured: u32,
    /// Orders left `capturing` that the gateway says were not: `authorized` again, or
    /// `voided` if the gateway voided the payment.
    pub uncaptured: u32,
}

/// The outcomes as the metrics name them, in the order of [`OUTCOMES`].
const OUTCOME_NAMES: [&str; 6] = [
    "voided",
    "released",
    "deferred",
    "unresolved",
    "captured",
    "uncaptured",
];
/// What this process's sweeps did, in all.
static OUTCOMES: [AtomicU64; 6] = [const { AtomicU64::new(0) }; 6];

impl Recovered {
    /// Adds these outcomes to the process's totals (the metrics).
    pub fn count(&self) {
        let these = [
            self.voided,
            self.released,
            self.deferred,
            self.unresolved,
            self.captured,
            self.uncaptured,
        ];
        for (total, n) in OUTCOMES.iter().zip(these) {
            total.fetch_add(u64::from(n), Ordering::Relaxed);
        }
    }
}

/// The recovery's metrics in the Prometheus text format: what this process's sweeps did; how
/// many attempts the database holds past [`INTERRUPTED_AFTER_MS`] at `now` — checkouts that
/// may hold a shopper's money with no order, which should stay near zero; and how many are
/// unresolved, waiting for the operator.
pub async fn render_metrics(db: &Db, now: i64) -> sqlx::Result<String> {
    let (waiting, unresolved): (i64, i64) = db
        .read(move |tx| {
            Box::pin(async move {
                let rows = tx
                    .fetch(
                        "SELECT \
                           CAST(COALESCE(SUM(CASE WHEN unresolved_at IS NULL AND created_at < $1 \
                             THEN 1 ELSE 0 END), 0) AS BIGINT) AS waiting, \
                           CAST(COALESCE(SUM(CASE WHEN unresolved_at IS NULL THEN 0 ELSE 1 END), 0) \
                             AS BIGINT) AS unresolved \
                         FROM checkout_attempts",
                        &args![now - INTERRUPTED_AFTER_MS],
                    )
                    .await?;
                match rows.first() {
                    Some(row) => Ok((row.get("waiting")?, row.get("unresolved")?)),
                    None => Ok::<_, sqlx::Error>((0, 0)),
                }
            })
        })
        .await?;
    let mut out = String::new();
    out.push_str("# HELP cartridge_checkout_recoveries_total Interrupted checkouts and captures this process's sweeps took up, by outcome.\n");
    out.push_str("# TYPE cartridge_checkout_recoveries_total counter\n");
    for (outcome, total) in OUTCOME_NAMES.iter().zip(&OUTCOMES) {
        let _ = writeln!(
            out,
            "cartridge_checkout_recoveries_total{{outcome=\"{outcome}\"}} {}",
            total.load(Ordering::Relaxed)
        );
    }
    out.push_str("# HELP cartridge_checkouts_interrupted Checkout attempts older than the recovery threshold, not yet settled.\n");
    out.push_str("# TYPE cartridge_checkouts_interrupted gauge\n");
    let _ = writeln!(out, "cartridge_checkouts_interrupted {waiting}");
    out.push_str("# HELP cartridge_checkouts_unresolved Interrupted checkouts whose connector cannot look payments up, for the operator to reconcile (/admin/checkout-attempts).\n");
    out.push_str("# TYPE cartridge_checkouts_unresolved gauge\n");
    let _ = writeln!(out, "cartridge_checkouts_unresolved {unresolved}");
    Ok(out)
}

/// A checkout attempt as the admin API lists it.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct AttemptView {
    /// The order id the checkout would have recorded (the gateway's order reference).
    pub order_id: String,
    /// The payment connector's plugin name.
    pub connector: String,
    /// The amount the authorisation asked for, in minor units.
    pub amount: i64,
    /// Its currency.
    pub currency: String,
    /// When the authorisation was asked for (ms since the epoch).
    pub created_at: i64,
    /// `in_flight` (younger than the threshold: a checkout may still be running),
    /// `waiting` (for the sweep), `recovering` (a sweep has it), or `unresolved`.
    pub state: &'static str,
    /// When a sweep gave up on it, for `unresolved`.
    pub unresolved_at: Option<i64>,
}

/// Every checkout attempt not yet settled, oldest first (at most `limit`), as the clock reads
/// `now`.
pub async fn list(db: &Db, now: i64, limit: i64) -> sqlx::Result<Vec<AttemptView>> {
    let rows = db
        .read(move |tx| {
            Box::pin(async move {
                tx.fetch(
                    "SELECT order_id, connector, amount, currency, created_at, recovering_at, \
                            unresolved_at \
                     FROM checkout_attempts ORDER BY created_at, order_id LIMIT $1",
                    &args![limit],
                )
                .await
            })
        })
        .await?;
    rows.iter()
        .map(|row| {
            let created_at: i64 = row.get("created_at")?;
            let recovering_at: Option<i64> = row.get("recovering_at")?;
            let unresolved_at: Option<i64> = row.get("unresolved_at")?;
            let state = if unresolved_at.is_some() {
                "unresolved"
            } else if recovering_at.is_some_and(|at| at >= now - LEASE_MS) {
                "recovering"
            } else if created_at >= now - INTERRUPTED_AFTER_MS {
                "in_flight"
            } else {
                "waiting"
            };
            Ok(AttemptView {
                order_id: row.get("order_id")?,
                connector: row.get("connector")?,
                amount: row.get("amount")?,
                currency: row.get("currency")?,
                created_at,
                state,
                unresolved_at,
            })
        })
        .collect()
}

/// Forgets an unresolved attempt, once the operator has reconciled it at the gateway. `None`
/// if there is no such attempt; `Some(false)` if it is not unresolved (the sweep or a
/// checkout still owns it).
pub async fn dismiss(db: &Db, order_id: &str) -> sqlx::Result<Option<bool>> {
    let id = order_id.to_owned();
    db.write(move |tx| {
        Box::pin(async move {
            let dismissed = tx
                .execute(
                    "DELETE FROM checkout_attempts WHERE order_id = $1 AND unresolved_at IS NOT NULL",
                    &args![&id],
                )
                .await?;
            if dismissed == 1 {
                return Ok(Some(true));
            }
            let exists = !tx
                .fetch(
                    "SELECT 1 FROM checkout_attempts WHERE order_id = $1",
                    &args![&id],
                )
                .await?
                .is_empty();
            Ok(exists.then_some(false))
        })
    })
    .await
}

/// A candidate row.
struct Interrupted {
    order_id: String,
    connector: String,
    amount: i64,
    currency: String,
    key: Option<(String, String, String)>,
    created_at: i64,
}

/// What taking up an attempt found.
enum Claim {
    /// Recovering it is ours now.
    Ours { key_done: bool },
    /// Its order exists: nothing to recover (the row was deleted).
    Recorded,
    /// A request or another host's sweep is on it.
    Busy,
}

/// Why a claim was given up inside its transaction (which rolls it back).
#[derive(Debug, thiserror::Error)]
enum ClaimError {
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    #[error("busy")]
    Busy,
}

/// Takes up interrupted checkout attempts older than [`INTERRUPTED_AFTER_MS`] and settles
/// each (see the module's documentation). `connector` gives the active payment connector of a
/// plugin name. Several hosts on one database may run it at once.
pub async fn recover(
    db: &Db,
    connector: impl Fn(&str) -> Option<Arc<Plugin>>,
    now: i64,
) -> inventory::Result<Recovered> {
    let rows = db
        .read(move |tx| {
            Box::pin(async move {
                tx.fetch(
                    "SELECT order_id, connector, amount, currency, key_scope, key_name, key_hash, \
                            created_at \
                     FROM checkout_attempts \
                     WHERE created_at < $1 AND (recovering_at IS NULL OR recovering_at < $2) \
                       AND unresolved_at IS NULL \
                     ORDER BY created_at LIMIT $3",
                    &args![now - INTERRUPTED_AFTER_MS, now - LEASE_MS, PER_SWEEP],
                )
                .await
            })
        })
        .await?;
    let mut done = Recovered::default();
    for row in rows {
        let key = match (
            row.get::<Option<String>>("key_scope")?,
            row.get::<Option<String>>("key_name")?,
            row.get::<Option<String>>("key_hash")?,
        ) {
            (Some(scope), Some(name), Some(hash)) => Some((scope, name, hash)),
            _ => None,
        };
        let attempt = Interrupted {
            order_id: row.get("order_id")?,
            connector: row.get("connector")?,
            amount: row.get("amount")?,
            currency: row.get("currency")?,
            key,
            created_at: row.get("created_at")?,
        };
        recover_one(db, &connector, &attempt, now, &mut done).await?;
    }
    Ok(done)
}

async fn recover_one(
    db: &Db,
    connector: &impl Fn(&str) -> Option<Arc<Plugin>>,
    attempt: &Interrupted,
    now: i64,
    done: &mut Recovered,
) -> inventory::Result<()> {
    let order = attempt.order_id.as_str();
    let key_done = match claim(db, attempt, now).await? {
        Claim::Ours { key_done } => key_done,
        Claim::Recorded | Claim::Busy => return Ok(()),
    };
    let Some(plugin) = connector(&attempt.connector) else {
        let why = format!("its payment connector {} is not active", attempt.connector);
        return defer(db, attempt, key_done, now, done, &why).await;
    };
    if !plugin.looks_up() {
        tracing::error!(order, connector = %plugin.reference(), operation = %format!("{order}:authorize"), "an interrupted checkout's connector cannot look payments up: if the gateway holds an authorisation for this operation, void it there");
        finish(db, attempt, Outcome::Unknown, key_done, now).await?;
        done.unresolved += 1;
        return Ok(());
    }
    let request = payment::FindRequest {
        operation_id: format!("{order}:authorize"),
        order_reference: order.to_owned(),
        amount: Money {
            amount: u64::try_from(attempt.amount).unwrap_or(0),
            currency: attempt.currency.clone(),
        },
        sent_at: attempt.created_at,
        now,
    };
    let found = match plugin.find(&request).await {
        Ok(Call {
            output: Ok(found), ..
        }) => found,
        Ok(Call {
            output: Err(refusal),
            ..
        }) if refusal.code == payment::PaymentErrorCode::GatewayUnavailable => {
            let why = format!(
                "looking up its payment, the gateway cannot answer ({})",
                refusal.message
            );
            return defer(db, attempt, key_done, now, done, &why).await;
        }
        Ok(Call {
            output: Err(refusal),
            ..
        }) => {
            tracing::error!(order, connector = %plugin.reference(), operation = %request.operation_id, "the connector could not look up an interrupted checkout's payment ({}): if the gateway holds an authorisation for this operation, void it there", refusal.message);
            finish(db, attempt, Outcome::Unknown, key_done, now).await?;
            done.unresolved += 1;
            return Ok(());
        }
        Err(e) => {
            let why = format!("looking up its payment failed: {e}");
            return defer(db, attempt, key_done, now, done, &why).await;
        }
    };
    let held = found.filter(|f| {
        !matches!(
            f.status,
            payment::PaymentStatus::Voided | payment::PaymentStatus::Refunded
        )
    });
    let Some(held) = held else {
        finish(db, attempt, Outcome::Released, key_done, now).await?;
        done.released += 1;
        return Ok(());
    };
    let undo = undo_request(order, &held, now);
    match plugin.payment(&undo).await {
        Ok(Call { output: Ok(_), .. }) => {
            tracing::info!(order, gateway_reference = %held.gateway_reference, "released the authorisation of an interrupted checkout");
            finish(db, attempt, Outcome::Released, key_done, now).await?;
            done.voided += 1;
        }
        Ok(Call {
            output: Err(refusal),
            ..
        }) => {
            let why = format!(
                "the gateway refused to release its authorisation {} ({})",
                held.gateway_reference, refusal.message
            );
            defer(db, attempt, key_done, now, done, &why).await?;
        }
        Err(e) => {
            let why = format!(
                "releasing its authorisation {} failed: {e}",
                held.gateway_reference
            );
            defer(db, attempt, key_done, now, done, &why).await?;
        }
    }
    Ok(())
}

/// An attempt this sweep could not settle, for `why`: asked about again at a later sweep
/// (holding its key meanwhile, so that a retry waits), until it is as old as a key is kept.
/// Then the sweeps stop asking — a connector uninstalled, or a gateway that has not answered
/// for a day, would otherwise hold the key and be asked forever — and it is the operator's,
/// as unresolved, with its key released.
async fn defer(
    db: &Db,
    attempt: &Interrupted,
    key_done: bool,
    now: i64,
    done: &mut Recovered,
    why: &str,
) -> inventory::Result<()> {
    let order = attempt.order_id.as_str();
    if now - attempt.created_at < GIVE_UP_AFTER_MS {
        tracing::warn!(order, "an interrupted checkout: {why}; asking again later");
        done.deferred += 1;
        return Ok(());
    }
    tracing::error!(order, connector = %attempt.connector, operation = %format!("{order}:authorize"), "an interrupted checkout, a day old: {why}; no longer asking: if the gateway holds an authorisation for this operation, void it there");
    finish(db, attempt, Outcome::Unknown, key_done, now).await?;
    done.unresolved += 1;
    Ok(())
}

/// Takes up `attempt` in one transaction: unless its order exists, a request holds its key,
/// or another sweep has it, leases the row and holds the key (so that a retry waits).
async fn claim(db: &Db, attempt: &Interrupted, now: i64) -> sqlx::Result<Claim> {
    let (order_id, key) = (attempt.order_id.clone(), attempt.key.clone());
    let claimed = db
        .write(move |tx| {
            Box::pin(async move {
                let recorded = !tx
                    .fetch("SELECT 1 FROM orders WHERE id = $1", &args![&order_id])
                    .await?
                    .is_empty();
                if recorded {
                    Attempt::end_in(tx, &order_id).await?;
                    return Ok(Claim::Recorded);
                }
                // When an earlier sweep took it up (and held its key) but had to defer it.
                let earlier = tx
                    .fetch(
                        "SELECT recovering_at FROM checkout_attempts WHERE order_id = $1",
                        &args![&order_id],
                    )
                    .await?
                    .first()
                    .map(|row| row.get::<Option<i64>>("recovering_at"))
                    .transpose()?
                    .flatten();
                let leased = tx
                    .execute(
                        "UPDATE checkout_attempts SET recovering_at = $2 \
                         WHERE order_id = $1 AND (recovering_at IS NULL OR recovering_at < $3)",
                        &args![&order_id, now, now - LEASE_MS],
                    )
                    .await?;
                if leased == 0 {
                    return Err(ClaimError::Busy);
                }
                let Some((scope, name, hash)) = &key else {
                    return Ok(Claim::Ours { key_done: false });
                };
                let state = tx
                    .fetch(
                        "SELECT state, created_at FROM idempotency_keys WHERE scope = $1 AND key = $2",
                        &args![scope, name],
                    )
                    .await?;
                let held = match state.first() {
                    // Answered already (a checkout that gave up with a final answer).
                    Some(row) if row.text("state")? == "done" => {
                        return Ok(Claim::Ours { key_done: true });
                    }
                    // Held since `since`: by a request that may still be running (leave it
                    // be), unless that is long ago or the hold is an earlier sweep's.
                    Some(row) => {
                        let since: i64 = row.get("created_at")?;
                        if since >= now - idempotency::ABANDONED_AFTER_MS && Some(since) != earlier {
                            return Err(ClaimError::Busy);
                        }
                        tx.execute(
                            "UPDATE idempotency_keys SET created_at = $3 \
                             WHERE scope = $1 AND key = $2 AND state = 'running' AND created_at = $4",
                            &args![scope, name, now, since],
                        )
                        .await?
                    }
                    None => {
                        tx.execute(
                            "INSERT INTO idempotency_keys (scope, key, request_hash, state, created_at) \
                             VALUES ($1, $2, $3, 'running', $4) ON CONFLICT (scope, key) DO NOTHING",
                            &args![scope, name, hash, now],
                        )
                        .await?
                    }
                };
                if held == 0 {
                    return Err(ClaimError::Busy);
                }
                Ok(Claim::Ours { key_done: false })
            })
        })
        .await;
    match claimed {
        Ok(claim) => Ok(claim),
        Err(ClaimError::Busy) => Ok(Claim::Busy),
        Err(ClaimError::Db(e)) => Err(e),
    }
}

/// How a recovered attempt ends.
enum Outcome {
    /// The gateway holds nothing for it (any more): the key gets the final answer.
    Released,
    /// Nobody can tell: the attempt stays, marked unresolved, for the operator; the key is
    /// released, so that the shopper's retry — the same attempt, answered by the gateway's
    /// idempotency — may still complete the order.
    Unknown,
}

/// Releases the attempt's stock, forgets the attempt (or marks it unresolved), and answers or
/// releases its key.
async fn finish(
    db: &Db,
    attempt: &Interrupted,
    outcome: Outcome,
    key_done: bool,
    now: i64,
) -> inventory::Result<()> {
    let (order_id, key) = (attempt.order_id.clone(), attempt.key.clone());
    // The API's error body for `checkout_aborted` (see `api::error`).
    let answer = json!({"error": {
        "code": "checkout_aborted",
        "message": crate::orders::OrderError::Aborted.to_string(),
    }})
    .to_string();
    db.write(move |tx| {
        Box::pin(async move {
            inventory::release_in(tx, order_id.clone(), now).await?;
            match outcome {
                Outcome::Released => Attempt::end_in(tx, &order_id).await?,
                // Kept, for the operator: nobody knows what the gateway holds.
                Outcome::Unknown => {
                    tx.execute(
                        "UPDATE checkout_attempts SET unresolved_at = $2, recovering_at = NULL \
                         WHERE order_id = $1",
                        &args![&order_id, now],
                    )
                    .await?;
                }
            }
            if let (Some((scope, name, _)), false) = (&key, key_done) {
                match outcome {
                    Outcome::Released => {
                        tx.execute(
                            "UPDATE idempotency_keys \
                             SET state = 'done', response_status = 503, response_body = $3 \
                             WHERE scope = $1 AND key = $2 AND state = 'running'",
                            &args![scope, name, &answer],
                        )
                        .await?;
                    }
                    Outcome::Unknown => {
                        tx.execute(
                            "DELETE FROM idempotency_keys \
                             WHERE scope = $1 AND key = $2 AND state = 'running'",
                            &args![scope, name],
                        )
                        .await?;
                    }
                }
            }
            Ok::<_, inventory::InventoryError>(())
        })
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_combined_claim_numbers_the_keys_arguments_after_the_attempts() {
        assert!(
            CLAIM_AND_BEGIN.contains("VALUES ($9, $10, $11, 'running', $12)"),
            "{}",
            *CLAIM_AND_BEGIN
        );
        assert!(CLAIM_AND_BEGIN.contains("SELECT $1, $2, $3, $4, $5, $6, $7, $8 FROM k"));
    }
}
