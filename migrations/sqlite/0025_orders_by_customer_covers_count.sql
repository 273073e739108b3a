-- Every read of a signed-in customer's cart counts their orders that were not cancelled (the
-- pricing hook's `customer.order-count`). With the status in the customer index the count is
-- read from the index alone, not from a table row per order. Listing a customer's orders uses
-- the same index as before.
DROP INDEX orders_by_customer;
CREATE INDEX orders_by_customer ON orders (customer_id, created_at, status);
