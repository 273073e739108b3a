-- Every checkout reads its buyer's history by email (how many orders, how many in the last
-- day, the lifetime spend, the first order) over the orders that are not cancelled. With only
-- (email, created_at) in the index, each of the buyer's orders was then looked up in the table
-- for its status and total: a buyer with thousands of orders made each of their checkouts read
-- thousands of rows — on the writer's connection, where reads go while it is idle, with every
-- write waiting behind it. With the status and the total in the index, the history is read
-- from the index alone. Searching orders by email uses the same index as before.
DROP INDEX orders_by_email;
CREATE INDEX orders_by_email ON orders (email, created_at, status, total);
