-- The catalog's shape, carts, and admin credentials.

ALTER TABLE products ADD COLUMN description TEXT NOT NULL DEFAULT '';
ALTER TABLE products ADD COLUMN updated_at BIGINT NOT NULL DEFAULT 0;

CREATE TABLE categories (
    id         TEXT PRIMARY KEY,
    parent_id  TEXT REFERENCES categories (id),
    name       TEXT NOT NULL
);

CREATE TABLE product_categories (
    product_id   TEXT NOT NULL REFERENCES products (id),
    category_id  TEXT NOT NULL REFERENCES categories (id),
    PRIMARY KEY (product_id, category_id)
);

CREATE TABLE product_attributes (
    product_id  TEXT NOT NULL REFERENCES products (id),
    name        TEXT NOT NULL,
    value       TEXT NOT NULL,
    PRIMARY KEY (product_id, name)
);

CREATE TABLE variant_options (
    sku    TEXT NOT NULL REFERENCES variants (sku),
    name   TEXT NOT NULL,
    value  TEXT NOT NULL,
    PRIMARY KEY (sku, name)
);

-- Bearer tokens are stored as SHA-256 hex digests, never in clear.
CREATE TABLE admin_tokens (
    token_hash  TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE carts (
    id           TEXT PRIMARY KEY,
    token_hash   TEXT NOT NULL,
    currency     TEXT NOT NULL,
    customer_id  TEXT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL
);

CREATE TABLE cart_lines (
    id        TEXT PRIMARY KEY,
    cart_id   TEXT NOT NULL REFERENCES carts (id),
    sku       TEXT NOT NULL REFERENCES variants (sku),
    quantity  BIGINT NOT NULL CHECK (quantity > 0),
    position  BIGINT NOT NULL,
    UNIQUE (cart_id, sku)
);

CREATE TABLE cart_coupons (
    cart_id  TEXT NOT NULL REFERENCES carts (id),
    code     TEXT NOT NULL,
    PRIMARY KEY (cart_id, code)
);
