-- Catalog skeleton and multi-location inventory.
-- Money is integer minor units with an ISO 4217 code; times are Unix milliseconds.

CREATE TABLE products (
    id          TEXT PRIMARY KEY,
    title       TEXT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('draft', 'active', 'archived')),
    created_at  BIGINT NOT NULL
);

CREATE TABLE variants (
    sku         TEXT PRIMARY KEY,
    product_id  TEXT NOT NULL REFERENCES products (id),
    title       TEXT NOT NULL
);

CREATE TABLE variant_prices (
    sku       TEXT NOT NULL REFERENCES variants (sku),
    currency  TEXT NOT NULL CHECK (char_length(currency) = 3),
    amount    BIGINT NOT NULL CHECK (amount >= 0),
    PRIMARY KEY (sku, currency)
);

CREATE TABLE stock_locations (
    id        TEXT PRIMARY KEY,
    name      TEXT NOT NULL,
    -- Lower ships first.
    priority  INTEGER NOT NULL DEFAULT 100
);

-- Reserved stock is not a counter here: it is the sum of active, unexpired reservations, so an
-- expired reservation stops counting the moment it expires. `lock_seq` exists to be written:
-- bumping it takes the row's write lock before availability is computed.
CREATE TABLE inventory_levels (
    sku          TEXT NOT NULL REFERENCES variants (sku),
    location_id  TEXT NOT NULL REFERENCES stock_locations (id),
    on_hand      BIGINT NOT NULL DEFAULT 0 CHECK (on_hand >= 0),
    committed    BIGINT NOT NULL DEFAULT 0 CHECK (committed >= 0 AND committed <= on_hand),
    lock_seq     BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (sku, location_id)
);

CREATE TABLE reservations (
    id           TEXT PRIMARY KEY,
    reference    TEXT NOT NULL,
    sku          TEXT NOT NULL,
    location_id  TEXT NOT NULL,
    quantity     BIGINT NOT NULL CHECK (quantity > 0),
    state        TEXT NOT NULL CHECK (state IN ('active', 'committed', 'released', 'shipped')),
    expires_at   BIGINT NOT NULL,
    created_at   BIGINT NOT NULL,
    FOREIGN KEY (sku, location_id) REFERENCES inventory_levels (sku, location_id)
);
CREATE INDEX reservations_by_level ON reservations (sku, location_id, state, expires_at);
CREATE INDEX reservations_by_reference ON reservations (reference);

CREATE TABLE inventory_movements (
    id           BIGSERIAL PRIMARY KEY,
    sku          TEXT NOT NULL,
    location_id  TEXT NOT NULL,
    kind         TEXT NOT NULL,
    quantity     BIGINT NOT NULL,
    reference    TEXT,
    at           BIGINT NOT NULL
);
CREATE INDEX inventory_movements_by_level ON inventory_movements (sku, location_id, id);
-- A return restocks exactly once, however often it is processed.
CREATE UNIQUE INDEX inventory_restock_once ON inventory_movements (reference, sku, location_id)
    WHERE kind = 'restock';
