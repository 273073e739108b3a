-- Nothing to change on PostgreSQL (see the SQLite migration of the same name): an update
-- there writes a new entry in every index of the row whichever columns change, so dropping
-- the state from the reference index would save no index write, and (reference, state) keeps
-- the planner from preferring the partial index of active reservations for a reference.
SELECT 1;
