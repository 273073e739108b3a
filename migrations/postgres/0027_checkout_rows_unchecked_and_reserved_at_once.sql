-- The rows every checkout writes are no longer checked against their parents by foreign keys:
-- each check is a query of its own (run from a trigger after the statement), eleven per
-- checkout, about a tenth of PostgreSQL's CPU on the checkout path. None of them can fail:
--
-- * a reservation is inserted for a stock level that the same statement or transaction has
--   just locked and updated, and stock levels are never deleted;
-- * an order's lines and payment are inserted by the statement that inserts the order, and
--   orders are never deleted.
--
-- The other tables keep their foreign keys: they are written rarely, or by requests that name
-- rows a caller chose. SQLite keeps all of them (see its migration of the same name).
ALTER TABLE reservations DROP CONSTRAINT IF EXISTS reservations_sku_location_id_fkey;
ALTER TABLE order_lines DROP CONSTRAINT IF EXISTS order_lines_order_id_fkey;
ALTER TABLE payments DROP CONSTRAINT IF EXISTS payments_order_id_fkey;

-- Fails the statement that calls it, with this SQLSTATE and message: for statements that check
-- their own work and must undo all of it when the check fails, outside a transaction (the
-- checkout's reserving statement, inventory::reserve_at_once, and its order statement).
CREATE FUNCTION cartridge_refuse(code TEXT, message TEXT) RETURNS BIGINT LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = code, MESSAGE = message;
END
$$;
