-- Orders, their payments, and stored responses for idempotent requests.

CREATE TABLE orders (
    id                  TEXT PRIMARY KEY,
    cart_id             TEXT NOT NULL,
    email               TEXT NOT NULL,
    -- placed | on_hold | cancelled | completed
    status              TEXT NOT NULL,
    -- authorized | captured | partially_refunded | refunded | voided
    payment_status      TEXT NOT NULL,
    -- unfulfilled | fulfilled
    fulfilment_status   TEXT NOT NULL,
    currency            TEXT NOT NULL,
    subtotal            BIGINT NOT NULL,
    discount_total      BIGINT NOT NULL,
    shipping_total      BIGINT NOT NULL,
    total               BIGINT NOT NULL CHECK (total >= 0),
    shipping_address    TEXT NOT NULL,
    billing_address     TEXT NOT NULL,
    -- Which plugin versions priced and checked it, and what they said (JSON).
    decisions           TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    updated_at          BIGINT NOT NULL
);
CREATE INDEX orders_by_email ON orders (email, created_at);

CREATE TABLE order_lines (
    order_id    TEXT NOT NULL REFERENCES orders (id),
    line_no     INTEGER NOT NULL,
    sku         TEXT NOT NULL,
    quantity    BIGINT NOT NULL CHECK (quantity > 0),
    unit_price  BIGINT NOT NULL,
    discount    BIGINT NOT NULL,
    total       BIGINT NOT NULL,
    PRIMARY KEY (order_id, line_no)
);

CREATE TABLE payments (
    order_id           TEXT PRIMARY KEY REFERENCES orders (id),
    plugin             TEXT NOT NULL,
    gateway_reference  TEXT NOT NULL,
    currency           TEXT NOT NULL,
    authorized         BIGINT NOT NULL,
    captured           BIGINT NOT NULL DEFAULT 0 CHECK (captured <= authorized),
    refunded           BIGINT NOT NULL DEFAULT 0 CHECK (refunded <= captured)
);

CREATE TABLE idempotency_keys (
    scope            TEXT NOT NULL,
    key              TEXT NOT NULL,
    request_hash     TEXT NOT NULL,
    -- running | done
    state            TEXT NOT NULL,
    response_status  INTEGER,
    response_body    TEXT,
    created_at       BIGINT NOT NULL,
    PRIMARY KEY (scope, key)
);
