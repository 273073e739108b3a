-- What the fraud hook's buyer history reports (see the SQLite migration of the same name).
CREATE TABLE payment_failures (
    email        TEXT NOT NULL,
    at           BIGINT NOT NULL,
    order_id     TEXT NOT NULL,
    customer_id  TEXT,
    code         TEXT NOT NULL,
    amount       BIGINT NOT NULL,
    currency     TEXT NOT NULL,
    PRIMARY KEY (email, at, order_id)
);

DROP INDEX orders_by_email;
CREATE INDEX orders_by_email ON orders (email, created_at) INCLUDE (status, total, currency);
