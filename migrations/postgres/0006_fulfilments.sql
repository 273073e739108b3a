-- Shipments of an order: partial or whole, each with a carrier and a tracking number.
CREATE TABLE fulfilments (
    id          TEXT PRIMARY KEY,
    order_id    TEXT NOT NULL REFERENCES orders (id),
    carrier     TEXT,
    tracking    TEXT,
    created_at  BIGINT NOT NULL
);
CREATE INDEX fulfilments_by_order ON fulfilments (order_id, created_at);

CREATE TABLE fulfilment_lines (
    fulfilment_id  TEXT NOT NULL REFERENCES fulfilments (id),
    sku            TEXT NOT NULL,
    quantity       BIGINT NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (fulfilment_id, sku)
);
