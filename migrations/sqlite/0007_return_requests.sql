-- Returns customers ask for; the merchant receives them under the request's id.
CREATE TABLE return_requests (
    id           TEXT PRIMARY KEY,
    order_id     TEXT NOT NULL REFERENCES orders (id),
    customer_id  TEXT NOT NULL,
    lines        TEXT NOT NULL,
    reason       TEXT,
    -- requested | received
    status       TEXT NOT NULL,
    created_at   BIGINT NOT NULL
);
CREATE INDEX return_requests_by_order ON return_requests (order_id, created_at);
