-- Customer accounts. Passwords are argon2id hashes; session tokens are SHA-256 digests.
CREATE TABLE customers (
    id             TEXT PRIMARY KEY,
    email          TEXT NOT NULL UNIQUE,
    name           TEXT NOT NULL,
    password_hash  TEXT NOT NULL,
    created_at     BIGINT NOT NULL
);

CREATE TABLE customer_tokens (
    token_hash   TEXT PRIMARY KEY,
    customer_id  TEXT NOT NULL REFERENCES customers (id),
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL
);

ALTER TABLE orders ADD COLUMN customer_id TEXT;
CREATE INDEX orders_by_customer ON orders (customer_id, created_at);
CREATE INDEX carts_by_customer ON carts (customer_id);
