-- Disputes a payment connector reported (its `payment-disputes`), one row per dispute, as it
-- stands now; each delivery about it is also kept in `payment_events` (kind `dispute`).

CREATE TABLE disputes (
    -- The connector's plugin name, as in `payment_events`.
    plugin       TEXT NOT NULL,
    -- The gateway's id of the dispute.
    dispute_id   TEXT NOT NULL,
    order_id     TEXT NOT NULL REFERENCES orders (id),
    -- The order's email, normalized as orders keep it: the buyer's history counts by it.
    email        TEXT NOT NULL,
    amount       BIGINT NOT NULL CHECK (amount > 0),
    currency     TEXT NOT NULL,
    -- inquiry | inquiry_closed | open | won | lost
    status       TEXT NOT NULL,
    -- The gateway's reason, verbatim.
    reason       TEXT NOT NULL,
    -- When the merchant's evidence is due, if the gateway set a date.
    respond_by   BIGINT,
    -- When the first event received about it occurred, and when the one the row reflects did.
    opened_at    BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    PRIMARY KEY (plugin, dispute_id)
);
CREATE INDEX disputes_by_order ON disputes (order_id);
CREATE INDEX disputes_by_email ON disputes (email, status);
