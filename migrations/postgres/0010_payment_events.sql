-- Verified payment webhook events, one row per (connector, event id): the primary key is what
-- deduplicates repeated deliveries, so a delivery is stored and applied at most once.

CREATE TABLE payment_events (
    -- The connector's plugin name (the `{plugin}` of the webhook URL).
    plugin             TEXT NOT NULL,
    -- The gateway's event id.
    event_id           TEXT NOT NULL,
    -- authorized | captured | refunded | voided | failed | other
    kind               TEXT NOT NULL,
    gateway_reference  TEXT,
    -- For captured and refunded events: the gateway's running total (minor units).
    amount             BIGINT,
    currency           TEXT,
    occurred_at        BIGINT NOT NULL,
    received_at        BIGINT NOT NULL,
    -- The order the reference belongs to, when there is one.
    order_id           TEXT,
    -- What applying it did: applied | already_applied | ignored_terminal | waiting_for_capture |
    -- no_payment | currency_mismatch | recorded
    outcome            TEXT NOT NULL,
    -- SHA-256 of the body as delivered, hex.
    body_sha256        TEXT NOT NULL,
    PRIMARY KEY (plugin, event_id)
);
CREATE INDEX payment_events_by_reference ON payment_events (plugin, gateway_reference, kind);

-- Webhooks find the payment by the gateway's reference.
CREATE INDEX payments_by_reference ON payments (gateway_reference);

-- Every refund the gateway carried out at our request, with the gateway's reference for it:
-- what reconciliation compares against the gateway, and the sum behind payments.refunded.
CREATE TABLE payment_refunds (
    operation_id    TEXT PRIMARY KEY,
    order_id        TEXT NOT NULL REFERENCES orders (id),
    amount          BIGINT NOT NULL CHECK (amount > 0),
    step_reference  TEXT,
    reason          TEXT,
    created_at      BIGINT NOT NULL
);
CREATE INDEX payment_refunds_by_order ON payment_refunds (order_id, created_at);
