-- What the fraud hook's buyer history reports.
--
-- Payments a gateway refused, by the checkout's email: declined, or needing a step the
-- checkout cannot take (3-D Secure, a partial authorisation). Not an unreachable gateway or a
-- failing connector, which say nothing about the buyer. Written in the transaction that
-- releases the failed checkout's stock; the maintenance sweep forgets rows older than a week.
-- Keyed for the one read, the failures of an email since a time.
CREATE TABLE payment_failures (
    email        TEXT NOT NULL,
    at           BIGINT NOT NULL,
    -- The failed checkout attempt (the id its order would have had).
    order_id     TEXT NOT NULL,
    customer_id  TEXT,
    -- The gateway's refusal code, e.g. `declined`, `insufficient_funds`, `requires_action`.
    code         TEXT NOT NULL,
    amount       BIGINT NOT NULL,
    currency     TEXT NOT NULL,
    PRIMARY KEY (email, at, order_id)
) WITHOUT ROWID;

-- The lifetime spend counts the orders in the checkout's currency only (amounts in different
-- currencies do not add up); the currency joins the columns the history reads from the index
-- alone (migration 0023).
DROP INDEX orders_by_email;
CREATE INDEX orders_by_email ON orders (email, created_at, status, total, currency);
