-- Shipping methods: how a merchant ships, at a flat rate per currency, to a list of countries
-- (or anywhere). Archived, never deleted: carts name their chosen method by code, and an order
-- keeps its own copy of the method as it was priced, so editing a method changes no order.
CREATE TABLE shipping_methods (
    id          TEXT PRIMARY KEY,
    code        TEXT NOT NULL UNIQUE,
    name        TEXT NOT NULL,
    carrier     TEXT,
    -- JSON array of ISO 3166-1 alpha-2 codes; NULL ships anywhere.
    countries   TEXT,
    position    BIGINT NOT NULL DEFAULT 0,
    status      TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'archived')),
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE shipping_rates (
    method_id  TEXT NOT NULL REFERENCES shipping_methods (id),
    currency   TEXT NOT NULL,
    amount     BIGINT NOT NULL CHECK (amount >= 0),
    PRIMARY KEY (method_id, currency)
);

CREATE INDEX shipping_rates_by_currency ON shipping_rates (currency);

-- The shopper's choice, by code.
ALTER TABLE carts ADD COLUMN shipping_method TEXT;
-- {code, name, carrier, amount} as priced at checkout; NULL when nothing was shipped.
ALTER TABLE orders ADD COLUMN shipping_method TEXT;
