-- Fewer index entries written per checkout (see the SQLite migration of the same name):
-- reservations are indexed by level only while active; committed units are what a level holds
-- beyond its active reservations.
DROP INDEX reservations_by_level;
DROP INDEX reservations_active_by_expiry;
CREATE INDEX reservations_active_by_level ON reservations (sku, location_id, expires_at)
    WHERE state = 'active';
