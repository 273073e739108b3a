-- Returned units per order, so that no more comes back than was sold, and each return is
-- processed once.
CREATE TABLE order_returns (
    order_id     TEXT NOT NULL REFERENCES orders (id),
    return_id    TEXT NOT NULL,
    sku          TEXT NOT NULL,
    location_id  TEXT NOT NULL,
    quantity     BIGINT NOT NULL CHECK (quantity > 0),
    received_at  BIGINT NOT NULL,
    PRIMARY KEY (return_id, sku)
);
CREATE INDEX order_returns_by_order ON order_returns (order_id, sku);
