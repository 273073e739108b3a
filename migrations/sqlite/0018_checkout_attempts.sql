-- Checkouts between reserving their stock and recording their order: written in the
-- transaction that reserves, deleted in the one that records the order (or once a failed
-- checkout has released what the gateway held). A row that outlives its checkout belongs to
-- one whose process stopped, or whose payment outcome is unknown: the maintenance sweep asks
-- the payment connector what the gateway holds for it, voids that, releases the stock and
-- answers the idempotency key, so that no authorisation outlives a checkout that failed.
-- No payment token is kept: the lookup needs only the operation id.
CREATE TABLE checkout_attempts (
    order_id TEXT PRIMARY KEY,
    -- The payment connector's plugin name.
    connector TEXT NOT NULL,
    amount BIGINT NOT NULL,
    currency TEXT NOT NULL,
    -- The checkout's idempotency key, when it had one.
    key_scope TEXT,
    key_name TEXT,
    key_hash TEXT,
    -- When the authorisation was asked for (its request's `now`).
    created_at BIGINT NOT NULL,
    -- When a sweep took it up: other hosts leave it alone for a while.
    recovering_at BIGINT,
    -- When a sweep gave up on it because its connector cannot look payments up: the stock
    -- was released, and the row stays, for the operator to reconcile at the gateway and
    -- dismiss (`/admin/checkout-attempts`). A retry of the checkout takes it up again.
    unresolved_at BIGINT
) WITHOUT ROWID;
-- No index beyond the key: every checkout inserts and deletes a row here, and the table only
-- ever holds the checkouts in flight, which the sweep reads whole. WITHOUT ROWID keeps it to
-- one b-tree.
