-- Nothing to change on PostgreSQL. SQLite rebuilds reservations, order lines and payments
-- keyed by their primary key alone (`WITHOUT ROWID`), so that an insert writes one B-tree
-- instead of the rows and a separate key index; a PostgreSQL table is a heap with its key in
-- an index either way.
SELECT 1;
