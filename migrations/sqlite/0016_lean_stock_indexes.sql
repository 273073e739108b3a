-- Fewer index pages written per checkout.
--
-- Reservations by level and state: every checkout wrote each of its SKUs' entries twice (made
-- active, then moved to committed), one index page per SKU each time, to serve two reads: the
-- lapsed reservations of a level and its committed units. Active reservations are indexed by
-- level on their own now (entries live only while a reservation is active, so the index stays
-- small and hot), and committed units are what a level holds beyond its active reservations.
DROP INDEX reservations_by_level;
DROP INDEX reservations_active_by_expiry;
CREATE INDEX reservations_active_by_level ON reservations (sku, location_id, expires_at)
    WHERE state = 'active';

-- Movements keep their order by id without AUTOINCREMENT, which wrote its counter row (another
-- page) on every insert: movements are never deleted, so a new row's id is always above every
-- other's.
CREATE TABLE inventory_movements_lean (
    id           INTEGER PRIMARY KEY,
    sku          TEXT NOT NULL,
    location_id  TEXT NOT NULL,
    kind         TEXT NOT NULL,
    quantity     BIGINT NOT NULL,
    reference    TEXT,
    at           BIGINT NOT NULL
);
INSERT INTO inventory_movements_lean (id, sku, location_id, kind, quantity, reference, at)
    SELECT id, sku, location_id, kind, quantity, reference, at FROM inventory_movements;
DROP TABLE inventory_movements;
ALTER TABLE inventory_movements_lean RENAME TO inventory_movements;
CREATE INDEX inventory_movements_by_level ON inventory_movements (sku, location_id, id);
-- A return restocks exactly once, however often it is processed.
CREATE UNIQUE INDEX inventory_restock_once ON inventory_movements (reference, sku, location_id)
    WHERE kind = 'restock';
