-- The buyer's history, read by every checkout, from the index alone (see the SQLite migration
-- of the same name): the status and the total ride along in the email index, so an
-- index-only scan needs no heap row per order once the table's pages are all-visible.
DROP INDEX orders_by_email;
CREATE INDEX orders_by_email ON orders (email, created_at) INCLUDE (status, total);
