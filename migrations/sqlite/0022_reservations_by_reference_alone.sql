-- A reservation's state is no longer part of its reference index. Every checkout moves its
-- reservations from active to committed; with the state in the key, each move deleted and
-- re-inserted the reservation's entry there, on top of the row itself and the active-by-level
-- entry. A reference has a handful of reservations, so filtering them by state costs nothing,
-- and SQLite's planner prefers an equality seek on the reference to scanning the partial
-- index of active reservations (which does not hold the reference).
--
-- PostgreSQL keeps (reference, state): an update there writes a new entry in every index
-- whichever columns change, so a narrower key would save nothing.
DROP INDEX reservations_by_reference;
CREATE INDEX reservations_by_reference ON reservations (reference);
