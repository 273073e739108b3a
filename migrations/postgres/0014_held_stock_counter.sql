-- Reserved and committed stock become one counter on the level row, `held`: the units of every
-- active or committed reservation of that SKU at that location. A checkout then reads what it
-- may take from the rows it locks (`on_hand - held`) instead of adding up reservations, and
-- placing the order (reserved -> committed) no longer touches the level row at all.
--
-- An expired reservation still stops counting at once: every read adds the lapsed, still
-- active reservations back, and every writer that needs their stock releases them first, under
-- the level's lock. `held <= on_hand` is now a constraint: the database itself refuses to
-- oversell.

-- The migration runs in one transaction: now() is one instant for every statement below.
INSERT INTO inventory_movements (sku, location_id, kind, quantity, reference, at)
    SELECT sku, location_id, 'expire', -quantity, reference,
           CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT)
    FROM reservations
    WHERE state = 'active' AND expires_at <= CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT);
UPDATE reservations SET state = 'released'
    WHERE state = 'active' AND expires_at <= CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT);

ALTER TABLE inventory_levels ADD COLUMN held BIGINT NOT NULL DEFAULT 0;
UPDATE inventory_levels SET held = committed + COALESCE((
    SELECT SUM(r.quantity) FROM reservations r
    WHERE r.sku = inventory_levels.sku AND r.location_id = inventory_levels.location_id
      AND r.state = 'active'), 0);
ALTER TABLE inventory_levels
    ADD CONSTRAINT inventory_levels_held_check CHECK (held >= 0 AND held <= on_hand),
    DROP COLUMN committed,
    -- Never used: row locks are taken by `SELECT … FOR UPDATE` (PostgreSQL) and the single
    -- writer (SQLite).
    DROP COLUMN lock_seq;

-- Finding lapsed reservations is now part of every checkout: only active ones, by expiry.
CREATE INDEX reservations_active_by_expiry ON reservations (sku, expires_at) WHERE state = 'active';
-- A reservation is looked up by reference and state on every checkout: both in the index, so
-- the planner never prefers scanning the active ones above for the reference.
DROP INDEX reservations_by_reference;
CREATE INDEX reservations_by_reference ON reservations (reference, state);
