-- See the SQLite migration of the same name: the count of a customer's orders that were not
-- cancelled, read with every cart of theirs, from the index alone.
DROP INDEX orders_by_customer;
CREATE INDEX orders_by_customer ON orders (customer_id, created_at) INCLUDE (status);
