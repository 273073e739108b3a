-- Reserved and committed stock become one counter on the level row, `held`: the units of every
-- active or committed reservation of that SKU at that location. A checkout then reads what it
-- may take from the rows it locks (`on_hand - held`) instead of adding up reservations, and
-- placing the order (reserved -> committed) no longer touches the level row at all.
--
-- An expired reservation still stops counting at once: every read adds the lapsed, still
-- active reservations back, and every writer that needs their stock releases them first, under
-- the level's lock. `held <= on_hand` is now a constraint: the database itself refuses to
-- oversell.

-- One instant for every statement below.
CREATE TEMP TABLE migration_clock AS SELECT CAST(unixepoch('subsec') * 1000 AS INTEGER) AS at;

-- Reservations that lapsed before this migration are released now, as a movement each.
INSERT INTO inventory_movements (sku, location_id, kind, quantity, reference, at)
    SELECT r.sku, r.location_id, 'expire', -r.quantity, r.reference, c.at
    FROM reservations r, migration_clock c
    WHERE r.state = 'active' AND r.expires_at <= c.at;
UPDATE reservations SET state = 'released'
    WHERE state = 'active' AND expires_at <= (SELECT at FROM migration_clock);

ALTER TABLE inventory_levels ADD COLUMN held BIGINT NOT NULL DEFAULT 0
    CHECK (held >= 0 AND held <= on_hand);
UPDATE inventory_levels SET held = committed + COALESCE((
    SELECT SUM(r.quantity) FROM reservations r
    WHERE r.sku = inventory_levels.sku AND r.location_id = inventory_levels.location_id
      AND r.state = 'active'), 0);
ALTER TABLE inventory_levels DROP COLUMN committed;
-- Never used: row locks are taken by `SELECT … FOR UPDATE` (PostgreSQL) and the single writer
-- (SQLite).
ALTER TABLE inventory_levels DROP COLUMN lock_seq;

DROP TABLE migration_clock;

-- Finding lapsed reservations is now part of every checkout: only active ones, by expiry.
CREATE INDEX reservations_active_by_expiry ON reservations (sku, expires_at) WHERE state = 'active';
-- A reservation is looked up by reference and state on every checkout: both in the index, so
-- the planner never prefers scanning the active ones above for the reference.
DROP INDEX reservations_by_reference;
CREATE INDEX reservations_by_reference ON reservations (reference, state);
