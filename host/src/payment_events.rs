//! Payment events that a gateway reports through webhooks: each stored once per (connector,
//! event id) and applied to the order's payment so that deliveries which repeat or arrive out
//! of order are safe.
//!
//! [`record`] inserts the event and applies it in one transaction. The primary key of
//! `payment_events` deduplicates — a repeated delivery inserts nothing and changes nothing —
//! and the caller answers 2xx only after the commit, so a delivery that failed is retried by
//! the gateway and never half-applied. One exception: an event first stored as `other`
//! (its connector could not read it then) is applied when a later delivery of it is read.
//!
//! How an event is applied (the amount of `captured` and `refunded` events is read as the
//! gateway's *running total*, as Stripe's `charge.refunded` carries `amount_refunded`, which
//! makes applying one idempotent and independent of arrival order):
//!
//! - `captured`: an authorised (or capturing) payment of an order that is not cancelled becomes
//!   captured for the amount, never above what was authorised. A capture reported after a
//!   cancel or a void does not resurrect the order: it is kept as `ignored_stale` and logged
//!   for reconciliation. Refund events that were waiting for the capture are applied then.
//! - `refunded`: raises `refunded` to the total when that is at most what is captured. A refund
//!   reported before its capture is seen is kept as `waiting_for_capture` and changes nothing.
//! - `voided`: an authorised payment becomes voided. The order stays for the merchant to
//!   cancel (which restocks), but nothing more of it ships: fulfilment needs money held.
//! - `authorized`, `failed`, `other`: recorded only; checkout learns these synchronously.
//! - `dispute` (from a connector's `payment-disputes`): the dispute's row in `disputes` is
//!   created or moved on — an inquiry or an open chargeback to its end (inquiry closed, won,
//!   lost) — never back: an event older than the row's state is kept as `ignored_stale`. The
//!   payment itself does not change (the gateway's dispute fee and withdrawal are outside the
//!   order's money); the buyer's chargebacks count in the history fraud checks receive.
//!
//! Locks are taken in one order everywhere: the order row, then the payment row. On
//! PostgreSQL an event that may change a payment locks its order row *before* reading the
//! payment, so that two events for one payment (a capture and a refund delivered at once)
//! take turns: otherwise the refund could read the payment as not yet captured while the
//! capture looked for waiting refunds before the refund was committed, and the refund would
//! wait for ever. (SQLite's writes take turns anyway.)

use serde::Serialize;
use sqlx::Row;

use crate::db::{Backend, Db};
use crate::plugin::bindings::payment::{Dispute, DisputeStatus, WebhookEvent, WebhookEventKind};
use crate::plugin::bindings::types::Money;

/// What applying an event did; stored with the event and answered to the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The payment changed.
    Applied,
    /// The payment already said so (our own capture or refund got there first), or the
    /// dispute did.
    AlreadyApplied,
    /// The event contradicts a later, final state (a capture after a cancel or a void), or is
    /// older than where its dispute stands.
    IgnoredStale,
    /// A refund above what is captured so far; applied when the capture is seen.
    WaitingForCapture,
    /// No payment of this connector has the event's gateway reference.
    NoPayment,
    /// The event's (or the dispute's) currency is not the payment's.
    CurrencyMismatch,
    /// A capture above what was authorised.
    AmountExceedsAuthorized,
    /// Kept for the record; nothing to apply.
    Recorded,
}

impl Outcome {
    /// The stored and reported name.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::AlreadyApplied => "already_applied",
            Outcome::IgnoredStale => "ignored_stale",
            Outcome::WaitingForCapture => "waiting_for_capture",
            Outcome::NoPayment => "no_payment",
            Outcome::CurrencyMismatch => "currency_mismatch",
            Outcome::AmountExceedsAuthorized => "amount_exceeds_authorized",
            Outcome::Recorded => "recorded",
        }
    }
}

/// What [`record`] did with a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// First delivery of this event: stored and applied.
    New(Outcome),
    /// Seen before: nothing stored, nothing changed. The first delivery's outcome.
    Duplicate(String),
}

fn kind_name(kind: WebhookEventKind) -> &'static str {
    match kind {
        WebhookEventKind::Authorized => "authorized",
        WebhookEventKind::Captured => "captured",
        WebhookEventKind::Refunded => "refunded",
        WebhookEventKind::Voided => "voided",
        WebhookEventKind::Failed => "failed",
        WebhookEventKind::Other => "other",
    }
}

/// Prometheus text: the disputes the gateways reported, by where each stands now (`open`: the
/// chargebacks still to answer).
pub async fn render_metrics(db: &Db) -> sqlx::Result<String> {
    use std::fmt::Write as _;
    let counts = db
        .read(|tx| {
            Box::pin(async move {
                let rows = tx
                    .fetch(
                        "SELECT status, CAST(COUNT(*) AS BIGINT) AS n FROM disputes GROUP BY status",
                        &[],
                    )
                    .await?;
                rows.iter()
                    .map(|row| Ok((row.get::<String>("status")?, row.get::<i64>("n")?)))
                    .collect::<sqlx::Result<Vec<_>>>()
            })
        })
        .await?;
    let mut out = String::new();
    out.push_str(
        "# HELP cartridge_disputes Disputes payment connectors reported, by their status now.\n",
    );
    out.push_str("# TYPE cartridge_disputes gauge\n");
    use DisputeStatus::{Inquiry, InquiryClosed, Lost, Open, Won};
    for status in [Inquiry, InquiryClosed, Open, Won, Lost].map(dispute_status_name) {
        let n = counts
            .iter()
            .find(|(s, _)| s == status)
            .map_or(0, |(_, n)| *n);
        let _ = writeln!(out, "cartridge_disputes{{status=\"{status}\"}} {n}");
    }
    Ok(out)
}

/// A dispute status as `disputes.status` stores it.
fn dispute_status_name(status: DisputeStatus) -> &'static str {
    match status {
        DisputeStatus::Inquiry => "inquiry",
        DisputeStatus::InquiryClosed => "inquiry_closed",
        DisputeStatus::Open => "open",
        DisputeStatus::Won => "won",
        DisputeStatus::Lost => "lost",
    }
}

/// How far along a dispute of this (stored) status is: a dispute only moves forward.
fn dispute_stage(status: &str) -> u8 {
    match status {
        "inquiry" => 0,
        "open" => 1,
        _ => 2,
    }
}

fn signed(amount: u64) -> i64 {
    i64::try_from(amount).unwrap_or(i64::MAX)
}

/// A verified webhook delivery, as its connector decoded it.
#[derive(Debug, Clone, Copy)]
pub enum Delivery<'a> {
    /// A payment event (`parse-webhook`).
    Payment(&'a WebhookEvent),
    /// A dispute (`parse-dispute`).
    Dispute(&'a Dispute),
}

impl Delivery<'_> {
    /// The gateway's event id.
    pub fn event_id(&self) -> &str {
        match self {
            Delivery::Payment(event) => &event.event_id,
            Delivery::Dispute(dispute) => &dispute.event_id,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Delivery::Payment(event) => kind_name(event.kind),
            Delivery::Dispute(_) => "dispute",
        }
    }

    fn reference(&self) -> Option<&str> {
        match self {
            Delivery::Payment(event) => event.gateway_reference.as_deref(),
            Delivery::Dispute(dispute) => Some(&dispute.gateway_reference),
        }
    }

    fn amount(&self) -> Option<&Money> {
        match self {
            Delivery::Payment(event) => event.amount.as_ref(),
            Delivery::Dispute(dispute) => Some(&dispute.amount),
        }
    }

    fn occurred_at(&self) -> i64 {
        match self {
            Delivery::Payment(event) => event.occurred_at,
            Delivery::Dispute(dispute) => dispute.occurred_at,
        }
    }
}

/// Stores a verified delivery of connector `plugin` and applies it, exactly once per event id.
pub async fn record(
    db: &Db,
    plugin: &str,
    delivery: Delivery<'_>,
    body_sha256: &str,
    now: i64,
) -> Result<Recorded, sqlx::Error> {
    let mut tx = db.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO payment_events (plugin, event_id, kind, gateway_reference, amount, currency, \
         occurred_at, received_at, outcome, body_sha256) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'recorded', $9) \
         ON CONFLICT (plugin, event_id) DO NOTHING",
    )
    .bind_delivery(plugin, &delivery)
    .bind(now)
    .bind(body_sha256)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    let inserted = if inserted == 0 && delivery.kind() != "other" {
        understood_now(&mut tx, plugin, &delivery, body_sha256).await?
    } else {
        inserted
    };
    if inserted == 0 {
        tx.rollback().await?;
        let outcome: String = sqlx::query_scalar(
            "SELECT outcome FROM payment_events WHERE plugin = $1 AND event_id = $2",
        )
        .bind(plugin)
        .bind(delivery.event_id())
        .fetch_one(db.pool())
        .await?;
        return Ok(Recorded::Duplicate(outcome));
    }
    if db.backend() == Backend::Postgres
        && let Some(reference) = delivery.reference()
    {
        sqlx::query(
            "SELECT id FROM orders WHERE id IN \
             (SELECT order_id FROM payments WHERE gateway_reference = $1) ORDER BY id FOR UPDATE",
        )
        .bind(reference)
        .fetch_all(&mut *tx)
        .await?;
    }
    let (order_id, outcome) = match delivery {
        Delivery::Payment(event) => apply(&mut tx, plugin, event, now).await?,
        Delivery::Dispute(dispute) => apply_dispute(&mut tx, plugin, dispute).await?,
    };
    sqlx::query(
        "UPDATE payment_events SET outcome = $3, order_id = $4 WHERE plugin = $1 AND event_id = $2",
    )
    .bind(plugin)
    .bind(delivery.event_id())
    .bind(outcome.as_str())
    .bind(&order_id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Recorded::New(outcome))
}

/// A delivery of an event stored before as `other` — recorded only, because the connector
/// that received it could not read it then (a version before `payment-disputes`, say) — is
/// read now: the stored row takes what this delivery says, and the caller applies it. So an
/// event the gateway delivers again after a connector upgrade is not lost as a duplicate. A row
/// of any other kind was applied once and is never rewritten. Returns the rows changed (0 or
/// 1).
async fn understood_now(
    conn: &mut sqlx::AnyConnection,
    plugin: &str,
    delivery: &Delivery<'_>,
    body_sha256: &str,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE payment_events SET kind = $3, gateway_reference = $4, amount = $5, currency = $6, \
         occurred_at = $7, body_sha256 = $8 \
         WHERE plugin = $1 AND event_id = $2 AND kind = 'other'",
    )
    .bind_delivery(plugin, delivery)
    .bind(body_sha256)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

/// Binds what a stored event says, as `$1`…`$7`: the connector, the event id, its kind,
/// reference, amount, currency and time.
trait BindDelivery<'q> {
    fn bind_delivery(self, plugin: &'q str, delivery: &Delivery<'q>) -> Self;
}

impl<'q> BindDelivery<'q> for Query<'q> {
    fn bind_delivery(self, plugin: &'q str, delivery: &Delivery<'q>) -> Self {
        self.bind(plugin)
            .bind(delivery.event_id().to_owned())
            .bind(delivery.kind())
            .bind(delivery.reference().map(str::to_owned))
            .bind(delivery.amount().map(|m| signed(m.amount)))
            .bind(delivery.amount().map(|m| m.currency.clone()))
            .bind(delivery.occurred_at())
    }
}

/// The payment an event is about.
struct Payment {
    order_id: String,
    currency: String,
    authorized: i64,
    captured: i64,
    status: String,
    payment_status: String,
}

async fn payment(
    conn: &mut sqlx::AnyConnection,
    plugin: &str,
    reference: &str,
) -> Result<Option<Payment>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT p.order_id, p.plugin, p.currency, p.authorized, p.captured, o.status, o.payment_status \
         FROM payments p JOIN orders o ON o.id = p.order_id WHERE p.gateway_reference = $1",
    )
    .bind(reference)
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        // `payments.plugin` is `name@version`; a new version of the connector still owns the
        // payments an older one took.
        let owner: String = row.try_get("plugin")?;
        if owner.split('@').next() != Some(plugin) {
            continue;
        }
        return Ok(Some(Payment {
            order_id: row.try_get("order_id")?,
            currency: row.try_get("currency")?,
            authorized: row.try_get("authorized")?,
            captured: row.try_get("captured")?,
            status: row.try_get("status")?,
            payment_status: row.try_get("payment_status")?,
        }));
    }
    Ok(None)
}

async fn apply(
    conn: &mut sqlx::AnyConnection,
    plugin: &str,
    event: &WebhookEvent,
    now: i64,
) -> Result<(Option<String>, Outcome), sqlx::Error> {
    let acts = matches!(
        event.kind,
        WebhookEventKind::Captured | WebhookEventKind::Refunded | WebhookEventKind::Voided
    );
    let Some(reference) = event.gateway_reference.as_deref() else {
        return Ok((None, Outcome::Recorded));
    };
    let Some(pay) = payment(conn, plugin, reference).await? else {
        return Ok((None, Outcome::NoPayment));
    };
    let order = Some(pay.order_id.clone());
    if !acts {
        return Ok((order, Outcome::Recorded));
    }
    if event
        .amount
        .as_ref()
        .is_some_and(|m| m.currency != pay.currency)
    {
        return Ok((order, Outcome::CurrencyMismatch));
    }
    let amount = event.amount.as_ref().map(|m| signed(m.amount));
    let outcome = match event.kind {
        WebhookEventKind::Captured => {
            capture(
                conn,
                plugin,
                reference,
                &pay,
                amount.unwrap_or(pay.authorized),
                now,
            )
            .await?
        }
        WebhookEventKind::Refunded => match amount {
            Some(total) => refund(conn, &pay, total, now).await?,
            None => Outcome::Recorded,
        },
        _ => void(conn, &pay, now).await?,
    };
    if outcome == Outcome::IgnoredStale {
        tracing::warn!(order = %pay.order_id, event = %event.event_id, kind = kind_name(event.kind),
            "the gateway reports a step that contradicts the order's final state; reconcile");
    }
    Ok((order, outcome))
}

/// Creates a dispute's row or moves it on; see the module's documentation.
async fn apply_dispute(
    conn: &mut sqlx::AnyConnection,
    plugin: &str,
    dispute: &Dispute,
) -> Result<(Option<String>, Outcome), sqlx::Error> {
    let Some(pay) = payment(conn, plugin, &dispute.gateway_reference).await? else {
        return Ok((None, Outcome::NoPayment));
    };
    let order = Some(pay.order_id.clone());
    if dispute.amount.currency != pay.currency {
        return Ok((order, Outcome::CurrencyMismatch));
    }
    let (status, amount) = (
        dispute_status_name(dispute.status),
        signed(dispute.amount.amount),
    );
    let stored = sqlx::query(
        "SELECT status, amount, reason, respond_by, updated_at FROM disputes \
         WHERE plugin = $1 AND dispute_id = $2",
    )
    .bind(plugin)
    .bind(&dispute.dispute_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(stored) = stored else {
        sqlx::query(
            "INSERT INTO disputes (plugin, dispute_id, order_id, email, amount, currency, status, \
             reason, respond_by, opened_at, updated_at) \
             SELECT $1, $2, id, email, $3, currency, $4, $5, $8, $6, $6 FROM orders WHERE id = $7",
        )
        .bind(plugin)
        .bind(&dispute.dispute_id)
        .bind(amount)
        .bind(status)
        .bind(&dispute.reason)
        .bind(dispute.occurred_at)
        .bind(&pay.order_id)
        .bind(dispute.respond_by)
        .execute(&mut *conn)
        .await?;
        return Ok((order, Outcome::Applied));
    };
    let was: String = stored.try_get("status")?;
    let unchanged = was == status
        && stored.try_get::<i64, _>("amount")? == amount
        && stored.try_get::<String, _>("reason")? == dispute.reason
        && stored.try_get::<Option<i64>, _>("respond_by")? == dispute.respond_by;
    if unchanged {
        return Ok((order, Outcome::AlreadyApplied));
    }
    let (stage, stage_was) = (dispute_stage(status), dispute_stage(&was));
    let older = dispute.occurred_at < stored.try_get::<i64, _>("updated_at")?;
    if stage < stage_was || (stage == stage_was && older) {
        return Ok((order, Outcome::IgnoredStale));
    }
    sqlx::query(
        "UPDATE disputes SET status = $3, amount = $4, reason = $5, respond_by = $7, \
         updated_at = $6 WHERE plugin = $1 AND dispute_id = $2",
    )
    .bind(plugin)
    .bind(&dispute.dispute_id)
    .bind(status)
    .bind(amount)
    .bind(&dispute.reason)
    .bind(
        dispute
            .occurred_at
            .max(stored.try_get::<i64, _>("updated_at")?),
    )
    .bind(dispute.respond_by)
    .execute(&mut *conn)
    .await?;
    Ok((order, Outcome::Applied))
}

async fn capture(
    conn: &mut sqlx::AnyConnection,
    plugin: &str,
    reference: &str,
    pay: &Payment,
    amount: i64,
    now: i64,
) -> Result<Outcome, sqlx::Error> {
    if pay.captured > 0 {
        return Ok(Outcome::AlreadyApplied);
    }
    if pay.status == "cancelled" || pay.payment_status == "voided" {
        return Ok(Outcome::IgnoredStale);
    }
    if amount <= 0 || amount > pay.authorized {
        return Ok(Outcome::AmountExceedsAuthorized);
    }
    // The order row first: a cancel claiming it at the same time waits, then finds it captured.
    let claimed = sqlx::query(
        "UPDATE orders SET payment_status = 'captured', updated_at = $2 WHERE id = $1 \
         AND payment_status IN ('authorized', 'capturing') AND status <> 'cancelled'",
    )
    .bind(&pay.order_id)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if claimed == 0 {
        return Ok(Outcome::IgnoredStale);
    }
    sqlx::query(
        "UPDATE payments SET captured = $2 WHERE order_id = $1 AND captured = 0 AND $2 <= authorized",
    )
    .bind(&pay.order_id)
    .bind(amount)
    .execute(&mut *conn)
    .await?;
    apply_waiting_refunds(
        conn,
        plugin,
        reference,
        &pay.order_id,
        &pay.currency,
        amount,
        now,
    )
    .await?;
    Ok(Outcome::Applied)
}

/// Applies the refunds the gateway reported for a payment before its capture of `captured`
/// was recorded — by a capture event, or by the host's own capture call. Run in the
/// transaction that records the capture, after the order row is locked.
pub(crate) async fn apply_waiting_refunds(
    conn: &mut sqlx::AnyConnection,
    plugin: &str,
    reference: &str,
    order_id: &str,
    currency: &str,
    captured: i64,
    now: i64,
) -> Result<(), sqlx::Error> {
    let waiting: Option<i64> = sqlx::query_scalar(
        "SELECT MAX(amount) FROM payment_events WHERE plugin = $1 AND gateway_reference = $2 \
         AND kind = 'refunded' AND currency = $3 AND amount <= $4",
    )
    .bind(plugin)
    .bind(reference)
    .bind(currency)
    .bind(captured)
    .fetch_one(&mut *conn)
    .await?;
    if let Some(total) = waiting {
        raise_refunded(conn, order_id, total, now).await?;
        sqlx::query(
            "UPDATE payment_events SET outcome = 'applied' WHERE plugin = $1 AND gateway_reference = $2 \
             AND kind = 'refunded' AND outcome = 'waiting_for_capture' AND amount <= $3",
        )
        .bind(plugin)
        .bind(reference)
        .bind(captured)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

async fn refund(
    conn: &mut sqlx::AnyConnection,
    pay: &Payment,
    total: i64,
    now: i64,
) -> Result<Outcome, sqlx::Error> {
    if total > pay.captured {
        return Ok(Outcome::WaitingForCapture);
    }
    Ok(if raise_refunded(conn, &pay.order_id, total, now).await? {
        Outcome::Applied
    } else {
        Outcome::AlreadyApplied
    })
}

/// Raises the refunded amount to `total` unless it is there already or `total` is above the
/// capture; then brings the payment status in line. Whether it changed anything.
async fn raise_refunded(
    conn: &mut sqlx::AnyConnection,
    order_id: &str,
    total: i64,
    now: i64,
) -> Result<bool, sqlx::Error> {
    sqlx::query("UPDATE orders SET updated_at = $2 WHERE id = $1")
        .bind(order_id)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    let raised = sqlx::query(
        "UPDATE payments SET refunded = $2 WHERE order_id = $1 AND refunded < $2 AND $2 <= captured",
    )
    .bind(order_id)
    .bind(total)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    crate::orders::settle_payment_status(conn, order_id, now).await?;
    Ok(raised == 1)
}

async fn void(
    conn: &mut sqlx::AnyConnection,
    pay: &Payment,
    now: i64,
) -> Result<Outcome, sqlx::Error> {
    if pay.payment_status == "voided" {
        return Ok(Outcome::AlreadyApplied);
    }
    let voided = sqlx::query(
        "UPDATE orders SET payment_status = 'voided', updated_at = $2 WHERE id = $1 \
         AND payment_status IN ('authorized', 'capturing')",
    )
    .bind(&pay.order_id)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(if voided == 1 {
        Outcome::Applied
    } else {
        Outcome::IgnoredStale
    })
}
